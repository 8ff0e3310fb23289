//! Emergency operations in the database: BCP plans and declarations,
//! checklists, break-glass grants, sealed emergency accounts, alerts and
//! the notification outbox. States are TEXT with CHECK constraints and are
//! parsed here, at the store boundary.

use mamori_core::bcp::{AccountState, Cause, DeclState, Plan, ReviewOutcome};
use mamori_core::mode::{Mode, Phase};
use mamori_core::time::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, Row};

// ---- plans -----------------------------------------------------------------------------

/// The plan in force and its version; the built-in example if none was imported.
pub fn current_plan(c: &mut dyn Conn) -> Result<(i64, Plan)> {
    match c.query_one("SELECT version, toml FROM bcp_plans ORDER BY version DESC LIMIT 1", p![])? {
        Some(r) => {
            let text = r.text(1)?;
            let plan = Plan::from_toml(&text).map_err(|e| {
                StoreError::Internal(format!(
                    "stored BCP plan is invalid: {}",
                    e.iter().map(|x| x.to_string()).collect::<Vec<_>>().join("; ")
                ))
            })?;
            Ok((r.i64(0)?, plan))
        }
        None => Ok((0, Plan::default_plan())),
    }
}

/// The plan in force as its TOML text, with its version (0 and the built-in
/// example if none was imported).
pub fn current_plan_toml(c: &mut dyn Conn) -> Result<(i64, String)> {
    match c.query_one("SELECT version, toml FROM bcp_plans ORDER BY version DESC LIMIT 1", p![])? {
        Some(r) => Ok((r.i64(0)?, r.text(1)?)),
        None => Ok((0, mamori_core::bcp::DEFAULT_PLAN.to_owned())),
    }
}

/// Stores a validated plan as the next version.
pub fn import_plan(c: &mut dyn Conn, toml: &str, by: &str, now: Timestamp) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO bcp_plans (version, toml, imported_by, imported_at) VALUES ((SELECT COALESCE(MAX(version), 0) + 1 FROM bcp_plans), $1, $2, $3) RETURNING version",
            p![toml, by, now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no version".into()))?;
    Ok(r.i64(0)?)
}

// ---- declarations --------------------------------------------------------------------------

/// A declaration of an emergency or a drill (a row of `bcp_declarations`).
#[derive(Debug, Clone, Serialize)]
pub struct Declaration {
    /// Its number.
    pub id: i64,
    /// What caused the emergency.
    pub cause: Cause,
    /// The ids of the plan's criteria it was declared under.
    pub criteria: Vec<String>,
    /// The declarer's account of the situation.
    pub reason: String,
    /// Whether it is a drill.
    pub drill: bool,
    /// Where it stands.
    pub state: DeclState,
    /// The version of the plan in force when it was declared.
    pub plan_version: i64,
    /// Who declared it (user name).
    pub declared_by: String,
    /// The second decider who confirmed it (two-person rule), if any.
    pub confirmed_by: Option<String>,
    /// When it was declared.
    pub declared_at: Timestamp,
    /// When it was closed or stood down.
    pub closed_at: Option<Timestamp>,
    /// The signed audit checkpoint (note text) taken when it was declared.
    pub checkpoint: Option<String>,
}

const DECL_COLS: &str = "id, cause, criteria, reason, drill, state, plan_version, declared_by, confirmed_by, declared_at, closed_at, checkpoint";

fn decl_row(r: &Row) -> Result<Declaration> {
    let cause = r.text(1)?;
    let state = r.text(5)?;
    Ok(Declaration {
        id: r.i64(0)?,
        cause: Cause::parse(&cause)
            .ok_or_else(|| StoreError::Internal(format!("unknown cause '{cause}' in database")))?,
        criteria: serde_json::from_str(&r.text(2)?).map_err(|e| StoreError::Internal(e.to_string()))?,
        reason: r.text(3)?,
        drill: r.bool(4)?,
        state: DeclState::parse(&state)
            .ok_or_else(|| StoreError::Internal(format!("unknown state '{state}' in database")))?,
        plan_version: r.i64(6)?,
        declared_by: r.text(7)?,
        confirmed_by: r.opt_text(8)?,
        declared_at: Timestamp(r.i64(9)?),
        closed_at: r.opt_i64(10)?.map(Timestamp),
        checkpoint: r.opt_text(11)?,
    })
}

