//! HTTP: the accept loop (HTTP/1.1 and h2c on one port, bounded graceful shutdown), routing,
//! handlers, and the one error → response mapping.

pub mod auth;
mod connection;
mod handlers;
pub mod range;
mod rate;
mod reload;
mod response;
pub mod route;
mod sendfile;
mod tls;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::{watch, Semaphore};

use crate::config::Limits;
use crate::error::ClientError;
use crate::metrics::Metrics;
use crate::mirror::Mirror;
use connection::Connection;
use reload::{keep_current, Reload};
pub use response::Body;
use sendfile::{FileRanges, SendfileSocket};
pub use tls::Tls;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub metrics: Metrics,
    pub access: Arc<Access>,
}

/// Who may use the pull API: by source address, how often, and by credentials.
pub struct Access {
    /// `None`: every address.
    allow_from: Option<Vec<ipnet::IpNet>>,
    /// `None`: no limit.
    rate: Option<rate::RateLimiter>,
    /// `None`: no credentials needed.
    authenticator: Option<Arc<auth::Authenticator>>,
}

impl Access {
    pub fn new(
        allow_from: Option<Vec<ipnet::IpNet>>,
        rate: &crate::config::RateLimit,
        authenticator: Option<auth::Authenticator>,
    ) -> Access {
        Access {
            allow_from,
            rate: rate::RateLimiter::new(rate),
            authenticator: authenticator.map(Arc::new),
        }
    }

    /// Whether `client` may have `route`, and as whom (`None` without authentication). Health
    /// checks answer everyone, so probes work from wherever they come; the operational listener
    /// is bound to an internal address by the operator and not filtered either. The address
    /// and the rate are checked before credentials, so that a refused or flooding client costs
    /// no password hashing.
    async fn admits(
        &self,
        client: Client,
        route: &route::Route,
        authorization: Option<&[u8]>,
    ) -> Result<Option<Arc<str>>, ClientError> {
        if client.surface == Surface::Operations
            || matches!(route, route::Route::Health | route::Route::Ready)
        {
            return Ok(None);
        }
        // A v4 client of a dual-stack socket shows as ::ffff:a.b.c.d.
        let ip: IpAddr = client.peer.ip().to_canonical();
        let listed = self
            .allow_from
            .as_ref()
            .map_or(true, |nets| nets.iter().any(|net| net.contains(&ip)));
        if !listed {
            return Err(ClientError::AddressNotAllowed);
        }
        if let Some(limiter) = &self.rate {
            limiter
                .take(ip)
                .map_err(|wait| ClientError::TooManyRequests {
                    retry_after_secs: wait.as_secs() + 1,
                })?;
        }
        match &self.authenticator {
            Some(authenticator) => authenticator
                .authenticate(authorization)
                .await
                .map(Some)
                .map_err(|e| match e {
                    auth::AuthError::Refused => ClientError::Unauthenticated,
                    auth::AuthError::Busy => ClientError::TooManyRequests {
                        retry_after_secs: 1,
                    },
                }),
            None => Ok(None),
        }
    }
}

/// Who sent a request, and to which listener.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub peer: SocketAddr,
    pub surface: Surface,
}

/// Answers one request: route, handle, map any error, count and log it once. `file_ranges` is
/// the connection's zero-copy queue, if it has one; only HTTP/1 bodies may use it (HTTP/2 frames
/// its data).
async fn serve_request(
    state: AppState,
    request: Request<Incoming>,
    client: Client,
    file_ranges: Option<FileRanges>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut user = None;
    let route = match route::parse(&method, &path, request.uri().query(), |name| {
        state.mirror.is_registry(name)
    }) {
        Ok(route) if !client.surface.serves(&route) => Err(ClientError::NotFound),
        Ok(route) => {
            let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
            state
                .access
                .admits(client, &route, authorization)
                .await
                .map(|who| {
                    user = who;
                    route
                })
        }
        Err(e) => Err(e),
    };
    let label = route.as_ref().map_or("other", route::Route::label);
    let head = method == http::Method::HEAD;
    let zero_copy = file_ranges.filter(|_| request.version() <= http::Version::HTTP_11);
    let response = match route {
        Ok(route) => handlers::handle(&state, &method, request.headers(), route, zero_copy).await,
        Err(e) => Err(e.into()),
    }
    .unwrap_or_else(|e| response::error_response(&e, head));
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .with_label_values(&[label, status.as_str()])
        .inc();
    state
        .metrics
        .http_request_duration
        .with_label_values(&[label])
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "wharf::access",
        %method, path, status = status.as_u16(), route = label, user = user.as_deref(),
        us = elapsed.as_micros() as u64,
    );
    response
}

