//! Write interactions: create (incl. conditional), update (with
//! `If-Match`), delete. Each runs entirely inside one group-commit job:
//! facts, decision, change and audit event commit together.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_core::fhir::search::{parse_query, patient_of};
use mamori_core::fhir::validate::validate_resource;
use mamori_core::ids::ResourceType;
use mamori_core::policy::{decide, Action, Decision, Role};
use mamori_store::records::{self, Written};
use mamori_store::writer::WriteCtx;
use mamori_store::{accounts, search, StoreError};
use serde_json::{json, Value};

use super::read::{audited, parse_pairs};
use super::{
    check_accept, check_content_type, facts, parse_id, parse_json, parse_type, read_body, respond, target_of,
    version_headers,
};
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// What a write should do.
#[derive(Debug, Clone)]
pub enum WriteOp {
    Create { if_none_exist: Option<String> },
    Update { id: String, if_match: Option<u64> },
    Delete { id: String },
}

/// The result of one write inside a job.
#[derive(Debug, Clone)]
pub enum Step {
    Done {
        written: Written,
        decision: Decision,
    },
    /// Conditional create found exactly one match: nothing written.
    Matched {
        rtype: ResourceType,
        id: String,
        version: u64,
    },
    Denied {
        decision: Decision,
        what: String,
    },
    /// Delete of something that never existed, or is already deleted.
    NothingToDelete {
        existed: bool,
    },
}

/// Parses `If-Match: W/"3"`.
pub fn parse_etag(v: &str) -> Result<u64, ApiError> {
    let t = v.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"').parse().map_err(|_| ApiError::bad("If-Match", "expected an ETag like W/\"3\""))
}

/// Validates a resource body for `rtype`.
pub fn validate_body(rtype: ResourceType, body: &Value) -> Result<(), ApiError> {
    let t = validate_resource(body).map_err(ApiError::BadRequest)?;
    if t != rtype {
        return Err(ApiError::bad("resourceType", format!("body is a {t}, but the URL names {rtype}")));
    }
    Ok(())
}

/// Performs one write in a job. `pending` names resources this job will
/// create (bundle entries), for the reference check; with `check_refs`
/// false the caller checks references itself after all entries.
#[allow(clippy::too_many_arguments)]
pub fn write_step(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    rtype: ResourceType,
    op: &WriteOp,
    body: Option<Value>,
    assigned_id: Option<String>,
    pending: &HashSet<(String, String)>,
    check_refs: bool,
) -> Result<Step, StoreError> {
    let now = ctx.now;
    let subject = caller.subject();
    let mode = caller.mode();
    let author = caller.user.name.as_str().to_owned();
    let mut body = body;
    if let (Some(node), Some(b)) = (&caller.node, body.as_mut()) {
        crate::continuity::standalone::stamp(b, node);
    }
    if let WriteOp::Delete { id } | WriteOp::Update { id, .. } = op {
        if crate::exchange::partners::is_mirror(rtype.as_str(), id) {
            return Err(StoreError::Forbidden(format!(
                "{rtype}/{id} mirrors the partner registry and is read-only; change it through /api/v1/partners"
            )));
        }
    }
    match op {
        WriteOp::Delete { id } => {
            let cur = records::current(ctx.conn, rtype.as_str(), id)?;
            let Some(cur) = cur else {
                return Ok(Step::NothingToDelete { existed: false });
            };
            let f = facts(ctx.conn, caller, cur.patient.as_deref(), now)?;
            let d = decide(&subject, Action::Delete, target_of(rtype, cur.patient.as_deref()), &mode, f);
            if !d.permit {
                return Ok(Step::Denied { decision: d, what: format!("{rtype}/{id}") });
            }
            match records::delete(ctx.conn, rtype, id, &author, now)? {
                Some(written) => Ok(Step::Done { written, decision: d }),
                None => Ok(Step::NothingToDelete { existed: true }),
            }
        }
        WriteOp::Create { if_none_exist } => {
            let body = body.ok_or_else(|| StoreError::invalid("", "a resource body is required"))?;
            if let Some(cond) = if_none_exist {
                if let Some((id, version)) = conditional_match(ctx, rtype, cond)? {
                    return Ok(Step::Matched { rtype, id, version });
                }
            }
            let id = match assigned_id {
                Some(i) => i,
                None => accounts::new_id()?,
            };
            create_or_update(ctx, caller, rtype, &id, body, None, pending, check_refs, Action::Create, &author)
        }
        WriteOp::Update { id, if_match } => {
            let body = body.ok_or_else(|| StoreError::invalid("", "a resource body is required"))?;
            let exists = records::current(ctx.conn, rtype.as_str(), id)?.is_some_and(|c| !c.deleted);
            let action = if exists { Action::Update } else { Action::Create };
            create_or_update(ctx, caller, rtype, id, body, *if_match, pending, check_refs, action, &author)
        }
    }
}

