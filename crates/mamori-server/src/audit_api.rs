//! The audit log's API: signed checkpoints, inclusion and consistency
//! proofs, witness cosignatures, events and on-line verification for
//! auditors. Checkpoints and proofs contain only hashes and sizes and are
//! public (like a transparency log's); events are for auditors only, and
//! reading them is itself audited.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mamori_audit::event::AuditRecord;
use mamori_audit::merkle::{self, leaf_hash};
use mamori_audit::note::{Checkpoint, NoteVerifier, SignedNote};
use mamori_core::policy::Role;
use mamori_store::audit_log::{self, DbNodes};
use serde::Deserialize;
use serde_json::json;

use crate::error::{ApiError, OpsError};
use crate::ops::refuse;
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/audit/checkpoint", get(latest))
        .route("/api/v1/audit/checkpoints", get(list))
        .route("/api/v1/audit/checkpoints/{size}", get(by_size))
        .route("/api/v1/audit/proof/inclusion", get(inclusion))
        .route("/api/v1/audit/proof/consistency", get(consistency))
        .route("/api/v1/audit/cosignatures", post(cosign))
        .route("/api/v1/audit/events/{index}", get(event))
        .route("/api/v1/audit/verify", get(verify_live))
        .route("/api/v1/audit/reports/{kind}", get(report))
}

type R = Result<Response, OpsError>;

fn note_response(note: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note).into_response()
}

fn auditor(caller: &Caller) -> Result<(), ApiError> {
    if caller.subject().has(Role::Auditor) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("the audit log is for the auditor role".into()))
    }
}

async fn latest(State(st): State<AppState>) -> R {
    let note = st
        .store
        .read(|c| match audit_log::latest_checkpoint(c)? {
            Some((size, _, _)) => audit_log::cosigned_checkpoint(c, size),
            None => Ok(None),
        })
        .await?;
    note.map(note_response).ok_or_else(|| OpsError(ApiError::NotFound("no checkpoint has been signed yet".into())))
}

async fn by_size(State(st): State<AppState>, Path(size): Path<u64>) -> R {
    let note = st.store.read(move |c| audit_log::cosigned_checkpoint(c, size)).await?;
    note.map(note_response).ok_or_else(|| OpsError(ApiError::NotFound(format!("no checkpoint at size {size}"))))
}

#[derive(Deserialize)]
struct ListQ {
    before: Option<u64>,
    limit: Option<usize>,
}

async fn list(State(st): State<AppState>, Query(q): Query<ListQ>) -> R {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let rows = st.store.read(move |c| audit_log::list_checkpoints(c, q.before, limit)).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|(size, t, reason, w)| json!({"size": size, "time": t.to_rfc3339(), "reason": reason, "witnesses": w}))
        .collect();
    Ok(Json(json!({"checkpoints": items})).into_response())
}

#[derive(Deserialize)]
struct InclusionQ {
    index: u64,
    size: Option<u64>,
}

