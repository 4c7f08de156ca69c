//! A deterministic simulation of a validator network running the real engine.
//!
//! One thread, a simulated clock and a seeded random generator: the same seed gives
//! the same run, event for event (the trace digest checks it). Messages are real,
//! signed and encoded; the network loses, duplicates, delays (and so reorders) and
//! partitions them during a fault phase, then heals. Honest validators crash and
//! restart from their last persisted safety state, losing everything else. Faulty
//! validators misbehave as the scenario says. Checkers watch every effect.
#![allow(clippy::unwrap_used, dead_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use borsh::{BorshDeserialize, BorshSerialize};
use stele_consensus::{
    CommitCertificate, ConsensusMessage, Effect, Engine, EngineConfig, Hash, Hasher, Input,
    SafetyState, SignedPrePrepare, SigningDomain, SigningKey, Validator, ValidatorSet, Vote,
    VoteKind,
};

/// A small deterministic generator (SplitMix64): stable across library versions.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5eed_5eed_5eed_5eed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (bound > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// How a faulty validator misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Proposes two different blocks to the two halves of the network.
    EquivocatingLeader,
    /// Sends a second, conflicting vote after each vote.
    DoubleVoter,
    /// Sends nothing.
    Silent,
    /// Runs on two nodes at once (the Twins approach).
    Twin,
    /// Corrupts its messages or sends random bytes.
    Mutator,
    /// Replays old messages it has seen.
    Replayer,
}

pub const BEHAVIOURS: [Behaviour; 6] = [
    Behaviour::EquivocatingLeader,
    Behaviour::DoubleVoter,
    Behaviour::Silent,
    Behaviour::Twin,
    Behaviour::Mutator,
    Behaviour::Replayer,
];

/// What a run looks like.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub seed: u64,
    /// Distinct validator keys (power 1 each).
    pub validators: usize,
    /// Faulty keys and how they misbehave.
    pub faulty: Vec<(usize, Behaviour)>,
    /// Honest validators that crash (and restart) during the fault phase.
    pub crashes: usize,
    pub loss: f64,
    pub duplication: f64,
    pub delay_max_ms: u64,
    /// Partitions during the fault phase: (start, end, side of each node).
    pub partitions: Vec<(u64, u64, Vec<bool>)>,
    /// When faults stop (the network heals, crashed nodes are back).
    pub faults_end_ms: u64,
    /// Heights every honest node must decide after `faults_end_ms`.
    pub heights_after_faults: u64,
    /// Simulated time allowed for them.
    pub liveness_budget_ms: u64,
    /// Run the deliberately broken engine (negative control).
    pub broken_engine: bool,
    /// Honest validators' powers change from height to height.
    pub changing_sets: bool,
    /// During the fault phase, view-0 commit votes reach only node 0 and certificate
    /// announcements are lost: node 0 decides while the others have only prepared and
    /// must change view, the schedule of PBFT's view-change safety argument (used by the
    /// broken-engine control).
    pub isolate_decisions: bool,
}

impl Scenario {
    /// A random scenario for `seed` with `validators` keys and at most `f` faulty
    /// (crashed or Byzantine) at once.
    pub fn random(seed: u64, validators: usize) -> Scenario {
        let mut rng = Rng::new(seed);
        let f = (validators - 1) / 3;
        let faulty_count = rng.below(f as u64 + 1) as usize;
        let mut keys: Vec<usize> = (0..validators).collect();
        shuffle(&mut keys, &mut rng);
        let faulty: Vec<(usize, Behaviour)> = keys[..faulty_count]
            .iter()
            .map(|k| (*k, BEHAVIOURS[rng.below(BEHAVIOURS.len() as u64) as usize]))
            .collect();
        let crashes = rng.below((f - faulty_count) as u64 + 1) as usize;
        let faults_end_ms = 3_000 + rng.below(5_000);
        let nodes = validators + faulty.iter().filter(|(_, b)| *b == Behaviour::Twin).count();
        let mut partitions = Vec::new();
        if rng.chance(0.4) {
            let start = rng.below(faults_end_ms / 2);
            let end = (start + 300 + rng.below(2_500)).min(faults_end_ms);
            let sides = (0..nodes).map(|_| rng.chance(0.5)).collect();
            partitions.push((start, end, sides));
        }
        Scenario {
            seed,
            validators,
            faulty,
            crashes,
            loss: [0.0, 0.02, 0.1, 0.25][rng.below(4) as usize],
            duplication: [0.0, 0.05][rng.below(2) as usize],
            delay_max_ms: [5, 30, 120][rng.below(3) as usize],
            partitions,
            faults_end_ms,
            heights_after_faults: 20,
            liveness_budget_ms: 60_000,
            broken_engine: false,
            changing_sets: rng.chance(0.5),
            isolate_decisions: false,
        }
    }

