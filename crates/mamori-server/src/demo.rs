//! `mamori serve --demo`: a small synthetic hospital for a newcomer's
//! first run and for the browser tests. It starts two nodes, the hospital
//! and a partner clinic (in `DIR/partner-node`), seeds them on an empty
//! directory (`mamori_service::demo`: staff of every role, about 50
//! patients, care, the example BCP plan, sealed emergency accounts) and
//! links them for exchange both ways.
//!
//! Every seeded resource carries `meta.security` HTEST (test data). A data
//! directory without the `DEMO` marker is refused: synthetic patients are
//! never mixed into real records.

use mamori_service::demo::{link, seed_clinic, seed_hospital};
use mamori_service::init::DataDir;
use mamori_service::{keys, ServiceError};
use std::path::{Path, PathBuf};

use crate::server::{start, Running, ServeError, ServeOptions};

/// The file that marks a data directory as a demo.
pub const MARKER: &str = "DEMO";
/// The partner node's data directory, inside the demo's.
pub const PARTNER_DIR: &str = "partner-node";

const MAIN_TOML: &str = r#"# mamori demo hospital (synthetic data; `mamori serve --demo`)
[institution]
id = "1319900001"
name = "みまもり総合病院（デモ）/ Mimamori General Hospital (demo)"
node = "HQ"

[exchange]
listen = "127.0.0.1:0"
as2_id = "MAMORI-DEMO-HOSPITAL"
retry_initial_seconds = 1
retry_max_seconds = 5
"#;

const PARTNER_TOML: &str = r#"# the demo's partner clinic (synthetic data)
[server]
listen = "127.0.0.1:0"

[institution]
id = "1319900002"
name = "みなとクリニック（デモ）/ Minato Clinic (demo)"
node = "MC"

[exchange]
listen = "127.0.0.1:0"
as2_id = "MAMORI-DEMO-CLINIC"
retry_initial_seconds = 1
retry_max_seconds = 5
"#;

pub use mamori_service::demo::Credential;

/// What a demo start prints.
pub struct Demo {
    /// The demo hospital's server.
    pub main: Running,
    /// The partner clinic's server.
    pub partner: Running,
    /// The accounts seeded at the first start (empty on a restart).
    pub credentials: Vec<Credential>,
    /// The main node's `admin` one-time password, on the first start.
    pub admin_password: Option<String>,
}

fn err(m: impl Into<String>) -> ServeError {
    ServeError::data_dir(m)
}

fn seeding(e: ServiceError) -> ServeError {
    err(e.message())
}

/// Whether `dir` may be used for the demo, and whether it is new.
fn check_dir(dir: &Path) -> Result<bool, ServeError> {
    let initialized = DataDir(dir.to_owned()).is_initialized();
    if initialized && !dir.join(MARKER).exists() {
        return Err(err(format!(
            "{} holds a real (non-demo) mamori data directory: --demo refuses to add synthetic patients to it; \
             use an empty directory, e.g. `mamori serve --demo --data ./demo-data`",
            dir.display()
        )));
    }
    if !initialized && dir.exists() {
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| err(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "mamori.lock")
            .collect();
        if !foreign.is_empty() {
            return Err(err(format!(
                "{} is not empty (found: {}); the demo needs an empty directory (or delete a half-seeded one)",
                dir.display(),
                foreign.join(", ")
            )));
        }
    }
    Ok(!initialized)
}

/// The `[fhir]` section that loads JP Core and JP-CLINS into a new demo,
/// when `MAMORI_FHIR_JP` names a folder holding them (mamori does not ship
/// them; `docs/fhir-jp.md`); empty otherwise.
fn jp_packages() -> String {
    let Some(d) = std::env::var_os("MAMORI_FHIR_JP").map(PathBuf::from) else { return String::new() };
    let (core, clins) = (d.join("jp-core"), d.join("jp-clins"));
    if !core.join("package.json").is_file() || !clins.join("package.json").is_file() {
        return String::new();
    }
    // A JSON string is a TOML basic string (the same escapes).
    let q = |p: &Path| serde_json::Value::String(p.display().to_string()).to_string();
    format!("\n[fhir]\npackages = [{}, {}]\n", q(&core), q(&clins))
}

