//! What the wharfs in this process log about their TLS certificate, kept in memory, so a test
//! can see that a reload was tried (and refused) instead of guessing how long that takes.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};

static LINES: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

struct Sink(Arc<Mutex<Vec<u8>>>);

impl io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Starts keeping the log lines of wharf's TLS module (once per process; every wharf in it
/// logs through the same subscriber). Lines logged before the first call are not kept.
pub fn capture_tls() {
    LINES.get_or_init(|| {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "wharf::server::tls=info",
            ))
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init()
            .expect("no other log subscriber in the test binary");
        lines
    });
}

/// The captured lines that contain every one of `fragments`.
pub fn lines_with(fragments: &[&str]) -> usize {
    let lines = LINES.get().expect("capture_tls() first");
    let text = String::from_utf8_lossy(&lines.lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| fragments.iter().all(|f| line.contains(f)))
        .count()
}
