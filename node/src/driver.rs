//! The consensus driver: the only owner of the engine.
//!
//! It feeds the engine its inputs (network messages, timer firings, blocks it built or
//! checked) and carries out the effects **in the order given**. The engine's contract
//! is that a `PersistSafety` is durable before any message after it leaves: the driver
//! keeps the latest such state and writes it to RocksDB, with fsync, just before the
//! next message is sent. Each state is whole, so one write stands for every state the
//! engine emitted since the last: a leader starting a height emits one on entering it
//! and another with its proposal, and a replica one on entering it, and all of these go
//! to disk as the single write before the proposal or the prepare vote. That is one
//! fsync fewer per validator and height, on a disk the validators of a machine share.
//! A state no message followed (a view entered on a timeout, with nothing sent yet) may
//! be lost in a crash; that is safe, since no other validator has seen anything that
//! depends on it, and it is written with the next message or when the driver stops.
//!
//! - Proposals are built from the mempool and executed through the ledger; a received
//!   proposal is validated (header links, certificates, sizes, signatures not already
//!   checked by the mempool, execution and roots) before the engine may vote for it.
//! - A decided block is committed with its certificate and execution outcome in one
//!   RocksDB batch.
//! - Empty blocks are not made: after a commit the next height starts once the block
//!   interval has passed and there is something to do (a waiting transaction, or a
//!   message from a validator that already started it).
//! - Block sync: peers' tips are polled; when one is ahead, or the engine saw a
//!   certificate for a later height, blocks and certificates are fetched, verified
//!   with the ledger's block validation (certificate under the set in force at that
//!   height, links, roots, re-execution) and committed. A peer that serves a bad block
//!   is blocked.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use stele_consensus::{
    CommitCertificate, ConsensusMessage, Effect, Engine, Evidence, Hash, Input, PublicKey,
    SafetyState, SigningKey, ValidatorSet,
};
use stele_ledger::exec::{ChainContext, ExecutionOutcome, build_block, validate_block_hashed};
use stele_ledger::{Block, Store};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::mempool::Mempool;
use crate::metrics::Metrics;
use crate::network::{NetCommand, NetEvent, SYNC_BLOCKS_MAX, SyncRequest, SyncResponse};

/// Key of the safety record in the store.
pub const SAFETY_KEY: &[u8] = b"engine-safety";
/// Evidence kept in memory for the API.
const EVIDENCE_KEPT: usize = 1_000;
const STATUS_POLL: Duration = Duration::from_secs(1);

/// What the API shows of consensus.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConsensusStatus {
    /// Last committed height.
    pub height: u64,
    /// Its block hash, hex.
    pub block_hash: String,
    /// Height the engine works on.
    pub engine_height: u64,
    /// Its view.
    pub view: u64,
    /// Whether the engine has started that height.
    pub started: bool,
    /// Whether blocks are being fetched from peers.
    pub syncing: bool,
    /// The validator set of the next height: hex key and power.
    pub validators: Vec<(String, u64)>,
    /// Whether this node is one of them.
    pub is_validator: bool,
}

/// A committed block, announced to API streams.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Its height.
    pub height: u64,
}

/// Everything the driver needs.
pub struct DriverParts {
    /// The store.
    pub store: Arc<Store>,
    /// Execution context.
    pub context: ChainContext,
    /// The engine, built from the persisted safety state.
    pub engine: Engine,
    /// Our key, when validating.
    pub key: Option<SigningKey>,
    /// The mempool.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Signalled when transactions arrive.
    pub mempool_notify: Arc<Notify>,
    /// Commands to the network.
    pub net: mpsc::Sender<NetCommand>,
    /// Events from the network.
    pub net_events: mpsc::Receiver<NetEvent>,
    /// The validator set in force, for the network's admission and relay rules.
    pub validators: watch::Sender<Vec<PublicKey>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Shortest time between blocks.
    pub block_interval: Duration,
    /// Longest time a block waits, after `block_interval`, for the intake to finish.
    pub fill_wait: Duration,
    /// Whether the intake is checking transactions (or has more waiting).
    pub intake_busy: Arc<AtomicBool>,
    /// Status for the API.
    pub status: watch::Sender<ConsensusStatus>,
    /// Committed tip for API streams.
    pub tip: watch::Sender<u64>,
    /// Evidence for the API.
    pub evidence: Arc<Mutex<VecDeque<Evidence>>>,
    /// Stop when this changes to true.
    pub shutdown: watch::Receiver<bool>,
}

