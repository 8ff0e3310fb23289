//! `mamori copy-to-postgres`: moves an embedded SQLite data directory's
//! database into PostgreSQL, then proves the move: row counts per table and
//! the audit log verified on the target with the institution's key.

use std::path::Path;

use anyhow::{bail, Context, Result};
use mamori_service::config::Config;
use mamori_service::init::{lock_dir, DataDir};
use mamori_store::pg::PgConn;
use mamori_store::{audit_log, copy, redact_url};

use crate::audit::{parse_key, print_report};

pub(crate) fn copy_to_postgres(dir: &Path, url: &str) -> Result<()> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        bail!("{} is not an initialized mamori data directory", dir.display());
    }
    let cfg = Config::load(dir)?;
    if !cfg.database.url.trim().is_empty() {
        bail!("{} is already on PostgreSQL (database.url is set)", dir.display());
    }
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        bail!("--url must be a postgres:// URL");
    }
    // No server may write to the source meanwhile.
    let _lock = lock_dir(dir).context("stop the server first")?;
    let mut src = rusqlite::Connection::open_with_flags(dd.db(), rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", dd.db().display()))?;
    let mut dst = PgConn::connect(url).with_context(|| format!("connecting to {}", redact_url(url)))?;
    let started = std::time::Instant::now();
    let counts = copy::sqlite_to_postgres(&mut src, &mut dst)?;
    let rows: u64 = counts.iter().map(|(_, n)| n).sum();
    println!(
        "copied {rows} rows in {} tables to {} in {:.1} s; row counts match:",
        counts.len(),
        redact_url(url),
        started.elapsed().as_secs_f64()
    );
    for (t, n) in counts.iter().filter(|(_, n)| *n > 0) {
        println!("  {t:<24} {n}");
    }
    let vkey = parse_key(&dd.audit_vkey().to_string_lossy())?;
    let mut nodes = PgConn::connect(url)?;
    let r = audit_log::verify(&mut dst, Some(&mut nodes), &vkey, &cfg.audit.origin, true)?;
    print_report(&format!("audit log in {}", redact_url(url)), &r)?;
    println!(
        "next: set [database] url = \"{}\" in {} (or MAMORI_DATABASE_URL) and start mamori serve; \
         the SQLite file is left as it was",
        redact_url(url),
        dir.join("mamori.toml").display()
    );
    Ok(())
}
