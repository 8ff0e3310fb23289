//! Provisional numbering, merges, snapshot keys and files, standalone node
//! state, reconciliation imports and tasks.

use mamori_core::time::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, Row};

fn json_col(r: &Row, i: usize) -> Result<Value> {
    Ok(r.opt_text(i)?.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or(Value::Null))
}

/// The next provisional number of the day.
pub fn next_provisional(c: &mut dyn Conn, day: &str) -> Result<u64> {
    let r = c
        .query_one(
            "INSERT INTO provisional_seq (day, n) VALUES ($1, 1) ON CONFLICT (day) DO UPDATE SET n = provisional_seq.n + 1 RETURNING n",
            p![day],
        )?
        .ok_or_else(|| StoreError::Internal("no number".into()))?;
    Ok(r.u64(0)?)
}

/// The next patient number of `system` that no current Patient holds as
/// an identifier in that system, zero-padded to `digits`.
pub fn next_patient_number(c: &mut dyn Conn, system: &str, digits: usize) -> Result<String> {
    loop {
        let n = c
            .query_one(
                "INSERT INTO patient_number_seq (system, n) VALUES ($1, 1) \
                 ON CONFLICT (system) DO UPDATE SET n = patient_number_seq.n + 1 RETURNING n",
                p![system],
            )?
            .ok_or_else(|| StoreError::Internal("no number".into()))?
            .u64(0)?;
        let value = format!("{n:0digits$}");
        if value.len() > digits {
            return Err(StoreError::Internal(format!("the patient numbers of {system} ran out at {digits} digits")));
        }
        // Numbers given before mamori numbered (imports, the registration
        // system) are passed over.
        let taken = c.query_one(
            "SELECT 1 FROM idx_token WHERE rtype = 'Patient' AND param = 'identifier' AND system = $1 AND code = $2",
            p![system, value.as_str()],
        )?;
        if taken.is_none() {
            return Ok(value);
        }
    }
}

// ---- merges ---------------------------------------------------------------------------

/// A patient merge (`$merge`): one patient's record moved into another's.
#[derive(Debug, Clone, Serialize)]
pub struct Merge {
    /// Its number.
    pub id: i64,
    /// The patient merged away (Patient id).
    pub source: String,
    /// The patient kept (Patient id).
    pub target: String,
    /// `merged`, or `unmerged` once undone.
    pub state: String,
    /// What was rewritten (JSON list of `[type, id, version before, version after]`),
    /// for undoing it.
    pub changes: Value,
    /// Why the merge was made.
    pub reason: Option<String>,
    /// Who merged.
    pub by_user: String,
    /// When.
    pub at: Timestamp,
    /// Who undid it.
    pub undone_by: Option<String>,
    /// When it was undone.
    pub undone_at: Option<Timestamp>,
    /// Who reviewed it.
    pub reviewed_by: Option<String>,
    /// When it was reviewed.
    pub reviewed_at: Option<Timestamp>,
    /// The reviewer's note.
    pub review: Option<String>,
}

const MERGE_COLS: &str =
    "id, source, target, state, changes, reason, by_user, at, undone_by, undone_at, reviewed_by, reviewed_at, review";

fn merge_row(r: &Row) -> Result<Merge> {
    Ok(Merge {
        id: r.i64(0)?,
        source: r.text(1)?,
        target: r.text(2)?,
        state: r.text(3)?,
        changes: json_col(r, 4)?,
        reason: r.opt_text(5)?,
        by_user: r.text(6)?,
        at: Timestamp(r.i64(7)?),
        undone_by: r.opt_text(8)?,
        undone_at: r.opt_i64(9)?.map(Timestamp),
        reviewed_by: r.opt_text(10)?,
        reviewed_at: r.opt_i64(11)?.map(Timestamp),
        review: r.opt_text(12)?,
    })
}

