//! Per-client repository rights: once a grant exists, a user or a token gets only the
//! repositories its grants give (cached content included), and `/v2/` as before; a user and a
//! token of the same name are different clients.

use sha2::{Digest as _, Sha256};
use wharf::config::{AuthConfig, GrantConfig};

use crate::common::{error_code, random_bytes, FakeRegistry, Wharf, OCI_MANIFEST};

fn grant(users: &[&str], token_labels: &[&str], repositories: &[&str]) -> GrantConfig {
    GrantConfig {
        users: users.iter().map(|s| s.to_string()).collect(),
        token_labels: token_labels.iter().map(|s| s.to_string()).collect(),
        repositories: repositories.iter().map(|r| r.parse().unwrap()).collect(),
        upstream: None,
    }
}

#[tokio::test]
async fn each_client_pulls_what_its_grants_give_and_is_refused_the_rest_even_from_cache() {
    let upstream = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    // A user "ci" and a token labelled "ci": two clients.
    let hash = bcrypt::hash("user-password", 4).unwrap();
    std::fs::write(dir.path().join("htpasswd"), format!("ci:{hash}\n")).unwrap();
    let token = hex::encode(Sha256::digest("token-of-the-ci-runners"));
    std::fs::write(dir.path().join("tokens"), format!("sha256:{token} ci\n")).unwrap();
    let auth = AuthConfig {
        htpasswd: Some(dir.path().join("htpasswd")),
        tokens: Some(dir.path().join("tokens")),
        grants: vec![
            grant(&["ci"], &[], &["myorg/*"]),
            grant(&[], &["ci"], &["tools/*"]),
        ],
    };
    let blob = random_bytes(4096, 3);
    let digest = upstream.add_blob(blob.clone());
    upstream.add_manifest("myorg/app", "v1", OCI_MANIFEST, "{}");
    upstream.add_manifest("tools/lint", "v1", OCI_MANIFEST, "{}");
    let wharf = Wharf::start(&upstream, |c| c.server.auth = Some(auth)).await;
    let as_user = |path: &str| {
        wharf
            .client
            .get(wharf.url(path))
            .basic_auth("ci", Some("user-password"))
            .send()
    };
    let as_token = |path: &str| {
        wharf
            .client
            .get(wharf.url(path))
            .bearer_auth("token-of-the-ci-runners")
            .send()
    };
    assert_eq!(as_user("/v2/").await.unwrap().status(), 200);
    assert_eq!(as_token("/v2/").await.unwrap().status(), 200);

    // The user's grant: myorg/*; the token's: tools/*.
    let mine = "/v2/myorg/app/manifests/v1";
    let theirs = "/v2/tools/lint/manifests/v1";
    assert_eq!(as_user(mine).await.unwrap().status(), 200);
    assert_eq!(as_token(theirs).await.unwrap().status(), 200);
    let blob_path = format!("/v2/myorg/app/blobs/{digest}");
    assert_eq!(
        as_user(&blob_path).await.unwrap().bytes().await.unwrap(),
        blob
    );

    // Refused, though cached, and told why.
    let gets = upstream.count("GET", "/manifests/");
    let r = as_token(mine).await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DENIED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("token ci may not pull docker.io/myorg/app"),
        "{message}"
    );
    let r = as_token(&blob_path).await.unwrap();
    assert_eq!(r.status(), 403, "blobs too");
    let r = as_user(theirs).await.unwrap();
    assert_eq!(error_code(r).await, "DENIED");
    let r = as_user("/v2/ns/x/tags/list?ns=docker.io").await.unwrap();
    assert_eq!(r.status(), 403, "listings too");
    assert_eq!(
        upstream.count("GET", "/manifests/"),
        gets,
        "refused before any fetch"
    );
    // No credentials: still asked for them first.
    assert_eq!(wharf.get(mine).await.status(), 401);
}
