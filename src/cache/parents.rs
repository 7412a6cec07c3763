//! Which index lists a manifest, per upstream and repository, so a platform manifest asked for
//! by digest can be traced to the index a client resolved first, after a restart too. One
//! small file per manifest under `parents/` holding the index's digest (losing it costs one
//! check of the manifest on its own), removed when unused for `max_idle` like tag files.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::small_files::SmallFiles;
use crate::oci::{Digest, RepoName};

/// A manifest of a repository of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListedKey {
    pub upstream: Arc<str>,
    pub repo: RepoName,
    pub manifest: Digest,
}

pub struct Parents {
    memory: moka::sync::Cache<ListedKey, Digest>,
    files: SmallFiles,
}

impl Parents {
    /// Records live in `<root>/parents`.
    pub fn open(root: &Path) -> io::Result<Parents> {
        Ok(Parents {
            memory: moka::sync::Cache::builder().max_capacity(100_000).build(),
            files: SmallFiles::open(root, "parents")?,
        })
    }

    /// What the record of `key` is named by.
    fn name(key: &ListedKey) -> String {
        format!("{}\n{}\n{}", key.upstream, key.repo, key.manifest)
    }

    /// The index last recorded as listing `key`, from memory or disk (blocking).
    pub fn get(&self, key: &ListedKey) -> Option<Digest> {
        if let Some(index) = self.memory.get(key) {
            return Some(index);
        }
        let raw = self.files.read(&Self::name(key)).ok()?;
        let index: Digest = std::str::from_utf8(&raw).ok()?.trim().parse().ok()?;
        self.memory.insert(key.clone(), index.clone());
        Some(index)
    }

    /// Records that `index` lists `key` in memory, at once: whether that is news.
    pub fn remember(&self, key: ListedKey, index: &Digest) -> bool {
        let known = self.memory.get(&key).as_ref() == Some(index);
        if !known {
            self.memory.insert(key, index.clone());
        }
        !known
    }

    /// Writes the record of `key` (blocking); one already written is only touched, so that it
    /// is not idle.
    pub fn write(&self, key: &ListedKey, index: &Digest, news: bool) -> io::Result<()> {
        let name = Self::name(key);
        if !news && self.files.touch(&name).is_ok() {
            return Ok(());
        }
        self.files.replace(&name, index.to_string().as_bytes())
    }

    /// Removes the records not written or confirmed for `max_idle`.
    pub fn remove_idle(&self, max_idle: Duration) {
        let Some(cutoff) = SystemTime::now().checked_sub(max_idle) else {
            return;
        };
        let _ = self.files.remove_idle(cutoff);
        self.memory.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_outlives_the_process_and_idle_ones_go() {
        let root = tempfile::tempdir().unwrap();
        let key = ListedKey {
            upstream: "docker.io".into(),
            repo: "myorg/app".parse().unwrap(),
            manifest: Digest::sha256_of(b"child"),
        };
        let index = Digest::sha256_of(b"index");
        let parents = Parents::open(root.path()).unwrap();
        assert!(parents.remember(key.clone(), &index));
        parents.write(&key, &index, true).unwrap();
        let reopened = Parents::open(root.path()).unwrap();
        assert_eq!(reopened.get(&key), Some(index));
        reopened.remove_idle(Duration::from_secs(3600));
        assert!(reopened.get(&key).is_some(), "a fresh record stays");
        reopened.remove_idle(Duration::ZERO);
        assert_eq!(reopened.get(&key), None);
    }
}
