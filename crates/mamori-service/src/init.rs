//! A data directory: its layout, first-run initialization (configuration,
//! keys, TLS certificate, database, the `admin` account with a one-time
//! password), its lock, and opening the [`Services`] over it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mamori_audit::note::{generate_pkcs8, NoteSigner, NoteVerifier};
use mamori_core::ids::UserId;
use mamori_core::mode::Mode;
use mamori_core::policy::{Role, SubjectKind};
use mamori_core::time::Clock;
use mamori_store::accounts::{self, NewUser};
use mamori_store::{CheckpointPolicy, Store, StoreConfig, StoreError, Synchronous};
use serde_json::json;
use zeroize::Zeroizing;

use crate::actor::RequestCtx;
use crate::config::{Config, ConfigError};
use crate::keys::{self, KeyError};
use crate::services::Services;
use crate::tls::TlsError;

/// Why a data directory could not be initialized or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The configuration is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A key file is missing, unreadable or too open.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A certificate or key for TLS is wrong.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The database.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The directory itself.
    #[error("{0}")]
    DataDir(String),
}

/// Paths inside a data directory.
pub struct DataDir(pub PathBuf);

/// The maintenance CA's certificate (issues maintenance people's
/// client certificates).
pub const MAINT_CA_CERT: &str = "keys/maint-ca.cert.pem";
/// The maintenance CA's key.
pub const MAINT_CA_KEY: &str = "keys/maint-ca.key.pem";

impl DataDir {
    /// The SQLite database.
    pub fn db(&self) -> PathBuf {
        self.0.join("mamori.db")
    }
    /// The audit log's signing key.
    pub fn audit_key(&self) -> PathBuf {
        self.0.join("keys/audit.key")
    }
    /// The audit log's verifier key.
    pub fn audit_vkey(&self) -> PathBuf {
        self.0.join("keys/audit.vkey")
    }
    /// A configured path, relative to the directory unless absolute.
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.0.join(p)
        }
    }
    /// The file holding the `admin` account's one-time password from
    /// initialization until it is changed.
    pub fn admin_password_file(&self) -> PathBuf {
        self.0.join("initial-admin-password")
    }
    fn marker(&self) -> PathBuf {
        self.0.join(".initializing")
    }
    /// Initialized: the institution's keys are there and no initialization
    /// is in progress (the database may be SQLite here or PostgreSQL).
    pub fn is_initialized(&self) -> bool {
        self.audit_vkey().exists() && !self.marker().exists()
    }
}

