//! A binary sparse Merkle tree over 256-bit keys, with compressed empty subtrees, held
//! in memory as a persistent (immutable, structurally shared) tree.
//!
//! # Shape
//!
//! Conceptually the tree has a leaf position for every 256-bit key. Empty subtrees hash
//! to [`Hash::ZERO`], and a subtree holding exactly one leaf is replaced by that leaf
//! (as in Diem's and Aptos' Jellyfish Merkle tree), so a tree of `n` keys is about
//! `log2(n)` levels deep rather than 256:
//!
//! - leaf: `H(0x00 || key || value_hash)`, where `value_hash` is
//!   [`crate::state::value_hash`] of the value bytes;
//! - internal node: `H(0x01 || left || right)`, never with one leaf and one empty child.
//!
//! The root therefore depends only on the set of (key, value) pairs: not on the order
//! or batching of updates, nor on how the tree is held. [`root_from_leaves`] computes
//! it straight from that definition, as the reference the tree is tested against.
//!
//! # Versions
//!
//! A [`Tree`] is a value: [`Tree::update`] returns a new tree and leaves the old one as
//! it was, sharing every subtree the update did not touch (path copying, as in
//! persistent data structures and Diem's in-memory speculative tree). So the state a
//! proposal would produce, the committed state, and each of the last K committed
//! versions exist side by side, each costing only the nodes it changed (for a batch of
//! `b` random keys in a tree of `n`, about `b * (log2(n / b) + 2)` new nodes). Leaves
//! hold the value bytes, so a version answers reads and proofs by itself.
//!
//! # Memory
//!
//! Nodes live in an arena shared by all versions of one tree ([`Tree::new`] starts a
//! new one), addressed by index, each internal node holding its children's hashes.
//! There are no reference counts: at a million keys almost every node below the top
//! levels is a cache miss, and an atomic count update on each shared sibling (and on
//! each node freed) waits for its miss before the next can start, which made them a
//! third of an update's time. Nodes are reclaimed explicitly instead, the way the
//! Jellyfish Merkle tree prunes stale nodes:
//!
//! - an update records the nodes it created and the nodes of its base it replaced;
//! - a tree that is dropped without being committed frees the nodes it created;
//! - a committed tree becomes the next version of a [`VersionChain`]; the nodes it
//!   replaced are freed once the version before it is no longer kept and no handle
//!   that can reach them (a reader's view, an uncommitted tree built on it) remains.
//!
//! Why memory rather than tree nodes on disk: the tree is a function of the stored
//! values, and writing its nodes is most of what a block would otherwise write (about
//! 1 KiB per updated key when this tree was stored in pages of four levels, which
//! capped committed updates at half the rate of a single core's signature checks). The
//! store keeps the values and rebuilds the tree from them when it opens; see
//! [`crate::store`].

pub mod hashing;
mod proof;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use stele_consensus::Hash;

pub use proof::{ProofLeaf, SparseMerkleProof};

use hashing::{internal_hash, key_bit, leaf_hash};

use crate::state::value_hash;

/// A change to the tree: a key and its new value, `None` to remove it.
pub type TreeChange<V = Vec<u8>> = (Hash, Option<V>);

/// A node's index in the arena: `0` is the empty subtree, the top bit marks a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ref(u32);

const LEAF_BIT: u32 = 1 << 31;

enum Kind {
    Empty,
    Leaf(usize),
    Internal(usize),
}

impl Ref {
    const EMPTY: Ref = Ref(0);

    fn kind(self) -> Kind {
        if self.0 == 0 {
            Kind::Empty
        } else if self.0 & LEAF_BIT != 0 {
            Kind::Leaf((self.0 & !LEAF_BIT) as usize)
        } else {
            Kind::Internal(self.0 as usize)
        }
    }
}

/// A subtree as its parent holds it: where it is and its hash.
#[derive(Clone, Copy, Debug)]
struct Child {
    node: Ref,
    hash: Hash,
}

impl Child {
    const EMPTY: Child = Child {
        node: Ref::EMPTY,
        hash: Hash::ZERO,
    };
}

/// The hashes of an internal node's two subtrees (never one leaf beside an empty one:
/// that leaf would move up). Kept apart from the children's indices, and a cache line
/// each: a walk down the tree reads only the indices, eight nodes to a cache line, so
/// the upper levels of even a large tree stay in the cache.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct ChildHashes([Hash; 2]);

struct LeafNode {
    key: Hash,
    value: LeafValue,
}

/// Bytes up to this long are kept inside the leaf (an account is 17): no allocation
/// of their own, and one cache miss less per read.
const INLINE_VALUE_BYTES: usize = 30;

enum LeafValue {
    Inline {
        len: u8,
        bytes: [u8; INLINE_VALUE_BYTES],
    },
    Heap(Box<[u8]>),
}

