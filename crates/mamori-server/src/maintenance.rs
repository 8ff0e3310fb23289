//! Remote maintenance (guideline 6.10 EX-B1e, EX-B2a): vendors and their
//! named maintenance people (dedicated accounts, client certificates from
//! mamori's maintenance CA, TOTP, allow-listed addresses), approved and
//! time-boxed windows with explicit scopes, enforced on the maintenance
//! listener only, every action audited, a session summary at the close,
//! a review queue with overdue reports, and the people's lifecycle.

use std::net::IpAddr;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use mamori_core::maintenance::{allowed_source, approval, check_window, in_window, scope_for, valid_cidr, Scope};
use mamori_core::policy::{may_administer, Role, SubjectKind};
use mamori_core::time::Timestamp;
use mamori_store::accounts::{self, User};
use mamori_store::audit_log::{self, EventQuery};
use mamori_store::maintenance::{self as ms, Person, Session, Vendor};
use mamori_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::{ApiError, OpsError};
use crate::exchange::inbound::PeerCerts;
use crate::keys;
use crate::notify::{self, Audience};
use crate::ops::{json_body, refuse};
use crate::server::{DataDir, ServeError};
use crate::state::{AppState, Caller, PeerAddr, RequestCtx};

pub const CA_CERT: &str = "keys/maint-ca.cert.pem";
pub const CA_KEY: &str = "keys/maint-ca.key.pem";

/// Creates the maintenance CA if missing.
pub fn ensure_ca(dd: &DataDir, org: &str) -> Result<(), ServeError> {
    if !dd.0.join(CA_CERT).exists() {
        let (c, k) = keys::named_ca(&format!("{org} maintenance CA"), org, 3650)?;
        keys::write_secret(&dd.0.join(CA_KEY), k.as_bytes())?;
        keys::write_public(&dd.0.join(CA_CERT), c.as_bytes())?;
    }
    Ok(())
}

/// The Caller of a maintenance session, inserted by [`guard`] only.
#[derive(Clone)]
pub struct MaintenanceCaller(pub Caller);

type R = Result<Response, OpsError>;

fn fp(certs: &PeerCerts) -> Option<String> {
    certs.0.first().map(|d| crate::exchange::fingerprint(d))
}

fn ip(addr: &Option<Extension<PeerAddr>>) -> Option<IpAddr> {
    addr.as_ref().map(|a| a.0 .0.ip())
}

fn system_rec(
    st: &AppState,
    addr: Option<IpAddr>,
    who: &str,
    action: &str,
    status: u16,
    now: Timestamp,
) -> mamori_audit::event::AuditRecord {
    let mut r = RequestCtx { addr: addr.map(|a| a.to_string()), request_id: None, mode: st.mode.get() }.record(
        who,
        "maintenance",
        action,
        status,
        now,
    );
    r.agent.kind = "maintenance".into();
    r
}

/// Audits a refusal on the maintenance listener and raises an alert (once
/// per person and reason per 10 minutes).
async fn refused(st: &AppState, addr: Option<IpAddr>, who: &str, why: &str, status: u16, detail: Value) -> Response {
    let now = st.store.clock().now();
    let mut rec = system_rec(st, addr, who, "maintenance-refused", status, now);
    let mut d = detail;
    d["reason"] = json!(why);
    rec.detail = Some(d.clone());
    let _ = st.store.writer().audit(vec![rec]).await;
    let kind = format!("maintenance-refused:{who}");
    let since = now.plus_secs(-600);
    let k2 = kind.clone();
    if !st.store.read(move |c| mamori_store::emergency::recent_alert(c, &k2, since)).await.unwrap_or(true) {
        crate::bcp_api::raise_alert(
            st,
            &kind,
            "warning",
            &format!("保守アクセスを拒否しました / Refused remote maintenance access by {who}: {why}"),
            d,
        )
        .await;
    }
    (StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN), Json(json!({"error": "refused", "message": why})))
        .into_response()
}

fn synthetic_user(p: &Person, patient_data: bool) -> User {
    User {
        name: mamori_core::ids::UserId::parse(&p.id).unwrap_or_else(|_| mamori_core::ids::UserId::system()),
        display: p.display.clone(),
        kind: SubjectKind::Staff,
        department: Some(format!("vendor:{}", p.vendor)),
        roles: if patient_data { vec![Role::Maintenance] } else { Vec::new() },
        must_change: false,
        has_password: false,
        has_totp: true,
        failed_logins: 0,
        locked_until: None,
        disabled: false,
        created: p.created,
    }
}

fn scopes_of(v: &Value) -> Vec<Scope> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().and_then(Scope::parse)).collect()
}

// ---- the maintenance listener --------------------------------------------------------

/// The routes of the maintenance listener (see `app::maint_router`).
pub fn listener_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/maintenance/login", post(login))
        .route("/api/v1/maintenance/request", post(vendor_request))
}

/// Routes that need a live session (wrapped by [`guard`]).
pub fn session_routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/maintenance/session", get(session_info))
        .route("/api/v1/maintenance/logout", post(logout))
        .route("/api/v1/maintenance/ops/config", get(op_config))
        .route("/api/v1/maintenance/ops/status", get(op_status))
        .route("/api/v1/maintenance/ops/db", get(op_db))
        .route("/api/v1/maintenance/ops/db/check", post(op_db_check))
        .route("/api/v1/maintenance/ops/db/analyze", post(op_db_analyze))
        .route("/api/v1/maintenance/ops/audit/verify", get(op_audit_verify))
        .route("/api/v1/maintenance/ops/restart", post(op_restart))
}

