//! Break-glass access in normal mode (EM-B8, EM-C3b): a clinician without
//! a care relationship asks for time-limited access to one patient, with a
//! reason. The grant is audited with purpose of use BTG (start and end
//! events), announced at once to the privacy officer (auditors) and the
//! patient's care team, stops working at expiry, and waits for a review
//! by an auditor who is not the requester.

use std::time::Duration;

use mamori_core::bcp::{check_break_glass, ReviewOutcome};
use mamori_core::ids::PatientId;
use mamori_core::policy::{told, Facts, Notice, Operation};
use mamori_core::time::Timestamp;
use mamori_store::emergency::{self, Grant};
use mamori_store::{accounts, records};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::actor::{set_patients, Actor, RequestCtx};
use crate::authz;
use crate::commit::{Effect, Outcome};
use crate::error::ServiceError;
use crate::notify::{self, Audience};
use crate::services::Services;

/// A grant as shown.
#[derive(Debug, Clone, Serialize)]
pub struct GrantView {
    /// Its id.
    pub id: i64,
    /// Who asked.
    pub user: String,
    /// For which patient.
    pub patient: String,
    /// Why.
    pub reason: String,
    /// For how long.
    pub minutes: i64,
    /// Started.
    pub started: String,
    /// Expires.
    pub expires: String,
    /// Ended early or by expiry.
    pub ended: Option<String>,
    /// Still working.
    pub live: bool,
    /// Seconds left.
    pub seconds_left: i64,
    /// The review's state.
    pub review: String,
    /// Reviewed by.
    pub reviewed_by: Option<String>,
    /// Reviewed at.
    pub reviewed_at: Option<String>,
    /// The reviewer's note.
    pub review_note: Option<String>,
}

impl GrantView {
    fn of(g: &Grant, now: Timestamp) -> Self {
        GrantView {
            id: g.id,
            user: g.user.clone(),
            patient: g.patient.clone(),
            reason: g.reason.clone(),
            minutes: g.minutes,
            started: g.started.to_rfc3339(),
            expires: g.expires.to_rfc3339(),
            ended: g.ended.map(|t| t.to_rfc3339()),
            live: g.live(now),
            seconds_left: if g.live(now) { (g.expires.micros() - now.micros()) / 1_000_000 } else { 0 },
            review: g.review.clone(),
            reviewed_by: g.reviewed_by.clone(),
            reviewed_at: g.reviewed_at.map(|t| t.to_rfc3339()),
            review_note: g.review_note.clone(),
        }
    }
}

/// A request for break-glass access.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// The patient (`Patient/<id>` or the id).
    pub patient: String,
    /// Why (the plan says how long a reason must be).
    pub reason: String,
    /// For how long (the plan's default and maximum apply).
    #[serde(default)]
    pub minutes: Option<u32>,
}

/// Breaks the glass: a clinician's own named account, a reason the plan
/// accepts, a patient that exists; announced at once.
pub async fn request(svc: &Services, actor: &Actor, req: BreakGlassRequest) -> Result<GrantView, ServiceError> {
    const ACTION: &str = "break-glass-start";
    let patient = match PatientId::parse(req.patient.strip_prefix("Patient/").unwrap_or(&req.patient)) {
        Ok(p) => p,
        Err(e) => return Err(svc.refused(actor, ACTION, ServiceError::invalid("patient", e.to_string())).await),
    };
    let d = match authz::require(actor, &Operation::BreakGlassRequest, Facts::default(), "break-glass") {
        Ok(d) => d,
        Err(e) => {
            let mut rec = crate::commit::failure_record(actor, ACTION, &e, svc.now());
            rec.patients = vec![patient.as_str().to_owned()];
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let (a2, s2, p2) = (actor.clone(), svc.clone(), patient.clone());
    let out = svc
        .change(actor, ACTION, move |w| {
            let (_, plan) = emergency::current_plan(w.conn)?;
            let minutes =
                check_break_glass(&req.reason, req.minutes, &plan.break_glass).map_err(|m| ServiceError::invalid("", m))?;
            match records::current(w.conn, "Patient", p2.as_str())? {
                Some(c) if !c.deleted => {}
                _ => return Err(ServiceError::NotFound(format!("Patient/{p2}"))),
            }
            if emergency::has_live_grant(w.conn, a2.name(), p2.as_str(), w.now)? {
                return Err(ServiceError::Conflict(format!("a live break-glass grant for Patient/{p2} already exists")));
            }
            let g = emergency::insert_grant(w.conn, a2.name(), p2.as_str(), req.reason.trim(), minutes, w.now)?;
            let mut rec = a2.decided(ACTION, 201, &d, w.now);
            rec.patients = vec![p2.as_str().to_owned()];
            rec.purpose = Some("BTG".into());
            rec.basis = Some("break-glass".into());
            rec.detail = Some(json!({"grant": g.id, "reason": g.reason, "minutes": minutes, "expires": g.expires.to_rfc3339()}));
            w.audit(&rec)?;
            // The privacy officer (auditors) and the patient's care team.
            let team: Vec<String> = accounts::list_care(w.conn, Some(p2.as_str()), None)?
                .into_iter()
                .filter(|a| a.ended.is_none())
                .filter_map(|a| a.user)
                .collect();
            let who = a2.name().to_owned();
            let a = notify::announce(
                w,
                &s2,
                "break-glass-start",
                false,
                "warning",
                &format!("緊急アクセス（ブレークグラス）：{who} が患者 {p2} の記録を閲覧します（{minutes}分）/ Break-glass: {who} is accessing the record of patient {p2} for {minutes} minutes"),
                json!({"grant": g.id, "user": who, "patient": p2.as_str(), "reason": g.reason, "expires": g.expires.to_rfc3339()}),
                Audience::Users { users: team.into_iter().chain([who.clone()]).collect(), roles: told(Notice::BreakGlass) },
            )?;
            Ok(Outcome::with(g, vec![Effect::Announce(vec![a])]))
        })
        .await?;
    let g = svc.finish(out).await;
    Ok(GrantView::of(&g, svc.now()))
}

/// Grants: one's own, or (auditors) everyone's, by review state; audited
/// with the patients they name.
pub async fn list(svc: &Services, actor: &Actor, review: Option<String>) -> Result<Vec<GrantView>, ServiceError> {
    const ACTION: &str = "break-glass-list";
    if let Some(r) = &review {
        if !matches!(r.as_str(), "pending" | "accepted" | "questioned") {
            return Err(svc
                .refused(actor, ACTION, ServiceError::invalid("review", "pending, accepted or questioned"))
                .await);
        }
    }
    let all = authz::decide(actor, &Operation::BreakGlassReadAll, Facts::default());
    let d = if all.permit { all } else { authz::decide(actor, &Operation::OwnSession, Facts::default()) };
    if !d.permit {
        return Err(svc.refused(actor, ACTION, ServiceError::denied("break-glass grants", &d)).await);
    }
    let user = if d.basis == mamori_core::policy::Basis::Own { Some(actor.name().to_owned()) } else { None };
    let now = svc.now();
    let v = svc.store.read(move |c| emergency::grants(c, review.as_deref(), user.as_deref(), 500)).await?;
    let mut rec = actor.decided(ACTION, 200, &d, now);
    set_patients(&mut rec, v.iter().map(|g| g.patient.clone()).collect());
    svc.audit(vec![rec]).await?;
    Ok(v.iter().map(|g| GrantView::of(g, now)).collect())
}

/// One grant: one's own, or (auditors) anyone's.
pub async fn show(svc: &Services, actor: &Actor, id: i64) -> Result<GrantView, ServiceError> {
    const ACTION: &str = "break-glass-read";
    let g = match svc.store.read(move |c| emergency::grant(c, id)).await? {
        Some(g) => g,
        None => {
            return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("break-glass grant {id}"))).await)
        }
    };
    let facts = Facts { own: g.user == actor.name(), ..Facts::default() };
    let d = match authz::require(actor, &Operation::BreakGlassRead, facts, "the grant") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    rec.patients = vec![g.patient.clone()];
    svc.audit(vec![rec]).await?;
    Ok(GrantView::of(&g, svc.now()))
}

