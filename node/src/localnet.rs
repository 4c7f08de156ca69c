//! `stele-node localnet`: a local testnet whose validators run as separate processes.
//!
//! Creates the testnet in DIR on first use (as `stele-genesis testnet` does) and reuses
//! it afterwards, so the chain continues where it stopped. Each validator's output goes
//! to `DIR/node<i>/node.log`. Prints the API URLs, then a line per block committed (as
//! seen by the first validator that answers), and on Ctrl-C (or SIGTERM) stops every
//! validator with SIGTERM, waiting for them to finish cleanly.
//!
//! Blocks are only made when there are transactions, so by default a light load runs
//! too: `alice` sends `bob` one unit, a few times a second (`--load 0` turns it off).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stele_genesis::{NodeConfig, TestnetOptions, generate_testnet};
use tokio::process::{Child, Command};

struct Validator {
    name: String,
    api: String,
    child: Child,
}

/// The homes `node0`, `node1`, ... in `dir`.
fn homes(dir: &Path) -> Vec<PathBuf> {
    (0..)
        .map(|i| dir.join(format!("node{i}")))
        .take_while(|home| home.join("config.toml").exists())
        .collect()
}

/// What to run.
pub struct LocalnetOptions {
    /// Validators.
    pub validators: usize,
    /// Testnet directory.
    pub dir: PathBuf,
    /// Demo transfers per second (0: none).
    pub load: u32,
    /// Address the nodes listen on (when creating the testnet).
    pub host: std::net::IpAddr,
    /// First port (when creating the testnet).
    pub base_port: u16,
}

