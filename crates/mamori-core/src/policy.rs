//! The access decision: a pure function of who asks, for what, on what, in
//! which mode, and the facts the caller looked up (care relationship,
//! break-glass grant). No IO; tested as a table.
//!
//! The rules (documented for users in docs/access-policy.md):
//! - clinicians (physician, nurse, pharmacist) read a patient's clinical
//!   records only with a care relationship, a live break-glass grant (BTG),
//!   or while a real emergency opens access (ETREAT); in a drill such an
//!   access is denied and marked "would permit in emergency";
//! - demographics (the Patient resource) are readable by clinical staff and
//!   clerks, so that patients can be identified and registered;
//! - `admin` administers the system and sees no clinical data; `auditor`
//!   reads the audit log and nothing else;
//! - a sealed emergency account can do nothing outside a declared emergency.

use std::fmt;

use crate::ids::{ResourceType, UserId};
use crate::mode::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    Physician,
    Nurse,
    Pharmacist,
    Clerk,
    Admin,
    Auditor,
    BcpDecider,
    /// A vendor's maintenance person inside an approved window with the
    /// patient-data scope: read-only (never given to staff accounts).
    Maintenance,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Physician,
        Role::Nurse,
        Role::Pharmacist,
        Role::Clerk,
        Role::Admin,
        Role::Auditor,
        Role::BcpDecider,
        Role::Maintenance,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::Clerk => "clerk",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::BcpDecider => "bcp-decider",
            Role::Maintenance => "maintenance",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
    pub fn is_clinical(self) -> bool {
        matches!(self, Role::Physician | Role::Nurse | Role::Pharmacist)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of account is acting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A named staff account.
    Staff,
    /// A sealed emergency account (usable only in a declared emergency).
    EmergencyAccount,
    /// The server itself (background jobs) or a local operator at the CLI.
    System,
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub user: UserId,
    pub roles: Vec<Role>,
    pub kind: SubjectKind,
}

impl Subject {
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }
    fn clinical(&self) -> bool {
        self.roles.iter().any(|r| r.is_clinical())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Read,
    Search,
    History,
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn is_write(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Search => "search",
            Action::History => "history",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// Which patients a target concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatientScope {
    /// Not patient data (Practitioner, Organization, ...).
    None,
    /// One patient's compartment.
    One,
    /// A search across patients.
    Any,
}

/// On what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub rtype: ResourceType,
    pub scope: PatientScope,
}

/// Facts about subject and target the caller looked up in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The subject has a care relationship with the target patient.
    pub care_relationship: bool,
    /// The subject holds a live break-glass grant for the target patient.
    pub break_glass: bool,
}

/// Why access was granted or refused; recorded in every audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Basis {
    CareRelationship,
    BreakGlass,
    EmergencyAccess,
    RoleDemographics,
    RoleReferenceData,
    RoleAuditor,
    RoleAdmin,
    /// A search across patients, restricted to the subject's own patients.
    RestrictedToCareRelationships,
    NoCareRelationship,
    RoleNotPermitted,
    EmergencyAccountSealed,
    NotStorable,
    /// A maintenance window with the patient-data scope (read-only).
    MaintenanceAccess,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::CareRelationship => "care-relationship",
            Basis::BreakGlass => "break-glass",
            Basis::EmergencyAccess => "emergency-access",
            Basis::RoleDemographics => "role-demographics",
            Basis::RoleReferenceData => "role-reference-data",
            Basis::RoleAuditor => "role-auditor",
            Basis::RoleAdmin => "role-admin",
            Basis::RestrictedToCareRelationships => "restricted-to-care-relationships",
            Basis::NoCareRelationship => "no-care-relationship",
            Basis::RoleNotPermitted => "role-not-permitted",
            Basis::EmergencyAccountSealed => "emergency-account-sealed",
            Basis::NotStorable => "not-storable",
            Basis::MaintenanceAccess => "maintenance-access",
        }
    }
}

/// HL7 v3 PurposeOfUse codes recorded in the audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PurposeOfUse {
    #[serde(rename = "TREAT")]
    Treat,
    #[serde(rename = "ETREAT")]
    EmergencyTreat,
    #[serde(rename = "BTG")]
    BreakTheGlass,
    #[serde(rename = "HOPERAT")]
    Operations,
    #[serde(rename = "HSYSADMIN")]
    SystemAdmin,
    #[serde(rename = "HCOMPL")]
    Compliance,
}

