//! What wharf sends upstream: token and basic auth, redirects to another host, and the
//! allow-list of registries.

use crate::common::{
    base_config, random_bytes, sha256, upstream_config, FakeRegistry, Wharf, OCI_MANIFEST, TOKEN,
};

#[tokio::test]
async fn bearer_challenge_is_answered_and_tokens_are_cached_per_repository() {
    let upstream = FakeRegistry::start().await;
    let blob = upstream.add_blob(random_bytes(10_000, 1));
    let manifest = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{blob}"}}]}}"#);
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest);
    upstream.add_manifest("library/other", "v1", OCI_MANIFEST, &manifest);
    upstream.faults().bearer = true;
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    let r = wharf.get(&format!("/v2/library/app/blobs/{blob}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), blob);
    // One challenge, one token for the repository; the blob request reused both.
    assert_eq!(upstream.count("GET", "/token"), 1);
    let token_request = upstream
        .seen()
        .into_iter()
        .find(|s| s.path.starts_with("/token"))
        .unwrap();
    assert!(
        token_request
            .path
            .contains("scope=repository%3Alibrary%2Fapp%3Apull"),
        "{}",
        token_request.path
    );
    assert!(token_request.path.contains("service=fake"));
    let blob_get = upstream
        .seen()
        .into_iter()
        .find(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .unwrap();
    assert_eq!(blob_get.authorization, Some(format!("Bearer {TOKEN}")));
    let unauthorized = upstream
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/v2/") && s.authorization.is_none())
        .count();
    assert_eq!(
        unauthorized, 1,
        "only the first request pays the 401 round trip"
    );

    // Another repository needs a token of its own scope.
    assert_eq!(
        wharf.get("/v2/library/other/manifests/v1").await.status(),
        200
    );
    assert_eq!(upstream.count("GET", "/token"), 2);
    assert_eq!(
        wharf
            .metric("wharf_upstream_requests_total", &["kind=\"token\""])
            .await,
        2.0
    );
}

#[tokio::test]
async fn basic_auth_uses_the_configured_credentials() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("acme/app", "v1", OCI_MANIFEST, "{}");
    // base64("robot:s3cret")
    upstream.faults().basic = Some("Basic cm9ib3Q6czNjcmV0".into());
    let cache = tempfile::tempdir().unwrap();
    let password_file = cache.path().join("password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let mut config = base_config(&cache.path().join("cache"));
    let mut private = upstream_config("private.example", &upstream.url());
    private.username = Some("robot".into());
    private.password_file = Some(password_file);
    config.upstreams.push(private);
    let wharf = Wharf::start_with(config, cache).await;
    let r = wharf.get("/v2/acme/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "{}");

    // Wrong credentials upstream: the client learns it was denied, not that wharf broke.
    upstream.faults().basic = Some("Basic bm9ib2R5Om5vcGU=".into());
    let r = wharf.get("/v2/acme/app/manifests/v2").await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("DENIED"));
}

#[tokio::test]
async fn redirects_to_another_host_do_not_carry_the_token() {
    let upstream = FakeRegistry::start().await;
    let cdn = FakeRegistry::start().await;
    let bytes = random_bytes(200_000, 2);
    let digest = upstream.add_blob(bytes.clone());
    cdn.add_blob(bytes);
    upstream.faults().bearer = true;
    upstream.faults().redirect_blobs_to = Some(cdn.url());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    let at_registry = upstream
        .seen()
        .into_iter()
        .rfind(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .unwrap();
    assert_eq!(at_registry.authorization, Some(format!("Bearer {TOKEN}")));
    let at_cdn = cdn.seen();
    assert_eq!(at_cdn.len(), 1);
    assert_eq!(
        at_cdn[0].authorization, None,
        "the token must not leave its host"
    );
}

#[tokio::test]
async fn unconfigured_registries_are_refused_without_any_upstream_request() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for path in [
        "/v2/library/app/manifests/v1?ns=evil.example",
        "/v2/library/app/manifests/v1?ns=169.254.169.254",
        "/v2/evil.example/library/app/manifests/v1",
        "/v2/localhost:9/library/app/manifests/v1",
        &format!("/v2/library/app/blobs/{}?ns=evil.example", sha256(b"x")),
    ] {
        let r = wharf.get(path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.text().await.unwrap().contains("NAME_UNKNOWN"), "{path}");
    }
    assert!(upstream.seen().is_empty());
    assert_eq!(
        wharf.metric("wharf_upstream_requests_total", &[]).await,
        0.0
    );

    // The configured names work, in both shapes.
    let ns = format!("/v2/library/app/manifests/v1?ns={}", upstream.addr);
    assert_eq!(wharf.get(&ns).await.status(), 200);
    let prefix = format!("/v2/{}/library/app/manifests/v1", upstream.addr);
    assert_eq!(wharf.get(&prefix).await.status(), 200);
    let by_name = format!("upstream=\"{}\"", upstream.addr);
    assert!(
        wharf
            .metric("wharf_upstream_requests_total", &[&by_name])
            .await
            >= 1.0
    );
}
