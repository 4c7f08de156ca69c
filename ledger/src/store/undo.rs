//! Undo records: the values one height changed, as they were before.
//!
//! The store keeps the last K state trees in memory; after a restart it rebuilds the
//! latest tree from the stored values and the older ones by undoing heights
//! `latest, latest - 1, ..., oldest + 1` with these records.
//!
//! Encoding (little-endian), written in one pass into one buffer:
//!
//! ```text
//! u32 value count, then per value (sorted by key, distinct):
//!     32-byte key, u8 0 = absent before | 1 = u32 length and the old bytes
//! ```

use stele_consensus::Hash;

use crate::error::LedgerError;
use crate::state::ValueChange;

/// A decoded undo record: each changed key with its value before the height.
#[derive(Debug, Default)]
pub(super) struct UndoRecord {
    values: Vec<(Hash, Option<Vec<u8>>)>,
}

impl UndoRecord {
    /// The changes that take the tree after the height back to the tree before it.
    pub(super) fn into_tree_changes(self) -> Vec<(Hash, Option<Vec<u8>>)> {
        self.values
    }

    #[cfg(test)]
    fn value(&self, key: &Hash) -> Option<&Option<Vec<u8>>> {
        self.values
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|i| &self.values[i].1)
    }
}

/// Encodes the undo record of one height from its value changes (sorted by key).
pub(super) fn encode(values: &[ValueChange]) -> Vec<u8> {
    // Values arrive sorted and distinct from `StateDelta::compute`.
    debug_assert!(values.windows(2).all(|w| w[0].key < w[1].key));
    let len = 4 + values
        .iter()
        .map(|v| 33 + v.old.as_ref().map_or(0, |o| 4 + o.len()))
        .sum::<usize>();
    let mut out = Vec::with_capacity(len);
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
    debug_assert_eq!(out.len(), len);
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
    let value_count = r.u32()? as usize;
    // Every entry takes at least 33 bytes: a larger count is corrupt, and bounding it
    // keeps a corrupt count from reserving huge memory.
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
    Ok(UndoRecord { values })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smt::Tree;

    fn h(n: u64) -> Hash {
        Hash::digest(&n.to_le_bytes())
    }

    #[test]
    fn undoing_a_height_restores_the_tree() {
        let before = Tree::from_leaves((0..300).map(|i| (h(i), vec![i as u8; 9])).collect());
        // Updates, inserts and deletes.
        let mut values: Vec<ValueChange> = Vec::new();
        values.extend((0..100).map(|i| ValueChange {
            key: h(i),
            old: Some(vec![i as u8; 9]),
            new: Some(vec![7; 3]),
        }));
        values.extend((1000..1050).map(|i| ValueChange {
            key: h(i),
            old: None,
            new: Some(vec![1]),
        }));
        values.extend((200..300).map(|i| ValueChange {
            key: h(i),
            old: Some(vec![i as u8; 9]),
            new: None,
        }));
        values.sort_by_key(|v| v.key);
        let after = before.update(values.iter().map(|v| (v.key, v.new.clone())).collect());
        assert_ne!(after.root_hash(), before.root_hash());
        let record = decode(&encode(&values)).unwrap();
        assert_eq!(record.value(&h(5)), Some(&Some(vec![5; 9])));
        assert_eq!(record.value(&h(1001)), Some(&None));
        let restored = after.update(record.into_tree_changes());
        assert_eq!(restored.root_hash(), before.root_hash());
    }

    #[test]
    fn corrupt_records_are_refused() {
        let values = vec![
            ValueChange {
                key: h(1),
                old: Some(vec![1, 2, 3]),
                new: None,
            },
            ValueChange {
                key: h(2),
                old: None,
                new: Some(vec![4]),
            },
        ];
        let mut values = values;
        values.sort_by_key(|v| v.key);
        let encoded = encode(&values);
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
        // The same two entries in the wrong order.
        let mut swapped = encoded[..4].to_vec();
        let first_len = 33 + 4 + 3;
        let (first, second) = if values[0].old.is_some() {
            (&encoded[4..4 + first_len], &encoded[4 + first_len..])
        } else {
            (&encoded[4..4 + 33], &encoded[4 + 33..])
        };
        swapped.extend_from_slice(second);
        swapped.extend_from_slice(first);
        assert!(decode(&swapped).is_err());
    }
}
