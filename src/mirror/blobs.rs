//! Blobs: from the cache, from a fill already running, from a new fill, or (when the cache takes
//! no writes) straight from the upstream.

use std::sync::Arc;

use bytes::Bytes;

use super::passthrough::Passthrough;
use super::{Content, Mirror};
use crate::cache::{BlobFile, Chunk, CommitError, Fill, FillReader, FillWriter, Joined, ReadError};
use crate::error::{ClientError, Error};
use crate::metrics::{BypassReason, CacheResult, ContentKind};
use crate::oci::{Digest, RepoName};
use crate::upstream::{Upstream, UpstreamError};

/// A blob ready to be read: committed, a fill that has its upstream answer, or an upstream
/// response to pass through.
pub struct BlobAnswer {
    /// `None` when the upstream sent no length (the body is then streamed to its end).
    pub size: Option<u64>,
    pub result: CacheResult,
    source: BlobSource,
}

enum BlobSource {
    Cached(BlobFile),
    Filling(Arc<Fill<Error>>),
    /// Boxed: the rare case, and much larger than the others.
    Upstream(Box<Passthrough>),
}

impl BlobAnswer {
    /// Whether a byte range can be served. A pass-through streams the upstream's body from its
    /// start, so it answers every request with the whole blob (which HTTP allows).
    pub fn serves_ranges(&self) -> bool {
        !matches!(self.source, BlobSource::Upstream(_))
    }

    /// A reader of `start..end` (`end` exclusive; `None` = to the end).
    pub fn into_reader(self, start: u64, end: Option<u64>) -> BlobReader {
        match self.source {
            BlobSource::Cached(blob) => {
                BlobReader::Cache(blob.reader(start, end.unwrap_or(blob.size)))
            }
            BlobSource::Filling(fill) => BlobReader::Cache(fill.reader(start, end)),
            BlobSource::Upstream(passthrough) => BlobReader::Upstream(passthrough),
        }
    }
}

/// The bytes of a blob answer, a chunk at a time.
pub enum BlobReader {
    Cache(FillReader<Error>),
    Upstream(Box<Passthrough>),
}

impl BlobReader {
    /// The next chunk; `Ok(None)` at the end. An error means the response must be cut short.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, Error> {
        match self {
            BlobReader::Cache(reader) => reader.next_chunk().await.map_err(read_error),
            BlobReader::Upstream(passthrough) => passthrough.next_chunk().await,
        }
    }

    /// The next piece of at most `max` bytes, which may be a range of a cached file to send
    /// from the file itself; `Ok(None)` at the end.
    pub async fn next_piece(&mut self, max: usize) -> Result<Option<Chunk>, Error> {
        match self {
            BlobReader::Cache(reader) => reader.next_piece(max).await.map_err(read_error),
            BlobReader::Upstream(passthrough) => {
                Ok(passthrough.next_chunk().await?.map(Chunk::Bytes))
            }
        }
    }
}

fn read_error(e: ReadError<Error>) -> Error {
    match e {
        ReadError::Failed(e) => e,
        ReadError::Io(e) => Error::Internal(format!("reading the cache: {e}")),
    }
}

fn not_found_is_blob_unknown(e: Error) -> Error {
    match e {
        Error::Upstream(UpstreamError::NotFound) => ClientError::BlobUnknown.into(),
        e => e,
    }
}

