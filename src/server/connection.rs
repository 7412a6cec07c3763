//! One client connection, served until the client closes it, a limit ends it, or the server
//! shuts down. The limits guard against clients that hold a connection without using it:
//! one that never completes its first request is cut after `header_timeout` (hyper's own
//! timer covers later HTTP/1 requests, but not the protocol sniffing before the first one, nor
//! HTTP/2), and one on which no byte moves for `idle_timeout` while wharf is not working for
//! it is closed gracefully.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::activity::{Activity, IdleClock, Watched};
use super::request::serve_request;
use super::sendfile::FileRanges;
use super::state::{AppState, Client, Surface};
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
    pub surface: Surface,
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
            surface,
            limits,
            permit: _permit,
        } = self;
        let client = Client { peer, surface };
        let began = Instant::now();
        let activity = Activity::default();
        let first_request = Arc::new(AtomicBool::new(false));
        let service = {
            let (first_request, activity) = (first_request.clone(), activity.clone());
            service_fn(move |request| {
                first_request.store(true, Ordering::Relaxed);
                let (state, file_ranges) = (state.clone(), file_ranges.clone());
                let activity = activity.clone();
                async move {
                    // Waiting on wharf (an upstream place, a fill) is not idling.
                    let working = activity.working();
                    let response = serve_request(state, request, client, file_ranges).await;
                    drop(working);
                    Ok::<_, Infallible>(response.map(|body| activity.watch_body(body)))
                }
            })
        };
        let io = Watched {
            inner: io,
            activity: activity.clone(),
        };
        let connection = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut watchdog = Watchdog::new(&limits, began, first_request, activity);
        let check = tokio::time::sleep_until(watchdog.first_check());
        tokio::pin!(check);
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
                    if !watchdog.closing() {
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = check.as_mut(), if !shutting_down => {
                    match watchdog.check(Instant::now()) {
                        Verdict::Drop(why) => {
                            tracing::debug!(%peer, "{why}; closing");
                            return;
                        }
                        Verdict::AskToClose { next } => {
                            tracing::debug!(%peer, "idle for idle_timeout; closing");
                            connection.as_mut().graceful_shutdown();
                            check.as_mut().reset(next);
                        }
                        Verdict::Wait { next } => check.as_mut().reset(next),
                    }
                }
            }
        }
    }
}

/// What a check of a connection's limits decided.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Within its limits: check again at `next`.
    Wait { next: Instant },
    /// Idle too long: ask it to close gracefully, and check again at `next`.
    AskToClose { next: Instant },
    /// Drop it now.
    Drop(&'static str),
}

/// The limits one connection is held to: a first request within `header_timeout`, no byte
/// moving for `idle_timeout` at most, and once asked to close, `CLOSE_GRACE` to do so.
struct Watchdog {
    began: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    /// Checked a few times per idle period, so an idle connection closes between one and one
    /// and a quarter idle periods after its last byte.
    every: Duration,
    first_request: Arc<AtomicBool>,
    idle: IdleClock,
    /// When the connection was asked to close for idling.
    closing: Option<Instant>,
}

impl Watchdog {
    fn new(
        limits: &Limits,
        began: Instant,
        first_request: Arc<AtomicBool>,
        activity: Activity,
    ) -> Watchdog {
        Watchdog {
            began,
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout,
            every: (limits.idle_timeout / 4).max(Duration::from_millis(10)),
            first_request,
            idle: IdleClock::new(activity, began),
            closing: None,
        }
    }

    fn first_check(&self) -> Instant {
        self.began + self.every.min(self.header_timeout)
    }

    fn closing(&self) -> bool {
        self.closing.is_some()
    }

    fn check(&mut self, now: Instant) -> Verdict {
        let header_deadline = (!self.first_request.load(Ordering::Relaxed))
            .then_some(self.began + self.header_timeout);
        if header_deadline.is_some_and(|deadline| now >= deadline) {
            return Verdict::Drop("no request within header_timeout");
        }
        let quiet = self.idle.quiet_for(now);
        let asked_now = match self.closing {
            // Asked to close, it may stay quiet for CLOSE_GRACE only.
            Some(at) if quiet.min(now - at) >= CLOSE_GRACE => {
                return Verdict::Drop("still open after being asked to close")
            }
            Some(_) => false,
            None if quiet >= self.idle_timeout => {
                self.closing = Some(now);
                true
            }
            None => false,
        };
        let next = [header_deadline, self.closing.map(|at| at + CLOSE_GRACE)]
            .into_iter()
            .flatten()
            .fold(now + self.every, Instant::min);
        if asked_now {
            Verdict::AskToClose { next }
        } else {
            Verdict::Wait { next }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> Limits {
        Limits {
            header_timeout: Duration::from_millis(header_ms),
            idle_timeout: Duration::from_millis(idle_ms),
            ..Limits::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_connection_without_a_request_is_dropped_at_the_header_timeout() {
        let began = Instant::now();
        let mut dog = Watchdog::new(
            &limits(1000, 60_000),
            began,
            Arc::default(),
            Activity::default(),
        );
        assert!(
            matches!(dog.check(began + ms(999)), Verdict::Wait { next } if next <= began + ms(1000))
        );
        assert!(matches!(dog.check(began + ms(1000)), Verdict::Drop(_)));
    }

    #[test]
    fn an_idle_connection_is_asked_to_close_then_dropped_after_the_grace() {
        let began = Instant::now();
        let activity = Activity::default();
        let first = Arc::new(AtomicBool::new(true));
        let mut dog = Watchdog::new(&limits(1000, 400), began, first, activity.clone());
        assert!(matches!(dog.check(began + ms(100)), Verdict::Wait { .. }));
        activity.moved();
        // Bytes moved: quiet time starts again from this check.
        assert!(matches!(dog.check(began + ms(300)), Verdict::Wait { .. }));
        assert!(matches!(dog.check(began + ms(600)), Verdict::Wait { .. }));
        let at = began + ms(700);
        assert_eq!(dog.check(at), Verdict::AskToClose { next: at + ms(100) });
        assert!(dog.closing());
        assert!(matches!(
            dog.check(at + CLOSE_GRACE - ms(1)),
            Verdict::Wait { .. }
        ));
        assert!(matches!(dog.check(at + CLOSE_GRACE), Verdict::Drop(_)));
    }

    #[test]
    fn a_connection_wharf_works_for_is_not_idle() {
        let began = Instant::now();
        let activity = Activity::default();
        let first = Arc::new(AtomicBool::new(true));
        let mut dog = Watchdog::new(&limits(1000, 400), began, first, activity.clone());
        let working = activity.working();
        for later in [300, 600, 900, 10_000] {
            assert!(matches!(dog.check(began + ms(later)), Verdict::Wait { .. }));
        }
        // Done: quiet from the first check after.
        drop(working);
        assert!(matches!(
            dog.check(began + ms(10_100)),
            Verdict::Wait { .. }
        ));
        assert!(matches!(
            dog.check(began + ms(10_500)),
            Verdict::AskToClose { .. }
        ));
    }
}
