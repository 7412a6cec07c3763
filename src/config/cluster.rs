//! `[cluster]`: the wharf nodes of one datacenter that act as one mirror, each digest owned by
//! one of them.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name: one of the peers listed.
    pub node: String,
    /// The secret every node presents to its peers (its first line), shared by all of them.
    pub peer_token_file: PathBuf,
    /// CAs to trust besides the system's for peers reached over https.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How often each peer's `/healthz` is asked.
    #[serde(default = "default_probe_interval", with = "humantime_serde")]
    pub probe_interval: Duration,
    /// How long a peer may take to answer a probe, or to accept a connection, before it is
    /// passed over: a slow owner costs its askers no more than this.
    #[serde(default = "default_probe_timeout", with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// Every node of the cluster, this one included, listed the same way on each node.
    #[serde(rename = "peer")]
    pub peers: Vec<PeerConfig>,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_probe_timeout() -> Duration {
    Duration::from_secs(1)
}

impl ClusterConfig {
    /// A cluster of `peers` as `node`, with the default probe settings.
    pub fn new(node: &str, peer_token_file: PathBuf, peers: Vec<PeerConfig>) -> ClusterConfig {
        ClusterConfig {
            node: node.to_owned(),
            peer_token_file,
            ca_file: None,
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            peers,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The node's name: what the ring hashes, so renaming a node moves its digests.
    pub name: String,
    /// Its pull API, as the other nodes reach it.
    pub url: Url,
}

#[cfg(test)]
impl ClusterConfig {
    /// A cluster of the nodes `names` (at 10.0.0.1, 10.0.0.2, ...) as `node`, for unit tests.
    pub fn of_names(node: &str, names: &[&str]) -> ClusterConfig {
        let peers = names
            .iter()
            .enumerate()
            .map(|(i, name)| PeerConfig {
                name: (*name).into(),
                url: format!("http://10.0.0.{}:5000", i + 1).parse().unwrap(),
            })
            .collect();
        ClusterConfig::new(node, "/dev/null".into(), peers)
    }
}
