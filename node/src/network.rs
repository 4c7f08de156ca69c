//! Peer-to-peer networking over libp2p: TCP, Noise and Yamux.
//!
//! - **Admission.** Only peers whose keys the genesis lists (validators and allowed
//!   peers), plus validators added later by transaction, may connect: libp2p's allow
//!   list closes any other connection right after the Noise handshake proves the
//!   remote's key. A peer that served bad blocks is blocked for a while.
//! - **Transactions** travel by gossipsub, in batches. A node publishes its batches to
//!   every peer it is connected to; batches that come from a peer that is not a
//!   validator are relayed on, so they reach validators that peer is not connected to.
//!   Batches from validators are not relayed (see [`relay_verdict`]): validators are
//!   all connected to each other, as consensus needs anyway, so every other validator
//!   had the batch from its publisher already.
//! - **Consensus messages** travel on a direct, long-lived stream to each connected
//!   peer ([`crate::consensus_streams`]), not by gossipsub. Validators of a permissioned chain are all connected to
//!   each other, so gossip's relaying adds nothing but extra copies: with gossipsub a
//!   multi-megabyte proposal would reach each validator once from the leader and again
//!   from every other mesh member, and its duplicate filter would swallow the engine's
//!   deliberate resends (of a view change after a loss). A direct stream sends each
//!   message exactly once per peer, and a resend really goes out again.
//! - **Block sync** is a request-response protocol: a peer's tip, or a run of blocks
//!   with their certificates.
//! - **Limits**: connections in total and per peer, a maximum size for every message
//!   (checked before reading it), and redialing of the genesis validators with
//!   exponential backoff.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use borsh::{BorshDeserialize, BorshSerialize};
use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub,
    identity, noise, request_response, tcp, yamux,
};
use stele_consensus::{CommitCertificate, Hash, PublicKey, SigningKey};
use stele_ledger::{Block, Store};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::codec::BorshCodec;
use crate::consensus_streams;
use crate::metrics::Metrics;

/// Most blocks served in one sync response.
pub const SYNC_BLOCKS_MAX: u32 = 64;
/// Most bytes of blocks served in one sync response (at least one block is sent).
const SYNC_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// How long a peer that served bad data stays blocked.
const BAN_DURATION: Duration = Duration::from_secs(60);
const REDIAL_MIN: Duration = Duration::from_millis(250);
const REDIAL_MAX: Duration = Duration::from_secs(30);

/// A block-sync request.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
pub enum SyncRequest {
    /// The peer's committed tip.
    Status,
    /// Committed blocks from `from`, at most `max`.
    Blocks {
        /// First height.
        from: u64,
        /// Most blocks wanted.
        max: u32,
    },
}

/// A block-sync response.
#[derive(Clone, Debug, BorshSerialize, BorshDeserialize)]
pub enum SyncResponse {
    /// The peer's committed tip.
    Status {
        /// Its height.
        height: u64,
        /// Its block hash.
        block_hash: Hash,
    },
    /// Blocks with their certificates, consecutive from the height asked for.
    Blocks(Vec<(Block, CommitCertificate)>),
    /// The peer could not answer.
    Error(String),
}

/// What the node asks of the network task.
#[derive(Debug)]
pub enum NetCommand {
    /// Send an encoded consensus message to every connected peer.
    Broadcast(Vec<u8>),
    /// Gossip a batch of encoded transactions.
    GossipTxs(Vec<Vec<u8>>),
    /// Ask `peer` for sync data; the answer comes back as [`NetEvent::Sync`].
    Sync {
        /// The peer.
        peer: PeerId,
        /// The request.
        request: SyncRequest,
    },
    /// Ask every connected peer for its tip.
    PollStatus,
    /// Disconnect `peer` and refuse it for a while.
    Ban {
        /// The peer.
        peer: PeerId,
        /// Why, for the log.
        reason: String,
    },
}

