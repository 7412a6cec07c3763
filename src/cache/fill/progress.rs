//! What a fill publishes to its readers on a `watch` channel: how far it got, and its verdict.

use crate::metrics::Source;
use std::time::Instant;

use crate::cache::error::Error;

#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the source's answer.
    Connecting,
    /// Bytes are arriving.
    Streaming,
    /// Every byte arrived and matched the digest.
    Verified,
    /// Nothing will be cached; responses in flight must be aborted.
    Failed(Error),
}

impl FillState {
    pub fn is_verified(&self) -> bool {
        matches!(self, FillState::Verified)
    }
}

#[derive(Debug, Clone)]
pub struct Progress {
    /// The length the source declared, if it did.
    pub total: Option<u64>,
    /// Bytes on disk and readable.
    pub written: u64,
    pub state: FillState,
    /// When the first byte could arrive: how fast the fill goes is measured from here.
    pub streaming_since: Option<Instant>,
    /// Where the bytes come from.
    pub from: Source,
}

impl Progress {
    pub fn connecting() -> Progress {
        Progress {
            total: None,
            written: 0,
            state: FillState::Connecting,
            streaming_since: None,
            from: Source::Upstream,
        }
    }
}
