//! The tree of settings, each with its built-in default.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::oci::RepoPattern;

use super::cluster::ClusterConfig;
use super::size::Size;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    /// The registries wharf may contact; the first is the default upstream.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The other wharf nodes of this datacenter; absent: this node is the whole mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// Repositories served only when signed by trusted keys, first matching rule first.
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<super::PolicyConfig>,
    /// The admin API and webhooks; absent: neither is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<super::AdminConfig>,
    /// Keep-warm rules: tags fetched before anyone asks.
    #[serde(default, rename = "sync", skip_serializing_if = "Vec::is_empty")]
    pub sync: Vec<super::SyncConfig>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long in-flight responses may run on after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Serve HTTPS with this certificate instead of plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Serve `/metrics` and the admin API here (with `/healthz` and `/readyz`; HTTPS when `tls`
    /// is set) instead of on `listen`, so the pull port can be exposed while they stay internal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
    /// Only clients from these networks may use the pull API and `/metrics` on `listen`
    /// (health checks answer everyone); absent: every client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_from: Option<Vec<ipnet::IpNet>>,
    /// Clients must authenticate to use the pull API and `/metrics` on `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    pub limits: Limits,
    pub rate_limit: RateLimit,
}

/// Who may pull: the files that hold the clients' credentials. Both are read at start-up and
/// again when they change or on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:hash` lines with bcrypt hashes (`htpasswd -B`), for HTTP Basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub htpasswd: Option<PathBuf>,
    /// Bearer tokens, one per line as `sha256:<hex of the token's SHA-256>`, then optionally a
    /// label for the access log. A token may also be sent as a Basic password, with a user
    /// name that is not in `htpasswd`. Unsalted: tokens must be long and random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    /// Which repositories each client may pull; none: every client may pull everything.
    #[serde(default, rename = "grant", skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<super::GrantConfig>,
}

/// Requests each client address may make to the pull API: a token bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second per client address; 0: no limit.
    pub requests_per_second: f64,
    /// Requests a client may make at once before the rate applies.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            requests_per_second: 0.0,
            burst: 100,
        }
    }
}

/// What one client, or all of them together, may hold of the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Client connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Longest a client may take to send a complete request head, counted from when wharf
    /// starts waiting for it (so also how long an HTTP/1 connection may sit idle between
    /// requests).
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection on which no byte moved either way for this long is closed (gracefully:
    /// HTTP/2 gets a GOAWAY).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The largest request head (HTTP/1) or header list (HTTP/2).
    pub max_header_bytes: Size,
    /// Requests in flight at once on one HTTP/2 connection.
    pub max_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_header_bytes: Size(64 * 1024),
            max_streams: 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub dir: PathBuf,
    pub max_size: Size,
    /// Entries unused for this long are evicted even when there is room.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// How long a tag → digest answer is trusted before it is revalidated upstream.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// Serve a cached tag when its revalidation fails because the upstream is down or limiting.
    pub serve_stale: bool,
    /// How long `tags/list` and `referrers` answers are reused.
    #[serde(with = "humantime_serde")]
    pub listing_ttl: Duration,
    /// The most parts a `206 multipart/byteranges` blob answer may have, after overlapping and
    /// adjacent ranges are merged; a request for more gets the whole blob (200).
    pub max_range_parts: usize,
    /// A range of a blob being filled that the fill reaches within this time, at its rate so
    /// far, is served from the fill; one further ahead is fetched from the upstream on its own.
    #[serde(with = "humantime_serde")]
    pub range_lookahead: Duration,
    /// The longest range fetched on its own; longer ones are served from the fill.
    pub side_fetch_max: Size,
    /// Side fetches of one blob in flight at once; more ranges wait for the fill. 0: never.
    pub side_fetches_per_blob: usize,
    /// An S3-compatible bucket below the local disk, shared by the nodes of a datacenter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<super::SharedConfig>,
}

