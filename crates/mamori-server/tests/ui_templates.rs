//! The web UI's pages are maud templates, which escape every value they
//! splice in. This test reads the UI's sources and fails on the ways back
//! to hand-built HTML: a tag written in a Rust string (a page assembled
//! with `format!` or `push_str`), a hand-written escaping function, and
//! `PreEscaped` (markup taken as it is) anywhere but the one documented
//! place that shows a page's own earlier output again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

/// The string literals of a Rust source, with their line numbers (a small
/// lexer: comments, raw strings, byte strings, escapes, char literals and
/// lifetimes).
fn string_literals(src: &str) -> Vec<(usize, String)> {
    let b: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < b.len() {
        let c = b[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && b.get(i + 1) == Some(&'/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && b.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == '*' && b[i + 1] == '/') {
                line += usize::from(b[i] == '\n');
                i += 1;
            }
            i += 2;
        } else if c == 'r'
            && (b.get(i + 1) == Some(&'"') || b.get(i + 1) == Some(&'#'))
            && !ident(b.get(i.wrapping_sub(1)))
        {
            // r"..." or r#"..."#
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                i += 1;
                continue;
            }
            let start_line = line;
            let mut s = String::new();
            j += 1;
            loop {
                if j >= b.len() {
                    break;
                }
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                line += usize::from(b[j] == '\n');
                s.push(b[j]);
                j += 1;
            }
            out.push((start_line, s));
            i = j;
        } else if c == '"' {
            let start_line = line;
            let mut s = String::new();
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                if b[j] == '\\' {
                    s.push(b[j]);
                    j += 1;
                }
                if j < b.len() {
                    line += usize::from(b[j] == '\n');
                    s.push(b[j]);
                }
                j += 1;
            }
            out.push((start_line, s));
            i = j + 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{1}') or a lifetime ('a).
            if b.get(i + 1) == Some(&'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

fn ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Whether a text holds the start of an HTML tag, comment or doctype.
fn has_tag(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(2).any(|w| w[0] == b'<' && (w[1].is_ascii_alphabetic() || w[1] == b'/' || w[1] == b'!'))
}

fn ui_sources() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ui");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            (p.extension().and_then(|x| x.to_str()) == Some("rs"))
                .then(|| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        })
        .collect();
    files.sort();
    assert!(files.len() >= 9, "the UI's sources are where this test looks: {files:?}");
    files
}

#[test]
fn the_lexer_finds_tags_in_strings_and_nothing_else() {
    let src = r##"
        // a comment with "<b>" is not code
        let a: Vec<String> = vec![]; let c = '<'; let l: &'static str = "x";
        /* "<i>" */
        let s = format!("<td>{}</td>", x);
        let r = r#"<p class="a">"#;
        let ok = "a < b and 3<4";
    "##;
    let found: Vec<(usize, String)> = string_literals(src).into_iter().filter(|(_, s)| has_tag(s)).collect();
    assert_eq!(found, vec![(5, "<td>{}</td>".to_owned()), (6, "<p class=\"a\">".to_owned())]);
}

#[test]
fn no_page_is_built_from_html_in_strings() {
    let mut bad = Vec::new();
    for (name, src) in ui_sources() {
        for (line, s) in string_literals(&src) {
            if has_tag(&s) {
                bad.push(format!("src/ui/{name}:{line}: {s:?}"));
            }
        }
    }
    assert!(bad.is_empty(), "HTML written in Rust strings (use a maud template):\n{}", bad.join("\n"));
}

#[test]
fn nothing_is_spliced_unescaped_and_there_is_no_hand_escaping() {
    for (name, src) in ui_sources() {
        let code: String = src.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let pre = code.matches("PreEscaped").count();
        if name == "html.rs" {
            // `kept_markup`: a page's own earlier output shown once more.
            assert_eq!(pre, 1, "html.rs: PreEscaped only in kept_markup");
        } else {
            assert_eq!(pre, 0, "src/ui/{name}: PreEscaped bypasses the template's escaping");
        }
        for f in ["fn esc(", "fn escape(", "&amp;"] {
            assert!(!code.contains(f), "src/ui/{name}: hand-made escaping ({f})");
        }
    }
}
