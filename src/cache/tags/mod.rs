//! Tag → digest answers and their age. One tag can hold several variants: a registry answers a
//! client that does not accept an index with a single-platform manifest, so what a tag "is"
//! depends on the client's `Accept`. Each variant remembers the `Accept` it was fetched with, so
//! an answer is reused only for clients the upstream would have given it to. Freshness is
//! decided here from `fetched_at`, on wharf's own clock. The table is kept on disk, when opened on
//! a cache directory, so it outlives restarts; memory holds the tags in use, a bounded number
//! (the least recently used, and those unused for an hour, are read from disk again when asked).

mod files;
mod variant;

use std::io;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use lru::LruCache;

use crate::oci::media::{is_index, Accept};
use crate::oci::{Digest, RepoName};
use files::TagFiles;
pub use variant::{TagKey, Variant};

/// Tags held in memory at most: each costs a few hundred bytes; a client asking for a million
/// distinct tags must not grow wharf by as many.
const IN_MEMORY: usize = 16_384;
/// A tag unused this long leaves memory (it stays on disk).
const IDLE: Duration = Duration::from_secs(3600);

/// The tags in memory, least recently used first.
type Known = LruCache<TagKey, Held>;

struct Held {
    variants: Vec<Variant>,
    used: Instant,
}

pub struct TagTable {
    /// The tags in use; a tag absent here is read from disk.
    tags: Mutex<Known>,
    files: Option<Arc<TagFiles>>,
    /// Held while writing a tag's file, so the newest state is the one written last.
    writing: Mutex<()>,
}

impl TagTable {
    fn new(files: Option<Arc<TagFiles>>, capacity: usize) -> Self {
        TagTable {
            tags: Mutex::new(LruCache::new(
                NonZeroUsize::new(capacity).expect("a table holds a tag"),
            )),
            files,
            writing: Mutex::default(),
        }
    }