/// What the network task reports to the consensus driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A consensus message from `peer`.
    Consensus {
        /// Sender.
        peer: PeerId,
        /// Encoded message.
        bytes: Vec<u8>,
        /// Its bytes of the inbound queue's budget, freed when this is dropped.
        queued: crate::consensus_streams::QueuedBytes,
    },
    /// An answer to [`NetCommand::Sync`] or [`NetCommand::PollStatus`].
    Sync {
        /// The peer.
        peer: PeerId,
        /// The answer, or why there is none.
        response: Result<SyncResponse, String>,
    },
    /// A peer connected.
    Connected(PeerId),
}

/// A connected peer, for the status page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerInfo {
    /// libp2p peer id.
    pub peer_id: String,
    /// Its key, hex.
    pub key: Option<String>,
    /// Its name in the genesis, if listed.
    pub name: Option<String>,
    /// Remote address.
    pub address: String,
}

/// Settings of the network task.
pub struct NetworkConfig {
    /// Our key (the libp2p identity is derived from it).
    pub key: SigningKey,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Most connections.
    pub max_peers: u32,
    /// Keys allowed to connect, with a name.
    pub allowed: Vec<(PublicKey, String)>,
    /// Keys of the validators in force at start, admitted like `allowed` (later sets
    /// come by [`Network::validators`]).
    /// Transaction batches that arrive from one of them are not relayed.
    pub validators: Vec<PublicKey>,
    /// Peers to keep dialing.
    pub dial: Vec<(PublicKey, SocketAddr)>,
    /// Topic prefix (the genesis hash), so two chains never share a topic.
    pub genesis_hash: Hash,
    /// Largest consensus message.
    pub max_consensus_bytes: usize,
    /// Largest transaction batch.
    pub max_gossip_bytes: usize,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    allowed: allow_block_list::Behaviour<allow_block_list::AllowedPeers>,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: connection_limits::Behaviour,
    gossip: gossipsub::Behaviour,
    streams: libp2p_stream::Behaviour,
    sync: request_response::Behaviour<BorshCodec<SyncRequest, SyncResponse>>,
}

/// The libp2p peer id of a Stele key.
pub fn peer_id(key: &PublicKey) -> Result<PeerId, String> {
    let public = identity::ed25519::PublicKey::try_from_bytes(key.as_bytes())
        .map_err(|e| format!("key {key} is not usable for libp2p: {e}"))?;
    Ok(identity::PublicKey::from(public).to_peer_id())
}

/// Whether a received transaction batch goes on to our gossip mesh.
///
/// Validators are all connected to each other, and each publishes its batches to every
/// connected peer at once, so a batch that came from a validator has already reached
/// the others: relaying it sends each of them a second copy, which costs the sender
/// Noise encryption and the receiver decryption, decoding and hashing before gossip's
/// duplicate filter drops it (with four validators, about two extra copies for the
/// three needed). A batch from a peer that is not a validator (a full node taking
/// submissions) is relayed, since that peer may reach only some validators and never
/// proposes a block itself: whether or not our own intake had room for it. A batch
/// that does not decode is never relayed.
///
/// The cost: if two validators are not connected (a dropped link not yet redialed),
/// neither gets the other's batches until they are, and each proposes only blocks
/// without them; the validators that are connected to both still include them.
/// Consensus messages are not relayed either, so such a pair is already short of
/// each other's votes.
fn relay_verdict(decoded: bool, from_validator: bool) -> gossipsub::MessageAcceptance {
    if decoded && !from_validator {
        gossipsub::MessageAcceptance::Accept
    } else {
        gossipsub::MessageAcceptance::Ignore
    }
}

fn multiaddr(address: SocketAddr) -> Multiaddr {
    Multiaddr::from(address.ip()).with(Protocol::Tcp(address.port()))
}

struct DialTarget {
    peer: PeerId,
    address: Multiaddr,
    next_attempt: Instant,
    backoff: Duration,
}

