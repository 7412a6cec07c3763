//! A `wharf serve` child process, for the tests that need the real binary: signals, kill -9,
//! resource limits.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wharf::Config;

use super::{metric_in, WHARF};

/// A wharf process, killed by PID when dropped whatever happened.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Starts `wharf serve` with `config` (on 127.0.0.1:0, with `grace` to shut down), written
    /// to `dir/mirror.toml`, and waits until it serves.
    pub fn start(dir: &Path, config: &Config, grace: Duration) -> Process {
        Self::start_logging(dir, config, grace, "info")
    }

    /// [`Process::start`] with `RUST_LOG` set to `filter`.
    pub fn start_logging(dir: &Path, config: &Config, grace: Duration, filter: &str) -> Process {
        Self::start_with(dir, config, grace, filter, None)
    }

    /// [`Process::start`] allowed at most `max_files` open file descriptors.
    pub fn start_with_max_files(dir: &Path, config: &Config, max_files: u64) -> Process {
        Self::start_with(dir, config, Duration::from_secs(5), "info", Some(max_files))
    }

    fn start_with(
        dir: &Path,
        config: &Config,
        grace: Duration,
        filter: &str,
        max_files: Option<u64>,
    ) -> Process {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let mut config = config.clone();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.shutdown_grace = grace;
        let config_path = dir.join("mirror.toml");
        fs::write(&config_path, config.to_toml()).unwrap();
        let log = dir.join(format!(
            "wharf-{}.log",
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        // prlimit execs wharf in its own process: the PID is wharf's.
        let mut command = match max_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(WHARF);
                c
            }
            None => Command::new(WHARF),
        };
        let child = command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", filter)
            .stderr(fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        // Guarded from here on: a failed start-up still kills and reaps the child.
        let mut process = Process {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = process.log_text();
            let addr = text.lines().find_map(|l| {
                let at = l.find("wharf is serving")?;
                let rest = &l[at..];
                let listen = &rest[rest.find("listen=")? + 7..];
                listen.split_whitespace().next()?.parse().ok()
            });
            if let Some(addr) = addr {
                process.addr = addr;
                return process;
            }
            assert!(Instant::now() < deadline, "wharf did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the log has a line containing `fragment`.
    pub fn wait_for_log(&self, fragment: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.log_text().contains(fragment) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// One series of the process's `/metrics`, as [`metric_in`] reads it.
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(self.url("/metrics")).await.unwrap();
        metric_in(&text.text().await.unwrap(), name, labels)
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own; its status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wharf did not exit within {limit:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Runs `wharf cache ARGS --dir CACHE`: its exit code, and what it printed.
pub fn cache_command(cache: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(WHARF)
        .arg("cache")
        .args(args)
        .arg("--dir")
        .arg(cache)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}
