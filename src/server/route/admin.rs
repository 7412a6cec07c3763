//! The admin API's routes (`/admin/v1/...`), parsed into typed requests: what to refresh or
//! purge is an image reference as `docker pull` takes it, or a repository with `:*`.

use std::fmt;

use http::Method;

use super::query::parameter;
use crate::error::ClientError;
use crate::mirror::Scope;
use crate::oci::{ImageRef, Reference, RepoName};
use crate::server::webhooks::payloads::WebhookKind;

/// What is under `/admin/v1/`: the admin API, and the registries' webhooks.
pub enum UnderAdmin {
    Admin(AdminRoute),
    Webhook(WebhookRoute),
}

/// `rest`: the path after `/admin/v1/`.
pub fn parse(method: &Method, rest: &str, query: Option<&str>) -> Result<UnderAdmin, ClientError> {
    let Some(kind) = rest.strip_prefix("webhooks/") else {
        return AdminRoute::parse(method, rest, query).map(UnderAdmin::Admin);
    };
    let kind = WebhookKind::parse(kind).ok_or(ClientError::NotFound)?;
    if method != Method::POST {
        return Err(ClientError::MethodNotAllowed);
    }
    Ok(UnderAdmin::Webhook(WebhookRoute {
        kind,
        upstream: parameter(query, "upstream"),
        // Docker Hub sends no header: its secret can only be in the URL.
        secret: (kind == WebhookKind::DockerHub)
            .then(|| parameter(query, "secret"))
            .flatten(),
    }))
}

/// `POST /admin/v1/webhooks/<kind>`: a registry announcing a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRoute {
    pub kind: WebhookKind,
    /// `?upstream=NAME`: which upstream the registry is, when its payload cannot tell.
    pub upstream: Option<String>,
    /// `?secret=`, taken from Docker Hub only.
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    /// `POST refresh?image=REF`
    Refresh(AdminImage),
    /// `POST purge?image=REF`
    Purge(AdminImage),
    /// `GET images?n=&last=`
    Images(ImagesPage),
    /// `GET sync`: the keep-warm rules' status.
    Sync,
}

/// A page of the images view: at most `n` tags, those after the reference `last`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagesPage {
    pub n: usize,
    pub last: Option<String>,
}

impl ImagesPage {
    pub const DEFAULT: usize = 100;
    pub const MAX: usize = 1000;

    fn parse(query: Option<&str>) -> Result<ImagesPage, ClientError> {
        let n = match parameter(query, "n") {
            None => Self::DEFAULT,
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=Self::MAX).contains(n))
                .ok_or_else(|| {
                    ClientError::BadRequest(format!("n={n}: a page holds 1 to {} tags", Self::MAX))
                })?,
        };
        Ok(ImagesPage {
            n,
            last: parameter(query, "last"),
        })
    }
}

impl AdminRoute {
    /// `rest`: the path after `/admin/v1/`.
    pub fn parse(method: &Method, rest: &str, query: Option<&str>) -> Result<Self, ClientError> {
        if rest == "sync" {
            if method != Method::GET {
                return Err(ClientError::MethodNotAllowed);
            }
            return Ok(AdminRoute::Sync);
        }
        if rest == "images" {
            if method != Method::GET {
                return Err(ClientError::MethodNotAllowed);
            }
            return ImagesPage::parse(query).map(AdminRoute::Images);
        }
        let build: fn(AdminImage) -> AdminRoute = match rest {
            "refresh" => AdminRoute::Refresh,
            "purge" => AdminRoute::Purge,
            _ => return Err(ClientError::NotFound),
        };
        if method != Method::POST {
            return Err(ClientError::MethodNotAllowed);
        }
        let image = parameter(query, "image").ok_or_else(|| {
            ClientError::BadRequest("image=REF is required (as docker pull takes it)".into())
        })?;
        Ok(build(image.parse()?))
    }
}

