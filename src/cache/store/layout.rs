//! Where things live in a cache directory: `blobs/` and `manifests/` by digest, `tmp/` for what
//! is being written, `tags/` for the tag table. Paths are built from parsed digests only, so
//! none can leave the directory.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::oci::Digest;

/// The two kinds of content stored by digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Blob,
    Manifest,
}

impl EntryKind {
    pub const ALL: [EntryKind; 2] = [EntryKind::Blob, EntryKind::Manifest];

    pub fn dir(self) -> &'static str {
        match self {
            EntryKind::Blob => "blobs",
            EntryKind::Manifest => "manifests",
        }
    }
}

/// One committed entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryKey {
    pub kind: EntryKind,
    pub digest: Digest,
}

impl EntryKey {
    pub fn blob(digest: &Digest) -> EntryKey {
        EntryKey {
            kind: EntryKind::Blob,
            digest: digest.clone(),
        }
    }

    pub fn manifest(digest: &Digest) -> EntryKey {
        EntryKey {
            kind: EntryKind::Manifest,
            digest: digest.clone(),
        }
    }
}

/// `<root>/<kind>/<algorithm>/<first two hex>/<hex>`. Digests only ever hold lowercase hex, so
/// this path cannot leave the cache directory.
pub fn entry_path(root: &Path, kind: EntryKind, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join(kind.dir())
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

/// A cache directory's layout, and the temp files written in it.
pub struct Layout {
    root: PathBuf,
    next_temp: AtomicU64,
}

impl Layout {
    /// Creates the directories if needed.
    pub fn create(root: &Path) -> io::Result<Layout> {
        for kind in EntryKind::ALL {
            fs::create_dir_all(root.join(kind.dir()))?;
        }
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Layout {
            root: root.to_owned(),
            next_temp: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, key: &EntryKey) -> PathBuf {
        entry_path(&self.root, key.kind, &key.digest)
    }

    /// Removes what a previous run left in `tmp/`: an interrupted fill or write, never
    /// committed, safe to drop.
    pub fn clear_temp(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(())
    }

    /// Creates a new, empty temp file.
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
}
