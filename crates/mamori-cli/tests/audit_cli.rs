//! The audit trail from the command line, on the real binary: offline
//! verification names each kind of tampering; exports verify with only
//! the key; a witness catches a rewritten history that `verify` alone
//! cannot; `kill -9` under load loses no acknowledged event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use rusqlite::{params, Connection};
use serde_json::{json, Value};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// A stopped server's data directory with some traffic in its log.
fn populated(tag: &str) -> (std::path::PathBuf, String) {
    let dir = temp_dir(tag);
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (_admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    for i in 0..30 {
        let r = c
            .post(format!("{b}/fhir/Patient"))
            .bearer_auth(&doc)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "name": [{"family": format!("T{i}")}]}).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        let id = r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned();
        assert_eq!(c.get(format!("{b}/fhir/Patient/{id}")).bearer_auth(&doc).send().unwrap().status(), 200);
    }
    let st = std::process::Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    p.child.wait().unwrap();
    let vkey = std::fs::read_to_string(dir.join("keys/audit.vkey")).unwrap().trim().to_owned();
    (dir, vkey)
}

fn verify(dir: &Path, vkey: &str) -> (i32, String) {
    let (code, out, err) = run(&["audit", "verify", "--data", dir.to_str().unwrap(), "--key", vkey, "--deep"]);
    (code, format!("{out}{err}"))
}

