//! Whether the cache directory can take writes. A full disk or a read-only directory suspends
//! caching (wharf then streams from the upstream without storing), is logged once when it starts
//! and once when it ends, and is probed again every few seconds so caching resumes on its own.

use std::fmt;
use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;

/// How often an unwritable cache is tried again.
const PROBE_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// No space (or quota) left for what had to be written.
    DiskFull,
    /// The directory refuses writes (read-only mount, permissions).
    ReadOnly,
    /// Any other write failure.
    Failing,
}

impl Condition {
    pub fn of(error: &io::Error) -> Condition {
        use rustix::io::Errno;
        let errno = error.raw_os_error().map(Errno::from_raw_os_error);
        match errno {
            Some(Errno::NOSPC | Errno::DQUOT) => Condition::DiskFull,
            Some(Errno::ROFS | Errno::ACCESS | Errno::PERM) => Condition::ReadOnly,
            _ => Condition::Failing,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Condition::DiskFull => "disk_full",
            Condition::ReadOnly => "read_only",
            Condition::Failing => "failing",
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Condition::DiskFull => "the disk is full",
            Condition::ReadOnly => "the cache directory is read-only",
            Condition::Failing => "writes to the cache directory fail",
        })
    }
}

struct Unwritable {
    /// Counts failures, so a probe that started before a new failure does not erase it.
    generation: u64,
    condition: Condition,
    since: Instant,
    next_probe: Instant,
    /// Bytes the failed write needed, when known: a probe waits until they are free, so one
    /// large blob does not make caching stop and resume over and over.
    needed: u64,
}

pub struct Health {
    state: Mutex<Option<Unwritable>>,
    metrics: Metrics,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        metrics.cache_writable.set(1);
        Health {
            state: Mutex::new(None),
            metrics,
        }
    }

    /// Records a failed write. Logged only when the condition starts or changes.
    pub fn failed(&self, error: &io::Error) -> Condition {
        self.failed_needing(error, 0)
    }

    /// Records a write refused for want of `needed` free bytes.
    pub fn failed_needing(&self, error: &io::Error, needed: u64) -> Condition {
        let condition = Condition::of(error);
        self.metrics
            .cache_write_errors
            .with_label_values(&[condition.as_str()])
            .inc();
        let now = Instant::now();
        let mut state = self.state.lock().expect("lock poisoned");
        let changed = state.as_ref().map(|s| s.condition) != Some(condition);
        if changed {
            tracing::warn!(%error, "caching suspended: {condition}; serving from the upstream without caching");
        }
        let since = state.as_ref().map_or(now, |s| s.since);
        let generation = state.as_ref().map_or(0, |s| s.generation + 1);
        *state = Some(Unwritable {
            generation,
            condition,
            since,
            next_probe: now + PROBE_EVERY,
            needed,
        });
        self.metrics.cache_writable.set(0);
        condition
    }

    /// Whether writes may be attempted. While unwritable, `probe` (given the bytes the failed
    /// write needed) is run at most every [`PROBE_EVERY`]; when it succeeds, caching resumes.
    pub fn writable(&self, probe: impl FnOnce(u64) -> io::Result<()>) -> bool {
        let mut state = self.state.lock().expect("lock poisoned");
        let Some(unwritable) = state.as_mut() else {
            return true;
        };
        let now = Instant::now();
        if now < unwritable.next_probe {
            return false;
        }
        // Claim the probe so concurrent requests do not all run it.
        unwritable.next_probe = now + PROBE_EVERY;
        let (condition, since, needed, generation) = (
            unwritable.condition,
            unwritable.since,
            unwritable.needed,
            unwritable.generation,
        );
        drop(state);
        if probe(needed).is_err() {
            return false;
        }
        let mut state = self.state.lock().expect("lock poisoned");
        if state.as_ref().is_some_and(|s| s.generation != generation) {
            // Something failed while the probe ran: that failure stands.
            return false;
        }
        *state = None;
        self.metrics.cache_writable.set(1);
        tracing::info!(
            after = ?since.elapsed(),
            "caching resumed: the cache directory takes writes again ({condition} no more)"
        );
        true
    }

    /// The current condition and how long it has lasted, if the cache is unwritable.
    pub fn condition(&self) -> Option<(Condition, Duration)> {
        let state = self.state.lock().expect("lock poisoned");
        state.as_ref().map(|s| (s.condition, s.since.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_error(errno: rustix::io::Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn classifies_disk_errors() {
        use rustix::io::Errno;
        assert_eq!(Condition::of(&os_error(Errno::NOSPC)), Condition::DiskFull);
        assert_eq!(Condition::of(&os_error(Errno::DQUOT)), Condition::DiskFull);
        assert_eq!(Condition::of(&os_error(Errno::ROFS)), Condition::ReadOnly);
        assert_eq!(Condition::of(&os_error(Errno::ACCESS)), Condition::ReadOnly);
        assert_eq!(Condition::of(&os_error(Errno::IO)), Condition::Failing);
        assert_eq!(
            Condition::of(&io::Error::other("no errno")),
            Condition::Failing
        );
    }

    #[test]
    fn a_failure_suspends_writes_until_a_probe_succeeds() {
        let metrics = Metrics::new();
        let health = Health::new(metrics.clone());
        assert!(health.writable(|_| unreachable!("no probe while writable")));
        health.failed(&os_error(rustix::io::Errno::NOSPC));
        assert_eq!(metrics.cache_writable.get(), 0);
        assert!(!health.writable(|_| unreachable!("too early to probe")));
        assert_eq!(health.condition().unwrap().0, Condition::DiskFull);

        // Pretend the probe interval has passed.
        health.state.lock().unwrap().as_mut().unwrap().next_probe = Instant::now();
        assert!(!health.writable(|_| Err(io::Error::other("still full"))));
        health.state.lock().unwrap().as_mut().unwrap().next_probe = Instant::now();
        assert!(health.writable(|_| Ok(())));
        assert_eq!(metrics.cache_writable.get(), 1);
        assert!(health.condition().is_none());
    }

    #[test]
    fn the_probe_is_told_how_much_room_the_failed_write_needed() {
        let health = Health::new(Metrics::new());
        health.failed_needing(&os_error(rustix::io::Errno::NOSPC), 20 << 20);
        health.state.lock().unwrap().as_mut().unwrap().next_probe = Instant::now();
        let mut asked = 0;
        health.writable(|needed| {
            asked = needed;
            Err(io::Error::other("not yet"))
        });
        assert_eq!(asked, 20 << 20);
    }
}
