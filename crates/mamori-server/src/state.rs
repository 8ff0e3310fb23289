//! Shared application state and the per-request caller.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use mamori_audit::event::{Agent, AuditRecord, Entity};
use mamori_core::ids::UserId;
use mamori_core::mode::Mode;
use mamori_core::policy::{Decision, Subject, SubjectKind};
use mamori_store::accounts::{self, TokenInfo, User};
use mamori_store::Store;

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// The current operating mode, shared by all requests.
#[derive(Debug)]
pub struct ModeCell(RwLock<Mode>);

impl ModeCell {
    pub fn new(m: Mode) -> Self {
        ModeCell(RwLock::new(m))
    }
    pub fn get(&self) -> Mode {
        self.0.read().map(|g| *g).unwrap_or(Mode::Normal)
    }
    pub fn set(&self, m: Mode) {
        if let Ok(mut g) = self.0.write() {
            *g = m;
        }
    }
}

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    /// Announcements to open screens (server-sent events).
    pub events: tokio::sync::broadcast::Sender<crate::notify::Announcement>,
    /// The mode header value, for open screens.
    pub mode_watch: tokio::sync::watch::Sender<String>,
    pub tokens: TokenCache,
    pub store: Store,
    pub cfg: Config,
    pub mode: ModeCell,
    pub base_url: String,
    pub metrics: Metrics,
    pub data_dir: PathBuf,
    pub exchange: Arc<crate::exchange::Ctx>,
    /// Set when this server is a standalone node started from a snapshot.
    pub standalone: RwLock<Option<mamori_store::continuity::Standalone>>,
    /// Asked to stop for a restart (remote maintenance `restart` scope).
    pub restart: tokio::sync::Notify,
    /// The API router, for the web UI's in-process calls (set by
    /// [`crate::app::router`], cleared at shutdown to break the cycle).
    pub api_router: RwLock<Option<axum::Router>>,
    /// The other servers on the same PostgreSQL database (set at start;
    /// unset means a single server).
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Live tokens seen recently, so that most requests authenticate without a
/// database round trip. Any successful change through the operations API
/// (revocations, role changes, disabling a user, ...) invalidates every
/// entry before its response is sent, so a revocation is effective for
/// every request that starts after it returns. Expiry is checked against
/// the clock on each use.
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
    fn get(&self, hash: &[u8], now: mamori_core::time::Timestamp) -> Option<TokenInfo> {
        if self.disabled.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let g = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let m = self.map.lock().ok()?;
        let (gen, info) = m.get(hash)?;
        (*gen == g && info.expires > now).then(|| info.clone())
    }
    fn put(&self, hash: Vec<u8>, gen: u64, info: TokenInfo) {
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

impl AppState {
    pub fn new(
        store: Store,
        cfg: Config,
        base_url: String,
        data_dir: PathBuf,
        exchange: crate::exchange::Ctx,
    ) -> AppState {
        AppState(Arc::new(Inner {
            events: tokio::sync::broadcast::channel(256).0,
            mode_watch: tokio::sync::watch::channel(String::new()).0,
            tokens: TokenCache::default(),
            store,
            cfg,
            mode: ModeCell::new(Mode::Normal),
            base_url,
            metrics: Metrics::default(),
            data_dir,
            exchange: Arc::new(exchange),
            standalone: RwLock::new(None),
            restart: tokio::sync::Notify::new(),
            api_router: RwLock::new(None),
            cluster: std::sync::OnceLock::new(),
        }))
    }

    /// The standalone node's id, if this server is one.
    pub fn node(&self) -> Option<String> {
        self.standalone.read().ok().and_then(|g| g.as_ref().map(|s| s.node.clone()))
    }

    /// Changes the mode in force (after the change committed), tells
    /// every open screen and the other servers.
    pub fn set_mode(&self, m: Mode) {
        self.set_mode_local(m);
        if let Some(c) = self.cluster.get() {
            c.send(crate::cluster::Notice::Mode);
        }
    }

    /// As [`AppState::set_mode`], on this server only (at start, or when
    /// another server said the mode changed).
    pub fn set_mode_local(&self, m: Mode) {
        self.mode.set(m);
        let _ = self.mode_watch.send(serde_json::json!({"mode": m.header_value(), "state": m}).to_string());
    }

    /// Whether this server leads (always on SQLite).
    pub fn is_leader(&self) -> bool {
        self.cluster.get().is_none_or(crate::cluster::Cluster::is_leader)
    }
}

/// The client's address, inserted per connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The request id, inserted by middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The mode the request is decided under (a snapshot taken at its start).
#[derive(Debug, Clone, Copy)]
pub struct RequestMode(pub Mode);

/// Who is calling, authenticated by a bearer token or session.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The standalone node this server is, if any: new entries are stamped with it.
    pub node: Option<String>,
    pub user: User,
    pub token_id: String,
    pub declared: Option<String>,
    pub ctx: RequestCtx,
}

