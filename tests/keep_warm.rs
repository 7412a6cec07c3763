//! Keep-warm rules: matching tags become hits without any client asking, others are never
//! fetched, a pushed tag a rule covers is warmed at once, and a failing upstream backs off.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use wharf::config::{AdminConfig, SyncConfig};

use crate::common::signing::{push_image, push_index};
use crate::common::{eventually, FakeRegistry, Wharf};

const TOKEN: &str = "admin-token-of-the-operators";
const SECRET: &str = "webhook-secret-of-the-registry";

fn rule(tags: &str, every: Duration, platforms: &[&str]) -> SyncConfig {
    SyncConfig {
        image: "docker.io/library/app".into(),
        tags: tags.into(),
        every,
        platforms: platforms.iter().map(|p| p.to_string()).collect(),
        jobs: 2,
        bandwidth: None,
    }
}

fn admin(dir: &std::path::Path) -> AdminConfig {
    let tokens = dir.join("admin-tokens");
    let hash = hex::encode(Sha256::digest(TOKEN));
    std::fs::write(&tokens, format!("sha256:{hash} ops\n")).unwrap();
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    AdminConfig {
        tokens,
        webhook_secret_file: Some(secret),
        forward_to: Vec::new(),
    }
}

/// The config and layer digests of an image manifest's body.
fn blobs_of(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    std::iter::once(&v["config"])
        .chain(v["layers"].as_array().unwrap())
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect()
}

async fn all_cached(wharf: &Wharf, blobs: &[String]) -> bool {
    eventually(Duration::from_secs(15), || async {
        blobs.iter().all(|b| wharf.has_blob(b))
    })
    .await
}

