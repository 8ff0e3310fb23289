//! `POST /fhir/Patient/$merge` (the FHIR R5 operation's semantics on R4
//! resources) and its undoing: every reference to the source patient is
//! re-pointed to the target as a new version, the source becomes inactive
//! with a `replaced-by` link, the target gets `replaces`; nothing is
//! deleted. `preview` shows exactly what would change. Each merge is
//! recorded, audited, reviewable (`/api/v1/merges`) and can be undone while
//! none of the resources it changed has changed since.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::continuity::repoint_patient;
use mamori_core::fhir::search::parse_query;
use mamori_core::ids::ResourceType;
use mamori_core::policy::Role;
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::writer::WriteCtx;
use mamori_store::{continuity as cs, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OpsError};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/merges", get(list))
        .route("/api/v1/merges/{id}", get(show))
        .route("/api/v1/merges/{id}/undo", post(undo))
        .route("/api/v1/merges/{id}/review", post(review))
}

fn may_merge(caller: &Caller) -> bool {
    let s = caller.subject();
    s.has(Role::Clerk) || s.has(Role::Physician)
}

/// The parsed `$merge` Parameters.
#[derive(Debug, Clone, Default)]
pub struct MergeReq {
    pub source: Option<String>,
    pub source_identifier: Option<(String, String)>,
    pub target: Option<String>,
    pub target_identifier: Option<(String, String)>,
    pub result: Option<Value>,
    pub preview: bool,
    pub reason: Option<String>,
}

fn reference_id(v: &Value, name: &str) -> Result<String, ApiError> {
    let r = v
        .pointer("/valueReference/reference")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(name, "valueReference.reference required"))?;
    r.strip_prefix("Patient/").map(str::to_owned).ok_or_else(|| ApiError::bad(name, "a Patient reference"))
}

fn identifier(v: &Value, name: &str) -> Result<(String, String), ApiError> {
    let i = v.get("valueIdentifier").ok_or_else(|| ApiError::bad(name, "valueIdentifier required"))?;
    match (i.get("system").and_then(Value::as_str), i.get("value").and_then(Value::as_str)) {
        (Some(s), Some(v)) => Ok((s.to_owned(), v.to_owned())),
        _ => Err(ApiError::bad(name, "an identifier with system and value")),
    }
}

pub fn parse_parameters(p: &Value) -> Result<MergeReq, ApiError> {
    if p.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ApiError::bad("", "a Parameters resource"));
    }
    let mut r = MergeReq::default();
    for x in p.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = x.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "source-patient" => r.source = Some(reference_id(x, name)?),
            "target-patient" => r.target = Some(reference_id(x, name)?),
            "source-patient-identifier" => r.source_identifier = Some(identifier(x, name)?),
            "target-patient-identifier" => r.target_identifier = Some(identifier(x, name)?),
            "result-patient" => r.result = x.get("resource").cloned(),
            "preview" => r.preview = x.get("valueBoolean").and_then(Value::as_bool).unwrap_or(false),
            "reason" => r.reason = x.get("valueString").and_then(Value::as_str).map(str::to_owned),
            other => return Err(ApiError::bad("parameter", format!("unknown $merge parameter '{other}'"))),
        }
    }
    if r.source.is_none() == r.source_identifier.is_none() || r.target.is_none() == r.target_identifier.is_none() {
        return Err(ApiError::bad(
            "parameter",
            "give source-patient or source-patient-identifier, and target-patient or target-patient-identifier",
        ));
    }
    Ok(r)
}

fn by_identifier(c: &mut dyn Conn, (sys, val): &(String, String), name: &str) -> Result<String, ApiError> {
    let (q, _) = parse_query(ResourceType::PATIENT, &[("identifier".into(), format!("{sys}|{val}"))], false)
        .map_err(|e| ApiError::bad(name, e.to_string()))?;
    let page = mamori_store::search::search(c, &q, &Restriction::None)?;
    match page.entries.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ApiError::NotFound(format!("no patient with identifier {sys}|{val}"))),
        _ => Err(ApiError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
            path: name.into(),
            message: format!("several patients have identifier {sys}|{val}"),
        }])),
    }
}

fn body_of(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<(u64, Value), ApiError> {
    let v = records::read(c, rtype, id)?.ok_or_else(|| ApiError::NotFound(format!("{rtype}/{id}")))?;
    if v.deleted {
        return Err(ApiError::Gone(format!("{rtype}/{id}")));
    }
    Ok((v.version, serde_json::from_str(&v.body).map_err(|e| ApiError::Internal(e.to_string()))?))
}

fn strip_meta(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
    }
    v
}

