//! Manifests stored by digest with the media type the upstream gave them. A manifest file is
//! `<media type>\n<exact bytes>`: one file, one atomic rename. The bytes are never re-serialised,
//! because the digest is of those exact bytes.

use std::fs;
use std::io::{self, Write};

use bytes::Bytes;

use super::blobs::{Area, Store};
use super::index::EntryKey;
use crate::oci::{Digest, Verifier};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Digest,
    /// `Content-Type` exactly as the upstream sent it.
    pub media_type: String,
    pub body: Bytes,
}

impl StoredManifest {
    /// The media type without parameters, for `Accept` matching.
    pub fn media_type_essence(&self) -> &str {
        self.media_type.split(';').next().unwrap_or("").trim()
    }
}

/// Splits a manifest file and checks its bytes against `digest`.
pub(super) fn parse_manifest_file(raw: &[u8], digest: &Digest) -> Option<(String, Bytes)> {
    let nl = raw.iter().position(|&b| b == b'\n')?;
    let media_type = std::str::from_utf8(&raw[..nl]).ok()?.to_owned();
    let body = &raw[nl + 1..];
    let mut verifier = Verifier::new(digest.algorithm());
    verifier.update(body);
    (verifier.finish() == *digest).then(|| (media_type, Bytes::copy_from_slice(body)))
}

impl Store {
    /// Reads a cached manifest and counts the use, re-checking its digest: a damaged file is
    /// removed, not served.
    pub fn read_manifest(&self, digest: &Digest) -> io::Result<Option<StoredManifest>> {
        if !self.touch(Area::Manifests, digest) {
            return Ok(None);
        }
        let key = EntryKey {
            area: Area::Manifests,
            digest: digest.clone(),
        };
        let raw = match fs::read(self.path(Area::Manifests, digest)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.drop_invalid(&key, "its file is gone");
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        match parse_manifest_file(&raw, digest) {
            Some((media_type, body)) => Ok(Some(StoredManifest {
                digest: digest.clone(),
                media_type,
                body,
            })),
            None => {
                self.drop_invalid(&key, "its bytes do not match its digest");
                Ok(None)
            }
        }
    }

    /// Stores a manifest whose digest the caller has verified, unless it is already cached or
    /// caching is suspended.
    pub fn write_manifest(&self, manifest: &StoredManifest) -> io::Result<()> {
        if manifest.media_type.contains('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "media type holds a newline",
            ));
        }
        if self.contains(Area::Manifests, &manifest.digest) || !self.caching_allowed() {
            return Ok(());
        }
        let (temp, mut file) = self.temp_file()?;
        let written = file
            .write_all(manifest.media_type.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.write_all(&manifest.body));
        if let Err(e) = written {
            self.write_failed(&e);
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        self.commit(&temp, &file, Area::Manifests, &manifest.digest)
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn store(dir: &std::path::Path) -> Store {
        Store::open(dir, 1 << 20, Metrics::new()).unwrap()
    }

    #[test]
    fn round_trips_exact_bytes_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let body = Bytes::from_static(b"{ \"schemaVersion\": 2 }\n");
        let m = StoredManifest {
            digest: Digest::sha256_of(&body),
            media_type: "application/vnd.oci.image.manifest.v1+json; charset=utf-8".into(),
            body,
        };
        store.write_manifest(&m).unwrap();
        assert_eq!(store.read_manifest(&m.digest).unwrap(), Some(m.clone()));
        assert_eq!(
            m.media_type_essence(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        // Survives a restart.
        drop(store);
        let store = self::store(dir.path());
        assert_eq!(store.read_manifest(&m.digest).unwrap(), Some(m));
    }

    #[test]
    fn damaged_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let m = StoredManifest {
            digest: Digest::sha256_of(b"{}"),
            media_type: "application/json".into(),
            body: Bytes::from_static(b"{}"),
        };
        store.write_manifest(&m).unwrap();
        let path = store.path(Area::Manifests, &m.digest);
        fs::write(&path, b"application/json\n{ }").unwrap();
        assert_eq!(store.read_manifest(&m.digest).unwrap(), None);
        assert!(!path.exists());
        assert_eq!(store.usage().entries, 0);
    }
}
