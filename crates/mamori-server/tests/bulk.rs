//! FHIR Bulk Data export (`$export`) over HTTPS: the kick-off, polling,
//! NDJSON output compared with the store, and the rule that an export holds
//! only what its caller may read, decided and audited per patient.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const ASYNC: (&str, &str) = ("prefer", "respond-async");
const ACCEPT: (&str, &str) = ("accept", "application/fhir+json");

/// Kicks an export off as `token`; returns the status URL's path.
async fn kickoff(s: &TestServer, token: &str, path: &str) -> String {
    let r = s.raw(Method::GET, path, Some(token), None, &[ASYNC, ACCEPT]).await;
    assert_eq!(r.status, 202, "{path}: {}", r.text);
    let loc = r.header("content-location").expect("Content-Location");
    assert!(loc.starts_with(&format!("{}/fhir/$export-status/", s.base)), "{loc}");
    loc.trim_start_matches(&s.base).to_owned()
}

/// Polls until the export is complete; returns the manifest.
async fn manifest(s: &TestServer, token: &str, status: &str) -> Value {
    for _ in 0..300 {
        let r = s.get(status, token).await;
        match r.status.as_u16() {
            202 => {
                assert_eq!(r.header("retry-after").as_deref(), Some("2"));
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            200 => {
                assert!(r.header("expires").is_some(), "an Expires header");
                assert!(r.header("content-type").unwrap().starts_with("application/json"));
                return r.body;
            }
            _ => panic!("{status}: {} {}", r.status, r.text),
        }
    }
    panic!("{status}: not complete in 30 s");
}

/// Downloads every output file; returns the resources by type, each as its
/// id → JSON, read with a plain line-by-line reader.
async fn outputs(s: &TestServer, token: &str, m: &Value) -> BTreeMap<String, BTreeMap<String, Value>> {
    let mut out: BTreeMap<String, BTreeMap<String, Value>> = BTreeMap::new();
    for f in m["output"].as_array().unwrap() {
        let url = f["url"].as_str().unwrap();
        assert!(url.starts_with(&s.base), "{url}");
        let r = s.raw(Method::GET, url.trim_start_matches(&s.base), Some(token), None, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.header("content-type").as_deref(), Some("application/fhir+ndjson"));
        assert!(r.text.ends_with('\n'));
        let lines: Vec<&str> = r.text.lines().collect();
        assert_eq!(lines.len() as u64, f["count"].as_u64().unwrap(), "count of {url}");
        for line in lines {
            let v: Value = serde_json::from_str(line).expect("one resource per line");
            assert_eq!(v["resourceType"], f["type"], "{line}");
            out.entry(f["type"].as_str().unwrap().to_owned())
                .or_default()
                .insert(v["id"].as_str().unwrap().to_owned(), v);
        }
    }
    out
}

fn ids(out: &BTreeMap<String, BTreeMap<String, Value>>, t: &str) -> BTreeSet<String> {
    out.get(t).map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_export_holds_only_what_the_caller_may_read_decided_per_patient() {
    let s = TestServer::start("bulk-rule").await;
    let dr_a = s.user("dr.a", &["physician"]).await;
    let dr_b = s.user("dr.b", &["physician"]).await;
    let clerk = s.user("clerk.c", &["clerk"]).await;
    let auditor = s.user("aud.d", &["auditor"]).await;
    let pa = s.patient(&dr_a, "Ay", "A").await;
    let pb = s.patient(&dr_b, "Be", "B").await;
    let mut obs_a = Vec::new();
    for (code, value) in [("8867-4", 71.0), ("8310-5", 36.6)] {
        let r = s.post("/fhir/Observation", &dr_a, observation(&pa, code, value)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        obs_a.push(r.body["id"].as_str().unwrap().to_owned());
    }
    // Pretty-printed as sent: stored as sent, and still one line in NDJSON.
    let pretty = serde_json::to_string_pretty(&observation(&pa, "9279-1", 16.0)).unwrap();
    let r = s.raw(Method::POST, "/fhir/Observation", Some(&dr_a), Some((pretty, "application/fhir+json")), &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    obs_a.push(r.body["id"].as_str().unwrap().to_owned());
    let r = s.post("/fhir/Observation", &dr_b, observation(&pb, "8867-4", 88.0)).await;
    let obs_b = r.body["id"].as_str().unwrap().to_owned();
    let r =
        s.post("/fhir/Organization", &s.admin, json!({"resourceType": "Organization", "name": "検査センター"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let org = r.body["id"].as_str().unwrap().to_owned();

    // dr.a's system-level export: dr.a's patient and reference data; nothing of B.
    let status = kickoff(&s, &dr_a, "/fhir/$export").await;
    let m = manifest(&s, &dr_a, &status).await;
    assert_eq!(m["requiresAccessToken"], true);
    assert_eq!(m["request"], format!("{}/fhir/$export", s.base));
    assert!(m["transactionTime"].as_str().unwrap().contains('T'));
    let out = outputs(&s, &dr_a, &m).await;
    // Demographics are read by every clinician (as a read or a search
    // answers them); clinical records only with a care relationship.
    assert_eq!(ids(&out, "Patient"), set(&[&pa, &pb]));
    assert_eq!(ids(&out, "Observation"), obs_a.iter().cloned().collect::<BTreeSet<_>>());
    assert_eq!(ids(&out, "Organization"), set(&[&org]));
    assert!(!out.values().any(|t| t.contains_key(&obs_b)));
    // Each line is the stored resource.
    for (t, by_id) in &out {
        for (id, v) in by_id {
            let stored: Value = serde_json::from_str(&s.text(
                "SELECT v.body FROM resource_versions v JOIN resources r ON r.rtype = v.rtype AND r.id = v.id AND r.version = v.version WHERE r.rtype = $1 AND r.id = $2",
                &[t, id],
            ))
            .unwrap();
            assert_eq!(&stored, v, "{t}/{id}");
        }
    }
    // One audit event per patient the export holds, before it could be fetched;
    // each download audited.
    let export_id = status.rsplit('/').next().unwrap().to_owned();
    let per_patient: Vec<Value> = s
        .audits_where("export")
        .into_iter()
        .filter(|e| e["detail"]["export"] == export_id && e["patients"].as_array().is_some_and(|p| !p.is_empty()))
        .collect();
    assert_eq!(per_patient.len(), 2, "{per_patient:?}");
    let of = |p: &str| per_patient.iter().find(|e| e["patients"] == json!([p])).unwrap().clone();
    assert_eq!(of(&pa)["detail"]["resources"], 4, "the Patient and three Observations");
    assert_eq!(of(&pa)["basis"], "care-relationship", "what opened A's clinical records");
    assert_eq!(of(&pb)["detail"]["resources"], 1, "B's demographics only");
    assert_eq!(of(&pb)["basis"], "role-demographics");
    assert_eq!(s.audits_where("export-download").len(), m["output"].as_array().unwrap().len());
    assert_eq!(s.audits_where("export-kickoff").last().unwrap()["basis"], "role-permitted");

    // Another user can neither poll nor download dr.a's export.
    let r = s.get(&status, &dr_b).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "not-own");
    let file = m["output"][0]["url"].as_str().unwrap().trim_start_matches(&s.base).to_owned();
    let r = s.get(&file, &dr_b).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!r.text.contains("resourceType\":\"Patient\",\"id"), "{}", r.text);

    // dr.b's Patient-level export: B's records, no reference data.
    let st = kickoff(&s, &dr_b, "/fhir/Patient/$export").await;
    let out = outputs(&s, &dr_b, &manifest(&s, &dr_b, &st).await).await;
    assert_eq!(ids(&out, "Patient"), set(&[&pa, &pb]));
    assert_eq!(ids(&out, "Observation"), set(&[&obs_b]));
    assert!(!out.contains_key("Organization"));

    // A clerk reads demographics: the Patients, no clinical records.
    let st = kickoff(&s, &clerk, "/fhir/Patient/$export").await;
    let m = manifest(&s, &clerk, &st).await;
    let out = outputs(&s, &clerk, &m).await;
    assert_eq!(ids(&out, "Patient"), set(&[&pa, &pb]));
    assert!(!out.contains_key("Observation"), "{m}");
    let clerk_events = s.audits_where("export");
    let basis: Vec<&Value> =
        clerk_events.iter().filter(|e| e["patients"] == json!([pb])).map(|e| &e["basis"]).collect();
    assert!(basis.contains(&&json!("role-demographics")), "{basis:?}");

    // Roles that read no records cannot export.
    let r = s.raw(Method::GET, "/fhir/$export", Some(&auditor), None, &[ASYNC]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.raw(Method::GET, "/fhir/$export", Some(&s.admin), None, &[ASYNC]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["action"], "export-kickoff");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_parameters_filters_groups_cancellation_and_bad_requests() {
    let s = TestServer::start("bulk-params").await;
    let dr = s.user("dr.a", &["physician"]).await;
    let other = s.user("dr.b", &["physician"]).await;
    let pa = s.patient(&dr, "Ay", "A").await;
    let pc = s.patient(&dr, "Ce", "C").await;
    let pb = s.patient(&other, "Be", "B").await;
    let pulse = s.post("/fhir/Observation", &dr, observation(&pa, "8867-4", 70.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let temp = s.post("/fhir/Observation", &dr, observation(&pa, "8310-5", 36.5)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pulse_c = s.post("/fhir/Observation", &dr, observation(&pc, "8867-4", 60.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Malformed requests: 400 with an OperationOutcome, nothing queued, audited.
    let before = s.count("SELECT COUNT(*) FROM bulk_exports");
    for (path, headers, needle) in [
        ("/fhir/$export", vec![ACCEPT], "Prefer: respond-async"),
        ("/fhir/$export?_type=Nonsense", vec![ASYNC], "Nonsense"),
        ("/fhir/Patient/$export?_type=Organization", vec![ASYNC], "Patient compartment"),
        ("/fhir/$export?_since=yesterday", vec![ASYNC], "_since"),
        ("/fhir/$export?_outputFormat=text/csv", vec![ASYNC], "ndjson"),
        ("/fhir/$export?patient=Patient/x", vec![ASYNC], "Patient and Group level"),
        ("/fhir/$export?includeAssociatedData=_custom", vec![ASYNC], "mamori offers LatestProvenanceResources"),
        ("/fhir/Patient/$export?patient=Observation/x", vec![ASYNC], "expected a reference Patient/id"),
        ("/fhir/$export?_elements=code.coding", vec![ASYNC], "_elements"),
        ("/fhir/$export?_elements=Nonsense.code", vec![ASYNC], "Nonsense"),
        ("/fhir/$export?_typeFilter=Observation%3F_count%3D5", vec![ASYNC], "_count"),
        ("/fhir/$export?_typeFilter=Observation%3Fnope%3D1", vec![ASYNC], "nope"),
        ("/fhir/$export?_type=Patient&_typeFilter=Observation%3Fcode%3D1", vec![ASYNC], "_type"),
    ] {
        let r = s.raw(Method::GET, path, Some(&dr), None, &headers).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(r.body["resourceType"], "OperationOutcome", "{path}");
        assert!(r.text.contains(needle), "{path}: {}", r.text);
        assert_eq!(s.last_audit()["action"], "export-kickoff", "{path}");
    }
    assert_eq!(s.count("SELECT COUNT(*) FROM bulk_exports"), before);

    // _type and _typeFilter (a filter's search parameters, as a search applies them).
    let st = kickoff(&s, &dr, "/fhir/$export?_type=Observation&_typeFilter=Observation%3Fcode%3D8867-4").await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(out.keys().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(ids(&out, "Observation"), set(&[&pulse, &pulse_c]));
    // Two filters of one type: either matches, each resource once.
    let two = format!(
        "/fhir/$export?_typeFilter=Observation%3Fcode%3D8867-4&_typeFilter=Observation%3Fsubject%3DPatient%2F{pa}"
    );
    let st = kickoff(&s, &dr, &two).await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(ids(&out, "Observation"), set(&[&pulse, &temp, &pulse_c]));

    // The same by POST with a Parameters body, checked like the query.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": "Observation?code=8867-4"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}]});
    let r = s
        .raw(Method::POST, "/fhir/$export", Some(&dr), Some((params.to_string(), "application/fhir+json")), &[ASYNC])
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let st = r.header("content-location").unwrap().trim_start_matches(&s.base).to_owned();
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(ids(&out, "Observation"), set(&[&pulse, &pulse_c]));
    for (body, needle) in [
        (json!({"resourceType": "Patient"}), "Parameters"),
        (
            json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueReference": {"reference": "Group/x"}}]}),
            "expected a reference Patient/id",
        ),
        (json!({"resourceType": "Parameters", "parameter": [{"name": "_type", "valueBoolean": true}]}), "valueString"),
    ] {
        let r = s
            .raw(
                Method::POST,
                "/fhir/Patient/$export",
                Some(&dr),
                Some((body.to_string(), "application/fhir+json")),
                &[ASYNC],
            )
            .await;
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(needle), "{body}: {}", r.text);
    }
    let r = s
        .raw(
            Method::POST,
            &format!("/fhir/Patient/{pa}/$everything"),
            Some(&dr),
            Some(("{}".into(), "application/fhir+json")),
            &[],
        )
        .await;
    assert_eq!(r.status, 405, "{}", r.text);

    // patient= (a POST's valueReference, or the query): only those
    // patients' data, each decided as before; a patient who does not
    // exist: 404.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": format!("Patient/{pc}")}},
        {"name": "_type", "valueString": "Patient,Observation"}]});
    let r = s
        .raw(
            Method::POST,
            "/fhir/Patient/$export",
            Some(&dr),
            Some((params.to_string(), "application/fhir+json")),
            &[ASYNC],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let kick = s.last_audit();
    assert_eq!(kick["action"], "export-kickoff");
    assert_eq!(kick["patients"], json!([pc]), "{kick}");
    let st = r.header("content-location").unwrap().trim_start_matches(&s.base).to_owned();
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(ids(&out, "Patient"), set(&[&pc]));
    assert_eq!(ids(&out, "Observation"), set(&[&pulse_c]));
    let st =
        kickoff(&s, &dr, &format!("/fhir/Patient/$export?patient=Patient/{pa},Patient/{pb}&_type=Observation")).await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(ids(&out, "Observation"), set(&[&pulse, &temp]), "B's records stay withheld");
    let r = s.raw(Method::GET, "/fhir/Patient/$export?patient=Patient/nobody", Some(&dr), None, &[ASYNC]).await;
    assert_eq!(r.status, 404, "{}", r.text);

    // _elements: `element` for every type, `Type.element` for one; the
    // resources carry the SUBSETTED tag; types none applies to are whole.
    let st =
        kickoff(&s, &dr, "/fhir/Patient/$export?_type=Patient,Observation&_elements=Observation.code,subject").await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    let o = &out["Observation"][&pulse_c];
    assert!(o.get("code").is_some() && o.get("subject").is_some(), "{o}");
    assert!(o.get("valueQuantity").is_none() && o.get("status").is_none(), "{o}");
    assert!(o["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"), "{o}");
    let pat = &out["Patient"][&pc];
    assert!(pat.get("name").is_none(), "only `subject` applies to Patient: {pat}");
    let st = kickoff(&s, &dr, "/fhir/Patient/$export?_type=Patient,Observation&_elements=Observation.code").await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert!(out["Patient"][&pc].get("name").is_some(), "Patient is whole when no item names it");

    // includeAssociatedData: the Provenance of what the export holds,
    // all of it (Relevant) or the latest per target (Latest), each decided
    // as its read; refused values: 400 (above).
    let prov = |target: &str, recorded: &str| {
        json!({"resourceType": "Provenance", "target": [{"reference": target}], "recorded": recorded,
               "agent": [{"who": {"display": "検査部"}}]})
    };
    let mut provs = Vec::new();
    for (target, when) in [
        (format!("Observation/{pulse_c}"), "2026-01-01T09:00:00+09:00"),
        (format!("Observation/{pulse_c}"), "2026-02-01T09:00:00+09:00"),
        (format!("Observation/{temp}"), "2026-01-15T09:00:00+09:00"),
    ] {
        let r = s.post("/fhir/Provenance", &dr, prov(&target, when)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        provs.push(r.body["id"].as_str().unwrap().to_owned());
    }
    let q = format!("/fhir/Patient/$export?_type=Observation&patient=Patient/{pc}&includeAssociatedData=RelevantProvenanceResources");
    let out = outputs(&s, &dr, &manifest(&s, &dr, &kickoff(&s, &dr, &q).await).await).await;
    assert_eq!(ids(&out, "Observation"), set(&[&pulse_c]));
    assert_eq!(ids(&out, "Provenance"), set(&[&provs[0], &provs[1]]), "only the Provenance of what was exported");
    let q = q.replace("RelevantProvenanceResources", "LatestProvenanceResources");
    let out = outputs(&s, &dr, &manifest(&s, &dr, &kickoff(&s, &dr, &q).await).await).await;
    assert_eq!(ids(&out, "Provenance"), set(&[&provs[1]]), "the latest for the one target");
    let q = "/fhir/Patient/$export?_type=Observation&includeAssociatedData=LatestProvenanceResources".to_owned();
    let out = outputs(&s, &dr, &manifest(&s, &dr, &kickoff(&s, &dr, &q).await).await).await;
    assert_eq!(ids(&out, "Provenance"), set(&[&provs[1], &provs[2]]));
    // Another physician's export of their own patients holds none of these.
    let out = outputs(&s, &other, &manifest(&s, &other, &kickoff(&s, &other, &q).await).await).await;
    assert!(ids(&out, "Provenance").is_empty(), "{out:?}");

    // _since: only what changed after it.
    let since = s.now().to_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let mut changed = observation(&pa, "8310-5", 37.9);
    changed["id"] = json!(temp);
    assert_eq!(s.put(&format!("/fhir/Observation/{temp}"), &dr, changed).await.status, 200);
    let st = kickoff(&s, &dr, &format!("/fhir/$export?_since={}", since.replace('+', "%2B"))).await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(out.keys().collect::<Vec<_>>(), ["Observation"], "{out:?}");
    assert_eq!(ids(&out, "Observation"), set(&[&temp]));
    assert_eq!(out["Observation"][&temp]["valueQuantity"]["value"], 37.9);
    // Deleted since then: listed under `deleted` as Bundles of DELETE
    // entries, only for what the caller may read (dr.b's deletion is not).
    let obs_b = s.post("/fhir/Observation", &other, observation(&pb, "8867-4", 80.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = s.now().to_rfc3339();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(s.delete(&format!("/fhir/Observation/{pulse}"), &dr).await.status, 204);
    assert_eq!(s.delete(&format!("/fhir/Observation/{obs_b}"), &other).await.status, 204);
    let st = kickoff(&s, &dr, &format!("/fhir/$export?_since={}", since.replace('+', "%2B"))).await;
    let m = manifest(&s, &dr, &st).await;
    assert!(m["output"].as_array().unwrap().is_empty(), "{m}");
    let deleted = m["deleted"].as_array().unwrap();
    assert_eq!(deleted.len(), 1, "{m}");
    assert_eq!(deleted[0]["type"], "Bundle");
    let url = deleted[0]["url"].as_str().unwrap().trim_start_matches(&s.base).to_owned();
    let r = s.raw(Method::GET, &url, Some(&dr), None, &[]).await;
    let lines: Vec<Value> = r.text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{}", r.text);
    assert_eq!(lines[0]["entry"][0]["request"], json!({"method": "DELETE", "url": format!("Observation/{pulse}")}));
    assert!(!r.text.contains(&obs_b));

    // A Group's members: the group is read like any resource.
    let group = json!({"resourceType": "Group", "type": "person", "actual": true,
        "member": [{"entity": {"reference": format!("Patient/{pc}")}}]});
    let r = s.post("/fhir/Group", &dr, group).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let gid = r.body["id"].as_str().unwrap().to_owned();
    let st = kickoff(&s, &dr, &format!("/fhir/Group/{gid}/$export")).await;
    let out = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(ids(&out, "Patient"), set(&[&pc]));
    assert_eq!(ids(&out, "Observation"), set(&[&pulse_c]));
    let empty = json!({"resourceType": "Parameters"}).to_string();
    let r = s
        .raw(
            Method::POST,
            &format!("/fhir/Group/{gid}/$export"),
            Some(&dr),
            Some((empty, "application/fhir+json")),
            &[ASYNC],
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = s.raw(Method::GET, &format!("/fhir/Group/{gid}/$export"), Some(&other), None, &[ASYNC]).await;
    assert_eq!(r.status, 403, "dr.b may not read the group: {}", r.text);
    let r = s.raw(Method::GET, "/fhir/Group/nope/$export", Some(&dr), None, &[ASYNC]).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(!s.text("SELECT COALESCE(MAX(summary), '') FROM bulk_exports", &[]).contains(&pb));

    // Two exports already running for dr.a (the default limit): a third is
    // refused with 429 and Retry-After, nothing queued; dr.b is not held up.
    for n in ["a", "b"] {
        exec_behind_the_back(
            &s,
            &format!(
                "INSERT INTO bulk_exports (id, owner, request, params, state, tx_time, created_at, updated_at) \
                      VALUES ('{n:0>32}', 'dr.a', 'x', '{{}}', 'running', 0, 0, 0)"
            ),
        );
    }
    let queued = s.count("SELECT COUNT(*) FROM bulk_exports");
    let r = s.raw(Method::GET, "/fhir/$export", Some(&dr), None, &[ASYNC]).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert_eq!(s.count("SELECT COUNT(*) FROM bulk_exports"), queued);
    let st = kickoff(&s, &other, "/fhir/Patient/$export").await;
    manifest(&s, &other, &st).await;
    for n in ["a", "b"] {
        assert_eq!(s.delete(&format!("/fhir/$export-status/{n:0>32}"), &dr).await.status, 202);
    }

    // Cancellation: the output is gone and the status answers 404.
    let st = kickoff(&s, &dr, "/fhir/$export").await;
    let m = manifest(&s, &dr, &st).await;
    let file = m["output"][0]["url"].as_str().unwrap().trim_start_matches(&s.base).to_owned();
    assert_eq!(s.get(&file, &other).await.status, 403);
    assert_eq!(s.delete(&st, &other).await.status, 403);
    let r = s.delete(&st, &dr).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(s.get(&st, &dr).await.status, 404);
    assert_eq!(s.get(&file, &dr).await.status, 404);
    let id = st.rsplit('/').next().unwrap();
    assert_eq!(s.count(&format!("SELECT COUNT(*) FROM bulk_export_files WHERE export_id = '{id}'")), 0);
    assert_eq!(s.get("/fhir/$export-status/0123456789abcdef0123456789abcdef", &dr).await.status, 404);
    assert_eq!(s.get("/fhir/$export-status/..%2F..%2Fetc", &dr).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_export_during_an_emergency_and_output_expires() {
    let s = TestServer::start_manual("bulk-mode").await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let dr = s.user("dr.a", &["physician"]).await;
    let pa = s.patient(&dr, "Ay", "A").await;
    let st = kickoff(&s, &dr, "/fhir/Patient/$export").await;
    let m = manifest(&s, &dr, &st).await;
    assert_eq!(m["output"].as_array().unwrap().len(), 1);
    assert!(m.to_string().contains("\"count\":1"), "{m}");
    let _ = pa;

    let r = s
        .post(
            "/api/v1/bcp/declarations",
            &decider,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "震度6強 / JMA 6+ earthquake"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.raw(Method::GET, "/fhir/$export", Some(&dr), None, &[ASYNC]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "not-during-emergency");
    // The export made before is still there to fetch.
    assert_eq!(s.get(&st, &dr).await.status, 200);

    // After the retention period its output is removed.
    s.clock.as_ref().unwrap().advance_secs(25 * 3600);
    let mut gone = false;
    for _ in 0..100 {
        if s.count("SELECT COUNT(*) FROM bulk_exports WHERE state = 'expired'") == 1 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "expired output is removed");
    let dr = s.login("dr.a", PASSWORD).await;
    assert_eq!(s.get(&st, &dr).await.status, 404);
    assert_eq!(s.count("SELECT COUNT(*) FROM bulk_export_files"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_a_stopped_server_was_running_starts_again() {
    let mut s = TestServer::start("bulk-restart").await;
    let dr = s.user("dr.a", &["physician"]).await;
    let pa = s.patient(&dr, "Ay", "A").await;
    let obs = s.post("/fhir/Observation", &dr, observation(&pa, "8867-4", 70.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let st = kickoff(&s, &dr, "/fhir/Patient/$export").await;
    let first = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    // As if the server had stopped half-way: running, one partial file.
    s.stop().await;
    let id = st.rsplit('/').next().unwrap().to_owned();
    exec_behind_the_back(
        &s,
        &format!("UPDATE bulk_exports SET state = 'running', summary = NULL, expires_at = NULL WHERE id = '{id}'"),
    );
    exec_behind_the_back(&s, &format!("DELETE FROM bulk_export_files WHERE export_id = '{id}' AND n > 1"));
    s.restart().await;
    let dr = s.login("dr.a", PASSWORD).await;
    let again = outputs(&s, &dr, &manifest(&s, &dr, &st).await).await;
    assert_eq!(again, first, "the same output, made again from the beginning");
    assert_eq!(ids(&again, "Observation"), set(&[&obs]));

    // The CapabilityStatement names the operation at each level.
    let m = s.req(Method::GET, "/fhir/metadata", None, None).await.body;
    assert_eq!(m["rest"][0]["operation"][0]["name"], "export");
    for t in ["Patient", "Group"] {
        let r = m["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == t).unwrap().clone();
        assert!(r["operation"].as_array().unwrap().iter().any(|o| o["name"] == "export"), "{t}");
    }
}
