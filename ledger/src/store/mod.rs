//! The RocksDB store: blocks, certificates, receipts, the transaction index, the state
//! tree and its history, the consensus safety state and metadata.
//!
//! # Atomicity
//!
//! Each block is committed with a single RocksDB write batch holding the block, its
//! certificate, receipts, index entries, every state value it changes, the undo record
//! for its height and the new chain tip. RocksDB applies a batch entirely or not at
//! all, also across a crash (its write-ahead log replays whole batches only), so
//! reopening always finds the last complete block. Writes are fsynced by default
//! ([`StoreOptions::sync_writes`]).
//!
//! # Tree pages are written back, not through
//!
//! The state tree's pages changed by a block stay in memory ("dirty") and are written
//! together every [`StoreOptions::page_flush_interval`] blocks, or sooner when
//! [`StoreOptions::page_flush_dirty_pages`] pages are waiting, with a marker naming the
//! height whose tree the stored pages then hold. The upper pages, which every block
//! changes, are thus written once per flush instead of once per block. The tree is a
//! function of the stored values, so nothing is lost in a crash: on reopening, the keys
//! changed since the flushed height (listed in the undo records, which are kept at
//! least that far back) are updated into the stored tree in one batch, and the root is
//! checked against the tip header.
//!
//! # State history
//!
//! Values and pages are stored at their latest version only. Each block also writes an
//! undo record: the previous content of every value, and of every changed slot of every
//! page, it changed. The state at an older height `v` is the latest state with the undo
//! records of heights `latest, latest - 1, ..., v + 1` applied. Records are deleted once
//! they fall out of both the last [`StoreOptions::state_versions_kept`] heights and the
//! unflushed range. Compared with versioned node keys (Jellyfish Merkle tree), a change
//! costs one overwrite instead of a new node plus a deletion later.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use borsh::{BorshDeserialize, BorshSerialize};
use lru::LruCache;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
    Snapshot, WriteBatch, WriteOptions,
};
use stele_consensus::{CommitCertificate, Hash, ValidatorSet};

use crate::block::{Block, Receipt};
use crate::error::LedgerError;
use crate::exec::{ChainTip, ExecutionOutcome};
use crate::genesis::Genesis;
use crate::smt::page::RandomKeyHashBuilder;
use crate::smt::{self, Page, PageId, PageSource, SharedPage, SparseMerkleProof};
use crate::state::{StateDelta, StateReader, value_hash};

mod undo;

use undo::UndoRecord;

const CF_BLOCKS: &str = "blocks";
const CF_CERTIFICATES: &str = "certificates";
const CF_TX_INDEX: &str = "tx_index";
const CF_RECEIPTS: &str = "receipts";
const CF_STATE_NODES: &str = "state_nodes";
const CF_STATE_VALUES: &str = "state_values";
const CF_STATE_HISTORY: &str = "state_history";
const CF_SAFETY: &str = "safety";
const CF_META: &str = "meta";

const COLUMN_FAMILIES: [&str; 9] = [
    CF_BLOCKS,
    CF_CERTIFICATES,
    CF_TX_INDEX,
    CF_RECEIPTS,
    CF_STATE_NODES,
    CF_STATE_VALUES,
    CF_STATE_HISTORY,
    CF_SAFETY,
    CF_META,
];

const META_SCHEMA: &[u8] = b"schema_version";
const META_GENESIS: &[u8] = b"genesis";
const META_GENESIS_HASH: &[u8] = b"genesis_hash";
const META_TIP: &[u8] = b"tip";
const META_TREE_VERSION: &[u8] = b"tree_version";
/// Prefix of the records of validator-set changes: the key is the prefix and the
/// big-endian height `h` whose block scheduled the set of `h + 1`, the value the set.
const META_SET_CHANGE: &[u8] = b"set_change/";
const SCHEMA_VERSION: u32 = 1;

/// Decoded undo records kept in memory for historical reads.
const UNDO_CACHE_RECORDS: usize = 16;

