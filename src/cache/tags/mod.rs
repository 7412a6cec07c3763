//! Tag → digest answers and their age. One tag can hold several variants: a registry answers a
//! client that does not accept an index with a single-platform manifest, so what a tag "is"
//! depends on the client's `Accept`. Each variant remembers the `Accept` it was fetched with, so
//! an answer is reused only for clients the upstream would have given it to. Freshness is
//! decided here from `fetched_at`, on wharf's own clock. The table is kept in memory and, when
//! opened on a cache directory, on disk too, so it outlives restarts.

mod files;
mod variant;

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::oci::media::{is_index, Accept};
use crate::oci::Digest;
use files::TagFiles;
pub use variant::{TagKey, Variant};

#[derive(Default)]
pub struct TagTable {
    /// Every tag looked up or recorded since start-up; a tag absent here is read from disk.
    tags: Mutex<HashMap<TagKey, Vec<Variant>>>,
    files: Option<TagFiles>,
    /// Held while writing a tag's file, so the newest state is the one written last.
    writing: Mutex<()>,
}

impl TagTable {
    /// A table that lives in memory only.
    #[cfg(test)]
    pub fn in_memory() -> Self {
        TagTable::default()
    }

    /// A table kept under `<root>/tags` as well.
    pub fn open(root: &Path) -> io::Result<Self> {
        Ok(TagTable {
            files: Some(TagFiles::open(root)?),
            ..TagTable::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TagKey, Vec<Variant>>> {
        self.tags.lock().expect("lock poisoned")
    }

    /// Runs `f` on the variants of `key`, loading them from disk on first use.
    fn with_variants<R>(&self, key: &TagKey, f: impl FnOnce(&mut Vec<Variant>) -> R) -> R {
        if let Some(variants) = self.lock().get_mut(key) {
            return f(variants);
        }
        // Read outside the lock; if another request loaded it meanwhile, its copy wins.
        let loaded = self.files.as_ref().map(|files| files.load(key));
        let mut tags = self.lock();
        f(tags
            .entry(key.clone())
            .or_insert_with(|| loaded.unwrap_or_default()))
    }

    /// Writes the current variants of `key` to disk, if this table is kept there.
    fn persist(&self, key: &TagKey) {
        let Some(files) = &self.files else {
            return;
        };
        let _writing = self.writing.lock().expect("lock poisoned");
        let variants = self.lock().get(key).cloned().unwrap_or_default();
        if let Err(e) = files.store(key, &variants) {
            tracing::debug!(tag = %key.tag, error = %e, "tag not written to disk");
        }
    }

    /// The variant to answer `accept` with: an index when the client takes one (as the
    /// registry would), else the newest acceptable manifest.
    pub fn choose(&self, key: &TagKey, accept: &Accept) -> Option<Variant> {
        self.with_variants(key, |variants| {
            variants
                .iter()
                .filter(|v| v.answers(accept))
                .max_by_key(|v| (is_index(&v.media_type), v.fetched_at))
                .cloned()
        })
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

    /// Forgets a tag the upstream no longer has.
    pub fn forget(&self, key: &TagKey) {
        self.lock().insert(key.clone(), Vec::new());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::media::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    fn key() -> TagKey {
        TagKey {
            upstream: "docker.io".into(),
            repo: "library/alpine".parse().unwrap(),
            tag: "3.20".parse().unwrap(),
        }
    }

    fn variant(body: &[u8], media_type: &str, secs: u64) -> Variant {
        asked(body, media_type, secs, Accept::parse([]))
    }

    fn asked(body: &[u8], media_type: &str, secs: u64, asked_with: Accept) -> Variant {
        Variant {
            digest: Digest::sha256_of(body),
            media_type: media_type.into(),
            asked_with,
            fetched_at: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
            revalidate_after: None,
        }
    }

    #[test]
    fn freshness_is_age_against_ttl() {
        let v = variant(b"a", OCI_MANIFEST, 100);
        let ttl = Duration::from_secs(60);
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(v.is_fresh(at(159), ttl));
        assert!(!v.is_fresh(at(160), ttl));
        assert!(v.is_fresh(at(50), ttl), "clock went backwards");
    }

    #[test]
    fn index_wins_when_accepted_otherwise_the_single_manifest() {
        let table = TagTable::in_memory();
        let single_only = Accept::parse([DOCKER_MANIFEST]);
        table.record(key(), variant(b"index", OCI_INDEX, 1), None);
        table.record(
            key(),
            asked(b"amd64", DOCKER_MANIFEST, 2, single_only.clone()),
            None,
        );
        let everything = Accept::parse([]);
        assert_eq!(
            table.choose(&key(), &everything).unwrap().media_type,
            OCI_INDEX
        );
        assert_eq!(
            table.choose(&key(), &single_only).unwrap().media_type,
            DOCKER_MANIFEST
        );
        let oci_manifest_only = Accept::parse([OCI_MANIFEST]);
        assert_eq!(table.choose(&key(), &oci_manifest_only), None);
    }

    #[test]
    fn a_fallback_manifest_is_not_served_to_clients_that_accept_indexes() {
        let table = TagTable::in_memory();
        // Only a single-platform client has asked so far: the tag may be an index.
        let single_only = Accept::parse([DOCKER_MANIFEST]);
        table.record(
            key(),
            asked(b"amd64", DOCKER_MANIFEST, 1, single_only),
            None,
        );
        assert_eq!(table.choose(&key(), &Accept::parse([])), None);
        let with_oci_index = Accept::parse([&format!("{DOCKER_MANIFEST}, {OCI_INDEX}") as &str]);
        assert_eq!(table.choose(&key(), &with_oci_index), None);
        // Asked by a client that accepts every index type, a single manifest is what the tag is.
        let table = TagTable::in_memory();
        table.record(key(), variant(b"amd64", DOCKER_MANIFEST, 1), None);
        assert!(table.choose(&key(), &with_oci_index).is_some());
    }

    #[test]
    fn the_same_question_gets_the_same_answer_even_of_an_unaccepted_type() {
        let table = TagTable::in_memory();
        // The upstream answered an OCI manifest to a client that asked only for Docker's.
        let docker_only = Accept::parse([DOCKER_MANIFEST]);
        table.record(
            key(),
            asked(b"oci", OCI_MANIFEST, 1, docker_only.clone()),
            None,
        );
        assert!(table.choose(&key(), &docker_only).is_some());
        assert_eq!(table.choose(&key(), &Accept::parse([OCI_INDEX])), None);
    }

    #[test]
    fn a_new_answer_replaces_the_superseded_variant() {
        let table = TagTable::in_memory();
        let old = variant(b"old", OCI_INDEX, 1);
        table.record(key(), old.clone(), None);
        // The tag moved from an index to a single manifest.
        table.record(key(), variant(b"new", OCI_MANIFEST, 2), Some(&old.digest));
        let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
        assert_eq!(chosen.digest, Digest::sha256_of(b"new"));
    }

    #[test]
    fn touch_refreshes_and_forget_drops() {
        let table = TagTable::in_memory();
        let v = variant(b"x", OCI_MANIFEST, 1);
        table.record(key(), v.clone(), None);
        let later = SystemTime::UNIX_EPOCH + Duration::from_secs(500);
        table.touch(&key(), &v.digest, later);
        assert_eq!(
            table.choose(&key(), &Accept::parse([])).unwrap().fetched_at,
            later
        );
        table.forget(&key());
        assert_eq!(table.choose(&key(), &Accept::parse([])), None);
    }

    #[test]
    fn a_table_on_disk_outlives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let table = TagTable::open(dir.path()).unwrap();
        let single_only = Accept::parse([DOCKER_MANIFEST]);
        let index = variant(b"index", OCI_INDEX, 1);
        let single = asked(b"amd64", DOCKER_MANIFEST, 2, single_only.clone());
        table.record(key(), index.clone(), None);
        table.record(key(), single.clone(), None);
        drop(table);

        let table = TagTable::open(dir.path()).unwrap();
        assert_eq!(table.choose(&key(), &Accept::parse([])), Some(index));
        assert_eq!(table.choose(&key(), &single_only), Some(single));
        table.forget(&key());
        drop(table);
        let table = TagTable::open(dir.path()).unwrap();
        assert_eq!(table.choose(&key(), &Accept::parse([])), None);
    }

    #[test]
    fn a_damaged_tag_file_is_treated_as_absent() {
        let dir = tempfile::tempdir().unwrap();
        let table = TagTable::open(dir.path()).unwrap();
        table.record(key(), variant(b"x", OCI_MANIFEST, 1), None);
        for fan in std::fs::read_dir(dir.path().join("tags")).unwrap() {
            for file in std::fs::read_dir(fan.unwrap().path()).unwrap() {
                std::fs::write(file.unwrap().path(), b"{ truncated").unwrap();
            }
        }
        let table = TagTable::open(dir.path()).unwrap();
        assert_eq!(table.choose(&key(), &Accept::parse([])), None);
    }

    #[test]
    fn a_deferred_revalidation_lasts_until_its_time_or_a_confirmation() {
        let table = TagTable::in_memory();
        let v = variant(b"x", OCI_MANIFEST, 1);
        table.record(key(), v.clone(), None);
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        assert!(table.defer(&key(), &v.digest, at(10), at(100)));
        assert!(
            !table.defer(&key(), &v.digest, at(20), at(100)),
            "already deferred"
        );
        let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
        assert!(chosen.revalidation_deferred(at(99)));
        assert!(!chosen.revalidation_deferred(at(100)));
        table.touch(&key(), &v.digest, at(50));
        let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
        assert!(!chosen.revalidation_deferred(at(60)));
    }

    #[test]
    fn an_older_answer_does_not_replace_a_newer_one() {
        let table = TagTable::in_memory();
        let newer = variant(b"new", OCI_MANIFEST, 20);
        table.record(key(), newer.clone(), None);
        table.record(key(), variant(b"old", OCI_MANIFEST, 10), None);
        assert_eq!(table.choose(&key(), &Accept::parse([])), Some(newer));
    }
}
