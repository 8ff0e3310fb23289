//! Audit events as FHIR R4 AuditEvent resources following IHE Basic Audit
//! Log Patterns (BALP): RESTful interactions as type `rest` with the
//! interaction as subtype, logins with DICOM codes, the purpose of use
//! (BTG, ETREAT, ...) in `purposeOfEvent` and on the user agent, patients
//! as entities with role "patient", and mamori's operating mode as an
//! extension. A read-only view: the leaf stays the evidence.

use serde_json::{json, Value};

use crate::event::AuditRecord;

/// The extension carrying the operating mode.
pub const MODE_EXTENSION: &str = "https://mamori.dev/fhir/StructureDefinition/operating-mode";
/// The extension carrying the policy basis of the decision.
pub const BASIS_EXTENSION: &str = "https://mamori.dev/fhir/StructureDefinition/access-basis";

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const REST: &str = "http://hl7.org/fhir/restful-interaction";
const PURPOSE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The FHIR AuditEvent.action code (C/R/U/D/E) of an action name.
pub fn action_code(action: &str) -> &'static str {
    match action {
        "create" => "C",
        "read" | "vread" | "search-type" | "search-system" | "history-instance" | "history-type" | "audit-read" => "R",
        "update" => "U",
        "delete" => "D",
        _ => "E",
    }
}

/// Action names for each AuditEvent.action code (for searching).
pub fn actions_for_code(code: &str) -> Option<&'static [&'static str]> {
    Some(match code {
        "C" => &["create"],
        "R" => &["read", "vread", "search-type", "search-system", "history-instance", "history-type", "audit-read"],
        "U" => &["update"],
        "D" => &["delete"],
        _ => return None,
    })
}

fn rest_interaction(action: &str) -> bool {
    matches!(
        action,
        "create"
            | "read"
            | "vread"
            | "update"
            | "delete"
            | "search-type"
            | "search-system"
            | "history-instance"
            | "history-type"
            | "batch"
            | "transaction"
            | "operation"
    )
}

