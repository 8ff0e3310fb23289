//! A small PDF writer for printed reports: A4 pages of text lines in one
//! embedded TrueType font (a subset of the glyphs used), so that Japanese
//! text prints and copies the same on any reader.
//!
//! The font is a Type 0 font (CIDFontType2, Identity-H, CIDs = glyph ids)
//! with a ToUnicode map, as PDF 1.7 (ISO 32000-1) 9.7 and 9.10 describe.
//! Only TrueType outlines (`glyf`) are supported; the operator points
//! `[compliance] pdf_font` at one (Debian: fonts-ipaexfont-gothic).

use std::collections::{BTreeMap, BTreeSet};

use ttf_parser::{Face, GlyphId, Tag};

/// A4 in points.
const PAGE_W: f32 = 595.28;
const PAGE_H: f32 = 841.89;
const MARGIN: f32 = 48.0;

/// One line of a document, before wrapping.
#[derive(Debug, Clone)]
pub(crate) enum Line {
    /// A title (large).
    Title(String),
    /// A heading.
    Heading(String),
    /// Body text, wrapped; `indent` in points.
    Text {
        /// The text.
        text: String,
        /// Left indent.
        indent: f32,
    },
    /// Vertical space.
    Gap,
}

/// Why a PDF could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PdfError {
    /// The font file cannot be used.
    #[error("the PDF font cannot be used: {0}")]
    Font(String),
}

fn ferr(m: impl Into<String>) -> PdfError {
    PdfError::Font(m.into())
}

struct Font<'a> {
    face: Face<'a>,
    upem: f32,
}

impl Font<'_> {
    fn glyph(&self, c: char) -> u16 {
        self.face.glyph_index(c).or_else(|| self.face.glyph_index('?')).map(|g| g.0).unwrap_or(0)
    }
    /// Advance of glyph `g` in 1/1000 em.
    fn advance(&self, g: u16) -> f32 {
        f32::from(self.face.glyph_hor_advance(GlyphId(g)).unwrap_or(0)) * 1000.0 / self.upem
    }
}

struct Placed {
    size: f32,
    x: f32,
    y: f32,
    glyphs: Vec<u16>,
}

