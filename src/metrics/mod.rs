//! Prometheus metrics. `Metrics` owns its registry (no globals, so tests can run many wharfs in
//! one process). Names carry the `wharf_` prefix and base units; label values come from enums or
//! from the operator's config, never from request input.

mod cluster;
mod keep_warm;
mod labels;
mod quota;
mod register;
mod usage;

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Registry,
    TextEncoder,
};

pub use cluster::PeerCollectors;
pub use keep_warm::KeepWarmCollectors;
pub use labels::{BypassReason, CacheResult, ContentKind, EvictionReason, RangeKind, Source};
pub use quota::{QuotaCollectors, QuotaSeen};
use register::{counter, counter_vec, gauge};
pub use usage::{RepositoryUsage, Served, Usage};

/// Cheap to clone (one reference count): every request's state holds one.
#[derive(Clone)]
pub struct Metrics(Arc<Collectors>);

impl std::ops::Deref for Metrics {
    type Target = Collectors;

    fn deref(&self) -> &Collectors {
        &self.0
    }
}

pub struct Collectors {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_request_duration: HistogramVec,
    pub cache_results: IntCounterVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_bytes: IntCounterVec,
    pub upstream_resumes: IntCounterVec,
    pub upstream_paused_releases: IntCounterVec,
    pub side_fetches: IntCounterVec,
    pub side_fetch_bytes: IntCounter,
    pub served_bytes: IntCounterVec,
    pub file_range_bytes: IntCounterVec,
    pub fills_in_flight: IntGauge,
    pub fill_buffer_bytes: IntGauge,
    pub digest_mismatches: IntCounter,
    pub cache_size_bytes: IntGauge,
    pub cache_entries: IntGauge,
    pub cache_max_size_bytes: IntGauge,
    pub cache_evictions: IntCounterVec,
    pub cache_evicted_bytes: IntCounterVec,
    pub cache_bypass: IntCounterVec,
    pub cache_writable: IntGauge,
    pub cache_write_errors: IntCounterVec,
    pub cache_open_errors: IntCounterVec,
    pub upstream_throttled: IntCounterVec,
    pub range_requests: IntCounterVec,
    pub peers: PeerCollectors,
    pub quota: QuotaCollectors,
    pub keep_warm: KeepWarmCollectors,
    /// Served from the cache per repository and tag (not exported: unbounded labels).
    pub usage: Usage,
    pub shared_requests: IntCounterVec,
    pub shared_bytes: IntCounter,
    pub shared_held_bytes: IntGauge,
    pub policy_verifications: IntCounterVec,
    pub policy_refusals: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "wharf_http_request_duration_seconds",
                "Time from request to response headers, by route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_request_duration.clone()))
            .expect("unique metric");
        let digest_mismatches = counter(
            &registry,
            "wharf_digest_mismatches_total",
            "Upstream bodies whose digest or length did not match; never cached",
        );
        Metrics(Arc::new(Collectors {
            http_requests: counter_vec(
                &registry,
                "wharf_http_requests_total",
                "Requests answered, by route and status",
                &["route", "status"],
            ),
            http_request_duration,
            cache_results: counter_vec(
                &registry,
                "wharf_cache_results_total",
                "Cache lookups by kind (blob|manifest) and result (hit|miss|coalesced|stale)",
                &["kind", "result"],
            ),
            upstream_requests: counter_vec(
                &registry,
                "wharf_upstream_requests_total",
                "Requests sent upstream, by upstream, kind and status (or error)",
                &["upstream", "kind", "status"],
            ),
            upstream_bytes: counter_vec(
                &registry,
                "wharf_upstream_bytes_total",
                "Body bytes received from upstreams",
                &["upstream"],
            ),
            upstream_resumes: counter_vec(
                &registry,
                "wharf_upstream_resumes_total",
                "Blob bodies that broke and were asked for again from where they broke (resumed), or not (gave_up)",
                &["upstream", "result"],
            ),
            upstream_paused_releases: counter_vec(
                &registry,
                "wharf_upstream_paused_releases_total",
                "Places under max_fetches given back, with their request, because the client reading a side fetch or pass-through answer read nothing for paused_client_timeout",
                &["upstream"],
            ),
            side_fetches: counter_vec(
                &registry,
                "wharf_side_fetches_total",
                "Ranges far ahead of a fill: fetched upstream on their own (fetched), served from the fill after the upstream failed them (fell_back), or left to the fill because the blob had its most in flight (bounded) or the upstream no place free under max_fetches (no_place), or served from the fill after the client paused and the place went back (paused)",
                &["result"],
            ),
            side_fetch_bytes: counter(
                &registry,
                "wharf_side_fetch_bytes_total",
                "Bytes sent to clients from side fetches (never cached)",
            ),
            served_bytes: counter_vec(
                &registry,
                "wharf_served_bytes_total",
                "Body bytes sent to clients, by source (cache|upstream|peer|shared)",
                &["source"],
            ),
            file_range_bytes: counter_vec(
                &registry,
                "wharf_file_range_bytes_total",
                "Cached body bytes sent from the file itself, by how (sendfile, or \
                 read_and_send where the filesystem cannot splice)",
                &["how"],
            ),
            fills_in_flight: gauge(
                &registry,
                "wharf_fills_in_flight",
                "Blob downloads from upstream in progress",
            ),
            fill_buffer_bytes: gauge(
                &registry,
                "wharf_fill_buffer_bytes",
                "Bytes of memory held by the buffers of fills and blob readers (in use and spare)",
            ),
            digest_mismatches,
            cache_size_bytes: gauge(
                &registry,
                "wharf_cache_size_bytes",
                "Bytes of committed blobs and manifests",
            ),
            cache_entries: gauge(
                &registry,
                "wharf_cache_entries",
                "Committed blobs and manifests",
            ),
            cache_max_size_bytes: gauge(
                &registry,
                "wharf_cache_max_size_bytes",
                "The configured bound on committed bytes (max_size)",
            ),
            cache_evictions: counter_vec(
                &registry,
                "wharf_cache_evictions_total",
                "Entries removed from the cache, by reason (size|idle|invalid|disk_space)",
                &["reason"],
            ),
            cache_evicted_bytes: counter_vec(
                &registry,
                "wharf_cache_evicted_bytes_total",
                "Bytes removed from the cache, by reason (size|idle|invalid|disk_space)",
                &["reason"],
            ),
            cache_bypass: counter_vec(
                &registry,
                "wharf_cache_bypass_total",
                "Blobs served without being cached, by reason (oversize|unwritable)",
                &["reason"],
            ),
            cache_writable: gauge(
                &registry,
                "wharf_cache_writable",
                "1 while the cache directory takes writes, 0 while caching is suspended",
            ),
            cache_open_errors: counter_vec(
                &registry,
                "wharf_cache_open_errors_total",
                "Cached files that could not be opened for a reason that proves nothing about them (transient: out of descriptors or memory, answered 503; other: served from the upstream); their entries are kept",
                &["kind"],
            ),
            cache_write_errors: counter_vec(
                &registry,
                "wharf_cache_write_errors_total",
                "Failed cache writes, by condition (disk_full|read_only|failing)",
                &["condition"],
            ),
            upstream_throttled: counter_vec(
                &registry,
                "wharf_upstream_throttled_total",
                "Requests not sent upstream because it asked wharf to wait (429 Retry-After)",
                &["upstream"],
            ),
            range_requests: counter_vec(
                &registry,
                "wharf_range_requests_total",
                "Blob requests with a Range header resolved against the blob's size, by kind \
                 (single|multi|too_many_parts|unsatisfiable)",
                &["kind"],
            ),
            peers: PeerCollectors::new(&registry),
            quota: QuotaCollectors::new(&registry),
            keep_warm: KeepWarmCollectors::new(&registry),
            usage: Usage::default(),
            shared_requests: counter_vec(
                &registry,
                "wharf_shared_requests_total",
                "Requests to the shared tier by operation (get|put|head|delete) and result \
                 (found|absent|broken|refused|uploaded|present|aborted|error; delete: \
                 expired|evicted|damaged); broken: a body finished from the source; refused: a copy \
                 that failed verification, deleted; aborted: an upload whose fill \
                 failed",
                &["op", "result"],
            ),
            shared_bytes: counter(
                &registry,
                "wharf_shared_bytes_total",
                "Blob bytes received from the shared tier",
            ),
            shared_held_bytes: gauge(
                &registry,
                "wharf_shared_held_bytes",
                "Blob bytes the shared tier held after the last expiry pass this node ran",
            ),
            policy_verifications: counter_vec(
                &registry,
                "wharf_policy_verifications_total",
                "Signature checks of manifests in repositories a [[policy]] rule covers, by rule \
                 and result (verified|through_index|signature_object|no_signature|untrusted_key|\
                 other_digest|bad_signature|error); a result is reused for verified_ttl without \
                 being counted again",
                &["rule", "result"],
            ),
            policy_refusals: counter_vec(
                &registry,
                "wharf_policy_refusals_total",
                "Manifest requests a rule's check refused, by rule and mode (enforce: answered \
                 403; warn: served anyway)",
                &["rule", "mode"],
            ),
            registry,
        }))
    }

    pub fn cache_result(&self, kind: ContentKind, result: CacheResult) {
        self.cache_results
            .with_label_values(&[kind.as_str(), result.as_str()])
            .inc();
    }

    pub fn evicted(&self, reason: EvictionReason, bytes: u64) {
        let reason = reason.as_str();
        self.cache_evictions.with_label_values(&[reason]).inc();
        self.cache_evicted_bytes
            .with_label_values(&[reason])
            .inc_by(bytes);
    }

    /// A range far ahead of a fill: `fetched`, `fell_back` or `bounded`.
    pub fn side_fetch(&self, result: &'static str) {
        self.side_fetches.with_label_values(&[result]).inc();
    }

    pub fn bypassed(&self, reason: BypassReason) {
        self.cache_bypass
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// The counter of bytes served from `source`, to count many chunks without a lookup each.
    pub fn served_counter(&self, source: Source) -> IntCounter {
        self.served_bytes.with_label_values(&[source.as_str()])
    }

    pub fn served(&self, source: Source, bytes: u64) {
        self.served_bytes
            .with_label_values(&[source.as_str()])
            .inc_by(bytes);
    }

    pub fn range_request(&self, kind: RangeKind) {
        self.range_requests
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
