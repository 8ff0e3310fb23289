//! FHIR resources in the database: versions, the current pointer, and the
//! search index, written through any [`Conn`].
//!
//! Every write adds a version (an update adds one, a delete adds a
//! tombstone); nothing here ever updates or deletes a stored version.

use std::collections::HashSet;

use mamori_audit::event::VersionDigest;
use mamori_core::fhir::compartment::{patients_named, references_in, resolved_through};
use mamori_core::fhir::search::{index_entries, index_entries_in, IndexEntry, IndexValue, SearchParams, CORE_PARAMS};
use mamori_core::fhir::validate::Issue;
use mamori_core::ids::{LocalRef, ResourceType};
use mamori_core::time::Timestamp;
use serde_json::{json, Value};

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{insert_rows, insert_rows_later, Conn, Row, Val};
use crate::writer::WriteCtx;

/// The current state of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// The current version number (1-based).
    pub version: u64,
    /// The current version's position in the global order of writes.
    pub seq: i64,
    /// When the current version was written.
    pub last_updated: Timestamp,
    /// Whether the current version is a tombstone.
    pub deleted: bool,
    /// Whose data it is (fhir::compartment), the primary patient first.
    pub patients: Vec<String>,
}

/// One stored version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// The version's position in the global order of writes (unique,
    /// increasing).
    pub seq: i64,
    /// The resource type.
    pub rtype: String,
    /// The resource id.
    pub id: String,
    /// The version number (1-based).
    pub version: u64,
    /// When it was written.
    pub last_updated: Timestamp,
    /// Whether it is a tombstone.
    pub deleted: bool,
    /// Whose data this version is, the primary patient first.
    pub patients: Vec<String>,
    /// Who wrote it (user name).
    pub author: String,
    /// The JSON text; empty for a tombstone.
    pub body: String,
}

impl Version {
    /// The primary patient, if the version is patient data.
    pub fn patient(&self) -> Option<&str> {
        self.patients.first().map(String::as_str)
    }
}

