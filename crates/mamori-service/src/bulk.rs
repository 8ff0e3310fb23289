//! FHIR Bulk Data export (Bulk Data Access IG v2): `$export` at system,
//! `Patient` and `Group` level, run as a background job whose output is
//! NDJSON files kept in the database until they expire.
//!
//! What an export holds is decided like a search: each type through the
//! search decision across patients (restricted to the caller's own
//! patients, or to reference data), then each resource as its read. An
//! export is never decided under emergency powers: break-glass grants and
//! emergency access serve one patient's care, so resources they alone
//! would open are withheld, and a real emergency stops running exports.
//! Every patient whose data an export holds gets an audit event before the
//! output can be fetched; every poll, download and cancellation is audited.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use mamori_core::fhir::resource_types::{in_patient_compartment, NOT_STORABLE, R4_RESOURCE_TYPES};
use mamori_core::fhir::search::{parse_query, parse_query_in, SearchParams};
use mamori_core::fhir::subset::Subset;
use mamori_core::ids::{is_fhir_id, ResourceType};
use mamori_core::policy::{Action, Basis, Decision, Facts, Operation, PatientScope, Target};
use mamori_core::time::Timestamp;
use mamori_store::bulk::{self, FileRow, Job};
use mamori_store::records::{self, Version};
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::actor::{set_patients, Actor, RequestCtx, TokenRef};
use crate::audited::Audited;
use crate::authz;
use crate::error::ServiceError;
use crate::records::{parse_id, parse_pairs, restriction};
use crate::services::Services;

/// The type under which a file of deletions is stored (its lines are
/// Bundles, listed under `deleted` in the manifest).
const DELETED: &str = "Bundle(deleted)";
/// Resources read from the store per query.
const PAGE: usize = 1000;
/// An output file is closed once it holds this many bytes, whatever the
/// configured count.
const MAX_FILE_BYTES: usize = 64 << 20;
/// Patients' audit events per write job.
const AUDIT_CHUNK: usize = 2000;
/// The result-control parameters a `_typeFilter` may not carry.
const NOT_IN_FILTER: &[&str] =
    &["_count", "_sort", "_include", "_revinclude", "_elements", "_summary", "_total", "_contained", "_cursor"];

/// Where an export was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// `/fhir/$export`: every resource the caller may read.
    System,
    /// `/fhir/Patient/$export`: the data of every patient the caller may read.
    Patient,
    /// `/fhir/Group/{id}/$export`: the data of the group's member patients.
    Group(String),
}

/// The request, as the job keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Params {
    /// `system`, `patient` or `group`.
    level: String,
    /// The group, at group level.
    group: Option<String>,
    /// `_type`; empty: every type that has resources.
    types: Vec<String>,
    /// `_since`, as given and in microseconds.
    since: Option<(String, i64)>,
    /// `_typeFilter`: (type, query).
    filters: Vec<(String, String)>,
    /// `patient`: only these patients' data (Patient and Group level);
    /// empty: every patient's.
    #[serde(default)]
    patients: Vec<String>,
    /// `_elements`: `element` (every type) or `Type.element` items.
    #[serde(default)]
    elements: Vec<String>,
    /// `includeAssociatedData`: `LatestProvenanceResources` and/or
    /// `RelevantProvenanceResources`.
    #[serde(default)]
    associated: Vec<String>,
    /// The app that asked (a backend client), and the scopes its token
    /// holds: the export is narrowed by them as the requests were.
    #[serde(default)]
    app: Option<(String, String)>,
}

/// The `includeAssociatedData` values mamori supports.
const ASSOCIATED: &[&str] = &["LatestProvenanceResources", "RelevantProvenanceResources"];

/// A started export.
#[derive(Debug, Clone)]
pub struct Kickoff {
    /// The job's id.
    pub id: String,
}

fn bad(param: &str, msg: impl Into<String>) -> ServiceError {
    ServiceError::invalid(param, msg)
}

