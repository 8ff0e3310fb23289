//! JP Core and JP-CLINS loaded as packages (from `../shared/fhir-jp/`, never
//! copied into the repository), over HTTPS: `$validate`, the write policy
//! (warn and enforce), the CapabilityStatement's supported profiles.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn fhir_jp() -> PathBuf {
    mamori_service::conformance::jp_definitions_dir()
        .expect("the JP FHIR definitions: set MAMORI_FHIR_JP to the folder holding jp-core/ and jp-clins/")
}

const CORE: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/";

fn example(name: &str) -> Value {
    let p = fhir_jp().join("jp-core/examples").join(name);
    let mut v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("id");
    v
}

async fn server(tag: &str) -> TestServer {
    let jp = fhir_jp();
    let extra = format!(
        "[fhir]\npackages = [{:?}, {:?}]\nvalidation = \"warn\"\n[fhir.type_validation]\nMedicationRequest = \"enforce\"\n[fhir.required]\nPatient = \"{CORE}JP_Patient\"\n",
        jp.join("jp-core").display().to_string(),
        jp.join("jp-clins").display().to_string(),
    );
    TestServer::start_cfg(tag, &extra, None).await
}

fn issues(r: &Value, severity: &str) -> Vec<String> {
    r["issue"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["severity"] == severity)
        .map(|i| format!("{}: {}", i["expression"][0].as_str().unwrap_or(""), i["diagnostics"].as_str().unwrap_or("")))
        .collect()
}

