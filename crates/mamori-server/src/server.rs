//! Starting and stopping a server: the listeners (HTTPS, AS2 with client
//! certificates, remote maintenance), the TLS accept loop, graceful
//! shutdown. First-run initialization and opening the services are
//! `mamori_service::init`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use mamori_core::time::Clock;
use mamori_service::config::Config;
use mamori_service::exchange::inbound::{audit_handshake_refusal, PeerCerts, RefusalLimiter};
use mamori_service::init::{self, DataDir, DirLock, InitError, InitReport};
use mamori_service::{jobs, tls, Services};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::http::PeerAddr;
use crate::limits::{Activity, Admission, Limits, TimedBody, Tracked};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory, its configuration, keys or store.
    #[error(transparent)]
    Init(#[from] InitError),
    /// A listener could not bind.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

impl ServeError {
    /// A problem with the data directory.
    pub fn data_dir(m: impl Into<String>) -> Self {
        ServeError::Init(InitError::DataDir(m.into()))
    }
}

macro_rules! via_init {
    ($($t:ty),*) => {$(
        impl From<$t> for ServeError {
            fn from(e: $t) -> Self {
                ServeError::Init(e.into())
            }
        }
    )*};
}
via_init!(
    mamori_service::config::ConfigError,
    mamori_service::keys::KeyError,
    mamori_service::tls::TlsError,
    mamori_store::StoreError
);

/// How to start a server.
pub struct ServeOptions {
    /// The data directory.
    pub data: PathBuf,
    /// The main listener (overrides `server.listen`).
    pub listen: Option<String>,
    /// The AS2 listener (mutual TLS); overrides `exchange.listen`.
    pub as2_listen: Option<String>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// A running server.
pub struct Running {
    /// The main listener's address.
    pub addr: SocketAddr,
    /// The maintenance listener's address, if it runs.
    pub maint_addr: Option<SocketAddr>,
    /// The AS2 listener's address, if it runs.
    pub as2_addr: Option<SocketAddr>,
    /// The public base URL.
    pub base_url: String,
    /// The services it serves.
    pub state: Services,
    /// What the first start of the data directory made.
    pub init: Option<InitReport>,
    stop: Option<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
    _lock: DirLock,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, records the stop.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            s.send_replace(true);
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "the server task ended abnormally");
        }
    }
    /// Waits until the server stops by itself (signal).
    pub async fn wait(mut self) {
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "the server task ended abnormally");
        }
    }
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let l = TcpListener::bind(addr).await.map_err(|e| ServeError::Listen(addr.to_owned(), e))?;
    let a = l.local_addr().map_err(|e| ServeError::Listen(addr.to_owned(), e))?;
    Ok((l, a))
}