struct Validated {
    block: Block,
    outcome: ExecutionOutcome,
}

/// The driver.
pub struct Driver {
    parts: DriverParts,
    timers: mpsc::Sender<(u64, u64, u64)>,
    timer_rx: Option<mpsc::Receiver<(u64, u64, u64)>>,
    /// Blocks executed at the current height, by hash.
    validated: HashMap<Hash, Validated>,
    /// The set deciding `tip + 1`.
    set: ValidatorSet,
    /// The set that decided `tip` (for the parent certificate in the next block).
    previous_set: Option<ValidatorSet>,
    started: bool,
    /// A message for the next height arrived while idle.
    woken: bool,
    last_commit: Instant,
    height_started: Instant,
    /// Highest tip each peer reported.
    peer_tips: HashMap<PeerId, u64>,
    /// The sync request in flight: peer and first height asked.
    syncing: Option<(PeerId, u64, Instant)>,
    /// A certificate seen for a later height.
    sync_target: u64,
    last_committed_txs: usize,
    /// The engine's latest safety state, when not yet written.
    unsaved_safety: Option<Box<SafetyState>>,
}

/// Keeps only the last safety state of one effect list, in the place of the first: it
/// then precedes every message any of them guarded. A later state holds every promise
/// of an earlier one (votes and locks only accumulate, views only rise), so writing it
/// before the earlier one's messages is as safe, and saves a write: a leader's proposal
/// and its own prepare vote, one after the other in one list, need one fsync, not two.
fn coalesce_safety(mut effects: Vec<Effect>) -> Vec<Effect> {
    let is_safety = |e: &Effect| matches!(e, Effect::PersistSafety(_));
    let (Some(first), Some(last)) = (
        effects.iter().position(is_safety),
        effects.iter().rposition(is_safety),
    ) else {
        return effects;
    };
    if first == last {
        return effects;
    }
    effects.swap(first, last);
    effects
        .into_iter()
        .enumerate()
        .filter(|(i, e)| *i <= first || !is_safety(e))
        .map(|(_, e)| e)
        .collect()
}

/// Whether an idle leader with `waiting` pooled transactions starts the next height
/// now, `due` being the end of the block interval.
///
/// Transactions the intake is checking go in the block too, unless the block is full
/// already or they take longer than `fill_wait`. Without this, under load every block
/// held what one intake check admitted: many small blocks, each costing every
/// validator a round of messages, vote checks and a write whatever it holds, and that
/// overhead took the cores from the checks, which kept the blocks small.
fn start_now(
    waiting: usize,
    block_txs_max: usize,
    now: Instant,
    due: Instant,
    fill_wait: Duration,
    intake_busy: bool,
) -> bool {
    if waiting == 0 || now < due {
        return false;
    }
    waiting >= block_txs_max || !intake_busy || now >= due + fill_wait
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The validator sets of `tip + 1` and `tip`, from the store.
fn sets_at_tip(
    store: &Store,
    context: &ChainContext,
) -> anyhow::Result<(ValidatorSet, Option<ValidatorSet>)> {
    let tip = store.tip().height;
    let state = store.state_at(tip)?;
    let next = stele_ledger::exec::BlockExecutor::new(&state, context)?
        .validator_set()
        .clone();
    let previous = if tip == 0 {
        None
    } else {
        // The set of the tip height is what the tip block's header names; the state
        // one height back computes it.
        match store.state_at(tip - 1) {
            Ok(state) => Some(
                stele_ledger::exec::BlockExecutor::new(&state, context)?
                    .validator_set()
                    .clone(),
            ),
            Err(_) => None,
        }
    };
    Ok((next, previous))
}

/// Reads the persisted safety state, with its prepared block (which may be stored where
/// that height's block is kept, see [`store_safety`]).
pub fn load_safety(store: &Store) -> anyhow::Result<SafetyState> {
    let Some(bytes) = store.safety_record(SAFETY_KEY)? else {
        return Ok(SafetyState::default());
    };
    let state: SafetyState = borsh::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("the stored consensus safety state is corrupt: {e}"))?;
    with_prepared_block(state, store.tip().height, |height, hash| {
        Ok(store.prepared_block(height, hash)?)
    })
}

