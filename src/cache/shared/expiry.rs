//! The shared tier's own bound: a size limit and an idle expiry, kept without ever removing a
//! blob another node is reading.
//!
//! S3 keeps no access times, so a node about to read a blob from the bucket first writes an
//! empty marker beside it (`<prefix>used/<algorithm>/<hex>`); the later of the marker's and
//! the blob's modification times is the blob's last use (an upload is a use). An expiry pass
//! lists both and removes what is idle longer than `max_idle`, then the least recently used
//! until the bucket holds at most `max_size`, but never a blob used within [`GRACE`] (far
//! longer than a read of one blob takes), and it reads the marker again right before each
//! delete, so a read that began after the listing keeps its blob. Times are the bucket's own:
//! a pass writes a marker of its own and reads its time back as "now", so the nodes' clocks
//! need not agree with each other or with the store.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use futures_util::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use super::SharedTier;
use crate::cache::maintenance::{age, bytes, Tally};
use crate::oci::{Digest, Verifier};

/// How recently used a blob may be and still be removed: never, within this. A read that
/// began before the listing (the marker says so) is over long before.
pub const GRACE: Duration = Duration::from_secs(15 * 60);

/// A blob in the bucket and its last use.
struct Held {
    digest: Digest,
    size: u64,
    last_use: SystemTime,
}

/// What the bucket holds, as listed.
struct Inventory {
    blobs: Vec<Held>,
    /// Markers whose blob is gone, with their time.
    orphan_markers: Vec<(Path, SystemTime)>,
    /// Objects under `blobs/` not named like a digest (never touched).
    foreign: usize,
}

/// `wharf cache stats --shared`.
#[derive(Debug)]
pub struct SharedStats {
    pub blobs: Tally,
    pub oldest_use: Option<SystemTime>,
    pub newest_use: Option<SystemTime>,
    pub foreign: usize,
    pub max_size: Option<u64>,
    pub max_idle: Duration,
}

/// What an expiry pass removed and kept.
#[derive(Debug, Default)]
pub struct SharedPruned {
    /// Idle longer than `max_idle`.
    pub expired: Tally,
    /// Least recently used, past `max_size`.
    pub evicted: Tally,
    /// Would have gone, but were used within the grace period (or since the listing).
    pub spared: Tally,
    pub kept: Tally,
}

/// `wharf cache verify --shared`.
#[derive(Debug, Default)]
pub struct SharedVerified {
    pub checked: Tally,
    /// Blobs whose bytes did not match their digest, with why; all deleted.
    pub removed: Vec<(Digest, String)>,
}

impl SharedTier {
    fn marker(&self, digest: &Digest) -> Path {
        self.key("used", digest)
    }

    /// Records a use of `digest` before it is read: what keeps an expiry pass off it.
    pub(super) async fn mark_used(&self, digest: &Digest) -> object_store::Result<()> {
        self.store
            .put(&self.marker(digest), PutPayload::new())
            .await
            .map(drop)
    }

    /// The bucket's clock: the time it gives an object written now.
    async fn bucket_now(&self) -> object_store::Result<SystemTime> {
        let clock = Path::from(format!("{}expiry-clock", self.prefix));
        self.store.put(&clock, PutPayload::new()).await?;
        Ok(self.store.head(&clock).await?.last_modified.into())
    }

    async fn inventory(&self) -> object_store::Result<Inventory> {
        let listed = |area: &str| {
            let prefix = Path::from(format!("{}{area}", self.prefix));
            let store = self.store.clone();
            async move {
                let objects: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
                let mut by_digest = HashMap::new();
                let mut foreign = 0;
                for meta in objects {
                    let tail = meta.location.as_ref()[prefix.as_ref().len()..].trim_matches('/');
                    match tail.replacen('/', ":", 1).parse::<Digest>() {
                        Ok(digest) => {
                            by_digest
                                .insert(digest, (meta.location, meta.size, meta.last_modified));
                        }
                        Err(_) => foreign += 1,
                    }
                }
                Ok::<_, object_store::Error>((by_digest, foreign))
            }
        };
        let (blobs, foreign) = listed("blobs").await?;
        let (mut markers, _) = listed("used").await?;
        let blobs = blobs
            .into_iter()
            .map(|(digest, (_, size, modified))| {
                let mut last_use: SystemTime = modified.into();
                if let Some((_, _, used)) = markers.remove(&digest) {
                    last_use = last_use.max(used.into());
                }
                Held {
                    digest,
                    size,
                    last_use,
                }
            })
            .collect();
        Ok(Inventory {
            blobs,
            orphan_markers: markers
                .into_values()
                .map(|(path, _, used)| (path, used.into()))
                .collect(),
            foreign,
        })
    }

