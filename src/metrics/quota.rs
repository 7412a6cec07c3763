//! The pull quota upstreams announce (Docker Hub's `ratelimit-limit` and
//! `ratelimit-remaining`), per upstream: operators see it shrink before the first 429.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{IntGaugeVec, Registry};

use super::register::gauge_vec;

pub struct QuotaCollectors {
    limit: IntGaugeVec,
    remaining: IntGaugeVec,
    window: IntGaugeVec,
    /// What each upstream said last, for the admin images view.
    seen: Mutex<HashMap<String, QuotaSeen>>,
}

/// An upstream's quota as its last answer that carried one said.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSeen {
    pub limit: Option<i64>,
    pub remaining: Option<i64>,
    pub window_seconds: Option<i64>,
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
            seen: Mutex::default(),
        }
    }

    /// Records what an answer of `upstream` said: a limit (with its window) and what remains.
    pub fn observe(
        &self,
        upstream: &str,
        limit: Option<(i64, Option<i64>)>,
        remaining: Option<i64>,
    ) {
        let mut seen = self.seen.lock().expect("quota lock");
        let seen = seen.entry(upstream.to_owned()).or_default();
        if let Some((limit, window)) = limit {
            self.limit.with_label_values(&[upstream]).set(limit);
            seen.limit = Some(limit);
            if let Some(window) = window {
                self.window.with_label_values(&[upstream]).set(window);
                seen.window_seconds = Some(window);
            }
        }
        if let Some(remaining) = remaining {
            self.remaining.with_label_values(&[upstream]).set(remaining);
            seen.remaining = Some(remaining);
        }
    }

    /// What each upstream that ever sent quota headers said last, by upstream name.
    pub fn seen(&self) -> Vec<(String, QuotaSeen)> {
        let seen = self.seen.lock().expect("quota lock");
        let mut all: Vec<_> = seen.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
