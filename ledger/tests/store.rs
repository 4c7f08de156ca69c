//! The RocksDB store: commits, reopening, historical proofs, pruning, refusals.
#![allow(clippy::unwrap_used)]

mod common;

use common::{TestChain, account_key};
use stele_consensus::{Hash, ValidatorSet};
use stele_ledger::{
    ChainTip, LedgerError, StateKey, StateReader, Store, StoreOptions, validate_block, value_hash,
};

fn options(kept: u64) -> StoreOptions {
    StoreOptions {
        state_versions_kept: kept,
        sync_writes: false,
        block_cache_bytes: 8 << 20,
    }
}

/// A chain of `blocks` blocks with a few transfers each.
fn chain(blocks: usize) -> TestChain {
    let mut chain = TestChain::new("store", 4, 8);
    for h in 0..blocks {
        let txs = (0..5)
            .map(|i| chain.transfer((h + i) % 8, (h + 2 * i + 1) % 8, 1 + i as u64))
            .collect();
        chain.produce(txs);
    }
    chain
}

/// Validates each block against the store's state (the store is the executor's state
/// reader here) and commits it.
fn commit_all(store: &Store, chain: &TestChain, from: usize, to: usize) {
    for (block, certificate) in &chain.blocks[from..to] {
        let tip = store.tip();
        let parent_set: Option<ValidatorSet> = (tip.height > 0).then(|| {
            chain.outcomes[tip.height as usize - 1]
                .validator_set
                .clone()
        });
        let outcome = validate_block(
            store,
            &chain.context,
            &tip,
            parent_set.as_ref(),
            block,
            &|_| false,
            Some(certificate),
        )
        .unwrap();
        store.commit_block(block, certificate, &outcome).unwrap();
    }
}

#[test]
fn commits_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(12);
    {
        let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
        assert_eq!(store.tip().height, 0);
        assert_eq!(
            store.root().unwrap(),
            chain.genesis.memory_state().unwrap().root().unwrap()
        );
        commit_all(&store, &chain, 0, 7);
    }
    let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
    assert_eq!(store.tip().height, 7);
    commit_all(&store, &chain, 7, 12);
    let tip = store.tip();
    assert_eq!(
        tip,
        ChainTip {
            height: 12,
            block_hash: chain.tip.block_hash,
            time_ms: chain.tip.time_ms
        }
    );
    assert_eq!(store.root().unwrap(), chain.state.root().unwrap());
    for (i, (block, certificate)) in chain.blocks.iter().enumerate() {
        let height = i as u64 + 1;
        assert_eq!(store.block(height).unwrap().as_ref(), Some(block));
        assert_eq!(
            store.certificate(height).unwrap().as_ref(),
            Some(certificate)
        );
        assert_eq!(
            store.receipts(height).unwrap().unwrap(),
            chain.outcomes[i].receipts
        );
        for (index, tx) in block.txs.iter().enumerate() {
            let location = store.tx_location(&tx.hash()).unwrap().unwrap();
            assert_eq!((location.height, location.index as usize), (height, index));
        }
    }
    // A hash that differs from an indexed one in its last bit, or in everything, is
    // not found. (The first seven blocks were flushed to a table file when the store
    // reopened, the rest are in the memtable, so both are asked.)
    for height in [1, 12] {
        let indexed = chain.blocks[height - 1].0.txs[0].hash();
        let mut near = *indexed.as_bytes();
        near[31] ^= 1;
        assert!(
            store
                .tx_location(&Hash::from_bytes(near))
                .unwrap()
                .is_none()
        );
    }
    assert!(
        store
            .tx_location(&Hash::digest(b"never sent"))
            .unwrap()
            .is_none()
    );
    assert!(store.block(13).unwrap().is_none());
    let report = store.check_integrity().unwrap();
    assert_eq!(report.state_root, chain.tip_state_root());
    assert_eq!(report.values, 8 + 2);
}

