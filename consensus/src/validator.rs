//! Validator sets: keys, voting powers and the quorum rule.
//!
//! A set with total power `P` tolerates faulty power below `P/3`; a quorum is any group
//! of distinct validators whose power is strictly greater than `2P/3`. Two quorums
//! therefore always share more than `P/3` of power, hence at least one honest validator,
//! which is what makes a commit certificate final.

use std::io;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::crypto::{PublicKey, VerificationKey};
use crate::error::ValidatorSetError;
use crate::hash::{Hash, Hasher};

/// Most validators a set may hold. Bounds certificate sizes and per-height work.
pub const VALIDATORS_MAX: usize = 512;
/// Largest total power. Keeps `3 * power` well inside `u64` and leaves room for
/// scheduled changes to be checked with plain arithmetic.
pub const TOTAL_POWER_MAX: u64 = 1 << 60;

/// One validator: its key and voting power.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize,
)]
pub struct Validator {
    /// Consensus signing key; also the validator's identity.
    pub key: PublicKey,
    /// Voting power, at least 1.
    pub power: u64,
}

/// An ordered, checked set of validators.
///
/// Validators are kept sorted by key, so the set and its hash do not depend on the order
/// they were listed in, and a validator's index is stable for a given set.
#[derive(Clone, Debug)]
pub struct ValidatorSet {
    validators: Vec<Validator>,
    verification_keys: Vec<VerificationKey>,
    total_power: u64,
    hash: Hash,
}

impl ValidatorSet {
    /// Checks and sorts `validators`: non-empty, at most [`VALIDATORS_MAX`], distinct
    /// valid keys, positive powers summing to at most [`TOTAL_POWER_MAX`].
    pub fn new(mut validators: Vec<Validator>) -> Result<Self, ValidatorSetError> {
        if validators.is_empty() {
            return Err(ValidatorSetError::Empty);
        }
        if validators.len() > VALIDATORS_MAX {
            return Err(ValidatorSetError::TooMany {
                count: validators.len(),
                max: VALIDATORS_MAX,
            });
        }
        validators.sort_by_key(|v| v.key);
        let mut total_power: u64 = 0;
        let mut verification_keys = Vec::with_capacity(validators.len());
        for (i, v) in validators.iter().enumerate() {
            if i > 0 && validators[i - 1].key == v.key {
                return Err(ValidatorSetError::Duplicate { key: v.key });
            }
            if v.power == 0 {
                return Err(ValidatorSetError::ZeroPower { key: v.key });
            }
            total_power = total_power
                .checked_add(v.power)
                .filter(|total| *total <= TOTAL_POWER_MAX)
                .ok_or(ValidatorSetError::TotalPowerTooLarge {
                    max: TOTAL_POWER_MAX,
                })?;
            let vk = v
                .key
                .verification_key()
                .map_err(|_| ValidatorSetError::InvalidKey { key: v.key })?;
            verification_keys.push(vk);
        }
        let hash = Self::compute_hash(&validators);
        Ok(ValidatorSet {
            validators,
            verification_keys,
            total_power,
            hash,
        })
    }

    fn compute_hash(validators: &[Validator]) -> Hash {
        let mut hasher = Hasher::new(b"stele/validator-set");
        hasher.update(&(validators.len() as u32).to_le_bytes());
        for v in validators {
            hasher.update(v.key.as_bytes());
            hasher.update(&v.power.to_le_bytes());
        }
        hasher.finish()
    }

    /// The validators, sorted by key.
    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// Number of validators.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// Always false: a set is never empty. Present for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// Sum of all powers.
    pub fn total_power(&self) -> u64 {
        self.total_power
    }

    /// Smallest power that is a quorum: the least `q` with `q > 2P/3`.
    pub fn quorum_power(&self) -> u64 {
        // floor(2P/3) + 1, computed without overflow (P <= 2^60).
        self.total_power * 2 / 3 + 1
    }

    /// Whether `power` is strictly more than two thirds of the total.
    pub fn is_quorum(&self, power: u64) -> bool {
        u128::from(power) * 3 > u128::from(self.total_power) * 2
    }

    /// Whether `power` is strictly more than one third of the total: enough that at least
    /// one honest validator is among its holders.
    pub fn exceeds_one_third(&self, power: u64) -> bool {
        u128::from(power) * 3 > u128::from(self.total_power)
    }

    /// Index of `key` in the sorted set.
    pub fn index_of(&self, key: &PublicKey) -> Option<u32> {
        self.validators
            .binary_search_by(|v| v.key.cmp(key))
            .ok()
            .map(|i| i as u32)
    }