/// Conditional create: the one existing resource matching `cond`, if any;
/// an error if several match.
pub fn conditional_match(
    ctx: &mut WriteCtx<'_>,
    rtype: ResourceType,
    cond: &str,
) -> Result<Option<(String, u64)>, StoreError> {
    let pairs = parse_pairs(cond).map_err(|_| StoreError::invalid("If-None-Exist", "malformed query"))?;
    let (mut q, _) =
        parse_query(rtype, &pairs, false).map_err(|e| StoreError::invalid("If-None-Exist", e.to_string()))?;
    if q.clauses.is_empty() {
        return Err(StoreError::invalid("If-None-Exist", "needs at least one search parameter"));
    }
    q.count = 2;
    let page = search::search(ctx.conn, &q, &search::Restriction::None)?;
    match page.entries.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some((one.id.clone(), one.version))),
        _ => Err(StoreError::Precondition("If-None-Exist matched more than one resource".into())),
    }
}

#[allow(clippy::too_many_arguments)]
fn create_or_update(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    rtype: ResourceType,
    id: &str,
    body: Value,
    if_match: Option<u64>,
    pending: &HashSet<(String, String)>,
    check_refs: bool,
    action: Action,
    author: &str,
) -> Result<Step, StoreError> {
    let now = ctx.now;
    let subject = caller.subject();
    let mode = caller.mode();
    let new_patient = patient_of(rtype, id, &body);
    let old_patient = records::current(ctx.conn, rtype.as_str(), id)?.and_then(|c| c.patient);
    // Both the old and the new compartment must be writable.
    let mut compartments = vec![new_patient.as_deref()];
    if old_patient != new_patient {
        compartments.push(old_patient.as_deref());
    }
    let mut decision = None;
    for p in compartments {
        let f = facts(ctx.conn, caller, p, now)?;
        let d = decide(&subject, action, target_of(rtype, p), &mode, f);
        if !d.permit {
            return Ok(Step::Denied { decision: d, what: format!("{rtype}/{id}") });
        }
        decision.get_or_insert(d);
    }
    let decision = decision.ok_or_else(|| StoreError::Internal("no decision".into()))?;
    if check_refs {
        records::check_references(ctx.conn, &body, pending)?;
    }
    let written = records::put(ctx.conn, rtype, id, body, if_match, author, now)?;
    // A clinician who registers a patient is caring for that patient.
    if rtype == ResourceType::PATIENT && written.created && (subject.has(Role::Physician) || subject.has(Role::Nurse)) {
        accounts::assign_care_unchecked(ctx.conn, id, author, "registered the patient", now)?;
    }
    Ok(Step::Done { written, decision })
}

/// The interaction name for the audit log.
pub fn action_name(op: &WriteOp, step: Option<&Step>) -> &'static str {
    match (op, step) {
        (WriteOp::Delete { .. }, _) => "delete",
        (WriteOp::Create { .. }, _) => "create",
        (WriteOp::Update { .. }, Some(Step::Done { written, .. })) if written.created => "create",
        (WriteOp::Update { .. }, _) => "update",
    }
}

