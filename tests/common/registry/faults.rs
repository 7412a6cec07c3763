//! What the fake registry does wrong, and the counters and gates tests watch it through.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// What the fake registry does wrong, switchable at any time.
#[derive(Default, Clone)]
pub struct Faults {
    /// Answer every /v2 request with this status (and `Retry-After`).
    pub status: Option<(u16, Option<&'static str>)>,
    /// Blob bodies: declare the full length, then close when the body gets to this byte.
    pub cut: Option<Break>,
    /// Answer every blob GET with the whole blob and a 200, whatever its `Range`.
    pub ignore_ranges: bool,
    /// Blob bodies: send only this many bytes, and declare that length (a well-framed lie).
    pub truncate_blobs_to: Option<usize>,
    /// Blob bodies: flip one byte in the middle.
    pub flip_byte: bool,
    /// Blob bodies: pause this long between 64 KiB chunks.
    pub chunk_delay: Option<Duration>,
    /// Blob bodies: send chunks of sizes from this range (inclusive, varying from chunk to
    /// chunk) instead of 64 KiB, as HTTP/2 DATA frames and CDNs do.
    pub chunk_sizes: Option<(usize, usize)>,
    /// Blob bodies: at this byte, keep the connection open and send nothing more.
    pub stall: Option<Break>,
    /// Blob bodies: send some bytes, then wait until the test opens the gate.
    pub hold: Option<Hold>,
    /// Blob GETs without `Range` (a fill's): wait at this gate before answering at all.
    pub hold_whole_answers: Option<Hold>,
    /// Require `Authorization: Bearer <token>` from this realm (served by the fake itself).
    pub bearer: bool,
    /// Require this `Authorization: Basic ...` value.
    pub basic: Option<String>,
    /// Redirect blob GETs to this base URL.
    pub redirect_blobs_to: Option<String>,
    /// With `bearer`: name this `host:port` as the token realm instead of the registry itself.
    pub realm_host: Option<String>,
    /// Manifest requests (GET and HEAD): wait this long before answering.
    pub manifest_delay: Option<Duration>,
    /// Manifest GETs: change the body but keep the digest header.
    pub tamper_manifests: bool,
    /// Manifest GETs: send the body in chunks, without declaring its length.
    pub chunked_manifests: bool,
    /// Repositories whose every request is answered 404, as a registry hides a private
    /// repository from credentials that may not read it.
    pub hidden_repos: Vec<String>,
    /// Answer `referrers/` with 404, as registries without the OCI 1.1 API do.
    pub no_referrers_api: bool,
    /// Manifest answers: send Docker Hub's pull quota headers, this limit per this many
    /// seconds, the remaining count going down by one with each manifest GET.
    pub quota: Option<(u32, u32)>,
    /// Counts blob bodies being sent (shared by every clone of these faults).
    pub blob_streams: Arc<Streams>,
}

/// Blob bodies in flight now, and the most there ever were at once.
#[derive(Default)]
pub struct Streams {
    pub now: AtomicUsize,
    pub most: AtomicUsize,
}

impl Streams {
    pub fn now(&self) -> usize {
        self.now.load(SeqCst)
    }

    pub fn most(&self) -> usize {
        self.most.load(SeqCst)
    }
}

/// One blob body in flight, counted until dropped.
pub(super) struct Streaming(Arc<Streams>);

impl Streaming {
    pub(super) fn new(streams: &Arc<Streams>) -> Streaming {
        let now = streams.now.fetch_add(1, SeqCst) + 1;
        streams.most.fetch_max(now, SeqCst);
        Streaming(streams.clone())
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, SeqCst);
    }
}

/// Where a blob body breaks (is cut, or stalls): at byte `at` of the blob, in every body that
/// gets there, or only in the first few.
#[derive(Clone)]
pub struct Break {
    at: usize,
    /// `None`: every body.
    left: Option<Arc<AtomicUsize>>,
}

impl Break {
    pub fn at(at: usize) -> Break {
        Break { at, left: None }
    }

    /// Only the first `n` bodies that get to the byte break there.
    pub fn times(mut self, n: usize) -> Break {
        self.left = Some(Arc::new(AtomicUsize::new(n)));
        self
    }

    /// Whether a body of `start..end` breaks, and where (counted as one of the bodies that do).
    pub(super) fn applies(&self, start: usize, end: usize) -> Option<usize> {
        if !(start..end).contains(&self.at) {
            return None;
        }
        match &self.left {
            None => Some(self.at),
            Some(left) => left
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .ok()
                .map(|_| self.at),
        }
    }
}

/// Holds blob bodies that reach byte `after` from before it until [`Hold::open`], so that a test decides
/// when a fill may go on (once every client it wants has joined, say) instead of hoping the
/// upstream is slow enough.
#[derive(Clone)]
pub struct Hold {
    pub(super) after: usize,
    only: Option<String>,
    gate: Arc<watch::Sender<bool>>,
    reached: Arc<AtomicUsize>,
}

impl Hold {
    /// Holds every blob body once `after` bytes of it are sent.
    pub fn after(after: usize) -> Hold {
        Hold {
            after,
            only: None,
            gate: Arc::new(watch::channel(false).0),
            reached: Arc::default(),
        }
    }

    /// Holds only the body of this blob.
    pub fn only(mut self, digest: &str) -> Hold {
        self.only = Some(digest.to_owned());
        self
    }

    /// Lets every held body, and every later one, go on.
    pub fn open(&self) {
        self.gate.send_replace(true);
    }

    /// How many bodies have been held so far (each counted once, when it got to the hold).
    pub fn reached(&self) -> usize {
        self.reached.load(SeqCst)
    }

    pub(super) fn applies_to(&self, digest: &str) -> bool {
        self.only.as_deref().map_or(true, |only| only == digest)
    }

    pub(super) async fn wait(&self) {
        self.reached.fetch_add(1, SeqCst);
        let mut open = self.gate.subscribe();
        let _ = open.wait_for(|open| *open).await;
    }
}