/// A TLS handshake that takes longer than this is dropped: a client that connects and stays
/// silent must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the server listens: the transport and what clients may hold of it.
pub struct Listening {
    pub tls: Option<Tls>,
    pub limits: Limits,
    /// After shutdown, how long open connections may finish.
    pub grace: Duration,
}

/// The HTTP/1.1 and HTTP/2 settings every connection is served with.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's read buffer holds the request head, so its size bounds the head (8 KiB at least).
    let max_head = usize::try_from(limits.max_header_bytes.bytes())
        .unwrap_or(usize::MAX)
        .max(8192);
    builder
        .http1()
        // Body chunks must reach the socket as they are, never copied into hyper's buffer:
        // the zero-copy placeholders depend on it.
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.bytes()).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_streams);
    builder
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The pull API and the operational endpoints.
    All,
    /// The pull API and health checks: `/metrics` has a listener of its own.
    Pull,
    /// `/metrics`, `/healthz` and `/readyz` only.
    Operations,
}

impl Surface {
    fn serves(self, route: &route::Route) -> bool {
        use route::Route;
        match self {
            Surface::All => true,
            Surface::Pull => !matches!(route, Route::Metrics),
            Surface::Operations => matches!(route, Route::Metrics | Route::Health | Route::Ready),
        }
    }
}

/// What every accept loop shares.
#[derive(Clone)]
struct Accepting {
    builder: auto::Builder<TokioExecutor>,
    state: AppState,
    limits: Limits,
    /// Places under `max_connections`, shared by every listener.
    slots: Arc<Semaphore>,
    /// Handed to each connection: becomes `true` when the server shuts down.
    closing: watch::Receiver<bool>,
    /// Becomes `true` when the listeners should stop accepting.
    stop: watch::Receiver<bool>,
}

/// Serves until `shutdown` resolves, then lets open connections finish for up to the grace
/// period. With TLS, every connection to `listener` is HTTPS (HTTP/1.1 or HTTP/2 by ALPN), and
/// the certificate is reloaded while serving. `operations`, if given, is a plain-HTTP listener
/// for the operational endpoints, which `listener` then leaves out.
pub async fn serve(
    listener: TcpListener,
    operations: Option<TcpListener>,
    state: AppState,
    shutdown: impl Future<Output = ()>,
    listening: Listening,
    hangups: Option<Signal>,
) {
    let Listening { tls, limits, grace } = listening;
    // Every connection holds a receiver: `true` asks it to close, and the sender learns when
    // the last one is gone.
    let (closing, closing_seen) = watch::channel(false);
    let (stop, stopped) = watch::channel(false);
    let accepting = Accepting {
        builder: http_builder(&limits),
        state,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        limits,
        closing: closing_seen,
        stop: stopped,
    };
    let tls = tls.map(Arc::new);
    let mut reloadable: Vec<Arc<dyn Reload>> = Vec::new();
    reloadable.extend(tls.clone().map(|tls| tls as Arc<dyn Reload>));
    let authenticator = accepting.state.access.authenticator.clone();
    reloadable.extend(authenticator.map(|auth| auth as Arc<dyn Reload>));
    let reloads = tokio::spawn(keep_current(reloadable, hangups));
    let pull_surface = match operations {
        Some(_) => Surface::Pull,
        None => Surface::All,
    };
    let operations = async {
        if let Some(listener) = operations {
            accept_loop(listener, Surface::Operations, None, accepting.clone()).await;
        }
    };
    tokio::join!(
        accept_loop(listener, pull_surface, tls, accepting.clone()),
        operations,
        async {
            shutdown.await;
            let _ = stop.send(true);
        },
    );
    drop(accepting);
    reloads.abort();
    tracing::info!("shutting down: waiting for open connections");
    let _ = closing.send(true);
    tokio::select! {
        () = closing.closed() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the rest"),
    }
}

/// Accepts connections on `listener` and serves each in a task of its own, until told to stop.
async fn accept_loop(
    listener: TcpListener,
    surface: Surface,
    tls: Option<Arc<Tls>>,
    accepting: Accepting,
) {
    let Accepting {
        builder,
        state,
        limits,
        slots,
        closing,
        mut stop,
    } = accepting;
    loop {
        // At the cap, stop accepting: new connections wait in the kernel's queue.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            shutdown: closing.clone(),
            state: state.clone(),
            peer,
            surface,
            limits: limits.clone(),
            permit,
        };
        match &tls {
            None => {
                let (socket, file_ranges) = SendfileSocket::new(stream);
                tokio::spawn(connection.run(socket, Some(file_ranges)));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection.run(stream, None).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}
