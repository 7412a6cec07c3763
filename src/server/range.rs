//! The `Range` header of a blob request (RFC 9110 §14.1–14.2): a set of `bytes=` ranges, parsed
//! as written, then resolved against the blob's size into sorted, merged spans. A header that
//! is not `bytes=`, is malformed, or is absurdly long is ignored and the whole blob is sent, as
//! RFC 9110 allows. Knows nothing of requests or responses.

use crate::config::MAX_RANGE_PARTS_LIMIT;

/// The most list elements (empty ones included) a header may have before it is ignored: four
/// times the most parts any response may have, so that a client merging its reads keeps room
/// for overlaps, while a header of thousands of specs costs neither memory nor sorting time.
pub const MAX_SPECS: usize = 4 * MAX_RANGE_PARTS_LIMIT;

/// One range-spec, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `a-b` (inclusive) or `a-`.
    From { start: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// The range-specs of one header, in the order written; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeSet(Vec<ByteRange>);

/// A half-open, non-empty `start..end` of a blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// How many bytes the span holds (never 0).
    pub fn length(self) -> u64 {
        self.end - self.start
    }

    /// The offset of the span's last byte, as `Content-Range` writes it.
    pub fn last(self) -> u64 {
        self.end - 1
    }
}

/// What a range set comes to against a blob's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Sorted, disjoint and non-adjacent spans: one is a plain 206, more a multipart one.
    Parts(Vec<Span>),
    /// No spec selects a byte of the blob: 416.
    Unsatisfiable,
    /// More spans than a response may have, even merged: the whole blob is sent instead.
    TooMany,
}

/// The range set of a `Range` header value; `None` when the header must be ignored.
pub fn parse(header: &str) -> Option<RangeSet> {
    let (unit, set) = header.trim_start().split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    // Counted before anything is allocated.
    if set.split(',').count() > MAX_SPECS {
        return None;
    }
    // RFC 9110 §5.6.1: a list may hold empty elements, with whitespace around the commas.
    let specs = set
        .split(',')
        .map(str::trim)
        .filter(|element| !element.is_empty())
        .map(parse_spec)
        .collect::<Option<Vec<_>>>()?;
    (!specs.is_empty()).then_some(RangeSet(specs))
}

/// One range-spec. Whitespace around its `-` is tolerated, as it always was here.
fn parse_spec(spec: &str) -> Option<ByteRange> {
    let (start, last) = spec.split_once('-')?;
    let (start, last) = (start.trim(), last.trim());
    match (start.is_empty(), last.is_empty()) {
        (true, false) => Some(ByteRange::Suffix(number(last)?)),
        (false, true) => Some(ByteRange::From {
            start: number(start)?,
            last: None,
        }),
        (false, false) => {
            let (start, last) = (number(start)?, number(last)?);
            // RFC 9110 §14.1.1: a last position before the first makes the spec invalid.
            (last >= start).then_some(ByteRange::From {
                start,
                last: Some(last),
            })
        }
        (true, true) => None,
    }
}

/// Digits only (no sign, no spaces); a value past `u64` makes the header ignored.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl ByteRange {
    /// The span this spec selects of `size` bytes; `None` when it selects none.
    pub fn span(self, size: u64) -> Option<Span> {
        let (start, end) = match self {
            ByteRange::From { start, last } => {
                let end = last.map_or(size, |last| last.saturating_add(1).min(size));
                (start, end)
            }
            ByteRange::Suffix(n) => (size.saturating_sub(n), size),
        };
        (start < end).then_some(Span { start, end })
    }
}

impl RangeSet {
    /// The specs, in the order written.
    pub fn specs(&self) -> &[ByteRange] {
        &self.0
    }

