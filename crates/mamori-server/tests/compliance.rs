//! The compliance report over HTTPS (issue 18): what a fresh server lacks,
//! what the README tour's steps make met, a tampered audit event and an
//! expired partner certificate named, the signed file verified and a
//! changed byte caught, the PDF read back by poppler's `pdftotext`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{TestServer, PASSWORD};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};
use reqwest::Method;
use serde_json::{json, Value};

fn requirement<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["report"]["requirements"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("{id}"))
}

fn status(report: &Value, id: &str) -> String {
    requirement(report, id)["status"].as_str().unwrap().to_owned()
}

fn findings(report: &Value, id: &str) -> String {
    requirement(report, id)["findings"].to_string()
}

async fn produce(s: &TestServer, token: &str, query: &str) -> (Value, String) {
    let r = s.raw(Method::POST, &format!("/api/v1/compliance/reports{query}"), Some(token), None, &[]).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert!(r.header("location").unwrap().starts_with("/api/v1/compliance/reports/"));
    assert_eq!(r.header("x-mamori-report-sha256").as_deref(), r.body["signature"]["sha256"].as_str());
    (r.body, r.text)
}

async fn verify(s: &TestServer, token: &str, file: String) -> common::Resp {
    s.raw(Method::POST, "/api/v1/compliance/verify", Some(token), Some((file, "application/json")), &[]).await
}

/// A self-signed RSA certificate valid from yesterday for `days`.
fn certificate(cn: &str, days: u32) -> String {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now - 86_400).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(days).unwrap()).unwrap();
    let serial = openssl::bn::BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap();
    b.set_serial_number(&serial).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    String::from_utf8(b.build().to_pem().unwrap()).unwrap()
}

#[tokio::test]
async fn a_fresh_server_reports_what_is_missing_and_only_auditors_and_admins_may_ask() {
    let s = TestServer::start("compliance-fresh").await;
    let auditor = s.user("auditor.a", &["auditor"]).await;
    let doc = s.user("dr.a", &["physician"]).await;

    // A physician may not; the refusal is audited.
    let r = s.raw(Method::POST, "/api/v1/compliance/reports", Some(&doc), None, &[]).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let refused = s.audits_where("compliance-report");
    assert_eq!(refused.last().unwrap()["status"], 403);
    assert_eq!(refused.last().unwrap()["agent"]["user"], "dr.a");
    // A bad period is refused and stores nothing.
    for q in ["?from=2026-12-01&to=2026-11-01", "?from=yesterday", "?from=1990-01-01&to=2026-01-01"] {
        let r = s.raw(Method::POST, &format!("/api/v1/compliance/reports{q}"), Some(&auditor), None, &[]).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
    }
    assert_eq!(s.count("SELECT COUNT(*) FROM compliance_reports"), 0);
    // Each refusal is audited, an unreadable date too.
    let before = s.audits_where("compliance-report").len();
    let r = s.raw(Method::POST, "/api/v1/compliance/reports?to=someday", Some(&auditor), None, &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let evs = s.audits_where("compliance-report");
    assert_eq!((evs.len(), evs.last().unwrap()["status"].as_u64()), (before + 1, Some(400)));

    let (report, _) = produce(&s, &auditor, "").await;
    let rep = &report["report"];
    assert_eq!(rep["format"], "mamori-compliance-report/1");
    assert_eq!(rep["requirements"].as_array().unwrap().len(), 32, "every ID of the catalog");
    for (id, want, why) in [
        ("EM-C1", "not_met", "built-in"),
        ("EM-C3a", "not_met", "no sealed emergency account"),
        ("EM-B7", "not_met", "no drill"),
        ("GL-BACKUP", "not_met", "no offline snapshot"),
        ("GL-AUDIT", "attention", "no witness"),
        ("GL-TRUE", "attention", "--deep"),
    ] {
        assert_eq!(status(&report, id), want, "{id}: {}", requirement(&report, id));
        assert!(findings(&report, id).contains(why), "{id}: {}", findings(&report, id));
    }
    assert_eq!(status(&report, "GL-TLS"), "met");
    assert!(rep["summary"]["not_met"].as_u64().unwrap() >= 4);
    let bp = rep["checklist"]["items"].as_array().unwrap().iter().find(|i| i["number"] == "3-②").unwrap().clone();
    assert_eq!(bp["status"], "not_met", "the checklist item takes the worst of its requirements");

    // Producing it was audited with its digest, after a checkpoint it carries.
    let ev = s.audits_where("compliance-report").into_iter().find(|e| e["status"] == 201).unwrap();
    assert_eq!(ev["detail"]["sha256"], report["signature"]["sha256"]);
    assert_eq!(ev["agent"]["user"], "auditor.a");
    assert!(rep["checkpoint"]["note"].as_str().unwrap().contains(&format!("\n{}\n", rep["checkpoint"]["size"])));

    // Deep: record versions are checked, GL-TRUE met.
    let (deep, _) = produce(&s, &s.admin, "?deep=true").await;
    assert_eq!(status(&deep, "GL-TRUE"), "met", "{}", requirement(&deep, "GL-TRUE"));
    assert!(deep["report"]["generated_by"].as_str().unwrap().starts_with("admin"));

    // Listed, fetched as stored (the same bytes), and a missing one is a 404.
    let list = s.get("/api/v1/compliance/reports", &auditor).await;
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    let id = list.body[1]["id"].as_i64().unwrap();
    let r = s.get(&format!("/api/v1/compliance/reports/{id}"), &auditor).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, report);
    assert_eq!(s.get("/api/v1/compliance/reports/999", &auditor).await.status, 404);
    assert_eq!(s.get("/api/v1/compliance/reports", &doc).await.status, 403);
}

