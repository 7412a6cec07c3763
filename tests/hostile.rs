//! What hostile input gets: an upstream that lies never poisons the cache or makes wharf buffer
//! without bound, and a malformed request always gets a 4xx (an OCI JSON error wherever the
//! request reaches wharf at all), never a 5xx, a panic, or a request upstream.

use std::time::Duration;

use crate::common::{error_code, random_bytes, FakeRegistry, Wharf, OCI_MANIFEST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A manifest of `len` bytes: valid JSON, padded with spaces.
fn big_manifest(len: usize) -> String {
    let mut body = String::from("{\"schemaVersion\":2}");
    body.push_str(&" ".repeat(len - body.len()));
    body
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_declared_or_not() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "huge", OCI_MANIFEST, &big_manifest(5 << 20));
    let fits = upstream.add_manifest("library/app", "fits", OCI_MANIFEST, &big_manifest(4 << 20));
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for chunked in [false, true] {
        upstream.faults().chunked_manifests = chunked;
        let r = wharf.get("/v2/library/app/manifests/huge").await;
        assert_eq!(r.status(), 502, "chunked: {chunked}");
        assert_eq!(error_code(r).await, "UPSTREAM_UNAVAILABLE");
    }
    // Exactly 4 MiB is within the limit.
    let r = wharf.get("/v2/library/app/manifests/fits").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], fits.as_str());
}

#[tokio::test]
async fn lying_upstream_bodies_are_never_cached() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(256 * 1024, 3);
    let digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{\"layers\":[]}");
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/app/blobs/{digest}");

    // A refusal, or a response cut before its end (its headers may already be out, or not).
    let refused_or_cut = || async {
        match wharf.client.get(wharf.url(&path)).send().await {
            Err(_) => true,
            Ok(r) => r.status() == 502 || r.bytes().await.is_err(),
        }
    };
    // Fewer bytes than the digest needs, declared as if complete; then one byte changed.
    upstream.faults().truncate_blobs_to = Some(100 * 1024);
    assert!(refused_or_cut().await);
    upstream.faults().truncate_blobs_to = None;
    upstream.faults().flip_byte = true;
    assert!(refused_or_cut().await);
    // Both fills ran to their end and failed verification.
    assert!(
        wharf
            .metric_reaches("wharf_digest_mismatches_total", &[], 2.0)
            .await
    );
    assert!(wharf.fills_done().await);
    assert!(!wharf.has_blob(&digest));

    // A manifest whose body does not match the digest the upstream claims for it.
    upstream.faults().tamper_manifests = true;
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 502);

    // Honest again: everything is served whole and verified.
    *upstream.faults() = Default::default();
    assert_eq!(wharf.get(&path).await.bytes().await.unwrap(), blob);
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
}

