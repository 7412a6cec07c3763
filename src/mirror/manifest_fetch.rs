//! Manifests from the upstream: one coalesced `HEAD` to revalidate a tag, one coalesced `GET`
//! (asked of the digest's owner peers first) verified against its digest and stored.

use std::sync::Arc;

use super::flights::Role;
use super::owners::{ask_owner_first, Owner};
use super::state::Mirror;
use crate::cache::{self, TagKey};
use crate::error::Error;
use crate::oci::media::Accept;
use crate::oci::{Algorithm, Digest, RawManifest, Reference, RepoName, Verifier};
use crate::upstream::{Upstream, Verb};

impl Mirror {
    /// One coalesced `HEAD` for a tag: the digest the upstream has now (if it said).
    pub(super) async fn revalidate(
        &self,
        upstream: &Arc<Upstream>,
        key: &TagKey,
        accept: &Accept,
    ) -> Result<Option<Digest>, Error> {
        let reference = Reference::Tag(key.tag.clone());
        let flight_key = (
            key.upstream.clone(),
            key.repo.clone(),
            reference.clone(),
            accept.clone(),
        );
        let (upstream, repo, accept) = (upstream.clone(), key.repo.clone(), accept.clone());
        let (result, _) = self
            .revalidations
            .run(flight_key, move || async move {
                upstream
                    .manifest(&repo, &reference, &accept, Verb::Head)
                    .await
                    .map(|head| head.digest)
                    .map_err(Error::from)
            })
            .await;
        result.unwrap_or(Err(Error::Panicked("tag revalidation")))
    }

    /// One coalesced `GET` of a manifest by tag or digest, verified and stored; asked of
    /// `sources` (the digest's owner peers) first.
    pub(super) async fn fetch_manifest(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        sources: Vec<Owner>,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> (Result<Arc<RawManifest>, Error>, Role) {
        let key = (
            Arc::from(upstream.name()),
            repo.clone(),
            reference.clone(),
            accept.clone(),
        );
        let this = self.clone();
        let (upstream, repo, reference, accept) = (
            upstream.clone(),
            repo.clone(),
            reference.clone(),
            accept.clone(),
        );
        let (result, role) = self
            .manifest_fetches
            .run(key, move || async move {
                this.fetch_and_store_manifest(&upstream, &sources, &repo, &reference, &accept)
                    .await
            })
            .await;
        let result = result.unwrap_or(Err(Error::Panicked("manifest fetch")));
        (result, role)
    }

    async fn fetch_and_store_manifest(
        &self,
        upstream: &Arc<Upstream>,
        sources: &[Owner],
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
    ) -> Result<Arc<RawManifest>, Error> {
        let owners = self.owners.as_deref();
        let response = ask_owner_first(owners, sources, upstream, |source| async move {
            source.manifest(repo, reference, accept, Verb::Get).await
        })
        .await?
        .answer;
        let requested = match reference {
            Reference::Digest(digest) => Some(digest),
            Reference::Tag(_) => None,
        };
        let algorithm = requested
            .or(response.digest.as_ref())
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let mut verifier = Verifier::new(algorithm);
        verifier.update(&response.body);
        let actual = verifier.finish();
        for expected in requested.into_iter().chain(response.digest.iter()) {
            if *expected != actual {
                self.metrics.digest_mismatches.inc();
                return Err(cache::Error::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                }
                .into());
            }
        }
        self.access.record(upstream, repo, &actual);
        let manifest = Arc::new(RawManifest {
            digest: actual,
            media_type: response.media_type,
            body: response.body,
        });
        self.cache.store_manifest(manifest.clone()).await;
        Ok(manifest)
    }
}
