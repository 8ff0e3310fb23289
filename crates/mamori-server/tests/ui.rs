//! The web UI over real HTTPS, as a browser without JavaScript sees it:
//! login and CSRF, cookies, security headers, output escaping, the
//! cookie's narrow reach into the API, logout, the language, and the
//! demo hospital. The JavaScript-driven flows run in headless Chromium
//! (tests/browser).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Browser, TestServer, PASSWORD};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn login_sets_strict_cookies_and_pages_carry_strict_headers() {
    let s = TestServer::start("ui-login").await;
    s.user("doc", &["physician"]).await;
    let mut b = Browser::new(&s);
    let p = b.get("/ui/").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "not logged in: to the login page");
    assert!(p.location().starts_with("/ui/login?next="), "{}", p.location());

    let p = b.get("/ui/login").await;
    let csp = p.header("content-security-policy");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(p.text.contains("ユーザー名"), "Japanese by default");
    let csrf = &p.set_cookies[0];
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(csrf.contains(attr), "{csrf} lacks {attr}");
    }

    // Wrong password: an explanation, no session.
    let p = b.post("/ui/login", &[("username", "doc"), ("password", "wrong password 1"), ("next", "/ui/")]).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("パスワード") && p.text.contains("違うか"), "{}", p.text);
    assert!(!b.cookies.contains_key("mamori_session"));

    // Without the CSRF token: refused, no session.
    let mut b2 = Browser::new(&s);
    let p = b2
        .send(Method::POST, "/ui/login", Some(&[("username", "doc"), ("password", PASSWORD), ("next", "/ui/")]))
        .await;
    assert!(!b2.cookies.contains_key("mamori_session"), "login CSRF: {}", p.status);

    // Right password: a session cookie, strict.
    let p = b.login("doc", PASSWORD).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/");
    let sess = p.set_cookies.iter().find(|c| c.starts_with("mamori_session=")).expect("session cookie");
    for attr in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(sess.contains(attr), "{sess} lacks {attr}");
    }
    let p = b.get("/ui/").await;
    assert_eq!(p.status, 200);
    assert_eq!(p.header("cache-control"), "no-store", "no clinical page is cached");
    assert!(p.text.contains("id=\"mode-banner\"") && p.text.contains("通常運用"), "the mode banner is on every page");
    // An open redirect through `next` is not possible.
    let mut b3 = Browser::new(&s);
    b3.get("/ui/login").await;
    let p =
        b3.post("/ui/login", &[("username", "doc"), ("password", PASSWORD), ("next", "https://evil.example/")]).await;
    assert_eq!(p.location(), "/ui/");
    // A page with Japanese in its query (a name search) is where the login
    // leads back to, percent-encoded.
    let mut b4 = Browser::new(&s);
    let p = b4.get("/ui/patients?q=%E5%B1%B1%E7%94%B0").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let login = b4.get(&p.location()).await;
    assert!(login.text.contains("value=\"/ui/patients?q=%E5%B1%B1%E7%94%B0\""), "{}", login.text);
    let p = b4.post("/ui/login", &[("username", "doc"), ("password", PASSWORD), ("next", "/ui/patients?q=山田")]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    assert_eq!(p.location(), "/ui/patients?q=%E5%B1%B1%E7%94%B0");
}

#[tokio::test]
async fn first_login_forces_a_password_change() {
    let s = TestServer::start("ui-first").await;
    let r = s.post("/api/v1/users", &s.admin, json!({"name": "newbie", "display": "New", "roles": ["nurse"]})).await;
    let otp = r.body["one_time_password"].as_str().unwrap().to_owned();
    let mut b = Browser::new(&s);
    let p = b.login("newbie", &otp).await;
    assert_eq!(p.location(), "/ui/password");
    // Every page leads back to the change until it is done.
    let p = b.get("/ui/patients").await;
    assert_eq!(p.location(), "/ui/password");
    let p = b.get("/ui/password").await;
    assert_eq!(p.status, 200);
    // Mismatch and policy failures explain themselves and change nothing.
    let p = b.post("/ui/password", &[("current", &otp), ("new", "Another pass 77"), ("new2", "Different 77 x")]).await;
    assert!(p.text.contains("一致しません"), "{}", p.text);
    let p = b.post("/ui/password", &[("current", &otp), ("new", "short"), ("new2", "short")]).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("notice error"));
    assert_eq!(b.get("/ui/").await.location(), "/ui/password");
    let p = b.post("/ui/password", &[("current", &otp), ("new", "Another pass 77"), ("new2", "Another pass 77")]).await;
    assert_eq!(p.location(), "/ui/", "{}", p.text);
    assert_eq!(b.get("/ui/").await.status, 200);
    s.login("newbie", "Another pass 77").await;
}