impl LeafValue {
    fn new(value: &[u8]) -> LeafValue {
        if value.len() <= INLINE_VALUE_BYTES {
            let mut bytes = [0u8; INLINE_VALUE_BYTES];
            bytes[..value.len()].copy_from_slice(value);
            LeafValue::Inline {
                len: value.len() as u8,
                bytes,
            }
        } else {
            LeafValue::Heap(value.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            LeafValue::Inline { len, bytes } => &bytes[..*len as usize],
            LeafValue::Heap(bytes) => bytes,
        }
    }
}

/// The nodes of every version of one tree. Internal node `i` is `children[i]` and
/// `hashes[i]`.
#[derive(Default)]
struct Arena {
    children: Vec<[Ref; 2]>,
    hashes: Vec<ChildHashes>,
    leaves: Vec<LeafNode>,
    internal_slots: Slots,
    leaf_slots: Slots,
}

/// Slots per chunk of a node array: [`Slots`] fills one chunk at a time.
const CHUNK_SLOTS: usize = 4096;

/// A chunk is refilled only while at least this many of its slots are free; when no
/// chunk has that many, the array grows by a chunk instead. This bounds the arena at
/// about 4/3 of its live nodes in the worst case, while each refill still places a
/// thousand nodes or more within a few hundred kilobytes.
const REFILL_MIN_FREE: u32 = (CHUNK_SLOTS / 4) as u32;

/// Which slots of one node array are free, and where new nodes go.
///
/// New nodes fill one chunk of the array at a time, in address order, rather than
/// taking freed slots wherever they lie. A block's update makes about a dozen nodes
/// per changed key; the slots its nodes replace, freed when their version is no longer
/// kept, lie all over an arena of hundreds of megabytes, and writing into them one by
/// one costs a cache miss and a TLB miss per node. Filled by chunk, the same writes
/// land on a few dozen pages. Measured at a million keys (the state bench, 1,000-key
/// blocks, same machine and day): the tree update went from 9.5 ms with a LIFO free
/// list to 6.1-6.9 ms.
#[derive(Default)]
struct Slots {
    /// One bit per slot of the array, set while the slot is free.
    free: Vec<u64>,
    /// Free slots per chunk.
    chunk_free: Vec<u32>,
    /// Free slots in all.
    free_count: usize,
    /// The chunk being filled, and the first of its slots not yet looked at.
    filling: Option<(usize, usize)>,
    /// Slots still to be appended at the end of the array before a chunk is chosen
    /// again.
    appending: usize,
}

impl Slots {
    fn is_free(&self, slot: usize) -> bool {
        self.free
            .get(slot / 64)
            .is_some_and(|word| word & (1 << (slot % 64)) != 0)
    }

    /// A free slot for a new node, or `None`: then the node goes at the end of the
    /// array, of which `len` slots exist, and the caller tells [`Slots::appended`].
    fn take(&mut self, len: usize) -> Option<usize> {
        loop {
            if let Some((chunk, next)) = self.filling {
                let end = ((chunk + 1) * CHUNK_SLOTS).min(len);
                if let Some(slot) = self.next_free(next, end) {
                    self.free[slot / 64] &= !(1 << (slot % 64));
                    self.chunk_free[chunk] -= 1;
                    self.free_count -= 1;
                    self.filling = Some((chunk, slot + 1));
                    return Some(slot);
                }
                self.filling = None;
            }
            if self.appending > 0 {
                self.appending -= 1;
                return None;
            }
            let best = self
                .chunk_free
                .iter()
                .enumerate()
                .max_by_key(|&(_, free)| *free)
                .filter(|&(_, free)| *free >= REFILL_MIN_FREE);
            match best {
                Some((chunk, _)) => self.filling = Some((chunk, chunk * CHUNK_SLOTS)),
                None => self.appending = CHUNK_SLOTS,
            }
        }
    }

    /// The first free slot in `from..end`.
    fn next_free(&self, from: usize, end: usize) -> Option<usize> {
        let mut word_index = from / 64;
        let mut word = self.free.get(word_index)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let slot = word_index * 64 + word.trailing_zeros() as usize;
                return (slot < end).then_some(slot);
            }
            word_index += 1;
            if word_index * 64 >= end {
                return None;
            }
            word = *self.free.get(word_index)?;
        }
    }

    /// Slot `slot` was added at the end of the array.
    fn appended(&mut self, slot: usize) {
        let chunks = slot / CHUNK_SLOTS + 1;
        if self.chunk_free.len() < chunks {
            self.chunk_free.resize(chunks, 0);
        }
    }

    fn release(&mut self, slot: usize) {
        debug_assert!(!self.is_free(slot), "freed twice");
        let word = slot / 64;
        if word >= self.free.len() {
            self.free.resize(word + 1, 0);
        }
        self.free[word] |= 1 << (slot % 64);
        self.chunk_free[slot / CHUNK_SLOTS] += 1;
        self.free_count += 1;
    }
}

impl Arena {
    fn new() -> Arena {
        // Index 0 of the internal nodes is the empty subtree's, never used.
        let mut arena = Arena {
            children: vec![[Ref::EMPTY; 2]],
            hashes: vec![ChildHashes([Hash::ZERO; 2])],
            ..Arena::default()
        };
        // Slot 0 never holds a node, and is never handed out.
        arena.internal_slots.appended(0);
        arena
    }

