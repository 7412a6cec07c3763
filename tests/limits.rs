//! What clients may hold of the server: slow and silent connections are cut off, the connection
//! cap holds, oversized heads are refused, idle connections close, and none of it stops wharf
//! from serving everyone else.

use std::io::{ErrorKind, Read};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::child::Process;
use crate::common::{
    config, each_upstream, error_code, eventually, random_bytes, FakeRegistry, Hold, Wharf,
};

/// Reads until the server closes the connection; how long that took, or `None` if it stayed
/// open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut sink = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

/// Whether wharf has closed `stream`, looking without waiting (whatever it sent first is read
/// and dropped).
fn closed_now(mut stream: &std::net::TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits (up to `limit`) until wharf closes `stream`.
async fn eventually_closed(stream: &std::net::TcpStream, limit: Duration) -> bool {
    crate::common::eventually(limit, || std::future::ready(closed_now(stream))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_cut_off_while_everyone_else_is_served() {
    let upstream = FakeRegistry::start().await;
    let header_timeout = Duration::from_secs(5);
    let wharf = Wharf::start(&upstream, |c| {
        c.server.limits.header_timeout = header_timeout
    })
    .await;

    // 150 clients trickle a request head a byte every 100 ms; 50 more send nothing at all.
    const TRICKLING: usize = 150;
    const SILENT: usize = 50;
    let mut slow = Vec::new();
    let mut trickles = Vec::new();
    for i in 0..TRICKLING + SILENT {
        let stream = std::net::TcpStream::connect(wharf.addr).unwrap();
        if i < TRICKLING {
            let writer = stream.try_clone().unwrap();
            writer.set_nonblocking(true).unwrap();
            let mut writer = TcpStream::from_std(writer).unwrap();
            trickles.push(tokio::spawn(async move {
                writer.write_all(b"GET /v2/ HTTP/1.1\r\n").await.unwrap();
                // Bounded: well past the header timeout, by when wharf has cut it off.
                for _ in 0..300 {
                    if writer.write_all(b"X").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }));
        }
        slow.push(stream);
    }

    // Meanwhile, ordinary requests are answered: all of them while every slow client still
    // holds its connection (none has been cut off yet), so none waited for one to go.
    for _ in 0..20 {
        let r = wharf.get("/v2/").await;
        assert_eq!(r.status(), 200);
    }
    let cut_already = slow.iter().filter(|s| closed_now(s)).count();
    assert_eq!(
        cut_already, 0,
        "ordinary requests were answered only after slow clients were cut off"
    );

    // And every slow client is cut off, once it has used up its header timeout.
    for (i, stream) in slow.iter().enumerate() {
        assert!(
            eventually_closed(stream, header_timeout + Duration::from_secs(15)).await,
            "slow client {i} was never cut off"
        );
    }
    for trickle in trickles {
        trickle.await.unwrap();
    }
}

#[tokio::test]
async fn at_the_connection_cap_a_new_client_waits_for_a_slot() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |c| {
        c.server.limits.max_connections = 8;
        c.server.limits.header_timeout = Duration::from_secs(1);
    })
    .await;
    // Eight silent connections take every place; each is cut after its header timeout.
    let silent: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(wharf.addr).unwrap())
        .collect();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        client.get(wharf.url("/v2/")).send(),
    )
    .await
    .expect("the waiting client was never served")
    .unwrap();
    assert_eq!(r.status(), 200);
    // Served only once a place was free: wharf closes a connection before it frees its place,
    // so one of the silent ones must be closed already.
    let freed = silent.iter().filter(|s| closed_now(s)).count();
    assert!(
        freed >= 1,
        "served while all 8 silent connections were open: the cap did not hold"
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_with_431() {
    let upstream = FakeRegistry::start().await;
    let wharf = Wharf::start(&upstream, |c| {
        c.server.limits.max_header_bytes = "16KiB".parse().unwrap()
    })
    .await;
    let r = wharf
        .client
        .get(wharf.url("/v2/"))
        .header("x-padding", "a".repeat(32 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    let r = wharf
        .client
        .get(wharf.url("/v2/"))
        .header("x-padding", "a".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn an_idle_connection_is_closed_but_a_slow_download_is_not() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(1024 * 1024, 7);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |c| {
        c.server.limits.idle_timeout = Duration::from_secs(1);
        c.server.limits.header_timeout = Duration::from_secs(30);
    })
    .await;

    // One request, then silence: closed about a second later.
    let mut stream = TcpStream::connect(wharf.addr).await.unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: wharf\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle connection stays open");
    assert!(
        closed >= Duration::from_millis(900),
        "closed after {closed:?}"
    );

    // A download whose bytes keep moving, if slowly, runs well past the idle timeout.
    upstream.faults().chunk_delay = Some(Duration::from_millis(150));
    let started = Instant::now();
    let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.expect("the slow download completes");
    assert_eq!(body, blob);
    assert!(started.elapsed() > Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_on_wharf_is_not_idle() {
    let upstream = FakeRegistry::start().await;
    let unanswered = random_bytes(256 * 1024, 8);
    let unanswered_digest = upstream.add_blob(unanswered.clone());
    let held = random_bytes(256 * 1024, 9);
    let held_digest = upstream.add_blob(held.clone());
    let large = random_bytes(16 * 1024 * 1024, 10);
    let large_digest = upstream.add_blob(large.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&upstream, &dir.path().join("cache"));
    config.server.limits.idle_timeout = Duration::from_millis(200);
    // Its own process and log, where the watchdog says whom it cut.
    let wharf = Process::start_logging(
        dir.path(),
        &config,
        Duration::from_secs(5),
        "info,wharf::server::connection=debug",
    );
    let path = |digest: &str| wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let client = reqwest::Client::new();
    let r = client.get(path(&large_digest)).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), large);

    // One blob's GET gets no answer from the upstream, the other's body stops at 64 KiB.
    let no_answer = Hold::after(0).only(&unanswered_digest);
    upstream.faults().hold_whole_answers = Some(no_answer.clone());
    let no_bytes = Hold::after(64 * 1024).only(&held_digest);
    upstream.faults().hold = Some(no_bytes.clone());
    let pull = |digest: &str| {
        let get = client.get(path(digest));
        tokio::spawn(async move { get.send().await?.bytes().await })
    };
    let waiting_for_headers = pull(&unanswered_digest);
    let waiting_for_bytes = pull(&held_digest);
    assert!(
        eventually(Duration::from_secs(10), || async {
            no_answer.reached() == 1 && no_bytes.reached() == 1
        })
        .await
    );
    // A client that is idle: it asks for the large cached blob and reads nothing. Quiet since
    // after the two above, it is asked to close at idle_timeout and cut 5 s later; by then the
    // two waiting on wharf would have been cut too, were waiting on wharf idling.
    let mut stalled = TcpStream::connect(wharf.addr).await.unwrap();
    let request = format!("GET /v2/library/x/blobs/{large_digest} HTTP/1.1\r\nHost: wharf\r\n\r\n");
    stalled.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(20), || async {
            wharf
                .log_text()
                .contains("still open after being asked to close; closing")
        })
        .await,
        "the client that reads nothing is cut"
    );
    no_answer.open();
    no_bytes.open();
    assert_eq!(waiting_for_headers.await.unwrap().unwrap(), unanswered);
    assert_eq!(waiting_for_bytes.await.unwrap().unwrap(), held);
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_never_has_more_than_max_fetches_in_flight() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..6).map(|i| random_bytes(512 * 1024, 100 + i)).collect();
    let digests: Vec<_> = blobs.iter().map(|b| upstream.add_blob(b.clone())).collect();
    upstream.faults().chunk_delay = Some(Duration::from_millis(20));
    let wharf = Wharf::start(&upstream, |c| each_upstream(c, |u| u.max_fetches = 2)).await;

    let pulls = digests.iter().map(|digest| {
        let url = wharf.url(&format!("/v2/library/app/blobs/{digest}"));
        let client = wharf.client.clone();
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    let bodies = futures_util::future::join_all(pulls).await;
    assert_eq!(bodies, blobs);
    let most = upstream.blob_streams().most();
    assert_eq!(most, 2, "blob bodies in flight upstream at once");
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let upstream = FakeRegistry::start().await;
    // A token every 2 s: the bucket cannot refill while a few requests are made.
    let wharf = Wharf::start(&upstream, |c| {
        c.server.rate_limit.requests_per_second = 0.5;
        c.server.rate_limit.burst = 5;
    })
    .await;
    for _ in 0..5 {
        assert_eq!(wharf.get("/v2/").await.status(), 200);
    }
    let r = wharf.get("/v2/").await;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=2).contains(&retry_after),
        "a token comes within 2 s: Retry-After {retry_after}"
    );
    assert_eq!(error_code(r).await, "TOOMANYREQUESTS");
    // Health checks are not counted or refused.
    for _ in 0..3 {
        assert_eq!(wharf.get("/healthz").await.status(), 200);
    }
    // Refused requests take no token: polling finds the next one when it comes, and it buys
    // one more request, not two.
    assert!(
        eventually(Duration::from_secs(30), || async {
            wharf.get("/v2/").await.status() == 200
        })
        .await,
        "no token came back"
    );
    assert_eq!(wharf.get("/v2/").await.status(), 429);
}

#[tokio::test]
async fn max_bandwidth_holds_an_upstream_to_its_rate() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(3 * 1024 * 1024, 11);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| u.max_bandwidth = Some("1MiB".parse().unwrap()))
    })
    .await;
    let started = Instant::now();
    let body = wharf
        .get(&format!("/v2/library/app/blobs/{digest}"))
        .await
        .bytes()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(body, blob);
    // One second of bytes is free; the other two take two seconds at 1 MiB/s.
    assert!(
        took >= Duration::from_millis(1800),
        "3 MiB at 1 MiB/s took {took:?}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