/// Holds the data directory's lock for as long as it lives.
pub struct DirLock(#[allow(dead_code)] File);

/// Takes the exclusive lock on a data directory (one server at a time;
/// offline commands refuse to write while a server runs).
pub fn lock_dir(dir: &Path) -> Result<DirLock, InitError> {
    let path = dir.join("mamori.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| InitError::DataDir(format!("{}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(DirLock(f)),
        Err(_) => Err(InitError::DataDir(format!(
            "{} is in use by a running mamori server; stop it, or use the server's API (--server/--token)",
            dir.display()
        ))),
    }
}

/// What first-run initialization produced, shown once to the operator.
pub struct InitReport {
    /// The `admin` account's one-time password.
    pub admin_password: Zeroizing<String>,
    /// The audit log's verifier key.
    pub vkey: String,
    /// The TLS certificate's SHA-256 fingerprint.
    pub tls_fingerprint: String,
}

/// Loads the audit signer and its public key.
pub fn load_signer(dd: &DataDir) -> Result<(Arc<NoteSigner>, NoteVerifier), InitError> {
    let vkey_text = std::fs::read_to_string(dd.audit_vkey()).map_err(|e| KeyError::Io(dd.audit_vkey(), e))?;
    let v = NoteVerifier::parse(vkey_text.trim()).map_err(|e| KeyError::Format(dd.audit_vkey(), e.to_string()))?;
    let pem = keys::read_secret(&dd.audit_key())?;
    let der = keys::pem_der(&dd.audit_key(), &pem, "PRIVATE KEY")?;
    let s = NoteSigner::from_pkcs8(&v.name, &der).map_err(|e| KeyError::Format(dd.audit_key(), e.to_string()))?;
    if s.verifier() != v {
        return Err(InitError::DataDir("keys/audit.key does not match keys/audit.vkey".into()));
    }
    Ok((Arc::new(s), v))
}

/// The store's settings from the configuration.
pub fn store_config(dd: &DataDir, cfg: &Config) -> Result<StoreConfig, InitError> {
    let url = cfg.database.url.trim();
    Ok(StoreConfig {
        path: dd.db(),
        url: (!url.is_empty()).then(|| url.to_owned()),
        synchronous: if cfg.database.synchronous == "normal" { Synchronous::Normal } else { Synchronous::Full },
        readers: cfg.database.readers,
        checkpoint: CheckpointPolicy {
            every_events: cfg.audit.checkpoint_every_events,
            every: Duration::from_secs(cfg.audit.checkpoint_every_seconds),
        },
        origin: cfg.audit.origin.clone(),
        search: Arc::default(),
        replica_url: Some(cfg.database.replica_url.trim().to_owned()).filter(|u| !u.is_empty() && !url.is_empty()),
    })
}

fn init_files(dd: &DataDir, cfg: &Config) -> Result<(String, String), InitError> {
    let dir = &dd.0;
    keys::create_private_dir(&dir.join("keys"))?;
    keys::create_private_dir(&dir.join("tls"))?;
    if !dir.join("mamori.toml").exists() {
        keys::write_public(&dir.join("mamori.toml"), Config::default_toml().as_bytes())?;
    }
    // The audit log's signing key: Ed25519, named after the log's origin.
    let pkcs8 = generate_pkcs8().map_err(|e| KeyError::Generate(e.to_string()))?;
    let signer = NoteSigner::from_pkcs8(&cfg.audit.origin, &pkcs8).map_err(|e| KeyError::Generate(e.to_string()))?;
    keys::write_secret(&dd.audit_key(), keys::pem("PRIVATE KEY", &pkcs8).as_bytes())?;
    let vkey = signer.verifier().vkey();
    keys::write_public(&dd.audit_vkey(), format!("{vkey}\n").as_bytes())?;
    // TLS for localhost.
    let (cert, key) =
        keys::self_signed_tls("localhost", &cfg.institution.name, &["localhost"], &["127.0.0.1", "::1"], 825)?;
    keys::write_secret(&dd.resolve(&cfg.tls.key), key.as_bytes())?;
    keys::write_public(&dd.resolve(&cfg.tls.cert), cert.as_bytes())?;
    // The institution's S/MIME identity for exchanges with partners.
    let (icert, ikey) = keys::institution_identity(&cfg.institution.name, 825)?;
    keys::write_secret(&dir.join("keys/institution.key.pem"), ikey.as_bytes())?;
    keys::write_public(&dir.join("keys/institution.cert.pem"), icert.as_bytes())?;
    let fp = openssl::x509::X509::from_pem(cert.as_bytes())
        .and_then(|x| x.digest(openssl::hash::MessageDigest::sha256()))
        .map(|d| mamori_audit::merkle::to_hex(&d))
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok((vkey, fp))
}

/// Logs a leftover of an interrupted initialization that could not be
/// removed; one that is not there is the usual case.
fn warn_unless_removed(path: &Path, removed: std::io::Result<()>) {
    if let Err(e) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover of an interrupted initialization");
        }
    }
}

