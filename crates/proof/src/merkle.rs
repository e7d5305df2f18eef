//! The journal as a Merkle tree, hashed as RFC 6962 (and RFC 9162 §2.1)
//! says: a leaf's hash is `SHA-256(0x00 ‖ data)`, an inner node's
//! `SHA-256(0x01 ‖ left ‖ right)`, and a tree of `n` leaves splits at the
//! largest power of two below `n`. A leaf's data is its event's hash (the
//! 32 bytes the hash chain already holds), so leaf `i` is event `i + 1`.
//!
//! [`Tree`] holds every level of a tree in memory (about 64 bytes a leaf)
//! and answers roots, inclusion and consistency proofs for any size up to
//! its own; [`Frontier`] holds only the perfect subtrees on the right edge
//! (one hash a level) and gives the root as leaves are appended. The
//! verifiers follow RFC 9162 §2.1.3.2 and §2.1.4.2 to the letter, so a
//! proof made elsewhere to the same RFC checks here and the other way
//! round.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// A whole tree's levels: `levels[0]` the leaf hashes, each level above
/// the pairs of the one below, a last node without a partner carried up
/// as it is (which is exactly RFC 6962's split at powers of two).
#[derive(Clone, Debug, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree over these leaf hashes.
    pub fn new(leaves: Vec<Hash>) -> Tree {
        let mut levels = vec![leaves];
        while let Some(below) = levels.last().filter(|l| l.len() > 1) {
            let above = below
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node_hash(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            levels.push(above);
        }
        Tree { levels }
    }

    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The hash of the subtree over leaves `[from, to)`, a range the
    /// RFC's recursion produces (`from` a multiple of a power of two at
    /// least `to - from`'s).
    fn subtree(&self, from: u64, to: u64) -> Hash {
        let n = to - from;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(from >> level) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(from, from + k), &self.subtree(from + k, to))
    }

    /// The root of the tree of the first `size` leaves (`size <= len`).
    pub fn root(&self, size: u64) -> Hash {
        assert!(
            size <= self.len(),
            "a tree of {} leaves has no size {size}",
            self.len()
        );
        self.subtree(0, size)
    }

    /// The inclusion proof of leaf `index` in the tree of the first
    /// `size` leaves: RFC 6962's PATH, bottom up.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Vec<Hash> {
        assert!(
            index < size && size <= self.len(),
            "no leaf {index} in a tree of {size}"
        );
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        proof
    }

    fn path(&self, m: u64, from: u64, to: u64, out: &mut Vec<Hash>) {
        let n = to - from;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, from, from + k, out);
            out.push(self.subtree(from + k, to));
        } else {
            self.path(m - k, from + k, to, out);
            out.push(self.subtree(from, from + k));
        }
    }

    /// The proof that the tree of the first `old` leaves is a prefix of
    /// the tree of the first `new` (`0 < old <= new <= len`): RFC 6962's
    /// PROOF.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Vec<Hash> {
        assert!(
            0 < old && old <= new && new <= self.len(),
            "no proof from {old} to {new}"
        );
        let mut proof = Vec::new();
        self.subproof(old, 0, new, true, &mut proof);
        proof
    }

    fn subproof(&self, m: u64, from: u64, to: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = to - from;
        if m == n {
            if !whole {
                out.push(self.subtree(from, to));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, from, from + k, whole, out);
            out.push(self.subtree(from + k, to));
        } else {
            self.subproof(m - k, from + k, to, false, out);
            out.push(self.subtree(from, from + k));
        }
    }
}

impl Tree {
    /// The proof that the leaves at `indices` (sorted, each below `size`)
    /// are in the tree of `size` leaves, all at once: the hashes of the
    /// largest subtrees of RFC 6962's recursion that hold none of them,
    /// left to right. With the leaves themselves it gives back the root
    /// ([`batch_root`]); for one leaf it is its inclusion proof's hashes
    /// in another order.
    pub fn batch_proof(&self, indices: &[u64], size: u64) -> Vec<Hash> {
        assert!(size <= self.len(), "no tree of {size}");
        let mut out = Vec::new();
        self.gaps(indices, 0, size, &mut out);
        out
    }

    fn gaps(&self, indices: &[u64], from: u64, to: u64, out: &mut Vec<Hash>) {
        if !holds(indices, from, to) {
            out.push(self.subtree(from, to));
            return;
        }
        if to - from == 1 {
            return;
        }
        let k = split(to - from);
        self.gaps(indices, from, from + k, out);
        self.gaps(indices, from + k, to, out);
    }
}

