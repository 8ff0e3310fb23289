//! Exchange with partner institutions (guideline 6.10) over real AS2:
//! two mamori nodes on loopback with mutual TLS and signed receipts, the
//! legal basis of a send, and attacks on the AS2 endpoint.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use mamori_core::time::{Clock, ManualClock, SystemClock};
use mamori_exchange::as2::{self, Disposition, MdnRequest};
use mamori_exchange::client::{self, ClientIdentity};
use mamori_exchange::cms::{ContentCipher, Identity, KeyTransport};
use openssl::x509::X509;
use reqwest::Method;
use serde_json::{json, Value};

const AS2_CFG: &str =
    "[exchange]\nlisten = \"127.0.0.1:0\"\nretry_initial_seconds = 1\nretry_max_seconds = 2\nmax_attempts = 3\n";

async fn node(tag: &str, as2_id: &str, extra: &str) -> TestServer {
    TestServer::start_cfg(tag, &format!("{AS2_CFG}as2_id = \"{as2_id}\"\n{extra}"), None).await
}

fn terms() -> Value {
    json!({
        "sender_side": "送信側機器の障害は送信元病院の情報システム部が対応 / sender's IT department",
        "path": "インターネット区間は各自の回線契約 / each party's own carrier",
        "recipient_side": "受信側機器の障害は受信側が対応 / recipient's IT department",
        "fault_isolation": "双方の連絡窓口が協議して切り分け / both contacts isolate jointly",
        "stopping": "いずれの当事者も書面連絡で停止できる / either party may stop on written notice",
        "patient_enquiries": "各施設の患者相談窓口 / each institution's patient desk",
        "operations_contact": "03-0000-0000"
    })
}

#[allow(clippy::too_many_arguments)]
fn partner_doc(
    id: &str,
    as2_id: &str,
    endpoint: &str,
    signing: &str,
    tls_ca: &str,
    relationship: &str,
    purposes: &[&str],
) -> Value {
    json!({
        "id": id, "name": format!("Partner {id}"), "as2_id": as2_id, "endpoint": endpoint,
        "relationship": relationship,
        "contract": {"reference": format!("C-2026-{id}")},
        "demarcation": terms(),
        "network": {"kind": "internet_tls", "secured_by": "institution"},
        "purposes": purposes,
        "certificates": {"signing": signing, "encryption": signing, "tls_ca": tls_ca}
    })
}

/// Registers `other` at `at` as partner `id`.
async fn register(at: &TestServer, other: &TestServer, id: &str, relationship: &str, purposes: &[&str]) -> Value {
    let ident = other.get("/api/v1/exchange/identity", &other.admin).await;
    assert_eq!(ident.status, 200, "{}", ident.text);
    let b = &ident.body;
    let doc = partner_doc(
        id,
        b["as2_id"].as_str().unwrap(),
        b["endpoint"].as_str().unwrap(),
        b["certificates"]["signing"].as_str().unwrap(),
        b["certificates"]["tls_ca"].as_str().unwrap(),
        relationship,
        purposes,
    );
    let r = at.post("/api/v1/partners", &at.admin, doc.clone()).await;
    assert_eq!(r.status, 201, "{}", r.text);
    doc
}

