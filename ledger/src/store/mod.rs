//! The RocksDB store: blocks, certificates, receipts, the transaction index, the state
//! values and their history, the consensus safety state and metadata.
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
//! # The state tree lives in memory
//!
//! The state tree is a function of the state values, and RocksDB holds the values; the
//! tree itself ([`crate::smt::Tree`]) is kept in memory only. DESIGN.md lists a column
//! family for tree nodes: an earlier version of this store kept the tree there, in
//! pages of four levels written back every 64 blocks, and measured that writing the
//! tree was most of a block's cost (about 1 KiB per updated key at a million accounts,
//! where the values and their undo data are about 100 bytes), capping committed state
//! updates below the rate at which one core checks signatures. Without it a block
//! writes only what it must, and a crash cannot leave the tree and the values out of
//! step: there is nothing to recover but the values.
//!
//! Opening reads every value once and rebuilds the tree (measured: about a second per
//! million accounts on the project's 2-core machine), checks its root against the tip
//! header, then rebuilds the older kept versions from the undo records and checks each
//! root against its header too. The tree costs about 250 bytes of memory per account.
//!
//! # State history
//!
//! The last [`StoreOptions::state_versions_kept`] state trees are kept, sharing every
//! unchanged subtree, so any of those heights can be read and proven. Each block also
//! writes an undo record (the previous content of every value it changed), from which
//! the older trees are rebuilt after a restart; records outside the kept window are
//! deleted in the same batch.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use borsh::{BorshDeserialize, BorshSerialize};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType, Options,
    WriteBatch, WriteOptions,
};
use stele_consensus::{CommitCertificate, Hash, ValidatorSet};

use crate::block::{Block, Receipt};
use crate::error::LedgerError;
use crate::exec::{ChainTip, ExecutionOutcome};
use crate::genesis::Genesis;
use crate::smt::{SparseMerkleProof, Tree, VersionChain};
use crate::state::{StateDelta, StateReader};

mod undo;

const CF_BLOCKS: &str = "blocks";
const CF_CERTIFICATES: &str = "certificates";
const CF_TX_INDEX: &str = "tx_index";
const CF_RECEIPTS: &str = "receipts";
const CF_STATE_VALUES: &str = "state_values";
const CF_STATE_HISTORY: &str = "state_history";
const CF_SAFETY: &str = "safety";
const CF_META: &str = "meta";

const COLUMN_FAMILIES: [&str; 8] = [
    CF_BLOCKS,
    CF_CERTIFICATES,
    CF_TX_INDEX,
    CF_RECEIPTS,
    CF_STATE_VALUES,
    CF_STATE_HISTORY,
    CF_SAFETY,
    CF_META,
];

const META_SCHEMA: &[u8] = b"schema_version";
const META_GENESIS: &[u8] = b"genesis";
const META_GENESIS_HASH: &[u8] = b"genesis_hash";
const META_TIP: &[u8] = b"tip";
/// Prefix of the records of validator-set changes: the key is the prefix and the
/// big-endian height `h` whose block scheduled the set of `h + 1`, the value the set.
const META_SET_CHANGE: &[u8] = b"set_change/";
/// 2: tree kept in memory, undo records of values only (1 stored tree pages).
const SCHEMA_VERSION: u32 = 2;

/// Tuning of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Heights whose state can be read and proven (the latest included). At least 1.
    /// Each kept height costs the tree nodes its block changed (about
    /// `2 * (log2(accounts / keys) + 2)` nodes of 80 to 120 bytes per changed key).
    pub state_versions_kept: u64,
    /// RocksDB block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Fsync every commit. Turning it off keeps crash consistency against a process
    /// crash but may lose the last blocks on power loss.
    pub sync_writes: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            state_versions_kept: 64,
            block_cache_bytes: 256 * 1024 * 1024,
            sync_writes: true,
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

/// The kept state trees, at consecutive heights from `oldest`; the last is the tip's.
struct Versions {
    oldest: u64,
    chain: VersionChain,
}

impl Versions {
    fn latest(&self) -> &Tree {
        self.chain.latest()
    }

    fn latest_height(&self) -> u64 {
        self.oldest + self.chain.len() as u64 - 1
    }

    /// The tree of `height`, if kept.
    fn at(&self, height: u64) -> Option<&Tree> {
        let back = self.latest_height().checked_sub(height)?;
        self.chain.back(usize::try_from(back).ok()?)
    }
}