/// The highest `cache.max_range_parts` may be: each part costs a reader and a few hundred
/// bytes of framing, and lazy pullers merge their reads into far fewer.
pub const MAX_RANGE_PARTS_LIMIT: usize = 1024;

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Matched against `?ns=` and a leading `/v2/<name>/` path segment.
    pub name: String,
    pub url: Url,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the password (or token) for `username`; read at start-up, never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response before it counts as stalled.
    #[serde(default = "defaults::read_timeout", with = "humantime_serde")]
    pub read_timeout: Duration,
    /// PEM bundle of extra CAs to trust for this upstream, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate from this upstream. Only for tests and emergencies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// The upstream is another mirror serving several registries (a regional wharf): every
    /// request to it carries `?ns=<name>`, so it knows which registry is meant.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pass_ns: bool,
    /// Only repositories matching one of these patterns are served from this upstream; the
    /// rest are refused without contacting it. Absent: every repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repositories: Option<Vec<RepoPattern>>,
    /// Hosts besides the upstream's own that may issue its bearer tokens. wharf sends its
    /// credentials to the realm a `WWW-Authenticate` challenge names, so any other realm is
    /// refused. Docker Hub's `auth.docker.io` is allowed for `registry-1.docker.io`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_realm_hosts: Vec<String>,
    /// Requests in flight to this upstream at once (a blob until its body is read); more wait
    /// for a place. 0: no cap.
    #[serde(default = "defaults::max_fetches")]
    pub max_fetches: usize,
    /// With credentials: a blob or manifest cached through one repository is served through
    /// another only after the upstream confirms (a `HEAD`, remembered a while) that this one
    /// may read it, so a digest cannot unlock another repository's private content. Off for
    /// registries whose content is all public to every client of this mirror.
    #[serde(default = "defaults::yes")]
    pub confirm_access: bool,
    /// Bytes per second taken from this upstream, all requests together; absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bandwidth: Option<Size>,
    /// How many times in a row a blob body that breaks (a reset, a cut, `read_timeout`) is
    /// asked for again from where it broke, with a growing wait; a resume that brings 1 MiB or
    /// more resets the count. 0: a broken body fails the fill.
    #[serde(default = "defaults::resume_attempts")]
    pub resume_attempts: u32,
    /// A blob of `segment_threshold` bytes or more whose GET is slow gets up to this many
    /// ranged GETs at once into the one fill (still hashed in order and verified before
    /// commit), each taking a place under `max_fetches` only if one is free. 1: one GET.
    #[serde(default = "defaults::segments")]
    pub segments: usize,
    #[serde(default = "defaults::segment_threshold")]
    pub segment_threshold: Size,
    /// A side fetch or pass-through answer whose client reads nothing for this long gives its
    /// place under `max_fetches` back (its request is closed); when the client reads on, the
    /// rest comes from the fill or is asked for again.
    #[serde(default = "defaults::paused_client_timeout", with = "humantime_serde")]
    pub paused_client_timeout: Duration,
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("insecure", &self.insecure)
            .field("pass_ns", &self.pass_ns)
            .field("repositories", &self.repositories)
            .field("token_realm_hosts", &self.token_realm_hosts)
            .field("max_fetches", &self.max_fetches)
            .field("confirm_access", &self.confirm_access)
            .field("max_bandwidth", &self.max_bandwidth)
            .field("resume_attempts", &self.resume_attempts)
            .field("segments", &self.segments)
            .field("segment_threshold", &self.segment_threshold)
            .field("paused_client_timeout", &self.paused_client_timeout)
            .finish_non_exhaustive()
    }
}

/// The most ranged GETs one blob is fetched with at once.
pub const MAX_SEGMENTS: usize = 16;
/// Blobs smaller than this are never split: a request costs more than it saves.
pub(super) const MIN_SEGMENTED: u64 = 1024 * 1024;

mod defaults {
    use std::time::Duration;

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn read_timeout() -> Duration {
        Duration::from_secs(30)
    }

    pub fn max_fetches() -> usize {
        128
    }

    pub fn resume_attempts() -> u32 {
        5
    }

    pub fn segments() -> usize {
        4
    }

    pub fn segment_threshold() -> super::Size {
        super::Size(64 * 1024 * 1024)
    }

    pub fn paused_client_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn yes() -> bool {
        true
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5000)),
            shutdown_grace: Duration::from_secs(30),
            tls: None,
            metrics_listen: None,
            allow_from: None,
            auth: None,
            limits: Limits::default(),
            rate_limit: RateLimit::default(),
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: PathBuf::from("wharf-cache"),
            max_size: Size(20 * 1024 * 1024 * 1024),
            max_idle: Duration::from_secs(14 * 24 * 60 * 60),
            tag_ttl: Duration::from_secs(5 * 60),
            serve_stale: true,
            listing_ttl: Duration::from_secs(30),
            max_range_parts: 128,
            range_lookahead: Duration::from_millis(100),
            side_fetch_max: Size(16 * 1024 * 1024),
            side_fetches_per_blob: 8,
            shared: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            cache: CacheConfig::default(),
            upstreams: vec![UpstreamConfig::docker_hub()],
            cluster: None,
            policies: Vec::new(),
            sync: Vec::new(),
            admin: None,
        }
    }
}

impl UpstreamConfig {
    pub fn docker_hub() -> Self {
        UpstreamConfig {
            name: "docker.io".into(),
            url: Url::parse("https://registry-1.docker.io").expect("static URL"),
            username: None,
            password_file: None,
            connect_timeout: defaults::connect_timeout(),
            read_timeout: defaults::read_timeout(),
            ca_file: None,
            insecure: false,
            pass_ns: false,
            repositories: None,
            token_realm_hosts: Vec::new(),
            max_fetches: defaults::max_fetches(),
            confirm_access: true,
            max_bandwidth: None,
            resume_attempts: defaults::resume_attempts(),
            segments: defaults::segments(),
            segment_threshold: defaults::segment_threshold(),
            paused_client_timeout: defaults::paused_client_timeout(),
        }
    }
}
