//! Partner onboarding and a referral from the command line, between two
//! `mamori serve` processes with AS2 listeners.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use serde_json::{json, Value};

struct Node {
    dir: std::path::PathBuf,
    proc: Proc,
    admin: String,
    doc: String,
}

fn node(tag: &str, as2_id: &str) -> Node {
    let dir = temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mamori.toml"), format!("[exchange]\nas2_id = \"{as2_id}\"\nretry_initial_seconds = 1\n"))
        .unwrap();
    let proc = serve_with(&dir, &["--as2-listen", "127.0.0.1:0"]);
    let c = client(&dir);
    let (admin, doc) = setup(&c, &base(&proc), proc.admin_password.as_deref().unwrap());
    Node { dir, proc, admin, doc }
}

fn cli(n: &Node, token: &str, args: &[&str]) -> (i32, String, String) {
    let mut a: Vec<&str> = args.to_vec();
    let b = base(&n.proc);
    let ca = n.dir.join("tls/cert.pem");
    a.extend(["--server", &b, "--token", token, "--ca", ca.to_str().unwrap()]);
    run(&a)
}

/// Writes a registration of `other` (from its `exchange identity --out`) next to the example.
fn registration(at: &Node, other: &Node, id: &str) -> std::path::PathBuf {
    let certs = at.dir.join(format!("partner-{id}"));
    let (code, out, err) = cli(other, &other.admin, &["exchange", "identity", "--out", certs.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let endpoint = out.lines().find_map(|l| l.strip_prefix("endpoint:")).unwrap().trim().to_owned();
    let as2_id = out.lines().find_map(|l| l.strip_prefix("AS2 id:")).unwrap().trim().to_owned();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/example-partner.toml")).unwrap();
    let toml = example
        .replace("id = \"1310000002\"", &format!("id = \"{id}\""))
        .replace("institution_code = \"1310000002\"", &format!("institution_code = \"{id}\""))
        .replace("\"MINATO-CLINIC\"", &format!("\"{as2_id}\""))
        .replace("https://as2.minato-clinic.example:4443/as2", &endpoint)
        .replace("minato/signing.pem", &format!("partner-{id}/signing.pem"))
        .replace("minato/encryption.pem", &format!("partner-{id}/encryption.pem"))
        .replace("minato/tls-ca.pem", &format!("partner-{id}/tls-ca.pem"));
    let f = at.dir.join(format!("partner-{id}.toml"));
    std::fs::write(&f, toml).unwrap();
    f
}

#[test]
fn partner_onboarding_and_a_referral_from_the_cli() {
    let mut a = node("xcli-a", "HOSP-A");
    let mut b = node("xcli-b", "CLINIC-B");
    let fa = registration(&a, &b, "1310000002");
    let (code, out, err) = cli(&a, &a.admin, &["partner", "add", "--file", fa.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("registered partner 1310000002 (version 1)"), "{out}");
    let fb = registration(&b, &a, "1310000001");
    let (code, out, err) = cli(&b, &b.admin, &["partner", "add", "--file", fb.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = cli(&a, &a.admin, &["partner", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("1310000002") && out.contains("active") && out.contains("third_party"), "{out}");
    // A second add of the same partner, and a broken file, are refused.
    let (code, _, err) = cli(&a, &a.admin, &["partner", "add", "--file", fa.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("already exists"), "{err}");
    let bad = a.dir.join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\nname = \"n\"\n").unwrap();
    let (code, _, err) = cli(&a, &a.admin, &["partner", "add", "--file", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing field"), "{err}");
    // A physician cannot change the registry.
    let (code, _, err) = cli(&a, &a.doc, &["partner", "suspend", "1310000002", "--reason", "testing roles"]);
    assert_eq!(code, 1);
    assert!(err.contains("partner registry: denied (role-not-permitted)") && err.contains("403"), "{err}");

    // A referral with an attachment.
    let c = client(&a.dir);
    let ab = base(&a.proc);
    let r = c
        .post(format!("{ab}/fhir/Patient"))
        .bearer_auth(&a.doc)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "佐藤"}]}).to_string())
        .send()
        .unwrap();
    let p = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned();
    let r = c
        .post(format!("{ab}/api/v1/care-assignments"))
        .bearer_auth(&a.admin)
        .json(&json!({"patient": p, "user": "dr.k"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let att = a.dir.join("ecg.txt");
    std::fs::write(&att, "sinus rhythm").unwrap();
    let spec = format!("{}:text/plain:心電図 / ECG", att.display());
    let (code, out, err) = cli(
        &a,
        &a.doc,
        &[
            "exchange",
            "send",
            "--patient",
            &p,
            "--to",
            "1310000002",
            "--purpose",
            "referral",
            "--note",
            "精査をお願いします",
            "--attach",
            &spec,
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("queued") && out.contains("implied_consent"), "{out}");
    let mut delivered = false;
    for _ in 0..100 {
        let (_, out, _) = cli(&a, &a.admin, &["exchange", "list", "--direction", "out"]);
        if out.contains("delivered") {
            delivered = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(delivered, "the referral was delivered");
    // Inbound documents hold patient data: clinical staff read them, the
    // administrator does not.
    let (code, out, _) = cli(&b, &b.doc, &["exchange", "inbound", "--state", "unmatched"]);
    assert_eq!(code, 0);
    assert!(out.contains("佐藤"), "{out}");
    let (code, _, err) = cli(&b, &b.admin, &["exchange", "inbound", "--state", "unmatched"]);
    assert_eq!(code, 1);
    assert!(err.contains("denied") && err.contains("403"), "{err}");
    let ledger = a.dir.join("ledger.csv");
    let (code, out, err) = cli(&a, &a.admin, &["exchange", "ledger", "--out", ledger.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert!(text.contains("Regional care contract 2026-014") && text.contains("responsibility_transferred"), "{text}");

    // Suspended: nothing more goes out.
    let (code, out, err) = cli(&a, &a.admin, &["partner", "suspend", "1310000002", "--reason", "contract review"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = cli(
        &a,
        &a.doc,
        &["exchange", "send", "--patient", &p, "--to", "1310000002", "--purpose", "referral", "--note", "x"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("suspended"), "{err}");

    for n in [&mut a, &mut b] {
        n.proc.child.kill().unwrap();
        n.proc.child.wait().unwrap();
        remove_all(&[&n.dir]);
    }
}
