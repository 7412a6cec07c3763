//! The `wharf` binary itself: `check-config`, and `serve` with its built-in defaults.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::WHARF;

#[test]
fn check_config_prints_the_effective_configuration() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/mirror.toml");
    let out = Command::new(WHARF)
        .args(["check-config", "--config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "listen = \"0.0.0.0:5000\"",
        "max_size = \"20GiB\"",
        "tag_ttl = \"5m\"",
        "url = \"https://registry-1.docker.io/\"",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

/// Runs `wharf check-config --config FILE`.
fn check_config(file: &std::path::Path) -> std::process::Output {
    Command::new(WHARF)
        .args(["check-config", "--config"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn check_config_names_a_bad_key_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mirror.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"0.0.0.0:5000\"\n\n[cache]\nmax_sise = \"1GiB\"\n",
    )
    .unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_sise") && err.contains("line 5"), "{err}");

    let out = Command::new(WHARF)
        .args(["check-config", "--config", "/nonexistent/mirror.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mirror.toml"));
}

#[test]
fn check_config_reads_the_credential_files() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    // An MD5-crypt hash, as `htpasswd` writes without -B: refused, with its line, not echoed.
    std::fs::write(
        &htpasswd,
        "# users\nalice:$apr1$Qx3s9sQ2$0123456789abcdefghijkl\n",
    )
    .unwrap();
    let file = dir.path().join("mirror.toml");
    std::fs::write(
        &file,
        format!(
            "[server.auth]\nhtpasswd = {:?}\n",
            htpasswd.display().to_string()
        ),
    )
    .unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("htpasswd -B"),
        "{err}"
    );
    assert!(!err.contains("Qx3s9sQ2"), "{err}");

    std::fs::write(&file, "[server.auth]\n").unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("htpasswd, tokens or both"));
}

#[test]
fn check_config_reads_the_admin_tokens_and_names_a_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("admin-tokens");
    std::fs::write(&tokens, "# operators\nsha256:not-a-hash ops\n").unwrap();
    let file = dir.path().join("mirror.toml");
    let config = format!("[admin]\ntokens = {:?}\n", tokens.display().to_string());
    std::fs::write(&file, &config).unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin-tokens") && err.contains("line 2") && err.contains("sha256:<64 hex"),
        "{err}"
    );
    let hash = "ab".repeat(32);
    std::fs::write(&tokens, format!("sha256:{hash} ops\n")).unwrap();
    let out = check_config(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[admin]"));
}

#[test]
fn check_config_and_serve_read_the_policy_keys_and_name_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.pub");
    // Written by openssl (`ec -pubout`), as cosign writes its public keys.
    std::fs::write(&key, include_str!("../src/policy/testdata/ecdsa-p256.pub")).unwrap();
    let file = dir.path().join("mirror.toml");
    let policy = |key: &std::path::Path, upstream: &str| {
        format!(
            "[[policy]]\nname = \"myorg-signed\"\nupstream = {upstream:?}\n\
             repositories = [\"myorg/*\"]\nkeys = [{:?}]\nmode = \"warn\"\n",
            key.display().to_string()
        )
    };
    std::fs::write(&file, policy(&key, "docker.io")).unwrap();
    let out = check_config(&file);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        printed.contains("[[policy]]") && printed.contains("verified_ttl = \"1h\""),
        "{printed}"
    );

    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "not a key\n").unwrap();
    std::fs::write(&file, policy(&garbage, "docker.io")).unwrap();
    let out = check_config(&file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.pub"), "{err}");

    std::fs::write(&file, policy(&key, "quay.io")).unwrap();
    let err = String::from_utf8_lossy(&check_config(&file).stderr).to_string();
    assert!(
        err.contains("myorg-signed") && err.contains("quay.io"),
        "{err}"
    );

    // A key that cannot be read stops `serve` before it listens: never silently unprotected.
    std::fs::write(&file, policy(&garbage, "docker.io")).unwrap();
    let out = Command::new(WHARF)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("garbage.pub"), "{err}");
}

/// Stops the child by PID whatever happens in the test.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn serve_with_built_in_defaults_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(WHARF)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let stderr = running.0.stderr.take().unwrap();
    let addr = first_line(stderr, |line| {
        let at = line.find("listen=")?;
        let rest = &line[at + "listen=".len()..];
        Some(rest.split_whitespace().next()?.to_owned())
    })
    .expect("wharf logs the address it listens on");
    // The default cache directory is created in the working directory.
    assert!(dir.path().join("wharf-cache/blobs").is_dir());

    let response = http_get(&format!("http://{addr}/v2/"));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response
        .to_ascii_lowercase()
        .contains("docker-distribution-api-version: registry/2.0"));

    let status = Command::new("kill")
        .args(["-TERM", &running.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wharf did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `stderr` on a thread of its own until `find` picks something out of a line; `None` if
/// no line did within 10 s, or the stream ended first.
fn first_line<T: Send + 'static>(
    stderr: ChildStderr,
    find: impl Fn(&str) -> Option<T> + Send + 'static,
) -> Option<T> {
    let (found, finding) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        // Read to the end (the child's exit), so that wharf never writes to a full pipe.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(value) = find(&line) {
                    sent = found.send(value).is_ok();
                }
            }
        }
    });
    finding.recv_timeout(Duration::from_secs(10)).ok()
}

/// A minimal blocking HTTP/1.1 GET, so this test needs no async runtime.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let authority = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let path = &url["http://".len() + authority.len()..];
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn a_second_wharf_on_the_same_cache_directory_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let spawn = || {
        Command::new(WHARF)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = Running(spawn());
    let stderr = first.0.stderr.take().unwrap();
    let serving = first_line(stderr, |line| {
        line.contains("wharf is serving").then_some(())
    });
    assert!(serving.is_some(), "the first wharf did not start");

    let second = spawn().wait_with_output().unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another wharf is using this cache directory"),
        "{err}"
    );
}
