//! Blobs: from the cache, from a fill already running, from a new fill fed from the upstream,
//! or (when the cache takes no writes) straight from the upstream.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;

use super::access::Content;
use super::filling::Feeding;
use super::owners::{ask_owner_first, owner_sources, Origin};
use super::passthrough::Passthrough;
use super::side::{SideBody, SideSource};
use super::state::Mirror;
use crate::body::Chunk;
use crate::cache::{BlobHeld, BlobLookup, BlobReader, CachedBlob, Fill, Resume};
use crate::error::{ClientError, Error};
use crate::metrics::{BypassReason, CacheResult, ContentKind, Source};
use crate::oci::{Digest, RepoName};
use crate::upstream::{Span, Upstream, UpstreamError};

/// A blob ready to be read: committed, a fill that has its upstream answer, or an upstream
/// response to pass through.
pub struct BlobAnswer {
    /// `None` when the upstream sent no length (the body is then streamed to its end).
    pub size: Option<u64>,
    pub result: CacheResult,
    /// Where the bytes come from, for the count of bytes served.
    pub source: Source,
    pub bytes: BlobBytes,
}

/// How the bytes of an answer can be read.
pub enum BlobBytes {
    /// Committed or being filled: any span, as many as asked.
    Ranged(RangedBlob),
    /// Straight from the upstream, read once from its start: every request gets the whole
    /// blob (which HTTP allows for a request with a `Range`).
    Whole(BlobBody),
}

/// A blob whose spans can be read, each on its own.
pub struct RangedBlob(Ranged);

enum Ranged {
    Cached(CachedBlob),
    /// Boxed: what a side fetch needs is much larger than a committed blob.
    Filling(Arc<Fill>, Box<SideSource>),
}

impl RangedBlob {
    /// The body of `start..end` (`end` exclusive; `None` = to the end), read on its own. A span
    /// of a fill that the fill will not reach soon is fetched upstream on its own, asked for at
    /// once.
    pub fn part(&self, start: u64, end: Option<u64>) -> BlobBody {
        match &self.0 {
            Ranged::Cached(blob) => BlobBody::Cache(blob.reader(start, end)),
            Ranged::Filling(fill, side) => match side.ahead_of(fill, start, end) {
                Some(side) => BlobBody::Side(Box::new(side)),
                None => BlobBody::Cache(fill.reader(start, end)),
            },
        }
    }
}

/// The bytes of a blob answer, a piece at a time.
pub enum BlobBody {
    Cache(BlobReader),
    /// A range fetched upstream on its own, ahead of the fill.
    Side(Box<SideBody>),
    Upstream(Box<Passthrough>),
}

impl BlobBody {
    /// The next chunk of bytes; `Ok(None)` at the end. An error means the response must be
    /// cut short.
    pub async fn next_bytes(&mut self) -> Result<Option<Bytes>, Error> {
        match self {
            BlobBody::Cache(reader) => Ok(reader.next_chunk().await?),
            BlobBody::Side(side) => Ok(side.next_chunk().await?),
            BlobBody::Upstream(passthrough) => passthrough.next_chunk().await,
        }
    }

    /// The next piece of at most `max` bytes, which may be a range of a cached file to send
    /// from the file itself; `Ok(None)` at the end.
    pub async fn next_piece(&mut self, max: usize) -> Result<Option<Chunk>, Error> {
        match self {
            BlobBody::Cache(reader) => Ok(reader.next_piece(max).await?),
            BlobBody::Side(side) => Ok(side.next_chunk().await?.map(Chunk::Bytes)),
            BlobBody::Upstream(passthrough) => {
                Ok(passthrough.next_chunk().await?.map(Chunk::Bytes))
            }
        }
    }
}

fn not_found_is_blob_unknown(e: Error) -> Error {
    match e {
        Error::Upstream(UpstreamError::NotFound) => ClientError::BlobUnknown.into(),
        e => e,
    }
}

impl Mirror {
    /// A blob to stream. `wanted`: the one range the client asked for, when it named both
    /// ends; far enough into a blob not yet here, it is asked for at once, beside the fill.
    pub async fn blob(
        self: &Arc<Self>,
        registry: Option<&str>,
        repo: &RepoName,
        digest: &Digest,
        wanted: Option<Range<u64>>,
        origin: Origin,
    ) -> Result<BlobAnswer, Error> {
        let upstream = self.upstream(registry, repo)?;
        self.blob_from(upstream, repo, digest, wanted, origin).await
    }

