//! Files read while wharf serves (the certificate, the clients' credentials): noticed when they
//! change, and read again then or on SIGHUP. Knows files and signals, not what is in them.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::Signal;

/// What is read from files that may change while wharf serves.
pub trait Reload: Send + Sync {
    /// Reads the files again if they changed, or regardless if `forced`. Blocking.
    fn reload(&self, forced: bool);
}

/// How often reloadable files are looked at (a `stat` each).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// What a file looked like when it was read: a changed stamp means new content (a rewrite, or
/// a symlink swapped to a new file, as Kubernetes updates secrets). The change time, which no
/// program can set, catches copies that keep the old modification time (`cp -p`, `rsync -t`).
/// `None`: the file could not be looked at.
type FileStamp = Option<(u64, u64, i64, i64, u64)>;

/// A set of files, and what they looked like when last read.
#[derive(Debug)]
pub struct WatchedFiles {
    paths: Vec<PathBuf>,
    last: Mutex<Vec<FileStamp>>,
}

impl WatchedFiles {
    /// Stamps the files now: made before they are first read, so a change in between is seen
    /// by the first check.
    pub fn new(paths: Vec<PathBuf>) -> WatchedFiles {
        let last = Mutex::new(stamps(&paths));
        WatchedFiles { paths, last }
    }

    /// Whether the files should be read again: they changed since the last call, or `forced`.
    pub fn changed(&self, forced: bool) -> bool {
        let now = stamps(&self.paths);
        let mut last = self.last.lock().expect("lock poisoned");
        if !forced && *last == now {
            return false;
        }
        *last = now;
        true
    }
}

fn stamps(paths: &[PathBuf]) -> Vec<FileStamp> {
    paths
        .iter()
        .map(|path| {
            let m = std::fs::metadata(path).ok()?;
            Some((m.dev(), m.ino(), m.ctime(), m.ctime_nsec(), m.len()))
        })
        .collect()
}

/// Reloads `reloadable` whenever its files change and on SIGHUP; runs until dropped. With
/// nothing to reload, SIGHUP is only logged (`systemctl reload` may send it to any wharf).
pub async fn keep_current(reloadable: Vec<Arc<dyn Reload>>, mut hangups: Option<Signal>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = ticks.tick() => false,
            Some(()) = async { hangups.as_mut()?.recv().await } => true,
        };
        if forced && reloadable.is_empty() {
            tracing::info!("SIGHUP: nothing to reload (no [server.tls], no [server.auth])");
        }
        for one in &reloadable {
            let one = one.clone();
            let _ = tokio::task::spawn_blocking(move || one.reload(forced)).await;
        }
    }
}
