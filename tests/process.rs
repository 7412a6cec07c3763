//! The real binary under hard stops: kill -9 at any moment never leaves a bad or partial blob
//! behind and never loses a committed one; SIGTERM lets responses finish within the grace period.

use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wharf::config::AuthConfig;
use wharf::Config;

use crate::common::{config, each_upstream, pki, random_bytes, sha256, FakeRegistry};

const WHARF: &str = env!("CARGO_BIN_EXE_wharf");
const MIB: usize = 1024 * 1024;

/// A wharf process, killed by PID when dropped whatever happened.
struct Process {
    child: Child,
    addr: SocketAddr,
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
    fn start(dir: &Path, config: &Config, grace: Duration) -> Process {
        Self::start_logging(dir, config, grace, "info")
    }

    /// [`Process::start`] with `RUST_LOG` set to `filter`.
    fn start_logging(dir: &Path, config: &Config, grace: Duration, filter: &str) -> Process {
        let mut config = config.clone();
        config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.server.shutdown_grace = grace;
        let config_path = dir.join("mirror.toml");
        fs::write(&config_path, config.to_toml()).unwrap();
        let log = dir.join(format!("wharf-{}.log", Instant::now().elapsed().as_nanos()));
        let child = Command::new(WHARF)
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = fs::read_to_string(&process.log).unwrap_or_default();
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

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm(&self) {
        self.signal("-TERM");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit on its own; its status.
    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "wharf did not exit within {limit:?}:\n{}",
                fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every committed blob file, hashed: (name, digest of its bytes).
fn committed_blobs(cache: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for fan in fs::read_dir(cache.join("blobs/sha256"))
        .into_iter()
        .flatten()
    {
        for file in fs::read_dir(fan.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let mut bytes = Vec::new();
            fs::File::open(&path)
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            let name = format!("sha256:{}", path.file_name().unwrap().to_string_lossy());
            out.push((name, sha256(&bytes)));
        }
    }
    out
}

fn temp_files(cache: &Path) -> usize {
    fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_leaves_only_whole_verified_blobs() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<_> = (0..24)
        .map(|n| upstream.add_blob(random_bytes(MIB, n)))
        .collect();
    // About 64 ms per fill, so early kills land mid-fill and later ones mid-commit or between;
    // a small cache so commits keep evicting.
    upstream.faults().chunk_delay = Some(Duration::from_millis(4));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut config = config(&upstream, &cache);
    config.cache.max_size = "3MiB".parse().unwrap();
    let client = reqwest::Client::new();
    let mut killed_mid_fill = 0;

    for round in 0..8u64 {
        let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
        assert_eq!(
            temp_files(&cache),
            0,
            "round {round}: start-up removes temp files"
        );
        for (name, actual) in committed_blobs(&cache) {
            assert_eq!(
                name, actual,
                "round {round}: a committed blob is whole and right"
            );
        }
        // Eight clients on six different blobs, then a kill at a different moment each round.
        let pulls: Vec<_> = (0..8)
            .map(|i| {
                let url = wharf.url(&format!(
                    "/v2/library/x/blobs/{}",
                    blobs[(round as usize * 5 + i % 6) % blobs.len()]
                ));
                let client = client.clone();
                tokio::spawn(async move {
                    let Ok(r) = client.get(url).send().await else {
                        return;
                    };
                    let mut body = r.bytes_stream();
                    while let Some(Ok(_)) = body.next().await {}
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10 + round * 30)).await;
        wharf.kill_9();
        killed_mid_fill += usize::from(temp_files(&cache) > 0);
        for p in pulls {
            let _ = p.await;
        }
    }
    eprintln!("kill -9: {killed_mid_fill} of 8 rounds killed wharf mid-fill");
    assert!(
        killed_mid_fill > 0,
        "no kill landed mid-fill; the test proves nothing"
    );

    // After the last crash: everything served is right, fetched again where it must be.
    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    assert_eq!(temp_files(&cache), 0);
    upstream.faults().chunk_delay = None;
    for d in &blobs {
        let r = client
            .get(wharf.url(&format!("/v2/library/x/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&sha256(&r.bytes().await.unwrap()), d);
    }
    for (name, actual) in committed_blobs(&cache) {
        assert_eq!(name, actual);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_blob_survives_kill_9() {
    let upstream = FakeRegistry::start().await;
    let kept = upstream.add_blob(random_bytes(2 * MIB, 1));
    let cut = upstream.add_blob(random_bytes(8 * MIB, 2));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let client = reqwest::Client::new();

    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    let r = client
        .get(wharf.url(&format!("/v2/library/x/blobs/{kept}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), kept);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !committed_blobs(&cache).iter().any(|(n, _)| *n == kept) {
        assert!(Instant::now() < deadline, "never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Mid-fill of another blob.
    upstream.faults().chunk_delay = Some(Duration::from_millis(5));
    let url = wharf.url(&format!("/v2/library/x/blobs/{cut}"));
    let pull = tokio::spawn(async move { client.get(url).send().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(150)).await;
    wharf.kill_9();
    let _ = pull.await;
    upstream.faults().chunk_delay = None;

    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    let client = reqwest::Client::new();
    let r = client
        .get(wharf.url(&format!("/v2/library/x/blobs/{kept}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-wharf-cache"],
        "hit",
        "nothing committed is lost"
    );
    assert_eq!(sha256(&r.bytes().await.unwrap()), kept);
    assert_eq!(upstream.count("GET", &kept), 1);
    let r = client
        .get(wharf.url(&format!("/v2/library/x/blobs/{cut}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-wharf-cache"], "miss");
    assert_eq!(sha256(&r.bytes().await.unwrap()), cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_a_response_finish_within_the_grace_period() {
    let upstream = FakeRegistry::start().await;
    let bytes = random_bytes(8 * MIB, 1);
    let digest = upstream.add_blob(bytes.clone());
    // 128 chunks of 64 KiB, 10 ms apart: about 1.3 s.
    upstream.faults().chunk_delay = Some(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(10));

    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let pull = tokio::spawn(async move {
        let r = reqwest::get(url).await.unwrap();
        r.bytes().await.map(|b| sha256(&b))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    wharf.sigterm();
    // New connections are refused soon after the signal.
    let addr = wharf.addr;
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        pull.await.unwrap().unwrap(),
        digest,
        "the response finished"
    );
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(temp_files(&cache), 0);
    assert_eq!(committed_blobs(&cache), vec![(digest.clone(), digest)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_cuts_what_outlasts_the_grace_period_and_leaves_nothing_partial() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(8 * MIB, 2));
    // About 6 s of streaming, far beyond the grace period.
    upstream.faults().chunk_delay = Some(Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let mut wharf = Process::start(dir.path(), &config, Duration::from_millis(300));

    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let pull = tokio::spawn(async move {
        let r = reqwest::get(url).await.unwrap();
        r.bytes().await.map(|b| b.len())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(5)).success());
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
    assert!(
        pull.await.unwrap().is_err(),
        "the unfinished response was cut, not completed"
    );
    assert!(
        committed_blobs(&cache).is_empty(),
        "nothing partial was committed"
    );
    assert_eq!(
        temp_files(&cache),
        0,
        "the interrupted fill removed its temp file"
    );

    upstream.faults().chunk_delay = None;
    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    assert_eq!(temp_files(&cache), 0);
    let r = reqwest::get(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_wharf_keeps_serving() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let pki = pki::issue("a CA");
    pki::write_pair(dir.path(), &pki);
    let mut config = config(&upstream, &dir.path().join("cache"));
    config.server.tls = Some(pki::server_tls(dir.path()));
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    let reloads = |wharf: &Process| {
        fs::read_to_string(&wharf.log)
            .unwrap()
            .matches("TLS certificate reloaded")
            .count()
    };
    assert_eq!(reloads(&wharf), 0);
    // The files are unchanged: only the signal makes wharf load them again.
    wharf.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&wharf) == 0 {
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        wharf.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop wharf"
    );
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = client
        .get(format!("https://{}/v2/", wharf.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn sighup_does_not_stop_a_plain_http_wharf() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&upstream, &dir.path().join("cache"));
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    wharf.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&wharf.log)
        .unwrap()
        .contains("nothing to reload")
    {
        assert!(Instant::now() < deadline, "SIGHUP went unanswered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = reqwest::get(wharf.url("/healthz")).await.unwrap();
    assert_eq!(r.status(), 200);
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn changed_client_credentials_take_effect_without_a_restart() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    let hash = |token: &str| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token));
    fs::write(&tokens, format!("sha256:{} old\n", hash("old-token"))).unwrap();
    let mut config = config(&upstream, &dir.path().join("cache"));
    config.server.auth = Some(AuthConfig {
        htpasswd: None,
        tokens: Some(tokens.clone()),
    });
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    let status = |token: &'static str| {
        let url = wharf.url("/v2/");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(status("old-token").await, 200);
    fs::write(&tokens, format!("sha256:{} new\n", hash("new-token"))).unwrap();
    // The change is seen within seconds anyway; SIGHUP asks for it at once.
    wharf.signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !fs::read_to_string(&wharf.log)
        .unwrap()
        .contains("client credentials reloaded")
    {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload the credentials"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(status("old-token").await, 401);
    assert_eq!(status("new-token").await, 200);
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_reach_no_log_metric_or_check_config_output() {
    use base64::Engine as _;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(64 * 1024, 9));
    upstream.faults().bearer = true;
    const PASSWORD: &str = "s3cret-pw-0451";
    let password_file = dir.path().join("password");
    fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    fs::set_permissions(&password_file, fs::Permissions::from_mode(0o644)).unwrap();
    // And the clients' credentials: a user and a token of wharf's own.
    const CLIENT_PASSWORD: &str = "client-pw-7781";
    const CLIENT_TOKEN: &str = "client-token-9902";
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash(CLIENT_PASSWORD, 4).unwrap();
    fs::write(&htpasswd, format!("puller:{hash}\n")).unwrap();
    fs::set_permissions(&htpasswd, fs::Permissions::from_mode(0o600)).unwrap();
    let tokens = dir.path().join("tokens");
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(CLIENT_TOKEN));
    fs::write(&tokens, format!("sha256:{token_hash} ci\n")).unwrap();
    fs::set_permissions(&tokens, fs::Permissions::from_mode(0o644)).unwrap();
    let mut config = config(&upstream, &dir.path().join("cache"));
    each_upstream(&mut config, |u| {
        u.username = Some("wharf".into());
        u.password_file = Some(password_file.clone());
    });
    config.server.auth = Some(AuthConfig {
        htpasswd: Some(htpasswd.clone()),
        tokens: Some(tokens.clone()),
    });
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("wharf:{PASSWORD}"));
    let client_basic =
        base64::engine::general_purpose::STANDARD.encode(format!("puller:{CLIENT_PASSWORD}"));
    let secrets = [
        PASSWORD,
        basic.as_str(),
        crate::common::TOKEN,
        CLIENT_PASSWORD,
        client_basic.as_str(),
        CLIENT_TOKEN,
        hash.as_str(),
    ];
    let leaks = |what: &str, text: &str| {
        for secret in secrets {
            assert!(!text.contains(secret), "{what} holds a secret: {secret}");
        }
    };

    // check-config warns of the readable password and token files, and prints no secret.
    let config_path = dir.path().join("check.toml");
    fs::write(&config_path, config.to_toml()).unwrap();
    let checked = Command::new(WHARF)
        .args(["check-config", "--config"])
        .arg(&config_path)
        .output()
        .unwrap();
    assert!(checked.status.success());
    let stderr = String::from_utf8_lossy(&checked.stderr);
    assert!(stderr.contains("password_file"), "{stderr}");
    assert!(stderr.contains("server.auth.tokens"), "{stderr}");
    assert!(!stderr.contains("server.auth.htpasswd"), "{stderr}");
    leaks("check-config", &String::from_utf8_lossy(&checked.stdout));
    leaks("check-config", &stderr);

    // A pull through a bearer challenge, answered with the credentials, at the chattiest log
    // level: the secrets travel upstream but appear nowhere wharf writes.
    let wharf = Process::start_logging(dir.path(), &config, Duration::from_secs(5), "trace");
    let client = reqwest::Client::new();
    let r = client
        .get(wharf.url(&format!("/v2/library/app/blobs/{digest}")))
        .basic_auth("puller", Some(CLIENT_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    for wrong in [
        "Bearer client-token-9903",
        "Basic cHVsbGVyOmNsaWVudC1wdy03NzgyCg==",
    ] {
        let r = client
            .get(wharf.url("/v2/"))
            .header("authorization", wrong)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let seen_basic = upstream
        .seen()
        .iter()
        .any(|s| s.authorization.as_deref() == Some(&format!("Basic {basic}")));
    assert!(seen_basic, "the credentials were not used");
    for path in ["/metrics", "/readyz"] {
        let text = client
            .get(wharf.url(path))
            .bearer_auth(CLIENT_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        leaks(path, &text);
    }
    let log = fs::read_to_string(&wharf.log).unwrap();
    assert!(log.contains("can be read by other users"));
    assert!(log.lines().count() > 20, "trace logging was not on");
    leaks("the log", &log);
}
