//! Reading `mirror.toml`, and the checks serde cannot make.

use std::path::{Path, PathBuf};

use url::Url;

use super::cluster::ClusterConfig;
use super::tree::*;

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
        let names: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
        let grants = self.server.auth.iter().flat_map(|a| a.grants.iter());
        for (i, grant) in grants.enumerate() {
            if let Some(problem) = grant.problem(&names) {
                return invalid(format!("server.auth.grant[{i}] {problem}"));
            }
        }
        for (i, rule) in self.sync.iter().enumerate() {
            if let Some(problem) = rule.problem(&names) {
                return invalid(format!("sync[{i}] {problem}"));
            }
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for (i, rule) in self.policies.iter().enumerate() {
            let named = |what: &str| invalid(format!("policy[{i}] ({:?}): {what}", rule.name));
            if rule.name.is_empty() {
                return invalid(format!("policy[{i}]: a name is required"));
            }
            if self.policies[..i].iter().any(|r| r.name == rule.name) {
                return named("the name is listed twice");
            }
            if let Some(upstream) = &rule.upstream {
                if !self.upstreams.iter().any(|u| &u.name == upstream) {
                    return named(&format!(
                        "upstream {upstream:?} is not a configured upstream"
                    ));
                }
            }
            if rule.repositories.is_empty() {
                return named("repositories is empty: the rule would cover nothing");
            }
            if rule.keys.is_empty() {
                return named("keys is empty: nothing could ever verify");
            }
        }
        if let Some(shared) = &self.cache.shared {
            if !is_http_with_host(&shared.endpoint) {
                return invalid(
                    "cache.shared.endpoint must be http:// or https:// with a host".into(),
                );
            }
            if shared.bucket.is_empty() {
                return invalid("cache.shared.bucket must not be empty".into());
            }
            if shared.max_size.is_some_and(|s| s.bytes() == 0) {
                return invalid("cache.shared.max_size must be greater than zero".into());
            }
            if shared.max_idle.is_zero() {
                return invalid("cache.shared.max_idle must be greater than zero".into());
            }
        }
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
            .chain(self.cluster.iter().map(|c| {
                (
                    "cluster.peer_token_file".to_owned(),
                    c.peer_token_file.as_path(),
                )
            }))
            .chain(self.cache.shared.iter().map(|s| {
                (
                    "cache.shared.secret_key_file".to_owned(),
                    s.secret_key_file.as_path(),
                )
            }))
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
        if !is_http_with_host(&u.url) {
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
        if u.connect_timeout.is_zero()
            || u.read_timeout.is_zero()
            || u.paused_client_timeout.is_zero()
        {
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

/// The longest node name.
const MAX_NAME: usize = 63;

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.peers.is_empty() {
            return invalid("cluster: at least one [[cluster.peer]] is required".into());
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let named =
                |what: &str| invalid(format!("cluster.peer[{i}] ({:?}): {what}", peer.name));
            if !is_node_name(&peer.name) {
                return named(&format!(
                    "a name is 1 to {MAX_NAME} of a-z, 0-9, '.', '_' and '-'"
                ));
            }
            if self.peers[..i].iter().any(|p| p.name == peer.name) {
                return named("the name is listed twice");
            }
            if self.peers[..i].iter().any(|p| same_base(&p.url, &peer.url)) {
                return named("the url is listed twice");
            }
            let url = &peer.url;
            if !is_http_with_host(url) {
                return named("the url must be http:// or https:// with a host");
            }
            if !url.username().is_empty() || url.password().is_some() {
                return named("the url must not hold credentials");
            }
            if url.query().is_some() || url.fragment().is_some() || url.path() != "/" {
                return named("the url must be the node's base URL, without a path");
            }
        }
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return invalid(
                "cluster.probe_interval and probe_timeout must be greater than zero".into(),
            );
        }
        if !self.peers.iter().any(|p| p.name == self.node) {
            return invalid(format!(
                "cluster.node {:?} is not one of the [[cluster.peer]] names",
                self.node
            ));
        }
        Ok(())
    }
}

fn is_node_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn is_http_with_host(url: &Url) -> bool {
    matches!(url.scheme(), "http" | "https") && url.host().is_some()
}

fn same_base(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host() == b.host()
        && a.port_or_known_default() == b.port_or_known_default()
}

fn invalid(message: String) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid(message))
}
