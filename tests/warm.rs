//! `wharf warm`: the real binary fills a running wharf, or a cache directory, with every blob of
//! the platforms asked for, and nothing else; failures make it exit non-zero with a summary.

use std::process::{Command, Output};

use crate::common::disk::has_blob;
use crate::common::{config, random_bytes, FakeRegistry, Wharf, OCI_INDEX, OCI_MANIFEST, WHARF};

/// A two-platform image `library/app:v1` with one layer shared by both platforms.
struct Image {
    amd64: Vec<String>,
    arm64: Vec<String>,
}

fn manifest(config: &str, layers: &[&str]) -> String {
    let descriptor = |media: &str, digest: &str| {
        format!(
            r#"{{"mediaType":"{media}","digest":"{digest}","size":{}}}"#,
            4096
        )
    };
    let layers: Vec<_> = layers
        .iter()
        .map(|l| descriptor("application/vnd.oci.image.layer.v1.tar+gzip", l))
        .collect();
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[{}]}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", config),
        layers.join(",")
    )
}

fn seed(upstream: &FakeRegistry) -> Image {
    let blob = |seed| upstream.add_blob(random_bytes(4096, seed));
    let (shared, amd_config, amd_layer, arm_config, arm_layer) =
        (blob(1), blob(2), blob(3), blob(4), blob(5));
    let amd = upstream.add_manifest(
        "library/app",
        "amd64-only",
        OCI_MANIFEST,
        &manifest(&amd_config, &[&shared, &amd_layer]),
    );
    let arm = upstream.add_manifest(
        "library/app",
        "arm64-only",
        OCI_MANIFEST,
        &manifest(&arm_config, &[&shared, &arm_layer]),
    );
    let entry = |digest: &str, arch: &str| {
        format!(
            r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#
        )
    };
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{},{}]}}"#,
        entry(&amd, "amd64"),
        entry(&arm, "arm64")
    );
    upstream.add_manifest("library/app", "v1", OCI_INDEX, &index);
    Image {
        amd64: vec![amd_config, shared.clone(), amd_layer],
        arm64: vec![arm_config, shared, arm_layer],
    }
}

async fn warm(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || Command::new(WHARF).arg("warm").args(args).output())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_a_running_wharf_caches_every_blob_of_the_platforms_asked_for() {
    let upstream = FakeRegistry::start().await;
    let image = seed(&upstream);
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let server = wharf.url("");
    let args = |extra: &[&str]| {
        let mut args = vec!["--server".to_string(), server.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    let out = warm(args(&["--platform", "linux/arm64", "app:v1"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for digest in &image.arm64 {
        assert!(wharf.settled(digest).await, "arm64 blob {digest} cached");
    }
    assert!(
        !has_blob(wharf.cache.path(), &image.amd64[0]),
        "amd64 config not asked for"
    );
    assert!(
        !has_blob(wharf.cache.path(), &image.amd64[2]),
        "amd64 layer not asked for"
    );
    assert!(stderr.contains("warmed 1 images: 3 blobs"), "{stderr}");

    // Every platform: the rest arrives; what was cached is not fetched again.
    let out = warm(args(&["--all-platforms", "docker.io/library/app:v1"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for digest in image.amd64.iter().chain(&image.arm64) {
        assert!(wharf.settled(digest).await, "{digest}");
    }
    assert!(stderr.contains("(3 already cached)"), "{stderr}");
    assert_eq!(upstream.count("GET", "/blobs/"), 5);

    // A missing tag and an unconfigured registry: exit status 1, and the summary names them.
    let out = warm(args(&["app:v1", "app:nope", "ghcr.io/org/app:v1"])).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("docker.io/library/app:nope"), "{stderr}");
    assert!(stderr.contains("MANIFEST_UNKNOWN"), "{stderr}");
    assert!(stderr.contains("ghcr.io/org/app:v1"), "{stderr}");
    assert!(stderr.contains("NAME_UNKNOWN"), "{stderr}");

    // A cache directory in use by a running wharf is refused, with the way out.
    let out = warm(vec![
        "--dir".into(),
        wharf.cache.path().display().to_string(),
        "app:v1".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--server"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_a_cache_directory_fills_it_for_a_later_wharf() {
    let upstream = FakeRegistry::start().await;
    let image = seed(&upstream);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config_file = dir.path().join("mirror.toml");
    std::fs::write(&config_file, config(&upstream, &cache).to_toml()).unwrap();
    let list = dir.path().join("images.txt");
    std::fs::write(&list, "# rollout of v1\napp:v1   # the app\n\n").unwrap();

    let out = warm(vec![
        "--config".into(),
        config_file.display().to_string(),
        "--from-file".into(),
        list.display().to_string(),
        "--platform".into(),
        "linux/amd64".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for digest in &image.amd64 {
        assert!(has_blob(&cache, digest), "{digest}\n{stderr}");
    }
    assert!(!has_blob(&cache, &image.arm64[2]));

    // A wharf started on that directory serves the image without asking the upstream.
    let before = upstream.count("GET", "/blobs/");
    let wharf = Wharf::start_with(config(&upstream, &cache), tempfile::tempdir().unwrap()).await;
    for digest in &image.amd64 {
        let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!(r.headers()["x-wharf-cache"], "hit");
    }
    assert_eq!(upstream.count("GET", "/blobs/"), before);
}
