//! The other nodes as a node's server sees them: a request that names a peer is that peer's only
//! with the shared peer token and from one of the peer's addresses.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::ClusterConfig;
use crate::secret::{self, SecretError};

/// The header a node's requests to its peers carry, naming the node that sends them.
pub const PEER_HEADER: &str = "x-wharf-peer";

/// The last path segment but one of the peers' record of which index lists a manifest
/// (`/v2/<repo>/_listed_by/<digest>`): no repository name has a component that starts with
/// `_`, so it cannot be mistaken for one.
pub const LISTED_BY: &str = "_listed_by";

/// How long start-up waits for a peer's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Token(#[from] SecretError),
}

/// The peer token: the first line of its file, trimmed.
pub fn read_token(path: &Path) -> Result<String, SetupError> {
    Ok(secret::read("cluster.peer_token_file", path)?)
}

/// The peers that may send requests as peers, and the credential they must show.
pub struct Peers {
    /// `Bearer <token>`, as a peer's `Authorization` header carries it.
    expected: Box<[u8]>,
    nodes: Vec<Peer>,
}

struct Peer {
    name: Arc<str>,
    /// Where its requests come from: its URL's host, resolved at start-up.
    addresses: Vec<IpAddr>,
}

impl Peers {
    /// Reads the peer token and resolves every other node's address. A name that does not
    /// resolve is logged; that peer's requests are refused until a restart.
    pub async fn load(config: &ClusterConfig) -> Result<Peers, SetupError> {
        let token = read_token(&config.peer_token_file)?;
        let mut nodes = Vec::new();
        for peer in config.peers.iter().filter(|p| p.name != config.node) {
            let host = peer
                .url
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']']);
            let port = peer.url.port_or_known_default().unwrap_or(80);
            let resolved =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
            let addresses: Vec<IpAddr> = match resolved {
                Ok(Ok(found)) => found.map(|a| a.ip().to_canonical()).collect(),
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer.name, host, error = %e, "a peer's address does not resolve; its requests are refused");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(peer = %peer.name, host, "a peer's address did not resolve in time; its requests are refused");
                    Vec::new()
                }
            };
            nodes.push(Peer {
                name: peer.name.as_str().into(),
                addresses,
            });
        }
        Ok(Peers {
            expected: format!("Bearer {token}").into_bytes().into(),
            nodes,
        })
    }

    /// The peer a request naming `name` comes from, if it carries the peer token and comes
    /// from one of that peer's addresses; `None` refuses it.
    pub fn admit(
        &self,
        name: &[u8],
        authorization: Option<&[u8]>,
        from: IpAddr,
    ) -> Option<Arc<str>> {
        let credential = authorization.unwrap_or_default();
        // Checked whatever the name, so that a refusal takes as long for every reason.
        let token_ok = bool::from(credential.ct_eq(&self.expected));
        let peer = self.nodes.iter().find(|p| p.name.as_bytes() == name)?;
        let from = from.to_canonical();
        (token_ok && peer.addresses.contains(&from)).then(|| peer.name.clone())
    }
}