/// Renders `lines` on A4 pages, with `footer` and the page number at the
/// foot of each; `title` goes in the document information.
pub(crate) fn render(lines: &[Line], font_data: &[u8], title: &str, footer: &str) -> Result<Vec<u8>, PdfError> {
    let face = Face::parse(font_data, 0).map_err(|e| ferr(e.to_string()))?;
    if face.raw_face().table(Tag::from_bytes(b"glyf")).is_none() {
        return Err(ferr("it has no TrueType outlines (glyf); use a .ttf font such as IPAexGothic"));
    }
    let upem = f32::from(face.units_per_em());
    let font = Font { face, upem };
    let mut used: BTreeMap<u16, char> = BTreeMap::new();
    used.insert(0, '\u{fffd}');

    // Layout.
    let width = PAGE_W - 2.0 * MARGIN;
    let mut pages: Vec<Vec<Placed>> = vec![Vec::new()];
    let mut y = PAGE_H - MARGIN;
    let put = |pages: &mut Vec<Vec<Placed>>, y: &mut f32, size: f32, x: f32, glyphs: Vec<u16>| {
        let lead = size * 1.45;
        if *y - lead < MARGIN + 20.0 {
            pages.push(Vec::new());
            *y = PAGE_H - MARGIN;
        }
        *y -= lead;
        if let Some(p) = pages.last_mut() {
            p.push(Placed { size, x, y: *y, glyphs });
        }
    };
    for line in lines {
        let (text, size, indent) = match line {
            Line::Title(t) => (t.as_str(), 15.0, 0.0),
            Line::Heading(t) => (t.as_str(), 11.5, 0.0),
            Line::Text { text, indent } => (text.as_str(), 9.0, *indent),
            Line::Gap => {
                y -= 6.0;
                continue;
            }
        };
        let avail = (width - indent) * 1000.0 / size;
        let mut cur: Vec<(char, u16)> = Vec::new();
        let mut w = 0.0;
        for c in text.chars().filter(|c| !c.is_control()) {
            let g = font.glyph(c);
            let a = font.advance(g);
            if w + a > avail && !cur.is_empty() {
                // Break at the last space when the line has one (Latin text).
                let cut = cur.iter().rposition(|(ch, _)| *ch == ' ').filter(|i| *i > cur.len() / 2);
                let rest = match cut {
                    Some(i) => cur.split_off(i + 1),
                    None => Vec::new(),
                };
                for (ch, g) in &cur {
                    used.entry(*g).or_insert(*ch);
                }
                put(&mut pages, &mut y, size, MARGIN + indent, cur.iter().map(|x| x.1).collect());
                cur = rest;
                w = cur.iter().map(|x| font.advance(x.1)).sum();
            }
            cur.push((c, g));
            w += a;
        }
        for (ch, g) in &cur {
            used.entry(*g).or_insert(*ch);
        }
        put(&mut pages, &mut y, size, MARGIN + indent, cur.iter().map(|x| x.1).collect());
    }
    let n = pages.len();
    for (i, page) in pages.iter_mut().enumerate() {
        let text = format!("{footer}   {}/{n}", i + 1);
        let glyphs: Vec<u16> = text.chars().map(|c| font.glyph(c)).collect();
        for (c, g) in text.chars().zip(&glyphs) {
            used.entry(*g).or_insert(c);
        }
        page.push(Placed { size: 7.5, x: MARGIN, y: MARGIN - 14.0, glyphs });
    }

    // Objects: 1 catalog, 2 pages, 3 font, 4 CID font, 5 descriptor,
    // 6 font file, 7 ToUnicode, 8 info, then page and content pairs.
    let mut objs: Vec<Vec<u8>> = Vec::new();
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 9 + 2 * i)).collect();
    objs.push(b"<< /Type /Catalog /Pages 2 0 R >>".to_vec());
    objs.push(format!("<< /Type /Pages /Kids [{}] /Count {n} >>", kids.join(" ")).into_bytes());
    objs.push(
        b"<< /Type /Font /Subtype /Type0 /BaseFont /MAMORI+Embedded /Encoding /Identity-H /DescendantFonts [4 0 R] /ToUnicode 7 0 R >>"
            .to_vec(),
    );
    let mut w = String::new();
    for g in used.keys() {
        w.push_str(&format!("{g} [{}] ", font.advance(*g).round() as i64));
    }
    objs.push(
        format!(
            "<< /Type /Font /Subtype /CIDFontType2 /BaseFont /MAMORI+Embedded /CIDSystemInfo << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /FontDescriptor 5 0 R /DW 1000 /W [{w}] /CIDToGIDMap /Identity >>"
        )
        .into_bytes(),
    );
    let s = 1000.0 / upem;
    let bb = font.face.global_bounding_box();
    objs.push(
        format!(
            "<< /Type /FontDescriptor /FontName /MAMORI+Embedded /Flags 4 /FontBBox [{} {} {} {}] /ItalicAngle 0 /Ascent {} /Descent {} /CapHeight {} /StemV 80 /FontFile2 6 0 R >>",
            (f32::from(bb.x_min) * s) as i64,
            (f32::from(bb.y_min) * s) as i64,
            (f32::from(bb.x_max) * s) as i64,
            (f32::from(bb.y_max) * s) as i64,
            (f32::from(font.face.ascender()) * s) as i64,
            (f32::from(font.face.descender()) * s) as i64,
            (f32::from(font.face.capital_height().unwrap_or(font.face.ascender())) * s) as i64,
        )
        .into_bytes(),
    );
    let glyph_set: BTreeSet<u16> = used.keys().copied().collect();
    let sub = subset(&font.face, &glyph_set)?;
    objs.push(stream(&format!("/Length1 {}", sub.len()), &sub));
    objs.push(stream("", to_unicode(&used).as_bytes()));
    objs.push(format!("<< /Title {} /Producer (mamori) >>", utf16_hex(title)).into_bytes());
    for (i, page) in pages.iter().enumerate() {
        objs.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}] /Resources << /Font << /F1 3 0 R >> >> /Contents {} 0 R >>",
                10 + 2 * i
            )
            .into_bytes(),
        );
        let mut c = String::new();
        for p in page {
            let hex: String = p.glyphs.iter().map(|g| format!("{g:04X}")).collect();
            c.push_str(&format!("BT /F1 {:.1} Tf {:.2} {:.2} Td <{hex}> Tj ET\n", p.size, p.x, p.y));
        }
        objs.push(stream("", c.as_bytes()));
    }

    // File.
    let mut out: Vec<u8> = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        out.extend_from_slice(o);
        out.extend_from_slice(b"\nendobj\n");
    }
    let xref = out.len();
    let mut x = format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1);
    for o in offsets {
        x.push_str(&format!("{o:010} 00000 n \n"));
    }
    x.push_str(&format!("trailer\n<< /Size {} /Root 1 0 R /Info 8 0 R >>\nstartxref\n{xref}\n%%EOF\n", objs.len() + 1));
    out.extend_from_slice(x.as_bytes());
    Ok(out)
}

