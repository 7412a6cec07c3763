//! What can go wrong in the cache: bytes that fail verification, a disk that cannot take or give
//! them, a fill that ended without a verdict, and a failure of whatever fed a fill, carried as
//! it was given. Clone, because one fill's failure reaches every reader of it.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::oci::{Digest, Verifier};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("length mismatch: upstream declared {declared} bytes, sent {received}")]
    LengthMismatch { declared: u64, received: u64 },
    #[error("the fill ended with bytes missing after byte {contiguous}")]
    Gaps { contiguous: u64 },
    #[error("cache write failed: {0}")]
    Write(#[source] Arc<io::Error>),
    #[error("reading the cache: {0}")]
    Read(#[source] Arc<io::Error>),
    #[error("not enough free disk space to cache {0} bytes")]
    NoSpace(u64),
    /// Out of file descriptors or memory for a moment: nothing is wrong with the cache, and
    /// the request may be tried again shortly.
    #[error("the cache is short of resources for the moment: {0}")]
    Busy(#[source] Arc<io::Error>),
    #[error("the fill was abandoned before it finished")]
    Abandoned,
    #[error("the fill stopped without a verdict")]
    NoVerdict,
    /// Whatever fed the fill (the upstream, a peer) failed; its error, as the feeder gave it.
    #[error(transparent)]
    Source(SourceFailure),
    #[error(transparent)]
    Shared(Arc<super::shared::SharedSetupError>),
    #[error("cannot open cache directory {}: {source}", dir.display())]
    Open {
        dir: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
}

impl Error {
    pub(crate) fn write(e: io::Error) -> Error {
        Error::Write(Arc::new(e))
    }

    pub(crate) fn read(e: io::Error) -> Error {
        Error::Read(Arc::new(e))
    }

    /// An error opening or creating a cache file: `Busy` when it is a passing shortage.
    pub(crate) fn opening(e: io::Error) -> Error {
        if super::store::is_transient(&e) {
            Error::Busy(Arc::new(e))
        } else {
            Error::Read(Arc::new(e))
        }
    }

    /// The cache could not give the bytes it holds (as opposed to not holding them): they can
    /// still be streamed from the upstream.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Error::Read(_))
    }

    /// The cache could not take the bytes (as opposed to the bytes being wrong): the blob can
    /// still be streamed to clients without caching it.
    pub fn is_unwritable(&self) -> bool {
        matches!(self, Error::Write(_) | Error::NoSpace(_))
    }

    /// The bytes the source sent were not the blob asked for.
    pub fn is_verification_failure(&self) -> bool {
        matches!(
            self,
            Error::DigestMismatch { .. } | Error::LengthMismatch { .. } | Error::Gaps { .. }
        )
    }
}

/// Whether `received` bytes that hashed as `verifier` are the blob `expected`, of the length
/// the source `declared` (if it did). The one check a fill and a pass-through both make.
pub fn check_blob(
    expected: &Digest,
    verifier: Verifier,
    received: u64,
    declared: Option<u64>,
) -> Result<(), Error> {
    if let Some(declared) = declared.filter(|&d| d != received) {
        return Err(Error::LengthMismatch { declared, received });
    }
    let actual = verifier.finish();
    if actual != *expected {
        return Err(Error::DigestMismatch {
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

/// A feeder's error, type-erased so the cache need not know the feeder. The feeder gets its
/// own error back with [`SourceFailure::downcast_ref`].
#[derive(Debug, Clone)]
pub struct SourceFailure(Arc<dyn std::error::Error + Send + Sync>);

impl SourceFailure {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> SourceFailure {
        SourceFailure(Arc::new(error))
    }

    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.0.downcast_ref()
    }
}

impl std::fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, thiserror::Error)]
    #[error("the feeder's own error")]
    struct Feeder;

    #[test]
    fn a_feeders_error_comes_back_as_it_was_given() {
        let e = Error::Source(SourceFailure::new(Feeder));
        assert_eq!(e.to_string(), "the feeder's own error");
        let Error::Source(failure) = &e else {
            unreachable!()
        };
        assert_eq!(failure.downcast_ref::<Feeder>(), Some(&Feeder));
        assert!(failure.downcast_ref::<io::Error>().is_none());
    }

    #[test]
    fn a_blob_is_checked_for_length_first_then_digest() {
        let digest = Digest::sha256_of(b"abc");
        let hashed = |bytes: &[u8]| {
            let mut v = Verifier::new(digest.algorithm());
            v.update(bytes);
            v
        };
        assert!(check_blob(&digest, hashed(b"abc"), 3, Some(3)).is_ok());
        assert!(check_blob(&digest, hashed(b"abc"), 3, None).is_ok());
        assert!(matches!(
            check_blob(&digest, hashed(b"ab"), 2, Some(3)),
            Err(Error::LengthMismatch {
                declared: 3,
                received: 2
            })
        ));
        assert!(matches!(
            check_blob(&digest, hashed(b"abd"), 3, None),
            Err(Error::DigestMismatch { .. })
        ));
    }

    #[test]
    fn io_errors_keep_their_source() {
        let e = Error::write(io::Error::other("disk on fire"));
        let source = std::error::Error::source(&e).unwrap();
        assert_eq!(source.to_string(), "disk on fire");
        assert!(e.is_unwritable());
    }
}
