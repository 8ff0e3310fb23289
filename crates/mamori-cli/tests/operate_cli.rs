//! Operating mamori as a hospital's IT team does (issue 19), on the real
//! binary: `init` and `serve` as separate steps, an uninitialized or
//! already initialized directory refused, the admin's first password never
//! lost (a busy port after initialization points to it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod common;

use std::os::unix::fs::PermissionsExt;

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
