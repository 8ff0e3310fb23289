//! Every operation the system performs, as one enum: the FHIR
//! interactions and every operations action. A new endpoint gets a
//! variant here and a rule in `rules.rs`, never a role check of its own.

use super::{Action, Role, SubjectKind, Target};
use crate::maintenance::Scope;

/// A set of roles, small and `Copy` (an operation describes a role change
/// with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RoleSet(u16);

impl RoleSet {
    /// The set of `roles`.
    pub fn of(roles: &[Role]) -> RoleSet {
        RoleSet(roles.iter().fold(0, |acc, r| acc | RoleSet::bit(*r)))
    }
    fn bit(r: Role) -> u16 {
        let i = Role::ALL.iter().position(|x| *x == r).unwrap_or(0);
        1 << i
    }
    /// Whether `r` is in the set.
    pub fn contains(self, r: Role) -> bool {
        self.0 & RoleSet::bit(r) != 0
    }
    /// Whether any clinical role is in the set.
    pub fn any_clinical(self) -> bool {
        Role::ALL.iter().any(|r| r.is_clinical() && self.contains(*r))
    }
    /// The roles in `self` that are not in `other`.
    pub fn minus(self, other: RoleSet) -> RoleSet {
        RoleSet(self.0 & !other.0)
    }
    /// The roles, in [`Role::ALL`] order.
    pub fn roles(self) -> Vec<Role> {
        Role::ALL.into_iter().filter(|r| self.contains(*r)).collect()
    }
}

