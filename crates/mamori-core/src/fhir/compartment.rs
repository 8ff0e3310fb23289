//! The Patient compartment: which patients' data a resource is.
//!
//! FHIR R4's CompartmentDefinition/patient (4.0.1) lists, for each resource
//! type, the search parameters that put an instance into a patient's
//! compartment (`Observation.subject` and `Observation.performer`,
//! `Appointment.actor`, `Group.member`, ...). Every one of those parameters
//! is a reference to the Patient. mamori's rule is that set made simple and
//! closed: **a resource is the data of every patient it references**, by
//! any element (the listed ones, and any other, e.g. `Observation.focus`,
//! `Task.for` or `Device.patient`, which the definition leaves out), in
//! contained resources too. A Patient is its own compartment. A Provenance
//! is also the data of its targets' patients (the store resolves those,
//! [`RESOLVED_THROUGH_TARGETS`]).
//!
//! A resource that names no patient is reference data. The types of the
//! definition that record care ([`requires_patient`]) must name one: an
//! Observation about nobody would be readable by every role.
//!
//! This module must never decide access: it only says whose data a
//! resource is; `policy::authorize` decides per patient.

use serde_json::Value;

use crate::fhir::resource_types::in_patient_compartment;
use crate::ids::{LocalRef, ResourceType};

/// Elements that name the patient a record is about; their patient comes
/// first in [`patients_named`] (the primary patient).
const PRIMARY: &[&str] = &["subject", "patient", "beneficiary", "individual", "for", "candidate"];

/// Types of the compartment definition that may name no patient: their
/// instances have legitimate uses outside any one patient's record (a
/// department's care team, a staff meeting, a hospital policy document, a
/// population report, a lab's environmental specimen, a supply order, a
/// Provenance of reference data).
const PATIENT_INDEPENDENT: &[&str] = &[
    "Account",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "CareTeam",
    "ChargeItem",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "DocumentManifest",
    "DocumentReference",
    "Group",
    "Invoice",
    "List",
    "MeasureReport",
    "Person",
    "Provenance",
    "QuestionnaireResponse",
    "RequestGroup",
    "Schedule",
    "Specimen",
    "SupplyDelivery",
    "SupplyRequest",
];

/// Types whose instances are also the data of their targets' patients
/// (the element holding the targets).
pub const RESOLVED_THROUGH_TARGETS: &[(&str, &str)] = &[("Provenance", "target")];

/// Whether a resource of this type must name a patient to be stored: the
/// types of the R4 Patient compartment that record care.
pub fn requires_patient(rtype: ResourceType) -> bool {
    let t = rtype.as_str();
    rtype != ResourceType::PATIENT && in_patient_compartment(t) && !PATIENT_INDEPENDENT.contains(&t)
}

/// The element whose references are resolved to their own patients, if
/// this type has one (Provenance: `target`).
pub fn resolved_through(rtype: ResourceType) -> Option<&'static str> {
    RESOLVED_THROUGH_TARGETS.iter().find(|(t, _)| *t == rtype.as_str()).map(|(_, e)| *e)
}

/// The patients whose data this resource is, each once: the primary
/// patient (of `subject`, `patient`, ...) first, the others sorted: the Patient itself; otherwise every patient referenced anywhere
/// in the resource (relative references `Patient/<id>`, with or without a
/// version). Absolute URLs are references to other systems and name no
/// patient of this one.
pub fn patients_named(rtype: ResourceType, id: &str, res: &Value) -> Vec<String> {
    if rtype == ResourceType::PATIENT {
        return vec![id.to_owned()];
    }
    let mut out: Vec<String> = Vec::new();
    for k in PRIMARY {
        if let Some(p) = res.get(*k).and_then(|v| v.get("reference")).and_then(Value::as_str).and_then(patient_id) {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    let mut others = Vec::new();
    walk(res, &mut |p| others.push(p));
    others.sort();
    others.dedup();
    others.retain(|p| !out.contains(p));
    out.extend(others);
    out
}

/// The references held by `element` of a resource (for Provenance's
/// targets), as local references.
pub fn references_in(res: &Value, element: &str) -> Vec<LocalRef> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(r) = v.get("reference").and_then(Value::as_str).and_then(|s| LocalRef::parse(s).ok()) {
            out.push(r);
        }
    };
    match res.get(element) {
        Some(Value::Array(a)) => a.iter().for_each(&mut push),
        Some(v) => push(v),
        None => {}
    }
    out
}

