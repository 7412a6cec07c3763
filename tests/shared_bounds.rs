//! The shared tier's own bound: idle expiry and a size limit that never take a blob a node is
//! reading, run by a node on its own or by `wharf cache ... --shared`, which also verifies.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use wharf::config::SharedConfig;

use crate::common::s3::{blob_key, shared_config, used_key, FakeS3};
use crate::common::{eventually, random_bytes, FakeRegistry, Wharf, MIB, WHARF};

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
    let config = shared_config(&s3, dir.path());
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
    let config = shared_config(&s3, dir.path());
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
    let mut config = shared_config(&s3, dir.path());
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
