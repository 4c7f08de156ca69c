//! Transactions: what users sign, and how it is encoded, hashed and checked.
//!
//! A [`SignedTransaction`] travels, is stored and is hashed as its borsh bytes. Its
//! signature covers the domain-separated bytes of the inner [`Transaction`]
//! (chain id and the `Transaction` message kind included), so it cannot be replayed on
//! another chain or read as a vote. Per-account nonces stop replays on the same chain.

use std::sync::Mutex;

use foldhash::HashMapExt;

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};
use stele_consensus::{
    BatchEntry, CHAIN_ID_LEN_MAX, CryptoError, Hash, Hasher, MessageKind, PublicKey, Signature,
    SigningDomain, SigningKey, VerificationKey,
};

use crate::error::TxDecodeError;

/// Upper bound on an encoded transaction, whatever the chain parameters say; applied
/// before decoding anything from the network or disk.
pub const TX_BYTES_LIMIT: usize = 64 * 1024;

/// Roles an account can hold. Each gates some operations.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    BorshSerialize,
    BorshDeserialize,
    Serialize,
    Deserialize,
)]
#[borsh(use_discriminant = true)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Role {
    /// Grants and revokes roles; changes the validator set.
    Admin = 0,
    /// Mints and burns.
    Issuer = 1,
    /// Creates accounts.
    Registrar = 2,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Issuer, Role::Registrar];

    /// The role's lower-case name, as written in genesis files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Issuer => "issuer",
            Role::Registrar => "registrar",
        }
    }

    /// Parses a lower-case role name.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The role's bit in [`crate::state::Account::roles`].
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Operation {
    /// Moves `amount` from the signer to `to`, which must exist.
    Transfer {
        /// Receiving account.
        to: PublicKey,
        /// Units moved, more than zero.
        amount: u64,
    },
    /// Creates `amount` new units in `to`. Needs [`Role::Issuer`].
    Mint {
        /// Receiving account.
        to: PublicKey,
        /// Units created, more than zero.
        amount: u64,
    },
    /// Destroys `amount` units of the signer's own balance. Needs [`Role::Issuer`].
    Burn {
        /// Units destroyed, more than zero.
        amount: u64,
    },
    /// Opens a new, empty account. Needs [`Role::Registrar`].
    CreateAccount {
        /// The new account's public key.
        account: PublicKey,
    },
    /// Gives `account` a role. Needs [`Role::Admin`].
    GrantRole {
        /// Who receives the role.
        account: PublicKey,
        /// Which role.
        role: Role,
    },
    /// Takes a role away from `account`. Needs [`Role::Admin`].
    RevokeRole {
        /// Who loses the role.
        account: PublicKey,
        /// Which role.
        role: Role,
    },
    /// Schedules a new validator. Needs [`Role::Admin`]; takes effect after the chain's
    /// validator-change delay.
    AddValidator {
        /// The validator's consensus key.
        key: PublicKey,
        /// Its voting power, more than zero.
        power: u64,
    },
    /// Schedules a validator's removal. Needs [`Role::Admin`].
    RemoveValidator {
        /// The validator to remove.
        key: PublicKey,
    },
    /// Schedules a change of a validator's power. Needs [`Role::Admin`].
    SetValidatorPower {
        /// The validator.
        key: PublicKey,
        /// Its new power, more than zero.
        power: u64,
    },
}

impl Operation {
    /// The account other than the signer that the operation reads or writes, if any.
    pub fn other_account(&self) -> Option<PublicKey> {
        match *self {
            Operation::Transfer { to, .. } | Operation::Mint { to, .. } => Some(to),
            Operation::CreateAccount { account }
            | Operation::GrantRole { account, .. }
            | Operation::RevokeRole { account, .. } => Some(account),
            Operation::Burn { .. }
            | Operation::AddValidator { .. }
            | Operation::RemoveValidator { .. }
            | Operation::SetValidatorPower { .. } => None,
        }
    }
}

/// The signed content of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct Transaction {
    /// The chain this transaction is for.
    pub chain_id: String,
    /// The account that signs and pays; its public key.
    pub signer: PublicKey,
    /// Must equal the signer's next nonce.
    pub nonce: u64,
    /// What to do.
    pub op: Operation,
}

