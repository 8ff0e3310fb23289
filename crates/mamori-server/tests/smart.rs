//! SMART App Launch 2.0 over HTTPS, as an app and its user's browser go
//! through it: registration, the consent screen behind the login, the
//! code exchange with PKCE, what the token reaches (never more than the
//! user, narrowed to the scopes and the patient), refresh rotation, a
//! replayed code, introspection, ID tokens, EHR launch, disabling an app.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const REDIRECT: &str = "https://app.example/cb";

fn pkce() -> (String, String) {
    let raw: [u8; 32] = mamori_store::accounts::random_bytes().unwrap();
    let verifier = B64URL.encode(raw);
    let challenge = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes()).as_ref());
    (verifier, challenge)
}

fn enc(s: &str) -> String {
    mamori_service::records::enc(s)
}

/// The query of `url` as pairs.
fn query_of(url: &str) -> Vec<(String, String)> {
    mamori_service::records::parse_pairs(url.split_once('?').map(|(_, q)| q).unwrap_or("")).unwrap()
}

fn q<'a>(pairs: &'a [(String, String)], k: &str) -> Option<&'a str> {
    pairs.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

async fn register(s: &TestServer, body: Value) -> Value {
    let r = s.post("/api/v1/apps", &s.admin, body).await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.body
}

/// An authorization request's URL (path and query).
fn authorize_url(s: &TestServer, client: &str, scope: &str, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut p = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ];
    let aud = format!("{}/fhir", s.base);
    p.push(("aud", &aud));
    p.extend_from_slice(extra);
    let qs: Vec<String> = p.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
    format!("/oauth/authorize?{}", qs.join("&"))
}

/// Follows the authorization endpoint to the consent screen; answers the
/// consent page.
async fn consent_page(b: &mut Browser, url: &str) -> Page {
    let p = b.get(url).await;
    assert_eq!(p.status, 303, "{}", p.text);
    let to = p.location();
    assert!(to.starts_with("/ui/apps/authorize?"), "{to}");
    b.get(&to).await
}

/// The hidden fields of the consent form.
fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for part in html.split("<input type=\"hidden\" name=\"").skip(1) {
        let (name, rest) = part.split_once('"').unwrap();
        let v = rest.split_once("value=\"").unwrap().1.split_once('"').unwrap().0;
        let v = v
            .replace("&amp;", "&")
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'");
        out.push((name.to_owned(), v));
    }
    out
}

/// Answers the consent screen; returns the redirect's Location.
async fn answer(b: &mut Browser, page: &Page, decision: &str, patient: Option<&str>) -> String {
    assert_eq!(page.status, 200, "{}", page.text);
    let mut f: Vec<(String, String)> = hidden_fields(&page.text).into_iter().filter(|(k, _)| k != "csrf").collect();
    f.push(("decision".into(), decision.into()));
    if let Some(p) = patient {
        f.push(("patient".into(), p.into()));
    }
    let fr: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = b.post("/ui/apps/authorize", &fr).await;
    assert_eq!(r.status, 303, "{}", r.text);
    r.location()
}

/// Exchanges a code at the token endpoint.
async fn exchange(s: &TestServer, client: &str, code: &str, verifier: &str) -> common::Resp {
    let body = format!(
        "grant_type=authorization_code&code={}&redirect_uri={}&code_verifier={}&client_id={}",
        enc(code),
        enc(REDIRECT),
        enc(verifier),
        enc(client)
    );
    s.raw(Method::POST, "/oauth/token", None, Some((body, "application/x-www-form-urlencoded")), &[]).await
}

async fn form_post(s: &TestServer, path: &str, body: &str, basic: Option<(&str, &str)>) -> common::Resp {
    let auth =
        basic.map(|(i, p)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{i}:{p}"))));
    let h: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("authorization", a)]).unwrap_or_default();
    s.raw(Method::POST, path, None, Some((body.to_owned(), "application/x-www-form-urlencoded")), &h).await
}

/// Presents a refresh token at the token endpoint.
async fn refresh(s: &TestServer, client: &str, token: &str) -> common::Resp {
    let body = format!("grant_type=refresh_token&refresh_token={}&client_id={}", enc(token), enc(client));
    form_post(s, "/oauth/token", &body, None).await
}

