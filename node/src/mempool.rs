//! The mempool: transactions waiting for a block.
//!
//! - Bounded in count and in bytes; when full, new transactions are refused (never
//!   silently dropped after being accepted).
//! - Deduplicated by transaction hash.
//! - Per account, ordered by nonce: a block takes an account's transactions from its
//!   next nonce up, without gaps. A nonce too far ahead of the account's next one is
//!   refused, so one account cannot fill the pool with transactions that cannot run.
//! - Signatures are checked once, in batches, before a transaction enters (see
//!   [`Intake`]); blocks built from the pool skip that check, and so does validating a
//!   proposal whose transactions are here.
//! - After each committed block, its transactions leave and every transaction whose
//!   nonce is now used is evicted.
//!
//! Why a transaction was refused or evicted is remembered (bounded, least recently
//! used first out) so `GET /v1/txs/{hash}` can say.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use foldhash::HashMapExt;
use lru::LruCache;
use stele_consensus::{Hash, PublicKey, SigningDomain};
use stele_ledger::tx::{KeyCache, verify_signatures_cached};
use stele_ledger::{Account, SignedTransaction, StateKey, StateReader, TxDecodeError};

/// Limits of the pool.
#[derive(Clone, Debug)]
pub struct MempoolLimits {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
    /// Furthest a nonce may be ahead of the account's next nonce.
    pub max_nonce_gap: u64,
    /// Largest transaction (the genesis' `max_tx_bytes`).
    pub max_tx_bytes: usize,
}

/// Why a transaction was not taken, or was evicted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a decodable transaction, or too large.
    #[error("{0}")]
    Decode(String),
    /// Signed for another chain.
    #[error("wrong chain id: transaction is for {got:?}, this chain is {expected:?}")]
    WrongChain {
        /// This chain.
        expected: String,
        /// The transaction's chain id.
        got: String,
    },
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The signer has no account.
    #[error("signer {0} has no account")]
    UnknownSigner(PublicKey),
    /// The nonce was already used by a committed transaction.
    #[error("nonce {got} already used: the account's next nonce is {next}")]
    NonceUsed {
        /// The transaction's nonce.
        got: u64,
        /// The account's next nonce.
        next: u64,
    },
    /// The nonce is too far ahead.
    #[error("nonce {got} is too far ahead of the account's next nonce {next}")]
    NonceTooFar {
        /// The transaction's nonce.
        got: u64,
        /// The account's next nonce.
        next: u64,
    },
    /// Another transaction with this signer and nonce is already waiting.
    #[error("another transaction with nonce {0} from this signer is already pending")]
    NonceTaken(u64),
    /// The pool is full.
    #[error("mempool full ({0})")]
    Full(&'static str),
    /// A block builder refused it (for example, a failure that keeps it out of blocks).
    #[error("{0}")]
    Excluded(String),
    /// The state could not be read.
    #[error("node error: {0}")]
    Internal(String),
}

impl From<TxDecodeError> for Rejection {
    fn from(e: TxDecodeError) -> Self {
        Rejection::Decode(e.to_string())
    }
}

/// What happened to one submitted transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Accepted now (and to be gossiped).
    Accepted(Hash),
    /// Already waiting here.
    AlreadyPending(Hash),
    /// Refused, with the reason. The hash is there when the bytes decoded.
    Rejected(Option<Hash>, Rejection),
}

struct Entry {
    tx: SignedTransaction,
    bytes: usize,
    seq: u64,
}

/// Where a transaction stands in the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolStatus {
    /// Waiting for a block.
    Pending,
    /// Refused or evicted, with the reason.
    Rejected(String),
    /// Not known here.
    Unknown,
}

/// The pool itself. Shared behind a mutex; every method is short (signature checks and
/// state reads happen in [`Intake`], outside the lock).
///
/// Its maps hash with foldhash, seeded per process: the keys are transaction hashes
/// and account keys, hashed for every transaction several times over (entry, block
/// check, commit), and SipHash took about 1.5% of the machine there.
pub struct Mempool {
    limits: MempoolLimits,
    txs: foldhash::HashMap<Hash, Entry>,
    accounts: foldhash::HashMap<PublicKey, BTreeMap<u64, Hash>>,
    arrival: BTreeMap<u64, Hash>,
    next_seq: u64,
    bytes: usize,
    rejected: LruCache<Hash, String>,
}

