//! The images a cache holds: every cached tag, what it points to, the platforms an index lists,
//! and the bytes on disk and last use of the manifests and blobs it names. Read from the cache
//! directory (tag files, manifest files) and from the books of committed entries: the running
//! server's index, or a scan of the directory for `wharf cache images`. Blocking.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::SystemTime;

use super::maintenance::{age, bytes};
use super::store::scan::scan;
use super::store::{entry_path, manifest_file, EntryKey, EntryKind};
use super::tags::{TagKey, TagTable, Variant};
use crate::oci::manifest::{Descriptor, ManifestDoc};
use crate::oci::{Digest, RawManifest};

/// One variant of a cached tag, and what of it is on disk.
#[derive(Debug, Clone)]
pub struct CachedImage {
    pub key: TagKey,
    pub digest: Digest,
    pub media_type: String,
    /// When the upstream last said the tag points here.
    pub fetched_at: SystemTime,
    /// The platforms an index lists (none for a single-platform manifest; attestations, which
    /// name no platform anyone runs, are left out).
    pub platforms: Vec<String>,
    /// Bytes on disk of this image's cached manifests and blobs.
    pub size: u64,
    /// The blobs (configs and layers) its cached manifests name, and how many are cached.
    pub blobs: usize,
    pub blobs_cached: usize,
    /// The newest use of any of its cached entries.
    pub last_use: Option<SystemTime>,
}

impl CachedImage {
    /// The image as `docker pull` names it (`ghcr.io/org/app:v2`).
    pub fn reference(&self) -> String {
        format!("{}/{}:{}", self.key.upstream, self.key.repo, self.key.tag)
    }
}

/// What the books say of an entry: its size and last use, if it is committed.
pub type Books<'a> = &'a dyn Fn(&EntryKey) -> Option<(u64, SystemTime)>;

/// Every variant of `tags`, sorted by reference, then digest.
pub fn inventory(
    root: &Path,
    tags: Vec<(TagKey, Vec<Variant>)>,
    books: Books<'_>,
) -> Vec<CachedImage> {
    let mut images: Vec<CachedImage> = tags
        .into_iter()
        .flat_map(|(key, variants)| {
            variants
                .into_iter()
                .map(move |variant| image(root, key.clone(), variant, books))
        })
        .collect();
    images.sort_by(|a, b| {
        (a.reference(), a.digest.to_string()).cmp(&(b.reference(), b.digest.to_string()))
    });
    images
}

/// Adds up what is on disk of one variant.
fn image(root: &Path, key: TagKey, variant: Variant, books: Books<'_>) -> CachedImage {
    let mut image = CachedImage {
        key,
        digest: variant.digest.clone(),
        media_type: variant.media_type,
        fetched_at: variant.fetched_at,
        platforms: Vec::new(),
        size: 0,
        blobs: 0,
        blobs_cached: 0,
        last_use: None,
    };
    let mut blobs = HashSet::new();
    let count = |image: &mut CachedImage, key: EntryKey| {
        if let Some((size, used)) = books(&key) {
            image.size += size;
            image.last_use = image.last_use.max(Some(used));
            return true;
        }
        false
    };
    let mut walk = |image: &mut CachedImage, config: Descriptor, layers: Vec<Descriptor>| {
        for blob in std::iter::once(config).chain(layers) {
            if blob.is_distributable() && blobs.insert(blob.digest.clone()) {
                image.blobs += 1;
                if count(image, EntryKey::blob(&blob.digest)) {
                    image.blobs_cached += 1;
                }
            }
        }
    };
    let Some(top) = read(root, &variant.digest, books) else {
        return image;
    };
    count(&mut image, EntryKey::manifest(&variant.digest));
    match top {
        ManifestDoc::Image { config, layers } => walk(&mut image, config, layers),
        ManifestDoc::Index(entries) => {
            for entry in entries {
                if let Some(platform) = entry.platform.as_ref().map(ToString::to_string) {
                    if platform != "unknown/unknown" {
                        image.platforms.push(platform);
                    }
                }
                let Some(ManifestDoc::Image { config, layers }) = read(root, &entry.digest, books)
                else {
                    continue;
                };
                count(&mut image, EntryKey::manifest(&entry.digest));
                walk(&mut image, config, layers);
            }
        }
    }
    image
}

/// A cached manifest's document, if it is committed, reads, and parses.
fn read(root: &Path, digest: &Digest, books: Books<'_>) -> Option<ManifestDoc> {
    books(&EntryKey::manifest(digest))?;
    let raw = std::fs::read(entry_path(root, EntryKind::Manifest, digest)).ok()?;
    let RawManifest {
        media_type, body, ..
    } = manifest_file::decode(&raw, digest)?;
    ManifestDoc::parse(&media_type, &body).ok()
}

/// What `wharf cache images` shows: the images of a cache directory, without the counters a
/// running server keeps.
pub struct OnDisk(pub Vec<CachedImage>);

/// The images of the cache directory `root`, from its tag files and a scan of its entries.
pub fn on_disk(root: &Path) -> std::io::Result<OnDisk> {
    let entries: std::collections::HashMap<EntryKey, (u64, SystemTime)> = scan(root)?
        .entries
        .into_iter()
        .map(|e| (e.key, (e.size, e.used)))
        .collect();
    let tags = TagTable::open(root)?.all();
    Ok(OnDisk(inventory(root, tags, &|key| {
        entries.get(key).copied()
    })))
}

impl fmt::Display for OnDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<48} {:<19} {:>12} {:>7}  {:<24} LAST USE",
            "IMAGE", "DIGEST", "SIZE", "BLOBS", "PLATFORMS"
        )?;
        for image in &self.0 {
            let digest = image.digest.to_string();
            writeln!(
                f,
                "{:<48} {:<19} {:>12} {:>7}  {:<24} {}",
                image.reference(),
                &digest[..digest.len().min(19)],
                bytes(image.size),
                format!("{}/{}", image.blobs_cached, image.blobs),
                if image.platforms.is_empty() {
                    "-".to_owned()
                } else {
                    image.platforms.join(",")
                },
                age(image.last_use)
            )?;
        }
        let total: u64 = self.0.iter().map(|i| i.size).sum();
        writeln!(
            f,
            "{} images; {} (a blob shared by images counts in each)",
            self.0.len(),
            bytes(total)
        )
    }
}
