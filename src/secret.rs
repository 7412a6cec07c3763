//! Secrets kept in files (the peer token, the webhook secret): the first line, trimmed, and
//! long enough to stand for a credential.

use std::path::{Path, PathBuf};

/// The shortest secret taken.
const MIN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: the secret must be at least {MIN_LEN} characters on its first line")]
    Short { what: &'static str, path: PathBuf },
}

/// The secret in the file at `path`, which the configuration calls `what`.
pub fn read(what: &'static str, path: &Path) -> Result<String, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::Read {
        what,
        path: path.to_owned(),
        source,
    })?;
    let secret = text.lines().next().unwrap_or("").trim();
    if secret.len() < MIN_LEN {
        return Err(SecretError::Short {
            what,
            path: path.to_owned(),
        });
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_the_first_line_and_must_be_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  0123456789abcdef-peer  \nignored\n").unwrap();
        assert_eq!(read("a.token", &path).unwrap(), "0123456789abcdef-peer");
        std::fs::write(&path, "short\n").unwrap();
        let err = read("a.token", &path).unwrap_err().to_string();
        assert!(
            err.contains("at least 16") && err.contains("a.token"),
            "{err}"
        );
        let err = read("a.token", &dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
