//! Deterministic block execution.
//!
//! A [`BlockExecutor`] applies transactions in order on top of a committed state and
//! collects every change in memory; [`BlockExecutor::finish`] turns them into receipts,
//! a state delta and the roots a header must carry. The same code serves the proposer
//! ([`build_block`]), a validator checking a proposal ([`validate_block`]), block sync
//! and the auditor, so they cannot disagree.
//!
//! Rules:
//! - a transaction for another chain, from an account that does not exist, with a nonce
//!   other than the signer's next one, or over the size limit is *rejected*: it may not
//!   be in a block at all;
//! - otherwise it is included; if its operation fails (funds, roles, overflow, unknown
//!   account...) the receipt carries the typed [`TxFailure`], the nonce still advances,
//!   and nothing else changes;
//! - balances never go negative and never overflow; total supply is tracked and bounds
//!   every balance;
//! - validator changes are checked against the set they would produce, scheduled for
//!   `height + validator_change_delay`, and applied when the chain reaches that height.

use std::collections::BTreeMap;

use stele_consensus::{CommitCertificate, Hash, PublicKey, SigningDomain, ValidatorSet};

use crate::block::{Block, Header, Receipt, TxFailure, TxOutcome, merkle_root};
use crate::error::{BlockError, LedgerError, TxRejection};
use crate::genesis::{ChainParams, encode};
use crate::state::{
    Account, ScheduledChange, StateDelta, StateKey, StateReader, ValidatorChange,
    ValidatorSchedule, ValueChange,
};
use crate::tx::{KeyCache, Operation, Role, SignedTransaction, verify_signatures_cached};

/// The last committed block (or the genesis, at height 0): what the next block builds on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainTip {
    /// Its height.
    pub height: u64,
    /// Its hash (the genesis hash at height 0).
    pub block_hash: Hash,
    /// Its time (the genesis time at height 0).
    pub time_ms: u64,
}

/// What the executor needs to know about the chain.
#[derive(Clone, Debug)]
pub struct ChainContext {
    /// The chain's signing domain (which carries the chain id).
    pub domain: SigningDomain,
    /// The genesis parameters.
    pub params: ChainParams,
    /// Decompressed signer keys to reuse when checking a block's signatures (a node
    /// shares one with its mempool intake); `None` decompresses every signer's key.
    pub keys: Option<std::sync::Arc<KeyCache>>,
}

impl ChainContext {
    /// The chain id.
    pub fn chain_id(&self) -> &str {
        self.domain.chain_id()
    }
}

/// The result of executing a block.
#[derive(Clone, Debug)]
pub struct ExecutionOutcome {
    /// The executed height.
    pub height: u64,
    /// Merkle root of the transaction hashes.
    pub tx_root: Hash,
    /// One receipt per transaction.
    pub receipts: Vec<Receipt>,
    /// Merkle root of the receipt hashes.
    pub receipts_root: Hash,
    /// The state change, with the new root.
    pub delta: StateDelta,
    /// The set that certifies this height.
    pub validator_set: ValidatorSet,
    /// The set that certifies the next height.
    pub next_validator_set: ValidatorSet,
}

impl ExecutionOutcome {
    /// State root after the block.
    pub fn state_root(&self) -> Hash {
        self.delta.root
    }
}

struct Cached<T> {
    /// The item's tree key (hashed once per block).
    key: Hash,
    original: Option<Vec<u8>>,
    current: T,
    dirty: bool,
}

/// Why [`BlockExecutor::apply`] did not apply a transaction.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The transaction may not be included.
    #[error(transparent)]
    Rejected(#[from] TxRejection),
    /// Reading the state failed; the block cannot be executed on this node.
    #[error(transparent)]
    State(#[from] LedgerError),
}

/// Executes the transactions of one block on top of a committed state.
pub struct BlockExecutor<'a, S: StateReader + ?Sized> {
    state: &'a S,
    context: &'a ChainContext,
    height: u64,
    accounts: BTreeMap<PublicKey, Cached<Option<Account>>>,
    schedule: Cached<ValidatorSchedule>,
    supply: Cached<u64>,
    tx_hashes: Vec<Hash>,
    receipts: Vec<Receipt>,
    validator_set: ValidatorSet,
}