/// The node's database.
pub struct Store {
    db: DB,
    options: StoreOptions,
    genesis: Genesis,
    genesis_hash: Hash,
    tip: Mutex<ChainTip>,
    /// The kept state trees. A commit holds it for writing from its root check to its
    /// end, which also makes commits one at a time; readers hold it only to clone a
    /// tree handle.
    versions: RwLock<Versions>,
    /// How many older versions opening rebuilt from undo records.
    rebuilt_versions: u64,
    /// The block a safety record wrote where the next height's block is kept (height,
    /// hash), so that committing it does not write it again. Commits hold it from
    /// their height check to the end, as safety writes do theirs.
    prepared: Mutex<Option<(u64, Hash)>>,
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
    // A panic while holding one of these locks leaves plain data (a tip) that is still
    // consistent, so poisoning is not a reason to fail.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// The trees are only ever replaced whole, after the batch that matches them is
// written, so a panicked commit leaves them consistent with the database.
fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    /// genesis state at height 0) if it does not exist. Refuses a store of another chain
    /// or of another schema version.
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
        let mut store = Store {
            db,
            options,
            genesis: genesis.clone(),
            genesis_hash,
            tip: Mutex::new(ChainTip {
                height: 0,
                block_hash: genesis_hash,
                time_ms: genesis.genesis_time_ms,
            }),
            versions: RwLock::new(Versions {
                oldest: 0,
                chain: VersionChain::start(&Tree::new()),
            }),
            rebuilt_versions: 0,
            prepared: Mutex::new(None),
        };
        let stored_genesis = store.db.get_cf(store.cf(CF_META), META_GENESIS_HASH)?;
        match stored_genesis {
            None => store.write_genesis()?,
            Some(stored) => {
                let stored = Hash::from_bytes(stored.as_slice().try_into().map_err(|_| {
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
                store.load()?;
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
        self.put_state_values(&mut batch, &delta);
        let meta = self.cf(CF_META);
        batch.put_cf(meta, META_SCHEMA, SCHEMA_VERSION.to_le_bytes());
        batch.put_cf(meta, META_GENESIS, encode(&self.genesis));
        batch.put_cf(meta, META_GENESIS_HASH, self.genesis_hash.as_bytes());
        batch.put_cf(meta, META_TIP, encode(&self.stored_tip(&lock(&self.tip))));
        self.db.write_opt(batch, &self.write_options())?;
        write_lock(&self.versions).chain = VersionChain::start(&delta.tree);
        Ok(())
    }

    fn stored_tip(&self, tip: &ChainTip) -> StoredTip {
        StoredTip {
            height: tip.height,
            block_hash: tip.block_hash,
            time_ms: tip.time_ms,
        }
    }

    /// The state root the header of `height` certifies (the genesis root at 0).
    fn header_state_root(&self, height: u64) -> Result<Hash, LedgerError> {
        if height == 0 {
            return Ok(self.genesis.state_delta()?.root);
        }
        Ok(self
            .stored_block(height)?
            .ok_or_else(|| LedgerError::Corrupt {
                what: format!("block {height} is missing"),
            })?
            .header
            .state_root)
    }

    /// Reads the tip, rebuilds the latest tree from the stored values and the older
    /// kept trees from the undo records, checking every root against its header.
    fn load(&mut self) -> Result<(), LedgerError> {
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
                    "schema version {:?}, this build reads {SCHEMA_VERSION}: the store was made by another version of Stele (start from an empty data directory and let the node sync)",
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
        let latest = self.tree_from_values()?;
        // Values and tip are written in one batch: the root must be the tip header's.
        let expected_root = self.header_state_root(stored.height)?;
        if latest.root_hash() != expected_root {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "the stored values give state root {}, but block {}'s header says {expected_root}",
                    latest.root_hash(),
                    stored.height
                ),
            });
        }
        let mut chain = VersionChain::start(&latest);
        let oldest_wanted = self.oldest_version(stored.height);
        let mut oldest = stored.height;
        while oldest > oldest_wanted {
            // A record may be missing when state_versions_kept was raised since the
            // last run: fewer heights are kept until new blocks fill the window.
            let Some(bytes) = self
                .db
                .get_pinned_cf(self.cf(CF_STATE_HISTORY), be(oldest))?
            else {
                break;
            };
            let record = undo::decode(&bytes)?;
            let older = chain.oldest().update(record.into_tree_changes());
            let expected = self.header_state_root(oldest - 1)?;
            if older.root_hash() != expected {
                return Err(LedgerError::Corrupt {
                    what: format!(
                        "undoing height {oldest} gives state root {}, but block {}'s header says {expected}",
                        older.root_hash(),
                        oldest - 1
                    ),
                });
            }
            chain
                .push_older(&older)
                .expect("an update of the oldest version is its predecessor");
            oldest -= 1;
        }
        self.rebuilt_versions = stored.height - oldest;
        self.prune_undo_records(oldest)?;
        *write_lock(&self.versions) = Versions { oldest, chain };
        *lock(&self.tip) = ChainTip {
            height: stored.height,
            block_hash: stored.block_hash,
            time_ms: stored.time_ms,
        };
        Ok(())
    }

    /// Deletes the undo records of heights up to `oldest` (none of which rebuilds a kept
    /// height), if there are any: there are after `state_versions_kept` was lowered,
    /// since commits delete only the one record that leaves the window.
    fn prune_undo_records(&self, oldest: u64) -> Result<(), LedgerError> {
        let history_cf = self.cf(CF_STATE_HISTORY);
        let first = self
            .db
            .iterator_cf(history_cf, rocksdb::IteratorMode::Start)
            .next()
            .transpose()?;
        let Some((key, _)) = first else {
            return Ok(());
        };
        if key.as_ref() >= be(oldest + 1).as_slice() {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(history_cf, be(0), be(oldest + 1));
        self.db.write_opt(batch, &self.write_options())?;
        Ok(())
    }

    /// The heights whose undo records are stored, in order.
    fn undo_record_heights(&self) -> Result<Vec<u64>, LedgerError> {
        let mut heights = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_STATE_HISTORY), rocksdb::IteratorMode::Start)
        {
            let (key, _) = item?;
            let height: [u8; 8] = key.as_ref().try_into().map_err(|_| LedgerError::Corrupt {
                what: format!("undo record key of {} bytes", key.len()),
            })?;
            heights.push(u64::from_be_bytes(height));
        }
        Ok(heights)
    }

