//! Remote maintenance end to end with real TLS client certificates:
//! request, approval, scoped actions, expiry by the clock, review with an
//! accurate summary, revocation mid-session, people who leave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mamori_core::time::{Clock, SystemClock};
use serde_json::{json, Value};

fn base32_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567".iter().position(|&x| x == c).unwrap() as u32;
        buf = (buf << 5) | v;
        bits += 5;
        if bits >= 8 {
            out.push((buf >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    out
}

struct Person {
    client: reqwest::Client,
    secret: Vec<u8>,
}

impl Person {
    fn totp(&self, s: &TestServer) -> String {
        format!("{:06}", mamori_store::accounts::totp_code(&self.secret, s.now().secs() / 30))
    }
}

fn maint_client(s: &TestServer, cert: &str, key: &str) -> reqwest::Client {
    let pem = std::fs::read(s.dir.join("tls/cert.pem")).unwrap();
    reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap())
        .build()
        .unwrap()
}

async fn person(s: &TestServer, id: &str, sources: &[&str]) -> Person {
    let r = s
        .post(
            "/api/v1/maintenance/people",
            &s.admin,
            json!({"id": id, "vendor": "acme", "display": format!("Acme {id}"), "sources": sources}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    Person {
        client: maint_client(s, r.body["certificate"].as_str().unwrap(), r.body["private_key"].as_str().unwrap()),
        secret: base32_decode(r.body["totp_secret"].as_str().unwrap()),
    }
}

async fn mcall(
    p: &Person,
    url: &str,
    method: reqwest::Method,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = p.client.request(method, url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn window(s: &TestServer, minutes: i64) -> (String, String) {
    let now = s.now();
    (now.plus_secs(-1).to_rfc3339(), now.plus_secs(minutes * 60).to_rfc3339())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_maintenance_is_narrow_approved_time_boxed_and_reviewed() {
    let clock = mamori_core::time::ManualClock::new(SystemClock.now());
    let s = TestServer::start_cfg("maint", "[maintenance]\nlisten = \"127.0.0.1:0\"\n", Some(clock.clone())).await;
    let m = format!("https://localhost:{}", s.running.as_ref().unwrap().maint_addr.unwrap().port());
    let admin2 = s.admin2.clone();
    let auditor = s.user("aud", &["auditor"]).await;
    let doc = s.user("dr", &["physician"]).await;
    let pat = s.patient(&doc, "保守", "確認").await;
    let r = s
        .post(
            "/api/v1/maintenance/vendors",
            &s.admin,
            json!({"id": "acme", "name": "Acme Medical Systems", "contact": "support@acme.example / 03-0000-1111"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .post(
            "/api/v1/maintenance/people",
            &doc,
            json!({"id": "x", "vendor": "acme", "display": "x", "sources": ["127.0.0.1/32"]}),
        )
        .await;
    assert_eq!(r.status, 403);
    let tanaka = person(&s, "acme.tanaka", &["127.0.0.0/8"]).await;
    // A maintenance person never carries a staff member's name, nor the
    // other way round (the audit log names both by it).
    let r = s
        .post(
            "/api/v1/maintenance/people",
            &s.admin,
            json!({"id": "dr", "vendor": "acme", "display": "Not the doctor", "sources": ["127.0.0.1/32"]}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("staff account's name"), "{}", r.text);
    let r = s.post("/api/v1/users", &s.admin, json!({"name": "acme.tanaka", "display": "x", "roles": ["clerk"]})).await;
    assert_eq!(r.status, 409, "{}", r.text);
    assert!(r.text.contains("maintenance person's name"), "{}", r.text);

    // The person asks for a window (certificate + TOTP); nothing works before approval.
    let (start, end) = window(&s, 60);
    let (st, v) = mcall(&tanaka, &format!("{m}/api/v1/maintenance/request"), reqwest::Method::POST, None,
        Some(json!({"reason": "DB index maintenance after upgrade", "scopes": ["database", "patient_data"], "start": start, "end": end, "totp": tanaka.totp(&s)}))).await;
    assert_eq!(st, 201, "{v}");
    let rid = v["id"].as_i64().unwrap();
    clock.advance_secs(31);
    let (st, v) = mcall(
        &tanaka,
        &format!("{m}/api/v1/maintenance/login"),
        reqwest::Method::POST,
        None,
        Some(json!({"request": rid, "totp": tanaka.totp(&s)})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("not approved"), "{v}");
    let r = s
        .post(&format!("/api/v1/maintenance/requests/{rid}/approve"), &s.admin, json!({"note": "ok for tonight"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["state"], "approved");

    // A wrong TOTP, then a good login.
    let (st, _) = mcall(
        &tanaka,
        &format!("{m}/api/v1/maintenance/login"),
        reqwest::Method::POST,
        None,
        Some(json!({"request": rid, "totp": "000000"})),
    )
    .await;
    assert_eq!(st, 401);
    // Guessing codes locks the second factor: the fifth wrong code locks
    // it, and then even the right code is refused until the lock ends.
    let login = |code: String| {
        let (p, url) = (&tanaka, format!("{m}/api/v1/maintenance/login"));
        async move { mcall(p, &url, reqwest::Method::POST, None, Some(json!({"request": rid, "totp": code}))).await }
    };
    for i in 2..=5 {
        let (st, v) = login(format!("00000{i}")).await;
        assert_eq!(st, 401, "{v}");
        assert_eq!(v["message"].as_str().unwrap().contains("locked"), i == 5, "{v}");
    }
    let (st, v) = login(tanaka.totp(&s)).await;
    assert_eq!(st, 429, "{v}");
    assert!(v["message"].as_str().unwrap().contains("too many wrong second-factor codes"), "{v}");
    clock.advance_secs(16 * 60);
    let (st, v) = mcall(
        &tanaka,
        &format!("{m}/api/v1/maintenance/login"),
        reqwest::Method::POST,
        None,
        Some(json!({"request": rid, "totp": tanaka.totp(&s)})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("mmm_"));

    // Within scope.
    let (st, v) =
        mcall(&tanaka, &format!("{m}/api/v1/maintenance/ops/db"), reqwest::Method::GET, Some(&token), None).await;
    assert_eq!(st, 200, "{v}");
    assert!(v["resources"].as_i64().unwrap() >= 1);
    let (st, v) = mcall(&tanaka, &format!("{m}/fhir/Patient/{pat}"), reqwest::Method::GET, Some(&token), None).await;
    assert_eq!(st, 200, "{v}");
    let read = s.audits_where("read").into_iter().find(|e| e["agent"]["user"] == "acme.tanaka").unwrap();
    assert_eq!(read["patients"], json!([pat]));
    assert_eq!(read["basis"], "maintenance-access");
    // Outside scope, or not for maintenance at all.
    let (st, v) =
        mcall(&tanaka, &format!("{m}/api/v1/maintenance/ops/restart"), reqwest::Method::POST, Some(&token), None).await;
    assert_eq!(st, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("outside the approved scopes"), "{v}");
    let (st, _) = mcall(
        &tanaka,
        &format!("{m}/fhir/Patient/{pat}"),
        reqwest::Method::PUT,
        Some(&token),
        Some(json!({"resourceType": "Patient", "id": pat})),
    )
    .await;
    assert_eq!(st, 403, "patient data is read-only");
    let (st, _) = mcall(&tanaka, &format!("{m}/api/v1/users"), reqwest::Method::GET, Some(&token), None).await;
    assert_eq!(st, 404);
    // The maintenance API is not reachable on the main listener, nor with a staff token.
    let r = s.get("/api/v1/maintenance/ops/db", &s.admin).await;
    assert_eq!(r.status, 404);
    // No client certificate: no TLS session at all.
    let pem = std::fs::read(s.dir.join("tls/cert.pem")).unwrap();
    let anon = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    assert!(anon.get(format!("{m}/api/v1/maintenance/ops/db")).bearer_auth(&token).send().await.is_err());
    for _ in 0..50 {
        if !s.audits_where("maintenance-tls-refused").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(s.audits_where("maintenance-tls-refused").len(), 1);
    // Another person's certificate with this token.
    let suzuki = person(&s, "acme.suzuki", &["127.0.0.0/8"]).await;
    let (st, _) =
        mcall(&suzuki, &format!("{m}/api/v1/maintenance/ops/db"), reqwest::Method::GET, Some(&token), None).await;
    assert_eq!(st, 403);

    // The window ends: the session stops, the window is closed and queued for review.
    clock.advance_secs(3600);
    let (st, v) =
        mcall(&tanaka, &format!("{m}/api/v1/maintenance/ops/db"), reqwest::Method::GET, Some(&token), None).await;
    assert_eq!(st, 401, "{v}");
    let mut pending = Value::Null;
    for _ in 0..100 {
        let r = s.get("/api/v1/maintenance/requests?review=pending", &auditor).await;
        if let Some(x) = r.body["requests"].as_array().unwrap().iter().find(|x| x["id"] == rid) {
            pending = x.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let sum = &pending["summary"];
    assert_eq!(pending["state"], "closed", "{pending}");
    assert_eq!(sum["patient_data_accessed"], true, "{sum}");
    assert_eq!(sum["patients"], json!([pat]));
    let whats: Vec<&str> = sum["operations"].as_array().unwrap().iter().filter_map(|o| o["what"].as_str()).collect();
    assert!(whats.contains(&"GET /api/v1/maintenance/ops/db"), "{whats:?}");
    assert!(sum["refusals"].as_u64().unwrap() >= 2, "{sum}");
    let r = s
        .post(
            &format!("/api/v1/maintenance/requests/{rid}/review"),
            &auditor,
            json!({"outcome": "accepted", "note": "index rebuild only; one chart opened to check a report"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);

    // Approval by the requester is refused; revocation cuts a live session.
    let (start, end) = window(&s, 30);
    let r = s.post("/api/v1/maintenance/requests", &admin2, json!({"person": "acme.tanaka", "reason": "urgent log collection", "scopes": ["logs"], "start": start, "end": end})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let rid2 = r.body["id"].as_i64().unwrap();
    let r = s.post(&format!("/api/v1/maintenance/requests/{rid2}/approve"), &admin2, json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.post(&format!("/api/v1/maintenance/requests/{rid2}/approve"), &s.admin, json!({})).await;
    assert_eq!(r.status, 200);
    clock.advance_secs(31);
    let (st, v) = mcall(
        &tanaka,
        &format!("{m}/api/v1/maintenance/login"),
        reqwest::Method::POST,
        None,
        Some(json!({"request": rid2, "totp": tanaka.totp(&s)})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let t2 = v["token"].as_str().unwrap().to_owned();
    let (st, _) =
        mcall(&tanaka, &format!("{m}/api/v1/maintenance/ops/status"), reqwest::Method::GET, Some(&t2), None).await;
    assert_eq!(st, 200);
    let r = s
        .post(
            &format!("/api/v1/maintenance/requests/{rid2}/revoke"),
            &s.admin,
            json!({"reason": "unexpected access pattern"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (st, _) =
        mcall(&tanaka, &format!("{m}/api/v1/maintenance/ops/status"), reqwest::Method::GET, Some(&t2), None).await;
    assert_eq!(st, 401);

    // An address off the allow-list.
    let sato = person(&s, "acme.sato", &["10.0.0.0/8"]).await;
    let (st, v) = mcall(
        &sato,
        &format!("{m}/api/v1/maintenance/request"),
        reqwest::Method::POST,
        None,
        Some(json!({"reason": "check", "scopes": ["logs"], "start": start, "end": end, "totp": sato.totp(&s)})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    // A person who leaves: certificate revoked at once.
    let r = s.post("/api/v1/maintenance/people/acme.tanaka/leave", &s.admin, json!({"reason": "left Acme"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    clock.advance_secs(31);
    let (st, v) = mcall(
        &tanaka,
        &format!("{m}/api/v1/maintenance/login"),
        reqwest::Method::POST,
        None,
        Some(json!({"request": rid2, "totp": tanaka.totp(&s)})),
    )
    .await;
    assert_eq!(st, 403, "{v}");
    let r = s.get("/api/v1/maintenance/report", &auditor).await;
    let tan = r.body["people"].as_array().unwrap().iter().find(|p| p["person"] == "acme.tanaka").unwrap().clone();
    assert_eq!(tan["state"], "left");
    assert!(tan["last_used"].is_string());

    // Refusals are audited and alerted; overdue reviews are reported.
    assert!(s.audits_where("maintenance-refused").len() >= 6);
    let a = s.get("/api/v1/alerts", &s.admin).await;
    assert!(a.text.contains("maintenance-refused"), "{}", a.text);
    for _ in 0..100 {
        let r = s.get(&format!("/api/v1/maintenance/requests/{rid2}"), &auditor).await;
        if r.body["review"] == "pending" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    clock.advance_secs(80 * 3600);
    let admin = s.login("admin", PASSWORD).await; // sessions expired meanwhile
    let mut overdue = false;
    for _ in 0..100 {
        if s.get("/api/v1/alerts", &admin).await.text.contains("maintenance-review-overdue") {
            overdue = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(overdue, "the revoked window's review is overdue");
}
