//! Bad input changes nothing: each gets the right status and an
//! OperationOutcome naming the problem, and the store is exactly as before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestServer;
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = TestServer::start("bad").await;
    let doc = s.user("dr.bad", &["physician"]).await;
    let pid = s.patient(&doc, "Bad", "Input").await;
    let fhir = "application/fhir+json";

    // (description, method, path, body, content-type, expected status, expected text in the outcome)
    let cases: Vec<(&str, Method, String, String, &str, u16, &str)> = vec![
        ("malformed JSON", Method::POST, "/fhir/Patient".into(), "{\"resourceType\": \"Patient\",".into(), fhir, 400, "malformed JSON"),
        ("not an object", Method::POST, "/fhir/Patient".into(), "[1,2]".into(), fhir, 400, "JSON object"),
        ("wrong resourceType", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}).to_string(), fhir, 400, "URL names Patient"),
        ("unknown resourceType", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patientt"}).to_string(), fhir, 400, "unknown resource type"),
        ("unknown type in URL", Method::POST, "/fhir/Nonsense".into(), json!({"resourceType": "Patient"}).to_string(), fhir, 404, "not an R4 resource type"),
        ("invalid id in body", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patient", "id": "bad id!"}).to_string(), fhir, 400, "Patient.id"),
        ("invalid id in URL", Method::PUT, "/fhir/Patient/bad%20id".into(), json!({"resourceType": "Patient", "id": "bad id"}).to_string(), fhir, 400, "not a valid FHIR id"),
        ("id mismatch", Method::PUT, format!("/fhir/Patient/{pid}"), json!({"resourceType": "Patient", "id": "other"}).to_string(), fhir, 400, "does not match"),
        ("missing id on update", Method::PUT, format!("/fhir/Patient/{pid}"), json!({"resourceType": "Patient"}).to_string(), fhir, 400, "must carry the resource id"),
        ("wrong type of value", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patient", "birthDate": 1980}).to_string(), fhir, 400, "Patient.birthDate"),
        ("bad code", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patient", "gender": "M"}).to_string(), fhir, 400, "Patient.gender"),
        ("unknown element", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patient", "nmae": [{"family": "x"}]}).to_string(), fhir, 400, "Patient.nmae"),
        ("missing required", Method::POST, "/fhir/Observation".into(), json!({"resourceType": "Observation", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}}).to_string(), fhir, 400, "Observation.status"),
        ("malformed reference", Method::POST, "/fhir/Observation".into(), json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/"}}).to_string(), fhir, 400, "Observation.subject.reference"),
        ("dangling reference", Method::POST, "/fhir/Observation".into(), json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}, "performer": [{"reference": "Practitioner/ghost"}]}).to_string(), fhir, 422, "Practitioner/ghost does not exist"),
        ("XML body", Method::POST, "/fhir/Patient".into(), "<Patient xmlns=\"http://hl7.org/fhir\"/>".into(), "application/fhir+xml", 415, "not supported"),
        ("storing AuditEvent", Method::POST, "/fhir/AuditEvent".into(), json!({"resourceType": "AuditEvent"}).to_string(), fhir, 403, "denied"),
        ("bad If-Match", Method::PUT, format!("/fhir/Patient/{pid}"), json!({"resourceType": "Patient", "id": pid}).to_string(), fhir, 400, "If-Match"),
        ("a condition in a create's URL", Method::POST, "/fhir/Patient?identifier=urn:mrn|1".into(), json!({"resourceType": "Patient"}).to_string(), fhir, 400, "If-None-Exist"),
        ("PATCH in a bundle with a Binary of another type", Method::POST, "/fhir".into(), json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="}, "request": {"method": "PATCH", "url": format!("Patient/{pid}")}}]}).to_string(), fhir, 400, "application/json-patch+json"),
        ("not a Bundle", Method::POST, "/fhir".into(), json!({"resourceType": "Patient"}).to_string(), fhir, 400, "Bundle"),
        ("bundle of wrong type", Method::POST, "/fhir".into(), json!({"resourceType": "Bundle", "type": "collection"}).to_string(), fhir, 400, "batch or transaction"),
        ("bundle entry without request", Method::POST, "/fhir".into(), json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Patient"}}]}).to_string(), fhir, 400, "needs a request"),
        ("duplicate key", Method::POST, "/fhir/Patient".into(), "{\"resourceType\": \"Patient\", \"gender\": \"male\", \"gender\": \"female\"}".into(), fhir, 400, "duplicate key \\\"gender\\\""),
        ("integer beyond 64 bits", Method::POST, "/fhir/Observation".into(), format!("{{\"resourceType\": \"Observation\", \"status\": \"final\", \"code\": {{\"text\": \"x\"}}, \"subject\": {{\"reference\": \"Patient/{pid}\"}}, \"valueInteger\": 1234567890123456789012345678901234567890}}"), fhir, 400, "too large to be kept exactly"),
        ("string over 1 MiB", Method::POST, "/fhir/Patient".into(), json!({"resourceType": "Patient", "name": [{"text": "x".repeat((1 << 20) + 1)}]}).to_string(), fhir, 400, "a string of 1048577 bytes"),
        ("deep nesting", Method::POST, "/fhir/Basic".into(), format!("{{\"resourceType\":\"Basic\",\"code\":{{\"text\":\"x\"}},\"extension\":[{{\"url\":\"http://x\",\"valueString\":\"y\",\"z\":{}1{}}}]}}", "[".repeat(200), "]".repeat(200)), fhir, 400, "malformed JSON"),
    ];
    for (what, method, path, body, ct, status, needle) in cases {
        let before = s.snapshot();
        let audits = s.audit_count();
        let headers: Vec<(&str, &str)> = if what == "bad If-Match" { vec![("if-match", "three")] } else { vec![] };
        let r = s.raw(method, &path, Some(&doc), Some((body, ct)), &headers).await;
        assert_eq!(r.status.as_u16(), status, "{what}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{what}: {}", r.text);
        assert!(r.text.contains(needle), "{what}: expected '{needle}' in {}", r.text);
        assert_eq!(s.snapshot(), before, "{what}: the store changed");
        assert_eq!(s.audit_count(), audits + 1, "{what}: the refusal is audited once");
        assert_eq!(s.last_audit()["status"], status, "{what}");
    }

    // Oversize body: 413 and nothing stored.
    let before = s.snapshot();
    let big = json!({"resourceType": "Patient", "name": [{"text": "x".repeat(17 * 1024 * 1024)}]}).to_string();
    let r = s.raw(Method::POST, "/fhir/Patient", Some(&doc), Some((big, fhir)), &[]).await;
    assert_eq!(r.status, 413, "{}", r.text);
    assert_eq!(r.body["issue"][0]["code"], "too-costly");
    assert_eq!(s.snapshot(), before);

    // Search: malformed values are refused; an unknown parameter is
    // ignored and reported by default, refused under handling=strict.
    for q in
        ["birthdate=yesterday", "name:fuzzy=x", "_count=-1", "_sort=link", "_sort=-nmae", "identifier=|", "_id=a%20b"]
    {
        let r = s.get(&format!("/fhir/Patient?{q}"), &doc).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
    let r = s.get("/fhir/Patient?nmae=x&_count=1", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["entry"].as_array().unwrap();
    let outcome = entries.iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry");
    assert_eq!(outcome["resource"]["issue"][0]["code"], "not-supported");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("'nmae'"));
    let self_link = r.body["link"][0]["url"].as_str().unwrap();
    assert!(self_link.ends_with("/fhir/Patient?_count=1"), "the self link shows only what was applied: {self_link}");
    let r = s.raw(Method::GET, "/fhir/Patient?nmae=x", Some(&doc), None, &[("prefer", "handling=strict")]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("nmae"), "{}", r.text);
    let r = s.raw(Method::GET, "/fhir/Patient", Some(&doc), None, &[("accept", "application/fhir+xml")]).await;
    assert_eq!(r.status, 406);
    let r = s.get("/fhir/Patient?_format=xml", &doc).await;
    assert_eq!(r.status, 406);
    let r = s.get(&format!("/fhir/Patient/{pid}/_history/abc"), &doc).await;
    assert_eq!(r.status, 400);
    let r = s.get(&format!("/fhir/Patient/{pid}/$nonsense"), &doc).await;
    assert_eq!(r.status, 404);

    // Hostile strings are stored as data and returned escaped in JSON.
    let hostile = "<script>alert('x')</script>\"; DROP TABLE resources; --";
    let r = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "name": [{"family": hostile}]})).await;
    assert_eq!(r.status, 201);
    let r = s.get(&format!("/fhir/Patient?family={}", mamori_service::records::enc(hostile)), &doc).await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["entry"][0]["resource"]["name"][0]["family"], hostile);
}

