//! Sealed emergency accounts (EM-B8, EM-C3a/b/c): provisioned in advance
//! by an admin, their credential shown once on a printable envelope and
//! stored only as a hash. Outside a declared emergency a login is refused
//! and raises a security alert on every channel; during one, the person
//! gives their real name and affiliation and the unsealing is announced
//! everywhere. At return to normal a used account is retired for good and
//! a replacement is provisioned.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mamori_core::bcp::{AccountEvent, AccountState};
use mamori_core::ids::UserId;
use mamori_core::policy::{may_administer, Role, SubjectKind};
use mamori_store::accounts::{self, NewUser, TokenKind};
use mamori_store::emergency::{self, EmergencyAccount};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::error::{ApiError, OpsError};
use crate::notify::{self, Audience};
use crate::ops::{json_body, refuse};
use crate::state::{AppState, Caller, RequestCtx};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/emergency-accounts", get(list).post(provision))
        .route("/api/v1/emergency-accounts/{name}/envelope", post(envelope))
        .route("/api/v1/emergency-login", post(emergency_login))
}

type R = Result<Response, OpsError>;

fn account_json(a: &EmergencyAccount) -> Value {
    json!({
        "account": a.user, "state": a.state, "drill": a.drill, "roles": a.roles,
        "created": a.created.to_rfc3339(), "created_by": a.created_by,
        "sealed_at": a.sealed_at.map(|t| t.to_rfc3339()), "unsealed_at": a.unsealed_at.map(|t| t.to_rfc3339()),
        "declared_person": a.declared, "retired_at": a.retired_at.map(|t| t.to_rfc3339()), "replaced_by": a.replaced_by,
    })
}

async fn list(State(st): State<AppState>, caller: Caller) -> R {
    let s = caller.subject();
    if !(may_administer(&s) || s.has(Role::BcpDecider) || s.has(Role::Auditor)) {
        return Err(refuse(
            &st,
            &caller,
            "emergency-account-list",
            ApiError::Forbidden("admins, deciders and auditors only".into()),
        )
        .await);
    }
    let v = st.store.read(emergency::emergency_accounts).await?;
    Ok(Json(json!({"accounts": v.iter().map(account_json).collect::<Vec<_>>()})).into_response())
}

/// A new emergency account, awaiting its envelope. Names are `em-` plus
/// a short random suffix (`emd-` for drill accounts).
pub fn create_account(w: &mut WriteCtx<'_>, roles: &[Role], drill: bool, by: &str) -> mamori_store::Result<String> {
    let suffix = mamori_audit::merkle::to_hex(&accounts::random_bytes::<3>()?);
    let name = format!("{}-{suffix}", if drill { "emd" } else { "em" });
    let id = UserId::parse(&name).map_err(|e| StoreError::Internal(e.to_string()))?;
    let display = if drill {
        format!("訓練用非常用アカウント / Drill emergency account {suffix}")
    } else {
        format!("非常用アカウント / Emergency account {suffix}")
    };
    accounts::create_user(
        w.conn,
        &NewUser {
            name: &id,
            display: &display,
            kind: SubjectKind::EmergencyAccount,
            department: None,
            roles,
            password_hash: None,
            must_change: false,
            created_by: by,
        },
        w.now,
    )?;
    emergency::insert_emergency_account(w.conn, &name, drill, by, w.now)?;
    Ok(name)
}

