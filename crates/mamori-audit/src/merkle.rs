//! The RFC 6962 / RFC 9162 Merkle tree over audit events.
//!
//! - leaf hash `SHA-256(0x00 || leaf)`, node hash `SHA-256(0x01 || l || r)`;
//! - [`Frontier`] appends leaves incrementally and reports every complete
//!   node it creates, so the store can persist them (no recomputation);
//! - proofs are built from stored complete nodes through [`NodeSource`];
//! - [`verify_inclusion`] and [`verify_consistency`] follow RFC 9162
//!   sections 2.1.3.2 and 2.1.4.2 and need nothing but hashes.

use ring::digest::{Context, SHA256};

/// A SHA-256 digest: a leaf, node or root hash.
pub type Hash = [u8; 32];

/// The RFC 6962 leaf hash of leaf bytes: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x00]);
    c.update(leaf);
    to_hash(c)
}

/// The RFC 6962 hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&[0x01]);
    c.update(left);
    c.update(right);
    to_hash(c)
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    to_hash(Context::new(&SHA256))
}

fn to_hash(c: Context) -> Hash {
    let mut h = [0u8; 32];
    h.copy_from_slice(c.finish().as_ref());
    h
}

/// A complete (perfect) subtree: `2^level` leaves starting at leaf
/// `index * 2^level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 for a leaf).
    pub level: u32,
    /// Position among the nodes of its level, from 0 at the left.
    pub index: u64,
}

/// The right edge of the tree: one complete subtree per set bit of `size`,
/// largest (leftmost) first. Enough to append and to compute the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    nodes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// The node ids making up the frontier of a tree of `size` leaves.
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        let mut out = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1u64 << level) != 0 {
                out.push(NodeId { level, index: start >> level });
                start += 1u64 << level;
            }
        }
        out
    }

    /// Rebuilds a frontier from its stored nodes (in [`Frontier::node_ids`] order).
    pub fn from_nodes(size: u64, nodes: Vec<Hash>) -> Option<Self> {
        (nodes.len() == size.count_ones() as usize).then_some(Frontier { size, nodes })
    }

    /// The number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; `on_node` receives every complete node created
    /// (the leaf itself at level 0, then each parent completed).
    pub fn append(&mut self, leaf: Hash, mut on_node: impl FnMut(NodeId, &Hash)) {
        let mut index = self.size;
        let mut level = 0u32;
        let mut h = leaf;
        on_node(NodeId { level, index }, &h);
        while index & 1 == 1 {
            // Invariant: an odd index means a left sibling is on the frontier.
            let Some(left) = self.nodes.pop() else { break };
            h = node_hash(&left, &h);
            index >>= 1;
            level += 1;
            on_node(NodeId { level, index }, &h);
        }
        self.nodes.push(h);
        self.size += 1;
    }

    /// The root hash (MTH) of the tree so far; [`empty_root`] when empty.
    pub fn root(&self) -> Hash {
        fold_right(&self.nodes).unwrap_or_else(empty_root)
    }
}

/// Folds subtree hashes of decreasing size, right to left, into the MTH.
fn fold_right(nodes: &[Hash]) -> Option<Hash> {
    let mut it = nodes.iter().rev();
    let mut acc = *it.next()?;
    for n in it {
        acc = node_hash(n, &acc);
    }
    Some(acc)
}

/// Where proofs get complete nodes from (the store's node table).
pub trait NodeSource {
    /// Why a node could not be had.
    type Error;
    /// The hash of the complete node `id`.
    fn node(&mut self, id: NodeId) -> Result<Hash, Self::Error>;
}

/// Errors from building proofs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError<E> {
    /// An inclusion proof for a leaf the tree does not have.
    #[error("index {index} is not in a tree of size {size}")]
    OutOfRange {
        /// The leaf asked for.
        index: u64,
        /// The tree's size.
        size: u64,
    },
    /// A consistency proof from a larger tree to a smaller one.
    #[error("tree sizes {first} and {second} do not allow a consistency proof")]
    BadSizes {
        /// The older tree's size.
        first: u64,
        /// The newer tree's size.
        second: u64,
    },
    /// The node source failed.
    #[error("node store: {0}")]
    Source(E),
}

