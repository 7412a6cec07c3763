//! On a filesystem smaller than `max_size`, fills evict only what the disk lacks: room a fill
//! has allocated is counted once, and a length an upstream declares but has not sent evicts no
//! more than a slice past the bytes that came.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;

use crate::common::{eventually, random_bytes, Break, FakeRegistry, Hold, Wharf};

/// A tmpfs of a known size, mounted on a new directory for one test and unmounted after it.
struct SizedDisk {
    dir: tempfile::TempDir,
}

impl SizedDisk {
    /// `None` where mounting is not allowed (not root, or in a container without the right).
    fn mount(size: &str) -> Option<SizedDisk> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then_some(SizedDisk { dir })
    }

    fn free(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.dir.path()).unwrap();
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SizedDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

const MIB: u64 = 1 << 20;

/// A wharf whose cache is on `disk` (with a `max_size` larger than the disk: the filesystem is
/// what runs short), holding `entries` blobs of 4 MiB from `upstream`, each cached and settled.
async fn cache_filled(
    upstream: &FakeRegistry,
    disk: &SizedDisk,
    entries: u64,
) -> (Wharf, Vec<(String, Bytes)>) {
    let cached: Vec<(String, Bytes)> = (0..entries)
        .map(|n| {
            let blob = random_bytes(4 * MIB as usize, 600 + n);
            (upstream.add_blob(blob.clone()), blob)
        })
        .collect();
    let cache = tempfile::tempdir_in(disk.dir.path()).unwrap();
    let wharf = Wharf::start_in(upstream, cache, |c| {
        c.cache.max_size = wharf::config::Size(1 << 30);
    })
    .await;
    for (digest, blob) in &cached {
        let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
        assert_eq!(r.bytes().await.unwrap(), blob);
        assert!(wharf.settled(digest).await);
    }
    (wharf, cached)
}

async fn evicted_bytes(wharf: &Wharf) -> f64 {
    wharf
        .metric(
            "wharf_cache_evicted_bytes_total",
            &["reason=\"disk_space\""],
        )
        .await
}

/// Three fills of `size` bytes each, started together; the upstream holds each after its first
/// 64 KiB, by which time it has claimed its room.
struct FillsHeld {
    fills: Vec<(String, Bytes)>,
    hold: Hold,
    pulls: Vec<tokio::task::JoinHandle<reqwest::Result<Bytes>>>,
}

impl FillsHeld {
    async fn start(upstream: &FakeRegistry, wharf: &Wharf, size: u64) -> FillsHeld {
        let fills: Vec<(String, Bytes)> = (0..3)
            .map(|n| {
                let blob = random_bytes(size as usize, 700 + n);
                (upstream.add_blob(blob.clone()), blob)
            })
            .collect();
        let hold = Hold::after(64 * 1024);
        upstream.faults().hold = Some(hold.clone());
        let pulls = fills
            .iter()
            .map(|(digest, _)| {
                let get = wharf
                    .client
                    .get(wharf.url(&format!("/v2/library/x/blobs/{digest}")));
                tokio::spawn(async move { get.send().await?.bytes().await })
            })
            .collect();
        assert!(eventually(Duration::from_secs(10), || async { hold.reached() == 3 }).await);
        FillsHeld { fills, hold, pulls }
    }