const REJECTIONS_REMEMBERED: usize = 100_000;

impl Mempool {
    /// An empty pool.
    pub fn new(limits: MempoolLimits) -> Self {
        Mempool {
            limits,
            txs: foldhash::HashMap::new(),
            accounts: foldhash::HashMap::new(),
            arrival: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            rejected: LruCache::new(
                NonZeroUsize::new(REJECTIONS_REMEMBERED).expect("constant is positive"),
            ),
        }
    }

    /// Transactions waiting.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Encoded bytes waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `hash` waits here (its signature was checked on entry).
    pub fn contains(&self, hash: &Hash) -> bool {
        self.txs.contains_key(hash)
    }

    /// Where `hash` stands.
    pub fn status(&mut self, hash: &Hash) -> PoolStatus {
        if self.txs.contains_key(hash) {
            PoolStatus::Pending
        } else if let Some(reason) = self.rejected.get(hash) {
            PoolStatus::Rejected(reason.clone())
        } else {
            PoolStatus::Unknown
        }
    }

    /// Records why `hash` was refused.
    pub fn remember_rejection(&mut self, hash: Hash, reason: &Rejection) {
        self.rejected.put(hash, reason.to_string());
    }

    /// Inserts a transaction whose signature, chain and nonce [`Intake`] checked.
    fn insert(&mut self, hash: Hash, tx: SignedTransaction, bytes: usize) -> Admission {
        if self.txs.contains_key(&hash) {
            return Admission::AlreadyPending(hash);
        }
        let signer = tx.tx.signer;
        let nonce = tx.tx.nonce;
        if self
            .accounts
            .get(&signer)
            .is_some_and(|nonces| nonces.contains_key(&nonce))
        {
            return self.reject(hash, Rejection::NonceTaken(nonce));
        }
        if self.txs.len() >= self.limits.max_txs {
            return self.reject(hash, Rejection::Full("transaction count limit"));
        }
        if self.bytes + bytes > self.limits.max_bytes {
            return self.reject(hash, Rejection::Full("byte limit"));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.arrival.insert(seq, hash);
        self.accounts.entry(signer).or_default().insert(nonce, hash);
        self.bytes += bytes;
        self.txs.insert(hash, Entry { tx, bytes, seq });
        self.rejected.pop(&hash);
        Admission::Accepted(hash)
    }

    fn reject(&mut self, hash: Hash, reason: Rejection) -> Admission {
        self.remember_rejection(hash, &reason);
        Admission::Rejected(Some(hash), reason)
    }

    fn remove(&mut self, hash: &Hash) -> Option<SignedTransaction> {
        let entry = self.txs.remove(hash)?;
        self.bytes -= entry.bytes;
        self.arrival.remove(&entry.seq);
        let signer = entry.tx.tx.signer;
        if let Some(nonces) = self.accounts.get_mut(&signer) {
            nonces.remove(&entry.tx.tx.nonce);
            if nonces.is_empty() {
                self.accounts.remove(&signer);
            }
        }
        Some(entry.tx)
    }

    /// Candidates for the next block, at most `max`: accounts in the order their
    /// oldest waiting transaction arrived, each account's transactions by increasing
    /// nonce with no gap (a gap ends that account's run for this block).
    pub fn candidates(&self, max: usize) -> Vec<SignedTransaction> {
        let mut out = Vec::new();
        let mut seen: foldhash::HashSet<PublicKey> = foldhash::HashSet::default();
        for hash in self.arrival.values() {
            if out.len() >= max {
                break;
            }
            let Some(entry) = self.txs.get(hash) else {
                continue;
            };
            let signer = entry.tx.tx.signer;
            if !seen.insert(signer) {
                continue;
            }
            let Some(nonces) = self.accounts.get(&signer) else {
                continue;
            };
            let mut expected = None;
            for (nonce, hash) in nonces {
                if out.len() >= max || expected.is_some_and(|e| e != *nonce) {
                    break;
                }
                if let Some(entry) = self.txs.get(hash) {
                    out.push(entry.tx.clone());
                }
                expected = Some(nonce + 1);
            }
        }
        out
    }

    /// Drops transactions a block builder refused, with the reason (transactions that
    /// only wait for an earlier nonce stay).
    pub fn exclude(&mut self, refused: &[(Hash, String)]) {
        for (hash, reason) in refused {
            if self.remove(hash).is_some() {
                self.rejected.put(*hash, reason.clone());
            }
        }
    }

    /// After a block: removes its transactions, then evicts every waiting transaction
    /// of their signers whose nonce is now used. `hashes` are the transactions' hashes
    /// (from their receipts).
    ///
    /// A block includes a transaction only at its signer's next nonce, and every
    /// included one advances it by one, failed or not; so a signer's next nonce after
    /// the block is one past its last transaction there, without reading the state.
    pub fn committed(&mut self, included: &[SignedTransaction], hashes: &[Hash]) -> usize {
        debug_assert_eq!(included.len(), hashes.len(), "one hash per transaction");
        let mut touched: Vec<(PublicKey, u64)> = Vec::with_capacity(included.len());
        for (tx, hash) in included.iter().zip(hashes) {
            self.remove(hash);
            touched.push((tx.tx.signer, tx.tx.nonce.saturating_add(1)));
        }
        // Each signer once, with its highest next nonce.
        touched.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        touched.dedup_by_key(|(signer, _)| *signer);
        let mut evicted = 0;
        for (signer, next) in touched {
            let stale: Vec<(u64, Hash)> = match self.accounts.get(&signer) {
                Some(nonces) => nonces.range(..next).map(|(n, h)| (*n, *h)).collect(),
                None => continue,
            };
            for (nonce, hash) in stale {
                self.remove(&hash);
                self.rejected
                    .put(hash, Rejection::NonceUsed { got: nonce, next }.to_string());
                evicted += 1;
            }
        }
        evicted
    }
}

/// The checks before a transaction enters the pool, done outside its lock: decoding
/// with the size limit, chain id, duplicates, the signer's account and nonce against
/// the committed state, and the signatures of the whole batch at once.
pub struct Intake<'a> {
    /// The chain's signing domain.
    pub domain: &'a SigningDomain,
    /// Pool limits (for the transaction size and nonce gap).
    pub limits: &'a MempoolLimits,
    /// Decompressed signer keys, shared by all intakes of the node.
    pub keys: Option<&'a KeyCache>,
}