/// Retires a used account (its credential never works again) and
/// provisions its replacement; returns the replacement's name.
pub fn retire_and_replace(w: &mut WriteCtx<'_>, acc: &EmergencyAccount, why: &str) -> mamori_store::Result<String> {
    acc.state.apply(AccountEvent::Retire).map_err(StoreError::Internal)?;
    emergency::set_account_state(w.conn, &acc.user, AccountState::Retired, w.now, None)?;
    w.conn.exec(
        "UPDATE users SET password_hash = NULL, disabled = 1 WHERE name = $1",
        mamori_store::p![acc.user.as_str()],
    )?;
    accounts::revoke_token(w.conn, Some(&acc.user), None, w.now)?;
    let roles: Vec<Role> = acc.roles.iter().filter_map(|r| Role::parse(r)).collect();
    let new = create_account(w, &roles, acc.drill, "system")?;
    emergency::set_replaced_by(w.conn, &acc.user, &new)?;
    let ctx = RequestCtx { addr: None, request_id: None, mode: mamori_core::mode::Mode::Normal };
    let mut rec = ctx.record("system", "system", "emergency-account-retired", 200, w.now);
    rec.detail = Some(json!({"account": acc.user, "replacement": new, "why": why, "declared_person": acc.declared}));
    w.audit(&rec)?;
    Ok(new)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisionReq {
    #[serde(default = "one")]
    count: u32,
    #[serde(default = "physician")]
    roles: Vec<String>,
    #[serde(default)]
    drill: bool,
}

fn one() -> u32 {
    1
}
fn physician() -> Vec<String> {
    vec!["physician".into()]
}

async fn provision(State(st): State<AppState>, caller: Caller, body: Body) -> R {
    let pre = async {
        if !may_administer(&caller.subject()) {
            return Err(ApiError::Forbidden("provisioning emergency accounts needs the admin role".into()));
        }
        let req: ProvisionReq = json_body(body).await?;
        if req.count == 0 || req.count > 50 {
            return Err(ApiError::bad("count", "between 1 and 50"));
        }
        let mut roles = Vec::new();
        for r in &req.roles {
            let role = Role::parse(r)
                .filter(|r| *r != Role::Maintenance)
                .ok_or_else(|| ApiError::bad("roles", format!("unknown role '{r}'")))?;
            if !role.is_clinical() {
                return Err(ApiError::bad(
                    "roles",
                    "emergency accounts carry clinical roles only (physician, nurse, pharmacist)",
                ));
            }
            roles.push(role);
        }
        if roles.is_empty() {
            return Err(ApiError::bad("roles", "give at least one clinical role"));
        }
        Ok((req, roles))
    }
    .await;
    let (req, roles) = match pre {
        Ok(x) => x,
        Err(e) => return Err(refuse(&st, &caller, "emergency-account-provision", e).await),
    };
    let c2 = caller.clone();
    let names = st
        .store
        .writer()
        .write(
            move |w| {
                let mut names = Vec::new();
                for _ in 0..req.count {
                    names.push(create_account(w, &roles, req.drill, c2.user.name.as_str())?);
                }
                let mut rec = c2.record("emergency-account-provision", 201, w.now);
                rec.detail = Some(json!({"accounts": names, "drill": req.drill, "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()}));
                w.audit(&rec)?;
                Ok(names)
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(json!({"accounts": names, "next": "print each envelope: POST /api/v1/emergency-accounts/{account}/envelope"}))).into_response())
}

/// Generates the credential and returns the envelope, once.
async fn envelope(State(st): State<AppState>, caller: Caller, Path(name): Path<String>) -> R {
    if !may_administer(&caller.subject()) {
        return Err(refuse(
            &st,
            &caller,
            "emergency-account-envelope",
            ApiError::Forbidden("printing envelopes needs the admin role".into()),
        )
        .await);
    }
    let pw = accounts::random_password()?;
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let c2 = caller.clone();
    let c3 = caller.clone();
    let n2 = name.clone();
    let acc = st
        .store
        .writer()
        .write(
            move |w| {
                let acc = emergency::emergency_account(w.conn, &n2)?
                    .ok_or_else(|| StoreError::NotFound(format!("emergency account {n2}")))?;
                acc.state.apply(AccountEvent::EnvelopePrinted).map_err(|e| {
                    StoreError::Precondition(format!(
                        "{e}: the envelope of {n2} was already printed; to re-issue, retire it"
                    ))
                })?;
                accounts::set_password(w.conn, &n2, &hash, false)?;
                emergency::set_account_state(w.conn, &n2, AccountState::Sealed, w.now, None)?;
                let mut rec = c2.record("emergency-account-envelope", 200, w.now);
                rec.detail = Some(json!({"account": n2}));
                w.audit(&rec)?;
                Ok(acc)
            },
            move |e, w| {
                let mut rec =
                    c3.record("emergency-account-envelope", ApiError::from(e.clone()).status().as_u16(), w.now);
                rec.detail = Some(json!({"error": e.to_string()}));
                w.audit(&rec).map(|_| ())
            },
        )
        .await?;
    Ok(Json(json!({
        "account": name,
        "password": pw.as_str(),
        "drill": acc.drill,
        "roles": acc.roles,
        "institution": st.cfg.institution.name,
        "printed_at": st.store.clock().now().to_rfc3339(),
        "instructions": {
            "ja": "非常用アカウント（封緘）。非常時宣言中のみ使用可。使用時は氏名と所属の入力が必要です。平常時の使用は禁止され、試行は全職員に通知されます。開封したら本部へ報告してください。",
            "en": "Sealed emergency account. Usable only while an emergency is declared; you will be asked for your real name and affiliation. Any attempt in normal times is refused and announced to all staff. Report to the emergency HQ when you open this envelope."
        }
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmergencyLoginReq {
    account: String,
    password: Zeroizing<String>,
    real_name: String,
    affiliation: String,
}

async fn emergency_login(State(st): State<AppState>, parts: axum::http::request::Parts, body: Body) -> R {
    let ctx = RequestCtx::from_parts(&parts, st.mode.get());
    let req: EmergencyLoginReq = json_body(body).await.map_err(OpsError)?;
    let mode = st.mode.get();
    let name = req.account.clone();
    let found = st
        .store
        .read(move |c| {
            Ok(emergency::emergency_account(c, &name)?
                .zip(accounts::credentials(c, &name)?)
                .zip(accounts::get_user(c, &name)?))
        })
        .await?;
    let pw = req.password.clone();
    let hash = found.as_ref().and_then(|((_, cr), _)| cr.password_hash.clone());
    let pw_ok = tokio::task::spawn_blocking(move || hash.is_some_and(|h| accounts::verify_password(&pw, &h)))
        .await
        .unwrap_or(false);
    let declared = format!("{} ({})", req.real_name.trim(), req.affiliation.trim());
    let refusal: Option<(&str, String)> = match &found {
        None => Some(("unknown-account", "invalid emergency account or password".into())),
        Some(((acc, _), user)) => {
            // A retired credential is refused loudly, whatever the password.
            if user.disabled || acc.state == AccountState::Retired {
                Some(("retired", "this emergency account has been retired and can never be used again. This attempt has been announced.".into()))
            } else if !pw_ok {
                Some(("bad-password", "invalid emergency account or password".into()))
            } else if acc.state == AccountState::AwaitingEnvelope {
                Some(("no-envelope", "invalid emergency account or password".into()))
            } else if mode.is_normal() {
                Some(("sealed", "emergency accounts are sealed: no emergency is declared. This attempt has been announced to all staff.".into()))
            } else if mode.is_drill() != acc.drill {
                Some((
                    "wrong-kind",
                    if acc.drill {
                        "this is a drill account; no drill is running".into()
                    } else {
                        "a drill is running: real emergency accounts stay sealed. This attempt has been announced."
                            .into()
                    },
                ))
            } else if req.real_name.trim().chars().count() < 2 || req.affiliation.trim().chars().count() < 2 {
                Some(("no-identity", "give your real name and affiliation".into()))
            } else {
                None
            }
        }
    };
    if let Some((reason, msg)) = refusal {
        let st2 = st.clone();
        let account = req.account.clone();
        let ctx2 = ctx.clone();
        let decl2 = declared.clone();
        let loud = matches!(reason, "sealed" | "wrong-kind" | "retired");
        let ann = st
            .store
            .writer()
            .write(
                move |w| {
                    if found.is_some() && matches!(reason, "bad-password") {
                        accounts::record_login_failure(w.conn, &account, st2.cfg.auth.max_failed_logins, st2.cfg.auth.lockout_minutes * 60, w.now)?;
                    }
                    let mut rec = ctx2.record(&account, "emergency", "emergency-login-refused", 403, w.now);
                    rec.agent.declared = Some(decl2.clone());
                    rec.detail = Some(json!({"reason": reason, "mode": st2.mode.get().header_value()}));
                    w.audit(&rec)?;
                    if loud {
                        let id = emergency::insert_alert(w.conn, "emergency-account-misuse", "critical", &format!("非常用アカウント {account} の不正な使用が試みられました / Attempted use of sealed emergency account {account}"), &json!({"account": account, "declared": decl2, "reason": reason, "address": ctx2.addr}), w.now)?;
                        let a = notify::announce(
                            w,
                            &st2,
                            "emergency-account-refused",
                            st2.mode.get().is_drill(),
                            "critical",
                            &format!("封緘された非常用アカウント {account} へのログインが拒否されました（{decl2}）/ Login to sealed emergency account {account} refused ({decl2})"),
                            json!({"account": account, "declared": decl2, "reason": reason, "alert": id}),
                            Audience::Everyone,
                        )?;
                        return Ok(Some(a));
                    }
                    Ok(None)
                },
                |_, _| Ok(()),
            )
            .await?;
        notify::publish(&st, ann);
        let status = if matches!(reason, "unknown-account" | "bad-password" | "no-envelope") {
            ApiError::Unauthorized(msg)
        } else {
            ApiError::Forbidden(msg)
        };
        return Err(OpsError(status));
    }
    let Some(((acc, _), user)) = found else { return Err(OpsError(ApiError::Internal("account vanished".into()))) };
    let roles: Vec<String> = user.roles.iter().map(|r| r.as_str().to_owned()).collect();
    let user_name = user.name.as_str().to_owned();
    let secret = accounts::new_token_secret()?;
    let s2 = secret.clone();
    let st2 = st.clone();
    let ttl = st.cfg.auth.login_ttl_minutes * 60;
    let (expires, ann) = st
        .store
        .writer()
        .write(
            move |w| {
                let first = acc.state == AccountState::Sealed;
                let to = acc.state.apply(AccountEvent::Unseal).map_err(StoreError::Precondition)?;
                emergency::set_account_state(w.conn, &acc.user, to, w.now, Some(&declared))?;
                let expires = w.now.plus_secs(ttl);
                let id = accounts::insert_token(
                    w.conn,
                    &s2,
                    &acc.user,
                    TokenKind::Session,
                    Some("emergency login"),
                    w.now,
                    expires,
                    Some(&declared),
                )?;
                let mut rec = ctx.record(&acc.user, "emergency", "emergency-login", 200, w.now);
                rec.agent.declared = Some(declared.clone());
                rec.agent.roles = user.roles.iter().map(|r| r.as_str().to_owned()).collect();
                rec.detail = Some(json!({"token": id, "first_use": first}));
                w.audit(&rec)?;
                let a = notify::announce(
                    w,
                    &st2,
                    if first { "emergency-account-unsealed" } else { "emergency-account-login" },
                    acc.drill,
                    "warning",
                    &format!(
                        "非常用アカウント {} が使用されています：{} / Emergency account {} in use by {}",
                        acc.user, declared, acc.user, declared
                    ),
                    json!({"account": acc.user, "declared": declared, "first_use": first}),
                    Audience::Everyone,
                )?;
                Ok((expires, a))
            },
            |_, _| Ok(()),
        )
        .await?;
    notify::publish(&st, [ann]);
    Ok(Json(json!({"token": secret.as_str(), "expires_at": expires.to_rfc3339(), "user": user_name, "roles": roles, "declared": declared_of(&req.real_name, &req.affiliation)})).into_response())
}

fn declared_of(name: &str, aff: &str) -> String {
    format!("{} ({})", name.trim(), aff.trim())
}
