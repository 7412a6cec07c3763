//! The pull-through use case, and the only place where the cache and the upstream meet: answer
//! from the cache when it can, otherwise fetch once upstream (coalescing identical requests),
//! verify, store, and answer.

mod flights;

use std::sync::Arc;
use std::time::SystemTime;

use moka::future::Cache as AsyncCache;
use moka::sync::Cache;

use crate::cache::{
    BlobFile, CommitError, Fill, FillReader, Fills, Joined as FillJoined, Store, StoredManifest,
    TagKey, TagTable, Variant,
};
use crate::config::CacheConfig;
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, ContentKind, Metrics};
use crate::oci::media::{Accept, ALL_MANIFEST_TYPES};
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::upstream::{ListingResponse, Upstream, UpstreamError, Upstreams};
use flights::{Flights, Joined};

/// Manifests kept in memory for the hot path (they are small and asked for constantly).
const MANIFEST_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

type ManifestKey = (Arc<str>, RepoName, String, String);
type ListingKey = (Arc<str>, RepoName, String);

pub struct Mirror {
    upstreams: Upstreams,
    store: Arc<Store>,
    fills: Arc<Fills<Error>>,
    tags: TagTable,
    manifests: Cache<Digest, Arc<StoredManifest>>,
    manifest_fetches: Flights<ManifestKey, Result<Arc<StoredManifest>, Error>>,
    revalidations: Flights<ManifestKey, Result<Option<Digest>, Error>>,
    listings: AsyncCache<ListingKey, Arc<ListingResponse>>,
    config: CacheConfig,
    metrics: Metrics,
}

/// A manifest answer and how it was found.
pub struct ManifestAnswer {
    pub manifest: Arc<StoredManifest>,
    pub result: CacheResult,
}

/// A blob ready to be read: committed, or a fill that has its upstream answer.
pub struct BlobAnswer {
    /// `None` when the upstream sent no length (the body is then streamed to its end).
    pub size: Option<u64>,
    pub result: CacheResult,
    source: BlobSource,
}

enum BlobSource {
    Cached(BlobFile),
    Filling(Arc<Fill<Error>>),
}

impl BlobAnswer {
    /// A reader of `start..end` (`end` exclusive; `None` = to the end).
    pub fn reader(&self, start: u64, end: Option<u64>) -> FillReader<Error> {
        match &self.source {
            BlobSource::Cached(blob) => {
                FillReader::committed(blob, start, end.unwrap_or(blob.size))
            }
            BlobSource::Filling(fill) => fill.reader(start, end),
        }
    }
}

impl Mirror {
    pub fn new(
        upstreams: Upstreams,
        store: Arc<Store>,
        config: CacheConfig,
        metrics: Metrics,
    ) -> Arc<Mirror> {
        let mirror = Mirror {
            upstreams,
            fills: Fills::new(store.clone()),
            store,
            tags: TagTable::default(),
            manifests: Cache::builder()
                .weigher(|_, m: &Arc<StoredManifest>| {
                    u32::try_from(m.body.len()).unwrap_or(u32::MAX)
                })
                .max_capacity(MANIFEST_MEMORY_BYTES)
                .build(),
            manifest_fetches: Flights::default(),
            revalidations: Flights::default(),
            listings: AsyncCache::builder()
                .max_capacity(10_000)
                .time_to_live(config.listing_ttl)
                .build(),
            config,
            metrics,
        };
        mirror.update_size_metrics();
        Arc::new(mirror)
    }

    /// The upstream a request addresses: `None` means the default one. An unknown registry is
    /// refused without contacting anything.
    pub fn upstream(&self, registry: Option<&str>) -> Result<&Arc<Upstream>, Error> {
        match registry {
            None => Ok(self.upstreams.default_upstream()),
            Some(name) => self
                .upstreams
                .get(name)
                .ok_or_else(|| ClientError::UnknownRegistry(name.to_owned()).into()),
        }
    }

    /// Whether `name` is a configured upstream (a path prefix, for routing).
    pub fn is_registry(&self, name: &str) -> bool {
        self.upstreams.contains(name)
    }

    pub fn fills_in_flight(&self) -> usize {
        self.fills.in_flight()
    }

    fn update_size_metrics(&self) {
        let (bytes, entries) = self.store.usage();
        self.metrics.cache_size_bytes.set(bytes as i64);
        self.metrics.cache_entries.set(entries as i64);
    }

    // ---- manifests -------------------------------------------------------------------------

    pub async fn manifest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<ManifestAnswer, Error> {
        let answer = match reference {
            Reference::Digest(digest) => self.manifest_by_digest(upstream, repo, digest).await,
            Reference::Tag(tag) => self.manifest_by_tag(upstream, repo, tag, accept).await,
        }?;
        self.metrics
            .cache_result(ContentKind::Manifest, answer.result);
        Ok(answer)
    }