/// What a merge would write: (rtype, id, version before, new body).
pub struct Plan {
    pub source: String,
    pub target: String,
    pub writes: Vec<(String, String, u64, Value)>,
}

pub fn plan(c: &mut dyn Conn, r: &MergeReq) -> Result<Plan, ApiError> {
    let source = match (&r.source, &r.source_identifier) {
        (Some(s), _) => s.clone(),
        (None, Some(i)) => by_identifier(c, i, "source-patient-identifier")?,
        _ => return Err(ApiError::bad("source-patient", "required")),
    };
    let target = match (&r.target, &r.target_identifier) {
        (Some(s), _) => s.clone(),
        (None, Some(i)) => by_identifier(c, i, "target-patient-identifier")?,
        _ => return Err(ApiError::bad("target-patient", "required")),
    };
    if source == target {
        return Err(ApiError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
            path: "target-patient".into(),
            message: "source and target are the same patient".into(),
        }]));
    }
    let (sv, mut sbody) = body_of(c, "Patient", &source)?;
    let (tv, tbody) = body_of(c, "Patient", &target)?;
    let replaced = |b: &Value| b["link"].as_array().is_some_and(|a| a.iter().any(|l| l["type"] == "replaced-by"));
    if replaced(&sbody) {
        return Err(ApiError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
            path: "source-patient".into(),
            message: format!("Patient/{source} was already merged"),
        }]));
    }
    if replaced(&tbody) {
        return Err(ApiError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
            path: "target-patient".into(),
            message: format!("Patient/{target} was merged into another patient; merge into that one"),
        }]));
    }
    let mut writes = Vec::new();
    for (rt, id) in cs::referrers(c, &source)? {
        let (v, mut body) = body_of(c, &rt, &id)?;
        if repoint_patient(&mut body, &source, &target) > 0 {
            writes.push((rt, id, v, strip_meta(body)));
        }
    }
    sbody["active"] = json!(false);
    let link = |other: &str, ty: &str| json!({"other": {"reference": format!("Patient/{other}")}, "type": ty});
    let mut sl = sbody["link"].as_array().cloned().unwrap_or_default();
    sl.push(link(&target, "replaced-by"));
    sbody["link"] = json!(sl);
    writes.push(("Patient".into(), source.clone(), sv, strip_meta(sbody)));
    let mut t = match &r.result {
        Some(res) => {
            if res.get("id").and_then(Value::as_str) != Some(&target) {
                return Err(ApiError::bad("result-patient", "its id must be the target's"));
            }
            crate::fhir::write::validate_body(ResourceType::PATIENT, res)?;
            res.clone()
        }
        None => tbody,
    };
    let mut tl = t["link"].as_array().cloned().unwrap_or_default();
    tl.retain(|l| l["other"]["reference"] != format!("Patient/{source}"));
    tl.push(link(&source, "replaces"));
    t["link"] = json!(tl);
    writes.push(("Patient".into(), target.clone(), tv, strip_meta(t)));
    Ok(Plan { source, target, writes })
}

fn outcome(severity: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": "informational", "diagnostics": text}]})
}

/// Applies a plan in a job; returns the merge id.
pub fn apply(w: &mut WriteCtx<'_>, p: &Plan, reason: Option<&str>, author: &str) -> Result<i64, StoreError> {
    let mut changes = Vec::new();
    for (rt, id, before, body) in &p.writes {
        let cur = records::current(w.conn, rt, id)?.ok_or_else(|| StoreError::NotFound(format!("{rt}/{id}")))?;
        if cur.version != *before {
            return Err(StoreError::Precondition(format!("{rt}/{id} changed during the merge; try again")));
        }
        let rtype = ResourceType::parse(rt).map_err(|e| StoreError::Internal(e.to_string()))?;
        let written = records::put(w.conn, rtype, id, body.clone(), Some(*before), author, w.now)?;
        changes.push(json!([rt, id, before, written.version]));
    }
    cs::insert_merge(w.conn, &p.source, &p.target, &json!(changes), reason, author, w.now)
}