/// Tuning of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Heights whose state can be read and proven (the latest included). At least 1.
    pub state_versions_kept: u64,
    /// Tree pages kept decoded in memory (about 2.2 KiB each). The upper levels of the
    /// tree are touched by every block, so in practice they always stay. A state of a
    /// million accounts has about 360,000 pages.
    pub page_cache_pages: usize,
    /// State values (accounts) kept in memory, for execution reads.
    pub value_cache_entries: usize,
    /// RocksDB block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Fsync every commit. Turning it off keeps crash consistency against a process
    /// crash but may lose the last blocks on power loss.
    pub sync_writes: bool,
    /// Write the changed tree pages at least every this many blocks. Reopening after a
    /// crash recomputes the tree for the keys changed since (a few seconds for tens of
    /// thousands of blocks' worth of changes).
    pub page_flush_interval: u64,
    /// Write the changed tree pages as soon as this many are waiting (about 2.2 KiB of
    /// memory each).
    pub page_flush_dirty_pages: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            state_versions_kept: 64,
            page_cache_pages: 512 * 1024,
            value_cache_entries: 1024 * 1024,
            block_cache_bytes: 256 * 1024 * 1024,
            sync_writes: true,
            page_flush_interval: 64,
            page_flush_dirty_pages: 100_000,
        }
    }
}

/// Where a committed transaction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct TxLocation {
    /// Block height.
    pub height: u64,
    /// Position in the block.
    pub index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
struct StoredTip {
    height: u64,
    block_hash: Hash,
    time_ms: u64,
}

/// Tree pages changed since the last flush.
struct TreeCache {
    /// New content of each changed page, `None` for a removed page.
    dirty: HashMap<PageId, Option<SharedPage>, RandomKeyHashBuilder>,
    /// The height whose tree the pages on disk hold.
    flushed_version: u64,
}

/// The node's database.
pub struct Store {
    db: DB,
    options: StoreOptions,
    genesis: Genesis,
    genesis_hash: Hash,
    tip: Mutex<ChainTip>,
    /// The tree pages not yet written. A commit holds it for writing from start to end,
    /// which also makes commits one at a time; readers of the latest state take it for
    /// reading per page, and a [`HistoricState`] for its whole life, so its view
    /// cannot change under it.
    tree: RwLock<TreeCache>,
    /// Written pages recently used (never a page that is also dirty: dirty pages are
    /// looked up first).
    pages: Mutex<LruCache<PageId, SharedPage, RandomKeyHashBuilder>>,
    /// Latest values of recently used keys (present values only).
    values: Mutex<LruCache<Hash, Vec<u8>, RandomKeyHashBuilder>>,
    undo: Mutex<LruCache<u64, Arc<UndoRecord>>>,
    /// Heights whose tree pages had to be rebuilt when the store was opened.
    rebuilt_heights: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("genesis_hash", &self.genesis_hash)
            .field("tip", &self.tip())
            .finish_non_exhaustive()
    }
}

fn be(height: u64) -> [u8; 8] {
    height.to_be_bytes()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data (a cache, a tip) that
    // is still consistent, so poisoning is not a reason to fail.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// A panic while a commit holds the tree may leave its dirty pages half updated:
// continuing could serve or write a wrong tree, so a poisoned tree lock is fatal. (The
// stored state is safe: reopening rebuilds the tree from the values.)
fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .expect("state tree lock poisoned by a panicked commit")
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .expect("state tree lock poisoned by a panicked commit")
}

fn decode<T: BorshDeserialize>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    borsh::from_slice(bytes).map_err(|e| LedgerError::Corrupt {
        what: format!("{what}: {e}"),
    })
}

fn encode<T: BorshSerialize>(value: &T) -> Vec<u8> {
    borsh::to_vec(value).expect("borsh encoding to a Vec never fails")
}