/// Puts back the prepared block a stored safety state refers to, read with `stored`.
/// For a height the chain has passed (`tip`), the block may be gone: another block
/// was decided there and took its slot, and no record was written since (moving to a
/// height writes none). The engine starts above that height and forgets its records,
/// so the prepared certificate is dropped with the block; for the next height a
/// missing block is an error.
fn with_prepared_block(
    mut state: SafetyState,
    tip: u64,
    stored: impl Fn(u64, &Hash) -> anyhow::Result<Option<Vec<u8>>>,
) -> anyhow::Result<SafetyState> {
    let Some(prepared) = state.prepared.as_ref() else {
        return Ok(state);
    };
    if state.prepared_block.is_some() {
        return Ok(state);
    }
    match stored(prepared.height, &prepared.block_hash)? {
        Some(block) => state.prepared_block = Some(block),
        None if state.height <= tip => state.prepared = None,
        None => anyhow::bail!(
            "the stored consensus safety state prepared block {} at height {}, which is not stored",
            prepared.block_hash,
            prepared.height
        ),
    }
    Ok(state)
}

/// Writes a safety state durably, for [`load_safety`].
///
/// A prepared block of the next height goes where that height's block is kept (in
/// the same fsynced batch), not inside the record: the commit, usually of that block,
/// then need not write it again, and an unchanged prepared block is not rewritten
/// with each record. Other states keep their block inline.
fn store_safety(store: &Store, mut state: Box<SafetyState>) -> anyhow::Result<()> {
    let prepared = state
        .prepared
        .as_ref()
        .map(|p| (p.height, p.block_hash))
        .filter(|(height, _)| *height == state.height);
    if let (Some((height, block_hash)), Some(block)) = (prepared, state.prepared_block.take()) {
        let bytes = borsh::to_vec(&*state)?;
        if store.put_safety_record_with_block(SAFETY_KEY, &bytes, height, block_hash, &block)? {
            return Ok(());
        }
        state.prepared_block = Some(block);
    }
    store.put_safety_record(SAFETY_KEY, &borsh::to_vec(&*state)?)?;
    Ok(())
}

impl Driver {
    /// Builds the driver.
    pub fn new(parts: DriverParts) -> anyhow::Result<Driver> {
        let (set, previous_set) = sets_at_tip(&parts.store, &parts.context)?;
        let (timers, timer_rx) = mpsc::channel(1024);
        Ok(Driver {
            parts,
            timers,
            timer_rx: Some(timer_rx),
            validated: HashMap::new(),
            set,
            previous_set,
            started: false,
            woken: false,
            last_commit: Instant::now(),
            height_started: Instant::now(),
            peer_tips: HashMap::new(),
            syncing: None,
            sync_target: 0,
            last_committed_txs: 0,
            unsaved_safety: None,
        })
    }

    fn tip_height(&self) -> u64 {
        self.parts.store.tip().height
    }

    /// Runs until shutdown.
    pub async fn run(mut self) -> anyhow::Result<()> {
        let mut timer_rx = self.timer_rx.take().expect("run once");
        let mut poll = tokio::time::interval(STATUS_POLL);
        let mut shutdown = self.parts.shutdown.clone();
        let notify = self.parts.mempool_notify.clone();
        self.publish_status();
        loop {
            let wake_at = self.next_start_check();
            tokio::select! {
                event = self.parts.net_events.recv() => match event {
                    Some(event) => self.on_net_event(event)?,
                    None => break,
                },
                Some((height, view, round)) = timer_rx.recv() => {
                    if self.started {
                        self.feed(Input::Timeout { height, view, round })?;
                    }
                }
                _ = notify.notified(), if !self.started => {}
                _ = tokio::time::sleep_until(wake_at), if !self.started && Instant::now() < wake_at => {}
                _ = poll.tick() => self.poll_sync(),
                _ = shutdown.changed() => break,
            }
            self.maybe_start_height()?;
            self.publish_status();
        }
        self.save_safety()?;
        info!("consensus driver stopped");
        Ok(())
    }

    fn publish_status(&self) {
        let tip = self.parts.store.tip();
        let engine = &self.parts.engine;
        let me = self.parts.key.as_ref().map(|k| k.public_key());
        let status = ConsensusStatus {
            height: tip.height,
            block_hash: tip.block_hash.to_hex(),
            engine_height: engine.height(),
            view: engine.view(),
            started: self.started,
            syncing: self.syncing.is_some(),
            validators: self
                .set
                .validators()
                .iter()
                .map(|v| (v.key.to_hex(), v.power))
                .collect(),
            is_validator: me.is_some_and(|k| self.set.contains(&k)),
        };
        self.parts.metrics.view.set(engine.view() as i64);
        self.parts.status.send_replace(status);
    }

