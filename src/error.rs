//! The crate error: which side failed (the client, the upstream, or wharf itself). Carries no
//! HTTP types; `server::response` is the one place that turns it into a status and a body.

use crate::cache::CommitError;
use crate::oci::{DigestError, NameError, ReferenceError};
use crate::upstream::UpstreamError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong; retrying it unchanged cannot help.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The upstream registry failed or refused.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// Fetched bytes failed verification or could not be stored.
    #[error(transparent)]
    Fill(#[from] CommitError),
    /// wharf failed (disk, a bug); the client did nothing wrong.
    #[error("internal error: {0}")]
    Internal(String),
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
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("blob unknown")]
    BlobUnknown,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Internal(e.to_string())
    }
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