impl Mirror {
    /// A blob to stream.
    pub async fn blob(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer, Error> {
        let joined = self.fills.join(digest, Error::Fill);
        // Content already here came through some repository; a private upstream must confirm
        // that this one may read it too. A fill started here asks the upstream itself.
        if matches!(joined, Joined::Cached(_) | Joined::Coalesced(_)) {
            self.confirm_access(upstream, repo, digest, Content::Blob)
                .await?;
        }
        let (fill, result) = match joined {
            Joined::Cached(blob) => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Hit);
                return Ok(BlobAnswer {
                    size: Some(blob.size),
                    result: CacheResult::Hit,
                    source: BlobSource::Cached(blob),
                });
            }
            Joined::Unwritable => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Miss);
                return self.passthrough(upstream, repo, digest).await;
            }
            Joined::Coalesced(fill) => (fill, CacheResult::Coalesced),
            Joined::Started(fill, writer) => {
                let this = self.clone();
                let (upstream, repo, digest) = (upstream.clone(), repo.clone(), digest.clone());
                tokio::spawn(async move { this.run_fill(&upstream, &repo, &digest, writer).await });
                (fill, CacheResult::Miss)
            }
        };
        self.metrics.cache_result(ContentKind::Blob, result);
        match fill.started().await {
            // An empty body has no last byte to hold back, and HTTP completes an empty response
            // without reading it: answer only once the fill is verified.
            Ok(Some(0)) => match fill.verdict().await {
                Ok(true) => Ok(BlobAnswer {
                    size: Some(0),
                    result,
                    source: BlobSource::Filling(fill),
                }),
                Ok(false) => Err(Error::Internal("the fill stopped without a verdict".into())),
                Err(e) => Err(e),
            },
            Ok(size) => Ok(BlobAnswer {
                size,
                result,
                source: BlobSource::Filling(fill),
            }),
            // The disk could not take it before any byte was sent: serve it anyway.
            Err(Error::Fill(e)) if e.is_unwritable() => {
                self.passthrough(upstream, repo, digest).await
            }
            Err(e) => Err(not_found_is_blob_unknown(e)),
        }
    }

    /// Streams a blob from the upstream to one client without caching it.
    async fn passthrough(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<BlobAnswer, Error> {
        self.metrics.bypassed(BypassReason::Unwritable);
        let stream = upstream
            .blob(repo, digest)
            .await
            .map_err(|e| not_found_is_blob_unknown(e.into()))?;
        let passthrough = Passthrough::new(stream, digest.clone(), self.metrics.clone());
        Ok(BlobAnswer {
            size: passthrough.length(),
            result: CacheResult::Miss,
            source: BlobSource::Upstream(Box::new(passthrough)),
        })
    }

    /// Streams a blob from the upstream into a fill. Runs to the end whether or not anyone is
    /// still reading.
    async fn run_fill(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        writer: FillWriter<Error>,
    ) {
        self.metrics.fills_in_flight.inc();
        let mut stream = match upstream.blob(repo, digest).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::info!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fetch failed");
                writer.fail(e.into()).await;
                self.metrics.fills_in_flight.dec();
                return;
            }
        };
        self.record_access(upstream, repo, digest);
        writer.start(stream.length()).await;
        let outcome = loop {
            match stream.next_chunk().await {
                Ok(Some(chunk)) => {
                    if let Err(e) = writer.write(chunk).await {
                        break Err(Error::from(e));
                    }
                }
                Ok(None) => break writer.finish().await.map_err(Error::from),
                Err(e) => {
                    writer.fail(e.clone().into()).await;
                    break Err(e.into());
                }
            }
        };
        match outcome {
            Ok(()) => tracing::debug!(%digest, "blob cached"),
            Err(Error::Fill(
                e @ (CommitError::DigestMismatch { .. } | CommitError::LengthMismatch { .. }),
            )) => {
                self.metrics.digest_mismatches.inc();
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "upstream blob failed verification; not cached");
            }
            // The store logged the disk's condition once; a line per fill would be noise.
            Err(Error::Fill(e)) if e.is_unwritable() => {
                tracing::debug!(%digest, error = %e, "blob fill stopped: the cache takes no writes");
            }
            Err(e) => {
                tracing::warn!(upstream = upstream.name(), %repo, %digest, error = %e, "blob fill failed; not cached");
            }
        }
        self.metrics.fills_in_flight.dec();
    }

    /// A blob's size for `HEAD`, without starting a fill on a miss.
    pub async fn blob_size(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheResult), Error> {
        if let Some(blob) = self.store.open_blob(digest) {
            self.confirm_access(upstream, repo, digest, Content::Blob)
                .await?;
            return Ok((Some(blob.size), CacheResult::Hit));
        }
        if let Some(fill) = self.fills.running(digest) {
            if let Ok(size) = fill.started().await {
                self.confirm_access(upstream, repo, digest, Content::Blob)
                    .await?;
                return Ok((size, CacheResult::Coalesced));
            }
        }
        match upstream.blob_length(repo, digest).await {
            Ok(size) => Ok((size, CacheResult::Miss)),
            Err(e) => Err(not_found_is_blob_unknown(e.into())),
        }
    }
}
