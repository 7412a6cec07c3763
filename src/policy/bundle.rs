//! Sigstore bundles, as cosign attaches them through the OCI 1.1 referrers API: a message
//! signature over the manifest's bytes, or a DSSE envelope of an in-toto statement whose
//! subject is the manifest's digest. Verified against the operator's keys only; keyless
//! verification (a Fulcio certificate, Rekor and timestamp proofs) is out of scope, so the
//! bundle's verification material is not read.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::keys::TrustedKey;
use super::refusal::Refusal;
use crate::oci::Digest;

/// The artifact type of a referrer that holds a bundle.
pub const ARTIFACT_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const IN_TOTO: &str = "application/vnd.in-toto+json";
const BUNDLE_TYPE_PREFIX: &str = "application/vnd.dev.sigstore.bundle";

/// Whether a layer's media type is a sigstore bundle (any version).
pub fn is_bundle_type(media_type: &str) -> bool {
    media_type.starts_with(BUNDLE_TYPE_PREFIX)
}

/// The tag that stands for the referrers API on registries without it: an index of the
/// referrers of `digest`, tagged `<algorithm>-<hex>`.
pub fn referrers_tag(digest: &Digest) -> String {
    format!("{}-{}", digest.algorithm().as_str(), digest.hex())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: MessageDigest,
    signature: String,
}

#[derive(Deserialize)]
struct MessageDigest {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Deserialize)]
struct Statement {
    subject: Vec<Subject>,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: std::collections::HashMap<String, String>,
}

fn bad(why: impl Into<String>) -> Refusal {
    Refusal::BadSignature(why.into())
}

fn base64(text: &str, what: &str) -> Result<Vec<u8>, Refusal> {
    STANDARD
        .decode(text.trim())
        .map_err(|_| bad(format!("the bundle's {what} is not base64")))
}

/// Whether the bundle `json` is a signature, by one of `keys`, of the manifest `digest` whose
/// bytes are `manifest`.
pub fn verify(
    json: &[u8],
    digest: &Digest,
    manifest: &[u8],
    keys: &[TrustedKey],
) -> Result<(), Refusal> {
    let bundle: Bundle =
        serde_json::from_slice(json).map_err(|e| bad(format!("not a sigstore bundle: {e}")))?;
    if !is_bundle_type(&bundle.media_type) {
        return Err(bad(format!(
            "a bundle of media type {:?}",
            bundle.media_type
        )));
    }
    match (bundle.message_signature, bundle.dsse_envelope) {
        (Some(message), None) => verify_message(&message, digest, manifest, keys),
        (None, Some(envelope)) => verify_envelope(&envelope, digest, keys),
        _ => Err(bad("a bundle holds one message signature or one envelope")),
    }
}

fn verify_message(
    message: &MessageSignature,
    digest: &Digest,
    manifest: &[u8],
    keys: &[TrustedKey],
) -> Result<(), Refusal> {
    let signature = base64(&message.signature, "signature")?;
    if !keys.iter().any(|k| k.verifies(manifest, &signature)) {
        return Err(Refusal::UntrustedKey);
    }
    // The signature is over these very bytes; the digest the bundle records must agree.
    let recorded = base64(&message.message_digest.digest, "message digest")?;
    let named = match message.message_digest.algorithm.as_str() {
        "SHA2_256" => format!("sha256:{}", hex::encode(&recorded)),
        "SHA2_512" => format!("sha512:{}", hex::encode(&recorded)),
        other => return Err(bad(format!("a message digest by {other}"))),
    };
    let named: Digest = named
        .parse()
        .map_err(|_| bad("the message digest has the wrong length"))?;
    if &named != digest {
        return Err(Refusal::OtherDigest(named));
    }
    Ok(())
}

