//! The mempool's intake: one worker per node checks every arriving transaction, from
//! the API and from gossip, before it may enter the pool.
//!
//! Why one worker, taking everything that waits at once:
//!
//! - **Batch size.** Peers gossip every few milliseconds, so a gossiped batch holds a
//!   dozen transactions or so; ed25519 batch verification costs much more per
//!   signature at that size than at hundreds. Jobs that queued while the last check
//!   ran are checked together, up to [`INTAKE_BATCH_TXS`] transactions (a check of that many
//!   takes about 10 ms, which bounds how long a transaction waits for it).
//! - **Priority.** Each API request used to check its own transactions on a blocking
//!   thread of its own, so under load a node ran many checks at once and they took
//!   the cores from the consensus driver, whose blocks then took longer and grew,
//!   until latency ran away. One check at a time leaves the driver room.
//! - **Backpressure.** The job queue is bounded: when the worker falls behind, API
//!   requests wait for room, and gossiped batches that find it full are dropped (the
//!   transactions stay in the sender's pool and reach a block through it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use stele_consensus::SigningDomain;
use stele_ledger::{KeyCache, Store};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::api::admit_raw;
use crate::mempool::{Admission, Mempool, MempoolLimits};
use crate::metrics::Metrics;

/// Transactions checked together at most.
pub const INTAKE_BATCH_TXS: usize = 512;

/// Submissions waiting for the worker at most (each up to the API's per-request cap).
pub const INTAKE_QUEUE_JOBS: usize = 64;

/// The bytes of a job back, with one outcome per transaction; or why none was checked.
pub type IntakeAnswer = Result<(Vec<Vec<u8>>, Vec<Admission>), String>;

/// Transactions submitted through the API, and where to send their outcomes (with the
/// bytes back, in order).
pub struct IntakeJob {
    /// The encoded transactions.
    pub raw: Vec<Vec<u8>>,
    /// Receives the bytes and one outcome per transaction, or why none was checked.
    pub reply: oneshot::Sender<IntakeAnswer>,
}

/// What the worker checks against and reports to.
pub struct IntakeWorker {
    /// The store (latest state, committed index).
    pub store: Arc<Store>,
    /// The pool.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Woken when transactions are admitted.
    pub notify: Arc<Notify>,
    /// The chain's signing domain.
    pub domain: SigningDomain,
    /// Pool limits.
    pub limits: MempoolLimits,
    /// Decompressed signer keys.
    pub keys: Arc<KeyCache>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// True while the worker checks transactions or has more waiting: the driver holds
    /// a block back for them (up to `consensus.fill_wait_ms`).
    pub busy: Arc<AtomicBool>,
}

enum Source {
    Api(IntakeJob),
    Gossip(Vec<Vec<u8>>),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Api(job) => job.raw.len(),
            Source::Gossip(batch) => batch.len(),
        }
    }
}

impl IntakeWorker {
    /// Runs until both queues close.
    pub async fn run(
        self,
        mut api: mpsc::Receiver<IntakeJob>,
        mut gossip: mpsc::Receiver<Vec<Vec<u8>>>,
    ) {
        let worker = Arc::new(self);
        loop {
            let first = tokio::select! {
                Some(job) = api.recv() => Source::Api(job),
                Some(batch) = gossip.recv() => Source::Gossip(batch),
                else => return,
            };
            worker.busy.store(true, Ordering::Release);
            let mut total = first.len();
            let mut sources = vec![first];
            while total < INTAKE_BATCH_TXS {
                let next = match api.try_recv() {
                    Ok(job) => Source::Api(job),
                    Err(_) => match gossip.try_recv() {
                        Ok(batch) => Source::Gossip(batch),
                        Err(_) => break,
                    },
                };
                total += next.len();
                sources.push(next);
            }
            worker.check(sources, total).await;
            if api.is_empty() && gossip.is_empty() {
                worker.busy.store(false, Ordering::Release);
                // A block held back for this check may go now, even if nothing in it
                // was admitted.
                worker.notify.notify_one();
            }
        }
    }

    /// Checks and admits the transactions of `sources` in one batch, then answers each.
    async fn check(self: &Arc<Self>, sources: Vec<Source>, total: usize) {
        let mut raw = Vec::with_capacity(total);
        let mut parts = Vec::with_capacity(sources.len());
        for source in sources {
            match source {
                Source::Api(job) => {
                    parts.push((job.raw.len(), Some(job.reply)));
                    raw.extend(job.raw);
                }
                Source::Gossip(batch) => {
                    parts.push((batch.len(), None));
                    raw.extend(batch);
                }
            }
        }
        let worker = Arc::clone(self);
        let checked = tokio::task::spawn_blocking(move || {
            let outcomes = admit_raw(
                &worker.store,
                &worker.mempool,
                &worker.domain,
                &worker.limits,
                &worker.keys,
                &worker.metrics,
                &raw,
            );
            (raw, outcomes)
        })
        .await;
        let (mut raw, outcomes) = match checked {
            Ok((raw, Ok(outcomes))) => (raw, outcomes),
            Ok((_, Err(e))) => return answer_all(parts, &e),
            Err(e) => return answer_all(parts, &format!("intake check failed: {e}")),
        };
        if outcomes.iter().any(|o| matches!(o, Admission::Accepted(_))) {
            self.notify.notify_one();
        }
        let pool_len = self.mempool.lock().expect("mempool lock poisoned").len();
        self.metrics.mempool_txs.set(pool_len as i64);
        let mut outcomes = outcomes.into_iter();
        let mut raw_left = raw.drain(..);
        for (len, reply) in parts {
            let bytes: Vec<Vec<u8>> = raw_left.by_ref().take(len).collect();
            let results: Vec<Admission> = outcomes.by_ref().take(len).collect();
            if let Some(reply) = reply {
                // The requester may have gone away; its transactions were still checked.
                let _ = reply.send(Ok((bytes, results)));
            }
        }
    }
}

fn answer_all(parts: Vec<(usize, Option<oneshot::Sender<IntakeAnswer>>)>, reason: &str) {
    for (_, reply) in parts {
        if let Some(reply) = reply {
            let _ = reply.send(Err(reason.to_owned()));
        }
    }
}
