//! Files on disk, keyed by digest, and the books kept on them. Content enters `blobs/` or
//! `manifests/` only by `rename` from `tmp/` after it was verified and fsynced, so anything found
//! there is whole and correct. Room is made under `max_size` before that rename, so committed
//! bytes never pass it. A file's mtime is its last use, so recency survives restarts and crashes
//! and the index is rebuilt from metadata alone.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use super::buffers::BufferPool;
use super::disk::{self, Promises, RoomClaim};
use super::health::{Condition, Health};
use super::index::{Entry, EntryKey, Index, Reservation};
use super::reader::FillReader;
use super::scan;
use crate::metrics::{BypassReason, EvictionReason, Metrics};
use crate::oci::Digest;

/// Free space a probe wants to see before caching resumes after the disk was full.
const PROBE_MIN_FREE: u64 = 1024 * 1024;

/// The cache directory.
pub struct Store {
    root: PathBuf,
    max_size: u64,
    next_temp: AtomicU64,
    index: Mutex<Index>,
    /// Signalled when a reservation ends, for commits waiting for room.
    reservation_ended: Condvar,
    promises: Promises,
    health: Health,
    metrics: Metrics,
    buffers: BufferPool,
    /// Held for the store's lifetime: one wharf per directory.
    _lock: File,
}

/// An open committed blob. The file stays readable to its holder even if it is evicted.
#[derive(Clone)]
pub struct BlobFile {
    file: Arc<File>,
    pub size: u64,
    buffers: BufferPool,
}

impl BlobFile {
    /// A reader of bytes `start..end`.
    pub fn reader<E: Clone>(&self, start: u64, end: u64) -> FillReader<E> {
        let end = Some(end.min(self.size));
        FillReader::new(self.file.clone(), self.buffers.clone(), None, start, end)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    Blobs,
    Manifests,
}

impl Area {
    pub(super) fn dir(self) -> &'static str {
        match self {
            Area::Blobs => "blobs",
            Area::Manifests => "manifests",
        }
    }
}

/// What a commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    Stored,
    /// Larger than `max_size`: not cached, and nothing was evicted for it.
    TooLarge,
}

/// Committed bytes and entries, and the span of their last uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub max_bytes: u64,
    /// Oldest and newest last use, in seconds since the Unix epoch.
    pub use_span: Option<(u32, u32)>,
}

impl Store {
    /// Opens (creating if needed) a cache directory: takes its lock, removes temp files a
    /// previous run left behind, rebuilds the index from file metadata, and evicts down to
    /// `max_size` if the directory holds more (the bound may have been lowered).
    pub fn open(root: &Path, max_size: u64, metrics: Metrics) -> io::Result<Store> {
        for dir in ["blobs", "manifests", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        let lock = disk::lock(root)?;
        for entry in fs::read_dir(root.join("tmp"))? {
            // A leftover is an interrupted fill or write: never committed, safe to drop.
            let _ = fs::remove_file(entry?.path());
        }
        let scan = scan::scan(root)?;
        for path in &scan.foreign {
            tracing::warn!(path = %path.display(), "ignoring a file in the cache that is not named like a digest");
        }
        let mut entries = scan.entries;
        entries.sort_unstable_by_key(|e| e.used);
        let mut index = Index::new();
        for e in entries {
            let key = EntryKey {
                area: e.area,
                digest: e.digest,
            };
            index.insert(key, e.size, e.used);
        }
        metrics.cache_max_size_bytes.set(gauge_value(max_size));
        let store = Store {
            root: root.to_owned(),
            max_size,
            next_temp: AtomicU64::new(0),
            index: Mutex::new(index),
            reservation_ended: Condvar::new(),
            promises: Promises::default(),
            health: Health::new(metrics.clone()),
            metrics,
            buffers: BufferPool::default(),
            _lock: lock,
        };
        let victims = store.lock_index().shrink_to(max_size);
        // What cannot be removed now (a read-only directory) stays counted; the next commit
        // tries again.
        let _ = store.unlink(victims, EvictionReason::Size);
        store.publish_usage();
        Ok(store)
    }

    fn lock_index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("lock poisoned")
    }

    pub(super) fn buffers(&self) -> &BufferPool {
        &self.buffers
    }

    pub fn usage(&self) -> Usage {
        let index = self.lock_index();
        let (bytes, entries) = index.usage();
        Usage {
            bytes,
            entries,
            max_bytes: self.max_size,
            use_span: index.use_span(),
        }
    }

    fn publish_usage(&self) {
        let (bytes, entries) = self.lock_index().usage();
        self.metrics.cache_size_bytes.set(gauge_value(bytes));
        self.metrics.cache_entries.set(gauge_value(entries));
    }

