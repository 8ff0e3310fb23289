//! Starting and stopping a server: first-run initialization of a data
//! directory, the TLS accept loop, graceful shutdown.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mamori_audit::note::{generate_pkcs8, NoteSigner, NoteVerifier};
use mamori_core::ids::UserId;
use mamori_core::mode::Mode;
use mamori_core::policy::{Role, SubjectKind};
use mamori_core::time::Clock;
use mamori_store::accounts::{self, NewUser};
use mamori_store::{CheckpointPolicy, Store, StoreConfig, Synchronous};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};
use crate::keys::{self, KeyError};
use crate::state::{AppState, PeerAddr, RequestCtx};
use crate::tls::{self, TlsError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("store: {0}")]
    Store(#[from] mamori_store::StoreError),
    #[error("{0}")]
    DataDir(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// Paths inside a data directory.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn db(&self) -> PathBuf {
        self.0.join("mamori.db")
    }
    pub fn audit_key(&self) -> PathBuf {
        self.0.join("keys/audit.key")
    }
    pub fn audit_vkey(&self) -> PathBuf {
        self.0.join("keys/audit.vkey")
    }
    pub fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.0.join(p)
        }
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
pub fn lock_dir(dir: &Path) -> Result<DirLock, ServeError> {
    let path = dir.join("mamori.lock");
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ServeError::DataDir(format!("{}: {e}", path.display())))?;
    match f.try_lock() {
        Ok(()) => Ok(DirLock(f)),
        Err(_) => Err(ServeError::DataDir(format!(
            "{} is in use by a running mamori server; stop it, or use the server's API (--server/--token)",
            dir.display()
        ))),
    }
}

/// What first-run initialization produced, shown once to the operator.
pub struct InitReport {
    pub admin_password: Zeroizing<String>,
    pub vkey: String,
    pub tls_fingerprint: String,
}

/// Loads the audit signer and its public key.
pub fn load_signer(dd: &DataDir) -> Result<(Arc<NoteSigner>, NoteVerifier), ServeError> {
    let vkey_text = std::fs::read_to_string(dd.audit_vkey()).map_err(|e| KeyError::Io(dd.audit_vkey(), e))?;
    let v = NoteVerifier::parse(vkey_text.trim()).map_err(|e| KeyError::Format(dd.audit_vkey(), e.to_string()))?;
    let pem = keys::read_secret(&dd.audit_key())?;
    let der = keys::pem_der(&dd.audit_key(), &pem, "PRIVATE KEY")?;
    let s = NoteSigner::from_pkcs8(&v.name, &der).map_err(|e| KeyError::Format(dd.audit_key(), e.to_string()))?;
    if s.verifier() != v {
        return Err(ServeError::DataDir("keys/audit.key does not match keys/audit.vkey".into()));
    }
    Ok((Arc::new(s), v))
}

pub fn store_config(dd: &DataDir, cfg: &Config) -> Result<StoreConfig, ServeError> {
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
    })
}

