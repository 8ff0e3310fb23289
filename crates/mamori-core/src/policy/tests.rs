//! The policy as a table (cases a reader checks by eye) and as a matrix
//! (every role and kind of account, every operation, every mode, every
//! combination of facts) with the properties that must hold everywhere.

use super::*;
use crate::maintenance::Scope;
use crate::mode::{Mode, Phase};

fn subj(roles: &[Role]) -> Subject {
    Subject {
        user: UserId::parse("u").unwrap(),
        roles: roles.to_vec(),
        kind: SubjectKind::Staff,
        must_change_password: false,
        app: None,
    }
}
fn kind(k: SubjectKind, roles: &[Role]) -> Subject {
    Subject { kind: k, ..subj(roles) }
}
fn t(rt: &str, scope: PatientScope) -> Target {
    Target { rtype: ResourceType::parse(rt).unwrap(), scope }
}
fn rec(action: Action, rt: &str, scope: PatientScope) -> Operation {
    Operation::Record { action, target: t(rt, scope) }
}

const NONE: Facts = Facts {
    care_relationship: false,
    break_glass: false,
    own: false,
    target_is_self: false,
    plan_decider: false,
    records_manager: false,
    plan_is_builtin: false,
    registration_open: false,
    scope_granted: false,
    app_patient: false,
};
const REL: Facts = Facts { care_relationship: true, ..NONE };
const BTG: Facts = Facts { break_glass: true, ..NONE };
const OWN: Facts = Facts { own: true, ..NONE };
const SELF: Facts = Facts { target_is_self: true, ..NONE };
const DEC: Facts = Facts { plan_decider: true, ..NONE };
const DEC_OWN: Facts = Facts { plan_decider: true, own: true, ..NONE };
const RM: Facts = Facts { records_manager: true, ..NONE };
const REG: Facts = Facts { registration_open: true, ..NONE };
const BUILTIN: Facts = Facts { plan_is_builtin: true, ..NONE };
const SCOPE: Facts = Facts { scope_granted: true, ..NONE };

const EMERG: Mode = Mode::Emergency { phase: Phase::Activation, drill: false, open_access: true, registration: true };
const DRILL: Mode = Mode::Emergency { phase: Phase::Activation, drill: true, open_access: true, registration: true };
const EMERG_CLOSED: Mode =
    Mode::Emergency { phase: Phase::Recovery, drill: false, open_access: false, registration: false };
const N: Mode = Mode::Normal;

use Action::*;
use PatientScope::{Any, One};
use Role::*;

fn roles(r: &[Role]) -> RoleSet {
    RoleSet::of(r)
}

