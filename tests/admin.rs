//! The admin API: refresh and purge, for admin tokens only, where `/metrics` is served, with
//! OCI JSON errors for what it cannot do.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use wharf::config::AdminConfig;

use crate::common::{error_code, eventually, sha256, FakeRegistry, Wharf, OCI_INDEX, OCI_MANIFEST};

const TOKEN: &str = "admin-token-of-the-operators";

fn admin(dir: &Path) -> AdminConfig {
    let tokens = dir.join("admin-tokens");
    let hash = hex::encode(Sha256::digest(TOKEN));
    std::fs::write(
        &tokens,
        format!("# who may refresh and purge\nsha256:{hash} ops\n"),
    )
    .unwrap();
    AdminConfig {
        tokens,
        webhook_secret_file: None,
        forward_to: Vec::new(),
    }
}

fn manifest(seed: &str) -> String {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"digest":"{}"}},"layers":[]}}"#,
        sha256(seed.as_bytes())
    )
}

async fn post(wharf: &Wharf, action: &str, image: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = wharf
        .client
        .post(wharf.url(&format!("/admin/v1/{action}")))
        .query(&[("image", image)]);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// A JSON array of strings, sorted.
fn sorted(array: &Value) -> Vec<String> {
    let mut strings: Vec<String> = array
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    strings.sort();
    strings
}

async fn digest_of(wharf: &Wharf, reference: &str) -> String {
    let r = wharf
        .get(&format!("/v2/library/app/manifests/{reference}"))
        .await;
    assert_eq!(r.status(), 200, "{reference}");
    r.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_refresh_shows_a_moved_tag_at_once_and_only_an_admin_may_ask() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("first"));
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path()))).await;
    assert_eq!(digest_of(&wharf, "v1").await, first);

    // The tag moves upstream; within tag_ttl wharf still answers the old digest.
    let second = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("second"));
    assert_eq!(digest_of(&wharf, "v1").await, first);

    for token in [None, Some("wrong"), Some("")] {
        let r = post(&wharf, "refresh", "app:v1", token).await;
        assert_eq!(r.status(), 401, "{token:?}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"wharf-admin\""
        );
        assert_eq!(error_code(r).await, "UNAUTHORIZED");
    }
    assert_eq!(digest_of(&wharf, "v1").await, first, "nothing refreshed");

    let r = post(&wharf, "refresh", "app:v1", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["image"], "docker.io/library/app:v1");
    assert_eq!(answer["refreshed"][0]["digest"], second);
    assert_eq!(answer["refreshed"][0]["previous"], first);
    let gets = upstream.count("GET", "/manifests/");
    assert_eq!(digest_of(&wharf, "v1").await, second);
    assert_eq!(
        upstream.count("GET", "/manifests/"),
        gets,
        "the pull after the refresh is a hit"
    );

    // Every cached tag of the repository at once; a tag not cached is fetched.
    let other = upstream.add_manifest("library/app", "v2", OCI_MANIFEST, &manifest("v2"));
    let r = post(&wharf, "refresh", "library/app:v2", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let third = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("third"));
    upstream.add_manifest("library/app", "gone", OCI_MANIFEST, &manifest("gone"));
    digest_of(&wharf, "gone").await;
    upstream.remove_tag("library/app", "gone");
    let r = post(&wharf, "refresh", "app:*", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    let mut tags: Vec<(String, String)> = answer["refreshed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["tag"].as_str().unwrap().into(),
                r["digest"].as_str().unwrap().into(),
            )
        })
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        [("v1".into(), third), ("v2".into(), other)],
        "a tag gone upstream is forgotten, the others refreshed"
    );
    let r = wharf.get("/v2/library/app/manifests/gone").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn bad_admin_requests_get_oci_errors_and_change_nothing() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let digest = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("one"));
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path()))).await;
    assert_eq!(digest_of(&wharf, "v1").await, digest);
    let cases = [
        ("refresh", "Bad/Name:v1", 400, "NAME_INVALID"),
        ("refresh", &format!("app@{digest}"), 400, "UNSUPPORTED"),
        ("refresh", "app:missing", 404, "MANIFEST_UNKNOWN"),
        ("refresh", "ghcr.io/elsewhere/app:v1", 404, "NAME_UNKNOWN"),
        ("refresh", "other:*", 404, "MANIFEST_UNKNOWN"),
        ("purge", "app:never-cached", 404, "MANIFEST_UNKNOWN"),
        ("purge", &format!("app@{digest}:*"), 400, "UNSUPPORTED"),
        ("nothing", "app:v1", 404, "UNSUPPORTED"),
    ];
    for (action, image, status, code) in cases {
        let r = post(&wharf, action, image, Some(TOKEN)).await;
        assert_eq!(r.status(), status, "{action} {image}");
        assert_eq!(error_code(r).await, code, "{action} {image}");
    }
    let r = wharf
        .client
        .post(wharf.url("/admin/v1/refresh"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "no image named");
    let r = wharf
        .client
        .get(wharf.url("/admin/v1/refresh?image=app:v1"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let gets = upstream.count("GET", "/manifests/");
    assert_eq!(digest_of(&wharf, "v1").await, digest);
    assert_eq!(upstream.count("GET", "/manifests/"), gets, "still cached");
}

#[tokio::test]
async fn a_purge_takes_tags_and_manifests_out_and_the_next_pull_fetches_again() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let platform = upstream.add_manifest("library/app", "amd64", OCI_MANIFEST, &manifest("p"));
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{platform}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#
    );
    let index = upstream.add_manifest("library/app", "v1", OCI_INDEX, &index);
    let lone = upstream.add_manifest("library/app", "v2", OCI_MANIFEST, &manifest("lone"));
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path()))).await;
    let index_status = || async {
        let r = wharf
            .client
            .get(wharf.url("/v2/library/app/manifests/v1"))
            .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
            .send()
            .await
            .unwrap();
        r.status()
    };
    assert_eq!(index_status().await, 200);
    assert_eq!(digest_of(&wharf, &platform).await, platform);
    assert_eq!(digest_of(&wharf, "v2").await, lone);

    // A tag: the tag, its index and the platform manifest the index lists.
    let r = post(&wharf, "purge", "app:v1", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["tags"], serde_json::json!(["v1"]));
    let mut expected = [index.clone(), platform.clone()];
    expected.sort();
    assert_eq!(sorted(&answer["manifests"]), expected);
    let index_gets = upstream.count("GET", "/manifests/v1");
    let platform_gets = upstream.count("GET", &format!("/manifests/{platform}"));
    assert_eq!(index_status().await, 200);
    assert_eq!(digest_of(&wharf, &platform).await, platform);
    assert_eq!(upstream.count("GET", "/manifests/v1"), index_gets + 1);
    assert_eq!(
        upstream.count("GET", &format!("/manifests/{platform}")),
        platform_gets + 1
    );
    // Purged twice: the second has nothing left to take.
    let r = post(&wharf, "purge", "app:v2", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let r = post(&wharf, "purge", "app:v2", Some(TOKEN)).await;
    assert_eq!(r.status(), 404);

    // A digest: the manifest and the tags that point to it.
    let gets = upstream.count("GET", "/manifests/v1");
    let r = post(&wharf, "purge", &format!("app@{index}"), Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["tags"], serde_json::json!(["v1"]));
    assert_eq!(index_status().await, 200);
    assert_eq!(upstream.count("GET", "/manifests/v1"), gets + 1);

    // The whole repository.
    assert_eq!(digest_of(&wharf, "v2").await, lone);
    let r = post(&wharf, "purge", "app:*", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(sorted(&answer["tags"]), ["v1", "v2"]);
    assert!(
        wharf
            .metric("wharf_cache_evictions_total", &["reason=\"purged\""])
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn the_admin_api_lives_where_metrics_do_and_nowhere_without_admin_tokens() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("one"));
    let plain = Wharf::start(&upstream, |_| {}).await;
    let r = post(&plain, "refresh", "app:v1", Some(TOKEN)).await;
    assert_eq!(r.status(), 404, "no [admin]: no admin API");

    let port = crate::common::free_port();
    let wharf = Wharf::start(&upstream, |c| {
        c.admin = Some(admin(dir.path()));
        c.server.metrics_listen = Some(([127, 0, 0, 1], port).into());
    })
    .await;
    let r = post(&wharf, "refresh", "app:v1", Some(TOKEN)).await;
    assert_eq!(r.status(), 404, "not on the pull port");
    let r = wharf
        .client
        .post(format!(
            "http://127.0.0.1:{port}/admin/v1/refresh?image=app:v1"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = wharf
        .client
        .post(format!(
            "http://127.0.0.1:{port}/admin/v1/refresh?image=app:v1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "still only for admin tokens");
}

/// Pulls a manifest of library/app, as a client that takes indexes: its length.
async fn pulled(wharf: &Wharf, reference: String) -> u64 {
    let path = format!("/v2/library/app/manifests/{reference}");
    let r = wharf
        .client
        .get(wharf.url(&path))
        .header("accept", format!("{OCI_INDEX}, {OCI_MANIFEST}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.bytes().await.unwrap().len() as u64
}

async fn images(wharf: &Wharf, query: &str) -> reqwest::Response {
    wharf
        .client
        .get(wharf.url(&format!("/admin/v1/images{query}")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_images_view_shows_each_tag_on_disk_what_it_served_and_the_quota() {
    use crate::common::signing::{push_image, push_index};
    let upstream = FakeRegistry::start().await;
    upstream.faults().quota = Some((100, 21600));
    let dir = tempfile::tempdir().unwrap();
    let amd = push_image(&upstream, "library/app", "amd", 1);
    let arm = push_image(&upstream, "library/app", "arm", 2);
    let index = push_index(
        &upstream,
        "library/app",
        "multi",
        &[amd.clone(), arm.clone()],
    );
    let (single, single_body) = push_image(&upstream, "library/app", "v1", 3);
    let wharf = Wharf::start(&upstream, |c| c.admin = Some(admin(dir.path()))).await;

    // The index and its amd64 image, whole; the arm64 manifest, without its blobs.
    let blobs_of = |body: &str| -> Vec<(String, u64)> {
        let v: Value = serde_json::from_str(body).unwrap();
        std::iter::once(&v["config"])
            .chain(v["layers"].as_array().unwrap())
            .map(|d| {
                (
                    d["digest"].as_str().unwrap().to_owned(),
                    d["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    // A manifest's file holds its media type on a line before its bytes.
    let (index_file, image_file) = (OCI_INDEX.len() as u64 + 1, OCI_MANIFEST.len() as u64 + 1);
    let mut multi_size = pulled(&wharf, "multi".into()).await + index_file;
    multi_size += pulled(&wharf, amd.0.clone()).await + pulled(&wharf, arm.0.clone()).await;
    multi_size += 2 * image_file;
    for (digest, size) in blobs_of(&amd.1) {
        let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
        assert_eq!(r.bytes().await.unwrap().len() as u64, size);
        assert!(wharf.settled(&digest).await);
        multi_size += size;
    }
    // v1 pulled twice, manifest and blobs: the second time from the cache.
    let mut single_size = 0;
    let mut from_cache = 0;
    for round in 0..2 {
        let manifest = pulled(&wharf, "v1".into()).await;
        for (digest, size) in blobs_of(&single_body) {
            let r = wharf.get(&format!("/v2/library/app/blobs/{digest}")).await;
            assert_eq!(r.bytes().await.unwrap().len() as u64, size);
            assert!(wharf.settled(&digest).await);
            single_size += size * (1 - round);
            from_cache += size * round;
        }
        single_size += (manifest + image_file) * (1 - round);
        from_cache += manifest * round;
    }

    let r = wharf
        .client
        .get(wharf.url("/admin/v1/images"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "only for admin tokens");
    let r = images(&wharf, "?n=1").await;
    assert_eq!(r.status(), 200);
    let link = r.headers()["link"].to_str().unwrap().to_owned();
    assert_eq!(
        link,
        "</admin/v1/images?n=1&last=docker.io%2Flibrary%2Fapp%3Amulti>; rel=\"next\""
    );
    let first: Value = r.json().await.unwrap();
    let multi = &first["images"][0];
    assert_eq!(first["images"].as_array().unwrap().len(), 1);
    assert_eq!(multi["image"], "docker.io/library/app:multi");
    let variant = &multi["variants"][0];
    assert_eq!(variant["digest"], index);
    assert_eq!(
        sorted(&variant["platforms"]),
        ["linux/amd64", "linux/arm64"]
    );
    assert_eq!(
        (variant["blobs"].as_u64(), variant["blobs_cached"].as_u64()),
        (Some(4), Some(2))
    );
    assert_eq!(variant["size_bytes"].as_u64(), Some(multi_size));
    assert!(variant["last_use"].is_string());
    assert_eq!(multi["served_from_cache"]["hits"], 0);
    assert_eq!(first["quota"][0]["upstream"], "docker.io");
    assert_eq!(first["quota"][0]["limit"], 100);
    assert_eq!(first["quota"][0]["window_seconds"], 21600);
    let gets = upstream.count("GET", "/manifests/") as u64;
    assert_eq!(first["quota"][0]["remaining"].as_u64(), Some(100 - gets));
    let remaining = wharf
        .metric("wharf_upstream_quota_remaining", &["docker.io"])
        .await;
    assert_eq!(remaining, (100 - gets) as f64, "the gauge says the same");
    let window = wharf
        .metric("wharf_upstream_quota_window_seconds", &["docker.io"])
        .await;
    assert_eq!(window, 21600.0);

    let r = images(&wharf, "?n=1&last=docker.io%2Flibrary%2Fapp%3Amulti").await;
    assert!(r.headers().get("link").is_none(), "the last page");
    let second: Value = r.json().await.unwrap();
    let v1 = &second["images"][0];
    assert_eq!(v1["image"], "docker.io/library/app:v1");
    assert_eq!(v1["variants"][0]["digest"], single);
    assert_eq!(v1["variants"][0]["platforms"].as_array().unwrap().len(), 0);
    assert_eq!(v1["variants"][0]["size_bytes"].as_u64(), Some(single_size));
    assert_eq!(v1["served_from_cache"]["hits"], 1);
    let manifest_bytes = single_body.len() as u64;
    assert_eq!(
        v1["served_from_cache"]["bytes"].as_u64(),
        Some(manifest_bytes)
    );
    let repository = &v1["repository_served_from_cache"];
    assert_eq!(repository["hits"], 3, "the manifest and both blobs");
    assert_eq!(repository["bytes"].as_u64(), Some(from_cache));
    assert_eq!(second["next"], Value::Null);

    let r = images(&wharf, "?n=0").await;
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(r).await, "UNSUPPORTED");

    // The same on disk, from the command line, once the server is gone.
    let cache = wharf.stop().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["cache", "images", "--dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[1].starts_with("docker.io/library/app:multi"),
        "{text}"
    );
    assert!(
        lines[1].contains(" 2/4 ") && lines[1].contains("linux/amd64,linux/arm64"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("docker.io/library/app:v1") && lines[2].contains(" 2/2 "),
        "{text}"
    );
    assert!(lines[3].starts_with("2 images;"), "{text}");
}

#[tokio::test]
async fn a_refresh_and_a_purge_are_passed_on_to_the_forward_to_nodes_once() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let first = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("first"));
    // The downstream node serves its admin API apart; what is passed on reaches its main port.
    let ops = crate::common::free_port();
    let downstream = Wharf::start(&upstream, |c| {
        c.admin = Some(admin(dir.path()));
        c.server.metrics_listen = Some(([127, 0, 0, 1], ops).into());
    })
    .await;
    let edge = Wharf::start(&upstream, |c| {
        let mut admin = admin(dir.path());
        admin.forward_to = vec![downstream.url("/").parse().unwrap()];
        c.admin = Some(admin);
    })
    .await;
    assert_eq!(digest_of(&downstream, "v1").await, first);
    assert_eq!(digest_of(&edge, "v1").await, first);

    let second = upstream.add_manifest("library/app", "v1", OCI_MANIFEST, &manifest("second"));
    let r = post(&edge, "refresh", "app:v1", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            digest_of(&downstream, "v1").await == second
        })
        .await,
        "the downstream node refreshed too"
    );

    let r = post(&edge, "purge", "app:*", Some(TOKEN)).await;
    assert_eq!(r.status(), 200);
    let cached_on_downstream = || async {
        let r = downstream
            .client
            .get(format!("http://127.0.0.1:{ops}/admin/v1/images"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let view: Value = r.json().await.unwrap();
        view["images"].as_array().unwrap().len()
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            cached_on_downstream().await == 0
        })
        .await,
        "the downstream node purged too"
    );

    // Marked as passed on, the main port takes the admin API, for admin tokens still.
    let marked = |token: Option<&str>| {
        let mut request = downstream
            .client
            .post(downstream.url("/admin/v1/refresh?image=app:v1"))
            .header("x-wharf-forwarded", "1");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(marked(None).await.unwrap().status(), 401);
    assert_eq!(marked(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(marked(Some(TOKEN)).await.unwrap().status(), 200);
}