/// Initializes an empty data directory: configuration, keys, TLS
/// certificate, database, and the `admin` account with a one-time password.
pub async fn initialize(dir: &Path, clock: Arc<dyn Clock>) -> Result<InitReport, InitError> {
    let dd = DataDir(dir.to_owned());
    std::fs::create_dir_all(dir).map_err(|e| InitError::DataDir(format!("{}: {e}", dir.display())))?;
    if dd.marker().exists() {
        // An interrupted initialization: start it over.
        for p in ["keys", "tls"] {
            warn_unless_removed(&dir.join(p), std::fs::remove_dir_all(dir.join(p)));
        }
        for p in ["mamori.db", "mamori.db-wal", "mamori.db-shm", "initial-admin-password"] {
            warn_unless_removed(&dir.join(p), std::fs::remove_file(dir.join(p)));
        }
    } else {
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| InitError::DataDir(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "mamori.toml" && n != "mamori.lock")
            .collect();
        if !foreign.is_empty() {
            return Err(InitError::DataDir(format!(
                "{} is neither empty nor a mamori data directory (found: {}); choose an empty directory",
                dir.display(),
                foreign.join(", ")
            )));
        }
    }
    keys::write_public(&dd.marker(), b"initialization in progress\n")?;
    let cfg = Config::load(dir)?;
    let (vkey, tls_fingerprint) = init_files(&dd, &cfg)?;
    let (signer, _) = load_signer(&dd)?;
    let store = Store::open(&store_config(&dd, &cfg)?, clock.clone(), signer)?;
    // A shared database that already holds an institution: another server
    // joins it with a copy of the first server's data directory, never with
    // new keys (its audit log would not verify).
    let users = store.read(|c| Ok(c.query_one("SELECT COUNT(*) FROM users", mamori_store::p![])?)).await?;
    if users.and_then(|r| r.i64(0).ok()).unwrap_or(0) > 0 {
        return Err(InitError::DataDir(
            "the database at database.url already belongs to an initialized mamori; to add a server, \
             copy the first server's data directory (keys, tls, mamori.toml) instead of initializing a new one"
                .into(),
        ));
    }
    let pw = accounts::random_password()?;
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| InitError::DataDir(e.to_string()))??;
    let vk2 = vkey.clone();
    store
        .writer()
        .write(
            move |w| {
                let admin = UserId::parse("admin").map_err(|e| StoreError::Internal(e.to_string()))?;
                accounts::create_user(
                    w.conn,
                    &NewUser {
                        name: &admin,
                        display: "Administrator",
                        kind: SubjectKind::Staff,
                        department: None,
                        roles: &[Role::Admin],
                        password_hash: Some(&hash),
                        must_change: true,
                        created_by: "system",
                    },
                    w.now,
                )?;
                let mut rec =
                    RequestCtx::background(Mode::Normal).record("system", "system", "system-init", 200, w.now);
                rec.detail = Some(json!({"audit_vkey": vk2, "admin": "created with a one-time password"}));
                w.audit(&rec)?;
                w.checkpoint("init")?;
                Ok::<_, StoreError>(())
            },
            |_, _| Ok(()),
        )
        .await?;
    // The one-time password survives whatever happens next (a busy port, a
    // lost terminal): readable by the service user only, removed by the
    // server once the administrator has changed it.
    let note = format!(
        "{}\n# The one-time password of the user `admin` (change it at first login).\n# mamori removes this file at its next start after the change.\n",
        pw.as_str()
    );
    keys::write_secret(&dd.admin_password_file(), note.as_bytes())
        .map_err(|e| InitError::DataDir(format!("{}: {e}", dd.admin_password_file().display())))?;
    std::fs::remove_file(dd.marker()).map_err(|e| InitError::DataDir(e.to_string()))?;
    Ok(InitReport { admin_password: pw, vkey, tls_fingerprint })
}

/// Creates the maintenance CA if missing.
pub fn ensure_maintenance_ca(dd: &DataDir, org: &str) -> Result<(), InitError> {
    if !dd.0.join(MAINT_CA_CERT).exists() {
        let (c, k) = keys::named_ca(&format!("{org} maintenance CA"), org, 3650)?;
        keys::write_secret(&dd.0.join(MAINT_CA_KEY), k.as_bytes())?;
        keys::write_public(&dd.0.join(MAINT_CA_CERT), c.as_bytes())?;
    }
    Ok(())
}

