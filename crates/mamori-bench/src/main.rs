//! mamori benchmarks: programs that print figures and, in the same run, the
//! baseline they are compared with. See docs/benchmarks.md.
//!
//!   cargo run --release -p mamori-bench -- fhir [--seconds 10] [--clients 32]
//!   cargo run --release -p mamori-bench -- exchange [--runs 3] [--clients 4] [--only crypto]
//!   cargo run --release -p mamori-bench -- continuity [--runs 1] [--clients PATIENTS]
//!   cargo run --release -p mamori-bench -- pg [--seconds 10] [--clients 32] [--runs 1]
//!   cargo run --release -p mamori-bench -- validate [--seconds 3]
//!   cargo run --release -p mamori-bench -- peer [--seconds 8] [--clients 32] [--runs 3]
//!   cargo run --release -p mamori-bench -- scale [--resources 10000000] [--only sqlite|postgres]
#![forbid(unsafe_code)]

mod continuity;
mod exchange;
mod export;
mod peer;
mod pg;
mod scale;
mod validate;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mamori_core::time::SystemClock;
use serde_json::{json, Value};

pub struct Args {
    pub cmd: String,
    pub seconds: u64,
    pub clients: usize,
    pub runs: usize,
    pub only: Option<String>,
    /// `scale`: resources at the larger size (0: its default).
    pub resources: u64,
}

fn args() -> Result<Args> {
    let mut a = Args { cmd: String::new(), seconds: 8, clients: 0, runs: 3, only: None, resources: 0 };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--clients" => a.clients = it.next().context("--clients N")?.parse()?,
            "--runs" => a.runs = it.next().context("--runs N")?.parse()?,
            "--resources" => a.resources = it.next().context("--resources N")?.parse()?,
            "--only" => a.only = Some(it.next().context("--only creates|reads|searches")?),
            c if a.cmd.is_empty() => a.cmd = c.to_owned(),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

pub fn patient_json(i: u64) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": format!("B{i}")}],
           "name": [{"family": format!("山田{:04}", i % 5000), "given": ["太郎"]}, {"family": format!("ヤマダ{:04}", i % 5000), "given": ["タロウ"]}],
           "gender": "male", "birthDate": "1970-05-01",
           "address": [{"city": "大阪市", "line": ["北区 1-2-3"]}]})
}

/// Baseline: raw SQLite inserts of the same JSON, one durable transaction
/// each, WAL + synchronous=FULL (mamori's default durability).
fn baseline_sqlite(dir: &std::path::Path, n: u64) -> Result<(f64, f64, f64)> {
    let path = dir.join("baseline.db");
    start_fresh(&path)?;
    let c = rusqlite::Connection::open(&path)?;
    c.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; CREATE TABLE r (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
    )?;
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let body = patient_json(i).to_string();
        let t = Instant::now();
        c.execute("INSERT INTO r (id, body) VALUES (?1, ?2)", rusqlite::params![format!("id{i}"), body])?;
        lat.push(t.elapsed());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    Ok((rate, pct(&lat, 0.5), pct(&lat, 0.99)))
}

