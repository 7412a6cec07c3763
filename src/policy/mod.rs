//! Signatures at the edge: which repositories must be signed by which keys, and whether a
//! manifest's signatures verify. Pure verification over oci types: the mirror fetches the
//! signature objects through its own paths and hands them here; nothing here does I/O but
//! reading the key files at start-up.

pub mod bundle;
pub mod classic;
mod keys;
mod refusal;

use std::time::Duration;

pub use keys::{KeyError, KeyKind, TrustedKey};
pub use refusal::Refusal;

use crate::config::{PolicyConfig, PolicyMode};
use crate::oci::manifest::ManifestDoc;
use crate::oci::{RepoName, RepoPattern};

/// One `[[policy]]` rule, its keys read.
#[derive(Debug)]
pub struct Rule {
    /// Its place in the configuration: what a verdict was reached under.
    pub id: usize,
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
            .enumerate()
            .map(|(id, c)| {
                Ok(Rule {
                    id,
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

    /// The longest `verified_ttl` of any rule: nothing decided stands longer.
    pub fn longest_verified_ttl(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.verified_ttl)
            .max()
            .unwrap_or_default()
    }
}

/// Whether a manifest holds nothing but signatures (a classic `.sig` manifest, a bundle
/// referrer, an index of such referrers): those are served to clients like `cosign verify`
/// unsigned. Anything else is an image and must be signed, whatever its tag looks like.
pub fn holds_only_signatures(doc: &ManifestDoc) -> bool {
    match doc {
        ManifestDoc::Image { layers, .. } => {
            !layers.is_empty() && layers.iter().all(|l| is_signature_type(&l.media_type))
        }
        ManifestDoc::Index(manifests) => manifests.iter().all(|m| {
            m.artifact_type
                .as_deref()
                .is_some_and(|t| t == bundle::ARTIFACT_TYPE || t == classic::PAYLOAD_MEDIA_TYPE)
        }),
    }
}

fn is_signature_type(media_type: &str) -> bool {
    media_type == classic::PAYLOAD_MEDIA_TYPE || bundle::is_bundle_type(media_type)
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