/// Handle to the running network task.
pub struct Network {
    /// Commands in.
    pub commands: mpsc::Sender<NetCommand>,
    /// Connected peers.
    pub peers: watch::Receiver<Vec<PeerInfo>>,
    /// Our peer id.
    pub local_peer_id: PeerId,
    /// The validator set in force (after a change by transaction, or at start): its
    /// keys are admitted too, and treated as the validators. A watch, not a command,
    /// so a busy command queue cannot drop a change, and only the latest set counts.
    pub validators: watch::Sender<Vec<PublicKey>>,
}

/// Starts the network task. Consensus messages and sync answers go to `events`;
/// transaction batches to `txs`.
pub fn spawn(
    config: NetworkConfig,
    store: Arc<Store>,
    events: mpsc::Sender<NetEvent>,
    txs: mpsc::Sender<Vec<Vec<u8>>>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Network> {
    let mut seed = *config.key.seed();
    let keypair = identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|e| anyhow::anyhow!("node key is not usable for libp2p: {e}"))?;
    let local_peer_id = keypair.public().to_peer_id();
    // Version 2: batches travel unsigned (below). A node of version 1 would refuse
    // them, and its signed ones here; a topic of its own keeps the two apart.
    let topic = gossipsub::IdentTopic::new(format!(
        "/stele/{}/txs/2",
        &config.genesis_hash.to_hex()[..16]
    ));
    // A batch is published to every connected peer at once (flood publishing), and
    // validators are all connected to each other, so relaying through a wide mesh only
    // sends each batch again: with the default degree of 6, every validator of four
    // received each batch three times. Batches from validators are not relayed at all
    // (`relay_verdict`); for those from other peers, a degree of one keeps a relay path
    // (and gossip's IHAVE announcements) towards validators they are not connected to.
    //
    // Batches are not signed by their publisher: every transaction in one carries its
    // own signature, which every receiver checks, and each hop is a Noise connection
    // from a peer on the allow list. Signing cost the publisher an ed25519 signature
    // and every receiver a lone (unbatched) verification per batch, some 2% of the
    // machine's CPU under load. Without an author or sequence number, a batch is known
    // by the hash of its bytes, which also makes resending the same batch a no-op.
    let gossip_config = gossipsub::ConfigBuilder::default()
        .message_id_fn(|message: &gossipsub::Message| {
            gossipsub::MessageId::new(Hash::tagged(b"stele/gossip-id", &[&message.data]).as_bytes())
        })
        .flood_publish(true)
        // Each batch waits for our verdict before it is relayed (see the handler).
        .validate_messages()
        .mesh_n(1)
        .mesh_n_low(1)
        .mesh_n_high(2)
        .mesh_outbound_min(0)
        .max_transmit_size(config.max_gossip_bytes)
        .heartbeat_interval(Duration::from_millis(500))
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .build()
        .map_err(|e| anyhow::anyhow!("gossipsub configuration: {e}"))?;
    let mut gossip =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
            .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;
    gossip.subscribe(&topic)?;

    let mut allowed = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
    let mut names: HashMap<PeerId, (PublicKey, String)> = HashMap::new();
    for (key, name) in &config.allowed {
        let peer = peer_id(key).map_err(anyhow::Error::msg)?;
        allowed.allow_peer(peer);
        names.insert(peer, (*key, name.clone()));
    }
    for key in &config.validators {
        peer_id(key).map_err(|e| anyhow::anyhow!("validator key {key}: {e}"))?;
    }
    let limits = connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(config.max_peers))
            .with_max_established_per_peer(Some(2))
            .with_max_pending_incoming(Some(config.max_peers)),
    );
    let streams = libp2p_stream::Behaviour::new();
    let mut control = streams.new_control();
    let incoming = control
        .accept(consensus_streams::PROTOCOL)
        .map_err(|e| anyhow::anyhow!("consensus streams: {e}"))?;
    tokio::spawn(consensus_streams::accept_loop(
        incoming,
        events.clone(),
        config.max_consensus_bytes,
    ));
    let sync = request_response::Behaviour::with_codec(
        BorshCodec::new(
            1024,
            SYNC_RESPONSE_BYTES + config.max_consensus_bytes + 1024,
        ),
        [(
            StreamProtocol::new("/stele/sync/1"),
            request_response::ProtocolSupport::Full,
        )],
        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
    );
    let behaviour = Behaviour {
        allowed,
        blocked: allow_block_list::Behaviour::default(),
        limits,
        gossip,
        streams,
        sync,
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| behaviour)?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    swarm
        .listen_on(multiaddr(config.listen))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;

    let dial: Vec<DialTarget> = config
        .dial
        .iter()
        .filter_map(|(key, address)| {
            let peer = peer_id(key).ok()?;
            (peer != local_peer_id).then(|| DialTarget {
                peer,
                address: multiaddr(*address).with(Protocol::P2p(peer)),
                next_attempt: Instant::now(),
                backoff: REDIAL_MIN,
            })
        })
        .collect();
    let (commands_tx, commands_rx) = mpsc::channel(4096);
    let (peers_tx, peers_rx) = watch::channel(Vec::new());
    let mut task = NetworkTask {
        swarm,
        topic,
        names,
        validators: HashSet::new(),
        dial,
        connected: HashMap::new(),
        banned: Vec::new(),
        store,
        events,
        txs,
        peers: peers_tx,
        metrics,
        pending_status: HashSet::new(),
        control,
        outboxes: HashMap::new(),
    };
    // Before the task polls the swarm, so no connection is judged without them.
    task.set_validators(config.validators.clone());
    let (validators_tx, validators_rx) = watch::channel(config.validators);
    tokio::spawn(task.run(commands_rx, validators_rx));
    Ok(Network {
        commands: commands_tx,
        peers: peers_rx,
        local_peer_id,
        validators: validators_tx,
    })
}