/// MTH of leaves `[lo, hi)` from stored complete nodes (`lo < hi`).
pub fn subtree_hash<S: NodeSource>(src: &mut S, lo: u64, hi: u64) -> Result<Hash, S::Error> {
    let mut parts = Vec::new();
    let mut pos = lo;
    while pos < hi {
        let mut level = if pos == 0 { 63 } else { pos.trailing_zeros() };
        while level > 0 && pos + (1u64 << level) > hi {
            level -= 1;
        }
        parts.push(src.node(NodeId { level, index: pos >> level })?);
        pos += 1u64 << level;
    }
    Ok(fold_right(&parts).unwrap_or_else(empty_root))
}

/// The root of the tree of the first `size` leaves.
pub fn root_at<S: NodeSource>(src: &mut S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    subtree_hash(src, 0, size)
}

/// Largest power of two strictly smaller than `n` (n >= 2).
fn split(n: u64) -> u64 {
    let mut k = 1u64;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// RFC 9162 PATH(m, D[lo:hi]).
fn path<S: NodeSource>(src: &mut S, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), S::Error> {
    let n = hi - lo;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(src, m, lo, lo + k, out)?;
        out.push(subtree_hash(src, lo + k, hi)?);
    } else {
        path(src, m - k, lo + k, hi, out)?;
        out.push(subtree_hash(src, lo, lo + k)?);
    }
    Ok(())
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves.
pub fn inclusion_proof<S: NodeSource>(src: &mut S, index: u64, size: u64) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::OutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(src, index, 0, size, &mut out).map_err(ProofError::Source)?;
    Ok(out)
}