impl<'a, S: StateReader + ?Sized> BlockExecutor<'a, S> {
    /// Starts executing height `state.version() + 1`.
    pub fn new(state: &'a S, context: &'a ChainContext) -> Result<Self, LedgerError> {
        let (schedule_bytes, schedule) =
            read_required::<S, ValidatorSchedule>(state, StateKey::ValidatorSchedule)?;
        let (supply_bytes, supply) = read_required::<S, u64>(state, StateKey::Supply)?;
        Ok(BlockExecutor {
            state,
            context,
            height: state.version() + 1,
            accounts: BTreeMap::new(),
            validator_set: schedule.next.clone(),
            schedule: Cached {
                key: StateKey::ValidatorSchedule.hash(),
                original: Some(schedule_bytes),
                current: schedule,
                dirty: false,
            },
            supply: Cached {
                key: StateKey::Supply.hash(),
                original: Some(supply_bytes),
                current: supply,
                dirty: false,
            },
            tx_hashes: Vec::new(),
            receipts: Vec::new(),
        })
    }

    /// The height being executed.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The validator set of this height.
    pub fn validator_set(&self) -> &ValidatorSet {
        &self.validator_set
    }

    /// Transactions applied so far.
    pub fn tx_count(&self) -> usize {
        self.receipts.len()
    }

    /// Applies one transaction whose signature the caller has verified. A rejected
    /// transaction leaves the executor unchanged.
    pub fn apply(&mut self, tx: &SignedTransaction) -> Result<&Receipt, ApplyError> {
        self.apply_with_hash(tx, tx.hash())
    }

    /// As [`BlockExecutor::apply`], with the transaction hash already computed.
    pub fn apply_with_hash(
        &mut self,
        tx: &SignedTransaction,
        tx_hash: Hash,
    ) -> Result<&Receipt, ApplyError> {
        let chain_id = self.context.chain_id();
        if tx.tx.chain_id != chain_id {
            return Err(TxRejection::WrongChain {
                expected: chain_id.to_owned(),
                got: tx.tx.chain_id.clone(),
            }
            .into());
        }
        let max = self.context.params.max_tx_bytes as usize;
        let size =
            borsh::object_length(tx).expect("borsh length of an in-memory value never fails");
        if size > max {
            return Err(TxRejection::TooLarge { size, max }.into());
        }
        let signer_key = tx.tx.signer;
        let signer = self
            .account(&signer_key)?
            .ok_or(TxRejection::UnknownSigner { signer: signer_key })?;
        if tx.tx.nonce != signer.nonce {
            return Err(TxRejection::BadNonce {
                expected: signer.nonce,
                got: tx.tx.nonce,
            }
            .into());
        }
        // Read every account the operation touches up front, so the operation itself
        // works on cached values only and cannot fail halfway on a storage error.
        if let Some(other) = tx.tx.op.other_account() {
            self.account(&other)?;
        }
        let mut effective_height = None;
        let outcome = match self.execute(&signer_key, signer, &tx.tx.op, &mut effective_height) {
            Ok(()) => TxOutcome::Success,
            Err(failure) => TxOutcome::Failed { failure },
        };
        // The nonce advances whether the operation succeeded or not. Re-read the signer:
        // the operation may have changed its balance or roles.
        let mut signer = self.cached_account(&signer_key).expect("the signer exists");
        signer.nonce = signer
            .nonce
            .checked_add(1)
            .expect("a nonce cannot reach 2^64 one transaction at a time");
        self.put_account(signer_key, signer);
        self.tx_hashes.push(tx_hash);
        self.receipts.push(Receipt {
            tx_hash,
            outcome,
            effective_height,
        });
        Ok(self.receipts.last().expect("just pushed"))
    }

