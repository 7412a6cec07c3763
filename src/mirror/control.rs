//! What an operator asks of the mirror from outside (the admin API): a tag refreshed now,
//! whatever its age, and tags, manifests or a whole repository purged. Blobs are left to the
//! LRU: they are content-addressed and verified (a blob cannot be poisoned, only unwanted),
//! shared between images and repositories (base layers), reachable only by digest once no
//! manifest names them, and telling which no other cached manifest names would mean reading
//! every one of them.

use std::sync::Arc;

use super::state::Mirror;
use crate::cache::{CachedImage, TagKey, Variant};
use crate::error::{ClientError, Error};
use crate::metrics::RepositoryUsage;
use crate::oci::manifest::ManifestDoc;
use crate::oci::media::Accept;
use crate::oci::{Digest, Reference, RepoName, Tag};
use crate::upstream::{Upstream, UpstreamError};

/// What of a repository an operator names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Tag(Tag),
    Digest(Digest),
    /// Every cached tag (`repo:*`).
    Repository,
}

/// One variant of a tag after a refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    pub tag: Tag,
    pub digest: Digest,
    pub media_type: String,
    /// What this variant pointed to before, if it was cached.
    pub previous: Option<Digest>,
}

/// What a purge took out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purged {
    pub tags: Vec<Tag>,
    pub manifests: Vec<Digest>,
}

impl Mirror {
    /// Asks the upstream for `scope`'s tags now, whatever their age (an uncached tag is
    /// fetched), and records what it says.
    pub async fn refresh(
        self: &Arc<Self>,
        registry: &str,
        repo: &RepoName,
        scope: &Scope,
    ) -> Result<Vec<Refreshed>, Error> {
        let upstream = self.upstream(Some(registry), repo)?.clone();
        let tags = match scope {
            Scope::Tag(tag) => vec![tag.clone()],
            Scope::Repository => self.cached_tags(&upstream, repo).await?,
            Scope::Digest(_) => {
                return Err(ClientError::BadRequest(
                    "a digest never changes: refresh a tag, or every tag with repo:*".into(),
                )
                .into())
            }
        };
        let mut refreshed = Vec::new();
        for tag in tags {
            match self.refresh_tag(&upstream, repo, tag).await {
                Ok(variants) => refreshed.extend(variants),
                // Of a whole repository, a tag gone upstream is forgotten, and the rest go on.
                Err(Error::Client(ClientError::ManifestUnknown)) if *scope == Scope::Repository => {
                }
                Err(e) => return Err(e),
            }
        }
        Ok(refreshed)
    }

