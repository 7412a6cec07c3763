//! Feeding a fill from the upstream: one GET from the blob's start, and more ranged GETs
//! (segments) alongside it only where they help. An upstream that limits each connection (as
//! CDNs do) is read over several; a fast one over the one GET, which costs no extra requests,
//! seeks or read-back hashing. Segments are added while the fill runs, one at a time, when the
//! GETs so far are slow and a place under `max_fetches` is free at that moment: a fill never
//! waits for a place while it holds one, so fills cannot hold each other's places up.
//!
//! Each GET owns a [`Share`] of the blob, `next..end`; a new segment takes the second half of
//! the largest share left, and only once its own GET has answered, so no byte is ever left
//! without a GET that brings it, and no byte is written by two.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

use crate::cache::{FillWriter, SegmentWriter};
use crate::oci::{Digest, RepoName};
use crate::upstream::{BlobStream, Span, Upstream, UpstreamError};

/// Bytes gathered for the fill wait at most this long for more: as long as the source keeps
/// sending they go to the fill a buffer at a time; once it pauses, its readers get what came.
const FLUSH_AFTER: Duration = Duration::from_millis(1);
/// How often the fill's GETs are looked at, and how long a GET must have run before its rate
/// counts.
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// GETs slower than this on average are what segments help: the limit is the connection's,
/// not the upstream's or the disk's. A local registry or a fast link gives hundreds of MB/s
/// per connection; CDNs that limit each connection give 5-30.
const SLOW: f64 = 48.0 * 1024.0 * 1024.0;
/// A share is split only when this much of it is left (each half gets at least half of it).
const SPLIT_FROM: u64 = 4 * 1024 * 1024;
/// Segments start on whole MiBs, the blocks CDNs cache.
const ALIGN: u64 = 1024 * 1024;

/// Why feeding a fill stopped: the source failed (the fill must be told, unless another source
/// carries on), or the cache did (it knows).
pub(super) enum Fed {
    /// With where another source could carry on from, when every byte before it was written
    /// (one GET ran, and what it brought was flushed).
    Source(UpstreamError, Option<u64>),
    Cache(crate::cache::Error),
}

/// What one GET still has to bring: `next..end` of the blob.
struct Share {
    next: u64,
    end: u64,
}

/// A GET of the fill, as the one who adds segments sees it.
struct Segment {
    share: Arc<Mutex<Share>>,
    /// When it started, and where.
    since: Instant,
    from: u64,
}

impl Segment {
    fn new(start: u64, end: u64) -> Segment {
        Segment {
            share: Arc::new(Mutex::new(Share { next: start, end })),
            since: Instant::now(),
            from: start,
        }
    }
}

/// Feeds the fill from `head`, the GET of the blob from `from` to its end, adding segments
/// where they help, until every byte was written or the first failure.
pub(super) async fn feed(
    upstream: &Arc<Upstream>,
    repo: &RepoName,
    digest: &Digest,
    head: BlobStream,
    writer: &FillWriter,
    from: u64,
) -> Result<(), Fed> {
    let total = head.total();
    let mut most = total.map_or(1, |total| upstream.segments_for(total));
    let first = Segment::new(from, total.unwrap_or(u64::MAX));
    let mut running = FuturesUnordered::new();
    running.push(copy(head, writer.segment(from), first.share.clone()).boxed());
    let mut segments = vec![first];
    let mut look = tokio::time::interval_at(tokio::time::Instant::now() + LOOK_EVERY, LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A segment being asked for: the share it splits, where, and the upstream's answer.
    type Opening<'a> = (
        usize,
        u64,
        u64,
        futures_util::future::BoxFuture<'a, Option<Result<BlobStream, UpstreamError>>>,
    );
    let mut opening: Option<Opening> = None;
    loop {
        tokio::select! {
            done = running.next() => match done {
                None => return Ok(()),
                Some(Err(Fed::Source(e, _))) => {
                    let carry_on_from = (segments.len() == 1)
                        .then(|| segments[0].share.lock().expect("lock poisoned").next);
                    return Err(Fed::Source(e, carry_on_from));
                }
                Some(Err(e)) => return Err(e),
                Some(Ok(())) => {}
            },
            answer = async { opening.as_mut().expect("enabled when opening").3.as_mut().await },
                if opening.is_some() =>
            {
                let (victim, at, end, _) = opening.take().expect("enabled when opening");
                match answer {
                    // No place free now: perhaps at the next look.
                    None => {}
                    Some(Ok(stream))
                        if !stream.starts_before_span() && split(&segments[victim], at, end) =>
                    {
                        let segment = Segment::new(at, end);
                        running.push(copy(stream, writer.segment(at), segment.share.clone()).boxed());
                        segments.push(segment);
                    }
                    // The share got past `at` meanwhile: the answer is dropped unused.
                    Some(Ok(stream)) if !stream.starts_before_span() => {}
                    Some(Ok(_)) => {
                        tracing::debug!(upstream = upstream.name(), %digest, "the upstream ignores ranges; no segments");
                        most = segments.len();
                    }
                    Some(Err(e)) => {
                        tracing::debug!(upstream = upstream.name(), %digest, error = %e, "a segment could not be opened; no more");
                        most = segments.len();
                    }
                }
            }
            _ = look.tick(), if opening.is_none() && segments.len() < most => {
                if let Some((victim, at, end)) = worth_splitting(&segments) {
                    let span = Span { start: at, end: Some(end) };
                    opening = Some((victim, at, end, upstream.blob_if_free(repo, digest, span).boxed()));
                }
            }
        }
    }
}

