//! The operator's trusted public keys: PEM `PUBLIC KEY` blocks (SubjectPublicKeyInfo, what
//! `cosign generate-key-pair` and `openssl pkey -pubout` write), parsed with the `spki` crate
//! and checked with ring, the project's one crypto library.

use std::path::{Path, PathBuf};

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use sha2::{Digest as _, Sha256};
use spki::der::asn1::ObjectIdentifier;
use spki::{DecodePublicKey, SubjectPublicKeyInfoRef};

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// Why a key file cannot be trusted.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// What a key verifies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA over P-256 with SHA-256, DER signatures (cosign's default).
    EcdsaP256,
    Ed25519,
    /// RSA with SHA-256, PKCS #1 v1.5 or PSS signatures.
    Rsa,
}

/// A public key signatures are checked against.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// The file it came from, for messages.
    pub path: PathBuf,
    pub kind: KeyKind,
    /// The key itself, as ring takes it: the SubjectPublicKeyInfo's bit string.
    public: Vec<u8>,
    /// SHA-256 of the whole SubjectPublicKeyInfo: names the key in a set of keys.
    pub fingerprint: [u8; 32],
}

impl TrustedKey {
    /// Reads the first `PUBLIC KEY` block of a PEM file.
    pub fn load(path: &Path) -> Result<TrustedKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        TrustedKey::from_pem(path, &text)
    }

    pub fn from_pem(path: &Path, text: &str) -> Result<TrustedKey, KeyError> {
        let invalid = |reason: String| KeyError::Invalid {
            path: path.to_owned(),
            reason,
        };
        let der = spki::Document::from_public_key_pem(text)
            .map_err(|e| invalid(format!("not a PEM PUBLIC KEY block: {e}")))?;
        let info = SubjectPublicKeyInfoRef::try_from(der.as_bytes())
            .map_err(|e| invalid(format!("not a public key: {e}")))?;
        let oid = info.algorithm.oid;
        let kind = if oid == EC_PUBLIC_KEY {
            let curve = info
                .algorithm
                .parameters_oid()
                .map_err(|e| invalid(format!("an EC key without a named curve: {e}")))?;
            if curve != P256 {
                return Err(invalid(format!(
                    "an EC key on curve {curve}; only P-256 (prime256v1) is supported"
                )));
            }
            KeyKind::EcdsaP256
        } else if oid == ED25519 {
            KeyKind::Ed25519
        } else if oid == RSA {
            KeyKind::Rsa
        } else {
            return Err(invalid(format!(
                "a key of algorithm {oid}; ECDSA P-256, Ed25519 and RSA are supported"
            )));
        };
        let public = info
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| invalid("the key's bit string has unused bits".into()))?
            .to_vec();
        Ok(TrustedKey {
            path: path.to_owned(),
            kind,
            public,
            fingerprint: Sha256::digest(der.as_bytes()).into(),
        })
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let with = |algorithm: &'static dyn VerificationAlgorithm| {
            UnparsedPublicKey::new(algorithm, &self.public)
                .verify(message, signature)
                .is_ok()
        };
        match self.kind {
            KeyKind::EcdsaP256 => with(&signature::ECDSA_P256_SHA256_ASN1),
            KeyKind::Ed25519 => with(&signature::ED25519),
            KeyKind::Rsa => {
                with(&signature::RSA_PKCS1_2048_8192_SHA256)
                    || with(&signature::RSA_PSS_2048_8192_SHA256)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn key(name: &str, pem: &str) -> TrustedKey {
        TrustedKey::from_pem(Path::new(name), pem).unwrap()
    }

    fn sig(b64: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap()
    }

    const PAYLOAD: &[u8] = include_bytes!("testdata/payload.json");

    /// Keys and signatures made by openssl (`ecparam -name prime256v1`, `genpkey -algorithm
    /// ed25519` and `rsa`; `dgst -sha256 -sign`, `pkeyutl -sign -rawin`): not by this code.
    #[test]
    fn signatures_made_by_openssl_verify_under_their_keys_only() {
        let ecdsa = key("ecdsa", include_str!("testdata/ecdsa-p256.pub"));
        let other = key("other", include_str!("testdata/other-p256.pub"));
        let ed25519 = key("ed25519", include_str!("testdata/ed25519.pub"));
        let rsa = key("rsa", include_str!("testdata/rsa.pub"));
        assert_eq!(
            (ecdsa.kind, ed25519.kind, rsa.kind),
            (KeyKind::EcdsaP256, KeyKind::Ed25519, KeyKind::Rsa)
        );
        let ecdsa_sig = sig(include_str!("testdata/payload.ecdsa.sig"));
        assert!(ecdsa.verifies(PAYLOAD, &ecdsa_sig));
        assert!(!other.verifies(PAYLOAD, &ecdsa_sig), "another key");
        assert!(
            !ecdsa.verifies(&PAYLOAD[1..], &ecdsa_sig),
            "another message"
        );
        assert!(ed25519.verifies(PAYLOAD, &sig(include_str!("testdata/payload.ed25519.sig"))));
        assert!(rsa.verifies(PAYLOAD, &sig(include_str!("testdata/payload.rsa.sig"))));
        assert!(!rsa.verifies(PAYLOAD, &ecdsa_sig));
        assert_ne!(ecdsa.fingerprint, other.fingerprint);
    }

    #[test]
    fn what_is_not_a_supported_public_key_is_refused_with_the_file_named() {
        let err = TrustedKey::from_pem(Path::new("/etc/wharf/k.pub"), "hello")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/wharf/k.pub") && err.contains("PEM"),
            "{err}"
        );
        // A private key is not a public one.
        let private =
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIHf0\n-----END PRIVATE KEY-----\n";
        assert!(TrustedKey::from_pem(Path::new("p"), private).is_err());
    }
}
