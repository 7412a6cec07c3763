//! Tags on disk, so a restart (even one while the upstream is down) still knows what each cached
//! tag pointed to. One small JSON file per tag under `tags/`, named by a hash of the tag's key
//! and replaced by rename. Not fsynced: losing the newest answer to a crash costs one
//! revalidation, and a file that does not parse is treated as absent.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::variant::{TagKey, Variant};
use crate::oci::media::Accept;
use crate::oci::Digest;

pub struct TagFiles {
    dir: PathBuf,
    tmp: PathBuf,
    next_temp: AtomicU64,
}

#[derive(Serialize, Deserialize)]
struct TagRecord {
    upstream: String,
    repo: String,
    tag: String,
    variants: Vec<VariantRecord>,
}

#[derive(Serialize, Deserialize)]
struct VariantRecord {
    digest: String,
    media_type: String,
    asked_with: Accept,
    /// Milliseconds since the Unix epoch.
    fetched_at: u64,
}

impl TagFiles {
    /// Tag files live in `<root>/tags`; temp files go to `<root>/tmp`, which the store empties
    /// at start-up.
    pub fn open(root: &Path) -> io::Result<TagFiles> {
        let dir = root.join("tags");
        let tmp = root.join("tmp");
        fs::create_dir_all(&dir)?;
        fs::create_dir_all(&tmp)?;
        Ok(TagFiles {
            dir,
            tmp,
            next_temp: AtomicU64::new(0),
        })
    }

    fn path(&self, key: &TagKey) -> PathBuf {
        let id =
            Digest::sha256_of(format!("{}\n{}\n{}", key.upstream, key.repo, key.tag).as_bytes());
        let hex = id.hex();
        self.dir.join(&hex[..2]).join(hex)
    }

    /// The variants stored for `key`; empty when there is no (readable) file.
    pub fn load(&self, key: &TagKey) -> Vec<Variant> {
        let Ok(raw) = fs::read(self.path(key)) else {
            return Vec::new();
        };
        let Ok(record) = serde_json::from_slice::<TagRecord>(&raw) else {
            return Vec::new();
        };
        let same_key = record.upstream == *key.upstream
            && record.repo == key.repo.as_str()
            && record.tag == key.tag.as_str();
        if !same_key {
            return Vec::new();
        }
        record
            .variants
            .into_iter()
            .filter_map(|v| {
                Some(Variant {
                    digest: v.digest.parse().ok()?,
                    media_type: v.media_type,
                    asked_with: v.asked_with,
                    fetched_at: UNIX_EPOCH + Duration::from_millis(v.fetched_at),
                    revalidate_after: None,
                })
            })
            .collect()
    }

    /// Replaces the file for `key` (removes it when there is nothing to keep).
    pub fn store(&self, key: &TagKey, variants: &[Variant]) -> io::Result<()> {
        let path = self.path(key);
        if variants.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let record = TagRecord {
            upstream: key.upstream.to_string(),
            repo: key.repo.to_string(),
            tag: key.tag.to_string(),
            variants: variants
                .iter()
                .map(|v| VariantRecord {
                    digest: v.digest.to_string(),
                    media_type: v.media_type.clone(),
                    asked_with: v.asked_with.clone(),
                    fetched_at: v
                        .fetched_at
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis()
                        .try_into()
                        .unwrap_or(u64::MAX),
                })
                .collect(),
        };
        let json = serde_json::to_vec(&record).expect("tag records always serialise");
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let temp = self.tmp.join(format!("tag-{}-{n}", std::process::id()));
        let written = (|| {
            fs::File::create(&temp)?.write_all(&json)?;
            fs::create_dir_all(path.parent().expect("tag paths have a parent"))?;
            fs::rename(&temp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }

    /// Marks a tag as confirmed now (its file's mtime), so tag files of tags still in use can be
    /// told from forgotten ones.
    pub fn touch(&self, key: &TagKey) {
        let _ = fs::File::open(self.path(key)).and_then(|f| f.set_modified(SystemTime::now()));
    }

    /// Removes the files of tags not confirmed since `cutoff`; returns how many.
    pub fn remove_idle(&self, cutoff: SystemTime) -> io::Result<usize> {
        let mut removed = 0;
        for fan in fs::read_dir(&self.dir)? {
            let Ok(files) = fs::read_dir(fan?.path()) else {
                continue;
            };
            for file in files.flatten() {
                let idle = file
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|modified| modified < cutoff);
                if idle && fs::remove_file(file.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}