impl Store {
    /// Opens the store at `path` for the chain of `genesis`, creating it (with the
    /// genesis state at height 0) if it does not exist. Refuses a store of another chain.
    pub fn open(
        path: &Path,
        genesis: &Genesis,
        options: StoreOptions,
    ) -> Result<Store, LedgerError> {
        assert!(
            options.state_versions_kept >= 1,
            "at least the latest state is kept"
        );
        let db = open_db(path, &options)?;
        let genesis_hash = genesis.hash();
        let page_capacity =
            NonZeroUsize::new(options.page_cache_pages.max(64)).expect("at least 64");
        let value_capacity =
            NonZeroUsize::new(options.value_cache_entries.max(64)).expect("at least 64");
        let undo_capacity = NonZeroUsize::new(UNDO_CACHE_RECORDS).expect("constant is positive");
        let store = Store {
            db,
            options,
            genesis: genesis.clone(),
            genesis_hash,
            tip: Mutex::new(ChainTip {
                height: 0,
                block_hash: genesis_hash,
                time_ms: genesis.genesis_time_ms,
            }),
            tree: RwLock::new(TreeCache {
                dirty: HashMap::default(),
                flushed_version: 0,
            }),
            pages: Mutex::new(LruCache::with_hasher(
                page_capacity,
                RandomKeyHashBuilder::default(),
            )),
            values: Mutex::new(LruCache::with_hasher(
                value_capacity,
                RandomKeyHashBuilder::default(),
            )),
            undo: Mutex::new(LruCache::new(undo_capacity)),
            rebuilt_heights: std::sync::atomic::AtomicU64::new(0),
        };
        match store
            .db
            .get_pinned_cf(store.cf(CF_META), META_GENESIS_HASH)?
        {
            None => store.write_genesis()?,
            Some(stored) => {
                let stored = Hash::from_bytes(stored.as_ref().try_into().map_err(|_| {
                    LedgerError::Corrupt {
                        what: "genesis hash is not 32 bytes".into(),
                    }
                })?);
                if stored != genesis_hash {
                    return Err(LedgerError::WrongGenesis {
                        stored,
                        given: genesis_hash,
                    });
                }
                store.load_tip()?;
            }
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is created at open")
    }

    fn write_genesis(&self) -> Result<(), LedgerError> {
        let delta = self.genesis.state_delta()?;
        let mut batch = WriteBatch::with_capacity_bytes(Self::estimated_batch_bytes(&delta));
        self.put_state_values(&mut batch, &delta, 0);
        // The genesis tree is written directly: the store starts flushed at height 0.
        self.put_pages(
            &mut batch,
            delta.pages.iter().map(|c| (c.id, c.new.as_ref())),
            0,
        );
        let meta = self.cf(CF_META);
        batch.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_le_bytes());
        batch.put_cf(meta, META_GENESIS, encode(&self.genesis));
        batch.put_cf(meta, META_GENESIS_HASH, self.genesis_hash.as_bytes());
        batch.put_cf(meta, META_TIP, encode(&self.stored_tip(&lock(&self.tip))));
        self.db.write_opt(batch, &self.write_options())?;
        self.cache_values(&delta);
        Ok(())
    }

    fn stored_tip(&self, tip: &ChainTip) -> StoredTip {
        StoredTip {
            height: tip.height,
            block_hash: tip.block_hash,
            time_ms: tip.time_ms,
        }
    }

