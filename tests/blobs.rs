//! Blob pulls through a real wharf: single flight, verification, aborts, ranges.

use std::time::Duration;

use futures_util::StreamExt;

use crate::common::{
    each_upstream, eventually, multipart, random_bytes, sha256, Break, FakeRegistry, Hold, Wharf,
    MIB,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_cold_clients_cause_one_upstream_get() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(64 * MIB, 1);
    let digest = upstream.add_blob(blob.clone());
    // The body waits until every client has joined the fill: none can arrive after it ended.
    let hold = Hold::after(0);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (client, url) = (
                wharf.client.clone(),
                wharf.url(&format!("/v2/library/x/blobs/{digest}")),
            );
            tokio::spawn(async move {
                let r = client.get(url).send().await.unwrap();
                assert_eq!(r.status(), 200);
                assert_eq!(r.content_length(), Some(64 * MIB as u64));
                sha256(&r.bytes().await.unwrap())
            })
        })
        .collect();
    assert!(
        wharf
            .metric_reaches("wharf_cache_results_total", &["blob", "coalesced"], 15.0)
            .await,
        "every client joined the one fill"
    );
    assert_eq!(
        wharf
            .metric("wharf_cache_results_total", &["blob", "miss"])
            .await,
        1.0
    );
    hold.open();
    for c in futures_util::future::join_all(clients).await {
        assert_eq!(c.unwrap(), digest);
    }
    eprintln!("16 x 64 MiB cold fan-in: {:?}", started.elapsed());
    // One fill, fetched in segments: each byte came from the upstream once (give or take the
    // chunk in flight when the first GET stops at the second segment).
    let upstream_bytes = wharf.metric("wharf_upstream_bytes_total", &[]).await;
    assert!(
        upstream_bytes >= blob.len() as f64 && upstream_bytes <= (blob.len() + MIB) as f64,
        "{upstream_bytes} upstream bytes for a blob of {}",
        blob.len()
    );
    let fill_gets = upstream.count("GET", "/blobs/");
    assert_eq!(
        wharf
            .metric("wharf_upstream_requests_total", &["kind=\"blob\""])
            .await,
        fill_gets as f64
    );
    assert_eq!(
        wharf
            .metric("wharf_cache_results_total", &["blob", "coalesced"])
            .await,
        15.0
    );
    assert!(wharf.settled(&digest).await);

    // Warm: served from disk, no upstream traffic.
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(upstream.count("GET", "/blobs/"), fill_gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fill_completes_after_every_client_hangs_up() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 2);
    let digest = upstream.add_blob(blob);
    // The first 64 KiB go out, then the body waits until every client has hung up.
    let hold = Hold::after(64 * 1024);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for _ in 0..3 {
        let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
        let mut body = r.bytes_stream();
        let first = body.next().await.unwrap().unwrap();
        assert!(!first.is_empty());
        drop(body); // hang up mid-way
    }
    assert_eq!(
        wharf
            .metric("wharf_cache_results_total", &["blob", "coalesced"])
            .await,
        2.0,
        "all three joined the one fill"
    );
    assert!(!wharf.has_blob(&digest));
    hold.open();
    assert!(
        eventually(Duration::from_secs(20), || async {
            wharf.has_blob(&digest)
        })
        .await,
        "the fill should finish and commit with no client left"
    );
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

/// Reads a whole response; `Err` when the connection was cut before the declared length.
async fn read_all(r: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    Ok(r.bytes().await?.to_vec())
}