/// The open declaration (proposed or active), if any.
pub fn open_declaration(c: &mut dyn Conn) -> Result<Option<Declaration>> {
    c.query_one(&format!("SELECT {DECL_COLS} FROM bcp_declarations WHERE state NOT IN ('closed', 'stood_down') ORDER BY id DESC LIMIT 1"), p![])?
        .map(|r| decl_row(&r))
        .transpose()
}

/// The declaration with this id.
pub fn declaration(c: &mut dyn Conn, id: i64) -> Result<Option<Declaration>> {
    c.query_one(&format!("SELECT {DECL_COLS} FROM bcp_declarations WHERE id = $1"), p![id])?
        .map(|r| decl_row(&r))
        .transpose()
}

/// The newest `limit` declarations, newest first.
pub fn declarations(c: &mut dyn Conn, limit: usize) -> Result<Vec<Declaration>> {
    c.query(&format!("SELECT {DECL_COLS} FROM bcp_declarations ORDER BY id DESC LIMIT $1"), p![limit])?
        .iter()
        .map(decl_row)
        .collect()
}

/// Records a new declaration and returns its id; `Duplicate` if one is
/// already open.
#[allow(clippy::too_many_arguments)]
pub fn insert_declaration(
    c: &mut dyn Conn,
    cause: Cause,
    criteria: &[String],
    reason: &str,
    drill: bool,
    state: DeclState,
    plan_version: i64,
    by: &str,
    now: Timestamp,
) -> Result<i64> {
    let crit = serde_json::to_string(criteria).map_err(|e| StoreError::Internal(e.to_string()))?;
    let r = c
        .query_one(
            "INSERT INTO bcp_declarations (cause, criteria, reason, drill, state, plan_version, declared_by, declared_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            p![cause.as_str(), crit, reason, drill, state.as_str(), plan_version, by, now.micros()],
        )
        .map_err(|e| match e {
            crate::sql::DbError::Unique(_) => StoreError::Duplicate("an open declaration".into()),
            other => other.into(),
        })?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// Records a transition of declaration `id` from state `from` to `to`, and
/// sets its state (and its closing time, for `closed` or `stood_down`).
#[allow(clippy::too_many_arguments)]
pub fn record_transition(
    c: &mut dyn Conn,
    id: i64,
    from: &str,
    to: DeclState,
    by: &str,
    now: Timestamp,
    note: Option<&str>,
    override_reason: Option<&str>,
) -> Result<()> {
    c.exec(
        "INSERT INTO bcp_transitions (declaration, from_state, to_state, by_user, at, note, override_reason) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        p![id, from, to.as_str(), by, now.micros(), note, override_reason],
    )?;
    let closed = if matches!(to, DeclState::Closed | DeclState::StoodDown) { Some(now.micros()) } else { None };
    c.exec(
        "UPDATE bcp_declarations SET state = $2, closed_at = COALESCE($3, closed_at) WHERE id = $1",
        p![id, to.as_str(), closed],
    )?;
    Ok(())
}

/// Records the second decider who confirmed a proposed declaration.
pub fn set_confirmed(c: &mut dyn Conn, id: i64, by: &str) -> Result<()> {
    c.exec("UPDATE bcp_declarations SET confirmed_by = $2 WHERE id = $1", p![id, by])?;
    Ok(())
}

/// Records the signed audit checkpoint taken at declaration.
pub fn set_checkpoint(c: &mut dyn Conn, id: i64, note: &str) -> Result<()> {
    c.exec("UPDATE bcp_declarations SET checkpoint = $2 WHERE id = $1", p![id, note])?;
    Ok(())
}

/// One recorded change of a declaration's state.
#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    /// The state it left (its name).
    pub from: String,
    /// The state it entered (its name).
    pub to: String,
    /// Who made the change.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// The note given with it.
    pub note: Option<String>,
    /// The reason given for returning to normal with the checklist incomplete.
    pub override_reason: Option<String>,
}

/// The transitions of declaration `id`, oldest first.
pub fn transitions(c: &mut dyn Conn, id: i64) -> Result<Vec<Transition>> {
    c.query("SELECT from_state, to_state, by_user, at, note, override_reason FROM bcp_transitions WHERE declaration = $1 ORDER BY id", p![id])?
        .iter()
        .map(|r| Ok(Transition { from: r.text(0)?, to: r.text(1)?, by: r.text(2)?, at: Timestamp(r.i64(3)?), note: r.opt_text(4)?, override_reason: r.opt_text(5)? }))
        .collect()
}

