//! Only signed manifests: in a repository a `[[policy]]` rule covers, a manifest is served only
//! once one of its signatures verifies under the rule's keys. The signatures (cosign's `.sig`
//! tag and its payloads, sigstore bundles found through the referrers API or its fallback tag)
//! are fetched through the mirror's own paths, so they are cached like anything else and an
//! edge tier finds them at its regional tier. Verdicts are kept per rule, repository and
//! digest, so a warm pull does no signature work.

use std::sync::Arc;
use std::time::Duration;

use super::blobs::BlobBytes;
use super::owners::Origin;
use super::state::Mirror;
use super::verdicts::{Allowed, Verdict};
use crate::cache::ListedKey;
use crate::config::PolicyMode;
use crate::error::{ClientError, Error};
use crate::oci::manifest::{Descriptor, ManifestDoc};
use crate::oci::media::{Accept, OCI_INDEX};
use crate::oci::{Digest, Listing, RawManifest, Reference, RepoName, Tag};
use crate::policy::{self, bundle, classic, Refusal, Rule};
use crate::upstream::{Upstream, UpstreamError};
use bytes::{Bytes, BytesMut};

/// How long a refusal stands: long enough that a client retrying a refused pull costs no
/// signature lookups each time, short enough that an image signed just after its push is
/// served within seconds.
const REFUSAL_TTL: Duration = Duration::from_secs(10);
/// Signature payloads and bundles are a few KiB; anything larger is not one.
const MAX_SIGNATURE_BYTES: u64 = 1 << 20;
/// Signatures looked at per manifest, at most, in each layout.
const MAX_SIGNATURES: usize = 16;

/// What a verdict is about: a repository of an upstream, and the rule that covers it.
#[derive(Clone, Copy)]
struct Covered<'a> {
    upstream: &'a Arc<Upstream>,
    repo: &'a RepoName,
    rule: &'a Rule,
}

impl Covered<'_> {
    /// The key under which the cache records which index lists `manifest` here.
    fn listed(&self, manifest: Digest) -> ListedKey {
        ListedKey {
            upstream: self.upstream.name().into(),
            repo: self.repo.clone(),
            manifest,
        }
    }
}

