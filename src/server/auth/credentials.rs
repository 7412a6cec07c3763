//! The credentials files: an htpasswd file of bcrypt hashes and a file of SHA-256 hashes of
//! bearer tokens (`sha256:<hex> label` lines, the format admin tokens share), parsed into
//! [`Credentials`] with a precise error per bad line.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// Credentials a client presented in its `Authorization` header.
#[derive(PartialEq, Eq)]
pub enum Presented {
    Basic { user: String, password: String },
    Bearer(String),
}

impl Presented {
    /// Parses an `Authorization` value: `Basic <base64 user:password>` or `Bearer <token>`,
    /// the scheme in any case. `None` for anything else.
    pub fn parse(value: &[u8]) -> Option<Presented> {
        let value = std::str::from_utf8(value).ok()?.trim();
        let (scheme, rest) = value.split_once(' ')?;
        let rest = rest.trim();
        if rest.is_empty() {
            return None;
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            Some(Presented::Basic {
                user: user.to_owned(),
                password: password.to_owned(),
            })
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Presented::Bearer(rest.to_owned()))
        } else {
            None
        }
    }
}

/// Shows who, never the secret.
impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Presented::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

/// Why a line of a credentials file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {0}: expected user:hash")]
    NotUserAndHash(usize),
    #[error("line {0}: empty user name")]
    EmptyUser(usize),
    #[error(
        "line {line}: user {user:?} has a hash that is not bcrypt (create it with htpasswd -B)"
    )]
    NotBcrypt { line: usize, user: String },
    #[error("line {line}: user {user:?} is listed twice")]
    UserTwice { line: usize, user: String },
    #[error(
        "line {0}: expected sha256:<64 hex digits> (printf %s \"$token\" | sha256sum), then an \
         optional label"
    )]
    NotTokenHash(usize),
    #[error("line {0}: this token is listed twice")]
    TokenTwice(usize),
}

/// Why the credentials files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", file.display())]
    Line {
        file: PathBuf,
        #[source]
        source: LineError,
    },
}

/// What the two files hold.
#[derive(Default)]
pub struct Credentials {
    /// User → bcrypt hash.
    pub(super) users: HashMap<String, String>,
    /// SHA-256 of each token, and the name the access log gives its bearer.
    pub(super) tokens: Vec<([u8; 32], Arc<str>)>,
}

impl Credentials {
    /// Reads the files `files` names, or says precisely why they cannot be used.
    pub fn read(files: &AuthConfig) -> Result<Credentials, LoadError> {
        read(files)
    }

    /// Parses an htpasswd file. Only bcrypt is accepted: the other htpasswd hashes (MD5-crypt,
    /// SHA-1, crypt, plain) are fast enough to brute-force from a leaked file.
    pub fn parse_htpasswd(&mut self, text: &str) -> Result<(), LineError> {
        for (line_no, line) in entries(text) {
            let Some((user, hash)) = line.split_once(':') else {
                return Err(LineError::NotUserAndHash(line_no));
            };
            if user.is_empty() {
                return Err(LineError::EmptyUser(line_no));
            }
            if !is_bcrypt(hash) {
                return Err(LineError::NotBcrypt {
                    line: line_no,
                    user: user.to_owned(),
                });
            }
            if self
                .users
                .insert(user.to_owned(), hash.to_owned())
                .is_some()
            {
                return Err(LineError::UserTwice {
                    line: line_no,
                    user: user.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Parses a token file: `sha256:<64 hex>` lines, each optionally followed by a label.
    pub fn parse_tokens(&mut self, text: &str) -> Result<(), LineError> {
        for (line_no, line) in entries(text) {
            let (hash, label) = line
                .split_once(char::is_whitespace)
                .map_or((line, ""), |(h, l)| (h, l.trim()));
            let hash = hash
                .strip_prefix("sha256:")
                .and_then(|hex| <[u8; 32]>::try_from(hex::decode(hex).ok()?).ok())
                .ok_or(LineError::NotTokenHash(line_no))?;
            if self.tokens.iter().any(|(h, _)| *h == hash) {
                return Err(LineError::TokenTwice(line_no));
            }
            let label = if label.is_empty() {
                format!("token:{}", &hex::encode(hash)[..8])
            } else {
                label.to_owned()
            };
            self.tokens.push((hash, label.into()));
        }
        Ok(())
    }

    /// The label of the token `presented`, compared with every stored hash in constant time.
    pub fn token(&self, presented: &str) -> Option<Arc<str>> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (stored, label) in &self.tokens {
            if bool::from(stored.ct_eq(&hash)) {
                found = Some(label.clone());
            }
        }
        found
    }
}

/// The lines of a credentials file that say something, trimmed, with their line numbers:
/// blank lines and `#` comments are skipped.
fn entries(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// Counts, never hashes.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("users", &self.users.len())
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a cost from 4 to 31, then 53 characters of salt and hash.
/// (`$2x$`, from a buggy old implementation, would not verify as its author expects.)
fn is_bcrypt(hash: &str) -> bool {
    let b = hash.as_bytes();
    b.len() == 60
        && b.starts_with(b"$2")
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && bcrypt_cost(hash).is_some_and(|cost| (4..=31).contains(&cost))
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/'))
}

/// The cost of a bcrypt hash: the two digits after `$2?$`.
pub(super) fn bcrypt_cost(hash: &str) -> Option<u32> {
    let digits = hash.get(4..6)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn read(files: &AuthConfig) -> Result<Credentials, LoadError> {
    let mut credentials = Credentials::default();
    let text = |path: &Path| {
        fs::read_to_string(path).map_err(|source| LoadError::Read {
            file: path.to_owned(),
            source,
        })
    };
    fn in_file(path: &Path) -> impl FnOnce(LineError) -> LoadError + '_ {
        move |source| LoadError::Line {
            file: path.to_owned(),
            source,
        }
    }
    if let Some(path) = &files.htpasswd {
        credentials
            .parse_htpasswd(&text(path)?)
            .map_err(in_file(path))?;
    }
    if let Some(path) = &files.tokens {
        credentials
            .parse_tokens(&text(path)?)
            .map_err(in_file(path))?;
    }
    Ok(credentials)
}
