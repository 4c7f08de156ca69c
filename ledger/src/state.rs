//! The ledger state: what lives under which key of the state tree, and the interfaces
//! execution reads it through and writes it back with.
//!
//! Every item is stored as borsh bytes under a 256-bit key derived from what it is
//! ([`StateKey`]); the tree commits to `H(value)` for each key. Besides accounts the
//! state holds the validator schedule (the set for the next height and changes
//! waiting for their height) and the total supply, so a state root certifies all three.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use stele_consensus::{Hash, PublicKey, Validator, ValidatorSet, ValidatorSetError};

use crate::error::LedgerError;
use crate::smt::{Tree, VersionChain};
use crate::tx::Role;

/// What a state key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKey {
    /// An account, by public key.
    Account(PublicKey),
    /// The validator schedule.
    ValidatorSchedule,
    /// Total supply of units.
    Supply,
}

impl StateKey {
    /// The tree key: a tagged hash of the item's kind and identity.
    pub fn hash(&self) -> Hash {
        match self {
            StateKey::Account(key) => Hash::tagged(b"stele/state-key", &[&[1], key.as_bytes()]),
            StateKey::ValidatorSchedule => Hash::tagged(b"stele/state-key", &[&[2]]),
            StateKey::Supply => Hash::tagged(b"stele/state-key", &[&[3]]),
        }
    }
}

/// The hash the tree commits to for a stored value.
pub fn value_hash(value: &[u8]) -> Hash {
    Hash::tagged(b"stele/state-value", &[value])
}

/// An account.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
pub struct Account {
    /// Units held.
    pub balance: u64,
    /// The nonce the next transaction from this account must carry.
    pub nonce: u64,
    /// Role bits ([`Role::bit`]).
    pub roles: u8,
}

impl Account {
    /// Whether the account holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles & role.bit() != 0
    }

    /// The roles held, in [`Role::ALL`] order.
    pub fn role_list(&self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|r| self.has_role(*r))
            .collect()
    }
}

/// A change to the validator set.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub enum ValidatorChange {
    /// Add a validator.
    Add {
        /// Its key.
        key: PublicKey,
        /// Its power.
        power: u64,
    },
    /// Remove a validator.
    Remove {
        /// Its key.
        key: PublicKey,
    },
    /// Change a validator's power.
    SetPower {
        /// Its key.
        key: PublicKey,
        /// The new power.
        power: u64,
    },
}

impl ValidatorChange {
    /// Applies the change to a list of validators, or says why it does not apply.
    pub fn apply_to(&self, validators: &mut Vec<Validator>) -> Result<(), ValidatorChangeError> {
        let position =
            |key: &PublicKey, list: &[Validator]| list.iter().position(|v| v.key == *key);
        match *self {
            ValidatorChange::Add { key, power } => {
                if position(&key, validators).is_some() {
                    return Err(ValidatorChangeError::Exists { key });
                }
                validators.push(Validator { key, power });
            }
            ValidatorChange::Remove { key } => {
                let i = position(&key, validators).ok_or(ValidatorChangeError::NotFound { key })?;
                validators.remove(i);
            }
            ValidatorChange::SetPower { key, power } => {
                let i = position(&key, validators).ok_or(ValidatorChangeError::NotFound { key })?;
                validators[i].power = power;
            }
        }
        Ok(())
    }
}

/// Why a validator change does not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidatorChangeError {
    /// Adding a key already present.
    #[error("validator {key} is already in the set")]
    Exists {
        /// The key.
        key: PublicKey,
    },
    /// Removing or re-weighting a key not present.
    #[error("validator {key} is not in the set")]
    NotFound {
        /// The key.
        key: PublicKey,
    },
    /// The resulting set breaks a set rule.
    #[error(transparent)]
    InvalidSet(#[from] ValidatorSetError),
}

/// A validator change and the height it takes effect at.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct ScheduledChange {
    /// First height whose validator set includes the change.
    pub height: u64,
    /// The change.
    pub change: ValidatorChange,
}

/// The validator set of the next height, and changes scheduled after it.
///
/// In the state after block `h`, `next` is the set that certifies block `h + 1`, and
/// `pending` holds changes for heights above `h + 1`, in the order they apply.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct ValidatorSchedule {
    /// The set for the next height.
    pub next: ValidatorSet,
    /// Changes waiting for their height, ordered by height then by scheduling order.
    pub pending: Vec<ScheduledChange>,
}

impl ValidatorSchedule {
    /// The validator list once every pending change has applied; new changes are
    /// checked against it, which keeps every intermediate set valid too.
    pub fn projected(&self) -> Result<Vec<Validator>, ValidatorChangeError> {
        let mut validators = self.next.validators().to_vec();
        for scheduled in &self.pending {
            scheduled.change.apply_to(&mut validators)?;
        }
        Ok(validators)
    }

