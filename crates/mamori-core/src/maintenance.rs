//! Remote maintenance (guideline 6.10 EX-B1e, EX-B2a): what a maintenance
//! window may do, who may approve it, and the map from a maintenance
//! request to its scope. No IO.

use serde::{Deserialize, Serialize};

use crate::mode::Mode;
use crate::time::Timestamp;

/// What a maintenance window allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read the effective configuration (secrets redacted).
    Configuration,
    /// Read the server's status, recent errors and metrics.
    Logs,
    /// Database statistics, integrity check, WAL checkpoint.
    Database,
    /// Verify the audit log.
    Audit,
    /// Restart the server (graceful stop for the service manager to restart).
    Restart,
    /// Read patient data (every access audited per patient). Separate and explicit.
    PatientData,
}

impl Scope {
    /// Every scope, in declaration order.
    pub const ALL: [Scope; 6] =
        [Scope::Configuration, Scope::Logs, Scope::Database, Scope::Audit, Scope::Restart, Scope::PatientData];
    /// The scope's name in the database and the API (`patient_data`).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Configuration => "configuration",
            Scope::Logs => "logs",
            Scope::Database => "database",
            Scope::Audit => "audit",
            Scope::Restart => "restart",
            Scope::PatientData => "patient_data",
        }
    }
    /// Parses a name made by [`Scope::as_str`].
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|x| x.as_str() == s)
    }
}

/// The scope a request on the maintenance listener needs; `None` when no
/// scope allows it (refused). Patient data is read-only.
pub fn scope_for(method: &str, path: &str) -> Option<Scope> {
    let get = method == "GET" || method == "HEAD";
    if path.starts_with("/fhir/") || path == "/fhir" {
        return get.then_some(Scope::PatientData);
    }
    let ops = path.strip_prefix("/api/v1/maintenance/ops/")?;
    match (method, ops) {
        ("GET", "config") => Some(Scope::Configuration),
        ("GET", "status") => Some(Scope::Logs),
        ("GET", "db") | ("POST", "db/check") | ("POST", "db/analyze") => Some(Scope::Database),
        ("GET", "audit/verify") => Some(Scope::Audit),
        ("POST", "restart") => Some(Scope::Restart),
        _ => None,
    }
}

/// Whether `now` is inside the window [start, end).
pub fn in_window(start: Timestamp, end: Timestamp, now: Timestamp) -> bool {
    start <= now && now < end
}

/// Checks a window request: sensible times, at least one scope, at most
/// `max_hours` long.
pub fn check_window(
    start: Timestamp,
    end: Timestamp,
    now: Timestamp,
    scopes: &[Scope],
    max_hours: i64,
) -> Result<(), String> {
    if scopes.is_empty() {
        return Err("at least one scope".into());
    }
    if end <= start {
        return Err("the window must end after it starts".into());
    }
    if end <= now {
        return Err("the window is already over".into());
    }
    if end.micros() - start.micros() > max_hours * 3_600_000_000 {
        return Err(format!("a window may last at most {max_hours} hours"));
    }
    Ok(())
}

/// Who may approve: an admin other than the requester; during a real
/// declared emergency, a BCP decider may approve an emergency request alone.
#[allow(clippy::too_many_arguments)]
pub fn approval(
    approver: &str,
    requester: &str,
    approver_is_admin: bool,
    approver_is_decider: bool,
    emergency_request: bool,
    mode: &Mode,
    already: &[String],
    needed: usize,
) -> Result<bool, String> {
    if approver == requester {
        return Err("a request is approved by someone other than who made it".into());
    }
    if already.iter().any(|a| a == approver) {
        return Err("you already approved this request".into());
    }
    let decider_path = emergency_request && approver_is_decider && mode.is_real_emergency();
    if !approver_is_admin && !decider_path {
        return Err(if emergency_request {
            "approval needs an admin, or a BCP decider while an emergency is declared".into()
        } else {
            "approval needs an admin".into()
        });
    }
    // Complete when enough approvals are in (a decider's emergency approval suffices).
    Ok(decider_path || already.len() + 1 >= needed.max(1))
}

/// Whether an address is in an allow-list of CIDR blocks (IPv4 and IPv6).
pub fn allowed_source(addr: std::net::IpAddr, cidrs: &[String]) -> bool {
    cidrs.iter().any(|c| cidr_contains(c, addr))
}

