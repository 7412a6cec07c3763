//! The rendezvous (highest random weight) ring: which node owns a digest, and who takes over
//! when it is down. Each node scores every digest with a hash of its own name and the digest;
//! the highest score owns it. Adding or removing a node moves only the digests that node wins
//! or held, and every node computes the same order from the same list, with no coordination.

use sha2::{Digest as _, Sha256};

use crate::oci::Digest;

/// A node's score for `digest`: the first 8 bytes of SHA-256 over the node's name, a zero byte
/// and the digest's text. Every node of a cluster must compute the same scores, so this is
/// fixed (a test pins it): a change would move digests between owners on a mixed-version
/// cluster.
pub fn score(node: &str, digest: &Digest) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(node.as_bytes());
    hasher.update([0]);
    hasher.update(digest.to_string().as_bytes());
    let hash = hasher.finalize();
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// The indexes of `nodes` in the order they own `digest`: the owner first, then each node that
/// takes over when all those before it are down.
pub fn order<'a>(nodes: impl IntoIterator<Item = &'a str>, digest: &Digest) -> Vec<usize> {
    let mut scored: Vec<(u64, &str, usize)> = nodes
        .into_iter()
        .enumerate()
        .map(|(i, name)| (score(name, digest), name, i))
        .collect();
    // Ties (a 1-in-2^64 event) go to the smaller name, the same on every node.
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    scored.into_iter().map(|(_, _, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u64) -> Digest {
        format!("sha256:{:x}", Sha256::digest(n.to_be_bytes()))
            .parse()
            .unwrap()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node-{i}")).collect()
    }

    fn owner(nodes: &[String], d: &Digest) -> String {
        nodes[order(nodes.iter().map(String::as_str), d)[0]].clone()
    }

    #[test]
    fn scores_are_pinned_across_versions() {
        let d: Digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
            .parse()
            .unwrap();
        // Computed apart from wharf: sha256(b"a\0sha256:000…")[..8], and for "b" and "c".
        assert_eq!(score("a", &d), 0xccb4_b13c_5dba_b363);
        assert_eq!(score("b", &d), 0xa5e8_4e74_aa26_2d3b);
        assert_eq!(score("c", &d), 0x9aa9_b13f_d361_2947);
        assert_eq!(order(["c", "a", "b"], &d), vec![1, 2, 0]);
    }

    #[test]
    fn the_order_does_not_depend_on_how_the_nodes_are_listed() {
        let nodes = names(7);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for n in 0..200 {
            let d = digest(n);
            assert_eq!(owner(&nodes, &d), owner(&reversed, &d));
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_digests_and_adding_one_only_to_it() {
        let all = names(8);
        let without: Vec<String> = all.iter().filter(|n| *n != "node-3").cloned().collect();
        for n in 0..2000 {
            let d = digest(n);
            let (before, after) = (owner(&all, &d), owner(&without, &d));
            if before != "node-3" {
                assert_eq!(before, after, "a digest node-3 did not own moved");
            } else {
                // The next node in the full order takes over.
                let full = order(all.iter().map(String::as_str), &d);
                assert_eq!(after, all[full[1]]);
            }
        }
    }

    #[test]
    fn ten_thousand_digests_spread_evenly_over_4_to_64_nodes() {
        for n in [4, 8, 16, 32, 64] {
            let nodes = names(n);
            let mut owned = vec![0u32; n];
            for k in 0..10_000 {
                owned[order(nodes.iter().map(String::as_str), &digest(k))[0]] += 1;
            }
            let mean = 10_000.0 / n as f64;
            let max = *owned.iter().max().unwrap() as f64;
            assert!(
                max / mean < 1.3,
                "{n} nodes: the busiest owns {max}, the mean is {mean}"
            );
        }
    }
}
