//! `stele-bench`: committed throughput and submit-to-commit latency of a Stele network,
//! beside the signature-verification limit of the machine, measured in the same run.
//!
//! It starts a local network of real `stele-node` processes (or attaches to a running
//! one), signs every transfer before a run starts, submits them open-loop at a set rate
//! in batches over the HTTP API, and takes each transaction's commit time from a node's
//! block stream. A transaction's latency runs from the moment its batch was due to be
//! sent (so a slow submitter cannot hide queueing) to the moment the block holding it
//! arrived on the stream.
//!
//! With `--sweep` it raises the offered rate until committed throughput stops keeping
//! up, then runs at 0.8 x the saturation throughput.
//!
//! The limit: V_b, this build's batched ed25519 verification rate on one core, gives
//! S = cores x V_b / validators (every validator verifies every transaction once, and
//! they share the machine's cores); R = T / S, with T the committed rate at saturation.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use stele_consensus::{PublicKey, SigningDomain, SigningKey};
use stele_ledger::{Operation, Transaction};
use stele_testkit::{Cluster, ClusterOptions};

/// The load generator shares the machine with the nodes it measures: with glibc's
/// allocator, its JSON answers' small allocations (and the page faults of a heap that
/// grows and shrinks) cost a visible share of a core.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Clone)]
#[command(
    name = "stele-bench",
    version,
    about = "Committed throughput and latency of a Stele network, against the machine's signature-verification limit"
)]
struct Args {
    /// Validators of the local network.
    #[arg(long, default_value_t = 4)]
    validators: usize,
    /// Funded accounts in the genesis (transfers are spread over them).
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Offered load, transactions per second (without --sweep).
    #[arg(long, default_value_t = 2_000)]
    rate: u32,
    /// Seconds of load per run (and per sweep step).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Transactions per HTTP request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Raise the rate until committed throughput stops keeping up, then run at 0.8 x
    /// saturation.
    #[arg(long)]
    sweep: bool,
    /// First rate of a sweep; each step multiplies it by --sweep-factor.
    #[arg(long, default_value_t = 1_000)]
    sweep_start: u32,
    /// Rate multiplier between sweep steps.
    #[arg(long, default_value_t = 1.5)]
    sweep_factor: f64,
    /// A short run for CI (1,000 tx/s for 10 s, fewer lone transactions): it checks
    /// that everything accepted is committed and asserts no speed.
    #[arg(long, conflicts_with = "sweep")]
    short: bool,
    /// Attach to a running network made by `stele-genesis testnet` or `stele-node
    /// localnet`: its directory (genesis.json, accounts/, node*/config.toml).
    #[arg(long, value_name = "DIR")]
    attach: Option<PathBuf>,
    /// Last byte of the 127.0.0.x address of the local network.
    #[arg(long, default_value_t = 60)]
    host: u8,
    /// Shortest time between blocks, milliseconds (the nodes' consensus.block_interval_ms).
    /// 0: a height starts as soon as the last one is committed and a transaction
    /// waits; under load any pause here only adds to every transaction's latency.
    #[arg(long, default_value_t = 0)]
    block_interval_ms: u64,
    /// Longest wait, after that, for transactions the intake is still checking
    /// (the nodes' consensus.fill_wait_ms; default: the node's default).
    #[arg(long)]
    fill_wait_ms: Option<u64>,
    /// Lone transactions sent one at a time on the idle network, for the idle latency.
    #[arg(long, default_value_t = 30)]
    lone: usize,
    /// Threads that send the requests.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Seconds to wait, after the load, for accepted transactions to commit.
    #[arg(long, default_value_t = 60)]
    drain: u64,
    /// Longest wait before each run for the nodes to go quiet (their CPU, summed, under
    /// a tenth of a core over one second), so that no run starts on the flushes and
    /// compactions an earlier, heavier one left behind. 0: no wait. Networks we did not
    /// start (--attach) are not watched.
    #[arg(long, default_value_t = 30)]
    settle_max_secs: u64,
    /// Where to write bench.json and bench.svg.
    #[arg(long, value_name = "DIR", default_value = "bench-out")]
    out: PathBuf,
}