    fn maybe_start_height(&mut self) -> anyhow::Result<()> {
        if self.started || self.syncing.is_some() {
            return Ok(());
        }
        // Another validator already works on the next height: join it now.
        if self.woken {
            return self.start_height();
        }
        // Our own transactions wait for the block interval, so blocks gather them.
        let waiting = self
            .parts
            .mempool
            .lock()
            .expect("mempool lock poisoned")
            .len();
        let start = start_now(
            waiting,
            self.parts.context.params.max_block_txs as usize,
            Instant::now(),
            self.interval_end(),
            self.parts.fill_wait,
            self.parts.intake_busy.load(Ordering::Acquire),
        );
        if !start {
            return Ok(());
        }
        self.start_height()
    }

    /// When the block interval after the last commit ends.
    fn interval_end(&self) -> Instant {
        self.last_commit + self.parts.block_interval
    }

    /// When an idle driver should look again whether to start a height (it also looks
    /// whenever the mempool signals).
    fn next_start_check(&self) -> Instant {
        let due = self.interval_end();
        if Instant::now() < due {
            due
        } else {
            due + self.parts.fill_wait
        }
    }

    fn start_height(&mut self) -> anyhow::Result<()> {
        let tip = self.tip_height();
        let previous_certificate = if tip == 0 {
            None
        } else {
            self.parts.store.certificate(tip)?
        };
        self.started = true;
        self.woken = false;
        self.height_started = Instant::now();
        self.validated.clear();
        debug!(height = tip + 1, "starting height");
        self.feed(Input::StartHeight {
            height: tip + 1,
            validators: self.set.clone(),
            previous_certificate,
        })
    }

    fn on_net_event(&mut self, event: NetEvent) -> anyhow::Result<()> {
        match event {
            NetEvent::Consensus { peer, bytes, .. } => {
                if !self.started {
                    // Learn the message's height without trusting it: it only decides
                    // whether to start the next height now or after the interval.
                    if let Ok(message) = ConsensusMessage::decode(&bytes, bytes.len()) {
                        let next = self.tip_height() + 1;
                        if message.height() == next {
                            self.woken = true;
                        } else if message.height() > next {
                            self.peer_tips
                                .entry(peer)
                                .and_modify(|h| *h = (*h).max(message.height() - 1))
                                .or_insert(message.height() - 1);
                        }
                    }
                    self.maybe_start_height()?;
                }
                if self.started {
                    self.feed(Input::Message(bytes))?;
                }
            }
            NetEvent::Sync { peer, response } => self.on_sync_response(peer, response)?,
            NetEvent::Connected(peer) => {
                let _ = self.parts.net.try_send(NetCommand::Sync {
                    peer,
                    request: SyncRequest::Status,
                });
            }
        }
        Ok(())
    }

    /// Writes the engine's latest safety state, if it changed since the last write.
    fn save_safety(&mut self) -> anyhow::Result<()> {
        if let Some(state) = self.unsaved_safety.take() {
            let store = self.parts.store.clone();
            tokio::task::block_in_place(|| store_safety(&store, state))?;
        }
        Ok(())
    }

