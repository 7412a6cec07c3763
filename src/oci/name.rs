//! Repository names, following the distribution spec grammar:
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`, at most 255 bytes.
//!
//! A name that parses contains no `..`, no empty component and no character outside
//! `[a-z0-9._/-]`, so it is safe inside a file path or an upstream URL.

use std::fmt;
use std::str::FromStr;

pub const MAX_NAME_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("invalid repository name component {0:?}")]
    BadComponent(String),
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let mut i = 0;
    loop {
        let run_start = i;
        while i < bytes.len() && is_alnum(bytes[i]) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        if let Some(bad) = s.split('/').find(|c| !valid_component(c)) {
            return Err(NameError::BadComponent(bad.chars().take(64).collect()));
        }
        Ok(RepoName(s.into()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) {
        assert_eq!(
            s.parse::<RepoName>().unwrap().as_str(),
            s,
            "{s} should parse"
        );
    }

    fn bad(s: &str) {
        assert!(s.parse::<RepoName>().is_err(), "{s:?} should be rejected");
    }

    #[test]
    fn accepts_spec_examples() {
        ok("alpine");
        ok("library/alpine");
        ok("acme/tools/e2e-app");
        ok("a.b_c__d---e/f0");
        ok("0/1/2");
    }

    #[test]
    fn rejects_uppercase_and_odd_characters() {
        bad("Library/alpine");
        bad("lib rary");
        bad("lib%2falpine");
        bad("lib:5000/x");
        bad("a\0b");
    }

    #[test]
    fn rejects_bad_separators() {
        bad("a..b");
        bad("a___b");
        bad("-a");
        bad("a-");
        bad("a.");
        bad("_a");
        bad(".a");
    }

    #[test]
    fn rejects_empty_components_and_traversal() {
        bad("");
        bad("/a");
        bad("a/");
        bad("a//b");
        bad("../etc/passwd");
        bad("a/../b");
        bad("a/./b");
    }

    #[test]
    fn enforces_length_limit() {
        let max = "a".repeat(MAX_NAME_LEN);
        ok(&max);
        assert_eq!(
            format!("{max}a").parse::<RepoName>(),
            Err(NameError::TooLong)
        );
    }
}
