//! Files on disk, keyed by digest. Content enters `blobs/` or `manifests/` only by `rename` from
//! `tmp/` after it was verified and fsynced, so anything found there is whole and correct.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::oci::Digest;

/// The cache directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    next_temp: AtomicU64,
    bytes: AtomicU64,
    entries: AtomicU64,
}

/// An open committed blob.
#[derive(Debug, Clone)]
pub struct BlobFile {
    pub file: Arc<File>,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Blobs,
    Manifests,
}

impl Area {
    fn dir(self) -> &'static str {
        match self {
            Area::Blobs => "blobs",
            Area::Manifests => "manifests",
        }
    }
}

impl Store {
    /// Opens (creating if needed) a cache directory, removes temp files a previous run left
    /// behind, and totals what is committed from file metadata alone.
    pub fn open(root: &Path) -> io::Result<Store> {
        for dir in ["blobs", "manifests", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        for entry in fs::read_dir(root.join("tmp"))? {
            let path = entry?.path();
            // A leftover is an interrupted fill: never committed, safe to drop.
            let _ = fs::remove_file(&path);
        }
        let store = Store {
            root: root.to_owned(),
            next_temp: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            entries: AtomicU64::new(0),
        };
        for area in [Area::Blobs, Area::Manifests] {
            store.total_up(&root.join(area.dir()))?;
        }
        Ok(store)
    }

    fn total_up(&self, dir: &Path) -> io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                self.total_up(&entry.path())?;
            } else if kind.is_file() {
                self.account(entry.metadata()?.len());
            }
        }
        Ok(())
    }

    fn account(&self, size: u64) {
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.entries.fetch_add(1, Ordering::Relaxed);
    }

    /// Committed bytes and entries.
    pub fn usage(&self) -> (u64, u64) {
        (
            self.bytes.load(Ordering::Relaxed),
            self.entries.load(Ordering::Relaxed),
        )
    }

    /// `<root>/<area>/<algorithm>/<first two hex>/<hex>`. Digests only ever hold lowercase hex,
    /// so this path cannot leave the cache directory.
    pub fn path(&self, area: Area, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(area.dir())
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    /// Creates a new, empty temp file for a fill or a manifest.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let n = self.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Makes a verified temp file visible under its digest: fsync the data, rename, fsync the
    /// directory so the rename itself survives a crash.
    pub fn commit(&self, temp: &Path, file: &File, area: Area, digest: &Digest) -> io::Result<()> {
        file.sync_all()?;
        let size = file.metadata()?.len();
        let target = self.path(area, digest);
        let parent = target.parent().expect("digest paths have a parent");
        fs::create_dir_all(parent)?;
        let existed = target.exists();
        fs::rename(temp, &target)?;
        File::open(parent)?.sync_all()?;
        if !existed {
            self.account(size);
        }
        Ok(())
    }

    /// Opens a committed blob, if present.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<BlobFile>> {
        match File::open(self.path(Area::Blobs, digest)) {
            Ok(file) => {
                let size = file.metadata()?.len();
                Ok(Some(BlobFile {
                    file: Arc::new(file),
                    size,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn commit_moves_into_place_and_reopen_totals_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"hello");
        let (temp, mut file) = store.temp_file().unwrap();
        file.write_all(b"hello").unwrap();
        store.commit(&temp, &file, Area::Blobs, &digest).unwrap();
        assert!(!temp.exists());
        let blob = store.open_blob(&digest).unwrap().unwrap();
        assert_eq!(blob.size, 5);
        assert_eq!(store.usage(), (5, 1));

        let (leftover, _) = store.temp_file().unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(!leftover.exists(), "temp files are removed at start-up");
        assert_eq!(store.usage(), (5, 1));
    }

    #[test]
    fn missing_blob_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(store.open_blob(&Digest::sha256_of(b"x")).unwrap().is_none());
    }
}