/// Records a merge of `source` into `target` and returns its number.
pub fn insert_merge(
    c: &mut dyn Conn,
    source: &str,
    target: &str,
    changes: &Value,
    reason: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO merges (source, target, state, changes, reason, by_user, at) VALUES ($1, $2, 'merged', $3, $4, $5, $6) RETURNING id",
            p![source, target, changes.to_string(), reason, by, now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// The merge with this number.
pub fn merge(c: &mut dyn Conn, id: i64) -> Result<Option<Merge>> {
    c.query_one(&format!("SELECT {MERGE_COLS} FROM merges WHERE id = $1"), p![id])?.map(|r| merge_row(&r)).transpose()
}

/// The newest `limit` merges, optionally only those involving one patient.
pub fn merges(c: &mut dyn Conn, patient: Option<&str>, limit: usize) -> Result<Vec<Merge>> {
    c.query(
        &format!("SELECT {MERGE_COLS} FROM merges WHERE (CAST($1 AS TEXT) IS NULL OR source = $1 OR target = $1) ORDER BY id DESC LIMIT $2"),
        p![patient, limit],
    )?
    .iter()
    .map(merge_row)
    .collect()
}

/// Records that a merge was undone; `false` if it already was.
pub fn mark_unmerged(c: &mut dyn Conn, id: i64, by: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE merges SET state = 'unmerged', undone_by = $2, undone_at = $3 WHERE id = $1 AND state = 'merged'",
        p![id, by, now.micros()],
    )? > 0)
}

/// Records the review of a merge; `false` if it was already reviewed.
pub fn review_merge(c: &mut dyn Conn, id: i64, by: &str, note: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE merges SET reviewed_by = $2, reviewed_at = $3, review = $4 WHERE id = $1 AND reviewed_at IS NULL",
        p![id, by, now.micros(), note],
    )? > 0)
}

// ---- snapshot keys and files ----------------------------------------------------------

/// A snapshot key: the public half in clear, the private half sealed under
/// a secret split among custodians.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotKey {
    /// Its id.
    pub id: String,
    /// When it was made.
    pub created: Timestamp,
    /// Who made it.
    pub created_by: String,
    /// How many custodians' shares open the private key.
    pub threshold: i64,
    /// The custodians' names (JSON list).
    pub custodians: Value,
    /// The public key (PEM) snapshots are encrypted to.
    pub public_pem: String,
    /// The sealed private key and its optional passphrase wrap (JSON).
    pub sealed: Value,
    /// Whether it is the key new snapshots use (only the newest is).
    pub active: bool,
}

const KEY_COLS: &str = "id, created, created_by, threshold, custodians, public_pem, sealed, active";

fn key_row(r: &Row) -> Result<SnapshotKey> {
    Ok(SnapshotKey {
        id: r.text(0)?,
        created: Timestamp(r.i64(1)?),
        created_by: r.text(2)?,
        threshold: r.i64(3)?,
        custodians: json_col(r, 4)?,
        public_pem: r.text(5)?,
        sealed: json_col(r, 6)?,
        active: r.bool(7)?,
    })
}

/// Stores a new key and makes it the only active one.
pub fn insert_key(c: &mut dyn Conn, k: &SnapshotKey) -> Result<()> {
    c.exec("UPDATE snapshot_keys SET active = 0", p![])?;
    c.exec(
        &format!("INSERT INTO snapshot_keys ({KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, 1)"),
        p![
            k.id.as_str(),
            k.created.micros(),
            k.created_by.as_str(),
            k.threshold,
            k.custodians.to_string(),
            k.public_pem.as_str(),
            k.sealed.to_string()
        ],
    )?;
    Ok(())
}

/// The key new snapshots use.
pub fn active_key(c: &mut dyn Conn) -> Result<Option<SnapshotKey>> {
    c.query_one(&format!("SELECT {KEY_COLS} FROM snapshot_keys WHERE active = 1"), p![])?
        .map(|r| key_row(&r))
        .transpose()
}

