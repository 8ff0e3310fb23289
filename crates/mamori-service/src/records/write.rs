//! Writes: create (incl. conditional), update (with `If-Match`), delete.
//! Each runs inside one group-commit job: facts, decision, change and
//! audit event commit together.

use std::collections::HashSet;

use mamori_core::fhir::search::parse_query_in;
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Action, Decision, Facts, Operation, PatientScope, PurposeOfUse, Target};
use mamori_core::time::Timestamp;
use mamori_store::records::{self, Written};
use mamori_store::writer::WriteCtx;
use mamori_store::{accounts, search};
use serde_json::{json, Value};

use super::{error_record, parse_pairs, restriction};
use crate::actor::Actor;
use crate::audited::Audited;
use crate::authz;
use crate::conformance::Conformance;
use crate::error::ServiceError;
use crate::services::Services;
use mamori_core::fhir::profile::Severity;

/// What a write should do.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create, unless the `If-None-Exist` query matches one resource.
    Create {
        /// The conditional-create query.
        if_none_exist: Option<String>,
    },
    /// Update (or create with this id).
    Update {
        /// The resource's id.
        id: String,
        /// The `If-Match` version.
        if_match: Option<u64>,
    },
    /// Delete.
    Delete {
        /// The resource's id.
        id: String,
    },
    /// Update of the one resource a search matches (`PUT /fhir/{type}?…`);
    /// a create when none does.
    ConditionalUpdate {
        /// The search, as a query string.
        query: String,
        /// The `If-Match` version.
        if_match: Option<u64>,
    },
    /// Delete of the one resource a search matches (`DELETE /fhir/{type}?…`);
    /// nothing when none does.
    ConditionalDelete {
        /// The search, as a query string.
        query: String,
    },
    /// A patch of the one resource a search matches (`PATCH /fhir/{type}?…`);
    /// none or several: an error.
    ConditionalPatch {
        /// The search, as a query string.
        query: String,
        /// The `If-Match` version.
        if_match: Option<u64>,
        /// The patch document.
        patch: Value,
    },
    /// A JSON Patch (RFC 6902) of the current version.
    Patch {
        /// The resource's id.
        id: String,
        /// The `If-Match` version.
        if_match: Option<u64>,
        /// The patch document.
        patch: Value,
    },
}

/// The result of one write inside a job.
#[derive(Debug, Clone)]
pub enum Step {
    /// Written.
    Done {
        /// What was stored.
        written: Written,
        /// The decision it was made under.
        decision: Decision,
        /// What validation against profiles found (`[fhir] validation =
        /// "warn"`): answered and audited.
        findings: Vec<mamori_core::fhir::profile::Finding>,
    },
    /// A conditional create found exactly one match: nothing written.
    Matched {
        /// Its type.
        rtype: ResourceType,
        /// Its id.
        id: String,
        /// Its version.
        version: u64,
        /// The decision to reveal it.
        decision: Decision,
    },
    /// Delete of something that never existed, or is already deleted.
    NothingToDelete {
        /// Whether it ever existed.
        existed: bool,
    },
}

/// The interaction name for the audit log.
pub fn action_name(op: &WriteOp, step: Option<&Step>) -> &'static str {
    match (op, step) {
        (WriteOp::Delete { .. } | WriteOp::ConditionalDelete { .. }, _) => "delete",
        (WriteOp::Create { .. }, _) => "create",
        (WriteOp::Update { .. } | WriteOp::ConditionalUpdate { .. }, Some(Step::Done { written, .. }))
            if written.created =>
        {
            "create"
        }
        (WriteOp::Update { .. } | WriteOp::ConditionalUpdate { .. }, _) => "update",
        (WriteOp::Patch { .. } | WriteOp::ConditionalPatch { .. }, _) => "patch",
    }
}

/// Whether a patient's registration makes the registering person part of
/// the patient's care: a clinician (the decision's purpose is treatment)
/// creating a patient id that never existed and has no records.
fn registers_for_care(d: &Decision) -> bool {
    matches!(d.purpose, Some(PurposeOfUse::Treat | PurposeOfUse::EmergencyTreat))
}

