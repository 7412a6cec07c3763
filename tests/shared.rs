//! The shared tier: an S3-compatible bucket below each node's disk. A blob one node fetched from
//! the upstream is put there, and a node that lacks it fills from there instead of the
//! upstream; what comes down is verified, and a copy that fails is deleted.

use std::path::Path;
use std::time::Duration;

use wharf::config::SharedConfig;

use crate::common::s3::{blob_key, FakeS3, BUCKET};
use crate::common::{eventually, random_bytes, FakeRegistry, Wharf, MIB};

fn shared(s3: &FakeS3, dir: &Path) -> SharedConfig {
    let (access_key_file, secret_key_file) = (dir.join("s3-access-key"), dir.join("s3-secret"));
    std::fs::write(&access_key_file, "GKtest\n").unwrap();
    std::fs::write(&secret_key_file, "test-secret-key\n").unwrap();
    SharedConfig {
        endpoint: s3.endpoint().parse().unwrap(),
        bucket: BUCKET.into(),
        region: "garage".into(),
        prefix: String::new(),
        path_style: true,
        access_key_file,
        secret_key_file,
        ca_file: None,
    }
}

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
        c.cache.shared = Some(shared(&s3, dir.path()))
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
    assert!(s3.count("PUT", "partNumber") >= 1 || s3.count("PUT", &digest[7..]) >= 1);

    // A second node with an empty disk: from the tier, not the upstream.
    let second = Wharf::start(&upstream, |c| {
        c.cache.shared = Some(shared(&s3, dir.path()))
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
        c.cache.shared = Some(shared(&s3, dir.path()))
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
    let mut config = shared(&s3, dir.path());
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
