//! Blocks, headers and receipts.
//!
//! The block hash is the hash of the header alone; the header commits to everything
//! else: the transactions (transaction root), their outcomes (receipts root), the
//! post-execution state (state root), who may sign this block and the next (validator
//! set hashes), and the certificate of the parent (last commit hash).

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use stele_consensus::{CommitCertificate, Hash, Hasher, PublicKey};

use crate::tx::{Role, SignedTransaction};

/// A block header.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Header {
    /// The chain this block belongs to.
    pub chain_id: String,
    /// Height, from 1 (the genesis state is height 0).
    pub height: u64,
    /// Hash of the parent header, or the genesis hash for height 1.
    pub parent_hash: Hash,
    /// Proposer's clock, milliseconds since the Unix epoch; never below the parent's.
    pub time_ms: u64,
    /// The validator that proposed the block.
    pub proposer: PublicKey,
    /// Merkle root of the transaction hashes ([`merkle_root`]).
    pub tx_root: Hash,
    /// Merkle root of the receipt hashes.
    pub receipts_root: Hash,
    /// State root after executing this block.
    pub state_root: Hash,
    /// Hash of the validator set that certifies this block.
    pub validator_set_hash: Hash,
    /// Hash of the validator set that certifies the next block.
    pub next_validator_set_hash: Hash,
    /// Hash of `last_commit` (the parent's certificate), [`Hash::ZERO`] at height 1.
    pub last_commit_hash: Hash,
}

impl Header {
    /// The block hash.
    pub fn hash(&self) -> Hash {
        let mut hasher = Hasher::new(b"stele/header");
        hasher.update(&borsh::to_vec(self).expect("borsh encoding to a Vec never fails"));
        hasher.finish()
    }
}

/// A block: header, transactions, and the certificate that decided its parent.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// Transactions, executed in order.
    pub txs: Vec<SignedTransaction>,
    /// The certificate of the parent block; `None` at height 1.
    pub last_commit: Option<CommitCertificate>,
}

impl Block {
    /// The block hash (the header hash).
    pub fn hash(&self) -> Hash {
        self.header.hash()
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        borsh::object_length(self).expect("borsh length of an in-memory block never fails")
    }

    /// Hashes of the transactions, in order.
    pub fn tx_hashes(&self) -> Vec<Hash> {
        self.txs.iter().map(SignedTransaction::hash).collect()
    }
}

/// Why a well-formed, correctly signed transaction failed. It is still included: the
/// signer's nonce advances and nothing else changes.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
    thiserror::Error,
)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TxFailure {
    /// The balance does not cover the amount.
    #[error("insufficient funds: balance {balance}, needed {needed}")]
    InsufficientFunds {
        /// Available balance.
        balance: u64,
        /// Amount required.
        needed: u64,
    },
    /// The signer lacks a role the operation needs.
    #[error("signer lacks the {role} role")]
    MissingRole {
        /// The role needed.
        role: Role,
    },
    /// Amounts must be positive.
    #[error("amount must be greater than zero")]
    ZeroAmount,
    /// The operation names an account that does not exist.
    #[error("account {account} does not exist")]
    AccountNotFound {
        /// The missing account.
        account: PublicKey,
    },
    /// `CreateAccount` for an account that exists.
    #[error("account {account} already exists")]
    AccountExists {
        /// The existing account.
        account: PublicKey,
    },
    /// The new account's key is not a usable ed25519 key.
    #[error("{account} is not a valid ed25519 public key")]
    InvalidAccountKey {
        /// The rejected key.
        account: PublicKey,
    },
    /// The receiving balance would pass the largest representable amount.
    #[error("balance of {account} would overflow")]
    BalanceOverflow {
        /// The receiving account.
        account: PublicKey,
    },
    /// Total supply would pass the largest representable amount.
    #[error("total supply would overflow")]
    SupplyOverflow,
    /// `GrantRole` for a role already held.
    #[error("{account} already holds the {role} role")]
    RoleAlreadyHeld {
        /// The account.
        account: PublicKey,
        /// The role.
        role: Role,
    },
    /// `RevokeRole` for a role not held.
    #[error("{account} does not hold the {role} role")]
    RoleNotHeld {
        /// The account.
        account: PublicKey,
        /// The role.
        role: Role,
    },
    /// Adding a validator already in the (scheduled) set.
    #[error("validator {key} is already in the validator set")]
    ValidatorExists {
        /// The validator.
        key: PublicKey,
    },
    /// Removing or re-weighting a validator not in the (scheduled) set.
    #[error("validator {key} is not in the validator set")]
    ValidatorNotFound {
        /// The validator.
        key: PublicKey,
    },
    /// The change would leave an invalid validator set.
    #[error("the validator set after this change would be invalid: {reason}")]
    InvalidValidatorSet {
        /// Why the set would be invalid.
        reason: String,
    },
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TxOutcome {
    /// Applied.
    Success,
    /// Not applied; only the nonce advanced.
    Failed {
        /// Why.
        failure: TxFailure,
    },
}

/// The result of one included transaction.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Receipt {
    /// The transaction's hash.
    pub tx_hash: Hash,
    /// Success, or the typed failure.
    pub outcome: TxOutcome,
    /// For validator-set changes: the first height the change applies to.
    pub effective_height: Option<u64>,
}

