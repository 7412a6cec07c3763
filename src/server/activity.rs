//! What the idle watchdog of a connection sees: bytes moving on its transport, and whether
//! wharf itself is working for it (a request being handled, a response body waiting for bytes
//! wharf does not have yet). A connection waiting on wharf is not idle; one whose client sends
//! nothing, or does not read what it is sent, is.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::response::{Body, BodyError};

/// A count of the times bytes moved on a connection, bumped on every read and write (one
/// relaxed store, not a clock read; an [`IdleClock`] turns it into time), and how many things
/// wharf is doing for it.
#[derive(Clone, Default)]
pub struct Activity {
    moves: Arc<AtomicU64>,
    working: Arc<AtomicUsize>,
}

impl Activity {
    pub fn moved(&self) {
        // Only the connection's own task writes it.
        let moves = self.moves.load(Ordering::Relaxed);
        self.moves.store(moves.wrapping_add(1), Ordering::Relaxed);
    }

    /// Wharf works for the connection until the returned guard is dropped.
    pub fn working(&self) -> Working {
        self.working.fetch_add(1, Ordering::Relaxed);
        Working(self.working.clone())
    }

    /// `body`, noted as wharf's work whenever it has no bytes ready (not when it has some and
    /// the client is not taking them).
    pub fn watch_body(&self, body: Body) -> Body {
        http_body_util::BodyExt::boxed_unsync(WatchedBody {
            inner: body,
            activity: self.clone(),
            waiting: None,
        })
    }
}

/// Wharf's work for a connection, counted while it lasts.
pub struct Working(Arc<AtomicUsize>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that counts as wharf's work while its next frame is not ready.
struct WatchedBody {
    inner: Body,
    activity: Activity,
    waiting: Option<Working>,
}

impl HttpBody for WatchedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_pending() {
            if self.waiting.is_none() {
                self.waiting = Some(self.activity.working());
            }
        } else {
            self.waiting = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a connection has been quiet, as seen at each check: the count of moves is compared
/// with the last check's, so quiet time is measured from the first check that saw no change.
/// While wharf works for the connection, it is not quiet.
pub struct IdleClock {
    activity: Activity,
    seen: u64,
    since: Instant,
}

impl IdleClock {
    pub fn new(activity: Activity, now: Instant) -> IdleClock {
        IdleClock {
            activity,
            seen: 0,
            since: now,
        }
    }

    pub fn quiet_for(&mut self, now: Instant) -> Duration {
        let moves = self.activity.moves.load(Ordering::Relaxed);
        let working = self.activity.working.load(Ordering::Relaxed) > 0;
        if moves != self.seen || working {
            self.seen = moves;
            self.since = now;
        }
        now - self.since
    }
}

/// A transport that notes each time bytes move. Writes pass through untouched (vectored ones
/// too), as the zero-copy placeholders must reach the socket as hyper wrote them.
pub struct Watched<I> {
    pub inner: I,
    pub activity: Activity,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.moved();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.moved();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
