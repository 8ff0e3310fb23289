//! A minimal DER reader and writer: just what the CMS envelopes and the
//! algorithm checks need. Input that is not DER (BER indefinite lengths,
//! multi-byte tags) is refused; callers re-encode BER through OpenSSL first.

/// DER that cannot be read (what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed DER: {0}")]
pub struct DerError(pub &'static str);

/// The tag of a SEQUENCE.
pub const SEQUENCE: u8 = 0x30;
/// The tag of a SET.
pub const SET: u8 = 0x31;
/// The tag of an INTEGER.
pub const INTEGER: u8 = 0x02;
/// The tag of an OCTET STRING.
pub const OCTET_STRING: u8 = 0x04;
/// The tag of NULL.
pub const NULL: u8 = 0x05;
/// The tag of an OBJECT IDENTIFIER.
pub const OID: u8 = 0x06;

/// Context-specific constructed tag `[n]`.
pub const fn ctx_cons(n: u8) -> u8 {
    0xA0 | n
}
/// Context-specific primitive tag `[n]`.
pub const fn ctx_prim(n: u8) -> u8 {
    0x80 | n
}

/// One tag-length-value.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    /// The tag (one byte: multi-byte tags are refused).
    pub tag: u8,
    /// The value's content octets.
    pub content: &'a [u8],
    /// The whole encoding, tag and length included.
    pub raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// A reader over the content of a constructed value.
    pub fn reader(&self) -> Reader<'a> {
        Reader::new(self.content)
    }
}

/// Reads consecutive TLVs.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The tag of the next TLV, without reading it.
    pub fn peek_tag(&self) -> Option<u8> {
        self.buf.first().copied()
    }
    /// Reads the next TLV.
    pub fn read(&mut self) -> Result<Tlv<'a>, DerError> {
        let b = self.buf;
        let tag = *b.first().ok_or(DerError("unexpected end"))?;
        if tag & 0x1F == 0x1F {
            return Err(DerError("multi-byte tags are not supported"));
        }
        let l0 = *b.get(1).ok_or(DerError("unexpected end"))?;
        let (len, hdr) = if l0 < 0x80 {
            (l0 as usize, 2)
        } else if l0 == 0x80 {
            return Err(DerError("indefinite length (BER)"));
        } else {
            let n = (l0 & 0x7F) as usize;
            if n > 4 {
                return Err(DerError("length too large"));
            }
            let bytes = b.get(2..2 + n).ok_or(DerError("unexpected end"))?;
            let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | x as usize);
            (len, 2 + n)
        };
        let end = hdr.checked_add(len).ok_or(DerError("length overflow"))?;
        let raw = b.get(..end).ok_or(DerError("value runs past the end"))?;
        self.buf = &b[end..];
        Ok(Tlv { tag, content: &raw[hdr..], raw })
    }
    /// The next TLV, which must have `tag`.
    pub fn expect(&mut self, tag: u8) -> Result<Tlv<'a>, DerError> {
        let t = self.read()?;
        if t.tag == tag {
            Ok(t)
        } else {
            Err(DerError("unexpected tag"))
        }
    }
    /// The next TLV if it has `tag`.
    pub fn optional(&mut self, tag: u8) -> Result<Option<Tlv<'a>>, DerError> {
        if self.peek_tag() == Some(tag) {
            self.read().map(Some)
        } else {
            Ok(None)
        }
    }
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// The tag and length octets of a value of `len` bytes.
pub fn header(tag: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(6);
    out.push(tag);
    push_len(&mut out, len);
    out
}

/// A TLV from its parts.
pub fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    push_len(&mut out, len);
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

/// A SEQUENCE of the encoded parts.
pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(SEQUENCE, parts)
}

/// An OCTET STRING of `b`.
pub fn octets(b: &[u8]) -> Vec<u8> {
    tlv(OCTET_STRING, &[b])
}

/// NULL.
pub fn null() -> Vec<u8> {
    vec![NULL, 0]
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn uint(be: &[u8]) -> Vec<u8> {
    let skip = be.iter().take_while(|&&b| b == 0).count().min(be.len().saturating_sub(1));
    let v = if be.is_empty() { &[0u8][..] } else { &be[skip..] };
    if v.first().is_some_and(|&b| b & 0x80 != 0) {
        tlv(INTEGER, &[&[0], v])
    } else {
        tlv(INTEGER, &[v])
    }
}

/// A small non-negative INTEGER.
pub fn small_int(v: u8) -> Vec<u8> {
    uint(&[v])
}

/// An OBJECT IDENTIFIER from its arcs.
pub fn oid(arcs: &[u64]) -> Vec<u8> {
    let mut c = Vec::new();
    let first = arcs.first().copied().unwrap_or(0) * 40 + arcs.get(1).copied().unwrap_or(0);
    for a in std::iter::once(first).chain(arcs.iter().skip(2).copied()) {
        let mut groups = vec![(a & 0x7F) as u8];
        let mut v = a >> 7;
        while v > 0 {
            groups.push(0x80 | (v & 0x7F) as u8);
            v >>= 7;
        }
        groups.reverse();
        c.extend_from_slice(&groups);
    }
    tlv(OID, &[&c])
}

/// Dotted text of an OID's content bytes (for messages).
pub fn oid_text(content: &[u8]) -> String {
    let mut arcs = Vec::new();
    let mut v: u64 = 0;
    for &b in content {
        v = (v << 7) | (b & 0x7F) as u64;
        if b & 0x80 == 0 {
            arcs.push(v);
            v = 0;
        }
    }
    let mut s = match arcs.first() {
        Some(&f) => {
            let (a, b) = if f < 80 { (f / 40, f % 40) } else { (2, f - 80) };
            format!("{a}.{b}")
        }
        None => String::new(),
    };
    for a in arcs.iter().skip(1) {
        s.push('.');
        s.push_str(&a.to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oid_round_trip() {
        let o = oid(&[1, 2, 840, 113549, 1, 7, 3]);
        assert_eq!(o, [0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07, 0x03]);
        let t = Reader::new(&o).expect(OID).unwrap();
        assert_eq!(oid_text(t.content), "1.2.840.113549.1.7.3");
        assert_eq!(oid_text(&oid(&[2, 16, 840, 1, 101, 3, 4, 1, 46])[2..]), "2.16.840.1.101.3.4.1.46");
    }

    #[test]
    fn lengths_and_integers() {
        let big = vec![7u8; 300];
        let t = octets(&big);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2C]);
        let mut r = Reader::new(&t);
        assert_eq!(r.read().unwrap().content.len(), 300);
        assert!(r.is_empty());
        assert_eq!(uint(&[0x80]), [0x02, 0x02, 0x00, 0x80]);
        assert_eq!(uint(&[0, 0, 5]), [0x02, 0x01, 0x05]);
        assert_eq!(uint(&[]), [0x02, 0x01, 0x00]);
    }

    #[test]
    fn refuses_malformed() {
        assert!(Reader::new(&[0x30, 0x80, 0, 0]).read().is_err());
        assert!(Reader::new(&[0x30, 0x05, 1]).read().is_err());
        assert!(Reader::new(&[0x1F, 0x01, 0]).read().is_err());
        assert!(Reader::new(&[0x04, 0x85, 1, 1, 1, 1, 1]).read().is_err());
        assert!(Reader::new(&[]).read().is_err());
    }
}
