//! `[[server.auth.grant]]`: which repositories a user (an htpasswd name) or a token (by its
//! label) may pull. Once any grant exists, a client gets only what its grants give.

use serde::{Deserialize, Serialize};

use crate::oci::RepoPattern;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// htpasswd user names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Labels of tokens in the tokens file (a user and a token of the same name are different
    /// clients).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_labels: Vec<String>,
    /// The existing pattern syntax.
    pub repositories: Vec<RepoPattern>,
    /// The upstream (by name) the grant is for; absent: every upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl GrantConfig {
    /// What is wrong with the grant, if anything; `upstreams` are the configured names.
    pub(super) fn problem(&self, upstreams: &[&str]) -> Option<String> {
        if self.users.is_empty() && self.token_labels.is_empty() {
            return Some("names no user and no token label: it would give nothing".into());
        }
        if self.repositories.is_empty() {
            return Some("repositories is empty: it would give nothing".into());
        }
        if let Some(upstream) = &self.upstream {
            if !upstreams.contains(&upstream.as_str()) {
                return Some(format!(
                    "upstream {upstream:?} is not a configured upstream"
                ));
            }
        }
        None
    }
}
