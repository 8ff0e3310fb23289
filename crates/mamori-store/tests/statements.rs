//! Cached statements stay compiled across writes: a lookup on a table
//! with a partial index must not be re-prepared each time its bound
//! values change (it was, on every FHIR write, before the connections
//! asked SQLite for value-independent plans).

use mamori_core::ids::ResourceType;
use mamori_core::time::Timestamp;
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
        let body = serde_json::json!({"resourceType": "Patient", "name": [{"family": format!("f{i}")}]});
        mamori_store::records::put(&mut c, ResourceType::PATIENT, &id, body, None, "t", Timestamp(1)).unwrap();
    }
    c.batch("COMMIT").unwrap();
    let st = c.prepare_cached(LOOKUP).unwrap();
    assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "the lookup was compiled again");
    drop(st);
    drop(c);
    // Best-effort cleanup of the temporary directory.
    std::fs::remove_dir_all(&dir).ok();
}
