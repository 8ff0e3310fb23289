//! `mamori-bench exchange`: per-document S/MIME cost against the `openssl
//! cms` command on the same files, and AS2 messages per second between two
//! mamori nodes on loopback (1 MB documents, signed MDNs).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use mamori_core::time::SystemClock;
use mamori_exchange::as2::{self, InboundPolicy, MdnRequest};
use mamori_exchange::cms::{ContentCipher, Digest, Identity, KeyTransport};
use mamori_exchange::mime::Headers;
use openssl::x509::X509;
use serde_json::{json, Value};

use crate::{clean_up, median, start_fresh, Args};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let o = Command::new("openssl").args(args).current_dir(dir).output().context("run openssl")?;
    if !o.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn time_ms(f: impl FnOnce() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

fn payload(n: usize) -> Vec<u8> {
    // JSON-like text: what a FHIR document looks like to the ciphers.
    let unit = "{\"resourceType\":\"Observation\",\"status\":\"final\",\"valueQuantity\":{\"value\":72}},";
    unit.as_bytes().iter().copied().cycle().take(n).collect()
}

/// Sign+encrypt and decrypt+verify, in process and with the CLI.
fn crypto(dir: &Path, runs: usize) -> Result<()> {
    let (scert, skey) = mamori_server::keys::institution_identity("bench sender", 30)?;
    let (rcert, rkey) = mamori_server::keys::institution_identity("bench recipient", 30)?;
    std::fs::write(dir.join("s.cert"), &scert)?;
    std::fs::write(dir.join("s.key"), skey.as_bytes())?;
    std::fs::write(dir.join("r.cert"), &rcert)?;
    std::fs::write(dir.join("r.key"), rkey.as_bytes())?;
    let sender = Identity::from_pem(scert.as_bytes(), skey.as_bytes())?;
    let recipient = Identity::from_pem(rcert.as_bytes(), rkey.as_bytes())?;
    let rx = X509::from_pem(rcert.as_bytes())?;
    let sx = X509::from_pem(scert.as_bytes())?;
    let ciphers = [ContentCipher::Aes256Cbc];
    let kts = [KeyTransport::RsaPkcs1];
    let digests = [Digest::Sha256];
    let policy = InboundPolicy { signer: &sx, ciphers: &ciphers, key_transports: &kts, digests: &digests };
    println!("per document: RSA-3072 keys, SHA-256, AES-256-CBC, RSA PKCS#1 v1.5; medians of {runs} runs");
    println!(
        "{:>7}  {:>22}  {:>22}  {:>7}  {:>22}  {:>22}  {:>7}",
        "size", "mamori sign+encrypt", "openssl cms CLI", "ratio", "mamori decrypt+verify", "openssl cms CLI", "ratio"
    );
    for (label, n) in [("1 KB", 1024usize), ("1 MB", 1 << 20), ("10 MB", 10 << 20)] {
        let data = payload(n);
        std::fs::write(dir.join("doc.json"), &data)?;
        let mb = n as f64 / (1 << 20) as f64;
        let mut enc = Vec::new();
        let mut dec = Vec::new();
        let mut cli_enc = Vec::new();
        let mut cli_dec = Vec::new();
        for _ in 0..runs {
            let mut out = None;
            enc.push(time_ms(|| {
                let signed = as2::sign_payload(&sender, "application/fhir+json", "doc.json", &data)?;
                out = Some(as2::envelope(
                    "A",
                    "B",
                    "m@a",
                    "bench",
                    "now",
                    &signed,
                    &rx,
                    &ContentCipher::Aes256Cbc,
                    &KeyTransport::RsaPkcs1,
                    &MdnRequest { notify_to: "A".into(), async_url: None },
                )?);
                Ok(())
            })?);
            let out = out.context("no message")?;
            let h = Headers(out.headers.clone());
            dec.push(time_ms(|| {
                let o = as2::open(&h, &out.body, &recipient, &policy, None).map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::ensure!(o.payload.len() == n, "payload size");
                Ok(())
            })?);
            cli_enc.push(time_ms(|| {
                openssl(
                    dir,
                    &[
                        "cms",
                        "-sign",
                        "-binary",
                        "-nodetach",
                        "-md",
                        "sha256",
                        "-in",
                        "doc.json",
                        "-signer",
                        "s.cert",
                        "-inkey",
                        "s.key",
                        "-outform",
                        "DER",
                        "-out",
                        "s.der",
                    ],
                )?;
                openssl(
                    dir,
                    &[
                        "cms",
                        "-encrypt",
                        "-binary",
                        "-aes-256-cbc",
                        "-in",
                        "s.der",
                        "-outform",
                        "DER",
                        "-out",
                        "e.der",
                        "r.cert",
                    ],
                )
            })?);
            cli_dec.push(time_ms(|| {
                openssl(
                    dir,
                    &[
                        "cms", "-decrypt", "-binary", "-inform", "DER", "-in", "e.der", "-recip", "r.cert", "-inkey",
                        "r.key", "-out", "s2.der",
                    ],
                )?;
                openssl(
                    dir,
                    &[
                        "cms", "-verify", "-binary", "-inform", "DER", "-in", "s2.der", "-CAfile", "s.cert",
                        "-purpose", "any", "-out", "o.bin",
                    ],
                )
            })?);
        }
        let (e, d, ce, cd) = (median(enc), median(dec), median(cli_enc), median(cli_dec));
        println!(
            "{label:>7}  {:>9.2} ms ({:>6.2}/MB)  {:>9.2} ms ({:>6.2}/MB)  {:>6.1}x  {:>9.2} ms ({:>6.2}/MB)  {:>9.2} ms ({:>6.2}/MB)  {:>6.1}x",
            e, e / mb, ce, ce / mb, ce / e, d, d / mb, cd, cd / mb, cd / d
        );
    }
    println!("(ratio = CLI time / mamori time; the CLI runs two commands each way, process start included)");
    Ok(())
}

struct Node {
    running: mamori_server::server::Running,
    base: String,
    client: reqwest::Client,
    admin: String,
}

async fn node(dir: &Path, as2_id: &str) -> Result<Node> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("mamori.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[exchange]\nlisten = \"127.0.0.1:0\"\nas2_id = \"{as2_id}\"\n"),
    )?;
    let running = mamori_server::server::start(mamori_server::server::ServeOptions {
        data: dir.to_owned(),
        listen: None,
        as2_listen: None,
        clock: Arc::new(SystemClock),
    })
    .await?;
    let base = format!("https://localhost:{}", running.addr.port());
    let client = crate::https_client(dir, usize::MAX)?;
    let otp = running.init.as_ref().map(|i| i.admin_password.to_string()).context("fresh directory")?;
    let mut n = Node { running, base, client, admin: String::new() };
    let t = n.login("admin", &otp).await?;
    n.call("/api/v1/auth/password", &t, json!({"current": otp, "new": "Bench password 1!"})).await?;
    n.admin = n.login("admin", "Bench password 1!").await?;
    Ok(n)
}