/// (subject, operation, mode, facts, permit, basis)
fn table() -> Vec<(Subject, Operation, Mode, Facts, bool, Basis)> {
    use Operation as O;
    use SubjectKind as K;
    let p = || subj(&[Physician]);
    vec![
        // ---- records: physicians need a relationship for clinical data
        (p(), rec(Read, "Observation", One), N, REL, true, Basis::CareRelationship),
        (p(), rec(Read, "Observation", One), N, NONE, false, Basis::NoCareRelationship),
        (p(), rec(Create, "MedicationRequest", One), N, REL, true, Basis::CareRelationship),
        (p(), rec(Update, "Condition", One), N, NONE, false, Basis::NoCareRelationship),
        (p(), rec(Delete, "Observation", One), N, REL, true, Basis::CareRelationship),
        (p(), rec(Search, "Observation", Any), N, NONE, true, Basis::RestrictedToCareRelationships),
        (p(), rec(Read, "Observation", One), N, BTG, true, Basis::BreakGlass),
        (p(), rec(Read, "Observation", One), EMERG, NONE, true, Basis::EmergencyAccess),
        (p(), rec(Search, "Observation", Any), EMERG, NONE, true, Basis::EmergencyAccess),
        (p(), rec(Read, "Observation", One), DRILL, NONE, false, Basis::NoCareRelationship),
        (p(), rec(Read, "Observation", One), EMERG_CLOSED, NONE, false, Basis::NoCareRelationship),
        (p(), rec(Read, "Patient", One), N, NONE, true, Basis::RoleDemographics),
        (p(), rec(Create, "Patient", One), N, NONE, true, Basis::RoleDemographics),
        (p(), rec(Delete, "Patient", One), N, REL, false, Basis::RoleNotPermitted),
        (p(), rec(Read, "AuditEvent", Any), N, NONE, false, Basis::RoleNotPermitted),
        (p(), rec(Read, "Practitioner", PatientScope::None), N, NONE, true, Basis::RoleReferenceData),
        (p(), rec(Search, "Practitioner", Any), N, NONE, true, Basis::RestrictedToCareRelationships),
        // an Appointment naming the patient is that patient's data
        (p(), rec(Read, "Appointment", One), N, NONE, false, Basis::NoCareRelationship),
        (subj(&[Clerk]), rec(Read, "Appointment", One), N, REL, false, Basis::RoleNotPermitted),
        // nurses: no orders, no deletes; they create what nursing records
        (subj(&[Nurse]), rec(Read, "Observation", One), N, REL, true, Basis::CareRelationship),
        (subj(&[Nurse]), rec(Create, "Observation", One), N, REL, true, Basis::CareRelationship),
        (subj(&[Nurse]), rec(Create, "MedicationAdministration", One), N, REL, true, Basis::CareRelationship),
        (subj(&[Nurse]), rec(Create, "MedicationRequest", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Nurse]), rec(Delete, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Nurse]), rec(Read, "Observation", One), N, NONE, false, Basis::NoCareRelationship),
        // pharmacists: read clinical, write pharmacy
        (subj(&[Pharmacist]), rec(Read, "MedicationRequest", One), N, REL, true, Basis::CareRelationship),
        (subj(&[Pharmacist]), rec(Create, "MedicationDispense", One), N, REL, true, Basis::CareRelationship),
        (subj(&[Pharmacist]), rec(Create, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Pharmacist]), rec(Create, "Patient", One), N, NONE, false, Basis::RoleNotPermitted),
        // clerks: demographics and reference data only
        (subj(&[Clerk]), rec(Create, "Patient", One), N, NONE, true, Basis::RoleDemographics),
        (subj(&[Clerk]), rec(Search, "Patient", Any), N, NONE, true, Basis::RoleDemographics),
        (subj(&[Clerk]), rec(Read, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), rec(Read, "Observation", One), EMERG, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), rec(Search, "Observation", Any), N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), rec(Search, "CareTeam", Any), N, NONE, true, Basis::RoleReferenceData),
        // admin: no clinical data, not even demographics
        (subj(&[Admin]), rec(Read, "Patient", One), N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Admin]), rec(Read, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Admin]), rec(Create, "Practitioner", PatientScope::None), N, NONE, true, Basis::RoleReferenceData),
        (subj(&[Admin]), rec(Read, "AuditEvent", Any), N, NONE, false, Basis::RoleNotPermitted),
        // auditors: the audit log
        (subj(&[Auditor]), rec(Search, "AuditEvent", Any), N, NONE, true, Basis::RoleAuditor),
        (subj(&[Auditor]), rec(Create, "AuditEvent", Any), N, NONE, false, Basis::NotStorable),
        (subj(&[Auditor]), rec(Read, "Patient", One), N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[BcpDecider]), rec(Read, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (subj(&[]), rec(Read, "Practitioner", PatientScope::None), N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk, Nurse]), rec(Read, "Observation", One), N, REL, true, Basis::CareRelationship),
        // ---- emergency accounts: sealed in normal times
        (
            kind(K::EmergencyAccount, &[Physician]),
            rec(Read, "Patient", One),
            N,
            REL,
            false,
            Basis::EmergencyAccountSealed,
        ),
        (kind(K::EmergencyAccount, &[Physician]), O::OwnSession, N, NONE, false, Basis::EmergencyAccountSealed),
        (
            kind(K::EmergencyAccount, &[Physician]),
            rec(Read, "Observation", One),
            EMERG,
            NONE,
            true,
            Basis::EmergencyAccess,
        ),
        (
            kind(K::EmergencyAccount, &[Physician]),
            O::OwnPasswordChange,
            EMERG,
            NONE,
            false,
            Basis::EmergencyAccountManaged,
        ),
        (kind(K::EmergencyAccount, &[Physician]), O::BreakGlassRequest, EMERG, NONE, false, Basis::RoleNotPermitted),
        // ---- maintenance people: the window's scopes, patient data read-only
        (kind(K::Maintenance, &[]), rec(Read, "Observation", One), N, SCOPE, true, Basis::MaintenanceAccess),
        (kind(K::Maintenance, &[]), rec(Read, "Observation", One), N, NONE, false, Basis::NotInScope),
        (kind(K::Maintenance, &[]), rec(Update, "Observation", One), N, SCOPE, false, Basis::NotInScope),
        (kind(K::Maintenance, &[]), rec(Read, "AuditEvent", Any), N, SCOPE, false, Basis::NotInScope),
        (
            kind(K::Maintenance, &[]),
            O::MaintenanceScoped { scope: Scope::Database },
            N,
            SCOPE,
            true,
            Basis::MaintenanceScope,
        ),
        (kind(K::Maintenance, &[]), O::MaintenanceScoped { scope: Scope::Restart }, N, NONE, false, Basis::NotInScope),
        (kind(K::Maintenance, &[]), O::UserRead, N, SCOPE, false, Basis::RoleNotPermitted),
        // ---- separation of duties
        (subj(&[Admin]), O::TokenIssue { holder: K::Staff }, N, NONE, false, Basis::SeparationOfDuties),
        (subj(&[Admin]), O::TokenIssue { holder: K::Service }, N, NONE, true, Basis::RoleAdmin),
        (subj(&[Admin]), O::TokenIssue { holder: K::Staff }, N, SELF, true, Basis::Own),
        (
            kind(K::EmergencyAccount, &[Physician]),
            O::TokenIssue { holder: K::EmergencyAccount },
            EMERG,
            SELF,
            false,
            Basis::RoleNotPermitted,
        ),
        (
            subj(&[Admin]),
            O::UserRolesChange { from: roles(&[Admin]), to: roles(&[Admin, Physician]), target: K::Staff },
            N,
            SELF,
            false,
            Basis::SeparationOfDuties,
        ),
        (
            subj(&[Admin]),
            O::UserRolesChange { from: roles(&[Nurse]), to: roles(&[Admin, Nurse]), target: K::Staff },
            N,
            NONE,
            false,
            Basis::SeparationOfDuties,
        ),
        (
            subj(&[Admin]),
            O::UserRolesChange { from: roles(&[Admin]), to: roles(&[Auditor]), target: K::Staff },
            N,
            SELF,
            false,
            Basis::SelfLockout,
        ),
        (
            subj(&[Admin]),
            O::UserRolesChange { from: roles(&[Clerk]), to: roles(&[Physician]), target: K::Staff },
            N,
            NONE,
            true,
            Basis::RoleAdmin,
        ),
        (
            subj(&[Admin]),
            O::UserRolesChange { from: roles(&[Physician]), to: roles(&[Admin]), target: K::EmergencyAccount },
            EMERG,
            NONE,
            false,
            Basis::EmergencyAccountManaged,
        ),
        (subj(&[Admin]), O::UserCreate { roles: roles(&[Physician]), kind: K::Staff }, N, NONE, true, Basis::RoleAdmin),
        (
            subj(&[Admin]),
            O::UserCreate { roles: roles(&[Physician, Admin]), kind: K::Staff },
            N,
            NONE,
            false,
            Basis::SeparationOfDuties,
        ),
        (
            subj(&[Physician]),
            O::UserCreate { roles: roles(&[Clerk]), kind: K::Staff },
            N,
            NONE,
            false,
            Basis::RoleNotPermitted,
        ),
        (
            subj(&[Admin]),
            O::UserPasswordReset { target: K::EmergencyAccount, target_clinical: true },
            N,
            NONE,
            false,
            Basis::EmergencyAccountManaged,
        ),
        (
            subj(&[Admin]),
            O::UserStatusChange { enable: false, disable: true, target: K::Staff },
            N,
            SELF,
            false,
            Basis::SelfLockout,
        ),
        (
            subj(&[Admin]),
            O::UserStatusChange { enable: true, disable: false, target: K::EmergencyAccount },
            N,
            NONE,
            false,
            Basis::EmergencyAccountManaged,
        ),
        (subj(&[Admin]), O::AccountRequestDecide, N, OWN, false, Basis::SamePerson),
        (subj(&[Admin]), O::AccountRequestDecide, N, SELF, false, Basis::SeparationOfDuties),
        (subj(&[Admin]), O::AccountRequestDecide, N, NONE, true, Basis::RoleAdmin),
        (
            kind(K::System, &[Admin]),
            O::UserCreate { roles: roles(&[Physician]), kind: K::Staff },
            N,
            NONE,
            true,
            Basis::System,
        ),
        (kind(K::System, &[Admin]), rec(Read, "Observation", One), N, REL, false, Basis::RoleNotPermitted),
        (kind(K::Service, &[Nurse]), O::OwnPasswordChange, N, NONE, false, Basis::RoleNotPermitted),
        // ---- a one-time password is changed before anything else
        (
            Subject { must_change_password: true, ..subj(&[Physician]) },
            rec(Read, "Observation", One),
            N,
            REL,
            false,
            Basis::PasswordChangeRequired,
        ),
        (Subject { must_change_password: true, ..subj(&[Admin]) }, O::OwnPasswordChange, N, NONE, true, Basis::Own),
        // ---- care assignments
        (subj(&[Physician]), O::CareAssign, N, REL, true, Basis::CareRelationship),
        (subj(&[Physician]), O::CareAssign, N, NONE, false, Basis::NoCareRelationship),
        (subj(&[Nurse]), O::CareAssign, N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), O::CareAssign, N, NONE, true, Basis::RolePermitted),
        // ---- BCP: the plan decides who declares
        (subj(&[BcpDecider]), O::BcpDeclare, N, NONE, false, Basis::NotPlanDecider),
        (subj(&[Nurse]), O::BcpDeclare, N, DEC, true, Basis::PlanDecider),
        (subj(&[Nurse]), O::BcpConfirm, N, DEC_OWN, false, Basis::SamePerson),
        (subj(&[Admin]), O::BcpPlanChange { deciders_changed: true }, N, NONE, false, Basis::NotPlanDecider),
        (subj(&[Admin]), O::BcpPlanChange { deciders_changed: true }, N, BUILTIN, true, Basis::BcpTeam),
        (subj(&[Admin]), O::BcpPlanChange { deciders_changed: false }, N, NONE, true, Basis::BcpTeam),
        (subj(&[Nurse]), O::BcpReviewRead, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Auditor]), O::BcpReviewRead, N, NONE, true, Basis::RoleAuditor),
        // ---- break-glass
        (subj(&[Nurse]), O::BreakGlassRequest, N, NONE, true, Basis::RolePermitted),
        (subj(&[Clerk]), O::BreakGlassRequest, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Physician]), O::BreakGlassRead, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Physician]), O::BreakGlassRead, N, OWN, true, Basis::Own),
        (subj(&[Auditor]), O::BreakGlassReview, N, OWN, false, Basis::SamePerson),
        (subj(&[Physician]), O::BreakGlassEnd, N, NONE, false, Basis::NotOwn),
        // ---- exchange: clinicians send; each resource is also a record read
        (subj(&[Clerk]), O::ExchangeSend, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Pharmacist]), O::ExchangeSend, N, NONE, true, Basis::RolePermitted),
        (subj(&[Admin]), O::InboundRead, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), O::InboundFile, N, RM, true, Basis::RecordsManagement),
        (subj(&[Admin]), O::InboundFile, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Physician]), O::InboundFile, N, NONE, false, Basis::NoCareRelationship),
        (subj(&[Physician]), O::InboundFile, N, REL, true, Basis::CareRelationship),
        // ---- merges: per patient, the records keeper or clinical access
        (subj(&[Physician]), O::PatientMerge, N, NONE, false, Basis::NoCareRelationship),
        (subj(&[Physician]), O::PatientMerge, N, REL, true, Basis::CareRelationship),
        (subj(&[Clerk]), O::PatientMerge, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), O::PatientMerge, N, RM, true, Basis::RecordsManagement),
        (subj(&[Pharmacist]), O::PatientMerge, N, REL, false, Basis::RoleNotPermitted),
        (subj(&[Auditor]), O::MergeReview, N, OWN, false, Basis::SamePerson),
        // ---- registration without the reception desk
        (subj(&[Nurse]), O::ProvisionalRegister, N, NONE, false, Basis::RegistrationClosed),
        (subj(&[Nurse]), O::ProvisionalRegister, EMERG, REG, true, Basis::RegistrationOpen),
        (subj(&[Pharmacist]), O::ProvisionalRegister, EMERG, REG, false, Basis::RoleNotPermitted),
        // ---- reconciliation: pharmacists see the tasks (bodies per patient)
        (subj(&[Pharmacist]), O::ReconcileRead, N, NONE, true, Basis::RolePermitted),
        (subj(&[Clerk]), O::ReconcileImport, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Clerk]), O::ReconcileImport, N, RM, true, Basis::RolePermitted),
        // ---- maintenance approvals
        (subj(&[Admin]), O::MaintenanceApprove { emergency_request: false }, N, OWN, false, Basis::SamePerson),
        (subj(&[BcpDecider]), O::MaintenanceApprove { emergency_request: true }, EMERG, NONE, true, Basis::BcpTeam),
        (
            subj(&[BcpDecider]),
            O::MaintenanceApprove { emergency_request: true },
            DRILL,
            NONE,
            false,
            Basis::RoleNotPermitted,
        ),
        (subj(&[Physician]), O::MaintenanceScoped { scope: Scope::Database }, N, SCOPE, false, Basis::RoleNotPermitted),
        // ---- the audit log
        (subj(&[Auditor]), O::AuditRead, N, NONE, true, Basis::RoleAuditor),
        (subj(&[Admin]), O::AuditRead, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Auditor]), O::ComplianceReport, N, NONE, true, Basis::RoleAuditor),
        (subj(&[Admin]), O::ComplianceReport, N, NONE, true, Basis::RoleAdmin),
        (subj(&[Physician]), O::ComplianceReport, N, NONE, false, Basis::RoleNotPermitted),
        // ---- bulk export: readers of records, in normal operation; one's own jobs
        (subj(&[Physician]), O::BulkExport, N, NONE, true, Basis::RolePermitted),
        (subj(&[Clerk]), O::BulkExport, N, NONE, true, Basis::RolePermitted),
        (kind(SubjectKind::Service, &[Nurse]), O::BulkExport, N, NONE, true, Basis::RolePermitted),
        (subj(&[Physician]), O::BulkExport, EMERG, NONE, false, Basis::NotDuringEmergency),
        (subj(&[Physician]), O::BulkExport, DRILL, NONE, true, Basis::RolePermitted),
        (subj(&[Admin]), O::BulkExport, N, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Auditor]), O::BulkExport, N, NONE, false, Basis::RoleNotPermitted),
        (kind(SubjectKind::EmergencyAccount, &[Physician]), O::BulkExport, EMERG, NONE, false, Basis::RoleNotPermitted),
        (subj(&[Physician]), O::BulkExportRead, N, OWN, true, Basis::Own),
        (subj(&[Physician]), O::BulkExportRead, N, NONE, false, Basis::NotOwn),
    ]
}

