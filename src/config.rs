//! The configuration tree read from `mirror.toml`: every key has a built-in default, unknown keys
//! are errors (a typo must not silently fall back to a default), and `validate` checks what serde
//! cannot. Knows nothing of the rest of wharf.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::oci::RepoPattern;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub cache: CacheConfig,
    /// The registries wharf may contact; the first is the default upstream.
    #[serde(rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
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
    /// Serve `/metrics` here (plain HTTP, with `/healthz` and `/readyz`) instead of on
    /// `listen`, so the pull port can be exposed while metrics stay internal.
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
    /// A blob of `segment_threshold` bytes or more is fetched as this many ranged GETs at once
    /// into the one fill (still hashed in order and verified before commit). 1: one GET.
    #[serde(default = "defaults::segments")]
    pub segments: usize,
    #[serde(default = "defaults::segment_threshold")]
    pub segment_threshold: Size,
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
            .finish_non_exhaustive()
    }
}

/// The most ranged GETs one blob is fetched with at once.
pub const MAX_SEGMENTS: usize = 16;
/// Blobs smaller than this are never split: a request costs more than it saves.
const MIN_SEGMENTED: u64 = 1024 * 1024;

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
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            cache: CacheConfig::default(),
            upstreams: vec![UpstreamConfig::docker_hub()],
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
        }
    }
}

/// A byte count written the way people write it: `"20GiB"`, `"500 MB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(s.trim())
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?}: {e}"))
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Exact, so that printing and re-reading a config never changes it.
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        let text = units
            .iter()
            .find(|(_, n)| self.0 >= *n && self.0 % n == 0)
            .map_or_else(|| self.0.to_string(), |(u, n)| format!("{}{u}", self.0 / n));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a config file; without a path, the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            other => other,
        })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("config"),
            source: Box::new(e),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.upstreams.is_empty() {
            return invalid("at least one [[upstream]] is required".into());
        }
        for (i, u) in self.upstreams.iter().enumerate() {
            if self.upstreams[..i].iter().any(|o| o.name == u.name) {
                return invalid(format!("upstream name {:?} is listed twice", u.name));
            }
            u.validate(i)?;
        }
        self.server.validate()?;
        if self.cache.max_size.bytes() == 0 {
            return invalid("cache.max_size must be greater than zero".into());
        }
        if self.cache.side_fetch_max.bytes() == 0 {
            return invalid(
                "cache.side_fetch_max must be greater than zero; set side_fetches_per_blob = 0 \
                 for no side fetches"
                    .into(),
            );
        }
        if self.cache.max_idle.is_zero() {
            return invalid("cache.max_idle must be greater than zero".into());
        }
        if !(1..=MAX_RANGE_PARTS_LIMIT).contains(&self.cache.max_range_parts) {
            return invalid(format!(
                "cache.max_range_parts must be from 1 to {MAX_RANGE_PARTS_LIMIT}, not {}",
                self.cache.max_range_parts
            ));
        }
        Ok(())
    }

    /// What is allowed but unwise, for the operator to hear at start-up and from
    /// `check-config`: secrets in files that other users can read.
    pub fn warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let secrets = self
            .upstreams
            .iter()
            .filter_map(|u| {
                u.password_file
                    .as_deref()
                    .map(|f| (format!("upstream {:?} password_file", u.name), f))
            })
            .chain(
                self.server
                    .tls
                    .iter()
                    .map(|t| ("server.tls.key".to_owned(), t.key.as_path())),
            )
            .chain(self.server.auth.iter().flat_map(|a| {
                let htpasswd = a.htpasswd.as_deref().map(|f| ("server.auth.htpasswd", f));
                let tokens = a.tokens.as_deref().map(|f| ("server.auth.tokens", f));
                htpasswd
                    .into_iter()
                    .chain(tokens)
                    .map(|(what, f)| (what.to_owned(), f))
            }));
        secrets
            .filter_map(|(what, path)| {
                let mode = std::fs::metadata(path).ok()?.permissions().mode();
                (mode & 0o077 != 0).then(|| {
                    format!(
                        "{what} {} can be read by other users (mode {:o}); chmod 600 it",
                        path.display(),
                        mode & 0o777
                    )
                })
            })
            .collect()
    }

    /// The effective configuration as TOML, for `check-config`. Holds no secrets: passwords
    /// live only in their files.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("config always serialises")
    }
}

