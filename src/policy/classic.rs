//! cosign's classic layout: the signatures of manifest `sha256:<hex>` are the layers of the
//! manifest tagged `sha256-<hex>.sig` in the same repository, each a simple-signing payload
//! (`application/vnd.dev.cosign.simplesigning.v1+json`) with its signature, base64, in the
//! layer's `dev.cosignproject.cosign/signature` annotation. The payload says which manifest it
//! signs: `critical.image.docker-manifest-digest`, under `critical.type` = `cosign container
//! image signature`.

use base64::Engine;
use serde::Deserialize;

use super::keys::TrustedKey;
use super::refusal::Refusal;
use crate::oci::Digest;

pub const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_TYPE: &str = "cosign container image signature";

/// The tag that holds the signatures of `digest`.
pub fn signature_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().as_str(), digest.hex())
}

/// One signature of the layout: a payload and the annotation's text.
pub struct Signed<'a> {
    pub payload: &'a [u8],
    pub signature: &'a str,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: Image,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// What the payload signs, once its signature verified.
fn signed_digest(payload: &[u8]) -> Result<Digest, Refusal> {
    let payload: Payload = serde_json::from_slice(payload)
        .map_err(|e| Refusal::BadSignature(format!("the payload is not simple signing: {e}")))?;
    if payload.critical.kind != SIGNATURE_TYPE {
        return Err(Refusal::BadSignature(format!(
            "the payload's type is {:?}, not {SIGNATURE_TYPE:?}",
            payload.critical.kind
        )));
    }
    payload
        .critical
        .image
        .digest
        .parse()
        .map_err(|e| Refusal::BadSignature(format!("the payload names no digest: {e}")))
}

/// Whether one of `signatures` verifies under one of `keys` and signs `digest`. A refusal says
/// why the most telling signature failed: one that verified but signs another manifest, then
/// one no trusted key verifies, then one that could not be read.
pub fn verify(
    signatures: &[Signed<'_>],
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<(), Refusal> {
    let mut told = Refusal::NoSignature;
    for signed in signatures {
        match check(signed, digest, keys) {
            Ok(()) => return Ok(()),
            Err(refusal) => told = told.or(refusal),
        }
    }
    Err(told)
}

fn check(signed: &Signed<'_>, digest: &Digest, keys: &[TrustedKey]) -> Result<(), Refusal> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signed.signature.trim())
        .map_err(|_| Refusal::BadSignature("the signature is not base64".into()))?;
    if !keys.iter().any(|k| k.verifies(signed.payload, &signature)) {
        return Err(Refusal::UntrustedKey);
    }
    // Only a verified payload is believed about what it signs.
    let signs = signed_digest(signed.payload)?;
    if &signs != digest {
        return Err(Refusal::OtherDigest(signs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const PAYLOAD: &[u8] = include_bytes!("testdata/payload.json");
    const SIGNATURE: &str = include_str!("testdata/payload.ecdsa.sig");
    /// What the payload names: sha256 of the bytes `manifest`.
    fn signed() -> Digest {
        Digest::sha256_of(b"manifest")
    }

    fn keys(pems: &[&str]) -> Vec<TrustedKey> {
        pems.iter()
            .map(|pem| TrustedKey::from_pem(Path::new("k"), pem).unwrap())
            .collect()
    }

    fn trusted() -> Vec<TrustedKey> {
        keys(&[include_str!("testdata/ecdsa-p256.pub")])
    }

    #[test]
    fn the_tag_of_a_digests_signatures() {
        assert_eq!(
            signature_tag(&signed()),
            format!("sha256-{}.sig", signed().hex())
        );
    }

    #[test]
    fn a_signature_by_a_trusted_key_of_this_digest_verifies() {
        let sigs = [Signed {
            payload: PAYLOAD,
            signature: SIGNATURE,
        }];
        assert_eq!(verify(&sigs, &signed(), &trusted()), Ok(()));
        // Among several keys, and after a signature that fails.
        let both = keys(&[
            include_str!("testdata/other-p256.pub"),
            include_str!("testdata/ecdsa-p256.pub"),
        ]);
        let sigs = [
            Signed {
                payload: b"{}",
                signature: "AAAA",
            },
            Signed {
                payload: PAYLOAD,
                signature: SIGNATURE,
            },
        ];
        assert_eq!(verify(&sigs, &signed(), &both), Ok(()));
    }

    #[test]
    fn each_way_to_fail_is_named() {
        let one = |payload: &[u8], signature: &str, digest: &Digest, keys: &[TrustedKey]| {
            verify(&[Signed { payload, signature }], digest, keys)
        };
        assert_eq!(
            verify(&[], &signed(), &trusted()),
            Err(Refusal::NoSignature)
        );
        let other_key = keys(&[include_str!("testdata/other-p256.pub")]);
        assert_eq!(
            one(PAYLOAD, SIGNATURE, &signed(), &other_key),
            Err(Refusal::UntrustedKey)
        );
        let mut tampered = PAYLOAD.to_vec();
        tampered[20] ^= 1;
        assert_eq!(
            one(&tampered, SIGNATURE, &signed(), &trusted()),
            Err(Refusal::UntrustedKey),
            "an altered payload verifies under no key"
        );
        let elsewhere = Digest::sha256_of(b"another manifest");
        assert_eq!(
            one(PAYLOAD, SIGNATURE, &elsewhere, &trusted()),
            Err(Refusal::OtherDigest(signed()))
        );
        assert!(matches!(
            one(PAYLOAD, "not base64!", &signed(), &trusted()),
            Err(Refusal::BadSignature(_))
        ));
    }
}
