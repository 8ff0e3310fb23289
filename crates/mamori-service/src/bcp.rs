//! The emergency procedure (BCP, guideline 6.9): the plan, declarations
//! and their phases, checklists, the after-action review, the cyber-attack
//! report, alerts, the mode in force.
//!
//! Every change of the operating mode happens here, in one write job with
//! its audit event, a signed audit checkpoint and its announcement; the
//! new mode is put in force only after that job committed.

use mamori_audit::event::AuditRecord;
use mamori_core::bcp::{BcpEvent, Cause, DeclState, Plan};
use mamori_core::mode::{Mode, Phase};
use mamori_core::policy::{told, Decision, Facts, Notice, Operation};
use mamori_core::time::Timestamp;
use mamori_store::emergency::{self, Declaration};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{Actor, RequestCtx};
use crate::authz;
use crate::commit::{Effect, Outcome};
use crate::error::ServiceError;
use crate::init::DataDir;
use crate::notify::{self, Announcement, Audience};
use crate::services::Services;

/// Decides with the plan's facts about the actor; audits a refusal.
async fn gate(
    svc: &Services,
    actor: &Actor,
    action: &str,
    op: Operation,
    what: &str,
) -> Result<Decision, ServiceError> {
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    svc.gate(actor, action, op, facts, what).await
}

/// Decides a read, audits it either way.
async fn read_gate(
    svc: &Services,
    actor: &Actor,
    action: &str,
    op: Operation,
    what: &str,
) -> Result<Decision, ServiceError> {
    let d = gate(svc, actor, action, op, what).await?;
    svc.audit(vec![actor.decided(action, 200, &d, svc.now())]).await?;
    Ok(d)
}

/// Decides inside a job with the plan's facts.
fn decide_in(
    w: &mut WriteCtx<'_>,
    actor: &Actor,
    op: Operation,
    own: bool,
    what: &str,
) -> Result<Decision, ServiceError> {
    let facts = Facts { own, ..authz::plan_facts(w.conn, actor)? };
    authz::require(actor, &op, facts, what)
}

/// The mode in force, with the open declaration.
pub async fn mode(svc: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    read_gate(svc, actor, "mode-read", Operation::OwnSession, "the mode").await?;
    let m = actor.mode();
    let open = svc.store.read(emergency::open_declaration).await?;
    let decl = open.map(|d| {
        json!({"id": d.id, "cause": d.cause, "drill": d.drill, "state": d.state.as_str(), "declared_at": d.declared_at.to_rfc3339(), "declared_by": d.declared_by, "reason": d.reason})
    });
    Ok(json!({"mode": m.header_value(), "state": m, "declaration": decl, "checked_at": svc.now().to_rfc3339()}))
}

// ---- plan ------------------------------------------------------------------------------

/// The plan in force: its version, whether it is the built-in one, and
/// the plan (as TOML when `toml`).
pub async fn plan(svc: &Services, actor: &Actor, toml: bool) -> Result<Value, ServiceError> {
    read_gate(svc, actor, "bcp-plan-read", Operation::BcpRead, "the BCP plan").await?;
    let (version, text) = svc.store.read(emergency::current_plan_toml).await?;
    if toml {
        return Ok(Value::String(text));
    }
    let plan = Plan::from_toml(&text).map_err(|e| ServiceError::internal(format!("the stored plan: {e:?}")))?;
    Ok(json!({"version": version, "builtin": version == 0, "plan": plan}))
}

/// Imports a plan (TOML). The BCP team may; only a decider of the plan in
/// force changes who decides (or an admin replacing the built-in plan).
pub async fn put_plan(svc: &Services, actor: &Actor, text: String) -> Result<i64, ServiceError> {
    const ACTION: &str = "bcp-plan-import";
    let plan = match Plan::from_toml(&text) {
        Ok(p) => p,
        Err(errs) => {
            let e = ServiceError::Invalid(
                errs.into_iter()
                    .map(|e| mamori_core::fhir::validate::Issue { path: e.path, message: e.message })
                    .collect(),
            );
            return Err(svc.refused(actor, ACTION, e).await);
        }
    };
    let a2 = actor.clone();
    let version = svc
        .change(actor, ACTION, move |w| {
            let (current, _) = authz::plan(w.conn)?;
            let deciders_changed = current.deciders != plan.deciders;
            let d = decide_in(w, &a2, Operation::BcpPlanChange { deciders_changed }, false, "importing the BCP plan")?;
            let v = emergency::import_plan(w.conn, &text, a2.name(), w.now)?;
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.detail =
                Some(json!({"version": v, "criteria": plan.criteria.len(), "deciders_changed": deciders_changed}));
            w.audit(&rec)?;
            // The rules of the current phase may have changed.
            let mode = emergency::current_mode(w.conn)?;
            Ok(Outcome::with(v, vec![Effect::Mode(mode)]))
        })
        .await?;
    Ok(svc.finish(version).await)
}

