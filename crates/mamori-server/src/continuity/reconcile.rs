//! Reconciliation after recovery (EM-C2, docs/reconciliation.md): imports
//! a standalone node's export under the data-consistency rules — every
//! entry keeps its provenance, nothing changed elsewhere is overwritten
//! (conflicts are queued for a person), provisional patients are matched
//! by a person and merged, re-importing changes nothing — and the
//! transcription of paper records with their original author and time.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::continuity::{reconcile, repoint_patient, Central, Reconcile, PROVISIONAL_SYSTEM, TAG_SYSTEM};
use mamori_core::fhir::search::{parse_query, patient_of};
use mamori_core::fhir::validate::validate_resource;
use mamori_core::ids::ResourceType;
use mamori_core::policy::Role;
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::writer::WriteCtx;
use mamori_store::{accounts, continuity as cs, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::container::{self, unb64, ContainerError, EXPORT_MAGIC};
use super::snapshot::{self, SnapError};
use crate::error::{ApiError, OpsError};
use crate::fhir::write::{step_record, validate_body, write_step, Step, WriteOp};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/reconcile/imports", get(imports).post(import))
        .route("/api/v1/reconcile/tasks", get(tasks))
        .route("/api/v1/reconcile/tasks/{id}/resolve", post(resolve))
        .route("/api/v1/transcriptions", post(transcribe))
}

const PARTICIPANT: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// One entry of a standalone export.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub entry: String,
    pub t: String,
    pub id: String,
    pub local_version: u64,
    pub base: Option<u64>,
    pub deleted: bool,
    pub author: String,
    pub recorded_at: String,
    pub r: Value,
}

fn strip_meta(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            v.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    v
}

fn same(a: &Value, b: &Value) -> bool {
    strip_meta(a.clone()) == strip_meta(b.clone())
}

fn provenance(
    target: &str,
    occurred: &str,
    enterer: &str,
    custodian: &str,
    source: &Value,
    activity: &str,
    author: Option<&str>,
) -> Value {
    let mut agents =
        vec![json!({"type": {"coding": [{"system": PARTICIPANT, "code": "enterer"}]}, "who": {"display": enterer}})];
    if let Some(a) = author {
        agents
            .insert(0, json!({"type": {"coding": [{"system": PARTICIPANT, "code": "author"}]}, "who": {"display": a}}));
    }
    agents.push(
        json!({"type": {"coding": [{"system": PARTICIPANT, "code": "custodian"}]}, "who": {"display": custodian}}),
    );
    json!({
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "occurredDateTime": occurred,
        "recorded": "",
        "agent": agents,
        "entity": [{"role": "source", "what": source}],
        "activity": {"text": activity},
    })
}

fn put_provenance(w: &mut WriteCtx<'_>, mut p: Value, author: &str) -> Result<String, StoreError> {
    p["recorded"] = json!(w.now.to_rfc3339());
    validate_body(ResourceType::parse("Provenance").map_err(|e| StoreError::Internal(e.to_string()))?, &p)
        .map_err(|e| StoreError::invalid("Provenance", e.audit_text()))?;
    let id = accounts::new_id()?;
    records::put(
        w.conn,
        ResourceType::parse("Provenance").map_err(|e| StoreError::Internal(e.to_string()))?,
        &id,
        p,
        None,
        author,
        w.now,
    )?;
    Ok(id)
}

