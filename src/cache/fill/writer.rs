//! The writing end of a fill: the feeder's [`FillWriter`], and the writer thread that appends
//! to the temp file, hashes, publishes progress, verifies and commits.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::assembly::Assembly;
use super::buffers::{BufferPool, CHUNK};
use super::progress::{FillState, Progress};
use super::window::NewestBytes;
use crate::cache::error::{check_blob, Error, SourceFailure};
use crate::cache::store::{Committed, EntryKey, RoomClaim, Store};
use crate::oci::{Digest, Verifier};

/// Bytes queued for the writer thread before the feeder waits for the disk. Bounded in bytes,
/// not chunks: an upstream chunk can be anything from a few KiB to hundreds.
const WRITE_BUDGET: usize = 2 * 1024 * 1024;
/// Messages in the writer's queue (the byte budget is what really bounds it).
const WRITE_QUEUE: usize = 1024;
/// Progress is published to readers at least this many bytes at a time (and at the end), so
/// readers following a fill wake for reads worth making, not for every upstream chunk...
const PUBLISH_EVERY: u64 = 256 * 1024;
/// ...or when no more bytes came for this long, so a slow upstream still reaches them promptly.
const PUBLISH_LINGER: Duration = Duration::from_millis(2);

enum Message {
    Start(Option<u64>),
    /// A chunk, where it goes in the blob, and its share of the byte budget, given back once
    /// it is on disk.
    Chunk(u64, Bytes, OwnedSemaphorePermit),
    Finish(oneshot::Sender<Result<(), Error>>),
    Fail(SourceFailure),
}

/// Sends chunks to the writer thread, within the byte budget.
#[derive(Clone)]
struct ChunkSender {
    tx: mpsc::Sender<Message>,
    budget: Arc<Semaphore>,
    buffers: BufferPool,
}

impl ChunkSender {
    /// Sends `chunk` to be written at `offset`; waits when the disk is behind.
    ///
    /// The bytes are copied into recycled buffers first, and the source's chunk dropped at
    /// once: it lives in the HTTP client's read buffer, which can then take the next bytes in
    /// place. Kept (by the writer's queue and the window of newest bytes), it would make the
    /// client allocate fresh memory for every read, and the kernel fault in every page of it:
    /// that costs more than the copy.
    async fn send(&self, offset: u64, chunk: Bytes) -> Result<(), Error> {
        let mut at = 0;
        while at < chunk.len() {
            let len = (chunk.len() - at).min(CHUNK);
            let mut buf = self.buffers.take();
            buf[..len].copy_from_slice(&chunk[at..at + len]);
            let piece = self.buffers.freeze(buf, len);
            // A piece larger than the whole budget takes all of it.
            let share = len.clamp(1, WRITE_BUDGET) as u32;
            let permit = self
                .budget
                .clone()
                .acquire_many_owned(share)
                .await
                .map_err(|_| writer_stopped())?;
            self.tx
                .send(Message::Chunk(offset + at as u64, piece, permit))
                .await
                .map_err(|_| writer_stopped())?;
            at += len;
        }
        Ok(())
    }
}

/// The feeding end of a fill, held by whoever fetches the bytes: it writes the blob from its
/// start, and may hand out [`SegmentWriter`]s for pieces further on, fetched alongside.
pub struct FillWriter {
    /// The piece from the blob's start.
    head: SegmentWriter,
}

impl FillWriter {
    /// The source answered; `total` is its declared length.
    pub async fn start(&self, total: Option<u64>) {
        let _ = self.head.chunks.tx.send(Message::Start(total)).await;
    }

    /// Appends a chunk; waits when the disk is behind.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        self.head.write(chunk).await
    }

    /// A writer of the piece of the blob from `start`, fed alongside this one. Every piece
    /// must have been written before [`Self::finish`].
    pub fn segment(&self, start: u64) -> SegmentWriter {
        SegmentWriter {
            chunks: self.head.chunks.clone(),
            next: start,
        }
    }

    /// Verifies length and digest and commits the blob.
    pub async fn finish(self) -> Result<(), Error> {
        let (reply, verdict) = oneshot::channel();
        if self
            .head
            .chunks
            .tx
            .send(Message::Finish(reply))
            .await
            .is_err()
        {
            return Err(writer_stopped());
        }
        verdict.await.unwrap_or(Err(Error::Abandoned))
    }

    /// The source failed; readers see `error`.
    pub async fn fail(self, error: SourceFailure) {
        let _ = self.head.chunks.tx.send(Message::Fail(error)).await;
    }
}

