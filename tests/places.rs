//! Places under an upstream's `max_fetches`: no request waits for one while it holds one, so
//! fills, segments, resumes and side fetches can never hold each other up, however few places
//! there are.

use std::time::Duration;

use futures_util::future::join_all;

use crate::cold::{added_segments, get_range, get_whole, ranged_gets, segmenting, ADDED_SEGMENTS};
use crate::common::{
    each_upstream, eventually, multipart, random_bytes, sha256, Break, FakeRegistry, Hold, Wharf,
    MIB,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_large_fill_takes_only_the_places_that_are_free() {
    for places in 1..=3 {
        let upstream = FakeRegistry::start().await;
        let blob = random_bytes(8 * MIB, 40 + places as u64);
        let digest = upstream.add_blob(blob.clone());
        let hold = Hold::after(MIB);
        upstream.faults().hold = Some(hold.clone());
        let wharf = segmenting(&upstream, places).await;
        let whole = get_whole(&wharf, &digest);
        // With one place there is none for a segment; with two, one; with three, the two
        // the blob is worth.
        let segments = (places - 1).min(2);
        if segments > 0 {
            let added = added_segments(&upstream, segments).await;
            assert!(
                added
                    .iter()
                    .all(|range| ADDED_SEGMENTS.contains(&range.as_str())),
                "{added:?}"
            );
        }
        hold.open();
        let body = tokio::time::timeout(Duration::from_secs(20), whole)
            .await
            .unwrap_or_else(|_| panic!("max_fetches = {places}: the blob within 20 s"))
            .unwrap()
            .unwrap();
        assert_eq!(sha256(&body), digest, "max_fetches = {places}");
        assert_eq!(ranged_gets(&upstream).len(), segments);
        assert!(upstream.blob_streams().most() <= places);
        assert!(wharf.settled(&digest).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_slow_large_fills_share_eight_places() {
    const FILLS: usize = 32;
    let upstream = FakeRegistry::start().await;
    // About 6 MB/s per connection: slow enough that every fill wants segments.
    upstream.faults().chunk_delay = Some(Duration::from_millis(10));
    let digests: Vec<_> = (0..FILLS)
        .map(|n| upstream.add_blob(random_bytes(6 * MIB, 100 + n as u64)))
        .collect();
    let wharf = segmenting(&upstream, 8).await;
    let gets = digests.iter().map(|digest| {
        let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
        let client = wharf.client.clone();
        async move { client.get(url).send().await.unwrap().bytes().await.unwrap() }
    });
    let bodies = tokio::time::timeout(Duration::from_secs(90), join_all(gets))
        .await
        .expect("32 fills through 8 places within 90 s");
    for (body, digest) in bodies.iter().zip(&digests) {
        assert_eq!(&sha256(body), digest);
    }
    let most = upstream.blob_streams().most();
    assert!(most <= 8, "{most} GETs at once under max_fetches = 8");
    for digest in &digests {
        assert!(wharf.settled(digest).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_range_answer_with_more_far_parts_than_places_survives_a_resume() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(8 * MIB, 28);
    let digest = upstream.add_blob(blob.clone());
    // The fill is held at 1 MiB, then cut once at byte 1,280,000 and resumed.
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    upstream.faults().cut = Some(Break::at(1_280_000).times(1));
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| u.max_fetches = 2);
    })
    .await;
    // The fill starts, and is held.
    let r = get_range(&wharf, &digest, "bytes=0-1").await;
    assert_eq!(r.bytes().await.unwrap(), blob.slice(0..2));
    // The first part is near enough to wait for the fill, and lies across the cut, so it
    // waits for the resume; eight far ones will be side-fetched (one place is left beside the
    // fill's), each when its turn comes.
    let mut ranges = vec!["1250000-1299999".to_owned()];
    ranges.extend((0..8).map(|k| {
        let start = 4 * MIB + k * 512 * 1024;
        format!("{start}-{}", start + 999)
    }));
    let r = get_range(&wharf, &digest, &format!("bytes={}", ranges.join(","))).await;
    assert_eq!(r.status(), 206);
    let content_type = r.headers()["content-type"].to_str().unwrap().to_owned();
    // The answer's parts are decided; now the fill goes on, breaks and resumes.
    hold.open();
    let body = tokio::time::timeout(Duration::from_secs(20), r.bytes())
        .await
        .expect("the whole answer within 20 s")
        .unwrap();
    let parts = multipart::parse(&content_type, &body).unwrap();
    assert_eq!(parts.len(), 9);
    for part in &parts {
        assert!(part.bytes == blob[part.first as usize..=part.last as usize]);
    }
    assert_eq!(
        wharf
            .metric("wharf_upstream_resumes_total", &["result=\"resumed\""])
            .await,
        1.0
    );
    assert!(wharf.settled(&digest).await);
    assert!(upstream.blob_streams().most() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_stops_reading_a_side_fetch_gives_its_place_back() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(128 * MIB, 29);
    let digest = upstream.add_blob(blob.clone());
    let other = random_bytes(2 * MIB, 30);
    let other_digest = upstream.add_blob(other.clone());
    // The large blob's fill is held at 1 MiB, its place taken all along.
    let hold = Hold::after(MIB).only(&digest);
    upstream.faults().hold = Some(hold.clone());
    let wharf = Wharf::start(&upstream, |c| {
        c.cache.side_fetch_max = wharf::config::Size(64 * MIB as u64);
        each_upstream(c, |u| {
            u.max_fetches = 2;
            u.paused_client_timeout = Duration::from_secs(1);
        });
    })
    .await;
    let r = get_range(&wharf, &digest, "bytes=0-1").await;
    assert_eq!(r.bytes().await.unwrap(), blob.slice(0..2));
    // A far range is side-fetched in the second place; its client reads one chunk and stops,
    // with 64 MiB still to come: more than the sockets between them buffer.
    let (first, last) = (32 * MIB, 96 * MIB - 1);
    let mut paused = get_range(&wharf, &digest, &format!("bytes={first}-{last}")).await;
    assert_eq!(paused.status(), 206);
    let mut received = paused.chunk().await.unwrap().unwrap().to_vec();
    // Another blob needs a place: the paused client's comes back within the timeout (the
    // idle watchdog would take 120 s).
    let body = tokio::time::timeout(Duration::from_secs(15), get_whole(&wharf, &other_digest))
        .await
        .expect("the other blob within 15 s, while a client holds a side fetch unread")
        .unwrap()
        .unwrap();
    assert_eq!(body, other);
    assert_eq!(
        wharf
            .metric("wharf_upstream_paused_releases_total", &[])
            .await,
        1.0
    );
    // The paused client reads on: the rest of its range comes from the fill.
    hold.open();
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = paused.chunk().await.unwrap() {
            received.extend_from_slice(&chunk);
        }
    });
    rest.await.expect("the rest of the range within 30 s");
    assert!(received == blob[first..=last]);
    assert!(wharf.settled(&digest).await);
    // (The fake counts a body until it notices its connection closed, a moment after wharf let
    // go of it: its peak may exceed the places, so what is checked is that nothing is left.)
    assert!(
        eventually(Duration::from_secs(10), || async {
            upstream.blob_streams().now() == 0
        })
        .await
    );
}