#[test]
fn proofs_for_each_kept_height_and_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(10);
    let kept = 4;
    let store = Store::open(dir.path(), &chain.genesis, options(kept)).unwrap();
    commit_all(&store, &chain, 0, 10);
    let account = StateKey::Account(account_key(3).public_key()).hash();
    let absent = StateKey::Account(common::key("nobody").public_key()).hash();
    // The account's value after each height, from an independent in-memory replay.
    let mut replay = stele_ledger::HistoryVerifier::new(&chain.genesis).unwrap();
    let mut expected_values = vec![None];
    for (block, certificate) in &chain.blocks {
        replay.verify_next(block, certificate).unwrap();
        expected_values.push(replay.state().value(&account).unwrap());
    }
    assert!(
        expected_values[7..].windows(2).any(|w| w[0] != w[1]),
        "the account must change within the kept window for this test to mean anything"
    );
    for height in 10 - kept + 1..=10 {
        let root = chain.blocks[height as usize - 1].0.header.state_root;
        let (value, proof) = store.prove(&account, height).unwrap();
        assert_eq!(value, expected_values[height as usize], "height {height}");
        let value = value.expect("account exists");
        proof
            .verify(&root, &account, Some(&value_hash(&value)))
            .unwrap();
        let (none, proof) = store.prove(&absent, height).unwrap();
        assert!(none.is_none());
        proof.verify(&root, &absent, None).unwrap();
        // A proof of one height does not verify against another height's root.
        let other_root = chain.blocks[height as usize - 2].0.header.state_root;
        assert!(
            store
                .prove(&account, height)
                .unwrap()
                .1
                .verify(&other_root, &account, Some(&value_hash(&value)))
                .is_err()
        );
    }
    assert!(matches!(
        store.prove(&account, 10 - kept),
        Err(LedgerError::VersionUnavailable {
            version: 6,
            oldest: 7,
            latest: 10
        })
    ));
    assert!(matches!(
        store.prove(&account, 11),
        Err(LedgerError::VersionUnavailable { .. })
    ));
    let report = store.check_integrity().unwrap();
    assert_eq!((report.versions, report.undo_records), (kept, kept - 1));
}

/// Changing the kept window between runs: a smaller one drops the undo records it no
/// longer needs when the store opens, a larger one fills up as blocks come.
#[test]
fn kept_window_can_shrink_and_grow_between_runs() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(30);
    let reopen = |kept: u64| Store::open(dir.path(), &chain.genesis, options(kept)).unwrap();
    let counts = |store: &Store| {
        let report = store.check_integrity().unwrap();
        (report.height, report.versions, report.undo_records)
    };
    {
        let store = reopen(8);
        commit_all(&store, &chain, 0, 10);
        assert_eq!(counts(&store), (10, 8, 7));
    }
    {
        let store = reopen(3);
        assert_eq!(store.rebuilt_versions(), 2);
        assert_eq!(counts(&store), (10, 3, 2));
        commit_all(&store, &chain, 10, 15);
        assert_eq!(counts(&store), (15, 3, 2));
    }
    {
        // Only two older heights can be rebuilt; the window fills as blocks commit.
        let store = reopen(6);
        assert_eq!(counts(&store), (15, 3, 2));
        commit_all(&store, &chain, 15, 17);
        assert_eq!(counts(&store), (17, 5, 4));
        commit_all(&store, &chain, 17, 30);
        assert_eq!(counts(&store), (30, 6, 5));
    }
    let store = reopen(6);
    assert_eq!(store.rebuilt_versions(), 5);
    assert_eq!(counts(&store), (30, 6, 5));
}

#[test]
fn refuses_another_chain_and_out_of_order_commits() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(3);
    {
        let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
        commit_all(&store, &chain, 0, 1);
        // Block 3 on top of block 1.
        let outcome = chain.outcomes[2].clone();
        let (block, certificate) = &chain.blocks[2];
        assert!(matches!(
            store.commit_block(block, certificate, &outcome),
            Err(LedgerError::NotNextHeight {
                expected: 2,
                got: 3
            })
        ));
        // Block 2's outcome as executed elsewhere on another state.
        let mut stale = chain.outcomes[1].clone();
        stale.delta.base_root = Hash::digest(b"elsewhere");
        let (block, certificate) = &chain.blocks[1];
        assert!(matches!(
            store.commit_block(block, certificate, &stale),
            Err(LedgerError::StaleDelta { .. })
        ));
        assert_eq!(store.tip().height, 1);
    }
    let other = TestChain::new("another-chain", 4, 8);
    assert!(matches!(
        Store::open(dir.path(), &other.genesis, options(4)),
        Err(LedgerError::WrongGenesis { .. })
    ));
}

