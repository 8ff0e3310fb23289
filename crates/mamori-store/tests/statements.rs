//! Cached statements stay compiled across writes: a lookup on a table
//! with a partial index must not be re-prepared each time its bound
//! values change (it was, on every FHIR write, before the connections
//! asked SQLite for value-independent plans).

use mamori_store::sql::Conn;
use rusqlite::StatementStatus;

const LOOKUP: &str = "SELECT r.version, v.patient FROM resources r JOIN resource_versions v ON v.seq = r.seq \
                      WHERE r.rtype = ?1 AND r.id = ?2";

#[test]
fn a_cached_lookup_is_not_recompiled_between_writes() {
    let dir = std::env::temp_dir().join(format!("mamori-stmt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = mamori_store::open_sqlite(&dir.join("db.sqlite"), mamori_store::Synchronous::Normal, false).unwrap();
    mamori_store::schema::migrate(&mut c).unwrap();
    c.batch("BEGIN IMMEDIATE").unwrap();
    for i in 0..20 {
        let id = format!("p{i}");
        {
            let mut st = c.prepare_cached(LOOKUP).unwrap();
            let mut rows = st.query(rusqlite::params!["Patient", id]).unwrap();
            assert!(rows.next().unwrap().is_none(), "not written yet");
        }
        // A write as `records::put` makes it (that function needs the
        // writer's audit state, which this test has no use for).
        let body = format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#);
        c.execute(
            "INSERT INTO resource_versions (rtype, id, version, last_updated, deleted, patient, author, body) \
             VALUES ('Patient', ?1, 1, 1, 0, ?1, 't', ?2)",
            rusqlite::params![id, body],
        )
        .unwrap();
        c.execute(
            "INSERT INTO resources (rtype, id, version, seq, last_updated, deleted, patient) \
             VALUES ('Patient', ?1, 1, last_insert_rowid(), 1, 0, ?1)",
            rusqlite::params![id],
        )
        .unwrap();
    }
    c.batch("COMMIT").unwrap();
    let st = c.prepare_cached(LOOKUP).unwrap();
    assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "the lookup was compiled again");
    drop(st);
    drop(c);
    // Best-effort cleanup of the temporary directory.
    std::fs::remove_dir_all(&dir).ok();
}
