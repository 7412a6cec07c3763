//! The cache, behind one front door: [`Cache`]. Blobs and manifests stored by digest on the
//! local disk, the LRU index that bounds them, shared in-flight fills, manifests held in
//! memory, the tag → digest table, and the disk's health. Knows nothing of HTTP or of the
//! upstream client: a fill is fed bytes by its caller, and a failure of that caller's source
//! comes back to it as it was given ([`SourceFailure`]).
//!
//! Inside, dependencies point one way: `Cache` → `fill` (writers and readers) → `store` (the
//! directory: layout, commit, index, eviction, scan, disk) and `tags`; `memory` and `error`
//! are leaves.

mod control;
mod error;
mod fill;
pub mod images;
pub mod maintenance;
mod memory;
mod parents;
pub mod shared;
mod small_files;
mod store;
mod tags;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::oci::media::Accept;
use crate::oci::{Digest, RawManifest};
pub use error::{check_blob, Error, SourceFailure};
use fill::Fills;
pub use fill::{
    BlobLookup, BlobReader, CachedBlob, Fill, FillPosition, FillWriter, Resume, SegmentWriter,
    TierFeed,
};
pub use images::CachedImage;
use memory::HotManifests;
pub use parents::ListedKey;
use parents::Parents;
use shared::SharedTier;
pub use store::Condition;
use store::{EntryKey, Store};
use tags::TagTable;
pub use tags::{TagKey, Variant};

/// The cache's one front door.
///
/// A lookup falls through the tiers from the fastest down, and the answer says where the
/// caller stands:
///
/// 1. memory (manifests only), then the local disk: a hit is served at once;
/// 2. a fill of the same digest already running: the caller joins it and reads as it grows;
/// 3. otherwise the caller gets a new fill to feed from its source (the upstream; in a cluster
///    the digest's owner). A shared tier below the local disk (an object store several nodes
///    share) slots in here, inside [`Cache::blob`]: on a local miss the cache looks there first
///    and answers [`BlobLookup::FromTier`] with the feed to run; the caller feeds only what no
///    tier holds, or what the tier could not finish.
///
/// Whoever brings bytes in does not vouch for them: every fill is hashed as it is written and
/// committed only once its digest and length match (the fill's writer does that), and
/// a manifest is stored only once the caller has checked its digest. What a tier below hands
/// up is checked the same way before it is committed here, and what this cache commits is
/// what it may hand to a tier below.
pub struct Cache {
    store: Arc<Store>,
    fills: Arc<Fills>,
    memory: HotManifests,
    tags: Arc<TagTable>,
    /// Which index lists a manifest.
    parents: Arc<Parents>,
    /// The bucket below the local disk, if one is configured.
    shared: Option<Arc<SharedTier>>,
}

/// What the cache holds of a blob, found without starting a fill.
pub enum BlobHeld {
    Cached(CachedBlob),
    Filling(Arc<Fill>),
}

/// Whether the cache takes writes, and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Why caching is suspended, and for how long it has been, if it is.
    pub unwritable: Option<(Condition, Duration)>,
    pub bytes: u64,
    pub max_bytes: u64,
    pub entries: u64,
    pub fills_in_flight: usize,
}

impl Cache {
    /// Opens (creating if needed) the cache directory: takes its lock, removes temp files a
    /// previous run left behind, and rebuilds the index from file metadata (a blocking walk,
    /// run off the async workers).
    pub async fn open(config: &CacheConfig, metrics: &Metrics) -> Result<Cache, Error> {
        let (dir, max_size, store_metrics) =
            (config.dir.clone(), config.max_size.bytes(), metrics.clone());
        let started = Instant::now();
        let open_error = |dir: &std::path::Path, e| Error::Open {
            dir: dir.to_owned(),
            source: Arc::new(e),
        };
        let opened = tokio::task::spawn_blocking(move || {
            let store =
                Store::open(&dir, max_size, store_metrics).map_err(|e| open_error(&dir, e))?;
            let tags = Arc::new(TagTable::open(&dir).map_err(|e| open_error(&dir, e))?);
            let parents = Parents::open(&dir).map_err(|e| open_error(&dir, e))?;
            Ok::<_, Error>((store, tags, parents))
        })
        .await
        .map_err(|e| open_error(&config.dir, std::io::Error::other(e)))??;
        let (store, tags, parents) = opened;
        let store = Arc::new(store);
        let shared = match &config.shared {
            Some(shared) => Some(Arc::new(
                SharedTier::new(shared, metrics).map_err(|e| Error::Shared(Arc::new(e)))?,
            )),
            None => None,
        };
        let cache = Cache {
            fills: Arc::new(Fills::new(store.clone(), metrics.fill_buffer_bytes.clone())),
            store,
            memory: HotManifests::default(),
            tags,
            parents: Arc::new(parents),
            shared,
        };
        let usage = cache.store.usage();
        tracing::info!(
            entries = usage.entries,
            bytes = usage.bytes,
            elapsed = ?started.elapsed(),
            "cache index rebuilt"
        );
        Ok(cache)
    }

