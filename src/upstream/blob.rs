//! Blob bodies from the upstream: a whole blob or a span of one, resumed with `Range` where the
//! connection broke, so a reset or a stall in the middle of a long transfer costs a request, not
//! the transfer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::CONTENT_RANGE;
use reqwest::{Method, StatusCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::client::{header, Client, Kind};
use super::error::classify;
use super::error::UpstreamError;
use super::ranges::ContentRange;
pub use super::ranges::Span;
use crate::oci::{Digest, RepoName};

/// A resumed body that brings at least this much resets the count of resumes in a row, so a
/// link that breaks every few hundred MiB still completes while one that brings nothing gives up.
const PROGRESS_RESETS_ATTEMPTS: u64 = 1024 * 1024;
/// The wait before the first resume; it doubles with each one in a row, up to `MAX_WAIT`.
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// A blob body being received from the upstream: the bytes of its span, in order, however many
/// requests that takes.
pub struct BlobStream {
    upstream: Arc<Client>,
    repo: RepoName,
    digest: Digest,
    span: Span,
    /// The body being read and the place it holds, shared with the watch that lets go of them
    /// while a client stops reading (`paced_by_client`).
    held: Arc<Held>,
    /// The blob's whole length, when the upstream declared it.
    total: Option<u64>,
    /// Where the next byte handed out lies in the blob.
    next: u64,
    /// Bytes the current body sends before `next`: it began before where it was asked to (an
    /// upstream that answered a range with the whole blob).
    skip: u64,
    /// Resumes in a row without real progress, and the offset the last one started at.
    attempts: u32,
    resumed_at: u64,
}

/// What a stream holds of the upstream.
struct Held {
    /// Locked for each read, so a read under way is never let go of.
    holding: tokio::sync::Mutex<Holding>,
    /// When the last read ended.
    last_read: Mutex<Instant>,
    /// Set once the place was given back because the reader paused.
    let_go: AtomicBool,
}

struct Holding {
    /// The stream's place under the upstream's `max_fetches`, from its first request until its
    /// last byte: a resume asks again in the place it already holds, so it never queues behind
    /// requests that came later (nor waits for a place while holding one).
    slot: Slot,
    body: Option<reqwest::Response>,
}

/// Where a stream stands under `max_fetches`.
enum Slot {
    /// No place: the next request waits for one (the first, or the first after a pause).
    Wanted,
    /// A place (`None`: the upstream has no bound).
    Held {
        _place: Option<OwnedSemaphorePermit>,
    },
    /// Every byte was read, or the stream gave up: nothing more is asked for.
    Done,
}

impl Held {
    fn new(slot: Slot) -> Arc<Held> {
        Arc::new(Held {
            holding: tokio::sync::Mutex::new(Holding { slot, body: None }),
            last_read: Mutex::new(Instant::now()),
            let_go: AtomicBool::new(false),
        })
    }

    fn last_read(&self) -> Instant {
        *self.last_read.lock().expect("lock poisoned")
    }
}

impl BlobStream {
    /// Sends the first request for `span`, once a place under `max_fetches` is free.
    pub(super) async fn open(
        upstream: Arc<Client>,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
    ) -> Result<BlobStream, UpstreamError> {
        Self::open_in(upstream, repo, digest, span, Slot::Wanted).await
    }

    /// Sends the first request for `span` if a place under `max_fetches` is free now; `None`
    /// if none is.
    pub(super) async fn open_if_free(
        upstream: Arc<Client>,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
    ) -> Option<Result<BlobStream, UpstreamError>> {
        let slot = upstream.free_slot()?;
        Some(Self::open_in(upstream, repo, digest, span, Slot::Held { _place: slot }).await)
    }

    async fn open_in(
        upstream: Arc<Client>,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
        slot: Slot,
    ) -> Result<BlobStream, UpstreamError> {
        let mut stream = BlobStream {
            upstream,
            repo: repo.clone(),
            digest: digest.clone(),
            span,
            held: Held::new(slot),
            total: None,
            next: span.start,
            skip: 0,
            attempts: 0,
            resumed_at: span.start,
        };
        let held = stream.held.clone();
        stream.request(&mut *held.holding.lock().await).await?;
        Ok(stream)
    }

    /// Marks the stream as read at a client's pace (a side fetch, a pass-through answer): while
    /// its client reads nothing for the upstream's `paused_client_timeout`, the stream gives
    /// its place and its request back, so a paused client never holds up requests waiting for
    /// a place; the next read asks again for the rest.
    pub fn paced_by_client(&self) {
        let after = self.upstream.paused_client_timeout;
        let held = Arc::downgrade(&self.held);
        let upstream = self.upstream.clone();
        tokio::spawn(async move {
            let mut wake = Instant::now() + after;
            loop {
                tokio::time::sleep_until(wake).await;
                // Ends with the stream.
                let Some(held) = held.upgrade() else { return };
                let Ok(mut holding) = held.holding.try_lock() else {
                    // A read is under way: the client is reading.
                    wake = Instant::now() + after;
                    continue;
                };
                let idle_until = held.last_read() + after;
                if Instant::now() < idle_until {
                    wake = idle_until;
                    continue;
                }
                match holding.slot {
                    Slot::Done => return,
                    Slot::Held { .. } => {
                        *holding = Holding {
                            slot: Slot::Wanted,
                            body: None,
                        };
                        held.let_go.store(true, Ordering::Relaxed);
                        upstream.count_paused_release();
                    }
                    Slot::Wanted => {}
                }
                wake = Instant::now() + after;
            }
        });
    }

    /// Whether the stream gave its place back while its client paused (`paced_by_client`).
    pub fn was_let_go(&self) -> bool {
        self.held.let_go.load(Ordering::Relaxed)
    }

    /// The whole blob's length, if the upstream declared it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Ends the stream at `end` (when that is before where it would end): the rest of the blob
    /// is being fetched another way.
    pub fn stop_at(&mut self, end: u64) {
        if self.end().map_or(true, |e| end < e) {
            self.span.end = Some(end.max(self.next));
        }
    }

    /// Whether the upstream answered with bytes from before the span (it ignored the range and
    /// sent the whole blob), which are skipped as they come. Meaningful until the first read.
    pub fn starts_before_span(&self) -> bool {
        self.skip > 0
    }

    /// The length of this stream's span, when it is known.
    pub fn length(&self) -> Option<u64> {
        let end = self.span.end.or(self.total)?;
        Some(end.saturating_sub(self.span.start))
    }

    /// The end of the span, when it is known: where the bytes stop.
    fn end(&self) -> Option<u64> {
        self.span.end.or(self.total)
    }

    /// The next chunk, or `None` at the end of the span. A body that breaks is asked for again
    /// from where it broke, up to the upstream's `resume_attempts` times in a row.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        let held = self.held.clone();
        let mut holding = held.holding.lock().await;
        let chunk = self.read(&mut holding).await;
        *held.last_read.lock().expect("lock poisoned") = Instant::now();
        chunk
    }

    async fn read(&mut self, holding: &mut Holding) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            if self.end().is_some_and(|end| self.next >= end) {
                // Done; the connection goes back to the pool only once its body is read to
                // the end, which a range cut out of a whole-blob answer never is.
                finished(holding);
                return Ok(None);
            }
            if let Slot::Done = holding.slot {
                return Ok(None);
            }
            let Some(body) = holding.body.as_mut() else {
                // Let go of while the client paused: the rest is asked for again.
                if let Err(e) = self.request(holding).await {
                    self.resume(holding, e).await?;
                }
                continue;
            };
            let broke = match body.chunk().await {
                Ok(Some(chunk)) => {
                    self.upstream.received(chunk.len()).await;
                    match self.take(chunk) {
                        Some(chunk) => return Ok(Some(chunk)),
                        None => continue,
                    }
                }
                // Ended where it should have ended (or with no length to check against).
                Ok(None) if self.end().is_none() => {
                    finished(holding);
                    return Ok(None);
                }
                Ok(None) => UpstreamError::Unreachable {
                    upstream: self.upstream.label.clone(),
                    reason: format!(
                        "the body ended at byte {} of {}",
                        self.next,
                        self.end().unwrap_or_default()
                    ),
                },
                Err(e) => classify(&self.upstream.label, &e),
            };
            self.resume(holding, broke).await?;
        }
    }

    /// Cuts a chunk of the current body to what the span still wants: `None` when all of it
    /// lies before the span (skipped).
    fn take(&mut self, mut chunk: Bytes) -> Option<Bytes> {
        if self.skip > 0 {
            let skipped = (chunk.len() as u64).min(self.skip);
            self.skip -= skipped;
            chunk = chunk.slice(skipped as usize..);
            if chunk.is_empty() {
                return None;
            }
        }
        if let Some(end) = self.end() {
            let wanted = end.saturating_sub(self.next).min(chunk.len() as u64);
            chunk.truncate(wanted as usize);
        }
        self.next += chunk.len() as u64;
        if self.next - self.resumed_at >= PROGRESS_RESETS_ATTEMPTS {
            self.attempts = 0;
        }
        Some(chunk)
    }

    /// Asks again for the rest of the span after the body broke with `broke`, waiting a little
    /// longer each time in a row; gives `broke` (or the request's own error) back once the
    /// attempts are spent or the upstream answers something a retry will not change.
    async fn resume(
        &mut self,
        holding: &mut Holding,
        broke: UpstreamError,
    ) -> Result<(), UpstreamError> {
        holding.body = None;
        let mut error = broke;
        loop {
            let upstream = self.upstream.clone();
            if !error.is_transient() || self.attempts >= upstream.resume_attempts {
                upstream.count_resume("gave_up");
                finished(holding);
                tracing::warn!(upstream = %upstream.label, repo = %self.repo, digest = %self.digest, at = self.next, %error, "upstream body broke; not resuming");
                return Err(error);
            }
            let wait = FIRST_WAIT
                .saturating_mul(1 << self.attempts.min(16))
                .min(MAX_WAIT);
            self.attempts += 1;
            tracing::info!(upstream = %upstream.label, repo = %self.repo, digest = %self.digest, at = self.next, attempt = self.attempts, %error, "upstream body broke; resuming");
            tokio::time::sleep(wait).await;
            self.resumed_at = self.next;
            match self.request(holding).await {
                Ok(()) => {
                    upstream.count_resume("resumed");
                    return Ok(());
                }
                Err(e) => error = e,
            }
        }
    }

    /// Sends a request for the span from `next` and takes its body: a `206` must start there; a
    /// `200` (an upstream that ignores ranges) is skipped up to it.
    async fn request(&mut self, holding: &mut Holding) -> Result<(), UpstreamError> {
        let upstream = self.upstream.clone();
        let url = upstream.url(&self.repo, &format!("blobs/{}", self.digest), &[]);
        let range = self.span.range_header(self.next);
        if let Slot::Wanted = holding.slot {
            holding.slot = Slot::Held {
                _place: upstream.fetch_slot().await,
            };
        }
        let response = upstream
            .send(
                Kind::Blob,
                Method::GET,
                url,
                None,
                range.as_deref(),
                &self.repo,
            )
            .await?;
        let invalid = |reason: String| UpstreamError::Invalid {
            upstream: upstream.label.clone(),
            reason,
        };
        let (starts_at, total) = match response.status() {
            StatusCode::PARTIAL_CONTENT if range.is_some() => {
                let content_range = header(response.headers(), CONTENT_RANGE.as_str())
                    .and_then(|v| ContentRange::parse(&v))
                    .ok_or_else(|| invalid("a 206 without a valid Content-Range".into()))?;
                (content_range.start, content_range.total)
            }
            s if s.is_success() && s != StatusCode::PARTIAL_CONTENT => {
                (0, response.content_length())
            }
            _ => return Err(upstream.status_error(&response)),
        };
        if starts_at > self.next {
            return Err(invalid(format!(
                "asked for bytes from {}, got them from {starts_at}",
                self.next
            )));
        }
        match (self.total, total) {
            (Some(before), Some(now)) if before != now => {
                return Err(invalid(format!(
                    "the blob was {before} bytes long, and is now {now}"
                )))
            }
            (None, now) => self.total = now,
            _ => {}
        }
        self.skip = self.next - starts_at;
        holding.body = Some(response);
        Ok(())
    }
}

/// Lets go of the body and the place: nothing more is asked for.
fn finished(holding: &mut Holding) {
    *holding = Holding {
        slot: Slot::Done,
        body: None,
    };
}
