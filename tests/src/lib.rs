//! # stele-testkit
//!
//! Multi-process testing of Stele: a launcher for real `stele-node` processes on a
//! loopback address of their own (`127.0.0.N`, so tests running side by side never
//! share a port), fault injection (SIGKILL, SIGTERM, restart), an HTTP client for the
//! node API, and helpers that sign transactions with the testnet's account keys.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use stele_consensus::{PublicKey, SigningDomain, SigningKey};
use stele_genesis::{Testnet, TestnetOptions, generate_testnet, read_key_file};
use stele_ledger::{Operation, SignedTransaction, Transaction};

/// A binary of the workspace (`target/<profile>/<name>`), found from the running
/// executable: a test (`target/<profile>/deps/<test>`) or a binary beside it.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let mut dir = exe.parent().expect("the executable is in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps is inside target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --profile ci` first (scripts/test does)",
        path.display()
    );
    path
}

/// One node process.
pub struct NodeProcess {
    /// Its home directory.
    pub home: PathBuf,
    /// API base URL.
    pub api: String,
    /// Its key.
    pub key: PublicKey,
    child: Option<Child>,
}

impl NodeProcess {
    /// The process id, while started.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process runs.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }
}

/// A local network of node processes.
pub struct Cluster {
    /// The testnet directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The generated testnet.
    pub testnet: Testnet,
    /// The nodes, validators first.
    pub nodes: Vec<NodeProcess>,
    /// HTTP client.
    pub http: reqwest::blocking::Client,
    /// The chain's signing domain.
    pub domain: SigningDomain,
}

/// Test settings for a cluster.
pub struct ClusterOptions {
    /// Validators.
    pub validators: usize,
    /// Funded accounts besides the treasury.
    pub accounts: usize,
    /// The last byte of the 127.0.0.x address the nodes listen on.
    pub host: u8,
    /// Genesis parameters to change.
    pub params: stele_ledger::ChainParams,
    /// Milliseconds between blocks.
    pub block_interval_ms: u64,
    /// The nodes' `consensus.fill_wait_ms`.
    pub fill_wait_ms: u64,
    /// Non-validating nodes whose keys the genesis lists as allowed peers (made with
    /// `stele-node init`); they come after the validators in [`Cluster::nodes`].
    pub observers: usize,
    /// Nodes whose keys the genesis does not list at all (made with `stele-node
    /// init`); they come last.
    pub strangers: usize,
    /// The nodes' log filter.
    pub log_level: String,
    /// First port (node i uses base + 2i and base + 2i + 1).
    pub base_port: u16,
}

impl ClusterOptions {
    /// Defaults for `validators` nodes on `127.0.0.<host>`.
    pub fn new(validators: usize, host: u8) -> Self {
        let params = stele_ledger::ChainParams {
            view_timeout_base_ms: 500,
            view_timeout_max_ms: 4_000,
            ..Default::default()
        };
        ClusterOptions {
            validators,
            accounts: 8,
            host,
            params,
            block_interval_ms: 20,
            fill_wait_ms: stele_genesis::config::ConsensusSection::default().fill_wait_ms,
            observers: 0,
            strangers: 0,
            log_level: "info,stele_node=debug".into(),
            base_port: 30000,
        }
    }
}

