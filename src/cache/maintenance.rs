//! The `wharf cache` commands: `stats`, `verify` and `prune`, run on a cache directory directly.
//! They never touch `tmp/` (a running server's fills live there) and only ever unlink committed
//! files, which is safe next to a running server: unlinked files stay readable to whoever has
//! them open, and the server drops an entry whose file it no longer finds.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::store::manifest_file;
use super::store::scan::{scan, Scanned};
use super::store::{entry_path, EntryKind};
use crate::oci::Verifier;

/// Entries and bytes of one area.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub entries: u64,
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, bytes: u64) {
        self.entries += 1;
        self.bytes += bytes;
    }
}

#[derive(Debug)]
pub struct Stats {
    pub blobs: Tally,
    pub manifests: Tally,
    pub oldest_use: Option<SystemTime>,
    pub newest_use: Option<SystemTime>,
    /// Files that are not cache entries (never served, never counted).
    pub foreign: usize,
}

pub fn stats(root: &Path) -> io::Result<Stats> {
    let scan = scan(root)?;
    let mut stats = Stats {
        blobs: Tally::default(),
        manifests: Tally::default(),
        oldest_use: scan.entries.iter().map(|e| e.used).min(),
        newest_use: scan.entries.iter().map(|e| e.used).max(),
        foreign: scan.foreign.len(),
    };
    for e in &scan.entries {
        match e.key.kind {
            EntryKind::Blob => stats.blobs.add(e.size),
            EntryKind::Manifest => stats.manifests.add(e.size),
        }
    }
    Ok(stats)
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub checked: Tally,
    /// Entries whose bytes did not match their digest, with why; all removed.
    pub removed: Vec<(PathBuf, String)>,
}

/// Re-hashes every entry and removes those whose bytes do not match their digest.
pub fn verify(root: &Path) -> io::Result<Verified> {
    let mut report = Verified::default();
    for entry in scan(root)?.entries {
        let path = entry_path(root, entry.key.kind, &entry.key.digest);
        let problem = match check(&path, &entry) {
            Ok(problem) => problem,
            // Evicted or pruned since the scan: nothing left to check.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        report.checked.add(entry.size);
        if let Some(problem) = problem {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            report.removed.push((path, problem));
        }
    }
    Ok(report)
}

/// Why an entry's bytes are wrong, if they are.
fn check(path: &Path, entry: &Scanned) -> io::Result<Option<String>> {
    match entry.key.kind {
        EntryKind::Manifest => {
            let raw = fs::read(path)?;
            Ok(manifest_file::decode(&raw, &entry.key.digest)
                .is_none()
                .then(|| "manifest bytes do not match the digest".to_owned()))
        }
        EntryKind::Blob => {
            let mut file = File::open(path)?;
            let mut verifier = Verifier::new(entry.key.digest.algorithm());
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                match file.read(&mut buf)? {
                    0 => break,
                    n => verifier.update(&buf[..n]),
                }
            }
            let actual = verifier.finish();
            Ok((actual != entry.key.digest).then(|| format!("bytes hash to {actual}")))
        }
    }
}

/// What `prune` removed.
#[derive(Debug, Default)]
pub struct Pruned {
    pub removed: Tally,
    pub kept: Tally,
}

