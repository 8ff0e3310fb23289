//! The MIME needed by S/MIME and AS2 (RFC 2045/2046, RFC 1847): header
//! blocks, Content-Type parameters, multipart bodies split on the exact
//! bytes (a signature covers the first part byte for byte), base64.

use base64::Engine as _;

/// MIME that cannot be read (what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed MIME: {0}")]
pub struct MimeError(pub String);

fn err(s: impl Into<String>) -> MimeError {
    MimeError(s.into())
}

/// Header fields in order; names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The first value of the field `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// Appends a field.
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push((name.to_owned(), value.into()));
    }
    /// The parsed `Content-Type` (`text/plain` when absent).
    pub fn content_type(&self) -> Result<ContentType, MimeError> {
        ContentType::parse(self.get("content-type").unwrap_or("text/plain"))
    }
}

/// Splits a header block from its body. The block ends at the first empty
/// line (CRLF CRLF, or LF LF from lenient senders); continuation lines are
/// unfolded.
pub fn split_entity(data: &[u8]) -> Result<(Headers, &[u8]), MimeError> {
    let mut headers = Headers::default();
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or_else(|| err("header block does not end"))?;
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.is_empty() {
            return Ok((headers, &data[pos..]));
        }
        let text = std::str::from_utf8(line).map_err(|_| err("header is not UTF-8"))?;
        if text.starts_with([' ', '\t']) {
            let (_, v) = headers.0.last_mut().ok_or_else(|| err("continuation line without a header"))?;
            v.push(' ');
            v.push_str(text.trim());
            continue;
        }
        let (k, v) = text.split_once(':').ok_or_else(|| err(format!("not a header line: {}", trunc(text))))?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(format!("bad header name: {}", trunc(k))));
        }
        headers.0.push((k.to_owned(), v.trim().to_owned()));
        if headers.0.len() > 200 {
            return Err(err("too many header fields"));
        }
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(60).collect()
}

/// A parsed Content-Type: lower-case `type/subtype` and parameters (names
/// lower-cased, values unquoted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// The lower-case `type/subtype`.
    pub mime: String,
    /// The parameters: lower-case names, unquoted values.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// Parses a `Content-Type` field value.
    pub fn parse(s: &str) -> Result<ContentType, MimeError> {
        let mut chars = s.char_indices().peekable();
        let mut mime = String::new();
        for (_, c) in chars.by_ref() {
            if c == ';' {
                break;
            }
            mime.push(c);
        }
        let mime = mime.trim().to_ascii_lowercase();
        if !mime.contains('/') {
            return Err(err(format!("bad content type: {}", trunc(s))));
        }
        let mut params = Vec::new();
        loop {
            while chars.peek().is_some_and(|(_, c)| c.is_whitespace() || *c == ';') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut name = String::new();
            while let Some((_, c)) = chars.peek().copied() {
                if c == '=' || c == ';' {
                    break;
                }
                name.push(c);
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('=') {
                // A parameter without a value: ignore it.
                continue;
            }
            let mut value = String::new();
            if chars.peek().is_some_and(|(_, c)| *c == '"') {
                chars.next();
                loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            if let Some((_, c)) = chars.next() {
                                value.push(c);
                            }
                        }
                        Some((_, '"')) => break,
                        Some((_, c)) => value.push(c),
                        None => return Err(err("unterminated quoted parameter")),
                    }
                }
            } else {
                while let Some((_, c)) = chars.peek().copied() {
                    if c == ';' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
            params.push((name.trim().to_ascii_lowercase(), value));
        }
        Ok(ContentType { mime, params })
    }
    /// The value of parameter `name` (lower-case).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The body parts of a multipart body, each exactly as it appears between
/// its delimiter line and the line break before the next delimiter.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, MimeError> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(err("bad multipart boundary"));
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // (start of delimiter incl. the preceding line break, end of the delimiter line, is_close)
    let mut marks: Vec<(usize, usize, bool)> = Vec::new();
    let mut line_start = 0;
    while line_start <= body.len() {
        let rest = &body[line_start..];
        let nl = rest.iter().position(|&b| b == b'\n');
        let line_end = nl.map_or(body.len(), |n| line_start + n);
        let line = &body[line_start..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(after) = line.strip_prefix(delim) {
            let close = after.starts_with(b"--");
            let tail = if close { &after[2..] } else { after };
            if tail.iter().all(|b| *b == b' ' || *b == b'\t') {
                let mut start = line_start;
                if start > 0 && body[start - 1] == b'\n' {
                    start -= 1;
                    if start > 0 && body[start - 1] == b'\r' {
                        start -= 1;
                    }
                }
                marks.push((start, nl.map_or(body.len(), |_| line_end + 1), close));
                if close {
                    break;
                }
            }
        }
        match nl {
            Some(_) => line_start = line_end + 1,
            None => break,
        }
    }
    if !marks.last().is_some_and(|m| m.2) {
        return Err(err("multipart body has no closing delimiter"));
    }
    let parts: Vec<&[u8]> = marks.windows(2).map(|w| &body[w[0].1..w[1].0.max(w[0].1)]).collect();
    if parts.is_empty() {
        return Err(err("multipart body has no parts"));
    }
    Ok(parts)
}

/// Decodes a body by its Content-Transfer-Encoding.
pub fn decode_body(headers: &Headers, body: &[u8]) -> Result<Vec<u8>, MimeError> {
    match headers.get("content-transfer-encoding").map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        None | Some("binary") | Some("8bit") | Some("7bit") => Ok(body.to_vec()),
        Some("base64") => decode_base64(body),
        Some(other) => Err(err(format!("unsupported Content-Transfer-Encoding: {other}"))),
    }
}

