//! wharf: a pull-through caching mirror for container registries.
//!
//! Dependencies point one way: `server → mirror → {cache, upstream} → oci`, with `body`,
//! `config` and `metrics` as leaves, and `error`, which lifts the cache's and the upstream's
//! errors, just above them (`.ci/layers.py` checks it).
//! - [`server`]: the accept loops, pure routing, handlers, the one error → response mapping.
//! - [`mirror`]: the pull-through use case; the only module that uses both cache and upstream.
//! - [`cache`]: blobs and manifests on disk by digest, single-flight fills, the tag table,
//!   behind one front door, [`cache::Cache`].
//! - [`upstream`]: the registry client (auth, tokens, timeouts, limits).
//! - [`cluster`]: the other nodes of a datacenter, and which of them owns each digest.
//! - [`oci`]: the spec's vocabulary, pure values.
//! - [`body`]: a piece of a blob response (bytes, or a range of a cached file).
//! - [`config`], [`metrics`], [`telemetry`]: leaves used by the above.
//! - [`error`]: the crate's error, which the cache's and the upstream's errors lift into.
//! - [`warm`]: `wharf warm`, a client of the pull API that fills a cache ahead of need.
//!
//! A blob GET, from accept to bytes on the socket:
//! 1. [`server::serve`] accepts; a plain-HTTP socket is wrapped so that it can `sendfile`.
//! 2. The request is routed ([`server::route::parse`], a pure function), its client admitted
//!    (address, rate, credentials), and handed to the blob handler.
//! 3. The handler asks [`mirror::Mirror::blob`] by registry, repository and digest.
//! 4. The mirror picks the upstream and asks [`cache::Cache::blob`]: committed on disk, a fill
//!    already running to join, or a new fill that the mirror feeds from
//!    [`upstream::Upstream::blob`]. The fill's writer hashes what it writes and commits
//!    the blob only once its digest and length match.
//! 5. Each client reads through its own [`cache::BlobReader`] at its own pace: the committed
//!    file, or the fill's temp file up to what is written (its newest bytes from memory).
//! 6. The reader yields [`body::Chunk`]s; a cached range the page cache holds goes to the
//!    socket by `sendfile(2)` without passing through wharf's memory.
//! 7. A failure anywhere is a typed error of its layer, lifted into [`Error`] and turned into a
//!    status and an OCI error body in one place; a body cut mid-way cuts the connection.
pub mod body;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod keep_warm;
pub mod metrics;
pub mod mirror;
pub mod oci;
pub mod policy;
pub mod secret;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod warm;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use clock::Clock;
pub use config::Config;
pub use error::Error;

