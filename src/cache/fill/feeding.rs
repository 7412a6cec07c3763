//! The feeding end of a fill: the feeder's [`FillWriter`] and the [`SegmentWriter`]s it hands
//! out, which gather the source's chunks into buffers and queue them for the writer task within
//! a byte budget.

use crate::metrics::Source;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::buffers::{Buffer, BufferPool, CHUNK};
use crate::cache::error::{Error, SourceFailure};

/// Buffer memory queued for the writer before the feeder waits for the disk. Counted in the
/// memory the queued pieces hold, not their payload: a source's chunk can be anything from a
/// few KiB (an HTTP/2 DATA frame) to hundreds.
pub(super) const WRITE_BUDGET: usize = 2 * 1024 * 1024;

/// What the feeding end tells the writer task.
pub(super) enum Message {
    Start(Option<u64>, Source),
    Piece(Piece),
    Finish(oneshot::Sender<Result<(), Error>>),
    Fail(SourceFailure),
}

/// Bytes for the writer: where they go in the blob, the buffer memory they hold, and that
/// memory's share of the write budget, given back once they are on disk.
pub(super) struct Piece {
    pub(super) offset: u64,
    pub(super) bytes: Bytes,
    pub(super) held: usize,
    pub(super) _budget: OwnedSemaphorePermit,
}

/// Sends pieces to the writer task, within the byte budget.
#[derive(Clone)]
pub(super) struct PieceSender {
    pub(super) tx: mpsc::Sender<Message>,
    pub(super) budget: Arc<Semaphore>,
    pub(super) buffers: BufferPool,
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
    pub(super) pieces: PieceSender,
}

impl FillWriter {
    /// The source answered; `total` is its declared length, `from` where the bytes come from
    /// (for the count of bytes served by source).
    pub async fn start(&self, total: Option<u64>, from: Source) {
        let _ = self.pieces.tx.send(Message::Start(total, from)).await;
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
