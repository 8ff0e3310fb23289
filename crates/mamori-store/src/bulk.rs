//! FHIR Bulk Data export jobs and their output files.

use mamori_core::time::Timestamp;
use serde::Serialize;

use crate::p;
use crate::sql::Conn;
use crate::Result;

/// An export job.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    /// Its id (random; in the status URL).
    pub id: String,
    /// The user name that asked.
    pub owner: String,
    /// The token it asked with (id).
    pub token: Option<String>,
    /// The kick-off URL as asked.
    pub request: String,
    /// The parsed request (JSON).
    pub params: String,
    /// `queued`, `running`, `complete`, `failed` or `cancelled`.
    pub state: String,
    /// Nothing stored after this is exported.
    pub tx_time: Timestamp,
    /// When it was asked for.
    pub created: Timestamp,
    /// When it finished.
    pub finished: Option<Timestamp>,
    /// When its output is removed.
    pub expires: Option<Timestamp>,
    /// How far it got (for `X-Progress`).
    pub progress: Option<String>,
    /// Counts (JSON), once complete.
    pub summary: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One output file, without its body.
#[derive(Debug, Clone, Serialize)]
pub struct FileRow {
    /// Its number in the export.
    pub n: i64,
    /// The type of its resources.
    pub rtype: String,
    /// Its resources (lines).
    pub count: i64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

const COLUMNS: &str =
    "id, owner, token, request, params, state, tx_time, created_at, finished_at, expires_at, progress, summary, error";

fn job(r: &crate::sql::Row) -> Result<Job> {
    Ok(Job {
        id: r.text(0)?,
        owner: r.text(1)?,
        token: r.opt_text(2)?,
        request: r.text(3)?,
        params: r.text(4)?,
        state: r.text(5)?,
        tx_time: Timestamp(r.i64(6)?),
        created: Timestamp(r.i64(7)?),
        finished: r.opt_i64(8)?.map(Timestamp),
        expires: r.opt_i64(9)?.map(Timestamp),
        progress: r.opt_text(10)?,
        summary: r.opt_text(11)?,
        error: r.opt_text(12)?,
    })
}

/// Records a new job, queued.
pub fn insert(c: &mut dyn Conn, j: &Job) -> Result<()> {
    c.exec(
        "INSERT INTO bulk_exports (id, owner, token, request, params, state, tx_time, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $7)",
        p![
            j.id.as_str(),
            j.owner.as_str(),
            j.token.as_deref(),
            j.request.as_str(),
            j.params.as_str(),
            j.tx_time.micros(),
            j.created.micros()
        ],
    )?;
    Ok(())
}

/// A job.
pub fn get(c: &mut dyn Conn, id: &str) -> Result<Option<Job>> {
    let sql = format!("SELECT {COLUMNS} FROM bulk_exports WHERE id = $1");
    c.query_one(&sql, p![id])?.map(|r| job(&r)).transpose()
}

/// The owner's jobs that are not finished.
pub fn active_of(c: &mut dyn Conn, owner: &str) -> Result<u64> {
    let r = c.query_one(
        "SELECT COUNT(*) FROM bulk_exports WHERE owner = $1 AND state IN ('queued', 'running')",
        p![owner],
    )?;
    Ok(r.map(|r| r.u64(0)).transpose()?.unwrap_or(0))
}

/// Whether any job is queued (a read, before a claim is worth a write).
pub fn any_queued(c: &mut dyn Conn) -> Result<bool> {
    Ok(c.query_one("SELECT 1 FROM bulk_exports WHERE state = 'queued' LIMIT 1", p![])?.is_some())
}

/// Claims the oldest queued job (it becomes `running`).
pub fn claim(c: &mut dyn Conn, now: Timestamp) -> Result<Option<Job>> {
    let sql = format!("SELECT {COLUMNS} FROM bulk_exports WHERE state = 'queued' ORDER BY created_at LIMIT 1");
    let Some(j) = c.query_one(&sql, p![])?.map(|r| job(&r)).transpose()? else {
        return Ok(None);
    };
    let n = c.exec(
        "UPDATE bulk_exports SET state = 'running', updated_at = $2, progress = NULL WHERE id = $1 AND state = 'queued'",
        p![j.id.as_str(), now.micros()],
    )?;
    Ok((n == 1).then_some(Job { state: "running".into(), ..j }))
}

/// Puts jobs a stopped server was running back in the queue, their
/// partial output removed: they start again from the beginning.
pub fn requeue_interrupted(c: &mut dyn Conn, now: Timestamp) -> Result<usize> {
    c.exec(
        "DELETE FROM bulk_export_files WHERE export_id IN (SELECT id FROM bulk_exports WHERE state = 'running')",
        p![],
    )?;
    Ok(c.exec(
        "UPDATE bulk_exports SET state = 'queued', updated_at = $1, progress = NULL WHERE state = 'running'",
        p![now.micros()],
    )?)
}

/// Records progress; false if the job is no longer running (cancelled).
pub fn set_progress(c: &mut dyn Conn, id: &str, progress: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE bulk_exports SET progress = $2, updated_at = $3 WHERE id = $1 AND state = 'running'",
        p![id, progress, now.micros()],
    )? == 1)
}

