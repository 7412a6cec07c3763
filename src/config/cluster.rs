//! `[cluster]`: the wharf nodes of one datacenter that act as one mirror, each digest owned by
//! one of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: one of the peers listed.
    pub node: String,
    /// The secret every node presents to its peers (its first line), shared by all of them.
    pub peer_token_file: PathBuf,
    /// Every node of the cluster, this one included, listed the same way on each node.
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The node's name: what the ring hashes, so renaming a node moves its digests.
    pub name: String,
    /// Its pull API, as the other nodes reach it.
    pub url: Url,
}

/// The longest node name.
const MAX_NAME: usize = 63;

impl ClusterConfig {
    pub(super) fn validate(&self) -> Result<(), String> {
        if self.peers.is_empty() {
            return Err("cluster: at least one [[cluster.peer]] is required".into());
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let named = |what: &str| format!("cluster.peer[{i}] ({:?}): {what}", peer.name);
            if !is_node_name(&peer.name) {
                return Err(named(&format!(
                    "a name is 1 to {MAX_NAME} of a-z, 0-9, '.', '_' and '-'"
                )));
            }
            if self.peers[..i].iter().any(|p| p.name == peer.name) {
                return Err(named("the name is listed twice"));
            }
            if self.peers[..i].iter().any(|p| same_base(&p.url, &peer.url)) {
                return Err(named("the url is listed twice"));
            }
            let url = &peer.url;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(named("the url must be http:// or https:// with a host"));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(named("the url must not hold credentials"));
            }
            if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
                return Err(named("the url must be the node's base URL, without a path"));
            }
        }
        if !self.peers.iter().any(|p| p.name == self.node) {
            return Err(format!(
                "cluster.node {:?} is not one of the [[cluster.peer]] names",
                self.node
            ));
        }
        Ok(())
    }
}

fn is_node_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn same_base(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}
