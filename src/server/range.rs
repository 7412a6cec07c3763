//! The `Range` header, for blobs: one `bytes=` range. Anything else (several ranges, other units,
//! bad syntax) is ignored and the whole blob is sent, as RFC 9110 allows.

/// A parsed single byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive) or `bytes=a-`.
    From { start: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

pub fn parse(header: &str) -> Option<ByteRange> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, last) = spec.split_once('-')?;
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (start.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => Some(ByteRange::Suffix(number(last)?)),
        (false, true) => Some(ByteRange::From {
            start: number(start)?,
            last: None,
        }),
        (false, false) => {
            let (start, last) = (number(start)?, number(last)?);
            (last >= start).then_some(ByteRange::From {
                start,
                last: Some(last),
            })
        }
        (true, true) => None,
    }
}

impl ByteRange {
    /// The half-open `start..end` this range selects from `size` bytes, or `None` if it is
    /// unsatisfiable (answer 416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, last } => {
                if start >= size {
                    return None;
                }
                let end = last.map_or(size, |l| l.saturating_add(1).min(size));
                Some((start, end))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => (size > 0).then(|| (size.saturating_sub(n), size)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            parse("bytes=0-99"),
            Some(ByteRange::From {
                start: 0,
                last: Some(99)
            })
        );
        assert_eq!(
            parse("bytes=100-"),
            Some(ByteRange::From {
                start: 100,
                last: None
            })
        );
        assert_eq!(parse("bytes=-5"), Some(ByteRange::Suffix(5)));
    }

    #[test]
    fn ignores_what_it_does_not_serve() {
        for h in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=99999999999999999999999-",
            "",
        ] {
            assert_eq!(parse(h), None, "{h}");
        }
    }

    #[test]
    fn resolves_against_the_size() {
        let r = |h| parse(h).unwrap();
        assert_eq!(r("bytes=0-99").resolve(1000), Some((0, 100)));
        assert_eq!(r("bytes=900-5000").resolve(1000), Some((900, 1000)));
        assert_eq!(r("bytes=999-").resolve(1000), Some((999, 1000)));
        assert_eq!(r("bytes=1000-").resolve(1000), None);
        assert_eq!(r("bytes=-10").resolve(1000), Some((990, 1000)));
        assert_eq!(r("bytes=-5000").resolve(1000), Some((0, 1000)));
        assert_eq!(r("bytes=-0").resolve(1000), None);
        assert_eq!(r("bytes=0-").resolve(0), None);
    }

    proptest::proptest! {
        /// Whatever the header and the size, parsing and resolving never panic, and a range
        /// that resolves lies inside the blob and is not empty.
        #[test]
        fn resolved_ranges_lie_inside_the_blob(
            header in "\\PC{0,40}|bytes=[0-9 ]{0,22}-[0-9 ]{0,22}",
            size in 0u64..=u64::MAX,
        ) {
            if let Some(range) = parse(&header) {
                if let Some((start, end)) = range.resolve(size) {
                    proptest::prop_assert!(start < end && end <= size);
                }
            }
        }
    }
}