    fn load_tip(&self) -> Result<(), LedgerError> {
        let meta = self.cf(CF_META);
        let schema =
            self.db
                .get_pinned_cf(meta, META_SCHEMA)?
                .ok_or_else(|| LedgerError::Corrupt {
                    what: "no schema version".into(),
                })?;
        if schema.as_ref() != SCHEMA_VERSION.to_le_bytes() {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "schema version {:?}, this build reads {SCHEMA_VERSION}",
                    schema.as_ref()
                ),
            });
        }
        let bytes = self
            .db
            .get_pinned_cf(meta, META_TIP)?
            .ok_or_else(|| LedgerError::Corrupt {
                what: "no chain tip".into(),
            })?;
        let stored: StoredTip = decode("chain tip", &bytes)?;
        let tree_version = self
            .db
            .get_pinned_cf(meta, META_TREE_VERSION)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| LedgerError::Corrupt {
                what: "no tree version".into(),
            })?;
        if tree_version > stored.height {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "tree pages are at height {tree_version}, above the tip {}",
                    stored.height
                ),
            });
        }
        write_lock(&self.tree).flushed_version = tree_version;
        self.recover_tree(stored.height)?;
        // Values and tip are written in one batch, and the tree was brought up to the
        // values: the root must be the tip header's.
        let root = smt::root_hash(self)?;
        let expected_root = if stored.height == 0 {
            self.genesis.state_delta()?.root
        } else {
            self.block(stored.height)?
                .ok_or_else(|| LedgerError::Corrupt {
                    what: format!("tip block {} is missing", stored.height),
                })?
                .header
                .state_root
        };
        if root != expected_root {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "state root {root} does not match block {}'s {expected_root}",
                    stored.height
                ),
            });
        }
        *lock(&self.tip) = ChainTip {
            height: stored.height,
            block_hash: stored.block_hash,
            time_ms: stored.time_ms,
        };
        Ok(())
    }

    /// Brings the stored tree from its flushed height up to `tip_height`: updates the
    /// keys the undo records of the heights in between list, with their current values,
    /// in one batch, and flushes the result.
    fn recover_tree(&self, tip_height: u64) -> Result<(), LedgerError> {
        let mut tree = write_lock(&self.tree);
        let from = tree.flushed_version;
        if from >= tip_height {
            return Ok(());
        }
        self.rebuilt_heights
            .store(tip_height - from, std::sync::atomic::Ordering::Relaxed);
        let mut keys: Vec<Hash> = Vec::new();
        for height in from + 1..=tip_height {
            let bytes = self
                .db
                .get_pinned_cf(self.cf(CF_STATE_HISTORY), be(height))?
                .ok_or_else(|| LedgerError::Corrupt {
                    what: format!(
                        "undo record of height {height}, needed to rebuild the tree, is missing"
                    ),
                })?;
            keys.extend(undo::decode(&bytes)?.value_keys());
        }
        keys.sort_unstable();
        keys.dedup();
        let values = self.db.batched_multi_get_cf(
            self.cf(CF_STATE_VALUES),
            keys.iter().map(|k| k.as_bytes()),
            false,
        );
        let mut updates = Vec::with_capacity(keys.len());
        for (key, value) in keys.into_iter().zip(values) {
            updates.push((key, value?.map(|v| value_hash(&v))));
        }
        let update = smt::update(
            &LatestPages {
                store: self,
                tree: &tree,
            },
            updates,
        )?;
        for change in update.pages {
            tree.dirty.insert(change.id, change.new);
        }
        self.flush(&mut tree, tip_height)
    }

    /// Writes the dirty pages, marked as the tree of `version`, and moves them to the
    /// page cache.
    fn flush(&self, tree: &mut TreeCache, version: u64) -> Result<(), LedgerError> {
        let mut batch = WriteBatch::with_capacity_bytes(
            tree.dirty.len() * (4 + smt::page::SLOTS * 64 + 48) + 256,
        );
        self.put_pages(
            &mut batch,
            tree.dirty.iter().map(|(id, page)| (*id, page.as_ref())),
            version,
        );
        self.db.write_opt(batch, &self.write_options())?;
        let mut cache = lock(&self.pages);
        for (id, page) in tree.dirty.drain() {
            match page {
                Some(page) => {
                    cache.put(id, page);
                }
                None => {
                    cache.pop(&id);
                }
            }
        }
        tree.flushed_version = version;
        Ok(())
    }

    /// Adds page writes (in key order, which the memtable inserts fastest) and the tree
    /// version marker to `batch`.
    fn put_pages<'p>(
        &self,
        batch: &mut WriteBatch,
        pages: impl Iterator<Item = (PageId, Option<&'p SharedPage>)>,
        version: u64,
    ) {
        let nodes_cf = self.cf(CF_STATE_NODES);
        let mut pages: Vec<(PageId, Option<&SharedPage>)> = pages.collect();
        // `PageId`'s order (depth, then prefix) is the order of its storage keys.
        pages.sort_unstable_by_key(|(id, _)| *id);
        let mut scratch = Vec::with_capacity(4 + smt::page::SLOTS * 64);
        for (id, page) in pages {
            match page {
                Some(page) => {
                    page.encode_into(&mut scratch);
                    batch.put_cf(nodes_cf, id.db_key(), &scratch);
                }
                None => batch.delete_cf(nodes_cf, id.db_key()),
            }
        }
        batch.put_cf(self.cf(CF_META), META_TREE_VERSION, be(version));
    }

    fn write_options(&self) -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(self.options.sync_writes);
        options
    }

    /// How many heights of tree pages [`Store::open`] rebuilt from the stored values,
    /// because the store was not closed cleanly (0 after a clean shutdown).
    pub fn rebuilt_heights(&self) -> u64 {
        self.rebuilt_heights
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The genesis this store was opened with.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// The genesis hash.
    pub fn genesis_hash(&self) -> Hash {
        self.genesis_hash
    }

    /// The last committed block (height 0 and the genesis hash before any block).
    pub fn tip(&self) -> ChainTip {
        lock(&self.tip).clone()
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
        self.get_decoded(CF_BLOCKS, &be(height), "block")
    }

    /// The certificate that decided the block at `height`.
    pub fn certificate(&self, height: u64) -> Result<Option<CommitCertificate>, LedgerError> {
        self.get_decoded(CF_CERTIFICATES, &be(height), "certificate")
    }

    /// The receipts of the block at `height`.
    pub fn receipts(&self, height: u64) -> Result<Option<Vec<Receipt>>, LedgerError> {
        self.get_decoded(CF_RECEIPTS, &be(height), "receipts")
    }

    /// Where the transaction with `hash` was committed.
    pub fn tx_location(&self, hash: &Hash) -> Result<Option<TxLocation>, LedgerError> {
        self.get_decoded(CF_TX_INDEX, hash.as_bytes(), "transaction index entry")
    }

    fn get_decoded<T: BorshDeserialize>(
        &self,
        cf: &str,
        key: &[u8],
        what: &str,
    ) -> Result<Option<T>, LedgerError> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            None => Ok(None),
            Some(bytes) => decode(what, &bytes).map(Some),
        }
    }

    /// Commits a decided block: the block, its certificate and its execution outcome,
    /// computed on top of the current state, in one atomic batch.
    ///
    /// # Panics
    ///
    /// If `outcome` is not the execution of `block` (heights or roots differ): the
    /// caller mixed up blocks, and committing would corrupt the chain.
    pub fn commit_block(
        &self,
        block: &Block,
        certificate: &CommitCertificate,
        outcome: &ExecutionOutcome,
    ) -> Result<(), LedgerError> {
        let mut tree = write_lock(&self.tree);
        let tip = self.tip();
        let height = block.header.height;
        if height != tip.height + 1 {
            return Err(LedgerError::NotNextHeight {
                expected: tip.height + 1,
                got: height,
            });
        }
        assert_eq!(outcome.height, height, "outcome of another height");
        assert_eq!(outcome.delta.version, height, "delta of another height");
        assert_eq!(
            outcome.delta.root, block.header.state_root,
            "outcome of another block"
        );
        assert_eq!(outcome.receipts.len(), block.txs.len(), "receipt count");
        let root = smt::root_hash(&LatestPages {
            store: self,
            tree: &tree,
        })?;
        if outcome.delta.base_root != root {
            return Err(LedgerError::StaleDelta {
                expected: root,
                got: outcome.delta.base_root,
            });
        }
        let block_bytes = block.encoded_len() + 64 * outcome.receipts.len() + 4096;
        let mut batch = WriteBatch::with_capacity_bytes(
            block_bytes + Self::estimated_batch_bytes(&outcome.delta),
        );
        let key = be(height);
        batch.put_cf(self.cf(CF_BLOCKS), key, encode(block));
        batch.put_cf(self.cf(CF_CERTIFICATES), key, encode(certificate));
        batch.put_cf(self.cf(CF_RECEIPTS), key, encode(&outcome.receipts));
        let index_cf = self.cf(CF_TX_INDEX);
        for (index, receipt) in outcome.receipts.iter().enumerate() {
            let location = TxLocation {
                height,
                index: index as u32,
            };
            batch.put_cf(index_cf, receipt.tx_hash.as_bytes(), encode(&location));
        }
        self.put_state_values(&mut batch, &outcome.delta, tree.flushed_version);
        if outcome.next_validator_set.hash() != outcome.validator_set.hash() {
            let mut key = META_SET_CHANGE.to_vec();
            key.extend_from_slice(&be(height));
            let validators = outcome.next_validator_set.validators().to_vec();
            batch.put_cf(self.cf(CF_META), key, encode(&validators));
        }
        let new_tip = ChainTip {
            height,
            block_hash: block.hash(),
            time_ms: block.header.time_ms,
        };
        batch.put_cf(
            self.cf(CF_META),
            META_TIP,
            encode(&self.stored_tip(&new_tip)),
        );
        self.db.write_opt(batch, &self.write_options())?;
        // The block is durable from here on. The pages join the dirty set; if the flush
        // below fails, the next open rebuilds them from the values.
        for change in &outcome.delta.pages {
            tree.dirty.insert(change.id, change.new.clone());
        }
        self.cache_values(&outcome.delta);
        *lock(&self.tip) = new_tip;
        if tree.dirty.len() >= self.options.page_flush_dirty_pages
            || height - tree.flushed_version >= self.options.page_flush_interval
        {
            self.flush(&mut tree, height)?;
        }
        Ok(())
    }

    /// Adds the values of a state delta to `batch` with its undo record, and deletes
    /// the undo records no longer needed: those older than both the kept window and
    /// the flushed tree (`flushed_version`).
    fn put_state_values(&self, batch: &mut WriteBatch, delta: &StateDelta, flushed_version: u64) {
        let values_cf = self.cf(CF_STATE_VALUES);
        for change in &delta.values {
            match &change.new {
                Some(value) => batch.put_cf(values_cf, change.key.as_bytes(), value),
                None => batch.delete_cf(values_cf, change.key.as_bytes()),
            }
        }
        if delta.version > 0 {
            let history_cf = self.cf(CF_STATE_HISTORY);
            batch.put_cf(
                history_cf,
                be(delta.version),
                undo::encode(&delta.pages, &delta.values),
            );
            // The last `kept - 1` records rebuild each of the last `kept` heights; those
            // above the flushed height rebuild the tree after a crash.
            let needed_from = self.oldest_version(delta.version).min(flushed_version);
            if needed_from > 0 {
                batch.delete_range_cf(history_cf, be(0), be(needed_from + 1));
            }
        }
    }

    /// A generous estimate of the bytes a delta adds to a write batch, so the batch is
    /// allocated once instead of growing (and copying) many times.
    fn estimated_batch_bytes(delta: &StateDelta) -> usize {
        let values: usize = delta
            .values
            .iter()
            .map(|v| {
                2 * (48 + v.new.as_ref().map_or(0, Vec::len) + v.old.as_ref().map_or(0, Vec::len))
            })
            .sum();
        values + delta.pages.len() * 200 + 4096
    }

    fn oldest_version(&self, latest: u64) -> u64 {
        latest.saturating_sub(self.options.state_versions_kept - 1)
    }

    fn cache_values(&self, delta: &StateDelta) {
        let mut cache = lock(&self.values);
        for change in &delta.values {
            match &change.new {
                Some(value) => {
                    cache.put(change.key, value.clone());
                }
                None => {
                    cache.pop(&change.key);
                }
            }
        }
    }

    /// A written page, through the page cache.
    fn flushed_page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError> {
        if let Some(page) = lock(&self.pages).get(id) {
            return Ok(Some(page.clone()));
        }
        let Some(bytes) = self
            .db
            .get_pinned_cf(self.cf(CF_STATE_NODES), id.db_key())?
        else {
            return Ok(None);
        };
        let page = Arc::new(Page::decode(id, &bytes)?);
        lock(&self.pages).put(*id, page.clone());
        Ok(Some(page))
    }

    /// A consistent view of the state at `version`, which must be one of the last
    /// [`StoreOptions::state_versions_kept`] heights.
    pub fn state_at(&self, version: u64) -> Result<HistoricState<'_>, LedgerError> {
        // Hold the tree for reading first, so no commit or flush runs; then take the
        // snapshot and read the tip it contains (the tip and the values are written in
        // one batch, so they agree, and the dirty pages match both).
        let tree = read_lock(&self.tree);
        let snapshot = self.db.snapshot();
        let latest = {
            let tip_bytes = snapshot
                .get_pinned_cf(self.cf(CF_META), META_TIP)?
                .ok_or(LedgerError::NotInitialized)?;
            decode::<StoredTip>("chain tip", &tip_bytes)?.height
        };
        let oldest = self.oldest_version(latest);
        if version < oldest || version > latest {
            return Err(LedgerError::VersionUnavailable {
                version,
                oldest,
                latest,
            });
        }
        Ok(HistoricState {
            store: self,
            tree,
            snapshot,
            version,
            latest,
        })
    }

    /// The value under `key` and its proof against the state root of height `version`.
    pub fn prove(
        &self,
        key: &Hash,
        version: u64,
    ) -> Result<(Option<Vec<u8>>, SparseMerkleProof), LedgerError> {
        let state = self.state_at(version)?;
        let proof = smt::prove(&state, key)?;
        let value = state.value(key)?;
        Ok((value, proof))
    }

    fn undo_record(
        &self,
        snapshot: &Snapshot<'_>,
        version: u64,
    ) -> Result<Arc<UndoRecord>, LedgerError> {
        if let Some(record) = lock(&self.undo).get(&version) {
            return Ok(record.clone());
        }
        let bytes = snapshot
            .get_pinned_cf(self.cf(CF_STATE_HISTORY), be(version))?
            .ok_or_else(|| LedgerError::Corrupt {
                what: format!("undo record of height {version} is missing"),
            })?;
        let record = Arc::new(undo::decode(&bytes)?);
        lock(&self.undo).put(version, record.clone());
        Ok(record)
    }

    /// Checks the stored state from scratch: recomputes the root from every stored
    /// value and compares it with the tree's root and the tip header's state root, and
    /// checks that every stored page is reachable from the root (none leaked). Reads the
    /// whole state: for tests, audits of a node's disk, and recovery tooling.
    pub fn check_integrity(&self) -> Result<IntegrityReport, LedgerError> {
        {
            let mut tree = write_lock(&self.tree);
            let height = self.tip().height;
            self.flush(&mut tree, height)?;
        }
        let state = self.state_at(self.tip().height)?;
        let mut leaves = Vec::new();
        for item in state
            .snapshot
            .iterator_cf(self.cf(CF_STATE_VALUES), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            let key: [u8; 32] = key.as_ref().try_into().map_err(|_| LedgerError::Corrupt {
                what: format!("state value key of {} bytes", key.len()),
            })?;
            leaves.push((Hash::from_bytes(key), crate::state::value_hash(&value)));
        }
        let values = leaves.len();
        let recomputed = smt::root_from_leaves(&mut leaves);
        let tree_root = smt::root_hash(&state)?;
        let tip = self.tip();
        let header_root = if tip.height == 0 {
            self.genesis.state_delta()?.root
        } else {
            self.block(tip.height)?
                .ok_or_else(|| LedgerError::Corrupt {
                    what: format!("tip block {} is missing", tip.height),
                })?
                .header
                .state_root
        };
        if recomputed != tree_root || tree_root != header_root {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "state roots disagree: values give {recomputed}, tree {tree_root}, header {header_root}"
                ),
            });
        }
        let mut stored_pages = 0usize;
        for item in state
            .snapshot
            .iterator_cf(self.cf(CF_STATE_NODES), rocksdb::IteratorMode::Start)
        {
            item?;
            stored_pages += 1;
        }
        let reachable_pages = count_reachable_pages(&state)?;
        if stored_pages != reachable_pages {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "{stored_pages} pages stored but {reachable_pages} reachable from the root"
                ),
            });
        }
        Ok(IntegrityReport {
            height: tip.height,
            values,
            pages: stored_pages,
            state_root: tree_root,
        })
    }

    /// Every validator-set change so far, by height: `(h, set)` means block `h` is the
    /// last one certified by the old set and `set` certifies `h + 1` on (block `h`'s
    /// header commits to it as `next_validator_set_hash`). Light clients follow these
    /// from the genesis set.
    pub fn validator_set_changes(&self) -> Result<Vec<(u64, ValidatorSet)>, LedgerError> {
        let mut changes = Vec::new();
        let iter = self
            .db
            .prefix_iterator_cf(self.cf(CF_META), META_SET_CHANGE);
        for item in iter {
            let (key, value) = item?;
            let Some(height) = key.strip_prefix(META_SET_CHANGE) else {
                break;
            };
            let height: [u8; 8] = height.try_into().map_err(|_| LedgerError::Corrupt {
                what: "validator-set change key".into(),
            })?;
            let validators: Vec<stele_consensus::Validator> = decode("validator set", &value)?;
            let set = ValidatorSet::new(validators).map_err(|e| LedgerError::Corrupt {
                what: format!("stored validator set: {e}"),
            })?;
            changes.push((u64::from_be_bytes(height), set));
        }
        Ok(changes)
    }

    /// Reads a stored consensus safety record.
    pub fn safety_record(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.db.get_cf(self.cf(CF_SAFETY), key)?)
    }

    /// Durably writes a consensus safety record (always fsynced, whatever
    /// [`StoreOptions::sync_writes`] says: the engine relies on it before it signs).
    pub fn put_safety_record(&self, key: &[u8], value: &[u8]) -> Result<(), LedgerError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_SAFETY), key, value);
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.write_opt(batch, &options)?;
        Ok(())
    }
}