/// Renders event `index` of the log named `origin`.
pub fn to_audit_event(index: u64, r: &AuditRecord, origin: &str) -> Value {
    let (type_, subtype) = match r.action.as_str() {
        "login" => (
            json!({"system": DCM, "code": "110114", "display": "User Authentication"}),
            json!([{"system": DCM, "code": "110122", "display": "Login"}]),
        ),
        "logout" => (
            json!({"system": DCM, "code": "110114", "display": "User Authentication"}),
            json!([{"system": DCM, "code": "110123", "display": "Logout"}]),
        ),
        "login-failure" | "auth-failure" => (
            json!({"system": DCM, "code": "110114", "display": "User Authentication"}),
            json!([{"system": DCM, "code": "110122", "display": "Login"}]),
        ),
        a if rest_interaction(a) => (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!([{"system": REST, "code": a}]),
        ),
        a if a.starts_with("audit-") || a.starts_with("checkpoint") => (
            json!({"system": DCM, "code": "110101", "display": "Audit Log Used"}),
            json!([{"system": "https://mamori.dev/fhir/CodeSystem/action", "code": a}]),
        ),
        a if a.starts_with("system-") || a.starts_with("server-") => (
            json!({"system": DCM, "code": "110100", "display": "Application Activity"}),
            json!([{"system": "https://mamori.dev/fhir/CodeSystem/action", "code": a}]),
        ),
        a => (
            json!({"system": DCM, "code": "110113", "display": "Security Alert"}),
            json!([{"system": "https://mamori.dev/fhir/CodeSystem/action", "code": a}]),
        ),
    };
    let outcome = match r.status {
        s if s < 400 => "0",
        s if s < 500 => "4",
        _ => "8",
    };
    let purpose = r.purpose.as_ref().map(|p| json!([{"coding": [{"system": PURPOSE, "code": p}]}]));
    let mut user = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "humanuser", "display": "human user"}]},
        "who": {"identifier": {"system": "https://mamori.dev/fhir/NamingSystem/user", "value": r.agent.user}},
        "requestor": true,
    });
    if let Some(d) = &r.agent.declared {
        user["name"] = json!(d);
    }
    if !r.agent.roles.is_empty() {
        user["role"] = json!(r
            .agent
            .roles
            .iter()
            .map(|x| json!({"coding": [{"system": "https://mamori.dev/fhir/CodeSystem/role", "code": x}]}))
            .collect::<Vec<_>>());
    }
    if let Some(a) = &r.agent.address {
        user["network"] = json!({"address": a, "type": "2"});
    }
    if let Some(p) = &purpose {
        user["purposeOfUse"] = p.clone();
    }
    if let Some(t) = &r.agent.token {
        user["altId"] = json!(format!("token:{t}"));
    }
    let mut entities = Vec::new();
    if let Some(e) = &r.entity {
        let mut ent = json!({"type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}});
        match (&e.id, e.version) {
            (Some(id), Some(v)) => ent["what"] = json!({"reference": format!("{}/{id}/_history/{v}", e.rtype)}),
            (Some(id), None) => ent["what"] = json!({"reference": format!("{}/{id}", e.rtype)}),
            // A search or a type-level interaction: the type, not an instance.
            (None, _) => ent["name"] = json!(e.rtype),
        }
        if let Some(q) = &r.query {
            use base64::Engine;
            ent["query"] = json!(base64::engine::general_purpose::STANDARD.encode(q.as_bytes()));
        }
        entities.push(ent);
    }
    for p in &r.patients {
        entities.push(json!({
            "what": {"reference": format!("Patient/{p}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    let mut ext = vec![json!({"url": MODE_EXTENSION, "valueString": r.mode})];
    if let Some(b) = &r.basis {
        ext.push(json!({"url": BASIS_EXTENSION, "valueCode": b}));
    }
    let mut agents = vec![user];
    if let Some(i) = &r.agent.issuer {
        // Whoever issued the token the user acted with (an admin, for a
        // service account) answers for it too.
        agents.push(json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type", "code": "authserver", "display": "authorization server"}], "text": "token issuer"},
            "who": {"identifier": {"system": "https://mamori.dev/fhir/NamingSystem/user", "value": i}},
            "requestor": false,
        }));
    }
    agents.push(json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "custodian"}]},
        "who": {"display": origin},
        "requestor": false,
    }));
    let mut ev = json!({
        "resourceType": "AuditEvent",
        "id": index.to_string(),
        "extension": ext,
        "type": type_,
        "subtype": subtype,
        "action": action_code(&r.action),
        "recorded": r.time,
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": origin}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
    });
    if r.status >= 400 {
        ev["outcomeDesc"] = json!(format!("HTTP {}", r.status));
    }
    if let Some(p) = purpose {
        ev["purposeOfEvent"] = p;
    }
    if !entities.is_empty() {
        ev["entity"] = Value::Array(entities);
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Agent, Entity};

    #[test]
    fn break_glass_read_renders_as_balp() {
        let r = AuditRecord {
            time: "2026-11-26T09:00:00.000Z".into(),
            mode: "normal".into(),
            agent: Agent {
                user: "dr.x".into(),
                kind: "staff".into(),
                roles: vec!["physician".into()],
                declared: None,
                issuer: None,
                token: None,
                address: Some("10.0.0.5".into()),
            },
            action: "read".into(),
            entity: Some(Entity { rtype: "Observation".into(), id: Some("o1".into()), version: Some(2) }),
            patients: vec!["p1".into()],
            status: 200,
            basis: Some("break-glass".into()),
            purpose: Some("BTG".into()),
            request: None,
            query: None,
            detail: None,
            versions: Vec::new(),
        };
        let ev = to_audit_event(7, &r, "mamori.test/audit");
        assert_eq!(ev["action"], "R");
        assert_eq!(ev["subtype"][0]["code"], "read");
        assert_eq!(ev["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
        assert_eq!(ev["agent"][0]["purposeOfUse"][0]["coding"][0]["code"], "BTG");
        assert_eq!(ev["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(ev["extension"][0]["valueString"], "normal");
        // A valid R4 resource by mamori's own validator.
        assert!(mamori_core::fhir::validate::validate_resource(&ev).is_ok());
    }
}
