//! The store on both backends (SQLite, and PostgreSQL at `MAMORI_TEST_PG`,
//! default the local server, each test in a schema of its own): the
//! group-commit writer's exclusive jobs all or nothing, a failing job in a
//! batch rolled back alone with its failure recorded, audit appends that
//! verify; searches planned for their own values.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use mamori_audit::event::{Agent, AuditRecord};
use mamori_audit::note::{generate_pkcs8, NoteSigner};
use mamori_core::time::SystemClock;
use mamori_store::pg::PgConn;
use mamori_store::sql::{Backend, Conn};
use mamori_store::{audit_log, p, CheckpointPolicy, Store, StoreConfig, StoreError, Synchronous};

fn pg_base() -> String {
    std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Runs a statement on the test server from a thread of its own (the
/// synchronous client must not block the test's runtime).
fn admin(sql: String) {
    std::thread::spawn(move || {
        let mut c = PgConn::connect(&pg_base()).expect("PostgreSQL for the tests is reachable");
        c.batch(&sql).unwrap();
    })
    .join()
    .unwrap();
}

/// A store under test, and what to remove afterwards.
struct Fixture {
    store: Option<Store>,
    signer: Arc<NoteSigner>,
    cfg: StoreConfig,
    dir: std::path::PathBuf,
    schema: Option<String>,
}

impl Fixture {
    fn store(&self) -> &Store {
        self.store.as_ref().unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.store.take();
        // Best effort: a leftover temporary directory harms no test.
        std::fs::remove_dir_all(&self.dir).ok();
        if let Some(s) = &self.schema {
            admin(format!("DROP SCHEMA IF EXISTS {s} CASCADE"));
        }
    }
}

fn fixture(tag: &str, backend: Backend) -> Fixture {
    let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("mamori-store-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (url, schema) = match backend {
        Backend::Sqlite => (None, None),
        Backend::Postgres => {
            let name = format!("s_{tag}_{}_{n:x}", std::process::id());
            admin(format!("CREATE SCHEMA {name}"));
            (Some(format!("{}?options=-csearch_path%3D{name}", pg_base())), Some(name))
        }
    };
    let signer = Arc::new(NoteSigner::from_pkcs8("test/log", &generate_pkcs8().unwrap()).unwrap());
    let cfg = StoreConfig {
        path: dir.join("t.db"),
        url,
        synchronous: Synchronous::Normal,
        readers: 1,
        checkpoint: CheckpointPolicy { every_events: 1000, every: Duration::from_secs(60) },
        origin: "test/log".into(),
        search: Default::default(),
        replica_url: None,
    };
    let store = Store::open(&cfg, Arc::new(SystemClock), signer.clone()).unwrap();
    assert_eq!(store.backend(), backend);
    Fixture { store: Some(store), signer, cfg, dir, schema }
}

async fn count(s: &Store) -> i64 {
    s.read(|c| Ok(c.query_one("SELECT COUNT(*) FROM provisional_seq", p![])?.unwrap().i64(0)?)).await.unwrap()
}

macro_rules! both {
    ($name:ident, $sqlite:ident, $pg:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            $name(Backend::Sqlite).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $pg() {
            $name(Backend::Postgres).await;
        }
    };
}

both!(exclusive_jobs_are_all_or_nothing, exclusive_jobs_sqlite, exclusive_jobs_postgres);
both!(failing_job_rolls_back_alone, failing_job_sqlite, failing_job_postgres);
both!(held_back_failure_is_the_jobs_own, held_back_failure_sqlite, held_back_failure_postgres);
both!(audit_appends_verify, audit_appends_sqlite, audit_appends_postgres);
both!(compartment_lists_its_patient, compartment_sqlite, compartment_postgres);
both!(searches_are_planned_for_their_values, search_plans_sqlite, search_plans_postgres);

async fn exclusive_jobs_are_all_or_nothing(b: Backend) {
    let f = fixture("excl", b);
    let s = f.store();
    // A large job commits as a whole.
    s.writer()
        .write_exclusive(
            |w| {
                for i in 0..20_000 {
                    w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ($1, 1)", p![format!("d{i}")])?;
                }
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    assert_eq!(count(s).await, 20_000);
    // A failing one leaves nothing behind, and its failure is recorded.
    let r: Result<(), StoreError> = s
        .writer()
        .write_exclusive(
            |w| {
                for i in 0..100 {
                    w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ($1, 1)", p![format!("x{i}")])?;
                }
                Err(StoreError::invalid("", "half way"))
            },
            |_, w| {
                w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('failure-recorded', 1)", p![])?;
                Ok(())
            },
        )
        .await;
    assert!(r.is_err());
    assert_eq!(count(s).await, 20_001);
    // Ordinary jobs around it still work.
    let (a, c) = tokio::join!(
        s.writer().write(
            |w| w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('a', 1)", p![]).map_err(Into::into),
            |_, _| Ok(())
        ),
        s.writer().write_exclusive(
            |w| w.conn.exec("INSERT INTO provisional_seq (day, n) VALUES ('b', 1)", p![]).map_err(Into::into),
            |_, _| Ok(())
        ),
    );
    a.unwrap();
    c.unwrap();
    assert_eq!(count(s).await, 20_003);
}

/// Jobs committed together: one failing with a database error (a
/// duplicate key, which aborts the transaction on PostgreSQL until its
/// savepoint is rolled back) takes none of the others with it.
async fn failing_job_rolls_back_alone(b: Backend) {
    failing_jobs(b, "batch", false).await;
}

/// The same with statements held back for the next round trip
/// (PostgreSQL pipelining): a job whose held-back insert fails fails
/// itself, with the database's error, although the error arrives after
/// the job's code returned.
async fn held_back_failure_is_the_jobs_own(b: Backend) {
    failing_jobs(b, "later", true).await;
}

async fn failing_jobs(b: Backend, tag: &str, later: bool) {
    let f = fixture(tag, b);
    let s = f.store();
    let exec = move |c: &mut dyn mamori_store::sql::Conn, sql: &str, v: Vec<mamori_store::sql::Val<'static>>| {
        if later {
            c.exec_later(sql, &v)
        } else {
            c.exec(sql, &v).map(|_| ())
        }
    };
    s.writer()
        .write(
            move |w| {
                exec(w.conn, "INSERT INTO provisional_seq (day, n) VALUES ('taken', 1)", vec![]).map_err(Into::into)
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    assert_eq!(count(s).await, 1, "committed with its job");
    let mut jobs = Vec::new();
    for i in 0..60 {
        let w = s.writer().clone();
        jobs.push(tokio::spawn(async move {
            w.write(
                move |w| {
                    exec(w.conn, "INSERT INTO provisional_seq (day, n) VALUES ($1, 1)", vec![format!("j{i}").into()])?;
                    if i % 6 == 0 {
                        // The duplicate: this job fails after a first insert.
                        exec(w.conn, "INSERT INTO provisional_seq (day, n) VALUES ('taken', 2)", vec![])?;
                    }
                    Ok(())
                },
                move |_, w| {
                    exec(
                        w.conn,
                        "INSERT INTO provisional_seq (day, n) VALUES ($1, 9)",
                        vec![format!("failed{i}").into()],
                    )?;
                    Ok(())
                },
            )
            .await
        }));
    }
    let mut failed = Vec::new();
    for j in jobs {
        if let Err(e) = j.await.unwrap() {
            failed.push(e.to_string());
        }
    }
    assert_eq!(failed.len(), 10, "{failed:?}");
    assert!(failed.iter().all(|e| e.contains("duplicate") || e.contains("UNIQUE")), "{failed:?}");
    // 1 + 50 committed jobs + 10 recorded failures; no first insert of a failed job.
    assert_eq!(count(s).await, 61);
    let ghosts = s
        .read(|c| {
            Ok(c.query_one("SELECT COUNT(*) FROM provisional_seq WHERE day IN ('j0', 'j6', 'j54')", p![])?
                .unwrap()
                .i64(0)?)
        })
        .await
        .unwrap();
    assert_eq!(ghosts, 0);
    let recorded = s
        .read(|c| Ok(c.query_one("SELECT COUNT(*) FROM provisional_seq WHERE n = 9", p![])?.unwrap().i64(0)?))
        .await
        .unwrap();
    assert_eq!(recorded, 10, "each failure recorded after its rollback");
}

fn record(i: u64) -> AuditRecord {
    AuditRecord {
        time: mamori_core::time::Timestamp(1_795_000_000_000_000 + i as i64 * 1000).to_rfc3339(),
        mode: "normal".into(),
        agent: Agent { user: format!("u{}", i % 7), kind: "staff".into(), ..Agent::default() },
        action: "read".into(),
        entity: None,
        patients: vec![format!("p{}", i % 13)],
        status: 200,
        basis: None,
        purpose: None,
        request: None,
        query: None,
        detail: None,
        versions: Vec::new(),
    }
}

async fn audit_appends_verify(b: Backend) {
    let f = fixture("audit", b);
    let s = f.store();
    let mut handles = Vec::new();
    for k in 0..20u64 {
        let w = s.writer().clone();
        handles.push(tokio::spawn(async move { w.audit((0..25).map(|i| record(k * 25 + i)).collect()).await }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for h in handles {
        seqs.extend(h.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..500).collect::<Vec<u64>>(), "leaf indexes are dense and unique");
    s.writer().write(|w| w.checkpoint("test").map(|_| ()), |_, _| Ok(())).await.unwrap();
    let v = f.signer.verifier();
    let r = s.read(move |c| audit_log::verify(c, None, &v, "test/log", false)).await.unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.events, 500);
}

/// Two stores on one PostgreSQL schema (two servers' writers): appends
/// through both, ordinary and exclusive, interleave into one dense log
/// that verifies, and the derived index covers every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_share_one_log_postgres() {
    let f = fixture("two", Backend::Postgres);
    let url = format!("{}?options=-csearch_path%3D{}", pg_base(), f.schema.as_deref().unwrap());
    let cfg = StoreConfig {
        path: f.dir.join("unused.db"),
        url: Some(url),
        synchronous: Synchronous::Normal,
        readers: 1,
        checkpoint: CheckpointPolicy { every_events: 1000, every: Duration::from_secs(60) },
        origin: "test/log".into(),
        search: Default::default(),
        replica_url: None,
    };
    let other = Store::open(&cfg, Arc::new(SystemClock), f.signer.clone()).unwrap();
    let mut handles = Vec::new();
    for k in 0..20u64 {
        let w = if k % 2 == 0 { f.store().writer().clone() } else { other.writer().clone() };
        handles.push(tokio::spawn(async move {
            let recs: Vec<AuditRecord> = (0..10).map(|i| record(k * 10 + i)).collect();
            if k % 5 == 0 {
                w.write_exclusive(move |ctx| recs.iter().map(|r| ctx.audit(r)).collect(), |_, _| Ok(())).await
            } else {
                w.audit(recs).await
            }
        }));
    }
    let mut seqs: Vec<u64> = Vec::new();
    for h in handles {
        seqs.extend(h.await.unwrap().unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<u64>>(), "one dense sequence across both writers");
    other.writer().write(|w| w.checkpoint("test").map(|_| ()), |_, _| Ok(())).await.unwrap();
    // Last, an exclusive job: its events must be indexed by its own commit
    // (with no later flush), or the cursor another server advanced would
    // claim events that are not in the index.
    let recs: Vec<AuditRecord> = (200..210).map(record).collect();
    f.store()
        .writer()
        .write_exclusive(move |ctx| recs.iter().map(|r| ctx.audit(r)).collect::<Result<Vec<u64>, _>>(), |_, _| Ok(()))
        .await
        .unwrap();
    let v = f.signer.verifier();
    let (r, agents, cursor) = f
        .store()
        .read(move |c| {
            let r = audit_log::verify(c, None, &v, "test/log", false)?;
            let agents = c.query_one("SELECT COUNT(*) FROM audit_agents", p![])?.unwrap().i64(0)?;
            let cursor = audit_log::get_cursor(c, audit_log::INDEX_CURSOR)?;
            Ok((r, agents, cursor))
        })
        .await
        .unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.events, 210);
    assert_eq!(agents, 210, "every committed event indexed");
    assert_eq!(cursor, Some(209));
    drop(other);
}

/// A Patient is not a row of its own compartment (migration 9 removed
/// those rows), yet the compartment lists it first among its records, and
/// a Patient with nothing else is still "without records".
async fn compartment_lists_its_patient(b: Backend) {
    use mamori_core::ids::ResourceType;
    use mamori_core::time::Timestamp;
    use mamori_store::records;
    use serde_json::json;
    let mut f = fixture("comp", b);
    let ids = |v: Vec<records::Version>| v.into_iter().map(|v| format!("{}/{}", v.rtype, v.id)).collect::<Vec<_>>();
    let put = |w: &mut mamori_store::WriteCtx<'_>, t: ResourceType, id: &str, body: serde_json::Value| {
        records::put(w, t, id, body, None, "t", Timestamp(1)).map(|_| ())
    };
    f.store()
        .writer()
        .write_exclusive(
            move |w| {
                put(w, ResourceType::PATIENT, "p1", json!({"resourceType": "Patient"}))?;
                put(w, ResourceType::PATIENT, "p2", json!({"resourceType": "Patient"}))?;
                put(w, ResourceType::PATIENT, "p3", json!({"resourceType": "Patient"}))?;
                put(w, ResourceType::OBSERVATION, "o1", json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}))?;
                // The data of two patients: p2's, performed by p1.
                put(w, ResourceType::OBSERVATION, "o2", json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}, "performer": [{"reference": "Patient/p1"}]}))?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let (list, self_rows, p2_has, p3_has) = f
        .store()
        .read(|c| {
            let self_rows = c
                .query_one("SELECT COUNT(*) FROM resource_compartments WHERE rtype = 'Patient' AND id = patient", p![])?
                .unwrap()
                .i64(0)?;
            Ok((
                records::compartment(c, "p1", None, 100)?,
                self_rows,
                records::has_records(c, "p2")?,
                records::has_records(c, "p3")?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(ids(list), ["Observation/o1", "Observation/o2", "Patient/p1"], "its records and the Patient itself");
    assert_eq!(self_rows, 0);
    assert!(p2_has, "p2 has an Observation");
    assert!(!p3_has, "p3 has nothing but itself");
    // Keyset paging passes over the Patient like any member.
    let page = f.store().read(|c| records::compartment(c, "p1", Some(("Observation", "o2")), 1)).await.unwrap();
    assert_eq!(ids(page), ["Patient/p1"]);

    // A database of schema 8 still holds the self rows: migration 9 removes them, and only them.
    f.store()
        .writer()
        .write_exclusive(
            |w| {
                w.conn.exec("INSERT INTO resource_compartments (patient, rtype, id) VALUES ('p1', 'Patient', 'p1'), ('p2', 'Patient', 'p2')", p![])?;
                w.conn.exec("UPDATE meta SET value = '8' WHERE key = 'schema_version'", p![])?;
                // What migration 10 adds (a schema-8 database has none of it).
                w.conn.exec("ALTER TABLE maint_people DROP COLUMN totp_failures", p![])?;
                w.conn.exec("ALTER TABLE maint_people DROP COLUMN totp_locked_until", p![])?;
                // What migration 12 adds.
                w.conn.exec("DROP TABLE idx_quantity", p![])?;
                // What migration 13 adds.
                w.conn.exec("DROP TABLE compliance_reports", p![])?;
                // What migration 14 adds.
                w.conn.exec("DROP TABLE bulk_exports", p![])?;
                w.conn.exec("DROP TABLE bulk_export_files", p![])?;
                // What migration 15 adds.
                for t in ["oauth_clients", "oauth_codes", "oauth_refresh", "oauth_launches", "oauth_keys"] {
                    w.conn.exec(&format!("DROP TABLE {t}"), p![])?;
                }
                w.conn.exec("DROP INDEX tokens_family", p![])?;
                w.conn.exec("DROP INDEX tokens_client", p![])?;
                for col in ["client_id", "scope", "patient", "family"] {
                    w.conn.exec(&format!("ALTER TABLE tokens DROP COLUMN {col}"), p![])?;
                }
                // (What migration 16 adds went with idx_quantity above.)
                // What migration 19 adds.
                w.conn.exec("DROP TABLE patient_number_seq", p![])?;
                // What migration 18 adds (its columns went with oauth_clients).
                w.conn.exec("DROP TABLE oauth_jti", p![])?;
                // What migration 17 adds: the text of codes, with the strings.
                w.conn.exec("DELETE FROM idx_string WHERE rtype = 'Observation' AND param = 'code'", p![])?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    f.store.take();
    f.store = Some(Store::open(&f.cfg, Arc::new(SystemClock), f.signer.clone()).unwrap());
    let rows = f
        .store()
        .read(|c| {
            let rows = c.query("SELECT patient, rtype, id FROM resource_compartments ORDER BY 1, 2, 3", p![])?;
            rows.iter()
                .map(|r| Ok(format!("{} {}/{}", r.text(0)?, r.text(1)?, r.text(2)?)))
                .collect::<mamori_store::Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(rows, ["p1 Observation/o1", "p1 Observation/o2", "p2 Observation/o2"]);
    let texts = f
        .store()
        .read(|c| {
            let rows = c.query(
                "SELECT id, exact FROM idx_string WHERE rtype = 'Observation' AND param = 'code' ORDER BY 1",
                p![],
            )?;
            rows.iter().map(|r| Ok(format!("{} {}", r.text(0)?, r.text(1)?))).collect::<mamori_store::Result<Vec<_>>>()
        })
        .await
        .unwrap();
    assert_eq!(texts, ["o1 x", "o2 x"], "migration 17 indexed the text of the codes stored before");
    let v = f.store().read(|c| Ok(mamori_store::schema::current(c)?)).await.unwrap();
    assert_eq!(v, mamori_store::schema::latest(b));
}

both!(records_are_bound, records_bound_sqlite, records_bound_postgres);

/// Every stored version is bound by the audit event of the job that
/// stored it (or, when the job audits nothing after it, by a `record-bind`
/// event); the deep verification and the periodic sample check the stored
/// bytes against those digests; versions stored before binding existed
/// are reported until they are bound, then checked like the rest.
async fn records_are_bound(b: Backend) {
    use mamori_core::ids::ResourceType;
    use mamori_core::time::Timestamp;
    use mamori_store::records;
    use serde_json::json;
    let f = fixture("bind", b);
    let s = f.store();
    let deep = |s: &Store| {
        let (s, v) = (s.clone(), f.signer.verifier());
        async move { s.read(move |c| audit_log::verify(c, None, &v, "test/log", true)).await.unwrap() }
    };
    s.writer()
        .write(
            |w| {
                records::put(
                    w,
                    ResourceType::PATIENT,
                    "p1",
                    json!({"resourceType": "Patient"}),
                    None,
                    "t",
                    Timestamp(1),
                )?;
                records::put(
                    w,
                    ResourceType::PATIENT,
                    "p2",
                    json!({"resourceType": "Patient"}),
                    None,
                    "t",
                    Timestamp(1),
                )?;
                w.audit(&record(1))?;
                // Stored after the job's last event: bound by a record-bind event.
                records::put(
                    w,
                    ResourceType::PATIENT,
                    "p1",
                    json!({"resourceType": "Patient", "active": true}),
                    None,
                    "t",
                    Timestamp(2),
                )?;
                records::delete(w, ResourceType::PATIENT, "p2", "t", Timestamp(3))?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let leaves = s
        .read(|c| {
            (0..audit_log::size(c)?)
                .map(|i| Ok(audit_log::leaf(c, i)?.unwrap()))
                .collect::<mamori_store::Result<Vec<_>>>()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|l| AuditRecord::from_leaf(&l).unwrap())
        .collect::<Vec<_>>();
    let bound: Vec<(String, Vec<String>)> =
        leaves.iter().map(|r| (r.action.clone(), r.versions.iter().map(|d| d.reference.clone()).collect())).collect();
    assert_eq!(
        bound,
        [
            ("read".to_owned(), vec!["Patient/p1/_history/1".to_owned(), "Patient/p2/_history/1".to_owned()]),
            ("record-bind".to_owned(), vec!["Patient/p1/_history/2".to_owned(), "Patient/p2/_history/2".to_owned()]),
        ]
    );
    let d = &leaves[1].versions[1];
    assert_eq!(d.sha256, mamori_audit::event::sha256_hex(b""), "a tombstone is bound as no bytes");
    let r = deep(s).await;
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(r.records, Some(4));

    // A job that fails stores nothing and binds nothing.
    let failed = s
        .writer()
        .write(
            |w| {
                records::put(
                    w,
                    ResourceType::PATIENT,
                    "p3",
                    json!({"resourceType": "Patient"}),
                    None,
                    "t",
                    Timestamp(4),
                )?;
                Err::<(), _>(mamori_store::StoreError::Internal("refused".into()))
            },
            |_, w| w.audit(&record(2)).map(|_| ()),
        )
        .await;
    assert!(failed.is_err());
    let last = s.read(|c| audit_log::leaf(c, 2)).await.unwrap().unwrap();
    assert!(AuditRecord::from_leaf(&last).unwrap().versions.is_empty(), "the failure's event binds nothing");
    assert!(deep(s).await.ok());

    // One changed byte is named by the deep check and by a sample.
    s.writer()
        .write(
            |w| {
                w.conn.exec(
                    "UPDATE resource_versions SET body = replace(body, 'true', 'ture') WHERE id = 'p1' AND version = 2",
                    p![],
                )?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let r = deep(s).await;
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(
        r.findings[0].to_string().starts_with("record Patient/p1/_history/2: its stored bytes differ"),
        "{}",
        r.findings[0]
    );
    let (n, problems) = s.read(|c| audit_log::check_record_sample(c, 0, 100)).await.unwrap();
    assert_eq!(n, 4);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("Patient/p1/_history/2") && problems[0].contains("event 1"), "{}", problems[0]);
    // A window without the binding event does not see it.
    let (n, problems) = s.read(|c| audit_log::check_record_sample(c, 0, 1)).await.unwrap();
    assert_eq!((n, problems.len()), (2, 0));

    // Versions stored before record binding (as migration 11 finds them).
    let f2 = fixture("bindold", b);
    let s2 = f2.store();
    s2.writer()
        .write(
            |w| {
                for i in 0..5 {
                    w.conn.exec(
                        "INSERT INTO resource_versions (rtype, id, version, last_updated, deleted, author, body) VALUES ('Patient', $1, 1, 1, 0, 't', '{}')",
                        p![format!("old{i}")],
                    )?;
                }
                w.conn.exec("INSERT INTO meta (key, value) SELECT 'records-unbound-upto', CAST(MAX(seq) AS TEXT) FROM resource_versions", p![])?;
                w.audit(&record(3))?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let v = f2.signer.verifier();
    let r = s2.read(move |c| audit_log::verify(c, None, &v, "test/log", true)).await.unwrap();
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(
        r.findings[0].to_string().contains("5 versions: stored before record binding and not yet bound"),
        "{}",
        r.findings[0]
    );
    let mut rounds = 0;
    loop {
        let n =
            s2.writer().write_exclusive(|w| records::bind_stored_before_binding(w, 2), |_, _| Ok(())).await.unwrap();
        if n == 0 {
            break;
        }
        rounds += 1;
    }
    assert_eq!(rounds, 3, "5 versions, 2 at a time");
    let v = f2.signer.verifier();
    let (r, marker) = s2
        .read(move |c| {
            let r = audit_log::verify(c, None, &v, "test/log", true)?;
            let m =
                c.query_one("SELECT COUNT(*) FROM meta WHERE key LIKE 'records-unbound%'", p![])?.unwrap().i64(0)?;
            Ok((r, m))
        })
        .await
        .unwrap();
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!((r.records, marker), (Some(5), 0));
}

/// On PostgreSQL a search is planned for its values every time (a cached
/// generic plan was seen merging every Observation with one patient's
/// list), without JIT, and the connection's settings are back as they were
/// afterwards; the answers are the same on both backends.
async fn searches_are_planned_for_their_values(b: Backend) {
    use mamori_core::fhir::search::parse_query;
    use mamori_core::ids::ResourceType;
    use mamori_core::time::Timestamp;
    use mamori_store::{records, search};
    use serde_json::json;
    let f = fixture("plans", b);
    f.store()
        .writer()
        .write_exclusive(
            |w| {
                for p in ["p1", "p2"] {
                    records::put(
                        w,
                        ResourceType::PATIENT,
                        p,
                        json!({"resourceType": "Patient"}),
                        None,
                        "t",
                        Timestamp(1),
                    )?;
                }
                for i in 0..30 {
                    let subject = if i % 3 == 0 { "Patient/p2" } else { "Patient/p1" };
                    let body = json!({"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                        "subject": {"reference": subject}});
                    records::put(w, ResourceType::OBSERVATION, &format!("o{i:02}"), body, None, "t", Timestamp(1))?;
                }
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await
        .unwrap();
    let pairs = vec![("subject".to_owned(), "Patient/p1".to_owned()), ("_count".to_owned(), "5".to_owned())];
    let (q, _) = parse_query(ResourceType::OBSERVATION, &pairs, false).unwrap();
    let (pages, plans, settings) = f
        .store()
        .read(move |c| {
            let settings = "SELECT current_setting('plan_cache_mode'), current_setting('jit')";
            let before = match c.backend() {
                Backend::Sqlite => None,
                Backend::Postgres => c.query_one(settings, p![])?.map(|r| (r.text(0).unwrap(), r.text(1).unwrap())),
            };
            let mut pages = Vec::new();
            for _ in 0..8 {
                let page = search::search(c, &q, &search::Restriction::None)?;
                pages.push((page.entries.iter().map(|v| v.id.clone()).collect::<Vec<_>>(), page.total));
            }
            if c.backend() == Backend::Sqlite {
                return Ok((pages, None, None));
            }
            // The reader is this one connection (readers: 1): its prepared
            // statements, and its settings after the searches.
            let plans = c
                .query_one(
                    "SELECT COALESCE(SUM(generic_plans), 0)::bigint, COALESCE(SUM(custom_plans), 0)::bigint \
                     FROM pg_prepared_statements WHERE statement LIKE 'SELECT v.seq,%'",
                    p![],
                )?
                .unwrap();
            let after = c.query_one(settings, p![])?.map(|r| (r.text(0).unwrap(), r.text(1).unwrap()));
            Ok((pages, Some((plans.i64(0)?, plans.i64(1)?)), Some((before, after))))
        })
        .await
        .unwrap();
    let want: Vec<String> = (0..30).filter(|i| i % 3 != 0).take(5).map(|i| format!("o{i:02}")).collect();
    for (ids, total) in &pages {
        assert_eq!(ids, &want, "the first page, in id order");
        assert_eq!(*total, Some(20), "p1's twenty Observations");
    }
    if b == Backend::Postgres {
        let (generic, custom) = plans.unwrap();
        assert_eq!(generic, 0, "no page was run with a generic plan");
        assert!(custom >= 8, "each page planned for its values: {custom} custom plans");
        let (before, after) = settings.unwrap();
        assert!(before.is_some());
        assert_eq!(before, after, "the connection's settings are restored");
    }
}
