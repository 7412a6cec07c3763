//! The metrics of a node's peers: what it asked them, what came back, and whether they are up.
//! Peers are labelled by their configured names.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::register::counter_vec;

pub struct PeerCollectors {
    pub requests: IntCounterVec,
    pub bytes: IntCounterVec,
    pub fetches: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub up: IntGaugeVec,
}

impl PeerCollectors {
    pub(super) fn new(registry: &Registry) -> PeerCollectors {
        let up = IntGaugeVec::new(
            Opts::new(
                "wharf_peer_up",
                "1 while a peer answers its probes and fetches, 0 while it is passed over",
            ),
            &["peer"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(up.clone()))
            .expect("unique metric");
        PeerCollectors {
            requests: counter_vec(
                registry,
                "wharf_peer_requests_total",
                "Requests sent to peers, by peer, kind and status (or error)",
                &["peer", "kind", "status"],
            ),
            bytes: counter_vec(
                registry,
                "wharf_peer_bytes_total",
                "Body bytes received from peers",
                &["peer"],
            ),
            fetches: counter_vec(
                registry,
                "wharf_peer_fetches_total",
                "Blobs and manifests asked of their owner peer, by peer and result \
                 (ok|not_found|failed)",
                &["peer", "result"],
            ),
            fallbacks: counter_vec(
                registry,
                "wharf_peer_fallbacks_total",
                "Fetches that passed over an owner peer for the next one (peer) or the upstream \
                 (upstream), by reason (unreachable|timeout|refused|throttled|status|invalid)",
                &["to", "reason"],
            ),
            up,
        }
    }
}
