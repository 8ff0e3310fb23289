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

/// A maintenance vendor (a company whose people may maintain the system).
#[derive(Debug, Clone, Serialize)]
pub struct Vendor {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// How to reach it.
    pub contact: String,
    /// When it was registered.
    pub created: Timestamp,
    /// Who registered it.
    pub created_by: String,
}

/// Registers a vendor; `Duplicate` if the id is taken.
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

/// Every vendor, by id.
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

/// The vendor with this id.
pub fn vendor(c: &mut dyn Conn, id: &str) -> Result<Option<Vendor>> {
    Ok(vendors(c)?.into_iter().find(|v| v.id == id))
}

/// A maintenance person: one dedicated account of a vendor's employee.
#[derive(Debug, Clone, Serialize)]
pub struct Person {
    /// The person's id (their login on the maintenance listener).
    pub id: String,
    /// The vendor's id.
    pub vendor: String,
    /// The name shown to people.
    pub display: String,
    /// `active`, or `left` once they no longer work on the system.
    pub state: String,
    /// The TOTP secret of their second factor.
    #[serde(skip)]
    pub totp_secret: Vec<u8>,
    /// The last TOTP step accepted (a code is never accepted twice).
    #[serde(skip)]
    pub totp_last_step: Option<i64>,
    /// The network blocks they may connect from (JSON list of CIDR blocks).
    pub sources: Value,
    /// The SHA-256 fingerprint (hex) of their current client certificate.
    pub cert_sha256: String,
    /// When the account was created.
    pub created: Timestamp,
    /// Who created it.
    pub created_by: String,
    /// When they left.
    pub left_at: Option<Timestamp>,
    /// When they last used the maintenance listener.
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

/// Stores a new person; `Duplicate` if the id is taken.
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

/// The person with this id.
pub fn person(c: &mut dyn Conn, id: &str) -> Result<Option<Person>> {
    c.query_one(&format!("SELECT {PERSON_COLS} FROM maint_people WHERE id = $1"), p![id])?
        .map(|r| person_row(&r))
        .transpose()
}

/// The person whose current client certificate has this SHA-256 fingerprint.
pub fn person_by_cert(c: &mut dyn Conn, sha256: &str) -> Result<Option<Person>> {
    c.query_one(&format!("SELECT {PERSON_COLS} FROM maint_people WHERE cert_sha256 = $1"), p![sha256])?
        .map(|r| person_row(&r))
        .transpose()
}

/// Every person, by vendor and id.
pub fn people(c: &mut dyn Conn) -> Result<Vec<Person>> {
    c.query(&format!("SELECT {PERSON_COLS} FROM maint_people ORDER BY vendor, id"), p![])?
        .iter()
        .map(person_row)
        .collect()
}

/// Records a person's new current client certificate.
pub fn set_person_cert(c: &mut dyn Conn, id: &str, sha256: &str) -> Result<()> {
    c.exec("UPDATE maint_people SET cert_sha256 = $2 WHERE id = $1", p![id, sha256])?;
    Ok(())
}

/// Marks a person as left; `false` if they already were (or do not exist).
pub fn mark_left(c: &mut dyn Conn, id: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE maint_people SET state = 'left', left_at = $2 WHERE id = $1 AND state = 'active'",
        p![id, now.micros()],
    )? > 0)
}

/// Records a use of the maintenance listener, and the TOTP step accepted.
pub fn touch(c: &mut dyn Conn, id: &str, totp_step: Option<i64>, now: Timestamp) -> Result<()> {
    c.exec(
        "UPDATE maint_people SET last_used = $2, totp_last_step = COALESCE($3, totp_last_step), \
         totp_failures = CASE WHEN $3 IS NULL THEN totp_failures ELSE 0 END WHERE id = $1",
        p![id, now.micros(), totp_step],
    )?;
    Ok(())
}

/// Until when the person's second factor is locked after wrong codes.
pub fn totp_locked_until(c: &mut dyn Conn, id: &str) -> Result<Option<Timestamp>> {
    Ok(c.query_one("SELECT totp_locked_until FROM maint_people WHERE id = $1", p![id])?
        .map(|r| r.opt_i64(0))
        .transpose()?
        .flatten()
        .map(Timestamp))
}

/// Counts a wrong second-factor code; the `max`-th in a row locks the
/// second factor for `lock_secs` (and starts the count again). Returns
/// whether it is now locked.
pub fn totp_failure(c: &mut dyn Conn, id: &str, max: u32, lock_secs: i64, now: Timestamp) -> Result<bool> {
    c.exec("UPDATE maint_people SET totp_failures = totp_failures + 1 WHERE id = $1", p![id])?;
    let n = c
        .query_one("SELECT totp_failures FROM maint_people WHERE id = $1", p![id])?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0);
    if n >= i64::from(max) {
        c.exec(
            "UPDATE maint_people SET totp_failures = 0, totp_locked_until = $2 WHERE id = $1",
            p![id, now.plus_secs(lock_secs).micros()],
        )?;
        return Ok(true);
    }
    Ok(false)
}