struct NetworkTask {
    swarm: Swarm<Behaviour>,
    topic: gossipsub::IdentTopic,
    names: HashMap<PeerId, (PublicKey, String)>,
    /// Validators' peer ids: batches from them are not relayed.
    validators: HashSet<PeerId>,
    dial: Vec<DialTarget>,
    /// Connected peers and one of their addresses.
    connected: HashMap<PeerId, (usize, Multiaddr)>,
    banned: Vec<(PeerId, Instant)>,
    store: Arc<Store>,
    events: mpsc::Sender<NetEvent>,
    txs: mpsc::Sender<Vec<Vec<u8>>>,
    peers: watch::Sender<Vec<PeerInfo>>,
    metrics: Arc<Metrics>,
    pending_status: HashSet<request_response::OutboundRequestId>,
    /// Opens consensus streams.
    control: libp2p_stream::Control,
    /// The consensus writer of each connected peer.
    outboxes: HashMap<PeerId, mpsc::Sender<consensus_streams::Outgoing>>,
}

type SyncChannel = request_response::ResponseChannel<SyncResponse>;

impl NetworkTask {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<NetCommand>,
        mut validators: watch::Receiver<Vec<PublicKey>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let (answers_tx, mut answers) = mpsc::channel::<(SyncChannel, SyncResponse)>(64);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event, &answers_tx),
                command = commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                Some((channel, response)) = answers.recv() => {
                    // The requester may have gone; nothing to do then.
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, response);
                }
                Ok(()) = validators.changed() => {
                    let keys = validators.borrow_and_update().clone();
                    self.set_validators(keys);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        debug!("network task stopped");
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let mut unbanned = Vec::new();
        self.banned.retain(|(peer, until)| {
            let keep = *until > now;
            if !keep {
                unbanned.push(*peer);
            }
            keep
        });
        for peer in unbanned {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        for i in 0..self.dial.len() {
            let target = &self.dial[i];
            if self.connected.contains_key(&target.peer)
                || target.next_attempt > now
                || self.banned.iter().any(|(p, _)| *p == target.peer)
            {
                continue;
            }
            let address = target.address.clone();
            if let Err(e) = self.swarm.dial(address.clone()) {
                debug!(%address, "dial failed: {e}");
            }
            let target = &mut self.dial[i];
            target.next_attempt = now + target.backoff;
            target.backoff = (target.backoff * 2).min(REDIAL_MAX);
        }
    }

    fn publish_peers(&mut self) {
        let peers = self
            .connected
            .iter()
            .map(|(peer, (_, address))| {
                let named = self.names.get(peer);
                PeerInfo {
                    peer_id: peer.to_string(),
                    key: named.map(|(k, _)| k.to_hex()),
                    name: named.map(|(_, n)| n.clone()),
                    address: address.to_string(),
                }
            })
            .collect();
        self.metrics.peers.set(self.connected.len() as i64);
        self.peers.send_replace(peers);
    }

    fn on_command(&mut self, command: NetCommand) {
        match command {
            NetCommand::Broadcast(bytes) => {
                let message = Arc::new(bytes);
                for peer in self.connected.keys() {
                    let outbox = self.outboxes.entry(*peer).or_insert_with(|| {
                        consensus_streams::spawn_writer(self.control.clone(), *peer)
                    });
                    if outbox.try_send(Arc::clone(&message)).is_err() {
                        debug!(%peer, "consensus outbox full: message dropped");
                    }
                }
            }
            NetCommand::GossipTxs(batch) => {
                let bytes = borsh::to_vec(&batch).expect("borsh encoding to a Vec never fails");
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossip
                    .publish(self.topic.clone(), bytes)
                {
                    // No peers yet, or a duplicate: the transactions still wait in our
                    // pool and reach a block through us.
                    debug!("transaction gossip not sent: {e}");
                }
            }
            NetCommand::Sync { peer, request } => {
                if !self.connected.contains_key(&peer) {
                    let _ = self.events.try_send(NetEvent::Sync {
                        peer,
                        response: Err("peer not connected".into()),
                    });
                    return;
                }
                self.swarm.behaviour_mut().sync.send_request(&peer, request);
            }
            NetCommand::PollStatus => {
                let peers: Vec<PeerId> = self.connected.keys().copied().collect();
                for peer in peers {
                    let id = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_request(&peer, SyncRequest::Status);
                    self.pending_status.insert(id);
                }
            }
            NetCommand::Ban { peer, reason } => {
                warn!(%peer, "blocking peer for {}s: {reason}", BAN_DURATION.as_secs());
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.banned.push((peer, Instant::now() + BAN_DURATION));
            }
        }
    }

    /// Takes `keys` as the validator set in force: a validator that left it is relayed
    /// for like any other peer (it stays on the allow list).
    fn set_validators(&mut self, keys: Vec<PublicKey>) {
        self.validators.clear();
        for key in keys {
            if let Ok(peer) = peer_id(&key) {
                self.swarm.behaviour_mut().allowed.allow_peer(peer);
                self.validators.insert(peer);
                self.names
                    .entry(peer)
                    .or_insert((key, format!("validator {}", &key.to_hex()[..8])));
            }
        }
    }

    fn on_swarm_event(
        &mut self,
        event: SwarmEvent<BehaviourEvent>,
        answers: &mpsc::Sender<(SyncChannel, SyncResponse)>,
    ) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => info!(%address, "p2p listening"),
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let address = endpoint.get_remote_address().clone();
                let entry = self.connected.entry(peer_id).or_insert((0, address));
                entry.0 += 1;
                if entry.0 == 1 {
                    let name = self.names.get(&peer_id).map(|(_, n)| n.as_str());
                    info!(peer = %peer_id, name = name.unwrap_or("?"), "peer connected");
                    let _ = self.events.try_send(NetEvent::Connected(peer_id));
                }
                if let Some(target) = self.dial.iter_mut().find(|t| t.peer == peer_id) {
                    target.backoff = REDIAL_MIN;
                }
                self.publish_peers();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if num_established == 0 {
                    self.connected.remove(&peer_id);
                    // Its writer ends once it has tried what was queued.
                    self.outboxes.remove(&peer_id);
                    info!(peer = %peer_id, "peer disconnected");
                    self.publish_peers();
                } else if let Some(entry) = self.connected.get_mut(&peer_id) {
                    entry.0 = num_established as usize;
                }
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                debug!("incoming connection refused: {error}");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                debug!(?peer_id, "dial failed: {error}");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                let decoded = match borsh::from_slice::<Vec<Vec<u8>>>(&message.data) {
                    Ok(batch) => {
                        // Full intake queue: drop the batch here. A validator's
                        // transactions stay in its pool and reach a block through it;
                        // another peer's are still relayed (below), since that peer
                        // proposes no blocks.
                        let len = batch.len() as u64;
                        if self.txs.try_send(batch).is_err() {
                            self.metrics.gossip_dropped_txs.inc_by(len);
                        }
                        true
                    }
                    Err(e) => {
                        debug!(peer = %propagation_source, "malformed transaction batch: {e}");
                        false
                    }
                };
                let acceptance =
                    relay_verdict(decoded, self.validators.contains(&propagation_source));
                self.swarm
                    .behaviour_mut()
                    .gossip
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(event)) => match event {
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                } => {
                    let store = self.store.clone();
                    let answers = answers.clone();
                    tokio::task::spawn_blocking(move || {
                        let response = serve_sync(&store, request);
                        let _ = answers.blocking_send((channel, response));
                    });
                    debug!(%peer, "sync request");
                }
                request_response::Event::Message {
                    peer,
                    message:
                        request_response::Message::Response {
                            response,
                            request_id,
                        },
                    ..
                } => {
                    self.pending_status.remove(&request_id);
                    let _ = self.events.try_send(NetEvent::Sync {
                        peer,
                        response: Ok(response),
                    });
                }
                request_response::Event::OutboundFailure {
                    peer,
                    error,
                    request_id,
                    ..
                } if !self.pending_status.remove(&request_id) => {
                    let _ = self.events.try_send(NetEvent::Sync {
                        peer,
                        response: Err(error.to_string()),
                    });
                }
                _ => {}
            },
            _ => {}
        }
    }
}

