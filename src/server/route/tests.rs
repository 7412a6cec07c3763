use super::*;
use crate::oci::NameError;

const DIGEST: &str = "sha256:4bf5fef1c5f6a1f5f0a3d4d8e1d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5";

fn registries(name: &str) -> bool {
    matches!(name, "docker.io" | "ghcr.io" | "127.0.0.1:5001")
}

fn get(path: &str, query: Option<&str>) -> Result<Route, ClientError> {
    parse(&Method::GET, path, query, registries)
}

fn manifest(registry: Option<&str>, repo: &str, reference: &str) -> Route {
    Route::Manifest {
        target: Target {
            registry: registry.map(str::to_owned),
            repo: repo.parse().unwrap(),
        },
        reference: reference.parse().unwrap(),
    }
}

#[test]
fn base_and_operational_endpoints() {
    assert_eq!(get("/v2/", None).unwrap(), Route::Base);
    assert_eq!(get("/v2", None).unwrap(), Route::Base);
    assert_eq!(get("/metrics", None).unwrap(), Route::Metrics);
    assert_eq!(get("/healthz", None).unwrap(), Route::Health);
    assert_eq!(get("/readyz", None).unwrap(), Route::Ready);
    assert_eq!(
        parse(&Method::HEAD, "/v2/", None, registries).unwrap(),
        Route::Base
    );
}

#[test]
fn docker_shape_uses_the_default_upstream() {
    assert_eq!(
        get("/v2/library/alpine/manifests/3.20", None).unwrap(),
        manifest(None, "library/alpine", "3.20")
    );
    assert_eq!(
        get(&format!("/v2/library/alpine/blobs/{DIGEST}"), None).unwrap(),
        Route::Blob {
            target: Target {
                registry: None,
                repo: "library/alpine".parse().unwrap()
            },
            digest: DIGEST.parse().unwrap()
        }
    );
}

#[test]
fn containerd_shape_takes_ns() {
    assert_eq!(
        get("/v2/library/alpine/manifests/latest", Some("ns=docker.io")).unwrap(),
        manifest(Some("docker.io"), "library/alpine", "latest")
    );
    // containerd escapes the colon of host:port.
    assert_eq!(
        get("/v2/acme/app/manifests/v1", Some("ns=127.0.0.1%3A5001")).unwrap(),
        manifest(Some("127.0.0.1:5001"), "acme/app", "v1")
    );
    // An unknown ns is carried to the mirror, which refuses it without any connection.
    assert_eq!(
        get("/v2/x/manifests/v1", Some("ns=evil.example")).unwrap(),
        manifest(Some("evil.example"), "x", "v1")
    );
}

#[test]
fn path_prefix_shape_strips_a_configured_registry() {
    assert_eq!(
        get("/v2/ghcr.io/org/app/manifests/v1", None).unwrap(),
        manifest(Some("ghcr.io"), "org/app", "v1")
    );
    assert_eq!(
        get("/v2/127.0.0.1:5001/acme/tools/app/manifests/v1", None).unwrap(),
        manifest(Some("127.0.0.1:5001"), "acme/tools/app", "v1")
    );
    assert_eq!(
        get("/v2/docker.io/library/alpine/manifests/3", None).unwrap(),
        manifest(Some("docker.io"), "library/alpine", "3")
    );
}

#[test]
fn unconfigured_registry_prefix_is_refused() {
    assert!(matches!(
        get("/v2/quay.io/org/app/manifests/v1", None),
        Err(ClientError::UnknownRegistry(r)) if r == "quay.io"
    ));
    assert!(matches!(
        get("/v2/localhost/app/manifests/v1", None),
        Err(ClientError::UnknownRegistry(_))
    ));
    // A single component is a repository name, not a prefix.
    assert_eq!(
        get("/v2/ghcr.io/manifests/v1", None).unwrap(),
        manifest(None, "ghcr.io", "v1")
    );
}

