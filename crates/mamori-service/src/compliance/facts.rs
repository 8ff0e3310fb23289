//! What the compliance report measures, read from the store in one
//! snapshot: plain data, no judgement (that is [`super::assess`]).

use mamori_audit::event::AuditRecord;
use mamori_core::bcp::{Cause, Plan};
use mamori_core::time::Timestamp;
use mamori_exchange::partner::Partner;
use mamori_store::audit_log::{self, EventQuery};
use mamori_store::continuity::{self as cs, SnapshotFile, SnapshotKey};
use mamori_store::emergency::{self, Alert, Declaration, EmergencyAccount, Grant};
use mamori_store::exchange::{self as xs, MessageQuery, MessageRow};
use mamori_store::maintenance::{self as ms, Person, Request};
use mamori_store::sql::Conn;
use mamori_store::{accounts, compliance as store};
use serde_json::Value;

/// The most rows of one kind a report reads (declarations, grants, messages).
const MAX_ROWS: usize = 100_000;

/// A declaration with its stored after-action review and its reports to
/// authorities.
#[derive(Debug, Clone)]
pub(crate) struct DeclarationFacts {
    pub(crate) decl: Declaration,
    /// The stored after-action report, its lessons.
    pub(crate) review: Option<(Value, Option<String>)>,
    /// Recipients reported to (mhlw, police, patients).
    pub(crate) reported: Vec<String>,
}

/// Everything the report reads, as of `now`, for the period `[from, to)`.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub(crate) now: Timestamp,
    pub(crate) from: Timestamp,
    pub(crate) to: Timestamp,
    pub(crate) plan_version: i64,
    pub(crate) plan: Plan,
    /// Who imported the plan in force, when.
    pub(crate) plan_imported: Option<(String, Timestamp)>,
    /// Newest first.
    pub(crate) declarations: Vec<DeclarationFacts>,
    pub(crate) accounts: Vec<EmergencyAccount>,
    pub(crate) grants: Vec<Grant>,
    pub(crate) open_alerts: Vec<Alert>,
    pub(crate) audit_size: u64,
    /// The newest checkpoint: size, time, witnesses' cosignature count.
    pub(crate) checkpoint: Option<(u64, Timestamp, usize)>,
    pub(crate) syslog_cursor: Option<i64>,
    pub(crate) snapshots: Vec<SnapshotFile>,
    pub(crate) snapshot_keys: Vec<SnapshotKey>,
    /// The newest `snapshot-verify` event: when, ok.
    pub(crate) snapshot_verified: Option<(Timestamp, bool)>,
    /// Registered partners (or the error reading one).
    pub(crate) partners: Vec<Result<Partner, String>>,
    /// Ledger rows created in the period.
    pub(crate) messages: Vec<MessageRow>,
    pub(crate) requests: Vec<Request>,
    pub(crate) people: Vec<Person>,
    pub(crate) open_reconcile_tasks: i64,
    pub(crate) open_provisional_patients: usize,
    /// Users by kind and state: (staff, disabled, locked now, with TOTP).
    pub(crate) users: (usize, usize, usize, usize),
    /// Counts of audit events in the period, by what they record.
    pub(crate) counts: Counts,
}

/// Audit events in the period.
#[derive(Debug, Clone, Default)]
pub(crate) struct Counts {
    pub(crate) events: u64,
    pub(crate) denied: u64,
    pub(crate) emergency_logins: u64,
    pub(crate) emergency_logins_refused: u64,
    pub(crate) announcements: u64,
    pub(crate) transcriptions: u64,
    pub(crate) provisional_registrations: u64,
    pub(crate) reconcile_imports: u64,
    /// Exchange sends refused with 422 (no consent or legal basis, among others).
    pub(crate) sends_refused: u64,
    /// Of which the refusal named the missing basis.
    pub(crate) sends_refused_no_basis: u64,
    pub(crate) maintenance_logins: u64,
}

fn count(
    c: &mut dyn Conn,
    from: Timestamp,
    to: Timestamp,
    actions: &[&str],
    status: Option<(u16, u16)>,
) -> mamori_store::Result<u64> {
    audit_log::count_events(
        c,
        &EventQuery {
            actions: Some(actions.iter().map(|a| (*a).to_owned()).collect()),
            status,
            from: Some(from.micros()),
            to: Some(to.micros()),
            limit: 1,
            ..EventQuery::default()
        },
    )
}

/// Reads the facts, in one read transaction (one snapshot of the store).
pub(crate) fn read(c: &mut dyn Conn, now: Timestamp, from: Timestamp, to: Timestamp) -> mamori_store::Result<Facts> {
    c.batch("BEGIN")?;
    let r = read_in(c, now, from, to);
    // A read-only transaction: ending it cannot lose anything.
    if let Err(e) = c.batch("COMMIT") {
        tracing::debug!(error = %e, "ending the compliance read");
    }
    r
}

