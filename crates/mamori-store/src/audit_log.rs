//! The audit log in the database: appending events (and their Merkle nodes)
//! inside the writer's transaction, signing checkpoints, and reading proofs.
//!
//! Appends happen only through the group-commit writer, so the in-memory
//! frontier always matches the committed tree (it is rebuilt from the
//! database whenever the two could differ).

use mamori_audit::event::{AuditRecord, VersionDigest};
use mamori_audit::merkle::{self, Frontier, Hash, NodeId, NodeSource};
use mamori_audit::note::{Checkpoint, NoteSigner, NoteVerifier};
use mamori_audit::verify::{LogVerifier, Report};
use mamori_core::time::Timestamp;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Backend, CellRef, Conn, DbError, Val};

/// Size of the committed audit log.
pub fn size(c: &mut dyn Conn) -> Result<u64> {
    let r = c.query_one("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_events", p![])?;
    Ok(r.map(|r| r.u64(0)).transpose()?.unwrap_or(0))
}

/// Rebuilds the frontier of the committed tree from the node table.
pub fn load_frontier(c: &mut dyn Conn) -> Result<Frontier> {
    let n = size(c)?;
    let mut nodes = Vec::new();
    for id in Frontier::node_ids(n) {
        nodes.push(DbNodes(c).node(id)?);
    }
    Frontier::from_nodes(n, nodes).ok_or_else(|| StoreError::Internal("frontier shape".into()))
}

/// Appends one event; returns its leaf index.
pub fn append(c: &mut dyn Conn, frontier: &mut Frontier, rec: &AuditRecord, time: Timestamp) -> Result<u64> {
    let leaf = rec.leaf_bytes();
    let seq = frontier.size();
    let (rtype, rid) = match &rec.entity {
        Some(e) => (Some(e.rtype.as_str()), e.id.as_deref()),
        None => (None, None),
    };
    // The time column is the event's own time, so that it can be checked
    // against the leaf.
    let time = Timestamp::parse_rfc3339(&rec.time).unwrap_or(time);
    let mut nodes: Vec<(NodeId, Hash)> = Vec::with_capacity(4);
    frontier.append(merkle::leaf_hash(&leaf), |id, h| nodes.push((id, *h)));
    let mut params = vec![
        Val::from(seq),
        Val::from(time.micros()),
        Val::from(rec.agent.user.as_str()),
        Val::from(rec.action.as_str()),
        Val::from(rtype),
        Val::from(rid),
        Val::from(rec.status),
        Val::from(rec.purpose.as_deref()),
        Val::from(leaf.as_slice()),
    ];
    const EVENT: &str = "INSERT INTO audit_events (seq, time, agent, action, rtype, rid, status, purpose, leaf) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    match c.backend() {
        // One round trip for the event and its nodes (a data-modifying CTE
        // runs whether or not it is referenced).
        Backend::Postgres => {
            let values: Vec<String> =
                (0..nodes.len()).map(|i| format!("(${}, ${}, ${})", 10 + 3 * i, 11 + 3 * i, 12 + 3 * i)).collect();
            for (id, h) in &nodes {
                params.push(Val::from(i64::from(id.level)));
                params.push(Val::from(id.index));
                params.push(Val::from(h.to_vec()));
            }
            let sql = format!(
                "WITH ev AS ({EVENT}) INSERT INTO merkle_nodes (level, idx, hash) VALUES {}",
                values.join(", ")
            );
            // Its answer is not needed: sent with the next round trip.
            c.exec_later(&sql, &params)?;
        }
        Backend::Sqlite => {
            c.exec(EVENT, &params)?;
            for (id, h) in nodes {
                c.exec(
                    "INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)",
                    p![i64::from(id.level), id.index, &h[..]],
                )?;
            }
        }
    }
    Ok(seq)
}

// ---- the derived indexes (who accessed which patient; what each user did) --

/// The cursor naming the last event the derived indexes cover.
pub const INDEX_CURSOR: &str = "audit-index";

/// Index entries of events appended but not yet indexed.
#[derive(Debug, Clone, Default)]
pub struct PendingIndex {
    /// (patient, event index) for each patient each pending event concerned.
    pub patients: Vec<(String, u64)>,
    /// (agent's user name, event index) for each pending event.
    pub agents: Vec<(String, u64)>,
    /// The index of the last event added.
    pub last: Option<u64>,
}