pub async fn fhir_merge(st: AppState, caller: Caller, _headers: HeaderMap, body: Body) -> Response {
    let now = st.store.clock().now();
    let result = async {
        if !may_merge(&caller) {
            return Err(ApiError::Forbidden("merging patients is for clerks (medical records) and physicians".into()));
        }
        let bytes = crate::fhir::read_body(body, 4 << 20).await?;
        let params = crate::fhir::parse_json(&bytes)?;
        let req = parse_parameters(&params)?;
        let r2 = req.clone();
        let p = st.store.read(move |c| Ok(plan(c, &r2))).await??;
        let changed: Vec<Value> =
            p.writes.iter().map(|(rt, id, v, _)| json!({"reference": format!("{rt}/{id}"), "version": v})).collect();
        if req.preview {
            let mut rec = caller.record("patient-merge-preview", 200, now);
            rec.patients = vec![p.source.clone(), p.target.clone()];
            rec.detail = Some(json!({"changes": changed.len()}));
            st.store.writer().audit(vec![rec]).await?;
            let target = p.writes.last().map(|w| w.3.clone()).unwrap_or(Value::Null);
            return Ok(json!({"resourceType": "Parameters", "parameter": [
                {"name": "input", "resource": params},
                {"name": "outcome", "resource": outcome("information", &format!("preview: {} resources would change: {}", changed.len(),
                    changed.iter().filter_map(|c| c["reference"].as_str()).collect::<Vec<_>>().join(", ")))},
                {"name": "result", "resource": target},
            ]}));
        }
        let (c2, reason) = (caller.clone(), req.reason.clone());
        let user = caller.user.name.as_str().to_owned();
        let (src, tgt) = (p.source.clone(), p.target.clone());
        let n = changed.len();
        let id = st
            .store
            .writer()
            .write(
                move |w| {
                    let id = apply(w, &p, reason.as_deref(), &user)?;
                    let mut rec = c2.record("patient-merge", 200, w.now);
                    rec.patients = vec![p.source.clone(), p.target.clone()];
                    rec.entity = Some(mamori_audit::event::Entity { rtype: "Patient".into(), id: Some(p.target.clone()), version: None });
                    rec.detail = Some(json!({"merge": id, "source": p.source, "target": p.target, "changes": p.writes.iter().map(|(rt, i, v, _)| format!("{rt}/{i}/_history/{v}")).collect::<Vec<_>>(), "reason": reason}));
                    w.audit(&rec)?;
                    Ok(id)
                },
                |_, _| Ok(()),
            )
            .await?;
        let t2 = tgt.clone();
        let (_, target) = st.store.read(move |c| Ok(body_of(c, "Patient", &t2))).await??;
        Ok(json!({"resourceType": "Parameters", "parameter": [
            {"name": "input", "resource": params},
            {"name": "outcome", "resource": outcome("information", &format!("Patient/{src} merged into Patient/{tgt}: {n} resources changed (merge {id})"))},
            {"name": "result", "resource": target},
            {"name": "merge-id", "valueString": id.to_string()},
        ]}))
    }
    .await;
    match result {
        Ok(v) => {
            (StatusCode::OK, [("content-type", crate::fhir::FHIR_JSON)], crate::fhir::json_bytes(&v)).into_response()
        }
        Err(e) => {
            let mut rec = caller.record("patient-merge", e.status().as_u16(), now);
            rec.detail = Some(json!({"error": e.audit_text()}));
            let _ = st.store.writer().audit(vec![rec]).await;
            e.into_response()
        }
    }
}

#[derive(Deserialize)]
struct ListQ {
    patient: Option<String>,
}

fn may_see(caller: &Caller) -> bool {
    let s = caller.subject();
    may_merge(caller) || s.has(Role::Auditor) || s.has(Role::Admin)
}

async fn list(State(st): State<AppState>, caller: Caller, Query(q): Query<ListQ>) -> Result<Response, OpsError> {
    if !may_see(&caller) {
        return Err(refuse(
            &st,
            &caller,
            "merge-list",
            ApiError::Forbidden("merges are for clerks, physicians, auditors and admins".into()),
        )
        .await);
    }
    let rows = st.store.read(move |c| cs::merges(c, q.patient.as_deref(), 500)).await?;
    Ok(Json(json!({"merges": rows})).into_response())
}

