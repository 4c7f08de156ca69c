//! Pages: the unit in which the sparse Merkle tree is stored and cached.
//!
//! The tree is binary, but a node-per-key layout would cost one database write per
//! changed node, about twenty per updated account at a million accounts. Instead the
//! tree is cut every [`PAGE_LEVELS`] levels into pages. A page rooted at depth `d` holds
//! the [`SLOTS`] positions at depth `d + PAGE_LEVELS` below it; each slot is empty, holds
//! the single leaf of its subtree, or points to a child page holding two or more leaves.
//! The binary nodes inside a page are not stored: they are recomputed when the page is
//! loaded and kept in memory as [`NodeSummary`] values, so an update rehashes only the
//! path above the slots it changed.

use std::sync::Arc;

use stele_consensus::Hash;

use crate::error::LedgerError;

/// Binary levels spanned by one page.
pub const PAGE_LEVELS: usize = 4;
/// Slots at the bottom of a page.
pub const SLOTS: usize = 1 << PAGE_LEVELS;
/// Keys are 256 bits; the deepest page starts here and its slots are single keys.
pub const PAGE_DEPTH_MAX: usize = 256 - PAGE_LEVELS;

/// Bit `depth` of `key`, most significant first: `false` is left, `true` is right.
pub fn key_bit(key: &Hash, depth: usize) -> bool {
    debug_assert!(depth < 256);
    (key.as_bytes()[depth / 8] >> (7 - depth % 8)) & 1 == 1
}

/// The slot of `key` in a page rooted at `depth` (bits `depth..depth + PAGE_LEVELS`).
pub fn slot_of(key: &Hash, depth: usize) -> usize {
    debug_assert!(depth.is_multiple_of(PAGE_LEVELS) && depth <= PAGE_DEPTH_MAX);
    let byte = key.as_bytes()[depth / 8];
    // PAGE_LEVELS is 4, so a page's slot bits are exactly one nibble.
    if depth.is_multiple_of(8) {
        (byte >> 4) as usize
    } else {
        (byte & 0x0f) as usize
    }
}

/// Hash of a leaf: `H(0x00 || key || value_hash)`. The one-byte prefixes keep leaves,
/// internal nodes and every tagged hash (whose first byte is a tag length of 5 or
/// more) apart.
pub fn leaf_hash(key: &Hash, value_hash: &Hash) -> Hash {
    sha256_65(0, key, value_hash)
}

/// Hash of an internal node: `H(0x01 || left || right)`, with [`Hash::ZERO`] for an
/// empty child.
pub fn internal_hash(left: &Hash, right: &Hash) -> Hash {
    sha256_65(1, left, right)
}

/// SHA-256 of the 65 bytes `prefix || a || b`, as two calls of the compression
/// function with the padding precomputed. Tree hashing is most of the state's CPU
/// time; this skips the general-purpose buffering of the `Digest` API (about half
/// the cost for a message this short). Tested against `Hash::digest`.
fn sha256_65(prefix: u8, a: &Hash, b: &Hash) -> Hash {
    /// The SHA-256 initial state (FIPS 180-4, 5.3.3).
    const INITIAL_STATE: [u32; 8] = [
        0x6a09_e667,
        0xbb67_ae85,
        0x3c6e_f372,
        0xa54f_f53a,
        0x510e_527f,
        0x9b05_688c,
        0x1f83_d9ab,
        0x5be0_cd19,
    ];
    /// Message length in bits, the last 8 bytes of the padded message.
    const BIT_LEN: u64 = 65 * 8;
    let mut blocks = [[0u8; 64]; 2];
    blocks[0][0] = prefix;
    blocks[0][1..33].copy_from_slice(a.as_bytes());
    blocks[0][33..].copy_from_slice(&b.as_bytes()[..31]);
    blocks[1][0] = b.as_bytes()[31];
    blocks[1][1] = 0x80;
    blocks[1][56..].copy_from_slice(&BIT_LEN.to_be_bytes());
    let mut state = INITIAL_STATE;
    sha2::block_api::compress256(&mut state, &blocks);
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    Hash::from_bytes(out)
}