/// Reads the kick-off parameters.
fn parse_params(
    search: &SearchParams,
    level: &Level,
    pairs: &[(String, String)],
    prefer: Option<&str>,
) -> Result<Params, ServiceError> {
    let async_asked = prefer.is_some_and(|p| p.split(',').any(|x| x.trim().eq_ignore_ascii_case("respond-async")));
    if !async_asked {
        return Err(bad("Prefer", "an export runs asynchronously: send the header 'Prefer: respond-async'"));
    }
    let patient_level = *level != Level::System;
    let mut p = Params {
        level: match level {
            Level::System => "system",
            Level::Patient => "patient",
            Level::Group(_) => "group",
        }
        .into(),
        group: match level {
            Level::Group(g) => Some(g.clone()),
            _ => None,
        },
        types: Vec::new(),
        since: None,
        filters: Vec::new(),
        patients: Vec::new(),
        elements: Vec::new(),
        associated: Vec::new(),
        app: None,
    };
    let check_type = |t: &str| -> Result<ResourceType, ServiceError> {
        let rt = ResourceType::parse(t).map_err(|_| bad("_type", format!("'{t}' is not a FHIR R4 resource type")))?;
        if NOT_STORABLE.contains(&rt.as_str()) {
            return Err(bad("_type", format!("{t} is not stored as a resource and cannot be exported")));
        }
        if patient_level && !in_patient_compartment(rt.as_str()) {
            return Err(bad("_type", format!("{t} is not in the Patient compartment; use the system-level $export")));
        }
        Ok(rt)
    };
    let mut filters = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(v.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(bad(
                        "_outputFormat",
                        format!("'{v}' is not supported; mamori writes application/fhir+ndjson"),
                    ));
                }
            }
            "_type" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    let rt = check_type(t)?;
                    if !p.types.iter().any(|x| x == rt.as_str()) {
                        p.types.push(rt.as_str().to_owned());
                    }
                }
            }
            "_since" => {
                let t = Timestamp::parse_rfc3339(v).ok_or_else(|| {
                    bad("_since", "expected a FHIR instant with a time zone (2026-04-01T00:00:00+09:00)")
                })?;
                p.since = Some((v.clone(), t.micros()));
            }
            "_typeFilter" => filters.push(v.clone()),
            "patient" => {
                if !patient_level {
                    return Err(bad("patient", "patient= is for the Patient and Group level $export"));
                }
                for r in v.split(',').map(str::trim) {
                    let id = r.strip_prefix("Patient/").filter(|i| is_fhir_id(i)).ok_or_else(|| {
                        bad(
                            "patient",
                            format!(
                                "expected a reference Patient/id, not '{}'",
                                r.chars().take(60).collect::<String>()
                            ),
                        )
                    })?;
                    if !p.patients.iter().any(|x| x == id) {
                        p.patients.push(id.to_owned());
                    }
                }
            }
            "_elements" => {
                for item in v.split(',').map(str::trim) {
                    let (t, e) = match item.split_once('.') {
                        Some((t, e)) => (Some(t), e),
                        None => (None, item),
                    };
                    if let Some(t) = t {
                        check_type(t).map_err(|e| bad("_elements", e.message()))?;
                    }
                    Subset::parse_elements(e).map_err(|why| {
                        bad(
                            "_elements",
                            format!("'{}': {why} (or Type.element)", item.chars().take(60).collect::<String>()),
                        )
                    })?;
                    if !p.elements.iter().any(|x| x == item) {
                        p.elements.push(item.to_owned());
                    }
                }
            }
            "includeAssociatedData" => {
                for x in v.split(',').map(str::trim) {
                    if !ASSOCIATED.contains(&x) {
                        return Err(bad(
                            "includeAssociatedData",
                            format!(
                                "'{}' is not supported; mamori offers {}",
                                x.chars().take(60).collect::<String>(),
                                ASSOCIATED.join(" and ")
                            ),
                        ));
                    }
                    if !p.associated.iter().any(|a| a == x) {
                        p.associated.push(x.to_owned());
                    }
                }
            }
            "_format" => {}
            other => {
                return Err(bad(
                    other,
                    format!("unsupported $export parameter '{}'", other.chars().take(40).collect::<String>()),
                ))
            }
        }
    }
    for f in filters {
        let (t, q) = f.split_once('?').ok_or_else(|| bad("_typeFilter", "expected Type?search-parameters"))?;
        let rt = check_type(t).map_err(|e| bad("_typeFilter", e.message()))?;
        if !p.types.is_empty() && !p.types.iter().any(|x| x == rt.as_str()) {
            return Err(bad("_typeFilter", format!("{t} is not among the types asked for in _type")));
        }
        let fp = parse_pairs(q)?;
        if let Some((k, _)) = fp.iter().find(|(k, _)| NOT_IN_FILTER.contains(&k.as_str())) {
            return Err(bad("_typeFilter", format!("{k} has no meaning in a _typeFilter")));
        }
        parse_query_in(search, rt, &fp, false).map_err(|e| bad("_typeFilter", format!("{t}: {e}")))?;
        p.filters.push((rt.as_str().to_owned(), q.to_owned()));
    }
    Ok(p)
}

