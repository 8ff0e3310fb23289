//! `mamori audit ...`: offline verification of a data directory or an
//! export file, exports for external auditors.

use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mamori_audit::note::NoteVerifier;
use mamori_audit::verify::Report;
use mamori_core::time::{Clock, SystemClock};
use mamori_service::config::Config;
use mamori_service::init::DataDir;
use mamori_store::{audit_log, open_conn};

/// A verifier key given inline (`name+id+base64`) or as a file holding one.
pub(crate) fn parse_key(arg: &str) -> Result<NoteVerifier> {
    let text = if Path::new(arg).exists() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_owned()
    };
    NoteVerifier::parse(text.trim())
        .map_err(|e| anyhow::anyhow!("{e}: expected a verifier key like name+1a2b3c4d+AbC... (or a file holding one)"))
}

pub(crate) fn print_report(what: &str, r: &Report) -> Result<()> {
    use base64::Engine;
    if r.ok() {
        println!(
            "OK: {what}: {} events, {} checkpoints verified{}; newest verified checkpoint at size {}; root {}",
            r.events,
            r.checkpoints,
            r.records.map(|n| format!(", {n} record versions match their bound SHA-256")).unwrap_or_default(),
            r.last_good_checkpoint.map_or("none".into(), |s| s.to_string()),
            r.root.map(|h| base64::engine::general_purpose::STANDARD.encode(h)).unwrap_or_default()
        );
        Ok(())
    } else {
        eprintln!("FAILED: {what}: {} problem(s); the first:", r.findings.len());
        for f in &r.findings {
            eprintln!("  - {f}");
        }
        bail!("audit log verification failed: {}", r.findings.first().map(ToString::to_string).unwrap_or_default())
    }
}

/// The PostgreSQL URL of a data directory's configuration, if any.
pub(crate) fn db_url(cfg: &Config) -> Option<String> {
    let u = cfg.database.url.trim();
    (!u.is_empty()).then(|| u.to_owned())
}

pub(crate) fn verify_data(dir: &Path, key: Option<&str>, deep: bool, checkpoints: &[PathBuf]) -> Result<()> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        bail!("{} is not an initialized mamori data directory", dir.display());
    }
    let cfg = Config::load(dir)?;
    let vkey = match key {
        Some(k) => parse_key(k)?,
        None => {
            eprintln!(
                "note: trusting the key in {}; pin the key you recorded at installation with --key",
                dd.audit_vkey().display()
            );
            parse_key(&dd.audit_vkey().to_string_lossy())?
        }
    };
    let outside = checkpoints
        .iter()
        .map(|f| std::fs::read_to_string(f).with_context(|| format!("reading the checkpoint {}", f.display())))
        .collect::<Result<Vec<String>>>()?;
    let url = db_url(&cfg);
    let mut c = open_conn(&dd.db(), url.as_deref(), true)?;
    let mut nodes = open_conn(&dd.db(), url.as_deref(), true)?;
    let started = std::time::Instant::now();
    let r = audit_log::verify_with(c.as_mut(), Some(nodes.as_mut()), &vkey, &cfg.audit.origin, deep, &outside)?;
    eprintln!("verified in {:.2} s", started.elapsed().as_secs_f64());
    print_report(&dir.display().to_string(), &r)
}

pub(crate) fn verify_export(file: &Path, key: &str) -> Result<()> {
    let vkey = parse_key(key)?;
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let (h, r) = audit_log::verify_export(BufReader::new(f), &vkey)?;
    eprintln!(
        "export of {} events [{}..{}) of log '{}', made {}",
        h.end - h.start,
        h.start,
        h.end,
        h.origin,
        h.exported_at
    );
    print_report(&file.display().to_string(), &r)
}

pub(crate) fn export(dir: &Path, out: &PathBuf, from: u64, to: Option<u64>) -> Result<()> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        bail!("{} is not an initialized mamori data directory", dir.display());
    }
    let cfg = Config::load(dir)?;
    let vkey = std::fs::read_to_string(dd.audit_vkey())?.trim().to_owned();
    let mut conn = open_conn(&dd.db(), db_url(&cfg).as_deref(), true)?;
    let c = conn.as_mut();
    let f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {} (it must not exist)", out.display()))?;
    let mut w = BufWriter::new(f);
    let h = match audit_log::export(c, &mut w, &vkey, &cfg.audit.origin, from, to, SystemClock.now()) {
        Ok(h) => h,
        Err(e) => {
            drop(w);
            // A partial export must not be mistaken for a whole one.
            if let Err(r) = std::fs::remove_file(out) {
                eprintln!("note: could not remove the partial export {}: {r}", out.display());
            }
            return Err(e.into());
        }
    };
    println!("exported events [{}..{}) and their checkpoints to {}", h.start, h.end, out.display());
    println!("verify with: mamori audit verify --export {} --key '{}'", out.display(), vkey);
    Ok(())
}
