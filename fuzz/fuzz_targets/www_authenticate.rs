//! An upstream's `WWW-Authenticate` challenge: any text parses to a challenge or to nothing,
//! the same way every time.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::upstream::Challenge;

fuzz_target!(|header: &str| {
    assert_eq!(Challenge::parse(header), Challenge::parse(header));
});