    /// Moves to the set for `height`: applies the pending changes due at or before it.
    /// Returns whether the schedule changed.
    pub fn advance_to(&mut self, height: u64) -> Result<bool, ValidatorChangeError> {
        let due = self
            .pending
            .iter()
            .take_while(|c| c.height <= height)
            .count();
        if due == 0 {
            return Ok(false);
        }
        let mut validators = self.next.validators().to_vec();
        for scheduled in self.pending.drain(..due) {
            scheduled.change.apply_to(&mut validators)?;
        }
        self.next = ValidatorSet::new(validators)?;
        Ok(true)
    }
}

/// Read access to a committed state: values by key, and its tree.
pub trait StateReader {
    /// The value stored under `key`.
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError>;

    /// The values stored under `keys`, in order.
    fn values(&self, keys: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        keys.iter().map(|k| self.value(k)).collect()
    }

    /// The version (height) this state is at.
    fn version(&self) -> u64;

    /// The state tree of this version (a cheap, shared handle).
    fn tree(&self) -> Result<Tree, LedgerError>;

    /// The state root at this version.
    fn root(&self) -> Result<Hash, LedgerError> {
        Ok(self.tree()?.root_hash())
    }

    /// Reads and decodes a value.
    fn decoded<T: BorshDeserialize>(&self, key: StateKey) -> Result<Option<T>, LedgerError>
    where
        Self: Sized,
    {
        match self.value(&key.hash())? {
            None => Ok(None),
            Some(bytes) => borsh::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LedgerError::Corrupt {
                    what: format!("state value {key:?}: {e}"),
                }),
        }
    }
}

/// A value written or removed by a block, with its previous content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueChange {
    /// The tree key.
    pub key: Hash,
    /// Before (`None`: absent).
    pub old: Option<Vec<u8>>,
    /// After (`None`: removed).
    pub new: Option<Vec<u8>>,
}

/// Everything a block changes in the state, ready to be written in one batch.
#[derive(Clone, Debug)]
pub struct StateDelta {
    /// The version this delta produces.
    pub version: u64,
    /// The root it was computed on top of.
    pub base_root: Hash,
    /// The root after it.
    pub root: Hash,
    /// Changed values, sorted by key.
    pub values: Vec<ValueChange>,
    /// The state tree after it (sharing what did not change with the tree before).
    pub tree: Tree,
}

impl StateDelta {
    /// Builds the delta that takes `state` to `version` by writing `values` (key, new
    /// value or `None`), each with the old value the caller read.
    pub fn compute<S: StateReader + ?Sized>(
        state: &S,
        version: u64,
        mut values: Vec<ValueChange>,
    ) -> Result<StateDelta, LedgerError> {
        if !values.windows(2).all(|w| w[0].key < w[1].key) {
            // Stable: entries for one key stay in the order they were given.
            values.sort_by_key(|v| v.key);
        }
        values.dedup_by(|later, earlier| {
            // Keep the first entry's old value and the later entry's new value.
            if later.key == earlier.key {
                earlier.new = later.new.take();
                true
            } else {
                false
            }
        });
        values.retain(|v| v.old != v.new);
        let base = state.tree()?;
        let tree = base.update(values.iter().map(|v| (v.key, v.new.as_deref())).collect());
        Ok(StateDelta {
            version,
            base_root: base.root_hash(),
            root: tree.root_hash(),
            values,
            tree,
        })
    }
}

/// A whole state in memory: for audits, history verification and tests.
pub struct MemoryState {
    version: u64,
    chain: VersionChain,
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState")
            .field("version", &self.version)
            .field("root", &self.chain.latest().root_hash())
            .finish()
    }
}

impl Default for MemoryState {
    fn default() -> Self {
        MemoryState {
            version: 0,
            chain: VersionChain::start(&Tree::new()),
        }
    }
}

impl MemoryState {
    /// An empty state, before genesis is applied.
    pub fn new() -> Self {
        MemoryState::default()
    }

    /// Applies a delta computed on top of this state (or on an equal one, such as the
    /// empty state the genesis delta starts from).
    pub fn apply(&mut self, delta: &StateDelta) -> Result<(), LedgerError> {
        let root = self.root()?;
        if delta.base_root != root {
            return Err(LedgerError::StaleDelta {
                expected: root,
                got: delta.base_root,
            });
        }
        if self.chain.commit(&delta.tree).is_err() {
            // Computed on another copy of this state: adopt its tree.
            self.chain = VersionChain::start(&delta.tree);
        }
        self.chain.keep_latest(1);
        self.version = delta.version;
        Ok(())
    }

    /// Number of values held (walks the whole tree).
    pub fn value_count(&self) -> usize {
        self.chain.latest().len()
    }
}

impl StateReader for MemoryState {
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.chain.latest().get(key))
    }

    fn values(&self, keys: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        Ok(self.chain.latest().get_many(keys))
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn tree(&self) -> Result<Tree, LedgerError> {
        Ok(self.chain.latest().clone())
    }
}
