//! The FHIR record store's use cases: read, vread, history, search,
//! `$everything`, create, update, delete, batch and transaction Bundles.
//!
//! Every interaction is decided per patient, for every patient the data
//! concerns (a resource is the data of every patient it names), and
//! audited: writes in the same transaction as the change, reads before the
//! data is handed out as [`crate::Audited`]. If the audit event cannot be
//! committed, the interaction fails (rule 1).

pub mod bundle;
pub mod read;
pub mod system;
pub mod write;

use mamori_audit::event::AuditRecord;
use mamori_core::fhir::validate::{validate_resource, Issue};
use mamori_core::ids::{is_fhir_id, ResourceType};
use mamori_core::policy::{Decision, Obligation};
use mamori_core::time::Timestamp;
use mamori_store::search::Restriction;
use serde_json::{json, Value};

use crate::actor::Actor;
use crate::error::ServiceError;
use crate::services::Services;

pub use write::{Step, WriteOp};

/// Parses `a=b&c=d` (a query string or a form body), percent-decoding.
pub fn parse_pairs(q: &str) -> Result<Vec<(String, String)>, ServiceError> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, ServiceError> {
    let mut bytes = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .ok_or_else(|| ServiceError::invalid("", "malformed percent-encoding in query"))?;
                bytes.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| ServiceError::invalid("", "malformed percent-encoding in query"))?,
                );
                i += 2;
            }
            c => bytes.push(c),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| ServiceError::invalid("", "query is not UTF-8"))
}

/// URL-encodes a query component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Parses a resource type named in a request.
pub fn parse_type(t: &str) -> Result<ResourceType, ServiceError> {
    ResourceType::parse(t).map_err(|e| ServiceError::NotFound(e.to_string()))
}

/// Checks an id named in a request.
pub fn parse_id(id: &str) -> Result<(), ServiceError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(ServiceError::invalid(
            "id",
            format!("'{}' is not a valid FHIR id", id.chars().take(70).collect::<String>()),
        ))
    }
}

/// Parses `If-Match: W/"3"`.
pub fn parse_etag(v: &str) -> Result<u64, ServiceError> {
    let t = v.trim();
    let t = t.strip_prefix("W/").unwrap_or(t);
    t.trim_matches('"').parse().map_err(|_| ServiceError::invalid("If-Match", "expected an ETag like W/\"3\""))
}

/// Validates a resource body for `rtype`, including that a type which
/// records care names a patient.
pub fn validate_body(rtype: ResourceType, body: &Value) -> Result<(), ServiceError> {
    let t = validate_resource(body).map_err(ServiceError::Invalid)?;
    if t != rtype {
        return Err(ServiceError::invalid("resourceType", format!("body is a {t}, but the URL names {rtype}")));
    }
    Ok(())
}

/// A resource of a clinical type must name its patient (a write's last
/// check, on the body as stored: a bundle's `urn:uuid:` references are
/// resolved by then). Genuinely patient-independent types are exempt.
pub fn require_patient(rtype: ResourceType, id: &str, body: &Value) -> Result<(), ServiceError> {
    if mamori_core::fhir::compartment::requires_patient(rtype)
        && mamori_core::fhir::compartment::patients_named(rtype, id, body).is_empty()
    {
        return Err(ServiceError::Unprocessable(vec![Issue {
            path: rtype.as_str().to_owned(),
            message: format!(
                "a {rtype} is part of a patient's record: it must name its patient (subject or patient: {{\"reference\": \"Patient/<id>\"}})"
            ),
        }]));
    }
    Ok(())
}

/// The patient a person means: a patient id (`Patient/` optional) that
/// exists, tombstones included, or else the medical record number (any
/// identifier value) of exactly one current patient. An unknown or
/// ambiguous identifier is an error, never an empty answer: "nobody
/// looked at this patient" must not come from a mistyped number.
pub fn resolve_patient(c: &mut dyn mamori_store::sql::Conn, input: &str) -> Result<String, ServiceError> {
    let t = input.trim();
    let t = t.strip_prefix("Patient/").unwrap_or(t);
    if t.is_empty() {
        return Err(ServiceError::invalid("patient", "give a patient id or medical record number"));
    }
    if is_fhir_id(t) && mamori_store::records::current(c, "Patient", t)?.is_some() {
        return Ok(t.to_owned());
    }
    match mamori_store::continuity::patients_with_identifier(c, t)?.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(ServiceError::NotFound(format!("no patient has the id or medical record number '{t}'"))),
        _ => Err(ServiceError::invalid(
            "patient",
            format!("'{t}' is the record number of several patients; give the patient id"),
        )),
    }
}

/// The restriction a search decision asks for.
pub(crate) fn restriction(d: &Decision, actor: &Actor, now: Timestamp) -> Restriction {
    if d.has(Obligation::ReferenceDataOnly) {
        Restriction::ReferenceDataOnly
    } else if d.has(Obligation::RestrictToCareRelationships) {
        Restriction::CareOf { user: actor.name().to_owned(), department: actor.user.department.clone(), now }
    } else {
        Restriction::None
    }
}

/// What the `_has` clauses of `q` may look at: each referring type is
/// decided as a search of that type across patients (a clinician's own
/// patients' records; nothing clinical for other roles), so that a
/// reverse chain never reveals a record its caller could not find by
/// searching for it. `Err`: the decision that refused one.
pub(crate) fn has_scope(
    actor: &Actor,
    q: &mamori_core::fhir::search::SearchQuery,
    now: Timestamp,
) -> Result<Vec<(ResourceType, Restriction)>, Decision> {
    use mamori_core::policy::{Action, Facts, Operation, PatientScope, Target};
    let mut out = Vec::new();
    for source in q.has_sources() {
        let op =
            Operation::Record { action: Action::Search, target: Target { rtype: source, scope: PatientScope::Any } };
        let d = crate::authz::decide(actor, &op, Facts::default());
        if !d.permit {
            return Err(d);
        }
        out.push((source, restriction(&d, actor, now)));
    }
    Ok(out)
}

/// Audits a request refused before it reached the store (malformed input,
/// a format the client cannot have) under its FHIR interaction's name.
pub async fn reject(
    svc: &Services,
    actor: &Actor,
    action: &str,
    rtype: Option<&str>,
    id: Option<&str>,
    e: ServiceError,
) -> ServiceError {
    let mut rec = actor.fhir_record(action, e.status(), rtype, id, None, vec![], e.decision(), svc.now());
    rec.detail = Some(json!({"error": e.message()}));
    match svc.audit(vec![rec]).await {
        Ok(_) => e,
        Err(se) => se,
    }
}

/// An audit record for an error of a FHIR interaction.
pub(crate) fn error_record(
    actor: &Actor,
    action: &str,
    rtype: Option<&str>,
    id: Option<&str>,
    e: &ServiceError,
    now: Timestamp,
) -> AuditRecord {
    let mut rec = actor.fhir_record(action, e.status(), rtype, id, None, vec![], e.decision(), now);
    rec.detail = Some(json!({"error": e.message()}));
    rec
}