/// Stores an output file; false if the job is no longer running.
pub fn add_file(
    c: &mut dyn Conn,
    id: &str,
    n: i64,
    rtype: &str,
    count: i64,
    sha256: &str,
    body: &[u8],
) -> Result<bool> {
    if get(c, id)?.is_none_or(|j| j.state != "running") {
        return Ok(false);
    }
    c.exec(
        "INSERT INTO bulk_export_files (export_id, n, rtype, count, sha256, body) VALUES ($1, $2, $3, $4, $5, $6)",
        p![id, n, rtype, count, sha256, body],
    )?;
    Ok(true)
}

/// Marks a running job complete; false if it is no longer running.
pub fn complete(c: &mut dyn Conn, id: &str, summary: &str, now: Timestamp, expires: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE bulk_exports SET state = 'complete', summary = $2, finished_at = $3, updated_at = $3, expires_at = $4, \
         progress = NULL WHERE id = $1 AND state = 'running'",
        p![id, summary, now.micros(), expires.micros()],
    )? == 1)
}

/// Marks a job failed, its partial output removed.
pub fn fail(c: &mut dyn Conn, id: &str, error: &str, now: Timestamp, expires: Timestamp) -> Result<()> {
    c.exec("DELETE FROM bulk_export_files WHERE export_id = $1", p![id])?;
    c.exec(
        "UPDATE bulk_exports SET state = 'failed', error = $2, finished_at = $3, updated_at = $3, expires_at = $4 \
         WHERE id = $1 AND state IN ('queued', 'running')",
        p![id, error, now.micros(), expires.micros()],
    )?;
    Ok(())
}

/// Cancels a job (or removes a finished one's output): the job is kept as
/// `cancelled` for the record, its output is deleted. False if unknown.
pub fn cancel(c: &mut dyn Conn, id: &str, now: Timestamp) -> Result<bool> {
    c.exec("DELETE FROM bulk_export_files WHERE export_id = $1", p![id])?;
    Ok(c.exec(
        "UPDATE bulk_exports SET state = 'cancelled', finished_at = COALESCE(finished_at, $2), updated_at = $2, \
         expires_at = $2, progress = NULL WHERE id = $1 AND state <> 'cancelled'",
        p![id, now.micros()],
    )? == 1)
}

/// Removes the output of jobs past their expiry; returns how many jobs.
pub fn expire(c: &mut dyn Conn, now: Timestamp) -> Result<usize> {
    c.exec(
        "DELETE FROM bulk_export_files WHERE export_id IN \
         (SELECT id FROM bulk_exports WHERE expires_at IS NOT NULL AND expires_at <= $1)",
        p![now.micros()],
    )?;
    Ok(c.exec(
        "UPDATE bulk_exports SET state = 'expired', updated_at = $1 \
         WHERE expires_at IS NOT NULL AND expires_at <= $1 AND state IN ('complete', 'failed')",
        p![now.micros()],
    )?)
}

/// The output files of a job, in order.
pub fn files(c: &mut dyn Conn, id: &str) -> Result<Vec<FileRow>> {
    c.query("SELECT n, rtype, count, sha256 FROM bulk_export_files WHERE export_id = $1 ORDER BY n", p![id])?
        .iter()
        .map(|r| Ok(FileRow { n: r.i64(0)?, rtype: r.text(1)?, count: r.i64(2)?, sha256: r.text(3)? }))
        .collect()
}

/// One output file and its bytes.
pub fn file(c: &mut dyn Conn, id: &str, n: i64) -> Result<Option<(FileRow, Vec<u8>)>> {
    match c.query_one(
        "SELECT n, rtype, count, sha256, body FROM bulk_export_files WHERE export_id = $1 AND n = $2",
        p![id, n],
    )? {
        Some(r) => {
            Ok(Some((FileRow { n: r.i64(0)?, rtype: r.text(1)?, count: r.i64(2)?, sha256: r.text(3)? }, r.blob(4)?)))
        }
        None => Ok(None),
    }
}

/// Those of `types` that have a current, not deleted resource stored
/// (one index probe per type).
pub fn stored_types(c: &mut dyn Conn, types: &[&'static str]) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for t in types {
        if c.query_one("SELECT 1 FROM resources WHERE rtype = $1 AND deleted = 0 LIMIT 1", p![*t])?.is_some() {
            out.push(*t);
        }
    }
    Ok(out)
}

/// Resources of `rtype` deleted after `since` and not after `until`, as
/// the version before each deletion (whose patients decide who may learn
/// of it), in id order.
pub fn deleted_between(
    c: &mut dyn Conn,
    rtype: &str,
    since: Timestamp,
    until: Timestamp,
) -> Result<Vec<crate::records::Version>> {
    let rows = c.query(
        "SELECT id, version FROM resources WHERE rtype = $1 AND deleted = 1 AND last_updated > $2 AND last_updated <= $3 ORDER BY id",
        p![rtype, since.micros(), until.micros()],
    )?;
    let mut out = Vec::new();
    for r in rows.iter() {
        let (id, version) = (r.text(0)?, r.i64(1)?);
        if version > 1 {
            if let Some(v) = crate::records::vread(c, rtype, &id, (version - 1) as u64)? {
                out.push(v);
            }
        }
    }
    Ok(out)
}