impl Receipt {
    /// Digest of the receipt; the leaves of the receipts root.
    pub fn hash(&self) -> Hash {
        let mut hasher = Hasher::new(b"stele/receipt");
        hasher.update(&borsh::to_vec(self).expect("borsh encoding to a Vec never fails"));
        hasher.finish()
    }
}

/// Merkle root of a list of hashes, shaped as RFC 6962 (Certificate Transparency): leaf
/// `H(0x00 || item)`, node `H(0x01 || left || right)`, split at the largest power of two
/// below the length. The empty list has root [`Hash::ZERO`].
pub fn merkle_root(items: &[Hash]) -> Hash {
    if items.is_empty() {
        return Hash::ZERO;
    }
    let mut level: Vec<Hash> = items
        .iter()
        .map(|item| {
            let mut buf = [0u8; 33];
            buf[1..].copy_from_slice(item.as_bytes());
            Hash::digest(&buf)
        })
        .collect();
    // Pairing left to right and carrying an odd last node up unchanged yields the same
    // tree as RFC 6962's recursive split.
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            next.push(match pair {
                [left, right] => crate::smt::hashing::internal_hash(left, right),
                [single] => *single,
                _ => unreachable!("chunks of two"),
            });
        }
        level = next;
    }
    level[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc6962_root(items: &[Hash]) -> Hash {
        match items.len() {
            0 => Hash::ZERO,
            1 => {
                let mut buf = [0u8; 33];
                buf[1..].copy_from_slice(items[0].as_bytes());
                Hash::digest(&buf)
            }
            n => {
                // The largest power of two strictly below n.
                let mut k = 1;
                while k * 2 < n {
                    k *= 2;
                }
                crate::smt::hashing::internal_hash(
                    &rfc6962_root(&items[..k]),
                    &rfc6962_root(&items[k..]),
                )
            }
        }
    }

    #[test]
    fn iterative_root_matches_recursive_definition() {
        let items: Vec<Hash> = (0..40u32).map(|i| Hash::digest(&i.to_le_bytes())).collect();
        for n in 0..items.len() {
            assert_eq!(
                merkle_root(&items[..n]),
                rfc6962_root(&items[..n]),
                "n = {n}"
            );
        }
    }

    #[test]
    fn order_matters() {
        let a = Hash::digest(b"a");
        let b = Hash::digest(b"b");
        assert_ne!(merkle_root(&[a, b]), merkle_root(&[b, a]));
        assert_ne!(merkle_root(&[a]), a);
    }
}
