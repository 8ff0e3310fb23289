//! The operations API at `/api/v1` (JSON): login and sessions, users and
//! roles, API tokens, care assignments, the current mode.
//!
//! Every change is made in one group-commit job together with its audit
//! event; every refusal is audited too.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use mamori_core::ids::{PatientId, UserId};
use mamori_core::policy::{may_administer, may_assign_care, Role, SubjectKind};
use mamori_store::accounts::{self, NewUser, TokenKind};
use mamori_store::StoreError;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::error::{ApiError, OpsError};
use crate::state::{AppState, Caller, RequestCtx};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/login", post(login))
        .route("/api/v1/auth/logout", post(logout))
        .route("/api/v1/auth/password", post(change_password))
        .route("/api/v1/auth/me", get(me))
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", get(get_user).patch(update_user))
        .route("/api/v1/users/{name}/reset-password", post(reset_password))
        .route("/api/v1/users/{name}/totp", post(enroll_totp).delete(remove_totp))
        .route("/api/v1/tokens", get(list_tokens).post(issue_token))
        .route("/api/v1/tokens/{id}", delete(revoke_token))
        .route("/api/v1/care-assignments", get(list_care).post(assign_care))
        .route("/api/v1/care-assignments/{id}", delete(end_care))
        .route("/api/v1/mode", get(mode))
}

type OpsResult = Result<Response, OpsError>;

/// Reads a JSON body into `T` (unknown fields refused), up to 1 MiB.
pub async fn json_body<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, 1 << 20).await.map_err(|_| ApiError::TooLarge(1 << 20))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad("", format!("invalid request body: {e}")))
}

/// Audits a refusal made before any job and returns it.
pub async fn refuse(st: &AppState, caller: &Caller, action: &str, e: ApiError) -> OpsError {
    let now = st.store.clock().now();
    let mut rec = caller.record(action, e.status().as_u16(), now);
    rec.detail = Some(json!({"error": e.audit_text()}));
    match st.store.writer().audit(vec![rec]).await {
        Ok(_) => OpsError(e),
        Err(se) => OpsError(se.into()),
    }
}

fn require(cond: bool, what: &str) -> Result<(), ApiError> {
    if cond {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!("{what} requires the admin role")))
    }
}

fn user_json(u: &accounts::User) -> Value {
    json!({
        "name": u.name.as_str(),
        "display": u.display,
        "kind": match u.kind { SubjectKind::EmergencyAccount => "emergency", _ => "staff" },
        "department": u.department,
        "roles": u.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
        "must_change_password": u.must_change,
        "totp": u.has_totp,
        "disabled": u.disabled,
        "locked_until": u.locked_until.map(|t| t.to_rfc3339()),
        "created": u.created.to_rfc3339(),
    })
}

