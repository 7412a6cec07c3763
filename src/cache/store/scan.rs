//! Listing a cache directory's committed entries from file metadata alone (never their
//! contents), for start-up and for the maintenance commands. Never touches `tmp/`, so it is safe
//! next to a running server.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::layout::{EntryKey, EntryKind};
use crate::oci::Digest;

/// One committed file.
#[derive(Debug, Clone)]
pub struct Scanned {
    pub key: EntryKey,
    pub size: u64,
    /// The last use wharf recorded (the file's mtime).
    pub used: SystemTime,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub entries: Vec<Scanned>,
    /// Files under `blobs/` or `manifests/` that are not named like a digest: never served,
    /// never counted, left for the operator.
    pub foreign: Vec<PathBuf>,
}

/// Lists `<root>/<kind>/<algorithm>/<first two hex>/<hex>` for both kinds. A missing kind's
/// directory is empty, not an error.
pub fn scan(root: &Path) -> io::Result<Scan> {
    let mut scan = Scan::default();
    for kind in EntryKind::ALL {
        for algorithm in read_dir_or_empty(&root.join(kind.dir()))? {
            let algorithm = algorithm?;
            let algorithm_name = algorithm.file_name().to_string_lossy().into_owned();
            if !algorithm.file_type()?.is_dir() {
                scan.foreign.push(algorithm.path());
                continue;
            }
            for fan in fs::read_dir(algorithm.path())? {
                let fan = fan?;
                if !fan.file_type()?.is_dir() {
                    scan.foreign.push(fan.path());
                    continue;
                }
                let prefix = fan.file_name().to_string_lossy().into_owned();
                for file in fs::read_dir(fan.path())? {
                    let file = file?;
                    let name = file.file_name().to_string_lossy().into_owned();
                    let digest = format!("{algorithm_name}:{name}").parse::<Digest>();
                    let metadata = match file.metadata() {
                        Ok(m) => m,
                        // Removed since the listing (evicted, pruned): not an entry any more.
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    match digest {
                        Ok(digest) if metadata.is_file() && name.starts_with(&prefix) => {
                            scan.entries.push(Scanned {
                                key: EntryKey { kind, digest },
                                size: metadata.len(),
                                used: metadata.modified()?,
                            })
                        }
                        _ => scan.foreign.push(file.path()),
                    }
                }
            }
        }
    }
    Ok(scan)
}

fn read_dir_or_empty(dir: &Path) -> io::Result<impl Iterator<Item = io::Result<fs::DirEntry>>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(entries.into_iter().flatten())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_entries_and_sets_aside_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(b"x");
        let hex = digest.hex();
        let blob_dir = dir.path().join("blobs/sha256").join(&hex[..2]);
        fs::create_dir_all(&blob_dir).unwrap();
        fs::write(blob_dir.join(hex), b"x").unwrap();
        fs::write(blob_dir.join("not-a-digest"), b"?").unwrap();
        let misplaced = dir.path().join("blobs/sha256/00");
        fs::create_dir_all(&misplaced).unwrap();
        fs::write(misplaced.join(hex), b"x").unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/123-0"), b"partial").unwrap();

        let scan = scan(dir.path()).unwrap();
        assert_eq!(scan.entries.len(), 1);
        assert_eq!(scan.entries[0].key.digest, digest);
        assert_eq!(scan.entries[0].size, 1);
        assert_eq!(scan.foreign.len(), 2, "{:?}", scan.foreign);
    }

    #[test]
    fn an_empty_or_new_directory_has_no_entries() {
        let dir = tempfile::tempdir().unwrap();
        let scan = scan(dir.path()).unwrap();
        assert!(scan.entries.is_empty() && scan.foreign.is_empty());
    }
}