/// Identifies a page: its depth and the key bits above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PageId {
    depth: u8,
    prefix: [u8; 32],
}

impl std::hash::Hash for PageId {
    /// Keys are SHA-256 outputs, so the prefix bits are already uniformly random: a
    /// single mix of the first 16 bytes and the depth (see [`RandomKeyHasher`])
    /// is a good table hash, and much cheaper than SipHash over 33 bytes on this hot
    /// path. (Pages deeper
    /// than 128 bits differ only further on; they still compare correctly by `Eq`.)
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut a = [0u8; 8];
        let mut b = [0u8; 8];
        a.copy_from_slice(&self.prefix[..8]);
        b.copy_from_slice(&self.prefix[8..16]);
        state.write_u64(
            u64::from_be_bytes(a) ^ u64::from_be_bytes(b).rotate_left(29) ^ u64::from(self.depth),
        );
    }
}

/// A table hasher for keys whose bytes are already uniformly random (hash outputs and
/// [`PageId`]s): it mixes the first eight bytes it is given instead of running SipHash
/// over all of them. Not for keys an adversary can choose freely; state keys are
/// SHA-256 outputs, so finding many that collide here costs a preimage search.
#[derive(Default, Clone, Copy)]
pub struct RandomKeyHasher(u64);

impl std::hash::Hasher for RandomKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(first) = bytes.first_chunk::<8>() {
            self.write_u64(u64::from_le_bytes(*first));
        } else {
            for b in bytes {
                self.0 = mix64(self.0.rotate_left(8) ^ u64::from(*b));
            }
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = mix64(self.0 ^ value);
    }
}

/// The splitmix64 finalizer: every input bit affects every output bit. Hash tables
/// take bucket indices from the low bits and tags from the high bits, so both must
/// depend on all of the input (a plain multiply never moves high bits down).
fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Builds [`RandomKeyHasher`]s.
pub type RandomKeyHashBuilder = std::hash::BuildHasherDefault<RandomKeyHasher>;

/// A page's storage key, without allocating: depth, then the prefix bytes in use.
#[derive(Clone, Copy)]
pub struct PageDbKey {
    bytes: [u8; 33],
    len: u8,
}

impl AsRef<[u8]> for PageDbKey {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl PageId {
    /// The root page.
    pub const ROOT: PageId = PageId {
        depth: 0,
        prefix: [0; 32],
    };

    /// Depth of the page's top node.
    pub fn depth(&self) -> usize {
        self.depth as usize
    }

    /// The page below slot `slot` of this one.
    pub fn child(&self, slot: usize) -> PageId {
        let depth = self.depth();
        assert!(
            depth < PAGE_DEPTH_MAX,
            "pages at the last level have no children"
        );
        assert!(slot < SLOTS);
        let mut prefix = self.prefix;
        let byte = &mut prefix[depth / 8];
        if depth.is_multiple_of(8) {
            *byte |= (slot as u8) << 4;
        } else {
            *byte |= slot as u8;
        }
        PageId {
            depth: (depth + PAGE_LEVELS) as u8,
            prefix,
        }
    }

    /// The page at `depth` on `key`'s path.
    pub fn on_path(key: &Hash, depth: usize) -> PageId {
        assert!(depth.is_multiple_of(PAGE_LEVELS) && depth <= PAGE_DEPTH_MAX);
        let mut prefix = [0u8; 32];
        let full_bytes = depth / 8;
        prefix[..full_bytes].copy_from_slice(&key.as_bytes()[..full_bytes]);
        if !depth.is_multiple_of(8) {
            prefix[full_bytes] = key.as_bytes()[full_bytes] & 0xf0;
        }
        PageId {
            depth: depth as u8,
            prefix,
        }
    }

    /// Whether `key` lies below this page.
    pub fn covers(&self, key: &Hash) -> bool {
        *self == PageId::on_path(key, self.depth())
    }