#[tokio::test]
async fn ops_api_bad_input() {
    let s = TestServer::start("opsbad").await;
    let before = s.snapshot();
    for (path, body, status) in [
        ("/api/v1/users", "{", 400),
        ("/api/v1/users", r#"{"name":"Bad Name","display":"x"}"#, 400),
        ("/api/v1/users", r#"{"name":"ok","display":"x","roles":["wizard"]}"#, 400),
        ("/api/v1/users", r#"{"name":"ok","display":"x","extra":1}"#, 400),
        ("/api/v1/users", r#"{"name":"system","display":"x"}"#, 400),
        ("/api/v1/users", r#"{"name":"admin","display":"again"}"#, 409),
        ("/api/v1/users", r#"{"name":"weak","display":"x","password":"short"}"#, 400),
        ("/api/v1/care-assignments", r#"{"patient":"nope","user":"admin"}"#, 422),
        ("/api/v1/care-assignments", r#"{"patient":"a b","user":"admin"}"#, 400),
        ("/api/v1/care-assignments", r#"{"patient":"p"}"#, 400),
        ("/api/v1/tokens", r#"{"ttl_hours":0}"#, 400),
        ("/api/v1/tokens", r#"{"user":"ghost"}"#, 404),
    ] {
        let r = s.raw(Method::POST, path, Some(&s.admin), Some((body.to_owned(), "application/json")), &[]).await;
        assert_eq!(r.status.as_u16(), status, "{path} {body}: {}", r.text);
        assert!(r.body["message"].is_string(), "{}", r.text);
    }
    assert_eq!(s.snapshot(), before);
}