impl Node {
    async fn login(&self, user: &str, pw: &str) -> Result<String> {
        let r = self
            .client
            .post(format!("{}/api/v1/auth/login", self.base))
            .json(&json!({"username": user, "password": pw}))
            .send()
            .await?
            .json::<Value>()
            .await?;
        Ok(r["token"].as_str().context("login")?.to_owned())
    }
    async fn call(&self, path: &str, tok: &str, body: Value) -> Result<Value> {
        let r = self.client.post(format!("{}{path}", self.base)).bearer_auth(tok).json(&body).send().await?;
        let status = r.status();
        let v = r.json::<Value>().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{path}: HTTP {status}: {v}");
        }
        Ok(v)
    }
    async fn get(&self, path: &str, tok: &str) -> Result<Value> {
        Ok(self.client.get(format!("{}{path}", self.base)).bearer_auth(tok).send().await?.json::<Value>().await?)
    }
    async fn register(&self, other: &Node, id: &str) -> Result<()> {
        let ident = other.get("/api/v1/exchange/identity", &other.admin).await?;
        let t = "bench";
        self.call(
            "/api/v1/partners",
            &self.admin,
            json!({"id": id, "name": id, "as2_id": ident["as2_id"], "endpoint": ident["endpoint"],
                   "relationship": "third_party", "contract": {"reference": "bench"},
                   "demarcation": {"sender_side": t, "path": t, "recipient_side": t, "fault_isolation": t, "stopping": t, "patient_enquiries": t},
                   "network": {"kind": "internet_tls", "secured_by": "institution"}, "purposes": ["referral"],
                   "certificates": {"signing": ident["certificates"]["signing"], "encryption": ident["certificates"]["encryption"], "tls_ca": ident["certificates"]["tls_ca"]}}),
        )
        .await?;
        Ok(())
    }
}