// ---- declarations -----------------------------------------------------------------------

/// A declaration of an emergency (or a drill).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declare {
    /// The cause.
    pub cause: String,
    /// The plan's criteria that are met.
    pub criteria: Vec<String>,
    /// What is happening.
    pub reason: String,
    /// A drill.
    #[serde(default)]
    pub drill: bool,
}

/// A declaration as shown.
pub fn decl_json(d: &Declaration) -> Value {
    json!({
        "id": d.id, "cause": d.cause, "criteria": d.criteria, "reason": d.reason, "drill": d.drill,
        "state": d.state.as_str(), "plan_version": d.plan_version, "declared_by": d.declared_by,
        "confirmed_by": d.confirmed_by, "declared_at": d.declared_at.to_rfc3339(),
        "closed_at": d.closed_at.map(|t| t.to_rfc3339()), "checkpoint": d.checkpoint,
    })
}

/// A committed change of a declaration: the declaration, the mode and the
/// announcements, put in force after the commit.
fn changed(decl: Declaration, mode: Mode, announcements: Vec<Announcement>) -> Outcome<Declaration> {
    Outcome::with(decl, vec![Effect::Mode(mode), Effect::Announce(announcements)])
}

/// Puts a committed change in force and starts what follows it: for a
/// cyber attack the evidence export, at the end of an emergency the
/// after-action report (both off the writer).
async fn after_change(st: &Services, out: Outcome<Declaration>) -> Value {
    let decl = st.finish(out).await;
    if decl.cause == Cause::CyberAttack && !decl.drill && decl.state == DeclState::Active(Phase::Activation) {
        let st2 = st.clone();
        let id = decl.id;
        tokio::spawn(async move {
            if let Err(e) = preserve_evidence(&st2, id).await {
                tracing::error!(error = %e, declaration = id, "could not preserve the audit evidence");
            }
        });
    }
    if matches!(decl.state, DeclState::Closed | DeclState::StoodDown) {
        if let Err(e) = write_review(st, decl.id).await {
            tracing::error!(error = %e, declaration = decl.id, "could not write the after-action report; it is made when first read");
        }
    }
    decl_json(&decl)
}

fn activate(
    w: &mut WriteCtx<'_>,
    st: &Services,
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

/// Declares an emergency (a plan decider). With the plan's two-person
/// rule the declaration waits for a second decider (mode unchanged).
pub async fn declare(svc: &Services, actor: &Actor, req: Declare) -> Result<Value, ServiceError> {
    const ACTION: &str = "bcp-declare";
    let (a2, st2) = (actor.clone(), svc.clone());
    let out = svc
        .change(actor, ACTION, move |w| {
            let dec = decide_in(w, &a2, Operation::BcpDeclare, false, "declaring an emergency")?;
            let (version, plan) = emergency::current_plan(w.conn)?;
            let cause = Cause::parse(&req.cause).ok_or_else(|| {
                ServiceError::invalid("cause", "one of disaster, cyber_attack, system_failure, mass_casualty, other")
            })?;
            if req.criteria.is_empty() {
                return Err(ServiceError::invalid("criteria", "name the plan's criteria that are met"));
            }
            for id in &req.criteria {
                let c = plan
                    .criterion(id)
                    .ok_or_else(|| ServiceError::invalid("criteria", format!("'{id}' is not a criterion of the plan")))?;
                if c.cause != cause && cause != Cause::Other {
                    return Err(ServiceError::invalid(
                        "criteria",
                        format!("criterion '{id}' is about {}, not {}", c.cause.as_str(), cause.as_str()),
                    ));
                }
            }
            if req.reason.trim().chars().count() < 10 {
                return Err(ServiceError::invalid("reason", "say what is happening (at least 10 characters)"));
            }
            if emergency::open_declaration(w.conn)?.is_some() {
                return Err(ServiceError::Conflict("an open declaration exists (finish or stand it down first)".into()));
            }
            let state = if plan.deciders.two_person { DeclState::Proposed } else { DeclState::Active(Phase::Activation) };
            let id = emergency::insert_declaration(
                w.conn,
                cause,
                &req.criteria,
                req.reason.trim(),
                req.drill,
                state,
                version,
                a2.name(),
                w.now,
            )?;
            emergency::record_transition(w.conn, id, "normal", state, a2.name(), w.now, Some(req.reason.trim()), None)?;
            let mut decl = emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::internal("declaration vanished"))?;
            let mut rec = a2.decided(ACTION, 201, &dec, w.now);
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
                    Audience::Roles(told(Notice::EmergencyProposed)),
                )?;
                (Mode::Normal, vec![a])
            } else {
                let (m, a) = activate(w, &st2, &mut decl, &plan)?;
                (m, vec![a])
            };
            Ok(changed(decl, mode, announcements))
        })
        .await?;
    Ok(after_change(svc, out).await)
}

