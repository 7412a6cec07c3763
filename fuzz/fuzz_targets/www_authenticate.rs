//! An upstream's `WWW-Authenticate` challenge: any text parses to a challenge or to nothing,
//! without a panic (the parser walks quoted strings and escapes by hand).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::upstream::Challenge;

fuzz_target!(|header: &str| {
    let _ = Challenge::parse(header);
});
