//! What clients can reach through wharf: only allowed repositories, and nothing an upstream's
//! answers could point wharf's credentials or requests at (token realms, redirects).

use std::path::Path;
use std::time::{Duration, Instant};

use wharf::config::AuthConfig;
use wharf::Config;

use crate::common::{
    base_config, each_upstream, error_code, eventually, pki, random_bytes, upstream_config,
    FakeRegistry, Wharf, OCI_MANIFEST,
};

#[tokio::test]
async fn repositories_outside_the_allow_list_are_refused_even_from_the_cache() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4096, 1);
    let blob_digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{\"a\":1}");
    upstream.add_manifest("private/app", "v1", OCI_MANIFEST, "{\"b\":2}");
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| {
            u.repositories = Some(vec!["library/*".parse().unwrap()]);
        })
    })
    .await;

    // Allowed: served, and the blob is now cached.
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
    let blob_path = format!("/v2/library/app/blobs/{blob_digest}");
    assert_eq!(wharf.get(&blob_path).await.bytes().await.unwrap(), blob);
    assert!(wharf.settled(&blob_digest).await);
    let before = upstream.seen().len();

    // Refused, in every addressing form, for every endpoint; the cached blob included.
    let ns = format!("?ns={}", upstream.addr);
    for path in [
        "/v2/private/app/manifests/v1".to_owned(),
        format!("/v2/private/app/blobs/{blob_digest}"),
        "/v2/private/app/tags/list".to_owned(),
        format!("/v2/private/app/manifests/v1{ns}"),
        format!("/v2/{}/private/app/manifests/v1", upstream.addr),
        format!("/v2/libraryx/app/blobs/{blob_digest}"),
    ] {
        let r = wharf.get(&path).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(error_code(r).await, "DENIED", "{path}");
    }
    assert_eq!(
        upstream.seen().len(),
        before,
        "the upstream heard of a refused repository"
    );
}

#[tokio::test]
async fn a_token_realm_on_another_host_is_not_sent_the_credentials() {
    let upstream = FakeRegistry::start().await;
    // The realm names another server, reached under another host name.
    let elsewhere = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    {
        let mut faults = upstream.faults();
        faults.bearer = true;
        faults.realm_host = Some(format!("localhost:{}", elsewhere.addr.port()));
    }
    let secret = upstream_password("s3cret");

    let wharf = Wharf::start(&upstream, |c| with_credentials(c, secret.path())).await;
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 502);
    assert!(elsewhere.seen().is_empty(), "the foreign realm was asked");
    wharf.stop().await;

    // Once the operator allows that host, it is used.
    let wharf = Wharf::start(&upstream, |c| {
        with_credentials(c, secret.path());
        each_upstream(c, |u| u.token_realm_hosts = vec!["localhost".into()]);
    })
    .await;
    let r = wharf.get("/v2/library/app/manifests/v1").await;
    assert_eq!(r.status(), 200);
    assert_eq!(elsewhere.count("GET", "/token"), 1);
}

#[tokio::test]
async fn redirect_loops_and_other_schemes_end_in_a_quick_502() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_blob(random_bytes(1024, 2));
    let wharf = Wharf::start(&upstream, |_| {}).await;
    let path = format!("/v2/library/app/blobs/{digest}");

    // Redirected to itself, forever: the request and five redirects are followed, the sixth
    // redirect is refused.
    upstream.faults().redirect_blobs_to = Some(upstream.url());
    let started = Instant::now();
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 502);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        upstream.count("GET", &digest),
        1 + 5,
        "the request and exactly five redirects"
    );

    // Redirected to a file URL.
    upstream.faults().redirect_blobs_to = Some("file://".into());
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 502);
    assert!(!wharf.has_blob(&digest));
}