#[test]
fn policy_table() {
    for (i, (s, op, mode, facts, permit, basis)) in table().into_iter().enumerate() {
        let d = authorize(&s, &op, &mode, &facts);
        assert_eq!((d.permit, d.basis), (permit, basis), "row {i}: {:?} {:?} {op:?} {mode} {facts:?}", s.kind, s.roles);
    }
}

#[test]
fn second_admin_approval_for_clinical_grants() {
    let a = subj(&[Admin]);
    let d = authorize(&a, &Operation::UserCreate { roles: roles(&[Nurse]), kind: SubjectKind::Staff }, &N, &NONE);
    assert!(d.permit && d.has(Obligation::SecondAdminApproval));
    let d = authorize(&a, &Operation::UserCreate { roles: roles(&[Clerk]), kind: SubjectKind::Staff }, &N, &NONE);
    assert!(d.permit && !d.has(Obligation::SecondAdminApproval));
    let reset = Operation::UserPasswordReset { target: SubjectKind::Staff, target_clinical: true };
    assert!(authorize(&a, &reset, &N, &NONE).has(Obligation::SecondAdminApproval));
    // The local operator on the host bootstraps without a second admin.
    let sys = kind(SubjectKind::System, &[Admin]);
    let d = authorize(&sys, &Operation::UserCreate { roles: roles(&[Nurse]), kind: SubjectKind::Staff }, &N, &NONE);
    assert!(d.permit && !d.has(Obligation::SecondAdminApproval));
}