#[tokio::test]
async fn the_tour_makes_items_met_and_tampering_and_expiry_are_named() {
    let s = TestServer::start_manual("compliance-tour").await;
    let auditor = s.user("auditor.a", &["auditor"]).await;
    s.user("auditor.b", &["auditor"]).await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let doc = s.user("dr.a", &["physician"]).await;
    let pid = s.patient(&doc, "検査", "花子").await;

    // The plan, sealed emergency accounts, a drill to the end with its lessons.
    let plan = mamori_core::bcp::DEFAULT_PLAN.to_owned();
    let r = s.raw(Method::PUT, "/api/v1/bcp/plan", Some(&decider), Some((plan, "application/toml")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.post("/api/v1/emergency-accounts", &s.admin, json!({"count": 2, "roles": ["physician"]})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    for a in r.body["accounts"].as_array().unwrap() {
        let r = s
            .req(
                Method::POST,
                &format!("/api/v1/emergency-accounts/{}/envelope", a.as_str().unwrap()),
                Some(&s.admin),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = s.post("/api/v1/bcp/declarations", &decider, json!({"cause": "cyber_attack", "criteria": ["ransomware"], "reason": "年次訓練 / annual drill", "drill": true})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let did = r.body["id"].as_i64().unwrap();
    for to in ["resumption", "recovery", "full_recovery"] {
        let r = s.post(&format!("/api/v1/bcp/declarations/{did}/transitions"), &decider, json!({"to": to})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let r = s
        .post(
            &format!("/api/v1/bcp/declarations/{did}/transitions"),
            &decider,
            json!({"to": "normal", "override_reason": "訓練のため省略 / skipped in the drill"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Break-glass, reviewed by an auditor.
    let other = s.user("dr.b", &["physician"]).await;
    let r = s
        .post(
            "/api/v1/break-glass",
            &other,
            json!({"patient": pid, "reason": "意識不明で救急搬送 / unconscious in ER", "minutes": 30}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let gid = r.body["id"].as_i64().unwrap();

    // A partner with full demarcation terms and a certificate valid 60 days.
    let pem = certificate("Partner Clinic", 60);
    let terms = json!({
        "sender_side": "送信側が暗号化して送出するまで / until the sender's gateway",
        "path": "インターネット（TLS） / the Internet over TLS",
        "recipient_side": "受信側が受領通知を返すまで / from the recipient's receipt",
        "fault_isolation": "双方の窓口が切り分け / both contacts isolate jointly",
        "stopping": "書面連絡で停止 / on written notice",
        "patient_enquiries": "各施設の患者相談窓口 / each patient desk",
        "operations_contact": "03-0000-0000"
    });
    let r = s
        .post(
            "/api/v1/partners",
            &s.admin,
            json!({"id": "clinic", "name": "Partner Clinic", "as2_id": "CLINIC", "endpoint": "https://127.0.0.1:9/as2",
                   "relationship": "delegation", "contract": {"reference": "C-2026-01"}, "demarcation": terms,
                   "network": {"kind": "internet_tls", "secured_by": "institution"}, "purposes": ["referral"],
                   "certificates": {"signing": pem, "encryption": pem, "tls_ca": pem}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);

    let (before_review, _) = produce(&s, &auditor, "").await;
    assert_eq!(status(&before_review, "EM-B8"), "met", "pending, not yet overdue");
    assert_eq!(status(&before_review, "EM-B6"), "attention", "the drill's review has no lessons yet");
    assert_eq!(status(&before_review, "GL-BACKUP"), "not_met");
    // Eight days later the pending review is overdue.
    s.clock.as_ref().unwrap().advance_secs(8 * 86_400);
    // (Tokens expire meanwhile: everyone logs in again.)
    let auditor = s.login("auditor.a", PASSWORD).await;
    let auditor2 = s.login("auditor.b", PASSWORD).await;
    let decider = s.login("bcp.chief", PASSWORD).await;
    let admin = s.login("admin", PASSWORD).await;
    let (overdue, _) = produce(&s, &auditor, "").await;
    assert_eq!(status(&overdue, "EM-B8"), "attention", "{}", requirement(&overdue, "EM-B8"));
    let r = s
        .post(
            &format!("/api/v1/break-glass/{gid}/review"),
            &auditor2,
            json!({"outcome": "accepted", "note": "救急搬送で妥当 / justified"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s
        .put(
            &format!("/api/v1/bcp/declarations/{did}/review"),
            &decider,
            json!({"lessons": "連絡網の更新が必要 / update the call tree"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A snapshot for the custodians, verified.
    let r = s
        .post(
            "/api/v1/snapshots/custodians",
            &admin,
            json!({"threshold": 2, "custodians": ["院長", "情報部長", "看護部長"]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.post("/api/v1/snapshots", &admin, json!({})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sid = r.body["id"].as_str().unwrap().to_owned();
    let r = s.post(&format!("/api/v1/snapshots/{sid}/verify"), &admin, json!({})).await;
    assert_eq!(r.body["ok"], true, "{}", r.text);

    let (report, text) = produce(&s, &auditor, "").await;
    for id in ["EM-C1", "EM-C3a", "EM-C3c", "EM-B6", "EM-B7", "EM-B8", "EX-B1a", "EX-B1d", "EX-B1e", "GL-BACKUP"] {
        assert_eq!(status(&report, id), "met", "{id}: {}", requirement(&report, id));
    }
    let drill = requirement(&report, "EM-B7")["evidence"].to_string();
    assert!(drill.contains(&format!("#{did}")) && drill.contains("activation"), "{drill}");

    // The file verifies; a changed byte is caught.
    let r = verify(&s, &auditor, text.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["ok"], true, "{}", r.text);
    assert_eq!(r.body["sha256"], report["signature"]["sha256"]);
    assert!(r.body["audit_event"].is_u64());
    let changed = text.replacen("\"met\"", "\"mat\"", 1);
    let r = verify(&s, &auditor, changed).await;
    assert_eq!(r.body["ok"], false, "{}", r.text);
    assert!(r.body["error"].as_str().unwrap().contains("changed after it was signed"), "{}", r.text);
    // Re-ordering or re-indenting is not a change (the canonical form is signed).
    let compact = serde_json::to_string(&report).unwrap();
    assert_eq!(verify(&s, &auditor, compact).await.body["ok"], true);
    // Not a report: 400, and the attempt is audited.
    let r = verify(&s, &auditor, "{\"report\": 1}".into()).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(s.audits_where("compliance-verify").last().unwrap()["status"], 400);
    // Signed by someone else: the signature does not verify.
    let mut forged: Value = report.clone();
    forged["signature"]["certificate"] = json!(certificate("Mallory", 30));
    let r = verify(&s, &auditor, forged.to_string()).await;
    assert_eq!(r.body["ok"], true, "the carried certificate is ignored: the server pins its own");

    // 61 days on: the partner's certificate has expired (attention, named).
    s.clock.as_ref().unwrap().advance_secs(53 * 86_400);
    let auditor = s.login("auditor.a", PASSWORD).await;
    let (later, _) = produce(&s, &auditor, "").await;
    assert_eq!(status(&later, "EX-B1d"), "attention", "{}", requirement(&later, "EX-B1d"));
    assert!(
        findings(&later, "EX-B1d").contains("clinic: the signing certificate expired"),
        "{}",
        findings(&later, "EX-B1d")
    );
    assert_eq!(status(&later, "GL-BACKUP"), "attention", "the snapshot is older than a week");

    // An audit event edited behind the log's back: GL-AUDIT not met, the event named.
    let victim = s.count("SELECT MIN(seq) FROM audit_events WHERE action = 'break-glass-start'");
    common::tamper_audit_event(&s, victim);
    let (tampered, _) = produce(&s, &auditor, "").await;
    assert_eq!(status(&tampered, "GL-AUDIT"), "not_met");
    assert!(
        findings(&tampered, "GL-AUDIT").contains(&format!("event {victim}")),
        "{}",
        findings(&tampered, "GL-AUDIT")
    );
    let six = tampered["report"]["checklist"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["number"] == "2-⑥")
        .unwrap()
        .clone();
    assert_eq!(six["status"], "not_met");

    // A record changed behind the log's back, found by --deep: named by its
    // type only (the report holds no patient data).
    common::exec_behind_the_back(
        &s,
        &format!("UPDATE resource_versions SET body = replace(body, '花子', '花代') WHERE rtype = 'Patient' AND id = '{pid}'"),
    );
    let (deep, text) = produce(&s, &auditor, "?deep=true").await;
    assert_eq!(status(&deep, "GL-TRUE"), "not_met", "{}", requirement(&deep, "GL-TRUE"));
    assert!(findings(&deep, "GL-AUDIT").contains("record Patient/…"), "{}", findings(&deep, "GL-AUDIT"));
    assert!(!text.contains(&pid), "the patient's id is not in the report");
}

#[tokio::test]
async fn the_report_prints_as_a_pdf_with_its_japanese_text() {
    let s = TestServer::start("compliance-pdf").await;
    let auditor = s.user("auditor.a", &["auditor"]).await;
    let (report, _) = produce(&s, &auditor, "").await;
    let id = s.get("/api/v1/compliance/reports", &auditor).await.body[0]["id"].as_i64().unwrap();
    for (lang, want) in [("ja", "準拠状況報告書"), ("en", "Compliance report")] {
        let r = s
            .client
            .get(format!("{}/api/v1/compliance/reports/{id}/pdf?lang={lang}", s.base))
            .bearer_auth(&auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/pdf");
        let bytes = r.bytes().await.unwrap();
        assert!(bytes.starts_with(b"%PDF-1.7"));
        let file = s.dir.join(format!("report-{lang}.pdf"));
        std::fs::write(&file, &bytes).unwrap();
        let out = std::process::Command::new("pdftotext")
            .args(["-enc", "UTF-8"])
            .arg(&file)
            .arg("-")
            .output()
            .expect("pdftotext (poppler-utils) is installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(want), "{lang}: {text}");
        assert!(text.contains("GL-BACKUP") && text.contains("EM-C1"), "{text}");
        assert!(text.contains(report["signature"]["sha256"].as_str().unwrap()), "the digest is printed");
        let info = std::process::Command::new("pdfinfo").arg(&file).output().unwrap();
        assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    }
    let fonts = std::process::Command::new("pdffonts").arg(s.dir.join("report-ja.pdf")).output().unwrap();
    let fonts = String::from_utf8(fonts.stdout).unwrap();
    assert!(fonts.contains("CID TrueType") && fonts.contains("yes"), "the font is embedded: {fonts}");
    let doc = s.user("dr.a", &["physician"]).await;
    let r = s.get(&format!("/api/v1/compliance/reports/{id}/pdf"), &doc).await;
    assert_eq!(r.status, 403);
}
