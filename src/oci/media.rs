//! Manifest media types and `Accept` negotiation.

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// What wharf asks the upstream for when the client's wishes do not matter (a fetch by digest) or
/// were not stated: every manifest type a current client can use.
pub const ALL_MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Whether a media type names a multi-platform document (an index or a manifest list). A registry
/// answers a tag with the index whenever the client accepts it, so an index wins over a
/// single-platform manifest stored for the same tag.
pub fn is_index(media_type: &str) -> bool {
    INDEX_TYPES
        .iter()
        .any(|t| t.eq_ignore_ascii_case(media_type))
}

/// The multi-platform media types.
pub const INDEX_TYPES: [&str; 2] = [OCI_INDEX, DOCKER_MANIFEST_LIST];

/// The media types a client said it accepts, from all of its `Accept` headers. Two clients that
/// accept the same set compare equal whatever order they listed it in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Accept {
    /// Lowercase, sorted, without duplicates.
    types: Vec<String>,
    any: bool,
}

impl Accept {
    /// Parses every `Accept` header value (each may hold a comma-separated list with
    /// parameters). No header at all, or `*/*`, means anything is acceptable.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut accept = Accept::default();
        for value in values {
            for item in value.split(',') {
                let media_type = item.split(';').next().unwrap_or("").trim();
                if media_type.is_empty() {
                    continue;
                }
                // q=0 means "not acceptable"; anything else only orders preferences, which a
                // registry ignores.
                let refused = item
                    .split(';')
                    .skip(1)
                    .any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0"));
                if refused {
                    continue;
                }
                if media_type == "*/*" || media_type == "application/*" {
                    accept.any = true;
                } else {
                    accept.types.push(media_type.to_ascii_lowercase());
                }
            }
        }
        accept.types.sort_unstable();
        accept.types.dedup();
        if accept.types.is_empty() {
            accept.any = true;
        }
        accept
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        self.any
            || self
                .types
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type))
    }

    /// Whether every multi-platform type `self` accepts is accepted by `other` too: then an
    /// answer the upstream gave `other` cannot be one it would have replaced with an index for
    /// `self`.
    pub fn accepts_no_index_beyond(&self, other: &Accept) -> bool {
        INDEX_TYPES
            .iter()
            .all(|t| !self.accepts(t) || other.accepts(t))
    }

    /// The value to send upstream on the client's behalf.
    pub fn header_value(&self) -> String {
        if self.any {
            let mut all = ALL_MANIFEST_TYPES.to_owned();
            for t in &self.types {
                if !ALL_MANIFEST_TYPES.contains(t.as_str()) {
                    all.push_str(", ");
                    all.push_str(t);
                }
            }
            all.push_str(", */*");
            all
        } else {
            self.types.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_header_accepts_anything() {
        let a = Accept::parse([]);
        assert!(a.accepts(OCI_INDEX));
        assert!(a.header_value().contains(DOCKER_MANIFEST));
    }

    #[test]
    fn merges_several_headers_and_lists() {
        let a = Accept::parse([
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.manifest.v1+json; q=0.9, application/json",
        ]);
        assert!(a.accepts(DOCKER_MANIFEST));
        assert!(a.accepts(OCI_MANIFEST));
        assert!(!a.accepts(OCI_INDEX));
        assert!(!a.accepts(DOCKER_MANIFEST_LIST));
    }

    #[test]
    fn wildcard_and_q_zero() {
        assert!(Accept::parse(["*/*"]).accepts(OCI_INDEX));
        let a = Accept::parse([&format!("{OCI_MANIFEST}, {OCI_INDEX};q=0") as &str]);
        assert!(!a.accepts(OCI_INDEX));
        assert!(a.accepts(OCI_MANIFEST));
    }

    #[test]
    fn media_types_compare_case_insensitively() {
        let a = Accept::parse(["Application/VND.OCI.image.manifest.v1+json"]);
        assert!(a.accepts(OCI_MANIFEST));
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = Accept::parse([&format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}") as &str]);
        let b = Accept::parse([DOCKER_MANIFEST, OCI_MANIFEST, DOCKER_MANIFEST]);
        assert_eq!(a, b);
    }

    #[test]
    fn index_coverage() {
        let single = Accept::parse([DOCKER_MANIFEST]);
        let docker = Accept::parse([&format!("{DOCKER_MANIFEST}, {DOCKER_MANIFEST_LIST}") as &str]);
        let everything = Accept::parse([]);
        assert!(single.accepts_no_index_beyond(&docker));
        assert!(docker.accepts_no_index_beyond(&everything));
        assert!(!docker.accepts_no_index_beyond(&single));
        assert!(!everything.accepts_no_index_beyond(&docker));
    }

    #[test]
    fn indexes_are_recognised() {
        assert!(is_index(OCI_INDEX));
        assert!(is_index(DOCKER_MANIFEST_LIST));
        assert!(!is_index(OCI_MANIFEST));
    }
}