impl PendingIndex {
    /// Adds the index entries of event `seq`.
    pub fn add(&mut self, seq: u64, rec: &AuditRecord) {
        for p in &rec.patients {
            self.patients.push((p.clone(), seq));
        }
        self.agents.push((rec.agent.user.clone(), seq));
        self.last = Some(seq);
    }
    /// The number of pending events.
    pub fn len(&self) -> usize {
        self.agents.len()
    }
    /// A position to roll back to (entries only grow between flushes).
    pub fn mark(&self) -> (usize, usize, Option<u64>) {
        (self.patients.len(), self.agents.len(), self.last)
    }
    /// Drops the entries added since [`PendingIndex::mark`] returned `m`
    /// (their transaction rolled back).
    pub fn rollback(&mut self, m: (usize, usize, Option<u64>)) {
        self.patients.truncate(m.0);
        self.agents.truncate(m.1);
        self.last = m.2;
    }
    /// Whether no event is pending.
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

/// Writes pending index entries in key order (each index page is written
/// once per flush instead of once per commit) and advances the cursor.
pub fn flush_index(c: &mut dyn Conn, pending: &mut PendingIndex) -> Result<()> {
    let Some(last) = pending.last else { return Ok(()) };
    pending.patients.sort_unstable();
    pending.agents.sort_unstable();
    insert_pairs(c, "INSERT INTO audit_patients (patient, seq)", &pending.patients)?;
    insert_pairs(c, "INSERT INTO audit_agents (agent, seq)", &pending.agents)?;
    c.exec_later(SET_CURSOR, p![INDEX_CURSOR, i64::try_from(last).unwrap_or(i64::MAX)])?;
    *pending = PendingIndex::default();
    Ok(())
}

/// Inserts (text, integer) rows, several per statement, skipping rows
/// already there.
fn insert_pairs(c: &mut dyn Conn, insert: &str, rows: &[(String, u64)]) -> Result<()> {
    let rows = rows.iter().map(|(k, s)| vec![Val::from(k.as_str()), Val::from(*s)]).collect();
    Ok(crate::sql::insert_rows_later(c, insert, "ON CONFLICT DO NOTHING", 2, rows)?)
}

/// Rebuilds the pending entries of events appended after the cursor (at
/// start, after a crash or an offline append).
pub fn load_pending_index(c: &mut dyn Conn) -> Result<PendingIndex> {
    let upto = get_cursor(c, INDEX_CURSOR)?.unwrap_or(-1);
    let mut pending = PendingIndex::default();
    let mut err = None;
    c.for_each("SELECT seq, leaf FROM audit_events WHERE seq > $1 ORDER BY seq", p![upto], &mut |r| {
        let seq = u64::try_from(r.first().map(CellRef::i64).transpose()?.unwrap_or(-1)).unwrap_or(u64::MAX);
        match AuditRecord::from_leaf(r.get(1).and_then(CellRef::bytes).unwrap_or_default()) {
            Ok(rec) => pending.add(seq, &rec),
            Err(e) => {
                err = Some(StoreError::Internal(format!(
                    "audit event {seq} cannot be read ({e}); run `mamori audit verify`"
                )));
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(pending),
    }
}

/// Signs and stores a checkpoint of the current tree; returns its text.
/// One checkpoint per tree size: an existing one is returned unchanged.
pub fn sign_checkpoint(
    c: &mut dyn Conn,
    frontier: &Frontier,
    signer: &NoteSigner,
    origin: &str,
    now: Timestamp,
    reason: &str,
) -> Result<String> {
    if let Some(r) = c.query_one("SELECT note FROM checkpoints WHERE size = $1", p![frontier.size()])? {
        return Ok(r.text(0)?);
    }
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size: frontier.size(),
        root: frontier.root(),
        extensions: vec![format!("mamori-time {}", now.to_rfc3339()), format!("mamori-reason {reason}")],
    };
    let note = cp.sign(signer);
    c.exec(
        "INSERT INTO checkpoints (size, time, reason, note) VALUES ($1, $2, $3, $4)",
        p![frontier.size(), now.micros(), reason, note.as_str()],
    )?;
    Ok(note)
}

/// The newest checkpoint: (size, time, note).
pub fn latest_checkpoint(c: &mut dyn Conn) -> Result<Option<(u64, Timestamp, String)>> {
    c.query_one("SELECT size, time, note FROM checkpoints ORDER BY size DESC LIMIT 1", p![])?
        .map(|r| Ok((r.u64(0)?, Timestamp(r.i64(1)?), r.text(2)?)))
        .transpose()
}

/// The signed note of the checkpoint at tree size `size`, if one was signed.
pub fn checkpoint_at(c: &mut dyn Conn, size: u64) -> Result<Option<String>> {
    Ok(c.query_one("SELECT note FROM checkpoints WHERE size = $1", p![size])?.map(|r| r.text(0)).transpose()?)
}

/// Reads complete nodes from the `merkle_nodes` table.
pub struct DbNodes<'a>(pub &'a mut dyn Conn);

impl NodeSource for DbNodes<'_> {
    type Error = StoreError;
    fn node(&mut self, id: NodeId) -> Result<Hash> {
        let r = self
            .0
            .query_one(
                "SELECT hash FROM merkle_nodes WHERE level = $1 AND idx = $2",
                p![i64::from(id.level), id.index],
            )?
            .ok_or_else(|| StoreError::Internal(format!("merkle node ({}, {}) missing", id.level, id.index)))?;
        Ok(r.hash32(0)?)
    }
}

/// The stored leaf bytes of one event.
pub fn leaf(c: &mut dyn Conn, seq: u64) -> Result<Option<Vec<u8>>> {
    Ok(c.query_one("SELECT leaf FROM audit_events WHERE seq = $1", p![seq])?.map(|r| r.blob(0)).transpose()?)
}

impl From<merkle::ProofError<StoreError>> for StoreError {
    fn from(e: merkle::ProofError<StoreError>) -> Self {
        match e {
            merkle::ProofError::Source(s) => s,
            other => StoreError::invalid("", other.to_string()),
        }
    }
}

impl From<DbError> for merkle::ProofError<StoreError> {
    fn from(e: DbError) -> Self {
        merkle::ProofError::Source(StoreError::Db(e))
    }
}

// ---- verification and export -------------------------------------------------------

/// Events are read in chunks of this many rows (memory stays bounded).
const CHUNK: usize = 20_000;

/// Verifies the whole audit log in a database (a consistent read snapshot):
/// every leaf recomputed and compared with its recorded hash, the tree
/// rebuilt and checked against every signed checkpoint, and (with `deep`)
/// the query columns and patient index against the leaves and every stored
/// proof node against its children.
///
/// `nodes`, a second connection to the same database, lets the recorded
/// leaf hashes be read in parallel instead of joined (faster); its snapshot
/// is taken after the first one's, so it holds every node the events need.
pub fn verify(
    c: &mut dyn Conn,
    nodes: Option<&mut (dyn Conn + Send)>,
    vkey: &NoteVerifier,
    origin: &str,
    deep: bool,
) -> Result<Report> {
    verify_with(c, nodes, vkey, origin, deep, &[])
}

/// As [`verify`], and the log must also contain the trees of `outside`:
/// signed checkpoints kept outside the database (by a witness, or saved
/// by the operator). A database that lost events it had acknowledged (a
/// restore from an older backup, a standby promoted before it received
/// the last commits) still verifies on its own; against a checkpoint
/// taken before the loss it fails, naming the checkpoint (truncated, or a
/// different root at its size when the log has grown again since).
pub fn verify_with(
    c: &mut dyn Conn,
    nodes: Option<&mut (dyn Conn + Send)>,
    vkey: &NoteVerifier,
    origin: &str,
    deep: bool,
    outside: &[String],
) -> Result<Report> {
    c.batch("BEGIN")?;
    // Start the read snapshot now (SQLite begins it at the first read).
    let r = c
        .query_one("SELECT COUNT(*) FROM checkpoints", p![])
        .map_err(StoreError::from)
        .and_then(|_| verify_in_txn(c, nodes, vkey, origin, deep, outside));
    // The transaction only read: the report stands even if ending it fails.
    if let Err(e) = c.batch("COMMIT") {
        tracing::warn!(error = %e, "cannot end the audit verification's read transaction");
    }
    r
}

/// Leaves travel from the reading thread to the hashing thread in
/// batches: one buffer of bytes, with (index, end offset, recorded hash).
#[derive(Default)]
struct LeafBatch {
    bytes: Vec<u8>,
    items: Vec<(u64, usize, Option<Hash>)>,
}

const BATCH_ITEMS: usize = 4096;

fn verify_in_txn(
    c: &mut dyn Conn,
    nodes: Option<&mut (dyn Conn + Send)>,
    vkey: &NoteVerifier,
    origin: &str,
    deep: bool,
    outside: &[String],
) -> Result<Report> {
    let mut v = LogVerifier::new(vkey.clone(), origin, Frontier::new());
    let mut all: Vec<(u64, String)> = c
        .query("SELECT size, note FROM checkpoints ORDER BY size", p![])?
        .iter()
        .map(|r| Ok((r.u64(0)?, r.text(1)?)))
        .collect::<Result<_>>()?;
    for note in outside {
        // One that does not open is reported as a bad signature.
        let size = Checkpoint::open(note, vkey).map_or(0, |(cp, _)| cp.size);
        all.push((size, note.clone()));
    }
    all.sort_by_key(|(size, _)| *size);
    for (size, note) in &all {
        v.checkpoint(*size, note);
    }
    // Core pass: this thread reads, a second thread hashes and rebuilds
    // the tree (the two run in parallel).
    let (tx, rx) = std::sync::mpsc::sync_channel::<LeafBatch>(4);
    let parallel_nodes = nodes.is_some();
    let (ntx, nrx) = std::sync::mpsc::sync_channel::<Vec<(u64, Hash)>>(4);
    let mut v = std::thread::scope(|s| -> Result<LogVerifier> {
        let node_reader = nodes.map(|nc| {
            s.spawn(move || -> Result<()> {
                nc.batch("BEGIN")?;
                let mut buf = Vec::with_capacity(BATCH_ITEMS);
                let r =
                    nc.for_each("SELECT idx, hash FROM merkle_nodes WHERE level = 0 ORDER BY idx", p![], &mut |r| {
                        let idx =
                            u64::try_from(r.first().map(CellRef::i64).transpose()?.unwrap_or(-1)).unwrap_or(u64::MAX);
                        if let Some(h) = r.get(1).and_then(CellRef::bytes).and_then(|b| Hash::try_from(b).ok()) {
                            buf.push((idx, h));
                        }
                        if buf.len() >= BATCH_ITEMS
                            && ntx.send(std::mem::replace(&mut buf, Vec::with_capacity(BATCH_ITEMS))).is_err()
                        {
                            return Ok(false);
                        }
                        Ok(true)
                    });
                // The hasher drops its end once it has all the events (or
                // when it panics, which its join reports): nothing is lost.
                ntx.send(buf).ok();
                drop(ntx);
                if let Err(e) = nc.batch("COMMIT") {
                    tracing::warn!(error = %e, "cannot end the audit verification's node read transaction");
                }
                r.map_err(StoreError::from)
            })
        });
        let hasher = s.spawn(move || {
            let mut v = v;
            // Recorded leaf hashes from the parallel reader, merged by index.
            let mut recorded_iter = nrx.into_iter().flatten().peekable();
            for b in rx {
                let mut start = 0;
                for (seq, end, joined) in &b.items {
                    let leaf = b.bytes.get(start..*end).unwrap_or_default();
                    let recorded = if parallel_nodes {
                        while recorded_iter.peek().is_some_and(|(i, _)| i < seq) {
                            recorded_iter.next();
                        }
                        recorded_iter.peek().filter(|(i, _)| i == seq).map(|(_, h)| *h)
                    } else {
                        *joined
                    };
                    if recorded.is_none() {
                        v.event_problem(*seq, "its leaf hash is missing from the proof nodes".into());
                    }
                    v.leaf(*seq, leaf, recorded.as_ref());
                    start = *end;
                }
            }
            v
        });
        let mut batch = LeafBatch::default();
        let sql = if parallel_nodes {
            "SELECT e.seq, e.leaf, NULL FROM audit_events e ORDER BY e.seq"
        } else {
            "SELECT e.seq, e.leaf, n.hash FROM audit_events e LEFT JOIN merkle_nodes n ON n.level = 0 AND n.idx = e.seq ORDER BY e.seq"
        };
        let read = c.for_each(sql, p![], &mut |row| {
            let seq = row.first().map(CellRef::i64).transpose()?.unwrap_or(-1);
            let leaf = row.get(1).and_then(CellRef::bytes).unwrap_or_default();
            let recorded = row.get(2).and_then(CellRef::bytes).and_then(|b| Hash::try_from(b).ok());
            batch.bytes.extend_from_slice(leaf);
            batch.items.push((u64::try_from(seq).unwrap_or(u64::MAX), batch.bytes.len(), recorded));
            if batch.items.len() >= BATCH_ITEMS {
                let full = std::mem::take(&mut batch);
                if tx.send(full).is_err() {
                    return Ok(false);
                }
            }
            Ok(true)
        });
        if !batch.items.is_empty() {
            // The hasher reads until this channel closes; it only goes away
            // by panicking, which its join below reports.
            tx.send(batch).ok();
        }
        drop(tx);
        let v = hasher.join().map_err(|_| StoreError::Internal("the verifier's hashing thread failed".into()))?;
        read?;
        if let Some(n) = node_reader {
            n.join().map_err(|_| StoreError::Internal("the verifier's node reader failed".into()))??;
        }
        Ok(v)
    })?;
    if deep {
        verify_derived(c, &mut v)?;
        verify_nodes(c, &mut v)?;
    }
    Ok(v.finish())
}

/// Checks the record versions that the events `from..from + count` bind
/// against the stored bytes: a sample for the periodic self-check (the
/// whole check is `verify` with `deep`). Returns how many versions it
/// checked and what it found wrong (at most 20).
pub fn check_record_sample(c: &mut dyn Conn, from: u64, count: u64) -> Result<(u64, Vec<String>)> {
    let start = i64::try_from(from).unwrap_or(i64::MAX);
    let end = start.saturating_add(i64::try_from(count).unwrap_or(i64::MAX));
    let mut bound: Vec<(VersionDigest, u64)> = Vec::new();
    c.for_each(
        "SELECT seq, leaf FROM audit_events WHERE seq >= $1 AND seq < $2 ORDER BY seq",
        p![start, end],
        &mut |r| {
            let leaf = r.get(1).and_then(CellRef::bytes).unwrap_or_default();
            // Most events store nothing: skip them without parsing.
            if contains(leaf, b"\"versions\":[") {
                let seq = u64::try_from(r.first().map(CellRef::i64).transpose()?.unwrap_or(-1)).unwrap_or(u64::MAX);
                if let Ok(rec) = AuditRecord::from_leaf(leaf) {
                    bound.extend(rec.versions.into_iter().map(|d| (d, seq)));
                }
            }
            Ok(true)
        },
    )?;
    let mut problems = Vec::new();
    let mut checked = 0u64;
    for (d, event) in bound {
        let Some((t, id, version)) = d.target() else { continue };
        checked += 1;
        let row = c.query_one(
            "SELECT body FROM resource_versions WHERE rtype = $1 AND id = $2 AND version = $3",
            p![t, id, version],
        )?;
        let why = match row {
            None => "bound by event {event}, but no such version is stored (it was removed)",
            Some(r) if mamori_audit::event::sha256_hex(r.text(0)?.as_bytes()) != d.sha256 => {
                "its stored bytes differ from the SHA-256 that event {event} bound (the record was altered)"
            }
            Some(_) => continue,
        };
        if problems.len() < 20 {
            problems.push(format!("record {}: {}", d.reference, why.replace("{event}", &event.to_string())));
        }
    }
    Ok((checked, problems))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// One event's stored columns, to compare with its leaf.
struct Columns {
    seq: u64,
    time: Option<i64>,
    agent: Option<String>,
    action: Option<String>,
    rtype: Option<String>,
    rid: Option<String>,
    status: Option<i64>,
    purpose: Option<String>,
}

/// Parses leaves and compares them with their columns; returns the
/// problems and the (patient, event) and (agent, event) pairs the leaves
/// name, for events the derived indexes should already cover (`upto`).
fn check_columns(batch: Vec<(Columns, Vec<u8>)>, upto: i64) -> Checked {
    let mut out = Checked::default();
    for (col, leaf) in batch {
        match AuditRecord::from_leaf(&leaf) {
            Err(e) => out.problems.push((col.seq, e.to_string())),
            Ok(rec) => {
                let (rt, rid) = match &rec.entity {
                    Some(e) => (Some(e.rtype.clone()), e.id.clone()),
                    None => (None, None),
                };
                let ok = Timestamp::parse_rfc3339(&rec.time).map(|t| t.micros()) == col.time
                    && Some(&rec.agent.user) == col.agent.as_ref()
                    && Some(&rec.action) == col.action.as_ref()
                    && rt == col.rtype
                    && rid == col.rid
                    && Some(i64::from(rec.status)) == col.status
                    && rec.purpose == col.purpose;
                if !ok {
                    out.problems.push((
                        col.seq,
                        "its query columns (time, agent, action, entity, status, purpose) differ from the event".into(),
                    ));
                }
                out.versions.extend(rec.versions.into_iter().map(|d| (d, col.seq)));
                if i64::try_from(col.seq).unwrap_or(i64::MAX) <= upto {
                    out.patients.extend(rec.patients.into_iter().map(|p| (p, col.seq)));
                    out.agents.push((rec.agent.user, col.seq));
                }
            }
        }
    }
    out
}

/// What the parsing threads found.
#[derive(Default)]
struct Checked {
    problems: Vec<(u64, String)>,
    patients: Vec<(String, u64)>,
    agents: Vec<(String, u64)>,
    /// The record versions the events bind, with the binding event.
    versions: Vec<(VersionDigest, u64)>,
}

/// Compares a derived index table, in key order, with the sorted pairs the
/// leaves name; returns the first event where they differ.
fn compare_index(c: &mut dyn Conn, sql: &str, expected: &[(String, u64)], upto: i64) -> Result<Option<u64>> {
    let mut i = 0usize;
    let mut mismatch: Option<u64> = None;
    c.for_each(sql, p![upto], &mut |r| {
        let key = match r.first() {
            Some(CellRef::Text(t)) => *t,
            _ => "",
        };
        let seq = u64::try_from(r.get(1).map(CellRef::i64).transpose()?.unwrap_or(-1)).unwrap_or(u64::MAX);
        match expected.get(i) {
            Some((k, s)) if k == key && *s == seq => {
                i += 1;
                Ok(true)
            }
            other => {
                mismatch = Some(other.map_or(seq, |x| x.1.min(seq)));
                Ok(false)
            }
        }
    })?;
    if mismatch.is_none() && i < expected.len() {
        mismatch = expected.get(i).map(|x| x.1);
    }
    Ok(mismatch)
}

/// The query columns and the derived indexes must agree with the leaves.
/// Leaves are parsed on two threads while this one reads.
fn verify_derived(c: &mut dyn Conn, v: &mut LogVerifier) -> Result<()> {
    let upto = get_cursor(c, INDEX_CURSOR)?.unwrap_or(-1);
    let mut found = std::thread::scope(|s| -> Result<Checked> {
        let mut senders = Vec::new();
        let mut workers = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(Columns, Vec<u8>)>>(4);
            senders.push(tx);
            workers.push(s.spawn(move || {
                let mut out = Checked::default();
                for b in rx {
                    let c = check_columns(b, upto);
                    out.problems.extend(c.problems);
                    out.patients.extend(c.patients);
                    out.agents.extend(c.agents);
                    out.versions.extend(c.versions);
                }
                out
            }));
        }
        let mut batch = Vec::with_capacity(BATCH_ITEMS);
        let mut turn = 0usize;
        let read = c.for_each(
            "SELECT seq, leaf, time, agent, action, rtype, rid, status, purpose FROM audit_events ORDER BY seq",
            p![],
            &mut |r| {
                let text = |i: usize| match r.get(i) {
                    Some(CellRef::Text(t)) => Some((*t).to_owned()),
                    _ => None,
                };
                let int = |i: usize| match r.get(i) {
                    Some(CellRef::Int(x)) => Some(*x),
                    _ => None,
                };
                let col = Columns {
                    seq: u64::try_from(int(0).unwrap_or(-1)).unwrap_or(u64::MAX),
                    time: int(2),
                    agent: text(3),
                    action: text(4),
                    rtype: text(5),
                    rid: text(6),
                    status: int(7),
                    purpose: text(8),
                };
                batch.push((col, r.get(1).and_then(CellRef::bytes).unwrap_or_default().to_vec()));
                if batch.len() >= BATCH_ITEMS {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ITEMS));
                    turn += 1;
                    if let Some(tx) = senders.get(turn % 2) {
                        if tx.send(full).is_err() {
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            },
        );
        if let Some(tx) = senders.first() {
            // A worker reads until its channel closes; it only goes away by
            // panicking, which its join below reports.
            tx.send(batch).ok();
        }
        drop(senders);
        let mut all = Checked::default();
        for w in workers {
            let c = w.join().map_err(|_| StoreError::Internal("a verifier thread failed".into()))?;
            all.problems.extend(c.problems);
            all.patients.extend(c.patients);
            all.agents.extend(c.agents);
            all.versions.extend(c.versions);
        }
        read?;
        Ok(all)
    })?;
    found.problems.sort();
    for (seq, why) in std::mem::take(&mut found.problems) {
        v.index_problem(seq, why);
    }
    found.patients.sort();
    if let Some(seq) = compare_index(
        c,
        "SELECT patient, seq FROM audit_patients WHERE seq <= $1 ORDER BY patient, seq",
        &found.patients,
        upto,
    )? {
        v.index_problem(seq, "the patient index (who looked at which patient) differs from the events".into());
    }
    found.agents.sort();
    if let Some(seq) = compare_index(
        c,
        "SELECT agent, seq FROM audit_agents WHERE seq <= $1 ORDER BY agent, seq",
        &found.agents,
        upto,
    )? {
        v.index_problem(seq, "the user index (what each user did) differs from the events".into());
    }
    verify_records(c, v, std::mem::take(&mut found.versions))
}

/// Every stored record version's bytes hash to the digest an audit event
/// bound for it; every bound version is stored; no version is stored
/// without a binding (except those stored before record binding existed,
/// until the first start after the upgrade binds them).
fn verify_records(c: &mut dyn Conn, v: &mut LogVerifier, bound: Vec<(VersionDigest, u64)>) -> Result<()> {
    use std::collections::HashMap;
    let mut want: HashMap<(String, String, u64), (String, u64)> = HashMap::with_capacity(bound.len());
    for (d, event) in bound {
        let Some((t, id, version)) = d.target() else {
            v.record_problem(d.reference.clone(), format!("event {event} binds a reference that names no version"));
            continue;
        };
        let key = (t.to_owned(), id.to_owned(), version);
        if let Some((_, first)) = want.insert(key, (d.sha256.clone(), event)) {
            v.record_problem(d.reference.clone(), format!("bound twice, by events {first} and {event}"));
        }
    }
    let legacy = match c.query_one("SELECT value FROM meta WHERE key = $1", p![crate::records::UNBOUND_UPTO])? {
        Some(r) => r.text(0)?.parse::<i64>().ok(),
        None => None,
    };
    let mut checked = 0u64;
    let mut unbound_legacy = 0u64;
    c.for_each("SELECT seq, rtype, id, version, body FROM resource_versions ORDER BY seq", p![], &mut |r| {
        let text = |i: usize| match r.get(i) {
            Some(CellRef::Text(t)) => *t,
            _ => "",
        };
        let seq = r.first().map(CellRef::i64).transpose()?.unwrap_or(-1);
        let version = u64::try_from(r.get(3).map(CellRef::i64).transpose()?.unwrap_or(0)).unwrap_or(0);
        let (rtype, id, body) = (text(1), text(2), text(4));
        let reference = format!("{rtype}/{id}/_history/{version}");
        checked += 1;
        match want.remove(&(rtype.to_owned(), id.to_owned(), version)) {
            Some((sha, event)) => {
                if mamori_audit::event::sha256_hex(body.as_bytes()) != sha {
                    v.record_problem(
                        reference,
                        format!("its stored bytes differ from the SHA-256 that event {event} bound (the record was altered)"),
                    );
                }
            }
            None if legacy.is_some_and(|l| seq <= l) => unbound_legacy += 1,
            None => v.record_problem(
                reference,
                "stored, but no audit event binds it (written outside mamori, or its binding event was removed)".into(),
            ),
        }
        Ok(true)
    })?;
    let mut missing: Vec<_> = want.into_iter().collect();
    missing.sort_by_key(|(_, (_, event))| *event);
    for ((t, id, version), (_, event)) in missing {
        v.record_problem(
            format!("{t}/{id}/_history/{version}"),
            format!("bound by event {event}, but no such version is stored (it was removed)"),
        );
    }
    if unbound_legacy > 0 {
        v.record_problem(
            format!("{unbound_legacy} versions"),
            "stored before record binding and not yet bound: start the server once to bind them".into(),
        );
    }
    v.records_checked(checked);
    Ok(())
}

/// Every stored node above the leaves equals the hash of its two stored
/// children (level 0 was compared with the recomputed leaf hashes).
/// Works level by level in windows, so memory stays bounded.
fn verify_nodes(c: &mut dyn Conn, v: &mut LogVerifier) -> Result<()> {
    const WINDOW: i64 = 1 << 16;
    for level in 1i64..64 {
        let mut any = false;
        let mut start = 0i64;
        loop {
            let mut kids: Vec<Option<Hash>> = vec![None; (2 * WINDOW) as usize];
            c.for_each(
                "SELECT idx, hash FROM merkle_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                p![level - 1, start * 2, (start + WINDOW) * 2],
                &mut |r| {
                    let idx = r.first().map(CellRef::i64).transpose()?.unwrap_or(0);
                    if let (Some(slot), Some(h)) =
                        (kids.get_mut((idx - start * 2) as usize), r.get(1).and_then(CellRef::bytes))
                    {
                        *slot = Hash::try_from(h).ok();
                    }
                    Ok(true)
                },
            )?;
            let mut seen = 0usize;
            c.for_each(
                "SELECT idx, hash FROM merkle_nodes WHERE level = $1 AND idx >= $2 AND idx < $3 ORDER BY idx",
                p![level, start, start + WINDOW],
                &mut |r| {
                    seen += 1;
                    let idx = r.first().map(CellRef::i64).transpose()?.unwrap_or(0);
                    let off = ((idx - start) * 2) as usize;
                    let stored = r.get(1).and_then(CellRef::bytes).and_then(|h| Hash::try_from(h).ok());
                    let ok = match (kids.get(off).copied().flatten(), kids.get(off + 1).copied().flatten(), stored) {
                        (Some(l), Some(rt), Some(h)) => merkle::node_hash(&l, &rt) == h,
                        _ => false,
                    };
                    if !ok {
                        v.node_problem(u32::try_from(level).unwrap_or(u32::MAX), u64::try_from(idx).unwrap_or(0));
                    }
                    Ok(true)
                },
            )?;
            if seen == 0 {
                break;
            }
            any = true;
            start += WINDOW;
        }
        if !any {
            return Ok(());
        }
    }
    Ok(())
}

/// The header line of an export file.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportHeader {
    /// The export format: [`EXPORT_FORMAT`].
    pub format: String,
    /// The log's origin (the checkpoints' first line).
    pub origin: String,
    /// The log's verifier key as recorded in the data directory
    /// (informative: a verifier must pin the key it trusts).
    pub vkey: String,
    /// First exported event index.
    pub start: u64,
    /// The complete subtrees covering events `[0, start)`, base64.
    pub start_frontier: Vec<String>,
    /// One past the last exported event: the size of the newest checkpoint.
    pub end: u64,
    /// When the export was written (RFC 3339).
    pub exported_at: String,
}

/// The value of [`ExportHeader::format`] for this version of the format.
pub const EXPORT_FORMAT: &str = "mamori-audit-export/v1";

/// Writes events `[from, to)` and the checkpoints covering them as NDJSON.
/// `to` is clipped to the newest signed checkpoint, so that everything
/// exported is covered by a signature.
pub fn export(
    c: &mut dyn Conn,
    out: &mut dyn std::io::Write,
    vkey: &str,
    origin: &str,
    from: u64,
    to: Option<u64>,
    now: Timestamp,
) -> Result<ExportHeader> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let io = |e: std::io::Error| StoreError::Internal(format!("writing the export: {e}"));
    c.batch("BEGIN")?;
    let result = (|| {
        let latest = latest_checkpoint(c)?.map(|(s, _, _)| s).unwrap_or(0);
        let end = to.map_or(latest, |t| t.min(latest));
        // The end must be a checkpointed size: take the largest one <= end.
        let end = c
            .query_one("SELECT MAX(size) FROM checkpoints WHERE size <= $1", p![end])?
            .and_then(|r| r.opt_i64(0).ok().flatten())
            .map_or(0, |v| u64::try_from(v).unwrap_or(0));
        if from >= end {
            return Err(StoreError::invalid(
                "from",
                format!("nothing to export: the newest checkpoint covers {end} events"),
            ));
        }
        let mut frontier = Vec::new();
        for id in Frontier::node_ids(from) {
            frontier.push(b64.encode(DbNodes(c).node(id)?));
        }
        let header = ExportHeader {
            format: EXPORT_FORMAT.into(),
            origin: origin.into(),
            vkey: vkey.into(),
            start: from,
            start_frontier: frontier,
            end,
            exported_at: now.to_rfc3339(),
        };
        writeln!(out, "{}", serde_json::to_string(&header).map_err(|e| StoreError::Internal(e.to_string()))?)
            .map_err(io)?;
        for r in
            c.query("SELECT size, note FROM checkpoints WHERE size > $1 AND size <= $2 ORDER BY size", p![from, end])?
        {
            writeln!(out, "{}", serde_json::json!({"size": r.u64(0)?, "checkpoint": r.text(1)?})).map_err(io)?;
        }
        let mut next = i64::try_from(from).unwrap_or(0) - 1;
        loop {
            let rows = c.query(
                "SELECT seq, leaf FROM audit_events WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3",
                p![next, end, CHUNK],
            )?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let seq = r.u64(0)?;
                writeln!(out, "{}", serde_json::json!({"index": seq, "leaf": b64.encode(r.blob(1)?)})).map_err(io)?;
                next = i64::try_from(seq).unwrap_or(i64::MAX);
            }
        }
        out.flush().map_err(io)?;
        Ok(header)
    })();
    // The transaction only read: the export stands even if ending it fails.
    if let Err(e) = c.batch("COMMIT") {
        tracing::warn!(error = %e, "cannot end the audit export's read transaction");
    }
    result
}

