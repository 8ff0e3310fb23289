//! The FHIR REST API over real HTTPS: CRUD, versions, history, ETags,
//! search paging, transactions, $everything, deletes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{observation, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn crud_versions_history_and_etags() {
    let s = TestServer::start("crud").await;
    let doc = s.user("dr.sato", &["physician"]).await;
    let pid = s.patient(&doc, "佐藤", "花子").await;

    // read
    let r = s.get(&format!("/fhir/Patient/{pid}"), &doc).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["meta"]["versionId"], "1");
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert_eq!(r.header("content-type").as_deref(), Some("application/fhir+json; charset=utf-8"));
    assert_eq!(r.header("mamori-mode").as_deref(), Some("normal"));
    assert!(r.header("last-modified").is_some());

    // update with the right ETag
    let mut p = r.body.clone();
    p["name"][0]["given"] = json!(["花子", "はなこ"]);
    let r = s
        .raw(
            Method::PUT,
            &format!("/fhir/Patient/{pid}"),
            Some(&doc),
            Some((p.to_string(), "application/fhir+json")),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["meta"]["versionId"], "2");

    // stale ETag: 412, nothing stored
    let before = s.snapshot();
    let r = s
        .raw(
            Method::PUT,
            &format!("/fhir/Patient/{pid}"),
            Some(&doc),
            Some((p.to_string(), "application/fhir+json")),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert_eq!(r.body["resourceType"], "OperationOutcome");
    assert_eq!(s.snapshot(), before);

    // vread of version 1 still has the old name
    let r = s.get(&format!("/fhir/Patient/{pid}/_history/1"), &doc).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"][0]["given"], json!(["花子"]));

    // delete: a tombstone; reads give 410; history keeps all versions
    let r = s.delete(&format!("/fhir/Patient/{pid}"), &s.user("clerk1", &["clerk"]).await).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let r = s.get(&format!("/fhir/Patient/{pid}"), &doc).await;
    assert_eq!(r.status, 410);
    assert_eq!(r.body["issue"][0]["code"], "deleted");
    let r = s.get(&format!("/fhir/Patient/{pid}/_history"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["request"]["method"], "DELETE");
    assert!(entries[0].get("resource").is_none());
    assert_eq!(entries[2]["request"]["method"], "POST");
    let r = s.get(&format!("/fhir/Patient/{pid}/_history/2"), &doc).await;
    assert_eq!(r.status, 200);

    // update-as-create with a client id
    let r = s
        .put(
            "/fhir/Patient/client-id-1",
            &doc,
            json!({"resourceType": "Patient", "id": "client-id-1", "gender": "male"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("location").unwrap().ends_with("/fhir/Patient/client-id-1/_history/1"));

    // type history includes all of them
    let r = s.get("/fhir/Patient/_history", &doc).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 4);

    // 404 for a resource that never existed
    let r = s.get("/fhir/Patient/nope", &doc).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["issue"][0]["code"], "not-found");
}

#[tokio::test]
async fn search_with_paging_and_parameters() {
    let s = TestServer::start("search").await;
    let doc = s.user("dr.ito", &["physician"]).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let r = s
            .post(
                "/fhir/Patient",
                &doc,
                json!({"resourceType": "Patient", "name": [{"family": if i % 2 == 0 { "山田" } else { "Tanaka" }, "given": [format!("g{i}")]}],
                       "identifier": [{"system": "urn:mrn", "value": format!("MRN{i:03}")}], "birthDate": format!("19{:02}-05-01", 50 + i), "gender": "male"}),
            )
            .await;
        assert_eq!(r.status, 201);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // kana search matches kanji? no — but katakana/hiragana fold, case fold
    let r = s.get("/fhir/Patient?family=tanaka&_count=5", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 12);
    // page through all pages following next links, collecting ids
    let mut seen = Vec::new();
    let mut url = "/fhir/Patient?_count=7".to_owned();
    let mut sizes = Vec::new();
    loop {
        let r = s.get(&url, &doc).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["total"], 25);
        sizes.push(r.body["entry"].as_array().unwrap().len());
        for e in r.body["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        let next = r.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        match next {
            Some(n) => url = n.strip_prefix(&s.base).unwrap().to_owned(),
            None => break,
        }
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "every patient exactly once, in stable order");
    // Issue 14: _count was dropped from the next link (page 2 had 20).
    assert_eq!(sizes, [7, 7, 7, 4], "every page keeps the _count of the first");
    // previous link from page 2 leads back to page 1
    let p1 = s.get("/fhir/Patient?_count=7", &doc).await;
    let next = p1.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let p2 = s.get(next.strip_prefix(&s.base).unwrap(), &doc).await;
    let prev = p2.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "previous").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = s.get(prev.strip_prefix(&s.base).unwrap(), &doc).await;
    assert_eq!(back.body["entry"], p1.body["entry"]);

    // token, date prefixes, _id, _lastUpdated, OR values, :exact
    let r = s.get("/fhir/Patient?identifier=urn:mrn|MRN003", &doc).await;
    assert_eq!(r.body["total"], 1);
    assert_eq!(r.body["entry"][0]["resource"]["id"], ids[3]);
    let r = s.get("/fhir/Patient?identifier=MRN003,MRN004", &doc).await;
    assert_eq!(r.body["total"], 2);
    // A `ge` date is checked per resource and not counted unasked.
    let r = s.get("/fhir/Patient?birthdate=ge1970&birthdate=lt1972", &doc).await;
    assert_eq!(r.body["entry"].as_array().map_or(0, Vec::len), 2, "{}", r.text);
    assert!(r.body.get("total").is_none(), "{}", r.text);
    let r = s.get("/fhir/Patient?birthdate=ge1970&birthdate=lt1972&_total=accurate", &doc).await;
    assert_eq!(r.body["total"], 2, "{}", r.text);
    let r = s.get(&format!("/fhir/Patient?_id={}", ids[5]), &doc).await;
    assert_eq!(r.body["total"], 1);
    let r = s.get("/fhir/Patient?_lastUpdated=gt2000-01-01&_summary=count", &doc).await;
    assert_eq!(r.body["total"], 25);
    assert!(r.body.get("entry").is_none());
    let r = s.get("/fhir/Patient?family:exact=%E5%B1%B1%E7%94%B0", &doc).await;
    assert_eq!(r.body["total"], 13);
    let r = s.get("/fhir/Patient?name:contains=anak", &doc).await;
    assert_eq!(r.body["total"], 12);

    // clinical search: code, category, patient
    s.assign(&ids[0], "dr.ito").await;
    for (code, v) in [("8867-4", 70.0), ("8867-4", 80.0), ("8310-5", 36.5)] {
        let r = s.post("/fhir/Observation", &doc, observation(&ids[0], code, v)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = s.get(&format!("/fhir/Observation?patient={}&code=http://loinc.org|8867-4", ids[0]), &doc).await;
    assert_eq!(r.body["total"], 2, "{}", r.text);
    let r = s
        .get(&format!("/fhir/Observation?subject=Patient/{}&category=vital-signs&date=2026-11-26", ids[0]), &doc)
        .await;
    assert_eq!(r.body["total"], 3, "{}", r.text);
    let r = s.get("/fhir/Observation?date=lt2020", &doc).await;
    assert_eq!(r.body["total"], 0);

    // POST _search
    let r = s
        .raw(
            Method::POST,
            "/fhir/Patient/_search",
            Some(&doc),
            Some(("family=tanaka&_count=1".into(), "application/x-www-form-urlencoded")),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total"], 12);

    // every search was audited with its query and patients
    let searches = s.audits_where("search-type");
    assert!(searches.len() >= 10);
    assert!(searches.iter().any(|e| e["query"].as_str().unwrap_or("").contains("identifier=")));
}

#[tokio::test]
async fn transaction_is_all_or_nothing_and_resolves_urns() {
    let s = TestServer::start("txn").await;
    let doc = s.user("dr.kato", &["physician"]).await;
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": {"resourceType": "Patient", "name": [{"family": "鈴木"}], "identifier": [{"system": "urn:mrn", "value": "T1"}]},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|T1"}},
            {"fullUrl": "urn:uuid:88f151c0-a954-468a-88ac-8fe2ae5b1a8d",
             "resource": {"resourceType": "Encounter", "status": "in-progress", "class": {"code": "EMER"}, "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                          "subject": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"},
                          "encounter": {"reference": "urn:uuid:88f151c0-a954-468a-88ac-8fe2ae5b1a8d"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = s.post("/fhir", &doc, bundle.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "transaction-response");
    let entries = r.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e["response"]["status"].as_str().unwrap().starts_with("201")));
    let pat_loc = entries[0]["response"]["location"].as_str().unwrap();
    let pid = pat_loc.split('/').rev().nth(2).unwrap().to_owned();
    let obs_loc = entries[2]["response"]["location"].as_str().unwrap().strip_prefix(&s.base).unwrap().to_owned();
    let obs = s.get(obs_loc.split("/_history").next().unwrap(), &doc).await;
    assert_eq!(obs.status, 200, "{}", obs.text);
    assert_eq!(obs.body["subject"]["reference"], format!("Patient/{pid}"));
    assert!(obs.body["encounter"]["reference"].as_str().unwrap().starts_with("Encounter/"));

    // The same bundle again: the conditional create matches, nothing new.
    let before = s.snapshot();
    let r = s
        .post(
            "/fhir",
            &doc,
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [bundle["entry"][0].clone()]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["entry"][0]["response"]["status"].as_str().unwrap().starts_with("200"));
    assert_eq!(s.snapshot(), before);

    // A failing entry rolls back every entry: nothing is stored.
    let before = s.snapshot();
    let audits_before = s.audit_count();
    let bad = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:0c7d2b3e-1111-4222-8333-444455556666",
             "resource": {"resourceType": "Patient", "name": [{"family": "ok"}]}, "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                          "subject": {"reference": "urn:uuid:0c7d2b3e-1111-4222-8333-444455556666"},
                          "performer": [{"reference": "Practitioner/does-not-exist"}]},
             "request": {"method": "POST", "url": "Observation"}}
        ]
    });
    let r = s.post("/fhir", &doc, bad).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    assert_eq!(s.snapshot(), before, "a failed transaction stores nothing");
    assert_eq!(s.audit_count(), audits_before + 1, "only the failure is audited");
    let ev = s.last_audit();
    assert_eq!(ev["action"], "transaction");
    assert_eq!(ev["status"], 422);

    // A transaction with an unresolvable urn:uuid reference.
    let r = s
        .post(
            "/fhir",
            &doc,
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}},
                 "request": {"method": "POST", "url": "Observation"}}]}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(s.snapshot(), before);

    // Batch: entries independent; the bad one fails alone.
    let r = s
        .post(
            "/fhir",
            &doc,
            json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": {"resourceType": "Patient", "name": [{"family": "batch-ok"}]}, "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient", "gender": "x"}, "request": {"method": "POST", "url": "Patient"}},
                {"request": {"method": "GET", "url": format!("Patient/{pid}")}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = r.body["entry"].as_array().unwrap();
    assert!(e[0]["response"]["status"].as_str().unwrap().starts_with("201"));
    assert!(e[1]["response"]["status"].as_str().unwrap().starts_with("400"));
    assert_eq!(e[1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(e[2]["resource"]["id"], pid);
}

/// PATCH (a Binary JSON Patch, or a Parameters FHIRPath Patch), and
/// conditional update and delete inside a transaction and a batch: each
/// decided like its REST call; a conditional one whose search matches
/// several is 412 and the transaction stores nothing; a patch of a
/// record the caller may not write is 403, also storing nothing.
#[tokio::test]
async fn patch_and_conditional_writes_inside_bundles() {
    use base64::Engine as _;
    let s = TestServer::start("txnpatch").await;
    let doc = s.user("dr.bpatch", &["physician"]).await;
    let other = s.user("dr.other", &["physician"]).await;
    let pt = s.patient(&doc, "Bundle", "Patch").await;
    let theirs = s.patient(&other, "Not", "Mine").await;
    let obs = |text: &str, pid: &str| {
        json!({"resourceType": "Observation", "status": "preliminary", "code": {"text": text},
               "identifier": [{"system": "urn:lab", "value": text}], "subject": {"reference": format!("Patient/{pid}")}})
    };
    let mut ids = Vec::new();
    for t in ["a", "b", "dup", "dup", "gone", "del"] {
        let r = s.post("/fhir/Observation", &doc, obs(t, &pt)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let r = s.post("/fhir/Observation", &other, obs("theirs", &theirs)).await;
    let their_obs = r.body["id"].as_str().unwrap().to_owned();
    let json_patch = |ops: Value| {
        json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
               "data": base64::engine::general_purpose::STANDARD.encode(ops.to_string())})
    };
    let txn = |entries: Value| json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let r = s
        .post(
            "/fhir",
            &doc,
            txn(json!([
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[0]), "ifMatch": "W/\"1\""}},
                {"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                    {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.status"},
                    {"name": "value", "valueCode": "amended"}]}]},
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[1])}},
                {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "new by condition"},
                              "subject": {"reference": format!("Patient/{pt}")}},
                 "request": {"method": "PUT", "url": "Observation?identifier=urn:lab|none-such"}},
                {"resource": {"resourceType": "Observation", "status": "cancelled", "code": {"text": "gone"},
                              "identifier": [{"system": "urn:lab", "value": "gone"}], "subject": {"reference": format!("Patient/{pt}")}},
                 "request": {"method": "PUT", "url": "Observation?identifier=urn:lab|gone"}},
                {"request": {"method": "DELETE", "url": "Observation?identifier=urn:lab|del"}}
            ])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let st: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert!(st[0].starts_with("200") && st[1].starts_with("200"), "{st:?}");
    assert!(st[2].starts_with("201"), "no match creates: {st:?}");
    assert!(st[3].starts_with("200"), "one match updates: {st:?}");
    assert!(st[4].starts_with("204") || st[4].starts_with("200"), "{st:?}");
    let a = s.get(&format!("/fhir/Observation/{}", ids[0]), &doc).await;
    assert_eq!((a.body["status"].as_str(), a.body["meta"]["versionId"].as_str()), (Some("final"), Some("2")));
    let del = s.get(&format!("/fhir/Observation/{}", ids[5]), &doc).await;
    assert_eq!(del.status, 410, "{}", del.text);
    let b = s.get(&format!("/fhir/Observation/{}", ids[1]), &doc).await;
    assert_eq!(b.body["status"], "amended");
    let gone = s.get(&format!("/fhir/Observation/{}", ids[4]), &doc).await;
    assert_eq!((gone.body["status"].as_str(), gone.body["meta"]["versionId"].as_str()), (Some("cancelled"), Some("2")));
    let created = r.body["entry"][2]["response"]["location"].as_str().unwrap().to_owned();
    assert!(created.contains("/fhir/Observation/"), "{created}");

    // Several matches: 412, and nothing of the transaction is stored.
    let before = s.snapshot();
    let r = s
        .post(
            "/fhir",
            &doc,
            txn(json!([
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"request": {"method": "DELETE", "url": "Observation?identifier=urn:lab|dup"}}
            ])),
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert!(r.text.contains("Bundle.entry[1]"), "{}", r.text);
    assert_eq!(s.snapshot(), before);
    // A patch of another physician's patient's record: 403, nothing stored.
    let r = s
        .post(
            "/fhir",
            &doc,
            txn(json!([
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "entered-in-error"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{their_obs}")}}
            ])),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.snapshot(), before);
    // A conditional delete sees only what the caller may find: the other
    // physician's record is not matched, so not deleted.
    let r = s
        .post(
            "/fhir",
            &doc,
            txn(json!([{"request": {"method": "DELETE", "url": "Observation?identifier=urn:lab|theirs"}}])),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let t = s.get(&format!("/fhir/Observation/{their_obs}"), &other).await;
    assert_eq!(t.status, 200, "{}", t.text);

    // Malformed entries: each refused with where it is; in a batch alone.
    let r = s
        .post(
            "/fhir",
            &doc,
            json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": {"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="},
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"resource": json_patch(json!({"op": "replace"})),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": "Observation?identifier=urn:lab|b"}},
                {"resource": json_patch(json!([{"op": "test", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"resource": json_patch(json!([{"op": "replace", "path": "/status", "value": "final"}])),
                 "request": {"method": "PATCH", "url": format!("Observation/{}", ids[2])}},
                {"request": {"method": "DELETE", "url": "Observation?identifier=urn:lab|dup"}}
            ]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let st: Vec<String> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        st.iter().map(|x| &x[..3]).collect::<Vec<_>>(),
        ["400", "400", "400", "200", "422", "200", "412"],
        "{}",
        r.text
    );
    let b = s.get(&format!("/fhir/Observation/{}", ids[1]), &doc).await;
    assert_eq!(b.body["status"], "final", "the conditional PATCH entry patched b");
    let dup = s.get(&format!("/fhir/Observation/{}", ids[2]), &doc).await;
    assert_eq!(dup.body["status"], "final");
}

/// System-level search (`GET /fhir?_type=…`, `POST /fhir/_search`): each
/// named type searched as its own search (decided, restricted and audited
/// as that), paged across the types with `_count` and next links; a
/// parameter some named type does not know is refused.
#[tokio::test]
async fn system_level_search_is_each_type_search() {
    let s = TestServer::start("syssearch").await;
    let doc = s.user("dr.sys", &["physician"]).await;
    let other = s.user("dr.sys2", &["physician"]).await;
    let pt = s.patient(&doc, "System", "Search").await;
    let theirs = s.patient(&other, "Other", "Record").await;
    let mut mine = Vec::new();
    for (t, body) in [
        (
            "Observation",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "a"}, "subject": {"reference": format!("Patient/{pt}")}}),
        ),
        (
            "Observation",
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "b"}, "subject": {"reference": format!("Patient/{pt}")}}),
        ),
        (
            "Condition",
            json!({"resourceType": "Condition", "code": {"text": "c"}, "subject": {"reference": format!("Patient/{pt}")}}),
        ),
    ] {
        let r = s.post(&format!("/fhir/{t}"), &doc, body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        mine.push(format!("{t}/{}", r.body["id"].as_str().unwrap()));
    }
    let r = s
        .post("/fhir/Observation", &other, json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{theirs}")}}))
        .await;
    let their_obs = format!("Observation/{}", r.body["id"].as_str().unwrap());
    // Each type's matches come by id; two created in the same millisecond
    // have ids in random order (UUIDv7).
    mine[..2].sort();
    let found = |b: &Value| -> Vec<String> {
        b["entry"].as_array().map_or(vec![], |a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    format!(
                        "{}/{}",
                        e["resource"]["resourceType"].as_str().unwrap(),
                        e["resource"]["id"].as_str().unwrap()
                    )
                })
                .collect()
        })
    };
    // One patient's records across two types.
    let r = s.get(&format!("/fhir?_type=Observation,Condition&patient=Patient/{pt}"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(found(&r.body), mine);
    // Every page with _count=1, following next links: what the two type
    // searches find (the other physician's record is not among them).
    let before = s.audits_where("search-type").len();
    let mut url = "/fhir?_type=Observation,Condition&_count=1&_total=accurate".to_owned();
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let r = s.get(&url, &doc).await;
        assert_eq!(r.status, 200, "{url}: {}", r.text);
        assert_eq!(r.body["total"], 3, "{}", r.text);
        let f = found(&r.body);
        assert!(f.len() <= 1, "{f:?}");
        all.extend(f);
        pages += 1;
        let next = r.body["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
        match next {
            Some(n) => {
                assert!(n.contains("_count=1") && n.contains("_type=Observation%2CCondition"), "{n}");
                url = n.strip_prefix(&s.base).unwrap().to_owned();
            }
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(all, mine, "every record once, in _type order");
    assert!(!all.contains(&their_obs));
    assert!(s.audits_where("search-type").len() > before, "each type search is audited as one");
    let r = s.get("/fhir?_type=Observation,Condition&_summary=count", &doc).await;
    assert_eq!((r.status.as_u16(), r.body["total"].as_u64()), (200, Some(3)), "{}", r.text);
    // POST /fhir/_search with a form body.
    let r = s
        .raw(
            Method::POST,
            "/fhir/_search",
            Some(&doc),
            Some((format!("_type=Condition&patient=Patient/{pt}"), "application/x-www-form-urlencoded")),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(found(&r.body), mine[2..].to_vec());
    // Unknown everywhere: ignored and reported, or refused when strict.
    let r = s.get("/fhir?_type=Observation&nonesuch=1", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("nonesuch"), "{}", r.text);
    let r = s
        .raw(Method::GET, "/fhir?_type=Observation&nonesuch=1", Some(&doc), None, &[("prefer", "handling=strict")])
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    // Refused: no _type, a parameter one type lacks, includes, a bad
    // cursor, an unknown type.
    for (q, why) in [
        ("/fhir?patient=Patient/x", "needs _type"),
        ("/fhir?_type=Patient,Observation&code=x", "not a search parameter of Patient"),
        ("/fhir?_type=Observation&_include=Observation:subject", "not supported in a system-level search"),
        ("/fhir?_type=Observation&_cursor=7", "not a cursor"),
        ("/fhir?_type=Nonsense", "not a FHIR R4 resource type"),
        ("/fhir?_type=AuditEvent", "not searched at the system level"),
    ] {
        let r = s.get(q, &doc).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(r.text.contains(why), "{q}: {}", r.text);
    }
    // A type the caller may not search refuses the whole request.
    let clerk = s.user("clerk.sys", &["clerk"]).await;
    let r = s.get("/fhir?_type=Patient,Observation", &clerk).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.req(Method::GET, "/fhir?_type=Patient", None, None).await.status, 401);
}

/// `[institution] number_patients`: a Patient created without an
/// identifier in the institution's patient-id system gets the next number
/// no Patient holds (a number given before is passed over), also inside
/// a transaction; one that brings its own keeps it; an update adds none.
#[tokio::test]
async fn new_patients_are_numbered_in_the_institutions_system() {
    let extra = "[institution]\nid = \"1319900001\"\nnumber_patients = true\npatient_number_digits = 6\n";
    let s = TestServer::start_cfg("numbering", extra, None).await;
    let doc = s.user("dr.num", &["physician"]).await;
    let sys = "urn:oid:1.2.392.100495.20.3.51.11319900001";
    let number = |b: &Value| -> Vec<String> {
        b["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["system"] == sys)
            .map(|i| i["value"].as_str().unwrap().to_owned())
            .collect()
    };
    let r = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "name": [{"family": "一"}]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(number(&r.body), ["000001"]);
    // Brought its own (from the registration system): kept, none added;
    // and that number is passed over later.
    let own = json!({"resourceType": "Patient", "identifier": [{"system": sys, "value": "000002"}]});
    let r = s.post("/fhir/Patient", &doc, own).await;
    assert_eq!(number(&r.body), ["000002"]);
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:other", "value": "x"}]}),
        )
        .await;
    assert_eq!(number(&r.body), ["000003"], "000002 is taken");
    assert_eq!(r.body["identifier"][0]["system"], "urn:other", "the other identifier kept");
    let id = r.body["id"].as_str().unwrap().to_owned();
    // Two in one transaction: two numbers.
    let r = s
        .post(
            "/fhir",
            &doc,
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
                {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let mut got = Vec::new();
    for e in r.body["entry"].as_array().unwrap() {
        let loc = e["response"]["location"].as_str().unwrap().strip_prefix(&s.base).unwrap().to_owned();
        let p = s.get(loc.split("/_history").next().unwrap(), &doc).await;
        got.extend(number(&p.body));
    }
    got.sort();
    assert_eq!(got, ["000004", "000005"]);
    // An update adds no number.
    let r = s
        .put(&format!("/fhir/Patient/{id}"), &doc, json!({"resourceType": "Patient", "id": id, "gender": "other"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(number(&r.body).is_empty(), "{}", r.text);
    // A refused create spends nothing it keeps.
    let bad = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "gender": "x"})).await;
    assert_eq!(bad.status, 400);
    let r = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient"})).await;
    assert_eq!(number(&r.body), ["000006"]);
}

#[tokio::test]
async fn everything_returns_the_compartment() {
    let s = TestServer::start("everything").await;
    let doc = s.user("dr.abe", &["physician"]).await;
    let pid = s.patient(&doc, "阿部", "一郎").await;
    let other = s.patient(&doc, "他人", "二郎").await;
    for i in 0..3 {
        assert_eq!(
            s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", 60.0 + f64::from(i))).await.status,
            201
        );
    }
    assert_eq!(s.post("/fhir/Observation", &doc, observation(&other, "8867-4", 99.0)).await.status, 201);
    let r = s
        .post("/fhir/Condition", &doc, json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{pid}")}, "code": {"text": "asthma"}}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.get(&format!("/fhir/Patient/{pid}/$everything"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let types: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "Observation").count(), 3);
    assert_eq!(types.iter().filter(|t| **t == "Patient").count(), 1);
    assert_eq!(types.iter().filter(|t| **t == "Condition").count(), 1);
    // paging
    let r = s.get(&format!("/fhir/Patient/{pid}/$everything?_count=2"), &doc).await;
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 2);
    assert!(r.body["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"));
    // a clerk cannot pull the clinical record
    let clerk = s.user("clerk2", &["clerk"]).await;
    let r = s.get(&format!("/fhir/Patient/{pid}/$everything"), &clerk).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn capability_statement_is_truthful() {
    let s = TestServer::start("meta").await;
    let r = s.req(Method::GET, "/fhir/metadata", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["fhirVersion"], "4.0.1");
    let res = r.body["rest"][0]["resource"].as_array().unwrap();
    let patient = res.iter().find(|r| r["type"] == "Patient").unwrap();
    let names: Vec<&str> =
        patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for n in ["name", "family", "given", "birthdate", "gender", "identifier", "_id", "_lastUpdated"] {
        assert!(names.contains(&n), "{n}");
    }
    // every declared search parameter is accepted by the server
    let doc = s.user("dr.meta", &["physician"]).await;
    let own = s.patient(&doc, "Meta", "Own").await;
    for r in res.iter().filter(|r| {
        ["Patient", "Observation", "Encounter", "Condition", "Procedure"].contains(&r["type"].as_str().unwrap())
    }) {
        for p in r["searchParam"].as_array().unwrap() {
            let name = p["name"].as_str().unwrap();
            let own_ref = format!("Patient/{own}");
            let v: &str = match p["type"].as_str().unwrap() {
                "date" => "ge2000-01-01",
                "quantity" => "gt75",
                "number" => "gt0.5",
                "composite" => "8867-4$gt75",
                "reference" if name == "patient" || name == "subject" => &own_ref,
                _ => "x",
            };
            let t = r["type"].as_str().unwrap();
            let resp = s.get(&format!("/fhir/{t}?{}={v}", p["name"].as_str().unwrap()), &doc).await;
            assert_eq!(resp.status, 200, "{t}?{}: {}", p["name"], resp.text);
        }
    }
    assert!(res.iter().all(|r| r["type"] != "Parameters"));
    // Every R4 core search parameter of a stored type is either listed
    // (with its definition) or named as not implemented; and one named so
    // is really not implemented: refused under handling=strict.
    let unsupported = |r: &Value| -> Vec<String> {
        r["extension"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["url"] == "https://mamori.dev/fhir/StructureDefinition/unsupported-search-param")
            .map(|e| e["valueCode"].as_str().unwrap().to_owned())
            .collect()
    };
    let un = unsupported(patient);
    for n in ["deceased", "language", "phonetic", "general-practitioner", "_tag", "_profile", "_text"] {
        assert!(un.iter().any(|u| u == n), "Patient {n} named as unsupported: {un:?}");
    }
    assert!(patient["documentation"].as_str().unwrap().contains("deceased"));
    let def = |r: &Value, n: &str| {
        r["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == n).map(|p| p["definition"].clone())
    };
    assert_eq!(def(patient, "birthdate"), Some(json!("http://hl7.org/fhir/SearchParameter/individual-birthdate")));
    assert_eq!(def(patient, "_id"), Some(json!("http://hl7.org/fhir/SearchParameter/Resource-id")));
    let mut named = 0;
    for r in res.iter().filter(|r| r["searchParam"].is_array()) {
        let t = r["type"].as_str().unwrap();
        let listed: Vec<&str> =
            r["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        let un = unsupported(r);
        assert!(un.iter().all(|u| !listed.contains(&u.as_str())), "{t}: both listed and unsupported");
        named += un.len();
        if ["Patient", "Observation", "Encounter", "MedicationRequest", "Organization"].contains(&t) {
            for u in &un {
                let resp = s
                    .raw(Method::GET, &format!("/fhir/{t}?{u}=x"), Some(&doc), None, &[("prefer", "handling=strict")])
                    .await;
                assert_eq!(resp.status, 400, "{t}?{u} under strict: {}", resp.text);
            }
        }
    }
    assert!(named > 1000, "the R4 core names about 1,700 parameters: {named} named unsupported");
    let ae = res.iter().find(|r| r["type"] == "AuditEvent").unwrap();
    assert_eq!(ae["interaction"].as_array().unwrap().len(), 2);
    let _ = Value::Null;
}

/// Issue 14: a client asking for `application/json` gets its answer
/// labelled so (the FHIR JSON body is the same); `application/fhir+json`
/// stays the default and wins when ranked higher.
#[tokio::test]
async fn the_answer_is_labelled_with_the_json_type_asked_for() {
    let s = TestServer::start("fhir-negotiate").await;
    let doc = s.user("dr.n", &["physician"]).await;
    let pid = s.patient(&doc, "型", "確認").await;
    let ct = |r: &common::Resp| r.header("content-type").unwrap_or_default();
    let path = format!("/fhir/Patient/{pid}");
    for (accept, want) in [
        (None, "application/fhir+json"),
        (Some("application/json"), "application/json"),
        (Some("application/fhir+json"), "application/fhir+json"),
        (Some("application/fhir+json, application/json;q=0.5"), "application/fhir+json"),
        (Some("application/fhir+json;q=0.4, application/json"), "application/json"),
        (Some("*/*"), "application/fhir+json"),
    ] {
        let headers: Vec<(&str, &str)> = accept.map(|a| vec![("accept", a)]).unwrap_or_default();
        let r = s.raw(Method::GET, &path, Some(&doc), None, &headers).await;
        assert_eq!(r.status, 200, "{accept:?}: {}", r.text);
        assert!(ct(&r).starts_with(want), "{accept:?}: {}", ct(&r));
        assert_eq!(r.body["id"], pid.as_str());
    }
    let r = s.get(&format!("/fhir/Patient?_id={pid}&_format=application/json"), &doc).await;
    assert!(ct(&r).starts_with("application/json"), "{}", ct(&r));
    let r = s.get(&format!("/fhir/Patient?_id={pid}&_format=json"), &doc).await;
    assert!(ct(&r).starts_with("application/fhir+json"), "_format=json is FHIR JSON: {}", ct(&r));
    // Errors follow the same label.
    let r = s.raw(Method::GET, "/fhir/Patient/nope", Some(&doc), None, &[("accept", "application/json")]).await;
    assert_eq!(r.status, 404);
    assert!(ct(&r).starts_with("application/json"), "{}", ct(&r));
}

/// `_include` and `_revinclude` add what the matches reference and what
/// references them, one level, each decided as a read: a resource the
/// caller may not read is left out and counted, never shown.
#[tokio::test]
async fn includes_are_decided_per_resource_like_reads() {
    let s = TestServer::start("include").await;
    let doc = s.user("dr.inc", &["physician"]).await;
    let other_doc = s.user("dr.other", &["physician"]).await;
    let mine = s.patient(&doc, "含", "一郎").await;
    let theirs = s.patient(&other_doc, "他", "二郎").await;
    let o1 = s.post("/fhir/Observation", &doc, observation(&mine, "8867-4", 61.0)).await;
    assert_eq!(o1.status, 201, "{}", o1.text);
    // The other patient's vital sign: dr.inc may read that patient's
    // demographics (role-demographics) but not this record.
    let o2 = s.post("/fhir/Observation", &other_doc, observation(&theirs, "8867-4", 70.0)).await;
    assert_eq!(o2.status, 201, "{}", o2.text);
    let o2 = o2.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get(&format!("/fhir/Patient/{theirs}"), &doc).await.status, 200);
    assert_eq!(s.get(&format!("/fhir/Observation/{o2}"), &doc).await.status, 403);

    let kinds = |b: &Value| -> Vec<(String, String)> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["search"]["mode"].as_str().unwrap().to_owned(),
                    e["resource"]["resourceType"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let pair = |m: &str, t: &str| (m.to_owned(), t.to_owned());

    // _include: the Observation's subject comes along.
    let r = s.get(&format!("/fhir/Observation?subject=Patient/{mine}&_include=Observation:subject"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(kinds(&r.body), [pair("match", "Observation"), pair("include", "Patient")]);
    assert!(
        r.body["link"][0]["url"].as_str().unwrap().contains("_include=Observation%3Asubject"),
        "{}",
        r.body["link"]
    );
    // The audit event names the included patient and counts what was added.
    let ev = s.last_audit();
    assert_eq!(ev["detail"]["included"], 1, "{ev}");

    // _revinclude: my patient's Observation comes along.
    let r = s.get(&format!("/fhir/Patient?_id={mine}&_revinclude=Observation:subject"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(kinds(&r.body), [pair("match", "Patient"), pair("include", "Observation")]);
    // The other patient's is withheld and counted, as its read is refused.
    let r = s.get(&format!("/fhir/Patient?_id={theirs}&_revinclude=Observation:subject"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(kinds(&r.body), [pair("match", "Patient"), pair("outcome", "OperationOutcome")]);
    let oo = r.body["entry"].as_array().unwrap().last().unwrap()["resource"].to_string();
    assert!(oo.contains("1 included resource(s) withheld"), "{oo}");
    assert!(!r.text.contains(&o2), "nothing of the withheld record reaches the caller");
    let ev = s.last_audit();
    assert_eq!(
        (ev["detail"]["included"].as_u64(), ev["detail"]["included_withheld"].as_u64()),
        (Some(0), Some(1)),
        "{ev}"
    );
    // The physician caring for that patient gets it.
    let r = s.get(&format!("/fhir/Patient?_id={theirs}&_revinclude=Observation:subject"), &other_doc).await;
    assert_eq!(kinds(&r.body), [pair("match", "Patient"), pair("include", "Observation")]);

    // Malformed includes are refused with an OperationOutcome.
    for bad in [
        "_include=Patient:subject",        // the type searched is Observation
        "_include=Observation:code",       // not a reference parameter
        "_include=Observation",            // no parameter
        "_revinclude=Nope:subject",        // unknown type
        "_include=Encounter:participant",  // another type needs :iterate
        "_include:iterate=Encounter:code", // not a reference parameter
    ] {
        let r = s.get(&format!("/fhir/Observation?subject=Patient/{mine}&{bad}"), &doc).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{bad}");
    }
}

/// Issue 14: reverse chaining (`_has`) looks only at the referring records
/// the caller could find by searching for them: a physician's `_has` on
/// Observations sees their own patients' Observations, never another
/// physician's patient's, and a role that may not search Observations is
/// refused.
#[tokio::test]
async fn has_looks_only_at_records_the_caller_may_find() {
    let s = TestServer::start("fhir-has").await;
    let dr_a = s.user("dr.a", &["physician"]).await;
    let dr_b = s.user("dr.b", &["physician"]).await;
    let clerk = s.user("clerk.c", &["clerk"]).await;
    let pa = s.patient(&dr_a, "Ay", "A").await;
    let pb = s.patient(&dr_b, "Be", "B").await;
    let pc = s.patient(&dr_a, "Ce", "C").await;
    for (tok, p, code) in [(&dr_a, &pa, "8867-4"), (&dr_b, &pb, "8867-4"), (&dr_a, &pc, "8310-5")] {
        let r = s.post("/fhir/Observation", tok, observation(p, code, 70.0)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let ids = |r: &common::Resp| -> Vec<String> {
        let mut v: Vec<String> = r.body["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    // Every physician reads every Patient, but B's heart rate is dr.b's:
    // dr.a's reverse chain finds A only, dr.b's finds B only.
    let q = "/fhir/Patient?_has:Observation:patient:code=8867-4";
    let r = s.get(q, &dr_a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(ids(&r), vec![pa.clone()]);
    assert_eq!(ids(&s.get(q, &dr_b).await), vec![pb.clone()]);
    let mut both = vec![pa.clone(), pc.clone()];
    both.sort();
    assert_eq!(ids(&s.get("/fhir/Patient?_has:Observation:patient:code=8867-4,8310-5", &dr_a).await), both);
    // With another condition, and the query kept in the self link.
    let r = s.get("/fhir/Patient?family=Ay&_has:Observation:subject:code=8867-4", &dr_a).await;
    assert_eq!(ids(&r), vec![pa.clone()]);
    let self_link = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "self").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(self_link.contains("_has"), "{self_link}");
    assert!(s.last_audit()["query"].as_str().unwrap().contains("_has"));
    // A clerk searches no Observations: a reverse chain through them is refused.
    let r = s.get(q, &clerk).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["status"], 403);
    // Malformed, unsupported and unknown.
    for (bad, status) in [
        ("_has:Observation:code:code=1", 400),
        ("_has:Observation=1", 400),
        ("_has:Nonsense:patient:code=1", 400),
        ("_has:Observation:patient:_has:Encounter:patient:status=x", 400),
        ("_has:Observation:performer:code=1", 200),
    ] {
        let r = s.get(&format!("/fhir/Patient?{bad}"), &dr_a).await;
        assert_eq!(r.status.as_u16(), status, "{bad}: {}", r.text);
    }
    let r = s
        .raw(
            Method::GET,
            "/fhir/Patient?_has:Observation:patient:nope=1",
            Some(&dr_a),
            None,
            &[("prefer", "handling=strict")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.get("/fhir/Patient?_has:Observation:patient:nope=1", &dr_a).await;
    assert_eq!(r.status, 200, "lenient by default: {}", r.text);
    assert!(r.text.contains("nope"), "reported as ignored: {}", r.text);
}

/// `:iterate` follows what was included, round after round, and every
/// resource it adds is decided as a read of it: another patient's records
/// reached through a shared practitioner are withheld and counted.
#[tokio::test]
async fn include_iterate_follows_included_resources_decided_like_reads() {
    let s = TestServer::start("include-iterate").await;
    let doc = s.user("dr.it", &["physician"]).await;
    let other_doc = s.user("dr.ot", &["physician"]).await;
    let mine = s.patient(&doc, "反復", "一郎").await;
    let theirs = s.patient(&other_doc, "反復", "二郎").await;
    let pr =
        s.post("/fhir/Practitioner", &doc, json!({"resourceType": "Practitioner", "name": [{"family": "当直"}]})).await;
    assert_eq!(pr.status, 201, "{}", pr.text);
    let pr = pr.body["id"].as_str().unwrap().to_owned();
    let encounter = |patient: &str| {
        json!({"resourceType": "Encounter", "status": "finished",
               "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
               "subject": {"reference": format!("Patient/{patient}")},
               "participant": [{"individual": {"reference": format!("Practitioner/{pr}")}}]})
    };
    let e1 = s.post("/fhir/Encounter", &doc, encounter(&mine)).await;
    assert_eq!(e1.status, 201, "{}", e1.text);
    let e1 = e1.body["id"].as_str().unwrap().to_owned();
    let e2 = s.post("/fhir/Encounter", &other_doc, encounter(&theirs)).await;
    assert_eq!(e2.status, 201, "{}", e2.text);
    let e2 = e2.body["id"].as_str().unwrap().to_owned();
    let mut obs = observation(&mine, "8310-5", 37.2);
    obs["encounter"] = json!({"reference": format!("Encounter/{e1}")});
    let o1 = s.post("/fhir/Observation", &doc, obs).await;
    assert_eq!(o1.status, 201, "{}", o1.text);
    let o1 = o1.body["id"].as_str().unwrap().to_owned();
    let mut obs = observation(&theirs, "8310-5", 39.0);
    obs["encounter"] = json!({"reference": format!("Encounter/{e2}")});
    let o2 = s.post("/fhir/Observation", &other_doc, obs).await;
    assert_eq!(o2.status, 201, "{}", o2.text);
    let o2 = o2.body["id"].as_str().unwrap().to_owned();

    let ids = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let r = &e["resource"];
                format!(
                    "{} {}/{}",
                    e["search"]["mode"].as_str().unwrap(),
                    r["resourceType"].as_str().unwrap(),
                    r["id"].as_str().unwrap_or("-")
                )
            })
            .collect()
    };
    // Forward: Observation -> its Encounter -> (iterate) the Encounter's practitioner.
    let r = s
        .get(
            &format!(
                "/fhir/Observation?_id={o1}&_include=Observation:encounter&_include:iterate=Encounter:participant"
            ),
            &doc,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        ids(&r.body),
        [format!("match Observation/{o1}"), format!("include Encounter/{e1}"), format!("include Practitioner/{pr}")]
    );
    assert!(
        r.body["link"][0]["url"].as_str().unwrap().contains("_include%3Aiterate=Encounter%3Aparticipant"),
        "{}",
        r.body["link"]
    );
    // Without :iterate the second level is not followed.
    let r = s.get(&format!("/fhir/Observation?_id={o1}&_include=Observation:encounter"), &doc).await;
    assert_eq!(ids(&r.body), [format!("match Observation/{o1}"), format!("include Encounter/{e1}")]);

    // Reverse: the practitioner -> Encounters naming them -> (iterate) their
    // Observations. The other patient's Encounter is withheld from dr.it
    // (no care relationship) and counted, and nothing is followed from it:
    // its Observation is never reached. dr.ot, who cares for that patient
    // but not for mine, sees the mirror image.
    let q = format!(
        "/fhir/Practitioner?_id={pr}&_revinclude=Encounter:participant&_revinclude:iterate=Observation:encounter"
    );
    let r = s.get(&q, &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let got = ids(&r.body);
    assert_eq!(
        got[..3],
        [format!("match Practitioner/{pr}"), format!("include Encounter/{e1}"), format!("include Observation/{o1}")]
    );
    assert!(got.last().unwrap().starts_with("outcome OperationOutcome"), "{got:?}");
    assert!(r.text.contains("1 included resource(s) withheld"), "{}", r.text);
    assert!(!r.text.contains(&o2) && !r.text.contains(&e2), "nothing of the other patient's records");
    let ev = s.last_audit();
    assert_eq!(
        (ev["detail"]["included"].as_u64(), ev["detail"]["included_withheld"].as_u64()),
        (Some(2), Some(1)),
        "{ev}"
    );
    let r = s.get(&q, &other_doc).await;
    let got = ids(&r.body);
    assert!(
        got.contains(&format!("include Encounter/{e2}")) && got.contains(&format!("include Observation/{o2}")),
        "{got:?}"
    );
    assert!(!r.text.contains(&o1), "{got:?}");
}

/// Conditional read: a client holding the current version gets 304
/// without the body (If-None-Match, If-Modified-Since), after the same
/// decision and audit event as a read; a caller who may not read gets the
/// refusal, never a 304. HEAD answers the headers alone.
#[tokio::test]
async fn conditional_read_and_head() {
    let s = TestServer::start("condread").await;
    let doc = s.user("dr.cond", &["physician"]).await;
    let pid = s.patient(&doc, "条件", "一郎").await;
    let o = s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", 60.0)).await;
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Observation/{oid}");
    let first = s.get(&path, &doc).await;
    let (etag, modified) = (first.header("etag").unwrap(), first.header("last-modified").unwrap());
    assert_eq!(etag, "W/\"1\"");
    let get = |h: Vec<(&'static str, String)>| {
        let (s, doc, path) = (&s, doc.clone(), path.clone());
        async move {
            let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.raw(Method::GET, &path, Some(&doc), None, &hs).await
        }
    };
    let before = s.audit_count();
    let r = get(vec![("if-none-match", etag.clone())]).await;
    assert_eq!(r.status, 304);
    assert!(r.text.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert_eq!(s.audit_count(), before + 1, "a 304 is a read: audited");
    assert_eq!(s.last_audit()["action"], "read");
    assert_eq!(get(vec![("if-none-match", "\"1\", W/\"7\"".into())]).await.status, 304);
    assert_eq!(get(vec![("if-none-match", "W/\"2\"".into())]).await.status, 200);
    assert_eq!(get(vec![("if-modified-since", modified.clone())]).await.status, 304);
    assert_eq!(get(vec![("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT".into())]).await.status, 200);
    assert_eq!(get(vec![("if-modified-since", "yesterday".into())]).await.status, 200, "an unreadable date is ignored");

    // A new version: the old ETag no longer matches.
    let mut body = first.body.clone();
    body["valueQuantity"]["value"] = json!(61.0);
    assert_eq!(s.put(&path, &doc, body).await.status, 200);
    let r = get(vec![("if-none-match", etag.clone())]).await;
    assert_eq!((r.status.as_u16(), r.header("etag").as_deref()), (200, Some("W/\"2\"")));

    // Someone who may not read it learns nothing from a conditional read.
    let other = s.user("dr.stranger", &["physician"]).await;
    let r = s.raw(Method::GET, &path, Some(&other), None, &[("if-none-match", "W/\"2\"")]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.header("etag"), None);

    // HEAD: the headers of a read, no body.
    let r = s.raw(Method::HEAD, &path, Some(&doc), None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
}

/// `:missing=true|false` finds resources without, or with, a value for a
/// parameter of any kind.
#[tokio::test]
async fn missing_modifier() {
    let s = TestServer::start("missing").await;
    let doc = s.user("dr.miss", &["physician"]).await;
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "name": [{"family": "有"}], "birthDate": "1980-02-03"}),
        )
        .await;
    let with = r.body["id"].as_str().unwrap().to_owned();
    let r = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "gender": "female"})).await;
    let without = r.body["id"].as_str().unwrap().to_owned();
    let ids = |b: &Value| -> Vec<String> {
        b["entry"].as_array().map_or(vec![], |a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
                .collect()
        })
    };
    for (q, want) in [
        ("birthdate:missing=true", vec![without.clone()]),
        ("birthdate:missing=false", vec![with.clone()]),
        ("name:missing=true", vec![without.clone()]),
        ("gender:missing=true", vec![with.clone()]),
        ("gender:missing=false&birthdate:missing=true", vec![without.clone()]),
    ] {
        let r = s.get(&format!("/fhir/Patient?{q}"), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(ids(&r.body), want, "{q}");
    }
    let r = s.get("/fhir/Patient?birthdate:missing=maybe", &doc).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("expected true or false"), "{}", r.text);
}

/// Token modifiers: `:not` (no value matching any of the listed codes,
/// also no value at all) and `:text` (the text that goes with a code:
/// CodeableConcept.text, Coding.display, Identifier.type.text, matched
/// case-, width- and kana-insensitively); the rest are refused with 400.
#[tokio::test]
async fn token_not_and_text_modifiers() {
    let s = TestServer::start("tokmod").await;
    let doc = s.user("dr.tok", &["physician"]).await;
    let pt = s.patient(&doc, "Tok", "Mod").await;
    let obs = |code: &str, display: &str, text: Option<&str>, status: &str| {
        let mut cc = json!({"coding": [{"system": "http://loinc.org", "code": code, "display": display}]});
        if let Some(t) = text {
            cc["text"] = json!(t);
        }
        json!({"resourceType": "Observation", "status": status, "code": cc, "subject": {"reference": format!("Patient/{pt}")}})
    };
    let mut ids = Vec::new();
    for body in [
        obs("8867-4", "Heart rate", Some("脈拍"), "final"),
        obs("8480-6", "Systolic blood pressure", None, "preliminary"),
        obs("2339-0", "Glucose [Mass/volume] in Blood", Some("ケツトウチ 血糖値"), "amended"),
    ] {
        let r = s.post("/fhir/Observation", &doc, body).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // A Patient without gender, and one with: `gender:not=male` finds both
    // the female and the one without.
    let female = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "gender": "female"})).await;
    let male = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "gender": "male"})).await;
    let (female, male) = (female.body["id"].as_str().unwrap().to_owned(), male.body["id"].as_str().unwrap().to_owned());
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
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let subj = format!("subject=Patient/{pt}");
    for (q, want) in [
        (format!("Observation?{subj}&status:not=final"), sorted(vec![ids[1].clone(), ids[2].clone()])),
        // A list under :not is "none of these", not "not this or not that".
        (format!("Observation?{subj}&status:not=final,amended"), vec![ids[1].clone()]),
        (format!("Observation?{subj}&code:not=http://loinc.org|8867-4"), sorted(vec![ids[1].clone(), ids[2].clone()])),
        (format!("Observation?{subj}&code:text=heart"), vec![ids[0].clone()]),
        (format!("Observation?{subj}&code:text=脈拍"), vec![ids[0].clone()]),
        // Kana and width folded; inside the text, not only its start.
        (format!("Observation?{subj}&code:text=けつとう"), vec![ids[2].clone()]),
        (format!("Observation?{subj}&code:text=BLOOD"), sorted(vec![ids[1].clone(), ids[2].clone()])),
        (format!("Observation?{subj}&code:text=nothing-like-this"), vec![]),
        (format!("Patient?_id={female},{male},{pt}&gender:not=male"), sorted(vec![female.clone(), pt.clone()])),
    ] {
        let r = s.get(&format!("/fhir/{q}"), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(found(&r.body), want, "{q}");
    }
    // After an update the old text no longer matches.
    let mut upd = obs("8867-4", "Pulse rate", None, "final");
    upd["id"] = json!(ids[0]);
    let r = s.put(&format!("/fhir/Observation/{}", ids[0]), &doc, upd).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.get(&format!("/fhir/Observation?{subj}&code:text=脈拍"), &doc).await;
    assert_eq!(found(&r.body), Vec::<String>::new());
    let r = s.get(&format!("/fhir/Observation?{subj}&code:text=pulse"), &doc).await;
    assert_eq!(found(&r.body), vec![ids[0].clone()]);
    // Modifiers mamori does not implement are refused, never ignored.
    for m in ["above", "below", "in", "not-in", "of-type"] {
        let r = s.get(&format!("/fhir/Observation?code:{m}=http://loinc.org|8867-4"), &doc).await;
        assert_eq!(r.status, 400, "{m}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
}

/// `_elements` and `_summary=data|true|text` on reads and searches: only
/// what was asked (with id and meta), tagged SUBSETTED; paths below the
/// top level, and summaries of a type whose summary is not known, are
/// refused.
#[tokio::test]
async fn elements_and_summary_data() {
    let s = TestServer::start("elements").await;
    let doc = s.user("dr.elem", &["physician"]).await;
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">山田 花子</div>"},
                   "name": [{"family": "山田", "given": ["花子"]}], "gender": "female", "birthDate": "1990-04-05"}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let subsetted = |v: &Value| v["meta"]["tag"].as_array().is_some_and(|t| t.iter().any(|x| x["code"] == "SUBSETTED"));

    let r = s.get(&format!("/fhir/Patient/{id}?_elements=name,gender"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.body["id"].as_str(), r.body["gender"].as_str()), (Some(id.as_str()), Some("female")));
    assert!(r.body.get("birthDate").is_none() && r.body.get("text").is_none(), "{}", r.body);
    assert!(subsetted(&r.body));
    let r = s.get(&format!("/fhir/Patient/{id}/_history/1?_summary=data"), &doc).await;
    assert!(r.body.get("text").is_none() && r.body["birthDate"] == "1990-04-05" && subsetted(&r.body), "{}", r.body);
    let r = s.get(&format!("/fhir/Patient/{id}"), &doc).await;
    assert!(r.body.get("text").is_some() && !subsetted(&r.body), "a plain read is whole");

    let r = s.get(&format!("/fhir/Patient?_id={id}&_elements=birthDate"), &doc).await;
    let e = &r.body["entry"][0]["resource"];
    assert_eq!(e["birthDate"], "1990-04-05");
    assert!(e.get("name").is_none() && subsetted(e), "{e}");
    assert!(r.body["link"][0]["url"].as_str().unwrap().contains("_elements=birthDate"));

    // _summary=true: the elements FHIR R4 marks summary (not the narrative,
    // not the contact); _summary=text: the narrative and mandatory elements.
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">佐藤</div>"},
                   "name": [{"family": "佐藤"}], "gender": "male", "maritalStatus": {"text": "M"},
                   "contact": [{"name": {"family": "佐藤"}, "relationship": [{"text": "妻"}]}]}),
        )
        .await;
    let id2 = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get(&format!("/fhir/Patient/{id2}?_summary=true"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["name"][0]["family"], "佐藤");
    assert!(r.body.get("text").is_none() && r.body.get("contact").is_none() && r.body.get("maritalStatus").is_none());
    assert!(subsetted(&r.body), "{}", r.body);
    let r = s.get(&format!("/fhir/Patient?_id={id2}&_summary=text"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = &r.body["entry"][0]["resource"];
    assert!(e.get("text").is_some() && e.get("name").is_none() && e.get("gender").is_none() && subsetted(e), "{e}");
    assert!(r.body["link"][0]["url"].as_str().unwrap().contains("_summary=text"));
    let obs = s.post("/fhir/Observation", &doc, observation(&id2, "8867-4", 70.0)).await;
    let r = s.get(&format!("/fhir/Observation?subject=Patient/{id2}&_summary=text"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let e = &r.body["entry"][0]["resource"];
    assert_eq!(
        (e["status"].as_str(), e["code"]["coding"][0]["code"].as_str()),
        (Some("final"), Some("8867-4")),
        "mandatory: {e}"
    );
    assert!(e.get("valueQuantity").is_none() && e.get("subject").is_none());
    assert_eq!(e["id"], obs.body["id"]);

    for bad in [
        format!("/fhir/Patient/{id}?_elements=name.family"),
        format!("/fhir/Patient/{id}?_summary=count"),
        format!("/fhir/Patient/{id}?_summary=everything"),
        "/fhir/CareTeam?_summary=true".to_owned(),
    ] {
        let r = s.get(&bad, &doc).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
}

/// Conditional update and delete (`PUT`/`DELETE /fhir/{type}?search`): the
/// one match is updated or deleted, none creates (or deletes nothing),
/// several are refused with 412; each write is decided like the plain one.
#[tokio::test]
async fn conditional_update_and_delete() {
    let s = TestServer::start("condwrite").await;
    let doc = s.user("dr.cw", &["physician"]).await;
    let sys = "urn:oid:1.2.392.100495.20.3.51.11234567890";
    let q = format!("identifier={sys}%7CA-1");
    let patient = |name: &str| json!({"resourceType": "Patient", "identifier": [{"system": sys, "value": "A-1"}], "name": [{"family": name}]});

    // No match, no id: created with a new id.
    let r = s.put(&format!("/fhir/Patient?{q}"), &doc, patient("初回")).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.last_audit()["action"], "create");
    // One match: updated in place.
    let r = s.put(&format!("/fhir/Patient?{q}"), &doc, patient("更新")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.body["id"].as_str(), r.body["meta"]["versionId"].as_str()), (Some(id.as_str()), Some("2")));
    assert_eq!(s.last_audit()["action"], "update");
    // If-Match applies to the match.
    let r = s
        .raw(
            Method::PUT,
            &format!("/fhir/Patient?{q}"),
            Some(&doc),
            Some((patient("古い").to_string(), "application/fhir+json")),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 412, "{}", r.text);
    // A body naming another id than the match's.
    let mut wrong = patient("別");
    wrong["id"] = json!("someone-else");
    assert_eq!(s.put(&format!("/fhir/Patient?{q}"), &doc, wrong).await.status, 400);
    // No match, but the body's id exists: refused, nothing overwritten.
    let other = s.patient(&doc, "他人", "花子").await;
    let mut clash = patient("衝突");
    clash["id"] = json!(other);
    clash["identifier"][0]["value"] = json!("B-9");
    let r = s.put(&format!("/fhir/Patient?identifier={sys}%7CB-9"), &doc, clash).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert_eq!(s.get(&format!("/fhir/Patient/{other}"), &doc).await.body["meta"]["versionId"], "1");
    // Several matches.
    let dup = |n: &str| json!({"resourceType": "Patient", "identifier": [{"system": sys, "value": "DUP"}], "name": [{"family": n}]});
    assert_eq!(s.post("/fhir/Patient", &doc, dup("一")).await.status, 201);
    assert_eq!(s.post("/fhir/Patient", &doc, dup("二")).await.status, 201);
    let dq = format!("/fhir/Patient?identifier={sys}%7CDUP");
    assert_eq!(s.put(&dq, &doc, dup("三")).await.status, 412);
    assert_eq!(s.delete(&dq, &doc).await.status, 412);
    // A search is needed.
    assert_eq!(s.put("/fhir/Patient", &doc, patient("x")).await.status, 400);
    assert_eq!(s.delete("/fhir/Patient", &doc).await.status, 400);

    // A physician without care of the patient finds nothing to update and
    // may not create the patient's record either.
    let stranger = s.user("dr.cw2", &["physician"]).await;
    let before = s.count("SELECT COUNT(*) FROM resource_versions");
    let obs = observation(&id, "8867-4", 70.0);
    let r = s.put(&format!("/fhir/Observation?subject=Patient/{id}&code=8867-4"), &stranger, obs).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.count("SELECT COUNT(*) FROM resource_versions"), before);

    // Conditional delete, decided like the plain delete: a physician may
    // not delete a registration, but may delete an Observation; the one
    // match goes, and nothing matching is fine.
    assert_eq!(s.delete(&format!("/fhir/Patient?{q}"), &doc).await.status, 403);
    let o = s.post("/fhir/Observation", &doc, observation(&id, "8480-6", 120.0)).await;
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let oq = format!("/fhir/Observation?subject=Patient/{id}&code=8480-6");
    let r = s.delete(&oq, &doc).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc).await.status, 410);
    assert_eq!(s.delete(&oq, &doc).await.status, 204);

    // Conditional patch: the one match is patched (decided like a plain
    // patch); none: 404; several: 412.
    let o = s.post("/fhir/Observation", &doc, observation(&id, "8302-2", 170.0)).await;
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let pq = format!("/fhir/Observation?subject=Patient/{id}&code=8302-2");
    let jp = |v: &str| {
        (json!([{"op": "replace", "path": "/status", "value": v}]).to_string(), "application/json-patch+json")
    };
    let r = s.raw(Method::PATCH, &pq, Some(&doc), Some(jp("amended")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.body["id"].as_str(), r.body["status"].as_str()), (Some(oid.as_str()), Some("amended")));
    assert_eq!(s.last_audit()["action"], "patch");
    let r = s.raw(Method::PATCH, &pq, Some(&doc), Some(jp("final")), &[("if-match", "W/\"1\"")]).await;
    assert_eq!(r.status, 412, "If-Match applies to the match: {}", r.text);
    let none = format!("/fhir/Observation?subject=Patient/{id}&code=0000-0");
    assert_eq!(s.raw(Method::PATCH, &none, Some(&doc), Some(jp("final")), &[]).await.status, 404);
    // (The stranger's search finds nothing: 404, which tells nothing.)
    assert_eq!(s.raw(Method::PATCH, &pq, Some(&stranger), Some(jp("final")), &[]).await.status, 404);
    assert_eq!(s.post("/fhir/Observation", &doc, observation(&id, "8302-2", 171.0)).await.status, 201);
    assert_eq!(s.raw(Method::PATCH, &pq, Some(&doc), Some(jp("final")), &[]).await.status, 412);
    assert_eq!(s.raw(Method::PATCH, "/fhir/Observation", Some(&doc), Some(jp("final")), &[]).await.status, 400);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc).await.body["meta"]["versionId"], "2");
}

/// PATCH with a JSON Patch or a FHIRPath Patch: a new version with only
/// the change; decided before the patch is applied (a failing `test` tells an unauthorized
/// caller nothing); bad patches change nothing.
#[tokio::test]
async fn json_patch() {
    let s = TestServer::start("patch").await;
    let doc = s.user("dr.patch", &["physician"]).await;
    let pid = s.patient(&doc, "修正", "一郎").await;
    let o = s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", 60.0)).await;
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let path = format!("/fhir/Observation/{oid}");
    let patch = |ops: Value, token: &str, if_match: Option<&str>| {
        let (s, path, token, if_match) = (&s, path.clone(), token.to_owned(), if_match.map(str::to_owned));
        async move {
            let mut h = vec![];
            if let Some(m) = &if_match {
                h.push(("if-match", m.as_str()));
            }
            s.raw(Method::PATCH, &path, Some(&token), Some((ops.to_string(), "application/json-patch+json")), &h).await
        }
    };
    let r = patch(
        json!([{"op": "test", "path": "/valueQuantity/value", "value": 60.0},
               {"op": "replace", "path": "/valueQuantity/value", "value": 62.0},
               {"op": "add", "path": "/note", "value": [{"text": "再測定"}]}]),
        &doc,
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (r.body["valueQuantity"]["value"].as_f64(), r.body["meta"]["versionId"].as_str()),
        (Some(62.0), Some("2"))
    );
    assert_eq!(r.body["note"][0]["text"], "再測定");
    assert_eq!(r.body["status"], "final", "untouched elements stay");
    assert_eq!(s.last_audit()["action"], "patch");

    let versions = || s.count("SELECT COUNT(*) FROM resource_versions");
    let before = versions();
    // A failing test, a stale version, a change of id, an invalid result,
    // a malformed patch, another media type: nothing changes.
    let r = patch(json!([{"op": "test", "path": "/status", "value": "preliminary"}]), &doc, None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(patch(json!([{"op": "remove", "path": "/note"}]), &doc, Some("W/\"1\"")).await.status, 412);
    assert_eq!(patch(json!([{"op": "replace", "path": "/id", "value": "x"}]), &doc, None).await.status, 400);
    let r = patch(json!([{"op": "replace", "path": "/status", "value": "bogus"}]), &doc, None).await;
    assert_eq!(r.status, 400, "a result that is not a valid Observation: {}", r.text);
    assert!(r.text.contains("Observation.status"), "{}", r.text);
    assert_eq!(patch(json!({"op": "remove"}), &doc, None).await.status, 400);
    let r = s.raw(Method::PATCH, &path, Some(&doc), Some((json!([]).to_string(), "text/plain")), &[]).await;
    assert_eq!(r.status, 415, "{}", r.text);
    let r = s.raw(Method::PATCH, &path, Some(&doc), Some((json!([]).to_string(), "application/fhir+json")), &[]).await;
    assert_eq!(r.status, 400, "a JSON Patch sent as FHIR: {}", r.text);
    assert_eq!(versions(), before);

    // FHIRPath Patch: a Parameters resource of operations.
    let fp = |ops: Value, token: &str| {
        let (s, path, token) = (&s, path.clone(), token.to_owned());
        let body = json!({"resourceType": "Parameters", "parameter": ops}).to_string();
        async move { s.raw(Method::PATCH, &path, Some(&token), Some((body, "application/fhir+json")), &[]).await }
    };
    let op = |kind: &str, p: &str, extra: Vec<Value>| {
        let mut part = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": p})];
        part.extend(extra);
        json!({"name": "operation", "part": part})
    };
    let r = fp(
        json!([
            op("replace", "Observation.value", vec![json!({"name": "value", "valueQuantity": {"value": 64, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})]),
            op("insert", "Observation.note", vec![json!({"name": "index", "valueInteger": 0}), json!({"name": "value", "valueAnnotation": {"text": "安静時"}})]),
            op("delete", "Observation.note.where(text = '再測定')", vec![]),
        ]),
        &doc,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["valueQuantity"]["value"], 64);
    assert_eq!(r.body["note"], json!([{"text": "安静時"}]));
    assert_eq!(s.last_audit()["action"], "patch");
    let before = versions();
    for (ops, status) in [
        // Nothing to replace; an unsupported expression; an invalid result.
        (
            json!([op(
                "replace",
                "Observation.issued",
                vec![json!({"name": "value", "valueInstant": "2026-01-01T00:00:00Z"})]
            )]),
            422,
        ),
        (json!([op("delete", "Observation.note.where(text.startsWith('安'))", vec![])]), 400),
        (json!([op("replace", "Observation.status", vec![json!({"name": "value", "valueCode": "bogus"})])]), 400),
        (json!([op("delete", "Observation.id", vec![])]), 422),
    ] {
        let r = fp(ops, &doc).await;
        assert_eq!(r.status, status, "{}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome");
    }
    assert_eq!(fp(json!([op("delete", "Observation.note", vec![])]), &stranger_probe(&s).await).await.status, 403);
    assert_eq!(versions(), before);

    // Someone who may not write the record is refused before any test.
    let stranger = s.user("dr.patch2", &["physician"]).await;
    for ops in [
        json!([{"op": "test", "path": "/status", "value": "final"}]),
        json!([{"op": "test", "path": "/status", "value": "x"}]),
    ] {
        let r = patch(ops, &stranger, None).await;
        assert_eq!(r.status, 403, "{}", r.text);
    }
    assert_eq!(patch(json!([]), &doc, None).await.status, 200, "an empty patch is a no-op version");
    assert_eq!(
        s.raw(
            Method::PATCH,
            "/fhir/Observation/nope",
            Some(&doc),
            Some(("[]".into(), "application/json-patch+json")),
            &[]
        )
        .await
        .status,
        404
    );
}

/// A physician with no care relationship to anybody.
async fn stranger_probe(s: &TestServer) -> String {
    s.user("dr.nobody", &["physician"]).await
}

/// Chained parameters (one level): the reference must point at a resource
/// satisfying the chained condition; the results are decided and
/// restricted like any search.
#[tokio::test]
async fn chained_parameters() {
    let s = TestServer::start("chain").await;
    let doc = s.user("dr.chain", &["physician"]).await;
    let a = s.patient(&doc, "鎖田", "一郎").await;
    let b = s.patient(&doc, "別田", "二郎").await;
    for (p, v) in [(&a, 61.0), (&a, 62.0), (&b, 70.0)] {
        assert_eq!(s.post("/fhir/Observation", &doc, observation(p, "8867-4", v)).await.status, 201);
    }
    let subjects = |body: &Value| -> Vec<String> {
        body["entry"].as_array().map_or(vec![], |e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| x["resource"]["subject"]["reference"].as_str().unwrap().to_owned())
                .collect()
        })
    };
    let want_a = vec![format!("Patient/{a}"), format!("Patient/{a}")];
    for q in
        ["subject:Patient.name=鎖", "patient.name=鎖田", "patient.family:exact=鎖田", "subject:Patient.name=鎖田,無い"]
    {
        let r = s.get(&format!("/fhir/Observation?{q}"), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(subjects(&r.body), want_a, "{q}");
    }
    let r = s.get("/fhir/Observation?patient.name=鎖田&value-quantity=1", &doc).await;
    assert_eq!(r.status, 200, "an unknown parameter beside a chain is ignored: {}", r.text);
    let r = s.get(&format!("/fhir/Observation?patient.birthdate=1970-01-01&patient._id={b}"), &doc).await;
    assert_eq!(subjects(&r.body), vec![format!("Patient/{b}")]);
    // Refused with the reason.
    for q in ["subject.name=鎖田", "code.name=x", "subject:Patient.name.family=x", "subject:Nope.name=x"] {
        let r = s
            .raw(Method::GET, &format!("/fhir/Observation?{q}"), Some(&doc), None, &[("prefer", "handling=strict")])
            .await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
    // Another physician: the search is restricted to the patients in care.
    let stranger = s.user("dr.chain2", &["physician"]).await;
    let r = s.get("/fhir/Observation?patient.name=鎖田", &stranger).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(subjects(&r.body).is_empty(), "{}", r.text);
}

/// `_sort` on date, string, token and quantity parameters, one or several
/// keys, paged with `next` links: every match once, in order, those
/// without a value last.
#[tokio::test]
async fn sort_by_parameter_pages_in_order() {
    let s = TestServer::start("sortp").await;
    let doc = s.user("dr.sort", &["physician"]).await;
    let pid = s.patient(&doc, "整列", "一郎").await;
    let days = ["2026-11-03", "2026-11-01", "2026-11-05", "2026-11-02", "2026-11-04", "2026-11-03"];
    for (i, d) in days.iter().enumerate() {
        let mut o = observation(&pid, "8867-4", 60.0 + i as f64);
        o["effectiveDateTime"] = json!(format!("{d}T09:00:00+09:00"));
        assert_eq!(s.post("/fhir/Observation", &doc, o).await.status, 201);
    }
    let mut none = observation(&pid, "8867-4", 99.0);
    none.as_object_mut().unwrap().remove("effectiveDateTime");
    assert_eq!(s.post("/fhir/Observation", &doc, none).await.status, 201);

    let walk = |first: String| {
        let (s, doc) = (&s, doc.clone());
        async move {
            let mut out = Vec::new();
            let mut url = Some(first);
            let mut pages = 0;
            while let Some(u) = url {
                let path = u.split_once("/fhir/").map(|(_, p)| format!("/fhir/{p}")).unwrap_or(u);
                let r = s.get(&path, &doc).await;
                assert_eq!(r.status, 200, "{path}: {}", r.text);
                for e in r.body["entry"].as_array().into_iter().flatten() {
                    out.push(
                        e["resource"]["effectiveDateTime"].as_str().map(|d| d[..10].to_owned()).unwrap_or_default(),
                    );
                }
                url = r.body["link"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|l| l["relation"] == "next")
                    .map(|l| l["url"].as_str().unwrap().to_owned());
                pages += 1;
                assert!(pages < 20);
            }
            out
        }
    };
    let asc = walk(format!("/fhir/Observation?subject=Patient/{pid}&_sort=date&_count=2")).await;
    assert_eq!(asc, ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-03", "2026-11-04", "2026-11-05", ""]);
    let desc = walk(format!("/fhir/Observation?subject=Patient/{pid}&_sort=-date&_count=3")).await;
    assert_eq!(desc, ["2026-11-05", "2026-11-04", "2026-11-03", "2026-11-03", "2026-11-02", "2026-11-01", ""]);
    // Several keys, walked one entry per page: date, then value (ties of
    // the first key ordered by the second), the one without a date last.
    let values = |first: String| {
        let (s, doc) = (&s, doc.clone());
        async move {
            let mut out = Vec::new();
            let mut url = Some(first);
            while let Some(u) = url {
                let path = u.split_once("/fhir/").map(|(_, p)| format!("/fhir/{p}")).unwrap_or(u);
                let r = s.get(&path, &doc).await;
                assert_eq!(r.status, 200, "{path}: {}", r.text);
                for e in r.body["entry"].as_array().into_iter().flatten() {
                    out.push(e["resource"]["valueQuantity"]["value"].as_f64().unwrap() as i64);
                }
                url = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| {
                    let u = l["url"].as_str().unwrap().to_owned();
                    assert!(
                        u.contains("_sort=date%2C-value-quantity") || u.contains("_sort=-date%2Cvalue-quantity%2C_id"),
                        "{u}"
                    );
                    u
                });
                assert!(out.len() < 20);
            }
            out
        }
    };
    let v = values(format!("/fhir/Observation?subject=Patient/{pid}&_sort=date,-value-quantity&_count=1")).await;
    assert_eq!(v, [61, 63, 65, 60, 64, 62, 99]);
    let v = values(format!("/fhir/Observation?subject=Patient/{pid}&_sort=-date,value-quantity,_id&_count=2")).await;
    assert_eq!(v, [62, 64, 60, 65, 63, 61, 99]);
    // Strings and tokens.
    for (family, gender) in [("うえの", "male"), ("あべ", "female"), ("かとう", "other")] {
        let p = json!({"resourceType": "Patient", "name": [{"family": family}], "gender": gender});
        assert_eq!(s.post("/fhir/Patient", &doc, p).await.status, 201);
    }
    let r = s.get("/fhir/Patient?family=あ,う,か&_sort=family", &doc).await;
    let fam: Vec<&str> = r.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["name"][0]["family"].as_str().unwrap())
        .collect();
    assert_eq!(fam, ["あべ", "うえの", "かとう"]);
    let r = s.get("/fhir/Patient?family=あ,う,か&_sort=-gender", &doc).await;
    let g: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["gender"].as_str().unwrap()).collect();
    assert_eq!(g, ["other", "male", "female"]);
    // Refused: references, unknown parameters, a descending tie-break, more
    // than three keys, a key twice, a cursor of another sort.
    for q in [
        "_sort=subject",
        "_sort=nope",
        "_sort=date,-_id",
        "_sort=date,code,status,value-quantity",
        "_sort=date,-date",
        "_sort=date&_cursor=1700000000000000.abc",
        "_sort=date,code&_cursor=i5.abc",
    ] {
        let r = s.get(&format!("/fhir/Observation?{q}"), &doc).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
}

/// Quantity search: prefixes, the precision of the value as written, the
/// unit; quantities stored before the index existed are found too.
#[tokio::test]
async fn quantity_search() {
    let s = TestServer::start("qty").await;
    let doc = s.user("dr.qty", &["physician"]).await;
    let pid = s.patient(&doc, "量", "一郎").await;
    let mut ids = std::collections::HashMap::new();
    for v in [60.0, 75.0, 75.04, 90.5] {
        let r = s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", v)).await;
        ids.insert(r.body["id"].as_str().unwrap().to_owned(), v);
    }
    let mut mg = observation(&pid, "2345-7", 5.4);
    mg["valueQuantity"] =
        json!({"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"});
    let r = s.post("/fhir/Observation", &doc, mg).await;
    ids.insert(r.body["id"].as_str().unwrap().to_owned(), 5.4);
    let mut hb = observation(&pid, "718-7", 14.2);
    hb["valueQuantity"] = json!({"value": 14.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"});
    let r = s.post("/fhir/Observation", &doc, hb).await;
    ids.insert(r.body["id"].as_str().unwrap().to_owned(), 14.2);
    // Blood pressures (components); their "values" here name them.
    for (id_value, sys, dia) in [(1120.0, 120, 80), (1150.0, 150, 70)] {
        let comp = |code: &str, v: i64| {
            json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                   "valueQuantity": {"value": v, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
        };
        let bp = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": format!("Patient/{pid}")},
            "component": [comp("8480-6", sys), comp("8462-4", dia)]});
        let r = s.post("/fhir/Observation", &doc, bp).await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.insert(r.body["id"].as_str().unwrap().to_owned(), id_value);
    }
    let values = |b: &Value| -> Vec<f64> {
        let mut v: Vec<f64> = b["entry"].as_array().map_or(vec![], |e| {
            e.iter()
                .filter(|x| x["search"]["mode"] == "match")
                .map(|x| ids[x["resource"]["id"].as_str().unwrap()])
                .collect()
        });
        v.sort_by(f64::total_cmp);
        v
    };
    for (q, want) in [
        ("value-quantity=gt75", vec![75.04, 90.5]),
        ("value-quantity=ge75", vec![75.0, 75.04, 90.5]),
        ("value-quantity=75", vec![75.0, 75.04]),
        ("value-quantity=75.0", vec![75.0, 75.04]),
        ("value-quantity=75.00", vec![75.0]),
        ("value-quantity=lt61", vec![5.4, 14.2, 60.0]),
        ("value-quantity=ne75", vec![5.4, 14.2, 60.0, 90.5]),
        ("value-quantity=5.4|http://unitsofmeasure.org|mmol/L", vec![5.4]),
        // Across UCUM units: converted to base units before comparing.
        ("value-quantity=5400|http://unitsofmeasure.org|umol/L", vec![5.4]),
        ("value-quantity=142|http://unitsofmeasure.org|g/L", vec![14.2]),
        ("value-quantity=gt140|http://unitsofmeasure.org|g/L", vec![14.2]),
        ("value-quantity=lt140|http://unitsofmeasure.org|g/L", vec![]),
        ("value-quantity=gt1|http://unitsofmeasure.org|/s", vec![75.0, 75.04, 90.5]),
        // 1/s as written is 0.5 to 1.5 per second: 30 to 90 per minute.
        ("value-quantity=1||/s", vec![60.0, 75.0, 75.04]),
        ("value-quantity=1.00||/s", vec![60.0]),
        ("value-quantity=97|http://unitsofmeasure.org|mg/dL", vec![]),
        // Composites: the code and the quantity of the same element.
        ("code-value-quantity=http://loinc.org|8867-4$gt80", vec![90.5]),
        ("code-value-quantity=718-7$142|http://unitsofmeasure.org|g/L", vec![14.2]),
        ("code-value-quantity=http://loinc.org|2345-7$gt80", vec![]),
        ("component-code-value-quantity=http://loinc.org|8480-6$gt140", vec![1150.0]),
        ("component-code-value-quantity=8462-4$gt75", vec![1120.0]),
        ("component-code-value-quantity=8462-4$gt16|http://unitsofmeasure.org|kPa", vec![]),
        ("component-code-value-quantity=8480-6$ge15.9|http://unitsofmeasure.org|kPa", vec![1120.0, 1150.0]),
        // 120 mm[Hg] is 15.9986 kPa.
        ("component-code-value-quantity=8480-6$ge16|http://unitsofmeasure.org|kPa", vec![1150.0]),
        ("component-value-quantity=gt140", vec![1150.0]),
        ("value-quantity=5.4||/min", vec![]),
        ("value-quantity=le100||/min", vec![60.0, 75.0, 75.04, 90.5]),
        ("value-quantity:missing=false&code=2345-7", vec![5.4]),
        // `ap`: within 10 % (at least the value's own precision).
        ("value-quantity=ap75", vec![75.0, 75.04]),
        ("value-quantity=ap66", vec![60.0]),
        ("value-quantity=ap5", vec![5.4]),
        ("value-quantity=ap100", vec![90.5]),
    ] {
        let r = s.get(&format!("/fhir/Observation?{}", q.replace('|', "%7C")), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        assert_eq!(values(&r.body), want, "{q}");
    }
    // Number search (RiskAssessment.probability).
    let mut risk = std::collections::HashMap::new();
    for p in [0.25, 0.8] {
        let r = s
            .post(
                "/fhir/RiskAssessment",
                &doc,
                json!({"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": format!("Patient/{pid}")},
                       "prediction": [{"probabilityDecimal": p}]}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        risk.insert(r.body["id"].as_str().unwrap().to_owned(), p);
    }
    for (q, want) in
        [("probability=gt0.5", vec![0.8]), ("probability=0.25", vec![0.25]), ("probability=le0.8", vec![0.25, 0.8])]
    {
        let r = s.get(&format!("/fhir/RiskAssessment?{q}"), &doc).await;
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        let mut got: Vec<f64> =
            r.body["entry"].as_array().unwrap().iter().map(|e| risk[e["resource"]["id"].as_str().unwrap()]).collect();
        got.sort_by(f64::total_cmp);
        assert_eq!(got, want, "{q}");
    }
    let r = s.get("/fhir/RiskAssessment?probability=0.25%7C%7Cmg", &doc).await;
    assert_eq!(r.status, 400, "a number has no unit: {}", r.text);
    // `ap` on a date: 10 % of the distance from now on either side (about
    // 5.7 years around 1970; a few days around last week).
    let mut born = std::collections::HashMap::new();
    for d in ["1966-01-01", "1970-01-01", "1990-01-01"] {
        let r = s
            .post(
                "/fhir/Patient",
                &doc,
                json!({"resourceType": "Patient", "name": [{"family": "近似"}], "birthDate": d}),
            )
            .await;
        born.insert(r.body["id"].as_str().unwrap().to_owned(), d);
    }
    let r = s.get("/fhir/Patient?family=近似&birthdate=ap1968-01-01", &doc).await;
    let mut found: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().map(|e| born[e["resource"]["id"].as_str().unwrap()]).collect();
    found.sort();
    assert_eq!(found, ["1966-01-01", "1970-01-01"], "{}", r.text);
    for bad in [
        "value-quantity=gt",
        "value-quantity=1e2",
        "code-value-quantity=8867-4",
        "code-value-quantity=$gt1",
        "_sort=code-value-quantity",
    ] {
        assert_eq!(s.get(&format!("/fhir/Observation?{bad}"), &doc).await.status, 400, "{bad}");
    }
    // Stored before quantity search existed: migration 16 indexes them
    // (with their canonical values).
    let rw = |f: &(dyn Fn(&mut dyn mamori_store::sql::Conn) -> u64 + Sync)| match &s.pg {
        Some((url, _)) => common::on_pg(url, |c| f(c)),
        None => {
            let mut c =
                mamori_store::open_sqlite(&s.dir.join("mamori.db"), mamori_store::Synchronous::Normal, false).unwrap();
            f(&mut c)
        }
    };
    rw(&|c| {
        c.exec("DELETE FROM idx_quantity", &[]).unwrap();
        0
    });
    assert!(values(&s.get("/fhir/Observation?value-quantity=gt0", &doc).await.body).is_empty());
    let n = rw(&|c| mamori_store::records::index_quantities(c).unwrap());
    assert_eq!(n, 10, "eight Observations and two RiskAssessments");
    assert_eq!(values(&s.get("/fhir/Observation?value-quantity=gt0", &doc).await.body).len(), 6);
    let r = s.get("/fhir/Observation?value-quantity=142%7Chttp://unitsofmeasure.org%7Cg/L", &doc).await;
    assert_eq!(values(&r.body), [14.2], "canonical values indexed again");
}

/// `GET /fhir/_history`: every type's versions, newest first, each decided
/// as the history of its own resource; the rest is withheld and counted.
#[tokio::test]
async fn system_history_decides_each_version() {
    let s = TestServer::start("syshist").await;
    let doc = s.user("dr.hist", &["physician"]).await;
    let other = s.user("dr.hist2", &["physician"]).await;
    let mine = s.patient(&doc, "歴史", "一郎").await;
    let theirs = s.patient(&other, "他歴", "二郎").await;
    let o = s.post("/fhir/Observation", &doc, observation(&mine, "8867-4", 60.0)).await;
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let o2 = s.post("/fhir/Observation", &other, observation(&theirs, "8867-4", 70.0)).await;
    let o2 = o2.body["id"].as_str().unwrap().to_owned();
    let refs = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| {
                e["resource"]["id"].as_str().map(|i| format!("{}/{i}", e["resource"]["resourceType"].as_str().unwrap()))
            })
            .filter(|r| !r.starts_with("OperationOutcome"))
            .collect()
    };
    let r = s.get("/fhir/_history", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["type"], "history");
    let seen = refs(&r.body);
    assert!(seen.contains(&format!("Observation/{oid}")), "{seen:?}");
    assert!(
        seen.iter().position(|x| *x == format!("Observation/{oid}"))
            < seen.iter().position(|x| *x == format!("Patient/{mine}")),
        "newest first: {seen:?}"
    );
    assert!(!r.text.contains(&o2), "the other patient's Observation is not shown");
    assert!(r.text.contains("withheld"), "{}", r.text);
    let ev = s.last_audit();
    assert_eq!(ev["action"], "history-system");
    assert!(ev["detail"]["withheld"].as_u64().unwrap() >= 1, "{ev}");
    // Paging: one version per page, following next links, sees the same.
    let mut url = Some("/fhir/_history?_count=1".to_owned());
    let mut paged = Vec::new();
    while let Some(u) = url {
        let r = s.get(&u, &doc).await;
        paged.extend(refs(&r.body));
        url = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| {
            let full = l["url"].as_str().unwrap();
            format!("/fhir/{}", full.split_once("/fhir/").unwrap().1)
        });
        assert!(paged.len() < 100);
    }
    assert_eq!(paged, seen);
    assert_eq!(s.get("/fhir/_history?_bogus=1", &doc).await.status, 400);
}

/// Without `_total`, a search counts its matches only up to 1,000 (a
/// broad search over millions of resources must not cost as much as its
/// matches); past that the searchset has no `total`. `_total=accurate`
/// and `_summary=count` still count them all, and `_total=none` none.
#[tokio::test]
async fn a_search_counts_its_matches_up_to_a_bound() {
    let s = TestServer::start("total-bound").await;
    let doc = s.user("dr.count", &["physician"]).await;
    let p = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "name": [{"family": "数"}]})).await;
    assert_eq!(p.status, 201, "{}", p.text);
    let pid = p.body["id"].as_str().unwrap().to_owned();
    let obs = |code: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{pid}")}},
               "request": {"method": "POST", "url": "Observation"}})
    };
    // 1,001 of one code, 1,000 of another.
    let mut entries: Vec<Value> = (0..1001).map(|_| obs("8867-4")).collect();
    entries.extend((0..1000).map(|_| obs("8480-6")));
    let r = s.post("/fhir", &doc, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(500)]);

    let r = s.get("/fhir/Observation?code=http://loinc.org|8867-4&_count=5", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("total").is_none(), "no total past the bound: {}", r.body["total"]);
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 5);
    assert!(r.text.contains("\"next\""), "a next page");
    let r = s.get("/fhir/Observation?code=http://loinc.org|8480-6&_count=5", &doc).await;
    assert_eq!(r.body["total"], 1000, "counted up to the bound");
    let r = s.get("/fhir/Observation?code=http://loinc.org|8867-4&_count=5&_total=accurate", &doc).await;
    assert_eq!(r.body["total"], 1001);
    let r = s.get("/fhir/Observation?subject=Patient/{pid}&_summary=count".replace("{pid}", &pid).as_str(), &doc).await;
    assert_eq!(r.body["total"], 2001, "{}", r.text);
    let r = s.get("/fhir/Observation?code=http://loinc.org|8480-6&_total=none", &doc).await;
    assert!(r.body.get("total").is_none());
}

