//! One client connection, served until the client closes it, a limit ends it, or the server
//! shuts down. The limits guard against clients that hold a connection without using it:
//! one that never completes its first request is cut after `header_timeout` (hyper's own
//! timer covers later HTTP/1 requests, but not the protocol sniffing before the first one, nor
//! HTTP/2), and one on which no byte moves for `idle_timeout` is closed gracefully.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::sendfile::FileRanges;
use super::{serve_request, AppState};
use crate::config::Limits;

/// After an idle connection is asked to close, how long it may take to do so before it is
/// dropped (a response stalled on a client that stopped reading would never finish).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// One accepted connection, ready to be served once its transport is ready.
pub struct Connection {
    pub builder: auto::Builder<TokioExecutor>,
    /// Becomes `true` (or closes) when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    pub state: AppState,
    pub peer: SocketAddr,
    pub limits: Limits,
    /// Its place under `max_connections`, given back when the connection ends.
    pub permit: OwnedSemaphorePermit,
}

impl Connection {
    /// Serves requests until the client, a limit or a graceful shutdown closes the connection.
    /// `file_ranges` is set on plain TCP, where bodies may be sent by `sendfile`.
    pub async fn run<I>(self, io: I, file_ranges: Option<FileRanges>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            mut shutdown,
            state,
            peer,
            limits,
            permit: _permit,
        } = self;
        let activity = Activity::new();
        let first_request = Arc::new(AtomicBool::new(false));
        let service = {
            let first_request = first_request.clone();
            service_fn(move |request| {
                first_request.store(true, Ordering::Relaxed);
                let (state, file_ranges) = (state.clone(), file_ranges.clone());
                async move { Ok::<_, Infallible>(serve_request(state, request, file_ranges).await) }
            })
        };
        let io = Watched {
            inner: io,
            activity: activity.clone(),
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let check = tokio::time::sleep(limits.header_timeout.min(limits.idle_timeout));
        tokio::pin!(check);
        // When the connection was asked to close for idling.
        let mut closing: Option<Instant> = None;
        // Once the server shuts down, its grace period bounds every connection instead.
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.changed(), if !shutting_down => {
                    shutting_down = true;
                    if closing.is_none() {
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = check.as_mut(), if !shutting_down => {
                    let started = first_request.load(Ordering::Relaxed);
                    if !started && activity.age() >= limits.header_timeout {
                        tracing::debug!(%peer, "no request within header_timeout; closing");
                        return;
                    }
                    // Asked to close, it may stay quiet for CLOSE_GRACE only.
                    let (quiet, limit) = match closing {
                        None => (activity.quiet(), limits.idle_timeout),
                        Some(at) => (activity.quiet().min(at.elapsed()), CLOSE_GRACE),
                    };
                    if quiet >= limit {
                        if closing.is_some() {
                            return;
                        }
                        tracing::debug!(%peer, "idle for idle_timeout; closing");
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                        check.as_mut().reset(Instant::now() + CLOSE_GRACE);
                        continue;
                    }
                    let mut next = limit - quiet;
                    if !started {
                        next = next.min(limits.header_timeout.saturating_sub(activity.age()));
                    }
                    check.as_mut().reset(Instant::now() + next);
                }
            }
        }
    }
}

/// When bytes last moved on a connection, in milliseconds since it began.
#[derive(Clone)]
struct Activity {
    began: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            began: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn moved(&self) {
        let ms = self.began.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the connection began.
    fn age(&self) -> Duration {
        self.began.elapsed()
    }

    /// How long since bytes last moved.
    fn quiet(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.began.elapsed().saturating_sub(last)
    }
}

/// A transport that notes each time bytes move. Writes pass through untouched (vectored ones
/// too), as the zero-copy placeholders must reach the socket as hyper wrote them.
struct Watched<I> {
    inner: I,
    activity: Activity,
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