/// Why wharf could not start serving: a bad certificate, credentials file, cache directory or
/// upstream, or an address it cannot listen on.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] server::TlsError),
    #[error(transparent)]
    Auth(#[from] server::auth::LoadError),
    #[error(transparent)]
    Cluster(#[from] cluster::SetupError),
    #[error(transparent)]
    Cache(#[from] cache::Error),
    #[error(transparent)]
    Upstream(#[from] upstream::SetupError),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: std::net::SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address a listener is bound to: {0}")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    PolicyKey(#[from] policy::KeyError),
    #[error(transparent)]
    Webhooks(#[from] server::webhooks::WebhookSetupError),
}

/// Runs wharf on `listener` until `shutdown` resolves. SIGHUP reloads the TLS certificate (and
/// is otherwise logged): its handler is installed first, so a reload sent while a large cache is
/// being opened cannot end the process.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with_clock(listener, config, shutdown, Clock::system()).await
}

/// [`run`] with the clock that tag freshness and listing reuse are decided on (a manual one
/// lets a test move time instead of sleeping).
pub async fn run_with_clock(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    clock: Clock,
) -> Result<(), StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let hangups = signal(SignalKind::hangup())
        .map_err(|e| tracing::warn!(error = %e, "no SIGHUP handler"))
        .ok();
    run_with(listener, config, shutdown, hangups, clock).await
}

/// [`run`] without taking over SIGHUP, for a wharf embedded in a command (`wharf warm`) where a
/// hang-up must still end the process.
pub async fn run_embedded(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    run_with(listener, config, shutdown, None, Clock::system()).await
}

async fn run_with(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    hangups: Option<tokio::signal::unix::Signal>,
    clock: Clock,
) -> Result<(), StartError> {
    // Before anything else: a bad certificate or credentials file must stop start-up, not the
    // first request.
    let tls = config
        .server
        .tls
        .as_ref()
        .map(server::Tls::load)
        .transpose()?;
    let authenticator = config
        .server
        .auth
        .as_ref()
        .map(server::auth::Authenticator::load)
        .transpose()?;
    let admin = config
        .admin
        .as_ref()
        .map(|admin| server::admin::AdminTokens::load(&admin.tokens))
        .transpose()?;
    let webhooks = match &config.admin {
        Some(admin) => server::webhooks::Webhooks::load(admin)?,
        None => None,
    };
    let forwarder = match &config.admin {
        Some(admin) if !admin.forward_to.is_empty() => Some(
            server::admin::forward::Forwarder::new(&admin.forward_to)
                .map_err(server::webhooks::WebhookSetupError::Client)?,
        ),
        _ => None,
    };
    let policies = policy::Policies::load(&config.policies)?;
    let peers = match &config.cluster {
        Some(cluster) => Some(cluster::Peers::load(cluster).await?),
        None => None,
    };
    let metrics = metrics::Metrics::new();
    let cache = Arc::new(cache::Cache::open(&config.cache, &metrics).await?);
    let upstreams = upstream::Upstreams::new(&config.upstreams, &metrics)?;
    let owners = match &config.cluster {
        Some(cluster) => {
            let token = cluster::read_token(&cluster.peer_token_file)?;
            let owners = mirror::Owners::new(cluster, &token, &config.upstreams, &metrics)?;
            Some(Arc::new(owners))
        }
        None => None,
    };
    let prober = owners.clone().map(|o| tokio::spawn(o.probe_forever()));
    let sweeper = tokio::spawn(cache.clone().sweep_idle(config.cache.max_idle));
    let mirror = mirror::Mirror::new(
        upstreams,
        cache,
        owners,
        policies,
        config.cache.clone(),
        metrics.clone(),
        clock,
    );
    let expiry = tokio::spawn(mirror.clone().expire_shared_forever());
    let keep_warm = Arc::new(keep_warm::KeepWarm::new(
        &config.sync,
        mirror.clone(),
        metrics.clone(),
    ));
    let keepers = keep_warm.start();
    let state = server::AppState {
        mirror,
        metrics,
        keep_warm,
        access: Arc::new(
            server::Access::new(
                config.server.allow_from.clone(),
                &config.server.rate_limit,
                authenticator,
                peers,
            )
            .with_admin(admin, webhooks, forwarder)
            .with_grants(
                server::auth::Grants::new(
                    config
                        .server
                        .auth
                        .as_ref()
                        .map_or(&[], |a| a.grants.as_slice()),
                ),
                &config.upstreams[0].name,
            ),
        ),
        max_range_parts: config.cache.max_range_parts,
    };
    let operations = match config.server.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen {
                    addr,
                    what: "server.metrics_listen",
                    source,
                })?;
            let bound = listener.local_addr().map_err(StartError::Address)?;
            tracing::info!(listen = %bound, "operational endpoints are served apart");
            Some(listener)
        }
    };
    let bound = listener.local_addr().map_err(StartError::Address)?;
    tracing::info!(
        listen = %bound,
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
    expiry.abort();
    for keeper in keepers {
        keeper.abort();
    }
    if let Some(prober) = prober {
        prober.abort();
    }
    Ok(())
}
