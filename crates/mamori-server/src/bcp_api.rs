//! The BCP console's API: the plan, declarations and their phases,
//! checklists, the after-action review, the cyber-attack report, alerts.
//!
//! Every change of the operating mode happens here, in one write job with
//! its audit event, a signed audit checkpoint and its announcement; the
//! new mode is put in force only after that job committed.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::bcp::{BcpEvent, Cause, DeclState, Plan};
use mamori_core::mode::{Mode, Phase};
use mamori_core::policy::{may_administer, Role};
use mamori_core::time::Timestamp;
use mamori_store::emergency::{self, Declaration};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OpsError};
use crate::notify::{self, Announcement, Audience};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/bcp/plan", get(get_plan).put(put_plan))
        .route("/api/v1/bcp/declarations", get(list).post(declare))
        .route("/api/v1/bcp/declarations/{id}", get(show))
        .route("/api/v1/bcp/declarations/{id}/confirm", post(confirm))
        .route("/api/v1/bcp/declarations/{id}/transitions", post(transition))
        .route("/api/v1/bcp/declarations/{id}/checklist/{phase}/{item}", post(tick))
        .route("/api/v1/bcp/declarations/{id}/review", get(get_review).put(put_review))
        .route("/api/v1/bcp/declarations/{id}/incident-report", get(incident_report))
        .route("/api/v1/bcp/declarations/{id}/incident-report/{recipient}", post(reported))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}/ack", post(ack))
        .route("/api/v1/notifications", get(notifications))
        .route("/api/v1/events", get(notify::stream))
}

type R = Result<Response, OpsError>;

fn forbidden(msg: &str) -> StoreError {
    StoreError::Forbidden(msg.into())
}

fn bcp_team(caller: &Caller) -> bool {
    let s = caller.subject();
    s.has(Role::BcpDecider) || may_administer(&s)
}

// ---- plan ------------------------------------------------------------------------------

#[derive(Deserialize)]
struct PlanQ {
    format: Option<String>,
}

async fn get_plan(State(st): State<AppState>, _caller: Caller, Query(q): Query<PlanQ>) -> R {
    let (version, text) = st.store.read(emergency::current_plan_toml).await?;
    if q.format.as_deref() == Some("toml") {
        return Ok(([(header::CONTENT_TYPE, "application/toml; charset=utf-8")], text).into_response());
    }
    let plan = Plan::from_toml(&text).map_err(|e| ApiError::Internal(format!("{e:?}")))?;
    Ok(Json(json!({"version": version, "builtin": version == 0, "plan": plan})).into_response())
}

/// Validates and imports a plan (TOML body). Admins and deciders.
pub async fn put_plan(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    let pre = async {
        if !bcp_team(&caller) {
            return Err(ApiError::Forbidden("importing the BCP plan needs the admin or bcp-decider role".into()));
        }
        let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|_| ApiError::TooLarge(1 << 20))?;
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| ApiError::bad("", "the plan must be UTF-8 TOML"))?;
        let plan = Plan::from_toml(&text).map_err(|errs| {
            ApiError::BadRequest(
                errs.into_iter()
                    .map(|e| mamori_core::fhir::validate::Issue { path: e.path, message: e.message })
                    .collect(),
            )
        })?;
        Ok::<_, ApiError>((text, plan))
    }
    .await;
    let (text, plan) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "bcp-plan-import", e).await),
    };
    let c2 = caller.clone();
    let version = st
        .store
        .writer()
        .write(
            move |w| {
                let v = emergency::import_plan(w.conn, &text, c2.user.name.as_str(), w.now)?;
                let mut rec = c2.record("bcp-plan-import", 200, w.now);
                rec.detail = Some(json!({"version": v, "criteria": plan.criteria.len()}));
                w.audit(&rec)?;
                Ok(v)
            },
            |_, _| Ok(()),
        )
        .await?;
    // Rules of the current phase may have changed.
    refresh_mode(&st).await;
    Ok(Json(json!({"version": version})).into_response())
}

async fn refresh_mode(st: &AppState) {
    if let Ok(m) = st.store.read(emergency::current_mode).await {
        if m != st.mode.get() {
            st.set_mode(m);
        }
    }
}

// ---- declarations -----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclareReq {
    cause: String,
    criteria: Vec<String>,
    reason: String,
    #[serde(default)]
    drill: bool,
}

fn decl_json(d: &Declaration) -> Value {
    json!({
        "id": d.id, "cause": d.cause, "criteria": d.criteria, "reason": d.reason, "drill": d.drill,
        "state": d.state.as_str(), "plan_version": d.plan_version, "declared_by": d.declared_by,
        "confirmed_by": d.confirmed_by, "declared_at": d.declared_at.to_rfc3339(),
        "closed_at": d.closed_at.map(|t| t.to_rfc3339()), "checkpoint": d.checkpoint,
    })
}

/// What a committed state change did, for after the commit.
struct Changed {
    decl: Declaration,
    mode: Mode,
    announcements: Vec<Announcement>,
}

