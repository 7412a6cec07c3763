//! The filesystem under the cache: its free space, room claimed on it by fills in flight, and the
//! lock that keeps a second wharf off the same directory.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long opening a locked cache directory waits for the lock (a restart in the same process,
/// or an old process still exiting) before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Free and total bytes of the filesystem holding `path`, as an unprivileged writer sees them.
/// `None` when the filesystem cannot tell.
pub fn space(path: &Path) -> Option<(u64, u64)> {
    let stat = rustix::fs::statvfs(path).ok()?;
    Some((
        stat.f_bavail.saturating_mul(stat.f_frsize),
        stat.f_blocks.saturating_mul(stat.f_frsize),
    ))
}

pub fn no_space() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error())
}

/// Bytes promised to fills in flight, which have not written them yet: concurrent fills must not
/// each count the same free space as theirs.
#[derive(Default, Clone)]
pub struct RoomPromises(Arc<AtomicU64>);

impl RoomPromises {
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub fn claim(&self, bytes: u64) -> RoomClaim {
        self.0.fetch_add(bytes, Ordering::Relaxed);
        RoomClaim {
            promises: self.clone(),
            bytes,
        }
    }
}

/// Room on the filesystem held for one fill until it is dropped (the fill committed or failed).
pub struct RoomClaim {
    promises: RoomPromises,
    bytes: u64,
}

impl Drop for RoomClaim {
    fn drop(&mut self) {
        self.promises.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// An exclusive lock on `<root>/lock`, held while the store is open: two wharfs sharing one
/// directory would delete each other's temp files and each enforce `max_size` alone.
pub fn lock(root: &Path) -> io::Result<File> {
    use rustix::fs::{flock, FlockOperation};
    let path = root.join("lock");
    // Created through a handle closed at once; the lock is held through a read-only one, since
    // a file held open for writing keeps the filesystem from being remounted read-only.
    File::options().create(true).append(true).open(&path)?;
    let file = File::open(&path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another wharf is using this cache directory",
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_add_up_and_give_back_when_dropped() {
        let promises = RoomPromises::default();
        let a = promises.claim(10);
        let b = promises.claim(5);
        assert_eq!(promises.total(), 15);
        drop(a);
        assert_eq!(promises.total(), 5);
        drop(b);
        assert_eq!(promises.total(), 0);
    }

    #[test]
    fn a_locked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let started = Instant::now();
        let err = lock(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another wharf"), "{err}");
        assert!(started.elapsed() >= LOCK_WAIT);
        drop(held);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn the_filesystem_reports_its_space() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = space(dir.path()).unwrap();
        assert!(total > 0 && free <= total);
    }
}
