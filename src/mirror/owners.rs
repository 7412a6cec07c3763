//! The other nodes of the cluster as sources. What this node lacks is asked of the nodes that
//! rank above it for that digest (its owner first), through their pull API, and of the upstream
//! only when none of them answers: the datacenter fetches each digest from the upstream once,
//! on its owner. A request from a peer is never passed on, so there are no loops. Peers are
//! probed in the background; a fetch that fails for a reason of the peer's own marks it down
//! at once, and the next probe that it answers brings it back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;

use crate::cluster::{Members, PEER_HEADER};
use crate::config::{ClusterConfig, UpstreamConfig};
use crate::metrics::Metrics;
use crate::oci::Digest;
use crate::upstream::{Relay, SetupError, Upstream, UpstreamError};

/// Who asked this node: a client, or a peer passing on its client's request (which must be
/// answered from here: the cache, or the upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Client,
    Peer,
}

/// A peer to ask before the upstream, and the upstream as reached through it.
pub(super) struct Owner {
    node: usize,
    pub(super) via: Arc<Upstream>,
}

/// The cluster as a place to fetch from.
pub struct Owners {
    members: Members,
    /// By node (empty for this node): each upstream, by name, as reached through that node.
    through: Vec<HashMap<String, Arc<Upstream>>>,
    config: ClusterConfig,
    metrics: Metrics,
}

impl Owners {
    /// Every upstream as reached through each peer, presenting `token` (the peer token).
    pub fn new(
        config: &ClusterConfig,
        token: &str,
        upstreams: &[UpstreamConfig],
        metrics: &Metrics,
    ) -> Result<Owners, SetupError> {
        let members = Members::new(config, metrics);
        let mut through = vec![HashMap::new(); config.peers.len()];
        for (node, name) in members.peers() {
            let relay = Relay {
                peer: name.to_owned(),
                url: config.peers[node].url.clone(),
                headers: vec![
                    ("authorization", format!("Bearer {token}")),
                    (PEER_HEADER, members.this_node().to_owned()),
                ],
                ca_file: config.ca_file.clone(),
                connect_timeout: config.probe_timeout,
            };
            for upstream in upstreams {
                let via = Upstream::through(upstream, &relay, metrics.clone())?;
                through[node].insert(upstream.name.clone(), Arc::new(via));
            }
        }
        Ok(Owners {
            members,
            through,
            config: config.clone(),
            metrics: metrics.clone(),
        })
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The peers to ask for `digest` of `upstream` before the upstream itself, best first.
    pub(super) fn sources(&self, upstream: &Upstream, digest: &Digest) -> Vec<Owner> {
        self.members
            .ahead_of_me(digest)
            .into_iter()
            .filter_map(|node| {
                let via = self.through[node].get(upstream.name())?.clone();
                Some(Owner { node, via })
            })
            .collect()
    }

    /// The other nodes in the order they rank for `digest`, each with `upstream` as reached
    /// through it, up to the `n`th that is up; with `down_too`, those thought down before it
    /// as well (for a message that is cheap to try and would be lost on a node only thought
    /// down, say one that just started).
    pub(super) fn holders(
        &self,
        upstream: &str,
        digest: &Digest,
        n: usize,
        down_too: bool,
    ) -> Vec<Owner> {
        let mut holders = Vec::new();
        let mut up_ones = 0;
        for (node, up) in self.members.peers_in_order(digest) {
            if up_ones == n {
                break;
            }
            if !up && !down_too {
                continue;
            }
            up_ones += usize::from(up);
            if let Some(via) = self.through[node].get(upstream) {
                holders.push(Owner {
                    node,
                    via: via.clone(),
                });
            }
        }
        holders
    }

    /// How long a small request to a peer may take: its probe's time.
    pub(super) fn peer_timeout(&self) -> std::time::Duration {
        self.config.probe_timeout
    }

    /// Asks every peer's `/healthz` each `probe_interval`, all at once, for as long as it runs.
    pub async fn probe_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probes = self.through.iter().enumerate().filter_map(|(node, via)| {
                let via = via.values().next()?.clone();
                let within = self.config.probe_timeout;
                Some(async move { (node, via.peer_is_healthy(within).await) })
            });
            for (node, up) in join_all(probes).await {
                self.members.report(node, up);
            }
        }
    }

    /// `source` failed with `e`: counted, marked down if the failure is its own (down, or
    /// failing on its side; a refusal, such as a token that differs, is the operator's to fix
    /// and is logged, but the peer still answers), and logged.
    pub(super) fn pass_over(&self, source: &Owner, e: &UpstreamError, to_peer: bool) {
        self.count(source.node, "failed");
        if e.is_transient() {
            self.members.report(source.node, false);
        }
        let to = if to_peer { "peer" } else { "upstream" };
        let reason = match e {
            UpstreamError::Unreachable { .. } => "unreachable",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Unauthorized { .. } | UpstreamError::Denied { .. } => "refused",
            UpstreamError::TooManyRequests { .. } => "throttled",
            UpstreamError::Status { .. } => "status",
            UpstreamError::Invalid { .. } | UpstreamError::NotFound => "invalid",
        };
        self.metrics
            .peers
            .fallbacks
            .with_label_values(&[to, reason])
            .inc();
        tracing::warn!(peer = self.members.name(source.node), error = %e, next = to, "an owner peer did not answer; passing it over");
    }

    fn count(&self, node: usize, result: &str) {
        self.metrics
            .peers
            .fetches
            .with_label_values(&[self.members.name(node), result])
            .inc();
    }
}