/// Starts `n` clients of one blob, waits until they have all joined one fill, then lets the
/// upstream body go on; each client's whole body, or its error.
async fn clients_of_one_fill(
    wharf: &Wharf,
    hold: &Hold,
    digest: &str,
    n: usize,
) -> Vec<Result<Vec<u8>, reqwest::Error>> {
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (
                wharf.client.clone(),
                wharf.url(&format!("/v2/library/x/blobs/{digest}")),
            );
            tokio::spawn(async move { read_all(client.get(url).send().await?).await })
        })
        .collect();
    assert!(
        wharf
            .metric_reaches(
                "wharf_cache_results_total",
                &["blob", "coalesced"],
                (n - 1) as f64
            )
            .await,
        "every client joined the one fill"
    );
    hold.open();
    let mut bodies = Vec::new();
    for client in clients {
        bodies.push(client.await.unwrap());
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_cut_midway_is_resumed_for_every_client() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 3);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().cut = Some(Break::at(2 * MIB).times(1));
    let hold = Hold::after(0);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for body in clients_of_one_fill(&wharf, &hold, &digest, 4).await {
        assert_eq!(sha256(&body.expect("the cut is not seen")), digest);
    }
    let ranges: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .map(|s| s.range)
        .collect();
    // From where the bytes that arrived end: those in flight at the cut may be lost.
    let resumed_from = match &ranges[..] {
        [None, Some(range)] => range
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|from| from.parse::<usize>().ok()),
        _ => None,
    };
    assert!(
        resumed_from.is_some_and(|from| from > 0 && from <= 2 * MIB),
        "one GET, then the rest from where it broke: {ranges:?}"
    );
    assert!(wharf.settled(&digest).await, "the resumed fill is cached");
    assert_eq!(
        wharf
            .metric("wharf_upstream_resumes_total", &["result=\"resumed\""])
            .await,
        1.0
    );
    // Every byte came once.
    assert_eq!(
        wharf.metric("wharf_upstream_bytes_total", &[]).await,
        blob.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_answered_with_the_whole_blob_skips_what_was_written() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(3 * MIB, 13);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().cut = Some(Break::at(MIB + 5).times(1));
    upstream.faults().ignore_ranges = true;
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(sha256(&read_all(r).await.unwrap()), digest);
    assert_eq!(upstream.count("GET", "/blobs/"), 2);
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_that_outlives_the_resumes_aborts_clients_and_caches_nothing() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(4 * MIB, 3));
    // Every body breaks at the same byte: the resumes bring nothing.
    upstream.faults().cut = Some(Break::at(2 * MIB));
    let wharf = Wharf::start(&upstream, |c| each_upstream(c, |u| u.resume_attempts = 2)).await;

    // Either the headers went out before the cut, and the body is then cut short, or the cut
    // came first, and the answer is an error. Never a complete-looking body.
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    if r.status() == 200 {
        assert!(read_all(r).await.is_err(), "the response must be aborted");
    } else {
        assert_eq!(r.status(), 503, "the upstream connection broke");
    }
    assert!(!wharf.has_blob(&digest));
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        3,
        "the first GET and two resumes"
    );
    assert_eq!(
        wharf
            .metric("wharf_upstream_resumes_total", &["result=\"gave_up\""])
            .await,
        1.0
    );

    upstream.faults().cut = None;
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "miss", "a fresh fill starts");
    assert_eq!(sha256(&read_all(r).await.unwrap()), digest);
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_then_a_flipped_byte_aborts_every_client_and_caches_nothing() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(4 * MIB, 14));
    upstream.faults().cut = Some(Break::at(MIB).times(1));
    // The byte in the middle, after the cut: only the resumed bytes are wrong.
    upstream.faults().flip_byte = true;
    let hold = Hold::after(0);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    for body in clients_of_one_fill(&wharf, &hold, &digest, 3).await {
        assert!(body.is_err(), "a resumed body that does not verify is cut");
    }
    assert!(
        wharf
            .metric_reaches("wharf_digest_mismatches_total", &[], 1.0)
            .await
    );
    assert!(wharf.fills_done().await);
    assert!(!wharf.has_blob(&digest));
    assert_eq!(upstream.count("GET", "/blobs/"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_byte_aborts_clients_is_counted_and_not_cached() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(3 * MIB, 4));
    upstream.faults().flip_byte = true;
    // The body waits until both clients have joined the one fill.
    let hold = Hold::after(0);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let path = format!("/v2/library/x/blobs/{digest}");
    let both = tokio::spawn({
        let (client, url) = (wharf.client.clone(), wharf.url(&path));
        async move {
            let (a, b) = tokio::join!(client.get(&url).send(), client.get(&url).send());
            (read_all(a.unwrap()).await, read_all(b.unwrap()).await)
        }
    });
    assert!(
        wharf
            .metric_reaches("wharf_cache_results_total", &["blob", "coalesced"], 1.0)
            .await
    );
    hold.open();
    let (a, b) = both.await.unwrap();
    assert!(a.is_err());
    assert!(b.is_err());
    assert!(!wharf.has_blob(&digest));
    // Counted once the fill has its verdict, just after the readers were cut off.
    assert!(
        wharf
            .metric_reaches("wharf_digest_mismatches_total", &[], 1.0)
            .await
    );
    assert!(wharf.fills_done().await);

    upstream.faults().flip_byte = false;
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(sha256(&read_all(r).await.unwrap()), digest);
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranges_on_cached_and_in_flight_blobs() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 5);
    let digest = upstream.add_blob(blob.clone());
    // The first 64 KiB go out, then the fill waits for the test.
    let hold = Hold::after(64 * 1024);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));

    // Start a fill, then ask for a range of what it has while it is still running.
    let full = tokio::spawn(wharf.client.get(&url).send());
    assert!(
        eventually(Duration::from_secs(10), || async { hold.reached() == 1 }).await,
        "the fill started"
    );
    let r = wharf
        .client
        .get(&url)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 100-199/{}", blob.len())
    );
    assert_eq!(r.headers()["x-wharf-cache"], "coalesced");
    assert_eq!(r.bytes().await.unwrap(), blob.slice(100..200));
    hold.open();
    let full = full.await.unwrap().unwrap();
    assert_eq!(full.bytes().await.unwrap(), blob);

    // Cached: suffix, open-ended and unsatisfiable ranges.
    let r = wharf
        .client
        .get(&url)
        .header("range", "bytes=-10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), blob.slice(blob.len() - 10..));
    let r = wharf
        .client
        .get(&url)
        .header("range", format!("bytes={}-", blob.len() - 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), blob.slice(blob.len() - 3..));
    let r = wharf
        .client
        .get(&url)
        .header("range", format!("bytes={}-", blob.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", blob.len())
    );
    assert!(r.text().await.unwrap().contains("RANGE_INVALID"));
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn head_and_unknown_blobs() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(1000, 6));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let r = wharf
        .client
        .head(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "1000");
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());

    let missing = sha256(b"missing");
    let r = wharf.get(&format!("/v2/library/x/blobs/{missing}")).await;
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("BLOB_UNKNOWN"));
    // The failed fill is forgotten: asking again asks the upstream again.
    let r = wharf.get(&format!("/v2/library/x/blobs/{missing}")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(upstream.count("GET", &missing), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bytes_of_a_stalled_fill_reach_clients() {
    // The upstream sends the first 100,000 bytes, then nothing: what arrived is readable, a
    // range inside it is answered whole, and the full response waits for the rest.
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 8);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().stall = Some(Break::at(100_000));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));

    let r = wharf.client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut got = 0;
    while got < 65_536 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("bytes that arrived are passed on without waiting for more")
            .unwrap()
            .unwrap();
        got += chunk.len();
    }

    let r = tokio::time::timeout(
        Duration::from_secs(5),
        wharf
            .client
            .get(&url)
            .header("range", "bytes=1000-1999")
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(r.status(), 206);
    let range = tokio::time::timeout(Duration::from_secs(5), r.bytes())
        .await
        .expect("a range that ends before the stall is answered now")
        .unwrap();
    assert_eq!(range, blob.slice(1000..2000));
}