    fn behaviour(&self, key: usize) -> Option<Behaviour> {
        self.faulty.iter().find(|(k, _)| *k == key).map(|(_, b)| *b)
    }
}

pub fn shuffle<T>(items: &mut [T], rng: &mut Rng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i as u64 + 1) as usize);
    }
}

/// The simulated application's block.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
struct SimBlock {
    height: u64,
    parent: Hash,
    proposer: u32,
    salt: u64,
}

fn message_kind(m: &ConsensusMessage) -> &'static str {
    match m {
        ConsensusMessage::PrePrepare { .. } => "pre-prepare",
        ConsensusMessage::Vote(v) if v.vote.kind == VoteKind::Prepare => "prepare",
        ConsensusMessage::Vote(_) => "commit",
        ConsensusMessage::ViewChange { .. } => "view-change",
        ConsensusMessage::NewView { .. } => "new-view",
        ConsensusMessage::Certificate(_) => "certificate",
    }
}

/// Whether [`Scenario::isolate_decisions`] drops this message on its way to `to`.
fn is_isolated(bytes: &[u8], to: usize) -> bool {
    match ConsensusMessage::decode(bytes, usize::MAX) {
        Ok(ConsensusMessage::Vote(v)) => {
            v.vote.kind == VoteKind::Commit && v.vote.view == 0 && to != 0
        }
        Ok(ConsensusMessage::Certificate(_)) => true,
        _ => false,
    }
}

fn block_hash(bytes: &[u8]) -> Hash {
    Hash::tagged(b"sim/block", &[bytes])
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub violations: Vec<String>,
    pub digest: Hash,
    /// Heights decided by the slowest honest node.
    pub min_height: u64,
    pub sim_time_ms: u64,
    pub evidence: usize,
    /// Where each node ended: for reading a failing seed.
    pub nodes: Vec<String>,
}

struct Node {
    key_index: usize,
    engine: Engine,
    /// Bumped on crash: events for an older epoch are dropped.
    epoch: u64,
    crashed: bool,
    persisted: SafetyState,
    /// Decided block hashes, height 1 first (the "store": survives crashes).
    chain: Vec<Hash>,
    certificates: Vec<CommitCertificate>,
    validated: HashSet<Hash>,
    seen: Vec<Vec<u8>>,
    /// A sync target the host could not reach yet (its peers had not decided it).
    pending_sync: Option<u64>,
}

enum EventKind {
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    Timeout {
        node: usize,
        epoch: u64,
        height: u64,
        view: u64,
        round: u64,
    },
    Host {
        node: usize,
        epoch: u64,
        input: Input,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Replay {
        node: usize,
    },
    /// The host compares its height with its peers' and syncs if it is behind.
    StatusCheck,
}

struct Sim {
    scenario: Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, EventKind>,
    nodes: Vec<Node>,
    keys: Vec<SigningKey>,
    sets: HashMap<u64, ValidatorSet>,
    domain: SigningDomain,
    honest_keys: BTreeSet<usize>,
    /// The block decided at each height (first honest decision).
    decided: BTreeMap<u64, (Hash, Vec<u8>, CommitCertificate)>,
    proposed: HashSet<Hash>,
    /// (validator key, height, view, kind) -> content digest of honest signatures.
    signed: HashMap<(usize, u64, u64, u8), Hash>,
    violations: Vec<String>,
    trace: Hasher,
    evidence: usize,
    heights_at_faults_end: Option<Vec<u64>>,
}

pub const SIM_TIMEOUT_BASE_MS: u64 = 200;
/// How often hosts compare heights with their peers.
pub const STATUS_INTERVAL_MS: u64 = 500;
pub const SIM_TIMEOUT_MAX_MS: u64 = 3_200;

pub fn run(scenario: Scenario) -> Outcome {
    let mut sim = Sim::new(scenario);
    sim.run();
    let min_height = sim
        .honest_nodes()
        .map(|i| sim.nodes[i].chain.len() as u64)
        .min()
        .unwrap_or(0);
    let nodes = sim
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "node {i} (key {}): chain {}, engine height {} view {} decided {}, crashed {}, safety view {}",
                n.key_index,
                n.chain.len(),
                n.engine.height(),
                n.engine.view(),
                n.engine.is_decided(),
                n.crashed,
                n.persisted.view
            )
        })
        .collect();
    Outcome {
        violations: sim.violations,
        digest: sim.trace.finish(),
        min_height,
        sim_time_ms: sim.now,
        evidence: sim.evidence,
        nodes,
    }
}

