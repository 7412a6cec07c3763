//! A sigstore bundle: any bytes are checked without a panic, and a bundle verifies under the
//! trusted key only when what its signature covers is a real bundle's (the seeds, made by npm's
//! @sigstore/sign over the manifest): the envelope's payload and type, or the message
//! signature. The rest of a bundle (its media type, its verification material) is not signed,
//! and may differ.
#![no_main]

use std::path::Path;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;
use wharf::oci::Digest;
use wharf::policy::{bundle, TrustedKey};

const KEY: &str = include_str!("../../src/policy/testdata/ecdsa-p256.pub");
const MANIFEST: &[u8] = include_bytes!("../../src/policy/testdata/manifest");
const MESSAGE: &[u8] = include_bytes!("../../src/policy/testdata/bundle.message.json");
const DSSE: &[u8] = include_bytes!("../../src/policy/testdata/bundle.dsse.json");

/// What a bundle's signature covers, read as wharf reads it (unknown fields ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Signed {
    dsse_envelope: Option<Envelope>,
    message_signature: Option<Message>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Message {
    signature: String,
    message_digest: MessageDigest,
}

#[derive(Deserialize)]
struct MessageDigest {
    digest: String,
}

fn decoded(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .expect("base64")
}

fn signed(bytes: &[u8]) -> Signed {
    serde_json::from_slice(bytes).expect("wharf read it")
}

fuzz_target!(|input: &[u8]| {
    let key = TrustedKey::from_pem(Path::new("fuzz"), KEY).expect("the test key parses");
    let verdict = bundle::verify(input, &Digest::sha256_of(MANIFEST), MANIFEST, &[key]);
    if verdict.is_err() {
        return;
    }
    let said = signed(input);
    match (said.dsse_envelope, said.message_signature) {
        (Some(envelope), _) => {
            let real = signed(DSSE).dsse_envelope.expect("the real envelope");
            assert_eq!(decoded(&envelope.payload), decoded(&real.payload));
            assert_eq!(envelope.payload_type, real.payload_type);
        }
        (None, Some(message)) => {
            let real = signed(MESSAGE)
                .message_signature
                .expect("the real signature");
            assert_eq!(decoded(&message.signature), decoded(&real.signature));
            assert_eq!(
                decoded(&message.message_digest.digest),
                decoded(&real.message_digest.digest)
            );
        }
        (None, None) => panic!("verified with nothing signed"),
    }
});
