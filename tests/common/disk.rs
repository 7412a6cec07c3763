//! What a cache directory holds, read straight from disk: committed blobs and manifests under
//! `blobs/` and `manifests/`, one file per digest.

use std::fs;
use std::path::{Path, PathBuf};

/// Where the committed blob `digest` lives in `cache`.
pub fn blob_path(cache: &Path, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    cache.join("blobs/sha256").join(&hex[..2]).join(hex)
}

pub fn has_blob(cache: &Path, digest: &str) -> bool {
    blob_path(cache, digest).exists()
}

/// Every file two levels below `dir` (`<fan-out>/<name>`), as wharf lays out its areas.
pub fn fanned_out(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for fan in fs::read_dir(dir).into_iter().flatten().flatten() {
        for file in fs::read_dir(fan.path()).into_iter().flatten().flatten() {
            files.push(file.path());
        }
    }
    files
}

/// The committed entries of `area` ("blobs" or "manifests"): (digest named by the file, file).
pub fn committed(cache: &Path, area: &str) -> Vec<(String, PathBuf)> {
    fanned_out(&cache.join(area).join("sha256"))
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            (format!("sha256:{name}"), path)
        })
        .collect()
}
