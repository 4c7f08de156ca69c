//! Undo records: what one height changed, as it was before.
//!
//! For every tree page a block changed, the record keeps only the slots that differ
//! (or notes that the page did not exist), not the whole page: a block typically changes
//! one or two of a page's sixteen slots. For every state value it keeps the old value.
//! The state at height `v` is rebuilt from the latest state by undoing heights
//! `latest, latest - 1, ..., v + 1` in that order.
//!
//! Encoding (little-endian), written in one pass into one buffer:
//!
//! ```text
//! u32 page count, then per page (sorted by page id):
//!     u8 key length, key bytes, u8 kind: 0 = page absent before,
//!                                       1 = u16 slot mask, then each masked old slot
//! u32 value count, then per value (sorted by key):
//!     32-byte key, u8 0 = absent before | 1 = u32 length and the old bytes
//! slot: u8 0 = empty | 1 = key (32) and value hash (32) | 2 = child hash (32)
//! ```

use std::sync::Arc;

use stele_consensus::Hash;

use crate::error::LedgerError;
use crate::smt::page::{PAGE_DEPTH_MAX, SLOTS, Slot, slot_of};
use crate::smt::{Page, PageChange, PageId, SharedPage};
use crate::state::ValueChange;

/// How to turn a page's content at one height into its content at the height before.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PageUndo {
    /// The page did not exist before.
    Absent,
    /// These slots held this before; the others were as after.
    Slots(Vec<(u8, Slot)>),
}

/// A decoded undo record.
#[derive(Debug, Default)]
pub(super) struct UndoRecord {
    pages: Vec<(PageId, PageUndo)>,
    values: Vec<(Hash, Option<Vec<u8>>)>,
}

impl UndoRecord {
    pub(super) fn page(&self, id: &PageId) -> Option<&PageUndo> {
        self.pages
            .binary_search_by(|(k, _)| k.cmp(id))
            .ok()
            .map(|i| &self.pages[i].1)
    }

    /// Keys of the values this height changed.
    pub(super) fn value_keys(&self) -> impl Iterator<Item = Hash> + '_ {
        self.values.iter().map(|(k, _)| *k)
    }

    pub(super) fn value(&self, key: &Hash) -> Option<&Option<Vec<u8>>> {
        self.values
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.values[i].1)
    }
}

fn encoded_slot_len(slot: &Slot) -> usize {
    match slot {
        Slot::Empty => 1,
        Slot::Leaf { .. } => 65,
        Slot::Child { .. } => 33,
    }
}

fn write_slot(out: &mut Vec<u8>, slot: &Slot) {
    match slot {
        Slot::Empty => out.push(0),
        Slot::Leaf { key, value_hash } => {
            out.push(1);
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(value_hash.as_bytes());
        }
        Slot::Child { hash } => {
            out.push(2);
            out.extend_from_slice(hash.as_bytes());
        }
    }
}

/// The slots of `old` that differ from `new` (an absent page reads as all empty).
fn changed_slots(old: &Page, new: Option<&SharedPage>) -> u16 {
    let mut mask = 0u16;
    for s in 0..SLOTS {
        let after = new.map_or(Slot::Empty, |n| *n.slot(s));
        if *old.slot(s) != after {
            mask |= 1 << s;
        }
    }
    mask
}

/// Encodes the undo record of one height.
pub(super) fn encode(pages: &[PageChange], values: &[ValueChange]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..pages.len()).collect();
    order.sort_unstable_by(|a, b| pages[*a].id.cmp(&pages[*b].id));
    let masks: Vec<u16> = pages
        .iter()
        .map(|c| {
            c.old
                .as_ref()
                .map_or(0, |old| changed_slots(old, c.new.as_ref()))
        })
        .collect();
    let mut len = 8;
    for (change, mask) in pages.iter().zip(&masks) {
        len += 2 + 33 + 2;
        if let Some(old) = &change.old {
            len += (0..SLOTS)
                .filter(|s| mask & (1 << s) != 0)
                .map(|s| encoded_slot_len(old.slot(s)))
                .sum::<usize>();
        }
    }
    len += values
        .iter()
        .map(|v| 33 + v.old.as_ref().map_or(0, |o| 4 + o.len()))
        .sum::<usize>();

    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
    for i in order {
        let change = &pages[i];
        let key = change.id.db_key();
        out.push(key.as_ref().len() as u8);
        out.extend_from_slice(key.as_ref());
        match &change.old {
            None => out.push(0),
            Some(old) => {
                out.push(1);
                out.extend_from_slice(&masks[i].to_le_bytes());
                for s in 0..SLOTS {
                    if masks[i] & (1 << s) != 0 {
                        write_slot(&mut out, old.slot(s));
                    }
                }
            }
        }
    }
    // Values arrive sorted by key from `StateDelta::compute`.
    debug_assert!(values.windows(2).all(|w| w[0].key < w[1].key));
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        out.extend_from_slice(v.key.as_bytes());
        match &v.old {
            None => out.push(0),
            Some(old) => {
                out.push(1);
                out.extend_from_slice(&(old.len() as u32).to_le_bytes());
                out.extend_from_slice(old);
            }
        }
    }
    debug_assert!(out.len() <= len);
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LedgerError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| corrupt("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, LedgerError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, LedgerError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, LedgerError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn hash(&mut self) -> Result<Hash, LedgerError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32)?);
        Ok(Hash::from_bytes(out))
    }
}