    /// Runs an operation. On `Err` nothing has been written.
    fn execute(
        &mut self,
        signer_key: &PublicKey,
        signer: Account,
        op: &Operation,
        effective_height: &mut Option<u64>,
    ) -> Result<(), TxFailure> {
        let require = |role: Role| {
            if signer.has_role(role) {
                Ok(())
            } else {
                Err(TxFailure::MissingRole { role })
            }
        };
        match *op {
            Operation::Transfer { to, amount } => self.transfer(signer_key, signer, to, amount),
            Operation::Mint { to, amount } => {
                require(Role::Issuer)?;
                self.mint(to, amount)
            }
            Operation::Burn { amount } => {
                require(Role::Issuer)?;
                self.burn(signer_key, signer, amount)
            }
            Operation::CreateAccount { account } => {
                require(Role::Registrar)?;
                self.create_account(account)
            }
            Operation::GrantRole { account, role } => {
                require(Role::Admin)?;
                self.set_role(account, role, true)
            }
            Operation::RevokeRole { account, role } => {
                require(Role::Admin)?;
                self.set_role(account, role, false)
            }
            Operation::AddValidator { key, power } => {
                require(Role::Admin)?;
                *effective_height =
                    Some(self.schedule_change(ValidatorChange::Add { key, power })?);
                Ok(())
            }
            Operation::RemoveValidator { key } => {
                require(Role::Admin)?;
                *effective_height = Some(self.schedule_change(ValidatorChange::Remove { key })?);
                Ok(())
            }
            Operation::SetValidatorPower { key, power } => {
                require(Role::Admin)?;
                *effective_height =
                    Some(self.schedule_change(ValidatorChange::SetPower { key, power })?);
                Ok(())
            }
        }
    }

    fn transfer(
        &mut self,
        from_key: &PublicKey,
        from: Account,
        to_key: PublicKey,
        amount: u64,
    ) -> Result<(), TxFailure> {
        if amount == 0 {
            return Err(TxFailure::ZeroAmount);
        }
        let to = self.existing_account(&to_key)?;
        if from.balance < amount {
            return Err(TxFailure::InsufficientFunds {
                balance: from.balance,
                needed: amount,
            });
        }
        if to_key == *from_key {
            return Ok(());
        }
        let to_balance = to
            .balance
            .checked_add(amount)
            .ok_or(TxFailure::BalanceOverflow { account: to_key })?;
        self.put_account(
            *from_key,
            Account {
                balance: from.balance - amount,
                ..from
            },
        );
        self.put_account(
            to_key,
            Account {
                balance: to_balance,
                ..to
            },
        );
        Ok(())
    }

    fn mint(&mut self, to_key: PublicKey, amount: u64) -> Result<(), TxFailure> {
        if amount == 0 {
            return Err(TxFailure::ZeroAmount);
        }
        let to = self.existing_account(&to_key)?;
        let supply = self
            .supply
            .current
            .checked_add(amount)
            .ok_or(TxFailure::SupplyOverflow)?;
        let balance = to
            .balance
            .checked_add(amount)
            .ok_or(TxFailure::BalanceOverflow { account: to_key })?;
        self.put_account(to_key, Account { balance, ..to });
        self.supply.current = supply;
        self.supply.dirty = true;
        Ok(())
    }

    fn burn(&mut self, key: &PublicKey, account: Account, amount: u64) -> Result<(), TxFailure> {
        if amount == 0 {
            return Err(TxFailure::ZeroAmount);
        }
        if account.balance < amount {
            return Err(TxFailure::InsufficientFunds {
                balance: account.balance,
                needed: amount,
            });
        }
        // Every balance is part of the supply, so this cannot underflow.
        assert!(self.supply.current >= amount, "supply below a balance");
        self.put_account(
            *key,
            Account {
                balance: account.balance - amount,
                ..account
            },
        );
        self.supply.current -= amount;
        self.supply.dirty = true;
        Ok(())
    }

    fn create_account(&mut self, key: PublicKey) -> Result<(), TxFailure> {
        if key.validate().is_err() {
            return Err(TxFailure::InvalidAccountKey { account: key });
        }
        if self.cached_account(&key).is_some() {
            return Err(TxFailure::AccountExists { account: key });
        }
        self.put_account(key, Account::default());
        Ok(())
    }

    fn set_role(&mut self, key: PublicKey, role: Role, grant: bool) -> Result<(), TxFailure> {
        let mut account = self.existing_account(&key)?;
        match (grant, account.has_role(role)) {
            (true, true) => return Err(TxFailure::RoleAlreadyHeld { account: key, role }),
            (false, false) => return Err(TxFailure::RoleNotHeld { account: key, role }),
            (true, false) => account.roles |= role.bit(),
            (false, true) => account.roles &= !role.bit(),
        }
        self.put_account(key, account);
        Ok(())
    }

