//! A cluster when things fail: a dead owner is passed over, an owner that dies mid-blob is
//! carried on from where it stopped, and a node whose disk takes no writes streams from the
//! owner, not the upstream.

use std::time::Duration;

use crate::common::cluster::{owned_by_first, owners, pull_everywhere, start_cluster, NAMES};
use crate::common::{eventually, random_bytes, FakeRegistry, Hold, Wharf};

#[tokio::test]
async fn a_dead_owner_is_passed_over_and_the_cluster_still_fetches_once() {
    let upstream = FakeRegistry::start().await;
    let cluster = start_cluster(&upstream, &NAMES).await;
    // Blobs that the first node owns, until there are a few.
    let mut blobs = Vec::new();
    for seed in 0.. {
        if blobs.len() == 4 {
            break;
        }
        let bytes = random_bytes(128 * 1024, 500 + seed);
        let digest = crate::common::sha256(&bytes);
        if owners(&NAMES, &digest)[0] == 0 {
            upstream.add_blob(bytes.clone());
            blobs.push((digest, bytes));
        }
    }
    // The first node crashes, as its peers see it.
    cluster.links[0].cut();
    let living: Vec<&Wharf> = cluster.nodes[1..].iter().collect();
    pull_everywhere(&living, &blobs).await;
    for (digest, _) in &blobs {
        assert_eq!(
            upstream.count("GET", digest),
            1,
            "{digest}: the next node in order fetched it, for both"
        );
    }
    // (A node whose own fill joined a peer's request for the blob asked no one itself.)
    let mut fallbacks = 0.0;
    for node in &living {
        assert!(
            node.metric_reaches("wharf_peer_up", &["peer=\"a\""], 0.0)
                .await,
            "the dead node shows down, by a failed fetch or a probe"
        );
        fallbacks += node.metric("wharf_peer_fallbacks_total", &[]).await;
    }
    assert!(fallbacks >= 1.0);
    let ready: serde_json::Value = living[0].get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["cluster"][0]["up"], false, "{ready}");
}

#[tokio::test]
async fn an_owner_that_dies_mid_blob_is_carried_on_from_where_it_stopped() {
    let upstream = FakeRegistry::start().await;
    let (digest, bytes) = owned_by_first(4 * 1024 * 1024, 1300);
    upstream.add_blob(bytes.clone());
    let hold = Hold::after(1024 * 1024).only(&digest);
    upstream.faults().hold = Some(hold.clone());
    let cluster = start_cluster(&upstream, &NAMES).await;
    let b = &cluster.nodes[1];
    let pull = {
        let url = b.url(&format!("/v2/library/x/blobs/{digest}"));
        let client = b.client.clone();
        tokio::spawn(async move { client.get(url).send().await.unwrap().bytes().await })
    };
    // The owner's fill, and so its answer to b, is held a MiB in.
    assert!(eventually(Duration::from_secs(10), || async { hold.reached() == 1 }).await);
    // The owner crashes: its answer to b breaks off, and it takes no more connections.
    cluster.links[0].cut();
    hold.open();
    let got = pull.await.unwrap().expect("the pull is whole");
    assert_eq!(got.len(), bytes.len());
    assert!(got == bytes, "the bytes are the blob's");
    assert!(b.settled(&digest).await, "b verified and kept it");
    let carried_on: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.path.contains(&digest) && s.range.is_some())
        .collect();
    assert_eq!(carried_on.len(), 1, "{carried_on:?}");
    let range = carried_on[0].range.clone().unwrap();
    let from: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{range}"));
    assert!(from > 0 && from <= 1024 * 1024, "carried on from {from}");
    assert_eq!(
        b.metric("wharf_peer_fallbacks_total", &["to=\"upstream\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_node_whose_disk_takes_no_writes_streams_from_the_owner_not_the_upstream() {
    let upstream = FakeRegistry::start().await;
    let (digest, bytes) = owned_by_first(2 * 1024 * 1024, 1400);
    upstream.add_blob(bytes.clone());
    let cluster = start_cluster(&upstream, &NAMES).await;
    let b = &cluster.nodes[1];
    // A file where b's temp directory should be: every write fails, even for root.
    let tmp = b.cache.path().join("tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();
    let path = format!("/v2/library/x/blobs/{digest}");
    for _ in 0..2 {
        let r = b.get(&path).await;
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap() == bytes, "served whole, verified");
    }
    assert!(!b.has_blob(&digest), "b could not keep it");
    assert_eq!(
        b.metric("wharf_cache_bypass_total", &["reason=\"unwritable\""])
            .await,
        2.0
    );
    assert_eq!(
        upstream.count("GET", &digest),
        1,
        "the owner fetched it once, for both of b's pass-throughs"
    );
    assert!(
        cluster.nodes[0].settled(&digest).await,
        "the owner keeps it"
    );
    assert_eq!(
        b.metric("wharf_served_bytes_total", &["source=\"peer\""])
            .await,
        2.0 * bytes.len() as f64
    );
}
