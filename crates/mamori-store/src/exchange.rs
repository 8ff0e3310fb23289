//! The partner registry, the exchange ledger (messages and their hops),
//! the outbox, received documents and the quarantine.

use mamori_core::time::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, Row};

// ---- partners ---------------------------------------------------------------------------

/// A partner's registration in force (a row of `partners`).
#[derive(Debug, Clone, Serialize)]
pub struct PartnerRow {
    /// The partner's id.
    pub id: String,
    /// The registration's version, from 1; every change adds one.
    pub version: i64,
    /// The partner's AS2 identifier (`AS2-From`/`AS2-To`); unique.
    pub as2_id: String,
    /// `active` or `suspended`.
    pub status: String,
    /// The registration itself, as JSON text.
    pub doc: String,
    /// Who made the last change.
    pub updated_by: String,
    /// When the last change was made.
    pub updated_at: Timestamp,
}

const PARTNER_COLS: &str = "id, version, as2_id, status, doc, updated_by, updated_at";

fn partner_row(r: &Row) -> Result<PartnerRow> {
    Ok(PartnerRow {
        id: r.text(0)?,
        version: r.i64(1)?,
        as2_id: r.text(2)?,
        status: r.text(3)?,
        doc: r.text(4)?,
        updated_by: r.text(5)?,
        updated_at: Timestamp(r.i64(6)?),
    })
}

/// The registration of partner `id`.
pub fn partner(c: &mut dyn Conn, id: &str) -> Result<Option<PartnerRow>> {
    c.query_one(&format!("SELECT {PARTNER_COLS} FROM partners WHERE id = $1"), p![id])?
        .map(|r| partner_row(&r))
        .transpose()
}

/// The partner registered with this AS2 identifier.
pub fn partner_by_as2(c: &mut dyn Conn, as2_id: &str) -> Result<Option<PartnerRow>> {
    c.query_one(&format!("SELECT {PARTNER_COLS} FROM partners WHERE as2_id = $1"), p![as2_id])?
        .map(|r| partner_row(&r))
        .transpose()
}

/// Every partner, by id.
pub fn partners(c: &mut dyn Conn) -> Result<Vec<PartnerRow>> {
    c.query(&format!("SELECT {PARTNER_COLS} FROM partners ORDER BY id"), p![])?.iter().map(partner_row).collect()
}

/// A registration as it was at `version`.
pub fn partner_version(c: &mut dyn Conn, id: &str, version: i64) -> Result<Option<String>> {
    Ok(c.query_one("SELECT doc FROM partner_versions WHERE id = $1 AND version = $2", p![id, version])?
        .map(|r| r.text(0))
        .transpose()?)
}

/// Registers a partner or records a new version of its registration.
/// `expected` is the version the caller saw (optimistic locking).
#[allow(clippy::too_many_arguments)]
pub fn put_partner(
    c: &mut dyn Conn,
    id: &str,
    as2_id: &str,
    status: &str,
    doc: &str,
    expected: Option<i64>,
    by: &str,
    note: Option<&str>,
    now: Timestamp,
) -> Result<i64> {
    let cur = partner(c, id)?;
    if let Some(exp) = expected {
        let v = cur.as_ref().map_or(0, |p| p.version);
        if v != exp {
            return Err(StoreError::VersionConflict { expected: exp as u64, current: v as u64 });
        }
    }
    if let Some(other) = partner_by_as2(c, as2_id)? {
        if other.id != id {
            return Err(StoreError::Duplicate(format!(
                "AS2 id '{as2_id}' is already registered for partner {}",
                other.id
            )));
        }
    }
    let version = cur.as_ref().map_or(1, |p| p.version + 1);
    if cur.is_some() {
        c.exec(
            "UPDATE partners SET version = $2, as2_id = $3, status = $4, doc = $5, updated_by = $6, updated_at = $7 WHERE id = $1",
            p![id, version, as2_id, status, doc, by, now.micros()],
        )?;
    } else {
        c.exec(
            "INSERT INTO partners (id, version, as2_id, status, doc, updated_by, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            p![id, version, as2_id, status, doc, by, now.micros()],
        )?;
    }
    c.exec(
        "INSERT INTO partner_versions (id, version, doc, by_user, at, note) VALUES ($1, $2, $3, $4, $5, $6)",
        p![id, version, doc, by, now.micros(), note],
    )?;
    Ok(version)
}

