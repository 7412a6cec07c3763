//! How a fill is fed: from the digest's owner peers first, then the upstream, carrying on from
//! the byte where a source broke off (a tier below, or an owner that went away), so a client
//! reading the fill never sees the change of source.

use std::sync::Arc;

use super::feed::Fed;
use super::owners::{ask_owner_first, Owner};
use super::state::Mirror;
use crate::cache::{Resume, SourceFailure, TierFeed};
use crate::error::Error;
use crate::metrics::Source;
use crate::oci::{Digest, RepoName};
use crate::upstream::{Span, Upstream, UpstreamError};

/// Who feeds a fill this request started.
pub(super) enum Feeding {
    /// The digest's owner or the upstream, from the start.
    Source(Resume),
    /// A tier below; if it breaks off, the owner or the upstream carries on.
    Tier(TierFeed),
}

impl Mirror {
    /// Streams a blob from the upstream (or the digest's owner) into a fill, from byte
    /// `resume.at` on (where a tier below broke off, or 0). Runs to the end whether or not
    /// anyone is still reading.
    pub(super) async fn run_fill(
        &self,
        upstream: &Arc<Upstream>,
        sources: &[Owner],
        repo: &RepoName,
        digest: &Digest,
        resume: Resume,
    ) {
        self.metrics.fills_in_flight.inc();
        let outcome = self
            .feed_fill(upstream, sources, repo, digest, resume)
            .await;
        match outcome {
            Ok(()) => tracing::debug!(%digest, "blob cached"),
            Err(Error::Cache(e)) if e.is_verification_failure() => {
                self.metrics.digest_mismatches.inc();
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "upstream blob failed verification; not cached");
            }
            // The store logged the disk's condition once; a line per fill would be noise.
            Err(Error::Cache(e)) if e.is_unwritable() => {
                tracing::debug!(%digest, error = %e, "blob fill stopped: the cache takes no writes");
            }
            Err(e) => {
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fill failed; not cached");
            }
        }
        self.metrics.fills_in_flight.dec();
    }

    /// Feeds the fill from the first of `sources` (the digest's owner peers) that serves the
    /// blob, else from the upstream, until the end, or the first failure the stream could not
    /// resume from (which the fill's readers see too). A peer that fails part-way is passed
    /// over: the next source carries on from where it stopped, under the same running hash.
    /// A large blob from a slow upstream is fetched in segments at once, when the upstream
    /// serves ranges. A fill resumed part-way keeps the source its readers were told of.
    async fn feed_fill(
        &self,
        upstream: &Arc<Upstream>,
        sources: &[Owner],
        repo: &RepoName,
        digest: &Digest,
        resume: Resume,
    ) -> Result<(), Error> {
        let owners = self.owners.as_deref();
        let mut sources = sources;
        let Resume {
            writer,
            at: mut from,
            mut total,
        } = resume;
        loop {
            let span = Span {
                start: from,
                end: None,
            };
            let opened = ask_owner_first(owners, sources, upstream, |source| async move {
                source.blob(repo, digest, span).await
            })
            .await;
            let opened = match opened {
                Ok(opened) if from > 0 && opened.answer.total() != total => {
                    Err(UpstreamError::Invalid {
                        upstream: opened.via.label().into(),
                        reason: format!(
                            "the blob's length is {:?}, not {total:?}",
                            opened.answer.total()
                        ),
                    })
                }
                opened => opened,
            };
            let answer = match opened {
                Ok(answer) => answer,
                Err(e) => {
                    tracing::info!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fetch failed");
                    writer.fail(SourceFailure::new(e.clone())).await;
                    return Err(e.into());
                }
            };
            if from == 0 {
                self.access.record(upstream, repo, digest);
                total = answer.answer.total();
                let from = match answer.peer {
                    Some(_) => Source::Peer,
                    None => Source::Upstream,
                };
                writer.start(total, from).await;
                // The node that takes it from the upstream hands it to the shared tier, the
                // upload streaming beside the fill.
                if answer.peer.is_none() {
                    self.cache.share(digest);
                }
            }
            let fed =
                super::feed::feed(&answer.via, repo, digest, answer.answer, &writer, from).await;
            match fed {
                Ok(()) => {
                    writer.finish().await?;
                    // An owner that broke off left the rest to the upstream: this node took
                    // part of it from there, and shares what it committed.
                    if from > 0 && answer.peer.is_none() {
                        self.cache.share(digest);
                    }
                    return Ok(());
                }
                // A peer that broke off: the rest comes from the next source.
                Err(Fed::Source(e, Some(at))) if e.is_transient() && answer.peer.is_some() => {
                    let failed = answer.peer.unwrap_or_default();
                    if let Some(owners) = owners {
                        owners.pass_over(&sources[failed], &e, failed + 1 < sources.len());
                    }
                    sources = &sources[failed + 1..];
                    from = at;
                }
                Err(Fed::Source(e, _)) => {
                    writer.fail(SourceFailure::new(e.clone())).await;
                    return Err(e.into());
                }
                Err(Fed::Cache(e)) => return Err(e.into()),
            }
        }
    }
}
