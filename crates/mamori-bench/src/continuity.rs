//! `mamori-bench continuity`: snapshot creation and verification for
//! 10,000 patients / 1,000,000 resources against raw AES-256-GCM + SHA-256
//! on the same number of bytes, and reconciliation import speed.

use std::time::Instant;

use anyhow::{Context, Result};
use mamori_core::ids::ResourceType;
use mamori_exchange::cms::{self, Identity};
use mamori_server::continuity::container::{self, b64, ContainerError, EXPORT_MAGIC};
use mamori_server::continuity::{snapshot, standalone};
use mamori_store::{continuity as cs, records};
use openssl::symm::{self, Cipher};
use serde_json::{json, Value};

use crate::{clean_up, Args};

/// Ten laboratory and vital-sign codes the Observations cycle through.
pub(crate) const CODES: [&str; 10] =
    ["8867-4", "8480-6", "8462-4", "8310-5", "2339-0", "718-7", "2160-0", "2951-2", "6690-2", "777-3"];

/// The day an Observation was taken: one of 672 days (28 a month) from
/// 2025-01-01, as `YYYY-MM-DD`.
pub(crate) fn day(n: u64) -> String {
    let d = n % 672;
    format!("{}-{:02}-{:02}", 2025 + d / 336, (d / 28) % 12 + 1, d % 28 + 1)
}

fn observation(p: &str, i: u64) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": CODES[(i % 10) as usize]}]},
        "subject": {"reference": format!("Patient/{p}")},
        // Clinic hours in Japan (09:00-17:59 +09:00): the same day in UTC.
        "effectiveDateTime": format!("{}T{:02}:{:02}:00+09:00", day(i), 9 + (i / 7) % 9, i % 60),
        "valueQuantity": {"value": 60 + i % 40, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// Loads the Patients numbered `range` with `per - 1` Observations each
/// directly into the store (ids `bench-p{n}`, `bench-o{n}-{i}`; a kanji
/// and a kana name; codes from [`CODES`], dates by [`day`]), 100 patients
/// per write job; returns the patient ids.
pub(crate) async fn load(st: &mamori_service::Services, range: std::ops::Range<u64>, per: u64) -> Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut lo = range.start;
    while lo < range.end {
        let hi = (lo + 100).min(range.end);
        let made = st
            .store
            .writer()
            .write_exclusive(
                move |w| {
                    let mut made = Vec::new();
                    let rt = ResourceType::parse("Observation")
                        .map_err(|e| mamori_store::StoreError::Internal(e.to_string()))?;
                    for p in lo..hi {
                        let pid = format!("bench-p{p}");
                        let body = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": format!("M{p}")}],
                            "name": [{"family": format!("山田{}", p % 997), "given": ["太郎"]},
                                     {"family": format!("ヤマダ{}", p % 997), "given": ["タロウ"]}],
                            "gender": "male", "birthDate": "1970-01-01"});
                        records::put(w, ResourceType::PATIENT, &pid, body, None, "bench", w.now)?;
                        for i in 1..per {
                            records::put(w, rt, &format!("bench-o{p}-{i}"), observation(&pid, p * per + i), None, "bench", w.now)?;
                        }
                        made.push(pid);
                    }
                    Ok(made)
                },
                |_, _| Ok(()),
            )
            .await?;
        ids.extend(made);
        lo = hi;
    }
    Ok(ids)
}