// ---- messages ---------------------------------------------------------------------------

/// One AS2 message of the exchange ledger, either direction.
#[derive(Debug, Clone, Serialize, Default)]
pub struct MessageRow {
    /// mamori's id of the message (a UUIDv7).
    pub id: String,
    /// `out` (sent by mamori) or `in` (received).
    pub direction: String,
    /// `document`, or `mdn` for an asynchronous receipt mamori sends.
    pub kind: String,
    /// The AS2 Message-ID, without `<>`.
    pub message_id: String,
    /// The partner's id; empty when an inbound sender is unknown.
    pub partner: String,
    /// The version of the partner's registration in force at the time.
    pub partner_version: Option<i64>,
    /// Outbound: the send request the message belongs to.
    pub send_id: Option<String>,
    /// The patient whose information the message carries, if known.
    pub patient: Option<String>,
    /// Why the information was sent (a consent purpose name).
    pub purpose: Option<String>,
    /// Outbound: the recorded legal basis of the send (JSON).
    pub basis: Option<Value>,
    /// Where the message stands: outbound `queued`, `sending`, `retry`,
    /// `awaiting_mdn`, `delivered` or `failed`; inbound `stored` or `rejected`.
    pub state: String,
    /// The MIME type of the payload.
    pub content_type: Option<String>,
    /// The payload's SHA-256, in hex.
    pub payload_sha256: Option<String>,
    /// The payload's size in bytes.
    pub size: Option<i64>,
    /// The message integrity check the receipt must return
    /// (`<base64>, sha-256`).
    pub mic: Option<String>,
    /// The signature and encryption algorithms used (JSON).
    pub algorithms: Option<Value>,
    /// Delivery attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt: Option<Timestamp>,
    /// When an asynchronous MDN is overdue.
    pub deadline: Option<Timestamp>,
    /// The segment responsible for a failure (`sender`, `path`, `partner_tls`,
    /// `partner`).
    pub failure_segment: Option<String>,
    /// What failed.
    pub failure: Option<String>,
    /// The disposition of the MDN received or sent.
    pub mdn: Option<String>,
    /// Who created the row: the sending user; for inbound rows `partner:<id>`,
    /// `as2:<AS2-From>` or `system`.
    pub created_by: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

const MESSAGE_COLS: &str = "id, direction, kind, message_id, partner, partner_version, send_id, patient, purpose, basis, state, \
    content_type, payload_sha256, size, mic, algorithms, attempts, next_attempt, deadline, failure_segment, failure, mdn, \
    created_by, created_at, updated_at";

fn json_col(r: &Row, i: usize) -> Result<Option<Value>> {
    Ok(r.opt_text(i)?.and_then(|s| serde_json::from_str(&s).ok()))
}

fn message_row(r: &Row) -> Result<MessageRow> {
    Ok(MessageRow {
        id: r.text(0)?,
        direction: r.text(1)?,
        kind: r.text(2)?,
        message_id: r.text(3)?,
        partner: r.text(4)?,
        partner_version: r.opt_i64(5)?,
        send_id: r.opt_text(6)?,
        patient: r.opt_text(7)?,
        purpose: r.opt_text(8)?,
        basis: json_col(r, 9)?,
        state: r.text(10)?,
        content_type: r.opt_text(11)?,
        payload_sha256: r.opt_text(12)?,
        size: r.opt_i64(13)?,
        mic: r.opt_text(14)?,
        algorithms: json_col(r, 15)?,
        attempts: r.i64(16)?,
        next_attempt: r.opt_i64(17)?.map(Timestamp),
        deadline: r.opt_i64(18)?.map(Timestamp),
        failure_segment: r.opt_text(19)?,
        failure: r.opt_text(20)?,
        mdn: r.opt_text(21)?,
        created_by: r.text(22)?,
        created_at: Timestamp(r.i64(23)?),
        updated_at: Timestamp(r.i64(24)?),
    })
}

/// Inserts a message row (all fields as given).
pub fn insert_message(c: &mut dyn Conn, m: &MessageRow) -> Result<()> {
    let r = c.exec(
        &format!(
            "INSERT INTO exchange_messages ({MESSAGE_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25)"
        ),
        p![
            m.id.as_str(),
            m.direction.as_str(),
            m.kind.as_str(),
            m.message_id.as_str(),
            m.partner.as_str(),
            m.partner_version,
            m.send_id.as_deref(),
            m.patient.as_deref(),
            m.purpose.as_deref(),
            m.basis.as_ref().map(Value::to_string),
            m.state.as_str(),
            m.content_type.as_deref(),
            m.payload_sha256.as_deref(),
            m.size,
            m.mic.as_deref(),
            m.algorithms.as_ref().map(Value::to_string),
            m.attempts,
            m.next_attempt.map(|t| t.micros()),
            m.deadline.map(|t| t.micros()),
            m.failure_segment.as_deref(),
            m.failure.as_deref(),
            m.mdn.as_deref(),
            m.created_by.as_str(),
            m.created_at.micros(),
            m.updated_at.micros()
        ],
    );
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("UNIQUE") => {
            Err(StoreError::Duplicate(format!("Message-ID {} with partner {}", m.message_id, m.partner)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The message with mamori's id `id`.
pub fn message(c: &mut dyn Conn, id: &str) -> Result<Option<MessageRow>> {
    c.query_one(&format!("SELECT {MESSAGE_COLS} FROM exchange_messages WHERE id = $1"), p![id])?
        .map(|r| message_row(&r))
        .transpose()
}

/// The live (not refused) message with this Message-ID from or to `partner`.
pub fn message_by_as2(
    c: &mut dyn Conn,
    direction: &str,
    partner: &str,
    message_id: &str,
) -> Result<Option<MessageRow>> {
    c.query_one(
        &format!(
            "SELECT {MESSAGE_COLS} FROM exchange_messages WHERE direction = $1 AND partner = $2 AND message_id = $3 AND state <> 'rejected'"
        ),
        p![direction, partner, message_id],
    )?
    .map(|r| message_row(&r))
    .transpose()
}

/// Filters for listing the ledger.
#[derive(Debug, Clone, Default)]
pub struct MessageQuery {
    /// Only this direction (`out` or `in`).
    pub direction: Option<String>,
    /// Only messages with this partner.
    pub partner: Option<String>,
    /// Only messages about this patient.
    pub patient: Option<String>,
    /// Only messages in this state.
    pub state: Option<String>,
    /// Only the messages of this send request.
    pub send_id: Option<String>,
    /// Only messages created by this user.
    pub created_by: Option<String>,
    /// Created at or after this time.
    pub from: Option<Timestamp>,
    /// Created before this time.
    pub to: Option<Timestamp>,
    /// The most rows to return (1 to 100 000).
    pub limit: usize,
}

/// The ledger rows matching `q`, newest first.
pub fn messages(c: &mut dyn Conn, q: &MessageQuery) -> Result<Vec<MessageRow>> {
    c.query(
        &format!(
            "SELECT {MESSAGE_COLS} FROM exchange_messages WHERE (CAST($1 AS TEXT) IS NULL OR direction = $1) AND (CAST($2 AS TEXT) IS NULL OR partner = $2) \
             AND (CAST($3 AS TEXT) IS NULL OR patient = $3) AND (CAST($4 AS TEXT) IS NULL OR state = $4) AND (CAST($5 AS TEXT) IS NULL OR send_id = $5) \
             AND (CAST($6 AS BIGINT) IS NULL OR created_at >= $6) AND (CAST($7 AS BIGINT) IS NULL OR created_at < $7) AND (CAST($9 AS TEXT) IS NULL OR created_by = $9) \
             ORDER BY created_at DESC, id DESC LIMIT $8"
        ),
        p![
            q.direction.as_deref(),
            q.partner.as_deref(),
            q.patient.as_deref(),
            q.state.as_deref(),
            q.send_id.as_deref(),
            q.from.map(|t| t.micros()),
            q.to.map(|t| t.micros()),
            q.limit.clamp(1, 100_000),
            q.created_by.as_deref()
        ],
    )?
    .iter()
    .map(message_row)
    .collect()
}

/// Outbound messages due for an attempt.
pub fn due_outbound(c: &mut dyn Conn, now: Timestamp, limit: usize) -> Result<Vec<MessageRow>> {
    c.query(
        &format!(
            "SELECT {MESSAGE_COLS} FROM exchange_messages WHERE state IN ('queued', 'retry') AND next_attempt <= $1 AND direction = 'out' ORDER BY next_attempt LIMIT $2"
        ),
        p![now.micros(), limit],
    )?
    .iter()
    .map(message_row)
    .collect()
}

/// Outbound messages waiting for an asynchronous MDN past their deadline.
pub fn overdue_mdns(c: &mut dyn Conn, now: Timestamp) -> Result<Vec<MessageRow>> {
    c.query(
        &format!(
            "SELECT {MESSAGE_COLS} FROM exchange_messages WHERE state = 'awaiting_mdn' AND deadline <= $1 AND direction = 'out'"
        ),
        p![now.micros()],
    )?
    .iter()
    .map(message_row)
    .collect()
}

/// Messages a crash left in the middle of an attempt: attempted again,
/// under the same Message-ID (the partner's duplicate check and the MIC
/// in its receipt settle whether the first attempt arrived).
pub fn recover_interrupted(c: &mut dyn Conn, now: Timestamp) -> Result<usize> {
    Ok(c.exec(
        "UPDATE exchange_messages SET state = 'retry', next_attempt = $1, updated_at = $1 WHERE state = 'sending' AND direction = 'out'",
        p![now.micros()],
    )?)
}

/// Updates the mutable fields of a message.
pub fn update_message(c: &mut dyn Conn, m: &MessageRow, now: Timestamp) -> Result<()> {
    c.exec(
        "UPDATE exchange_messages SET state = $2, attempts = $3, next_attempt = $4, deadline = $5, failure_segment = $6, \
         failure = $7, mdn = $8, mic = $9, updated_at = $10 WHERE id = $1",
        p![
            m.id.as_str(),
            m.state.as_str(),
            m.attempts,
            m.next_attempt.map(|t| t.micros()),
            m.deadline.map(|t| t.micros()),
            m.failure_segment.as_deref(),
            m.failure.as_deref(),
            m.mdn.as_deref(),
            m.mic.as_deref(),
            now.micros()
        ],
    )?;
    Ok(())
}

// ---- hops -------------------------------------------------------------------------------

/// One hop of a message: a step and whose responsibility it was then.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// Its position in the message's path, from 1.
    pub seq: i64,
    /// When it happened.
    pub at: Timestamp,
    /// The step (`signed`, `handed_to_network`, `mdn_verified`, `delivered`, ...).
    pub hop: String,
    /// Who was responsible then: `sender`, `path`, `receiver`, a partner id, ...
    pub party: String,
    /// Further detail (JSON).
    pub detail: Option<Value>,
}

/// Records the next hop of `message`.
pub fn add_hop(c: &mut dyn Conn, message: &str, hop: &str, party: &str, detail: &Value, now: Timestamp) -> Result<()> {
    c.exec(
        "INSERT INTO exchange_hops (message, seq, at, hop, party, detail) \
         VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM exchange_hops WHERE message = $1), $2, $3, $4, $5)",
        p![message, now.micros(), hop, party, detail.to_string()],
    )?;
    Ok(())
}

/// The hops of `message`, in order.
pub fn hops(c: &mut dyn Conn, message: &str) -> Result<Vec<Hop>> {
    c.query("SELECT seq, at, hop, party, detail FROM exchange_hops WHERE message = $1 ORDER BY seq", p![message])?
        .iter()
        .map(|r| {
            Ok(Hop {
                seq: r.i64(0)?,
                at: Timestamp(r.i64(1)?),
                hop: r.text(2)?,
                party: r.text(3)?,
                detail: json_col(r, 4)?,
            })
        })
        .collect()
}

// ---- outbox -----------------------------------------------------------------------------

/// Queues a body for delivery (to `url`, or the partner's endpoint).
pub fn outbox_put(
    c: &mut dyn Conn,
    message: &str,
    url: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<()> {
    let h = serde_json::to_string(headers).map_err(|e| StoreError::Internal(e.to_string()))?;
    c.exec(
        "INSERT INTO exchange_outbox (message, url, headers, body) VALUES ($1, $2, $3, $4)",
        p![message, url, h, body],
    )?;
    Ok(())
}

/// A queued body: its URL (if not the partner's endpoint), headers, bytes.
pub struct Queued {
    /// The URL to send to; `None` for the partner's registered endpoint.
    pub url: Option<String>,
    /// The HTTP headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body, already signed and encrypted for the recipient.
    pub body: Vec<u8>,
}

/// The queued body of `message`, if it is still queued.
pub fn outbox_get(c: &mut dyn Conn, message: &str) -> Result<Option<Queued>> {
    match c.query_one("SELECT url, headers, body FROM exchange_outbox WHERE message = $1", p![message])? {
        None => Ok(None),
        Some(r) => {
            let headers: Vec<(String, String)> =
                serde_json::from_str(&r.text(1)?).map_err(|e| StoreError::Internal(e.to_string()))?;
            Ok(Some(Queued { url: r.opt_text(0)?, headers, body: r.blob(2)? }))
        }
    }
}

/// Removes the queued body of `message` (the send ended).
pub fn outbox_delete(c: &mut dyn Conn, message: &str) -> Result<()> {
    c.exec("DELETE FROM exchange_outbox WHERE message = $1", p![message])?;
    Ok(())
}

// ---- inbound documents ------------------------------------------------------------------

/// A verified inbound document and the record it went into.
#[derive(Debug, Clone, Serialize)]
pub struct Inbound {
    /// The ledger id of the message that carried it.
    pub message: String,
    /// `unmatched` until someone files it into a patient's record, then
    /// `matched`.
    pub state: String,
    /// The patient it was filed under.
    pub patient: Option<String>,
    /// The DocumentReference it was filed as (`DocumentReference/<id>`).
    pub document: Option<String>,
    /// Who filed it.
    pub matched_by: Option<String>,
    /// When it was filed.
    pub matched_at: Option<Timestamp>,
    /// What the document says about its patient (JSON), for matching.
    pub summary: Value,
    /// The document's bytes (empty unless asked for).
    #[serde(skip)]
    pub payload: Vec<u8>,
}

fn inbound_row(r: &Row) -> Result<Inbound> {
    Ok(Inbound {
        message: r.text(0)?,
        state: r.text(1)?,
        patient: r.opt_text(2)?,
        document: r.opt_text(3)?,
        matched_by: r.opt_text(4)?,
        matched_at: r.opt_i64(5)?.map(Timestamp),
        summary: json_col(r, 6)?.unwrap_or(Value::Null),
        payload: r.opt_blob(7)?.unwrap_or_default(),
    })
}

/// Stores a verified inbound document, unmatched.
pub fn insert_inbound(c: &mut dyn Conn, message: &str, payload: &[u8], summary: &Value) -> Result<()> {
    c.exec(
        "INSERT INTO exchange_inbound (message, payload, state, summary) VALUES ($1, $2, 'unmatched', $3)",
        p![message, payload, summary.to_string()],
    )?;
    Ok(())
}

/// The inbound document of `message`, with its bytes if `with_payload`.
pub fn inbound(c: &mut dyn Conn, message: &str, with_payload: bool) -> Result<Option<Inbound>> {
    let payload = if with_payload { "payload" } else { "NULL" };
    c.query_one(
        &format!(
            "SELECT message, state, patient, document, matched_by, matched_at, summary, {payload} FROM exchange_inbound WHERE message = $1"
        ),
        p![message],
    )?
    .map(|r| inbound_row(&r))
    .transpose()
}

/// The newest `limit` inbound documents, optionally only those in one state
/// (without their bytes).
pub fn inbound_list(c: &mut dyn Conn, state: Option<&str>, limit: usize) -> Result<Vec<Inbound>> {
    c.query(
        "SELECT message, state, patient, document, matched_by, matched_at, summary, NULL FROM exchange_inbound \
         WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) ORDER BY message DESC LIMIT $2",
        p![state, limit],
    )?
    .iter()
    .map(inbound_row)
    .collect()
}

/// Records that an inbound document went into `patient`'s record.
pub fn mark_matched(
    c: &mut dyn Conn,
    message: &str,
    patient: &str,
    document: &str,
    by: &str,
    now: Timestamp,
) -> Result<bool> {
    Ok(c.exec(
        "UPDATE exchange_inbound SET state = 'matched', patient = $2, document = $3, matched_by = $4, matched_at = $5 \
         WHERE message = $1 AND state = 'unmatched'",
        p![message, patient, document, by, now.micros()],
    )? > 0)
}

// ---- quarantine -------------------------------------------------------------------------

/// An inbound message that failed verification, kept apart from clinical
/// data.
#[derive(Debug, Clone, Serialize)]
pub struct Quarantined {
    /// Its number.
    pub id: i64,
    /// The ledger id, if the message got one.
    pub message: Option<String>,
    /// When it arrived.
    pub at: Timestamp,
    /// The fingerprint of the sender's TLS client certificate.
    pub peer: Option<String>,
    /// The `AS2-From` it claimed.
    pub claimed_from: Option<String>,
    /// The AS2 Message-ID it claimed.
    pub message_id: Option<String>,
    /// Why it was refused.
    pub reason: String,
    /// The disposition returned in the MDN, if one was sent.
    pub disposition: Option<String>,
    /// The HTTP headers received (JSON).
    pub headers: Value,
    /// The size of the kept body in bytes, if kept.
    pub size: Option<i64>,
}

/// Keeps a refused inbound message in the quarantine; returns its number.
#[allow(clippy::too_many_arguments)]
pub fn quarantine(
    c: &mut dyn Conn,
    message: Option<&str>,
    peer: Option<&str>,
    claimed_from: Option<&str>,
    message_id: Option<&str>,
    reason: &str,
    disposition: Option<&str>,
    headers: &Value,
    body: Option<&[u8]>,
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO exchange_quarantine (message, at, peer, claimed_from, message_id, reason, disposition, headers, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
            p![message, now.micros(), peer, claimed_from, message_id, reason, disposition, headers.to_string(), body],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// The newest `limit` quarantined messages (without their bodies).
pub fn quarantined(c: &mut dyn Conn, limit: usize) -> Result<Vec<Quarantined>> {
    c.query(
        "SELECT id, message, at, peer, claimed_from, message_id, reason, disposition, headers, length(body) \
         FROM exchange_quarantine ORDER BY id DESC LIMIT $1",
        p![limit],
    )?
    .iter()
    .map(|r| {
        Ok(Quarantined {
            id: r.i64(0)?,
            message: r.opt_text(1)?,
            at: Timestamp(r.i64(2)?),
            peer: r.opt_text(3)?,
            claimed_from: r.opt_text(4)?,
            message_id: r.opt_text(5)?,
            reason: r.text(6)?,
            disposition: r.opt_text(7)?,
            headers: json_col(r, 8)?.unwrap_or(Value::Null),
            size: r.opt_i64(9)?,
        })
    })
    .collect()
}
