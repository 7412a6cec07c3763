//! Files on disk, keyed by digest, and the books kept on them. Content enters `blobs/` or
//! `manifests/` only by `rename` from `tmp/` after it was verified and fsynced, so anything found
//! there is whole and correct. Room is made under `max_size` before that rename, so committed
//! bytes never pass it. A file's mtime is its last use, so recency survives restarts and crashes
//! and the index is rebuilt from metadata alone.

mod disk;
mod health;
mod index;
mod layout;
mod ledger;
pub mod manifest_file;
mod pressure;
pub mod scan;
mod space;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{BypassReason, EvictionReason, Metrics};
use crate::oci::{Digest, RawManifest};
use disk::DiskRoom;
pub use disk::FillRoom;
pub use health::Condition;
use health::Health;
use index::Index;
use layout::Layout;
pub use layout::{entry_path, EntryKey, EntryKind};
pub use ledger::Usage;
use ledger::{Ledger, Room, Victims};
pub use pressure::is_transient;
use pressure::OpenFailures;

/// The cache directory.
pub struct Store {
    layout: Layout,
    ledger: Ledger,
    room: DiskRoom,
    health: Health,
    open_failures: OpenFailures,
    metrics: Metrics,
    /// Held for the store's lifetime: one wharf per directory.
    _lock: File,
}

/// An open committed file. It stays readable to its holder even if it is evicted.
#[derive(Clone)]
pub struct CommittedFile {
    pub file: Arc<File>,
    pub size: u64,
}

/// A use of an entry to record in its file's mtime (its recency across restarts).
pub struct PersistUse {
    path: PathBuf,
    at: SystemTime,
}

impl PersistUse {
    /// Best effort: a file owned by someone else keeps its old recency.
    pub fn run(self) {
        let _ = File::open(&self.path).and_then(|f| f.set_modified(self.at));
    }
}

/// What a commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// Larger than `max_size`: not cached, and nothing was evicted for it.
    TooLarge,
}

