//! The PBFT engine: a pure state machine, `handle(Input) -> Vec<Effect>`.
//!
//! # Protocol (Castro and Liskov 1999, adapted to one block per height)
//!
//! At height `h`, view `v`, the leader is validator `(h + v) mod n` in key order.
//!
//! 1. **Pre-prepare.** In view 0 the leader asks the host for a block
//!    ([`Effect::ProposeBlock`]) and broadcasts it signed. Replicas ask the host to
//!    validate it ([`Effect::ValidateBlock`]).
//! 2. **Prepare.** A replica that holds a valid proposal for its current view signs a
//!    prepare vote for it.
//! 3. **Commit.** Once prepares for the block hold a quorum (more than two thirds of the
//!    power), the block is *prepared*: the replica records the prepared certificate,
//!    then signs a commit vote.
//! 4. **Decide.** A quorum of commit votes for a block is its [`CommitCertificate`]: the
//!    engine emits [`Effect::Decide`] and announces the certificate, and waits for the
//!    host to start the next height.
//! 5. **View change.** When the view's timer fires first, the replica signs a view
//!    change for `v + 1` carrying its highest prepared certificate, and stops taking
//!    part in `v`. Timers double with each view, up to a cap, and restart from the base
//!    at each height. As in PBFT, the timer of the new view only counts once the view
//!    is under way (a quorum asked for it, or its new-view arrived); until then a
//!    timeout resends the replica's view change (messages get lost), or moves it up one
//!    view if others already ask for higher views, so replicas never drift apart. A
//!    replica that sees view changes from more than a third of the power for higher
//!    views joins the lowest of them.
//! 6. **New view.** The leader of `v + 1`, holding view changes from a quorum, proposes
//!    in a [`NewView`] that carries them. It must re-propose the block of the highest
//!    prepared certificate among them, if any; every replica checks that before taking
//!    part in the view. Since any two quorums share an honest validator, a block
//!    decided in a view is prepared in every later view's justification.
//!
//! # Inputs and effects
//!
//! Time, block contents and validity come from the host as [`Input`]s; everything the
//! engine wants done comes out as [`Effect`]s, in an order that is a contract:
//! **[`Effect::PersistSafety`] always precedes the messages it guards, and the host
//! must make it durable before sending them.**
//!
//! # Input checks and bounds
//!
//! Every message is size-checked before decoding, then checked for height and view
//! window, membership and signature before it touches any state. Messages for the next
//! [`EngineConfig::future_heights`] heights, and for views of this height above the
//! current one, wait in a buffer of at most [`EngineConfig::buffered_messages_max`]
//! messages and [`EngineConfig::buffered_bytes_max`] encoded bytes; when it is full,
//! messages for the farthest (height, view) are dropped to make room, since the
//! nearest are the ones that can be used first. Messages for a later height cannot
//! be checked yet (its validator set may differ), so the byte bound is what keeps a
//! faulty validator from pinning `buffered_messages_max` messages of the largest size.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::certificate::{CommitCertificate, CommitSignature, SignedVote, VoteKind};
use crate::crypto::{PublicKey, SigningDomain, SigningKey};
use crate::hash::Hash;
use crate::messages::{
    ConsensusMessage, NewView, PreparedCertificate, SignedPrePrepare, SignedViewChange,
};
use crate::safety::{SafetyRules, SafetyState};
use crate::validator::ValidatorSet;

/// Engine settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The chain's signing domain.
    pub domain: SigningDomain,
    /// First view timeout of a height.
    pub view_timeout_base_ms: u64,
    /// View timeouts double up to this.
    pub view_timeout_max_ms: u64,
    /// Largest encoded message accepted.
    pub message_bytes_max: usize,
    /// Messages for up to this many heights ahead are kept for later.
    pub future_heights: u64,
    /// Messages for up to this many views ahead of the current one are accepted.
    pub future_views: u64,
    /// Most messages kept for later heights and views.
    pub buffered_messages_max: usize,
    /// Most encoded bytes those messages may hold together; never less than twice
    /// `message_bytes_max` is used, so the largest proposal always fits.
    pub buffered_bytes_max: usize,
    /// Most blocks kept per height (proposals and blocks attached to view changes).
    pub blocks_per_height_max: usize,
    /// A deliberately broken engine, for the simulation's negative control: new leaders
    /// ignore prepared certificates and replicas do not check. Only in test builds.
    #[cfg(feature = "test-faults")]
    pub ignore_prepared_certificates: bool,
}

impl EngineConfig {
    /// Defaults for `domain`.
    pub fn new(domain: SigningDomain) -> Self {
        EngineConfig {
            domain,
            view_timeout_base_ms: 1_000,
            view_timeout_max_ms: 30_000,
            message_bytes_max: 8 * 1024 * 1024,
            future_heights: 2,
            future_views: 16,
            buffered_messages_max: 4096,
            buffered_bytes_max: 64 << 20,
            blocks_per_height_max: 64,
            #[cfg(feature = "test-faults")]
            ignore_prepared_certificates: false,
        }
    }

    fn ignores_prepared_certificates(&self) -> bool {
        #[cfg(feature = "test-faults")]
        return self.ignore_prepared_certificates;
        #[cfg(not(feature = "test-faults"))]
        false
    }
}

/// What the host feeds the engine.
#[derive(Clone, Debug)]
pub enum Input {
    /// Start `height` with its validator set: after the previous height's block is
    /// committed (or at boot, for the height after the stored tip).
    StartHeight {
        /// The height to start.
        height: u64,
        /// Its validator set.
        validators: ValidatorSet,
        /// The certificate of the previous height (none before height 2), which the
        /// engine re-announces to validators still trying to decide that height.
        previous_certificate: Option<CommitCertificate>,
    },
    /// A message from the network, as received.
    Message(Vec<u8>),
    /// The block asked for by [`Effect::ProposeBlock`].
    Proposal {
        /// Height it was asked for.
        height: u64,
        /// View it was asked for.
        view: u64,
        /// Its hash.
        block_hash: Hash,
        /// Its encoding.
        block: Vec<u8>,
    },
    /// The answer to [`Effect::ValidateBlock`].
    BlockValidated {
        /// Height of the block.
        height: u64,
        /// The block.
        block_hash: Hash,
        /// Whether the bytes hash to `block_hash` and the block is a valid next block.
        valid: bool,
    },
    /// A timer set by [`Effect::ScheduleTimeout`] fired.
    Timeout {
        /// Its height.
        height: u64,
        /// Its view.
        view: u64,
        /// Its round, as scheduled (later timers supersede earlier ones).
        round: u64,
    },
}

/// Two validly signed, conflicting messages from one validator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Two proposals for one height and view.
    ConflictingPrePrepares(Box<[SignedPrePrepare; 2]>),
    /// Two votes of one kind for one height and view.
    ConflictingVotes(Box<[SignedVote; 2]>),
    /// Two different view changes to one view.
    ConflictingViewChanges(Box<[SignedViewChange; 2]>),
}

impl Evidence {
    /// The validator the evidence is against.
    pub fn validator(&self) -> PublicKey {
        match self {
            Evidence::ConflictingPrePrepares(p) => p[0].proposer,
            Evidence::ConflictingVotes(v) => v[0].validator,
            Evidence::ConflictingViewChanges(v) => v[0].validator,
        }
    }
}