impl Transaction {
    /// Signs the transaction for `domain`'s chain.
    ///
    /// # Panics
    ///
    /// If `key` is not the signer's key: signing someone else's transaction is a caller bug.
    pub fn sign(self, domain: &SigningDomain, key: &SigningKey) -> SignedTransaction {
        assert_eq!(
            key.public_key(),
            self.signer,
            "signing key does not match signer"
        );
        let signature = key.sign_raw(&self.signing_bytes(domain));
        SignedTransaction {
            tx: self,
            signature,
        }
    }

    /// The exact bytes the signer signs.
    pub fn signing_bytes(&self, domain: &SigningDomain) -> Vec<u8> {
        let payload = borsh::to_vec(self).expect("borsh encoding to a Vec never fails");
        domain.signing_bytes(MessageKind::Transaction, &payload)
    }
}

/// A transaction with its signature.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct SignedTransaction {
    /// The signed content.
    pub tx: Transaction,
    /// The signer's signature over [`Transaction::signing_bytes`].
    pub signature: Signature,
}

impl SignedTransaction {
    /// Decodes a transaction received from outside, checking `bytes.len() <= max_bytes`
    /// (and [`TX_BYTES_LIMIT`]) before decoding, and the chain id length after.
    pub fn decode(bytes: &[u8], max_bytes: usize) -> Result<Self, TxDecodeError> {
        let max = max_bytes.min(TX_BYTES_LIMIT);
        if bytes.len() > max {
            return Err(TxDecodeError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let tx: SignedTransaction =
            borsh::from_slice(bytes).map_err(|e| TxDecodeError::Malformed {
                reason: e.to_string(),
            })?;
        if tx.tx.chain_id.is_empty() || tx.tx.chain_id.len() > CHAIN_ID_LEN_MAX {
            return Err(TxDecodeError::Malformed {
                reason: format!("chain id of {} bytes", tx.tx.chain_id.len()),
            });
        }
        Ok(tx)
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        borsh::to_vec(self).expect("borsh encoding to a Vec never fails")
    }

    /// The transaction hash: a tagged digest of the canonical encoding, signature
    /// included. Used to look transactions up and as leaves of the transaction root.
    pub fn hash(&self) -> Hash {
        let mut hasher = Hasher::new(b"stele/tx");
        // Encoded into the digest as it goes: the same bytes as `encode`, unbuffered.
        BorshSerialize::serialize(self, &mut hasher)
            .expect("borsh encoding into a hasher never fails");
        hasher.finish()
    }

    /// Checks the signature on its own. For many transactions, prefer
    /// [`verify_signatures`], which batches.
    pub fn verify_signature(&self, domain: &SigningDomain) -> Result<(), TxSignatureError> {
        let key = self
            .tx
            .signer
            .verification_key()
            .map_err(|_| TxSignatureError::InvalidSignerKey)?;
        key.verify_raw(&self.tx.signing_bytes(domain), &self.signature)
            .map_err(|_| TxSignatureError::BadSignature)
    }
}

/// Why a transaction's signature was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxSignatureError {
    /// The signer field is not a usable ed25519 key.
    #[error("signer is not a valid ed25519 public key")]
    InvalidSignerKey,
    /// The signature does not verify for this chain.
    #[error("signature does not verify")]
    BadSignature,
}

/// Decompressed signer keys kept from one batch to the next. Decompressing a key costs
/// about a fifth of a batched signature check, and accounts sign again and again; a
/// node keeps one cache for all its signature checks. Only valid keys are kept.
///
/// A hash map with first-in, first-out eviction, not a least-recently-used list: a hit
/// is one probe, where an LRU moved its entry to the front of a linked list on every hit
/// (about 1.5% of the machine under load, most of it cache misses on the list's nodes).
/// When it is full, the key that entered first makes room, whether or not it was used
/// since; a signer still active is decompressed again after that, once.
pub struct KeyCache {
    inner: Mutex<KeyCacheInner>,
    capacity: usize,
}

struct KeyCacheInner {
    keys: foldhash::HashMap<PublicKey, VerificationKey>,
    /// The keys in the order they entered, as a ring once full: `oldest` is the next
    /// to go.
    order: Vec<PublicKey>,
    oldest: usize,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys (about 250 bytes each).
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache {
            // The table grows as keys arrive, up to `capacity`; none is allocated ahead.
            inner: Mutex::new(KeyCacheInner {
                keys: foldhash::HashMap::new(),
                order: Vec::new(),
                oldest: 0,
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KeyCacheInner> {
        // Only `insert_all`'s closing assertions can panic while the lock is held, after
        // every change; each key in the map is whole either way, so a poisoned lock is
        // taken over rather than stopping every later signature check.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn insert_all<'k>(&self, new: impl Iterator<Item = (&'k PublicKey, &'k VerificationKey)>) {
        let mut inner = self.lock();
        let KeyCacheInner {
            keys,
            order,
            oldest,
        } = &mut *inner;
        for (signer, key) in new {
            if keys.contains_key(signer) {
                continue;
            }
            if order.len() < self.capacity {
                order.push(*signer);
            } else {
                let evicted = std::mem::replace(&mut order[*oldest], *signer);
                keys.remove(&evicted);
                *oldest = (*oldest + 1) % self.capacity;
            }
            keys.insert(*signer, *key);
        }
        assert_eq!(keys.len(), order.len(), "each held key is in the ring once");
        assert!(keys.len() <= self.capacity);
    }
}

/// Checks the signatures of `txs` in batches; the result for each transaction, in order.
pub fn verify_signatures(
    domain: &SigningDomain,
    txs: &[&SignedTransaction],
) -> Vec<Result<(), TxSignatureError>> {
    verify_signatures_cached(domain, txs, None)
}

/// [`verify_signatures`], taking decompressed keys from `cache` where it has them and
/// leaving the new ones there.
pub fn verify_signatures_cached(
    domain: &SigningDomain,
    txs: &[&SignedTransaction],
    cache: Option<&KeyCache>,
) -> Vec<Result<(), TxSignatureError>> {
    let mut results: Vec<Result<(), TxSignatureError>> = Vec::with_capacity(txs.len());
    let mut keys: Vec<(usize, VerificationKey)> = Vec::with_capacity(txs.len());
    // One decompression per signer, however many of its transactions the batch holds,
    // and none for the signers the cache knows (its lock is taken twice per batch).
    let mut decompressed: foldhash::HashMap<PublicKey, Result<VerificationKey, CryptoError>> =
        foldhash::HashMap::with_capacity(txs.len());
    if let Some(cache) = cache {
        let known = cache.lock();
        for tx in txs {
            if let Some(key) = known.keys.get(&tx.tx.signer) {
                decompressed.insert(tx.tx.signer, Ok(*key));
            }
        }
    }
    let cached = decompressed.len();
    for (i, tx) in txs.iter().enumerate() {
        let signer = tx.tx.signer;
        match decompressed
            .entry(signer)
            .or_insert_with(|| signer.verification_key())
        {
            Ok(key) => {
                let key = *key;
                keys.push((i, key));
                results.push(Ok(()));
            }
            Err(_) => results.push(Err(TxSignatureError::InvalidSignerKey)),
        }
    }
    let messages: Vec<Vec<u8>> = keys
        .iter()
        .map(|(i, _)| txs[*i].tx.signing_bytes(domain))
        .collect();
    let entries: Vec<BatchEntry<'_>> = keys
        .iter()
        .zip(&messages)
        .map(|((i, key), message)| BatchEntry {
            key,
            signed_bytes: message,
            signature: &txs[*i].signature,
        })
        .collect();
    for ((i, _), ok) in keys.iter().zip(stele_consensus::verify_each(&entries)) {
        if !ok {
            results[*i] = Err(TxSignatureError::BadSignature);
        }
    }
    if let Some(cache) = cache
        && decompressed.len() > cached
    {
        cache.insert_all(
            decompressed
                .iter()
                .filter_map(|(signer, key)| key.as_ref().ok().map(|key| (signer, key))),
        );
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    impl KeyCache {
        fn len(&self) -> usize {
            self.lock().keys.len()
        }

        fn contains(&self, signer: &PublicKey) -> bool {
            self.lock().keys.contains_key(signer)
        }
    }

    fn sample(domain: &SigningDomain, key: &SigningKey, nonce: u64) -> SignedTransaction {
        Transaction {
            chain_id: domain.chain_id().to_owned(),
            signer: key.public_key(),
            nonce,
            op: Operation::Transfer {
                to: SigningKey::from_seed([2; 32]).public_key(),
                amount: 5,
            },
        }
        .sign(domain, key)
    }

    #[test]
    fn the_hash_is_the_tagged_digest_of_the_encoding() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let key = SigningKey::from_seed([1; 32]);
        let a = sample(&domain, &key, 7);
        let b = sample(&domain, &key, 8);
        assert_eq!(a.hash(), Hash::tagged(b"stele/tx", &[&a.encode()]));
        assert_eq!(b.hash(), Hash::tagged(b"stele/tx", &[&b.encode()]));
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn decode_checks_size_first_and_rejects_garbage() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let key = SigningKey::from_seed([1; 32]);
        let tx = sample(&domain, &key, 0);
        let bytes = tx.encode();
        assert_eq!(SignedTransaction::decode(&bytes, 1024).unwrap(), tx);
        assert!(matches!(
            SignedTransaction::decode(&bytes, 10),
            Err(TxDecodeError::TooLarge { max: 10, .. })
        ));
        assert!(matches!(
            SignedTransaction::decode(&[0xff; 100], 1024),
            Err(TxDecodeError::Malformed { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(SignedTransaction::decode(&trailing, 1024).is_err());
    }

    #[test]
    fn batch_verification_flags_each_bad_transaction() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let key = SigningKey::from_seed([1; 32]);
        let mut txs: Vec<SignedTransaction> = (0..20).map(|n| sample(&domain, &key, n)).collect();
        txs[4].tx.nonce = 99; // content changed after signing
        txs[11].tx.signer = PublicKey::from_bytes([0; 32]); // not a key at all
        let refs: Vec<&SignedTransaction> = txs.iter().collect();
        let results = verify_signatures(&domain, &refs);
        for (i, r) in results.iter().enumerate() {
            match i {
                4 => assert_eq!(*r, Err(TxSignatureError::BadSignature)),
                11 => assert_eq!(*r, Err(TxSignatureError::InvalidSignerKey)),
                _ => assert_eq!(*r, Ok(())),
            }
        }
        let other = SigningDomain::new("other-chain").unwrap();
        assert_eq!(
            txs[0].verify_signature(&other),
            Err(TxSignatureError::BadSignature)
        );
    }

    /// The cache changes no verdict, whether it is cold or warm, and keeps only
    /// valid keys.
    #[test]
    fn key_cache_gives_the_same_verdicts() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let keys: Vec<SigningKey> = (1..=3).map(|n| SigningKey::from_seed([n; 32])).collect();
        let mut txs: Vec<SignedTransaction> = (0..30)
            .map(|n| sample(&domain, &keys[n as usize % 3], n))
            .collect();
        txs[7].tx.nonce = 1_000;
        txs[13].tx.signer = PublicKey::from_bytes([0; 32]);
        let refs: Vec<&SignedTransaction> = txs.iter().collect();
        let plain = verify_signatures(&domain, &refs);
        let cache = KeyCache::new(16);
        assert_eq!(
            verify_signatures_cached(&domain, &refs, Some(&cache)),
            plain
        );
        assert_eq!(cache.len(), 3, "only the 3 valid keys");
        assert_eq!(
            verify_signatures_cached(&domain, &refs, Some(&cache)),
            plain
        );
        assert_eq!(plain[7], Err(TxSignatureError::BadSignature));
        assert_eq!(plain[13], Err(TxSignatureError::InvalidSignerKey));

        // Full: new keys take the place of old ones, the size stays at the capacity,
        // and the verdicts do not change.
        let small = KeyCache::new(2);
        for _ in 0..2 {
            assert_eq!(
                verify_signatures_cached(&domain, &refs, Some(&small)),
                plain
            );
            assert_eq!(small.len(), 2);
        }
    }

    /// Past its capacity the cache keeps the keys that entered last, and a key used
    /// again does not stay longer for it.
    #[test]
    fn key_cache_evicts_the_oldest_key() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let keys: Vec<SigningKey> = (1..=7).map(|n| SigningKey::from_seed([n; 32])).collect();
        let cache = KeyCache::new(4);
        let check = |i: usize| {
            let tx = sample(&domain, &keys[i], 0);
            assert_eq!(
                verify_signatures_cached(&domain, &[&tx], Some(&cache)),
                vec![Ok(())]
            );
        };
        for i in 0..6 {
            check(i);
        }
        let held = |cache: &KeyCache| -> Vec<bool> {
            keys.iter()
                .map(|k| cache.contains(&k.public_key()))
                .collect()
        };
        assert_eq!(held(&cache), [false, false, true, true, true, true, false]);
        check(2);
        check(6);
        assert_eq!(held(&cache), [false, false, false, true, true, true, true]);
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn hash_covers_the_signature() {
        let domain = SigningDomain::new("tx-test").unwrap();
        let key = SigningKey::from_seed([1; 32]);
        let tx = sample(&domain, &key, 0);
        let mut other = tx.clone();
        other.signature = Signature::from_bytes([7; 64]);
        assert_ne!(tx.hash(), other.hash());
    }
}
