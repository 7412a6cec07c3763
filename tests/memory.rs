//! Memory under load: what fills hold is bounded by the buffer memory counted, whatever size of
//! chunks the upstream sends. Production upstreams speak HTTPS and HTTP/2, whose DATA frames
//! are at most 16 KiB: a fill that gave each frame a buffer of its own held a hundred times its
//! payload.

use std::time::Duration;

use futures_util::future::join_all;

use crate::common::{
    each_upstream, eventually, metric_in, pki, random_bytes, sha256, FakeRegistry, Hold, Wharf, MIB,
};

/// What wharf may hold in fill and reader buffers per fill in flight: the writer's budget
/// (2 MiB), the window of newest bytes (1 MiB), the buffer being filled (512 KiB), and a
/// reader's two buffers; plus the pool's spares (8 MiB) once.
const PER_FILL: usize = 5 * MIB;
const SPARES: usize = 8 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_fills_from_an_http2_upstream_of_tiny_frames_hold_a_bounded_memory() {
    const FILLS: usize = 16;
    let pki = pki::issue("upstream CA");
    let upstream = FakeRegistry::start_https(&pki).await;
    upstream.faults().chunk_sizes = Some((1024, 16 * 1024));
    let blobs: Vec<_> = (0..FILLS)
        .map(|n| random_bytes(8 * MIB, 500 + n as u64))
        .collect();
    let digests: Vec<_> = blobs.iter().map(|b| upstream.add_blob(b.clone())).collect();
    // Every body waits after its first MiB until all sixteen fills are running.
    let hold = Hold::after(MIB);
    upstream.faults().hold = Some(hold.clone());
    let certs = tempfile::tempdir().unwrap();
    let ca_file = pki::write_ca(certs.path(), &pki);
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| u.ca_file = Some(ca_file.clone()))
    })
    .await;

    let gets = digests.iter().map(|digest| {
        let (client, url) = (
            wharf.client.clone(),
            wharf.url(&format!("/v2/library/app/blobs/{digest}")),
        );
        tokio::spawn(async move {
            let r = client.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        })
    });
    let gets: Vec<_> = gets.collect();
    assert!(
        eventually(Duration::from_secs(20), || async {
            hold.reached() == FILLS
        })
        .await,
        "all fills reach the upstream's hold ({} did)",
        hold.reached()
    );

    // Sample the gauge back to back while the fills stream, until every client has its blob
    // (the clients' two-minute deadline bounds the loop).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn({
        let (client, url) = (wharf.client.clone(), wharf.url("/metrics"));
        async move {
            let (mut most, mut samples) = (0usize, 0usize);
            while !*stopped.borrow() {
                let text = client.get(&url).send().await.unwrap().text().await.unwrap();
                let held = metric_in(&text, "wharf_fill_buffer_bytes", &[]) as usize;
                most = most.max(held);
                samples += 1;
            }
            (most, samples)
        }
    });
    hold.open();
    let bodies = tokio::time::timeout(Duration::from_secs(120), join_all(gets))
        .await
        .expect("sixteen 8 MiB blobs within two minutes");
    stop.send_replace(true);
    let (most, samples) = sampler.await.unwrap();
    for (body, digest) in bodies.into_iter().zip(&digests) {
        assert_eq!(&sha256(&body.unwrap()), digest, "the client got the blob");
    }
    assert!(
        upstream
            .seen()
            .iter()
            .filter(|s| s.path.contains("/blobs/"))
            .all(|s| s.version == http::Version::HTTP_2),
        "the fills came over HTTP/2"
    );
    eprintln!("fill buffers: at most {most} bytes held in {samples} samples");
    assert!(samples >= 10, "the gauge was sampled while the fills ran");
    assert!(
        most >= MIB,
        "the gauge counts the fills' buffers (at most {most} bytes)"
    );
    assert!(
        most <= FILLS * PER_FILL + SPARES,
        "{most} bytes held by {FILLS} fills, over the bound of {} MiB",
        (FILLS * PER_FILL + SPARES) / MIB
    );
    // Once the fills are done, what is left is spares.
    assert!(
        eventually(Duration::from_secs(10), || async {
            wharf.metric("wharf_fill_buffer_bytes", &[]).await as usize <= SPARES
        })
        .await,
        "buffers are freed once the fills end"
    );
}