/// DSSE's pre-authentication encoding: what an envelope's signatures sign.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn verify_envelope(
    envelope: &Envelope,
    digest: &Digest,
    keys: &[TrustedKey],
) -> Result<(), Refusal> {
    let payload = base64(&envelope.payload, "payload")?;
    let signed = pae(&envelope.payload_type, &payload);
    let mut verified = false;
    for signature in &envelope.signatures {
        let signature = base64(&signature.sig, "signature")?;
        verified |= keys.iter().any(|k| k.verifies(&signed, &signature));
    }
    if !verified {
        return Err(Refusal::UntrustedKey);
    }
    if envelope.payload_type != IN_TOTO {
        return Err(bad(format!(
            "an envelope of {:?}, not an in-toto statement",
            envelope.payload_type
        )));
    }
    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| bad(format!("the envelope's statement: {e}")))?;
    let algorithm = digest.algorithm().as_str();
    let subjects: Vec<&str> = statement
        .subject
        .iter()
        .filter_map(|s| s.digest.get(algorithm).map(String::as_str))
        .collect();
    if subjects.contains(&digest.hex()) {
        return Ok(());
    }
    match subjects
        .first()
        .and_then(|hex| format!("{algorithm}:{hex}").parse().ok())
    {
        Some(other) => Err(Refusal::OtherDigest(other)),
        None => Err(bad("the statement names no subject digest")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Made by npm's @sigstore/sign with the key pair in testdata (`make-bundles.js`), over the
    /// bytes `manifest`.
    const MESSAGE: &str = include_str!("testdata/bundle.message.json");
    const DSSE: &str = include_str!("testdata/bundle.dsse.json");
    const MANIFEST: &[u8] = include_bytes!("testdata/manifest");

    fn key(pem: &str) -> Vec<TrustedKey> {
        vec![TrustedKey::from_pem(Path::new("k"), pem).unwrap()]
    }

    fn trusted() -> Vec<TrustedKey> {
        key(include_str!("testdata/ecdsa-p256.pub"))
    }

    fn digest() -> Digest {
        Digest::sha256_of(MANIFEST)
    }

    #[test]
    fn bundles_made_by_sigstore_js_verify_under_their_key() {
        for bundle in [MESSAGE, DSSE] {
            assert_eq!(
                verify(bundle.as_bytes(), &digest(), MANIFEST, &trusted()),
                Ok(())
            );
            assert_eq!(
                verify(
                    bundle.as_bytes(),
                    &digest(),
                    MANIFEST,
                    &key(include_str!("testdata/other-p256.pub"))
                ),
                Err(Refusal::UntrustedKey)
            );
        }
    }

    #[test]
    fn a_bundle_for_other_bytes_or_another_digest_is_refused() {
        let other = Digest::sha256_of(b"another manifest");
        // The message signature is over the bytes: other bytes verify under no key.
        assert_eq!(
            verify(MESSAGE.as_bytes(), &other, b"another manifest", &trusted()),
            Err(Refusal::UntrustedKey)
        );
        assert_eq!(
            verify(DSSE.as_bytes(), &other, b"another manifest", &trusted()),
            Err(Refusal::OtherDigest(digest()))
        );
    }

    #[test]
    fn a_tampered_envelope_or_a_bundle_that_is_not_one_is_refused() {
        let mut envelope: serde_json::Value = serde_json::from_str(DSSE).unwrap();
        let payload = envelope["dsseEnvelope"]["payload"].as_str().unwrap();
        let mut statement = STANDARD.decode(payload).unwrap();
        statement[10] ^= 1;
        envelope["dsseEnvelope"]["payload"] = STANDARD.encode(statement).into();
        let tampered = serde_json::to_vec(&envelope).unwrap();
        assert_eq!(
            verify(&tampered, &digest(), MANIFEST, &trusted()),
            Err(Refusal::UntrustedKey)
        );
        for not_one in [&b"{}"[..], b"[]", b"\xff", br#"{"mediaType":"x"}"#] {
            assert!(matches!(
                verify(not_one, &digest(), MANIFEST, &trusted()),
                Err(Refusal::BadSignature(_))
            ));
        }
    }
}