#[test]
fn purposes() {
    let o = rec(Read, "Observation", One);
    let d = authorize(&subj(&[Physician]), &o, &N, &BTG);
    assert_eq!(d.purpose, Some(PurposeOfUse::BreakTheGlass));
    let d = authorize(&subj(&[Physician]), &o, &EMERG, &NONE);
    assert_eq!(d.purpose, Some(PurposeOfUse::EmergencyTreat));
    let d = authorize(&subj(&[Physician]), &o, &N, &REL);
    assert_eq!(d.purpose, Some(PurposeOfUse::Treat));
    let d = authorize(&subj(&[Physician]), &o, &EMERG, &REL);
    assert_eq!(d.purpose, Some(PurposeOfUse::EmergencyTreat));
}

#[test]
fn drill_never_relaxes_but_says_it_would() {
    let d = authorize(&subj(&[Physician]), &rec(Read, "Observation", One), &DRILL, &NONE);
    assert!(!d.permit);
    assert_eq!(d.obligations, vec![Obligation::WouldPermitInEmergency]);
    let d = authorize(&subj(&[Physician]), &rec(Search, "Observation", Any), &DRILL, &NONE);
    assert_eq!(d.obligations, vec![Obligation::RestrictToCareRelationships]);
}

#[test]
fn combining_patients() {
    let p = subj(&[Physician]);
    let o = rec(Read, "Appointment", One);
    let care = authorize(&p, &o, &N, &REL);
    let btg = authorize(&p, &o, &N, &BTG);
    let none = authorize(&p, &o, &N, &NONE);
    let both = combine(vec![care.clone(), btg.clone()]).unwrap();
    assert!(both.permit);
    assert_eq!((both.basis, both.purpose), (Basis::BreakGlass, Some(PurposeOfUse::BreakTheGlass)));
    let d = combine(vec![care.clone(), none]).unwrap();
    assert_eq!((d.permit, d.basis), (false, Basis::NoCareRelationship));
    // A drill's "would permit" only when every denial would be permitted.
    let drill_no = authorize(&p, &o, &DRILL, &NONE);
    let clerk_no = authorize(&subj(&[Clerk]), &o, &DRILL, &NONE);
    assert!(combine(vec![care.clone(), drill_no.clone()]).unwrap().has(Obligation::WouldPermitInEmergency));
    assert!(!combine(vec![drill_no, clerk_no]).unwrap().has(Obligation::WouldPermitInEmergency));
    assert!(combine(vec![]).is_none());
}