/// Opens the services over an initialized data directory with `cfg`:
/// keys, the exchange context, the store, the mode in force, the
/// standalone node. `base_url` is the main listener's public base.
pub async fn open(dd: &DataDir, cfg: Config, base_url: String, clock: Arc<dyn Clock>) -> Result<Services, InitError> {
    let (signer, _) = load_signer(dd)?;
    crate::exchange::ensure_keys(dd, &cfg)?;
    ensure_maintenance_ca(dd, &cfg.institution.name)?;
    let xctx = crate::exchange::Ctx::load(dd, &cfg)?;
    let mut conformance = crate::conformance::Conformance::load(&cfg.fhir, &dd.0)
        .map_err(|e| InitError::Config(ConfigError::Invalid(e)))?;
    conformance.patient_numbers = crate::conformance::PatientNumbers::of(&cfg.institution);
    for p in conformance.registry.packages() {
        tracing::info!(package = %p.name, version = %p.version, skipped = p.skipped.len(), "FHIR package loaded");
    }
    for n in &conformance.not_searchable {
        tracing::info!(parameter = %n.url, reason = %n.reason, "package search parameter not searchable");
    }
    // The store indexes the packages' search parameters too (and, at
    // open, indexes what was stored before a package was added).
    let mut store_cfg = store_config(dd, &cfg)?;
    store_cfg.search = conformance.search.clone();
    let store = Store::open(&store_cfg, clock, signer)?;
    let svc = Services::new(store, cfg, base_url, dd.0.clone(), xctx);
    svc.conformance_cell.get_or_init(|| Arc::new(conformance));
    let mode = svc.store.read(mamori_store::emergency::current_mode).await?;
    svc.set_mode_local(mode);
    let sa = svc.store.read(mamori_store::continuity::standalone).await?;
    if let Some(s) = &sa {
        tracing::info!(node = %s.node, snapshot = %s.snapshot, "standalone node");
    }
    if let Ok(mut g) = svc.standalone.write() {
        *g = sa;
    }
    Ok(svc)
}

/// Opens an initialized data directory in-process, for offline CLI
/// commands: the same services, policy and audit as the server, no
/// listener. Holds the directory's lock.
pub async fn open_local(dir: &Path, clock: Arc<dyn Clock>) -> Result<(Services, DirLock), InitError> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        return Err(InitError::DataDir(format!(
            "{} is not an initialized mamori data directory (run `mamori serve --data {}` once)",
            dir.display(),
            dir.display()
        )));
    }
    let lock = lock_dir(dir)?;
    let cfg = Config::load(dir)?;
    let base_url = cfg.base_url(cfg.listen_addr()?);
    let svc = open(&dd, cfg, base_url, clock).await?;
    Ok((svc, lock))
}

impl Services {
    /// Binds the record versions stored before record binding existed
    /// (migration 11) in `record-bind` audit events of 2,000 versions
    /// each, so that `mamori audit verify --deep` can check every version.
    /// Runs once, at the first start after the upgrade; returns how many
    /// versions it bound.
    pub async fn bind_records_stored_before_binding(&self) -> Result<u64, StoreError> {
        let mut total = 0u64;
        loop {
            let rec =
                RequestCtx::background(self.mode.get()).record("system", "system", "record-bind", 200, self.now());
            let n = self
                .store
                .writer()
                .write_exclusive(
                    move |w| {
                        let n = mamori_store::records::bind_stored_before_binding(w, 2000)?;
                        if n > 0 {
                            let mut rec = rec;
                            rec.detail = Some(serde_json::json!({"stored_before": "record binding (schema 11)"}));
                            w.audit(&rec)?;
                        }
                        Ok(n)
                    },
                    |_, _| Ok(()),
                )
                .await?;
            if n == 0 {
                if total > 0 {
                    tracing::info!(versions = total, "record versions stored before record binding are now bound");
                }
                return Ok(total);
            }
            total += n as u64;
        }
    }

    /// Anchors a server's start (or stop) in the audit log, with a signed
    /// checkpoint.
    pub async fn record_lifecycle(&self, action: &'static str, detail: serde_json::Value) -> Result<(), StoreError> {
        let mut rec = RequestCtx::background(self.mode.get()).record("system", "system", action, 200, self.now());
        rec.detail = (!detail.is_null()).then_some(detail);
        self.store
            .writer()
            .write(
                move |w| {
                    w.audit(&rec)?;
                    w.checkpoint(action)?;
                    w.flush_index()?;
                    Ok::<_, StoreError>(())
                },
                |_, _| Ok(()),
            )
            .await
    }
}

/// Removes the initial admin password file once the password was changed
/// (the account no longer has to change it). Returns whether it was removed.
pub async fn forget_initial_password(svc: &Services) -> Result<bool, InitError> {
    let dd = DataDir(svc.data_dir.clone());
    let f = dd.admin_password_file();
    if !f.exists() {
        return Ok(false);
    }
    let admin =
        svc.store.read(|c| accounts::get_user(c, "admin")).await.map_err(|e| InitError::DataDir(e.to_string()))?;
    if admin.is_some_and(|u| u.must_change) {
        return Ok(false);
    }
    std::fs::remove_file(&f).map_err(|e| InitError::DataDir(format!("{}: {e}", f.display())))?;
    Ok(true)
}
