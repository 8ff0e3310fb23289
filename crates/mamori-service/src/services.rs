//! [`Services`]: what every use case works with (the store, the
//! configuration, the mode in force, the live announcement stream, the
//! exchange context, the cluster), shared by the HTTP adapter, the web UI
//! and the CLI. Cheap to clone.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use mamori_core::mode::Mode;
use mamori_store::accounts::TokenInfo;
use mamori_store::Store;

use crate::config::Config;
use crate::notify::Announcement;

/// The current operating mode, shared by all requests.
#[derive(Debug)]
pub struct ModeCell(RwLock<Mode>);

impl ModeCell {
    /// A cell holding `m`.
    pub fn new(m: Mode) -> Self {
        ModeCell(RwLock::new(m))
    }
    /// The mode in force.
    pub fn get(&self) -> Mode {
        self.0.read().map(|g| *g).unwrap_or(Mode::Normal)
    }
    fn set(&self, m: Mode) {
        if let Ok(mut g) = self.0.write() {
            *g = m;
        }
    }
}

/// The services of one mamori: a handle every adapter holds.
#[derive(Clone)]
pub struct Services(pub(crate) Arc<Inner>);

/// The shared parts (read through `Deref`).
pub struct Inner {
    /// Announcements to open screens (server-sent events).
    pub events: tokio::sync::broadcast::Sender<Announcement>,
    /// The mode as open screens see it (JSON text), for the live banner.
    pub mode_watch: tokio::sync::watch::Sender<String>,
    /// Recently seen live tokens.
    pub tokens: TokenCache,
    /// The database.
    pub store: Store,
    /// The configuration in force.
    pub cfg: Config,
    /// The mode in force.
    pub mode: ModeCell,
    /// The public base URL of the main listener.
    pub base_url: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Keys, identity and clients for exchanges with partners.
    pub exchange: Arc<crate::exchange::Ctx>,
    /// Set when this server is a standalone node started from a snapshot.
    pub standalone: RwLock<Option<mamori_store::continuity::Standalone>>,
    /// Asked to stop for a restart (remote maintenance `restart` scope).
    pub restart: tokio::sync::Notify,
    /// The other servers on the same PostgreSQL database (set at start;
    /// unset means a single server).
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    /// Request counters and latencies (Prometheus text).
    pub metrics: crate::metrics::Metrics,
    /// Results shown once (one-time passwords, envelopes), in memory.
    pub flash: crate::forms::Flash,
    /// Failed logins per source address (in memory).
    pub throttle: crate::throttle::Throttle,
    /// What the last self-verification of the audit log found (none: it
    /// passed, or has not run on this server).
    pub audit_check: std::sync::Mutex<Option<String>>,
    /// This server's ID-token signing key (made at first use).
    pub oidc: std::sync::OnceLock<std::sync::Arc<crate::oauth::Signer>>,
    /// The FHIR packages and validation policy (set at start; unset means
    /// no packages).
    pub conformance_cell: std::sync::OnceLock<Arc<crate::conformance::Conformance>>,
}

impl std::ops::Deref for Services {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Live tokens seen recently, so that most requests authenticate without a
/// database round trip. Every committed account change (revocations, role
/// changes, disabling a user, ...) invalidates every entry before its
/// result is returned, so a revocation holds for every request that starts
/// after it. Expiry is checked against the clock on each use.
#[derive(Default)]
pub struct TokenCache {
    /// Off on PostgreSQL: another server may revoke a token, and the next
    /// request must see it.
    disabled: std::sync::atomic::AtomicBool,
    generation: std::sync::atomic::AtomicU64,
    map: std::sync::Mutex<std::collections::HashMap<Vec<u8>, (u64, TokenInfo)>>,
}

const TOKEN_CACHE_MAX: usize = 10_000;

impl TokenCache {
    /// Forgets every cached token.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut m) = self.map.lock() {
            m.clear();
        }
    }
    /// Turns the cache off (several servers share the database).
    pub fn disable(&self) {
        self.disabled.store(true, std::sync::atomic::Ordering::SeqCst);
        self.invalidate();
    }
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }
    pub(crate) fn get(&self, hash: &[u8], now: mamori_core::time::Timestamp) -> Option<TokenInfo> {
        if self.disabled.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let g = self.generation();
        let m = self.map.lock().ok()?;
        let (gen, info) = m.get(hash)?;
        (*gen == g && info.expires > now).then(|| info.clone())
    }
    pub(crate) fn put(&self, hash: Vec<u8>, gen: u64, info: TokenInfo) {
        if self.disabled.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= TOKEN_CACHE_MAX {
                m.clear();
            }
            m.insert(hash, (gen, info));
        }
    }
}

impl Services {
    /// Assembles the services over an open store.
    pub fn new(
        store: Store,
        cfg: Config,
        base_url: String,
        data_dir: PathBuf,
        exchange: crate::exchange::Ctx,
    ) -> Services {
        let cfg_auth = cfg.auth.clone();
        Services(Arc::new(Inner {
            events: tokio::sync::broadcast::channel(256).0,
            mode_watch: tokio::sync::watch::channel(String::new()).0,
            tokens: TokenCache::default(),
            store,
            cfg,
            mode: ModeCell::new(Mode::Normal),
            base_url,
            data_dir,
            exchange: Arc::new(exchange),
            standalone: RwLock::new(None),
            restart: tokio::sync::Notify::new(),
            cluster: std::sync::OnceLock::new(),
            metrics: crate::metrics::Metrics::default(),
            flash: crate::forms::Flash::default(),
            throttle: crate::throttle::Throttle::new(
                cfg_auth.source_free_failures,
                std::time::Duration::from_secs(cfg_auth.source_window_minutes * 60),
                std::time::Duration::from_secs(cfg_auth.source_max_block_minutes * 60),
            ),
            audit_check: std::sync::Mutex::new(None),
            oidc: std::sync::OnceLock::new(),
            conformance_cell: std::sync::OnceLock::new(),
        }))
    }

    /// The loaded FHIR packages and the validation policy.
    pub fn conformance(&self) -> Arc<crate::conformance::Conformance> {
        static NONE: std::sync::OnceLock<Arc<crate::conformance::Conformance>> = std::sync::OnceLock::new();
        self.conformance_cell
            .get()
            .or_else(|| NONE.get())
            .cloned()
            .unwrap_or_else(|| NONE.get_or_init(Default::default).clone())
    }

    /// The standalone node's id, if this server is one.
    pub fn node(&self) -> Option<String> {
        self.standalone.read().ok().and_then(|g| g.as_ref().map(|s| s.node.clone()))
    }

    /// The clock reading now.
    pub fn now(&self) -> mamori_core::time::Timestamp {
        self.store.clock().now()
    }

    /// Changes the mode in force (after the change committed), tells
    /// every open screen and the other servers.
    pub(crate) fn set_mode(&self, m: Mode) {
        self.set_mode_local(m);
        if let Some(c) = self.cluster.get() {
            c.send(crate::cluster::Notice::Mode);
        }
    }

    /// As [`Services::set_mode`], on this server only (at start, or when
    /// another server said the mode changed).
    pub fn set_mode_local(&self, m: Mode) {
        self.mode.set(m);
        // Fails only when no screen is open; a screen opened later starts
        // from `self.mode`.
        self.mode_watch.send(serde_json::json!({"mode": m.header_value(), "state": m}).to_string()).ok();
    }

    /// Whether this server leads (always on SQLite).
    pub fn is_leader(&self) -> bool {
        self.cluster.get().is_none_or(crate::cluster::Cluster::is_leader)
    }
}
