//! The access policy: one pure function, [`authorize`], decides every
//! operation of the system (every FHIR interaction and every operations
//! action) from who asks, what they ask ([`Operation`]), the mode, and the
//! facts the caller looked up ([`Facts`]). No IO; tested as a table and
//! as a full matrix (`docs/access-matrix.md` is generated from it).
//!
//! The service layer calls [`authorize`] at exactly one place and puts the
//! [`Decision`] (permit or deny, with its [`Basis`]) in the audit event.
//!
//! The rules, in short (docs/access-policy.md has them all):
//! - clinicians (physician, nurse, pharmacist) read a patient's clinical
//!   records only with a care relationship, a live break-glass grant
//!   (BTG), or while a real emergency opens access (ETREAT); in a drill
//!   such an access is denied and marked "would permit in emergency";
//! - anything that reveals or moves patient data (an export, a merge, a
//!   send to a partner, a filing) is decided per patient by that rule;
//! - demographics (the Patient resource) are readable by clinical staff and
//!   clerks, so that patients can be identified and registered;
//! - separation of duties: `admin` administers the system and never gains
//!   clinical access by any route (no token for another person, no clinical
//!   role for itself, a second admin approves every clinical role grant and
//!   every password reset of a clinical account); `auditor` reads the
//!   audit log; a sealed emergency account can do nothing outside a
//!   declared emergency.

mod app;
mod notice;
mod operation;
mod rules;
#[cfg(test)]
mod tests;

use std::fmt;

pub use app::{AppGrant, Context as AppContext, ResourceScope, ScopeRequest};
pub use notice::{told, Notice};
pub use operation::{Operation, RoleSet};
pub use rules::{authorize, combine};

use crate::ids::{ResourceType, UserId};

/// A role held by an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// A physician: reads and writes clinical records (orders included).
    Physician,
    /// A nurse: reads clinical records, writes what nursing records.
    Nurse,
    /// A pharmacist: reads clinical records, writes pharmacy records.
    Pharmacist,
    /// Reception and medical records: demographics, care assignments.
    Clerk,
    /// System administration; no clinical data.
    Admin,
    /// Reads and reviews the audit log; no clinical data.
    Auditor,
    /// Member of the BCP team (declares emergencies when the plan says so).
    BcpDecider,
}

impl Role {
    /// Every role, in a fixed order.
    pub const ALL: [Role; 7] =
        [Role::Physician, Role::Nurse, Role::Pharmacist, Role::Clerk, Role::Admin, Role::Auditor, Role::BcpDecider];
    /// The role's name in the API, the CLI and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Physician => "physician",
            Role::Nurse => "nurse",
            Role::Pharmacist => "pharmacist",
            Role::Clerk => "clerk",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::BcpDecider => "bcp-decider",
        }
    }
    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
    /// A role that reads clinical records.
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
    /// A service account: a system of the hospital acting with its own
    /// roles through API tokens an admin issued to it (no password login).
    Service,
    /// A vendor's maintenance person on the maintenance listener, inside
    /// an approved window: only what the window's scopes grant.
    Maintenance,
    /// The server itself (background jobs) or a local operator at the CLI
    /// on the server's host.
    System,
}

impl SubjectKind {
    /// The name in audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Staff => "staff",
            SubjectKind::EmergencyAccount => "emergency",
            SubjectKind::Service => "service",
            SubjectKind::Maintenance => "maintenance",
            SubjectKind::System => "system",
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The account.
    pub user: UserId,
    /// Its roles.
    pub roles: Vec<Role>,
    /// Its kind.
    pub kind: SubjectKind,
    /// It still has a first-login (one-time) password.
    pub must_change_password: bool,
    /// It acts through a third-party app (SMART): the scopes the user
    /// granted it, which narrow what the account may do.
    pub app: Option<AppGrant>,
}

impl Subject {
    /// Whether the subject holds `r`.
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }
    fn clinical(&self) -> bool {
        self.roles.iter().any(|r| r.is_clinical())
    }
}

/// A FHIR interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// read, vread (and the resources of an operation's answer)
    Read,
    /// search-type
    Search,
    /// history
    History,
    /// create (and update-as-create)
    Create,
    /// update
    Update,
    /// delete
    Delete,
}

impl Action {
    /// Whether the interaction changes data.
    pub fn is_write(self) -> bool {
        matches!(self, Action::Create | Action::Update | Action::Delete)
    }
    /// The interaction's name.
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
    /// Not patient data (Practitioner, Organization, a care team of a
    /// department, ...): reference data.
    None,
    /// One patient's data (decided with that patient's facts).
    One,
    /// A search across patients.
    Any,
}

