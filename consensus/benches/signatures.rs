//! Signature verification: one at a time (strict) and in batches, on one core.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use stele_consensus::{
    BatchEntry, Hash, MessageKind, Signature, SigningDomain, SigningKey, VerificationKey,
    verify_batch,
};

struct Signed {
    keys: Vec<VerificationKey>,
    messages: Vec<Vec<u8>>,
    signatures: Vec<Signature>,
}

/// `n` signatures by `n` distinct keys over transaction-sized messages.
fn signed(n: usize) -> Signed {
    let domain = SigningDomain::new("bench").unwrap();
    let mut out = Signed {
        keys: Vec::with_capacity(n),
        messages: Vec::with_capacity(n),
        signatures: Vec::with_capacity(n),
    };
    for i in 0..n {
        let key = SigningKey::from_seed(*Hash::digest(&(i as u64).to_le_bytes()).as_bytes());
        let message = domain.signing_bytes(MessageKind::Transaction, &[i as u8; 120]);
        out.signatures.push(key.sign_raw(&message));
        out.keys.push(key.public_key().verification_key().unwrap());
        out.messages.push(message);
    }
    out
}

fn entries(s: &Signed) -> Vec<BatchEntry<'_>> {
    (0..s.keys.len())
        .map(|i| BatchEntry {
            key: &s.keys[i],
            signed_bytes: &s.messages[i],
            signature: &s.signatures[i],
        })
        .collect()
}

fn bench_signatures(c: &mut Criterion) {
    let mut group = c.benchmark_group("ed25519");
    let one = signed(1);
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_strict", |b| {
        b.iter(|| {
            one.keys[0]
                .verify_raw(black_box(&one.messages[0]), &one.signatures[0])
                .unwrap()
        })
    });
    for n in [64usize, 1024] {
        let s = signed(n);
        let batch = entries(&s);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("verify_batch", n), &batch, |b, batch| {
            b.iter(|| verify_batch(black_box(batch)).unwrap())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench_signatures
}
criterion_main!(benches);