/// A review of a break-glass use.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// Accepted or questioned.
    pub outcome: ReviewOutcome,
    /// What was checked.
    pub note: String,
}

/// Reviews a grant: an auditor who did not use it.
pub async fn review(svc: &Services, actor: &Actor, id: i64, req: Review) -> Result<(), ServiceError> {
    const ACTION: &str = "break-glass-review";
    let a2 = actor.clone();
    svc.change(actor, ACTION, move |w| {
        let g =
            emergency::grant(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("break-glass grant {id}")))?;
        let facts = Facts { own: g.user == a2.name(), ..Facts::default() };
        let d = authz::require(&a2, &Operation::BreakGlassReview, facts, "reviewing this break-glass use")?;
        if req.note.trim().chars().count() < 5 {
            return Err(ServiceError::invalid("note", "write what you checked (at least 5 characters)"));
        }
        if !emergency::review_grant(w.conn, id, req.outcome, a2.name(), req.note.trim(), w.now)? {
            return Err(ServiceError::Precondition(format!("grant {id} was already reviewed ({})", g.review)));
        }
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.patients = vec![g.patient.clone()];
        rec.detail = Some(json!({"grant": id, "outcome": req.outcome, "note": req.note.trim(), "requester": g.user}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}

/// The requester ends a grant early.
pub async fn end(svc: &Services, actor: &Actor, id: i64) -> Result<(), ServiceError> {
    const ACTION: &str = "break-glass-end";
    let (a2, s2) = (actor.clone(), svc.clone());
    let out = svc
        .change(actor, ACTION, move |w| {
            let g = emergency::grant(w.conn, id)?
                .ok_or_else(|| ServiceError::NotFound(format!("break-glass grant {id}")))?;
            let facts = Facts { own: g.user == a2.name(), ..Facts::default() };
            authz::require(&a2, &Operation::BreakGlassEnd, facts, "ending this grant")?;
            if !g.live(w.now) {
                return Err(ServiceError::Precondition("the grant is no longer live".into()));
            }
            emergency::end_grant(w.conn, id, w.now)?;
            let a = end_event(w, &s2, Some(&a2), &g, "ended by the requester")?;
            Ok(Outcome::with((), vec![Effect::Announce(vec![a])]))
        })
        .await?;
    svc.finish(out).await;
    Ok(())
}

fn end_event(
    w: &mut mamori_store::WriteCtx<'_>,
    st: &Services,
    by: Option<&Actor>,
    g: &Grant,
    how: &str,
) -> mamori_store::Result<notify::Announcement> {
    let mut rec = match by {
        Some(a) => a.record("break-glass-end", 200, w.now),
        None => RequestCtx::background(st.mode.get()).record(&g.user, "staff", "break-glass-end", 200, w.now),
    };
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
        Audience::Users { users: vec![g.user.clone()], roles: told(Notice::BreakGlass) },
    )
}

/// Records the end of grants that reached their expiry (the grant already
/// stopped working then: the policy's facts check the expiry every time).
pub async fn expire(st: Services, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        let now = st.now();
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
                        end_event(w, &st2, None, &g, "expired").map(Some)
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
