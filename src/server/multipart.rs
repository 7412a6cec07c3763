//! The framing of a `206 multipart/byteranges` body (RFC 9110 §14.6, RFC 2046 §5.1): each
//! part's head, the closing delimiter, and the exact length of the whole, known before the
//! first byte is sent so the response has a `Content-Length`. Knows nothing of where a part's
//! bytes come from.
//!
//! The body has the shape of RFC 9110's example: the first delimiter opens the body (nothing
//! precedes it, so it needs no CRLF before it), and every later delimiter and the closing one
//! begin with the CRLF that ends the part before.

use std::fmt;

use bytes::Bytes;

use super::range::Span;

/// The delimiter of one response's parts: 128 random bits from the OS, in hex. Readers such as
/// Go's `mime/multipart` (which stargz-snapshotter uses) find a part's end by scanning its bytes
/// for the delimiter, so it must not plausibly occur in any blob, and a blob cannot be crafted
/// to contain the boundary of a response not yet made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boundary(String);

impl Boundary {
    pub fn random() -> Result<Boundary, getrandom::Error> {
        let mut bits = [0u8; 16];
        getrandom::fill(&mut bits)?;
        Ok(Boundary::from_bits(bits))
    }

    /// The boundary these bits spell: for tests, which need a known one.
    pub fn from_bits(bits: [u8; 16]) -> Boundary {
        Boundary(hex::encode(bits))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The framing of the parts of one blob of `size` bytes, each of type `part_type`.
#[derive(Debug, Clone)]
pub struct Multipart {
    boundary: Boundary,
    part_type: &'static str,
    size: u64,
}

impl Multipart {
    pub fn new(boundary: Boundary, part_type: &'static str, size: u64) -> Multipart {
        Multipart {
            boundary,
            part_type,
            size,
        }
    }

    /// The response's `Content-Type`.
    pub fn content_type(&self) -> String {
        format!("multipart/byteranges; boundary={}", self.boundary.as_str())
    }

    /// What precedes the bytes of the part at `index` (counted from 0) of the body.
    pub fn head(&self, index: usize, span: Span) -> Bytes {
        let mut head = String::new();
        self.write_head(&mut head, index, span)
            .expect("writing to a String cannot fail");
        Bytes::from(head)
    }

    /// What follows the bytes of the last part.
    pub fn closing(&self) -> Bytes {
        let mut closing = String::new();
        self.write_closing(&mut closing)
            .expect("writing to a String cannot fail");
        Bytes::from(closing)
    }

    /// The length of the whole body of these parts, framing and bytes. Measured by writing the
    /// very framing [`Multipart::head`] and [`Multipart::closing`] give, to a counter, so the
    /// two cannot disagree.
    pub fn content_length(&self, parts: &[Span]) -> u64 {
        let mut framing = Counter(0);
        for (index, &span) in parts.iter().enumerate() {
            self.write_head(&mut framing, index, span)
                .expect("counting cannot fail");
        }
        self.write_closing(&mut framing)
            .expect("counting cannot fail");
        let bytes: u64 = parts.iter().map(|span| span.length()).sum();
        framing.0 as u64 + bytes
    }

    fn write_head(&self, out: &mut impl fmt::Write, index: usize, span: Span) -> fmt::Result {
        if index > 0 {
            out.write_str("\r\n")?;
        }
        write!(
            out,
            "--{}\r\nContent-Type: {}\r\nContent-Range: bytes {}-{}/{}\r\n\r\n",
            self.boundary.as_str(),
            self.part_type,
            span.start,
            span.last(),
            self.size
        )
    }

    fn write_closing(&self, out: &mut impl fmt::Write) -> fmt::Result {
        write!(out, "\r\n--{}--\r\n", self.boundary.as_str())
    }
}

/// A `fmt::Write` that only counts the bytes written to it.
struct Counter(usize);

impl fmt::Write for Counter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_boundary_is_32_hex_digits_and_differs_each_time() {
        let (a, b) = (Boundary::random().unwrap(), Boundary::random().unwrap());
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn framing_reads_like_rfc_9110s_example() {
        let m = Multipart::new(Boundary::from_bits([0xab; 16]), "application/pdf", 8000);
        let b = "ab".repeat(16);
        assert_eq!(
            m.content_type(),
            format!("multipart/byteranges; boundary={b}")
        );
        let first = Span {
            start: 500,
            end: 1000,
        };
        let second = Span {
            start: 7000,
            end: 8000,
        };
        assert_eq!(
            m.head(0, first),
            format!("--{b}\r\nContent-Type: application/pdf\r\nContent-Range: bytes 500-999/8000\r\n\r\n")
        );
        assert_eq!(
            m.head(1, second),
            format!("\r\n--{b}\r\nContent-Type: application/pdf\r\nContent-Range: bytes 7000-7999/8000\r\n\r\n")
        );
        assert_eq!(m.closing(), format!("\r\n--{b}--\r\n"));
    }

    /// One part as the test's own reader finds it.
    #[derive(Debug, PartialEq)]
    struct ReadPart {
        content_type: String,
        first: u64,
        last: u64,
        size: u64,
        bytes: Vec<u8>,
    }

    /// A reader of multipart/byteranges written from RFC 2046 and RFC 9110, sharing nothing
    /// with the writer: the boundary comes from the Content-Type value, the body is walked
    /// delimiter line by delimiter line, and each part's length is its Content-Range's.
    fn read_parts(content_type: &str, body: &[u8]) -> Result<Vec<ReadPart>, String> {
        let (kind, params) = content_type
            .split_once(';')
            .ok_or("no parameters in the Content-Type")?;
        if !kind.trim().eq_ignore_ascii_case("multipart/byteranges") {
            return Err(format!("not multipart/byteranges: {kind}"));
        }
        let boundary = params
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(name, _)| name.eq_ignore_ascii_case("boundary"))
            .map(|(_, value)| value.trim_matches('"'))
            .ok_or("no boundary parameter")?;
        let delimiter = format!("--{boundary}").into_bytes();
        let mut at = 0;
        let expect = |at: &mut usize, what: &[u8]| -> Result<(), String> {
            if body.get(*at..*at + what.len()) == Some(what) {
                *at += what.len();
                Ok(())
            } else {
                Err(format!(
                    "expected {:?} at {at}",
                    String::from_utf8_lossy(what)
                ))
            }
        };
        expect(&mut at, &delimiter)?;
        let mut parts = Vec::new();
        loop {
            if body.get(at..at + 2) == Some(b"--") {
                at += 2;
                expect(&mut at, b"\r\n")?;
                if at != body.len() {
                    return Err(format!(
                        "{} bytes after the closing delimiter",
                        body.len() - at
                    ));
                }
                return Ok(parts);
            }
            expect(&mut at, b"\r\n")?;
            let mut content_type = None;
            let mut range = None;
            loop {
                let line_end = body[at..]
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .ok_or("a header line without its end")?;
                let line = std::str::from_utf8(&body[at..at + line_end])
                    .map_err(|e| e.to_string())?
                    .to_owned();
                at += line_end + 2;
                if line.is_empty() {
                    break;
                }
                let (name, value) = line.split_once(':').ok_or("a header without a colon")?;
                match name.to_ascii_lowercase().as_str() {
                    "content-type" => content_type = Some(value.trim().to_owned()),
                    "content-range" => range = Some(value.trim().to_owned()),
                    other => return Err(format!("unexpected part header {other}")),
                }
            }
            let range = range.ok_or("a part without Content-Range")?;
            let (first, rest) = range
                .strip_prefix("bytes ")
                .and_then(|r| r.split_once('-'))
                .ok_or("a malformed Content-Range")?;
            let (last, size) = rest.split_once('/').ok_or("a Content-Range without size")?;
            let number = |s: &str| s.parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
            let (first, last, size) = (number(first)?, number(last)?, number(size)?);
            let len = (last + 1 - first) as usize;
            let bytes = body
                .get(at..at + len)
                .ok_or("a part shorter than its Content-Range")?
                .to_vec();
            at += len;
            expect(&mut at, b"\r\n")?;
            expect(&mut at, &delimiter)?;
            parts.push(ReadPart {
                content_type: content_type.ok_or("a part without Content-Type")?,
                first,
                last,
                size,
                bytes,
            });
        }
    }

    /// Sorted, disjoint spans of a blob of `size` bytes, from cut points.
    fn spans(size: u64, cuts: &[u64], keep: &[bool]) -> Vec<Span> {
        let mut points: Vec<u64> = cuts.iter().map(|c| c % (size + 1)).collect();
        points.extend([0, size]);
        points.sort_unstable();
        points.dedup();
        points
            .windows(2)
            .zip(keep.iter().cycle())
            .filter(|(_, &keep)| keep)
            .map(|(w, _)| Span {
                start: w[0],
                end: w[1],
            })
            .collect()
    }

    proptest! {
        /// Whatever the blob and its parts, an independent reader finds every part with its
        /// Content-Range and its bytes, and the announced length is the body's.
        #[test]
        fn an_independent_reader_finds_every_part(
            blob in prop::collection::vec(any::<u8>(), 1..4000),
            cuts in prop::collection::vec(any::<u64>(), 1..20),
            keep in prop::collection::vec(any::<bool>(), 1..20),
            bits in any::<[u8; 16]>(),
        ) {
            let size = blob.len() as u64;
            let parts = spans(size, &cuts, &keep);
            prop_assume!(!parts.is_empty());
            let m = Multipart::new(Boundary::from_bits(bits), "application/octet-stream", size);
            let mut body = Vec::new();
            for (index, &span) in parts.iter().enumerate() {
                body.extend_from_slice(&m.head(index, span));
                body.extend_from_slice(&blob[span.start as usize..span.end as usize]);
            }
            body.extend_from_slice(&m.closing());
            prop_assert_eq!(m.content_length(&parts), body.len() as u64);
            let read = read_parts(&m.content_type(), &body);
            prop_assert!(read.is_ok(), "{:?}", read);
            let read = read.unwrap();
            prop_assert_eq!(read.len(), parts.len());
            for (part, span) in read.iter().zip(&parts) {
                prop_assert_eq!(&part.content_type, "application/octet-stream");
                prop_assert_eq!((part.first, part.last, part.size), (span.start, span.end - 1, size));
                prop_assert!(part.bytes == blob[span.start as usize..span.end as usize]);
            }
        }
    }
}
