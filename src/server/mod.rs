//! HTTP: the accept loop (HTTP/1.1 and h2c on one port, bounded graceful shutdown), routing,
//! handlers, and the one error → response mapping.

mod handlers;
mod range;
mod response;
pub mod route;
mod sendfile;
mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;

use crate::metrics::Metrics;
use crate::mirror::Mirror;
pub use response::Body;
use sendfile::{FileRanges, SendfileSocket};
pub use tls::Tls;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub metrics: Metrics,
}

/// Answers one request: route, handle, map any error, count and log it once. `file_ranges` is
/// the connection's zero-copy queue, if it has one; only HTTP/1 bodies may use it (HTTP/2 frames
/// its data).
async fn serve_request(
    state: AppState,
    request: Request<Incoming>,
    file_ranges: Option<FileRanges>,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = route::parse(&method, &path, request.uri().query(), |name| {
        state.mirror.is_registry(name)
    });
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
        %method, path, status = status.as_u16(), route = label,
        us = elapsed.as_micros() as u64,
    );
    response
}

/// A TLS handshake that takes longer than this is dropped: a client that connects and stays
/// silent must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves until `shutdown` resolves, then lets open connections finish for up to `grace`. With
/// `tls`, every connection is HTTPS (HTTP/1.1 or HTTP/2 by ALPN), and the certificate is
/// reloaded while serving.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    tls: Option<Tls>,
    hangups: Option<Signal>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Body chunks must reach the socket as they are, never copied into hyper's buffer: the
    // zero-copy placeholders depend on it.
    builder.http1().writev(true);
    let graceful = GracefulShutdown::new();
    let tls = tls.map(Arc::new);
    // SIGHUP reloads the certificate; without one it is only logged (`systemctl reload` may
    // send it to any wharf).
    let reloads = match tls.clone() {
        Some(tls) => tokio::spawn(tls.watch(hangups)),
        None => tokio::spawn(nothing_to_reload(hangups)),
    };
    tokio::pin!(shutdown);
    loop {
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
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: builder.clone(),
            watcher: graceful.watcher(),
            state: state.clone(),
            peer,
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
    drop(listener);
    reloads.abort();
    tracing::info!("shutting down: waiting for open connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the rest"),
    }
}

/// Answers SIGHUP when there is no certificate to reload.
async fn nothing_to_reload(hangups: Option<Signal>) {
    let Some(mut hangups) = hangups else {
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: nothing to reload (no [server.tls])");
    }
}

/// One accepted connection, ready to be served once its transport is ready.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    state: AppState,
    peer: SocketAddr,
}

impl Connection {
    /// Serves requests until the client or a graceful shutdown closes the connection.
    /// `file_ranges` is set on plain TCP, where bodies may be sent by `sendfile`.
    async fn run<I>(self, io: I, file_ranges: Option<FileRanges>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let state = self.state;
        let service = service_fn(move |request| {
            let (state, file_ranges) = (state.clone(), file_ranges.clone());
            async move { Ok::<_, Infallible>(serve_request(state, request, file_ranges).await) }
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(connection.into_owned()).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}
