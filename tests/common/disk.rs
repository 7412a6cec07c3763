//! What a cache directory holds, read straight from disk: committed blobs and manifests under
//! `blobs/` and `manifests/` (one file per digest), tag files under `tags/`, temp files in `tmp/`.

use std::fs;
use std::path::{Path, PathBuf};

use super::sha256;

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

/// Files in `tmp/`: fills and tag writes in progress (or left behind by a crash).
pub fn temp_files(cache: &Path) -> usize {
    fs::read_dir(cache.join("tmp")).map_or(0, |d| d.count())
}

/// Asserts that every committed blob hashes to its name; how many there are.
pub fn assert_blobs_whole(cache: &Path) -> usize {
    let blobs = committed(cache, "blobs");
    for (digest, path) in &blobs {
        let bytes = fs::read(path).unwrap();
        assert_eq!(&sha256(&bytes), digest, "{} is damaged", path.display());
    }
    blobs.len()
}

/// Asserts that every committed manifest is `<media type>\n<bytes>` with bytes that hash to
/// its name; how many there are.
pub fn assert_manifests_whole(cache: &Path) -> usize {
    let manifests = committed(cache, "manifests");
    for (digest, path) in &manifests {
        let raw = fs::read(path).unwrap();
        let nl = raw.iter().position(|&b| b == b'\n');
        let nl = nl.unwrap_or_else(|| panic!("{}: no media type line", path.display()));
        assert!(
            std::str::from_utf8(&raw[..nl]).is_ok_and(|t| t.contains('/')),
            "{}: no media type",
            path.display()
        );
        assert_eq!(
            &sha256(&raw[nl + 1..]),
            digest,
            "{} is damaged",
            path.display()
        );
    }
    manifests.len()
}

/// The tag files, parsed: (upstream, repository, tag, digests of its variants). Panics on a
/// file that is not a whole tag record.
pub fn tag_records(cache: &Path) -> Vec<(String, String, String, Vec<String>)> {
    fanned_out(&cache.join("tags"))
        .into_iter()
        .map(|path| {
            let raw = fs::read(&path).unwrap();
            let record: serde_json::Value = serde_json::from_slice(&raw)
                .unwrap_or_else(|e| panic!("{}: not whole JSON ({e})", path.display()));
            let text = |field: &str| {
                record[field]
                    .as_str()
                    .unwrap_or_else(|| panic!("{}: no {field}", path.display()))
                    .to_owned()
            };
            let variants = record["variants"].as_array();
            let variants = variants.unwrap_or_else(|| panic!("{}: no variants", path.display()));
            assert!(!variants.is_empty(), "{}: no variants", path.display());
            let digests = variants
                .iter()
                .map(|v| v["digest"].as_str().unwrap().to_owned())
                .collect();
            (text("upstream"), text("repo"), text("tag"), digests)
        })
        .collect()
}