/// Performs one write in a job. `pending` names resources this job will
/// create (bundle entries), for the reference check; with `check_refs`
/// false the caller checks references itself after all entries. A denial
/// is an error (the job's savepoint is rolled back).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_step(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    rtype: ResourceType,
    op: &WriteOp,
    body: Option<Value>,
    assigned_id: Option<String>,
    pending: &HashSet<(String, String)>,
    check_refs: bool,
    conf: &Conformance,
) -> Result<Step, ServiceError> {
    let now = ctx.now;
    let author = actor.name().to_owned();
    let mut body = body;
    if let (Some(node), Some(b)) = (&actor.node, body.as_mut()) {
        crate::continuity::standalone::stamp(b, node);
    }
    // A conditional write finds its resource first (a search decided and
    // restricted like any), then is decided like the plain write.
    let plain;
    let op = match op {
        WriteOp::ConditionalUpdate { .. } | WriteOp::ConditionalDelete { .. } | WriteOp::ConditionalPatch { .. } => {
            match resolve_conditional(ctx, actor, rtype, op, &mut body)? {
                Resolved::Op(o) => {
                    plain = o;
                    &plain
                }
                Resolved::Step(s) => return Ok(s),
            }
        }
        other => other,
    };
    // (After the resolution, so that a conditional write is held to these
    // rules as the plain one is.)
    if let WriteOp::Delete { id } | WriteOp::Update { id, .. } | WriteOp::Patch { id, .. } = op {
        if conf.registry.get(rtype.as_str(), id).is_some() {
            return Err(ServiceError::MethodNotAllowed(format!(
                "{rtype}/{id} is defined by a loaded FHIR package and is read-only; install a new package version instead"
            )));
        }
        if crate::exchange::is_mirror(rtype.as_str(), id) {
            return Err(ServiceError::forbidden(format!(
                "{rtype}/{id} mirrors the partner registry and is read-only; change it through /api/v1/partners"
            )));
        }
    }
    let resolved;
    let op = match op {
        WriteOp::Patch { id, if_match, patch } => {
            let cur = match records::read(ctx.conn, rtype.as_str(), id)? {
                None => return Err(ServiceError::NotFound(format!("{rtype}/{id} does not exist"))),
                Some(v) if v.deleted => return Err(ServiceError::Gone(format!("{rtype}/{id} was deleted"))),
                Some(v) => v,
            };
            // Decided before the patch is applied: a failing `test`
            // operation must tell nothing to someone who may not write.
            let d = authz::decide_record(ctx.conn, actor, Action::Update, rtype, &cur.patients, now)?;
            if !d.permit {
                return Err(ServiceError::denied(&format!("writing {rtype}/{id}"), &d));
            }
            let version = if_match.unwrap_or(cur.version);
            if version != cur.version {
                return Err(ServiceError::Precondition(format!(
                    "If-Match: version {version} is not the current version {} of {rtype}/{id}",
                    cur.version
                )));
            }
            let doc: Value = serde_json::from_str(&cur.body).map_err(|e| ServiceError::internal(e.to_string()))?;
            let applied = if patch.is_array() {
                mamori_core::fhir::patch::apply(&doc, patch)
            } else {
                mamori_core::fhir::fhirpath_patch::apply(&doc, patch)
            };
            let new = applied.map_err(|e| match e {
                mamori_core::fhir::patch::PatchError::Malformed(_) => ServiceError::invalid("", e.to_string()),
                _ => ServiceError::Unprocessable(vec![mamori_core::fhir::validate::Issue {
                    path: rtype.as_str().to_owned(),
                    message: e.to_string(),
                }]),
            })?;
            if new.get("resourceType") != doc.get("resourceType") || new.get("id") != doc.get("id") {
                return Err(ServiceError::invalid("", "a patch may not change the resource's type or id"));
            }
            super::validate_body(rtype, &new)?;
            body = Some(new);
            resolved = WriteOp::Update { id: id.clone(), if_match: Some(version) };
            &resolved
        }
        other => other,
    };
    match op {
        WriteOp::ConditionalUpdate { .. }
        | WriteOp::ConditionalDelete { .. }
        | WriteOp::ConditionalPatch { .. }
        | WriteOp::Patch { .. } => Err(ServiceError::internal("a conditional write was not resolved")),
        WriteOp::Delete { id } => {
            let Some(cur) = records::current(ctx.conn, rtype.as_str(), id)? else {
                return Ok(Step::NothingToDelete { existed: false });
            };
            let d = authz::decide_record(ctx.conn, actor, Action::Delete, rtype, &cur.patients, now)?;
            if !d.permit {
                return Err(ServiceError::denied(&format!("deleting {rtype}/{id}"), &d));
            }
            match records::delete(ctx, rtype, id, &author, now)? {
                Some(written) => Ok(Step::Done { written, decision: d, findings: Vec::new() }),
                None => Ok(Step::NothingToDelete { existed: true }),
            }
        }
        WriteOp::Create { if_none_exist } => {
            let body = body.ok_or_else(|| ServiceError::invalid("", "a resource body is required"))?;
            if let Some(cond) = if_none_exist {
                if let Some(m) = conditional_match(ctx, actor, rtype, cond)? {
                    return Ok(m);
                }
            }
            // The institution's patient number, if it numbers patients and
            // the registration brings none in its system.
            let mut body = body;
            if let (Some(pn), true) = (&conf.patient_numbers, rtype == ResourceType::PATIENT) {
                let has = body["identifier"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|i| i["system"] == pn.system.as_str() && i["value"].is_string()));
                if !has {
                    let value = mamori_store::continuity::next_patient_number(ctx.conn, &pn.system, pn.digits)?;
                    let id = json!({"use": "usual", "system": pn.system, "value": value});
                    match body.get_mut("identifier").and_then(Value::as_array_mut) {
                        Some(ids) => ids.push(id),
                        None => body["identifier"] = json!([id]),
                    }
                }
            }
            // An id made here and now (UUIDv7, 74 random bits) names nothing
            // stored or referenced yet: nothing to look up. (Were it taken,
            // the insert would fail on the primary key, never overwrite.)
            // An id assigned earlier (a bundle's entry) may be referenced
            // already, and is looked up.
            let (id, fresh) = match assigned_id {
                Some(i) => (i, false),
                None => (accounts::new_id()?, true),
            };
            create_or_update(ctx, actor, rtype, &id, body, None, fresh, pending, check_refs, &author, conf)
        }
        WriteOp::Update { id, if_match } => {
            let body = body.ok_or_else(|| ServiceError::invalid("", "a resource body is required"))?;
            create_or_update(ctx, actor, rtype, id, body, *if_match, false, pending, check_refs, &author, conf)
        }
    }
}

