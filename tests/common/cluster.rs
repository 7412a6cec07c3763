//! Wharf nodes of one cluster on loopback, for the cluster tests: started together, each
//! reached by its peers through a [`Link`] the test can cut, and what the tests ask of them.

use futures_util::future::join_all;
use tokio::net::TcpListener;
use wharf::config::{ClusterConfig, PeerConfig};

use super::link::Link;
use super::{config, random_bytes, FakeRegistry, Wharf};

/// The peer token every node of a test cluster shares.
pub const TOKEN: &str = "peer-token-0123456789abcdef";
/// The nodes of a test cluster.
pub const NAMES: [&str; 3] = ["a", "b", "c"];

/// Nodes of one cluster on loopback, each reached by its peers through a link the test can cut.
pub struct Cluster {
    pub nodes: Vec<Wharf>,
    pub links: Vec<Link>,
    /// Holds the peer token.
    _dir: tempfile::TempDir,
}

/// Nodes named `names`, each in front of `upstream`.
pub async fn start_cluster(upstream: &FakeRegistry, names: &[&str]) -> Cluster {
    start_cluster_with(upstream, names, |_| {}).await
}

/// [`start_cluster`], each node's configuration changed by `configure` first.
pub async fn start_cluster_with(
    upstream: &FakeRegistry,
    names: &[&str],
    configure: impl Fn(&mut wharf::config::Config),
) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let peer_token_file = dir.path().join("peer-token");
    std::fs::write(&peer_token_file, format!("{TOKEN}\n")).unwrap();
    let mut listeners = Vec::new();
    let mut link_listeners = Vec::new();
    for _ in names {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        link_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let peers: Vec<PeerConfig> = names
        .iter()
        .zip(&link_listeners)
        .map(|(name, link)| PeerConfig {
            name: (*name).into(),
            url: format!("http://{}", link.local_addr().unwrap())
                .parse()
                .unwrap(),
        })
        .collect();
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    for ((name, listener), link) in names.iter().zip(listeners).zip(link_listeners) {
        links.push(Link::start(link, listener.local_addr().unwrap()));
        let cache = tempfile::tempdir().unwrap();
        let mut config = config(upstream, cache.path());
        config.cluster = Some(ClusterConfig::new(
            name,
            peer_token_file.clone(),
            peers.clone(),
        ));
        configure(&mut config);
        nodes.push(Wharf::start_on(listener, config, cache, reqwest::Client::new()).await);
    }
    Cluster {
        nodes,
        links,
        _dir: dir,
    }
}

/// The nodes of `names` in the order they own `digest`.
pub fn owners(names: &[&str], digest: &str) -> Vec<usize> {
    wharf::cluster::ring::order(names.iter().copied(), &digest.parse().unwrap())
}

/// Asks every node for every blob at once; each answer must be the blob.
pub async fn pull_everywhere(nodes: &[&Wharf], blobs: &[(String, bytes::Bytes)]) {
    let pulls = nodes.iter().flat_map(|node| {
        blobs.iter().map(move |(digest, bytes)| async move {
            let r = node.get(&format!("/v2/library/x/blobs/{digest}")).await;
            assert_eq!(r.status(), 200, "{digest} from {}", node.addr);
            assert_eq!(
                r.bytes().await.unwrap(),
                *bytes,
                "{digest} from {}",
                node.addr
            );
        })
    });
    join_all(pulls).await;
}

/// A blob owned by the first of [`NAMES`], of `len` bytes.
pub fn owned_by_first(len: usize, seed: u64) -> (String, bytes::Bytes) {
    (seed..)
        .map(|seed| {
            let bytes = random_bytes(len, seed);
            (crate::common::sha256(&bytes), bytes)
        })
        .find(|(digest, _)| owners(&NAMES, digest)[0] == 0)
        .unwrap()
}
