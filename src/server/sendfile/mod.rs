//! Zero-copy blob bodies on plain HTTP/1 connections: a cached blob's bytes go from the page
//! cache to the socket with `sendfile(2)`, never through wharf's memory.
//!
//! hyper has no sendfile path, so this sits beneath it. A body hands hyper a *placeholder* for a
//! file range: a slice of a static region that holds no data and that nothing else points into,
//! while the connection's [`FileRanges`] queue records which file range each placeholder stands
//! for. hyper queues body chunks as they are when the connection writes vectored (it never copies
//! them), so when it writes, [`SendfileSocket`] recognises a placeholder by its address and sends
//! the file range in its place. A placeholder that does not match the head of the queue, in
//! position or in length, cuts the connection: a client may get a short body, never wrong bytes.
//!
//! The assumption this rests on: hyper, writing vectored (`http1().writev(true)`, set in
//! `server::listen`), hands each body chunk to the socket as the very slice it was given and
//! never copies it into a buffer of its own. Should a hyper release ever copy, the placeholders'
//! zeros would reach this socket as ordinary bytes: the test
//! `cached_blobs_reach_the_socket_by_sendfile` (in the integration tests) sends a large cached
//! blob through the real server and fails unless its digest is right and the bytes were counted
//! as sent by `sendfile` (`wharf_file_range_bytes_total{how="sendfile"}`).
//!
//! Where a file's filesystem cannot splice, its range is read on the blocking pool and then
//! sent, so a slow disk never stalls the async worker that polls the socket.
//!
//! Knows sockets and files, not requests or the cache.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::body::FileRange;

/// The largest file range one placeholder stands for.
pub const MAX_RANGE: usize = 2 * 1024 * 1024;
/// Where consecutive placeholders start, apart: two in a row never look alike, so one that
/// hyper skipped could not pass for the next.
const STAGGER: usize = 4096;
/// The placeholders' region: room for any length at any staggered start. It is never written
/// or read, so it costs address space only (it lives in `.bss`).
static PLACEHOLDER: [u8; 2 * MAX_RANGE] = [0; 2 * MAX_RANGE];

fn placeholder_offset(slice: &[u8]) -> Option<usize> {
    let base = PLACEHOLDER.as_ptr() as usize;
    let at = (slice.as_ptr() as usize).wrapping_sub(base);
    (at < PLACEHOLDER.len() && !slice.is_empty()).then_some(at)
}

/// How much one read of the copying fallback takes.
const COPY_CHUNK: usize = 64 * 1024;

/// A file range waiting to be sent.
struct Pending {
    file: Arc<File>,
    offset: u64,
    len: usize,
    sent: usize,
    /// Where its placeholder starts in the region.
    start: usize,
    /// Set once `sendfile` refused the file: the rest goes by read and send...
    copy_only: bool,
    /// ...a piece at a time: the piece being read or sent.
    copying: Option<Copying>,
}

/// The copying fallback's next piece: being read on the blocking pool, or being sent.
enum Copying {
    Reading(JoinHandle<io::Result<Bytes>>),
    Sending { bytes: Bytes, sent: usize },
}

/// Bytes sent from files, by how: counted so that a test (and an operator) can see that the
/// zero-copy path is the one taken.
#[derive(Clone)]
pub struct FileRangeCounters {
    pub sendfile: IntCounter,
    pub copied: IntCounter,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    made: usize,
    /// Every range is copied, as if `sendfile` refused each file: the fallback, tested on
    /// any file.
    copy_only: bool,
}

/// The file ranges a connection's placeholders stand for, in the order hyper will write them.
#[derive(Clone, Default)]
pub struct FileRanges {
    queue: Arc<Mutex<Queue>>,
}

impl FileRanges {
    /// Ranges that are copied, never spliced (the fallback's path, for its tests).
    #[cfg(test)]
    fn copy_only() -> FileRanges {
        let ranges = FileRanges::default();
        ranges.queue.lock().unwrap().copy_only = true;
        ranges
    }

    /// A body chunk that stands for a file range (of at most [`MAX_RANGE`] bytes). The one
    /// place a [`FileRange`] is opened up.
    pub fn placeholder(&self, range: FileRange) -> Bytes {
        let (file, offset, len) = range.open_up();
        assert!(
            len <= MAX_RANGE,
            "a placeholder stands for at most MAX_RANGE bytes"
        );
        let mut queue = self.queue.lock().expect("lock poisoned");
        let start = queue.made % (MAX_RANGE / STAGGER) * STAGGER;
        queue.made += 1;
        let copy_only = queue.copy_only;
        queue.pending.push_back(Pending {
            file,
            offset,
            len,
            sent: 0,
            start,
            copy_only,
            copying: None,
        });
        Bytes::from_static(&PLACEHOLDER[start..start + len])
    }
}

/// A TCP connection that sends placeholders' file ranges with `sendfile`.
pub struct SendfileSocket {
    stream: TcpStream,
    ranges: FileRanges,
    counters: FileRangeCounters,
}