/// What every audit event needs about the request, authenticated or not.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub addr: Option<String>,
    pub request_id: Option<String>,
    pub mode: Mode,
}

impl RequestCtx {
    pub fn from_parts(parts: &Parts, fallback_mode: Mode) -> Self {
        RequestCtx {
            addr: parts.extensions.get::<PeerAddr>().map(|a| a.0.ip().to_string()),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
            mode: parts.extensions.get::<RequestMode>().map_or(fallback_mode, |m| m.0),
        }
    }

    /// An audit record for an unauthenticated or system action.
    pub fn record(
        &self,
        who: &str,
        kind: &str,
        action: &str,
        status: u16,
        now: mamori_core::time::Timestamp,
    ) -> AuditRecord {
        AuditRecord {
            time: now.to_rfc3339(),
            mode: self.mode.header_value(),
            agent: Agent {
                user: who.to_owned(),
                kind: kind.to_owned(),
                roles: Vec::new(),
                declared: None,
                address: self.addr.clone(),
            },
            action: action.to_owned(),
            entity: None,
            patients: Vec::new(),
            status,
            basis: None,
            purpose: None,
            request: self.request_id.clone(),
            query: None,
            detail: None,
        }
    }
}

impl Caller {
    pub fn subject(&self) -> Subject {
        self.user.subject()
    }
    pub fn mode(&self) -> Mode {
        self.ctx.mode
    }

    /// An audit record of this caller's action.
    pub fn record(&self, action: &str, status: u16, now: mamori_core::time::Timestamp) -> AuditRecord {
        let kind = match self.user.kind {
            SubjectKind::EmergencyAccount => "emergency",
            SubjectKind::System => "system",
            SubjectKind::Staff => "staff",
        };
        let mut r = self.ctx.record(self.user.name.as_str(), kind, action, status, now);
        r.agent.roles = self.user.roles.iter().map(|r| r.as_str().to_owned()).collect();
        r.agent.declared = self.declared.clone();
        r
    }

    /// A record of a FHIR interaction with its decision.
    #[allow(clippy::too_many_arguments)]
    pub fn fhir_record(
        &self,
        action: &str,
        status: u16,
        rtype: Option<&str>,
        id: Option<&str>,
        version: Option<u64>,
        patients: Vec<String>,
        decision: Option<&Decision>,
        now: mamori_core::time::Timestamp,
    ) -> AuditRecord {
        let mut r = self.record(action, status, now);
        r.entity = rtype.map(|t| Entity { rtype: t.to_owned(), id: id.map(str::to_owned), version });
        let mut patients = patients;
        patients.sort();
        patients.dedup();
        r.patients = patients;
        if let Some(d) = decision {
            r.basis = Some(d.basis.as_str().to_owned());
            r.purpose = d.purpose.map(|p| p.code().to_owned());
            if d.obligations.contains(&mamori_core::policy::Obligation::WouldPermitInEmergency) {
                r.detail = Some(serde_json::json!({"drill": "would-permit-in-emergency"}));
            }
        }
        r
    }
}