    pub async fn stats(&self) -> object_store::Result<SharedStats> {
        let inventory = self.inventory().await?;
        let mut blobs = Tally::default();
        for held in &inventory.blobs {
            blobs.add(held.size);
        }
        Ok(SharedStats {
            blobs,
            oldest_use: inventory.blobs.iter().map(|h| h.last_use).min(),
            newest_use: inventory.blobs.iter().map(|h| h.last_use).max(),
            foreign: inventory.foreign,
            max_size: self.bounds.max_size,
            max_idle: self.bounds.max_idle,
        })
    }

    /// One expiry pass under the tier's bounds (`max_size` overridden if given).
    pub async fn expire(&self, max_size: Option<u64>) -> object_store::Result<SharedPruned> {
        let max_size = max_size.or(self.bounds.max_size).unwrap_or(u64::MAX);
        let now = self.bucket_now().await?;
        let idle_for = |t: SystemTime| now.duration_since(t).unwrap_or_default();
        let mut inventory = self.inventory().await?;
        inventory.blobs.sort_unstable_by_key(|h| h.last_use);
        let mut total: u64 = inventory.blobs.iter().map(|h| h.size).sum();
        let mut report = SharedPruned::default();
        for held in inventory.blobs {
            let idle = idle_for(held.last_use);
            let reason = if idle > self.bounds.max_idle {
                "expired"
            } else if total > max_size {
                "evicted"
            } else {
                report.kept.add(held.size);
                continue;
            };
            if idle < GRACE || self.used_since(&held).await? {
                report.spared.add(held.size);
                continue;
            }
            self.store.delete(&self.path(&held.digest)).await?;
            // The marker last: a blob whose marker outlived it is tidied below, next pass.
            self.store.delete(&self.marker(&held.digest)).await?;
            self.count("delete", reason);
            total -= held.size;
            match reason {
                "expired" => report.expired.add(held.size),
                _ => report.evicted.add(held.size),
            }
        }
        for (marker, used) in inventory.orphan_markers {
            if idle_for(used) > GRACE {
                self.store.delete(&marker).await?;
            }
        }
        self.held.set(total.try_into().unwrap_or(i64::MAX));
        Ok(report)
    }

    /// Whether a node marked `held` as used after it was listed.
    async fn used_since(&self, held: &Held) -> object_store::Result<bool> {
        match self.store.head(&self.marker(&held.digest)).await {
            Ok(meta) => Ok(SystemTime::from(meta.last_modified) > held.last_use),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads every blob back and deletes those whose bytes do not match their digest.
    pub async fn verify(&self) -> object_store::Result<SharedVerified> {
        let mut report = SharedVerified::default();
        for held in self.inventory().await?.blobs {
            let path = self.path(&held.digest);
            let mut body = match self.store.get(&path).await {
                Ok(found) => found.into_stream(),
                // Expired since the listing.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let mut verifier = Verifier::new(held.digest.algorithm());
            while let Some(chunk) = body.try_next().await? {
                verifier.update(&chunk);
            }
            report.checked.add(held.size);
            let actual = verifier.finish();
            if actual != held.digest {
                self.store.delete(&path).await?;
                self.count("delete", "damaged");
                report
                    .removed
                    .push((held.digest, format!("bytes hash to {actual}")));
            }
        }
        Ok(report)
    }
}

impl fmt::Display for SharedStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "blobs       {:>10} objects  {:>12}",
            self.blobs.entries,
            bytes(self.blobs.bytes)
        )?;
        let bound = self.max_size.map_or("none".to_owned(), bytes);
        writeln!(f, "max size    {bound}")?;
        writeln!(
            f,
            "max idle    {}",
            humantime::format_duration(self.max_idle)
        )?;
        writeln!(f, "oldest use  {}", age(self.oldest_use))?;
        writeln!(f, "newest use  {}", age(self.newest_use))?;
        if self.foreign > 0 {
            writeln!(
                f,
                "ignored     {} objects not named like a digest",
                self.foreign
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for SharedPruned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line = |t: Tally| format!("{} objects ({})", t.entries, bytes(t.bytes));
        writeln!(f, "expired {}", line(self.expired))?;
        writeln!(f, "evicted {}", line(self.evicted))?;
        writeln!(f, "spared  {} (in use)", line(self.spared))?;
        writeln!(f, "kept    {}", line(self.kept))
    }
}

impl fmt::Display for SharedVerified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (digest, why) in &self.removed {
            writeln!(f, "deleted {digest}: {why}")?;
        }
        writeln!(
            f,
            "checked {} objects ({}); {} damaged and deleted",
            self.checked.entries,
            bytes(self.checked.bytes),
            self.removed.len()
        )
    }
}
