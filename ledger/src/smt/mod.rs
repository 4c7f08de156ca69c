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
//! # Representation
//!
//! A [`Tree`] is a value: [`Tree::update`] returns a new tree and leaves the old one as
//! it was, sharing every subtree the update did not touch (path copying, as in
//! persistent data structures and Diem's in-memory speculative tree). So the state a
//! proposal would produce, the committed state, and each of the last K committed
//! versions exist side by side, each costing only the nodes it changed (for a batch of
//! `b` random keys in a tree of `n`, about `b * (log2(n / b) + 2)` new nodes), and a
//! version is dropped by dropping its root. Leaves hold the value bytes, so a version
//! answers reads and proofs by itself.
//!
//! Why memory rather than tree nodes on disk: the tree is a function of the stored
//! values, and writing its nodes is most of what a block would otherwise write (about
//! 1 KiB per updated key when this tree was stored in pages of four levels, which
//! capped committed updates at half the rate of a single core's signature checks). The
//! store keeps the values and rebuilds the tree from them when it opens; see
//! [`crate::store`].

pub mod hashing;
mod proof;

use std::sync::Arc;

use stele_consensus::Hash;

pub use proof::{ProofLeaf, SparseMerkleProof};

use hashing::{internal_hash, key_bit, leaf_hash};

use crate::state::value_hash;

/// A version of the state tree. Cloning is cheap (one reference count).
#[derive(Clone, Default)]
pub struct Tree {
    root: Node,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("root", &self.root_hash())
            .finish_non_exhaustive()
    }
}

/// Dropping a version frees the nodes only it holds. Arc's own drop would recurse,
/// and each of its reference-count updates is an atomic instruction that waits for its
/// cache miss before the next can start; at a million keys nearly every node of an old
/// version is a miss. This drops breadth first instead: the counts of a whole level are
/// first read with plain loads, which overlap, and the atomic updates then find them
/// in the cache.
impl Drop for Tree {
    fn drop(&mut self) {
        let mut level = vec![std::mem::take(&mut self.root)];
        let mut next = Vec::new();
        while !level.is_empty() {
            let mut sum = 0usize;
            for node in &level {
                if let Node::Internal(internal) = node {
                    sum = sum.wrapping_add(Arc::strong_count(internal));
                }
            }
            std::hint::black_box(sum);
            for node in level.drain(..) {
                if let Node::Internal(internal) = node
                    && let Ok(owned) = Arc::try_unwrap(internal)
                {
                    let Internal { left, right, .. } = owned;
                    next.push(left);
                    next.push(right);
                }
            }
            std::mem::swap(&mut level, &mut next);
        }
    }
}

/// A subtree.
#[derive(Clone, Default)]
enum Node {
    #[default]
    Empty,
    Leaf(Arc<Leaf>),
    Internal(Arc<Internal>),
}

struct Leaf {
    key: Hash,
    /// `leaf_hash(key, value_hash(value))`.
    hash: Hash,
    value: LeafValue,
}

/// Bytes up to this long are kept inside the leaf (an account is 17): one allocation
/// and one cache miss less per leaf read, written and freed.
const INLINE_VALUE_BYTES: usize = 30;

enum LeafValue {
    Inline {
        len: u8,
        bytes: [u8; INLINE_VALUE_BYTES],
    },
    Heap(Box<[u8]>),
}

impl LeafValue {
    fn new(value: Vec<u8>) -> LeafValue {
        if value.len() <= INLINE_VALUE_BYTES {
            let mut bytes = [0u8; INLINE_VALUE_BYTES];
            bytes[..value.len()].copy_from_slice(&value);
            LeafValue::Inline {
                len: value.len() as u8,
                bytes,
            }
        } else {
            LeafValue::Heap(value.into_boxed_slice())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            LeafValue::Inline { len, bytes } => &bytes[..*len as usize],
            LeafValue::Heap(bytes) => bytes,
        }
    }
}

/// Two subtrees, not one leaf beside an empty one (that leaf would move up).
struct Internal {
    hash: Hash,
    left: Node,
    right: Node,
}

impl Node {
    fn hash(&self) -> Hash {
        match self {
            Node::Empty => Hash::ZERO,
            Node::Leaf(leaf) => leaf.hash,
            Node::Internal(node) => node.hash,
        }
    }

    fn leaf(key: Hash, value: Vec<u8>) -> Node {
        let hash = leaf_hash(&key, &value_hash(&value));
        Node::Leaf(Arc::new(Leaf {
            key,
            hash,
            value: LeafValue::new(value),
        }))
    }

