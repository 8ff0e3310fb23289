//! Emergency operations end to end over HTTPS: declaring, emergency
//! access, sealed emergency accounts, phases and checklists, return to
//! normal, the after-action review; break-glass with a fake clock; drills;
//! announcements to a webhook and to open screens; misuse refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{observation, TestServer};
use reqwest::Method;
use serde_json::{json, Value};

async fn provision_account(s: &TestServer, drill: bool) -> (String, String) {
    let r = s
        .post("/api/v1/emergency-accounts", &s.admin, json!({"count": 1, "roles": ["physician"], "drill": drill}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let name = r.body["accounts"][0].as_str().unwrap().to_owned();
    let r = s.req(Method::POST, &format!("/api/v1/emergency-accounts/{name}/envelope"), Some(&s.admin), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    (name, r.body["password"].as_str().unwrap().to_owned())
}

async fn emergency_login(s: &TestServer, account: &str, pw: &str) -> common::Resp {
    s.req(
        Method::POST,
        "/api/v1/emergency-login",
        None,
        Some(json!({"account": account, "password": pw, "real_name": "応援 太郎", "affiliation": "DMAT 東病院"})),
    )
    .await
}

async fn state_of(s: &TestServer, id: i64) -> Value {
    s.get(&format!("/api/v1/bcp/declarations/{id}"), &s.admin).await.body
}

#[tokio::test]
async fn declare_work_in_emergency_and_return_to_normal() {
    let s = TestServer::start_manual("bcp-e2e").await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let doc_b = s.user("dr.b", &["physician"]).await;
    let doc_a = s.user("dr.a", &["physician"]).await;
    let pid = s.patient(&doc_b, "災害", "一郎").await;
    let oid = s.post("/fhir/Observation", &doc_b, observation(&pid, "8867-4", 90.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (account, pw) = provision_account(&s, false).await;
    // A second print of the same envelope is refused.
    assert_eq!(
        s.req(Method::POST, &format!("/api/v1/emergency-accounts/{account}/envelope"), Some(&s.admin), None)
            .await
            .status,
        412
    );

    // Normal mode: no access without a relationship; the sealed account is
    // refused and its misuse raises an alert for everyone to see.
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 403);
    let r = emergency_login(&s, &account, &pw).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("sealed"));
    // A wrong password, and an account that does not exist, get the same
    // answer: outside an emergency it never confirms a password or a name.
    for (acc, p) in [(account.as_str(), "Not the password 1"), ("emg-nobody", pw.as_str())] {
        let other = emergency_login(&s, acc, p).await;
        assert_eq!((other.status, &other.text), (r.status, &r.text), "{acc}");
    }
    let alerts = s.get("/api/v1/alerts?open=true", &decider).await;
    assert!(
        alerts.body["alerts"].as_array().unwrap().iter().any(|a| a["kind"] == "emergency-account-misuse"),
        "{}",
        alerts.text
    );
    assert!(s.audits_where("announcement").iter().any(|e| e["query"] == "emergency-account-refused"));

    // Misuse of the declaration itself is refused and audited.
    let before = s.snapshot();
    let r = s
        .post(
            "/api/v1/bcp/declarations",
            &doc_a,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "I think there is an earthquake"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["action"], "bcp-declare");
    for (body, status) in [
        (json!({"cause": "disaster", "criteria": ["nonsense"], "reason": "strong earthquake, building damaged"}), 400),
        (
            json!({"cause": "disaster", "criteria": ["ransomware"], "reason": "strong earthquake, building damaged"}),
            400,
        ),
        (json!({"cause": "weather", "criteria": ["earthquake"], "reason": "strong earthquake, building damaged"}), 400),
        (json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "quake"}), 400),
        (json!({"cause": "disaster", "criteria": [], "reason": "strong earthquake, building damaged"}), 400),
    ] {
        let r = s.post("/api/v1/bcp/declarations", &decider, body.clone()).await;
        assert_eq!(r.status.as_u16(), status, "{body}: {}", r.text);
    }
    assert_eq!(s.snapshot(), before);
    assert_eq!(s.get("/api/v1/mode", &doc_a).await.body["mode"], "normal");

    // Declare.
    let cps = s.count("SELECT COUNT(*) FROM checkpoints");
    let r = s.post("/api/v1/bcp/declarations", &decider, json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "震度6強の地震。サーバー室に被害 / JMA 6+ earthquake, server room damaged"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["state"], "activation");
    assert!(r.body["checkpoint"].as_str().unwrap().contains("mamori-reason mode-change"));
    assert!(s.count("SELECT COUNT(*) FROM checkpoints") > cps, "a signed checkpoint at the mode change");
    let r = s.get("/api/v1/mode", &doc_a).await;
    assert_eq!(r.body["mode"], "emergency; phase=activation");
    assert_eq!(r.header("mamori-mode").as_deref(), Some("emergency; phase=activation"));
    assert_eq!(r.body["declaration"]["id"], id);
    // Only one open declaration.
    assert_eq!(
        s.post(
            "/api/v1/bcp/declarations",
            &decider,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "second declaration attempt"})
        )
        .await
        .status,
        409
    );

    // Emergency access: any clinician, audited as ETREAT.
    let r = s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!(
        (ev["purpose"].as_str(), ev["basis"].as_str(), ev["mode"].as_str()),
        (Some("ETREAT"), Some("emergency-access"), Some("emergency; phase=activation"))
    );

    // Guessing locks the account like any other: after the fifth wrong
    // password (one was tried while sealed) the right one is answered as
    // a wrong one, until the lock ends.
    let wrong = emergency_login(&s, &account, "Not the password 2").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    for i in 3..=5 {
        assert_eq!(emergency_login(&s, &account, &format!("Not the password {i}")).await.status, 401);
    }
    let r = emergency_login(&s, &account, &pw).await;
    assert_eq!((r.status, &r.text), (wrong.status, &wrong.text), "locked");
    assert_eq!(s.audits_where("emergency-login-refused").last().unwrap()["detail"]["reason"], "locked");
    s.clock.as_ref().unwrap().advance_secs(16 * 60);

    // The emergency account works now, under the declared person.
    let r = emergency_login(&s, &account, &pw).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let etok = r.body["token"].as_str().unwrap().to_owned();
    let r = s.get(&format!("/fhir/Observation/{oid}"), &etok).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!(ev["agent"]["user"], account.as_str());
    assert_eq!(ev["agent"]["kind"], "emergency");
    assert_eq!(ev["agent"]["declared"], "応援 太郎 (DMAT 東病院)");
    let accs = s.get("/api/v1/emergency-accounts", &s.admin).await;
    assert_eq!(accs.body["accounts"][0]["state"], "in_use");
    assert!(s.audits_where("announcement").iter().any(|e| e["query"] == "emergency-account-unsealed"));
    // Emergency accounts cannot mint API tokens.
    assert_eq!(s.post("/api/v1/tokens", &etok, json!({})).await.status, 403);

    // Phases advance one at a time; the checklist is ticked by the team.
    let r = s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": "recovery"})).await;
    assert_eq!(r.status, 412, "skipping a phase: {}", r.text);
    assert_eq!(
        s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &doc_a, json!({"to": "resumption"})).await.status,
        403
    );
    assert_eq!(
        s.req(
            Method::POST,
            &format!("/api/v1/bcp/declarations/{id}/checklist/recovery/widen-scope"),
            Some(&decider),
            None
        )
        .await
        .status,
        412,
        "a future phase"
    );
    assert_eq!(
        s.req(
            Method::POST,
            &format!("/api/v1/bcp/declarations/{id}/checklist/activation/no-such-item"),
            Some(&decider),
            None
        )
        .await
        .status,
        404
    );
    assert_eq!(
        s.req(
            Method::POST,
            &format!("/api/v1/bcp/declarations/{id}/checklist/activation/basic-policy"),
            Some(&decider),
            None
        )
        .await
        .status,
        200
    );
    for to in ["resumption", "recovery", "full_recovery"] {
        let r = s
            .post(
                &format!("/api/v1/bcp/declarations/{id}/transitions"),
                &decider,
                json!({"to": to, "note": format!("entering {to}")}),
            )
            .await;
        assert_eq!(r.status, 200, "{to}: {}", r.text);
        assert_eq!(s.get("/api/v1/mode", &doc_a).await.body["mode"], format!("emergency; phase={to}"));
    }
    // In recovery and full recovery the plan closes open access again.
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 403);
    // Return to normal needs the full-recovery checklist.
    let r = s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": "normal"})).await;
    assert_eq!(r.status, 412, "{}", r.text);
    assert!(r.text.contains("checklist"));
    for item in
        ["switch-back-judgement", "restore-procedure", "confirmation-items", "reconciliation-complete", "summary"]
    {
        let r = s
            .post(
                &format!("/api/v1/bcp/declarations/{id}/checklist/full_recovery/{item}"),
                &decider,
                json!({"note": "done"}),
            )
            .await;
        assert_eq!(r.status, 200, "{item}: {}", r.text);
    }
    let r = s
        .post(
            &format!("/api/v1/bcp/declarations/{id}/transitions"),
            &decider,
            json!({"to": "normal", "note": "all systems verified"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "closed");
    assert_eq!(s.get("/api/v1/mode", &doc_a).await.body["mode"], "normal");
    assert_eq!(state_of(&s, id).await["state"], "closed");
    assert_eq!(
        s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": "resumption"}))
            .await
            .status,
        412,
        "a closed declaration stays closed"
    );

    // Emergency powers are gone: access, the account's session, the account.
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 403);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &etok).await.status, 401);
    let r = emergency_login(&s, &account, &pw).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("retired"), "{}", r.text);
    let r = s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": account, "password": pw}))).await;
    assert_eq!(r.status, 401);
    let accs = s.get("/api/v1/emergency-accounts", &s.admin).await.body["accounts"].as_array().unwrap().clone();
    let old = accs.iter().find(|a| a["account"] == account.as_str()).unwrap();
    assert_eq!(old["state"], "retired");
    let replacement = old["replaced_by"].as_str().unwrap();
    let new = accs.iter().find(|a| a["account"] == replacement).unwrap();
    assert_eq!(new["state"], "awaiting_envelope");
    assert_eq!(new["roles"], json!(["physician"]));

    // The after-action review was generated; the team completes it.
    let r = s.get(&format!("/api/v1/bcp/declarations/{id}/review"), &decider).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rep = &r.body["report"];
    assert_eq!(rep["phases"].as_array().unwrap().len(), 4);
    assert_eq!(rep["emergency_accounts"][0]["declared_person"], "応援 太郎 (DMAT 東病院)");
    assert!(rep["timeline"].as_array().unwrap().len() >= 5);
    assert_eq!(
        s.put(&format!("/api/v1/bcp/declarations/{id}/review"), &decider, json!({"lessons": "x"})).await.status,
        400
    );
    let r = s
        .put(
            &format!("/api/v1/bcp/declarations/{id}/review"),
            &decider,
            json!({"lessons": "紙運用の様式が不足した / paper forms ran short"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Completed once: a second submission is refused and changes nothing.
    let r = s
        .put(
            &format!("/api/v1/bcp/declarations/{id}/review"),
            &decider,
            json!({"lessons": "上書きの試み / an attempt to overwrite"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = s.get(&format!("/api/v1/bcp/declarations/{id}/review"), &decider).await;
    assert_eq!(r.body["lessons"], "紙運用の様式が不足した / paper forms ran short");
}

#[tokio::test]
async fn break_glass_grant_expires_with_the_clock() {
    let s = TestServer::start_manual("bg").await;
    let doc_b = s.user("dr.b", &["physician"]).await;
    let doc_a = s.user("dr.a", &["physician"]).await;
    let both = s.user("dr.c", &["physician", "auditor"]).await;
    let aud = s.user("privacy", &["auditor"]).await;
    let pid = s.patient(&doc_b, "救急", "花子").await;
    let oid = s.post("/fhir/Observation", &doc_b, observation(&pid, "8867-4", 120.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 403);

    let before = s.count("SELECT COUNT(*) FROM break_glass");
    for body in [
        json!({"patient": pid, "reason": ""}),
        json!({"patient": pid, "reason": "too short"}),
        json!({"patient": pid, "reason": "unconscious in ER, allergy check", "minutes": 100000}),
        json!({"patient": "nope", "reason": "unconscious in ER, allergy check"}),
        json!({"patient": pid}),
    ] {
        let r = s.post("/api/v1/break-glass", &doc_a, body.clone()).await;
        assert!(r.status.is_client_error(), "{body}: {}", r.text);
    }
    assert_eq!(
        s.post("/api/v1/break-glass", &s.admin, json!({"patient": pid, "reason": "admin wants to look around"}))
            .await
            .status,
        403
    );
    assert_eq!(s.count("SELECT COUNT(*) FROM break_glass"), before, "refusals create nothing");

    let r = s
        .post(
            "/api/v1/break-glass",
            &doc_a,
            json!({"patient": pid, "reason": "意識不明で救急搬送、アレルギー確認 / unconscious in ER", "minutes": 30}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let gid = r.body["id"].as_i64().unwrap();
    assert_eq!(r.body["seconds_left"], 1800);
    let start: Vec<Value> = s.audits_where("break-glass-start").into_iter().filter(|e| e["status"] == 201).collect();
    assert_eq!(start.len(), 1);
    assert_eq!(start[0]["purpose"], "BTG");
    assert_eq!(start[0]["patients"], json!([pid]));
    assert!(s.audits_where("announcement").iter().any(|e| e["query"] == "break-glass-start"));
    let r = s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!((ev["purpose"].as_str(), ev["basis"].as_str()), (Some("BTG"), Some("break-glass")));

    // 29 minutes later it still works; at 30 it stops.
    s.clock.as_ref().unwrap().advance_secs(29 * 60);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 200);
    s.clock.as_ref().unwrap().advance_secs(61);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await.status, 403);
    // ...and its end is recorded.
    let mut ended = false;
    for _ in 0..50 {
        if !s.audits_where("break-glass-end").is_empty() {
            ended = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ended, "the expiry is recorded as a BTG end event");
    assert_eq!(s.audits_where("break-glass-end")[0]["purpose"], "BTG");

    // Review: auditors only, never the requester.
    let r = s.get("/api/v1/break-glass?review=pending", &aud).await;
    assert!(r.body["grants"].as_array().unwrap().iter().any(|g| g["id"] == gid));
    let rc = s
        .post(
            "/api/v1/break-glass",
            &both,
            json!({"patient": pid, "reason": "checking a medication for the ward", "minutes": 5}),
        )
        .await;
    let own = rc.body["id"].as_i64().unwrap();
    let r = s
        .post(
            &format!("/api/v1/break-glass/{own}/review"),
            &both,
            json!({"outcome": "accepted", "note": "looks fine to me"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(
        s.post(&format!("/api/v1/break-glass/{gid}/review"), &doc_a, json!({"outcome": "accepted", "note": "fine"}))
            .await
            .status,
        403
    );
    let r = s
        .post(
            &format!("/api/v1/break-glass/{gid}/review"),
            &aud,
            json!({"outcome": "accepted", "note": "ER record confirms the patient was unconscious"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        s.post(&format!("/api/v1/break-glass/{gid}/review"), &aud, json!({"outcome": "questioned", "note": "again"}))
            .await
            .status,
        412
    );
    let r = s.get("/api/v1/break-glass?review=pending", &aud).await;
    assert!(!r.body["grants"].as_array().unwrap().iter().any(|g| g["id"] == gid));
}

#[tokio::test]
async fn a_drill_runs_the_procedure_but_never_relaxes_real_access() {
    let s = TestServer::start("drill").await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let doc_b = s.user("dr.b", &["physician"]).await;
    let doc_a = s.user("dr.a", &["physician"]).await;
    let pid = s.patient(&doc_b, "訓練", "次郎").await;
    let oid = s.post("/fhir/Observation", &doc_b, observation(&pid, "8867-4", 70.0)).await.body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (real, real_pw) = provision_account(&s, false).await;
    let (drill_acc, drill_pw) = provision_account(&s, true).await;

    let r = s.post("/api/v1/bcp/declarations", &decider, json!({"cause": "cyber_attack", "criteria": ["ransomware"], "reason": "年次訓練：ランサムウェア想定 / annual ransomware drill", "drill": true})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(s.get("/api/v1/mode", &doc_a).await.body["mode"], "drill; phase=activation");
    // Real access unchanged, but recorded as "would permit in emergency".
    let r = s.get(&format!("/fhir/Observation/{oid}"), &doc_a).await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("drill"), "{}", r.text);
    assert_eq!(s.last_audit()["detail"]["drill"], "would-permit-in-emergency");
    assert_eq!(r.header("mamori-mode").as_deref(), Some("drill; phase=activation"));
    // Real emergency accounts stay sealed in a drill; drill accounts work.
    assert_eq!(emergency_login(&s, &real, &real_pw).await.status, 403);
    let r = emergency_login(&s, &drill_acc, &drill_pw).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // Announcements are marked as a drill.
    let n = s.text("SELECT payload FROM notifications WHERE event = 'emergency-declared'", &[]);
    let v: Value = serde_json::from_str(&n).unwrap();
    assert_eq!(v["drill"], true);
    assert!(v["message"].as_str().unwrap().contains("DRILL"));
    // Stand-down is not possible after activation; go through the phases.
    for to in ["resumption", "recovery", "full_recovery"] {
        assert_eq!(
            s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": to})).await.status,
            200
        );
    }
    assert_eq!(
        s.post(
            &format!("/api/v1/bcp/declarations/{id}/transitions"),
            &decider,
            json!({"to": "stand_down", "note": "x"})
        )
        .await
        .status,
        412
    );
    // Override without a reason is refused; with one, allowed and recorded.
    assert_eq!(
        s.post(
            &format!("/api/v1/bcp/declarations/{id}/transitions"),
            &decider,
            json!({"to": "normal", "override_reason": " "})
        )
        .await
        .status,
        412
    );
    let r = s
        .post(
            &format!("/api/v1/bcp/declarations/{id}/transitions"),
            &decider,
            json!({"to": "normal", "override_reason": "訓練のため省略 / skipped in the drill"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let rep = s.get(&format!("/api/v1/bcp/declarations/{id}/review"), &decider).await.body["report"].clone();
    assert_eq!(rep["drill"], true);
    assert!(rep["drill_accesses_denied_but_permitted_in_emergency"].as_i64().unwrap() >= 1);
    let act = rep["phases"].as_array().unwrap().iter().find(|p| p["phase"] == "activation").unwrap();
    assert_eq!(act["target_minutes"], 60);
    assert_eq!(act["within_target"], true);
    // The drill account was retired and replaced; the real one untouched.
    let accs = s.get("/api/v1/emergency-accounts", &s.admin).await.body["accounts"].as_array().unwrap().clone();
    assert_eq!(accs.iter().find(|a| a["account"] == drill_acc.as_str()).unwrap()["state"], "retired");
    assert_eq!(accs.iter().find(|a| a["account"] == real.as_str()).unwrap()["state"], "sealed");
    // The cyber-attack report exists for the drill too, marked as such.
    let r = s.get(&format!("/api/v1/bcp/declarations/{id}/incident-report"), &decider).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["text"].as_str().unwrap().contains("訓練"));
}

#[tokio::test]
async fn cyber_attack_report_with_preserved_evidence() {
    let s = TestServer::start("cyber").await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let r = s.post("/api/v1/bcp/declarations", &decider, json!({"cause": "cyber_attack", "criteria": ["ransomware", "intrusion"], "reason": "身代金要求画面が複数端末に表示 / ransom notes on several terminals"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(
        s.post(
            &format!("/api/v1/bcp/declarations/{id}/checklist/activation/isolate-network"),
            &decider,
            json!({"note": "core switch uplinks pulled"})
        )
        .await
        .status,
        200
    );
    // The evidence export is written in the background.
    let path = s.dir.join(format!("evidence/declaration-{id}-audit.ndjson"));
    for _ in 0..50 {
        if path.exists() && std::fs::metadata(&path).unwrap().len() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let r = s.get(&format!("/api/v1/bcp/declarations/{id}/incident-report"), &decider).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let text = r.body["text"].as_str().unwrap();
    assert!(text.contains("サイバー攻撃") && text.contains("Report of a cyber attack"));
    assert!(text.contains("ネットワーク切り離し") && text.contains("Disconnect infected terminals"), "{text}");
    assert!(text.contains("[ ] 厚生労働省"));
    // Times are the institution's (Asia/Tokyo by default), said so.
    assert!(text.contains("(UTC+09:00)"), "{text}");
    // The same facts as data, for the page and the PDF.
    let rep = &r.body["report"];
    assert_eq!(rep["criteria"][0]["id"], "ransomware");
    assert!(rep["criteria"][0]["ja"].as_str().unwrap().chars().any(|c| c > '\u{3000}'), "{rep}");
    assert_eq!(rep["actions"][0]["item"], "isolate-network");
    assert_eq!(rep["reporting"][0]["recipient"], "mhlw");
    assert_eq!(rep["reporting"][0]["done"], false);
    // The PDF for the authorities: Japanese title, embedded font.
    let pdf = s.get_bytes(&format!("/api/v1/bcp/declarations/{id}/incident-report.pdf"), &decider).await;
    assert_eq!(pdf.0, 200);
    assert!(pdf.1.starts_with(b"%PDF-"), "a PDF");
    let file = s.dir.join("incident.pdf");
    std::fs::write(&file, &pdf.1).unwrap();
    let text = std::process::Command::new("pdftotext").arg(&file).arg("-").output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("サイバー攻撃被害の報告"), "{text}");
    assert!(text.contains("ネットワーク切り離し"), "{text}");
    let fonts = std::process::Command::new("pdffonts").arg(&file).output().unwrap();
    let fonts = String::from_utf8_lossy(&fonts.stdout);
    assert!(fonts.lines().skip(2).all(|l| l.contains(" yes ")), "every font embedded:\n{fonts}");
    assert!(r.body["evidence"]["sha256"].is_string(), "{}", r.text);
    // The export verifies with the log key alone.
    let vkey =
        mamori_audit::note::NoteVerifier::parse(std::fs::read_to_string(s.dir.join("keys/audit.vkey")).unwrap().trim())
            .unwrap();
    let (_, report) =
        mamori_store::audit_log::verify_export(std::io::BufReader::new(std::fs::File::open(&path).unwrap()), &vkey)
            .unwrap();
    assert!(report.ok(), "{:?}", report.findings);
    // Reporting is tracked with who and when.
    assert_eq!(
        s.post(
            &format!("/api/v1/bcp/declarations/{id}/incident-report/mhlw"),
            &decider,
            json!({"note": "第一報を電話とメールで"})
        )
        .await
        .status,
        200
    );
    assert_eq!(
        s.post(&format!("/api/v1/bcp/declarations/{id}/incident-report/press"), &decider, json!({})).await.status,
        400
    );
    let r = s.get(&format!("/api/v1/bcp/declarations/{id}/incident-report"), &decider).await;
    assert!(r.body["text"].as_str().unwrap().contains("[x] 厚生労働省"));
    assert_eq!(r.body["report"]["reporting"][0]["done"], true);
    // Stand down during activation: allowed, with a reason.
    assert_eq!(
        s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": "stand_down"}))
            .await
            .status,
        412
    );
    assert_eq!(
        s.post(
            &format!("/api/v1/bcp/declarations/{id}/transitions"),
            &decider,
            json!({"to": "stand_down", "note": "誤検知と判明 / false alarm"})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn plan_import_validates_and_two_person_rule_applies() {
    let s = TestServer::start("plan").await;
    let a = s.user("chief.a", &["bcp-decider"]).await;
    let b = s.user("chief.b", &["bcp-decider"]).await;
    let doc = s.user("dr.x", &["physician"]).await;
    let r = s.get("/api/v1/bcp/plan", &doc).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["builtin"], true);
    let text = mamori_core::bcp::DEFAULT_PLAN.replace("two_person = false", "two_person = true");
    let bad = text.replace("[[checklists.recovery]]", "[[checklists.recoveryy]]");
    let r = s.raw(Method::PUT, "/api/v1/bcp/plan", Some(&a), Some((bad, "application/toml")), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(
        s.raw(Method::PUT, "/api/v1/bcp/plan", Some(&doc), Some((text.clone(), "application/toml")), &[]).await.status,
        403
    );
    let r = s.raw(Method::PUT, "/api/v1/bcp/plan", Some(&a), Some((text, "application/toml")), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["version"], 1);
    // Two-person rule: proposed, confirmed by another decider only.
    let r = s.post("/api/v1/bcp/declarations", &a, json!({"cause": "system_failure", "criteria": ["ehr-down-2h"], "reason": "EHR down for two hours, vendor unreachable"})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    assert_eq!(s.get("/api/v1/mode", &doc).await.body["mode"], "normal");
    assert_eq!(
        s.req(Method::POST, &format!("/api/v1/bcp/declarations/{id}/confirm"), Some(&a), None).await.status,
        403
    );
    assert_eq!(
        s.req(Method::POST, &format!("/api/v1/bcp/declarations/{id}/confirm"), Some(&doc), None).await.status,
        403
    );
    let r = s.req(Method::POST, &format!("/api/v1/bcp/declarations/{id}/confirm"), Some(&b), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get("/api/v1/mode", &doc).await.body["mode"], "emergency; phase=activation");
}

/// A local HTTPS webhook receiver that fails the first `fail` requests.
async fn webhook_receiver(
    dir: &std::path::Path,
    fail: usize,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<(Value, Option<String>)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cert, key) =
        mamori_server::keys::self_signed_tls("localhost", "hook", &["localhost"], &["127.0.0.1"], 30).unwrap();
    std::fs::write(dir.join("hook.pem"), &cert).unwrap();
    mamori_server::keys::write_secret(&dir.join("hook.key"), key.as_bytes()).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(mamori_server::tls::provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            mamori_server::tls::load_certs(&dir.join("hook.pem")).unwrap(),
            mamori_server::tls::load_key(&dir.join("hook.key")).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g2 = got.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, got, seen) = (acceptor.clone(), g2.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // read headers and a content-length body
                loop {
                    let n = tls.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len: usize = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if buf.len() >= h + 4 + len {
                            let body: Value = serde_json::from_slice(&buf[h + 4..h + 4 + len]).unwrap();
                            let sig = text[..h].lines().find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("x-mamori-signature:").map(|v| v.trim().to_owned())
                            });
                            let k = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let status = if k < fail { "500 Internal Server Error" } else { "200 OK" };
                            if k >= fail {
                                got.lock().unwrap().push((body, sig));
                            }
                            // An answer that does not arrive is a failed
                            // delivery to mamori: the test's counts show it.
                            tls.write_all(
                                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                    .as_bytes(),
                            )
                            .await
                            .ok();
                            tls.shutdown().await.ok();
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got)
}

#[tokio::test]
async fn announcements_reach_a_webhook_with_retries_and_open_screens_live() {
    let hookdir = common::temp_dir("hook");
    std::fs::create_dir_all(&hookdir).unwrap();
    let (port, got) = webhook_receiver(&hookdir, 2).await;
    std::fs::write(hookdir.join("secret"), "s3cret-shared\n").unwrap();
    let dir = common::temp_dir("notify");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("mamori.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nsynchronous = \"normal\"\n[notify]\nwebhooks = [{{ name = \"pager\", url = \"https://localhost:{port}/hook\", ca = \"{}\", secret_file = \"{}\" }}]\n",
            hookdir.join("hook.pem").display(),
            hookdir.join("secret").display()
        ),
    )
    .unwrap();
    let s = TestServer::boot(dir, None).await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let nurse = s.user("ns.a", &["nurse"]).await;
    // An open screen listening to the live stream.
    let mut sse = s.client.get(format!("{}/api/v1/events", s.base)).bearer_auth(&nurse).send().await.unwrap();
    assert_eq!(sse.status(), 200);
    let first = sse.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: mode"), "{first:?}");
    let r = s.post("/api/v1/bcp/declarations", &decider, json!({"cause": "mass_casualty", "criteria": ["mass-casualty"], "reason": "列車事故で多数傷病者 / train crash, many casualties"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    // The banner gets the mode and the announcement without a reload.
    let mut text = String::new();
    while !(text.contains("emergency-declared") && text.contains("phase=activation")) {
        let c = tokio::time::timeout(std::time::Duration::from_secs(5), sse.chunk())
            .await
            .expect("live event")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&c));
    }
    // The webhook: two failures, then delivered, signed.
    let mut delivered = false;
    for _ in 0..200 {
        if got.lock().unwrap().iter().any(|(b, _)| b["event"] == "emergency-declared") {
            delivered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(delivered, "the announcement reached the webhook after retries");
    let (body, sig) = got.lock().unwrap().iter().find(|(b, _)| b["event"] == "emergency-declared").cloned().unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret-shared");
    let expect = format!(
        "sha256={}",
        mamori_audit::merkle::to_hex(ring::hmac::sign(&key, body.to_string().as_bytes()).as_ref())
    );
    assert_eq!(sig.as_deref(), Some(expect.as_str()));
    let r = s.get("/api/v1/notifications", &decider).await;
    let d =
        r.body["deliveries"].as_array().unwrap().iter().find(|d| d["event"] == "emergency-declared").unwrap().clone();
    assert_eq!(d["state"], "delivered");
    assert_eq!(d["attempts"], 3, "{d}");
    // Best effort: a leftover temporary directory harms no test.
    std::fs::remove_dir_all(&hookdir).ok();
}

#[tokio::test]
async fn mass_modification_raises_a_possible_emergency_alert() {
    let s = TestServer::start("detect").await;
    let decider = s.user("bcp.chief", &["bcp-decider"]).await;
    let doc = s.user("dr.fast", &["physician"]).await;
    let plan = mamori_core::bcp::DEFAULT_PLAN
        .replace("mass_modification_per_minute = 600", "mass_modification_per_minute = 20");
    assert_eq!(
        s.raw(Method::PUT, "/api/v1/bcp/plan", Some(&decider), Some((plan, "application/toml")), &[]).await.status,
        200
    );
    let pid = s.patient(&doc, "変更", "多数").await;
    for i in 0..25 {
        assert_eq!(s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", f64::from(i))).await.status, 201);
    }
    let mut alert = None;
    for _ in 0..150 {
        let r = s.get("/api/v1/alerts?open=true", &decider).await;
        if let Some(a) =
            r.body["alerts"].as_array().unwrap().iter().find(|a| a["kind"] == "possible-emergency").cloned()
        {
            alert = Some(a);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let a = alert.expect("a possible-emergency alert within the detection interval");
    assert_eq!(a["detail"]["user"], "dr.fast");
    assert_eq!(a["detail"]["cause"], "cyber_attack");
    // It offers the plan's matching criteria, and never declares by itself.
    assert!(a["matching_criteria"].as_array().unwrap().iter().any(|c| c["id"] == "ransomware"));
    assert_eq!(s.get("/api/v1/mode", &doc).await.body["mode"], "normal");
    let id = a["id"].as_i64().unwrap();
    assert_eq!(s.req(Method::POST, &format!("/api/v1/alerts/{id}/ack"), Some(&doc), None).await.status, 403);
    assert_eq!(s.req(Method::POST, &format!("/api/v1/alerts/{id}/ack"), Some(&decider), None).await.status, 200);
}
