//! The shared tier: an S3-compatible bucket below each node's disk. A blob one node fetched from
//! the upstream is put there, and a node that lacks it fills from there instead of the
//! upstream; what comes down is verified, and a copy that fails is deleted.

use std::path::Path;
use std::time::Duration;

use wharf::config::SharedConfig;

use crate::common::registry::Hold;
use crate::common::s3::{blob_key, Break, FakeS3, BUCKET};
use crate::common::{eventually, random_bytes, FakeRegistry, Wharf, MIB, WHARF};
use bytes::Bytes;

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
        max_size: None,
        max_idle: Duration::from_secs(30 * 24 * 3600),
        ca_file: None,
    }
}

/// The marker of a blob's last use from the bucket.
fn used_key(digest: &str) -> String {
    format!("used/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// `wharf cache <args> --shared` on a config naming `shared` (off the runtime, which serves
/// the bucket).
async fn shared_command(shared: &SharedConfig, dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut config = wharf::Config::default();
    config.cache.dir = dir.join("cache");
    config.cache.shared = Some(shared.clone());
    let file = dir.join("mirror.toml");
    std::fs::write(&file, config.to_toml()).unwrap();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(WHARF)
            .arg("cache")
            .args(args)
            .arg("--shared")
            .arg("--config")
            .arg(&file)
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
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
    assert_eq!(s3.count("PUT", "partNumber"), 3, "8 MiB parts");

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

/// A blob in the bucket under its digest, last used `ago`.
fn stored(s3: &FakeS3, seed: u64, ago: Duration) -> String {
    let body = random_bytes(MIB, seed);
    let digest = wharf::oci::Digest::sha256_of(&body).to_string();
    s3.put_object(&blob_key(&digest), body);
    s3.age(&blob_key(&digest), ago);
    digest
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn prune_shared_expires_the_idle_and_evicts_the_least_recently_used_but_never_a_blob_in_use()
{
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared(&s3, dir.path());
    let idle = stored(&s3, 81, 31 * 24 * HOUR);
    let least_recent = stored(&s3, 82, 3 * HOUR);
    let being_read = stored(&s3, 83, 4 * HOUR);
    // A node began reading it a moment ago: the marker is fresh.
    s3.put_object(&used_key(&being_read), Bytes::new());
    let just_uploaded = stored(&s3, 84, Duration::ZERO);

    let (code, text) = shared_command(&config, dir.path(), &["stats"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("blobs                4 objects"), "{text}");
    assert!(text.contains("max idle    30days"), "{text}");

    // Room for one blob: all but the most recent would go, were they not in use.
    let (code, text) = shared_command(&config, dir.path(), &["prune", "--max-size", "1MiB"]).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("expired 1 objects (1.0 MiB)"), "{text}");
    assert!(text.contains("evicted 1 objects (1.0 MiB)"), "{text}");
    assert!(text.contains("spared  2 objects (2.0 MiB)"), "{text}");
    assert!(s3.object(&blob_key(&idle)).is_none());
    assert!(s3.object(&blob_key(&least_recent)).is_none());
    assert!(s3.object(&blob_key(&being_read)).is_some(), "in use");
    assert!(
        s3.object(&blob_key(&just_uploaded)).is_some(),
        "within the grace period"
    );
    assert!(s3.object(&used_key(&being_read)).is_some());
}

#[tokio::test]
async fn verify_shared_deletes_a_copy_that_does_not_hash_to_its_name() {
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = shared(&s3, dir.path());
    let good = stored(&s3, 85, HOUR);
    let rotten = stored(&s3, 86, HOUR);
    let mut bytes = s3.object(&blob_key(&rotten)).unwrap().to_vec();
    bytes[1000] ^= 1;
    s3.put_object(&blob_key(&rotten), bytes.into());

    let (code, text) = shared_command(&config, dir.path(), &["verify"]).await;
    assert_eq!(code, Some(1), "damage is status 1: {text}");
    assert!(text.contains(&format!("deleted {rotten}")), "{text}");
    assert!(text.contains("checked 2 objects"), "{text}");
    assert!(s3.object(&blob_key(&rotten)).is_none());
    assert!(s3.object(&blob_key(&good)).is_some());
    let (code, text) = shared_command(&config, dir.path(), &["verify"]).await;
    assert_eq!(code, Some(0), "{text}");
}

#[tokio::test]
async fn a_running_node_keeps_the_shared_tier_within_max_idle() {
    let upstream = FakeRegistry::start().await;
    let s3 = FakeS3::start().await;
    let dir = tempfile::tempdir().unwrap();
    let idle = stored(&s3, 87, 2 * HOUR);
    let fresh = stored(&s3, 88, Duration::ZERO);
    let mut config = shared(&s3, dir.path());
    config.max_idle = Duration::from_secs(4);
    let node = Wharf::start(&upstream, |c| c.cache.shared = Some(config)).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            s3.object(&blob_key(&idle)).is_none()
        })
        .await,
        "an expiry pass removed the idle blob"
    );
    assert_eq!(
        node.metric(
            "wharf_shared_requests_total",
            &["op=\"delete\"", "result=\"expired\""]
        )
        .await,
        1.0
    );
    assert!(
        s3.object(&blob_key(&fresh)).is_some(),
        "past max_idle, but used within the grace period"
    );
    assert_eq!(
        node.metric("wharf_shared_held_bytes", &[]).await,
        MIB as f64
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
        c.cache.shared = Some(shared(&s3, dir.path()))
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
        c.cache.shared = Some(shared(&s3, dir.path()))
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
        c.cache.shared = Some(shared(&s3, dir.path()))
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