#[test]
fn verify_names_each_tampering() {
    let (dir, vkey) = populated("tamper");
    let (code, out) = verify(&dir, &vkey);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK:"), "{out}");
    // Every stored version's bytes were checked: 30 Patients, and the
    // records the server made itself (its own Organization and Endpoint).
    let versions: i64 = Connection::open(dir.join("mamori.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM resource_versions", [], |r| r.get(0))
        .unwrap();
    assert!(versions >= 30);
    assert!(out.contains(&format!("{versions} record versions match their bound SHA-256")), "{out}");
    let n: i64 = Connection::open(dir.join("mamori.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    assert!(n > 60);
    let k = 40i64;

    // (what, the tampering, what `verify` must say)
    type Tamper = fn(&Connection, i64);
    let cases: Vec<(&str, Tamper, String)> = vec![
        (
            "edit one event",
            |db, k| {
                let leaf: Vec<u8> =
                    db.query_row("SELECT leaf FROM audit_events WHERE seq = ?1", [k], |r| r.get(0)).unwrap();
                let s = String::from_utf8(leaf).unwrap();
                assert!(s.contains("dr.k"), "event {k} is one of dr.k's: {s}");
                let s = s.replacen("dr.k", "dr.x", 1);
                db.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = ?2", params![s.into_bytes(), k]).unwrap();
            },
            format!("event {k}: its bytes do not match"),
        ),
        (
            "edit one event and its leaf hash",
            |db, k| {
                let leaf: Vec<u8> =
                    db.query_row("SELECT leaf FROM audit_events WHERE seq = ?1", [k], |r| r.get(0)).unwrap();
                let s = String::from_utf8(leaf).unwrap().replacen("dr.k", "dr.x", 1).into_bytes();
                let h = mamori_audit::merkle::leaf_hash(&s);
                db.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = ?2", params![s, k]).unwrap();
                db.execute("UPDATE merkle_nodes SET hash = ?1 WHERE level = 0 AND idx = ?2", params![h.to_vec(), k])
                    .unwrap();
            },
            "hash to a different root".into(),
        ),
        (
            "delete an event",
            |db, k| {
                db.execute("DELETE FROM audit_events WHERE seq = ?1", [k]).unwrap();
            },
            format!("event {k}: missing"),
        ),
        (
            "swap two events",
            |db, k| {
                let a: Vec<u8> =
                    db.query_row("SELECT leaf FROM audit_events WHERE seq = ?1", [k], |r| r.get(0)).unwrap();
                let b: Vec<u8> =
                    db.query_row("SELECT leaf FROM audit_events WHERE seq = ?1", [k + 1], |r| r.get(0)).unwrap();
                db.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = ?2", params![b, k]).unwrap();
                db.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = ?2", params![a, k + 1]).unwrap();
            },
            format!("event {k}: its bytes do not match"),
        ),
        (
            "truncate the log",
            |db, k| {
                db.execute("DELETE FROM audit_events WHERE seq >= ?1", [k]).unwrap();
            },
            "was truncated".into(),
        ),
        (
            "replace a checkpoint signature",
            |db, _| {
                let (size, note): (i64, String) = db
                    .query_row("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap();
                let other = mamori_audit::note::NoteSigner::from_pkcs8(
                    "mamori.local/audit",
                    &mamori_audit::note::generate_pkcs8().unwrap(),
                )
                .unwrap();
                let body = mamori_audit::note::SignedNote::parse(&note).unwrap().body;
                let forged = format!("{body}\n{}", other.sign_line(&body));
                db.execute("UPDATE checkpoints SET note = ?1 WHERE size = ?2", params![forged, size]).unwrap();
            },
            "signature does not verify".into(),
        ),
        (
            "hide an access from the patient report",
            |db, k| {
                db.execute(
                    "DELETE FROM audit_patients WHERE seq = (SELECT MIN(seq) FROM audit_patients WHERE seq >= ?1)",
                    [k],
                )
                .unwrap();
            },
            "patient index".into(),
        ),
        (
            "change one byte of a stored record",
            |db, _| {
                let (seq, body): (i64, String) = db
                    .query_row("SELECT seq, body FROM resource_versions WHERE body LIKE '%\"T7\"%'", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .unwrap();
                let changed = body.replacen("\"T7\"", "\"T8\"", 1);
                assert_eq!(changed.len(), body.len());
                db.execute("UPDATE resource_versions SET body = ?1 WHERE seq = ?2", params![changed, seq]).unwrap();
            },
            "/_history/1: its stored bytes differ from the SHA-256 that event".into(),
        ),
        (
            "remove a stored version",
            |db, _| {
                db.execute("DELETE FROM resource_versions WHERE body LIKE '%\"T9\"%'", []).unwrap();
            },
            "but no such version is stored".into(),
        ),
        (
            "add a version outside mamori",
            |db, _| {
                db.execute(
                    "INSERT INTO resource_versions (rtype, id, version, last_updated, deleted, author, body) \
                     SELECT rtype, id, version + 1, last_updated, 0, author, body FROM resource_versions \
                     WHERE body LIKE '%\"T3\"%'",
                    [],
                )
                .unwrap();
            },
            "/_history/2: stored, but no audit event binds it".into(),
        ),
    ];
    for (what, tamper, expect) in cases {
        let copy = temp_dir("tamper-copy");
        copy_dir(&dir, &copy);
        {
            let db = Connection::open(copy.join("mamori.db")).unwrap();
            tamper(&db, k);
        }
        let (code, out) = verify(&copy, &vkey);
        assert_eq!(code, 1, "{what}: verify must fail\n{out}");
        let first = out.lines().find(|l| l.trim_start().starts_with("- ")).unwrap_or("");
        assert!(first.contains(&expect), "{what}: expected '{expect}' as the first finding, got:\n{out}");
        remove_all(&[&copy]);
    }

    // A key that is not the log's: refused.
    let other = mamori_audit::note::NoteSigner::from_pkcs8(
        "mamori.local/audit",
        &mamori_audit::note::generate_pkcs8().unwrap(),
    )
    .unwrap();
    let (code, out) = verify(&dir, &other.verifier().vkey());
    assert_eq!(code, 1, "{out}");
    let (code, out, err) = run(&["audit", "verify", "--data", dir.to_str().unwrap(), "--key", "not-a-key"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("verifier key"), "{err}");

    // Export: verifies with only the key; a changed byte or another key fails.
    let exp = dir.join("../").join(format!("export-{}.ndjson", std::process::id()));
    remove_all(&[&exp]);
    let (code, out, err) =
        run(&["audit", "export", "--data", dir.to_str().unwrap(), "--out", exp.to_str().unwrap(), "--from", "10"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["audit", "verify", "--export", exp.to_str().unwrap(), "--key", &vkey]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&exp).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let i = lines.iter().position(|l| l.contains("\"index\":20,")).unwrap();
    let mut v: Value = serde_json::from_str(&lines[i]).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut leaf = b64.decode(v["leaf"].as_str().unwrap()).unwrap();
    let last = leaf.len() - 3;
    leaf[last] ^= 1;
    v["leaf"] = json!(b64.encode(leaf));
    lines[i] = v.to_string();
    let bad = exp.with_extension("tampered");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let (code, out, err) = run(&["audit", "verify", "--export", bad.to_str().unwrap(), "--key", &vkey]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("different root"), "{err}");
    let (code, _, _) = run(&["audit", "verify", "--export", exp.to_str().unwrap(), "--key", &other.verifier().vkey()]);
    assert_eq!(code, 1);
    remove_all(&[&exp, &bad, &dir]);
}

/// The insider with the database and the signing key rewrites history and
/// re-signs everything: `verify` on the data directory alone cannot tell,
/// but the witness, holding an earlier checkpoint, raises the alarm.
#[test]
fn witness_cosigns_and_catches_a_rewritten_history() {
    let dir = temp_dir("witness-log");
    let wdir = temp_dir("witness");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (_admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    let vkey = std::fs::read_to_string(dir.join("keys/audit.vkey")).unwrap().trim().to_owned();
    let ca = dir.join("tls/cert.pem");
    let witness = |log: &str| {
        run(&[
            "audit",
            "witness",
            "--data",
            wdir.to_str().unwrap(),
            "--name",
            "witness.test/w1",
            "--log",
            log,
            "--log-key",
            &vkey,
            "--ca",
            ca.to_str().unwrap(),
            "--once",
        ])
    };
    let (code, out, err) = witness(&b);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("FirstSeen"), "{out}");
    // Configure the witness on the log, restart, and let it cosign.
    let wkey = std::fs::read_to_string(wdir.join("witness.vkey")).unwrap().trim().to_owned();
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let cfg = std::fs::read_to_string(dir.join("mamori.toml"))
        .unwrap()
        .replace("witnesses = []", &format!("witnesses = [\"{wkey}\"]"));
    std::fs::write(dir.join("mamori.toml"), cfg).unwrap();
    let mut p = serve(&dir);
    let b = base(&p);
    let doc2 = login(&c, &b, "dr.k", "Another horse 43!");
    let _ = doc;
    for _ in 0..5 {
        c.post(format!("{b}/fhir/Patient"))
            .bearer_auth(&doc2)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient"}).to_string())
            .send()
            .unwrap();
    }
    p.child.kill().unwrap(); // the stop checkpoint is not needed: start signs one
    p.child.wait().unwrap();
    let mut p = serve(&dir);
    let b = base(&p);
    let (code, out, err) = witness(&b);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Extended"), "{out}");
    let cp = c.get(format!("{b}/api/v1/audit/checkpoint")).send().unwrap().text().unwrap();
    assert!(cp.contains("\u{2014} witness.test/w1 "), "the log serves the cosignature:\n{cp}");
    p.child.kill().unwrap();
    p.child.wait().unwrap();

    // Rewrite history with the key: change event 5, rebuild every node,
    // drop the old checkpoints and sign a fresh one.
    {
        let db = Connection::open(dir.join("mamori.db")).unwrap();
        let leaf: Vec<u8> = db.query_row("SELECT leaf FROM audit_events WHERE seq = 5", [], |r| r.get(0)).unwrap();
        let forged = String::from_utf8(leaf).unwrap().replacen("admin", "nobody", 1).into_bytes();
        db.execute("UPDATE audit_events SET leaf = ?1 WHERE seq = 5", params![forged]).unwrap();
        let mut st = db.prepare("SELECT leaf FROM audit_events ORDER BY seq").unwrap();
        let leaves: Vec<Vec<u8>> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        drop(st);
        db.execute("DELETE FROM merkle_nodes", []).unwrap();
        let mut f = mamori_audit::merkle::Frontier::new();
        for l in &leaves {
            let mut nodes = Vec::new();
            f.append(mamori_audit::merkle::leaf_hash(l), |id, h| nodes.push((id, *h)));
            for (id, h) in nodes {
                db.execute(
                    "INSERT INTO merkle_nodes (level, idx, hash) VALUES (?1, ?2, ?3)",
                    params![id.level, id.index as i64, h.to_vec()],
                )
                .unwrap();
            }
        }
        db.execute("DELETE FROM cosignatures", []).unwrap();
        db.execute("DELETE FROM checkpoints", []).unwrap();
        let pem = std::fs::read_to_string(dir.join("keys/audit.key")).unwrap();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>())
            .unwrap();
        let signer = mamori_audit::note::NoteSigner::from_pkcs8("mamori.local/audit", &der).unwrap();
        let cp = mamori_audit::note::Checkpoint {
            origin: "mamori.local/audit".into(),
            size: f.size(),
            root: f.root(),
            extensions: vec![],
        };
        db.execute(
            "INSERT INTO checkpoints (size, time, reason, note) VALUES (?1, 0, 'forged', ?2)",
            params![f.size() as i64, cp.sign(&signer)],
        )
        .unwrap();
    }
    let (code, out) = verify(&dir, &vkey);
    assert_eq!(code, 0, "a consistently re-signed log passes verification on its own:\n{out}");
    let mut p = serve(&dir);
    let b = base(&p);
    let (code, out, err) = witness(&b);
    assert_ne!(code, 0, "the witness must refuse:\n{out}{err}");
    assert!(err.contains("WITNESS ALERT"), "{err}");
    assert!(err.contains("inconsistent extension") || err.contains("fork"), "{err}");
    let alerts: i64 = Connection::open(wdir.join("witness.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM alerts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(alerts, 1);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    remove_all(&[&dir, &wdir]);
}

/// Several rounds of concurrent audited requests, `kill -9` at a random
/// moment, restart: the log verifies, and every request that got a 2xx
/// has its event.
#[test]
fn kill_9_under_load_loses_no_acknowledged_event() {
    let dir = temp_dir("kill9-audit");
    let mut p = serve(&dir);
    let c = client(&dir);
    let (_admin, mut doc) = setup(&c, &base(&p), p.admin_password.as_deref().unwrap());
    let vkey = std::fs::read_to_string(dir.join("keys/audit.vkey")).unwrap().trim().to_owned();
    let mut acked: HashSet<String> = HashSet::new();
    for round in 0..3u64 {
        let b = base(&p);
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..4 {
            let (c, b, doc, got, stop) = (c.clone(), b.clone(), doc.clone(), got.clone(), stop.clone());
            workers.push(std::thread::spawn(move || {
                let mut last_id: Option<String> = None;
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let rid = format!("r{round}-w{w}-{i}");
                    let req = match (i % 3, &last_id) {
                        (1, Some(id)) => c.get(format!("{b}/fhir/Patient/{id}")),
                        (2, _) => c.get(format!("{b}/fhir/Patient?_count=5")),
                        _ => c
                            .post(format!("{b}/fhir/Patient"))
                            .header("content-type", "application/fhir+json")
                            .body(json!({"resourceType": "Patient"}).to_string()),
                    };
                    match req.bearer_auth(&doc).header("x-request-id", &rid).send() {
                        Ok(r) if r.status().is_success() => {
                            let loc = r.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
                            got.lock().unwrap().push(rid);
                            if let Some(l) = loc {
                                last_id = l.split('/').rev().nth(2).map(str::to_owned);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            }));
        }
        let ms = 300 + (std::process::id() as u64 * 7919 + round * 104_729) % 700;
        std::thread::sleep(std::time::Duration::from_millis(ms));
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        let round_acked = got.lock().unwrap().clone();
        assert!(round_acked.len() > 20, "round {round}: load ran ({})", round_acked.len());
        acked.extend(round_acked);
        // The log verifies after the crash...
        let (code, out) = verify(&dir, &vkey);
        assert_eq!(code, 0, "round {round}: {out}");
        // ...and holds every acknowledged request.
        let db = Connection::open(dir.join("mamori.db")).unwrap();
        let mut st = db.prepare("SELECT leaf FROM audit_events").unwrap();
        let logged: HashSet<String> = st
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .filter_map(|l| {
                let s = String::from_utf8(l.unwrap()).unwrap();
                let v: Value = serde_json::from_str(s.split_once('\n').unwrap().1).unwrap();
                v["request"].as_str().map(str::to_owned)
            })
            .collect();
        let missing: Vec<&String> = acked.iter().filter(|r| !logged.contains(*r)).collect();
        assert!(missing.is_empty(), "round {round}: acknowledged but not in the log: {missing:?}");
        p = serve(&dir);
        doc = login(&c, &base(&p), "dr.k", "Another horse 43!");
    }
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    remove_all(&[&dir]);
}

#[test]
fn compliance_report_from_the_cli_verifies_and_a_changed_byte_is_caught() {
    let (dir, _) = populated("compliance");
    let d = dir.to_str().unwrap();
    let file = dir.join("report.json");
    let pdf = dir.join("report.pdf");
    let (code, out, err) = run(&[
        "compliance",
        "report",
        "--data",
        d,
        "--out",
        file.to_str().unwrap(),
        "--pdf",
        pdf.to_str().unwrap(),
        "--lang",
        "en",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Compliance report") && out.contains("GL-AUDIT") && out.contains("not met"), "{out}");
    assert!(std::fs::read(&pdf).unwrap().starts_with(b"%PDF-"));
    let v: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let sha = v["signature"]["sha256"].as_str().unwrap().to_owned();
    assert!(out.contains(&sha));
    let (code, out, _) = run(&["compliance", "list", "--data", d]);
    assert_eq!(code, 0);
    assert!(out.contains(&sha), "{out}");

    // Verified against the institution's certificate and the audit log.
    let (code, out, err) = run(&["compliance", "verify", file.to_str().unwrap(), "--data", d]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("signature OK") && out.contains("records its production") && out.contains("is in the log"),
        "{out}"
    );
    // Without a pinned certificate it checks integrity, but does not vouch for the signer.
    let (code, out, _) = run(&["compliance", "verify", file.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("UNPINNED"), "{out}");

    // One changed byte: caught.
    let text = std::fs::read_to_string(&file).unwrap();
    let changed = dir.join("changed.json");
    std::fs::write(&changed, text.replacen("\"not_met\"", "\"met\"", 1)).unwrap();
    let (code, out, _) = run(&["compliance", "verify", changed.to_str().unwrap(), "--data", d]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED: the report was changed after it was signed"), "{out}");
    // Another institution's certificate (made with the openssl CLI): refused.
    let (key, cert) = (dir.join("other.key"), dir.join("other.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Another Hospital",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let (code, out, _) = run(&["compliance", "verify", file.to_str().unwrap(), "--cert", cert.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAILED: the signature does not verify"), "{out}");
    // Not a report: a clear error, exit 1.
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "{\"hello\": 1}").unwrap();
    let (code, _, err) = run(&["compliance", "verify", junk.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("not a mamori compliance report"), "{err}");
    remove_all(&[&dir]);
}

/// A restore from an older backup loses what was acknowledged after it:
/// the restored log verifies on its own, but not against a checkpoint
/// the operator (or a witness) kept outside the database, and the
/// finding names that checkpoint.
#[test]
fn an_older_backup_is_caught_by_a_checkpoint_kept_outside() {
    let (dir, vkey) = populated("older-backup");
    let backup = temp_dir("older-backup-copy");
    copy_dir(&dir, &backup);
    // More traffic after the backup, with a checkpoint every second.
    let cfg = std::fs::read_to_string(dir.join("mamori.toml"))
        .unwrap()
        .replace("checkpoint_every_seconds = 60", "checkpoint_every_seconds = 1");
    assert!(cfg.contains("checkpoint_every_seconds = 1"), "{cfg}");
    std::fs::write(dir.join("mamori.toml"), cfg).unwrap();
    let before: i64 = Connection::open(backup.join("mamori.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))
        .unwrap();
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let doc = login(&c, &b, "dr.k", "Another horse 43!");
    for i in 0..5 {
        let r = c
            .post(format!("{b}/fhir/Patient"))
            .bearer_auth(&doc)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "name": [{"family": format!("After{i}")}]}).to_string())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // The newest signed checkpoint, as a witness fetches it.
    let t0 = std::time::Instant::now();
    let kept = loop {
        let note = c.get(format!("{b}/api/v1/audit/checkpoint")).send().unwrap().text().unwrap();
        let size: i64 = note.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
        if size > before {
            break note;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "no checkpoint after the backup: {note}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    let kept_file = backup.join("kept-checkpoint.txt");
    std::fs::write(&kept_file, &kept).unwrap();

    // The live log contains the kept checkpoint.
    let args = |d: &Path| {
        vec![
            "audit".to_owned(),
            "verify".into(),
            "--data".into(),
            d.to_str().unwrap().into(),
            "--key".into(),
            vkey.clone(),
            "--checkpoint".into(),
            kept_file.to_str().unwrap().into(),
        ]
    };
    let a = args(&dir);
    let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 0, "{out}{err}");
    // The restored backup alone verifies: nothing in it is wrong...
    let (code, out) = verify(&backup, &vkey);
    assert_eq!(code, 0, "{out}");
    // ...but it lacks what the kept checkpoint covers, and says so.
    let a = args(&backup);
    let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{out}{err}");
    let size = kept.lines().nth(1).unwrap();
    assert!(
        format!("{out}{err}")
            .contains(&format!("checkpoint {size}: the log has only {before} events (it was truncated)")),
        "{out}{err}"
    );
    // A checkpoint file that is not one is refused, not ignored.
    std::fs::write(&kept_file, "not a checkpoint\n").unwrap();
    let a = args(&dir);
    let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, 1, "{out}{err}");
    remove_all(&[dir, backup]);
}
