//! The `Range` header of a blob request: whatever parses resolves, for any blob size, to a
//! non-empty span inside the blob, or to "unsatisfiable".
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::server::range;

// The input is the blob's size in decimal, a newline, then the header's value.
fuzz_target!(|input: &str| {
    let Some((size, header)) = input.split_once('\n') else {
        return;
    };
    let Ok(size) = size.parse::<u64>() else {
        return;
    };
    if let Some(range) = range::parse(header) {
        if let Some((start, end)) = range.resolve(size) {
            assert!(
                start < end && end <= size,
                "{header:?} of {size}: {start}..{end}"
            );
        }
    }
});
