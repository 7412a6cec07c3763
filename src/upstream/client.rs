//! The HTTP side of one upstream: its pooled client, authentication (tokens, basic), the 429
//! backoff, the cap on requests in flight and on bandwidth, and the metrics of what was sent.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use prometheus::IntCounter;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE};
use reqwest::{Method, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use url::Url;

use super::auth::{Challenge, TokenCache, TokenResponse};
use super::backoff::{self, Backoff};
use super::bandwidth::Bandwidth;
use super::error::{classify, CaBundleError, SetupError, UpstreamError};
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

/// The user name and password wharf presents to a private upstream.
struct UpstreamCredentials {
    username: String,
    password: String,
}

impl UpstreamCredentials {
    fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// An `Authorization` value, marked sensitive so that no `Debug` output or HTTP/2 header
/// table ever carries it.
fn authorization_value(value: &str) -> Result<HeaderValue, UpstreamError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| UpstreamError::Invalid {
        upstream: "credentials".into(),
        reason: "a credential holds characters not allowed in a header".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// How wharf talks to one upstream.
pub(super) struct Client {
    pub(super) name: Arc<str>,
    base: Url,
    /// Add `?ns=<name>`: the upstream is a mirror of several registries.
    pass_ns: bool,
    http: reqwest::Client,
    read_timeout: Duration,
    credentials: Option<UpstreamCredentials>,
    tokens: TokenCache,
    /// The last challenge seen, so later requests authenticate up front instead of paying a
    /// 401 round trip each.
    challenge: RwLock<Option<Challenge>>,
    /// Set by a 429: until it passes, nothing is sent to this upstream.
    backoff: Backoff,
    /// Hosts that may issue this upstream's tokens (its own host included).
    token_realm_hosts: Vec<String>,
    /// Requests in flight to this upstream, blob bodies until read to the end; `None`: no cap.
    fetch_slots: Option<Arc<Semaphore>>,
    /// `None`: no cap on the bytes per second taken from this upstream.
    bandwidth: Option<Arc<Bandwidth>>,
    /// How many times in a row a broken blob body is asked for again from where it broke.
    pub(super) resume_attempts: u32,
    /// How long a client-paced blob body keeps its place while its client reads nothing.
    pub(super) paused_client_timeout: Duration,
    pub(super) metrics: Metrics,
    /// This upstream's series of `wharf_upstream_bytes_total`, looked up once: it is counted
    /// for every chunk of every body.
    bytes_received: IntCounter,
}

impl Client {
    pub fn new(config: &UpstreamConfig, metrics: Metrics) -> Result<Client, SetupError> {
        let upstream = || config.name.clone();
        let credentials = match (&config.username, &config.password_file) {
            (Some(username), Some(file)) => {
                let password =
                    std::fs::read_to_string(file).map_err(|source| SetupError::PasswordFile {
                        upstream: upstream(),
                        file: file.clone(),
                        source,
                    })?;
                Some(UpstreamCredentials {
                    username: username.clone(),
                    password: password.trim_end_matches(['\r', '\n']).to_owned(),
                })
            }
            _ => None,
        };
        let mut http = reqwest::Client::builder();
        if let Some(file) = &config.ca_file {
            let certificates = ca_bundle(file).map_err(|source| SetupError::CaFile {
                upstream: upstream(),
                source,
            })?;
            for certificate in certificates {
                http = http.add_root_certificate(certificate);
            }
        }
        if config.insecure {
            tracing::warn!(upstream = %config.name, "insecure = true: the upstream's certificate is not checked");
            http = http.danger_accept_invalid_certs(true);
        }
        let http = http
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .redirect(redirect_policy())
            .build()
            .map_err(|source| SetupError::HttpClient {
                upstream: upstream(),
                source,
            })?;
        Ok(Client {
            name: config.name.as_str().into(),
            base: config.url.clone(),
            pass_ns: config.pass_ns,
            http,
            read_timeout: config.read_timeout,
            credentials,
            tokens: TokenCache::new(),
            challenge: RwLock::new(None),
            backoff: Backoff::default(),
            token_realm_hosts: realm_hosts(config),
            bandwidth: config
                .max_bandwidth
                .map(|rate| Arc::new(Bandwidth::new(rate.bytes()))),
            resume_attempts: config.resume_attempts,
            paused_client_timeout: config.paused_client_timeout,
            bytes_received: metrics.upstream_bytes.with_label_values(&[&config.name]),
            fetch_slots: (config.max_fetches > 0)
                .then(|| Arc::new(Semaphore::new(config.max_fetches))),
            metrics,
        })
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
        self.metrics
            .upstream_requests
            .with_label_values(&[&self.name, kind.as_str(), status])
            .inc();
    }

    /// Refuses to send anything while the upstream's last 429 asks wharf to wait.
    pub(super) fn check_backoff(&self) -> Result<(), UpstreamError> {
        match self.backoff.remaining() {
            None => Ok(()),
            Some(wait) => {
                self.metrics
                    .upstream_throttled
                    .with_label_values(&[&self.name])
                    .inc();
                Err(UpstreamError::TooManyRequests {
                    upstream: self.name.clone(),
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
            tracing::warn!(upstream = %self.name, ?wait, "the upstream is rate limiting; holding off");
        }
    }

    pub(super) fn status_error(&self, response: &reqwest::Response) -> UpstreamError {
        let upstream = self.name.clone();
        match response.status() {
            StatusCode::NOT_FOUND => UpstreamError::NotFound,
            StatusCode::UNAUTHORIZED => UpstreamError::Unauthorized { upstream },
            StatusCode::FORBIDDEN => UpstreamError::Denied { upstream },
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

    /// The `Authorization` value for a pull of `repo`, following `challenge` if given, else the
    /// last challenge this upstream sent.
    async fn authorization(
        &self,
        repo: &RepoName,
        challenge: Option<Challenge>,
    ) -> Result<Option<String>, UpstreamError> {
        let challenge = match challenge {
            Some(c) => c,
            None => match self.challenge.read().expect("lock poisoned").clone() {
                Some(c) => c,
                None => return Ok(None),
            },
        };
        match challenge {
            Challenge::Basic => Ok(self
                .credentials
                .as_ref()
                .map(UpstreamCredentials::basic_header)),
            Challenge::Bearer { realm, service, .. } => {
                let scope = format!("repository:{repo}:pull");
                let key = format!("{realm}\n{}\n{scope}", service.as_deref().unwrap_or(""));
                let token = self
                    .tokens
                    .get_or_fetch(key, self.fetch_token(&realm, service.as_deref(), &scope))
                    .await
                    .map_err(|e| (*e).clone())?;
                Ok(Some(format!("Bearer {}", token.value)))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<super::auth::Token, UpstreamError> {
        let invalid = |reason: String| UpstreamError::Invalid {
            upstream: self.name.clone(),
            reason,
        };
        let mut url = Url::parse(realm).map_err(|e| invalid(format!("token realm: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(format!("token realm {realm:?} is not http(s)")));
        }
        // The credentials go to the realm: only a host the operator trusts may name one.
        let host = url.host_str().unwrap_or_default();
        if !self
            .token_realm_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
        {
            return Err(invalid(format!(
                "token realm host {host:?} is not this upstream's; allow it in token_realm_hosts"
            )));
        }
        {
            let mut query = url.query_pairs_mut();
            if let Some(s) = service {
                query.append_pair("service", s);
            }
            query.append_pair("scope", scope);
        }
        self.check_backoff()?;
        let mut request = self.http.get(url).timeout(self.read_timeout);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, authorization_value(&c.basic_header())?);
        }
        let response = request.send().await.map_err(|e| {
            self.record(Kind::Token, "error");
            classify(&self.name, &e)
        })?;
        self.observe(Kind::Token, &response);
        if !response.status().is_success() {
            return Err(match self.status_error(&response) {
                UpstreamError::NotFound => UpstreamError::Unauthorized {
                    upstream: self.name.clone(),
                },
                other => other,
            });
        }
        let body = read_capped(&self.name, response, 64 * 1024).await?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| invalid(format!("token response: {e}")))?;
        parsed
            .into_token()
            .ok_or_else(|| invalid("token response holds no token".into()))
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
        let mut answered_challenge = false;
        let mut retried = false;
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
                    return Err(classify(&self.name, &e));
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
            .with_label_values(&[&self.name])
            .inc();
    }

    pub(super) fn count_resume(&self, result: &str) {
        self.metrics
            .upstream_resumes
            .with_label_values(&[&self.name, result])
            .inc();
    }
}

/// The certificates of a PEM bundle of CAs to trust besides the system's; a file that holds
/// none is an error, not a silent fall-back to the system's roots.
pub fn ca_bundle(file: &std::path::Path) -> Result<Vec<reqwest::Certificate>, CaBundleError> {
    let file_name = || file.to_owned();
    let pem = std::fs::read(file).map_err(|source| CaBundleError::Read {
        file: file_name(),
        source,
    })?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| CaBundleError::Parse {
            file: file_name(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(CaBundleError::Empty { file: file_name() });
    }
    Ok(certificates)
}

/// Redirects sent by an upstream (a registry handing blobs to a CDN or object store) are
/// followed a few times, to http(s) only and never from https down to http. reqwest drops
/// `Authorization` when a redirect leaves the host.
fn redirect_policy() -> reqwest::redirect::Policy {
    const MAX_REDIRECTS: usize = 5;
    reqwest::redirect::Policy::custom(|attempt| {
        let from_https = attempt
            .previous()
            .last()
            .is_some_and(|url| url.scheme() == "https");
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else {
            match attempt.url().scheme() {
                "https" => attempt.follow(),
                "http" if !from_https => attempt.follow(),
                "http" => attempt.error("redirect from https to http"),
                _ => attempt.error("redirect to a scheme other than http(s)"),
            }
        }
    })
}

/// The hosts allowed to issue `config`'s tokens: its own, Docker Hub's token service for
/// Docker Hub, and those configured.
fn realm_hosts(config: &UpstreamConfig) -> Vec<String> {
    let own = config.url.host_str().unwrap_or_default().to_owned();
    let docker_hub = own.eq_ignore_ascii_case("registry-1.docker.io");
    std::iter::once(own)
        .chain(docker_hub.then(|| "auth.docker.io".to_owned()))
        .chain(config.token_realm_hosts.iter().cloned())
        .collect()
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
