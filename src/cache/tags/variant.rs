//! What a tag pointed to: one answer of the upstream for a tag (a variant), when it was
//! fetched, and for which `Accept` it stands. Pure values; freshness is decided on a clock the
//! caller passes in.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::oci::media::{is_index, Accept};
use crate::oci::{Digest, RepoName, Tag};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TagKey {
    pub upstream: Arc<str>,
    pub repo: RepoName,
    pub tag: Tag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variant {
    pub digest: Digest,
    /// The media type without parameters.
    pub media_type: String,
    /// What the request that fetched this answer accepted.
    pub asked_with: Accept,
    pub fetched_at: SystemTime,
    /// After a failed revalidation: serve this stale, without asking the upstream, until then.
    /// Kept in memory only; after a restart one request asks again.
    pub revalidate_after: Option<SystemTime>,
}

impl Variant {
    /// Younger than `ttl`. A clock that stepped backwards counts as fresh rather than forcing a
    /// storm of revalidations.
    pub fn is_fresh(&self, now: SystemTime, ttl: Duration) -> bool {
        now.duration_since(self.fetched_at)
            .map_or(true, |age| age < ttl)
    }

    /// Whether a recent failed revalidation says not to ask the upstream yet.
    pub fn revalidation_deferred(&self, now: SystemTime) -> bool {
        self.revalidate_after.is_some_and(|t| now < t)
    }

    /// Whether the upstream would answer `accept` with this variant. The same question gets the
    /// same answer. Otherwise the client must accept the type, and if this is a single-platform
    /// manifest, it must not accept an index type this answer's request did not: the tag may
    /// really be such an index, which the registry would have sent instead.
    pub fn answers(&self, accept: &Accept) -> bool {
        if self.asked_with == *accept {
            return true;
        }
        accept.accepts(&self.media_type)
            && (is_index(&self.media_type) || accept.accepts_no_index_beyond(&self.asked_with))
    }
}
