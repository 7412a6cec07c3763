//! Repository name patterns for allow-lists: a repository name in which `*` stands for any run
//! of characters, `/` included (`myorg/*` matches `myorg/app` and `myorg/team/app`; `*/base`
//! matches `a/base`). Patterns are checked when the configuration is read, so a typo cannot
//! silently allow nothing, or everything.

use std::fmt;
use std::str::FromStr;

use super::name::{RepoName, MAX_NAME_LEN};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern(Box<str>);

impl RepoPattern {
    pub fn matches(&self, name: &RepoName) -> bool {
        glob(self.0.as_bytes(), name.as_str().as_bytes())
    }
}

/// Wildcard matching with backtracking to the last `*` only, so it runs in
/// O(pattern × name) at worst, whatever the input.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

impl FromStr for RepoPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return Err(format!(
                "repository pattern {s:?} must be 1 to {MAX_NAME_LEN} characters"
            ));
        }
        // With every `*` replaced by a letter, a pattern must be a valid name: this rejects
        // upper case, `//`, `..` and stray characters, which could never match.
        if s.replace('*', "x").parse::<RepoName>().is_err() {
            return Err(format!(
                "repository pattern {s:?} is not a repository name with `*` wildcards"
            ));
        }
        Ok(RepoPattern(s.into()))
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RepoPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RepoPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        let pattern: RepoPattern = pattern.parse().unwrap();
        pattern.matches(&name.parse().unwrap())
    }

    #[test]
    fn wildcards_span_any_characters() {
        assert!(matches("library/*", "library/alpine"));
        assert!(matches("myorg/*", "myorg/team/app"));
        assert!(matches("*/base", "a/base"));
        assert!(matches("*", "anything/at/all"));
        assert!(matches("exact/name", "exact/name"));
        assert!(matches("a*b*c", "a/xx/b/yy/c"));
        assert!(!matches("library/*", "libraryx/alpine"));
        assert!(!matches("library/*", "library"));
        assert!(!matches("exact/name", "exact/name2"));
        assert!(!matches("a*b*c", "a/xx/b/yy/d"));
    }

    #[test]
    fn a_pathological_pattern_is_still_fast() {
        let name = "a".repeat(250);
        let pattern = format!("{}b", "a*".repeat(60));
        let started = std::time::Instant::now();
        assert!(!matches(&pattern[..pattern.len().min(255)], &name));
        assert!(started.elapsed() < std::time::Duration::from_millis(100));
    }

    #[test]
    fn patterns_that_could_never_match_are_refused() {
        for bad in [
            "",
            "Library/*",
            "a//b",
            "a/../b",
            "a b",
            "/a",
            "a/",
            "a/%2f",
        ] {
            assert!(bad.parse::<RepoPattern>().is_err(), "{bad:?}");
        }
        assert!("**".parse::<RepoPattern>().is_ok());
    }
}