fn parse_roles(roles: &[String]) -> Result<Vec<Role>, ApiError> {
    let mut out = Vec::new();
    for r in roles {
        if r == Role::Maintenance.as_str() {
            return Err(ApiError::bad(
                "roles",
                "maintenance people have their own accounts: /api/v1/maintenance/people",
            ));
        }
        out.push(Role::parse(r).ok_or_else(|| {
            ApiError::bad(
                "roles",
                format!(
                    "unknown role '{r}'; known: {}",
                    Role::ALL
                        .iter()
                        .filter(|r| **r != Role::Maintenance)
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

// ---- login ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginReq {
    username: String,
    password: Zeroizing<String>,
    #[serde(default)]
    totp: Option<String>,
}

/// A fixed argon2id hash to verify against for unknown users, so that the
/// response time does not tell whether a user exists.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0a6yqlj6JxtTmVhvA1sZ9ZqX3l2ZpQ1c7S4Q9k2w3xg";

/// The outcome of checking credentials (computed off the async threads).
enum Check {
    Ok { totp_step: Option<i64> },
    Fail(&'static str),
}

pub async fn login(State(st): State<AppState>, parts: axum::http::request::Parts, body: Body) -> OpsResult {
    let ctx = RequestCtx::from_parts(&parts, st.mode.get());
    let now = st.store.clock().now();
    let req: LoginReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(OpsError(e)),
    };
    let who = UserId::parse(&req.username).ok();
    let name = who.as_ref().map(|u| u.as_str().to_owned());
    let n2 = name.clone();
    let found = st
        .store
        .read(move |c| match n2 {
            Some(n) => Ok(accounts::get_user(c, &n)?.zip(accounts::credentials(c, &n)?)),
            None => Ok(None),
        })
        .await?;
    let pw = req.password.clone();
    let totp = req.totp.clone();
    let found2 =
        found.as_ref().map(|(u, cr)| (u.clone(), cr.password_hash.clone(), cr.totp_secret.clone(), cr.totp_last_step));
    let check = tokio::task::spawn_blocking(move || {
        let Some((u, hash, secret, last_step)) = found2 else {
            let _ = accounts::verify_password(&pw, DUMMY_HASH);
            return Check::Fail("unknown-user");
        };
        let pw_ok = hash.as_deref().is_some_and(|h| accounts::verify_password(&pw, h));
        if u.disabled {
            return Check::Fail("disabled");
        }
        if u.locked_until.is_some_and(|t| t > now) {
            return Check::Fail("locked");
        }
        if !pw_ok {
            return Check::Fail("bad-password");
        }
        if let Some(secret) = secret {
            let Some(code) = totp else {
                return Check::Fail("totp-required");
            };
            match accounts::totp_check(&secret, &code, now) {
                Some(step) if last_step.is_none_or(|l| step > l) => return Check::Ok { totp_step: Some(step) },
                Some(_) => return Check::Fail("totp-replayed"),
                None => return Check::Fail("bad-totp"),
            }
        }
        Check::Ok { totp_step: None }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let agent = name.clone().unwrap_or_else(|| "anonymous".into());
    let max = st.cfg.auth.max_failed_logins;
    let lock_secs = st.cfg.auth.lockout_minutes * 60;
    match check {
        Check::Fail(reason) => {
            let exists = found.is_some();
            let ctx2 = ctx.clone();
            st.store
                .writer()
                .write(
                    move |w| {
                        let mut locked = false;
                        if exists && matches!(reason, "bad-password" | "bad-totp" | "totp-replayed" | "totp-required") {
                            locked = accounts::record_login_failure(w.conn, &agent, max, lock_secs, w.now)?;
                        }
                        let mut rec = ctx2.record(&agent, "anonymous", "login-failure", 401, w.now);
                        rec.detail = Some(json!({"reason": reason, "locked": locked}));
                        w.audit(&rec)?;
                        Ok(())
                    },
                    |_, _| Ok(()),
                )
                .await?;
            let msg = if reason == "totp-required" {
                "a one-time code (totp) is required for this account"
            } else {
                "invalid credentials, or the account is locked or disabled"
            };
            Err(OpsError(ApiError::Unauthorized(msg.into())))
        }
        Check::Ok { totp_step } => {
            let Some((user, _)) = found else {
                return Err(OpsError(ApiError::Internal("user vanished".into())));
            };
            if user.kind == SubjectKind::EmergencyAccount {
                // Emergency accounts log in through their own path (with
                // the person's real name), and only during an emergency.
                let mut rec = ctx.record(user.name.as_str(), "emergency", "login-failure", 403, now);
                rec.detail = Some(json!({"reason": "emergency-account-via-normal-login"}));
                st.store.writer().audit(vec![rec]).await?;
                return Err(OpsError(ApiError::Forbidden(
                    "emergency accounts log in through POST /api/v1/emergency-login".into(),
                )));
            }
            let secret = accounts::new_token_secret()?;
            let s2 = secret.clone();
            let ttl = st.cfg.auth.login_ttl_minutes * 60;
            let u2 = user.clone();
            let ctx2 = ctx.clone();
            let expires = st
                .store
                .writer()
                .write(
                    move |w| {
                        accounts::record_login_success(w.conn, u2.name.as_str(), totp_step)?;
                        let expires = w.now.plus_secs(ttl);
                        let id = accounts::insert_token(
                            w.conn,
                            &s2,
                            u2.name.as_str(),
                            TokenKind::Session,
                            Some("login"),
                            w.now,
                            expires,
                            None,
                        )?;
                        let mut rec = ctx2.record(u2.name.as_str(), "staff", "login", 200, w.now);
                        rec.agent.roles = u2.roles.iter().map(|r| r.as_str().to_owned()).collect();
                        rec.detail = Some(json!({"token": id, "totp": totp_step.is_some()}));
                        w.audit(&rec)?;
                        Ok(expires)
                    },
                    |_, _| Ok(()),
                )
                .await?;
            Ok(Json(json!({
                "token": secret.as_str(),
                "expires_at": expires.to_rfc3339(),
                "must_change_password": user.must_change,
                "user": user.name.as_str(),
                "roles": user.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(),
            }))
            .into_response())
        }
    }
}

async fn logout(State(st): State<AppState>, caller: Caller) -> OpsResult {
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::revoke_token(w.conn, Some(c2.user.name.as_str()), Some(&c2.token_id), w.now)?;
                w.audit(&c2.record("logout", 200, w.now))?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"logged_out": true})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordReq {
    current: Zeroizing<String>,
    new: Zeroizing<String>,
}

async fn change_password(State(st): State<AppState>, caller: Caller, body: Body) -> OpsResult {
    let req: PasswordReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "password-change", e).await),
    };
    let name = caller.user.name.as_str().to_owned();
    let n2 = name.clone();
    let creds = st.store.read(move |c| accounts::credentials(c, &n2)).await?;
    let cur = req.current.clone();
    let new = req.new.clone();
    let hash = tokio::task::spawn_blocking(move || -> Result<String, ApiError> {
        let ok = creds.and_then(|c| c.password_hash).is_some_and(|h| accounts::verify_password(&cur, &h));
        if !ok {
            return Err(ApiError::Forbidden("the current password is wrong".into()));
        }
        if *cur == *new {
            return Err(ApiError::bad("new", "the new password must differ from the current one"));
        }
        accounts::check_password_policy(&new)?;
        Ok(accounts::hash_password(&new)?)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let hash = match hash {
        Ok(h) => h,
        Err(e) => return Err(refuse(&st, &caller, "password-change", e).await),
    };
    let c2 = caller.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::set_password(w.conn, &name, &hash, false)?;
                w.audit(&c2.record("password-change", 200, w.now))?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"changed": true})).into_response())
}

async fn me(caller: Caller) -> OpsResult {
    let mut v = user_json(&caller.user);
    v["mode"] = json!(caller.mode().header_value());
    v["token"] = json!(caller.token_id);
    v["declared"] = json!(caller.declared);
    Ok(Json(v).into_response())
}

async fn mode(State(st): State<AppState>, caller: Caller) -> OpsResult {
    let m = caller.mode();
    let open = st.store.read(mamori_store::emergency::open_declaration).await?;
    let decl = open.map(|d| {
        json!({"id": d.id, "cause": d.cause, "drill": d.drill, "state": d.state.as_str(), "declared_at": d.declared_at.to_rfc3339(), "declared_by": d.declared_by, "reason": d.reason})
    });
    Ok(Json(json!({"mode": m.header_value(), "state": m, "declaration": decl, "checked_at": st.store.clock().now().to_rfc3339()})).into_response())
}

// ---- users -----------------------------------------------------------------------

async fn list_users(State(st): State<AppState>, caller: Caller) -> OpsResult {
    if let Err(e) = require(may_administer(&caller.subject()), "listing users") {
        return Err(refuse(&st, &caller, "user-list", e).await);
    }
    let users = st.store.read(accounts::list_users).await?;
    Ok(Json(json!({"users": users.iter().map(user_json).collect::<Vec<_>>()})).into_response())
}

async fn get_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> OpsResult {
    if caller.user.name.as_str() != name {
        if let Err(e) = require(may_administer(&caller.subject()), "reading another user") {
            return Err(refuse(&st, &caller, "user-read", e).await);
        }
    }
    let n = name.clone();
    match st.store.read(move |c| accounts::get_user(c, &n)).await? {
        Some(u) => Ok(Json(user_json(&u)).into_response()),
        None => Err(OpsError(ApiError::NotFound(format!("user {name}")))),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUserReq {
    name: String,
    display: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    password: Option<Zeroizing<String>>,
}

/// Creates a user; returns the one-time password if one was generated.
pub async fn create_user_as(
    st: &AppState,
    by: &Caller,
    name: UserId,
    display: String,
    roles: Vec<Role>,
    department: Option<String>,
    password: Option<Zeroizing<String>>,
) -> Result<Option<Zeroizing<String>>, ApiError> {
    let (pw, generated) = match password {
        Some(p) => {
            accounts::check_password_policy(&p)?;
            (p, false)
        }
        None => (accounts::random_password()?, true),
    };
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let c2 = by.clone();
    let c3 = by.clone();
    st.store
        .writer()
        .write(
            move |w| {
                let nu = NewUser {
                    name: &name,
                    display: &display,
                    kind: SubjectKind::Staff,
                    department: department.as_deref(),
                    roles: &roles,
                    password_hash: Some(&hash),
                    must_change: true,
                    created_by: c2.user.name.as_str(),
                };
                accounts::create_user(w.conn, &nu, w.now)?;
                let mut rec = c2.record("user-create", 201, w.now);
                rec.detail = Some(json!({"user": name.as_str(), "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>(), "department": department}));
                w.audit(&rec)?;
                Ok(())
            },
            move |e, w| {
                let mut rec = c3.record("user-create", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(generated.then_some(pw))
}

async fn create_user(State(st): State<AppState>, caller: Caller, body: Body) -> OpsResult {
    let pre = async {
        require(may_administer(&caller.subject()), "creating users")?;
        let req: CreateUserReq = json_body(body).await?;
        let name = UserId::parse(&req.name).map_err(|e| ApiError::bad("name", e.to_string()))?;
        let roles = parse_roles(&req.roles)?;
        Ok::<_, ApiError>((name, req.display, roles, req.department, req.password))
    }
    .await;
    let (name, display, roles, dept, pw) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "user-create", e).await),
    };
    let n = name.as_str().to_owned();
    let generated = create_user_as(&st, &caller, name, display, roles, dept, pw).await?;
    let mut body = json!({"name": n, "must_change_password": true});
    if let Some(p) = generated {
        body["one_time_password"] = json!(p.as_str());
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateUserReq {
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    display: Option<String>,
    #[serde(default)]
    department: Option<Option<String>>,
}

async fn update_user(State(st): State<AppState>, caller: Caller, Path(name): Path<String>, body: Body) -> OpsResult {
    let pre = async {
        require(may_administer(&caller.subject()), "changing users")?;
        let req: UpdateUserReq = json_body(body).await?;
        let roles = req.roles.as_deref().map(parse_roles).transpose()?;
        if name == caller.user.name.as_str()
            && (req.disabled == Some(true) || roles.as_ref().is_some_and(|r| !r.contains(&Role::Admin)))
        {
            return Err(ApiError::Conflict("you cannot disable yourself or remove your own admin role".into()));
        }
        Ok::<_, ApiError>((req, roles))
    }
    .await;
    let (req, roles) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "user-update", e).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let n2 = name.clone();
    let user = st
        .store
        .writer()
        .write(
            move |w| {
                let before =
                    accounts::get_user(w.conn, &n2)?.ok_or_else(|| StoreError::NotFound(format!("user {n2}")))?;
                if let Some(r) = &roles {
                    accounts::set_roles(w.conn, &n2, r)?;
                }
                if let Some(d) = req.disabled {
                    accounts::set_disabled(w.conn, &n2, d)?;
                    if d {
                        accounts::revoke_token(w.conn, Some(&n2), None, w.now)?;
                    }
                }
                if let Some(d) = &req.display {
                    if d.trim().is_empty() {
                        return Err(StoreError::invalid("display", "must not be empty"));
                    }
                    w.conn.exec(
                        "UPDATE users SET display = $2 WHERE name = $1",
                        mamori_store::p![n2.as_str(), d.as_str()],
                    )?;
                }
                if let Some(d) = &req.department {
                    w.conn.exec(
                        "UPDATE users SET department = $2 WHERE name = $1",
                        mamori_store::p![n2.as_str(), d.as_deref()],
                    )?;
                }
                let after =
                    accounts::get_user(w.conn, &n2)?.ok_or_else(|| StoreError::NotFound(format!("user {n2}")))?;
                let mut rec = c2.record("user-update", 200, w.now);
                rec.detail = Some(json!({"user": n2, "before": user_json(&before), "after": user_json(&after)}));
                w.audit(&rec)?;
                Ok(after)
            },
            move |e, w| {
                let mut rec = c3.record("user-update", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(user_json(&user)).into_response())
}

async fn reset_password(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> OpsResult {
    if let Err(e) = require(may_administer(&caller.subject()), "resetting passwords") {
        return Err(refuse(&st, &caller, "password-reset", e).await);
    }
    let pw = accounts::random_password()?;
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let c2 = caller.clone();
    let c3 = caller.clone();
    let n2 = name.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::set_password(w.conn, &n2, &hash, true)?;
                accounts::revoke_token(w.conn, Some(&n2), None, w.now)?;
                let mut rec = c2.record("password-reset", 200, w.now);
                rec.detail = Some(json!({"user": n2}));
                w.audit(&rec)?;
                Ok(())
            },
            move |e, w| {
                let mut rec = c3.record("password-reset", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({"name": name, "one_time_password": pw.as_str(), "must_change_password": true})).into_response())
}

async fn enroll_totp(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> OpsResult {
    if caller.user.name.as_str() != name {
        if let Err(e) = require(may_administer(&caller.subject()), "enrolling another user's TOTP") {
            return Err(refuse(&st, &caller, "totp-enroll", e).await);
        }
    }
    let secret = Zeroizing::new(accounts::random_bytes::<20>()?.to_vec());
    let s2 = secret.clone();
    let c2 = caller.clone();
    let n2 = name.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::set_totp(w.conn, &n2, Some(&s2))?;
                let mut rec = c2.record("totp-enroll", 200, w.now);
                rec.detail = Some(json!({"user": n2}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    let b32 = accounts::base32(&secret);
    let issuer = crate::fhir::enc(&st.cfg.institution.name);
    Ok(Json(json!({
        "secret": b32,
        "otpauth_uri": format!("otpauth://totp/{issuer}:{name}?secret={b32}&issuer={issuer}&algorithm=SHA1&digits=6&period=30"),
    }))
    .into_response())
}

async fn remove_totp(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> OpsResult {
    if let Err(e) = require(may_administer(&caller.subject()), "removing TOTP") {
        return Err(refuse(&st, &caller, "totp-remove", e).await);
    }
    let c2 = caller.clone();
    let n2 = name.clone();
    st.store
        .writer()
        .write(
            move |w| {
                accounts::set_totp(w.conn, &n2, None)?;
                let mut rec = c2.record("totp-remove", 200, w.now);
                rec.detail = Some(json!({"user": n2}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(Json(json!({"removed": true})).into_response())
}

// ---- tokens -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueTokenReq {
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    ttl_hours: Option<i64>,
}

async fn issue_token(State(st): State<AppState>, caller: Caller, body: Body) -> OpsResult {
    let pre = async {
        let req: IssueTokenReq = json_body(body).await?;
        let user = req.user.clone().unwrap_or_else(|| caller.user.name.as_str().to_owned());
        if user != caller.user.name.as_str() {
            require(may_administer(&caller.subject()), "issuing tokens for others")?;
        }
        if caller.user.kind == SubjectKind::EmergencyAccount {
            return Err(ApiError::Forbidden("emergency accounts cannot issue tokens".into()));
        }
        let ttl = req.ttl_hours.unwrap_or(st.cfg.auth.api_token_ttl_hours);
        if !(1..=24 * 366).contains(&ttl) {
            return Err(ApiError::bad("ttl_hours", "between 1 hour and 366 days"));
        }
        if req.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
            return Err(ApiError::bad("label", "at most 200 characters"));
        }
        Ok::<_, ApiError>((user, req.label, ttl))
    }
    .await;
    let (user, label, ttl) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "token-issue", e).await),
    };
    let secret = accounts::new_token_secret()?;
    let s2 = secret.clone();
    let c2 = caller.clone();
    let c3 = caller.clone();
    let (id, expires) = st
        .store
        .writer()
        .write(
            move |w| {
                let u =
                    accounts::get_user(w.conn, &user)?.ok_or_else(|| StoreError::NotFound(format!("user {user}")))?;
                if u.kind == SubjectKind::EmergencyAccount {
                    return Err(StoreError::Forbidden("emergency accounts cannot hold API tokens".into()));
                }
                let expires = w.now.plus_secs(ttl * 3600);
                let id =
                    accounts::insert_token(w.conn, &s2, &user, TokenKind::Api, label.as_deref(), w.now, expires, None)?;
                let mut rec = c2.record("token-issue", 201, w.now);
                rec.detail = Some(json!({"user": user, "token": id, "expires": expires.to_rfc3339(), "label": label}));
                w.audit(&rec)?;
                Ok((id, expires))
            },
            move |e, w| {
                let mut rec = c3.record("token-issue", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"token": secret.as_str(), "id": id, "expires_at": expires.to_rfc3339()})))
        .into_response())
}

#[derive(Deserialize)]
struct UserFilter {
    user: Option<String>,
}

async fn list_tokens(State(st): State<AppState>, caller: Caller, Query(f): Query<UserFilter>) -> OpsResult {
    let admin = may_administer(&caller.subject());
    let user = if admin { f.user } else { Some(caller.user.name.as_str().to_owned()) };
    let tokens = st.store.read(move |c| accounts::list_tokens(c, user.as_deref())).await?;
    Ok(Json(json!({"tokens": tokens})).into_response())
}

async fn revoke_token(State(st): State<AppState>, caller: Caller, Path(id): Path<String>) -> OpsResult {
    let admin = may_administer(&caller.subject());
    let c2 = caller.clone();
    let id2 = id.clone();
    let n = st
        .store
        .writer()
        .write(
            move |w| {
                let only = if admin { None } else { Some(c2.user.name.as_str().to_owned()) };
                let n = accounts::revoke_token(w.conn, only.as_deref(), Some(&id2), w.now)?;
                let mut rec = c2.record("token-revoke", if n > 0 { 200 } else { 404 }, w.now);
                rec.detail = Some(json!({"token": id2}));
                w.audit(&rec)?;
                Ok(n)
            },
            |_, _| Ok(()),
        )
        .await?;
    if n == 0 {
        return Err(OpsError(ApiError::NotFound(format!("no live token {id} you may revoke"))));
    }
    Ok(Json(json!({"revoked": n})).into_response())
}

// ---- care assignments ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CareReq {
    patient: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

async fn assign_care(State(st): State<AppState>, caller: Caller, body: Body) -> OpsResult {
    let req: CareReq = match json_body(body).await {
        Ok(r) => r,
        Err(e) => return Err(refuse(&st, &caller, "care-assign", e).await),
    };
    let pre = (|| {
        let patient = PatientId::parse(req.patient.strip_prefix("Patient/").unwrap_or(&req.patient))
            .map_err(|e| ApiError::bad("patient", e.to_string()))?;
        if let Some(u) = &req.user {
            UserId::parse(u).map_err(|e| ApiError::bad("user", e.to_string()))?;
        }
        if req.user.is_some() == req.department.is_some() {
            return Err(ApiError::bad("", "give exactly one of user or department"));
        }
        Ok::<_, ApiError>(patient)
    })();
    let patient = match pre {
        Ok(p) => p,
        Err(e) => return Err(refuse(&st, &caller, "care-assign", e).await),
    };
    let c2 = caller.clone();
    let c3 = caller.clone();
    let p2 = patient.clone();
    let id = st
        .store
        .writer()
        .write(
            move |w| {
                let own = accounts::has_care_relationship(w.conn, c2.user.name.as_str(), c2.user.department.as_deref(), p2.as_str(), w.now)?;
                if !may_assign_care(&c2.subject(), own) {
                    return Err(StoreError::Forbidden("assigning care needs the admin or clerk role, or a physician's own care relationship with the patient".into()));
                }
                let id = accounts::assign_care(w.conn, p2.as_str(), req.user.as_deref(), req.department.as_deref(), req.reason.as_deref(), c2.user.name.as_str(), w.now)?;
                let mut rec = c2.record("care-assign", 201, w.now);
                rec.patients = vec![p2.as_str().to_owned()];
                rec.detail = Some(json!({"assignment": id, "user": req.user, "department": req.department, "reason": req.reason}));
                w.audit(&rec)?;
                Ok(id)
            },
            move |e, w| {
                let mut rec = c3.record("care-assign", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.patients = vec![patient.as_str().to_owned()];
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"id": id}))).into_response())
}

#[derive(Deserialize)]
struct CareFilter {
    patient: Option<String>,
    user: Option<String>,
}

async fn list_care(State(st): State<AppState>, caller: Caller, Query(f): Query<CareFilter>) -> OpsResult {
    let s = caller.subject();
    let privileged = may_administer(&s) || s.has(Role::Clerk);
    let user = if privileged { f.user } else { Some(caller.user.name.as_str().to_owned()) };
    let list = st.store.read(move |c| accounts::list_care(c, f.patient.as_deref(), user.as_deref())).await?;
    Ok(Json(json!({"assignments": list})).into_response())
}

async fn end_care(State(st): State<AppState>, caller: Caller, Path(id): Path<i64>) -> OpsResult {
    let s = caller.subject();
    if !(may_administer(&s) || s.has(Role::Clerk)) {
        return Err(refuse(
            &st,
            &caller,
            "care-end",
            ApiError::Forbidden("ending care assignments needs the admin or clerk role".into()),
        )
        .await);
    }
    let c2 = caller.clone();
    let c3 = caller.clone();
    let a = st
        .store
        .writer()
        .write(
            move |w| {
                let a = accounts::end_care(w.conn, id, w.now)?;
                let mut rec = c2.record("care-end", 200, w.now);
                rec.patients = vec![a.patient.clone()];
                rec.detail = Some(json!({"assignment": id}));
                w.audit(&rec)?;
                Ok(a)
            },
            move |e, w| {
                let mut rec = c3.record("care-end", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"assignment": id, "error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!(a)).into_response())
}