    /// [`Mirror::blob`] of the upstream already chosen.
    pub(super) async fn blob_from(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        wanted: Option<Range<u64>>,
        origin: Origin,
    ) -> Result<BlobAnswer, Error> {
        let lookup = match self.cache.blob(digest).await {
            Ok(lookup) => lookup,
            // Cached, but its file cannot be opened now (the entry is kept): the upstream has it.
            Err(e) if e.is_unreadable() => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Miss);
                return self
                    .passthrough(upstream, repo, digest, BypassReason::Unreadable, origin)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        // Content already here came through some repository; a private upstream must confirm
        // that this one may read it too. A fill started here asks the upstream itself.
        if matches!(
            lookup,
            BlobLookup::Cached(_) | BlobLookup::Coalesced(_) | BlobLookup::FromTier(..)
        ) {
            self.access
                .confirm(upstream, repo, digest, Content::Blob)
                .await?;
        }
        let (fill, result, feeding) = match lookup {
            BlobLookup::Cached(blob) => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Hit);
                return Ok(BlobAnswer {
                    size: Some(blob.size()),
                    result: CacheResult::Hit,
                    source: Source::Cache,
                    bytes: BlobBytes::Ranged(RangedBlob(Ranged::Cached(blob))),
                });
            }
            BlobLookup::NoWrites => {
                self.metrics
                    .cache_result(ContentKind::Blob, CacheResult::Miss);
                return self
                    .passthrough(upstream, repo, digest, BypassReason::Unwritable, origin)
                    .await;
            }
            BlobLookup::Coalesced(fill) => (fill, CacheResult::Coalesced, None),
            BlobLookup::Started(fill, writer) => {
                let feeding = Feeding::Source(Resume {
                    writer,
                    at: 0,
                    total: None,
                });
                (fill, CacheResult::Miss, Some(feeding))
            }
            // Another node's fetch, through the bucket: for this node, a coalesced fill.
            BlobLookup::FromTier(fill, feed) => {
                (fill, CacheResult::Coalesced, Some(Feeding::Tier(feed)))
            }
        };
        self.metrics.cache_result(ContentKind::Blob, result);
        let sources = owner_sources(self.owners.as_deref(), origin, upstream, digest);
        // Ranges ahead of the fill are asked of the digest's owner too, which has them or
        // will soon.
        let side_upstream = sources.first().map_or(upstream, |owner| &owner.via).clone();
        if let Some(feeding) = feeding {
            let this = self.clone();
            let (upstream, repo, digest) = (upstream.clone(), repo.clone(), digest.clone());
            tokio::spawn(async move {
                let resume = match feeding {
                    Feeding::Source(resume) => resume,
                    Feeding::Tier(feed) => match feed.await {
                        Some(rest) => rest,
                        None => return,
                    },
                };
                this.run_fill(&upstream, &sources, &repo, &digest, resume)
                    .await
            });
        }
        let side = SideSource {
            upstream: side_upstream,
            repo: repo.clone(),
            digest: digest.clone(),
            policy: self.side_policy,
            fetches: self.side_fetches.clone(),
            metrics: self.metrics.clone(),
            early: Default::default(),
        };
        // The fill's answer not in yet: a range asked for at once learns the blob's length
        // from its own answer.
        let waiting = fill.started().now_or_never().is_none();
        if let Some(wanted) = wanted.filter(|_| waiting) {
            if let Some(size) = side.open_early(&fill, wanted.start, wanted.end).await {
                return Ok(BlobAnswer {
                    size: Some(size),
                    result,
                    source: fill.source(),
                    bytes: BlobBytes::Ranged(RangedBlob(Ranged::Filling(fill, Box::new(side)))),
                });
            }
        }
        match fill.started().await.map_err(Error::from) {
            Ok(size) => {
                // An empty body has no last byte to hold back, and HTTP completes an empty
                // response without reading it: answer only once the fill is verified.
                if size == Some(0) {
                    fill.verdict().await?;
                }
                Ok(BlobAnswer {
                    size,
                    result,
                    source: fill.source(),
                    bytes: BlobBytes::Ranged(RangedBlob(Ranged::Filling(fill, Box::new(side)))),
                })
            }
            // The disk could not take it before any byte was sent: serve it anyway.
            Err(Error::Cache(e)) if e.is_unwritable() => {
                self.passthrough(upstream, repo, digest, BypassReason::Unwritable, origin)
                    .await
            }
            Err(e) => Err(not_found_is_blob_unknown(e)),
        }
    }

    /// Streams a blob to one client without caching it: from the digest's owner in a cluster
    /// (which caches it, so the datacenter still fetches it once), else from the upstream.
    async fn passthrough(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        why: BypassReason,
        origin: Origin,
    ) -> Result<BlobAnswer, Error> {
        self.metrics.bypassed(why);
        let owners = self.owners.as_deref();
        let sources = owner_sources(owners, origin, upstream, digest);
        let opened = ask_owner_first(owners, &sources, upstream, |source| async move {
            source.blob(repo, digest, Span::WHOLE).await
        })
        .await
        .map_err(|e| not_found_is_blob_unknown(e.into()))?;
        let stream = opened.answer;
        stream.paced_by_client();
        let passthrough = Passthrough::new(stream, digest.clone(), self.metrics.clone());
        Ok(BlobAnswer {
            size: passthrough.length(),
            result: CacheResult::Miss,
            source: match opened.peer {
                Some(_) => Source::Peer,
                None => Source::Upstream,
            },
            bytes: BlobBytes::Whole(BlobBody::Upstream(Box::new(passthrough))),
        })
    }

    /// A blob's size for `HEAD`, without starting a fill on a miss.
    pub async fn blob_size(
        &self,
        registry: Option<&str>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(Option<u64>, CacheResult), Error> {
        let upstream = self.upstream(registry, repo)?;
        let held = match self.cache.blob_held(digest).await {
            Ok(held) => held,
            // Cached, but its file cannot be opened now: the upstream knows the size too.
            Err(e) if e.is_unreadable() => None,
            Err(e) => return Err(e.into()),
        };
        match held {
            Some(BlobHeld::Cached(blob)) => {
                self.access
                    .confirm(upstream, repo, digest, Content::Blob)
                    .await?;
                return Ok((Some(blob.size()), CacheResult::Hit));
            }
            Some(BlobHeld::Filling(fill)) => {
                if let Ok(size) = fill.started().await {
                    self.access
                        .confirm(upstream, repo, digest, Content::Blob)
                        .await?;
                    return Ok((size, CacheResult::Coalesced));
                }
            }
            None => {}
        }
        match upstream.blob_length(repo, digest).await {
            Ok(size) => Ok((size, CacheResult::Miss)),
            Err(e) => Err(not_found_is_blob_unknown(e.into())),
        }
    }
}
