//! The service layer's one decision point: [`decide`] is the only caller
//! of [`mamori_core::policy::authorize`] (a structure test holds that),
//! and the helpers here gather the facts it needs from the store.
//!
//! Every use case decides before it acts, and puts the decision (permit
//! or deny, with its basis) in its audit event.

use mamori_core::bcp::Plan;
use mamori_core::ids::ResourceType;
use mamori_core::maintenance::Scope;
use mamori_core::policy::{self, Action, Decision, Facts, Operation, PatientScope, Target};
use mamori_core::time::Timestamp;
use mamori_store::sql::Conn;
use mamori_store::{accounts, emergency, StoreError};

use crate::actor::Actor;
use crate::error::ServiceError;

/// Decides `op` for `actor` with `facts` (the window's scopes of a
/// maintenance person are added here).
pub fn decide(actor: &Actor, op: &Operation, facts: Facts) -> Decision {
    let mut facts = facts;
    facts.scope_granted = match op {
        Operation::MaintenanceScoped { scope } => actor.scopes.contains(scope),
        Operation::Record { .. } => actor.scopes.contains(&Scope::PatientData),
        _ => false,
    };
    policy::authorize(&actor.subject(), op, &actor.mode(), &facts)
}

/// Decides `op` and turns a denial into an error naming `what`.
pub fn require(actor: &Actor, op: &Operation, facts: Facts, what: &str) -> Result<Decision, ServiceError> {
    let d = decide(actor, op, facts);
    if d.permit {
        Ok(d)
    } else {
        Err(ServiceError::denied(what, &d))
    }
}

/// The facts about the actor and one patient: a care relationship (own or
/// the department's), a live break-glass grant.
pub fn patient_facts(c: &mut dyn Conn, actor: &Actor, patient: &str, now: Timestamp) -> Result<Facts, StoreError> {
    let (care_relationship, break_glass) =
        accounts::care_and_grant(c, actor.name(), actor.user.department.as_deref(), patient, now)?;
    Ok(Facts { care_relationship, break_glass, app_patient: actor.app_patient() == Some(patient), ..Facts::default() })
}

/// The plan in force, and whether it is the built-in one.
pub fn plan(c: &mut dyn Conn) -> Result<(Plan, bool), StoreError> {
    let (version, plan) = emergency::current_plan(c)?;
    Ok((plan, version == 0))
}

/// The facts the BCP plan gives about the actor: decider, records keeper.
pub fn plan_facts(c: &mut dyn Conn, actor: &Actor) -> Result<Facts, StoreError> {
    let (plan, builtin) = plan(c)?;
    Ok(Facts {
        plan_decider: plan.is_decider(actor.name(), &actor.user.roles),
        records_manager: plan.is_records_manager(actor.name(), &actor.user.roles),
        plan_is_builtin: builtin,
        ..Facts::default()
    })
}

/// Decides an operation that concerns `patients`, once per patient with
/// that patient's facts (on top of `base`), the decisions combined; with
/// no patient, once with `base`.
pub fn decide_patients(
    c: &mut dyn Conn,
    actor: &Actor,
    op: &Operation,
    patients: &[String],
    base: Facts,
    now: Timestamp,
) -> Result<Decision, StoreError> {
    if patients.is_empty() {
        return Ok(decide(actor, op, base));
    }
    // When the patient facts cannot change the decision (demographics,
    // a role that is refused anyway), do not look them up: the rules give
    // the same answer with none and with all of them.
    let without = decide(actor, op, Facts { care_relationship: false, break_glass: false, app_patient: false, ..base });
    let with = decide(actor, op, Facts { care_relationship: true, break_glass: true, app_patient: true, ..base });
    if without == with {
        return Ok(without);
    }
    let mut decisions = Vec::with_capacity(patients.len());
    for p in patients {
        let pf = patient_facts(c, actor, p, now)?;
        decisions.push(decide(
            actor,
            op,
            Facts {
                care_relationship: pf.care_relationship,
                break_glass: pf.break_glass,
                app_patient: pf.app_patient,
                ..base
            },
        ));
    }
    policy::combine(decisions).ok_or_else(|| StoreError::Internal("no decision".into()))
}

/// Decides a FHIR interaction on a resource of `rtype` that is the data of
/// `patients` (none: reference data).
pub fn decide_record(
    c: &mut dyn Conn,
    actor: &Actor,
    action: Action,
    rtype: ResourceType,
    patients: &[String],
    now: Timestamp,
) -> Result<Decision, StoreError> {
    let scope =
        if patients.is_empty() && rtype != ResourceType::PATIENT { PatientScope::None } else { PatientScope::One };
    let op = Operation::Record { action, target: Target { rtype, scope } };
    decide_patients(c, actor, &op, patients, Facts::default(), now)
}

/// Decides a read of a patient's whole record (an export, a merge, a send,
/// `$everything`): as a read of a clinical record of each patient.
pub fn decide_clinical_read(
    c: &mut dyn Conn,
    actor: &Actor,
    patients: &[String],
    now: Timestamp,
) -> Result<Decision, StoreError> {
    decide_record(c, actor, Action::Read, ResourceType::OBSERVATION, patients, now)
}