/// The network under test.
struct Network {
    /// A cluster we started (dropped at the end, which stops it).
    cluster: Option<Cluster>,
    apis: Vec<String>,
    pids: Vec<Option<u32>>,
    domain: SigningDomain,
    chain_id: String,
    accounts: Vec<SigningKey>,
    nonces: Vec<u64>,
    treasury: PublicKey,
    /// The nodes' `consensus.fill_wait_ms`, when we configured them.
    fill_wait_ms: Option<u64>,
}

/// One measured run at one offered rate.
#[derive(Clone, Debug)]
struct RunResult {
    offered: f64,
    submitted: usize,
    accepted: usize,
    rejected: usize,
    committed: usize,
    lost: usize,
    committed_tps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    blocks: u64,
    blocks_per_sec: f64,
    max_send_lag_ms: f64,
    cpu_secs: Vec<f64>,
    /// This process's CPU time over the same span (load generator and block reader):
    /// on a shared machine it is taken from the nodes.
    bench_cpu_secs: f64,
    peak_rss_mib: Vec<f64>,
    first_rejection: Option<String>,
    /// For each second of the load, by due time: transactions, p50 and p99 latency.
    by_second: Vec<(usize, f64, f64)>,
    /// Seconds waited before the run for the nodes to go quiet, and whether they did.
    settled: Option<(f64, bool)>,
}

