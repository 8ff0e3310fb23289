//! Who is told of what: the roles each kind of announcement goes to,
//! besides the named people it concerns. Part of the policy, so that
//! "who learns of a break-glass use" is decided in one place too.

use super::Role;

/// A kind of announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// An alert (detection, failed snapshot, exchange trouble, ...).
    Alert,
    /// A declaration waits for a second decider.
    EmergencyProposed,
    /// Used emergency accounts were retired and replaced.
    EmergencyAccountsRetired,
    /// A break-glass use (told also to the patient's care team and the user).
    BreakGlass,
    /// A partner was suspended or activated.
    PartnerStatus,
    /// A received document matched no patient.
    InboundUnmatched,
    /// A send to a partner failed for good (told also to its sender).
    ExchangeFailed,
    /// A maintenance window was asked for.
    MaintenanceRequested {
        /// For an emergency (BCP deciders may approve it then).
        emergency: bool,
    },
    /// A maintenance window was revoked, or its review is due.
    MaintenanceReview,
}

/// The roles told of `n`.
pub fn told(n: Notice) -> Vec<Role> {
    match n {
        Notice::Alert => vec![Role::BcpDecider, Role::Admin, Role::Auditor],
        Notice::EmergencyProposed | Notice::EmergencyAccountsRetired => vec![Role::BcpDecider, Role::Admin],
        Notice::BreakGlass => vec![Role::Auditor],
        Notice::PartnerStatus | Notice::MaintenanceReview => vec![Role::Admin, Role::Auditor],
        Notice::InboundUnmatched => vec![Role::Clerk, Role::Admin],
        Notice::ExchangeFailed => vec![Role::Admin],
        Notice::MaintenanceRequested { emergency: false } => vec![Role::Admin],
        Notice::MaintenanceRequested { emergency: true } => vec![Role::Admin, Role::BcpDecider],
    }
}