/// Suggested central matches for a provisional patient.
fn suggest(c: &mut dyn Conn, p: &Value, self_id: &str) -> Result<Vec<Value>, StoreError> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |c: &mut dyn Conn,
                   pairs: Vec<(String, String)>,
                   why: String,
                   out: &mut Vec<Value>|
     -> Result<(), StoreError> {
        let Ok((q, _)) = parse_query(ResourceType::PATIENT, &pairs, false) else { return Ok(()) };
        for v in mamori_store::search::search(c, &q, &Restriction::None)?.entries {
            if v.id != self_id && seen.insert(v.id.clone()) {
                let b: Value = serde_json::from_str(&v.body).unwrap_or(Value::Null);
                let provisional =
                    b["identifier"].as_array().is_some_and(|a| a.iter().any(|i| i["system"] == PROVISIONAL_SYSTEM));
                if !provisional {
                    out.push(json!({"patient": v.id, "why": why, "name": b["name"], "birthDate": b["birthDate"], "gender": b["gender"]}));
                }
            }
        }
        Ok(())
    };
    for i in p["identifier"].as_array().into_iter().flatten() {
        if let (Some(s), Some(v)) = (i["system"].as_str(), i["value"].as_str()) {
            if s != PROVISIONAL_SYSTEM {
                add(c, vec![("identifier".into(), format!("{s}|{v}"))], format!("identifier {s}|{v}"), &mut out)?;
            }
        }
    }
    for n in p["name"].as_array().into_iter().flatten() {
        if let Some(f) = n["family"].as_str() {
            let mut pairs = vec![("family".to_owned(), f.to_owned())];
            let mut why = format!("family name {f}");
            if let Some(b) = p["birthDate"].as_str() {
                pairs.push(("birthdate".into(), b.to_owned()));
                why.push_str(&format!(", born {b}"));
            }
            if let Some(g) = p["gender"].as_str().filter(|g| *g != "unknown") {
                pairs.push(("gender".into(), g.to_owned()));
            }
            add(c, pairs, why, &mut out)?;
        }
    }
    out.truncate(10);
    Ok(out)
}

fn is_provisional(p: &Value) -> bool {
    p["meta"]["tag"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["system"] == TAG_SYSTEM && t["code"] == "provisional"))
}

struct Ctx<'a> {
    export: &'a str,
    node: &'a str,
    by: &'a str,
}

