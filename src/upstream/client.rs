//! The HTTP side of one upstream: its pooled client, authentication (tokens, basic), the 429
//! backoff, the cap on requests in flight and on bandwidth, and the metrics of what was sent.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus::{IntCounter, IntCounterVec};
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, RANGE};
use reqwest::{Method, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::auth::{authorization_value, realm_hosts, Challenge, TokenCache, UpstreamCredentials};
use super::backoff::{self, Backoff};
use super::bandwidth::Bandwidth;
use super::connect::{Connect, Relay};
use super::error::{classify, SetupError, UpstreamError};
use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::RepoName;

/// What kind of request went upstream, for the metrics.
#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    Manifest,
    Blob,
    Token,
    Listing,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Blob => "blob",
            Kind::Token => "token",
            Kind::Listing => "listing",
        }
    }
}

/// How wharf talks to one upstream.
pub(super) struct Client {
    /// The upstream's configured name: what `?ns=` says to a node that mirrors several.
    pub(super) name: Arc<str>,
    /// Who is asked, in logs and errors: the name, or the name and the peer it is reached
    /// through.
    pub(super) label: Arc<str>,
    base: Url,
    /// Add `?ns=<name>`: the upstream is a mirror of several registries.
    pass_ns: bool,
    /// Headers sent with every request (a peer's credential).
    fixed_headers: HeaderMap,
    pub(super) http: reqwest::Client,
    pub(super) read_timeout: Duration,
    pub(super) credentials: Option<UpstreamCredentials>,
    pub(super) tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front instead of paying a
    /// 401 round trip each.
    pub(super) challenge: RwLock<Option<Challenge>>,
    /// Reached through a peer: its credential is fixed (no challenge is answered), and a
    /// refused connection is not tried again (the next peer, or the upstream, is).
    through_peer: bool,
    /// Set by a 429: until it passes, nothing is sent to this upstream.
    backoff: Backoff,
    /// Hosts that may issue this upstream's tokens (its own host included).
    pub(super) token_realm_hosts: Vec<String>,
    /// Requests in flight to this upstream, blob bodies until read to the end; `None`: no cap.
    fetch_slots: Option<Arc<Semaphore>>,
    /// `None`: no cap on the bytes per second taken from this upstream.
    bandwidth: Option<Arc<Bandwidth>>,
    /// How many times in a row a broken blob body is asked for again from where it broke.
    pub(super) resume_attempts: u32,
    /// How long a client-paced blob body keeps its place while its client reads nothing.
    pub(super) paused_client_timeout: Duration,
    pub(super) metrics: Metrics,
    /// Requests sent, by kind and status: `wharf_upstream_requests_total` of this upstream, or
    /// `wharf_peer_requests_total` of the peer it is reached through.
    requests: IntCounterVec,
    requests_series: Arc<str>,
    /// This upstream's (or peer's) series of received bytes, looked up once: it is counted for
    /// every chunk of every body.
    bytes_received: IntCounter,
}