/// A conditional update or delete resolved: the plain write it stands
/// for, or (a delete that matched nothing) its result.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// The plain update or delete of the one match (or the create of a
    /// conditional update that matched nothing).
    Op(WriteOp),
    /// Nothing to do.
    Step(Step),
}

/// Resolves a conditional update, delete or patch: its search (decided
/// and restricted like any), then the plain write it stands for; several
/// matches: 412 (a patch of none: 404). A conditional update's body gets
/// the resolved id.
pub(crate) fn resolve_conditional(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    rtype: ResourceType,
    op: &WriteOp,
    body: &mut Option<Value>,
) -> Result<Resolved, ServiceError> {
    match op {
        WriteOp::ConditionalUpdate { query, if_match } => {
            let found = conditional_search(ctx, actor, rtype, query, "the conditional update")?;
            let body_id = body.as_ref().and_then(|b| b.get("id")).and_then(Value::as_str).map(str::to_owned);
            let id = match (found.as_slice(), body_id) {
                ([_, _, ..], _) => {
                    return Err(ServiceError::Precondition(
                        "the conditional update matched more than one resource".into(),
                    ))
                }
                ([m], Some(b)) if m.id != b => {
                    return Err(ServiceError::invalid(
                        &format!("{rtype}.id"),
                        format!("the body's id '{b}' is not the id of the resource the condition matched"),
                    ))
                }
                ([m], _) => m.id.clone(),
                ([], Some(b)) => {
                    if records::current(ctx.conn, rtype.as_str(), &b)?.is_some_and(|c| !c.deleted) {
                        return Err(ServiceError::Conflict(format!(
                            "{rtype}/{b} exists but does not match the condition; nothing was written"
                        )));
                    }
                    b
                }
                ([], None) => accounts::new_id()?,
            };
            if let Some(b) = body.as_mut().and_then(Value::as_object_mut) {
                b.insert("id".into(), Value::String(id.clone()));
            }
            Ok(Resolved::Op(WriteOp::Update { id, if_match: *if_match }))
        }
        WriteOp::ConditionalPatch { query, if_match, patch } => {
            let found = conditional_search(ctx, actor, rtype, query, "the conditional patch")?;
            match found.as_slice() {
                [] => Err(ServiceError::NotFound("the conditional patch matched no resource".into())),
                [one] => {
                    Ok(Resolved::Op(WriteOp::Patch { id: one.id.clone(), if_match: *if_match, patch: patch.clone() }))
                }
                _ => Err(ServiceError::Precondition("the conditional patch matched more than one resource".into())),
            }
        }
        WriteOp::ConditionalDelete { query } => {
            let found = conditional_search(ctx, actor, rtype, query, "the conditional delete")?;
            match found.as_slice() {
                [] => Ok(Resolved::Step(Step::NothingToDelete { existed: true })),
                [one] => Ok(Resolved::Op(WriteOp::Delete { id: one.id.clone() })),
                _ => Err(ServiceError::Precondition("the conditional delete matched more than one resource".into())),
            }
        }
        other => Ok(Resolved::Op(other.clone())),
    }
}