#[tokio::test]
async fn an_empty_blob_is_served_and_cached() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(bytes::Bytes::new());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/x/blobs/{digest}");
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "0");
    assert!(r.bytes().await.unwrap().is_empty());
    assert!(wharf.settled(&digest).await);
    assert!(wharf.has_blob(&digest));
    let r = wharf.get(&path).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(r.headers()["content-length"], "0");
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test]
async fn an_empty_body_for_a_non_empty_digest_is_an_error() {
    // Nothing can be held back of an empty body: the answer must wait for the verdict.
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(1000, 9));
    upstream.faults().truncate_blobs_to = Some(0);
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 502);
    assert!(!wharf.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cached_blobs_are_whole_over_http1_keep_alive_and_h2c() {
    // Over HTTP/1, cached bytes leave by sendfile, in pieces that are not aligned with the
    // blob; over HTTP/2 they are framed by hyper. Both must give the exact bytes, on
    // connections that carry other responses before and after.
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(5 * MIB + 12_345, 10);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/x/blobs/{digest}");
    assert_eq!(wharf.get(&path).await.bytes().await.unwrap(), blob);
    assert!(wharf.settled(&digest).await);

    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for (client, version) in [
        (h1, reqwest::Version::HTTP_11),
        (h2, reqwest::Version::HTTP_2),
    ] {
        for _ in 0..2 {
            let r = client.get(wharf.url("/v2/")).send().await.unwrap();
            assert_eq!(r.version(), version);
            assert_eq!(r.text().await.unwrap(), "{}");
            let r = client.get(wharf.url(&path)).send().await.unwrap();
            assert_eq!(r.headers()["x-wharf-cache"], "hit");
            assert!(r.bytes().await.unwrap() == blob, "{version:?}: whole blob");
            let r = client
                .get(wharf.url(&path))
                .header("range", "bytes=1-3000000")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            assert!(
                r.bytes().await.unwrap() == blob.slice(1..3_000_001),
                "{version:?}: range"
            );
        }
    }
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_joining_late_reads_what_the_fill_already_wrote() {
    // The fill is megabytes ahead when the second client arrives: its first bytes are no longer
    // in the fill's memory window and are sent from the temp file.
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(16 * MIB, 11);
    let digest = upstream.add_blob(blob.clone());
    // 12 MiB go out, then the fill waits until the late client has read them.
    let ahead = 12 * MIB;
    let hold = Hold::after(ahead);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let first = tokio::spawn(wharf.client.get(&url).send());
    assert!(
        eventually(Duration::from_secs(20), || async {
            hold.reached() == 1
                && wharf.metric("wharf_upstream_bytes_total", &[]).await == ahead as f64
        })
        .await,
        "the fill got {ahead} bytes ahead"
    );
    let late = wharf.client.get(&url).send().await.unwrap();
    assert_eq!(late.headers()["x-wharf-cache"], "coalesced");
    let mut body = late.bytes_stream();
    let mut received = Vec::new();
    while received.len() < ahead {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("what the fill wrote is served without waiting for more")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    assert!(received[..ahead] == blob[..ahead]);
    hold.open();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(sha256(&received), digest);
    let first = first.await.unwrap().unwrap();
    assert_eq!(sha256(&first.bytes().await.unwrap()), digest);
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

/// The zero-copy path is the one taken, and it sends the right bytes: a large cached blob
/// reaches an HTTP/1 client whole, with its digest, and its bytes were counted as sent by
/// `sendfile`. This pins what `server/sendfile.rs` rests on: should hyper ever copy a body
/// chunk instead of handing it to the socket as it is, the placeholders' zeros would arrive
/// instead of the blob, and nothing would be counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_blobs_reach_the_socket_by_sendfile() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(16 * MIB, 41);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/app/blobs/{digest}");
    let first = wharf.get(&path).await.bytes().await.unwrap();
    assert_eq!(sha256(&first), digest);
    assert!(wharf.settled(&digest).await);

    let sent_before = wharf
        .metric("wharf_file_range_bytes_total", &["how=\"sendfile\""])
        .await;
    let r = wharf.get(&path).await;
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), blob.len());
    assert_eq!(sha256(&body), digest, "the bytes sent are the blob's");
    let by_sendfile = wharf
        .metric("wharf_file_range_bytes_total", &["how=\"sendfile\""])
        .await
        - sent_before;
    // The blob was just written, so the page cache holds it: all of it, or nearly, goes by
    // sendfile (a range the kernel dropped meanwhile is read and sent instead).
    assert!(
        by_sendfile >= (blob.len() / 2) as f64,
        "only {by_sendfile} of {} bytes went by sendfile",
        blob.len()
    );
}

async fn ranged(wharf: &Wharf, url: &str, range: &str) -> reqwest::Response {
    wharf
        .client
        .get(url)
        .header("range", range)
        .send()
        .await
        .unwrap()
}

/// The parts of a `206 multipart/byteranges` answer, read by the tests' own reader, after
/// checking that the declared length is the body's.
async fn parts_of(r: reqwest::Response) -> Vec<multipart::Part> {
    assert_eq!(r.status(), 206);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(r.headers().get("content-range").is_none());
    let declared = r
        .content_length()
        .expect("a multipart answer has a Content-Length");
    let body = r.bytes().await.unwrap();
    assert_eq!(declared, body.len() as u64);
    multipart::parse(&content_type, &body).unwrap()
}

/// Checks each part's Content-Range against `expected` (inclusive first and last offsets) and
/// its bytes against the blob's.
fn assert_parts(parts: &[multipart::Part], blob: &[u8], expected: &[(u64, u64)]) {
    let got: Vec<(u64, u64)> = parts.iter().map(|p| (p.first, p.last)).collect();
    assert_eq!(got, expected);
    for part in parts {
        assert_eq!(part.complete, blob.len() as u64);
        assert_eq!(
            part.content_type.as_deref(),
            Some("application/octet-stream")
        );
        assert!(
            part.bytes == blob[part.first as usize..=part.last as usize],
            "the bytes of {}-{}",
            part.first,
            part.last
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_range_requests_on_a_cached_blob_get_multipart_byteranges() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(5 * MIB, 51);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    assert_eq!(
        wharf
            .get(&format!("/v2/library/x/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap(),
        blob
    );
    assert!(wharf.settled(&digest).await);
    let size = blob.len() as u64;

    // Small parts, and parts of megabytes that leave by sendfile between the framing.
    let r = ranged(&wharf, &url, "bytes=0-99, 5000-5999, -10").await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_parts(
        &parts_of(r).await,
        &blob,
        &[(0, 99), (5000, 5999), (size - 10, size - 1)],
    );
    let r = ranged(&wharf, &url, "bytes=1-2999999,3000001-").await;
    assert_parts(
        &parts_of(r).await,
        &blob,
        &[(1, 2_999_999), (3_000_001, size - 1)],
    );
    // The same over HTTP/2, where hyper frames the bytes.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(&url)
        .header("range", "bytes=10-19,-3000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_parts(
        &parts_of(r).await,
        &blob,
        &[(10, 19), (size - 3_000_000, size - 1)],
    );

    // Each answer has a boundary of its own.
    let boundary = |r: &reqwest::Response| {
        multipart::boundary(r.headers()["content-type"].to_str().unwrap()).unwrap()
    };
    let (a, b) = (
        ranged(&wharf, &url, "bytes=0-0,2-2").await,
        ranged(&wharf, &url, "bytes=0-0,2-2").await,
    );
    assert_ne!(boundary(&a), boundary(&b));
    assert_eq!(
        wharf
            .metric("wharf_range_requests_total", &["kind=\"multi\""])
            .await,
        5.0
    );
    // Only the blob's bytes count as served, not the framing.
    let served = wharf.metric("wharf_served_bytes_total", &["cache"]).await;
    let before = served;
    let r = ranged(&wharf, &url, "bytes=0-9,20-29").await;
    assert_eq!(parts_of(r).await.len(), 2);
    assert_eq!(
        wharf.metric("wharf_served_bytes_total", &["cache"]).await - before,
        20.0
    );
    assert_eq!(upstream.count("GET", "/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_range_requests_on_a_fill_in_progress() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 52);
    let digest = upstream.add_blob(blob.clone());
    // The first 64 KiB go out, then the fill waits for the test.
    let sent = 64 * 1024;
    let hold = Hold::after(sent);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let full = tokio::spawn(wharf.client.get(&url).send());
    assert!(
        eventually(Duration::from_secs(10), || async {
            hold.reached() == 1
                && wharf.metric("wharf_upstream_bytes_total", &[]).await == sent as f64
        })
        .await,
        "the fill started and sent what it may"
    );

    // Two parts inside what the fill has, one beyond it.
    let r = ranged(&wharf, &url, "bytes=100-199,1000-1999,3000000-3000099").await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["x-wharf-cache"], "coalesced");
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    let declared = r.content_length().unwrap();
    let mut body = r.bytes_stream();
    let mut received = Vec::new();
    let second = &blob[1000..2000];
    while !received.windows(second.len()).any(|w| w == second) {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the parts the fill has are sent without waiting for the rest")
            .unwrap()
            .unwrap();
        received.extend_from_slice(&chunk);
    }
    hold.open();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(declared, received.len() as u64);
    let parts = multipart::parse(&content_type, &received).unwrap();
    assert_parts(
        &parts,
        &blob,
        &[(100, 199), (1000, 1999), (3_000_000, 3_000_099)],
    );
    let full = full.await.unwrap().unwrap();
    assert_eq!(sha256(&full.bytes().await.unwrap()), digest);
    assert!(wharf.settled(&digest).await);
}

#[tokio::test]
async fn overlapping_and_adjacent_ranges_come_merged_and_one_span_is_a_plain_206() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(10_000, 53);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    assert_eq!(
        wharf
            .get(&format!("/v2/library/x/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap(),
        blob
    );
    assert!(wharf.settled(&digest).await);

    // Out of order, overlapping, touching, with empty elements and unsatisfiable specs.
    let r = ranged(
        &wharf,
        &url,
        "bytes=-100, 1050-1199,,0-99,100-199,150-299,1000-1099,20000-",
    )
    .await;
    assert_parts(
        &parts_of(r).await,
        &blob,
        &[(0, 299), (1000, 1199), (9900, 9999)],
    );

    // RFC 9110's non-canonical spellings of one range: one part, so no multipart.
    for range in ["bytes=500-600,601-999", "bytes=500-700,601-999"] {
        let r = ranged(&wharf, &url, range).await;
        assert_eq!(r.status(), 206, "{range}");
        assert_eq!(r.headers()["content-type"], "application/octet-stream");
        assert_eq!(r.headers()["content-range"], "bytes 500-999/10000");
        assert_eq!(r.bytes().await.unwrap(), blob.slice(500..1000));
    }
    assert_eq!(
        wharf
            .metric("wharf_range_requests_total", &["kind=\"single\""])
            .await,
        2.0
    );
    assert_eq!(
        wharf
            .metric("wharf_range_requests_total", &["kind=\"multi\""])
            .await,
        1.0
    );
}

#[tokio::test]
async fn more_parts_than_max_range_parts_get_the_whole_blob() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(10_000, 54);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |c| c.cache.max_range_parts = 2).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));

    let r = ranged(&wharf, &url, "bytes=0-9,20-29,40-49").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "10000");
    assert_eq!(r.bytes().await.unwrap(), blob);
    assert_eq!(
        wharf
            .metric("wharf_range_requests_total", &["kind=\"too_many_parts\""])
            .await,
        1.0
    );
    // Merged, they are within the cap.
    let r = ranged(&wharf, &url, "bytes=0-9,20-29,30-49").await;
    assert_parts(&parts_of(r).await, &blob, &[(0, 9), (20, 49)]);
}

#[tokio::test]
async fn a_range_set_of_nothing_inside_the_blob_gets_416() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(10_000, 55);
    let digest = upstream.add_blob(blob.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    assert_eq!(
        wharf
            .get(&format!("/v2/library/x/blobs/{digest}"))
            .await
            .bytes()
            .await
            .unwrap(),
        blob
    );

    let r = ranged(&wharf, &url, "bytes=10000-,-0, 20000-30000").await;
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */10000");
    assert!(r.text().await.unwrap().contains("RANGE_INVALID"));
    assert_eq!(
        wharf
            .metric("wharf_range_requests_total", &["kind=\"unsatisfiable\""])
            .await,
        1.0
    );
}
