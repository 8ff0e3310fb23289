//! The rules: [`authorize`] for every [`Operation`], and [`combine`] for an
//! operation that concerns several patients.

use super::{
    Action, Basis, Decision, Facts, Obligation, Operation, PatientScope, PurposeOfUse, Role, Subject, SubjectKind,
    Target,
};
use crate::fhir::compartment::requires_patient;
use crate::ids::ResourceType;
use crate::mode::Mode;

/// Resource types that are orders: only physicians write them.
const ORDERS: &[&str] =
    &["MedicationRequest", "ServiceRequest", "DeviceRequest", "NutritionOrder", "VisionPrescription"];
/// What a pharmacist may write.
const PHARMACY: &[&str] =
    &["MedicationDispense", "MedicationAdministration", "MedicationStatement", "DetectedIssue", "Communication"];

/// Decides one operation. For patient data the caller supplies the facts
/// of one patient and calls this once per patient ([`combine`] joins the
/// decisions). This is the only place anything is permitted or denied.
pub fn authorize(subject: &Subject, op: &Operation, mode: &Mode, facts: &Facts) -> Decision {
    let d = account(subject, op, mode, facts);
    match &subject.app {
        // An app acting for the subject: never more than the subject may.
        Some(app) => app.narrow(op, facts, d),
        None => d,
    }
}

/// What the account itself may do.
fn account(subject: &Subject, op: &Operation, mode: &Mode, facts: &Facts) -> Decision {
    if subject.kind == SubjectKind::EmergencyAccount && mode.is_normal() {
        return Decision::deny(Basis::EmergencyAccountSealed);
    }
    if subject.must_change_password && !matches!(op, Operation::OwnSession | Operation::OwnPasswordChange) {
        return Decision::deny(Basis::PasswordChangeRequired);
    }
    if subject.kind == SubjectKind::Maintenance {
        return maintenance(op, facts);
    }
    if let Operation::Record { action, target } = op {
        return record(subject, *action, *target, mode, facts);
    }
    if subject.kind == SubjectKind::System {
        return system(op);
    }
    operations(subject, op, mode, facts)
}

/// Joins the decisions of one operation over several patients: permitted
/// only if every one is; the basis and purpose of the most exceptional
/// permit (break-glass over emergency access over the ordinary), or of the
/// first denial.
pub fn combine(decisions: Vec<Decision>) -> Option<Decision> {
    if let Some(denied) = decisions.iter().find(|d| !d.permit) {
        let mut d = denied.clone();
        // A drill's "would permit" holds only if it holds for every denial.
        let all_would = decisions.iter().filter(|d| !d.permit).all(|d| d.has(Obligation::WouldPermitInEmergency));
        d.obligations.retain(|o| *o != Obligation::WouldPermitInEmergency || all_would);
        return Some(d);
    }
    let rank = |b: Basis| match b {
        Basis::BreakGlass => 3,
        Basis::EmergencyAccess => 2,
        Basis::MaintenanceAccess => 1,
        _ => 0,
    };
    let mut out = decisions.iter().max_by_key(|d| rank(d.basis))?.clone();
    for d in &decisions {
        for o in &d.obligations {
            if !out.obligations.contains(o) {
                out.obligations.push(*o);
            }
        }
    }
    Some(out)
}

fn clinical_purpose(mode: &Mode) -> PurposeOfUse {
    if mode.is_real_emergency() {
        PurposeOfUse::EmergencyTreat
    } else {
        PurposeOfUse::Treat
    }
}

/// A maintenance person: what the window's scopes grant, patient data
/// read-only, nothing else.
fn maintenance(op: &Operation, facts: &Facts) -> Decision {
    match op {
        Operation::OwnSession => Decision::permit(Basis::Own, PurposeOfUse::SystemAdmin),
        Operation::MaintenanceScoped { .. } if facts.scope_granted => {
            Decision::permit(Basis::MaintenanceScope, PurposeOfUse::SystemAdmin)
        }
        Operation::Record { action, target }
            if !action.is_write() && target.rtype != ResourceType::AUDIT_EVENT && facts.scope_granted =>
        {
            Decision::permit(Basis::MaintenanceAccess, PurposeOfUse::SystemAdmin)
        }
        Operation::MaintenanceScoped { .. } | Operation::Record { .. } => Decision::deny(Basis::NotInScope),
        _ => Decision::deny(Basis::RoleNotPermitted),
    }
}