    /// Checks `change` against the set all pending changes lead to, then schedules it.
    fn schedule_change(&mut self, change: ValidatorChange) -> Result<u64, TxFailure> {
        let schedule = &self.schedule.current;
        let mut projected = schedule
            .projected()
            .map_err(|e| TxFailure::InvalidValidatorSet {
                reason: e.to_string(),
            })?;
        change.apply_to(&mut projected).map_err(|e| match e {
            crate::state::ValidatorChangeError::Exists { key } => {
                TxFailure::ValidatorExists { key }
            }
            crate::state::ValidatorChangeError::NotFound { key } => {
                TxFailure::ValidatorNotFound { key }
            }
            crate::state::ValidatorChangeError::InvalidSet(e) => TxFailure::InvalidValidatorSet {
                reason: e.to_string(),
            },
        })?;
        ValidatorSet::new(projected).map_err(|e| TxFailure::InvalidValidatorSet {
            reason: e.to_string(),
        })?;
        let height = self
            .height
            .checked_add(self.context.params.validator_change_delay)
            .ok_or_else(|| TxFailure::InvalidValidatorSet {
                reason: "effective height overflows".into(),
            })?;
        self.schedule
            .current
            .pending
            .push(ScheduledChange { height, change });
        self.schedule.dirty = true;
        Ok(height)
    }

    /// Reads every account `txs` touch that is not cached yet, in one batched read.
    /// Optional: [`Self::apply`] reads what it needs anyway, one account at a time.
    pub fn prefetch(&mut self, txs: &[SignedTransaction]) -> Result<(), LedgerError> {
        let mut wanted: Vec<PublicKey> = txs
            .iter()
            .flat_map(|tx| [Some(tx.tx.signer), tx.tx.op.other_account()])
            .flatten()
            .filter(|key| !self.accounts.contains_key(key))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let state_keys: Vec<Hash> = wanted
            .iter()
            .map(|k| StateKey::Account(*k).hash())
            .collect();
        let values = self.state.values(&state_keys)?;
        for ((key, state_key), original) in wanted.into_iter().zip(state_keys).zip(values) {
            self.cache_account(key, state_key, original)?;
        }
        Ok(())
    }

    fn account(&mut self, key: &PublicKey) -> Result<Option<Account>, LedgerError> {
        if let Some(cached) = self.accounts.get(key) {
            return Ok(cached.current);
        }
        let state_key = StateKey::Account(*key).hash();
        let original = self.state.value(&state_key)?;
        self.cache_account(*key, state_key, original)
    }

    fn cache_account(
        &mut self,
        key: PublicKey,
        state_key: Hash,
        original: Option<Vec<u8>>,
    ) -> Result<Option<Account>, LedgerError> {
        let current = match &original {
            None => None,
            Some(bytes) => {
                Some(
                    borsh::from_slice::<Account>(bytes).map_err(|e| LedgerError::Corrupt {
                        what: format!("account {key}: {e}"),
                    })?,
                )
            }
        };
        self.accounts.insert(
            key,
            Cached {
                key: state_key,
                original,
                current,
                dirty: false,
            },
        );
        Ok(current)
    }

    /// An account already read by [`Self::account`].
    fn cached_account(&self, key: &PublicKey) -> Option<Account> {
        self.accounts
            .get(key)
            .expect("accounts an operation touches are read before it runs")
            .current
    }

    fn existing_account(&self, key: &PublicKey) -> Result<Account, TxFailure> {
        self.cached_account(key)
            .ok_or(TxFailure::AccountNotFound { account: *key })
    }

    fn put_account(&mut self, key: PublicKey, account: Account) {
        let cached = self
            .accounts
            .get_mut(&key)
            .expect("accounts are read before they are written");
        cached.current = Some(account);
        cached.dirty = true;
    }

    /// Ends the block: moves the validator schedule to the next height, and computes
    /// receipts root, transaction root and the state delta.
    pub fn finish(self) -> Result<ExecutionOutcome, LedgerError> {
        self.finish_with(None)
    }