// ---- the matrix ----------------------------------------------------------------------------

/// One instance of every operation (with the parameter values that change
/// the rule), over the record types that matter.
pub(super) fn every_operation() -> Vec<Operation> {
    use Operation as O;
    use SubjectKind as K;
    let mut out = Vec::new();
    for a in [Read, Search, History, Create, Update, Delete] {
        for rt in [
            "Observation",
            "MedicationRequest",
            "MedicationDispense",
            "Patient",
            "Practitioner",
            "Organization",
            "AuditEvent",
            "CareTeam",
        ] {
            for scope in [PatientScope::None, One, Any] {
                out.push(rec(a, rt, scope));
            }
        }
    }
    let sets = [roles(&[]), roles(&[Clerk]), roles(&[Physician]), roles(&[Admin]), roles(&[Admin, Nurse])];
    let kinds = [K::Staff, K::EmergencyAccount, K::Service, K::System, K::Maintenance];
    for r in sets {
        for k in kinds {
            out.push(O::UserCreate { roles: r, kind: k });
            for to in sets {
                out.push(O::UserRolesChange { from: r, to, target: k });
            }
        }
    }
    for k in kinds {
        for (enable, disable) in [(true, false), (false, true), (false, false)] {
            out.push(O::UserStatusChange { enable, disable, target: k });
        }
        out.push(O::UserPasswordReset { target: k, target_clinical: true });
        out.push(O::UserPasswordReset { target: k, target_clinical: false });
        out.push(O::UserTotpChange { target: k });
        out.push(O::TokenIssue { holder: k });
    }
    for s in Scope::ALL {
        out.push(O::MaintenanceScoped { scope: s });
    }
    out.extend([
        O::OwnSession,
        O::OwnPasswordChange,
        O::OwnTotpEnroll,
        O::UserRead,
        O::AccountRequestRead,
        O::AccountRequestDecide,
        O::TokenManage,
        O::CareAssign,
        O::CareReadAll,
        O::CareEnd,
        O::BcpRead,
        O::BcpPlanChange { deciders_changed: true },
        O::BcpPlanChange { deciders_changed: false },
        O::BcpDeclare,
        O::BcpConfirm,
        O::BcpTransition,
        O::BcpChecklist,
        O::BcpReviewRead,
        O::BcpReviewWrite,
        O::IncidentReportRead,
        O::IncidentReportRecord,
        O::AlertRead,
        O::NotificationRead,
        O::BreakGlassRequest,
        O::BreakGlassRead,
        O::BreakGlassReadAll,
        O::BreakGlassReview,
        O::BreakGlassEnd,
        O::EmergencyAccountRead,
        O::EmergencyAccountManage,
        O::PartnerRead,
        O::PartnerManage,
        O::ExchangeSend,
        O::ExchangeMessageRead,
        O::ExchangeMessageReadAll,
        O::InboundRead,
        O::InboundFile,
        O::QuarantineRead,
        O::ProvisionalRegister,
        O::ProvisionalRead,
        O::PatientMerge,
        O::MergeRead,
        O::MergeReview,
        O::SnapshotRead,
        O::SnapshotManage,
        O::ReconcileImport,
        O::ReconcileRead,
        O::ReconcileResolve,
        O::MaintenanceRead,
        O::MaintenanceManage,
        O::MaintenanceRequest,
        O::MaintenanceApprove { emergency_request: true },
        O::MaintenanceApprove { emergency_request: false },
        O::MaintenanceReview,
        O::AuditRead,
        O::ComplianceReport,
        O::BulkExport,
        O::BulkExportRead,
        O::AppManage,
        O::AppUse,
        O::FhirValidate,
    ]);
    out
}

