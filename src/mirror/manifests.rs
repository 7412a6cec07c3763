//! Manifests: by digest from the cache, by tag from the tag table while fresh, revalidated with
//! one coalesced `HEAD` when not, fetched with one coalesced `GET` when missing or moved, and
//! served stale when the upstream is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::flights::Joined;
use super::{Content, HotManifest, Mirror};
use crate::cache::{Area, CommitError, StoredManifest, TagKey, Variant};
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, ContentKind};
use crate::oci::media::{Accept, ALL_MANIFEST_TYPES};
use crate::oci::{Algorithm, Digest, Reference, RepoName, Tag, Verifier};
use crate::upstream::{Upstream, UpstreamError};

/// A manifest answer and how it was found.
pub struct ManifestAnswer {
    pub manifest: Arc<StoredManifest>,
    pub result: CacheResult,
}

impl Mirror {
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
        if let Some(hot) = self.manifests.get(digest) {
            // A use of the disk entry too, for eviction (the memory copy outlives an eviction).
            let now = unix_secs();
            if hot.recorded_use.swap(now, Ordering::Relaxed) != now {
                self.store.touch(Area::Manifests, digest);
            }
            return Ok(Some(hot.manifest.clone()));
        }
        let Some(m) = self.store.read_manifest(digest)? else {
            return Ok(None);
        };
        let m = Arc::new(m);
        self.remember(m.clone());
        Ok(Some(m))
    }

    /// Keeps a manifest in memory for the hot path.
    fn remember(&self, manifest: Arc<StoredManifest>) {
        let hot = HotManifest {
            manifest,
            recorded_use: AtomicU64::new(unix_secs()),
        };
        self.manifests
            .insert(hot.manifest.digest.clone(), Arc::new(hot));
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<ManifestAnswer, Error> {
        if let Some(manifest) = self.cached_manifest(digest)? {
            // Cached through some repository: a private upstream must confirm this one may
            // read it, as for blobs.
            self.confirm_access(upstream, repo, digest, Content::Manifest)
                .await?;
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
        let mut stale = None;
        if let Some(variant) = self.tags.choose(&key, accept) {
            if let Some(manifest) = self.cached_manifest(&variant.digest)? {
                let now = SystemTime::now();
                if variant.is_fresh(now, self.config.tag_ttl) {
                    return Ok(ManifestAnswer {
                        manifest,
                        result: CacheResult::Hit,
                    });
                }
                if self.config.serve_stale && variant.revalidation_deferred(now) {
                    // The upstream failed to answer for this tag less than a tag_ttl ago: do
                    // not make every pull wait for it again.
                    tracing::debug!(%repo, %tag, "serving a stale tag until its next revalidation");
                    return Ok(ManifestAnswer {
                        manifest,
                        result: CacheResult::Stale,
                    });
                }
                match self
                    .revalidate(upstream, &key, &accept.header_value())
                    .await
                {
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
                    Err(e) => return self.stale_or(&key, manifest, e, Defer::Yes),
                }
                stale = Some((variant, manifest));
            }
        }
        // Stamped when asked, so an answer that arrives late cannot pass for a newer one.
        let asked_at = SystemTime::now();
        let (fetched, joined) = self
            .fetch_manifest(upstream, repo, tag.as_str(), &accept.header_value())
            .await;
        let manifest = match (fetched, stale) {
            (Ok(m), stale) => {
                let variant = Variant {
                    digest: m.digest.clone(),
                    media_type: m.media_type_essence().to_owned(),
                    asked_with: accept.clone(),
                    fetched_at: asked_at,
                    revalidate_after: None,
                };
                let replaces = stale.as_ref().map(|(v, _)| &v.digest);
                self.tags.record(key, variant, replaces);
                m
            }
            // The upstream said the tag moved but the new manifest did not come (a 429 on the
            // GET after a free HEAD, say): the old one is better than nothing, but the tag must
            // be asked about again soon rather than after a whole tag_ttl.
            (Err(e), Some((_, manifest))) => return self.stale_or(&key, manifest, e, Defer::No),
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
    /// With [`Defer::Yes`] the tag is then not revalidated again before another `tag_ttl`.
    fn stale_or(
        &self,
        key: &TagKey,
        manifest: Arc<StoredManifest>,
        error: Error,
        defer: Defer,
    ) -> Result<ManifestAnswer, Error> {
        let outage = matches!(&error, Error::Upstream(e) if e.is_outage());
        if outage && self.config.serve_stale {
            let now = SystemTime::now();
            // Requests that waited on one revalidation all land here: log it once.
            let first = match defer {
                Defer::Yes => {
                    self.tags
                        .defer(key, &manifest.digest, now, now + self.config.tag_ttl)
                }
                Defer::No => true,
            };
            if first {
                tracing::warn!(
                    upstream = %key.upstream, repo = %key.repo, tag = %key.tag, %error,
                    "serving a stale tag: the upstream could not revalidate it"
                );
            }
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
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let mut verifier = Verifier::new(algorithm);
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
        self.record_access(upstream, repo, &actual);
        let manifest = Arc::new(StoredManifest {
            digest: actual,
            media_type: response.media_type,
            body: response.body,
        });
        // Off the async workers: the commit fsyncs.
        let (store, to_write) = (self.store.clone(), manifest.clone());
        match tokio::task::spawn_blocking(move || store.write_manifest(&to_write)).await {
            Ok(Ok(())) => {}
            // Served all the same; the store logs the disk's condition once.
            Ok(Err(e)) => {
                tracing::debug!(digest = %manifest.digest, error = %e, "manifest not cached")
            }
            Err(e) => tracing::error!(error = %e, "manifest write task failed"),
        }
        self.remember(manifest.clone());
        Ok(manifest)
    }
}

/// Whether serving a tag stale puts off its next revalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defer {
    Yes,
    No,
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn miss_or_coalesced(joined: Joined) -> CacheResult {
    match joined {
        Joined::Led => CacheResult::Miss,
        Joined::Followed => CacheResult::Coalesced,
    }
}