/// Writes one piece of a fill, from where it starts, in order.
pub struct SegmentWriter {
    chunks: ChunkSender,
    next: u64,
}

impl SegmentWriter {
    /// Writes the piece's next chunk; waits when the disk is behind.
    pub async fn write(&mut self, chunk: Bytes) -> Result<(), Error> {
        let len = chunk.len() as u64;
        self.chunks.send(self.next, chunk).await?;
        self.next += len;
        Ok(())
    }
}

fn writer_stopped() -> Error {
    Error::write(std::io::Error::other("the cache writer stopped"))
}

/// Runs once, when a fill leaves the table of fills in flight.
pub struct Leave(Option<Box<dyn FnOnce() + Send>>);

impl Leave {
    pub fn new(leave: impl FnOnce() + Send + 'static) -> Leave {
        Leave(Some(Box::new(leave)))
    }

    fn now(&mut self) {
        if let Some(leave) = self.0.take() {
            leave();
        }
    }
}

pub struct WriteJob {
    store: Arc<Store>,
    digest: Digest,
    temp_path: PathBuf,
    file: Arc<File>,
    progress: watch::Sender<Progress>,
    newest: Arc<NewestBytes>,
    /// Disk space held for the declared length until the fill ends.
    room: Option<RoomClaim>,
    leave: Leave,
    /// Whether the fill has ended (committed, or failed and cleaned up): then nothing is left
    /// for `Drop` to undo.
    ended: bool,
}

impl WriteJob {
    pub fn new(
        store: Arc<Store>,
        digest: Digest,
        temp_path: PathBuf,
        file: Arc<File>,
        progress: watch::Sender<Progress>,
        newest: Arc<NewestBytes>,
        leave: Leave,
    ) -> WriteJob {
        WriteJob {
            store,
            digest,
            temp_path,
            file,
            progress,
            newest,
            room: None,
            leave,
            ended: false,
        }
    }

    /// Starts the writer thread; the returned writer feeds it, through buffers from `buffers`.
    pub fn spawn(self, buffers: BufferPool) -> FillWriter {
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        tokio::task::spawn_blocking(move || self.run(rx));
        FillWriter {
            head: SegmentWriter {
                chunks: ChunkSender {
                    tx,
                    budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
                    buffers,
                },
                next: 0,
            },
        }
    }

