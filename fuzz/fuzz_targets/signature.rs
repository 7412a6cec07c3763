//! A cosign classic-layout signature (a payload, then a line with the annotation's text): any
//! bytes are checked without a panic, and nothing made up verifies under the trusted key; the
//! one real signature (the seed) verifies for the digest it names, and for no other.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wharf::oci::Digest;
use wharf::policy::classic::{verify, Signed};
use wharf::policy::{Refusal, TrustedKey};

const KEY: &str = include_str!("../../src/policy/testdata/ecdsa-p256.pub");
const REAL: &[u8] = include_bytes!("../../src/policy/testdata/payload.json");
const REAL_SIGNATURE: &str = include_str!("../../src/policy/testdata/payload.ecdsa.sig");

fuzz_target!(|input: &[u8]| {
    let key = TrustedKey::from_pem(Path::new("fuzz"), KEY).expect("the test key parses");
    let (payload, signature) = match input.iter().rposition(|&b| b == b'\n') {
        Some(at) => (
            &input[..at],
            String::from_utf8_lossy(&input[at + 1..]).into_owned(),
        ),
        None => (input, String::new()),
    };
    let signed = [Signed {
        payload,
        signature: &signature,
    }];
    let named = Digest::sha256_of(b"manifest");
    let verdict = verify(&signed, &named, std::slice::from_ref(&key));
    let genuine = payload == REAL && signature.trim() == REAL_SIGNATURE.trim();
    assert_eq!(verdict.is_ok(), genuine, "{verdict:?}");
    if genuine {
        let elsewhere = Digest::sha256_of(b"elsewhere");
        assert_eq!(
            verify(&signed, &elsewhere, &[key]),
            Err(Refusal::OtherDigest(named))
        );
    }
});