/// Every key, newest first.
pub fn keys(c: &mut dyn Conn) -> Result<Vec<SnapshotKey>> {
    c.query(&format!("SELECT {KEY_COLS} FROM snapshot_keys ORDER BY created DESC"), p![])?.iter().map(key_row).collect()
}

/// A snapshot written for standalone nodes.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotFile {
    /// Its id.
    pub id: String,
    /// When it was written.
    pub created: Timestamp,
    /// Where it was written (the file's path).
    pub file: String,
    /// The file's size in bytes.
    pub bytes: i64,
    /// The file's SHA-256 (hex).
    pub sha256: String,
    /// How many patients it holds.
    pub patients: i64,
    /// How many resources it holds.
    pub resources: i64,
    /// The id of the snapshot key it is encrypted to.
    pub key_id: String,
    /// Who made it.
    pub by_user: String,
}

/// Records a snapshot written.
pub fn insert_snapshot(c: &mut dyn Conn, s: &SnapshotFile) -> Result<()> {
    c.exec(
        "INSERT INTO snapshots (id, created, file, bytes, sha256, patients, resources, key_id, by_user) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        p![s.id.as_str(), s.created.micros(), s.file.as_str(), s.bytes, s.sha256.as_str(), s.patients, s.resources, s.key_id.as_str(), s.by_user.as_str()],
    )?;
    Ok(())
}

/// The newest `limit` snapshots.
pub fn snapshots(c: &mut dyn Conn, limit: usize) -> Result<Vec<SnapshotFile>> {
    c.query(
        "SELECT id, created, file, bytes, sha256, patients, resources, key_id, by_user FROM snapshots ORDER BY created DESC LIMIT $1",
        p![limit],
    )?
    .iter()
    .map(|r| {
        Ok(SnapshotFile {
            id: r.text(0)?,
            created: Timestamp(r.i64(1)?),
            file: r.text(2)?,
            bytes: r.i64(3)?,
            sha256: r.text(4)?,
            patients: r.i64(5)?,
            resources: r.i64(6)?,
            key_id: r.text(7)?,
            by_user: r.text(8)?,
        })
    })
    .collect()
}

// ---- standalone nodes ------------------------------------------------------------------

/// What a standalone node is: its identity and where its data came from.
#[derive(Debug, Clone, Serialize)]
pub struct Standalone {
    /// The node's id (in its provisional patient ids).
    pub node: String,
    /// The id of the snapshot it started from.
    pub snapshot: String,
    /// The institution whose snapshot it is.
    pub institution: String,
    /// The id of the snapshot key the snapshot was encrypted to.
    pub key_id: String,
    /// When the node was set up.
    pub created: Timestamp,
}

/// This node's standalone identity, if it is a standalone node.
pub fn standalone(c: &mut dyn Conn) -> Result<Option<Standalone>> {
    c.query_one("SELECT node, snapshot, institution, key_id, created FROM standalone", p![])?
        .map(|r| {
            Ok(Standalone {
                node: r.text(0)?,
                snapshot: r.text(1)?,
                institution: r.text(2)?,
                key_id: r.text(3)?,
                created: Timestamp(r.i64(4)?),
            })
        })
        .transpose()
}

/// Records this node's standalone identity (once, when it is set up).
pub fn set_standalone(c: &mut dyn Conn, s: &Standalone) -> Result<()> {
    c.exec(
        "INSERT INTO standalone (node, snapshot, institution, key_id, created) VALUES ($1, $2, $3, $4, $5)",
        p![s.node.as_str(), s.snapshot.as_str(), s.institution.as_str(), s.key_id.as_str(), s.created.micros()],
    )?;
    Ok(())
}

/// Records the version of a resource the snapshot brought: `central` at the
/// centre, `local` on this node.
pub fn add_reference(c: &mut dyn Conn, rtype: &str, id: &str, central: u64, local: u64) -> Result<()> {
    c.exec(
        "INSERT INTO reference_resources (rtype, id, central_version, local_version) VALUES ($1, $2, $3, $4)",
        p![rtype, id, central, local],
    )?;
    Ok(())
}

