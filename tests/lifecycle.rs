//! The cache over its lifetime: bounded by max_size (least recently used first), swept by
//! max_idle, recency kept across restarts, damage never served, maintenance while serving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use wharf::Config;

use crate::common::child::cache_command;
use crate::common::disk::{self, blob_path};
use crate::common::{eventually, random_bytes, sha256, FakeRegistry, Wharf, MIB};

fn max_size(size: &str) -> impl Fn(&mut Config) + '_ {
    move |c| c.cache.max_size = size.parse().unwrap()
}

/// GETs a blob whole and returns its digest and where wharf said it came from.
async fn pull(wharf: &Wharf, digest: &str) -> (String, String) {
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 200, "{digest}");
    let cache = r.headers()["x-wharf-cache"].to_str().unwrap().to_owned();
    (sha256(&r.bytes().await.unwrap()), cache)
}

/// Pulls and waits until the blob is committed and its fill is over (a request in between
/// would still join the finished fill).
async fn pull_and_cache(wharf: &Wharf, digest: &str) {
    assert_eq!(pull(wharf, digest).await.0, digest);
    assert!(wharf.settled(digest).await);
}

#[tokio::test]
async fn least_recently_used_blobs_make_room_and_a_hit_counts_as_a_use() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..4)
        .map(|n| upstream.add_blob(random_bytes(MIB, n)))
        .collect();
    let wharf = Wharf::start(&upstream, max_size("3MiB")).await;
    for d in &blobs[..3] {
        pull_and_cache(&wharf, d).await;
    }
    assert_eq!(pull(&wharf, &blobs[0]).await.1, "hit");
    pull_and_cache(&wharf, &blobs[3]).await;

    assert!(
        !wharf.has_blob(&blobs[1]),
        "the least recently used one went"
    );
    for d in [&blobs[0], &blobs[2], &blobs[3]] {
        assert!(wharf.has_blob(d));
    }
    assert_eq!(
        wharf
            .metric("wharf_cache_evictions_total", &["reason=\"size\""])
            .await,
        1.0
    );
    assert_eq!(
        wharf
            .metric("wharf_cache_evicted_bytes_total", &["reason=\"size\""])
            .await,
        MIB as f64
    );
    assert_eq!(
        wharf.metric("wharf_cache_size_bytes", &[]).await,
        (3 * MIB) as f64
    );
    // Asked again, the evicted blob is fetched again.
    assert_eq!(pull(&wharf, &blobs[1]).await.1, "miss");
    assert_eq!(upstream.count("GET", &blobs[1]), 2);
}

#[tokio::test]
async fn an_entry_larger_than_the_cache_is_served_but_not_cached() {
    let upstream = FakeRegistry::start().await;
    let small = upstream.add_blob(random_bytes(MIB / 2, 1));
    let big = upstream.add_blob(random_bytes(2 * MIB, 2));
    let wharf = Wharf::start(&upstream, max_size("1MiB")).await;
    pull_and_cache(&wharf, &small).await;
    for _ in 0..2 {
        let (digest, source) = pull(&wharf, &big).await;
        assert_eq!(digest, big);
        // A request right after the last byte may still join the finished fill.
        assert!(source == "miss" || source == "coalesced", "{source}");
    }
    assert!(wharf.fills_done().await);
    assert!(!wharf.has_blob(&big));
    assert!(wharf.has_blob(&small), "nothing was evicted for it");
    assert_eq!(
        wharf
            .metric("wharf_cache_bypass_total", &["reason=\"oversize\""])
            .await,
        upstream.count("GET", &big) as f64,
        "each fetch of it counted once"
    );
    // Its temp files are gone too.
    let tmp = std::fs::read_dir(wharf.cache.path().join("tmp")).unwrap();
    assert_eq!(tmp.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_being_read_when_it_is_evicted_stays_readable_to_the_end() {
    let upstream = FakeRegistry::start().await;
    // Larger than loopback socket buffers, so most of it is read from disk after the eviction.
    let first = random_bytes(24 * MIB, 1);
    let a = upstream.add_blob(first.clone());
    let b = upstream.add_blob(random_bytes(24 * MIB, 2));
    let wharf = Wharf::start(&upstream, max_size("24MiB")).await;
    pull_and_cache(&wharf, &a).await;

    let r = wharf.get(&format!("/v2/library/x/blobs/{a}")).await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    let mut body = r.bytes_stream();
    let mut received = body.next().await.unwrap().unwrap().to_vec();
    pull_and_cache(&wharf, &b).await;
    assert!(!wharf.has_blob(&a), "evicted while being read");
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(received.len(), first.len());
    assert!(
        received == first[..],
        "the reader got the whole, right blob"
    );
}

#[tokio::test]
async fn entries_unused_for_max_idle_are_evicted() {
    let upstream = FakeRegistry::start().await;
    let d = upstream.add_blob(random_bytes(1000, 1));
    let wharf = Wharf::start(&upstream, |c| c.cache.max_idle = Duration::from_secs(1)).await;
    pull_and_cache(&wharf, &d).await;
    assert!(
        eventually(Duration::from_secs(10), || async { !wharf.has_blob(&d) }).await,
        "swept after max_idle"
    );
    // The file goes first, then the books are kept: wait for them too.
    assert!(
        wharf
            .metric_reaches("wharf_cache_evictions_total", &["reason=\"idle\""], 1.0)
            .await
    );
    assert!(wharf.metric_reaches("wharf_cache_entries", &[], 0.0).await);
}

#[tokio::test]
async fn recency_survives_a_restart() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..4)
        .map(|n| upstream.add_blob(random_bytes(MIB, 10 + n)))
        .collect();
    let wharf = Wharf::start(&upstream, max_size("3MiB")).await;
    for d in &blobs[..3] {
        pull_and_cache(&wharf, d).await;
    }
    // A use is written to disk (as the file's mtime) at most once per whole second of the
    // clock: wait for the clock to pass into a second after the commits, then use the oldest
    // blob.
    let last_commit = mtime(wharf.cache.path(), &blobs[2]);
    assert!(
        eventually(Duration::from_secs(5), || async {
            whole_seconds(SystemTime::now()) > whole_seconds(last_commit)
        })
        .await
    );
    assert_eq!(pull(&wharf, &blobs[0]).await.1, "hit");
    assert!(
        mtime(wharf.cache.path(), &blobs[0]) > last_commit,
        "the use was written to disk"
    );
    let cache = wharf.stop().await;

    let wharf = Wharf::start_in(&upstream, cache, max_size("3MiB")).await;
    assert_eq!(
        wharf.metric("wharf_cache_entries", &[]).await,
        3.0,
        "the index is rebuilt"
    );
    pull_and_cache(&wharf, &blobs[3]).await;
    assert!(
        !wharf.has_blob(&blobs[1]),
        "the least recently used before the restart"
    );
    assert!(wharf.has_blob(&blobs[0]));
}