/// One checklist item marked done.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// The phase whose checklist the item belongs to (its name).
    pub phase: String,
    /// The item's id in the plan.
    pub item: String,
    /// Who marked it done.
    pub by: String,
    /// When.
    pub at: Timestamp,
    /// The note given with it.
    pub note: Option<String>,
}

/// Marks a checklist item of a phase done; `false` if it already was.
pub fn tick(
    c: &mut dyn Conn,
    id: i64,
    phase: Phase,
    item: &str,
    by: &str,
    now: Timestamp,
    note: Option<&str>,
) -> Result<bool> {
    let n = c.exec(
        "INSERT INTO bcp_checklist (declaration, phase, item, done_by, done_at, note) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
        p![id, phase.as_str(), item, by, now.micros(), note],
    )?;
    Ok(n > 0)
}

/// The checklist items marked done for declaration `id`, in the order they
/// were done.
pub fn ticks(c: &mut dyn Conn, id: i64) -> Result<Vec<Tick>> {
    c.query(
        "SELECT phase, item, done_by, done_at, note FROM bcp_checklist WHERE declaration = $1 ORDER BY done_at",
        p![id],
    )?
    .iter()
    .map(|r| {
        Ok(Tick { phase: r.text(0)?, item: r.text(1)?, by: r.text(2)?, at: Timestamp(r.i64(3)?), note: r.opt_text(4)? })
    })
    .collect()
}

/// The operating mode implied by the open declaration and the plan.
pub fn mode_of(decl: Option<&Declaration>, plan: &Plan) -> Mode {
    match decl {
        Some(Declaration { state: DeclState::Active(phase), drill, .. }) => {
            let r = plan.rules(*phase);
            Mode::Emergency {
                phase: *phase,
                drill: *drill,
                open_access: r.open_access,
                registration: r.registration_without_reception,
            }
        }
        _ => Mode::Normal,
    }
}

/// The mode in force, read from the database.
pub fn current_mode(c: &mut dyn Conn) -> Result<Mode> {
    let decl = open_declaration(c)?;
    let (_, plan) = current_plan(c)?;
    Ok(mode_of(decl.as_ref(), &plan))
}

/// Stores (or replaces) the generated after-action report of declaration `id`.
pub fn save_review(c: &mut dyn Conn, id: i64, report: &Value) -> Result<()> {
    c.exec(
        "INSERT INTO bcp_reviews (declaration, report) VALUES ($1, $2) ON CONFLICT (declaration) DO UPDATE SET report = excluded.report",
        p![id, report.to_string()],
    )?;
    Ok(())
}

/// A review: the generated report, the lessons, who completed it and when.
pub type Review = (Value, Option<String>, Option<String>, Option<Timestamp>);

/// The after-action review of declaration `id`, if one was generated.
pub fn review(c: &mut dyn Conn, id: i64) -> Result<Option<Review>> {
    c.query_one("SELECT report, lessons, completed_by, completed_at FROM bcp_reviews WHERE declaration = $1", p![id])?
        .map(|r| {
            Ok((
                serde_json::from_str(&r.text(0)?).map_err(|e| StoreError::Internal(e.to_string()))?,
                r.opt_text(1)?,
                r.opt_text(2)?,
                r.opt_i64(3)?.map(Timestamp),
            ))
        })
        .transpose()
}

/// Completes the after-action review with the lessons learned; `NotFound` if
/// no report was generated or it was completed already (callers check
/// [`review`] first to tell which).
pub fn complete_review(c: &mut dyn Conn, id: i64, lessons: &str, by: &str, now: Timestamp) -> Result<()> {
    if c.exec(
        "UPDATE bcp_reviews SET lessons = $2, completed_by = $3, completed_at = $4 \
         WHERE declaration = $1 AND completed_at IS NULL",
        p![id, lessons, by, now.micros()],
    )? == 0
    {
        return Err(StoreError::NotFound(format!("review of declaration {id}")));
    }
    Ok(())
}

/// Records that the report to `recipient` (`mhlw`, `police` or `patients`)
/// was made; `false` if it was already recorded.
pub fn record_report(
    c: &mut dyn Conn,
    id: i64,
    recipient: &str,
    by: &str,
    now: Timestamp,
    note: Option<&str>,
) -> Result<bool> {
    Ok(c.exec(
        "INSERT INTO incident_reports (declaration, recipient, done_by, done_at, note) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        p![id, recipient, by, now.micros(), note],
    )? > 0)
}

