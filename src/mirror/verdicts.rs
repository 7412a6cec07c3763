//! What the `[[policy]]` rules decided lately: verdicts per rule, repository and digest.
//! Reached in `signed`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use moka::future::Cache as VerdictCache;

use crate::oci::{Digest, RepoName};
use crate::policy::{Policies, Refusal};

/// (rule, upstream, repository, digest): signatures live in the repository, so a verdict does.
pub(super) type VerdictKey = (usize, Arc<str>, RepoName, Digest);

/// The rules, and what they decided lately.
pub(super) struct Signatures {
    pub(super) policies: Policies,
    pub(super) verdicts: VerdictCache<VerdictKey, Verdict>,
}

impl Signatures {
    pub(super) fn new(policies: Policies) -> Signatures {
        // Whether a verdict stands is decided on the mirror's clock; moka's TTL, never shorter
        // than a minute, only frees the memory of verdicts no one asks for again.
        let forget_after = policies.longest_verified_ttl().max(Duration::from_secs(60));
        Signatures {
            policies,
            verdicts: VerdictCache::builder()
                .max_capacity(100_000)
                .time_to_live(forget_after)
                .build(),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Verdict {
    pub(super) decided_at: SystemTime,
    pub(super) outcome: Result<Allowed, Refusal>,
}

/// Why a manifest may be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Allowed {
    /// One of its own signatures verified.
    Signed,
    /// A platform manifest of a verified index.
    ThroughIndex,
    /// It holds nothing but signatures.
    SignatureObject,
}

impl Allowed {
    pub(super) fn label(self) -> &'static str {
        match self {
            Allowed::Signed => "verified",
            Allowed::ThroughIndex => "through_index",
            Allowed::SignatureObject => "signature_object",
        }
    }
}