/// Marks a request made in-process by a local operator at the CLI, on a
/// data directory whose server is not running. Only code in this process
/// can insert it; it never comes from the network.
#[derive(Debug, Clone)]
pub struct LocalOperator(pub String);

impl LocalOperator {
    pub fn caller(&self, ctx: RequestCtx) -> Caller {
        let user = User {
            name: UserId::system(),
            display: "local operator".into(),
            kind: SubjectKind::System,
            department: None,
            roles: vec![mamori_core::policy::Role::Admin],
            must_change: false,
            has_password: false,
            has_totp: false,
            failed_logins: 0,
            locked_until: None,
            disabled: false,
            created: mamori_core::time::Timestamp(0),
        };
        Caller {
            node: None,
            user,
            token_id: "local".into(),
            declared: Some(format!("{} (mamori CLI on the server host)", self.0)),
            ctx,
        }
    }
}

/// Authentication failed: the rejection, already audited.
pub struct AuthRejection {
    pub err: ApiError,
    pub fhir: bool,
}

impl axum::response::IntoResponse for AuthRejection {
    fn into_response(self) -> axum::response::Response {
        if self.fhir {
            self.err.into_response()
        } else {
            crate::error::OpsError(self.err).into_response()
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The session cookie of the web UI (same tokens, kind `session`).
pub const SESSION_COOKIE: &str = "mamori_session";

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == SESSION_COOKIE).then(|| v.to_owned())
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let fhir = parts.uri.path().starts_with("/fhir");
        let ctx = RequestCtx::from_parts(parts, st.mode.get());
        // The session cookie authenticates only the UI's event stream: every
        // other API call of the UI is made in process with the bearer token,
        // so a forged cross-site request carrying the cookie gets nowhere.
        let cookie_ok = parts.method == axum::http::Method::GET && parts.uri.path() == "/api/v1/events";
        let secret = bearer(&parts.headers).or_else(|| if cookie_ok { session_cookie(&parts.headers) } else { None });
        let reject = |err: ApiError| AuthRejection { err, fhir };
        if let Some(m) = parts.extensions.get::<crate::maintenance::MaintenanceCaller>() {
            return Ok(m.0.clone());
        }
        let node = st.node();
        if let Some(op) = parts.extensions.get::<LocalOperator>() {
            let mut c = op.caller(ctx);
            c.node = node;
            return Ok(c);
        }
        let Some(secret) = secret else {
            // No credentials at all is not an attack; it is not audited.
            return Err(reject(ApiError::Unauthorized(
                "authentication required: send Authorization: Bearer <token>".into(),
            )));
        };
        let now = st.store.clock().now();
        let hash = accounts::token_hash(&secret);
        let found: Option<TokenInfo> = match st.tokens.get(&hash, now) {
            Some(hit) => Some(hit),
            None => {
                let gen = st.tokens.generation.load(std::sync::atomic::Ordering::SeqCst);
                let found = st
                    .store
                    .read(move |c| accounts::lookup_token(c, &secret, now))
                    .await
                    .map_err(|e| reject(e.into()))?;
                if let Some(info) = &found {
                    st.tokens.put(hash, gen, info.clone());
                }
                found
            }
        };
        let Some(info) = found else {
            let rec = ctx.record("anonymous", "anonymous", "auth-failure", 401, now);
            st.store.writer().audit(vec![rec]).await.map_err(|e| reject(e.into()))?;
            return Err(reject(ApiError::Unauthorized("invalid, expired or revoked token".into())));
        };
        let caller = Caller { node, user: info.user, token_id: info.id, declared: info.declared, ctx };
        // A first-login password must be changed before anything else.
        if caller.user.must_change && !parts.uri.path().starts_with("/api/v1/auth/") {
            return Err(reject(ApiError::Forbidden("password change required: POST /api/v1/auth/password".into())));
        }
        Ok(caller)
    }
}