/// The kick-off parameters of a POST: a `Parameters` resource whose
/// parameters carry their values as `valueString`, `valueInstant`,
/// `valueCode` or `valueUri`; returned as query pairs, so that a POST is
/// checked exactly like a GET.
pub fn pairs_of_parameters(body: &serde_json::Value) -> Result<Vec<(String, String)>, ServiceError> {
    if body["resourceType"] != "Parameters" {
        return Err(bad("resourceType", "a POST kick-off carries a Parameters resource"));
    }
    let mut out = Vec::new();
    for p in body["parameter"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = p["name"].as_str().ok_or_else(|| bad("parameter.name", "every parameter needs a name"))?;
        let value = ["valueString", "valueInstant", "valueCode", "valueUri", "valueDateTime"]
            .iter()
            .find_map(|k| p[*k].as_str())
            .or_else(|| p["valueReference"]["reference"].as_str())
            .ok_or_else(|| bad(name, "expected valueString, valueInstant, valueCode, valueUri or valueReference"))?;
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

fn kickoff_record(
    actor: &Actor,
    status: u16,
    d: Option<&Decision>,
    request: &str,
    now: Timestamp,
) -> mamori_audit::event::AuditRecord {
    let mut rec = actor.fhir_record("export-kickoff", status, None, None, None, vec![], d, now);
    rec.query = Some(request.chars().take(2000).collect());
    rec
}

/// `GET /fhir/$export`, `/fhir/Patient/$export`, `/fhir/Group/{id}/$export`:
/// checks the request, decides it, and queues the job. `request` is the
/// kick-off URL as asked (it goes into the manifest).
pub async fn kickoff(
    svc: &Services,
    actor: &Actor,
    level: Level,
    pairs: &[(String, String)],
    prefer: Option<&str>,
    request: &str,
) -> Result<Kickoff, ServiceError> {
    let now = svc.now();
    let params = match parse_params(&svc.conformance().search, &level, pairs, prefer) {
        Ok(mut p) => {
            p.app = actor.app.as_ref().map(|a| (a.client_id.clone(), a.scope.clone()));
            p
        }
        Err(e) => {
            let mut rec = kickoff_record(actor, e.status(), None, request, now);
            rec.detail = Some(json!({"error": e.message()}));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let d = crate::authz::decide(actor, &Operation::BulkExport, Facts::default());
    if !d.permit {
        let e = ServiceError::denied("bulk export", &d);
        svc.audit(vec![kickoff_record(actor, 403, Some(&d), request, now)]).await?;
        return Err(e);
    }
    // The patients asked for are decided as reads of their Patient
    // resources (their records are decided resource by resource later).
    if !params.patients.is_empty() {
        if let Err(e) = check_patients(svc, actor, &params.patients, now).await {
            let mut rec = kickoff_record(actor, e.status(), e.decision(), request, now);
            rec.patients.clone_from(&params.patients);
            rec.detail = Some(json!({"error": e.message()}));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    }
    // A group is read like any resource before its members are exported.
    if let Level::Group(g) = &level {
        if let Err(e) = read_group(svc, actor, g, now).await {
            let mut rec = kickoff_record(actor, e.status(), e.decision(), request, now);
            rec.detail = Some(json!({"error": e.message()}));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    }
    let id = mamori_audit::merkle::to_hex(&mamori_store::accounts::random_bytes::<16>()?);
    let job = Job {
        id: id.clone(),
        owner: actor.name().to_owned(),
        token: actor.token.as_ref().map(|t| t.id.clone()),
        request: request.to_owned(),
        params: serde_json::to_string(&params).map_err(|e| ServiceError::internal(e.to_string()))?,
        state: "queued".into(),
        tx_time: now,
        created: now,
        finished: None,
        expires: None,
        progress: None,
        summary: None,
        error: None,
    };
    let max = svc.cfg.export.max_active_per_user;
    let mut rec = kickoff_record(actor, 202, Some(&d), request, now);
    rec.patients.clone_from(&params.patients);
    rec.detail = Some(json!({"export": id}));
    let busy = svc
        .store
        .writer()
        .write(
            move |w| {
                if bulk::active_of(w.conn, &job.owner)? >= max {
                    return Ok(true);
                }
                bulk::insert(w.conn, &job)?;
                w.audit(&rec)?;
                Ok(false)
            },
            |_, _| Ok(()),
        )
        .await?;
    if busy {
        let e = ServiceError::TooMany {
            message: format!("you already have {max} exports queued or running; wait for one to finish or cancel one"),
            retry_after: Some(30),
        };
        let mut rec = kickoff_record(actor, 429, Some(&d), request, now);
        rec.detail = Some(json!({"error": e.message()}));
        svc.audit(vec![rec]).await?;
        return Err(e);
    }
    Ok(Kickoff { id })
}

/// The patients of a `patient=` kick-off: each must exist, and its
/// Patient resource must be one the caller may read.
async fn check_patients(svc: &Services, actor: &Actor, ids: &[String], now: Timestamp) -> Result<(), ServiceError> {
    let (a2, ids2) = (actor.clone(), ids.to_vec());
    let found = svc
        .store
        .read(move |c| {
            let mut out = Vec::new();
            for id in &ids2 {
                let v = records::read(c, "Patient", id)?;
                let d = match &v {
                    Some(v) if !v.deleted => Some(authz::decide_record(
                        c,
                        &a2,
                        Action::Read,
                        ResourceType::PATIENT,
                        std::slice::from_ref(id),
                        now,
                    )?),
                    _ => None,
                };
                out.push((id.clone(), d));
            }
            Ok(out)
        })
        .await?;
    for (id, d) in found {
        match d {
            None => return Err(ServiceError::NotFound(format!("patient: Patient/{id} does not exist"))),
            Some(d) if !d.permit => return Err(ServiceError::denied(&format!("patient: Patient/{id}"), &d)),
            Some(_) => {}
        }
    }
    Ok(())
}

/// Reads a Group as its read is decided; returns its member patients.
async fn read_group(svc: &Services, actor: &Actor, id: &str, now: Timestamp) -> Result<HashSet<String>, ServiceError> {
    parse_id(id)?;
    let (a2, id2) = (actor.clone(), id.to_owned());
    let (v, d) = svc
        .store
        .read(move |c| {
            let v = records::read(c, "Group", &id2)?;
            let d = match &v {
                Some(v) => Some(authz::decide_record(
                    c,
                    &a2,
                    Action::Read,
                    ResourceType::parse("Group").map_err(|e| StoreError::Internal(e.to_string()))?,
                    &v.patients,
                    now,
                )?),
                None => None,
            };
            Ok((v, d))
        })
        .await?;
    let (Some(v), Some(d)) = (v, d) else {
        return Err(ServiceError::NotFound(format!("Group/{id} does not exist")));
    };
    if !d.permit {
        return Err(ServiceError::denied(&format!("access to Group/{id}"), &d));
    }
    if v.deleted {
        return Err(ServiceError::Gone(format!("Group/{id} was deleted")));
    }
    let body: serde_json::Value =
        serde_json::from_str(&v.body).map_err(|e| ServiceError::internal(format!("stored Group: {e}")))?;
    let members = body["member"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|e| e["entity"]["reference"].as_str())
                .filter_map(|r| r.strip_prefix("Patient/"))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(members)
}

/// What a status request finds.
#[derive(Debug, Clone)]
pub enum Status {
    /// Queued or running: how far it got.
    InProgress(String),
    /// Done: the manifest (JSON) and when the output expires.
    Complete(serde_json::Value, Timestamp),
    /// It failed: why.
    Failed(String),
}

/// Loads a job the actor may see (its owner), deciding and auditing.
async fn own_job(svc: &Services, actor: &Actor, id: &str, action: &str) -> Result<(Job, Decision), ServiceError> {
    let id2 = id.to_owned();
    let job = if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        svc.store.read(move |c| bulk::get(c, &id2)).await?
    } else {
        None
    };
    let Some(job) = job.filter(|j| !matches!(j.state.as_str(), "cancelled" | "expired")) else {
        let e = ServiceError::NotFound("no such export (it may have expired or been cancelled)".into());
        return Err(svc.refused(actor, action, e).await);
    };
    let facts = Facts { own: job.owner == actor.name(), ..Facts::default() };
    let d = svc.gate(actor, action, Operation::BulkExportRead, facts, "this export").await?;
    Ok((job, d))
}

fn job_record(
    actor: &Actor,
    action: &str,
    status: u16,
    d: &Decision,
    job: &Job,
    now: Timestamp,
) -> mamori_audit::event::AuditRecord {
    let mut rec = actor.decided(action, status, d, now);
    rec.detail = Some(json!({"export": job.id, "state": job.state}));
    rec
}

/// `GET /fhir/$export-status/{id}`: the job's state; once complete, its
/// manifest.
pub async fn status(svc: &Services, actor: &Actor, id: &str) -> Result<Status, ServiceError> {
    let (job, d) = own_job(svc, actor, id, "export-status").await?;
    let now = svc.now();
    let out = match job.state.as_str() {
        "complete" => {
            let id2 = job.id.clone();
            let files = svc.store.read(move |c| bulk::files(c, &id2)).await?;
            Status::Complete(manifest(&svc.base_url, &job, &files), job.expires.unwrap_or(now))
        }
        "failed" => Status::Failed(job.error.clone().unwrap_or_else(|| "the export failed".into())),
        _ => Status::InProgress(job.progress.clone().unwrap_or_else(|| job.state.clone())),
    };
    let status = match &out {
        Status::Complete(..) => 200,
        Status::InProgress(_) => 202,
        Status::Failed(_) => 500,
    };
    svc.audit(vec![job_record(actor, "export-status", status, &d, &job, now)]).await?;
    Ok(out)
}

/// The complete manifest (Bulk Data IG v2).
fn manifest(base: &str, job: &Job, files: &[FileRow]) -> serde_json::Value {
    let url = |f: &FileRow| format!("{base}/fhir/$export-file/{}/{}", job.id, f.n);
    let item = |f: &FileRow| json!({"type": f.rtype, "url": url(f), "count": f.count});
    let summary: serde_json::Value =
        job.summary.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or(json!({}));
    json!({
        "transactionTime": job.tx_time.to_rfc3339(),
        "request": job.request,
        "requiresAccessToken": true,
        "output": files.iter().filter(|f| f.rtype != "OperationOutcome" && f.rtype != DELETED).map(item).collect::<Vec<_>>(),
        "deleted": files.iter().filter(|f| f.rtype == DELETED).map(|f| json!({"type": "Bundle", "url": url(f), "count": f.count})).collect::<Vec<_>>(),
        "error": files.iter().filter(|f| f.rtype == "OperationOutcome").map(item).collect::<Vec<_>>(),
        "extension": {"https://mamori.example/fhir/bulk/summary": summary},
    })
}

/// An output file's bytes, audited as a download.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// Its type.
    pub rtype: String,
    /// Its NDJSON bytes.
    pub body: Vec<u8>,
}

/// `GET /fhir/$export-file/{id}/{n}`: one output file of a complete export,
/// for the one who asked for it.
pub async fn file(svc: &Services, actor: &Actor, id: &str, n: &str) -> Result<Audited<OutputFile>, ServiceError> {
    let (job, d) = own_job(svc, actor, id, "export-download").await?;
    let now = svc.now();
    let n: i64 = match n.parse() {
        Ok(n) if job.state == "complete" => n,
        _ => {
            return Err(svc
                .refused(actor, "export-download", ServiceError::NotFound("no such output file".into()))
                .await)
        }
    };
    let id2 = job.id.clone();
    let Some((row, body)) = svc.store.read(move |c| bulk::file(c, &id2, n)).await? else {
        return Err(svc.refused(actor, "export-download", ServiceError::NotFound("no such output file".into())).await);
    };
    let mut rec = job_record(actor, "export-download", 200, &d, &job, now);
    rec.detail =
        Some(json!({"export": job.id, "file": n, "type": row.rtype, "count": row.count, "sha256": row.sha256}));
    svc.audited(rec, OutputFile { rtype: row.rtype, body }).await
}

/// `DELETE /fhir/$export-status/{id}`: cancels a job, or removes a
/// finished one's output now.
pub async fn cancel(svc: &Services, actor: &Actor, id: &str) -> Result<(), ServiceError> {
    let (job, d) = own_job(svc, actor, id, "export-cancel").await?;
    let rec = job_record(actor, "export-cancel", 202, &d, &job, svc.now());
    let id2 = job.id.clone();
    svc.store
        .writer()
        .write(
            move |w| {
                bulk::cancel(w.conn, &id2, w.now)?;
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(())
}

// ---- the job ---------------------------------------------------------------------------------

/// Runs queued exports, one at a time, and removes expired output, until
/// `stop` says so. Exports a stopped server was running start again.
pub async fn run(svc: Services, mut stop: watch::Receiver<bool>) {
    let now = svc.now();
    match svc.store.writer().write(move |w| bulk::requeue_interrupted(w.conn, now), |_, _| Ok(())).await {
        Ok(0) => {}
        Ok(n) => tracing::warn!(exports = n, "bulk export: interrupted exports start again"),
        Err(e) => tracing::error!(error = %e, "bulk export: could not requeue interrupted exports"),
    }
    // By the store's clock, so that expiry follows the time the server keeps.
    let mut last_expiry: Option<Timestamp> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let now = svc.now();
        if last_expiry.is_none_or(|t| now.micros() - t.micros() >= 60_000_000) {
            last_expiry = Some(now);
            if let Err(e) = svc.store.writer().write(move |w| bulk::expire(w.conn, now), |_, _| Ok(())).await {
                tracing::error!(error = %e, "bulk export: could not remove expired output");
            }
        }
        // A read first: an idle server does not write twice a second.
        let queued = svc.store.read(bulk::any_queued).await.unwrap_or(false);
        let claimed = if queued {
            svc.store.writer().write(move |w| bulk::claim(w.conn, now), |_, _| Ok(())).await
        } else {
            Ok(None)
        };
        match claimed {
            Ok(Some(job)) => {
                let id = job.id.clone();
                if let Err(e) = run_job(&svc, job, &stop).await {
                    let msg = e.message();
                    tracing::warn!(export = %id, error = %msg, "bulk export failed");
                    let expires = svc.now().plus_secs(retention(&svc));
                    let rec = RequestCtx::background(svc.mode.get()).record(
                        "system",
                        "system",
                        "export",
                        e.status(),
                        svc.now(),
                    );
                    let mut rec = rec;
                    rec.detail = Some(json!({"export": id, "error": msg}));
                    let r = svc
                        .store
                        .writer()
                        .write(
                            move |w| {
                                bulk::fail(w.conn, &id, &msg, w.now, expires)?;
                                w.audit(&rec)?;
                                Ok(())
                            },
                            |_, _| Ok(()),
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::error!(error = %e, "bulk export: could not record a failure");
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "bulk export: could not claim a job"),
        }
        tokio::select! {
            _ = stop.changed() => {},
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

fn retention(svc: &Services) -> i64 {
    (svc.cfg.export.retention_hours as i64).saturating_mul(3600)
}

/// The output being written.
struct Out {
    id: String,
    per_file: usize,
    n: i64,
    rtype: String,
    buf: Vec<u8>,
    lines: usize,
}

impl Out {
    async fn flush(&mut self, svc: &Services) -> Result<(), ServiceError> {
        if self.lines == 0 {
            return Ok(());
        }
        self.n += 1;
        let (id, n, rtype, count) = (self.id.clone(), self.n, self.rtype.clone(), self.lines as i64);
        let body = std::mem::take(&mut self.buf);
        self.lines = 0;
        let sha = mamori_audit::event::sha256_hex(&body);
        let stored = svc
            .store
            .writer()
            .write(move |w| bulk::add_file(w.conn, &id, n, &rtype, count, &sha, &body), |_, _| Ok(()))
            .await?;
        if stored {
            Ok(())
        } else {
            Err(ServiceError::Conflict("the export was cancelled".into()))
        }
    }

    async fn push(&mut self, svc: &Services, v: &Version) -> Result<(), ServiceError> {
        if self.rtype != v.rtype {
            self.flush(svc).await?;
            self.rtype.clone_from(&v.rtype);
        }
        // Stored JSON is valid JSON, in which a raw line break can only be
        // whitespace between tokens: without them it is one line.
        self.buf.extend(v.body.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
        self.buf.push(b'\n');
        self.lines += 1;
        if self.lines >= self.per_file || self.buf.len() >= MAX_FILE_BYTES {
            self.flush(svc).await?;
        }
        Ok(())
    }
}

/// What an export decided about one patient.
struct Included {
    resources: u64,
    decision: Decision,
}

/// Whether a decision opens a resource to an export: a permit on an
/// ordinary basis, never on emergency powers.
fn opens(d: &Decision) -> bool {
    d.permit && !matches!(d.basis, Basis::BreakGlass | Basis::EmergencyAccess | Basis::MaintenanceAccess)
}

async fn run_job(svc: &Services, job: Job, stop: &watch::Receiver<bool>) -> Result<(), ServiceError> {
    let params: Params =
        serde_json::from_str(&job.params).map_err(|e| ServiceError::internal(format!("export parameters: {e}")))?;
    let owner = job.owner.clone();
    let user = svc.store.read(move |c| mamori_store::accounts::get_user(c, &owner)).await?;
    let user = match user {
        Some(u) if !u.disabled => u,
        _ => return Err(ServiceError::Conflict("the account that asked for the export is disabled".into())),
    };
    let actor = Actor {
        user,
        token: job.token.clone().map(|id| TokenRef { id, issuer: None }),
        declared: None,
        ctx: RequestCtx::background(svc.mode.get()),
        node: None,
        scopes: Vec::new(),
        app: params.app.as_ref().map(|(client_id, scope)| {
            std::sync::Arc::new(mamori_store::accounts::AppToken {
                client_id: client_id.clone(),
                scope: scope.clone(),
                patient: None,
                family: String::new(),
            })
        }),
    };
    // Decided again: roles or the mode may have changed since the kick-off.
    let d = authz::decide(&actor, &Operation::BulkExport, Facts::default());
    if !d.permit {
        return Err(ServiceError::denied("bulk export", &d));
    }
    let group = match &params.group {
        Some(g) => Some(read_group(svc, &actor, g, svc.now()).await?),
        None => None,
    };
    let patient_level = params.level != "system";
    let only: Option<HashSet<String>> =
        (!params.patients.is_empty()).then(|| params.patients.iter().cloned().collect());
    let types: Vec<&'static str> = if params.types.is_empty() {
        let candidates: Vec<&'static str> = R4_RESOURCE_TYPES
            .iter()
            .copied()
            .filter(|t| !NOT_STORABLE.contains(t) && (!patient_level || in_patient_compartment(t)))
            .collect();
        svc.store.read(move |c| bulk::stored_types(c, &candidates)).await?
    } else {
        params.types.iter().filter_map(|t| ResourceType::parse(t).ok()).map(|t| t.as_str()).collect()
    };
    let mut out = Out {
        id: job.id.clone(),
        per_file: svc.cfg.export.resources_per_file.max(1) as usize,
        n: 0,
        rtype: String::new(),
        buf: Vec::new(),
        lines: 0,
    };
    let mut patients: HashMap<String, Included> = HashMap::new();
    let mut per_type: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
    let mut withheld = 0u64;
    let mut not_permitted: Vec<&str> = Vec::new();
    let mut total = 0u64;
    let mut deleted = 0u64;
    // Decisions by type and patients: a patient's resources of one type
    // are decided once.
    let mut cache: Cache = HashMap::new();
    let mut last_progress = std::time::Instant::now();
    // With includeAssociatedData: every resource exported, as `Type/id`.
    let mut exported: Option<HashSet<String>> = (!params.associated.is_empty()).then(HashSet::new);
    for (ti, t) in types.iter().enumerate() {
        let rtype = ResourceType::parse(t).map_err(|e| ServiceError::internal(e.to_string()))?;
        let search = Operation::Record { action: Action::Search, target: Target { rtype, scope: PatientScope::Any } };
        let td = authz::decide(&actor, &search, Facts::default());
        if !opens(&td) {
            not_permitted.push(t);
            continue;
        }
        let restrict = restriction(&td, &actor, svc.now());
        let subset = elements_for(&params.elements, t);
        let queries: Vec<String> = {
            let f: Vec<String> = params.filters.iter().filter(|(ft, _)| ft == t).map(|(_, q)| q.clone()).collect();
            if f.is_empty() {
                vec![String::new()]
            } else {
                f
            }
        };
        let mut seen: HashSet<String> = HashSet::new();
        let mut count = 0u64;
        for qs in &queries {
            let mut pairs = parse_pairs(qs)?;
            pairs.push(("_count".into(), PAGE.to_string()));
            pairs.push(("_total".into(), "none".into()));
            if let Some((since, _)) = &params.since {
                pairs.push(("_lastUpdated".into(), format!("ge{since}")));
            }
            let (mut q, _) = parse_query_in(&svc.conformance().search, rtype, &pairs, false)
                .map_err(|e| ServiceError::invalid("_typeFilter", e.to_string()))?;
            // A `_has` in a filter looks only at what the caller may find,
            // and never through emergency powers.
            let has = super::records::has_scope(&actor, &q, svc.now())
                .map_err(|d| ServiceError::denied("the _has search in a _typeFilter", &d))?;
            if has.iter().any(|(_, r)| *r == Restriction::None) {
                return Err(ServiceError::Conflict(
                    "a _has in a _typeFilter would look through emergency access".into(),
                ));
            }
            loop {
                if *stop.borrow() {
                    return Err(ServiceError::Conflict("the server stopped; the export starts again".into()));
                }
                if svc.mode.get().is_real_emergency() {
                    return Err(ServiceError::Conflict(
                        "an emergency was declared: bulk export stopped (not during an emergency)".into(),
                    ));
                }
                let (a2, q2, r2, h2) = (actor.clone(), q.clone(), restrict.clone(), has.clone());
                let now = svc.now();
                let mut memo = std::mem::take(&mut cache);
                let page = svc
                    .store
                    .read(move |c| {
                        let page = mamori_store::search::search_scoped(c, &q2, &r2, &h2)?;
                        let mut kept = Vec::with_capacity(page.entries.len());
                        let mut dropped = 0u64;
                        for v in page.entries {
                            match decide_one(c, &a2, &v, now, &mut memo)? {
                                Some(d) => kept.push((v, d)),
                                None => dropped += 1,
                            }
                        }
                        Ok((kept, dropped, page.next, memo))
                    })
                    .await?;
                let (kept, dropped, next, memo) = page;
                cache = memo;
                withheld += dropped;
                for (v, d) in kept {
                    if v.last_updated > job.tx_time
                        || params.since.as_ref().is_some_and(|(_, s)| v.last_updated.micros() <= *s)
                    {
                        continue;
                    }
                    let owners = owners_of(&v);
                    if !in_scope(&owners, patient_level, group.as_ref(), only.as_ref()) {
                        continue;
                    }
                    if queries.len() > 1 && !seen.insert(v.id.clone()) {
                        continue;
                    }
                    count_for(&mut patients, owners, &d);
                    if let Some(e) = exported.as_mut() {
                        e.insert(format!("{}/{}", v.rtype, v.id));
                    }
                    match subset.as_ref().and_then(|s| s.apply(&v.body)) {
                        Some(body) => out.push(svc, &Version { body, ..v }).await?,
                        None => out.push(svc, &v).await?,
                    }
                    count += 1;
                    total += 1;
                }
                // Progress (and whether the job was cancelled) once a second.
                if last_progress.elapsed() >= Duration::from_secs(1) || next.is_none() {
                    last_progress = std::time::Instant::now();
                    let progress = format!("{t} ({}/{} types): {total} resources", ti + 1, types.len());
                    let id = job.id.clone();
                    let running = svc
                        .store
                        .writer()
                        .write(move |w| bulk::set_progress(w.conn, &id, &progress, w.now), |_, _| Ok(()))
                        .await?;
                    if !running {
                        return Err(ServiceError::Conflict("the export was cancelled".into()));
                    }
                }
                match next {
                    Some(c) => q.after = Some(c),
                    None => break,
                }
            }
        }
        out.flush(svc).await?;
        if count > 0 {
            per_type.insert((*t).to_owned(), json!(count));
        }
        // With `_since`, what was deleted since then, each decided as a
        // read of the version before its deletion (IG v2 `deleted`).
        if let Some((_, since)) = &params.since {
            let (t2, since, until, a2, now) = (*t, Timestamp(*since), job.tx_time, actor.clone(), svc.now());
            let gone = svc
                .store
                .read(move |c| {
                    let mut kept = Vec::new();
                    let mut memo = Cache::new();
                    for v in bulk::deleted_between(c, t2, since, until)? {
                        if let Some(d) = decide_one(c, &a2, &v, now, &mut memo)? {
                            kept.push((v, d));
                        }
                    }
                    Ok(kept)
                })
                .await?;
            for (v, d) in gone {
                let owners = owners_of(&v);
                if !in_scope(&owners, patient_level, group.as_ref(), only.as_ref()) {
                    continue;
                }
                count_for(&mut patients, owners, &d);
                let entry = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"request": {"method": "DELETE", "url": format!("{}/{}", v.rtype, v.id)}}]});
                let line = Version { rtype: DELETED.into(), body: entry.to_string(), ..v };
                out.push(svc, &line).await?;
                deleted += 1;
            }
            out.flush(svc).await?;
        }
    }
    if let Some(focal) = exported.take() {
        let scope = Scope { patient_level, group: group.as_ref(), only: only.as_ref() };
        let latest_only = !params.associated.iter().any(|a| a == "RelevantProvenanceResources");
        let mut ctx = ExportCtx { out: &mut out, patients: &mut patients, cache: &mut cache, withheld: &mut withheld };
        match associated_provenance(svc, &actor, &job, &focal, scope, latest_only, &mut ctx).await? {
            Some(n) => {
                if n > 0 {
                    let before = per_type.get("Provenance").and_then(serde_json::Value::as_u64).unwrap_or(0);
                    per_type.insert("Provenance".into(), json!(before + n));
                }
                total += n;
            }
            None => not_permitted.push("Provenance"),
        }
    }
    if withheld > 0 || !not_permitted.is_empty() {
        let mut text = format!("{withheld} resources were withheld: your access does not open them to an export");
        if !not_permitted.is_empty() {
            text.push_str(&format!("; types not searched: {}", not_permitted.join(", ")));
        }
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed", "diagnostics": text}]});
        out.rtype = "OperationOutcome".into();
        out.buf = format!("{oo}\n").into_bytes();
        out.lines = 1;
        out.flush(svc).await?;
    }
    // Every patient whose data the export holds, before anyone may fetch it.
    let mut recs = Vec::with_capacity(patients.len().min(AUDIT_CHUNK));
    let now = svc.now();
    let mut list: Vec<(String, Included)> = patients.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    let n_patients = list.len();
    for (p, inc) in list {
        let mut rec = actor.fhir_record(
            "export",
            200,
            Some("Patient"),
            Some(&p),
            None,
            vec![p.clone()],
            Some(&inc.decision),
            now,
        );
        rec.query = Some("$export".into());
        rec.detail = Some(json!({"export": job.id, "resources": inc.resources}));
        recs.push(rec);
        if recs.len() >= AUDIT_CHUNK {
            svc.audit(std::mem::take(&mut recs)).await?;
        }
    }
    let summary = json!({
        "resources": total,
        "deleted": deleted,
        "types": per_type,
        "patients": n_patients,
        "withheld": withheld,
        "types_not_searched": not_permitted,
    });
    let mut done = actor.decided("export", 200, &d, now);
    set_patients(&mut done, Vec::new());
    done.query = Some(job.request.chars().take(2000).collect());
    done.detail = Some(json!({"export": job.id, "summary": summary}));
    recs.push(done);
    let (id, text, expires) = (job.id.clone(), summary.to_string(), now.plus_secs(retention(svc)));
    let last = recs.pop();
    if !recs.is_empty() {
        svc.audit(recs).await?;
    }
    let completed = svc
        .store
        .writer()
        .write(
            move |w| {
                if !bulk::complete(w.conn, &id, &text, w.now, expires)? {
                    return Ok(false);
                }
                if let Some(r) = &last {
                    w.audit(r)?;
                }
                Ok(true)
            },
            |_, _| Ok(()),
        )
        .await?;
    if !completed {
        return Err(ServiceError::Conflict("the export was cancelled".into()));
    }
    Ok(())
}

/// Which patients' data an export holds (see [`in_scope`]).
#[derive(Clone, Copy)]
struct Scope<'a> {
    patient_level: bool,
    group: Option<&'a HashSet<String>>,
    only: Option<&'a HashSet<String>>,
}

/// What an export accumulates while it runs.
struct ExportCtx<'a> {
    out: &'a mut Out,
    patients: &'a mut HashMap<String, Included>,
    cache: &'a mut Cache,
    withheld: &'a mut u64,
}

/// `includeAssociatedData`: the Provenance resources whose `target`
/// names a resource the export holds (all of them, or with only
/// `LatestProvenanceResources` the latest per target), each decided as
/// its read like any exported resource, those already exported as
/// resources of their own left out. `None`: the caller may not search
/// Provenance (nothing added). Returns how many were added.
async fn associated_provenance(
    svc: &Services,
    actor: &Actor,
    job: &Job,
    focal: &HashSet<String>,
    scope: Scope<'_>,
    latest_only: bool,
    ctx: &mut ExportCtx<'_>,
) -> Result<Option<u64>, ServiceError> {
    let rtype = ResourceType::parse("Provenance").map_err(|e| ServiceError::internal(e.to_string()))?;
    let search = Operation::Record { action: Action::Search, target: Target { rtype, scope: PatientScope::Any } };
    let td = authz::decide(actor, &search, Facts::default());
    if !opens(&td) {
        return Ok(None);
    }
    let restrict = restriction(&td, actor, svc.now());
    let pairs = vec![("_count".to_owned(), PAGE.to_string()), ("_total".to_owned(), "none".to_owned())];
    let (mut q, _) = parse_query(rtype, &pairs, false).map_err(|e| ServiceError::internal(e.to_string()))?;
    // Kept: (resource, its decision); with latest only, the latest per target.
    let mut kept: Vec<(Version, Decision, Timestamp)> = Vec::new();
    let mut latest: HashMap<String, usize> = HashMap::new();
    loop {
        let (a2, q2, r2) = (actor.clone(), q.clone(), restrict.clone());
        let now = svc.now();
        let page = svc.store.read(move |c| mamori_store::search::search(c, &q2, &r2)).await?;
        let next = page.next;
        let mut candidates = Vec::new();
        for v in page.entries {
            if v.last_updated > job.tx_time || focal.contains(&format!("Provenance/{}", v.id)) {
                continue;
            }
            let body: serde_json::Value = serde_json::from_str(&v.body).unwrap_or_default();
            let targets: Vec<String> = body["target"]
                .as_array()
                .map(|a| a.iter().filter_map(|t| t["reference"].as_str()).map(str::to_owned).collect())
                .unwrap_or_default();
            let hits: Vec<String> = targets.into_iter().filter(|t| focal.contains(t)).collect();
            if !hits.is_empty() && in_scope(&owners_of(&v), scope.patient_level, scope.group, scope.only) {
                let recorded = body["recorded"].as_str().and_then(Timestamp::parse_rfc3339).unwrap_or(v.last_updated);
                candidates.push((v, hits, recorded));
            }
        }
        let mut memo = std::mem::take(ctx.cache);
        let decided = svc
            .store
            .read(move |c| {
                let mut out = Vec::new();
                for (v, hits, recorded) in candidates {
                    let d = decide_one(c, &a2, &v, now, &mut memo)?;
                    out.push((v, hits, recorded, d));
                }
                Ok((out, memo))
            })
            .await?;
        let (decided, memo) = decided;
        *ctx.cache = memo;
        for (v, hits, recorded, d) in decided {
            let Some(d) = d else {
                *ctx.withheld += 1;
                continue;
            };
            if !latest_only {
                kept.push((v, d, recorded));
                continue;
            }
            let i = kept.len();
            let mut wanted = false;
            for t in hits {
                if latest.get(&t).and_then(|&j| kept.get(j)).is_none_or(|(_, _, r)| *r < recorded) {
                    latest.insert(t, i);
                    wanted = true;
                }
            }
            if wanted {
                kept.push((v, d, recorded));
            }
        }
        match next {
            Some(c) => q.after = Some(c),
            None => break,
        }
    }
    // With latest only, a Provenance superseded for every target it named
    // is dropped.
    let chosen: HashSet<usize> =
        if latest_only { latest.values().copied().collect() } else { (0..kept.len()).collect() };
    let mut n = 0;
    for (i, (v, d, _)) in kept.into_iter().enumerate() {
        if !chosen.contains(&i) {
            continue;
        }
        count_for(ctx.patients, owners_of(&v), &d);
        ctx.out.push(svc, &v).await?;
        n += 1;
    }
    ctx.out.flush(svc).await?;
    Ok(Some(n))
}

/// Whether a resource of these patients belongs in the export: at Patient
/// and Group level only patient data, at Group level only the members',
/// and with `patient=` only those patients'.
fn in_scope(
    owners: &[String],
    patient_level: bool,
    group: Option<&HashSet<String>>,
    only: Option<&HashSet<String>>,
) -> bool {
    !(patient_level && owners.is_empty())
        && group.is_none_or(|g| owners.iter().any(|p| g.contains(p)))
        && only.is_none_or(|o| owners.iter().any(|p| o.contains(p)))
}

/// The subset `_elements` asks for of type `t`: the items without a type
/// and those of `t`; `None` (the whole resource) when none apply to it.
fn elements_for(items: &[String], t: &str) -> Option<Subset> {
    let names: Vec<String> = items
        .iter()
        .filter_map(|i| match i.split_once('.') {
            Some((ty, e)) => (ty == t).then(|| e.to_owned()),
            None => Some(i.clone()),
        })
        .collect();
    (!names.is_empty()).then(|| Subset { elements: Some(names), ..Subset::default() })
}

/// Counts an exported resource (or deletion) for each of its patients.
/// A patient's event names what opened their clinical records, not only
/// their demographics.
fn count_for(patients: &mut HashMap<String, Included>, owners: Vec<String>, d: &Decision) {
    for p in owners {
        let e = patients.entry(p).or_insert_with(|| Included { resources: 0, decision: d.clone() });
        e.resources += 1;
        if e.decision.basis == Basis::RoleDemographics {
            e.decision.clone_from(d);
        }
    }
}

/// The patients a resource is the data of (a Patient is its own).
fn owners_of(v: &Version) -> Vec<String> {
    if v.rtype == "Patient" {
        vec![v.id.clone()]
    } else {
        v.patients.clone()
    }
}

/// Decisions already made in an export, by type and patients.
type Cache = HashMap<(String, Vec<String>), Option<Decision>>;

/// Decides one resource as its read; `None`: withheld. Patient resources
/// are decided one by one (each is its own patient); others are
/// remembered by type and patients, at most 100,000 at a time.
fn decide_one(
    c: &mut dyn Conn,
    actor: &Actor,
    v: &Version,
    now: Timestamp,
    cache: &mut Cache,
) -> Result<Option<Decision>, StoreError> {
    let rtype = ResourceType::parse(&v.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
    let owners = owners_of(v);
    let key = (v.rtype.clone(), owners);
    if let Some(d) = cache.get(&key) {
        return Ok(d.clone());
    }
    let d = authz::decide_record(c, actor, Action::Read, rtype, &key.1, now)?;
    let d = opens(&d).then_some(d);
    if v.rtype != "Patient" {
        if cache.len() >= 100_000 {
            cache.clear();
        }
        cache.insert(key, d.clone());
    }
    Ok(d)
}