/// Puts a committed change in force: the mode, the announcements, the
/// evidence export for a cyber attack.
fn after_change(st: &AppState, ch: Changed) -> Value {
    st.set_mode(ch.mode);
    notify::publish(st, ch.announcements);
    if ch.decl.cause == Cause::CyberAttack && !ch.decl.drill && ch.decl.state == DeclState::Active(Phase::Activation) {
        let st2 = st.clone();
        let id = ch.decl.id;
        tokio::spawn(async move {
            if let Err(e) = preserve_evidence(&st2, id).await {
                tracing::error!(error = %e, declaration = id, "could not preserve the audit evidence");
            }
        });
    }
    decl_json(&ch.decl)
}

fn activate(
    w: &mut WriteCtx<'_>,
    st: &AppState,
    decl: &mut Declaration,
    plan: &Plan,
) -> mamori_store::Result<(Mode, Announcement)> {
    let mode = emergency::mode_of(Some(decl), plan);
    let note = w.checkpoint("mode-change")?;
    emergency::set_checkpoint(w.conn, decl.id, &note)?;
    decl.checkpoint = Some(note);
    let crit: Vec<Value> = decl
        .criteria
        .iter()
        .filter_map(|c| plan.criterion(c))
        .map(|c| json!({"id": c.id, "ja": c.description.ja, "en": c.description.en}))
        .collect();
    let a = notify::announce(
        w,
        st,
        "emergency-declared",
        decl.drill,
        "critical",
        &format!(
            "{} 非常時を宣言しました（{}）/ An emergency has been declared ({}): {}",
            if decl.drill { "訓練:" } else { "" },
            decl.cause.as_str(),
            decl.cause.as_str(),
            decl.reason
        ),
        json!({"declaration": decl.id, "cause": decl.cause, "criteria": crit, "phase": "activation", "mode": mode.header_value()}),
        Audience::Everyone,
    )?;
    Ok((mode, a))
}