/// Conditional create: the one resource matching `cond` among those the
/// actor may find (the search is decided and restricted like any search,
/// and the match is decided as a read), if any; an error if several match.
pub(crate) fn conditional_match(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    rtype: ResourceType,
    cond: &str,
) -> Result<Option<Step>, ServiceError> {
    let entries = conditional_search(ctx, actor, rtype, cond, "If-None-Exist")?;
    match entries.as_slice() {
        [] => Ok(None),
        [one] => {
            let read = authz::decide_record(ctx.conn, actor, Action::Read, rtype, &one.patients, ctx.now)?;
            if !read.permit {
                return Err(ServiceError::denied(&format!("the resource If-None-Exist matched ({rtype})"), &read));
            }
            Ok(Some(Step::Matched { rtype, id: one.id.clone(), version: one.version, decision: read }))
        }
        _ => Err(ServiceError::Precondition("If-None-Exist matched more than one resource".into())),
    }
}

/// The search of a conditional write: up to two matches among the
/// resources the actor may find (decided and restricted like any search).
fn conditional_search(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    rtype: ResourceType,
    cond: &str,
    what: &str,
) -> Result<Vec<records::Version>, ServiceError> {
    let pairs = parse_pairs(cond).map_err(|_| ServiceError::invalid(what, "malformed query"))?;
    let (mut q, _) = parse_query_in(&ctx.search_params(), rtype, &pairs, false)
        .map_err(|e| ServiceError::invalid(what, e.to_string()))?;
    if q.clauses.is_empty() {
        return Err(ServiceError::invalid(what, "needs at least one search parameter"));
    }
    q.count = 2;
    let op = Operation::Record { action: Action::Search, target: Target { rtype, scope: PatientScope::Any } };
    let d = authz::decide(actor, &op, Facts::default());
    if !d.permit {
        return Err(ServiceError::denied(&format!("the search of {what} ({rtype})"), &d));
    }
    let has = super::has_scope(actor, &q, ctx.now)
        .map_err(|d| ServiceError::denied(&format!("the _has search in {what}"), &d))?;
    Ok(search::search_scoped(ctx.conn, &q, &restriction(&d, actor, ctx.now), &has)?.entries)
}

#[allow(clippy::too_many_arguments)]
fn create_or_update(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    rtype: ResourceType,
    id: &str,
    body: Value,
    if_match: Option<u64>,
    fresh: bool,
    pending: &HashSet<(String, String)>,
    check_refs: bool,
    author: &str,
    conf: &Conformance,
) -> Result<Step, ServiceError> {
    let now = ctx.now;
    super::require_patient(rtype, id, &body)?;
    let prev = if fresh { None } else { records::current(ctx.conn, rtype.as_str(), id)? };
    let action = if prev.as_ref().is_some_and(|p| !p.deleted) { Action::Update } else { Action::Create };
    // Every patient of the new version, and of the previous one (its data
    // is changed too), must be writable.
    let named = records::compartment_of(ctx.conn, rtype, id, &body)?;
    let mut patients = named.clone();
    for p in prev.iter().flat_map(|p| p.patients.iter()) {
        if !patients.contains(p) {
            patients.push(p.clone());
        }
    }
    let d = authz::decide_record(ctx.conn, actor, action, rtype, &patients, now)?;
    if !d.permit {
        return Err(ServiceError::denied(&format!("writing {rtype}/{id}"), &d));
    }
    if check_refs {
        let issues = records::check_references(ctx.conn, &body, pending)?;
        if !issues.is_empty() {
            return Err(ServiceError::Unprocessable(issues));
        }
    }
    // Profiles last: a refusal above tells nothing about the content.
    let findings = conf.check_write(rtype, &body)?;
    let known = records::Known { prev, patients: named };
    let written = records::put_known(ctx, rtype, id, body, if_match, author, now, known)?;
    // A clinician who registers a genuinely new patient (never existed, no
    // records under that id) is caring for that patient; a re-created or
    // tombstoned id is not a new patient.
    if rtype == ResourceType::PATIENT
        && written.first
        && registers_for_care(&d)
        && (fresh || !records::has_records(ctx.conn, id)?)
    {
        accounts::assign_care_unchecked(ctx.conn, id, author, "registered the patient", now)?;
    }
    Ok(Step::Done { written, decision: d, findings })
}