/// Answers a sync request from the store.
pub fn serve_sync(store: &Store, request: SyncRequest) -> SyncResponse {
    match request {
        SyncRequest::Status => {
            let tip = store.tip();
            SyncResponse::Status {
                height: tip.height,
                block_hash: tip.block_hash,
            }
        }
        SyncRequest::Blocks { from, max } => {
            let mut blocks = Vec::new();
            let mut bytes = 0usize;
            let tip = store.tip().height;
            let mut height = from.max(1);
            while height <= tip && blocks.len() < max.min(SYNC_BLOCKS_MAX) as usize {
                let (block, certificate) = match (store.block(height), store.certificate(height)) {
                    (Ok(Some(b)), Ok(Some(c))) => (b, c),
                    (Err(e), _) | (_, Err(e)) => return SyncResponse::Error(e.to_string()),
                    _ => return SyncResponse::Error(format!("height {height} is missing")),
                };
                let size = borsh::object_length(&block).unwrap_or(0);
                if !blocks.is_empty() && bytes + size > SYNC_RESPONSE_BYTES {
                    break;
                }
                bytes += size;
                blocks.push((block, certificate));
                height += 1;
            }
            SyncResponse::Blocks(blocks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_decodable_batches_from_peers_that_are_not_validators_are_relayed() {
        use gossipsub::MessageAcceptance::{Accept, Ignore};
        assert!(matches!(relay_verdict(true, false), Accept));
        assert!(matches!(relay_verdict(true, true), Ignore));
        assert!(matches!(relay_verdict(false, false), Ignore));
        assert!(matches!(relay_verdict(false, true), Ignore));
    }
}