/// On what a FHIR interaction acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The resource type.
    pub rtype: ResourceType,
    /// Whose data.
    pub scope: PatientScope,
}

/// Facts about the subject and the target that the caller looked up in
/// the store. Only the ones an operation's rule reads matter; the others
/// stay `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The subject has a care relationship with the target patient.
    pub care_relationship: bool,
    /// The subject holds a live break-glass grant for the target patient.
    pub break_glass: bool,
    /// The target (a token, a grant, a message, a request, a merge, a
    /// declaration) was made by the subject, or belongs to it.
    pub own: bool,
    /// The account the operation changes is the subject's own.
    pub target_is_self: bool,
    /// The BCP plan in force names the subject as a decider.
    pub plan_decider: bool,
    /// The BCP plan in force names the subject as keeper of the medical
    /// records (merges, filing received documents, reconciliation).
    pub records_manager: bool,
    /// The plan in force built in (a fresh installation): its deciders
    /// are a placeholder an admin replaces.
    pub plan_is_builtin: bool,
    /// Registration without the reception desk is open to the subject now
    /// (the emergency phase allows it, or the plan names the subject's
    /// department).
    pub registration_open: bool,
    /// The maintenance window in force grants the scope asked for.
    pub scope_granted: bool,
    /// The patient decided on is the one an app acting for the subject
    /// was launched for (its `patient/` scopes reach that patient only).
    pub app_patient: bool,
}

/// Why access was granted or refused; recorded in every audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Basis {
    /// A care relationship with the patient.
    CareRelationship,
    /// A live break-glass grant for the patient.
    BreakGlass,
    /// A declared emergency opens clinical access (ETREAT).
    EmergencyAccess,
    /// Demographics, by role.
    RoleDemographics,
    /// Reference data, by role.
    RoleReferenceData,
    /// The auditor role.
    RoleAuditor,
    /// The admin role.
    RoleAdmin,
    /// A role the operation is for (e.g. a clinician asking break-glass).
    RolePermitted,
    /// The subject's own session, account or records.
    Own,
    /// Open to every authenticated account (the plan, the partner list).
    Authenticated,
    /// A search across patients, restricted to the subject's own patients.
    RestrictedToCareRelationships,
    /// The BCP plan names the subject as a decider.
    PlanDecider,
    /// The BCP team: a plan decider, a bcp-decider or an admin.
    BcpTeam,
    /// The plan names the subject as keeper of the medical records.
    RecordsManagement,
    /// Registration without the reception desk is open.
    RegistrationOpen,
    /// A maintenance window with the patient-data scope (read-only).
    MaintenanceAccess,
    /// A maintenance window granting the scope asked for.
    MaintenanceScope,
    /// The server itself, or the local operator on its host.
    System,
    /// Denied: no care relationship and no other ground.
    NoCareRelationship,
    /// Denied: no role of the subject allows the operation.
    RoleNotPermitted,
    /// Denied: a sealed emergency account outside a declared emergency.
    EmergencyAccountSealed,
    /// Denied: the resource type is not stored through the API.
    NotStorable,
    /// Denied: the operation would give an administrator clinical access,
    /// or mix administration and clinical roles on one account.
    SeparationOfDuties,
    /// Denied: a second person must do this (confirm, approve, review).
    SamePerson,
    /// Denied: the operation would lock the subject out (its own admin role).
    SelfLockout,
    /// Denied: the target belongs to someone else.
    NotOwn,
    /// Denied: emergency accounts are managed only through their lifecycle.
    EmergencyAccountManaged,
    /// Denied: the plan does not name the subject as a decider.
    NotPlanDecider,
    /// Denied: registration without the reception desk is closed now.
    RegistrationClosed,
    /// Denied: the maintenance window does not grant this scope.
    NotInScope,
    /// Denied: a one-time password must be changed first.
    PasswordChangeRequired,
    /// Denied: bulk work with patient data waits until the emergency is
    /// over (emergency powers serve the care of one patient at a time).
    NotDuringEmergency,
    /// Denied: the app's token does not reach this (its scopes, or its
    /// patient).
    NotInAppScope,
}

