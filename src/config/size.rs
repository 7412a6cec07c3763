//! Byte counts as people write them in `mirror.toml`.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A byte count written the way people write it: `"20GiB"`, `"500 MB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        bytesize::ByteSize::from_str(s.trim())
            .map(|b| Size(b.as_u64()))
            .map_err(|e| format!("invalid size {s:?}: {e}"))
    }
}

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Exact, so that printing and re-reading a config never changes it.
        let units = [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        let text = units
            .iter()
            .find(|(_, n)| self.0 >= *n && self.0 % n == 0)
            .map_or_else(|| self.0.to_string(), |(u, n)| format!("{}{u}", self.0 / n));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}