/// Every kind of subject: each role alone, a few combinations, every kind
/// of account.
pub(super) fn every_subject() -> Vec<Subject> {
    let mut out: Vec<Subject> = Role::ALL.iter().map(|r| subj(&[*r])).collect();
    out.push(subj(&[]));
    out.push(subj(&[Clerk, Nurse]));
    out.push(subj(&[Admin, Auditor, BcpDecider]));
    out.push(kind(SubjectKind::EmergencyAccount, &[Physician]));
    out.push(kind(SubjectKind::EmergencyAccount, &[Nurse]));
    out.push(kind(SubjectKind::Service, &[Nurse]));
    out.push(kind(SubjectKind::Service, &[Clerk]));
    out.push(kind(SubjectKind::System, &[Admin]));
    out.push(kind(SubjectKind::Maintenance, &[]));
    out
}

/// Every mode: normal, each phase of a real emergency (with and without
/// open access), a drill.
pub(super) fn every_mode() -> Vec<Mode> {
    let mut out = vec![Mode::Normal];
    for phase in Phase::ALL {
        for open_access in [true, false] {
            for drill in [false, true] {
                out.push(Mode::Emergency { phase, drill, open_access, registration: open_access });
            }
        }
    }
    out
}

fn every_facts() -> Vec<Facts> {
    (0u32..512)
        .map(|b| Facts {
            care_relationship: b & 1 != 0,
            break_glass: b & 2 != 0,
            own: b & 4 != 0,
            target_is_self: b & 8 != 0,
            plan_decider: b & 16 != 0,
            records_manager: b & 32 != 0,
            plan_is_builtin: b & 64 != 0,
            registration_open: b & 128 != 0,
            scope_granted: b & 256 != 0,
            app_patient: false,
        })
        .collect()
}

