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