fn stream(extra: &str, data: &[u8]) -> Vec<u8> {
    let mut o = format!("<< /Length {} {extra} >>\nstream\n", data.len()).into_bytes();
    o.extend_from_slice(data);
    o.extend_from_slice(b"\nendstream");
    o
}

fn utf16_hex(s: &str) -> String {
    let mut h = String::from("<FEFF");
    for u in s.encode_utf16() {
        h.push_str(&format!("{u:04X}"));
    }
    h.push('>');
    h
}

fn to_unicode(used: &BTreeMap<u16, char>) -> String {
    let mut s = String::from(
        "/CIDInit /ProcSet findresource begin\n12 dict begin\nbegincmap\n/CIDSystemInfo << /Registry (Adobe) /Ordering (UCS) /Supplement 0 >> def\n/CMapName /Adobe-Identity-UCS def\n/CMapType 2 def\n1 begincodespacerange\n<0000> <FFFF>\nendcodespacerange\n",
    );
    let entries: Vec<_> = used.iter().filter(|(g, _)| **g != 0).collect();
    for chunk in entries.chunks(100) {
        s.push_str(&format!("{} beginbfchar\n", chunk.len()));
        for (g, c) in chunk {
            let mut buf = [0u16; 2];
            let hex: String = c.encode_utf16(&mut buf).iter().map(|u| format!("{u:04X}")).collect();
            s.push_str(&format!("<{g:04X}> <{hex}>\n"));
        }
        s.push_str("endbfchar\n");
    }
    s.push_str("endcmap\nCMapName currentdict /CMap defineresource pop\nend\nend\n");
    s
}

