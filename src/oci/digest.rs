//! Content digests (`algorithm:hex`) and a streaming verifier.
//!
//! Only registered algorithms with lowercase hex encodings are accepted: a digest that parses is
//! safe to use as a file name, which is what lets the cache key its files by digest.

use std::fmt;
use std::str::FromStr;

use sha2::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated content digest such as `sha256:9f86d0...`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must have the form algorithm:hex")]
    Malformed,
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    #[error("{algorithm} digest must be {expected} lowercase hex characters")]
    BadEncoding {
        algorithm: &'static str,
        expected: usize,
    },
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The encoded part, lowercase hex.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut verifier = Verifier::new(Algorithm::Sha256);
        verifier.update(bytes);
        verifier.finish()
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, hex) = s.split_once(':').ok_or(DigestError::Malformed)?;
        let algorithm = match algorithm {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            "" => return Err(DigestError::Malformed),
            other => return Err(DigestError::UnsupportedAlgorithm(other.to_owned())),
        };
        let well_formed = hex.len() == algorithm.hex_len()
            && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !well_formed {
            return Err(DigestError::BadEncoding {
                algorithm: algorithm.as_str(),
                expected: algorithm.hex_len(),
            });
        }
        Ok(Digest {
            algorithm,
            hex: hex.into(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// Hashes bytes as they stream past and yields the digest they add up to.
pub enum Verifier {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Verifier {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Verifier::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Verifier::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Verifier::Sha256(h) => h.update(bytes),
            Verifier::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Verifier::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Verifier::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest {
            algorithm,
            hex: hex.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_prints_sha256() {
        let d: Digest = EMPTY_SHA256.parse().unwrap();
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.to_string(), EMPTY_SHA256);
    }

    #[test]
    fn parses_sha512() {
        let s = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(s.parse::<Digest>().unwrap().to_string(), s);
    }

    #[test]
    fn rejects_uppercase_hex() {
        let s = EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256");
        assert!(matches!(
            s.parse::<Digest>(),
            Err(DigestError::BadEncoding { .. })
        ));
    }

    #[test]
    fn rejects_wrong_lengths() {
        assert!("sha256:abc".parse::<Digest>().is_err());
        let long = format!("{EMPTY_SHA256}0");
        assert!(long.parse::<Digest>().is_err());
        assert!(format!("sha512:{}", "a".repeat(64))
            .parse::<Digest>()
            .is_err());
    }

    #[test]
    fn rejects_non_hex_and_path_tricks() {
        let bad = format!("sha256:{}", "g".repeat(64));
        assert!(bad.parse::<Digest>().is_err());
        let dots = format!("sha256:../{}", "a".repeat(61));
        assert!(dots.parse::<Digest>().is_err());
    }

    #[test]
    fn rejects_unknown_algorithm_and_missing_colon() {
        assert_eq!(
            "md5:abcd".parse::<Digest>(),
            Err(DigestError::UnsupportedAlgorithm("md5".into()))
        );
        assert_eq!("sha256".parse::<Digest>(), Err(DigestError::Malformed));
        assert_eq!(":abc".parse::<Digest>(), Err(DigestError::Malformed));
        assert!("".parse::<Digest>().is_err());
    }

    #[test]
    fn verifier_matches_known_vectors() {
        assert_eq!(Digest::sha256_of(b"").to_string(), EMPTY_SHA256);
        let mut v = Verifier::new(Algorithm::Sha256);
        v.update(b"hel");
        v.update(b"lo");
        assert_eq!(v.finish(), Digest::sha256_of(b"hello"));
    }
}
