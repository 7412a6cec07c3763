//! Signed images on the fake registry, laid out as cosign lays them out: a key pair made here
//! (ECDSA P-256, its public half written as `cosign generate-key-pair` writes it), images,
//! classic `.sig` tags, and sigstore bundles attached as referrers or under the fallback tag.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::{random_bytes, sha256, FakeRegistry, OCI_INDEX, OCI_MANIFEST};

const PAYLOAD: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";
/// The SubjectPublicKeyInfo of a P-256 key, up to its 65-byte point.
const P256_SPKI_PREFIX: &str = "3059301306072a8648ce3d020106082a8648ce3d030107034200";

pub struct Signer {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    pub fn generate() -> Signer {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Signer { pair, rng }
    }

    /// Writes the public key as PEM into `dir`, as `name`.
    pub fn write_public(&self, dir: &Path, name: &str) -> PathBuf {
        let mut der = hex::decode(P256_SPKI_PREFIX).unwrap();
        der.extend_from_slice(self.pair.public_key().as_ref());
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        );
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// A signature of `message`, base64.
    pub fn sign(&self, message: &[u8]) -> String {
        STANDARD.encode(self.pair.sign(&self.rng, message).unwrap().as_ref())
    }
}

/// An image manifest with one small layer, tagged `tag` in `repo`: (digest, body).
pub fn push_image(registry: &FakeRegistry, repo: &str, tag: &str, seed: u64) -> (String, String) {
    let config = registry.add_blob(format!(r#"{{"seed":{seed}}}"#).into());
    let layer = registry.add_blob(random_bytes(4096, seed));
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": format!(r#"{{"seed":{seed}}}"#).len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 4096}],
    })
    .to_string();
    (registry.add_manifest(repo, tag, OCI_MANIFEST, &body), body)
}

/// An index of `children` (digest, body of an image manifest), tagged `tag`: its digest.
pub fn push_index(
    registry: &FakeRegistry,
    repo: &str,
    tag: &str,
    children: &[(String, String)],
) -> String {
    let platforms = ["amd64", "arm64", "s390x"];
    let manifests: Vec<_> = children
        .iter()
        .zip(platforms)
        .map(|((digest, body), arch)| {
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": body.len(),
                   "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    let body =
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}).to_string();
    registry.add_manifest(repo, tag, OCI_INDEX, &body)
}

/// The tag of `digest`'s classic signatures.
pub fn sig_tag(digest: &str) -> String {
    format!("{}.sig", digest.replace(':', "-"))
}

/// A classic cosign signature by `signer`, tagged `sha256-<hex>.sig` beside `digest`, whose
/// payload names `names` (the digest itself, unless a test wants another).
pub fn sign_classic(
    registry: &FakeRegistry,
    repo: &str,
    digest: &str,
    names: &str,
    signer: &Signer,
) {
    let payload = json!({
        "critical": {
            "identity": {"docker-reference": format!("example.test/{repo}")},
            "image": {"docker-manifest-digest": names},
            "type": "cosign container image signature",
        },
        "optional": null,
    })
    .to_string();
    let signature = signer.sign(payload.as_bytes());
    let payload_digest = registry.add_blob(payload.clone().into());
    let config = registry.add_blob("{}".into());
    let body = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": [{"mediaType": PAYLOAD, "digest": payload_digest, "size": payload.len(),
                    "annotations": {"dev.cosignproject.cosign/signature": signature}}],
    })
    .to_string();
    registry.add_manifest(repo, &sig_tag(digest), OCI_MANIFEST, &body);
}

/// Where a bundle is found: the referrers API, or the fallback tag `sha256-<hex>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Referrers,
    FallbackTag,
}

/// A sigstore bundle holding `signer`'s message signature over `manifest` (the bytes of
/// `digest`), attached as a referrer of it.
pub fn attach_bundle(
    registry: &FakeRegistry,
    repo: &str,
    digest: &str,
    manifest: &str,
    signer: &Signer,
    how: Attach,
) {
    let bundle = json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "test"}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": STANDARD.encode(Sha256::digest(manifest.as_bytes()))},
            "signature": signer.sign(manifest.as_bytes()),
        },
    })
    .to_string();
    let bundle_digest = registry.add_blob(bundle.clone().into());
    let empty = registry.add_blob("{}".into());
    let referrer = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": BUNDLE,
        "config": {"mediaType": EMPTY_CONFIG, "digest": empty, "size": 2},
        "layers": [{"mediaType": BUNDLE, "digest": bundle_digest, "size": bundle.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()},
    })
    .to_string();
    let referrer_digest = registry.add_untagged_manifest(OCI_MANIFEST, &referrer);
    let descriptor = json!({"mediaType": OCI_MANIFEST, "digest": referrer_digest,
                            "size": referrer.len(), "artifactType": BUNDLE});
    match how {
        Attach::Referrers => registry.add_referrer(repo, digest, descriptor),
        Attach::FallbackTag => {
            let index =
                json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]})
                    .to_string();
            registry.add_manifest(repo, &digest.replace(':', "-"), OCI_INDEX, &index);
        }
    }
    assert_eq!(sha256(referrer.as_bytes()), referrer_digest);
}