/// AS2 messages per second between two nodes, 1 MB documents, signed MDNs.
async fn end_to_end(dir: &Path, messages: usize) -> Result<()> {
    let a = node(&dir.join("a"), "BENCH-A").await?;
    let b = node(&dir.join("b"), "BENCH-B").await?;
    a.register(&b, "bench-b").await?;
    b.register(&a, "bench-a").await?;
    a.call(
        "/api/v1/users",
        &a.admin,
        json!({"name": "dr", "display": "dr", "roles": ["physician"], "password": "Bench password 1!"}),
    )
    .await?;
    let t = a.login("dr", "Bench password 1!").await?;
    a.call("/api/v1/auth/password", &t, json!({"current": "Bench password 1!", "new": "Bench password 2!"})).await?;
    let dr = a.login("dr", "Bench password 2!").await?;
    let p = a
        .client
        .post(format!("{}/fhir/Patient", a.base))
        .bearer_auth(&dr)
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Bench"}]}).to_string())
        .send()
        .await?
        .json::<Value>()
        .await?["id"]
        .as_str()
        .context("patient")?
        .to_owned();
    a.call("/api/v1/care-assignments", &a.admin, json!({"patient": p, "user": "dr"})).await?;
    // 1 MB of document content (base64 in the Bundle: 1.33 MB on the wire before encryption).
    let att = base64::engine::general_purpose::STANDARD.encode(payload(1 << 20));
    let body = json!({"patient": p, "recipients": ["bench-b"], "purpose": "referral", "note": "bench",
                      "attachments": [{"content_type": "application/pdf", "title": "scan", "data": att}]});
    let start = Instant::now();
    let mut sends = Vec::new();
    for _ in 0..messages {
        let (c, u, tok, b) =
            (a.client.clone(), format!("{}/api/v1/exchange/messages", a.base), dr.clone(), body.clone());
        sends.push(tokio::spawn(async move { c.post(u).bearer_auth(tok).json(&b).send().await.map(|r| r.status()) }));
    }
    for s in sends {
        let st = s.await??;
        anyhow::ensure!(st == 202, "send refused: {st}");
    }
    let accepted = start.elapsed();
    loop {
        let v = a.get("/api/v1/exchange/messages?direction=out&limit=1000", &a.admin).await?;
        let list = v["messages"].as_array().cloned().unwrap_or_default();
        let done = list.iter().filter(|m| m["state"] == "delivered").count();
        if list.iter().any(|m| m["state"] == "failed") {
            bail!("a message failed: {v}");
        }
        if done >= messages {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("timed out with {done}/{messages} delivered");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = start.elapsed().as_secs_f64();
    println!(
        "AS2 end to end, two nodes on loopback: {messages} messages of 1 MB (1.33 MB Bundle) in {total:.2} s = {:.1} messages/s ({:.1} MB/s of documents); all accepted by the API in {:.2} s; each with a verified signed MDN",
        messages as f64 / total,
        messages as f64 / total,
        accepted.as_secs_f64()
    );
    a.running.shutdown().await;
    b.running.shutdown().await;
    Ok(())
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mamori-bench-x-{}", std::process::id()));
    start_fresh(&dir)?;
    std::fs::create_dir_all(&dir)?;
    let runs = a.runs.max(3) * 3;
    let r = crypto(&dir, runs);
    let r2 = if r.is_ok() && a.only.as_deref() != Some("crypto") {
        end_to_end(&dir, a.clients.max(1) * 10).await
    } else {
        Ok(())
    };
    clean_up(&dir);
    r.and(r2)
}
