//! Third-party apps (SMART App Launch 2.0): the scopes a user granted an
//! app, and how they narrow what the user may do. An app's token never
//! does more than its user could: [`super::authorize`] decides for the
//! user first, then [`AppGrant::narrow`] keeps a permit only if a scope
//! covers it.
//!
//! Scopes understood (SMART v2, with the v1 forms still in use):
//! - `patient/<Type|*>.<cruds>`: the resources of the patient the app was
//!   launched for (and resources that name no patient);
//! - `user/<Type|*>.<cruds>`: what the user may reach;
//! - `system/<Type|*>.<cruds>`: a backend service (SMART Backend
//!   Services), acting as the service account it is registered for: what
//!   that account may reach; with read access also Bulk Data exports;
//! - v1 `.read` (= `rs`), `.write` (= `cud`), `.*` (= `cruds`);
//! - `launch`, `launch/patient`, `openid`, `fhirUser`, `profile`,
//!   `offline_access`, `online_access`.
//!
//! Not granted (left out of the token's `scope`, which tells the app):
//! granular scopes with a query (`patient/Observation.rs?category=…`),
//! `launch/encounter`, and any scope this module does not know. Which
//! clients may hold `system/` scopes (backend clients only) is the
//! registration's to decide.

use super::{Action, Basis, Decision, Facts, Operation, PatientScope};
use crate::ids::ResourceType;

/// Whose data a resource scope reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// The patient the app was launched for.
    Patient,
    /// Whatever the user may reach.
    User,
    /// A backend service: whatever its service account may reach.
    System,
}

/// The interactions of a scope, as SMART v2 letters.
const C: u8 = 1;
const R: u8 = 2;
const U: u8 = 4;
const D: u8 = 8;
const S: u8 = 16;

/// One resource scope (`patient/Observation.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    /// Patient or user context.
    pub context: Context,
    /// The type, or `None` for `*`.
    pub rtype: Option<ResourceType>,
    /// The interactions (bits of c, r, u, d, s).
    perms: u8,
}

impl ResourceScope {
    /// Parses `patient/Observation.rs` (or a v1 form). `None`: not a
    /// resource scope this server grants.
    pub fn parse(s: &str) -> Option<ResourceScope> {
        let (ctx, rest) = s.split_once('/')?;
        let context = match ctx {
            "patient" => Context::Patient,
            "user" => Context::User,
            "system" => Context::System,
            _ => return None,
        };
        let (t, perms) = rest.split_once('.')?;
        let rtype = if t == "*" { None } else { Some(ResourceType::parse(t).ok()?) };
        let perms = match perms {
            "read" => R | S,
            "write" => C | U | D,
            "*" => C | R | U | D | S,
            p => {
                // The letters in the order c, r, u, d, s, each at most once.
                let mut bits = 0u8;
                let mut last = 0u8;
                for ch in p.chars() {
                    let b = match ch {
                        'c' => C,
                        'r' => R,
                        'u' => U,
                        'd' => D,
                        's' => S,
                        _ => return None,
                    };
                    if b <= last {
                        return None;
                    }
                    last = b;
                    bits |= b;
                }
                if bits == 0 {
                    return None;
                }
                bits
            }
        };
        Some(ResourceScope { context, rtype, perms })
    }

    fn covers(&self, rtype: ResourceType, letter: u8) -> bool {
        self.perms & letter != 0 && self.rtype.is_none_or(|t| t == rtype)
    }
}

/// The scopes that are not resource scopes.
const OTHER_SCOPES: &[&str] =
    &["launch", "launch/patient", "openid", "fhirUser", "profile", "offline_access", "online_access"];

/// A requested scope string split into what this server grants and what
/// it leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScopeRequest {
    /// The scopes granted, in the order asked (duplicates dropped).
    pub granted: Vec<String>,
    /// The scopes left out (unknown or unsupported).
    pub refused: Vec<String>,
}

impl ScopeRequest {
    /// Splits a space-separated scope string.
    pub fn parse(scope: &str) -> ScopeRequest {
        let mut out = ScopeRequest::default();
        for s in scope.split(' ').filter(|s| !s.is_empty()) {
            if out.granted.iter().chain(&out.refused).any(|g| g == s) {
                continue;
            }
            if OTHER_SCOPES.contains(&s) || ResourceScope::parse(s).is_some() {
                out.granted.push(s.to_owned());
            } else {
                out.refused.push(s.to_owned());
            }
        }
        out
    }
    /// Whether `s` was granted.
    pub fn has(&self, s: &str) -> bool {
        self.granted.iter().any(|g| g == s)
    }
    /// The granted scopes, space-separated.
    pub fn text(&self) -> String {
        self.granted.join(" ")
    }
    /// Keeps only the scopes `allowed` (an app's registered maximum)
    /// permits: a resource scope if a registered one covers every type and
    /// interaction it asks for; another scope if registered as is.
    pub fn within(mut self, allowed: &ScopeRequest) -> ScopeRequest {
        let reg: Vec<ResourceScope> = allowed.granted.iter().filter_map(|s| ResourceScope::parse(s)).collect();
        let (keep, drop): (Vec<String>, Vec<String>) =
            self.granted.into_iter().partition(|s| match ResourceScope::parse(s) {
                Some(r) => reg.iter().any(|a| {
                    a.context == r.context && (a.rtype.is_none() || a.rtype == r.rtype) && a.perms & r.perms == r.perms
                }),
                None => allowed.has(s),
            });
        self.granted = keep;
        self.refused.extend(drop);
        self
    }
    /// Whether any resource scope is granted.
    pub fn has_resource_scope(&self) -> bool {
        self.granted.iter().any(|s| ResourceScope::parse(s).is_some())
    }
    /// Whether a `patient/` scope is granted (the token needs a patient).
    pub fn needs_patient(&self) -> bool {
        self.granted.iter().filter_map(|s| ResourceScope::parse(s)).any(|r| r.context == Context::Patient)
    }
    /// Whether a `system/` scope is granted.
    pub fn has_system_scope(&self) -> bool {
        self.granted.iter().filter_map(|s| ResourceScope::parse(s)).any(|r| r.context == Context::System)
    }
    /// Whether every granted scope is a `system/` resource scope (what a
    /// backend client may hold), and there is one.
    pub fn only_system_scopes(&self) -> bool {
        !self.granted.is_empty()
            && self.granted.iter().all(|s| ResourceScope::parse(s).is_some_and(|r| r.context == Context::System))
    }
}

