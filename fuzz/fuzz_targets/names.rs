//! Repository names, tags and digest references, digests, image references and repository
//! patterns: whatever parses prints back to the same text and parses to the same value; a
//! pattern matches a name it spells out exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::oci::{Digest, ImageRef, Reference, RepoName, RepoPattern};

// The input is one line to parse every way, then a name for patterns to match.
fuzz_target!(|input: &str| {
    let (text, other) = input.split_once('\n').unwrap_or((input, "library/alpine"));
    if let Ok(name) = text.parse::<RepoName>() {
        assert_eq!(name.to_string(), text);
        assert!(text.len() <= 255);
        let pattern: RepoPattern = text.parse().expect("a name is a pattern");
        assert!(pattern.matches(&name));
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string(), text);
    }
    if let Ok(reference) = text.parse::<Reference>() {
        assert_eq!(reference.to_string(), text);
    }
    if let Ok(image) = text.parse::<ImageRef>() {
        let printed = image.to_string();
        assert_eq!(printed.parse::<ImageRef>().unwrap(), image, "{printed}");
    }
    // Patterns come from the operator, names from clients: matching must stay cheap for both.
    if let (Ok(pattern), Ok(name)) = (text.parse::<RepoPattern>(), other.parse::<RepoName>()) {
        let _ = pattern.matches(&name);
    }
});
