//! Reading a committed blob or a fill in progress, a chunk at a time. A chunk already in memory
//! (the fill's newest bytes, or the page cache, the common case for a cache) is taken right away
//! on the calling thread; only one that needs the disk is read on the blocking pool, and then the
//! next one is read ahead while it is sent. Hot blobs cost no thread hop and one buffer per
//! reader; a slow disk never stalls the async workers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::buffers::{BufferPool, CHUNK};
use super::progress::{FillState, Progress};
use super::window::NewestBytes;
use crate::body::{Chunk, FileRange};
use crate::cache::error::Error;

/// A reader of a committed blob or of a fill in progress.
pub struct BlobReader {
    file: Arc<File>,
    buffers: BufferPool,
    /// `None` for a committed blob.
    progress: Option<watch::Receiver<Progress>>,
    /// The fill's newest bytes, in memory.
    recent: Option<Arc<NewestBytes>>,
    /// Where the next read starts.
    pos: u64,
    end: Option<u64>,
    /// Read ahead after a chunk had to come from the disk.
    ahead: Option<Read>,
}

/// What the reader can do next.
enum Next {
    Read(Read),
    /// Nothing readable yet: wait for the fill.
    Wait,
    /// Everything was read.
    Done,
}

/// A chunk on its way.
enum Read {
    Ready(Bytes),
    FromDisk(JoinHandle<io::Result<Bytes>>),
}

impl BlobReader {
    /// A reader of bytes `start..end` of a committed blob.
    pub(super) fn committed(file: Arc<File>, buffers: BufferPool, start: u64, end: u64) -> Self {
        BlobReader {
            file,
            buffers,
            progress: None,
            recent: None,
            pos: start,
            end: Some(end),
            ahead: None,
        }
    }

    /// A reader of bytes `start..end` (`end` = `None`: to the end) of a blob being filled,
    /// following the fill's progress and newest bytes.
    pub(super) fn following(
        file: Arc<File>,
        buffers: BufferPool,
        progress: watch::Receiver<Progress>,
        recent: Arc<NewestBytes>,
        start: u64,
        end: Option<u64>,
    ) -> Self {
        BlobReader {
            file,
            buffers,
            progress: Some(progress),
            recent: Some(recent),
            pos: start,
            end,
            ahead: None,
        }
    }

    /// How far bytes may be read now, and whether that is final: no more will come (a committed
    /// blob, or a verified fill). Both come from one look at the fill's progress, so a verdict
    /// that lands in between can never end a response before its last bytes.
    fn readable_to(&mut self) -> Result<(u64, bool), Error> {
        let Some(rx) = &mut self.progress else {
            return Ok((self.end.unwrap_or(self.pos), true));
        };
        let p = rx.borrow_and_update();
        let end = self.end.or(p.total);
        Ok(match (&p.state, end) {
            (FillState::Failed(e), _) => return Err(e.clone()),
            (FillState::Verified, end) => (end.unwrap_or(p.written).min(p.written), true),
            // A response that ends with the blob's last byte holds that byte back until the
            // digest is known to match, so a bad fill can still cut it short. A range that ends
            // earlier is answered as soon as its bytes exist, and ends with them: the next part
            // of a multi-range answer must not wait for the rest of the fill.
            (_, Some(end)) if Some(end) == p.total => (p.written.min(end.saturating_sub(1)), false),
            (_, Some(end)) => (p.written.min(end), p.written >= end),
            (_, None) => (p.written, false),
        })
    }

    /// Starts reading the next chunk, if any bytes are readable now.
    fn start_read(&mut self) -> Result<Next, Error> {
        let (to, last) = self.readable_to()?;
        if self.pos >= to {
            return Ok(if last { Next::Done } else { Next::Wait });
        }
        if let Some(bytes) = self.recent.as_ref().and_then(|r| r.get(self.pos, to)) {
            self.pos += bytes.len() as u64;
            return Ok(Next::Read(Read::Ready(bytes)));
        }
        let len = (to - self.pos).min(CHUNK as u64) as usize;
        // A few bytes of a fill that is trickling in get a buffer of their size.
        let (pos, mut buf) = (self.pos, self.buffers.take_for(len));
        self.pos += len as u64;
        let cached = read_cached(&self.file, &mut buf[..len], pos);
        if cached == len {
            return Ok(Next::Read(Read::Ready(buf.freeze(len))));
        }
        let file = self.file.clone();
        Ok(Next::Read(Read::FromDisk(tokio::task::spawn_blocking(
            move || {
                let rest = pos + cached as u64;
                file.read_exact_at(&mut buf[cached..len], rest)
                    .map_err(|e| match e.kind() {
                        io::ErrorKind::UnexpectedEof => {
                            io::Error::new(e.kind(), "cache file is shorter than recorded")
                        }
                        _ => e,
                    })?;
                Ok(buf.freeze(len))
            },
        ))))
    }