    /// The blob if it is cached, else the fill of it to join or to start. The opening, the
    /// temp file and a probe of the disk run on the blocking pool: a slow filesystem holds up
    /// this request, never the async workers.
    ///
    /// On a local miss the shared tier, if there is one, is asked first: a blob it holds feeds
    /// the new fill from there ([`BlobLookup::FromTier`]); one it lacks, or a tier that does
    /// not answer, leaves the fill to the caller.
    pub async fn blob(&self, digest: &Digest) -> Result<BlobLookup, Error> {
        let (fills, wanted) = (self.fills.clone(), digest.clone());
        let lookup = off_the_workers(move || fills.join(&wanted)).await??;
        let (fill, writer, shared) = match (lookup, &self.shared) {
            (BlobLookup::Started(fill, writer), Some(shared)) => (fill, writer, shared.clone()),
            (lookup, _) => return Ok(lookup),
        };
        match shared.open(digest).await {
            Ok(Some(body)) => Ok(BlobLookup::FromTier(
                fill,
                Box::pin(shared.feed(body, writer, digest.clone())),
            )),
            Ok(None) => Ok(BlobLookup::Started(fill, writer)),
            Err(e) => {
                tracing::warn!(%digest, error = %e, "the shared tier did not answer; fetching from the source");
                Ok(BlobLookup::Started(fill, writer))
            }
        }
    }

    /// Whether `config`'s shared tier can be set up (its key files read, its CAs parsed),
    /// without contacting it: for `check-config`.
    pub fn check_shared(config: &crate::config::SharedConfig) -> Result<(), Error> {
        SharedTier::new(config, &Metrics::new())
            .map(drop)
            .map_err(|e| Error::Shared(Arc::new(e)))
    }

    /// Hands a blob to the shared tier (when there is one, and it lacks the blob), in the
    /// background: for the node that fetches it from its source, so the datacenter's other
    /// nodes, and a node that starts empty, find it there. Called as the fill starts, the
    /// upload streams beside it and completes once the fill is verified; called later, it
    /// reads the committed blob.
    pub fn share(&self, digest: &Digest) {
        let Some(shared) = self.shared.clone() else {
            return;
        };
        let (fills, digest) = (self.fills.clone(), digest.clone());
        let running = fills.running(&digest);
        tokio::spawn(async move {
            let reader = match running {
                Some(fill) => fill.reader(0, None),
                None => {
                    let wanted = digest.clone();
                    match off_the_workers(move || fills.cached(&wanted)).await {
                        Ok(Ok(Some(blob))) => blob.reader(0, None),
                        // Evicted meanwhile, or unreadable: nothing to share.
                        _ => return,
                    }
                }
            };
            if let Err(e) = shared.upload(reader, &digest).await {
                tracing::warn!(%digest, error = %e, "a blob could not be put in the shared tier");
            }
        });
    }

    /// How long the shared tier keeps a blob no node uses, if there is a shared tier.
    pub fn shared_max_idle(&self) -> Option<Duration> {
        self.shared.as_ref().map(|s| s.max_idle())
    }

    /// One expiry pass over the shared tier, if there is one.
    pub async fn expire_shared(
        &self,
    ) -> Option<object_store::Result<shared::expiry::SharedPruned>> {
        Some(self.shared.as_ref()?.expire(None).await)
    }

    /// What the cache holds of a blob, without starting a fill (for `HEAD`).
    pub async fn blob_held(&self, digest: &Digest) -> Result<Option<BlobHeld>, Error> {
        let (fills, wanted) = (self.fills.clone(), digest.clone());
        if let Some(blob) = off_the_workers(move || fills.cached(&wanted)).await?? {
            return Ok(Some(BlobHeld::Cached(blob)));
        }
        Ok(self.fills.running(digest).map(BlobHeld::Filling))
    }

