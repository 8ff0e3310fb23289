//! Reads beside a peer FHIR server, in one run: mamori (its release
//! binary, a child process, HTTPS over HTTP/1.1, every read's audit
//! event committed before the answer) and Helios FHIR Server (`hfs`,
//! SQLite, plain HTTP, no audit), each with the same patients, read by the same load
//! generator, alternating mamori and the peer. Reported per server: reads
//! per second, p50 and p99, and three CPU times per read over the run
//! (from /proc): the server process's, the load generator's (this
//! process), and the whole machine's (busy time of all cores, which also
//! holds the kernel's work for both, such as the journal thread's
//! flushes, that no process is charged for).
//!
//!   MAMORI_BIN=target/release/mamori MAMORI_PEER_BIN=/path/to/hfs \
//!     mamori-bench peer [--seconds 8] [--clients 32] [--runs 3]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{clean_up, load, median, ok200, patient_json, physician, Args, Load};

/// Patients created in each server before the reads.
const PATIENTS: u64 = 2000;

struct Server {
    name: &'static str,
    child: Child,
    base: String,
    client: reqwest::Client,
    token: Option<String>,
    ids: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn bin(var: &str, default: &Path) -> Result<PathBuf> {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| default.to_owned());
    if !p.is_file() {
        bail!("{} not found: build it, or set {var}", p.display());
    }
    Ok(p)
}

/// The process's CPU time (user + system), from /proc.
fn cpu(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    // Linux reports in USER_HZ, 100 on every architecture it runs here.
    Ok(Duration::from_millis(ticks * 10))
}

/// The machine's busy CPU time over all cores (everything but idle and
/// I/O wait), from /proc/stat.
fn machine_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().filter(|l| l.starts_with("cpu ")).context("malformed /proc/stat")?;
    let f: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let busy: u64 = f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum();
    Ok(Duration::from_millis(busy * 10))
}

/// CPU time per read, in ms, of the server, the load generator and the
/// whole machine.
#[derive(Clone, Copy)]
struct PerRead {
    server: f64,
    generator: f64,
    machine: f64,
}