    /// The spans of `size` bytes this set selects, merged where they overlap or touch (one part
    /// per run of bytes is the cheapest honest answer), in ascending order whatever order they
    /// were asked in (RFC 9110 §14.6 allows both), at most `max_parts` of them.
    pub fn resolve(&self, size: u64, max_parts: usize) -> Resolved {
        let mut spans: Vec<Span> = self.0.iter().filter_map(|r| r.span(size)).collect();
        spans.sort_unstable_by_key(|span| span.start);
        let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
        for span in spans {
            match merged.last_mut() {
                Some(previous) if span.start <= previous.end => {
                    previous.end = previous.end.max(span.end);
                }
                _ => merged.push(span),
            }
        }
        if merged.is_empty() {
            Resolved::Unsatisfiable
        } else if merged.len() > max_parts {
            Resolved::TooMany
        } else {
            Resolved::Parts(merged)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn from(start: u64, last: Option<u64>) -> ByteRange {
        ByteRange::From { start, last }
    }

    fn span(start: u64, end: u64) -> Span {
        Span { start, end }
    }

    fn resolve(header: &str, size: u64) -> Resolved {
        parse(header)
            .unwrap_or_else(|| panic!("{header:?} parses"))
            .resolve(size, 128)
    }

    #[test]
    fn parses_the_three_forms() {
        let specs = |h| parse(h).unwrap().specs().to_vec();
        assert_eq!(specs("bytes=0-99"), [from(0, Some(99))]);
        assert_eq!(specs("bytes=100-"), [from(100, None)]);
        assert_eq!(specs("bytes=-5"), [ByteRange::Suffix(5)]);
        assert_eq!(
            specs("bytes=1-2,-3,4-"),
            [from(1, Some(2)), ByteRange::Suffix(3), from(4, None)]
        );
    }

    #[test]
    fn list_syntax_allows_whitespace_empty_elements_and_any_case_of_unit() {
        let expected = [from(0, Some(1)), from(5, Some(6))];
        for h in [
            "bytes=0-1,5-6",
            "bytes=0-1,,5-6",
            "bytes=,0-1,5-6,",
            "bytes= 0-1 ,\t5-6 ",
            "BYTES=0-1,5-6",
            "Bytes=0-1, 5-6",
        ] {
            assert_eq!(parse(h).unwrap().specs(), expected, "{h:?}");
        }
    }

    #[test]
    fn ignores_what_it_does_not_serve() {
        for h in [
            "items=0-1",
            "bytes =0-1",
            "bytes=5-1",
            "bytes=0-1,5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=0-0-0",
            "bytes=--1",
            "bytes=99999999999999999999999-",
            "bytes=0-1,18446744073709551616-",
            "bytes=",
            "bytes=,",
            " , ",
            "",
        ] {
            assert_eq!(parse(h), None, "{h:?}");
        }
    }

    #[test]
    fn a_header_of_absurdly_many_elements_is_ignored() {
        let specs = |n: usize| vec!["0-0"; n].join(",");
        assert!(parse(&format!("bytes={}", specs(MAX_SPECS))).is_some());
        assert_eq!(parse(&format!("bytes={}", specs(MAX_SPECS + 1))), None);
        assert_eq!(parse(&format!("bytes=0-0{}", ",".repeat(MAX_SPECS))), None);
    }

    #[test]
    fn rfc_9110_examples_of_a_10000_byte_representation() {
        let parts = |h| match resolve(h, 10_000) {
            Resolved::Parts(parts) => parts,
            other => panic!("{h}: {other:?}"),
        };
        assert_eq!(parts("bytes=0-499"), [span(0, 500)]);
        assert_eq!(parts("bytes=500-999"), [span(500, 1000)]);
        assert_eq!(parts("bytes=-500"), [span(9500, 10_000)]);
        assert_eq!(parts("bytes=9500-"), [span(9500, 10_000)]);
        assert_eq!(parts("bytes=0-0,-1"), [span(0, 1), span(9999, 10_000)]);
        assert_eq!(
            parts("bytes= 0-999, 4500-5499, -1000"),
            [span(0, 1000), span(4500, 5500), span(9000, 10_000)]
        );
        // "Other valid (but not canonical) specifications of the second 500 bytes".
        assert_eq!(parts("bytes=500-600,601-999"), [span(500, 1000)]);
        assert_eq!(parts("bytes=500-700,601-999"), [span(500, 1000)]);
    }

    #[test]
    fn resolves_against_the_size() {
        let one = |h| match resolve(h, 1000) {
            Resolved::Parts(parts) if parts.len() == 1 => Some(parts[0]),
            Resolved::Unsatisfiable => None,
            other => panic!("{h}: {other:?}"),
        };
        assert_eq!(one("bytes=0-99"), Some(span(0, 100)));
        assert_eq!(one("bytes=900-5000"), Some(span(900, 1000)));
        assert_eq!(one("bytes=999-"), Some(span(999, 1000)));
        assert_eq!(one("bytes=1000-"), None);
        assert_eq!(one("bytes=-10"), Some(span(990, 1000)));
        assert_eq!(one("bytes=-5000"), Some(span(0, 1000)));
        assert_eq!(one("bytes=-0"), None);
        assert_eq!(one("bytes=18446744073709551615-"), None);
        assert_eq!(one("bytes=0-18446744073709551615"), Some(span(0, 1000)));
        assert_eq!(resolve("bytes=0-", 0), Resolved::Unsatisfiable);
        assert_eq!(resolve("bytes=-1", 0), Resolved::Unsatisfiable);
    }

    #[test]
    fn unsatisfiable_specs_are_dropped_and_the_rest_sorted_and_merged() {
        assert_eq!(
            resolve("bytes=2000-,-0,900-,10-19,0-9", 1000),
            Resolved::Parts(vec![span(0, 20), span(900, 1000)])
        );
        assert_eq!(
            resolve("bytes=2000-3000,1000-", 1000),
            Resolved::Unsatisfiable
        );
        assert_eq!(
            resolve("bytes=0-9,5-5,20-29,8-21", 1000),
            Resolved::Parts(vec![span(0, 30)])
        );
    }

    #[test]
    fn more_parts_than_the_cap_after_merging_are_too_many() {
        let set = parse("bytes=0-0,2-2,4-4,3-3").unwrap();
        assert_eq!(
            set.resolve(10, 2),
            Resolved::Parts(vec![span(0, 1), span(2, 5)])
        );
        assert_eq!(set.resolve(10, 1), Resolved::TooMany);
        let spread = parse("bytes=0-0,2-2,4-4").unwrap();
        assert_eq!(spread.resolve(10, 2), Resolved::TooMany);
        // Dropped specs do not count towards the cap.
        assert_eq!(
            spread.resolve(3, 2),
            Resolved::Parts(vec![span(0, 1), span(2, 3)])
        );
    }

    /// A spec as the properties write it, with the bytes it selects by the test's own reading
    /// of RFC 9110 §14.1.2 (not by `ByteRange::span`).
    #[derive(Debug, Clone)]
    enum Spec {
        From(u64, Option<u64>),
        Suffix(u64),
    }

    impl Spec {
        fn text(&self) -> String {
            match self {
                Spec::From(first, Some(last)) => format!("{first}-{last}"),
                Spec::From(first, None) => format!("{first}-"),
                Spec::Suffix(n) => format!("-{n}"),
            }
        }

        fn mark(&self, bitmap: &mut [bool]) {
            let size = bitmap.len() as u64;
            let (first, last) = match *self {
                Spec::From(first, last) => (first, last.unwrap_or(u64::MAX).min(size.max(1) - 1)),
                Spec::Suffix(0) => return,
                Spec::Suffix(n) => (size.saturating_sub(n), size.max(1) - 1),
            };
            for at in first..=last {
                if at < size {
                    bitmap[at as usize] = true;
                }
            }
        }
    }

    fn spec() -> impl Strategy<Value = Spec> {
        prop_oneof![
            (0u64..3000, 0u64..3000).prop_map(|(a, b)| Spec::From(a.min(b), Some(a.max(b)))),
            (0u64..3000).prop_map(|a| Spec::From(a, None)),
            (0u64..3000).prop_map(Spec::Suffix),
        ]
    }

    /// A separator between list elements: a comma with optional whitespace, sometimes with an
    /// empty element.
    fn separator() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![",", ", ", " ,", "\t,\t", ",,", ", ,"])
    }