fn is_patient_data(op: &Operation) -> bool {
    matches!(op, Operation::Record { target, .. }
        if target.scope != PatientScope::None && target.rtype != ResourceType::AUDIT_EVENT)
}

/// The properties that hold for every subject, operation, mode and facts.
#[test]
fn matrix_properties() {
    let ops = every_operation();
    let facts = every_facts();
    let mut reachable = vec![false; ops.len()];
    let mut checked = 0u64;
    for s in every_subject() {
        let admin_only = s.has(Admin) && !s.clinical();
        for mode in every_mode() {
            for (i, op) in ops.iter().enumerate() {
                for f in &facts {
                    let d = authorize(&s, op, &mode, f);
                    checked += 1;
                    reachable[i] |= d.permit;
                    let ctx = || format!("{:?} {:?} {op:?} {mode} {f:?} -> {d:?}", s.kind, s.roles);
                    // A permit always carries a purpose of use; a denial never.
                    assert_eq!(d.permit, d.purpose.is_some(), "{}", ctx());
                    assert!(d.permit || !d.has(Obligation::SecondAdminApproval), "{}", ctx());
                    // A sealed emergency account is powerless in normal times.
                    if s.kind == SubjectKind::EmergencyAccount && mode.is_normal() {
                        assert!(!d.permit, "{}", ctx());
                    }
                    // An administrator (or the system) never reaches patient data.
                    if (admin_only || s.kind == SubjectKind::System) && is_patient_data(op) {
                        assert!(!d.permit || d.has(Obligation::ReferenceDataOnly), "{}", ctx());
                    }
                    // Maintenance people never change anything and see
                    // nothing their window does not grant.
                    if s.kind == SubjectKind::Maintenance {
                        if let Operation::Record { action, .. } = op {
                            assert!(!(d.permit && action.is_write()), "{}", ctx());
                        }
                        assert!(!d.permit || f.scope_granted || *op == Operation::OwnSession, "{}", ctx());
                    }
                    // A drill never permits what normal times deny (drill
                    // emergency accounts aside: they exist for drills).
                    if mode.is_drill() && d.permit && is_patient_data(op) && s.kind != SubjectKind::EmergencyAccount {
                        let normal = authorize(&s, op, &Mode::Normal, f);
                        assert!(normal.permit, "drill relaxed: {}", ctx());
                    }
                    // Nobody without a clinical role reads one patient's clinical data.
                    if let Operation::Record { target, .. } = op {
                        let clinical_type =
                            target.rtype != ResourceType::PATIENT && target.rtype != ResourceType::AUDIT_EVENT;
                        if target.scope == One && clinical_type && d.permit {
                            assert!(s.clinical() || s.kind == SubjectKind::Maintenance, "{}", ctx());
                        }
                    }
                    // A second person: nobody confirms, approves or reviews their own.
                    if f.own
                        && matches!(
                            op,
                            Operation::BcpConfirm
                                | Operation::AccountRequestDecide
                                | Operation::BreakGlassReview
                                | Operation::MergeReview
                                | Operation::MaintenanceReview
                                | Operation::MaintenanceApprove { .. }
                        )
                    {
                        assert!(!d.permit || s.kind == SubjectKind::System, "{}", ctx());
                    }
                    // No account ever holds administration and clinical roles.
                    if let Operation::UserRolesChange { to, .. } | Operation::UserCreate { roles: to, .. } = op {
                        if to.contains(Admin) && to.any_clinical() && s.kind != SubjectKind::System {
                            assert!(!d.permit, "{}", ctx());
                        }
                    }
                }
            }
        }
    }
    assert!(checked > 1_000_000, "the matrix covers {checked} decisions");
    let unreachable: Vec<_> = ops.iter().zip(&reachable).filter(|(_, r)| !**r).map(|(o, _)| o).collect();
    // Writes of the audit log are the only operations nobody may do.
    assert!(
        unreachable.iter().all(|o| matches!(o, Operation::Record { action, target }
            if action.is_write() && (target.rtype == ResourceType::AUDIT_EVENT || target.scope == Any))),
        "operations nobody may perform: {unreachable:?}"
    );
}