    /// Child `side` (0 left, 1 right) of internal node `index`.
    fn child(&self, index: usize, side: usize) -> Ref {
        debug_assert!(!self.internal_slots.is_free(index), "freed node read");
        self.children[index][side]
    }

    /// Both children of internal node `index`, with their hashes.
    fn children(&self, index: usize) -> [Child; 2] {
        debug_assert!(!self.internal_slots.is_free(index), "freed node read");
        let [left, right] = self.children[index];
        let [left_hash, right_hash] = self.hashes[index].0;
        [
            Child {
                node: left,
                hash: left_hash,
            },
            Child {
                node: right,
                hash: right_hash,
            },
        ]
    }

    fn leaf(&self, index: usize) -> &LeafNode {
        debug_assert!(!self.leaf_slots.is_free(index), "freed leaf read");
        &self.leaves[index]
    }

    fn add_internal(&mut self, children: [Child; 2], made: &mut Vec<Ref>) -> Ref {
        let refs = [children[0].node, children[1].node];
        let hashes = ChildHashes([children[0].hash, children[1].hash]);
        let index = match self.internal_slots.take(self.children.len()) {
            Some(index) => {
                self.children[index] = refs;
                self.hashes[index] = hashes;
                index as u32
            }
            None => {
                let index = u32::try_from(self.children.len())
                    .ok()
                    .filter(|i| i & LEAF_BIT == 0)
                    .expect("state tree: more than 2^31 internal nodes");
                self.internal_slots.appended(self.children.len());
                self.children.push(refs);
                self.hashes.push(hashes);
                index
            }
        };
        made.push(Ref(index));
        Ref(index)
    }

    fn add_leaf(&mut self, key: Hash, value: &[u8], made: &mut Vec<Ref>) -> Child {
        let hash = leaf_hash(&key, &value_hash(value));
        let node = LeafNode {
            key,
            value: LeafValue::new(value),
        };
        let index = match self.leaf_slots.take(self.leaves.len()) {
            Some(index) => {
                self.leaves[index] = node;
                index as u32
            }
            None => {
                let index = u32::try_from(self.leaves.len())
                    .ok()
                    .filter(|i| i & LEAF_BIT == 0)
                    .expect("state tree: more than 2^31 leaves");
                self.leaf_slots.appended(self.leaves.len());
                self.leaves.push(node);
                index
            }
        };
        let node = Ref(index | LEAF_BIT);
        made.push(node);
        Child { node, hash }
    }

    fn free(&mut self, nodes: &[Ref]) {
        for node in nodes {
            match node.kind() {
                Kind::Empty => {}
                Kind::Internal(index) => self.internal_slots.release(index),
                Kind::Leaf(index) => self.leaf_slots.release(index),
            }
        }
    }

    /// The parent of `left` and `right`, compressing as the shape requires.
    fn join(&mut self, left: Child, right: Child, made: &mut Vec<Ref>) -> Child {
        match (left.node.kind(), right.node.kind()) {
            (Kind::Empty, Kind::Empty) => Child::EMPTY,
            (Kind::Leaf(_), Kind::Empty) => left,
            (Kind::Empty, Kind::Leaf(_)) => right,
            _ => Child {
                hash: internal_hash(&left.hash, &right.hash),
                node: self.add_internal([left, right], made),
            },
        }
    }

    fn leaf_key(&self, child: &Child) -> &Hash {
        match child.node.kind() {
            Kind::Leaf(index) => &self.leaf(index).key,
            _ => unreachable!("only leaves are merged and built"),
        }
    }
}

/// The arena and its lock.
#[derive(Default)]
struct Shared {
    arena: RwLock<Arena>,
}

impl Shared {
    // Every change to the arena completes before its guard is released (a panic in
    // between is an assertion failure in tree code, after which nothing is committed),
    // so a poisoned lock still guards consistent nodes.
    fn read(&self) -> RwLockReadGuard<'_, Arena> {
        self.arena
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Arena> {
        self.arena
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a tree's nodes depend on. A handle holding an origin keeps every node it can
/// reach from being freed (see the module documentation).
enum Origin {
    /// A version of a [`VersionChain`] (or a new tree's empty start).
    Version,
    /// Made by [`Tree::update`] from a tree of origin `base`.
    Update {
        base: Arc<Origin>,
        /// `None` once committed.
        nodes: Mutex<Option<UpdateNodes>>,
        /// The version it became, if committed.
        committed_as: OnceLock<Arc<Origin>>,
    },
}

/// The nodes an update made and the nodes of its base it replaced.
struct UpdateNodes {
    shared: Arc<Shared>,
    made: Vec<Ref>,
    replaced: Vec<Ref>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Origin::Update { nodes, .. } = self {
            let taken = nodes
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            if let Some(update) = taken {
                update.shared.write().free(&update.made);
            }
        }
    }
}

/// A version of the state tree. Cloning is cheap.
#[derive(Clone)]
pub struct Tree {
    shared: Arc<Shared>,
    root: Child,
    origin: Arc<Origin>,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("root", &self.root_hash())
            .finish_non_exhaustive()
    }
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new()
    }
}