async fn wait_for<F, Fut>(what: &str, mut f: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    for _ in 0..300 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn message_state(s: &TestServer, id: &str, want: &str) -> Value {
    wait_for(&format!("message {id} to be {want}"), || async {
        let r = s.get(&format!("/api/v1/exchange/messages/{id}"), &s.admin).await;
        assert_eq!(r.status, 200, "{}", r.text);
        (r.body["state"] == want).then_some(r.body)
    })
    .await
}

/// A physician with a patient (with a shared identifier) and an observation.
async fn chart(s: &TestServer, doc: &str) -> (String, String, String) {
    let tok = s.user(doc, &["physician"]).await;
    let r = s
        .post(
            "/fhir/Patient",
            &tok,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.392.200119.6.102", "value": "06-1234-5678"}],
                   "name": [{"family": "山田", "given": ["花子"]}], "gender": "female", "birthDate": "1960-04-01"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let p = r.body["id"].as_str().unwrap().to_owned();
    s.assign(&p, doc).await;
    let r = s.post("/fhir/Observation", &tok, observation(&p, "8867-4", 72.0)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    (tok, p, r.body["id"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_a_referral_with_signed_receipts() {
    let a = node("xa", "HOSP-A", "").await;
    let b = node("xb", "CLINIC-B", "").await;
    register(&a, &b, "1310000002", "third_party", &["referral", "consultation"]).await;
    register(&b, &a, "1310000001", "third_party", &["referral_reply", "consultation"]).await;
    let (doc, pa, obs) = chart(&a, "dr-a").await;
    // The same patient is known at B (same insurance identifier).
    let clerk_b = b.user("clerk-b", &["clerk"]).await;
    let r = b
        .post(
            "/fhir/Patient",
            &clerk_b,
            json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.392.200119.6.102", "value": "06-1234-5678"}],
                   "name": [{"family": "山田", "given": ["花子"]}], "gender": "female", "birthDate": "1960-04-01"}),
        )
        .await;
    let pb = r.body["id"].as_str().unwrap().to_owned();

    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral",
                   "documents": [format!("Observation/{obs}")], "note": "心房細動の精査をお願いします。"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["messages"][0]["basis"]["kind"], "implied_consent");
    let m = message_state(&a, &mid, "delivered").await;
    let hops: Vec<&str> = m["hops"].as_array().unwrap().iter().map(|h| h["hop"].as_str().unwrap()).collect();
    assert_eq!(
        hops,
        [
            "accepted",
            "signed",
            "encrypted",
            "handed_to_network",
            "mdn_received",
            "mdn_verified",
            "responsibility_transferred"
        ]
    );
    assert_eq!(m["partner_terms"]["demarcation"]["path"], terms()["path"]);
    assert_eq!(m["mdn"], "processed");

    // B's ledger has the same message with the same MIC.
    let r = b.get("/api/v1/exchange/messages?direction=in", &b.admin).await;
    let ins = r.body["messages"].as_array().unwrap();
    assert_eq!(ins.len(), 1, "{}", r.text);
    assert_eq!(ins[0]["message_id"], m["message_id"]);
    assert_eq!(ins[0]["mic"], m["mic"]);
    assert_eq!(ins[0]["state"], "stored");
    assert_eq!(ins[0]["partner"], "1310000001");
    let r = b.get(&format!("/api/v1/exchange/messages/{}", ins[0]["id"].as_str().unwrap()), &b.admin).await;
    let bh: Vec<&str> = r.body["hops"].as_array().unwrap().iter().map(|h| h["hop"].as_str().unwrap()).collect();
    assert_eq!(bh, ["received", "decrypted", "verified", "stored", "mdn_issued"]);

    // Filed into B's patient by identifier, as a DocumentReference holding the signed Bundle.
    let drs =
        b.count(&format!("SELECT COUNT(*) FROM resources WHERE rtype = 'DocumentReference' AND patient = '{pb}'"));
    assert_eq!(drs, 1);
    let body = b.text(
        "SELECT v.body FROM resources r JOIN resource_versions v ON v.seq = r.seq WHERE r.rtype = 'DocumentReference'",
        &[],
    );
    let dr: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dr["author"][0]["reference"], "Organization/partner-1310000001");
    use base64::Engine as _;
    let bundle: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(dr["content"][0]["attachment"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(bundle["type"], "document");
    assert_eq!(bundle["entry"][0]["resource"]["resourceType"], "Composition");
    assert!(bundle.to_string().contains("心房細動"));
    assert!(bundle["entry"].as_array().unwrap().iter().any(|e| e["resource"]["resourceType"] == "Observation"));

    // Both audit trails show it.
    let sent = a.audits_where("exchange-send");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["patients"], json!([pa]));
    // The decision to let the data leave is the read of it (the sender's
    // care relationship); the legal basis for the recipient is recorded too.
    assert_eq!(sent[0]["basis"], "care-relationship");
    assert_eq!(sent[0]["detail"]["legal_basis"], "implied_consent");
    assert_eq!(a.audits_where("exchange-delivered").len(), 1);
    let got = b.audits_where("exchange-receive");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["status"], 200);
    assert_eq!(got[0]["patients"], json!([pb]));

    // The registry is mirrored read-only in FHIR.
    let r = a.get("/fhir/Organization/partner-1310000002", &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["name"], "Partner 1310000002");
    let r = a.get("/fhir/Endpoint/partner-1310000002", &doc).await;
    assert_eq!(r.body["connectionType"]["code"], "as2");
    let r = a
        .put(
            "/fhir/Organization/partner-1310000002",
            &a.admin,
            json!({"resourceType": "Organization", "id": "partner-1310000002", "name": "x"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    // A conditional update that finds the mirror is held to the same rule.
    let r = a
        .put(
            "/fhir/Organization?_id=partner-1310000002",
            &a.admin,
            json!({"resourceType": "Organization", "id": "partner-1310000002", "name": "x"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(r.text.contains("mirrors the partner registry"), "{}", r.text);

    // The ledger export for contract reviews.
    let r = a.raw(Method::GET, "/api/v1/exchange/ledger?format=csv", Some(&a.admin), None, &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("C-2026-1310000002") && r.text.contains("responsibility_transferred"), "{}", r.text);
    let r = a.get("/api/v1/exchange/ledger", &doc).await;
    assert_eq!(r.status, 403);

    // And a reply back, with an asynchronous receipt this time.
    let r = b.get("/api/v1/partners/1310000001", &b.admin).await;
    let mut reg = r.body["registration"].clone();
    reg["profile"] = json!({"mdn": "async", "cipher": "aes-256-gcm", "key_transport": "rsa-oaep-sha256"});
    let r = b
        .raw(
            Method::PUT,
            "/api/v1/partners/1310000001",
            Some(&b.admin),
            Some((reg.to_string(), "application/json")),
            &[("if-match", "W/\"1\"")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let dr_b = b.user("dr-b", &["physician"]).await;
    b.assign(&pb, "dr-b").await;
    // Staff name the patient by the record number they see; an unknown
    // number is an explicit 404 and nothing is queued.
    let before = b.count("SELECT COUNT(*) FROM exchange_messages");
    let r = b
        .post(
            "/api/v1/exchange/messages",
            &dr_b,
            json!({"patient": "06-9999-9999", "recipients": ["1310000001"], "purpose": "referral_reply", "note": "x"}),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("no patient has the id or medical record number"), "{}", r.text);
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_messages"), before);
    let r = b
        .post("/api/v1/exchange/messages", &dr_b, json!({"patient": "06-1234-5678", "recipients": ["1310000001"], "purpose": "referral_reply", "note": "ご紹介ありがとうございました。"}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let sent = b.audits_where("exchange-send");
    assert_eq!(sent.last().unwrap()["patients"], json!([pb]), "sent and audited as the patient the number names");
    let rid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&b, &rid, "delivered").await;
    let hops: Vec<&str> = m["hops"].as_array().unwrap().iter().map(|h| h["hop"].as_str().unwrap()).collect();
    assert!(hops.contains(&"accepted_by_partner") && hops.contains(&"responsibility_transferred"), "{hops:?}");
    assert_eq!(m["algorithms"]["cipher"], "aes-256-gcm");
    // A's async receipt went out through its outbox.
    wait_for("A's asynchronous MDN to be delivered", || async {
        let r = a.get("/api/v1/exchange/messages?direction=out", &a.admin).await;
        r.body["messages"].as_array().unwrap().iter().find(|m| m["kind"] == "mdn" && m["state"] == "delivered").cloned()
    })
    .await;
}

/// Two servers of one institution on PostgreSQL (always PostgreSQL): a
/// partner registered on one is trusted by the other's AS2 listener, and
/// the outbox, run by the leader only, delivers each message once whichever
/// server accepted the send.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_deliver_each_message_once() {
    let base = pg_base().unwrap_or_else(|| {
        std::env::var("MAMORI_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    });
    let (url, schema) = pg_schema(&base, "xcluster");
    let dir1 = temp_dir("xc-a1");
    std::fs::create_dir_all(&dir1).unwrap();
    std::fs::write(
        dir1.join("mamori.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n{AS2_CFG}as2_id = \"HOSP-A\"\n"),
    )
    .unwrap();
    let a1 = TestServer::boot(dir1.clone(), None).await;
    let dir2 = temp_dir("xc-a2");
    copy_dir(&dir1, &dir2);
    let mut a2 = TestServer::boot(dir2, None).await;
    a2.pg = None;
    let b = node("xc-b", "CLINIC-B", "").await;

    // Registered on A1; B knows A by A2's endpoint, so B's sends arrive at
    // A2, whose listener must trust B from the notice alone.
    register(&a1, &b, "1310000002", "third_party", &["referral", "consultation"]).await;
    register(&b, &a2, "1310000001", "third_party", &["referral_reply", "consultation"]).await;
    let (doc_b, pb, obs_b) = chart(&b, "dr-b").await;
    let r = b
        .post(
            "/api/v1/exchange/messages",
            &doc_b,
            json!({"patient": pb, "recipients": ["1310000001"], "purpose": "consultation",
                   "documents": [format!("Observation/{obs_b}")]}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    message_state(&b, &mid, "delivered").await;

    // Sends accepted by either server, delivered once each.
    let (doc_a, pa, obs) = chart(&a1, "dr-a").await;
    let mut ids = Vec::new();
    for i in 0..4 {
        let s = if i % 2 == 0 { &a1 } else { &a2 };
        let r = s
            .post(
                "/api/v1/exchange/messages",
                &doc_a,
                json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral",
                       "documents": [format!("Observation/{obs}")], "note": format!("referral {i}")}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
        ids.push(r.body["messages"][0]["id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        let m = message_state(&a2, id, "delivered").await;
        let handed = m["hops"].as_array().unwrap().iter().filter(|h| h["hop"] == "handed_to_network").count();
        assert_eq!(handed, 1, "sent once: {m}");
    }
    // Let any second sender show itself, then count at B.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let r = b.get("/api/v1/exchange/messages?direction=in", &b.admin).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["messages"].as_array().unwrap().len(), 4, "{}", r.text);
    let q = b.get("/api/v1/exchange/quarantine", &b.admin).await;
    assert_eq!(q.status, 200, "{}", q.text);
    assert_eq!(q.body["quarantine"].as_array().unwrap().len(), 0, "{}", q.text);
    drop(a2);
    drop(a1);
    drop_pg_schema(&base, &schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_needs_identified_recipients_and_a_legal_basis() {
    let a = node("xl", "HOSP-A", "").await;
    let b = node("xm", "CLINIC-B", "").await;
    register(&a, &b, "1310000002", "third_party", &["referral", "research"]).await;
    let (doc, pa, obs) = chart(&a, "dr-a").await;
    let before = a.count("SELECT COUNT(*) FROM exchange_messages");
    let send = |recipients: Value, purpose: &str, extra: Value| {
        let mut body = json!({"patient": pa, "recipients": recipients, "purpose": purpose, "documents": [format!("Observation/{obs}")]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    // One unknown recipient refuses the whole send (EX-B1d).
    let r = a
        .post("/api/v1/exchange/messages", &doc, send(json!(["1310000002", "9999999999"]), "referral", json!({})))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("9999999999") && r.text.contains("not an identified partner"), "{}", r.text);
    // Research is third-party provision without implied consent.
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!(["1310000002"]), "research", json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("explicit consent"), "{}", r.text);
    // A purpose the contract does not cover.
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!(["1310000002"]), "claims", json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    // Protection of life outside an emergency.
    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            send(
                json!(["1310000002"]),
                "referral",
                json!({"basis": "protection_of_life", "justification": "unconscious, transferred for surgery"}),
            ),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // Another patient's data in the document.
    let (_, _, oobs) = chart(&a, "dr-o").await;
    let r = a
        .post("/api/v1/exchange/messages", &doc, json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral", "documents": [format!("Observation/{oobs}")]}))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    // No access to the patient.
    let nurse = a.user("nurse-x", &["nurse"]).await;
    let r = a.post("/api/v1/exchange/messages", &nurse, send(json!(["1310000002"]), "referral", json!({}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // Malformed requests.
    for bad in [
        json!({"patient": pa}),
        json!({"patient": pa, "recipients": [], "purpose": "referral", "note": "x"}),
        json!({"patient": pa, "recipients": ["1310000002"], "purpose": "gossip", "note": "x"}),
    ] {
        let r = a.post("/api/v1/exchange/messages", &doc, bad).await;
        assert_eq!(r.status, 400, "{}", r.text);
    }
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages"), before, "refusals change nothing");
    assert!(a.audits_where("exchange-send").iter().all(|e| e["status"] != 202));

    // The patient's explicit consent makes research possible...
    let consent = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pa}")},
        "provision": {"type": "permit", "actor": [{"role": {"text": "recipient"}, "reference": {"reference": "Organization/partner-1310000002"}}],
                      "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}});
    let r = a.post("/fhir/Consent", &doc, consent).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!(["1310000002"]), "research", json!({}))).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["messages"][0]["basis"]["kind"], "explicit_consent");
    // ...and an objection stops even a referral.
    let deny = json!({"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pa}")},
        "provision": {"type": "deny", "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}});
    let r = a.post("/fhir/Consent", &doc, deny).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!(["1310000002"]), "referral", json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("objected"), "{}", r.text);

    // A suspended partner receives nothing.
    let r = a.post("/api/v1/partners/1310000002/suspend", &a.admin, json!({"reason": "contract under review"})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!(["1310000002"]), "research", json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("suspended"), "{}", r.text);
    // Only admins manage the registry; bad registrations are refused.
    let r = a.post("/api/v1/partners/1310000002/activate", &doc, json!({"reason": "contract renewed"})).await;
    assert_eq!(r.status, 403);
    let mut bad = partner_doc("bad id!", "A B", "http://x", "not a cert", "", "third_party", &[]);
    bad["demarcation"]["path"] = json!("");
    let r = a.post("/api/v1/partners", &a.admin, bad).await;
    assert_eq!(r.status, 422, "{}", r.text);
    for want in ["id:", "as2_id", "endpoint", "demarcation.path", "purposes", "certificates.signing"] {
        assert!(r.text.contains(want), "{want}: {}", r.text);
    }
}

/// A third institution's material, made like mamori makes its own.
struct Outsider {
    id: Identity,
    cert_pem: String,
    ca_pem: String,
    tls: ClientIdentity,
}

fn outsider(name: &str) -> Outsider {
    use mamori_server::keys;
    let (ca, ca_key) = keys::exchange_ca(name, 30).unwrap();
    let (tls, tls_key) = keys::exchange_tls(ca.as_bytes(), ca_key.as_bytes(), name, &["localhost".into()], 30).unwrap();
    let (cert, key) = keys::institution_identity(name, 30).unwrap();
    let certs = rustls_pemfile::certs(&mut tls.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let tkey = rustls_pemfile::private_key(&mut tls_key.as_bytes()).unwrap().unwrap();
    Outsider {
        id: Identity::from_pem(cert.as_bytes(), key.as_bytes()).unwrap(),
        cert_pem: cert,
        ca_pem: ca,
        tls: ClientIdentity { certs, key: tkey },
    }
}

struct Target {
    url: String,
    as2_id: String,
    cert: X509,
    ca_pem: String,
}

async fn target(b: &TestServer) -> Target {
    let r = b.get("/api/v1/exchange/identity", &b.admin).await;
    Target {
        url: r.body["endpoint"].as_str().unwrap().to_owned(),
        as2_id: r.body["as2_id"].as_str().unwrap().to_owned(),
        cert: X509::from_pem(r.body["certificates"]["encryption"].as_str().unwrap().as_bytes()).unwrap(),
        ca_pem: r.body["certificates"]["tls_ca"].as_str().unwrap().to_owned(),
    }
}

fn message(from: &str, signer: &Identity, t: &Target, mid: &str, payload: &[u8]) -> as2::Outgoing {
    let signed = as2::sign_payload(signer, "application/fhir+json", "d.json", payload).unwrap();
    as2::envelope(
        from,
        &t.as2_id,
        mid,
        "test",
        "now",
        &signed,
        &t.cert,
        &ContentCipher::Aes256Cbc,
        &KeyTransport::RsaPkcs1,
        &MdnRequest { notify_to: from.into(), async_url: None },
    )
    .unwrap()
}

fn doc_bundle() -> Vec<u8> {
    json!({"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0a11", "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "note"},
          "date": "2026-11-26", "author": [{"display": "x"}], "title": "t", "subject": {"reference": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0a12"}}},
        {"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0a12", "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "nobody"}]}}]})
    .to_string()
    .into_bytes()
}

async fn post_as2(o: &Outsider, t: &Target, out: &as2::Outgoing) -> Result<client::Response, client::SendError> {
    let c = client::client_for(&t.ca_pem, &o.tls, Duration::from_secs(20)).unwrap();
    client::post(&c, &t.url, out, 1 << 20).await
}

fn disposition(r: &client::Response, signer: &X509) -> Disposition {
    let mdn = as2::parse_mdn(&r.headers, &r.body, Some(signer), &[mamori_exchange::cms::Digest::Sha256])
        .expect("a signed MDN");
    mdn.report.disposition
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_the_as2_endpoint_are_refused_audited_and_quarantined() {
    let b = node("xt", "CLINIC-B", "max_message_bytes = 200000\n").await;
    let t = target(&b).await;
    let c = outsider("Clinic C");
    let d = outsider("Clinic D");
    for (o, id, as2_id) in [(&c, "1310000003", "CLINIC-C"), (&d, "1310000004", "CLINIC-D")] {
        let r = b
            .post(
                "/api/v1/partners",
                &b.admin,
                partner_doc(
                    id,
                    as2_id,
                    "https://localhost:1/as2",
                    &o.cert_pem,
                    &o.ca_pem,
                    "third_party",
                    &["referral"],
                ),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let b_cert = t.cert.clone();
    let stored = |b: &TestServer| b.count("SELECT COUNT(*) FROM exchange_inbound");

    // A valid message is accepted (and queued for matching: no such patient here).
    let ok = message("CLINIC-C", &c.id, &t, "m1@c", &doc_bundle());
    let r = post_as2(&c, &t, &ok).await.unwrap();
    assert_eq!(
        disposition(&r, &b_cert),
        Disposition::Processed,
        "{}",
        String::from_utf8_lossy(&r.body).chars().take(900).collect::<String>()
    );
    assert_eq!(stored(&b), 1);
    // Received documents name patients: the records desk reads them, not
    // the administrator (separation of duties).
    assert_eq!(b.get("/api/v1/exchange/inbound?state=unmatched", &b.admin).await.status, 403);
    let desk = b.user("clerk.desk", &["clerk"]).await;
    let r = b.get("/api/v1/exchange/inbound?state=unmatched", &desk).await;
    assert_eq!(r.body["inbound"].as_array().unwrap().len(), 1, "{}", r.text);

    // Replayed Message-ID.
    let r = post_as2(&c, &t, &ok).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Warning("duplicate-document".into()));
    // C's TLS certificate, but signed with D's key.
    let r = post_as2(&c, &t, &message("CLINIC-C", &d.id, &t, "m2@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Error("authentication-failed".into()));
    // C's TLS certificate claiming to be D.
    let r = post_as2(&c, &t, &message("CLINIC-D", &d.id, &t, "m3@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Error("authentication-failed".into()));
    // Tampered ciphertext.
    let mut tampered = message("CLINIC-C", &c.id, &t, "m4@c", &doc_bundle());
    let n = tampered.body.len();
    tampered.body[n - 30] ^= 0x40;
    let r = post_as2(&c, &t, &tampered).await.unwrap();
    assert!(
        matches!(disposition(&r, &b_cert), Disposition::Error(m) if m == "decryption-failed" || m == "authentication-failed")
    );
    // Tampered signed content, re-encrypted to B.
    let signed = as2::sign_payload(&c.id, "application/fhir+json", "d.json", &doc_bundle()).unwrap();
    let altered = String::from_utf8(signed.entity.clone()).unwrap().replace("nobody", "someone");
    let der =
        mamori_exchange::cms::encrypt(altered.as_bytes(), &t.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1)
            .unwrap();
    let mut out = message("CLINIC-C", &c.id, &t, "m5@c", &doc_bundle());
    out.body = der;
    let r = post_as2(&c, &t, &out).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Error("authentication-failed".into()));
    // Unsigned (but encrypted) message.
    let entity = mamori_exchange::mime::entity(&[("Content-Type", "application/fhir+json")], &doc_bundle());
    out.body =
        mamori_exchange::cms::encrypt(&entity, &t.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1).unwrap();
    for h in out.headers.iter_mut().filter(|h| h.0 == "Message-ID") {
        h.1 = "<m6@c>".into();
    }
    let r = post_as2(&c, &t, &out).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Error("insufficient-message-security".into()));
    // Unknown AS2 sender (with a registered TLS identity).
    let r = post_as2(&c, &t, &message("NOBODY", &c.id, &t, "m7@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &b_cert), Disposition::Error("unknown-trading-partner".into()));
    // Oversize body.
    let big = message("CLINIC-C", &c.id, &t, "m8@c", &vec![b' '; 300_000]);
    let r = post_as2(&c, &t, &big).await.unwrap();
    assert_eq!(r.status, 413);
    // Not AS2 at all.
    let r = post_as2(
        &c,
        &t,
        &as2::Outgoing { headers: vec![("Content-Type".into(), "text/plain".into())], body: b"hello".to_vec() },
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400);

    // No client certificate, or one from an unregistered CA: no handshake.
    let stranger = outsider("Stranger");
    let r = post_as2(&stranger, &t, &ok).await;
    let e = r.unwrap_err();
    assert_eq!(e.segment, client::Segment::PartnerTls, "{}", e.message);
    // The partner's reason, even when TLS 1.3 delivers it after the request was handed over.
    assert!(e.message.starts_with("TLS: received fatal alert"), "{}", e.message);
    let plain = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(t.ca_pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    assert!(plain.post(&t.url).body("x").send().await.is_err());
    let refused = wait_for("handshake refusals in the audit log", || async {
        let n = b.audits_where("as2-tls-refused").len();
        (n >= 2).then_some(json!(n))
    })
    .await;
    assert!(refused.as_u64().unwrap() >= 2);

    // Nothing but the one valid document was stored; everything else was quarantined, audited, alerted.
    assert_eq!(stored(&b), 1);
    assert_eq!(b.count("SELECT COUNT(*) FROM resources WHERE rtype = 'DocumentReference'"), 0);
    let q = b.get("/api/v1/exchange/quarantine", &b.admin).await;
    assert_eq!(q.body["quarantine"].as_array().unwrap().len(), 9, "{}", q.text);
    let rec = b.audits_where("exchange-receive");
    assert_eq!(rec.iter().filter(|e| e["status"] == 200).count(), 1);
    assert_eq!(rec.len(), 10);
    let alerts = b.get("/api/v1/alerts", &b.admin).await;
    assert!(
        alerts.text.contains("authentication-failed") && alerts.text.contains("duplicate-document"),
        "{}",
        alerts.text
    );

    // A person matches the queued document to a patient.
    let clerk = b.user("clerk", &["clerk"]).await;
    let p = b.patient(&clerk, "Nobody", "Known").await;
    let inbound = b.get("/api/v1/exchange/inbound?state=unmatched", &clerk).await;
    let msg = inbound.body["inbound"][0]["message"].as_str().unwrap().to_owned();
    assert_eq!(inbound.body["inbound"][0]["summary"]["patient"]["identifier"][0]["value"], "nobody");
    let r = b.post(&format!("/api/v1/exchange/inbound/{msg}/match"), &clerk, json!({"patient": p})).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        b.count(&format!("SELECT COUNT(*) FROM resources WHERE rtype = 'DocumentReference' AND patient = '{p}'")),
        1
    );
    let r = b.post(&format!("/api/v1/exchange/inbound/{msg}/match"), &clerk, json!({"patient": p})).await;
    assert_eq!(r.status, 412, "{}", r.text);
    let nurse = b.user("nurse", &["nurse"]).await;
    let r = b.get("/api/v1/exchange/inbound", &nurse).await;
    assert_eq!(r.status, 403);
}

/// Replaces partner `id`'s registration at `at` (version `v` expected).
async fn update_partner(at: &TestServer, id: &str, reg: &Value, v: i64) {
    let r = at
        .raw(
            Method::PUT,
            &format!("/api/v1/partners/{id}"),
            Some(&at.admin),
            Some((reg.to_string(), "application/json")),
            &[("if-match", &format!("W/\"{v}\""))],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_survives_partner_outages_and_restarts() {
    let port = free_port();
    let mut b = TestServer::start_cfg(
        "xo-b",
        &format!("[exchange]\nlisten = \"127.0.0.1:{port}\"\nas2_id = \"CLINIC-B\"\n"),
        None,
    )
    .await;
    let mut a = node("xo-a", "HOSP-A", "").await;
    register(&a, &b, "1310000002", "third_party", &["referral"]).await;
    register(&b, &a, "1310000001", "third_party", &["referral"]).await;
    let (doc, pa, obs) = chart(&a, "dr-a").await;
    b.stop().await;
    let r = a
        .post("/api/v1/exchange/messages", &doc, json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral", "documents": [format!("Observation/{obs}")]}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&a, &mid, "retry").await;
    assert_eq!(m["failure"]["segment"], "path", "{m}");
    // A restarts while the partner is down: the message is still there.
    a.restart().await;
    let m = a.get(&format!("/api/v1/exchange/messages/{mid}"), &a.admin).await.body;
    assert!(matches!(m["state"].as_str(), Some("retry" | "queued" | "sending")), "{m}");
    // The partner comes back on the same address: delivered, once.
    b.restart().await;
    let m = message_state(&a, &mid, "delivered").await;
    assert!(m["attempts"].as_i64().unwrap() >= 2);
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_inbound"), 1);

    // A partner that never answers: a visible failure, an alert, never dropped silently.
    let r = a.get("/api/v1/partners/1310000002", &a.admin).await;
    let mut reg = r.body["registration"].clone();
    let b_endpoint = reg["endpoint"].clone();
    reg["endpoint"] = json!(format!("https://localhost:{}/as2", free_port()));
    update_partner(&a, "1310000002", &reg, r.body["version"].as_i64().unwrap()).await;
    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral", "note": "再送"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&a, &mid, "failed").await;
    assert_eq!(m["attempts"], 3);
    assert_eq!(m["failure"]["segment"], "path");
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_outbox"), 0);
    let alerts = a.get("/api/v1/alerts", &a.admin).await;
    assert!(alerts.text.contains("exchange-failed"), "{}", alerts.text);
    assert_eq!(a.audits_where("exchange-failed").len(), 1);

    // The partner answers, but its server certificate is not under the CA
    // registered for it: the partner's TLS authentication failed, which
    // the ledger names as such (not the network path).
    let r = a.get("/api/v1/partners/1310000002", &a.admin).await;
    let mut reg = r.body["registration"].clone();
    reg["endpoint"] = b_endpoint;
    reg["certificates"]["tls_ca"] = json!(outsider("Impostor CA").ca_pem);
    update_partner(&a, "1310000002", &reg, r.body["version"].as_i64().unwrap()).await;
    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral", "note": "証明書違い"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&a, &mid, "failed").await;
    assert_eq!(m["failure"]["segment"], "partner_tls", "{m}");
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_inbound"), 1, "nothing reached the impostor-checked partner");
}

/// Issue 12: a stored Composition once carried another patient's data to
/// the partner for a physician without care, a clerk and a pharmacist.
/// A send is a read of every resource sent, decided per patient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_is_decided_as_a_read_of_every_resource_sent() {
    let a = node("xr", "HOSP-A", "").await;
    let b = node("xs", "CLINIC-B", "").await;
    register(&a, &b, "1310000002", "third_party", &["referral"]).await;
    let (doc, pa, obs) = chart(&a, "dr-a").await;
    let comp = json!({"resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "57133-1"}]},
        "subject": {"reference": format!("Patient/{pa}")}, "date": "2026-12-01T10:00:00+09:00",
        "author": [{"display": "dr-a"}], "title": "紹介状",
        "section": [{"title": "所見", "entry": [{"reference": format!("Observation/{obs}")}]}]});
    let r = a.post("/fhir/Composition", &doc, comp).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let cid = r.body["id"].as_str().unwrap().to_owned();
    let body = json!({"patient": pa, "recipients": ["1310000002"], "purpose": "referral",
                      "documents": [format!("Composition/{cid}"), format!("Observation/{obs}")]});
    let before = a.count("SELECT COUNT(*) FROM exchange_messages");
    let other = a.user("dr-other", &["physician"]).await;
    let clerk = a.user("clerk-x", &["clerk"]).await;
    let pharm = a.user("ph-x", &["pharmacist"]).await;
    for (who, t) in [("physician without care", &other), ("clerk", &clerk), ("pharmacist without care", &pharm)] {
        let r = a.post("/api/v1/exchange/messages", t, body.clone()).await;
        assert_eq!(r.status, 403, "{who}: {}", r.text);
        let ev = a.last_audit();
        assert_eq!(ev["action"], "exchange-send", "{who}: {ev}");
        assert_eq!(ev["status"], 403, "{who}: {ev}");
    }
    // Another patient's record listed in pa's send: refused as a whole.
    let (_doc_c, _pc, obs_c) = chart(&a, "dr-c").await;
    let mut mixed = body.clone();
    mixed["documents"] = json!([format!("Observation/{obs}"), format!("Observation/{obs_c}")]);
    let r = a.post("/api/v1/exchange/messages", &doc, mixed).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("another patient"), "{}", r.text);
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages"), before, "nothing was queued");
    // The physician who cares for the patient sends; the basis is the read's.
    let r = a.post("/api/v1/exchange/messages", &doc, body).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let ev = a.audits_where("exchange-send").pop().unwrap();
    assert_eq!(ev["basis"], "care-relationship", "{ev}");
}

/// A partner's certificates count only inside their validity, by the
/// server's clock: a certificate not valid yet is registered with a
/// warning, and until it starts, and again after it expires, nothing is
/// accepted from the partner or sent to it (refused, audited, quarantined,
/// alerted). In between, the same partner's messages are processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partner_certificates_count_only_inside_their_validity() {
    // The server's clock starts two days before the partner's certificates do.
    let clock = ManualClock::new(SystemClock.now().plus_secs(-2 * 86_400));
    let b = TestServer::start_cfg("xv", &format!("{AS2_CFG}as2_id = \"CLINIC-B\"\n"), Some(clock.clone())).await;
    let t = target(&b).await;
    let c = outsider("Clinic C");
    let r = b
        .post(
            "/api/v1/partners",
            &b.admin,
            partner_doc(
                "1310000003",
                "CLINIC-C",
                "https://localhost:1/as2",
                &c.cert_pem,
                &c.ca_pem,
                "third_party",
                &["referral"],
            ),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let warnings = r.body["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w.as_str().unwrap().contains("certificates.signing: not valid before")),
        "{}",
        r.text
    );
    let reg = b.audits_where("partner-register");
    assert_eq!(reg.last().unwrap()["detail"]["warnings"].as_array().unwrap().len(), warnings.len());

    let refused_reason = |b: &TestServer| {
        let e = b.audits_where("exchange-receive");
        let last = e.last().unwrap().clone();
        (last["status"].as_u64().unwrap(), last["detail"]["reason"].as_str().unwrap_or("").to_owned())
    };
    // Not valid yet: refused on receipt, and a send is refused before anything is queued.
    let r = post_as2(&c, &t, &message("CLINIC-C", &c.id, &t, "v1@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Error("authentication-failed".into()));
    let (status, reason) = refused_reason(&b);
    assert_eq!(status, 403);
    assert!(reason.contains("signing certificate is not valid before"), "{reason}");
    let (doc, pa, obs) = chart(&b, "dr-b").await;
    let send = json!({"patient": pa, "recipients": ["1310000003"], "purpose": "referral", "documents": [format!("Observation/{obs}")]});
    let r = b.post("/api/v1/exchange/messages", &doc, send.clone()).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("encryption certificate is not valid before"), "{}", r.text);
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_messages WHERE direction = 'out'"), 0);

    // Valid: the same partner's message is processed.
    clock.advance_secs(2 * 86_400 + 60);
    let r = post_as2(&c, &t, &message("CLINIC-C", &c.id, &t, "v2@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Processed);
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_inbound"), 1);

    // Expired (the outsider's certificates are valid for 30 days).
    clock.advance_secs(31 * 86_400);
    let r = post_as2(&c, &t, &message("CLINIC-C", &c.id, &t, "v3@c", &doc_bundle())).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Error("authentication-failed".into()));
    let (status, reason) = refused_reason(&b);
    assert_eq!(status, 403);
    assert!(reason.contains("signing certificate expired on"), "{reason}");
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_inbound"), 1, "nothing more was accepted");
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_quarantine"), 2, "both refusals are kept for review");
    assert!(b.count("SELECT COUNT(*) FROM alerts WHERE kind LIKE 'exchange-refused:%'") >= 1);
    let doc = b.login("dr-b", PASSWORD).await;
    let r = b.post("/api/v1/exchange/messages", &doc, send).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("encryption certificate expired on"), "{}", r.text);
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_messages WHERE direction = 'out'"), 0);
}

/// The JP FHIR definitions (`../shared/fhir-jp`, or `MAMORI_FHIR_JP`).
fn fhir_jp() -> std::path::PathBuf {
    mamori_service::conformance::jp_definitions_dir()
        .expect("the JP FHIR definitions: set MAMORI_FHIR_JP to the folder holding jp-core/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_document_that_breaks_its_profiles_is_quarantined() {
    let core = fhir_jp().join("jp-core");
    let cfg = format!(
        "[fhir]\npackages = [{:?}]\n[fhir.required]\nPatient = \"http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient\"\n",
        core.display().to_string()
    );
    let b = node("xjp", "CLINIC-B", &cfg).await;
    let t = target(&b).await;
    let c = outsider("Clinic JP");
    let reg = partner_doc(
        "1310000005",
        "CLINIC-JP",
        "https://localhost:1/as2",
        &c.cert_pem,
        &c.ca_pem,
        "third_party",
        &["referral"],
    );
    assert_eq!(b.post("/api/v1/partners", &b.admin, reg).await.status, 201);
    let mut patient: Value =
        serde_json::from_slice(&std::fs::read(core.join("examples/Patient-jp-patient-example-1.json")).unwrap())
            .unwrap();
    patient.as_object_mut().unwrap().remove("id");
    let doc = |patient: &Value| -> Vec<u8> {
        json!({"resourceType": "Bundle", "type": "document", "entry": [
            {"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b11", "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "診療情報提供書"},
              "date": "2026-12-04", "author": [{"display": "x"}], "title": "診療情報提供書", "subject": {"reference": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b12"}}},
            {"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b12", "resource": patient}]})
        .to_string()
        .into_bytes()
    };

    // A JP_Patient that conforms is accepted.
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "jp1@c", &doc(&patient))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Processed);
    // What this server requires of the Patients it stores is not asked of
    // a partner's document: a patient that claims no profile passes.
    let mut plain = patient.clone();
    plain.as_object_mut().unwrap().remove("meta");
    plain.as_object_mut().unwrap().remove("identifier");
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "jp0@c", &doc(&plain))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Processed);
    // One that claims JP_Patient but breaks it is refused, and kept with the reason.
    let mut bad = patient.clone();
    bad["name"][1]["extension"][0]["valueCode"] = json!("KANA");
    bad.as_object_mut().unwrap().remove("identifier");
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "jp2@c", &doc(&bad))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Error("unexpected-processing-error".into()));
    assert_eq!(b.count("SELECT COUNT(*) FROM exchange_inbound"), 2);
    let q = b.get("/api/v1/exchange/quarantine", &b.admin).await;
    let reason = q.body["quarantine"][0]["reason"].as_str().unwrap_or_default().to_owned();
    assert!(reason.contains("does not conform to the profiles it claims (2 error(s))"), "{}", q.text);
    assert!(reason.contains("Bundle.entry[1].resource.identifier: requires at least 1"), "{reason}");
    assert!(reason.contains("Bundle.entry[1].resource.name[1].extension[0].valueCode: KANA"), "{reason}");
    let rec = b.audits_where("exchange-receive");
    assert!(
        rec.iter().any(|e| e["status"] == 422 && e["detail"]["reason"].as_str().unwrap_or("").contains("KANA")),
        "{rec:?}"
    );

    // The document's own signature: the partner's holds; a document changed
    // after signing, or signed by another institution, is quarantined.
    let signed = |by: &Identity, change: bool| -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(&doc(&plain)).unwrap();
        mamori_exchange::fhirsig::sign(&mut v, by, json!({"display": "Clinic JP"}), "2026-12-04T10:00:00+09:00")
            .unwrap();
        if change {
            v["entry"][0]["resource"]["title"] = json!("改ざんされた文書");
        }
        v.to_string().into_bytes()
    };
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "sig1@c", &signed(&c.id, false))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Processed);
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "sig2@c", &signed(&c.id, true))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Error("unexpected-processing-error".into()));
    let stranger = outsider("Someone else");
    let r = post_as2(&c, &t, &message("CLINIC-JP", &c.id, &t, "sig3@c", &signed(&stranger.id, false))).await.unwrap();
    assert_eq!(disposition(&r, &t.cert), Disposition::Error("unexpected-processing-error".into()));
    let q = b.get("/api/v1/exchange/quarantine", &b.admin).await;
    let reasons: Vec<&str> =
        q.body["quarantine"].as_array().unwrap().iter().filter_map(|x| x["reason"].as_str()).collect();
    assert!(reasons.iter().any(|r| r.contains("the document was changed after it was signed")), "{reasons:?}");
    assert!(
        reasons.iter().any(|r| r.contains("other than the partner's registered signing certificate")),
        "{reasons:?}"
    );
}

/// `[fhir] packages` loading JP Core and JP-CLINS, and the institution code.
fn jp_cfg(code: &str) -> String {
    let d = fhir_jp();
    format!(
        "[fhir]\npackages = [{:?}, {:?}]\n[institution]\nid = \"{code}\"\nname = \"病院{code}\"\n",
        d.join("jp-core").display().to_string(),
        d.join("jp-clins").display().to_string()
    )
}

const INSURANCE: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";

fn jp_patient(insured: Option<&str>) -> Value {
    let rep = |c: &str| json!([{"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation", "valueCode": c}]);
    let mut p = json!({"resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.392.100495.20.3.51.11319900001", "value": "00012345"}],
        "name": [{"use": "official", "extension": rep("IDE"), "text": "山田　花子", "family": "山田", "given": ["花子"]},
                 {"use": "official", "extension": rep("SYL"), "text": "ヤマダ ハナコ", "family": "ヤマダ", "given": ["ハナコ"]}],
        "gender": "female", "birthDate": "1960-04-01", "address": [{"text": "東京都港区デモ町1-1", "country": "JP"}]});
    if let Some(v) = insured {
        p["identifier"].as_array_mut().unwrap().push(json!({"system": INSURANCE, "value": v}));
    }
    p
}

/// A physician's referral letter from hospital A to clinic B, as a JP-CLINS
/// document: composed from the chart, validated, signed (Bundle.signature
/// and S/MIME), sent over AS2, validated and verified at B, filed to B's
/// patient and shown there as a letter. Each precondition is refused with
/// its reason, and nothing is queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referral_letter_goes_as_a_signed_jp_clins_document() {
    let a = node("xca", "HOSP-A", &jp_cfg("1319900001")).await;
    let b = node("xcb", "CLINIC-B", &jp_cfg("1319900002")).await;
    let mut to_b = register(&a, &b, "clinic-b", "third_party", &["referral"]).await;
    register(&b, &a, "hosp-a", "third_party", &["referral_reply"]).await;
    let doc = a.user("dr-a", &["physician"]).await;
    let insured = "06139990:デモ1:100053:01";
    let r = a.post("/fhir/Patient", &doc, jp_patient(Some(insured))).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let pa = r.body["id"].as_str().unwrap().to_owned();
    a.assign(&pa, "dr-a").await;
    let subject = json!({"reference": format!("Patient/{pa}")});
    for res in [
        json!({"resourceType": "Condition", "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
               "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
               "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I48", "display": "Atrial fibrillation"}], "text": "心房細動"},
               "subject": subject, "onsetDateTime": "2024-05-01"}),
        json!({"resourceType": "AllergyIntolerance", "criticality": "high", "code": {"text": "ペニシリン"}, "patient": subject}),
        json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
               "medicationCodeableConcept": {"text": "ワルファリン錠1mg"}, "subject": subject,
               "dosageInstruction": [{"text": "1日1回 朝食後"}]}),
        json!({"resourceType": "Observation", "status": "final",
               "code": {"coding": [{"system": "http://loinc.org", "code": "34714-6", "display": "INR"}], "text": "PT-INR"},
               "subject": subject, "effectiveDateTime": "2026-11-30T09:00:00+09:00", "valueQuantity": {"value": 2.1, "unit": "INR"}}),
    ] {
        let r = a.post(&format!("/fhir/{}", res["resourceType"].as_str().unwrap()), &doc, res.clone()).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let send = |patient: &str, extra: Value| {
        let mut v = json!({"patient": patient, "recipients": ["clinic-b"], "purpose": "referral", "format": "jp-clins",
                           "note": "心房細動の抗凝固療法の継続をお願いします。"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };

    // Refused, each with its reason; nothing queued.
    let r = a.post("/api/v1/exchange/messages", &doc, send(&pa, json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("clinic-b has no institution_code in the registry"), "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(&pa, json!({"purpose": "consultation"}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(&pa, json!({"note": " "}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(&pa, json!({"format": "cda"}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = a.post("/api/v1/exchange/messages", &doc, send(&pa, json!({"documents": ["Condition/x"]}))).await;
    assert_eq!(r.status, 400, "{}", r.text);
    to_b["institution_code"] = json!("1319900002");
    update_partner(&a, "clinic-b", &to_b, 1).await;
    let r = a.post("/fhir/Patient", &doc, jp_patient(None)).await;
    let uninsured = r.body["id"].as_str().unwrap().to_owned();
    a.assign(&uninsured, "dr-a").await;
    let r = a.post("/api/v1/exchange/messages", &doc, send(&uninsured, json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("cannot be sent as JP_Patient_eCS"), "{}", r.text);
    assert!(r.text.contains("JP_Insurance_memberID"), "the missing identifier is named: {}", r.text);
    // A stranger to the patient cannot send the letter.
    let other = a.user("dr-other", &["physician"]).await;
    let r = a.post("/api/v1/exchange/messages", &other, send(&pa, json!({}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages"), 0);

    // Sent.
    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            send(&pa, json!({"history": "2024年に心房細動を指摘され、抗凝固療法中。"})),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = &r.body["document"];
    assert_eq!(d["profile"], "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral");
    // The chart's Condition has no MEDIS disease number: it is in the text only, with why.
    let text_only = d["text_only"].as_array().unwrap();
    let cond = text_only.iter().find(|t| t["resource"].as_str().unwrap().starts_with("Condition/")).expect("{d}");
    assert!(cond["reason"].as_str().unwrap().contains("medisRecordNo"), "{cond}");
    assert!(d["structured"].as_array().unwrap().iter().any(|s| s.as_str().unwrap().starts_with("Observation/")), "{d}");
    let kept = d["kept"].as_str().unwrap().to_owned();
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&a, &mid, "delivered").await;
    assert_eq!(m["mdn"], "processed");
    let m_first_id = m["message_id"].clone();

    // The letter kept at A is the signed document as sent.
    let r = a.get(&format!("/fhir/{kept}"), &doc).await;
    assert_eq!(r.status, 200, "{}", r.text);
    use base64::Engine as _;
    let sent: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r.body["content"][0]["attachment"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(sent["meta"]["profile"][0], "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral");
    let comp = &sent["entry"][0]["resource"];
    assert_eq!(comp["title"], "診療情報提供書");
    assert_eq!(comp["type"]["coding"][0]["code"], "57133-1");
    let text = sent.to_string();
    for shown in [
        "心房細動の抗凝固療法の継続",
        "2024年に心房細動",
        "ペニシリン",
        "ワルファリン錠1mg",
        "PT-INR: 2.1 INR",
        "Partner clinic-b（1319900002） 御中",
    ] {
        assert!(text.contains(shown), "{shown} in the letter");
    }
    assert!(text.contains("山田 花子") && !text.contains("山田　花子"), "no full-width space in the kanji name");
    let a_cert = X509::from_pem(
        a.get("/api/v1/exchange/identity", &a.admin).await.body["certificates"]["signing"].as_str().unwrap().as_bytes(),
    )
    .unwrap();
    assert_eq!(mamori_exchange::fhirsig::verify(&sent, &a_cert).unwrap(), mamori_exchange::fhirsig::Checked::Verified);
    let sends = a.audits_where("exchange-send");
    let ok: Vec<&Value> = sends.iter().filter(|e| e["status"] == 202).collect();
    assert_eq!(ok.len(), 1, "{sends:?}");
    assert!(ok[0]["detail"]["documents"].as_array().unwrap().iter().any(|x| x == &json!(kept)), "{}", ok[0]);
    assert_eq!(ok[0]["patients"], json!([pa]));
    // Each refusal above is audited too.
    assert!(sends.iter().filter(|e| e["status"] != 202).count() >= 7, "{sends:?}");

    // The same letter through the send form: the form offers the format and
    // answers with a redirect to the ledger of the send.
    let mut bra = Browser::new(&a);
    bra.login("dr-a", PASSWORD).await;
    let page = bra.get(&format!("/ui/exchange?patient={pa}")).await;
    assert!(page.text.contains("JP-CLINS 診療情報提供書"), "the format is offered");
    let form = page.text.split("action=\"/ui/exchange/send\"").nth(1).expect("the send form");
    let key = form.split("name=\"form_key\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let p = bra
        .post(
            "/ui/exchange/send",
            &[
                ("patient", &pa),
                ("partner", "clinic-b"),
                ("purpose", "referral"),
                ("format", "jp-clins"),
                ("title", "ignored for JP-CLINS"),
                ("note", "画面からの紹介"),
                ("history", ""),
                ("form_key", &key),
            ],
        )
        .await;
    assert_eq!(p.status.as_u16(), 303, "{}", p.text);
    assert!(p.location().starts_with("/ui/exchange/messages?send="), "{}", p.location());
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages WHERE direction = 'out' AND kind = 'document'"), 2);
    // The same form again (a double click, a reload) sends nothing more.
    let again = bra
        .post(
            "/ui/exchange/send",
            &[
                ("patient", &pa),
                ("partner", "clinic-b"),
                ("purpose", "referral"),
                ("format", "jp-clins"),
                ("note", "画面からの紹介"),
                ("form_key", &key),
            ],
        )
        .await;
    assert_eq!(again.status.as_u16(), 303, "{}", again.text);
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages WHERE direction = 'out' AND kind = 'document'"), 2);

    // At B: verified, validated, held for matching (B does not know the patient yet), then filed.
    let r = b.get("/api/v1/exchange/messages?direction=in", &b.admin).await;
    let first = r.body["messages"].as_array().unwrap().iter().find(|m| m["message_id"] == m_first_id).cloned();
    let inb = first.expect("the first letter at B")["id"].as_str().unwrap().to_owned();
    let r = b.get(&format!("/api/v1/exchange/messages/{inb}"), &b.admin).await;
    let verified = r.body["hops"].as_array().unwrap().iter().find(|h| h["hop"] == "verified").unwrap().clone();
    assert_eq!(verified["detail"]["bundle_signature"], "verified", "{verified}");
    let clerk = b.user("clerk-b", &["clerk"]).await;
    let r = b.post("/fhir/Patient", &clerk, json!({"resourceType": "Patient", "name": [{"text": "山田 花子"}], "gender": "female", "birthDate": "1960-04-01"})).await;
    let pb = r.body["id"].as_str().unwrap().to_owned();
    let dr_b = b.user("dr-b", &["physician"]).await;
    b.assign(&pb, "dr-b").await;
    let r = b.post(&format!("/api/v1/exchange/inbound/{inb}/match"), &dr_b, json!({"patient": pb})).await;
    assert!(r.status == 200 || r.status == 201, "{}", r.text);
    let drs = b.get(&format!("/fhir/DocumentReference?subject=Patient/{pb}"), &dr_b).await;
    let filed = drs.body["entry"][0]["resource"].clone();
    assert!(filed["authenticator"]["display"].as_str().unwrap().contains("signature verified on receipt"), "{filed}");
    let fid = filed["id"].as_str().unwrap();

    // Shown as a letter, escaped, printable.
    let mut br = Browser::new(&b);
    br.login("dr-b", PASSWORD).await;
    let page = br.get(&format!("/ui/patients/{pb}/documents/{fid}")).await;
    assert_eq!(page.status, 200);
    for shown in [
        "診療情報提供書",
        "Partner clinic-b（1319900002）",
        "紹介目的",
        "心房細動の抗凝固療法の継続をお願いします。",
        "アレルギー・不耐性反応",
        "ペニシリン（重篤 / high criticality）",
        "ヤマダ ハナコ",
        "病院1319900001（1319900001）",
        "data-print",
    ] {
        assert!(page.text.contains(shown), "{shown} on the letter page");
    }

    // A hostile document reads as text: markup, odd dates and dangling
    // references change nothing on the page.
    let hostile = json!({"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Composition", "status": "final", "title": "<script>alert(1)</script>",
          "date": "2026-12-0日本語T12:00", "subject": {"reference": "urn:uuid:nowhere"}, "author": [{"display": "x"}], "type": {"text": "x"},
          "section": [{"title": "<img src=x onerror=alert(2)>", "text": {"status": "additional",
            "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>本文<script>alert(3)</script></p><a href=\"javascript:alert(4)\">link</a></div>"},
            "entry": [{"reference": "urn:uuid:1"}]}]}}]});
    let att = base64::engine::general_purpose::STANDARD.encode(hostile.to_string());
    let r = b
        .post(
            "/fhir/DocumentReference",
            &dr_b,
            json!({"resourceType": "DocumentReference", "status": "current", "subject": {"reference": format!("Patient/{pb}")},
                   "description": "hostile", "content": [{"attachment": {"contentType": "application/fhir+json", "data": att}}]}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let page = br.get(&format!("/ui/patients/{pb}/documents/{}", r.body["id"].as_str().unwrap())).await;
    assert_eq!(page.status, 200);
    assert!(page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt;"), "the title is text");
    assert!(page.text.contains("本文"), "the narrative's words are kept");
    for never in ["<script>alert", "<img src=x", "javascript:alert", "onerror=alert(2)>"] {
        assert!(!page.text.contains(never), "{never} must not reach the page");
    }
}

/// A JP-CLINS letter cannot be composed without the package to validate it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jp_clins_letter_needs_the_package_loaded() {
    let a = node("xcn", "HOSP-N", "[institution]\nid = \"1319900001\"\n").await;
    let b = node("xcm", "CLINIC-M", "").await;
    let mut reg = register(&a, &b, "clinic-m", "third_party", &["referral"]).await;
    reg["institution_code"] = json!("1319900002");
    update_partner(&a, "clinic-m", &reg, 1).await;
    let doc = a.user("dr-n", &["physician"]).await;
    let r = a.post("/fhir/Patient", &doc, jp_patient(Some("06139990:x:1:01"))).await;
    let p = r.body["id"].as_str().unwrap().to_owned();
    a.assign(&p, "dr-n").await;
    let r = a
        .post(
            "/api/v1/exchange/messages",
            &doc,
            json!({"patient": p, "recipients": ["clinic-m"], "purpose": "referral", "format": "jp-clins", "note": "x"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("the JP-CLINS package is not loaded"), "{}", r.text);
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages"), 0);
}

/// A discharge summary (退院時サマリー) for an admission, as a JP-CLINS
/// document: the admission, the diagnoses (one with a MEDIS disease
/// number, as JP-CLINS requires), the hospital course as the physician
/// wrote it; validated, signed, delivered and accepted at the clinic.
/// The MEDIS number here is test data: the MEDIS master is not available
/// offline, so the validator checks its form, not its meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discharge_summary_goes_as_a_jp_clins_document() {
    let a = node("xda", "HOSP-DA", &jp_cfg("1319900001")).await;
    let b = node("xdb", "CLINIC-DB", &jp_cfg("1319900002")).await;
    register(&a, &b, "clinic-db", "third_party", &["referral"]).await;
    register(&b, &a, "hosp-da", "third_party", &["referral_reply"]).await;
    let doc = a.user("dr-da", &["physician"]).await;
    let r = a.post("/fhir/Patient", &doc, jp_patient(Some("06139990:デモ2:100106:01"))).await;
    let pa = r.body["id"].as_str().unwrap().to_owned();
    a.assign(&pa, "dr-da").await;
    let subject = json!({"reference": format!("Patient/{pa}")});
    let post = |res: Value| {
        let (a, doc) = (&a, &doc);
        async move {
            let r = a.post(&format!("/fhir/{}", res["resourceType"].as_str().unwrap()), doc, res.clone()).await;
            assert_eq!(r.status, 201, "{}", r.text);
            r.body["id"].as_str().unwrap().to_owned()
        }
    };
    let admission = post(json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": subject, "period": {"start": "2026-11-20T10:00:00+09:00", "end": "2026-12-01T11:00:00+09:00"},
        "reasonCode": [{"text": "発熱と呼吸困難"}]}))
    .await;
    let outpatient = post(json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": subject, "period": {"start": "2026-11-10T10:00:00+09:00", "end": "2026-11-10T10:30:00+09:00"}}))
    .await;
    let send = |extra: Value| {
        let mut v = json!({"patient": pa, "recipients": ["clinic-db"], "purpose": "referral", "format": "jp-clins",
                           "document": "discharge-summary", "encounter": format!("Encounter/{admission}"),
                           "note": "抗菌薬の点滴で解熱し、酸素投与を終了して退院。", "plan": "内服抗菌薬を3日間継続。1週間後に外来受診。"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // Without a diagnosis carrying a MEDIS number: refused, and named.
    post(json!({"resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J18.9", "display": "Pneumonia"}], "text": "肺炎"},
        "subject": subject}))
    .await;
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!({}))).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("at least one diagnosis that conforms to JP_Condition_eCS"), "{}", r.text);
    assert!(r.text.contains("medisRecordNo"), "the reason is shown: {}", r.text);
    for (extra, status, says) in [
        (json!({"encounter": format!("Encounter/{outpatient}")}), 422, "is not an admission"),
        (json!({"encounter": "Encounter/nonexistent"}), 404, "Encounter/nonexistent"),
        (json!({"encounter": null}), 400, "names its admission"),
        (json!({"document": "summary"}), 400, "referral or discharge-summary"),
        (json!({"note": ""}), 400, "hospital course"),
    ] {
        let r = a.post("/api/v1/exchange/messages", &doc, send(extra.clone())).await;
        assert_eq!(r.status, status, "{extra}: {}", r.text);
        assert!(r.text.contains(says), "{extra}: {}", r.text);
    }
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages"), 0);

    // With one coded diagnosis, it goes.
    let coded = post(json!({"resourceType": "Condition",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
        "code": {"coding": [{"system": "http://medis.or.jp/CodeSystem/master-disease-keyNumber", "code": "20057843", "display": "細菌性肺炎"}],
                 "text": "細菌性肺炎"},
        "subject": subject, "encounter": {"reference": format!("Encounter/{admission}")}, "onsetDateTime": "2026-11-19"}))
    .await;
    let r = a.post("/api/v1/exchange/messages", &doc, send(json!({}))).await;
    assert_eq!(r.status, 202, "{}", r.text);
    let d = &r.body["document"];
    assert_eq!(d["profile"], "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary");
    assert!(d["structured"].as_array().unwrap().iter().any(|s| s == &json!(format!("Condition/{coded}"))), "{d}");
    let mid = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let m = message_state(&a, &mid, "delivered").await;
    assert_eq!(m["mdn"], "processed", "validated and verified at the clinic");
    let r = a.get(&format!("/fhir/{}", d["kept"].as_str().unwrap()), &doc).await;
    assert_eq!(r.body["type"]["coding"][0]["code"], "18842-5");
    use base64::Engine as _;
    let sent: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(r.body["content"][0]["attachment"]["data"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let comp = &sent["entry"][0]["resource"];
    assert_eq!(comp["title"], "退院時サマリー");
    assert_eq!(comp["event"][0]["period"], json!({"start": "2026-11-20", "end": "2026-12-01"}));
    let codes: Vec<&str> = comp["section"][0]["section"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    for required in ["322", "342", "352", "312", "362", "333", "324", "344", "444", "424"] {
        assert!(codes.contains(&required), "section {required} in {codes:?}");
    }
    let text = sent.to_string();
    for shown in ["抗菌薬の点滴で解熱", "内服抗菌薬を3日間継続", "発熱と呼吸困難", "2026-11-20 入院 〜 2026-12-01 退院"]
    {
        assert!(text.contains(shown), "{shown} in the summary");
    }
    let r = b.get("/api/v1/exchange/messages?direction=in", &b.admin).await;
    let inb = r.body["messages"][0]["id"].as_str().unwrap().to_owned();
    let r = b.get(&format!("/api/v1/exchange/messages/{inb}"), &b.admin).await;
    assert_eq!(r.body["state"], "stored", "{}", r.text);

    // From the send form: the admission is offered (the outpatient visit is not).
    let mut br = Browser::new(&a);
    br.login("dr-da", PASSWORD).await;
    let page = br.get(&format!("/ui/exchange?patient={pa}")).await;
    assert!(page.text.contains("JP-CLINS 退院時サマリー"), "offered");
    assert!(page.text.contains(&format!("value=\"Encounter/{admission}\"")), "the admission is offered");
    assert!(!page.text.contains(&format!("value=\"Encounter/{outpatient}\"")), "an outpatient visit is not");
    let form = page.text.split("action=\"/ui/exchange/send\"").nth(1).unwrap();
    let key = form.split("name=\"form_key\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let enc_ref = format!("Encounter/{admission}");
    let p = br
        .post(
            "/ui/exchange/send",
            &[
                ("patient", &pa),
                ("partner", "clinic-db"),
                ("purpose", "referral"),
                ("format", "jp-clins-discharge"),
                ("encounter", &enc_ref),
                ("note", "画面から: 経過良好で退院。"),
                ("plan", "外来で経過観察。"),
                ("form_key", &key),
            ],
        )
        .await;
    assert_eq!(p.status.as_u16(), 303, "{}", p.text);
    assert_eq!(a.count("SELECT COUNT(*) FROM exchange_messages WHERE direction = 'out' AND kind = 'document'"), 2);
    let kept = a.count("SELECT COUNT(*) FROM resources WHERE rtype = 'DocumentReference' AND deleted = 0");
    assert_eq!(kept, 2, "both summaries are kept in the chart");
}