impl Mirror {
    /// Refuses `manifest` (`403 DENIED`, naming the rule and why) when a rule in `enforce` mode
    /// covers the repository and no signature verifies; in `warn` mode logs and counts it.
    pub(super) async fn enforce_policy(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        manifest: &RawManifest,
    ) -> Result<(), Error> {
        let Some(rule) = self.signatures.policies.covering(upstream.name(), repo) else {
            return Ok(());
        };
        let at = Covered {
            upstream,
            repo,
            rule,
        };
        let why = match self.verdict(at, manifest).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(refusal)) => refusal.to_string(),
            Err(e) if rule.mode == PolicyMode::Enforce => return Err(e),
            Err(e) => format!("its signatures could not be looked up: {e}"),
        };
        self.metrics
            .policy_refusals
            .with_label_values(&[&rule.name, rule.mode.as_str()])
            .inc();
        match rule.mode {
            PolicyMode::Enforce => Err(ClientError::NotSigned {
                rule: rule.name.clone(),
                why,
            }
            .into()),
            PolicyMode::Warn => Ok(()),
        }
    }

    /// The verdict on `manifest` under `rule`: reused while it stands (`verified_ttl`, or
    /// [`REFUSAL_TTL`] for a refusal), else reached again, once for every request that waits
    /// on it. An upstream that fails the lookup is an error, never a verdict.
    async fn verdict(
        self: &Arc<Self>,
        at: Covered<'_>,
        manifest: &RawManifest,
    ) -> Result<Result<Allowed, Refusal>, Error> {
        let Covered {
            upstream,
            repo,
            rule,
        } = at;
        let key = (
            rule.id,
            Arc::from(upstream.name()),
            repo.clone(),
            manifest.digest.clone(),
        );
        let verdicts = &self.signatures.verdicts;
        if let Some(verdict) = verdicts.get(&key).await {
            let stands_for = match verdict.outcome {
                Ok(_) => rule.verified_ttl,
                Err(_) => rule.verified_ttl.min(REFUSAL_TTL),
            };
            let age = self.clock.now().duration_since(verdict.decided_at);
            if age.map_or(true, |age| age < stands_for) {
                return Ok(verdict.outcome);
            }
            verdicts.invalidate(&key).await;
        }
        let verdict = verdicts
            .try_get_with(key, async {
                let decided_at = self.clock.now();
                let outcome = self.decide(at, manifest).await;
                let label = match &outcome {
                    Ok(Ok(allowed)) => allowed.label(),
                    Ok(Err(refusal)) => refusal.label(),
                    Err(_) => "error",
                };
                self.metrics
                    .policy_verifications
                    .with_label_values(&[&rule.name, label])
                    .inc();
                match &outcome {
                    Ok(Err(refusal)) => tracing::warn!(
                        rule = %rule.name, mode = rule.mode.as_str(), upstream = upstream.name(),
                        %repo, digest = %manifest.digest, %refusal, "manifest not signed as the policy requires"
                    ),
                    Err(error) => tracing::warn!(
                        rule = %rule.name, upstream = upstream.name(), %repo,
                        digest = %manifest.digest, %error, "could not look up a manifest's signatures"
                    ),
                    Ok(Ok(_)) => {}
                }
                Ok::<_, Error>(Verdict {
                    decided_at,
                    outcome: outcome?,
                })
            })
            .await
            .map_err(|e| (*e).clone())?;
        Ok(verdict.outcome)
    }

    async fn decide(
        self: &Arc<Self>,
        at: Covered<'_>,
        manifest: &RawManifest,
    ) -> Result<Result<Allowed, Refusal>, Error> {
        let doc = ManifestDoc::parse(manifest.media_type_essence(), &manifest.body).ok();
        if doc.as_ref().is_some_and(policy::holds_only_signatures) {
            return Ok(Ok(Allowed::SignatureObject));
        }
        // Asked first: it costs no upstream request, and a platform manifest of a signed index
        // is rarely signed on its own.
        if Box::pin(self.listed_by_verified_index(at, &manifest.digest)).await? {
            return Ok(Ok(Allowed::ThroughIndex));
        }
        let classic = self.classic_signatures(at, &manifest.digest).await?;
        let refusal = match classic {
            Ok(()) => return Ok(Ok(self.signed(at, manifest, doc))),
            Err(refusal) => refusal,
        };
        match self.bundles(at, manifest).await? {
            Ok(()) => Ok(Ok(self.signed(at, manifest, doc))),
            Err(other) => Ok(Err(refusal.or(other))),
        }
    }

    /// A verified manifest; an index's platform manifests are allowed through it from now.
    fn signed(&self, at: Covered<'_>, manifest: &RawManifest, doc: Option<ManifestDoc>) -> Allowed {
        if let Some(ManifestDoc::Index(children)) = doc {
            let listed = children.into_iter().map(|child| at.listed(child.digest));
            self.record_listing(&manifest.digest, listed);
        }
        Allowed::Signed
    }

    /// Whether an index that lists `digest` in this repository verifies: the one this node
    /// recorded, else one the other nodes recorded.
    async fn listed_by_verified_index(
        self: &Arc<Self>,
        at: Covered<'_>,
        digest: &Digest,
    ) -> Result<bool, Error> {
        let key = at.listed(digest.clone());
        let recorded = self.cache.parent(&key).await;
        if let Some(index) = &recorded {
            if self.verified_parent(at, digest, index).await? {
                return Ok(true);
            }
        }
        for index in self.peers_records(&key).await {
            if Some(&index) != recorded.as_ref() && self.verified_parent(at, digest, &index).await?
            {
                self.cache.record_parent(key, &index);
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `index` lists `digest` and verifies; fetched through the mirror if this node
    /// lacks it.
    async fn verified_parent(
        self: &Arc<Self>,
        at: Covered<'_>,
        digest: &Digest,
        index: &Digest,
    ) -> Result<bool, Error> {
        // A record naming the manifest itself would make its verdict wait on itself.
        if index == digest {
            return Ok(false);
        }
        let reference = Reference::Digest(index.clone());
        let Some(index) = self.unchecked_manifest(at, reference).await? else {
            return Ok(false);
        };
        let lists_it = matches!(
            ManifestDoc::parse(index.media_type_essence(), &index.body),
            Ok(ManifestDoc::Index(children)) if children.iter().any(|c| c.digest == *digest)
        );
        if !lists_it {
            return Ok(false);
        }
        let verdict = self.verdict(at, &index).await?;
        Ok(verdict == Ok(Allowed::Signed))
    }

    /// cosign's classic layout: the `sha256-<hex>.sig` tag in the same repository.
    async fn classic_signatures(
        self: &Arc<Self>,
        at: Covered<'_>,
        digest: &Digest,
    ) -> Result<Result<(), Refusal>, Error> {
        let Ok(tag) = classic::signature_tag(digest).parse::<Tag>() else {
            return Ok(Err(Refusal::NoSignature));
        };
        let Some(signatures) = self.unchecked_manifest(at, Reference::Tag(tag)).await? else {
            return Ok(Err(Refusal::NoSignature));
        };
        let Ok(ManifestDoc::Image { layers, .. }) =
            ManifestDoc::parse(signatures.media_type_essence(), &signatures.body)
        else {
            return Ok(Err(Refusal::BadSignature(
                "the signature tag holds no image manifest".into(),
            )));
        };
        let mut found = Vec::new();
        let payloads = layers
            .iter()
            .filter(|l| l.media_type == classic::PAYLOAD_MEDIA_TYPE)
            .take(MAX_SIGNATURES);
        for layer in payloads {
            let Some(signature) = layer.annotations.get(classic::SIGNATURE_ANNOTATION) else {
                continue;
            };
            match self.signature_blob(at, layer).await? {
                Ok(payload) => found.push((payload, signature.as_str())),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        let signed: Vec<_> = found
            .iter()
            .map(|(payload, signature)| classic::Signed { payload, signature })
            .collect();
        Ok(classic::verify(&signed, digest, &at.rule.keys))
    }

    /// Sigstore bundles among the manifest's referrers: from the referrers API, or from the
    /// fallback tag where the upstream has no such API.
    async fn bundles(
        self: &Arc<Self>,
        at: Covered<'_>,
        manifest: &RawManifest,
    ) -> Result<Result<(), Refusal>, Error> {
        let digest = &manifest.digest;
        let listing = Listing::Referrers {
            digest: digest.clone(),
            artifact_type: None,
        };
        let referrers = match self.listing_from(at.upstream, at.repo, &listing).await {
            Ok(page) => ManifestDoc::parse(OCI_INDEX, &page.body),
            Err(Error::Upstream(UpstreamError::NotFound)) => {
                let Ok(tag) = bundle::referrers_tag(digest).parse::<Tag>() else {
                    return Ok(Err(Refusal::NoSignature));
                };
                match self.unchecked_manifest(at, Reference::Tag(tag)).await? {
                    Some(index) => ManifestDoc::parse(index.media_type_essence(), &index.body),
                    None => return Ok(Err(Refusal::NoSignature)),
                }
            }
            Err(e) => return Err(e),
        };
        let Ok(ManifestDoc::Index(referrers)) = referrers else {
            return Ok(Err(Refusal::BadSignature(
                "the referrers of the manifest are not an index".into(),
            )));
        };
        let mut refusal = Refusal::NoSignature;
        let bundles = referrers
            .iter()
            .filter(|r| r.artifact_type.as_deref() == Some(bundle::ARTIFACT_TYPE))
            .take(MAX_SIGNATURES);
        for referrer in bundles {
            let reference = Reference::Digest(referrer.digest.clone());
            let Some(holder) = self.unchecked_manifest(at, reference).await? else {
                continue;
            };
            let Ok(ManifestDoc::Image { layers, .. }) =
                ManifestDoc::parse(holder.media_type_essence(), &holder.body)
            else {
                continue;
            };
            for layer in layers
                .iter()
                .filter(|l| bundle::is_bundle_type(&l.media_type))
            {
                let verified = match self.signature_blob(at, layer).await? {
                    Ok(json) => bundle::verify(&json, digest, &manifest.body, &at.rule.keys),
                    Err(refusal) => Err(refusal),
                };
                match verified {
                    Ok(()) => return Ok(Ok(())),
                    Err(other) => refusal = refusal.or(other),
                }
            }
        }
        Ok(Err(refusal))
    }

    /// A manifest by tag or digest as the mirror has it, unchecked (a signature manifest, or
    /// an index whose own verdict is asked for); one by tag is revalidated when older than the
    /// rule's `verified_ttl` (so a signature removed upstream stops counting). `None` when
    /// there is no such manifest.
    async fn unchecked_manifest(
        self: &Arc<Self>,
        at: Covered<'_>,
        reference: Reference,
    ) -> Result<Option<Arc<RawManifest>>, Error> {
        let answer = self
            .manifest_from(
                at.upstream,
                at.repo,
                &reference,
                &Accept::all_manifests(),
                Origin::Client,
                self.config.tag_ttl.min(at.rule.verified_ttl),
            )
            .await;
        match answer {
            Ok(answer) => Ok(Some(answer.manifest)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A signature's payload or bundle, through the cache like any blob.
    async fn signature_blob(
        self: &Arc<Self>,
        at: Covered<'_>,
        layer: &Descriptor,
    ) -> Result<Result<Bytes, Refusal>, Error> {
        let too_large = || {
            Refusal::BadSignature(format!(
                "a signature of more than {MAX_SIGNATURE_BYTES} bytes"
            ))
        };
        if layer.size > MAX_SIGNATURE_BYTES {
            return Ok(Err(too_large()));
        }
        let answer = match self
            .blob_from(at.upstream, at.repo, &layer.digest, None, Origin::Client)
            .await
        {
            Ok(answer) => answer,
            Err(e) if is_not_found(&e) => {
                return Ok(Err(Refusal::BadSignature(format!(
                    "the signature blob {} is missing",
                    layer.digest
                ))))
            }
            Err(e) => return Err(e),
        };
        let mut body = match answer.bytes {
            BlobBytes::Ranged(blob) => blob.part(0, None),
            BlobBytes::Whole(body) => body,
        };
        let mut bytes = BytesMut::new();
        while let Some(chunk) = body.next_bytes().await? {
            if (bytes.len() + chunk.len()) as u64 > MAX_SIGNATURE_BYTES {
                return Ok(Err(too_large()));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Ok(bytes.freeze()))
    }
}

fn is_not_found(e: &Error) -> bool {
    matches!(
        e,
        Error::Upstream(UpstreamError::NotFound)
            | Error::Client(ClientError::ManifestUnknown | ClientError::BlobUnknown)
    )
}