#[tokio::test]
async fn a_redirect_from_https_down_to_http_is_refused() {
    let pki = pki::issue("upstream CA");
    let upstream = FakeRegistry::start_https(&pki).await;
    // Where the upstream sends blob requests: a plain-HTTP host, or one over HTTPS.
    let plain = FakeRegistry::start().await;
    let secure = FakeRegistry::start_https(&pki).await;
    let bytes = random_bytes(100_000, 7);
    let digest = upstream.add_blob(bytes.clone());
    plain.add_blob(bytes.clone());
    secure.add_blob(bytes.clone());
    let certs = tempfile::tempdir().unwrap();
    let ca_file = pki::write_ca(certs.path(), &pki);
    let wharf = Wharf::start(&upstream, |c| {
        each_upstream(c, |u| u.ca_file = Some(ca_file.clone()))
    })
    .await;
    let path = format!("/v2/library/app/blobs/{digest}");

    // Down to http: refused before the plain host is contacted, and nothing cached.
    upstream.faults().redirect_blobs_to = Some(plain.url());
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 502);
    assert_eq!(error_code(r).await, "UPSTREAM_UNAVAILABLE");
    assert!(plain.seen().is_empty(), "{:?}", plain.seen());
    assert_eq!(upstream.count("GET", &digest), 1);
    assert!(!wharf.has_blob(&digest));

    // To another https host: followed, so it was the downgrade that was refused.
    upstream.faults().redirect_blobs_to = Some(secure.url());
    let r = wharf.get(&path).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), bytes);
    assert_eq!(secure.count("GET", &digest), 1);
    assert!(plain.seen().is_empty());
}

#[tokio::test]
async fn only_allowed_networks_may_pull_while_health_checks_answer_everyone() {
    let upstream = FakeRegistry::start().await;
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    let start = |allow: &'static [&'static str]| {
        Wharf::start(&upstream, move |c| {
            c.server.allow_from = Some(allow.iter().map(|net| net.parse().unwrap()).collect());
        })
    };

    let elsewhere = start(&["10.0.0.0/8", "fd00::/8"]).await;
    for path in ["/v2/", "/v2/library/app/manifests/v1", "/metrics"] {
        let r = elsewhere.get(path).await;
        assert_eq!(r.status(), 403, "{path}");
        assert_eq!(error_code(r).await, "DENIED", "{path}");
    }
    assert_eq!(elsewhere.get("/healthz").await.status(), 200);
    assert_eq!(elsewhere.get("/readyz").await.status(), 200);
    assert!(upstream.seen().is_empty());

    let here = start(&["127.0.0.0/8"]).await;
    assert_eq!(here.get("/v2/library/app/manifests/v1").await.status(), 200);
}

