//! `mamori-bench scale`: whether latency stays flat as the store grows
//! (issue 16). The same operations are timed over HTTPS at 100,000
//! resources and, in the same run, after loading up to `--resources`
//! (default 10,000,000): a read, searches by subject, by code, by a day's
//! date range and by a kana family name, `$everything` and a create. It
//! prints the p99 at each size and their ratio (target: within 2x), the
//! database's plan of each search at each size (a full scan is flagged),
//! and the database's size per resource.
//!
//!   mamori-bench scale [--resources N] [--only sqlite|postgres] [--seconds S] [--clients C]

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mamori_core::fhir::search::parse_query;
use mamori_core::ids::ResourceType;
use mamori_core::time::{Clock, SystemClock};
use mamori_service::records::enc;
use mamori_service::Services;
use mamori_store::search::{page_statement, Restriction};
use mamori_store::sql::{explain, Backend, Val};
use serde_json::Value;

use crate::continuity::{day, CODES};
use crate::{clean_up, load, Args, Load};

/// Resources per patient: the Patient and 99 Observations.
const PER: u64 = 100;
/// The smaller size, measured first.
const SMALL: u64 = 100_000;
/// The physician who searches (cares for every patient, so every match is
/// answered and every search is decided per patient as usual).
const DOCTOR: &str = "dr.bench";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Read,
    Subject,
    Code,
    Date,
    Kana,
    Everything,
    Create,
}

const OPS: [Op; 7] = [Op::Read, Op::Subject, Op::Code, Op::Date, Op::Kana, Op::Everything, Op::Create];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read Observation by id",
            Op::Subject => "Observation?subject=",
            Op::Code => "Observation?code=",
            Op::Date => "Observation?date= (one day)",
            Op::Kana => "Patient?family= (kana)",
            Op::Everything => "Patient/$everything",
            Op::Create => "create Observation",
        }
    }

    /// A search's type and parameters (unencoded), for the `n`th request
    /// over `patients` patients.
    fn search(self, n: u64, patients: u64) -> Option<(&'static str, Vec<(String, String)>)> {
        let p = n % patients;
        let count = ("_count".to_owned(), "20".to_owned());
        let pairs = match self {
            Op::Subject => ("Observation", vec![("subject".to_owned(), format!("Patient/bench-p{p}")), count]),
            Op::Code => (
                "Observation",
                vec![("code".to_owned(), format!("http://loinc.org|{}", CODES[(n % 10) as usize])), count],
            ),
            Op::Date => {
                let k = n % 671;
                (
                    "Observation",
                    vec![
                        ("date".to_owned(), format!("ge{}", day(k))),
                        ("date".to_owned(), format!("lt{}", day(k + 1))),
                        count,
                    ],
                )
            }
            Op::Kana => ("Patient", vec![("family".to_owned(), format!("ヤマダ{}", p % 997)), count]),
            _ => return None,
        };
        Some(pairs)
    }
}

/// A pseudo-random spread of request numbers.
fn spread(i: u64) -> u64 {
    i.wrapping_mul(2_654_435_761) >> 7
}

struct Target {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Target {
    /// One request of `op`; true when it was answered as expected.
    async fn call(&self, op: Op, i: u64, patients: u64) -> bool {
        let n = spread(i);
        let p = n % patients;
        let rb = match op {
            Op::Read => self.client.get(format!("{}/fhir/Observation/bench-o{p}-{}", self.base, 1 + n % (PER - 1))),
            Op::Everything => self.client.get(format!("{}/fhir/Patient/bench-p{p}/$everything", self.base)),
            Op::Create => self
                .client
                .post(format!("{}/fhir/Observation", self.base))
                .header("content-type", "application/fhir+json")
                .body(
                    serde_json::json!({"resourceType": "Observation", "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": CODES[(n % 10) as usize]}]},
                        "subject": {"reference": format!("Patient/bench-p{p}")},
                        "effectiveDateTime": format!("{}T10:00:00+09:00", day(n))})
                    .to_string(),
                ),
            _ => {
                let Some((t, pairs)) = op.search(n, patients) else { return false };
                let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
                self.client.get(format!("{}/fhir/{t}?{}", self.base, q.join("&")))
            }
        };
        match rb.bearer_auth(&self.token).send().await {
            Ok(r) if r.status() == 200 || (op == Op::Create && r.status() == 201) => r.bytes().await.is_ok(),
            _ => false,
        }
    }

    /// Checks that `op` answers with what it should (entries, not a
    /// refusal), so that the figures time real work.
    async fn check(&self, op: Op, patients: u64) -> Result<()> {
        let n = spread(12_345);
        let p = n % patients;
        let url = match op {
            Op::Read | Op::Create => return Ok(()),
            Op::Everything => format!("{}/fhir/Patient/bench-p{p}/$everything?_count=200", self.base),
            _ => {
                let (t, pairs) = op.search(n, patients).context("a search")?;
                let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", enc(v))).collect();
                format!("{}/fhir/{t}?{}", self.base, q.join("&"))
            }
        };
        let r = self.client.get(&url).bearer_auth(&self.token).send().await?;
        let status = r.status();
        let b: Value = r.json().await?;
        let entries = b["entry"].as_array().map_or(0, Vec::len);
        let want = if op == Op::Everything { PER as usize } else { 1 };
        if status != 200 || entries < want {
            bail!("{} answered {status} with {entries} entries (want {want}): {url}", op.name());
        }
        Ok(())
    }
}