/// Logs `user` in through the UI; a browser with the session.
async fn browser(s: &TestServer, user: &str) -> Browser {
    let mut b = Browser::new(s);
    let p = b.login(user, PASSWORD).await;
    assert_eq!(p.status, 303, "{}", p.text);
    b
}

/// Goes through the whole standalone launch; answers the token response.
async fn authorize(s: &TestServer, b: &mut Browser, client: &str, scope: &str, patient: Option<&str>) -> Value {
    let (verifier, challenge) = pkce();
    let page = consent_page(b, &authorize_url(s, client, scope, &challenge, &[("nonce", "n-1")])).await;
    let to = answer(b, &page, "allow", patient).await;
    assert!(to.starts_with(REDIRECT), "{to}");
    let qp = query_of(&to);
    assert_eq!(q(&qp, "state"), Some("st-123"));
    let r = exchange(s, client, q(&qp, "code").unwrap(), &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    r.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reaches_only_its_patient_within_its_scopes_and_its_users_rights() {
    let s = TestServer::start("smart-scope").await;
    let dr_a = s.user("dr.a", &["physician"]).await;
    let dr_b = s.user("dr.b", &["physician"]).await;
    let pa = s.patient(&dr_a, "Ay", "A").await;
    let pa2 = s.patient(&dr_a, "Ay", "Two").await;
    let pb = s.patient(&dr_b, "Be", "B").await;
    let mut obs = std::collections::HashMap::new();
    for (p, tok) in [(&pa, &dr_a), (&pa2, &dr_a), (&pb, &dr_b)] {
        let r = s.post("/fhir/Observation", tok, observation(p, "8867-4", 70.0)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        obs.insert(p.clone(), r.body["id"].as_str().unwrap().to_owned());
    }

    // Only administrators register apps; bad registrations change nothing.
    let scope = "launch launch/patient openid fhirUser profile offline_access patient/*.rs user/Practitioner.rs";
    let reg = json!({"name": "バイタル表示", "client_id": "vitals", "redirect_uris": [REDIRECT],
        "launch_url": "https://app.example/launch", "scope": scope});
    let r = s.post("/api/v1/apps", &dr_a, reg.clone()).await;
    assert_eq!(r.status, 403, "{}", r.text);
    for (k, v) in [
        ("redirect_uris", json!(["http://evil.example/cb"])),
        ("redirect_uris", json!(["https://app.example/cb#frag"])),
        ("scope", json!("patient/*.rs system/*.rs")),
        ("scope", json!("openid")),
        ("client_id", json!("a b")),
        ("redirect_uris", json!(["https://病院.example/cb"])),
    ] {
        let mut bad = reg.clone();
        bad[k] = v;
        let r = s.post("/api/v1/apps", &s.admin, bad).await;
        assert_eq!(r.status, 400, "{k}: {}", r.text);
    }
    assert_eq!(s.count("SELECT COUNT(*) FROM oauth_clients"), 0);
    let app = register(&s, reg).await;
    assert_eq!(app["client_id"], "vitals");
    assert!(app.get("client_secret").is_none(), "a public app has no secret");
    let r = s
        .post(
            "/api/v1/apps",
            &s.admin,
            json!({"name": "x", "client_id": "vitals", "redirect_uris": [REDIRECT], "scope": "patient/*.rs"}),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);

    // Discovery.
    let r = s.raw(Method::GET, "/fhir/.well-known/smart-configuration", None, None, &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["token_endpoint"], format!("{}/oauth/token", s.base));
    assert_eq!(r.body["code_challenge_methods_supported"], json!(["S256"]));
    let meta = s.get("/fhir/metadata", &dr_a).await;
    assert!(meta.text.contains("oauth-uris") && meta.text.contains("SMART-on-FHIR"));

    // The authorization endpoint: without a session, the login page first.
    let (verifier, challenge) = pkce();
    let url = authorize_url(&s, "vitals", "launch/patient openid patient/*.rs bogus/scope", &challenge, &[]);
    let mut anon = Browser::new(&s);
    let p = anon.get(&url).await;
    let p = anon.get(&p.location()).await;
    assert_eq!(p.status, 303);
    assert!(p.location().starts_with("/ui/login?next=%2Fui%2Fapps%2Fauthorize"), "{}", p.location());

    // The same request as a form (SMART authorize-post) leads to the same
    // screen; a body that cannot go into a header is refused.
    let query = url.split_once('?').unwrap().1.to_owned();
    let post = |body: String| {
        let c = anon.client.clone();
        let to = format!("{}/oauth/authorize", s.base);
        async move {
            c.post(to).header("content-type", "application/x-www-form-urlencoded").body(body).send().await.unwrap()
        }
    };
    let r = post(query.clone()).await;
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"].to_str().unwrap(), format!("/ui/apps/authorize?{query}"));
    assert_eq!(post("scope=患者 x".into()).await.status(), 400);

    // An unregistered redirect URI or app: an error page, nothing sent to it.
    let mut b = browser(&s, "dr.a").await;
    let bad = url.replace(&enc(REDIRECT), &enc("https://evil.example/cb"));
    let p = b.get(&bad).await;
    let p = b.get(&p.location()).await;
    assert_eq!(p.status, 400, "{}", p.text);
    assert!(p.location().is_empty());
    let p = b.get(&url.replace("client_id=vitals", "client_id=nobody")).await;
    let p = b.get(&p.location()).await;
    assert_eq!(p.status, 400);
    // A request without PKCE, or for another server: back to the app with an error.
    let p = b.get(&url.replace("code_challenge_method=S256", "code_challenge_method=plain")).await;
    let p = b.get(&p.location()).await;
    assert_eq!(p.status, 303);
    let qp = query_of(&p.location());
    assert!(p.location().starts_with(REDIRECT));
    assert_eq!((q(&qp, "error"), q(&qp, "state")), (Some("invalid_request"), Some("st-123")));
    let p = b.get(&url.replace(&enc(&format!("{}/fhir", s.base)), &enc("https://other.example/fhir"))).await;
    let p = b.get(&p.location()).await;
    assert_eq!(q(&query_of(&p.location()), "error"), Some("invalid_request"));

    // The consent screen, in Japanese: the app, the scopes, a patient to choose.
    let page = consent_page(&mut b, &url).await;
    assert_eq!(page.status, 200);
    assert!(
        page.text.contains("バイタル表示") && page.text.contains("許可する") && page.text.contains("name=\"patient\"")
    );
    assert!(page.text.contains("bogus/scope"), "what is not granted is shown");
    assert!(page.header("content-security-policy").contains("form-action 'self' https://app.example;"));
    let to = answer(&mut b, &page, "allow", Some(&pa)).await;
    let qp = query_of(&to);
    let code = q(&qp, "code").unwrap().to_owned();
    let grant = s.audits_where("app-authorize").pop().unwrap();
    assert_eq!((grant["status"].as_i64(), grant["patients"].clone()), (Some(200), json!([pa])));
    assert_eq!(grant["detail"]["client_id"], "vitals");

    // A wrong verifier spends the code.
    let (_, other) = pkce();
    let r = exchange(&s, "vitals", &code, &other).await;
    assert_eq!((r.status.as_u16(), r.body["error"].as_str()), (400, Some("invalid_grant")), "{}", r.text);
    let r = exchange(&s, "vitals", &code, &verifier).await;
    assert_eq!(r.body["error"], "invalid_grant", "a code works once");

    // The whole launch; the token is for patient A.
    let tok =
        authorize(&s, &mut b, "vitals", "launch/patient openid profile offline_access patient/*.rs", Some(&pa)).await;
    assert_eq!(tok["patient"], pa.as_str());
    assert_eq!(tok["token_type"], "Bearer");
    assert_eq!(tok["scope"], "launch/patient openid profile offline_access patient/*.rs");
    assert!(tok["refresh_token"].is_string() && tok["id_token"].is_string());
    let at = tok["access_token"].as_str().unwrap().to_owned();
    let issued = s.audits_where("app-token").pop().unwrap();
    assert_eq!(
        (issued["agent"]["user"].as_str(), issued["agent"]["issuer"].as_str()),
        (Some("dr.a"), Some("app:vitals"))
    );

    // What it reaches: patient A's records; not A2, though dr.a may read A2.
    let r = s.get(&format!("/fhir/Observation/{}", obs[&pa]), &at).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ev = s.last_audit();
    assert_eq!((ev["agent"]["issuer"].as_str(), ev["basis"].as_str()), (Some("app:vitals"), Some("care-relationship")));
    let r = s.get(&format!("/fhir/Observation/{}", obs[&pa2]), &dr_a).await;
    assert_eq!(r.status, 200, "dr.a reads A2 in person");
    let r = s.get(&format!("/fhir/Observation/{}", obs[&pa2]), &at).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(s.last_audit()["basis"], "not-in-app-scope");
    let r = s.get(&format!("/fhir/Patient/{pa2}"), &at).await;
    assert_eq!(r.status, 403);
    // A search is a search in A's compartment.
    let r = s.get("/fhir/Observation?code=8867-4", &at).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ids: Vec<&str> =
        r.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [obs[&pa].as_str()]);
    assert_eq!(s.last_audit()["patients"], json!([pa]));
    let r = s.get(&format!("/fhir/Observation?subject=Patient/{pa2}"), &at).await;
    assert_eq!(r.status, 403);
    let r = s.get("/fhir/Patient?family=Ay", &at).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["entry"].as_array().unwrap().len(), 1, "only A: {}", r.text);
    let r = s.get(&format!("/fhir/Patient/{pa}/$everything"), &at).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // No write scope: no write, though dr.a may write.
    let r = s.post("/fhir/Observation", &at, observation(&pa, "8310-5", 36.5)).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Nothing outside the record through an app.
    let r = s.post("/api/v1/break-glass", &at, json!({"patient": pb, "reason": "test", "minutes": 10})).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = s.post("/api/v1/tokens", &at, json!({})).await;
    assert_eq!(r.status, 403, "{}", r.text);

    // The ID token: RS256 by a key the JWKS publishes; who, for whom.
    let id_token = tok["id_token"].as_str().unwrap();
    let parts: Vec<&str> = id_token.split('.').collect();
    let header: Value = serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str(), claims["nonce"].as_str()),
        (Some("dr.a"), Some("vitals"), Some("n-1"))
    );
    assert_eq!(claims["iss"], format!("{}/fhir", s.base));
    assert_eq!(claims["name"], "Test dr.a");
    let jwks = s.raw(Method::GET, "/oauth/jwks", None, None, &[]).await;
    let jwk = jwks.body["keys"].as_array().unwrap().iter().find(|k| k["kid"] == header["kid"]).unwrap().clone();
    let n = openssl::bn::BigNum::from_slice(&B64URL.decode(jwk["n"].as_str().unwrap()).unwrap()).unwrap();
    let e = openssl::bn::BigNum::from_slice(&B64URL.decode(jwk["e"].as_str().unwrap()).unwrap()).unwrap();
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::from_public_components(n, e).unwrap()).unwrap();
    let mut v = openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
    v.update(format!("{}.{}", parts[0], parts[1]).as_bytes()).unwrap();
    assert!(v.verify(&B64URL.decode(parts[2]).unwrap()).unwrap(), "the signature verifies");

    // Refresh: a new pair; the old refresh token again revokes the whole authorization.
    let rt = tok["refresh_token"].as_str().unwrap().to_owned();
    let r = refresh(&s, "vitals", &rt).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let at2 = r.body["access_token"].as_str().unwrap().to_owned();
    assert_ne!(r.body["refresh_token"].as_str().unwrap(), rt);
    assert_eq!(r.body["patient"], pa.as_str());
    assert_eq!(s.get(&format!("/fhir/Observation/{}", obs[&pa]), &at2).await.status, 200);
    let r = refresh(&s, "vitals", &rt).await;
    assert_eq!(r.body["error"], "invalid_grant", "{}", r.text);
    for t in [&at, &at2] {
        assert_eq!(s.get(&format!("/fhir/Observation/{}", obs[&pa]), t).await.status, 401, "revoked with its family");
    }
    let refused = s.audits_where("app-token").pop().unwrap();
    assert_eq!(refused["status"], 400);
    assert!(refused["detail"]["revoked"].as_i64().unwrap() >= 2, "{refused}");

    // A replayed code revokes what its first use issued.
    let (verifier, challenge) = pkce();
    let page = consent_page(&mut b, &authorize_url(&s, "vitals", "launch/patient patient/*.rs", &challenge, &[])).await;
    let to = answer(&mut b, &page, "allow", Some(&pa)).await;
    let code = q(&query_of(&to), "code").unwrap().to_owned();
    let r = exchange(&s, "vitals", &code, &verifier).await;
    let at3 = r.body["access_token"].as_str().unwrap().to_owned();
    assert!(r.body.get("refresh_token").is_none(), "no refresh without offline_access or online_access");
    assert_eq!(s.get(&format!("/fhir/Observation/{}", obs[&pa]), &at3).await.status, 200);
    let r = exchange(&s, "vitals", &code, &verifier).await;
    assert_eq!(r.body["error"], "invalid_grant");
    assert_eq!(s.get(&format!("/fhir/Observation/{}", obs[&pa]), &at3).await.status, 401);

    // A user's patient app cannot open another physician's patient's records.
    let tok = authorize(&s, &mut b, "vitals", "launch/patient patient/*.rs", Some(&pb)).await;
    let atb = tok["access_token"].as_str().unwrap();
    let r = s.get(&format!("/fhir/Observation/{}", obs[&pb]), atb).await;
    assert_eq!(r.status, 403);
    assert_eq!(s.last_audit()["basis"], "no-care-relationship", "the user's own rule decides first");

    // A password change ends the apps' access too, refresh tokens included.
    let tok = authorize(&s, &mut b, "vitals", "launch/patient offline_access patient/*.rs", Some(&pa)).await;
    let rt = tok["refresh_token"].as_str().unwrap().to_owned();
    let r = s.post("/api/v1/auth/password", &dr_a, json!({"current": PASSWORD, "new": "Another horse 43!"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get(&format!("/fhir/Patient/{pa}"), tok["access_token"].as_str().unwrap()).await.status, 401);
    let r = refresh(&s, "vitals", &rt).await;
    assert_eq!(r.body["error"], "invalid_grant", "{}", r.text);

    // (It ended the browser's session as well.)
    let p = b.get("/ui/apps").await;
    assert_eq!(p.status, 303);
    let mut b = Browser::new(&s);
    assert_eq!(b.login("dr.a", "Another horse 43!").await.status, 303);

    // Declining: the app is told access_denied, and nothing is issued.
    let (_, challenge) = pkce();
    let page = consent_page(&mut b, &authorize_url(&s, "vitals", "patient/*.rs", &challenge, &[])).await;
    let to = answer(&mut b, &page, "deny", None).await;
    assert_eq!(q(&query_of(&to), "error"), Some("access_denied"));
    assert_eq!(s.audits_where("app-authorize").pop().unwrap()["status"], 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ehr_launch_introspection_and_disabling_an_app() {
    let s = TestServer::start("smart-launch").await;
    let dr_a = s.user("dr.a", &["physician"]).await;
    let pa = s.patient(&dr_a, "Ay", "A").await;
    let pa2 = s.patient(&dr_a, "Ay", "Two").await;
    register(
        &s,
        json!({"name": "Chart app", "client_id": "chart", "redirect_uris": [REDIRECT],
        "launch_url": "https://app.example/launch", "scope": "launch openid fhirUser user/*.rs patient/*.rs"}),
    )
    .await;
    let rs = register(
        &s,
        json!({"name": "Resource server", "client_id": "rs-1", "confidential": true,
        "redirect_uris": ["https://rs.example/cb"], "scope": "user/*.rs"}),
    )
    .await;
    let secret = rs["client_secret"].as_str().unwrap().to_owned();

    // The chart launches the app for A2: a one-time launch id.
    let r = s.post("/api/v1/apps/chart/launch", &dr_a, json!({"patient": pa2})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let url = r.body["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("https://app.example/launch?iss="), "{url}");
    let lp = query_of(&url);
    assert_eq!(q(&lp, "iss"), Some(format!("{}/fhir", s.base).as_str()));
    let launch = q(&lp, "launch").unwrap().to_owned();
    assert_eq!(s.audits_where("app-launch").pop().unwrap()["patients"], json!([pa2]));
    let r = s.post("/api/v1/apps/nobody/launch", &dr_a, json!({"patient": pa2})).await;
    assert_eq!(r.status, 404);

    // The launch gives the patient: the consent screen asks for none.
    let mut b = browser(&s, "dr.a").await;
    let (verifier, challenge) = pkce();
    let auth = authorize_url(&s, "chart", "launch openid fhirUser patient/*.rs", &challenge, &[("launch", &launch)]);
    b.lang = "en";
    let page = consent_page(&mut b, &auth).await;
    assert!(page.text.contains(&format!("patient {pa2}")) && !page.text.contains("name=\"patient\""), "{}", page.text);
    assert!(page.text.contains("all records of the chosen patient (read, search)") && page.text.contains("Allow"));
    let to = answer(&mut b, &page, "allow", None).await;
    let r = exchange(&s, "chart", q(&query_of(&to), "code").unwrap(), &verifier).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["patient"], pa2.as_str());
    // No resource stands for dr.a: fhirUser is not granted, and the token says so.
    assert_eq!(r.body["scope"], "launch openid patient/*.rs");
    let at = r.body["access_token"].as_str().unwrap().to_owned();
    // A launch works once.
    let (_, challenge) = pkce();
    let p = b.get(&authorize_url(&s, "chart", "launch patient/*.rs", &challenge, &[("launch", &launch)])).await;
    let p = b.get(&p.location()).await;
    assert_eq!(q(&query_of(&p.location()), "error"), Some("invalid_request"));

    // Introspection: confidential clients only; an app's tokens only.
    let body = format!("token={}", enc(&at));
    let r = form_post(&s, "/oauth/introspect", &body, Some(("rs-1", &secret))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!((r.body["active"].as_bool(), r.body["client_id"].as_str()), (Some(true), Some("chart")));
    assert_eq!((r.body["patient"].as_str(), r.body["username"].as_str()), (Some(pa2.as_str()), Some("dr.a")));
    let r = form_post(&s, "/oauth/introspect", &body, Some(("rs-1", "wrong"))).await;
    assert_eq!(r.status, 401, "{}", r.text);
    let r = form_post(&s, "/oauth/introspect", &format!("token={}&client_id=chart", enc(&at)), None).await;
    assert_eq!(r.status, 401, "a public client does not introspect");
    let r = form_post(&s, "/oauth/introspect", &format!("token={}", enc(&dr_a)), Some(("rs-1", &secret))).await;
    assert_eq!(r.body, json!({"active": false}), "a person's own session is not an app's token");
    let r = s.raw(Method::POST, "/oauth/token", None, Some(("{}".into(), "application/json")), &[]).await;
    assert_eq!((r.status.as_u16(), r.body["error"].as_str()), (400, Some("invalid_request")));
    let r = form_post(&s, "/oauth/token", "grant_type=password&username=dr.a&password=x&client_id=chart", None).await;
    assert_eq!(r.body["error"], "unsupported_grant_type");

    // The app reads A2 (and A, through user/*.rs: dr.a's own rights).
    assert_eq!(s.get(&format!("/fhir/Patient/{pa2}"), &at).await.status, 200);
    // (The token holds patient/*.rs only: its user scopes were not asked for.)
    assert_eq!(s.get(&format!("/fhir/Patient/{pa}"), &at).await.status, 403);

    // Disabling the app revokes its tokens at once.
    let r = s.post("/api/v1/apps/chart/disable", &dr_a, json!({})).await;
    assert_eq!(r.status, 403);
    let r = s.post("/api/v1/apps/chart/disable", &s.admin, json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.get(&format!("/fhir/Patient/{pa2}"), &at).await.status, 401);
    let r = form_post(&s, "/oauth/introspect", &body, Some(("rs-1", &secret))).await;
    assert_eq!(r.body["active"], false);
    let (_, challenge) = pkce();
    let p = b.get(&authorize_url(&s, "chart", "patient/*.rs", &challenge, &[])).await;
    let p = b.get(&p.location()).await;
    assert_eq!(p.status, 400, "a disabled app is not offered to users");
}

/// An ES384 key pair and its public JWK.
fn backend_key(kid: &str) -> (ring::signature::EcdsaKeyPair, Value) {
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let pt = kp.public_key().as_ref().to_vec();
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
        "x": B64URL.encode(&pt[1..49]), "y": B64URL.encode(&pt[49..])});
    (kp, jwk)
}

/// A compact JWS of `claims` signed with `kp` (ES384).
fn assertion(kp: &ring::signature::EcdsaKeyPair, header: Value, claims: Value) -> String {
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    let sig = kp.sign(&ring::rand::SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", B64URL.encode(sig.as_ref()))
}

async fn client_credentials(s: &TestServer, jws: &str, scope: &str) -> common::Resp {
    let body = format!(
        "grant_type=client_credentials&scope={}&client_assertion_type={}&client_assertion={}",
        enc(scope),
        enc("urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        enc(jws)
    );
    form_post(s, "/oauth/token", &body, None).await
}

/// SMART Backend Services: a backend client registered with its public
/// key and a service account gets a token by signing an assertion
/// (client_credentials, private_key_jwt); the token does what the service
/// account may, narrowed by the system/ scopes granted, including a Bulk
/// Data export. A replayed, expired, misaddressed or wrongly signed
/// assertion gets nothing, and every attempt is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_service_signs_its_way_to_a_token_and_an_export() {
    let s = TestServer::start("smart-backend").await;
    let dr = s.user("dr.backend", &["physician"]).await;
    let pid = s.patient(&dr, "後端", "太郎").await;
    let r = s
        .post(
            "/api/v1/users",
            &s.admin,
            json!({"name": "svc.platform", "display": "地域連携基盤", "roles": ["clerk"], "kind": "service"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let (kp, jwk) = backend_key("k1");
    // Registration: the keys and the service account, nothing of a
    // user-facing app; refused otherwise.
    let app = |extra: Value| {
        let mut b = json!({"client_id": "platform", "name": "地域医療連携基盤", "redirect_uris": [],
            "scope": "system/Patient.rs system/Observation.rs", "jwks": {"keys": [jwk.clone()]},
            "service_account": "svc.platform"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (bad, why) in [
        (app(json!({"service_account": "dr.backend"})), "not a service account"),
        (app(json!({"service_account": "nobody"})), "no account"),
        (app(json!({"scope": "user/*.rs"})), "system/ scopes only"),
        (app(json!({"redirect_uris": [REDIRECT]})), "no redirect URIs"),
        (
            app(json!({"jwks": {"keys": [{"kty": "EC", "crv": "P-384", "x": jwk["x"], "y": jwk["y"], "d": "AAAA"}]}})),
            "private key",
        ),
        (json!({"name": "x", "redirect_uris": [REDIRECT], "scope": "system/*.rs"}), "for backend clients"),
    ] {
        let r = s.post("/api/v1/apps", &s.admin, bad.clone()).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
        assert!(r.text.contains(why), "{bad}: {}", r.text);
    }
    register(&s, app(json!({}))).await;
    let conf = s.req(Method::GET, "/fhir/.well-known/smart-configuration", None, None).await;
    assert!(
        conf.body["grant_types_supported"].as_array().unwrap().contains(&json!("client_credentials")),
        "{}",
        conf.text
    );
    assert!(conf.body["token_endpoint_auth_methods_supported"].as_array().unwrap().contains(&json!("private_key_jwt")));

    let aud = format!("{}/oauth/token", s.base);
    let now = s.now().micros() / 1_000_000;
    let claims = |jti: &str| json!({"iss": "platform", "sub": "platform", "aud": aud, "exp": now + 240, "jti": jti});
    let header = json!({"alg": "ES384", "kid": "k1", "typ": "JWT"});
    let good = assertion(&kp, header.clone(), claims("jti-1"));
    let r = client_credentials(&s, &good, "system/Patient.rs system/Observation.rs system/Condition.rs").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["scope"], "system/Patient.rs system/Observation.rs", "only what is registered");
    assert!(r.body.get("refresh_token").is_none());
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    let ev = s.last_audit();
    assert_eq!(
        (ev["action"].as_str(), ev["agent"]["user"].as_str()),
        (Some("app-token"), Some("svc.platform")),
        "{ev}"
    );
    assert_eq!(ev["detail"]["grant_type"], "client_credentials", "{ev}");

    // Refused assertions: 401 invalid_client, each audited with why.
    let (other_kp, _) = backend_key("k1");
    let mut late = claims("jti-3");
    late["exp"] = json!(now + 3600);
    let mut elsewhere = claims("jti-4");
    elsewhere["aud"] = json!("https://elsewhere.example/token");
    let mut not_sub = claims("jti-5");
    not_sub["sub"] = json!("someone");
    let none = format!(
        "{}.{}.",
        B64URL.encode(json!({"alg": "none"}).to_string()),
        B64URL.encode(claims("jti-6").to_string())
    );
    for (jws, why) in [
        (good.clone(), "used before"),
        (assertion(&other_kp, header.clone(), claims("jti-2")), "does not verify"),
        (assertion(&kp, header.clone(), late), "exp must be"),
        (assertion(&kp, header.clone(), elsewhere), "aud must be"),
        (assertion(&kp, header.clone(), not_sub), "sub must equal iss"),
        (assertion(&kp, json!({"alg": "ES384", "kid": "k2"}), claims("jti-7")), "kid 'k2'"),
        (none, "not accepted"),
    ] {
        let before = s.audit_count();
        let r = client_credentials(&s, &jws, "system/Patient.rs").await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert_eq!(r.body["error"], "invalid_client", "{why}");
        assert_eq!(s.audit_count(), before + 1, "{why}");
        let ev = s.last_audit();
        assert!(ev["detail"]["reason"].as_str().unwrap_or("").contains(why), "{why}: {ev}");
    }
    let r = client_credentials(&s, &assertion(&kp, header.clone(), claims("jti-8")), "system/Condition.rs").await;
    assert_eq!((r.status.as_u16(), r.body["error"].as_str()), (400, Some("invalid_scope")), "{}", r.text);
    // A backend client cannot use the flows of a user-facing app.
    let r = form_post(&s, "/oauth/token", "grant_type=refresh_token&refresh_token=x&client_id=platform", None).await;
    assert_eq!(r.status, 401, "{}", r.text);

    // The token: the service account's rights (a clerk: demographics),
    // narrowed by the scopes; no administration.
    assert_eq!(s.get(&format!("/fhir/Patient/{pid}"), &token).await.status, 200);
    assert_eq!(s.get(&format!("/fhir/Condition?subject=Patient/{pid}"), &token).await.status, 403, "not in scope");
    assert_eq!(s.get("/api/v1/users", &token).await.status, 403);
    // A Bulk Data export with it, kicked off, polled and fetched.
    let r = s.raw(Method::GET, "/fhir/$export?_type=Patient", Some(&token), None, &[("prefer", "respond-async")]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let status = r.header("content-location").unwrap().trim_start_matches(&s.base).to_owned();
    let mut manifest = Value::Null;
    for _ in 0..300 {
        let r = s.get(&status, &token).await;
        if r.status == 200 {
            manifest = r.body;
            break;
        }
        assert_eq!(r.status, 202, "{}", r.text);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let out = manifest["output"].as_array().unwrap();
    assert_eq!(out.len(), 1, "{manifest}");
    let url = out[0]["url"].as_str().unwrap().trim_start_matches(&s.base).to_owned();
    let r = s.raw(Method::GET, &url, Some(&token), None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains(&pid), "{}", r.text);
    // A scope without that type: the export of it is refused at the type.
    let r = client_credentials(&s, &assertion(&kp, header, claims("jti-9")), "system/Observation.rs").await;
    let obs_only = r.body["access_token"].as_str().unwrap().to_owned();
    let r =
        s.raw(Method::GET, "/fhir/$export?_type=Patient", Some(&obs_only), None, &[("prefer", "respond-async")]).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let status = r.header("content-location").unwrap().trim_start_matches(&s.base).to_owned();
    for _ in 0..300 {
        let r = s.get(&status, &obs_only).await;
        if r.status == 200 {
            manifest = r.body;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(manifest["output"].as_array().unwrap().iter().all(|o| o["type"] != "Patient"), "{manifest}");

    // Key rotation: the new key works, the old one no longer does; a bad
    // set or a client that is not a backend one is refused.
    let (new_kp, new_jwk) = backend_key("k2");
    let r = s.post("/api/v1/apps/platform/keys", &s.admin, json!({"jwks": {"keys": [new_jwk.clone()]}})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["keys"], json!(["k2"]));
    assert_eq!(s.last_audit()["detail"]["keys_before"], json!(["k1"]));
    let old = assertion(&kp, json!({"alg": "ES384", "kid": "k1"}), claims("jti-10"));
    assert_eq!(client_credentials(&s, &old, "system/Patient.rs").await.status, 401);
    let new = assertion(&new_kp, json!({"alg": "ES384", "kid": "k2"}), claims("jti-11"));
    assert_eq!(client_credentials(&s, &new, "system/Patient.rs").await.status, 200);
    let r = s.post("/api/v1/apps/platform/keys", &s.admin, json!({"jwks": {"keys": []}})).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.post("/api/v1/apps/nobody/keys", &s.admin, json!({"jwks": {"keys": [new_jwk.clone()]}})).await;
    assert_eq!(r.status, 404, "{}", r.text);
    let r = s.post("/api/v1/apps/platform/keys", &dr, json!({"jwks": {"keys": [new_jwk]}})).await;
    assert_eq!(r.status, 403, "{}", r.text);
}
