//! Crash consistency with real crashes: a child process commits blocks to a RocksDB
//! store in a loop and is killed with SIGKILL at a random moment; the store is then
//! reopened and checked, many times over.
//!
//! After every kill the store must hold a complete chain up to some height and nothing
//! above it: every block with its certificate and receipts, a state whose root matches
//! the tip header (recomputed from every stored value), every kept older state matching
//! its header, and a
//! history that verifies from genesis.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{account_key, certify, validator_key};
use stele_consensus::{PublicKey, SigningKey};
use stele_ledger::{
    Account, BlockExecutor, ChainContext, Genesis, HistoryVerifier, Operation, StateKey,
    StateReader, Store, StoreOptions, Transaction, build_block,
};

const CHILD_DIR_ENV: &str = "STELE_CRASH_CHILD_DIR";
const CHILD_SYNC_ENV: &str = "STELE_CRASH_CHILD_SYNC";
const CHILD_KEPT_ENV: &str = "STELE_CRASH_CHILD_KEPT";
const ACCOUNTS: usize = 50;
const TXS_PER_BLOCK: usize = 60;

fn genesis() -> Genesis {
    common::genesis("crash", 4, ACCOUNTS)
}

fn store_options(sync: bool, state_versions_kept: u64) -> StoreOptions {
    StoreOptions {
        state_versions_kept,
        sync_writes: sync,
        block_cache_bytes: 8 << 20,
    }
}

/// The child: commits blocks until killed. Ignored unless run by the parent test.
#[test]
#[ignore = "run as a child process by crash_and_reopen_many_times"]
fn crash_child_commit_loop() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let sync = std::env::var(CHILD_SYNC_ENV).is_ok_and(|v| v == "1");
    let kept: u64 = std::env::var(CHILD_KEPT_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let genesis = genesis();
    let store = Store::open(dir.as_ref(), &genesis, store_options(sync, kept)).expect("open store");
    let context = ChainContext {
        domain: genesis.signing_domain().unwrap(),
        params: genesis.params.clone(),
        keys: None,
    };
    loop {
        commit_next_block(&store, &context);
    }
}

fn account(store: &Store, key: &PublicKey) -> Option<Account> {
    store.decoded(StateKey::Account(*key)).unwrap()
}

/// Builds, certifies and commits one block of transfers plus one new account, with
/// contents drawn from the height (so every run continues where the last one stopped).
fn commit_next_block(store: &Store, context: &ChainContext) {
    let tip = store.tip();
    let height = tip.height + 1;
    let mut rng = height.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = |bound: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % bound as u64) as usize
    };
    let mut nonces: std::collections::HashMap<PublicKey, u64> = std::collections::HashMap::new();
    let mut sign = |key: &SigningKey, op: Operation| {
        let nonce = nonces
            .entry(key.public_key())
            .or_insert_with(|| account(store, &key.public_key()).expect("funded").nonce);
        let tx = Transaction {
            chain_id: context.chain_id().to_owned(),
            signer: key.public_key(),
            nonce: *nonce,
            op,
        }
        .sign(&context.domain, key);
        *nonce += 1;
        tx
    };
    let mut txs = vec![sign(
        &account_key(0),
        Operation::CreateAccount {
            account: common::key(&format!("crash-new-{height}")).public_key(),
        },
    )];
    for _ in 0..TXS_PER_BLOCK {
        let from = next(ACCOUNTS);
        let to = next(ACCOUNTS);
        txs.push(sign(
            &account_key(from),
            Operation::Transfer {
                to: account_key(to).public_key(),
                amount: 1 + next(1000) as u64,
            },
        ));
    }
    let set = BlockExecutor::new(store, context)
        .unwrap()
        .validator_set()
        .clone();
    let last_commit = if tip.height == 0 {
        None
    } else {
        store.certificate(tip.height).unwrap()
    };
    let proposer = set.validators()[height as usize % set.len()].key;
    let built = build_block(
        store,
        context,
        &tip,
        proposer,
        tip.time_ms + 1_000,
        txs,
        last_commit,
    )
    .unwrap();
    assert!(built.rejected.is_empty(), "{:?}", built.rejected);
    let keys: Vec<SigningKey> = (0..4).map(validator_key).collect();
    let signers: Vec<&SigningKey> = keys.iter().collect();
    let certificate = certify(context, height, built.block.hash(), &signers);
    store
        .commit_block(&built.block, &certificate, &built.outcome)
        .unwrap();
}

/// Deterministic delays in `[min, max)` milliseconds.
struct Delays(u64);

