//! Which bytes of a blob are asked for (`Range`) and which came (`Content-Range`): the two
//! headers a resumed or ranged blob body rests on, parsed strictly.

/// Which bytes of a blob to fetch: `start..end`, `end` = `None` for the rest of the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: Option<u64>,
}

impl Span {
    pub const WHOLE: Span = Span {
        start: 0,
        end: None,
    };

    /// The `Range` value asking for what is left of this span from `from`, or `None` for a
    /// whole blob asked from its start (a plain `GET`, what every registry serves).
    pub(super) fn range_header(self, from: u64) -> Option<String> {
        match self.end {
            None if from == 0 => None,
            None => Some(format!("bytes={from}-")),
            Some(end) => Some(format!("bytes={from}-{}", end - 1)),
        }
    }
}

/// `Content-Range: bytes <first>-<last>/<total|*>` of a `206`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ContentRange {
    pub start: u64,
    pub total: Option<u64>,
}

impl ContentRange {
    pub(super) fn parse(value: &str) -> Option<ContentRange> {
        let (unit, rest) = value.trim().split_once(' ')?;
        if !unit.eq_ignore_ascii_case("bytes") {
            return None;
        }
        let (span, total) = rest.trim().split_once('/')?;
        let (first, last) = span.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        let (start, last) = (number(first)?, number(last)?);
        let total = match total.trim() {
            "*" => None,
            t => Some(number(t)?),
        };
        let inside = last >= start && total.map_or(true, |t| last < t);
        inside.then_some(ContentRange { start, total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_blob_is_a_plain_get_until_it_resumes() {
        assert_eq!(Span::WHOLE.range_header(0), None);
        assert_eq!(Span::WHOLE.range_header(10).as_deref(), Some("bytes=10-"));
        let span = Span {
            start: 100,
            end: Some(200),
        };
        assert_eq!(span.range_header(100).as_deref(), Some("bytes=100-199"));
        assert_eq!(span.range_header(150).as_deref(), Some("bytes=150-199"));
    }

    #[test]
    fn content_range_is_parsed_strictly() {
        let parse = ContentRange::parse;
        assert_eq!(
            parse("bytes 10-19/100"),
            Some(ContentRange {
                start: 10,
                total: Some(100)
            })
        );
        assert_eq!(
            parse("bytes 10-19/*"),
            Some(ContentRange {
                start: 10,
                total: None
            })
        );
        for bad in [
            "bytes */100",
            "bytes 19-10/100",
            "bytes 10-100/100",
            "items 1-2/3",
            "bytes 1-2",
            "bytes -1-2/3",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
