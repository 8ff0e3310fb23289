//! Durability: every write acknowledged with 2xx survives `kill -9` of the
//! server (default durability setting, synchronous = full).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};

#[test]
fn acknowledged_creates_survive_kill_9() {
    let dir = temp_dir("kill9");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (_admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());

    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (c, b, doc, acked) = (c.clone(), b.clone(), doc.clone(), acked.clone());
        workers.push(std::thread::spawn(move || {
            for i in 0.. {
                let body = json!({"resourceType": "Patient", "name": [{"family": format!("W{w}"), "given": [format!("n{i}")]}]});
                match c.post(format!("{b}/fhir/Patient")).bearer_auth(&doc).header("content-type", "application/fhir+json").body(body.to_string()).send() {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json() {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        acked.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                    }
                    _ => return, // the server died mid-request
                }
            }
        }));
    }
    // Let writes flow, then kill the server without warning.
    while acked.lock().unwrap().len() < 300 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let mut p2 = serve(&dir);
    let b2 = base(&p2);
    let doc2 = login(&c, &b2, "dr.k", "Another horse 43!");
    for id in &acked {
        let r = c.get(format!("{b2}/fhir/Patient/{id}")).bearer_auth(&doc2).send().unwrap();
        assert_eq!(r.status(), 200, "acknowledged Patient/{id} lost after kill -9");
    }
    // Every acknowledged create also has its audit event.
    let db = rusqlite::Connection::open(dir.join("mamori.db")).unwrap();
    let audited: i64 = db.query_row("SELECT COUNT(DISTINCT rid) FROM audit_events WHERE action = 'create' AND rtype = 'Patient' AND status = 201", [], |r| r.get(0)).unwrap();
    assert!(audited >= acked.len() as i64);
    p2.child.kill().unwrap();
    p2.child.wait().unwrap();
    remove_all(&[&dir]);
}

#[test]
fn sigterm_finishes_in_flight_requests_and_records_the_stop() {
    let dir = temp_dir("sigterm");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (_admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    let r = c
        .post(format!("{b}/fhir/Patient"))
        .bearer_auth(&doc)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let pid = p.child.id().to_string();
    let st = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let status = p.child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    let db = rusqlite::Connection::open(dir.join("mamori.db")).unwrap();
    let last: String =
        db.query_row("SELECT action FROM audit_events ORDER BY seq DESC LIMIT 1", [], |r| r.get(0)).unwrap();
    assert_eq!(last, "server-stop");
    remove_all(&[&dir]);
}