impl PurposeOfUse {
    pub fn code(self) -> &'static str {
        match self {
            PurposeOfUse::Treat => "TREAT",
            PurposeOfUse::EmergencyTreat => "ETREAT",
            PurposeOfUse::BreakTheGlass => "BTG",
            PurposeOfUse::Operations => "HOPERAT",
            PurposeOfUse::SystemAdmin => "HSYSADMIN",
            PurposeOfUse::Compliance => "HCOMPL",
        }
    }
    pub fn parse(s: &str) -> Option<PurposeOfUse> {
        [
            PurposeOfUse::Treat,
            PurposeOfUse::EmergencyTreat,
            PurposeOfUse::BreakTheGlass,
            PurposeOfUse::Operations,
            PurposeOfUse::SystemAdmin,
            PurposeOfUse::Compliance,
        ]
        .into_iter()
        .find(|p| p.code() == s)
    }
}

/// What the caller must do besides permitting or denying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Obligation {
    /// Restrict a cross-patient search to the subject's care relationships.
    RestrictToCareRelationships,
    /// A drill: the emergency rules would have permitted this access.
    WouldPermitInEmergency,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub permit: bool,
    pub basis: Basis,
    pub purpose: Option<PurposeOfUse>,
    pub obligations: Vec<Obligation>,
}

impl Decision {
    fn permit(basis: Basis, purpose: PurposeOfUse) -> Self {
        Decision { permit: true, basis, purpose: Some(purpose), obligations: Vec::new() }
    }
    fn deny(basis: Basis) -> Self {
        Decision { permit: false, basis, purpose: None, obligations: Vec::new() }
    }
    fn with(mut self, o: Obligation) -> Self {
        self.obligations.push(o);
        self
    }
}

/// Resource types that are orders: only physicians write them.
const ORDERS: &[&str] =
    &["MedicationRequest", "ServiceRequest", "DeviceRequest", "NutritionOrder", "VisionPrescription"];
/// What a pharmacist may write.
const PHARMACY: &[&str] =
    &["MedicationDispense", "MedicationAdministration", "MedicationStatement", "DetectedIssue", "Communication"];

