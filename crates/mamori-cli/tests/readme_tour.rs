//! The README's "Five-minute tour with the API", run as written (curl and
//! jq in bash) against a fresh `mamori serve --init`: every step does what
//! its heading says.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::*;

/// The first ```sh block after the tour's heading.
fn tour_script() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let at = readme.find("## Five-minute tour with the API").expect("the tour is in the README");
    let rest = &readme[at..];
    let start = rest.find("```sh\n").unwrap() + "```sh\n".len();
    let end = start + rest[start..].find("\n```").unwrap();
    rest[start..end].to_owned()
}

#[test]
fn the_readme_api_tour_does_what_it_says() {
    let dir = temp_dir("tour");
    let p = serve(&dir);
    let d = dir.to_str().unwrap();
    let script = tour_script()
        .replace("./mamori-data", d)
        .replace("https://localhost:8443", &base(&p))
        .replace("cargo run --release -p mamori-cli --", BIN)
        .replace("/tmp/denied.json", &format!("{d}/denied.json"));
    let o = Command::new("bash").args(["-euo", "pipefail", "-c", &script]).output().expect("bash, curl and jq");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "the tour failed:\n{out}\n{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    // 1-2: passwords changed, accounts made and approved.
    assert!(lines.contains(&"it.kimura"), "{out}");
    assert!(lines.iter().filter(|l| **l == "true").count() >= 4, "{out}");
    assert_eq!(lines.iter().filter(|l| **l == "approved").count(), 2, "{out}");
    // 3: the kana search finds the patient; the vital sign is found by value; the correction is version 2; history keeps both.
    assert!(out.contains("\"2\""), "version 2: {out}");
    assert!(out.contains("37.5") && out.contains("38.5"), "the history keeps both values: {out}");
    // 4: dr.ito's read is refused with 403 and a break-glass explanation; after breaking the glass, 200.
    let i403 = lines.iter().position(|l| *l == "403").unwrap_or_else(|| panic!("a 403 for dr.ito: {out}\n{err}"));
    assert!(lines[i403 + 1].contains("break-glass"), "the refusal explains break-glass: {out}");
    assert!(
        lines.iter().any(|l| l.parse::<u32>().is_ok_and(|n| (1780..=1800).contains(&n))),
        "a 30-minute grant: {out}"
    );
    assert_eq!(lines.iter().rev().find(|l| **l == "200" || **l == "403").copied(), Some("200"), "{out}");
    // 5: the audit log verifies.
    assert!(format!("{out}{err}").contains("OK"), "{out}{err}");
    drop(p);
    remove_all(&[&dir]);
}
