//! Cold blobs, the way lazy and parallel pullers read them: a range far ahead of the fill is
//! fetched upstream on its own and answered before the fill gets there, while the fill carries
//! on and is the only thing cached; a large blob is filled in segments fetched at once.

use std::time::Duration;

use futures_util::StreamExt;

use crate::common::{
    each_upstream, eventually, multipart, random_bytes, sha256, FakeRegistry, Hold, Wharf, MIB,
};

/// The ranged blob GETs the upstream saw, in order.
pub fn ranged_gets(upstream: &FakeRegistry) -> Vec<String> {
    upstream
        .seen()
        .into_iter()
        .filter(|s| s.method == "GET" && s.path.contains("/blobs/"))
        .filter_map(|s| s.range)
        .collect()
}

pub async fn get_range(wharf: &Wharf, digest: &str, range: &str) -> reqwest::Response {
    wharf
        .client
        .get(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
        .header("range", range)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_footer_far_ahead_of_the_fill_is_fetched_on_its_own_and_answered_first() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 21);
    let digest = upstream.add_blob(blob.clone());
    // The fill's body stops at 1 MiB until the test lets it go on: whatever is answered
    // before that was not read from the fill.
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    // The first two bytes come with the fill's first chunk, with the whole length.
    let r = get_range(&wharf, &digest, "bytes=0-1").await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 0-1/{}", blob.len())
    );
    assert_eq!(r.bytes().await.unwrap(), blob.slice(0..2));

    // stargz asks for the last 50,000-byte chunk.
    let footer = blob.len() - 50_000;
    let r = get_range(&wharf, &digest, &format!("bytes={footer}-")).await;
    assert_eq!(r.status(), 206);
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("the footer does not wait for the fill")
        .unwrap();
    assert_eq!(body, blob.slice(footer..));
    assert!(!wharf.has_blob(&digest), "the fill is still held");
    assert_eq!(
        wharf.metric("wharf_fills_in_flight", &[]).await,
        1.0,
        "the fill carries on"
    );
    // One full GET (the fill) and one ranged GET of exactly the footer.
    assert_eq!(
        ranged_gets(&upstream),
        [format!("bytes={footer}-{}", blob.len() - 1)]
    );
    assert_eq!(upstream.count("GET", "/blobs/"), 2);
    assert_eq!(
        wharf
            .metric("wharf_side_fetches_total", &["result=\"fetched\""])
            .await,
        1.0
    );

    hold.open();
    assert!(
        wharf.settled(&digest).await,
        "the fill is verified and cached"
    );
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        2,
        "side bytes are not cached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_footer_of_a_blob_not_here_is_asked_for_beside_the_fill_not_after_it() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 22);
    let digest = upstream.add_blob(blob.clone());
    // The fill's GET gets no answer, not even headers, until the test opens the gate: the
    // blob's length can only come from the range's own answer.
    let gate = Hold::after(0);
    upstream.faults().hold_whole_answers = Some(gate.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let (first, last) = (blob.len() - 50_000, blob.len() - 1);
    let range = format!("bytes={first}-{last}");
    let r = tokio::time::timeout(Duration::from_secs(10), get_range(&wharf, &digest, &range))
        .await
        .expect("the footer answered while the fill's GET has no answer");
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {first}-{last}/{}", blob.len())
    );
    assert_eq!(r.bytes().await.unwrap(), blob.slice(first..));
    // A range past the end is answered up to the end, as a 206 is.
    let r = get_range(&wharf, &digest, &format!("bytes={first}-{}", last + 10)).await;
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {first}-{last}/{}", blob.len())
    );
    assert_eq!(r.bytes().await.unwrap(), blob.slice(first..));
    assert_eq!(gate.reached(), 1, "the fill's GET was sent, and is held");
    assert_eq!(
        ranged_gets(&upstream),
        [
            format!("bytes={first}-{last}"),
            format!("bytes={first}-{}", last + 10)
        ]
    );
    gate.open();
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_the_fill_has_reached_is_served_from_the_fill() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 22);
    let digest = upstream.add_blob(blob.clone());
    let hold = Hold::after(2 * MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    // A client of the whole blob starts the fill; once it has received the bytes of the
    // range, the fill has written them.
    let whole = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    let mut body = whole.bytes_stream();
    let mut received = 0;
    while received < MIB + 100_000 {
        received += body.next().await.unwrap().unwrap().len();
    }
    let r = get_range(&wharf, &digest, "bytes=1048576-1148575").await;
    assert_eq!(r.bytes().await.unwrap(), blob.slice(MIB..MIB + 100_000));
    assert!(ranged_gets(&upstream).is_empty(), "no side fetch");
    hold.open();
    assert!(wharf.settled(&digest).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_side_fetches_allowed_a_far_range_waits_for_the_fill() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 23);
    let digest = upstream.add_blob(blob.clone());
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |c| c.cache.side_fetches_per_blob = 0).await;

    let far = tokio::spawn({
        let client = wharf.client.clone();
        let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
        async move {
            let r = client
                .get(url)
                .header("range", "bytes=3145728-3245727")
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap()
        }
    });
    assert!(
        wharf
            .metric_reaches("wharf_side_fetches_total", &["result=\"bounded\""], 1.0)
            .await
    );
    hold.open();
    assert_eq!(far.await.unwrap(), blob.slice(3 * MIB..3 * MIB + 100_000));
    assert!(ranged_gets(&upstream).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upstream_that_ignores_ranges_leaves_the_range_to_the_fill() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4 * MIB, 24);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().ignore_ranges = true;
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    let far = tokio::spawn({
        let client = wharf.client.clone();
        let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
        async move {
            let r = client
                .get(url)
                .header("range", "bytes=-1000")
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            r.bytes().await.unwrap()
        }
    });
    assert!(
        wharf
            .metric_reaches("wharf_side_fetches_total", &["result=\"fell_back\""], 1.0)
            .await
    );
    hold.open();
    assert_eq!(far.await.unwrap(), blob.slice(blob.len() - 1000..));
    assert!(wharf.settled(&digest).await);
}