/// Whether a sorted `indices` holds one in `[from, to)`.
fn holds(indices: &[u64], from: u64, to: u64) -> bool {
    let i = indices.partition_point(|x| *x < from);
    indices.get(i).is_some_and(|x| *x < to)
}

/// The root of the tree of `size` leaves from some of its leaves, as
/// (index, leaf hash) sorted by index, and their [`Tree::batch_proof`]
/// (with none, the proof is the root itself); `None` if the proof does
/// not fit them (too short, too long, an index
/// out of the tree or out of order).
pub fn batch_root(size: u64, leaves: &[(u64, Hash)], proof: &[Hash]) -> Option<Hash> {
    if size == 0
        || leaves.windows(2).any(|w| w[0].0 >= w[1].0)
        || leaves.last().is_some_and(|l| l.0 >= size)
    {
        return None;
    }
    let indices: Vec<u64> = leaves.iter().map(|l| l.0).collect();
    let mut proof = proof.iter();
    let mut next_leaf = leaves.iter();
    let root = rebuild(&indices, 0, size, &mut next_leaf, &mut proof)?;
    proof.next().is_none().then_some(root)
}

fn rebuild<'a>(
    indices: &[u64],
    from: u64,
    to: u64,
    leaves: &mut impl Iterator<Item = &'a (u64, Hash)>,
    proof: &mut impl Iterator<Item = &'a Hash>,
) -> Option<Hash> {
    if !holds(indices, from, to) {
        return proof.next().copied();
    }
    if to - from == 1 {
        return leaves.next().map(|l| l.1);
    }
    let k = split(to - from);
    let left = rebuild(indices, from, from + k, leaves, proof)?;
    let right = rebuild(indices, from + k, to, leaves, proof)?;
    Some(node_hash(&left, &right))
}

/// The right edge of a growing tree: the roots of its perfect subtrees,
/// largest first. Appending is O(log n); so is the root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash); heights strictly decrease.
    peaks: Vec<(u32, Hash)>,
}

impl Frontier {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf by its hash ([`leaf_hash`] of its data).
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (0u32, leaf);
        while let Some(&(height, left)) = self.peaks.last() {
            if height != node.0 {
                break;
            }
            self.peaks.pop();
            node = (height + 1, node_hash(&left, &node.1));
        }
        self.peaks.push(node);
        self.size += 1;
    }

    /// The root of the tree so far.
    pub fn root(&self) -> Hash {
        let mut peaks = self.peaks.iter().rev();
        let Some(&(_, mut acc)) = peaks.next() else {
            return empty_root();
        };
        for (_, left) in peaks {
            acc = node_hash(left, &acc);
        }
        acc
    }
}