async fn declare(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    let req: DeclareReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "bcp-declare", e).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let st2 = st.clone();
    let ch = st
        .store
        .writer()
        .write(
            move |w| {
                let (version, plan) = emergency::current_plan(w.conn)?;
                if !plan.is_decider(c2.user.name.as_str(), &c2.user.roles) {
                    return Err(forbidden("only the deciders named in the BCP plan may declare an emergency"));
                }
                let cause = Cause::parse(&req.cause).ok_or_else(|| StoreError::invalid("cause", "one of disaster, cyber_attack, system_failure, mass_casualty, other"))?;
                if req.criteria.is_empty() {
                    return Err(StoreError::invalid("criteria", "name the plan's criteria that are met"));
                }
                for id in &req.criteria {
                    let c = plan.criterion(id).ok_or_else(|| StoreError::invalid("criteria", format!("'{id}' is not a criterion of the plan")))?;
                    if c.cause != cause && cause != Cause::Other {
                        return Err(StoreError::invalid("criteria", format!("criterion '{id}' is about {}, not {}", c.cause.as_str(), cause.as_str())));
                    }
                }
                if req.reason.trim().chars().count() < 10 {
                    return Err(StoreError::invalid("reason", "say what is happening (at least 10 characters)"));
                }
                if emergency::open_declaration(w.conn)?.is_some() {
                    return Err(StoreError::Duplicate("an open declaration (finish or stand it down first)".into()));
                }
                let state = if plan.deciders.two_person { DeclState::Proposed } else { DeclState::Active(Phase::Activation) };
                let id = emergency::insert_declaration(w.conn, cause, &req.criteria, req.reason.trim(), req.drill, state, version, c2.user.name.as_str(), w.now)?;
                emergency::record_transition(w.conn, id, "normal", state, c2.user.name.as_str(), w.now, Some(req.reason.trim()), None)?;
                let mut decl = emergency::declaration(w.conn, id)?.ok_or_else(|| StoreError::Internal("vanished".into()))?;
                let mut rec = c2.record("bcp-declare", 201, w.now);
                rec.detail = Some(json!({"declaration": id, "cause": cause, "criteria": req.criteria, "drill": req.drill, "state": state.as_str(), "reason": req.reason}));
                w.audit(&rec)?;
                let (mode, announcements) = if state == DeclState::Proposed {
                    let a = notify::announce(
                        w,
                        &st2,
                        "emergency-proposed",
                        req.drill,
                        "warning",
                        &format!("非常時宣言の確認待ち（2人目の決定者）/ An emergency declaration awaits a second decider: {}", req.reason.trim()),
                        json!({"declaration": id}),
                        Audience::Roles(vec![Role::BcpDecider, Role::Admin]),
                    )?;
                    (Mode::Normal, vec![a])
                } else {
                    let (m, a) = activate(w, &st2, &mut decl, &plan)?;
                    (m, vec![a])
                };
                Ok(Changed { decl, mode, announcements })
            },
            move |e, w| {
                let mut rec = c3.record("bcp-declare", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    let status = if ch.decl.state == DeclState::Proposed { StatusCode::ACCEPTED } else { StatusCode::CREATED };
    Ok((status, Json(after_change(&st, ch))).into_response())
}

async fn confirm(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    let c2 = caller.clone();
    let c3 = caller.clone();
    let st2 = st.clone();
    let ch = st
        .store
        .writer()
        .write(
            move |w| {
                let (_, plan) = emergency::current_plan(w.conn)?;
                if !plan.is_decider(c2.user.name.as_str(), &c2.user.roles) {
                    return Err(forbidden("only the plan's deciders may confirm a declaration"));
                }
                let d = emergency::declaration(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
                if d.declared_by == c2.user.name.as_str() {
                    return Err(forbidden("the second decider must be a different person"));
                }
                let to = d.state.apply(&BcpEvent::Confirm).map_err(|e| StoreError::Precondition(e.to_string()))?;
                emergency::set_confirmed(w.conn, id, c2.user.name.as_str())?;
                emergency::record_transition(
                    w.conn,
                    id,
                    d.state.as_str(),
                    to,
                    c2.user.name.as_str(),
                    w.now,
                    Some("confirmed"),
                    None,
                )?;
                let mut decl =
                    emergency::declaration(w.conn, id)?.ok_or_else(|| StoreError::Internal("vanished".into()))?;
                let mut rec = c2.record("bcp-confirm", 200, w.now);
                rec.detail = Some(json!({"declaration": id}));
                w.audit(&rec)?;
                let (mode, a) = activate(w, &st2, &mut decl, &plan)?;
                Ok(Changed { decl, mode, announcements: vec![a] })
            },
            move |e, w| {
                let mut rec = c3.record("bcp-confirm", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"declaration": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(after_change(&st, ch)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionReq {
    /// resumption | recovery | full_recovery | normal | stand_down
    to: String,
    #[serde(default)]
    note: Option<String>,
    #[serde(default)]
    override_reason: Option<String>,
}

async fn transition(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    let req: TransitionReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "bcp-transition", e).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let st2 = st.clone();
    let ch = st
        .store
        .writer()
        .write(
            move |w| {
                let (_, plan) = emergency::current_plan(w.conn)?;
                if !plan.is_decider(c2.user.name.as_str(), &c2.user.roles) {
                    return Err(forbidden("only the plan's deciders may change the phase"));
                }
                let d = emergency::declaration(w.conn, id)?.ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
                let note = req.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
                let ticks = emergency::ticks(w.conn, id)?;
                let done = |phase: Phase| -> Vec<String> {
                    let ticked: Vec<&str> = ticks.iter().filter(|t| t.phase == phase.as_str()).map(|t| t.item.as_str()).collect();
                    plan.required_items(phase).iter().filter(|i| !ticked.contains(&i.id.as_str())).map(|i| i.id.clone()).collect()
                };
                let event = match req.to.as_str() {
                    // Open reconciliation tasks (EM-C2) count as an incomplete checklist.
                    "normal" => BcpEvent::ReturnToNormal {
                        checklist_complete: done(Phase::FullRecovery).is_empty() && mamori_store::continuity::open_tasks(w.conn)? == 0,
                        override_reason: req.override_reason.clone(),
                    },
                    "stand_down" => BcpEvent::StandDown { reason: note.unwrap_or_default().to_owned() },
                    other => BcpEvent::Advance(Phase::parse(other).ok_or_else(|| StoreError::invalid("to", "one of resumption, recovery, full_recovery, normal, stand_down"))?),
                };
                let to = d.state.apply(&event).map_err(|e| StoreError::Precondition(e.to_string()))?;
                let open_items = match d.state {
                    DeclState::Active(p) => done(p),
                    _ => Vec::new(),
                };
                let override_reason = match &event {
                    BcpEvent::ReturnToNormal { checklist_complete: false, override_reason } => override_reason.as_deref(),
                    _ => None,
                };
                emergency::record_transition(w.conn, id, d.state.as_str(), to, c2.user.name.as_str(), w.now, note, override_reason)?;
                let decl = emergency::declaration(w.conn, id)?.ok_or_else(|| StoreError::Internal("vanished".into()))?;
                let mut rec = c2.record("bcp-transition", 200, w.now);
                rec.detail = Some(json!({"declaration": id, "from": d.state.as_str(), "to": to.as_str(), "note": note,
                                         "override_reason": override_reason, "unticked_required_items": open_items}));
                w.audit(&rec)?;
                let mode = emergency::mode_of(Some(&decl), &plan);
                let mut announcements = Vec::new();
                let ended = matches!(to, DeclState::Closed | DeclState::StoodDown);
                let msg = match to {
                    DeclState::Closed => "通常運用に復帰しました / Returned to normal operation".to_owned(),
                    DeclState::StoodDown => format!("非常時宣言を取り下げました / The emergency declaration was stood down: {}", note.unwrap_or("")),
                    DeclState::Active(p) => format!("非常時のフェーズが {} に移行しました / The emergency moved to phase {}", p.as_str(), p.as_str()),
                    DeclState::Proposed => String::new(),
                };
                // The mode changes with this commit: the checkpoint records it.
                let note_cp = w.checkpoint("mode-change")?;
                if ended {
                    let cleanup = end_emergency_powers(w, &st2, &decl)?;
                    announcements.extend(cleanup.1);
                    let report = after_action_report(w, &decl, &plan)?;
                    emergency::save_review(w.conn, id, &report)?;
                    let _ = cleanup.0;
                }
                announcements.push(notify::announce(
                    w,
                    &st2,
                    if ended { "emergency-ended" } else { "emergency-phase" },
                    decl.drill,
                    if ended { "info" } else { "warning" },
                    &msg,
                    json!({"declaration": id, "from": d.state.as_str(), "to": to.as_str(), "mode": mode.header_value(), "checkpoint_size": note_cp.lines().nth(1)}),
                    Audience::Everyone,
                )?);
                Ok(Changed { decl, mode, announcements })
            },
            move |e, w| {
                let mut rec = c3.record("bcp-transition", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"declaration": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(after_change(&st, ch)).into_response())
}

/// At return to normal (or stand-down): emergency accounts that were used
/// are retired and replaced, their sessions end, live break-glass grants
/// end. Returns (what was done, announcements).
fn end_emergency_powers(
    w: &mut WriteCtx<'_>,
    st: &AppState,
    decl: &Declaration,
) -> mamori_store::Result<(Value, Vec<Announcement>)> {
    let mut retired = Vec::new();
    let mut replacements = Vec::new();
    for acc in emergency::emergency_accounts(w.conn)? {
        if acc.state != mamori_core::bcp::AccountState::InUse {
            continue;
        }
        let new_name = crate::eaccounts::retire_and_replace(w, &acc, "return to normal")?;
        retired.push(acc.user.clone());
        replacements.push(new_name);
    }
    let mut ended = Vec::new();
    for g in emergency::grants(w.conn, None, None, 10_000)? {
        if g.live(w.now) {
            emergency::end_grant(w.conn, g.id, w.now)?;
            ended.push(g.id);
        }
    }
    let mut rec = crate::state::RequestCtx { addr: None, request_id: None, mode: st.mode.get() }.record(
        "system",
        "system",
        "emergency-powers-ended",
        200,
        w.now,
    );
    rec.detail = Some(
        json!({"declaration": decl.id, "retired_accounts": retired, "replacements": replacements, "ended_grants": ended}),
    );
    w.audit(&rec)?;
    let mut ann = Vec::new();
    if !retired.is_empty() {
        ann.push(notify::announce(
            w,
            st,
            "emergency-accounts-retired",
            decl.drill,
            "info",
            &format!("使用された非常用アカウント {} 件を廃止し、代替を発行しました（封筒の印刷が必要）/ {} used emergency account(s) retired and replaced (envelopes to print)", retired.len(), retired.len()),
            json!({"retired": retired, "replacements": replacements}),
            Audience::Roles(vec![Role::Admin, Role::BcpDecider]),
        )?);
    }
    Ok((json!({"retired": retired, "replacements": replacements, "ended_grants": ended}), ann))
}

/// The generated after-action report (EM-B6): timeline, decisions,
/// checklist completion times, break-glass and emergency-account uses,
/// and for drills each phase's time against the plan's target.
fn after_action_report(w: &mut WriteCtx<'_>, decl: &Declaration, plan: &Plan) -> mamori_store::Result<Value> {
    let transitions = emergency::transitions(w.conn, decl.id)?;
    let ticks = emergency::ticks(w.conn, decl.id)?;
    let end = decl.closed_at.unwrap_or(w.now);
    let grants: Vec<Value> = emergency::grants(w.conn, None, None, 10_000)?
        .into_iter()
        .filter(|g| g.started >= decl.declared_at && g.started <= end)
        .map(|g| json!({"id": g.id, "user": g.user, "patient": g.patient, "reason": g.reason, "started": g.started.to_rfc3339(), "review": g.review}))
        .collect();
    let accounts: Vec<Value> = emergency::emergency_accounts(w.conn)?
        .into_iter()
        .filter(|a| a.unsealed_at.is_some_and(|t| t >= decl.declared_at && t <= end))
        .map(|a| json!({"account": a.user, "declared_person": a.declared, "unsealed_at": a.unsealed_at.map(|t| t.to_rfc3339()), "state": a.state}))
        .collect();
    // Phase durations from the transitions.
    let mut phases = Vec::new();
    let mut enters: Vec<(String, Timestamp)> = transitions.iter().map(|t| (t.to.clone(), t.at)).collect();
    enters.push(("end".into(), end));
    for win in enters.windows(2) {
        if let [(phase, from), (_, to)] = win {
            if let Some(p) = Phase::parse(phase) {
                let minutes = (to.micros() - from.micros()) as f64 / 60e6;
                let target = plan.rules(p).target_minutes;
                let items: Vec<Value> = ticks
                    .iter()
                    .filter(|t| t.phase == p.as_str())
                    .map(|t| json!({"item": t.item, "by": t.by, "at": t.at.to_rfc3339(), "minutes_into_phase": ((t.at.micros() - from.micros()) as f64 / 60e6 * 10.0).round() / 10.0}))
                    .collect();
                phases.push(json!({"phase": p.as_str(), "started": from.to_rfc3339(), "minutes": (minutes * 10.0).round() / 10.0,
                                   "target_minutes": target, "within_target": target.map(|t| minutes <= f64::from(t)), "checklist": items}));
            }
        }
    }
    // In a drill: how often the emergency rules would have let staff work.
    let would_permit = if decl.drill {
        let mut n = 0i64;
        w.conn.for_each(
            "SELECT leaf FROM audit_events WHERE time >= $1 AND time <= $2 AND status = 403",
            mamori_store::p![decl.declared_at.micros(), end.micros()],
            &mut |r| {
                if r.first()
                    .and_then(mamori_store::sql::CellRef::bytes)
                    .is_some_and(|l| l.windows(25).any(|x| x == b"would-permit-in-emergency"))
                {
                    n += 1;
                }
                Ok(true)
            },
        )?;
        Some(n)
    } else {
        None
    };
    Ok(json!({
        "declaration": decl.id, "drill": decl.drill, "cause": decl.cause, "criteria": decl.criteria, "reason": decl.reason,
        "declared_by": decl.declared_by, "confirmed_by": decl.confirmed_by, "declared_at": decl.declared_at.to_rfc3339(),
        "ended_at": end.to_rfc3339(), "outcome": decl.state.as_str(),
        "timeline": transitions, "phases": phases, "break_glass": grants, "emergency_accounts": accounts,
        "drill_accesses_denied_but_permitted_in_emergency": would_permit,
    }))
}

async fn list(State(st): State<AppState>, _caller: Caller) -> R {
    let v = st.store.read(|c| emergency::declarations(c, 100)).await?;
    Ok(Json(json!({"declarations": v.iter().map(decl_json).collect::<Vec<_>>()})).into_response())
}

async fn show(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> R {
    let r = st
        .store
        .read(move |c| {
            let d = emergency::declaration(c, id)?.ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
            let (_, plan) = emergency::current_plan(c)?;
            let transitions = emergency::transitions(c, id)?;
            let ticks = emergency::ticks(c, id)?;
            let checklists: Value = Phase::ALL
                .iter()
                .map(|p| {
                    let items: Vec<Value> = plan
                        .checklists
                        .get(p)
                        .map(|v| {
                            v.iter()
                                .map(|i| {
                                    let t = ticks.iter().find(|t| t.phase == p.as_str() && t.item == i.id);
                                    json!({"id": i.id, "ja": i.text.ja, "en": i.text.en, "required": i.required,
                                           "done_by": t.map(|t| t.by.clone()), "done_at": t.map(|t| t.at.to_rfc3339())})
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (p.as_str().to_owned(), Value::Array(items))
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            let mut v = decl_json(&d);
            v["transitions"] = json!(transitions);
            v["checklists"] = checklists;
            v["mode"] = json!(emergency::mode_of(Some(&d), &plan).header_value());
            Ok(v)
        })
        .await?;
    Ok(Json(r).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TickReq {
    #[serde(default)]
    note: Option<String>,
}

async fn tick(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, phase, item)): Path<(i64, String, String)>,
    body: Body,
) -> R {
    let req: TickReq = {
        let b = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| ApiError::TooLarge(64 * 1024))?;
        if b.is_empty() {
            TickReq::default()
        } else {
            match serde_json::from_slice(&b) {
                Ok(r) => r,
                Err(e) => {
                    return Err(refuse(
                        &st,
                        &caller,
                        "bcp-checklist",
                        ApiError::bad("", format!("invalid request body: {e}")),
                    )
                    .await)
                }
            }
        }
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                let (_, plan) = emergency::current_plan(w.conn)?;
                if !(bcp_team(&c2) || plan.is_decider(c2.user.name.as_str(), &c2.user.roles)) {
                    return Err(forbidden("ticking the BCP checklist needs the bcp-decider or admin role"));
                }
                let p = Phase::parse(&phase)
                    .ok_or_else(|| StoreError::invalid("phase", "activation, resumption, recovery or full_recovery"))?;
                let d = emergency::declaration(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
                let reached = match d.state {
                    DeclState::Active(cur) => p <= cur,
                    _ => false,
                };
                if !reached {
                    return Err(StoreError::Precondition(format!(
                        "phase {} is not current or past for this declaration ({})",
                        p.as_str(),
                        d.state.as_str()
                    )));
                }
                if !plan.checklists.get(&p).is_some_and(|v| v.iter().any(|i| i.id == item)) {
                    return Err(StoreError::NotFound(format!("checklist item {item} in phase {}", p.as_str())));
                }
                let new = emergency::tick(w.conn, id, p, &item, c2.user.name.as_str(), w.now, req.note.as_deref())?;
                let mut rec = c2.record("bcp-checklist", 200, w.now);
                rec.detail = Some(json!({"declaration": id, "phase": p.as_str(), "item": item, "already_done": !new}));
                w.audit(&rec)?;
                Ok(new)
            },
            move |e, w| {
                let mut rec = c3.record("bcp-checklist", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"declaration": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({"done": true, "new": r})).into_response())
}

async fn get_review(State(st): State<AppState>, _caller: Caller, Path(id): Path<i64>) -> R {
    let r = st.store.read(move |c| emergency::review(c, id)).await?;
    match r {
        Some((report, lessons, by, at)) => Ok(Json(json!({"report": report, "lessons": lessons, "completed_by": by, "completed_at": at.map(|t| t.to_rfc3339())})).into_response()),
        None => Err(OpsError(ApiError::NotFound(format!("no review for declaration {id}: it opens at return to normal")))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    lessons: String,
}

async fn put_review(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    let pre = async {
        if !bcp_team(&caller) {
            return Err(ApiError::Forbidden("completing the BCP review needs the bcp-decider or admin role".into()));
        }
        let req: ReviewReq = json_body(body).await?;
        if req.lessons.trim().chars().count() < 10 {
            return Err(ApiError::bad("lessons", "write the lessons learned (at least 10 characters)"));
        }
        Ok(req)
    }
    .await;
    let req = match pre {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "bcp-review", e).await),
    };
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                emergency::complete_review(w.conn, id, req.lessons.trim(), c2.user.name.as_str(), w.now)?;
                let mut rec = c2.record("bcp-review", 200, w.now);
                rec.detail = Some(json!({"declaration": id}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"completed": true})).into_response())
}

// ---- cyber-attack report (EM-C4) ---------------------------------------------------------------

fn evidence_path(st: &AppState, id: i64) -> std::path::PathBuf {
    st.data_dir.join("evidence").join(format!("declaration-{id}-audit.ndjson"))
}

/// Exports the audit log of the 7 days before the declaration, up to the
/// checkpoint signed at declaration, to the data directory.
async fn preserve_evidence(st: &AppState, id: i64) -> Result<(), String> {
    let path = evidence_path(st, id);
    if let Some(dir) = path.parent() {
        crate::keys::create_private_dir(dir).map_err(|e| e.to_string())?;
    }
    let dd = crate::server::DataDir(st.data_dir.clone());
    let vkey = std::fs::read_to_string(dd.audit_vkey()).map_err(|e| e.to_string())?.trim().to_owned();
    let origin = st.cfg.audit.origin.clone();
    let p2 = path.clone();
    st.store
        .read(move |c| {
            let d = emergency::declaration(c, id)?.ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
            let size =
                d.checkpoint.as_deref().and_then(|n| n.lines().nth(1)).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            let week_ago = d.declared_at.micros() - 7 * 86_400_000_000;
            let from = c
                .query_one(
                    "SELECT COALESCE(MIN(seq), 0) FROM audit_events WHERE time >= $1",
                    mamori_store::p![week_ago],
                )?
                .map(|r| r.u64(0))
                .transpose()?
                .unwrap_or(0);
            let f = std::fs::File::options()
                .write(true)
                .create_new(true)
                .open(&p2)
                .map_err(|e| StoreError::Internal(e.to_string()))?;
            let mut out = std::io::BufWriter::new(f);
            mamori_store::audit_log::export(
                c,
                &mut out,
                &vkey,
                &origin,
                from.min(size.saturating_sub(1)),
                Some(size),
                d.declared_at,
            )?;
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(path = %path.display(), "audit evidence preserved");
    Ok(())
}

async fn incident_report(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    if !(bcp_team(&caller) || caller.subject().has(Role::Auditor)) {
        return Err(refuse(
            &st,
            &caller,
            "incident-report",
            ApiError::Forbidden("the incident report is for the BCP team and auditors".into()),
        )
        .await);
    }
    let (d, transitions, ticks, alerts, done, plan) = st
        .store
        .read(move |c| {
            let d = emergency::declaration(c, id)?.ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
            let (_, plan) = emergency::current_plan(c)?;
            Ok((
                d,
                emergency::transitions(c, id)?,
                emergency::ticks(c, id)?,
                emergency::alerts(c, false, 200)?,
                emergency::reports_done(c, id)?,
                plan,
            ))
        })
        .await?;
    if d.cause != Cause::CyberAttack {
        return Err(OpsError(ApiError::NotFound(format!(
            "declaration {id} is not a cyber attack; the authority report applies to cyber attacks"
        ))));
    }
    let evidence = evidence_path(&st, id);
    let evidence_hash = std::fs::read(&evidence)
        .ok()
        .map(|b| mamori_audit::merkle::to_hex(ring::digest::digest(&ring::digest::SHA256, &b).as_ref()));
    let name = &st.cfg.institution.name;
    let inst_id = if st.cfg.institution.id.is_empty() {
        "(未設定 / not set)".to_owned()
    } else {
        st.cfg.institution.id.clone()
    };
    let crit: Vec<String> = d
        .criteria
        .iter()
        .map(|c| {
            plan.criterion(c).map_or(c.clone(), |x| format!("{} — {} / {}", x.id, x.description.ja, x.description.en))
        })
        .collect();
    let mut text = String::new();
    text.push_str(&format!("# {}医療機関におけるサイバー攻撃被害の報告（第一報・下書き）\n# Report of a cyber attack on a medical institution (first report, draft){}\n\n", if d.drill { "【訓練】" } else { "" }, if d.drill { " [DRILL]" } else { "" }));
    text.push_str(&format!("## 1. 医療機関 / Institution\n{name}（医療機関コード / code: {inst_id}）\n\n"));
    text.push_str(&format!(
        "## 2. 覚知・宣言日時 / Detected and declared\n{}（宣言者 / declared by: {}）\n\n",
        d.declared_at.to_rfc3339(),
        d.declared_by
    ));
    text.push_str(&format!(
        "## 3. 事象の概要 / Summary\n{}\n\n該当基準 / Criteria met:\n{}\n\n",
        d.reason,
        crit.iter().map(|c| format!("- {c}")).collect::<Vec<_>>().join("\n")
    ));
    text.push_str("## 4. 影響を受けたシステム・診療への影響 / Affected systems and impact on care\n(記入してください / to be completed)\n\n");
    text.push_str("## 5. 経過 / Timeline\n");
    for t in &transitions {
        text.push_str(&format!(
            "- {} {} → {} ({}){}\n",
            t.at.to_rfc3339(),
            t.from,
            t.to,
            t.by,
            t.note.as_ref().map(|n| format!(": {n}")).unwrap_or_default()
        ));
    }
    for a in alerts.iter().filter(|a| {
        a.time >= Timestamp(d.declared_at.micros() - 86_400_000_000) && d.closed_at.is_none_or(|c| a.time <= c)
    }) {
        text.push_str(&format!("- {} ALERT [{}] {}\n", a.time.to_rfc3339(), a.kind, a.message));
    }
    text.push_str("\n## 6. 実施した対応 / Actions taken\n");
    for t in &ticks {
        text.push_str(&format!("- {} [{}] {} ({})\n", t.at.to_rfc3339(), t.phase, t.item, t.by));
    }
    text.push_str(&format!(
        "\n## 7. 証拠保全 / Evidence preserved\n宣言時の署名付き監査チェックポイント / Signed audit checkpoint at declaration:\n```\n{}```\n監査ログのエクスポート / Audit log export: {} (SHA-256 {})\n検証 / verify: `mamori audit verify --export <file> --key <log key>`\n\n",
        d.checkpoint.clone().unwrap_or_default(),
        evidence.display(),
        evidence_hash.clone().unwrap_or_else(|| "(作成中 / being written)".into())
    ));
    text.push_str("## 8. 報告・連絡状況 / Reporting\n");
    for r in ["mhlw", "police", "patients"] {
        let label = match r {
            "mhlw" => "厚生労働省（所管省庁）/ MHLW",
            "police" => "警察 / Police",
            _ => "患者への周知 / Patients informed",
        };
        match done.iter().find(|x| x.0 == r) {
            Some((_, by, at, note)) => text.push_str(&format!(
                "- [x] {label}: {} ({by}){}\n",
                at.to_rfc3339(),
                note.as_ref().map(|n| format!(" — {n}")).unwrap_or_default()
            )),
            None => text.push_str(&format!("- [ ] {label}\n")),
        }
    }
    let contact =
        plan.team.first().map(|c| format!("{} {}", c.name, c.phone.clone().unwrap_or_default())).unwrap_or_default();
    text.push_str(&format!("\n## 9. 連絡先 / Contact\n{contact}\n"));
    let mut a = caller.record("incident-report", 200, st.store.clock().now());
    a.detail = Some(json!({"declaration": id}));
    st.store.writer().audit(vec![a]).await?;
    Ok(Json(json!({
        "declaration": id, "drill": d.drill, "text": text, "checkpoint": d.checkpoint,
        "evidence": {"path": evidence.display().to_string(), "sha256": evidence_hash},
        "reported": done.iter().map(|(r, by, at, note)| json!({"recipient": r, "by": by, "at": at.to_rfc3339(), "note": note})).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReportedReq {
    #[serde(default)]
    note: Option<String>,
}

async fn reported(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, recipient)): Path<(i64, String)>,
    body: Body,
) -> R {
    let req: ReportedReq = {
        let b = axum::body::to_bytes(body, 64 * 1024).await.map_err(|_| ApiError::TooLarge(64 * 1024))?;
        if b.is_empty() {
            ReportedReq::default()
        } else {
            serde_json::from_slice(&b).map_err(|e| ApiError::bad("", e.to_string()))?
        }
    };
    if !bcp_team(&caller) {
        return Err(refuse(
            &st,
            &caller,
            "incident-reported",
            ApiError::Forbidden("recording reports needs the bcp-decider or admin role".into()),
        )
        .await);
    }
    if !matches!(recipient.as_str(), "mhlw" | "police" | "patients") {
        return Err(
            refuse(&st, &caller, "incident-reported", ApiError::bad("recipient", "mhlw, police or patients")).await
        );
    }
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                let d = emergency::declaration(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
                if d.cause != Cause::CyberAttack {
                    return Err(StoreError::invalid(
                        "declaration",
                        "only cyber-attack declarations have authority reports",
                    ));
                }
                emergency::record_report(w.conn, id, &recipient, c2.user.name.as_str(), w.now, req.note.as_deref())?;
                let mut rec = c2.record("incident-reported", 200, w.now);
                rec.detail = Some(json!({"declaration": id, "recipient": recipient, "note": req.note}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"recorded": true})).into_response())
}

// ---- alerts and deliveries ----------------------------------------------------------------

#[derive(Deserialize)]
struct AlertQ {
    open: Option<bool>,
}

async fn alerts(State(st): State<AppState>, caller: Caller, Query(q): Query<AlertQ>) -> R {
    let s = caller.subject();
    if !(bcp_team(&caller) || s.has(Role::Auditor)) {
        return Err(refuse(
            &st,
            &caller,
            "alert-list",
            ApiError::Forbidden("alerts are for deciders, admins and auditors".into()),
        )
        .await);
    }
    let open = q.open.unwrap_or(false);
    let list = st.store.read(move |c| emergency::alerts(c, open, 200)).await?;
    let plan = st.store.read(|c| emergency::current_plan(c).map(|x| x.1)).await?;
    let items: Vec<Value> = list
        .iter()
        .map(|a| {
            let mut v = json!(a);
            // Offer the plan's matching criteria with a possible emergency.
            if let Some(cause) =
                a.detail.as_ref().and_then(|d| d.get("cause")).and_then(Value::as_str).and_then(Cause::parse)
            {
                v["matching_criteria"] = json!(plan
                    .criteria_for(cause)
                    .iter()
                    .map(|c| json!({"id": c.id, "ja": c.description.ja, "en": c.description.en}))
                    .collect::<Vec<_>>());
            }
            v
        })
        .collect();
    Ok(Json(json!({"alerts": items})).into_response())
}

async fn ack(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    if !(bcp_team(&caller) || caller.subject().has(Role::Auditor)) {
        return Err(refuse(
            &st,
            &caller,
            "alert-ack",
            ApiError::Forbidden("alerts are for deciders, admins and auditors".into()),
        )
        .await);
    }
    let c2 = caller.clone();
    let done = st
        .store
        .writer()
        .write(
            move |w| {
                let ok = emergency::ack_alert(w.conn, id, c2.user.name.as_str(), w.now)?;
                let mut rec = c2.record("alert-ack", if ok { 200 } else { 404 }, w.now);
                rec.detail = Some(json!({"alert": id}));
                w.audit(&rec)?;
                Ok(ok)
            },
            |_, _| Ok(()),
        )
        .await?;
    if !done {
        return Err(OpsError(ApiError::NotFound(format!("no open alert {id}"))));
    }
    Ok(Json(json!({"acknowledged": true})).into_response())
}

#[derive(Deserialize)]
struct DeliveryQ {
    state: Option<String>,
}

async fn notifications(State(st): State<AppState>, caller: Caller, Query(q): Query<DeliveryQ>) -> R {
    if !bcp_team(&caller) {
        return Err(refuse(
            &st,
            &caller,
            "notification-list",
            ApiError::Forbidden("delivery records are for admins and deciders".into()),
        )
        .await);
    }
    let list = st.store.read(move |c| emergency::deliveries(c, q.state.as_deref(), 500)).await?;
    Ok(Json(json!({"deliveries": list})).into_response())
}

/// Raises an alert (stored, announced to deciders, admins and auditors).
pub async fn raise_alert(st: &AppState, kind: &str, severity: &str, message: &str, detail: Value) {
    let st2 = st.clone();
    let (k, s, m) = (kind.to_owned(), severity.to_owned(), message.to_owned());
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                let id = emergency::insert_alert(w.conn, &k, &s, &m, &detail, w.now)?;
                let mut d = detail.clone();
                d["alert"] = json!(id);
                notify::announce(
                    w,
                    &st2,
                    &format!("alert-{k}"),
                    st2.mode.get().is_drill(),
                    &s,
                    &m,
                    d,
                    Audience::Roles(vec![Role::BcpDecider, Role::Admin, Role::Auditor]),
                )
            },
            |_, _| Ok(()),
        )
        .await;
    match r {
        Ok(a) => notify::publish(st, [a]),
        Err(e) => {
            // The database itself may be what is failing: still tell the screens.
            tracing::error!(error = %e, kind, message, "could not record an alert");
            let _ = st.events.send(Announcement {
                id: 0,
                event: format!("alert-{kind}"),
                drill: false,
                time: st.store.clock().now().to_rfc3339(),
                mode: st.mode.get().header_value(),
                severity: severity.to_owned(),
                message: message.to_owned(),
                detail: json!({"unrecorded": true}),
                audience: Audience::Roles(vec![Role::BcpDecider, Role::Admin, Role::Auditor]),
            });
        }
    }
}
