//! Start-up with a large cache: how long rebuilding the index from file metadata takes, and how
//! much memory the index holds per entry.
//!
//!     cargo bench --bench startup [-- ENTRIES]
//!
//! Writes ENTRIES (default 100,000) blob files into a temporary cache directory, then opens it
//! five times and reports the median and best time, and the heap bytes the opened cache keeps
//! per entry (counted by a wrapping allocator, so freed scan buffers do not count). When run as
//! root it also drops the kernel's caches before one more open, for a cold-disk number.

use std::alloc::System;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use wharf::cache::Cache;
use wharf::config::{CacheConfig, Size};
use wharf::metrics::Metrics;
use wharf::oci::Digest;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn populate(root: &Path, entries: usize) {
    for n in 0..entries {
        let digest = Digest::sha256_of(&(n as u64).to_le_bytes());
        let hex = digest.hex();
        let dir = root.join("blobs/sha256").join(&hex[..2]);
        fs::create_dir_all(&dir).unwrap();
        // Sizes vary as real layers do; the index reads only metadata, so contents are small.
        fs::write(dir.join(hex), vec![0u8; n % 4096]).unwrap();
    }
}

fn open(runtime: &tokio::runtime::Runtime, root: &Path) -> (Cache, Duration) {
    let config = CacheConfig {
        dir: root.to_owned(),
        max_size: Size(u64::MAX),
        ..CacheConfig::default()
    };
    let started = Instant::now();
    let cache = runtime
        .block_on(Cache::open(&config, &Metrics::new()))
        .unwrap();
    (cache, started.elapsed())
}

fn drop_kernel_caches() -> bool {
    rustix::fs::sync();
    fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn main() {
    let entries: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    populate(dir.path(), entries);
    eprintln!("wrote {entries} entries in {:?}", started.elapsed());

    let mut times = Vec::new();
    let mut bytes_per_entry = 0.0;
    for _ in 0..5 {
        let region = Region::new(GLOBAL);
        let (cache, elapsed) = open(&runtime, dir.path());
        let stats = region.change();
        let live = stats.bytes_allocated as f64 - stats.bytes_deallocated as f64;
        assert_eq!(runtime.block_on(cache.health()).entries, entries as u64);
        bytes_per_entry = live / entries as f64;
        times.push(elapsed);
        drop(cache);
    }
    times.sort();
    let cold = drop_kernel_caches().then(|| open(&runtime, dir.path()).1);

    println!("start-up with {entries} cached entries (index rebuilt from file metadata):");
    println!(
        "  warm page cache: median {:?}, best {:?} (5 runs)",
        times[2], times[0]
    );
    match cold {
        Some(t) => println!("  cold (kernel caches dropped): {t:?}"),
        None => println!("  cold: not measured (dropping kernel caches needs root)"),
    }
    println!("  index memory: {bytes_per_entry:.0} bytes per entry");
    println!(
        "{{\"bench\":\"startup\",\"entries\":{entries},\"warm_median_ms\":{:.1},\"warm_best_ms\":{:.1},\"cold_ms\":{},\"bytes_per_entry\":{bytes_per_entry:.0}}}",
        times[2].as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        cold.map_or("null".into(), |t| format!("{:.1}", t.as_secs_f64() * 1000.0)),
    );
}
