//! `mamori-bench export`: FHIR Bulk Data `$export` of 10,000 patients /
//! 1,000,000 resources by a physician caring for all of them (every
//! resource decided as a read, one audit event per patient, NDJSON files
//! stored), against a raw SQLite scan that copies the same rows' JSON into
//! NDJSON in memory, in the same run.

use std::time::Instant;

use anyhow::{Context, Result};
use mamori_core::ids::UserId;
use mamori_core::policy::{Role, SubjectKind};
use mamori_service::bulk::{self, Level, Status};
use mamori_service::{Actor, RequestCtx};
use mamori_store::accounts;

use crate::{clean_up, Args};

/// The raw baseline: every current resource's JSON, read in type and id
/// order and copied into NDJSON lines; returns (resources, bytes).
fn raw_scan(db: &std::path::Path) -> Result<(u64, u64)> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut st = c.prepare(
        "SELECT v.body FROM resources r JOIN resource_versions v \
         ON v.rtype = r.rtype AND v.id = r.id AND v.version = r.version \
         WHERE r.deleted = 0 ORDER BY r.rtype, r.id",
    )?;
    let mut rows = st.query([])?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 20);
    while let Some(r) = rows.next()? {
        let body: String = r.get(0)?;
        buf.extend(body.bytes().filter(|b| *b != b'\n' && *b != b'\r'));
        buf.push(b'\n');
        n += 1;
        if buf.len() > (4 << 20) {
            bytes += buf.len() as u64;
            buf.clear();
        }
    }
    bytes += buf.len() as u64;
    Ok((n, bytes))
}

pub(crate) async fn run(a: &Args) -> Result<()> {
    let patients: u64 = if a.clients > 0 { a.clients as u64 } else { 10_000 };
    let per: u64 = 100;
    let dir = std::env::temp_dir().join(format!("mamori-bench-x-{}", std::process::id()));
    let running = crate::serve_in(&dir, "normal", false).await?;
    let st = running.state.clone();
    println!("loading {patients} patients x {per} resources ({} resources) directly into the store...", patients * per);
    let t = Instant::now();
    let ids = crate::continuity::load(&st, 0..patients, per).await?;
    // One physician caring for every patient: the export holds all of it.
    let name = UserId::parse("bench.dr").map_err(|e| anyhow::anyhow!("{e}"))?;
    let n2 = name.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::create_user(
                    w.conn,
                    &accounts::NewUser {
                        name: &n2,
                        display: "bench",
                        kind: SubjectKind::Staff,
                        department: None,
                        roles: &[Role::Physician],
                        password_hash: None,
                        must_change: false,
                        created_by: "bench",
                    },
                    w.now,
                )?;
                for p in &ids {
                    accounts::assign_care_unchecked(w.conn, p, n2.as_str(), "bench", w.now)?;
                }
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    println!("  loaded in {:.1} s", t.elapsed().as_secs_f64());
    let user = st.store.read(move |c| accounts::get_user(c, name.as_str())).await?.context("bench user")?;

    let mut secs = Vec::new();
    let mut raw = Vec::new();
    let mut exported = 0u64;
    for run in 0..a.runs.max(1) {
        let actor = Actor::account(
            user.clone(),
            mamori_service::actor::TokenRef { id: format!("bench-{run}"), issuer: None },
            None,
            RequestCtx::background(st.mode.get()),
        );
        let t = Instant::now();
        let k = bulk::kickoff(&st, &actor, Level::System, &[], Some("respond-async"), "bench")
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let manifest = loop {
            match bulk::status(&st, &actor, &k.id).await.map_err(|e| anyhow::anyhow!("{}", e.message()))? {
                Status::Complete(m, _) => break m,
                Status::Failed(why) => anyhow::bail!("export failed: {why}"),
                Status::InProgress(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        secs.push(t.elapsed().as_secs_f64());
        exported =
            manifest["output"].as_array().map(|o| o.iter().filter_map(|f| f["count"].as_u64()).sum()).unwrap_or(0);
        anyhow::ensure!(exported == patients * per, "the export holds {exported} resources");
        bulk::cancel(&st, &actor, &k.id).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let t = Instant::now();
        let (n, _) = raw_scan(&dir.join("mamori.db"))?;
        raw.push(t.elapsed().as_secs_f64());
        anyhow::ensure!(n == patients * per, "the raw scan found {n} resources");
    }
    let (s, r) = (crate::median(secs), crate::median(raw));
    let (_, bytes) = raw_scan(&dir.join("mamori.db"))?;
    println!(
        "export of {exported} resources ({:.0} MB NDJSON, {patients} patients): {s:.2} s, {:.0} resources/s",
        bytes as f64 / (1 << 20) as f64,
        exported as f64 / s
    );
    println!(
        "  raw SQLite scan of the same rows into NDJSON: {r:.2} s, {:.0} resources/s   ratio {:.2}",
        exported as f64 / r,
        r / s
    );
    running.shutdown().await;
    clean_up(&dir);
    Ok(())
}