impl Sim {
    fn new(scenario: Scenario) -> Sim {
        let domain = SigningDomain::new("sim-chain").unwrap();
        let keys: Vec<SigningKey> = (0..scenario.validators)
            .map(|i| {
                SigningKey::from_seed(
                    *Hash::digest(format!("sim-validator-{i}").as_bytes()).as_bytes(),
                )
            })
            .collect();
        // Node i runs key i; twins add a second node for their key.
        let mut node_keys: Vec<usize> = (0..scenario.validators).collect();
        for (key, behaviour) in &scenario.faulty {
            if *behaviour == Behaviour::Twin {
                node_keys.push(*key);
            }
        }
        let honest_keys: BTreeSet<usize> = (0..scenario.validators)
            .filter(|k| scenario.behaviour(*k).is_none())
            .collect();
        let mut sim = Sim {
            rng: Rng::new(scenario.seed.wrapping_mul(31).wrapping_add(7)),
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            nodes: Vec::new(),
            keys,
            sets: HashMap::new(),
            domain,
            honest_keys,
            decided: BTreeMap::new(),
            proposed: HashSet::new(),
            signed: HashMap::new(),
            violations: Vec::new(),
            trace: Hasher::new(b"sim/trace"),
            evidence: 0,
            heights_at_faults_end: None,
            scenario,
        };
        for key_index in node_keys {
            let engine = sim.new_engine(key_index, SafetyState::default());
            sim.nodes.push(Node {
                key_index,
                engine,
                epoch: 0,
                crashed: false,
                persisted: SafetyState::default(),
                chain: Vec::new(),
                certificates: Vec::new(),
                validated: HashSet::new(),
                seen: Vec::new(),
                pending_sync: None,
            });
        }
        sim.plan_faults();
        sim
    }

    fn new_engine(&self, key_index: usize, safety: SafetyState) -> Engine {
        let mut config = EngineConfig::new(self.domain.clone());
        config.view_timeout_base_ms = SIM_TIMEOUT_BASE_MS;
        config.view_timeout_max_ms = SIM_TIMEOUT_MAX_MS;
        config.ignore_prepared_certificates = self.scenario.broken_engine;
        Engine::new(config, Some(self.keys[key_index].clone()), safety)
    }

    /// The validator set of `height`: power 1 each, or, with changing sets, powers 1 to
    /// 3 for honest validators varying by height (faulty ones keep 1, so their share of
    /// the power never grows).
    fn set_for(&mut self, height: u64) -> ValidatorSet {
        if let Some(set) = self.sets.get(&height) {
            return set.clone();
        }
        let set = ValidatorSet::new(
            self.keys
                .iter()
                .enumerate()
                .map(|(i, k)| Validator {
                    key: k.public_key(),
                    power: if self.scenario.changing_sets && self.honest_keys.contains(&i) {
                        1 + (height + i as u64 * 7) % 3
                    } else {
                        1
                    },
                })
                .collect(),
        )
        .unwrap();
        self.sets.insert(height, set.clone());
        set
    }