/// Verifies an export file with nothing but the pinned verifier key.
pub fn verify_export(input: impl std::io::BufRead, vkey: &NoteVerifier) -> Result<(ExportHeader, Report)> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let bad = |line: usize, why: String| StoreError::invalid("export", format!("line {line}: {why}"));
    let mut lines = input.lines().enumerate();
    let (_, first) = lines.next().ok_or_else(|| bad(1, "empty file".into()))?;
    let first = first.map_err(|e| bad(1, e.to_string()))?;
    let header: ExportHeader =
        serde_json::from_str(&first).map_err(|e| bad(1, format!("not an export header: {e}")))?;
    if header.format != EXPORT_FORMAT {
        return Err(bad(1, format!("unknown format '{}'", header.format)));
    }
    let mut nodes = Vec::new();
    for h in &header.start_frontier {
        let v = b64.decode(h).map_err(|_| bad(1, "bad frontier hash".into()))?;
        nodes.push(Hash::try_from(v.as_slice()).map_err(|_| bad(1, "bad frontier hash".into()))?);
    }
    let start = Frontier::from_nodes(header.start, nodes)
        .ok_or_else(|| bad(1, "frontier does not match the start index".into()))?;
    let mut v = LogVerifier::new(vkey.clone(), &header.origin, start);
    let mut saw_checkpoint = false;
    let mut leaves_started = false;
    for (i, line) in lines {
        let line = line.map_err(|e| bad(i + 1, e.to_string()))?;
        if line.is_empty() {
            continue;
        }
        let j: serde_json::Value = serde_json::from_str(&line).map_err(|e| bad(i + 1, e.to_string()))?;
        if let Some(note) = j.get("checkpoint").and_then(serde_json::Value::as_str) {
            if leaves_started {
                return Err(bad(i + 1, "checkpoints must come before the events".into()));
            }
            let size = j
                .get("size")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad(i + 1, "checkpoint without size".into()))?;
            v.checkpoint(size, note);
            saw_checkpoint = true;
        } else {
            leaves_started = true;
            let idx = j
                .get("index")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| bad(i + 1, "event without index".into()))?;
            let leaf = j
                .get("leaf")
                .and_then(serde_json::Value::as_str)
                .and_then(|l| b64.decode(l).ok())
                .ok_or_else(|| bad(i + 1, "event without a base64 leaf".into()))?;
            v.leaf(idx, &leaf, None);
        }
    }
    if !saw_checkpoint {
        return Err(StoreError::invalid("export", "the export contains no checkpoint: nothing in it can be verified"));
    }
    Ok((header, v.finish()))
}