/// Raw AES-256-GCM (1 MiB chunks) + SHA-256 of the ciphertext, in memory.
fn raw_speed(bytes: usize) -> Result<f64> {
    let chunk = vec![0x5au8; 1 << 20];
    let key = [7u8; 32];
    let t = Instant::now();
    let mut h = openssl::sha::Sha256::new();
    let mut done = 0usize;
    let mut i = 0u64;
    while done < bytes {
        let n = chunk.len().min(bytes - done);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&i.to_be_bytes());
        let mut tag = [0u8; 16];
        let ct = symm::encrypt_aead(Cipher::aes_256_gcm(), &key, Some(&nonce), b"", &chunk[..n], &mut tag)?;
        h.update(&ct);
        h.update(&tag);
        done += n;
        i += 1;
    }
    let _ = h.finish();
    Ok(bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

fn raw_sha256(bytes: usize) -> f64 {
    let chunk = vec![0x5au8; 1 << 20];
    let t = Instant::now();
    let mut h = openssl::sha::Sha256::new();
    let mut done = 0;
    while done < bytes {
        let n = chunk.len().min(bytes - done);
        h.update(&chunk[..n]);
        done += n;
    }
    let _ = h.finish();
    bytes as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64()
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    let patients: u64 = if a.clients > 0 { a.clients as u64 } else { 10_000 };
    let per: u64 = 100;
    // MAMORI_BENCH_DIR keeps the loaded database between runs.
    let keep = std::env::var("MAMORI_BENCH_DIR").ok();
    let dir = keep
        .as_ref()
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("mamori-bench-c-{}", std::process::id())));
    let reuse = keep.is_some() && dir.join("mamori.db").exists();
    let running = crate::serve_in(&dir, "normal", reuse).await?;
    let st = running.state.clone();
    let t = Instant::now();
    let mut ids: Vec<String> = if reuse { (0..patients).map(|p| format!("bench-p{p}")).collect() } else { Vec::new() };
    if !reuse {
        println!(
            "loading {patients} patients x {per} resources ({} resources) directly into the store...",
            patients * per
        );
    }
    if !reuse {
        ids = load(&st, 0..patients, per).await?;
    }
    println!("  loaded in {:.1} s", t.elapsed().as_secs_f64());

    // Custodians: 2 of 3.
    let now = st.store.clock().now();
    let (key, shares) = snapshot::new_key(2, &["a".into(), "b".into(), "c".into()], None, "bench", now)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let k2 = key.clone();
    st.store.writer().write(move |w| cs::insert_key(w.conn, &k2), |_, _| Ok(())).await?;

    let mut create_s = Vec::new();
    let mut verify_s = Vec::new();
    let mut file = None;
    for _ in 0..a.runs.max(1) {
        let t = Instant::now();
        let f = snapshot::create_now(
            &st,
            &mamori_service::Actor::local_operator("bench", mamori_service::RequestCtx::background(st.mode.get())),
        )
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        create_s.push(t.elapsed().as_secs_f64());
        let path = std::path::PathBuf::from(&f.file);
        let t = Instant::now();
        let v = snapshot::verify_file(&path, None, None).map_err(|e| anyhow::anyhow!("{e}"))?;
        verify_s.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(v["resources"].as_u64() >= Some(patients * per), "snapshot holds {} resources", v["resources"]);
        file = Some((path, f));
    }
    let (path, f) = file.context("no snapshot")?;
    let mb = f.bytes as f64 / (1 << 20) as f64;
    let (create, verify) = (crate::median(create_s), crate::median(verify_s));
    let raw = raw_speed(f.bytes as usize)?;
    let raw_hash = raw_sha256(f.bytes as usize);
    println!("snapshot of {} patients / {} resources: {:.1} MB", f.patients, f.resources, mb);
    println!(
        "  create  {:>6.2} s  {:>7.1} MB/s   raw AES-256-GCM + SHA-256 on the same bytes {:>7.1} MB/s   ratio {:.2}",
        create,
        mb / create,
        raw,
        mb / create / raw
    );
    println!(
        "  verify  {:>6.2} s  {:>7.1} MB/s   raw SHA-256 on the same bytes              {:>7.1} MB/s   ratio {:.2}",
        verify,
        mb / verify,
        raw_hash,
        mb / verify / raw_hash
    );
    let m = snapshot::KeyMaterial { shares: vec![shares[0].1.clone(), shares[1].1.clone()], passphrase: None };
    let t = Instant::now();
    let mut n = 0u64;
    let (_, sk) = snapshot::open_file(
        &path,
        &m,
        None,
        |_| Ok(()),
        |_| {
            n += 1;
            Ok(())
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let open = t.elapsed().as_secs_f64();
    println!(
        "  open    {:>6.2} s  {:>7.1} MB/s   ({} resources decrypted and parsed, key recovered from 2 shares)",
        open,
        mb / open,
        n
    );

    // Reconciliation: an export of 10,000 new entries from a node the custodians authorized.
    let entries = 10_000u64;
    let (node_cert, node_key) = standalone::node_identity("BENCH", "bench", &key.id, &sk)?;
    let node = Identity::from_pem(node_cert.as_bytes(), node_key.as_bytes())?;
    let central = st.exchange.identity.cert.public_key()?;
    let (dk, wrapped, prefix) = snapshot::data_key(&central).map_err(|e| anyhow::anyhow!("{e}"))?;
    let export_id = format!("bench-export-{}", mamori_store::accounts::new_id()?);
    let node_name = format!("B{}", &export_id[export_id.len() - 8..]).to_uppercase();
    let header = json!({"format": "mamori-export/1", "id": export_id, "node": node_name, "node_cert": node_cert,
                        "encryption": {"nonce_prefix": b64(&prefix), "wrapped_key": b64(&wrapped)}});
    let mut w = container::Writer::new(Vec::new(), EXPORT_MAGIC, &header, *dk, prefix)?;
    for i in 0..entries {
        let p = &ids[(i % ids.len() as u64) as usize];
        let mut o = observation(p, i);
        let id = format!("{}-o{i}", node_name.to_lowercase());
        o["id"] = json!(id);
        let e = json!({"entry": format!("{node_name}:Observation/{id}/_history/1"), "t": "Observation", "id": id, "local_version": 1,
                       "base": null, "deleted": false, "author": "nurse", "recorded_at": "2026-11-26T10:00:00+09:00", "r": o});
        w.line(e.to_string().as_bytes())?;
    }
    let (buf, _) = w.finish(json!({"entries": entries}), |m| {
        cms::sign_detached(&node, m).map_err(|e| ContainerError::Crypto(e.to_string()))
    })?;
    let base = format!("https://localhost:{}", running.addr.port());
    let client = crate::https_client(&dir, usize::MAX)?;
    let login = |u: &str, p: &str| {
        client.post(format!("{base}/api/v1/auth/login")).json(&json!({"username": u, "password": p})).send()
    };
    if let Some(otp) = running.init.as_ref().map(|i| i.admin_password.to_string()) {
        let t0: Value = login("admin", &otp).await?.json().await?;
        client
            .post(format!("{base}/api/v1/auth/password"))
            .bearer_auth(t0["token"].as_str().unwrap_or(""))
            .json(&json!({"current": otp, "new": "Bench password 1!"}))
            .send()
            .await?;
    }
    let admin: Value = login("admin", "Bench password 1!").await?.json().await?;
    let t = Instant::now();
    let r = client
        .post(format!("{base}/api/v1/reconcile/imports"))
        .bearer_auth(admin["token"].as_str().unwrap_or(""))
        .body(buf)
        .send()
        .await?;
    let status = r.status();
    let rep: Value = r.json().await?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(status == 201, "import: {status} {rep}");
    println!(
        "reconcile import of {entries} entries (verify, decrypt, check, write each with a Provenance, one transaction): {:.2} s = {:.0} entries/s; {}",
        secs,
        entries as f64 / secs,
        rep["report"]["counts"]
    );
    running.shutdown().await;
    if keep.is_none() {
        clean_up(&dir);
    }
    Ok(())
}
