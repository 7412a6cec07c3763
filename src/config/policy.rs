//! `[[policy]]`: which repositories are served only when signed by the operator's keys. Rules
//! are checked in order; the first that covers a repository decides.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::oci::RepoPattern;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Named in refusals, logs and metrics.
    pub name: String,
    /// The upstream (by name) whose repositories the rule covers; absent: every upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    pub repositories: Vec<RepoPattern>,
    /// PEM public keys (`-----BEGIN PUBLIC KEY-----`, as `cosign generate-key-pair` writes
    /// them): ECDSA P-256, Ed25519 or RSA.
    pub keys: Vec<PathBuf>,
    #[serde(default)]
    pub mode: PolicyMode,
    /// How long a verified result stands before the signature is checked again.
    #[serde(default = "default_verified_ttl", with = "humantime_serde")]
    pub verified_ttl: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyMode {
    /// Refuse what does not verify.
    #[default]
    Enforce,
    /// Serve it, and log and count it.
    Warn,
}

impl PolicyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Warn => "warn",
        }
    }
}

fn default_verified_ttl() -> Duration {
    Duration::from_secs(3600)
}