    /// A cached manifest, from memory or from disk (re-checked against its digest there).
    pub async fn manifest(&self, digest: &Digest) -> Result<Option<Arc<RawManifest>>, Error> {
        if let Some(found) = self.memory.get(digest) {
            // A use of the disk entry too, for eviction (the memory copy outlives an eviction);
            // written to the file at most once a second, off the workers.
            if found.record_use {
                if let Some(Some(persist)) = self.store.note_use(&EntryKey::manifest(digest)) {
                    tokio::task::spawn_blocking(move || persist.run());
                }
            }
            return Ok(Some(found.manifest));
        }
        let (store, wanted) = (self.store.clone(), digest.clone());
        let read = off_the_workers(move || store.read_manifest(&wanted)).await?;
        let Some(manifest) = read.map_err(Error::read)? else {
            return Ok(None);
        };
        let manifest = Arc::new(manifest);
        self.memory.insert(manifest.clone());
        Ok(Some(manifest))
    }

    /// Keeps a manifest whose digest the caller has verified, in memory and on disk. A disk
    /// that cannot take it costs only the disk copy (the store logs the disk's condition).
    pub async fn store_manifest(&self, manifest: Arc<RawManifest>) {
        // Off the async workers: the commit fsyncs.
        let (store, to_write) = (self.store.clone(), manifest.clone());
        match tokio::task::spawn_blocking(move || store.write_manifest(&to_write)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(digest = %manifest.digest, error = %e, "manifest not cached")
            }
            Err(e) => tracing::error!(error = %e, "manifest write task failed"),
        }
        self.memory.insert(manifest);
    }

    /// The variant of a tag to answer `accept` with, if one is known (fresh or not). A tag not
    /// in memory is read from disk on the blocking pool.
    pub async fn tag(&self, key: &TagKey, accept: &Accept) -> Option<Variant> {
        self.tags.lookup(key, accept).await
    }

    /// Records what the upstream answered for a tag; `replaces` is the variant it supersedes.
    pub fn record_tag(&self, key: TagKey, variant: Variant, replaces: Option<&Digest>) {
        self.tags.record(key, variant, replaces);
    }

    /// The upstream confirmed that the tag still points to `digest`, at `now`.
    pub fn confirm_tag(&self, key: &TagKey, digest: &Digest, now: SystemTime) {
        self.tags.touch(key, digest, now);
    }

    /// Puts off revalidating a tag until `until`; whether this started the deferral.
    pub fn defer_tag(
        &self,
        key: &TagKey,
        digest: &Digest,
        now: SystemTime,
        until: SystemTime,
    ) -> bool {
        self.tags.defer(key, digest, now, until)
    }

    /// Forgets a tag the upstream no longer has.
    pub fn forget_tag(&self, key: &TagKey) {
        self.tags.forget(key);
    }

    /// Whether the cache takes writes, its size, and its fills in flight. Probes an unwritable
    /// directory (at most every few seconds), so the answer is current even when no request
    /// has needed the cache lately.
    pub async fn health(&self) -> Health {
        let store = self.store.clone();
        // The probe writes to the disk: off the workers.
        let _ = off_the_workers(move || store.caching_allowed()).await;
        let usage = self.store.usage();
        Health {
            unwritable: self.store.unwritable(),
            bytes: usage.bytes,
            max_bytes: usage.max_bytes,
            entries: usage.entries,
            fills_in_flight: self.fills.in_flight(),
        }
    }

    /// The index last recorded as listing a manifest (see [`Cache::record_parent`]).
    pub async fn parent(&self, key: &ListedKey) -> Option<Digest> {
        let (parents, key) = (self.parents.clone(), key.clone());
        off_the_workers(move || parents.get(&key)).await.ok()?
    }

    /// Records that the index `index` lists the manifest `key`: known at once, and kept across
    /// restarts once written; a disk that cannot take it costs only the record (logged at
    /// debug). Whether that is news to this node.
    pub fn record_parent(&self, key: ListedKey, index: &Digest) -> bool {
        let news = self.parents.remember(key.clone(), index);
        let (parents, index) = (self.parents.clone(), index.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = parents.write(&key, &index, news) {
                tracing::debug!(%index, error = %e, "index listing not recorded");
            }
        });
        news
    }

    /// Evicts entries unused for `max_idle`, checking a few times per `max_idle` (and at least
    /// every ten minutes) so nothing outlives it by much. Runs until dropped.
    pub async fn sweep_idle(self: Arc<Self>, max_idle: Duration) {
        let every = (max_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(600));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let cache = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                cache.store.evict_idle(max_idle);
                cache.tags.remove_idle(max_idle);
                cache.parents.remove_idle(max_idle);
            })
            .await;
        }
    }
}

/// Runs `work`, which touches the disk, on the blocking pool.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::read(std::io::Error::other(e)))
}
