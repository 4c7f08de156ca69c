//! Errors of the ledger crate.

use stele_consensus::{CertificateError, Hash, PublicKey};
use thiserror::Error;

use crate::tx::TxSignatureError;

/// Failures of the store, the state and the genesis state.
#[derive(Debug, Error)]
pub enum LedgerError {
    /// RocksDB reported an error. Writes that fail this way are fatal to a node.
    #[error("database error: {source}")]
    Database {
        /// The RocksDB error.
        #[from]
        source: rocksdb::Error,
    },
    /// Stored data does not decode or contradicts itself.
    #[error("corrupt store: {what}")]
    Corrupt {
        /// What is wrong, and where.
        what: String,
    },
    /// The genesis cannot produce a state.
    #[error("invalid genesis: {reason}")]
    InvalidGenesis {
        /// Field and problem.
        reason: String,
    },
    /// The store was created for another chain.
    #[error("the store holds the chain with genesis {stored}, not {given}")]
    WrongGenesis {
        /// Genesis hash recorded in the store.
        stored: Hash,
        /// Genesis hash it was opened with.
        given: Hash,
    },
    /// The store has no genesis yet.
    #[error("the store has not been initialised with a genesis")]
    NotInitialized,
    /// A state delta computed on another state than the one it is applied to.
    #[error("state delta was computed on root {got}, but the state is at {expected}")]
    StaleDelta {
        /// Current root.
        expected: Hash,
        /// Root the delta was computed on.
        got: Hash,
    },
    /// A block that does not extend the stored chain.
    #[error("expected a block at height {expected}, got height {got}")]
    NotNextHeight {
        /// Next height of the store.
        expected: u64,
        /// Height offered.
        got: u64,
    },
    /// A state version that is no longer (or not yet) kept.
    #[error("state at height {version} is not available (kept: {oldest} to {latest})")]
    VersionUnavailable {
        /// Version asked for.
        version: u64,
        /// Oldest version kept.
        oldest: u64,
        /// Latest version.
        latest: u64,
    },
}

/// A transaction that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxDecodeError {
    /// Larger than allowed; nothing was decoded.
    #[error("transaction is {size} bytes, the limit is {max}")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Limit.
        max: usize,
    },
    /// Not a valid encoding.
    #[error("malformed transaction: {reason}")]
    Malformed {
        /// Decoder message.
        reason: String,
    },
}

/// Why a transaction cannot be included in a block at all. Unlike a
/// [`crate::TxFailure`], nothing about it is recorded and its nonce is not used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TxRejection {
    /// Signed for another chain.
    #[error("transaction is for chain {got:?}, this chain is {expected:?}")]
    WrongChain {
        /// This chain.
        expected: String,
        /// The transaction's chain.
        got: String,
    },
    /// The signer has no account.
    #[error("signer {signer} has no account")]
    UnknownSigner {
        /// The signer.
        signer: PublicKey,
    },
    /// Not the signer's next nonce.
    #[error("nonce {got} does not match the account's next nonce {expected}")]
    BadNonce {
        /// The account's next nonce.
        expected: u64,
        /// The transaction's nonce.
        got: u64,
    },
    /// Larger than the chain allows.
    #[error("transaction is {size} bytes, the chain allows {max}")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// Chain limit.
        max: usize,
    },
}

