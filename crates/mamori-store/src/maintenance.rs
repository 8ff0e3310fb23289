//! Vendors, maintenance people and their certificates, maintenance
//! windows (requests), sessions, reviews.

use mamori_core::time::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, Row};

fn json_col(r: &Row, i: usize) -> Result<Value> {
    Ok(r.opt_text(i)?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null))
}

#[derive(Debug, Clone, Serialize)]
pub struct Vendor {
    pub id: String,
    pub name: String,
    pub contact: String,
    pub created: Timestamp,
    pub created_by: String,
}

pub fn insert_vendor(c: &mut dyn Conn, v: &Vendor) -> Result<()> {
    c.exec(
        "INSERT INTO maint_vendors (id, name, contact, created, created_by) VALUES ($1, $2, $3, $4, $5)",
        p![v.id.as_str(), v.name.as_str(), v.contact.as_str(), v.created.micros(), v.created_by.as_str()],
    )
    .map_err(|e| match e {
        crate::sql::DbError::Unique(_) => StoreError::Duplicate(format!("vendor {}", v.id)),
        other => other.into(),
    })?;
    Ok(())
}

pub fn vendors(c: &mut dyn Conn) -> Result<Vec<Vendor>> {
    c.query("SELECT id, name, contact, created, created_by FROM maint_vendors ORDER BY id", p![])?
        .iter()
        .map(|r| {
            Ok(Vendor {
                id: r.text(0)?,
                name: r.text(1)?,
                contact: r.text(2)?,
                created: Timestamp(r.i64(3)?),
                created_by: r.text(4)?,
            })
        })
        .collect()
}

pub fn vendor(c: &mut dyn Conn, id: &str) -> Result<Option<Vendor>> {
    Ok(vendors(c)?.into_iter().find(|v| v.id == id))
}

#[derive(Debug, Clone, Serialize)]
pub struct Person {
    pub id: String,
    pub vendor: String,
    pub display: String,
    pub state: String,
    #[serde(skip)]
    pub totp_secret: Vec<u8>,
    #[serde(skip)]
    pub totp_last_step: Option<i64>,
    pub sources: Value,
    pub cert_sha256: String,
    pub created: Timestamp,
    pub created_by: String,
    pub left_at: Option<Timestamp>,
    pub last_used: Option<Timestamp>,
}

const PERSON_COLS: &str =
    "id, vendor, display, state, totp_secret, totp_last_step, sources, cert_sha256, created, created_by, left_at, last_used";

fn person_row(r: &Row) -> Result<Person> {
    Ok(Person {
        id: r.text(0)?,
        vendor: r.text(1)?,
        display: r.text(2)?,
        state: r.text(3)?,
        totp_secret: r.blob(4)?,
        totp_last_step: r.opt_i64(5)?,
        sources: json_col(r, 6)?,
        cert_sha256: r.text(7)?,
        created: Timestamp(r.i64(8)?),
        created_by: r.text(9)?,
        left_at: r.opt_i64(10)?.map(Timestamp),
        last_used: r.opt_i64(11)?.map(Timestamp),
    })
}

pub fn insert_person(c: &mut dyn Conn, p: &Person) -> Result<()> {
    c.exec(
        &format!(
            "INSERT INTO maint_people ({PERSON_COLS}) VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, NULL, NULL)"
        ),
        p![
            p.id.as_str(),
            p.vendor.as_str(),
            p.display.as_str(),
            p.state.as_str(),
            p.totp_secret.as_slice(),
            p.sources.to_string(),
            p.cert_sha256.as_str(),
            p.created.micros(),
            p.created_by.as_str()
        ],
    )
    .map_err(|e| match e {
        crate::sql::DbError::Unique(_) => StoreError::Duplicate(format!("maintenance person {}", p.id)),
        other => other.into(),
    })?;
    Ok(())
}

pub fn person(c: &mut dyn Conn, id: &str) -> Result<Option<Person>> {
    c.query_one(&format!("SELECT {PERSON_COLS} FROM maint_people WHERE id = $1"), p![id])?
        .map(|r| person_row(&r))
        .transpose()
}

pub fn person_by_cert(c: &mut dyn Conn, sha256: &str) -> Result<Option<Person>> {
    c.query_one(&format!("SELECT {PERSON_COLS} FROM maint_people WHERE cert_sha256 = $1"), p![sha256])?
        .map(|r| person_row(&r))
        .transpose()
}

pub fn people(c: &mut dyn Conn) -> Result<Vec<Person>> {
    c.query(&format!("SELECT {PERSON_COLS} FROM maint_people ORDER BY vendor, id"), p![])?
        .iter()
        .map(person_row)
        .collect()
}

pub fn set_person_cert(c: &mut dyn Conn, id: &str, sha256: &str) -> Result<()> {
    c.exec("UPDATE maint_people SET cert_sha256 = $2 WHERE id = $1", p![id, sha256])?;
    Ok(())
}

pub fn mark_left(c: &mut dyn Conn, id: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE maint_people SET state = 'left', left_at = $2 WHERE id = $1 AND state = 'active'",
        p![id, now.micros()],
    )? > 0)
}

