//! Tags on disk, so a restart (even one while the upstream is down) still knows what each cached
//! tag pointed to. One small JSON file per tag under `tags/`, named by a hash of the tag's key
//! and replaced by rename. Not fsynced: losing the newest answer to a crash costs one
//! revalidation, and a file that does not parse is treated as absent.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::variant::{TagKey, Variant};
use crate::cache::small_files::SmallFiles;
use crate::oci::media::Accept;

pub struct TagFiles {
    files: SmallFiles,
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
    /// Tag files live in `<root>/tags`.
    pub fn open(root: &Path) -> io::Result<TagFiles> {
        Ok(TagFiles {
            files: SmallFiles::open(root, "tags")?,
        })
    }

    /// What a tag's file is named by.
    fn name(key: &TagKey) -> String {
        format!("{}\n{}\n{}", key.upstream, key.repo, key.tag)
    }

    /// The variants stored for `key`; empty when there is no (readable) file.
    pub fn load(&self, key: &TagKey) -> Vec<Variant> {
        let Ok(raw) = self.files.read(&Self::name(key)) else {
            return Vec::new();
        };
        match decode(&raw) {
            Some((stored, variants)) if stored == *key => variants,
            _ => Vec::new(),
        }
    }

    /// Every tag on disk that is `wanted`, with its variants (blocking: reads them all).
    pub fn matching(&self, wanted: impl Fn(&TagKey) -> bool) -> Vec<(TagKey, Vec<Variant>)> {
        let all = self.files.read_all().unwrap_or_default();
        all.iter()
            .filter_map(|raw| decode(raw))
            .filter(|(key, _)| wanted(key))
            .collect()
    }

    /// Replaces the file for `key` (removes it when there is nothing to keep).
    pub fn store(&self, key: &TagKey, variants: &[Variant]) -> io::Result<()> {
        if variants.is_empty() {
            return self.files.remove(&Self::name(key));
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
        self.files.replace(&Self::name(key), &json)
    }

    /// Marks a tag as confirmed now (its file's mtime), so tag files of tags still in use can be
    /// told from forgotten ones.
    pub fn touch(&self, key: &TagKey) {
        let _ = self.files.touch(&Self::name(key));
    }

    /// Removes the files of tags not confirmed since `cutoff`; returns how many.
    pub fn remove_idle(&self, cutoff: SystemTime) -> io::Result<usize> {
        self.files.remove_idle(cutoff)
    }
}

/// A tag file's key and variants, if it parses.
fn decode(raw: &[u8]) -> Option<(TagKey, Vec<Variant>)> {
    let record = serde_json::from_slice::<TagRecord>(raw).ok()?;
    let key = TagKey {
        upstream: record.upstream.into(),
        repo: record.repo.parse().ok()?,
        tag: record.tag.parse().ok()?,
    };
    let variants = record
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
        .collect();
    Some((key, variants))
}