/// Who is at the other end: the person whose current, unrevoked, unexpired
/// certificate was presented, from an allowed address, still active.
async fn identify(st: &AppState, certs: &PeerCerts, addr: Option<IpAddr>) -> Result<Person, Response> {
    let Some(fp) = fp(certs) else {
        return Err(refused(st, addr, "anonymous", "no client certificate", 401, json!({})).await);
    };
    let f2 = fp.clone();
    let found = st.store.read(move |c| Ok((ms::person_by_cert(c, &f2)?, ms::cert(c, &f2)?))).await;
    let (person, cert) = match found {
        Ok(x) => x,
        Err(e) => return Err(OpsError(e.into()).into_response()),
    };
    let now = st.store.clock().now();
    let Some(p) = person else {
        let why = match cert {
            Some((_, true)) => "the certificate was revoked",
            Some(_) => "the certificate was replaced by a newer one",
            None => "the certificate was not issued to a maintenance person",
        };
        return Err(refused(st, addr, "unknown", why, 403, json!({"certificate": fp})).await);
    };
    match cert {
        Some((_, true)) => {
            return Err(refused(st, addr, &p.id, "the certificate was revoked", 403, json!({"certificate": fp})).await)
        }
        Some((na, _)) if na <= now.secs() => {
            return Err(refused(st, addr, &p.id, "the certificate has expired", 403, json!({"certificate": fp})).await)
        }
        _ => {}
    }
    if p.state != "active" {
        return Err(refused(st, addr, &p.id, "the person has left; the account is closed", 403, json!({})).await);
    }
    let sources: Vec<String> =
        p.sources.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect();
    if !addr.is_some_and(|a| allowed_source(a, &sources)) {
        return Err(refused(
            st,
            addr,
            &p.id,
            "the source address is not on the person's allow-list",
            403,
            json!({"address": addr.map(|a| a.to_string())}),
        )
        .await);
    }
    Ok(p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginReq {
    request: i64,
    totp: String,
}

async fn login(
    State(st): State<AppState>,
    Extension(certs): Extension<PeerCerts>,
    addr: Option<Extension<PeerAddr>>,
    body: Body,
) -> Response {
    let a = ip(&addr);
    let p = match identify(&st, &certs, a).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req: LoginReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return OpsError(e).into_response(),
    };
    let now = st.store.clock().now();
    let Some(step) =
        accounts::totp_check(&p.totp_secret, &req.totp, now).filter(|s| p.totp_last_step.is_none_or(|l| *s > l))
    else {
        return refused(&st, a, &p.id, "wrong or reused second factor (TOTP)", 401, json!({"request": req.request}))
            .await;
    };
    let rid = req.request;
    let r = match st.store.read(move |c| ms::request(c, rid)).await {
        Ok(r) => r,
        Err(e) => return OpsError(e.into()).into_response(),
    };
    let Some(r) = r.filter(|r| r.person == p.id) else {
        return refused(&st, a, &p.id, "no such maintenance request for this person", 403, json!({"request": rid}))
            .await;
    };
    if r.state != "approved" {
        return refused(
            &st,
            a,
            &p.id,
            &format!("the request is {}, not approved", r.state),
            403,
            json!({"request": rid}),
        )
        .await;
    }
    if !in_window(r.start, r.end, now) {
        return refused(
            &st,
            a,
            &p.id,
            "outside the approved window",
            403,
            json!({"request": rid, "start": r.start.to_rfc3339(), "end": r.end.to_rfc3339()}),
        )
        .await;
    }
    let Ok(secret) = accounts::new_token_secret() else {
        return OpsError(ApiError::Internal("no randomness".into())).into_response();
    };
    let token = secret.replacen("mmr_", "mmm_", 1);
    let hash = accounts::token_hash(&token);
    let (p2, st2, fp2) = (p.clone(), st.clone(), fp(&certs).unwrap_or_default());
    let sess = Session {
        request: rid,
        person: p.id.clone(),
        cert_sha256: fp2,
        address: a.map(|x| x.to_string()),
        started: now,
        expires: r.end,
        ended: None,
        end_reason: None,
    };
    let res = st
        .store
        .writer()
        .write(
            move |w| {
                ms::insert_session(w.conn, &hash, &sess)?;
                ms::touch(w.conn, &p2.id, Some(step), w.now)?;
                let mut rec = system_rec(&st2, a, &p2.id, "maintenance-login", 200, w.now);
                rec.agent.declared = Some(format!("maintenance request #{rid} ({})", p2.vendor));
                rec.detail = Some(
                    json!({"request": rid, "window_end": sess.expires.to_rfc3339(), "certificate": sess.cert_sha256}),
                );
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await;
    match res {
        Ok(()) => Json(json!({"token": token, "expires_at": r.end.to_rfc3339(), "scopes": r.scopes, "request": rid}))
            .into_response(),
        Err(e) => OpsError(e.into()).into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    #[serde(default)]
    person: Option<String>,
    reason: String,
    scopes: Vec<String>,
    start: String,
    end: String,
    #[serde(default)]
    emergency: bool,
    /// Only when a maintenance person requests over the maintenance listener.
    #[serde(default)]
    totp: Option<String>,
}

fn parse_request(st: &AppState, r: &NewRequest) -> Result<(Vec<Scope>, Timestamp, Timestamp), ApiError> {
    let scopes: Vec<Scope> = r
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                ApiError::bad(
                    "scopes",
                    format!("'{s}': one of {}", Scope::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let start = Timestamp::parse_rfc3339(&r.start).ok_or_else(|| ApiError::bad("start", "an RFC 3339 time"))?;
    let end = Timestamp::parse_rfc3339(&r.end).ok_or_else(|| ApiError::bad("end", "an RFC 3339 time"))?;
    if r.reason.trim().chars().count() < 5 {
        return Err(ApiError::bad("reason", "at least 5 characters"));
    }
    check_window(start, end, st.store.clock().now(), &scopes, st.cfg.maintenance.max_window_hours)
        .map_err(|m| ApiError::bad("end", m))?;
    Ok((scopes, start, end))
}

async fn create_request(
    st: &AppState,
    person: &str,
    req: &NewRequest,
    by: &str,
    addr: Option<IpAddr>,
) -> Result<Value, ApiError> {
    let (scopes, start, end) = parse_request(st, req)?;
    let (p, reason, emergency, by2, st2) =
        (person.to_owned(), req.reason.trim().to_owned(), req.emergency, by.to_owned(), st.clone());
    let needed = i64::from(st.cfg.maintenance.approvals);
    let sc = json!(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (id, a) = st
        .store
        .writer()
        .write(
            move |w| {
                let pp = ms::person(w.conn, &p)?.ok_or_else(|| StoreError::NotFound(format!("maintenance person {p}")))?;
                if pp.state != "active" {
                    return Err(StoreError::Precondition(format!("{p} has left")));
                }
                let id = ms::insert_request(w.conn, &p, &reason, &sc, start, end, emergency, needed, &by2, w.now)?;
                let mut rec = system_rec(&st2, addr, &by2, "maintenance-request", 201, w.now);
                rec.detail = Some(json!({"request": id, "person": p, "vendor": pp.vendor, "scopes": sc, "start": start.to_rfc3339(), "end": end.to_rfc3339(), "emergency": emergency, "reason": reason}));
                w.audit(&rec)?;
                let msg = format!("保守作業の承認依頼 #{id}（{p}）/ Maintenance window #{id} for {p} awaits approval: {reason}");
                let roles = if emergency { vec![Role::Admin, Role::BcpDecider] } else { vec![Role::Admin] };
                let a = notify::announce(w, &st2, "maintenance-requested", false, "info", &msg, json!({"request": id}), Audience::Roles(roles))?;
                Ok((id, a))
            },
            |_, _| Ok(()),
        )
        .await?;
    notify::publish(st, [a]);
    Ok(json!({"id": id, "state": "requested", "needs_approvals": needed}))
}

/// A maintenance person asks for a window over the maintenance listener.
async fn vendor_request(
    State(st): State<AppState>,
    Extension(certs): Extension<PeerCerts>,
    addr: Option<Extension<PeerAddr>>,
    body: Body,
) -> Response {
    let a = ip(&addr);
    let p = match identify(&st, &certs, a).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let req: NewRequest = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return OpsError(e).into_response(),
    };
    let now = st.store.clock().now();
    let Some(step) = req
        .totp
        .as_deref()
        .and_then(|t| accounts::totp_check(&p.totp_secret, t, now))
        .filter(|s| p.totp_last_step.is_none_or(|l| *s > l))
    else {
        return refused(&st, a, &p.id, "wrong or reused second factor (TOTP)", 401, json!({})).await;
    };
    let pid = p.id.clone();
    let _ = st.store.writer().write(move |w| ms::touch(w.conn, &pid, Some(step), w.now), |_, _| Ok(())).await;
    match create_request(&st, &p.id, &req, &p.id, a).await {
        Ok(v) => (StatusCode::CREATED, Json(v)).into_response(),
        Err(e) => OpsError(e).into_response(),
    }
}

/// Every request on the maintenance listener after login: a live session
/// of the presenting certificate's person, inside the approved window,
/// within its scopes.
pub async fn guard(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let certs = req.extensions().get::<PeerCerts>().cloned().unwrap_or_default();
    let a = req.extensions().get::<PeerAddr>().map(|p| p.0.ip());
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        return refused(
            &st,
            a,
            "anonymous",
            "log in first: POST /api/v1/maintenance/login",
            401,
            json!({"path": path}),
        )
        .await;
    };
    let hash = accounts::token_hash(&token);
    let h2 = hash.clone();
    let sess = match st.store.read(move |c| ms::session(c, &h2)).await {
        Ok(s) => s,
        Err(e) => return OpsError(e.into()).into_response(),
    };
    let Some(sess) = sess else {
        return refused(&st, a, "anonymous", "unknown maintenance session", 401, json!({"path": path})).await;
    };
    let p = match identify(&st, &certs, a).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    if p.id != sess.person || fp(&certs).as_deref() != Some(sess.cert_sha256.as_str()) {
        return refused(&st, a, &p.id, "the session belongs to another certificate", 403, json!({"path": path})).await;
    }
    let now = st.store.clock().now();
    let rid = sess.request;
    let r = match st.store.read(move |c| ms::request(c, rid)).await {
        Ok(Some(r)) => r,
        Ok(None) => return refused(&st, a, &p.id, "the request is gone", 403, json!({})).await,
        Err(e) => return OpsError(e.into()).into_response(),
    };
    if sess.ended.is_some() || r.state != "approved" || !in_window(r.start, r.end, now) {
        let why = if sess.ended.is_some() {
            format!("the session has ended ({})", sess.end_reason.clone().unwrap_or_default())
        } else if r.state != "approved" {
            format!("the window was {}", r.state)
        } else {
            "the approved window is over".into()
        };
        let h3 = hash.clone();
        let why2 = why.clone();
        let _ = st
            .store
            .writer()
            .write(
                move |w| {
                    w.conn.exec(
                        "UPDATE maint_sessions SET ended = $2, end_reason = $3 WHERE token_hash = $1 AND ended IS NULL",
                        mamori_store::p![h3.as_slice(), w.now.micros(), why2.as_str()],
                    )?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await;
        return refused(&st, a, &p.id, &why, 401, json!({"request": rid, "path": path})).await;
    }
    let scopes = scopes_of(&r.scopes);
    let always = path == "/api/v1/maintenance/session" || path == "/api/v1/maintenance/logout";
    let needed = scope_for(&method, &path);
    if !always && !needed.is_some_and(|s| scopes.contains(&s)) {
        let why = match needed {
            Some(s) => format!(
                "'{}' is outside the approved scopes ({})",
                s.as_str(),
                scopes.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            ),
            None => format!("{method} {path} is not available to remote maintenance"),
        };
        return refused(&st, a, &p.id, &why, 403, json!({"request": rid, "path": path, "method": method})).await;
    }
    let ctx = RequestCtx {
        addr: a.map(|x| x.to_string()),
        request_id: req.extensions().get::<crate::state::RequestId>().map(|r| r.0.clone()),
        mode: req.extensions().get::<crate::state::RequestMode>().map_or(st.mode.get(), |m| m.0),
    };
    let caller = Caller {
        node: st.node(),
        user: synthetic_user(&p, scopes.contains(&Scope::PatientData)),
        token_id: format!("maintenance:{rid}"),
        declared: Some(format!("{} ({}) — maintenance request #{rid}", p.display, p.vendor)),
        ctx,
    };
    req.extensions_mut().insert(MaintenanceCaller(caller.clone()));
    req.extensions_mut().insert(MaintenanceWindow { request: rid, person: p.id.clone(), scopes: scopes.clone() });
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let (pid, st2) = (p.id.clone(), st.clone());
    let _ = st
        .store
        .writer()
        .write(
            move |w| {
                ms::touch(w.conn, &pid, None, w.now)?;
                let mut rec = caller.record("maintenance-action", status, w.now);
                rec.agent.kind = "maintenance".into();
                rec.query = Some(format!("{method} {path}"));
                rec.detail = Some(json!({"request": rid, "scope": needed.map(|s| s.as_str())}));
                let _ = &st2;
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await;
    resp
}

/// The window of the current maintenance session.
#[derive(Clone)]
pub struct MaintenanceWindow {
    pub request: i64,
    pub person: String,
    pub scopes: Vec<Scope>,
}

async fn session_info(Extension(w): Extension<MaintenanceWindow>, State(st): State<AppState>) -> R {
    let rid = w.request;
    let r = st.store.read(move |c| ms::request(c, rid)).await?.ok_or_else(|| ApiError::NotFound("request".into()))?;
    Ok(Json(
        json!({"person": w.person, "request": rid, "scopes": w.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                    "window": {"start": r.start.to_rfc3339(), "end": r.end.to_rfc3339()}, "reason": r.reason}),
    )
    .into_response())
}

async fn logout(State(st): State<AppState>, headers: HeaderMap) -> R {
    if let Some(t) = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        let hash = accounts::token_hash(t.trim());
        st.store.writer().write(move |w| {
            w.conn.exec("UPDATE maint_sessions SET ended = $2, end_reason = 'logout' WHERE token_hash = $1 AND ended IS NULL", mamori_store::p![hash.as_slice(), w.now.micros()])?;
            Ok(())
        }, |_, _| Ok(())).await?;
    }
    Ok(Json(json!({"logged_out": true})).into_response())
}

async fn op_config(State(st): State<AppState>) -> R {
    let mut v = serde_json::to_value(&st.cfg).map_err(|e| ApiError::Internal(e.to_string()))?;
    // Nothing secret is stored inline; file paths of secrets are shown as paths.
    if let Some(w) = v.pointer_mut("/notify/webhooks").and_then(Value::as_array_mut) {
        for h in w {
            h["secret_file"] = json!(if h["secret_file"].as_str().unwrap_or("").is_empty() { "" } else { "(set)" });
        }
    }
    Ok(Json(v).into_response())
}

async fn op_status(State(st): State<AppState>) -> R {
    let alerts = st.store.read(|c| mamori_store::emergency::alerts(c, false, 20)).await?;
    let size = st.store.read(audit_log::size).await?;
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"), "mode": st.mode.get().header_value(), "audit_tree_size": size,
        "metrics": st.metrics.render(&[]),
        "recent_alerts": alerts.iter().map(|a| json!({"time": a.time.to_rfc3339(), "kind": a.kind, "severity": a.severity, "acked": a.acked_at.is_some()})).collect::<Vec<_>>(),
    }))
    .into_response())
}

async fn op_db(State(st): State<AppState>) -> R {
    let v = st
        .store
        .read(|c| {
            let one = |c: &mut dyn mamori_store::sql::Conn, sql: &str| -> Result<i64, StoreError> {
                Ok(c.query_one(sql, mamori_store::p![])?.map(|r| r.i64(0)).transpose()?.unwrap_or(0))
            };
            let mut v = json!({
                "resources": one(c, "SELECT COUNT(*) FROM resources")?,
                "versions": one(c, "SELECT COUNT(*) FROM resource_versions")?,
                "audit_events": one(c, "SELECT COUNT(*) FROM audit_events")?,
            });
            match c.backend() {
                mamori_store::sql::Backend::Sqlite => {
                    v["backend"] = json!("sqlite");
                    v["page_count"] = json!(one(c, "PRAGMA page_count")?);
                    v["page_size"] = json!(one(c, "PRAGMA page_size")?);
                    v["freelist_count"] = json!(one(c, "PRAGMA freelist_count")?);
                }
                mamori_store::sql::Backend::Postgres => {
                    v["backend"] = json!("postgres");
                    v["database_bytes"] = json!(one(c, "SELECT pg_database_size(current_database())")?);
                }
            }
            Ok(v)
        })
        .await?;
    Ok(Json(v).into_response())
}

async fn op_db_check(State(st): State<AppState>) -> R {
    let rows = st
        .store
        .read(|c| {
            match c.backend() {
                mamori_store::sql::Backend::Sqlite => Ok(c
                    .query("PRAGMA quick_check", mamori_store::p![])?
                    .iter()
                    .filter_map(|r| r.text(0).ok())
                    .collect::<Vec<_>>()),
                // PostgreSQL checks its pages itself (data checksums,
                // amcheck for the DBA): here, that every table answers.
                mamori_store::sql::Backend::Postgres => {
                    for t in ["resources", "resource_versions", "audit_events", "merkle_nodes", "checkpoints", "users"]
                    {
                        c.query_one(&format!("SELECT COUNT(*) FROM {t}"), mamori_store::p![])?;
                    }
                    Ok(vec!["ok".to_owned()])
                }
            }
        })
        .await?;
    Ok(Json(json!({"ok": rows == ["ok"], "result": rows})).into_response())
}

async fn op_db_analyze(State(st): State<AppState>) -> R {
    st.store.writer().write(|w| Ok(w.conn.batch("ANALYZE")?), |_, _| Ok(())).await?;
    Ok(Json(json!({"analyzed": true})).into_response())
}

async fn op_audit_verify(State(st): State<AppState>) -> R {
    let dd = DataDir(st.data_dir.clone());
    let (_, vkey) = crate::server::load_signer(&dd).map_err(|e| ApiError::Internal(e.to_string()))?;
    let origin = st.cfg.audit.origin.clone();
    let report = st.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, false)).await?;
    Ok(Json(json!({"ok": report.ok(), "events": report.events, "checkpoints": report.checkpoints,
                    "findings": report.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>()}))
    .into_response())
}

async fn op_restart(State(st): State<AppState>) -> R {
    st.restart.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"restarting": "the server stops gracefully; the service manager starts it again"})),
    )
        .into_response())
}

