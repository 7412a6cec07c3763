//! Manifests: by digest from the cache, by tag from the tag table while fresh, revalidated with
//! one coalesced `HEAD` when not, fetched with one coalesced `GET` when missing or moved, and
//! served stale when the upstream is down.

use std::sync::Arc;
use std::time::Duration;

use super::access::Content;
use super::flights::Role;
use super::owners::{owner_sources, Origin};
use super::state::Mirror;
use crate::cache::{TagKey, Variant};
use crate::error::{ClientError, Error};
use crate::metrics::{CacheResult, ContentKind};
use crate::oci::media::Accept;
use crate::oci::{Digest, RawManifest, Reference, RepoName, Tag};
use crate::upstream::{Upstream, UpstreamError};

/// A manifest answer and how it was found.
pub struct ManifestAnswer {
    pub manifest: Arc<RawManifest>,
    pub result: CacheResult,
}

/// What the tag table knew of a tag that could not be answered from it alone.
enum Cached {
    /// Nothing usable: ask the upstream.
    Nothing,
    /// The upstream says the tag moved (to the digest, if it said): fetch it, and fall back to
    /// this stale answer if that fails.
    Moved(Variant, Arc<RawManifest>, Option<Digest>),
}

impl Mirror {
    pub async fn manifest(
        self: &Arc<Self>,
        registry: Option<&str>,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
        origin: Origin,
    ) -> Result<ManifestAnswer, Error> {
        let upstream = self.upstream(registry, repo)?;
        let answer = self
            .manifest_from(
                upstream,
                repo,
                reference,
                accept,
                origin,
                self.config.tag_ttl,
            )
            .await?;
        self.metrics
            .cache_result(ContentKind::Manifest, answer.result);
        // A peer asks for what its own client asked, and that node checks it.
        if origin == Origin::Client {
            Box::pin(self.enforce_policy(upstream, repo, &answer.manifest)).await?;
        }
        Ok(answer)
    }

    /// A manifest as the cache and the upstream have it, unchecked by any policy; a cached tag
    /// is fresh while younger than `tag_ttl`.
    pub(super) async fn manifest_from(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
        origin: Origin,
        tag_ttl: Duration,
    ) -> Result<ManifestAnswer, Error> {
        match reference {
            Reference::Digest(digest) => {
                self.manifest_by_digest(upstream, repo, digest, origin)
                    .await
            }
            Reference::Tag(tag) => {
                self.manifest_by_tag(upstream, repo, tag, accept, origin, tag_ttl)
                    .await
            }
        }
    }

