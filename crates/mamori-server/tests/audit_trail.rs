//! The audit trail over the API: proofs that verify against signed
//! checkpoints, FHIR AuditEvent for auditors only, review reports, live
//! verification, and streaming to a syslog collector.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::{observation, TestServer};
use mamori_audit::merkle::{verify_consistency, verify_inclusion, Hash};
use mamori_audit::note::{Checkpoint, NoteVerifier};
use reqwest::Method;
use serde_json::{json, Value};

fn b64(s: &Value) -> Hash {
    base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap().try_into().unwrap()
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array().unwrap().iter().map(b64).collect()
}

async fn checkpoint(s: &TestServer) -> Checkpoint {
    let r = s.req(Method::GET, "/api/v1/audit/checkpoint", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let vkey = NoteVerifier::parse(std::fs::read_to_string(s.dir.join("keys/audit.vkey")).unwrap().trim()).unwrap();
    Checkpoint::open(&r.text, &vkey).expect("the published checkpoint verifies with the log key").0
}

#[tokio::test]
async fn proofs_verify_against_signed_checkpoints() {
    let s = TestServer::start("proofs").await;
    let doc = s.user("dr.p", &["physician"]).await;
    for i in 0..40 {
        s.patient(&doc, "P", &format!("n{i}")).await;
    }
    let old = checkpoint(&s).await;
    // force a new checkpoint: the server signs one at stop, so restart
    let mut s = s;
    s.restart().await;
    let new = checkpoint(&s).await;
    assert!(new.size > old.size, "{} > {}", new.size, old.size);
    // consistency between the two signed checkpoints, public endpoint
    let r = s
        .req(
            Method::GET,
            &format!("/api/v1/audit/proof/consistency?first={}&second={}", old.size, new.size),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(verify_consistency(old.size, new.size, &old.root, &new.root, &hashes(&r.body["proof"])));
    // inclusion of every 7th event; the leaf hash must match the event bytes
    let aud = s.user("aud.p", &["auditor"]).await;
    for idx in (0..old.size).step_by(7) {
        let r = s
            .req(Method::GET, &format!("/api/v1/audit/proof/inclusion?index={idx}&size={}", new.size), None, None)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        let leaf = b64(&r.body["leaf_hash"]);
        assert!(verify_inclusion(&leaf, idx, new.size, &hashes(&r.body["proof"]), &new.root), "event {idx}");
        if idx % 21 == 0 {
            let e = s.get(&format!("/api/v1/audit/events/{idx}"), &aud).await;
            assert_eq!(e.status, 200);
            let bytes = base64::engine::general_purpose::STANDARD.decode(e.body["leaf"].as_str().unwrap()).unwrap();
            assert_eq!(mamori_audit::merkle::leaf_hash(&bytes), leaf);
        }
    }
    // bad proof requests
    for q in ["index=999999", "index=0&size=999999", "index=x"] {
        let r = s.req(Method::GET, &format!("/api/v1/audit/proof/inclusion?{q}"), None, None).await;
        assert!(r.status == 400, "{q}: {} {}", r.status, r.text);
    }
    // events are for auditors only
    assert_eq!(s.get("/api/v1/audit/events/0", &doc).await.status, 403);
    // live verification
    let r = s.get("/api/v1/audit/verify", &aud).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], true, "{}", r.text);
    assert!(r.body["events"].as_u64().unwrap() > 40);
}