fn init_files(dd: &DataDir, cfg: &Config) -> Result<(String, String), ServeError> {
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

/// Initializes an empty data directory: configuration, keys, TLS
/// certificate, database, and the `admin` account with a one-time password.
pub async fn initialize(dir: &Path, clock: Arc<dyn Clock>) -> Result<InitReport, ServeError> {
    let dd = DataDir(dir.to_owned());
    std::fs::create_dir_all(dir).map_err(|e| ServeError::DataDir(format!("{}: {e}", dir.display())))?;
    if dd.marker().exists() {
        // An interrupted initialization: start it over.
        for p in ["keys", "tls"] {
            let _ = std::fs::remove_dir_all(dir.join(p));
        }
        for p in ["mamori.db", "mamori.db-wal", "mamori.db-shm"] {
            let _ = std::fs::remove_file(dir.join(p));
        }
    } else {
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ServeError::DataDir(format!("{}: {e}", dir.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "mamori.toml" && n != "mamori.lock")
            .collect();
        if !foreign.is_empty() {
            return Err(ServeError::DataDir(format!(
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
        return Err(ServeError::DataDir(
            "the database at database.url already belongs to an initialized mamori; to add a server, \
             copy the first server's data directory (keys, tls, mamori.toml) instead of initializing a new one"
                .into(),
        ));
    }
    let pw = accounts::random_password()?;
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| ServeError::DataDir(e.to_string()))??;
    let vk2 = vkey.clone();
    store
        .writer()
        .write(
            move |w| {
                let admin = UserId::parse("admin").map_err(|e| mamori_store::StoreError::Internal(e.to_string()))?;
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
                let ctx = RequestCtx { addr: None, request_id: None, mode: Mode::Normal };
                let mut rec = ctx.record("system", "system", "system-init", 200, w.now);
                rec.detail = Some(json!({"audit_vkey": vk2, "admin": "created with a one-time password"}));
                w.audit(&rec)?;
                w.checkpoint("init")?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    std::fs::remove_file(dd.marker()).map_err(|e| ServeError::DataDir(e.to_string()))?;
    Ok(InitReport { admin_password: pw, vkey, tls_fingerprint })
}

/// How to start a server.
pub struct ServeOptions {
    pub data: PathBuf,
    pub listen: Option<String>,
    /// The AS2 listener (mutual TLS); overrides `exchange.listen`.
    pub as2_listen: Option<String>,
    pub clock: Arc<dyn Clock>,
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// The maintenance listener's address, if it runs.
    pub maint_addr: Option<SocketAddr>,
    /// The AS2 listener's address, if it runs.
    pub as2_addr: Option<SocketAddr>,
    pub base_url: String,
    pub state: AppState,
    pub init: Option<InitReport>,
    stop: Option<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
    _lock: DirLock,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, records the stop.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        let _ = (&mut self.task).await;
    }
    /// Waits until the server stops by itself (signal).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }
}

/// Starts a server: initializes the data directory on first start.
pub async fn start(opts: ServeOptions) -> Result<Running, ServeError> {
    let dd = DataDir(opts.data.clone());
    std::fs::create_dir_all(&dd.0).map_err(|e| ServeError::DataDir(format!("{}: {e}", dd.0.display())))?;
    let lock = lock_dir(&dd.0)?;
    let init = if dd.is_initialized() { None } else { Some(initialize(&dd.0, opts.clock.clone()).await?) };
    let mut cfg = Config::load(&dd.0)?;
    if let Some(l) = &opts.listen {
        cfg.server.listen = l.clone();
        cfg.validate()?;
    }
    if let Some(l) = &opts.as2_listen {
        cfg.exchange.listen = l.clone();
        cfg.validate()?;
    }
    let (signer, _) = load_signer(&dd)?;
    crate::exchange::ensure_keys(&dd, &cfg)?;
    crate::maintenance::ensure_ca(&dd, &cfg.institution.name)?;
    let xctx = crate::exchange::Ctx::load(&dd, &cfg)?;
    let store = Store::open(&store_config(&dd, &cfg)?, opts.clock.clone(), signer)?;
    let maint_cfg = if cfg.maintenance.listen.is_empty() {
        None
    } else {
        let roots = tls::load_certs(&dd.0.join(crate::maintenance::CA_CERT))?;
        Some(tls::mtls_server_config(
            &dd.resolve(&cfg.tls.cert),
            &dd.resolve(&cfg.tls.key),
            &cfg.tls.min_version,
            roots,
        )?)
    };
    let tls_cfg = tls::server_config(&dd.resolve(&cfg.tls.cert), &dd.resolve(&cfg.tls.key), &cfg.tls.min_version)?;
    let listen = cfg.listen_addr()?;
    let listener = TcpListener::bind(listen).await.map_err(|e| ServeError::Listen(cfg.server.listen.clone(), e))?;
    let addr = listener.local_addr().map_err(|e| ServeError::Listen(cfg.server.listen.clone(), e))?;
    let as2_listener = if cfg.exchange.listen.is_empty() {
        None
    } else {
        let l = TcpListener::bind(&cfg.exchange.listen)
            .await
            .map_err(|e| ServeError::Listen(cfg.exchange.listen.clone(), e))?;
        let a = l.local_addr().map_err(|e| ServeError::Listen(cfg.exchange.listen.clone(), e))?;
        Some((l, a))
    };
    let as2_addr = as2_listener.as_ref().map(|(_, a)| *a);
    let maint_listener = match &maint_cfg {
        None => None,
        Some(_) => {
            let l = TcpListener::bind(&cfg.maintenance.listen)
                .await
                .map_err(|e| ServeError::Listen(cfg.maintenance.listen.clone(), e))?;
            let a = l.local_addr().map_err(|e| ServeError::Listen(cfg.maintenance.listen.clone(), e))?;
            Some((l, a))
        }
    };
    let maint_addr = maint_listener.as_ref().map(|(_, a)| *a);
    if let Ok(mut u) = xctx.as2_url.write() {
        *u = cfg.as2_url(as2_addr);
    }
    let base_url = cfg.base_url(addr);
    let grace = Duration::from_secs(cfg.server.shutdown_grace_seconds);
    let state = AppState::new(store, cfg, base_url.clone(), dd.0.clone(), xctx);
    let cluster_rx = state.store.url().map(|url| {
        let (c, rx) = crate::cluster::start(url, state.store.clone());
        let _ = state.cluster.set(c);
        state.tokens.disable();
        rx
    });
    crate::exchange::reload(&state).await;
    // Anchor the start in the audit log.
    let ctx = RequestCtx { addr: None, request_id: None, mode: state.mode.get() };
    let mut rec = ctx.record("system", "system", "server-start", 200, state.store.clock().now());
    rec.detail = Some(json!({"version": env!("CARGO_PKG_VERSION"), "listen": addr.to_string()}));
    state
        .store
        .writer()
        .write(
            move |w| {
                w.audit(&rec)?;
                w.checkpoint("server-start")?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    // The mode in force is the one the database says.
    let mode = state.store.read(mamori_store::emergency::current_mode).await?;
    state.set_mode_local(mode);
    load_standalone(&state).await?;
    let cluster_task = cluster_rx.map(|rx| tokio::spawn(crate::cluster::apply(state.clone(), rx)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let st = state.clone();
    let (bg_stop, bg_rx) = tokio::sync::watch::channel(false);
    let background = vec![tokio::spawn(background_while_leader(state.clone(), bg_rx))];
    let as2_task = as2_listener.map(|(l, _)| {
        let st = state.clone();
        let stop = stop_rx.clone();
        let app = crate::app::as2_router(st.clone());
        tokio::spawn(async move {
            let acceptor = {
                let st = st.clone();
                move || st.exchange.server_config().map(TlsAcceptor::from)
            };
            accept_loop(st, l, acceptor, app, stop, grace, Listener::As2).await;
        })
    });
    let maint_task = maint_listener.zip(maint_cfg).map(|((l, _), cfg)| {
        let st = state.clone();
        let stop = stop_rx.clone();
        let app = crate::app::maint_router(st.clone());
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            accept_loop(st, l, move || Some(acceptor.clone()), app, stop, grace, Listener::Maintenance).await;
        })
    });
    // Built before the listener task starts, so that in-process callers
    // (the web UI, the demo seeding) find the API router set.
    let app = crate::app::router(st.clone());
    let task = tokio::spawn(async move {
        let main_acceptor = TlsAcceptor::from(tls_cfg);
        accept_loop(st.clone(), listener, move || Some(main_acceptor.clone()), app, stop_rx, grace, Listener::Main)
            .await;
        if let Ok(mut g) = st.api_router.write() {
            g.take();
        }
        if let Some(t) = as2_task {
            let _ = t.await;
        }
        if let Some(t) = maint_task {
            let _ = t.await;
        }
        let _ = bg_stop.send(true);
        for t in background {
            let _ = t.await;
        }
        if let Some(c) = st.cluster.get() {
            c.stop();
        }
        if let Some(t) = cluster_task {
            t.abort();
        }
        let ctx = RequestCtx { addr: None, request_id: None, mode: st.mode.get() };
        let rec = ctx.record("system", "system", "server-stop", 200, st.store.clock().now());
        let r = st
            .store
            .writer()
            .write(
                move |w| {
                    w.audit(&rec)?;
                    w.checkpoint("server-stop")?;
                    w.flush_index()?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "could not record the server stop");
        }
        tracing::info!("server stopped");
    });
    Ok(Running { addr, maint_addr, as2_addr, base_url, state, init, stop: Some(stop_tx), task, _lock: lock })
}

/// The background work (deliveries, forwarding, expiry, scans) runs on
/// the leader only: always on SQLite; on PostgreSQL while this server holds
/// the leader lock, stopped when it loses it.
async fn background_while_leader(state: AppState, mut stop: watch::Receiver<bool>) {
    // A single server leads for good: the sender is kept for as long as
    // this task runs (a dropped sender would read as "stop").
    let (_single, single_rx) = watch::channel(true);
    let mut leader = match state.cluster.get() {
        Some(c) => c.leader_watch(),
        None => single_rx,
    };
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                r = leader.changed() => if r.is_err() { return },
            }
        }
        let (term, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(crate::syslog::forward(state.clone(), rx.clone())),
            tokio::spawn(crate::notify::deliver(state.clone(), rx.clone())),
            tokio::spawn(crate::breakglass::expire(state.clone(), rx.clone())),
            tokio::spawn(crate::exchange::outbox::run(state.clone(), rx.clone())),
            tokio::spawn(crate::continuity::snapshot::schedule(state.clone(), rx.clone())),
            tokio::spawn(crate::maintenance::run(state.clone(), rx.clone())),
            tokio::spawn(crate::detect::run(state.clone(), rx)),
        ];
        let stopping = loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { break true },
                r = leader.changed() => match r {
                    Err(_) => break true,
                    Ok(()) if !*leader.borrow() => {
                        tracing::warn!("leadership lost: stopping background work");
                        break false;
                    }
                    Ok(()) => {}
                },
            }
        };
        let _ = term.send(true);
        for t in tasks {
            let _ = t.await;
        }
        if stopping {
            return;
        }
    }
}

/// Which listener an accept loop serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// HTTPS for people and API clients; also drives periodic checkpoints.
    Main,
    /// AS2 with client certificates; refused handshakes are audited.
    As2,
    /// Remote maintenance with client certificates; refused handshakes are audited.
    Maintenance,
}

async fn accept_loop(
    st: AppState,
    listener: TcpListener,
    acceptor: impl Fn() -> Option<TlsAcceptor>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    role: Listener,
) {
    let graceful = GracefulShutdown::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let refusals = Arc::new(crate::exchange::inbound::RefusalLimiter::default());
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick(), if role == Listener::Main => {
                if let Err(e) = st.store.writer().checkpoint_if_due().await {
                    tracing::error!(error = %e, "periodic checkpoint failed");
                }
            }
            acc = listener.accept() => {
                let (tcp, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(acceptor) = acceptor() else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let app = app.clone();
                let watcher = graceful.watcher();
                let st = st.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            let action = match role {
                                Listener::As2 => Some("as2-tls-refused"),
                                Listener::Maintenance => Some("maintenance-tls-refused"),
                                Listener::Main => None,
                            };
                            if let Some(action) = action {
                                crate::exchange::inbound::audit_handshake_refusal(&st, &refusals, peer, &e.to_string(), action).await;
                            }
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certs = crate::exchange::inbound::PeerCerts(
                        tls.get_ref().1.peer_certificates().map(|c| c.iter().map(|d| d.to_vec()).collect()).unwrap_or_default(),
                    );
                    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        req.extensions_mut().insert(certs.clone());
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    let conn = watcher.watch(conn.into_owned());
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
}

/// Opens an initialized data directory in-process, for offline CLI
/// commands: same API, policy and audit as the server, no listener.
pub async fn open_local(dir: &Path, clock: Arc<dyn Clock>) -> Result<(AppState, DirLock), ServeError> {
    let dd = DataDir(dir.to_owned());
    if !dd.is_initialized() {
        return Err(ServeError::DataDir(format!(
            "{} is not an initialized mamori data directory (run `mamori serve --data {}` once)",
            dir.display(),
            dir.display()
        )));
    }
    let lock = lock_dir(dir)?;
    let cfg = Config::load(dir)?;
    let (signer, _) = load_signer(&dd)?;
    crate::exchange::ensure_keys(&dd, &cfg)?;
    crate::maintenance::ensure_ca(&dd, &cfg.institution.name)?;
    let xctx = crate::exchange::Ctx::load(&dd, &cfg)?;
    let store = Store::open(&store_config(&dd, &cfg)?, clock, signer)?;
    let base_url = cfg.base_url(cfg.listen_addr()?);
    let state = AppState::new(store, cfg, base_url, dir.to_owned(), xctx);
    let mode = state.store.read(mamori_store::emergency::current_mode).await?;
    state.set_mode_local(mode);
    load_standalone(&state).await?;
    Ok((state, lock))
}

/// A standalone node knows it is one (its entries are stamped).
async fn load_standalone(state: &AppState) -> Result<(), ServeError> {
    let sa = state.store.read(mamori_store::continuity::standalone).await?;
    if let Some(s) = &sa {
        tracing::info!(node = %s.node, snapshot = %s.snapshot, "standalone node");
    }
    if let Ok(mut g) = state.standalone.write() {
        *g = sa;
    }
    Ok(())
}

/// Resolves when SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {},
                _ = i.recv() => {},
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs until a signal: the `mamori serve` command.
pub async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let mut running = start(opts).await?;
    if let Some(init) = running.init.take() {
        println!("mamori: initialized a new data directory.");
        println!("  admin user:               admin");
        println!(
            "  one-time password:        {}   (shown once; it must be changed at first login)",
            init.admin_password.as_str()
        );
        println!("  audit log verifier key:   {}", init.vkey);
        println!("  TLS certificate SHA-256:  {}", init.tls_fingerprint);
    }
    println!("mamori: listening on {} (FHIR base {}/fhir)", running.addr, running.base_url);
    if let Some(n) = running.state.node() {
        println!(
            "mamori: STANDALONE node {n} (records are stamped with the node; export with `mamori standalone export`)"
        );
    }
    if let Some(a) = running.as2_addr {
        println!("mamori: AS2 (mutual TLS) on {a}, endpoint {}", running.state.exchange.as2_url());
    }
    if let Some(a) = running.maint_addr {
        println!("mamori: remote maintenance (client certificates) on {a}");
    }
    let st = running.state.clone();
    tokio::select! {
        _ = shutdown_signal() => {},
        _ = st.restart.notified() => tracing::warn!("restart requested by remote maintenance; stopping"),
    }
    running.shutdown().await;
    Ok(())
}