/// Audit record of a finished step.
pub fn step_record(
    caller: &Caller,
    op: &WriteOp,
    rtype: ResourceType,
    step: &Step,
    status: u16,
    now: mamori_core::time::Timestamp,
) -> mamori_audit::event::AuditRecord {
    let action = action_name(op, Some(step));
    match step {
        Step::Done { written, decision } => {
            let patients = written.patient.iter().chain(written.previous_patient.iter()).cloned().collect();
            caller.fhir_record(
                action,
                status,
                Some(rtype.as_str()),
                Some(&written.id),
                Some(written.version),
                patients,
                Some(decision),
                now,
            )
        }
        Step::Matched { id, version, .. } => {
            let mut r =
                caller.fhir_record(action, status, Some(rtype.as_str()), Some(id), Some(*version), vec![], None, now);
            r.detail = Some(json!({"conditional": "matched existing"}));
            r
        }
        Step::Denied { decision, .. } => {
            caller.fhir_record(action, status, Some(rtype.as_str()), None, None, vec![], Some(decision), now)
        }
        Step::NothingToDelete { .. } => {
            caller.fhir_record(action, status, Some(rtype.as_str()), None, None, vec![], None, now)
        }
    }
}

fn prefer_return(headers: &HeaderMap) -> &'static str {
    let p = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if p.contains("return=minimal") {
        "minimal"
    } else if p.contains("return=OperationOutcome") {
        "outcome"
    } else {
        "representation"
    }
}

fn written_response(st: &AppState, w: &Written, status: StatusCode, prefer: &str) -> Response {
    let body = match prefer {
        "minimal" => String::new(),
        "outcome" => json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational",
            "diagnostics": format!("{} {}/{} version {}", if status == StatusCode::CREATED { "created" } else { "updated" }, w.rtype, w.id, w.version)}]})
        .to_string(),
        _ => w.body.clone(),
    };
    let mut r = respond(status, body);
    version_headers(&mut r, &st.base_url, w.rtype.as_str(), &w.id, w.version, w.last_updated);
    if status == StatusCode::CREATED {
        if let Ok(v) =
            HeaderValue::from_str(&format!("{}/fhir/{}/{}/_history/{}", st.base_url, w.rtype, w.id, w.version))
        {
            r.headers_mut().insert(header::LOCATION, v);
        }
    }
    r
}

/// Runs a single write as one job and answers.
async fn run_single(
    st: AppState,
    caller: Caller,
    rtype: ResourceType,
    op: WriteOp,
    body: Option<Value>,
    prefer: &'static str,
) -> Response {
    let c2 = caller.clone();
    let op2 = op.clone();
    let c3 = caller.clone();
    let op3 = op.clone();
    let result = st
        .store
        .writer()
        .write(
            move |ctx| {
                let step = write_step(ctx, &c2, rtype, &op2, body, None, &HashSet::new(), true)?;
                let status = match &step {
                    Step::Done { written, .. } if written.created => 201,
                    Step::Done { written, .. } if written.deleted => 204,
                    Step::Done { .. } | Step::Matched { .. } => 200,
                    Step::Denied { .. } => 403,
                    Step::NothingToDelete { existed: false } => 404,
                    Step::NothingToDelete { existed: true } => 204,
                };
                let rec = step_record(&c2, &op2, rtype, &step, status, ctx.now);
                ctx.audit(&rec)?;
                Ok(step)
            },
            move |e, ctx| {
                let status = ApiError::from(e.clone()).status().as_u16();
                let id = match &op3 {
                    WriteOp::Update { id, .. } | WriteOp::Delete { id } => Some(id.as_str()),
                    WriteOp::Create { .. } => None,
                };
                let mut rec = c3.fhir_record(
                    action_name(&op3, None),
                    status,
                    Some(rtype.as_str()),
                    id,
                    None,
                    vec![],
                    None,
                    ctx.now,
                );
                rec.detail = Some(json!({"error": ApiError::from(e.clone()).audit_text()}));
                ctx.audit(&rec).map(|_| ())
            },
        )
        .await;
    match result {
        Err(e) => ApiError::from(e).into_response(),
        Ok(Step::Done { written, .. }) if written.deleted => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", written.version)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Ok(Step::Done { written, .. }) => {
            let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
            written_response(&st, &written, status, prefer)
        }
        Ok(Step::Matched { rtype, id, version, .. }) => {
            let mut r = respond(
                StatusCode::OK,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "duplicate",
                "diagnostics": format!("If-None-Exist matched {rtype}/{id}; nothing was created")}]})
                .to_string(),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("{}/fhir/{rtype}/{id}/_history/{version}", st.base_url)) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Ok(Step::Denied { decision, what }) => {
            let mut msg = format!("writing {what} denied ({})", decision.basis.as_str());
            if decision.basis == mamori_core::policy::Basis::NoCareRelationship {
                msg.push_str("; you have no care relationship with this patient");
            }
            ApiError::Forbidden(msg).into_response()
        }
        Ok(Step::NothingToDelete { existed: false }) => {
            ApiError::NotFound("nothing to delete: the resource does not exist".into()).into_response()
        }
        Ok(Step::NothingToDelete { existed: true }) => StatusCode::NO_CONTENT.into_response(),
    }
}

