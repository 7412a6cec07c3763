//! `[cache.shared]`: an S3-compatible bucket below the local disk (Garage, MinIO, Ceph RGW,
//! S3), holding verified blobs by digest for every node that shares it.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    /// The S3 API's base URL, e.g. `http://garage:3900` or `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: Url,
    pub bucket: String,
    /// The region the bucket's requests are signed for (Garage: its `s3_region`).
    #[serde(default = "default_region")]
    pub region: String,
    /// Where under the bucket wharf keeps its objects (`<prefix>blobs/sha256/<hex>`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// `<endpoint>/<bucket>/<key>` (Garage, MinIO, Ceph); false: `<bucket>.<endpoint host>`.
    #[serde(default = "yes")]
    pub path_style: bool,
    /// The access key ID: the first line of this file.
    pub access_key_file: PathBuf,
    /// The secret key: the first line of this file.
    pub secret_key_file: PathBuf,
    /// The shared tier's own bound: past it, the least recently used blobs go (none by
    /// default: the bucket is bounded by `max_idle` alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<super::Size>,
    /// A blob no node has read from the bucket (or uploaded) for this long goes.
    #[serde(default = "default_max_idle", with = "humantime_serde")]
    pub max_idle: Duration,
    /// CAs to trust besides the system's, for an https endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn yes() -> bool {
    true
}

fn default_max_idle() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn default_region() -> String {
    "us-east-1".to_owned()
}