/// What is asked. Parameters are the properties of the request the rule
/// needs (which roles a change grants, which kind of account it touches);
/// relations to the subject (ownership, care, the plan) are [`super::Facts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    // ---- records --------------------------------------------------------------------
    /// A FHIR interaction; decided per patient for patient data. Anything
    /// else that reveals a patient's records (an export, a send, a merge
    /// preview) is decided as a `Record` read of each patient's data too.
    Record {
        /// The interaction.
        action: Action,
        /// On what.
        target: Target,
    },

    // ---- one's own session and account ------------------------------------------------
    /// Who am I, the mode, log out, the event stream, one's own tokens
    /// (list, revoke).
    OwnSession,
    /// Change one's own password.
    OwnPasswordChange,
    /// Enrol one's own second factor.
    OwnTotpEnroll,

    // ---- accounts ---------------------------------------------------------------------
    /// List accounts, or read another's.
    UserRead,
    /// Create an account with these roles.
    UserCreate {
        /// The roles asked for.
        roles: RoleSet,
        /// Staff or a service account.
        kind: SubjectKind,
    },
    /// Replace an account's roles.
    UserRolesChange {
        /// The roles before.
        from: RoleSet,
        /// The roles asked for.
        to: RoleSet,
        /// The kind of account changed.
        target: SubjectKind,
    },
    /// Disable, enable, rename, move to another department.
    UserStatusChange {
        /// Whether the change (re-)enables the account.
        enable: bool,
        /// Whether it disables the account.
        disable: bool,
        /// The kind of account changed.
        target: SubjectKind,
    },
    /// Give another account a new one-time password.
    UserPasswordReset {
        /// The kind of account.
        target: SubjectKind,
        /// The account holds a clinical role.
        target_clinical: bool,
    },
    /// Enrol or remove another account's second factor.
    UserTotpChange {
        /// The kind of account.
        target: SubjectKind,
    },
    /// List the account changes waiting for a second admin.
    AccountRequestRead,
    /// Approve (or reject) an account change another admin asked for.
    AccountRequestDecide,
    /// Issue an API token to an account (`Facts::target_is_self` for one's own).
    TokenIssue {
        /// The kind of account the token is for.
        holder: SubjectKind,
    },
    /// List or revoke other accounts' tokens.
    TokenManage,
    /// Assign a person or a department to a patient's care
    /// (`Facts::care_relationship`: the subject's own with that patient).
    CareAssign,
    /// List every care assignment (one's own are `OwnSession`).
    CareReadAll,
    /// End a care assignment.
    CareEnd,

    // ---- the emergency procedure (BCP) ----------------------------------------------------
    /// Read the plan, the declarations and their phases.
    BcpRead,
    /// Import a plan.
    BcpPlanChange {
        /// The new plan changes who decides, or the two-person rule.
        deciders_changed: bool,
    },
    /// Declare an emergency (or a drill).
    BcpDeclare,
    /// Confirm another decider's declaration (`Facts::own`: one's own).
    BcpConfirm,
    /// Move a declaration to another phase, or back to normal.
    BcpTransition,
    /// Tick a checklist item.
    BcpChecklist,
    /// Read the after-action review (it names break-glass uses and the
    /// people behind emergency accounts).
    BcpReviewRead,
    /// Write the after-action review.
    BcpReviewWrite,
    /// Read the cyber-attack incident report.
    IncidentReportRead,
    /// Record that the report was made to an authority.
    IncidentReportRecord,
    /// Read and acknowledge alerts.
    AlertRead,
    /// Read the delivery records of announcements.
    NotificationRead,

    // ---- break-glass ----------------------------------------------------------------------
    /// Ask for break-glass access to a patient.
    BreakGlassRequest,
    /// Read a grant (`Facts::own`: one's own), or list one's own.
    BreakGlassRead,
    /// List every grant.
    BreakGlassReadAll,
    /// Review a grant (`Facts::own`: one's own).
    BreakGlassReview,
    /// End a grant early (`Facts::own`).
    BreakGlassEnd,

    // ---- emergency accounts ------------------------------------------------------------
    /// List emergency accounts and their states.
    EmergencyAccountRead,
    /// Provision accounts, record printed envelopes.
    EmergencyAccountManage,

    // ---- exchange ------------------------------------------------------------------------
    /// Read the partner registry and the institution's identity.
    PartnerRead,
    /// Register, change, suspend, activate partners.
    PartnerManage,
    /// Send to partners (each resource sent is also a `Record` read of
    /// its patient's data).
    ExchangeSend,
    /// Read a sent message (`Facts::own`: one's own), or list one's own.
    ExchangeMessageRead,
    /// List every sent message, export the ledger.
    ExchangeMessageReadAll,
    /// Read received documents' summaries (partner-supplied demographics).
    InboundRead,
    /// File a received document into a patient's record (per patient:
    /// the records keeper, or a `Record` create of that patient's data).
    InboundFile,
    /// Read the quarantine (refused messages, no patient data).
    QuarantineRead,

    // ---- continuity ----------------------------------------------------------------------
    /// Register a patient without the reception desk.
    ProvisionalRegister,
    /// List provisional patients (demographics).
    ProvisionalRead,
    /// Merge two patients, preview one, or undo one (per patient: the
    /// records keeper, or clinical access to that patient's data).
    PatientMerge,
    /// Read recorded merges (patient ids and resource references).
    MergeRead,
    /// Review a merge (`Facts::own`: made by the subject).
    MergeReview,
    /// Read snapshots, custodians, verify snapshots.
    SnapshotRead,
    /// Make snapshots, create the custodians' key.
    SnapshotManage,
    /// Import what a standalone node recorded.
    ReconcileImport,
    /// Read imports and reconciliation tasks (clinical bodies in a task are
    /// also a `Record` read of its patient's data).
    ReconcileRead,
    /// Resolve a reconciliation task (its writes are also decided per
    /// patient).
    ReconcileResolve,

    // ---- remote maintenance (the hospital's side) -----------------------------------------
    /// Read vendors, people, requests, the report.
    MaintenanceRead,
    /// Add vendors and people, reject and revoke windows.
    MaintenanceManage,
    /// Ask for a maintenance window on a vendor's behalf.
    MaintenanceRequest,
    /// Approve a window (`Facts::own`: the subject asked for it, or is its
    /// maintenance person).
    MaintenanceApprove {
        /// The request is for an emergency.
        emergency_request: bool,
    },
    /// Review a window after it closed (`Facts::own`: asked for it).
    MaintenanceReview,
    /// An operation on the maintenance listener (`Facts::scope_granted`).
    MaintenanceScoped {
        /// The scope it needs.
        scope: Scope,
    },

    // ---- the audit log ---------------------------------------------------------------------
    /// Read events, verify the log, run reports.
    AuditRead,

    // ---- compliance ------------------------------------------------------------------------
    /// Produce and read compliance reports (counts and states, no
    /// patient data): auditors and administrators.
    ComplianceReport,

    // ---- bulk export -----------------------------------------------------------------------
    /// Start a FHIR Bulk Data export. Each resource exported is also a
    /// `Record` read, decided like a search's matches.
    BulkExport,
    /// Poll, download or cancel an export (`Facts::own`: started by the
    /// subject).
    BulkExportRead,

    // ---- third-party apps (SMART App Launch) -----------------------------------------------
    /// Register, change or disable the apps that may ask users for access.
    AppManage,
    /// List the registered apps, and launch one from a chart (what the
    /// app then reads is decided as the user's reads, narrowed by the
    /// scopes the user grants it).
    AppUse,

    // ---- FHIR conformance ----------------------------------------------------------------
    /// Validate a resource the caller sends (`$validate`): nothing stored
    /// is read or changed.
    FhirValidate,
}

impl Operation {
    /// A short name, for the audit event and the access matrix.
    pub fn name(&self) -> String {
        let s = format!("{self:?}");
        s.split([' ', '{', '(']).next().unwrap_or("").to_owned()
    }
}
