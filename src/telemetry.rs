//! Logging setup: `tracing` to stderr, filtered by `RUST_LOG` (default `info`). Colours only on
//! a terminal, so journald and log files get plain text. Lines are written by a background
//! thread in batches: with an access-log line per request, a write syscall on the request path
//! costs a measurable share of a busy mirror's CPU.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread; beyond this, lines are dropped rather than stalling
/// requests (and the drop is counted by the writer).
const QUEUED_LINES: usize = 128 * 1024;

/// How long the writer thread rests after writing a large batch. Lines logged meanwhile wait in
/// the queue and go out in the next batch, so under load the thread is not woken for every
/// line: at tens of thousands of requests a second, waking it per access-log line cost wharf a
/// fifth of its warm-manifest throughput on two cores.
const REST_BETWEEN_BATCHES: Duration = Duration::from_millis(5);
/// A batch this large means lines are coming fast; a smaller one (a quiet mirror) is written at
/// once and the thread waits for the next line without resting.
const LARGE_BATCH: usize = 8 * 1024;

/// Installs the subscriber. Keep the guard alive until exit: dropping it flushes what is queued.
pub fn init() -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("wharf-log")
        // Buffered: the writer thread drains every queued line, then flushes them with one
        // write.
        .finish(Paced {
            out: std::io::BufWriter::with_capacity(64 * 1024, std::io::stderr()),
            batch: 0,
        });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    guard
}

/// The log writer: the writer thread flushes after each batch it drained, then rests if the
/// batch was large.
struct Paced<W> {
    out: W,
    /// Bytes written since the last flush.
    batch: usize,
}

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.out.write(buf)?;
        self.batch += written;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.out.flush();
        if std::mem::take(&mut self.batch) >= LARGE_BATCH {
            std::thread::sleep(REST_BETWEEN_BATCHES);
        }
        flushed
    }
}
