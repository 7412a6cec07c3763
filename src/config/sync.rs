//! `[[sync]]`: keep-warm rules. Each names an image repository, which of its tags to keep
//! warm (a regular expression, as Harbor's replication filters), for which platforms, how
//! often to look, and the budget it may use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::size::Size;
use crate::oci::manifest::Platform;
use crate::oci::ImageRef;

/// The shortest interval a rule may ask for (each run lists the repository's tags upstream).
pub const MIN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// The repository as `docker pull` names it, without a tag: `ghcr.io/org/app`.
    pub image: String,
    /// The tags to keep warm: a regular expression that must match the whole tag.
    #[serde(default = "every_tag")]
    pub tags: String,
    /// How often the tags are listed upstream.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// The platforms of multi-platform images to warm (`linux/amd64`); empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
    /// Blobs fetched at once.
    #[serde(default = "default_jobs")]
    pub jobs: usize,
    /// Bytes per second the rule may start fetching, on average; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Size>,
}

fn every_tag() -> String {
    ".*".into()
}

fn default_jobs() -> usize {
    2
}

impl SyncConfig {
    /// The repository the rule covers (its reference is `latest`, unused).
    pub fn image_ref(&self) -> Option<ImageRef> {
        let last = self.image.rsplit('/').next().unwrap_or_default();
        if self.image.contains('@') || last.contains(':') {
            return None;
        }
        self.image.parse().ok()
    }

    /// The tag filter, anchored to the whole tag.
    pub fn tag_filter(&self) -> Result<regex::Regex, regex::Error> {
        regex::Regex::new(&format!("^(?:{})$", self.tags))
    }

    pub fn platforms(&self) -> Result<Vec<Platform>, String> {
        self.platforms
            .iter()
            .map(|p| p.parse().map_err(|e| format!("platform {p:?}: {e}")))
            .collect()
    }

    /// What is wrong with the rule, if anything; `upstreams`: the configured upstream names.
    pub fn problem(&self, upstreams: &[&str]) -> Option<String> {
        let Some(image) = self.image_ref() else {
            return Some(format!(
                "image {:?} must name a repository, without a tag or digest (ghcr.io/org/app)",
                self.image
            ));
        };
        if !upstreams.contains(&image.registry.as_str()) {
            return Some(format!(
                "image {:?}: {} is not a configured upstream",
                self.image, image.registry
            ));
        }
        if let Err(e) = self.tag_filter() {
            return Some(format!(
                "tags {:?} is not a regular expression: {e}",
                self.tags
            ));
        }
        if let Err(e) = self.platforms() {
            return Some(e);
        }
        if self.every < MIN_EVERY {
            return Some(format!(
                "every must be at least {}",
                humantime::format_duration(MIN_EVERY)
            ));
        }
        if self.jobs == 0 {
            return Some("jobs must be at least 1".into());
        }
        if self.bandwidth.is_some_and(|b| b.bytes() == 0) {
            return Some("bandwidth must be greater than zero (leave it out for no limit)".into());
        }
        None
    }
}