async fn inclusion(State(st): State<AppState>, Query(q): Query<InclusionQ>) -> R {
    let r = st
        .store
        .read(move |c| {
            let size = match q.size {
                Some(s) => s,
                None => audit_log::latest_checkpoint(c)?.map_or(0, |x| x.0),
            };
            let n = audit_log::size(c)?;
            if size > n || q.index >= size {
                return Err(mamori_store::StoreError::invalid(
                    "index",
                    format!("event {} is not in a tree of size {size} (the log has {n} events)", q.index),
                ));
            }
            let mut src = DbNodes(c);
            let proof = merkle::inclusion_proof(&mut src, q.index, size)?;
            let root = merkle::root_at(&mut src, size)?;
            let leaf = merkle::subtree_hash(&mut src, q.index, q.index + 1)?;
            Ok(json!({
                "index": q.index, "size": size,
                "leaf_hash": B64.encode(leaf),
                "root": B64.encode(root),
                "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            }))
        })
        .await?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize)]
struct ConsistencyQ {
    first: u64,
    second: Option<u64>,
}

async fn consistency(State(st): State<AppState>, Query(q): Query<ConsistencyQ>) -> R {
    let r = st
        .store
        .read(move |c| {
            let second = match q.second {
                Some(s) => s,
                None => audit_log::latest_checkpoint(c)?.map_or(0, |x| x.0),
            };
            let n = audit_log::size(c)?;
            if q.first > second || second > n {
                return Err(mamori_store::StoreError::invalid(
                    "first",
                    format!("sizes {} and {second} do not fit a log of {n} events", q.first),
                ));
            }
            let mut src = DbNodes(c);
            let proof = merkle::consistency_proof(&mut src, q.first, second)?;
            Ok(json!({
                "first": q.first, "second": second,
                "first_root": B64.encode(merkle::root_at(&mut src, q.first)?),
                "second_root": B64.encode(merkle::root_at(&mut src, second)?),
                "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            }))
        })
        .await?;
    Ok(Json(r).into_response())
}

/// A witness posts the checkpoint with its cosignature line(s) appended.
/// Accepted only for a stored checkpoint and a configured witness key.
async fn cosign(State(st): State<AppState>, body: Body) -> R {
    let bytes = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| ApiError::TooLarge(64 * 1024))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad("", "not UTF-8"))?.to_owned();
    let note = SignedNote::parse(&text).map_err(|e| ApiError::bad("", e.to_string()))?;
    let cp = Checkpoint::parse_body(&note.body).map_err(|e| ApiError::bad("", e.to_string()))?;
    let size = cp.size;
    let stored = st.store.read(move |c| audit_log::checkpoint_at(c, size)).await?;
    let stored = stored.ok_or_else(|| ApiError::NotFound(format!("no checkpoint at size {size}")))?;
    let stored_body = SignedNote::parse(&stored).map_err(|e| ApiError::Internal(e.to_string()))?.body;
    if stored_body != note.body {
        return Err(OpsError(ApiError::Conflict(
            "the cosigned checkpoint differs from the one this log signed at that size".into(),
        )));
    }
    let mut accepted = Vec::new();
    for w in &st.cfg.audit.witnesses {
        let Ok(v) = NoteVerifier::parse(w) else { continue };
        if let Ok(Some(t)) = note.verified_by(&v) {
            let line = text.lines().find(|l| l.starts_with(&format!("\u{2014} {} ", v.name))).unwrap_or("").to_owned();
            accepted.push((v.name.clone(), line, t));
        }
    }
    if accepted.is_empty() {
        return Err(OpsError(ApiError::Forbidden(
            "no valid cosignature by a configured witness (audit.witnesses)".into(),
        )));
    }
    let names: Vec<String> = accepted.iter().map(|a| a.0.clone()).collect();
    let n2 = names.clone();
    st.store
        .writer()
        .write(
            move |w| {
                for (name, line, t) in &accepted {
                    audit_log::add_cosignature(w.conn, size, name, line, *t, w.now)?;
                }
                let ctx =
                    crate::state::RequestCtx { addr: None, request_id: None, mode: mamori_core::mode::Mode::Normal };
                let mut rec = ctx.record("system", "system", "checkpoint-cosigned", 200, w.now);
                rec.detail = Some(json!({"size": size, "witnesses": n2}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok((StatusCode::OK, Json(json!({"size": size, "accepted": names}))).into_response())
}

async fn event(State(st): State<AppState>, caller: Caller, Path(index): Path<u64>) -> R {
    if let Err(e) = auditor(&caller) {
        return Err(refuse(&st, &caller, "audit-read", e).await);
    }
    let leaf = st.store.read(move |c| audit_log::leaf(c, index)).await?;
    let Some(leaf) = leaf else { return Err(OpsError(ApiError::NotFound(format!("no audit event {index}")))) };
    let rec = AuditRecord::from_leaf(&leaf).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut a = caller.record("audit-read", 200, st.store.clock().now());
    a.query = Some(format!("event {index}"));
    st.store.writer().audit(vec![a]).await?;
    Ok(Json(
        json!({"index": index, "event": rec, "leaf": B64.encode(&leaf), "leaf_hash": B64.encode(leaf_hash(&leaf))}),
    )
    .into_response())
}

async fn verify_live(State(st): State<AppState>, caller: Caller) -> R {
    if let Err(e) = auditor(&caller) {
        return Err(refuse(&st, &caller, "audit-verify", e).await);
    }
    let dd = crate::server::DataDir(st.data_dir.clone());
    let (_, vkey) = crate::server::load_signer(&dd).map_err(|e| ApiError::Internal(e.to_string()))?;
    let origin = st.cfg.audit.origin.clone();
    let started = std::time::Instant::now();
    let report = st.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, true)).await?;
    let mut a = caller.record("audit-verify", 200, st.store.clock().now());
    a.detail = Some(json!({"ok": report.ok(), "events": report.events}));
    st.store.writer().audit(vec![a]).await?;
    Ok(Json(json!({
        "ok": report.ok(),
        "events": report.events,
        "checkpoints": report.checkpoints,
        "last_good_checkpoint": report.last_good_checkpoint,
        "root": report.root.map(|r| B64.encode(r)),
        "findings": report.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct ReportQ {
    patient: Option<String>,
    user: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    /// Action names, comma-separated (any of).
    action: Option<String>,
    /// A purpose of use code (TREAT, ETREAT, BTG, ...).
    purpose: Option<String>,
}

/// A date (local day) or instant; `end` takes the end of a day.
fn parse_when(s: &str, offset_min: i64, end: bool) -> Result<i64, ApiError> {
    let r = mamori_core::time::parse_search_date(s)
        .ok_or_else(|| ApiError::bad("from/to", format!("'{s}' is not a date or instant")))?;
    let shift = if r.has_tz { 0 } else { offset_min * 60_000_000 };
    Ok(if end { r.high - shift } else { r.low - shift })
}

fn event_json(index: u64, r: &AuditRecord) -> serde_json::Value {
    json!({
        "index": index,
        "time": r.time,
        "user": r.agent.user,
        "kind": r.agent.kind,
        "roles": r.agent.roles,
        "declared": r.agent.declared,
        "address": r.agent.address,
        "action": r.action,
        "resource": r.entity.as_ref().map(|e| match &e.id { Some(i) => format!("{}/{i}", e.rtype), None => e.rtype.clone() }),
        "patients": r.patients,
        "status": r.status,
        "purpose": r.purpose,
        "basis": r.basis,
        "mode": r.mode,
        "detail": r.detail,
    })
}

/// Review reports for auditors: `patient` (who accessed this patient's
/// record: the answer to a disclosure request), `user` (what a user
/// accessed), `denied` (refused accesses), `daily` (counts per day with
/// denials, break-glass and emergency access).
async fn report(State(st): State<AppState>, caller: Caller, Path(kind): Path<String>, Query(q): Query<ReportQ>) -> R {
    if let Err(e) = auditor(&caller) {
        return Err(refuse(&st, &caller, "audit-report", e).await);
    }
    let off = st.cfg.institution.utc_offset_minutes;
    let now = st.store.clock().now().micros();
    let pre = (|| {
        let to = q.to.as_deref().map(|s| parse_when(s, off, true)).transpose()?.unwrap_or(now + 1);
        let from =
            q.from.as_deref().map(|s| parse_when(s, off, false)).transpose()?.unwrap_or(to - 30 * 86_400_000_000);
        if from >= to {
            return Err(ApiError::bad("from", "from must be before to"));
        }
        let mut eq = audit_log::EventQuery {
            from: Some(from),
            to: Some(to),
            limit: q.limit.unwrap_or(1000).clamp(1, 10_000),
            ..Default::default()
        };
        match kind.as_str() {
            "patient" => {
                let p = q
                    .patient
                    .clone()
                    .ok_or_else(|| ApiError::bad("patient", "the patient report needs ?patient=ID"))?;
                mamori_core::ids::PatientId::parse(p.strip_prefix("Patient/").unwrap_or(&p))
                    .map_err(|e| ApiError::bad("patient", e.to_string()))?;
                eq.patient = Some(p.strip_prefix("Patient/").unwrap_or(&p).to_owned());
            }
            "user" => {
                eq.agent =
                    Some(q.user.clone().ok_or_else(|| ApiError::bad("user", "the user report needs ?user=NAME"))?)
            }
            "denied" => eq.denied = true,
            "daily" => {}
            "search" => {
                if let Some(p) = q.patient.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
                    let p = p.strip_prefix("Patient/").unwrap_or(p);
                    mamori_core::ids::PatientId::parse(p).map_err(|e| ApiError::bad("patient", e.to_string()))?;
                    eq.patient = Some(p.to_owned());
                }
                eq.agent = q.user.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
            }
            other => {
                return Err(ApiError::NotFound(format!("no report '{other}' (patient, user, denied, daily, search)")))
            }
        }
        if let Some(a) = q.action.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            eq.actions = Some(a.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect());
        }
        if let Some(p) = q.purpose.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            eq.purpose = Some(p.to_owned());
        }
        Ok((from, to, eq))
    })();
    let (from, to, eq) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "audit-report", e).await),
    };
    // The derived indexes must cover every event before they are queried.
    st.store.writer().flush_index().await?;
    let kind2 = kind.clone();
    let eq2 = eq.clone();
    let body = st
        .store
        .read(move |c| {
            if kind2 == "daily" {
                return Ok(json!({"days": audit_log::daily_counts(c, from, to, off)?}));
            }
            let total = audit_log::count_events(c, &eq2)?;
            let rows = audit_log::search_events(c, &eq2)?;
            let events: Vec<_> =
                rows.iter().filter_map(|(i, l)| AuditRecord::from_leaf(l).ok().map(|r| event_json(*i, &r))).collect();
            Ok(json!({"total": total, "events": events}))
        })
        .await?;
    let mut a = caller.record("audit-report", 200, st.store.clock().now());
    a.detail = Some(
        json!({"report": kind, "user": eq.agent, "actions": eq.actions, "purpose": eq.purpose, "from": mamori_core::time::Timestamp(from).to_rfc3339(), "to": mamori_core::time::Timestamp(to).to_rfc3339()}),
    );
    if let Some(p) = &eq.patient {
        a.patients = vec![p.clone()];
    }
    st.store.writer().audit(vec![a]).await?;
    let mut body = body;
    body["report"] = json!(kind);
    body["from"] = json!(mamori_core::time::Timestamp(from).to_rfc3339());
    body["to"] = json!(mamori_core::time::Timestamp(to).to_rfc3339());
    Ok(Json(body).into_response())
}