    /// The tree of every stored value.
    fn tree_from_values(&self) -> Result<Tree, LedgerError> {
        let mut leaves = Vec::new();
        self.for_each_stored_value(|key, value| leaves.push((key, value.to_vec())))?;
        Ok(Tree::from_leaves(leaves))
    }

    /// Calls `f` with every stored state value, in key order.
    fn for_each_stored_value(&self, mut f: impl FnMut(Hash, &[u8])) -> Result<(), LedgerError> {
        for item in self
            .db
            .iterator_cf(self.cf(CF_STATE_VALUES), rocksdb::IteratorMode::Start)
        {
            let (key, value) = item?;
            let key: [u8; 32] = key.as_ref().try_into().map_err(|_| LedgerError::Corrupt {
                what: format!("state value key of {} bytes", key.len()),
            })?;
            f(Hash::from_bytes(key), &value);
        }
        Ok(())
    }

    fn write_options(&self) -> WriteOptions {
        let mut options = WriteOptions::default();
        options.set_sync(self.options.sync_writes);
        options
    }

    /// How many older kept heights [`Store::open`] rebuilt from undo records.
    pub fn rebuilt_versions(&self) -> u64 {
        self.rebuilt_versions
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

    /// The block at `height`, if committed.
    pub fn block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
        // The next height's slot may hold a prepared, not yet decided, block (see
        // `put_safety_record_with_block`).
        if height > self.tip().height {
            return Ok(None);
        }
        self.stored_block(height)
    }