    /// [`BlockExecutor::finish`], given the transactions' Merkle root when the caller
    /// already computed it (a validator checks it before executing anything).
    fn finish_with(mut self, tx_root: Option<Hash>) -> Result<ExecutionOutcome, LedgerError> {
        let next_height = self.height + 1;
        if self
            .schedule
            .current
            .advance_to(next_height)
            .map_err(|e| LedgerError::Corrupt {
                what: format!("scheduled validator change no longer applies: {e}"),
            })?
        {
            self.schedule.dirty = true;
        }
        let mut values = Vec::with_capacity(self.accounts.len() + 2);
        for cached in self.accounts.values() {
            if cached.dirty {
                values.push(ValueChange {
                    key: cached.key,
                    old: cached.original.clone(),
                    new: cached.current.as_ref().map(encode),
                });
            }
        }
        if self.schedule.dirty {
            values.push(ValueChange {
                key: self.schedule.key,
                old: self.schedule.original.clone(),
                new: Some(encode(&self.schedule.current)),
            });
        }
        if self.supply.dirty {
            values.push(ValueChange {
                key: self.supply.key,
                old: self.supply.original.clone(),
                new: Some(encode(&self.supply.current)),
            });
        }
        let delta = StateDelta::compute(self.state, self.height, values)?;
        let receipt_hashes: Vec<Hash> = self.receipts.iter().map(Receipt::hash).collect();
        Ok(ExecutionOutcome {
            height: self.height,
            tx_root: tx_root.unwrap_or_else(|| merkle_root(&self.tx_hashes)),
            receipts_root: merkle_root(&receipt_hashes),
            receipts: self.receipts,
            delta,
            validator_set: self.validator_set,
            next_validator_set: self.schedule.current.next,
        })
    }
}

fn read_required<S: StateReader + ?Sized, T: borsh::BorshDeserialize>(
    state: &S,
    key: StateKey,
) -> Result<(Vec<u8>, T), LedgerError> {
    let bytes = state
        .value(&key.hash())?
        .ok_or_else(|| LedgerError::Corrupt {
            what: format!("state has no {key:?}"),
        })?;
    let value = borsh::from_slice(&bytes).map_err(|e| LedgerError::Corrupt {
        what: format!("state value {key:?}: {e}"),
    })?;
    Ok((bytes, value))
}

/// A block built by [`build_block`], with what happened to each candidate.
#[derive(Debug)]
pub struct BuiltBlock {
    /// The block, without a certificate.
    pub block: Block,
    /// Its execution result, ready to commit once the block is decided.
    pub outcome: ExecutionOutcome,
    /// Candidates left out because they may not be included, with the reason.
    pub rejected: Vec<(SignedTransaction, TxRejection)>,
}

/// Proposes the next block from `candidates`, whose signatures the caller has verified.
/// Takes them in order while the block's transaction count and size limits allow;
/// candidates that may not be included are returned with their reason.
pub fn build_block<S: StateReader + ?Sized>(
    state: &S,
    context: &ChainContext,
    tip: &ChainTip,
    proposer: PublicKey,
    time_ms: u64,
    candidates: impl IntoIterator<Item = SignedTransaction>,
    last_commit: Option<CommitCertificate>,
) -> Result<BuiltBlock, LedgerError> {
    let mut executor = BlockExecutor::new(state, context)?;
    assert_eq!(executor.height(), tip.height + 1, "state and tip disagree");
    let max_txs = context.params.max_block_txs as usize;
    let last_commit_len = last_commit
        .as_ref()
        .map_or(0, |c| borsh::object_length(c).expect("in-memory length"));
    // Header (bounded by the chain id) plus the length prefix of the transaction list.
    let overhead = 512 + last_commit_len;
    let mut size = overhead;
    let mut txs = Vec::new();
    let mut rejected = Vec::new();
    // Read the accounts of a first block's worth of candidates in one batch; those of
    // later candidates (taken when some are rejected) are read as they come.
    let mut candidates = candidates.into_iter();
    let first: Vec<SignedTransaction> = candidates.by_ref().take(max_txs).collect();
    executor.prefetch(&first)?;
    for tx in first.into_iter().chain(candidates) {
        if txs.len() == max_txs {
            break;
        }
        let tx_len = borsh::object_length(&tx).expect("in-memory length");
        if size + tx_len > context.params.max_block_bytes as usize {
            break;
        }
        match executor.apply(&tx) {
            Ok(_) => {
                size += tx_len;
                txs.push(tx);
            }
            Err(ApplyError::Rejected(rejection)) => rejected.push((tx, rejection)),
            Err(ApplyError::State(e)) => return Err(e),
        }
    }
    let outcome = executor.finish()?;
    let header = Header {
        chain_id: context.chain_id().to_owned(),
        height: outcome.height,
        parent_hash: tip.block_hash,
        time_ms: time_ms.max(tip.time_ms),
        proposer,
        tx_root: outcome.tx_root,
        receipts_root: outcome.receipts_root,
        state_root: outcome.state_root(),
        validator_set_hash: outcome.validator_set.hash(),
        next_validator_set_hash: outcome.next_validator_set.hash(),
        last_commit_hash: last_commit
            .as_ref()
            .map_or(Hash::ZERO, CommitCertificate::hash),
    };
    Ok(BuiltBlock {
        block: Block {
            header,
            txs,
            last_commit,
        },
        outcome,
        rejected,
    })
}

