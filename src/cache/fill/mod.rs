//! Single-flight fills, teed through disk.
//!
//! The first request for a missing blob starts one fill: its caller feeds the source's bytes to
//! a [`FillWriter`], whose writer task appends them to a temp file, hashes them, and publishes
//! progress on a `watch` channel. Every request for that digest, the first included, is a
//! [`BlobReader`] that reads the temp file up to the published length at its own pace, so one
//! slow client never holds back the fill or the others, and the fill finishes (and is cached)
//! even when every client has gone. The last byte of a response is released only once the
//! whole blob has been verified, so a failed fill can still abort every response in flight.

mod assembly;
mod buffers;
mod feeding;
mod progress;
mod reader;
mod window;
mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::error::Error;
use super::store::{self, CommittedFile, EntryKey, Store};
use crate::oci::Digest;
use buffers::BufferPool;
pub use feeding::{FillWriter, SegmentWriter};
use progress::{FillState, Progress};
pub use reader::BlobReader;
use window::NewestBytes;
use writer::{Leave, WriteJob};

/// One blob being filled, as its readers see it.
pub struct Fill {
    file: Arc<File>,
    buffers: BufferPool,
    newest: Arc<NewestBytes>,
    progress: watch::Receiver<Progress>,
}

impl Fill {
    /// Waits until the source answered: the declared length (if any), or the failure.
    pub async fn started(&self) -> Result<Option<u64>, Error> {
        let mut rx = self.progress.clone();
        loop {
            {
                let p = rx.borrow_and_update();
                match &p.state {
                    FillState::Connecting => {}
                    FillState::Failed(e) => return Err(e.clone()),
                    _ => return Ok(p.total),
                }
            }
            if rx.changed().await.is_err() {
                // The writer is gone without a verdict; its state is final.
                let p = rx.borrow();
                return match &p.state {
                    FillState::Failed(e) => Err(e.clone()),
                    FillState::Connecting => Ok(None),
                    _ => Ok(p.total),
                };
            }
        }
    }

    /// Where the fill's bytes come from, once it has started.
    pub fn source(&self) -> crate::metrics::Source {
        self.progress.borrow().from
    }

    /// Waits for the fill's verdict: verified, failed, or stopped without one.
    pub async fn verdict(&self) -> Result<(), Error> {
        let mut rx = self.progress.clone();
        loop {
            match &rx.borrow_and_update().state {
                FillState::Verified => return Ok(()),
                FillState::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return match &rx.borrow().state {
                    FillState::Verified => Ok(()),
                    FillState::Failed(e) => Err(e.clone()),
                    _ => Err(Error::NoVerdict),
                };
            }
        }
    }

    /// How far the fill has got, and how fast it goes.
    pub fn position(&self) -> FillPosition {
        let p = self.progress.borrow();
        let elapsed = p.streaming_since.map(|since| since.elapsed().as_secs_f64());
        FillPosition {
            written: p.written,
            total: p.total,
            // Bytes over time since the source answered; too early to tell in the first
            // moments, when one chunk more or less changes the rate tenfold.
            bytes_per_second: elapsed
                .filter(|&secs| secs >= MEASURED_AFTER.as_secs_f64())
                .map(|secs| p.written as f64 / secs),
        }
    }

    /// A reader of bytes `start..end` (`end` = `None`: to the end of the blob).
    pub fn reader(&self, start: u64, end: Option<u64>) -> BlobReader {
        BlobReader::following(
            self.file.clone(),
            self.buffers.clone(),
            self.progress.clone(),
            self.newest.clone(),
            start,
            end,
        )
    }
}

/// A fill's rate is estimated only after it has run this long.
const MEASURED_AFTER: std::time::Duration = std::time::Duration::from_millis(50);

/// Where a fill is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FillPosition {
    /// Bytes readable now.
    pub written: u64,
    /// The blob's length, if the source declared it.
    pub total: Option<u64>,
    /// How fast bytes have come so far; `None` until that can be told.
    pub bytes_per_second: Option<f64>,
}

