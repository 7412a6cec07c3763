//! The HTTP surface: the base endpoint, operational endpoints, listings, and what wrong requests
//! get (always an OCI JSON error with a 4xx status, and nothing sent upstream or cached).

use std::time::Duration;

use crate::common::{error_code, sha256, FakeRegistry, Wharf, OCI_INDEX, OCI_MANIFEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn base_and_operational_endpoints() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let r = wharf.get("/v2/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = wharf.client.head(wharf.url("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(wharf.get("/healthz").await.status(), 200);
    let ready: serde_json::Value = wharf.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    let metrics = wharf.get("/metrics").await.text().await.unwrap();
    for series in [
        "wharf_http_requests_total{",
        "wharf_fills_in_flight",
        "wharf_cache_size_bytes",
        "wharf_digest_mismatches_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    // /v2/ needs no upstream: a mirror must answer it even when the upstream is down.
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn pushes_deletes_and_unknown_endpoints_are_refused_and_change_nothing() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let digest = sha256(b"x");
    let cases = [
        (
            reqwest::Method::POST,
            "/v2/library/app/blobs/uploads/".to_owned(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::PATCH,
            "/v2/library/app/blobs/uploads/abc".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::PUT,
            "/v2/library/app/manifests/v1".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::DELETE,
            "/v2/library/app/manifests/v1".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::DELETE,
            format!("/v2/library/app/blobs/{digest}"),
            405,
            "UNSUPPORTED",
        ),
        (reqwest::Method::POST, "/v2/".into(), 405, "UNSUPPORTED"),
        (
            reqwest::Method::GET,
            "/v2/_catalog".into(),
            405,
            "UNSUPPORTED",
        ),
        (
            reqwest::Method::GET,
            "/v2/library/app/things/x".into(),
            404,
            "UNSUPPORTED",
        ),
        (reqwest::Method::GET, "/".into(), 404, "UNSUPPORTED"),
    ];
    for (method, path, status, code) in cases {
        let r = wharf
            .client
            .request(method.clone(), wharf.url(&path))
            .body("ignored")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{method} {path}");
        assert_eq!(r.headers()["content-type"], "application/json");
        assert_eq!(error_code(r).await, code, "{method} {path}");
    }
    assert!(upstream.seen().is_empty());
    assert_eq!(
        std::fs::read_dir(wharf.cache.path().join("blobs"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn malformed_names_digests_and_tags_are_400() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let long_name = format!("/v2/{}/manifests/v1", "a".repeat(256));
    let long_tag = format!("/v2/library/app/manifests/{}", "t".repeat(129));
    let cases = [
        ("/v2/Library/app/manifests/v1", "NAME_INVALID"),
        ("/v2/lib%2Fapp/manifests/v1", "NAME_INVALID"),
        ("/v2/a__-b/manifests/v1", "NAME_INVALID"),
        (&long_name, "NAME_INVALID"),
        ("/v2/library/app/manifests/-v1", "TAG_INVALID"),
        (&long_tag, "TAG_INVALID"),
        ("/v2/library/app/manifests/sha256:abc", "DIGEST_INVALID"),
        ("/v2/library/app/blobs/latest", "DIGEST_INVALID"),
        ("/v2/library/app/blobs/md5:0123", "DIGEST_INVALID"),
    ];
    for (path, code) in cases {
        let r = wharf.get(path).await;
        assert_eq!(r.status(), 400, "{path}");
        assert_eq!(error_code(r).await, code, "{path}");
    }
    assert!(upstream.seen().is_empty());
}

/// Sends a request line exactly as written (an HTTP client would normalise the path).
async fn raw_status(wharf: &Wharf, target: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(wharf.addr).await.unwrap();
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: wharf\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test]
async fn path_traversal_never_reaches_the_filesystem_or_the_upstream() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let hex = "a".repeat(64);
    let targets: Vec<Vec<u8>> = vec![
        b"/v2/../../etc/passwd/manifests/v1".to_vec(),
        b"/v2/library/../../../etc/manifests/v1".to_vec(),
        b"/v2/%2e%2e/%2e%2e/etc/manifests/v1".to_vec(),
        format!("/v2/library/app/blobs/sha256:../../{}", &hex[6..]).into_bytes(),
        b"/v2/library/app/manifests/..%2f..%2fetc".to_vec(),
        b"/v2/library/app/manifests/v1%00".to_vec(),
        b"/v2/libr\xffary/app/manifests/v1".to_vec(),
    ];
    for target in targets {
        // Either wharf's OCI error or hyper's own 400 for a request line it cannot parse.
        let (status, text) = raw_status(&wharf, &target).await;
        assert!(
            (400..500).contains(&status),
            "{} answered {status}: {text}",
            String::from_utf8_lossy(&target)
        );
    }
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn tags_list_and_referrers_are_forwarded_and_briefly_cached() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    upstream.add_manifest("library/app", "v2", OCI_MANIFEST, "{ }");
    let wharf = Wharf::start(&upstream, |c| {
        c.cache.listing_ttl = Duration::from_millis(200)
    })
    .await;

    let r = wharf.get("/v2/library/app/tags/list?n=10&secret=x").await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let mut tags: Vec<_> = body["tags"].as_array().unwrap().iter().collect();
    tags.sort_by_key(|t| t.as_str().unwrap().to_owned());
    assert_eq!(tags, ["v1", "v2"]);
    let sent = &upstream.seen()[0].path;
    assert_eq!(
        sent, "/v2/library/app/tags/list?n=10",
        "only the spec's parameters pass"
    );

    wharf.get("/v2/library/app/tags/list?n=10").await;
    assert_eq!(
        upstream.count("GET", "/tags/list"),
        1,
        "reused within listing_ttl"
    );
    wharf.clock.advance(Duration::from_millis(200));
    wharf.get("/v2/library/app/tags/list?n=10").await;
    assert_eq!(upstream.count("GET", "/tags/list"), 2);

    let r = wharf
        .get(&format!("/v2/library/app/referrers/{}", sha256(b"{}")))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], OCI_INDEX);
    let index: serde_json::Value = r.json().await.unwrap();
    assert_eq!(index["manifests"], serde_json::json!([]));
}
