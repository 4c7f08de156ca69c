//! The genesis: the chain's identity, parameters, first validators and accounts.
//!
//! `stele-genesis` reads and validates `genesis.json` into this type; its hash (over
//! the canonical borsh encoding, so JSON formatting does not matter) identifies the
//! chain and is the parent hash of block 1.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use stele_consensus::{Hash, Hasher, PublicKey, SigningDomain, Validator, ValidatorSet};

use crate::error::LedgerError;
use crate::state::{
    Account, MemoryState, StateDelta, StateKey, StateReader, ValidatorSchedule, ValueChange,
};
use crate::tx::{Role, TX_BYTES_LIMIT};

/// Consensus parameters fixed by the genesis. In `genesis.json` every field may be
/// left out to take its default.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainParams {
    /// Most transactions in one block.
    pub max_block_txs: u32,
    /// Largest encoded block.
    pub max_block_bytes: u32,
    /// Largest encoded transaction.
    pub max_tx_bytes: u32,
    /// First view timeout of a height.
    pub view_timeout_base_ms: u64,
    /// View timeouts double up to this.
    pub view_timeout_max_ms: u64,
    /// A validator change made at height `h` takes effect at `h + validator_change_delay`.
    pub validator_change_delay: u64,
}

impl Default for ChainParams {
    fn default() -> Self {
        ChainParams {
            max_block_txs: 10_000,
            max_block_bytes: 4 * 1024 * 1024,
            max_tx_bytes: 1024,
            view_timeout_base_ms: 1_000,
            view_timeout_max_ms: 30_000,
            validator_change_delay: 2,
        }
    }
}

/// Limits on [`ChainParams`] values; outside them a chain cannot run sensibly.
pub mod limits {
    /// Most transactions per block.
    pub const MAX_BLOCK_TXS_MAX: u32 = 100_000;
    /// Largest block size a genesis may set.
    pub const MAX_BLOCK_BYTES_MAX: u32 = 64 * 1024 * 1024;
    /// Smallest transaction size limit a genesis may set (a transfer must fit).
    pub const MAX_TX_BYTES_MIN: u32 = 256;
}

impl ChainParams {
    /// Checks the parameters; the error names the parameter and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.max_block_txs == 0 || self.max_block_txs > limits::MAX_BLOCK_TXS_MAX {
            return Err((
                "max_block_txs",
                format!("must be 1 to {}", limits::MAX_BLOCK_TXS_MAX),
            ));
        }
        if self.max_tx_bytes < limits::MAX_TX_BYTES_MIN
            || self.max_tx_bytes as usize > TX_BYTES_LIMIT
        {
            return Err((
                "max_tx_bytes",
                format!("must be {} to {TX_BYTES_LIMIT}", limits::MAX_TX_BYTES_MIN),
            ));
        }
        if self.max_block_bytes < self.max_tx_bytes
            || self.max_block_bytes > limits::MAX_BLOCK_BYTES_MAX
        {
            return Err((
                "max_block_bytes",
                format!(
                    "must be at least max_tx_bytes ({}) and at most {}",
                    self.max_tx_bytes,
                    limits::MAX_BLOCK_BYTES_MAX
                ),
            ));
        }
        if self.view_timeout_base_ms == 0 {
            return Err(("view_timeout_base_ms", "must be greater than zero".into()));
        }
        if self.view_timeout_max_ms < self.view_timeout_base_ms {
            return Err((
                "view_timeout_max_ms",
                "must be at least view_timeout_base_ms".into(),
            ));
        }
        if self.validator_change_delay == 0 {
            return Err(("validator_change_delay", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// A validator listed in the genesis.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GenesisValidator {
    /// Human name (for logs and status pages).
    pub name: String,
    /// Consensus and network identity key.
    pub key: PublicKey,
    /// Voting power.
    pub power: u64,
    /// Peer-to-peer address, `host:port`.
    pub address: String,
}

/// An account created at genesis.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GenesisAccount {
    /// The account's public key.
    pub account: PublicKey,
    /// Starting balance.
    pub balance: u64,
    /// Starting roles.
    pub roles: Vec<Role>,
}

/// A non-validating peer allowed to connect.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct GenesisPeer {
    /// Human name.
    pub name: String,
    /// Network identity key.
    pub key: PublicKey,
}