/// Which share to split, where, and its end, when the GETs that have run long enough to tell
/// are slow on average and a share has enough left.
fn worth_splitting(segments: &[Segment]) -> Option<(usize, u64, u64)> {
    let mut rates = Vec::new();
    let mut largest: Option<(usize, u64, u64, u64)> = None;
    for (i, segment) in segments.iter().enumerate() {
        let share = segment.share.lock().expect("lock poisoned");
        if share.next >= share.end {
            continue;
        }
        let age = segment.since.elapsed();
        if age >= LOOK_EVERY {
            rates.push((share.next - segment.from) as f64 / age.as_secs_f64());
        }
        let left = share.end - share.next;
        if largest.map_or(true, |(_, most, _, _)| left > most) {
            largest = Some((i, left, share.next, share.end));
        }
    }
    if rates.is_empty() || rates.iter().sum::<f64>() / rates.len() as f64 >= SLOW {
        return None;
    }
    let (i, left, next, end) = largest?;
    if left < SPLIT_FROM || end == u64::MAX {
        return None;
    }
    let at = (next + left / 2).div_ceil(ALIGN) * ALIGN;
    (at < end).then_some((i, at, end))
}

/// Ends `segment`'s share at `at`, if it still ends at `end` and has not got there: then the
/// GET opened for `at..end` owns those bytes.
fn split(segment: &Segment, at: u64, end: u64) -> bool {
    let mut share = segment.share.lock().expect("lock poisoned");
    if share.end != end || share.next >= at {
        return false;
    }
    share.end = at;
    true
}

/// Copies `stream` into its piece of the fill, within its share: each chunk is claimed from the
/// share before it is written, so a share cut short meanwhile is never written past.
async fn copy(
    mut stream: BlobStream,
    mut piece: SegmentWriter,
    share: Arc<Mutex<Share>>,
) -> Result<(), Fed> {
    loop {
        let chunk = match next_chunk(&mut stream, &mut piece).await {
            Ok(chunk) => chunk,
            // What came is kept: another source may carry on after it.
            Err(Fed::Source(e, _)) => {
                piece.flush().await.map_err(Fed::Cache)?;
                return Err(Fed::Source(e, None));
            }
            Err(e) => return Err(e),
        };
        let Some(chunk) = chunk else {
            return piece.flush().await.map_err(Fed::Cache);
        };
        let (take, done) = {
            let mut share = share.lock().expect("lock poisoned");
            let take = (share.end - share.next).min(chunk.len() as u64);
            share.next += take;
            // (A share of a blob of unknown length is never split.)
            if share.end < u64::MAX {
                stream.stop_at(share.end);
            }
            (take as usize, share.next >= share.end)
        };
        piece.write(&chunk[..take]).await.map_err(Fed::Cache)?;
        if done {
            return piece.flush().await.map_err(Fed::Cache);
        }
    }
}

/// The stream's next chunk; what `piece` gathered goes to the fill when the stream pauses.
async fn next_chunk(
    stream: &mut BlobStream,
    piece: &mut SegmentWriter,
) -> Result<Option<bytes::Bytes>, Fed> {
    let next = stream.next_chunk();
    tokio::pin!(next);
    // A chunk ready now costs no timer; a pause longer than FLUSH_AFTER flushes.
    let chunk = match std::future::poll_fn(|cx| Poll::Ready(next.as_mut().poll(cx))).await {
        Poll::Ready(chunk) => chunk,
        Poll::Pending if piece.holds_bytes() => {
            tokio::select! {
                biased;
                chunk = &mut next => chunk,
                () = tokio::time::sleep(FLUSH_AFTER) => {
                    piece.flush().await.map_err(Fed::Cache)?;
                    next.await
                }
            }
        }
        Poll::Pending => next.await,
    };
    chunk.map_err(|e| Fed::Source(e, None))
}