    /// Gives the engine one input and carries out its effects in order.
    fn feed(&mut self, input: Input) -> anyhow::Result<()> {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let effects = coalesce_safety(self.parts.engine.handle(input));
            for effect in effects {
                if let Some(next) = self.on_effect(effect)? {
                    queue.push_back(next);
                }
            }
        }
        Ok(())
    }

    fn on_effect(&mut self, effect: Effect) -> anyhow::Result<Option<Input>> {
        match effect {
            Effect::PersistSafety(state) => {
                self.unsaved_safety = Some(state);
                Ok(None)
            }
            Effect::Broadcast(bytes) => {
                self.save_safety()?;
                if let Ok(message) = ConsensusMessage::decode(&bytes, bytes.len())
                    && matches!(message, ConsensusMessage::ViewChange { .. })
                {
                    self.parts.metrics.view_changes.inc();
                }
                if self
                    .parts
                    .net
                    .try_send(NetCommand::Broadcast(bytes))
                    .is_err()
                {
                    warn!("network queue full: consensus message dropped");
                }
                Ok(None)
            }
            Effect::ScheduleTimeout {
                height,
                view,
                round,
                after_ms,
            } => {
                let timers = self.timers.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(after_ms)).await;
                    let _ = timers.send((height, view, round)).await;
                });
                Ok(None)
            }
            Effect::ProposeBlock { height, view } => self.propose(height, view).map(Some),
            Effect::ValidateBlock {
                height,
                block_hash,
                block,
            } => {
                let valid = self.validate(height, block_hash, &block);
                Ok(Some(Input::BlockValidated {
                    height,
                    block_hash,
                    valid,
                }))
            }
            Effect::Decide {
                height,
                view,
                block_hash,
                block,
                certificate,
            } => {
                self.decide(height, view, block_hash, &block, certificate)?;
                Ok(None)
            }
            Effect::SyncTo { height, .. } => {
                self.sync_target = self.sync_target.max(height);
                self.poll_sync();
                Ok(None)
            }
            Effect::Misbehaviour(evidence) => {
                warn!(validator = %evidence.validator(), "equivocation: {evidence:?}");
                self.parts.metrics.evidence.inc();
                let mut kept = self.parts.evidence.lock().expect("evidence lock poisoned");
                if kept.len() == EVIDENCE_KEPT {
                    kept.pop_front();
                }
                kept.push_back(evidence);
                Ok(None)
            }
            Effect::InvalidMessage { reason } => {
                self.parts.metrics.invalid_messages.inc();
                debug!("invalid consensus message: {reason}");
                Ok(None)
            }
        }
    }

    fn propose(&mut self, height: u64, view: u64) -> anyhow::Result<Input> {
        let store = self.parts.store.clone();
        let tip = store.tip();
        anyhow::ensure!(tip.height + 1 == height, "asked to propose at {height}");
        let key = self
            .parts
            .key
            .as_ref()
            .expect("only validators propose")
            .public_key();
        let max = self.parts.context.params.max_block_txs as usize;
        let candidates = self
            .parts
            .mempool
            .lock()
            .expect("mempool lock poisoned")
            .candidates(max);
        let last_commit = if tip.height == 0 {
            None
        } else {
            store.certificate(tip.height)?
        };
        let context = &self.parts.context;
        let built = tokio::task::block_in_place(|| {
            let state = store.state_at(tip.height)?;
            build_block(
                &state,
                context,
                &tip,
                key,
                now_ms(),
                candidates,
                last_commit,
            )
        })?;
        if !built.rejected.is_empty() {
            let refused: Vec<(Hash, String)> = built
                .rejected
                .iter()
                .map(|(tx, reason)| (tx.hash(), reason.to_string()))
                .collect();
            self.parts
                .mempool
                .lock()
                .expect("mempool lock poisoned")
                .exclude(&refused);
        }
        let block_hash = built.block.hash();
        let bytes = borsh::to_vec(&built.block)?;
        debug!(
            height,
            view,
            txs = built.block.txs.len(),
            "proposing block {block_hash}"
        );
        self.validated.insert(
            block_hash,
            Validated {
                block: built.block,
                outcome: built.outcome,
            },
        );
        Ok(Input::Proposal {
            height,
            view,
            block_hash,
            block: bytes,
        })
    }

    /// Executes a block proposed for the next height.
    fn validate(&mut self, height: u64, block_hash: Hash, bytes: &[u8]) -> bool {
        if self.validated.contains_key(&block_hash) {
            return true;
        }
        match self.check_block(height, block_hash, bytes, None) {
            Ok(validated) => {
                self.validated.insert(block_hash, validated);
                true
            }
            Err(reason) => {
                warn!(height, "proposal {block_hash} is invalid: {reason}");
                false
            }
        }
    }

    fn check_block(
        &self,
        height: u64,
        block_hash: Hash,
        bytes: &[u8],
        certificate: Option<&CommitCertificate>,
    ) -> Result<Validated, String> {
        let block: Block = borsh::from_slice(bytes).map_err(|e| format!("malformed: {e}"))?;
        if block.hash() != block_hash {
            return Err("bytes do not hash to the block hash".into());
        }
        self.execute(height, block, certificate)
    }

    fn execute(
        &self,
        height: u64,
        block: Block,
        certificate: Option<&CommitCertificate>,
    ) -> Result<Validated, String> {
        let store = &self.parts.store;
        let tip = store.tip();
        if height != tip.height + 1 || block.header.height != height {
            return Err(format!(
                "block of height {} is not the next one (tip {})",
                block.header.height, tip.height
            ));
        }
        let mempool = &self.parts.mempool;
        tokio::task::block_in_place(|| {
            let state = store.state_at(tip.height).map_err(|e| e.to_string())?;
            // Which transactions the pool checked on entry, taken in one short hold of
            // its lock: holding it through the execution stalled every intake (API and
            // gossip) for as long as a block takes, which made large blocks slower
            // still and throughput collapse under load.
            let hashes: Vec<Hash> = block.txs.iter().map(|tx| tx.hash()).collect();
            let pooled: foldhash::HashSet<Hash> = {
                let pool = mempool.lock().expect("mempool lock poisoned");
                hashes
                    .iter()
                    .filter(|hash| pool.contains(hash))
                    .copied()
                    .collect()
            };
            let known = |hash: &Hash| pooled.contains(hash);
            let unpooled = hashes.len() - pooled.len();
            let outcome = validate_block_hashed(
                &state,
                &self.parts.context,
                &tip,
                self.previous_set.as_ref(),
                &block,
                hashes,
                &known,
                certificate,
            )
            .map_err(|e| e.to_string())?;
            // Each transaction's signature is checked once per node, on entry or here:
            // with the intake's count, this shows how close to once it is.
            self.parts
                .metrics
                .block_signature_checks
                .inc_by(unpooled as u64);
            Ok(Validated { block, outcome })
        })
    }

    fn decide(
        &mut self,
        height: u64,
        view: u64,
        block_hash: Hash,
        bytes: &[u8],
        certificate: CommitCertificate,
    ) -> anyhow::Result<()> {
        if height <= self.tip_height() {
            debug!(height, "decided a height block sync already committed");
            return Ok(());
        }
        let validated = match self.validated.remove(&block_hash) {
            Some(v) => v,
            None => self
                .check_block(height, block_hash, bytes, Some(&certificate))
                .map_err(|reason| {
                    anyhow::anyhow!(
                        "a quorum decided block {block_hash} at height {height}, which this node finds invalid: {reason}"
                    )
                })?,
        };
        self.commit(validated, &certificate)?;
        info!(
            height,
            view,
            txs = self.last_committed_txs,
            "committed block {block_hash}"
        );
        Ok(())
    }
}