impl RunResult {
    fn to_json(&self) -> Value {
        json!({
            "offered_tps": self.offered,
            "submitted": self.submitted,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "committed": self.committed,
            "lost": self.lost,
            "committed_tps": self.committed_tps,
            "latency_ms": { "p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms },
            "blocks": self.blocks,
            "blocks_per_sec": self.blocks_per_sec,
            "max_send_lag_ms": self.max_send_lag_ms,
            "node_cpu_secs": self.cpu_secs,
            "bench_cpu_secs": self.bench_cpu_secs,
            "node_peak_rss_mib": self.peak_rss_mib,
            "first_rejection": self.first_rejection,
            "settle_secs": self.settled.map(|(secs, _)| secs),
            "settled_quiet": self.settled.map(|(_, quiet)| quiet),
            "latency_ms_by_second": self
                .by_second
                .iter()
                .map(|(n, p50, p99)| json!({ "txs": n, "p50": p50, "p99": p99 }))
                .collect::<Vec<_>>(),
        })
    }
}

/// Commit times, filled by the block-stream reader.
#[derive(Default)]
struct Commits {
    by_hash: HashMap<String, Instant>,
    blocks: Vec<(u64, Instant, usize)>,
}

fn main() -> std::process::ExitCode {
    let mut args = Args::parse();
    if args.short {
        args.rate = 1_000;
        args.duration = 10;
        args.lone = 10;
    }
    match run(&args) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    if args.batch == 0 || args.senders == 0 || args.duration == 0 {
        bail!("--batch, --senders and --duration must be at least 1");
    }
    if args.sweep && (args.sweep_factor.is_nan() || args.sweep_factor <= 1.0) {
        bail!("--sweep-factor must be above 1");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("measuring batched ed25519 verification on one core...");
    let mut v_b_samples = verify_rate_samples();
    let mut network = match &args.attach {
        Some(dir) => attach(dir)?,
        None => start(args)?,
    };
    let validators = if args.attach.is_some() {
        network.apis.len()
    } else {
        args.validators
    };
    eprintln!(
        "V_b before the load: {:.0} signatures/s on one core (median of {} one-second samples; more follow the load)",
        median(&v_b_samples),
        v_b_samples.len()
    );

    // The block stream: every commit time, for the whole bench.
    let commits = Arc::new(Mutex::new(Commits::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let from = height(&network.apis[0])? + 1;
    let stream = {
        let commits = Arc::clone(&commits);
        let stop = Arc::clone(&stop);
        let api = network.apis[0].clone();
        std::thread::spawn(move || follow_blocks(&api, from, &commits, &stop))
    };

    let lone = lone_latency(&mut network, &commits, args.lone)?;
    if let Some(p50) = lone {
        eprintln!("lone transaction on the idle network: p50 {p50:.1} ms");
    }

    let mut sweep = Vec::new();
    let mut saturation = None;
    let final_rate = if args.sweep {
        let mut rate = f64::from(args.sweep_start);
        loop {
            let result = load_run(args, &mut network, &commits, rate)?;
            print_row(&result);
            let keeps_up = result.committed_tps >= 0.9 * rate && result.lost == 0;
            sweep.push(result);
            if !keeps_up {
                break;
            }
            rate *= args.sweep_factor;
        }
        let best = sweep
            .iter()
            .map(|r| r.committed_tps)
            .fold(0.0_f64, f64::max);
        if sweep.len() == 1 {
            eprintln!(
                "the first step already fell behind: T is the rate committed while overloaded; \
                 a lower --sweep-start reaches saturation from below"
            );
        }
        saturation = Some(best);
        0.8 * best
    } else {
        f64::from(args.rate)
    };
    let result = load_run(args, &mut network, &commits, final_rate)?;
    print_row(&result);
    stop.store(true, Ordering::Relaxed);
    drop(stream);
    // The machine's speed drifts (other tenants of the host): V_b is the median of
    // samples taken before the nodes started and after they stopped, on an idle machine
    // both times, so one slow or fast moment does not decide S.
    drop(network.cluster.take());
    v_b_samples.extend(verify_rate_samples());
    let v_b = median(&v_b_samples);
    let s = cores as f64 * v_b / validators as f64;
    eprintln!(
        "V_b = {v_b:.0} signatures/s on one core (median of {} samples, {:.0} to {:.0}); {cores} cores, {validators} validators: S = {s:.0} tx/s",
        v_b_samples.len(),
        v_b_samples.iter().copied().fold(f64::INFINITY, f64::min),
        v_b_samples.iter().copied().fold(0.0, f64::max),
    );

    let t = saturation.unwrap_or(result.committed_tps);
    let r = t / s;
    let report = json!({
        "validators": validators,
        "cores": cores,
        "accounts": network.accounts.len(),
        "batch": args.batch,
        "block_interval_ms": args.block_interval_ms,
        "fill_wait_ms": network.fill_wait_ms,
        "v_b_per_core": v_b,
        "v_b_samples": v_b_samples,
        "s": s,
        "t": t,
        "t_is_saturation": saturation.is_some(),
        // A sweep whose first step fell behind never saw the network keep up.
        "t_from_first_step_overloaded": saturation.is_some() && sweep.len() == 1,
        "r": r,
        "lone_p50_ms": lone,
        "sweep": sweep.iter().map(RunResult::to_json).collect::<Vec<_>>(),
        "run": result.to_json(),
    });
    print_table(&report, &result);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let json_path = args.out.join("bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg_path = args.out.join("bench.svg");
    let mut points = sweep.clone();
    points.push(result.clone());
    plot(&svg_path, &points).with_context(|| format!("writing {}", svg_path.display()))?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    let ok = result.lost == 0 && sweep.iter().all(|r| r.lost == 0);
    if !ok {
        eprintln!("FAILED: accepted transactions were not committed");
    }
    Ok(ok)
}

fn start(args: &Args) -> anyhow::Result<Network> {
    eprintln!(
        "starting {} validators with {} funded accounts on 127.0.0.{}...",
        args.validators, args.accounts, args.host
    );
    let mut options = ClusterOptions::new(args.validators, args.host);
    options.accounts = args.accounts;
    options.params = stele_ledger::ChainParams::default();
    options.block_interval_ms = args.block_interval_ms;
    if let Some(ms) = args.fill_wait_ms {
        options.fill_wait_ms = ms;
    }
    options.log_level = "warn".into();
    let fill_wait_ms = options.fill_wait_ms;
    let cluster = Cluster::start(options)?;
    let all: Vec<usize> = (0..args.validators).collect();
    cluster.wait_ready(&all, Duration::from_secs(60))?;
    let accounts = (1..=args.accounts)
        .map(|i| cluster.account_key(i))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let network = Network {
        apis: cluster.nodes.iter().map(|n| n.api.clone()).collect(),
        pids: cluster.nodes.iter().map(|n| n.pid()).collect(),
        domain: cluster.domain.clone(),
        chain_id: cluster.testnet.genesis.chain_id.clone(),
        nonces: vec![0; accounts.len()],
        accounts,
        treasury: cluster.testnet.accounts[0].key,
        fill_wait_ms: Some(fill_wait_ms),
        cluster: Some(cluster),
    };
    Ok(network)
}

fn attach(dir: &Path) -> anyhow::Result<Network> {
    let genesis = stele_genesis::load_genesis(&dir.join("genesis.json"))?;
    let mut apis = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path().join("config.toml");
        if path.exists() {
            let config = stele_genesis::NodeConfig::load(&path)?;
            apis.push(format!("http://{}", config.api.listen));
        }
    }
    apis.sort();
    if apis.is_empty() {
        bail!("{} holds no node*/config.toml", dir.display());
    }
    let mut accounts = Vec::new();
    let mut treasury = None;
    let accounts_dir = dir.join("accounts");
    for entry in std::fs::read_dir(&accounts_dir)
        .with_context(|| format!("reading {}", accounts_dir.display()))?
    {
        let path = entry?.path();
        let key = stele_genesis::read_key_file(&path)?;
        if path.file_stem().is_some_and(|s| s == "treasury") {
            treasury = Some(key.public_key());
        } else {
            accounts.push(key);
        }
    }
    if accounts.is_empty() {
        bail!("{} holds no account keys", accounts_dir.display());
    }
    // Start each account's nonces where the chain has them.
    let http = reqwest::blocking::Client::new();
    let mut nonces = Vec::with_capacity(accounts.len());
    for key in &accounts {
        let account: Value = http
            .get(format!(
                "{}/v1/accounts/{}",
                apis[0],
                key.public_key().to_hex()
            ))
            .send()?
            .json()?;
        nonces.push(account["next_nonce"].as_u64().unwrap_or(0));
    }
    Ok(Network {
        cluster: None,
        pids: vec![None; apis.len()],
        apis,
        domain: genesis.signing_domain()?,
        chain_id: genesis.chain_id.clone(),
        treasury: treasury.unwrap_or_else(|| accounts[0].public_key()),
        fill_wait_ms: None,
        nonces,
        accounts,
    })
}

fn height(api: &str) -> anyhow::Result<u64> {
    let status: Value = reqwest::blocking::get(format!("{api}/v1/status"))?.json()?;
    status["height"]
        .as_u64()
        .with_context(|| format!("no height in {status}"))
}

/// Reads `GET /v1/blocks?from=H` (reconnecting where a cut-off line says) and notes
/// when each block, and so each transaction, arrived.
fn follow_blocks(api: &str, mut from: u64, commits: &Mutex<Commits>, stop: &AtomicBool) {
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .expect("an HTTP client");
    while !stop.load(Ordering::Relaxed) {
        let Ok(response) = http.get(format!("{api}/v1/blocks?from={from}")).send() else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { break };
            let now = Instant::now();
            let Ok(mut value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(resume) = value["resume_from"].as_u64() {
                from = resume;
                break;
            }
            let Some(height) = value["height"].as_u64() else {
                continue;
            };
            let hashes = match value["tx_hashes"].take() {
                Value::Array(hashes) => hashes,
                _ => Vec::new(),
            };
            let mut commits = commits.lock().expect("not poisoned");
            let count = hashes.len();
            for hash in hashes {
                if let Value::String(hash) = hash {
                    commits.by_hash.insert(hash, now);
                }
            }
            commits.blocks.push((height, now, count));
            from = height + 1;
        }
    }
}

/// Signs the next transfer of account `index` (to the treasury, one unit).
fn sign_next(network: &mut Network, index: usize) -> (String, Vec<u8>) {
    let key = &network.accounts[index];
    let tx = Transaction {
        chain_id: network.chain_id.clone(),
        signer: key.public_key(),
        nonce: network.nonces[index],
        op: Operation::Transfer {
            to: network.treasury,
            amount: 1,
        },
    }
    .sign(&network.domain, key);
    network.nonces[index] += 1;
    (tx.hash().to_hex(), tx.encode())
}

/// p50 submit-to-commit latency of transactions sent one at a time on the idle network.
fn lone_latency(
    network: &mut Network,
    commits: &Mutex<Commits>,
    count: usize,
) -> anyhow::Result<Option<f64>> {
    if count == 0 {
        return Ok(None);
    }
    let http = reqwest::blocking::Client::new();
    let mut latencies = Vec::new();
    for i in 0..count {
        let (hash, bytes) = sign_next(network, i % network.accounts.len());
        let body = json!({ "txs": [hex::encode(bytes)] }).to_string();
        let api = &network.apis[i % network.apis.len()];
        let sent = Instant::now();
        let answer: Value = http
            .post(format!("{api}/v1/txs"))
            .header("content-type", "application/json")
            .body(body)
            .send()?
            .json()?;
        if answer["results"][0]["status"] != "accepted" {
            bail!("lone transaction refused: {answer}");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let committed = loop {
            if let Some(at) = commits.lock().expect("not poisoned").by_hash.get(&hash) {
                break *at;
            }
            if Instant::now() > deadline {
                bail!("lone transaction {hash} not committed within 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        latencies.push(committed.duration_since(sent).as_secs_f64() * 1e3);
        // Let the network go idle again.
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(Some(percentile(&mut latencies, 0.5)))
}

struct Batch {
    due: Instant,
    node: usize,
    /// The transactions as the API's binary batch: a borsh `Vec<Vec<u8>>` of the
    /// signed bytes (what a production client sends; JSON with hex doubles the bytes
    /// and costs both sides more than the transactions' own checks).
    body: Vec<u8>,
    hashes: Vec<String>,
}

struct Sent {
    due: Instant,
    sent: Instant,
    hashes: Vec<String>,
    results: Result<Vec<Value>, String>,
}

/// One run at `rate` tx/s for `args.duration` seconds, then a drain.
fn load_run(
    args: &Args,
    network: &mut Network,
    commits: &Mutex<Commits>,
    rate: f64,
) -> anyhow::Result<RunResult> {
    let total = (rate * args.duration as f64).round() as usize;
    eprintln!("run at {rate:.0} tx/s: signing {total} transfers...");
    // Sign everything first, spread over the accounts.
    let mut batches = Vec::new();
    let mut next_account = 0usize;
    let interval = Duration::from_secs_f64(args.batch as f64 / rate);
    let mut signed = 0;
    while signed < total {
        let n = args.batch.min(total - signed);
        let mut hashes = Vec::with_capacity(n);
        let mut txs = Vec::with_capacity(n);
        for _ in 0..n {
            let (hash, bytes) = sign_next(network, next_account);
            next_account = (next_account + 1) % network.accounts.len();
            hashes.push(hash);
            txs.push(bytes);
        }
        let node = batches.len() % network.apis.len();
        batches.push(Batch {
            due: Instant::now(), // set when the run starts
            node,
            body: borsh::to_vec(&txs).expect("borsh encoding to a Vec never fails"),
            hashes,
        });
        signed += n;
    }
    let settled = settle(network, Duration::from_secs(args.settle_max_secs));
    let cpu_before: Vec<Option<f64>> = network.pids.iter().map(|p| p.and_then(cpu_secs)).collect();
    let bench_cpu_before = cpu_secs(std::process::id());
    let blocks_before = {
        let mut commits = commits.lock().expect("not poisoned");
        // Room for this run's commit times now, before the clock starts. Grown while
        // the run goes, the map rehashed all its entries at once (at about 229,000
        // and 458,000 in all) while the block reader held the lock, and every block
        // read in that time was stamped late: a burst of false latency.
        commits.by_hash.reserve(total);
        commits.blocks.reserve(total / args.batch.max(1) + 1024);
        commits.blocks.len()
    };

    // Open loop: batch k is due at start + k x interval, whatever the answers do.
    let start = Instant::now() + Duration::from_millis(50);
    for (k, batch) in batches.iter_mut().enumerate() {
        batch.due = start + interval * k as u32;
    }
    let (work_tx, work_rx) = channel::<Batch>();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let (done_tx, done_rx) = channel::<Sent>();
    let mut workers = Vec::new();
    for _ in 0..args.senders {
        let work_rx = Arc::clone(&work_rx);
        let done_tx = done_tx.clone();
        let apis = network.apis.clone();
        workers.push(std::thread::spawn(move || {
            send_batches(&apis, &work_rx, &done_tx)
        }));
    }
    drop(done_tx);
    for batch in batches {
        let now = Instant::now();
        if batch.due > now {
            std::thread::sleep(batch.due - now);
        }
        work_tx.send(batch).expect("senders run");
    }
    drop(work_tx);
    let load_end = Instant::now();
    let sent: Vec<Sent> = collect(&done_rx);
    for worker in workers {
        let _ = worker.join();
    }

    let mut accepted = Vec::new();
    let mut rejected = 0;
    let mut first_rejection = None;
    let mut max_lag = Duration::ZERO;
    for batch in &sent {
        max_lag = max_lag.max(batch.sent.duration_since(batch.due));
        match &batch.results {
            Ok(results) => {
                for (hash, result) in batch.hashes.iter().zip(results) {
                    if result["status"] == "accepted" {
                        accepted.push((hash.clone(), batch.due));
                    } else {
                        rejected += 1;
                        first_rejection.get_or_insert_with(|| result.to_string());
                    }
                }
            }
            Err(e) => {
                rejected += batch.hashes.len();
                first_rejection.get_or_insert_with(|| e.clone());
            }
        }
    }

    // Drain: wait until every accepted transaction is committed, or the time is up.
    let deadline = load_end + Duration::from_secs(args.drain);
    loop {
        let missing = {
            let commits = commits.lock().expect("not poisoned");
            accepted
                .iter()
                .filter(|(h, _)| !commits.by_hash.contains_key(h))
                .count()
        };
        if missing == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cpu_after: Vec<Option<f64>> = network.pids.iter().map(|p| p.and_then(cpu_secs)).collect();
    let bench_cpu_secs = match (bench_cpu_before, cpu_secs(std::process::id())) {
        (Some(before), Some(after)) => after - before,
        _ => f64::NAN,
    };

    let commits = commits.lock().expect("not poisoned");
    let mut latencies = Vec::with_capacity(accepted.len());
    let mut seconds: Vec<Vec<f64>> = Vec::new();
    let mut last_commit = start;
    for (hash, due) in &accepted {
        if let Some(at) = commits.by_hash.get(hash) {
            let latency = at.saturating_duration_since(*due).as_secs_f64() * 1e3;
            latencies.push(latency);
            let second = due.saturating_duration_since(start).as_secs() as usize;
            if seconds.len() <= second {
                seconds.resize_with(second + 1, Vec::new);
            }
            seconds[second].push(latency);
            last_commit = last_commit.max(*at);
        }
    }
    let by_second = seconds
        .iter_mut()
        .map(|l| (l.len(), percentile(l, 0.50), percentile(l, 0.99)))
        .collect();
    let committed = latencies.len();
    let span = last_commit.duration_since(start).as_secs_f64().max(1e-3);
    let blocks: Vec<_> = commits.blocks[blocks_before..]
        .iter()
        .filter(|(_, at, _)| *at >= start && *at <= last_commit)
        .collect();
    Ok(RunResult {
        offered: rate,
        submitted: total,
        accepted: accepted.len(),
        rejected,
        committed,
        lost: accepted.len() - committed,
        committed_tps: committed as f64 / span,
        p50_ms: percentile(&mut latencies, 0.50),
        p90_ms: percentile(&mut latencies, 0.90),
        p99_ms: percentile(&mut latencies, 0.99),
        blocks: blocks.len() as u64,
        blocks_per_sec: blocks.len() as f64 / span,
        max_send_lag_ms: max_lag.as_secs_f64() * 1e3,
        cpu_secs: cpu_before
            .iter()
            .zip(&cpu_after)
            .map(|(b, a)| match (b, a) {
                (Some(b), Some(a)) => a - b,
                _ => f64::NAN,
            })
            .collect(),
        bench_cpu_secs,
        peak_rss_mib: network
            .pids
            .iter()
            .map(|p| p.and_then(peak_rss_mib).unwrap_or(f64::NAN))
            .collect(),
        first_rejection,
        by_second,
        settled,
    })
}

fn collect(done: &Receiver<Sent>) -> Vec<Sent> {
    done.iter().collect()
}

fn send_batches(
    apis: &[String],
    work: &Mutex<Receiver<Batch>>,
    done: &std::sync::mpsc::Sender<Sent>,
) {
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    loop {
        let batch = match work.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok(batch) = batch else { return };
        let sent = Instant::now();
        let results = http
            .post(format!("{}/v1/txs", apis[batch.node]))
            .header("content-type", "application/octet-stream")
            .body(batch.body)
            .send()
            .and_then(|r| r.json::<Value>())
            .map_err(|e| e.to_string())
            .and_then(|mut v| match v["results"].take() {
                Value::Array(results) => Ok(results),
                _ => Err(format!("unexpected answer: {v}")),
            });
        let _ = done.send(Sent {
            due: batch.due,
            sent,
            hashes: batch.hashes,
            results,
        });
    }
}

/// The `q` quantile (nearest rank) of `values`; NaN when empty.
fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

/// Waits up to `max` for the nodes' CPU use, summed, to fall under a tenth of a core
/// over one second; returns how long it waited, and whether they went quiet (None
/// when they are not ours to watch, or `max` is zero). A node whose CPU time cannot be
/// read (it exited) ends the wait as not quiet.
fn settle(network: &Network, max: Duration) -> Option<(f64, bool)> {
    // /proc counts CPU time in ticks of 10 ms: over four nodes a window of one second
    // reads to within about 0.04 cores.
    const WINDOW: Duration = Duration::from_secs(1);
    const QUIET_CORES: f64 = 0.1;
    let pids: Vec<u32> = network.pids.iter().flatten().copied().collect();
    if pids.is_empty() || max.is_zero() {
        return None;
    }
    let total = || pids.iter().map(|p| cpu_secs(*p)).sum::<Option<f64>>();
    let started = Instant::now();
    loop {
        let at = Instant::now();
        let before = total();
        std::thread::sleep(WINDOW);
        let waited = started.elapsed();
        let (Some(before), Some(after)) = (before, total()) else {
            eprintln!("  a node's CPU time could not be read (has it exited?)");
            return Some((waited.as_secs_f64(), false));
        };
        let busy = (after - before) / at.elapsed().as_secs_f64();
        if busy < QUIET_CORES {
            return Some((waited.as_secs_f64(), true));
        }
        if waited >= max {
            eprintln!(
                "  the nodes were still using {busy:.2} cores after {:.0} s: starting anyway",
                waited.as_secs_f64()
            );
            return Some((waited.as_secs_f64(), false));
        }
    }
}

/// User plus system CPU seconds of a process so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    Some((utime + stime) / ticks)
}

/// Peak resident memory of a process, MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Three one-second measurements of V_b: batched ed25519 verification on one core, in
/// batches of 1,024, as signatures per second.
fn verify_rate_samples() -> Vec<f64> {
    (0..3)
        .map(|_| stele_consensus::batch_verification_rate(1, 1024, Duration::from_secs(1)))
        .collect()
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn print_row(r: &RunResult) {
    eprintln!(
        "  offered {:>7.0} tx/s  committed {:>7.0} tx/s  p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  {:>5.1} blocks/s  accepted {} rejected {} lost {}{}",
        r.offered,
        r.committed_tps,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.blocks_per_sec,
        r.accepted,
        r.rejected,
        r.lost,
        match r.settled {
            Some((secs, true)) => format!("  (settled {secs:.1} s)"),
            Some((secs, false)) => format!("  (not quiet after {secs:.1} s)"),
            None => String::new(),
        }
    );
    if let Some(reason) = &r.first_rejection {
        eprintln!("  first rejection: {reason}");
    }
}

fn print_table(report: &Value, r: &RunResult) {
    println!();
    println!("stele-bench");
    println!(
        "  network        {} validators, {} cores, {} accounts, batches of {}",
        report["validators"], report["cores"], report["accounts"], report["batch"]
    );
    println!(
        "  V_b            {:.0} signatures/s (batched, one core)",
        report["v_b_per_core"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  S              {:.0} tx/s (cores x V_b / validators)",
        report["s"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "  T              {:.0} tx/s ({})",
        report["t"].as_f64().unwrap_or(f64::NAN),
        if report["t_from_first_step_overloaded"] == true {
            "committed at the sweep's first step, already overloaded: start lower"
        } else if report["t_is_saturation"] == true {
            "saturation, from the sweep"
        } else {
            "committed at the offered rate; not a saturation figure without --sweep"
        }
    );
    println!(
        "  R = T / S      {:.2}",
        report["r"].as_f64().unwrap_or(f64::NAN)
    );
    if let Some(lone) = report["lone_p50_ms"].as_f64() {
        println!("  lone tx p50    {lone:.1} ms (idle network, submit to commit)");
    }
    println!(
        "  run            offered {:.0} tx/s, committed {:.0} tx/s, {:.1} blocks/s",
        r.offered, r.committed_tps, r.blocks_per_sec
    );
    println!(
        "  latency        p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms",
        r.p50_ms, r.p90_ms, r.p99_ms
    );
    println!(
        "  transactions   {} submitted, {} accepted, {} rejected, {} committed, {} lost",
        r.submitted, r.accepted, r.rejected, r.committed, r.lost
    );
    for (i, (cpu, rss)) in r.cpu_secs.iter().zip(&r.peak_rss_mib).enumerate() {
        println!("  node{i}          CPU {cpu:.1} s during the run, peak RSS {rss:.0} MiB");
    }
    println!(
        "  stele-bench    CPU {:.1} s during the run (load generator, block reader)",
        r.bench_cpu_secs
    );
}

/// Offered vs committed throughput, and the latency percentiles, against the offered
/// rate.
fn plot(path: &Path, runs: &[RunResult]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let mut runs: Vec<&RunResult> = runs.iter().collect();
    runs.sort_by(|a, b| a.offered.total_cmp(&b.offered));
    let root = SVGBackend::new(path, (1000, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(500);
    let max_rate = runs
        .iter()
        .map(|r| r.offered.max(r.committed_tps))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("throughput", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_rate)?;
    chart
        .configure_mesh()
        .x_desc("offered tx/s")
        .y_desc("committed tx/s")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (max_rate, max_rate)],
            &BLACK.mix(0.3),
        ))?
        .label("offered = committed")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    chart
        .draw_series(LineSeries::new(
            runs.iter().map(|r| (r.offered, r.committed_tps)),
            &BLUE,
        ))?
        .label("committed")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart.draw_series(
        runs.iter()
            .map(|r| Circle::new((r.offered, r.committed_tps), 3, BLUE.filled())),
    )?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let max_latency = runs
        .iter()
        .map(|r| r.p99_ms)
        .filter(|v| v.is_finite())
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&right)
        .caption("submit-to-commit latency", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_rate, 0.0..max_latency)?;
    chart
        .configure_mesh()
        .x_desc("offered tx/s")
        .y_desc("ms")
        .draw()?;
    for (name, color, pick) in [
        (
            "p50",
            GREEN,
            (|r: &RunResult| r.p50_ms) as fn(&RunResult) -> f64,
        ),
        ("p90", BLUE, |r: &RunResult| r.p90_ms),
        ("p99", RED, |r: &RunResult| r.p99_ms),
    ] {
        chart
            .draw_series(LineSeries::new(
                runs.iter()
                    .filter(|r| pick(r).is_finite())
                    .map(|r| (r.offered, pick(r))),
                &color,
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{median, percentile};

    #[test]
    fn median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[65_000.0, 49_000.0, 50_000.0, 48_000.0]), 49_500.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&mut values, 0.5), 50.0);
        assert_eq!(percentile(&mut values, 0.99), 99.0);
        assert_eq!(percentile(&mut values, 1.0), 100.0);
        assert!(percentile(&mut [], 0.5).is_nan());
    }
}