// ---- cosignatures -----------------------------------------------------------------

/// Stores a witness's cosignature line for a stored checkpoint.
pub fn add_cosignature(
    c: &mut dyn Conn,
    size: u64,
    witness: &str,
    line: &str,
    time: u64,
    now: Timestamp,
) -> Result<bool> {
    let n = c.exec(
        "INSERT INTO cosignatures (size, witness, line, time, received) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line, time = excluded.time, received = excluded.received",
        p![size, witness, line, time, now.micros()],
    )?;
    Ok(n > 0)
}

/// The checkpoint note with every stored cosignature line appended.
pub fn cosigned_checkpoint(c: &mut dyn Conn, size: u64) -> Result<Option<String>> {
    let Some(mut note) = checkpoint_at(c, size)? else { return Ok(None) };
    for r in c.query("SELECT line FROM cosignatures WHERE size = $1 ORDER BY witness", p![size])? {
        note.push_str(&r.text(0)?);
        note.push('\n');
    }
    Ok(Some(note))
}

/// A stored checkpoint: size, time, reason, witnesses who cosigned it.
pub type CheckpointInfo = (u64, Timestamp, String, Vec<String>);

/// Checkpoints newest first.
pub fn list_checkpoints(c: &mut dyn Conn, before: Option<u64>, limit: usize) -> Result<Vec<CheckpointInfo>> {
    let rows = c.query(
        "SELECT size, time, reason FROM checkpoints WHERE (CAST($1 AS BIGINT) IS NULL OR size < $1) ORDER BY size DESC LIMIT $2",
        p![before, limit],
    )?;
    let mut out = Vec::new();
    for r in rows {
        let size = r.u64(0)?;
        let w = c
            .query("SELECT witness FROM cosignatures WHERE size = $1 ORDER BY witness", p![size])?
            .iter()
            .map(|x| x.text(0))
            .collect::<Result<Vec<_>, _>>()?;
        out.push((size, Timestamp(r.i64(1)?), r.text(2)?, w));
    }
    Ok(out)
}