fn read_in(c: &mut dyn Conn, now: Timestamp, from: Timestamp, to: Timestamp) -> mamori_store::Result<Facts> {
    let (plan_version, plan) = emergency::current_plan(c)?;
    let plan_imported = store::plan_imported(c)?.map(|(_, by, at)| (by, at));
    let mut declarations = Vec::new();
    for decl in emergency::declarations(c, MAX_ROWS)? {
        let review = emergency::review(c, decl.id)?.map(|(report, lessons, _, _)| (report, lessons));
        let reported = if decl.cause == Cause::CyberAttack {
            emergency::reports_done(c, decl.id)?.into_iter().map(|r| r.0).collect()
        } else {
            Vec::new()
        };
        declarations.push(DeclarationFacts { decl, review, reported });
    }
    let accounts = emergency::emergency_accounts(c)?;
    let grants = emergency::grants(c, None, None, MAX_ROWS)?;
    let open_alerts = emergency::alerts(c, true, 1000)?;
    let audit_size = audit_log::size(c)?;
    let checkpoint =
        audit_log::list_checkpoints(c, None, 1)?.into_iter().next().map(|(size, at, _, w)| (size, at, w.len()));
    let syslog_cursor = audit_log::get_cursor(c, crate::syslog::CURSOR)?;
    let snapshots = cs::snapshots(c, 100)?;
    let snapshot_keys = cs::keys(c)?;
    let snapshot_verified = audit_log::search_events(
        c,
        &EventQuery {
            actions: Some(vec!["snapshot-verify".into()]),
            status: Some((200, 299)),
            limit: 1,
            ..EventQuery::default()
        },
    )?
    .into_iter()
    .next()
    .and_then(|(_, leaf)| AuditRecord::from_leaf(&leaf).ok())
    .map(|r| {
        let ok = r.detail.as_ref().and_then(|d| d.get("ok")).and_then(Value::as_bool).unwrap_or(false);
        (Timestamp::parse_rfc3339(&r.time).unwrap_or_default(), ok)
    });
    let partners =
        xs::partners(c)?.iter().map(|row| crate::exchange::partner_of(row).map_err(|e| e.to_string())).collect();
    let messages =
        xs::messages(c, &MessageQuery { from: Some(from), to: Some(to), limit: MAX_ROWS, ..MessageQuery::default() })?;
    let requests = ms::requests(c, None, None, MAX_ROWS)?;
    let people = ms::people(c)?;
    let open_reconcile_tasks = cs::open_tasks(c)?;
    let open_provisional_patients =
        cs::patients_with_identifier_system(c, mamori_core::continuity::PROVISIONAL_SYSTEM)?.len();
    let users = accounts::list_users(c)?;
    let staff: Vec<_> = users.iter().filter(|u| u.kind == mamori_core::policy::SubjectKind::Staff).collect();
    let users = (
        staff.len(),
        staff.iter().filter(|u| u.disabled).count(),
        staff.iter().filter(|u| u.locked_until.is_some_and(|t| t > now)).count(),
        staff.iter().filter(|u| u.has_totp).count(),
    );
    let refused_sends = audit_log::search_events(
        c,
        &EventQuery {
            actions: Some(vec!["exchange-send".into()]),
            status: Some((422, 422)),
            from: Some(from.micros()),
            to: Some(to.micros()),
            limit: MAX_ROWS,
            ..EventQuery::default()
        },
    )?;
    let no_basis = refused_sends
        .iter()
        .filter_map(|(_, leaf)| AuditRecord::from_leaf(leaf).ok())
        .filter(|r| r.detail.as_ref().is_some_and(|d| d.to_string().contains("no legal basis")))
        .count() as u64;
    let counts = Counts {
        events: audit_log::count_events(
            c,
            &EventQuery { from: Some(from.micros()), to: Some(to.micros()), limit: 1, ..EventQuery::default() },
        )?,
        denied: audit_log::count_events(
            c,
            &EventQuery {
                denied: true,
                from: Some(from.micros()),
                to: Some(to.micros()),
                limit: 1,
                ..EventQuery::default()
            },
        )?,
        emergency_logins: count(c, from, to, &["emergency-login"], Some((200, 299)))?,
        emergency_logins_refused: count(
            c,
            from,
            to,
            &["emergency-login-refused", "emergency-login"],
            Some((400, 499)),
        )?,
        announcements: count(c, from, to, &["announcement"], None)?,
        transcriptions: count(c, from, to, &["transcribe"], Some((200, 299)))?,
        provisional_registrations: count(c, from, to, &["provisional-register"], Some((200, 299)))?,
        reconcile_imports: count(c, from, to, &["reconcile-import"], Some((200, 299)))?,
        sends_refused: refused_sends.len() as u64,
        sends_refused_no_basis: no_basis,
        maintenance_logins: count(c, from, to, &["maintenance-login"], Some((200, 299)))?,
    };
    Ok(Facts {
        now,
        from,
        to,
        plan_version,
        plan,
        plan_imported,
        declarations,
        accounts,
        grants,
        open_alerts,
        audit_size,
        checkpoint,
        syslog_cursor,
        snapshots,
        snapshot_keys,
        snapshot_verified,
        partners,
        messages,
        requests,
        people,
        open_reconcile_tasks,
        open_provisional_patients,
        users,
        counts,
    })
}
