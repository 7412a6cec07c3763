//! Single-flight fills, teed through disk.
//!
//! The first request for a missing blob starts one fill: its owner feeds upstream bytes to a
//! [`FillWriter`], whose writer thread appends them to a temp file, hashes them, and publishes
//! progress on a `watch` channel. Every request for that digest, the first included, is a
//! [`FillReader`] that reads the temp file up to the published length at its own pace, so one
//! slow client never holds back the fill or the others, and the fill finishes (and is cached)
//! even when every client has gone. The last byte of a response is released only once the
//! whole blob has been verified, so a failed fill can still abort every response in flight.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::blobs::{Area, BlobFile, Committed, Store};
use super::buffers::BufferPool;
use super::disk::RoomClaim;
use super::reader::FillReader;
use super::recent::Recent;
use crate::oci::{Digest, Verifier};

/// Bytes queued for the writer thread before the upstream read waits for the disk. Bounded in
/// bytes, not chunks: an upstream chunk can be anything from a few KiB to hundreds.
const WRITE_BUDGET: usize = 2 * 1024 * 1024;
/// Messages in the writer's queue (the byte budget is what really bounds it).
const WRITE_QUEUE: usize = 1024;
/// Progress is published to readers at least this many bytes at a time (and at the end), so
/// readers following a fill wake for reads worth making, not for every upstream chunk...
const PUBLISH_EVERY: u64 = 256 * 1024;
/// ...or when no more bytes came for this long, so a slow upstream still reaches them promptly.
const PUBLISH_LINGER: Duration = Duration::from_millis(2);

#[derive(Debug, Clone)]
pub enum FillState<E> {
    /// Waiting for the upstream's answer.
    Connecting,
    /// Bytes are arriving; `total` is known if the upstream declared a length.
    Streaming,
    /// Every byte arrived and matched the digest.
    Verified,
    /// Nothing will be cached; responses in flight must be aborted.
    Failed(E),
}

#[derive(Debug, Clone)]
pub(super) struct Progress<E> {
    pub total: Option<u64>,
    pub written: u64,
    pub state: FillState<E>,
}

/// Why a fill's bytes were not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("length mismatch: upstream declared {declared} bytes, sent {received}")]
    LengthMismatch { declared: u64, received: u64 },
    #[error("cache write failed: {0}")]
    Io(String),
    #[error("not enough free disk space to cache {0} bytes")]
    NoSpace(u64),
    #[error("the fill was abandoned before it finished")]
    Abandoned,
}

/// One blob being fetched.
pub struct Fill<E> {
    file: Arc<File>,
    buffers: BufferPool,
    recent: Arc<Recent>,
    progress: watch::Receiver<Progress<E>>,
}

