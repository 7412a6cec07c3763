//! Side fetches: a range far ahead of a running fill is fetched from the upstream on its own, so
//! a lazy puller's footer, TOC and file chunks come at the speed of the link instead of waiting
//! for the fill to get there. The fill carries on and stays the only thing verified and cached;
//! side-fetched bytes go to the one client that asked and nowhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use crate::cache::{BlobReader, Error as CacheError, Fill};
use crate::config::CacheConfig;
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};
use crate::upstream::{BlobStream, Span, Upstream};

/// With no rate measured yet, a range within this much of what the fill has written is left
/// to the fill.
const NEAR: u64 = 256 * 1024;

/// When a range is fetched on its own, from `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct SidePolicy {
    /// A range the fill reaches within this time (at its rate so far) waits for the fill.
    pub lookahead: Duration,
    /// Longer ranges are served from the fill.
    pub max_len: u64,
    /// Side fetches of one blob in flight at once; more are served from the fill.
    pub per_blob: usize,
}

impl SidePolicy {
    pub fn new(config: &CacheConfig) -> SidePolicy {
        SidePolicy {
            lookahead: config.range_lookahead,
            max_len: config.side_fetch_max.bytes(),
            per_blob: config.side_fetches_per_blob,
        }
    }
}

/// The side fetches in flight, counted per blob.
#[derive(Default)]
pub struct SideFetches {
    per_blob: Arc<Mutex<HashMap<Digest, usize>>>,
}

impl SideFetches {
    /// A place for one more side fetch of `digest`, if it has fewer than `bound` already.
    fn place(&self, digest: &Digest, bound: usize) -> Option<Place> {
        let mut per_blob = self.per_blob.lock().expect("lock poisoned");
        // Looked at before an entry is made, so a refusal leaves none behind.
        if per_blob.get(digest).is_some_and(|&count| count >= bound) || bound == 0 {
            return None;
        }
        *per_blob.entry(digest.clone()).or_default() += 1;
        Some(Place {
            per_blob: self.per_blob.clone(),
            digest: digest.clone(),
        })
    }
}

/// One side fetch's place among its blob's, given back when it is dropped.
struct Place {
    per_blob: Arc<Mutex<HashMap<Digest, usize>>>,
    digest: Digest,
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Ok(mut per_blob) = self.per_blob.lock() {
            if let Some(count) = per_blob.get_mut(&self.digest) {
                *count -= 1;
                if *count == 0 {
                    per_blob.remove(&self.digest);
                }
            }
        }
    }
}

/// What a fill's answer needs to fetch one of its ranges on its own.
pub struct SideSource {
    pub upstream: Arc<Upstream>,
    pub repo: RepoName,
    pub digest: Digest,
    pub policy: SidePolicy,
    pub fetches: Arc<SideFetches>,
    pub metrics: Metrics,
    /// A range asked for before the fill's answer came (`open_early`), already streaming.
    pub early: Mutex<Option<SideBody>>,
}

impl SideSource {
    /// Asks the upstream for `start..end` at once, beside a fill that has no answer yet, when
    /// the range is one a side fetch would take; the blob's length when it answered (from its
    /// `Content-Range`), and the range is then ready for `ahead_of`. A lazy puller's footer is
    /// so answered after one upstream round trip, not after the fill's and then its own.
    pub async fn open_early(&self, fill: &Arc<Fill>, start: u64, end: u64) -> Option<u64> {
        // What `ahead_of` decides for a fill at byte 0 with no rate measured yet.
        if start <= NEAR || end <= start || end - start > self.policy.max_len {
            return None;
        }
        // Not counted as bounded: `ahead_of` will decide again, and count.
        let place = self.fetches.place(&self.digest, self.policy.per_blob)?;
        let span = Span {
            start,
            end: Some(end),
        };
        let mut stream = match self
            .upstream
            .blob_if_free(&self.repo, &self.digest, span)
            .await
        {
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                tracing::debug!(upstream = self.upstream.name(), repo = %self.repo, digest = %self.digest, error = %e, "early side fetch failed; waiting for the fill");
                return None;
            }
            // Not counted: `ahead_of` will try again when the range is sent.
            None => return None,
        };
        // An upstream that ignores ranges leaves the range to the fill.
        let total = stream.total()?;
        if stream.starts_before_span() {
            return None;
        }
        // A range past the end is answered up to the end, as the upstream did.
        let end = end.min(total);
        stream.stop_at(end);
        let mut body = self.unasked(fill, start, end, place);
        body.stream_from(stream, start);
        *self.early.lock().expect("lock poisoned") = Some(body);
        Some(total)
    }

    /// The body of `start..end` fetched on its own, when the fill will not reach it soon, the
    /// range is short enough and the blob has a place left; `None`: read it from the fill.
    pub fn ahead_of(&self, fill: &Arc<Fill>, start: u64, end: Option<u64>) -> Option<SideBody> {
        let early = self.early.lock().expect("lock poisoned").take();
        if let Some(early) = early.filter(|b| b.next == start && Some(b.end) == end) {
            return Some(early);
        }
        let position = fill.position();
        // Without the blob's length there is no block to clip to and no total to check.
        let total = position.total?;
        let end = end.unwrap_or(total).min(total);
        // Left to the fill: a range too long to fetch twice, and one the fill gets to soon.
        if end <= start
            || end - start > self.policy.max_len
            || position.reaches(start, self.policy.lookahead, NEAR)
        {
            return None;
        }
        let Some(place) = self.fetches.place(&self.digest, self.policy.per_blob) else {
            self.metrics.side_fetch("bounded");
            return None;
        };
        Some(self.unasked(fill, start, end, place))
    }

    /// The body of `start..end`, not asked for yet. Exactly the range: every byte more is a
    /// byte the upstream sends twice (the fill brings it too), and lazy pullers' reads are
    /// whole chunks already.
    fn unasked(&self, fill: &Arc<Fill>, start: u64, end: u64, place: Place) -> SideBody {
        SideBody {
            state: State::Unasked(Span {
                start,
                end: Some(end),
            }),
            upstream: self.upstream.clone(),
            repo: self.repo.clone(),
            digest: self.digest.clone(),
            fill: fill.clone(),
            next: start,
            end,
            metrics: self.metrics.clone(),
            _place: place,
        }
    }
}