impl FillPosition {
    /// Whether the fill will have written up to `offset` within `within`, at the rate it has
    /// gone so far (with no rate yet: whether it lies within `floor` bytes of what is written).
    pub fn reaches(&self, offset: u64, within: std::time::Duration, floor: u64) -> bool {
        let ahead = offset.saturating_sub(self.written);
        let window = self
            .bytes_per_second
            .map_or(0.0, |rate| rate * within.as_secs_f64());
        ahead as f64 <= window.max(floor as f64)
    }
}

/// A committed blob, open: readable to its holder even if it is evicted meanwhile.
#[derive(Clone)]
pub struct CachedBlob {
    committed: CommittedFile,
    buffers: BufferPool,
}

impl CachedBlob {
    pub fn size(&self) -> u64 {
        self.committed.size
    }

    /// A reader of bytes `start..end` (`end` = `None`: to the end of the blob).
    pub fn reader(&self, start: u64, end: Option<u64>) -> BlobReader {
        let end = end.map_or(self.committed.size, |end| end.min(self.committed.size));
        BlobReader::committed(
            self.committed.file.clone(),
            self.buffers.clone(),
            start,
            end,
        )
    }
}

/// What a request for a blob found.
pub enum BlobLookup {
    /// Committed on the local disk.
    Cached(CachedBlob),
    /// Being filled already: read it as it arrives.
    Coalesced(Arc<Fill>),
    /// Nowhere: this caller started the fill and must feed it.
    Started(Arc<Fill>, FillWriter),
    /// In a tier below the local disk, which feeds the new fill: the caller runs the feed,
    /// and, should the tier break off part-way, feeds the rest from its own source.
    FromTier(Arc<Fill>, TierFeed),
    /// Nowhere, and the cache takes no writes now (disk full, read-only): the caller serves
    /// the bytes without caching them.
    NoWrites,
}

/// A tier below feeding a fill; done, or what is left to feed and from which byte.
pub type TierFeed = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Resume>> + Send>>;

/// A fill its first source broke off part-way: the rest is fed from byte `at`, the blob
/// being `total` bytes long.
pub struct Resume {
    pub writer: FillWriter,
    pub at: u64,
    pub total: Option<u64>,
}

type Table = Arc<Mutex<HashMap<Digest, Arc<Fill>>>>;

/// How many times a lookup looks again when the blob was committed, or evicted, while it looked.
const LOOKS: usize = 3;

/// The fills in flight, by digest.
pub struct Fills {
    store: Arc<Store>,
    buffers: BufferPool,
    in_flight: Table,
}

impl Fills {
    /// Fills into `store`, their buffers counted in `buffer_bytes`.
    pub fn new(store: Arc<Store>, buffer_bytes: prometheus::IntGauge) -> Fills {
        Fills {
            store,
            buffers: BufferPool::new(buffer_bytes),
            in_flight: Arc::default(),
        }
    }

    /// The committed blob, opened (and its use counted), if there is one.
    pub fn cached(&self, digest: &Digest) -> Result<Option<CachedBlob>, Error> {
        let committed = self.store.open_blob(digest).map_err(Error::opening)?;
        Ok(committed.map(|committed| CachedBlob {
            committed,
            buffers: self.buffers.clone(),
        }))
    }

    /// The fill of `digest` in progress, if any.
    pub fn running(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.in_flight
            .lock()
            .expect("lock poisoned")
            .get(digest)
            .cloned()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("lock poisoned").len()
    }