impl UpstreamConfig {
    /// Checks the `i`-th `[[upstream]]` on its own.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let u = self;
        let valid_name = !u.name.is_empty()
            && !u.name.starts_with('.')
            && u.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !valid_name {
            return invalid(format!(
                "upstream[{i}].name {:?} must be a registry host such as \"docker.io\" or \"host:port\"",
                u.name
            ));
        }
        if !matches!(u.url.scheme(), "http" | "https") || u.url.host().is_none() {
            return invalid(format!(
                "upstream[{i}].url {} must be an http(s) URL with a host",
                u.url
            ));
        }
        if u.username.is_some() != u.password_file.is_some() {
            return invalid(format!(
                "upstream[{i}]: username and password_file must be set together"
            ));
        }
        if u.repositories.as_ref().is_some_and(Vec::is_empty) {
            return invalid(format!(
                "upstream[{i}].repositories is empty, which would refuse everything; \
                 leave it out to allow every repository"
            ));
        }
        if u.max_bandwidth.is_some_and(|b| b.bytes() == 0) {
            return invalid(format!(
                "upstream[{i}].max_bandwidth must be more than 0; leave it out for no cap"
            ));
        }
        if u.connect_timeout.is_zero() || u.read_timeout.is_zero() {
            return invalid(format!("upstream[{i}]: timeouts must be greater than zero"));
        }
        if !(1..=MAX_SEGMENTS).contains(&u.segments) {
            return invalid(format!(
                "upstream[{i}].segments must be 1 (one GET per blob) to {MAX_SEGMENTS}"
            ));
        }
        if u.segment_threshold.bytes() < MIN_SEGMENTED {
            return invalid(format!(
                "upstream[{i}].segment_threshold must be at least 1MiB"
            ));
        }
        Ok(())
    }
}

impl ServerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.allow_from.as_ref().is_some_and(Vec::is_empty) {
            return invalid(
                "server.allow_from is empty, which would refuse every client; \
                 leave it out to allow every address"
                    .into(),
            );
        }
        if self
            .auth
            .as_ref()
            .is_some_and(|a| a.htpasswd.is_none() && a.tokens.is_none())
        {
            return invalid(
                "server.auth needs htpasswd, tokens or both; leave it out to serve every client"
                    .into(),
            );
        }
        if self.metrics_listen == Some(self.listen) {
            return invalid("server.metrics_listen must differ from server.listen".into());
        }
        let rate = &self.rate_limit;
        if !(rate.requests_per_second >= 0.0 && rate.requests_per_second.is_finite()) {
            return invalid("server.rate_limit.requests_per_second must be 0 or more".into());
        }
        let limits = &self.limits;
        if limits.max_connections == 0 || limits.max_streams == 0 {
            return invalid(
                "server.limits: max_connections and max_streams must be at least 1".into(),
            );
        }
        if limits.header_timeout.is_zero() || limits.idle_timeout.is_zero() {
            return invalid("server.limits: timeouts must be greater than zero".into());
        }
        // hyper's HTTP/1 parser needs room for a request line and a few headers.
        if limits.max_header_bytes.bytes() < 4096 {
            return invalid("server.limits.max_header_bytes must be at least 4KiB".into());
        }
        Ok(())
    }
}