fn patient_id(reference: &str) -> Option<String> {
    let r = LocalRef::parse(reference).ok()?;
    (r.rtype == ResourceType::PATIENT).then(|| r.id.as_str().to_owned())
}

fn walk(v: &Value, add: &mut impl FnMut(String)) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                if k == "reference" {
                    if let Some(p) = x.as_str().and_then(patient_id) {
                        add(p);
                    }
                } else {
                    walk(x, add);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, add)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> ResourceType {
        ResourceType::parse(s).unwrap()
    }

    #[test]
    fn a_patient_is_its_own_compartment() {
        let p = json!({"resourceType": "Patient", "link": [{"other": {"reference": "Patient/b"}, "type": "seealso"}]});
        assert_eq!(patients_named(ResourceType::PATIENT, "a", &p), vec!["a"]);
    }

    /// Each parameter the R4 definition lists for a type puts the instance
    /// in the patient's compartment; a few from the definition's table.
    #[test]
    fn parameters_of_the_r4_definition() {
        let cases = [
            ("Appointment", json!({"participant": [{"actor": {"reference": "Patient/p"}, "status": "accepted"}]})),
            ("Observation", json!({"performer": [{"reference": "Patient/p"}]})),
            ("AllergyIntolerance", json!({"asserter": {"reference": "Patient/p"}})),
            ("CareTeam", json!({"participant": [{"member": {"reference": "Patient/p"}}]})),
            ("Group", json!({"member": [{"entity": {"reference": "Patient/p"}}]})),
            ("Communication", json!({"recipient": [{"reference": "Patient/p"}]})),
            ("Procedure", json!({"performer": [{"actor": {"reference": "Patient/p"}}]})),
            ("Coverage", json!({"policyHolder": {"reference": "Patient/p"}})),
            ("Schedule", json!({"actor": [{"reference": "Patient/p"}]})),
            ("ResearchSubject", json!({"individual": {"reference": "Patient/p"}})),
            ("Person", json!({"link": [{"target": {"reference": "Patient/p"}}]})),
            ("Provenance", json!({"target": [{"reference": "Patient/p"}]})),
        ];
        for (rt, body) in cases {
            assert_eq!(patients_named(t(rt), "x", &body), vec!["p"], "{rt}");
        }
    }

    #[test]
    fn every_referenced_patient_counts_primary_first() {
        let o = json!({"resourceType": "Observation", "focus": [{"reference": "Patient/b"}],
            "subject": {"reference": "Patient/a"}, "performer": [{"reference": "Practitioner/d"}, {"reference": "Patient/b"}],
            "contained": [{"resourceType": "Observation", "subject": {"reference": "Patient/c/_history/2"}}]});
        assert_eq!(patients_named(t("Observation"), "o", &o), vec!["a", "b", "c"]);
        // Outside the definition's types too.
        let d = json!({"resourceType": "Device", "patient": {"reference": "Patient/a"}});
        assert_eq!(patients_named(t("Device"), "d", &d), vec!["a"]);
        // Absolute URLs and logical references name no patient here.
        let o = json!({"subject": {"reference": "https://other.example/fhir/Patient/a"},
            "performer": [{"identifier": {"value": "a"}}]});
        assert!(patients_named(t("Observation"), "o", &o).is_empty());
    }

    #[test]
    fn which_types_must_name_a_patient() {
        for rt in ["Observation", "Condition", "MedicationRequest", "Encounter", "AllergyIntolerance", "Procedure"] {
            assert!(requires_patient(t(rt)), "{rt}");
        }
        for rt in ["Patient", "Practitioner", "Organization", "Appointment", "CareTeam", "Composition", "Provenance"] {
            assert!(!requires_patient(t(rt)), "{rt}");
        }
        assert!(PATIENT_INDEPENDENT.iter().all(|t| in_patient_compartment(t)));
    }

    #[test]
    fn provenance_targets() {
        let p = json!({"target": [{"reference": "Observation/o1"}, {"reference": "Patient/p"}, {"display": "x"}]});
        let r = references_in(&p, "target");
        assert_eq!(r.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["Observation/o1", "Patient/p"]);
        assert_eq!(resolved_through(t("Provenance")), Some("target"));
        assert_eq!(resolved_through(t("Observation")), None);
    }
}