    fn cached_manifest(&self, digest: &Digest) -> Result<Option<Arc<StoredManifest>>, Error> {
        if let Some(m) = self.manifests.get(digest) {
            return Ok(Some(m));
        }
        let Some(m) = self.store.read_manifest(digest)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        self.manifests.insert(digest.clone(), m.clone());
        Ok(Some(m))
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<ManifestAnswer, Error> {
        if let Some(manifest) = self.cached_manifest(digest)? {
            return Ok(ManifestAnswer {
                manifest,
                result: CacheResult::Hit,
            });
        }
        let (manifest, joined) = self
            .fetch_manifest(upstream, repo, &digest.to_string(), ALL_MANIFEST_TYPES)
            .await;
        Ok(ManifestAnswer {
            manifest: manifest?,
            result: miss_or_coalesced(joined),
        })
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &Accept,
    ) -> Result<ManifestAnswer, Error> {
        let key = TagKey {
            upstream: upstream.name().into(),
            repo: repo.clone(),
            tag: tag.clone(),
        };
        let accept_header = accept.header_value();
        let mut stale = None;
        if let Some(variant) = self.tags.choose(&key, accept) {
            if let Some(manifest) = self.cached_manifest(&variant.digest)? {
                if variant.is_fresh(SystemTime::now(), self.config.tag_ttl) {
                    return Ok(ManifestAnswer {
                        manifest,
                        result: CacheResult::Hit,
                    });
                }
                match self.revalidate(upstream, &key, &accept_header).await {
                    Ok(Some(current)) if current == variant.digest => {
                        self.tags.touch(&key, &current, SystemTime::now());
                        return Ok(ManifestAnswer {
                            manifest,
                            result: CacheResult::Hit,
                        });
                    }
                    Ok(_) => {}
                    Err(Error::Upstream(UpstreamError::NotFound)) => {
                        self.tags.forget(&key);
                        return Err(ClientError::ManifestUnknown.into());
                    }
                    Err(e) => return self.stale_or(&key, manifest, e),
                }
                stale = Some((variant, manifest));
            }
        }
        let (fetched, joined) = self
            .fetch_manifest(upstream, repo, tag.as_str(), &accept_header)
            .await;
        let manifest = match (fetched, stale) {
            (Ok(m), stale) => {
                let variant = Variant {
                    digest: m.digest.clone(),
                    media_type: m.media_type_essence().to_owned(),
                    asked_with: accept.clone(),
                    fetched_at: SystemTime::now(),
                };
                let replaces = stale.as_ref().map(|(v, _)| &v.digest);
                self.tags.record(key, variant, replaces);
                m
            }
            (Err(e), Some((_, manifest))) => return self.stale_or(&key, manifest, e),
            (Err(Error::Upstream(UpstreamError::NotFound)), None) => {
                return Err(ClientError::ManifestUnknown.into())
            }
            (Err(e), None) => return Err(e),
        };
        Ok(ManifestAnswer {
            manifest,
            result: miss_or_coalesced(joined),
        })
    }

    /// Serves a cached tag when the upstream is down or limiting (if allowed), else the error.
    fn stale_or(
        &self,
        key: &TagKey,
        manifest: Arc<StoredManifest>,
        error: Error,
    ) -> Result<ManifestAnswer, Error> {
        let outage = matches!(&error, Error::Upstream(e) if e.is_outage());
        if outage && self.config.serve_stale {
            tracing::warn!(
                upstream = %key.upstream, repo = %key.repo, tag = %key.tag, %error,
                "serving a stale tag: the upstream could not revalidate it"
            );
            return Ok(ManifestAnswer {
                manifest,
                result: CacheResult::Stale,
            });
        }
        Err(error)
    }

    /// One coalesced `HEAD` for a tag: the digest the upstream has now (if it said).
    async fn revalidate(
        &self,
        upstream: &Arc<Upstream>,
        key: &TagKey,
        accept_header: &str,
    ) -> Result<Option<Digest>, Error> {
        let flight_key = (
            key.upstream.clone(),
            key.repo.clone(),
            key.tag.to_string(),
            accept_header.to_owned(),
        );
        let (upstream, repo, tag, accept) = (
            upstream.clone(),
            key.repo.clone(),
            key.tag.clone(),
            accept_header.to_owned(),
        );
        let (result, _) = self
            .revalidations
            .run(flight_key, move || async move {
                upstream
                    .manifest(&repo, tag.as_str(), &accept, true)
                    .await
                    .map(|head| head.digest)
                    .map_err(Error::from)
            })
            .await;
        result.unwrap_or_else(|| Err(Error::Internal("tag revalidation panicked".into())))
    }

    /// One coalesced `GET` of a manifest by tag or digest, verified and stored.
    async fn fetch_manifest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &str,
        accept_header: &str,
    ) -> (Result<Arc<StoredManifest>, Error>, Joined) {
        let key = (
            Arc::from(upstream.name()),
            repo.clone(),
            reference.to_owned(),
            accept_header.to_owned(),
        );
        let this = self.clone();
        let (upstream, repo, reference, accept) = (
            upstream.clone(),
            repo.clone(),
            reference.to_owned(),
            accept_header.to_owned(),
        );
        let (result, joined) = self
            .manifest_fetches
            .run(key, move || async move {
                this.fetch_and_store_manifest(&upstream, &repo, &reference, &accept)
                    .await
            })
            .await;
        let result =
            result.unwrap_or_else(|| Err(Error::Internal("manifest fetch panicked".into())));
        (result, joined)
    }

