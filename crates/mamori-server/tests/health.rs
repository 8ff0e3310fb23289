//! Honest health (issue 15): `/healthz` and `/readyz` say 503, with the
//! reason, while the database cannot be written, and recover when it can;
//! `/livez` answers as long as the process does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_the_database_cannot_write() {
    let s = TestServer::start("health").await;
    if s.pg.is_some() {
        // A PostgreSQL writer waits for a lock instead of failing; this
        // scenario is SQLite's (another process holding the write lock).
        eprintln!("skipped on PostgreSQL");
        return;
    }
    let doc = s.user("dr.h", &["physician"]).await;
    let h = s.req(Method::GET, "/healthz", None, None).await;
    assert_eq!((h.status.as_u16(), h.body["status"].as_str()), (200, Some("ok")), "{}", h.text);
    assert_eq!(h.body["problems"], json!([]));
    assert_eq!(s.req(Method::GET, "/readyz", None, None).await.status, 200);

    // Another process holds the database's write lock longer than the
    // writer waits (10 s): commits fail, requests get 503.
    let path = s.dir.join("mamori.db");
    let (locked_tx, locked_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let c = rusqlite::Connection::open(path).unwrap();
        c.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        release_rx.recv().ok();
        c.execute_batch("ROLLBACK").unwrap();
    });
    locked_rx.recv().unwrap();
    let patient = json!({"resourceType": "Patient", "name": [{"family": "健康", "given": ["確認"]}]});
    let r = s.post("/fhir/Patient", &doc, patient.clone()).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let h = s.req(Method::GET, "/healthz", None, None).await;
    assert_eq!(h.status, 503, "{}", h.text);
    assert_eq!(h.body["status"], "degraded");
    let p = h.body["problems"][0].as_str().unwrap();
    assert!(p.starts_with("database: cannot write") && p.contains("locked"), "{p}");
    let r = s.req(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(s.req(Method::GET, "/livez", None, None).await.status, 200, "the process itself is alive");

    // The lock is released: the next write commits and health recovers.
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let r = s.post("/fhir/Patient", &doc, patient).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let h = s.req(Method::GET, "/healthz", None, None).await;
    assert_eq!((h.status.as_u16(), h.body["status"].as_str()), (200, Some("ok")), "{}", h.text);
    assert_eq!(s.req(Method::GET, "/readyz", None, None).await.status, 200);
}