impl Tree {
    /// An empty tree, with an arena of its own.
    pub fn new() -> Tree {
        Tree {
            shared: Arc::new(Shared {
                arena: RwLock::new(Arena::new()),
            }),
            root: Child::EMPTY,
            origin: Arc::new(Origin::Version),
        }
    }

    /// The tree holding exactly `leaves` (key, value). If a key appears more than
    /// once, the last entry wins.
    pub fn from_leaves(leaves: Vec<(Hash, Vec<u8>)>) -> Tree {
        Tree::new().update(leaves.into_iter().map(|(k, v)| (k, Some(v))).collect())
    }

    /// The root hash ([`Hash::ZERO`] when empty).
    pub fn root_hash(&self) -> Hash {
        self.root.hash
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.root.node == Ref::EMPTY
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &Hash) -> Option<Vec<u8>> {
        let arena = self.shared.read();
        let mut node = self.root.node;
        let mut depth = 0;
        loop {
            match node.kind() {
                Kind::Empty => return None,
                Kind::Leaf(index) => {
                    let leaf = arena.leaf(index);
                    return (leaf.key == *key).then(|| leaf.value.as_slice().to_vec());
                }
                Kind::Internal(index) => {
                    node = arena.child(index, usize::from(key_bit(key, depth)));
                    depth += 1;
                }
            }
        }
    }

    /// The values stored under `keys`, in order. The walks of several keys advance
    /// together, one level at a time, so that their cache misses overlap instead of
    /// following one another (measured at a million keys: a third of the time of
    /// separate lookups).
    pub fn get_many(&self, keys: &[Hash]) -> Vec<Option<Vec<u8>>> {
        const LANES: usize = 16;
        let arena = self.shared.read();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LANES) {
            let mut nodes = [self.root.node; LANES];
            let mut walking = chunk.len();
            let mut depth = 0;
            while walking > 0 {
                walking = 0;
                for (lane, key) in chunk.iter().enumerate() {
                    if let Kind::Internal(index) = nodes[lane].kind() {
                        nodes[lane] = arena.child(index, usize::from(key_bit(key, depth)));
                        walking += 1;
                    }
                }
                depth += 1;
            }
            for (lane, key) in chunk.iter().enumerate() {
                out.push(match nodes[lane].kind() {
                    Kind::Leaf(index) if arena.leaf(index).key == *key => {
                        Some(arena.leaf(index).value.as_slice().to_vec())
                    }
                    _ => None,
                });
            }
        }
        out
    }

    /// The tree with `changes` applied; `self` is unchanged. If a key appears more than
    /// once, the last entry wins.
    pub fn update<V: AsRef<[u8]>>(&self, mut changes: Vec<TreeChange<V>>) -> Tree {
        if !changes.windows(2).all(|w| w[0].0 < w[1].0) {
            // A stable sort keeps equal keys in input order; keep the last of each run.
            changes.sort_by_key(|change| change.0);
            changes.reverse();
            changes.dedup_by_key(|change| change.0);
            changes.reverse();
        }
        let mut update = UpdateNodes {
            shared: Arc::clone(&self.shared),
            made: Vec::new(),
            replaced: Vec::new(),
        };
        let root = {
            let mut arena = self.shared.write();
            let mut walk = Walk {
                arena: &mut arena,
                made: &mut update.made,
                replaced: &mut update.replaced,
            };
            walk.update(self.root, 0, &mut changes)
        };
        Tree {
            shared: Arc::clone(&self.shared),
            root,
            origin: Arc::new(Origin::Update {
                base: Arc::clone(&self.origin),
                nodes: Mutex::new(Some(update)),
                committed_as: OnceLock::new(),
            }),
        }
    }

    /// The proof of `key`'s value, or of its absence.
    pub fn prove(&self, key: &Hash) -> SparseMerkleProof {
        let arena = self.shared.read();
        let mut siblings = Vec::new();
        let mut node = self.root.node;
        let mut depth = 0;
        loop {
            match node.kind() {
                Kind::Empty => {
                    return SparseMerkleProof {
                        leaf: None,
                        siblings,
                    };
                }
                Kind::Leaf(index) => {
                    let leaf = arena.leaf(index);
                    return SparseMerkleProof {
                        leaf: Some(ProofLeaf {
                            key: leaf.key,
                            value_hash: value_hash(leaf.value.as_slice()),
                        }),
                        siblings,
                    };
                }
                Kind::Internal(index) => {
                    let side = usize::from(key_bit(key, depth));
                    siblings.push(arena.hashes[index].0[1 - side]);
                    node = arena.child(index, side);
                    depth += 1;
                }
            }
        }
    }

    /// Every (key, value), in key order.
    pub fn leaves(&self) -> Vec<(Hash, Vec<u8>)> {
        let arena = self.shared.read();
        let mut out = Vec::new();
        let mut stack = vec![self.root.node];
        while let Some(node) = stack.pop() {
            match node.kind() {
                Kind::Empty => {}
                Kind::Leaf(index) => {
                    let leaf = arena.leaf(index);
                    out.push((leaf.key, leaf.value.as_slice().to_vec()));
                }
                Kind::Internal(index) => {
                    stack.push(arena.child(index, 1));
                    stack.push(arena.child(index, 0));
                }
            }
        }
        out
    }

    /// Number of keys held (walks the whole tree).
    pub fn len(&self) -> usize {
        let arena = self.shared.read();
        let mut count = 0;
        let mut stack = vec![self.root.node];
        while let Some(node) = stack.pop() {
            match node.kind() {
                Kind::Empty => {}
                Kind::Leaf(_) => count += 1,
                Kind::Internal(index) => {
                    stack.push(arena.child(index, 1));
                    stack.push(arena.child(index, 0));
                }
            }
        }
        count
    }

    /// Slots in the arena this tree belongs to, internal and leaves, free or not: what
    /// its memory holds room for. For tests and memory accounting.
    pub fn arena_slots(&self) -> (usize, usize) {
        let arena = self.shared.read();
        (arena.children.len() - 1, arena.leaves.len())
    }

    /// Nodes in the arena this tree belongs to (all versions), internal and leaves,
    /// not counting freed slots. For tests and memory accounting.
    pub fn arena_nodes(&self) -> (usize, usize) {
        let arena = self.shared.read();
        (
            arena.children.len() - 1 - arena.internal_slots.free_count,
            arena.leaves.len() - arena.leaf_slots.free_count,
        )
    }
}