    /// Storage key: depth, then the prefix bytes that carry bits.
    pub fn db_key(&self) -> PageDbKey {
        let used = self.depth().div_ceil(8);
        let mut bytes = [0u8; 33];
        bytes[0] = self.depth;
        bytes[1..1 + used].copy_from_slice(&self.prefix[..used]);
        PageDbKey {
            bytes,
            len: (1 + used) as u8,
        }
    }

    /// Parses [`PageId::db_key`].
    pub fn from_db_key(bytes: &[u8]) -> Result<PageId, LedgerError> {
        let corrupt = |detail: &str| LedgerError::Corrupt {
            what: format!("state page key {}: {detail}", hex::encode(bytes)),
        };
        let (&depth, rest) = bytes.split_first().ok_or_else(|| corrupt("empty"))?;
        let depth_usize = depth as usize;
        if !depth_usize.is_multiple_of(PAGE_LEVELS) || depth_usize > PAGE_DEPTH_MAX {
            return Err(corrupt("bad depth"));
        }
        if rest.len() != depth_usize.div_ceil(8) {
            return Err(corrupt("bad length"));
        }
        let mut prefix = [0u8; 32];
        prefix[..rest.len()].copy_from_slice(rest);
        if !depth_usize.is_multiple_of(8) && prefix[rest.len() - 1] & 0x0f != 0 {
            return Err(corrupt("bits below the depth are set"));
        }
        Ok(PageId { depth, prefix })
    }
}

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Slot {
    /// Nothing below.
    #[default]
    Empty,
    /// Exactly one leaf below, stored here.
    Leaf {
        /// The leaf's key.
        key: Hash,
        /// Hash of its value.
        value_hash: Hash,
    },
    /// Two or more leaves below, in the child page; `hash` is that page's root hash.
    Child {
        /// Root hash of the child page.
        hash: Hash,
    },
}

/// The shape of a binary subtree, enough to hash its parent and to prove through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NodeSummary {
    /// No leaves below: hashes as [`Hash::ZERO`].
    #[default]
    Empty,
    /// Exactly one leaf below, in page slot `slot`: the subtree collapses to that leaf.
    Leaf {
        /// The leaf hash.
        hash: Hash,
        /// Slot of the page holding the leaf.
        slot: u8,
    },
    /// Two or more leaves below.
    Internal {
        /// The node hash.
        hash: Hash,
    },
}

impl NodeSummary {
    /// The hash this subtree contributes to its parent.
    pub fn hash(&self) -> Hash {
        match self {
            NodeSummary::Empty => Hash::ZERO,
            NodeSummary::Leaf { hash, .. } | NodeSummary::Internal { hash } => *hash,
        }
    }

    fn combine(left: NodeSummary, right: NodeSummary) -> NodeSummary {
        match (left, right) {
            (NodeSummary::Empty, NodeSummary::Empty) => NodeSummary::Empty,
            // A single leaf with nothing beside it moves up: empty subtrees are compressed.
            (leaf @ NodeSummary::Leaf { .. }, NodeSummary::Empty)
            | (NodeSummary::Empty, leaf @ NodeSummary::Leaf { .. }) => leaf,
            (l, r) => NodeSummary::Internal {
                hash: internal_hash(&l.hash(), &r.hash()),
            },
        }
    }
}

/// A page: its slots, and the summaries of every binary node of the page, in heap
/// order: node 1 is the page root, node `n` has children `2n` and `2n + 1`, and the
/// slots are nodes `SLOTS..2 * SLOTS`. Slot summaries (leaf hashes included) are kept
/// so that rehashing a path never rehashes an unchanged sibling leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    slots: [Slot; SLOTS],
    nodes: [NodeSummary; 2 * SLOTS],
}

impl Default for Page {
    fn default() -> Self {
        Page {
            slots: [Slot::Empty; SLOTS],
            nodes: [NodeSummary::Empty; 2 * SLOTS],
        }
    }
}

impl Page {
    /// The slot contents.
    pub fn slot(&self, slot: usize) -> &Slot {
        &self.slots[slot]
    }

