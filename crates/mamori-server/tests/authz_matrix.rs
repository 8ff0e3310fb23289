//! Each way patient data left its care boundary before the service layer
//! (issue 12), as a named regression test over HTTPS, and a matrix of
//! roles against endpoints that hold patient data.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn merge_params(source: &str, target: &str, preview: bool) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{source}")}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{target}")}},
        {"name": "preview", "valueBoolean": preview}]})
}

/// A server with two physicians: dr.a cares for patient A (with an
/// Observation), dr.b for patient B (with an Observation).
struct Ward {
    s: TestServer,
    dr_a: String,
    dr_b: String,
    pa: String,
    pb: String,
    obs_a: String,
    obs_b: String,
}

async fn ward(tag: &str) -> Ward {
    let s = TestServer::start(tag).await;
    let dr_a = s.user("dr.a", &["physician"]).await;
    let dr_b = s.user("dr.b", &["physician"]).await;
    let pa = s.patient(&dr_a, "Ay", "A").await;
    let pb = s.patient(&dr_b, "Be", "B").await;
    let r = s.post("/fhir/Observation", &dr_a, observation(&pa, "8867-4", 71.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let obs_a = r.body["id"].as_str().unwrap().to_owned();
    let r = s.post("/fhir/Observation", &dr_b, observation(&pb, "8867-4", 88.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let obs_b = r.body["id"].as_str().unwrap().to_owned();
    Ward { s, dr_a, dr_b, pa, pb, obs_a, obs_b }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_needs_access_to_both_patients_preview_included() {
    let w = ward("authz-merge").await;
    let s = &w.s;
    // dr.a cares for A only: merging B into A (preview or not) is refused,
    // and the preview does not list B's record ids.
    for preview in [true, false] {
        let r =
            s.req(Method::POST, "/fhir/Patient/$merge", Some(&w.dr_a), Some(merge_params(&w.pb, &w.pa, preview))).await;
        assert_eq!(r.status, 403, "preview={preview}: {}", r.text);
        assert!(!r.text.contains(&w.obs_b), "{}", r.text);
        let ev = s.last_audit();
        assert_eq!(ev["basis"], "no-care-relationship", "{ev}");
    }
    assert_eq!(obs_subject(s, &w.obs_b), format!("Patient/{}", w.pb));
    let r = s.get(&format!("/fhir/Observation/{}", w.obs_b), &w.dr_a).await;
    assert_eq!(r.status, 403);
    // With care of both, the same physician may.
    s.assign(&w.pb, "dr.a").await;
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&w.dr_a), Some(merge_params(&w.pb, &w.pa, true))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The records keeper (clerks by default) merges without clinical access.
    let clerk = s.user("clerk.m", &["clerk"]).await;
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&w.pb, &w.pa, false))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(obs_subject(s, &w.obs_b), format!("Patient/{}", w.pa));
}

fn obs_subject(s: &TestServer, id: &str) -> String {
    let body = s.text(
        "SELECT v.body FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = 'Observation' AND r.id = $1",
        &[id],
    );
    serde_json::from_str::<Value>(&body).unwrap()["subject"]["reference"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_never_reaches_clinical_data() {
    let w = ward("authz-admin").await;
    let s = &w.s;
    // No token for a clinician.
    let r = s.post("/api/v1/tokens", &s.admin, json!({"user": "dr.a", "label": "x"})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "separation-of-duties");
    // No clinical role for itself, and none beside admin.
    let r = s
        .req(Method::PATCH, "/api/v1/users/admin", Some(&s.admin), Some(json!({"roles": ["admin", "physician"]})))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "separation-of-duties");
    let r =
        s.req(Method::PATCH, "/api/v1/users/admin2", Some(&s.admin), Some(json!({"roles": ["admin", "nurse"]}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Care assigned to itself gives nothing: it holds no clinical role.
    let r = s.post("/api/v1/care-assignments", &s.admin, json!({"patient": w.pa, "user": "admin"})).await;
    assert!(r.status == 201 || r.status == 422, "{}", r.text);
    for path in
        [format!("/fhir/Observation/{}", w.obs_a), format!("/fhir/Patient/{}", w.pa), "/fhir/Observation".into()]
    {
        let r = s.get(&path, &s.admin).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text);
    }
    // A clinical grant waits for a second admin; the requester cannot approve it.
    let r = s.post("/api/v1/users", &s.admin, json!({"name": "ns.new", "display": "N", "roles": ["nurse"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let req = r.body["pending_request"].as_i64().expect("pending");
    let r = s.post(&format!("/api/v1/account-requests/{req}/approve"), &s.admin, json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "same-person");
    let r = s.post(&format!("/api/v1/account-requests/{req}/approve"), &s.admin2, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_made_with_a_token_name_the_token_and_its_issuer() {
    let w = ward("authz-token").await;
    let s = &w.s;
    let r = s.post("/api/v1/tokens", &w.dr_a, json!({"label": "script"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (tok, id) = (r.body["token"].as_str().unwrap().to_owned(), r.body["id"].as_str().unwrap().to_owned());
    let r = s.get(&format!("/fhir/Observation/{}", w.obs_a), &tok).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!(ev["agent"]["user"], "dr.a");
    assert_eq!(ev["agent"]["token"], id.as_str(), "{ev}");
    assert!(ev["agent"].get("issuer").is_none(), "one's own token: the holder is the issuer: {ev}");
    // A service account's token, issued by the admin: its events name both.
    let r = s
        .post(
            "/api/v1/users",
            &s.admin,
            json!({"name": "svc.reg", "display": "Registration kiosk", "roles": ["clerk"], "kind": "service"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/api/v1/tokens", &s.admin, json!({"user": "svc.reg", "label": "kiosk"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (tok, id) = (r.body["token"].as_str().unwrap().to_owned(), r.body["id"].as_str().unwrap().to_owned());
    let r = s.get(&format!("/fhir/Patient/{}", w.pa), &tok).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!(ev["agent"]["user"], "svc.reg", "{ev}");
    assert_eq!(ev["agent"]["token"], id.as_str(), "{ev}");
    assert_eq!(ev["agent"]["issuer"], "admin", "{ev}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_patient_brings_no_care_relationship() {
    let w = ward("authz-recreate").await;
    let s = &w.s;
    let clerk = s.user("clerk.r", &["clerk"]).await;
    let r = s.delete(&format!("/fhir/Patient/{}", w.pb), &clerk).await;
    assert!(r.status == 200 || r.status == 204, "{}", r.text);
    // dr.a re-creates B's id: an update of a known id, not a registration.
    let r = s
        .put(
            &format!("/fhir/Patient/{}", w.pb),
            &w.dr_a,
            json!({"resourceType": "Patient", "id": w.pb, "name": [{"family": "Again"}]}),
        )
        .await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let r = s.get(&format!("/fhir/Observation/{}", w.obs_b), &w.dr_a).await;
    assert_eq!(r.status, 403, "the old records stay out of reach: {}", r.text);
    let care =
        s.count(&format!("SELECT COUNT(*) FROM care_assignments WHERE patient = '{}' AND user_name = 'dr.a'", w.pb));
    assert_eq!(care, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_naming_a_patient_anywhere_is_that_patients_data() {
    let w = ward("authz-compartment").await;
    let s = &w.s;
    let clerk = s.user("clerk.c", &["clerk"]).await;
    let auditor = s.user("aud.c", &["auditor"]).await;
    // An Observation whose only link to B is its performer.
    let mut o = observation(&w.pb, "8310-5", 36.5);
    o.as_object_mut().unwrap().remove("subject");
    o["performer"] = json!([{"reference": format!("Patient/{}", w.pb)}]);
    let r = s.post("/fhir/Observation", &w.dr_a, o.clone()).await;
    assert_eq!(r.status, 403, "dr.a has no care of B: {}", r.text);
    let r = s.post("/fhir/Observation", &w.dr_b, o).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let perf = r.body["id"].as_str().unwrap().to_owned();
    // An Appointment whose participant is B.
    let appt = json!({"resourceType": "Appointment", "status": "booked",
        "participant": [{"actor": {"reference": format!("Patient/{}", w.pb)}, "status": "accepted"}]});
    let r = s.post("/fhir/Appointment", &w.dr_a, appt.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.post("/fhir/Appointment", &w.dr_b, appt).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let appt_id = r.body["id"].as_str().unwrap().to_owned();
    // Not reference data: other roles do not read it.
    for (who, t) in [("dr.a", &w.dr_a), ("clerk", &clerk), ("auditor", &auditor), ("admin", &s.admin)] {
        for path in [format!("/fhir/Observation/{perf}"), format!("/fhir/Appointment/{appt_id}")] {
            let r = s.get(&path, t).await;
            assert_eq!(r.status, 403, "{who} {path}: {}", r.text);
        }
    }
    // In $everything and in "who looked at this patient".
    let r = s.get(&format!("/fhir/Patient/{}/$everything", w.pb), &w.dr_b).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["id"].as_str()).collect();
    assert!(ids.contains(&perf.as_str()) && ids.contains(&appt_id.as_str()), "{ids:?}");
    let r = s.get(&format!("/fhir/Appointment/{appt_id}"), &w.dr_b).await;
    assert_eq!(r.status, 200);
    let r = s.get(&format!("/api/v1/audit/reports/patient?patient={}", w.pb), &auditor).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The clerk touched B only through the performer Observation and the
    // Appointment: the attempts are in B's report.
    let users: Vec<&str> = r.body["events"].as_array().unwrap().iter().filter_map(|e| e["user"].as_str()).collect();
    assert!(users.contains(&"clerk.c") && users.contains(&"aud.c"), "{users:?}");
    // A clinical record naming no patient is refused at write.
    let mut orphan = observation(&w.pa, "8867-4", 60.0);
    orphan.as_object_mut().unwrap().remove("subject");
    let r = s.post("/fhir/Observation", &w.dr_a, orphan).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("patient"), "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nurses_and_pharmacists_write_what_their_role_writes() {
    let w = ward("authz-writers").await;
    let s = &w.s;
    let nurse = s.user("ns.w", &["nurse"]).await;
    let pharm = s.user("ph.w", &["pharmacist"]).await;
    s.assign(&w.pa, "ns.w").await;
    s.assign(&w.pa, "ph.w").await;
    let r = s.post("/fhir/Observation", &nurse, observation(&w.pa, "8310-5", 37.1)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let disp = json!({"resourceType": "MedicationDispense", "status": "completed",
        "medicationCodeableConcept": {"text": "アムロジピン 5mg"}, "subject": {"reference": format!("Patient/{}", w.pa)}});
    let r = s.post("/fhir/MedicationDispense", &pharm, disp.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Not for a patient outside their care; no orders for a nurse.
    let r = s.post("/fhir/Observation", &nurse, observation(&w.pb, "8310-5", 37.1)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let order = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": format!("Patient/{}", w.pa)}});
    let r = s.post("/fhir/MedicationRequest", &nurse, order).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.post("/fhir/Observation", &pharm, observation(&w.pa, "8310-5", 37.1)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // The pharmacist sees the reconciliation tasks clinicians work on.
    let r = s.get("/api/v1/reconcile/tasks", &pharm).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provenance_belongs_to_its_targets_patient() {
    let w = ward("authz-provenance").await;
    let s = &w.s;
    let prov = json!({"resourceType": "Provenance", "recorded": "2026-12-01T10:00:00+09:00",
        "target": [{"reference": format!("Observation/{}", w.obs_a)}],
        "agent": [{"who": {"display": "paper chart transcription"}}]});
    let r = s.post("/fhir/Provenance", &w.dr_b, prov.clone()).await;
    assert_eq!(r.status, 403, "dr.b has no care of A: {}", r.text);
    let r = s.post("/fhir/Provenance", &w.dr_a, prov).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get(&format!("/fhir/Provenance?target=Observation/{}", w.obs_a), &w.dr_a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["entry"][0]["resource"]["id"], id.as_str());
    let r = s.get(&format!("/fhir/Provenance/{id}"), &w.dr_b).await;
    assert_eq!(r.status, 403, "{}", r.text);
}

/// Every role of the hospital against reads of one patient's data: only
/// the physician with care reads it; every refusal is audited with a basis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_against_one_patients_data() {
    let w = ward("authz-matrix").await;
    let s = &w.s;
    let roles = [
        ("nurse", s.user("m.nurse", &["nurse"]).await),
        ("pharmacist", s.user("m.pharm", &["pharmacist"]).await),
        ("clerk", s.user("m.clerk", &["clerk"]).await),
        ("auditor", s.user("m.aud", &["auditor"]).await),
        ("bcp-decider", s.user("m.bcp", &["bcp-decider"]).await),
        ("admin", s.admin.clone()),
        ("physician without care", w.dr_b.clone()),
    ];
    let paths = [
        format!("/fhir/Observation/{}", w.obs_a),
        format!("/fhir/Observation?patient={}", w.pa),
        format!("/fhir/Patient/{}/$everything", w.pa),
        format!("/fhir/Observation/{}/_history", w.obs_a),
    ];
    for p in &paths {
        let r = s.get(p, &w.dr_a).await;
        assert_eq!(r.status, 200, "dr.a {p}: {}", r.text);
    }
    for (role, t) in &roles {
        for p in &paths {
            let before = s.audit_count();
            let r = s.get(p, t).await;
            assert_eq!(r.status, 403, "{role} {p}: {}", r.text);
            assert_eq!(r.body["resourceType"], "OperationOutcome", "{role} {p}");
            assert!(s.audit_count() > before, "{role} {p}: the refusal is audited");
            let ev = s.last_audit();
            assert!(ev["basis"].as_str().is_some_and(|b| !b.is_empty()), "{role} {p}: {ev}");
        }
        // Searches across patients never return A's data to them.
        let r = s.get("/fhir/Observation", t).await;
        assert!(!r.text.contains(&w.obs_a), "{role}: {}", r.text);
    }
}
