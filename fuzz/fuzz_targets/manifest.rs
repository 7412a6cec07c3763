//! A manifest body from an upstream, under each media type wharf knows: parsed to the blobs and
//! manifests it refers to, or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::oci::manifest::ManifestDoc;

const MEDIA_TYPES: [&str; 5] = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/octet-stream",
];

// The input is a media type selector byte, then the body.
fuzz_target!(|input: &[u8]| {
    let Some((&kind, body)) = input.split_first() else {
        return;
    };
    let _ = ManifestDoc::parse(MEDIA_TYPES[usize::from(kind) % MEDIA_TYPES.len()], body);
});