#[test]
fn listings() {
    assert_eq!(
        get(
            "/v2/library/alpine/tags/list",
            Some("n=10&last=3.1&ns=docker.io&x=1")
        )
        .unwrap(),
        Route::Listing {
            target: Target {
                registry: Some("docker.io".into()),
                repo: "library/alpine".parse().unwrap()
            },
            listing: Listing::Tags {
                n: Some("10".into()),
                last: Some("3.1".into())
            }
        }
    );
    let r = get(
        &format!("/v2/a/referrers/{DIGEST}"),
        Some("artifactType=application%2Fvnd.example"),
    )
    .unwrap();
    assert!(matches!(
        r,
        Route::Listing {
            listing: Listing::Referrers { artifact_type: Some(t), .. },
            ..
        } if t == "application/vnd.example"
    ));
}

#[test]
fn bad_names_digests_and_tags() {
    assert!(matches!(
        get("/v2/Library/alpine/manifests/1", None),
        Err(ClientError::Name(_))
    ));
    assert!(matches!(
        get("/v2/lib%2Falpine/manifests/1", None),
        Err(ClientError::Name(_))
    ));
    assert!(matches!(
        get("/v2/../etc/manifests/1", None),
        Err(ClientError::Name(_))
    ));
    assert!(matches!(
        get("/v2/a/blobs/sha256:ABC", None),
        Err(ClientError::Digest(_))
    ));
    assert!(matches!(
        get("/v2/a/blobs/latest", None),
        Err(ClientError::Digest(_))
    ));
    assert!(matches!(
        get("/v2/a/manifests/-bad", None),
        Err(ClientError::Reference(_))
    ));
    assert!(matches!(
        get("/v2/a/manifests/sha256:00", None),
        Err(ClientError::Reference(_))
    ));
    let long = format!("/v2/{}/manifests/1", "a".repeat(256));
    assert!(matches!(
        get(&long, None),
        Err(ClientError::Name(NameError::TooLong))
    ));
}

#[test]
fn unknown_paths() {
    for path in [
        "/",
        "/v1/x",
        "/v2/a",
        "/v2/a/b",
        "/v2/a/things/x",
        "/favicon.ico",
    ] {
        assert!(
            matches!(get(path, None), Err(ClientError::NotFound)),
            "{path}"
        );
    }
    assert!(matches!(
        get("/v2/_catalog", None),
        Err(ClientError::Unsupported(_))
    ));
}

#[test]
fn writes_are_refused() {
    for (method, path) in [
        (Method::POST, "/v2/a/blobs/uploads/"),
        (Method::PATCH, "/v2/a/blobs/uploads/0b1c"),
        (Method::PUT, "/v2/a/manifests/latest"),
        (Method::DELETE, &format!("/v2/a/blobs/{DIGEST}") as &str),
        (Method::DELETE, "/v2/a/manifests/latest"),
    ] {
        assert!(
            matches!(
                parse(&method, path, None, registries),
                Err(ClientError::Unsupported(_))
            ),
            "{method} {path}"
        );
    }
    assert!(matches!(
        parse(&Method::POST, "/v2/", None, registries),
        Err(ClientError::MethodNotAllowed)
    ));
    assert!(matches!(
        parse(&Method::DELETE, "/v2/a/tags/list", None, registries),
        Err(ClientError::MethodNotAllowed)
    ));
}

#[test]
fn the_peers_index_record_is_asked_and_told() {
    let target = Target {
        registry: Some("docker.io".into()),
        repo: "myorg/app".parse().unwrap(),
    };
    let path = format!("/v2/myorg/app/_listed_by/{DIGEST}");
    assert_eq!(
        get(&path, Some("ns=docker.io")).unwrap(),
        Route::ListedBy {
            target: target.clone(),
            manifest: DIGEST.parse().unwrap(),
            told: None,
        }
    );
    let index = Digest::sha256_of(b"index");
    let query = format!("index={index}&ns=docker.io");
    assert_eq!(
        parse(&Method::PUT, &path, Some(&query), registries).unwrap(),
        Route::ListedBy {
            target,
            manifest: DIGEST.parse().unwrap(),
            told: Some(index),
        }
    );
    assert!(matches!(
        parse(&Method::PUT, &path, Some("ns=docker.io"), registries),
        Err(ClientError::Digest(_))
    ));
    assert!(matches!(
        parse(&Method::DELETE, &path, None, registries),
        Err(ClientError::MethodNotAllowed)
    ));
    assert!(matches!(
        get("/v2/myorg/app/_listed_by/latest", None),
        Err(ClientError::Digest(_))
    ));
}