    async fn fetch_and_store_manifest(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        reference: &str,
        accept: &str,
    ) -> Result<Arc<StoredManifest>, Error> {
        let response = upstream.manifest(repo, reference, accept, false).await?;
        let requested: Option<Digest> = reference.parse().ok();
        let algorithm = requested
            .as_ref()
            .or(response.digest.as_ref())
            .map_or(crate::oci::Algorithm::Sha256, Digest::algorithm);
        let mut verifier = crate::oci::Verifier::new(algorithm);
        verifier.update(&response.body);
        let actual = verifier.finish();
        for expected in requested.iter().chain(response.digest.iter()) {
            if *expected != actual {
                self.metrics.digest_mismatches.inc();
                return Err(CommitError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                }
                .into());
            }
        }
        let manifest = Arc::new(StoredManifest {
            digest: actual,
            media_type: response.media_type,
            body: response.body,
        });
        if let Err(e) = self.store.write_manifest(&manifest) {
            tracing::error!(digest = %manifest.digest, error = %e, "cannot cache a manifest");
        }
        self.update_size_metrics();
        self.manifests
            .insert(manifest.digest.clone(), manifest.clone());
        Ok(manifest)
    }

    // ---- blobs -----------------------------------------------------------------------------

    /// A blob to stream: from the cache, from a fill already running, or from a new fill.
    pub async fn blob(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer, Error> {
        let joined = self.fills.join(digest, Error::Fill)?;
        let (fill, result) = match joined {
            FillJoined::Cached(blob) => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Hit);
                return Ok(BlobAnswer {
                    size: Some(blob.size),
                    result: CacheResult::Hit,
                    source: BlobSource::Cached(blob),
                });
            }
            FillJoined::Coalesced(fill) => (fill, CacheResult::Coalesced),
            FillJoined::Started(fill, writer) => {
                let this = self.clone();
                let (upstream, repo, digest) = (upstream.clone(), repo.clone(), digest.clone());
                tokio::spawn(async move { this.run_fill(&upstream, &repo, &digest, writer).await });
                (fill, CacheResult::Miss)
            }
        };
        self.metrics.cache_result(ContentKind::Blob, result);
        let size = fill.started().await.map_err(|e| match e {
            Error::Upstream(UpstreamError::NotFound) => ClientError::BlobUnknown.into(),
            e => e,
        })?;
        Ok(BlobAnswer {
            size,
            result,
            source: BlobSource::Filling(fill),
        })
    }

    /// Streams a blob from the upstream into a fill. Runs to the end whether or not anyone is
    /// still reading.
    async fn run_fill(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        writer: crate::cache::FillWriter<Error>,
    ) {
        self.metrics.fills_in_flight.inc();
        let mut stream = match upstream.blob(repo, digest).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::info!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fetch failed");
                writer.fail(e.into()).await;
                self.metrics.fills_in_flight.dec();
                return;
            }
        };
        writer.start(stream.length()).await;
        let outcome = loop {
            match stream.next_chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = writer.write(chunk).await {
                        break Err(Error::from(e));
                    }
                }
                Ok(None) => break writer.finish().await.map_err(Error::from),
                Err(e) => {
                    writer.fail(e.clone().into()).await;
                    break Err(e.into());
                }
            }
        };
        match outcome {
            Ok(()) => {
                tracing::debug!(%digest, "blob cached");
                self.update_size_metrics();
            }
            Err(Error::Fill(
                e @ (CommitError::DigestMismatch { .. } | CommitError::LengthMismatch { .. }),
            )) => {
                self.metrics.digest_mismatches.inc();
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "upstream blob failed verification; not cached");
            }
            Err(e) => {
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fill failed; not cached");
            }
        }
        self.metrics.fills_in_flight.dec();
    }

    /// A blob's size for `HEAD`, without starting a fill on a miss.
    pub async fn blob_size(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheResult), Error> {
        if let Some(blob) = self.store.open_blob(digest)? {
            return Ok((Some(blob.size), CacheResult::Hit));
        }
        if let Some(fill) = self.fills.running(digest) {
            return Ok((fill.started().await?, CacheResult::Coalesced));
        }
        match upstream.blob_length(repo, digest).await {
            Ok(size) => Ok((size, CacheResult::Miss)),
            Err(UpstreamError::NotFound) => Err(ClientError::BlobUnknown.into()),
            Err(e) => Err(e.into()),
        }
    }

    // ---- listings --------------------------------------------------------------------------

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

fn miss_or_coalesced(joined: Joined) -> CacheResult {
    match joined {
        Joined::Led => CacheResult::Miss,
        Joined::Followed => CacheResult::Coalesced,
    }
}
