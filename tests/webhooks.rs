//! Registry webhooks: a push announced by distribution, Harbor or Docker Hub refreshes the tag
//! at once where it is cached, only with the webhook secret; bad payloads change nothing; a
//! webhook is passed on to `forward_to` once.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use wharf::config::AdminConfig;

use crate::common::{error_code, eventually, sha256, FakeRegistry, Wharf, OCI_MANIFEST};

const SECRET: &str = "webhook-secret-of-the-registry";

fn admin(dir: &Path, forward_to: Vec<url::Url>) -> AdminConfig {
    let tokens = dir.join("admin-tokens");
    std::fs::write(&tokens, "").unwrap();
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    AdminConfig {
        tokens,
        webhook_secret_file: Some(secret),
        forward_to,
    }
}

fn manifest(seed: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[]}}"#,
        sha256(seed.as_bytes())
    )
}

/// A distribution notification envelope announcing `repo:tag` pushed to `host`.
fn envelope(host: &str, repo: &str, tag: &str, digest: &str) -> Value {
    json!({"events": [
        {"id": "1", "timestamp": "2026-12-07T10:00:00Z", "action": "push",
         "target": {"mediaType": OCI_MANIFEST, "digest": digest, "size": 100, "length": 100,
                    "repository": repo, "url": format!("http://{host}/v2/{repo}/manifests/{digest}"), "tag": tag},
         "request": {"id": "r", "addr": "127.0.0.1:40000", "host": host, "method": "PUT", "useragent": "docker"},
         "actor": {}, "source": {"addr": "registry:5000", "instanceID": "x"}},
        {"id": "2", "action": "push",
         "target": {"mediaType": "application/octet-stream", "digest": digest, "repository": repo}}
    ]})
}

async fn call(
    wharf: &Wharf,
    kind: &str,
    query: &str,
    secret: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = wharf
        .client
        .post(wharf.url(&format!("/admin/v1/webhooks/{kind}{query}")))
        .header(
            "content-type",
            "application/vnd.docker.distribution.events.v1+json",
        )
        .body(body.to_owned());
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.unwrap()
}

async fn digest_of(wharf: &Wharf, path: &str) -> String {
    let r = wharf.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_distribution_push_refreshes_a_cached_tag_at_once_and_bad_calls_change_nothing() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let host = upstream.addr.to_string();
    let first = upstream.add_manifest("myorg/app", "v1", OCI_MANIFEST, &manifest("1"));
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path(), Vec::new()))).await;
    // Pulled as containerd does, naming the registry.
    let pulled = format!("/v2/myorg/app/manifests/v1?ns={host}");
    assert_eq!(digest_of(&wharf, &pulled).await, first);
    let second = upstream.add_manifest("myorg/app", "v1", OCI_MANIFEST, &manifest("2"));
    let pushed = envelope(&host, "myorg/app", "v1", &second).to_string();

    // Refused: no secret, a wrong one, a malformed payload, a registry that is not mirrored.
    for secret in [None, Some("wrong-secret-wrong-secret")] {
        let r = call(&wharf, "distribution", "", secret, &pushed).await;
        assert_eq!(r.status(), 401, "{secret:?}");
    }
    for bad in [
        "not json",
        r#"{"events":"none"}"#,
        r#"{"type":"PUSH_ARTIFACT"}"#,
    ] {
        let r = call(&wharf, "distribution", "", Some(SECRET), bad).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(error_code(r).await, "UNSUPPORTED");
    }
    let elsewhere = envelope("registry.elsewhere:5000", "myorg/app", "v1", &second).to_string();
    let r = call(&wharf, "distribution", "", Some(SECRET), &elsewhere).await;
    assert_eq!(r.status(), 400);
    let r = call(
        &wharf,
        "distribution",
        "?upstream=nowhere",
        Some(SECRET),
        &pushed,
    )
    .await;
    assert_eq!(r.status(), 404);
    let r = call(&wharf, "nothing", "", Some(SECRET), &pushed).await;
    assert_eq!(r.status(), 404);
    assert_eq!(digest_of(&wharf, &pulled).await, first, "nothing refreshed");

    let r = call(&wharf, "distribution", "", Some(SECRET), &pushed).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["refreshed"][0]["digest"], second);
    let gets = upstream.count("GET", "/manifests/");
    assert_eq!(digest_of(&wharf, &pulled).await, second);
    assert_eq!(upstream.count("GET", "/manifests/"), gets, "a hit");

    // A tag never pulled through wharf is not fetched because it was pushed.
    upstream.add_manifest("myorg/app", "v9", OCI_MANIFEST, &manifest("9"));
    let gets = upstream.count("GET", "/manifests/");
    let other = envelope(&host, "myorg/app", "v9", &first).to_string();
    let r = call(&wharf, "distribution", "", Some(SECRET), &other).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["not_cached"][0], format!("{host}/myorg/app:v9"));
    assert_eq!(upstream.count("GET", "/manifests/"), gets);
}