/// Whether `proof` shows the leaf with hash `leaf` at `index` in the tree
/// of `size` leaves with root `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
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
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Whether `proof` shows the tree of `old` leaves with root `old_root` to
/// be a prefix of the tree of `new` leaves with root `new_root` (RFC 9162
/// §2.1.4.2; `0 < old <= new`).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && fr == *old_root && sr == *new_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 6962's MTH, recursively, straight from its definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    fn hex(h: &Hash) -> String {
        tandem_core::journal::hex(h)
    }

    /// The eight leaves of the Certificate Transparency test tree.
    fn ct_leaves() -> Vec<Hash> {
        let data: [&[u8]; 8] = [
            b"",
            b"\x00",
            b"\x10",
            b"\x20\x21",
            b"\x30\x31",
            b"\x40\x41\x42\x43",
            b"\x50\x51\x52\x53\x54\x55\x56\x57",
            b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
        ];
        data.iter().map(|d| leaf_hash(d)).collect()
    }

    #[test]
    fn the_certificate_transparency_test_tree_has_its_published_roots() {
        let tree = Tree::new(ct_leaves());
        let want = [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
            "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
            "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
            "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
        ];
        for (size, root) in (1..=8).zip(want) {
            assert_eq!(hex(&tree.root(size)), root, "size {size}");
        }
        assert_eq!(
            hex(&Tree::default().root(0)),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn proofs_of_the_test_tree_check_and_fail_when_anything_is_off() {
        let leaves = ct_leaves();
        let tree = Tree::new(leaves.clone());
        for size in 1..=8u64 {
            let root = tree.root(size);
            for i in 0..size {
                let proof = tree.inclusion_proof(i, size);
                assert!(verify_inclusion(
                    i,
                    size,
                    &leaves[i as usize],
                    &proof,
                    &root
                ));
                // Another leaf, another index: refused. (The size is the
                // checkpoint's, signed; RFC 9162's verifier alone cannot always
                // tell a proof in a tree of 3 from one in a tree of 4.)
                let other = leaves[((i + 1) % 8) as usize];
                if other != leaves[i as usize] {
                    assert!(!verify_inclusion(i, size, &other, &proof, &root));
                }
                if i ^ 1 < size {
                    assert!(
                        !verify_inclusion(i ^ 1, size, &leaves[i as usize], &proof, &root),
                        "leaf {i} of {size} as if at {}",
                        i ^ 1
                    );
                }
            }
            for old in 1..=size {
                let proof = tree.consistency_proof(old, size);
                assert!(
                    verify_consistency(old, size, &tree.root(old), &root, &proof),
                    "{old}→{size}"
                );
                if old < size {
                    let mut bad = proof.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_consistency(old, size, &tree.root(old), &root, &bad));
                    assert!(!verify_consistency(old, size, &root, &root, &proof));
                }
            }
        }
        // RFC 6962's own example (section 2.1.3): the proof of d0 in the
        // tree of 7 is [b, h, l] = [leaf 1, node(2,3), node(4..7)].
        assert_eq!(
            tree.inclusion_proof(0, 7),
            vec![leaves[1], mth(&leaves[2..4]), mth(&leaves[4..7])]
        );
        // And the consistency of 3 with 7 is [c, d, g, l].
        assert_eq!(
            tree.consistency_proof(3, 7),
            vec![leaves[2], leaves[3], mth(&leaves[0..2]), mth(&leaves[4..7])]
        );
    }

    #[test]
    fn a_batch_proof_gives_back_the_root_and_nothing_else_does() {
        let leaves: Vec<Hash> = (0..37u64).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let tree = Tree::new(leaves.clone());
        for size in [1u64, 2, 5, 16, 37] {
            let root = tree.root(size);
            for picked in [
                vec![0u64],
                vec![size - 1],
                (0..size).step_by(3).collect::<Vec<_>>(),
                (0..size).collect(),
            ] {
                let proof = tree.batch_proof(&picked, size);
                let with: Vec<(u64, Hash)> =
                    picked.iter().map(|i| (*i, leaves[*i as usize])).collect();
                assert_eq!(
                    batch_root(size, &with, &proof),
                    Some(root),
                    "{size} {picked:?}"
                );
                // An altered leaf, a missing hash, one too many: not the root.
                let mut altered = with.clone();
                altered[0].1[0] ^= 1;
                assert_ne!(batch_root(size, &altered, &proof), Some(root));
                if !proof.is_empty() {
                    assert_eq!(batch_root(size, &with, &proof[1..]), None);
                }
                let mut longer = proof.clone();
                longer.push(root);
                assert_eq!(batch_root(size, &with, &longer), None);
                // A leaf moved to another index: not the root.
                if size > 1 && picked.len() == 1 {
                    let moved = vec![((picked[0] + 1) % size, with[0].1)];
                    let p = tree.batch_proof(&[moved[0].0], size);
                    assert_ne!(batch_root(size, &moved, &p), Some(root));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn levels_frontier_and_the_recursive_definition_agree(n in 1usize..200, seed: u64) {
            let leaves: Vec<Hash> = (0..n as u64).map(|i| leaf_hash(&(seed ^ i).to_be_bytes())).collect();
            let tree = Tree::new(leaves.clone());
            let mut frontier = Frontier::default();
            for (i, leaf) in leaves.iter().enumerate() {
                frontier.push(*leaf);
                prop_assert_eq!(frontier.size(), i as u64 + 1);
                prop_assert_eq!(frontier.root(), mth(&leaves[..=i]));
                prop_assert_eq!(tree.root(i as u64 + 1), mth(&leaves[..=i]));
            }
            let size = n as u64;
            let index = seed % size;
            let proof = tree.inclusion_proof(index, size);
            prop_assert!(verify_inclusion(index, size, &leaves[index as usize], &proof, &tree.root(size)));
            let old = 1 + seed % size;
            let proof = tree.consistency_proof(old, size);
            prop_assert!(verify_consistency(old, size, &tree.root(old), &tree.root(size), &proof));
            // A tree that differs in any leaf before `old` is no extension.
            let mut other = leaves;
            other[(seed % old) as usize][0] ^= 0x80;
            let forged = Tree::new(other);
            prop_assert!(!verify_consistency(old, size, &tree.root(old), &forged.root(size), &forged.consistency_proof(old, size)));
        }
    }
}