/// One update in progress, holding the arena for writing.
struct Walk<'a> {
    arena: &'a mut Arena,
    made: &'a mut Vec<Ref>,
    replaced: &'a mut Vec<Ref>,
}

impl Walk<'_> {
    /// Applies `changes` (sorted, distinct keys, all below `child`, which sits at
    /// `depth`). Values are moved out of `changes` into the new leaves.
    fn update<V: AsRef<[u8]>>(
        &mut self,
        child: Child,
        depth: usize,
        changes: &mut [TreeChange<V>],
    ) -> Child {
        if changes.is_empty() {
            return child;
        }
        match child.node.kind() {
            Kind::Internal(index) => {
                assert!(depth < 256, "an internal node below the last key bit");
                let [left, right] = self.arena.children(index);
                let split = changes.partition_point(|(key, _)| !key_bit(key, depth));
                let (left_changes, right_changes) = changes.split_at_mut(split);
                let new_left = self.update(left, depth + 1, left_changes);
                let new_right = self.update(right, depth + 1, right_changes);
                if new_left.node == left.node && new_right.node == right.node {
                    return child;
                }
                self.replaced.push(child.node);
                self.arena.join(new_left, new_right, self.made)
            }
            Kind::Empty => {
                let mut leaves = Vec::with_capacity(changes.len());
                for (key, value) in changes.iter_mut() {
                    if let Some(value) = value.take() {
                        leaves.push(self.arena.add_leaf(*key, value.as_ref(), self.made));
                    }
                }
                self.build(depth, &leaves)
            }
            Kind::Leaf(index) => {
                let existing = self.arena.leaf(index).key;
                // The common case: the one key this leaf holds gets a new value.
                if let [(key, value)] = changes
                    && *key == existing
                {
                    self.replaced.push(child.node);
                    return match value.take() {
                        Some(value) => self.arena.add_leaf(*key, value.as_ref(), self.made),
                        None => Child::EMPTY,
                    };
                }
                let mut leaves = Vec::with_capacity(changes.len() + 1);
                let mut kept = Some(child);
                for (key, value) in changes.iter_mut() {
                    if kept.is_some() && existing <= *key {
                        // The existing leaf goes in order, unless a change names its key.
                        let leaf = kept.take();
                        if existing < *key {
                            leaves.extend(leaf);
                        } else {
                            self.replaced.push(child.node);
                        }
                    }
                    if let Some(value) = value.take() {
                        leaves.push(self.arena.add_leaf(*key, value.as_ref(), self.made));
                    }
                }
                leaves.extend(kept);
                self.build(depth, &leaves)
            }
        }
    }

    /// The subtree at `depth` holding exactly `leaves` (sorted, distinct keys).
    fn build(&mut self, depth: usize, leaves: &[Child]) -> Child {
        match leaves {
            [] => Child::EMPTY,
            [leaf] => *leaf,
            _ => {
                // Distinct keys differ in some bit, so this ends before depth 256.
                assert!(depth < 256, "distinct keys with every bit equal");
                let split =
                    leaves.partition_point(|leaf| !key_bit(self.arena.leaf_key(leaf), depth));
                let left = self.build(depth + 1, &leaves[..split]);
                let right = self.build(depth + 1, &leaves[split..]);
                self.arena.join(left, right, self.made)
            }
        }
    }
}

/// Why [`VersionChain::commit`] refused a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the tree was not made by one update of the latest version")]
pub struct NotNextVersion;

/// Consecutive committed versions of one tree, oldest first, and the reclamation of
/// the nodes that no kept version needs.
pub struct VersionChain {
    versions: VecDeque<Tree>,
    /// Per released version `u`, oldest first: its origin and the nodes the version
    /// after it replaced (nodes of `u` no later version holds). Freed once nothing
    /// but this queue holds the origin, in order.
    releasing: VecDeque<(Arc<Origin>, UpdateNodes)>,
}