/// What a user granted an app: its resource scopes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AppGrant {
    /// The resource scopes.
    pub scopes: Vec<ResourceScope>,
}

impl AppGrant {
    /// The grant of a token's (granted) scope string.
    pub fn of(scope: &str) -> AppGrant {
        AppGrant { scopes: scope.split(' ').filter_map(ResourceScope::parse).collect() }
    }

    /// Narrows the user's decision `d` on `op` to what the scopes cover
    /// (`facts.app_patient`: the patient decided on is the app's).
    pub fn narrow(&self, op: &Operation, facts: &Facts, d: Decision) -> Decision {
        if !d.permit {
            return d;
        }
        match op {
            // Who am I, log out, revoke one's own token.
            Operation::OwnSession => d,
            Operation::Record { action, target } => {
                let letter = match action {
                    Action::Read => R,
                    Action::Search => S,
                    // Type-level history is a search; an instance's, a read.
                    Action::History if target.scope == PatientScope::Any => S,
                    Action::History => R,
                    Action::Create => C,
                    Action::Update => U,
                    Action::Delete => D,
                };
                let covering =
                    |ctx: Context| self.scopes.iter().any(|s| s.context == ctx && s.covers(target.rtype, letter));
                if covering(Context::User) || covering(Context::System) {
                    return d;
                }
                if covering(Context::Patient) {
                    let reach = match target.scope {
                        PatientScope::None => true,
                        PatientScope::One => facts.app_patient,
                        // A patient-context app searches in its patient's
                        // compartment (the service asks it that way).
                        PatientScope::Any => false,
                    };
                    if reach {
                        return d;
                    }
                }
                Decision::deny(Basis::NotInAppScope)
            }
            // A backend service that may read exports (Bulk Data): what
            // an export holds is then decided resource by resource, each
            // narrowed by these same scopes.
            Operation::BulkExport | Operation::BulkExportRead
                if self.scopes.iter().any(|s| s.context == Context::System && s.perms & R != 0) =>
            {
                d
            }
            // Nothing else through an app: administration, break-glass,
            // exchange, exports, emergencies stay with the user's own
            // session.
            _ => Decision::deny(Basis::NotInAppScope),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_in_v2_and_v1_forms() {
        let s = ResourceScope::parse("patient/Observation.rs").unwrap();
        assert_eq!(s.context, Context::Patient);
        assert!(s.covers(ResourceType::OBSERVATION, R) && s.covers(ResourceType::OBSERVATION, S));
        assert!(!s.covers(ResourceType::OBSERVATION, C) && !s.covers(ResourceType::PATIENT, R));
        let v1 = ResourceScope::parse("user/*.read").unwrap();
        assert!(v1.covers(ResourceType::PATIENT, R) && v1.covers(ResourceType::PATIENT, S));
        assert!(!v1.covers(ResourceType::PATIENT, U));
        assert_eq!(ResourceScope::parse("user/*.cruds").unwrap().perms, 31);
        assert_eq!(ResourceScope::parse("user/*.write").unwrap().perms, C | U | D);
        for bad in [
            "patient/Observation.sr",
            "patient/Observation.rr",
            "patient/Observation.x",
            "patient/Observation.",
            "backend/*.rs",
            "patient/NoSuchType.rs",
            "patient/Observation",
            "patient/Observation.rs?category=laboratory",
        ] {
            assert!(ResourceScope::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_request_keeps_what_is_known_and_registered() {
        let r = ScopeRequest::parse("launch/patient openid fhirUser patient/*.rs system/*.rs  bogus patient/*.rs");
        assert_eq!(r.granted, ["launch/patient", "openid", "fhirUser", "patient/*.rs", "system/*.rs"]);
        assert_eq!(r.refused, ["bogus"]);
        assert!(r.has_system_scope() && !r.only_system_scopes());
        assert!(ScopeRequest::parse("system/Observation.rs system/Patient.r").only_system_scopes());
        assert!(!ScopeRequest::parse("").only_system_scopes());
        assert!(r.needs_patient());
        let reg = ScopeRequest::parse("launch/patient openid patient/Observation.rs patient/Patient.r");
        let w =
            ScopeRequest::parse("launch/patient openid fhirUser patient/Observation.r patient/Patient.rs patient/*.rs")
                .within(&reg);
        assert_eq!(w.granted, ["launch/patient", "openid", "patient/Observation.r"]);
        assert_eq!(w.refused, ["fhirUser", "patient/Patient.rs", "patient/*.rs"]);
    }
}