impl Client {
    pub fn new(
        config: &UpstreamConfig,
        relay: Option<&Relay>,
        metrics: Metrics,
    ) -> Result<Client, SetupError> {
        let Some(relay) = relay else {
            let http = Connect {
                label: &config.name,
                ca_file: config.ca_file.as_deref(),
                insecure: config.insecure,
                connect_timeout: config.connect_timeout,
                read_timeout: config.read_timeout,
            }
            .client()?;
            return Ok(Client {
                name: config.name.as_str().into(),
                label: config.name.as_str().into(),
                base: config.url.clone(),
                pass_ns: config.pass_ns,
                fixed_headers: HeaderMap::new(),
                http,
                read_timeout: config.read_timeout,
                credentials: UpstreamCredentials::load(config)?,
                tokens: TokenCache::new(),
                challenge: RwLock::new(None),
                through_peer: false,
                backoff: Backoff::default(),
                token_realm_hosts: realm_hosts(config),
                bandwidth: config
                    .max_bandwidth
                    .map(|rate| Arc::new(Bandwidth::new(rate.bytes()))),
                resume_attempts: config.resume_attempts,
                paused_client_timeout: config.paused_client_timeout,
                requests: metrics.upstream_requests.clone(),
                requests_series: config.name.as_str().into(),
                bytes_received: metrics.upstream_bytes.with_label_values(&[&config.name]),
                fetch_slots: (config.max_fetches > 0)
                    .then(|| Arc::new(Semaphore::new(config.max_fetches))),
                metrics,
            });
        };
        let label = format!("{} via peer {}", config.name, relay.peer);
        let http = Connect {
            label: &label,
            ca_file: relay.ca_file.as_deref(),
            insecure: false,
            connect_timeout: relay.connect_timeout,
            read_timeout: config.read_timeout,
        }
        .client()?;
        let mut fixed_headers = HeaderMap::new();
        for (name, value) in &relay.headers {
            let value = authorization_value(value).map_err(|_| SetupError::Header {
                upstream: label.clone(),
                header: name,
            })?;
            fixed_headers.insert(*name, value);
        }
        Ok(Client {
            name: config.name.as_str().into(),
            label: label.into(),
            base: relay.url.clone(),
            pass_ns: true,
            fixed_headers,
            http,
            read_timeout: config.read_timeout,
            credentials: None,
            tokens: TokenCache::new(),
            challenge: RwLock::new(None),
            through_peer: true,
            backoff: Backoff::default(),
            token_realm_hosts: Vec::new(),
            bandwidth: None,
            // One more try at the same peer; then the next source carries on.
            resume_attempts: config.resume_attempts.min(1),
            paused_client_timeout: config.paused_client_timeout,
            requests: metrics.peers.requests.clone(),
            requests_series: relay.peer.as_str().into(),
            bytes_received: metrics.peers.bytes.with_label_values(&[&relay.peer]),
            fetch_slots: None,
            metrics,
        })
    }

    /// Whether the node at the base URL answers its `/healthz` within `within`: how a peer
    /// is probed. Not counted as a request to the upstream.
    pub(super) async fn healthy(&self, within: Duration) -> bool {
        let Ok(url) = self.base.join("healthz") else {
            return false;
        };
        let answer = self.http.get(url).timeout(within).send().await;
        answer.is_ok_and(|r| r.status().is_success())
    }

    /// A place under `max_fetches`, waited for if they are all taken. Token requests take
    /// none, so a request holding one can always authenticate.
    pub(super) async fn fetch_slot(&self) -> Option<OwnedSemaphorePermit> {
        let slots = self.fetch_slots.clone()?;
        Some(slots.acquire_owned().await.expect("never closed"))
    }

    /// A place under `max_fetches` if one is free now (`Some(None)`: there is no bound), never
    /// waited for: for a request made by someone who already holds a place.
    pub(super) fn free_slot(&self) -> Option<Option<OwnedSemaphorePermit>> {
        match self.fetch_slots.clone() {
            None => Some(None),
            Some(slots) => slots.try_acquire_owned().ok().map(Some),
        }
    }