/// A bad request before any job: audited, nothing changed.
async fn reject(
    st: &AppState,
    caller: &Caller,
    action: &str,
    rtype: Option<&str>,
    id: Option<&str>,
    e: ApiError,
) -> Response {
    let now = st.store.clock().now();
    let mut rec = caller.fhir_record(action, e.status().as_u16(), rtype, id, None, vec![], None, now);
    rec.detail = Some(json!({"error": e.audit_text()}));
    audited(st, rec, Err(e)).await
}

/// POST /fhir/{type}
pub async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = st.cfg.server.body_limit_bytes;
    let pre = async {
        let rtype = parse_type(&t)?;
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, pairs.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str()))?;
        check_content_type(&headers)?;
        let bytes = read_body(body, limit).await?;
        let v = parse_json(&bytes)?;
        validate_body(rtype, &v)?;
        let ine = headers
            .get("if-none-exist")
            .map(|h| h.to_str().map(str::to_owned).map_err(|_| ApiError::bad("If-None-Exist", "not ASCII")))
            .transpose()?;
        Ok::<_, ApiError>((rtype, v, ine))
    }
    .await;
    match pre {
        Ok((rtype, v, ine)) => {
            run_single(st, caller, rtype, WriteOp::Create { if_none_exist: ine }, Some(v), prefer_return(&headers))
                .await
        }
        Err(e) => reject(&st, &caller, "create", ResourceType::parse(&t).ok().map(|r| r.as_str()), None, e).await,
    }
}

/// PUT /fhir/{type}/{id}
pub async fn update(
    State(st): State<AppState>,
    caller: Caller,
    Path((t, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = st.cfg.server.body_limit_bytes;
    let pre = async {
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        check_accept(&headers, None)?;
        check_content_type(&headers)?;
        let if_match = headers
            .get(header::IF_MATCH)
            .map(|h| h.to_str().map_err(|_| ApiError::bad("If-Match", "not ASCII")).and_then(parse_etag))
            .transpose()?;
        let bytes = read_body(body, limit).await?;
        let v = parse_json(&bytes)?;
        validate_body(rtype, &v)?;
        match v.get("id").and_then(Value::as_str) {
            Some(bid) if bid == id => {}
            Some(bid) => {
                return Err(ApiError::bad(
                    &format!("{rtype}.id"),
                    format!("body id '{bid}' does not match the URL id '{id}'"),
                ))
            }
            None => {
                return Err(ApiError::bad(&format!("{rtype}.id"), "an update must carry the resource id in the body"))
            }
        }
        Ok::<_, ApiError>((rtype, v, if_match))
    }
    .await;
    match pre {
        Ok((rtype, v, if_match)) => {
            run_single(st, caller, rtype, WriteOp::Update { id, if_match }, Some(v), prefer_return(&headers)).await
        }
        Err(e) => {
            reject(
                &st,
                &caller,
                "update",
                ResourceType::parse(&t).ok().map(|r| r.as_str()),
                Some(&id).filter(|i| mamori_core::ids::is_fhir_id(i)).map(String::as_str),
                e,
            )
            .await
        }
    }
}

/// DELETE /fhir/{type}/{id}
pub async fn delete(State(st): State<AppState>, caller: Caller, Path((t, id)): Path<(String, String)>) -> Response {
    let pre = (|| {
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        Ok::<_, ApiError>(rtype)
    })();
    match pre {
        Ok(rtype) => run_single(st, caller, rtype, WriteOp::Delete { id }, None, "representation").await,
        Err(e) => reject(&st, &caller, "delete", None, None, e).await,
    }
}
