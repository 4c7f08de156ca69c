//! A binary sparse Merkle tree over 256-bit keys, with compressed empty subtrees.
//!
//! # Shape
//!
//! Conceptually the tree has a leaf position for every 256-bit key. Empty subtrees hash
//! to [`Hash::ZERO`], and a subtree holding exactly one leaf is replaced by that leaf
//! (as in Diem's and Aptos' Jellyfish Merkle tree), so a tree of `n` keys is about
//! `log2(n)` levels deep rather than 256:
//!
//! - leaf: `H(0x00 || key || value_hash)`;
//! - internal node: `H(0x01 || left || right)`, never with one leaf and one empty child.
//!
//! The root therefore depends only on the set of (key, value hash) pairs: not on the
//! order or batching of updates, nor on how the tree is stored.
//!
//! # Storage
//!
//! The tree is stored in [`page::Page`]s of four levels each. [`update`] applies a sorted
//! batch of changes against any [`PageSource`] without modifying it and returns the new
//! root with the list of page changes; the caller persists those (one write batch per
//! block) and keeps the old pages for history. [`prove`] walks pages to build a
//! [`SparseMerkleProof`] that [`SparseMerkleProof::verify`] checks against the root alone.

pub mod page;
mod proof;

use std::sync::Arc;

use stele_consensus::Hash;

pub use page::{Page, PageId, SharedPage};
pub use proof::{ProofLeaf, SparseMerkleProof};

use page::{NodeSummary, PAGE_DEPTH_MAX, SLOTS, Slot, key_bit, leaf_hash, slot_of};

use crate::error::LedgerError;

/// Where the tree reads its pages from: a database with a cache, a historical view, or
/// memory.
pub trait PageSource {
    /// The page `id`, or `None` if no such page exists.
    fn page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError>;
}

/// One page written or removed by an update, with its previous content.
#[derive(Clone, Debug)]
pub struct PageChange {
    /// Which page.
    pub id: PageId,
    /// Content before the update (`None`: the page did not exist).
    pub old: Option<SharedPage>,
    /// Content after the update (`None`: the page is removed).
    pub new: Option<SharedPage>,
}

/// The outcome of [`update`]: the new root and every page that changed.
#[derive(Clone, Debug)]
pub struct TreeUpdate {
    /// Root hash after the update.
    pub root: Hash,
    /// Changed pages, parents after children.
    pub pages: Vec<PageChange>,
}

/// The page `id`, which a slot of its parent references: its absence means the store
/// is corrupt.
pub fn child_page<S: PageSource + ?Sized>(
    source: &S,
    id: &PageId,
) -> Result<SharedPage, LedgerError> {
    source.page(id)?.ok_or_else(|| LedgerError::Corrupt {
        what: format!("state page {id:?} is referenced but missing"),
    })
}

/// The root hash stored in `source`.
pub fn root_hash<S: PageSource + ?Sized>(source: &S) -> Result<Hash, LedgerError> {
    Ok(source
        .page(&PageId::ROOT)?
        .map_or(Hash::ZERO, |p| p.root().hash()))
}

/// Applies `updates` (key, new value hash or `None` to delete) to the tree in `source`
/// and returns the new root and page changes. `source` is not modified. If a key
/// appears more than once, the last entry wins.
pub fn update<S: PageSource + ?Sized>(
    source: &S,
    mut updates: Vec<(Hash, Option<Hash>)>,
) -> Result<TreeUpdate, LedgerError> {
    // Stable sort keeps equal keys in input order; keep the last of each run.
    updates.sort_by_key(|u| u.0);
    let mut deduped: Vec<(Hash, Option<Hash>)> = Vec::with_capacity(updates.len());
    for entry in updates {
        match deduped.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => deduped.push(entry),
        }
    }
    let base = source.page(&PageId::ROOT)?;
    let mut pages = Vec::new();
    let outcome = if deduped.is_empty() {
        base.as_ref().map_or(Subtree::Empty, |p| Subtree::of(p))
    } else {
        update_page(source, PageId::ROOT, base, &deduped, &mut pages)?
    };
    Ok(TreeUpdate {
        root: outcome.hash(),
        pages,
    })
}

