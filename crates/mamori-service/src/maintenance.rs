//! Remote maintenance (guideline 6.10 EX-B1e, EX-B2a): vendors and their
//! named maintenance people (dedicated accounts, client certificates from
//! mamori's maintenance CA, TOTP, allow-listed addresses), approved and
//! time-boxed windows with explicit scopes, enforced on the maintenance
//! listener only, every action audited, a session summary at the close,
//! a review queue with overdue reports, and the people's lifecycle.

use std::net::IpAddr;

use mamori_audit::event::AuditRecord;
use mamori_core::maintenance::{allowed_source, approval, check_window, in_window, scope_for, valid_cidr, Scope};
use mamori_core::policy::{told, Decision, Facts, Notice, Operation};
use mamori_core::time::Timestamp;
use mamori_store::accounts;
use mamori_store::audit_log::{self, EventQuery};
use mamori_store::maintenance::{self as ms, Person, Session, Vendor};
use mamori_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor, RequestCtx};
use crate::authz;
use crate::error::ServiceError;
use crate::exchange::inbound::PeerCerts;
use crate::init::{DataDir, MAINT_CA_CERT as CA_CERT, MAINT_CA_KEY as CA_KEY};
use crate::keys;
use crate::notify::{self, Audience};
use crate::services::Services;

/// A refusal on the maintenance listener, already audited (and alerted).
#[derive(Debug)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// Why (told to the caller).
    pub message: String,
}

fn fp(certs: &PeerCerts) -> Option<String> {
    certs.0.first().map(|d| crate::exchange::fingerprint(d))
}

fn system_rec(
    st: &Services,
    addr: Option<IpAddr>,
    who: &str,
    action: &str,
    status: u16,
    now: Timestamp,
) -> AuditRecord {
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
async fn refused(st: &Services, addr: Option<IpAddr>, who: &str, why: &str, status: u16, detail: Value) -> Refused {
    let now = st.now();
    let mut rec = system_rec(st, addr, who, "maintenance-refused", status, now);
    let mut d = detail;
    if let Some(o) = d.as_object_mut() {
        o.insert("reason".into(), json!(why));
    }
    rec.detail = Some(d.clone());
    if let Err(e) = st.store.writer().audit(vec![rec]).await {
        tracing::error!(error = %e, "maintenance: could not audit a refusal");
    }
    let kind = format!("maintenance-refused:{who}");
    let since = now.plus_secs(-600);
    let k2 = kind.clone();
    if !st.store.read(move |c| mamori_store::emergency::recent_alert(c, &k2, since)).await.unwrap_or(true) {
        crate::notify::raise_alert(
            st,
            &kind,
            "warning",
            &format!("保守アクセスを拒否しました / Refused remote maintenance access by {who}: {why}"),
            d,
        )
        .await;
    }
    Refused { status, message: why.to_owned() }
}

fn unavailable(e: impl std::fmt::Display) -> Refused {
    tracing::error!(error = %e, "maintenance: the store");
    Refused { status: 503, message: "temporarily unavailable; nothing was changed".into() }
}

fn scopes_of(v: &Value) -> Vec<Scope> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().and_then(Scope::parse)).collect()
}

// ---- the maintenance listener --------------------------------------------------------

/// Who is at the other end: the person whose current, unrevoked, unexpired
/// certificate was presented, from an allowed address, still active.
async fn identify(st: &Services, certs: &PeerCerts, addr: Option<IpAddr>) -> Result<Person, Refused> {
    let Some(fp) = fp(certs) else {
        return Err(refused(st, addr, "anonymous", "no client certificate", 401, json!({})).await);
    };
    let f2 = fp.clone();
    let found = st.store.read(move |c| Ok((ms::person_by_cert(c, &f2)?, ms::cert(c, &f2)?))).await;
    let (person, cert) = found.map_err(unavailable)?;
    let now = st.now();
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

/// A maintenance person's login to an approved window.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The approved request.
    pub request: i64,
    /// The second factor.
    pub totp: String,
}

/// A maintenance session.
#[derive(Debug, Serialize)]
pub struct MaintSession {
    /// The session token (shown once).
    pub token: String,
    /// When the window ends.
    pub expires_at: String,
    /// The scopes granted.
    pub scopes: Value,
    /// The request.
    pub request: i64,
}

/// Checks a maintenance person's second-factor code: never one used
/// before, and never while locked after too many wrong ones (the limit
/// and the lock's length are those of staff logins). Returns its step.
async fn second_factor(
    st: &Services,
    a: Option<IpAddr>,
    p: &Person,
    code: Option<&str>,
    detail: Value,
) -> Result<i64, Refused> {
    let now = st.now();
    let source = a.map(|x| x.to_string());
    if let Err(secs) = st.throttle.check(source.as_deref()) {
        let why = format!("too many failed logins from this address; try again in {secs} s");
        return Err(refused(st, a, &p.id, &why, 429, detail).await);
    }
    let id = p.id.clone();
    let locked = st.store.read(move |c| ms::totp_locked_until(c, &id)).await.map_err(unavailable)?;
    if let Some(until) = locked.filter(|t| *t > now) {
        let why = format!("too many wrong second-factor codes; locked until {}", until.to_rfc3339());
        return Err(refused(st, a, &p.id, &why, 429, detail).await);
    }
    let step = code
        .and_then(|t| accounts::totp_check(&p.totp_secret, t, now))
        .filter(|s| p.totp_last_step.is_none_or(|l| *s > l));
    if let Some(step) = step {
        return Ok(step);
    }
    let (id, max, lock) = (p.id.clone(), st.cfg.auth.max_failed_logins, st.cfg.auth.lockout_minutes * 60);
    let now_locked = st
        .store
        .writer()
        .write(move |w| ms::totp_failure(w.conn, &id, max, lock, w.now), |_, _| Ok(()))
        .await
        .map_err(unavailable)?;
    crate::throttle::login_failed(st, source, "maintenance").await;
    let why = if now_locked {
        "wrong or reused second factor (TOTP); too many wrong codes: the second factor is locked for a while"
    } else {
        "wrong or reused second factor (TOTP)"
    };
    Err(refused(st, a, &p.id, why, 401, detail).await)
}

