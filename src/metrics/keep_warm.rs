//! The metrics of keep-warm rules, labelled by the rule's image (rules are few, from the
//! configuration).

use prometheus::{IntCounterVec, IntGaugeVec, Registry};

use super::register::{counter_vec, gauge_vec};

pub struct KeepWarmCollectors {
    /// Runs by result: `ok`, `failed` (the tags could not be listed), `partial` (some tags or
    /// blobs failed).
    pub runs: IntCounterVec,
    /// Tags warmed because they were new or their digest moved.
    pub tags_warmed: IntCounterVec,
    /// Blob bytes the rule's runs had fetched (not those already cached).
    pub bytes: IntCounterVec,
    pub last_success: IntGaugeVec,
}

impl KeepWarmCollectors {
    pub(super) fn new(registry: &Registry) -> KeepWarmCollectors {
        KeepWarmCollectors {
            runs: counter_vec(
                registry,
                "wharf_keep_warm_runs_total",
                "Keep-warm runs by rule and result (ok, partial, failed)",
                &["rule", "result"],
            ),
            tags_warmed: counter_vec(
                registry,
                "wharf_keep_warm_tags_warmed_total",
                "Tags a keep-warm rule warmed because they were new or moved",
                &["rule"],
            ),
            bytes: counter_vec(
                registry,
                "wharf_keep_warm_bytes_total",
                "Blob bytes keep-warm runs fetched (not already cached)",
                &["rule"],
            ),
            last_success: gauge_vec(
                registry,
                "wharf_keep_warm_last_success_timestamp_seconds",
                "When a keep-warm rule last listed its tags and warmed them all",
                &["rule"],
            ),
        }
    }
}