pub fn touch(c: &mut dyn Conn, id: &str, totp_step: Option<i64>, now: Timestamp) -> Result<()> {
    c.exec(
        "UPDATE maint_people SET last_used = $2, totp_last_step = COALESCE($3, totp_last_step) WHERE id = $1",
        p![id, now.micros(), totp_step],
    )?;
    Ok(())
}

pub fn insert_cert(
    c: &mut dyn Conn,
    sha256: &str,
    person: &str,
    serial: &str,
    not_after: i64,
    now: Timestamp,
) -> Result<()> {
    c.exec(
        "INSERT INTO maint_certs (sha256, person, serial, not_after, issued) VALUES ($1, $2, $3, $4, $5)",
        p![sha256, person, serial, not_after, now.micros()],
    )?;
    Ok(())
}

/// (not_after seconds, revoked) of a certificate we issued.
pub fn cert(c: &mut dyn Conn, sha256: &str) -> Result<Option<(i64, bool)>> {
    c.query_one("SELECT not_after, revoked_at IS NOT NULL FROM maint_certs WHERE sha256 = $1", p![sha256])?
        .map(|r| Ok((r.i64(0)?, r.bool(1)?)))
        .transpose()
}

pub fn revoke_certs(c: &mut dyn Conn, person: &str, by: &str, now: Timestamp) -> Result<usize> {
    Ok(c.exec(
        "UPDATE maint_certs SET revoked_at = $2, revoked_by = $3 WHERE person = $1 AND revoked_at IS NULL",
        p![person, now.micros(), by],
    )?)
}

#[derive(Debug, Clone, Serialize)]
pub struct Request {
    pub id: i64,
    pub person: String,
    pub reason: String,
    pub scopes: Value,
    pub start: Timestamp,
    pub end: Timestamp,
    pub emergency: bool,
    pub state: String,
    pub requested_by: String,
    pub requested_at: Timestamp,
    pub approvals: Value,
    pub needed: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<Timestamp>,
    pub decision_note: Option<String>,
    pub closed_at: Option<Timestamp>,
    pub summary: Value,
    pub review: Option<String>,
    pub review_due: Option<Timestamp>,
    pub reviewed_by: Option<String>,
    pub reviewed_at: Option<Timestamp>,
    pub review_note: Option<String>,
}

const REQ_COLS: &str = "id, person, reason, scopes, start, end_at, emergency, state, requested_by, requested_at, approvals, needed, \
    decided_by, decided_at, decision_note, closed_at, summary, review, review_due, reviewed_by, reviewed_at, review_note";

fn req_row(r: &Row) -> Result<Request> {
    Ok(Request {
        id: r.i64(0)?,
        person: r.text(1)?,
        reason: r.text(2)?,
        scopes: json_col(r, 3)?,
        start: Timestamp(r.i64(4)?),
        end: Timestamp(r.i64(5)?),
        emergency: r.bool(6)?,
        state: r.text(7)?,
        requested_by: r.text(8)?,
        requested_at: Timestamp(r.i64(9)?),
        approvals: json_col(r, 10)?,
        needed: r.i64(11)?,
        decided_by: r.opt_text(12)?,
        decided_at: r.opt_i64(13)?.map(Timestamp),
        decision_note: r.opt_text(14)?,
        closed_at: r.opt_i64(15)?.map(Timestamp),
        summary: json_col(r, 16)?,
        review: r.opt_text(17)?,
        review_due: r.opt_i64(18)?.map(Timestamp),
        reviewed_by: r.opt_text(19)?,
        reviewed_at: r.opt_i64(20)?.map(Timestamp),
        review_note: r.opt_text(21)?,
    })
}

