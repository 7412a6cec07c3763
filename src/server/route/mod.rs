//! Routing as a pure function: method, raw path and query in, a typed [`Route`] out. Nothing
//! here touches a socket, so every URL shape is unit-tested below.
//!
//! The registry a request addresses comes from containerd's `?ns=<registry>`, or from a leading
//! path segment naming a configured upstream (`/v2/ghcr.io/org/app/...`, podman and CRI-O's
//! mirror-with-prefix form), or else is the default upstream (Docker's `registry-mirrors`).

mod admin;
mod query;

use http::Method;

use crate::cluster::LISTED_BY;
use crate::error::ClientError;
use crate::oci::{Digest, Listing, Reference, RepoName};
pub use admin::{AdminImage, AdminRoute, ImagesPage, WebhookRoute};
use query::parameter;

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
    /// Which index lists a manifest, as this node has recorded it: asked (`GET`) and told
    /// (`PUT`, with the index) by peer nodes only.
    ListedBy {
        target: Target,
        manifest: Digest,
        /// What a `PUT` tells: the index that lists it.
        told: Option<Digest>,
    },
    /// The admin API (`/admin/v1/...`), served where `/metrics` is.
    Admin(AdminRoute),
    /// A registry's push notification, on the main listener.
    Webhook(WebhookRoute),
    Metrics,
    Health,
    Ready,
}

impl Route {
    /// The repository of an upstream a request is about, if it is about one.
    pub fn target(&self) -> Option<&Target> {
        match self {
            Route::Manifest { target, .. }
            | Route::Blob { target, .. }
            | Route::Listing { target, .. }
            | Route::ListedBy { target, .. } => Some(target),
            _ => None,
        }
    }

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
            Route::ListedBy { .. } => "listed_by",
            Route::Admin(_) => "admin",
            Route::Webhook(_) => "webhook",
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
    if let Some(rest) = path.strip_prefix("/admin/v1/") {
        return Ok(match admin::parse(method, rest, query)? {
            admin::UnderAdmin::Admin(route) => Route::Admin(route),
            admin::UnderAdmin::Webhook(route) => Route::Webhook(route),
        });
    }
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
        (LISTED_BY, digest) => Route::ListedBy {
            target: build_target()?,
            manifest: digest.parse()?,
            told: match *method {
                Method::PUT => Some(parameter(query, "index").unwrap_or_default().parse()?),
                _ => None,
            },
        },
        _ => return Err(ClientError::NotFound),
    };
    if matches!(route, Route::ListedBy { .. }) {
        return match *method {
            Method::GET | Method::PUT => Ok(route),
            _ => Err(ClientError::MethodNotAllowed),
        };
    }
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

#[cfg(test)]
mod tests;