/// An image as an operator names it: `ghcr.io/org/app:v2`, `alpine`, `app@sha256:…`, or a
/// whole repository, `ghcr.io/org/app:*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminImage {
    pub registry: String,
    pub repo: RepoName,
    pub scope: Scope,
}

impl std::str::FromStr for AdminImage {
    type Err = ClientError;

    fn from_str(input: &str) -> Result<Self, ClientError> {
        let (name, every_tag) = match input.strip_suffix(":*") {
            Some(name) => (name, true),
            None => (input, false),
        };
        let image: ImageRef = name.parse()?;
        let scope = match (every_tag, image.reference) {
            (true, Reference::Digest(_)) => {
                return Err(ClientError::BadRequest(format!(
                    "{input:?}: a digest and :* together name nothing"
                )))
            }
            (true, Reference::Tag(_)) => Scope::Repository,
            (false, Reference::Tag(tag)) => Scope::Tag(tag),
            (false, Reference::Digest(digest)) => Scope::Digest(digest),
        };
        Ok(AdminImage {
            registry: image.registry,
            repo: image.repo,
            scope,
        })
    }
}

impl fmt::Display for AdminImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repo)?;
        match &self.scope {
            Scope::Tag(tag) => write!(f, ":{tag}"),
            Scope::Digest(digest) => write!(f, "@{digest}"),
            Scope::Repository => f.write_str(":*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(rest: &str, query: &str) -> Result<AdminRoute, ClientError> {
        AdminRoute::parse(&Method::POST, rest, Some(query))
    }

    #[test]
    fn images_are_named_as_docker_pull_takes_them() {
        let image = |s: &str| s.parse::<AdminImage>().unwrap().to_string();
        assert_eq!(image("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(image("ghcr.io/org/app:v2"), "ghcr.io/org/app:v2");
        assert_eq!(image("ghcr.io/org/app:*"), "ghcr.io/org/app:*");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image(&format!("127.0.0.1:5000/app@{digest}")),
            format!("127.0.0.1:5000/app@{digest}")
        );
        assert!(matches!(
            format!("app@{digest}:*").parse::<AdminImage>(),
            Err(ClientError::BadRequest(_))
        ));
        assert!(matches!(
            "Bad/Name".parse::<AdminImage>(),
            Err(ClientError::ImageRef(_))
        ));
    }

    #[test]
    fn actions_are_posts_with_an_image() {
        assert_eq!(
            post("refresh", "image=ghcr.io%2Forg%2Fapp%3Av2").unwrap(),
            AdminRoute::Refresh("ghcr.io/org/app:v2".parse().unwrap())
        );
        assert!(matches!(
            post("purge", "image=alpine:*"),
            Ok(AdminRoute::Purge(AdminImage {
                scope: Scope::Repository,
                ..
            }))
        ));
        assert!(matches!(
            post("purge", "other=1"),
            Err(ClientError::BadRequest(_))
        ));
        assert!(matches!(
            AdminRoute::parse(&Method::GET, "refresh", Some("image=alpine")),
            Err(ClientError::MethodNotAllowed)
        ));
        assert!(matches!(post("nothing", ""), Err(ClientError::NotFound)));
    }

    #[test]
    fn the_images_view_is_paged() {
        let get = |query| AdminRoute::parse(&Method::GET, "images", query);
        assert_eq!(
            get(None).unwrap(),
            AdminRoute::Images(ImagesPage { n: 100, last: None })
        );
        assert_eq!(
            get(Some("n=2&last=docker.io%2Fa%3Av1")).unwrap(),
            AdminRoute::Images(ImagesPage {
                n: 2,
                last: Some("docker.io/a:v1".into())
            })
        );
        for bad in ["n=0", "n=1001", "n=many"] {
            assert!(
                matches!(get(Some(bad)), Err(ClientError::BadRequest(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            post("images", ""),
            Err(ClientError::MethodNotAllowed)
        ));
    }
}