async fn show(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> Result<Response, OpsError> {
    if !may_see(&caller) {
        return Err(refuse(
            &st,
            &caller,
            "merge-read",
            ApiError::Forbidden("merges are for clerks, physicians, auditors and admins".into()),
        )
        .await);
    }
    let m = st.store.read(move |c| cs::merge(c, id)).await?.ok_or_else(|| ApiError::NotFound(format!("merge {id}")))?;
    Ok(Json(json!(m)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonReq {
    reason: String,
}

/// Undoes a merge: every resource it changed gets a new version equal to
/// its version before the merge — refused, changing nothing, if any of
/// them changed since.
async fn undo(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Body,
) -> Result<Response, OpsError> {
    const ACTION: &str = "patient-unmerge";
    if !may_merge(&caller) {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::Forbidden("undoing a merge is for clerks and physicians".into()),
        )
        .await);
    }
    let req: ReasonReq = match json_body::<ReasonReq>(body).await {
        Ok(r) if r.reason.trim().chars().count() >= 5 => r,
        Ok(_) => return Err(refuse(&st, &caller, ACTION, ApiError::bad("reason", "at least 5 characters")).await),
        Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
    };
    let (c2, c3) = (caller.clone(), caller.clone());
    let restored = st
        .store
        .writer()
        .write(
            move |w| {
                let m = cs::merge(w.conn, id)?.ok_or_else(|| StoreError::NotFound(format!("merge {id}")))?;
                if m.state != "merged" {
                    return Err(StoreError::Precondition(format!("merge {id} was already undone")));
                }
                let changes: Vec<(String, String, u64, u64)> =
                    serde_json::from_value(m.changes.clone()).map_err(|e| StoreError::Internal(e.to_string()))?;
                let mut changed_since = Vec::new();
                for (rt, rid, _, after) in &changes {
                    let cur = records::current(w.conn, rt, rid)?;
                    if cur.as_ref().map(|c| (c.version, c.deleted)) != Some((*after, false)) {
                        changed_since.push(format!("{rt}/{rid}"));
                    }
                }
                if !changed_since.is_empty() {
                    return Err(StoreError::Precondition(format!(
                        "these resources changed after the merge; resolve them by hand first: {}",
                        changed_since.join(", ")
                    )));
                }
                let user = c2.user.name.as_str().to_owned();
                let mut restored = Vec::new();
                for (rt, rid, before, after) in &changes {
                    let old = records::vread(w.conn, rt, rid, *before)?
                        .ok_or_else(|| StoreError::Internal(format!("{rt}/{rid}/_history/{before} missing")))?;
                    let body: Value =
                        serde_json::from_str(&old.body).map_err(|e| StoreError::Internal(e.to_string()))?;
                    let rtype = ResourceType::parse(rt).map_err(|e| StoreError::Internal(e.to_string()))?;
                    let written = records::put(w.conn, rtype, rid, strip_meta(body), Some(*after), &user, w.now)?;
                    restored.push(format!("{rt}/{rid}/_history/{}", written.version));
                }
                cs::mark_unmerged(w.conn, id, &user, w.now)?;
                let mut rec = c2.record(ACTION, 200, w.now);
                rec.patients = vec![m.source.clone(), m.target.clone()];
                rec.detail = Some(json!({"merge": id, "restored": restored, "reason": req.reason.trim()}));
                w.audit(&rec)?;
                Ok(restored)
            },
            move |e, w| {
                let mut rec = c3.record(ACTION, ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"merge": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({"merge": id, "state": "unmerged", "restored": restored})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    note: String,
}

async fn review(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: Body,
) -> Result<Response, OpsError> {
    const ACTION: &str = "merge-review";
    let s = caller.subject();
    if !(s.has(Role::Auditor) || s.has(Role::Admin)) {
        return Err(refuse(
            &st,
            &caller,
            ACTION,
            ApiError::Forbidden("merge reviews are for auditors and admins".into()),
        )
        .await);
    }
    let req: ReviewReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, ACTION, e).await),
    };
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                let m = cs::merge(w.conn, id)?.ok_or_else(|| StoreError::NotFound(format!("merge {id}")))?;
                if m.by_user == c2.user.name.as_str() {
                    return Err(StoreError::Forbidden("a merge is reviewed by someone other than who made it".into()));
                }
                if !cs::review_merge(w.conn, id, c2.user.name.as_str(), req.note.trim(), w.now)? {
                    return Err(StoreError::Precondition(format!("merge {id} was already reviewed")));
                }
                let mut rec = c2.record(ACTION, 200, w.now);
                rec.patients = vec![m.source, m.target];
                rec.detail = Some(json!({"merge": id, "note": req.note.trim()}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"merge": id, "reviewed": true})).into_response())
}