/// Starts a server: initializes the data directory on first start.
pub async fn start(opts: ServeOptions) -> Result<Running, ServeError> {
    let dd = DataDir(opts.data.clone());
    std::fs::create_dir_all(&dd.0).map_err(|e| ServeError::data_dir(format!("{}: {e}", dd.0.display())))?;
    let lock = init::lock_dir(&dd.0)?;
    let report = if dd.is_initialized() { None } else { Some(init::initialize(&dd.0, opts.clock.clone()).await?) };
    let mut cfg = Config::load(&dd.0)?;
    if let Some(l) = &opts.listen {
        cfg.server.listen = l.clone();
        cfg.validate()?;
    }
    if let Some(l) = &opts.as2_listen {
        cfg.exchange.listen = l.clone();
        cfg.validate()?;
    }
    init::ensure_maintenance_ca(&dd, &cfg.institution.name)?;
    let maint_cfg = if cfg.maintenance.listen.is_empty() {
        None
    } else {
        let roots = tls::load_certs(&dd.0.join(init::MAINT_CA_CERT))?;
        Some(tls::mtls_server_config(
            &dd.resolve(&cfg.tls.cert),
            &dd.resolve(&cfg.tls.key),
            &cfg.tls.min_version,
            roots,
        )?)
    };
    let tls_cfg = tls::server_config(&dd.resolve(&cfg.tls.cert), &dd.resolve(&cfg.tls.key), &cfg.tls.min_version)?;
    let listen = cfg.listen_addr()?;
    let (listener, addr) = bind(&listen.to_string()).await?;
    let as2 = if cfg.exchange.listen.is_empty() { None } else { Some(bind(&cfg.exchange.listen).await?) };
    let as2_addr = as2.as_ref().map(|(_, a)| *a);
    let maint = match &maint_cfg {
        None => None,
        Some(_) => Some(bind(&cfg.maintenance.listen).await?),
    };
    let maint_addr = maint.as_ref().map(|(_, a)| *a);
    let base_url = cfg.base_url(addr);
    let as2_url = cfg.as2_url(as2_addr);
    let grace = Duration::from_secs(cfg.server.shutdown_grace_seconds);
    let svc = init::open(&dd, cfg, base_url.clone(), opts.clock.clone()).await?;
    if let Ok(mut u) = svc.exchange.as2_url.write() {
        *u = as2_url;
    }
    let cluster_rx = svc.store.url().map(|url| {
        let (c, rx) = mamori_service::cluster::start(url, svc.store.clone());
        if svc.cluster.set(c).is_err() {
            tracing::error!("the cluster was already set");
        }
        svc.tokens.disable();
        rx
    });
    mamori_service::exchange::reload(&svc).await;
    svc.bind_records_stored_before_binding().await?;
    match init::forget_initial_password(&svc).await {
        Ok(true) => tracing::info!("the admin password was changed: removed the initial password file"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "could not remove the initial admin password file"),
    }
    // Anchor the start in the audit log.
    svc.record_lifecycle("server-start", json!({"version": env!("CARGO_PKG_VERSION"), "listen": addr.to_string()}))
        .await?;
    let cluster_task = cluster_rx.map(|rx| tokio::spawn(mamori_service::cluster::apply(svc.clone(), rx)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (bg_stop, bg_rx) = watch::channel(false);
    let background = tokio::spawn(jobs::run_while_leader(svc.clone(), bg_rx));
    tokio::spawn(mamori_service::metrics::access_summary(svc.clone(), stop_rx.clone()));
    let as2_task = as2.map(|(l, _)| {
        let (svc, stop) = (svc.clone(), stop_rx.clone());
        let app = crate::app::as2_router(svc.clone());
        tokio::spawn(async move {
            let acceptor = {
                let svc = svc.clone();
                move || svc.exchange.server_config().map(TlsAcceptor::from)
            };
            accept_loop(svc, l, acceptor, app, stop, grace, Listener::As2).await;
        })
    });
    let maint_task = maint.zip(maint_cfg).map(|((l, _), cfg)| {
        let (svc, stop) = (svc.clone(), stop_rx.clone());
        let app = crate::app::maint_router(svc.clone());
        let acceptor = TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            accept_loop(svc, l, move || Some(acceptor.clone()), app, stop, grace, Listener::Maintenance).await;
        })
    });
    let app = crate::app::router(svc.clone());
    let st = svc.clone();
    let task = tokio::spawn(async move {
        let main_acceptor = TlsAcceptor::from(tls_cfg);
        accept_loop(st.clone(), listener, move || Some(main_acceptor.clone()), app, stop_rx, grace, Listener::Main)
            .await;
        for t in [as2_task, maint_task].into_iter().flatten() {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a listener ended abnormally");
            }
        }
        bg_stop.send_replace(true);
        if let Err(e) = background.await {
            tracing::error!(error = %e, "the background jobs ended abnormally");
        }
        if let Some(c) = st.cluster.get() {
            c.stop();
        }
        if let Some(t) = cluster_task {
            t.abort();
        }
        if let Err(e) = st.record_lifecycle("server-stop", serde_json::Value::Null).await {
            tracing::error!(error = %e, "could not record the server stop");
        }
        tracing::info!("server stopped");
    });
    Ok(Running {
        addr,
        maint_addr,
        as2_addr,
        base_url,
        state: svc,
        init: report,
        stop: Some(stop_tx),
        task,
        _lock: lock,
    })
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

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Listener::Main => "https",
            Listener::As2 => "as2",
            Listener::Maintenance => "maintenance",
        }
    }
    /// The connection limits of this listener (`[server]`; each listener
    /// its own connection cap).
    fn limits(self, cfg: &Config) -> Limits {
        let s = &cfg.server;
        Limits {
            max_connections: match self {
                Listener::Main => s.max_connections,
                Listener::As2 => cfg.exchange.max_connections,
                Listener::Maintenance => cfg.maintenance.max_connections,
            },
            per_source: s.max_connections_per_source,
            header: Duration::from_secs(s.header_timeout_seconds),
            idle: Duration::from_secs(s.idle_timeout_seconds),
            body: Duration::from_secs(s.body_timeout_seconds),
        }
    }
}