/// A report made to an authority: recipient, by whom, when, note.
pub type ReportDone = (String, String, Timestamp, Option<String>);

/// The reports to authorities recorded for declaration `id`, oldest first.
pub fn reports_done(c: &mut dyn Conn, id: i64) -> Result<Vec<ReportDone>> {
    c.query(
        "SELECT recipient, done_by, done_at, note FROM incident_reports WHERE declaration = $1 ORDER BY done_at",
        p![id],
    )?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, Timestamp(r.i64(2)?), r.opt_text(3)?)))
    .collect()
}

// ---- break-glass -----------------------------------------------------------------------

/// A break-glass grant: one user's time-limited access to one patient.
#[derive(Debug, Clone, Serialize)]
pub struct Grant {
    /// Its number.
    pub id: i64,
    /// Who was granted access (user name).
    pub user: String,
    /// The patient (Patient id).
    pub patient: String,
    /// The reason the user gave.
    pub reason: String,
    /// The duration asked for, in minutes.
    pub minutes: i64,
    /// When access started.
    pub started: Timestamp,
    /// When access ends by itself.
    pub expires: Timestamp,
    /// When the grant was ended early or announced as expired, if it was.
    pub ended: Option<Timestamp>,
    /// The review's state: `pending`, `accepted` or `questioned`.
    pub review: String,
    /// Who reviewed the use.
    pub reviewed_by: Option<String>,
    /// When it was reviewed.
    pub reviewed_at: Option<Timestamp>,
    /// The reviewer's note.
    pub review_note: Option<String>,
}

const GRANT_COLS: &str =
    "id, user_name, patient, reason, minutes, started, expires, ended, review, reviewed_by, reviewed_at, review_note";

fn grant_row(r: &Row) -> Result<Grant> {
    Ok(Grant {
        id: r.i64(0)?,
        user: r.text(1)?,
        patient: r.text(2)?,
        reason: r.text(3)?,
        minutes: r.i64(4)?,
        started: Timestamp(r.i64(5)?),
        expires: Timestamp(r.i64(6)?),
        ended: r.opt_i64(7)?.map(Timestamp),
        review: r.text(8)?,
        reviewed_by: r.opt_text(9)?,
        reviewed_at: r.opt_i64(10)?.map(Timestamp),
        review_note: r.opt_text(11)?,
    })
}

impl Grant {
    /// Whether the grant gives access at `now`.
    pub fn live(&self, now: Timestamp) -> bool {
        self.ended.is_none() && self.started <= now && now < self.expires
    }
}