/// A subtree as its parent sees it.
enum Subtree {
    Empty,
    Leaf { key: Hash, value_hash: Hash },
    Internal { hash: Hash },
}

impl Subtree {
    fn of(page: &Page) -> Subtree {
        match page.root() {
            NodeSummary::Empty => Subtree::Empty,
            NodeSummary::Leaf { slot, .. } => match page.slot(slot as usize) {
                Slot::Leaf { key, value_hash } => Subtree::Leaf {
                    key: *key,
                    value_hash: *value_hash,
                },
                _ => unreachable!("a leaf summary points at a leaf slot"),
            },
            NodeSummary::Internal { hash } => Subtree::Internal { hash },
        }
    }

    fn hash(&self) -> Hash {
        match self {
            Subtree::Empty => Hash::ZERO,
            Subtree::Leaf { key, value_hash } => leaf_hash(key, value_hash),
            Subtree::Internal { hash } => *hash,
        }
    }
}

/// Applies `updates` (sorted, distinct, all below `id`) to the page `id` whose current
/// content is `base`, recording page changes.
fn update_page<S: PageSource + ?Sized>(
    source: &S,
    id: PageId,
    base: Option<SharedPage>,
    updates: &[(Hash, Option<Hash>)],
    changes: &mut Vec<PageChange>,
) -> Result<Subtree, LedgerError> {
    let empty = Page::default();
    let current: &Page = base.as_deref().unwrap_or(&empty);
    // New contents of the slots that change, computed before the page is copied.
    let mut changed: [(u8, Slot); SLOTS] = [(0, Slot::Empty); SLOTS];
    let mut changed_count = 0;
    let mut start = 0;
    while start < updates.len() {
        let slot = slot_of(&updates[start].0, id.depth());
        let end = start
            + updates[start..]
                .iter()
                .take_while(|(key, _)| slot_of(key, id.depth()) == slot)
                .count();
        let content = update_slot(
            source,
            id,
            slot,
            *current.slot(slot),
            &updates[start..end],
            changes,
        )?;
        if content != *current.slot(slot) {
            changed[changed_count] = (slot as u8, content);
            changed_count += 1;
        }
        start = end;
    }
    if changed_count == 0 {
        return Ok(base.as_ref().map_or(Subtree::Empty, |p| Subtree::of(p)));
    }
    // One copy, straight into the new page's allocation (the base is shared).
    let mut new_page = base.clone().unwrap_or_else(|| Arc::new(Page::default()));
    let page = Arc::make_mut(&mut new_page);
    let mut dirty: u32 = 0;
    for (slot, content) in &changed[..changed_count] {
        page.set_slot(*slot as usize, *content);
        dirty |= 1 << slot;
    }
    page.rehash(dirty);
    let outcome = Subtree::of(page);
    // A page exists only while it is needed: a non-root page holds two or more leaves
    // (one leaf moves up into its parent's slot); the root page holds any non-empty tree.
    let keep = match outcome {
        Subtree::Empty => false,
        Subtree::Leaf { .. } => id == PageId::ROOT,
        Subtree::Internal { .. } => true,
    };
    let new = keep.then_some(new_page);
    if base.is_some() || new.is_some() {
        changes.push(PageChange { id, old: base, new });
    }
    Ok(outcome)
}

