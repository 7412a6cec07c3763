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

/// The manifest types wharf knows by name, one bit each in [`Accept`].
const KNOWN: [&str; 4] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// The media types a client said it accepts, from all of its `Accept` headers. Two clients that
/// accept the same set compare equal whatever order they listed it in. The manifest types every
/// client sends are kept as bits, so parsing and comparing the usual headers allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
pub struct Accept {
    /// Bit i set: `KNOWN[i]` is accepted.
    known: u8,
    /// Other media types, lowercase, sorted, without duplicates.
    others: Vec<Box<str>>,
    any: bool,
}

impl Accept {
    /// Every manifest type a current client can use (what [`ALL_MANIFEST_TYPES`] names).
    pub fn all_manifests() -> Accept {
        Accept {
            known: (1 << KNOWN.len()) - 1,
            others: Vec::new(),
            any: false,
        }
    }

    /// Parses every `Accept` header value (each may hold a comma-separated list with
    /// parameters). No header at all, or `*/*`, means anything is acceptable.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a str>) -> Accept {
        let mut accept = Accept::default();
        for value in values {
            for item in value.split(',') {
                let mut parts = item.split(';');
                let media_type = parts.next().unwrap_or("").trim();
                if media_type.is_empty() {
                    continue;
                }
                // q=0 means "not acceptable"; anything else only orders preferences, which a
                // registry ignores.
                let refused = parts.any(|p| {
                    p.split_once('=').is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case("q") && v.trim().parse::<f32>() == Ok(0.0)
                    })
                });
                if refused {
                    continue;
                }
                // Media types are case-insensitive (RFC 9110 §8.3.1), wildcards too.
                if media_type == "*/*" || media_type.eq_ignore_ascii_case("application/*") {
                    accept.any = true;
                } else if let Some(i) = KNOWN
                    .iter()
                    .position(|k| k.eq_ignore_ascii_case(media_type))
                {
                    accept.known |= 1 << i;
                } else {
                    accept.others.push(media_type.to_ascii_lowercase().into());
                }
            }
        }
        accept.others.sort_unstable();
        accept.others.dedup();
        if accept.known == 0 && accept.others.is_empty() {
            accept.any = true;
        }
        accept
    }

    pub fn accepts(&self, media_type: &str) -> bool {
        if self.any {
            return true;
        }
        match KNOWN
            .iter()
            .position(|k| k.eq_ignore_ascii_case(media_type))
        {
            Some(i) => self.known & (1 << i) != 0,
            None => self
                .others
                .iter()
                .any(|t| t.eq_ignore_ascii_case(media_type)),
        }
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
        let named = KNOWN
            .iter()
            .enumerate()
            .filter(|(i, _)| self.any || self.known & (1 << i) != 0)
            .map(|(_, k)| *k)
            .chain(self.others.iter().map(|t| &**t));
        let mut value = named.collect::<Vec<_>>().join(", ");
        if self.any {
            value.push_str(", */*");
        }
        value
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_wildcard_is_one_in_any_case() {
        let shouted = Accept::parse(["Application/*"]);
        assert!(shouted.accepts(OCI_MANIFEST));
        assert_eq!(shouted, Accept::parse(["application/*"]));
    }

    #[test]
    fn all_manifests_is_what_wharf_asks_for_by_digest() {
        assert_eq!(Accept::all_manifests().header_value(), ALL_MANIFEST_TYPES);
        assert_eq!(Accept::all_manifests(), Accept::parse([ALL_MANIFEST_TYPES]));
    }

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
    fn q_zero_in_any_spelling_refuses() {
        for refusal in ["q=0", "q=0.0", "q=0.000", " q = 0 ", "Q=0"] {
            let a = Accept::parse([&format!("{OCI_MANIFEST}, {OCI_INDEX};{refusal}") as &str]);
            assert!(!a.accepts(OCI_INDEX), "{refusal:?}");
        }
        let a = Accept::parse([&format!("{OCI_MANIFEST}, {OCI_INDEX};q=0.5") as &str]);
        assert!(a.accepts(OCI_INDEX));
    }

    #[test]
    fn other_types_are_kept_and_passed_on() {
        let a = Accept::parse(["application/vnd.example+json, application/json"]);
        assert!(a.accepts("application/vnd.example+json"));
        assert!(!a.accepts(OCI_MANIFEST));
        assert_eq!(
            a.header_value(),
            "application/json, application/vnd.example+json"
        );
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