    fn runs(bitmap: &[bool]) -> usize {
        bitmap
            .iter()
            .enumerate()
            .filter(|&(at, &on)| on && (at == 0 || !bitmap[at - 1]))
            .count()
    }

    proptest! {
        /// No input makes the parser or the resolver panic or overflow.
        #[test]
        fn never_panics(
            header in "\\PC{0,80}|[bB][yY][tT][eE][sS]=[0-9 ,\t-]{0,60}|bytes=[0-9]{18,22}-[0-9]{0,22}",
            size in any::<u64>(),
            max_parts in 0usize..8,
        ) {
            if let Some(set) = parse(&header) {
                if let Resolved::Parts(parts) = set.resolve(size, max_parts) {
                    prop_assert!(!parts.is_empty() && parts.len() <= max_parts);
                    for part in parts {
                        prop_assert!(part.start < part.end && part.end <= size);
                    }
                }
            }
        }

        /// Resolving selects exactly the bytes the satisfiable specs select, as sorted,
        /// disjoint, non-adjacent, non-empty spans inside the blob; it is unsatisfiable exactly
        /// when no spec selects a byte, and too many exactly when the runs of selected bytes
        /// outnumber the cap.
        #[test]
        fn resolved_parts_are_the_union_of_the_satisfiable_specs(
            specs in prop::collection::vec((spec(), separator()), 1..12),
            size in 0u64..3000,
            max_parts in 1usize..8,
        ) {
            let header = specs.iter().enumerate().fold(String::from("bytes="), |mut h, (i, (spec, sep))| {
                if i > 0 {
                    h.push_str(sep);
                }
                h.push_str(&spec.text());
                h
            });
            let set = parse(&header);
            prop_assert!(set.is_some(), "{header:?} parses");
            let resolved = set.unwrap().resolve(size, max_parts);
            let mut wanted = vec![false; size as usize];
            for (spec, _) in &specs {
                spec.mark(&mut wanted);
            }
            let selected_runs = runs(&wanted);
            match resolved {
                Resolved::Unsatisfiable => prop_assert_eq!(selected_runs, 0, "{}", header),
                Resolved::TooMany => prop_assert!(selected_runs > max_parts, "{}", header),
                Resolved::Parts(parts) => {
                    prop_assert!(selected_runs > 0 && selected_runs <= max_parts);
                    let mut got = vec![false; size as usize];
                    for (i, part) in parts.iter().enumerate() {
                        prop_assert!(part.start < part.end && part.end <= size, "{:?}", part);
                        if i > 0 {
                            prop_assert!(parts[i - 1].end < part.start, "{:?}", parts);
                        }
                        for at in part.start..part.end {
                            got[at as usize] = true;
                        }
                    }
                    prop_assert_eq!(got, wanted, "{}", header);
                }
            }
        }
    }
}
