//! PostgreSQL high availability: a primary and a synchronous standby
//! (streaming replication, `synchronous_commit = remote_apply`), made by
//! this test with `initdb` and `pg_basebackup` on ephemeral loopback ports.
//! Two mamori servers write through a multi-host URL
//! (`target_session_attrs=read-write`); the primary is killed and the
//! standby promoted while they are under write load. The servers must
//! reconnect by themselves, one of them must lead again, no acknowledged
//! write or audit event may be lost, and the audit log must verify (deep)
//! on the new primary. The time without writes is printed. A standby
//! named as `replica_url` answers searches while the primary audits them.
//!
//! Needs the PostgreSQL server binaries (`/usr/lib/postgresql/*/bin`, or
//! `MAMORI_PG_BIN`); as root they run as the `postgres` user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{copy_dir, temp_dir, TestServer};
use mamori_audit::verify::Finding;
use mamori_store::sql::Conn;
use reqwest::Method;
use serde_json::json;

fn pg_bin() -> PathBuf {
    if let Some(b) = std::env::var_os("MAMORI_PG_BIN") {
        return PathBuf::from(b);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql (or set MAMORI_PG_BIN)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A PostgreSQL tool, as the `postgres` user when the test runs as root
/// (the server refuses to run as root).
fn tool(name: &str) -> Command {
    let path = pg_bin().join(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn run(mut c: Command) -> String {
    let out = c.output().expect("PostgreSQL tool runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{c:?} failed: {text}");
    text
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// The two clusters; stopped (immediately) when dropped, even after a
/// failed assertion.
struct Clusters {
    root: PathBuf,
    primary: PathBuf,
    standby: PathBuf,
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for d in [&self.primary, &self.standby] {
            // Best effort: one of them is already stopped.
            tool("pg_ctl").arg("-D").arg(d).args(["-m", "immediate", "stop"]).output().ok();
        }
        std::fs::remove_dir_all(&self.root).ok();
    }
}

fn ctl(dir: &Path, args: &[&str]) -> String {
    let mut c = tool("pg_ctl");
    c.arg("-D").arg(dir).args(args);
    run(c)
}

/// A primary on `p1` and a standby (`standby1`) on `p2`, synchronous
/// (`remote_apply`) or asynchronous.
fn make_clusters(p1: u16, p2: u16, synchronous: bool) -> Clusters {
    let root = temp_dir("failover-pg");
    std::fs::create_dir_all(&root).unwrap();
    if is_root() {
        run({
            let mut c = Command::new("chown");
            c.arg("postgres:postgres").arg(&root);
            c
        });
    }
    let (primary, standby) = (root.join("primary"), root.join("standby"));
    let cl = Clusters { root: root.clone(), primary: primary.clone(), standby: standby.clone() };
    run({
        let mut c = tool("initdb");
        c.arg("-D").arg(&primary).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"]);
        c
    });
    append(
        &primary.join("postgresql.conf"),
        &format!(
            "\nport = {p1}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             wal_level = replica\nmax_wal_senders = 4\nmax_connections = 60\n{}",
            root.display(),
            if synchronous {
                "synchronous_commit = remote_apply\nsynchronous_standby_names = 'standby1'\n"
            } else {
                "synchronous_standby_names = ''\n"
            }
        ),
    );
    ctl(&primary, &["-l", &root.join("primary.log").to_string_lossy(), "-w", "start"]);
    run({
        let mut c = tool("pg_basebackup");
        c.args(["-h", "127.0.0.1", "-p", &p1.to_string(), "-U", "postgres", "-X", "stream", "-R", "-D"]).arg(&standby);
        c
    });
    // Promoted, it has no standby of its own: it must not wait for one
    // (a third node would be named here to stay synchronous).
    append(&standby.join("postgresql.conf"), &format!("\nport = {p2}\nsynchronous_standby_names = ''\n"));
    append(
        &standby.join("postgresql.auto.conf"),
        &format!("\nprimary_conninfo = 'host=127.0.0.1 port={p1} user=postgres application_name=standby1'\n"),
    );
    ctl(&standby, &["-l", &root.join("standby.log").to_string_lossy(), "-w", "start"]);
    // The standby streams, synchronously or not.
    let want = if synchronous { "sync" } else { "async" };
    let url = format!("postgres://postgres@127.0.0.1:{p1}/postgres");
    let t0 = Instant::now();
    loop {
        let state = common::on_pg(&url, |c| {
            c.query_one(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
                mamori_store::p![],
            )
            .unwrap()
            .map(|r| r.text(0).unwrap())
        });
        if state.as_deref() == Some(want) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the standby is not streaming ({want}): {state:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cl
}

/// A Patient create; true when acknowledged (201).
async fn create(client: &reqwest::Client, base: &str, tok: &str, n: u64) -> Option<String> {
    let body = json!({"resourceType": "Patient", "name": [{"family": "Failover", "given": [format!("n{n}")]}]});
    let r = client
        .post(format!("{base}/fhir/Patient"))
        .bearer_auth(tok)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .ok()?;
    if r.status() != 201 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["id"].as_str().map(str::to_owned)
}

async fn leader(s: &TestServer) -> bool {
    s.req(Method::GET, "/healthz", None, None).await.body["leader"] == true
}

/// A fresh mamori server on both clusters (a multi-host URL that follows
/// the primary), checkpointing every second.
async fn mamori_on(p1: u16, p2: u16, tag: &str) -> (TestServer, PathBuf) {
    let url = format!(
        "postgres://postgres@127.0.0.1:{p1},127.0.0.1:{p2}/postgres?target_session_attrs=read-write&connect_timeout=2"
    );
    let dir = temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mamori.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n[audit]\ncheckpoint_every_seconds = 1\n"
        ),
    )
    .unwrap();
    let mut s = TestServer::boot(dir.clone(), None).await;
    s.pg = None; // the clusters go with the test
    (s, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_takes_over_with_nothing_lost() {
    let (p1, p2) = (free_port(), free_port());
    let clusters = make_clusters(p1, p2, true);
    let (mut a, dir_a) = mamori_on(p1, p2, "failover-a").await;
    let dir_b = temp_dir("failover-b");
    copy_dir(&dir_a, &dir_b);
    let mut b = TestServer::boot(dir_b.clone(), None).await;
    b.pg = None;
    let doc = a.user("dr.failover", &["physician"]).await;

    // Write load through both servers: every acknowledged id, with when.
    let acked: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (client, base) =
            if w % 2 == 0 { (a.client.clone(), a.base.clone()) } else { (b.client.clone(), b.base.clone()) };
        let (acked, failed, stop, doc) = (acked.clone(), failed.clone(), stop.clone(), doc.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = w * 1_000_000;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                match create(&client, &base, &doc, n).await {
                    Some(id) => acked.lock().unwrap().push((Instant::now(), id)),
                    None => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = acked.lock().unwrap().len();
    assert!(before > 20, "the load runs before the failure: {before} writes");

    // The primary dies; the standby is promoted a second later (what an
    // operator or a cluster manager does).
    ctl(&clusters.primary, &["-m", "immediate", "stop"]);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    ctl(&clusters.standby, &["-w", "promote"]);
    let promoted = killed.elapsed();

    // Writes resume through both servers without a restart.
    let t0 = Instant::now();
    loop {
        let after = acked.lock().unwrap().iter().filter(|(t, _)| *t > killed).count();
        if after >= 40 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "writes did not resume after the promotion");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both servers write again.
    for s in [&a, &b] {
        let t0 = Instant::now();
        loop {
            if create(&s.client, &s.base, &doc, 9_999_999).await.is_some() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{} does not write after the promotion", s.base);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // The time without writes: the longest gap between acknowledgements
    // around the failure.
    let mut times: Vec<Instant> = acked.iter().map(|(t, _)| *t).collect();
    times.sort();
    let gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
    eprintln!(
        "failover: {} writes acknowledged ({} before the failure), {} refused during it; \
         promoted {:?} after the kill; longest time without an acknowledged write {:?}",
        acked.len(),
        before,
        failed.load(Ordering::SeqCst),
        promoted,
        gap
    );

    // One leader again.
    let t0 = Instant::now();
    loop {
        let (la, lb) = (leader(&a).await, leader(&b).await);
        assert!(!(la && lb), "two leaders");
        if la || lb {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "no leader after the failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("leader again {:?} after writes resumed", t0.elapsed());

    // Nothing acknowledged is lost: every id is on the new primary, with
    // its audit event.
    let new_primary = format!("postgres://postgres@127.0.0.1:{p2}/postgres");
    let (stored, audited) = common::on_pg(&new_primary, |c| {
        let ids = |c: &mut mamori_store::pg::PgConn, sql: &str| -> std::collections::HashSet<String> {
            c.query(sql, mamori_store::p![]).unwrap().iter().map(|r| r.text(0).unwrap()).collect()
        };
        (
            ids(c, "SELECT id FROM resources WHERE rtype = 'Patient' AND deleted = 0"),
            ids(c, "SELECT rid FROM audit_events WHERE rtype = 'Patient' AND action = 'create' AND status = 201"),
        )
    });
    let lost: Vec<&String> = acked.iter().map(|(_, id)| id).filter(|id| !stored.contains(*id)).collect();
    assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    let unaudited: Vec<&String> = acked.iter().map(|(_, id)| id).filter(|id| !audited.contains(*id)).collect();
    assert!(unaudited.is_empty(), "{} acknowledged writes without their audit event", unaudited.len());
    // Read back through the servers, too.
    for (_, id) in acked.iter().rev().take(5).chain(acked.iter().take(5)) {
        assert_eq!(a.get(&format!("/fhir/Patient/{id}"), &doc).await.status, 200, "{id}");
        assert_eq!(b.get(&format!("/fhir/Patient/{id}"), &doc).await.status, 200, "{id}");
    }

    // The audit log verifies, deep (every leaf, node and checkpoint), on
    // the new primary.
    let vkey = std::fs::read_to_string(dir_a.join("keys/audit.vkey")).unwrap();
    let origin = mamori_server::config::Config::load(&dir_a).unwrap().audit.origin;
    let report = common::on_pg(&new_primary, |c| {
        let mut nodes = mamori_store::pg::PgConn::connect(&new_primary).unwrap();
        let v = mamori_audit::note::NoteVerifier::parse(vkey.trim()).unwrap();
        mamori_store::audit_log::verify(c, Some(&mut nodes as &mut (dyn Conn + Send)), &v, &origin, true).unwrap()
    });
    assert!(report.ok(), "{:?}", report.findings);
    assert!(report.events as usize > acked.len(), "{} events for {} writes", report.events, acked.len());

    a.stop().await;
    b.stop().await;
    drop(clusters);
}

/// Asynchronous replication: a standby that fell behind (here: stopped
/// while the primary kept acknowledging writes) is promoted after the
/// primary dies. The writes it never received are gone with their audit
/// events; the promoted log verifies on its own, and only a checkpoint
/// kept outside the database (what a witness holds) names the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn asynchronous_replication_loses_writes_and_a_kept_checkpoint_names_it() {
    let (p1, p2) = (free_port(), free_port());
    let clusters = make_clusters(p1, p2, false);
    let (mut a, dir) = mamori_on(p1, p2, "failover-async").await;
    let doc = a.user("dr.async", &["physician"]).await;
    for n in 0..10 {
        assert!(create(&a.client, &a.base, &doc, n).await.is_some());
    }
    // The standby falls behind (stopped: a network partition, a slow disk).
    ctl(&clusters.standby, &["-m", "fast", "stop"]);
    let mut behind = Vec::new();
    for n in 10..40 {
        behind.push(create(&a.client, &a.base, &doc, n).await.expect("acknowledged without the standby"));
    }
    // The newest signed checkpoint, as a witness keeps it.
    let logged = common::on_pg(&format!("postgres://postgres@127.0.0.1:{p1}/postgres"), |c| {
        c.query_one("SELECT COUNT(*) FROM audit_events", mamori_store::p![]).unwrap().unwrap().u64(0).unwrap()
    });
    let t0 = Instant::now();
    let kept = loop {
        let r = a.req(Method::GET, "/api/v1/audit/checkpoint", None, None).await;
        let size: u64 = r.text.lines().nth(1).and_then(|l| l.parse().ok()).unwrap_or(0);
        if size >= logged {
            break r.text;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no checkpoint covers the writes: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The primary dies; the stale standby is started and promoted.
    ctl(&clusters.primary, &["-m", "immediate", "stop"]);
    ctl(&clusters.standby, &["-l", &clusters.root.join("standby2.log").to_string_lossy(), "-w", "start"]);
    ctl(&clusters.standby, &["-w", "promote"]);
    let t0 = Instant::now();
    while create(&a.client, &a.base, &doc, 99).await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "no write after the promotion");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // What was acknowledged while the standby was behind is gone.
    let new_primary = format!("postgres://postgres@127.0.0.1:{p2}/postgres");
    let stored: std::collections::HashSet<String> = common::on_pg(&new_primary, |c| {
        c.query("SELECT id FROM resources WHERE rtype = 'Patient'", mamori_store::p![])
            .unwrap()
            .iter()
            .map(|r| r.text(0).unwrap())
            .collect()
    });
    let lost = behind.iter().filter(|id| !stored.contains(*id)).count();
    eprintln!("asynchronous replication: {lost} of {} acknowledged writes lost in the failover", behind.len());
    assert_eq!(lost, behind.len(), "the stale standby cannot have them");

    // The promoted log verifies on its own: the loss is invisible there.
    let vkey = std::fs::read_to_string(dir.join("keys/audit.vkey")).unwrap();
    let origin = mamori_server::config::Config::load(&dir).unwrap().audit.origin;
    let verify = |outside: Vec<String>| {
        common::on_pg(&new_primary, |c| {
            let v = mamori_audit::note::NoteVerifier::parse(vkey.trim()).unwrap();
            mamori_store::audit_log::verify_with(c, None, &v, &origin, true, &outside).unwrap()
        })
    };
    let alone = verify(vec![]);
    assert!(alone.ok(), "{:?}", alone.findings);
    // Against the kept checkpoint it fails, naming it: the log grew again
    // after the promotion, so the tree at that size is a different one
    // (or, before any new write, shorter than it).
    let against = verify(vec![kept.clone()]);
    let kept_size: u64 = kept.lines().nth(1).unwrap().parse().unwrap();
    assert!(
        against.findings.iter().any(|f| matches!(f,
            Finding::RootMismatch { size, .. } | Finding::Truncated { size, .. } if *size == kept_size)),
        "{:?}",
        against.findings
    );
    eprintln!("named: {}", against.findings.first().unwrap());
    a.stop().await;
    drop(clusters);
}

/// A standby named as `replica_url` answers searches; each search's audit
/// event is still written on the primary before the answer. A standby
/// connection that breaks is passed over (the primary answers), and with
/// the primary gone no search is answered at all: nothing is shown that
/// could not be audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_answers_searches_and_the_primary_audits_them() {
    let (p1, p2) = (free_port(), free_port());
    let clusters = make_clusters(p1, p2, true);
    let (primary, standby) = (
        format!("postgres://postgres@127.0.0.1:{p1}/postgres"),
        format!("postgres://postgres@127.0.0.1:{p2}/postgres"),
    );
    let dir = temp_dir("replica-search");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mamori.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{primary}?connect_timeout=2\"\n\
             replica_url = \"{standby}?connect_timeout=2\"\nreaders = 2\n"
        ),
    )
    .unwrap();
    let mut s = TestServer::boot(dir.clone(), None).await;
    s.pg = None; // the clusters go with the test
    let doc = s.user("dr.replica", &["physician"]).await;
    let pid = s.patient(&doc, "Replica", "Search").await;
    for code in ["a", "b", "c"] {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": code},
                         "subject": {"reference": format!("Patient/{pid}")}});
        assert_eq!(s.post("/fhir/Observation", &doc, obs).await.status, 201);
    }
    // Table scans the standby has answered (reads only: replayed writes
    // are not scans).
    let scans = |url: &str| {
        common::on_pg(url, |c| {
            c.query_one(
                "SELECT COALESCE(SUM(seq_scan + COALESCE(idx_scan, 0)), 0)::bigint FROM pg_stat_user_tables",
                mamori_store::p![],
            )
            .unwrap()
            .unwrap()
            .i64(0)
            .unwrap()
        })
    };
    let searches = |url: &str| {
        common::on_pg(url, |c| {
            c.query_one("SELECT COUNT(*) FROM audit_events WHERE action = 'search-type'", mamori_store::p![])
                .unwrap()
                .unwrap()
                .i64(0)
                .unwrap()
        })
    };
    let before = scans(&standby);
    let q = format!("/fhir/Observation?subject=Patient/{pid}&_total=accurate");
    for _ in 0..5 {
        let r = s.get(&q, &doc).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["total"], 3, "the standby has applied every acknowledged write: {}", r.text);
    }
    let t0 = Instant::now();
    while scans(&standby) <= before {
        assert!(t0.elapsed() < Duration::from_secs(10), "the standby answered no search");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(searches(&primary), 5, "every search audited on the primary");

    // The standby's connections break: the primary answers meanwhile.
    common::on_pg(&standby, |c| {
        c.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            mamori_store::p![],
        )
        .unwrap();
    });
    let r = s.get(&q, &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 3);
    assert_eq!(searches(&primary), 6);

    // Without the primary, the search cannot be audited: no answer.
    ctl(&clusters.primary, &["-m", "immediate", "stop"]);
    let r =
        s.client.get(format!("{}{q}", s.base)).bearer_auth(&doc).timeout(Duration::from_secs(60)).send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_ne!(status, 200, "{text}");
    assert!(!text.contains(&pid), "nothing of the patient's: {text}");
    s.stop().await;
    drop(clusters);
}
