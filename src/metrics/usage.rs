//! What clients were served from the cache since start, per repository and per tag: the live
//! half of the admin images view (hits, and the bytes the upstream did not have to send).
//! Kept out of Prometheus on purpose: repositories and tags are unbounded label values.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// How many repositories are counted; past this, new ones are not (and say so).
const MAX_REPOSITORIES: usize = 10_000;
/// How many tags are counted per repository.
const MAX_TAGS: usize = 1_000;

/// Hits and bytes served from the cache.
#[derive(Debug, Default)]
pub struct Served {
    hits: AtomicU64,
    bytes: AtomicU64,
}

impl Served {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add_bytes(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// One repository's counts: everything served from the cache for it (manifests by tag and by
/// digest, blobs), and the manifests asked for by tag, per tag.
#[derive(Debug, Default)]
pub struct RepositoryUsage {
    pub all: Served,
    tags: Mutex<HashMap<String, Arc<Served>>>,
}

impl RepositoryUsage {
    /// The counts of `tag`, if it is counted (within [`MAX_TAGS`]).
    pub fn tag(&self, tag: &str) -> Option<Arc<Served>> {
        let mut tags = self.tags.lock().expect("usage lock");
        if let Some(served) = tags.get(tag) {
            return Some(served.clone());
        }
        (tags.len() < MAX_TAGS).then(|| tags.entry(tag.to_owned()).or_default().clone())
    }

    /// The counts of `tag`, without starting any.
    pub fn tag_counts(&self, tag: &str) -> Option<(u64, u64)> {
        let tags = self.tags.lock().expect("usage lock");
        tags.get(tag).map(|s| (s.hits(), s.bytes()))
    }
}

/// The counts of every repository served since start, by upstream name and repository.
#[derive(Debug, Default)]
pub struct Usage {
    repositories: RwLock<HashMap<(String, String), Arc<RepositoryUsage>>>,
}

impl Usage {
    /// The counts of `upstream`'s `repo`, started if new (unless [`MAX_REPOSITORIES`] are).
    pub fn repository(&self, upstream: &str, repo: &str) -> Option<Arc<RepositoryUsage>> {
        let key = (upstream.to_owned(), repo.to_owned());
        if let Some(found) = self.repositories.read().expect("usage lock").get(&key) {
            return Some(found.clone());
        }
        let mut all = self.repositories.write().expect("usage lock");
        if !all.contains_key(&key) && all.len() >= MAX_REPOSITORIES {
            return None;
        }
        Some(all.entry(key).or_default().clone())
    }

    /// The counts of `upstream`'s `repo`, without starting any.
    pub fn counted(&self, upstream: &str, repo: &str) -> Option<Arc<RepositoryUsage>> {
        let key = (upstream.to_owned(), repo.to_owned());
        self.repositories
            .read()
            .expect("usage lock")
            .get(&key)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_repository_and_tag() {
        let usage = Usage::default();
        let repo = usage.repository("docker.io", "library/alpine").unwrap();
        repo.all.hit();
        repo.all.add_bytes(10);
        let tag = repo.tag("3.20").unwrap();
        tag.hit();
        tag.add_bytes(3);
        let again = usage.counted("docker.io", "library/alpine").unwrap();
        assert_eq!((again.all.hits(), again.all.bytes()), (1, 10));
        assert_eq!(again.tag_counts("3.20"), Some((1, 3)));
        assert_eq!(again.tag_counts("latest"), None);
        assert!(usage.counted("ghcr.io", "library/alpine").is_none());
    }

    #[test]
    fn the_number_counted_is_bounded() {
        let usage = Usage::default();
        for i in 0..MAX_REPOSITORIES {
            assert!(usage.repository("u", &i.to_string()).is_some());
        }
        assert!(usage.repository("u", "one more").is_none());
        assert!(usage.repository("u", "0").is_some(), "counted ones go on");
        let repo = usage.repository("u", "0").unwrap();
        for i in 0..MAX_TAGS {
            assert!(repo.tag(&i.to_string()).is_some());
        }
        assert!(repo.tag("one more").is_none());
    }
}