/// Applies entries in a job; returns the report.
fn apply(w: &mut WriteCtx<'_>, cx: &Ctx<'_>, entries: &[Entry], mut rejected: Vec<Value>) -> Result<Value, StoreError> {
    let in_export: HashSet<String> =
        entries.iter().filter(|e| e.t == "Patient" && !e.deleted).map(|e| e.id.clone()).collect();
    let mut out = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut patients = HashSet::new();
    let source = json!({"identifier": {"system": "urn:mamori:standalone-export", "value": cx.export}, "display": format!("standalone node {} / export {}", cx.node, cx.export)});
    for e in entries {
        let rtype = ResourceType::parse(&e.t).map_err(|x| StoreError::Internal(x.to_string()))?;
        let cur = records::read(w.conn, &e.t, &e.id)?;
        let applied = cs::applied(w.conn, cx.node, &e.t, &e.id)?;
        if applied.is_some_and(|(l, _)| l >= e.local_version) {
            out.push(json!({"entry": e.entry, "outcome": "unchanged", "reason": "already imported"}));
            *counts.entry("unchanged").or_default() += 1;
            continue;
        }
        // A later export continues from what the node's earlier export became.
        let base = applied.map(|(_, c)| c).or(e.base);
        let task = |w: &mut WriteCtx<'_>, kind: &str, reason: String| -> Result<Value, StoreError> {
            let t = cs::insert_task(
                w.conn,
                cx.export,
                kind,
                &e.t,
                &e.id,
                &json!({"entry": e.entry, "reason": reason, "offline": e.r,
                "deleted": e.deleted, "base": e.base, "central_version": cur.as_ref().map(|c| c.version), "recorded_by": e.author,
                "recorded_at": e.recorded_at, "node": cx.node}),
                w.now,
            )?;
            Ok(
                json!({"entry": e.entry, "outcome": if kind == "conflict" { "conflict" } else { "queued" }, "task": t, "reason": reason}),
            )
        };
        if e.deleted {
            let r = task(w, "conflict", "deleted on the standalone node; a person decides".into())?;
            *counts.entry("conflicts").or_default() += 1;
            out.push(r);
            continue;
        }
        let central = cur.as_ref().map(|c| Central {
            version: c.version,
            deleted: c.deleted,
            same_content: !c.deleted && serde_json::from_str::<Value>(&c.body).is_ok_and(|b| same(&b, &e.r)),
        });
        match reconcile(base, central) {
            Reconcile::Unchanged => {
                *counts.entry("unchanged").or_default() += 1;
                out.push(json!({"entry": e.entry, "outcome": "unchanged"}));
            }
            Reconcile::Conflict { reason } => {
                *counts.entry("conflicts").or_default() += 1;
                out.push(task(w, "conflict", reason)?);
            }
            d @ (Reconcile::Create | Reconcile::FastForward) => {
                if let Some(p) = patient_of(rtype, &e.id, &e.r).filter(|_| rtype != ResourceType::PATIENT) {
                    let known =
                        in_export.contains(&p) || records::current(w.conn, "Patient", &p)?.is_some_and(|c| !c.deleted);
                    if !known {
                        *counts.entry("queued").or_default() += 1;
                        out.push(task(w, "unknown_patient", format!("Patient/{p} is not known centrally"))?);
                        continue;
                    }
                    patients.insert(p);
                }
                let expected = if d == Reconcile::FastForward { base } else { None };
                let author = format!("{}@{}", e.author, cx.node);
                let written = records::put(w.conn, rtype, &e.id, strip_meta(e.r.clone()), expected, &author, w.now)?;
                cs::set_applied(w.conn, cx.node, &e.t, &e.id, e.local_version, written.version)?;
                let target = format!("{}/{}/_history/{}", e.t, e.id, written.version);
                put_provenance(
                    w,
                    provenance(
                        &target,
                        &e.recorded_at,
                        &format!("{} @ standalone node {}", e.author, cx.node),
                        &format!("reconciled by {}", cx.by),
                        &source,
                        "スタンドアロン記録の統合 / reconciled from a standalone node",
                        None,
                    ),
                    cx.by,
                )?;
                let mut item = json!({"entry": e.entry, "outcome": if d == Reconcile::Create { "created" } else { "updated" }, "version": written.version});
                if rtype == ResourceType::PATIENT {
                    patients.insert(e.id.clone());
                    if is_provisional(&e.r) {
                        let sugg = suggest(w.conn, &e.r, &e.id)?;
                        let t = cs::insert_task(
                            w.conn,
                            cx.export,
                            "match",
                            "Patient",
                            &e.id,
                            &json!({"entry": e.entry, "provisional": e.r, "suggestions": sugg, "node": cx.node}),
                            w.now,
                        )?;
                        item["match_task"] = json!(t);
                        *counts.entry("to_match").or_default() += 1;
                    }
                }
                *counts.entry("imported").or_default() += 1;
                out.push(item);
            }
        }
    }
    *counts.entry("rejected").or_default() += rejected.len() as u64;
    out.append(&mut rejected);
    let mut pats: Vec<String> = patients.into_iter().collect();
    pats.sort();
    Ok(
        json!({"export": cx.export, "node": cx.node, "imported_by": cx.by, "imported_at": w.now.to_rfc3339(), "counts": counts,
              "patients": pats, "entries": out}),
    )
}

/// Reads, verifies and decrypts an export; returns its header and entries.
pub fn open_export(
    bytes: &[u8],
    trusted_keys: &[String],
    institution: &mamori_exchange::cms::Identity,
) -> Result<(Value, Vec<Entry>), SnapError> {
    let v = container::verify(bytes, EXPORT_MAGIC, "mamori standalone export")?;
    let node_cert = snapshot::check_signature(&v, "node_cert", None)?;
    // The node's certificate must be issued by one of our snapshot keys.
    let ok = trusted_keys.iter().any(|pem| {
        openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
            .ok()
            .is_some_and(|k| node_cert.verify(&k).unwrap_or(false))
    });
    if !ok {
        return Err(SnapError::Signature("the export is signed by an unknown node (its certificate was not issued by this institution's snapshot keys)".into()));
    }
    let enc = &v.header["encryption"];
    let k = snapshot::rsa_oaep_open(&institution.key, &unb64(enc["wrapped_key"].as_str().unwrap_or(""))?).map_err(
        |_| SnapError::Key("this export was not made for this institution (its key cannot be unwrapped)".into()),
    )?;
    let key: [u8; 32] = k.as_slice().try_into().map_err(|_| SnapError::Key("data key of the wrong size".into()))?;
    let prefix: [u8; 4] = unb64(enc["nonce_prefix"].as_str().unwrap_or(""))?
        .try_into()
        .map_err(|_| SnapError::Other("bad nonce prefix".into()))?;
    let mut entries = Vec::new();
    let mut bad: Option<String> = None;
    container::decrypt(bytes, EXPORT_MAGIC, "mamori standalone export", &key, &prefix, |line| {
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(x) => {
                bad = Some(x.to_string());
                return Err(ContainerError::Corrupt(format!("entry: {x}")));
            }
        }
        Ok(())
    })?;
    if let Some(b) = bad {
        return Err(SnapError::Other(b));
    }
    let declared = v.manifest["entries"].as_u64().unwrap_or(0);
    if declared != entries.len() as u64 {
        return Err(SnapError::Other(format!(
            "the manifest lists {declared} entries, the file holds {}",
            entries.len()
        )));
    }
    Ok((v.header, entries))
}