    fn stored_block(&self, height: u64) -> Result<Option<Block>, LedgerError> {
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
        let mut versions = write_lock(&self.versions);
        // Held to the end, so a safety write cannot fill the next slot in between.
        let mut prepared = lock(&self.prepared);
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
        assert_eq!(
            outcome.delta.tree.root_hash(),
            outcome.delta.root,
            "delta tree and root disagree"
        );
        assert_eq!(outcome.receipts.len(), block.txs.len(), "receipt count");
        assert_eq!(versions.latest_height(), tip.height, "trees follow the tip");
        let root = versions.latest().root_hash();
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
        let block_hash = block.hash();
        // A safety record may have written this very block already (same hash, so the
        // same header, transactions and parent certificate).
        if prepared.take() != Some((height, block_hash)) {
            batch.put_cf(self.cf(CF_BLOCKS), key, encode(block));
        }
        batch.put_cf(self.cf(CF_CERTIFICATES), key, encode(certificate));
        batch.put_cf(self.cf(CF_RECEIPTS), key, encode(&outcome.receipts));
        // The index's entries go in in hash order: the memtable's skip list starts each
        // insert's search where the last one ended, which for random hashes was the top
        // of the list (see the `memtables` example).
        let index_cf = self.cf(CF_TX_INDEX);
        let mut entries: Vec<(&Hash, u32)> = outcome
            .receipts
            .iter()
            .enumerate()
            .map(|(index, receipt)| (&receipt.tx_hash, index as u32))
            .collect();
        entries.sort_unstable();
        for (hash, index) in entries {
            let location = TxLocation { height, index };
            batch.put_cf(index_cf, hash.as_bytes(), encode(&location));
        }
        self.put_state_values(&mut batch, &outcome.delta);
        if outcome.next_validator_set.hash() != outcome.validator_set.hash() {
            let mut key = META_SET_CHANGE.to_vec();
            key.extend_from_slice(&be(height));
            let validators = outcome.next_validator_set.validators().to_vec();
            batch.put_cf(self.cf(CF_META), key, encode(&validators));
        }
        let new_tip = ChainTip {
            height,
            block_hash,
            time_ms: block.header.time_ms,
        };
        batch.put_cf(
            self.cf(CF_META),
            META_TIP,
            encode(&self.stored_tip(&new_tip)),
        );
        self.db.write_opt(batch, &self.write_options())?;
        // The block is durable from here on.
        if versions.chain.commit(&outcome.delta.tree).is_err() {
            // Computed on another copy of this state (same root, other tree): redo
            // the change on ours.
            let tree = versions.latest().update(
                outcome
                    .delta
                    .values
                    .iter()
                    .map(|v| (v.key, v.new.clone()))
                    .collect(),
            );
            assert_eq!(tree.root_hash(), outcome.delta.root, "delta root");
            versions
                .chain
                .commit(&tree)
                .expect("an update of the latest tree is its successor");
        }
        let oldest = self.oldest_version(height);
        let kept = (height - oldest + 1) as usize;
        versions.chain.keep_latest(kept);
        versions.oldest = height + 1 - versions.chain.len() as u64;
        *lock(&self.tip) = new_tip;
        Ok(())
    }

