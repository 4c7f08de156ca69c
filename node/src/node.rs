//! Wiring: opens the store, starts the network, the transaction gossip tasks, the
//! consensus driver and the API, and stops them all on SIGINT or SIGTERM.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use stele_consensus::{Engine, EngineConfig, PublicKey};
use stele_genesis::NodeConfig;
use stele_ledger::exec::ChainContext;
use stele_ledger::{Genesis, KeyCache, Store, StoreOptions};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::driver::{Driver, DriverParts, load_safety};
use crate::intake;
use crate::mempool::{Mempool, MempoolLimits};
use crate::metrics::Metrics;
use crate::network::{self, NetCommand, NetworkConfig};

/// Largest gossiped transaction batch, bytes.
const GOSSIP_BATCH_BYTES: usize = 512 * 1024;
/// Signer keys kept decompressed (some 250 bytes each with the cache's own: 16 MB at most).
const KEY_CACHE_ENTRIES: usize = 65_536;

/// Longest a transaction waits to be gossiped.
const GOSSIP_DELAY: Duration = Duration::from_millis(10);

/// A loaded home directory.
pub struct Home {
    /// Its path.
    pub dir: PathBuf,
    /// `config.toml`.
    pub config: NodeConfig,
    /// The genesis.
    pub genesis: Genesis,
    /// The node key.
    pub key: stele_consensus::SigningKey,
}