/// The segments a fill adds while its first GET is held at 1 MiB of an 8 MiB blob: a quarter
/// second in, the first GET looks slow, and the rest (7 MiB) is split at 5 MiB; the next look,
/// what the first GET has left (4 MiB) is split at 3 MiB; then 2 MiB is too little to split.
pub const ADDED_SEGMENTS: [&str; 2] = ["bytes=3145728-5242879", "bytes=5242880-8388607"];

/// A GET of a whole blob through `wharf`, running on its own: the body, or the error that cut it.
pub fn get_whole(
    wharf: &Wharf,
    digest: &str,
) -> tokio::task::JoinHandle<reqwest::Result<bytes::Bytes>> {
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let client = wharf.client.clone();
    tokio::spawn(async move { client.get(url).send().await?.bytes().await })
}

/// A wharf that fetches blobs of 1 MiB or more in up to 4 segments.
pub async fn segmenting(upstream: &FakeRegistry, max_fetches: usize) -> Wharf {
    Wharf::start(upstream, |c| {
        c.cache.side_fetches_per_blob = 0;
        each_upstream(c, |u| {
            u.segments = 4;
            u.segment_threshold = wharf::config::Size(MIB as u64);
            u.max_fetches = max_fetches;
        })
    })
    .await
}

/// The ranged GETs the upstream saw, once there are `n` of them, sorted.
pub async fn added_segments(upstream: &FakeRegistry, n: usize) -> Vec<String> {
    assert!(
        eventually(Duration::from_secs(10), || async {
            ranged_gets(upstream).len() >= n
        })
        .await,
        "{n} segments were added to the slow fill: {:?}",
        ranged_gets(upstream)
    );
    let mut ranges = ranged_gets(upstream);
    ranges.sort();
    ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_fill_of_a_large_blob_adds_segments_and_is_verified_in_order() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 25);
    let digest = upstream.add_blob(blob.clone());
    // The first GET stops at 1 MiB until the test lets it go on: slow, as a GET through a
    // CDN that limits each connection is. Readers wait for the contiguous prefix.
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = segmenting(&upstream, 0).await;
    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let whole = get_whole(&wharf, &digest);
    assert_eq!(added_segments(&upstream, 2).await, ADDED_SEGMENTS);
    assert_eq!(
        upstream.blob_streams().now(),
        1,
        "only the first GET is held"
    );
    let middle = tokio::spawn({
        let (client, url) = (wharf.client.clone(), url.clone());
        async move {
            let r = client
                .get(url)
                .header("range", "bytes=5000000-5099999")
                .send()
                .await
                .unwrap();
            r.bytes().await.unwrap()
        }
    });
    hold.open();
    assert_eq!(sha256(&whole.await.unwrap().unwrap()), digest);
    assert_eq!(middle.await.unwrap(), blob.slice(5_000_000..5_100_000));
    assert_eq!(ranged_gets(&upstream).len(), 2, "no more segments");
    assert_eq!(upstream.count("GET", "/blobs/"), 3);
    let upstream_bytes = wharf.metric("wharf_upstream_bytes_total", &[]).await;
    assert!(
        upstream_bytes <= (blob.len() + MIB) as f64,
        "{upstream_bytes} upstream bytes"
    );
    assert!(wharf.settled(&digest).await, "verified and cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_byte_in_a_later_segment_fails_the_whole_fill() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(8 * MIB, 26));
    // The byte in the middle (4 MiB) is in the segment from 3 MiB.
    upstream.faults().flip_byte = true;
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = segmenting(&upstream, 0).await;
    let r = get_whole(&wharf, &digest);
    assert_eq!(added_segments(&upstream, 2).await, ADDED_SEGMENTS);
    hold.open();
    assert!(r.await.unwrap().is_err(), "the response is cut");
    assert!(
        wharf
            .metric_reaches("wharf_digest_mismatches_total", &[], 1.0)
            .await
    );
    assert!(wharf.fills_done().await);
    assert!(!wharf.has_blob(&digest));
    assert_eq!(upstream.count("GET", "/blobs/"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_range_request_on_a_cold_blob_side_fetches_its_far_parts() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 27);
    let digest = upstream.add_blob(blob.clone());
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |_| {}).await;

    // A part the fill has, and two far ahead of it, as a lazy puller merges its chunk reads.
    let r = get_range(
        &wharf,
        &digest,
        "bytes=0-99,7000000-7049999,8000000-8049999",
    )
    .await;
    assert_eq!(r.status(), 206);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    let body = tokio::time::timeout(Duration::from_secs(10), r.bytes())
        .await
        .expect("no part waits for the fill")
        .unwrap();
    let parts = multipart::parse(&content_type, &body).unwrap();
    let spans: Vec<_> = parts.iter().map(|p| (p.first, p.last)).collect();
    assert_eq!(
        spans,
        [(0, 99), (7_000_000, 7_049_999), (8_000_000, 8_049_999)]
    );
    for part in &parts {
        assert_eq!(part.complete, blob.len() as u64);
        assert!(part.bytes == blob[part.first as usize..=part.last as usize]);
    }
    assert_eq!(
        ranged_gets(&upstream).len(),
        2,
        "one side fetch per far part"
    );
    assert!(!wharf.has_blob(&digest), "the fill is still held");

    hold.open();
    assert!(wharf.settled(&digest).await);
}