impl Cluster {
    /// Generates a testnet and starts every validator.
    pub fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::create(options)?;
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        Ok(cluster)
    }

    /// Generates a testnet without starting anything.
    pub fn create(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("stele-e2e").tempdir()?;
        let testnet_dir = dir.path().join("net");
        let testnet = generate_testnet(
            &testnet_dir,
            &TestnetOptions {
                validators: options.validators,
                accounts: options.accounts,
                chain_id: format!("stele-e2e-{}", options.host),
                host: IpAddr::V4(Ipv4Addr::new(127, 0, 0, options.host)),
                base_port: options.base_port,
                params: options.params,
            },
        )?;
        for node in &testnet.nodes {
            let path = node.home.join("config.toml");
            let mut config = stele_genesis::NodeConfig::load(&path)?;
            config.consensus.block_interval_ms = options.block_interval_ms;
            config.consensus.fill_wait_ms = options.fill_wait_ms;
            config.log.level = options.log_level.clone();
            config.write(&path)?;
        }
        let mut nodes: Vec<NodeProcess> = testnet
            .nodes
            .iter()
            .map(|n| NodeProcess {
                home: n.home.clone(),
                api: format!("http://{}", n.api),
                key: n.key,
                child: None,
            })
            .collect();
        let mut testnet = testnet;
        let extra = options.observers + options.strangers;
        if extra > 0 {
            let keys: Vec<SigningKey> = (0..extra).map(|_| stele_genesis::generate_key()).collect();
            // List the observers in the genesis, everywhere it is copied.
            let mut file = stele_genesis::GenesisFile::read(&testnet.genesis_file)?;
            for (k, key) in keys.iter().take(options.observers).enumerate() {
                file.peers.push(stele_genesis::file::PeerEntry {
                    name: format!("observer{k}"),
                    public_key: key.public_key().to_hex(),
                });
            }
            file.write(&testnet.genesis_file)?;
            for node in &testnet.nodes {
                file.write(&node.home.join("genesis.json"))?;
            }
            testnet.genesis = stele_genesis::load_genesis(&testnet.genesis_file)?;
            for (k, key) in keys.iter().enumerate() {
                let index = options.validators + k;
                let home = testnet_dir.join(format!("extra{k}"));
                let key_file = testnet_dir.join(format!("extra{k}.key.json"));
                stele_genesis::write_key_file(&key_file, key)?;
                let port = options.base_port + 2 * index as u16;
                let ip = Ipv4Addr::new(127, 0, 0, options.host);
                let status = Command::new(binary("stele-node"))
                    .arg("init")
                    .arg("--home")
                    .arg(&home)
                    .arg("--genesis")
                    .arg(&testnet.genesis_file)
                    .arg("--key")
                    .arg(&key_file)
                    .arg("--p2p")
                    .arg(format!("{ip}:{port}"))
                    .arg("--api")
                    .arg(format!("{ip}:{}", port + 1))
                    .output()?;
                if !status.status.success() {
                    bail!(
                        "stele-node init failed: {}",
                        String::from_utf8_lossy(&status.stderr)
                    );
                }
                let path = home.join("config.toml");
                let mut config = stele_genesis::NodeConfig::load(&path)?;
                config.consensus.block_interval_ms = options.block_interval_ms;
                config.consensus.fill_wait_ms = options.fill_wait_ms;
                config.log.level = options.log_level.clone();
                config.write(&path)?;
                nodes.push(NodeProcess {
                    home,
                    api: format!("http://{ip}:{}", port + 1),
                    key: key.public_key(),
                    child: None,
                });
            }
        }
        let domain = testnet.genesis.signing_domain()?;
        Ok(Cluster {
            dir,
            testnet,
            nodes,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()?,
            domain,
        })
    }

    /// Starts node `i` (again).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.home.join("node.log"))?;
        let child = Command::new(binary("stele-node"))
            .arg("start")
            .arg("--home")
            .arg(&node.home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting stele-node")?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops node `i` with SIGTERM and waits for it; returns whether it exited cleanly.
    pub fn stop(&mut self, i: usize) -> bool {
        let Some(mut child) = self.nodes[i].child.take() else {
            return true;
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The log of node `i`.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.nodes[i].home.join("node.log")).unwrap_or_default()
    }

    /// GET a JSON document from node `i`.
    pub fn get(&self, i: usize, path: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("{}{path}", self.nodes[i].api))
            .send()?;
        Ok(response.json()?)
    }

    /// `/v1/status` of node `i`.
    pub fn status(&self, i: usize) -> anyhow::Result<Value> {
        self.get(i, "/v1/status")
    }

    /// Committed height of node `i`.
    pub fn height(&self, i: usize) -> anyhow::Result<u64> {
        self.status(i)?["height"]
            .as_u64()
            .context("status without a height")
    }

    /// Waits until node `i` has committed `height`.
    pub fn wait_for_height(&self, i: usize, height: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(h) = self.height(i) {
                if h >= height {
                    return Ok(());
                }
                last = Some(h);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("node {i} did not reach height {height} within {timeout:?} (last seen {last:?})")
    }

    /// Waits until every node in `nodes` answers its API.
    pub fn wait_ready(&self, nodes: &[usize], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        for &i in nodes {
            loop {
                if self.get(i, "/health").is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {i} did not start serving its API within {timeout:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Submits encoded transactions to node `i`; returns the per-transaction results.
    pub fn submit(&self, i: usize, txs: &[Vec<u8>]) -> anyhow::Result<Vec<Value>> {
        let body = serde_json::json!({ "txs": txs.iter().map(hex::encode).collect::<Vec<_>>() });
        let response: Value = self
            .http
            .post(format!("{}/v1/txs", self.nodes[i].api))
            .json(&body)
            .send()?
            .json()?;
        response["results"]
            .as_array()
            .cloned()
            .with_context(|| format!("unexpected answer: {response}"))
    }

    /// The signing key of testnet account `index` (0 is the treasury).
    pub fn account_key(&self, index: usize) -> anyhow::Result<SigningKey> {
        Ok(read_key_file(&self.testnet.accounts[index].key_file)?)
    }

    /// A signed transfer.
    pub fn transfer(
        &self,
        from: &SigningKey,
        nonce: u64,
        to: PublicKey,
        amount: u64,
    ) -> SignedTransaction {
        self.sign(from, nonce, Operation::Transfer { to, amount })
    }

    /// A signed transaction.
    pub fn sign(&self, from: &SigningKey, nonce: u64, op: Operation) -> SignedTransaction {
        Transaction {
            chain_id: self.domain.chain_id().to_owned(),
            signer: from.public_key(),
            nonce,
            op,
        }
        .sign(&self.domain, from)
    }

    /// Status of a transaction at node `i`.
    pub fn tx_status(&self, i: usize, hash: &str) -> anyhow::Result<Value> {
        self.get(i, &format!("/v1/txs/{hash}"))
    }

    /// Waits until `hash` is committed at node `i`; returns the status document.
    pub fn wait_committed(&self, i: usize, hash: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.tx_status(i, hash)?;
            if status["status"] == "committed" {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("transaction {hash} not committed at node {i} within {timeout:?}: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Block `height` at node `i` (404 gives an error).
    pub fn block(&self, i: usize, height: u64) -> anyhow::Result<Value> {
        let value = self.get(i, &format!("/v1/blocks/{height}"))?;
        if value.get("error").is_some() {
            bail!("node {i}, block {height}: {value}");
        }
        Ok(value)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        let keep = std::env::var_os("STELE_E2E_KEEP").is_some();
        if keep {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!(
                "cluster directory kept (STELE_E2E_KEEP): {}",
                dir.path().display()
            );
            let _ = dir.keep();
        } else if std::thread::panicking() {
            // Keep the logs of a failed test.
            let path = self.dir.path().to_owned();
            eprintln!("cluster directory kept for inspection: {}", path.display());
            for (i, node) in self.nodes.iter().enumerate() {
                let log = std::fs::read_to_string(node.home.join("node.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("---- node {i} log (last 40 lines) ----");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let _ = dir.keep();
        }
    }
}