impl Driver {
    fn commit(
        &mut self,
        validated: Validated,
        certificate: &CommitCertificate,
    ) -> anyhow::Result<()> {
        let store = self.parts.store.clone();
        let Validated { block, outcome } = validated;
        tokio::task::block_in_place(|| store.commit_block(&block, certificate, &outcome))?;
        let height = block.header.height;
        let txs = block.txs.len();
        // The next height's sets.
        let changed = outcome.next_validator_set != outcome.validator_set;
        self.previous_set = Some(outcome.validator_set.clone());
        self.set = outcome.next_validator_set.clone();
        if changed {
            info!(
                height = height + 1,
                validators = self.set.len(),
                "validator set changes"
            );
            let keys = self.set.validators().iter().map(|v| v.key).collect();
            self.parts.validators.send_replace(keys);
        }
        {
            let hashes: Vec<Hash> = outcome.receipts.iter().map(|r| r.tx_hash).collect();
            let mut pool = self.parts.mempool.lock().expect("mempool lock poisoned");
            pool.committed(&block.txs, &hashes);
            self.parts.metrics.mempool_txs.set(pool.len() as i64);
        }
        self.validated.clear();
        self.started = false;
        self.woken = false;
        self.last_commit = Instant::now();
        self.last_committed_txs = txs;
        let metrics = &self.parts.metrics;
        metrics.height.set(height as i64);
        metrics.committed_txs.inc_by(txs as u64);
        metrics.committed_blocks.inc();
        metrics
            .commit_latency
            .observe(self.height_started.elapsed().as_secs_f64());
        self.parts.tip.send_replace(height);
        Ok(())
    }

    /// Asks peers for their tips, or for blocks when one is ahead.
    fn poll_sync(&mut self) {
        if let Some((_, _, since)) = self.syncing
            && since.elapsed() > Duration::from_secs(40)
        {
            self.syncing = None;
        }
        let _ = self.parts.net.try_send(NetCommand::PollStatus);
        self.request_blocks();
    }

    fn request_blocks(&mut self) {
        if self.syncing.is_some() {
            return;
        }
        let tip = self.tip_height();
        let Some((peer, height)) = self
            .peer_tips
            .iter()
            .max_by_key(|(_, h)| **h)
            .map(|(p, h)| (*p, *h))
        else {
            return;
        };
        // Any peer ahead: fetch. A height this node was about to decide itself comes
        // from sync instead (a `Decide` for it afterwards is ignored), and a node that
        // missed a decision while the others went idle (no transactions, so no new
        // height to learn it from) gets it here.
        if height <= tip {
            return;
        }
        debug!(%peer, from = tip + 1, peer_height = height, "fetching blocks");
        self.syncing = Some((peer, tip + 1, Instant::now()));
        let _ = self.parts.net.try_send(NetCommand::Sync {
            peer,
            request: SyncRequest::Blocks {
                from: tip + 1,
                max: SYNC_BLOCKS_MAX,
            },
        });
    }