    /// `<root>/<area>/<algorithm>/<first two hex>/<hex>`. Digests only ever hold lowercase hex,
    /// so this path cannot leave the cache directory.
    pub fn path(&self, area: Area, digest: &Digest) -> PathBuf {
        entry_path(&self.root, area, digest)
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
            .open(&path)
            .inspect_err(|e| {
                self.health.failed(e);
            })?;
        Ok((path, file))
    }

    /// Makes a verified temp file visible under its digest: fsync the data, make room, rename,
    /// fsync the directory so the rename itself survives a crash. The temp file is gone
    /// afterwards whatever the outcome. Blocks while other commits hold the room it needs.
    pub fn commit(
        &self,
        temp: &Path,
        file: &File,
        area: Area,
        digest: &Digest,
    ) -> io::Result<Committed> {
        let committed = self.commit_inner(temp, file, area, digest);
        if committed.as_ref().map_or(true, |c| *c != Committed::Stored) {
            let _ = fs::remove_file(temp);
        }
        if let Err(e) = &committed {
            self.health.failed(e);
        }
        committed
    }

    fn commit_inner(
        &self,
        temp: &Path,
        file: &File,
        area: Area,
        digest: &Digest,
    ) -> io::Result<Committed> {
        file.sync_all()?;
        let size = file.metadata()?.len();
        let victims = {
            let mut index = self.lock_index();
            loop {
                match index.reserve(size, self.max_size) {
                    Reservation::Granted(victims) => break victims,
                    Reservation::TooLarge => {
                        self.metrics.bypassed(BypassReason::Oversize);
                        tracing::debug!(%digest, size, "not caching an entry larger than the whole cache");
                        return Ok(Committed::TooLarge);
                    }
                    Reservation::Wait => {
                        index = self.reservation_ended.wait(index).expect("lock poisoned");
                    }
                }
            }
        };
        // Victims go before the new file arrives: the bytes on disk never pass max_size. One
        // that cannot be removed stays counted, and this commit gives up its room instead.
        if let Err(e) = self.unlink(victims, EvictionReason::Size) {
            self.end_reservation(size, None);
            return Err(e);
        }
        let target = self.path(area, digest);
        let parent = target.parent().expect("digest paths have a parent");
        let renamed = fs::create_dir_all(parent).and_then(|()| fs::rename(temp, &target));
        let key = EntryKey {
            area,
            digest: digest.clone(),
        };
        // Once renamed, the file is in the cache and must be counted, even if the directory's
        // fsync then fails (a crash could still undo the rename, which only loses the entry).
        self.end_reservation(size, renamed.is_ok().then_some(key));
        renamed?;
        File::open(parent)?.sync_all()?;
        Ok(Committed::Stored)
    }

    /// Ends a reservation of `size` bytes, inserting the entry that took its place, if any.
    fn end_reservation(&self, size: u64, landed: Option<EntryKey>) {
        {
            let mut index = self.lock_index();
            index.release(size);
            if let Some(key) = landed {
                index.insert(key, size, SystemTime::now());
            }
        }
        self.reservation_ended.notify_all();
        self.publish_usage();
    }

