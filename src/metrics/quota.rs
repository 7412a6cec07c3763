//! The pull quota upstreams announce (Docker Hub's `ratelimit-limit` and
//! `ratelimit-remaining`), per upstream: operators see it shrink before the first 429.

use prometheus::{IntGaugeVec, Registry};

use super::register::gauge_vec;

pub struct QuotaCollectors {
    pub limit: IntGaugeVec,
    pub remaining: IntGaugeVec,
    pub window: IntGaugeVec,
}

impl QuotaCollectors {
    pub(super) fn new(registry: &Registry) -> QuotaCollectors {
        QuotaCollectors {
            limit: gauge_vec(
                registry,
                "wharf_upstream_quota_limit",
                "The pulls an upstream allows per window, as its last answer said",
                &["upstream"],
            ),
            remaining: gauge_vec(
                registry,
                "wharf_upstream_quota_remaining",
                "The pulls an upstream still allows in the current window, as its last answer said",
                &["upstream"],
            ),
            window: gauge_vec(
                registry,
                "wharf_upstream_quota_window_seconds",
                "The length of an upstream's quota window",
                &["upstream"],
            ),
        }
    }
}