/// Checks that `block` is a valid next block on top of `tip` and `state`, and executes
/// it. `parent_validator_set` is the set of height `tip.height` (for the parent's
/// certificate in `last_commit`); `None` at height 1. Transactions whose hash
/// `already_verified` accepts skip the signature check (hosts cache mempool checks).
/// `certificate`, when given, must decide this block under this height's set: a
/// decided block arriving by sync has one, a proposal does not yet.
///
/// Cheap checks come first, so a bad block costs little: header links, validator set,
/// certificates, sizes and transaction root, then signatures, then execution.
pub fn validate_block<S: StateReader + ?Sized>(
    state: &S,
    context: &ChainContext,
    tip: &ChainTip,
    parent_validator_set: Option<&ValidatorSet>,
    block: &Block,
    already_verified: &dyn Fn(&Hash) -> bool,
    certificate: Option<&CommitCertificate>,
) -> Result<ExecutionOutcome, BlockError> {
    validate_block_hashed(
        state,
        context,
        tip,
        parent_validator_set,
        block,
        block.tx_hashes(),
        already_verified,
        certificate,
    )
}

/// [`validate_block`] with the block's transaction hashes already computed (a host
/// that hashed them to ask its pool about them passes them on). They must be
/// `block.tx_hashes()`: the transaction root is checked against them.
#[allow(clippy::too_many_arguments)]
pub fn validate_block_hashed<S: StateReader + ?Sized>(
    state: &S,
    context: &ChainContext,
    tip: &ChainTip,
    parent_validator_set: Option<&ValidatorSet>,
    block: &Block,
    tx_hashes: Vec<Hash>,
    already_verified: &dyn Fn(&Hash) -> bool,
    certificate: Option<&CommitCertificate>,
) -> Result<ExecutionOutcome, BlockError> {
    assert_eq!(tx_hashes.len(), block.txs.len(), "one hash per transaction");
    let header = &block.header;
    check_header_links(context, tip, header)?;
    let mut executor = BlockExecutor::new(state, context)?;
    let set_hash = executor.validator_set().hash();
    if header.validator_set_hash != set_hash {
        return Err(BlockError::WrongValidatorSet {
            expected: set_hash,
            got: header.validator_set_hash,
        });
    }
    if !executor.validator_set().contains(&header.proposer) {
        return Err(BlockError::UnknownProposer {
            proposer: header.proposer,
        });
    }
    if let Some(certificate) = certificate {
        certificate
            .verify(
                &context.domain,
                executor.validator_set(),
                header.height,
                &header.hash(),
            )
            .map_err(BlockError::Certificate)?;
    }
    check_last_commit(context, tip, parent_validator_set, block)?;
    check_size(context, block)?;
    let tx_root = merkle_root(&tx_hashes);
    if tx_root != header.tx_root {
        return Err(BlockError::TransactionRootMismatch {
            expected: header.tx_root,
            got: tx_root,
        });
    }
    check_signatures(context, block, &tx_hashes, already_verified)?;
    executor.prefetch(&block.txs)?;
    for (index, (tx, hash)) in block.txs.iter().zip(&tx_hashes).enumerate() {
        match executor.apply_with_hash(tx, *hash) {
            Ok(_) => {}
            Err(ApplyError::Rejected(rejection)) => {
                return Err(BlockError::InvalidTransaction { index, rejection });
            }
            Err(ApplyError::State(e)) => return Err(BlockError::State(e)),
        }
    }
    let outcome = executor.finish_with(Some(tx_root))?;
    check_outcome(header, &outcome)?;
    Ok(outcome)
}

