//! `mamori-bench pg`: audited FHIR creates and reads on PostgreSQL through
//! one and two mamori servers, with `pgbench` (TPC-B-like) on the same
//! PostgreSQL measured in the same run as the baseline.

use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use mamori_core::time::SystemClock;
use mamori_store::sql::Conn;
use serde_json::{json, Value};

use crate::{clean_up, load, median, ok200, patient_json, start_fresh, Args, Load};

const DB: &str = "mamori_bench";

pub(crate) fn pg_url() -> String {
    std::env::var("MAMORI_BENCH_PG").unwrap_or_else(|_| format!("postgres://postgres@127.0.0.1:5432/{DB}"))
}

/// Creates the benchmark database if needed (through the `test` database).
pub(crate) fn ensure_db() -> Result<()> {
    let admin = "postgres://postgres@127.0.0.1:5432/test";
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            let mut c = mamori_store::pg::PgConn::connect(admin)?;
            let exists = c.query_one("SELECT 1 FROM pg_database WHERE datname = $1", mamori_store::p![DB])?.is_some();
            if !exists {
                c.batch(&format!("CREATE DATABASE {DB}"))?;
            }
            let mut b = mamori_store::pg::PgConn::connect(&pg_url())?;
            b.batch(
                "DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench; \
                 DROP SCHEMA IF EXISTS bench_audit CASCADE; CREATE SCHEMA bench_audit",
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("setup thread panicked"))?
    })
}

/// pgbench TPC-B-like on the same server: transactions per second.
fn pgbench(clients: usize, secs: u64) -> Result<f64> {
    let init =
        Command::new("pgbench").args(["-h", "127.0.0.1", "-U", "postgres", "-i", "-q", "-s", "10", DB]).output()?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-c", &clients.to_string(), "-j", "2", "-T", &secs.to_string(), DB])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output: {text}"))?;
    Ok(tps)
}

struct Node {
    running: mamori_server::server::Running,
    base: String,
}

