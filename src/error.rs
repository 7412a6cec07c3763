//! The crate error of a request: which side failed (the client, the upstream, the cache, or
//! wharf itself), lifting each layer's own error as it is. Carries no HTTP types: [`Failure`]
//! says what a response must tell, and `server::response` is the one place that turns it into
//! a status and a body.

use crate::cache;
use crate::oci::{DigestError, ImageRefError, NameError, ReferenceError};
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it unchanged cannot help.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The upstream registry failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Fetched bytes failed verification, or the disk could not take or give them.
    #[error(transparent)]
    Cache(cache::Error),
    /// A task of wharf's own panicked (a bug); the client did nothing wrong.
    #[error("internal error: the {0} panicked")]
    Panicked(&'static str),
}

impl From<cache::Error> for Error {
    /// A fill fed from the upstream carries the upstream's own error to every reader: it is
    /// lifted back to what it was, so a coalesced client gets the answer the first one got.
    fn from(e: cache::Error) -> Self {
        if let cache::Error::Source(failure) = &e {
            if let Some(upstream) = failure.downcast_ref::<UpstreamError>() {
                return Error::Upstream(upstream.clone());
            }
        }
        Error::Cache(e)
    }
}

/// What the response to a failed request must say, as the layer that failed decided it.
#[derive(Debug, Clone, Copy)]
pub enum Failure<'a> {
    /// The client's mistake, or a refusal of it.
    Client(&'a ClientError),
    /// The upstream does not have it.
    UpstreamNotFound,
    /// The upstream refused wharf's credentials or denied access.
    UpstreamDenied,
    /// The upstream is rate limiting; pass its wait on.
    UpstreamRateLimited { retry_after: Option<&'a str> },
    /// The upstream cannot be reached.
    UpstreamUnreachable,
    /// The upstream stalled while answering.
    UpstreamTimedOut,
    /// The upstream answered with an error, or sent what failed verification.
    BadGateway,
    /// wharf is short of descriptors or memory for a moment; worth trying again soon.
    Busy,
    /// wharf itself failed.
    Internal,
}

impl Error {
    pub fn failure(&self) -> Failure<'_> {
        match self {
            Error::Client(e) => Failure::Client(e),
            Error::Upstream(e) => match e {
                UpstreamError::NotFound => Failure::UpstreamNotFound,
                UpstreamError::Unauthorized { .. } | UpstreamError::Denied { .. } => {
                    Failure::UpstreamDenied
                }
                UpstreamError::TooManyRequests { retry_after, .. } => {
                    Failure::UpstreamRateLimited {
                        retry_after: retry_after.as_deref(),
                    }
                }
                UpstreamError::Unreachable { .. } => Failure::UpstreamUnreachable,
                UpstreamError::Timeout { .. } => Failure::UpstreamTimedOut,
                UpstreamError::Status { .. } | UpstreamError::Invalid { .. } => Failure::BadGateway,
            },
            Error::Cache(e) if e.is_verification_failure() => Failure::BadGateway,
            Error::Cache(cache::Error::Busy(_)) => Failure::Busy,
            Error::Cache(_) | Error::Panicked(_) => Failure::Internal,
        }
    }

    /// Whether the upstream refused or failed (logged as a warning, not as wharf's error).
    pub fn is_upstream(&self) -> bool {
        matches!(self, Error::Upstream(_))
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    #[error("invalid repository name: {0}")]
    Name(#[from] NameError),
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
    #[error("invalid reference: {0}")]
    Reference(#[from] ReferenceError),
    #[error("registry {0:?} is not mirrored here")]
    UnknownRegistry(String),
    #[error("repository {0} is not mirrored here")]
    RepositoryNotAllowed(String),
    /// A `[[policy]]` rule in `enforce` mode refused the manifest: why, in words.
    #[error("refused by policy {rule:?}: {why}")]
    NotSigned { rule: String, why: String },
    #[error("{who} may not pull {repo}: no grant gives it")]
    NotGranted { who: String, repo: String },
    #[error("this mirror does not serve the client's address")]
    AddressNotAllowed,
    #[error("authentication required")]
    Unauthenticated,
    #[error("too many requests from this address; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0} is not supported by this pull-through mirror")]
    Unsupported(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("no such endpoint")]
    NotFound,
    /// A request of the admin API or a webhook that says nothing usable.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    ImageRef(#[from] ImageRefError),
    /// The admin API without a valid admin token.
    #[error("an admin token is required")]
    AdminUnauthenticated,
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        Error::Client(e.into())
    }
}

impl From<DigestError> for Error {
    fn from(e: DigestError) -> Self {
        Error::Client(e.into())
    }
}

impl From<ReferenceError> for Error {
    fn from(e: ReferenceError) -> Self {
        Error::Client(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::SourceFailure;

    fn upstream(e: UpstreamError) -> Error {
        Error::from(e)
    }

    #[test]
    fn each_upstream_error_decides_its_failure() {
        let name = || "u".into();
        assert!(matches!(
            upstream(UpstreamError::NotFound).failure(),
            Failure::UpstreamNotFound
        ));
        assert!(matches!(
            upstream(UpstreamError::Unreachable {
                upstream: name(),
                reason: "refused".into()
            })
            .failure(),
            Failure::UpstreamUnreachable
        ));
        assert!(matches!(
            upstream(UpstreamError::Timeout { upstream: name() }).failure(),
            Failure::UpstreamTimedOut
        ));
        assert!(matches!(
            upstream(UpstreamError::Status {
                upstream: name(),
                status: 500
            })
            .failure(),
            Failure::BadGateway
        ));
        let limited = upstream(UpstreamError::TooManyRequests {
            upstream: name(),
            retry_after: Some("17".into()),
        });
        assert!(matches!(
            limited.failure(),
            Failure::UpstreamRateLimited {
                retry_after: Some("17")
            }
        ));
    }

    #[test]
    fn an_upstream_error_that_rode_a_fill_is_lifted_back_to_what_it_was() {
        let rode = cache::Error::Source(SourceFailure::new(UpstreamError::NotFound));
        let lifted = Error::from(rode);
        assert!(matches!(lifted, Error::Upstream(UpstreamError::NotFound)));
        assert!(matches!(lifted.failure(), Failure::UpstreamNotFound));
    }

    #[test]
    fn bytes_that_failed_verification_are_the_upstreams_fault_a_disk_is_wharfs() {
        let mismatch = Error::from(cache::Error::LengthMismatch {
            declared: 2,
            received: 1,
        });
        assert!(matches!(mismatch.failure(), Failure::BadGateway));
        let disk = Error::from(cache::Error::NoSpace(1));
        assert!(matches!(disk.failure(), Failure::Internal));
    }
}