/// Confirms another decider's declaration (two-person rule).
pub async fn confirm(svc: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    const ACTION: &str = "bcp-confirm";
    let (a2, st2) = (actor.clone(), svc.clone());
    let out = svc
        .change(actor, ACTION, move |w| {
            let d = emergency::declaration(w.conn, id)?
                .ok_or_else(|| ServiceError::NotFound(format!("declaration {id}")))?;
            let dec =
                decide_in(w, &a2, Operation::BcpConfirm, d.declared_by == a2.name(), "confirming this declaration")?;
            let (_, plan) = emergency::current_plan(w.conn)?;
            let to = d.state.apply(&BcpEvent::Confirm).map_err(|e| ServiceError::Precondition(e.to_string()))?;
            emergency::set_confirmed(w.conn, id, a2.name())?;
            emergency::record_transition(w.conn, id, d.state.as_str(), to, a2.name(), w.now, Some("confirmed"), None)?;
            let mut decl =
                emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::internal("declaration vanished"))?;
            let mut rec = a2.decided(ACTION, 200, &dec, w.now);
            rec.detail = Some(json!({"declaration": id}));
            w.audit(&rec)?;
            let (mode, a) = activate(w, &st2, &mut decl, &plan)?;
            Ok(changed(decl, mode, vec![a]))
        })
        .await?;
    Ok(after_change(svc, out).await)
}

/// A move to another phase, back to normal, or a stand-down.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// resumption | recovery | full_recovery | normal | stand_down
    pub to: String,
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
    /// Why normal may return with required checklist items open.
    #[serde(default)]
    pub override_reason: Option<String>,
}

/// Moves a declaration (a plan decider). Returning to normal needs the
/// required checklist and no open reconciliation tasks, or a reason; it
/// retires used emergency accounts and ends live break-glass grants.
pub async fn transition(svc: &Services, actor: &Actor, id: i64, req: Transition) -> Result<Value, ServiceError> {
    const ACTION: &str = "bcp-transition";
    let (a2, st2) = (actor.clone(), svc.clone());
    let out = svc
        .change(actor, ACTION, move |w| {
            let dec = decide_in(w, &a2, Operation::BcpTransition, false, "changing the phase")?;
            let (_, plan) = emergency::current_plan(w.conn)?;
            let d = emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("declaration {id}")))?;
            let note = req.note.as_deref().map(str::trim).filter(|n| !n.is_empty());
            let ticks = emergency::ticks(w.conn, id)?;
            let open_items = |phase: Phase| -> Vec<String> {
                let ticked: Vec<&str> = ticks.iter().filter(|t| t.phase == phase.as_str()).map(|t| t.item.as_str()).collect();
                plan.required_items(phase).iter().filter(|i| !ticked.contains(&i.id.as_str())).map(|i| i.id.clone()).collect()
            };
            let event = match req.to.as_str() {
                // Open reconciliation tasks (EM-C2) count as an incomplete checklist.
                "normal" => BcpEvent::ReturnToNormal {
                    checklist_complete: open_items(Phase::FullRecovery).is_empty()
                        && mamori_store::continuity::open_tasks(w.conn)? == 0,
                    override_reason: req.override_reason.clone(),
                },
                "stand_down" => BcpEvent::StandDown { reason: note.unwrap_or_default().to_owned() },
                other => BcpEvent::Advance(Phase::parse(other).ok_or_else(|| {
                    ServiceError::invalid("to", "one of resumption, recovery, full_recovery, normal, stand_down")
                })?),
            };
            let to = d.state.apply(&event).map_err(|e| ServiceError::Precondition(e.to_string()))?;
            let unticked = match d.state {
                DeclState::Active(p) => open_items(p),
                _ => Vec::new(),
            };
            let override_reason = match &event {
                BcpEvent::ReturnToNormal { checklist_complete: false, override_reason } => override_reason.as_deref(),
                _ => None,
            };
            emergency::record_transition(w.conn, id, d.state.as_str(), to, a2.name(), w.now, note, override_reason)?;
            let decl = emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::internal("declaration vanished"))?;
            let mut rec = a2.decided(ACTION, 200, &dec, w.now);
            rec.detail = Some(json!({"declaration": id, "from": d.state.as_str(), "to": to.as_str(), "note": note,
                                     "override_reason": override_reason, "unticked_required_items": unticked}));
            w.audit(&rec)?;
            let mode = emergency::mode_of(Some(&decl), &plan);
            let mut announcements = Vec::new();
            let ended = matches!(to, DeclState::Closed | DeclState::StoodDown);
            let msg = match to {
                DeclState::Closed => "通常運用に復帰しました / Returned to normal operation".to_owned(),
                DeclState::StoodDown => {
                    format!("非常時宣言を取り下げました / The emergency declaration was stood down: {}", note.unwrap_or(""))
                }
                DeclState::Active(p) => {
                    format!("非常時のフェーズが {} に移行しました / The emergency moved to phase {}", p.as_str(), p.as_str())
                }
                DeclState::Proposed => String::new(),
            };
            // The mode changes with this commit: the checkpoint records it.
            let note_cp = w.checkpoint("mode-change")?;
            if ended {
                announcements.extend(end_emergency_powers(w, &st2, &decl)?);
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
            Ok(changed(decl, mode, announcements))
        })
        .await?;
    Ok(after_change(svc, out).await)
}