impl Basis {
    /// The basis's name in audit events and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::CareRelationship => "care-relationship",
            Basis::BreakGlass => "break-glass",
            Basis::EmergencyAccess => "emergency-access",
            Basis::RoleDemographics => "role-demographics",
            Basis::RoleReferenceData => "role-reference-data",
            Basis::RoleAuditor => "role-auditor",
            Basis::RoleAdmin => "role-admin",
            Basis::RolePermitted => "role-permitted",
            Basis::Own => "own",
            Basis::Authenticated => "authenticated",
            Basis::RestrictedToCareRelationships => "restricted-to-care-relationships",
            Basis::PlanDecider => "plan-decider",
            Basis::BcpTeam => "bcp-team",
            Basis::RecordsManagement => "records-management",
            Basis::RegistrationOpen => "registration-open",
            Basis::MaintenanceAccess => "maintenance-access",
            Basis::MaintenanceScope => "maintenance-scope",
            Basis::System => "system",
            Basis::NoCareRelationship => "no-care-relationship",
            Basis::RoleNotPermitted => "role-not-permitted",
            Basis::EmergencyAccountSealed => "emergency-account-sealed",
            Basis::NotStorable => "not-storable",
            Basis::SeparationOfDuties => "separation-of-duties",
            Basis::SamePerson => "same-person",
            Basis::SelfLockout => "self-lockout",
            Basis::NotOwn => "not-own",
            Basis::EmergencyAccountManaged => "emergency-account-managed",
            Basis::NotPlanDecider => "not-plan-decider",
            Basis::RegistrationClosed => "registration-closed",
            Basis::NotInScope => "not-in-scope",
            Basis::PasswordChangeRequired => "password-change-required",
            Basis::NotDuringEmergency => "not-during-emergency",
            Basis::NotInAppScope => "not-in-app-scope",
        }
    }

    /// What a person is told about a denial on this basis.
    pub fn explain(self) -> &'static str {
        match self {
            Basis::NoCareRelationship => "you have no care relationship with this patient; in an emergency, request break-glass access (POST /api/v1/break-glass)",
            Basis::RoleNotPermitted => "none of your roles allows this",
            Basis::EmergencyAccountSealed => "emergency accounts work only while an emergency is declared",
            Basis::NotStorable => "this resource type is not stored through the API",
            Basis::SeparationOfDuties => "separation of duties: an administrator never gains clinical access, and one account never holds both administration and clinical roles",
            Basis::SamePerson => "this needs a second person: someone other than who made the request",
            Basis::SelfLockout => "you cannot disable yourself or remove your own admin role",
            Basis::NotOwn => "this belongs to someone else",
            Basis::EmergencyAccountManaged => "emergency accounts are changed only through their own lifecycle (provision, envelope, retirement)",
            Basis::NotPlanDecider => "the BCP plan in force does not name you as a decider",
            Basis::RegistrationClosed => "registration without the reception desk is not open now (the plan opens it in declared emergencies, and at any time for the departments it names)",
            Basis::NotInScope => "the maintenance window does not grant this",
            Basis::NotInAppScope => "the app's access token does not reach this: its scopes, or the patient it was launched for",
            Basis::NotDuringEmergency => "not while an emergency is declared: bulk export waits for the return to normal",
            Basis::PasswordChangeRequired => {
                "password change required: a one-time password must be changed first (POST /api/v1/auth/password)"
            }
            _ => "permitted",
        }
    }
}

/// HL7 v3 PurposeOfUse codes recorded in the audit event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PurposeOfUse {
    /// Treatment.
    #[serde(rename = "TREAT")]
    Treat,
    /// Emergency treatment.
    #[serde(rename = "ETREAT")]
    EmergencyTreat,
    /// Break the glass.
    #[serde(rename = "BTG")]
    BreakTheGlass,
    /// Healthcare operations.
    #[serde(rename = "HOPERAT")]
    Operations,
    /// System administration.
    #[serde(rename = "HSYSADMIN")]
    SystemAdmin,
    /// Compliance (audit).
    #[serde(rename = "HCOMPL")]
    Compliance,
}

impl PurposeOfUse {
    /// The code.
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
    /// Parses a code.
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
    /// Restrict a cross-patient search to the subject's care relationships
    /// (resources naming no patient stay visible).
    RestrictToCareRelationships,
    /// Restrict a search to resources that name no patient.
    ReferenceDataOnly,
    /// A drill: the emergency rules would have permitted this access.
    WouldPermitInEmergency,
    /// The change takes effect only when a second admin approves it.
    SecondAdminApproval,
}

/// The outcome of [`authorize`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Permitted or not.
    pub permit: bool,
    /// Why.
    pub basis: Basis,
    /// The purpose of use recorded for a permit.
    pub purpose: Option<PurposeOfUse>,
    /// What the caller must also do.
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
    /// Whether the decision carries `o`.
    pub fn has(&self, o: Obligation) -> bool {
        self.obligations.contains(&o)
    }
}
