//! Prometheus metrics, served at `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The node's metrics. Cloning a metric shares it.
pub struct Metrics {
    registry: Registry,
    /// Height of the last committed block.
    pub height: Gauge,
    /// Current consensus view.
    pub view: Gauge,
    /// View changes this node took part in.
    pub view_changes: Counter,
    /// Transactions waiting in the mempool.
    pub mempool_txs: Gauge,
    /// Transactions committed since start.
    pub committed_txs: Counter,
    /// Blocks committed since start (by consensus or by sync).
    pub committed_blocks: Counter,
    /// Connected peers.
    pub peers: Gauge,
    /// Seconds from the start of a height to its commit.
    pub commit_latency: Histogram,
    /// Transactions refused on entry.
    pub rejected_txs: Counter,
    /// Consensus messages refused.
    pub invalid_messages: Counter,
    /// Equivocations seen.
    pub evidence: Counter,
    /// Transaction signatures checked on entry to the pool.
    pub intake_signature_checks: Counter,
    /// Batches the intake checked (signatures checked / batches is their mean size).
    pub intake_batches: Counter,
    /// Transaction signatures checked while validating blocks (those not pooled).
    pub block_signature_checks: Counter,
    /// Gossiped transactions dropped because the intake queue was full.
    pub gossip_dropped_txs: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("stele");
        let height = Gauge::default();
        let view = Gauge::default();
        let view_changes = Counter::default();
        let mempool_txs = Gauge::default();
        let committed_txs = Counter::default();
        let committed_blocks = Counter::default();
        let peers = Gauge::default();
        let commit_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let rejected_txs = Counter::default();
        let invalid_messages = Counter::default();
        let evidence = Counter::default();
        let intake_signature_checks = Counter::default();
        let intake_batches = Counter::default();
        let block_signature_checks = Counter::default();
        let gossip_dropped_txs = Counter::default();
        registry.register(
            "height",
            "Height of the last committed block",
            height.clone(),
        );
        registry.register("view", "Current consensus view", view.clone());
        registry.register(
            "view_changes",
            "View changes started by this node",
            view_changes.clone(),
        );
        registry.register(
            "mempool_txs",
            "Transactions waiting in the mempool",
            mempool_txs.clone(),
        );
        registry.register(
            "committed_txs",
            "Transactions committed",
            committed_txs.clone(),
        );
        registry.register(
            "committed_blocks",
            "Blocks committed",
            committed_blocks.clone(),
        );
        registry.register("peers", "Connected peers", peers.clone());
        registry.register(
            "commit_latency_seconds",
            "Time from the start of a height to its commit",
            commit_latency.clone(),
        );
        registry.register(
            "rejected_txs",
            "Transactions refused on entry",
            rejected_txs.clone(),
        );
        registry.register(
            "invalid_messages",
            "Consensus messages refused",
            invalid_messages.clone(),
        );
        registry.register("evidence", "Equivocations seen", evidence.clone());
        registry.register(
            "intake_signature_checks",
            "Transaction signatures checked on entry to the pool",
            intake_signature_checks.clone(),
        );
        registry.register(
            "intake_batches",
            "Batches of transactions the intake checked",
            intake_batches.clone(),
        );
        registry.register(
            "block_signature_checks",
            "Transaction signatures checked while validating blocks",
            block_signature_checks.clone(),
        );
        registry.register(
            "gossip_dropped_txs",
            "Gossiped transactions dropped because the intake queue was full",
            gossip_dropped_txs.clone(),
        );
        Metrics {
            registry,
            height,
            view,
            view_changes,
            mempool_txs,
            committed_txs,
            committed_blocks,
            peers,
            commit_latency,
            rejected_txs,
            invalid_messages,
            evidence,
            intake_signature_checks,
            intake_batches,
            block_signature_checks,
            gossip_dropped_txs,
        }
    }

    /// The metrics in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