/// What [`Store::check_integrity`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntegrityReport {
    /// Height checked.
    pub height: u64,
    /// State values stored.
    pub values: usize,
    /// Tree pages stored.
    pub pages: usize,
    /// The verified state root.
    pub state_root: Hash,
}

fn count_reachable_pages<S: PageSource>(source: &S) -> Result<usize, LedgerError> {
    let Some(root) = source.page(&PageId::ROOT)? else {
        return Ok(0);
    };
    let mut count = 0;
    let mut stack = vec![(PageId::ROOT, root)];
    while let Some((id, page)) = stack.pop() {
        count += 1;
        for slot in 0..smt::page::SLOTS {
            if let smt::page::Slot::Child { .. } = page.slot(slot) {
                let child_id = id.child(slot);
                stack.push((child_id, smt::child_page(source, &child_id)?));
            }
        }
    }
    Ok(count)
}

fn open_db(path: &Path, options: &StoreOptions) -> Result<DB, LedgerError> {
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options.set_max_background_jobs(2);
    db_options.set_bytes_per_sync(1 << 20);
    let descriptors = COLUMN_FAMILIES.iter().map(|name| {
        let mut cf_options = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_level_compaction_dynamic_level_bytes(true);
        // Tree pages and index entries are mostly hashes, which do not compress.
        let compression = match *name {
            CF_STATE_NODES | CF_TX_INDEX | CF_STATE_HISTORY => DBCompressionType::None,
            _ => DBCompressionType::Lz4,
        };
        cf_options.set_compression_type(compression);
        if *name == CF_STATE_NODES || *name == CF_STATE_VALUES {
            cf_options.set_write_buffer_size(64 << 20);
        }
        ColumnFamilyDescriptor::new(*name, cf_options)
    });
    Ok(DB::open_cf_descriptors(&db_options, path, descriptors)?)
}