    fn on_sync_response(
        &mut self,
        peer: PeerId,
        response: Result<SyncResponse, String>,
    ) -> anyhow::Result<()> {
        let expecting = self.syncing.is_some_and(|(p, _, _)| p == peer);
        match response {
            Ok(SyncResponse::Status { height, .. }) => {
                self.peer_tips.insert(peer, height);
                self.request_blocks();
            }
            Ok(SyncResponse::Blocks(blocks)) if expecting => {
                let from = self.syncing.map_or(0, |(_, from, _)| from);
                self.syncing = None;
                // A peer that said it was ahead must serve the next block: otherwise it
                // lied about its tip, and would be asked again and again.
                if blocks.first().map(|(b, _)| b.header.height) != Some(from)
                    && from > self.tip_height()
                {
                    let _ = self.parts.net.try_send(NetCommand::Ban {
                        peer,
                        reason: format!("claimed to be past height {from} but did not serve it"),
                    });
                    self.peer_tips.remove(&peer);
                } else {
                    self.apply_synced(peer, blocks)?;
                }
                self.request_blocks();
            }
            Ok(SyncResponse::Blocks(_)) => {}
            Ok(SyncResponse::Error(reason)) | Err(reason) => {
                if expecting {
                    debug!(%peer, "sync failed: {reason}");
                    self.syncing = None;
                    self.peer_tips.remove(&peer);
                }
            }
        }
        Ok(())
    }