    /// Lets the fills go on: each client gets its blob whole, and each blob is cached.
    async fn finish(self, wharf: &Wharf) {
        self.hold.open();
        for (pull, (digest, blob)) in self.pulls.into_iter().zip(&self.fills) {
            assert_eq!(&pull.await.unwrap().unwrap(), blob);
            assert!(wharf.settled(digest).await, "every fill is cached");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_starting_together_on_a_small_disk_evict_nothing_while_it_has_room() {
    let Some(disk) = SizedDisk::mount("64m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (the test needs root)");
        return;
    };
    let upstream = FakeRegistry::start().await;
    let (wharf, cached) = cache_filled(&upstream, &disk, 10).await;
    // Three fills that fit in what is left, together, with a quarter of it to spare.
    let fills = FillsHeld::start(&upstream, &wharf, disk.free() / 4).await;
    assert_eq!(
        evicted_bytes(&wharf).await,
        0.0,
        "nothing evicted while the disk has room"
    );
    assert!(cached.iter().all(|(digest, _)| wharf.has_blob(digest)));
    fills.finish(&wharf).await;
    assert_eq!(evicted_bytes(&wharf).await, 0.0);
    assert!(cached.iter().all(|(digest, _)| wharf.has_blob(digest)));
    drop(wharf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fills_starting_together_on_a_short_disk_evict_no_more_than_it_lacks() {
    let Some(disk) = SizedDisk::mount("64m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (the test needs root)");
        return;
    };
    let upstream = FakeRegistry::start().await;
    let (wharf, _cached) = cache_filled(&upstream, &disk, 12).await;
    // Three fills that together need 10 MiB more than the disk has free.
    let shortfall = 10 * MIB;
    let size = ((disk.free() + shortfall) / 3) & !4095;
    let shortfall = 3 * size - disk.free();
    FillsHeld::start(&upstream, &wharf, size)
        .await
        .finish(&wharf)
        .await;
    // Entries go whole: the shortfall rounded up to the next 4 MiB entry, no more.
    let evicted = evicted_bytes(&wharf).await as u64;
    assert!(
        evicted >= shortfall && evicted < shortfall + 4 * MIB,
        "evicted {evicted} bytes for a shortfall of {shortfall}"
    );
    drop(wharf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_length_declared_but_not_sent_evicts_no_more_than_a_slice_past_what_came() {
    let Some(disk) = SizedDisk::mount("64m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (the test needs root)");
        return;
    };
    let upstream = FakeRegistry::start().await;
    let (wharf, cached) = cache_filled(&upstream, &disk, 14).await;
    let free = disk.free();
    // Declares 40 MiB, sends 1 MiB, then nothing more.
    let sent = MIB as usize;
    let digest = upstream.add_blob(random_bytes(40 * MIB as usize, 800));
    upstream.faults().stall = Some(Break::at(sent));
    let mut response = wharf
        .client
        .get(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
        .send()
        .await
        .unwrap();
    let mut received = 0;
    while received < sent {
        received += response
            .chunk()
            .await
            .unwrap()
            .expect("the bytes sent")
            .len();
    }
    // The room claimed covers what came and one slice (a 64th of the disk, here 1 MiB) past it,
    // which fits in what was free: nothing is evicted for the 40 MiB declared.
    assert!(free > 2 * MIB, "the test leaves {free} bytes free");
    assert_eq!(evicted_bytes(&wharf).await, 0.0);
    assert!(cached.iter().all(|(digest, _)| wharf.has_blob(digest)));
    assert!(
        disk.free() + 3 * MIB > free,
        "at most a slice past what came is allocated"
    );
    drop(response);
    drop(wharf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_the_disk_cannot_hold_is_served_whole_when_cached_files_went_behind_its_back() {
    let Some(disk) = SizedDisk::mount("64m") else {
        eprintln!("skipped: a tmpfs cannot be mounted here (the test needs root)");
        return;
    };
    let upstream = FakeRegistry::start().await;
    let (wharf, cached) = cache_filled(&upstream, &disk, 12).await;
    // Another program removes the cached files (wharf's books still list them) and fills the
    // disk: evicting what the books list would free nothing.
    for (digest, _) in &cached {
        std::fs::remove_file(crate::common::disk::blob_path(wharf.cache.path(), digest)).unwrap();
    }
    let filler = vec![0u8; (disk.free() - 8 * MIB) as usize];
    std::fs::write(disk.dir.path().join("filler"), filler).unwrap();
    let blob = random_bytes(16 * MIB as usize, 900);
    let digest = upstream.add_blob(blob.clone());
    // Refused before the first byte, so served from the upstream whole, not cut half-way.
    let r = wharf.get(&format!("/v2/library/x/blobs/{digest}")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), blob);
    assert_eq!(
        wharf
            .metric("wharf_cache_bypass_total", &["reason=\"unwritable\""])
            .await,
        1.0
    );
    drop(wharf);
}