// ---- the hospital side (main listener) ---------------------------------------------------

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/maintenance/vendors", get(list_vendors).post(add_vendor))
        .route("/api/v1/maintenance/people", get(list_people).post(add_person))
        .route("/api/v1/maintenance/people/{id}/leave", post(person_leaves))
        .route("/api/v1/maintenance/people/{id}/reissue", post(reissue))
        .route("/api/v1/maintenance/requests", get(list_requests).post(staff_request))
        .route("/api/v1/maintenance/requests/{id}", get(show_request))
        .route("/api/v1/maintenance/requests/{id}/approve", post(approve))
        .route("/api/v1/maintenance/requests/{id}/reject", post(reject))
        .route("/api/v1/maintenance/requests/{id}/revoke", post(revoke))
        .route("/api/v1/maintenance/requests/{id}/review", post(review))
        .route("/api/v1/maintenance/report", get(report))
        .route("/api/v1/maintenance/ca", get(ca_cert))
}

fn admin(caller: &Caller) -> Result<(), ApiError> {
    if may_administer(&caller.subject()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("remote maintenance is managed by admins".into()))
    }
}

fn manager(caller: &Caller) -> Result<(), ApiError> {
    let s = caller.subject();
    if may_administer(&s) || s.has(Role::Auditor) || s.has(Role::BcpDecider) {
        Ok(())
    } else {
        Err(ApiError::Forbidden("maintenance records are for admins, auditors and BCP deciders".into()))
    }
}

