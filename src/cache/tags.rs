//! Tag → digest answers and their age. One tag can hold several variants: a registry answers a
//! client that does not accept an index with a single-platform manifest, so what a tag "is"
//! depends on the client's `Accept`. Each variant remembers the `Accept` it was fetched with, so
//! an answer is reused only for clients the upstream would have given it to. Freshness is
//! decided here from `fetched_at`, on wharf's own clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::oci::media::{is_index, Accept};
use crate::oci::{Digest, RepoName, Tag};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: Arc<str>,
    pub repo: RepoName,
    pub tag: Tag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub digest: Digest,
    /// The media type without parameters.
    pub media_type: String,
    /// What the request that fetched this answer accepted.
    pub asked_with: Accept,
    pub fetched_at: SystemTime,
}

impl Variant {
    /// Younger than `ttl`. A clock that stepped backwards counts as fresh rather than forcing a
    /// storm of revalidations.
    pub fn is_fresh(&self, now: SystemTime, ttl: Duration) -> bool {
        now.duration_since(self.fetched_at)
            .map_or(true, |age| age < ttl)
    }

    /// Whether the upstream would answer `accept` with this variant. The same question gets the
    /// same answer. Otherwise the client must accept the type, and if this is a single-platform
    /// manifest, it must not accept an index type this answer's request did not: the tag may
    /// really be such an index, which the registry would have sent instead.
    fn answers(&self, accept: &Accept) -> bool {
        if self.asked_with == *accept {
            return true;
        }
        accept.accepts(&self.media_type)
            && (is_index(&self.media_type) || accept.accepts_no_index_beyond(&self.asked_with))
    }
}

#[derive(Default)]
pub struct TagTable {
    tags: Mutex<HashMap<TagKey, Vec<Variant>>>,
}

impl TagTable {
    /// The variant to answer `accept` with: an index when the client takes one (as the
    /// registry would), else the newest acceptable manifest.
    pub fn choose(&self, key: &TagKey, accept: &Accept) -> Option<Variant> {
        let tags = self.tags.lock().expect("lock poisoned");
        let variants = tags.get(key)?;
        variants
            .iter()
            .filter(|v| v.answers(accept))
            .max_by_key(|v| (is_index(&v.media_type), v.fetched_at))
            .cloned()
    }

    /// Records what the upstream answered for a tag. `replaces` is the variant this answer
    /// supersedes (a revalidation that found a new digest); any variant of the same media type
    /// is superseded too.
    pub fn record(&self, key: TagKey, variant: Variant, replaces: Option<&Digest>) {
        let mut tags = self.tags.lock().expect("lock poisoned");
        let variants = tags.entry(key).or_default();
        variants.retain(|v| v.media_type != variant.media_type && Some(&v.digest) != replaces);
        variants.push(variant);
    }

    /// Marks a variant as just confirmed by the upstream.
    pub fn touch(&self, key: &TagKey, digest: &Digest, now: SystemTime) {
        let mut tags = self.tags.lock().expect("lock poisoned");
        for v in tags.get_mut(key).into_iter().flatten() {
            if &v.digest == digest {
                v.fetched_at = now;
            }
        }
    }

    /// Forgets a tag the upstream no longer has.
    pub fn forget(&self, key: &TagKey) {
        self.tags.lock().expect("lock poisoned").remove(key);
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
        let table = TagTable::default();
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
        let table = TagTable::default();
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
        let table = TagTable::default();
        table.record(key(), variant(b"amd64", DOCKER_MANIFEST, 1), None);
        assert!(table.choose(&key(), &with_oci_index).is_some());
    }

    #[test]
    fn the_same_question_gets_the_same_answer_even_of_an_unaccepted_type() {
        let table = TagTable::default();
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
        let table = TagTable::default();
        let old = variant(b"old", OCI_INDEX, 1);
        table.record(key(), old.clone(), None);
        // The tag moved from an index to a single manifest.
        table.record(key(), variant(b"new", OCI_MANIFEST, 2), Some(&old.digest));
        let chosen = table.choose(&key(), &Accept::parse([])).unwrap();
        assert_eq!(chosen.digest, Digest::sha256_of(b"new"));
    }

    #[test]
    fn touch_refreshes_and_forget_drops() {
        let table = TagTable::default();
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
}
