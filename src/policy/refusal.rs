//! Why a manifest's signatures do not let it through.

use std::fmt;

use crate::oci::Digest;

/// Why a manifest is not served (or, in `warn` mode, served anyway and counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NoSignature,
    /// No trusted key verifies any signature: signed by another key, or altered.
    UntrustedKey,
    /// A trusted signature of another manifest.
    OtherDigest(Digest),
    /// A signature or payload that cannot be read.
    BadSignature(String),
}

impl Refusal {
    /// How much a refusal tells: the most telling of several signatures' is reported.
    fn rank(&self) -> u8 {
        match self {
            Refusal::NoSignature => 0,
            Refusal::BadSignature(_) => 1,
            Refusal::UntrustedKey => 2,
            Refusal::OtherDigest(_) => 3,
        }
    }

    /// The more telling of two refusals.
    pub fn or(self, other: Refusal) -> Refusal {
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// Its name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoSignature => "no_signature",
            Refusal::UntrustedKey => "untrusted_key",
            Refusal::OtherDigest(_) => "other_digest",
            Refusal::BadSignature(_) => "bad_signature",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoSignature => write!(f, "no signature"),
            Refusal::UntrustedKey => write!(
                f,
                "no signature verifies under a trusted key (signed by an unknown key, or altered)"
            ),
            Refusal::OtherDigest(d) => write!(f, "the signature is for another digest ({d})"),
            Refusal::BadSignature(why) => write!(f, "bad signature: {why}"),
        }
    }
}