/// RFC 9162 SUBPROOF(m, D[lo:hi], b).
fn subproof<S: NodeSource>(
    src: &mut S,
    m: u64,
    lo: u64,
    hi: u64,
    b: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = hi - lo;
    if m == n {
        if !b {
            out.push(subtree_hash(src, lo, hi)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(src, m, lo, lo + k, b, out)?;
        out.push(subtree_hash(src, lo + k, hi)?);
    } else {
        subproof(src, m - k, lo + k, hi, false, out)?;
        out.push(subtree_hash(src, lo, lo + k)?);
    }
    Ok(())
}

/// The consistency proof between tree sizes `first <= second`.
/// Empty when `first == second` or `first == 0`.
pub fn consistency_proof<S: NodeSource>(
    src: &mut S,
    first: u64,
    second: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if first > second {
        return Err(ProofError::BadSizes { first, second });
    }
    let mut out = Vec::new();
    if first == 0 || first == second {
        return Ok(out);
    }
    subproof(src, first, 0, second, true, &mut out).map_err(ProofError::Source)?;
    Ok(out)
}

/// Verifies an inclusion proof (RFC 9162 2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Verifies a consistency proof (RFC 9162 2.1.4.2), extended to the
/// trivial cases: equal sizes need an empty proof and equal roots; the empty
/// tree is consistent with every tree.
pub fn verify_consistency(first: u64, second: u64, first_root: &Hash, second_root: &Hash, proof: &[Hash]) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty() && *first_root == empty_root();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let Some((head, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*head, *head);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

/// An in-memory node store, for tests, the offline verifier and exports.
#[derive(Debug, Default, Clone)]
pub struct MemTree {
    /// `levels[l][i]` is the complete node (l, i).
    levels: Vec<Vec<Hash>>,
    frontier: Frontier,
}

impl MemTree {
    /// An empty tree.
    pub fn new() -> Self {
        MemTree::default()
    }
    /// Appends a leaf by its leaf hash, keeping every complete node created.
    pub fn push_leaf_hash(&mut self, h: Hash) {
        let levels = &mut self.levels;
        self.frontier.append(h, |id, hash| {
            let l = id.level as usize;
            if levels.len() <= l {
                levels.resize_with(l + 1, Vec::new);
            }
            if let Some(level) = levels.get_mut(l) {
                level.push(*hash);
            }
        });
    }
    /// Appends leaf bytes (hashed with [`leaf_hash`]).
    pub fn push(&mut self, leaf: &[u8]) {
        self.push_leaf_hash(leaf_hash(leaf));
    }
    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.frontier.size()
    }
    /// The root hash of the tree.
    pub fn root(&self) -> Hash {
        self.frontier.root()
    }
    /// The tree's right edge (what the store persists between appends).
    pub fn frontier(&self) -> &Frontier {
        &self.frontier
    }
}

/// A node asked of a [`MemTree`] that it does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node ({}, {}) is not in the tree", .0.level, .0.index)]
pub struct MissingNode(pub NodeId);

impl NodeSource for MemTree {
    type Error = MissingNode;
    fn node(&mut self, id: NodeId) -> Result<Hash, MissingNode> {
        self.levels
            .get(id.level as usize)
            .and_then(|l| l.get(usize::try_from(id.index).ok()?))
            .copied()
            .ok_or(MissingNode(id))
    }
}

/// Lower-case hexadecimal of `h`.
pub fn to_hex(h: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(h.len() * 2);
    for b in h {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Bytes from hexadecimal (either case); `None` if `s` is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        let v = from_hex(s).unwrap();
        let mut out = [0u8; 32];
        out.copy_from_slice(&v);
        out
    }

    /// The RFC 6962 test inputs and roots, as used by certificate-transparency
    /// (merkle_tree_test.cc) and transparency-dev/merkle (testonly/constants.go).
    const LEAVES: &[&str] =
        &["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];
    const ROOTS: &[&str] = &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn tree(n: usize) -> MemTree {
        let mut t = MemTree::new();
        for l in LEAVES.iter().take(n) {
            t.push(&from_hex(l).unwrap());
        }
        t
    }

    #[test]
    fn known_answer_roots() {
        assert_eq!(to_hex(&empty_root()), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        for (n, root) in ROOTS.iter().enumerate() {
            let mut t = tree(n + 1);
            assert_eq!(to_hex(&t.root()), *root, "size {}", n + 1);
            assert_eq!(root_at(&mut t, (n + 1) as u64).unwrap(), h(root));
        }
    }

    #[test]
    fn known_answer_inclusion_proofs() {
        // From the RFC 6962 reference tests: (leaf, size, path).
        let cases: &[(u64, u64, &[&str])] = &[
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let mut t = tree(8);
        for (leaf, size, want) in cases {
            let got = inclusion_proof(&mut t, *leaf, *size).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(got, want, "leaf {leaf} size {size}");
            let root = root_at(&mut t, *size).unwrap();
            let lh = leaf_hash(&from_hex(LEAVES[*leaf as usize]).unwrap());
            assert!(verify_inclusion(&lh, *leaf, *size, &got, &root));
        }
    }

    #[test]
    fn known_answer_consistency_proofs() {
        let cases: &[(u64, u64, &[&str])] = &[
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let mut t = tree(8);
        for (first, second, want) in cases {
            let got = consistency_proof(&mut t, *first, *second).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(got, want, "{first} -> {second}");
            let r1 = root_at(&mut t, *first).unwrap();
            let r2 = root_at(&mut t, *second).unwrap();
            assert!(verify_consistency(*first, *second, &r1, &r2, &got));
        }
    }

    #[test]
    fn every_proof_verifies_and_tampering_fails_up_to_130() {
        let mut t = MemTree::new();
        let mut roots = vec![empty_root()];
        let mut leaves = Vec::new();
        for i in 0..130u32 {
            let l = leaf_hash(&i.to_be_bytes());
            leaves.push(l);
            t.push_leaf_hash(l);
            roots.push(t.root());
        }
        for size in 1..=130u64 {
            let root = roots[size as usize];
            assert_eq!(root_at(&mut t, size).unwrap(), root);
            for idx in 0..size {
                let p = inclusion_proof(&mut t, idx, size).unwrap();
                assert!(verify_inclusion(&leaves[idx as usize], idx, size, &p, &root));
                assert!(!verify_inclusion(&leaves[idx as usize], idx, size, &p, &roots[size as usize - 1]));
                if let Some(first) = p.first() {
                    let mut bad = p.clone();
                    bad[0] = node_hash(first, first);
                    assert!(!verify_inclusion(&leaves[idx as usize], idx, size, &bad, &root));
                }
            }
            for first in 0..=size {
                let p = consistency_proof(&mut t, first, size).unwrap();
                assert!(verify_consistency(first, size, &roots[first as usize], &root, &p), "{first}->{size}");
                if first > 0 && first < size {
                    let wrong = leaf_hash(b"forged");
                    assert!(!verify_consistency(first, size, &wrong, &root, &p));
                    assert!(!verify_consistency(first, size, &roots[first as usize], &wrong, &p));
                }
            }
        }
    }

    #[test]
    fn frontier_reload_matches() {
        let mut t = MemTree::new();
        for i in 0..77u32 {
            t.push(&i.to_le_bytes());
        }
        let ids = Frontier::node_ids(77);
        let nodes: Vec<Hash> = ids.iter().map(|id| t.node(*id).unwrap()).collect();
        let mut f = Frontier::from_nodes(77, nodes).unwrap();
        assert_eq!(f.root(), t.root());
        f.append(leaf_hash(b"x"), |_, _| {});
        t.push(b"x");
        assert_eq!(f.root(), t.root());
    }
}
