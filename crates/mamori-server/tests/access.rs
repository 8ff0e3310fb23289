//! Authentication and the access policy end to end: logins, lock-out,
//! TOTP, tokens, care relationships; denials are audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{observation, TestServer, PASSWORD};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn every_access_is_audited_with_decision_and_mode() {
    let s = TestServer::start("audit").await;
    let doc = s.user("dr.a", &["physician"]).await;
    let other = s.user("dr.b", &["physician"]).await;
    let pid = s.patient(&doc, "Audit", "Me").await;
    let r = s.post("/fhir/Observation", &doc, observation(&pid, "8867-4", 70.0)).await;
    assert_eq!(r.status, 201);
    let oid = r.body["id"].as_str().unwrap().to_owned();

    // The creator's write: audited in the same transaction.
    let created = s.audits_where("create");
    let ev = created.iter().find(|e| e["entity"]["id"] == oid.as_str()).unwrap();
    assert_eq!(ev["agent"]["user"], "dr.a");
    assert_eq!(ev["agent"]["roles"], json!(["physician"]));
    assert_eq!(ev["patients"], json!([pid]));
    assert_eq!(ev["basis"], "care-relationship");
    assert_eq!(ev["purpose"], "TREAT");
    assert_eq!(ev["mode"], "normal");
    assert_eq!(ev["status"], 201);
    assert_eq!(ev["agent"]["address"], "127.0.0.1");

    // A read is audited before the response arrives.
    let n = s.audit_count();
    let r = s.get(&format!("/fhir/Observation/{oid}"), &doc).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.audit_count(), n + 1);
    let ev = s.last_audit();
    assert_eq!((ev["action"].as_str(), ev["entity"]["version"].as_u64()), (Some("read"), Some(1)));

    // Another physician without a care relationship: denied and audited.
    let before = s.snapshot();
    let r = s.get(&format!("/fhir/Observation/{oid}"), &other).await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("break-glass"), "the denial says what to do: {}", r.text);
    let ev = s.last_audit();
    assert_eq!(ev["agent"]["user"], "dr.b");
    assert_eq!(ev["status"], 403);
    assert_eq!(ev["basis"], "no-care-relationship");
    assert_eq!(ev["patients"], json!([pid]));
    let r = s.post("/fhir/Observation", &other, observation(&pid, "8867-4", 1.0)).await;
    assert_eq!(r.status, 403);
    assert_eq!(s.snapshot(), before);
    // ...and cross-patient searches only show their own patients.
    let r = s.get("/fhir/Observation", &other).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["total"], 0);
    let r = s.get(&format!("/fhir/Observation?patient={pid}"), &other).await;
    assert_eq!(r.status, 403);
    let r = s.get("/fhir/Observation", &doc).await;
    assert_eq!(r.body["total"], 1);

    // Once assigned, access works; after the assignment ends, it stops.
    s.assign(&pid, "dr.b").await;
    let r = s.get(&format!("/fhir/Observation/{oid}"), &other).await;
    assert_eq!(r.status, 200);
    let list = s.get(&format!("/api/v1/care-assignments?patient={pid}"), &s.admin).await;
    let id = list.body["assignments"].as_array().unwrap().iter().find(|a| a["user"] == "dr.b").unwrap()["id"]
        .as_i64()
        .unwrap();
    assert_eq!(s.delete(&format!("/api/v1/care-assignments/{id}"), &s.admin).await.status, 200);
    let r = s.get(&format!("/fhir/Observation/{oid}"), &other).await;
    assert_eq!(r.status, 403);

    // Department assignments cover every member of the department.
    let ward = s.user_in("ns.c", &["nurse"], Some("ward-3")).await;
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &ward).await.status, 403);
    let r = s.post("/api/v1/care-assignments", &s.admin, json!({"patient": pid, "department": "ward-3"})).await;
    assert_eq!(r.status, 201);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &ward).await.status, 200);

    // Role limits: admin sees no clinical data; auditor no patient data.
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}"), &s.admin).await.status, 403);
    let aud = s.user("audit1", &["auditor"]).await;
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}"), &aud).await.status, 403);
    let clerk = s.user("clerk1", &["clerk"]).await;
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}"), &clerk).await.status, 200);
    assert_eq!(s.get(&format!("/fhir/Observation/{oid}"), &clerk).await.status, 403);
}

