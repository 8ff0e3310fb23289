//! mamori's Merkle tree against an independent implementation (the
//! `ct-merkle` crate): the same roots and the same proof bytes for every
//! size 0..=1000, proofs that verify both ways, and property tests on
//! random larger trees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, HashableLeaf, InclusionProof};
use mamori_audit::merkle::{self, leaf_hash, Hash, MemTree};
use proptest::prelude::*;
use sha2::Sha256;

#[derive(Clone, Debug)]
struct Leaf(Vec<u8>);

impl HashableLeaf for Leaf {
    fn hash<H: digest::Update>(&self, hasher: &mut H) {
        hasher.update(&self.0);
    }
}

fn leaf(i: u64) -> Vec<u8> {
    format!("mamori-audit/v1\n{{\"i\":{i}}}").into_bytes()
}

fn concat(hs: &[Hash]) -> Vec<u8> {
    hs.iter().flat_map(|h| h.iter().copied()).collect()
}

#[test]
fn same_roots_and_proofs_for_sizes_0_to_1000() {
    let mut ours = MemTree::new();
    let mut theirs = MemoryBackedTree::<Sha256, Leaf>::new();
    let mut roots: Vec<Hash> = vec![merkle::empty_root()];
    assert_eq!(theirs.root().as_bytes().as_slice(), ours.root().as_slice(), "empty tree");
    for i in 0..1000u64 {
        ours.push(&leaf(i));
        theirs.push(Leaf(leaf(i)));
        let n = i + 1;
        let root = theirs.root();
        assert_eq!(root.as_bytes().as_slice(), ours.root().as_slice(), "root at size {n}");
        roots.push(ours.root());
        // inclusion proofs at a spread of indices, byte-identical, verified both ways
        for idx in [0, n / 3, n / 2, n - 1] {
            let p = merkle::inclusion_proof(&mut ours, idx, n).unwrap();
            let tp = theirs.prove_inclusion(idx as usize);
            assert_eq!(tp.as_bytes(), concat(&p).as_slice(), "inclusion {idx} in {n}");
            assert!(merkle::verify_inclusion(&leaf_hash(&leaf(idx)), idx, n, &p, &ours.root()));
            let back = InclusionProof::<Sha256>::try_from_bytes(concat(&p)).unwrap();
            assert!(root.verify_inclusion(&Leaf(leaf(idx)), idx, &back).is_ok());
        }
        // consistency proofs from a spread of earlier sizes to this one
        for m in [1, n / 2, n.saturating_sub(1)] {
            if m == 0 || m > n {
                continue;
            }
            let p = merkle::consistency_proof(&mut ours, m, n).unwrap();
            assert!(merkle::verify_consistency(m, n, &roots[m as usize], &roots[n as usize], &p), "{m}->{n}");
            if m < n {
                let tp = theirs.prove_consistency((n - m) as usize);
                assert_eq!(tp.as_bytes(), concat(&p).as_slice(), "consistency {m}->{n}");
                let old = ct_merkle::RootHash::<Sha256>::new(roots[m as usize].into(), m);
                let back = ConsistencyProof::<Sha256>::try_from_bytes(concat(&p)).unwrap();
                assert!(root.verify_consistency(&old, &back).is_ok(), "ct-merkle verifies our {m}->{n}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn random_trees_prove_and_verify(n in 1u64..6000, seed in any::<u64>()) {
        let mut ours = MemTree::new();
        let mut leaves = Vec::new();
        for i in 0..n {
            let l = format!("{seed}:{i}").into_bytes();
            ours.push(&l);
            leaves.push(l);
        }
        let root = ours.root();
        let idx = seed % n;
        let p = merkle::inclusion_proof(&mut ours, idx, n).unwrap();
        prop_assert!(merkle::verify_inclusion(&leaf_hash(&leaves[idx as usize]), idx, n, &p, &root));
        prop_assert!(!merkle::verify_inclusion(&leaf_hash(b"other"), idx, n, &p, &root));
        let m = 1 + seed % n;
        let old_root = merkle::root_at(&mut ours, m).unwrap();
        let c = merkle::consistency_proof(&mut ours, m, n).unwrap();
        prop_assert!(merkle::verify_consistency(m, n, &old_root, &root, &c));
        if m < n {
            prop_assert!(!merkle::verify_consistency(m, n, &leaf_hash(b"x"), &root, &c));
        }
    }

    #[test]
    fn proof_verification_never_panics(
        idx in any::<u64>(), size in any::<u64>(), first in any::<u64>(),
        proof in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
    ) {
        let h = [0u8; 32];
        let _ = merkle::verify_inclusion(&h, idx, size, &proof, &h);
        let _ = merkle::verify_consistency(first, size, &h, &h, &proof);
    }

    #[test]
    fn leaf_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut b = mamori_audit::event::LEAF_PREFIX.to_vec();
        b.extend(bytes);
        // Ok or Err are both fine for random bytes: only a panic fails.
        mamori_audit::event::AuditRecord::from_leaf(&b).ok();
    }

    #[test]
    fn checkpoint_parsing_never_panics(text in ".{0,300}") {
        // Ok or Err are both fine for random text: only a panic fails.
        mamori_audit::note::SignedNote::parse(&text).ok();
        mamori_audit::note::Checkpoint::parse_body(&text).ok();
    }
}