impl Delays {
    fn next(&mut self, min: u64, max: u64) -> Duration {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis(min + (self.0 >> 33) % (max - min))
    }
}

#[test]
fn crash_and_reopen_many_times() {
    let iterations: usize = std::env::var("STELE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let genesis = genesis();
    let mut verifier = HistoryVerifier::new(&genesis).unwrap();
    let mut delays = Delays(0x5eed);
    let started = Instant::now();
    let mut kills_mid_run = 0;
    let mut rebuilt_versions = 0;
    for iteration in 0..iterations {
        let sync = iteration % 2 == 0;
        // The child keeps one, a few or many older states: its commits delete undo
        // records at different points, and reopening (with a window of 8) finds more
        // or fewer of them to rebuild from.
        let kept = [1u64, 3, 64][iteration % 3];
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "crash_child_commit_loop",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SYNC_ENV, if sync { "1" } else { "0" })
            .env(CHILD_KEPT_ENV, kept.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(delays.next(50, 700));
        // Child::kill sends SIGKILL on Unix: no destructor, no flush, no cleanup runs.
        child.kill().unwrap();
        let output = child.wait_with_output().unwrap();
        if output.status.code().is_some() {
            // The child ended on its own: it must have failed.
            panic!(
                "child exited with {:?} before being killed:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        kills_mid_run += 1;

        let store = Store::open(dir.path(), &genesis, store_options(true, 8))
            .unwrap_or_else(|e| panic!("iteration {iteration}: reopening failed: {e}"));
        rebuilt_versions += store.rebuilt_versions();
        let tip = store.tip();
        let verified = verifier.summary().unwrap().height;
        // A process crash loses nothing RocksDB acknowledged, fsync or not.
        assert!(
            tip.height >= verified,
            "iteration {iteration}: height went back from {verified} to {}",
            tip.height
        );
        // `Store::block` hides the next height's slot (a safety record may have put
        // a prepared block there); the certificate, written in the same batch as a
        // committed block, shows that no commit went past the tip.
        assert!(
            store.block(tip.height + 1).unwrap().is_none(),
            "a block above the tip"
        );
        assert!(
            store.certificate(tip.height + 1).unwrap().is_none(),
            "a certificate above the tip"
        );
        for height in verified + 1..=tip.height {
            let block = store.block(height).unwrap().expect("block below the tip");
            let certificate = store
                .certificate(height)
                .unwrap()
                .expect("certificate below the tip");
            let receipts = store
                .receipts(height)
                .unwrap()
                .expect("receipts below the tip");
            assert_eq!(receipts.len(), block.txs.len());
            for (index, tx) in block.txs.iter().enumerate() {
                let location = store.tx_location(&tx.hash()).unwrap().expect("indexed");
                assert_eq!((location.height, location.index), (height, index as u32));
            }
            verifier
                .verify_next(&block, &certificate)
                .unwrap_or_else(|e| {
                    panic!("iteration {iteration}: stored history does not verify: {e}")
                });
        }
        let report = store
            .check_integrity()
            .unwrap_or_else(|e| panic!("iteration {iteration}: {e}"));
        assert_eq!(report.height, tip.height);
        assert_eq!(report.state_root, verifier.summary().unwrap().state_root);
        if tip.height > 0 {
            assert_eq!(tip.block_hash, verifier.summary().unwrap().block_hash);
        }
        // The reopened store keeps working: commit one block before the next crash.
        let context = ChainContext {
            domain: genesis.signing_domain().unwrap(),
            params: genesis.params.clone(),
            keys: None,
        };
        commit_next_block(&store, &context);
        let block = store.block(tip.height + 1).unwrap().unwrap();
        let certificate = store.certificate(tip.height + 1).unwrap().unwrap();
        verifier.verify_next(&block, &certificate).unwrap();
    }
    let summary = verifier.summary().unwrap();
    eprintln!(
        "crash test: {kills_mid_run} SIGKILLs, {} blocks and {} transactions verified, \
         {rebuilt_versions} older states rebuilt from undo records on reopening, in {:.1?}",
        summary.height,
        summary.transactions,
        started.elapsed()
    );
    assert!(rebuilt_versions > 0, "no reopening rebuilt an older state");
    assert_eq!(kills_mid_run, iterations);
    // Each iteration commits one block itself; the children must have added more.
    assert!(
        summary.height > 2 * iterations as u64,
        "children committed too little ({} blocks) for the kills to land mid-commit",
        summary.height
    );
}