impl Store {
    /// Opens (creating if needed) a cache directory: takes its lock, removes temp files a
    /// previous run left behind, rebuilds the index from file metadata, and evicts down to
    /// `max_size` if the directory holds more (the bound may have been lowered).
    pub fn open(root: &Path, max_size: u64, metrics: Metrics) -> io::Result<Store> {
        let layout = Layout::create(root)?;
        let lock = disk::lock(root)?;
        layout.clear_temp()?;
        let scan = scan::scan(root)?;
        for path in &scan.foreign {
            tracing::warn!(path = %path.display(), "ignoring a file in the cache that is not named like a digest");
        }
        let mut entries = scan.entries;
        entries.sort_unstable_by_key(|e| e.used);
        let mut index = Index::new();
        for e in entries {
            index.insert(e.key, e.size, e.used);
        }
        let store = Store {
            layout,
            ledger: Ledger::new(index, max_size, metrics.clone()),
            room: DiskRoom::new(root),
            health: Health::new(metrics.clone()),
            open_failures: OpenFailures::new(metrics.clone()),
            metrics,
            _lock: lock,
        };
        let victims = store.ledger.over_max_size();
        // What cannot be removed now (a read-only directory) stays counted; the next commit
        // tries again.
        let _ = store.unlink(victims, EvictionReason::Size);
        store.ledger.publish();
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    pub fn usage(&self) -> Usage {
        self.ledger.usage()
    }

    pub fn path(&self, key: &EntryKey) -> PathBuf {
        self.layout.path(key)
    }

    /// Creates a new, empty temp file for a fill or a manifest. A shortage of descriptors or
    /// memory fails this one request; anything else suspends caching until a probe succeeds.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        self.layout.temp_file().inspect_err(|e| {
            if !is_transient(e) {
                self.health.failed(e);
            }
        })
    }

    /// Makes a verified temp file visible under its digest: fsync the data, make room, rename,
    /// fsync the directory so the rename itself survives a crash. The temp file is gone
    /// afterwards whatever the outcome. Blocks while other commits hold the room it needs.
    pub fn commit(&self, temp: &Path, file: &File, key: &EntryKey) -> io::Result<Committed> {
        let committed = self.commit_inner(temp, file, key);
        if committed.as_ref().map_or(true, |c| *c != Committed::Stored) {
            let _ = fs::remove_file(temp);
        }
        if let Err(e) = &committed {
            self.health.failed(e);
        }
        committed
    }

    fn commit_inner(&self, temp: &Path, file: &File, key: &EntryKey) -> io::Result<Committed> {
        file.sync_all()?;
        let size = file.metadata()?.len();
        let victims = match self.ledger.reserve(size) {
            Room::Granted(victims) => victims,
            Room::TooLarge => {
                self.metrics.bypassed(BypassReason::Oversize);
                tracing::debug!(digest = %key.digest, size, "not caching an entry larger than the whole cache");
                return Ok(Committed::TooLarge);
            }
        };
        // Victims go before the new file arrives: the bytes on disk never pass max_size. One
        // that cannot be removed stays counted, and this commit gives up its room instead.
        if let Err(e) = self.unlink(victims, EvictionReason::Size) {
            self.ledger.end_reservation(size, None);
            return Err(e);
        }
        let target = self.path(key);
        let parent = target.parent().expect("digest paths have a parent");
        let renamed = fs::create_dir_all(parent).and_then(|()| fs::rename(temp, &target));
        // Once renamed, the file is in the cache and must be counted, even if the directory's
        // fsync then fails (a crash could still undo the rename, which only loses the entry).
        self.ledger
            .end_reservation(size, renamed.is_ok().then(|| key.clone()));
        renamed?;
        File::open(parent)?.sync_all()?;
        Ok(Committed::Stored)
    }

    /// Opens a committed blob and counts the use; `Ok(None)` when it is not cached. Only proof
    /// that the entry is gone or damaged removes it: a missing file, or a size that does not
    /// match the index (changed outside wharf); the request then becomes a miss. Any other
    /// failure to open it (out of descriptors, a permission changed) keeps the entry and is the
    /// caller's error to answer.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<CommittedFile>> {
        let key = EntryKey::blob(digest);
        let now = SystemTime::now();
        let Some(used) = self.ledger.touch(&key, now) else {
            return Ok(None);
        };
        let opened =
            File::open(self.path(&key)).and_then(|file| Ok((file.metadata()?.len(), file)));
        let (size, file) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.drop_invalid(&key, "its file is gone");
                return Ok(None);
            }
            Err(e) => {
                self.open_failures.failed(&e);
                return Err(e);
            }
        };
        self.open_failures.succeeded();
        if size != used.size {
            self.drop_invalid(&key, "its size on disk does not match the index");
            return Ok(None);
        }
        if used.persist {
            // Best effort: a file owned by someone else keeps its old recency.
            let _ = file.set_modified(now);
        }
        Ok(Some(CommittedFile {
            file: Arc::new(file),
            size,
        }))
    }

    /// Counts a use of an entry served without opening its file (a manifest held in memory).
    /// Returns whether the entry is still cached.
    pub fn touch(&self, key: &EntryKey) -> bool {
        match self.note_use(key) {
            Some(Some(persist)) => {
                persist.run();
                true
            }
            Some(None) => true,
            None => false,
        }
    }

    /// Counts a use in the index; `None` when the entry is not cached, else the write that
    /// records the use on disk when one is due (at most once a second per entry), for the
    /// caller to run where blocking is allowed.
    pub fn note_use(&self, key: &EntryKey) -> Option<Option<PersistUse>> {
        let now = SystemTime::now();
        let used = self.ledger.touch(key, now)?;
        Some(used.persist.then(|| PersistUse {
            path: self.path(key),
            at: now,
        }))
    }

    pub fn contains(&self, key: &EntryKey) -> bool {
        self.ledger.contains(key)
    }

    /// A committed entry's size and last use, without counting a use.
    pub fn entry(&self, key: &EntryKey) -> Option<(u64, SystemTime)> {
        let entry = self.ledger.peek(key)?;
        Some((
            entry.size,
            UNIX_EPOCH + Duration::from_secs(entry.last_used.into()),
        ))
    }

    /// Reads a cached manifest and counts the use, re-checking its digest: a damaged file is
    /// removed, not served.
    pub fn read_manifest(&self, digest: &Digest) -> io::Result<Option<RawManifest>> {
        let key = EntryKey::manifest(digest);
        if !self.touch(&key) {
            return Ok(None);
        }
        let raw = match fs::read(self.path(&key)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.drop_invalid(&key, "its file is gone");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let manifest = manifest_file::decode(&raw, digest);
        if manifest.is_none() {
            self.drop_invalid(&key, "its bytes do not match its digest");
        }
        Ok(manifest)
    }

    /// Stores a manifest whose digest the caller has verified, unless it is already cached or
    /// caching is suspended.
    pub fn write_manifest(&self, manifest: &RawManifest) -> io::Result<()> {
        let Some(contents) = manifest_file::encode(manifest) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "media type holds a newline",
            ));
        };
        let key = EntryKey::manifest(&manifest.digest);
        if self.contains(&key) || !self.caching_allowed() {
            return Ok(());
        }
        let (temp, mut file) = self.temp_file()?;
        if let Err(e) = file.write_all(&contents) {
            self.write_failed(&e);
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        self.commit(&temp, &file, &key).map(drop)
    }

    /// Removes an entry an operator wants gone, from the index and from disk: whether it was
    /// held. A reader holding its file reads it to the end.
    pub fn purge(&self, key: &EntryKey) -> io::Result<bool> {
        let Some(entry) = self.ledger.remove(key) else {
            return Ok(false);
        };
        let unlinked = self.unlink(vec![(key.clone(), entry)], EvictionReason::Purged);
        self.ledger.publish();
        unlinked.map(|()| true)
    }

    /// Removes an entry whose file is missing or damaged, from the index and from disk.
    fn drop_invalid(&self, key: &EntryKey, why: &str) {
        let Some(entry) = self.ledger.remove(key) else {
            return;
        };
        tracing::warn!(digest = %key.digest, why, "dropping a cache entry");
        let _ = fs::remove_file(self.path(key));
        self.metrics.evicted(EvictionReason::Invalid, entry.size);
        self.ledger.publish();
    }

    /// Evicts every entry unused for `max_idle`.
    pub fn evict_idle(&self, max_idle: Duration) {
        let cutoff = SystemTime::now()
            .checked_sub(max_idle)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let victims = self.ledger.idle_since(cutoff);
        if !victims.is_empty() {
            // A victim that cannot be removed is put back and tried again next sweep.
            let _ = self.unlink(victims, EvictionReason::Idle);
            self.ledger.publish();
        }
    }

    /// Unlinks victims taken out of the index. Unlink, never truncate: a reader holding the file
    /// keeps reading it to the end. A victim that cannot be removed goes back into the index (it
    /// still takes space), and the first such error is returned.
    fn unlink(&self, victims: Victims, reason: EvictionReason) -> io::Result<()> {
        let mut result = Ok(());
        for (key, entry) in victims {
            match fs::remove_file(self.path(&key)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(digest = %key.digest, error = %e, "cannot remove an evicted entry");
                    self.ledger.restore(key, entry);
                    if result.is_ok() {
                        result = Err(e);
                    }
                }
                _ => {
                    tracing::debug!(digest = %key.digest, size = entry.size, reason = reason.as_str(), "evicted");
                    self.metrics.evicted(reason, entry.size);
                }
            }
        }
        result
    }
}
