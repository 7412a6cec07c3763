//! The index of committed entries: the size and last use of every file under `blobs/` and
//! `manifests/`, in least-recently-used order, with the total they add up to. It decides what to
//! evict and keeps the books; it does no IO (the store unlinks what it hands back).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lru::LruCache;

use super::layout::EntryKey;

/// How stale the recency written to disk (a file's mtime) may get. Rewriting it on every hit
/// would cost a syscall per request; once a second per entry keeps restarts accurate enough.
const PERSIST_EVERY_SECS: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub last_used: u32,
    /// The last use written to disk, in the same unit.
    persisted: u32,
}

/// The answer to a request for room.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Granted; these entries were taken out of the index to make room.
    Granted(Vec<(EntryKey, Entry)>),
    /// Larger than the whole cache: never fits.
    TooLarge,
    /// Fits only once commits holding reservations have landed.
    Wait,
}

/// What a use of an entry found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Use {
    pub size: u64,
    /// The use should be written to disk (the entry's file mtime) so it survives a restart.
    pub persist: bool,
}

pub struct Index {
    lru: LruCache<EntryKey, Entry>,
    /// Bytes of the entries in `lru`.
    bytes: u64,
    /// Bytes promised to commits that are between eviction and rename.
    reserved: u64,
}

pub fn epoch_secs(t: SystemTime) -> u32 {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

impl Default for Index {
    fn default() -> Self {
        Index::new()
    }
}

impl Index {
    pub fn new() -> Self {
        Index {
            lru: LruCache::unbounded(),
            bytes: 0,
            reserved: 0,
        }
    }

    /// Entries and their bytes.
    pub fn usage(&self) -> (u64, u64) {
        (self.bytes, self.lru.len() as u64)
    }

    /// Adds (or replaces) an entry as the most recently used. Entries loaded at start-up must be
    /// inserted oldest first.
    pub fn insert(&mut self, key: EntryKey, size: u64, used: SystemTime) {
        let used = epoch_secs(used);
        let entry = Entry {
            size,
            last_used: used,
            persisted: used,
        };
        if let Some((_, old)) = self.lru.push(key, entry) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }

    /// Records a use of `key`, making it the most recently used.
    pub fn touch(&mut self, key: &EntryKey, now: SystemTime) -> Option<Use> {
        let now = epoch_secs(now);
        let entry = self.lru.get_mut(key)?;
        entry.last_used = entry.last_used.max(now);
        let persist = entry.last_used >= entry.persisted.saturating_add(PERSIST_EVERY_SECS);
        if persist {
            entry.persisted = entry.last_used;
        }
        Some(Use {
            size: entry.size,
            persist,
        })
    }

    pub fn contains(&self, key: &EntryKey) -> bool {
        self.lru.contains(key)
    }

    /// An entry's books, without counting a use.
    pub fn peek(&self, key: &EntryKey) -> Option<Entry> {
        self.lru.peek(key).copied()
    }

    pub fn remove(&mut self, key: &EntryKey) -> Option<Entry> {
        let entry = self.lru.pop(key)?;
        self.bytes -= entry.size;
        Some(entry)
    }

    /// Reserves room for `incoming` bytes under `max`, popping least recently used entries until
    /// it fits; the caller unlinks the victims before its new file arrives.
    pub fn reserve(&mut self, incoming: u64, max: u64) -> Reservation {
        if incoming > max {
            return Reservation::TooLarge;
        }
        if self.reserved + incoming > max {
            // The room is promised to commits between eviction and rename; evicting everything
            // else would not make it fit. Their entries will be evictable once they land.
            return Reservation::Wait;
        }
        let mut victims = Vec::new();
        while self.bytes + self.reserved + incoming > max {
            let (key, entry) = self
                .lru
                .pop_lru()
                .expect("reserved + incoming fit under max");
            self.bytes -= entry.size;
            victims.push((key, entry));
        }
        self.reserved += incoming;
        Reservation::Granted(victims)
    }

    /// Pops least recently used entries adding up to at least `bytes`, if the index holds that
    /// much; otherwise takes nothing.
    pub fn free_at_least(&mut self, bytes: u64) -> Option<Vec<(EntryKey, Entry)>> {
        if self.bytes < bytes {
            return None;
        }
        let mut freed = 0;
        let mut victims = Vec::new();
        while freed < bytes {
            let (key, entry) = self.lru.pop_lru().expect("the index holds enough");
            self.bytes -= entry.size;
            freed += entry.size;
            victims.push((key, entry));
        }
        Some(victims)
    }

    /// The least recently used entries adding up to at least `bytes`, left in place; `None` if
    /// the index does not hold that much.
    pub fn least_used_covering(&self, bytes: u64) -> Option<Vec<(EntryKey, u64)>> {
        if self.bytes < bytes {
            return None;
        }
        let mut covered = 0;
        let entries = self
            .lru
            .iter()
            .rev()
            .take_while(|(_, entry)| {
                let more = covered < bytes;
                covered += entry.size;
                more
            })
            .map(|(key, entry)| (key.clone(), entry.size))
            .collect();
        Some(entries)
    }

    /// Puts back an entry that could not be removed after all, as least recently used.
    pub fn restore(&mut self, key: EntryKey, entry: Entry) {
        self.bytes += entry.size;
        if let Some((_, old)) = self.lru.push(key.clone(), entry) {
            self.bytes -= old.size;
        }
        self.lru.demote(&key);
    }

    /// Ends a reservation: the commit landed (insert it) or failed (nothing to insert).
    pub fn release(&mut self, reserved: u64) {
        self.reserved -= reserved;
    }

    /// Pops least recently used entries until the total is at most `max`.
    pub fn shrink_to(&mut self, max: u64) -> Vec<(EntryKey, Entry)> {
        let mut victims = Vec::new();
        while self.bytes > max {
            let Some((key, entry)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= entry.size;
            victims.push((key, entry));
        }
        victims
    }

    /// Pops every entry unused since `cutoff`.
    pub fn pop_idle(&mut self, cutoff: SystemTime) -> Vec<(EntryKey, Entry)> {
        let cutoff = epoch_secs(cutoff);
        let mut victims = Vec::new();
        while let Some((_, entry)) = self.lru.peek_lru() {
            if entry.last_used >= cutoff {
                break;
            }
            let (key, entry) = self.lru.pop_lru().expect("peeked");
            self.bytes -= entry.size;
            victims.push((key, entry));
        }
        victims
    }

    /// The least and most recent uses, in epoch seconds.
    pub fn use_span(&self) -> Option<(u32, u32)> {
        let oldest = self.lru.peek_lru()?.1.last_used;
        let newest = self.lru.peek_mru()?.1.last_used;
        Some((oldest, newest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;

    fn key(n: u8) -> EntryKey {
        EntryKey::blob(&Digest::sha256_of(&[n]))
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn keeps_the_total() {
        let mut index = Index::new();
        index.insert(key(1), 10, at(1));
        index.insert(key(2), 20, at(2));
        assert_eq!(index.usage(), (30, 2));
        index.insert(key(1), 15, at(3));
        assert_eq!(index.usage(), (35, 2), "replacing adjusts the total");
        assert_eq!(index.remove(&key(2)).unwrap().size, 20);
        assert_eq!(index.usage(), (15, 1));
        assert_eq!(index.remove(&key(2)), None);
    }

    #[test]
    fn evicts_least_recently_used_first_and_a_hit_is_a_use() {
        let mut index = Index::new();
        for n in 1..=3 {
            index.insert(key(n), 10, at(u64::from(n)));
        }
        index.touch(&key(1), at(10)).unwrap();
        let Reservation::Granted(victims) = index.reserve(15, 30) else {
            panic!("room can be made")
        };
        let evicted: Vec<_> = victims.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(evicted, [key(2), key(3)]);
        assert_eq!(index.usage(), (10, 1));
        index.insert(key(4), 15, at(11));
        index.release(15);
        assert_eq!(index.usage(), (25, 2));
    }

    #[test]
    fn reservations_count_until_released() {
        let mut index = Index::new();
        index.insert(key(1), 10, at(1));
        assert_eq!(index.reserve(15, 30), Reservation::Granted(vec![]));
        // Another commit must not count on the first one's room.
        let Reservation::Granted(victims) = index.reserve(10, 30) else {
            panic!("room can be made")
        };
        assert_eq!(victims.len(), 1);
        index.release(15);
        index.release(10);
        assert_eq!(index.usage(), (0, 0));
    }

    #[test]
    fn room_promised_to_others_means_waiting_not_overshooting() {
        let mut index = Index::new();
        index.insert(key(1), 10, at(1));
        assert!(matches!(index.reserve(20, 30), Reservation::Granted(_)));
        // 20 reserved + 20 more cannot fit under 30 even with the cache emptied.
        assert_eq!(index.reserve(20, 30), Reservation::Wait);
        assert_eq!(index.usage(), (10, 1), "nothing was evicted for it");
        index.release(20);
        index.insert(key(2), 20, at(2));
        assert!(matches!(index.reserve(20, 30), Reservation::Granted(v) if v.len() == 2));
    }

    #[test]
    fn an_entry_larger_than_the_cache_evicts_nothing() {
        let mut index = Index::new();
        index.insert(key(1), 10, at(1));
        assert_eq!(index.reserve(31, 30), Reservation::TooLarge);
        assert_eq!(index.usage(), (10, 1));
    }

    #[test]
    fn freeing_space_takes_least_recently_used_entries_or_nothing() {
        let mut index = Index::new();
        for n in 1..=3 {
            index.insert(key(n), 10, at(u64::from(n)));
        }
        assert_eq!(index.free_at_least(31), None);
        assert_eq!(index.usage(), (30, 3));
        let freed: Vec<_> = index
            .free_at_least(15)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(freed, [key(1), key(2)]);
        let (k, e) = (
            key(9),
            Entry {
                size: 5,
                last_used: 9,
                persisted: 9,
            },
        );
        index.restore(k.clone(), e);
        assert_eq!(index.usage(), (15, 2));
        assert_eq!(
            index.shrink_to(10).into_iter().next().map(|(k, _)| k),
            Some(k)
        );
    }

    #[test]
    fn idle_entries_go_oldest_first_and_recent_ones_stay() {
        let mut index = Index::new();
        index.insert(key(1), 1, at(100));
        index.insert(key(2), 1, at(200));
        index.insert(key(3), 1, at(300));
        index.touch(&key(1), at(400));
        let idle: Vec<_> = index
            .pop_idle(at(250))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(idle, [key(2)]);
        assert_eq!(index.use_span(), Some((300, 400)));
    }

    #[test]
    fn recency_is_persisted_at_most_once_a_second() {
        let mut index = Index::new();
        index.insert(key(1), 1, at(100));
        assert!(!index.touch(&key(1), at(100)).unwrap().persist);
        assert!(index.touch(&key(1), at(101)).unwrap().persist);
        assert!(!index.touch(&key(1), at(101)).unwrap().persist);
        assert!(index.touch(&key(1), at(105)).unwrap().persist);
        assert_eq!(index.touch(&key(9), at(105)), None);
    }

    #[test]
    fn shrink_to_a_smaller_size() {
        let mut index = Index::new();
        for n in 1..=4 {
            index.insert(key(n), 10, at(u64::from(n)));
        }
        assert_eq!(index.shrink_to(25).len(), 2);
        assert_eq!(index.usage(), (20, 2));
    }
}