/// The latest tree: dirty pages first, then written pages.
struct LatestPages<'a> {
    store: &'a Store,
    tree: &'a TreeCache,
}

impl PageSource for LatestPages<'_> {
    fn page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError> {
        match self.tree.dirty.get(id) {
            Some(page) => Ok(page.clone()),
            None => self.store.flushed_page(id),
        }
    }
}

impl PageSource for Store {
    fn page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError> {
        let tree = read_lock(&self.tree);
        LatestPages {
            store: self,
            tree: &tree,
        }
        .page(id)
    }
}

/// Writes the dirty tree pages on a clean shutdown, so the next open has nothing to
/// rebuild. Errors are ignored: the next open rebuilds the tree anyway.
impl Drop for Store {
    fn drop(&mut self) {
        let height = self.tip().height;
        // A poisoned tree is left to the next open to rebuild.
        let Ok(mut tree) = self.tree.write() else {
            return;
        };
        if !tree.dirty.is_empty() || tree.flushed_version != height {
            let _ = self.flush(&mut tree, height);
        }
    }
}

/// The store reads as the latest committed state. Only the one writer (the host that
/// commits blocks) should execute against it; readers that may race a commit use
/// [`Store::state_at`], which reads from a snapshot.
impl StateReader for Store {
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        if let Some(value) = lock(&self.values).get(key) {
            return Ok(Some(value.clone()));
        }
        let value = self.db.get_cf(self.cf(CF_STATE_VALUES), key.as_bytes())?;
        if let Some(value) = &value {
            lock(&self.values).put(*key, value.clone());
        }
        Ok(value)
    }

    fn values(&self, keys: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(keys.len());
        let mut missing: Vec<usize> = Vec::new();
        {
            let mut cache = lock(&self.values);
            for (i, key) in keys.iter().enumerate() {
                let cached = cache.get(key).cloned();
                if cached.is_none() {
                    missing.push(i);
                }
                out.push(cached);
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let read = self.db.batched_multi_get_cf(
            self.cf(CF_STATE_VALUES),
            missing.iter().map(|i| keys[*i].as_bytes()),
            false,
        );
        let mut cache = lock(&self.values);
        for (i, result) in missing.into_iter().zip(read) {
            if let Some(slice) = result? {
                let value = slice.to_vec();
                cache.put(keys[i], value.clone());
                out[i] = Some(value);
            }
        }
        Ok(out)
    }

    fn version(&self) -> u64 {
        lock(&self.tip).height
    }
}

/// The state at one kept height, read from a snapshot of the store.
pub struct HistoricState<'a> {
    store: &'a Store,
    tree: RwLockReadGuard<'a, TreeCache>,
    snapshot: Snapshot<'a>,
    version: u64,
    latest: u64,
}