async fn accept_loop(
    st: Services,
    listener: TcpListener,
    acceptor: impl Fn() -> Option<TlsAcceptor>,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
    role: Listener,
) {
    let graceful = GracefulShutdown::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let refusals = Arc::new(RefusalLimiter::default());
    let limits = role.limits(&st.cfg);
    let admission = Admission::new(&limits);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = ticker.tick(), if role == Listener::Main => {
                if let Err(e) = mamori_service::jobs::checkpoint_if_due(&st).await {
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
                // Over the listener's or the source's limit: closed at once.
                let Some(admitted) = admission.admit(peer.ip(), role.name()) else {
                    continue;
                };
                let Some(acceptor) = acceptor() else {
                    continue;
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY");
                }
                let app = app.clone();
                let watcher = graceful.watcher();
                let st = st.clone();
                let refusals = refusals.clone();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let activity = Activity::new();
                    let tcp = Tracked::new(tcp, activity.clone());
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp).into_fallible()).await {
                        Ok(Ok(s)) => s,
                        Ok(Err((e, tcp))) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            let action = match role {
                                Listener::As2 => Some("as2-tls-refused"),
                                Listener::Maintenance => Some("maintenance-tls-refused"),
                                Listener::Main => None,
                            };
                            if let Some(action) = action {
                                audit_handshake_refusal(&st, &refusals, peer, &e.to_string(), action).await;
                            }
                            linger(tcp).await;
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let certs = PeerCerts(
                        tls.get_ref().1.peer_certificates().map(|c| c.iter().map(|d| d.to_vec()).collect()).unwrap_or_default(),
                    );
                    let requests = activity.clone();
                    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(PeerAddr(peer));
                        req.extensions_mut().insert(certs.clone());
                        // The connection is not idle while a request is handled.
                        let in_flight = requests.request();
                        let answer = app.clone().oneshot(req.map(|b| axum::body::Body::new(TimedBody::new(b, limits.body))));
                        async move {
                            let r = answer.await;
                            drop(in_flight);
                            r
                        }
                    });
                    let mut builder = auto::Builder::new(TokioExecutor::new());
                    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header);
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                    let conn = watcher.watch(conn.into_owned());
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        () = activity.idle(limits.idle) => {
                            tracing::debug!(%peer, "closing an idle connection");
                        }
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

/// Closes a connection whose TLS handshake was refused so that the peer
/// reads the alert that says why. Under TLS 1.3 a client sends its request
/// right after its certificate, before it learns the certificate was
/// refused; closing a socket with those bytes unread makes the kernel send
/// a reset, which can destroy the alert before the client reads it, and the
/// partner's operator would see "connection reset" instead of "unknown CA".
/// So the write side is shut (the alert, then FIN) and the input is read
/// and discarded until the peer closes, within a bound of time and bytes.
async fn linger<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TIME: Duration = Duration::from_secs(2);
    const BYTES: usize = 256 * 1024;
    let drain = async {
        if io.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 8192];
        let mut seen = 0;
        while seen < BYTES {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen += n,
            }
        }
    };
    if tokio::time::timeout(TIME, drain).await.is_err() {
        tracing::debug!("lingering close after a refused handshake: time is up");
    }
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
            if let Err(e) = tokio::signal::ctrl_c().await {
                tracing::error!(error = %e, "cannot wait for a signal");
            }
        }
    }
}

/// Runs until a signal: the `mamori serve` command.
pub async fn run(opts: ServeOptions) -> Result<(), ServeError> {
    let mut running = start(opts).await?;
    if let Some(init) = running.init.take() {
        println!("mamori: initialized a new data directory.");
        println!("  admin user:               admin");
        // Where stdout is a log others read (a container), the password stays
        // in its file only.
        if std::env::var_os("MAMORI_HIDE_INITIAL_PASSWORD").is_some_and(|v| !v.is_empty()) {
            println!("  one-time password:        (not logged; read it from the file below)");
        } else {
            println!(
                "  one-time password:        {}   (shown once; it must be changed at first login)",
                init.admin_password.as_str()
            );
        }
        println!(
            "  (also in {}, readable only by this user, until it is changed)",
            DataDir(running.state.data_dir.clone()).admin_password_file().display()
        );
        println!("  audit log verifier key:   {}", init.vkey);
        println!("  TLS certificate SHA-256:  {}", init.tls_fingerprint);
    }
    println!("mamori: listening on {} (FHIR base {}/fhir)", running.addr, running.base_url);
    println!("mamori: web UI {}/ui/", running.base_url);
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