/// The value of the named cursor (a position in the audit log kept by
/// a background task, e.g. the syslog stream's), if set.
pub fn get_cursor(c: &mut dyn Conn, name: &str) -> Result<Option<i64>> {
    Ok(c.query_one("SELECT value FROM cursors WHERE name = $1", p![name])?.map(|r| r.i64(0)).transpose()?)
}

/// Sets the named cursor.
pub fn set_cursor(c: &mut dyn Conn, name: &str, value: i64) -> Result<()> {
    c.exec(SET_CURSOR, p![name, value])?;
    Ok(())
}

const SET_CURSOR: &str =
    "INSERT INTO cursors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value";

// ---- queries for auditors ------------------------------------------------------------

/// A search of the audit log (all given filters must match).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events concerning this patient (Patient id).
    pub patient: Option<String>,
    /// Only events by this agent (user name).
    pub agent: Option<String>,
    /// Action names (any of).
    pub actions: Option<Vec<String>>,
    /// Only events with this purpose of use (`TREAT`, `BTG`, ...).
    pub purpose: Option<String>,
    /// Only refusals (status 401/403).
    pub denied: bool,
    /// HTTP-style status range [min, max].
    pub status: Option<(u16, u16)>,
    /// Time range [from, to) in microseconds.
    pub from: Option<i64>,
    /// End of the time range, exclusive (see `from`).
    pub to: Option<i64>,
    /// Keyset paging, newest first: events with seq < before.
    pub before: Option<u64>,
    /// The most events to return.
    pub limit: usize,
}