#[tokio::test]
async fn validate_operation_against_jp_core() {
    let s = server("jp-validate").await;
    let doc = s.user("doc", &["physician"]).await;

    // The CapabilityStatement names the loaded profiles and $validate.
    let m = s.req(Method::GET, "/fhir/metadata", None, None).await;
    let pat =
        m.body["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap().clone();
    let supported: Vec<&str> = pat["supportedProfile"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(supported.contains(&format!("{CORE}JP_Patient").as_str()), "{supported:?}");
    assert!(supported.contains(&"http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS"), "{supported:?}");
    assert!(pat["operation"].as_array().unwrap().iter().any(|o| o["name"] == "validate"));

    // A JP Core example validates without errors, against what it claims.
    let p = example("Patient-jp-patient-example-1.json");
    let r = s.post("/fhir/Patient/$validate", &doc, p.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert!(issues(&r.body, "error").is_empty(), "{}", r.text);
    assert!(r.text.contains("JP_Patient"), "{}", r.text);

    // Each known-bad variant is named.
    let mut bad = p.clone();
    bad.as_object_mut().unwrap().remove("identifier");
    bad["name"][1]["extension"][0]["valueCode"] = json!("KANA");
    let r = s.post("/fhir/Patient/$validate", &doc, bad.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = issues(&r.body, "error");
    assert!(e.iter().any(|e| e.starts_with("Patient.identifier: requires at least 1")), "{e:?}");
    assert!(e.iter().any(|e| e.starts_with("Patient.name[1].extension[0].valueCode: KANA")), "{e:?}");

    // The core rules come first: a malformed resource is named too.
    let r = s.post("/fhir/Patient/$validate", &doc, json!({"resourceType": "Patient", "gender": "yes"})).await;
    assert!(issues(&r.body, "error").iter().any(|e| e.contains("Patient.gender")), "{}", r.text);

    // A Parameters body with a profile, and profile= in the query.
    let rx = example("MedicationRequest-jp-medicationrequest-example-1.json");
    let mut no_rp = rx.clone();
    no_rp.as_object_mut().unwrap().remove("meta");
    no_rp["identifier"].as_array_mut().unwrap().retain(|i| i["system"] != "urn:oid:1.2.392.100495.20.3.81");
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": no_rp},
        {"name": "profile", "valueUri": format!("{CORE}JP_MedicationRequest")}]});
    let r = s.post("/fhir/MedicationRequest/$validate", &doc, params).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = issues(&r.body, "error");
    assert!(e.iter().any(|e| e.starts_with("MedicationRequest.identifier:rpNumber: requires at least 1")), "{e:?}");
    let url = format!("/fhir/MedicationRequest/$validate?profile={CORE}JP_MedicationRequest");
    let r = s.post(&url, &doc, rx.clone()).await;
    assert!(issues(&r.body, "error").is_empty(), "{}", r.text);

    // Bad requests: an unknown profile, one of another type, no resource, no token.
    let r = s.post("/fhir/Patient/$validate?profile=http://example.org/nope", &doc, p.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("not in any loaded package"));
    let r = s.post(&format!("/fhir/Patient/$validate?profile={CORE}JP_MedicationRequest"), &doc, p.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.post("/fhir/Patient/$validate", &doc, json!({"resourceType": "Parameters", "parameter": []})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(s.req(Method::POST, "/fhir/Patient/$validate", None, Some(p.clone())).await.status, 401);
    let r = s
        .raw(Method::POST, "/fhir/Patient/$validate", Some(&doc), Some(("{".into(), "application/fhir+json")), &[])
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Instance level: a body as an update of that instance (its id must
    // be the instance's), and the stored version, read under the read rule.
    let mut plain = json!({"resourceType": "Patient", "name": [{"family": "検証"}], "gender": "female"});
    let r = s.post("/fhir/Patient", &doc, plain.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pid = r.body["id"].as_str().unwrap().to_owned();
    s.assign(&pid, "doc").await;
    plain["id"] = json!(pid);
    let r = s.post(&format!("/fhir/Patient/{pid}/$validate"), &doc, plain.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(!issues(&r.body, "error").iter().any(|e| e.starts_with("Patient.id:")), "{}", r.text);
    plain["id"] = json!("someone-else");
    let r = s.post(&format!("/fhir/Patient/{pid}/$validate"), &doc, plain.clone()).await;
    let e = issues(&r.body, "error");
    assert!(e.iter().any(|e| e.starts_with("Patient.id: validated as an update of")), "{e:?}");
    let r = s.get(&format!("/fhir/Patient/{pid}/$validate?profile={CORE}JP_Patient"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = issues(&r.body, "error");
    assert!(
        e.iter().any(|e| e.starts_with("Patient.identifier: requires at least 1")),
        "the stored version against JP_Patient: {e:?}"
    );
    assert_eq!(
        s.audits_where("read").iter().filter(|a| a["patients"] == json!([pid])).count(),
        1,
        "the stored version was read, audited"
    );
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
        "subject": {"reference": format!("Patient/{pid}")}, "valueQuantity": {"value": 36.5, "unit": "℃", "system": "http://unitsofmeasure.org", "code": "Cel"}});
    let r = s.post("/fhir/Observation", &doc, obs).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let oid = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}/$validate"), &doc).await.status, 200);
    let other = s.user("doc2", &["physician"]).await;
    let r = s.get(&format!("/fhir/Observation/{oid}/$validate"), &other).await;
    assert_eq!(r.status, 403, "no care relationship, no read, no validation: {}", r.text);
    assert_eq!(s.get("/fhir/Patient/nobody/$validate", &doc).await.status, 404);

    // Modes. Type level: create (the checks a create runs) and profile
    // (which needs a profile); an instance: update, delete, profile.
    let r = s.post("/fhir/Patient/$validate?mode=create", &doc, p.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.post(&format!("/fhir/Patient/$validate?mode=profile&profile={CORE}JP_Patient"), &doc, p.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    for (path, why) in [
        ("/fhir/Patient/$validate?mode=profile".to_owned(), "needs the profile"),
        ("/fhir/Patient/$validate?mode=delete".to_owned(), "needs an instance"),
        ("/fhir/Patient/$validate?mode=bogus".to_owned(), "not a $validate mode"),
        (format!("/fhir/Patient/{pid}/$validate?mode=create"), "for the type level"),
        (format!("/fhir/Patient/{pid}/$validate?mode=update&mode=delete"), "more than once"),
    ] {
        let r = s.post(&path, &doc, plain.clone()).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert!(r.text.contains(why), "{path}: {}", r.text);
    }
    let params = |mode: &str| json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": mode}]});
    let r = s.post(&format!("/fhir/Patient/{pid}/$validate?mode=update"), &doc, params("delete")).await;
    assert_eq!(r.status, 400, "the query and the Parameters disagree: {}", r.text);
    // mode=delete: whether this caller could delete it now; nothing is
    // deleted; the read and the delete decision are audited.
    let deletable = |b: &Value| b["issue"][0]["diagnostics"].as_str().unwrap_or("").contains("may be deleted by you");
    let r = s.get(&format!("/fhir/Observation/{oid}/$validate?mode=delete"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(deletable(&r.body), "{}", r.text);
    let r = s.raw(Method::POST, &format!("/fhir/Observation/{oid}/$validate?mode=delete"), Some(&doc), None, &[]).await;
    assert_eq!(r.status, 200, "no body needed: {}", r.text);
    assert!(deletable(&r.body), "{}", r.text);
    let r = s.post(&format!("/fhir/Observation/{oid}/$validate"), &doc, params("delete")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(deletable(&r.body), "{}", r.text);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc).await.status, 200, "still there");
    let d = s.audits_where("validate-delete");
    assert_eq!(d.len(), 3, "{d:?}");
    assert_eq!(d[0]["basis"], "care-relationship", "{d:?}");
    assert_eq!(d[0]["detail"]["would_permit"], true, "{d:?}");
    assert_eq!(d[0]["patients"], json!([pid]), "{d:?}");
    assert_eq!(d[0]["entity"]["id"], oid.as_str(), "{d:?}");
    // Someone who may read it but not delete it is told so.
    let r = s.get(&format!("/fhir/Patient/{pid}/$validate?mode=delete"), &other).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["issue"][0]["severity"], "error", "{}", r.text);
    assert_eq!(r.body["issue"][0]["code"], "forbidden", "{}", r.text);
    assert_eq!(s.audits_where("validate-delete").last().unwrap()["detail"]["would_permit"], false);
    let r = s.get(&format!("/fhir/Observation/{oid}/$validate?mode=delete"), &other).await;
    assert_eq!(r.status, 403, "one who may not read it learns nothing more: {}", r.text);

    // Nothing was stored, and each request was decided and audited.
    assert_eq!(s.count("SELECT COUNT(*) FROM resources WHERE rtype = 'MedicationRequest'"), 0);
    let audits = s.audits_where("validate");
    assert!(audits.iter().filter(|a| a["status"] == 200).count() >= 5, "{audits:?}");
    assert!(audits.iter().any(|a| a["status"] == 400));
}

#[tokio::test]
async fn writes_follow_the_validation_policy() {
    let s = server("jp-write").await;
    let doc = s.user("doc", &["physician"]).await;

    // Patient: JP_Patient is required, under "warn": stored, and said.
    let mut p = example("Patient-jp-patient-example-1.json");
    let r = s.post("/fhir/Patient", &doc, p.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("x-mamori-profile-validation").is_none());
    let pid = r.body["id"].as_str().unwrap().to_owned();
    p.as_object_mut().unwrap().remove("identifier");
    p.as_object_mut().unwrap().remove("meta");
    let r = s
        .raw(
            Method::POST,
            "/fhir/Patient",
            Some(&doc),
            Some((p.to_string(), "application/fhir+json")),
            &[("prefer", "return=OperationOutcome")],
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let e = issues(&r.body, "error");
    assert!(e.iter().any(|e| e.starts_with("Patient.identifier: requires at least 1")), "{}", r.text);
    let r = s.post("/fhir/Patient", &doc, p.clone()).await;
    assert_eq!(r.status, 201);
    assert!(r.header("x-mamori-profile-validation").is_some_and(|h| h.starts_with("1 profile error")));
    let created: Vec<Value> = s.audits_where("create");
    assert!(created.iter().any(|a| a["detail"]["profile_errors"] == 1), "{created:?}");

    // MedicationRequest under "enforce": refused with 422, nothing stored.
    let mut rx = example("MedicationRequest-jp-medicationrequest-example-1.json");
    rx["subject"] = json!({"reference": format!("Patient/{pid}")});
    for k in ["requester", "recorder", "encounter", "basedOn", "insurance", "contained", "dispenseRequest"] {
        rx.as_object_mut().unwrap().remove(k);
    }
    let mut no_rp = rx.clone();
    no_rp["identifier"].as_array_mut().unwrap().retain(|i| i["system"] != "urn:oid:1.2.392.100495.20.3.81");
    let before = s.snapshot();
    let r = s.post("/fhir/MedicationRequest", &doc, no_rp.clone()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("MedicationRequest.identifier:rpNumber"), "{}", r.text);
    assert_eq!(s.count("SELECT COUNT(*) FROM resources WHERE rtype = 'MedicationRequest'"), 0);
    assert_eq!(s.snapshot().0, before.0);
    // The same inside a transaction rolls the whole bundle back.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pid}")}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": no_rp, "request": {"method": "POST", "url": "MedicationRequest"}}]});
    let r = s.post("/fhir", &doc, bundle).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("rpNumber"), "{}", r.text);
    assert_eq!(s.count("SELECT COUNT(*) FROM resources WHERE rtype = 'Observation'"), 0);
    // A conforming one is stored.
    let r = s.post("/fhir/MedicationRequest", &doc, rx.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A PATCH that removes the Rp number is refused too.
    let id = r.body["id"].as_str().unwrap().to_owned();
    let idx = r.body["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .position(|i| i["system"] == "urn:oid:1.2.392.100495.20.3.81")
        .unwrap();
    let patch = json!([{"op": "remove", "path": format!("/identifier/{idx}")}]);
    let r = s
        .raw(
            Method::PATCH,
            &format!("/fhir/MedicationRequest/{id}"),
            Some(&doc),
            Some((patch.to_string(), "application/json-patch+json")),
            &[],
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("rpNumber"), "{}", r.text);
    let r = s.get(&format!("/fhir/MedicationRequest/{id}"), &doc).await;
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
}

#[tokio::test]
async fn package_definitions_are_readable_and_read_only() {
    let s = server("jp-defs").await;
    let doc = s.user("doc", &["physician"]).await;
    let r = s.get("/fhir/StructureDefinition/jp-patient", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["url"], format!("{CORE}JP_Patient"));
    let r = s.get(&format!("/fhir/StructureDefinition?url={CORE}JP_MedicationRequest"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 1, "{}", r.text);
    assert_eq!(r.body["entry"][0]["resource"]["type"], "MedicationRequest");
    let r = s.get("/fhir/ValueSet?name=JP_SimpleObservationCategory_VS", &doc).await;
    assert_eq!(r.body["total"], 1, "{}", r.text);
    let r = s.get("/fhir/StructureDefinition?type=Patient&_count=1", &doc).await;
    assert!(r.body["total"].as_u64().unwrap() >= 2, "{}", r.text);
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/fhir/StructureDefinition?_count=x", &doc).await.status, 400);
    assert_eq!(s.get("/fhir/StructureDefinition/no-such-definition", &doc).await.status, 404);
    // Read-only: an update or delete of a package's definition is refused.
    let sd = s.get("/fhir/StructureDefinition/jp-patient", &doc).await.body;
    assert_eq!(s.put("/fhir/StructureDefinition/jp-patient", &doc, sd).await.status, 405);
    assert_eq!(s.delete("/fhir/StructureDefinition/jp-patient", &doc).await.status, 405);
    assert_eq!(s.get("/fhir/StructureDefinition/jp-patient", &doc).await.body["url"], format!("{CORE}JP_Patient"));
    assert_eq!(s.req(Method::GET, "/fhir/StructureDefinition/jp-patient", None, None).await.status, 401);
    let reads = s.audits_where("read");
    assert!(
        reads.iter().any(|a| a["entity"] == json!({"type": "StructureDefinition", "id": "jp-patient"})
            && a["basis"] == "role-reference-data"
            && a["status"] == 200),
        "{reads:?}"
    );
    // _summary for a type outside the built-in table, learned from JP-CLINS's snapshots.
    let pid = s.patient(&doc, "要約", "花子").await;
    let comp = json!({"resourceType": "Composition", "status": "final", "type": {"text": "診療情報提供書"},
        "subject": {"reference": format!("Patient/{pid}")}, "date": "2026-12-04", "author": [{"display": "x"}],
        "title": "診療情報提供書", "section": [{"title": "紹介目的", "text": {"status": "generated", "div": "<div>x</div>"}}]});
    let r = s.post("/fhir/Composition", &doc, comp).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.get(&format!("/fhir/Composition?subject=Patient/{pid}&_summary=true"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let c = &r.body["entry"][0]["resource"];
    assert!(c.get("section").is_none() && c["title"] == "診療情報提供書", "{c}");
    assert_eq!(c["meta"]["tag"][0]["code"], "SUBSETTED");
}

/// Token `:below` and `:above` follow the hierarchy of a loaded code
/// system (JP-CLINS groups its core laboratory JLAC10 codes under
/// analytes such as ALB): `code:below=…|ALB` finds every albumin result.
/// A system no loaded package defines is refused, never guessed.
#[tokio::test]
async fn below_and_above_use_the_loaded_code_systems() {
    let s = server("jp-below").await;
    let doc = s.user("doc", &["physician"]).await;
    let pid = s.patient(&doc, "階層", "検索").await;
    const LABO: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_CoreLabo_CS";
    let obs = |code: &str| {
        json!({"resourceType": "Observation", "status": "final", "subject": {"reference": format!("Patient/{pid}")},
               "code": {"coding": [{"system": LABO, "code": code}]}})
    };
    let mut ids = Vec::new();
    for code in ["3A015000002329101", "3A015000002229101", "ALB", "3B070000002327101"] {
        let r = s.post("/fhir/Observation", &doc, obs(code)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let found = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"].as_array().map_or(vec![], |a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        });
        v.sort();
        v
    };
    let sorted = |v: &[&String]| {
        let mut v: Vec<String> = v.iter().map(|s| (*s).clone()).collect();
        v.sort();
        v
    };
    let subj = format!("subject=Patient/{pid}");
    let r = s.get(&format!("/fhir/Observation?{subj}&code:below={LABO}|ALB"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(found(&r.body), sorted(&[&ids[0], &ids[1], &ids[2]]), "albumin and its JLAC10 codes, not ALP");
    let r = s.get(&format!("/fhir/Observation?{subj}&code:above={LABO}|3A015000002329101"), &doc).await;
    assert_eq!(found(&r.body), sorted(&[&ids[0], &ids[2]]), "the code and its analyte");
    // Through the system-level search too.
    let r = s.get(&format!("/fhir?_type=Observation&{subj}&code:below={LABO}|ALP"), &doc).await;
    assert_eq!(found(&r.body), sorted(&[&ids[3]]), "{}", r.text);
    for (q, why) in [
        ("code:below=ALB".to_owned(), "need the code system"),
        ("code:below=http://example.org/unknown|X".to_owned(), "not in a loaded FHIR package"),
        (format!("subject:below=Patient/{pid}"), "unsupported modifier"),
    ] {
        let r = s.get(&format!("/fhir/Observation?{subj}&{q}"), &doc).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(r.text.contains(why), "{q}: {}", r.text);
    }
}