/// The columns of [`version_row`], qualified by `alias` (`v.` or empty).
fn version_cols(alias: &str) -> String {
    ["seq", "rtype", "id", "version", "last_updated", "deleted", "patient", "other_patients", "author", "body"]
        .iter()
        .map(|c| format!("{alias}{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The patients of a version from its two columns.
fn patients_of(primary: Option<String>, others: Option<String>) -> Vec<String> {
    primary.into_iter().chain(others.iter().flat_map(|o| o.split(' ').map(str::to_owned))).collect()
}

/// Decodes the columns of [`version_cols`].
pub(crate) fn version_row(r: &Row) -> Result<Version> {
    Ok(Version {
        seq: r.i64(0)?,
        rtype: r.text(1)?,
        id: r.text(2)?,
        version: r.u64(3)?,
        last_updated: Timestamp(r.i64(4)?),
        deleted: r.bool(5)?,
        patients: patients_of(r.opt_text(6)?, r.opt_text(7)?),
        author: r.text(8)?,
        body: r.text(9)?,
    })
}

pub(crate) const VERSION_SELECT_COLUMNS: &str =
    "v.seq, v.rtype, v.id, v.version, v.last_updated, v.deleted, v.patient, v.other_patients, v.author, v.body";

/// The current state of `rtype/id`, if it ever existed.
pub fn current(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<Option<Current>> {
    c.query_one(
        "SELECT r.version, r.seq, r.last_updated, r.deleted, v.patient, v.other_patients FROM resources r \
         JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = $1 AND r.id = $2",
        p![rtype, id],
    )?
    .map(|r| {
        Ok(Current {
            version: r.u64(0)?,
            seq: r.i64(1)?,
            last_updated: Timestamp(r.i64(2)?),
            deleted: r.bool(3)?,
            patients: patients_of(r.opt_text(4)?, r.opt_text(5)?),
        })
    })
    .transpose()
}

/// Every patient any version of a resource was the data of (its history
/// reveals them all).
pub fn history_patients(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in c.query(
        "SELECT DISTINCT patient, other_patients FROM resource_versions WHERE rtype = $1 AND id = $2",
        p![rtype, id],
    )? {
        for p in patients_of(r.opt_text(0)?, r.opt_text(1)?) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether any resource other than the Patient itself is in the
/// patient's compartment (which holds no row for the Patient) (a Patient id with records is never "new").
pub fn has_records(c: &mut dyn Conn, patient: &str) -> Result<bool> {
    Ok(c.query_one("SELECT 1 FROM resource_compartments WHERE patient = $1 LIMIT 1", p![patient])?.is_some())
}

/// Whose data a resource is: the patients it names and, for a type
/// resolved through its targets (Provenance), the targets' patients.
pub fn compartment_of(c: &mut dyn Conn, rtype: ResourceType, id: &str, body: &Value) -> Result<Vec<String>> {
    let mut out = patients_named(rtype, id, body);
    if let Some(element) = resolved_through(rtype) {
        for target in references_in(body, element) {
            if let Some(cur) = current(c, target.rtype.as_str(), target.id.as_str())? {
                for p in cur.patients {
                    if !out.contains(&p) {
                        out.push(p);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The current version (including a tombstone), if the resource exists.
pub fn read(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<Option<Version>> {
    let sql = format!(
        "SELECT {VERSION_SELECT_COLUMNS} FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = $1 AND r.id = $2"
    );
    c.query_one(&sql, p![rtype, id])?.map(|r| version_row(&r)).transpose()
}

/// Version `version` of `rtype/id` (`vread`), if it exists.
pub fn vread(c: &mut dyn Conn, rtype: &str, id: &str, version: u64) -> Result<Option<Version>> {
    let sql =
        format!("SELECT {} FROM resource_versions WHERE rtype = $1 AND id = $2 AND version = $3", version_cols(""));
    c.query_one(&sql, p![rtype, id, version])?.map(|r| version_row(&r)).transpose()
}

/// History, newest first: of one resource, of a type, or of everything.
/// `before_seq` pages backwards; `since` filters on last-updated.
/// `restrict` limits the versions to patients in the caller's care.
pub fn history(
    c: &mut dyn Conn,
    rtype: Option<&str>,
    id: Option<&str>,
    since: Option<Timestamp>,
    before_seq: Option<i64>,
    limit: usize,
    restrict: &crate::search::Restriction,
) -> Result<Vec<Version>> {
    use crate::search::Restriction;
    let (reference_only, user, dept, now, only) = match restrict {
        Restriction::None => (false, None, None, None, None),
        Restriction::ReferenceDataOnly => (true, None, None, None, None),
        Restriction::CareOf { user, department, now } => {
            (false, Some(user.as_str()), department.as_deref(), Some(now.micros()), None)
        }
        Restriction::Patient(p) => (false, None, None, None, Some(p.as_str())),
    };
    // Across patients, a version naming several patients is left out (its
    // other patients are not checked here): never too much, at worst too
    // little, and an instance history decides on every patient.
    let sql = format!(
        "SELECT {} FROM resource_versions WHERE (CAST($1 AS TEXT) IS NULL OR rtype = $1) AND (CAST($2 AS TEXT) IS NULL OR id = $2) \
         AND (CAST($3 AS BIGINT) IS NULL OR last_updated >= $3) AND (CAST($4 AS BIGINT) IS NULL OR seq < $4) \
         AND ($9 = 0 OR patient IS NULL) \
         AND (CAST($6 AS TEXT) IS NULL OR patient IS NULL OR (other_patients IS NULL AND patient IN (SELECT patient FROM care_assignments WHERE (user_name = $6 OR (CAST($7 AS TEXT) IS NOT NULL AND department = $7)) \
              AND start <= $8 AND (ended IS NULL OR ended > $8)))) \
         AND (CAST($10 AS TEXT) IS NULL OR patient IS NULL OR (other_patients IS NULL AND patient = $10)) \
         ORDER BY seq DESC LIMIT $5",
        version_cols("")
    );
    c.query(&sql, p![rtype, id, since.map(|t| t.micros()), before_seq, limit, user, dept, now, reference_only, only])?
        .iter()
        .map(version_row)
        .collect()
}

/// Versions of a patient's compartment, for `$everything` and snapshots:
/// current, non-deleted resources, ordered by (type, id).
pub fn compartment(c: &mut dyn Conn, patient: &str, after: Option<(&str, &str)>, limit: usize) -> Result<Vec<Version>> {
    let (at, ai) = after.unwrap_or(("", ""));
    c.query(&compartment_sql(), p![patient, at, ai, limit])?.iter().map(version_row).collect()
}

/// The statement of [`compartment`] (patient, after type, after id, limit).
pub fn compartment_sql() -> String {
    format!(
        "SELECT {VERSION_SELECT_COLUMNS} FROM \
         (SELECT rtype, id FROM resource_compartments WHERE patient = $1 UNION ALL SELECT 'Patient', $1) rc \
         JOIN resources r ON r.rtype = rc.rtype AND r.id = rc.id JOIN resource_versions v ON v.seq = r.seq \
         WHERE r.deleted = 0 AND (rc.rtype > $2 OR (rc.rtype = $2 AND rc.id > $3)) \
         ORDER BY rc.rtype, rc.id LIMIT $4"
    )
}

/// The result of a write.
#[derive(Debug, Clone)]
pub struct Written {
    /// The resource type.
    pub rtype: ResourceType,
    /// The resource id.
    pub id: String,
    /// The new version number.
    pub version: u64,
    /// When it was written.
    pub last_updated: Timestamp,
    /// Whose data the new version is.
    pub patients: Vec<String>,
    /// Patients of the previous version that the new one no longer names.
    pub previous_patients: Vec<String>,
    /// No version of this resource existed before (not even a tombstone).
    pub first: bool,
    /// The resource did not exist before, or was deleted (HTTP 201 rather
    /// than 200).
    pub created: bool,
    /// The new version is a tombstone.
    pub deleted: bool,
    /// The stored JSON text (empty for a tombstone).
    pub body: String,
}

/// Stores a new version of `rtype/id`. `body` must be validated; its id
/// and meta are set here. `expected` is the `If-Match` version, if any.
/// The job's next audit event binds the stored bytes (their SHA-256).
pub fn put(
    w: &mut WriteCtx<'_>,
    rtype: ResourceType,
    id: &str,
    body: Value,
    expected: Option<u64>,
    author: &str,
    now: Timestamp,
) -> Result<Written> {
    let prev = current(w.conn, rtype.as_str(), id)?;
    let patients = compartment_of(w.conn, rtype, id, &body)?;
    put_known(w, rtype, id, body, expected, author, now, Known { prev, patients })
}

/// What a caller of [`put_known`] already looked up, in the same
/// transaction, about the resource it writes.
#[derive(Debug, Clone)]
pub struct Known {
    /// [`current`] of the resource.
    pub prev: Option<Current>,
    /// [`compartment_of`] the new body.
    pub patients: Vec<String>,
}

/// As [`put`], with the lookups the caller made already (a write decided
/// on them does not repeat them).
#[allow(clippy::too_many_arguments)]
pub fn put_known(
    w: &mut WriteCtx<'_>,
    rtype: ResourceType,
    id: &str,
    mut body: Value,
    expected: Option<u64>,
    author: &str,
    now: Timestamp,
    known: Known,
) -> Result<Written> {
    let Known { prev, patients } = known;
    if let Some(exp) = expected {
        let cur = prev.as_ref().map_or(0, |p| p.version);
        if cur != exp {
            return Err(StoreError::VersionConflict { expected: exp, current: cur });
        }
    }
    let version = prev.as_ref().map_or(1, |p| p.version + 1);
    let obj = body.as_object_mut().ok_or_else(|| StoreError::invalid("", "a resource must be a JSON object"))?;
    obj.insert("id".into(), Value::String(id.to_owned()));
    let mut meta = obj.remove("meta").filter(Value::is_object).unwrap_or_else(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert("versionId".into(), Value::String(version.to_string()));
        m.insert("lastUpdated".into(), Value::String(now.to_rfc3339()));
    }
    obj.insert("meta".into(), meta);
    let text = serde_json::to_string(&body).map_err(|e| StoreError::Internal(e.to_string()))?;
    let before = prev.as_ref().map(|p| p.patients.as_slice()).unwrap_or_default();
    write_version(w.conn, rtype, id, version, now, false, &patients, before, author, &text, prev.is_some())?;
    let search = w.search_params();
    reindex(w.conn, &search, rtype, id, Some(&body), prev.as_ref().is_some_and(|p| !p.deleted))?;
    w.stored(VersionDigest::of(rtype.as_str(), id, version, text.as_bytes()));
    let previous_patients = before.iter().filter(|p| !patients.contains(p)).cloned().collect();
    Ok(Written {
        rtype,
        id: id.to_owned(),
        version,
        last_updated: now,
        patients,
        previous_patients,
        first: prev.is_none(),
        created: prev.as_ref().is_none_or(|p| p.deleted),
        deleted: false,
        body: text,
    })
}

/// Adds a tombstone version. Deleting a missing or already deleted
/// resource changes nothing and returns `None`.
pub fn delete(
    w: &mut WriteCtx<'_>,
    rtype: ResourceType,
    id: &str,
    author: &str,
    now: Timestamp,
) -> Result<Option<Written>> {
    let Some(prev) = current(w.conn, rtype.as_str(), id)? else {
        return Ok(None);
    };
    if prev.deleted {
        return Ok(None);
    }
    let version = prev.version + 1;
    write_version(w.conn, rtype, id, version, now, true, &prev.patients, &prev.patients, author, "", true)?;
    let search = w.search_params();
    reindex(w.conn, &search, rtype, id, None, true)?;
    w.stored(VersionDigest::of(rtype.as_str(), id, version, b""));
    Ok(Some(Written {
        rtype,
        id: id.to_owned(),
        version,
        last_updated: now,
        patients: prev.patients.clone(),
        previous_patients: Vec::new(),
        first: false,
        created: false,
        deleted: true,
        body: String::new(),
    }))
}

/// Binds up to `limit` of the versions stored before record binding
/// existed (migration 11) to the job's next audit event, oldest first.
/// Returns how many it bound: 0 when none are left (the markers are then
/// removed).
pub fn bind_stored_before_binding(w: &mut WriteCtx<'_>, limit: usize) -> Result<usize> {
    let meta = |c: &mut dyn Conn, k: &str| -> Result<Option<i64>> {
        match c.query_one("SELECT value FROM meta WHERE key = $1", p![k])? {
            Some(r) => {
                Ok(Some(r.text(0)?.parse().map_err(|_| StoreError::Internal(format!("meta {k} is not a number")))?))
            }
            None => Ok(None),
        }
    };
    let Some(upto) = meta(w.conn, UNBOUND_UPTO)? else { return Ok(0) };
    let after = meta(w.conn, UNBOUND_AFTER)?.unwrap_or(i64::MIN);
    let rows = w.conn.query(
        "SELECT seq, rtype, id, version, body FROM resource_versions WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
        p![after, upto, i64::try_from(limit).unwrap_or(i64::MAX)],
    )?;
    let Some(last) = rows.last().map(|r| r.i64(0)).transpose()? else {
        w.conn.exec("DELETE FROM meta WHERE key IN ($1, $2)", p![UNBOUND_UPTO, UNBOUND_AFTER])?;
        return Ok(0);
    };
    for r in &rows {
        w.stored(VersionDigest::of(&r.text(1)?, &r.text(2)?, r.u64(3)?, r.text(4)?.as_bytes()));
    }
    w.conn.exec(
        "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        p![UNBOUND_AFTER, last.to_string()],
    )?;
    Ok(rows.len())
}

/// The last version stored before record binding, until all are bound.
pub const UNBOUND_UPTO: &str = "records-unbound-upto";
/// How far the binding of those versions got.
const UNBOUND_AFTER: &str = "records-unbound-after";

#[allow(clippy::too_many_arguments)]
fn write_version(
    c: &mut dyn Conn,
    rtype: ResourceType,
    id: &str,
    version: u64,
    now: Timestamp,
    deleted: bool,
    patients: &[String],
    before: &[String],
    author: &str,
    body: &str,
    exists: bool,
) -> Result<()> {
    let patient = patients.first().map(String::as_str);
    let others = patients.get(1..).filter(|o| !o.is_empty()).map(|o| o.join(" "));
    const VERSION: &str = "INSERT INTO resource_versions (rtype, id, version, last_updated, deleted, patient, other_patients, author, body) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq";
    let params = p![rtype.as_str(), id, version, now.micros(), deleted, patient, others, author, body];
    if c.backend() == crate::sql::Backend::Postgres {
        // The version and the current pointer in one statement whose
        // answer is not needed: sent with the job's next round trip.
        let sql = if exists {
            format!(
                "WITH v AS ({VERSION}) UPDATE resources SET version = $3, seq = v.seq, last_updated = $4, deleted = $5, \
                 patient = $6 FROM v WHERE rtype = $1 AND id = $2"
            )
        } else {
            format!(
                "WITH v AS ({VERSION}) INSERT INTO resources (rtype, id, version, seq, last_updated, deleted, patient) \
                 SELECT $1, $2, $3, v.seq, $4, $5, $6 FROM v"
            )
        };
        c.exec_later(&sql, params)?;
    } else {
        let seq = c
            .query_one(VERSION, params)?
            .ok_or_else(|| StoreError::Internal("INSERT RETURNING gave no row".into()))?
            .i64(0)?;
        if exists {
            c.exec(
                "UPDATE resources SET version = $3, seq = $4, last_updated = $5, deleted = $6, patient = $7 WHERE rtype = $1 AND id = $2",
                p![rtype.as_str(), id, version, seq, now.micros(), deleted, patient],
            )?;
        } else {
            c.exec(
                "INSERT INTO resources (rtype, id, version, seq, last_updated, deleted, patient) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                p![rtype.as_str(), id, version, seq, now.micros(), deleted, patient],
            )?;
        }
    }
    if patients != before {
        set_compartment(c, rtype.as_str(), id, patients, !before.is_empty())?;
    }
    Ok(())
}

/// Replaces a resource's rows in `resource_compartments`. A Patient is
/// not a row of its own compartment: the queries that list one add it.
fn set_compartment(c: &mut dyn Conn, rtype: &str, id: &str, patients: &[String], had_rows: bool) -> Result<()> {
    if had_rows {
        c.exec_later("DELETE FROM resource_compartments WHERE rtype = $1 AND id = $2", p![rtype, id])?;
    }
    let rows = patients
        .iter()
        .filter(|p| !(rtype == "Patient" && p.as_str() == id))
        .map(|p| vec![Val::from(p.as_str()), Val::from(rtype), Val::from(id)])
        .collect();
    insert_rows_later(c, "INSERT INTO resource_compartments (patient, rtype, id)", "", 3, rows)?;
    Ok(())
}

/// Recomputes every resource's compartment from its current body (the
/// data step of migration 7: before it, only `subject`, `patient` and
/// `beneficiary` placed a resource in a compartment). Provenances last,
/// since they take their targets' patients.
pub fn rebuild_compartments(c: &mut dyn Conn) -> Result<u64> {
    let rows = c.query(
        "SELECT v.seq, v.rtype, v.id, v.body, v.patient, v.other_patients FROM resources r \
         JOIN resource_versions v ON v.seq = r.seq WHERE r.deleted = 0 \
         ORDER BY CASE WHEN r.rtype = 'Provenance' THEN 1 ELSE 0 END, r.rtype, r.id",
        p![],
    )?;
    let mut changed = 0;
    for r in rows {
        let (seq, rt, id, body) = (r.i64(0)?, r.text(1)?, r.text(2)?, r.text(3)?);
        let before = patients_of(r.opt_text(4)?, r.opt_text(5)?);
        let Ok(rtype) = ResourceType::parse(&rt) else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&body) else { continue };
        let patients = compartment_of(c, rtype, &id, &v)?;
        if patients == before {
            continue;
        }
        let patient = patients.first().map(String::as_str);
        let others = patients.get(1..).filter(|o| !o.is_empty()).map(|o| o.join(" "));
        c.exec(
            "UPDATE resource_versions SET patient = $2, other_patients = $3 WHERE seq = $1",
            p![seq, patient, others],
        )?;
        c.exec(
            "UPDATE resources SET patient = $3 WHERE rtype = $1 AND id = $2",
            p![rt.as_str(), id.as_str(), patient],
        )?;
        set_compartment(c, &rt, &id, &patients, true)?;
        changed += 1;
    }
    Ok(changed)
}

/// Replaces the index rows of a resource (none for a tombstone).
/// `had_rows`: the previous version was indexed (not new, not deleted).
fn reindex(
    c: &mut dyn Conn,
    search: &SearchParams,
    rtype: ResourceType,
    id: &str,
    body: Option<&Value>,
    had_rows: bool,
) -> Result<()> {
    let t = rtype.as_str();
    if had_rows {
        for sql in [
            "DELETE FROM idx_token WHERE rtype = $1 AND id = $2",
            "DELETE FROM idx_string WHERE rtype = $1 AND id = $2",
            "DELETE FROM idx_date WHERE rtype = $1 AND id = $2",
            "DELETE FROM idx_ref WHERE rtype = $1 AND id = $2",
        ] {
            c.exec_later(sql, p![t, id])?;
        }
        if has_quantities(search, rtype) {
            c.exec_later("DELETE FROM idx_quantity WHERE rtype = $1 AND id = $2", p![t, id])?;
        }
    }
    let Some(body) = body else { return Ok(()) };
    write_entries(c, t, id, index_entries_in(search, rtype, body))
}

/// Writes index rows (held back, several per statement).
fn write_entries(c: &mut dyn Conn, t: &str, id: &str, entries: Vec<IndexEntry>) -> Result<()> {
    // Rows per table, written several per statement.
    let (mut tokens, mut strings, mut dates, mut refs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut quantities = Vec::new();
    for e in entries {
        let head = [Val::from(t), Val::from(id), Val::from(e.param)];
        match e.value {
            IndexValue::Token { system, code } => {
                tokens.push(head.into_iter().chain([Val::from(system), Val::from(code)]).collect::<Vec<_>>())
            }
            IndexValue::String { norm, exact } => {
                strings.push(head.into_iter().chain([Val::from(norm), Val::from(exact)]).collect())
            }
            IndexValue::Date { low, high } => {
                dates.push(head.into_iter().chain([Val::from(low), Val::from(high)]).collect())
            }
            IndexValue::Reference { rtype: tt, id: tid } => {
                refs.push(head.into_iter().chain([Val::from(tt), Val::from(tid)]).collect())
            }
            IndexValue::Quantity { micros, system, code, canonical, concept } => quantities
                .push(head.into_iter().chain(quantity_cols(micros, system, code, canonical, concept)).collect()),
        }
    }
    insert_rows_later(c, QUANTITY_INSERT, "", 10, quantities)?;
    insert_rows_later(c, "INSERT INTO idx_token (rtype, id, param, system, code)", "", 5, tokens)?;
    insert_rows_later(c, "INSERT INTO idx_string (rtype, id, param, norm, exact)", "", 5, strings)?;
    insert_rows_later(c, "INSERT INTO idx_date (rtype, id, param, low, high)", "", 5, dates)?;
    insert_rows_later(c, "INSERT INTO idx_ref (rtype, id, param, target_type, target_id)", "", 5, refs)?;
    Ok(())
}

/// The `meta` key under which the store keeps what its index holds for
/// the packages' search parameters ([`SearchParams::fingerprint`]).
const PACKAGE_PARAMS_KEY: &str = "package_search_params";

/// Every current (not deleted) resource of type `t`: its id and body.
fn current_of_type(c: &mut dyn Conn, t: &str) -> Result<Vec<(String, Value)>> {
    let rows = c.query(
        "SELECT r.id, v.body FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = $1 AND r.deleted = 0",
        p![t],
    )?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        if let Ok(v) = serde_json::from_str::<Value>(&r.text(1)?) {
            out.push((r.text(0)?, v));
        }
    }
    Ok(out)
}

/// What [`sync_package_params`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ParamSync {
    /// Parameters whose rows were removed (no longer loaded, or changed).
    pub removed: Vec<String>,
    /// Parameters indexed anew (new, or changed).
    pub indexed: Vec<String>,
    /// Resources that got rows for them.
    pub resources: u64,
}

/// Brings the index of the packages' search parameters in line with
/// `search`, in one transaction: the rows of a parameter no longer
/// loaded, or whose definition changed, are removed; a parameter new or
/// changed is indexed for every current resource of its type. What the
/// index holds is kept in `meta`, so a start with the same packages
/// changes nothing. Returns `None` when nothing had to change.
pub fn sync_package_params(c: &mut dyn Conn, search: &SearchParams) -> Result<Option<ParamSync>> {
    let want = search.fingerprint();
    c.batch("BEGIN IMMEDIATE")?;
    let step = (|| -> Result<Option<ParamSync>> {
        let have: Vec<String> = match c.query_one("SELECT value FROM meta WHERE key = $1", p![PACKAGE_PARAMS_KEY])? {
            Some(r) => serde_json::from_str(&r.text(0)?).unwrap_or_default(),
            None => Vec::new(),
        };
        if have == want {
            return Ok(None);
        }
        let mut report = ParamSync::default();
        let type_and_name = |line: &str| -> Option<(String, String)> {
            let mut it = line.splitn(3, ' ');
            Some((it.next()?.to_owned(), it.next()?.to_owned()))
        };
        for line in have.iter().filter(|l| !want.contains(l)) {
            let Some((t, name)) = type_and_name(line) else { continue };
            // A name mamori itself defines now keeps its rows.
            let own = ResourceType::parse(&t).is_ok_and(|rt| mamori_core::fhir::search::param_def(rt, &name).is_some());
            if own {
                continue;
            }
            for table in ["idx_token", "idx_string", "idx_date", "idx_ref", "idx_quantity"] {
                c.exec(&format!("DELETE FROM {table} WHERE rtype = $1 AND param = $2"), p![t.as_str(), name.as_str()])?;
            }
            report.removed.push(format!("{t}.{name}"));
        }
        let fresh: Vec<(String, String)> =
            want.iter().filter(|l| !have.contains(l)).filter_map(|l| type_and_name(l)).collect();
        let mut types: Vec<&str> = fresh.iter().map(|(t, _)| t.as_str()).collect();
        types.sort_unstable();
        types.dedup();
        for t in types {
            let Ok(rtype) = ResourceType::parse(t) else { continue };
            let names: Vec<&str> = fresh.iter().filter(|(x, _)| x == t).map(|(_, n)| n.as_str()).collect();
            for (id, v) in current_of_type(c, t)? {
                let entries: Vec<IndexEntry> =
                    index_entries_in(search, rtype, &v).into_iter().filter(|e| names.contains(&e.param)).collect();
                if !entries.is_empty() {
                    write_entries(c, t, &id, entries)?;
                    report.resources += 1;
                }
            }
            c.sync()?;
            report.indexed.extend(names.iter().map(|n| format!("{t}.{n}")));
        }
        let value = serde_json::to_string(&want).map_err(|e| StoreError::Internal(e.to_string()))?;
        c.exec(
            "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            p![PACKAGE_PARAMS_KEY, value],
        )?;
        Ok(Some(report))
    })();
    match step {
        Ok(r) => {
            c.batch("COMMIT")?;
            if let Some(r) = &r {
                tracing::info!(
                    removed = ?r.removed, indexed = ?r.indexed, resources = r.resources,
                    "search index brought in line with the packages' search parameters"
                );
            }
            Ok(r)
        }
        Err(e) => {
            if let Err(r) = c.batch("ROLLBACK") {
                tracing::debug!(error = %r, "cannot roll back the package parameter index");
            }
            Err(e)
        }
    }
}

const QUANTITY_INSERT: &str =
    "INSERT INTO idx_quantity (rtype, id, param, value, system, code, cvalue, cunit, csys, ccode)";

/// The columns of a quantity row after rtype, id and param.
fn quantity_cols(
    micros: i64,
    system: Option<String>,
    code: Option<String>,
    canonical: Option<(i64, String)>,
    concept: Option<(Option<String>, String)>,
) -> [Val<'static>; 7] {
    let (cv, cu) = canonical.map_or((None, None), |(v, u)| (Some(v), Some(u)));
    let (cs, cc) = concept.map_or((None, None), |(s, c)| (s, Some(c)));
    [Val::from(micros), Val::from(system), Val::from(code), Val::from(cv), Val::from(cu), Val::from(cs), Val::from(cc)]
}

/// Whether a type has quantity or number search parameters (only those
/// types have rows in `idx_quantity`).
fn has_quantities(search: &SearchParams, rtype: ResourceType) -> bool {
    use mamori_core::fhir::search::ParamKind;
    search.of_type(rtype).any(|p| matches!(p.kind, ParamKind::Quantity | ParamKind::Number))
}

/// Indexes part of the index again, from scratch, for every current
/// resource of the types `want` accepts: `pick` turns each of a
/// resource's index entries into a row of `insert` (of `ncols` columns),
/// or none. Returns the number of resources that got rows.
fn index_current(
    c: &mut dyn Conn,
    want: impl Fn(ResourceType) -> bool,
    insert: &str,
    ncols: usize,
    pick: impl Fn(ResourceType, &'static str, &str, IndexEntry) -> Option<Vec<Val<'static>>>,
) -> Result<u64> {
    let mut n = 0;
    for t in mamori_core::fhir::resource_types::R4_RESOURCE_TYPES {
        let Ok(rtype) = ResourceType::parse(t) else { continue };
        if !want(rtype) {
            continue;
        }
        for (id, v) in current_of_type(c, t)? {
            let rows: Vec<Vec<Val<'_>>> =
                index_entries(rtype, &v).into_iter().filter_map(|e| pick(rtype, t, &id, e)).collect();
            if !rows.is_empty() {
                insert_rows(c, insert, "", ncols, rows)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Indexes the quantities and numbers of every current resource of the
/// types that have such parameters, from scratch (the data step of
/// migration 12, which added quantities, and of 16, which added UCUM
/// canonical values and numbers). Returns the number of resources indexed.
pub fn index_quantities(c: &mut dyn Conn) -> Result<u64> {
    c.exec("DELETE FROM idx_quantity", p![])?;
    index_current(
        c,
        |t| has_quantities(&CORE_PARAMS, t),
        QUANTITY_INSERT,
        10,
        |_, t, id, e| match e.value {
            IndexValue::Quantity { micros, system, code, canonical, concept } => Some(
                [Val::from(t), Val::from(id.to_owned()), Val::from(e.param)]
                    .into_iter()
                    .chain(quantity_cols(micros, system, code, canonical, concept))
                    .collect(),
            ),
            _ => None,
        },
    )
}

/// Indexes the text that goes with the codes of every current resource
/// (a token parameter's `:text`, kept in `idx_string` under the token
/// parameter's name): the data step of migration 17, which added it.
/// Returns the number of resources that have such text.
pub fn index_token_texts(c: &mut dyn Conn) -> Result<u64> {
    use mamori_core::fhir::search::{param_def, ParamKind};
    let insert = "INSERT INTO idx_string (rtype, id, param, norm, exact)";
    index_current(
        c,
        |_| true,
        insert,
        5,
        |rtype, t, id, e| match e.value {
            IndexValue::String { norm, exact }
                if param_def(rtype, e.param).is_some_and(|d| d.kind == ParamKind::Token) =>
            {
                Some(vec![
                    Val::from(t),
                    Val::from(id.to_owned()),
                    Val::from(e.param),
                    Val::from(norm),
                    Val::from(exact),
                ])
            }
            _ => None,
        },
    )
}

/// Every `reference` string in a resource, with its path.
pub fn references(v: &Value) -> Vec<(String, String)> {
    /// One step of the path; rendered only for the references found (a
    /// resource without any costs no string building).
    enum Step<'a> {
        Key(&'a str),
        Index(usize),
    }
    fn render(root: &str, path: &[Step<'_>]) -> String {
        let mut s = root.to_owned();
        for step in path {
            match step {
                Step::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Step::Index(i) => s.push_str(&format!("[{i}]")),
            }
        }
        s
    }
    fn walk<'a>(v: &'a Value, root: &str, path: &mut Vec<Step<'a>>, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(o) => {
                for (k, x) in o {
                    if k == "contained" {
                        continue;
                    }
                    path.push(Step::Key(k));
                    if k == "reference" {
                        if let Some(s) = x.as_str() {
                            out.push((render(root, path), s.to_owned()));
                        }
                    } else {
                        walk(x, root, path, out);
                    }
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(Step::Index(i));
                    walk(x, root, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    let root = v.get("resourceType").and_then(Value::as_str).unwrap_or("Resource");
    walk(v, root, &mut Vec::new(), &mut out);
    out
}

/// Referential integrity: every relative reference must name an existing,
/// not deleted resource (or one created in the same transaction); every
/// `#id` a contained resource. `urn:uuid:` must have been resolved.
/// Returns the problems found (none: the references hold).
pub fn check_references(c: &mut dyn Conn, v: &Value, pending: &HashSet<(String, String)>) -> Result<Vec<Issue>> {
    let contained: HashSet<String> = v
        .get("contained")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|r| r.get("id").and_then(Value::as_str).map(str::to_owned)).collect())
        .unwrap_or_default();
    let mut issues = Vec::new();
    for (path, r) in references(v) {
        if let Some(local) = r.strip_prefix('#') {
            if !local.is_empty() && !contained.contains(local) {
                issues.push(Issue { path, message: format!("contained resource '#{local}' not found") });
            }
            continue;
        }
        if r.starts_with("urn:uuid:") {
            issues.push(Issue { path, message: format!("'{r}' does not resolve to an entry of this Bundle") });
            continue;
        }
        if r.starts_with("http://") || r.starts_with("https://") || r.starts_with("urn:") {
            continue;
        }
        let Ok(lr) = LocalRef::parse(&r) else {
            issues.push(Issue { path, message: format!("'{r}' is not a valid reference") });
            continue;
        };
        let key = (lr.rtype.as_str().to_owned(), lr.id.as_str().to_owned());
        if pending.contains(&key) {
            continue;
        }
        match current(c, lr.rtype.as_str(), lr.id.as_str())? {
            Some(cur) if !cur.deleted => {}
            Some(_) => issues.push(Issue { path, message: format!("{lr} has been deleted") }),
            None => issues.push(Issue { path, message: format!("{lr} does not exist") }),
        }
    }
    Ok(issues)
}

/// Counts of current resources per type (for metrics and migrations).
pub fn counts(c: &mut dyn Conn) -> Result<Vec<(String, u64)>> {
    c.query("SELECT rtype, COUNT(*) FROM resources WHERE deleted = 0 GROUP BY rtype ORDER BY rtype", p![])?
        .iter()
        .map(|r| Ok((r.text(0)?, r.u64(1)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_found_with_their_paths_and_contained_ones_skipped() {
        let v = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"display": "x"}, {"reference": "#pr"}],
            "contained": [{"resourceType": "Practitioner", "id": "pr", "managingOrganization": {"reference": "Organization/o"}}],
            "hasMember": [{"reference": 7}]
        });
        assert_eq!(
            references(&v),
            vec![
                ("Observation.performer[1].reference".to_owned(), "#pr".to_owned()),
                ("Observation.subject.reference".to_owned(), "Patient/p1".to_owned()),
            ]
        );
        assert!(references(&json!({"resourceType": "Patient", "name": [{"family": "x"}]})).is_empty());
    }
}
