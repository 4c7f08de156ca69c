//! # stele-genesis
//!
//! The genesis file (`genesis.json`) and everything around it: parsing and validation
//! with errors that name the field, the genesis hash, key files (mode 0600, refused
//! when others can read them), node configuration files, and local testnets.
//!
//! The binary `stele-genesis` exposes `keygen`, `testnet` and `validate`.

#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod file;
pub mod keys;
pub mod testnet;

pub use config::NodeConfig;
pub use error::GenesisError;
pub use file::{GenesisFile, GenesisProblem, load_genesis};
pub use keys::{generate_key, read_key_file, write_key_file};
pub use testnet::{Testnet, TestnetOptions, generate_testnet};