/// Records a client certificate issued to `person` (`not_after` in seconds
/// since the epoch).
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

/// Revokes every certificate of `person`; returns how many were revoked.
pub fn revoke_certs(c: &mut dyn Conn, person: &str, by: &str, now: Timestamp) -> Result<usize> {
    Ok(c.exec(
        "UPDATE maint_certs SET revoked_at = $2, revoked_by = $3 WHERE person = $1 AND revoked_at IS NULL",
        p![person, now.micros(), by],
    )?)
}

/// A maintenance window asked for by or for a maintenance person.
#[derive(Debug, Clone, Serialize)]
pub struct Request {
    /// Its number.
    pub id: i64,
    /// The maintenance person's id.
    pub person: String,
    /// Why the window is needed.
    pub reason: String,
    /// What may be done in it (JSON list of scope names).
    pub scopes: Value,
    /// When the window opens.
    pub start: Timestamp,
    /// When the window closes.
    pub end: Timestamp,
    /// Asked for during an emergency (a BCP decider may approve it alone).
    pub emergency: bool,
    /// `requested`, `approved`, `rejected`, `revoked` or `closed`.
    pub state: String,
    /// Who asked (the person, or a staff user for them).
    pub requested_by: String,
    /// When it was asked.
    pub requested_at: Timestamp,
    /// The approvals so far (JSON list of `{by, at}`).
    pub approvals: Value,
    /// How many approvals it needs.
    pub needed: i64,
    /// Who approved, rejected or revoked it.
    pub decided_by: Option<String>,
    /// When that decision was made.
    pub decided_at: Option<Timestamp>,
    /// The note given with the decision.
    pub decision_note: Option<String>,
    /// When it was closed out.
    pub closed_at: Option<Timestamp>,
    /// What happened in the window (JSON), made when it was closed.
    pub summary: Value,
    /// The review's state: `pending`, `accepted` or `questioned`; `None`
    /// before the window was closed.
    pub review: Option<String>,
    /// When the review is due.
    pub review_due: Option<Timestamp>,
    /// Who reviewed it.
    pub reviewed_by: Option<String>,
    /// When it was reviewed.
    pub reviewed_at: Option<Timestamp>,
    /// The reviewer's note.
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

/// Records a new window request and returns its number.
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

/// The window request with this number.
pub fn request(c: &mut dyn Conn, id: i64) -> Result<Option<Request>> {
    c.query_one(&format!("SELECT {REQ_COLS} FROM maint_requests WHERE id = $1"), p![id])?
        .map(|r| req_row(&r))
        .transpose()
}

/// The newest `limit` requests, optionally in one state or review state.
pub fn requests(c: &mut dyn Conn, state: Option<&str>, review: Option<&str>, limit: usize) -> Result<Vec<Request>> {
    c.query(
        &format!("SELECT {REQ_COLS} FROM maint_requests WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) AND (CAST($2 AS TEXT) IS NULL OR review = $2) ORDER BY id DESC LIMIT $3"),
        p![state, review, limit],
    )?
    .iter()
    .map(req_row)
    .collect()
}

/// Replaces the list of approvals of a request.
pub fn set_approvals(c: &mut dyn Conn, id: i64, approvals: &Value) -> Result<()> {
    c.exec("UPDATE maint_requests SET approvals = $2 WHERE id = $1", p![id, approvals.to_string()])?;
    Ok(())
}

/// Records a decision on a request: its new state, by whom, with a note.
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

/// Closes out a window with its summary and opens its review, due at
/// `review_due`.
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

/// Records the review of a closed window; `false` if it was not pending.
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

/// Records that the overdue review was reported (so it is reported once).
pub fn mark_overdue_reported(c: &mut dyn Conn, id: i64) -> Result<()> {
    c.exec("UPDATE maint_requests SET overdue_reported = 1 WHERE id = $1", p![id])?;
    Ok(())
}

/// A session on the maintenance listener, within one approved window.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    /// The window's request number.
    pub request: i64,
    /// The maintenance person's id.
    pub person: String,
    /// The SHA-256 fingerprint (hex) of the client certificate used.
    pub cert_sha256: String,
    /// The client's network address.
    pub address: Option<String>,
    /// When the session started.
    pub started: Timestamp,
    /// When it expires.
    pub expires: Timestamp,
    /// When it ended early.
    pub ended: Option<Timestamp>,
    /// Why it ended (e.g. the window was revoked).
    pub end_reason: Option<String>,
}

/// Stores a session under the hash of its token.
pub fn insert_session(c: &mut dyn Conn, hash: &[u8], s: &Session) -> Result<()> {
    c.exec(
        "INSERT INTO maint_sessions (token_hash, request, person, cert_sha256, address, started, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        p![hash, s.request, s.person.as_str(), s.cert_sha256.as_str(), s.address.as_deref(), s.started.micros(), s.expires.micros()],
    )?;
    Ok(())
}

/// The session whose token has this hash.
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

/// The sessions of window `request`, oldest first.
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
