//! Manifests stored by digest with the media type the upstream gave them. A manifest file is
//! `<media type>\n<exact bytes>`: one file, one atomic rename. The bytes are never re-serialised,
//! because the digest is of those exact bytes.

use std::fs;
use std::io::{self, Write};

use bytes::Bytes;

use super::blobs::{Area, Store};
use crate::oci::Digest;

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

impl Store {
    /// Reads a cached manifest, re-checking its digest: a damaged file is removed, not served.
    pub fn read_manifest(&self, digest: &Digest) -> io::Result<Option<StoredManifest>> {
        let path = self.path(Area::Manifests, digest);
        let raw = match fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let parsed = raw.iter().position(|&b| b == b'\n').and_then(|nl| {
            let media_type = std::str::from_utf8(&raw[..nl]).ok()?.to_owned();
            let body = Bytes::copy_from_slice(&raw[nl + 1..]);
            let mut verifier = crate::oci::Verifier::new(digest.algorithm());
            verifier.update(&body);
            (verifier.finish() == *digest).then_some((media_type, body))
        });
        match parsed {
            Some((media_type, body)) => Ok(Some(StoredManifest {
                digest: digest.clone(),
                media_type,
                body,
            })),
            None => {
                tracing::warn!(%digest, "removing a damaged cached manifest");
                let _ = fs::remove_file(&path);
                Ok(None)
            }
        }
    }

    /// Stores a manifest whose digest the caller has verified.
    pub fn write_manifest(&self, manifest: &StoredManifest) -> io::Result<()> {
        if manifest.media_type.contains('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "media type holds a newline",
            ));
        }
        let (temp, mut file) = self.temp_file()?;
        let written = file
            .write_all(manifest.media_type.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.write_all(&manifest.body))
            .and_then(|()| self.commit(&temp, &file, Area::Manifests, &manifest.digest));
        if written.is_err() {
            let _ = fs::remove_file(&temp);
        }
        written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exact_bytes_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
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
    }

    #[test]
    fn damaged_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let digest = Digest::sha256_of(b"{}");
        let path = store.path(Area::Manifests, &digest);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"application/json\n{ }").unwrap();
        assert_eq!(store.read_manifest(&digest).unwrap(), None);
        assert!(!path.exists());
    }
}
