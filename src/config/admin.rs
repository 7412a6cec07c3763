//! `[admin]`: the admin API (refresh, purge, the cached images) and the registries' webhooks.
//! Its credential is its own: admin tokens, hashed like client tokens, and a webhook secret.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The admin tokens, hashed: `sha256:<hex> label` lines, as `[server.auth] tokens`. The
    /// label names who asked in the log.
    pub tokens: PathBuf,
    /// The secret registries present when they call the webhooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_file: Option<PathBuf>,
    /// Nodes that webhooks, refreshes and purges received here are passed on to (downstream
    /// tiers, cluster peers), marked as passed on so they go no further.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forward_to: Vec<Url>,
}