fn valid_id(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VendorReq {
    id: String,
    name: String,
    contact: String,
}

async fn add_vendor(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    const A: &str = "maintenance-vendor-add";
    if let Err(e) = admin(&caller) {
        return Err(refuse(&st, &caller, A, e).await);
    }
    let req: VendorReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, A, e).await),
    };
    if !valid_id(&req.id) || req.name.trim().is_empty() || req.contact.trim().is_empty() {
        return Err(refuse(
            &st,
            &caller,
            A,
            ApiError::bad("id", "id: 2-64 lowercase letters, digits, '.', '_', '-'; name and contact required"),
        )
        .await);
    }
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                ms::insert_vendor(
                    w.conn,
                    &Vendor {
                        id: req.id.clone(),
                        name: req.name.trim().into(),
                        contact: req.contact.trim().into(),
                        created: w.now,
                        created_by: c2.user.name.as_str().into(),
                    },
                )?;
                let mut rec = c2.record(A, 201, w.now);
                rec.detail = Some(json!({"vendor": req.id, "name": req.name}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"created": true}))).into_response())
}

async fn list_vendors(State(st): State<AppState>, caller: Caller) -> R {
    manager(&caller)?;
    Ok(Json(json!({"vendors": st.store.read(ms::vendors).await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonReq {
    id: String,
    vendor: String,
    display: String,
    /// Allowed source addresses (CIDR).
    sources: Vec<String>,
}

fn issue(st: &AppState, person: &str, vendor: &str) -> Result<(String, String, String, String, i64), ApiError> {
    let dd = DataDir(st.data_dir.clone());
    let ca = std::fs::read(dd.0.join(CA_CERT)).map_err(|e| ApiError::Internal(e.to_string()))?;
    let key = keys::read_secret(&dd.0.join(CA_KEY)).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (c, k, sha, serial, na) = keys::client_cert(&ca, &key, person, vendor, st.cfg.maintenance.cert_days)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((c, k.to_string(), sha, serial, na))
}

async fn add_person(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    const A: &str = "maintenance-person-add";
    if let Err(e) = admin(&caller) {
        return Err(refuse(&st, &caller, A, e).await);
    }
    let req: PersonReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, A, e).await),
    };
    if !valid_id(&req.id)
        || req.display.trim().is_empty()
        || req.sources.is_empty()
        || req.sources.iter().any(|c| !valid_cidr(c))
    {
        return Err(refuse(
            &st,
            &caller,
            A,
            ApiError::bad("", "id (lowercase), display, and sources as CIDR blocks (e.g. 203.0.113.0/28) are required"),
        )
        .await);
    }
    let (cert, key, sha, serial, na) = issue(&st, &req.id, &req.vendor)?;
    let secret = accounts::random_bytes::<20>().map_err(ApiError::from)?.to_vec();
    let (c2, s2, sha2) = (caller.clone(), secret.clone(), sha.clone());
    st.store
        .writer()
        .write(
            move |w| {
                if ms::vendor(w.conn, &req.vendor)?.is_none() {
                    return Err(StoreError::NotFound(format!("vendor {}", req.vendor)));
                }
                ms::insert_person(
                    w.conn,
                    &Person {
                        id: req.id.clone(),
                        vendor: req.vendor.clone(),
                        display: req.display.trim().into(),
                        state: "active".into(),
                        totp_secret: s2,
                        totp_last_step: None,
                        sources: json!(req.sources),
                        cert_sha256: sha2.clone(),
                        created: w.now,
                        created_by: c2.user.name.as_str().into(),
                        left_at: None,
                        last_used: None,
                    },
                )?;
                ms::insert_cert(w.conn, &sha2, &req.id, &serial, na, w.now)?;
                let mut rec = c2.record(A, 201, w.now);
                rec.detail =
                    Some(json!({"person": req.id, "vendor": req.vendor, "sources": req.sources, "certificate": sha2}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    let b32 = accounts::base32(&secret);
    Ok((StatusCode::CREATED, Json(json!({
        "certificate": cert, "private_key": key, "certificate_sha256": sha, "not_after": Timestamp::from_secs(na).to_rfc3339(),
        "totp_secret": b32, "otpauth_uri": format!("otpauth://totp/mamori-maintenance:{}?secret={b32}&issuer=mamori", "person"),
        "notice": "証明書・鍵・TOTP は一度だけ表示されます。本人に安全に渡してください / Shown once: hand them to the person securely."
    }))).into_response())
}

async fn list_people(State(st): State<AppState>, caller: Caller) -> R {
    manager(&caller)?;
    Ok(Json(json!({"people": st.store.read(ms::people).await?})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonReq {
    reason: String,
}

async fn person_leaves(State(st): State<AppState>, caller: Caller, Path(id): Path<String>, body: Body) -> R {
    const A: &str = "maintenance-person-left";
    if let Err(e) = admin(&caller) {
        return Err(refuse(&st, &caller, A, e).await);
    }
    let req: ReasonReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, A, e).await),
    };
    let c2 = caller.clone();
    let n = st.store.writer().write(move |w| {
        if !ms::mark_left(w.conn, &id, w.now)? {
            return Err(StoreError::Precondition(format!("{id} is unknown or has already left")));
        }
        let certs = ms::revoke_certs(w.conn, &id, c2.user.name.as_str(), w.now)?;
        let sessions = ms::end_sessions(w.conn, None, Some(&id), "the person left", w.now)?;
        let open: Vec<i64> = ms::requests(w.conn, None, None, 10_000)?.into_iter().filter(|r| r.person == id && matches!(r.state.as_str(), "requested" | "approved")).map(|r| r.id).collect();
        for r in &open {
            ms::decide(w.conn, *r, "revoked", c2.user.name.as_str(), Some("the person left"), w.now)?;
        }
        let mut rec = c2.record(A, 200, w.now);
        rec.detail = Some(json!({"person": id, "reason": req.reason, "certificates_revoked": certs, "sessions_ended": sessions, "requests_revoked": open}));
        w.audit(&rec)?;
        Ok(json!({"person": id, "certificates_revoked": certs, "sessions_ended": sessions, "requests_revoked": open}))
    }, |_, _| Ok(())).await?;
    Ok(Json(n).into_response())
}

async fn reissue(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> R {
    const A: &str = "maintenance-certificate-reissue";
    if let Err(e) = admin(&caller) {
        return Err(refuse(&st, &caller, A, e).await);
    }
    let i2 = id.clone();
    let p = st
        .store
        .read(move |c| ms::person(c, &i2))
        .await?
        .filter(|p| p.state == "active")
        .ok_or_else(|| ApiError::NotFound(format!("active maintenance person {id}")))?;
    let (cert, key, sha, serial, na) = issue(&st, &p.id, &p.vendor)?;
    let (c2, sha2) = (caller.clone(), sha.clone());
    st.store
        .writer()
        .write(
            move |w| {
                ms::revoke_certs(w.conn, &p.id, c2.user.name.as_str(), w.now)?;
                ms::end_sessions(w.conn, None, Some(&p.id), "certificate reissued", w.now)?;
                ms::insert_cert(w.conn, &sha2, &p.id, &serial, na, w.now)?;
                ms::set_person_cert(w.conn, &p.id, &sha2)?;
                let mut rec = c2.record(A, 200, w.now);
                rec.detail = Some(json!({"person": p.id, "certificate": sha2}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"certificate": cert, "private_key": key, "certificate_sha256": sha, "not_after": Timestamp::from_secs(na).to_rfc3339()})).into_response())
}

async fn staff_request(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    const A: &str = "maintenance-request";
    let req: NewRequest = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, A, e).await),
    };
    let s = caller.subject();
    if !(may_administer(&s) || s.has(Role::BcpDecider)) {
        return Err(refuse(&st, &caller, A, ApiError::Forbidden("maintenance windows are requested by admins or BCP deciders (or by the person over the maintenance listener)".into())).await);
    }
    let Some(person) = req.person.clone() else {
        return Err(refuse(&st, &caller, A, ApiError::bad("person", "required")).await);
    };
    match create_request(
        &st,
        &person,
        &req,
        caller.user.name.as_str(),
        caller.ctx.addr.as_deref().and_then(|a| a.parse().ok()),
    )
    .await
    {
        Ok(v) => Ok((StatusCode::CREATED, Json(v)).into_response()),
        Err(e) => Err(refuse(&st, &caller, A, e).await),
    }
}

#[derive(Deserialize)]
struct ListQ {
    state: Option<String>,
    review: Option<String>,
}

fn request_json(r: &ms::Request, now: Timestamp) -> Value {
    let mut v = json!(r);
    v["live"] = json!(r.state == "approved" && in_window(r.start, r.end, now));
    v["review_overdue"] = json!(r.review.as_deref() == Some("pending") && r.review_due.is_some_and(|d| d <= now));
    v
}

async fn list_requests(State(st): State<AppState>, caller: Caller, Query(q): Query<ListQ>) -> R {
    manager(&caller)?;
    let now = st.store.clock().now();
    let rows = st.store.read(move |c| ms::requests(c, q.state.as_deref(), q.review.as_deref(), 500)).await?;
    Ok(Json(json!({"requests": rows.iter().map(|r| request_json(r, now)).collect::<Vec<_>>()})).into_response())
}

async fn show_request(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> R {
    manager(&caller)?;
    let now = st.store.clock().now();
    let (r, sessions) = st.store.read(move |c| Ok((ms::request(c, id)?, ms::sessions_of(c, id)?))).await?;
    let r = r.ok_or_else(|| ApiError::NotFound(format!("maintenance request {id}")))?;
    let mut v = request_json(&r, now);
    v["sessions"] = json!(sessions);
    Ok(Json(v).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NoteReq {
    #[serde(default)]
    note: Option<String>,
}

async fn approve(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    const A: &str = "maintenance-approve";
    let req: NoteReq = json_body(body).await.unwrap_or_default();
    let (c2, c3, st2) = (caller.clone(), caller.clone(), st.clone());
    let v = st.store.writer().write(move |w| {
        let r = ms::request(w.conn, id)?.ok_or_else(|| StoreError::NotFound(format!("maintenance request {id}")))?;
        if r.state != "requested" {
            return Err(StoreError::Precondition(format!("request {id} is {}", r.state)));
        }
        if r.end <= w.now {
            return Err(StoreError::Precondition(format!("request {id}'s window is already over")));
        }
        let s = c2.subject();
        let already: Vec<String> = r.approvals.as_array().into_iter().flatten().filter_map(|a| a["by"].as_str().map(str::to_owned)).collect();
        let me = c2.user.name.as_str();
        let done = approval(me, &r.requested_by, may_administer(&s), s.has(Role::BcpDecider), r.emergency, &c2.mode(), &already, r.needed as usize)
            .map_err(StoreError::Forbidden)?;
        // The maintenance person cannot approve their own window either.
        if me == r.person {
            return Err(StoreError::Forbidden("a maintenance person cannot approve their own window".into()));
        }
        let mut list = r.approvals.as_array().cloned().unwrap_or_default();
        list.push(json!({"by": me, "at": w.now.to_rfc3339(), "note": req.note}));
        ms::set_approvals(w.conn, id, &json!(list))?;
        if done {
            ms::decide(w.conn, id, "approved", me, req.note.as_deref(), w.now)?;
        }
        let mut rec = c2.record(A, 200, w.now);
        rec.detail = Some(json!({"request": id, "approvals": list.len(), "complete": done}));
        w.audit(&rec)?;
        let _ = &st2;
        Ok(json!({"request": id, "state": if done { "approved" } else { "requested" }, "approvals": list.len(), "needed": r.needed}))
    }, move |e, w| {
        let mut rec = c3.record(A, ApiError::from(e.clone()).status().as_u16(), w.now);
        rec.detail = Some(json!({"request": id, "error": e.to_string()}));
        w.audit(&rec).map(|_| ())
    }).await?;
    Ok(Json(v).into_response())
}

async fn decide_as(st: AppState, caller: Caller, id: i64, body: Body, to: &'static str) -> R {
    let action = if to == "rejected" { "maintenance-reject" } else { "maintenance-revoke" };
    if let Err(e) = admin(&caller) {
        return Err(refuse(&st, &caller, action, e).await);
    }
    let req: ReasonReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, action, e).await),
    };
    let (c2, st2) = (caller.clone(), st.clone());
    let a = st
        .store
        .writer()
        .write(
            move |w| {
                let r = ms::request(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("maintenance request {id}")))?;
                let ok_from = if to == "rejected" {
                    r.state == "requested"
                } else {
                    matches!(r.state.as_str(), "requested" | "approved")
                };
                if !ok_from {
                    return Err(StoreError::Precondition(format!("request {id} is {}", r.state)));
                }
                ms::decide(w.conn, id, to, c2.user.name.as_str(), Some(req.reason.trim()), w.now)?;
                let ended = ms::end_sessions(w.conn, Some(id), None, to, w.now)?;
                let mut rec = c2.record(action, 200, w.now);
                rec.detail = Some(json!({"request": id, "reason": req.reason, "sessions_ended": ended}));
                w.audit(&rec)?;
                if to == "revoked" {
                    let msg = format!(
                        "保守作業 #{id} を取り消しました / Maintenance window #{id} revoked: {}",
                        req.reason.trim()
                    );
                    notify::announce(
                        w,
                        &st2,
                        "maintenance-revoked",
                        false,
                        "warning",
                        &msg,
                        json!({"request": id}),
                        Audience::Roles(vec![Role::Admin, Role::Auditor]),
                    )
                    .map(Some)
                } else {
                    Ok(None)
                }
            },
            |_, _| Ok(()),
        )
        .await?;
    if let Some(a) = a {
        notify::publish(&st, [a]);
    }
    Ok(Json(json!({"request": id, "state": to})).into_response())
}

async fn reject(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    decide_as(st, caller, id, body, "rejected").await
}

async fn revoke(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    decide_as(st, caller, id, body, "revoked").await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    outcome: String,
    note: String,
}

async fn review(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>, body: Body) -> R {
    const A: &str = "maintenance-review";
    if let Err(e) = manager(&caller) {
        return Err(refuse(&st, &caller, A, e).await);
    }
    let req: ReviewReq = match json_body::<ReviewReq>(body).await {
        Ok(r) if matches!(r.outcome.as_str(), "accepted" | "questioned") && !r.note.trim().is_empty() => r,
        Ok(_) => {
            return Err(refuse(&st, &caller, A, ApiError::bad("outcome", "accepted or questioned, with a note")).await)
        }
        Err(e) => return Err(refuse(&st, &caller, A, e).await),
    };
    let c2 = caller.clone();
    let outcome = req.outcome.clone();
    st.store
        .writer()
        .write(
            move |w| {
                let r = ms::request(w.conn, id)?
                    .ok_or_else(|| StoreError::NotFound(format!("maintenance request {id}")))?;
                if r.review.as_deref() != Some("pending") {
                    return Err(StoreError::Precondition(format!("request {id} is not waiting for review")));
                }
                if r.requested_by == c2.user.name.as_str() {
                    return Err(StoreError::Forbidden("the requester does not review their own window".into()));
                }
                ms::review(w.conn, id, &req.outcome, c2.user.name.as_str(), req.note.trim(), w.now)?;
                let mut rec = c2.record(A, 200, w.now);
                rec.detail = Some(json!({"request": id, "outcome": req.outcome, "note": req.note.trim()}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"request": id, "review": outcome})).into_response())
}

async fn report(State(st): State<AppState>, caller: Caller) -> R {
    manager(&caller)?;
    let now = st.store.clock().now();
    let (people, reqs) = st.store.read(|c| Ok((ms::people(c)?, ms::requests(c, None, None, 10_000)?))).await?;
    let out: Vec<Value> = people
        .iter()
        .map(|p| {
            let mine: Vec<&ms::Request> = reqs.iter().filter(|r| r.person == p.id).collect();
            json!({"person": p.id, "vendor": p.vendor, "display": p.display, "state": p.state, "left_at": p.left_at.map(|t| t.to_rfc3339()),
                   "last_used": p.last_used.map(|t| t.to_rfc3339()), "days_since_use": p.last_used.map(|t| (now.secs() - t.secs()) / 86_400),
                   "windows": mine.len(), "pending_reviews": mine.iter().filter(|r| r.review.as_deref() == Some("pending")).count()})
        })
        .collect();
    Ok(Json(json!({"generated": now.to_rfc3339(), "people": out})).into_response())
}

async fn ca_cert(State(st): State<AppState>, _caller: Caller) -> R {
    let pem = std::fs::read_to_string(DataDir(st.data_dir.clone()).0.join(CA_CERT))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(json!({"maintenance_ca": pem})).into_response())
}

// ---- closing windows ------------------------------------------------------------------

/// What happened in a window, from the audit log.
fn summarize(w: &mut mamori_store::writer::WriteCtx<'_>, r: &ms::Request) -> Result<Value, StoreError> {
    w.flush_index()?;
    let q = EventQuery {
        agent: Some(r.person.clone()),
        from: Some(r.start.micros()),
        to: Some(w.now.micros() + 1),
        limit: 100_000,
        ..Default::default()
    };
    let events = audit_log::search_events(w.conn, &q)?;
    let mut by_action = std::collections::BTreeMap::<String, u64>::new();
    let mut patients = std::collections::BTreeSet::new();
    let mut ops = Vec::new();
    let mut refused = 0u64;
    for (_, leaf) in events.iter().rev() {
        let text = String::from_utf8_lossy(leaf);
        let Some((_, json_part)) = text.split_once('\n') else { continue };
        let Ok(e) = serde_json::from_str::<Value>(json_part) else { continue };
        let action = e["action"].as_str().unwrap_or("").to_owned();
        *by_action.entry(action.clone()).or_default() += 1;
        for p in e["patients"].as_array().into_iter().flatten() {
            if let Some(p) = p.as_str() {
                patients.insert(p.to_owned());
            }
        }
        if action == "maintenance-refused" || e["status"].as_u64().is_some_and(|s| s == 401 || s == 403) {
            refused += 1;
        }
        if action == "maintenance-action" && ops.len() < 500 {
            ops.push(json!({"time": e["time"], "what": e["query"], "status": e["status"]}));
        }
    }
    let sessions = ms::sessions_of(w.conn, r.id)?;
    Ok(json!({
        "events": events.len(), "by_action": by_action, "operations": ops, "refusals": refused,
        "patient_data_accessed": !patients.is_empty(), "patients": patients,
        "sessions": sessions.iter().map(|s| json!({"started": s.started.to_rfc3339(), "ended": s.ended.map(|t| t.to_rfc3339()), "end_reason": s.end_reason, "address": s.address})).collect::<Vec<_>>(),
    }))
}

/// Closes windows that ended (or were revoked), queues them for review,
/// reports overdue reviews. Runs every few seconds.
pub async fn run(st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        let now = st.store.clock().now();
        let due_h = st.cfg.maintenance.review_due_hours;
        let st2 = st.clone();
        let r = st.store.writer().write(move |w| {
            let mut out = Vec::new();
            for r in ms::to_close(w.conn, w.now)? {
                ms::end_sessions(w.conn, Some(r.id), None, "window closed", w.now)?;
                let summary = summarize(w, &r)?;
                let state = if r.state == "revoked" { "revoked" } else { "closed" };
                ms::close(w.conn, r.id, state, &summary, w.now.plus_secs(due_h * 3600), w.now)?;
                let mut rec = system_rec(&st2, None, "system", "maintenance-window-closed", 200, w.now);
                rec.agent.kind = "system".into();
                rec.patients = summary["patients"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()).unwrap_or_default();
                rec.detail = Some(json!({"request": r.id, "person": r.person, "summary": {"events": summary["events"], "patient_data_accessed": summary["patient_data_accessed"], "refusals": summary["refusals"]}}));
                w.audit(&rec)?;
                let msg = format!("保守作業 #{} が終了しました。確認してください / Maintenance window #{} ({}) closed: please review it", r.id, r.id, r.person);
                out.push(notify::announce(w, &st2, "maintenance-review-needed", false, "info", &msg, json!({"request": r.id}), Audience::Roles(vec![Role::Admin, Role::Auditor]))?);
            }
            for r in ms::overdue(w.conn, w.now)? {
                ms::mark_overdue_reported(w.conn, r.id)?;
                let msg = format!("保守作業 #{} の確認が期限を過ぎています / The review of maintenance window #{} ({}) is overdue", r.id, r.id, r.person);
                mamori_store::emergency::insert_alert(w.conn, "maintenance-review-overdue", "warning", &msg, &json!({"request": r.id}), w.now)?;
                out.push(notify::announce(w, &st2, "maintenance-review-overdue", false, "warning", &msg, json!({"request": r.id}), Audience::Roles(vec![Role::Admin, Role::Auditor]))?);
            }
            Ok(out)
        }, |_, _| Ok(())).await;
        match r {
            Ok(list) => notify::publish(&st, list),
            Err(e) => tracing::error!(error = %e, now = %now.to_rfc3339(), "maintenance: could not close windows"),
        }
    }
}
