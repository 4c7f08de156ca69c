//! State benchmarks, each beside a baseline measured in the same run:
//!
//! - `smt_rocksdb`: update N existing accounts of a 1,000,000-account state (read the
//!   old value, compute the new tree root, write the values and the undo record in one
//!   fsynced RocksDB batch), for N = 1,000 and 10,000;
//! - `execution`: execute a block of 10,000 transfers on a RocksDB-backed state, with
//!   and without checking its signatures;
//! - `ed25519_baseline`: batched ed25519 verification on one core.
//!
//! At the end the state-update rate is printed as a multiple of the baseline rate. The
//! target is at least 2x: every transfer touches two accounts and every validator
//! verifies every signature, so the state must never be the bottleneck.
//!
//! `STELE_BENCH_ACCOUNTS` overrides the state size (default 1,000,000).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use stele_consensus::{
    BatchEntry, CommitCertificate, Hash, MessageKind, Signature, SigningDomain, SigningKey,
    Validator, ValidatorSet, VerificationKey, verify_batch,
};
use stele_ledger::state::ValueChange;
use stele_ledger::{
    Block, BlockExecutor, ChainContext, ChainParams, ExecutionOutcome, Genesis, GenesisAccount,
    GenesisValidator, Header, Operation, SignedTransaction, StateDelta, StateReader, Store,
    StoreOptions, Transaction, validate_block,
};

/// The allocator the node binary uses: the tree allocates a few nodes per changed key.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH_SIZES: [usize; 2] = [1_000, 10_000];

/// Where the time of a state update goes: [read old values, compute tree, commit], in
/// seconds, and the number of updates measured. Printed after each batch size.
#[derive(Default)]
struct Phases {
    seconds: [f64; 3],
    updates: u32,
}

thread_local! {
    static PHASES: std::cell::RefCell<Phases> = std::cell::RefCell::new(Phases::default());
}

fn record_phase(phase: usize, started: std::time::Instant) {
    PHASES.with(|p| p.borrow_mut().seconds[phase] += started.elapsed().as_secs_f64());
}
const BASELINE_BATCH: usize = 1024;
const EXECUTION_ACCOUNTS: usize = 20_000;
const EXECUTION_TRANSFERS: usize = 10_000;