    /// Replaces a slot. Call [`Page::rehash`] with the changed slots afterwards.
    pub fn set_slot(&mut self, slot: usize, content: Slot) {
        self.slots[slot] = content;
        self.nodes[SLOTS + slot] = match content {
            Slot::Empty => NodeSummary::Empty,
            Slot::Leaf { key, value_hash } => NodeSummary::Leaf {
                hash: leaf_hash(&key, &value_hash),
                slot: slot as u8,
            },
            Slot::Child { hash } => NodeSummary::Internal { hash },
        };
    }

    /// Summary of heap node `node` (1 to `2 * SLOTS - 1`).
    pub fn summary(&self, node: usize) -> NodeSummary {
        debug_assert!((1..2 * SLOTS).contains(&node));
        self.nodes[node]
    }

    /// The page's root summary.
    pub fn root(&self) -> NodeSummary {
        self.nodes[1]
    }

    /// Recomputes the internal nodes above the slots set in `dirty_slots` (bit `s` for
    /// slot `s`).
    pub fn rehash(&mut self, dirty_slots: u32) {
        // Bit n of `dirty` marks heap node n.
        let mut dirty: u64 = u64::from(dirty_slots) << SLOTS;
        for node in (1..SLOTS).rev() {
            if dirty & (0b11 << (2 * node)) != 0 {
                self.nodes[node] =
                    NodeSummary::combine(self.nodes[2 * node], self.nodes[2 * node + 1]);
                dirty |= 1 << node;
            }
        }
    }

    /// Recomputes every internal node (after decoding).
    pub fn rehash_all(&mut self) {
        self.rehash((1u32 << SLOTS) - 1);
    }

    /// Whether no slot is used.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| *s == Slot::Empty)
    }

    /// Storage encoding: two 16-bit maps (leaf slots, child slots), then the slots in
    /// order: 64 bytes for a leaf (key, value hash), 32 for a child (hash). Internal
    /// nodes are derived, not stored.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + SLOTS * 64);
        self.encode_into(&mut out);
        out
    }

    /// [`Page::encode`] into `out` (cleared first), reusing its allocation.
    pub fn encode_into(&self, body: &mut Vec<u8>) {
        let mut leaves: u16 = 0;
        let mut children: u16 = 0;
        body.clear();
        body.extend_from_slice(&[0; 4]);
        for (i, slot) in self.slots.iter().enumerate() {
            match slot {
                Slot::Empty => {}
                Slot::Leaf { key, value_hash } => {
                    leaves |= 1 << i;
                    body.extend_from_slice(key.as_bytes());
                    body.extend_from_slice(value_hash.as_bytes());
                }
                Slot::Child { hash } => {
                    children |= 1 << i;
                    body.extend_from_slice(hash.as_bytes());
                }
            }
        }
        body[..2].copy_from_slice(&leaves.to_le_bytes());
        body[2..4].copy_from_slice(&children.to_le_bytes());
    }

    /// Decodes [`Page::encode`] output for page `id`, checking that every leaf lies in
    /// the slot its key selects.
    pub fn decode(id: &PageId, bytes: &[u8]) -> Result<Page, LedgerError> {
        let corrupt = |detail: &str| LedgerError::Corrupt {
            what: format!("state page {id:?}: {detail}"),
        };
        if bytes.len() < 4 {
            return Err(corrupt("shorter than its header"));
        }
        let leaves = u16::from_le_bytes([bytes[0], bytes[1]]);
        let children = u16::from_le_bytes([bytes[2], bytes[3]]);
        if leaves & children != 0 {
            return Err(corrupt("a slot is both leaf and child"));
        }
        let expected_len =
            4 + 64 * leaves.count_ones() as usize + 32 * children.count_ones() as usize;
        if bytes.len() != expected_len {
            return Err(corrupt("length does not match its slot maps"));
        }
        let mut page = Page::default();
        let mut at = 4;
        let mut take = |n: usize| {
            let out = &bytes[at..at + n];
            at += n;
            out
        };
        for i in 0..SLOTS {
            if leaves & (1 << i) != 0 {
                let key = hash_from(take(32));
                let value_hash = hash_from(take(32));
                if !id.covers(&key) || slot_of(&key, id.depth()) != i {
                    return Err(corrupt("leaf stored outside its key's slot"));
                }
                page.set_slot(i, Slot::Leaf { key, value_hash });
            } else if children & (1 << i) != 0 {
                if id.depth() >= PAGE_DEPTH_MAX {
                    return Err(corrupt("child page below the last level"));
                }
                page.set_slot(
                    i,
                    Slot::Child {
                        hash: hash_from(take(32)),
                    },
                );
            }
        }
        page.rehash_all();
        Ok(page)
    }
}