    /// `<base>/v2/<repo>/<path>?<query>`, plus `ns=` for an upstream that mirrors several
    /// registries.
    pub(super) fn url(&self, repo: &RepoName, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}/v2/{repo}/{path}"));
        url.set_query(None);
        let ns = self.pass_ns.then_some(("ns", &*self.name));
        if !query.is_empty() || ns.is_some() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().copied().chain(ns));
        }
        url
    }

    pub(super) fn record(&self, kind: Kind, status: &str) {
        self.requests
            .with_label_values(&[&self.requests_series, kind.as_str(), status])
            .inc();
    }

    /// Refuses to send anything while the upstream's last 429 asks wharf to wait.
    pub(super) fn check_backoff(&self) -> Result<(), UpstreamError> {
        match self.backoff.remaining() {
            None => Ok(()),
            Some(wait) => {
                self.metrics
                    .upstream_throttled
                    .with_label_values(&[&self.label])
                    .inc();
                Err(UpstreamError::TooManyRequests {
                    upstream: self.label.clone(),
                    retry_after: Some(backoff::as_retry_after(wait)),
                })
            }
        }
    }

    /// Counts a response, and starts a backoff if it is a 429.
    pub(super) fn observe(&self, kind: Kind, response: &reqwest::Response) {
        self.record(kind, response.status().as_str());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = header(response.headers(), "retry-after");
            let wait = self.backoff.limited(retry_after.as_deref());
            tracing::warn!(upstream = %self.label, ?wait, "the upstream is rate limiting; holding off");
        }
    }

    pub(super) fn status_error(&self, response: &reqwest::Response) -> UpstreamError {
        let upstream = self.label.clone();
        match response.status() {
            StatusCode::NOT_FOUND => UpstreamError::NotFound,
            StatusCode::UNAUTHORIZED => UpstreamError::Unauthorized { upstream },
            StatusCode::FORBIDDEN => UpstreamError::Denied {
                upstream,
                reason: None,
            },
            StatusCode::TOO_MANY_REQUESTS => UpstreamError::TooManyRequests {
                upstream,
                // What is left of the wait `observe` started, as the client should honour it.
                retry_after: Some(backoff::as_retry_after(
                    self.backoff.remaining().unwrap_or_default(),
                )),
            },
            s => UpstreamError::Status {
                upstream,
                status: s.as_u16(),
            },
        }
    }

    /// [`Client::status_error`], with a refusal's OCI error message (from 4 KiB at most) kept.
    pub(super) async fn refusal_error(&self, response: reqwest::Response) -> UpstreamError {
        let mut error = self.status_error(&response);
        if let UpstreamError::Denied { reason, .. } = &mut error {
            if let Ok(body) = read_capped(&self.label, response, 4096).await {
                *reason = super::error::oci_error_message(&body);
            }
        }
        error
    }

    /// Sends a request with authentication, answering one challenge if the upstream sends one,
    /// and retrying once when the connection fails before any response.
    pub(super) async fn send(
        &self,
        kind: Kind,
        method: Method,
        url: Url,
        accept: Option<&str>,
        range: Option<&str>,
        repo: &RepoName,
    ) -> Result<reqwest::Response, UpstreamError> {
        let mut authorization = self.authorization(repo, None).await?;
        let mut answered_challenge = self.through_peer;
        let mut retried = self.through_peer;
        loop {
            self.check_backoff()?;
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(range) = range {
                request = request.header(RANGE, range);
            }
            if let Some(a) = &authorization {
                request = request.header(AUTHORIZATION, authorization_value(a)?);
            }
            request = request.headers(self.fixed_headers.clone());
            if !matches!(kind, Kind::Blob) {
                // Blobs may take long and are guarded by the read timeout; small answers get a
                // deadline for the whole exchange.
                request = request.timeout(self.read_timeout);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.record(kind, "error");
                    // One retry for a connection refused or reset at once (a restarting
                    // upstream, a pooled connection gone stale); a connect that timed out has
                    // used its time already.
                    if !retried && e.is_connect() && !e.is_timeout() {
                        retried = true;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    return Err(classify(&self.label, &e));
                }
            };
            self.observe(kind, &response);
            if response.status() == StatusCode::UNAUTHORIZED && !answered_challenge {
                answered_challenge = true;
                let challenge = response
                    .headers()
                    .get_all(reqwest::header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .find_map(Challenge::parse);
                if let Some(challenge) = challenge {
                    *self.challenge.write().expect("lock poisoned") = Some(challenge.clone());
                    authorization = self.authorization(repo, Some(challenge)).await?;
                    if authorization.is_some() {
                        continue;
                    }
                }
            }
            return Ok(response);
        }
    }

    /// Counts `len` body bytes received, and waits as long as the bandwidth cap asks: reading
    /// no faster than the cap lets TCP slow the upstream down.
    pub(super) async fn received(&self, len: usize) {
        self.bytes_received.inc_by(len as u64);
        if let Some(bandwidth) = &self.bandwidth {
            let wait = bandwidth.take(len as u64);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
    }

    pub(super) fn count_paused_release(&self) {
        self.metrics
            .upstream_paused_releases
            .with_label_values(&[&self.label])
            .inc();
    }

    pub(super) fn count_resume(&self, result: &str) {
        self.metrics
            .upstream_resumes
            .with_label_values(&[&self.label, result])
            .inc();
    }
}

pub(super) fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a whole body of at most `cap` bytes.
pub(super) async fn read_capped(
    upstream: &Arc<str>,
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Bytes, UpstreamError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(upstream, &e))? {
        if body.len() + chunk.len() > cap {
            return Err(UpstreamError::Invalid {
                upstream: upstream.clone(),
                reason: format!("response body exceeds {cap} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}