#[tokio::test]
async fn harbor_and_docker_hub_pushes_refresh_and_only_docker_hub_may_put_its_secret_in_the_url() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("1"));
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path(), Vec::new()))).await;
    let pulled = "/v2/library/app/manifests/v1";
    digest_of(&wharf, pulled).await;

    let second = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("2"));
    let harbor = json!({"type": "PUSH_ARTIFACT", "occur_at": 1765100000, "operator": "ci",
        "event_data": {"resources": [{"digest": second, "tag": "v1",
                                      "resource_url": "harbor.example.com/library/app:v1"}],
                       "repository": {"name": "app", "namespace": "library",
                                      "repo_full_name": "library/app", "repo_type": "public"}}})
    .to_string();
    let secret_in_url = format!("?upstream=docker.io&secret={SECRET}");
    let r = call(&wharf, "harbor", &secret_in_url, None, &harbor).await;
    assert_eq!(
        r.status(),
        401,
        "Harbor sends headers: no secret in the URL"
    );
    let r = call(
        &wharf,
        "harbor",
        "?upstream=docker.io",
        Some(SECRET),
        &harbor,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&wharf, pulled).await, second);

    let third = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("3"));
    let hub = json!({"callback_url": "https://registry.hub.docker.com/u/library/app/hook/x/",
        "push_data": {"pushed_at": 1765100000, "pusher": "ci", "tag": "v1"},
        "repository": {"repo_name": "app", "namespace": "library", "name": "app"}})
    .to_string();
    let r = call(&wharf, "dockerhub", "?secret=wrong", None, &hub).await;
    assert_eq!(r.status(), 401);
    let r = call(
        &wharf,
        "dockerhub",
        &format!("?secret={SECRET}"),
        None,
        &hub,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&wharf, pulled).await, third);
}

#[tokio::test]
async fn a_webhook_is_passed_on_to_forward_to_once() {
    let upstream = FakeRegistry::start().await;
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("1"));
    let b_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = |l: &tokio::net::TcpListener| format!("http://{}/", l.local_addr().unwrap());
    let (a_url, b_url) = (url(&a_listener), url(&b_listener));
    // Each passes on to the other: the mark must stop a webhook going round.
    let start = |listener, dir: &Path, to: &str| {
        let cache = tempfile::tempdir().unwrap();
        let mut config = crate::common::config(&upstream, cache.path());
        config.admin = Some(admin(dir, vec![to.parse().unwrap()]));
        Wharf::start_on(listener, config, cache, reqwest::Client::new())
    };
    let a = start(a_listener, dir_a.path(), &b_url).await;
    let b = start(b_listener, dir_b.path(), &a_url).await;
    let pulled = "/v2/library/app/manifests/v1";
    digest_of(&a, pulled).await;
    digest_of(&b, pulled).await;

    let second = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("2"));
    let hub = json!({"push_data": {"tag": "v1"}, "repository": {"repo_name": "library/app"}});
    let r = call(
        &a,
        "dockerhub",
        &format!("?secret={SECRET}"),
        None,
        &hub.to_string(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(digest_of(&a, pulled).await, second);
    let b_refreshed = eventually(Duration::from_secs(10), || {
        let b = &b;
        async move {
            b.metric(
                "wharf_http_requests_total",
                &["route=\"webhook\"", "status=\"200\""],
            )
            .await
                == 1.0
        }
    })
    .await;
    assert!(b_refreshed, "b received the webhook a passed on");
    assert_eq!(digest_of(&b, pulled).await, second);
    // b did not pass it back: a saw one webhook, its own.
    let seen = a
        .metric("wharf_http_requests_total", &["route=\"webhook\""])
        .await;
    assert_eq!(seen, 1.0);
}