/// Removes least recently used entries until the committed bytes are at most `max_size`.
pub fn prune(root: &Path, max_size: u64) -> io::Result<Pruned> {
    let mut entries = scan(root)?.entries;
    entries.sort_unstable_by_key(|e| e.used);
    let mut total: u64 = entries.iter().map(|e| e.size).sum();
    let mut report = Pruned::default();
    for entry in entries {
        if total <= max_size {
            report.kept.add(entry.size);
            continue;
        }
        match fs::remove_file(entry_path(root, entry.key.kind, &entry.key.digest)) {
            Ok(()) => report.removed.add(entry.size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        total -= entry.size;
    }
    Ok(report)
}

pub(crate) fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

pub(crate) fn age(t: Option<SystemTime>) -> String {
    let Some(t) = t else {
        return "-".into();
    };
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ago = SystemTime::now()
        .duration_since(t)
        .map_or(0, |d| d.as_secs());
    let ago = humantime::format_duration(std::time::Duration::from_secs(ago));
    format!(
        "{} ({ago} ago)",
        humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(secs))
    )
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.blobs.bytes + self.manifests.bytes;
        writeln!(
            f,
            "blobs       {:>10} entries  {:>12}",
            self.blobs.entries,
            bytes(self.blobs.bytes)
        )?;
        writeln!(
            f,
            "manifests   {:>10} entries  {:>12}",
            self.manifests.entries,
            bytes(self.manifests.bytes)
        )?;
        writeln!(
            f,
            "total       {:>10} entries  {:>12}",
            self.blobs.entries + self.manifests.entries,
            bytes(total)
        )?;
        writeln!(f, "oldest use  {}", age(self.oldest_use))?;
        writeln!(f, "newest use  {}", age(self.newest_use))?;
        if self.foreign > 0 {
            writeln!(
                f,
                "ignored     {} files not named like a digest",
                self.foreign
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (path, why) in &self.removed {
            writeln!(f, "removed {}: {why}", path.display())?;
        }
        writeln!(
            f,
            "checked {} entries ({}); {} damaged and removed",
            self.checked.entries,
            bytes(self.checked.bytes),
            self.removed.len()
        )
    }
}

impl fmt::Display for Pruned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "removed {} entries ({}); kept {} entries ({})",
            self.removed.entries,
            bytes(self.removed.bytes),
            self.kept.entries,
            bytes(self.kept.bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Digest;
    use std::time::Duration;

    fn put(root: &Path, kind: EntryKind, bytes: &[u8], used_secs: u64) -> PathBuf {
        let digest = Digest::sha256_of(bytes);
        let path = entry_path(root, kind, &digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        File::open(&path)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(used_secs))
            .unwrap();
        path
    }

    #[test]
    fn stats_count_both_areas() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), EntryKind::Blob, b"one", 100);
        put(dir.path(), EntryKind::Blob, b"three", 300);
        let body = b"{}";
        let digest = Digest::sha256_of(body);
        let path = entry_path(dir.path(), EntryKind::Manifest, &digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"application/json\n{}").unwrap();
        let stats = stats(dir.path()).unwrap();
        assert_eq!(
            stats.blobs,
            Tally {
                entries: 2,
                bytes: 8
            }
        );
        assert_eq!(stats.manifests.entries, 1);
        assert_eq!(
            stats.oldest_use,
            Some(UNIX_EPOCH + Duration::from_secs(100))
        );
        assert!(stats
            .to_string()
            .contains("oldest use  1970-01-01T00:01:40Z"));
    }

    #[test]
    fn verify_removes_what_does_not_hash_to_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = put(dir.path(), EntryKind::Blob, b"good", 1);
        let bad = put(dir.path(), EntryKind::Blob, b"rotten", 1);
        fs::write(&bad, b"rotteN").unwrap();
        let report = verify(dir.path()).unwrap();
        assert_eq!(report.checked.entries, 2);
        assert_eq!(report.removed.len(), 1);
        assert_eq!(report.removed[0].0, bad);
        assert!(good.exists() && !bad.exists());
    }

    #[test]
    fn prune_removes_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let old = put(dir.path(), EntryKind::Blob, &[1; 10], 100);
        let newer = put(dir.path(), EntryKind::Blob, &[2; 10], 200);
        let newest = put(dir.path(), EntryKind::Blob, &[3; 10], 300);
        let report = prune(dir.path(), 20).unwrap();
        assert_eq!(
            report.removed,
            Tally {
                entries: 1,
                bytes: 10
            }
        );
        assert!(!old.exists() && newer.exists() && newest.exists());
        let report = prune(dir.path(), 0).unwrap();
        assert_eq!(report.removed.entries, 2);
        assert_eq!(report.kept, Tally::default());
    }
}
