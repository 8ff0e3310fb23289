//! Operating mamori as a hospital's IT team does (issue 19), on the real
//! binary: `init` and `serve` as separate steps, an uninitialized or
//! already initialized directory refused, the admin's first password never
//! lost (a busy port after initialization points to it), the log plain
//! when redirected, the access log a summary by default.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn password_in(dir: &std::path::Path) -> String {
    let text = std::fs::read_to_string(dir.join("initial-admin-password")).unwrap();
    text.lines().next().unwrap().trim().to_owned()
}

#[test]
fn init_then_serve_and_the_first_password_is_never_lost() {
    let dir = temp_dir("init");
    let d = dir.to_str().unwrap();
    // serve refuses a directory nobody initialized, and says what to do.
    let (code, _, err) = run(&["serve", "--data", d, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("is not an initialized mamori data directory") && err.contains("mamori init --data"), "{err}");
    assert!(!dir.join("mamori.db").exists(), "nothing was created");

    let (code, out, err) = run(&["init", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let pw = password_in(&dir);
    assert!(out.contains(&format!("one-time password:        {pw}")), "{out}");
    assert!(out.contains("initial-admin-password"), "{out}");
    let mode = std::fs::metadata(dir.join("initial-admin-password")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "readable only by the service user");
    let (code, _, err) = run(&["init", "--data", d]);
    assert_eq!(code, 1);
    assert!(err.contains("already initialized"), "{err}");
    assert_eq!(password_in(&dir), pw, "a second init changes nothing");

    // The password from the file works; once changed, the file goes at the next start.
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let t = login(&c, &b, "admin", &pw);
    let r = c
        .post(format!("{b}/api/v1/auth/password"))
        .bearer_auth(&t)
        .json(&json!({"current": pw, "new": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(dir.join("initial-admin-password").exists(), "kept until the server starts again");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let p = serve(&dir);
    assert!(!dir.join("initial-admin-password").exists(), "removed after the change");
    drop(p);

    // Initialized, then the port is busy: the error says where the password is.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let dir2 = temp_dir("init-busy");
    let d2 = dir2.to_str().unwrap();
    let (code, out, err) = run(&["serve", "--init", "--data", d2, "--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains(&format!("{d2}/initial-admin-password")) && err.contains("reset-password admin"), "{err}");
    assert!(!password_in(&dir2).is_empty());
    remove_all(&[&dir, &dir2]);
}

#[test]
fn the_log_is_plain_when_redirected_and_the_access_log_summarizes() {
    let dir = temp_dir("logs");
    let d = dir.to_str().unwrap();
    assert_eq!(run(&["init", "--data", d]).0, 0);
    let toml = std::fs::read_to_string(dir.join("mamori.toml")).unwrap();
    assert!(toml.contains("summary_seconds = 60") && toml.contains("access = \"summary\""), "the default: {toml}");
    std::fs::write(dir.join("mamori.toml"), toml.replace("summary_seconds = 60", "summary_seconds = 1")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--data", d, "--listen", "127.0.0.1:0"])
        .env_remove("MAMORI_LOG_LEVEL")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port = 0u16;
    let mut ui = String::new();
    let mut line = String::new();
    while port == 0 || ui.is_empty() {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "exited before listening");
        if let Some(rest) = line.strip_prefix("mamori: listening on ") {
            port = rest.split_whitespace().next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
        }
        if let Some(rest) = line.strip_prefix("mamori: web UI ") {
            ui = rest.trim().to_owned();
        }
    }
    assert!(ui.ends_with("/ui/"), "plain serve prints the web UI's address: {ui}");
    let c = client(&dir);
    let b = format!("https://localhost:{port}");
    for _ in 0..25 {
        assert_eq!(c.get(format!("{b}/healthz")).send().unwrap().status(), 200);
    }
    assert_eq!(c.get(format!("{b}/api/v1/auth/me")).send().unwrap().status(), 401);
    // Wait for a summary line, then stop.
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(!err.contains('\u{1b}'), "no ANSI escape codes in a redirected log: {err}");
    let field = |l: &str, k: &str| -> u64 {
        l.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let summaries: Vec<&str> =
        err.lines().filter(|l| l.contains("mamori::access") && l.contains("requests=")).collect();
    assert!(!summaries.is_empty(), "a summary line: {err}");
    assert_eq!(summaries.iter().map(|l| field(l, "requests=")).sum::<u64>(), 26, "{err}");
    assert_eq!(summaries.iter().map(|l| field(l, "client_errors=")).sum::<u64>(), 1, "{err}");
    assert!(
        !err.lines().any(|l| l.contains("mamori::access") && l.contains("status=")),
        "no line per request by default: {err}"
    );
    remove_all(&[&dir]);
}

/// Turns an initialized directory's database into the previous release's
/// schema (15: before canonical quantities), as an upgrade finds it.
fn make_previous_release(dir: &std::path::Path) {
    let c = rusqlite::Connection::open(dir.join("mamori.db")).unwrap();
    // What the newest migration (19) adds; update with each migration.
    c.execute_batch("DROP TABLE patient_number_seq; UPDATE meta SET value = '18' WHERE key = 'schema_version';")
        .unwrap();
}

fn schema_of(db: &std::path::Path) -> String {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn upgrade_checks_copies_first_and_refuses_a_newer_database() {
    let dir = temp_dir("upgrade");
    let d = dir.to_str().unwrap();
    assert_eq!(run(&["init", "--data", d]).0, 0);
    let (code, out, _) = run(&["upgrade", "--check", "--data", d]);
    assert_eq!(code, 0);
    assert!(out.contains("up to date"), "{out}");
    make_previous_release(&dir);

    // --check says what will run and changes nothing.
    let (code, out, err) = run(&["upgrade", "--check", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("schema version 18; this mamori expects 19") && out.contains("will run: 0019_patient_numbers"),
        "{out}"
    );
    assert!(out.contains("a copy of the database is taken first"), "{out}");
    assert_eq!(schema_of(&dir.join("mamori.db")), "18");
    assert!(!dir.join("backups").exists());

    // The upgrade: a copy of the old database first, then the migration.
    let (code, out, err) = run(&["upgrade", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("schema version 18 -> 19"), "{out}");
    let copies: Vec<_> = std::fs::read_dir(dir.join("backups")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert!(copies[0].file_name().unwrap().to_str().unwrap().starts_with("mamori-schema18-"));
    assert_eq!(schema_of(&copies[0]), "18", "the way back is the old schema");
    assert_eq!(schema_of(&dir.join("mamori.db")), "19");
    // The copy's audit log verifies: a restore of it is the log as it was.
    let vkey = std::fs::read_to_string(dir.join("keys/audit.vkey")).unwrap().trim().to_owned();
    let restored = temp_dir("upgrade-restored");
    std::fs::create_dir_all(&restored).unwrap();
    for f in ["mamori.toml", "keys", "tls"] {
        let st = Command::new("cp").arg("-r").arg(dir.join(f)).arg(&restored).status().unwrap();
        assert!(st.success());
    }
    std::fs::copy(&copies[0], restored.join("mamori.db")).unwrap();
    let (code, out, err) = run(&["audit", "verify", "--data", restored.to_str().unwrap(), "--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
    // The server serves the upgraded directory.
    drop(serve(&dir));

    // A database newer than this build: refused by upgrade and by serve.
    rusqlite::Connection::open(dir.join("mamori.db"))
        .unwrap()
        .execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'", [])
        .unwrap();
    let (code, _, err) = run(&["upgrade", "--check", "--data", d]);
    assert_eq!(code, 1);
    assert!(err.contains("newer than this mamori"), "{err}");
    let (code, _, err) = run(&["serve", "--data", d, "--listen", "127.0.0.1:0"]);
    assert_eq!(code, 1);
    assert!(err.contains("newer than this mamori"), "{err}");
    remove_all(&[&dir, &restored]);
}