/// The server itself or the local operator on its host: administration
/// and background work; patient data only by the roles it holds (none).
fn system(op: &Operation) -> Decision {
    match op {
        Operation::MaintenanceScoped { .. } => Decision::deny(Basis::RoleNotPermitted),
        _ => Decision::permit(Basis::System, PurposeOfUse::Operations),
    }
}

/// A FHIR interaction (or a read of patient data by another operation).
fn record(subject: &Subject, action: Action, target: Target, mode: &Mode, facts: &Facts) -> Decision {
    use crate::fhir::resource_types::NOT_STORABLE;
    let rt = target.rtype.as_str();
    let clinical = subject.clinical();

    if action.is_write() && NOT_STORABLE.contains(&rt) {
        return Decision::deny(Basis::NotStorable);
    }

    // The audit log: auditors only, read-only.
    if target.rtype == ResourceType::AUDIT_EVENT {
        return if subject.has(Role::Auditor) {
            Decision::permit(Basis::RoleAuditor, PurposeOfUse::Compliance)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // Demographics: identify and register patients.
    if target.rtype == ResourceType::PATIENT {
        let may = match action {
            Action::Read | Action::Search | Action::History => clinical || subject.has(Role::Clerk),
            Action::Create | Action::Update => {
                subject.has(Role::Clerk) || subject.has(Role::Physician) || subject.has(Role::Nurse)
            }
            Action::Delete => subject.has(Role::Clerk),
        };
        return if may {
            let purpose = if clinical { clinical_purpose(mode) } else { PurposeOfUse::Operations };
            Decision::permit(Basis::RoleDemographics, purpose)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // Reference data: a resource naming no patient.
    if target.scope == PatientScope::None {
        let may = if action.is_write() {
            subject.has(Role::Admin) || (subject.has(Role::Physician) && rt != "Organization" && rt != "Endpoint")
        } else {
            !subject.roles.is_empty()
        };
        return if may {
            Decision::permit(Basis::RoleReferenceData, PurposeOfUse::Operations)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    let emergency_open = matches!(mode, Mode::Emergency { open_access: true, drill: false, .. });
    let drill_open = matches!(mode, Mode::Emergency { open_access: true, drill: true, .. });

    // A search across patients.
    if target.scope == PatientScope::Any {
        if action.is_write() {
            return Decision::deny(Basis::RoleNotPermitted);
        }
        if clinical {
            return if emergency_open {
                Decision::permit(Basis::EmergencyAccess, PurposeOfUse::EmergencyTreat)
            } else {
                Decision::permit(Basis::RestrictedToCareRelationships, PurposeOfUse::Treat)
                    .with(Obligation::RestrictToCareRelationships)
            };
        }
        // Other roles find reference data only, in types that may hold some.
        return if !subject.roles.is_empty() && !requires_patient(target.rtype) {
            Decision::permit(Basis::RoleReferenceData, PurposeOfUse::Operations).with(Obligation::ReferenceDataOnly)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // One patient's clinical data.
    let role_ok = match action {
        Action::Read | Action::Search | Action::History => clinical,
        Action::Create | Action::Update => {
            subject.has(Role::Physician)
                || (subject.has(Role::Nurse) && !ORDERS.contains(&rt))
                || (subject.has(Role::Pharmacist) && PHARMACY.contains(&rt))
        }
        Action::Delete => subject.has(Role::Physician),
    };
    if !role_ok {
        return Decision::deny(Basis::RoleNotPermitted);
    }
    if facts.care_relationship {
        Decision::permit(Basis::CareRelationship, clinical_purpose(mode))
    } else if facts.break_glass {
        Decision::permit(Basis::BreakGlass, PurposeOfUse::BreakTheGlass)
    } else if emergency_open {
        Decision::permit(Basis::EmergencyAccess, PurposeOfUse::EmergencyTreat)
    } else if drill_open {
        Decision::deny(Basis::NoCareRelationship).with(Obligation::WouldPermitInEmergency)
    } else {
        Decision::deny(Basis::NoCareRelationship)
    }
}

/// A read of one patient's clinical data, for operations that reveal or
/// move it.
fn clinical_read(subject: &Subject, mode: &Mode, facts: &Facts, rtype: ResourceType) -> Decision {
    record(subject, Action::Read, Target { rtype, scope: PatientScope::One }, mode, facts)
}

/// Everything that is not a FHIR interaction.
fn operations(s: &Subject, op: &Operation, mode: &Mode, f: &Facts) -> Decision {
    use Operation as O;
    let admin = s.has(Role::Admin);
    let auditor = s.has(Role::Auditor);
    let clerk = s.has(Role::Clerk);
    let clinical = s.clinical();
    let bcp_role = s.has(Role::BcpDecider);
    let staff = s.kind == SubjectKind::Staff;
    let team = f.plan_decider || bcp_role || admin;

    let ops = |b: Basis| Decision::permit(b, PurposeOfUse::Operations);
    let sysadmin = || Decision::permit(Basis::RoleAdmin, PurposeOfUse::SystemAdmin);
    let audit = || Decision::permit(Basis::RoleAuditor, PurposeOfUse::Compliance);
    let deny = Decision::deny;
    let when = |cond: bool, yes: Decision| if cond { yes } else { Decision::deny(Basis::RoleNotPermitted) };

    match *op {
        O::Record { .. } | O::MaintenanceScoped { .. } => deny(Basis::RoleNotPermitted),

        // ---- one's own session and account
        O::OwnSession => ops(Basis::Own),
        O::OwnPasswordChange | O::OwnTotpEnroll => match s.kind {
            SubjectKind::Staff => ops(Basis::Own),
            SubjectKind::EmergencyAccount => deny(Basis::EmergencyAccountManaged),
            _ => deny(Basis::RoleNotPermitted),
        },

        // ---- accounts (separation of duties)
        O::UserRead | O::AccountRequestRead | O::TokenManage => when(admin, sysadmin()),
        O::UserCreate { roles, kind } => {
            if !admin {
                deny(Basis::RoleNotPermitted)
            } else if kind == SubjectKind::EmergencyAccount {
                deny(Basis::EmergencyAccountManaged)
            } else if roles.contains(Role::Admin) && roles.any_clinical() {
                deny(Basis::SeparationOfDuties)
            } else if roles.any_clinical() {
                sysadmin().with(Obligation::SecondAdminApproval)
            } else {
                sysadmin()
            }
        }
        O::UserRolesChange { from, to, target } => {
            let added = to.minus(from);
            if !admin {
                deny(Basis::RoleNotPermitted)
            } else if target == SubjectKind::EmergencyAccount {
                deny(Basis::EmergencyAccountManaged)
            } else if f.target_is_self && !to.contains(Role::Admin) {
                deny(Basis::SelfLockout)
            } else if (to.contains(Role::Admin) && to.any_clinical()) || (f.target_is_self && added.any_clinical()) {
                deny(Basis::SeparationOfDuties)
            } else if added.any_clinical() {
                sysadmin().with(Obligation::SecondAdminApproval)
            } else {
                sysadmin()
            }
        }
        O::UserStatusChange { enable, disable, target } => {
            if !admin {
                deny(Basis::RoleNotPermitted)
            } else if f.target_is_self && disable {
                deny(Basis::SelfLockout)
            } else if target == SubjectKind::EmergencyAccount && enable {
                deny(Basis::EmergencyAccountManaged)
            } else {
                sysadmin()
            }
        }
        O::UserPasswordReset { target, target_clinical } => match target {
            _ if !admin => deny(Basis::RoleNotPermitted),
            SubjectKind::EmergencyAccount => deny(Basis::EmergencyAccountManaged),
            SubjectKind::Staff if target_clinical => sysadmin().with(Obligation::SecondAdminApproval),
            SubjectKind::Staff => sysadmin(),
            _ => deny(Basis::RoleNotPermitted),
        },
        O::UserTotpChange { target } => match target {
            _ if !admin => deny(Basis::RoleNotPermitted),
            SubjectKind::EmergencyAccount => deny(Basis::EmergencyAccountManaged),
            _ => sysadmin(),
        },
        O::AccountRequestDecide => {
            if !admin {
                deny(Basis::RoleNotPermitted)
            } else if f.own {
                deny(Basis::SamePerson)
            } else if f.target_is_self {
                deny(Basis::SeparationOfDuties)
            } else {
                sysadmin()
            }
        }
        O::TokenIssue { holder } => {
            if f.target_is_self {
                when(staff, ops(Basis::Own))
            } else if admin && holder == SubjectKind::Service {
                sysadmin()
            } else if admin {
                deny(Basis::SeparationOfDuties)
            } else {
                deny(Basis::RoleNotPermitted)
            }
        }
        O::CareAssign => {
            if admin || clerk {
                ops(Basis::RolePermitted)
            } else if s.has(Role::Physician) && f.care_relationship {
                Decision::permit(Basis::CareRelationship, clinical_purpose(mode))
            } else if s.has(Role::Physician) {
                deny(Basis::NoCareRelationship)
            } else {
                deny(Basis::RoleNotPermitted)
            }
        }
        O::CareReadAll | O::CareEnd => when(admin || clerk, ops(Basis::RolePermitted)),

        // ---- BCP
        O::BcpRead | O::PartnerRead => ops(Basis::Authenticated),
        O::BcpPlanChange { deciders_changed } => {
            if f.plan_decider {
                ops(Basis::PlanDecider)
            } else if deciders_changed && !(admin && f.plan_is_builtin) {
                deny(Basis::NotPlanDecider)
            } else {
                when(team, ops(Basis::BcpTeam))
            }
        }
        O::BcpDeclare | O::BcpTransition => {
            if f.plan_decider {
                ops(Basis::PlanDecider)
            } else {
                deny(Basis::NotPlanDecider)
            }
        }
        O::BcpConfirm => {
            if !f.plan_decider {
                deny(Basis::NotPlanDecider)
            } else if f.own {
                deny(Basis::SamePerson)
            } else {
                ops(Basis::PlanDecider)
            }
        }
        O::BcpChecklist | O::BcpReviewWrite | O::IncidentReportRecord | O::NotificationRead => {
            when(team, ops(Basis::BcpTeam))
        }
        O::BcpReviewRead | O::IncidentReportRead | O::AlertRead => {
            if team {
                ops(Basis::BcpTeam)
            } else {
                when(auditor, audit())
            }
        }

        // ---- break-glass
        O::BreakGlassRequest => match s.kind {
            SubjectKind::Staff if clinical => Decision::permit(Basis::RolePermitted, PurposeOfUse::BreakTheGlass),
            _ => deny(Basis::RoleNotPermitted),
        },
        O::BreakGlassRead | O::ExchangeMessageRead if f.own => ops(Basis::Own),
        O::BreakGlassRead | O::BreakGlassReadAll => when(auditor, audit()),
        O::BreakGlassReview | O::MergeReview | O::MaintenanceReview => {
            let may = match *op {
                O::BreakGlassReview => auditor,
                O::MergeReview => auditor || admin,
                _ => auditor || admin || bcp_role,
            };
            if !may {
                deny(Basis::RoleNotPermitted)
            } else if f.own {
                deny(Basis::SamePerson)
            } else if auditor {
                audit()
            } else {
                ops(Basis::RolePermitted)
            }
        }
        O::BreakGlassEnd => {
            if f.own {
                ops(Basis::Own)
            } else {
                deny(Basis::NotOwn)
            }
        }

        // ---- emergency accounts
        O::EmergencyAccountRead => when(admin || bcp_role || f.plan_decider || auditor, ops(Basis::RolePermitted)),
        O::EmergencyAccountManage => when(admin, sysadmin()),

        // ---- exchange
        O::PartnerManage => when(admin, sysadmin()),
        O::ExchangeSend => when(clinical, Decision::permit(Basis::RolePermitted, clinical_purpose(mode))),
        O::ExchangeMessageRead | O::ExchangeMessageReadAll => {
            if auditor {
                audit()
            } else {
                when(admin, sysadmin())
            }
        }
        // Received documents: the records desk and physicians file them;
        // auditors review them; never the administrator.
        O::InboundRead => {
            if auditor {
                audit()
            } else {
                when(s.has(Role::Physician) || clerk || f.records_manager, ops(Basis::RoleDemographics))
            }
        }
        O::InboundFile => {
            if f.records_manager {
                ops(Basis::RecordsManagement)
            } else {
                let docs = Target { rtype: ResourceType::DOCUMENT_REFERENCE, scope: PatientScope::One };
                record(s, Action::Create, docs, mode, f)
            }
        }
        O::QuarantineRead => {
            if auditor {
                audit()
            } else {
                when(admin, sysadmin())
            }
        }

        // ---- continuity
        O::ProvisionalRegister => {
            if !(clerk || s.has(Role::Physician) || s.has(Role::Nurse)) {
                deny(Basis::RoleNotPermitted)
            } else if f.registration_open {
                let purpose = if clinical { clinical_purpose(mode) } else { PurposeOfUse::Operations };
                Decision::permit(Basis::RegistrationOpen, purpose)
            } else {
                deny(Basis::RegistrationClosed)
            }
        }
        O::ProvisionalRead => when(clinical || clerk, ops(Basis::RoleDemographics)),
        O::PatientMerge => {
            if f.records_manager {
                ops(Basis::RecordsManagement)
            } else if s.has(Role::Physician) || s.has(Role::Nurse) {
                clinical_read(s, mode, f, ResourceType::OBSERVATION)
            } else {
                deny(Basis::RoleNotPermitted)
            }
        }
        O::MergeRead => {
            if auditor {
                audit()
            } else {
                when(f.records_manager || clinical || admin, ops(Basis::RolePermitted))
            }
        }
        O::SnapshotRead => {
            if auditor {
                audit()
            } else {
                when(admin, sysadmin())
            }
        }
        O::SnapshotManage => when(admin, sysadmin()),
        O::ReconcileImport => when(admin || f.records_manager, ops(Basis::RolePermitted)),
        O::ReconcileRead => {
            if auditor {
                audit()
            } else {
                when(admin || f.records_manager || clinical, ops(Basis::RolePermitted))
            }
        }
        O::ReconcileResolve => when(f.records_manager || clinical, ops(Basis::RolePermitted)),

        // ---- remote maintenance
        O::MaintenanceRead => {
            if auditor {
                audit()
            } else {
                when(admin || bcp_role, ops(Basis::RolePermitted))
            }
        }
        O::MaintenanceManage => when(admin, sysadmin()),
        O::MaintenanceRequest => when(admin || bcp_role, ops(Basis::RolePermitted)),
        O::MaintenanceApprove { emergency_request } => {
            if f.own {
                deny(Basis::SamePerson)
            } else if admin {
                sysadmin()
            } else if emergency_request && (bcp_role || f.plan_decider) && mode.is_real_emergency() {
                ops(Basis::BcpTeam)
            } else {
                deny(Basis::RoleNotPermitted)
            }
        }

        // ---- the audit log
        O::AuditRead => when(auditor, audit()),

        // ---- compliance
        O::ComplianceReport => {
            if auditor {
                audit()
            } else {
                when(admin, sysadmin())
            }
        }

        // ---- bulk export: people and services who read records; what
        // each export holds is decided resource by resource as reads.
        // Not during a real emergency: its powers serve one patient's care.
        O::BulkExport => {
            let reader = matches!(s.kind, SubjectKind::Staff | SubjectKind::Service) && (clinical || clerk);
            if !reader {
                deny(Basis::RoleNotPermitted)
            } else if mode.is_real_emergency() {
                deny(Basis::NotDuringEmergency)
            } else if clinical {
                Decision::permit(Basis::RolePermitted, PurposeOfUse::Treat)
            } else {
                ops(Basis::RolePermitted)
            }
        }
        O::BulkExportRead => {
            if f.own {
                ops(Basis::Own)
            } else {
                deny(Basis::NotOwn)
            }
        }

        // ---- apps: administrators register them; people who read
        // records use them (as themselves, narrowed by the app's scopes).
        O::AppManage => when(admin, sysadmin()),
        // (A service account is used by the backend client registered for it.)
        O::AppUse => when(staff || s.kind == SubjectKind::Service, ops(Basis::RolePermitted)),

        // ---- validating what one sends reveals and changes nothing stored.
        O::FhirValidate => when(staff || s.kind == SubjectKind::Service, ops(Basis::RolePermitted)),
    }
}
