//! HTTPS: wharf serves HTTP/1.1 and HTTP/2 over TLS, reloads its certificate when the files
//! change without dropping connections, keeps the current one when the new files are broken,
//! and refuses to start with a bad certificate. Upstreams over TLS are checked against an extra
//! CA, or not at all when `insecure` says so.

use std::path::Path;
use std::time::Duration;

use wharf::Config;

use crate::common::pki::{client_trusting, issue, server_tls, write_ca, write_pair, Pki};
use crate::common::{
    base_config, config, eventually, logs, random_bytes, sha256, upstream_config, FakeRegistry,
    Wharf,
};

/// A config in front of `upstream` serving HTTPS with the pair in `certs`.
fn tls_config(upstream: &FakeRegistry, cache: &Path, certs: &Path) -> Config {
    let mut config = config(upstream, cache);
    config.server.tls = Some(server_tls(certs));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_over_http1_and_h2_and_reloads_the_certificate() {
    logs::capture_tls();
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(3 * 1024 * 1024, 1);
    let digest = upstream.add_blob(blob.clone());
    let certs = tempfile::tempdir().unwrap();
    let first = issue("first CA");
    write_pair(certs.path(), &first);
    let cache = tempfile::tempdir().unwrap();
    let config = tls_config(&upstream, cache.path(), certs.path());
    let wharf = Wharf::start_https(config, cache, client_trusting(&first, false)).await;
    let path = format!("/v2/library/x/blobs/{digest}");

    // HTTP/1.1 and HTTP/2 (ALPN): the same bytes, cold then warm.
    let r = wharf.get(&path).await;
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert!(wharf.settled(&digest).await);
    let h2 = client_trusting(&first, true);
    let r = h2.get(wharf.url(&path)).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert!(r.bytes().await.unwrap() == blob);
    // Plain HTTP on the HTTPS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/v2/", wharf.addr))
        .send()
        .await;
    assert!(plain.is_err() || plain.unwrap().status() == 400);

    // A new certificate from another CA: new handshakes present it once the files change,
    // while the HTTP/2 connection opened before keeps working.
    let second = rotate_to(&wharf, certs.path(), "second CA").await;
    let r = h2.get(wharf.url("/v2/")).send().await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "the connection opened before the reload is kept"
    );
    let fresh_first = client_trusting(&first, false);
    assert!(fresh_first.get(wharf.url("/v2/")).send().await.is_err());

    // A broken pair is not loaded: once the watcher has looked at it and refused it, the
    // current certificate is still the one served.
    let key = certs.path().join("tls.key").display().to_string();
    let refused = || logs::lines_with(&["TLS certificate not reloaded", &key]);
    let refused_before = refused();
    std::fs::write(certs.path().join("tls.key"), "not a key").unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            refused() > refused_before
        })
        .await,
        "the watcher never looked at the broken key"
    );
    let r = client_trusting(&second, false)
        .get(wharf.url("/v2/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // And it keeps watching: a good pair written after the broken one is picked up.
    rotate_to(&wharf, certs.path(), "third CA").await;
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

/// Writes a certificate and key from a new CA into `certs`, and waits (up to 10 s) until new
/// handshakes with `wharf` present them.
async fn rotate_to(wharf: &Wharf, certs: &Path, ca: &str) -> Pki {
    let pki = issue(ca);
    write_pair(certs, &pki);
    let trusting = client_trusting(&pki, false);
    assert!(
        eventually(Duration::from_secs(10), || async {
            trusting.get(wharf.url("/v2/")).send().await.is_ok()
        })
        .await,
        "the pair from {ca} is never served"
    );
    pki
}

#[tokio::test]
async fn a_bad_certificate_or_key_stops_start_up_with_a_clear_error() {
    let upstream = FakeRegistry::start().await;
    let certs = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let run = |config: Config| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        wharf::run(listener, config, std::future::pending())
            .await
            .unwrap_err()
            .to_string()
    };

    let config = tls_config(&upstream, cache.path(), certs.path());
    let err = run(config.clone()).await;
    assert!(err.contains("tls.crt"), "{err}");

    let pki = issue("a CA");
    write_pair(certs.path(), &pki);
    std::fs::write(certs.path().join("tls.key"), issue("other").key).unwrap();
    let err = run(config.clone()).await;
    assert!(err.contains("does not belong"), "{err}");

    std::fs::write(certs.path().join("tls.crt"), "garbage").unwrap();
    let err = run(config).await;
    assert!(err.contains("no PEM certificate"), "{err}");
}

/// An HTTPS upstream: wharf trusts it through `ca_file`, refuses it without, and skips the check
/// only with `insecure = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_is_checked_against_ca_file() {
    let pki = issue("upstream CA");
    let upstream = FakeRegistry::start_https(&pki).await;
    let digest = upstream.add_blob(random_bytes(100_000, 2));
    let certs = tempfile::tempdir().unwrap();
    let ca_file = write_ca(certs.path(), &pki);

    let edge = |trust: &dyn Fn(&mut wharf::config::UpstreamConfig)| {
        let cache = tempfile::tempdir().unwrap();
        let mut config = base_config(cache.path());
        let mut upstream = upstream_config("docker.io", &upstream.url());
        trust(&mut upstream);
        config.upstreams.push(upstream);
        Wharf::start_with(config, cache)
    };
    let path = format!("/v2/library/x/blobs/{digest}");

    let untrusting = edge(&|_| {}).await;
    let r = untrusting.get(&path).await;
    assert_eq!(
        r.status(),
        503,
        "an untrusted certificate is an unreachable upstream"
    );

    let trusting = edge(&|u| u.ca_file = Some(ca_file.clone())).await;
    let r = trusting.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);

    let insecure = edge(&|u| u.insecure = true).await;
    let r = insecure.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        2,
        "the untrusting edge never got a byte"
    );
}

#[tokio::test]
async fn the_operations_listener_serves_https_too_when_tls_is_set() {
    let upstream = FakeRegistry::start().await;
    let certs = tempfile::tempdir().unwrap();
    let pki = issue("ops CA");
    write_pair(certs.path(), &pki);
    let cache = tempfile::tempdir().unwrap();
    let port = crate::common::free_port();
    let mut config = tls_config(&upstream, cache.path(), certs.path());
    config.server.metrics_listen = Some(([127, 0, 0, 1], port).into());
    let client = client_trusting(&pki, false);
    let wharf = Wharf::start_https(config, cache, client.clone()).await;
    let r = client
        .get(format!("https://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("wharf_cache_size_bytes"));
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.unwrap().status() == 400,
        "no plain HTTP beside the certificate"
    );
    drop(wharf);
}