fn invalid(message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_mirror_toml_parses_to_the_defaults() {
        let text = include_str!("../mirror.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn human_sizes_and_durations() {
        let c = Config::parse(
            "[cache]\nmax_size = \"1.5 GiB\"\ntag_ttl = \"90s\"\n[server]\nshutdown_grace = \"2m\"",
        )
        .unwrap();
        assert_eq!(c.cache.max_size.bytes(), 1024 * 1024 * 1024 * 3 / 2);
        assert_eq!(c.cache.tag_ttl, Duration::from_secs(90));
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(120));
        let c = Config::parse("[cache]\nmax_size = 1000").unwrap();
        assert_eq!(c.cache.max_size.bytes(), 1000);
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("[cache]\ndir = \"x\"\nmax_sise = \"1GiB\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_sise"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Config::parse("[cache]\nmax_size = \"lots\"").is_err());
        assert!(Config::parse("[cache]\ntag_ttl = \"soon\"").is_err());
        for parts in [0, MAX_RANGE_PARTS_LIMIT + 1] {
            let err = Config::parse(&format!("[cache]\nmax_range_parts = {parts}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("cache.max_range_parts"), "{err}");
        }
        let c = Config::parse("[cache]\nmax_range_parts = 1").unwrap();
        assert_eq!(c.cache.max_range_parts, 1);
        assert!(Config::parse("[[upstream]]\nname = \"a\"\nurl = \"ftp://x\"").is_err());
        assert!(Config::parse("[[upstream]]\nname = \"a/b\"\nurl = \"http://x\"").is_err());
        let twice = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\n\
                     [[upstream]]\nname = \"a\"\nurl = \"http://y\"";
        assert!(Config::parse(twice).is_err());
        let half_credentials = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nusername = \"u\"";
        assert!(Config::parse(half_credentials).is_err());
    }

    #[test]
    fn upstream_list_replaces_the_default() {
        let c = Config::parse(
            "[[upstream]]\nname = \"ghcr.io\"\nurl = \"https://ghcr.io\"\n\
             [[upstream]]\nname = \"127.0.0.1:5001\"\nurl = \"http://127.0.0.1:5001\"",
        )
        .unwrap();
        let names: Vec<_> = c.upstreams.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["ghcr.io", "127.0.0.1:5001"]);
        assert_eq!(c.upstreams[0].connect_timeout, Duration::from_secs(5));
    }

    #[test]
    fn tls_and_upstream_trust_settings() {
        let c = Config::parse(
            "[server.tls]\ncert = \"/etc/wharf/tls.crt\"\nkey = \"/etc/wharf/tls.key\"\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"https://regional:5000\"\n\
             ca_file = \"/etc/wharf/regional-ca.pem\"\npass_ns = true",
        )
        .unwrap();
        let tls = c.server.tls.as_ref().unwrap();
        assert_eq!(tls.cert, PathBuf::from("/etc/wharf/tls.crt"));
        assert!(c.upstreams[0].pass_ns && !c.upstreams[0].insecure);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        assert!(
            Config::parse("[server.tls]\ncert = \"/x\"").is_err(),
            "a key is required"
        );
    }

    #[test]
    fn repository_allow_lists() {
        let c = Config::parse(
            "[[upstream]]\nname = \"docker.io\"\nurl = \"https://r\"\n\
             repositories = [\"library/*\", \"myorg/app\"]",
        )
        .unwrap();
        let patterns = c.upstreams[0].repositories.as_ref().unwrap();
        assert_eq!(patterns.len(), 2);
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        let bad = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nrepositories = [\"Lib/*\"]";
        assert!(Config::parse(bad)
            .unwrap_err()
            .to_string()
            .contains("Lib/*"));
        let empty = "[[upstream]]\nname = \"a\"\nurl = \"http://x\"\nrepositories = []";
        assert!(Config::parse(empty).is_err());
    }

    #[test]
    fn client_authentication_files() {
        let c = Config::parse("[server.auth]\ntokens = \"/etc/wharf/tokens\"").unwrap();
        let auth = c.server.auth.as_ref().unwrap();
        assert_eq!(auth.tokens.as_deref(), Some(Path::new("/etc/wharf/tokens")));
        assert!(auth.htpasswd.is_none());
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
        assert!(Config::parse("[server.auth]\npasswords = \"/x\"").is_err());
    }

    #[test]
    fn effective_config_round_trips() {
        let c = Config::default();
        assert_eq!(Config::parse(&c.to_toml()).unwrap(), c);
    }
}
