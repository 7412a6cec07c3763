//! Properties of the parsers that see outside bytes: whatever the input, they never panic, and
//! what they accept prints back to the very same text (so a value that reaches the cache or an
//! upstream URL is exactly what the client wrote, and nothing else).

use proptest::prelude::*;
use wharf::oci::{Digest, ImageRef, Reference, RepoName, RepoPattern};
use wharf::upstream::Challenge;

/// One name component: alphanumeric runs joined by `.`, `_`, `__` or dashes.
fn component() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[a-z0-9]{1,8}(([._]|__|-{1,3})[a-z0-9]{1,8}){0,2}").unwrap()
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(component(), 1..5).prop_map(|c| c.join("/"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn names_round_trip(name in name()) {
        prop_assume!(name.len() <= 255);
        let parsed: RepoName = name.parse().unwrap();
        prop_assert_eq!(parsed.to_string(), name);
    }

    #[test]
    fn any_accepted_name_prints_as_written(text in "\\PC{0,64}|[a-z0-9./_-]{0,300}") {
        if let Ok(parsed) = text.parse::<RepoName>() {
            prop_assert_eq!(parsed.to_string(), text.clone());
            prop_assert!(!text.contains("..") && !text.contains("//"));
        }
    }

    #[test]
    fn digests_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
        let text = format!("sha256:{}", hex::encode(bytes));
        let digest: Digest = text.parse().unwrap();
        prop_assert_eq!(digest.to_string(), text);
    }

    #[test]
    fn any_accepted_digest_or_reference_prints_as_written(text in "\\PC{0,80}|sha256:[0-9a-fA-F]{60,70}") {
        if let Ok(digest) = text.parse::<Digest>() {
            prop_assert_eq!(digest.to_string(), text.clone());
        }
        if let Ok(reference) = text.parse::<Reference>() {
            prop_assert_eq!(reference.to_string(), text.clone());
        }
    }

    #[test]
    fn tags_round_trip(tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}") {
        let reference: Reference = tag.parse().unwrap();
        prop_assert_eq!(reference.to_string(), tag);
    }

    #[test]
    fn image_refs_never_panic_and_reparse(text in "\\PC{0,100}") {
        if let Ok(image) = text.parse::<ImageRef>() {
            let again: ImageRef = image.to_string().parse().unwrap();
            prop_assert_eq!(again.to_string(), image.to_string());
        }
    }

    #[test]
    fn a_pattern_without_wildcards_matches_exactly_its_name(name in name(), other in name()) {
        prop_assume!(name.len() <= 255 && other.len() <= 255);
        let pattern: RepoPattern = name.parse().unwrap();
        prop_assert!(pattern.matches(&name.parse().unwrap()));
        prop_assert_eq!(pattern.matches(&other.parse().unwrap()), name == other);
        let everything: RepoPattern = "*".parse().unwrap();
        prop_assert!(everything.matches(&other.parse().unwrap()));
    }

    #[test]
    fn challenges_never_panic(text in "\\PC{0,200}") {
        let _ = Challenge::parse(&text);
    }

    #[test]
    fn bearer_challenges_round_trip(
        realm in "https://[a-z]{1,10}(\\.[a-z]{1,5}){0,2}/[a-z/]{0,10}",
        service in "[ -~]{0,20}",
        scope in "repository:[a-z/]{1,20}:pull(,push)?",
    ) {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let header = format!(
            "Bearer realm=\"{}\",service=\"{}\",scope=\"{}\"",
            quote(&realm), quote(&service), quote(&scope)
        );
        let parsed = Challenge::parse(&header);
        prop_assert_eq!(parsed, Some(Challenge::Bearer {
            realm,
            service: Some(service),
            scope: Some(scope),
        }));
    }
}