/// Logs a maintenance person in to an approved window: the person's
/// certificate, an allowed address, a fresh second factor, inside the window.
pub async fn login(st: &Services, certs: &PeerCerts, a: Option<IpAddr>, req: Login) -> Result<MaintSession, Refused> {
    let p = identify(st, certs, a).await?;
    let now = st.now();
    let step = second_factor(st, a, &p, Some(&req.totp), json!({"request": req.request})).await?;
    let rid = req.request;
    let r = st.store.read(move |c| ms::request(c, rid)).await.map_err(unavailable)?;
    let Some(r) = r.filter(|r| r.person == p.id) else {
        return Err(
            refused(st, a, &p.id, "no such maintenance request for this person", 403, json!({"request": rid})).await
        );
    };
    if r.state != "approved" {
        return Err(refused(
            st,
            a,
            &p.id,
            &format!("the request is {}, not approved", r.state),
            403,
            json!({"request": rid}),
        )
        .await);
    }
    if !in_window(r.start, r.end, now) {
        return Err(refused(
            st,
            a,
            &p.id,
            "outside the approved window",
            403,
            json!({"request": rid, "start": r.start.to_rfc3339(), "end": r.end.to_rfc3339()}),
        )
        .await);
    }
    let secret = accounts::new_token_secret().map_err(unavailable)?;
    let token = secret.replacen("mmr_", "mmm_", 1);
    let hash = accounts::token_hash(&token);
    let (p2, st2, fp2) = (p.clone(), st.clone(), fp(certs).unwrap_or_default());
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
    st.store
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
        .await
        .map_err(unavailable)?;
    Ok(MaintSession { token, expires_at: r.end.to_rfc3339(), scopes: r.scopes, request: rid })
}

/// A maintenance window asked for.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewRequest {
    /// The maintenance person (staff asking on a vendor's behalf).
    #[serde(default)]
    pub person: Option<String>,
    /// Why.
    pub reason: String,
    /// The scopes.
    pub scopes: Vec<String>,
    /// From (RFC 3339).
    pub start: String,
    /// To (RFC 3339).
    pub end: String,
    /// For an emergency.
    #[serde(default)]
    pub emergency: bool,
    /// Only when a maintenance person requests over the maintenance listener.
    #[serde(default)]
    pub totp: Option<String>,
}