/// What the engine asks the host to do.
#[derive(Clone, Debug)]
pub enum Effect {
    /// Make this safety state durable **before** sending any message that follows it in
    /// the same effect list. After a crash, rebuild the engine from the last one.
    PersistSafety(Box<SafetyState>),
    /// Send an encoded [`ConsensusMessage`] to every other validator.
    Broadcast(Vec<u8>),
    /// Deliver [`Input::Timeout`] for `(height, view, round)` after `after_ms`. A later
    /// timer supersedes earlier ones; hosts need not cancel (stale ones are ignored).
    ScheduleTimeout {
        /// Height.
        height: u64,
        /// View.
        view: u64,
        /// Identifies this timer.
        round: u64,
        /// Delay.
        after_ms: u64,
    },
    /// Build a block for `(height, view)` and return it as [`Input::Proposal`].
    ProposeBlock {
        /// Height.
        height: u64,
        /// View.
        view: u64,
    },
    /// Check that `block` hashes to `block_hash` and is a valid next block (execute it),
    /// and answer with [`Input::BlockValidated`].
    ValidateBlock {
        /// Height.
        height: u64,
        /// The claimed hash.
        block_hash: Hash,
        /// The block's encoding.
        block: Vec<u8>,
    },
    /// `block` is decided at `height`: commit it with `certificate`, then start the next
    /// height.
    Decide {
        /// Height.
        height: u64,
        /// View it was decided in.
        view: u64,
        /// Its hash.
        block_hash: Hash,
        /// Its encoding.
        block: Vec<u8>,
        /// The commit certificate.
        certificate: CommitCertificate,
    },
    /// The network has decided up to `height` (at least); fetch and verify the missing
    /// blocks, commit them, then start the next height.
    SyncTo {
        /// Height of the certificate seen.
        height: u64,
        /// The certificate.
        certificate: CommitCertificate,
    },
    /// A validator equivocated.
    Misbehaviour(Evidence),
    /// A message was refused (for the host's counters and peer scoring).
    InvalidMessage {
        /// Why.
        reason: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Validity {
    Pending,
    Valid,
}

/// Votes of one kind in one view, by validator index.
#[derive(Default)]
struct Tally {
    votes: BTreeMap<u32, SignedVote>,
    power: HashMap<Hash, u64>,
}

impl Tally {
    fn signatures_for(&self, block_hash: &Hash) -> Vec<CommitSignature> {
        self.votes
            .values()
            .filter(|v| v.vote.block_hash == *block_hash)
            .map(|v| CommitSignature {
                validator: v.validator,
                signature: v.signature,
            })
            .collect()
    }
}

#[derive(Default)]
struct ViewState {
    pre_prepare: Option<SignedPrePrepare>,
    prepares: Tally,
    commits: Tally,
    sent_prepare: bool,
    sent_commit: bool,
}

struct StoredViewChange {
    view_change: SignedViewChange,
}

/// Messages waiting for a later height or view, bounded (see the module docs).
#[derive(Default)]
struct FutureBuffer {
    /// Each message with its encoded size.
    by_position: BTreeMap<(u64, u64), Vec<(ConsensusMessage, usize)>>,
    len: usize,
    bytes: usize,
}

/// How many messages and bytes a [`FutureBuffer`] may hold.
#[derive(Clone, Copy)]
struct FutureBounds {
    messages: usize,
    bytes: usize,
}

impl FutureBuffer {
    /// Keeps `message` if it fits, dropping messages for farther positions to make
    /// room; refuses it when only messages as near or nearer are left to drop.
    fn push(&mut self, message: ConsensusMessage, bounds: FutureBounds) {
        let key = (message.height(), message.view());
        let size = borsh::object_length(&message).unwrap_or(usize::MAX);
        if size > bounds.bytes {
            return;
        }
        while self.len >= bounds.messages || self.bytes + size > bounds.bytes {
            let Some(farthest) = self.by_position.keys().next_back().copied() else {
                return;
            };
            if farthest <= key {
                return;
            }
            let bucket = self.by_position.get_mut(&farthest).expect("key just read");
            let (_, dropped) = bucket.pop().expect("buckets are never empty");
            self.len -= 1;
            self.bytes -= dropped;
            if bucket.is_empty() {
                self.by_position.remove(&farthest);
            }
        }
        self.by_position
            .entry(key)
            .or_default()
            .push((message, size));
        self.len += 1;
        self.bytes += size;
    }

    /// Removes and returns the messages for `(height, view)`.
    fn take(&mut self, height: u64, view: u64) -> Vec<ConsensusMessage> {
        let taken = self.by_position.remove(&(height, view)).unwrap_or_default();
        self.len -= taken.len();
        self.bytes -= taken.iter().map(|(_, size)| size).sum::<usize>();
        taken.into_iter().map(|(message, _)| message).collect()
    }

    /// Removes and returns every message for `height`, dropping those below it.
    fn take_height(&mut self, height: u64) -> Vec<ConsensusMessage> {
        let mut rest = self.by_position.split_off(&(height, 0));
        let upper = rest.split_off(&(height + 1, 0));
        self.by_position = upper;
        let kept = self.by_position.values().flatten();
        self.len = kept.clone().count();
        self.bytes = kept.map(|(_, size)| size).sum();
        rest.into_values()
            .flatten()
            .map(|(message, _)| message)
            .collect()
    }
}

/// The PBFT engine of one validator (or observer).
pub struct Engine {
    config: EngineConfig,
    rules: Option<SafetyRules>,
    height: u64,
    view: u64,
    set: Option<ValidatorSet>,
    decided: bool,
    views: BTreeMap<u64, ViewState>,
    view_changes: BTreeMap<u64, BTreeMap<u32, StoredViewChange>>,
    blocks: HashMap<Hash, Vec<u8>>,
    validity: HashMap<Hash, Validity>,
    /// Digests of block bytes the host found invalid at this height.
    invalid_bytes: HashSet<Hash>,
    /// Views this engine led and has proposed in, or is waiting to.
    led_views: BTreeSet<u64>,
    awaiting_proposal: Option<u64>,
    future: FutureBuffer,
    evidence_sent: HashSet<(PublicKey, u64, u8)>,
    /// Validators whose stale view change got the previous certificate since this
    /// engine's last timeout.
    stale_answered: HashSet<u32>,
    /// The round of the live timer; timeouts of other rounds are stale.
    timer_round: u64,
    /// Last (height, view) a sync was asked for.
    sync_requested: (u64, u64),
    previous_certificate: Option<CommitCertificate>,
}

impl Engine {
    /// An engine for a validator holding `key`, resuming from `safety` (its last
    /// persisted state, or `SafetyState::default()` on first start), or for an observer
    /// when `key` is `None`. It does nothing until [`Input::StartHeight`].
    pub fn new(config: EngineConfig, key: Option<SigningKey>, safety: SafetyState) -> Self {
        let rules = key.map(|key| SafetyRules::new(config.domain.clone(), key, safety));
        Engine {
            config,
            rules,
            height: 0,
            view: 0,
            set: None,
            decided: false,
            views: BTreeMap::new(),
            view_changes: BTreeMap::new(),
            blocks: HashMap::new(),
            validity: HashMap::new(),
            invalid_bytes: HashSet::new(),
            led_views: BTreeSet::new(),
            awaiting_proposal: None,
            future: FutureBuffer::default(),
            evidence_sent: HashSet::new(),
            stale_answered: HashSet::new(),
            timer_round: 0,
            sync_requested: (0, 0),
            previous_certificate: None,
        }
    }

    /// The current height (0 before the first [`Input::StartHeight`]).
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// Whether the current height is decided.
    pub fn is_decided(&self) -> bool {
        self.decided
    }

    /// The safety state as the engine holds it now.
    pub fn safety_state(&self) -> Option<&SafetyState> {
        self.rules.as_ref().map(SafetyRules::state)
    }

    /// The leader of `(height, view)` in `set`: rotation in key order.
    pub fn leader(set: &ValidatorSet, height: u64, view: u64) -> PublicKey {
        let n = set.len() as u64;
        let index = (height % n + view % n) % n;
        set.validators()[index as usize].key
    }

    fn me(&self) -> Option<PublicKey> {
        self.rules.as_ref().map(SafetyRules::public_key)
    }

    fn am_leader(&self, view: u64) -> bool {
        match (&self.set, self.me()) {
            (Some(set), Some(me)) => Engine::leader(set, self.height, view) == me,
            _ => false,
        }
    }

    /// (Re)starts the timer of the current view.
    fn schedule_timer(&mut self, out: &mut Vec<Effect>) {
        self.timer_round += 1;
        out.push(Effect::ScheduleTimeout {
            height: self.height,
            view: self.view,
            round: self.timer_round,
            after_ms: self.timeout_ms(self.view),
        });
    }

    /// Whether the current view is under way: view 0, a view entered through a valid
    /// new-view, or one a quorum has asked for (its leader is then due). Only then does
    /// a timeout move on to the next view (PBFT starts the view-change timer only on a
    /// quorum of view changes); before, it resends this node's view change.
    fn view_is_live(&self, view: u64) -> bool {
        view == 0
            || self
                .views
                .get(&view)
                .is_some_and(|s| s.pre_prepare.is_some())
            || self
                .view_change_power(view)
                .is_some_and(|p| self.set().is_quorum(p))
    }

    fn view_change_power(&self, view: u64) -> Option<u64> {
        let set = self.set.as_ref()?;
        let changes = self.view_changes.get(&view)?;
        Some(
            changes
                .keys()
                .filter_map(|i| set.get(*i))
                .map(|v| v.power)
                .sum(),
        )
    }

    fn timeout_ms(&self, view: u64) -> u64 {
        let doubled = self
            .config
            .view_timeout_base_ms
            .saturating_mul(1u64 << view.min(32));
        doubled.min(self.config.view_timeout_max_ms)
    }

    /// Handles one input and returns what the host must do, in order.
    pub fn handle(&mut self, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::StartHeight {
                height,
                validators,
                previous_certificate,
            } => self.on_start_height(height, validators, previous_certificate, &mut out),
            Input::Message(bytes) => self.on_message(&bytes, &mut out),
            Input::Proposal {
                height,
                view,
                block_hash,
                block,
            } => self.on_proposal(height, view, block_hash, block, &mut out),
            Input::BlockValidated {
                height,
                block_hash,
                valid,
            } => self.on_block_validated(height, block_hash, valid, &mut out),
            Input::Timeout {
                height,
                view,
                round,
            } => self.on_timeout(height, view, round, &mut out),
        }
        // State changes not followed by a message (entering a view) are persisted too.
        self.flush_safety(&mut out);
        out
    }

    fn flush_safety(&mut self, out: &mut Vec<Effect>) {
        if let Some(state) = self.rules.as_mut().and_then(SafetyRules::take_changed) {
            out.push(Effect::PersistSafety(Box::new(state)));
        }
    }

    /// Sends a message, after the safety state it depends on.
    fn send(&mut self, message: ConsensusMessage, out: &mut Vec<Effect>) {
        self.flush_safety(out);
        out.push(Effect::Broadcast(message.encode()));
    }

    fn invalid(out: &mut Vec<Effect>, reason: impl Into<String>) {
        out.push(Effect::InvalidMessage {
            reason: reason.into(),
        });
    }

    fn on_start_height(
        &mut self,
        height: u64,
        validators: ValidatorSet,
        previous_certificate: Option<CommitCertificate>,
        out: &mut Vec<Effect>,
    ) {
        if self.set.is_some() && height <= self.height {
            return;
        }
        self.previous_certificate = previous_certificate.filter(|c| c.height + 1 == height);
        self.height = height;
        self.set = Some(validators);
        self.view = 0;
        self.decided = false;
        self.views.clear();
        self.view_changes.clear();
        self.blocks.clear();
        self.validity.clear();
        self.invalid_bytes.clear();
        self.led_views.clear();
        self.awaiting_proposal = None;
        self.evidence_sent.clear();
        self.stale_answered.clear();
        let mut resumed_view_change = None;
        if let Some(rules) = self.rules.as_mut() {
            // Below the persisted height the rules refuse to sign: the engine then only
            // follows this height, which is what a validator that lost its store must do.
            if rules.start_height(height).is_ok() && rules.state().height == height {
                self.view = rules.state().view;
                resumed_view_change = rules.state().view_change.clone();
            }
        }
        self.views.entry(self.view).or_default();
        self.schedule_timer(out);
        if self.view == 0 && self.am_leader(0) {
            self.awaiting_proposal = Some(0);
            self.led_views.insert(0);
            out.push(Effect::ProposeBlock { height, view: 0 });
        }
        if let Some(view_change) = resumed_view_change
            && view_change.body.new_view == self.view
        {
            // Resend the view change that got us here, exactly as signed.
            let block = self.prepared_block();
            self.send(
                ConsensusMessage::ViewChange {
                    view_change: view_change.clone(),
                    block,
                },
                out,
            );
            let index = self.index_of(&view_change.validator);
            if let Some(index) = index {
                self.store_view_change(index, view_change);
            }
        }
        for message in self.future.take_height(height) {
            self.on_decoded(message, out);
        }
    }

    fn future_bounds(&self) -> FutureBounds {
        FutureBounds {
            messages: self.config.buffered_messages_max,
            bytes: self
                .config
                .buffered_bytes_max
                .max(self.config.message_bytes_max.saturating_mul(2)),
        }
    }

    fn index_of(&self, key: &PublicKey) -> Option<u32> {
        self.set.as_ref().and_then(|s| s.index_of(key))
    }

    fn prepared_block(&self) -> Option<Vec<u8>> {
        self.rules
            .as_ref()
            .and_then(|r| r.state().prepared_block.clone())
    }

    fn on_message(&mut self, bytes: &[u8], out: &mut Vec<Effect>) {
        match ConsensusMessage::decode(bytes, self.config.message_bytes_max) {
            Ok(message) => self.on_decoded(message, out),
            Err(e) => Engine::invalid(out, e.to_string()),
        }
    }

    fn on_decoded(&mut self, message: ConsensusMessage, out: &mut Vec<Effect>) {
        if self.set.is_none() {
            self.future.push(message, self.future_bounds());
            return;
        }
        let height = message.height();
        if height < self.height {
            if height + 1 == self.height
                && let ConsensusMessage::ViewChange { view_change, .. } = &message
            {
                self.answer_stale_view_change(view_change, out);
            }
            return;
        }
        if height > self.height {
            if let ConsensusMessage::Certificate(certificate) = &message {
                self.on_future_certificate(certificate, out);
            } else if height <= self.height + self.config.future_heights {
                self.future.push(message, self.future_bounds());
            }
            return;
        }
        if self.decided {
            return;
        }
        match message {
            ConsensusMessage::PrePrepare { pre_prepare, block } => {
                self.on_pre_prepare(pre_prepare, block, out)
            }
            ConsensusMessage::Vote(vote) => self.on_vote(vote, out),
            ConsensusMessage::ViewChange { view_change, block } => {
                self.on_view_change(view_change, block, out)
            }
            ConsensusMessage::NewView { new_view, block } => self.on_new_view(new_view, block, out),
            ConsensusMessage::Certificate(certificate) => self.on_certificate(certificate, out),
        }
    }

    fn set(&self) -> &ValidatorSet {
        self.set.as_ref().expect("a height has started")
    }

    /// The safety rules, when this engine's key is in the current height's set: a
    /// node whose key is not (an observer, or a validator added or removed by a
    /// transaction at another height) follows the height without signing anything.
    fn signing_rules(&mut self) -> Option<&mut SafetyRules> {
        let member = match (&self.rules, &self.set) {
            (Some(rules), Some(set)) => set.contains(&rules.public_key()),
            _ => false,
        };
        if member { self.rules.as_mut() } else { None }
    }

    /// A validator still timing out at the previous height missed its decision: send it
    /// the certificate. Only for view changes a member signed (checked against this
    /// height's keys, which are the previous height's unless the set changed; then the
    /// host's block sync catches the validator up instead), and at most once per validator between two of
    /// this engine's own timeouts: a replayed or repeated view change cannot turn into a
    /// flood of certificates, yet a validator whose answer was lost gets another one
    /// after our next timeout, when it resends its view change.
    fn answer_stale_view_change(&mut self, view_change: &SignedViewChange, out: &mut Vec<Effect>) {
        let Some(certificate) = self.previous_certificate.clone() else {
            return;
        };
        let Some(index) = self.index_of(&view_change.validator) else {
            return;
        };
        if self.stale_answered.contains(&index)
            || view_change
                .verify_signature(&self.config.domain, self.set())
                .is_err()
        {
            return;
        }
        self.stale_answered.insert(index);
        self.send(ConsensusMessage::Certificate(certificate), out);
    }

    fn on_pre_prepare(
        &mut self,
        pre_prepare: SignedPrePrepare,
        block: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        if pre_prepare.view != 0 {
            return Engine::invalid(
                out,
                "a pre-prepare after view 0 must come inside a new-view",
            );
        }
        if pre_prepare.view != self.view {
            return;
        }
        if pre_prepare.proposer != Engine::leader(self.set(), self.height, 0) {
            return Engine::invalid(out, "pre-prepare from a validator that is not the leader");
        }
        if let Err(e) = pre_prepare.verify(&self.config.domain, self.set()) {
            return Engine::invalid(out, format!("pre-prepare: {e}"));
        }
        self.accept_proposal(pre_prepare, block, out);
    }

    /// Takes a checked proposal for the current view.
    fn accept_proposal(
        &mut self,
        pre_prepare: SignedPrePrepare,
        block: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        let view = pre_prepare.view;
        let state = self.views.entry(view).or_default();
        match state.pre_prepare {
            Some(existing) if existing.block_hash != pre_prepare.block_hash => {
                let evidence = Evidence::ConflictingPrePrepares(Box::new([existing, pre_prepare]));
                self.report(evidence, view, 0, out);
                return;
            }
            // The same proposal again: its bytes may be the honest ones after a copy
            // with other bytes was found invalid (keeping and validating skip what is
            // already known).
            Some(_) => {}
            None => state.pre_prepare = Some(pre_prepare),
        }
        let hash = pre_prepare.block_hash;
        self.keep_block(hash, block);
        self.request_validation(hash, out);
        self.try_prepare(view, out);
    }

    fn keep_block(&mut self, hash: Hash, block: Vec<u8>) {
        if self.blocks.contains_key(&hash)
            || (!self.invalid_bytes.is_empty()
                && self.invalid_bytes.contains(&Hash::digest(&block)))
        {
            return;
        }
        if self.blocks.len() < self.config.blocks_per_height_max {
            self.blocks.entry(hash).or_insert(block);
        }
    }

    fn request_validation(&mut self, hash: Hash, out: &mut Vec<Effect>) {
        if self.validity.contains_key(&hash) {
            return;
        }
        let Some(block) = self.blocks.get(&hash) else {
            return;
        };
        self.validity.insert(hash, Validity::Pending);
        out.push(Effect::ValidateBlock {
            height: self.height,
            block_hash: hash,
            block: block.clone(),
        });
    }

    fn report(&mut self, evidence: Evidence, view: u64, kind: u8, out: &mut Vec<Effect>) {
        if self
            .evidence_sent
            .insert((evidence.validator(), view, kind))
        {
            out.push(Effect::Misbehaviour(evidence));
        }
    }

    fn on_block_validated(&mut self, height: u64, hash: Hash, valid: bool, out: &mut Vec<Effect>) {
        if height != self.height || self.validity.get(&hash) != Some(&Validity::Pending) {
            return;
        }
        if !valid {
            // The verdict is about these bytes, not about the hash: a faulty validator
            // can pair an honest leader's signed proposal with other bytes. Forget the
            // bytes (remembering their digest, so they are not checked again) and let
            // bytes that do hash to `hash` come and be checked.
            self.validity.remove(&hash);
            if let Some(bytes) = self.blocks.remove(&hash)
                && self.invalid_bytes.len() < 4 * self.config.blocks_per_height_max
            {
                self.invalid_bytes.insert(Hash::digest(&bytes));
            }
            return;
        }
        self.validity.insert(hash, Validity::Valid);
        if self.decided {
            return;
        }
        if valid {
            let views: Vec<u64> = self.views.keys().copied().collect();
            for view in views {
                self.try_decide(view, hash, out);
            }
            self.try_prepare(self.view, out);
            self.try_commit(self.view, out);
            self.maybe_lead_new_view(self.view, out);
        } else if self
            .views
            .get(&self.view)
            .and_then(|s| s.pre_prepare)
            .is_some_and(|p| p.block_hash == hash)
        {
            // The leader proposed an invalid block: no need to wait for the timer.
            self.start_view_change(self.view + 1, out);
        }
    }

    fn try_prepare(&mut self, view: u64, out: &mut Vec<Effect>) {
        if view != self.view || self.decided {
            return;
        }
        let Some(state) = self.views.get(&view) else {
            return;
        };
        let Some(pre_prepare) = state.pre_prepare else {
            return;
        };
        if state.sent_prepare
            || self.validity.get(&pre_prepare.block_hash) != Some(&Validity::Valid)
        {
            return;
        }
        let height = self.height;
        let Some(rules) = self.signing_rules() else {
            return;
        };
        let Ok(vote) = rules.sign_prepare(height, view, pre_prepare.block_hash) else {
            return;
        };
        self.views.get_mut(&view).expect("read above").sent_prepare = true;
        self.send(ConsensusMessage::Vote(vote), out);
        self.add_vote(vote, out);
    }

    fn on_vote(&mut self, vote: SignedVote, out: &mut Vec<Effect>) {
        let view = vote.vote.view;
        if view > self.view {
            if view <= self.view + self.config.future_views {
                let bounds = self.future_bounds();
                self.future.push(ConsensusMessage::Vote(vote), bounds);
            }
            return;
        }
        if !self.views.contains_key(&view) {
            return;
        }
        if let Err(e) = vote.verify(&self.config.domain, self.set()) {
            return Engine::invalid(out, format!("vote: {e}"));
        }
        self.add_vote(vote, out);
    }

    /// Counts a checked vote.
    fn add_vote(&mut self, vote: SignedVote, out: &mut Vec<Effect>) {
        let Some(index) = self.index_of(&vote.validator) else {
            return;
        };
        let power = self.set().get(index).map_or(0, |v| v.power);
        let view = vote.vote.view;
        let Some(state) = self.views.get_mut(&view) else {
            return;
        };
        let tally = match vote.vote.kind {
            VoteKind::Prepare => &mut state.prepares,
            VoteKind::Commit => &mut state.commits,
        };
        if let Some(existing) = tally.votes.get(&index) {
            if existing.vote != vote.vote {
                let evidence = Evidence::ConflictingVotes(Box::new([*existing, vote]));
                let kind = 1 + vote.vote.kind as u8;
                self.report(evidence, view, kind, out);
            }
            return;
        }
        tally.votes.insert(index, vote);
        *tally.power.entry(vote.vote.block_hash).or_default() += power;
        match vote.vote.kind {
            VoteKind::Prepare => self.try_commit(view, out),
            VoteKind::Commit => self.try_decide(view, vote.vote.block_hash, out),
        }
    }

    fn try_commit(&mut self, view: u64, out: &mut Vec<Effect>) {
        if view != self.view || self.decided {
            return;
        }
        let Some(state) = self.views.get(&view) else {
            return;
        };
        let Some(pre_prepare) = state.pre_prepare else {
            return;
        };
        let hash = pre_prepare.block_hash;
        let prepared_power = state.prepares.power.get(&hash).copied().unwrap_or(0);
        if state.sent_commit
            || self.validity.get(&hash) != Some(&Validity::Valid)
            || !self.set().is_quorum(prepared_power)
        {
            return;
        }
        let certificate = PreparedCertificate {
            height: self.height,
            view,
            block_hash: hash,
            signatures: state.prepares.signatures_for(&hash),
        };
        let Some(block) = self.blocks.get(&hash).cloned() else {
            return;
        };
        let Some(rules) = self.signing_rules() else {
            return;
        };
        let Ok(vote) = rules.sign_commit(certificate, block) else {
            return;
        };
        self.views.get_mut(&view).expect("read above").sent_commit = true;
        self.send(ConsensusMessage::Vote(vote), out);
        self.add_vote(vote, out);
    }

    fn try_decide(&mut self, view: u64, hash: Hash, out: &mut Vec<Effect>) {
        if self.decided {
            return;
        }
        let Some(state) = self.views.get(&view) else {
            return;
        };
        let power = state.commits.power.get(&hash).copied().unwrap_or(0);
        if !self.set().is_quorum(power) {
            return;
        }
        let certificate = CommitCertificate {
            height: self.height,
            view,
            block_hash: hash,
            signatures: state.commits.signatures_for(&hash),
        };
        self.decide_or_sync(certificate, out);
    }

    /// Decides on a checked certificate of the current height if the block is here and
    /// valid; otherwise asks the host to fetch it.
    fn decide_or_sync(&mut self, certificate: CommitCertificate, out: &mut Vec<Effect>) {
        let hash = certificate.block_hash;
        match (self.blocks.get(&hash), self.validity.get(&hash)) {
            (Some(block), Some(Validity::Valid)) => {
                self.decided = true;
                out.push(Effect::Decide {
                    height: self.height,
                    view: certificate.view,
                    block_hash: hash,
                    block: block.clone(),
                    certificate: certificate.clone(),
                });
                self.send(ConsensusMessage::Certificate(certificate), out);
            }
            // Validation under way: deciding resumes when it answers.
            (Some(_), Some(Validity::Pending)) => {}
            (Some(_), None) => self.request_validation(hash, out),
            _ => self.request_sync(certificate, out),
        }
    }

    /// Asks the host to sync: once per higher height seen, and for the current height
    /// once per view, so a node whose host could not fetch the block yet asks again
    /// after each timeout.
    fn request_sync(&mut self, certificate: CommitCertificate, out: &mut Vec<Effect>) {
        let key = (
            certificate.height,
            if certificate.height == self.height {
                self.view
            } else {
                0
            },
        );
        if key > self.sync_requested {
            self.sync_requested = key;
            out.push(Effect::SyncTo {
                height: certificate.height,
                certificate,
            });
        }
    }

    fn on_certificate(&mut self, certificate: CommitCertificate, out: &mut Vec<Effect>) {
        if let Err(e) = certificate.verify(
            &self.config.domain,
            self.set(),
            self.height,
            &certificate.block_hash,
        ) {
            return Engine::invalid(out, format!("certificate: {e}"));
        }
        self.decide_or_sync(certificate, out);
    }

    /// A certificate for a later height means this node fell behind. It is checked with
    /// the current set; if the set has changed since, it fails and is ignored (block sync
    /// in the host still catches the node up from its peers).
    fn on_future_certificate(&mut self, certificate: &CommitCertificate, out: &mut Vec<Effect>) {
        if (certificate.height, 0) <= self.sync_requested {
            return;
        }
        if certificate
            .verify(
                &self.config.domain,
                self.set(),
                certificate.height,
                &certificate.block_hash,
            )
            .is_ok()
        {
            self.request_sync(certificate.clone(), out);
        }
    }

    fn on_timeout(&mut self, height: u64, view: u64, round: u64, out: &mut Vec<Effect>) {
        if height != self.height
            || view != self.view
            || round != self.timer_round
            || self.decided
            || self.set.is_none()
        {
            return;
        }
        self.stale_answered.clear();
        // Move on from a view under way; from one still gathering view changes, move
        // up only towards validators already asking for higher views. Nodes below the
        // highest thus climb to it while it waits, and they meet (with equal powers
        // PBFT's join rule does this; with weights, the validators ahead may hold a
        // third of the power or less and not trigger it).
        let higher_asked = self.view_changes.range(view + 1..).next().is_some();
        if self.view_is_live(view) || higher_asked {
            self.start_view_change(view + 1, out);
            return;
        }
        // Alone in this view so far: resend our view change (some may have been lost)
        // and keep waiting.
        let own = self
            .rules
            .as_ref()
            .and_then(|r| r.state().view_change.clone())
            .filter(|vc| vc.body.height == height && vc.body.new_view == view);
        if let Some(view_change) = own {
            let block = self.prepared_block();
            self.send(ConsensusMessage::ViewChange { view_change, block }, out);
        }
        self.schedule_timer(out);
    }

    /// Signs a view change to `target` and moves there.
    fn start_view_change(&mut self, target: u64, out: &mut Vec<Effect>) {
        let height = self.height;
        let Some(rules) = self.signing_rules() else {
            return;
        };
        let Ok(view_change) = rules.sign_view_change(height, target) else {
            return;
        };
        self.view = target;
        self.views.entry(target).or_default();
        self.schedule_timer(out);
        let block = self.prepared_block();
        self.send(
            ConsensusMessage::ViewChange {
                view_change: view_change.clone(),
                block,
            },
            out,
        );
        if let Some(index) = self.index_of(&view_change.validator) {
            self.store_view_change(index, view_change);
        }
        self.maybe_lead_new_view(target, out);
    }

    fn store_view_change(&mut self, index: u32, view_change: SignedViewChange) {
        self.view_changes
            .entry(view_change.body.new_view)
            .or_default()
            .insert(index, StoredViewChange { view_change });
    }

    fn on_view_change(
        &mut self,
        view_change: SignedViewChange,
        block: Option<Vec<u8>>,
        out: &mut Vec<Effect>,
    ) {
        let target = view_change.body.new_view;
        if target < self.view || target > self.view + self.config.future_views {
            return;
        }
        if let Err(e) = view_change.verify(&self.config.domain, self.set()) {
            return Engine::invalid(out, format!("view change: {e}"));
        }
        let Some(index) = self.index_of(&view_change.validator) else {
            return;
        };
        if let Some(existing) = self.view_changes.get(&target).and_then(|m| m.get(&index)) {
            if existing.view_change != view_change {
                let evidence = Evidence::ConflictingViewChanges(Box::new([
                    existing.view_change.clone(),
                    view_change,
                ]));
                self.report(evidence, target, 3, out);
            }
            return;
        }
        if let (Some(block), Some(prepared)) = (block, &view_change.body.prepared) {
            // Kept for a possible re-proposal; validated before any use.
            self.keep_block(prepared.block_hash, block);
        }
        let was_live = self.view_is_live(target);
        self.store_view_change(index, view_change);
        if target == self.view && !was_live && self.view_is_live(target) {
            // A quorum asks for this view: give its leader a full timeout from now.
            self.schedule_timer(out);
        }
        self.maybe_join_higher_view(out);
        self.maybe_lead_new_view(target, out);
    }

    /// Joins the lowest higher view once validators with more than a third of the
    /// power ask for higher views: at least one honest validator has timed out.
    fn maybe_join_higher_view(&mut self, out: &mut Vec<Effect>) {
        let mut lowest_by_validator: BTreeMap<u32, u64> = BTreeMap::new();
        for (target, changes) in self.view_changes.range(self.view + 1..) {
            for index in changes.keys() {
                lowest_by_validator.entry(*index).or_insert(*target);
            }
        }
        let set = self.set();
        let power: u64 = lowest_by_validator
            .keys()
            .filter_map(|i| set.get(*i))
            .map(|v| v.power)
            .sum();
        if !set.exceeds_one_third(power) {
            return;
        }
        if let Some(target) = lowest_by_validator.values().min().copied() {
            self.start_view_change(target, out);
        }
    }

    /// As the leader of `view` holding a quorum of view changes for it, proposes in a
    /// new-view message: the forced block if any view change carries a prepared
    /// certificate, or a fresh block from the host.
    fn maybe_lead_new_view(&mut self, view: u64, out: &mut Vec<Effect>) {
        if view == 0
            || view != self.view
            || self.decided
            || !self.am_leader(view)
            || self.led_views.contains(&view)
        {
            return;
        }
        let Some(changes) = self.view_changes.get(&view) else {
            return;
        };
        let set = self.set();
        let power: u64 = changes
            .keys()
            .filter_map(|i| set.get(*i))
            .map(|v| v.power)
            .sum();
        if !set.is_quorum(power) {
            return;
        }
        let view_changes: Vec<SignedViewChange> =
            changes.values().map(|s| s.view_change.clone()).collect();
        let forced = NewView::forced_block(&view_changes)
            .map(|p| p.block_hash)
            .filter(|_| !self.config.ignores_prepared_certificates());
        match forced {
            Some(hash) => match self.validity.get(&hash) {
                Some(Validity::Valid) => {
                    let block = self
                        .blocks
                        .get(&hash)
                        .cloned()
                        .expect("validated blocks are kept");
                    self.led_views.insert(view);
                    self.propose_new_view(view, view_changes, hash, block, out);
                }
                // Either the block is being validated (this runs again when it is), or it
                // is not here, or the host found it invalid: wait for the view's timer.
                _ => self.request_validation(hash, out),
            },
            None => {
                self.led_views.insert(view);
                self.awaiting_proposal = Some(view);
                out.push(Effect::ProposeBlock {
                    height: self.height,
                    view,
                });
            }
        }
    }

    fn propose_new_view(
        &mut self,
        view: u64,
        view_changes: Vec<SignedViewChange>,
        hash: Hash,
        block: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        let height = self.height;
        let Some(rules) = self.signing_rules() else {
            return;
        };
        let Ok(pre_prepare) = rules.sign_pre_prepare(height, view, hash) else {
            return;
        };
        let new_view = NewView {
            height,
            view,
            view_changes,
            pre_prepare,
        };
        self.send(
            ConsensusMessage::NewView {
                new_view,
                block: block.clone(),
            },
            out,
        );
        self.accept_proposal(pre_prepare, block, out);
    }

    fn on_proposal(
        &mut self,
        height: u64,
        view: u64,
        hash: Hash,
        block: Vec<u8>,
        out: &mut Vec<Effect>,
    ) {
        if height != self.height
            || view != self.view
            || self.awaiting_proposal != Some(view)
            || self.decided
        {
            return;
        }
        self.awaiting_proposal = None;
        // The host built it: it is valid by construction.
        self.blocks.insert(hash, block.clone());
        self.validity.insert(hash, Validity::Valid);
        if view == 0 {
            let Some(rules) = self.signing_rules() else {
                return;
            };
            let Ok(pre_prepare) = rules.sign_pre_prepare(height, 0, hash) else {
                return;
            };
            self.send(
                ConsensusMessage::PrePrepare {
                    pre_prepare,
                    block: block.clone(),
                },
                out,
            );
            self.accept_proposal(pre_prepare, block, out);
        } else {
            let view_changes: Vec<SignedViewChange> = self
                .view_changes
                .get(&view)
                .map(|m| m.values().map(|s| s.view_change.clone()).collect())
                .unwrap_or_default();
            self.propose_new_view(view, view_changes, hash, block, out);
        }
    }

    fn on_new_view(&mut self, new_view: NewView, block: Vec<u8>, out: &mut Vec<Effect>) {
        let view = new_view.view;
        if view == 0 {
            return Engine::invalid(out, "new-view for view 0");
        }
        if view < self.view || view > self.view + self.config.future_views {
            return;
        }
        if let Some(existing) = self.views.get(&view).and_then(|s| s.pre_prepare) {
            // Already under way. The same proposal may come with the honest bytes after
            // a copy with other bytes was found invalid.
            if existing == new_view.pre_prepare {
                let hash = existing.block_hash;
                self.keep_block(hash, block);
                self.request_validation(hash, out);
                self.try_prepare(view, out);
            }
            return;
        }
        if let Err(reason) = self.check_new_view(&new_view) {
            return Engine::invalid(out, format!("new-view: {reason}"));
        }
        if view > self.view {
            let height = self.height;
            if let Some(rules) = self.rules.as_mut()
                && rules.enter_view(height, view).is_err()
            {
                return;
            }
            self.view = view;
        }
        // The view is under way: its proposal gets a full timeout from now.
        self.schedule_timer(out);
        self.views.entry(view).or_default();
        self.accept_proposal(new_view.pre_prepare, block, out);
        for message in self.future.take(self.height, view) {
            self.on_decoded(message, out);
        }
    }

    /// The justification every replica checks: a signed proposal by the view's leader,
    /// backed by valid view changes for this view from a quorum, proposing the block of
    /// the highest prepared certificate among them if there is one.
    fn check_new_view(&self, new_view: &NewView) -> Result<(), String> {
        let set = self.set();
        let pre_prepare = &new_view.pre_prepare;
        if pre_prepare.height != self.height
            || pre_prepare.view != new_view.view
            || new_view.height != self.height
        {
            return Err("proposal for another height or view".into());
        }
        if pre_prepare.proposer != Engine::leader(set, self.height, new_view.view) {
            return Err("proposal not by the view's leader".into());
        }
        pre_prepare
            .verify(&self.config.domain, set)
            .map_err(|e| format!("proposal: {e}"))?;
        if new_view.view_changes.len() > set.len() {
            return Err("more view changes than validators".into());
        }
        let mut seen = vec![false; set.len()];
        let mut power = 0u64;
        for view_change in &new_view.view_changes {
            if view_change.body.height != self.height || view_change.body.new_view != new_view.view
            {
                return Err("view change for another height or view".into());
            }
            let index = set
                .index_of(&view_change.validator)
                .ok_or("view change from a non-member")?;
            if std::mem::replace(&mut seen[index as usize], true) {
                return Err("two view changes from one validator".into());
            }
            view_change
                .verify(&self.config.domain, set)
                .map_err(|e| format!("view change: {e}"))?;
            power += set.get(index).map_or(0, |v| v.power);
        }
        if !set.is_quorum(power) {
            return Err("view changes below a quorum".into());
        }
        if let Some(forced) = NewView::forced_block(&new_view.view_changes)
            && forced.block_hash != pre_prepare.block_hash
            && !self.config.ignores_prepared_certificates()
        {
            return Err("the leader did not re-propose the highest prepared block".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::Vote;
    use crate::messages::ViewChangeBody;
    use crate::validator::Validator;

    fn keys() -> Vec<SigningKey> {
        (0..4u8)
            .map(|i| SigningKey::from_seed([i + 1; 32]))
            .collect()
    }

    fn set(keys: &[SigningKey]) -> ValidatorSet {
        ValidatorSet::new(
            keys.iter()
                .map(|k| Validator {
                    key: k.public_key(),
                    power: 1,
                })
                .collect(),
        )
        .unwrap()
    }

    fn domain() -> SigningDomain {
        SigningDomain::new("engine-test").unwrap()
    }

    fn started(key: &SigningKey, set: &ValidatorSet) -> (Engine, Vec<Effect>) {
        let mut engine = Engine::new(
            EngineConfig::new(domain()),
            Some(key.clone()),
            SafetyState::default(),
        );
        let effects = engine.handle(Input::StartHeight {
            height: 1,
            validators: set.clone(),
            previous_certificate: None,
        });
        (engine, effects)
    }

    fn invalid_count(effects: &[Effect]) -> usize {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::InvalidMessage { .. }))
            .count()
    }

    #[test]
    fn leader_persists_before_it_broadcasts() {
        let keys = keys();
        let set = set(&keys);
        let leader = keys
            .iter()
            .find(|k| k.public_key() == Engine::leader(&set, 1, 0))
            .unwrap();
        let (mut engine, effects) = started(leader, &set);
        assert!(
            effects
                .iter()
                .any(|e| matches!(e, Effect::ProposeBlock { height: 1, view: 0 }))
        );
        let effects = engine.handle(Input::Proposal {
            height: 1,
            view: 0,
            block_hash: Hash::digest(b"block"),
            block: b"block".to_vec(),
        });
        let first_persist = effects
            .iter()
            .position(|e| matches!(e, Effect::PersistSafety(_)))
            .expect("signing changes the safety state");
        let first_broadcast = effects
            .iter()
            .position(|e| matches!(e, Effect::Broadcast(_)))
            .expect("the proposal goes out");
        assert!(first_persist < first_broadcast, "{effects:?}");
        // Pre-prepare and prepare both went out, each after its persisted record.
        let broadcasts = effects
            .iter()
            .filter(|e| matches!(e, Effect::Broadcast(_)))
            .count();
        assert_eq!(broadcasts, 2);
    }

    #[test]
    fn bad_input_is_refused_before_it_touches_state() {
        let keys = keys();
        let set = set(&keys);
        let (mut engine, _) = started(&keys[0], &set);
        let too_big = vec![0u8; engine.config.message_bytes_max + 1];
        assert_eq!(invalid_count(&engine.handle(Input::Message(too_big))), 1);
        assert_eq!(
            invalid_count(&engine.handle(Input::Message(vec![0xff; 50]))),
            1
        );
        // A correctly encoded vote by a key outside the set.
        let outsider = SigningKey::from_seed([99; 32]);
        let vote = Vote {
            kind: VoteKind::Prepare,
            height: 1,
            view: 0,
            block_hash: Hash::digest(b"x"),
        }
        .sign(&domain(), &outsider);
        let effects = engine.handle(Input::Message(ConsensusMessage::Vote(vote).encode()));
        assert_eq!(invalid_count(&effects), 1);
        // A member's vote with a broken signature.
        let mut forged = Vote {
            kind: VoteKind::Prepare,
            height: 1,
            view: 0,
            block_hash: Hash::digest(b"x"),
        }
        .sign(&domain(), &keys[1]);
        forged.vote.block_hash = Hash::digest(b"y");
        let effects = engine.handle(Input::Message(ConsensusMessage::Vote(forged).encode()));
        assert_eq!(invalid_count(&effects), 1);
        assert!(
            engine
                .views
                .get(&0)
                .is_some_and(|s| s.prepares.votes.is_empty())
        );
        assert_eq!(engine.view(), 0);
    }

    #[test]
    fn conflicting_votes_are_evidence() {
        let keys = keys();
        let set = set(&keys);
        let (mut engine, _) = started(&keys[0], &set);
        let vote = |hash: &[u8]| Vote {
            kind: VoteKind::Commit,
            height: 1,
            view: 0,
            block_hash: Hash::digest(hash),
        };
        let first = vote(b"a").sign(&domain(), &keys[2]);
        let second = vote(b"b").sign(&domain(), &keys[2]);
        assert!(
            engine
                .handle(Input::Message(ConsensusMessage::Vote(first).encode()))
                .is_empty()
        );
        // The same vote again is not evidence.
        assert!(
            engine
                .handle(Input::Message(ConsensusMessage::Vote(first).encode()))
                .is_empty()
        );
        let effects = engine.handle(Input::Message(ConsensusMessage::Vote(second).encode()));
        let evidence: Vec<&Evidence> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Misbehaviour(evidence) => Some(evidence),
                _ => None,
            })
            .collect();
        assert_eq!(evidence.len(), 1);
        assert_eq!(evidence[0].validator(), keys[2].public_key());
    }