fn may_import(caller: &Caller) -> bool {
    let s = caller.subject();
    s.has(Role::Admin) || s.has(Role::Clerk)
}

async fn import(State(st): State<AppState>, caller: Caller, body: Body) -> Result<Response, OpsError> {
    const ACTION: &str = "reconcile-import";
    if !may_import(&caller) {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::Forbidden("reconciliation imports are for admins and clerks".into()),
        )
        .await);
    }
    let bytes = match axum::body::to_bytes(body, 1 << 30).await {
        Ok(b) => b,
        Err(_) => return Err(refuse(&st, &caller, ACTION, ApiError::TooLarge(1 << 30)).await),
    };
    let keys: Vec<String> = st.store.read(cs::keys).await?.into_iter().map(|k| k.public_pem).collect();
    let x = st.exchange.clone();
    let opened = tokio::task::spawn_blocking(move || open_export(&bytes, &keys, &x.identity))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (header, entries) = match opened {
        Ok(x) => x,
        Err(e) => {
            return Err(refuse(
                &st,
                &caller,
                ACTION,
                ApiError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
                    path: String::new(),
                    message: e.to_string(),
                }]),
            )
            .await)
        }
    };
    let export_id = header["id"].as_str().unwrap_or("").to_owned();
    let node = header["node"].as_str().unwrap_or("").to_owned();
    if let Some(prev) = st
        .store
        .read({
            let id = export_id.clone();
            move |c| cs::import_report(c, &id)
        })
        .await?
    {
        let mut rec = caller.record(ACTION, 200, st.store.clock().now());
        rec.detail = Some(json!({"export": export_id, "node": node, "already_imported": true}));
        st.store.writer().audit(vec![rec]).await?;
        return Ok(Json(json!({"already_imported": true, "report": prev})).into_response());
    }
    // Entries that are not valid resources are rejected (reported), never applied.
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        let why = if ResourceType::parse(&e.t).is_err() {
            Some(format!("'{}' is not a resource type", e.t))
        } else if e.deleted {
            None
        } else {
            match validate_resource(&e.r) {
                Ok(rt) if rt.as_str() == e.t && e.r["id"].as_str() == Some(e.id.as_str()) => None,
                Ok(_) => Some("the resource does not match its entry (type or id)".into()),
                Err(issues) => {
                    Some(issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; "))
                }
            }
        };
        match why {
            Some(w) => rejected.push(json!({"entry": e.entry, "outcome": "rejected", "reason": w})),
            None => valid.push(e),
        }
    }
    let (c2, eid, n2) = (caller.clone(), export_id.clone(), node.clone());
    let report = st
        .store
        .writer()
        .write_exclusive(
            move |w| {
                if cs::import_report(w.conn, &eid)?.is_some() {
                    return Err(StoreError::Duplicate(format!("export {eid} was imported meanwhile")));
                }
                let by = c2.user.name.as_str().to_owned();
                let report = apply(w, &Ctx { export: &eid, node: &n2, by: &by }, &valid, rejected)?;
                cs::insert_import(w.conn, &eid, &n2, &by, &report, w.now)?;
                let mut rec = c2.record(ACTION, 201, w.now);
                rec.patients = report["patients"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                rec.detail = Some(json!({"export": eid, "node": n2, "counts": report["counts"]}));
                w.audit(&rec)?;
                Ok(report)
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"already_imported": false, "report": report}))).into_response())
}