fn parse_request(st: &Services, r: &NewRequest) -> Result<(Vec<Scope>, Timestamp, Timestamp), ServiceError> {
    let scopes: Vec<Scope> = r
        .scopes
        .iter()
        .map(|s| {
            Scope::parse(s).ok_or_else(|| {
                ServiceError::invalid(
                    "scopes",
                    format!("'{s}': one of {}", Scope::ALL.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let start = Timestamp::parse_rfc3339(&r.start).ok_or_else(|| ServiceError::invalid("start", "an RFC 3339 time"))?;
    let end = Timestamp::parse_rfc3339(&r.end).ok_or_else(|| ServiceError::invalid("end", "an RFC 3339 time"))?;
    if r.reason.trim().chars().count() < 5 {
        return Err(ServiceError::invalid("reason", "at least 5 characters"));
    }
    check_window(start, end, st.now(), &scopes, st.cfg.maintenance.max_window_hours)
        .map_err(|m| ServiceError::invalid("end", m))?;
    Ok((scopes, start, end))
}

/// Records a request; `by` is the staff actor, or none when the person
/// asks over the maintenance listener (`person_addr` then).
async fn create_request(
    st: &Services,
    person: &str,
    req: &NewRequest,
    by: Option<(&Actor, &Decision)>,
    person_addr: Option<IpAddr>,
) -> Result<Value, ServiceError> {
    let (scopes, start, end) = parse_request(st, req)?;
    let (p, reason, emergency, st2) = (person.to_owned(), req.reason.trim().to_owned(), req.emergency, st.clone());
    let by2 = by.map(|(a, d)| (a.clone(), d.clone()));
    let needed = i64::from(st.cfg.maintenance.approvals);
    let sc = json!(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let (id, a) = st
        .store
        .writer()
        .run(
            move |w| {
                let pp = ms::person(w.conn, &p)?.ok_or_else(|| ServiceError::NotFound(format!("maintenance person {p}")))?;
                if pp.state != "active" {
                    return Err(ServiceError::Precondition(format!("{p} has left")));
                }
                let requester = by2.as_ref().map_or(p.as_str(), |(a, _)| a.name()).to_owned();
                let id = ms::insert_request(w.conn, &p, &reason, &sc, start, end, emergency, needed, &requester, w.now)?;
                // Staff asking are recorded as themselves (with the decision).
                let mut rec = match &by2 {
                    Some((a, d)) => a.decided("maintenance-request", 201, d, w.now),
                    None => system_rec(&st2, person_addr, &p, "maintenance-request", 201, w.now),
                };
                rec.detail = Some(json!({"request": id, "person": p, "vendor": pp.vendor, "scopes": sc, "start": start.to_rfc3339(), "end": end.to_rfc3339(), "emergency": emergency, "reason": reason}));
                w.audit(&rec)?;
                let msg = format!("保守作業の承認依頼 #{id}（{p}）/ Maintenance window #{id} for {p} awaits approval: {reason}");
                let a = notify::announce(w, &st2, "maintenance-requested", false, "info", &msg, json!({"request": id}),
                    Audience::Roles(told(Notice::MaintenanceRequested { emergency })))?;
                Ok((id, a))
            },
            |_: &ServiceError, _| Ok(()),
        )
        .await?;
    notify::publish(st, [a]);
    Ok(json!({"id": id, "state": "requested", "needs_approvals": needed}))
}

/// A maintenance person asks for a window over the maintenance listener.
pub async fn vendor_request(
    st: &Services,
    certs: &PeerCerts,
    a: Option<IpAddr>,
    req: NewRequest,
) -> Result<Value, Refused> {
    let p = identify(st, certs, a).await?;
    let step = second_factor(st, a, &p, req.totp.as_deref(), json!({})).await?;
    let pid = p.id.clone();
    // A code whose use is not recorded could be replayed in its window:
    // without the record, the request is refused.
    if let Err(e) = st.store.writer().write(move |w| ms::touch(w.conn, &pid, Some(step), w.now), |_, _| Ok(())).await {
        tracing::error!(error = %e, "maintenance: could not record the second factor's use");
        return Err(Refused {
            status: 503,
            message: "the second factor's use could not be recorded; try again".into(),
        });
    }
    create_request(st, &p.id, &req, None, a).await.map_err(|e| Refused { status: e.status(), message: e.message() })
}

/// Who is calling on the maintenance listener, after [`authenticate`].
#[derive(Debug, Clone)]
pub struct MaintenanceCall {
    /// The person, as an actor holding the window's scopes.
    pub actor: Actor,
    /// The request (window).
    pub request: i64,
    /// The person.
    pub person: String,
    /// The scope the call needs.
    pub scope: Option<Scope>,
}

/// Authenticates a call on the maintenance listener after login: a live
/// session of the presenting certificate's person, inside the approved
/// window. Whether the window's scopes allow the call is the policy's
/// decision (`Operation::MaintenanceScoped`), made by each operation.
pub async fn authenticate(
    st: &Services,
    certs: &PeerCerts,
    a: Option<IpAddr>,
    token: Option<String>,
    method: &str,
    path: &str,
    ctx: RequestCtx,
) -> Result<MaintenanceCall, Refused> {
    let Some(token) = token else {
        return Err(refused(
            st,
            a,
            "anonymous",
            "log in first: POST /api/v1/maintenance/login",
            401,
            json!({"path": path}),
        )
        .await);
    };
    let hash = accounts::token_hash(&token);
    let h2 = hash.clone();
    let sess = st.store.read(move |c| ms::session(c, &h2)).await.map_err(unavailable)?;
    let Some(sess) = sess else {
        return Err(refused(st, a, "anonymous", "unknown maintenance session", 401, json!({"path": path})).await);
    };
    let p = identify(st, certs, a).await?;
    if p.id != sess.person || fp(certs).as_deref() != Some(sess.cert_sha256.as_str()) {
        return Err(
            refused(st, a, &p.id, "the session belongs to another certificate", 403, json!({"path": path})).await
        );
    }
    let now = st.now();
    let rid = sess.request;
    let r = match st.store.read(move |c| ms::request(c, rid)).await.map_err(unavailable)? {
        Some(r) => r,
        None => return Err(refused(st, a, &p.id, "the request is gone", 403, json!({})).await),
    };
    if sess.ended.is_some() || r.state != "approved" || !in_window(r.start, r.end, now) {
        let why = if sess.ended.is_some() {
            format!("the session has ended ({})", sess.end_reason.clone().unwrap_or_default())
        } else if r.state != "approved" {
            format!("the window was {}", r.state)
        } else {
            "the approved window is over".into()
        };
        let why2 = why.clone();
        if let Err(e) = st
            .store
            .writer()
            .write(
                move |w| {
                    w.conn.exec(
                        "UPDATE maint_sessions SET ended = $2, end_reason = $3 WHERE token_hash = $1 AND ended IS NULL",
                        mamori_store::p![hash.as_slice(), w.now.micros(), why2.as_str()],
                    )?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await
        {
            tracing::error!(error = %e, "maintenance: could not record the end of a session");
        }
        return Err(refused(st, a, &p.id, &why, 401, json!({"request": rid, "path": path})).await);
    }
    let scopes = scopes_of(&r.scopes);
    let person = mamori_core::ids::UserId::parse(&p.id).unwrap_or_else(|_| mamori_core::ids::UserId::system());
    let mut actor = Actor::maintenance(
        person,
        &p.vendor,
        format!("{} ({}) — maintenance request #{rid}", p.display, p.vendor),
        scopes.clone(),
        ctx,
    );
    actor.node = st.node();
    let scope = scope_for(method, path);
    // Outside every scope: refused here, for every path the listener serves.
    let always = path == "/api/v1/maintenance/session" || path == "/api/v1/maintenance/logout";
    if !always {
        let Some(s) = scope else {
            let why = format!("{method} {path} is not available to remote maintenance");
            return Err(refused(st, a, &p.id, &why, 403, json!({"request": rid, "path": path, "method": method})).await);
        };
        let d = authz::decide(&actor, &Operation::MaintenanceScoped { scope: s }, Facts::default());
        if !d.permit {
            let why = format!(
                "'{}' is outside the approved scopes ({})",
                s.as_str(),
                scopes.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(", ")
            );
            return Err(refused(
                st,
                a,
                &p.id,
                &why,
                403,
                json!({"request": rid, "path": path, "method": method, "basis": d.basis.as_str()}),
            )
            .await);
        }
    }
    Ok(MaintenanceCall { actor, request: rid, person: p.id, scope })
}

/// Records a call on the maintenance listener after it was answered.
pub async fn record_call(st: &Services, call: &MaintenanceCall, method: &str, path: &str, status: u16) {
    let (pid, actor, rid, scope) = (call.person.clone(), call.actor.clone(), call.request, call.scope);
    let q = format!("{method} {path}");
    if let Err(e) = st
        .store
        .writer()
        .write(
            move |w| {
                ms::touch(w.conn, &pid, None, w.now)?;
                let mut rec = actor.record("maintenance-action", status, w.now);
                rec.query = Some(q);
                rec.detail = Some(json!({"request": rid, "scope": scope.map(|s| s.as_str())}));
                w.audit(&rec).map(|_| ())
            },
            |_, _| Ok(()),
        )
        .await
    {
        tracing::error!(error = %e, "maintenance: could not audit a call");
    }
}

/// The current session's window.
pub async fn session_info(st: &Services, call: &MaintenanceCall) -> Result<Value, ServiceError> {
    let rid = call.request;
    let r =
        st.store.read(move |c| ms::request(c, rid)).await?.ok_or_else(|| ServiceError::NotFound("request".into()))?;
    Ok(
        json!({"person": call.person, "request": rid, "scopes": call.actor.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
              "window": {"start": r.start.to_rfc3339(), "end": r.end.to_rfc3339()}, "reason": r.reason}),
    )
}

/// Ends the session of `token`.
pub async fn logout(st: &Services, token: Option<String>) -> Result<(), ServiceError> {
    if let Some(t) = token {
        let hash = accounts::token_hash(t.trim());
        st.store
            .writer()
            .write(
                move |w| {
                    w.conn.exec(
                        "UPDATE maint_sessions SET ended = $2, end_reason = 'logout' WHERE token_hash = $1 AND ended IS NULL",
                        mamori_store::p![hash.as_slice(), w.now.micros()],
                    )?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await?;
    }
    Ok(())
}

fn scoped(actor: &Actor, scope: Scope) -> Result<Decision, ServiceError> {
    authz::require(actor, &Operation::MaintenanceScoped { scope }, Facts::default(), "this maintenance operation")
}

/// The effective configuration (secret files shown as set or not).
pub async fn op_config(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Configuration)?;
    let mut v = serde_json::to_value(&st.cfg).map_err(|e| ServiceError::internal_from("the configuration", e))?;
    // Nothing secret is stored inline; file paths of secrets are shown as paths.
    if let Some(w) = v.pointer_mut("/notify/webhooks").and_then(Value::as_array_mut) {
        for h in w {
            h["secret_file"] = json!(if h["secret_file"].as_str().unwrap_or("").is_empty() { "" } else { "(set)" });
        }
    }
    Ok(v)
}

/// The server's status, metrics and recent alerts.
pub async fn op_status(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Logs)?;
    let alerts = st.store.read(|c| mamori_store::emergency::alerts(c, false, 20)).await?;
    let size = st.store.read(audit_log::size).await?;
    Ok(json!({
        "version": env!("CARGO_PKG_VERSION"), "mode": st.mode.get().header_value(), "audit_tree_size": size,
        "metrics": st.metrics.render(&[]),
        "recent_alerts": alerts.iter().map(|a| json!({"time": a.time.to_rfc3339(), "kind": a.kind, "severity": a.severity, "acked": a.acked_at.is_some()})).collect::<Vec<_>>(),
    }))
}

/// Database statistics.
pub async fn op_db(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Database)?;
    Ok(st
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
        .await?)
}

/// An integrity check of the database.
pub async fn op_db_check(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Database)?;
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
    Ok(json!({"ok": rows == ["ok"], "result": rows}))
}

/// Refreshes the database's statistics.
pub async fn op_db_analyze(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Database)?;
    st.store.writer().write(|w| Ok(w.conn.batch("ANALYZE")?), |_, _| Ok(())).await?;
    Ok(json!({"analyzed": true}))
}

/// Verifies the audit log.
pub async fn op_audit_verify(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Audit)?;
    let dd = DataDir(st.data_dir.clone());
    let (_, vkey) = crate::init::load_signer(&dd).map_err(|e| ServiceError::internal_from("the audit key", e))?;
    let origin = st.cfg.audit.origin.clone();
    let report = st.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, false)).await?;
    Ok(json!({"ok": report.ok(), "events": report.events, "checkpoints": report.checkpoints,
              "findings": report.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>()}))
}

/// Asks the server to stop gracefully for its service manager to restart it.
pub async fn op_restart(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    scoped(actor, Scope::Restart)?;
    st.restart.notify_one();
    Ok(json!({"restarting": "the server stops gracefully; the service manager starts it again"}))
}

// ---- the hospital side (main listener) ---------------------------------------------------

/// Decides a read of maintenance records; audits it either way.
async fn read_gate(st: &Services, actor: &Actor, action: &str) -> Result<Decision, ServiceError> {
    st.read_gate(actor, action, Operation::MaintenanceRead, Facts::default(), "maintenance records").await
}

fn valid_id(s: &str) -> bool {
    (2..=64).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// A vendor to register.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewVendor {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Whom to contact.
    pub contact: String,
}

/// Registers a maintenance vendor (admins).
pub async fn add_vendor(st: &Services, actor: &Actor, req: NewVendor) -> Result<(), ServiceError> {
    const A: &str = "maintenance-vendor-add";
    let d = st.gate(actor, A, Operation::MaintenanceManage, Facts::default(), "managing remote maintenance").await?;
    if !valid_id(&req.id) || req.name.trim().is_empty() || req.contact.trim().is_empty() {
        let e =
            ServiceError::invalid("id", "id: 2-64 lowercase letters, digits, '.', '_', '-'; name and contact required");
        return Err(st.refused(actor, A, e).await);
    }
    let a2 = actor.clone();
    st.change(actor, A, move |w| {
        ms::insert_vendor(
            w.conn,
            &Vendor {
                id: req.id.clone(),
                name: req.name.trim().into(),
                contact: req.contact.trim().into(),
                created: w.now,
                created_by: a2.name().into(),
            },
        )?;
        let mut rec = a2.decided(A, 201, &d, w.now);
        rec.detail = Some(json!({"vendor": req.id, "name": req.name}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}

/// The vendors (admins, auditors, BCP deciders).
pub async fn list_vendors(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    read_gate(st, actor, "maintenance-vendor-list").await?;
    Ok(json!(st.store.read(ms::vendors).await?))
}

/// A maintenance person to register.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPerson {
    /// Their id (never a staff account's name).
    pub id: String,
    /// Their vendor.
    pub vendor: String,
    /// Their name.
    pub display: String,
    /// Allowed source addresses (CIDR).
    pub sources: Vec<String>,
}

fn issue(st: &Services, person: &str, vendor: &str) -> Result<(String, String, String, String, i64), ServiceError> {
    let dd = DataDir(st.data_dir.clone());
    let ca = std::fs::read(dd.0.join(CA_CERT)).map_err(|e| ServiceError::internal_from("the maintenance CA", e))?;
    let key =
        keys::read_secret(&dd.0.join(CA_KEY)).map_err(|e| ServiceError::internal_from("the maintenance CA key", e))?;
    let (c, k, sha, serial, na) = keys::client_cert(&ca, &key, person, vendor, st.cfg.maintenance.cert_days)
        .map_err(|e| ServiceError::internal_from("issuing a client certificate", e))?;
    Ok((c, k.to_string(), sha, serial, na))
}

/// Registers a maintenance person: a client certificate and a second
/// factor, shown once (admins).
pub async fn add_person(st: &Services, actor: &Actor, req: NewPerson) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-person-add";
    let d = st.gate(actor, A, Operation::MaintenanceManage, Facts::default(), "managing remote maintenance").await?;
    if !valid_id(&req.id)
        || req.display.trim().is_empty()
        || req.sources.is_empty()
        || req.sources.iter().any(|c| !valid_cidr(c))
    {
        let e = ServiceError::invalid(
            "",
            "id (lowercase), display, and sources as CIDR blocks (e.g. 203.0.113.0/28) are required",
        );
        return Err(st.refused(actor, A, e).await);
    }
    let (cert, key, sha, serial, na) = issue(st, &req.id, &req.vendor)?;
    let secret = accounts::random_bytes::<20>()?.to_vec();
    let (a2, s2, sha2) = (actor.clone(), secret.clone(), sha.clone());
    st.change(actor, A, move |w| {
        if ms::vendor(w.conn, &req.vendor)?.is_none() {
            return Err(ServiceError::NotFound(format!("vendor {}", req.vendor)));
        }
        // The audit log names people by these ids: a maintenance person
        // under a staff member's name would pass as them.
        if accounts::get_user(w.conn, &req.id)?.is_some() {
            return Err(ServiceError::Conflict(format!(
                "{} is a staff account's name; a maintenance person needs a name of their own",
                req.id
            )));
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
                created_by: a2.name().into(),
                left_at: None,
                last_used: None,
            },
        )?;
        ms::insert_cert(w.conn, &sha2, &req.id, &serial, na, w.now)?;
        let mut rec = a2.decided(A, 201, &d, w.now);
        rec.detail = Some(json!({"person": req.id, "vendor": req.vendor, "sources": req.sources, "certificate": sha2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    let b32 = accounts::base32(&secret);
    Ok(json!({
        "certificate": cert, "private_key": key, "certificate_sha256": sha, "not_after": Timestamp::from_secs(na).to_rfc3339(),
        "totp_secret": b32, "otpauth_uri": format!("otpauth://totp/mamori-maintenance:{}?secret={b32}&issuer=mamori", "person"),
        "notice": "証明書・鍵・TOTP は一度だけ表示されます。本人に安全に渡してください / Shown once: hand them to the person securely."
    }))
}

/// The maintenance people (admins, auditors, BCP deciders).
pub async fn list_people(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    read_gate(st, actor, "maintenance-person-list").await?;
    Ok(json!(st.store.read(ms::people).await?))
}

/// A reason.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

/// A maintenance person left: certificates revoked, sessions ended, open
/// windows revoked (admins).
pub async fn person_leaves(st: &Services, actor: &Actor, id: &str, req: Reason) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-person-left";
    let d = st.gate(actor, A, Operation::MaintenanceManage, Facts::default(), "managing remote maintenance").await?;
    let (a2, id) = (actor.clone(), id.to_owned());
    st.change(actor, A, move |w| {
        if !ms::mark_left(w.conn, &id, w.now)? {
            return Err(ServiceError::Precondition(format!("{id} is unknown or has already left")));
        }
        let certs = ms::revoke_certs(w.conn, &id, a2.name(), w.now)?;
        let sessions = ms::end_sessions(w.conn, None, Some(&id), "the person left", w.now)?;
        let open: Vec<i64> = ms::requests(w.conn, None, None, 10_000)?
            .into_iter()
            .filter(|r| r.person == id && matches!(r.state.as_str(), "requested" | "approved"))
            .map(|r| r.id)
            .collect();
        for r in &open {
            ms::decide(w.conn, *r, "revoked", a2.name(), Some("the person left"), w.now)?;
        }
        let mut rec = a2.decided(A, 200, &d, w.now);
        rec.detail = Some(json!({"person": id, "reason": req.reason, "certificates_revoked": certs, "sessions_ended": sessions, "requests_revoked": open}));
        w.audit(&rec)?;
        Ok(json!({"person": id, "certificates_revoked": certs, "sessions_ended": sessions, "requests_revoked": open}))
    })
    .await
}

/// Reissues a person's certificate (the old one revoked) (admins).
pub async fn reissue(st: &Services, actor: &Actor, id: &str) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-certificate-reissue";
    let d = st.gate(actor, A, Operation::MaintenanceManage, Facts::default(), "managing remote maintenance").await?;
    let i2 = id.to_owned();
    let p = match st.store.read(move |c| ms::person(c, &i2)).await?.filter(|p| p.state == "active") {
        Some(p) => p,
        None => {
            return Err(st.refused(actor, A, ServiceError::NotFound(format!("active maintenance person {id}"))).await)
        }
    };
    let (cert, key, sha, serial, na) = issue(st, &p.id, &p.vendor)?;
    let (a2, sha2) = (actor.clone(), sha.clone());
    st.change(actor, A, move |w| {
        ms::revoke_certs(w.conn, &p.id, a2.name(), w.now)?;
        ms::end_sessions(w.conn, None, Some(&p.id), "certificate reissued", w.now)?;
        ms::insert_cert(w.conn, &sha2, &p.id, &serial, na, w.now)?;
        ms::set_person_cert(w.conn, &p.id, &sha2)?;
        let mut rec = a2.decided(A, 200, &d, w.now);
        rec.detail = Some(json!({"person": p.id, "certificate": sha2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(
        json!({"certificate": cert, "private_key": key, "certificate_sha256": sha, "not_after": Timestamp::from_secs(na).to_rfc3339()}),
    )
}

/// Staff ask for a window on a vendor's behalf (admins, BCP deciders).
pub async fn staff_request(st: &Services, actor: &Actor, req: NewRequest) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-request";
    let d =
        st.gate(actor, A, Operation::MaintenanceRequest, Facts::default(), "asking for maintenance windows").await?;
    let Some(person) = req.person.clone() else {
        return Err(st.refused(actor, A, ServiceError::invalid("person", "required")).await);
    };
    match create_request(st, &person, &req, Some((actor, &d)), None).await {
        Ok(v) => Ok(v),
        Err(e) => Err(st.refused(actor, A, e).await),
    }
}

fn request_json(r: &ms::Request, now: Timestamp) -> Value {
    let mut v = json!(r);
    v["live"] = json!(r.state == "approved" && in_window(r.start, r.end, now));
    v["review_overdue"] = json!(r.review.as_deref() == Some("pending") && r.review_due.is_some_and(|d| d <= now));
    v
}

/// The patients a request's summary says were accessed.
fn summary_patients(r: &ms::Request) -> Vec<String> {
    r.summary["patients"].as_array().into_iter().flatten().filter_map(|p| p.as_str().map(str::to_owned)).collect()
}

/// Windows by state and review (admins, auditors, BCP deciders); audited
/// with the patients the windows' summaries name.
pub async fn list_requests(
    st: &Services,
    actor: &Actor,
    state: Option<String>,
    review: Option<String>,
) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-request-list";
    let d = st.gate(actor, A, Operation::MaintenanceRead, Facts::default(), "maintenance records").await?;
    let now = st.now();
    let rows = st.store.read(move |c| ms::requests(c, state.as_deref(), review.as_deref(), 500)).await?;
    let mut rec = actor.decided(A, 200, &d, now);
    set_patients(&mut rec, rows.iter().flat_map(summary_patients).collect());
    st.audit(vec![rec]).await?;
    Ok(json!(rows.iter().map(|r| request_json(r, now)).collect::<Vec<_>>()))
}

/// One window with its sessions; audited with the patients it accessed.
pub async fn show_request(st: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-request-read";
    let d = st.gate(actor, A, Operation::MaintenanceRead, Facts::default(), "maintenance records").await?;
    let now = st.now();
    let (r, sessions) = st.store.read(move |c| Ok((ms::request(c, id)?, ms::sessions_of(c, id)?))).await?;
    let r = match r {
        Some(r) => r,
        None => return Err(st.refused(actor, A, ServiceError::NotFound(format!("maintenance request {id}"))).await),
    };
    let mut rec = actor.decided(A, 200, &d, now);
    set_patients(&mut rec, summary_patients(&r));
    st.audit(vec![rec]).await?;
    let mut v = request_json(&r, now);
    v["sessions"] = json!(sessions);
    Ok(v)
}

/// A note.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Approves a window: an admin who did not ask for it and is not its
/// person (as many as configured), or during a real emergency a BCP
/// decider alone for an emergency request.
pub async fn approve(st: &Services, actor: &Actor, id: i64, req: Note) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-approve";
    let a2 = actor.clone();
    st.change(actor, A, move |w| {
        let r = ms::request(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("maintenance request {id}")))?;
        let me = a2.name().to_owned();
        let facts = Facts { own: r.requested_by == me || r.person == me, ..authz::plan_facts(w.conn, &a2)? };
        let d = authz::require(&a2, &Operation::MaintenanceApprove { emergency_request: r.emergency }, facts, "approving this window")?;
        if r.state != "requested" {
            return Err(ServiceError::Precondition(format!("request {id} is {}", r.state)));
        }
        if r.end <= w.now {
            return Err(ServiceError::Precondition(format!("request {id}'s window is already over")));
        }
        let already: Vec<String> =
            r.approvals.as_array().into_iter().flatten().filter_map(|a| a["by"].as_str().map(str::to_owned)).collect();
        // The count of approvals (the policy decided who may approve).
        let decider_path = d.basis == mamori_core::policy::Basis::BcpTeam;
        let done = approval(&me, &r.requested_by, !decider_path, decider_path, r.emergency, &a2.mode(), &already, r.needed as usize)
            .map_err(ServiceError::Conflict)?;
        let mut list = r.approvals.as_array().cloned().unwrap_or_default();
        list.push(json!({"by": me, "at": w.now.to_rfc3339(), "note": req.note}));
        ms::set_approvals(w.conn, id, &json!(list))?;
        if done {
            ms::decide(w.conn, id, "approved", &me, req.note.as_deref(), w.now)?;
        }
        let mut rec = a2.decided(A, 200, &d, w.now);
        rec.detail = Some(json!({"request": id, "approvals": list.len(), "complete": done}));
        w.audit(&rec)?;
        Ok(json!({"request": id, "state": if done { "approved" } else { "requested" }, "approvals": list.len(), "needed": r.needed}))
    })
    .await
}

/// Rejects (a requested window) or revokes (a requested or approved one;
/// its sessions end) (admins).
pub async fn decide_as(
    st: &Services,
    actor: &Actor,
    id: i64,
    req: Reason,
    to: &'static str,
) -> Result<Value, ServiceError> {
    let action = if to == "rejected" { "maintenance-reject" } else { "maintenance-revoke" };
    let d =
        st.gate(actor, action, Operation::MaintenanceManage, Facts::default(), "managing remote maintenance").await?;
    let (a2, st2) = (actor.clone(), st.clone());
    let out = st
        .change(actor, action, move |w| {
            let r =
                ms::request(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("maintenance request {id}")))?;
            let ok_from = if to == "rejected" {
                r.state == "requested"
            } else {
                matches!(r.state.as_str(), "requested" | "approved")
            };
            if !ok_from {
                return Err(ServiceError::Precondition(format!("request {id} is {}", r.state)));
            }
            ms::decide(w.conn, id, to, a2.name(), Some(req.reason.trim()), w.now)?;
            let ended = ms::end_sessions(w.conn, Some(id), None, to, w.now)?;
            let mut rec = a2.decided(action, 200, &d, w.now);
            rec.detail = Some(json!({"request": id, "reason": req.reason, "sessions_ended": ended}));
            w.audit(&rec)?;
            let mut effects = Vec::new();
            if to == "revoked" {
                let msg = format!(
                    "保守作業 #{id} を取り消しました / Maintenance window #{id} revoked: {}",
                    req.reason.trim()
                );
                let a = notify::announce(
                    w,
                    &st2,
                    "maintenance-revoked",
                    false,
                    "warning",
                    &msg,
                    json!({"request": id}),
                    Audience::Roles(told(Notice::MaintenanceReview)),
                )?;
                effects.push(crate::commit::Effect::Announce(vec![a]));
            }
            Ok(crate::commit::Outcome::with(json!({"request": id, "state": to}), effects))
        })
        .await?;
    Ok(st.finish(out).await)
}

/// A review of a closed window.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// accepted | questioned
    pub outcome: String,
    /// What was checked.
    pub note: String,
}

/// Reviews a closed window: someone other than who asked for it.
pub async fn review(st: &Services, actor: &Actor, id: i64, req: Review) -> Result<Value, ServiceError> {
    const A: &str = "maintenance-review";
    if !matches!(req.outcome.as_str(), "accepted" | "questioned") || req.note.trim().is_empty() {
        return Err(st
            .refused(actor, A, ServiceError::invalid("outcome", "accepted or questioned, with a note"))
            .await);
    }
    let (a2, outcome) = (actor.clone(), req.outcome.clone());
    st.change(actor, A, move |w| {
        let r = ms::request(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("maintenance request {id}")))?;
        let facts = Facts { own: r.requested_by == a2.name(), ..Facts::default() };
        let d = authz::require(&a2, &Operation::MaintenanceReview, facts, "reviewing this window")?;
        if r.review.as_deref() != Some("pending") {
            return Err(ServiceError::Precondition(format!("request {id} is not waiting for review")));
        }
        ms::review(w.conn, id, &req.outcome, a2.name(), req.note.trim(), w.now)?;
        let mut rec = a2.decided(A, 200, &d, w.now);
        rec.detail = Some(json!({"request": id, "outcome": req.outcome, "note": req.note.trim()}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(json!({"request": id, "review": outcome}))
}

/// The people's report: windows, pending reviews, last use (admins,
/// auditors, BCP deciders).
pub async fn report(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    read_gate(st, actor, "maintenance-report").await?;
    let now = st.now();
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
    Ok(json!({"generated": now.to_rfc3339(), "people": out}))
}

/// The maintenance CA's certificate (public).
pub async fn ca_cert(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    let _ = actor;
    let pem = std::fs::read_to_string(DataDir(st.data_dir.clone()).0.join(CA_CERT))
        .map_err(|e| ServiceError::internal_from("the maintenance CA", e))?;
    Ok(json!({"maintenance_ca": pem}))
}

// ---- closing windows ------------------------------------------------------------------

/// What happened in a window, from the audit log (read with the log's own
/// decoder, on a read connection).
fn summarize(c: &mut dyn mamori_store::sql::Conn, r: &ms::Request, now: Timestamp) -> Result<Value, StoreError> {
    let q = EventQuery {
        agent: Some(r.person.clone()),
        from: Some(r.start.micros()),
        to: Some(now.micros() + 1),
        limit: 100_000,
        ..Default::default()
    };
    let events = audit_log::search_events(c, &q)?;
    let mut by_action = std::collections::BTreeMap::<String, u64>::new();
    let mut patients = std::collections::BTreeSet::new();
    let mut ops = Vec::new();
    let mut refused = 0u64;
    for (_, leaf) in events.iter().rev() {
        let Ok(e) = AuditRecord::from_leaf(leaf) else { continue };
        *by_action.entry(e.action.clone()).or_default() += 1;
        patients.extend(e.patients.iter().cloned());
        if e.action == "maintenance-refused" || e.status == 401 || e.status == 403 {
            refused += 1;
        }
        if e.action == "maintenance-action" && ops.len() < 500 {
            ops.push(json!({"time": e.time, "what": e.query, "status": e.status}));
        }
    }
    let sessions = ms::sessions_of(c, r.id)?;
    Ok(json!({
        "events": events.len(), "by_action": by_action, "operations": ops, "refusals": refused,
        "patient_data_accessed": !patients.is_empty(), "patients": patients,
        "sessions": sessions.iter().map(|s| json!({"started": s.started.to_rfc3339(), "ended": s.ended.map(|t| t.to_rfc3339()), "end_reason": s.end_reason, "address": s.address})).collect::<Vec<_>>(),
    }))
}

/// Closes windows that ended (or were revoked), queues them for review,
/// reports overdue reviews. Runs every few seconds.
pub async fn run(st: Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
        if let Err(e) = close_windows(&st).await {
            tracing::error!(error = %e, "maintenance: could not close windows");
        }
    }
}

async fn close_windows(st: &Services) -> Result<(), ServiceError> {
    let now = st.now();
    let due = st.store.read(move |c| ms::to_close(c, now)).await?;
    let overdue = st.store.read(move |c| ms::overdue(c, now)).await?;
    if due.is_empty() && overdue.is_empty() {
        return Ok(());
    }
    // The summaries are read off the writer; the agent index first.
    st.store.writer().flush_index().await?;
    let mut summaries = Vec::new();
    for r in due {
        let r2 = r.clone();
        let s = st.store.read(move |c| summarize(c, &r2, now)).await?;
        summaries.push((r, s));
    }
    let due_h = st.cfg.maintenance.review_due_hours;
    let st2 = st.clone();
    let list = st
        .store
        .writer()
        .write(
            move |w| {
                let mut out = Vec::new();
                for (r, summary) in &summaries {
                    ms::end_sessions(w.conn, Some(r.id), None, "window closed", w.now)?;
                    let state = if r.state == "revoked" { "revoked" } else { "closed" };
                    ms::close(w.conn, r.id, state, summary, w.now.plus_secs(due_h * 3600), w.now)?;
                    let mut rec = system_rec(&st2, None, "system", "maintenance-window-closed", 200, w.now);
                    rec.agent.kind = "system".into();
                    rec.patients = summary["patients"].as_array().map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect()).unwrap_or_default();
                    rec.detail = Some(json!({"request": r.id, "person": r.person, "summary": {"events": summary["events"], "patient_data_accessed": summary["patient_data_accessed"], "refusals": summary["refusals"]}}));
                    w.audit(&rec)?;
                    let msg = format!("保守作業 #{} が終了しました。確認してください / Maintenance window #{} ({}) closed: please review it", r.id, r.id, r.person);
                    out.push(notify::announce(w, &st2, "maintenance-review-needed", false, "info", &msg, json!({"request": r.id}), Audience::Roles(told(Notice::MaintenanceReview)))?);
                }
                for r in &overdue {
                    ms::mark_overdue_reported(w.conn, r.id)?;
                    let msg = format!("保守作業 #{} の確認が期限を過ぎています / The review of maintenance window #{} ({}) is overdue", r.id, r.id, r.person);
                    mamori_store::emergency::insert_alert(w.conn, "maintenance-review-overdue", "warning", &msg, &json!({"request": r.id}), w.now)?;
                    out.push(notify::announce(w, &st2, "maintenance-review-overdue", false, "warning", &msg, json!({"request": r.id}), Audience::Roles(told(Notice::MaintenanceReview)))?);
                }
                Ok(out)
            },
            |_, _| Ok(()),
        )
        .await?;
    notify::publish(st, list);
    Ok(())
}