/// A chain's genesis.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Genesis {
    /// The chain id, bound into every signature.
    pub chain_id: String,
    /// Genesis time, milliseconds since the Unix epoch; block 1's time is not below it.
    pub genesis_time_ms: u64,
    /// Consensus parameters.
    pub params: ChainParams,
    /// The validators of height 1.
    pub validators: Vec<GenesisValidator>,
    /// Accounts that exist from the start.
    pub accounts: Vec<GenesisAccount>,
    /// Other peers allowed on the network.
    pub peers: Vec<GenesisPeer>,
}

impl Genesis {
    /// The genesis hash: identifies the chain; the parent hash of block 1.
    pub fn hash(&self) -> Hash {
        let mut hasher = Hasher::new(b"stele/genesis");
        hasher.update(&borsh::to_vec(self).expect("borsh encoding to a Vec never fails"));
        hasher.finish()
    }

    /// The signing domain of this chain.
    pub fn signing_domain(&self) -> Result<SigningDomain, LedgerError> {
        SigningDomain::new(&self.chain_id).map_err(|e| LedgerError::InvalidGenesis {
            reason: format!("chain_id: {e}"),
        })
    }

    /// The validator set of height 1.
    pub fn validator_set(&self) -> Result<ValidatorSet, LedgerError> {
        ValidatorSet::new(
            self.validators
                .iter()
                .map(|v| Validator {
                    key: v.key,
                    power: v.power,
                })
                .collect(),
        )
        .map_err(|e| LedgerError::InvalidGenesis {
            reason: format!("validators: {e}"),
        })
    }

    /// Total units held by the genesis accounts.
    pub fn supply(&self) -> Result<u64, LedgerError> {
        self.accounts
            .iter()
            .try_fold(0u64, |sum, a| sum.checked_add(a.balance))
            .ok_or_else(|| LedgerError::InvalidGenesis {
                reason: "accounts: balances add up past the largest amount".into(),
            })
    }

    /// The state change that creates the genesis state (version 0) from nothing.
    pub fn state_delta(&self) -> Result<StateDelta, LedgerError> {
        self.params
            .check()
            .map_err(|(field, problem)| LedgerError::InvalidGenesis {
                reason: format!("params.{field}: {problem}"),
            })?;
        self.signing_domain()?;
        let schedule = ValidatorSchedule {
            next: self.validator_set()?,
            pending: Vec::new(),
        };
        let supply = self.supply()?;
        let mut values = Vec::with_capacity(self.accounts.len() + 2);
        let mut seen = std::collections::HashSet::new();
        for account in &self.accounts {
            if !seen.insert(account.account) {
                return Err(LedgerError::InvalidGenesis {
                    reason: format!("accounts: {} is listed twice", account.account),
                });
            }
            let state = Account {
                balance: account.balance,
                nonce: 0,
                roles: account.roles.iter().fold(0, |bits, r| bits | r.bit()),
            };
            values.push(ValueChange {
                key: StateKey::Account(account.account).hash(),
                old: None,
                new: Some(encode(&state)),
            });
        }
        values.push(ValueChange {
            key: StateKey::ValidatorSchedule.hash(),
            old: None,
            new: Some(encode(&schedule)),
        });
        values.push(ValueChange {
            key: StateKey::Supply.hash(),
            old: None,
            new: Some(encode(&supply)),
        });
        StateDelta::compute(&MemoryState::new(), 0, values)
    }

    /// The genesis state in memory.
    pub fn memory_state(&self) -> Result<MemoryState, LedgerError> {
        let mut state = MemoryState::new();
        state.apply(&self.state_delta()?)?;
        debug_assert_eq!(state.version(), 0);
        Ok(state)
    }
}

pub(crate) fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("borsh encoding to a Vec never fails")
}
