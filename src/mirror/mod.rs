//! The pull-through use case, and the only place where the cache and the upstream meet: answer
//! from the cache when it can, otherwise fetch once upstream (coalescing identical requests),
//! verify, store, and answer.

mod blobs;
mod flights;
mod manifests;
mod passthrough;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache as AsyncCache;
use moka::sync::Cache;

pub use crate::cache::Chunk;
use crate::cache::{Fills, Store, StoredManifest, TagTable, Usage};
use crate::config::CacheConfig;
use crate::error::{ClientError, Error};
use crate::metrics::Metrics;
use crate::oci::media::ALL_MANIFEST_TYPES;
use crate::oci::{Digest, RepoName};
use crate::upstream::{ListingResponse, Upstream, UpstreamError, Upstreams};
pub use blobs::{BlobAnswer, BlobReader};
use flights::Flights;
pub use manifests::ManifestAnswer;

/// Manifests kept in memory for the hot path (they are small and asked for constantly).
const MANIFEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// A manifest held in memory, and when a use of it was last recorded in the disk index: once a
/// second is enough for eviction order, and spares the hot path the index lock.
struct HotManifest {
    manifest: Arc<StoredManifest>,
    recorded_use: AtomicU64,
}

type ManifestKey = (Arc<str>, RepoName, String, String);
type ListingKey = (Arc<str>, RepoName, String);
type AccessKey = (Arc<str>, RepoName, Digest);

/// What a confirmation of access asks the upstream about.
#[derive(Debug, Clone, Copy)]
enum Content {
    Blob,
    Manifest,
}

/// How long an upstream's word that a repository may read content is trusted.
const ACCESS_CONFIRMED_FOR: Duration = Duration::from_secs(10 * 60);
/// How long it is remembered at all: while the upstream is down and cannot be asked again, an
/// older word is better than refusing content the repository was known to read.
const ACCESS_REMEMBERED_FOR: Duration = Duration::from_secs(24 * 60 * 60);

pub struct Mirror {
    upstreams: Upstreams,
    store: Arc<Store>,
    fills: Arc<Fills<Error>>,
    tags: Arc<TagTable>,
    manifests: Cache<Digest, Arc<HotManifest>>,
    manifest_fetches: Flights<ManifestKey, Result<Arc<StoredManifest>, Error>>,
    revalidations: Flights<ManifestKey, Result<Option<Digest>, Error>>,
    listings: AsyncCache<ListingKey, Arc<ListingResponse>>,
    /// Repositories a private upstream has confirmed may read a blob or manifest, and when.
    confirmed: Cache<AccessKey, Instant>,
    config: CacheConfig,
    metrics: Metrics,
}

impl Mirror {
    pub fn new(
        upstreams: Upstreams,
        store: Arc<Store>,
        tags: Arc<TagTable>,
        config: CacheConfig,
        metrics: Metrics,
    ) -> Arc<Mirror> {
        Arc::new(Mirror {
            upstreams,
            fills: Fills::new(store.clone()),
            store,
            tags,
            manifests: Cache::builder()
                .weigher(|_, m: &Arc<HotManifest>| {
                    u32::try_from(m.manifest.body.len()).unwrap_or(u32::MAX)
                })
                .max_capacity(MANIFEST_MEMORY_BYTES)
                .build(),
            manifest_fetches: Flights::default(),
            revalidations: Flights::default(),
            listings: AsyncCache::builder()
                .max_capacity(10_000)
                .time_to_live(config.listing_ttl)
                .build(),
            confirmed: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ACCESS_REMEMBERED_FOR)
                .build(),
            config,
            metrics,
        })
    }

    /// The upstream a request for `repo` addresses: `None` means the default one. An unknown
    /// registry, or a repository its allow-list leaves out, is refused before the cache or
    /// the upstream is looked at, so not even cached content is served.
    pub fn upstream(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
    ) -> Result<&Arc<Upstream>, Error> {
        let upstream = match registry {
            None => self.upstreams.default_upstream(),
            Some(name) => self
                .upstreams
                .get(name)
                .ok_or_else(|| ClientError::UnknownRegistry(name.to_owned()))?,
        };
        if !upstream.allows(repo) {
            return Err(ClientError::RepositoryNotAllowed(repo.to_string()).into());
        }
        Ok(upstream)
    }

    /// Succeeds when `repo` may read `digest`: always for upstreams that do not confirm access,
    /// otherwise when the upstream said so (a `HEAD` through `repo`) in the last few minutes,
    /// or, while it is down, in the last day. Anything else is refused as unknown (the
    /// content's existence elsewhere is not revealed), and an upstream that cannot be asked
    /// about a repository it never confirmed means a refusal too.
    async fn confirm_access(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        content: Content,
    ) -> Result<(), Error> {
        if !upstream.confirms_access() {
            return Ok(());
        }
        let key = (Arc::from(upstream.name()), repo.clone(), digest.clone());
        let confirmed_at = self.confirmed.get(&key);
        if confirmed_at.is_some_and(|at| at.elapsed() < ACCESS_CONFIRMED_FOR) {
            return Ok(());
        }
        let asked = match content {
            Content::Blob => upstream.blob_length(repo, digest).await.map(drop),
            Content::Manifest => upstream
                .manifest(repo, &digest.to_string(), ALL_MANIFEST_TYPES, true)
                .await
                .map(drop),
        };
        match asked {
            Ok(()) => {
                self.confirmed.insert(key, Instant::now());
                Ok(())
            }
            Err(e) if e.is_outage() && confirmed_at.is_some() => {
                tracing::debug!(upstream = upstream.name(), %repo, %digest, error = %e, "upstream down: access confirmed earlier stands");
                Ok(())
            }
            Err(
                e @ (UpstreamError::NotFound
                | UpstreamError::Unauthorized { .. }
                | UpstreamError::Denied { .. }),
            ) => {
                tracing::info!(upstream = upstream.name(), %repo, %digest, error = %e, "cached content refused: the upstream does not confirm this repository may read it");
                Err(match content {
                    Content::Blob => ClientError::BlobUnknown,
                    Content::Manifest => ClientError::ManifestUnknown,
                }
                .into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Remembers that the upstream just served `digest` through `repo`.
    fn record_access(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) {
        if upstream.confirms_access() {
            let key = (Arc::from(upstream.name()), repo.clone(), digest.clone());
            self.confirmed.insert(key, Instant::now());
        }
    }

    /// Whether `name` is a configured upstream (a path prefix, for routing).
    pub fn is_registry(&self, name: &str) -> bool {
        self.upstreams.contains(name)
    }

    pub fn fills_in_flight(&self) -> usize {
        self.fills.in_flight()
    }

    /// The cache's size and whether it takes writes, for `/readyz`.
    pub fn cache_usage(&self) -> Usage {
        self.store.usage()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// `tags/list` or `referrers/<digest>`, reused for `listing_ttl`.
    pub async fn listing(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        path_and_query: &str,
    ) -> Result<Arc<ListingResponse>, Error> {
        let key = (
            Arc::from(upstream.name()),
            repo.clone(),
            path_and_query.to_owned(),
        );
        self.listings
            .try_get_with(key, async {
                upstream
                    .listing(repo, path_and_query)
                    .await
                    .map(Arc::new)
                    .map_err(Error::from)
            })
            .await
            .map_err(|e| (*e).clone())
    }
}
