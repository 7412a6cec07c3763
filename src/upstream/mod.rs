//! The registry client: manifests, blobs and listings fetched from one configured upstream, with
//! token or basic auth, pooled connections and timeouts. Knows nothing of the cache.

mod auth;
mod backoff;
mod bandwidth;
mod blob;
mod client;
mod connect;
mod error;
mod listed;
mod login;
mod quota;
mod ranges;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::Method;

pub use auth::Challenge;
pub use backoff::{as_retry_after, parse_retry_after};
pub use blob::{BlobStream, Span};
use client::{header, read_capped, Client, Kind};
pub use connect::{ca_bundle, Relay};
pub use error::{CaBundleError, SetupError, UpstreamError};

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::media::Accept;
use crate::oci::{Digest, Listing, ListingPage, Reference, RepoName, RepoPattern};

/// The spec lets registries refuse manifests over 4 MiB; wharf will not buffer more than that.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;
/// Listings (`tags/list`, `referrers`) are buffered too, so they are capped as well.
const MAX_LISTING_BYTES: usize = 16 * 1024 * 1024;

/// What a manifest request asks for: the whole manifest, or only its headers (digest, type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
}

/// One upstream registry: what may be pulled from it and how, over its [`Client`].
pub struct Upstream {
    client: Arc<Client>,
    /// `None`: every repository may be pulled.
    repositories: Option<Vec<RepoPattern>>,
    /// Content fetched with credentials is served through another repository only once the
    /// upstream confirms that repository may read it.
    confirms_access: bool,
    /// Blobs of `segment_threshold` bytes or more are fetched as this many ranged GETs.
    segments: usize,
    segment_threshold: u64,
}

/// A manifest as the upstream served it.
#[derive(Debug, Clone)]
pub struct ManifestResponse {
    /// `Docker-Content-Digest`, when the upstream sent a valid one.
    pub digest: Option<Digest>,
    pub media_type: String,
    /// Empty for `HEAD`.
    pub body: Bytes,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig, metrics: Metrics) -> Result<Upstream, SetupError> {
        Self::reached(config, None, metrics)
    }

    /// The upstream of `config` reached through a peer node: fetched whole, in one GET (the
    /// node that fetches from the upstream itself splits it into segments if that helps).
    pub fn through(
        config: &UpstreamConfig,
        relay: &Relay,
        metrics: Metrics,
    ) -> Result<Upstream, SetupError> {
        let mut upstream = Self::reached(config, Some(relay), metrics)?;
        upstream.segments = 1;
        Ok(upstream)
    }

    fn reached(
        config: &UpstreamConfig,
        relay: Option<&Relay>,
        metrics: Metrics,
    ) -> Result<Upstream, SetupError> {
        Ok(Upstream {
            client: Arc::new(Client::new(config, relay, metrics)?),
            repositories: config.repositories.clone(),
            confirms_access: config.confirm_access && config.username.is_some(),
            segments: config.segments,
            segment_threshold: config.segment_threshold.bytes(),
        })
    }

    /// The configured name: the same whether the upstream is reached directly or through a
    /// peer, so content and tags are filed alike either way.
    pub fn name(&self) -> &str {
        &self.client.name
    }

    /// Who is asked, for logs: the name, or the name and the peer it is reached through.
    pub fn label(&self) -> &str {
        &self.client.label
    }

    /// Whether the peer this upstream is reached through answers its `/healthz` within
    /// `within`.
    pub async fn peer_is_healthy(&self, within: std::time::Duration) -> bool {
        self.client.healthy(within).await
    }

    /// Whether a blob cached through one repository needs the upstream's word before it is
    /// served through another: the upstream is private (wharf holds credentials for it) and
    /// `confirm_access` is on.
    pub fn confirms_access(&self) -> bool {
        self.confirms_access
    }

    /// Whether the configured allow-list lets clients pull `repo` from this upstream.
    pub fn allows(&self, repo: &RepoName) -> bool {
        self.repositories
            .as_ref()
            .map_or(true, |patterns| patterns.iter().any(|p| p.matches(repo)))
    }

    /// `GET` (or `HEAD`) a manifest by tag or digest, asking for the types `accept` names.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        accept: &Accept,
        verb: Verb,
    ) -> Result<ManifestResponse, UpstreamError> {
        let method = match verb {
            Verb::Get => Method::GET,
            Verb::Head => Method::HEAD,
        };
        let url = self
            .client
            .url(repo, &format!("manifests/{reference}"), &[]);
        let _slot = self.client.fetch_slot().await;
        let accept = accept.header_value();
        let response = self
            .client
            .send(Kind::Manifest, method, url, Some(&accept), None, repo)
            .await?;
        // Docker Hub counts manifest requests, and says what is left with each answer.
        quota::observe(&self.client.metrics, &self.client.name, response.headers());
        if !response.status().is_success() {
            return Err(self.client.refusal_error(response).await);
        }
        let headers = response.headers();
        let digest = header(headers, "docker-content-digest").and_then(|d| d.parse().ok());
        let media_type =
            header(headers, CONTENT_TYPE.as_str()).ok_or_else(|| UpstreamError::Invalid {
                upstream: self.client.label.clone(),
                reason: "manifest without Content-Type".into(),
            })?;
        if let Some(len) =
            header(headers, CONTENT_LENGTH.as_str()).and_then(|l| l.parse::<u64>().ok())
        {
            if len > MAX_MANIFEST_BYTES as u64 {
                return Err(UpstreamError::Invalid {
                    upstream: self.client.label.clone(),
                    reason: format!("manifest of {len} bytes exceeds the 4 MiB limit"),
                });
            }
        }
        let body = match verb {
            Verb::Head => Bytes::new(),
            Verb::Get => read_capped(&self.client.label, response, MAX_MANIFEST_BYTES).await?,
        };
        Ok(ManifestResponse {
            digest,
            media_type,
            body,
        })
    }

    /// Starts a download of `span` of a blob; the body is read with [`BlobStream::next_chunk`],
    /// which resumes it where it breaks.
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
    ) -> Result<BlobStream, UpstreamError> {
        BlobStream::open(self.client.clone(), repo, digest, span).await
    }

    /// [`Self::blob`] if a place under `max_fetches` is free now, never waiting for one:
    /// `None` if none is. For whoever already holds a place (a fill adding a segment) or must
    /// not hold one while waiting (a side fetch, which the fill can serve instead).
    pub async fn blob_if_free(
        &self,
        repo: &RepoName,
        digest: &Digest,
        span: Span,
    ) -> Option<Result<BlobStream, UpstreamError>> {
        BlobStream::open_if_free(self.client.clone(), repo, digest, span).await
    }

    /// The most GETs a blob of `total` bytes may be fetched with at once: `segments` from
    /// `segment_threshold` on, else one.
    pub fn segments_for(&self, total: u64) -> usize {
        if total < self.segment_threshold {
            1
        } else {
            self.segments.max(1)
        }
    }

    /// `HEAD` a blob: its length, if the upstream has it.
    pub async fn blob_length(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<u64>, UpstreamError> {
        let url = self.client.url(repo, &format!("blobs/{digest}"), &[]);
        let _slot = self.client.fetch_slot().await;
        let response = self
            .client
            .send(Kind::Blob, Method::HEAD, url, None, None, repo)
            .await?;
        if !response.status().is_success() {
            return Err(self.client.status_error(&response));
        }
        Ok(header(response.headers(), CONTENT_LENGTH.as_str()).and_then(|l| l.parse().ok()))
    }

    /// `GET` a listing (`tags/list`, `referrers/<digest>`).
    pub async fn listing(
        &self,
        repo: &RepoName,
        listing: &Listing,
    ) -> Result<ListingPage, UpstreamError> {
        let url = self.client.url(repo, &listing.path(), &listing.query());
        let _slot = self.client.fetch_slot().await;
        let response = self
            .client
            .send(
                Kind::Listing,
                Method::GET,
                url,
                Some("application/json, */*"),
                None,
                repo,
            )
            .await?;
        if !response.status().is_success() {
            return Err(self.client.status_error(&response));
        }
        let content_type = header(response.headers(), CONTENT_TYPE.as_str());
        let link = header(response.headers(), "link");
        let body = read_capped(&self.client.label, response, MAX_LISTING_BYTES).await?;
        Ok(ListingPage {
            content_type,
            link,
            body,
        })
    }
}

