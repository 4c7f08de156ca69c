//! Audit packs: a written pack reads back to the same history, and every framing fault
//! (cut short, a record dropped or changed, a lying end marker, bytes appended, an
//! absurd length) is refused with an error that names the height.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::TestChain;
use stele_ledger::{
    Block, HistoryVerifier, PackError, PackReader, PackWriter, check_transaction_signatures,
};

const HEADER_LEN: usize = 16 + 4 + 32;

fn chain() -> TestChain {
    let mut chain = TestChain::new("pack", 4, 6);
    for round in 0..5u64 {
        let txs = (0..4)
            .map(|i| chain.transfer(i, (i + 1) % 6, 10 + round))
            .collect();
        chain.produce(txs);
    }
    chain
}

fn write(chain: &TestChain, path: &Path) {
    let mut writer = PackWriter::create(path, chain.genesis.hash()).unwrap();
    for (block, certificate) in &chain.blocks {
        writer.append(block, certificate).unwrap();
    }
    assert_eq!(writer.count(), chain.blocks.len() as u64);
    writer.finish().unwrap();
}

fn read_all(chain: &TestChain, path: &Path) -> Result<Vec<Block>, PackError> {
    let reader = PackReader::open(path, chain.genesis.params.max_block_bytes)?;
    reader.map(|r| r.map(|(block, _)| block)).collect()
}

/// Byte ranges `(start, end)` of each record, length prefix included.
fn records(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = HEADER_LEN;
    let mut out = Vec::new();
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return out;
        }
        out.push((at, at + 4 + len));
        at += 4 + len;
    }
}

#[test]
fn round_trip_verifies() {
    let chain = chain();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.pack");
    write(&chain, &path);
    assert!(!dir.path().join("chain.pack.partial").exists());

    let reader = PackReader::open(&path, chain.genesis.params.max_block_bytes).unwrap();
    assert_eq!(reader.genesis_hash(), chain.genesis.hash());
    let mut verifier = HistoryVerifier::new(&chain.genesis).unwrap();
    let mut count = 0;
    for record in reader {
        let (block, certificate) = record.unwrap();
        assert_eq!(block, chain.blocks[count].0);
        let valid = check_transaction_signatures(verifier.domain(), &[&block]);
        assert_eq!(valid, vec![true]);
        verifier
            .verify_next_checked(&block, &certificate, valid[0])
            .unwrap();
        count += 1;
    }
    assert_eq!(count, 5);
    let summary = verifier.summary().unwrap();
    assert_eq!(summary.height, 5);
    assert_eq!(summary.transactions, 20);
    assert_eq!(summary.block_hash, chain.tip.block_hash);
}

#[test]
fn unfinished_pack_leaves_nothing() {
    let chain = chain();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chain.pack");
    {
        let mut writer = PackWriter::create(&path, chain.genesis.hash()).unwrap();
        writer
            .append(&chain.blocks[0].0, &chain.blocks[0].1)
            .unwrap();
    }
    assert!(!path.exists());
    assert!(!dir.path().join("chain.pack.partial").exists());
}

#[test]
fn signature_check_points_at_the_bad_block() {
    let chain = chain();
    let mut blocks: Vec<Block> = chain.blocks.iter().map(|(b, _)| b.clone()).collect();
    blocks[3].txs[2].signature = blocks[3].txs[1].signature;
    let refs: Vec<&Block> = blocks.iter().collect();
    let verifier = HistoryVerifier::new(&chain.genesis).unwrap();
    assert_eq!(
        check_transaction_signatures(verifier.domain(), &refs),
        vec![true, true, true, false, true]
    );
}

#[test]
fn framing_faults_name_the_height() {
    let chain = chain();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.pack");
    write(&chain, &good);
    let bytes = std::fs::read(&good).unwrap();
    let spans = records(&bytes);
    assert_eq!(spans.len(), 5);
    let bad = dir.path().join("bad.pack");
    let check = |edited: Vec<u8>| {
        std::fs::write(&bad, edited).unwrap();
        read_all(&chain, &bad).unwrap_err()
    };

    // Cut inside the record of height 3.
    let error = check(bytes[..spans[2].0 + 10].to_vec());
    assert!(
        matches!(error, PackError::Truncated { height: 3 }),
        "{error}"
    );
    // Cut after the last record, before the end marker.
    let error = check(bytes[..spans[4].1].to_vec());
    assert!(
        matches!(error, PackError::Truncated { height: 6 }),
        "{error}"
    );

    // The record of height 2 dropped: the end marker no longer matches.
    let mut edited = bytes[..spans[1].0].to_vec();
    edited.extend_from_slice(&bytes[spans[1].1..]);
    let error = check(edited);
    assert!(
        matches!(
            error,
            PackError::EndMismatch {
                stated_count: 5,
                count: 4,
                ..
            }
        ),
        "{error}"
    );

    // A record whose borsh is cut short inside (length shortened by one byte).
    let mut edited = bytes.clone();
    let (start, end) = spans[3];
    let len = (end - start - 4 - 1) as u32;
    edited[start..start + 4].copy_from_slice(&len.to_le_bytes());
    edited.remove(end - 1);
    let error = check(edited);
    assert!(
        matches!(error, PackError::Decode { height: 4, .. }),
        "{error}"
    );

    // An absurd length is refused before anything is allocated.
    let mut edited = bytes.clone();
    edited[spans[1].0..spans[1].0 + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let error = check(edited);
    assert!(
        matches!(error, PackError::RecordTooLarge { height: 2, .. }),
        "{error}"
    );

    // Bytes after the end marker.
    let mut edited = bytes.clone();
    edited.push(0);
    let error = check(edited);
    assert!(matches!(error, PackError::TrailingBytes { .. }), "{error}");

    // Not a pack at all, or another version.
    let error = check(b"{\"not\": \"a pack\"}".to_vec());
    assert!(matches!(error, PackError::BadMagic { .. }), "{error}");
    let mut edited = bytes.clone();
    edited[16] = 9;
    let error = check(edited);
    assert!(
        matches!(error, PackError::UnsupportedVersion { version: 9, .. }),
        "{error}"
    );

    // A missing file is an I/O error naming it.
    let error = read_all(&chain, &dir.path().join("missing.pack")).unwrap_err();
    assert!(error.to_string().contains("missing.pack"), "{error}");
}