/// Base64 with line breaks and other whitespace ignored.
pub fn decode_base64(body: &[u8]) -> Result<Vec<u8>, MimeError> {
    let clean: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(clean).map_err(|e| err(format!("bad base64: {e}")))
}

/// Base64 in lines of 76 characters, CRLF-separated, without a final CRLF.
pub fn base64_lines(data: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = String::with_capacity(b.len() + b.len() / 76 * 2);
    for (i, chunk) in b.as_bytes().chunks(76).enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    out
}

/// Whether `needle` occurs in `hay` (first-byte scan, then compare).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else { return true };
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()].iter().position(|&b| b == first) {
            None => return false,
            Some(p) => {
                if hay[i + p..].starts_with(needle) {
                    return true;
                }
                i += p + 1;
            }
        }
    }
    false
}

const BOUNDARY_PREFIX: &str = "----=_mamori_";

/// A random boundary (96 random bits) that does not occur in `avoid`.
pub fn boundary(avoid: &[&[u8]]) -> String {
    // Content without the fixed prefix cannot contain any of our boundaries.
    let risky: Vec<&[u8]> = avoid.iter().copied().filter(|a| contains(a, BOUNDARY_PREFIX.as_bytes())).collect();
    loop {
        let mut r = [0u8; 12];
        if let Err(e) = openssl::rand::rand_bytes(&mut r) {
            // The boundary is still checked against the content below.
            tracing::warn!(error = %e, "no random bytes for a MIME boundary");
        }
        let b = format!("{BOUNDARY_PREFIX}{}", r.iter().map(|x| format!("{x:02x}")).collect::<String>());
        if !risky.iter().any(|a| contains(a, b.as_bytes())) {
            return b;
        }
    }
}

/// A MIME entity from header lines and a body.
pub fn entity(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 256);
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A multipart body from complete part entities.
pub fn multipart_body(boundary: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + boundary.len() + 8).sum::<usize>() + 8);
    for p in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

/// Quotes a parameter value when it needs it.
pub fn quote(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._+".contains(&b)) {
        v.to_owned()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_unfold_and_split() {
        let (h, body) =
            split_entity(b"Content-Type: multipart/signed;\r\n boundary=\"b\"\r\nX: 1\r\n\r\nBODY").unwrap();
        assert_eq!(h.get("content-type"), Some("multipart/signed; boundary=\"b\""));
        assert_eq!(h.get("x"), Some("1"));
        assert_eq!(body, b"BODY");
        let (h, body) = split_entity(b"A: b\n\nrest").unwrap();
        assert_eq!(h.get("A"), Some("b"));
        assert_eq!(body, b"rest");
        assert!(split_entity(b"no colon here\r\n\r\n").is_err());
        assert!(split_entity(b"A: b\r\n").is_err());
    }

    #[test]
    fn content_type_params() {
        let ct = ContentType::parse(
            "Multipart/Signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"a;b\\\"c\"",
        )
        .unwrap();
        assert_eq!(ct.mime, "multipart/signed");
        assert_eq!(ct.param("protocol"), Some("application/pkcs7-signature"));
        assert_eq!(ct.param("micalg"), Some("sha-256"));
        assert_eq!(ct.param("boundary"), Some("a;b\"c"));
        assert!(ContentType::parse("garbage").is_err());
        assert!(ContentType::parse("a/b; x=\"open").is_err());
    }

    #[test]
    fn multipart_parts_are_exact() {
        let body = b"preamble\r\n--B\r\nContent-Type: text/plain\r\n\r\nline1\r\nline2\r\n--B\r\n\r\nsecond\r\n--B--\r\nepilogue";
        let parts = split_multipart(body, "B").unwrap();
        assert_eq!(parts, vec![&b"Content-Type: text/plain\r\n\r\nline1\r\nline2"[..], &b"\r\nsecond"[..]]);
        // A boundary-like line inside content that is not the delimiter.
        let body = b"--B\r\n\r\n--Bx\r\n--B--";
        assert_eq!(split_multipart(body, "B").unwrap(), vec![&b"\r\n--Bx"[..]]);
        assert!(split_multipart(b"--B\r\nno close", "B").is_err());
        assert!(split_multipart(b"--B--\r\n", "B").is_err());
    }

    #[test]
    fn substring_search() {
        assert!(contains(b"abc----=_mamori_x", b"----=_mamori_"));
        assert!(!contains(b"abc----=_mamor", b"----=_mamori_"));
        assert!(contains(b"aab", b"ab"));
        assert!(!contains(b"", b"a"));
        assert!(contains(b"x", b""));
        let b = boundary(&[b"----=_mamori_ inside"]);
        assert!(b.starts_with("----=_mamori_") && b.len() == 13 + 24);
    }

    #[test]
    fn build_and_split_round_trip() {
        let p1 = entity(&[("Content-Type", "application/fhir+json")], b"{\"a\":1}");
        let p2 = entity(&[("Content-Type", "text/plain")], b"x");
        let b = boundary(&[&p1, &p2]);
        let body = multipart_body(&b, &[&p1, &p2]);
        assert_eq!(split_multipart(&body, &b).unwrap(), vec![&p1[..], &p2[..]]);
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        assert_eq!(decode_base64(base64_lines(&data).as_bytes()).unwrap(), data);
        assert!(base64_lines(&data).lines().all(|l| l.trim_end().len() <= 76));
    }
}