#[allow(clippy::too_many_arguments)]
pub fn insert_request(
    c: &mut dyn Conn,
    person: &str,
    reason: &str,
    scopes: &Value,
    start: Timestamp,
    end: Timestamp,
    emergency: bool,
    needed: i64,
    by: &str,
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO maint_requests (person, reason, scopes, start, end_at, emergency, state, requested_by, requested_at, approvals, needed) \
             VALUES ($1, $2, $3, $4, $5, $6, 'requested', $7, $8, '[]', $9) RETURNING id",
            p![person, reason, scopes.to_string(), start.micros(), end.micros(), emergency, by, now.micros(), needed],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

pub fn request(c: &mut dyn Conn, id: i64) -> Result<Option<Request>> {
    c.query_one(&format!("SELECT {REQ_COLS} FROM maint_requests WHERE id = $1"), p![id])?
        .map(|r| req_row(&r))
        .transpose()
}

pub fn requests(c: &mut dyn Conn, state: Option<&str>, review: Option<&str>, limit: usize) -> Result<Vec<Request>> {
    c.query(
        &format!("SELECT {REQ_COLS} FROM maint_requests WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) AND (CAST($2 AS TEXT) IS NULL OR review = $2) ORDER BY id DESC LIMIT $3"),
        p![state, review, limit],
    )?
    .iter()
    .map(req_row)
    .collect()
}

pub fn set_approvals(c: &mut dyn Conn, id: i64, approvals: &Value) -> Result<()> {
    c.exec("UPDATE maint_requests SET approvals = $2 WHERE id = $1", p![id, approvals.to_string()])?;
    Ok(())
}

pub fn decide(c: &mut dyn Conn, id: i64, state: &str, by: &str, note: Option<&str>, now: Timestamp) -> Result<()> {
    c.exec(
        "UPDATE maint_requests SET state = $2, decided_by = $3, decided_at = $4, decision_note = $5 WHERE id = $1",
        p![id, state, by, now.micros(), note],
    )?;
    Ok(())
}

/// Approved windows whose end has passed, and revoked ones not yet closed out.
pub fn to_close(c: &mut dyn Conn, now: Timestamp) -> Result<Vec<Request>> {
    c.query(
        &format!("SELECT {REQ_COLS} FROM maint_requests WHERE (state = 'approved' AND end_at <= $1) OR (state = 'revoked' AND closed_at IS NULL)"),
        p![now.micros()],
    )?
    .iter()
    .map(req_row)
    .collect()
}

pub fn close(
    c: &mut dyn Conn,
    id: i64,
    state: &str,
    summary: &Value,
    review_due: Timestamp,
    now: Timestamp,
) -> Result<()> {
    c.exec(
        "UPDATE maint_requests SET state = $2, closed_at = $3, summary = $4, review = 'pending', review_due = $5 WHERE id = $1",
        p![id, state, now.micros(), summary.to_string(), review_due.micros()],
    )?;
    Ok(())
}

pub fn review(c: &mut dyn Conn, id: i64, outcome: &str, by: &str, note: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE maint_requests SET review = $2, reviewed_by = $3, reviewed_at = $4, review_note = $5 WHERE id = $1 AND review = 'pending'",
        p![id, outcome, by, now.micros(), note],
    )? > 0)
}

/// Pending reviews past due not yet reported.
pub fn overdue(c: &mut dyn Conn, now: Timestamp) -> Result<Vec<Request>> {
    c.query(
        &format!("SELECT {REQ_COLS} FROM maint_requests WHERE review = 'pending' AND review_due <= $1 AND overdue_reported = 0"),
        p![now.micros()],
    )?
    .iter()
    .map(req_row)
    .collect()
}

pub fn mark_overdue_reported(c: &mut dyn Conn, id: i64) -> Result<()> {
    c.exec("UPDATE maint_requests SET overdue_reported = 1 WHERE id = $1", p![id])?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub request: i64,
    pub person: String,
    pub cert_sha256: String,
    pub address: Option<String>,
    pub started: Timestamp,
    pub expires: Timestamp,
    pub ended: Option<Timestamp>,
    pub end_reason: Option<String>,
}

pub fn insert_session(c: &mut dyn Conn, hash: &[u8], s: &Session) -> Result<()> {
    c.exec(
        "INSERT INTO maint_sessions (token_hash, request, person, cert_sha256, address, started, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        p![hash, s.request, s.person.as_str(), s.cert_sha256.as_str(), s.address.as_deref(), s.started.micros(), s.expires.micros()],
    )?;
    Ok(())
}

pub fn session(c: &mut dyn Conn, hash: &[u8]) -> Result<Option<Session>> {
    c.query_one(
        "SELECT request, person, cert_sha256, address, started, expires, ended, end_reason FROM maint_sessions WHERE token_hash = $1",
        p![hash],
    )?
    .map(|r| {
        Ok(Session {
            request: r.i64(0)?,
            person: r.text(1)?,
            cert_sha256: r.text(2)?,
            address: r.opt_text(3)?,
            started: Timestamp(r.i64(4)?),
            expires: Timestamp(r.i64(5)?),
            ended: r.opt_i64(6)?.map(Timestamp),
            end_reason: r.opt_text(7)?,
        })
    })
    .transpose()
}

pub fn sessions_of(c: &mut dyn Conn, request: i64) -> Result<Vec<Session>> {
    c.query(
        "SELECT request, person, cert_sha256, address, started, expires, ended, end_reason FROM maint_sessions WHERE request = $1 ORDER BY started",
        p![request],
    )?
    .iter()
    .map(|r| {
        Ok(Session {
            request: r.i64(0)?,
            person: r.text(1)?,
            cert_sha256: r.text(2)?,
            address: r.opt_text(3)?,
            started: Timestamp(r.i64(4)?),
            expires: Timestamp(r.i64(5)?),
            ended: r.opt_i64(6)?.map(Timestamp),
            end_reason: r.opt_text(7)?,
        })
    })
    .collect()
}

/// Ends the open sessions of a request (or of a person).
pub fn end_sessions(
    c: &mut dyn Conn,
    request: Option<i64>,
    person: Option<&str>,
    reason: &str,
    now: Timestamp,
) -> Result<usize> {
    Ok(c.exec(
        "UPDATE maint_sessions SET ended = $3, end_reason = $4 WHERE ended IS NULL AND (CAST($1 AS BIGINT) IS NULL OR request = $1) AND (CAST($2 AS TEXT) IS NULL OR person = $2)",
        p![request, person, now.micros(), reason],
    )?)
}
