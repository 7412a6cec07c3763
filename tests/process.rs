//! The real binary under hard stops: kill -9 at any moment never leaves a bad or partial blob,
//! manifest or tag file behind and never loses a committed one; SIGTERM lets responses finish
//! within the grace period. SIGHUP reloads what can be reloaded.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use wharf::config::AuthConfig;

use crate::common::child::Process;
use crate::common::disk::{self, temp_files};
use crate::common::{
    config, each_upstream, eventually, pki, random_bytes, sha256, FakeRegistry, Hold, MIB,
    OCI_MANIFEST, TOKEN, WHARF,
};

/// The digests the committed blobs are named by (read while wharf runs, so not hashed: a file
/// may be evicted at any moment).
fn committed_blobs(cache: &Path) -> Vec<String> {
    disk::committed(cache, "blobs")
        .into_iter()
        .map(|(digest, _)| digest)
        .collect()
}

/// Checks that everything committed in `cache` is whole: blobs and manifests hash to their
/// names, and each tag file is a whole record naming the digest the upstream has for its tag.
/// What it found: (blobs, manifests, tag files).
fn assert_whole(cache: &Path, tags: &HashMap<String, String>) -> (usize, usize, usize) {
    let blobs = disk::assert_blobs_whole(cache);
    let manifests = disk::assert_manifests_whole(cache);
    let records = disk::tag_records(cache);
    for (upstream, repo, tag, digests) in &records {
        assert_eq!(
            (upstream.as_str(), repo.as_str()),
            ("docker.io", "library/app")
        );
        let expected = tags
            .get(tag)
            .unwrap_or_else(|| panic!("a tag file for {tag}?"));
        assert!(digests.iter().all(|d| d == expected), "{tag}: {digests:?}");
    }
    (blobs, manifests, records.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_any_moment_leaves_only_whole_blobs_manifests_and_tags() {
    const ROUNDS: usize = 8;
    const TAGS: usize = 200;
    let upstream = FakeRegistry::start().await;
    // Each round pulls six blobs of its own, of different sizes (so that they commit one after
    // another), and a stream of tags, each a manifest of its own.
    let sizes = [256 << 10, 512 << 10, 768 << 10, MIB, 3 * MIB / 2, 2 * MIB];
    let blobs: Vec<Vec<String>> = (0..ROUNDS)
        .map(|round| {
            let seeds = (round * sizes.len()) as u64..;
            sizes
                .iter()
                .zip(seeds)
                .map(|(&len, seed)| upstream.add_blob(random_bytes(len, seed)))
                .collect()
        })
        .collect();
    let mut tags = HashMap::new();
    for round in 0..ROUNDS {
        for n in 0..TAGS {
            let tag = format!("r{round}-t{n}");
            let body = format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","annotations":{{"tag":"{tag}"}}}}"#
            );
            let digest = upstream.add_manifest("library/app", &tag, OCI_MANIFEST, &body);
            tags.insert(tag, digest);
        }
    }
    // About 64 ms per MiB; a small cache, so that commits keep evicting.
    upstream.faults().chunk_delay = Some(Duration::from_millis(4));
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let mut config = config(&upstream, &cache);
    config.cache.max_size = "3MiB".parse().unwrap();
    let client = reqwest::Client::new();
    let streams = upstream.blob_streams();
    let mut found = (0, 0, 0);
    let mut killed_with_temp_files = 0;

    for (round, this_round) in blobs.iter().enumerate() {
        // Checked while no wharf runs (after the previous one was killed).
        let (blobs_now, manifests_now, tags_now) = assert_whole(&cache, &tags);
        found = (
            found.0.max(blobs_now),
            found.1.max(manifests_now),
            found.2.max(tags_now),
        );
        let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
        assert_eq!(
            temp_files(&cache),
            0,
            "round {round}: start-up removes temp files"
        );
        // The bodies the last process was sent are gone with its connections.
        assert!(eventually(Duration::from_secs(10), || async { streams.now() == 0 }).await);
        // The largest blob of the round stops after 128 KiB: whenever the kill comes, that
        // fill is in flight, with its temp file.
        let held = Hold::after(128 << 10).only(&this_round[5]);
        upstream.faults().hold = Some(held.clone());
        let before: HashSet<String> = committed_blobs(&cache).into_iter().collect();

        let mut pulls: Vec<_> = (0..8)
            .map(|i| {
                let url = wharf.url(&format!("/v2/library/x/blobs/{}", this_round[i % 6]));
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
        // Tags are fetched (a manifest and a tag file written each) until the kill.
        for first in 0..2 {
            let (client, base) = (client.clone(), wharf.url("/v2/library/app/manifests/"));
            pulls.push(tokio::spawn(async move {
                for n in (first..TAGS).step_by(2) {
                    let Ok(r) = client.get(format!("{base}r{round}-t{n}")).send().await else {
                        return;
                    };
                    if r.bytes().await.is_err() {
                        return;
                    }
                }
            }));
        }

        // A kill at a different moment each round: after none, one or two of the round's
        // blobs were committed, with the held one (and maybe others) still being filled.
        let commits = round % 3;
        let ready = eventually(Duration::from_secs(20), || {
            let (cache, before, held) = (&cache, &before, &held);
            async move {
                let new = committed_blobs(cache)
                    .into_iter()
                    .filter(|d| !before.contains(d) && this_round.contains(d))
                    .count();
                held.reached() == 1 && new >= commits
            }
        })
        .await;
        assert!(ready, "round {round}: the fills did not get that far");
        wharf.kill_9();
        killed_with_temp_files += usize::from(temp_files(&cache) > 0);
        for p in pulls {
            let _ = p.await;
        }
    }
    eprintln!(
        "kill -9: {killed_with_temp_files} of {ROUNDS} kills left temp files; at most {} blobs, \
         {} manifests and {} tag files were committed at a restart",
        found.0, found.1, found.2
    );
    assert_eq!(
        killed_with_temp_files, ROUNDS,
        "every kill landed while a fill was writing its temp file"
    );

    // After the last crash: everything on disk is whole, and what is served is right, fetched
    // again where it must be.
    upstream.faults().hold = None;
    upstream.faults().chunk_delay = None;
    let (blobs_now, manifests_now, tags_now) = assert_whole(&cache, &tags);
    found = (
        found.0.max(blobs_now),
        found.1.max(manifests_now),
        found.2.max(tags_now),
    );
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    assert_eq!(temp_files(&cache), 0);
    assert!(
        found.0 > 0 && found.1 > 0 && found.2 > 0,
        "the crashes must have had committed blobs, manifests and tags to lose: {found:?}"
    );
    let tagged: Vec<_> = disk::tag_records(&cache)
        .into_iter()
        .map(|(_, _, tag, _)| tag)
        .collect();
    for tag in &tagged {
        let r = client
            .get(wharf.url(&format!("/v2/library/app/manifests/{tag}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], tags[tag].as_str());
        assert_eq!(sha256(&r.bytes().await.unwrap()), tags[tag]);
    }
    for d in blobs.iter().flatten() {
        let r = client
            .get(wharf.url(&format!("/v2/library/x/blobs/{d}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(&sha256(&r.bytes().await.unwrap()), d);
    }
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
    assert_whole(&cache, &tags);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_committed_blob_manifest_and_tag_survive_kill_9() {
    let upstream = FakeRegistry::start().await;
    let kept = upstream.add_blob(random_bytes(2 * MIB, 1));
    let cut = upstream.add_blob(random_bytes(8 * MIB, 2));
    let body = format!(r#"{{"schemaVersion":2,"layers":[{{"digest":"{kept}"}}]}}"#);
    let manifest = upstream.add_manifest("library/x", "v1", OCI_MANIFEST, &body);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let client = reqwest::Client::new();

    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    let r = client
        .get(wharf.url("/v2/library/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    let r = client
        .get(wharf.url(&format!("/v2/library/x/blobs/{kept}")))
        .send()
        .await
        .unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), kept);
    assert!(
        eventually(Duration::from_secs(10), || async {
            committed_blobs(&cache).contains(&kept)
        })
        .await,
        "never committed"
    );
    assert_eq!(disk::tag_records(&cache).len(), 1);
    // Mid-fill of another blob: the upstream has sent its first MiB, and wharf has it.
    let hold = Hold::after(MIB).only(&cut);
    upstream.faults().hold = Some(hold.clone());
    let url = wharf.url(&format!("/v2/library/x/blobs/{cut}"));
    let pull = tokio::spawn({
        let client = client.clone();
        async move { client.get(url).send().await.map(|_| ()) }
    });
    let upstream_bytes = (2 * MIB) as f64;
    assert!(
        eventually(Duration::from_secs(10), || async {
            hold.reached() == 1
                && wharf.metric("wharf_upstream_bytes_total", &[]).await
                    >= upstream_bytes + MIB as f64
        })
        .await,
        "the second fill never got going"
    );
    assert_eq!(temp_files(&cache), 1, "its temp file");
    wharf.kill_9();
    let _ = pull.await;
    upstream.faults().hold = None;

    let wharf = Process::start(dir.path(), &config, Duration::from_secs(1));
    assert_eq!(temp_files(&cache), 0, "start-up removes the partial fill");
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
    // The tag is still known and fresh, its manifest cached: neither is asked for again.
    let r = client
        .get(wharf.url("/v2/library/x/manifests/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    assert_eq!(r.headers()["docker-content-digest"], manifest.as_str());
    assert_eq!(r.text().await.unwrap(), body);
    assert_eq!(upstream.count("GET", "/manifests/"), 1);
    assert_eq!(upstream.count("HEAD", "/manifests/"), 0);
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
    // The response is held half-way until the signal has been sent and taken effect.
    let hold = Hold::after(4 * MIB);
    upstream.faults().hold = Some(hold.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let mut wharf = Process::start(dir.path(), &config, Duration::from_secs(30));

    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let pull = tokio::spawn(async move {
        let r = reqwest::get(url).await.unwrap();
        r.bytes().await.map(|b| sha256(&b))
    });
    assert!(
        eventually(Duration::from_secs(10), || async { hold.reached() == 1 }).await,
        "the response never got going"
    );
    wharf.sigterm();
    // New connections are refused soon after the signal.
    let addr = wharf.addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        wharf.child.try_wait().unwrap().is_none(),
        "wharf exited with a response in flight"
    );
    hold.open();
    assert_eq!(
        pull.await.unwrap().unwrap(),
        digest,
        "the response finished"
    );
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(temp_files(&cache), 0);
    assert_eq!(committed_blobs(&cache), vec![digest]);
    disk::assert_blobs_whole(&cache);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_cuts_what_outlasts_the_grace_period_and_leaves_nothing_partial() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(8 * MIB, 2));
    // Half the body, then nothing until after the grace period.
    let hold = Hold::after(4 * MIB);
    upstream.faults().hold = Some(hold.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = config(&upstream, &cache);
    let mut wharf = Process::start(dir.path(), &config, Duration::from_millis(300));

    let url = wharf.url(&format!("/v2/library/x/blobs/{digest}"));
    let pull = tokio::spawn(async move {
        let r = reqwest::get(url).await?;
        r.bytes().await.map(|b| b.len())
    });
    assert!(
        eventually(Duration::from_secs(10), || async { hold.reached() == 1 }).await,
        "the response never got going"
    );
    let signalled = Instant::now();
    wharf.sigterm();
    assert!(wharf.wait_exit(Duration::from_secs(10)).success());
    // Soon after the grace period, not after the default one (30 s).
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
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

    hold.open();
    upstream.faults().hold = None;
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
    assert!(!wharf.log_text().contains("TLS certificate reloaded"));
    // The files are unchanged: only the signal makes wharf load them again.
    wharf.signal("-HUP");
    assert!(
        wharf.wait_for_log("TLS certificate reloaded"),
        "no reload after SIGHUP"
    );
    assert!(
        wharf.child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop wharf"
    );
    let r = pki::client_trusting(&pki, false)
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
    assert!(
        wharf.wait_for_log("nothing to reload"),
        "SIGHUP went unanswered"
    );
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
        grants: Vec::new(),
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
    assert!(
        wharf.wait_for_log("client credentials reloaded"),
        "SIGHUP did not reload the credentials"
    );
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
        grants: Vec::new(),
    });
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("wharf:{PASSWORD}"));
    let client_basic =
        base64::engine::general_purpose::STANDARD.encode(format!("puller:{CLIENT_PASSWORD}"));
    let secrets = [
        PASSWORD,
        basic.as_str(),
        TOKEN,
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
    // Lines reach the file in batches: the last request's line means the rest are there.
    assert!(wharf.wait_for_log("path=\"/readyz\""));
    let log = wharf.log_text();
    assert!(log.contains("can be read by other users"));
    assert!(log.lines().count() > 20, "trace logging was not on");
    leaks("the log", &log);
}