    /// Opens a committed blob and counts the use. A file that is missing, unreadable, or whose
    /// size does not match the index (changed outside wharf) is dropped, never served: the
    /// request becomes a miss.
    pub fn open_blob(&self, digest: &Digest) -> Option<BlobFile> {
        let key = EntryKey {
            area: Area::Blobs,
            digest: digest.clone(),
        };
        let now = SystemTime::now();
        let used = self.lock_index().touch(&key, now)?;
        let opened = File::open(self.path(Area::Blobs, digest))
            .and_then(|file| Ok((file.metadata()?.len(), file)));
        let (size, file) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.drop_invalid(&key, "its file is gone");
                return None;
            }
            Err(e) => {
                self.drop_invalid(&key, &format!("its file cannot be read: {e}"));
                return None;
            }
        };
        if size != used.size {
            self.drop_invalid(&key, "its size on disk does not match the index");
            return None;
        }
        if used.persist {
            // Best effort: a file owned by someone else keeps its old recency.
            let _ = file.set_modified(now);
        }
        Some(BlobFile {
            file: Arc::new(file),
            size,
            buffers: self.buffers.clone(),
        })
    }

    /// Counts a use of an entry served without opening its file (a manifest held in memory).
    /// Returns whether the entry is still cached.
    pub fn touch(&self, area: Area, digest: &Digest) -> bool {
        let key = EntryKey {
            area,
            digest: digest.clone(),
        };
        let now = SystemTime::now();
        let Some(used) = self.lock_index().touch(&key, now) else {
            return false;
        };
        if used.persist {
            let _ = File::open(self.path(area, digest)).and_then(|f| f.set_modified(now));
        }
        true
    }

    pub fn contains(&self, area: Area, digest: &Digest) -> bool {
        let key = EntryKey {
            area,
            digest: digest.clone(),
        };
        self.lock_index().contains(&key)
    }

    /// Removes an entry whose file is missing or damaged, from the index and from disk.
    pub(super) fn drop_invalid(&self, key: &EntryKey, why: &str) {
        let Some(entry) = self.lock_index().remove(key) else {
            return;
        };
        tracing::warn!(digest = %key.digest, why, "dropping a cache entry");
        let _ = fs::remove_file(self.path(key.area, &key.digest));
        self.metrics.evicted(EvictionReason::Invalid, entry.size);
        self.publish_usage();
    }

    /// Evicts every entry unused for `max_idle`.
    pub fn evict_idle(&self, max_idle: Duration) {
        let cutoff = SystemTime::now()
            .checked_sub(max_idle)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let victims = self.lock_index().pop_idle(cutoff);
        if !victims.is_empty() {
            // A victim that cannot be removed is put back and tried again next sweep.
            let _ = self.unlink(victims, EvictionReason::Idle);
            self.publish_usage();
        }
    }

    /// Unlinks victims taken out of the index. Unlink, never truncate: a reader holding the file
    /// keeps reading it to the end. A victim that cannot be removed goes back into the index (it
    /// still takes space), and the first such error is returned.
    fn unlink(&self, victims: Vec<(EntryKey, Entry)>, reason: EvictionReason) -> io::Result<()> {
        let mut result = Ok(());
        for (key, entry) in victims {
            match fs::remove_file(self.path(key.area, &key.digest)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    tracing::warn!(digest = %key.digest, error = %e, "cannot remove an evicted entry");
                    self.lock_index().restore(key, entry);
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

    // ---- the disk ----------------------------------------------------------------------------

    /// Claims room on the filesystem for a fill of `bytes`, evicting least recently used entries
    /// while the disk is short and the cache can cover the shortfall. `None` when there is no
    /// room: for an entry the cache could hold, caching is then suspended until that much is
    /// free.
    pub fn claim_room(&self, bytes: u64) -> Option<RoomClaim> {
        loop {
            let Some((free, total)) = disk::space(&self.root) else {
                return Some(self.promises.claim(bytes));
            };
            let available = free.saturating_sub(self.promises.total());
            if available >= bytes {
                return Some(self.promises.claim(bytes));
            }
            // Measured again after each round: an evicted file frees nothing while a reader
            // still has it open, or if it was already removed behind wharf's back. Each round
            // takes entries out of the index, so this ends.
            let victims = self.lock_index().free_at_least(bytes - available);
            let evicted =
                victims.is_some_and(|v| self.unlink(v, EvictionReason::DiskSpace).is_ok());
            self.publish_usage();
            if !evicted {
                // Only an entry the cache could ever hold makes the whole cache wait for room;
                // a larger one is just served without caching.
                if bytes <= self.max_size.min(total) {
                    self.health.failed_needing(&disk::no_space(), bytes);
                } else {
                    self.metrics.bypassed(BypassReason::Oversize);
                }
                return None;
            }
        }
    }

    /// Whether a new fill or manifest may be written now. While the directory is unwritable,
    /// this probes it every few seconds and resumes caching when the probe succeeds.
    pub fn caching_allowed(&self) -> bool {
        self.health.writable(|needed| self.probe(needed))
    }

    /// Records a failed write (logged once per condition).
    pub fn write_failed(&self, error: &io::Error) -> Condition {
        self.health.failed(error)
    }

    /// Why caching is suspended, and since when, if it is.
    pub fn unwritable(&self) -> Option<(Condition, Duration)> {
        self.health.condition()
    }

    fn probe(&self, needed: u64) -> io::Result<()> {
        let wanted = needed.max(PROBE_MIN_FREE) + self.promises.total();
        if disk::space(&self.root).is_some_and(|(free, _)| free < wanted) {
            return Err(disk::no_space());
        }
        let (path, file) = self.temp_file()?;
        let written = io::Write::write_all(&mut &file, &[0u8; 4096]);
        let _ = fs::remove_file(path);
        written
    }
}

pub(super) fn entry_path(root: &Path, area: Area, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    root.join(area.dir())
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(hex)
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn store(dir: &Path, max_size: u64) -> Store {
        Store::open(dir, max_size, Metrics::new()).unwrap()
    }

    /// Sets an entry's recorded last use, as an earlier run would have left it.
    fn set_used(store: &Store, digest: &Digest, used: SystemTime) {
        let file = File::open(store.path(Area::Blobs, digest)).unwrap();
        file.set_modified(used).unwrap();
    }

    fn put(store: &Store, bytes: &[u8]) -> Digest {
        let digest = Digest::sha256_of(bytes);
        let (temp, mut file) = store.temp_file().unwrap();
        file.write_all(bytes).unwrap();
        assert_eq!(
            store.commit(&temp, &file, Area::Blobs, &digest).unwrap(),
            Committed::Stored
        );
        assert!(!temp.exists());
        digest
    }

    #[test]
    fn commit_moves_into_place_and_reopen_totals_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000);
        let digest = put(&s, b"hello");
        assert_eq!(s.open_blob(&digest).unwrap().size, 5);
        assert_eq!((s.usage().bytes, s.usage().entries), (5, 1));

        let (leftover, _) = s.temp_file().unwrap();
        drop(s);
        let s = store(dir.path(), 1000);
        assert!(!leftover.exists(), "temp files are removed at start-up");
        assert_eq!((s.usage().bytes, s.usage().entries), (5, 1));
    }

    #[test]
    fn committed_bytes_stay_under_max_size_least_recently_used_going_first() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 30);
        let a = put(&s, &[b'a'; 10]);
        let b = put(&s, &[b'b'; 10]);
        let c = put(&s, &[b'c'; 10]);
        assert!(s.open_blob(&a).is_some(), "a hit is a use");
        let d = put(&s, &[b'd'; 10]);
        assert!(s.open_blob(&b).is_none(), "b was least recently used");
        assert!(!s.path(Area::Blobs, &b).exists());
        for kept in [&a, &c, &d] {
            assert!(s.open_blob(kept).is_some());
        }
        assert_eq!(s.usage().bytes, 30);
    }

    #[test]
    fn an_entry_larger_than_the_cache_is_not_stored_and_evicts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 30);
        let a = put(&s, &[b'a'; 20]);
        let big = [b'x'; 31];
        let (temp, mut file) = s.temp_file().unwrap();
        file.write_all(&big).unwrap();
        let digest = Digest::sha256_of(&big);
        assert_eq!(
            s.commit(&temp, &file, Area::Blobs, &digest).unwrap(),
            Committed::TooLarge
        );
        assert!(!temp.exists());
        assert!(s.open_blob(&a).is_some());
        assert!(s.open_blob(&digest).is_none());
    }

    #[test]
    fn an_evicted_blob_stays_readable_to_its_reader() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 10);
        let a = put(&s, &[b'a'; 10]);
        let open = s.open_blob(&a).unwrap();
        put(&s, &[b'b'; 10]);
        assert!(!s.path(Area::Blobs, &a).exists(), "evicted");
        let mut buf = [0u8; 10];
        open.file.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(buf, [b'a'; 10], "still readable through the open file");
    }

    #[test]
    fn a_file_changed_outside_wharf_is_never_served() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1000);
        let a = put(&s, b"original");
        fs::write(s.path(Area::Blobs, &a), b"truncated").unwrap();
        assert!(s.open_blob(&a).is_none());
        assert!(!s.path(Area::Blobs, &a).exists());
        let b = put(&s, b"removed");
        fs::remove_file(s.path(Area::Blobs, &b)).unwrap();
        assert!(s.open_blob(&b).is_none());
        assert_eq!(s.usage().entries, 0);
    }

    #[test]
    fn recency_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 30);
        let a = put(&s, &[b'a'; 10]);
        let b = put(&s, &[b'b'; 10]);
        let c = put(&s, &[b'c'; 10]);
        // Ages written as a restart would find them: a was used last.
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        for (digest, used) in [(&a, 300), (&b, 100), (&c, 200)] {
            set_used(&s, digest, at(used));
        }
        drop(s);
        let s = store(dir.path(), 30);
        put(&s, &[b'd'; 10]);
        assert!(s.open_blob(&b).is_none(), "b was least recently used");
        assert!(s.open_blob(&a).is_some());
        assert!(s.open_blob(&c).is_some());
    }

    #[test]
    fn a_hit_is_written_to_disk_as_the_files_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 30);
        let a = put(&s, b"a");
        let path = s.path(Area::Blobs, &a);
        set_used(&s, &a, SystemTime::UNIX_EPOCH);
        drop(s);
        let s = store(dir.path(), 30);
        s.open_blob(&a).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(mtime > SystemTime::now() - Duration::from_secs(60));
    }

    #[test]
    fn a_lower_max_size_is_enforced_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 100);
        for n in 0..5u8 {
            put(&s, &[n; 10]);
        }
        drop(s);
        let s = store(dir.path(), 25);
        assert_eq!(s.usage().bytes, 20);
        assert_eq!(scan::scan(dir.path()).unwrap().entries.len(), 2);
    }

    #[test]
    fn idle_entries_are_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 100);
        let old = put(&s, b"old");
        let path = s.path(Area::Blobs, &old);
        set_used(&s, &old, SystemTime::now() - Duration::from_secs(3600));
        drop(s);
        let s = store(dir.path(), 100);
        let new = put(&s, b"new");
        s.evict_idle(Duration::from_secs(60));
        assert!(!path.exists());
        assert!(s.open_blob(&new).is_some());
    }
}