fn be16(d: &[u8], at: usize) -> Option<u16> {
    d.get(at..at + 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn be32(d: &[u8], at: usize) -> Option<u32> {
    d.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// A TrueType font holding only the glyphs in `keep` (and the components
/// of composite ones): the others are emptied, the glyph ids unchanged.
fn subset(face: &Face<'_>, keep: &BTreeSet<u16>) -> Result<Vec<u8>, PdfError> {
    let raw = face.raw_face();
    let table = |t: &[u8; 4]| raw.table(Tag::from_bytes(t));
    let head = table(b"head").ok_or_else(|| ferr("no head table"))?;
    let loca = table(b"loca").ok_or_else(|| ferr("no loca table"))?;
    let glyf = table(b"glyf").ok_or_else(|| ferr("no glyf table"))?;
    let long = be16(head, 50).ok_or_else(|| ferr("short head table"))? == 1;
    let n = face.number_of_glyphs() as usize;
    let offset = |g: usize| -> Option<usize> {
        if long {
            be32(loca, g * 4).map(|v| v as usize)
        } else {
            be16(loca, g * 2).map(|v| 2 * v as usize)
        }
    };
    let glyph = |g: usize| -> Option<&[u8]> {
        let (a, b) = (offset(g)?, offset(g + 1)?);
        if b < a {
            return None;
        }
        glyf.get(a..b)
    };
    // The closure over composite glyphs' components.
    let mut all: BTreeSet<u16> = keep.clone();
    let mut todo: Vec<u16> = keep.iter().copied().collect();
    while let Some(g) = todo.pop() {
        let Some(d) = glyph(g as usize) else { continue };
        if d.len() < 10 || (be16(d, 0).unwrap_or(0) as i16) >= 0 {
            continue;
        }
        let mut at = 10;
        while let (Some(flags), Some(comp)) = (be16(d, at), be16(d, at + 2)) {
            if (comp as usize) < n && all.insert(comp) {
                todo.push(comp);
            }
            at += 4 + if flags & 1 != 0 { 4 } else { 2 };
            at += if flags & 0x8 != 0 {
                2
            } else if flags & 0x40 != 0 {
                4
            } else if flags & 0x80 != 0 {
                8
            } else {
                0
            };
            if flags & 0x20 == 0 {
                break;
            }
        }
    }
    let mut new_glyf = Vec::new();
    let mut new_loca = Vec::with_capacity((n + 1) * 4);
    for g in 0..n {
        new_loca.extend_from_slice(&(new_glyf.len() as u32).to_be_bytes());
        if all.contains(&(g as u16)) {
            if let Some(d) = glyph(g) {
                new_glyf.extend_from_slice(d);
                while new_glyf.len() % 4 != 0 {
                    new_glyf.push(0);
                }
            }
        }
    }
    new_loca.extend_from_slice(&(new_glyf.len() as u32).to_be_bytes());
    let mut new_head = head.to_vec();
    new_head.get_mut(8..12).ok_or_else(|| ferr("short head table"))?.copy_from_slice(&[0; 4]);
    new_head.get_mut(50..52).ok_or_else(|| ferr("short head table"))?.copy_from_slice(&1u16.to_be_bytes());

    let mut tables: Vec<([u8; 4], Vec<u8>)> = Vec::new();
    for tag in [b"cvt ", b"fpgm", b"glyf", b"head", b"hhea", b"hmtx", b"loca", b"maxp", b"prep"] {
        let body = match tag {
            b"glyf" => new_glyf.clone(),
            b"loca" => new_loca.clone(),
            b"head" => new_head.clone(),
            _ => match table(tag) {
                Some(t) => t.to_vec(),
                None if matches!(tag, b"cvt " | b"fpgm" | b"prep") => continue,
                None => return Err(ferr(format!("no {} table", String::from_utf8_lossy(tag)))),
            },
        };
        tables.push((*tag, body));
    }
    let num = tables.len() as u16;
    let mut es = 0u16;
    while (1u16 << (es + 1)) <= num {
        es += 1;
    }
    let sr = (1u16 << es) * 16;
    let mut out = Vec::new();
    out.extend_from_slice(&0x0001_0000u32.to_be_bytes());
    out.extend_from_slice(&num.to_be_bytes());
    out.extend_from_slice(&sr.to_be_bytes());
    out.extend_from_slice(&es.to_be_bytes());
    out.extend_from_slice(&(num * 16 - sr).to_be_bytes());
    let mut at = 12 + 16 * tables.len();
    let mut head_at = 0;
    for (tag, body) in &tables {
        out.extend_from_slice(tag);
        out.extend_from_slice(&checksum(body).to_be_bytes());
        out.extend_from_slice(&(at as u32).to_be_bytes());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        if tag == b"head" {
            head_at = at;
        }
        at += body.len().div_ceil(4) * 4;
    }
    for (_, body) in &tables {
        out.extend_from_slice(body);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    }
    let adjust = 0xB1B0_AFBAu32.wrapping_sub(checksum(&out));
    if let Some(slot) = out.get_mut(head_at + 8..head_at + 12) {
        slot.copy_from_slice(&adjust.to_be_bytes());
    }
    Ok(out)
}

fn checksum(d: &[u8]) -> u32 {
    d.chunks(4).fold(0u32, |acc, c| {
        let mut b = [0u8; 4];
        b[..c.len()].copy_from_slice(c);
        acc.wrapping_add(u32::from_be_bytes(b))
    })
}