fn event_where(q: &EventQuery, params: &mut Vec<crate::sql::Val<'static>>) -> String {
    let mut bind = |v: crate::sql::Val<'static>| {
        params.push(v);
        format!("${}", params.len())
    };
    let mut w = vec!["1 = 1".to_owned()];
    if let Some(p) = &q.patient {
        w.push(format!("e.seq IN (SELECT seq FROM audit_patients WHERE patient = {})", bind(p.clone().into())));
    }
    if let Some(a) = &q.agent {
        w.push(format!("e.seq IN (SELECT seq FROM audit_agents WHERE agent = {})", bind(a.clone().into())));
    }
    if let Some(acts) = &q.actions {
        let list: Vec<String> = acts.iter().map(|a| bind(a.clone().into())).collect();
        w.push(format!("e.action IN ({})", if list.is_empty() { "NULL".into() } else { list.join(", ") }));
    }
    if let Some(p) = &q.purpose {
        w.push(format!("e.purpose = {}", bind(p.clone().into())));
    }
    if q.denied {
        w.push("e.status IN (401, 403)".into());
    }
    if let Some((lo, hi)) = q.status {
        w.push(format!("e.status >= {} AND e.status <= {}", bind(i64::from(lo).into()), bind(i64::from(hi).into())));
    }
    if let Some(f) = q.from {
        w.push(format!("e.time >= {}", bind(f.into())));
    }
    if let Some(t) = q.to {
        w.push(format!("e.time < {}", bind(t.into())));
    }
    if let Some(b) = q.before {
        w.push(format!("e.seq < {}", bind(b.into())));
    }
    w.join(" AND ")
}