impl VersionChain {
    /// A chain whose only version is `tree`, made by [`Tree::update`] (or
    /// [`Tree::from_leaves`]).
    pub fn start(tree: &Tree) -> VersionChain {
        let version = Self::adopt(tree).unwrap_or_else(|| tree.clone());
        VersionChain {
            versions: VecDeque::from([version]),
            releasing: VecDeque::new(),
        }
    }

    /// Takes over an updated tree's nodes: returns the version handle, and the
    /// update's node lists. `None` if `tree` is not an uncommitted update.
    fn adopt_nodes(tree: &Tree) -> Option<(Tree, UpdateNodes)> {
        let Origin::Update {
            nodes,
            committed_as,
            ..
        } = &*tree.origin
        else {
            return None;
        };
        let taken = nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()?;
        let origin = Arc::new(Origin::Version);
        // The update's own handles now keep the version's nodes alive too.
        let _ = committed_as.set(Arc::clone(&origin));
        Some((
            Tree {
                shared: Arc::clone(&tree.shared),
                root: tree.root,
                origin,
            },
            taken,
        ))
    }

    fn adopt(tree: &Tree) -> Option<Tree> {
        Self::adopt_nodes(tree).map(|(version, _)| version)
    }

    /// The latest version.
    pub fn latest(&self) -> &Tree {
        self.versions
            .back()
            .expect("a chain holds at least one version")
    }

    /// The oldest kept version.
    pub fn oldest(&self) -> &Tree {
        self.versions
            .front()
            .expect("a chain holds at least one version")
    }

    /// Versions kept.
    pub fn len(&self) -> usize {
        self.versions.len()
    }

    /// Whether no version is kept (never: a chain starts with one).
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// The version `back` steps before the latest (0 is the latest).
    pub fn back(&self, back: usize) -> Option<&Tree> {
        self.versions
            .len()
            .checked_sub(back + 1)
            .and_then(|i| self.versions.get(i))
    }

    /// Makes `tree`, one [`Tree::update`] of the latest version, the new latest.
    pub fn commit(&mut self, tree: &Tree) -> Result<(), NotNextVersion> {
        let latest = self.latest();
        let Origin::Update { base, .. } = &*tree.origin else {
            return Err(NotNextVersion);
        };
        if !Arc::ptr_eq(base, &latest.origin) || !Arc::ptr_eq(&tree.shared, &latest.shared) {
            return Err(NotNextVersion);
        }
        let latest_origin = Arc::clone(&latest.origin);
        let (version, update) = Self::adopt_nodes(tree).ok_or(NotNextVersion)?;
        // What the update replaced are nodes of the version before it.
        self.releasing.push_back((latest_origin, update));
        self.versions.push_back(version);
        self.release();
        Ok(())
    }

    /// Adds `tree`, one [`Tree::update`] of the oldest version that undoes the change
    /// into it, as the new oldest version (rebuilding history backwards).
    pub fn push_older(&mut self, tree: &Tree) -> Result<(), NotNextVersion> {
        let oldest = self.oldest();
        let Origin::Update { base, .. } = &*tree.origin else {
            return Err(NotNextVersion);
        };
        if !Arc::ptr_eq(base, &oldest.origin) || !Arc::ptr_eq(&tree.shared, &oldest.shared) {
            return Err(NotNextVersion);
        }
        let (version, mut update) = Self::adopt_nodes(tree).ok_or(NotNextVersion)?;
        // Going forward again, the nodes this backward update made are the ones the
        // next version replaces; what it replaced belongs to the newer version.
        std::mem::swap(&mut update.made, &mut update.replaced);
        update.made.clear();
        self.releasing
            .push_front((Arc::clone(&version.origin), update));
        self.versions.push_front(version);
        Ok(())
    }

    /// Drops the oldest versions until `keep` remain (at least one), freeing what no
    /// handle can reach any more.
    pub fn keep_latest(&mut self, keep: usize) {
        while self.versions.len() > keep.max(1) {
            self.versions.pop_front();
        }
        self.release();
    }

    /// Frees, oldest first, the nodes only released versions held.
    fn release(&mut self) {
        while let Some((origin, _)) = self.releasing.front() {
            if Arc::strong_count(origin) > 1 {
                break;
            }
            let (_, update) = self.releasing.pop_front().expect("front exists");
            update.shared.write().free(&update.replaced);
        }
    }
}

/// The root of the tree holding exactly `leaves` (key, value hash), computed directly
/// from the definition. The reference the tree is tested and checked against.
pub fn root_from_leaves(leaves: &mut [(Hash, Hash)]) -> Hash {
    leaves.sort_by_key(|l| l.0);
    subtree_root(leaves, 0)
}

