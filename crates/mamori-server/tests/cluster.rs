//! Two mamori servers on one PostgreSQL database (always PostgreSQL,
//! whichever backend the rest of the suite runs on): one leader at a time,
//! the mode and revocations seen by both, writes through both land in one
//! verifiable audit log, and leadership fails over when the leader stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{copy_dir, observation, pg_schema, temp_dir, TestServer};
use mamori_store::sql::Conn;
use reqwest::Method;
use serde_json::{json, Value};

fn pg() -> String {
    common::pg_base().unwrap_or_else(|| {
        std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    })
}

/// The same server over verified TLS (`sslmode=verify-full`, host name
/// `localhost`, the server's own certificate as the root): the cluster runs
/// on encrypted, authenticated connections.
fn tls(plain: &str) -> String {
    let cert = common::on_pg(plain, |c| {
        c.query_one("SHOW ssl_cert_file", mamori_store::p![]).unwrap().unwrap().text(0).unwrap()
    });
    let host = plain.replacen("@127.0.0.1:", "@localhost:", 1);
    let sep = if host.contains('?') { '&' } else { '?' };
    format!("{host}{sep}sslmode=verify-full&sslrootcert={cert}")
}

async fn health(s: &TestServer) -> Value {
    s.req(Method::GET, "/healthz", None, None).await.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_one_database() {
    let base = tls(&pg());
    let (url, schema) = pg_schema(&base, "cluster");
    let dir_a = temp_dir("cluster-a");
    std::fs::create_dir_all(&dir_a).unwrap();
    std::fs::write(
        dir_a.join("mamori.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n[audit]\ncheckpoint_every_seconds = 1\n"
        ),
    )
    .unwrap();
    let a = TestServer::boot(dir_a.clone(), None).await;
    assert_eq!(health(&a).await["backend"], "postgres");
    assert!(url.contains("sslmode=verify-full"));

    // A second server on a new, empty directory is refused: it would bring
    // new keys to an institution's database.
    let stray = temp_dir("cluster-stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(
        stray.join("mamori.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n"),
    )
    .unwrap();
    let e = mamori_server::server::start(mamori_server::server::ServeOptions {
        data: stray.clone(),
        listen: None,
        as2_listen: None,
        clock: std::sync::Arc::new(mamori_core::time::SystemClock),
    })
    .await
    .err()
    .expect("refused");
    assert!(e.to_string().contains("already belongs"), "{e}");
    // Best effort: a leftover temporary directory harms no test.
    std::fs::remove_dir_all(&stray).ok();

    // The second server: a copy of the first one's data directory.
    let dir_b = temp_dir("cluster-b");
    copy_dir(&dir_a, &dir_b);
    let mut b = TestServer::boot(dir_b.clone(), None).await;
    b.pg = None; // the schema is dropped once, below

    // Exactly one leader.
    let t0 = Instant::now();
    loop {
        let (la, lb) = (health(&a).await["leader"] == true, health(&b).await["leader"] == true);
        assert!(!(la && lb), "two leaders at once");
        if la || lb {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        let (la, lb) = (health(&a).await["leader"] == true, health(&b).await["leader"] == true);
        assert!(la ^ lb, "exactly one leader: a={la} b={lb}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A user made on A works on B; writes through both servers.
    let doc = a.user("dr.c", &["physician"]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let p = s.patient(&doc, "Cluster", &format!("n{i}")).await;
        let r = s.post("/fhir/Observation", &doc, observation(&p, "8867-4", 70.0 + f64::from(i))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push((p, r.body["id"].as_str().unwrap().to_owned()));
    }
    for (p, o) in &ids {
        assert_eq!(a.get(&format!("/fhir/Observation/{o}"), &doc).await.status, 200);
        assert_eq!(b.get(&format!("/fhir/Patient/{p}"), &doc).await.status, 200);
    }

    // A mode change on A is in force on B within a second.
    let decider = a.user("bcp.c", &["bcp-decider"]).await;
    let r = a
        .post(
            "/api/v1/bcp/declarations",
            &decider,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "cluster test: earthquake"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let t0 = Instant::now();
    loop {
        let m = health(&b).await["mode"].as_str().unwrap_or_default().to_owned();
        if m.starts_with("emergency") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "B still in mode {m} after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = t0.elapsed();
    eprintln!("mode change on A seen on B after {seen:?}");
    let r = b.get("/api/v1/mode", &doc).await;
    assert!(r.body["mode"].as_str().unwrap().starts_with("emergency"), "{}", r.text);

    // A token revoked on A is refused by B on the next request.
    let tok = a.login("dr.c", common::PASSWORD).await;
    assert_eq!(b.get("/api/v1/auth/me", &tok).await.status, 200);
    assert_eq!(a.req(Method::POST, "/api/v1/auth/logout", Some(&tok), None).await.status, 200);
    assert_eq!(b.get("/api/v1/auth/me", &tok).await.status, 401);

    // One audit log, integrated by both, verifies.
    let (vkey_text, origin) = (
        std::fs::read_to_string(dir_a.join("keys/audit.vkey")).unwrap(),
        mamori_server::config::Config::load(&dir_a).unwrap().audit.origin,
    );
    let verify = |url: String| {
        common::on_pg(&url, |c| {
            let mut nodes = mamori_store::pg::PgConn::connect(&url).unwrap();
            let v = mamori_audit::note::NoteVerifier::parse(vkey_text.trim()).unwrap();
            mamori_store::audit_log::verify(c, Some(&mut nodes as &mut (dyn Conn + Send)), &v, &origin, true).unwrap()
        })
    };
    let r = verify(url.clone());
    assert!(r.ok(), "{:?}", r.findings);
    assert!(r.events > 40, "{}", r.events);

    // The leader stops: the other takes over.
    let (mut leader, other) = if health(&a).await["leader"] == true { (a, b) } else { (b, a) };
    leader.stop().await;
    let t0 = Instant::now();
    while health(&other).await["leader"] != true {
        assert!(t0.elapsed() < Duration::from_secs(5), "no fail-over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("fail-over after {:?}", t0.elapsed());
    let p = other.patient(&doc, "After", "failover").await;
    assert_eq!(other.get(&format!("/fhir/Patient/{p}"), &doc).await.status, 200);
    let r = verify(url.clone());
    assert!(r.ok(), "{:?}", r.findings);
    drop(other);
    drop(leader);
    common::drop_pg_schema(&base, &schema);
}
