//! The mirror's shared state, the upstream a request addresses, and the answers that need no
//! fetch of their own (readiness, listings).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::future::Cache as ListingCache;

use super::access::ConfirmedAccess;
use super::flights::Flights;
use super::owners::Owners;
use super::side::{SideFetches, SidePolicy};
use super::verdicts::Signatures;
use crate::cache::{Cache, Condition};
use crate::clock::Clock;
use crate::cluster::MemberState;
use crate::config::CacheConfig;
use crate::error::{ClientError, Error};
use crate::metrics::Metrics;
use crate::oci::media::Accept;
use crate::oci::{Digest, Listing, ListingPage, RawManifest, Reference, RepoName};
use crate::policy::Policies;
use crate::upstream::{Upstream, Upstreams};

type ManifestKey = (Arc<str>, RepoName, Reference, Accept);
type ListingKey = (Arc<str>, RepoName, Listing);

/// The pull-through mirror: what every request shares. Its use cases live beside it, in
/// `blobs` and `manifests`.
pub struct Mirror {
    pub(super) upstreams: Upstreams,
    pub(super) cache: Arc<Cache>,
    pub(super) manifest_fetches: Flights<ManifestKey, Result<Arc<RawManifest>, Error>>,
    pub(super) revalidations: Flights<ManifestKey, Result<Option<Digest>, Error>>,
    /// Listings and when they were fetched (by `clock`): reused while younger than
    /// `listing_ttl`.
    listings: ListingCache<ListingKey, (SystemTime, Arc<ListingPage>)>,
    pub(super) access: ConfirmedAccess,
    /// Ranges fetched ahead of fills, and when they are.
    pub(super) side_fetches: Arc<SideFetches>,
    pub(super) side_policy: SidePolicy,
    /// The other nodes of this node's cluster, if it is in one.
    pub(super) owners: Option<Arc<Owners>>,
    /// The `[[policy]]` rules and their verdicts.
    pub(super) signatures: Signatures,
    pub(super) config: CacheConfig,
    pub(super) metrics: Metrics,
    /// What tag freshness and listing reuse are decided on.
    pub(super) clock: Clock,
}

/// Whether the cache takes writes and how full it is, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Why caching is suspended (a bounded label), and for how many seconds, if it is.
    pub unwritable: Option<(&'static str, u64)>,
    pub bytes: u64,
    pub max_bytes: u64,
    pub entries: u64,
    pub fills_in_flight: usize,
    /// The nodes of this node's cluster and whether they are up, if it is in one.
    pub cluster: Option<Vec<MemberState>>,
}

impl Mirror {
    pub fn new(
        upstreams: Upstreams,
        cache: Arc<Cache>,
        owners: Option<Arc<Owners>>,
        policies: Policies,
        config: CacheConfig,
        metrics: Metrics,
        clock: Clock,
    ) -> Arc<Mirror> {
        Arc::new(Mirror {
            upstreams,
            cache,
            manifest_fetches: Flights::default(),
            revalidations: Flights::default(),
            // The freshness check is wharf's own (on `clock`); moka's TTL, never shorter than
            // a minute, only frees the memory of listings no one asks for again.
            listings: ListingCache::builder()
                .max_capacity(10_000)
                .time_to_live(config.listing_ttl.max(Duration::from_secs(60)))
                .build(),
            access: ConfirmedAccess::default(),
            side_fetches: Arc::default(),
            side_policy: SidePolicy::new(&config),
            owners,
            signatures: Signatures::new(policies),
            config,
            metrics,
            clock,
        })
    }

    /// The upstream a request for `repo` addresses: `None` means the default one. An unknown
    /// registry, or a repository its allow-list leaves out, is refused before the cache or
    /// the upstream is looked at, so not even cached content is served.
    pub(super) fn upstream(
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

    /// Whether `name` is a configured upstream (a path prefix, for routing).
    pub fn is_registry(&self, name: &str) -> bool {
        self.upstreams.contains(name)
    }

    /// Whether the cache takes writes, and its size, for `/readyz`.
    pub async fn readiness(&self) -> Readiness {
        let health = self.cache.health().await;
        Readiness {
            unwritable: health
                .unwritable
                .map(|(condition, since): (Condition, _)| (condition.as_str(), since.as_secs())),
            bytes: health.bytes,
            max_bytes: health.max_bytes,
            entries: health.entries,
            fills_in_flight: health.fills_in_flight,
            cluster: self.owners.as_ref().map(|o| o.members().states()),
        }
    }

    /// `tags/list` or `referrers/<digest>`, reused for `listing_ttl`.
    pub async fn listing(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
        listing: &Listing,
    ) -> Result<Arc<ListingPage>, Error> {
        let upstream = self.upstream(registry, repo)?;
        self.listing_from(upstream, repo, listing).await
    }

    /// [`Mirror::listing`] of the upstream already chosen.
    pub(super) async fn listing_from(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        listing: &Listing,
    ) -> Result<Arc<ListingPage>, Error> {
        let key = (Arc::from(upstream.name()), repo.clone(), listing.clone());
        let fresh = |fetched: SystemTime| {
            self.clock
                .now()
                .duration_since(fetched)
                .map_or(true, |age| age < self.config.listing_ttl)
        };
        if let Some((fetched, page)) = self.listings.get(&key).await {
            if fresh(fetched) {
                return Ok(page);
            }
            self.listings.invalidate(&key).await;
        }
        let fetched = self
            .listings
            .try_get_with(key, async {
                let asked_at = self.clock.now();
                let page = upstream.listing(repo, listing).await?;
                Ok::<_, Error>((asked_at, Arc::new(page)))
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(fetched.1)
    }
}