    /// The parent of `left` and `right`, compressing as the shape requires.
    fn join(left: Node, right: Node) -> Node {
        match (&left, &right) {
            (Node::Empty, Node::Empty) => Node::Empty,
            (Node::Leaf(_), Node::Empty) => left,
            (Node::Empty, Node::Leaf(_)) => right,
            _ => Node::Internal(Arc::new(Internal {
                hash: internal_hash(&left.hash(), &right.hash()),
                left,
                right,
            })),
        }
    }

    /// Whether both are the very same subtree (not merely equal).
    fn same(&self, other: &Node) -> bool {
        match (self, other) {
            (Node::Empty, Node::Empty) => true,
            (Node::Leaf(a), Node::Leaf(b)) => Arc::ptr_eq(a, b),
            (Node::Internal(a), Node::Internal(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    fn leaf_key(&self) -> &Hash {
        match self {
            Node::Leaf(leaf) => &leaf.key,
            _ => unreachable!("only leaves are merged and built"),
        }
    }
}

/// A change to the tree: a key and its new value, `None` to remove it.
pub type TreeChange = (Hash, Option<Vec<u8>>);

impl Tree {
    /// The empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// The tree holding exactly `leaves` (key, value). If a key appears more than
    /// once, the last entry wins.
    pub fn from_leaves(leaves: Vec<(Hash, Vec<u8>)>) -> Tree {
        Tree::new().update(leaves.into_iter().map(|(k, v)| (k, Some(v))).collect())
    }

    /// The root hash ([`Hash::ZERO`] when empty).
    pub fn root_hash(&self) -> Hash {
        self.root.hash()
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        matches!(self.root, Node::Empty)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &Hash) -> Option<&[u8]> {
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => return None,
                Node::Leaf(leaf) => return (leaf.key == *key).then_some(leaf.value.as_slice()),
                Node::Internal(internal) => {
                    node = if key_bit(key, depth) {
                        &internal.right
                    } else {
                        &internal.left
                    };
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
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(LANES) {
            let mut nodes: [&Node; LANES] = [&self.root; LANES];
            let mut walking = chunk.len();
            let mut depth = 0;
            while walking > 0 {
                walking = 0;
                for (lane, key) in chunk.iter().enumerate() {
                    if let Node::Internal(internal) = nodes[lane] {
                        nodes[lane] = if key_bit(key, depth) {
                            &internal.right
                        } else {
                            &internal.left
                        };
                        walking += 1;
                    }
                }
                depth += 1;
            }
            for (lane, key) in chunk.iter().enumerate() {
                out.push(match nodes[lane] {
                    Node::Leaf(leaf) if leaf.key == *key => Some(leaf.value.as_slice().to_vec()),
                    _ => None,
                });
            }
        }
        out
    }

    /// The tree with `changes` applied; `self` is unchanged. If a key appears more than
    /// once, the last entry wins.
    pub fn update(&self, mut changes: Vec<TreeChange>) -> Tree {
        // A stable sort keeps equal keys in input order; keep the last of each run.
        changes.sort_by_key(|change| change.0);
        changes.reverse();
        changes.dedup_by_key(|change| change.0);
        changes.reverse();
        Tree {
            root: update_node(&self.root, 0, &mut changes),
        }
    }

    /// The proof of `key`'s value, or of its absence.
    pub fn prove(&self, key: &Hash) -> SparseMerkleProof {
        let mut siblings = Vec::new();
        let mut node = &self.root;
        let mut depth = 0;
        loop {
            match node {
                Node::Empty => {
                    return SparseMerkleProof {
                        leaf: None,
                        siblings,
                    };
                }
                Node::Leaf(leaf) => {
                    return SparseMerkleProof {
                        leaf: Some(ProofLeaf {
                            key: leaf.key,
                            value_hash: value_hash(leaf.value.as_slice()),
                        }),
                        siblings,
                    };
                }
                Node::Internal(internal) => {
                    let (next, sibling) = if key_bit(key, depth) {
                        (&internal.right, &internal.left)
                    } else {
                        (&internal.left, &internal.right)
                    };
                    siblings.push(sibling.hash());
                    node = next;
                    depth += 1;
                }
            }
        }
    }

    /// Every (key, value), in key order.
    pub fn iter(&self) -> TreeIter<'_> {
        TreeIter {
            stack: vec![&self.root],
        }
    }

    /// Number of keys held (walks the whole tree).
    pub fn len(&self) -> usize {
        self.iter().count()
    }
}

/// Iterator over a tree's leaves in key order.
pub struct TreeIter<'a> {
    stack: Vec<&'a Node>,
}

impl<'a> Iterator for TreeIter<'a> {
    type Item = (&'a Hash, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(node) = self.stack.pop() {
            match node {
                Node::Empty => {}
                Node::Leaf(leaf) => return Some((&leaf.key, leaf.value.as_slice())),
                Node::Internal(internal) => {
                    self.stack.push(&internal.right);
                    self.stack.push(&internal.left);
                }
            }
        }
        None
    }
}

/// Applies `changes` (sorted, distinct keys, all below `node`, which sits at `depth`).
/// Values are moved out of `changes` into the new leaves.
fn update_node(node: &Node, depth: usize, changes: &mut [TreeChange]) -> Node {
    if changes.is_empty() {
        return node.clone();
    }
    match node {
        Node::Internal(internal) => {
            assert!(depth < 256, "an internal node below the last key bit");
            let split = changes.partition_point(|(key, _)| !key_bit(key, depth));
            let (left_changes, right_changes) = changes.split_at_mut(split);
            let left = update_node(&internal.left, depth + 1, left_changes);
            let right = update_node(&internal.right, depth + 1, right_changes);
            if left.same(&internal.left) && right.same(&internal.right) {
                return node.clone();
            }
            Node::join(left, right)
        }
        Node::Empty => {
            let leaves: Vec<Node> = changes
                .iter_mut()
                .filter_map(|(key, value)| value.take().map(|v| Node::leaf(*key, v)))
                .collect();
            build(depth, &leaves)
        }
        Node::Leaf(existing) => {
            // The common case: the one key this leaf holds gets a new value.
            if let [(key, value)] = changes
                && *key == existing.key
            {
                return value.take().map_or(Node::Empty, |v| Node::leaf(*key, v));
            }
            let mut leaves = Vec::with_capacity(changes.len() + 1);
            let mut kept = Some(node.clone());
            for (key, value) in changes.iter_mut() {
                if kept.is_some() && existing.key <= *key {
                    // The existing leaf goes in order, unless a change names its key.
                    let leaf = kept.take();
                    if existing.key < *key {
                        leaves.extend(leaf);
                    }
                }
                if let Some(value) = value.take() {
                    leaves.push(Node::leaf(*key, value));
                }
            }
            leaves.extend(kept);
            build(depth, &leaves)
        }
    }
}

/// The subtree at `depth` holding exactly `leaves` (sorted, distinct keys).
fn build(depth: usize, leaves: &[Node]) -> Node {
    match leaves {
        [] => Node::Empty,
        [leaf] => leaf.clone(),
        _ => {
            // Distinct keys differ in some bit, so this ends before depth 256.
            assert!(depth < 256, "distinct keys with every bit equal");
            let split = leaves.partition_point(|leaf| !key_bit(leaf.leaf_key(), depth));
            Node::join(
                build(depth + 1, &leaves[..split]),
                build(depth + 1, &leaves[split..]),
            )
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
        let mut leaves: Vec<(Hash, Hash)> = tree.iter().map(|(k, v)| (*k, value_hash(v))).collect();
        root_from_leaves(&mut leaves)
    }

    #[test]
    fn empty_and_single_leaf_roots() {
        let tree = Tree::new();
        assert_eq!(tree.root_hash(), Hash::ZERO);
        let one = tree.update(vec![(h(1), Some(v(10)))]);
        assert_eq!(one.root_hash(), leaf_hash(&h(1), &value_hash(&v(10))));
        assert_eq!(tree.root_hash(), Hash::ZERO, "the old version is unchanged");
        let none = one.update(vec![(h(1), None)]);
        assert!(none.is_empty());
        assert_eq!(one.get(&h(1)), Some(&v(10)[..]));
    }

    #[test]
    fn matches_reference_and_empties_completely() {
        let leaves: Vec<(Hash, Vec<u8>)> = (0..500).map(|i| (h(i), v(i + 1000))).collect();
        let tree = Tree::from_leaves(leaves.clone());
        assert_eq!(tree.root_hash(), reference(&tree));
        assert_eq!(tree.len(), 500);
        for (k, value) in &leaves {
            assert_eq!(tree.get(k), Some(&value[..]));
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
        let keys: Vec<Hash> = tree.iter().map(|(k, _)| *k).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        let emptied = tree.update(leaves.iter().map(|(k, _)| (*k, None)).collect());
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
        let one = tree.update(leaves[1..].iter().map(|(k, _)| (*k, None)).collect());
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
    fn unchanged_subtrees_are_shared() {
        let tree = Tree::from_leaves((0..64).map(|i| (h(i), v(i))).collect());
        // Removing a key that is not there changes nothing at all.
        let same = tree.update(vec![(h(1000), None)]);
        assert!(same.root.same(&tree.root));
        let changed = tree.update(vec![(h(3), Some(v(99)))]);
        let (Node::Internal(a), Node::Internal(b)) = (&tree.root, &changed.root) else {
            panic!("64 keys make an internal root");
        };
        // One side of the root holds h(3) and is new; the other is shared.
        assert!(a.left.same(&b.left) != a.right.same(&b.right));
    }
}