    /// A table that lives in memory only.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        TagTable::new(None, IN_MEMORY)
    }

    /// A table kept under `<root>/tags` as well.
    pub fn open(root: &Path) -> io::Result<Self> {
        Ok(TagTable::new(
            Some(Arc::new(TagFiles::open(root)?)),
            IN_MEMORY,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Known> {
        self.tags.lock().expect("lock poisoned")
    }

    /// Runs `f` on the variants of `key`, loading them from disk on first use.
    fn with_variants<R>(&self, key: &TagKey, f: impl FnOnce(&mut Vec<Variant>) -> R) -> R {
        if let Some(held) = self.lock().get_mut(key) {
            held.used = Instant::now();
            return f(&mut held.variants);
        }
        // Read outside the lock.
        let loaded = self.files.as_ref().map(|files| files.load(key));
        self.learn(key, loaded.unwrap_or_default(), f)
    }

    /// The variant to answer `accept` with, as [`Self::choose`], reading a tag that is not in
    /// memory on the blocking pool instead of the calling (async) thread.
    pub async fn lookup(&self, key: &TagKey, accept: &Accept) -> Option<Variant> {
        // The warm case under one lock: every warm pull by tag comes through here.
        if let Some(held) = self.lock().get_mut(key) {
            held.used = Instant::now();
            return choose_among(&held.variants, accept);
        }
        if let Some(files) = &self.files {
            let (files, wanted) = (files.clone(), key.clone());
            let loaded = tokio::task::spawn_blocking(move || files.load(&wanted)).await;
            self.learn(key, loaded.unwrap_or_default(), |_| ());
        }
        self.choose(key, accept)
    }

    /// Runs `f` on `key`'s variants, made from `loaded` (as read from disk) unless the table
    /// learned of them meanwhile, in which case that copy wins; tags idle for [`IDLE`] make
    /// room first.
    fn learn<R>(
        &self,
        key: &TagKey,
        loaded: Vec<Variant>,
        f: impl FnOnce(&mut Vec<Variant>) -> R,
    ) -> R {
        let now = Instant::now();
        let mut tags = self.lock();
        forget_idle(&mut tags, now);
        let held = tags.get_or_insert_mut(key.clone(), || Held {
            variants: loaded,
            used: now,
        });
        held.used = now;
        f(&mut held.variants)
    }

    /// Writes the current variants of `key` to disk, if this table is kept there.
    fn persist(&self, key: &TagKey) {
        let Some(files) = &self.files else {
            return;
        };
        let _writing = self.writing.lock().expect("lock poisoned");
        let variants = self
            .lock()
            .peek(key)
            .map(|held| held.variants.clone())
            .unwrap_or_default();
        if let Err(e) = files.store(key, &variants) {
            tracing::debug!(tag = %key.tag, error = %e, "tag not written to disk");
        }
    }

    /// The variant to answer `accept` with: an index when the client takes one (as the
    /// registry would), else the newest acceptable manifest.
    pub fn choose(&self, key: &TagKey, accept: &Accept) -> Option<Variant> {
        self.with_variants(key, |variants| choose_among(variants, accept))
    }

    /// Records what the upstream answered for a tag. `replaces` is the variant this answer
    /// supersedes (a revalidation that found a new digest); any variant of the same media type
    /// is superseded too.
    pub fn record(&self, key: TagKey, variant: Variant, replaces: Option<&Digest>) {
        let recorded = self.with_variants(&key, |variants| {
            // Two answers raced: the one asked for later wins, whichever arrived last.
            let newer_known = variants
                .iter()
                .any(|v| v.media_type == variant.media_type && v.fetched_at > variant.fetched_at);
            if newer_known {
                return false;
            }
            variants.retain(|v| v.media_type != variant.media_type && Some(&v.digest) != replaces);
            variants.push(variant);
            true
        });
        if recorded {
            self.persist(&key);
        }
    }

    /// Marks a variant as just confirmed by the upstream.
    pub fn touch(&self, key: &TagKey, digest: &Digest, now: SystemTime) {
        self.with_variants(key, |variants| {
            for v in variants.iter_mut().filter(|v| &v.digest == digest) {
                v.fetched_at = now;
                v.revalidate_after = None;
            }
        });
        if let Some(files) = &self.files {
            files.touch(key);
        }
    }

    /// Puts off revalidating a variant until `until` (the upstream just failed to answer).
    /// Returns whether this started a deferral (rather than found one running at `now`).
    pub fn defer(&self, key: &TagKey, digest: &Digest, now: SystemTime, until: SystemTime) -> bool {
        self.with_variants(key, |variants| {
            let mut started = false;
            for v in variants.iter_mut().filter(|v| &v.digest == digest) {
                started |= !v.revalidation_deferred(now);
                v.revalidate_after = Some(until);
            }
            started
        })
    }

    /// Every variant known of `key`.
    pub fn variants(&self, key: &TagKey) -> Vec<Variant> {
        self.with_variants(key, |variants| variants.clone())
    }

    /// The tags of `upstream`'s `repo` known here, with their variants (blocking: reads the
    /// tag files; what memory holds of a tag is newer than its file).
    pub fn of_repository(&self, upstream: &str, repo: &RepoName) -> Vec<(TagKey, Vec<Variant>)> {
        self.matching(|key| &*key.upstream == upstream && key.repo == *repo)
    }

    /// Every tag known here (blocking: reads every tag file).
    pub fn all(&self) -> Vec<(TagKey, Vec<Variant>)> {
        self.matching(|_| true)
    }

    fn matching(&self, wanted: impl Fn(&TagKey) -> bool) -> Vec<(TagKey, Vec<Variant>)> {
        let mut tags: Vec<(TagKey, Vec<Variant>)> = self
            .lock()
            .iter()
            .filter(|(key, _)| wanted(key))
            .map(|(key, held)| (key.clone(), held.variants.clone()))
            .collect();
        if let Some(files) = &self.files {
            for (key, variants) in files.matching(&wanted) {
                if !tags.iter().any(|(known, _)| *known == key) {
                    tags.push((key, variants));
                }
            }
        }
        tags.retain(|(_, variants)| !variants.is_empty());
        tags
    }

    /// Forgets a tag the upstream no longer has.
    pub fn forget(&self, key: &TagKey) {
        self.with_variants(key, Vec::clear);
        self.persist(key);
    }

    /// Removes tag files not confirmed for `max_idle` (their tags stay known in memory).
    pub fn remove_idle(&self, max_idle: Duration) {
        let Some(files) = &self.files else {
            return;
        };
        let cutoff = SystemTime::now()
            .checked_sub(max_idle)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        match files.remove_idle(cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "removed idle tag files"),
            Err(e) => tracing::warn!(error = %e, "cannot sweep idle tag files"),
        }
    }
}

/// Lets go of the tags unused for [`IDLE`] at `now` (they stay on disk).
/// Of a tag's variants, the one to answer `accept` with (see `choose`).
fn choose_among(variants: &[Variant], accept: &Accept) -> Option<Variant> {
    variants
        .iter()
        .filter(|v| v.answers(accept))
        .max_by_key(|v| (is_index(&v.media_type), v.fetched_at))
        .cloned()
}

fn forget_idle(tags: &mut Known, now: Instant) {
    while tags
        .peek_lru()
        .is_some_and(|(_, held)| now.saturating_duration_since(held.used) >= IDLE)
    {
        tags.pop_lru();
    }
}

#[cfg(test)]
mod tests;
