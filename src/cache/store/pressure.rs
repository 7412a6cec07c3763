//! Errors that say the process or the machine is short of something for a moment (file
//! descriptors, memory) rather than that the disk or an entry is bad. They prove nothing about
//! what is cached: an entry whose file cannot be opened for want of a descriptor stays, caching
//! is not suspended, and the request is answered 503 with `Retry-After` instead.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::io::Errno;

use crate::metrics::Metrics;

/// Whether `error` is a shortage that passes on its own.
pub fn is_transient(error: &io::Error) -> bool {
    let errno = error.raw_os_error().map(Errno::from_raw_os_error);
    matches!(
        errno,
        Some(
            Errno::MFILE | Errno::NFILE | Errno::NOMEM | Errno::NOBUFS | Errno::AGAIN | Errno::INTR
        )
    )
}

/// Opens of committed files that failed without proving the entry damaged: counted, and logged
/// when they start and when they stop, not once per request.
pub struct OpenFailures {
    failing: AtomicBool,
    metrics: Metrics,
}

impl OpenFailures {
    pub fn new(metrics: Metrics) -> OpenFailures {
        OpenFailures {
            failing: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn failed(&self, error: &io::Error) {
        let kind = if is_transient(error) {
            "transient"
        } else {
            "other"
        };
        self.metrics
            .cache_open_errors
            .with_label_values(&[kind])
            .inc();
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "cache files cannot be opened; their entries are kept");
        }
    }

    pub fn succeeded(&self) {
        if self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!("cache files open again");
        }
    }
}
