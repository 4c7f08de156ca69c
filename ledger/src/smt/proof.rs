//! Inclusion and non-inclusion proofs, checkable with nothing but the root.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use stele_consensus::Hash;

use super::hashing::{internal_hash, key_bit, leaf_hash};
use crate::error::ProofError;

/// The leaf a proof ends at.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct ProofLeaf {
    /// The leaf's key. Equal to the queried key for an inclusion proof; for a
    /// non-inclusion proof, another key that shares the path down to the leaf.
    pub key: Hash,
    /// Hash of the leaf's value.
    pub value_hash: Hash,
}

/// The path from the root to where a key is, or would be.
///
/// `siblings[i]` is the hash of the sibling of the path node at depth `i + 1` (so the
/// first entry is next to the root). The path ends at the leaf holding the key
/// (inclusion), at another leaf sitting where the key would be (non-inclusion), or at an
/// empty subtree (non-inclusion, `leaf` is `None`).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SparseMerkleProof {
    /// The leaf at the end of the path, if the path ends at a leaf.
    pub leaf: Option<ProofLeaf>,
    /// Sibling hashes from the top of the tree down.
    pub siblings: Vec<Hash>,
}

impl SparseMerkleProof {
    /// Checks the proof against `root` for `key`. With `Some(value_hash)` it proves the
    /// key holds that value; with `None`, that the key is absent.
    pub fn verify(
        &self,
        root: &Hash,
        key: &Hash,
        value_hash: Option<&Hash>,
    ) -> Result<(), ProofError> {
        let depth = self.siblings.len();
        if depth > 256 {
            return Err(ProofError::TooDeep { depth });
        }
        let mut current = match (&self.leaf, value_hash) {
            (Some(leaf), Some(expected)) => {
                if leaf.key != *key {
                    return Err(ProofError::KeyMismatch);
                }
                if leaf.value_hash != *expected {
                    return Err(ProofError::ValueMismatch);
                }
                leaf_hash(&leaf.key, &leaf.value_hash)
            }
            (Some(leaf), None) => {
                if leaf.key == *key {
                    return Err(ProofError::KeyPresent);
                }
                // The other leaf must sit on the queried key's path, or it proves nothing
                // about where the key would be.
                if (0..depth).any(|d| key_bit(&leaf.key, d) != key_bit(key, d)) {
                    return Err(ProofError::LeafOffPath);
                }
                leaf_hash(&leaf.key, &leaf.value_hash)
            }
            (None, Some(_)) => return Err(ProofError::KeyAbsent),
            (None, None) => Hash::ZERO,
        };
        for d in (0..depth).rev() {
            let sibling = &self.siblings[d];
            current = if key_bit(key, d) {
                internal_hash(sibling, &current)
            } else {
                internal_hash(&current, sibling)
            };
        }
        if current == *root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        }
    }
}
