//! Moving an embedded SQLite store into PostgreSQL: every table, row for
//! row, in one transaction on the target, then the counts compared. The
//! caller verifies the audit log on the target afterwards.
//!
//! This module must never copy into a target that already holds data.

use rusqlite::types::ValueRef;

use crate::error::{Result, StoreError};
use crate::p;
use crate::schema;
use crate::sql::{Backend, Conn, Val};

/// Rows copied per table, in creation order.
pub type Counts = Vec<(String, u64)>;

fn ident(name: &str) -> Result<&str> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        Ok(name)
    } else {
        Err(StoreError::Internal(format!("unexpected table or column name {name:?}")))
    }
}

fn sq(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("SQLite: {e}"))
}

/// Tables of a SQLite store in creation order (dependencies first).
fn tables(src: &rusqlite::Connection) -> Result<Vec<String>> {
    let mut st = src
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")
        .map_err(sq)?;
    let names = st.query_map([], |r| r.get::<_, String>(0)).map_err(sq)?;
    names.map(|n| n.map_err(sq)).collect()
}

fn columns(src: &rusqlite::Connection, table: &str) -> Result<Vec<String>> {
    let mut st = src.prepare(&format!("PRAGMA table_info({})", ident(table)?)).map_err(sq)?;
    let cols = st.query_map([], |r| r.get::<_, String>(1)).map_err(sq)?;
    cols.map(|c| c.map_err(sq).and_then(|c| ident(&c).map(str::to_owned))).collect()
}

fn count(c: &mut dyn Conn, table: &str) -> Result<u64> {
    Ok(c.query_one(&format!("SELECT COUNT(*) FROM {}", ident(table)?), p![])?
        .map(|r| r.u64(0))
        .transpose()?
        .unwrap_or(0))
}

/// Copies the SQLite store `src` into the PostgreSQL database `dst`
/// (migrated here first). Refuses a target that holds records, accounts or
/// audit events. All or nothing: on any error the target is left as it was
/// (its schema aside). Gathers the planner's statistics at the end.
pub fn sqlite_to_postgres(src: &mut rusqlite::Connection, dst: &mut dyn Conn) -> Result<Counts> {
    if dst.backend() != Backend::Postgres {
        return Err(StoreError::Internal("the copy target must be PostgreSQL".into()));
    }
    let have = schema::current(src)?;
    if have != schema::latest(Backend::Sqlite) {
        return Err(StoreError::Unavailable(format!(
            "the SQLite database is at schema version {have}, this mamori at {}: run `mamori migrate` on it first",
            schema::latest(Backend::Sqlite)
        )));
    }
    schema::migrate(dst)?;
    for t in ["users", "resources", "audit_events"] {
        if count(dst, t)? > 0 {
            return Err(StoreError::Duplicate(format!(
                "the target database already holds data (table {t}); copy only into an empty database"
            )));
        }
    }
    let names = tables(src)?;
    // The writers' lock: no server writes to the target meanwhile.
    dst.batch("BEGIN IMMEDIATE")?;
    let copied = (|| -> Result<Counts> {
        let mut out = Vec::new();
        for t in &names {
            let cols = columns(src, t)?;
            let list = cols.join(", ");
            let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
            let insert = if t == "meta" {
                format!("INSERT INTO meta ({list}) VALUES ({}) ON CONFLICT (key) DO NOTHING", marks.join(", "))
            } else {
                format!("INSERT INTO {} ({list}) VALUES ({})", ident(t)?, marks.join(", "))
            };
            let mut st = src.prepare(&format!("SELECT {list} FROM {}", ident(t)?)).map_err(sq)?;
            let mut rows = st.query([]).map_err(sq)?;
            let mut n = 0u64;
            while let Some(r) = rows.next().map_err(sq)? {
                let mut vals: Vec<Val<'_>> = Vec::with_capacity(cols.len());
                for i in 0..cols.len() {
                    vals.push(match r.get_ref(i).map_err(sq)? {
                        ValueRef::Null => Val::Null,
                        ValueRef::Integer(v) => Val::Int(v),
                        ValueRef::Real(f) => Val::Int(f as i64),
                        ValueRef::Text(b) => Val::Text(String::from_utf8_lossy(b).into_owned().into()),
                        ValueRef::Blob(b) => Val::Blob(b.to_vec().into()),
                    });
                }
                dst.exec(&insert, &vals)?;
                n += 1;
            }
            out.push((t.clone(), n));
        }
        // Identity columns continue after the copied ids.
        let ids = dst.query(
            "SELECT table_name, column_name FROM information_schema.columns \
             WHERE table_schema = current_schema() AND is_identity = 'YES'",
            p![],
        )?;
        for r in ids {
            let (t, c) = (r.text(0)?, r.text(1)?);
            dst.query(
                &format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), (SELECT COALESCE(MAX({c}), 0) + 1 FROM {t}), false)",
                    c = ident(&c)?,
                    t = ident(&t)?
                ),
                p![t.as_str(), c.as_str()],
            )?;
        }
        Ok(out)
    })();
    match copied {
        Ok(counts) => {
            dst.batch("COMMIT")?;
            // Compare what is there now with the source.
            for (t, n) in &counts {
                let (s, d) = (count(src, t)?, count(dst, t)?);
                if t != "meta" && (s != *n || d != *n) {
                    return Err(StoreError::Internal(format!("table {t}: {s} rows in SQLite, {d} in PostgreSQL")));
                }
            }
            // The planner's statistics, before the first search: without
            // them every table is estimated at one row until autovacuum
            // gets to it, and broad searches choose plans that read all.
            // The copy is committed by now: a failure here is reported,
            // not made the copy's.
            if let Err(e) = dst.batch("ANALYZE") {
                tracing::warn!(error = %e, "cannot gather statistics after the copy; run ANALYZE on the target");
            }
            Ok(counts)
        }
        Err(e) => {
            // The copy's own error is the one to report.
            if let Err(r) = dst.batch("ROLLBACK") {
                tracing::debug!(error = %r, "cannot roll back the failed copy to PostgreSQL");
            }
            Err(e)
        }
    }
}
