//! Manifests held in memory for the hot path: they are small and asked for constantly. A copy
//! here is only ever of a verified manifest; the disk entry stays the one the LRU counts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use moka::sync::Cache as MokaCache;

use crate::oci::{Digest, RawManifest};

/// Bytes of manifests kept in memory.
const MANIFEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// A manifest held in memory, and when a use of it was last recorded in the disk index: once a
/// second is enough for eviction order, and spares the hot path the index lock.
struct HotManifest {
    manifest: Arc<RawManifest>,
    recorded_use: AtomicU64,
}

pub struct HotManifests {
    by_digest: MokaCache<Digest, Arc<HotManifest>>,
}

impl Default for HotManifests {
    fn default() -> Self {
        HotManifests {
            by_digest: MokaCache::builder()
                .weigher(|_, m: &Arc<HotManifest>| {
                    u32::try_from(m.manifest.body.len()).unwrap_or(u32::MAX)
                })
                .max_capacity(MANIFEST_MEMORY_BYTES)
                .build(),
        }
    }
}

/// What a look in memory found.
pub struct Found {
    pub manifest: Arc<RawManifest>,
    /// The use should be recorded in the disk index now (the first use in this second).
    pub record_use: bool,
}

impl HotManifests {
    pub fn get(&self, digest: &Digest) -> Option<Found> {
        let hot = self.by_digest.get(digest)?;
        let now = unix_secs();
        let record_use = hot.recorded_use.swap(now, Ordering::Relaxed) != now;
        Some(Found {
            manifest: hot.manifest.clone(),
            record_use,
        })
    }

    pub fn remove(&self, digest: &Digest) {
        self.by_digest.invalidate(digest);
    }

    pub fn insert(&self, manifest: Arc<RawManifest>) {
        let hot = HotManifest {
            manifest,
            recorded_use: AtomicU64::new(unix_secs()),
        };
        self.by_digest
            .insert(hot.manifest.digest.clone(), Arc::new(hot));
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