/// The peers to ask for `digest` before the upstream, for a request from `origin`: none
/// outside a cluster, for a peer's request, or where this node owns the digest.
pub(super) fn owner_sources(
    owners: Option<&Owners>,
    origin: Origin,
    upstream: &Upstream,
    digest: &Digest,
) -> Vec<Owner> {
    match (owners, origin) {
        (Some(owners), Origin::Client) => owners.sources(upstream, digest),
        _ => Vec::new(),
    }
}

/// What the first source to answer said, and which it was.
pub(super) struct Answer<T> {
    /// The upstream as reached through that source.
    pub(super) via: Arc<Upstream>,
    /// Which of the sources it was: `None` when the upstream itself answered.
    pub(super) peer: Option<usize>,
    pub(super) answer: T,
}

/// `ask` of the first of `sources` that answers, else of `upstream`. A peer's "not found" is
/// the upstream's own answer (the peer asked it), so it is not asked again; any other failure
/// passes the peer over.
pub(super) async fn ask_owner_first<T, F, Fut>(
    owners: Option<&Owners>,
    sources: &[Owner],
    upstream: &Arc<Upstream>,
    ask: F,
) -> Result<Answer<T>, UpstreamError>
where
    F: Fn(Arc<Upstream>) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    if let Some(owners) = owners {
        for (i, source) in sources.iter().enumerate() {
            match ask(source.via.clone()).await {
                Ok(answer) => {
                    owners.count(source.node, "ok");
                    return Ok(Answer {
                        via: source.via.clone(),
                        peer: Some(i),
                        answer,
                    });
                }
                Err(UpstreamError::NotFound) => {
                    owners.count(source.node, "not_found");
                    return Err(UpstreamError::NotFound);
                }
                Err(e) => owners.pass_over(source, &e, i + 1 < sources.len()),
            }
        }
    }
    let answer = ask(upstream.clone()).await?;
    Ok(Answer {
        via: upstream.clone(),
        peer: None,
        answer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_told_past_nodes_thought_down_and_asked_of_nodes_up() {
        let config = ClusterConfig::of_names("c", &["a", "b", "c"]);
        let upstreams = [UpstreamConfig::docker_hub()];
        let owners = Owners::new(&config, "token", &upstreams, &Metrics::new()).unwrap();
        // The pinned scores (ring.rs) of sha256:000…: a > b > c.
        let digest: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        let nodes = |down_too| -> Vec<usize> {
            let holders = owners.holders("docker.io", &digest, 1, down_too);
            holders.iter().map(|h| h.node).collect()
        };
        assert_eq!(nodes(false), vec![0]);
        owners.members.report(0, false);
        assert_eq!(nodes(false), vec![1], "the first node up");
        assert_eq!(nodes(true), vec![0, 1], "and a node thought down before it");
        assert!(owners.holders("ghcr.io", &digest, 1, true).is_empty());
    }
}
