//! Break-glass access in normal mode (EM-B8, EM-C3b): a clinician without
//! a care relationship asks for time-limited access to one patient, with a
//! reason. The grant is audited with purpose of use BTG (start and end
//! events), announced at once to the privacy officer (auditors) and the
//! patient's care team, stops working at expiry, and waits for a review
//! by an auditor who is not the requester.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::bcp::{check_break_glass, ReviewOutcome};
use mamori_core::ids::PatientId;
use mamori_core::policy::Role;
use mamori_store::emergency::{self, Grant};
use mamori_store::{accounts, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::error::{ApiError, OpsError};
use crate::notify::{self, Audience};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller, RequestCtx};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/break-glass", get(list).post(request))
        .route("/api/v1/break-glass/{id}", get(show))
        .route("/api/v1/break-glass/{id}/review", post(review))
        .route("/api/v1/break-glass/{id}/end", post(end))
}

type R = Result<Response, OpsError>;

fn grant_json(g: &Grant, now: mamori_core::time::Timestamp) -> Value {
    json!({
        "id": g.id, "user": g.user, "patient": g.patient, "reason": g.reason, "minutes": g.minutes,
        "started": g.started.to_rfc3339(), "expires": g.expires.to_rfc3339(), "ended": g.ended.map(|t| t.to_rfc3339()),
        "live": g.live(now), "seconds_left": if g.live(now) { (g.expires.micros() - now.micros()) / 1_000_000 } else { 0 },
        "review": g.review, "reviewed_by": g.reviewed_by, "reviewed_at": g.reviewed_at.map(|t| t.to_rfc3339()), "review_note": g.review_note,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakGlassReq {
    patient: String,
    reason: String,
    #[serde(default)]
    minutes: Option<u32>,
}

async fn request(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    let req: BreakGlassReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "break-glass-start", e).await),
    };
    let patient = match PatientId::parse(req.patient.strip_prefix("Patient/").unwrap_or(&req.patient)) {
        Ok(p) => p,
        Err(e) => return Err(refuse(&st, &caller, "break-glass-start", ApiError::bad("patient", e.to_string())).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let st2 = st.clone();
    let p2 = patient.clone();
    let (g, a) = st
        .store
        .writer()
        .write(
            move |w| {
                let s = c2.subject();
                if !s.roles.iter().any(|r| r.is_clinical()) || s.kind != mamori_core::policy::SubjectKind::Staff {
                    return Err(StoreError::Forbidden("break-glass is for clinicians' own named accounts".into()));
                }
                let (_, plan) = emergency::current_plan(w.conn)?;
                let minutes = check_break_glass(&req.reason, req.minutes, &plan.break_glass).map_err(|m| StoreError::invalid("", m))?;
                match records::current(w.conn, "Patient", p2.as_str())? {
                    Some(c) if !c.deleted => {}
                    _ => return Err(StoreError::NotFound(format!("Patient/{p2}"))),
                }
                if emergency::has_live_grant(w.conn, c2.user.name.as_str(), p2.as_str(), w.now)? {
                    return Err(StoreError::Duplicate(format!("a live break-glass grant for Patient/{p2}")));
                }
                let g = emergency::insert_grant(w.conn, c2.user.name.as_str(), p2.as_str(), req.reason.trim(), minutes, w.now)?;
                let mut rec = c2.record("break-glass-start", 201, w.now);
                rec.patients = vec![p2.as_str().to_owned()];
                rec.purpose = Some("BTG".into());
                rec.basis = Some("break-glass".into());
                rec.detail = Some(json!({"grant": g.id, "reason": g.reason, "minutes": minutes, "expires": g.expires.to_rfc3339()}));
                w.audit(&rec)?;
                // The privacy officer (auditors) and the patient's care team.
                let team: Vec<String> = accounts::list_care(w.conn, Some(p2.as_str()), None)?.into_iter().filter(|a| a.ended.is_none()).filter_map(|a| a.user).collect();
                let a = notify::announce(
                    w,
                    &st2,
                    "break-glass-start",
                    false,
                    "warning",
                    &format!("緊急アクセス（ブレークグラス）：{} が患者 {} の記録を閲覧します（{}分）/ Break-glass: {} is accessing the record of patient {} for {} minutes", c2.user.name, p2, minutes, c2.user.name, p2, minutes),
                    json!({"grant": g.id, "user": c2.user.name.as_str(), "patient": p2.as_str(), "reason": g.reason, "expires": g.expires.to_rfc3339()}),
                    Audience::Users { users: team.into_iter().chain([c2.user.name.as_str().to_owned()]).collect(), roles: vec![Role::Auditor] },
                )?;
                Ok((g, a))
            },
            move |e, w| {
                let mut rec = c3.record("break-glass-start", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.patients = vec![patient.as_str().to_owned()];
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    notify::publish(&st, [a]);
    Ok((StatusCode::CREATED, Json(grant_json(&g, st.store.clock().now()))).into_response())
}

#[derive(Deserialize)]
struct ListQ {
    review: Option<String>,
}

async fn list(State(st): State<AppState>, caller: Caller, Query(q): Query<ListQ>) -> R {
    let auditor = caller.subject().has(Role::Auditor);
    let user = if auditor { None } else { Some(caller.user.name.as_str().to_owned()) };
    if let Some(r) = &q.review {
        if !matches!(r.as_str(), "pending" | "accepted" | "questioned") {
            return Err(OpsError(ApiError::bad("review", "pending, accepted or questioned")));
        }
    }
    let now = st.store.clock().now();
    let v = st.store.read(move |c| emergency::grants(c, q.review.as_deref(), user.as_deref(), 500)).await?;
    Ok(Json(json!({"grants": v.iter().map(|g| grant_json(g, now)).collect::<Vec<_>>()})).into_response())
}

async fn show(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    let g = st
        .store
        .read(move |c| emergency::grant(c, id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("break-glass grant {id}")))?;
    if g.user != caller.user.name.as_str() && !caller.subject().has(Role::Auditor) {
        return Err(OpsError(ApiError::Forbidden("only the requester and auditors see a grant".into())));
    }
    Ok(Json(grant_json(&g, st.store.clock().now())).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    outcome: ReviewOutcome,
    note: String,
}

async fn review(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    let req: ReviewReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "break-glass-review", e).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                if !c2.subject().has(Role::Auditor) {
                    return Err(StoreError::Forbidden("break-glass reviews are for the auditor role".into()));
                }
                let g = emergency::grant(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("break-glass grant {id}")))?;
                if g.user == c2.user.name.as_str() {
                    return Err(StoreError::Forbidden("you cannot review your own break-glass use".into()));
                }
                if req.note.trim().chars().count() < 5 {
                    return Err(StoreError::invalid("note", "write what you checked (at least 5 characters)"));
                }
                if !emergency::review_grant(w.conn, id, req.outcome, c2.user.name.as_str(), req.note.trim(), w.now)? {
                    return Err(StoreError::Precondition(format!("grant {id} was already reviewed ({})", g.review)));
                }
                let mut rec = c2.record("break-glass-review", 200, w.now);
                rec.patients = vec![g.patient.clone()];
                rec.detail =
                    Some(json!({"grant": id, "outcome": req.outcome, "note": req.note.trim(), "requester": g.user}));
                w.audit(&rec)?;
                Ok(())
            },
            move |e, w| {
                let mut rec = c3.record("break-glass-review", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"grant": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({"reviewed": true})).into_response())
}

/// The requester ends a grant early.
async fn end(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    let c2 = caller.clone();
    let st2 = st.clone();
    let a = st
        .store
        .writer()
        .write(
            move |w| {
                let g = emergency::grant(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("break-glass grant {id}")))?;
                if g.user != c2.user.name.as_str() {
                    return Err(StoreError::Forbidden("only the requester ends a grant early".into()));
                }
                if !g.live(w.now) {
                    return Err(StoreError::Precondition("the grant is no longer live".into()));
                }
                emergency::end_grant(w.conn, id, w.now)?;
                end_event(w, &st2, &g, "ended by the requester")
            },
            |_, _| Ok(()),
        )
        .await?;
    notify::publish(&st, [a]);
    Ok(Json(json!({"ended": true})).into_response())
}

fn end_event(
    w: &mut mamori_store::WriteCtx<'_>,
    st: &AppState,
    g: &Grant,
    how: &str,
) -> mamori_store::Result<notify::Announcement> {
    let ctx = RequestCtx { addr: None, request_id: None, mode: st.mode.get() };
    let mut rec = ctx.record(&g.user, "staff", "break-glass-end", 200, w.now);
    rec.patients = vec![g.patient.clone()];
    rec.purpose = Some("BTG".into());
    rec.basis = Some("break-glass".into());
    rec.detail = Some(json!({"grant": g.id, "how": how}));
    w.audit(&rec)?;
    notify::announce(
        w,
        st,
        "break-glass-end",
        false,
        "info",
        &format!(
            "緊急アクセス終了：{} / 患者 {}（{}）/ Break-glass ended: {} / patient {} ({})",
            g.user, g.patient, how, g.user, g.patient, how
        ),
        json!({"grant": g.id, "user": g.user, "patient": g.patient}),
        Audience::Users { users: vec![g.user.clone()], roles: vec![Role::Auditor] },
    )
}

/// Records the end of grants that reached their expiry (the grant already
/// stopped working then: the policy checks the expiry on every request).
pub async fn expire(st: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        let now = st.store.clock().now();
        let due = match st.store.read(move |c| emergency::expired_unannounced(c, now)).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read break-glass grants");
                continue;
            }
        };
        for g in due {
            let st2 = st.clone();
            let r = st
                .store
                .writer()
                .write(
                    move |w| {
                        if !emergency::end_grant(w.conn, g.id, g.expires)? {
                            return Ok(None);
                        }
                        end_event(w, &st2, &g, "expired").map(Some)
                    },
                    |_, _| Ok(()),
                )
                .await;
            match r {
                Ok(a) => notify::publish(&st, a),
                Err(e) => tracing::error!(error = %e, "cannot record a break-glass expiry"),
            }
        }
    }
}
