//! Measures memtable choices for the store's two busiest column families. It inserts
//! 1.2 million random 32-byte keys in batches of 3,000 (about one block's worth) into
//! a column family set up like the transaction index (6-byte values) or the state
//! values (48-byte values), for several memtables and write-buffer sizes, and with
//! each batch's keys in the random order they are made or sorted ("skip-sort"). For
//! each it reports the time per insert on the writing thread, the last flush, and the
//! process's CPU per key with flushes and compactions included.
//!
//! `cargo run --profile ci --example memtables [index|values]`
#![allow(clippy::unwrap_used)]

use rocksdb::{ColumnFamilyDescriptor, DB, MemtableFactory, Options, SliceTransform, WriteBatch};
use sha2::{Digest, Sha256};
use std::time::Instant;

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s[s.rfind(')').unwrap() + 2..].split(' ').collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}
const VALUE: [u8; 64] = [7; 64];

fn run(kind: &str, wb: usize, value_len: usize) {
    let c0 = cpu();
    let dir = tempfile::tempdir().unwrap();
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    db_opts.set_allow_concurrent_memtable_write(false);
    let mut cf = Options::default();
    cf.set_write_buffer_size(wb);
    cf.set_compression_type(rocksdb::DBCompressionType::None);
    if kind == "vector" {
        cf.set_memtable_factory(MemtableFactory::Vector);
    }
    if kind == "hash" {
        cf.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
        cf.set_memtable_factory(MemtableFactory::HashLinkList {
            bucket_count: 1 << 20,
        });
    }
    let db = DB::open_cf_descriptors(
        &db_opts,
        dir.path(),
        vec![ColumnFamilyDescriptor::new("idx", cf)],
    )
    .unwrap();
    let h = db.cf_handle("idx").unwrap();
    let n = 1_200_000u64;
    let t = Instant::now();
    let mut i = 0u64;
    while i < n {
        let mut keys: Vec<[u8; 32]> = (i..i + 3000)
            .map(|j| Sha256::digest(j.to_le_bytes()).into())
            .collect();
        i += 3000;
        // Sorted, each insert's search starts from the last one's place in the list.
        if kind == "skip-sort" {
            keys.sort_unstable();
        }
        let mut b = WriteBatch::default();
        for k in &keys {
            b.put_cf(&h, k, &VALUE[..value_len]);
        }
        db.write(b).unwrap();
    }
    let ins = t.elapsed();
    let t = Instant::now();
    db.flush_cf(&h).unwrap();
    let fl = t.elapsed();
    let c = |p: &str| db.property_int_value_cf(&h, p).unwrap().unwrap_or(0);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let total = cpu() - c0;
    println!(
        "{kind:10} wb {:3} MB: insert {:6.0} ns/key wall, final flush {:5} ms, L0 files {}, process CPU {:6.0} ns/key",
        wb >> 20,
        ins.as_nanos() as f64 / n as f64,
        fl.as_millis(),
        c("rocksdb.num-files-at-level0"),
        total * 1e9 / n as f64
    );
}

fn main() {
    let only = std::env::args().nth(1);
    for _ in 0..2 {
        if only.as_deref() != Some("values") {
            // The transaction index: a location of 6 bytes per transaction hash.
            run("skip", 64 << 20, 6);
            run("hash", 64 << 20, 6);
            run("skip", 16 << 20, 6);
            run("skip", 8 << 20, 6);
            run("skip-sort", 8 << 20, 6);
            run("skip", 4 << 20, 6);
        }
        if only.as_deref() != Some("index") {
            // State values: an account of about 48 bytes per changed key.
            for wb in [64 << 20, 16 << 20, 8 << 20] {
                run("vector", wb, 48);
                run("skip", wb, 48);
            }
        }
    }
}
