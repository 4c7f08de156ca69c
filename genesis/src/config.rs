//! `config.toml`: the per-node configuration in a node's home directory.
//!
//! Paths in the file are relative to the home directory. Unknown keys are errors, so a
//! misspelt setting is reported instead of silently ignored.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::GenesisError;

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Identity and files.
    pub node: NodeSection,
    /// Peer-to-peer networking.
    pub p2p: P2pSection,
    /// HTTP API.
    pub api: ApiSection,
    /// Storage.
    #[serde(default)]
    pub storage: StorageSection,
    /// Block production.
    #[serde(default)]
    pub consensus: ConsensusSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Transaction pool.
    #[serde(default)]
    pub mempool: MempoolSection,
}

/// `[node]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Human name, shown in logs.
    pub name: String,
    /// The node's key file (validator signing and network identity).
    #[serde(default = "default_key_file")]
    pub key_file: PathBuf,
    /// The genesis file.
    #[serde(default = "default_genesis_file")]
    pub genesis_file: PathBuf,
}

/// `[p2p]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    /// Address to listen on for peers.
    pub listen: SocketAddr,
    /// Most simultaneous peer connections.
    #[serde(default = "default_max_peers")]
    pub max_peers: u32,
    /// Other peers to dial (`host:port` and hex key), besides the genesis validators.
    #[serde(default)]
    pub peers: Vec<PeerAddress>,
}

/// A peer to dial.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAddress {
    /// `ip:port`.
    pub address: SocketAddr,
    /// Its public key, hex.
    pub key: String,
}

/// `[api]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Largest request body, bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests per second allowed from one client address (a token bucket).
    #[serde(default = "default_rate_limit")]
    pub rate_limit_per_sec: u32,
    /// Burst allowed above the rate.
    #[serde(default = "default_rate_burst")]
    pub rate_limit_burst: u32,
    /// A block-stream consumer further than this many heights behind the tip is
    /// disconnected (with the height to resume from).
    #[serde(default = "default_stream_max_lag")]
    pub stream_max_lag: u64,
}

impl ApiSection {
    /// Defaults for an API on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        ApiSection {
            listen,
            max_body_bytes: default_max_body_bytes(),
            rate_limit_per_sec: default_rate_limit(),
            rate_limit_burst: default_rate_burst(),
            stream_max_lag: default_stream_max_lag(),
        }
    }
}

fn default_max_body_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_rate_limit() -> u32 {
    2_000
}

fn default_rate_burst() -> u32 {
    4_000
}

fn default_stream_max_lag() -> u64 {
    10_000
}

/// `[mempool]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MempoolSection {
    /// Most transactions waiting.
    pub max_txs: usize,
    /// Most bytes waiting.
    pub max_bytes: usize,
    /// Furthest a transaction's nonce may be ahead of its account's next nonce.
    pub max_nonce_gap: u64,
}

impl Default for MempoolSection {
    fn default() -> Self {
        MempoolSection {
            max_txs: 200_000,
            max_bytes: 128 * 1024 * 1024,
            max_nonce_gap: 10_000,
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// The RocksDB directory.
    pub data_dir: PathBuf,
    /// Heights whose state can still be proven.
    pub state_versions_kept: u64,
    /// Fsync every committed block.
    pub sync_writes: bool,
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            data_dir: PathBuf::from("data"),
            state_versions_kept: 64,
            sync_writes: true,
        }
    }
}

/// `[consensus]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsensusSection {
    /// Shortest time between two blocks, milliseconds.
    pub block_interval_ms: u64,
    /// Longest time a leader holds back a block, once `block_interval_ms` has passed,
    /// while the mempool's intake is still checking arrived transactions,
    /// milliseconds. Under load this makes blocks gather what is already on its way
    /// instead of going out with the last batch only: every block costs each validator
    /// the same messages, votes and writes whatever it holds. 0 turns it off.
    pub fill_wait_ms: u64,
}

impl Default for ConsensusSection {
    fn default() -> Self {
        ConsensusSection {
            block_interval_ms: 100,
            fill_wait_ms: 10,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Output format.
    pub format: LogFormat,
    /// Filter, in `tracing` env-filter syntax (`info`, `stele_node=debug`).
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

fn default_key_file() -> PathBuf {
    PathBuf::from("validator_key.json")
}

fn default_genesis_file() -> PathBuf {
    PathBuf::from("genesis.json")
}

fn default_max_peers() -> u32 {
    50
}

impl NodeConfig {
    /// Reads and checks a configuration file. Errors name the key.
    pub fn load(path: &Path) -> Result<NodeConfig, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config: NodeConfig = toml::from_str(&text).map_err(|e| GenesisError::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        config.check().map_err(|reason| GenesisError::Config {
            path: path.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    /// Checks values serde cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.node.name.trim().is_empty() {
            return Err("node.name: must not be empty".into());
        }
        if self.p2p.max_peers == 0 {
            return Err("p2p.max_peers: must be at least 1".into());
        }
        if self.storage.state_versions_kept == 0 {
            return Err("storage.state_versions_kept: must be at least 1".into());
        }
        if self.api.max_body_bytes < 1024 {
            return Err("api.max_body_bytes: must be at least 1024".into());
        }
        if self.api.rate_limit_per_sec == 0 {
            return Err("api.rate_limit_per_sec: must be at least 1".into());
        }
        if self.api.rate_limit_burst < self.api.rate_limit_per_sec {
            return Err("api.rate_limit_burst: must be at least api.rate_limit_per_sec".into());
        }
        if self.api.stream_max_lag == 0 {
            return Err("api.stream_max_lag: must be at least 1".into());
        }
        if self.mempool.max_txs == 0 {
            return Err("mempool.max_txs: must be at least 1".into());
        }
        if self.mempool.max_bytes < 64 * 1024 {
            return Err("mempool.max_bytes: must be at least 65536".into());
        }
        for (i, peer) in self.p2p.peers.iter().enumerate() {
            if stele_consensus::PublicKey::from_hex(&peer.key).is_err() {
                return Err(format!("p2p.peers[{i}].key: not a hex public key"));
            }
        }
        if self.p2p.listen == self.api.listen {
            return Err("api.listen: must differ from p2p.listen".into());
        }
        Ok(())
    }

    /// Writes the configuration as TOML.
    pub fn write(&self, path: &Path) -> Result<(), GenesisError> {
        let text = toml::to_string_pretty(self).expect("config serialises");
        std::fs::write(path, text).map_err(|source| GenesisError::Io {
            path: path.to_owned(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeConfig {
        NodeConfig {
            node: NodeSection {
                name: "node0".into(),
                key_file: default_key_file(),
                genesis_file: default_genesis_file(),
            },
            p2p: P2pSection {
                listen: "127.0.0.1:27000".parse().unwrap(),
                max_peers: 50,
                peers: vec![],
            },
            api: ApiSection::new("127.0.0.1:27001".parse().unwrap()),
            storage: StorageSection::default(),
            consensus: ConsensusSection::default(),
            log: LogSection::default(),
            mempool: MempoolSection::default(),
        }
    }

    #[test]
    fn round_trip_and_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        sample().write(&path).unwrap();
        assert_eq!(NodeConfig::load(&path).unwrap(), sample());

        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("max_peers = 50", "max_peers = 50\nmax_pears = 3"),
        )
        .unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("max_pears"), "{err}");

        std::fs::write(&path, text.replace("127.0.0.1:27001", "not-an-address")).unwrap();
        let err = NodeConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
    }
}