/// What [`Intake::check`] decided, per input, and how many signatures it checked.
pub struct Checks {
    /// Per input: a transaction ready for [`Mempool::admit`], or the outcome.
    pub results: Vec<Result<Checked, Admission>>,
    /// Signatures checked (those of the transactions that passed every other check).
    pub signatures_checked: usize,
}

/// A decoded transaction that passed every check but the pool's own (capacity and
/// nonce already taken).
pub struct Checked {
    hash: Hash,
    tx: SignedTransaction,
    bytes: usize,
}

impl Intake<'_> {
    /// Decodes and checks raw transactions against `state` (the latest committed
    /// state). `already` says whether a hash is already pending, so those skip the
    /// signature check; `committed` is asked about a transaction whose nonce is used
    /// (an index lookup, so only then), to say where it was committed.
    pub fn check<S: StateReader>(
        &self,
        raw: &[Vec<u8>],
        state: &S,
        already: &dyn Fn(&Hash) -> Option<Admission>,
        committed: &dyn Fn(&Hash) -> Option<Admission>,
    ) -> Checks {
        let mut out: Vec<Result<Checked, Admission>> = Vec::with_capacity(raw.len());
        for bytes in raw {
            out.push(self.check_one(bytes, state, already, committed));
        }
        let to_verify: Vec<(usize, &SignedTransaction)> = out
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().ok().map(|c| (i, &c.tx)))
            .collect();
        let signatures_checked = to_verify.len();
        let txs: Vec<&SignedTransaction> = to_verify.iter().map(|(_, tx)| *tx).collect();
        let results = verify_signatures_cached(self.domain, &txs, self.keys);
        let failed: Vec<(usize, String)> = to_verify
            .iter()
            .zip(results)
            .filter_map(|((i, _), r)| r.err().map(|e| (*i, e.to_string())))
            .collect();
        for (i, reason) in failed {
            let hash = out[i].as_ref().ok().map(|c| c.hash);
            out[i] = Err(Admission::Rejected(hash, Rejection::BadSignature(reason)));
        }
        Checks {
            results: out,
            signatures_checked,
        }
    }

    fn check_one<S: StateReader>(
        &self,
        bytes: &[u8],
        state: &S,
        already: &dyn Fn(&Hash) -> Option<Admission>,
        committed: &dyn Fn(&Hash) -> Option<Admission>,
    ) -> Result<Checked, Admission> {
        let tx = SignedTransaction::decode(bytes, self.limits.max_tx_bytes)
            .map_err(|e| Admission::Rejected(None, e.into()))?;
        let hash = tx.hash();
        let reject = |reason| Admission::Rejected(Some(hash), reason);
        if tx.tx.chain_id != self.domain.chain_id() {
            return Err(reject(Rejection::WrongChain {
                expected: self.domain.chain_id().to_owned(),
                got: tx.tx.chain_id.clone(),
            }));
        }
        if let Some(known) = already(&hash) {
            return Err(known);
        }
        let account: Option<Account> = state
            .decoded(StateKey::Account(tx.tx.signer))
            .map_err(|e| reject(Rejection::Internal(e.to_string())))?;
        let Some(account) = account else {
            return Err(reject(Rejection::UnknownSigner(tx.tx.signer)));
        };
        if tx.tx.nonce < account.nonce {
            if let Some(known) = committed(&hash) {
                return Err(known);
            }
            return Err(reject(Rejection::NonceUsed {
                got: tx.tx.nonce,
                next: account.nonce,
            }));
        }
        if tx.tx.nonce - account.nonce > self.limits.max_nonce_gap {
            return Err(reject(Rejection::NonceTooFar {
                got: tx.tx.nonce,
                next: account.nonce,
            }));
        }
        Ok(Checked {
            hash,
            tx,
            bytes: bytes.len(),
        })
    }
}

