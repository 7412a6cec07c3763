//! A blob streamed from the upstream straight to one client, for when it cannot go through the
//! cache (the cache directory is full or read-only). Verified as it passes, with one chunk held
//! back until the digest is known to match, so a bad body is cut short rather than completed.

use bytes::Bytes;

use crate::cache;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::oci::{Digest, Verifier};
use crate::upstream::BlobStream;

pub struct Passthrough {
    stream: BlobStream,
    digest: Digest,
    verifier: Option<Verifier>,
    received: u64,
    held: Option<Bytes>,
    metrics: Metrics,
}

impl Passthrough {
    pub fn new(stream: BlobStream, digest: Digest, metrics: Metrics) -> Self {
        Passthrough {
            verifier: Some(Verifier::new(digest.algorithm())),
            stream,
            digest,
            received: 0,
            held: None,
            metrics,
        }
    }

    /// The length the upstream declared, if it did.
    pub fn length(&self) -> Option<u64> {
        self.stream.length()
    }

    /// The next chunk; `Ok(None)` once every byte was sent and verified.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(verifier) = self.verifier.as_mut() else {
                return Ok(None);
            };
            match self.stream.next_chunk().await? {
                Some(chunk) => {
                    verifier.update(&chunk);
                    self.received += chunk.len() as u64;
                    if let Some(previous) = self.held.replace(chunk) {
                        return Ok(Some(previous));
                    }
                }
                None => {
                    let verifier = self.verifier.take().expect("checked above");
                    self.verify(verifier)?;
                    return Ok(self.held.take());
                }
            }
        }
    }

    fn verify(&self, verifier: Verifier) -> Result<(), Error> {
        cache::check_blob(&self.digest, verifier, self.received, self.length()).map_err(|e| {
            self.metrics.digest_mismatches.inc();
            tracing::warn!(digest = %self.digest, error = %e, "upstream blob failed verification");
            e.into()
        })
    }
}