/// Matching events, newest first: (index, leaf bytes).
pub fn search_events(c: &mut dyn Conn, q: &EventQuery) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut params = Vec::new();
    let w = event_where(q, &mut params);
    params.push(q.limit.into());
    let sql = format!("SELECT e.seq, e.leaf FROM audit_events e WHERE {w} ORDER BY e.seq DESC LIMIT ${}", params.len());
    c.query(&sql, &params)?.iter().map(|r| Ok((r.u64(0)?, r.blob(1)?))).collect()
}

/// How many events match `q` (ignoring its paging).
pub fn count_events(c: &mut dyn Conn, q: &EventQuery) -> Result<u64> {
    let mut params = Vec::new();
    let w = event_where(&EventQuery { before: None, ..q.clone() }, &mut params);
    Ok(c.query_one(&format!("SELECT COUNT(*) FROM audit_events e WHERE {w}"), &params)?
        .map(|r| r.u64(0))
        .transpose()?
        .unwrap_or(0))
}

/// Per-day counts in local time (`offset_minutes` east of UTC):
/// (day, total, denied, break-glass, emergency).
#[derive(Debug, Clone, serde::Serialize)]
pub struct DayCount {
    /// The local date (`YYYY-MM-DD`).
    pub day: String,
    /// Events that day.
    pub total: u64,
    /// Refusals (status 401 or 403).
    pub denied: u64,
    /// Break-glass accesses (purpose `BTG`).
    pub break_glass: u64,
    /// Emergency accesses (purpose `ETREAT`).
    pub emergency: u64,
}

