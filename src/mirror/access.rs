//! Content cached through one repository of a private upstream is served through another only
//! once the upstream confirms that repository may read it (a `HEAD` through it). The answers
//! are remembered for a while, and longer still while the upstream is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache as MokaCache;

use crate::error::{ClientError, Error};
use crate::oci::media::Accept;
use crate::oci::{Digest, Reference, RepoName};
use crate::upstream::{Upstream, UpstreamError, Verb};

/// How long an upstream's word that a repository may read content is trusted.
const ACCESS_CONFIRMED_FOR: Duration = Duration::from_secs(10 * 60);
/// How long it is remembered at all: while the upstream is down and cannot be asked again, an
/// older word is better than refusing content the repository was known to read.
const ACCESS_REMEMBERED_FOR: Duration = Duration::from_secs(24 * 60 * 60);

type AccessKey = (Arc<str>, RepoName, Digest);

/// What a confirmation of access asks the upstream about.
#[derive(Debug, Clone, Copy)]
pub enum Content {
    Blob,
    Manifest,
}

/// Repositories a private upstream has confirmed may read a blob or manifest, and when.
pub struct ConfirmedAccess {
    confirmed: MokaCache<AccessKey, Instant>,
}

impl Default for ConfirmedAccess {
    fn default() -> Self {
        ConfirmedAccess {
            confirmed: MokaCache::builder()
                .max_capacity(100_000)
                .time_to_live(ACCESS_REMEMBERED_FOR)
                .build(),
        }
    }
}

impl ConfirmedAccess {
    /// Succeeds when `repo` may read `digest`: always for upstreams that do not confirm access,
    /// otherwise when the upstream said so (a `HEAD` through `repo`) in the last few minutes,
    /// or, while it is down, in the last day. Anything else is refused as unknown (the
    /// content's existence elsewhere is not revealed), and an upstream that cannot be asked
    /// about a repository it never confirmed means a refusal too.
    pub async fn confirm(
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
        // Boxed: the upstream round trip is the rare case, and would otherwise make every
        // cache hit's future as large as its own.
        let asked = match content {
            Content::Blob => Box::pin(upstream.blob_length(repo, digest)).await.map(drop),
            Content::Manifest => Box::pin(upstream.manifest(
                repo,
                &Reference::Digest(digest.clone()),
                &Accept::all_manifests(),
                Verb::Head,
            ))
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
    pub fn record(&self, upstream: &Upstream, repo: &RepoName, digest: &Digest) {
        if upstream.confirms_access() {
            let key = (Arc::from(upstream.name()), repo.clone(), digest.clone());
            self.confirmed.insert(key, Instant::now());
        }
    }
}
