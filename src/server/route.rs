//! Routing as a pure function: method, raw path and query in, a typed [`Route`] out. Nothing
//! here touches a socket, so every URL shape is unit-tested below.
//!
//! The registry a request addresses comes from containerd's `?ns=<registry>`, or from a leading
//! path segment naming a configured upstream (`/v2/ghcr.io/org/app/...`, podman and CRI-O's
//! mirror-with-prefix form), or else is the default upstream (Docker's `registry-mirrors`).

use http::Method;
use url::form_urlencoded;

use crate::error::ClientError;
use crate::oci::{Digest, Listing, Reference, RepoName};

/// Which repository on which registry a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `None`: the default upstream.
    pub registry: Option<String>,
    pub repo: RepoName,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        target: Target,
        reference: Reference,
    },
    Blob {
        target: Target,
        digest: Digest,
    },
    /// `tags/list` or `referrers/<digest>`, with only the spec's parameters kept.
    Listing {
        target: Target,
        listing: Listing,
    },
    Metrics,
    Health,
    Ready,
}

impl Route {
    /// A bounded label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::Listing {
                listing: Listing::Tags { .. },
                ..
            } => "tags",
            Route::Listing {
                listing: Listing::Referrers { .. },
                ..
            } => "referrers",
            Route::Metrics => "metrics",
            Route::Health | Route::Ready => "health",
        }
    }
}

/// A first path segment that looks like a registry host (`ghcr.io`, `host:5000`, `localhost`).
/// Docker Hub namespaces never contain a dot or a colon, so such a segment that is not a
/// configured upstream is refused rather than sent to the default upstream.
fn looks_like_registry(segment: &str) -> bool {
    let host_like = segment.contains('.') && segment.parse::<RepoName>().is_ok();
    host_like || segment.contains(':') || segment == "localhost"
}

pub fn parse(
    method: &Method,
    path: &str,
    query: Option<&str>,
    is_registry: impl Fn(&str) -> bool,
) -> Result<Route, ClientError> {
    let read_only = method == Method::GET || method == Method::HEAD;
    let simple = match path {
        "/metrics" => Some(Route::Metrics),
        "/healthz" => Some(Route::Health),
        "/readyz" => Some(Route::Ready),
        "/v2" | "/v2/" => Some(Route::Base),
        _ => None,
    };
    if let Some(route) = simple {
        return if read_only {
            Ok(route)
        } else {
            Err(ClientError::MethodNotAllowed)
        };
    }
    let rest = path.strip_prefix("/v2/").ok_or(ClientError::NotFound)?;
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    if n >= 3 && segments[n - 2] == "uploads" && segments[n - 3] == "blobs"
        || n >= 2 && segments[n - 1] == "uploads" && segments[n - 2] == "blobs"
    {
        return Err(ClientError::Unsupported("pushing"));
    }
    if rest == "_catalog" {
        return Err(ClientError::Unsupported("the catalog"));
    }
    if n < 3 {
        return Err(ClientError::NotFound);
    }
    let (name_segments, kind, last) = (&segments[..n - 2], segments[n - 2], segments[n - 1]);
    let build_target = || target(name_segments, query, &is_registry);
    let route = match (kind, last) {
        ("tags", "list") => Route::Listing {
            target: build_target()?,
            listing: Listing::Tags {
                n: parameter(query, "n"),
                last: parameter(query, "last"),
            },
        },
        ("manifests", reference) => Route::Manifest {
            target: build_target()?,
            reference: reference.parse()?,
        },
        ("blobs", digest) => Route::Blob {
            target: build_target()?,
            digest: digest.parse()?,
        },
        ("referrers", digest) => Route::Listing {
            target: build_target()?,
            listing: Listing::Referrers {
                digest: digest.parse()?,
                artifact_type: parameter(query, "artifactType"),
            },
        },
        _ => return Err(ClientError::NotFound),
    };
    if read_only {
        Ok(route)
    } else if matches!(route, Route::Manifest { .. } | Route::Blob { .. }) {
        Err(ClientError::Unsupported("pushing or deleting"))
    } else {
        Err(ClientError::MethodNotAllowed)
    }
}

fn target(
    name_segments: &[&str],
    query: Option<&str>,
    is_registry: &impl Fn(&str) -> bool,
) -> Result<Target, ClientError> {
    let ns = parameter(query, "ns");
    let (registry, name_segments) = match (ns, name_segments) {
        (Some(ns), segments) => (Some(ns), segments),
        (None, [first, rest @ ..]) if !rest.is_empty() && is_registry(first) => {
            (Some((*first).to_owned()), rest)
        }
        (None, [first, rest @ ..]) if !rest.is_empty() && looks_like_registry(first) => {
            return Err(ClientError::UnknownRegistry((*first).to_owned()));
        }
        (None, segments) => (None, segments),
    };
    Ok(Target {
        registry,
        repo: name_segments.join("/").parse()?,
    })
}

/// The first value of one query parameter, decoded.
fn parameter(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[cfg(test)]
mod tests {
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
}
