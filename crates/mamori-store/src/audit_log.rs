//! The audit log in the database: appending events (and their Merkle nodes)
//! inside the writer's transaction, signing checkpoints, and reading proofs.
//!
//! Appends happen only through the group-commit writer, so the in-memory
//! frontier always matches the committed tree (it is rebuilt from the
//! database whenever the two could differ).

use mamori_audit::event::AuditRecord;
use mamori_audit::merkle::{self, Frontier, Hash, NodeId, NodeSource};
use mamori_audit::note::{Checkpoint, NoteSigner};
use mamori_core::time::Timestamp;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, DbError};

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
    c.exec(
        "INSERT INTO audit_events (seq, time, agent, action, rtype, rid, status, purpose, leaf) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        p![seq, time.micros(), rec.agent.user.as_str(), rec.action.as_str(), rtype, rid, rec.status, rec.purpose.as_deref(), leaf.as_slice()],
    )?;
    for patient in &rec.patients {
        c.exec(
            "INSERT INTO audit_patients (patient, seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            p![patient.as_str(), seq],
        )?;
    }
    let mut nodes: Vec<(NodeId, Hash)> = Vec::with_capacity(4);
    frontier.append(merkle::leaf_hash(&leaf), |id, h| nodes.push((id, *h)));
    for (id, h) in nodes {
        c.exec(
            "INSERT INTO merkle_nodes (level, idx, hash) VALUES ($1, $2, $3)",
            p![i64::from(id.level), id.index, &h[..]],
        )?;
    }
    Ok(seq)
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
