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

/// Unmounts the test's tmpfs when the test ends, however it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        // Lazy: the server may still hold files open while it shuts down.
        let ok = std::process::Command::new("umount").arg("-l").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("could not unmount {}", self.0.display());
        }
        std::fs::remove_dir_all(&self.0).ok();
    }
}

/// A full disk (a small tmpfs filled up): writes answer 503, `/healthz`
/// says why, and both recover once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_the_disk_is_full() {
    if pg_base().is_some() {
        eprintln!("skipped on PostgreSQL: the database is not in the data directory");
        return;
    }
    let mnt = temp_dir("fulldisk");
    std::fs::create_dir_all(&mnt).unwrap();
    let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=48m", "tmpfs"]).arg(&mnt).status();
    if !st.is_ok_and(|s| s.success()) {
        // Mounting needs root (CAP_SYS_ADMIN); CI runs as root.
        eprintln!("skipped: cannot mount a tmpfs here (not root?)");
        return;
    }
    let guard = Mounted(mnt.clone());
    let dir = mnt.join("data");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mamori.toml"),
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nsynchronous = \"normal\"\nurl = \"\"\n",
    )
    .unwrap();
    let mut s = TestServer::boot(dir, None).await;
    s.owns_dir = false;
    let doc = s.user("dr.full", &["physician"]).await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "満杯", "given": ["一郎"]}]});
    assert_eq!(s.post("/fhir/Patient", &doc, patient.clone()).await.status, 201);

    // Fill the disk.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 1 << 16];
        while f.write_all(&block).is_ok() {}
        f.sync_all().ok();
    }
    let mut refused = None;
    for _ in 0..200 {
        let r = s.post("/fhir/Patient", &doc, patient.clone()).await;
        if r.status != 201 {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("a write fails once the disk is full");
    assert_eq!(r.status, 503, "{}", r.text);
    let h = s.req(Method::GET, "/healthz", None, None).await;
    assert_eq!(h.status, 503, "{}", h.text);
    let p = h.body["problems"][0].as_str().unwrap();
    assert!(p.starts_with("database: cannot write") && p.contains("full"), "{p}");
    assert_eq!(s.req(Method::GET, "/readyz", None, None).await.status, 503);

    // Space freed: writes commit again and health recovers.
    std::fs::remove_file(&filler).unwrap();
    let r = s.post("/fhir/Patient", &doc, patient).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let h = s.req(Method::GET, "/healthz", None, None).await;
    assert_eq!((h.status.as_u16(), h.body["status"].as_str()), (200, Some("ok")), "{}", h.text);
    s.stop().await;
    drop(guard);
}
