//! The other nodes as a node's server sees them: a request that names a peer is that peer's only
//! with the shared peer token and from one of the peer's addresses.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;

use crate::config::ClusterConfig;

/// The header a node's requests to its peers carry, naming the node that sends them.
pub const PEER_HEADER: &str = "x-wharf-peer";

/// The last path segment but one of the peers' record of which index lists a manifest
/// (`/v2/<repo>/_listed_by/<digest>`): no repository name has a component that starts with
/// `_`, so it cannot be mistaken for one.
pub const LISTED_BY: &str = "_listed_by";

/// The shortest peer token: it stands for a whole node.
const MIN_TOKEN: usize = 16;

/// How long start-up waits for a peer's name to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read cluster.peer_token_file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster.peer_token_file {path}: the token must be at least {MIN_TOKEN} characters on its first line")]
    ShortToken { path: PathBuf },
}

/// The peer token: the first line of its file, trimmed.
pub fn read_token(path: &Path) -> Result<String, SetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| SetupError::Token {
        path: path.to_owned(),
        source,
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN {
        return Err(SetupError::ShortToken {
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_the_first_line_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  0123456789abcdef-peer  \nignored\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "0123456789abcdef-peer");
        std::fs::write(&path, "short\n").unwrap();
        let err = read_token(&path).unwrap_err().to_string();
        assert!(
            err.contains("at least 16") && err.contains("token"),
            "{err}"
        );
        let err = read_token(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