/// Records a grant for `minutes` from `now` and returns it.
pub fn insert_grant(
    c: &mut dyn Conn,
    user: &str,
    patient: &str,
    reason: &str,
    minutes: u32,
    now: Timestamp,
) -> Result<Grant> {
    let expires = now.plus_secs(i64::from(minutes) * 60);
    let r = c
        .query_one(
            &format!("INSERT INTO break_glass (user_name, patient, reason, minutes, started, expires) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {GRANT_COLS}"),
            p![user, patient, reason, i64::from(minutes), now.micros(), expires.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no row".into()))?;
    grant_row(&r)
}

/// Does `user` hold a live break-glass grant for `patient` at `now`?
pub fn has_live_grant(c: &mut dyn Conn, user: &str, patient: &str, now: Timestamp) -> Result<bool> {
    Ok(c
        .query_one(
            "SELECT 1 FROM break_glass WHERE user_name = $1 AND patient = $2 AND started <= $3 AND expires > $3 AND ended IS NULL LIMIT 1",
            p![user, patient, now.micros()],
        )?
        .is_some())
}

/// The grant with this id.
pub fn grant(c: &mut dyn Conn, id: i64) -> Result<Option<Grant>> {
    c.query_one(&format!("SELECT {GRANT_COLS} FROM break_glass WHERE id = $1"), p![id])?
        .map(|r| grant_row(&r))
        .transpose()
}

/// The newest `limit` grants, optionally only those in one review state or of
/// one user, newest first.
pub fn grants(c: &mut dyn Conn, review: Option<&str>, user: Option<&str>, limit: usize) -> Result<Vec<Grant>> {
    c.query(
        &format!("SELECT {GRANT_COLS} FROM break_glass WHERE (CAST($1 AS TEXT) IS NULL OR review = $1) AND (CAST($2 AS TEXT) IS NULL OR user_name = $2) ORDER BY id DESC LIMIT $3"),
        p![review, user, limit],
    )?
    .iter()
    .map(grant_row)
    .collect()
}

/// Grants that expired without being ended: (id, user, patient, expires).
pub fn expired_unannounced(c: &mut dyn Conn, now: Timestamp) -> Result<Vec<Grant>> {
    c.query(&format!("SELECT {GRANT_COLS} FROM break_glass WHERE ended IS NULL AND expires <= $1"), p![now.micros()])?
        .iter()
        .map(grant_row)
        .collect()
}

/// Ends a grant at `at`; `false` if it was already ended.
pub fn end_grant(c: &mut dyn Conn, id: i64, at: Timestamp) -> Result<bool> {
    Ok(c.exec("UPDATE break_glass SET ended = $2 WHERE id = $1 AND ended IS NULL", p![id, at.micros()])? > 0)
}

/// Records the review of a grant; `false` if it was already reviewed (or
/// does not exist).
pub fn review_grant(
    c: &mut dyn Conn,
    id: i64,
    outcome: ReviewOutcome,
    by: &str,
    note: &str,
    now: Timestamp,
) -> Result<bool> {
    let o = match outcome {
        ReviewOutcome::Accepted => "accepted",
        ReviewOutcome::Questioned => "questioned",
    };
    Ok(c.exec(
        "UPDATE break_glass SET review = $2, reviewed_by = $3, reviewed_at = $4, review_note = $5 WHERE id = $1 AND review = 'pending'",
        p![id, o, by, now.micros(), note],
    )? > 0)
}

// ---- emergency accounts -----------------------------------------------------------------

/// A sealed emergency account (EM-B8): its life and who it was.
#[derive(Debug, Clone, Serialize)]
pub struct EmergencyAccount {
    /// The account's user name.
    pub user: String,
    /// Where it is in its life.
    pub state: AccountState,
    /// Whether it is for drills (usable only while a drill is declared).
    pub drill: bool,
    /// When it was provisioned.
    pub created: Timestamp,
    /// Who provisioned it.
    pub created_by: String,
    /// When its envelope was printed and it was sealed.
    pub sealed_at: Option<Timestamp>,
    /// When it was first used.
    pub unsealed_at: Option<Timestamp>,
    /// The real name and affiliation given at its first login.
    pub declared: Option<String>,
    /// When it was retired.
    pub retired_at: Option<Timestamp>,
    /// The account that replaces it, once one was provisioned.
    pub replaced_by: Option<String>,
    /// The roles it holds (role names).
    pub roles: Vec<String>,
}

fn account_row(c: &mut dyn Conn, r: &Row) -> Result<EmergencyAccount> {
    let user = r.text(0)?;
    let state = r.text(1)?;
    let roles = crate::accounts::roles_of(c, &user)?.iter().map(|r| r.as_str().to_owned()).collect();
    Ok(EmergencyAccount {
        state: AccountState::parse(&state)
            .ok_or_else(|| StoreError::Internal(format!("unknown account state '{state}'")))?,
        drill: r.bool(2)?,
        created: Timestamp(r.i64(3)?),
        created_by: r.text(4)?,
        sealed_at: r.opt_i64(5)?.map(Timestamp),
        unsealed_at: r.opt_i64(6)?.map(Timestamp),
        declared: r.opt_text(7)?,
        retired_at: r.opt_i64(8)?.map(Timestamp),
        replaced_by: r.opt_text(9)?,
        user,
        roles,
    })
}

const ACCOUNT_COLS: &str =
    "user_name, state, drill, created, created_by, sealed_at, unsealed_at, declared, retired_at, replaced_by";

/// Every emergency account, oldest first.
pub fn emergency_accounts(c: &mut dyn Conn) -> Result<Vec<EmergencyAccount>> {
    let rows = c.query(&format!("SELECT {ACCOUNT_COLS} FROM emergency_accounts ORDER BY created, user_name"), p![])?;
    rows.iter().map(|r| account_row(c, r)).collect()
}

/// The emergency account with this user name.
pub fn emergency_account(c: &mut dyn Conn, user: &str) -> Result<Option<EmergencyAccount>> {
    let row = c.query_one(&format!("SELECT {ACCOUNT_COLS} FROM emergency_accounts WHERE user_name = $1"), p![user])?;
    row.map(|r| account_row(c, &r)).transpose()
}

/// Records a new emergency account, awaiting its envelope.
pub fn insert_emergency_account(c: &mut dyn Conn, user: &str, drill: bool, by: &str, now: Timestamp) -> Result<()> {
    c.exec(
        "INSERT INTO emergency_accounts (user_name, state, drill, created, created_by) VALUES ($1, 'awaiting_envelope', $2, $3, $4)",
        p![user, drill, now.micros(), by],
    )?;
    Ok(())
}

/// Sets an account's state, recording the time of sealing, first use or
/// retirement, and the declared identity given at first use.
pub fn set_account_state(
    c: &mut dyn Conn,
    user: &str,
    state: AccountState,
    now: Timestamp,
    declared: Option<&str>,
) -> Result<()> {
    let t = now.micros();
    let (sealed, unsealed, retired) = match state {
        AccountState::Sealed => (Some(t), None, None),
        AccountState::InUse => (None, Some(t), None),
        AccountState::Retired => (None, None, Some(t)),
        AccountState::AwaitingEnvelope => (None, None, None),
    };
    c.exec(
        "UPDATE emergency_accounts SET state = $2, sealed_at = COALESCE($3, sealed_at), unsealed_at = COALESCE(unsealed_at, $4), \
         retired_at = COALESCE($5, retired_at), declared = COALESCE(declared, $6) WHERE user_name = $1",
        p![user, state.as_str(), sealed, unsealed, retired, declared],
    )?;
    Ok(())
}

/// Records the account that replaces a retired one.
pub fn set_replaced_by(c: &mut dyn Conn, user: &str, by: &str) -> Result<()> {
    c.exec("UPDATE emergency_accounts SET replaced_by = $2 WHERE user_name = $1", p![user, by])?;
    Ok(())
}

// ---- alerts -----------------------------------------------------------------------------

/// An alert: a possible emergency or a security event for the operators.
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    /// Its number.
    pub id: i64,
    /// When it was raised.
    pub time: Timestamp,
    /// What kind of alert (e.g. `emergency-account-misuse`).
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The message shown to operators.
    pub message: String,
    /// Structured detail, if any.
    pub detail: Option<Value>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// When it was acknowledged.
    pub acked_at: Option<Timestamp>,
}

/// Records a new alert and returns its id.
pub fn insert_alert(
    c: &mut dyn Conn,
    kind: &str,
    severity: &str,
    message: &str,
    detail: &Value,
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO alerts (time, kind, severity, message, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            p![now.micros(), kind, severity, message, detail.to_string()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// The newest `limit` alerts (only unacknowledged ones with `open_only`),
/// newest first.
pub fn alerts(c: &mut dyn Conn, open_only: bool, limit: usize) -> Result<Vec<Alert>> {
    c.query(
        "SELECT id, time, kind, severity, message, detail, acked_by, acked_at FROM alerts WHERE ($1 = 0 OR acked_at IS NULL) ORDER BY id DESC LIMIT $2",
        p![open_only, limit],
    )?
    .iter()
    .map(|r| {
        Ok(Alert {
            id: r.i64(0)?,
            time: Timestamp(r.i64(1)?),
            kind: r.text(2)?,
            severity: r.text(3)?,
            message: r.text(4)?,
            detail: r.opt_text(5)?.and_then(|d| serde_json::from_str(&d).ok()),
            acked_by: r.opt_text(6)?,
            acked_at: r.opt_i64(7)?.map(Timestamp),
        })
    })
    .collect()
}

/// Acknowledges an alert; `false` if it already was (or does not exist).
pub fn ack_alert(c: &mut dyn Conn, id: i64, by: &str, now: Timestamp) -> Result<bool> {
    Ok(c.exec(
        "UPDATE alerts SET acked_by = $2, acked_at = $3 WHERE id = $1 AND acked_at IS NULL",
        p![id, by, now.micros()],
    )? > 0)
}

/// Is there an unacknowledged alert of this kind raised since `since`?
pub fn recent_alert(c: &mut dyn Conn, kind: &str, since: Timestamp) -> Result<bool> {
    Ok(c.query_one(
        "SELECT 1 FROM alerts WHERE kind = $1 AND time >= $2 AND acked_at IS NULL LIMIT 1",
        p![kind, since.micros()],
    )?
    .is_some())
}

// ---- notifications (durable outbox) -----------------------------------------------------

/// Records an announcement and one pending delivery per channel.
pub fn enqueue(
    c: &mut dyn Conn,
    event: &str,
    drill: bool,
    payload: &Value,
    channels: &[String],
    now: Timestamp,
) -> Result<i64> {
    let r = c
        .query_one(
            "INSERT INTO notifications (time, event, drill, payload) VALUES ($1, $2, $3, $4) RETURNING id",
            p![now.micros(), event, drill, payload.to_string()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    let id = r.i64(0)?;
    for ch in channels {
        c.exec(
            "INSERT INTO deliveries (notification, channel, state, next_attempt) VALUES ($1, $2, 'pending', $3)",
            p![id, ch.as_str(), now.micros()],
        )?;
    }
    Ok(id)
}

/// One announcement's delivery on one channel, with the announcement.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    /// The announcement's id.
    pub notification: i64,
    /// The channel: `webhook:<name>` or `email:<address>`.
    pub channel: String,
    /// `pending`, `delivered` or `failed` (for good).
    pub state: String,
    /// Attempts made so far.
    pub attempts: i64,
    /// When the next attempt is due.
    pub next_attempt: Timestamp,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<Timestamp>,
    /// The announcement's event name.
    pub event: String,
    /// Whether the announcement is part of a drill.
    pub drill: bool,
    /// The announcement's content.
    pub payload: Value,
    /// When the announcement was made.
    pub time: Timestamp,
}

const DELIVERY_SQL: &str = "SELECT d.notification, d.channel, d.state, d.attempts, d.next_attempt, d.last_error, d.delivered_at, n.event, n.drill, n.payload, n.time \
    FROM deliveries d JOIN notifications n ON n.id = d.notification";

fn delivery_row(r: &Row) -> Result<Delivery> {
    Ok(Delivery {
        notification: r.i64(0)?,
        channel: r.text(1)?,
        state: r.text(2)?,
        attempts: r.i64(3)?,
        next_attempt: Timestamp(r.i64(4)?),
        last_error: r.opt_text(5)?,
        delivered_at: r.opt_i64(6)?.map(Timestamp),
        event: r.text(7)?,
        drill: r.bool(8)?,
        payload: serde_json::from_str(&r.text(9)?).unwrap_or(Value::Null),
        time: Timestamp(r.i64(10)?),
    })
}

/// Pending deliveries due at `now`, earliest first, at most `limit`.
pub fn due_deliveries(c: &mut dyn Conn, now: Timestamp, limit: usize) -> Result<Vec<Delivery>> {
    c.query(
        &format!("{DELIVERY_SQL} WHERE d.state = 'pending' AND d.next_attempt <= $1 ORDER BY d.next_attempt LIMIT $2"),
        p![now.micros(), limit],
    )?
    .iter()
    .map(delivery_row)
    .collect()
}

/// The newest `limit` deliveries, optionally only those in one state.
pub fn deliveries(c: &mut dyn Conn, state: Option<&str>, limit: usize) -> Result<Vec<Delivery>> {
    c.query(
        &format!(
            "{DELIVERY_SQL} WHERE (CAST($1 AS TEXT) IS NULL OR d.state = $1) ORDER BY d.notification DESC LIMIT $2"
        ),
        p![state, limit],
    )?
    .iter()
    .map(delivery_row)
    .collect()
}

/// Records a successful delivery.
pub fn mark_delivered(c: &mut dyn Conn, notification: i64, channel: &str, now: Timestamp) -> Result<()> {
    c.exec(
        "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, delivered_at = $3, last_error = NULL WHERE notification = $1 AND channel = $2",
        p![notification, channel, now.micros()],
    )?;
    Ok(())
}

/// Records a failed attempt: retried at `next`, or failed for good.
pub fn mark_attempt_failed(
    c: &mut dyn Conn,
    notification: i64,
    channel: &str,
    error: &str,
    next: Option<Timestamp>,
) -> Result<()> {
    match next {
        Some(n) => c.exec(
            "UPDATE deliveries SET attempts = attempts + 1, next_attempt = $3, last_error = $4 WHERE notification = $1 AND channel = $2",
            p![notification, channel, n.micros(), error],
        )?,
        None => c.exec(
            "UPDATE deliveries SET attempts = attempts + 1, state = 'failed', last_error = $3 WHERE notification = $1 AND channel = $2",
            p![notification, channel, error],
        )?,
    };
    Ok(())
}
