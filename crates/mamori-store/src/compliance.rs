//! Compliance reports as they were signed, and the few facts the report
//! reads that no other module exposes (who changed the BCP plan, when).

use mamori_core::time::Timestamp;
use serde::Serialize;

use crate::p;
use crate::sql::Conn;
use crate::{Result, StoreError};

/// A stored report, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    /// Its number.
    pub id: i64,
    /// When it was made.
    pub created: Timestamp,
    /// Who made it (user name).
    pub created_by: String,
    /// The period it covers, from (inclusive).
    pub from: Timestamp,
    /// The period it covers, to (exclusive).
    pub to: Timestamp,
    /// Hex SHA-256 of its canonical form.
    pub sha256: String,
}

const COLUMNS: &str = "id, created_at, created_by, period_from, period_to, sha256";

fn row(r: &crate::sql::Row) -> Result<ReportRow> {
    Ok(ReportRow {
        id: r.i64(0)?,
        created: Timestamp(r.i64(1)?),
        created_by: r.text(2)?,
        from: Timestamp(r.i64(3)?),
        to: Timestamp(r.i64(4)?),
        sha256: r.text(5)?,
    })
}

/// Stores a signed report; returns its number.
pub fn insert(
    c: &mut dyn Conn,
    created: Timestamp,
    by: &str,
    period: (Timestamp, Timestamp),
    sha256: &str,
    body: &str,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO compliance_reports (created_at, created_by, period_from, period_to, sha256, body) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            p![created.micros(), by, period.0.micros(), period.1.micros(), sha256, body],
        )?
        .ok_or_else(|| StoreError::Internal("no report id".into()))?;
    Ok(r.i64(0)?)
}

/// A stored report and its signed body.
pub fn get(c: &mut dyn Conn, id: i64) -> Result<Option<(ReportRow, String)>> {
    let sql = format!("SELECT {COLUMNS}, body FROM compliance_reports WHERE id = $1");
    match c.query_one(&sql, p![id])? {
        Some(r) => Ok(Some((row(&r)?, r.text(6)?))),
        None => Ok(None),
    }
}

/// The stored report with this digest (hex SHA-256), if any.
pub fn by_digest(c: &mut dyn Conn, sha256: &str) -> Result<Option<ReportRow>> {
    let sql = format!("SELECT {COLUMNS} FROM compliance_reports WHERE sha256 = $1");
    c.query_one(&sql, p![sha256])?.map(|r| row(&r)).transpose()
}

/// The newest reports first.
pub fn list(c: &mut dyn Conn, limit: usize) -> Result<Vec<ReportRow>> {
    let sql = format!("SELECT {COLUMNS} FROM compliance_reports ORDER BY id DESC LIMIT $1");
    c.query(&sql, p![limit])?.iter().map(row).collect()
}

/// Who imported the plan in force and when (`None`: the built-in plan).
pub fn plan_imported(c: &mut dyn Conn) -> Result<Option<(i64, String, Timestamp)>> {
    let r =
        c.query_one("SELECT version, imported_by, imported_at FROM bcp_plans ORDER BY version DESC LIMIT 1", p![])?;
    r.map(|r| Ok((r.i64(0)?, r.text(1)?, Timestamp(r.i64(2)?)))).transpose()
}