/// Removes what an earlier run left at `path` (a directory or a file), so
/// that this run starts from nothing; nothing there is fine. A leftover
/// that cannot be removed is an error: figures measured on top of it would
/// mislead.
pub(crate) fn start_fresh(path: &std::path::Path) -> Result<()> {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes a run's scratch directory or file, best effort: the figures are
/// printed, and a leftover in the system's temporary directory harms
/// nothing.
pub(crate) fn clean_up(path: &std::path::Path) {
    let removed = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    removed.ok();
}

pub struct Load {
    pub ops: u64,
    pub rate: f64,
    pub p50: f64,
    pub p99: f64,
    pub errors: u64,
}

pub async fn load<F, Fut>(clients: usize, secs: u64, f: F) -> Load
where
    F: Fn(u64) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = bool> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let lats = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (stop, counter, errors, lats, f) = (stop.clone(), counter.clone(), errors.clone(), lats.clone(), f.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                if f(i).await {
                    mine.push(t.elapsed());
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut l) = lats.lock() {
                l.extend(mine);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        if let Err(e) = t.await {
            eprintln!("a client task failed: {e}; its requests are missing from the figures");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut l = lats.lock().map(|g| g.clone()).unwrap_or_default();
    l.sort();
    Load {
        ops: l.len() as u64,
        rate: l.len() as f64 / elapsed,
        p50: pct(&l, 0.5),
        p99: pct(&l, 0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

pub async fn ok200(r: reqwest::Result<reqwest::Response>) -> bool {
    match r {
        Ok(r) if r.status() == 200 => r.bytes().await.is_ok(),
        _ => false,
    }
}

/// An HTTPS client that trusts the certificate a server made in its data
/// directory `dir`, keeping up to `clients` idle connections (HTTP/2 when
/// the server offers it: all requests share one connection).
pub(crate) fn https_client(dir: &std::path::Path, clients: usize) -> Result<reqwest::Client> {
    Ok(https_builder(dir, clients)?.build()?)
}

/// The builder of [`https_client`], for a client that differs from it.
pub(crate) fn https_builder(dir: &std::path::Path, clients: usize) -> Result<reqwest::ClientBuilder> {
    let pem = std::fs::read(dir.join("tls/cert.pem"))?;
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .pool_max_idle_per_host(clients))
}

/// Writes a fresh data directory's configuration (loopback, the given
/// `database.synchronous`) unless `keep`, and starts a server on it.
pub(crate) async fn serve_in(
    dir: &std::path::Path,
    synchronous: &str,
    keep: bool,
) -> Result<mamori_server::server::Running> {
    if !keep {
        start_fresh(dir)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("mamori.toml"),
            format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nsynchronous = \"{synchronous}\"\n"),
        )?;
    }
    Ok(mamori_server::server::start(mamori_server::server::ServeOptions {
        data: dir.to_path_buf(),
        listen: None,
        as2_listen: None,
        clock: Arc::new(SystemClock),
    })
    .await?)
}

async fn fhir(a: &Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mamori-bench-{}", std::process::id()));
    let running = serve_in(&dir, "full", false).await?;
    let base = format!("https://localhost:{}", running.addr.port());
    let client = https_client(&dir, a.clients)?;
    let otp = running.init.as_ref().map(|i| i.admin_password.to_string()).context("fresh directory")?;
    let (_admin, doc) = physician(&client, &base, &otp).await?;

    println!(
        "mamori-bench fhir: {} clients, {} s per run, {} runs (medians reported), HTTPS keep-alive, synchronous=full",
        a.clients, a.seconds, a.runs
    );
    let mut base_rates = Vec::new();
    let mut base_lat = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let (r, p50, p99) = baseline_sqlite(&dir, 2000)?;
        base_rates.push(r);
        base_lat.0.push(p50);
        base_lat.1.push(p99);
    }
    let baseline = median(base_rates);
    println!(
        "baseline  raw SQLite insert, 1 txn each     {:>9.0} /s   p50 {:>6.2} ms  p99 {:>6.2} ms",
        baseline,
        median(base_lat.0),
        median(base_lat.1)
    );

    let ids: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut results: Vec<(&str, Vec<Load>)> =
        vec![("audited creates", vec![]), ("audited reads", vec![]), ("audited searches", vec![])];
    for _ in 0..a.runs {
        let (c, b, d, ids2) = (client.clone(), base.clone(), doc.clone(), ids.clone());
        let creates = load(a.clients, a.seconds, move |i| {
            let (c, b, d, ids2) = (c.clone(), b.clone(), d.clone(), ids2.clone());
            async move {
                match c
                    .post(format!("{b}/fhir/Patient"))
                    .bearer_auth(&d)
                    .header("content-type", "application/fhir+json")
                    .body(patient_json(i).to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 201 => {
                        if let Some(loc) = r.headers().get("location").and_then(|v| v.to_str().ok()) {
                            if let (Some(id), Ok(mut g)) = (loc.split('/').rev().nth(2), ids2.lock()) {
                                g.push(id.to_owned());
                            }
                        }
                        // A body that cannot be read counts as an error, as in ok200.
                        r.bytes().await.is_ok()
                    }
                    _ => false,
                }
            }
        })
        .await;
        println!("  run: creates {:.0}/s p50 {:.2} ms p99 {:.2} ms", creates.rate, creates.p50, creates.p99);
        results[0].1.push(creates);
        if a.only.as_deref() == Some("creates") {
            continue;
        }
        let all: Arc<Vec<String>> = Arc::new(ids.lock().map(|g| g.clone()).unwrap_or_default());
        let (c, b, d) = (client.clone(), base.clone(), doc.clone());
        let reads = load(a.clients, a.seconds, move |i| {
            let (c, b, d, all) = (c.clone(), b.clone(), d.clone(), all.clone());
            async move {
                let id = all
                    .get((i.wrapping_mul(2_654_435_761) % all.len().max(1) as u64) as usize)
                    .cloned()
                    .unwrap_or_default();
                ok200(c.get(format!("{b}/fhir/Patient/{id}")).bearer_auth(&d).send().await).await
            }
        })
        .await;
        results[1].1.push(reads);
        let (c, b, d) = (client.clone(), base.clone(), doc.clone());
        let searches = load(a.clients / 2, a.seconds, move |i| {
            let (c, b, d) = (c.clone(), b.clone(), d.clone());
            async move {
                // Half by medical record number, half by family name (a
                // handful of matches each), as at a reception desk.
                let url = if i % 2 == 0 {
                    format!("{b}/fhir/Patient?identifier=urn:mrn|B{}", i % 20_000)
                } else {
                    format!(
                        "{b}/fhir/Patient?family={}&_count=10",
                        mamori_service::records::enc(&format!("やまだ{:04}", i % 5000))
                    )
                };
                ok200(c.get(url).bearer_auth(&d).send().await).await
            }
        })
        .await;
        results[2].1.push(searches);
    }
    let mut create_rate = 0.0;
    for (name, runs) in &results {
        let rate = median(runs.iter().map(|l| l.rate).collect());
        let errors: u64 = runs.iter().map(|l| l.errors).sum();
        let ops: u64 = runs.iter().map(|l| l.ops).sum();
        println!(
            "mamori    {name:<32} {:>9.0} /s   p50 {:>6.2} ms  p99 {:>6.2} ms   ({ops} ok, {errors} errors)",
            rate,
            median(runs.iter().map(|l| l.p50).collect()),
            median(runs.iter().map(|l| l.p99).collect())
        );
        if *name == "audited creates" {
            create_rate = rate;
        }
    }
    println!("ratio     audited creates / raw insert baseline: {:.2}x", create_rate / baseline);
    let audit: i64 =
        rusqlite::Connection::open(dir.join("mamori.db"))?
            .query_row("SELECT COUNT(*) FROM audit_events", [], |r| r.get(0))?;
    println!("audit     events committed during the run: {audit}");
    running.shutdown().await;
    clean_up(&dir);
    Ok(())
}

pub fn audit_record(i: u64) -> mamori_audit::event::AuditRecord {
    use mamori_audit::event::{Agent, AuditRecord, Entity};
    AuditRecord {
        time: mamori_core::time::Timestamp(1_795_000_000_000_000 + i as i64 * 1000).to_rfc3339(),
        mode: "normal".into(),
        agent: Agent {
            user: format!("dr.{}", i % 50),
            kind: "staff".into(),
            roles: vec!["physician".into()],
            declared: None,
            address: Some("10.1.2.3".into()),
            issuer: None,
            token: None,
        },
        action: "read".into(),
        entity: Some(Entity {
            rtype: "Observation".into(),
            id: Some(format!("01a2175b-45fe-75e7-a988-{:012x}", i)),
            version: Some(1),
        }),
        patients: vec![format!("01a2175b-45fd-7422-bc3f-{:012x}", i % 10_000)],
        status: 200,
        basis: Some("care-relationship".into()),
        purpose: Some("TREAT".into()),
        request: Some(format!("{i:016x}")),
        query: None,
        detail: None,
        versions: Vec::new(),
    }
}

fn open_store(dir: &std::path::Path) -> Result<(mamori_store::Store, mamori_audit::note::NoteVerifier)> {
    let pkcs8 = mamori_audit::note::generate_pkcs8()?;
    let signer = Arc::new(mamori_audit::note::NoteSigner::from_pkcs8("bench/audit", &pkcs8)?);
    let v = signer.verifier();
    let cfg = mamori_store::StoreConfig {
        path: dir.join("audit.db"),
        url: None,
        synchronous: mamori_store::Synchronous::Full,
        readers: 2,
        checkpoint: mamori_store::CheckpointPolicy { every_events: 1000, every: Duration::from_secs(60) },
        origin: "bench/audit".into(),
        search: Default::default(),
        replica_url: None,
    };
    Ok((mamori_store::Store::open(&cfg, Arc::new(SystemClock), signer)?, v))
}

/// Baseline: one event per write + fdatasync, on the same disk.
fn baseline_fsync(dir: &std::path::Path, secs: u64) -> Result<(f64, f64, f64)> {
    use std::io::Write;
    let path = dir.join("baseline.log");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    let mut lat = Vec::new();
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        let leaf = audit_record(i).leaf_bytes();
        let t = Instant::now();
        f.write_all(&leaf)?;
        f.sync_data()?;
        lat.push(t.elapsed());
        i += 1;
    }
    let rate = i as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    clean_up(&path);
    Ok((rate, pct(&lat, 0.5), pct(&lat, 0.99)))
}

async fn audit(a: &Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mamori-bench-audit-{}", std::process::id()));
    start_fresh(&dir)?;
    std::fs::create_dir_all(&dir)?;
    println!(
        "mamori-bench audit: {} concurrent appenders, {} s per run, {} runs (medians), synchronous=full",
        a.clients, a.seconds, a.runs
    );
    let mut base = Vec::new();
    for _ in 0..a.runs {
        base.push(baseline_fsync(&dir, a.seconds.min(3))?);
    }
    let b_rate = median(base.iter().map(|x| x.0).collect());
    println!(
        "baseline  one fsync per event (write + fdatasync)   {:>9.0} /s   p50 {:>6.2} ms  p99 {:>6.2} ms",
        b_rate,
        median(base.iter().map(|x| x.1).collect()),
        median(base.iter().map(|x| x.2).collect())
    );
    let (store, vkey) = open_store(&dir)?;
    let mut runs = Vec::new();
    for _ in 0..a.runs {
        let w = store.writer().clone();
        let l = load(a.clients, a.seconds, move |i| {
            let w = w.clone();
            async move { w.audit(vec![audit_record(i)]).await.is_ok() }
        })
        .await;
        runs.push(l);
    }
    let rate = median(runs.iter().map(|l| l.rate).collect());
    println!(
        "mamori    durable audit appends (group commit)      {:>9.0} /s   p50 {:>6.2} ms  p99 {:>6.2} ms",
        rate,
        median(runs.iter().map(|l| l.p50).collect()),
        median(runs.iter().map(|l| l.p99).collect())
    );
    println!("ratio     group commit / one fsync per event: {:.1}x", rate / b_rate);
    if a.only.as_deref() == Some("appends") {
        return Ok(());
    }

    // verify: fill to 1,000,000 events, then verify and compare with
    // hashing the same leaf bytes.
    let target = 1_000_000u64;
    let have = store.read(|c| mamori_store::audit_log::size(c)).await?;
    let t = Instant::now();
    let mut i = have;
    let mut inflight = Vec::new();
    while i < target {
        let n = (target - i).min(2000);
        let recs: Vec<_> = (i..i + n).map(audit_record).collect();
        inflight.push(tokio::spawn({
            let w = store.writer().clone();
            async move { w.audit(recs).await }
        }));
        if inflight.len() >= 4 {
            for h in inflight.drain(..) {
                h.await??;
            }
        }
        i += n;
    }
    for h in inflight.drain(..) {
        h.await??;
    }
    store.writer().write(|w| w.checkpoint("bench").map(|_| ()), |_, _| Ok(())).await?;
    println!(
        "fill      {} events appended in batches of 2000 in {:.1} s",
        target.saturating_sub(have),
        t.elapsed().as_secs_f64()
    );
    drop(store);
    let db = dir.join("audit.db");
    let mut results = Vec::new();
    for deep in [false, true] {
        let mut c = mamori_store::open_sqlite(&db, mamori_store::Synchronous::Full, true)?;
        let mut n = mamori_store::open_sqlite(&db, mamori_store::Synchronous::Full, true)?;
        let t = Instant::now();
        let r = mamori_store::audit_log::verify(&mut c, Some(&mut n), &vkey, "bench/audit", deep)?;
        let secs = t.elapsed().as_secs_f64();
        if !r.ok() {
            bail!("verification failed: {:?}", r.findings.first());
        }
        results.push((deep, r.events, secs));
    }
    // Baseline: SHA-256 of the same leaf bytes, already in memory.
    let c = rusqlite::Connection::open(&db)?;
    let mut st = c.prepare("SELECT leaf FROM audit_events ORDER BY seq")?;
    let leaves: Vec<Vec<u8>> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    let bytes: usize = leaves.iter().map(Vec::len).sum();
    let mut hash_secs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let mut acc = 0u8;
        for l in &leaves {
            acc ^= ring::digest::digest(&ring::digest::SHA256, l).as_ref()[0];
        }
        std::hint::black_box(acc);
        hash_secs.push(t.elapsed().as_secs_f64());
    }
    let hs = median(hash_secs);
    let hash_rate = leaves.len() as f64 / hs;
    println!(
        "baseline  raw SHA-256 of the same {} leaves ({:.0} MB)   {:>9.0} events/s  ({:.0} MB/s)",
        leaves.len(),
        bytes as f64 / 1e6,
        hash_rate,
        bytes as f64 / 1e6 / hs
    );
    for (deep, n, secs) in results {
        let rate = n as f64 / secs;
        println!(
            "mamori    audit verify {:<27} {:>9.0} events/s  ({n} events in {secs:.2} s)   ratio to raw hashing {:.2}",
            if deep { "(deep: + indexes, nodes)" } else { "(leaves, tree, checkpoints)" },
            rate,
            rate / hash_rate
        );
    }
    clean_up(&dir);
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    let mut a = a;
    if a.clients == 0 {
        a.clients = match a.cmd.as_str() {
            "audit" => 256,
            "exchange" => 4,
            "continuity" => 10_000,
            "export" => 10_000,
            _ => 32,
        };
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match a.cmd.as_str() {
        "fhir" => rt.block_on(fhir(&a)),
        "audit" => rt.block_on(audit(&a)),
        "exchange" => rt.block_on(exchange::run(&a)),
        "continuity" => rt.block_on(continuity::run(&a)),
        "export" => rt.block_on(export::run(&a)),
        "pg" => rt.block_on(pg::run(&a)),
        "peer" => rt.block_on(peer::run(&a)),
        "scale" => rt.block_on(scale::run(&a)),
        "validate" => validate::run(&a),
        _ => bail!(
            "usage: mamori-bench (fhir|audit|exchange|continuity|export|pg|peer|scale|validate) [--seconds N] [--clients N] [--runs N]"
        ),
    }
}

/// The first login of an account created with "Bench password 1!": the
/// password is changed (as a first login must) and a new session opened.
/// On a fresh server: the administrator's password changed, a second
/// administrator, and a physician `dr.bench` whose clinical role the
/// second one approved (separation of duties). Returns the first
/// administrator's and the physician's tokens.
pub(crate) async fn physician(client: &reqwest::Client, base: &str, otp: &str) -> Result<(String, String)> {
    let post = |path: &str, tok: Option<&str>, body: Value| {
        let mut rb = client.post(format!("{base}{path}")).json(&body);
        if let Some(t) = tok {
            rb = rb.bearer_auth(t);
        }
        rb.send()
    };
    let tok =
        post("/api/v1/auth/login", None, json!({"username": "admin", "password": otp})).await?.json::<Value>().await?
            ["token"]
            .as_str()
            .unwrap_or("")
            .to_owned();
    post("/api/v1/auth/password", Some(&tok), json!({"current": otp, "new": "Bench password 1!"})).await?;
    let admin = post("/api/v1/auth/login", None, json!({"username": "admin", "password": "Bench password 1!"}))
        .await?
        .json::<Value>()
        .await?["token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    // A clinical role waits for a second administrator's approval.
    post(
        "/api/v1/users",
        Some(&admin),
        json!({"name": "adm2", "display": "Second admin", "roles": ["admin"], "password": "Bench password 1!"}),
    )
    .await?;
    let admin2 = first_login(&post, "adm2").await?;
    let created = post(
        "/api/v1/users",
        Some(&admin),
        json!({"name": "dr.bench", "display": "Bench", "roles": ["physician"], "password": "Bench password 1!"}),
    )
    .await?
    .json::<Value>()
    .await?;
    let req = created["pending_request"].as_i64().context("the physician grant awaits approval")?;
    let r = post(&format!("/api/v1/account-requests/{req}/approve"), Some(&admin2), json!({})).await?;
    anyhow::ensure!(r.status().is_success(), "approval refused: {}", r.status());
    let doc = first_login(&post, "dr.bench").await?;
    Ok((admin, doc))
}

pub(crate) async fn first_login<F, Fut>(post: &F, user: &str) -> anyhow::Result<String>
where
    F: Fn(&str, Option<&str>, Value) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let login = |pw: &'static str| post("/api/v1/auth/login", None, json!({"username": user, "password": pw}));
    let t = login("Bench password 1!").await?.json::<Value>().await?["token"].as_str().unwrap_or("").to_owned();
    post("/api/v1/auth/password", Some(&t), json!({"current": "Bench password 1!", "new": "Bench password 2!"}))
        .await?;
    Ok(login("Bench password 2!").await?.json::<Value>().await?["token"].as_str().unwrap_or("").to_owned())
}
