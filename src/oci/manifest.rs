//! What an image is made of: an index (or Docker manifest list) names one manifest per platform;
//! a manifest names a config blob and layer blobs. Only the fields needed to walk an image.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use super::digest::Digest;
use super::media;

/// A manifest exactly as the upstream served it: its digest is of these bytes, so they are
/// stored and served as they are, never re-serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawManifest {
    pub digest: Digest,
    /// `Content-Type` exactly as the upstream sent it.
    pub media_type: String,
    pub body: bytes::Bytes,
}

impl RawManifest {
    /// The media type without parameters, for `Accept` matching.
    pub fn media_type_essence(&self) -> &str {
        self.media_type.split(';').next().unwrap_or("").trim()
    }
}

/// A reference to content by digest, with its size.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    #[serde(deserialize_with = "digest_from_str")]
    pub digest: Digest,
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    /// What an artifact is, for the entries of an index of referrers.
    #[serde(default)]
    pub artifact_type: Option<String>,
    /// Where cosign's classic layout keeps each layer's signature.
    #[serde(default)]
    pub annotations: std::collections::HashMap<String, String>,
}

impl Descriptor {
    /// Layers that registries do not serve (Windows foreign layers) are fetched from elsewhere
    /// by clients, so a mirror never sees them.
    pub fn is_distributable(&self) -> bool {
        !self.media_type.contains("foreign") && !self.media_type.contains("nondistributable")
    }
}

fn digest_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

/// `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this program runs on, named as images name it.
    pub fn host() -> Platform {
        // Rust's names for architectures, in Go's spelling (GOARCH), which images use.
        let architecture = match (std::env::consts::ARCH, cfg!(target_endian = "little")) {
            ("x86_64", _) => "amd64",
            ("aarch64", _) => "arm64",
            ("x86", _) => "386",
            ("arm", _) => "arm",
            ("powerpc64", true) => "ppc64le",
            ("powerpc64", false) => "ppc64",
            ("loongarch64", _) => "loong64",
            ("mips64", true) => "mips64le",
            ("mips", true) => "mipsle",
            (other, _) => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// Whether an image for `self` serves a request for `wanted`: os and architecture must be
    /// equal, and the variant too when `wanted` names one.
    pub fn serves(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && wanted
                .variant
                .as_ref()
                .map_or(true, |v| self.variant.as_ref() == Some(v))
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid =
            |p: &&str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        match parts.as_slice() {
            [os, arch, rest @ ..] if rest.len() <= 1 && parts.iter().all(valid) => Ok(Platform {
                os: (*os).into(),
                architecture: (*arch).into(),
                variant: rest.first().map(|v| (*v).to_owned()),
            }),
            _ => Err(format!(
                "invalid platform {s:?}: expected os/arch or os/arch/variant"
            )),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest document, by what it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestDoc {
    /// One manifest per platform (and attestations, which name no real platform).
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct Raw {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// Why a manifest document could not be walked.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest: {0}")]
    Json(#[from] serde_json::Error),
    #[error("a {media_type} document with neither manifests nor a config")]
    Empty { media_type: String },
}

impl ManifestDoc {
    /// Parses a manifest served with `media_type`; the body decides when the type is vague.
    pub fn parse(media_type: &str, body: &[u8]) -> Result<ManifestDoc, ManifestError> {
        let raw: Raw = serde_json::from_slice(body)?;
        match (raw.manifests, raw.config) {
            (Some(manifests), _) if media::is_index(media_type) || raw.layers.is_none() => {
                Ok(ManifestDoc::Index(manifests))
            }
            (_, Some(config)) => Ok(ManifestDoc::Image {
                config,
                layers: raw.layers.unwrap_or_default(),
            }),
            _ => Err(ManifestError::Empty {
                media_type: media_type.to_owned(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn an_index_lists_platform_manifests() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[
                {{"mediaType":"{}","digest":"{}","size":10,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"mediaType":"{}","digest":"{}","size":11,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#,
            media::OCI_INDEX,
            media::OCI_MANIFEST,
            digest('a'),
            media::OCI_MANIFEST,
            digest('b')
        );
        let ManifestDoc::Index(list) =
            ManifestDoc::parse(media::OCI_INDEX, body.as_bytes()).unwrap()
        else {
            panic!("an index");
        };
        let arm = list[1].platform.as_ref().unwrap();
        assert!(arm.serves(&"linux/arm64".parse().unwrap()));
        assert!(arm.serves(&"linux/arm64/v8".parse().unwrap()));
        assert!(!arm.serves(&"linux/arm64/v7".parse().unwrap()));
        assert!(!arm.serves(&"linux/amd64".parse().unwrap()));
        assert_eq!(arm.to_string(), "linux/arm64/v8");
    }

    #[test]
    fn a_manifest_lists_config_and_layers() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{}","size":5}},
               "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","digest":"{}","size":7}}]}}"#,
            digest('c'),
            digest('d')
        );
        let ManifestDoc::Image { config, layers } =
            ManifestDoc::parse(media::DOCKER_MANIFEST, body.as_bytes()).unwrap()
        else {
            panic!("an image manifest");
        };
        assert_eq!(config.size, 5);
        assert!(!layers[0].is_distributable());
    }

    #[test]
    fn bad_documents_and_platforms_are_refused() {
        assert!(ManifestDoc::parse(media::OCI_MANIFEST, b"{}").is_err());
        assert!(ManifestDoc::parse(media::OCI_MANIFEST, b"not json").is_err());
        let bad_digest = r#"{"config":{"digest":"sha256:AB","size":1}}"#;
        assert!(ManifestDoc::parse(media::OCI_MANIFEST, bad_digest.as_bytes()).is_err());
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux/arm/v7/x",
            "linux/am d64",
        ] {
            assert!(bad.parse::<Platform>().is_err(), "{bad}");
        }
    }
}
