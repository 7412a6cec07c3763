//! Nodes of one cluster: a request that names a peer is that peer's only with the peer token and
//! from the peer's address, and then the client checks (address list, rate, credentials) do not
//! apply; anything else naming a peer is refused like a client without credentials.

use std::path::Path;
use std::time::Duration;

use futures_util::future::join_all;
use wharf::config::{ClusterConfig, PeerConfig};

use crate::common::cluster::{owners, pull_everywhere, start_cluster, NAMES, TOKEN};
use crate::common::{eventually, random_bytes, FakeRegistry, Hold, Wharf};

fn cluster(dir: &Path) -> ClusterConfig {
    let peer_token_file = dir.join("peer-token");
    std::fs::write(&peer_token_file, format!("{TOKEN}\n")).unwrap();
    let peer = |name: &str, url: &str| PeerConfig {
        name: name.into(),
        url: url.parse().unwrap(),
    };
    ClusterConfig::new(
        "a",
        peer_token_file,
        vec![
            peer("a", "http://127.0.0.1:1"),
            peer("b", "http://127.0.0.1:2"),
            peer("far", "http://10.9.9.9:5000"),
        ],
    )
}

#[tokio::test]
async fn three_nodes_fetch_each_blob_from_the_upstream_once_through_its_owner() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..12)
        .map(|i| {
            let bytes = random_bytes(256 * 1024 + i * 1000, 100 + i as u64);
            (upstream.add_blob(bytes.clone()), bytes)
        })
        .collect();
    let cluster = start_cluster(&upstream, &NAMES).await;
    let nodes = &cluster.nodes;
    pull_everywhere(&nodes.iter().collect::<Vec<_>>(), &blobs).await;
    for (digest, _) in &blobs {
        assert_eq!(
            upstream.count("GET", digest),
            1,
            "{digest}: one fetch for the cluster"
        );
    }
    // Every node asked the owner of each blob it does not own, and no one else.
    for (me, node) in nodes.iter().enumerate() {
        for (other, name) in NAMES.iter().enumerate().filter(|(i, _)| *i != me) {
            let owned = blobs
                .iter()
                .filter(|(d, _)| owners(&NAMES, d)[0] == other)
                .count() as f64;
            let asked = node
                .metric(
                    "wharf_peer_fetches_total",
                    &[&format!("peer=\"{name}\""), "result=\"ok\""],
                )
                .await;
            assert_eq!(asked, owned, "node {} asked {name}", NAMES[me]);
        }
        assert_eq!(node.metric("wharf_peer_fallbacks_total", &[]).await, 0.0);
    }
    // What a node served while its owner fed its fill counts as from a peer.
    let from_peers: f64 = join_all(
        nodes
            .iter()
            .map(|n| n.metric("wharf_served_bytes_total", &["source=\"peer\""])),
    )
    .await
    .into_iter()
    .sum();
    assert!(from_peers > 0.0);
    // And each keeps its own copy: a second round is all hits, asking no one.
    pull_everywhere(&nodes.iter().collect::<Vec<_>>(), &blobs).await;
    for (digest, _) in &blobs {
        assert_eq!(upstream.count("GET", digest), 1, "{digest}");
    }
    let ready: serde_json::Value = nodes[1].get("/readyz").await.json().await.unwrap();
    let cluster = ready["cluster"].as_array().unwrap();
    assert_eq!(cluster.len(), 3, "{ready}");
    assert_eq!(cluster[1]["this_node"], true, "{ready}");
    assert!(cluster.iter().all(|n| n["up"] == true), "{ready}");
}

