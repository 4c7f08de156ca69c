//! # stele-ledger
//!
//! Stele's ledger: what a block is and what executing it does, and where it is kept.
//!
//! - [`tx`]: transactions and operations, borsh-encoded, size-checked before decoding,
//!   signed over domain-separated bytes;
//! - [`block`]: headers, blocks, receipts, and the Merkle roots over transactions and
//!   receipts;
//! - [`smt`]: the sparse Merkle tree that holds the state, with inclusion and
//!   non-inclusion proofs checkable against a root alone;
//! - [`state`]: what the state holds (accounts, validator schedule, supply) and how it
//!   is read and changed;
//! - [`exec`]: deterministic block execution, block building and block validation;
//! - [`store`]: the RocksDB store, one atomic batch per block;
//! - [`history`]: verification of a whole chain from its genesis, for block sync and
//!   the auditor;
//! - [`pack`]: audit packs, a chain's blocks and certificates in one file.
//!
//! The crate has no network code; it depends only on `stele-consensus` among Stele's
//! crates.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod block;
pub mod error;
pub mod exec;
pub mod genesis;
pub mod history;
pub mod pack;
pub mod smt;
pub mod state;
pub mod store;
pub mod tx;

pub use block::{Block, Header, Receipt, TxFailure, TxOutcome, merkle_root};
pub use error::{BlockError, HistoryError, LedgerError, ProofError, TxDecodeError, TxRejection};
pub use exec::{
    ApplyError, BlockExecutor, BuiltBlock, ChainContext, ChainTip, ExecutionOutcome, build_block,
    validate_block,
};
pub use genesis::{ChainParams, Genesis, GenesisAccount, GenesisPeer, GenesisValidator};
pub use history::{HistorySummary, HistoryVerifier, check_transaction_signatures, verify_history};
pub use pack::{PackError, PackReader, PackWriter};
pub use smt::{SparseMerkleProof, root_from_leaves};
pub use state::{Account, MemoryState, StateDelta, StateKey, StateReader, value_hash};
pub use store::{HistoricState, IntegrityReport, Store, StoreOptions, TxLocation};
pub use tx::{KeyCache, Operation, Role, SignedTransaction, Transaction, TxSignatureError};
