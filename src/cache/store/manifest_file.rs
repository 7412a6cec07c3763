//! The format of a manifest file: `<media type>\n<exact bytes>`, one file, one atomic rename.
//! The bytes are never re-serialised, because the digest is of those exact bytes. Pure: the
//! store reads and writes the files.

use bytes::Bytes;

use crate::oci::{Digest, RawManifest, Verifier};

/// The file's contents for `manifest`; `None` when its media type cannot be written (it holds a
/// newline, which would end the header line).
pub fn encode(manifest: &RawManifest) -> Option<Vec<u8>> {
    if manifest.media_type.contains('\n') {
        return None;
    }
    let mut out = Vec::with_capacity(manifest.media_type.len() + 1 + manifest.body.len());
    out.extend_from_slice(manifest.media_type.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&manifest.body);
    Some(out)
}

/// Splits a manifest file and checks its bytes against `digest`; `None` if they do not match.
pub fn decode(raw: &[u8], digest: &Digest) -> Option<RawManifest> {
    let nl = raw.iter().position(|&b| b == b'\n')?;
    let media_type = std::str::from_utf8(&raw[..nl]).ok()?.to_owned();
    let body = &raw[nl + 1..];
    let mut verifier = Verifier::new(digest.algorithm());
    verifier.update(body);
    (verifier.finish() == *digest).then(|| RawManifest {
        digest: digest.clone(),
        media_type,
        body: Bytes::copy_from_slice(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(media_type: &str) -> RawManifest {
        let body = Bytes::from_static(b"{ \"schemaVersion\": 2 }\n");
        RawManifest {
            digest: Digest::sha256_of(&body),
            media_type: media_type.into(),
            body,
        }
    }

    #[test]
    fn round_trips_exact_bytes_and_type() {
        let m = manifest("application/vnd.oci.image.manifest.v1+json; charset=utf-8");
        assert_eq!(decode(&encode(&m).unwrap(), &m.digest), Some(m));
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_refused() {
        let m = manifest("application/json");
        let mut file = encode(&m).unwrap();
        *file.last_mut().unwrap() = b' ';
        assert_eq!(decode(&file, &m.digest), None);
        assert_eq!(decode(b"no header line", &m.digest), None);
    }

    #[test]
    fn a_media_type_with_a_newline_is_not_written() {
        assert_eq!(encode(&manifest("application/json\nX-Evil: 1")), None);
    }
}