/// The snapshot's version of a resource on this node: (central, local).
pub fn reference(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<Option<(u64, u64)>> {
    c.query_one(
        "SELECT central_version, local_version FROM reference_resources WHERE rtype = $1 AND id = $2",
        p![rtype, id],
    )?
    .map(|r| Ok((r.u64(0)?, r.u64(1)?)))
    .transpose()
}

// ---- reconciliation ---------------------------------------------------------------------

/// The report of the import of export `id`, if it was imported.
pub fn import_report(c: &mut dyn Conn, id: &str) -> Result<Option<Value>> {
    c.query_one("SELECT report FROM reconcile_imports WHERE id = $1", p![id])?.map(|r| json_col(&r, 0)).transpose()
}

/// Records the import of a node's export, with its report.
pub fn insert_import(c: &mut dyn Conn, id: &str, node: &str, by: &str, report: &Value, now: Timestamp) -> Result<()> {
    c.exec(
        "INSERT INTO reconcile_imports (id, node, imported_at, by_user, report) VALUES ($1, $2, $3, $4, $5)",
        p![id, node, now.micros(), by, report.to_string()],
    )?;
    Ok(())
}

/// The reports of the newest `limit` imports.
pub fn imports(c: &mut dyn Conn, limit: usize) -> Result<Vec<Value>> {
    c.query("SELECT report FROM reconcile_imports ORDER BY imported_at DESC LIMIT $1", p![limit])?
        .iter()
        .map(|r| json_col(r, 0))
        .collect()
}

/// A reconciliation task: an offline entry a person must look at.
#[derive(Debug, Clone, Serialize)]
pub struct Task {
    /// Its number.
    pub id: i64,
    /// The id of the export the entry came in.
    pub import: String,
    /// `conflict`, `match` (a provisional patient to match) or `unknown_patient`.
    pub kind: String,
    /// The resource type of the entry.
    pub rtype: String,
    /// The resource id of the entry.
    pub rid: String,
    /// `open` or `resolved`.
    pub state: String,
    /// What the task is about (JSON: the offline version, the reason,
    /// suggestions).
    pub detail: Value,
    /// How it was resolved (JSON).
    pub resolution: Option<Value>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// When it was resolved.
    pub resolved_at: Option<Timestamp>,
    /// When it was created.
    pub created: Timestamp,
}

const TASK_COLS: &str = "id, import, kind, rtype, rid, state, detail, resolution, resolved_by, resolved_at, created";

fn task_row(r: &Row) -> Result<Task> {
    Ok(Task {
        id: r.i64(0)?,
        import: r.text(1)?,
        kind: r.text(2)?,
        rtype: r.text(3)?,
        rid: r.text(4)?,
        state: r.text(5)?,
        detail: json_col(r, 6)?,
        resolution: r.opt_text(7)?.and_then(|s| serde_json::from_str(&s).ok()),
        resolved_by: r.opt_text(8)?,
        resolved_at: r.opt_i64(9)?.map(Timestamp),
        created: Timestamp(r.i64(10)?),
    })
}

/// Records an open task and returns its number.
#[allow(clippy::too_many_arguments)]
pub fn insert_task(
    c: &mut dyn Conn,
    import: &str,
    kind: &str,
    rtype: &str,
    rid: &str,
    detail: &Value,
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO reconcile_tasks (import, kind, rtype, rid, state, detail, created) VALUES ($1, $2, $3, $4, 'open', $5, $6) RETURNING id",
            p![import, kind, rtype, rid, detail.to_string(), now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// The task with this number.
pub fn task(c: &mut dyn Conn, id: i64) -> Result<Option<Task>> {
    c.query_one(&format!("SELECT {TASK_COLS} FROM reconcile_tasks WHERE id = $1"), p![id])?
        .map(|r| task_row(&r))
        .transpose()
}

/// The first `limit` tasks, optionally only those in one state.
pub fn tasks(c: &mut dyn Conn, state: Option<&str>, limit: usize) -> Result<Vec<Task>> {
    c.query(
        &format!("SELECT {TASK_COLS} FROM reconcile_tasks WHERE (CAST($1 AS TEXT) IS NULL OR state = $1) ORDER BY id LIMIT $2"),
        p![state, limit],
    )?
    .iter()
    .map(task_row)
    .collect()
}

/// How many tasks are open.
pub fn open_tasks(c: &mut dyn Conn) -> Result<i64> {
    Ok(c.query_one("SELECT COUNT(*) FROM reconcile_tasks WHERE state = 'open'", p![])?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0))
}

/// Resolves an open task; `false` if it was not open.
pub fn resolve_task(c: &mut dyn Conn, id: i64, resolution: &Value, by: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE reconcile_tasks SET state = 'resolved', resolution = $2, resolved_by = $3, resolved_at = $4 WHERE id = $1 AND state = 'open'",
        p![id, resolution.to_string(), by, now.micros()],
    )? > 0)
}

