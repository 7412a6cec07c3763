//! When the upstream fails: rate limits are honoured, errors are fast OCI JSON, stalls are cut,
//! and a cache is served even when wharf starts while the upstream is down.

use std::time::{Duration, Instant};

use crate::common::{
    base_config, config, each_upstream, error_code, eventually, random_bytes, sha256,
    upstream_config, Break, FakeRegistry, Wharf, MIB, OCI_MANIFEST,
};

#[tokio::test]
async fn a_429_holds_off_the_upstream_and_is_passed_on_with_retry_after() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    let ttl = Duration::from_secs(60);
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = ttl).await;
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
    wharf.clock.advance(ttl);

    upstream.faults().status = Some((429, Some("2")));
    let r = wharf.get("/v2/library/other/manifests/v1").await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    let asked = upstream.seen().len();

    // Within the wait: refused without asking the upstream again.
    let r = wharf.get("/v2/library/other/manifests/v2").await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    // A cached tag is served stale meanwhile, also without asking.
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(
        upstream.seen().len(),
        asked,
        "nothing sent during the backoff"
    );
    assert_eq!(
        wharf.metric("wharf_upstream_throttled_total", &[]).await,
        2.0
    );

    // Once the wait is over, the upstream is asked again (and, answering, is trusted again).
    upstream.faults().status = None;
    assert!(
        eventually(Duration::from_secs(10), || async {
            let r = wharf.get("/v2/library/other/manifests/v1").await;
            r.status() != 429
        })
        .await,
        "still held off long after Retry-After"
    );
    assert!(upstream.seen().len() > asked);
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_failing_upstream_gets_502_and_a_vanished_one_a_fast_503() {
    let upstream = FakeRegistry::start().await;
    // Long timeouts: an answer that waited for one of them cannot pass for a fast one.
    let timeout = Duration::from_secs(30);
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| {
            u.connect_timeout = timeout;
            u.read_timeout = timeout;
        })
    })
    .await;

    upstream.faults().status = Some((500, None));
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UPSTREAM_UNAVAILABLE");

    // Refused connections answer 503 at once, not after a timeout.
    upstream.stop().await;
    let started = Instant::now();
    let r = wharf
        .get(&format!("/v2/library/app/blobs/{}", sha256(b"x")))
        .await;
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UPSTREAM_UNAVAILABLE");
    assert!(
        started.elapsed() < timeout / 4,
        "{:?}: waited for a timeout",
        started.elapsed()
    );
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so connecting to it
/// hangs like connecting to a host that is down (without leaving loopback).
async fn blackhole() -> (tokio::net::TcpListener, Vec<std::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    (listener, fillers)
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_503_within_connect_timeout() {
    let (listener, _fillers) = blackhole().await;
    let cache = tempfile::tempdir().unwrap();
    let connect_timeout = Duration::from_secs(2);
    let mut config = base_config(&cache.path().join("c"));
    let mut unreachable = upstream_config(
        "docker.io",
        &format!("http://{}", listener.local_addr().unwrap()),
    );
    unreachable.connect_timeout = connect_timeout;
    // Far longer than the connect timeout, so that only the connect timeout can end the wait.
    unreachable.read_timeout = Duration::from_secs(60);
    config.upstreams.push(unreachable);
    let wharf = Wharf::start_with(config, cache).await;
    let started = Instant::now();
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    let elapsed = started.elapsed();
    assert_eq!(r.status(), 503);
    assert_eq!(error_code(r).await, "UPSTREAM_UNAVAILABLE");
    // Not before the connect timeout (the connection really hung), and not after a second
    // one (the attempt was not repeated) or the read timeout.
    assert!(
        elapsed >= connect_timeout && elapsed < 2 * connect_timeout,
        "answered after {elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_upstream_body_is_resumed_after_the_read_timeout() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(4 * MIB, 1));
    upstream.faults().stall = Some(Break::at(MIB).times(1));
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| u.read_timeout = Duration::from_millis(300))
    })
    .await;

    let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        sha256(&r.bytes().await.unwrap()),
        digest,
        "the stall is not seen"
    );
    let resumed = upstream
        .seen()
        .into_iter()
        .filter_map(|s| s.range)
        .collect::<Vec<_>>();
    assert_eq!(resumed, [format!("bytes={MIB}-")]);
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_upstream_is_cut_by_the_read_timeout_and_nothing_is_cached() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(4 * MIB, 1));
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    // Every body stalls at the same byte, the resumed ones too.
    upstream.faults().stall = Some(Break::at(MIB));
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| {
            u.read_timeout = Duration::from_millis(500);
            u.resume_attempts = 1;
        })
    })
    .await;
    let path = format!("/v2/library/app/blobs/{digest}");

    let started = Instant::now();
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 200, "headers go out before the stall");
    assert!(r.bytes().await.is_err(), "the body must be cut short");
    // Two read timeouts (the body and its one resume) and the wait in between.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(!wharf.has_blob(&digest));
    assert_eq!(upstream.count("GET", "/blobs/"), 2);

    // A manifest that never comes: a 504, as fast.
    upstream.faults().manifest_delay = Some(Duration::from_secs(10));
    let started = Instant::now();
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(2));

    upstream.faults().stall = None;
    upstream.faults().manifest_delay = None;
    let r = wharf.get(&path).await;
    assert_eq!(r.headers()["x-wharf-cache"], "miss");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn wharf_starts_and_serves_its_cache_while_the_upstream_is_down() {
    let upstream = FakeRegistry::start().await;
    let blob = upstream.add_blob(random_bytes(100_000, 2));
    let body = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{blob}"}}]}}"#);
    let manifest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &body);
    let ttl = Duration::from_secs(60);
    let wharf = Wharf::start(&upstream, |c| c.cache.tag_ttl = ttl).await;
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
    let r = wharf.get(&format!("/v2/library/app/blobs/{blob}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), blob);
    let cache = wharf.stop().await;

    // The tag expired and cannot be revalidated: it is served stale from the tag files.

    let mut config = config(&upstream, cache.path());
    config.cache.tag_ttl = ttl;
    upstream.stop().await;
    let wharf = Wharf::start_with(config, cache).await;
    wharf.clock.advance(ttl);
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-wharf-cache"], "stale");
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    assert_eq!(r.text().await.unwrap(), body);
    let r = wharf
        .get(&format!("/v2/library/app/manifests/{manifest}"))
        .await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    let r = wharf.get(&format!("/v2/library/app/blobs/{blob}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(sha256(&r.bytes().await.unwrap()), blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cache_that_takes_no_writes_streams_from_the_upstream_and_recovers() {
    let upstream = FakeRegistry::start().await;
    let good = upstream.add_blob(random_bytes(2 * MIB, 3));
    let corrupt = upstream.add_blob(random_bytes(MIB, 4));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    // A file where the temp directory should be: every write fails, even for root.
    let tmp = wharf.cache.path().join("tmp");
    std::fs::remove_dir(&tmp).unwrap();
    std::fs::write(&tmp, b"not a directory").unwrap();

    let r = wharf.get(&format!("/v2/library/x/blobs/{good}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(2 * MIB as u64));
    assert_eq!(
        sha256(&r.bytes().await.unwrap()),
        good,
        "served whole, from the upstream"
    );
    assert!(!wharf.has_blob(&good));
    let ready: serde_json::Value = wharf.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["cache"]["writable"], false);
    assert_eq!(ready["cache"]["condition"], "failing");
    assert_eq!(wharf.metric("wharf_cache_writable", &[]).await, 0.0);
    assert_eq!(
        wharf
            .metric("wharf_cache_bypass_total", &["reason=\"unwritable\""])
            .await,
        1.0
    );

    // Passed through, bytes are still verified: a bad body is cut short.
    upstream.faults().flip_byte = true;
    let r = wharf.get(&format!("/v2/library/x/blobs/{corrupt}")).await;
    assert!(r.bytes().await.is_err());
    assert_eq!(
        wharf.metric("wharf_digest_mismatches_total", &[]).await,
        1.0
    );
    upstream.faults().flip_byte = false;

    // The directory is back: caching resumes at the first request after the next probe
    // (requests until then are still served, from the upstream).
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            let r = wharf.get(&format!("/v2/library/x/blobs/{good}")).await;
            assert_eq!(sha256(&r.bytes().await.unwrap()), good);
            wharf.metric("wharf_cache_writable", &[]).await == 1.0
        })
        .await,
        "caching never resumed"
    );
    let r = wharf.get(&format!("/v2/library/x/blobs/{good}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), good);
    assert!(wharf.settled(&good).await);
    assert_eq!(wharf.metric("wharf_cache_writable", &[]).await, 1.0);
    let r = wharf.get(&format!("/v2/library/x/blobs/{good}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
}