    #[test]
    fn future_buffer_keeps_the_nearest() {
        let keys = keys();
        let mut buffer = FutureBuffer::default();
        let vote_at = |height: u64| {
            ConsensusMessage::Vote(
                Vote {
                    kind: VoteKind::Prepare,
                    height,
                    view: 0,
                    block_hash: Hash::ZERO,
                }
                .sign(&domain(), &keys[0]),
            )
        };
        let three = FutureBounds {
            messages: 3,
            bytes: usize::MAX,
        };
        for height in [5, 3, 9, 4] {
            buffer.push(vote_at(height), three);
        }
        // Full at 3: the farthest (9) made room for 4; a farther one is refused.
        buffer.push(vote_at(12), three);
        assert_eq!(buffer.len, 3);
        let kept: Vec<u64> = buffer.by_position.keys().map(|(h, _)| *h).collect();
        assert_eq!(kept, vec![3, 4, 5]);
        let vote_bytes = borsh::object_length(&vote_at(1)).unwrap();
        assert_eq!(buffer.bytes, 3 * vote_bytes);
        // Starting height 4 hands over its messages and drops those below it.
        assert_eq!(buffer.take_height(4).len(), 1);
        let kept: Vec<u64> = buffer.by_position.keys().map(|(h, _)| *h).collect();
        assert_eq!(kept, vec![5]);
        assert_eq!(buffer.len, 1);
        assert_eq!(buffer.bytes, vote_bytes);
        assert_eq!(buffer.take(5, 0).len(), 1);
        assert_eq!((buffer.len, buffer.bytes), (0, 0));
    }