impl Home {
    /// Loads and checks `config.toml`, the genesis and the key file.
    pub fn load(dir: &Path) -> anyhow::Result<Home> {
        let config_path = dir.join("config.toml");
        if !config_path.exists() {
            anyhow::bail!(
                "{} has no config.toml: create the home with `stele-genesis testnet` or `stele-node init`",
                dir.display()
            );
        }
        let config = NodeConfig::load(&config_path)?;
        let genesis = stele_genesis::load_genesis(&dir.join(&config.node.genesis_file))?;
        let key = stele_genesis::read_key_file(&dir.join(&config.node.key_file))?;
        Ok(Home {
            dir: dir.to_owned(),
            config,
            genesis,
            key,
        })
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn run(home: Home) -> anyhow::Result<()> {
    let Home {
        dir,
        config,
        genesis,
        key,
    } = home;
    let domain = genesis.signing_domain()?;
    let data = dir.join(&config.storage.data_dir);
    let store_options = StoreOptions {
        state_versions_kept: config.storage.state_versions_kept,
        sync_writes: config.storage.sync_writes,
        ..StoreOptions::default()
    };
    let store = {
        let path = data.clone();
        let genesis = genesis.clone();
        tokio::task::spawn_blocking(move || Store::open(&path, &genesis, store_options))
            .await?
            .with_context(|| format!("opening the store in {}", data.display()))?
    };
    let store = Arc::new(store);
    let tip = store.tip();
    let me = key.public_key();
    let is_genesis_validator = genesis.validators.iter().any(|v| v.key == me);
    let allowed_peer = genesis.peers.iter().any(|p| p.key == me);
    info!(
        node = %config.node.name,
        key = %me,
        chain = %genesis.chain_id,
        height = tip.height,
        "starting"
    );
    if !is_genesis_validator && !allowed_peer {
        warn!(
            "this node's key is neither a genesis validator nor an allowed peer: others will refuse it until a transaction adds it"
        );
    }
    let metrics = Arc::new(Metrics::new());
    metrics.height.set(tip.height as i64);
    let limits = MempoolLimits {
        max_txs: config.mempool.max_txs,
        max_bytes: config.mempool.max_bytes,
        max_nonce_gap: config.mempool.max_nonce_gap,
        max_tx_bytes: genesis.params.max_tx_bytes as usize,
    };
    let mempool = Arc::new(Mutex::new(Mempool::new(limits.clone())));
    let mempool_notify = Arc::new(Notify::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Network.
    let max_consensus_bytes = genesis.params.max_block_bytes as usize + 1024 * 1024;
    let mut allowed: Vec<(PublicKey, String)> = genesis
        .validators
        .iter()
        .map(|v| (v.key, v.name.clone()))
        .chain(genesis.peers.iter().map(|p| (p.key, p.name.clone())))
        .collect();
    let mut dial = Vec::new();
    for v in &genesis.validators {
        match v.address.parse() {
            Ok(address) => dial.push((v.key, address)),
            Err(_) => {
                warn!(validator = %v.name, address = %v.address, "validator address is not ip:port; not dialing it")
            }
        }
    }
    for peer in &config.p2p.peers {
        let key =
            PublicKey::from_hex(&peer.key).map_err(|e| anyhow::anyhow!("p2p.peers key: {e}"))?;
        dial.push((key, peer.address));
        allowed.push((key, peer.address.to_string()));
    }
    // The validator set in force at the tip: validators added by transaction since
    // genesis may connect too, from the first connection the network accepts.
    let validators: Vec<PublicKey> = if tip.height > 0 {
        let state = store.state_at(tip.height)?;
        let context = ChainContext {
            domain: domain.clone(),
            params: genesis.params.clone(),
            keys: None,
        };
        stele_ledger::exec::BlockExecutor::new(&state, &context)?
            .validator_set()
            .validators()
            .iter()
            .map(|v| v.key)
            .collect()
    } else {
        genesis.validators.iter().map(|v| v.key).collect()
    };
    let (net_events_tx, net_events_rx) = mpsc::channel(8192);
    let (gossip_in_tx, gossip_in_rx) = mpsc::channel::<Vec<Vec<u8>>>(256);
    let network = network::spawn(
        NetworkConfig {
            key: key.clone(),
            listen: config.p2p.listen,
            max_peers: config.p2p.max_peers,
            allowed,
            validators,
            dial,
            genesis_hash: genesis.hash(),
            max_consensus_bytes,
            max_gossip_bytes: GOSSIP_BATCH_BYTES + 64 * 1024,
        },
        store.clone(),
        net_events_tx,
        gossip_in_tx,
        metrics.clone(),
    )?;

    // Transaction gossip, both ways.
    let (gossip_out_tx, gossip_out_rx) = mpsc::channel::<Vec<u8>>(65_536);
    tokio::spawn(gossip_out(gossip_out_rx, network.commands.clone()));
    // Every signature check of the node shares one cache of decompressed keys.
    let keys = Arc::new(KeyCache::new(KEY_CACHE_ENTRIES));
    let (intake_tx, intake_rx) = mpsc::channel(intake::INTAKE_QUEUE_JOBS);
    let intake_busy = Arc::new(AtomicBool::new(false));
    tokio::spawn(
        intake::IntakeWorker {
            store: store.clone(),
            mempool: mempool.clone(),
            notify: mempool_notify.clone(),
            domain: domain.clone(),
            limits: limits.clone(),
            keys: keys.clone(),
            metrics: metrics.clone(),
            busy: intake_busy.clone(),
        }
        .run(intake_rx, gossip_in_rx),
    );

    // Consensus. Proposals' signatures not checked at entry share the intake's keys.
    let context = ChainContext {
        domain: domain.clone(),
        params: genesis.params.clone(),
        keys: Some(keys),
    };
    let mut engine_config = EngineConfig::new(domain.clone());
    engine_config.view_timeout_base_ms = genesis.params.view_timeout_base_ms;
    engine_config.view_timeout_max_ms = genesis.params.view_timeout_max_ms;
    engine_config.message_bytes_max = max_consensus_bytes;
    // Messages for later heights and views: at most four of the largest, or the
    // default if that is more (the engine keeps room for two at least).
    engine_config.buffered_bytes_max = engine_config
        .buffered_bytes_max
        .max(max_consensus_bytes.saturating_mul(4));
    let safety = load_safety(&store)?;
    let engine = Engine::new(engine_config, Some(key.clone()), safety);
    let (status_tx, status_rx) = watch::channel(Default::default());
    let (tip_tx, tip_rx) = watch::channel(tip.height);
    let evidence = Arc::new(Mutex::new(VecDeque::new()));
    let driver = Driver::new(DriverParts {
        store: store.clone(),
        context,
        engine,
        key: Some(key.clone()),
        mempool: mempool.clone(),
        mempool_notify: mempool_notify.clone(),
        net: network.commands.clone(),
        net_events: net_events_rx,
        validators: network.validators,
        metrics: metrics.clone(),
        block_interval: Duration::from_millis(config.consensus.block_interval_ms),
        fill_wait: Duration::from_millis(config.consensus.fill_wait_ms),
        intake_busy,
        status: status_tx,
        tip: tip_tx,
        evidence: evidence.clone(),
        shutdown: shutdown_rx.clone(),
    })?;
    let driver = tokio::spawn(driver.run());

    // API.
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on api.listen = {}", config.api.listen))?;
    let api_state = Arc::new(ApiState {
        store: store.clone(),
        mempool,
        mempool_notify,
        gossip: gossip_out_tx,
        intake: intake_tx,
        chain_id: domain.chain_id().to_owned(),
        status: status_rx,
        peers: network.peers.clone(),
        tip: tip_rx,
        metrics,
        evidence,
        node_key: me.to_hex(),
        node_name: config.node.name.clone(),
        stream_max_lag: config.api.stream_max_lag,
    });
    let api = tokio::spawn(api::serve(
        listener,
        api_state,
        config.api.max_body_bytes,
        config.api.rate_limit_per_sec,
        config.api.rate_limit_burst,
        shutdown_rx.clone(),
    ));
    info!(peer_id = %network.local_peer_id, "node running");

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut driver = driver;
    let mut api = api;
    let outcome = tokio::select! {
        name = &mut signal => {
            info!("{name}: shutting down");
            Ok(())
        }
        result = &mut driver => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("consensus driver failed")),
            Err(e) => Err(anyhow::anyhow!("consensus driver panicked: {e}")),
        },
        result = &mut api => match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("HTTP API failed")),
            Err(e) => Err(anyhow::anyhow!("HTTP API panicked: {e}")),
        },
    };
    let _ = shutdown_tx.send(true);
    // Let the driver finish the input at hand (a commit is one RocksDB batch either
    // way) and the API close its connections.
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), api).await;
    drop(store);
    info!("stopped");
    outcome
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Batches accepted transactions for gossip, at most one batch per [`GOSSIP_DELAY`]:
/// a transaction that arrives when nothing was sent for that long leaves at once (a
/// lone transaction is not held back), and under load the batch gathers whatever
/// arrives until the delay since the last batch has passed, or it is full.
async fn gossip_out(mut rx: mpsc::Receiver<Vec<u8>>, net: mpsc::Sender<NetCommand>) {
    let mut last_sent = tokio::time::Instant::now() - GOSSIP_DELAY;
    while let Some(first) = rx.recv().await {
        let mut bytes = first.len();
        let mut batch = vec![first];
        let deadline = last_sent + GOSSIP_DELAY;
        while bytes < GOSSIP_BATCH_BYTES {
            let next = if tokio::time::Instant::now() >= deadline {
                // Take what is already queued, without waiting.
                rx.try_recv().ok()
            } else {
                tokio::time::timeout_at(deadline, rx.recv())
                    .await
                    .ok()
                    .flatten()
            };
            let Some(tx) = next else { break };
            bytes += tx.len();
            batch.push(tx);
        }
        last_sent = tokio::time::Instant::now();
        if net.send(NetCommand::GossipTxs(batch)).await.is_err() {
            return;
        }
    }
}