async fn status(wharf: &Wharf) -> Value {
    let r = wharf
        .client
        .get(wharf.url("/admin/v1/sync"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn matching_tags_become_hits_without_any_client_and_others_are_never_fetched() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // v1: an index of two platforms, of which the rule wants one; dev: no match.
    let amd = push_image(&upstream, "library/app", "amd-build", 1);
    let arm = push_image(&upstream, "library/app", "arm-build", 2);
    push_index(&upstream, "library/app", "v1", &[amd.clone(), arm.clone()]);
    let dev = push_image(&upstream, "library/app", "dev", 3);
    let wharf = Wharf::start(&upstream, |c| {
        c.admin = Some(admin(dir.path()));
        c.sync = vec![rule("v[0-9]+", Duration::from_secs(1), &["linux/arm64"])];
    })
    .await;

    assert!(
        all_cached(&wharf, &blobs_of(&arm.1)).await,
        "v1 for arm64, unasked"
    );
    // A second image pushed under a new matching tag is warmed by the next run.
    let v2 = push_image(&upstream, "library/app", "v2", 4);
    assert!(all_cached(&wharf, &blobs_of(&v2.1)).await, "v2, unasked");
    assert!(wharf.fills_done().await);
    for blob in blobs_of(&amd.1).iter().chain(&blobs_of(&dev.1)) {
        assert!(
            !wharf.has_blob(blob),
            "another platform or tag is never fetched"
        );
        assert_eq!(upstream.count("GET", blob), 0);
    }

    // A client's pull of v2 is all hits.
    let r = wharf.get("/v2/library/app/manifests/v2").await;
    assert_eq!(r.headers()["x-wharf-cache"], "hit");
    for blob in blobs_of(&v2.1) {
        let r = wharf.get(&format!("/v2/library/app/blobs/{blob}")).await;
        assert_eq!(r.headers()["x-wharf-cache"], "hit", "{blob}");
        assert_eq!(upstream.count("GET", &blob), 1, "fetched once, by the rule");
    }
    let warmed = wharf
        .metric(
            "wharf_keep_warm_tags_warmed_total",
            &["docker.io/library/app"],
        )
        .await;
    assert_eq!(
        warmed, 2.0,
        "v1 and v2, each once: an unmoved tag is not warmed again"
    );
    let fetched = wharf
        .metric("wharf_keep_warm_bytes_total", &["docker.io/library/app"])
        .await;
    assert!(fetched >= 2.0 * 4096.0, "two layers at least: {fetched}");

    let status = status(&wharf).await;
    let rule = &status["rules"][0];
    assert_eq!(rule["image"], "docker.io/library/app");
    assert_eq!(rule["runs_here"], true);
    assert_eq!(rule["tags_warm"], 2);
    let last = &rule["last_run"];
    assert_eq!(last["listed"], true);
    assert_eq!(last["tags_listed"], 5);
    assert_eq!(last["tags_matching"], 2);
    assert_eq!(last["errors"], json!([]));
}

#[tokio::test]
async fn a_pushed_tag_a_rule_covers_is_warmed_at_once_and_a_failing_upstream_backs_off() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    push_image(&upstream, "library/app", "v1", 1);
    let wharf = Wharf::start(&upstream, |c| {
        c.admin = Some(admin(dir.path()));
        c.sync = vec![rule("v[0-9]+", Duration::from_secs(3600), &[])];
    })
    .await;
    assert!(
        wharf
            .metric_reaches(
                "wharf_keep_warm_runs_total",
                &["docker.io/library/app", "ok"],
                1.0
            )
            .await
    );

    // Within the hour between runs, a push announced by the registry is warmed at once.
    let (digest, body) = push_image(&upstream, "library/app", "v2", 2);
    let envelope = json!({"events": [{"id": "1", "action": "push",
        "target": {"mediaType": crate::common::OCI_MANIFEST, "digest": digest,
                   "repository": "library/app", "tag": "v2"},
        "request": {"host": "docker.io"}}]});
    let r = wharf
        .client
        .post(wharf.url("/admin/v1/webhooks/distribution"))
        .bearer_auth(SECRET)
        .body(envelope.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["warming"], json!(["docker.io/library/app:v2"]));
    assert!(all_cached(&wharf, &blobs_of(&body)).await, "v2, pushed");
    drop(wharf);

    // An upstream that fails: the run is counted failed and the next is pushed back.
    let dir = tempfile::tempdir().unwrap();
    upstream.faults().status = Some((503, None));
    let wharf = Wharf::start(&upstream, |c| {
        c.admin = Some(admin(dir.path()));
        c.sync = vec![rule(".*", Duration::from_secs(1), &[])];
    })
    .await;
    assert!(
        wharf
            .metric_reaches(
                "wharf_keep_warm_runs_total",
                &["docker.io/library/app", "failed"],
                2.0
            )
            .await
    );
    let rule = &status(&wharf).await["rules"][0];
    let failures = rule["failures_in_a_row"].as_u64().unwrap();
    assert!(failures >= 2, "{rule}");
    let finished =
        humantime::parse_rfc3339(rule["last_run"]["finished"].as_str().unwrap()).unwrap();
    let next = humantime::parse_rfc3339(rule["next_run"].as_str().unwrap()).unwrap();
    let wait = next.duration_since(finished).unwrap();
    assert!(
        wait >= Duration::from_secs(2 * failures.min(3)),
        "backed off: {wait:?} {rule}"
    );
    let errors = rule["last_run"]["errors"].as_array().unwrap();
    assert!(
        errors[0].as_str().unwrap().contains("listing the tags"),
        "{rule}"
    );
}

#[tokio::test]
async fn in_a_cluster_only_the_rules_owner_runs_it() {
    use crate::common::cluster::{owners, start_cluster_with, NAMES};
    let upstream = FakeRegistry::start().await;
    let v1 = push_image(&upstream, "library/app", "v1", 1);
    let cluster = start_cluster_with(&upstream, &NAMES, |c| {
        c.sync = vec![rule(".*", Duration::from_secs(1), &[])];
    })
    .await;
    let key = format!(
        "sha256:{}",
        hex::encode(Sha256::digest("keep-warm\ndocker.io/library/app"))
    );
    let owner = owners(&NAMES, &key)[0];
    let runs = ["docker.io/library/app", "ok"];
    assert!(
        cluster.nodes[owner]
            .metric_reaches("wharf_keep_warm_runs_total", &runs, 2.0)
            .await
    );
    assert!(all_cached(&cluster.nodes[owner], &blobs_of(&v1.1)).await);
    for (i, node) in cluster.nodes.iter().enumerate() {
        if i != owner {
            assert_eq!(
                node.metric("wharf_keep_warm_runs_total", &runs).await,
                0.0,
                "node {i}"
            );
        }
    }
}