    fn apply_synced(
        &mut self,
        peer: PeerId,
        blocks: Vec<(Block, CommitCertificate)>,
    ) -> anyhow::Result<()> {
        let mut applied = 0;
        for (block, certificate) in blocks {
            let height = self.tip_height() + 1;
            if block.header.height < height {
                continue;
            }
            match self.execute(height, block, Some(&certificate)) {
                Ok(validated) => {
                    self.commit(validated, &certificate)?;
                    applied += 1;
                }
                Err(reason) => {
                    let _ = self.parts.net.try_send(NetCommand::Ban {
                        peer,
                        reason: format!("served an invalid block at height {height}: {reason}"),
                    });
                    self.peer_tips.remove(&peer);
                    break;
                }
            }
        }
        if applied > 0 {
            info!(
                applied,
                height = self.tip_height(),
                %peer,
                "synced blocks from peer"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(view: u64) -> Effect {
        Effect::PersistSafety(Box::new(SafetyState {
            height: 1,
            view,
            ..SafetyState::default()
        }))
    }

    fn shape(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::PersistSafety(s) => format!("safety {}", s.view),
                Effect::Broadcast(bytes) => format!("send {}", bytes[0]),
                _ => "other".into(),
            })
            .collect()
    }

    #[test]
    fn safety_states_keep_their_prepared_block_where_the_next_block_goes() {
        use stele_consensus::{PreparedCertificate, SigningKey};
        use stele_genesis::testnet::{TestnetOptions, generate_testnet};
        use stele_ledger::{Header, StoreOptions};

        let dir = tempfile::tempdir().unwrap();
        let testnet =
            generate_testnet(&dir.path().join("net"), &TestnetOptions::default()).unwrap();
        let store = Store::open(
            &dir.path().join("db"),
            &testnet.genesis,
            StoreOptions::default(),
        )
        .unwrap();
        let block = |height: u64| Block {
            header: Header {
                chain_id: testnet.genesis.chain_id.clone(),
                height,
                parent_hash: Hash::ZERO,
                time_ms: 1,
                proposer: SigningKey::from_seed([3; 32]).public_key(),
                tx_root: Hash::ZERO,
                receipts_root: Hash::ZERO,
                state_root: Hash::ZERO,
                validator_set_hash: Hash::ZERO,
                next_validator_set_hash: Hash::ZERO,
                last_commit_hash: Hash::ZERO,
            },
            txs: Vec::new(),
            last_commit: None,
        };
        let prepared_at = |height: u64| SafetyState {
            height,
            view: 2,
            prepared: Some(PreparedCertificate {
                height,
                view: 2,
                block_hash: block(height).hash(),
                signatures: Vec::new(),
            }),
            prepared_block: Some(borsh::to_vec(&block(height)).unwrap()),
            ..SafetyState::default()
        };
        let record = |store: &Store| -> SafetyState {
            borsh::from_slice(&store.safety_record(SAFETY_KEY).unwrap().unwrap()).unwrap()
        };
        assert_eq!(load_safety(&store).unwrap(), SafetyState::default());

        // The next height's: the record refers to the block, stored in its slot.
        store_safety(&store, Box::new(prepared_at(1))).unwrap();
        assert!(record(&store).prepared_block.is_none());
        assert_eq!(load_safety(&store).unwrap(), prepared_at(1));
        assert!(store.block(1).unwrap().is_none(), "not committed");

        // Any other height's (here one ahead of the next): the block stays in the
        // record.
        store_safety(&store, Box::new(prepared_at(5))).unwrap();
        assert_eq!(record(&store), prepared_at(5));
        assert_eq!(load_safety(&store).unwrap(), prepared_at(5));

        // A record whose block is not where it says is refused, naming the block.
        let mut lost = prepared_at(7);
        lost.prepared_block = None;
        store
            .put_safety_record(SAFETY_KEY, &borsh::to_vec(&lost).unwrap())
            .unwrap();
        let error = load_safety(&store).unwrap_err().to_string();
        assert!(error.contains("not stored"), "{error}");
        assert!(error.contains(&block(7).hash().to_string()), "{error}");
    }

    #[test]
    fn a_prepared_block_that_lost_its_slot_matters_only_above_the_tip() {
        use stele_consensus::PreparedCertificate;
        let state = |height: u64| SafetyState {
            height,
            view: 1,
            prepared: Some(PreparedCertificate {
                height,
                view: 1,
                block_hash: Hash::digest(b"prepared"),
                signatures: Vec::new(),
            }),
            ..SafetyState::default()
        };
        let nothing = |_: u64, _: &Hash| Ok(None);
        // Height 4 was decided with another block (tip 4): its records are history.
        let loaded = with_prepared_block(state(4), 4, nothing).unwrap();
        assert_eq!(
            loaded,
            SafetyState {
                prepared: None,
                ..state(4)
            }
        );
        // Height 5 is the next one: its prepared block must be there.
        assert!(with_prepared_block(state(5), 4, nothing).is_err());
        // Found: put back, whatever the tip.
        let found = |height: u64, _: &Hash| Ok(Some(vec![height as u8]));
        for tip in [4, 5] {
            let loaded = with_prepared_block(state(5), tip, found).unwrap();
            assert_eq!(loaded.prepared_block, Some(vec![5]));
            assert!(loaded.prepared.is_some());
        }
    }

    #[test]
    fn a_block_waits_for_the_intake_only_within_the_fill_wait() {
        let due = Instant::now();
        let wait = Duration::from_millis(10);
        let early = due - Duration::from_millis(1);
        let later = due + Duration::from_millis(4);
        let late = due + wait;
        // Nothing waiting, or the interval not over: no block.
        assert!(!start_now(0, 100, late, due, wait, false));
        assert!(!start_now(5, 100, early, due, wait, false));
        // An idle intake: start as soon as the interval is over.
        assert!(start_now(5, 100, due, due, wait, false));
        // A busy intake holds the block back until the fill wait is over...
        assert!(!start_now(5, 100, due, due, wait, true));
        assert!(!start_now(5, 100, later, due, wait, true));
        assert!(start_now(5, 100, late, due, wait, true));
        // ...unless the pool already fills a block, or the wait is off.
        assert!(start_now(100, 100, due, due, wait, true));
        assert!(start_now(5, 100, due, due, Duration::ZERO, true));
    }

    #[test]
    fn one_safety_write_per_effect_list_before_its_first_guarded_message() {
        let timer = Effect::ScheduleTimeout {
            height: 1,
            view: 0,
            round: 0,
            after_ms: 10,
        };
        let effects = vec![
            Effect::Broadcast(vec![0]),
            timer,
            state(1),
            Effect::Broadcast(vec![1]),
            state(2),
            Effect::Broadcast(vec![2]),
            state(3),
        ];
        assert_eq!(
            shape(&coalesce_safety(effects)),
            ["send 0", "other", "safety 3", "send 1", "send 2"]
        );
        // One state, or none, is left as it is.
        let one = vec![
            Effect::Broadcast(vec![0]),
            state(4),
            Effect::Broadcast(vec![1]),
        ];
        assert_eq!(
            shape(&coalesce_safety(one)),
            ["send 0", "safety 4", "send 1"]
        );
        assert!(coalesce_safety(Vec::new()).is_empty());
    }
}
