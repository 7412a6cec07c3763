//! Under pressure the cache loses nothing and a warm request never waits behind cold fills: a
//! shortage of file descriptors is not damage, and a fill waiting for its source holds no thread.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::child::{cache_command, Process};
use crate::common::disk::{assert_blobs_whole, blob_path, has_blob};
use crate::common::{
    config, each_upstream, eventually, random_bytes, sha256, FakeRegistry, Hold, Wharf,
};
use wharf::config::AuthConfig;

/// The descriptors `wharf` may hold: enough to start and serve a few clients.
const MAX_FILES: u64 = 64;

/// Open descriptors of process `pid`.
fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| fds.count() as u64)
}

/// One `GET` on a kept-alive connection: the status, the `Retry-After` value and the body.
async fn get(conn: &mut TcpStream, path: &str) -> (u16, Option<String>, Bytes) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: wharf\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let head_end = loop {
        let mut buf = [0; 64 * 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed in the headers");
        received.extend_from_slice(&buf[..n]);
        if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).to_lowercase();
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
    };
    let length: usize = header("content-length").unwrap().parse().unwrap();
    let mut body = received.split_off(head_end);
    while body.len() < length {
        let mut buf = [0; 64 * 1024];
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed in the body");
        body.extend_from_slice(&buf[..n]);
    }
    (status, header("retry-after"), Bytes::from(body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_a_cached_blob_is_refused_for_now_and_kept() {
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<(String, Bytes)> = (0..4)
        .map(|n| {
            let blob = random_bytes(256 * 1024, 300 + n);
            (upstream.add_blob(blob.clone()), blob)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let wharf = Process::start_with_max_files(dir.path(), &config(&upstream, &cache), MAX_FILES);
    let path = |digest: &str| format!("/v2/library/x/blobs/{digest}");
    let mut client = TcpStream::connect(wharf.addr).await.unwrap();
    for (digest, blob) in &blobs {
        assert_eq!(get(&mut client, &path(digest)).await.2, blob);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            blobs.iter().all(|(digest, _)| has_blob(&cache, digest))
        })
        .await
    );

    // Connections wharf accepts until it has no descriptor left, and a few more waiting in the
    // listen queue, which take any descriptor freed for a moment.
    let mut held = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wharf.log_text().contains("accept failed") {
        assert!(
            Instant::now() < deadline,
            "wharf never ran out of descriptors"
        );
        held.push(TcpStream::connect(wharf.addr).await.unwrap());
    }
    for _ in 0..4 {
        held.push(TcpStream::connect(wharf.addr).await.unwrap());
    }
    for (digest, _) in &blobs {
        // Bounded: a hit may still find a descriptor wharf let go of a moment ago.
        let mut refused = None;
        for _ in 0..50 {
            let (status, retry_after, _) = get(&mut client, &path(digest)).await;
            if status != 200 {
                refused = Some((status, retry_after));
                break;
            }
            held.push(TcpStream::connect(wharf.addr).await.unwrap());
        }
        assert_eq!(
            refused,
            Some((503, Some("1".to_owned()))),
            "a hit that cannot open its file is asked to come back"
        );
        assert!(has_blob(&cache, digest), "the entry is kept");
    }
    let pid = wharf.child.id();

    // Released, every hit is served from the cache again.
    drop(held);
    assert!(
        eventually(Duration::from_secs(10), || async {
            open_files(pid) < MAX_FILES / 2
        })
        .await
    );
    for (digest, blob) in &blobs {
        let (status, _, body) = get(&mut client, &path(digest)).await;
        assert_eq!((status, &body), (200, blob));
    }
    assert_eq!(
        upstream.count("GET", "/blobs/"),
        blobs.len(),
        "never fetched again"
    );
    assert!(
        wharf
            .metric("wharf_cache_open_errors_total", &["kind=\"transient\""])
            .await
            >= blobs.len() as f64
    );
    drop(wharf);
    assert_eq!(assert_blobs_whole(&cache), blobs.len());
    let (code, text) = cache_command(&cache, &["verify"]);
    assert_eq!(code, Some(0), "nothing to remove: {text}");
}

/// Lets this process hold as many descriptors as its hard limit allows: a thousand fills hold
/// a thousand temp files.
fn raise_open_files_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    setrlimit(Resource::Nofile, raised).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_stalled_fills_hold_no_thread_a_login_needs() {
    const COLD: usize = 1000;
    raise_open_files_limit();
    let upstream = FakeRegistry::start().await;
    let warm = random_bytes(64 * 1024, 400);
    let warm_digest = upstream.add_blob(warm.clone());
    let cold: Vec<String> = (0..COLD)
        .map(|n| upstream.add_blob(random_bytes(4096, 1000 + n as u64)))
        .collect();
    // Two clients: a token (checked by its hash) for the bulk, and a user whose password is
    // checked with bcrypt, on a blocking thread.
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    let hash = bcrypt::hash("late-pw", 4).unwrap();
    std::fs::write(&htpasswd, format!("late:{hash}\n")).unwrap();
    let tokens = dir.path().join("tokens");
    let token_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest("bulk-token"));
    std::fs::write(&tokens, format!("sha256:{token_hash} bulk\n")).unwrap();
    let wharf = Wharf::start(&upstream, |c| {
        // No cap, so every fill is under way at the fake at once.
        each_upstream(c, |u| u.max_fetches = 0);
        c.server.auth = Some(AuthConfig {
            htpasswd: Some(htpasswd.clone()),
            tokens: Some(tokens.clone()),
            grants: Vec::new(),
        });
    })
    .await;
    let get = |client: &reqwest::Client, digest: &str, user: &str, password: &str| {
        client
            .get(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
            .basic_auth(user, Some(password))
            .send()
    };
    let r = get(&wharf.client, &warm_digest, "ci", "bulk-token")
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), warm);
    assert!(wharf.settled(&warm_digest).await);

    // Every cold blob's answer starts and then sends nothing until the test opens the gate.
    let hold = Hold::after(0);
    upstream.faults().hold = Some(hold.clone());
    // HTTP/2, a few connections of a couple of hundred streams each, as a busy node sees them.
    let clients: Vec<reqwest::Client> = (0..8)
        .map(|_| {
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        })
        .collect();
    let pulls: Vec<_> = cold
        .iter()
        .enumerate()
        .map(|(n, digest)| {
            let pull = get(&clients[n % clients.len()], digest, "ci", "bulk-token");
            tokio::spawn(async move { pull.await?.bytes().await })
        })
        .collect();
    // Each fill's GET has its answer, and waits for its first byte.
    let reached = eventually(Duration::from_secs(30), || async { hold.reached() == COLD }).await;
    assert!(reached, "{} of {COLD} fills started", hold.reached());

    // A login (bcrypt on a blocking thread) and a warm hit do not wait behind them.
    let late = reqwest::Client::new();
    let login = tokio::time::timeout(Duration::from_secs(10), async {
        let r = get(&late, &warm_digest, "late", "late-pw").await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap()
    });
    assert_eq!(
        login
            .await
            .expect("a login within 10 s beside 1,000 stalled fills"),
        warm
    );

    hold.open();
    for (pull, digest) in pulls.into_iter().zip(&cold) {
        let body = tokio::time::timeout(Duration::from_secs(60), pull)
            .await
            .expect("every cold pull within 60 s of the gate opening")
            .unwrap()
            .unwrap();
        assert_eq!(&sha256(&body), digest);
    }
}