impl TestChainExt for TestChain {
    fn tip_state_root(&self) -> Hash {
        self.blocks
            .last()
            .map_or(Hash::ZERO, |(b, _)| b.header.state_root)
    }
}

trait TestChainExt {
    fn tip_state_root(&self) -> Hash;
}

/// The kept window bounds the tree's memory: after many blocks, the arena holds about
/// what the kept heights need, not everything every block ever made. (A leaked handle
/// on an old version, or a reclamation bug, makes the node count grow with the chain.)
#[test]
fn tree_memory_stays_bounded_by_the_kept_window() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(400);
    let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
    let mut counts = Vec::new();
    for stretch in 0..4 {
        commit_all(&store, &chain, stretch * 100, (stretch + 1) * 100);
        let tree = store.state_at(store.tip().height).unwrap().tree().unwrap();
        counts.push(tree.arena_nodes());
    }
    // Eight accounts plus two state entries; four kept heights of five transfers each
    // add a few dozen nodes at most, whatever the chain's length.
    for (internal, leaves) in &counts {
        assert!(*leaves <= 10 + 4 * 12, "{counts:?}");
        assert!(*internal <= 10 + 4 * 40, "{counts:?}");
    }
    assert_eq!(counts[1], counts[3], "steady state: {counts:?}");
    store.check_integrity().unwrap();
}

#[test]
fn prepared_blocks_wait_in_the_next_slot_until_committed() {
    let dir = tempfile::tempdir().unwrap();
    let chain = chain(4);
    let block = |height: usize| &chain.blocks[height - 1].0;
    let bytes = |height: usize| borsh::to_vec(block(height)).unwrap();
    {
        let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
        commit_all(&store, &chain, 0, 1);
        // Only for the height after the tip.
        for height in [1, 3] {
            assert!(
                !store
                    .put_safety_record_with_block(
                        b"k",
                        b"never",
                        height as u64,
                        block(height).hash(),
                        &bytes(height),
                    )
                    .unwrap()
            );
        }
        assert!(store.safety_record(b"k").unwrap().is_none());
        assert!(
            store
                .put_safety_record_with_block(b"k", b"record", 2, block(2).hash(), &bytes(2))
                .unwrap()
        );
        // Stored, but not a block of the chain until committed.
        assert!(store.block(2).unwrap().is_none());
        assert_eq!(
            store.prepared_block(2, &block(2).hash()).unwrap(),
            Some(bytes(2))
        );
        assert!(store.prepared_block(2, &block(3).hash()).unwrap().is_none());
    }
    // Durable: the record and its block are there after reopening.
    let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
    assert_eq!(store.safety_record(b"k").unwrap().unwrap(), b"record");
    assert_eq!(
        store.prepared_block(2, &block(2).hash()).unwrap(),
        Some(bytes(2))
    );
    assert!(store.block(2).unwrap().is_none());
    commit_all(&store, &chain, 1, 2);
    assert_eq!(store.block(2).unwrap().as_ref(), Some(block(2)));
    // Prepared and then decided in this run: the commit keeps the stored bytes.
    assert!(
        store
            .put_safety_record_with_block(b"k", b"record 3", 3, block(3).hash(), &bytes(3))
            .unwrap()
    );
    commit_all(&store, &chain, 2, 3);
    assert_eq!(store.block(3).unwrap().as_ref(), Some(block(3)));
    // Another block prepared than the one decided (a view change): the commit
    // overwrites it.
    assert!(
        store
            .put_safety_record_with_block(b"k", b"record 4", 4, block(2).hash(), &bytes(2))
            .unwrap()
    );
    commit_all(&store, &chain, 3, 4);
    assert_eq!(store.block(4).unwrap().as_ref(), Some(block(4)));
    drop(store);
    let store = Store::open(dir.path(), &chain.genesis, options(4)).unwrap();
    for height in 1..=4 {
        assert_eq!(
            store.block(height as u64).unwrap().as_ref(),
            Some(block(height))
        );
    }
    let report = store.check_integrity().unwrap();
    assert_eq!(report.height, 4);
    assert_eq!(report.state_root, chain.tip_state_root());
}