/// Sends `request` as raw bytes and returns the status and the whole response.
async fn raw(wharf: &Wharf, request: &[u8]) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(wharf.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

fn get(target: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut request = b"GET ".to_vec();
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nHost: wharf\r\nConnection: close\r\n");
    request.extend_from_slice(extra_headers.as_bytes());
    request.extend_from_slice(b"\r\n");
    request
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_with_an_oci_error_and_never_reach_the_upstream() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let hex = "a".repeat(64);
    let blob = format!("/v2/library/app/blobs/sha256:{hex}");
    let targets: Vec<String> = vec![
        // Traversal in every encoding.
        "/v2/..%2f..%2fetc/passwd/manifests/v1".into(),
        "/v2/%2e%2e/%2e%2e/manifests/v1".into(),
        "/v2/%252e%252e/app/manifests/v1".into(),
        "/v2/library/app/manifests/..%5c..%5cetc".into(),
        "/v2/library/app/blobs/sha256:..%2f..%2f".into(),
        "/v2/library//app/manifests/v1".into(),
        "/v2/./library/app/manifests/v1".into(),
        // Encoded slashes, NUL and bytes that are not UTF-8, percent-encoded.
        "/v2/library%2fapp/manifests/v1".into(),
        "/v2/library/app%00/manifests/v1".into(),
        "/v2/library/app/manifests/v1%00".into(),
        "/v2/library/%ff%fe/manifests/v1".into(),
        "/v2/library/app/manifests/%c0%ae%c0%ae".into(),
        // Names, tags and digests out of bounds.
        format!("/v2/{}/manifests/v1", "a".repeat(256)),
        format!("/v2/{}/app/manifests/v1", "a/".repeat(200)),
        format!("/v2/library/app/manifests/{}", "t".repeat(129)),
        "/v2/library/app/manifests/sha256:".into(),
        format!("/v2/library/app/blobs/sha256:{}", "A".repeat(64)),
        format!("/v2/library/app/blobs/sha256:{}", "a".repeat(65)),
        format!("/v2/library/app/blobs/sha512:{}", "a".repeat(64)),
        "/v2/library/app/blobs/sha256:zz".into(),
        // A registry that is not mirrored, by query and by path.
        "/v2/library/app/manifests/v1?ns=evil.example".into(),
        "/v2/library/app/manifests/v1?ns=%2e%2e%2f".into(),
        "/v2/evil.example:443/app/manifests/v1".into(),
        // Endpoints that do not exist or are not for pulling.
        "/v2/library/app/blobs/uploads/".into(),
        "/v2/_catalog".into(),
        "/v2/library/app/nothing/here".into(),
        format!("{blob}/extra"),
    ];
    for target in &targets {
        let (status, text) = raw(&wharf, &get(target.as_bytes(), "")).await;
        assert!(
            (400..500).contains(&status),
            "{target} answered {status}: {text}"
        );
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        let json: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{target}: not an OCI JSON error ({e}): {body}"));
        assert!(json["errors"][0]["code"].is_string(), "{target}: {body}");
    }

    // Bytes an HTTP parser refuses outright still get a 4xx, from hyper.
    for request in [
        get(b"/v2/library/app/manifests/v1\0", ""),
        get(b"/v2/libr\xffary/app/manifests/v1", ""),
        b"GET /v2/ HTTP/1.1\r\nHost: wharf\r\nX-Bad\x01: y\r\n\r\n".to_vec(),
        b"GARBAGE\r\n\r\n".to_vec(),
    ] {
        let (status, text) = raw(&wharf, &request).await;
        assert!(
            (400..500).contains(&status),
            "{:?} answered {status}: {text}",
            String::from_utf8_lossy(&request)
        );
    }
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[tokio::test]
async fn absurd_range_headers_get_the_whole_blob_or_416() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(10_000, 4);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/app/blobs/{digest}");
    assert_eq!(wharf.get(&path).await.bytes().await.unwrap(), blob);
    assert!(wharf.settled(&digest).await);

    let specs = |n: usize, step: usize| {
        let specs: Vec<String> = (0..n).map(|i| format!("{0}-{0}", i * step)).collect();
        format!("bytes={}", specs.join(","))
    };
    let cases: Vec<(String, &[u16])> = vec![
        // Two thousand adjacent one-byte ranges merge into one: a plain 206 of 2000 bytes.
        (specs(2000, 1), &[206]),
        // More parts than max_range_parts, even merged: the whole blob.
        (specs(200, 2), &[200]),
        // Absurdly many specs are not even parsed.
        (specs(5000, 1), &[200]),
        ("bytes=0-1,5-1".into(), &[200]),
        ("bytes=99999999999999999999999-".into(), &[200]),
        ("bytes=18446744073709551615-".into(), &[416]),
        ("bytes=-18446744073709551615".into(), &[206]),
        ("bytes=5-1".into(), &[200]),
        ("bytes=-0".into(), &[416]),
        ("bytes=--1".into(), &[200]),
        ("bytes=0-0-0".into(), &[200]),
        ("bytes= 1 - 2 ".into(), &[206]),
        ("items=0-1".into(), &[200]),
        ("bytes=".into(), &[200]),
        ("bytes=10000-".into(), &[416]),
        ("bytes=10000-,-0,20000-30000".into(), &[416]),
    ];
    for (range, expected) in cases {
        let r = wharf
            .client
            .get(wharf.url(&path))
            .header("range", &range)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let shown = &range[..range.len().min(40)];
        assert!(expected.contains(&status), "Range {shown}: {status}");
        let body = r.bytes().await.unwrap();
        match status {
            200 => assert_eq!(body, blob, "Range {shown}"),
            206 => assert!(!body.is_empty() && body.len() <= blob.len()),
            _ => {}
        }
    }
}