fn mtime(cache: &Path, digest: &str) -> SystemTime {
    std::fs::metadata(blob_path(cache, digest))
        .unwrap()
        .modified()
        .unwrap()
}

fn whole_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test]
async fn a_cached_blob_changed_on_disk_is_never_served() {
    let upstream = FakeRegistry::start().await;
    let d = upstream.add_blob(random_bytes(MIB, 1));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    pull_and_cache(&wharf, &d).await;
    let path = blob_path(wharf.cache.path(), &d);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();

    assert_eq!(pull(&wharf, &d).await, (d.clone(), "miss".to_owned()));
    assert_eq!(
        wharf
            .metric("wharf_cache_evictions_total", &["reason=\"invalid\""])
            .await,
        1.0
    );
    assert!(wharf.settled(&d).await);
}

#[tokio::test]
async fn cache_commands_work_while_the_server_runs() {
    let upstream = FakeRegistry::start().await;
    let good = upstream.add_blob(random_bytes(MIB, 1));
    let rotten = upstream.add_blob(random_bytes(MIB, 2));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    pull_and_cache(&wharf, &good).await;
    pull_and_cache(&wharf, &rotten).await;

    let (code, text) = cache_command(wharf.cache.path(), &["stats"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("blobs                2 entries"), "{text}");

    // Bit rot that keeps the size: only re-hashing finds it.
    let path = blob_path(wharf.cache.path(), &rotten);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let (code, text) = cache_command(wharf.cache.path(), &["verify"]);
    assert_eq!(code, Some(1), "verify reports damage with status 1: {text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("1 damaged and removed"), "{text}");
    assert!(!path.exists());
    assert_eq!(
        pull(&wharf, &rotten).await,
        (rotten.clone(), "miss".to_owned())
    );
    // Its commit lands just after the response: wait for it before pruning.
    assert!(wharf.settled(&rotten).await);

    let (code, text) = cache_command(wharf.cache.path(), &["prune", "--max-size", "0"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("removed 2 entries"), "{text}");
    assert_eq!(pull(&wharf, &good).await, (good.clone(), "miss".to_owned()));
}

#[tokio::test]
async fn cache_verify_exits_with_status_1_exactly_when_it_removed_damage() {
    let upstream = FakeRegistry::start().await;
    let blobs = [
        upstream.add_blob(random_bytes(MIB, 3)),
        upstream.add_blob(random_bytes(MIB, 4)),
    ];
    let body = format!(
        r#"{{"schemaVersion":2,"layers":[{{"digest":"{}"}}]}}"#,
        blobs[0]
    );
    let manifest = upstream.add_manifest("library/x", "v1", crate::common::OCI_MANIFEST, &body);
    let wharf = Wharf::start(&upstream, |_| {}).await;
    for d in &blobs {
        pull_and_cache(&wharf, d).await;
    }
    assert_eq!(wharf.get("/v2/library/x/manifests/v1").await.status(), 200);
    let cache = wharf.cache.path();
    let manifest_path = disk::committed(cache, "manifests")
        .into_iter()
        .find(|(digest, _)| *digest == manifest)
        .expect("the manifest is committed")
        .1;

    // Nothing damaged: status 0.
    let (code, text) = cache_command(cache, &["verify"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("checked 3 entries"), "{text}");
    assert!(text.contains("0 damaged and removed"), "{text}");

    // A damaged blob and a damaged manifest: both removed, status 1.
    let rotten_blob = blob_path(cache, &blobs[1]);
    for path in [&rotten_blob, &manifest_path] {
        let mut bytes = std::fs::read(path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        std::fs::write(path, &bytes).unwrap();
    }
    let (code, text) = cache_command(cache, &["verify"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("2 damaged and removed"), "{text}");
    for path in [&rotten_blob, &manifest_path] {
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert!(wharf.has_blob(&blobs[0]), "what was whole stays");

    // The damage is gone: status 0 again.
    let (code, text) = cache_command(cache, &["verify"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("checked 1 entries"), "{text}");
    assert!(text.contains("0 damaged and removed"), "{text}");

    // The server fetches what was removed again.
    let r = wharf
        .get(&format!("/v2/library/x/manifests/{manifest}"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), body);
    assert_eq!(pull(&wharf, &blobs[1]).await.0, blobs[1]);

    // A directory that cannot be verified is a failure of its own (status 2), without a
    // verdict on damage.
    let missing = cache.join("no-such-cache");
    let (code, text) = cache_command(&missing, &["verify"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(!text.contains("damaged and removed"), "{text}");
}

/// Sums the committed files that all existed at one moment: files seen while walking are
/// counted only if they still exist once the walk is over, so a commit landing mid-walk cannot
/// make the total look larger than it ever was.
fn committed_bytes(cache: &Path) -> u64 {
    let mut seen = Vec::new();
    for area in ["blobs", "manifests"] {
        let Ok(algorithms) = std::fs::read_dir(cache.join(area)) else {
            continue;
        };
        for fan in algorithms
            .flatten()
            .flat_map(|a| std::fs::read_dir(a.path()))
            .flatten()
        {
            for file in std::fs::read_dir(fan.unwrap().path()).into_iter().flatten() {
                let file = file.unwrap();
                if let Ok(m) = file.metadata() {
                    seen.push((file.path(), m.len()));
                }
            }
        }
    }
    seen.iter()
        .filter(|(path, _)| path.exists())
        .map(|(_, len)| len)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn churn_far_beyond_max_size_never_passes_it() {
    const MAX: usize = 8 * MIB;
    const BLOB: usize = MIB;
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..48)
        .map(|n| upstream.add_blob(random_bytes(BLOB, 100 + n)))
        .collect();
    let wharf = Arc::new(Wharf::start(&upstream, max_size("8MiB")).await);

    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (wharf, done) = (wharf.clone(), done.clone());
        tokio::spawn(async move {
            let (mut max_gauge, mut max_files, mut samples) = (0f64, 0u64, 0);
            while !done.load(Ordering::Relaxed) {
                max_gauge = max_gauge.max(wharf.metric("wharf_cache_size_bytes", &[]).await);
                let cache = wharf.cache.path().to_owned();
                let files = tokio::task::spawn_blocking(move || committed_bytes(&cache))
                    .await
                    .unwrap();
                max_files = max_files.max(files);
                samples += 1;
            }
            (max_gauge, max_files, samples)
        })
    };
    // 48 MiB of distinct blobs, six times max_size, eight clients at a time.
    futures_util::stream::iter(blobs.clone())
        .for_each_concurrent(8, |d| {
            let wharf = wharf.clone();
            async move { assert_eq!(pull(&wharf, &d).await.0, d) }
        })
        .await;
    // The last commits land just after their responses.
    assert!(wharf.fills_done().await);
    done.store(true, Ordering::Relaxed);
    let (max_gauge, max_files, samples) = sampler.await.unwrap();
    eprintln!(
        "churn: {samples} samples; max committed on disk {max_files} B, index {max_gauge} B, \
         max_size {MAX} B"
    );
    assert!(samples > 10, "the sampler ran ({samples} samples)");
    assert!(
        max_gauge <= MAX as f64,
        "index passed max_size: {max_gauge}"
    );
    assert!(max_files <= MAX as u64, "disk passed max_size: {max_files}");
    let final_bytes = committed_bytes(wharf.cache.path());
    assert_eq!(
        final_bytes as f64,
        wharf.metric("wharf_cache_size_bytes", &[]).await
    );
    assert!(wharf.metric("wharf_cache_evictions_total", &[]).await >= 40.0);
}
