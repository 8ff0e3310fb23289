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

/// The SearchParameters of a loaded package are searchable where mamori
/// evaluates their FHIRPath expressions (JP Core's kana sort name, its
/// dosage period start): in a search, in `_sort`, in the
/// CapabilityStatement. What was stored before the package came is
/// indexed when the server starts with it; without it the parameter is
/// unknown again and its rows are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_search_parameters_are_searchable() {
    let mut s = TestServer::start_cfg("jp-sp", "", None).await;
    let doc = s.user("doc", &["physician"]).await;
    let rep = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
    let named = |kanji: &str, kana: &str, kana_use: &str| {
        json!({"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01", "name": [
            {"extension": [{"url": rep, "valueCode": "IDE"}], "use": "usual", "text": kanji},
            {"extension": [{"url": rep, "valueCode": "SYL"}], "use": kana_use, "text": kana}]})
    };
    let mut ids = Vec::new();
    for p in [
        example("Patient-jp-patient-example-1.json"),
        named("佐藤 花子", "サトウ ハナコ", "usual"),
        named("山川 一郎", "ヤマカワ イチロウ", "old"),
    ] {
        let r = s.post("/fhir/Patient", &doc, p).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let mut mr = example("MedicationRequest-jp-medicationrequest-example-1.json");
    mr["subject"]["reference"] = json!(format!("Patient/{}", ids[0]));
    let r = s.post("/fhir/MedicationRequest", &doc, mr).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mr_id = r.body["id"].as_str().unwrap().to_owned();

    let strict = [("prefer", "handling=strict")];
    let r = s.raw(Method::GET, "/fhir/Patient?jp-kana-sort=やまだ", Some(&doc), None, &strict).await;
    assert_eq!(r.status, 400, "no package, no parameter: {}", r.text);
    assert!(r.text.contains("jp-kana-sort"), "{}", r.text);

    // JP Core added: the resources stored before are indexed at start.
    let toml = s.dir.join("mamori.toml");
    let before = std::fs::read_to_string(&toml).unwrap();
    let core = fhir_jp().join("jp-core").display().to_string();
    std::fs::write(&toml, format!("{before}\n[fhir]\npackages = [{core:?}]\n")).unwrap();
    s.restart().await;
    let doc = s.login("doc", PASSWORD).await;
    let found = |b: &Value| -> Vec<String> {
        b["entry"].as_array().map_or(vec![], |a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
    };
    let all = ids.join(",");
    for (q, want) in [
        // Kana folds: katakana, hiragana and half-width match.
        ("jp-kana-sort=やまだ".to_owned(), vec![ids[0].clone()]),
        ("jp-kana-sort=ﾔﾏﾀﾞ".to_owned(), vec![ids[0].clone()]),
        ("jp-kana-sort:exact=ヤマダ タロウ".to_owned(), vec![ids[0].clone()]),
        // Only the usual kana name is the sort name; a kanji name is not.
        ("jp-kana-sort=やまかわ".to_owned(), vec![]),
        ("jp-kana-sort=山田".to_owned(), vec![]),
        // Ordered by the kana: サトウ, ヤマダ, then the one without.
        (format!("_id={all}&_sort=jp-kana-sort"), vec![ids[1].clone(), ids[0].clone(), ids[2].clone()]),
        (format!("_id={all}&jp-kana-sort:missing=true"), vec![ids[2].clone()]),
    ] {
        let r = s.get(&format!("/fhir/Patient?{q}"), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(found(&r.body), want, "{q}");
    }
    let r = s
        .get(&format!("/fhir/MedicationRequest?subject=Patient/{}&jp-medication-start=ge2020-04-01", ids[0]), &doc)
        .await;
    assert_eq!(found(&r.body), vec![mr_id.clone()], "{}", r.text);
    let r = s
        .get(&format!("/fhir/MedicationRequest?subject=Patient/{}&jp-medication-start=lt2020-04-01", ids[0]), &doc)
        .await;
    assert_eq!(found(&r.body), Vec::<String>::new(), "{}", r.text);
    assert_eq!(s.get("/fhir/Patient?jp-kana-sort=ge2020", &doc).await.status, 200, "a string, not a date");
    assert_eq!(s.get("/fhir/MedicationRequest?jp-medication-start=soon", &doc).await.status, 400);

    // What is written from now on is indexed as it is written.
    let r = s.post("/fhir/Patient", &doc, named("山本 三郎", "ヤマモト サブロウ", "usual")).await;
    let yamamoto = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get("/fhir/Patient?jp-kana-sort=やま&_sort=jp-kana-sort", &doc).await;
    assert_eq!(found(&r.body), vec![ids[0].clone(), yamamoto.clone()], "{}", r.text);
    let mut p = s.get(&format!("/fhir/Patient/{yamamoto}"), &doc).await.body;
    p["name"][1]["text"] = json!("アオキ サブロウ");
    assert_eq!(s.put(&format!("/fhir/Patient/{yamamoto}"), &doc, p).await.status, 200);
    let r = s.get("/fhir/Patient?jp-kana-sort=あおき", &doc).await;
    assert_eq!(found(&r.body), vec![yamamoto.clone()], "the index follows an update");

    // The CapabilityStatement names the package's definition.
    let cs = s.get("/fhir/metadata", &doc).await.body;
    let patient = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    assert!(
        patient["searchParam"].as_array().unwrap().iter().any(|p| p["name"] == "jp-kana-sort"
            && p["type"] == "string"
            && p["definition"] == "http://jpfhir.jp/fhir/core/SearchParameter/JP_Patient_KanaSort_SP"),
        "{}",
        patient["searchParam"]
    );
    let rows = |s: &TestServer| s.col("SELECT COUNT(*) FROM idx_string WHERE param = $1", &["jp-kana-sort"]);
    assert_eq!(rows(&s)[0], mamori_store::sql::Cell::Int(3));

    // The package taken away: the parameter is unknown and its rows gone.
    std::fs::write(&toml, &before).unwrap();
    s.restart().await;
    let doc = s.login("doc", PASSWORD).await;
    let r = s.raw(Method::GET, "/fhir/Patient?jp-kana-sort=やまだ", Some(&doc), None, &strict).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(rows(&s)[0], mamori_store::sql::Cell::Int(0));
    let r = s.get("/fhir/Patient?name=山田", &doc).await;
    assert_eq!(found(&r.body), vec![ids[0].clone()], "mamori's own parameters keep their rows");
}

/// The clinical information items for the national service
/// (電子カルテ情報共有サービス) as JP-CLINS `JP_Bundle_CLINS`, one item per
/// bundle: built only when every record of the item conforms, each one
/// that does not named with why; decided and audited as a read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clins_bundle_of_one_item_for_the_national_service() {
    let jp = fhir_jp();
    let extra = format!(
        "[fhir]\npackages = [{:?}, {:?}]\n[institution]\nid = \"1319900001\"\n",
        jp.join("jp-core").display().to_string(),
        jp.join("jp-clins").display().to_string(),
    );
    let s = TestServer::start_cfg("jp-items", &extra, None).await;
    let doc = s.user("dr-items", &["physician"]).await;
    let rep = |c: &str| json!([{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": c}]);
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient",
                   "identifier": [{"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "06139990:デモ3:100159:01"}],
                   "name": [{"use": "official", "extension": rep("IDE"), "text": "鈴木 一郎", "family": "鈴木", "given": ["一郎"]},
                            {"use": "official", "extension": rep("SYL"), "text": "スズキ イチロウ", "family": "スズキ", "given": ["イチロウ"]}],
                   "gender": "male", "birthDate": "1955-02-03", "address": [{"text": "東京都港区デモ町2-2"}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = r.body["id"].as_str().unwrap().to_owned();
    s.assign(&p, "dr-items").await;
    let subject = json!({"reference": format!("Patient/{p}")});
    let r = s
        .post(
            "/fhir/Encounter",
            &doc,
            json!({"resourceType": "Encounter", "status": "finished",
                   "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB", "display": "ambulatory"},
                   "subject": subject, "period": {"start": "2026-11-02T09:00:00+09:00", "end": "2026-11-02T09:30:00+09:00"}}),
        )
        .await;
    let enc = r.body["id"].as_str().unwrap().to_owned();
    let department = json!({"url": "http://jpfhir.jp/fhir/eCS/Extension/StructureDefinition/JP_eCS_Department",
        "valueCodeableConcept": {"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_Department_SsMix_CS", "code": "01", "display": "内科"}], "text": "内科"}});
    // 20056319 stands for a MEDIS disease number here (test data): the MEDIS
    // master is not available offline, so its form is checked, not its meaning.
    let coded = json!({"resourceType": "Condition", "extension": [department],
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
        "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20056319", "display": "本態性高血圧症"}], "text": "本態性高血圧症"},
        "subject": subject, "encounter": {"reference": format!("Encounter/{enc}")}, "onsetDateTime": "2020-04-01"});
    let r = s.post("/fhir/Condition", &doc, coded).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cid = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Patient/{p}/$clins-bundle?item=Condition");

    let r = s.get(&path, &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.body;
    assert_eq!(b["type"], "collection");
    assert_eq!(b["meta"]["profile"][0], "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS");
    assert_eq!(b["meta"]["tag"][0]["code"], "Condition");
    let idv = b["identifier"]["value"].as_str().unwrap();
    assert!(idv.starts_with("1319900001^2026^") && idv.len() <= 10 + 1 + 4 + 1 + 36, "{idv}");
    assert_eq!(b["entry"][0]["resource"]["resourceType"], "Patient");
    let c = &b["entry"][1]["resource"];
    assert_eq!(c["encounter"]["reference"], "#encounter");
    assert_eq!(c["contained"][0]["meta"]["profile"][0], "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter");
    assert!(c["extension"].as_array().unwrap().iter().any(|x| x["valueIdentifier"]["value"] == "1319900001"));
    assert_eq!(c["subject"]["reference"], b["entry"][0]["fullUrl"]);
    let ev = s.audits_where("operation");
    let last = ev.iter().rev().find(|e| e["query"].as_str().is_some_and(|q| q.contains("clins-bundle"))).unwrap();
    assert_eq!(last["patients"], json!([p]));
    assert_eq!(last["status"], 200);

    // A second problem without a department or a MEDIS number: no bundle,
    // and that record is named with why.
    let r = s
        .post(
            "/fhir/Condition",
            &doc,
            json!({"resourceType": "Condition", "code": {"text": "腰痛"}, "subject": subject,
                   "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]}}),
        )
        .await;
    let bad = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get(&path, &doc).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains(&format!("Condition/{bad} cannot be sent as")), "{}", r.text);
    assert!(r.text.contains("no department") && r.text.contains("onsetDateTime"), "{}", r.text);
    assert!(!r.text.contains(&format!("Condition/{cid} cannot")), "the conforming one is not blamed: {}", r.text);

    // Bad requests and a stranger.
    for (q, status) in [
        ("item=MedicationRequest", 400),
        ("", 400),
        ("item=Condition&item=Observation", 400),
        ("item=Condition&foo=1", 400),
        ("item=AllergyIntolerance", 422),
    ] {
        let r = s.get(&format!("/fhir/Patient/{p}/$clins-bundle?{q}"), &doc).await;
        assert_eq!(r.status, status, "{q}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{q}");
    }
    let stranger = s.user("dr-stranger", &["physician"]).await;
    let r = s.get(&path, &stranger).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.get("/fhir/Patient/nobody/$clins-bundle?item=Condition", &doc).await;
    assert!(r.status == 404 || r.status == 403, "{}", r.text);
    // Laboratory results: JP_Observation_LabResult_eCS, here with the
    // JP-CLINS code for a result without a JLAC code, and the specimen.
    let r = s
        .post(
            "/fhir/Observation",
            &doc,
            json!({"resourceType": "Observation", "status": "final", "extension": [department],
                   "category": [{"coding": [{"system": "http://jpfhir.jp/fhir/core/CodeSystem/JP_SimpleObservationCategory_CS", "code": "laboratory"}]}],
                   "code": {"coding": [{"system": "http://jpfhir.jp/fhir/clins/CodeSystem/JP_CLINS_ObsLabResult_Uncoded_CS", "code": "99999999999999999", "display": "未標準化コード項目(JLAC)"}],
                            "text": "HbA1c"},
                   "subject": subject, "encounter": {"reference": format!("Encounter/{enc}")},
                   "effectiveDateTime": "2026-11-02T09:10:00+09:00", "specimen": {"display": "血液"},
                   "valueQuantity": {"value": 6.4, "unit": "%", "system": "http://unitsofmeasure.org", "code": "%"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // A vital sign is not a laboratory item and is not asked for.
    let r = s.post("/fhir/Observation", &doc, observation(&p, "8867-4", 70.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.get(&format!("/fhir/Patient/{p}/$clins-bundle?item=Observation"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 2, "the patient and the one laboratory result");
    assert_eq!(r.body["meta"]["tag"][0]["code"], "Observation");

    // Listed in the CapabilityStatement.
    let r = s.get("/fhir/metadata", &doc).await;
    assert!(r.text.contains("Patient-clins-bundle"));
}