#[tokio::test]
async fn sixteen_clients_over_three_nodes_on_one_cold_blob_cost_one_upstream_get() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(2 * 1024 * 1024, 61);
    let digest = upstream.add_blob(blob.clone());
    // The owner's fill waits at its first byte until every client has joined a fill.
    let hold = Hold::after(0).only(&digest);
    upstream.faults().hold = Some(hold.clone());
    let cluster = start_cluster(&upstream, &NAMES).await;
    let nodes = &cluster.nodes;
    let path = format!("/v2/library/x/blobs/{digest}");
    let pulls: Vec<_> = (0..16)
        .map(|i| {
            let node = &nodes[i % 3];
            let (client, url) = (node.client.clone(), node.url(&path));
            tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await })
        })
        .collect();
    // 16 client lookups, and one peer lookup on the owner from each of the two others.
    assert!(
        eventually(Duration::from_secs(10), || async {
            let mut lookups = 0.0;
            for node in nodes {
                lookups += node
                    .metric("wharf_cache_results_total", &["kind=\"blob\""])
                    .await;
            }
            lookups == 18.0
        })
        .await
    );
    hold.open();
    for pull in pulls {
        assert!(pull.await.unwrap().unwrap() == blob);
    }
    assert_eq!(upstream.count("GET", &digest), 1, "one upstream GET");
    let owner = owners(&NAMES, &digest)[0];
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != owner) {
        assert_eq!(
            node.metric("wharf_peer_fetches_total", &[]).await,
            1.0,
            "node {} made one peer fetch",
            NAMES[i]
        );
    }
    assert_eq!(
        nodes[owner].metric("wharf_peer_fetches_total", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn a_manifest_by_digest_comes_through_its_owner() {
    let upstream = FakeRegistry::start().await;
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let digest = upstream.add_manifest("library/x", "1", media_type, r#"{"schemaVersion":2}"#);
    let cluster = start_cluster(&upstream, &NAMES).await;
    let nodes = &cluster.nodes;
    let asks = nodes.iter().map(|node| {
        let digest = digest.clone();
        async move {
            let r = node
                .client
                .get(node.url(&format!("/v2/library/x/manifests/{digest}")))
                .header("accept", media_type)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        }
    });
    join_all(asks).await;
    assert_eq!(upstream.count("GET", &format!("manifests/{digest}")), 1);
}

#[tokio::test]
async fn a_tag_is_resolved_on_each_node_and_its_manifest_fetched_once() {
    let upstream = FakeRegistry::start().await;
    let media_type = "application/vnd.oci.image.manifest.v1+json";
    let digest = upstream.add_manifest(
        "library/x",
        "1.0",
        media_type,
        r#"{"schemaVersion":2,"n":1}"#,
    );
    let cluster = start_cluster(&upstream, &NAMES).await;
    let asks = cluster.nodes.iter().map(|node| async move {
        let r = node
            .client
            .get(node.url("/v2/library/x/manifests/1.0"))
            .header("accept", media_type)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned()
    });
    for answered in join_all(asks).await {
        assert_eq!(answered, digest);
    }
    assert_eq!(
        upstream.count("GET", "/manifests/"),
        1,
        "one manifest GET for the cluster"
    );
    assert_eq!(
        upstream.count("HEAD", "/manifests/1.0"),
        3,
        "a HEAD from each node"
    );
    let r = cluster.nodes[2].get("/v2/library/x/manifests/nope").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_peers_request_is_answered_from_the_upstream_never_passed_on() {
    let upstream = FakeRegistry::start().await;
    let cluster = start_cluster(&upstream, &NAMES).await;
    let nodes = &cluster.nodes;
    // A blob that the first node owns, asked of the third as a peer would.
    let (digest, bytes) = (0..)
        .map(|seed| {
            let bytes = random_bytes(64 * 1024, 900 + seed);
            (crate::common::sha256(&bytes), bytes)
        })
        .find(|(digest, _)| owners(&NAMES, digest)[0] == 0)
        .unwrap();
    upstream.add_blob(bytes.clone());
    let r = nodes[2]
        .client
        .get(nodes[2].url(&format!("/v2/library/x/blobs/{digest}")))
        .header("x-wharf-peer", "b")
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    assert_eq!(upstream.count("GET", &digest), 1);
    assert_eq!(nodes[2].metric("wharf_peer_requests_total", &[]).await, 0.0);
    assert_eq!(
        nodes[0]
            .metric("wharf_http_requests_total", &["route=\"blob\""])
            .await,
        0.0,
        "the owner was not asked"
    );
    // The peers stay up all along (their probes answer).
    assert!(
        eventually(Duration::from_secs(5), || async {
            nodes[2].metric("wharf_peer_up", &["peer=\"a\""]).await == 1.0
        })
        .await
    );
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
            grants: Vec::new(),
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