/// Runs the local network until Ctrl-C.
pub async fn run(options: LocalnetOptions) -> anyhow::Result<()> {
    let LocalnetOptions {
        validators,
        dir,
        load,
        host,
        base_port,
    } = options;
    if dir.join("genesis.json").exists() {
        let found = homes(&dir).len();
        if found != validators {
            anyhow::bail!(
                "{} holds a testnet of {found} validators, not {validators}: pass --validators {found}, or another --dir",
                dir.display()
            );
        }
        println!("reusing the testnet in {}", dir.display());
    } else {
        let options = TestnetOptions {
            validators,
            host,
            base_port,
            ..TestnetOptions::default()
        };
        generate_testnet(&dir, &options)?;
        println!(
            "created a testnet of {validators} validators in {}",
            dir.display()
        );
    }
    let exe = std::env::current_exe().context("locating the stele-node binary")?;
    let mut running = Vec::new();
    for home in homes(&dir) {
        let config = NodeConfig::load(&home.join("config.toml"))?;
        let log_path = home.join("node.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = Command::new(&exe)
            .arg("start")
            .arg("--home")
            .arg(&home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // The terminal's Ctrl-C reaches us; we stop the validators ourselves, in
            // order, instead of all at once through the process group.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", home.display()))?;
        let api = format!("http://{}", config.api.listen);
        println!(
            "{}: API {api}  p2p {}  log {}",
            config.node.name,
            config.p2p.listen,
            log_path.display()
        );
        running.push(Validator {
            name: config.node.name,
            api,
            child,
        });
    }
    println!("press Ctrl-C to stop");
    let apis: Vec<String> = running.iter().map(|v| v.api.clone()).collect();
    let watcher = tokio::spawn(print_blocks(apis.clone()));
    let loader = if load > 0 {
        println!(
            "sending {load} demo transfers per second from alice to bob (--load 0 stops that)"
        );
        Some(tokio::spawn(demo_load(apis, dir.clone(), load)))
    } else {
        None
    };
    let reason = tokio::select! {
        name = signal() => format!("{name} received"),
        exited = first_exit(&mut running) => exited,
    };
    watcher.abort();
    if let Some(loader) = loader {
        loader.abort();
    }
    println!("{reason}: stopping the validators");
    stop_all(&mut running).await;
    Ok(())
}

async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Reports validators that exit by themselves (the others keep running: the network
/// tolerates fewer than a third down); resolves once none is left.
async fn first_exit(running: &mut [Validator]) -> String {
    let mut reported = vec![false; running.len()];
    loop {
        for (i, v) in running.iter_mut().enumerate() {
            if !reported[i]
                && let Ok(Some(status)) = v.child.try_wait()
            {
                reported[i] = true;
                println!("{} exited ({status}); see its node.log", v.name);
            }
        }
        if reported.iter().all(|r| *r) {
            return "every validator exited".into();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn stop_all(running: &mut [Validator]) {
    for v in running.iter() {
        if let Some(pid) = v.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    for v in running.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(10), v.child.wait()).await {
            Ok(Ok(status)) => println!("{} stopped ({status})", v.name),
            _ => {
                let _ = v.child.kill().await;
                println!("{} did not stop within 10s: killed", v.name);
            }
        }
    }
}

/// Follows the block stream of the first validator that answers, printing a line per
/// block, and moves to another when it stops answering.
async fn print_blocks(apis: Vec<String>) {
    let client = reqwest::Client::new();
    let mut next: Option<u64> = None;
    let mut which = 0;
    loop {
        let api = &apis[which % apis.len()];
        which += 1;
        let from = match next {
            Some(h) => h,
            None => match current_height(&client, api).await {
                Some(h) => h + 1,
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let url = format!("{api}/v1/blocks?from={from}");
        let Ok(mut response) = client.get(&url).send().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let mut buffer = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(block) = serde_json::from_slice::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(height) = block["height"].as_u64() {
                    println!(
                        "block {height:>6}  txs {:>5}  hash {}  (from {api})",
                        block["txs"].as_u64().unwrap_or(0),
                        &block["hash"].as_str().unwrap_or("?")
                            [..16.min(block["hash"].as_str().unwrap_or("?").len())],
                    );
                    next = Some(height + 1);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn current_height(client: &reqwest::Client, api: &str) -> Option<u64> {
    let status: serde_json::Value = client
        .get(format!("{api}/v1/status"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    status["height"].as_u64()
}

/// Sends `rate` transfers a second from `alice` to `bob`, round-robin over the nodes.
async fn demo_load(apis: Vec<String>, dir: PathBuf, rate: u32) {
    if let Err(e) = demo_load_inner(&apis, &dir, rate).await {
        println!("demo load stopped: {e:#}");
    }
}

async fn demo_load_inner(apis: &[String], dir: &Path, rate: u32) -> anyhow::Result<()> {
    let genesis = stele_genesis::load_genesis(&dir.join("genesis.json"))?;
    let domain = genesis.signing_domain()?;
    let alice = stele_genesis::read_key_file(&dir.join("accounts/alice.json"))?;
    let bob = stele_genesis::read_key_file(&dir.join("accounts/bob.json"))?.public_key();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let mut nonce: Option<u64> = None;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut which = 0usize;
    loop {
        tick.tick().await;
        let api = &apis[which % apis.len()];
        which += 1;
        let next = match nonce {
            Some(n) => n,
            None => {
                let url = format!("{api}/v1/accounts/{}", alice.public_key().to_hex());
                let Ok(response) = client.get(&url).send().await else {
                    continue;
                };
                let Ok(account) = response.json::<serde_json::Value>().await else {
                    continue;
                };
                match account["nonce"].as_u64() {
                    Some(n) => n,
                    None => continue,
                }
            }
        };
        let tx = stele_ledger::Transaction {
            chain_id: domain.chain_id().to_owned(),
            signer: alice.public_key(),
            nonce: next,
            op: stele_ledger::Operation::Transfer { to: bob, amount: 1 },
        }
        .sign(&domain, &alice);
        let body = serde_json::json!({ "txs": [hex::encode(tx.encode())] });
        let accepted = match client
            .post(format!("{api}/v1/txs"))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .is_some_and(|v| v["results"][0]["status"] == "accepted"),
            Err(_) => false,
        };
        // On any refusal, ask for the nonce again (another node may be ahead).
        nonce = accepted.then_some(next + 1);
    }
}