fn accounts_in_state() -> usize {
    std::env::var("STELE_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn seeded_key(label: &str, i: usize) -> SigningKey {
    SigningKey::from_seed(*Hash::digest(format!("{label}-{i}").as_bytes()).as_bytes())
}

fn small_genesis(chain_id: &str, accounts: Vec<GenesisAccount>) -> (Genesis, SigningKey) {
    let validator = seeded_key("validator", 0);
    let genesis = Genesis {
        chain_id: chain_id.into(),
        genesis_time_ms: 1,
        params: ChainParams {
            max_block_txs: 100_000,
            max_block_bytes: 64 * 1024 * 1024,
            ..ChainParams::default()
        },
        validators: vec![GenesisValidator {
            name: "v0".into(),
            key: validator.public_key(),
            power: 1,
            address: "127.0.0.1:1".into(),
        }],
        accounts,
        peers: vec![],
    };
    (genesis, validator)
}

/// A store holding many keys, updated through synthetic empty blocks whose state change
/// is given directly: this measures the tree and the storage, not execution.
struct StateBench {
    _dir: tempfile::TempDir,
    store: Store,
    set: ValidatorSet,
    proposer: SigningKey,
    keys: usize,
}

impl StateBench {
    fn new(keys: usize) -> StateBench {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (genesis, proposer) = small_genesis("bench-state", vec![]);
        let store = Store::open(dir.path(), &genesis, StoreOptions::default()).expect("open store");
        let set = ValidatorSet::new(vec![Validator {
            key: proposer.public_key(),
            power: 1,
        }])
        .expect("one validator");
        let mut bench = StateBench {
            _dir: dir,
            store,
            set,
            proposer,
            keys: 0,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let started = std::time::Instant::now();
        const CHUNK: usize = 50_000;
        while bench.keys < keys {
            let n = CHUNK.min(keys - bench.keys);
            let values = (bench.keys..bench.keys + n)
                .map(|i| ValueChange {
                    key: Self::key(i),
                    old: None,
                    new: Some(random_value(&mut rng)),
                })
                .collect();
            bench.commit(values);
            bench.keys += n;
        }
        eprintln!("populated {keys} keys in {:.1?}", started.elapsed());
        bench
    }

    fn key(i: usize) -> Hash {
        Hash::digest(&(i as u64).to_le_bytes())
    }

    /// Picks `n` distinct existing keys and new values for them.
    fn pick_updates(&self, rng: &mut StdRng, n: usize) -> Vec<(Hash, Vec<u8>)> {
        let mut picked = std::collections::HashSet::with_capacity(n);
        while picked.len() < n {
            picked.insert(rng.random_range(0..self.keys));
        }
        picked
            .into_iter()
            .map(|i| (Self::key(i), random_value(rng)))
            .collect()
    }

    /// Reads the old values (one batched read, as the executor does), computes the new
    /// root and commits it in one batch.
    fn update(&self, updates: Vec<(Hash, Vec<u8>)>) {
        let started = std::time::Instant::now();
        let keys: Vec<Hash> = updates.iter().map(|(k, _)| *k).collect();
        let old = self.store.values(&keys).expect("read");
        record_phase(0, started);
        let values = updates
            .into_iter()
            .zip(old)
            .map(|((key, new), old)| ValueChange {
                key,
                old,
                new: Some(new),
            })
            .collect();
        self.commit(values);
        PHASES.with(|p| p.borrow_mut().updates += 1);
    }

    fn commit(&self, values: Vec<ValueChange>) {
        let tip = self.store.tip();
        let height = tip.height + 1;
        let started = std::time::Instant::now();
        let delta = StateDelta::compute(&self.store, height, values).expect("tree update");
        record_phase(1, started);
        let started = std::time::Instant::now();
        let header = Header {
            chain_id: "bench-state".into(),
            height,
            parent_hash: tip.block_hash,
            time_ms: tip.time_ms + 1,
            proposer: self.proposer.public_key(),
            tx_root: Hash::ZERO,
            receipts_root: Hash::ZERO,
            state_root: delta.root,
            validator_set_hash: self.set.hash(),
            next_validator_set_hash: self.set.hash(),
            last_commit_hash: Hash::ZERO,
        };
        let block = Block {
            header,
            txs: vec![],
            last_commit: None,
        };
        let certificate = CommitCertificate {
            height,
            view: 0,
            block_hash: block.hash(),
            signatures: vec![],
        };
        let outcome = ExecutionOutcome {
            height,
            tx_root: Hash::ZERO,
            receipts: vec![],
            receipts_root: Hash::ZERO,
            delta,
            validator_set: self.set.clone(),
            next_validator_set: self.set.clone(),
        };
        self.store
            .commit_block(&block, &certificate, &outcome)
            .expect("commit");
        record_phase(2, started);
    }
}

/// An account-sized value (balance, nonce, roles).
fn random_value(rng: &mut StdRng) -> Vec<u8> {
    let mut value = vec![0u8; 17];
    rng.fill_bytes(&mut value);
    value
}

fn bench_smt(c: &mut Criterion) {
    let accounts = accounts_in_state();
    let state = StateBench::new(accounts);
    let mut rng = StdRng::seed_from_u64(8);
    let mut group = c.benchmark_group("smt_rocksdb");
    group.sample_size(20);
    for n in BATCH_SIZES {
        PHASES.with(|p| *p.borrow_mut() = Phases::default());
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("update_commit", n), |b| {
            b.iter_batched(
                || state.pick_updates(&mut rng, n),
                |updates| state.update(updates),
                BatchSize::PerIteration,
            )
        });
        PHASES.with(|p| {
            let p = p.borrow();
            let per_update_ms = |i: usize| p.seconds[i] * 1e3 / f64::from(p.updates.max(1));
            eprintln!(
                "batch {n}: mean per update over {} updates: read {:.2} ms, tree {:.2} ms, commit {:.2} ms",
                p.updates,
                per_update_ms(0),
                per_update_ms(1),
                per_update_ms(2)
            );
        });
    }
    group.finish();
    // The store must still check out after everything the bench did to it.
    let report = state
        .store
        .check_integrity()
        .expect("store integrity after the bench");
    eprintln!(
        "after bench: {} values, {} kept heights, height {}",
        report.values, report.versions, report.height
    );
    let tree = state.store.tree().expect("latest tree");
    let (live, slots) = (tree.arena_nodes(), tree.arena_slots());
    eprintln!(
        "tree arena: {} internal nodes in {} slots, {} leaves in {} slots",
        live.0, slots.0, live.1, slots.1
    );
    drop(tree);
    // Reopening rebuilds the tree from every value and the kept heights from the undo
    // records: what a node restart costs at this size.
    let StateBench {
        _dir: dir, store, ..
    } = state;
    let genesis = store.genesis().clone();
    drop(store);
    let started = std::time::Instant::now();
    let store = Store::open(dir.path(), &genesis, StoreOptions::default()).expect("reopen");
    eprintln!(
        "reopened {} values with {} kept heights rebuilt in {:.2?}",
        report.values,
        store.rebuilt_versions(),
        started.elapsed()
    );
}

/// The same tree update with nothing written: the tree's own CPU cost, apart from
/// storage (each update makes a new version, as a block's execution does, and drops
/// it).
fn bench_smt_memory(c: &mut Criterion) {
    let accounts = accounts_in_state();
    let mut rng = StdRng::seed_from_u64(9);
    let tree = stele_ledger::smt::Tree::from_leaves(
        (0..accounts)
            .map(|i| (StateBench::key(i), random_value(&mut rng)))
            .collect(),
    );
    let mut group = c.benchmark_group("smt_memory");
    group.sample_size(20);
    for n in BATCH_SIZES {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("update", n), |b| {
            b.iter_batched(
                || {
                    (0..n)
                        .map(|_| {
                            let i = rng.random_range(0..accounts);
                            (StateBench::key(i), Some(random_value(&mut rng)))
                        })
                        .collect::<Vec<_>>()
                },
                |updates| black_box(tree.update(updates)),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

struct ExecutionBench {
    _dir: tempfile::TempDir,
    store: Store,
    context: ChainContext,
    block: Block,
}

impl ExecutionBench {
    fn new() -> ExecutionBench {
        let keys: Vec<SigningKey> = (0..EXECUTION_ACCOUNTS)
            .map(|i| seeded_key("account", i))
            .collect();
        let accounts = keys
            .iter()
            .map(|k| GenesisAccount {
                account: k.public_key(),
                balance: 1_000_000,
                roles: vec![],
            })
            .collect();
        let (genesis, proposer) = small_genesis("bench-exec", accounts);
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = Store::open(dir.path(), &genesis, StoreOptions::default()).expect("open store");
        let context = ChainContext {
            domain: genesis.signing_domain().expect("domain"),
            params: genesis.params.clone(),
            keys: None,
        };
        // Each account sends at most once, so every nonce is 0; receivers are random.
        let mut rng = StdRng::seed_from_u64(11);
        let txs: Vec<SignedTransaction> = (0..EXECUTION_TRANSFERS)
            .map(|i| {
                let to = keys[rng.random_range(0..EXECUTION_ACCOUNTS)].public_key();
                Transaction {
                    chain_id: genesis.chain_id.clone(),
                    signer: keys[i].public_key(),
                    nonce: 0,
                    op: Operation::Transfer {
                        to,
                        amount: 1 + i as u64 % 100,
                    },
                }
                .sign(&context.domain, &keys[i])
            })
            .collect();
        let tip = store.tip();
        let built =
            stele_ledger::build_block(&store, &context, &tip, proposer.public_key(), 2, txs, None)
                .expect("build block");
        assert!(built.rejected.is_empty());
        ExecutionBench {
            _dir: dir,
            store,
            context,
            block: built.block,
        }
    }
}

fn bench_execution(c: &mut Criterion) {
    let bench = ExecutionBench::new();
    let mut group = c.benchmark_group("execution");
    group.sample_size(10);
    group.throughput(Throughput::Elements(EXECUTION_TRANSFERS as u64));
    group.bench_function(BenchmarkId::new("transfers", EXECUTION_TRANSFERS), |b| {
        b.iter(|| {
            let mut executor = BlockExecutor::new(&bench.store, &bench.context).expect("executor");
            for tx in &bench.block.txs {
                executor.apply(tx).expect("valid transfer");
            }
            black_box(executor.finish().expect("finish"))
        })
    });
    let tip = bench.store.tip();
    group.bench_function(
        BenchmarkId::new("validate_with_signatures", EXECUTION_TRANSFERS),
        |b| {
            b.iter(|| {
                black_box(
                    validate_block(
                        &bench.store,
                        &bench.context,
                        &tip,
                        None,
                        &bench.block,
                        &|_| false,
                        None,
                    )
                    .expect("valid block"),
                )
            })
        },
    );
    group.finish();
}

fn bench_baseline(c: &mut Criterion) {
    let domain = SigningDomain::new("bench").expect("domain");
    let mut keys: Vec<VerificationKey> = Vec::with_capacity(BASELINE_BATCH);
    let mut messages = Vec::with_capacity(BASELINE_BATCH);
    let mut signatures: Vec<Signature> = Vec::with_capacity(BASELINE_BATCH);
    for i in 0..BASELINE_BATCH {
        let key = seeded_key("baseline", i);
        let message = domain.signing_bytes(MessageKind::Transaction, &[i as u8; 120]);
        signatures.push(key.sign_raw(&message));
        keys.push(key.public_key().verification_key().expect("valid key"));
        messages.push(message);
    }
    let entries: Vec<BatchEntry<'_>> = (0..BASELINE_BATCH)
        .map(|i| BatchEntry {
            key: &keys[i],
            signed_bytes: &messages[i],
            signature: &signatures[i],
        })
        .collect();
    let mut group = c.benchmark_group("ed25519_baseline");
    group.sample_size(30);
    group.throughput(Throughput::Elements(BASELINE_BATCH as u64));
    group.bench_function(BenchmarkId::new("verify_batch", BASELINE_BATCH), |b| {
        b.iter(|| verify_batch(black_box(&entries)).expect("valid batch"))
    });
    group.finish();
}

/// Mean time per iteration, in nanoseconds, from criterion's saved estimates. Means,
/// not medians: RocksDB flushes its memtables every so many blocks and compacts in
/// the background, and a median would leave the blocks that wait on it out of the
/// figure.
fn mean_ns(group: &str, bench: &str) -> Option<f64> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target
        .join("criterion")
        .join(group)
        .join(bench)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn report() {
    let Some(baseline_ns) = mean_ns(
        "ed25519_baseline",
        &format!("verify_batch/{BASELINE_BATCH}"),
    ) else {
        eprintln!("no baseline measurement found; run the whole bench to get the ratio report");
        return;
    };
    let baseline_rate = BASELINE_BATCH as f64 / (baseline_ns / 1e9);
    println!("\nratio report (means from this run)");
    println!("  ed25519 batched verification, one core: {baseline_rate:>12.0} signatures/s");
    for n in BATCH_SIZES {
        if let Some(ns) = mean_ns("smt_rocksdb", &format!("update_commit/{n}")) {
            let rate = n as f64 / (ns / 1e9);
            println!(
                "  state updates committed, batch {n:>6}: {rate:>12.0} keys/s = {:.2} x baseline (target >= 2)",
                rate / baseline_rate
            );
        }
    }
    for n in BATCH_SIZES {
        if let Some(ns) = mean_ns("smt_memory", &format!("update/{n}")) {
            let rate = n as f64 / (ns / 1e9);
            println!(
                "  tree updates in memory, batch {n:>6}:   {rate:>12.0} keys/s = {:.2} x baseline",
                rate / baseline_rate
            );
        }
    }
    if let Some(ns) = mean_ns("execution", &format!("transfers/{EXECUTION_TRANSFERS}")) {
        let rate = EXECUTION_TRANSFERS as f64 / (ns / 1e9);
        println!(
            "  transfers executed (no signatures):    {rate:>12.0} tx/s   = {:.2} x baseline",
            rate / baseline_rate
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    bench_baseline(&mut criterion);
    bench_smt(&mut criterion);
    bench_smt_memory(&mut criterion);
    bench_execution(&mut criterion);
    criterion.final_summary();
    report();
}
