//! An upstream's `Retry-After`: any text parses to a wait or to nothing, without a panic, and a
//! wait passed on to a client is never shorter than the one asked for.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use wharf::upstream::{as_retry_after, parse_retry_after};

fuzz_target!(|value: &str| {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    if let Some(wait) = parse_retry_after(value, now) {
        let passed_on: u64 = as_retry_after(wait).parse().expect("whole seconds");
        assert!(passed_on >= 1, "{value:?}");
        assert!(
            Duration::from_secs(passed_on) >= wait,
            "{value:?}: {passed_on} < {wait:?}"
        );
    }
});
