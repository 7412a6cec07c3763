//! Registry authentication: parsing `WWW-Authenticate` challenges, the credentials wharf holds,
//! which hosts may issue tokens, and bearer tokens cached per scope until shortly before they
//! expire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use moka::future::Cache;
use moka::Expiry;
use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::error::{SetupError, UpstreamError};
use crate::config::UpstreamConfig;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
    /// Quoted values may contain commas (scopes such as `repository:x:pull,push`).
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |key: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v.clone())
        };
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_owned();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_owned();
        }
        out.push((key, value));
    }
}

/// A bearer token and how long it may be used.
#[derive(Clone)]
pub struct Token {
    pub value: Arc<str>,
    lifetime: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token, usable for a little less than the issuer said (the spec's default is 60 s).
    pub fn into_token(self) -> Option<Token> {
        let value = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        let expires_in = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        Some(Token {
            value: value.into(),
            lifetime: expires_in - margin,
        })
    }
}

struct TokenExpiry;

impl Expiry<String, Token> for TokenExpiry {
    fn expire_after_create(&self, _key: &String, token: &Token, _now: Instant) -> Option<Duration> {
        Some(token.lifetime)
    }
}

/// Tokens by realm, service and scope. Concurrent requests for one scope share one fetch.
#[derive(Clone)]
pub struct TokenCache {
    tokens: Cache<String, Token>,
}

impl TokenCache {
    pub fn new() -> Self {
        TokenCache {
            tokens: Cache::builder()
                .max_capacity(10_000)
                .expire_after(TokenExpiry)
                .build(),
        }
    }

    pub async fn get_or_fetch<E, F>(&self, key: String, fetch: F) -> Result<Token, Arc<E>>
    where
        F: std::future::Future<Output = Result<Token, E>>,
        E: Send + Sync + 'static,
    {
        self.tokens.try_get_with(key, fetch).await
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::new()
    }
}

/// The user name and password wharf presents to a private upstream.
pub(super) struct UpstreamCredentials {
    username: String,
    password: String,
}

impl UpstreamCredentials {
    /// The credentials `config` names, its password read from its file; `None` without both.
    pub(super) fn load(config: &UpstreamConfig) -> Result<Option<Self>, SetupError> {
        let (Some(username), Some(file)) = (&config.username, &config.password_file) else {
            return Ok(None);
        };
        let password =
            std::fs::read_to_string(file).map_err(|source| SetupError::PasswordFile {
                upstream: config.name.clone(),
                file: file.clone(),
                source,
            })?;
        Ok(Some(UpstreamCredentials {
            username: username.clone(),
            password: password.trim_end_matches(['\r', '\n']).to_owned(),
        }))
    }

    pub(super) fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// An `Authorization` value, marked sensitive so that no `Debug` output or HTTP/2 header
/// table ever carries it.
pub(super) fn authorization_value(value: &str) -> Result<HeaderValue, UpstreamError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| UpstreamError::Invalid {
        upstream: "credentials".into(),
        reason: "a credential holds characters not allowed in a header".into(),
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The hosts allowed to issue `config`'s tokens: its own, Docker Hub's token service for
/// Docker Hub, and those configured.
pub(super) fn realm_hosts(config: &UpstreamConfig) -> Vec<String> {
    let own = config.url.host_str().unwrap_or_default().to_owned();
    let docker_hub = own.eq_ignore_ascii_case("registry-1.docker.io");
    std::iter::once(own)
        .chain(docker_hub.then(|| "auth.docker.io".to_owned()))
        .chain(config.token_realm_hosts.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_challenge() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
    }

    #[test]
    fn quoted_commas_and_odd_spacing() {
        let c = Challenge::parse(
            r#"bearer  scope="repository:a/b:pull,push" , realm=https://r/t,service="s\"x""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://r/t".into(),
                service: Some("s\"x".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
    }

    #[test]
    fn basic_and_garbage() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
        assert_eq!(Challenge::parse("Bearer realm"), None);
    }

    #[test]
    fn token_lifetime_keeps_a_margin() {
        let t: TokenResponse =
            serde_json::from_str(r#"{"access_token":"abc","expires_in":300}"#).unwrap();
        let t = t.into_token().unwrap();
        assert_eq!(&*t.value, "abc");
        assert_eq!(t.lifetime, Duration::from_secs(270));
        let t: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert!(t.into_token().is_none());
    }
}