async fn wait_up(client: &reqwest::Client, url: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if client.get(url).send().await.is_ok() {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("{url} did not answer within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn mamori(dir: &Path, clients: usize) -> Result<Server> {
    let exe = bin("MAMORI_BIN", &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/mamori"))?;
    let out = Command::new(&exe).arg("init").arg("--data").arg(dir).output()?;
    if !out.status.success() {
        bail!("mamori init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let port = free_port()?;
    let toml = std::fs::read_to_string(dir.join("mamori.toml"))?;
    let toml = toml.replacen("listen = \"127.0.0.1:8443\"", &format!("listen = \"127.0.0.1:{port}\""), 1);
    if !toml.contains(&format!("127.0.0.1:{port}")) {
        bail!("cannot set the port in {}", dir.join("mamori.toml").display());
    }
    std::fs::write(dir.join("mamori.toml"), toml)?;
    let child = Command::new(&exe)
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // HTTP/1.1, one connection per client, as the peer is read (it serves
    // plain HTTP/1.1). Over HTTP/2 every request shares one connection;
    // measured on the same build: 11.6k reads/s at 0.094 ms of server CPU
    // each, against 15.0k/s at 0.071 ms over HTTP/1.1.
    let client = crate::https_builder(dir, clients)?.http1_only().build()?;
    let base = format!("https://localhost:{port}");
    let mut s = Server { name: "mamori", child, base: format!("{base}/fhir"), client, token: None, ids: Vec::new() };
    wait_up(&s.client, &format!("{base}/healthz")).await?;
    let otp = std::fs::read_to_string(dir.join("initial-admin-password"))?;
    let otp = otp.lines().next().context("initial-admin-password is empty")?.trim().to_owned();
    let (_admin, doc) = physician(&s.client, &base, &otp).await?;
    s.token = Some(doc);
    Ok(s)
}

async fn peer(dir: &Path, clients: usize) -> Result<Server> {
    let exe = bin("MAMORI_PEER_BIN", Path::new("/tmp/helios/bin/hfs"))?;
    let port = free_port()?;
    let child = Command::new(&exe)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--log-level", "warn", "--database-url"])
        .arg(dir.join("hfs.db"))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let client = reqwest::Client::builder().pool_max_idle_per_host(clients).build()?;
    let base = format!("http://127.0.0.1:{port}");
    let s = Server { name: "peer", child, base: base.clone(), client, token: None, ids: Vec::new() };
    wait_up(&s.client, &format!("{base}/metadata")).await?;
    Ok(s)
}

impl Server {
    fn get(&self, url: String) -> reqwest::RequestBuilder {
        let rb = self.client.get(url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    async fn fill(&mut self) -> Result<()> {
        for i in 0..PATIENTS {
            let mut rb = self
                .client
                .post(format!("{}/Patient", self.base))
                .header("content-type", "application/fhir+json")
                .body(patient_json(i).to_string());
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            let r = rb.send().await?;
            if r.status() != 201 {
                bail!("{}: create answered {}: {}", self.name, r.status(), r.text().await.unwrap_or_default());
            }
            let v: serde_json::Value = r.json().await?;
            self.ids.push(v["id"].as_str().context("created without an id")?.to_owned());
        }
        // Every one reads back (the peer's base path and ids are right).
        for id in self.ids.iter().take(5) {
            let r = self.get(format!("{}/Patient/{id}", self.base)).send().await?;
            if r.status() != 200 {
                bail!("{}: read answered {}", self.name, r.status());
            }
        }
        Ok(())
    }

    /// One run of reads: the load, and the CPU spent per read.
    async fn reads(&self, clients: usize, secs: u64) -> Result<(Load, PerRead)> {
        let pid = self.child.id();
        let before = (cpu(pid)?, cpu(std::process::id())?, machine_cpu()?);
        let (client, base, token) = (self.client.clone(), self.base.clone(), self.token.clone());
        let ids = std::sync::Arc::new(self.ids.clone());
        let l = load(clients, secs, move |i| {
            let (client, base, token, ids) = (client.clone(), base.clone(), token.clone(), ids.clone());
            async move {
                let id = &ids[(i.wrapping_mul(2_654_435_761) % ids.len() as u64) as usize];
                let mut rb = client.get(format!("{base}/Patient/{id}"));
                if let Some(t) = &token {
                    rb = rb.bearer_auth(t);
                }
                ok200(rb.send().await).await
            }
        })
        .await;
        let after = (cpu(pid)?, cpu(std::process::id())?, machine_cpu()?);
        let per = |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1000.0 / l.ops.max(1) as f64;
        let p = PerRead {
            server: per(after.0, before.0),
            generator: per(after.1, before.1),
            machine: per(after.2, before.2),
        };
        Ok((l, p))
    }
}

/// One server's figures over the runs.
#[derive(Clone, Default)]
struct Figures {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    server: Vec<f64>,
    generator: Vec<f64>,
    machine: Vec<f64>,
    errors: u64,
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    let root = std::env::temp_dir().join(format!("mamori-bench-peer-{}", std::process::id()));
    crate::start_fresh(&root)?;
    let (md, pd) = (root.join("mamori"), root.join("peer"));
    std::fs::create_dir_all(&pd)?;
    let mut m = mamori(&md, a.clients).await?;
    let mut p = peer(&pd, a.clients).await?;
    m.fill().await?;
    p.fill().await?;
    println!(
        "mamori-bench peer: {} clients, {} s per run, {} runs each, alternating; {PATIENTS} patients in each; \
         mamori over HTTPS (HTTP/1.1) with an audit event committed (synchronous=full) before each answer; the peer over HTTP without audit",
        a.clients, a.seconds, a.runs
    );
    let mut figures: Vec<Figures> = vec![Figures::default(), Figures::default()];
    for round in 0..a.runs {
        for (k, s) in [&m, &p].into_iter().enumerate() {
            let (l, c) = s.reads(a.clients, a.seconds).await?;
            println!(
                "  round {}: {:<6} reads {:>8.0} /s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
                 cpu/read: server {:.3} ms, generator {:.3} ms, machine {:.3} ms  errors {}",
                round + 1,
                s.name,
                l.rate,
                l.p50,
                l.p99,
                c.server,
                c.generator,
                c.machine,
                l.errors
            );
            let f = &mut figures[k];
            f.rate.push(l.rate);
            f.p50.push(l.p50);
            f.p99.push(l.p99);
            f.server.push(c.server);
            f.generator.push(c.generator);
            f.machine.push(c.machine);
            f.errors += l.errors;
        }
    }
    let mut rates = Vec::new();
    for (k, s) in [&m, &p].into_iter().enumerate() {
        let f = figures[k].clone();
        let rate = median(f.rate);
        rates.push(rate);
        println!(
            "{:<6}  reads {:>8.0} /s  p50 {:>6.2} ms  p99 {:>6.2} ms  \
             cpu/read: server {:.3} ms, generator {:.3} ms, machine {:.3} ms  errors {}",
            s.name,
            rate,
            median(f.p50),
            median(f.p99),
            median(f.server),
            median(f.generator),
            median(f.machine),
            f.errors
        );
    }
    println!("ratio   mamori / peer reads: {:.2}x", rates[0] / rates[1].max(1e-9));
    drop(m);
    drop(p);
    clean_up(&root);
    Ok(())
}
