//! Which index lists a manifest, per upstream and repository, so a platform manifest asked for
//! by digest can be traced to the index a client resolved first, after a restart too. One
//! small file per manifest under `parents/`, named by a hash of its key, holding the index's
//! digest; replaced by rename, not fsynced (losing it costs one check of the manifest on its
//! own), removed when unused for `max_idle` like tag files.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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
    dir: PathBuf,
    tmp: PathBuf,
    next_temp: AtomicU64,
}

impl Parents {
    /// Files live in `<root>/parents`; temp files go to `<root>/tmp`, which the store empties
    /// at start-up.
    pub fn open(root: &Path) -> io::Result<Parents> {
        let dir = root.join("parents");
        fs::create_dir_all(&dir)?;
        Ok(Parents {
            memory: moka::sync::Cache::builder().max_capacity(100_000).build(),
            dir,
            tmp: root.join("tmp"),
            next_temp: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &ListedKey) -> PathBuf {
        let id = Digest::sha256_of(
            format!("{}\n{}\n{}", key.upstream, key.repo, key.manifest).as_bytes(),
        );
        let hex = id.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The index last recorded as listing `key`, from memory or disk (blocking).
    pub fn get(&self, key: &ListedKey) -> Option<Digest> {
        if let Some(index) = self.memory.get(key) {
            return Some(index);
        }
        let index: Digest = fs::read_to_string(self.path(key))
            .ok()?
            .trim()
            .parse()
            .ok()?;
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
        let path = self.path(key);
        if !news && path.exists() {
            return fs::File::open(&path).and_then(|f| f.set_modified(SystemTime::now()));
        }
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.tmp.join(format!("parent-{}-{n}", std::process::id()));
        let written = (|| {
            fs::File::create(&temp)?.write_all(index.to_string().as_bytes())?;
            fs::create_dir_all(path.parent().expect("parent paths have a parent"))?;
            fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Removes the records not written or confirmed for `max_idle`.
    pub fn remove_idle(&self, max_idle: Duration) {
        let Some(cutoff) = SystemTime::now().checked_sub(max_idle) else {
            return;
        };
        let Ok(fans) = fs::read_dir(&self.dir) else {
            return;
        };
        for fan in fans.flatten() {
            let Ok(files) = fs::read_dir(fan.path()) else {
                continue;
            };
            for file in files.flatten() {
                let idle = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified < cutoff);
                if idle {
                    let _ = fs::remove_file(file.path());
                }
            }
        }
        self.memory.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_outlives_the_process_and_idle_ones_go() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
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