/// Decides one access. The caller supplies `facts` for the patient in scope
/// (ignored when the scope is not one patient).
pub fn decide(subject: &Subject, action: Action, target: Target, mode: &Mode, facts: Facts) -> Decision {
    use crate::fhir::resource_types::NOT_STORABLE;
    let rt = target.rtype.as_str();

    if subject.kind == SubjectKind::EmergencyAccount && mode.is_normal() {
        return Decision::deny(Basis::EmergencyAccountSealed);
    }
    // Maintenance: read-only, and only when the window grants patient data.
    if subject.has(Role::Maintenance) {
        return if !action.is_write() && target.rtype != ResourceType::AUDIT_EVENT {
            Decision::permit(Basis::MaintenanceAccess, PurposeOfUse::SystemAdmin)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }
    if action.is_write() && NOT_STORABLE.contains(&rt) {
        return Decision::deny(Basis::NotStorable);
    }

    // The audit log: auditors only, read-only.
    if target.rtype == ResourceType::AUDIT_EVENT {
        return if subject.has(Role::Auditor) && !action.is_write() {
            Decision::permit(Basis::RoleAuditor, PurposeOfUse::Compliance)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // Demographics: identify and register patients.
    if target.rtype == ResourceType::PATIENT {
        let may = match action {
            Action::Read | Action::Search | Action::History => subject.clinical() || subject.has(Role::Clerk),
            Action::Create | Action::Update => {
                subject.has(Role::Clerk) || subject.has(Role::Physician) || subject.has(Role::Nurse)
            }
            Action::Delete => subject.has(Role::Clerk),
        };
        return if may {
            let purpose = if subject.clinical() { clinical_purpose(mode) } else { PurposeOfUse::Operations };
            Decision::permit(Basis::RoleDemographics, purpose)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // Reference data outside any patient compartment.
    if target.scope == PatientScope::None {
        return if !action.is_write() {
            if subject.roles.is_empty() {
                Decision::deny(Basis::RoleNotPermitted)
            } else {
                Decision::permit(Basis::RoleReferenceData, PurposeOfUse::Operations)
            }
        } else if subject.has(Role::Admin) || (subject.has(Role::Physician) && rt != "Organization" && rt != "Endpoint")
        {
            Decision::permit(Basis::RoleReferenceData, PurposeOfUse::Operations)
        } else {
            Decision::deny(Basis::RoleNotPermitted)
        };
    }

    // Clinical data in a patient's compartment.
    let role_ok = match action {
        Action::Read | Action::Search | Action::History => subject.clinical(),
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
    let emergency_open = matches!(mode, Mode::Emergency { open_access: true, drill: false, .. });
    let drill_open = matches!(mode, Mode::Emergency { open_access: true, drill: true, .. });
    match target.scope {
        PatientScope::Any => {
            if emergency_open {
                Decision::permit(Basis::EmergencyAccess, PurposeOfUse::EmergencyTreat)
            } else {
                Decision::permit(Basis::RestrictedToCareRelationships, PurposeOfUse::Treat)
                    .with(Obligation::RestrictToCareRelationships)
            }
        }
        _ => {
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
    }
}

fn clinical_purpose(mode: &Mode) -> PurposeOfUse {
    if mode.is_real_emergency() {
        PurposeOfUse::EmergencyTreat
    } else {
        PurposeOfUse::Treat
    }
}

/// May this subject manage accounts, tokens and care assignments at all?
pub fn may_administer(subject: &Subject) -> bool {
    subject.kind == SubjectKind::System || subject.has(Role::Admin)
}

/// May this subject assign care relationships for a patient? Admins and
/// clerks (reception) may; a physician may add colleagues to the care of
/// a patient they themselves care for.
pub fn may_assign_care(subject: &Subject, has_own_relationship: bool) -> bool {
    may_administer(subject) || subject.has(Role::Clerk) || (subject.has(Role::Physician) && has_own_relationship)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Phase;

    fn subj(roles: &[Role]) -> Subject {
        Subject { user: UserId::parse("u").unwrap(), roles: roles.to_vec(), kind: SubjectKind::Staff }
    }
    fn t(rt: &str, scope: PatientScope) -> Target {
        Target { rtype: ResourceType::parse(rt).unwrap(), scope }
    }
    const REL: Facts = Facts { care_relationship: true, break_glass: false };
    const NONE: Facts = Facts { care_relationship: false, break_glass: false };
    const BTG: Facts = Facts { care_relationship: false, break_glass: true };
    const EMERG: Mode =
        Mode::Emergency { phase: Phase::Activation, drill: false, open_access: true, registration: true };
    const DRILL: Mode =
        Mode::Emergency { phase: Phase::Activation, drill: true, open_access: true, registration: true };
    const EMERG_CLOSED: Mode =
        Mode::Emergency { phase: Phase::Recovery, drill: false, open_access: false, registration: false };

    use Action::*;
    use PatientScope::*;
    use Role::*;

    /// (roles, action, type, scope, facts, mode, permit, basis)
    #[allow(clippy::type_complexity)]
    const TABLE: &[(&[Role], Action, &str, PatientScope, Facts, Mode, bool, Basis)] = &[
        // physicians: clinical data needs a relationship
        (&[Physician], Read, "Observation", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Physician], Read, "Observation", One, NONE, Mode::Normal, false, Basis::NoCareRelationship),
        (&[Physician], Create, "MedicationRequest", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Physician], Update, "Condition", One, NONE, Mode::Normal, false, Basis::NoCareRelationship),
        (&[Physician], Delete, "Observation", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Physician], Search, "Observation", Any, NONE, Mode::Normal, true, Basis::RestrictedToCareRelationships),
        (&[Physician], Read, "Observation", One, BTG, Mode::Normal, true, Basis::BreakGlass),
        (&[Physician], Read, "Observation", One, NONE, EMERG, true, Basis::EmergencyAccess),
        (&[Physician], Search, "Observation", Any, NONE, EMERG, true, Basis::EmergencyAccess),
        (&[Physician], Read, "Observation", One, NONE, DRILL, false, Basis::NoCareRelationship),
        (&[Physician], Read, "Observation", One, NONE, EMERG_CLOSED, false, Basis::NoCareRelationship),
        (&[Physician], Read, "Patient", One, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Physician], Create, "Patient", One, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Physician], Delete, "Patient", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Physician], Read, "AuditEvent", Any, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Physician], Read, "Practitioner", None, NONE, Mode::Normal, true, Basis::RoleReferenceData),
        // nurses: no orders, no deletes
        (&[Nurse], Read, "Observation", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Nurse], Create, "Observation", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Nurse], Create, "MedicationRequest", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Nurse], Delete, "Observation", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Nurse], Read, "Observation", One, NONE, Mode::Normal, false, Basis::NoCareRelationship),
        // pharmacists: read clinical, write pharmacy
        (&[Pharmacist], Read, "MedicationRequest", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Pharmacist], Create, "MedicationDispense", One, REL, Mode::Normal, true, Basis::CareRelationship),
        (&[Pharmacist], Create, "Observation", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Pharmacist], Create, "Patient", One, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        // clerks: demographics only
        (&[Clerk], Create, "Patient", One, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Clerk], Read, "Patient", One, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Clerk], Search, "Patient", Any, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Clerk], Delete, "Patient", One, NONE, Mode::Normal, true, Basis::RoleDemographics),
        (&[Clerk], Read, "Observation", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Clerk], Read, "Observation", One, NONE, EMERG, false, Basis::RoleNotPermitted),
        // admin: no clinical data, not even demographics
        (&[Admin], Read, "Patient", One, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Admin], Read, "Observation", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Admin], Create, "Practitioner", None, NONE, Mode::Normal, true, Basis::RoleReferenceData),
        (&[Admin], Read, "AuditEvent", Any, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        // auditors: the audit log only
        (&[Auditor], Search, "AuditEvent", Any, NONE, Mode::Normal, true, Basis::RoleAuditor),
        (&[Auditor], Read, "AuditEvent", Any, NONE, Mode::Normal, true, Basis::RoleAuditor),
        (&[Auditor], Create, "AuditEvent", Any, NONE, Mode::Normal, false, Basis::NotStorable),
        (&[Auditor], Read, "Patient", One, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        (&[Auditor], Read, "Observation", One, NONE, EMERG, false, Basis::RoleNotPermitted),
        // BCP deciders have no clinical powers by that role alone
        (&[BcpDecider], Read, "Observation", One, REL, Mode::Normal, false, Basis::RoleNotPermitted),
        // a user with no roles gets nothing
        (&[], Read, "Practitioner", None, NONE, Mode::Normal, false, Basis::RoleNotPermitted),
        // several roles: the union
        (&[Clerk, Nurse], Read, "Observation", One, REL, Mode::Normal, true, Basis::CareRelationship),
    ];

    #[test]
    fn policy_table() {
        for (i, (roles, action, rt, scope, facts, mode, permit, basis)) in TABLE.iter().enumerate() {
            let d = decide(&subj(roles), *action, t(rt, *scope), mode, *facts);
            assert_eq!(
                (d.permit, d.basis),
                (*permit, *basis),
                "row {i}: {roles:?} {action:?} {rt} {scope:?} {facts:?} {mode}"
            );
            assert_eq!(d.permit, d.purpose.is_some(), "row {i}: a permit always carries a purpose");
        }
    }

    #[test]
    fn purposes() {
        let d = decide(&subj(&[Physician]), Read, t("Observation", One), &Mode::Normal, BTG);
        assert_eq!(d.purpose, Some(PurposeOfUse::BreakTheGlass));
        let d = decide(&subj(&[Physician]), Read, t("Observation", One), &EMERG, NONE);
        assert_eq!(d.purpose, Some(PurposeOfUse::EmergencyTreat));
        let d = decide(&subj(&[Physician]), Read, t("Observation", One), &Mode::Normal, REL);
        assert_eq!(d.purpose, Some(PurposeOfUse::Treat));
    }

    #[test]
    fn drill_never_relaxes_but_says_it_would() {
        let d = decide(&subj(&[Physician]), Read, t("Observation", One), &DRILL, NONE);
        assert!(!d.permit);
        assert_eq!(d.obligations, vec![Obligation::WouldPermitInEmergency]);
        let d = decide(&subj(&[Physician]), Search, t("Observation", Any), &DRILL, NONE);
        assert_eq!(d.obligations, vec![Obligation::RestrictToCareRelationships]);
    }

    #[test]
    fn sealed_emergency_account_is_powerless_in_normal_mode() {
        let mut s = subj(&[Physician]);
        s.kind = SubjectKind::EmergencyAccount;
        let d = decide(&s, Read, t("Patient", One), &Mode::Normal, REL);
        assert_eq!((d.permit, d.basis), (false, Basis::EmergencyAccountSealed));
        let d = decide(&s, Read, t("Observation", One), &EMERG, NONE);
        assert!(d.permit);
    }

    #[test]
    fn care_assignment_rights() {
        assert!(may_assign_care(&subj(&[Admin]), false));
        assert!(may_assign_care(&subj(&[Clerk]), false));
        assert!(may_assign_care(&subj(&[Physician]), true));
        assert!(!may_assign_care(&subj(&[Physician]), false));
        assert!(!may_assign_care(&subj(&[Nurse]), true));
    }
}