#[tokio::test]
async fn metrics_can_live_on_a_listener_of_their_own() {
    let upstream = FakeRegistry::start().await;
    let port = crate::common::free_port();
    let wharf = Wharf::start(&upstream, |c| {
        c.server.metrics_listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;

    // The pull port: the API and health checks, no metrics.
    assert_eq!(wharf.get("/v2/").await.status(), 200);
    assert_eq!(wharf.get("/healthz").await.status(), 200);
    assert_eq!(wharf.get("/metrics").await.status(), 404);

    // The operational port: metrics and health checks, no API.
    let operations = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let r = wharf
        .client
        .get(operations("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("wharf_http_requests_total"));
    let r = wharf
        .client
        .get(operations("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = wharf.client.get(operations("/v2/")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_private_blob_cached_through_one_repository_needs_the_upstreams_word_for_another() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(64 * 1024, 5);
    let digest = upstream.add_blob(blob.clone());
    upstream.faults().hidden_repos = vec!["other/app".into()];
    let secret = upstream_password("pw");
    let heads = |repo: &str| heads_through(&upstream, repo);
    let blob_path = |repo: &str| format!("/v2/{repo}/blobs/{digest}");

    let wharf = Wharf::start(&upstream, |c| with_credentials(c, secret.path())).await;
    assert_eq!(
        wharf
            .get(&blob_path("library/app"))
            .await
            .bytes()
            .await
            .unwrap(),
        blob
    );
    assert!(wharf.settled(&digest).await);
    // The fetching repository is not asked again.
    assert_eq!(wharf.get(&blob_path("library/app")).await.status(), 200);
    assert_eq!(heads("library/app"), 0);

    // A repository the upstream hides gets no byte, by GET or HEAD.
    let r = wharf.get(&blob_path("other/app")).await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "BLOB_UNKNOWN");
    let r = wharf
        .client
        .head(wharf.url(&blob_path("other/app")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(heads("other/app") >= 2);

    // A repository that may read it is asked once, then remembered.
    assert_eq!(
        wharf
            .get(&blob_path("team/app"))
            .await
            .bytes()
            .await
            .unwrap(),
        blob
    );
    assert_eq!(wharf.get(&blob_path("team/app")).await.status(), 200);
    assert_eq!(heads("team/app"), 1);
    wharf.stop().await;

    // Without credentials (a public upstream), or with the check off, no one is asked.
    for credentials in [false, true] {
        let before = heads("other/app");
        let wharf = Wharf::start(&upstream, |c| {
            if credentials {
                with_credentials(c, secret.path());
                each_upstream(c, |u| u.confirm_access = false);
            }
        })
        .await;
        assert_eq!(wharf.get(&blob_path("library/app")).await.status(), 200);
        assert!(wharf.settled(&digest).await);
        assert_eq!(wharf.get(&blob_path("other/app")).await.status(), 200);
        assert_eq!(heads("other/app"), before);
        wharf.stop().await;
    }
}

/// The `HEAD` requests the upstream has had for `repo`.
fn heads_through(upstream: &FakeRegistry, repo: &str) -> usize {
    let prefix = format!("/v2/{repo}/");
    upstream
        .seen()
        .iter()
        .filter(|s| s.method == "HEAD" && s.path.starts_with(&prefix))
        .count()
}

/// A file holding an upstream password (deleted when dropped).
fn upstream_password(password: &str) -> tempfile::NamedTempFile {
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), format!("{password}\n")).unwrap();
    secret
}

/// Every upstream of `config` is asked as user "wharf", with the password in `password_file`.
fn with_credentials(config: &mut Config, password_file: &Path) {
    each_upstream(config, |u| {
        u.username = Some("wharf".into());
        u.password_file = Some(password_file.to_owned());
    });
}

/// A wharf in front of `upstream` that wants the credentials of [`auth_files`], kept in `dir`.
async fn start_with_auth(upstream: &FakeRegistry, dir: &Path) -> Wharf {
    let auth = auth_files(dir);
    Wharf::start(upstream, |c| c.server.auth = Some(auth)).await
}

/// `[server.auth]` with one htpasswd user ("alice", password "open sesame") and one token
/// ("tok-123", labelled "ci"), in `dir`.
fn auth_files(dir: &Path) -> AuthConfig {
    use sha2::Digest;
    let hash = bcrypt::hash("open sesame", 4).unwrap();
    std::fs::write(dir.join("htpasswd"), format!("alice:{hash}\n")).unwrap();
    let token = hex::encode(sha2::Sha256::digest("tok-123"));
    std::fs::write(dir.join("tokens"), format!("sha256:{token} ci\n")).unwrap();
    AuthConfig {
        htpasswd: Some(dir.join("htpasswd")),
        tokens: Some(dir.join("tokens")),
        grants: Vec::new(),
    }
}

#[tokio::test]
async fn with_auth_only_clients_with_credentials_may_pull() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(4096, 9);
    let digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    let secrets = tempfile::tempdir().unwrap();
    let wharf = start_with_auth(&upstream, secrets.path()).await;
    let blob_path = format!("/v2/library/app/blobs/{digest}");
    let get = |path: &str, authorization: Option<&str>| {
        let mut request = wharf.client.get(wharf.url(path));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {pair}")
    };

    // Without valid credentials: 401 with a Basic challenge, and the upstream hears nothing.
    for authorization in [
        None,
        Some(basic("alice", "wrong")),
        Some(basic("bob", "open sesame")),
        Some("Bearer tok-124".to_owned()),
        Some("Basic !!".to_owned()),
        Some("Digest username=\"alice\"".to_owned()),
    ] {
        for path in [
            "/v2/",
            "/v2/library/app/manifests/v1",
            &blob_path,
            "/metrics",
        ] {
            let r = get(path, authorization.as_deref()).await.unwrap();
            assert_eq!(r.status(), 401, "{path} {authorization:?}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Basic realm=\"wharf\"",
                "{path}"
            );
            assert_eq!(error_code(r).await, "UNAUTHORIZED", "{path}");
        }
    }
    assert!(
        upstream.seen().is_empty(),
        "a refused client reached the upstream"
    );
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/readyz", None).await.unwrap().status(), 200);

    // With them: a user by password, a token as bearer or as a Basic password.
    for authorization in [
        basic("alice", "open sesame"),
        "Bearer tok-123".to_owned(),
        basic("ci", "tok-123"),
    ] {
        let r = get("/v2/library/app/manifests/v1", Some(&authorization))
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{authorization}");
        let r = get(&blob_path, Some(&authorization)).await.unwrap();
        assert_eq!(r.bytes().await.unwrap(), blob);
    }
}

#[tokio::test]
async fn a_revoked_token_is_refused_once_the_file_changes() {
    use sha2::Digest;
    let upstream = FakeRegistry::start().await;
    let secrets = tempfile::tempdir().unwrap();
    let wharf = start_with_auth(&upstream, secrets.path()).await;
    let status = |token: &'static str| {
        let request = wharf
            .client
            .get(wharf.url("/v2/"))
            .bearer_auth(token)
            .send();
        async move { request.await.unwrap().status() }
    };
    assert_eq!(status("tok-123").await, 200);

    let new = hex::encode(sha2::Sha256::digest("tok-456"));
    std::fs::write(secrets.path().join("tokens"), format!("sha256:{new} ci\n")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            status("tok-123").await == 401
        })
        .await,
        "the revoked token still works"
    );
    assert_eq!(status("tok-456").await, 200);
}

#[tokio::test]
async fn an_edge_with_credentials_pulls_through_a_regional_wharf_that_wants_them() {
    let upstream = FakeRegistry::start().await;
    let blob = random_bytes(64 * 1024, 11);
    let digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{}");
    let secrets = tempfile::tempdir().unwrap();
    let regional = start_with_auth(&upstream, secrets.path()).await;

    let edge_with = |password: &'static str| {
        let file = secrets.path().join(format!("password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut config = base_config(cache.path());
        let mut through_regional = upstream_config("docker.io", &regional.url(""));
        through_regional.username = Some("alice".into());
        through_regional.password_file = Some(file);
        config.upstreams.push(through_regional);
        Wharf::start_with(config, cache)
    };
    let edge = edge_with("open sesame").await;
    assert_eq!(edge.get("/v2/library/app/manifests/v1").await.status(), 200);
    let r = edge.get(&format!("/v2/library/app/blobs/{digest}")).await;
    assert_eq!(r.bytes().await.unwrap(), blob);

    let refused = edge_with("guess").await;
    let r = refused.get("/v2/library/app/manifests/v2").await;
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(r).await, "DENIED");
}

#[tokio::test]
async fn a_private_manifest_cached_through_one_repository_needs_the_upstreams_word_for_another() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, "{\"private\":1}");
    upstream.faults().hidden_repos = vec!["other/app".into()];
    let secret = upstream_password("pw");
    let wharf = Wharf::start(&upstream, |c| with_credentials(c, secret.path())).await;
    let heads = |repo: &str| heads_through(&upstream, repo);
    let by_digest = |repo: &str| format!("/v2/{repo}/manifests/{digest}");

    // Fetched by tag: the same repository may then have it by digest without asking.
    assert_eq!(
        wharf.get("/v2/library/app/manifests/v1").await.status(),
        200
    );
    assert_eq!(wharf.get(&by_digest("library/app")).await.status(), 200);
    assert_eq!(heads("library/app"), 0);

    // A repository the upstream hides gets nothing, though the manifest is cached.
    for _ in 0..2 {
        let r = wharf.get(&by_digest("other/app")).await;
        assert_eq!(r.status(), 404);
        assert_eq!(error_code(r).await, "MANIFEST_UNKNOWN");
    }
    assert_eq!(heads("other/app"), 2, "a refusal is not remembered");

    // One that may read it is asked once, then remembered.
    for _ in 0..2 {
        let r = wharf.get(&by_digest("team/app")).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-wharf-cache"], "hit");
    }
    assert_eq!(heads("team/app"), 1);
}