/// An app acting for a subject never does more than the subject, and its
/// `patient/` scopes reach only the patient it was launched for.
#[test]
fn apps_never_widen_what_their_user_may_do() {
    let grants = ["user/*.cruds", "user/Observation.rs", "patient/*.rs", "patient/*.cruds user/Practitioner.rs", ""];
    let ops = every_operation();
    let facts: Vec<Facts> = every_facts()
        .into_iter()
        .take(32)
        .flat_map(|f| [Facts { app_patient: false, ..f }, Facts { app_patient: true, ..f }])
        .collect();
    let mut permits = 0u64;
    for s in every_subject() {
        for g in grants {
            let app = Subject { app: Some(AppGrant::of(g)), ..s.clone() };
            for mode in [N, EMERG, DRILL] {
                for op in &ops {
                    for f in &facts {
                        let d = authorize(&app, op, &mode, f);
                        let own = authorize(&s, op, &mode, f);
                        let ctx = || format!("{g:?} {:?} {:?} {op:?} {mode} {f:?} -> {d:?}", s.kind, s.roles);
                        if d.permit {
                            permits += 1;
                            assert_eq!(d, own, "{}", ctx());
                        } else if own.permit {
                            assert_eq!(d.basis, Basis::NotInAppScope, "{}", ctx());
                        }
                        if let Operation::Record { target, .. } = op {
                            let patient_only = !g
                                .split(' ')
                                .filter_map(ResourceScope::parse)
                                .any(|r| r.context == AppContext::User && r.rtype.is_none_or(|t| t == target.rtype));
                            if d.permit && patient_only && target.scope == One {
                                assert!(f.app_patient, "{}", ctx());
                            }
                            if d.permit && patient_only {
                                assert_ne!(target.scope, Any, "{}", ctx());
                            }
                        } else if d.permit {
                            assert_eq!(*op, Operation::OwnSession, "{}", ctx());
                        }
                        if g.is_empty() {
                            assert!(!d.permit || *op == Operation::OwnSession, "{}", ctx());
                        }
                    }
                }
            }
        }
    }
    assert!(permits > 10_000, "{permits} permits checked");
}

#[test]
fn an_app_reads_only_what_its_scopes_name() {
    let doc = Subject { app: Some(AppGrant::of("patient/Observation.rs")), ..subj(&[Physician]) };
    let mine = Facts { app_patient: true, ..REL };
    let d = authorize(&doc, &rec(Read, "Observation", One), &N, &mine);
    assert!(d.permit && d.basis == Basis::CareRelationship, "{d:?}");
    // Another patient in the physician's care: the app does not reach it.
    let d = authorize(&doc, &rec(Read, "Observation", One), &N, &REL);
    assert_eq!((d.permit, d.basis), (false, Basis::NotInAppScope));
    // Another type, a write, a search across patients: not granted.
    for op in [rec(Read, "Condition", One), rec(Create, "Observation", One), rec(Search, "Observation", Any)] {
        let d = authorize(&doc, &op, &N, &mine);
        assert_eq!((d.permit, d.basis), (false, Basis::NotInAppScope), "{op:?}");
    }
    // The user's own denial stays the reason.
    let d = authorize(&doc, &rec(Read, "Observation", One), &N, &Facts { app_patient: true, ..NONE });
    assert_eq!(d.basis, Basis::NoCareRelationship);
    // Nothing outside the record through an app.
    let d = authorize(&doc, &Operation::BreakGlassRequest, &N, &NONE);
    assert_eq!(d.basis, Basis::NotInAppScope);
}
