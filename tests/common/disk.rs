//! What a cache directory holds, read straight from disk: committed blobs under `blobs/`, one
//! file per digest.

use std::path::{Path, PathBuf};

/// Where the committed blob `digest` lives in `cache`.
pub fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    cache.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn has_blob(cache: &Path, digest: &str) -> bool {
    blob_path(cache, digest).exists()
}