/// At return to normal (or stand-down): emergency accounts that were used
/// are retired and replaced, their sessions end, live break-glass grants
/// end.
fn end_emergency_powers(
    w: &mut WriteCtx<'_>,
    st: &Services,
    decl: &Declaration,
) -> mamori_store::Result<Vec<Announcement>> {
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
    let mut rec =
        RequestCtx::background(st.mode.get()).record("system", "system", "emergency-powers-ended", 200, w.now);
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
            Audience::Roles(told(Notice::EmergencyAccountsRetired)),
        )?);
    }
    Ok(ann)
}

/// Makes the after-action report on a read connection (off the writer)
/// and stores it.
async fn write_review(st: &Services, id: i64) -> Result<Value, ServiceError> {
    let report = st.store.read(move |c| after_action_report(c, id)).await?;
    let r2 = report.clone();
    st.store.writer().write(move |w| emergency::save_review(w.conn, id, &r2), |_, _| Ok(())).await?;
    Ok(report)
}

/// The generated after-action report (EM-B6): timeline, decisions,
/// checklist completion times, break-glass and emergency-account uses,
/// and for drills each phase's time against the plan's target.
fn after_action_report(c: &mut dyn mamori_store::sql::Conn, id: i64) -> mamori_store::Result<Value> {
    let decl = emergency::declaration(c, id)?.ok_or_else(|| StoreError::NotFound(format!("declaration {id}")))?;
    let (_, plan) = emergency::current_plan(c)?;
    let transitions = emergency::transitions(c, decl.id)?;
    let ticks = emergency::ticks(c, decl.id)?;
    let end = decl.closed_at.unwrap_or_else(|| transitions.last().map_or(decl.declared_at, |t| t.at));
    let grants: Vec<Value> = emergency::grants(c, None, None, 10_000)?
        .into_iter()
        .filter(|g| g.started >= decl.declared_at && g.started <= end)
        .map(|g| json!({"id": g.id, "user": g.user, "patient": g.patient, "reason": g.reason, "started": g.started.to_rfc3339(), "review": g.review}))
        .collect();
    let accounts: Vec<Value> = emergency::emergency_accounts(c)?
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
    // In a drill: how often the emergency rules would have let staff work
    // (the denials marked so, read with the audit log's own decoder).
    let would_permit = if decl.drill {
        let mut n = 0i64;
        c.for_each(
            "SELECT leaf FROM audit_events WHERE time >= $1 AND time <= $2 AND status = 403",
            mamori_store::p![decl.declared_at.micros(), end.micros()],
            &mut |r| {
                let marked = r
                    .first()
                    .and_then(mamori_store::sql::CellRef::bytes)
                    .and_then(|l| AuditRecord::from_leaf(l).ok())
                    .is_some_and(|rec| {
                        rec.detail.as_ref().and_then(|d| d.get("drill")).and_then(Value::as_str)
                            == Some("would-permit-in-emergency")
                    });
                if marked {
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

/// The declarations, newest first.
pub async fn list(svc: &Services, actor: &Actor) -> Result<Vec<Value>, ServiceError> {
    read_gate(svc, actor, "bcp-declaration-list", Operation::BcpRead, "declarations").await?;
    let v = svc.store.read(|c| emergency::declarations(c, 100)).await?;
    Ok(v.iter().map(decl_json).collect())
}

/// One declaration with its transitions, checklists and mode.
pub async fn show(svc: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    read_gate(svc, actor, "bcp-declaration-read", Operation::BcpRead, "declarations").await?;
    Ok(svc
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
        .await?)
}

/// A checklist item done.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Tick {
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Ticks a checklist item of the current or a past phase (the BCP team).
pub async fn tick(
    svc: &Services,
    actor: &Actor,
    id: i64,
    phase: &str,
    item: &str,
    req: Tick,
) -> Result<bool, ServiceError> {
    const ACTION: &str = "bcp-checklist";
    let (a2, phase, item) = (actor.clone(), phase.to_owned(), item.to_owned());
    svc.change(actor, ACTION, move |w| {
        let dec = decide_in(w, &a2, Operation::BcpChecklist, false, "ticking the BCP checklist")?;
        let (_, plan) = emergency::current_plan(w.conn)?;
        let p = Phase::parse(&phase)
            .ok_or_else(|| ServiceError::invalid("phase", "activation, resumption, recovery or full_recovery"))?;
        let d =
            emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("declaration {id}")))?;
        let reached = match d.state {
            DeclState::Active(cur) => p <= cur,
            _ => false,
        };
        if !reached {
            return Err(ServiceError::Precondition(format!(
                "phase {} is not current or past for this declaration ({})",
                p.as_str(),
                d.state.as_str()
            )));
        }
        if !plan.checklists.get(&p).is_some_and(|v| v.iter().any(|i| i.id == item)) {
            return Err(ServiceError::NotFound(format!("checklist item {item} in phase {}", p.as_str())));
        }
        let new = emergency::tick(w.conn, id, p, &item, a2.name(), w.now, req.note.as_deref())?;
        let mut rec = a2.decided(ACTION, 200, &dec, w.now);
        rec.detail = Some(json!({"declaration": id, "phase": p.as_str(), "item": item, "already_done": !new}));
        w.audit(&rec)?;
        Ok(new)
    })
    .await
}

/// The after-action review (the BCP team, auditors): it names break-glass
/// uses (patients) and the people behind emergency accounts, so it is
/// audited with those patients.
pub async fn get_review(svc: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    const ACTION: &str = "bcp-review-read";
    let d = gate(svc, actor, ACTION, Operation::BcpReviewRead, "the after-action review").await?;
    let stored = svc.store.read(move |c| emergency::review(c, id)).await?;
    let (report, lessons, by, at) = match stored {
        Some(r) => r,
        None => {
            let decl = svc.store.read(move |c| emergency::declaration(c, id)).await?;
            match decl {
                Some(d) if matches!(d.state, DeclState::Closed | DeclState::StoodDown) => {
                    (write_review(svc, id).await?, None, None, None)
                }
                _ => {
                    let e =
                        ServiceError::NotFound(format!("no review for declaration {id}: it opens at return to normal"));
                    return Err(svc.refused(actor, ACTION, e).await);
                }
            }
        }
    };
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    let patients = report["break_glass"]
        .as_array()
        .map(|a| a.iter().filter_map(|g| g["patient"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    crate::actor::set_patients(&mut rec, patients);
    rec.detail = Some(json!({"declaration": id}));
    svc.audit(vec![rec]).await?;
    Ok(json!({"report": report, "lessons": lessons, "completed_by": by, "completed_at": at.map(|t| t.to_rfc3339())}))
}

/// The lessons learned.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lessons {
    /// What was learned, frankly.
    pub lessons: String,
}

/// Completes the after-action review (the BCP team).
pub async fn put_review(svc: &Services, actor: &Actor, id: i64, req: Lessons) -> Result<(), ServiceError> {
    const ACTION: &str = "bcp-review";
    let d = gate(svc, actor, ACTION, Operation::BcpReviewWrite, "completing the BCP review").await?;
    if req.lessons.trim().chars().count() < 10 {
        return Err(svc
            .refused(
                actor,
                ACTION,
                ServiceError::invalid("lessons", "write the lessons learned (at least 10 characters)"),
            )
            .await);
    }
    if svc.store.read(move |c| emergency::review(c, id)).await?.is_none() {
        // A review opens at return to normal; make its report first if needed.
        let closed = svc
            .store
            .read(move |c| emergency::declaration(c, id))
            .await?
            .is_some_and(|d| matches!(d.state, DeclState::Closed | DeclState::StoodDown));
        if !closed {
            let e = ServiceError::NotFound(format!("no review for declaration {id}: it opens at return to normal"));
            return Err(svc.refused(actor, ACTION, e).await);
        }
        write_review(svc, id).await?;
    }
    let a2 = actor.clone();
    svc.change(actor, ACTION, move |w| {
        // Completed once: the lessons as written stay (a second submission
        // does not overwrite them).
        if let Some((_, _, Some(who), Some(at))) = emergency::review(w.conn, id)? {
            return Err(ServiceError::Conflict(format!(
                "the review was completed by {who} at {}; its lessons are kept as written",
                at.to_rfc3339()
            )));
        }
        emergency::complete_review(w.conn, id, req.lessons.trim(), a2.name(), w.now)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"declaration": id}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}

// ---- cyber-attack report (EM-C4) ---------------------------------------------------------------

fn evidence_path(st: &Services, id: i64) -> std::path::PathBuf {
    st.data_dir.join("evidence").join(format!("declaration-{id}-audit.ndjson"))
}

/// Exports the audit log of the 7 days before the declaration, up to the
/// checkpoint signed at declaration, to the data directory.
async fn preserve_evidence(st: &Services, id: i64) -> Result<(), String> {
    let path = evidence_path(st, id);
    if let Some(dir) = path.parent() {
        crate::keys::create_private_dir(dir).map_err(|e| e.to_string())?;
    }
    let dd = DataDir(st.data_dir.clone());
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

/// A declaration state's name in Japanese and English, for the report.
fn state_words(s: &str) -> (&str, &str) {
    match s {
        "proposed" => ("確認待ち", "awaiting confirmation"),
        "activation" => ("初動", "activation"),
        "resumption" => ("業務再開", "resumption"),
        "recovery" => ("業務回復", "recovery"),
        "full_recovery" => ("全面復旧", "full recovery"),
        "closed" => ("通常運用に復帰", "returned to normal"),
        "stood_down" => ("取り下げ", "stood down"),
        "normal" => ("通常運用", "normal"),
        other => (other, other),
    }
}

/// Whom the report goes to, in Japanese and English.
const RECIPIENTS: [(&str, &str, &str); 3] = [
    ("mhlw", "厚生労働省（所管省庁）", "MHLW"),
    ("police", "警察", "Police"),
    ("patients", "患者への周知", "Patients informed"),
];

/// The draft report of a cyber attack to the authorities (EM-C4), with
/// the evidence preserved at declaration (the BCP team, auditors): the
/// facts as data (`report`), and the same as Markdown (`text`) in the
/// institution's local time.
pub async fn incident_report(svc: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    const ACTION: &str = "incident-report";
    let dec = gate(svc, actor, ACTION, Operation::IncidentReportRead, "the incident report").await?;
    let st = svc;
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
        let e = ServiceError::NotFound(format!(
            "declaration {id} is not a cyber attack; the authority report applies to cyber attacks"
        ));
        return Err(svc.refused(actor, ACTION, e).await);
    }
    let evidence = evidence_path(st, id);
    let evidence_hash = std::fs::read(&evidence)
        .ok()
        .map(|b| mamori_audit::merkle::to_hex(ring::digest::digest(&ring::digest::SHA256, &b).as_ref()));
    let criteria: Vec<Value> = d
        .criteria
        .iter()
        .map(|c| match plan.criterion(c) {
            Some(x) => json!({"id": x.id, "ja": x.description.ja, "en": x.description.en}),
            None => json!({"id": c, "ja": c, "en": c}),
        })
        .collect();
    let mut timeline: Vec<(Timestamp, Value)> = transitions
        .iter()
        .map(|t| {
            (t.at, json!({"at": t.at.to_rfc3339(), "kind": "phase", "from": t.from, "to": t.to, "by": t.by, "note": t.note}))
        })
        .collect();
    for a in alerts.iter().filter(|a| {
        a.time >= Timestamp(d.declared_at.micros() - 86_400_000_000) && d.closed_at.is_none_or(|c| a.time <= c)
    }) {
        timeline.push((
            a.time,
            json!({"at": a.time.to_rfc3339(), "kind": "alert", "alert": a.kind, "severity": a.severity, "message": a.message}),
        ));
    }
    timeline.sort_by_key(|(t, _)| *t);
    let actions: Vec<Value> = ticks
        .iter()
        .map(|t| {
            let item = Phase::parse(&t.phase)
                .and_then(|p| plan.checklists.get(&p))
                .and_then(|items| items.iter().find(|i| i.id == t.item));
            json!({"at": t.at.to_rfc3339(), "phase": t.phase, "item": t.item, "by": t.by, "note": t.note,
                   "ja": item.map(|i| i.text.ja.clone()), "en": item.map(|i| i.text.en.clone())})
        })
        .collect();
    let reporting: Vec<Value> = RECIPIENTS
        .iter()
        .map(|(r, ja, en)| match done.iter().find(|x| x.0 == *r) {
            Some((_, by, at, note)) => {
                json!({"recipient": r, "ja": ja, "en": en, "done": true, "by": by, "at": at.to_rfc3339(), "note": note})
            }
            None => json!({"recipient": r, "ja": ja, "en": en, "done": false}),
        })
        .collect();
    let contact = plan.team.first().map(|c| json!({"function": c.function, "name": c.name, "phone": c.phone}));
    let report = json!({
        "declaration": id,
        "drill": d.drill,
        "institution": {"name": st.cfg.institution.name, "code": st.cfg.institution.id},
        "declared_at": d.declared_at.to_rfc3339(),
        "declared_by": d.declared_by,
        "reason": d.reason,
        "criteria": criteria,
        "timeline": timeline.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        "actions": actions,
        "checkpoint": d.checkpoint,
        "evidence": {"path": evidence.display().to_string(), "sha256": evidence_hash},
        "reporting": reporting,
        "contact": contact,
        "utc_offset_minutes": st.cfg.institution.utc_offset_minutes,
    });
    let text = incident_markdown(&report);
    let mut a = actor.decided(ACTION, 200, &dec, st.now());
    a.detail = Some(json!({"declaration": id}));
    st.audit(vec![a]).await?;
    Ok(json!({
        "declaration": id, "drill": d.drill, "text": text, "report": report, "checkpoint": d.checkpoint,
        "evidence": {"path": evidence.display().to_string(), "sha256": evidence_hash},
        "reported": done.iter().map(|(r, by, at, note)| json!({"recipient": r, "by": by, "at": at.to_rfc3339(), "note": note})).collect::<Vec<_>>(),
    }))
}

/// The incident report as sections of bilingual lines (the Markdown text
/// and the PDF are made from these), times in the institution's zone.
fn incident_sections(r: &Value) -> Vec<(String, Vec<String>)> {
    let off = r["utc_offset_minutes"].as_i64().unwrap_or(540);
    let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let t = |v: &Value| crate::compliance::local(v.as_str().unwrap_or(""), off);
    let code = if s(&r["institution"]["code"]).is_empty() {
        "(未設定 / not set)".to_owned()
    } else {
        s(&r["institution"]["code"])
    };
    let mut timeline = Vec::new();
    for e in r["timeline"].as_array().into_iter().flatten() {
        if e["kind"] == "phase" {
            let (fj, fe) = state_words(e["from"].as_str().unwrap_or(""));
            let (tj, te) = state_words(e["to"].as_str().unwrap_or(""));
            let note = e["note"].as_str().map(|n| format!(": {n}")).unwrap_or_default();
            timeline.push(format!("{} {fj} → {tj} / {fe} → {te} ({}){note}", t(&e["at"]), s(&e["by"])));
        } else {
            timeline.push(format!("{} 警報 / alert: {}", t(&e["at"]), s(&e["message"])));
        }
    }
    let actions: Vec<String> = r["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let (pj, pe) = state_words(a["phase"].as_str().unwrap_or(""));
            let what = match (a["ja"].as_str(), a["en"].as_str()) {
                (Some(j), Some(e)) => format!("{j} / {e}"),
                _ => s(&a["item"]),
            };
            format!("{} [{pj} / {pe}] {what} ({})", t(&a["at"]), s(&a["by"]))
        })
        .collect();
    let reporting: Vec<String> = r["reporting"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let label = format!("{} / {}", s(&x["ja"]), s(&x["en"]));
            if x["done"] == true {
                let note = x["note"].as_str().map(|n| format!(" — {n}")).unwrap_or_default();
                format!("[x] {label}: {} ({}){note}", t(&x["at"]), s(&x["by"]))
            } else {
                format!("[ ] {label}")
            }
        })
        .collect();
    let contact = match r["contact"].as_object() {
        Some(c) => vec![format!(
            "{} {} {}",
            c.get("function").and_then(Value::as_str).unwrap_or(""),
            c.get("name").and_then(Value::as_str).unwrap_or(""),
            c.get("phone").and_then(Value::as_str).unwrap_or("")
        )],
        None => vec![],
    };
    vec![
        (
            "1. 医療機関 / Institution".into(),
            vec![format!("{}（医療機関コード / code: {code}）", s(&r["institution"]["name"]))],
        ),
        (
            "2. 覚知・宣言日時 / Detected and declared".into(),
            vec![format!("{}（宣言者 / declared by: {}）", t(&r["declared_at"]), s(&r["declared_by"]))],
        ),
        (
            "3. 事象の概要 / Summary".into(),
            std::iter::once(s(&r["reason"]))
                .chain(std::iter::once("該当基準 / Criteria met:".to_owned()))
                .chain(
                    r["criteria"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| format!("- {} / {}", s(&c["ja"]), s(&c["en"]))),
                )
                .collect(),
        ),
        (
            "4. 影響を受けたシステム・診療への影響 / Affected systems and impact on care".into(),
            vec!["（記入してください / to be completed）".into()],
        ),
        ("5. 経過 / Timeline".into(), timeline),
        ("6. 実施した対応 / Actions taken".into(), actions),
        (
            "7. 証拠保全 / Evidence preserved".into(),
            vec![
                "宣言時の署名付き監査チェックポイント / Signed audit checkpoint at declaration:".into(),
                s(&r["checkpoint"]),
                format!(
                    "監査ログのエクスポート / Audit log export: {} (SHA-256 {})",
                    s(&r["evidence"]["path"]),
                    r["evidence"]["sha256"].as_str().unwrap_or("(作成中 / being written)")
                ),
                "検証 / verify: mamori audit verify --export <file> --key <log key>".into(),
            ],
        ),
        ("8. 報告・連絡状況 / Reporting".into(), reporting),
        ("9. 連絡先 / Contact".into(), contact),
    ]
}

/// The title of the incident report.
fn incident_title(r: &Value) -> (String, String) {
    let drill = r["drill"] == true;
    (
        format!("{}医療機関におけるサイバー攻撃被害の報告（第一報・下書き）", if drill { "【訓練】" } else { "" }),
        format!(
            "Report of a cyber attack on a medical institution (first report, draft){}",
            if drill { " [DRILL]" } else { "" }
        ),
    )
}

fn incident_markdown(r: &Value) -> String {
    let (ja, en) = incident_title(r);
    let mut text = format!("# {ja}\n# {en}\n\n");
    for (h, lines) in incident_sections(r) {
        text.push_str(&format!("## {h}\n"));
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        text.push('\n');
    }
    text
}

/// The incident report as a PDF (A4, Japanese and English, the Japanese
/// font embedded), to send to the authorities; reading it is audited like
/// [`incident_report`].
pub async fn incident_report_pdf(svc: &Services, actor: &Actor, id: i64) -> Result<Vec<u8>, ServiceError> {
    use crate::compliance::pdf::Line;
    let v = incident_report(svc, actor, id).await?;
    let font = crate::compliance::pdf_font(svc).await?;
    let r = &v["report"];
    let (ja, en) = incident_title(r);
    let mut lines = vec![Line::Title(ja.clone()), Line::Text { text: en, indent: 0.0 }, Line::Gap];
    for (h, body) in incident_sections(r) {
        lines.push(Line::Heading(h));
        for l in body {
            lines.push(Line::Text { text: l, indent: 12.0 });
        }
        lines.push(Line::Gap);
    }
    let footer = format!("{} · #{id}", r["institution"]["name"].as_str().unwrap_or(""));
    tokio::task::spawn_blocking(move || crate::compliance::pdf::render(&lines, &font, &ja, &footer))
        .await
        .map_err(|e| ServiceError::internal_from("the PDF task", e))?
        .map_err(|e| ServiceError::NotAcceptable(format!("no PDF here: {e}")))
}

/// A report made to an authority.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reported {
    /// A note (whom, how).
    #[serde(default)]
    pub note: Option<String>,
}

/// Records that the report was made to `recipient` (mhlw, police,
/// patients) (the BCP team).
pub async fn reported(
    svc: &Services,
    actor: &Actor,
    id: i64,
    recipient: &str,
    req: Reported,
) -> Result<(), ServiceError> {
    const ACTION: &str = "incident-reported";
    let d = gate(svc, actor, ACTION, Operation::IncidentReportRecord, "recording reports").await?;
    if !matches!(recipient, "mhlw" | "police" | "patients") {
        return Err(svc.refused(actor, ACTION, ServiceError::invalid("recipient", "mhlw, police or patients")).await);
    }
    let (a2, recipient) = (actor.clone(), recipient.to_owned());
    svc.change(actor, ACTION, move |w| {
        let decl =
            emergency::declaration(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("declaration {id}")))?;
        if decl.cause != Cause::CyberAttack {
            return Err(ServiceError::invalid("declaration", "only cyber-attack declarations have authority reports"));
        }
        emergency::record_report(w.conn, id, &recipient, a2.name(), w.now, req.note.as_deref())?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"declaration": id, "recipient": recipient, "note": req.note}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}

// ---- alerts and deliveries ----------------------------------------------------------------

/// Alerts (open ones only if `open`), with the plan's criteria that match
/// a possible emergency (the BCP team, auditors).
pub async fn alerts(svc: &Services, actor: &Actor, open: bool) -> Result<Vec<Value>, ServiceError> {
    read_gate(svc, actor, "alert-list", Operation::AlertRead, "alerts").await?;
    let list = svc.store.read(move |c| emergency::alerts(c, open, 200)).await?;
    let plan = svc.store.read(|c| emergency::current_plan(c).map(|x| x.1)).await?;
    Ok(list
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
        .collect())
}

/// Acknowledges an alert (the BCP team, auditors).
pub async fn ack(svc: &Services, actor: &Actor, id: i64) -> Result<(), ServiceError> {
    const ACTION: &str = "alert-ack";
    let d = gate(svc, actor, ACTION, Operation::AlertRead, "alerts").await?;
    let a2 = actor.clone();
    let done = svc
        .change(actor, ACTION, move |w| {
            let ok = emergency::ack_alert(w.conn, id, a2.name(), w.now)?;
            let mut rec = a2.decided(ACTION, if ok { 200 } else { 404 }, &d, w.now);
            rec.detail = Some(json!({"alert": id}));
            w.audit(&rec)?;
            Ok(ok)
        })
        .await?;
    if !done {
        return Err(ServiceError::NotFound(format!("no open alert {id}")));
    }
    Ok(())
}

/// The delivery records of announcements to webhooks (the BCP team).
pub async fn notifications(svc: &Services, actor: &Actor, state: Option<String>) -> Result<Value, ServiceError> {
    read_gate(svc, actor, "notification-list", Operation::NotificationRead, "delivery records").await?;
    let list = svc.store.read(move |c| emergency::deliveries(c, state.as_deref(), 500)).await?;
    Ok(json!(list))
}