    /// The next chunk; `Ok(None)` once the range was sent and the blob verified.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let read = match self.ahead.take() {
                Some(read) => read,
                None => match self.start_read()? {
                    Next::Read(read) => read,
                    Next::Done => return Ok(None),
                    Next::Wait => {
                        self.progress_changed().await?;
                        continue;
                    }
                },
            };
            return match read {
                Read::Ready(chunk) => Ok(Some(chunk)),
                Read::FromDisk(handle) => {
                    let chunk = handle
                        .await
                        .map_err(|e| Error::read(io::Error::other(e)))?
                        .map_err(Error::read)?;
                    // The disk is slow to reach: have the next chunk on its way while this one
                    // is sent. A failure shows on the next call; this chunk was readable.
                    if let Ok(Next::Read(next)) = self.start_read() {
                        self.ahead = Some(next);
                    }
                    Ok(Some(chunk))
                }
            };
        }
    }

    /// The next piece, of at most `max` bytes. Readable bytes in the fill's window in memory
    /// are taken from there; others that the page cache holds (of a committed blob, or written
    /// by a fill that has moved on) are pointed at, not read, saving the copy out of the page
    /// cache; anything else comes as [`Self::next_chunk`] gives it, waiting for a fill if need be.
    pub async fn next_piece(&mut self, max: usize) -> Result<Option<Chunk>, Error> {
        if self.ahead.is_none() {
            let (to, _) = self.readable_to()?;
            if self.pos < to {
                if let Some(bytes) = self.recent.as_ref().and_then(|r| r.get(self.pos, to)) {
                    self.pos += bytes.len() as u64;
                    return Ok(Some(Chunk::Bytes(bytes)));
                }
                let len = (to - self.pos).min(max as u64) as usize;
                // A range the disk would have to read goes through the blocking pool instead,
                // so a cold blob never stalls an async worker.
                if in_page_cache(&self.file, self.pos, len) {
                    let offset = self.pos;
                    self.pos += len as u64;
                    return Ok(Some(Chunk::File(FileRange::new(
                        self.file.clone(),
                        offset,
                        len,
                    ))));
                }
            }
        }
        Ok(self.next_chunk().await?.map(Chunk::Bytes))
    }

    /// Waits until the fill publishes anything new. What it published is looked at by the next
    /// `readable_to`, never here.
    async fn progress_changed(&mut self) -> Result<(), Error> {
        let rx = self
            .progress
            .as_mut()
            .expect("only a fill makes a reader wait");
        if rx.changed().await.is_ok() {
            return Ok(());
        }
        // The writer is gone: its last word is final. A verdict is read by the next look; no
        // verdict means it stopped without one.
        match &rx.borrow().state {
            FillState::Failed(_) | FillState::Verified => Ok(()),
            _ => Err(Error::NoVerdict),
        }
    }
}

/// Whether the page cache holds `len` bytes at `pos`, judged by one byte in every 128 KiB and
/// the last one (the kernel reads ahead and reclaims a file's pages in runs). A miss costs a
/// blocking read on an async worker when the range is sent, so the probe errs on the side of
/// looking; a probe is a syscall of one byte.
fn in_page_cache(file: &File, pos: u64, len: usize) -> bool {
    const STRIDE: usize = 128 * 1024;
    let last = pos + len as u64 - 1;
    let mut byte = [0u8; 1];
    (pos..last)
        .step_by(STRIDE)
        .chain(std::iter::once(last))
        .all(|at| read_cached(file, &mut byte, at) == 1)
}

/// Copies what the page cache holds of `buf.len()` bytes at `pos`, without waiting for the disk
/// (`RWF_NOWAIT`); how many bytes it got. Zero where the kernel cannot tell.
fn read_cached(file: &File, buf: &mut [u8], pos: u64) -> usize {
    use rustix::io::{preadv2, ReadWriteFlags};
    let mut got = 0;
    while got < buf.len() {
        let mut slices = [io::IoSliceMut::new(&mut buf[got..])];
        match preadv2(file, &mut slices, pos + got as u64, ReadWriteFlags::NOWAIT) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}