    /// [`Mirror::refresh`] of one tag, if this cache holds it (`None` when it does not: a
    /// registry announces every push, and most tags were never pulled through here).
    pub async fn refresh_if_cached(
        self: &Arc<Self>,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Vec<Refreshed>>, Error> {
        let upstream = self.upstream(Some(registry), repo)?.clone();
        let key = TagKey {
            upstream: upstream.name().into(),
            repo: repo.clone(),
            tag: tag.clone(),
        };
        if self.cache.tag_variants(&key).await?.is_empty() {
            return Ok(None);
        }
        self.refresh_tag(&upstream, repo, tag.clone())
            .await
            .map(Some)
    }

    /// Every cached tag's variants, sorted by reference, and what of each is on disk.
    pub async fn images(&self) -> Result<Vec<CachedImage>, Error> {
        Ok(self.cache.images().await?)
    }

    /// What clients were served from the cache of `registry`'s `repo` since start (counted
    /// from now on if new); `None` for a repository no upstream mirrors, or past the bound.
    pub fn usage_of(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
    ) -> Option<Arc<RepositoryUsage>> {
        let upstream = self.upstream(registry, repo).ok()?;
        self.metrics
            .usage
            .repository(upstream.name(), repo.as_str())
    }

    /// The name of the upstream a registry calling itself `host` is, if one is.
    pub fn upstream_named_for(&self, host: &str) -> Option<String> {
        self.upstreams.for_host(host).map(|u| u.name().to_owned())
    }

    /// Every variant of one tag (one per kind of client that asked for it) fetched again.
    async fn refresh_tag(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: Tag,
    ) -> Result<Vec<Refreshed>, Error> {
        let key = TagKey {
            upstream: upstream.name().into(),
            repo: repo.clone(),
            tag: tag.clone(),
        };
        let known = self.cache.tag_variants(&key).await?;
        let mut accepts: Vec<Accept> = Vec::new();
        for variant in &known {
            if !accepts.contains(&variant.asked_with) {
                accepts.push(variant.asked_with.clone());
            }
        }
        if accepts.is_empty() {
            accepts.push(Accept::all_manifests());
        }
        let reference = Reference::Tag(tag.clone());
        let mut refreshed = Vec::new();
        for accept in accepts {
            let asked_at = self.clock.now();
            let (fetched, _) = self
                .fetch_manifest(upstream, Vec::new(), repo, &reference, &accept)
                .await;
            let manifest = match fetched {
                Ok(manifest) => manifest,
                Err(Error::Upstream(UpstreamError::NotFound)) => {
                    self.cache.forget_tag(&key);
                    return Err(ClientError::ManifestUnknown.into());
                }
                Err(e) => return Err(e),
            };
            let previous = known
                .iter()
                .find(|v| v.asked_with == accept)
                .map(|v| v.digest.clone());
            let media_type = manifest.media_type_essence().to_owned();
            let variant = Variant {
                digest: manifest.digest.clone(),
                media_type: media_type.clone(),
                asked_with: accept,
                fetched_at: asked_at,
                revalidate_after: None,
            };
            self.cache
                .record_tag(key.clone(), variant, previous.as_ref());
            refreshed.push(Refreshed {
                tag: tag.clone(),
                digest: manifest.digest.clone(),
                media_type,
                previous,
            });
        }
        Ok(refreshed)
    }

    /// Takes `scope` out of the cache: its tags first (so nothing serves it by tag while the
    /// rest goes), then the manifests they named and those an index of them lists. Unknown to
    /// the cache: `404`.
    pub async fn purge(
        self: &Arc<Self>,
        registry: &str,
        repo: &RepoName,
        scope: &Scope,
    ) -> Result<Purged, Error> {
        let upstream = self.upstream(Some(registry), repo)?.clone();
        let name: Arc<str> = upstream.name().into();
        let mut tags = Vec::new();
        let mut roots: Vec<Digest> = Vec::new();
        let candidates = match scope {
            Scope::Tag(tag) => {
                let key = TagKey {
                    upstream: name.clone(),
                    repo: repo.clone(),
                    tag: tag.clone(),
                };
                let variants = self.cache.tag_variants(&key).await?;
                vec![(key, variants)]
            }
            Scope::Digest(_) | Scope::Repository => self.cache.tags_of(&name, repo).await?,
        };
        for (key, variants) in candidates {
            let named = match scope {
                Scope::Digest(digest) => variants.iter().any(|v| v.digest == *digest),
                Scope::Tag(_) | Scope::Repository => !variants.is_empty(),
            };
            if !named {
                continue;
            }
            for variant in variants {
                if !roots.contains(&variant.digest) {
                    roots.push(variant.digest);
                }
            }
            self.cache.purge_tag(&key).await?;
            tags.push(key.tag);
        }
        if let Scope::Digest(digest) = scope {
            // Only what the tags named is gone with them; the digest asked for goes whatever.
            roots.retain(|d| d == digest);
            if roots.is_empty() {
                roots.push(digest.clone());
            }
        }
        let mut manifests = Vec::new();
        for root in roots {
            let listed = match self.cache.manifest(&root).await? {
                Some(m) => match ManifestDoc::parse(m.media_type_essence(), &m.body) {
                    Ok(ManifestDoc::Index(children)) => children,
                    _ => Vec::new(),
                },
                None => Vec::new(),
            };
            let digests = std::iter::once(root).chain(listed.into_iter().map(|c| c.digest));
            for digest in digests {
                if self.cache.purge_manifest(&digest).await? && !manifests.contains(&digest) {
                    manifests.push(digest);
                }
            }
        }
        if tags.is_empty() && manifests.is_empty() {
            return Err(ClientError::ManifestUnknown.into());
        }
        Ok(Purged { tags, manifests })
    }

    /// The tags of `repo` the cache holds; none is `404`.
    async fn cached_tags(&self, upstream: &Upstream, repo: &RepoName) -> Result<Vec<Tag>, Error> {
        let tags: Vec<Tag> = self
            .cache
            .tags_of(upstream.name(), repo)
            .await?
            .into_iter()
            .map(|(key, _)| key.tag)
            .collect();
        if tags.is_empty() {
            return Err(ClientError::ManifestUnknown.into());
        }
        Ok(tags)
    }
}
