//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Colours only on
//! a terminal, so journald and log files get plain text. Lines are written by a background
//! thread in batches: with an access-log line per request, a write syscall on the request path
//! costs a measurable share of a busy mirror's CPU.

use std::io::IsTerminal;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread; beyond this, lines are dropped rather than stalling
/// requests (and the drop is counted by the writer).
const QUEUED_LINES: usize = 128 * 1024;

/// Installs the subscriber. Keep the guard alive until exit: dropping it flushes what is queued.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("wharf-log")
        // Buffered: the writer thread drains every queued line, then flushes them with one
        // write.
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    guard
}