/// Current, non-deleted patients that carry an identifier of `system`.
pub fn patients_with_identifier_system(c: &mut dyn Conn, system: &str) -> Result<Vec<String>> {
    c.query(
        "SELECT DISTINCT r.id FROM idx_token t JOIN resources r ON r.rtype = 'Patient' AND r.id = t.id \
         WHERE t.rtype = 'Patient' AND t.param = 'identifier' AND t.system = $1 AND r.deleted = 0 ORDER BY r.id",
        p![system],
    )?
    .iter()
    .map(|r| Ok(r.text(0)?))
    .collect()
}

/// The current (not deleted) patients with an identifier of this value,
/// in any system (a medical record number as staff type it).
pub fn patients_with_identifier(c: &mut dyn Conn, value: &str) -> Result<Vec<String>> {
    c.query(
        "SELECT DISTINCT r.id FROM idx_token t JOIN resources r ON r.rtype = 'Patient' AND r.id = t.id \
         WHERE t.rtype = 'Patient' AND t.param = 'identifier' AND t.code = $1 AND r.deleted = 0 ORDER BY r.id LIMIT 10",
        p![value],
    )?
    .iter()
    .map(|r| Ok(r.text(0)?))
    .collect()
}

/// Every current resource that refers to, or belongs to, `Patient/<id>`
/// (other than the patient itself).
pub fn referrers(c: &mut dyn Conn, patient: &str) -> Result<Vec<(String, String)>> {
    c.query(
        "SELECT rtype, id FROM resources WHERE patient = $1 AND deleted = 0 AND NOT (rtype = 'Patient' AND id = $1) \
         UNION SELECT i.rtype, i.id FROM idx_ref i JOIN resources r ON r.rtype = i.rtype AND r.id = i.id AND r.deleted = 0 \
         WHERE i.target_type = 'Patient' AND i.target_id = $1 AND NOT (i.rtype = 'Patient' AND i.id = $1) ORDER BY 1, 2",
        p![patient],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?)))
    .collect()
}

/// The last local version of a node's resource applied centrally: (local, central).
pub fn applied(c: &mut dyn Conn, node: &str, rtype: &str, id: &str) -> Result<Option<(u64, u64)>> {
    c.query_one(
        "SELECT local_version, central_version FROM reconcile_applied WHERE node = $1 AND rtype = $2 AND id = $3",
        p![node, rtype, id],
    )?
    .map(|r| Ok((r.u64(0)?, r.u64(1)?)))
    .transpose()
}

/// Records the last local version of a node's resource applied centrally,
/// and the central version it became.
pub fn set_applied(c: &mut dyn Conn, node: &str, rtype: &str, id: &str, local: u64, central: u64) -> Result<()> {
    c.exec(
        "INSERT INTO reconcile_applied (node, rtype, id, local_version, central_version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (node, rtype, id) DO UPDATE SET local_version = $4, central_version = $5",
        p![node, rtype, id, local, central],
    )?;
    Ok(())
}