fn update_slot<S: PageSource + ?Sized>(
    source: &S,
    id: PageId,
    slot: usize,
    current: Slot,
    updates: &[(Hash, Option<Hash>)],
    changes: &mut Vec<PageChange>,
) -> Result<Slot, LedgerError> {
    let existing = match current {
        Slot::Child { .. } => {
            let child_id = id.child(slot);
            let child = child_page(source, &child_id)?;
            return Ok(
                match update_page(source, child_id, Some(child), updates, changes)? {
                    Subtree::Empty => Slot::Empty,
                    Subtree::Leaf { key, value_hash } => Slot::Leaf { key, value_hash },
                    Subtree::Internal { hash } => Slot::Child { hash },
                },
            );
        }
        Slot::Leaf { key, value_hash } => Some((key, value_hash)),
        Slot::Empty => None,
    };
    // The common case, one key updated in the slot that holds it (or an empty slot),
    // needs no merging.
    if let [(key, value)] = updates {
        match (existing, value) {
            (None, None) => return Ok(Slot::Empty),
            (None, Some(value_hash)) => {
                return Ok(Slot::Leaf {
                    key: *key,
                    value_hash: *value_hash,
                });
            }
            (Some((old_key, _)), Some(value_hash)) if old_key == *key => {
                return Ok(Slot::Leaf {
                    key: *key,
                    value_hash: *value_hash,
                });
            }
            (Some((old_key, _)), None) if old_key == *key => return Ok(Slot::Empty),
            (Some(_), None) => return Ok(current),
            (Some(_), Some(_)) => {}
        }
    }
    let merged = merge_leaf(existing, updates);
    match merged.as_slice() {
        [] => Ok(Slot::Empty),
        [(key, value_hash)] => Ok(Slot::Leaf {
            key: *key,
            value_hash: *value_hash,
        }),
        _ => {
            // Two distinct keys cannot share a slot of the last page level.
            assert!(
                id.depth() < PAGE_DEPTH_MAX,
                "distinct keys in one final slot"
            );
            let inserts: Vec<(Hash, Option<Hash>)> =
                merged.into_iter().map(|(k, v)| (k, Some(v))).collect();
            match update_page(source, id.child(slot), None, &inserts, changes)? {
                Subtree::Internal { hash } => Ok(Slot::Child { hash }),
                _ => unreachable!("two or more leaves always make an internal node"),
            }
        }
    }
}

/// The leaves of a slot after applying `updates` to its current leaf, sorted by key.
fn merge_leaf(
    existing: Option<(Hash, Hash)>,
    updates: &[(Hash, Option<Hash>)],
) -> Vec<(Hash, Hash)> {
    let mut out: Vec<(Hash, Hash)> = Vec::with_capacity(updates.len() + 1);
    let mut existing = existing;
    for (key, value) in updates {
        if let Some((old_key, old_value)) = existing
            && old_key <= *key
        {
            if old_key < *key {
                out.push((old_key, old_value));
            }
            existing = None;
        }
        if let Some(value) = value {
            out.push((*key, *value));
        }
    }
    if let Some(leaf) = existing {
        out.push(leaf);
    }
    out
}

/// Builds the proof for `key` from the pages in `source`.
pub fn prove<S: PageSource + ?Sized>(
    source: &S,
    key: &Hash,
) -> Result<SparseMerkleProof, LedgerError> {
    let mut siblings = Vec::new();
    let Some(mut page) = source.page(&PageId::ROOT)? else {
        return Ok(SparseMerkleProof {
            leaf: None,
            siblings,
        });
    };
    let mut id = PageId::ROOT;
    loop {
        let mut node = 1;
        let mut depth = id.depth();
        loop {
            match page.summary(node) {
                NodeSummary::Empty => {
                    return Ok(SparseMerkleProof {
                        leaf: None,
                        siblings,
                    });
                }
                NodeSummary::Leaf { slot, .. } => {
                    let Slot::Leaf { key, value_hash } = *page.slot(slot as usize) else {
                        unreachable!("a leaf summary points at a leaf slot")
                    };
                    return Ok(SparseMerkleProof {
                        leaf: Some(ProofLeaf { key, value_hash }),
                        siblings,
                    });
                }
                NodeSummary::Internal { .. } if node >= SLOTS => break,
                NodeSummary::Internal { .. } => {
                    let right = key_bit(key, depth);
                    let (next, sibling) = if right {
                        (2 * node + 1, 2 * node)
                    } else {
                        (2 * node, 2 * node + 1)
                    };
                    siblings.push(page.summary(sibling).hash());
                    node = next;
                    depth += 1;
                }
            }
        }
        id = id.child(node - SLOTS);
        page = child_page(source, &id)?;
    }
}

