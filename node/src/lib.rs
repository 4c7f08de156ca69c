//! The Stele node: libp2p networking, mempool, consensus driver, block sync and the
//! HTTP API, around the pure engine of `stele-consensus` and the store of
//! `stele-ledger`.

pub mod api;
pub mod codec;
pub mod consensus_streams;
pub mod driver;
pub mod export;
pub mod intake;
pub mod localnet;
pub mod mempool;
pub mod metrics;
pub mod network;
pub mod node;