fn check_header_links(
    context: &ChainContext,
    tip: &ChainTip,
    header: &Header,
) -> Result<(), BlockError> {
    if header.chain_id != context.chain_id() {
        return Err(BlockError::WrongChainId {
            expected: context.chain_id().to_owned(),
            got: header.chain_id.clone(),
        });
    }
    if header.height != tip.height + 1 {
        return Err(BlockError::UnexpectedHeight {
            expected: tip.height + 1,
            got: header.height,
        });
    }
    if header.parent_hash != tip.block_hash {
        return Err(BlockError::WrongParent {
            expected: tip.block_hash,
            got: header.parent_hash,
        });
    }
    if header.time_ms < tip.time_ms {
        return Err(BlockError::TimeBeforeParent {
            parent: tip.time_ms,
            got: header.time_ms,
        });
    }
    Ok(())
}

fn check_last_commit(
    context: &ChainContext,
    tip: &ChainTip,
    parent_validator_set: Option<&ValidatorSet>,
    block: &Block,
) -> Result<(), BlockError> {
    let header = &block.header;
    match (&block.last_commit, parent_validator_set) {
        (None, None) if tip.height == 0 => {
            if !header.last_commit_hash.is_zero() {
                return Err(BlockError::LastCommitHashMismatch {
                    expected: header.last_commit_hash,
                    got: Hash::ZERO,
                });
            }
            Ok(())
        }
        (Some(_), _) if tip.height == 0 => Err(BlockError::UnexpectedLastCommit),
        (None, _) => Err(BlockError::LastCommitMissing),
        (Some(cert), set) => {
            let set = set.expect("the host supplies the parent's validator set past height 1");
            let hash = cert.hash();
            if hash != header.last_commit_hash {
                return Err(BlockError::LastCommitHashMismatch {
                    expected: header.last_commit_hash,
                    got: hash,
                });
            }
            cert.verify(&context.domain, set, tip.height, &tip.block_hash)
                .map_err(BlockError::LastCommit)
        }
    }
}

fn check_size(context: &ChainContext, block: &Block) -> Result<(), BlockError> {
    let max_txs = context.params.max_block_txs as usize;
    if block.txs.len() > max_txs {
        return Err(BlockError::TooManyTransactions {
            count: block.txs.len(),
            max: max_txs,
        });
    }
    let size = block.encoded_len();
    let max_bytes = context.params.max_block_bytes as usize;
    if size > max_bytes {
        return Err(BlockError::BlockTooLarge {
            size,
            max: max_bytes,
        });
    }
    Ok(())
}

fn check_signatures(
    context: &ChainContext,
    block: &Block,
    tx_hashes: &[Hash],
    already_verified: &dyn Fn(&Hash) -> bool,
) -> Result<(), BlockError> {
    let unverified: Vec<(usize, &SignedTransaction)> = block
        .txs
        .iter()
        .zip(tx_hashes)
        .enumerate()
        .filter(|(_, (_, hash))| !already_verified(hash))
        .map(|(i, (tx, _))| (i, tx))
        .collect();
    let refs: Vec<&SignedTransaction> = unverified.iter().map(|(_, tx)| *tx).collect();
    let results = verify_signatures_cached(&context.domain, &refs, context.keys.as_deref());
    match unverified.iter().zip(results).find(|(_, r)| r.is_err()) {
        Some(((index, _), Err(error))) => Err(BlockError::BadTransactionSignature {
            index: *index,
            error,
        }),
        _ => Ok(()),
    }
}

fn check_outcome(header: &Header, outcome: &ExecutionOutcome) -> Result<(), BlockError> {
    if outcome.receipts_root != header.receipts_root {
        return Err(BlockError::ReceiptsRootMismatch {
            expected: header.receipts_root,
            got: outcome.receipts_root,
        });
    }
    if outcome.state_root() != header.state_root {
        return Err(BlockError::StateRootMismatch {
            expected: header.state_root,
            got: outcome.state_root(),
        });
    }
    let next_hash = outcome.next_validator_set.hash();
    if next_hash != header.next_validator_set_hash {
        return Err(BlockError::WrongNextValidatorSet {
            expected: next_hash,
            got: header.next_validator_set_hash,
        });
    }
    Ok(())
}
