//! Nodes of one cluster: a request that names a peer is that peer's only with the peer token and
//! from the peer's address, and then the client checks (address list, rate, credentials) do not
//! apply; anything else naming a peer is refused like a client without credentials.

use std::path::Path;

use wharf::config::{ClusterConfig, PeerConfig};

use crate::common::{random_bytes, FakeRegistry, Wharf};

const TOKEN: &str = "peer-token-0123456789abcdef";

fn cluster(dir: &Path) -> ClusterConfig {
    let peer_token_file = dir.join("peer-token");
    std::fs::write(&peer_token_file, format!("{TOKEN}\n")).unwrap();
    let peer = |name: &str, url: &str| PeerConfig {
        name: name.into(),
        url: url.parse().unwrap(),
    };
    ClusterConfig {
        node: "a".into(),
        peer_token_file,
        peers: vec![
            peer("a", "http://127.0.0.1:1"),
            peer("b", "http://127.0.0.1:2"),
            peer("far", "http://10.9.9.9:5000"),
        ],
    }
}

#[tokio::test]
async fn a_peer_with_the_token_skips_the_client_checks_and_nothing_else_passes_for_one() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(64 * 1024, 51);
    let digest = upstream.add_blob(blob.clone());
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "").unwrap();
    let wharf = Wharf::start(&upstream, |c| {
        c.cluster = Some(cluster(dir.path()));
        // Clients from here are refused, and would need credentials anyway.
        c.server.allow_from = Some(vec!["10.0.0.0/8".parse().unwrap()]);
        c.server.auth = Some(wharf::config::AuthConfig {
            htpasswd: None,
            tokens: Some(tokens.clone()),
        });
    })
    .await;
    let path = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let get = |peer: Option<&str>, authorization: Option<String>| {
        let mut request = wharf.client.get(&path);
        if let Some(peer) = peer {
            request = request.header("x-wharf-peer", peer);
        }
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    let bearer = |token: &str| Some(format!("Bearer {token}"));

    assert_eq!(get(None, None).await.unwrap().status(), 403, "a client");
    let r = get(Some("b"), bearer(TOKEN)).await.unwrap();
    assert_eq!(r.status(), 200, "the peer");
    assert_eq!(r.bytes().await.unwrap(), blob);

    for (peer, authorization, why) in [
        ("b", None, "no token"),
        ("b", bearer("peer-token-0123456789abcdeX"), "a wrong token"),
        (
            "b",
            Some(format!("Basic {TOKEN}")),
            "the token, not as a bearer",
        ),
        (
            "far",
            bearer(TOKEN),
            "the token, from another peer's address",
        ),
        (
            "zz",
            bearer(TOKEN),
            "the token, for a node not in the cluster",
        ),
        ("a", bearer(TOKEN), "the token, in this node's own name"),
    ] {
        let r = get(Some(peer), authorization).await.unwrap();
        assert_eq!(r.status(), 401, "{why}");
        assert!(r.headers().contains_key("www-authenticate"), "{why}");
    }
}
