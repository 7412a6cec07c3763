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
use super::buffers::{Buffer, BufferPool, CHUNK};
use super::progress::{FillState, Progress};
use super::window::NewestBytes;
use crate::cache::error::{check_blob, Error, SourceFailure};
use crate::cache::store::{Committed, EntryKey, RoomClaim, Store};
use crate::oci::{Digest, Verifier};

/// Buffer memory queued for the writer thread before the feeder waits for the disk. Counted in
/// the memory the queued pieces hold, not their payload: a source's chunk can be anything from
/// a few KiB (an HTTP/2 DATA frame) to hundreds.
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
    Piece(Piece),
    Finish(oneshot::Sender<Result<(), Error>>),
    Fail(SourceFailure),
}

/// Bytes for the writer thread: where they go in the blob, the buffer memory they hold, and
/// that memory's share of the write budget, given back once they are on disk.
struct Piece {
    offset: u64,
    bytes: Bytes,
    held: usize,
    _budget: OwnedSemaphorePermit,
}

/// Sends pieces to the writer thread, within the byte budget.
#[derive(Clone)]
struct PieceSender {
    tx: mpsc::Sender<Message>,
    budget: Arc<Semaphore>,
    buffers: BufferPool,
}

impl PieceSender {
    /// Sends `bytes`, which hold `held` bytes of memory, to be written at `offset`; waits while
    /// the disk is behind.
    async fn send(&self, offset: u64, bytes: Bytes, held: usize) -> Result<(), Error> {
        // A piece larger than the whole budget takes all of it.
        let share = held.clamp(1, WRITE_BUDGET) as u32;
        let budget = self
            .budget
            .clone()
            .acquire_many_owned(share)
            .await
            .map_err(|_| writer_stopped())?;
        let piece = Piece {
            offset,
            bytes,
            held,
            _budget: budget,
        };
        self.tx
            .send(Message::Piece(piece))
            .await
            .map_err(|_| writer_stopped())
    }
}

/// The feeding end of a fill, held by whoever fetches the bytes: it hands out a
/// [`SegmentWriter`] for each piece of the blob fetched on its own (one from the start, and
/// perhaps others further on, fed alongside).
pub struct FillWriter {
    pieces: PieceSender,
}

impl FillWriter {
    /// The source answered; `total` is its declared length.
    pub async fn start(&self, total: Option<u64>) {
        let _ = self.pieces.tx.send(Message::Start(total)).await;
    }

    /// A writer of the piece of the blob from `start`. Every piece must have been written and
    /// flushed before [`Self::finish`].
    pub fn segment(&self, start: u64) -> SegmentWriter {
        SegmentWriter {
            pieces: self.pieces.clone(),
            next: start,
            filling: None,
            filled: 0,
        }
    }

    /// Verifies length and digest and commits the blob.
    pub async fn finish(self) -> Result<(), Error> {
        let (reply, verdict) = oneshot::channel();
        if self.pieces.tx.send(Message::Finish(reply)).await.is_err() {
            return Err(writer_stopped());
        }
        verdict.await.unwrap_or(Err(Error::Abandoned))
    }

    /// The source failed; readers see `error`.
    pub async fn fail(self, error: SourceFailure) {
        let _ = self.pieces.tx.send(Message::Fail(error)).await;
    }
}

/// Writes one piece of a fill, from where it starts, in order.
///
/// The source's chunks are gathered into one recycled [`CHUNK`] buffer, sent to the writer when
/// it is full or when the feeder [`flush`](Self::flush)es: an upstream sending 16 KiB HTTP/2
/// frames then costs one buffer per 512 KiB, not one per frame. The source's own chunks are
/// dropped at once, so the HTTP client reads into the same memory again instead of fresh pages.
pub struct SegmentWriter {
    pieces: PieceSender,
    /// Where the first byte of `filling` goes in the blob.
    next: u64,
    /// The buffer being filled, and how much of it is.
    filling: Option<Buffer>,
    filled: usize,
}

impl SegmentWriter {
    /// Adds the piece's next bytes; waits when the disk is behind.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        let mut at = 0;
        while at < chunk.len() {
            let buf = self
                .filling
                .get_or_insert_with(|| self.pieces.buffers.take());
            let len = (CHUNK - self.filled).min(chunk.len() - at);
            buf[self.filled..self.filled + len].copy_from_slice(&chunk[at..at + len]);
            self.filled += len;
            at += len;
            if self.filled == CHUNK {
                self.send_filling().await?;
            }
        }
        Ok(())
    }

    /// Whether bytes wait in the buffer for more to join them.
    pub fn holds_bytes(&self) -> bool {
        self.filled > 0
    }

    /// Sends the bytes gathered so far, for when the source pauses (readers should not wait for
    /// a buffer to fill) or ends. Fewer than half a buffer's worth are copied into a buffer of
    /// their size, and the large one is kept for what comes next, so a trickle never holds a
    /// large buffer per few bytes.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let Some(filling) = self.filling.as_ref().filter(|_| self.filled > 0) else {
            return Ok(());
        };
        if self.filled >= CHUNK / 2 {
            return self.send_filling().await;
        }
        let mut small = self.pieces.buffers.take_for(self.filled);
        small.copy_from_slice(&filling[..self.filled]);
        let (len, held) = (self.filled, small.held());
        self.pieces.send(self.next, small.freeze(len), held).await?;
        self.next += len as u64;
        self.filled = 0;
        Ok(())
    }

    async fn send_filling(&mut self) -> Result<(), Error> {
        let Some(buf) = self.filling.take() else {
            return Ok(());
        };
        let (len, held) = (self.filled, buf.held());
        self.filled = 0;
        self.pieces.send(self.next, buf.freeze(len), held).await?;
        self.next += len as u64;
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
            pieces: PieceSender {
                tx,
                budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
                buffers,
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
                Some(Message::Piece(piece)) => {
                    let offset = piece.offset;
                    let written = self
                        .file
                        .write_all_at(&piece.bytes, offset)
                        .and_then(|()| assembly.add(offset, &piece.bytes, &self.file));
                    match written {
                        // At the end of the prefix: the readers at the head want it next.
                        Ok(true) => self.newest.push(offset, piece.bytes, piece.held),
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