fn subtree_root(leaves: &[(Hash, Hash)], depth: usize) -> Hash {
    match leaves {
        [] => Hash::ZERO,
        [(key, value_hash)] => leaf_hash(key, value_hash),
        _ => {
            let split = leaves.partition_point(|(key, _)| !key_bit(key, depth));
            internal_hash(
                &subtree_root(&leaves[..split], depth + 1),
                &subtree_root(&leaves[split..], depth + 1),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Hash {
        Hash::digest(&n.to_le_bytes())
    }

    fn v(n: u64) -> Vec<u8> {
        n.to_le_bytes().to_vec()
    }

    fn reference(tree: &Tree) -> Hash {
        let mut leaves: Vec<(Hash, Hash)> = tree
            .leaves()
            .into_iter()
            .map(|(k, v)| (k, value_hash(&v)))
            .collect();
        root_from_leaves(&mut leaves)
    }

    #[test]
    fn empty_and_single_leaf_roots() {
        let tree = Tree::new();
        assert_eq!(tree.root_hash(), Hash::ZERO);
        let one = tree.update(vec![(h(1), Some(v(10)))]);
        assert_eq!(one.root_hash(), leaf_hash(&h(1), &value_hash(&v(10))));
        assert_eq!(tree.root_hash(), Hash::ZERO, "the old version is unchanged");
        let none = one.update::<Vec<u8>>(vec![(h(1), None)]);
        assert!(none.is_empty());
        assert_eq!(one.get(&h(1)), Some(v(10)));
    }

    #[test]
    fn matches_reference_and_empties_completely() {
        let leaves: Vec<(Hash, Vec<u8>)> = (0..500).map(|i| (h(i), v(i + 1000))).collect();
        let tree = Tree::from_leaves(leaves.clone());
        assert_eq!(tree.root_hash(), reference(&tree));
        assert_eq!(tree.len(), 500);
        for (k, value) in &leaves {
            assert_eq!(tree.get(k).as_ref(), Some(value));
        }
        let mut probe: Vec<Hash> = leaves.iter().map(|(k, _)| *k).collect();
        probe.push(h(100_000));
        let many = tree.get_many(&probe);
        assert_eq!(many.len(), 501);
        assert!(
            many[..500]
                .iter()
                .zip(&leaves)
                .all(|(got, (_, v))| got.as_ref() == Some(v))
        );
        assert_eq!(many[500], None);
        // Keys come back in order.
        let keys: Vec<Hash> = tree.leaves().into_iter().map(|(k, _)| k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let emptied = tree.update::<Vec<u8>>(leaves.iter().map(|(k, _)| (*k, None)).collect());
        assert!(emptied.is_empty());
    }

    #[test]
    fn keys_sharing_long_prefixes() {
        // Keys equal except in the last bits make a long chain of internal nodes.
        let mut leaves = Vec::new();
        for last in [0u8, 1, 2, 0x80, 0xff] {
            let mut bytes = [0x42u8; 32];
            bytes[31] = last;
            leaves.push((Hash::from_bytes(bytes), v(u64::from(last))));
        }
        let tree = Tree::from_leaves(leaves.clone());
        assert_eq!(tree.root_hash(), reference(&tree));
        for (k, value) in &leaves {
            let proof = tree.prove(k);
            proof
                .verify(&tree.root_hash(), k, Some(&value_hash(value)))
                .unwrap();
        }
        // Removing all but one collapses the chain back to a lone leaf at the root.
        let one = tree.update::<Vec<u8>>(leaves[1..].iter().map(|(k, _)| (*k, None)).collect());
        assert_eq!(
            one.root_hash(),
            leaf_hash(&leaves[0].0, &value_hash(&leaves[0].1))
        );
    }

    #[test]
    fn last_entry_for_a_key_wins() {
        let tree = Tree::new().update(vec![
            (h(1), Some(v(2))),
            (h(1), Some(v(3))),
            (h(4), Some(v(5))),
            (h(4), None),
        ]);
        assert_eq!(tree.root_hash(), leaf_hash(&h(1), &value_hash(&v(3))));
    }

    #[test]
    fn dropped_updates_free_their_nodes() {
        let base = Tree::from_leaves((0..64).map(|i| (h(i), v(i))).collect());
        let chain = VersionChain::start(&base);
        let before = base.arena_nodes();
        {
            let changed = chain
                .latest()
                .update(vec![(h(3), Some(v(99))), (h(500), Some(v(1)))]);
            assert!(changed.arena_nodes().0 > before.0);
            // A removal of a key that is not there makes nothing.
            let same = chain.latest().update::<Vec<u8>>(vec![(h(1000), None)]);
            assert_eq!(same.root_hash(), base.root_hash());
        }
        assert_eq!(chain.latest().arena_nodes(), before);
    }

    #[test]
    fn replaced_nodes_are_freed_once_no_version_or_reader_needs_them() {
        let mut chain =
            VersionChain::start(&Tree::from_leaves((0..200).map(|i| (h(i), v(i))).collect()));
        let first = chain.latest().clone();
        let first_root = first.root_hash();
        let mut roots = vec![first_root];
        for round in 0..20u64 {
            let next = chain.latest().update(
                (0..10)
                    .map(|i| (h(i * 7 + round), Some(v(round))))
                    .collect(),
            );
            chain.commit(&next).unwrap();
            roots.push(next.root_hash());
            chain.keep_latest(3);
        }
        // A reader of the first version still sees it whole, long after it was dropped
        // from the chain: its nodes were not freed (and not reused).
        assert_eq!(reference(&first), first_root);
        assert_eq!(first.len(), 200);
        let with_reader = first.arena_nodes();
        drop(first);
        chain.keep_latest(3);
        let without = chain.latest().arena_nodes();
        assert!(without.0 < with_reader.0, "{without:?} vs {with_reader:?}");
        // The kept versions are intact.
        for back in 0..3 {
            let tree = chain.back(back).unwrap();
            assert_eq!(tree.root_hash(), roots[roots.len() - 1 - back]);
            assert_eq!(reference(tree), tree.root_hash());
        }
        // Only what the kept versions hold remains: 200 leaves in each of three
        // versions at most, and far fewer internal nodes than 20 rounds made.
        assert!(without.1 <= 200 + 2 * 10, "{without:?}");
        // Nothing but the chain: everything of the dropped versions is back.
        let stale = chain.latest().update(vec![(h(5000), Some(v(1)))]);
        assert!(chain.commit(&stale).is_ok());
        assert!(chain.commit(&stale).is_err(), "committed twice");
        let other = Tree::from_leaves(vec![(h(1), v(1))]).update(vec![(h(2), Some(v(2)))]);
        assert_eq!(chain.commit(&other), Err(NotNextVersion));
    }

    /// Slots are refilled a chunk at a time instead of one by one; the arena must still
    /// reuse what versions leave behind and grow no further than the bound
    /// `REFILL_MIN_FREE` sets (about 4/3 of the live nodes, plus the chunk being
    /// appended), however long the chain runs.
    #[test]
    fn arena_reuses_freed_slots_within_its_bound() {
        const KEYS: u64 = 30_000;
        const KEEP: usize = 6;
        let mut chain = VersionChain::start(&Tree::from_leaves(
            (0..KEYS).map(|i| (h(i), v(i))).collect(),
        ));
        let mut peak_live = chain.latest().arena_nodes();
        let mut slots_after = Vec::new();
        let mut state = 1u64;
        for round in 0..300u64 {
            // Deterministic pseudo-random keys, some updated, some removed, some new.
            let changes: Vec<TreeChange> = (0..400)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let key = (state >> 33) % (KEYS + KEYS / 10);
                    let value = (!state.is_multiple_of(10)).then(|| v(round));
                    (h(key), value)
                })
                .collect();
            let next = chain.latest().update(changes);
            chain.commit(&next).unwrap();
            chain.keep_latest(KEEP);
            let live = chain.latest().arena_nodes();
            peak_live = (peak_live.0.max(live.0), peak_live.1.max(live.1));
            slots_after.push(chain.latest().arena_slots());
        }
        let (internal_slots, leaf_slots) = *slots_after.last().unwrap();
        let bound = |live: usize| live * 4 / 3 + 2 * CHUNK_SLOTS;
        assert!(
            internal_slots <= bound(peak_live.0) && leaf_slots <= bound(peak_live.1),
            "slots {:?}, peak live {peak_live:?}",
            (internal_slots, leaf_slots)
        );
        // The second half of the run, in its steady state, grows the arena by at most
        // a chunk or two, not by the ~5,000 nodes every round makes.
        let half = slots_after[slots_after.len() / 2];
        assert!(
            internal_slots - half.0 <= 2 * CHUNK_SLOTS,
            "internal slots grew from {} to {internal_slots}",
            half.0
        );
        // Every kept version is intact after all the reuse.
        for back in 0..KEEP {
            let tree = chain.back(back).unwrap();
            assert_eq!(reference(tree), tree.root_hash());
        }
    }

    #[test]
    fn history_rebuilt_backwards_matches_forward() {
        let start = Tree::from_leaves((0..100).map(|i| (h(i), v(i))).collect());
        let mut forward = VersionChain::start(&start);
        let mut undo: Vec<Vec<TreeChange>> = Vec::new();
        for round in 1..=5u64 {
            let changes: Vec<TreeChange> = (0..8)
                .map(|i| (h(i * 11 + round), Some(v(round))))
                .collect();
            let old: Vec<TreeChange> = changes
                .iter()
                .map(|(k, _)| (*k, forward.latest().get(k)))
                .collect();
            undo.push(old);
            let next = forward.latest().update(changes);
            forward.commit(&next).unwrap();
        }
        // Rebuild from the latest leaves and the undo lists, as the store does.
        let latest = Tree::from_leaves(forward.latest().leaves());
        let mut backward = VersionChain::start(&latest);
        for old in undo.into_iter().rev() {
            let older = backward.oldest().update(old);
            backward.push_older(&older).unwrap();
        }
        assert_eq!(backward.len(), 6);
        for back in 0..6 {
            assert_eq!(
                backward.back(back).unwrap().root_hash(),
                forward.back(back).unwrap().root_hash()
            );
        }
        // Pruning the rebuilt history frees nodes as forward pruning would.
        let full = backward.latest().arena_nodes();
        backward.keep_latest(1);
        let pruned = backward.latest().arena_nodes();
        assert!(
            pruned.0 < full.0 && pruned.1 < full.1,
            "{pruned:?} vs {full:?}"
        );
        assert_eq!(pruned.1, 100, "only the latest leaves remain: {pruned:?}");
        assert_eq!(reference(backward.latest()), backward.latest().root_hash());
    }
}
