//! HTTP: the accept loop (HTTP/1.1 and h2c on one port, bounded graceful shutdown), routing,
//! handlers, and the one error → response mapping.

mod handlers;
mod range;
mod response;
pub mod route;
mod sendfile;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::mirror::Mirror;
pub use response::Body;
use sendfile::{FileRanges, SendfileSocket};

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub mirror: Arc<Mirror>,
    pub metrics: Metrics,
}

/// Answers one request: route, handle, map any error, count and log it once. `file_ranges` is
/// the connection's zero-copy queue; only HTTP/1 bodies may use it (HTTP/2 frames its data).
async fn serve_request(
    state: AppState,
    request: Request<Incoming>,
    file_ranges: FileRanges,
) -> Response<Body> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = route::parse(&method, &path, request.uri().query(), |name| {
        state.mirror.is_registry(name)
    });
    let label = route.as_ref().map_or("other", route::Route::label);
    let head = method == http::Method::HEAD;
    let zero_copy = (request.version() <= http::Version::HTTP_11).then_some(file_ranges);
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

/// Serves until `shutdown` resolves, then lets open connections finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Body chunks must reach the socket as they are, never copied into hyper's buffer: the
    // zero-copy placeholders depend on it.
    builder.http1().writev(true);
    let graceful = GracefulShutdown::new();
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
        let (socket, file_ranges) = SendfileSocket::new(stream);
        let state = state.clone();
        let service = service_fn(move |request| {
            let (state, file_ranges) = (state.clone(), file_ranges.clone());
            async move { Ok::<_, Infallible>(serve_request(state, request, file_ranges).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(socket), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: waiting for open connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing the rest"),
    }
}