/// Why a block is not a valid next block.
#[derive(Debug, Error)]
pub enum BlockError {
    /// Another chain's block.
    #[error("block is for chain {got:?}, expected {expected:?}")]
    WrongChainId {
        /// This chain.
        expected: String,
        /// The block's chain.
        got: String,
    },
    /// Not the next height (a block missing, repeated or out of order).
    #[error("expected height {expected}, got {got}")]
    UnexpectedHeight {
        /// Next height.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// Does not link to the previous block.
    #[error("parent hash {got} does not match the previous block {expected}")]
    WrongParent {
        /// Hash of the previous block (or the genesis).
        expected: Hash,
        /// The header's parent hash.
        got: Hash,
    },
    /// Time runs backwards.
    #[error("block time {got} ms is before its parent's {parent} ms")]
    TimeBeforeParent {
        /// Parent's time.
        parent: u64,
        /// This block's time.
        got: u64,
    },
    /// The proposer is not a validator of this height.
    #[error("proposer {proposer} is not in the validator set")]
    UnknownProposer {
        /// The header's proposer.
        proposer: PublicKey,
    },
    /// The header names another validator set.
    #[error("validator set hash {got} does not match the set in force {expected}")]
    WrongValidatorSet {
        /// Hash of the set in force at this height.
        expected: Hash,
        /// The header's hash.
        got: Hash,
    },
    /// The block's own certificate is bad.
    #[error("certificate: {0}")]
    Certificate(#[source] CertificateError),
    /// No certificate of the parent, past height 1.
    #[error("last commit is missing")]
    LastCommitMissing,
    /// A parent certificate at height 1.
    #[error("last commit present at height 1")]
    UnexpectedLastCommit,
    /// `last_commit` does not match `last_commit_hash`.
    #[error("last commit hashes to {got}, the header says {expected}")]
    LastCommitHashMismatch {
        /// The header's value.
        expected: Hash,
        /// Hash of the carried certificate.
        got: Hash,
    },
    /// The parent certificate does not certify the parent.
    #[error("last commit: {0}")]
    LastCommit(#[source] CertificateError),
    /// Too many transactions.
    #[error("{count} transactions, the limit is {max}")]
    TooManyTransactions {
        /// Transactions in the block.
        count: usize,
        /// Chain limit.
        max: usize,
    },
    /// Too many bytes.
    #[error("block is {size} bytes, the limit is {max}")]
    BlockTooLarge {
        /// Encoded size.
        size: usize,
        /// Chain limit.
        max: usize,
    },
    /// The transactions are not the ones the header commits to.
    #[error("transaction root {got} does not match the header's {expected}")]
    TransactionRootMismatch {
        /// The header's value.
        expected: Hash,
        /// Root of the carried transactions.
        got: Hash,
    },
    /// A transaction whose signature does not verify.
    #[error("transaction {index}: {error}")]
    BadTransactionSignature {
        /// Position in the block.
        index: usize,
        /// What is wrong.
        error: TxSignatureError,
    },
    /// A transaction that may not be included.
    #[error("transaction {index}: {rejection}")]
    InvalidTransaction {
        /// Position in the block.
        index: usize,
        /// Why.
        rejection: TxRejection,
    },
    /// Re-executing gives other receipts.
    #[error("receipts root {got} from execution does not match the header's {expected}")]
    ReceiptsRootMismatch {
        /// The header's value.
        expected: Hash,
        /// Root of the recomputed receipts.
        got: Hash,
    },
    /// Re-executing gives another state.
    #[error("state root {got} from execution does not match the header's {expected}")]
    StateRootMismatch {
        /// The header's value.
        expected: Hash,
        /// Recomputed root.
        got: Hash,
    },
    /// The header names another next validator set.
    #[error("next validator set hash {got} does not match the scheduled set {expected}")]
    WrongNextValidatorSet {
        /// Hash of the set scheduled for the next height.
        expected: Hash,
        /// The header's hash.
        got: Hash,
    },
    /// Reading or computing the state failed.
    #[error("state: {0}")]
    State(#[from] LedgerError),
}

/// The first bad block of a history, and what is wrong with it.
#[derive(Debug, Error)]
#[error("height {height}: {error}")]
pub struct HistoryError {
    /// The first height that fails.
    pub height: u64,
    /// What fails.
    #[source]
    pub error: BlockError,
}

/// Why a state proof does not prove what it is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ProofError {
    /// More siblings than key bits.
    #[error("proof is {depth} levels deep, keys have 256 bits")]
    TooDeep {
        /// Siblings carried.
        depth: usize,
    },
    /// An inclusion proof for another key.
    #[error("proof is for another key")]
    KeyMismatch,
    /// An inclusion proof for another value.
    #[error("proof is for another value")]
    ValueMismatch,
    /// A non-inclusion claim, but the proof shows the key.
    #[error("the key is present")]
    KeyPresent,
    /// An inclusion claim, but the proof ends in an empty subtree.
    #[error("the key is absent")]
    KeyAbsent,
    /// The leaf of a non-inclusion proof is not on the key's path.
    #[error("the proof's leaf is not on the key's path")]
    LeafOffPath,
    /// The path does not hash to the root.
    #[error("proof does not match the state root")]
    RootMismatch,
}