/// Event counts per local day for events in `[from, to)` (microseconds
/// since the epoch), days starting `offset_minutes` east of UTC.
pub fn daily_counts(c: &mut dyn Conn, from: i64, to: i64, offset_minutes: i64) -> Result<Vec<DayCount>> {
    let off = offset_minutes * 60 * 1_000_000;
    let day = 86_400_000_000i64;
    let rows = c.query(
        "SELECT (time + $1) / $2 AS d, COUNT(*), \
                SUM(CASE WHEN status IN (401, 403) THEN 1 ELSE 0 END), \
                SUM(CASE WHEN purpose = 'BTG' THEN 1 ELSE 0 END), \
                SUM(CASE WHEN purpose = 'ETREAT' THEN 1 ELSE 0 END) \
         FROM audit_events WHERE time >= $3 AND time < $4 GROUP BY d ORDER BY d",
        p![off, day, from, to],
    )?;
    rows.iter()
        .map(|r| {
            let d = r.i64(0)?;
            let (y, m, dd) = mamori_core::time::civil_from_days(d);
            Ok(DayCount {
                day: format!("{y:04}-{m:02}-{dd:02}"),
                total: r.u64(1)?,
                denied: r.u64(2)?,
                break_glass: r.u64(3)?,
                emergency: r.u64(4)?,
            })
        })
        .collect()
}
