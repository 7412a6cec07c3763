//! The shared tier: an S3-compatible bucket below each node's disk. A blob one node fetched from
//! the upstream is put there, and a node that lacks it fills from there instead of the
//! upstream; what comes down is verified, and a copy that fails is deleted.

use std::time::Duration;

use crate::common::registry::Hold;
use crate::common::s3::{blob_key, shared_config, used_key, Break, FakeS3};
use crate::common::{eventually, random_bytes, FakeRegistry, Wharf, MIB};

#[tokio::test]
async fn a_blob_one_node_fetched_fills_another_from_the_shared_tier() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Three parts of an upload, the last one short.
    let blob = random_bytes(20 * MIB + 123, 71);
    let digest = upstream.add_blob(blob.clone());
    let path = format!("/v2/library/x/blobs/{digest}");

    let first = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    assert_eq!(first.get(&path).await.bytes().await.unwrap(), blob);
    assert!(
        eventually(Duration::from_secs(10), || async {
            s3.object(&blob_key(&digest)).is_some()
        })
        .await,
        "the node that fetched it put it in the shared tier"
    );
    assert!(s3.object(&blob_key(&digest)).unwrap() == blob);
    assert_eq!(s3.count("PUT", "partNumber"), 3, "8 MiB parts");

    // A second node with an empty disk: from the tier, not the upstream.
    let second = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    let r = second.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "coalesced");
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(
        upstream.count("GET", &digest),
        1,
        "the upstream sent it once"
    );
    assert!(
        second.settled(&digest).await,
        "verified and kept on the second node"
    );
    assert_eq!(
        second
            .metric(
                "wharf_shared_requests_total",
                &["op=\"get\"", "result=\"found\""]
            )
            .await,
        1.0
    );
    assert_eq!(
        second.metric("wharf_shared_bytes_total", &[]).await,
        blob.len() as f64
    );
    assert!(
        s3.object(&used_key(&digest)).is_some(),
        "the read from the bucket is marked, for the tier's idle expiry"
    );
}

#[tokio::test]
async fn a_bad_copy_in_the_shared_tier_is_refused_and_deleted() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = random_bytes(3 * MIB, 72);
    let digest = upstream.add_blob(blob.clone());
    let mut bad = blob.to_vec();
    bad[MIB] ^= 1;
    s3.put_object(&blob_key(&digest), bad.into());
    let node = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    let path = format!("/v2/library/x/blobs/{digest}");

    let first = node.get(&path).await.bytes().await;
    assert!(
        first.is_err(),
        "the bad copy's answer is cut, never completed"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            s3.count("DELETE", &digest[7..]) == 1
        })
        .await,
        "the bad copy is deleted"
    );
    assert_eq!(
        node.metric("wharf_shared_requests_total", &["result=\"refused\""])
            .await,
        1.0
    );
    // The next pull goes to the upstream, and its good copy replaces the bad one.
    assert!(node.get(&path).await.bytes().await.unwrap() == blob);
    assert_eq!(upstream.count("GET", &digest), 1);
    assert!(
        eventually(Duration::from_secs(10), || async {
            s3.object(&blob_key(&digest)).is_some_and(|o| o == blob)
        })
        .await
    );
}

#[tokio::test]
async fn a_bucket_that_does_not_answer_costs_a_pull_nothing_but_a_try() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = random_bytes(MIB, 73);
    let digest = upstream.add_blob(blob.clone());
    let mut config = shared_config(&s3, dir.path());
    // Nothing listens there.
    config.endpoint = "http://127.0.0.1:1".parse().unwrap();
    let node = Wharf::start(&upstream, |c| c.cache.shared = Some(config)).await;
    let r = node.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap() == blob);
    assert_eq!(upstream.count("GET", &digest), 1);
    assert_eq!(
        node.metric(
            "wharf_shared_requests_total",
            &["op=\"get\"", "result=\"error\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_upload_streams_beside_the_fill_and_completes_only_once_the_blob_is_verified() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = random_bytes(20 * MIB, 89);
    let digest = upstream.add_blob(blob.clone());
    let hold = Hold::after(12 * MIB).only(&digest);
    upstream.faults().hold = Some(hold.clone());
    let node = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    let path = format!("/v2/library/x/blobs/{digest}");
    let client = node.client.clone();
    let url = node.url(&path);
    let pull = tokio::spawn(async move { client.get(url).send().await?.bytes().await });

    // The upstream holds the body at 12 MiB: the first 8 MiB part went up already.
    assert!(
        eventually(Duration::from_secs(10), || async {
            hold.reached() == 1 && s3.count("PUT", "partNumber=1") == 1
        })
        .await,
        "a part is uploaded while the fill still runs"
    );
    assert!(s3.object(&blob_key(&digest)).is_none(), "not completed yet");
    assert_eq!(s3.count("POST", "uploadId"), 0);

    hold.open();
    assert!(pull.await.unwrap().unwrap() == blob);
    assert!(
        eventually(Duration::from_secs(10), || async {
            s3.object(&blob_key(&digest)).is_some_and(|o| o == blob)
        })
        .await,
        "completed once verified"
    );
    assert_eq!(upstream.count("GET", &digest), 1);
}

#[tokio::test]
async fn a_fill_that_fails_verification_aborts_its_upload() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = random_bytes(10 * MIB, 90);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().flip_byte = true;
    let node = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    let path = format!("/v2/library/x/blobs/{digest}");
    assert!(
        node.get(&path).await.bytes().await.is_err(),
        "never completed"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            s3.count("DELETE", "uploadId") == 1
        })
        .await,
        "the upload is aborted"
    );
    assert_eq!(s3.count("POST", "uploadId"), 0, "never completed");
    assert!(s3.object(&blob_key(&digest)).is_none());
    assert_eq!(
        node.metric(
            "wharf_shared_requests_total",
            &["op=\"put\"", "result=\"aborted\""]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_bucket_body_cut_off_is_finished_from_the_upstream_from_where_it_stopped() {
    finished_from_the_upstream_after(Break::Cut, 91).await;
}

#[tokio::test]
async fn a_bucket_body_that_stalls_is_finished_from_the_upstream_from_where_it_stopped() {
    finished_from_the_upstream_after(Break::Stall, 92).await;
}

async fn finished_from_the_upstream_after(how: Break, seed: u64) {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blob = random_bytes(6 * MIB, seed);
    let digest = upstream.add_blob(blob.clone());
    s3.put_object(&blob_key(&digest), blob.clone());
    s3.break_bodies_at(2 * MIB, how);
    let node = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared_config(&s3, dir.path()))
    })
    .await;
    let r = node.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.bytes().await.unwrap() == blob,
        "the client never saw the break"
    );
    assert!(node.settled(&digest).await, "verified and kept");
    let fetches: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains(&digest))
        .collect();
    assert_eq!(fetches.len(), 1, "the upstream was asked once");
    assert_eq!(
        fetches[0].range.as_deref(),
        Some("bytes=2097152-"),
        "for the rest only"
    );
    assert_eq!(
        node.metric(
            "wharf_shared_requests_total",
            &["op=\"get\"", "result=\"broken\""]
        )
        .await,
        1.0
    );
}
