//! What clients can reach through wharf: only allowed repositories, and nothing an upstream's
//! answers could point wharf's credentials or requests at (token realms, redirects).

mod common;

use std::time::{Duration, Instant};

use common::{config_toml, error_code, random_bytes, FakeRegistry, Wharf, OCI_MANIFEST};

const ALLOW_LIBRARY: &str = "repositories = [\"library/*\"]";

#[tokio::test]
async fn repositories_outside_the_allow_list_are_refused_even_from_the_cache() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4096, 1);
    let blob_digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{\"a\":1}");
    upstream.add_manifest("private/app", "v1", OCI_MANIFEST, "{\"b\":2}");
    let cache = tempfile::tempdir().unwrap();
    let toml = config_toml(&upstream, cache.path(), "", ALLOW_LIBRARY);
    let wharf = Wharf::start_with_config(&toml, cache).await;

    // Allowed: served, and the blob is now cached.
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
    let blob_path = format!("/v2/library/app/blobs/{blob_digest}");
    assert_eq!(wharf.get(&blob_path).await.bytes().await.unwrap(), blob);
    assert!(wharf.settled(&blob_digest).await);
    let before = upstream.seen().len();

    // Refused, in every addressing form, for every endpoint; the cached blob included.
    let ns = format!("?ns={}", upstream.addr);
    for path in [
        "/v2/private/app/manifests/v1".to_owned(),
        format!("/v2/private/app/blobs/{blob_digest}"),
        "/v2/private/app/tags/list".to_owned(),
        format!("/v2/private/app/manifests/v1{ns}"),
        format!("/v2/{}/private/app/manifests/v1", upstream.addr),
        format!("/v2/libraryx/app/blobs/{blob_digest}"),
    ] {
        let r = wharf.get(&path).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(error_code(r).await, "DENIED", "{path}");
    }
    assert_eq!(
        upstream.seen().len(),
        before,
        "the upstream heard of a refused repository"
    );
}

#[tokio::test]
async fn a_token_realm_on_another_host_is_not_sent_the_credentials() {
    let upstream = FakeRegistry::start().await;
    // The realm names another server, reached under another host name.
    let elsewhere = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    {
        let mut faults = upstream.faults();
        faults.bearer = true;
        faults.realm_host = Some(format!("localhost:{}", elsewhere.addr.port()));
    }
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret\n").unwrap();
    let credentials = format!(
        "username = \"wharf\"\npassword_file = {:?}",
        secret.path().display().to_string()
    );

    let cache = tempfile::tempdir().unwrap();
    let toml = config_toml(&upstream, cache.path(), "", &credentials);
    let wharf = Wharf::start_with_config(&toml, cache).await;
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 502);
    assert!(elsewhere.seen().is_empty(), "the foreign realm was asked");
    wharf.stop().await;

    // Once the operator allows that host, it is used.
    let cache = tempfile::tempdir().unwrap();
    let extra = format!("{credentials}\ntoken_realm_hosts = [\"localhost\"]");
    let toml = config_toml(&upstream, cache.path(), "", &extra);
    let wharf = Wharf::start_with_config(&toml, cache).await;
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(elsewhere.count("GET", "/token"), 1);
}

#[tokio::test]
async fn redirect_loops_and_other_schemes_end_in_a_quick_502() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(1024, 2));
    let wharf = Wharf::start(&upstream, "").await;
    let path = format!("/v2/library/app/blobs/{digest}");

    // Redirected to itself, forever.
    upstream.faults().redirect_blobs_to = Some(upstream.url());
    let started = Instant::now();
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(5));
    let asked = upstream.count("GET", &digest);
    assert!(asked <= 7, "followed {asked} redirects");

    // Redirected to a file URL.
    upstream.faults().redirect_blobs_to = Some("file://".into());
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 502);
    assert!(!wharf.has_blob(&digest));
}