#[tokio::test]
async fn logins_lockout_tokens_and_first_password() {
    let s = TestServer::start("login").await;
    let r = s.post("/api/v1/users", &s.admin, json!({"name": "ns.d", "display": "Nurse D", "roles": ["nurse"]})).await;
    let otp = r.body["one_time_password"].as_str().unwrap().to_owned();
    // The nurse role is a clinical grant: a second administrator approves it.
    assert_eq!(r.body["roles"], json!([]), "{}", r.text);
    let req = r.body["pending_request"].as_i64().expect("a request for the second admin");
    let a = s.post(&format!("/api/v1/account-requests/{req}/approve"), &s.admin2, json!({})).await;
    assert_eq!(a.status, 200, "{}", a.text);

    // The one-time password works, but only for changing it.
    let t = s.login("ns.d", &otp).await;
    let r = s.get("/fhir/Patient", &t).await;
    assert_eq!(r.status, 403);
    assert!(r.text.contains("password change required"));
    let r = s.req(Method::POST, "/api/v1/auth/password", Some(&t), Some(json!({"current": otp, "new": "short"}))).await;
    assert_eq!(r.status, 400);
    let r = s
        .req(Method::POST, "/api/v1/auth/password", Some(&t), Some(json!({"current": "wrong", "new": PASSWORD})))
        .await;
    assert_eq!(r.status, 403);
    let r =
        s.req(Method::POST, "/api/v1/auth/password", Some(&t), Some(json!({"current": otp, "new": PASSWORD}))).await;
    assert_eq!(r.status, 200);
    let t = s.login("ns.d", PASSWORD).await;
    assert_eq!(s.get("/fhir/Patient", &t).await.status, 200);

    // Wrong passwords are audited; the fifth locks the account.
    for i in 0..5 {
        let r = s
            .req(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({"username": "ns.d", "password": format!("wrong{i}")})),
            )
            .await;
        assert_eq!(r.status, 401);
    }
    let r =
        s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "ns.d", "password": PASSWORD}))).await;
    assert_eq!(r.status, 401, "locked even with the right password");
    let fails = s.audits_where("login-failure");
    assert_eq!(fails.len(), 6);
    assert_eq!(fails[4]["detail"]["locked"], true);
    assert_eq!(fails[5]["detail"]["reason"], "locked");
    // Unknown users get the same answer.
    let r = s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "nobody", "password": "x"}))).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["message"], fails_message());

    // Bad, revoked and missing tokens.
    let r = s.get("/fhir/Patient", "mmr_forged").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer realm=\"mamori\""));
    assert_eq!(s.last_audit()["action"], "auth-failure");
    let r = s.req(Method::GET, "/fhir/Patient", None, None).await;
    assert_eq!(r.status, 401);
    let r = s.post("/api/v1/tokens", &s.admin, json!({"user": "admin", "label": "script", "ttl_hours": 1})).await;
    assert_eq!(r.status, 201);
    let api = r.body["token"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/users", &api).await.status, 200);
    let list = s.get("/api/v1/tokens", &s.admin).await;
    assert!(!list.text.contains(&api), "secrets are never listed");
    assert_eq!(s.delete(&format!("/api/v1/tokens/{id}"), &s.admin).await.status, 200);
    assert_eq!(s.get("/api/v1/users", &api).await.status, 401);

    // Disabling a user ends their sessions at once.
    assert_eq!(
        s.req(Method::PATCH, "/api/v1/users/ns.d", Some(&s.admin), Some(json!({"disabled": true}))).await.status,
        200
    );
    assert_eq!(s.get("/fhir/Patient", &t).await.status, 401);
    // Logout revokes the session token.
    let t2 = s.user("dr.e", &["physician"]).await;
    assert_eq!(s.req(Method::POST, "/api/v1/auth/logout", Some(&t2), None).await.status, 200);
    assert_eq!(s.get("/fhir/Patient", &t2).await.status, 401);
    // Non-admins cannot administer.
    let t3 = s.user("dr.f", &["physician"]).await;
    assert_eq!(s.post("/api/v1/users", &t3, json!({"name": "x", "display": "x"})).await.status, 403);
    assert_eq!(s.last_audit()["action"], "user-create");
}

fn fails_message() -> &'static str {
    "invalid credentials (with the one-time code, if the account has one), or the account is locked or disabled"
}

#[tokio::test]
async fn totp_second_factor() {
    let s = TestServer::start_manual("totp").await;
    let t = s.user("dr.g", &["physician"]).await;
    let r = s.req(Method::POST, "/api/v1/users/dr.g/totp", Some(&t), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b32 = r.body["secret"].as_str().unwrap();
    assert!(r.body["otpauth_uri"].as_str().unwrap().starts_with("otpauth://totp/"));
    let secret = base32_decode(b32);
    let r =
        s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "dr.g", "password": PASSWORD}))).await;
    assert_eq!(r.status, 401);
    assert!(r.text.contains(fails_message()), "{}", r.text);
    // The right password without the code is answered as a wrong one:
    // the answer must not confirm the password (issue 15).
    let wrong = s
        .req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "dr.g", "password": "Wrong horse 43!"})))
        .await;
    assert_eq!((wrong.status, wrong.text), (r.status, r.text));
    let step = s.now().secs() / 30;
    let code = format!("{:06}", mamori_store::accounts::totp_code(&secret, step));
    let r = s
        .req(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "dr.g", "password": PASSWORD, "totp": code})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The same code cannot be used twice.
    let r = s
        .req(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "dr.g", "password": PASSWORD, "totp": code})),
        )
        .await;
    assert_eq!(r.status, 401);
    // A code from five minutes ago is refused; the current one works.
    s.clock.as_ref().unwrap().advance_secs(300);
    let r = s
        .req(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "dr.g", "password": PASSWORD, "totp": code})),
        )
        .await;
    assert_eq!(r.status, 401);
    let code = format!("{:06}", mamori_store::accounts::totp_code(&secret, s.now().secs() / 30));
    let r = s
        .req(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "dr.g", "password": PASSWORD, "totp": code})),
        )
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn tokens_expire_with_the_clock() {
    let s = TestServer::start_manual("expiry").await;
    let r = s.post("/api/v1/tokens", &s.admin, json!({"ttl_hours": 1})).await;
    let tok = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/auth/me", &tok).await.status, 200);
    s.clock.as_ref().unwrap().advance_secs(3601);
    assert_eq!(s.get("/api/v1/auth/me", &tok).await.status, 401);
}

fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => continue,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

/// Issue 15: a password change ends every session and token of the
/// account (one taken before it no longer works) and gives the caller a
/// new session; guessing the current password through the change counts
/// as failed logins, locks the account and ends the guessing session.
#[tokio::test]
async fn a_password_change_ends_every_session_and_guesses_count_as_failed_logins() {
    let s = TestServer::start("pwchange").await;
    let first = s.user("dr.p", &["physician"]).await;
    let other = s.login("dr.p", PASSWORD).await;
    let new_pw = "Battery staple 43!";
    let r = s.post("/api/v1/auth/password", &first, json!({"current": PASSWORD, "new": new_pw})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.body["sessions_ended"].as_u64().unwrap() >= 2, "{}", r.text);
    let renewed = r.body["token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/api/v1/auth/me", &first).await.status, 401, "the session that made the change was re-issued");
    assert_eq!(s.get("/api/v1/auth/me", &other).await.status, 401, "a session from before the change ended");
    assert_eq!(s.get("/api/v1/auth/me", &renewed).await.status, 200);
    let e = s.audits_where("password-change");
    assert_eq!(e.last().unwrap()["status"], 200);
    assert!(e.last().unwrap()["detail"]["sessions_ended"].as_u64().unwrap() >= 2);

    // Wrong current passwords: each one a failed login; the fifth locks the account.
    for i in 1..=5 {
        let r = s
            .post(
                "/api/v1/auth/password",
                &renewed,
                json!({"current": format!("Guess number {i}!"), "new": "Whatever 1234!"}),
            )
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert_eq!(r.text.contains("locked"), i == 5, "{i}: {}", r.text);
    }
    assert_eq!(s.get("/api/v1/auth/me", &renewed).await.status, 401, "the lock ended the guessing session");
    let r =
        s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "dr.p", "password": new_pw}))).await;
    assert_eq!(r.status, 401, "locked: even the right password is refused");
    let fails = s.audits_where("password-change");
    assert_eq!(fails.iter().filter(|e| e["detail"]["reason"] == "bad-password").count(), 5);
    assert_eq!(fails.last().unwrap()["detail"]["locked"], true);
    assert_eq!(s.count("SELECT failed_logins FROM users WHERE name = 'dr.p'"), 5);
}

/// Issue 15: one source guessing across accounts is slowed down before it
/// can lock them: after its free failures every login from it gets 429
/// with Retry-After (the right password too, without touching the
/// account), the wait is audited and the administrators are alerted, and
/// the accounts it tried stay usable.
#[tokio::test]
async fn a_source_that_keeps_failing_is_slowed_down_before_accounts_lock() {
    let s = TestServer::start_cfg("throttle", "[auth]\nsource_free_failures = 3\n", None).await;
    s.user("dr.t", &["physician"]).await;
    let login = |user: &str, pw: &str| {
        s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": user, "password": pw})))
    };
    for u in ["dr.t", "admin", "admin2", "nobody"] {
        assert_eq!(login(u, "Wrong horse 44!").await.status, 401, "{u}");
    }
    // The fourth failure started a wait of one second: the right password waits too.
    let r = login("dr.t", PASSWORD).await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.text.contains("too many failed logins"), "{}", r.text);
    let t = s.audits_where("login-throttled");
    assert_eq!(t.len(), 1);
    assert_eq!(t[0]["detail"]["wait_seconds"], 1);
    assert_eq!(t[0]["detail"]["path"], "login");
    assert_eq!(s.count("SELECT COUNT(*) FROM alerts WHERE kind LIKE 'login-throttled:%'"), 1);
    // Emergency logins from the same source wait as well.
    let r = s
        .req(
            Method::POST,
            "/api/v1/emergency-login",
            None,
            Some(json!({"account": "emg-x", "password": "x", "real_name": "応援 太郎", "affiliation": "DMAT"})),
        )
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    // No account was locked by the guessing; after the wait the right password works.
    assert_eq!(s.count("SELECT COUNT(*) FROM users WHERE locked_until IS NOT NULL"), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login("dr.t", PASSWORD).await.status, 200);
    // The next failure doubles the wait.
    assert_eq!(login("dr.t", "Wrong horse 45!").await.status, 401);
    let r = login("dr.t", PASSWORD).await;
    assert_eq!((r.status.as_u16(), r.header("retry-after").as_deref()), (429, Some("2")));
}
