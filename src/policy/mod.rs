//! Signatures at the edge: which repositories must be signed by which keys, and whether a
//! manifest's signatures verify. Pure verification over oci types: the mirror fetches the
//! signature objects through its own paths and hands them here; nothing here does I/O but
//! reading the key files at start-up.

pub mod bundle;
pub mod classic;
mod keys;

use std::fmt;
use std::time::Duration;

pub use keys::{KeyError, KeyKind, TrustedKey};

use crate::config::{PolicyConfig, PolicyMode};
use crate::oci::{Digest, RepoName, RepoPattern};

/// Why a manifest is not served (or, in `warn` mode, served anyway and counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSignature,
    /// No trusted key verifies any signature: signed by another key, or altered.
    UntrustedKey,
    /// A trusted signature of another manifest.
    OtherDigest(Digest),
    /// A signature or payload that cannot be read.
    BadSignature(String),
}

impl Refusal {
    /// How much a refusal tells: the most telling of several signatures' is reported.
    fn rank(&self) -> u8 {
        match self {
            Refusal::NoSignature => 0,
            Refusal::BadSignature(_) => 1,
            Refusal::UntrustedKey => 2,
            Refusal::OtherDigest(_) => 3,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSignature => write!(f, "no signature"),
            Refusal::UntrustedKey => write!(
                f,
                "no signature verifies under a trusted key (signed by an unknown key, or altered)"
            ),
            Refusal::OtherDigest(d) => write!(f, "the signature is for another digest ({d})"),
            Refusal::BadSignature(why) => write!(f, "bad signature: {why}"),
        }
    }
}

/// One `[[policy]]` rule, its keys read.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    upstream: Option<String>,
    repositories: Vec<RepoPattern>,
    pub keys: Vec<TrustedKey>,
    pub mode: PolicyMode,
    pub verified_ttl: Duration,
}

/// Every rule, in order.
#[derive(Debug, Default)]
pub struct Policies {
    rules: Vec<Rule>,
}

impl Policies {
    /// Reads every rule's key files: a bad one stops start-up (and `check-config`), named.
    pub fn load(configs: &[PolicyConfig]) -> Result<Policies, KeyError> {
        let rules = configs
            .iter()
            .map(|c| {
                Ok(Rule {
                    name: c.name.clone(),
                    upstream: c.upstream.clone(),
                    repositories: c.repositories.clone(),
                    keys: c
                        .keys
                        .iter()
                        .map(|path| TrustedKey::load(path))
                        .collect::<Result<_, _>>()?,
                    mode: c.mode,
                    verified_ttl: c.verified_ttl,
                })
            })
            .collect::<Result<_, KeyError>>()?;
        Ok(Policies { rules })
    }

    /// The rule that decides for `repo` of the upstream named `upstream`: the first that
    /// covers it.
    pub fn covering(&self, upstream: &str, repo: &RepoName) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.upstream.as_deref().map_or(true, |u| u == upstream)
                && rule.repositories.iter().any(|p| p.matches(repo))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, upstream: Option<&str>, patterns: &[&str]) -> PolicyConfig {
        PolicyConfig {
            name: name.into(),
            upstream: upstream.map(Into::into),
            repositories: patterns.iter().map(|p| p.parse().unwrap()).collect(),
            keys: vec![],
            mode: PolicyMode::Enforce,
            verified_ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_first_rule_that_covers_a_repository_decides() {
        let policies = Policies::load(&[
            rule("hub-myorg", Some("docker.io"), &["myorg/*"]),
            rule("everything", None, &["*"]),
        ])
        .unwrap();
        let repo = |r: &str| r.parse::<RepoName>().unwrap();
        let decides = |u: &str, r: &str| policies.covering(u, &repo(r)).map(|r| r.name.as_str());
        assert_eq!(decides("docker.io", "myorg/app"), Some("hub-myorg"));
        assert_eq!(decides("ghcr.io", "myorg/app"), Some("everything"));
        assert_eq!(decides("docker.io", "library/alpine"), Some("everything"));
        assert!(Policies::default()
            .covering("docker.io", &repo("x"))
            .is_none());
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let mut config = rule("r", None, &["*"]);
        config.keys = vec!["/nonexistent/cosign.pub".into()];
        let err = Policies::load(&[config]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/cosign.pub"), "{err}");
    }
}