impl SendfileSocket {
    pub fn new(stream: TcpStream, counters: FileRangeCounters) -> (Self, FileRanges) {
        let ranges = FileRanges::default();
        let socket = SendfileSocket {
            stream,
            ranges: ranges.clone(),
            counters,
        };
        (socket, ranges)
    }

    /// Sends (part of) the file range a placeholder slice stands for; how many bytes went out.
    fn poll_send_range(
        &self,
        cx: &mut Context<'_>,
        slice: &[u8],
        at: usize,
    ) -> Poll<io::Result<usize>> {
        let mut queue = self.ranges.queue.lock().expect("lock poisoned");
        let Some(range) = queue.pending.front_mut() else {
            return Poll::Ready(Err(mismatch("a placeholder with no file range behind it")));
        };
        if at != range.start + range.sent || slice.len() != range.len - range.sent {
            return Poll::Ready(Err(mismatch(
                "a placeholder out of step with its file range",
            )));
        }
        loop {
            let sent = match &mut range.copying {
                None if range.copy_only => {
                    range.copying = Some(read_on_the_side(range));
                    continue;
                }
                None => {
                    ready!(self.stream.poll_write_ready(cx))?;
                    let offset = range.offset + range.sent as u64;
                    let sent = self.stream.try_io(Interest::WRITABLE, || {
                        let mut at = offset;
                        rustix::fs::sendfile(&self.stream, &*range.file, Some(&mut at), slice.len())
                            .map_err(io::Error::from)
                    });
                    match sent {
                        Err(e) if cannot_splice(&e) => {
                            range.copy_only = true;
                            continue;
                        }
                        Ok(n) => {
                            self.counters.sendfile.inc_by(n as u64);
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    }
                }
                Some(Copying::Reading(read)) => {
                    let bytes = ready!(Pin::new(read).poll(cx)).map_err(io::Error::other)??;
                    if bytes.is_empty() {
                        return Poll::Ready(Err(shorter_than_recorded()));
                    }
                    range.copying = Some(Copying::Sending { bytes, sent: 0 });
                    continue;
                }
                Some(Copying::Sending { bytes, sent }) => {
                    ready!(self.stream.poll_write_ready(cx))?;
                    let n = match self.stream.try_io(Interest::WRITABLE, || {
                        rustix::net::send(
                            &self.stream,
                            &bytes[*sent..],
                            rustix::net::SendFlags::NOSIGNAL,
                        )
                        .map_err(io::Error::from)
                    }) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(e)),
                    };
                    *sent += n;
                    if *sent == bytes.len() {
                        // The next piece is read once `range.sent` counts this one (below).
                        range.copying = None;
                    }
                    self.counters.copied.inc_by(n as u64);
                    n
                }
            };
            if sent == 0 {
                return Poll::Ready(Err(shorter_than_recorded()));
            }
            range.sent += sent;
            if range.sent == range.len {
                queue.pending.pop_front();
            } else if range.copy_only && range.copying.is_none() {
                range.copying = Some(read_on_the_side(range));
            }
            return Poll::Ready(Ok(sent));
        }
    }
}

/// Starts reading the next piece of `range` (from what it has sent) on the blocking pool.
fn read_on_the_side(range: &Pending) -> Copying {
    use std::os::unix::fs::FileExt;
    let offset = range.offset + range.sent as u64;
    let (file, len) = (range.file.clone(), (range.len - range.sent).min(COPY_CHUNK));
    Copying::Reading(tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; len];
        let n = file.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }))
}

/// `sendfile` refused the file itself (its filesystem cannot splice), not the socket.
fn cannot_splice(e: &io::Error) -> bool {
    use rustix::io::Errno;
    e.raw_os_error()
        .map(Errno::from_raw_os_error)
        .is_some_and(|errno| matches!(errno, Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP))
}

fn shorter_than_recorded() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "cache file is shorter than recorded",
    )
}

impl SendfileSocket {
    /// Writes ordinary bytes that a file range follows, telling the kernel more is coming.
    fn poll_send_more(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        use rustix::net::{sendmsg, SendAncillaryBuffer, SendFlags};
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                sendmsg(
                    &self.stream,
                    bufs,
                    &mut SendAncillaryBuffer::default(),
                    SendFlags::MORE | SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return Poll::Ready(sent),
            }
        }
    }
}

fn mismatch(what: &str) -> io::Error {
    io::Error::other(format!("zero-copy body: {what}"))
}

impl AsyncRead for SendfileSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Writes the ordinary slices up to the first placeholder in one `writev`, or, when a
    /// placeholder comes first, sends its file range.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let Some(first) = bufs.iter().position(|b| !b.is_empty()) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(at) = placeholder_offset(&bufs[first]) {
            return self.poll_send_range(cx, &bufs[first], at);
        }
        match bufs[first..]
            .iter()
            .position(|b| placeholder_offset(b).is_some())
        {
            // Headers followed by a file range: sent with MSG_MORE, so that they leave in the
            // same packets as the range's first bytes instead of costing a packet of their own.
            Some(n) => self.poll_send_more(cx, &bufs[first..first + n]),
            None => Pin::new(&mut self.stream).poll_write_vectored(cx, &bufs[first..]),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