    /// Whether `key` is a member.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.index_of(key).is_some()
    }

    /// The validator at `index`.
    pub fn get(&self, index: u32) -> Option<&Validator> {
        self.validators.get(index as usize)
    }

    /// The checked verification key of the validator at `index`.
    pub fn verification_key(&self, index: u32) -> Option<&VerificationKey> {
        self.verification_keys.get(index as usize)
    }

    /// Power of `key`, or zero for non-members.
    pub fn power_of(&self, key: &PublicKey) -> u64 {
        self.index_of(key)
            .and_then(|i| self.get(i))
            .map_or(0, |v| v.power)
    }

    /// Deterministic digest of the sorted (key, power) list.
    pub fn hash(&self) -> Hash {
        self.hash
    }
}

impl PartialEq for ValidatorSet {
    fn eq(&self, other: &Self) -> bool {
        self.validators == other.validators
    }
}

impl Eq for ValidatorSet {}

impl BorshSerialize for ValidatorSet {
    fn serialize<W: io::Write>(&self, writer: &mut W) -> io::Result<()> {
        BorshSerialize::serialize(&self.validators, writer)
    }
}

impl BorshDeserialize for ValidatorSet {
    fn deserialize_reader<R: io::Read>(reader: &mut R) -> io::Result<Self> {
        let validators = Vec::<Validator>::deserialize_reader(reader)?;
        ValidatorSet::new(validators)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SigningKey;

    fn validator(seed: u8, power: u64) -> Validator {
        Validator {
            key: SigningKey::from_seed([seed; 32]).public_key(),
            power,
        }
    }

    #[test]
    fn quorum_is_strictly_more_than_two_thirds() {
        let set = ValidatorSet::new((1..=4).map(|i| validator(i, 1)).collect()).unwrap();
        assert_eq!(set.quorum_power(), 3);
        assert!(!set.is_quorum(2));
        assert!(set.is_quorum(3));
        assert!(!set.exceeds_one_third(1));
        assert!(set.exceeds_one_third(2));

        let set =
            ValidatorSet::new(vec![validator(1, 3), validator(2, 3), validator(3, 3)]).unwrap();
        // 2P/3 = 6 exactly: 6 is not a quorum, 7 is.
        assert_eq!(set.quorum_power(), 7);
        assert!(!set.is_quorum(6));
        assert!(set.is_quorum(7));
        for power in 0..=9 {
            assert_eq!(set.is_quorum(power), power >= set.quorum_power());
        }
    }

    #[test]
    fn hash_ignores_listing_order_but_not_powers() {
        let a = ValidatorSet::new(vec![validator(1, 1), validator(2, 2)]).unwrap();
        let b = ValidatorSet::new(vec![validator(2, 2), validator(1, 1)]).unwrap();
        let c = ValidatorSet::new(vec![validator(2, 3), validator(1, 1)]).unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
    }

    #[test]
    fn rejects_bad_sets() {
        assert_eq!(ValidatorSet::new(vec![]), Err(ValidatorSetError::Empty));
        let v = validator(1, 1);
        assert_eq!(
            ValidatorSet::new(vec![v, v]),
            Err(ValidatorSetError::Duplicate { key: v.key })
        );
        let z = validator(2, 0);
        assert_eq!(
            ValidatorSet::new(vec![z]),
            Err(ValidatorSetError::ZeroPower { key: z.key })
        );
        assert!(matches!(
            ValidatorSet::new(vec![validator(1, TOTAL_POWER_MAX), validator(2, 1)]),
            Err(ValidatorSetError::TotalPowerTooLarge { .. })
        ));
        let bad_key = Validator {
            key: PublicKey::from_bytes([0; 32]),
            power: 1,
        };
        assert!(matches!(
            ValidatorSet::new(vec![bad_key]),
            Err(ValidatorSetError::InvalidKey { .. })
        ));
    }

    #[test]
    fn borsh_round_trip_revalidates() {
        let set = ValidatorSet::new(vec![validator(1, 5), validator(2, 7)]).unwrap();
        let bytes = borsh::to_vec(&set).unwrap();
        let back: ValidatorSet = borsh::from_slice(&bytes).unwrap();
        assert_eq!(back, set);
        assert_eq!(back.hash(), set.hash());
        let dup = borsh::to_vec(&vec![validator(1, 5), validator(1, 5)]).unwrap();
        assert!(borsh::from_slice::<ValidatorSet>(&dup).is_err());
    }
}
