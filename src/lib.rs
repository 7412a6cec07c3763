//! wharf: a pull-through caching mirror for container registries.
//!
//! Dependencies point one way: `server → mirror → {cache, upstream} → oci`.
//! - [`server`]: HTTP accept loop, pure routing, handlers, the one error → response mapping.
//! - [`mirror`]: the pull-through use case; the only module that uses both cache and upstream.
//! - [`cache`]: blobs and manifests on disk by digest, single-flight fills, the tag table.
//! - [`upstream`]: the registry client (auth, tokens, timeouts).
//! - [`oci`]: the spec's vocabulary, pure values.
//! - [`config`], [`metrics`], [`telemetry`], [`error`]: leaves used by the above.
pub mod cache;
pub mod config;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod server;
pub mod telemetry;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;

/// Runs wharf on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = metrics::Metrics::new();
    let dir = config.cache.dir.clone();
    let store = tokio::task::spawn_blocking(move || cache::Store::open(&dir))
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
        .map_err(|e| {
            Error::Internal(format!(
                "cannot open cache directory {}: {e}",
                config.cache.dir.display()
            ))
        })?;
    let upstreams =
        upstream::Upstreams::new(&config.upstreams, &metrics).map_err(Error::Internal)?;
    let mirror = mirror::Mirror::new(
        upstreams,
        Arc::new(store),
        config.cache.clone(),
        metrics.clone(),
    );
    let state = server::AppState { mirror, metrics };
    tracing::info!(
        listen = %listener.local_addr()?,
        cache = %config.cache.dir.display(),
        upstreams = ?config.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        "wharf is serving"
    );
    server::serve(listener, state, shutdown, config.server.shutdown_grace).await;
    Ok(())
}