fn hash_from(bytes: &[u8]) -> Hash {
    let mut out = [0u8; 32];
    out.copy_from_slice(bytes);
    Hash::from_bytes(out)
}

/// A page shared between the cache and in-flight updates.
pub type SharedPage = Arc<Page>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_hashes_are_plain_sha256() {
        for i in 0..200u64 {
            let a = Hash::digest(&i.to_le_bytes());
            let b = Hash::digest(&(i + 1000).to_le_bytes());
            for prefix in [0u8, 1] {
                let mut buf = [0u8; 65];
                buf[0] = prefix;
                buf[1..33].copy_from_slice(a.as_bytes());
                buf[33..].copy_from_slice(b.as_bytes());
                let expected = Hash::digest(&buf);
                let got = if prefix == 0 {
                    leaf_hash(&a, &b)
                } else {
                    internal_hash(&a, &b)
                };
                assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn page_ids_follow_key_bits() {
        let key = Hash::from_bytes([0xab; 32]);
        assert_eq!(slot_of(&key, 0), 0xa);
        assert_eq!(slot_of(&key, 4), 0xb);
        let child = PageId::ROOT.child(0xa);
        assert_eq!(child, PageId::on_path(&key, 4));
        assert_eq!(child.child(0xb), PageId::on_path(&key, 8));
        assert!(child.covers(&key));
        assert!(!PageId::ROOT.child(0x3).covers(&key));
        for depth in (0..=PAGE_DEPTH_MAX).step_by(PAGE_LEVELS) {
            let id = PageId::on_path(&key, depth);
            assert_eq!(PageId::from_db_key(id.db_key().as_ref()).unwrap(), id);
        }
        assert!(PageId::from_db_key(&[3]).is_err());
        assert!(PageId::from_db_key(&[4, 0xff]).is_err());
    }

    #[test]
    fn page_id_order_is_storage_key_order() {
        let mut ids: Vec<PageId> = (0..300u64)
            .flat_map(|i| {
                let key = Hash::digest(&i.to_le_bytes());
                (0..=PAGE_DEPTH_MAX)
                    .step_by(PAGE_LEVELS)
                    .map(move |d| PageId::on_path(&key, d))
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for pair in ids.windows(2) {
            assert!(pair[0].db_key().as_ref() < pair[1].db_key().as_ref());
        }
    }

    #[test]
    fn encoding_round_trips_and_rejects_misplaced_leaves() {
        let mut page = Page::default();
        let key = Hash::from_bytes([0x5c; 32]);
        page.set_slot(
            5,
            Slot::Leaf {
                key,
                value_hash: Hash::digest(b"v"),
            },
        );
        page.set_slot(
            9,
            Slot::Child {
                hash: Hash::digest(b"c"),
            },
        );
        page.rehash_all();
        let bytes = page.encode();
        assert_eq!(Page::decode(&PageId::ROOT, &bytes).unwrap(), page);
        // The same bytes claimed for another page put the leaf off its path.
        assert!(Page::decode(&PageId::ROOT.child(1), &bytes).is_err());
        assert!(Page::decode(&PageId::ROOT, &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn single_leaf_collapses_to_page_root() {
        let mut page = Page::default();
        let key = Hash::from_bytes([0x30; 32]);
        let value_hash = Hash::digest(b"v");
        page.set_slot(3, Slot::Leaf { key, value_hash });
        page.rehash(1 << 3);
        assert_eq!(
            page.root(),
            NodeSummary::Leaf {
                hash: leaf_hash(&key, &value_hash),
                slot: 3
            }
        );
    }
}