/// Starts (and on first start, seeds) the demo hospital and its partner.
pub async fn start_demo(opts: ServeOptions) -> Result<Demo, ServeError> {
    let dir = opts.data.clone();
    let fresh = check_dir(&dir)?;
    let pdir = dir.join(PARTNER_DIR);
    let packages = jp_packages();
    if fresh {
        std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        keys::write_public(&dir.join("mamori.toml"), format!("{MAIN_TOML}{packages}").as_bytes())?;
    }
    let clock = opts.clock.clone();
    let mut main = start(opts).await?;
    let admin_password = main.init.take().map(|i| i.admin_password.to_string());
    if fresh {
        std::fs::create_dir_all(&pdir).map_err(|e| err(format!("{}: {e}", pdir.display())))?;
        keys::write_public(&pdir.join("mamori.toml"), format!("{PARTNER_TOML}{packages}").as_bytes())?;
    }
    let partner_fresh = !DataDir(pdir.clone()).is_initialized();
    let mut partner =
        start(ServeOptions { data: pdir.clone(), listen: None, as2_listen: None, clock: clock.clone() }).await?;
    partner.init.take();
    let mut credentials = Vec::new();
    if fresh {
        credentials = seed_hospital(&main.state, clock.now()).await.map_err(seeding)?;
    }
    if partner_fresh {
        credentials.extend(seed_clinic(&partner.state).await.map_err(seeding)?);
        keys::write_public(&pdir.join(MARKER), b"mamori demo partner node: synthetic data only\n")?;
    }
    link(&main.state, &partner.state, "demo-clinic", "みなとクリニック（デモ）/ Minato Clinic (demo)")
        .await
        .map_err(seeding)?;
    link(&partner.state, &main.state, "demo-hospital", "みまもり総合病院（デモ）/ Mimamori General Hospital (demo)")
        .await
        .map_err(seeding)?;
    if fresh {
        keys::write_public(&dir.join(MARKER), b"mamori demo hospital: synthetic data only (HTEST)\n")?;
    }
    Ok(Demo { main, partner, credentials, admin_password })
}

/// `mamori serve --demo`: runs until a signal.
pub async fn run_demo(opts: ServeOptions) -> Result<(), ServeError> {
    let demo = start_demo(opts).await?;
    let base = demo.main.base_url.clone();
    println!("mamori DEMO: synthetic hospital (every record is test data, meta.security HTEST)");
    println!("mamori: listening on {} (FHIR base {base}/fhir)", demo.main.addr);
    println!("mamori: web UI {base}/ui/   (self-signed certificate: accept it in the browser)");
    println!("mamori: partner clinic node {}/ui/ (exchange partner 'demo-clinic')", demo.partner.base_url);
    if let Some(p) = &demo.admin_password {
        println!("  admin / {p}   (one-time: you will be asked to change it)");
    }
    if !demo.credentials.is_empty() {
        println!("demo accounts (shown once; they are also fine to change):");
        for c in &demo.credentials {
            println!("  [{}] {:<16} {:<24} {:<28} {}", c.node, c.user, c.password, c.roles, c.display);
        }
    } else {
        println!("demo accounts: as printed at the first start of this directory");
    }
    let st = demo.main.state.clone();
    tokio::select! {
        _ = crate::server::shutdown_signal() => {},
        _ = st.restart.notified() => {},
    }
    demo.main.shutdown().await;
    demo.partner.shutdown().await;
    Ok(())
}

/// The path of a demo directory's partner node.
pub fn partner_dir(dir: &Path) -> PathBuf {
    dir.join(PARTNER_DIR)
}