/// A condition that matches 5,000 or more index rows is checked per
/// resource in page order (EXISTS) instead of listing all its matches
/// first: the answers are the same. Paging walks every match once in id
/// order, a narrow condition beside it still narrows, a caller without
/// care sees nothing, and an exact count is still given when asked for.
#[tokio::test]
async fn a_broad_condition_pages_and_restricts_like_a_narrow_one() {
    let s = TestServer::start("broad").await;
    let doc = s.user("dr.broad", &["physician"]).await;
    let other = s.user("dr.other", &["physician"]).await;
    let mut pids = Vec::new();
    for name in ["広", "狭"] {
        let p = s.post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "name": [{"family": name}]})).await;
        assert_eq!(p.status, 201, "{}", p.text);
        pids.push(p.body["id"].as_str().unwrap().to_owned());
    }
    let obs = |pid: &str, code: &str| {
        json!({"resource": {"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{pid}")}},
               "request": {"method": "POST", "url": "Observation"}})
    };
    for _ in 0..2 {
        let entries: Vec<Value> = (0..2600).map(|_| obs(&pids[0], "8867-4")).collect();
        let r = s.post("/fhir", &doc, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
        assert_eq!(r.status, 200, "{}", &r.text[..r.text.len().min(500)]);
    }
    let entries =
        vec![obs(&pids[1], "8867-4"), obs(&pids[1], "8867-4"), obs(&pids[1], "8867-4"), obs(&pids[1], "718-7")];
    let r = s.post("/fhir", &doc, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Pages of the broad search: ids ascending, none twice.
    let mut url = "/fhir/Observation?code=http://loinc.org|8867-4&_count=1000".to_owned();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let r = s.get(&url, &doc).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.body.get("total").is_none(), "a broad search is not counted unasked");
        for e in r.body["entry"].as_array().unwrap() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        let next = r.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        match next {
            Some(l) => url = l["url"].as_str().unwrap().split_once("/fhir").map(|(_, p)| format!("/fhir{p}")).unwrap(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5203);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in id order, each once");

    // A narrow condition beside the broad one.
    let q = format!("/fhir/Observation?code=http://loinc.org|8867-4&subject=Patient/{}", pids[1]);
    let r = s.get(&q, &doc).await;
    assert_eq!(r.body["entry"].as_array().map_or(0, Vec::len), 3, "{}", r.text);
    // Exact counts when asked for.
    let r = s.get("/fhir/Observation?code=http://loinc.org|8867-4&_total=accurate&_count=1", &doc).await;
    assert_eq!(r.body["total"], 5203);
    let r = s.get("/fhir/Observation?code=http://loinc.org|8867-4&_summary=count", &doc).await;
    assert_eq!(r.body["total"], 5203);
    // Someone without care for these patients sees none of them.
    let r = s.get("/fhir/Observation?code=http://loinc.org|8867-4&_count=50", &other).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body.get("entry").is_none(), "{}", &r.text[..r.text.len().min(300)]);
}
