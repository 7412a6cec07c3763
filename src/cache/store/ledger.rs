//! The books on committed entries, shared by every request: the index under its lock, the room
//! reserved by commits between eviction and rename (and the wait for it), and the size gauges.
//! No IO: the store unlinks what the ledger hands back as victims.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::SystemTime;

use super::index::{Entry, Index, Reservation, Use};
use super::layout::EntryKey;
use crate::metrics::Metrics;

/// Entries taken out of the books, whose files the store must now remove.
pub type Victims = Vec<(EntryKey, Entry)>;

/// Committed bytes and entries, and the span of their last uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub max_bytes: u64,
    /// Oldest and newest last use, in seconds since the Unix epoch.
    pub use_span: Option<(u32, u32)>,
}

/// The answer to a commit asking for room.
pub enum Room {
    /// Reserved; these entries were taken out to make it.
    Granted(Victims),
    /// Larger than `max_size`: never fits, and nothing was taken out.
    TooLarge,
}

pub struct Ledger {
    index: Mutex<Index>,
    /// Signalled when a reservation ends, for commits waiting for room.
    reservation_ended: Condvar,
    max_size: u64,
    metrics: Metrics,
}

impl Ledger {
    pub fn new(index: Index, max_size: u64, metrics: Metrics) -> Ledger {
        metrics.cache_max_size_bytes.set(gauge_value(max_size));
        Ledger {
            index: Mutex::new(index),
            reservation_ended: Condvar::new(),
            max_size,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().expect("lock poisoned")
    }

    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    pub fn usage(&self) -> Usage {
        let index = self.lock();
        let (bytes, entries) = index.usage();
        Usage {
            bytes,
            entries,
            max_bytes: self.max_size,
            use_span: index.use_span(),
        }
    }

    /// Sets the size gauges from the books.
    pub fn publish(&self) {
        let (bytes, entries) = self.lock().usage();
        self.metrics.cache_size_bytes.set(gauge_value(bytes));
        self.metrics.cache_entries.set(gauge_value(entries));
    }

    /// Reserves room for `size` bytes under `max_size`, blocking while the room is promised to
    /// other commits between eviction and rename.
    pub fn reserve(&self, size: u64) -> Room {
        let mut index = self.lock();
        loop {
            match index.reserve(size, self.max_size) {
                Reservation::Granted(victims) => return Room::Granted(victims),
                Reservation::TooLarge => return Room::TooLarge,
                Reservation::Wait => {
                    index = self.reservation_ended.wait(index).expect("lock poisoned");
                }
            }
        }
    }

    /// Ends a reservation of `size` bytes, entering the entry that took its place, if any.
    pub fn end_reservation(&self, size: u64, landed: Option<EntryKey>) {
        {
            let mut index = self.lock();
            index.release(size);
            if let Some(key) = landed {
                index.insert(key, size, SystemTime::now());
            }
        }
        self.reservation_ended.notify_all();
        self.publish();
    }

    pub fn touch(&self, key: &EntryKey, now: SystemTime) -> Option<Use> {
        self.lock().touch(key, now)
    }

    pub fn contains(&self, key: &EntryKey) -> bool {
        self.lock().contains(key)
    }

    pub fn peek(&self, key: &EntryKey) -> Option<Entry> {
        self.lock().peek(key)
    }

    pub fn remove(&self, key: &EntryKey) -> Option<Entry> {
        self.lock().remove(key)
    }

    /// Puts back an entry whose file could not be removed after all (it still takes space).
    pub fn restore(&self, key: EntryKey, entry: Entry) {
        self.lock().restore(key, entry);
    }

    /// Takes out least recently used entries until the books are within `max_size`.
    pub fn over_max_size(&self) -> Victims {
        self.lock().shrink_to(self.max_size)
    }

    /// Takes out every entry unused since `cutoff`.
    pub fn idle_since(&self, cutoff: SystemTime) -> Victims {
        self.lock().pop_idle(cutoff)
    }

    /// The least recently used entries adding up to at least `bytes`, left in the books.
    pub fn least_used_covering(&self, bytes: u64) -> Option<Vec<(EntryKey, u64)>> {
        self.lock().least_used_covering(bytes)
    }

    /// Takes out least recently used entries adding up to at least `bytes`, if the books hold
    /// that much; otherwise nothing.
    pub fn at_least(&self, bytes: u64) -> Option<Victims> {
        self.lock().free_at_least(bytes)
    }
}

fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
