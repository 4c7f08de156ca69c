//! History verification: check a chain from its genesis, trusting nothing but the
//! genesis.
//!
//! For every block, in order, [`HistoryVerifier::verify_next`] checks:
//!
//! 1. chain id, height (the next one: nothing missing, repeated or reordered), parent
//!    hash (the previous block, or the genesis hash), time not before the parent's;
//! 2. the validator set hash against the set the state schedules for this height, and
//!    that the proposer belongs to it;
//! 3. the block's commit certificate: this height and block hash, signers distinct
//!    members of this height's set, signatures valid, power a quorum;
//! 4. `last_commit`: absent at height 1, otherwise a valid certificate of the parent
//!    under the parent's set, matching the header's `last_commit_hash`;
//! 5. size limits and the transaction root;
//! 6. every transaction signature (batched), then re-execution: every transaction
//!    includable, and the receipts root, state root and next validator set hash equal
//!    to the header's.
//!
//! The first failure stops verification and is returned as a [`HistoryError`] naming
//! the height and the typed reason.

use stele_consensus::{CommitCertificate, Hash, SigningDomain, ValidatorSet};

use crate::block::Block;
use crate::error::{BlockError, HistoryError, LedgerError};
use crate::exec::{ChainContext, ChainTip, validate_block};
use crate::genesis::Genesis;
use crate::state::{MemoryState, StateReader};
use crate::tx::{SignedTransaction, verify_signatures};

/// Totals of a verified history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistorySummary {
    /// Last verified height (0: only the genesis).
    pub height: u64,
    /// Hash of the last verified block (the genesis hash at height 0).
    pub block_hash: Hash,
    /// Transactions verified.
    pub transactions: u64,
    /// State root after the last verified block.
    pub state_root: Hash,
}

/// Verifies a chain block by block, re-executing it in memory.
pub struct HistoryVerifier {
    context: ChainContext,
    state: MemoryState,
    tip: ChainTip,
    /// The set of the tip's height (certifies `last_commit` of the next block).
    tip_validator_set: Option<ValidatorSet>,
    transactions: u64,
}

impl HistoryVerifier {
    /// Starts from the genesis state.
    pub fn new(genesis: &Genesis) -> Result<Self, LedgerError> {
        Ok(HistoryVerifier {
            context: ChainContext {
                domain: genesis.signing_domain()?,
                params: genesis.params.clone(),
                keys: None,
            },
            state: genesis.memory_state()?,
            tip: ChainTip {
                height: 0,
                block_hash: genesis.hash(),
                time_ms: genesis.genesis_time_ms,
            },
            tip_validator_set: None,
            transactions: 0,
        })
    }

    /// Verifies the next block with the certificate that decided it, and moves on.
    /// On error nothing changes, and the error names the height that was expected.
    pub fn verify_next(
        &mut self,
        block: &Block,
        certificate: &CommitCertificate,
    ) -> Result<(), HistoryError> {
        self.verify_next_checked(block, certificate, false)
    }

    /// [`HistoryVerifier::verify_next`] for a block whose transaction signatures the
    /// caller has already found valid with [`check_transaction_signatures`] (on other
    /// threads, say), when `signatures_valid` is true. When it is false the signatures
    /// are checked here, so a bad one is reported in its place among the other checks.
    pub fn verify_next_checked(
        &mut self,
        block: &Block,
        certificate: &CommitCertificate,
        signatures_valid: bool,
    ) -> Result<(), HistoryError> {
        let height = self.tip.height + 1;
        let fail = |error: BlockError| HistoryError { height, error };
        let outcome = validate_block(
            &self.state,
            &self.context,
            &self.tip,
            self.tip_validator_set.as_ref(),
            block,
            &|_| signatures_valid,
            Some(certificate),
        )
        .map_err(fail)?;
        self.state
            .apply(&outcome.delta)
            .map_err(|e| fail(BlockError::State(e)))?;
        self.tip = ChainTip {
            height,
            block_hash: block.hash(),
            time_ms: block.header.time_ms,
        };
        self.tip_validator_set = Some(outcome.validator_set);
        self.transactions += block.txs.len() as u64;
        Ok(())
    }

    /// What has been verified so far.
    pub fn summary(&self) -> Result<HistorySummary, LedgerError> {
        Ok(HistorySummary {
            height: self.tip.height,
            block_hash: self.tip.block_hash,
            transactions: self.transactions,
            state_root: self.state.root()?,
        })
    }

    /// The verified state so far.
    pub fn state(&self) -> &MemoryState {
        &self.state
    }

    /// The chain's signing domain (for [`check_transaction_signatures`]).
    pub fn domain(&self) -> &SigningDomain {
        &self.context.domain
    }
}

/// Checks the transaction signatures of several blocks in one batch, and tells for each
/// block whether all of its signatures are valid. A batch is much cheaper per signature
/// than one check each; callers spread groups of blocks over threads and pass the
/// verdicts to [`HistoryVerifier::verify_next_checked`].
pub fn check_transaction_signatures(domain: &SigningDomain, blocks: &[&Block]) -> Vec<bool> {
    let txs: Vec<&SignedTransaction> = blocks.iter().flat_map(|b| b.txs.iter()).collect();
    let results = verify_signatures(domain, &txs);
    let mut results = results.into_iter();
    blocks
        .iter()
        .map(|b| {
            // Every result of this block is consumed (`all` would stop at the first bad
            // one and misalign the next block's).
            results
                .by_ref()
                .take(b.txs.len())
                .filter(|r| r.is_err())
                .count()
                == 0
        })
        .collect()
}

/// Verifies a whole history from the genesis; see the module documentation for what is
/// checked.
pub fn verify_history<'a>(
    genesis: &Genesis,
    blocks: impl IntoIterator<Item = (&'a Block, &'a CommitCertificate)>,
) -> Result<HistorySummary, HistoryError> {
    let setup_error = |e: LedgerError| HistoryError {
        height: 0,
        error: BlockError::State(e),
    };
    let mut verifier = HistoryVerifier::new(genesis).map_err(setup_error)?;
    for (block, certificate) in blocks {
        verifier.verify_next(block, certificate)?;
    }
    verifier.summary().map_err(setup_error)
}
