//! A reader of `multipart/byteranges` bodies (RFC 9110 §14.6, RFC 2046 §5.1), written from the
//! RFCs for the tests and sharing nothing with wharf's writer: the boundary comes from the
//! `Content-Type` value, a preamble before the first delimiter is skipped, each part's headers
//! are read as lines, and its bytes are exactly as many as its `Content-Range` says.

/// One part of a multipart/byteranges body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub content_type: Option<String>,
    /// The first and last byte offsets (inclusive) and the complete length, as `Content-Range`
    /// gives them.
    pub first: u64,
    pub last: u64,
    pub complete: u64,
    pub bytes: Vec<u8>,
}

/// The boundary parameter of a `multipart/byteranges` Content-Type value.
pub fn boundary(content_type: &str) -> Result<String, String> {
    let mut params = content_type.split(';');
    let media_type = params.next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("multipart/byteranges") {
        return Err(format!("not multipart/byteranges: {content_type:?}"));
    }
    params
        .filter_map(|param| param.split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .filter(|b| !b.is_empty())
        .ok_or_else(|| format!("no boundary in {content_type:?}"))
}

/// The parts of `body`, a response whose Content-Type is `content_type`.
pub fn parse(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let dash_boundary = format!("--{}", boundary(content_type)?).into_bytes();
    let mut reader = Reader { body, at: 0 };
    // The first delimiter starts the body or a line; anything before it is preamble.
    loop {
        let line = reader.line()?;
        if line == dash_boundary.as_slice() {
            break;
        }
    }
    let mut parts = Vec::new();
    loop {
        let mut content_type = None;
        let mut content_range = None;
        loop {
            let line = reader.line()?;
            if line.is_empty() {
                break;
            }
            let line = std::str::from_utf8(line).map_err(|e| format!("a part header: {e}"))?;
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a header: {line:?}"))?;
            let value = value.trim().to_owned();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-type" => content_type = Some(value),
                "content-range" => content_range = Some(value),
                _ => {}
            }
        }
        let range = content_range.ok_or("a part without Content-Range")?;
        let (first, last, complete) = content_range_of(&range)?;
        if last < first {
            return Err(format!("Content-Range {range:?} ends before it starts"));
        }
        let bytes = reader.take(last - first + 1)?.to_vec();
        parts.push(Part {
            content_type,
            first,
            last,
            complete,
            bytes,
        });
        // The CRLF after a part's bytes belongs to the delimiter that follows.
        if reader.take(2)? != b"\r\n" {
            return Err(format!("no CRLF after the part of {range:?}"));
        }
        let line = reader.line()?;
        if line == dash_boundary.as_slice() {
            continue;
        }
        let mut closing = dash_boundary.clone();
        closing.extend_from_slice(b"--");
        if line == closing.as_slice() {
            return Ok(parts);
        }
        return Err(format!(
            "after the part of {range:?}: {:?} instead of a delimiter",
            String::from_utf8_lossy(line)
        ));
    }
}

/// `bytes first-last/complete`.
fn content_range_of(value: &str) -> Result<(u64, u64, u64), String> {
    let bad = || format!("a malformed Content-Range: {value:?}");
    let (unit, rest) = value.split_once(' ').ok_or_else(bad)?;
    if unit != "bytes" {
        return Err(bad());
    }
    let (range, complete) = rest.split_once('/').ok_or_else(bad)?;
    let (first, last) = range.split_once('-').ok_or_else(bad)?;
    let number = |s: &str| s.parse::<u64>().map_err(|_| bad());
    Ok((number(first)?, number(last)?, number(complete)?))
}

struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next line, without its CRLF.
    fn line(&mut self) -> Result<&'a [u8], String> {
        let rest = &self.body[self.at..];
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .ok_or_else(|| format!("no line end after offset {}", self.at))?;
        self.at += end + 2;
        Ok(&rest[..end])
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let n = usize::try_from(n).map_err(|e| e.to_string())?;
        let bytes = self
            .body
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| format!("the body ends within {n} bytes of offset {}", self.at))?;
        self.at += n;
        Ok(bytes)
    }
}
