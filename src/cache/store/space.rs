//! How the store makes room on its filesystem for fills (evicting what it must, and no more),
//! and whether it takes writes at all while the disk is full or failing.

use std::fs::{self, File};
use std::io;
use std::time::Duration;

use super::disk::{self, FillRoom};
use super::health::Condition;
use super::Store;
use crate::metrics::{BypassReason, EvictionReason};

/// Free space a probe wants to see before caching resumes after the disk was full.
const PROBE_MIN_FREE: u64 = 1024 * 1024;

impl Store {
    /// Makes room on the filesystem for a fill of `whole` bytes into `file`: allocated at once
    /// where it is free; where least recently used entries must be evicted for it, a slice at a
    /// time as the fill's bytes arrive (`grow_room`), so an upstream's declared length, not yet
    /// verified, evicts no more than a slice past what it sent. `None`, with nothing evicted,
    /// when the entry will not be cached anyway (larger than the cache or the disk) or the books
    /// cannot make that much room (then caching is suspended until that much is free).
    pub fn claim_room(&self, whole: u64, file: &File) -> Option<FillRoom> {
        let claimed = self.room.claim(
            whole,
            file,
            // Before the first byte, while its readers can still be served another way: the
            // whole must be possible to make room for, not just the first slice.
            |lacking| whole <= self.ledger.max_size() && self.could_evict(lacking),
            |now, rest| self.evict_for_disk(now, rest, whole),
        );
        claimed.map_err(|short| self.short_of(whole, short)).ok()
    }

    /// Claims a fill's next step of room (see `claim_room`); `false` when it cannot be made.
    pub fn grow_room(&self, room: &mut FillRoom, file: &File) -> bool {
        let whole = room.whole();
        let grown = self.room.grow(room, file, |now, rest| {
            self.evict_for_disk(now, rest, whole)
        });
        grown.map_err(|short| self.short_of(whole, short)).is_ok()
    }

    /// The disk cannot hold a fill of `whole` bytes: only an entry the cache could ever hold
    /// makes the whole cache wait for room; a larger one is just not cached.
    fn short_of(&self, whole: u64, short: disk::Short) {
        if whole <= self.ledger.max_size().min(short.total) {
            self.health.failed_needing(&disk::no_space(), whole);
        } else {
            self.metrics.bypassed(BypassReason::Oversize);
        }
    }

    /// Whether evicting least recently used entries would free `bytes` on the disk: their files
    /// are there (one removed behind wharf's back frees nothing, and leaves the books).
    fn could_evict(&self, bytes: u64) -> bool {
        let Some(entries) = self.ledger.least_used_covering(bytes) else {
            return false;
        };
        let mut there = 0;
        for (key, size) in entries {
            if fs::metadata(self.path(&key)).is_ok() {
                there += size;
            } else {
                self.drop_invalid(&key, "its file is gone");
            }
        }
        there >= bytes
    }

    /// Evicts least recently used entries adding up to `now` bytes for a fill of `whole`
    /// bytes, if the books could make the `rest` it lacks in all, and the entry will be cached
    /// (otherwise nothing: a fill that cannot end in the cache must not empty it first).
    /// Whether anything was evicted.
    fn evict_for_disk(&self, now: u64, rest: u64, whole: u64) -> bool {
        let usage = self.ledger.usage();
        if rest > usage.bytes || whole > usage.max_bytes {
            return false;
        }
        let victims = self.ledger.at_least(now);
        let evicted = victims.is_some_and(|v| self.unlink(v, EvictionReason::DiskSpace).is_ok());
        self.ledger.publish();
        evicted
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
        let wanted = needed.max(PROBE_MIN_FREE) + self.room.promised();
        if disk::space(self.root()).is_some_and(|(free, _)| free < wanted) {
            return Err(disk::no_space());
        }
        let (path, file) = self.temp_file()?;
        let written = io::Write::write_all(&mut &file, &[0u8; 4096]);
        let _ = fs::remove_file(path);
        written
    }
}