async fn imports(State(st): State<AppState>, caller: Caller) -> Result<Response, OpsError> {
    let s = caller.subject();
    if !(may_import(&caller) || s.has(Role::Auditor)) {
        return Err(OpsError(ApiError::Forbidden("reconciliation reports are for admins, clerks and auditors".into())));
    }
    let rows = st.store.read(|c| cs::imports(c, 200)).await?;
    Ok(Json(json!({"imports": rows})).into_response())
}

fn may_resolve(caller: &Caller) -> bool {
    let s = caller.subject();
    s.has(Role::Physician) || s.has(Role::Nurse) || s.has(Role::Clerk)
}

#[derive(Deserialize)]
struct TasksQ {
    state: Option<String>,
}

async fn tasks(State(st): State<AppState>, caller: Caller, Query(q): Query<TasksQ>) -> Result<Response, OpsError> {
    if !(may_resolve(&caller) || caller.subject().has(Role::Auditor)) {
        return Err(refuse(
            &st,
            &caller,
            "reconcile-tasks",
            ApiError::Forbidden("reconciliation tasks are for clinicians, clerks and auditors".into()),
        )
        .await);
    }
    let state = q.state.unwrap_or_else(|| "open".into());
    let rows = st.store.read(move |c| cs::tasks(c, if state == "all" { None } else { Some(&state) }, 1000)).await?;
    let mut rec = caller.record("reconcile-tasks", 200, st.store.clock().now());
    rec.detail = Some(json!({"count": rows.len()}));
    st.store.writer().audit(vec![rec]).await?;
    Ok(Json(json!({"tasks": rows})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveReq {
    /// conflict: central | offline | merged
    #[serde(default)]
    keep: Option<String>,
    /// conflict with keep = merged: the resource as a person merged it.
    #[serde(default)]
    resource: Option<Value>,
    /// match: merge the provisional patient into this one
    #[serde(default)]
    merge_into: Option<String>,
    /// match: the provisional patient is a new patient
    #[serde(default)]
    keep_as_new: Option<bool>,
    /// unknown_patient: file the entry under this patient
    #[serde(default)]
    assign_to: Option<String>,
    /// unknown_patient: drop the entry (it stays in the task)
    #[serde(default)]
    discard: Option<bool>,
    #[serde(default)]
    note: Option<String>,
}

async fn resolve(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Body,
) -> Result<Response, OpsError> {
    const ACTION: &str = "reconcile-resolve";
    if !may_resolve(&caller) {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::Forbidden("reconciliation tasks are resolved by clinicians and clerks".into()),
        )
        .await);
    }
    let req: ResolveReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
    };
    // A match needs the merge plan, computed on a reader first.
    let task =
        st.store.read(move |c| cs::task(c, id)).await?.ok_or_else(|| ApiError::NotFound(format!("task {id}")))?;
    let merge_plan = match (&task.kind[..], &req.merge_into) {
        ("match", Some(target)) => {
            let mr = super::merge::MergeReq {
                source: Some(task.rid.clone()),
                target: Some(target.trim_start_matches("Patient/").to_owned()),
                ..Default::default()
            };
            match st.store.read(move |c| Ok(super::merge::plan(c, &mr))).await? {
                Ok(p) => Some(p),
                Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
            }
        }
        _ => None,
    };
    let (c2, c3) = (caller.clone(), caller.clone());
    let result = st
        .store
        .writer()
        .write(
            move |w| {
                let t = cs::task(w.conn, id)?.ok_or_else(|| StoreError::NotFound(format!("task {id}")))?;
                if t.state != "open" {
                    return Err(StoreError::Precondition(format!("task {id} is already resolved")));
                }
                let user = c2.user.name.as_str().to_owned();
                let rtype = ResourceType::parse(&t.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
                let source = json!({"identifier": {"system": "urn:mamori:standalone-export", "value": t.import}, "display": format!("reconciliation task {id}")});
                let write_on_top = |w: &mut WriteCtx<'_>, body: Value, activity: &str| -> Result<Value, StoreError> {
                    let cur = records::current(w.conn, &t.rtype, &t.rid)?;
                    let expected = cur.as_ref().filter(|c| !c.deleted).map(|c| c.version);
                    let op = match expected {
                        Some(v) => WriteOp::Update { id: t.rid.clone(), if_match: Some(v) },
                        None => WriteOp::Update { id: t.rid.clone(), if_match: None },
                    };
                    let step = write_step(w, &c2, rtype, &op, Some(strip_meta(body)), None, &HashSet::new(), true)?;
                    let status = if matches!(step, Step::Done { .. }) { 200 } else { 403 };
                    let rec = step_record(&c2, &op, rtype, &step, status, w.now);
                    w.audit(&rec)?;
                    match step {
                        Step::Done { written, .. } => {
                            let target = format!("{}/{}/_history/{}", t.rtype, t.rid, written.version);
                            put_provenance(w, provenance(&target, t.detail["recorded_at"].as_str().unwrap_or(""), &format!("{} @ standalone node {}", t.detail["recorded_by"].as_str().unwrap_or("?"), t.detail["node"].as_str().unwrap_or("?")), &format!("resolved by {user}"), &source, activity, None), &user)?;
                            Ok(json!({"written": target}))
                        }
                        Step::Denied { decision, .. } => Err(StoreError::Forbidden(format!("not permitted ({})", decision.basis.as_str()))),
                        _ => Err(StoreError::Internal("unexpected write outcome".into())),
                    }
                };
                let resolution = match (t.kind.as_str(), &req) {
                    ("conflict", ResolveReq { keep: Some(k), .. }) if k == "central" => json!({"kept": "central"}),
                    ("conflict", ResolveReq { keep: Some(k), .. }) if k == "offline" => {
                        let mut r = write_on_top(w, t.detail["offline"].clone(), "conflict resolved: the standalone version kept / 競合解決：スタンドアロン版を採用")?;
                        r["kept"] = json!("offline");
                        r
                    }
                    ("conflict", ResolveReq { keep: Some(k), resource: Some(res), .. }) if k == "merged" => {
                        let mut r = write_on_top(w, res.clone(), "conflict resolved: merged by a person / 競合解決：統合版")?;
                        r["kept"] = json!("merged");
                        r
                    }
                    ("match", ResolveReq { merge_into: Some(target), .. }) => {
                        let p = merge_plan.as_ref().ok_or_else(|| StoreError::Internal("no merge plan".into()))?;
                        let m = super::merge::apply(w, p, Some(&format!("reconciliation task {id}")), &user)?;
                        let mut rec = c2.record("patient-merge", 200, w.now);
                        rec.patients = vec![p.source.clone(), p.target.clone()];
                        rec.detail = Some(json!({"merge": m, "source": p.source, "target": p.target, "task": id}));
                        w.audit(&rec)?;
                        json!({"merged_into": target, "merge": m})
                    }
                    ("match", ResolveReq { keep_as_new: Some(true), .. }) => {
                        let (v, mut body) = {
                            let v = records::read(w.conn, "Patient", &t.rid)?.ok_or_else(|| StoreError::NotFound(format!("Patient/{}", t.rid)))?;
                            (v.version, serde_json::from_str::<Value>(&v.body).map_err(|e| StoreError::Internal(e.to_string()))?)
                        };
                        if let Some(tags) = body["meta"]["tag"].as_array_mut() {
                            tags.retain(|x| !(x["system"] == TAG_SYSTEM && x["code"] == "provisional"));
                        }
                        records::put(w.conn, ResourceType::PATIENT, &t.rid, strip_meta(body), Some(v), &user, w.now)?;
                        json!({"kept_as_new": true})
                    }
                    ("unknown_patient", ResolveReq { assign_to: Some(p), .. }) => {
                        let mut body = t.detail["offline"].clone();
                        let missing = patient_of(rtype, &t.rid, &body).unwrap_or_default();
                        repoint_patient(&mut body, &missing, p.trim_start_matches("Patient/"));
                        let mut r = write_on_top(w, body, "filed under the patient a person chose / 担当者が患者を指定して登録")?;
                        r["assigned_to"] = json!(p);
                        r
                    }
                    ("unknown_patient", ResolveReq { discard: Some(true), .. }) => json!({"discarded": true}),
                    (kind, _) => {
                        return Err(StoreError::invalid("", format!(
                            "a {kind} task is resolved with {}",
                            match kind {
                                "conflict" => "keep = central | offline | merged (with resource)",
                                "match" => "merge_into = <patient id>, or keep_as_new = true",
                                _ => "assign_to = <patient id>, or discard = true",
                            }
                        )))
                    }
                };
                let mut resolution = resolution;
                resolution["note"] = json!(req.note);
                cs::resolve_task(w.conn, id, &resolution, &user, w.now)?;
                let mut rec = c2.record(ACTION, 200, w.now);
                rec.detail = Some(json!({"task": id, "kind": t.kind, "resource": format!("{}/{}", t.rtype, t.rid), "resolution": resolution}));
                w.audit(&rec)?;
                Ok(resolution)
            },
            move |e, w| {
                let mut rec = c3.record(ACTION, ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"task": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({"task": id, "state": "resolved", "resolution": result})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TranscribeReq {
    resource: Value,
    /// Who wrote it on paper.
    original_author: String,
    /// When it happened (FHIR dateTime).
    original_time: String,
    #[serde(default)]
    note: Option<String>,
}

/// Enters a paper record: the resource, plus a Provenance naming the
/// original author and time and the person transcribing it now.
async fn transcribe(State(st): State<AppState>, caller: Caller, body: Body) -> Result<Response, OpsError> {
    const ACTION: &str = "transcribe";
    let req: TranscribeReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
    };
    let rtype = match validate_resource(&req.resource) {
        Ok(t) => t,
        Err(issues) => return Err(refuse(&st, &caller, ACTION, ApiError::BadRequest(issues)).await),
    };
    if mamori_core::time::parse_date_time(&req.original_time).is_none() || req.original_author.trim().is_empty() {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::bad("original_time", "a FHIR dateTime, and original_author"),
        )
        .await);
    }
    let c2 = caller.clone();
    let out = st
        .store
        .writer()
        .write(
            move |w| {
                let op = WriteOp::Create { if_none_exist: None };
                let step = write_step(w, &c2, rtype, &op, Some(req.resource.clone()), None, &HashSet::new(), true)?;
                let status = if matches!(step, Step::Done { .. }) { 201 } else { 403 };
                let rec = step_record(&c2, &op, rtype, &step, status, w.now);
                w.audit(&rec)?;
                let Step::Done { written, .. } = step else {
                    return Err(StoreError::Forbidden("not permitted to record this for this patient".into()));
                };
                let target = format!("{}/{}/_history/{}", written.rtype, written.id, written.version);
                let user = c2.user.name.as_str().to_owned();
                let mut prov = provenance(
                    &target,
                    &req.original_time,
                    &format!("{} ({})", c2.user.display, user),
                    &st_name(&c2),
                    &json!({"display": "紙の記録 / paper record"}),
                    "紙記録からの転記 / transcribed from paper",
                    Some(req.original_author.trim()),
                );
                if let Some(n) = &req.note {
                    prov["reason"] = json!([{"text": n}]);
                }
                let pid = put_provenance(w, prov, &user)?;
                let mut rec = c2.record(ACTION, 201, w.now);
                rec.patients = written.patient.iter().cloned().collect();
                rec.detail = Some(json!({"resource": target, "provenance": pid, "original_author": req.original_author, "original_time": req.original_time}));
                w.audit(&rec)?;
                Ok(json!({"resource": target, "provenance": format!("Provenance/{pid}")}))
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

fn st_name(c: &Caller) -> String {
    match &c.node {
        Some(n) => format!("standalone node {n}"),
        None => "central system".into(),
    }
}
