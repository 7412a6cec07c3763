//! What keep-warm rules ask of the mirror: a repository's tags as the upstream lists them now,
//! a tag as the upstream has it now, and whether a rule runs on this node. The warming itself
//! goes through the same manifest and blob paths as clients' pulls, so it shares their fills.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::manifests::ManifestAnswer;
use super::owners::Origin;
use super::state::Mirror;
use crate::error::Error;
use crate::metrics::CacheResult;
use crate::oci::media::Accept;
use crate::oci::{Digest, Listing, Reference, RepoName, Tag};
use crate::upstream::UpstreamError;

/// The most pages of `tags/list` one listing follows (a registry that pages forever is cut).
const MAX_PAGES: usize = 100;

#[derive(Deserialize)]
struct TagsPage {
    #[serde(default)]
    tags: Option<Vec<String>>,
}

impl Mirror {
    /// Every tag of `registry`'s `repo` as its upstream lists it now (never a cached listing),
    /// following its pages.
    pub async fn list_tags_now(&self, registry: &str, repo: &RepoName) -> Result<Vec<Tag>, Error> {
        let upstream = self.upstream(Some(registry), repo)?;
        let mut tags: Vec<Tag> = Vec::new();
        let mut last = None;
        for _ in 0..MAX_PAGES {
            let listing = Listing::Tags { n: None, last };
            let page = upstream.listing(repo, &listing).await?;
            let listed: TagsPage =
                serde_json::from_slice(&page.body).map_err(|e| UpstreamError::Invalid {
                    upstream: upstream.name().into(),
                    reason: format!("tags/list: {e}"),
                })?;
            let listed = listed.tags.unwrap_or_default();
            // A name that is no valid tag is skipped, not fatal: the rest can still be warmed.
            tags.extend(listed.iter().filter_map(|t| t.parse().ok()));
            match (page.link.is_some(), listed.last()) {
                (true, Some(tag)) => last = Some(tag.clone()),
                _ => break,
            }
        }
        Ok(tags)
    }

    /// `tag` as the upstream has it now: revalidated whatever its age (a `HEAD`, which
    /// registries do not count against pull quotas), fetched only when it moved, and checked by
    /// the policy like a client's pull. A stale answer (the upstream did not answer) is an error.
    pub async fn tag_now(
        self: &Arc<Self>,
        registry: &str,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<ManifestAnswer, Error> {
        let upstream = self.upstream(Some(registry), repo)?;
        let reference = Reference::Tag(tag.clone());
        let accept = Accept::all_manifests();
        let answer = self
            .manifest_from(
                upstream,
                repo,
                &reference,
                &accept,
                Origin::Client,
                Duration::ZERO,
            )
            .await?;
        if answer.result == CacheResult::Stale {
            return Err(UpstreamError::Unreachable {
                upstream: upstream.name().into(),
                reason: "only a stale copy of the tag could be had".into(),
            }
            .into());
        }
        Box::pin(self.enforce_policy(upstream, repo, &answer.manifest)).await?;
        Ok(answer)
    }

    /// Whether the work keyed by `key` runs on this node: always without a cluster; in one,
    /// when no node that ranks before this one for `key` is up (the owner by the rendezvous
    /// hash, or whoever takes over while it is down).
    pub fn runs_here(&self, key: &Digest) -> bool {
        self.owners
            .as_ref()
            .map_or(true, |owners| owners.members().ahead_of_me(key).is_empty())
    }
}
