//! Image references as people type them: `alpine`, `alpine:3.20`, `ghcr.io/org/app@sha256:…`,
//! `registry.local:5000/team/app:v1`. Normalised the way Docker does: no registry means
//! `docker.io`, and a one-component Docker Hub name gets `library/`.

use std::fmt;
use std::str::FromStr;

use super::name::RepoName;
use super::reference::{Reference, Tag};

pub const DOCKER_HUB: &str = "docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host (`docker.io`, `ghcr.io`, `host:port`).
    pub registry: String,
    pub repo: RepoName,
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ImageRefError {
    input: String,
    reason: String,
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: String| ImageRefError {
            input: input.to_owned(),
            reason,
        };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (input, None),
        };
        // A first component with a dot or a colon, or `localhost`, names a registry.
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, path)
            }
            _ => (DOCKER_HUB, rest),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            r => r,
        };
        // A tag follows the last colon, unless that colon is inside a path component's port.
        let (path, tag) = match path.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') => (path, Some(tag)),
            _ => (path, None),
        };
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let repo: RepoName = path.parse().map_err(|e| error(format!("{e}")))?;
        let reference = match (digest, tag) {
            (Some(digest), _) => Reference::Digest(
                digest
                    .parse()
                    .map_err(|e| error(format!("bad digest: {e}")))?,
            ),
            (None, tag) => Reference::Tag(
                tag.unwrap_or("latest")
                    .parse::<Tag>()
                    .map_err(|e| error(format!("{e}")))?,
            ),
        };
        if registry.is_empty() || registry.contains(['/', '?', '#', '@']) {
            return Err(error("bad registry name".into()));
        }
        Ok(ImageRef {
            registry: registry.to_owned(),
            repo,
            reference,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let separator = match self.reference {
            Reference::Tag(_) => ':',
            Reference::Digest(_) => '@',
        };
        write!(
            f,
            "{}/{}{separator}{}",
            self.registry, self.repo, self.reference
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> String {
        s.parse::<ImageRef>().unwrap().to_string()
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        assert_eq!(parse("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(parse("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(parse("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(
            parse("docker.io/alpine:3.20"),
            "docker.io/library/alpine:3.20"
        );
        assert_eq!(
            parse("index.docker.io/library/alpine"),
            "docker.io/library/alpine:latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse("ghcr.io/org/app:v1"), "ghcr.io/org/app:v1");
        assert_eq!(
            parse("registry.local:5000/team/app"),
            "registry.local:5000/team/app:latest"
        );
        assert_eq!(
            parse("localhost/app:1"),
            "localhost/app:1",
            "no library/ outside Docker Hub"
        );
        let r: ImageRef = format!("quay.io/a/b:tag@{digest}").parse().unwrap();
        assert_eq!(r.reference, Reference::Digest(digest.parse().unwrap()));
        assert_eq!(r.to_string(), format!("quay.io/a/b@{digest}"));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "UPPER/case",
            "alpine:",
            "alpine:bad tag",
            "alpine@sha256:short",
            "ghcr.io/",
            "a//b",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }
}
