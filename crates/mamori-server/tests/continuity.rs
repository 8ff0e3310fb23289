//! Care without the normal system: provisional registration, patient
//! merge and unmerge, snapshots sealed for custodians, a standalone node
//! started from one, and reconciliation of its export at the centre.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use mamori_core::time::SystemClock;
use mamori_server::continuity::snapshot::{self, KeyMaterial, SnapError};
use mamori_server::continuity::standalone;
use reqwest::Method;
use serde_json::{json, Value};

fn merge_params(source: &str, target: &str, preview: bool) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{source}")}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{target}")}},
        {"name": "preview", "valueBoolean": preview}]})
}

fn obs_subject(s: &TestServer, id: &str) -> String {
    let body = s.text(
        "SELECT v.body FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = 'Observation' AND r.id = $1",
        &[id],
    );
    serde_json::from_str::<Value>(&body).unwrap()["subject"]["reference"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisional_registration_then_merge_and_unmerge() {
    let s = TestServer::start("cont-merge").await;
    let er = s.user_in("er-doc", &["physician"], Some("ER")).await;
    let ward = s.user_in("ward-nurse", &["nurse"], Some("W3")).await;
    let clerk = s.user("clerk", &["clerk"]).await;
    let auditor = s.user("aud", &["auditor"]).await;

    let reg = json!({"triage": "red", "sex": "male", "age_band": "40-49", "features": "左前腕に刺青 / tattoo on left forearm",
                     "found_at": "駅前 / station square", "arrival": "ambulance", "name": {"kanji": "不明", "kana": "フメイ"}});
    let r = s.post("/api/v1/registrations", &er, reg.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let prov = r.body["id"].as_str().unwrap().to_owned();
    let pid = r.body["provisional_id"].as_str().unwrap().to_owned();
    assert!(pid.starts_with("T-") && pid.ends_with("-HQ-0001"), "{pid}");
    assert_eq!(r.body["patient"]["meta"]["tag"][0]["code"], "provisional");
    let r = s.post("/api/v1/registrations", &er, reg.clone()).await;
    assert!(r.body["provisional_id"].as_str().unwrap().ends_with("-HQ-0002"));
    let second = r.body["id"].as_str().unwrap().to_owned();
    // Outside an emergency only the plan's departments register this way.
    let r = s.post("/api/v1/registrations", &ward, reg.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    for bad in
        [json!({"triage": "purple", "sex": "male"}), json!({"triage": "red", "sex": "x"}), json!({"triage": "red"})]
    {
        let r = s.post("/api/v1/registrations", &er, bad).await;
        assert_eq!(r.status, 400, "{}", r.text);
    }
    // The registrant treats the patient at once.
    let r = s.post("/fhir/Observation", &er, observation(&prov, "8867-4", 120.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let obs = r.body["id"].as_str().unwrap().to_owned();
    let r = s.get("/api/v1/registrations", &er).await;
    let list = r.body["provisional"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["triage"], "red");

    // Identified: the real patient is registered by the desk.
    let real = s.patient(&clerk, "山田", "太郎").await;
    let before = s.snapshot();
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&prov, &real, true))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(&format!("Observation/{obs}")), "{}", r.text);
    assert_eq!(s.snapshot(), before, "a preview changes nothing");
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&prov, &real, false))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let merge_id: i64 = r.body["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "merge-id").unwrap()
        ["valueString"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(obs_subject(&s, &obs), format!("Patient/{real}"));
    let r = s.get(&format!("/fhir/Patient/{prov}"), &clerk).await;
    assert_eq!(r.body["active"], false);
    assert_eq!(r.body["link"][0]["type"], "replaced-by");
    let r = s.get(&format!("/fhir/Patient/{real}"), &clerk).await;
    assert_eq!(r.body["link"][0]["type"], "replaces");
    assert_eq!(s.get("/api/v1/registrations", &er).await.body["provisional"].as_array().unwrap().len(), 1);
    assert_eq!(s.audits_where("patient-merge").len(), 1);
    // Merging again, or into itself, is refused.
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&prov, &real, false))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&real, &real, false))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&ward), Some(merge_params(&second, &real, false))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s
        .req(
            Method::POST,
            "/fhir/Patient/$merge",
            Some(&clerk),
            Some(json!({"resourceType": "Parameters", "parameter": [{"name": "sauce", "valueString": "x"}]})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text);

    // Review by someone else, saying what was checked; undo restores the
    // previous versions (as new versions).
    let r = s.post(&format!("/api/v1/merges/{merge_id}/review"), &auditor, json!({"note": " ok "})).await;
    assert_eq!(r.status, 400, "a review without what was checked: {}", r.text);
    let r = s
        .post(&format!("/api/v1/merges/{merge_id}/review"), &auditor, json!({"note": "identity confirmed with family"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let versions_before = s.count("SELECT COUNT(*) FROM resource_versions");
    let r = s.post(&format!("/api/v1/merges/{merge_id}/undo"), &clerk, json!({"reason": "wrong patient: twins"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(obs_subject(&s, &obs), format!("Patient/{prov}"));
    let r = s.get(&format!("/fhir/Patient/{prov}"), &clerk).await;
    assert_eq!(r.body["active"], true);
    assert!(r.body.get("link").is_none());
    assert_eq!(s.count("SELECT COUNT(*) FROM resource_versions"), versions_before + 3, "nothing deleted: new versions");
    let r = s.post(&format!("/api/v1/merges/{merge_id}/undo"), &clerk, json!({"reason": "again please"})).await;
    assert_eq!(r.status, 412, "{}", r.text);
    // A merge whose resources changed since cannot be undone blindly.
    let r = s.req(Method::POST, "/fhir/Patient/$merge", Some(&clerk), Some(merge_params(&prov, &real, false))).await;
    let m2: i64 = r.body["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "merge-id").unwrap()
        ["valueString"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    s.assign(&real, "er-doc").await;
    let r = s.get(&format!("/fhir/Observation/{obs}"), &er).await;
    let mut o = r.body.clone();
    o["valueQuantity"]["value"] = json!(118.0);
    let r = s.put(&format!("/fhir/Observation/{obs}"), &er, o).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let before = s.snapshot();
    let r = s.post(&format!("/api/v1/merges/{m2}/undo"), &clerk, json!({"reason": "testing a late undo"})).await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert!(r.text.contains(&format!("Observation/{obs}")), "{}", r.text);
    assert_eq!(s.snapshot(), before);
}

fn copy_with(path: &std::path::Path, f: impl FnOnce(&mut Vec<u8>)) -> std::path::PathBuf {
    let mut b = std::fs::read(path).unwrap();
    f(&mut b);
    let p = path.with_extension(format!("t{}", b.len()));
    std::fs::write(&p, b).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_to_standalone_node_and_back() {
    let c = TestServer::start("cont-central").await;
    let doc = c.user("dr-c", &["physician"]).await;
    let clerk = c.user("clerk-c", &["clerk"]).await;
    let p1 = c.patient(&doc, "佐藤", "花子").await;
    let r = c.post("/fhir/Observation", &doc, observation(&p1, "8867-4", 80.0)).await;
    assert_eq!(r.status, 201);
    let allergy = json!({"resourceType": "AllergyIntolerance", "patient": {"reference": format!("Patient/{p1}")},
        "code": {"text": "penicillin"}, "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}});
    let r = c.post("/fhir/AllergyIntolerance", &doc, allergy).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let alg = r.body["id"].as_str().unwrap().to_owned();
    let other = c.patient(&clerk, "鈴木", "一郎").await;

    // Custodians: any 2 of 3.
    let r = c.post("/api/v1/snapshots", &c.admin, json!({})).await;
    assert_eq!(r.status, 412, "no key yet: {}", r.text);
    let r = c
        .post(
            "/api/v1/snapshots/custodians",
            &c.admin,
            json!({"threshold": 2, "custodians": ["院長 / director", "情報部長 / CIO", "看護部長 / CNO"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let shares: Vec<String> =
        r.body["shares"].as_array().unwrap().iter().map(|s| s["share"].as_str().unwrap().to_owned()).collect();
    assert_eq!(shares.len(), 3);
    let r = c.post("/api/v1/snapshots/custodians", &doc, json!({"threshold": 1, "custodians": ["x"]})).await;
    assert_eq!(r.status, 403);
    let r = c.post("/api/v1/snapshots", &c.admin, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let file = std::path::PathBuf::from(r.body["file"].as_str().unwrap());
    assert_eq!(r.body["patients"], 2);
    assert!(r.body["resources"].as_i64().unwrap() >= 4);

    // Verification needs no key; tampering, truncation and another institution are caught.
    let cert = openssl::x509::X509::from_pem(&std::fs::read(c.dir.join("keys/institution.cert.pem")).unwrap()).unwrap();
    let info = snapshot::verify_file(&file, Some(&cert), None).unwrap();
    assert_eq!(info["patients"], 2);
    let flipped = copy_with(&file, |b| {
        let n = b.len();
        b[n / 2] ^= 1;
    });
    assert!(matches!(snapshot::verify_file(&flipped, None, None), Err(SnapError::Container(_))));
    let cut = copy_with(&file, |b| b.truncate(b.len() - 300));
    assert!(snapshot::verify_file(&cut, None, None).is_err());
    // The same check through the API (the admin screen's "verify"): intact,
    // then caught after the file is altered in place; both audited.
    let sid = r.body["id"].as_str().unwrap().to_owned();
    let v = c.post(&format!("/api/v1/snapshots/{sid}/verify"), &c.admin, json!({})).await;
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["ok"], true, "{}", v.text);
    let original = std::fs::read(&file).unwrap();
    let mut altered = original.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 1;
    std::fs::write(&file, &altered).unwrap();
    let v = c.post(&format!("/api/v1/snapshots/{sid}/verify"), &c.admin, json!({})).await;
    assert_eq!(v.body["ok"], false, "{}", v.text);
    assert!(v.body["error"].as_str().is_some_and(|e| !e.is_empty()));
    std::fs::write(&file, &original).unwrap();
    assert_eq!(c.post("/api/v1/snapshots/nope/verify", &c.admin, json!({})).await.status, 404);
    assert_eq!(c.post(&format!("/api/v1/snapshots/{sid}/verify"), &doc, json!({})).await.status, 403);
    let audits = c.audits_where("snapshot-verify");
    assert_eq!(audits.iter().filter(|a| a["status"] == 200).count(), 1);
    assert_eq!(audits.iter().filter(|a| a["status"] == 422).count(), 1);
    let (other_cert, _) = mamori_server::keys::institution_identity("another hospital", 30).unwrap();
    let other_cert = openssl::x509::X509::from_pem(other_cert.as_bytes()).unwrap();
    assert!(matches!(snapshot::verify_file(&file, Some(&other_cert), None), Err(SnapError::OtherInstitution(_))));
    // One share is not enough; a mistyped share is named.
    let one = KeyMaterial { shares: vec![shares[0].clone()], passphrase: None };
    let e = snapshot::open_file(&file, &one, None, |_| Ok(()), |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("needed"), "{e}");
    let mut typo = shares[1].clone();
    // Change one character to a different one (never to itself).
    let at = typo.len() - 12;
    let swap = if &typo[at..at + 1] == "A" { "B" } else { "A" };
    typo.replace_range(at..at + 1, swap);
    assert_ne!(typo, shares[1]);
    let bad = KeyMaterial { shares: vec![shares[0].clone(), typo], passphrase: None };
    assert!(snapshot::open_file(&file, &bad, None, |_| Ok(()), |_| Ok(())).is_err());

    // A standalone node from the snapshot, opened by two custodians.
    let node_dir = temp_dir("cont-node");
    let two = KeyMaterial { shares: vec![shares[2].clone(), shares[0].clone()], passphrase: None };
    let (init, info) = standalone::init(&node_dir, &file, two, "ER1", Arc::new(SystemClock)).await.unwrap();
    assert!(info["resources"].as_u64().unwrap() >= 4);
    std::fs::write(
        node_dir.join("mamori.toml"),
        format!(
            "{}[server]\nlisten = \"127.0.0.1:0\"\n[database]\nsynchronous = \"normal\"\n",
            std::fs::read_to_string(node_dir.join("mamori.toml")).unwrap()
        ),
    )
    .unwrap();
    let mut n = TestServer::boot_otp(node_dir.clone(), &init.admin_password).await;
    let nd = n.user("dr-n", &["physician"]).await;
    let r = n.get(&format!("/fhir/Patient/{p1}"), &nd).await;
    assert_eq!(r.status, 200, "the reference copy is served: {}", r.text);
    assert!(
        r.header("mamori-mode").unwrap().starts_with("emergency"),
        "standalone runs under the plan's emergency rules"
    );
    assert_eq!(r.header("mamori-node").as_deref(), Some("standalone; node=ER1"));
    // New entries on the node.
    let r = n
        .post(
            "/api/v1/registrations",
            &nd,
            json!({"triage": "yellow", "sex": "female", "estimated_age": 30, "name": {"kana": "スズキ イチロウ"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let prov = r.body["id"].as_str().unwrap().to_owned();
    assert!(r.body["provisional_id"].as_str().unwrap().contains("-ER1-"));
    let r = n.post("/fhir/Observation", &nd, observation(&prov, "8867-4", 101.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["meta"]["source"], "urn:mamori:node:ER1");
    let r = n.post("/fhir/Observation", &nd, observation(&p1, "8867-4", 88.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let obs_p1 = r.body["id"].as_str().unwrap().to_owned();
    let r = n.get(&format!("/fhir/AllergyIntolerance/{alg}"), &nd).await;
    let mut a = r.body.clone();
    a["note"] = json!([{"text": "anaphylaxis in 2019 (patient, offline)"}]);
    let r = n.put(&format!("/fhir/AllergyIntolerance/{alg}"), &nd, a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = n
        .post(
            "/api/v1/transcriptions",
            &nd,
            json!({"resource": observation(&p1, "8310-5", 37.9), "original_author": "看護師 田中 / nurse Tanaka",
        "original_time": "2026-11-26T03:10:00+09:00", "note": "paper ward sheet 3"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Meanwhile at the centre, the same allergy is edited.
    let r = c.get(&format!("/fhir/AllergyIntolerance/{alg}"), &doc).await;
    let mut a = r.body.clone();
    a["criticality"] = json!("high");
    assert_eq!(c.put(&format!("/fhir/AllergyIntolerance/{alg}"), &doc, a).await.status, 200);
    n.stop().await;
    let out = node_dir.join("er1.mexport");
    let exp = standalone::export(&node_dir, &out, Arc::new(SystemClock)).await.unwrap();
    assert!(exp["entries"].as_u64().unwrap() >= 6, "{exp}");

    // Reconcile at the centre.
    let bytes = std::fs::read(&out).unwrap();
    let before = c.snapshot();
    let bad = {
        let mut b = bytes.clone();
        let n = b.len();
        b[n - 500] ^= 0x10;
        b
    };
    let r = c
        .client
        .post(format!("{}/api/v1/reconcile/imports", c.base))
        .bearer_auth(&c.admin)
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(c.snapshot(), before, "a failed import changes nothing");
    let r = c
        .client
        .post(format!("{}/api/v1/reconcile/imports", c.base))
        .bearer_auth(&doc)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // An export signed by a node the custodians never opened a snapshot for.
    {
        use mamori_server::continuity::container::{self, b64, ContainerError, EXPORT_MAGIC};
        let (rc, rk) = mamori_server::keys::institution_identity("rogue node", 30).unwrap();
        let rogue = mamori_exchange::cms::Identity::from_pem(rc.as_bytes(), rk.as_bytes()).unwrap();
        let (k, wrapped, prefix) = snapshot::data_key(&cert.public_key().unwrap()).unwrap();
        let header = json!({"format": "mamori-export/1", "id": "rogue-1", "node": "X", "node_cert": rc,
                            "encryption": {"nonce_prefix": b64(&prefix), "wrapped_key": b64(&wrapped)}});
        let mut w = container::Writer::new(Vec::new(), EXPORT_MAGIC, &header, *k, prefix).unwrap();
        w.line(json!({"entry": "X:Patient/p/_history/1", "t": "Patient", "id": "rogue-p", "local_version": 1, "base": null,
                      "deleted": false, "author": "x", "recorded_at": "2026-11-26T00:00:00Z", "r": {"resourceType": "Patient", "id": "rogue-p"}}).to_string().as_bytes()).unwrap();
        let (buf, _) = w
            .finish(json!({"entries": 1}), |m| {
                mamori_exchange::cms::sign_detached(&rogue, m).map_err(|e| ContainerError::Crypto(e.to_string()))
            })
            .unwrap();
        let r = c
            .client
            .post(format!("{}/api/v1/reconcile/imports", c.base))
            .bearer_auth(&c.admin)
            .body(buf)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 422);
        assert!(r.text().await.unwrap().contains("unknown node"));
        assert_eq!(c.snapshot(), before);
    }
    let r = c
        .client
        .post(format!("{}/api/v1/reconcile/imports", c.base))
        .bearer_auth(&c.admin)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = r.status();
    let report: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{report}");
    let counts = &report["report"]["counts"];
    assert_eq!(counts["conflicts"], 1, "{report}");
    assert_eq!(counts["to_match"], 1, "{report}");
    assert!(counts["imported"].as_u64().unwrap() >= 5, "{report}");
    assert_eq!(c.count(&format!("SELECT COUNT(*) FROM resources WHERE rtype = 'Observation' AND id = '{obs_p1}'")), 1);
    // Every imported entry carries its provenance.
    assert!(
        c.count("SELECT COUNT(*) FROM resources WHERE rtype = 'Provenance'") >= counts["imported"].as_i64().unwrap()
    );
    // The centre's allergy was not overwritten.
    let r = c.get(&format!("/fhir/AllergyIntolerance/{alg}"), &doc).await;
    assert_eq!(r.body["criticality"], "high");
    assert!(r.body.get("note").is_none());
    // Importing again changes nothing.
    let before = c.snapshot();
    let r = c
        .client
        .post(format!("{}/api/v1/reconcile/imports", c.base))
        .bearer_auth(&c.admin)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["already_imported"], true);
    assert_eq!(c.snapshot(), before);

    // People resolve what is queued.
    let r = c.get("/api/v1/reconcile/tasks", &doc).await;
    let tasks = r.body["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 2, "{}", r.text);
    let conflict = tasks.iter().find(|t| t["kind"] == "conflict").unwrap();
    assert_eq!(conflict["detail"]["offline"]["note"][0]["text"], "anaphylaxis in 2019 (patient, offline)");
    let m = tasks.iter().find(|t| t["kind"] == "match").unwrap();
    let r =
        c.post(&format!("/api/v1/reconcile/tasks/{}/resolve", conflict["id"]), &doc, json!({"keep": "sideways"})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let mut merged = conflict["detail"]["offline"].clone();
    merged["criticality"] = json!("high");
    let r = c
        .post(
            &format!("/api/v1/reconcile/tasks/{}/resolve", conflict["id"]),
            &doc,
            json!({"keep": "merged", "resource": merged}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.get(&format!("/fhir/AllergyIntolerance/{alg}"), &doc).await;
    assert_eq!(r.body["criticality"], "high");
    assert_eq!(r.body["note"][0]["text"], "anaphylaxis in 2019 (patient, offline)");
    let r = c.post(&format!("/api/v1/reconcile/tasks/{}/resolve", m["id"]), &clerk, json!({"merge_into": other})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c.get(&format!("/fhir/Patient/{prov}"), &clerk).await;
    assert_eq!(r.body["link"][0]["other"]["reference"], format!("Patient/{other}"));
    assert_eq!(c.get("/api/v1/reconcile/tasks", &doc).await.body["tasks"].as_array().unwrap().len(), 0);
    for action in ["snapshot-key-create", "snapshot-create", "reconcile-import", "reconcile-resolve", "patient-merge"] {
        assert!(!c.audits_where(action).is_empty(), "{action} audited");
    }
    drop(n);
}