/// Threads of process `pid` asleep in `open` of a FIFO, waiting for its other end.
fn threads_waiting_on_a_fifo(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("wchan")).ok())
        .filter(|wchan| wchan.contains("wait_for_partner"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_file_whose_open_blocks_holds_up_only_its_own_request() {
    const STUCK: usize = 6;
    let upstream = FakeRegistry::start().await;
    let blobs: Vec<(String, Bytes)> = (0..STUCK)
        .map(|n| {
            let blob = random_bytes(64 * 1024, 500 + n as u64);
            (upstream.add_blob(blob.clone()), blob)
        })
        .collect();
    let other = random_bytes(64 * 1024, 510);
    let other_digest = upstream.add_blob(other.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    // Its own process: its async workers are its own, as many as this machine has cores.
    let wharf = Process::start(
        dir.path(),
        &config(&upstream, &cache),
        Duration::from_secs(5),
    );
    let client = reqwest::Client::new();
    let get = |digest: &str| {
        client
            .get(wharf.url(&format!("/v2/library/x/blobs/{digest}")))
            .send()
    };
    for (digest, blob) in &blobs {
        assert_eq!(get(digest).await.unwrap().bytes().await.unwrap(), blob);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            blobs.iter().all(|(digest, _)| has_blob(&cache, digest))
        })
        .await
    );
    // Each cached file becomes a FIFO, whose open blocks until a writer comes: a filesystem
    // that hangs, as a network one can.
    for (digest, _) in &blobs {
        let path = blob_path(&cache, digest);
        std::fs::remove_file(&path).unwrap();
        assert!(Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap()
            .success());
    }
    let stuck: Vec<_> = blobs
        .iter()
        .map(|(digest, _)| {
            let pull = get(digest);
            tokio::spawn(async move { pull.await?.bytes().await })
        })
        .collect();
    let pid = wharf.child.id();
    assert!(
        eventually(Duration::from_secs(10), || async {
            threads_waiting_on_a_fifo(pid) == STUCK
        })
        .await,
        "every request is stuck in its open, each on a thread of its own ({} are)",
        threads_waiting_on_a_fifo(pid)
    );

    // The workers are free: readiness and another blob are answered.
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        client.get(wharf.url("/readyz")).send(),
    )
    .await
    .expect("/readyz within 10 s while opens hang")
    .unwrap();
    assert_eq!(ready.status(), 200);
    let r = tokio::time::timeout(Duration::from_secs(10), get(&other_digest))
        .await
        .expect("another blob within 10 s while opens hang")
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), other);

    // The other ends come: a FIFO is no blob of the size the index holds, so each entry is
    // dropped and fetched again.
    for (digest, _) in &blobs {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(blob_path(&cache, digest)),
        );
    }
    for (pull, (_, blob)) in stuck.into_iter().zip(&blobs) {
        let body = tokio::time::timeout(Duration::from_secs(20), pull)
            .await
            .expect("each stuck request ends once its open returns")
            .unwrap()
            .unwrap();
        assert_eq!(&body, blob);
    }
}
