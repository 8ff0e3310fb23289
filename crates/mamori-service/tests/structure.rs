//! The shape the access rules depend on, checked over the source: only
//! `authz::decide` calls `policy::authorize`, and no code outside
//! `mamori-core` decides by role. A handler or use case that grows its own
//! role check fails here; add an `Operation` or a rule instead.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source lines of the crates that must not decide, without comments.
fn code_of(crates: &[&str]) -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in crates {
        sources(&root.join(c).join("src"), &mut files);
    }
    assert!(files.len() > 20, "the sources were found ({})", files.len());
    let mut out = Vec::new();
    for f in files {
        let name = f.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let t = line.trim_start();
            if !t.starts_with("//") {
                out.push((name.clone(), line.to_owned()));
            }
        }
    }
    out
}

const ADAPTERS_AND_SERVICES: &[&str] = &["mamori-service", "mamori-server", "mamori-cli", "mamori-bench"];

#[test]
fn only_authz_decide_calls_authorize() {
    let callers: Vec<_> = code_of(ADAPTERS_AND_SERVICES)
        .into_iter()
        .filter(|(_, l)| l.contains("authorize("))
        .map(|(f, l)| format!("{f}: {}", l.trim()))
        .collect();
    assert_eq!(callers.len(), 1, "one caller of policy::authorize, in authz.rs:\n{}", callers.join("\n"));
    assert!(callers[0].starts_with("mamori-service/src/authz.rs"), "{callers:?}");
}

/// The uses of roles that are not decisions, by file, with their count: a
/// new one anywhere fails (review it, then add it here with its reason).
const NOT_DECISIONS: &[(&str, usize, &str)] = &[
    ("mamori-service/src/demo.rs", 3, "the demo hospital's staff and their roles"),
    ("mamori-service/src/init.rs", 1, "the first administrator of a new installation"),
    ("mamori-service/src/actor.rs", 1, "the local operator's identity"),
    ("mamori-service/src/exchange/outbox.rs", 1, "who is told that a message failed"),
    ("mamori-service/src/notify.rs", 2, "which open screens an announcement reaches"),
    ("mamori-service/src/accounts.rs", 5, "parsing role names; which roles wait for the second admin"),
    ("mamori-service/src/eaccounts.rs", 3, "parsing and validating an emergency account's roles"),
    ("mamori-bench/src/export.rs", 1, "the benchmark's physician account, created in its store"),
];

#[test]
fn no_role_checks_outside_the_policy() {
    let patterns = ["Role::", ".roles.contains(", "is_clinical()", "has_role", ".holds("];
    let mut found: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (f, l) in code_of(ADAPTERS_AND_SERVICES) {
        let n = patterns.iter().map(|p| l.matches(p).count()).sum::<usize>();
        for _ in 0..n {
            found.entry(f.clone()).or_default().push(l.trim().to_owned());
        }
    }
    let mut problems = Vec::new();
    for (f, lines) in &found {
        match NOT_DECISIONS.iter().find(|(name, _, _)| name == f) {
            Some((_, n, _)) if *n == lines.len() => {}
            Some((_, n, why)) => problems.push(format!(
                "{f}: {} uses of roles, {n} known ({why}):\n  {}",
                lines.len(),
                lines.join("\n  ")
            )),
            None => problems.push(format!("{f}: decides by role:\n  {}", lines.join("\n  "))),
        }
    }
    for (name, _, _) in NOT_DECISIONS {
        if !found.contains_key(*name) {
            problems.push(format!("{name}: listed but has no uses of roles any more; remove it from NOT_DECISIONS"));
        }
    }
    assert!(problems.is_empty(), "role checks outside mamori-core's policy:\n{}", problems.join("\n"));
}

#[test]
fn the_http_adapter_does_not_decide_or_write() {
    // The server crate renders; the store's writer and the policy are
    // reached through the service layer only.
    for (f, l) in code_of(&["mamori-server"]) {
        for bad in
            ["policy::authorize", ".writer()", "mamori_store::records::put", "Decision::permit", "Decision::deny"]
        {
            assert!(!l.contains(bad), "{f}: {bad} in the HTTP adapter: {}", l.trim());
        }
    }
}
