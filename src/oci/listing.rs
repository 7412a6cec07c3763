//! The listings of the pull API: `tags/list` and `referrers/<digest>`, with only the query
//! parameters the spec defines for each, so nothing else a client sends reaches an upstream.

use bytes::Bytes;

use super::digest::Digest;

/// One page of a listing as the registry served it; `link` points to the next page.
#[derive(Debug, Clone)]
pub struct ListingPage {
    pub content_type: Option<String>,
    pub link: Option<String>,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Listing {
    /// `tags/list?n=&last=`.
    Tags {
        n: Option<String>,
        last: Option<String>,
    },
    /// `referrers/<digest>?artifactType=`.
    Referrers {
        digest: Digest,
        artifact_type: Option<String>,
    },
}

impl Listing {
    /// The path below `/v2/<name>/`.
    pub fn path(&self) -> String {
        match self {
            Listing::Tags { .. } => "tags/list".to_owned(),
            Listing::Referrers { digest, .. } => format!("referrers/{digest}"),
        }
    }

    /// The query parameters, in the spec's order.
    pub fn query(&self) -> Vec<(&'static str, &str)> {
        let pairs: [(&'static str, &Option<String>); 2] = match self {
            Listing::Tags { n, last } => [("n", n), ("last", last)],
            Listing::Referrers { artifact_type, .. } => {
                [("artifactType", artifact_type), ("", &None)]
            }
        };
        pairs
            .into_iter()
            .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_queries() {
        let tags = Listing::Tags {
            n: Some("10".into()),
            last: None,
        };
        assert_eq!(tags.path(), "tags/list");
        assert_eq!(tags.query(), [("n", "10")]);
        let digest = Digest::sha256_of(b"x");
        let referrers = Listing::Referrers {
            digest: digest.clone(),
            artifact_type: Some("application/vnd.example".into()),
        };
        assert_eq!(referrers.path(), format!("referrers/{digest}"));
        assert_eq!(
            referrers.query(),
            [("artifactType", "application/vnd.example")]
        );
    }
}