    #[test]
    fn future_buffer_bounds_bytes() {
        let keys = keys();
        let proposal_at = |height: u64, block_len: usize| ConsensusMessage::PrePrepare {
            pre_prepare: SignedPrePrepare::sign(&domain(), &keys[0], height, 0, Hash::ZERO),
            block: vec![7; block_len],
        };
        let size = borsh::object_length(&proposal_at(1, 1000)).unwrap();
        // Room for two such proposals by bytes, though the count allows many more.
        let bounds = FutureBounds {
            messages: 100,
            bytes: 2 * size + size / 2,
        };
        let mut buffer = FutureBuffer::default();
        buffer.push(proposal_at(4, 1000), bounds);
        buffer.push(proposal_at(6, 1000), bounds);
        assert_eq!(buffer.bytes, 2 * size);
        // A nearer one evicts the farthest; a farther one is refused.
        buffer.push(proposal_at(5, 1000), bounds);
        buffer.push(proposal_at(7, 1000), bounds);
        let kept: Vec<u64> = buffer.by_position.keys().map(|(h, _)| *h).collect();
        assert_eq!(kept, vec![4, 5]);
        assert_eq!(buffer.bytes, 2 * size);
        // One larger than the whole bound is refused without evicting anything.
        buffer.push(proposal_at(3, 4 * size), bounds);
        assert_eq!(buffer.len, 2);
        // A message needing two evictions gets them, when both are farther: this one
        // encodes to exactly twice `size`.
        let double = proposal_at(3, size + 1000);
        assert_eq!(borsh::object_length(&double).unwrap(), 2 * size);
        buffer.push(double, bounds);
        let kept: Vec<u64> = buffer.by_position.keys().map(|(h, _)| *h).collect();
        assert_eq!(kept, vec![3]);
        assert_eq!((buffer.len, buffer.bytes), (1, 2 * size));
    }