/// The value hash stored under `key`, if any.
pub fn lookup<S: PageSource + ?Sized>(source: &S, key: &Hash) -> Result<Option<Hash>, LedgerError> {
    let proof = prove(source, key)?;
    Ok(proof.leaf.filter(|l| l.key == *key).map(|l| l.value_hash))
}

/// The root of the tree holding exactly `leaves`, computed directly from the definition
/// with no pages. The reference the paged implementation is tested and checked against.
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
            page::internal_hash(
                &subtree_root(&leaves[..split], depth + 1),
                &subtree_root(&leaves[split..], depth + 1),
            )
        }
    }
}

/// Pages held in memory; the page source for tests, audits and replays.
#[derive(Clone, Debug, Default)]
pub struct MemoryPages {
    pages: std::collections::HashMap<PageId, SharedPage>,
}

impl MemoryPages {
    /// Applies the page changes of an update.
    pub fn apply(&mut self, changes: &[PageChange]) {
        for change in changes {
            match &change.new {
                Some(page) => {
                    self.pages.insert(change.id, page.clone());
                }
                None => {
                    self.pages.remove(&change.id);
                }
            }
        }
    }

    /// Number of pages held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether no page is held.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

impl PageSource for MemoryPages {
    fn page(&self, id: &PageId) -> Result<Option<SharedPage>, LedgerError> {
        Ok(self.pages.get(id).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> Hash {
        Hash::digest(&n.to_le_bytes())
    }

    fn apply(pages: &mut MemoryPages, updates: Vec<(Hash, Option<Hash>)>) -> Hash {
        let update = update(pages, updates).unwrap();
        pages.apply(&update.pages);
        update.root
    }

    #[test]
    fn empty_and_single_leaf_roots() {
        let mut pages = MemoryPages::default();
        assert_eq!(root_hash(&pages).unwrap(), Hash::ZERO);
        let root = apply(&mut pages, vec![(h(1), Some(h(10)))]);
        assert_eq!(root, leaf_hash(&h(1), &h(10)));
        assert_eq!(root_hash(&pages).unwrap(), root);
        let root = apply(&mut pages, vec![(h(1), None)]);
        assert_eq!(root, Hash::ZERO);
        assert!(pages.is_empty());
    }

    #[test]
    fn matches_reference_and_cleans_up_pages() {
        let mut pages = MemoryPages::default();
        let mut leaves: Vec<(Hash, Hash)> = (0..500).map(|i| (h(i), h(i + 1000))).collect();
        let root = apply(
            &mut pages,
            leaves.iter().map(|(k, v)| (*k, Some(*v))).collect(),
        );
        assert_eq!(root, root_from_leaves(&mut leaves));
        for (k, v) in &leaves {
            assert_eq!(lookup(&pages, k).unwrap(), Some(*v));
        }
        // Deleting everything leaves no page behind.
        let root = apply(&mut pages, leaves.iter().map(|(k, _)| (*k, None)).collect());
        assert_eq!(root, Hash::ZERO);
        assert!(pages.is_empty(), "{} pages left", pages.len());
    }

    #[test]
    fn keys_sharing_long_prefixes() {
        // Keys equal except in the last bits force pages down to the last level.
        let mut pages = MemoryPages::default();
        let mut leaves = Vec::new();
        for last in [0u8, 1, 2, 0x80, 0xff] {
            let mut bytes = [0x42u8; 32];
            bytes[31] = last;
            leaves.push((Hash::from_bytes(bytes), h(u64::from(last))));
        }
        let root = apply(
            &mut pages,
            leaves.iter().map(|(k, v)| (*k, Some(*v))).collect(),
        );
        assert_eq!(root, root_from_leaves(&mut leaves));
        for (k, v) in &leaves {
            let proof = prove(&pages, k).unwrap();
            proof.verify(&root, k, Some(v)).unwrap();
        }
    }

    #[test]
    fn last_entry_for_a_key_wins() {
        let mut pages = MemoryPages::default();
        let root = apply(
            &mut pages,
            vec![
                (h(1), Some(h(2))),
                (h(1), Some(h(3))),
                (h(4), Some(h(5))),
                (h(4), None),
            ],
        );
        assert_eq!(root, leaf_hash(&h(1), &h(3)));
    }
}