enum State {
    /// Not asked for yet: the upstream is asked when the body is first read, so that a place
    /// under `max_fetches` is taken only when the bytes are about to be sent (not while the
    /// parts before it in a multi-range answer are).
    Unasked(Span),
    /// The upstream's answer, and where its next byte lies.
    Streaming(BlobStream, u64),
    /// The upstream could not give the range: the rest comes from the fill.
    Fill(BlobReader),
}

/// The bytes of one range, fetched on its own; where the upstream fails, the rest of the range
/// is read from the fill instead, so a side fetch never fails a response the fill could serve.
pub struct SideBody {
    state: State,
    upstream: Arc<Upstream>,
    repo: RepoName,
    digest: Digest,
    fill: Arc<Fill>,
    /// The next byte to hand out, and the end of the range (exclusive).
    next: u64,
    end: u64,
    metrics: Metrics,
    _place: Place,
}

impl SideBody {
    /// The next chunk; `Ok(None)` at the end of the range.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, CacheError> {
        loop {
            if self.next >= self.end {
                return Ok(None);
            }
            match &mut self.state {
                State::Unasked(span) => {
                    let span = *span;
                    // Never waits for a place: a request that held one while it waited could
                    // hold up the fill it would otherwise be served from.
                    match self
                        .upstream
                        .blob_if_free(&self.repo, &self.digest, span)
                        .await
                    {
                        // An upstream that ignores ranges would send the whole blob up to
                        // the range: the fill gets there no later.
                        Some(Ok(stream)) if !stream.starts_before_span() => {
                            self.stream_from(stream, span.start)
                        }
                        Some(Ok(_)) => self.fall_back("the upstream ignores ranges"),
                        Some(Err(e)) => self.fall_back(&e.to_string()),
                        None => {
                            self.metrics.side_fetch("no_place");
                            self.state = State::Fill(self.fill.reader(self.next, Some(self.end)));
                        }
                    }
                }
                // The client paused and the place went back: the fill has the rest, or
                // will, without asking the upstream for it twice.
                State::Streaming(stream, _) if stream.was_let_go() => {
                    self.metrics.side_fetch("paused");
                    self.state = State::Fill(self.fill.reader(self.next, Some(self.end)));
                }
                State::Streaming(stream, at) => match stream.next_chunk().await {
                    Ok(Some(mut chunk)) => {
                        // Cut the block down to the range.
                        let chunk_start = *at;
                        *at += chunk.len() as u64;
                        let skip = self
                            .next
                            .saturating_sub(chunk_start)
                            .min(chunk.len() as u64);
                        chunk = chunk.slice(skip as usize..);
                        chunk.truncate((self.end - self.next).min(chunk.len() as u64) as usize);
                        if chunk.is_empty() {
                            continue;
                        }
                        self.next += chunk.len() as u64;
                        self.metrics.side_fetch_bytes.inc_by(chunk.len() as u64);
                        return Ok(Some(chunk));
                    }
                    Ok(None) => self.fall_back("the upstream's answer ended early"),
                    Err(e) => self.fall_back(&e.to_string()),
                },
                State::Fill(reader) => {
                    let chunk = reader.next_chunk().await?;
                    if let Some(chunk) = &chunk {
                        self.next += chunk.len() as u64;
                    }
                    return Ok(chunk);
                }
            }
        }
    }

    /// Sends what the upstream answered for the range, from `at`.
    fn stream_from(&mut self, stream: BlobStream, at: u64) {
        stream.paced_by_client();
        self.metrics.side_fetch("fetched");
        self.state = State::Streaming(stream, at);
    }

    fn fall_back(&mut self, why: &str) {
        tracing::info!(upstream = self.upstream.name(), repo = %self.repo, digest = %self.digest, at = self.next, reason = why, "side fetch failed; serving the range from the fill");
        self.metrics.side_fetch("fell_back");
        self.state = State::Fill(self.fill.reader(self.next, Some(self.end)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_fetch_places_leave_no_entry_behind() {
        let fetches = SideFetches::default();
        let digest = Digest::sha256_of(b"blob");
        // Side fetches turned off: refused, and nothing recorded.
        assert!(fetches.place(&digest, 0).is_none());
        assert!(fetches.per_blob.lock().unwrap().is_empty());
        let places: Vec<_> = (0..2).filter_map(|_| fetches.place(&digest, 2)).collect();
        assert_eq!(places.len(), 2);
        assert!(fetches.place(&digest, 2).is_none(), "the bound holds");
        drop(places);
        assert!(fetches.per_blob.lock().unwrap().is_empty());
    }
}