    #[test]
    fn stale_view_changes_get_the_certificate_at_most_once_per_timeout() {
        let keys = keys();
        let set = set(&keys);
        let decided = Hash::digest(b"block 1");
        let votes: Vec<SignedVote> = keys[..3]
            .iter()
            .map(|k| {
                Vote {
                    kind: VoteKind::Commit,
                    height: 1,
                    view: 0,
                    block_hash: decided,
                }
                .sign(&domain(), k)
            })
            .collect();
        let certificate = CommitCertificate::from_votes(&votes).unwrap();
        let mut engine = Engine::new(
            EngineConfig::new(domain()),
            Some(keys[0].clone()),
            SafetyState::default(),
        );
        engine.handle(Input::StartHeight {
            height: 2,
            validators: set.clone(),
            previous_certificate: Some(certificate.clone()),
        });
        let stale = |key: &SigningKey, new_view: u64| {
            let view_change = SignedViewChange::sign(
                &domain(),
                key,
                ViewChangeBody {
                    height: 1,
                    new_view,
                    prepared: None,
                },
            );
            Input::Message(
                ConsensusMessage::ViewChange {
                    view_change,
                    block: None,
                }
                .encode(),
            )
        };
        let certificates = |effects: &[Effect]| {
            effects
                .iter()
                .filter(|e| {
                    matches!(e, Effect::Broadcast(bytes)
                        if matches!(ConsensusMessage::decode(bytes, usize::MAX),
                            Ok(ConsensusMessage::Certificate(c)) if c == certificate))
                })
                .count()
        };
        assert_eq!(certificates(&engine.handle(stale(&keys[3], 1))), 1);
        // Repeats, even for other views, wait for this engine's next timeout.
        assert_eq!(certificates(&engine.handle(stale(&keys[3], 1))), 0);
        assert_eq!(certificates(&engine.handle(stale(&keys[3], 2))), 0);
        // Another validator gets its own answer; an outsider none.
        assert_eq!(certificates(&engine.handle(stale(&keys[2], 1))), 1);
        let outsider = SigningKey::from_seed([99; 32]);
        assert_eq!(certificates(&engine.handle(stale(&outsider, 1))), 0);
        engine.handle(Input::Timeout {
            height: 2,
            view: 0,
            round: engine.timer_round,
        });
        assert_eq!(certificates(&engine.handle(stale(&keys[3], 1))), 1);
    }

