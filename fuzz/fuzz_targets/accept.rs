//! A client's `Accept` headers (one per line): any set parses without a panic, the value wharf
//! sends upstream on the client's behalf is a valid header, and it accepts exactly what the
//! client accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::oci::media::{self, Accept};

fuzz_target!(|input: &str| {
    // Only what the server reads of a header: values whose text is visible ASCII.
    let values: Vec<&str> = input
        .lines()
        .filter(|line| http::HeaderValue::from_str(line).is_ok_and(|v| v.to_str().is_ok()))
        .collect();
    let accept = Accept::parse(values.iter().copied());
    let sent = accept.header_value();
    assert!(http::HeaderValue::from_str(&sent).is_ok(), "{sent:?}");
    let again = Accept::parse([sent.as_str()]);
    let named = values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|item| item.split(';').next().unwrap_or("").trim())
        .chain([media::OCI_INDEX, media::OCI_MANIFEST, "application/x-other"]);
    for media_type in named {
        assert_eq!(
            accept.accepts(media_type),
            again.accepts(media_type),
            "{media_type:?} in {values:?}, sent as {sent:?}"
        );
    }
});