async fn start(dir: &std::path::Path) -> Result<Node> {
    let running = mamori_server::server::start(mamori_server::server::ServeOptions {
        data: dir.to_owned(),
        listen: None,
        as2_listen: None,
        clock: Arc::new(SystemClock),
    })
    .await?;
    let base = format!("https://localhost:{}", running.addr.port());
    Ok(Node { running, base })
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name() == "mamori.lock" {
            continue;
        }
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

async fn creates(c: &reqwest::Client, bases: Vec<String>, tok: &str, clients: usize, secs: u64) -> Load {
    let (c, tok) = (c.clone(), tok.to_owned());
    load(clients, secs, move |i| {
        let (c, tok) = (c.clone(), tok.clone());
        let b = bases[usize::try_from(i).unwrap_or(0) % bases.len()].clone();
        async move {
            matches!(
                c.post(format!("{b}/fhir/Patient"))
                    .bearer_auth(&tok)
                    .header("content-type", "application/fhir+json")
                    .body(patient_json(i).to_string())
                    .send()
                    .await,
                Ok(r) if r.status() == 201
            )
        }
    })
    .await
}

async fn reads(c: &reqwest::Client, bases: Vec<String>, tok: &str, id: &str, clients: usize, secs: u64) -> Load {
    let (c, tok, id) = (c.clone(), tok.to_owned(), id.to_owned());
    load(clients, secs, move |i| {
        let (c, tok) = (c.clone(), tok.clone());
        let url = format!("{}/fhir/Patient/{id}", bases[usize::try_from(i).unwrap_or(0) % bases.len()]);
        async move { ok200(c.get(url).bearer_auth(&tok).send().await).await }
    })
    .await
}

/// A fresh server's physician with a care relationship to one patient:
/// the physician's token and the patient's id.
async fn prepare(client: &reqwest::Client, a1: &Node) -> Result<(String, String)> {
    let otp = a1.running.init.as_ref().map(|i| i.admin_password.to_string()).context("fresh directory")?;
    let (admin, doc) = crate::physician(client, &a1.base, &otp).await?;
    let r = client
        .post(format!("{}/fhir/Patient", a1.base))
        .bearer_auth(&doc)
        .header("content-type", "application/fhir+json")
        .body(patient_json(0).to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "the first patient was refused: {}", r.status());
    let id = r.json::<Value>().await?["id"].as_str().unwrap_or_default().to_owned();
    // Reads need a care relationship to the patient.
    let r = client
        .post(format!("{}/api/v1/care-assignments", a1.base))
        .bearer_auth(&admin)
        .json(&json!({"patient": id, "user": "dr.bench"}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "care assignment refused: {}", r.status());
    let r = client.get(format!("{}/fhir/Patient/{id}", a1.base)).bearer_auth(&doc).send().await?;
    anyhow::ensure!(r.status() == 200, "the physician cannot read the patient: {}", r.status());
    Ok((doc, id))
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    ensure_db()?;
    let url = format!("{}?options=-csearch_path%3Dbench", pg_url());
    let dir = std::env::temp_dir().join(format!("mamori-bench-pg-{}", std::process::id()));
    start_fresh(&dir)?;
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("mamori.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n"),
    )?;
    let a1 = start(&dir).await?;
    let client = crate::https_client(&dir, a.clients)?;
    let (doc, id) = prepare(&client, &a1).await?;

    println!(
        "mamori-bench pg: {} clients, {} s per run, {} runs (medians), HTTPS keep-alive, PostgreSQL {}",
        a.clients,
        a.seconds,
        a.runs,
        mamori_store::redact_url(&pg_url())
    );
    let mut tps = Vec::new();
    for _ in 0..a.runs {
        tps.push(pgbench(a.clients, a.seconds)?);
    }
    let baseline = median(tps);
    println!("baseline  pgbench TPC-B-like (scale 10), {} clients   {:>9.0} tps", a.clients, baseline);

    // The audit benchmark of issue 3 on PostgreSQL: durable appends through
    // the store's group-commit writer, 256 concurrent appenders.
    {
        let pkcs8 = mamori_audit::note::generate_pkcs8()?;
        let signer = Arc::new(mamori_audit::note::NoteSigner::from_pkcs8("bench/audit", &pkcs8)?);
        let cfg = mamori_store::StoreConfig {
            path: dir.join("unused.db"),
            url: Some(format!("{}?options=-csearch_path%3Dbench_audit", pg_url())),
            synchronous: mamori_store::Synchronous::Full,
            readers: 2,
            checkpoint: mamori_store::CheckpointPolicy {
                every_events: 1000,
                every: std::time::Duration::from_secs(60),
            },
            origin: "bench/audit".into(),
            search: Default::default(),
            replica_url: None,
        };
        let store = mamori_store::Store::open(&cfg, Arc::new(SystemClock), signer)?;
        store.set_leader(true);
        let mut runs = Vec::new();
        for _ in 0..a.runs {
            let w = store.writer().clone();
            runs.push(
                load(256, a.seconds, move |i| {
                    let w = w.clone();
                    async move { w.audit(vec![crate::audit_record(i)]).await.is_ok() }
                })
                .await,
            );
        }
        let rate = median(runs.iter().map(|l| l.rate).collect());
        println!(
            "durable audit appends (256 appenders)   {rate:>9.0} /s   p50 {:>6.2} ms  p99 {:>6.2} ms  ratio to pgbench {:.2}",
            median(runs.iter().map(|l| l.p50).collect()),
            median(runs.iter().map(|l| l.p99).collect()),
            rate / baseline
        );
    }

    let report = |name: &str, runs: &[Load]| {
        let rate = median(runs.iter().map(|l| l.rate).collect());
        let p50 = median(runs.iter().map(|l| l.p50).collect());
        let p99 = median(runs.iter().map(|l| l.p99).collect());
        let errors: u64 = runs.iter().map(|l| l.errors).sum();
        println!(
            "{name:<34} {rate:>9.0} /s   p50 {p50:>6.2} ms  p99 {p99:>6.2} ms  errors {errors}  ratio to pgbench {:.2}",
            rate / baseline
        );
    };
    let one = vec![a1.base.clone()];
    let mut c1 = Vec::new();
    let mut r1 = Vec::new();
    for _ in 0..a.runs {
        c1.push(creates(&client, one.clone(), &doc, a.clients, a.seconds).await);
        r1.push(reads(&client, one.clone(), &doc, &id, a.clients, a.seconds).await);
    }
    report("audited creates, 1 server", &c1);
    report("audited reads, 1 server", &r1);

    let dir2 = std::env::temp_dir().join(format!("mamori-bench-pg2-{}", std::process::id()));
    start_fresh(&dir2)?;
    copy_dir(&dir, &dir2)?;
    let a2 = start(&dir2).await?;
    let two = vec![a1.base.clone(), a2.base.clone()];
    let mut c2 = Vec::new();
    let mut r2 = Vec::new();
    for _ in 0..a.runs {
        c2.push(creates(&client, two.clone(), &doc, a.clients, a.seconds).await);
        r2.push(reads(&client, two.clone(), &doc, &id, a.clients, a.seconds).await);
    }
    report("audited creates, 2 servers", &c2);
    report("audited reads, 2 servers", &r2);
    a2.running.shutdown().await;
    a1.running.shutdown().await;

    // The same server on the embedded SQLite database, same machine, same
    // run: what a hospital gives up or gains by moving to PostgreSQL.
    let dir3 = std::env::temp_dir().join(format!("mamori-bench-sqlite-{}", std::process::id()));
    start_fresh(&dir3)?;
    std::fs::create_dir_all(&dir3)?;
    std::fs::write(dir3.join("mamori.toml"), "[server]\nlisten = \"127.0.0.1:0\"\n")?;
    let s1 = start(&dir3).await?;
    let sclient = crate::https_client(&dir3, a.clients)?;
    let (sdoc, sid) = prepare(&sclient, &s1).await?;
    let lite = vec![s1.base.clone()];
    let mut c3 = Vec::new();
    let mut r3 = Vec::new();
    for _ in 0..a.runs {
        c3.push(creates(&sclient, lite.clone(), &sdoc, a.clients, a.seconds).await);
        r3.push(reads(&sclient, lite.clone(), &sdoc, &sid, a.clients, a.seconds).await);
    }
    let rate = |runs: &[Load]| median(runs.iter().map(|l| l.rate).collect());
    let (sc, sr) = (rate(&c3), rate(&r3));
    report("SQLite: audited creates, 1 server", &c3);
    report("SQLite: audited reads, 1 server", &r3);
    println!(
        "PostgreSQL / SQLite: creates 1 server {:.2}, 2 servers {:.2}; reads 1 server {:.2}",
        rate(&c1) / sc,
        rate(&c2) / sc,
        rate(&r1) / sr
    );
    println!("two servers / one (PostgreSQL): creates {:.2}", rate(&c2) / rate(&c1));
    s1.running.shutdown().await;
    clean_up(&dir);
    clean_up(&dir2);
    clean_up(&dir3);
    Ok(())
}