    async fn manifest_by_digest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        origin: Origin,
    ) -> Result<ManifestAnswer, Error> {
        if let Some(manifest) = self.cache.manifest(digest).await? {
            // Cached through some repository: a private upstream must confirm this one may
            // read it, as for blobs.
            self.access
                .confirm(upstream, repo, digest, Content::Manifest)
                .await?;
            return Ok(ManifestAnswer {
                manifest,
                result: CacheResult::Hit,
            });
        }
        let reference = Reference::Digest(digest.clone());
        let sources = owner_sources(self.owners.as_deref(), origin, upstream, digest);
        let (manifest, role) = Box::pin(self.fetch_manifest(
            upstream,
            sources,
            repo,
            &reference,
            &Accept::all_manifests(),
        ))
        .await;
        Ok(ManifestAnswer {
            manifest: manifest?,
            result: miss_or_coalesced(role),
        })
    }

    async fn manifest_by_tag(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        accept: &Accept,
        origin: Origin,
        tag_ttl: Duration,
    ) -> Result<ManifestAnswer, Error> {
        let key = TagKey {
            upstream: upstream.name().into(),
            repo: repo.clone(),
            tag: tag.clone(),
        };
        // Stamped when asked, so an answer that arrives late cannot pass for a newer one.
        let asked_at = self.clock.now();
        let (stale, moved_to) = match self.cached_tag(upstream, &key, accept, tag_ttl).await? {
            Ok(answer) => return Ok(answer),
            Err(Cached::Nothing) => (None, None),
            Err(Cached::Moved(variant, manifest, to)) => (Some((variant, manifest)), to),
        };
        // A revalidation that named no digest leaves nothing to ask the owner for.
        let revalidated_blind = stale.is_some() && moved_to.is_none();
        let through_owner = match (&self.owners, origin) {
            (Some(_), Origin::Client) if !revalidated_blind => {
                Box::pin(self.tag_through_owner(upstream, &key, accept, moved_to)).await
            }
            _ => None,
        };
        let (fetched, role) = match through_owner {
            Some(fetched) => fetched,
            None => {
                let reference = Reference::Tag(tag.clone());
                Box::pin(self.fetch_manifest(upstream, Vec::new(), repo, &reference, accept)).await
            }
        };
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
                self.cache.record_tag(key, variant, replaces);
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
            result: miss_or_coalesced(role),
        })
    }

    /// Answers a tag from the tag table when it can: fresh, deferred after a failed
    /// revalidation, or confirmed by a revalidation now. Otherwise says what it knew.
    async fn cached_tag(
        &self,
        upstream: &Arc<Upstream>,
        key: &TagKey,
        accept: &Accept,
        tag_ttl: Duration,
    ) -> Result<Result<ManifestAnswer, Cached>, Error> {
        let Some(variant) = self.cache.tag(key, accept).await else {
            return Ok(Err(Cached::Nothing));
        };
        let Some(manifest) = self.cache.manifest(&variant.digest).await? else {
            return Ok(Err(Cached::Nothing));
        };
        let now = self.clock.now();
        if variant.is_fresh(now, tag_ttl) {
            return Ok(Ok(ManifestAnswer {
                manifest,
                result: CacheResult::Hit,
            }));
        }
        if self.config.serve_stale && variant.revalidation_deferred(now) {
            // The upstream failed to answer for this tag less than a tag_ttl ago: do not make
            // every pull wait for it again.
            tracing::debug!(repo = %key.repo, tag = %key.tag, "serving a stale tag until its next revalidation");
            return Ok(Ok(ManifestAnswer {
                manifest,
                result: CacheResult::Stale,
            }));
        }
        match Box::pin(self.revalidate(upstream, key, accept)).await {
            Ok(Some(current)) if current == variant.digest => {
                self.cache.confirm_tag(key, &current, self.clock.now());
                Ok(Ok(ManifestAnswer {
                    manifest,
                    result: CacheResult::Hit,
                }))
            }
            Ok(moved_to) => Ok(Err(Cached::Moved(variant, manifest, moved_to))),
            Err(Error::Upstream(UpstreamError::NotFound)) => {
                self.cache.forget_tag(key);
                Err(ClientError::ManifestUnknown.into())
            }
            Err(e) => self.stale_or(key, manifest, e, Defer::Yes).map(Ok),
        }
    }

    /// In a cluster, a tag is resolved here, with the upstream's cheap `HEAD` (coalesced; the
    /// digest `moved_to` if a revalidation just said it), and its manifest is fetched by
    /// digest through the digest's owner, so the upstream serves each manifest once per
    /// cluster. `None` when the `HEAD` names no digest or fails: then the tag is fetched here.
    async fn tag_through_owner(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        key: &TagKey,
        accept: &Accept,
        moved_to: Option<Digest>,
    ) -> Option<(Result<Arc<RawManifest>, Error>, Role)> {
        let digest = match moved_to {
            Some(digest) => digest,
            None => match self.revalidate(upstream, key, accept).await {
                Ok(Some(digest)) => digest,
                Err(e @ Error::Upstream(UpstreamError::NotFound)) => {
                    return Some((Err(e), Role::Led))
                }
                Ok(None) | Err(_) => return None,
            },
        };
        let answer = self
            .manifest_by_digest(upstream, &key.repo, &digest, Origin::Client)
            .await;
        Some(match answer {
            Ok(answer) if answer.result == CacheResult::Coalesced => {
                (Ok(answer.manifest), Role::Followed)
            }
            Ok(answer) => (Ok(answer.manifest), Role::Led),
            Err(e) => (Err(e), Role::Led),
        })
    }

    /// Serves a cached tag when the upstream is down or limiting (if allowed), else the error.
    /// With [`Defer::Yes`] the tag is then not revalidated again before another `tag_ttl`.
    fn stale_or(
        &self,
        key: &TagKey,
        manifest: Arc<RawManifest>,
        error: Error,
        defer: Defer,
    ) -> Result<ManifestAnswer, Error> {
        let outage = matches!(&error, Error::Upstream(e) if e.is_outage());
        if outage && self.config.serve_stale {
            let now = self.clock.now();
            // Requests that waited on one revalidation all land here: log it once.
            let first = match defer {
                Defer::Yes => {
                    self.cache
                        .defer_tag(key, &manifest.digest, now, now + self.config.tag_ttl)
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
}

/// Whether serving a tag stale puts off its next revalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defer {
    Yes,
    No,
}

fn miss_or_coalesced(role: Role) -> CacheResult {
    match role {
        Role::Led => CacheResult::Miss,
        Role::Followed => CacheResult::Coalesced,
    }
}
