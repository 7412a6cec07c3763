//! The filesystem under the cache: its free space, room claimed on it by fills in flight, and the
//! lock that keeps a second wharf off the same directory.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// The most one step of a fill claims beyond the bytes it has received when the filesystem is
/// short: what an upstream's declared (unverified) length can make wharf evict before the bytes
/// arrive. A 64th of the filesystem, between 1 and 64 MiB.
fn slice(total: u64) -> u64 {
    (total / 64).clamp(1 << 20, 64 << 20)
}

/// Room on the filesystem for the fills in flight. A fill's room is allocated at once
/// (`fallocate`) where the filesystem has it free; where it must be made by evicting, it is
/// claimed a slice at a time as the fill's bytes arrive. Claims are made one at a time, so
/// none sees another half done.
pub struct DiskRoom {
    root: PathBuf,
    /// Bytes claimed but not allocated (a filesystem without `fallocate`): free space does not
    /// show them yet, so later claims must not count them as free.
    promised: Arc<AtomicU64>,
    claiming: Mutex<()>,
}

/// The filesystem lacks room for a fill's next step, and eviction could not make it.
pub struct Short {
    /// The filesystem's size.
    pub total: u64,
}

impl DiskRoom {
    pub fn new(root: &Path) -> DiskRoom {
        DiskRoom {
            root: root.to_owned(),
            promised: Arc::default(),
            claiming: Mutex::new(()),
        }
    }

    /// Bytes claimed by fills that free space does not show yet.
    pub fn promised(&self) -> u64 {
        self.promised.load(Ordering::Relaxed)
    }

    /// Room for the first bytes of a fill of `whole` bytes into `file`: all of it where the
    /// filesystem has it free, else (if `can_make` says the bytes it lacks could be evicted for)
    /// a first slice, made by `evict` (which is asked to free a number of bytes now, knowing
    /// how many the whole fill still lacks, and says whether it freed anything).
    pub fn claim(
        &self,
        whole: u64,
        file: &File,
        can_make: impl FnOnce(u64) -> bool,
        evict: impl FnMut(u64, u64) -> bool,
    ) -> Result<FillRoom, Short> {
        if let Some((free, total)) = space(&self.root) {
            let available = free.saturating_sub(self.promised());
            if available < whole && !can_make(whole - available) {
                return Err(Short { total });
            }
        }
        let mut room = FillRoom {
            whole,
            covered: 0,
            received: 0,
            slice: 0,
            promised: 0,
            promises: self.promised.clone(),
        };
        self.grow(&mut room, file, evict)?;
        Ok(room)
    }

    /// Claims the fill's next step: the rest of it where free, else one more slice.
    pub fn grow(
        &self,
        room: &mut FillRoom,
        file: &File,
        mut evict: impl FnMut(u64, u64) -> bool,
    ) -> Result<(), Short> {
        let _one_at_a_time = self.claiming.lock().expect("lock poisoned");
        loop {
            let rest = room.whole - room.covered;
            let Some((free, total)) = space(&self.root) else {
                room.promise(room.whole);
                return Ok(());
            };
            let available = free.saturating_sub(self.promised());
            room.slice = slice(total);
            // Free room is taken whole; room that must be evicted for, a slice past the bytes
            // received at a time.
            let step = if available >= rest {
                rest
            } else {
                room.whole
                    .min(room.received + room.slice)
                    .saturating_sub(room.covered)
            };
            if available >= step {
                let allocated = step > 0
                    && rustix::fs::fallocate(
                        file,
                        rustix::fs::FallocateFlags::empty(),
                        room.covered,
                        step,
                    )
                    .is_ok();
                let covered = room.covered + step;
                if allocated {
                    room.covered = covered;
                } else {
                    room.promise(covered);
                }
                return Ok(());
            }
            // Measured again after each round: an evicted file frees nothing while a reader
            // still has it open, or if it was already removed behind wharf's back.
            if !evict(step - available, rest - available) {
                return Err(Short { total });
            }
        }
    }
}

/// The room one fill holds, given back when it is dropped (the fill committed or failed).
pub struct FillRoom {
    /// The declared length.
    whole: u64,
    /// The file's first `covered` bytes have room.
    covered: u64,
    /// Bytes the fill has received.
    received: u64,
    /// The step the filesystem's size allows when it is short.
    slice: u64,
    /// Of the room, bytes claimed but not allocated, still counted in the promises.
    promised: u64,
    promises: Arc<AtomicU64>,
}

impl FillRoom {
    pub fn whole(&self) -> u64 {
        self.whole
    }

    /// Counts `bytes` received; whether the fill should claim its next step now (half a slice
    /// before it runs out of room, so the step is made before its bytes arrive).
    pub fn received(&mut self, bytes: u64) -> bool {
        self.received += bytes;
        self.covered < self.whole && self.received + self.slice / 2 >= self.covered
    }

    /// Promises room up to `covered` that is not allocated, less what has already been
    /// written (which free space shows): each byte is counted once.
    fn promise(&mut self, covered: u64) {
        let owed = covered.saturating_sub(self.received);
        self.promises.fetch_add(owed, Ordering::Relaxed);
        self.promises.fetch_sub(self.promised, Ordering::Relaxed);
        self.promised = owed;
        self.covered = covered;
    }
}

impl Drop for FillRoom {
    fn drop(&mut self) {
        self.promises.fetch_sub(self.promised, Ordering::Relaxed);
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
    fn free_room_is_allocated_whole_and_nothing_is_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let room = DiskRoom::new(dir.path());
        let file = File::create(dir.path().join("fill")).unwrap();
        let claim = room
            .claim(
                1 << 20,
                &file,
                |_| panic!("nothing lacks"),
                |_, _| panic!("nothing to evict"),
            )
            .unwrap_or_else(|_| panic!("room for 1 MiB"));
        assert_eq!(claim.covered, 1 << 20);
        // Allocated, not promised: free space already shows it.
        assert_eq!(room.promised(), 0);
        assert!(file.metadata().unwrap().len() >= 1 << 20);
    }

    #[test]
    fn promises_count_each_byte_once_and_go_back_when_dropped() {
        let promises = Arc::new(AtomicU64::new(0));
        let mut room = FillRoom {
            whole: 10 << 20,
            covered: 0,
            received: 0,
            slice: 4 << 20,
            promised: 0,
            promises: promises.clone(),
        };
        room.promise(4 << 20);
        assert_eq!(promises.load(Ordering::Relaxed), 4 << 20);
        assert!(!room.received(1 << 20));
        assert!(
            room.received(1 << 20),
            "half a slice before the end of the room"
        );
        room.promise(8 << 20);
        // What was written is on the disk already: only the rest is owed.
        assert_eq!(promises.load(Ordering::Relaxed), 6 << 20);
        drop(room);
        assert_eq!(promises.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn slices_are_a_64th_of_the_disk_within_bounds() {
        assert_eq!(slice(16 << 20), 1 << 20);
        assert_eq!(slice(1 << 30), 16 << 20);
        assert_eq!(slice(1 << 40), 64 << 20);
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