fn cidr_contains(cidr: &str, addr: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (net, bits) = match cidr.split_once('/') {
        Some((n, b)) => (n, b.parse::<u32>().ok()),
        None => (cidr, None),
    };
    let Ok(net) = net.trim().parse::<IpAddr>() else { return false };
    let addr = match (net, addr) {
        (IpAddr::V4(_), IpAddr::V6(a)) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
        (_, a) => a,
    };
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let b = bits.unwrap_or(32).min(32);
            let mask = if b == 0 { 0 } else { u32::MAX << (32 - b) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let b = bits.unwrap_or(128).min(128);
            let mask = if b == 0 { 0 } else { u128::MAX << (128 - b) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Checks an allow-list's syntax.
pub fn valid_cidr(c: &str) -> bool {
    let (net, bits) = match c.split_once('/') {
        Some((n, b)) => (n, Some(b)),
        None => (c, None),
    };
    match net.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => bits.is_none_or(|b| b.parse::<u32>().is_ok_and(|b| b <= 32)),
        Ok(std::net::IpAddr::V6(_)) => bits.is_none_or(|b| b.parse::<u32>().is_ok_and(|b| b <= 128)),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Phase;

    #[test]
    fn scopes_of_requests() {
        assert_eq!(scope_for("GET", "/fhir/Patient/1"), Some(Scope::PatientData));
        assert_eq!(scope_for("PUT", "/fhir/Patient/1"), None, "patient data is read-only");
        assert_eq!(scope_for("GET", "/api/v1/maintenance/ops/db"), Some(Scope::Database));
        assert_eq!(scope_for("POST", "/api/v1/maintenance/ops/restart"), Some(Scope::Restart));
        assert_eq!(scope_for("GET", "/api/v1/users"), None);
        assert_eq!(scope_for("DELETE", "/api/v1/maintenance/ops/db"), None);
        assert_eq!(Scope::parse("patient_data"), Some(Scope::PatientData));
    }

    #[test]
    fn windows() {
        let t = |s: i64| Timestamp::from_secs(s);
        assert!(in_window(t(10), t(20), t(10)) && !in_window(t(10), t(20), t(20)));
        assert!(check_window(t(10), t(20), t(0), &[Scope::Logs], 8).is_ok());
        assert!(check_window(t(20), t(10), t(0), &[Scope::Logs], 8).is_err());
        assert!(check_window(t(10), t(20), t(30), &[Scope::Logs], 8).is_err());
        assert!(check_window(t(0), t(10 * 3600), t(0), &[Scope::Logs], 8).is_err());
        assert!(check_window(t(10), t(20), t(0), &[], 8).is_err());
    }

    #[test]
    fn who_approves() {
        let normal = Mode::Normal;
        let em = Mode::Emergency { phase: Phase::Activation, drill: false, open_access: true, registration: true };
        assert!(approval("a", "a", true, false, false, &normal, &[], 1).is_err());
        assert_eq!(approval("b", "a", true, false, false, &normal, &[], 1), Ok(true));
        assert_eq!(approval("b", "a", true, false, false, &normal, &[], 2), Ok(false));
        assert_eq!(approval("c", "a", true, false, false, &normal, &["b".into()], 2), Ok(true));
        assert!(approval("b", "a", true, false, false, &normal, &["b".into()], 2).is_err());
        assert!(approval("d", "a", false, true, true, &normal, &[], 2).is_err(), "deciders only in a real emergency");
        assert_eq!(approval("d", "a", false, true, true, &em, &[], 2), Ok(true));
        assert!(approval("d", "a", false, true, false, &em, &[], 1).is_err(), "only emergency requests");
    }

    #[test]
    fn source_allow_lists() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let l = vec!["10.1.0.0/16".to_owned(), "192.0.2.7".to_owned(), "2001:db8::/32".to_owned()];
        assert!(allowed_source(ip("10.1.2.3"), &l));
        assert!(!allowed_source(ip("10.2.0.1"), &l));
        assert!(allowed_source(ip("192.0.2.7"), &l));
        assert!(allowed_source(ip("2001:db8::5"), &l));
        assert!(allowed_source(ip("::ffff:10.1.9.9"), &l));
        assert!(!allowed_source(ip("127.0.0.1"), &l));
        assert!(valid_cidr("127.0.0.1/32") && valid_cidr("::1") && !valid_cidr("10.0.0.0/33") && !valid_cidr("x"));
    }
}