/// Audit record of a finished step.
pub(crate) fn step_record(
    actor: &Actor,
    op: &WriteOp,
    rtype: ResourceType,
    step: &Step,
    status: u16,
    now: Timestamp,
) -> mamori_audit::event::AuditRecord {
    let action = action_name(op, Some(step));
    match step {
        Step::Done { written, decision, findings } => {
            let patients = written.patients.iter().chain(written.previous_patients.iter()).cloned().collect();
            let mut r = actor.fhir_record(
                action,
                status,
                Some(rtype.as_str()),
                Some(&written.id),
                Some(written.version),
                patients,
                Some(decision),
                now,
            );
            if !findings.is_empty() {
                let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
                r.detail = Some(json!({"profile_errors": errors, "profile_warnings": findings.len() - errors}));
            }
            r
        }
        Step::Matched { id, version, decision, .. } => {
            let mut r = actor.fhir_record(
                action,
                status,
                Some(rtype.as_str()),
                Some(id),
                Some(*version),
                vec![],
                Some(decision),
                now,
            );
            r.detail = Some(json!({"conditional": "matched existing"}));
            r
        }
        Step::NothingToDelete { .. } => {
            actor.fhir_record(action, status, Some(rtype.as_str()), None, None, vec![], None, now)
        }
    }
}

/// The status a finished step answers with.
pub fn step_status(step: &Step) -> u16 {
    match step {
        Step::Done { written, .. } if written.created => 201,
        Step::Done { written, .. } if written.deleted => 204,
        Step::Done { .. } | Step::Matched { .. } => 200,
        Step::NothingToDelete { existed: false } => 404,
        Step::NothingToDelete { existed: true } => 204,
    }
}

/// Runs a single write (create, update or delete) as one job. The answer
/// may carry the stored resource, so it is [`Audited`].
pub async fn write(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    op: WriteOp,
    body: Option<Value>,
) -> Result<Audited<Step>, ServiceError> {
    let (a2, op2, a3, op3) = (actor.clone(), op.clone(), actor.clone(), op.clone());
    let conf = svc.conformance();
    let r = svc
        .store
        .writer()
        .run(
            move |ctx| {
                let step = write_step(ctx, &a2, rtype, &op2, body, None, &HashSet::new(), true, &conf)?;
                let rec = step_record(&a2, &op2, rtype, &step, step_status(&step), ctx.now);
                let event = ctx.audit(&rec)?;
                Ok((step, event))
            },
            move |e: &ServiceError, ctx| {
                let id = match &op3 {
                    WriteOp::Update { id, .. } | WriteOp::Delete { id } | WriteOp::Patch { id, .. } => {
                        Some(id.as_str())
                    }
                    WriteOp::Create { .. }
                    | WriteOp::ConditionalUpdate { .. }
                    | WriteOp::ConditionalDelete { .. }
                    | WriteOp::ConditionalPatch { .. } => None,
                };
                ctx.audit(&error_record(&a3, action_name(&op3, None), Some(rtype.as_str()), id, e, ctx.now)).map(|_| ())
            },
        )
        .await?;
    let (step, event) = r;
    if let Step::NothingToDelete { existed: false } = step {
        return Err(ServiceError::NotFound("nothing to delete: the resource does not exist".into()));
    }
    Ok(Audited::committed(step, event))
}