    /// The committed blob, the running fill, or a new fill for `digest`. Fails when the blob
    /// is cached but its file cannot be opened (the entry is kept), or a fill's temp file
    /// cannot be made for want of descriptors or memory. Blocks on the disk, never while
    /// holding the table's lock: a slow open holds up only its own request.
    pub fn join(&self, digest: &Digest) -> Result<BlobLookup, Error> {
        let key = EntryKey::blob(digest);
        // A blob committed between two looks is opened on the next one: its fill leaves the
        // table only after its rename.
        for _ in 0..LOOKS {
            if let Some(blob) = self.cached(digest)? {
                return Ok(BlobLookup::Cached(blob));
            }
            if let Some(fill) = self.running(digest) {
                return Ok(BlobLookup::Coalesced(fill));
            }
            if !self.store.caching_allowed() {
                return Ok(BlobLookup::NoWrites);
            }
            // Made before the lock is taken, and removed if another request started the
            // fill meanwhile.
            let (temp_path, file) = match self.store.temp_file() {
                Ok(temp) => temp,
                Err(e) if store::is_transient(&e) => return Err(Error::opening(e)),
                // The store has recorded why (logged once per condition).
                Err(_) => return Ok(BlobLookup::NoWrites),
            };
            let in_flight = self.in_flight.lock().expect("lock poisoned");
            let raced = if let Some(fill) = in_flight.get(digest) {
                Some(BlobLookup::Coalesced(fill.clone()))
            } else if self.store.contains(&key) {
                None
            } else {
                return Ok(self.start(digest, in_flight, temp_path, file));
            };
            drop(in_flight);
            let _ = std::fs::remove_file(&temp_path);
            if let Some(lookup) = raced {
                return Ok(lookup);
            }
        }
        // An entry that keeps appearing and vanishing: served without caching this time.
        Ok(BlobLookup::NoWrites)
    }

    /// Starts the fill of `digest` into the temp file, entering it in the table.
    fn start(
        &self,
        digest: &Digest,
        mut in_flight: std::sync::MutexGuard<'_, HashMap<Digest, Arc<Fill>>>,
        temp_path: std::path::PathBuf,
        file: File,
    ) -> BlobLookup {
        let file = Arc::new(file);
        let (progress_tx, progress_rx) = watch::channel(Progress::connecting());
        let newest = Arc::new(NewestBytes::default());
        let fill = Arc::new(Fill {
            file: file.clone(),
            buffers: self.buffers.clone(),
            newest: newest.clone(),
            progress: progress_rx,
        });
        in_flight.insert(digest.clone(), fill.clone());
        drop(in_flight);

        let leave = leave_table(self.in_flight.clone(), digest.clone(), fill.clone());
        let job = WriteJob::new(
            self.store.clone(),
            digest.clone(),
            temp_path,
            file,
            progress_tx,
            newest,
            leave,
        );
        let writer = job.spawn(self.buffers.clone());
        BlobLookup::Started(fill, writer)
    }
}

/// Takes `fill` out of the table (if it is still the one there: a later fill of the same
/// digest may have taken its place).
fn leave_table(table: Table, digest: Digest, fill: Arc<Fill>) -> Leave {
    Leave::new(move || {
        if let Ok(mut in_flight) = table.lock() {
            if in_flight
                .get(&digest)
                .is_some_and(|f| Arc::ptr_eq(f, &fill))
            {
                in_flight.remove(&digest);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::error::SourceFailure;
    use crate::metrics::Metrics;

    async fn left_the_table(fills: &Fills) -> bool {
        for _ in 0..500 {
            if fills.in_flight() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_fill_leaves_the_table_however_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), 1 << 30, Metrics::default()).unwrap());
        let fills = Fills::new(store, prometheus::IntGauge::new("g", "g").unwrap());
        let blob = b"a blob".to_vec();
        let started = |digest: &Digest| match fills.join(digest).unwrap() {
            BlobLookup::Started(_, writer) => writer,
            _ => panic!("a new digest starts a fill"),
        };

        // Committed.
        let digest = Digest::sha256_of(&blob);
        let writer = started(&digest);
        writer
            .start(Some(blob.len() as u64), crate::metrics::Source::Upstream)
            .await;
        let mut segment = writer.segment(0);
        segment.write(&blob).await.unwrap();
        segment.flush().await.unwrap();
        writer.finish().await.unwrap();
        assert!(left_the_table(&fills).await, "after a commit");
        assert!(matches!(fills.join(&digest), Ok(BlobLookup::Cached(_))));

        // Failed by its source.
        let writer = started(&Digest::sha256_of(b"failed"));
        writer
            .fail(SourceFailure::new(std::io::Error::other("gone")))
            .await;
        assert!(left_the_table(&fills).await, "after a failure");

        // Abandoned by its feeder.
        drop(started(&Digest::sha256_of(b"abandoned")));
        assert!(left_the_table(&fills).await, "after its feeder went away");
    }
}
