//! The configuration tree read from `mirror.toml`: every key has a built-in default, unknown keys
//! are errors (a typo must not silently fall back to a default), and `validate` checks what serde
//! cannot. Knows nothing of the rest of wharf.

mod admin;
mod cluster;
mod grants;
mod policy;
mod shared;
mod size;
mod sync;
mod tree;
mod validate;

pub use admin::AdminConfig;
pub use cluster::{ClusterConfig, PeerConfig};
pub use grants::GrantConfig;
pub use policy::{PolicyConfig, PolicyMode};
pub use shared::SharedConfig;
pub use size::Size;
pub use sync::SyncConfig;
pub use tree::*;
pub use validate::ConfigError;

#[cfg(test)]
mod tests;
