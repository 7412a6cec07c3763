//! A client's `Authorization` header and the credential files: any bytes parse or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::auth::{Credentials, Presented};

// The input is the header's value, a newline, then a credentials file.
fuzz_target!(|input: &[u8]| {
    let (header, file) = match input.iter().position(|&b| b == b'\n') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => (input, &b""[..]),
    };
    let file = String::from_utf8_lossy(file);
    let file = file.as_ref();
    if let Some(Presented::Bearer(token)) = Presented::parse(header) {
        assert!(!token.is_empty());
    }
    let _ = Credentials::default().parse_htpasswd(file);
    let _ = Credentials::default().parse_tokens(file);
});