impl HistoricState<'_> {
    /// The value of `key` before the first height above this version that changed it;
    /// `None` if no later height changed it.
    fn older_value(&self, key: &Hash) -> Result<Option<Option<Vec<u8>>>, LedgerError> {
        for later in self.version + 1..=self.latest {
            let record = self.store.undo_record(&self.snapshot, later)?;
            if let Some(old) = record.value(key) {
                return Ok(Some(old.clone()));
            }
        }
        Ok(None)
    }
}

impl PageSource for HistoricState<'_> {
    /// The latest content, with the page's changes undone height by height down to
    /// this version.
    fn page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError> {
        // While the tree is held for reading, written pages cannot change, so the page
        // cache agrees with the snapshot.
        let mut page = LatestPages {
            store: self.store,
            tree: &self.tree,
        }
        .page(id)?;
        for later in (self.version + 1..=self.latest).rev() {
            let record = self.store.undo_record(&self.snapshot, later)?;
            if let Some(change) = record.page(id) {
                page = undo::undo_page(id, page, change)?;
            }
        }
        Ok(page)
    }
}

impl StateReader for HistoricState<'_> {
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        match self.older_value(key)? {
            Some(old) => Ok(old),
            None => Ok(self
                .snapshot
                .get_cf(self.store.cf(CF_STATE_VALUES), key.as_bytes())?),
        }
    }

    fn version(&self) -> u64 {
        self.version
    }
}
