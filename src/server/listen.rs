//! The accept loops: HTTP/1.1 and h2c on one port (or HTTPS), an optional listener of the
//! operational endpoints, connection limits, and a bounded graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::Signal;
use tokio::sync::{watch, Semaphore};

use super::connection::Connection;
use super::reload::{keep_current, Reload};
use super::sendfile::{FileRangeCounters, SendfileSocket};
use super::state::{AppState, Surface};
use super::tls::Tls;
use crate::config::Limits;

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
    file_range_bytes: FileRangeCounters,
}

/// Serves until `shutdown` resolves, then lets open connections finish for up to the grace
/// period. With TLS, every connection to `listener` is HTTPS (HTTP/1.1 or HTTP/2 by ALPN), and
/// the certificate is reloaded while serving. `operations`, if given, is a listener for the
/// operational endpoints and the admin API, which `listener` then leaves out; it speaks HTTPS
/// with the same certificate when TLS is set (the admin API carries tokens).
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
    let file_range_bytes = FileRangeCounters {
        sendfile: state
            .metrics
            .file_range_bytes
            .with_label_values(&["sendfile"]),
        copied: state
            .metrics
            .file_range_bytes
            .with_label_values(&["read_and_send"]),
    };
    let accepting = Accepting {
        file_range_bytes,
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
    let admin = accepting.state.access.admin.clone();
    reloadable.extend(admin.map(|tokens| tokens as Arc<dyn Reload>));
    let reloads = tokio::spawn(keep_current(reloadable, hangups));
    let pull_surface = match operations {
        Some(_) => Surface::Pull,
        None => Surface::All,
    };
    let operations_tls = tls.clone();
    let operations = async {
        if let Some(listener) = operations {
            accept_loop(
                listener,
                Surface::Operations,
                operations_tls,
                accepting.clone(),
            )
            .await;
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
        file_range_bytes,
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
                let (socket, file_ranges) = SendfileSocket::new(stream, file_range_bytes.clone());
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