#[tokio::test]
async fn fhir_audit_event_and_review_reports() {
    let s = TestServer::start("auditevent").await;
    let doc = s.user("dr.q", &["physician"]).await;
    let snoop = s.user("dr.snoop", &["physician"]).await;
    let aud = s.user("aud.q", &["auditor"]).await;
    let pid = s.patient(&doc, "監査", "花子").await;
    assert_eq!(s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", 80.0)).await.status, 201);
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}/$everything"), &doc).await.status, 200);
    assert_eq!(s.get(&format!("/fhir/Observation?patient={pid}"), &snoop).await.status, 403);

    // Only auditors search the audit log, and the search is itself audited.
    assert_eq!(s.get("/fhir/AuditEvent", &doc).await.status, 403);
    let r = s.get(&format!("/fhir/AuditEvent?patient={pid}&_count=50"), &aud).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["entry"].as_array().unwrap();
    assert!(entries.len() >= 4, "{}", r.text);
    for e in entries {
        let ev = &e["resource"];
        assert_eq!(ev["resourceType"], "AuditEvent");
        assert!(mamori_core::fhir::validate::validate_resource(ev).is_ok(), "{ev}");
        assert!(ev["entity"].as_array().unwrap().iter().any(|x| x["what"]["reference"] == format!("Patient/{pid}")));
    }
    assert!(entries
        .iter()
        .any(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"] == "dr.snoop"
            && e["resource"]["outcome"] == "4"));
    let last = s.last_audit();
    assert_eq!(last["action"], "search-type");
    assert_eq!(last["entity"]["type"], "AuditEvent");
    assert_eq!(last["agent"]["user"], "aud.q");

    let r = s.get("/fhir/AuditEvent?agent=dr.snoop", &aud).await;
    assert!(r.body["total"].as_u64().unwrap() >= 1);
    let r = s.get("/fhir/AuditEvent?action=C&date=ge2020-01-01", &aud).await;
    assert!(r.body["entry"].as_array().unwrap().iter().all(|e| e["resource"]["action"] == "C"));
    let r = s.get("/fhir/AuditEvent?purpose=TREAT&_count=2", &aud).await;
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 2);
    let next = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let r2 = s.get(next.strip_prefix(&s.base).unwrap(), &aud).await;
    assert_ne!(r2.body["entry"][0]["resource"]["id"], r.body["entry"][0]["resource"]["id"]);
    let one = r.body["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("/fhir/AuditEvent/{one}"), &aud).await.body["id"], one);
    assert_eq!(s.get("/fhir/AuditEvent?nonsense=1", &aud).await.status, 400);
    assert_eq!(s.get("/fhir/AuditEvent?action=Z", &aud).await.status, 400);

    // Who looked at this patient's record (disclosure request).
    let r = s.get(&format!("/api/v1/audit/reports/patient?patient={pid}"), &aud).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let users: Vec<&str> = r.body["events"].as_array().unwrap().iter().map(|e| e["user"].as_str().unwrap()).collect();
    assert!(users.contains(&"dr.q") && users.contains(&"dr.snoop"), "{users:?}");
    let r = s.get("/api/v1/audit/reports/denied", &aud).await;
    assert!(r.body["events"].as_array().unwrap().iter().any(|e| e["user"] == "dr.snoop" && e["status"] == 403));
    let r = s.get("/api/v1/audit/reports/user?user=dr.q", &aud).await;
    assert!(r.body["total"].as_u64().unwrap() >= 3);
    let r = s.get("/api/v1/audit/reports/daily", &aud).await;
    let days = r.body["days"].as_array().unwrap();
    assert_eq!(days.len(), 1, "{}", r.text);
    assert!(days[0]["denied"].as_u64().unwrap() >= 1);
    assert_eq!(s.get("/api/v1/audit/reports/patient", &aud).await.status, 400);
    assert_eq!(s.get("/api/v1/audit/reports/daily", &doc).await.status, 403);
    let report_events = s.audits_where("audit-report");
    assert!(
        report_events.iter().any(|e| e["patients"] == json!([pid])),
        "the disclosure report is itself audited against the patient"
    );
}

/// A TLS syslog collector that records the index of every message.
async fn collector(
    port: u16,
    dir: &std::path::Path,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
) -> tokio::task::JoinHandle<()> {
    use tokio::io::AsyncReadExt;
    let certs = mamori_server::tls::load_certs(&dir.join("col.pem")).unwrap();
    let key = mamori_server::tls::load_key(&dir.join("col.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(mamori_server::tls::provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        // Connections live in a JoinSet owned by this task: aborting the
        // collector closes them all (a real outage).
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            conns.spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                loop {
                    let n = match tls.read(&mut chunk).await {
                        Ok(0) => return,
                        Err(e) => {
                            eprintln!("COLLECTOR: read error {e}");
                            return;
                        }
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    // octet-counted frames: "LEN SP MSG"
                    while let Some(sp) = buf.iter().position(|b| *b == b' ') {
                        let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().unwrap();
                        if buf.len() < sp + 1 + len {
                            break;
                        }
                        let msg = String::from_utf8(buf[sp + 1..sp + 1 + len].to_vec()).unwrap();
                        buf.drain(..sp + 1 + len);
                        if !msg.starts_with("<8") {
                            eprintln!("COLLECTOR: bad message {msg}");
                        }
                        let idx: u64 =
                            msg.split("index=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
                        let json = msg.split('\u{feff}').nth(1).unwrap();
                        let v: Value = serde_json::from_str(json).unwrap();
                        assert_eq!(v["resourceType"], "AuditEvent");
                        seen.lock().unwrap().push(idx);
                    }
                }
            });
        }
    })
}

