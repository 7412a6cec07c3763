//! wharf: a pull-through caching mirror for container registries.
//!
//! Dependencies point one way: `server → mirror → {cache, upstream} → oci`.
//! - [`server`]: HTTP accept loop, pure routing, handlers, the one error → response mapping.
//! - [`mirror`]: the pull-through use case; the only module that uses both cache and upstream.
//! - [`cache`]: blobs and manifests on disk by digest, single-flight fills, the tag table.
//! - [`upstream`]: the registry client (auth, tokens, timeouts).
//! - [`oci`]: the spec's vocabulary, pure values.
//! - [`config`], [`metrics`], [`telemetry`], [`error`]: leaves used by the above.
//! - [`warm`]: `wharf warm`, a client of the pull API that fills a cache ahead of need.
pub mod cache;
pub mod config;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod warm;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::Error;

/// Runs wharf on `listener` until `shutdown` resolves. SIGHUP reloads the TLS certificate (and
/// is otherwise logged): its handler is installed first, so a reload sent while a large cache is
/// being opened cannot end the process.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    use tokio::signal::unix::{signal, SignalKind};
    let hangups = signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler"))
        .ok();
    run_with(listener, config, shutdown, hangups).await
}

/// [`run`] without taking over SIGHUP, for a wharf embedded in a command (`wharf warm`) where a
/// hang-up must still end the process.
pub async fn run_embedded(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    run_with(listener, config, shutdown, None).await
}

async fn run_with(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    hangups: Option<tokio::signal::unix::Signal>,
) -> Result<(), Error> {
    // Before anything else: a bad certificate or credentials file must stop start-up, not the
    // first request.
    let tls = config
        .server
        .tls
        .as_ref()
        .map(server::Tls::load)
        .transpose()
        .map_err(Error::Internal)?;
    let authenticator = config
        .server
        .auth
        .as_ref()
        .map(server::auth::Authenticator::load)
        .transpose()
        .map_err(Error::Internal)?;
    let metrics = metrics::Metrics::new();
    let (store, tags) = open_cache(&config.cache, &metrics).await?;
    let upstreams =
        upstream::Upstreams::new(&config.upstreams, &metrics).map_err(Error::Internal)?;
    let sweeper = tokio::spawn(sweep_idle(
        store.clone(),
        tags.clone(),
        config.cache.max_idle,
    ));
    let mirror = mirror::Mirror::new(
        upstreams,
        store,
        tags,
        config.cache.clone(),
        metrics.clone(),
    );
    let state = server::AppState {
        mirror,
        metrics,
        access: Arc::new(server::Access::new(
            config.server.allow_from.clone(),
            &config.server.rate_limit,
            authenticator,
        )),
    };
    let operations = match config.server.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                Error::Internal(format!(
                    "cannot listen on {addr} (server.metrics_listen): {e}"
                ))
            })?;
            tracing::info!(listen = %listener.local_addr()?, "operational endpoints are served apart");
            Some(listener)
        }
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        https = tls.is_some(),
        auth = config.server.auth.is_some(),
        cache = %config.cache.dir.display(),
        upstreams = ?config.upstreams.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        "wharf is serving"
    );
    let listening = server::Listening {
        tls,
        limits: config.server.limits.clone(),
        grace: config.server.shutdown_grace,
    };
    server::serve(listener, operations, state, shutdown, listening, hangups).await;
    sweeper.abort();
    Ok(())
}

/// Opens the cache directory: the index is rebuilt from file metadata (a blocking walk).
async fn open_cache(
    config: &config::CacheConfig,
    metrics: &metrics::Metrics,
) -> Result<(Arc<cache::Store>, Arc<cache::TagTable>), Error> {
    let (dir, max_size, metrics) = (config.dir.clone(), config.max_size.bytes(), metrics.clone());
    let started = std::time::Instant::now();
    let opened = tokio::task::spawn_blocking(move || {
        let store = cache::Store::open(&dir, max_size, metrics)?;
        let tags = cache::TagTable::open(&dir)?;
        Ok::<_, std::io::Error>((store, tags))
    })
    .await
    .map_err(|e| Error::Internal(e.to_string()))?
    .map_err(|e| {
        Error::Internal(format!(
            "cannot open cache directory {}: {e}",
            config.dir.display()
        ))
    })?;
    let usage = opened.0.usage();
    tracing::info!(
        entries = usage.entries,
        bytes = usage.bytes,
        elapsed = ?started.elapsed(),
        "cache index rebuilt"
    );
    Ok((Arc::new(opened.0), Arc::new(opened.1)))
}

/// Evicts entries unused for `max_idle`, checking a few times per `max_idle` (and at least every
/// ten minutes) so nothing outlives it by much.
async fn sweep_idle(store: Arc<cache::Store>, tags: Arc<cache::TagTable>, max_idle: Duration) {
    let every = (max_idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(600));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let (store, tags) = (store.clone(), tags.clone());
        let _ = tokio::task::spawn_blocking(move || {
            store.evict_idle(max_idle);
            tags.remove_idle(max_idle);
        })
        .await;
    }
}