impl<E: Clone> Fill<E> {
    /// Waits until the upstream answered: the declared length (if any), or the failure.
    pub async fn started(&self) -> Result<Option<u64>, E> {
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

    /// Waits for the fill's verdict: verified, failed, or (`Ok(false)`) stopped without one.
    pub async fn verdict(&self) -> Result<bool, E> {
        let mut rx = self.progress.clone();
        loop {
            match &rx.borrow_and_update().state {
                FillState::Verified => return Ok(true),
                FillState::Failed(e) => return Err(e.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return match &rx.borrow().state {
                    FillState::Verified => Ok(true),
                    FillState::Failed(e) => Err(e.clone()),
                    _ => Ok(false),
                };
            }
        }
    }

    /// A reader of bytes `start..end` (`end` = `None`: to the end of the blob).
    pub fn reader(&self, start: u64, end: Option<u64>) -> FillReader<E> {
        let following = Some((self.progress.clone(), self.recent.clone()));
        FillReader::new(
            self.file.clone(),
            self.buffers.clone(),
            following,
            start,
            end,
        )
    }
}

impl CommitError {
    /// The cache could not take the bytes (as opposed to the bytes being wrong): the blob can
    /// still be streamed to clients without caching it.
    pub fn is_unwritable(&self) -> bool {
        matches!(self, CommitError::Io(_) | CommitError::NoSpace(_))
    }
}

/// What a request for a blob joined.
pub enum Joined<E> {
    /// Already committed.
    Cached(BlobFile),
    /// Not cached, and the cache directory takes no writes now (disk full, read-only): stream
    /// from the upstream without caching.
    Unwritable,
    /// A fill of this digest was already running.
    Coalesced(Arc<Fill<E>>),
    /// This request started the fill and must feed the writer.
    Started(Arc<Fill<E>>, FillWriter<E>),
}

/// The fills in flight, by digest.
pub struct Fills<E> {
    store: Arc<Store>,
    in_flight: Mutex<HashMap<Digest, Arc<Fill<E>>>>,
}

impl<E: Clone + Send + Sync + 'static> Fills<E> {
    pub fn new(store: Arc<Store>) -> Arc<Self> {
        Arc::new(Fills {
            store,
            in_flight: Mutex::new(HashMap::new()),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The fill of `digest` in progress, if any.
    pub fn running(&self, digest: &Digest) -> Option<Arc<Fill<E>>> {
        self.in_flight
            .lock()
            .expect("lock poisoned")
            .get(digest)
            .cloned()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.lock().expect("lock poisoned").len()
    }

    /// The committed blob, the running fill, or a new fill for `digest`.
    ///
    /// `failure` turns a commit failure into the value readers see.
    pub fn join(self: &Arc<Self>, digest: &Digest, failure: fn(CommitError) -> E) -> Joined<E> {
        // Hits take no lock.
        if let Some(blob) = self.store.open_blob(digest) {
            return Joined::Cached(blob);
        }
        if let Some(fill) = self.running(digest) {
            return Joined::Coalesced(fill);
        }
        // May probe the disk: outside the lock, so a slow disk holds up no other request.
        let writable = self.store.caching_allowed();
        let mut in_flight = self.in_flight.lock().expect("lock poisoned");
        if let Some(fill) = in_flight.get(digest) {
            return Joined::Coalesced(fill.clone());
        }
        // A fill removes itself only after its rename, under this lock: look again so a fill
        // that finished since the first look is not repeated.
        if let Some(blob) = self.store.open_blob(digest) {
            return Joined::Cached(blob);
        }
        if !writable {
            return Joined::Unwritable;
        }
        let Ok((temp_path, file)) = self.store.temp_file() else {
            // The store has recorded why (logged once per condition).
            return Joined::Unwritable;
        };
        let file = Arc::new(file);
        let (progress_tx, progress_rx) = watch::channel(Progress {
            total: None,
            written: 0,
            state: FillState::Connecting,
        });
        let recent = Arc::new(Recent::default());
        let fill = Arc::new(Fill {
            file: file.clone(),
            buffers: self.store.buffers().clone(),
            recent: recent.clone(),
            progress: progress_rx,
        });
        in_flight.insert(digest.clone(), fill.clone());
        drop(in_flight);

        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let job = WriteJob {
            fills: self.clone(),
            digest: digest.clone(),
            temp_path,
            file,
            progress: progress_tx,
            failure,
            room: None,
            recent,
            forgotten: false,
        };
        tokio::task::spawn_blocking(move || job.run(rx));
        let budget = Arc::new(Semaphore::new(WRITE_BUDGET));
        Joined::Started(fill, FillWriter { tx, budget })
    }
}

enum Message<E> {
    Start(Option<u64>),
    /// A chunk and its share of the byte budget, given back once it is on disk.
    Chunk(Bytes, OwnedSemaphorePermit),
    Finish(oneshot::Sender<Result<(), CommitError>>),
    Fail(E),
}

/// The feeding end of a fill, held by whoever fetches the bytes.
pub struct FillWriter<E> {
    tx: mpsc::Sender<Message<E>>,
    budget: Arc<Semaphore>,
}

impl<E: Send + 'static> FillWriter<E> {
    /// The upstream answered; `total` is its declared length.
    pub async fn start(&self, total: Option<u64>) {
        let _ = self.tx.send(Message::Start(total)).await;
    }

    /// Appends a chunk; waits when the disk is behind.
    pub async fn write(&self, chunk: Bytes) -> Result<(), CommitError> {
        let stopped = || CommitError::Io("the cache writer stopped".into());
        // A chunk larger than the whole budget takes all of it.
        let share = chunk.len().clamp(1, WRITE_BUDGET) as u32;
        let permit = self
            .budget
            .clone()
            .acquire_many_owned(share)
            .await
            .map_err(|_| stopped())?;
        self.tx
            .send(Message::Chunk(chunk, permit))
            .await
            .map_err(|_| stopped())
    }

    /// Verifies length and digest and commits the blob.
    pub async fn finish(self) -> Result<(), CommitError> {
        let (reply, verdict) = oneshot::channel();
        if self.tx.send(Message::Finish(reply)).await.is_err() {
            return Err(CommitError::Io("the cache writer stopped".into()));
        }
        verdict.await.unwrap_or(Err(CommitError::Abandoned))
    }

    /// The fill failed upstream; readers see `error`.
    pub async fn fail(self, error: E) {
        let _ = self.tx.send(Message::Fail(error)).await;
    }
}

struct WriteJob<E> {
    fills: Arc<Fills<E>>,
    digest: Digest,
    temp_path: PathBuf,
    file: Arc<File>,
    progress: watch::Sender<Progress<E>>,
    failure: fn(CommitError) -> E,
    /// Disk space held for the declared length until the fill ends.
    room: Option<RoomClaim>,
    recent: Arc<Recent>,
    /// Whether this fill was taken out of the table of fills in flight.
    forgotten: bool,
}

impl<E: Clone + Send + Sync + 'static> WriteJob<E> {
    /// The writer thread: owns the temp file until it is committed or removed.
    fn run(mut self, mut rx: mpsc::Receiver<Message<E>>) {
        let store = self.fills.store.clone();
        let mut verifier = Verifier::new(self.digest.algorithm());
        let mut written = 0u64;
        let mut published = 0u64;
        let mut total = None;
        let runtime = tokio::runtime::Handle::current();
        let verdict = loop {
            // Bytes not yet published wait at most PUBLISH_LINGER for more to join them: a
            // fast upstream is published in PUBLISH_EVERY steps, a trickle promptly.
            let message = if written > published {
                match runtime.block_on(tokio::time::timeout(PUBLISH_LINGER, rx.recv())) {
                    Ok(message) => message,
                    Err(_) => {
                        published = written;
                        self.progress.send_modify(|p| p.written = written);
                        continue;
                    }
                }
            } else {
                rx.blocking_recv()
            };
            match message {
                Some(Message::Start(declared)) => {
                    // Refuse before the first byte, while every reader can still be served
                    // another way, rather than fail half-way when the disk runs out.
                    if let Some(needed) = declared {
                        self.room = store.claim_room(needed);
                        if self.room.is_none() {
                            let error = (self.failure)(CommitError::NoSpace(needed));
                            self.abandon(FillState::Failed(error));
                            return;
                        }
                    }
                    total = declared;
                    self.progress.send_modify(|p| {
                        p.total = declared;
                        p.state = FillState::Streaming;
                    });
                }
                Some(Message::Chunk(chunk, _budget)) => {
                    if let Err(e) = (&*self.file).write_all(&chunk) {
                        // Stop now: the readers are waiting for bytes that will not come.
                        store.write_failed(&e);
                        let error = CommitError::Io(e.to_string());
                        self.abandon(FillState::Failed((self.failure)(error)));
                        return;
                    }
                    verifier.update(&chunk);
                    let offset = written;
                    written += chunk.len() as u64;
                    self.recent.push(offset, chunk);
                    if written >= published + PUBLISH_EVERY {
                        published = written;
                        self.progress.send_modify(|p| p.written = written);
                    }
                }
                Some(Message::Finish(reply)) => {
                    self.progress.send_modify(|p| p.written = written);
                    let result = self.verify(verifier, written, total);
                    break Some((result, Some(reply)));
                }
                Some(Message::Fail(e)) => {
                    self.abandon(FillState::Failed(e));
                    break None;
                }
                None => break Some((Err(CommitError::Abandoned), None)),
            }
        };
        let Some((result, reply)) = verdict else {
            return;
        };
        let result = result.and_then(|()| {
            // Readers may finish as soon as the bytes are known good; the commit is only
            // for the cache.
            self.progress.send_modify(|p| p.state = FillState::Verified);
            self.commit()
        });
        if let Err(e) = &result {
            self.abandon(FillState::Failed((self.failure)(e.clone())));
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    fn verify(
        &self,
        verifier: Verifier,
        written: u64,
        total: Option<u64>,
    ) -> Result<(), CommitError> {
        if let Some(declared) = total.filter(|&t| t != written) {
            return Err(CommitError::LengthMismatch {
                declared,
                received: written,
            });
        }
        let actual = verifier.finish();
        if actual != self.digest {
            return Err(CommitError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Stores the verified blob (unless it is larger than the whole cache: then the readers are
    /// served from the temp file, which goes away with them).
    fn commit(&mut self) -> Result<(), CommitError> {
        let store = &self.fills.store;
        let committed = store.commit(&self.temp_path, &self.file, Area::Blobs, &self.digest);
        self.forget();
        self.recent.clear();
        match committed {
            Ok(Committed::Stored | Committed::TooLarge) => Ok(()),
            Err(e) => Err(CommitError::Io(e.to_string())),
        }
    }

    /// Publishes a failure (unless the bytes were already verified: then the readers' bytes
    /// were right, and only the cache copy is lost) and drops the temp file.
    fn abandon(&mut self, failed: FillState<E>) {
        // Forget the fill before announcing its failure, so a request that arrives in between
        // starts a fresh fill instead of joining this dead one.
        self.forget();
        self.progress.send_modify(|p| {
            if p.state != FillState::Verified {
                p.state = failed;
            }
        });
        self.recent.clear();
        let _ = std::fs::remove_file(&self.temp_path);
    }

    /// Takes this fill out of the table of fills in flight (once: a later fill of the same
    /// digest may take its place).
    fn forget(&mut self) {
        if !self.forgotten {
            self.forgotten = true;
            if let Ok(mut in_flight) = self.fills.in_flight.lock() {
                in_flight.remove(&self.digest);
            }
        }
    }
}

impl<E> Drop for WriteJob<E> {
    /// Should the writer thread panic, its fill must not stay in the table (every later request
    /// for the digest would join a fill that never ends), and its readers, even those still
    /// waiting for the upstream's answer, must see it failed.
    fn drop(&mut self) {
        if !self.forgotten {
            if let Ok(mut in_flight) = self.fills.in_flight.lock() {
                in_flight.remove(&self.digest);
            }
            let failed = (self.failure)(CommitError::Abandoned);
            self.progress.send_modify(|p| {
                if p.state != FillState::Verified {
                    p.state = FillState::Failed(failed);
                }
            });
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}

impl<E> PartialEq for FillState<E> {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}
