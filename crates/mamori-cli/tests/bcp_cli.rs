//! The emergency procedure from the command line: offline on a stopped
//! server's data directory, then against the running server with a
//! decider's token.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::json;

#[test]
fn bcp_and_emergency_accounts_from_the_cli() {
    let dir = temp_dir("bcp-cli");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (admin, _doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    let r = c
        .post(format!("{b}/api/v1/users"))
        .bearer_auth(&admin)
        .json(&json!({"name": "chief", "display": "BCP chief", "roles": ["bcp-decider"], "password": PASSWORD}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let d = dir.to_str().unwrap();

    // Offline: import the plan, provision and print an emergency account.
    let (code, out, err) = run(&[
        "bcp",
        "plan",
        "import",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/example-bcp-plan.toml"),
        "--data",
        d,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("version 1"), "{out}");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "title = 3\n").unwrap();
    let (code, _, err) = run(&["bcp", "plan", "import", bad.to_str().unwrap(), "--data", d]);
    assert_eq!(code, 1);
    assert!(err.contains("line 1"), "{err}");
    let (code, out, err) =
        run(&["emergency-accounts", "provision", "--count", "2", "--role", "physician,nurse", "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    let names: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(names.len(), 2);
    let (code, out, err) = run(&["emergency-accounts", "envelope", &names[0], "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SEALED EMERGENCY ACCOUNT") && out.contains("非常用アカウント"), "{out}");
    let password = out.lines().find(|l| l.contains("Password:")).unwrap().rsplit(' ').next().unwrap().to_owned();
    let (code, _, err) = run(&["emergency-accounts", "envelope", &names[0], "--data", d]);
    assert_eq!(code, 1, "an envelope is printed once");
    assert!(err.contains("already printed"), "{err}");
    let (code, out, _) = run(&["emergency-accounts", "list", "--data", d]);
    assert_eq!(code, 0);
    assert!(out.contains("sealed") && out.contains("awaiting_envelope"), "{out}");

    // Online: a decider declares, moves phases, returns to normal.
    let mut p = serve(&dir);
    let b = base(&p);
    let ca = dir.join("tls/cert.pem");
    let t = login(&c, &b, "chief", PASSWORD);
    let r = c
        .post(format!("{b}/api/v1/auth/password"))
        .bearer_auth(&t)
        .json(&json!({"current": PASSWORD, "new": "Chief passphrase 9"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let chief = login(&c, &b, "chief", "Chief passphrase 9");
    let online = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--server", &b, "--token", &chief, "--ca", ca.to_str().unwrap()]);
        run(&all)
    };
    let (code, out, err) = online(&[
        "bcp",
        "declare",
        "--cause",
        "disaster",
        "--criteria",
        "earthquake",
        "--reason",
        "震度6強、サーバー室浸水 / server room flooded",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let id: String = out.split_whitespace().nth(1).unwrap().to_owned();
    let (code, out, _) = online(&["bcp", "status"]);
    assert_eq!(code, 0);
    assert!(out.contains("emergency; phase=activation"), "{out}");
    // The emergency account works now.
    let r = c
        .post(format!("{b}/api/v1/emergency-login"))
        .json(&json!({"account": names[0], "password": password, "real_name": "応援 花子", "affiliation": "近隣病院"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    let (code, _, err) = online(&["bcp", "transition", &id, "--to", "recovery"]);
    assert_eq!(code, 1, "skipping a phase");
    assert!(err.contains("one at a time"), "{err}");
    for to in ["resumption", "recovery", "full_recovery"] {
        let (code, out, err) = online(&["bcp", "transition", &id, "--to", to]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, _, _) = online(&["bcp", "check", &id, "full_recovery", "summary", "--note", "done"]);
    assert_eq!(code, 0);
    let (code, out, err) = online(&[
        "bcp",
        "transition",
        &id,
        "--to",
        "normal",
        "--override",
        "残りは電話で確認済み / rest confirmed by phone",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("closed"));
    let (code, out, _) = online(&["bcp", "review", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("\"emergency_accounts\""), "{out}");
    let (code, _, _) = online(&["bcp", "review", &id, "--lessons", "浸水対策が必要 / flood protection needed"]);
    assert_eq!(code, 0);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let (code, out, _) = run(&["emergency-accounts", "list", "--data", d]);
    assert_eq!(code, 0);
    assert!(out.contains("retired") && out.contains("応援 花子"), "{out}");
    remove_all(&[&dir]);
}