impl Mempool {
    /// Admits checked transactions (or records their rejection); returns each outcome
    /// in order, and the encodings of those accepted (to gossip).
    pub fn admit(&mut self, checked: Vec<Result<Checked, Admission>>) -> Vec<Admission> {
        checked
            .into_iter()
            .map(|c| match c {
                Ok(c) => self.insert(c.hash, c.tx, c.bytes),
                Err(admission) => {
                    if let Admission::Rejected(Some(hash), reason) = &admission {
                        self.remember_rejection(*hash, reason);
                    }
                    admission
                }
            })
            .collect()
    }

    /// The nonce a new transaction from `account` should carry: past `committed` (the
    /// account's next nonce in the committed state) and every waiting transaction that
    /// follows it without a gap.
    pub fn next_nonce(&self, account: &PublicKey, committed: u64) -> u64 {
        let mut next = committed;
        if let Some(nonces) = self.accounts.get(account) {
            for nonce in nonces.range(committed..).map(|(n, _)| *n) {
                if nonce != next {
                    break;
                }
                next += 1;
            }
        }
        next
    }

    /// The waiting transaction `hash`, if any.
    pub fn get(&self, hash: &Hash) -> Option<&SignedTransaction> {
        self.txs.get(hash).map(|e| &e.tx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stele_consensus::SigningKey;
    use stele_ledger::{Genesis, GenesisAccount, MemoryState, Operation, Transaction};

    fn limits() -> MempoolLimits {
        MempoolLimits {
            max_txs: 4,
            max_bytes: 1 << 20,
            max_nonce_gap: 3,
            max_tx_bytes: 1024,
        }
    }

    fn setup() -> (SigningDomain, SigningKey, MemoryState) {
        let key = SigningKey::from_seed([7; 32]);
        let genesis = Genesis {
            chain_id: "pool".into(),
            genesis_time_ms: 0,
            params: Default::default(),
            validators: vec![stele_ledger::GenesisValidator {
                name: "v".into(),
                key: SigningKey::from_seed([1; 32]).public_key(),
                power: 1,
                address: "127.0.0.1:1".into(),
            }],
            accounts: vec![
                GenesisAccount {
                    account: key.public_key(),
                    balance: 100,
                    roles: vec![],
                },
                GenesisAccount {
                    account: SigningKey::from_seed([8; 32]).public_key(),
                    balance: 100,
                    roles: vec![],
                },
            ],
            peers: vec![],
        };
        (
            genesis.signing_domain().unwrap(),
            key,
            genesis.memory_state().unwrap(),
        )
    }

    fn transfer(domain: &SigningDomain, key: &SigningKey, nonce: u64) -> SignedTransaction {
        Transaction {
            chain_id: domain.chain_id().into(),
            signer: key.public_key(),
            nonce,
            op: Operation::Transfer {
                to: key.public_key(),
                amount: 1,
            },
        }
        .sign(domain, key)
    }

    fn submit(
        pool: &mut Mempool,
        domain: &SigningDomain,
        state: &MemoryState,
        raw: Vec<Vec<u8>>,
    ) -> Vec<Admission> {
        let limits = limits();
        let intake = Intake {
            domain,
            limits: &limits,
            keys: None,
        };
        let checked = intake.check(&raw, state, &|_| None, &|_| None);
        pool.admit(checked.results)
    }

    /// Only the transactions that pass every other check have their signature checked
    /// (and counted).
    #[test]
    fn counts_the_signatures_it_checks() {
        let (domain, key, state) = setup();
        let limits = limits();
        let intake = Intake {
            domain: &domain,
            limits: &limits,
            keys: None,
        };
        let stranger = SigningKey::from_seed([9; 32]);
        let raw = vec![
            transfer(&domain, &key, 0).encode(),
            transfer(&domain, &stranger, 0).encode(),
            vec![1, 2, 3],
            transfer(&domain, &key, 1).encode(),
        ];
        let checks = intake.check(&raw, &state, &|_| None, &|_| None);
        assert_eq!(checks.signatures_checked, 2);
        let passed: Vec<bool> = checks.results.iter().map(Result::is_ok).collect();
        assert_eq!(passed, vec![true, false, false, true]);
    }

    #[test]
    fn checks_and_orders_by_nonce() {
        let (domain, key, state) = setup();
        let mut pool = Mempool::new(limits());
        let txs: Vec<SignedTransaction> = (0..3).map(|n| transfer(&domain, &key, n)).collect();
        // Arrive out of order; candidates come back in nonce order.
        let raw = vec![txs[2].encode(), txs[0].encode(), txs[1].encode()];
        let outcomes = submit(&mut pool, &domain, &state, raw);
        assert!(outcomes.iter().all(|a| matches!(a, Admission::Accepted(_))));
        let nonces: Vec<u64> = pool.candidates(10).iter().map(|t| t.tx.nonce).collect();
        assert_eq!(nonces, vec![0, 1, 2]);
        assert_eq!(pool.next_nonce(&key.public_key(), 0), 3);
        assert_eq!(pool.next_nonce(&key.public_key(), 5), 5);
        // A committed block with nonces 0 and 1 removes them; nonce 2 stays.
        let hashes: Vec<Hash> = txs[..2].iter().map(SignedTransaction::hash).collect();
        let evicted = pool.committed(&txs[..2], &hashes);
        assert_eq!(evicted, 0);
        assert_eq!(pool.len(), 1);
        assert_eq!(pool.committed(&[], &[]), 0);
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_block_of_other_transactions_evicts_the_nonces_it_used() {
        let (domain, key, state) = setup();
        let mut pool = Mempool::new(limits());
        let ours: Vec<SignedTransaction> = (0..4).map(|n| transfer(&domain, &key, n)).collect();
        let raw = ours.iter().map(SignedTransaction::encode).collect();
        let outcomes = submit(&mut pool, &domain, &state, raw);
        assert!(outcomes.iter().all(|a| matches!(a, Admission::Accepted(_))));
        // Another node's pool held other transactions of the same signer at nonces 0
        // to 2 (here: the same transfers, signed again with a different amount), and
        // they were committed, in the block's order (nonces ascending).
        let theirs: Vec<SignedTransaction> = (0..3)
            .map(|nonce| {
                Transaction {
                    chain_id: domain.chain_id().to_owned(),
                    signer: key.public_key(),
                    nonce,
                    op: Operation::Transfer {
                        to: key.public_key(),
                        amount: 2,
                    },
                }
                .sign(&domain, &key)
            })
            .collect();
        let hashes: Vec<Hash> = theirs.iter().map(SignedTransaction::hash).collect();
        assert_eq!(pool.committed(&theirs, &hashes), 3);
        let left: Vec<u64> = pool.candidates(10).iter().map(|t| t.tx.nonce).collect();
        assert_eq!(left, vec![3]);
        assert!(matches!(
            pool.status(&ours[1].hash()),
            PoolStatus::Rejected(reason) if reason.contains("nonce")
        ));
    }

    #[test]
    fn refuses_with_reasons() {
        let (domain, key, state) = setup();
        let mut pool = Mempool::new(limits());
        let mut forged = transfer(&domain, &key, 0);
        forged.tx.nonce = 1;
        let other_chain = {
            let other = SigningDomain::new("other").unwrap();
            transfer(&other, &key, 0)
        };
        let stranger = transfer(&domain, &SigningKey::from_seed([9; 32]), 0);
        let raw = vec![
            forged.encode(),
            other_chain.encode(),
            vec![1, 2, 3],
            vec![0; 2000],
            transfer(&domain, &key, 9).encode(),
            stranger.encode(),
        ];
        let outcomes = submit(&mut pool, &domain, &state, raw);
        let reasons: Vec<Rejection> = outcomes
            .into_iter()
            .map(|a| match a {
                Admission::Rejected(_, r) => r,
                other => panic!("accepted: {other:?}"),
            })
            .collect();
        assert!(matches!(reasons[0], Rejection::BadSignature(_)));
        assert!(matches!(reasons[1], Rejection::WrongChain { .. }));
        assert!(matches!(reasons[2], Rejection::Decode(_)));
        assert!(reasons[3].to_string().contains("2000"), "{}", reasons[3]);
        assert!(matches!(
            reasons[4],
            Rejection::NonceTooFar { got: 9, next: 0 }
        ));
        assert!(matches!(reasons[5], Rejection::UnknownSigner(_)));
        assert!(pool.is_empty());
        // The reason is remembered for status queries.
        assert!(matches!(
            pool.status(&forged.hash()),
            PoolStatus::Rejected(r) if r.contains("signature")
        ));
    }

    #[test]
    fn bounded_and_deduplicated() {
        let (domain, key, state) = setup();
        let mut pool = Mempool::new(limits());
        let tx = transfer(&domain, &key, 0);
        submit(&mut pool, &domain, &state, vec![tx.encode()]);
        let again = submit(&mut pool, &domain, &state, vec![tx.encode()]);
        assert_eq!(again, vec![Admission::AlreadyPending(tx.hash())]);
        // Same nonce, different transaction.
        let mut other = Transaction {
            chain_id: domain.chain_id().into(),
            signer: key.public_key(),
            nonce: 0,
            op: Operation::Burn { amount: 1 },
        }
        .sign(&domain, &key);
        let outcome = submit(&mut pool, &domain, &state, vec![other.encode()]);
        assert!(matches!(
            outcome[0],
            Admission::Rejected(_, Rejection::NonceTaken(0))
        ));
        for nonce in 1..4 {
            other = transfer(&domain, &key, nonce);
            submit(&mut pool, &domain, &state, vec![other.encode()]);
        }
        assert_eq!(pool.len(), 4);
        // Full at four.
        let second = SigningKey::from_seed([8; 32]);
        let outcome = submit(
            &mut pool,
            &domain,
            &state,
            vec![transfer(&domain, &second, 0).encode()],
        );
        assert!(
            matches!(outcome[0], Admission::Rejected(_, Rejection::Full(_))),
            "{outcome:?}"
        );
    }
}