/// The configured upstreams, by name. Only these hosts are ever contacted.
pub struct Upstreams {
    by_name: HashMap<String, Arc<Upstream>>,
    default: Arc<Upstream>,
    /// Each upstream's `host[:port]` as its URL names it, and its name.
    hosts: Vec<(String, String)>,
}

impl Upstreams {
    pub fn new(configs: &[UpstreamConfig], metrics: &Metrics) -> Result<Upstreams, SetupError> {
        let mut by_name = HashMap::new();
        let mut default = None;
        let mut hosts = Vec::new();
        for config in configs {
            if let Some(host) = config.url.host_str() {
                let host = match config.url.port() {
                    Some(port) => format!("{host}:{port}"),
                    None => host.to_owned(),
                };
                hosts.push((host, config.name.clone()));
            }
            let upstream = Arc::new(Upstream::new(config, metrics.clone())?);
            default.get_or_insert_with(|| upstream.clone());
            by_name.insert(config.name.clone(), upstream);
        }
        let default = default.ok_or(SetupError::NoUpstream)?;
        Ok(Upstreams {
            by_name,
            default,
            hosts,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.by_name.get(name)
    }

    pub fn default_upstream(&self) -> &Arc<Upstream> {
        &self.default
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The upstream a registry that calls itself `host` (`host[:port]`) is: the one of that
    /// name, else the one whose URL names that host.
    pub fn for_host(&self, host: &str) -> Option<&Arc<Upstream>> {
        if let Some(upstream) = self.by_name.get(host) {
            return Some(upstream);
        }
        let (_, name) = self.hosts.iter().find(|(h, _)| h == host)?;
        self.by_name.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use url::Url;

    #[test]
    fn a_mirror_upstream_is_told_which_registry_is_meant() {
        let mut config = UpstreamConfig::docker_hub();
        config.url = Url::parse("http://regional:5000/").unwrap();
        let repo: RepoName = "library/alpine".parse().unwrap();
        let plain = Upstream::new(&config, Metrics::new()).unwrap();
        assert_eq!(
            plain.client.url(&repo, "tags/list", &[("n", "5")]).as_str(),
            "http://regional:5000/v2/library/alpine/tags/list?n=5"
        );
        config.pass_ns = true;
        let tiered = Upstream::new(&config, Metrics::new()).unwrap();
        assert_eq!(
            tiered.client.url(&repo, "manifests/3.20", &[]).as_str(),
            "http://regional:5000/v2/library/alpine/manifests/3.20?ns=docker.io"
        );
        assert_eq!(
            tiered
                .client
                .url(&repo, "tags/list", &[("n", "5")])
                .as_str(),
            "http://regional:5000/v2/library/alpine/tags/list?n=5&ns=docker.io"
        );
        let referrers = Listing::Referrers {
            digest: Digest::sha256_of(b"x"),
            artifact_type: Some("application/vnd.example+json".into()),
        };
        assert!(plain
            .client
            .url(&repo, &referrers.path(), &referrers.query())
            .as_str()
            .ends_with("?artifactType=application%2Fvnd.example%2Bjson"));
    }
}