    #[test]
    fn a_key_outside_the_set_signs_nothing() {
        let keys = keys();
        let set = set(&keys);
        let broadcasts = |key: &SigningKey| {
            let (mut engine, mut effects) = started(key, &set);
            effects.extend(engine.handle(Input::Timeout {
                height: 1,
                view: 0,
                round: engine.timer_round,
            }));
            effects
                .iter()
                .filter(|e| matches!(e, Effect::Broadcast(_)))
                .count()
        };
        // A member that is not the leader signs a view change on timeout.
        let member = keys
            .iter()
            .find(|k| k.public_key() != Engine::leader(&set, 1, 0))
            .unwrap();
        assert!(broadcasts(member) > 0);
        assert_eq!(broadcasts(&SigningKey::from_seed([42; 32])), 0);
    }

    #[test]
    fn bytes_found_invalid_do_not_condemn_their_hash() {
        let keys = keys();
        let set = set(&keys);
        let leader = keys
            .iter()
            .find(|k| k.public_key() == Engine::leader(&set, 1, 0))
            .unwrap();
        let replica = keys
            .iter()
            .find(|k| k.public_key() != leader.public_key())
            .unwrap();
        let (mut engine, _) = started(replica, &set);
        let good = b"the honest block".to_vec();
        let hash = Hash::digest(&good);
        let pre_prepare = SignedPrePrepare::sign(&domain(), leader, 1, 0, hash);
        let proposal = |block: Vec<u8>| {
            Input::Message(ConsensusMessage::PrePrepare { pre_prepare, block }.encode())
        };
        let validations = |effects: &[Effect]| -> Vec<Vec<u8>> {
            effects
                .iter()
                .filter_map(|e| match e {
                    Effect::ValidateBlock { block, .. } => Some(block.clone()),
                    _ => None,
                })
                .collect()
        };
        // A faulty relay pairs the leader's signed proposal with other bytes first.
        let forged = b"forged bytes".to_vec();
        let asked = validations(&engine.handle(proposal(forged.clone())));
        assert_eq!(asked, vec![forged.clone()]);
        engine.handle(Input::BlockValidated {
            height: 1,
            block_hash: hash,
            valid: false,
        });
        // The same forged bytes are not checked again; the honest ones are, and the
        // replica prepares them.
        assert!(validations(&engine.handle(proposal(forged))).is_empty());
        let asked = validations(&engine.handle(proposal(good.clone())));
        assert_eq!(asked, vec![good]);
        let effects = engine.handle(Input::BlockValidated {
            height: 1,
            block_hash: hash,
            valid: true,
        });
        assert!(
            effects.iter().any(|e| matches!(e, Effect::Broadcast(_))),
            "no prepare after the honest bytes: {effects:?}"
        );
    }
}
