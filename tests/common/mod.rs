//! The test harness: a fake upstream registry with fault switches and request counters
//! (`registry`), the real wharf started on 127.0.0.1:0 from a config built in Rust (`app`) or as
//! a child process (`child`), nodes of one cluster (`cluster`), what a cache directory holds on
//! disk (`disk`), a TCP link a test can cut (`link`), certificates (`pki`), captured logs
//! (`logs`), a fake S3 object store (`s3`), and a reader of multipart/byteranges bodies
//! (`multipart`).

pub mod app;
pub mod child;
pub mod cluster;
pub mod disk;
pub mod link;
pub mod logs;
pub mod multipart;
pub mod pki;
pub mod registry;
pub mod s3;
pub mod signing;

use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

pub use app::{base_config, config, each_upstream, upstream_config, Wharf};
pub use registry::{Break, FakeRegistry, Hold, TOKEN};

pub const MIB: usize = 1024 * 1024;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The `wharf` binary.
pub const WHARF: &str = env!("CARGO_BIN_EXE_wharf");

/// A loopback port free a moment ago, for a listener wharf binds itself (`metrics_listen`).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (xorshift), so blobs are incompressible and distinct.
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// The first error code of an OCI error body.
pub async fn error_code(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.expect("an OCI JSON error body");
    body["errors"][0]["code"].as_str().unwrap_or("").to_owned()
}

/// The sum of the series of a Prometheus text exposition matched by name and label fragments;
/// 0 when absent.
pub fn metric_in(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 20 ms until it holds or `limit` has passed; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
