//! Property tests of the sparse Merkle tree.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use stele_consensus::Hash;
use stele_ledger::smt::{self, SparseMerkleProof, Tree};
use stele_ledger::value_hash;

/// Keys from a small space collide often (updates of the same key); some share long
/// prefixes (long chains of internal nodes); the rest are spread out.
fn key_strategy() -> impl Strategy<Value = Hash> {
    prop_oneof![
        (0u16..64).prop_map(|i| Hash::digest(&i.to_le_bytes())),
        (any::<u8>(), any::<u8>()).prop_map(|(a, b)| {
            let mut bytes = [0x5a; 32];
            bytes[30] = a;
            bytes[31] = b;
            Hash::from_bytes(bytes)
        }),
        any::<[u8; 32]>().prop_map(Hash::from_bytes),
    ]
}

type Update = (Hash, Option<Vec<u8>>);

/// An update: a key and a new value, or `None` to delete it.
fn updates_strategy() -> impl Strategy<Value = Vec<Update>> {
    prop::collection::vec(
        (
            key_strategy(),
            prop::option::weighted(0.8, prop::collection::vec(any::<u8>(), 0..40)),
        ),
        0..200,
    )
}

fn apply(tree: &mut Tree, updates: Vec<Update>) -> Hash {
    *tree = tree.update(updates);
    tree.root_hash()
}

/// The final contents after applying updates in order (last write wins).
fn final_values(updates: &[Update]) -> Vec<(Hash, Vec<u8>)> {
    let mut map = std::collections::BTreeMap::new();
    for (k, v) in updates {
        match v {
            Some(v) => {
                map.insert(*k, v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
    map.into_iter().collect()
}

/// The final contents as (key, value hash), what the reference root takes.
fn final_leaves(updates: &[Update]) -> Vec<(Hash, Hash)> {
    final_values(updates)
        .into_iter()
        .map(|(k, v)| (k, value_hash(&v)))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The root depends only on the final contents: not on order, batching or history.
    #[test]
    fn root_independent_of_order_and_batching(
        updates in updates_strategy(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        seed in any::<u64>(),
    ) {
        // All at once.
        let mut one_batch = Tree::new();
        let root_one = apply(&mut one_batch, updates.clone());

        // In several batches, in the same order, keeping every version.
        let mut positions: Vec<usize> = cuts.iter().map(|i| i.index(updates.len() + 1)).collect();
        positions.sort_unstable();
        let mut batched = Tree::new();
        let mut start = 0;
        let mut root_batched = Hash::ZERO;
        let mut versions = Vec::new();
        for end in positions.into_iter().chain([updates.len()]) {
            root_batched = apply(&mut batched, updates[start..end].to_vec());
            versions.push((end, batched.clone()));
            start = end;
        }

        // The final contents inserted in a shuffled order, with no deletions.
        let values = final_values(&updates);
        let mut shuffled = values.clone();
        let mut rng = seed;
        for i in (1..shuffled.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (rng >> 33) as usize % (i + 1));
        }
        let mut fresh = Tree::new();
        let root_fresh = apply(&mut fresh, shuffled.into_iter().map(|(k, v)| (k, Some(v))).collect());

        let reference = smt::root_from_leaves(&mut final_leaves(&updates));
        prop_assert_eq!(root_one, reference);
        prop_assert_eq!(root_batched, reference);
        prop_assert_eq!(root_fresh, reference);
        prop_assert_eq!(Tree::from_leaves(values.clone()).root_hash(), reference);
        // Later updates leave every earlier version as it was.
        for (end, version) in versions {
            prop_assert_eq!(
                version.root_hash(),
                smt::root_from_leaves(&mut final_leaves(&updates[..end]))
            );
            prop_assert_eq!(version.leaves(), final_values(&updates[..end]));
        }
    }

    /// Every present key has a verifying inclusion proof, every absent key a verifying
    /// non-inclusion proof, and neither verifies against another root.
    #[test]
    fn proofs_verify_and_bind_to_their_root(
        updates in updates_strategy(),
        absent in prop::collection::vec(key_strategy(), 1..20),
    ) {
        let mut tree = Tree::new();
        let root = apply(&mut tree, updates.clone());
        let leaves = final_leaves(&updates);
        let other_root = Hash::digest(root.as_bytes());
        for (key, value) in &leaves {
            let proof = tree.prove(key);
            prop_assert!(proof.verify(&root, key, Some(value)).is_ok());
            prop_assert!(proof.verify(&other_root, key, Some(value)).is_err());
            prop_assert!(proof.verify(&root, key, None).is_err());
            let wrong_value = Hash::digest(value.as_bytes());
            prop_assert!(proof.verify(&root, key, Some(&wrong_value)).is_err());
        }
        for key in &absent {
            if leaves.iter().any(|(k, _)| k == key) {
                continue;
            }
            prop_assert!(tree.get(key).is_none());
            let proof = tree.prove(key);
            prop_assert!(proof.verify(&root, key, None).is_ok());
            prop_assert!(proof.verify(&other_root, key, None).is_err());
            prop_assert!(proof.verify(&root, key, Some(&Hash::digest(b"v"))).is_err());
        }
    }

    /// Changing any single byte of an encoded proof makes it fail: it no longer
    /// decodes, or no longer verifies.
    #[test]
    fn any_altered_proof_byte_fails(
        updates in updates_strategy(),
        probe in key_strategy(),
        flip in 1u8..=255,
    ) {
        let mut tree = Tree::new();
        let root = apply(&mut tree, updates.clone());
        let leaves = final_leaves(&updates);
        let mut cases: Vec<(Hash, Option<Hash>)> = leaves.iter().take(3).map(|(k, v)| (*k, Some(*v))).collect();
        if !leaves.iter().any(|(k, _)| *k == probe) {
            cases.push((probe, None));
        }
        for (key, value) in cases {
            let proof = tree.prove(&key);
            prop_assert!(proof.verify(&root, &key, value.as_ref()).is_ok());
            let bytes = borsh::to_vec(&proof).unwrap();
            for i in 0..bytes.len() {
                let mut altered = bytes.clone();
                altered[i] ^= flip;
                if let Ok(decoded) = borsh::from_slice::<SparseMerkleProof>(&altered) {
                    prop_assert!(
                        decoded.verify(&root, &key, value.as_ref()).is_err(),
                        "byte {} xor {:#x} still verifies", i, flip
                    );
                }
            }
        }
    }
}

#[test]
fn empty_tree_proves_absence() {
    let tree = Tree::new();
    let key = Hash::digest(b"k");
    let proof = tree.prove(&key);
    assert!(proof.siblings.is_empty() && proof.leaf.is_none());
    proof.verify(&Hash::ZERO, &key, None).unwrap();
}

#[test]
fn oversized_proof_is_refused() {
    let proof = SparseMerkleProof {
        leaf: None,
        siblings: vec![Hash::ZERO; 257],
    };
    assert!(matches!(
        proof.verify(&Hash::ZERO, &Hash::ZERO, None),
        Err(stele_ledger::ProofError::TooDeep { depth: 257 })
    ));
}
