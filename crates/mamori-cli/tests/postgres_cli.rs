//! The PostgreSQL deployment with the real binary: two `mamori serve`
//! processes on one database with the leader killed (SIGKILL) under load,
//! and an SQLite data directory moved into PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::zombie_processes)]

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use mamori_store::pg::PgConn;
use mamori_store::sql::Conn;
use serde_json::{json, Value};

fn pg_base() -> String {
    std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema of its own: (URL with it as search path, schema name).
fn schema(tag: &str) -> (String, String) {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let name = format!("c_{tag}_{}_{n:x}", std::process::id());
    let mut c = PgConn::connect(&pg_base()).expect("PostgreSQL for the tests is reachable");
    c.batch(&format!("CREATE SCHEMA {name}")).unwrap();
    (format!("{}?options=-csearch_path%3D{name}", pg_base()), name)
}

fn drop_schema(name: &str) {
    let mut c = PgConn::connect(&pg_base()).unwrap();
    c.batch(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "mamori.lock" {
            continue;
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn leader(c: &reqwest::blocking::Client, base: &str) -> Option<bool> {
    let r = c.get(format!("{base}/healthz")).timeout(Duration::from_secs(2)).send().ok()?;
    Some(r.json::<Value>().ok()?["leader"] == true)
}

#[test]
fn leader_killed_under_load_loses_nothing() {
    let (url, name) = schema("kill");
    let dir_a = temp_dir("pg-a");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::write(
        dir_a.join("mamori.toml"),
        format!("[database]\nurl = \"{url}\"\n[audit]\ncheckpoint_every_seconds = 1\n"),
    )
    .unwrap();
    let pa = serve(&dir_a);
    let c = client(&dir_a);
    let (_admin, doc) = setup(&c, &base(&pa), pa.admin_password.as_deref().unwrap());
    let dir_b = temp_dir("pg-b");
    copy_dir(&dir_a, &dir_b);
    let pb = serve(&dir_b);
    let bases = [base(&pa), base(&pb)];

    // Who leads: exactly one, within a few seconds.
    let t0 = Instant::now();
    let a_leads = loop {
        match (leader(&c, &bases[0]), leader(&c, &bases[1])) {
            (Some(true), Some(true)) => panic!("two leaders"),
            (Some(true), _) => break true,
            (_, Some(true)) => break false,
            _ => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut lead, survivor) = if a_leads { (pa, pb) } else { (pb, pa) };
    let (lead_base, surv_base) = (base(&lead), base(&survivor));

    // Never two leaders at once, sampled all along.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (c, stop, l, s) = (c.clone(), stop.clone(), lead_base.clone(), surv_base.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(Ordering::SeqCst) {
                let both = leader(&c, &l) == Some(true) && leader(&c, &s) == Some(true);
                assert!(!both, "two leaders at once");
                samples += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };

    // Load across both servers; a request to the killed one moves on to
    // the survivor.
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (c, doc, acked, stop) = (c.clone(), doc.clone(), acked.clone(), stop.clone());
        let targets = [lead_base.clone(), surv_base.clone()];
        workers.push(std::thread::spawn(move || {
            let mut dead = false;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let b = if dead || (i + w).is_multiple_of(2) { &targets[1] } else { &targets[0] };
                let body = json!({"resourceType": "Patient", "name": [{"family": format!("W{w}"), "given": [format!("n{i}")]}]});
                match c
                    .post(format!("{b}/fhir/Patient"))
                    .bearer_auth(&doc)
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = r.json().unwrap();
                        acked.lock().unwrap().push(v["id"].as_str().unwrap().to_owned());
                    }
                    Ok(r) => panic!("unexpected {}: {}", r.status(), r.text().unwrap_or_default()),
                    Err(_) if b == &targets[0] => dead = true, // the leader died mid-request
                    Err(e) => panic!("the survivor failed: {e}"),
                }
            }
        }));
    }
    while acked.lock().unwrap().len() < 300 {
        std::thread::sleep(Duration::from_millis(10));
    }
    lead.child.kill().unwrap(); // SIGKILL
    lead.child.wait().unwrap();
    let killed_at = Instant::now();
    let before = acked.lock().unwrap().len();
    // The survivor takes over, and writes go on.
    while leader(&c, &surv_base) != Some(true) {
        assert!(killed_at.elapsed() < Duration::from_secs(10), "no fail-over after the leader was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("fail-over {:?} after SIGKILL", killed_at.elapsed());
    while acked.lock().unwrap().len() < before + 200 {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    assert!(watcher.join().unwrap() > 10);

    // Every acknowledged create is there, with its audit event.
    let acked = acked.lock().unwrap().clone();
    for id in &acked {
        let r = c.get(format!("{surv_base}/fhir/Patient/{id}")).bearer_auth(&doc).send().unwrap();
        assert_eq!(r.status(), 200, "acknowledged Patient/{id} lost");
    }
    let mut db = PgConn::connect(&url).unwrap();
    let audited = db
        .query_one(
            "SELECT COUNT(DISTINCT rid) FROM audit_events WHERE action = 'create' AND rtype = 'Patient' AND status = 201",
            mamori_store::p![],
        )
        .unwrap()
        .unwrap()
        .i64(0)
        .unwrap();
    assert!(audited >= acked.len() as i64, "{audited} audited < {} acknowledged", acked.len());

    // The one audit log, written by both, verifies offline.
    let mut survivor = survivor;
    let st = std::process::Command::new("kill").args(["-TERM", &survivor.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    assert!(survivor.child.wait().unwrap().success());
    let (code, out, err) = run(&["audit", "verify", "--data", dir_b.to_str().unwrap(), "--deep"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK"), "{out}");
    drop(db);
    drop_schema(&name);
    remove_all(&[&dir_a, &dir_b]);
}

#[test]
fn sqlite_directory_moves_to_postgres() {
    let dir = temp_dir("pg-move");
    let mut p = serve(&dir);
    let c = client(&dir);
    let b = base(&p);
    let (_admin, doc) = setup(&c, &b, p.admin_password.as_deref().unwrap());
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = c
            .post(format!("{b}/fhir/Patient"))
            .bearer_auth(&doc)
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Patient", "name": [{"family": "Move", "given": [format!("n{i}")]}]})
                    .to_string(),
            )
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
        ids.push(r.json::<Value>().unwrap()["id"].as_str().unwrap().to_owned());
    }
    let (url, name) = schema("move");
    // Refused while the server runs (the directory is locked).
    let (code, _, err) = run(&["copy-to-postgres", "--data", dir.to_str().unwrap(), "--url", &url]);
    assert_ne!(code, 0);
    assert!(err.contains("stop the server") || err.contains("lock"), "{err}");
    let st = std::process::Command::new("kill").args(["-TERM", &p.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    assert!(p.child.wait().unwrap().success());

    // Bad input changes nothing: not a URL.
    let (code, _, err) = run(&["copy-to-postgres", "--data", dir.to_str().unwrap(), "--url", "mysql://x"]);
    assert_ne!(code, 0);
    assert!(err.contains("postgres://"), "{err}");

    let (code, out, err) = run(&["copy-to-postgres", "--data", dir.to_str().unwrap(), "--url", &url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("row counts match"), "{out}");
    assert!(out.contains("OK: audit log"), "{out}");
    // The planner has statistics for the copied tables before any search.
    let mut db = PgConn::connect(&url).unwrap();
    let analyzed = db
        .query_one(
            "SELECT COUNT(*) FROM pg_stat_user_tables WHERE schemaname = current_schema() \
             AND relname IN ('resources', 'idx_string', 'resource_versions') AND last_analyze IS NOT NULL",
            mamori_store::p![],
        )
        .unwrap()
        .unwrap()
        .i64(0)
        .unwrap();
    assert_eq!(analyzed, 3, "the copied tables were analyzed");
    drop(db);
    // A second copy into the now non-empty target is refused.
    let (code, _, err) = run(&["copy-to-postgres", "--data", dir.to_str().unwrap(), "--url", &url]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds data"), "{err}");

    // Switch the directory to PostgreSQL: the records and accounts are there,
    // ids continue, and the audit log goes on verifying.
    let toml = std::fs::read_to_string(dir.join("mamori.toml")).unwrap();
    std::fs::write(dir.join("mamori.toml"), toml.replacen("\nurl = \"\"", &format!("\nurl = \"{url}\""), 1)).unwrap();
    let p2 = serve(&dir);
    let b2 = base(&p2);
    let doc2 = login(&c, &b2, "dr.k", "Another horse 43!");
    for id in &ids {
        let r = c.get(format!("{b2}/fhir/Patient/{id}")).bearer_auth(&doc2).send().unwrap();
        assert_eq!(r.status(), 200, "Patient/{id} after the move");
    }
    let r = c
        .post(format!("{b2}/fhir/Patient"))
        .bearer_auth(&doc2)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let h: Value = c.get(format!("{b2}/healthz")).send().unwrap().json().unwrap();
    assert_eq!(h["backend"], "postgres");
    let mut p2 = p2;
    let st = std::process::Command::new("kill").args(["-TERM", &p2.child.id().to_string()]).status().unwrap();
    assert!(st.success());
    assert!(p2.child.wait().unwrap().success());
    let (code, out, err) = run(&["audit", "verify", "--data", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    drop_schema(&name);
    remove_all(&[&dir]);
}