    /// The writer thread: owns the temp file until it is committed or removed.
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let (result, reply) = match self.receive(rx) {
            Ok(Some((verifier, written, total, reply))) => {
                let result = check_blob(&self.digest, verifier, written, total).and_then(|()| {
                    // Readers may finish as soon as the bytes are known good; the commit is
                    // only for the cache.
                    self.progress.send_modify(|p| p.state = FillState::Verified);
                    self.commit()
                });
                (result, Some(reply))
            }
            // The feeder went away without finishing.
            Ok(None) => (Err(Error::Abandoned), None),
            Err(e) => (Err(e), None),
        };
        if let Err(e) = &result {
            self.end(e.clone());
        }
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    /// Writes what the feeder sends until it finishes (the hash so far, the length written,
    /// the declared length, and where the verdict goes), fails, or goes away.
    #[allow(clippy::type_complexity)]
    fn receive(
        &mut self,
        mut rx: mpsc::Receiver<Message>,
    ) -> Result<
        Option<(
            Verifier,
            u64,
            Option<u64>,
            oneshot::Sender<Result<(), Error>>,
        )>,
        Error,
    > {
        let mut assembly = Assembly::new(Verifier::new(self.digest.algorithm()));
        let mut published = 0u64;
        let mut total = None;
        let runtime = tokio::runtime::Handle::current();
        loop {
            // Bytes not yet published wait at most PUBLISH_LINGER for more to join them: a
            // fast upstream is published in PUBLISH_EVERY steps, a trickle promptly.
            let message = if assembly.prefix() > published {
                match runtime.block_on(tokio::time::timeout(PUBLISH_LINGER, rx.recv())) {
                    Ok(message) => message,
                    Err(_) => {
                        published = assembly.prefix();
                        self.progress.send_modify(|p| p.written = published);
                        continue;
                    }
                }
            } else {
                rx.blocking_recv()
            };
            match message {
                Some(Message::Start(declared)) => {
                    self.start(declared)?;
                    total = declared;
                }
                Some(Message::Chunk(offset, chunk, _budget)) => {
                    let written = self
                        .file
                        .write_all_at(&chunk, offset)
                        .and_then(|()| assembly.add(offset, &chunk, &self.file));
                    match written {
                        // At the end of the prefix: the readers at the head want it next.
                        Ok(true) => self.newest.push(offset, chunk),
                        Ok(false) => {}
                        Err(e) => {
                            // Stop now: the readers are waiting for bytes that will not come.
                            self.store.write_failed(&e);
                            return Err(Error::write(e));
                        }
                    }
                    if assembly.prefix() >= published + PUBLISH_EVERY {
                        published = assembly.prefix();
                        self.progress.send_modify(|p| p.written = published);
                    }
                }
                Some(Message::Finish(reply)) => {
                    let prefix = assembly.prefix();
                    self.progress.send_modify(|p| p.written = prefix);
                    let Some((verifier, written)) = assembly.finish() else {
                        return Err(Error::Gaps { contiguous: prefix });
                    };
                    return Ok(Some((verifier, written, total, reply)));
                }
                Some(Message::Fail(e)) => return Err(Error::Source(e)),
                None => return Ok(None),
            }
        }
    }

    /// The source answered: claims room for the declared length and tells the readers.
    fn start(&mut self, declared: Option<u64>) -> Result<(), Error> {
        // Refuse before the first byte, while every reader can still be served another way,
        // rather than fail half-way when the disk runs out.
        if let Some(needed) = declared {
            self.room = self.store.claim_room(needed);
            if self.room.is_none() {
                return Err(Error::NoSpace(needed));
            }
            // The filesystem allocates the whole blob at once, instead of a few pages at every
            // write; where it cannot (tmpfs on old kernels, some network filesystems), the
            // writes allocate as they go, as before.
            if needed > 0 {
                let _ = rustix::fs::fallocate(
                    &*self.file,
                    rustix::fs::FallocateFlags::empty(),
                    0,
                    needed,
                );
            }
        }
        self.progress.send_modify(|p| {
            p.total = declared;
            p.state = FillState::Streaming;
            p.streaming_since = Some(std::time::Instant::now());
        });
        Ok(())
    }

    /// Stores the verified blob (unless it is larger than the whole cache: then the readers are
    /// served from the temp file, which goes away with them).
    fn commit(&mut self) -> Result<(), Error> {
        let key = EntryKey::blob(&self.digest);
        let committed = self.store.commit(&self.temp_path, &self.file, &key);
        self.ended = true;
        self.leave.now();
        self.newest.clear();
        match committed {
            Ok(Committed::Stored | Committed::TooLarge) => Ok(()),
            Err(e) => Err(Error::write(e)),
        }
    }

    /// Ends the fill without a commit: publishes `failure` (unless the bytes were already
    /// verified: then the readers' bytes were right, and only the cache copy is lost) and
    /// drops the temp file. The one clean-up, whichever way the fill fails: an error, or the
    /// writer thread unwinding (through `Drop`).
    fn end(&mut self, failure: Error) {
        self.ended = true;
        // Leave the table before announcing the failure, so a request that arrives in
        // between starts a fresh fill instead of joining this dead one.
        self.leave.now();
        self.progress.send_modify(|p| {
            if !p.state.is_verified() {
                p.state = FillState::Failed(failure);
            }
        });
        self.newest.clear();
        let _ = std::fs::remove_file(&self.temp_path);
    }
}

impl Drop for WriteJob {
    /// Should the writer thread panic, its fill must not stay in the table (every later request
    /// for the digest would join a fill that never ends), and its readers, even those still
    /// waiting for the source's answer, must see it failed.
    fn drop(&mut self) {
        if !self.ended {
            self.end(Error::Abandoned);
        }
    }
}