/// Loads patients `from..to` (of [`PER`] resources each) and gives the
/// physician their care, printing progress.
async fn grow(st: &Services, from: u64, to: u64) -> Result<()> {
    let t = Instant::now();
    let mut at = from;
    let step = ((to - from) / 20).max(1000);
    while at < to {
        let hi = (at + step).min(to);
        let ids = crate::continuity::load(st, at..hi, PER).await?;
        st.store
            .writer()
            .write(
                move |w| {
                    for p in &ids {
                        mamori_store::accounts::assign_care_unchecked(w.conn, p, DOCTOR, "bench", w.now)?;
                    }
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await?;
        at = hi;
        let secs = t.elapsed().as_secs_f64();
        if at == to {
            analyze(st).await?;
        }
        println!(
            "  loaded {} resources ({} patients) in {secs:.0} s, {:.0} resources/s",
            at * PER,
            at,
            (at - from) as f64 * PER as f64 / secs
        );
    }
    Ok(())
}

/// On PostgreSQL, gathers the statistics its planner chooses by, as
/// autovacuum does in service within a minute of a large change: without
/// them, a freshly loaded table is estimated at one row everywhere.
/// (SQLite plans without statistics; mamori never gathers them there.)
async fn analyze(st: &Services) -> Result<()> {
    if st.store.backend() == Backend::Sqlite {
        return Ok(());
    }
    let t = Instant::now();
    st.store.writer().write(|w| Ok(w.conn.batch("ANALYZE")?), |_, _| Ok(())).await?;
    println!("  ANALYZE in {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

/// Bytes the database holds (tables, indexes, SQLite's WAL).
async fn db_bytes(st: &Services, dir: &std::path::Path) -> Result<u64> {
    let pg = st
        .store
        .read(|c| {
            if c.backend() == Backend::Sqlite {
                return Ok(None);
            }
            let r = c.query_one(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'",
                &[],
            )?;
            Ok(r.map(|r| r.i64(0)).transpose()?)
        })
        .await?;
    if let Some(b) = pg {
        return Ok(u64::try_from(b).unwrap_or(0));
    }
    let mut total = 0;
    for f in ["mamori.db", "mamori.db-wal"] {
        total += std::fs::metadata(dir.join(f)).map_or(0, |m| m.len());
    }
    Ok(total)
}

/// The database's plan of each search (and of `$everything`'s compartment
/// query) as the physician runs it; returns the plans and whether any step
/// reads a whole table.
async fn plans(st: &Services, patients: u64) -> Result<(Vec<(String, Vec<String>)>, bool)> {
    let now = SystemClock.now();
    let restriction = Restriction::CareOf { user: DOCTOR.to_owned(), department: None, now };
    let mut out = Vec::new();
    let mut full = false;
    for op in OPS {
        let n = spread(12_345);
        let (title, lines) = if op == Op::Everything {
            let p = format!("bench-p{}", n % patients);
            let params: Vec<Val<'static>> = vec![p.into(), "".into(), "".into(), 201i64.into()];
            let sql = mamori_store::records::compartment_sql();
            (op.name().to_owned(), st.store.read(move |c| Ok(explain(c, &sql, &params)?)).await?)
        } else if let Some((t, pairs)) = op.search(n, patients) {
            let rtype = ResourceType::parse(t).map_err(|e| anyhow::anyhow!("{e}"))?;
            let (q, _) = parse_query(rtype, &pairs, false).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let r = restriction.clone();
            let lines = st
                .store
                .read(move |c| {
                    let (sql, params) = page_statement(c, &q, &r, &[])?;
                    Ok(explain(c, &sql, &params)?)
                })
                .await?;
            let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (format!("{t}?{}", shown.join("&")), lines)
        } else {
            continue;
        };
        if lines.iter().any(|l| is_full_scan(l, &lines)) {
            full = true;
        }
        out.push((title, lines));
    }
    Ok((out, full))
}

/// Whether a plan line reads a whole table: SQLite's `SCAN table` without
/// an index (a scan of a subquery's own rows, named in `plan` as a
/// `CO-ROUTINE` or `MATERIALIZE`, is not one), PostgreSQL's `Seq Scan`.
fn is_full_scan(line: &str, plan: &[String]) -> bool {
    let l = line.trim_start();
    if l.contains("Seq Scan") {
        return true;
    }
    let Some(what) = l.strip_prefix("SCAN ") else { return false };
    let name = what.split_whitespace().next().unwrap_or("");
    let subquery = plan.iter().any(|p| {
        let p = p.trim_start();
        p == format!("CO-ROUTINE {name}") || p == format!("MATERIALIZE {name}")
    });
    !what.contains("USING") && !what.contains("CONSTANT ROW") && !subquery
}

async fn measure(target: &Arc<Target>, a: &Args, patients: u64) -> Result<Vec<Load>> {
    let mut out = Vec::new();
    for op in OPS {
        target.check(op, patients).await?;
        let t = target.clone();
        let l = load(a.clients, a.seconds, move |i| {
            let t = t.clone();
            async move { t.call(op, i, patients).await }
        })
        .await;
        println!(
            "  {:<30} {:>8.0} /s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ok, {} errors)",
            op.name(),
            l.rate,
            l.p50,
            l.p99,
            l.ops,
            l.errors
        );
        out.push(l);
    }
    Ok(out)
}

async fn report_plans(st: &Services, patients: u64) -> Result<bool> {
    let (plans, full) = plans(st, patients).await?;
    for (title, lines) in plans {
        println!("  plan of {title}:");
        for l in &lines {
            println!("    {l}{}", if is_full_scan(l, &lines) { "   <-- FULL SCAN" } else { "" });
        }
    }
    Ok(full)
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    let large = if a.resources > 0 { a.resources } else { 10_000_000 };
    if large < SMALL * 2 {
        bail!("--resources must be at least {}", SMALL * 2);
    }
    let backend = a.only.as_deref().unwrap_or("sqlite");
    let dir = std::env::temp_dir().join(format!("mamori-bench-s-{}", std::process::id()));
    let running = match backend {
        "sqlite" => crate::serve_in(&dir, "full", false).await?,
        "postgres" => {
            crate::pg::ensure_db()?;
            crate::start_fresh(&dir)?;
            std::fs::create_dir_all(&dir)?;
            let url = format!("{}?options=-csearch_path%3Dbench", crate::pg::pg_url());
            std::fs::write(
                dir.join("mamori.toml"),
                format!("[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{url}\"\n"),
            )?;
            crate::serve_in(&dir, "full", true).await?
        }
        other => bail!("--only sqlite|postgres, not {other}"),
    };
    let st = running.state.clone();
    let base = format!("https://localhost:{}", running.addr.port());
    let client = crate::https_client(&dir, a.clients)?;
    let otp = running.init.as_ref().map(|i| i.admin_password.to_string()).context("fresh directory")?;
    let (_admin, token) = crate::physician(&client, &base, &otp).await?;
    let target = Arc::new(Target { client, base, token });
    println!(
        "mamori-bench scale: {backend}, {} clients, {} s per operation, {SMALL} then {large} resources ({PER} per patient)",
        a.clients, a.seconds
    );

    let (small_p, large_p) = (SMALL / PER, large / PER);
    grow(&st, 0, small_p).await?;
    let small_bytes = db_bytes(&st, &dir).await?;
    println!("at {SMALL} resources: {:.0} bytes per resource", small_bytes as f64 / SMALL as f64);
    let small_full = report_plans(&st, small_p).await?;
    let at_small = measure(&target, a, small_p).await?;

    grow(&st, small_p, large_p).await?;
    let large_bytes = db_bytes(&st, &dir).await?;
    println!(
        "at {large} resources: {:.0} bytes per resource ({:.1} GB)",
        large_bytes as f64 / large as f64,
        large_bytes as f64 / 1e9
    );
    let large_full = report_plans(&st, large_p).await?;
    let at_large = measure(&target, a, large_p).await?;

    println!("p99 at {large} over p99 at {SMALL} (target: at most 2.0):");
    let mut worst: f64 = 0.0;
    for ((op, s), l) in OPS.iter().zip(&at_small).zip(&at_large) {
        let ratio = l.p99 / s.p99.max(0.001);
        worst = worst.max(ratio);
        println!(
            "  {:<30} {:>7.2} ms -> {:>7.2} ms   {ratio:.2}x{}",
            op.name(),
            s.p99,
            l.p99,
            if ratio > 2.0 { "   NOT FLAT" } else { "" }
        );
    }
    println!("worst ratio {worst:.2}; full scans in plans: {}", if small_full || large_full { "yes" } else { "none" });
    running.shutdown().await;
    if backend == "postgres" {
        crate::pg::ensure_db()?;
    }
    clean_up(&dir);
    Ok(())
}