#[tokio::test]
async fn hostile_names_are_escaped_everywhere() {
    let s = TestServer::start("ui-escape").await;
    let doc = s.user("doc", &["physician"]).await;
    let evil = "<script>alert(1)</script>\"><img src=x onerror=alert(2)>";
    let r = s
        .post("/fhir/Patient", &doc, json!({"resourceType": "Patient", "name": [{"family": evil, "given": ["'onmouseover='x"]}], "gender": "male"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_owned();
    s.assign(&id, "doc").await;
    s.post("/fhir/Observation", &doc, json!({"resourceType": "Observation", "status": "final", "code": {"text": evil},
        "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2026-11-26T09:00:00+09:00", "valueString": evil}))
        .await;
    let mut b = Browser::new(&s);
    b.login("doc", PASSWORD).await;
    for path in [format!("/ui/patients?q={}", "%3Cscript"), format!("/ui/patients/{id}")] {
        let p = b.get(&path).await;
        assert_eq!(p.status, 200, "{path}");
        assert!(!p.text.contains("<script>alert"), "{path}: raw script in the page");
        assert!(!p.text.contains("<img src=x"), "{path}: raw tag in the page");
        // Every occurrence of the hostile attribute is text, never inside a
        // tag (attribute values are double-quoted, and `"` is escaped).
        for (at, _) in p.text.match_indices("onmouseover") {
            let before = &p.text[..at];
            assert!(before.rfind('>') > before.rfind('<'), "{path}: attribute breakout at {at}");
        }
        assert!(p.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "{path}: the name is shown, escaped");
    }
}

#[tokio::test]
async fn break_glass_through_the_ui_is_the_api_decision_audited_the_same_way() {
    let s = TestServer::start("ui-bg").await;
    let doc = s.user("doc", &["physician"]).await;
    let other = s.user("other", &["physician"]).await;
    let pid = s.patient(&doc, "Kimura", "Aoi").await;
    s.assign(&pid, "doc").await;
    let _ = other;
    let mut b = Browser::new(&s);
    b.login("other", PASSWORD).await;
    let p = b.get(&format!("/ui/patients/{pid}")).await;
    assert_eq!(p.status, 200);
    assert!(
        p.text.contains("担当関係がありません") && p.text.contains("break-glass"),
        "explains the refusal and offers break-glass"
    );

    // A forged form (no CSRF token) does nothing.
    let before = s.audits_where("break-glass-start").len();
    let p = b
        .send(
            Method::POST,
            &format!("/ui/patients/{pid}/break-glass"),
            Some(&[("reason", "forged request from elsewhere"), ("minutes", "30")]),
        )
        .await;
    assert_eq!(p.status, StatusCode::FORBIDDEN);
    assert_eq!(s.audits_where("break-glass-start").len(), before, "nothing happened");

    // A too-short reason is refused by the API and explained.
    let p = b.post(&format!("/ui/patients/{pid}/break-glass"), &[("reason", "x"), ("minutes", "30")]).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("notice error"), "{}", p.text);

    let p = b
        .post(
            &format!("/ui/patients/{pid}/break-glass"),
            &[("reason", "意識障害で救急搬送、既往歴の確認が必要"), ("minutes", "30")],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let p = b.get(&format!("/ui/patients/{pid}")).await;
    assert!(p.text.contains("class=\"countdown\" data-expires="), "the countdown is shown");
    assert!(!p.text.contains("担当関係がありません"));
    let ev = s.audits_where("break-glass-start");
    let last = ev.last().unwrap();
    assert_eq!(last["agent"]["user"], "other");
    assert_eq!(last["status"], 201);
    assert!(
        last["agent"]["address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1")),
        "the browser's address is recorded: {last}"
    );
}

#[tokio::test]
async fn the_session_cookie_reaches_only_the_event_stream() {
    let s = TestServer::start("ui-cookie").await;
    let doc = s.user("doc", &["physician"]).await;
    let pid = s.patient(&doc, "Abe", "Rin").await;
    s.assign(&pid, "doc").await;
    let mut b = Browser::new(&s);
    b.login("doc", PASSWORD).await;
    let cookie = format!("mamori_session={}", b.cookies["mamori_session"]);
    let h = [("cookie", cookie.as_str())];
    let r = s.raw(Method::GET, &format!("/fhir/Patient/{pid}"), None, None, &h).await;
    assert_eq!(r.status, 401, "a cookie does not authenticate FHIR");
    let r = s
        .raw(
            Method::POST,
            "/api/v1/break-glass",
            None,
            Some((json!({"patient": pid, "reason": "cross-site forgery attempt"}).to_string(), "application/json")),
            &h,
        )
        .await;
    assert_eq!(r.status, 401, "nor a state-changing API call");
    // The event stream does accept it (EventSource cannot send headers).
    let resp =
        s.client.get(format!("{}/api/v1/events", s.base)).header("cookie", cookie.as_str()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
}

#[tokio::test]
async fn logout_ends_the_session_everywhere() {
    let s = TestServer::start("ui-logout").await;
    s.user("doc", &["physician"]).await;
    let mut b = Browser::new(&s);
    b.login("doc", PASSWORD).await;
    let token = b.cookies["mamori_session"].clone();
    assert_eq!(s.get("/api/v1/auth/me", &token).await.status, 200);
    let p = b.post("/ui/logout", &[]).await;
    assert_eq!(p.location(), "/ui/login");
    assert!(!b.cookies.contains_key("mamori_session"), "the cookie is cleared");
    assert_eq!(s.get("/api/v1/auth/me", &token).await.status, 401, "the token is revoked");
    let mut again = Browser::new(&s);
    again.cookies.insert("mamori_session".into(), token);
    assert_eq!(again.get("/ui/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn an_unknown_ui_address_is_a_page_not_json() {
    let s = TestServer::start("ui-404").await;
    s.user("ns.x", &["nurse"]).await;
    let mut b = Browser::new(&s);
    // Before login: the login page, as for any UI address.
    let p = b.get("/ui/no/such/page").await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    b.login("ns.x", PASSWORD).await;
    let p = b.get("/ui/no/such/page").await;
    assert_eq!(p.status, StatusCode::NOT_FOUND);
    assert!(p.header("content-type").starts_with("text/html"), "{}", p.header("content-type"));
    assert!(p.text.contains("ページが見つかりません") && p.text.contains("href=\"/ui/\""), "{}", p.text);
    assert!(!p.header("content-security-policy").is_empty(), "the UI's security headers");
    // The API's unknown addresses stay JSON.
    let p = b.get("/api/v1/no-such-endpoint").await;
    assert!(p.text.contains("\"not-found\""), "{}", p.text);
}

#[tokio::test]
async fn english_by_accept_language_or_switch() {
    let s = TestServer::start("ui-lang").await;
    s.user("doc", &["physician"]).await;
    let mut b = Browser::new(&s);
    b.lang = "en-GB,en;q=0.9";
    let p = b.get("/ui/login").await;
    assert!(p.text.contains("User name") && p.text.contains("lang=\"en\""));
    b.login("doc", PASSWORD).await;
    assert!(b.get("/ui/").await.text.contains("Normal operation"));
    let p = b.get("/ui/lang?to=ja&back=/ui/").await;
    assert_eq!(p.location(), "/ui/");
    assert!(b.get("/ui/").await.text.contains("通常運用"), "the switch wins over Accept-Language");
    // The switch does not redirect off-site.
    assert_eq!(b.get("/ui/lang?to=en&back=//evil.example/").await.location(), "/ui/");
    // CR/LF cannot split the redirect (it was a 500).
    let p = b.get("/ui/lang?to=en&back=/ui/%0d%0aSet-Cookie:%20mamori_session=x").await;
    assert_eq!(p.status, 400, "{}", p.text);
    assert!(p.set_cookies.is_empty(), "{:?}", p.set_cookies);
}

#[tokio::test]
async fn roles_see_their_screens_and_the_api_still_decides() {
    let s = TestServer::start("ui-roles").await;
    s.user("nurse1", &["nurse"]).await;
    s.user("aud", &["auditor"]).await;
    let mut n = Browser::new(&s);
    n.login("nurse1", PASSWORD).await;
    let home = n.get("/ui/").await;
    assert!(
        !home.text.contains("/ui/admin") && !home.text.contains("/ui/audit\""),
        "no admin or audit links for a nurse"
    );
    // Typing the address does not help: the API refuses and the page says so.
    let p = n.get("/ui/admin/users").await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("notice error"), "{}", p.text);
    let p = n.get("/ui/audit/search?user=aud").await;
    assert!(p.text.contains("notice error"));
    let mut a = Browser::new(&s);
    a.login("aud", PASSWORD).await;
    let p = a.get("/ui/audit").await;
    assert!(
        p.text.contains("<pre class=\"checkpoint\">") && p.text.contains("<svg class=\"bars\""),
        "checkpoint and chart"
    );
    let p = a.post("/ui/audit/verify", &[]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "Post/Redirect/Get");
    let to = p.location();
    let p = a.get(&to).await;
    assert!(!a.get(&to).await.text.contains("監査ログの検証結果"), "the result is shown once");
    assert!(p.text.contains("notice ok"), "{}", p.text);
    let p = a.get("/ui/audit/search?user=nurse1&action=audit-report").await;
    assert!(p.text.contains("audit-report") && p.text.contains("403"), "the nurse's refused attempt is in the log");
}

#[tokio::test]
async fn demo_seeds_a_hospital_and_refuses_real_data_directories() {
    use mamori_core::time::SystemClock;
    use mamori_server::server::ServeOptions;
    let dir = common::temp_dir("ui-demo");
    let opts = |d: &std::path::Path| ServeOptions {
        data: d.to_owned(),
        listen: Some("127.0.0.1:0".into()),
        as2_listen: None,
        clock: std::sync::Arc::new(SystemClock),
    };
    let demo = mamori_server::demo::start_demo(opts(&dir)).await.expect("demo starts");
    assert!(demo.credentials.iter().any(|c| c.user == "dr.sato"));
    assert!(demo.credentials.iter().any(|c| c.user.starts_with("em-")), "sealed emergency accounts");
    let st = demo.main.state.clone();
    let n = st
        .store
        .read(|c| Ok(mamori_store::records::counts(c)?.into_iter().find(|(t, _)| t == "Patient").map_or(0, |x| x.1)))
        .await
        .unwrap();
    assert_eq!(n, 50);
    let op = mamori_service::Actor::local_operator("test", mamori_service::RequestCtx::background(st.mode.get()));
    let p = mamori_service::exchange::partners::show(&st, &op, "demo-clinic").await.unwrap();
    assert_eq!(p["status"], "active");
    // Every seeded record is marked as test data.
    let pw = demo.credentials.iter().find(|c| c.user == "dr.sato").unwrap().password.clone();
    let base = format!("https://localhost:{}", demo.main.addr.port());
    let pem = std::fs::read(dir.join("tls/cert.pem")).unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let tok: Value = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({"username": "dr.sato", "password": pw}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bundle: Value = client
        .get(format!("{base}/fhir/Patient/demo-p001/$everything"))
        .bearer_auth(tok["token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert!(entries.len() > 10, "a coherent chart: {}", entries.len());
    // The record number is in the demo hospital's JP Core patient-id system
    // (its institution code), with kanji and kana names told apart.
    let patient = entries.iter().find(|e| e["resource"]["resourceType"] == "Patient").unwrap();
    assert_eq!(patient["resource"]["identifier"][0]["system"], "urn:oid:1.2.392.100495.20.3.51.11319900001");
    assert_eq!(patient["resource"]["name"][1]["extension"][0]["valueCode"], "SYL");
    for e in entries {
        assert_eq!(e["resource"]["meta"]["security"][0]["code"], "HTEST", "{}", e["resource"]["id"]);
    }
    demo.main.shutdown().await;
    demo.partner.shutdown().await;
    // A second start reuses the directory without seeding again.
    let demo = mamori_server::demo::start_demo(opts(&dir)).await.expect("restart");
    assert!(demo.credentials.is_empty());
    demo.main.shutdown().await;
    demo.partner.shutdown().await;
    // Best effort: a leftover temporary directory harms no test.
    std::fs::remove_dir_all(&dir).ok();

    // A real data directory is refused, and left untouched.
    let real = TestServer::start("ui-demo-real").await;
    let dir = real.dir.clone();
    let mut real = real;
    real.stop().await;
    let users = real.count("SELECT COUNT(*) FROM users");
    let before = std::fs::metadata(dir.join("mamori.toml")).unwrap().len();
    let e = mamori_server::demo::start_demo(opts(&dir)).await.err().expect("refused");
    assert!(e.to_string().contains("real (non-demo)"), "{e}");
    assert_eq!(std::fs::metadata(dir.join("mamori.toml")).unwrap().len(), before);
    assert_eq!(real.count("SELECT COUNT(*) FROM users"), users);
    assert!(!dir.join("partner-node").exists());
}

/// The `form_key` a rendered form carries (the first one on the page
/// after `marker`).
fn form_key(page: &str, marker: &str) -> String {
    let at = page.find(marker).unwrap_or_else(|| panic!("{marker} on the page"));
    let rest = &page[at..];
    let v = rest.split("name=\"form_key\" value=\"").nth(1).expect("a form key");
    v.split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_form_acts_once_and_a_one_time_password_is_shown_once() {
    let s = TestServer::start("ui-once").await;
    s.user("it2", &["admin"]).await;
    let doc = s.user("doc", &["physician"]).await;
    let pid = s.patient(&doc, "Mori", "Ren").await;
    let mut a = Browser::new(&s);
    a.login("it2", PASSWORD).await;
    let care = |s: &TestServer| match s
        .col("SELECT COUNT(*) FROM care_assignments WHERE patient = $1 AND user_name = $2", &[pid.as_str(), "doc"])[0]
    {
        mamori_store::sql::Cell::Int(n) => n,
        ref other => panic!("{other:?}"),
    };
    let before = care(&s);

    // Submitted twice (a double click, a reload of the POST): one care
    // assignment, and both answers lead to the same place.
    let page = a.get("/ui/admin/care").await;
    let key = form_key(&page.text, "action=\"/ui/admin/care\"");
    let fields = [("form_key", key.as_str()), ("patient", pid.as_str()), ("user", "doc"), ("reason", "主治医")];
    let first = a.post("/ui/admin/care", &fields).await;
    let second = a.post("/ui/admin/care", &fields).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    assert_eq!(second.status, StatusCode::SEE_OTHER, "{}", second.text);
    assert_eq!(first.location(), second.location());
    let after = care(&s);
    assert_eq!(after, before + 1, "one assignment");
    // A freshly rendered form has a new key: a deliberate second
    // submission is a new one.
    let again = form_key(&a.get("/ui/admin/care").await.text, "action=\"/ui/admin/care\"");
    assert_ne!(again, key);
    // A malformed key is refused and changes nothing.
    let bad = [("form_key", "zz"), ("patient", pid.as_str()), ("user", "doc")];
    let p = a.post("/ui/admin/care", &bad).await;
    assert!(p.text.contains("notice error"), "{}", p.text);
    assert_eq!(care(&s), after);

    // A new user's one-time password: the form redirects, the page it
    // leads to shows the password once, and a resubmission creates nothing.
    let page = a.get("/ui/admin/users").await;
    let key = form_key(&page.text, "action=\"/ui/admin/users\"");
    let fields = [("form_key", key.as_str()), ("name", "clerk9"), ("display", "Clerk Nine"), ("roles", "clerk")];
    let p = a.post("/ui/admin/users", &fields).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let to = p.location();
    assert!(to.starts_with("/ui/admin/users?flash="), "{to}");
    assert!(!p.text.contains("secret"), "the POST's answer carries no password");
    let shown = a.get(&to).await;
    let pw = shown
        .text
        .split("<code class=\"secret\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .expect("the one-time password is shown")
        .to_owned();
    assert!(pw.len() >= 12, "{pw}");
    let again = a.get(&to).await;
    assert!(!again.text.contains("class=\"secret\""), "shown once only");
    let replay = a.post("/ui/admin/users", &fields).await;
    assert_eq!((replay.status, replay.location()), (StatusCode::SEE_OTHER, to.clone()), "{}", replay.text);
    assert_eq!(s.col("SELECT COUNT(*) FROM users WHERE name = 'clerk9'", &[])[0], mamori_store::sql::Cell::Int(1));
    let r = s.req(Method::POST, "/api/v1/auth/login", None, Some(json!({"username": "clerk9", "password": pw}))).await;
    assert_eq!(r.status, 200, "the password shown works: {}", r.text);
    // Another person's browser cannot take it.
    let mut other = Browser::new(&s);
    other.login("it2", PASSWORD).await;
    let page = other.get("/ui/admin/users").await;
    let key = form_key(&page.text, "action=\"/ui/admin/users\"");
    let p = other
        .post(
            "/ui/admin/users",
            &[("form_key", key.as_str()), ("name", "clerk10"), ("display", "Clerk Ten"), ("roles", "clerk")],
        )
        .await;
    let flash = p.location();
    let mut nurse = Browser::new(&s);
    s.user("nurse7", &["nurse"]).await;
    nurse.login("nurse7", PASSWORD).await;
    assert!(!nurse.get(&flash).await.text.contains("class=\"secret\""), "not another user's");
    assert!(other.get(&flash).await.text.contains("class=\"secret\""), "still there for its owner");
}

#[tokio::test]
async fn the_record_number_staff_see_finds_the_patient_in_the_exchange_and_audit_forms() {
    let s = TestServer::start("ui-mrn").await;
    let doc = s.user("dr.n", &["physician"]).await;
    s.user("aud.n", &["auditor"]).await;
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": "00011480"}],
                   "name": [{"family": "森", "given": ["蓮"]}], "gender": "male", "birthDate": "1980-02-02"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pid = r.body["id"].as_str().unwrap().to_owned();
    let mut b = Browser::new(&s);
    b.login("dr.n", PASSWORD).await;
    let p = b.get("/ui/exchange?patient=00011480").await;
    assert_eq!((p.status, p.location()), (StatusCode::SEE_OTHER, format!("/ui/exchange?patient={pid}")));
    let p = b.get("/ui/exchange?patient=00099999").await;
    assert!(p.text.contains("notice error") && p.text.contains("カルテ番号の患者はいません"), "{}", p.text);
    // The home search box finds the patient by record number and by id.
    for q in ["00011480", pid.as_str()] {
        let p = b.get(&format!("/ui/patients?q={q}")).await;
        assert!(p.text.contains(&format!("href=\"/ui/patients/{pid}\"")), "{q}: {}", p.text);
    }
    let p = b.get("/ui/patients?q=00099999").await;
    assert!(p.text.contains("該当する患者はいません"), "an empty search says so: {}", p.text);
    // A name in kanji and kana (JP Core: IDE and SYL) is shown with its reading.
    let rep = |c: &str| json!([{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": c}]);
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "gender": "female", "birthDate": "1990-01-01", "name": [
                {"extension": rep("IDE"), "family": "林", "given": ["<葵>"]},
                {"extension": rep("SYL"), "family": "ハヤシ", "given": ["アオイ"]},
                {"family": "Hayashi", "given": ["Aoi"]}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let ruby = "<ruby>林 &lt;葵&gt;<rt>ハヤシ アオイ</rt></ruby> / Hayashi Aoi";
    let p = b.get("/ui/patients?q=%E3%83%8F%E3%83%A4%E3%82%B7").await;
    assert!(p.text.contains(ruby), "the search list too: {}", p.text);
    let p = b.get(&format!("/ui/patients/{}", r.body["id"].as_str().unwrap())).await;
    assert!(p.text.contains(ruby), "{}", p.text.lines().find(|l| l.contains("pname")).unwrap_or(""));

    let mut a = Browser::new(&s);
    a.login("aud.n", PASSWORD).await;
    let p = a.get("/ui/audit/patient?patient=00011480").await;
    assert!(p.text.contains(&format!("Patient/{pid}")), "the report names the patient meant: {}", p.text);
    assert!(!p.text.contains("notice error"), "{}", p.text);
    let p = a.get("/ui/audit/patient?patient=00099999").await;
    assert!(p.text.contains("notice error") && p.text.contains("no patient has the id"), "{}", p.text);
}

#[tokio::test]
async fn an_emergency_login_starts_with_a_new_csrf_token() {
    let s = TestServer::start("ui-elogin").await;
    let decider = s.user("bcp.e", &["bcp-decider"]).await;
    let r = s
        .post("/api/v1/emergency-accounts", &s.admin, json!({"count": 1, "roles": ["physician"], "drill": false}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let name = r.body["accounts"][0].as_str().unwrap().to_owned();
    let r = s.req(Method::POST, &format!("/api/v1/emergency-accounts/{name}/envelope"), Some(&s.admin), None).await;
    let pw = r.body["password"].as_str().unwrap().to_owned();
    let r = s
        .post(
            "/api/v1/bcp/declarations",
            &decider,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "震度6強の地震 / JMA 6+ earthquake"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let mut b = Browser::new(&s);
    assert_eq!(b.get("/ui/emergency-login").await.status, 200);
    let before = b.cookies.get("mamori_csrf").cloned().expect("a CSRF cookie before the login");
    let p = b
        .post(
            "/ui/emergency-login",
            &[
                ("account", name.as_str()),
                ("password", pw.as_str()),
                ("real_name", "応援 太郎"),
                ("affiliation", "DMAT 東病院"),
            ],
        )
        .await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let after = b.cookies.get("mamori_csrf").cloned().unwrap_or_default();
    assert!(!after.is_empty() && after != before, "the token seen before the login is replaced");
}

#[tokio::test]
async fn a_provisional_chart_shows_what_was_registered() {
    let s = TestServer::start("ui-prov").await;
    let decider = s.user("bcp.p", &["bcp-decider"]).await;
    let doc = s.user("dr.p", &["physician"]).await;
    let r = s
        .post(
            "/api/v1/bcp/declarations",
            &decider,
            json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "震度6強の地震 / JMA 6+ earthquake"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s
        .post(
            "/api/v1/registrations",
            &doc,
            json!({"triage": "red", "sex": "male", "estimated_age": 40, "features": "右腕に<b>入れ墨</b>",
                   "found_at": "駅前ロータリー", "arrival": "救急車"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (pid, prov) =
        (r.body["id"].as_str().unwrap().to_owned(), r.body["provisional_id"].as_str().unwrap().to_owned());
    let mut b = Browser::new(&s);
    b.login("dr.p", PASSWORD).await;
    let p = b.get(&format!("/ui/patients/{pid}")).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains(&format!("身元不明 {prov}")), "titled by the provisional id: {}", p.text);
    for shown in ["赤（最優先治療）", "推定年齢", "40", "右腕に&lt;b&gt;入れ墨&lt;/b&gt;", "駅前ロータリー", "救急車"]
    {
        assert!(p.text.contains(shown), "{shown} on the chart");
    }
}

#[tokio::test]
async fn a_locked_account_is_told_what_locks_it_and_for_how_long() {
    let s = TestServer::start("ui-lock").await;
    s.user("ns.l", &["nurse"]).await;
    let mut b = Browser::new(&s);
    for _ in 0..5 {
        let p = b.login("ns.l", "wrong password 1!").await;
        assert_eq!(p.status, 200);
    }
    // The right password now: the account is locked, and the page says
    // what may have happened without confirming it to a guesser.
    let p = b.login("ns.l", PASSWORD).await;
    assert_eq!(p.status, 200, "not logged in");
    assert!(p.text.contains("ロック中") && p.text.contains("5回続けて失敗") && p.text.contains("15分間"), "{}", p.text);
    assert!(!b.cookies.contains_key("mamori_session"), "no session");
}

#[tokio::test]
async fn compliance_report_is_produced_once_and_read_as_a_document() {
    let s = TestServer::start("ui-compliance").await;
    s.user("audit.k", &["auditor"]).await;
    s.user("doc", &["physician"]).await;

    // A physician is not offered the screen, and the use case refuses it.
    let mut d = Browser::new(&s);
    d.login("doc", PASSWORD).await;
    let home = d.get("/ui/").await;
    assert!(!home.text.contains("href=\"/ui/compliance\""));
    let p = d.get("/ui/compliance").await;
    assert!(p.text.contains("notice error"), "{}", p.text);

    let mut a = Browser::new(&s);
    a.login("audit.k", PASSWORD).await;
    let page = a.get("/ui/compliance").await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("href=\"/ui/compliance\"") && page.text.contains("報告書を作成"), "{}", page.text);
    // A period that ends before it starts: explained, nothing produced.
    let key = form_key(&page.text, "action=\"/ui/compliance\"");
    let p = a.post("/ui/compliance", &[("form_key", key.as_str()), ("from", "2026-12-01"), ("to", "2026-11-01")]).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("期間が正しくありません"), "{}", p.text);
    assert_eq!(s.count("SELECT COUNT(*) FROM compliance_reports"), 0);

    // Produced once, then redirected; the same form again does nothing more.
    let key = form_key(&a.get("/ui/compliance").await.text, "action=\"/ui/compliance\"");
    let fields = [("form_key", key.as_str()), ("from", "2026-11-01"), ("to", "2026-12-31")];
    let first = a.post("/ui/compliance", &fields).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    let to = first.location();
    assert!(to.starts_with("/ui/compliance/"), "{to}");
    let again = a.post("/ui/compliance", &fields).await;
    assert_eq!((again.status, again.location()), (StatusCode::SEE_OTHER, to.clone()));
    assert_eq!(s.count("SELECT COUNT(*) FROM compliance_reports"), 1);

    // The document: every requirement with its state, the checklist items,
    // the digest, local times; the signed file and the PDF to download.
    let doc = a.get(&to).await;
    assert_eq!(doc.status, 200);
    for want in ["準拠状況報告書", "EM-C1", "GL-BACKUP", "badge red", "2-⑥", "SHA-256", "(UTC+09:00)", "data-print"]
    {
        assert!(doc.text.contains(want), "{want}: {}", doc.text);
    }
    assert!(!doc.text.contains("not_met"), "no codes on the Japanese page");
    let json = a.get(&format!("{to}/report.json")).await;
    assert_eq!(json.status, 200);
    assert!(json.header("content-disposition").contains("attachment"));
    let v: Value = serde_json::from_str(&json.text).unwrap();
    assert!(doc.text.contains(v["signature"]["sha256"].as_str().unwrap()));
    let pdf = a.get(&format!("{to}/report.pdf")).await;
    assert_eq!(pdf.status, 200);
    assert_eq!(pdf.header("content-type"), "application/pdf");
    // Reading it is audited.
    assert!(s.audits_where("compliance-report-read").iter().any(|e| e["agent"]["user"] == "audit.k"));
}

#[tokio::test]
async fn a_paper_record_is_transcribed_with_its_author_and_time_once() {
    let s = TestServer::start("ui-transcribe").await;
    let doc = s.user("dr.t", &["physician"]).await;
    let r = s
        .post(
            "/fhir/Patient",
            &doc,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": "00022222"}],
                   "name": [{"family": "林", "given": ["葵"]}], "gender": "female", "birthDate": "1990-05-05"}),
        )
        .await;
    let pid = r.body["id"].as_str().unwrap().to_owned();
    s.assign(&pid, "dr.t").await;
    let mut b = Browser::new(&s);
    b.login("dr.t", PASSWORD).await;
    // The chart leads to the form for its patient.
    let chart = b.get(&format!("/ui/patients/{pid}")).await;
    assert!(chart.text.contains(&format!("href=\"/ui/transcribe?patient={pid}\"")), "{}", chart.text);
    let obs_count = || async {
        s.get(&format!("/fhir/Observation?patient={pid}"), &doc).await.body["entry"].as_array().map_or(0, Vec::len)
    };

    // Bad input: said on the form, with what was typed kept; nothing made.
    let page = b.get("/ui/transcribe?patient=00022222").await;
    let key = form_key(&page.text, "action=\"/ui/transcribe\"");
    let bad = [
        ("form_key", key.as_str()),
        ("patient", "00022222"),
        ("kind", "vital"),
        ("vital", "8310-5"),
        ("value", "熱あり"),
        ("original_author", "看護師 山田"),
        ("original_time", "2026-11-30T14:05"),
    ];
    let p = b.post("/ui/transcribe", &bad).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("値は数値で入力してください"), "{}", p.text);
    assert!(p.text.contains("value=\"熱あり\"") && p.text.contains("value=\"看護師 山田\""), "input kept: {}", p.text);
    let p = b
        .post(
            "/ui/transcribe",
            &[
                ("patient", "00099999"),
                ("kind", "vital"),
                ("vital", "8310-5"),
                ("value", "38.2"),
                ("original_author", "x"),
                ("original_time", "2026-11-30T14:05"),
            ],
        )
        .await;
    assert!(p.text.contains("その患者IDまたはカルテ番号の患者はいません"), "{}", p.text);
    assert_eq!(obs_count().await, 0);

    // Entered by the record number, twice (a double click): one record.
    let page = b.get("/ui/transcribe").await;
    let key = form_key(&page.text, "action=\"/ui/transcribe\"");
    let good = [
        ("form_key", key.as_str()),
        ("patient", "00022222"),
        ("kind", "vital"),
        ("vital", "8310-5"),
        ("value", "38.2"),
        ("original_author", "看護師 山田"),
        ("original_time", "2026-11-30T14:05"),
        ("note", "停電中の紙の温度板から"),
    ];
    let first = b.post("/ui/transcribe", &good).await;
    let second = b.post("/ui/transcribe", &good).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    assert_eq!(first.location(), format!("/ui/patients/{pid}?transcribed=1"));
    assert_eq!(second.location(), first.location());
    let found = s.get(&format!("/fhir/Observation?patient={pid}"), &doc).await;
    let entries = found.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "one record for two submissions");
    let o = &entries[0]["resource"];
    assert_eq!(o["valueQuantity"]["value"], 38.2);
    assert_eq!(o["valueQuantity"]["code"], "Cel");
    assert_eq!(o["effectiveDateTime"], "2026-11-30T14:05:00+09:00", "the institution's time zone");
    // Its provenance names the original author and the transcriber.
    let ev = s.audits_where("transcribe").pop().expect("audited");
    assert_eq!(ev["detail"]["original_author"], "看護師 山田");
    assert_eq!(ev["patients"], json!([pid]));
    let chart = b.get(&first.location()).await;
    assert!(chart.text.contains("紙の記録を転記しました") && chart.text.contains("38.2 ℃"), "{}", chart.text);
}

#[tokio::test]
async fn the_merge_review_queue_reviews_and_undoes_merges() {
    let s = TestServer::start("ui-merges").await;
    let er = s.user_in("er-doc", &["physician"], Some("ER")).await;
    let clerk = s.user("clerk.m", &["clerk"]).await;
    s.user("aud.m", &["auditor"]).await;
    let r = s.post("/api/v1/registrations", &er, json!({"triage": "yellow", "sex": "female"})).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let prov = r.body["id"].as_str().unwrap().to_owned();
    let wristband = r.body["provisional_id"].as_str().unwrap().to_owned();
    let real = s.patient(&clerk, "川口", "花").await;

    // The clerk merges on screen: the provisional id from the wristband,
    // a preview in words, then the merge (once).
    let mut c = Browser::new(&s);
    c.login("clerk.m", PASSWORD).await;
    let reason = "家族が確認 / confirmed by family";
    let p = c
        .post("/ui/merge", &[("step", "preview"), ("source", &wristband), ("target", &real), ("reason", reason)])
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(
        p.text.contains("件の記録が統合先の患者に移ります") && p.text.contains(&format!("Patient/{real}")),
        "{}",
        p.text
    );
    let p = c
        .post("/ui/merge", &[("step", "preview"), ("source", "T-nobody"), ("target", &real), ("reason", reason)])
        .await;
    assert!(p.text.contains("患者はいません") && p.text.contains("value=\"T-nobody\""), "{}", p.text);
    let key = form_key(&c.get("/ui/merge").await.text, "action=\"/ui/merge\"");
    let go = [
        ("form_key", key.as_str()),
        ("step", "merge"),
        ("source", prov.as_str()),
        ("target", real.as_str()),
        ("reason", reason),
    ];
    let first = c.post("/ui/merge", &go).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    assert!(first.location().starts_with(&format!("/ui/patients/{real}?merged=")), "{}", first.location());
    assert_eq!(c.post("/ui/merge", &go).await.location(), first.location(), "merged once");
    assert_eq!(s.audits_where("patient-merge").len(), 1);

    // The auditor sees it waiting, and reviews it once.
    let mut a = Browser::new(&s);
    a.login("aud.m", PASSWORD).await;
    let p = a.get("/ui/merge/reviews").await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains(&prov) && p.text.contains(&real) && p.text.contains("家族が確認"), "{}", p.text);
    let key = form_key(&p.text, "/review\"");
    let id = p.text.split("action=\"/ui/merge/").nth(1).unwrap().split('/').next().unwrap().to_owned();
    let short = a.post(&format!("/ui/merge/{id}/review"), &[("note", "")]).await;
    assert_eq!(short.status, 200, "an empty note is refused on the page");
    let done =
        a.post(&format!("/ui/merge/{id}/review"), &[("form_key", key.as_str()), ("note", "戸籍と照合済み")]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.text);
    let again =
        a.post(&format!("/ui/merge/{id}/review"), &[("form_key", key.as_str()), ("note", "戸籍と照合済み")]).await;
    assert_eq!(again.location(), done.location(), "a repeat is sent where the first led");
    assert_eq!(s.audits_where("merge-review").iter().filter(|e| e["status"] == 200).count(), 1);
    let p = a.get("/ui/merge/reviews").await;
    assert!(p.text.contains("確認待ちの統合はありません"), "{}", p.text);
    let p = a.get("/ui/merge/reviews?show=all").await;
    assert!(p.text.contains("戸籍と照合済み"));

    // The clerk undoes it (a reason is required); the queue says so.
    let p = c.post(&format!("/ui/merge/{id}/undo"), &[("reason", "x")]).await;
    assert_eq!(p.status, 200);
    assert!(p.text.contains("notice error"), "{}", p.text);
    let p = c.post(&format!("/ui/merge/{id}/undo"), &[("reason", "双子の取り違え / twins")]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let p = c.get("/ui/merge/reviews?show=all").await;
    assert!(p.text.contains("取り消し済み"), "{}", p.text);
}

#[tokio::test]
async fn the_bcp_plan_is_edited_with_its_errors_shown_in_place() {
    let s = TestServer::start("ui-plan").await;
    s.user("bcp.p", &["bcp-decider"]).await;
    let mut b = Browser::new(&s);
    b.login("bcp.p", PASSWORD).await;
    let page = b.get("/ui/bcp/plan").await;
    assert_eq!(page.status, 200);
    let text = page
        .text
        .split("name=\"plan\"")
        .nth(1)
        .unwrap()
        .split_once('>')
        .unwrap()
        .1
        .split("</textarea>")
        .next()
        .unwrap();
    let text = text.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"");
    assert!(text.contains("[[criteria]]"), "{text}");
    let version = |s: &TestServer| s.count("SELECT COUNT(*) FROM bcp_plans");
    let before = version(&s);

    // A broken plan: the errors, the text as typed, nothing saved.
    let broken = text.replacen("[[criteria]]", "[[criteria]]\nid = \"\"", 1);
    let p = b.post("/ui/bcp/plan", &[("plan", broken.as_str())]).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("計画に誤りがあります"), "{}", p.text);
    assert!(p.text.contains("id = &quot;&quot;"), "the text as typed is kept");
    assert_eq!(version(&s), before);

    // A good change is saved as a new version.
    let changed = format!("{text}\n");
    let p = b.post("/ui/bcp/plan", &[("plan", changed.as_str())]).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    assert_eq!(p.location(), "/ui/bcp/plan?saved=1");
    assert_eq!(version(&s), before + 1);
    assert!(b.get(&p.location()).await.text.contains("計画を保存しました"));
}

/// Form fields as the browser helper takes them.
fn as_refs<'a>(f: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    f.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn self_signed(dir: &std::path::Path, cn: &str) -> String {
    let key = dir.join(format!("{cn}.key"));
    let crt = dir.join(format!("{cn}.crt"));
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "365", "-subj"])
        .arg(format!("/CN={cn}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(crt).unwrap()
}

#[tokio::test]
async fn a_partner_is_registered_and_its_certificate_renewed_on_screen() {
    let s = TestServer::start("ui-partner").await;
    s.user("it.p", &["admin"]).await;
    let ident = s.get("/api/v1/exchange/identity", &s.admin).await;
    let signing = ident.body["certificates"]["signing"].as_str().unwrap().to_owned();
    let tls_ca = ident.body["certificates"]["tls_ca"].as_str().unwrap().to_owned();
    let mut b = Browser::new(&s);
    b.login("it.p", PASSWORD).await;
    let page = b.get("/ui/exchange/partners/new").await;
    assert_eq!(page.status, 200);
    let key = form_key(&page.text, "action=\"/ui/exchange/partners/new\"");
    let mut fields: Vec<(&str, String)> = vec![
        ("form_key", key.clone()),
        ("id", "1310000009".into()),
        ("name", "みなと診療所".into()),
        ("as2_id", "MINATO".into()),
        ("endpoint", "https://as2.minato.example:4443/as2".into()),
        ("relationship", "third_party".into()),
        ("purposes", "referral".into()),
        ("contract_reference", "地域連携契約 2026-009".into()),
        ("network_kind", "internet_tls".into()),
        ("network_secured_by", "institution".into()),
        ("d_sender_side", "送信元が対応".into()),
        ("d_path", "各自の回線".into()),
        ("d_recipient_side", "受信先が対応".into()),
        ("d_fault_isolation", "双方で切り分け".into()),
        ("d_stopping", "書面で停止".into()),
        ("d_patient_enquiries", "各施設の窓口".into()),
        ("c_signing", "not a certificate".into()),
        ("c_encryption", signing.clone()),
        ("c_tls_ca", tls_ca.clone()),
    ];
    // A bad certificate: named on the form, what was typed kept, nothing registered.
    let p = b.post("/ui/exchange/partners/new", &as_refs(&fields)).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("登録内容に誤りがあります") && p.text.contains("signing"), "{}", p.text);
    assert!(p.text.contains("value=\"みなと診療所\""), "input kept");
    assert_eq!(s.get("/api/v1/partners", &s.admin).await.body["partners"].as_array().unwrap().len(), 0);
    // Good: registered, once, and shown with its certificates.
    fields[16].1 = signing.clone();
    let first = b.post("/ui/exchange/partners/new", &as_refs(&fields)).await;
    assert_eq!(first.status, StatusCode::SEE_OTHER, "{}", first.text);
    let second = b.post("/ui/exchange/partners/new", &as_refs(&fields)).await;
    assert_eq!(second.location(), first.location());
    let page = b.get(&first.location()).await;
    assert!(page.text.contains("保存しました") && page.text.contains("第三者"), "{}", page.text);
    let v1 = s.get("/api/v1/partners/1310000009", &s.admin).await.body["version"].as_i64().unwrap();

    // Renewal: a new signing certificate pasted into the edit form.
    let renewed = self_signed(&s.dir, "renewed-signing");
    let key = form_key(&page.text, "action=\"/ui/exchange/partners/1310000009\"");
    let mut edit: Vec<(&str, String)> = fields.iter().filter(|(k, _)| *k != "form_key").cloned().collect();
    edit.retain(|(k, _)| *k != "c_signing");
    edit.push(("c_signing", renewed.clone()));
    edit.push(("version", v1.to_string()));
    edit.push(("form_key", key));
    let p = b.post("/ui/exchange/partners/1310000009", &as_refs(&edit)).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.text);
    let shown = s.get("/api/v1/partners/1310000009", &s.admin).await;
    assert_eq!(shown.body["version"].as_i64().unwrap(), v1 + 1);
    assert_eq!(shown.body["registration"]["certificates"]["signing"].as_str().unwrap().trim(), renewed.trim());
    // The same form again, against the old version: refused, not overwritten.
    edit.retain(|(k, _)| *k != "form_key");
    let p = b.post("/ui/exchange/partners/1310000009", &as_refs(&edit)).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("notice error"), "{}", p.text);
    assert_eq!(s.get("/api/v1/partners/1310000009", &s.admin).await.body["version"].as_i64().unwrap(), v1 + 1);
}

#[tokio::test]
async fn a_refused_form_says_why_in_japanese_and_keeps_what_was_typed() {
    let s = TestServer::start("ui-kept").await;
    s.user_in("ns.w", &["nurse"], Some("W3")).await;
    let decider = s.user("bcp.k", &["bcp-decider"]).await;
    // Registration outside an emergency by a ward nurse: refused by the
    // plan, said in Japanese, the form as typed.
    let mut n = Browser::new(&s);
    n.login("ns.w", PASSWORD).await;
    let p = n
        .post(
            "/ui/register",
            &[
                ("triage", "yellow"),
                ("sex", "female"),
                ("age", "70"),
                ("features", "赤いセーター"),
                ("arrival", "walk-in"),
                ("note", "ロビーで転倒"),
            ],
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("受付を通さない緊急登録はできません"), "{}", p.text);
    // The API's technical detail (English) is there, folded under the Japanese.
    assert!(p.text.contains("<details class=\"detail\"><summary>技術的な詳細</summary><code>"), "{}", p.text);
    assert!(p.text.contains("value=\"赤いセーター\"") && p.text.contains("ロビーで転倒</textarea>"), "{}", p.text);
    assert!(
        p.text.contains("value=\"yellow\" required checked") && p.text.contains("value=\"walk-in\" selected"),
        "{}",
        p.text
    );
    assert_eq!(s.get("/api/v1/registrations", &decider).await.body["provisional"].as_array().map_or(0, Vec::len), 0);

    // Back to normal with the checklist open and no reason: the console,
    // why, and the note as typed; the declaration still open.
    let r = s
        .post("/api/v1/bcp/declarations", &decider, json!({"cause": "disaster", "criteria": ["earthquake"], "reason": "震度6強、建物の一部損壊 / strong earthquake"}))
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_i64().unwrap();
    for to in ["resumption", "recovery", "full_recovery"] {
        let r = s.post(&format!("/api/v1/bcp/declarations/{id}/transitions"), &decider, json!({"to": to})).await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
    let mut d = Browser::new(&s);
    d.login("bcp.k", PASSWORD).await;
    let page = d.get("/ui/bcp").await;
    assert!(page.text.contains("必須のチェック項目が"), "moving on with required items open asks first: {}", page.text);
    let p = d.post(&format!("/ui/bcp/{id}/transition"), &[("to", "normal"), ("note", "院長判断で復帰")]).await;
    assert_eq!(p.status, 200, "{}", p.text);
    assert!(p.text.contains("notice error") && p.text.contains("現在の状態と矛盾するため"), "{}", p.text);
    assert!(p.text.contains("value=\"院長判断で復帰\""), "the note is kept: {}", p.text);
    assert_eq!(s.get("/api/v1/mode", &decider).await.body["mode"], "emergency; phase=full_recovery");
}