#[tokio::test]
async fn syslog_stream_survives_collector_outage_and_restart() {
    // Fails if another test of this binary installed a subscriber first.
    tracing_subscriber::fmt().with_env_filter("mamori_server::syslog=info").with_test_writer().try_init().ok();
    let dir = common::temp_dir("syslog");
    let cdir = common::temp_dir("collector");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&cdir).unwrap();
    let (cert, key) =
        mamori_server::keys::self_signed_tls("localhost", "collector", &["localhost"], &["127.0.0.1"], 30).unwrap();
    std::fs::write(cdir.join("col.pem"), &cert).unwrap();
    mamori_server::keys::write_secret(&cdir.join("col.key"), key.as_bytes()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    std::fs::write(
        dir.join("mamori.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nsynchronous = \"normal\"\n[syslog]\ncollector = \"localhost:{port}\"\nca = \"{}\"\nresend_window = 5\n",
            cdir.join("col.pem").display()
        ),
    )
    .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let col = collector(port, &cdir, seen.clone()).await;
    let mut s = TestServer::boot(dir.clone(), None).await;
    let doc = s.user("dr.sys", &["physician"]).await;
    for i in 0..10 {
        s.patient(&doc, "Sys", &format!("a{i}")).await;
    }
    let wait_for = |n: i64| {
        let seen = seen.clone();
        let db = dir.join("mamori.db");
        async move {
            for _ in 0..200 {
                let total: i64 = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                    .unwrap()
                    .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))
                    .unwrap();
                let got: std::collections::BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
                if total >= n && got.len() as i64 >= total && (0..total as u64).all(|i| got.contains(&i)) {
                    return total;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let got: std::collections::BTreeSet<u64> = seen.lock().unwrap().iter().copied().collect();
            let total: i64 = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap()
                .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))
                .unwrap();
            panic!(
                "collector did not receive every event: got {} distinct, first missing {:?}, total {total}",
                got.len(),
                (0..).find(|i| !got.contains(i))
            );
        }
    };
    wait_for(19).await;
    // Collector outage: events keep being recorded, then are delivered.
    col.abort();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    for i in 0..10 {
        s.patient(&doc, "Sys", &format!("b{i}")).await;
    }
    let col = collector(port, &cdir, seen.clone()).await;
    wait_for(29).await;
    // Server restart: resumes from the persisted cursor, loses nothing.
    s.restart().await;
    let doc = s.login("dr.sys", common::PASSWORD).await;
    for i in 0..5 {
        s.patient(&doc, "Sys", &format!("c{i}")).await;
    }
    let total = wait_for(36).await;
    let dups = seen.lock().unwrap().len() as i64 - total;
    assert!((0..200).contains(&dups), "at least once, few duplicates: {dups}");
    col.abort();
}

#[tokio::test]
async fn the_patient_report_takes_the_record_number_and_refuses_an_unknown_one() {
    let s = TestServer::start("audit-mrn").await;
    let doc = s.user("dr.m", &["physician"]).await;
    let aud = s.user("aud.m", &["auditor"]).await;
    let nurse = s.user("ns.m", &["nurse"]).await;
    let mrn_system = "urn:oid:1.2.392.100495.20.3.51.1";
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "identifier": [{"system": mrn_system, "value": "00011480"}],
                   "name": [{"family": "森", "given": ["蓮"]}], "gender": "male", "birthDate": "1980-02-02"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pid = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}"), &doc).await.status, 200);

    // The number staff see finds the same events as the id.
    let by_id = s.get(&format!("/api/v1/audit/reports/patient?patient=Patient/{pid}"), &aud).await;
    let by_mrn = s.get("/api/v1/audit/reports/patient?patient=00011480", &aud).await;
    assert_eq!(by_mrn.status, 200, "{}", by_mrn.text);
    assert_eq!(by_mrn.body["patient"], json!(pid));
    assert!(by_mrn.body["total"].as_u64().unwrap() >= 2, "{}", by_mrn.text);
    // The same events, plus the first report itself (a disclosure report
    // is an access to the patient's record too).
    assert_eq!(by_mrn.body["total"].as_u64().unwrap(), by_id.body["total"].as_u64().unwrap() + 1);
    assert_eq!(s.last_audit()["patients"], json!([pid]), "the report is audited against the patient meant");

    // An unknown number is "no such patient", never "nobody looked".
    let r = s.get("/api/v1/audit/reports/patient?patient=00099999", &aud).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("no patient has the id or medical record number"), "{}", r.text);
    // Two patients with the number: ambiguous, say which.
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:other", "value": "00011480"}],
                   "name": [{"family": "林"}], "gender": "female"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.get("/api/v1/audit/reports/patient?patient=00011480", &aud).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("several patients"), "{}", r.text);
    // Only those who may see the reports learn whether a number exists.
    assert_eq!(s.get("/api/v1/audit/reports/patient?patient=00099999", &nurse).await.status, 403);
}