    fn honest_nodes(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|i| self.honest_keys.contains(&self.nodes[*i].key_index))
    }

    fn schedule(&mut self, at: u64, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq)));
        self.events.insert(self.seq, kind);
    }

    fn plan_faults(&mut self) {
        let end = self.scenario.faults_end_ms;
        let mut honest: Vec<usize> = self.honest_nodes().collect();
        shuffle(&mut honest, &mut self.rng);
        for node in honest.into_iter().take(self.scenario.crashes) {
            let at = self.rng.below(end / 2);
            let back = at + 100 + self.rng.below(end / 2);
            self.schedule(at, EventKind::Crash { node });
            self.schedule(back.min(end), EventKind::Restart { node });
        }
        for node in 0..self.nodes.len() {
            if self.scenario.behaviour(self.nodes[node].key_index) == Some(Behaviour::Replayer) {
                self.schedule(100, EventKind::Replay { node });
            }
        }
        self.schedule(STATUS_INTERVAL_MS, EventKind::StatusCheck);
    }

    fn start_node(&mut self, node: usize) {
        let height = self.nodes[node].chain.len() as u64 + 1;
        let previous_certificate = self.nodes[node].certificates.last().cloned();
        let input = Input::StartHeight {
            height,
            validators: self.set_for(height),
            previous_certificate,
        };
        self.feed(node, input);
    }

    fn run(&mut self) {
        for node in 0..self.nodes.len() {
            self.start_node(node);
        }
        let deadline = self.scenario.faults_end_ms + self.scenario.liveness_budget_ms;
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > deadline {
                break;
            }
            if self.heights_at_faults_end.is_none() && at >= self.scenario.faults_end_ms {
                self.heights_at_faults_end =
                    Some(self.nodes.iter().map(|n| n.chain.len() as u64).collect());
            }
            self.now = at;
            let event = self.events.remove(&seq).expect("scheduled");
            self.dispatch(event);
            if self.violations.len() > 20 || self.liveness_met() {
                break;
            }
        }
        self.check_liveness();
    }

    fn liveness_met(&self) -> bool {
        let Some(start) = &self.heights_at_faults_end else {
            return false;
        };
        self.honest_nodes().all(|i| {
            self.nodes[i].chain.len() as u64 >= start[i] + self.scenario.heights_after_faults
        })
    }

    fn check_liveness(&mut self) {
        let start = self
            .heights_at_faults_end
            .clone()
            .unwrap_or_else(|| self.nodes.iter().map(|n| n.chain.len() as u64).collect());
        if self
            .scenario
            .faulty
            .iter()
            .any(|(_, b)| *b == Behaviour::Twin)
            && self.twins_exceed_budget()
        {
            return;
        }
        for i in self.honest_nodes().collect::<Vec<_>>() {
            let decided =
                self.nodes[i].chain.len() as u64 - start[i].min(self.nodes[i].chain.len() as u64);
            if decided < self.scenario.heights_after_faults {
                self.violations.push(format!(
                    "liveness: node {i} decided {decided} heights in the {} ms after faults stopped (from height {})",
                    self.scenario.liveness_budget_ms, start[i]
                ));
            }
        }
    }

    /// Twins beyond the fault budget (negative controls) void the liveness promise.
    fn twins_exceed_budget(&self) -> bool {
        self.scenario.faulty.len() > (self.scenario.validators - 1) / 3
    }

    fn dispatch(&mut self, event: EventKind) {
        match event {
            EventKind::Deliver { to, bytes } => {
                if self.nodes[to].crashed {
                    return;
                }
                if self.scenario.behaviour(self.nodes[to].key_index) == Some(Behaviour::Replayer)
                    && self.nodes[to].seen.len() < 500
                {
                    self.nodes[to].seen.push(bytes.clone());
                }
                self.feed(to, Input::Message(bytes));
            }
            EventKind::Timeout {
                node,
                epoch,
                height,
                view,
                round,
            } => {
                if self.nodes[node].epoch == epoch && !self.nodes[node].crashed {
                    self.feed(
                        node,
                        Input::Timeout {
                            height,
                            view,
                            round,
                        },
                    );
                }
            }
            EventKind::Host { node, epoch, input } => {
                if self.nodes[node].epoch == epoch && !self.nodes[node].crashed {
                    self.feed(node, input);
                }
            }
            EventKind::Crash { node } => {
                self.trace_line(&format!("crash {node}"));
                let n = &mut self.nodes[node];
                n.crashed = true;
                n.epoch += 1;
            }
            EventKind::Restart { node } => {
                self.trace_line(&format!("restart {node}"));
                // Everything but the store and the persisted safety state is lost.
                let safety = self.nodes[node].persisted.clone();
                let engine = self.new_engine(self.nodes[node].key_index, safety);
                let n = &mut self.nodes[node];
                n.engine = engine;
                n.crashed = false;
                n.validated.clear();
                self.start_node(node);
            }
            EventKind::StatusCheck => {
                // Peers announce their heights; a node two or more heights behind the
                // decided chain fetches the blocks (the engine catches up by itself on
                // a certificate of the next height, when it can check it).
                let top = self.decided.keys().next_back().copied().unwrap_or(0);
                for node in 0..self.nodes.len() {
                    if self.nodes[node].crashed || self.is_cut_off(node) {
                        continue;
                    }
                    if (self.nodes[node].chain.len() as u64) + 2 <= top {
                        self.sync_up_to(node, top);
                    } else if let Some(target) = self.nodes[node].pending_sync {
                        // Retry a sync its peers could not serve earlier.
                        self.sync_up_to(node, target);
                    }
                }
                if self.now < self.scenario.faults_end_ms + self.scenario.liveness_budget_ms {
                    self.schedule(self.now + STATUS_INTERVAL_MS, EventKind::StatusCheck);
                }
            }
            EventKind::Replay { node } => {
                if !self.nodes[node].seen.is_empty() {
                    let i = self.rng.below(self.nodes[node].seen.len() as u64) as usize;
                    let bytes = self.nodes[node].seen[i].clone();
                    self.broadcast_raw(node, bytes, None);
                }
                if self.now < self.scenario.faults_end_ms + self.scenario.liveness_budget_ms {
                    self.schedule(self.now + 50, EventKind::Replay { node });
                }
            }
        }
    }

    fn trace_line(&mut self, line: &str) {
        self.trace.update(&self.now.to_le_bytes());
        self.trace.update(line.as_bytes());
    }

    fn feed(&mut self, node: usize, input: Input) {
        let debug = std::env::var("SIM_DEBUG_NODE")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            == Some(node);
        if debug {
            let summary = match &input {
                Input::Message(bytes) => match ConsensusMessage::decode(bytes, usize::MAX) {
                    Ok(m) => format!("msg {} h{} v{}", message_kind(&m), m.height(), m.view()),
                    Err(_) => "garbage".into(),
                },
                other => format!("{other:?}").chars().take(120).collect(),
            };
            eprintln!(
                "[{} ms] node {node} h{} v{} <- {summary}",
                self.now,
                self.nodes[node].engine.height(),
                self.nodes[node].engine.view()
            );
        }
        let effects = self.nodes[node].engine.handle(input);
        if debug {
            for e in &effects {
                let text = match e {
                    Effect::Broadcast(b) => match ConsensusMessage::decode(b, usize::MAX) {
                        Ok(m) => format!(
                            "broadcast {} h{} v{}",
                            message_kind(&m),
                            m.height(),
                            m.view()
                        ),
                        Err(_) => "broadcast ?".into(),
                    },
                    other => format!("{other:?}").chars().take(140).collect(),
                };
                eprintln!("        -> {text}");
            }
        }
        for effect in effects {
            self.apply(node, effect);
        }
    }

    fn apply(&mut self, node: usize, effect: Effect) {
        let epoch = self.nodes[node].epoch;
        let host_delay = 1 + self.rng.below(3);
        match effect {
            Effect::PersistSafety(state) => self.nodes[node].persisted = *state,
            Effect::Broadcast(bytes) => self.on_broadcast(node, bytes),
            Effect::ScheduleTimeout {
                height,
                view,
                round,
                after_ms,
            } => {
                self.schedule(
                    self.now + after_ms,
                    EventKind::Timeout {
                        node,
                        epoch,
                        height,
                        view,
                        round,
                    },
                );
            }
            Effect::ProposeBlock { height, view } => {
                let block = SimBlock {
                    height,
                    parent: self.nodes[node].chain.last().copied().unwrap_or(Hash::ZERO),
                    proposer: self.nodes[node].key_index as u32,
                    salt: self.rng.next_u64(),
                };
                let bytes = borsh::to_vec(&block).unwrap();
                let hash = block_hash(&bytes);
                self.proposed.insert(hash);
                self.nodes[node].validated.insert(hash);
                let input = Input::Proposal {
                    height,
                    view,
                    block_hash: hash,
                    block: bytes,
                };
                self.schedule(
                    self.now + host_delay,
                    EventKind::Host { node, epoch, input },
                );
            }
            Effect::ValidateBlock {
                height,
                block_hash: hash,
                block,
            } => {
                let valid = self.validate(node, height, hash, &block);
                if valid {
                    self.nodes[node].validated.insert(hash);
                }
                let input = Input::BlockValidated {
                    height,
                    block_hash: hash,
                    valid,
                };
                self.schedule(
                    self.now + host_delay,
                    EventKind::Host { node, epoch, input },
                );
            }
            Effect::Decide {
                height,
                view,
                block_hash: hash,
                block,
                certificate,
            } => self.on_decide(node, height, view, hash, block, certificate),
            Effect::SyncTo {
                height,
                certificate,
            } => self.on_sync(node, height, certificate),
            Effect::Misbehaviour(evidence) => {
                self.evidence += 1;
                let accused = self
                    .keys
                    .iter()
                    .position(|k| k.public_key() == evidence.validator());
                if let Some(k) = accused
                    && self.honest_keys.contains(&k)
                {
                    self.violations.push(format!(
                        "node {node} reported honest validator {k}: {evidence:?}"
                    ));
                }
            }
            Effect::InvalidMessage { .. } => {}
        }
    }

    fn validate(&self, node: usize, height: u64, hash: Hash, block: &[u8]) -> bool {
        if block_hash(block) != hash {
            return false;
        }
        let Ok(decoded) = borsh::from_slice::<SimBlock>(block) else {
            return false;
        };
        let parent = self.nodes[node].chain.last().copied().unwrap_or(Hash::ZERO);
        decoded.height == height
            && decoded.parent == parent
            && self.nodes[node].chain.len() as u64 + 1 == height
    }

    fn on_decide(
        &mut self,
        node: usize,
        height: u64,
        view: u64,
        hash: Hash,
        block: Vec<u8>,
        certificate: CommitCertificate,
    ) {
        self.trace_line(&format!("decide {node} {height} {view} {hash}"));
        let honest = self.honest_keys.contains(&self.nodes[node].key_index);
        let set = self.set_for(height);
        if let Err(e) = certificate.verify(&self.domain, &set, height, &hash) {
            self.violations.push(format!(
                "node {node}: certificate at height {height} does not verify: {e}"
            ));
        }
        if honest {
            if !self.proposed.contains(&hash) {
                self.violations.push(format!(
                    "validity: node {node} decided an unproposed block at height {height}"
                ));
            }
            if !self.nodes[node].validated.contains(&hash) {
                self.violations.push(format!(
                    "validity: node {node} decided a block it did not validate at height {height}"
                ));
            }
            match self.decided.get(&height) {
                Some((first, _, _)) if *first != hash => self.violations.push(format!(
                    "agreement: node {node} decided {hash} at height {height}, another honest node decided {first}"
                )),
                Some(_) => {}
                None => {
                    self.decided.insert(height, (hash, block, certificate.clone()));
                }
            }
        }
        if self.nodes[node].chain.len() as u64 + 1 == height {
            self.nodes[node].chain.push(hash);
            self.nodes[node].certificates.push(certificate);
        }
        self.start_node(node);
    }

    /// Block sync: fetch the decided blocks up to `height` from the network's record,
    /// checking each certificate, then start the next height.
    fn on_sync(&mut self, node: usize, height: u64, certificate: CommitCertificate) {
        let set = self.set_for(height);
        if let Err(e) = certificate.verify(&self.domain, &set, height, &certificate.block_hash) {
            self.violations.push(format!(
                "node {node}: sync certificate does not verify: {e}"
            ));
            return;
        }
        self.nodes[node].pending_sync = Some(height);
        self.sync_up_to(node, height);
    }

    /// Block sync as the host does it: fetch decided blocks from peers, check each
    /// certificate against its height's set, commit, restart consensus above them.
    fn sync_up_to(&mut self, node: usize, height: u64) {
        let mut synced = false;
        while (self.nodes[node].chain.len() as u64) < height {
            let next = self.nodes[node].chain.len() as u64 + 1;
            let Some((hash, _, cert)) = self.decided.get(&next).cloned() else {
                break;
            };
            let set = self.set_for(next);
            if let Err(e) = cert.verify(&self.domain, &set, next, &hash) {
                self.violations.push(format!(
                    "node {node}: synced certificate of height {next} does not verify: {e}"
                ));
                return;
            }
            self.nodes[node].chain.push(hash);
            self.nodes[node].certificates.push(cert);
            synced = true;
        }
        if self.nodes[node]
            .pending_sync
            .is_some_and(|h| self.nodes[node].chain.len() as u64 >= h)
        {
            self.nodes[node].pending_sync = None;
        }
        if synced {
            self.trace_line(&format!("sync {node} {}", self.nodes[node].chain.len()));
            self.start_node(node);
        }
    }

    fn is_partitioned(&self, from: usize, to: usize) -> bool {
        self.scenario.partitions.iter().any(|(start, end, sides)| {
            self.now >= *start && self.now < *end && sides[from] != sides[to]
        })
    }

    /// Whether a partition separates `node` from every node that decided the top height
    /// (it then cannot fetch blocks either).
    fn is_cut_off(&self, node: usize) -> bool {
        (0..self.nodes.len()).all(|other| other == node || self.is_partitioned(node, other))
    }

    fn faults_active(&self) -> bool {
        self.now < self.scenario.faults_end_ms
    }

    fn on_broadcast(&mut self, node: usize, bytes: Vec<u8>) {
        let key_index = self.nodes[node].key_index;
        let behaviour = self.scenario.behaviour(key_index);
        if behaviour.is_none() {
            self.check_honest_message(node, &bytes);
        }
        match behaviour {
            None | Some(Behaviour::Twin) | Some(Behaviour::Replayer) => {
                self.broadcast_raw(node, bytes, None)
            }
            Some(Behaviour::Silent) => {}
            Some(Behaviour::Mutator) => {
                let mut mutated = bytes.clone();
                if self.rng.chance(0.5) && !mutated.is_empty() {
                    for _ in 0..1 + self.rng.below(4) {
                        let i = self.rng.below(mutated.len() as u64) as usize;
                        mutated[i] ^= 1 << self.rng.below(8);
                    }
                } else {
                    let len = self.rng.below(300) as usize;
                    mutated = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                }
                self.broadcast_raw(node, mutated, None);
                if self.rng.chance(0.5) {
                    self.broadcast_raw(node, bytes, None);
                }
            }
            Some(Behaviour::DoubleVoter) => {
                self.broadcast_raw(node, bytes.clone(), None);
                if let Ok(ConsensusMessage::Vote(vote)) =
                    ConsensusMessage::decode(&bytes, usize::MAX)
                {
                    let other = Vote {
                        block_hash: Hash::digest(&self.rng.next_u64().to_le_bytes()),
                        ..vote.vote
                    };
                    let conflicting = other.sign(&self.domain, &self.keys[key_index]);
                    self.broadcast_raw(node, ConsensusMessage::Vote(conflicting).encode(), None);
                }
            }
            Some(Behaviour::EquivocatingLeader) => {
                if let Ok(ConsensusMessage::PrePrepare { pre_prepare, block }) =
                    ConsensusMessage::decode(&bytes, usize::MAX)
                {
                    // A second block for the same height and view, to half of the nodes.
                    let mut other: SimBlock = borsh::from_slice(&block).unwrap();
                    other.salt = self.rng.next_u64();
                    let other_bytes = borsh::to_vec(&other).unwrap();
                    let other_hash = block_hash(&other_bytes);
                    self.proposed.insert(other_hash);
                    let second = SignedPrePrepare::sign(
                        &self.domain,
                        &self.keys[key_index],
                        pre_prepare.height,
                        pre_prepare.view,
                        other_hash,
                    );
                    let half: Vec<bool> = (0..self.nodes.len())
                        .map(|_| self.rng.chance(0.5))
                        .collect();
                    self.broadcast_raw(node, bytes, Some((&half, true)));
                    let second = ConsensusMessage::PrePrepare {
                        pre_prepare: second,
                        block: other_bytes,
                    }
                    .encode();
                    self.broadcast_raw(node, second, Some((&half, false)));
                } else {
                    self.broadcast_raw(node, bytes, None);
                }
            }
        }
    }

    /// Sends to every other node (or to those on one side of `only`), through the
    /// network's faults.
    fn broadcast_raw(&mut self, from: usize, bytes: Vec<u8>, only: Option<(&[bool], bool)>) {
        for to in 0..self.nodes.len() {
            if to == from || only.is_some_and(|(sides, side)| sides[to] != side) {
                continue;
            }
            let faults = self.faults_active();
            if faults && (self.rng.chance(self.scenario.loss) || self.is_partitioned(from, to)) {
                continue;
            }
            if faults && self.scenario.isolate_decisions && is_isolated(&bytes, to) {
                continue;
            }
            let copies = if faults && self.rng.chance(self.scenario.duplication) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if faults {
                    1 + self.rng.below(self.scenario.delay_max_ms)
                } else {
                    1 + self.rng.below(5)
                };
                self.schedule(
                    self.now + delay,
                    EventKind::Deliver {
                        to,
                        bytes: bytes.clone(),
                    },
                );
            }
        }
    }

    /// No honest validator signs two conflicting messages, and each signed message
    /// leaves only after the safety state that records it was persisted.
    fn check_honest_message(&mut self, node: usize, bytes: &[u8]) {
        let key = self.nodes[node].key_index;
        let Ok(message) = ConsensusMessage::decode(bytes, usize::MAX) else {
            self.violations
                .push(format!("node {node} sent undecodable bytes"));
            return;
        };
        let persisted = &self.nodes[node].persisted;
        let (slot, content, recorded) = match &message {
            ConsensusMessage::PrePrepare { pre_prepare, .. } => (
                (key, pre_prepare.height, pre_prepare.view, 0u8),
                pre_prepare.block_hash,
                persisted.height == pre_prepare.height
                    && persisted.view == pre_prepare.view
                    && persisted.pre_prepare.map(|p| p.0) == Some(pre_prepare.block_hash),
            ),
            ConsensusMessage::NewView { new_view, .. } => (
                (key, new_view.height, new_view.view, 0u8),
                new_view.pre_prepare.block_hash,
                persisted.pre_prepare.map(|p| p.0) == Some(new_view.pre_prepare.block_hash),
            ),
            ConsensusMessage::Vote(vote) => {
                let record = match vote.vote.kind {
                    VoteKind::Prepare => persisted.prepare,
                    VoteKind::Commit => persisted.commit,
                };
                (
                    (
                        key,
                        vote.vote.height,
                        vote.vote.view,
                        1 + vote.vote.kind as u8,
                    ),
                    vote.vote.block_hash,
                    persisted.height == vote.vote.height
                        && persisted.view == vote.vote.view
                        && record.map(|r| r.0) == Some(vote.vote.block_hash),
                )
            }
            ConsensusMessage::ViewChange { view_change, .. } => (
                (key, view_change.body.height, view_change.body.new_view, 3u8),
                Hash::digest(&borsh::to_vec(&view_change.body).unwrap()),
                persisted.view_change.as_ref() == Some(view_change),
            ),
            ConsensusMessage::Certificate(_) => return,
        };
        if !recorded {
            self.violations.push(format!(
                "node {node} sent {slot:?} before persisting the safety state that records it"
            ));
        }
        match self.signed.get(&slot) {
            Some(previous) if *previous != content => self.violations.push(format!(
                "honest validator {key} signed two different messages for {slot:?}"
            )),
            Some(_) => {}
            None => {
                self.signed.insert(slot, content);
            }
        }
    }
}
