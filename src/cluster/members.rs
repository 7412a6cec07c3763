//! Who the nodes are and which of them are up, as this node sees them: what decides where a
//! digest this node lacks is asked for. Probes and failed fetches report here; nothing here
//! does IO.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus::IntGauge;

use super::ring;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::oci::Digest;

/// Every node of the cluster, this one included, in configured order.
pub struct Members {
    me: usize,
    nodes: Vec<Member>,
}

struct Member {
    name: Arc<str>,
    /// Peers start up (a fetch that fails marks one down at once, so an optimistic start
    /// costs one round trip); this node is always up to itself.
    up: AtomicBool,
    /// `wharf_peer_up` of this node; `None` for this node.
    gauge: Option<IntGauge>,
}

/// One node as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberState {
    pub name: Arc<str>,
    pub up: bool,
    pub this_node: bool,
}

impl Members {
    pub fn new(config: &ClusterConfig, metrics: &Metrics) -> Members {
        let me = config
            .peers
            .iter()
            .position(|p| p.name == config.node)
            .expect("validated: the node is among the peers");
        let nodes = config
            .peers
            .iter()
            .enumerate()
            .map(|(i, peer)| {
                let gauge = (i != me).then(|| {
                    let gauge = metrics.peers.up.with_label_values(&[&peer.name]);
                    gauge.set(1);
                    gauge
                });
                Member {
                    name: peer.name.as_str().into(),
                    up: AtomicBool::new(true),
                    gauge,
                }
            })
            .collect();
        Members { me, nodes }
    }

    /// The peers to ask for `digest` before the upstream, best first: those that are up and
    /// rank above this node for it. Empty when this node owns it, so every node sends a digest
    /// to the same place, and the node it lands on fetches it from the upstream.
    pub fn ahead_of_me(&self, digest: &Digest) -> Vec<usize> {
        ring::order(self.nodes.iter().map(|m| &*m.name), digest)
            .into_iter()
            .take_while(|&i| i != self.me)
            .filter(|&i| self.nodes[i].up.load(Ordering::Relaxed))
            .collect()
    }

    /// The other nodes in the order they rank for `digest`, and whether each is up: where a
    /// record about it is kept beside the node that made it, and looked for.
    pub fn peers_in_order(&self, digest: &Digest) -> Vec<(usize, bool)> {
        ring::order(self.nodes.iter().map(|m| &*m.name), digest)
            .into_iter()
            .filter(|&i| i != self.me)
            .map(|i| (i, self.nodes[i].up.load(Ordering::Relaxed)))
            .collect()
    }

    /// Indexes and names of the other nodes.
    pub fn peers(&self) -> impl Iterator<Item = (usize, &str)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(move |(i, _)| *i != self.me)
            .map(|(i, m)| (i, &*m.name))
    }

    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    pub fn this_node(&self) -> &str {
        self.name(self.me)
    }

    /// Records what a probe or a fetch learnt of `node`; a change is logged.
    pub fn report(&self, node: usize, up: bool) {
        if node == self.me {
            return;
        }
        let member = &self.nodes[node];
        if member.up.swap(up, Ordering::Relaxed) != up {
            if up {
                tracing::info!(peer = %member.name, "peer is up; it owns its digests again");
            } else {
                tracing::warn!(peer = %member.name, "peer is down; its digests go to the next node");
            }
        }
        if let Some(gauge) = &member.gauge {
            gauge.set(i64::from(up));
        }
    }

    /// Every node and whether it is up, in configured order.
    pub fn states(&self) -> Vec<MemberState> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, m)| MemberState {
                name: m.name.clone(),
                up: m.up.load(Ordering::Relaxed),
                this_node: i == self.me,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(node: &str, names: &[&str]) -> Members {
        let config = ClusterConfig::of_names(node, names);
        Members::new(&config, &Metrics::new())
    }

    #[test]
    fn a_digest_goes_to_its_owner_then_the_next_up_and_the_last_asks_the_upstream() {
        let names = ["a", "b", "c"];
        // The pinned scores (ring.rs) of sha256:000…: a > b > c.
        let digest: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let a = members("a", &names);
        let b = members("b", &names);
        let c = members("c", &names);
        assert!(
            a.ahead_of_me(&digest).is_empty(),
            "the owner asks the upstream"
        );
        assert_eq!(b.ahead_of_me(&digest), vec![0]);
        assert_eq!(c.ahead_of_me(&digest), vec![0, 1]);
        c.report(0, false);
        b.report(0, false);
        assert_eq!(c.ahead_of_me(&digest), vec![1], "the next node takes over");
        assert!(b.ahead_of_me(&digest).is_empty());
        c.report(0, true);
        assert_eq!(c.ahead_of_me(&digest), vec![0, 1], "and gives back");
        assert_eq!(c.peers_in_order(&digest), vec![(0, true), (1, true)]);
        assert_eq!(
            a.peers_in_order(&digest),
            vec![(1, true), (2, true)],
            "every other node, in rank"
        );
        c.report(2, false);
        assert!(c.states()[2].up, "a node is never down to itself");
        a.report(2, false);
        assert_eq!(a.peers_in_order(&digest), vec![(1, true), (2, false)]);
    }
}