fn corrupt(detail: &str) -> LedgerError {
    LedgerError::Corrupt {
        what: format!("undo record: {detail}"),
    }
}

/// Decodes an undo record, checking its structure.
pub(super) fn decode(bytes: &[u8]) -> Result<UndoRecord, LedgerError> {
    let mut r = Reader { bytes, at: 0 };
    let page_count = r.u32()? as usize;
    // Every entry takes at least 3 bytes: a count larger than that is corrupt, and
    // bounding it keeps a corrupt count from reserving huge memory.
    if page_count > bytes.len() / 3 {
        return Err(corrupt("page count exceeds the record"));
    }
    let mut pages = Vec::with_capacity(page_count);
    for _ in 0..page_count {
        let key_len = r.u8()? as usize;
        let id = PageId::from_db_key(r.take(key_len)?)?;
        let undo = match r.u8()? {
            0 => PageUndo::Absent,
            1 => {
                let mask = r.u16()?;
                let mut slots = Vec::with_capacity(mask.count_ones() as usize);
                for s in 0..SLOTS {
                    if mask & (1 << s) != 0 {
                        let slot = match r.u8()? {
                            0 => Slot::Empty,
                            1 => Slot::Leaf {
                                key: r.hash()?,
                                value_hash: r.hash()?,
                            },
                            2 => Slot::Child { hash: r.hash()? },
                            _ => return Err(corrupt("unknown slot tag")),
                        };
                        slots.push((s as u8, slot));
                    }
                }
                PageUndo::Slots(slots)
            }
            _ => return Err(corrupt("unknown page kind")),
        };
        pages.push((id, undo));
    }
    if !pages.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(corrupt("pages out of order"));
    }
    let value_count = r.u32()? as usize;
    if value_count > bytes.len() / 33 {
        return Err(corrupt("value count exceeds the record"));
    }
    let mut values = Vec::with_capacity(value_count);
    for _ in 0..value_count {
        let key = r.hash()?;
        let old = match r.u8()? {
            0 => None,
            1 => {
                let len = r.u32()? as usize;
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(corrupt("unknown value kind")),
        };
        values.push((key, old));
    }
    if !values.windows(2).all(|w| w[0].0 < w[1].0) {
        return Err(corrupt("values out of order"));
    }
    if r.at != bytes.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(UndoRecord { pages, values })
}

/// The content of page `id` one height earlier, given its content `newer` after.
pub(super) fn undo_page(
    id: &PageId,
    newer: Option<SharedPage>,
    undo: &PageUndo,
) -> Result<Option<SharedPage>, LedgerError> {
    let PageUndo::Slots(slots) = undo else {
        return Ok(None);
    };
    let mut page = newer.as_deref().cloned().unwrap_or_default();
    for (s, slot) in slots {
        let s = *s as usize;
        match slot {
            Slot::Leaf { key, .. } if !id.covers(key) || slot_of(key, id.depth()) != s => {
                return Err(corrupt("leaf outside its key's slot"));
            }
            Slot::Child { .. } if id.depth() >= PAGE_DEPTH_MAX => {
                return Err(corrupt("child page below the last level"));
            }
            _ => {}
        }
        page.set_slot(s, *slot);
    }
    page.rehash_all();
    Ok(Some(Arc::new(page)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smt::{self, MemoryPages};

    fn h(n: u64) -> Hash {
        Hash::digest(&n.to_le_bytes())
    }

    #[test]
    fn undoing_an_update_restores_every_page() {
        let mut pages = MemoryPages::default();
        let first =
            smt::update(&pages, (0..300).map(|i| (h(i), Some(h(i + 1)))).collect()).unwrap();
        pages.apply(&first.pages);
        let before = pages.clone();
        // Updates, inserts and deletes.
        let mut updates: Vec<(Hash, Option<Hash>)> =
            (0..100).map(|i| (h(i), Some(h(i + 7)))).collect();
        updates.extend((1000..1050).map(|i| (h(i), Some(h(i)))));
        updates.extend((200..300).map(|i| (h(i), None)));
        let second = smt::update(&pages, updates).unwrap();
        let encoded = encode(&second.pages, &[]);
        let record = decode(&encoded).unwrap();
        pages.apply(&second.pages);
        for change in &second.pages {
            let undo = record
                .page(&change.id)
                .expect("every changed page is recorded");
            let after = smt::PageSource::page(&pages, &change.id).unwrap();
            let restored = undo_page(&change.id, after, undo).unwrap();
            let original = smt::PageSource::page(&before, &change.id).unwrap();
            assert_eq!(
                restored.as_deref(),
                original.as_deref(),
                "page {:?}",
                change.id
            );
        }
    }

    #[test]
    fn corrupt_records_are_refused() {
        let mut pages = MemoryPages::default();
        let update = smt::update(&pages, (0..50).map(|i| (h(i), Some(h(i)))).collect()).unwrap();
        pages.apply(&update.pages);
        let update = smt::update(&pages, (0..5).map(|i| (h(i), None)).collect()).unwrap();
        let values = vec![ValueChange {
            key: h(1),
            old: Some(vec![1, 2, 3]),
            new: None,
        }];
        let encoded = encode(&update.pages, &values);
        decode(&encoded).unwrap();
        for cut in [1, encoded.len() / 2, encoded.len() - 1] {
            assert!(decode(&encoded[..cut]).is_err(), "truncated at {cut}");
        }
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        let mut huge = encoded.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).is_err());
    }
}
