//! Runs the real `mamori` binary as a separate process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_mamori");
pub(crate) const PASSWORD: &str = "Correct horse 42!";

pub(crate) fn temp_dir(tag: &str) -> PathBuf {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let d = std::env::temp_dir().join(format!("mamori-cli-{tag}-{}-{n}", std::process::id()));
    remove_all(&[&d]);
    d
}

/// Removes files and directories a test made, best effort: anything left
/// behind is in the system's temporary directory and harms no test.
pub(crate) fn remove_all<P: AsRef<Path>>(paths: &[P]) {
    for p in paths.iter().map(AsRef::as_ref) {
        let removed = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
        removed.ok();
    }
}

pub(crate) struct Proc {
    pub child: Child,
    pub port: u16,
    pub as2_port: Option<u16>,
    pub admin_password: Option<String>,
}

/// A test that fails must not leave its server running (it would hold
/// the test harness's output pipe open, and the port).
impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // It may exit by itself in between; either way it is gone after.
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// Starts `mamori serve` on an ephemeral port; waits until it listens.
pub(crate) fn serve(dir: &Path) -> Proc {
    serve_with(dir, &[])
}

/// With extra arguments (e.g. `--as2-listen 127.0.0.1:0`).
pub(crate) fn serve_with(dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["serve", "--init", "--data", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    spawn(&args)
}

/// Runs a long-lived `mamori` command that serves (serve, standalone);
/// waits until it listens.
pub(crate) fn spawn(args: &[&str]) -> Proc {
    let want_as2 = args.contains(&"--as2-listen");
    let mut child = Command::new(BIN)
        .args(args)
        .env("MAMORI_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn mamori");
    let out = child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut admin_password = None;
    let mut port: u16 = 0;
    let mut as2_port = None;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("mamori exited before listening");
        }
        if let Some(rest) = line.trim().strip_prefix("one-time password:") {
            admin_password = Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if let Some(rest) = line.strip_prefix("mamori: listening on ") {
            let addr = rest.split_whitespace().next().unwrap();
            port = addr.rsplit(':').next().unwrap().parse().unwrap();
            if want_as2 {
                continue;
            }
        }
        if let Some(rest) = line.strip_prefix("mamori: AS2 (mutual TLS) on ") {
            let addr = rest.split([',', ' ']).next().unwrap();
            as2_port = Some(addr.rsplit(':').next().unwrap().parse().unwrap());
        }
        if port != 0 && (!want_as2 || as2_port.is_some()) {
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return Proc { child, port, as2_port, admin_password };
        }
    }
}

pub(crate) fn client(dir: &Path) -> reqwest::blocking::Client {
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    reqwest::blocking::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub(crate) fn base(p: &Proc) -> String {
    format!("https://localhost:{}", p.port)
}

pub(crate) fn login(c: &reqwest::blocking::Client, base: &str, user: &str, pw: &str) -> String {
    let r =
        c.post(format!("{base}/api/v1/auth/login")).json(&json!({"username": user, "password": pw})).send().unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().unwrap()["token"].as_str().unwrap().to_owned()
}

/// On a fresh server: admin password changed, a physician with a token.
pub(crate) fn setup(c: &reqwest::blocking::Client, base: &str, admin_otp: &str) -> (String, String) {
    let t = login(c, base, "admin", admin_otp);
    let r = c
        .post(format!("{base}/api/v1/auth/password"))
        .bearer_auth(&t)
        .json(&json!({"current": admin_otp, "new": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let admin = login(c, base, "admin", PASSWORD);
    // A clinical role grant waits for a second administrator (separation
    // of duties): make one, and let it approve dr.k's physician role.
    let r = c
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"name": "admin2", "display": "Second admin", "roles": ["admin"], "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let admin2 = first_login(c, base, "admin2");
    let r = c
        .post(format!("{base}/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"name": "dr.k", "display": "Dr K", "roles": ["physician"], "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let req = r.json::<serde_json::Value>().unwrap()["pending_request"].as_i64().expect("physician grant is pending");
    let r = c
        .post(format!("{base}/api/v1/account-requests/{req}/approve"))
        .bearer_auth(&admin2)
        .json(&json!({}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    (admin, first_login(c, base, "dr.k"))
}

/// The first login of an account created with `PASSWORD`: changes it (as
/// the first login must) and returns a token of the new session.
pub(crate) fn first_login(c: &reqwest::blocking::Client, base: &str, name: &str) -> String {
    let t = login(c, base, name, PASSWORD);
    let r = c
        .post(format!("{base}/api/v1/auth/password"))
        .bearer_auth(&t)
        .json(&json!({"current": PASSWORD, "new": "Another horse 43!"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    login(c, base, name, "Another horse 43!")
}

pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN).args(args).env("MAMORI_LOG_LEVEL", "warn").output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}