    /// Adds the values of a state delta to `batch` with its undo record, and deletes
    /// the undo records no longer needed (those that only rebuild heights below the
    /// kept window).
    fn put_state_values(&self, batch: &mut WriteBatch, delta: &StateDelta) {
        let values_cf = self.cf(CF_STATE_VALUES);
        for change in &delta.values {
            match &change.new {
                Some(value) => batch.put_cf(values_cf, change.key.as_bytes(), value),
                None => batch.delete_cf(values_cf, change.key.as_bytes()),
            }
        }
        if delta.version > 0 {
            let history_cf = self.cf(CF_STATE_HISTORY);
            batch.put_cf(history_cf, be(delta.version), undo::encode(&delta.values));
            // The records of heights oldest + 1 ..= latest rebuild the kept heights, so
            // the record of `oldest` has just left the window. One point delete per
            // block, not a range from 0: range tombstones pile up in the memtable
            // and each flush fragments all of them (RocksDB issue 11407). Records
            // below a window that shrank since the last run are removed at open.
            let oldest = self.oldest_version(delta.version);
            if oldest > 0 {
                batch.delete_cf(history_cf, be(oldest));
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
        values + 4096
    }

    fn oldest_version(&self, latest: u64) -> u64 {
        latest.saturating_sub(self.options.state_versions_kept - 1)
    }

    /// The state at `version`, which must be one of the kept heights. The view is a
    /// snapshot: later commits do not change it.
    pub fn state_at(&self, version: u64) -> Result<HistoricState, LedgerError> {
        let versions = read_lock(&self.versions);
        let latest = versions.latest_height();
        if version < versions.oldest || version > latest {
            return Err(LedgerError::VersionUnavailable {
                version,
                oldest: versions.oldest,
                latest,
            });
        }
        let tree = versions
            .at(version)
            .expect("every height from oldest to latest is kept")
            .clone();
        Ok(HistoricState { tree, version })
    }

    /// The value under `key` and its proof against the state root of height `version`.
    pub fn prove(
        &self,
        key: &Hash,
        version: u64,
    ) -> Result<(Option<Vec<u8>>, SparseMerkleProof), LedgerError> {
        let state = self.state_at(version)?;
        Ok((state.tree.get(key), state.tree.prove(key)))
    }

    /// Checks the stored state from scratch: recomputes the root from every stored
    /// value and compares it with the latest tree's root and the tip header's state
    /// root, and checks every kept tree against its header. Reads the whole state: for
    /// tests, audits of a node's disk, and recovery tooling.
    pub fn check_integrity(&self) -> Result<IntegrityReport, LedgerError> {
        // Hold the trees so no commit runs meanwhile.
        let versions = read_lock(&self.versions);
        let mut leaves = Vec::new();
        self.for_each_stored_value(|key, value| {
            leaves.push((key, crate::state::value_hash(value)));
        })?;
        let values = leaves.len();
        let recomputed = crate::smt::root_from_leaves(&mut leaves);
        let tree_root = versions.latest().root_hash();
        let tip = self.tip();
        let header_root = self.header_state_root(tip.height)?;
        if recomputed != tree_root || tree_root != header_root {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "state roots disagree: values give {recomputed}, tree {tree_root}, header {header_root}"
                ),
            });
        }
        let tree_values = versions.latest().len();
        if tree_values != values {
            return Err(LedgerError::Corrupt {
                what: format!("{values} values stored but the tree holds {tree_values}"),
            });
        }
        for height in versions.oldest..=versions.latest_height() {
            let tree = versions
                .at(height)
                .expect("every height from oldest to latest is kept");
            let expected = self.header_state_root(height)?;
            if tree.root_hash() != expected {
                return Err(LedgerError::Corrupt {
                    what: format!(
                        "kept state of height {height} has root {}, its header says {expected}",
                        tree.root_hash()
                    ),
                });
            }
        }
        // Exactly the records that rebuild the kept heights below the latest: a missing
        // one would fail the next restart, an extra one is pruning gone wrong.
        let undo_heights = self.undo_record_heights()?;
        let expected: Vec<u64> = (versions.oldest + 1..=versions.latest_height()).collect();
        if undo_heights != expected {
            return Err(LedgerError::Corrupt {
                what: format!(
                    "undo records of heights {} are stored, but the kept heights {}..={} need {}",
                    describe_heights(&undo_heights),
                    versions.oldest,
                    versions.latest_height(),
                    describe_heights(&expected)
                ),
            });
        }
        Ok(IntegrityReport {
            height: tip.height,
            values,
            versions: versions.chain.len() as u64,
            undo_records: undo_heights.len() as u64,
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
        self.write_safety(batch)
    }

    /// [`Store::put_safety_record`], with the encoded block (hashing to `block_hash`)
    /// the record has prepared for `height`, written in the same batch where that
    /// height's block is kept once committed: if it is the one decided, its commit
    /// does not write it again, and a block is written once instead of twice.
    /// [`Store::block`] does not return it until it is committed;
    /// [`Store::prepared_block`] reads it back for the record. Only for the height
    /// after the tip: for any other, returns false and writes nothing.
    pub fn put_safety_record_with_block(
        &self,
        key: &[u8],
        value: &[u8],
        height: u64,
        block_hash: Hash,
        block: &[u8],
    ) -> Result<bool, LedgerError> {
        // Commits hold this lock throughout, so the tip cannot move past `height`
        // between the check and the write. (Not the versions lock, which readers of
        // the state take: this write's fsync would hold them up.)
        let mut prepared = lock(&self.prepared);
        if height != self.tip().height + 1 {
            return Ok(false);
        }
        let mut batch = WriteBatch::with_capacity_bytes(block.len() + value.len() + 256);
        batch.put_cf(self.cf(CF_SAFETY), key, value);
        if *prepared != Some((height, block_hash)) {
            batch.put_cf(self.cf(CF_BLOCKS), be(height), block);
        }
        // Until the write succeeds the slot's contents are unknown.
        *prepared = None;
        self.write_safety(batch)?;
        *prepared = Some((height, block_hash));
        Ok(true)
    }

    /// The encoded block stored for `height` if it hashes to `block_hash`: for a
    /// safety record written by [`Store::put_safety_record_with_block`] (for a height
    /// since committed, the committed block if it is that one).
    pub fn prepared_block(
        &self,
        height: u64,
        block_hash: &Hash,
    ) -> Result<Option<Vec<u8>>, LedgerError> {
        let Some(bytes) = self.db.get_cf(self.cf(CF_BLOCKS), be(height))? else {
            return Ok(None);
        };
        let block: Block = decode("block", &bytes)?;
        Ok((block.hash() == *block_hash).then_some(bytes))
    }

    fn write_safety(&self, batch: WriteBatch) -> Result<(), LedgerError> {
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
    /// Heights whose state is kept (each checked against its header).
    pub versions: u64,
    /// Undo records stored: one per kept height but the oldest.
    pub undo_records: u64,
    /// The verified state root.
    pub state_root: Hash,
}

/// A list of heights for an error message: runs of consecutive heights as `a..=b`.
fn describe_heights(heights: &[u64]) -> String {
    let run = |start: u64, end: u64| {
        if start == end {
            start.to_string()
        } else {
            format!("{start}..={end}")
        }
    };
    let Some((&first, rest)) = heights.split_first() else {
        return "none".into();
    };
    let mut parts = Vec::new();
    let (mut start, mut end) = (first, first);
    for &h in rest {
        if h == end + 1 {
            end = h;
        } else {
            parts.push(run(start, end));
            (start, end) = (h, h);
        }
    }
    parts.push(run(start, end));
    parts.join(", ")
}

/// Whether files in directory `path` (created if missing) can be written with
/// `O_DIRECT`: opens a probe file that way, writes one aligned block, and removes it.
#[cfg(target_os = "linux")]
fn supports_direct_io(path: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const ALIGN: usize = 4096;
    if std::fs::create_dir_all(path).is_err() {
        return false;
    }
    let probe = path.join("direct-io-probe");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .and_then(|mut file| {
            let buffer = vec![0u8; 2 * ALIGN];
            let start = buffer.as_ptr().align_offset(ALIGN);
            let block = buffer
                .get(start..start + ALIGN)
                .ok_or(std::io::ErrorKind::Other)?;
            file.write_all(block)
        });
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

#[cfg(not(target_os = "linux"))]
fn supports_direct_io(_path: &Path) -> bool {
    false
}

fn open_db(path: &Path, options: &StoreOptions) -> Result<DB, LedgerError> {
    let cache = Cache::new_lru_cache(options.block_cache_bytes);
    let mut db_options = Options::default();
    db_options.create_if_missing(true);
    db_options.create_missing_column_families(true);
    db_options.set_max_background_jobs(2);
    // Flushes and compactions run at the lowest CPU priority (nice 19), in whatever
    // time the node leaves idle. They are not urgent: a full memtable has a second one
    // behind it, which under load takes tens of seconds to fill. At normal priority a
    // flush took its share of a busy machine at once; the validators of a network
    // write the same bytes at the same pace, so they flushed together, and on a
    // saturated host the consensus round then waited on all of them (measured: a
    // one-to-two-second burst of commit latency at each flush of the blocks column
    // family, about every 370,000 transactions).
    let mut env = rocksdb::Env::new()?;
    env.lower_thread_pool_cpu_priority();
    env.lower_high_priority_thread_pool_cpu_priority();
    db_options.set_env(&env);
    // Flushes and compactions write their table files with direct I/O, past the page
    // cache. Buffered, a flush left tens of megabytes dirty at once, and the file
    // system's journal made every fsync of the write-ahead log (several per height)
    // wait behind their writeback: 5 to 10 ms each became up to 28, and each flush
    // of the blocks column family cost a second of commit latency (measured at 10,800
    // tx/s on ext4: per-second p99 up to 982 ms, and 293 with direct I/O). Only where
    // the file system takes direct I/O, which a probe in the store's directory finds
    // out; elsewhere RocksDB would fail its first flush.
    if supports_direct_io(path) {
        db_options.set_use_direct_io_for_flush_and_compaction(true);
    }
    db_options.set_bytes_per_sync(1 << 20);
    // The vector memtable needs this; there is only one writer anyway.
    db_options.set_allow_concurrent_memtable_write(false);
    // RocksDB refuses to open a database without naming every column family it has;
    // a store of another schema may have others, and is then refused by its schema
    // version with a clear message rather than by RocksDB.
    let mut names: Vec<String> = COLUMN_FAMILIES.iter().map(|n| (*n).to_owned()).collect();
    if let Ok(existing) = DB::list_cf(&db_options, path) {
        for name in existing {
            if name != "default" && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    let descriptors = names.into_iter().map(|name| {
        let mut cf_options = Options::default();
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        table.set_bloom_filter(10.0, false);
        cf_options.set_block_based_table_factory(&table);
        cf_options.set_level_compaction_dynamic_level_bytes(true);
        // Index entries and undo records are mostly hashes, which do not compress.
        let compression = match name.as_str() {
            CF_TX_INDEX | CF_STATE_HISTORY => DBCompressionType::None,
            _ => DBCompressionType::Lz4,
        };
        cf_options.set_compression_type(compression);
        if name == CF_STATE_VALUES {
            // Values are written by every block and read back only when the store
            // opens, in one full scan: an unsorted vector memtable (sorted when it is
            // flushed) takes random keys at about a quarter of a skip list's cost.
            cf_options.set_memtable_factory(rocksdb::MemtableFactory::Vector);
            // Its flush sorts the whole vector at once. At 64 MB (a million entries,
            // two per transfer) that took 6 s on each node under load, on all four at
            // the same moment, and latency rose for those seconds; at 16 MB the sorts
            // are a quarter of the size and four times as often, for the same CPU per
            // key (the `memtables` example, the process's CPU per key with flushes
            // included: 925 to 958 ns at 16 MB, 917 to 975 ns at 64 MB).
            cf_options.set_write_buffer_size(16 << 20);
        }
        if name == CF_TX_INDEX {
            // A block adds one entry per transaction, under its (random) hash. In a
            // skip list of 64 MB (the default) each insert walks levels of cache
            // misses: under load about 5% of the machine, on the commit path. At 8 MB
            // the list is a fraction of the cache and its flushes are small: measured
            // (1.2 million random keys, batches of 3,000), inserts took 680 ns a key
            // instead of 1,260, and the process's CPU in all, flushes and compactions
            // included, 1,100 ns instead of 1,525. (A hash-bucketed memtable inserted
            // in 350 ns but spent 2 s sorting at each flush: 2,000 ns in all.)
            cf_options.set_write_buffer_size(8 << 20);
        }
        ColumnFamilyDescriptor::new(name, cf_options)
    });
    Ok(DB::open_cf_descriptors(&db_options, path, descriptors)?)
}

/// The store reads as the latest committed state. Only the one writer (the host that
/// commits blocks) should execute against it; readers that may race a commit use
/// [`Store::state_at`], whose view does not change.
impl StateReader for Store {
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(read_lock(&self.versions).latest().get(key))
    }

    fn values(&self, keys: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        Ok(read_lock(&self.versions).latest().get_many(keys))
    }

    fn version(&self) -> u64 {
        read_lock(&self.versions).latest_height()
    }

    fn tree(&self) -> Result<Tree, LedgerError> {
        Ok(read_lock(&self.versions).latest().clone())
    }
}

/// The state at one kept height: a tree handle that later commits do not change.
#[derive(Clone, Debug)]
pub struct HistoricState {
    tree: Tree,
    version: u64,
}

impl StateReader for HistoricState {
    fn value(&self, key: &Hash) -> Result<Option<Vec<u8>>, LedgerError> {
        Ok(self.tree.get(key))
    }

    fn values(&self, keys: &[Hash]) -> Result<Vec<Option<Vec<u8>>>, LedgerError> {
        Ok(self.tree.get_many(keys))
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn tree(&self) -> Result<Tree, LedgerError> {
        Ok(self.tree.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_direct_io_probe_leaves_nothing_and_refuses_a_path_it_cannot_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db");
        // Whatever the file system answers, the probe makes the directory and leaves
        // it empty.
        let _ = supports_direct_io(&db);
        assert!(db.is_dir());
        assert_eq!(std::fs::read_dir(&db).expect("readable").count(), 0);
        // Below a regular file no directory can be made.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("writable");
        assert!(!supports_direct_io(&file.join("db")));
    }
}
