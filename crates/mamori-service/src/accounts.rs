//! Accounts: logging in and out, sessions and API tokens, users and their
//! roles, second factors, care assignments, and the account changes a
//! second admin approves.
//!
//! Separation of duties holds here through the policy: an administrator
//! never gains clinical access. No token is issued for another person
//! (only for a service account, a principal of its own); no admin gives
//! itself a clinical role, and no account holds admin and clinical roles
//! together; a clinical role grant and the password reset of a clinical
//! account wait for a second admin; every event made with a token names
//! the token and who issued it.

use mamori_core::ids::{PatientId, UserId};
use mamori_core::policy::{Facts, Obligation, Operation, Role, RoleSet, SubjectKind};
use mamori_store::accounts::{
    self, AccountRequest, CareAssignment, NewToken, NewUser, RequestKind, TokenKind, TokenListing, User,
};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::json;
use zeroize::Zeroizing;

use crate::actor::{Actor, RequestCtx, TokenRef};
use crate::authz;
use crate::commit::failure_record;
use crate::error::ServiceError;
use crate::services::Services;

// ---- views -------------------------------------------------------------------------------

/// An account as shown (never its secrets).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserView {
    /// The account name.
    pub name: String,
    /// The display name.
    pub display: String,
    /// `staff`, `emergency` or `service`.
    pub kind: String,
    /// The department.
    pub department: Option<String>,
    /// The roles.
    pub roles: Vec<String>,
    /// A one-time password still waits to be changed.
    pub must_change_password: bool,
    /// A second factor is enrolled.
    pub totp: bool,
    /// Disabled.
    pub disabled: bool,
    /// Locked until (after failed logins).
    pub locked_until: Option<String>,
    /// Created.
    pub created: String,
}

impl From<&User> for UserView {
    fn from(u: &User) -> Self {
        UserView {
            name: u.name.as_str().to_owned(),
            display: u.display.clone(),
            kind: match u.kind {
                SubjectKind::EmergencyAccount => "emergency",
                SubjectKind::Service => "service",
                _ => "staff",
            }
            .to_owned(),
            department: u.department.clone(),
            roles: u.roles.iter().map(|r| r.as_str().to_owned()).collect(),
            must_change_password: u.must_change,
            totp: u.has_totp,
            disabled: u.disabled,
            locked_until: u.locked_until.map(|t| t.to_rfc3339()),
            created: u.created.to_rfc3339(),
        }
    }
}

/// Who the caller is.
#[derive(Debug, Clone, Serialize)]
pub struct Me {
    /// The account.
    #[serde(flatten)]
    pub user: UserView,
    /// The mode in force.
    pub mode: String,
    /// The token's id.
    pub token: Option<String>,
    /// The person behind an emergency account.
    pub declared: Option<String>,
}

fn parse_roles(roles: &[String]) -> Result<Vec<Role>, ServiceError> {
    let mut out = Vec::new();
    for r in roles {
        if r == "maintenance" {
            return Err(ServiceError::invalid(
                "roles",
                "maintenance people have their own accounts: /api/v1/maintenance/people",
            ));
        }
        out.push(Role::parse(r).ok_or_else(|| {
            ServiceError::invalid(
                "roles",
                format!(
                    "unknown role '{r}'; known: {}",
                    Role::ALL.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn role_names(roles: &[Role]) -> Vec<String> {
    roles.iter().map(|r| r.as_str().to_owned()).collect()
}

fn check_display(d: &str) -> Result<(), ServiceError> {
    if d.trim().is_empty() || d.chars().count() > 200 {
        return Err(ServiceError::invalid("display", "a display name of 1 to 200 characters is required"));
    }
    Ok(())
}

async fn hash(pw: Zeroizing<String>) -> Result<String, ServiceError> {
    tokio::task::spawn_blocking(move || accounts::hash_password(&pw))
        .await
        .map_err(|e| ServiceError::internal_from("password hashing", e))?
        .map_err(ServiceError::from)
}

async fn user_of(svc: &Services, name: &str) -> Result<User, ServiceError> {
    let n = name.to_owned();
    svc.store
        .read(move |c| accounts::get_user(c, &n))
        .await?
        .ok_or_else(|| ServiceError::NotFound(format!("user {name}")))
}

// ---- authentication ---------------------------------------------------------------------

/// Authenticates a bearer token (or session cookie); an invalid, expired
/// or revoked token is audited as `auth-failure`.
pub async fn authenticate(svc: &Services, secret: String, ctx: RequestCtx) -> Result<Actor, ServiceError> {
    let now = svc.now();
    let hash = accounts::token_hash(&secret);
    let found = match svc.tokens.get(&hash, now) {
        Some(hit) => Some(hit),
        None => {
            let gen = svc.tokens.generation();
            let found = svc.store.read(move |c| accounts::lookup_token(c, &secret, now)).await?;
            if let Some(info) = &found {
                svc.tokens.put(hash, gen, info.clone());
            }
            found
        }
    };
    let Some(info) = found else {
        svc.audit(vec![ctx.record("anonymous", "anonymous", "auth-failure", 401, now)]).await?;
        return Err(ServiceError::Unauthenticated("invalid, expired or revoked token".into()));
    };
    let mut actor = Actor::account(info.user, TokenRef { id: info.id, issuer: info.issued_by }, info.declared, ctx);
    actor.node = svc.node();
    actor.app = info.app.map(std::sync::Arc::new);
    Ok(actor)
}

/// A login.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// The account.
    pub username: String,
    /// Its password.
    pub password: Zeroizing<String>,
    /// The second factor's code, if enrolled.
    #[serde(default)]
    pub totp: Option<String>,
}

/// A new session.
#[derive(Debug, Serialize)]
pub struct Session {
    /// The bearer token (shown once).
    pub token: String,
    /// When it expires.
    pub expires_at: String,
    /// A one-time password must be changed first.
    pub must_change_password: bool,
    /// The account.
    pub user: String,
    /// Its roles.
    pub roles: Vec<String>,
}

/// The outcome of checking credentials (computed off the async threads).
enum Check {
    Ok { totp_step: Option<i64> },
    Fail(&'static str),
}

/// Logs in with a password (and a second factor, if enrolled). Emergency
/// and service accounts never log in here.
pub async fn login(svc: &Services, ctx: RequestCtx, req: Login) -> Result<Session, ServiceError> {
    crate::throttle::refuse_if_waiting(svc, ctx.addr.as_deref())?;
    let now = svc.now();
    let name = UserId::parse(&req.username).ok().map(|u| u.as_str().to_owned());
    let n2 = name.clone();
    let found = svc
        .store
        .read(move |c| match n2 {
            Some(n) => Ok(accounts::get_user(c, &n)?.zip(accounts::credentials(c, &n)?)),
            None => Ok(None),
        })
        .await?;
    let (pw, totp) = (req.password.clone(), req.totp.clone());
    let found2 =
        found.as_ref().map(|(u, cr)| (u.clone(), cr.password_hash.clone(), cr.totp_secret.clone(), cr.totp_last_step));
    let check = tokio::task::spawn_blocking(move || {
        let Some((u, hash, secret, last_step)) = found2 else {
            accounts::verify_password_or_dummy(&pw, None);
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
            return match accounts::totp_check(&secret, &code, now) {
                Some(step) if last_step.is_none_or(|l| step > l) => Check::Ok { totp_step: Some(step) },
                Some(_) => Check::Fail("totp-replayed"),
                None => Check::Fail("bad-totp"),
            };
        }
        Check::Ok { totp_step: None }
    })
    .await
    .map_err(|e| ServiceError::internal_from("credential check", e))?;
    let agent = name.clone().unwrap_or_else(|| "anonymous".into());
    let max = svc.cfg.auth.max_failed_logins;
    let lock_secs = svc.cfg.auth.lockout_minutes * 60;
    match check {
        Check::Fail(reason) => {
            let exists = found.is_some();
            let ctx2 = ctx.clone();
            svc.store
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
            crate::throttle::login_failed(svc, ctx.addr.clone(), "login").await;
            // One answer for every reason (the audit event keeps it): a
            // different one for a missing code would confirm the password.
            Err(ServiceError::Unauthenticated(
                "invalid credentials (with the one-time code, if the account has one), or the account is locked or disabled"
                    .into(),
            ))
        }
        Check::Ok { totp_step } => {
            let Some((user, _)) = found else {
                return Err(ServiceError::internal("user vanished"));
            };
            if user.kind != SubjectKind::Staff {
                // Emergency accounts log in through their own path (with
                // the person's real name), and only during an emergency;
                // service accounts use the tokens issued to them.
                let mut rec = ctx.record(user.name.as_str(), user.kind.as_str(), "login-failure", 403, now);
                rec.detail = Some(json!({"reason": "not-a-staff-account"}));
                svc.audit(vec![rec]).await?;
                return Err(ServiceError::forbidden(if user.kind == SubjectKind::EmergencyAccount {
                    "emergency accounts log in through POST /api/v1/emergency-login"
                } else {
                    "service accounts authenticate with the API tokens issued to them"
                }));
            }
            let secret = accounts::new_token_secret()?;
            let s2 = secret.clone();
            let ttl = svc.cfg.auth.login_ttl_minutes * 60;
            let u2 = user.clone();
            let expires = svc
                .store
                .writer()
                .write(
                    move |w| {
                        accounts::record_login_success(w.conn, u2.name.as_str(), totp_step)?;
                        let expires = w.now.plus_secs(ttl);
                        let id = accounts::insert_token(
                            w.conn,
                            &NewToken {
                                secret: &s2,
                                user: u2.name.as_str(),
                                kind: TokenKind::Session,
                                label: Some("login"),
                                expires,
                                declared: None,
                                issued_by: None,
                                app: None,
                            },
                            w.now,
                        )?;
                        let mut rec = ctx.record(u2.name.as_str(), "staff", "login", 200, w.now);
                        rec.agent.roles = role_names(&u2.roles);
                        rec.agent.token = Some(id.clone());
                        rec.detail = Some(json!({"token": id, "totp": totp_step.is_some()}));
                        w.audit(&rec)?;
                        Ok(expires)
                    },
                    |_, _| Ok(()),
                )
                .await?;
            Ok(Session {
                token: secret.as_str().to_owned(),
                expires_at: expires.to_rfc3339(),
                must_change_password: user.must_change,
                user: user.name.as_str().to_owned(),
                roles: role_names(&user.roles),
            })
        }
    }
}

/// Ends the caller's session (its token is revoked).
pub async fn logout(svc: &Services, actor: &Actor) -> Result<(), ServiceError> {
    let d = svc.gate(actor, "logout", Operation::OwnSession, Facts::default(), "logging out").await?;
    let a2 = actor.clone();
    svc.change(actor, "logout", move |w| {
        if let Some(t) = &a2.token {
            accounts::revoke_token(w.conn, Some(a2.name()), Some(&t.id), w.now)?;
        }
        w.audit(&a2.decided("logout", 200, &d, w.now))?;
        Ok(())
    })
    .await
}

/// A password change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub current: Zeroizing<String>,
    /// The new one.
    pub new: Zeroizing<String>,
}

/// A changed password: every session and API token of the account ended,
/// and a new session for the caller.
#[derive(Debug, Serialize)]
pub struct PasswordChanged {
    /// The caller's new session token (the one it used has ended too).
    pub token: String,
    /// When the new session expires.
    pub expires_at: String,
    /// How many sessions and tokens of the account were ended.
    pub ended: usize,
}

/// Changes the caller's own password (knowing the current one). A wrong
/// current password counts as a failed login (the account locks after as
/// many as a login allows, and its sessions end); a change ends every
/// session and token of the account, so that one taken before no longer
/// works, and gives the caller a new session.
pub async fn change_password(
    svc: &Services,
    actor: &Actor,
    req: PasswordChange,
) -> Result<PasswordChanged, ServiceError> {
    const ACTION: &str = "password-change";
    let d = svc.gate(actor, ACTION, Operation::OwnPasswordChange, Facts::default(), "changing your password").await?;
    let name = actor.name().to_owned();
    let n2 = name.clone();
    let now = svc.now();
    let (user, creds) =
        svc.store.read(move |c| Ok((accounts::get_user(c, &n2)?, accounts::credentials(c, &n2)?))).await?;
    if user.as_ref().is_some_and(|u| u.locked_until.is_some_and(|t| t > now)) {
        let e = ServiceError::forbidden("the account is locked; try again later or ask an administrator");
        return Err(svc.refused(actor, ACTION, e).await);
    }
    let (cur, new) = (req.current.clone(), req.new.clone());
    let hashed = tokio::task::spawn_blocking(move || -> Result<Option<String>, ServiceError> {
        let ok = creds.and_then(|c| c.password_hash).is_some_and(|h| accounts::verify_password(&cur, &h));
        if !ok {
            return Ok(None);
        }
        if *cur == *new {
            return Err(ServiceError::invalid("new", "the new password must differ from the current one"));
        }
        accounts::check_password_policy(&new)?;
        Ok(Some(accounts::hash_password(&new)?))
    })
    .await
    .map_err(|e| ServiceError::internal_from("password hashing", e))?;
    let hashed = match hashed {
        Ok(Some(h)) => h,
        Ok(None) => {
            // A wrong current password is a guess like a failed login.
            let (max, lock_secs) = (svc.cfg.auth.max_failed_logins, svc.cfg.auth.lockout_minutes * 60);
            let (a2, n3) = (actor.clone(), name.clone());
            let locked = svc
                .store
                .writer()
                .write(
                    move |w| {
                        let locked = accounts::record_login_failure(w.conn, &n3, max, lock_secs, w.now)?;
                        let ended = if locked { accounts::revoke_token(w.conn, Some(&n3), None, w.now)? } else { 0 };
                        let mut rec =
                            failure_record(&a2, ACTION, &ServiceError::forbidden("wrong current password"), w.now);
                        rec.detail = Some(json!({"reason": "bad-password", "locked": locked, "sessions_ended": ended}));
                        w.audit(&rec)?;
                        Ok(locked)
                    },
                    |_, _| Ok(()),
                )
                .await?;
            svc.tokens.invalidate();
            return Err(ServiceError::forbidden(if locked {
                "the current password is wrong; the account is now locked and its sessions have ended"
            } else {
                "the current password is wrong"
            }));
        }
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let secret = accounts::new_token_secret()?;
    let s2 = secret.clone();
    let ttl = svc.cfg.auth.login_ttl_minutes * 60;
    let a2 = actor.clone();
    let (expires, ended) = svc
        .change(actor, ACTION, move |w| {
            accounts::set_password(w.conn, &name, &hashed, false)?;
            let ended = accounts::revoke_token(w.conn, Some(&name), None, w.now)?;
            let expires = w.now.plus_secs(ttl);
            let id = accounts::insert_token(
                w.conn,
                &NewToken {
                    secret: &s2,
                    user: &name,
                    kind: TokenKind::Session,
                    label: Some("password change"),
                    expires,
                    declared: None,
                    issued_by: None,
                    app: None,
                },
                w.now,
            )?;
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.detail = Some(json!({"sessions_ended": ended, "new_session": id}));
            w.audit(&rec)?;
            Ok((expires, ended))
        })
        .await?;
    Ok(PasswordChanged { token: secret.as_str().to_owned(), expires_at: expires.to_rfc3339(), ended })
}

/// Who the caller is.
pub async fn me(svc: &Services, actor: &Actor) -> Result<Me, ServiceError> {
    svc.read_gate(actor, "session-read", Operation::OwnSession, Facts::default(), "your session").await?;
    Ok(describe(actor))
}

/// The authenticated actor as shown to itself (what a screen already
/// knows about its own user; nothing is read).
pub fn describe(actor: &Actor) -> Me {
    Me {
        user: UserView::from(&actor.user),
        mode: actor.mode().header_value(),
        token: actor.token.as_ref().map(|t| t.id.clone()),
        declared: actor.declared.clone(),
    }
}

// ---- users ---------------------------------------------------------------------------------

/// Every account (admins).
pub async fn list_users(svc: &Services, actor: &Actor) -> Result<Vec<UserView>, ServiceError> {
    svc.read_gate(actor, "user-list", Operation::UserRead, Facts::default(), "listing users").await?;
    let users = svc.store.read(accounts::list_users).await?;
    Ok(users.iter().map(UserView::from).collect())
}

/// One account: one's own, or (admins) another's.
pub async fn get_user(svc: &Services, actor: &Actor, name: &str) -> Result<UserView, ServiceError> {
    let op = if name == actor.name() { Operation::OwnSession } else { Operation::UserRead };
    svc.read_gate(actor, "user-read", op, Facts::default(), "reading another user").await?;
    Ok(UserView::from(&user_of(svc, name).await?))
}

/// A new account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// The account name.
    pub name: String,
    /// The display name.
    pub display: String,
    /// The roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// The department.
    #[serde(default)]
    pub department: Option<String>,
    /// A first password (else one is generated); not for service accounts.
    #[serde(default)]
    pub password: Option<Zeroizing<String>>,
    /// `staff` (default) or `service`.
    #[serde(default)]
    pub kind: Option<String>,
}

/// A created account.
#[derive(Debug, Serialize)]
pub struct Created {
    /// The account name.
    pub name: String,
    /// The first login must change the password.
    pub must_change_password: bool,
    /// The generated one-time password (shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
    /// The roles the account holds now.
    pub roles: Vec<String>,
    /// The request a second admin must approve for the clinical roles asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_request: Option<i64>,
}

/// Creates an account. Clinical roles an admin asks for wait for a second
/// admin's approval (the account is created without them); the local
/// operator on the server host grants them at once.
pub async fn create_user(svc: &Services, actor: &Actor, req: NewAccount) -> Result<Created, ServiceError> {
    const ACTION: &str = "user-create";
    let pre = (|| {
        let name = UserId::parse(&req.name).map_err(|e| ServiceError::invalid("name", e.to_string()))?;
        if accounts::RESERVED_NAMES.contains(&name.as_str()) {
            return Err(ServiceError::invalid("name", format!("'{name}' is reserved")));
        }
        check_display(&req.display)?;
        let roles = parse_roles(&req.roles)?;
        let kind = match req.kind.as_deref() {
            None | Some("staff") => SubjectKind::Staff,
            Some("service") => SubjectKind::Service,
            Some(other) => return Err(ServiceError::invalid("kind", format!("'{other}': staff or service"))),
        };
        if kind == SubjectKind::Service && req.password.is_some() {
            return Err(ServiceError::invalid("password", "service accounts have no password; issue them API tokens"));
        }
        if let Some(p) = &req.password {
            accounts::check_password_policy(p)?;
        }
        let d = authz::require(
            actor,
            &Operation::UserCreate { roles: RoleSet::of(&roles), kind },
            Facts::default(),
            "creating users",
        )?;
        Ok((name, roles, kind, d))
    })();
    let (name, roles, kind, d) = match pre {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let approval = d.has(Obligation::SecondAdminApproval);
    let now_roles: Vec<Role> =
        if approval { roles.iter().copied().filter(|r| !r.is_clinical()).collect() } else { roles.clone() };
    let (pw, generated) = match (kind, req.password) {
        (SubjectKind::Service, _) => (None, false),
        (_, Some(p)) => (Some(p), false),
        (_, None) => (Some(accounts::random_password()?), true),
    };
    let hashed = match &pw {
        Some(p) => Some(hash(p.clone()).await?),
        None => None,
    };
    let (a2, display, department) = (actor.clone(), req.display, req.department);
    let (nr, all) = (now_roles.clone(), roles.clone());
    let pending = svc
        .change(actor, ACTION, move |w| {
            // One name, one person: the audit log names both by it.
            if mamori_store::maintenance::person(w.conn, name.as_str())?.is_some() {
                return Err(ServiceError::Conflict(format!(
                    "{name} is a maintenance person's name; a staff account needs a name of its own"
                )));
            }
            accounts::create_user(
                w.conn,
                &NewUser {
                    name: &name,
                    display: &display,
                    kind,
                    department: department.as_deref(),
                    roles: &nr,
                    password_hash: hashed.as_deref(),
                    must_change: kind == SubjectKind::Staff,
                    created_by: a2.name(),
                },
                w.now,
            )?;
            let pending = if approval {
                Some(accounts::insert_request(w.conn, RequestKind::RoleGrant, name.as_str(), &all, None, a2.name(), w.now)?)
            } else {
                None
            };
            let mut rec = a2.decided(ACTION, 201, &d, w.now);
            rec.detail = Some(json!({"user": name.as_str(), "kind": kind.as_str(), "roles": role_names(&nr),
                "department": department, "pending_request": pending, "requested_roles": approval.then(|| role_names(&all))}));
            w.audit(&rec)?;
            Ok(pending)
        })
        .await?;
    Ok(Created {
        name: req.name,
        must_change_password: kind == SubjectKind::Staff,
        one_time_password: if generated { pw.map(|p| p.as_str().to_owned()) } else { None },
        roles: role_names(&now_roles),
        pending_request: pending,
    })
}

/// A change of an account.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    /// The new roles.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Disable or enable.
    #[serde(default)]
    pub disabled: Option<bool>,
    /// The new display name.
    #[serde(default)]
    pub display: Option<String>,
    /// The new department (null: none).
    #[serde(default)]
    pub department: Option<Option<String>>,
}

/// The account after a change.
#[derive(Debug, Serialize)]
pub struct Changed {
    /// The account now.
    #[serde(flatten)]
    pub user: UserView,
    /// The request a second admin must approve for the roles asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_request: Option<i64>,
}

/// Changes an account's roles, status, display name or department. A role
/// change that adds a clinical role waits for a second admin (nothing of
/// the role change applies until then).
pub async fn update_user(
    svc: &Services,
    actor: &Actor,
    name: &str,
    req: AccountChange,
) -> Result<Changed, ServiceError> {
    const ACTION: &str = "user-update";
    let target = match user_of(svc, name).await {
        Ok(u) => u,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let self_facts = Facts { target_is_self: name == actor.name(), ..Facts::default() };
    let pre = (|| {
        let roles = req.roles.as_deref().map(parse_roles).transpose()?;
        if let Some(d) = &req.display {
            check_display(d)?;
        }
        let mut decisions = Vec::new();
        if let Some(r) = &roles {
            let op = Operation::UserRolesChange {
                from: RoleSet::of(&target.roles),
                to: RoleSet::of(r),
                target: target.kind,
            };
            decisions.push(authz::require(actor, &op, self_facts, "changing roles")?);
        }
        if req.disabled.is_some() || req.display.is_some() || req.department.is_some() {
            let op = Operation::UserStatusChange {
                enable: req.disabled == Some(false),
                disable: req.disabled == Some(true),
                target: target.kind,
            };
            decisions.push(authz::require(actor, &op, self_facts, "changing users")?);
        }
        let d = decisions.first().cloned().ok_or_else(|| ServiceError::invalid("", "nothing to change"))?;
        let approval = decisions.iter().any(|d| d.has(Obligation::SecondAdminApproval));
        Ok((roles, d, approval))
    })();
    let (roles, d, approval) = match pre {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let (a2, n2) = (actor.clone(), name.to_owned());
    let (user, pending) = svc
        .change(actor, ACTION, move |w| {
            let before =
                accounts::get_user(w.conn, &n2)?.ok_or_else(|| ServiceError::NotFound(format!("user {n2}")))?;
            let mut pending = None;
            if let Some(r) = &roles {
                if approval {
                    pending =
                        Some(accounts::insert_request(w.conn, RequestKind::RoleGrant, &n2, r, None, a2.name(), w.now)?);
                } else {
                    accounts::set_roles(w.conn, &n2, r)?;
                }
            }
            if let Some(dis) = req.disabled {
                accounts::set_disabled(w.conn, &n2, dis)?;
                if dis {
                    accounts::revoke_token(w.conn, Some(&n2), None, w.now)?;
                }
            }
            accounts::set_details(w.conn, &n2, req.display.as_deref(), req.department.as_ref().map(|d| d.as_deref()))?;
            let after = accounts::get_user(w.conn, &n2)?.ok_or_else(|| ServiceError::NotFound(format!("user {n2}")))?;
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.detail = Some(json!({"user": n2, "before": UserView::from(&before), "after": UserView::from(&after),
                "pending_request": pending, "requested_roles": pending.and(roles.as_deref().map(role_names))}));
            w.audit(&rec)?;
            Ok((after, pending))
        })
        .await?;
    Ok(Changed { user: UserView::from(&user), pending_request: pending })
}

/// The outcome of a password reset.
#[derive(Debug, Serialize)]
pub struct Reset {
    /// The account.
    pub name: String,
    /// The one-time password (shown once), unless a second admin must
    /// approve first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
    /// The first login must change it.
    pub must_change_password: bool,
    /// The request a second admin must approve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_request: Option<i64>,
}

/// Sets a new one-time password in a job (sessions ended).
fn apply_reset(w: &mut WriteCtx<'_>, name: &str, hashed: &str) -> Result<(), StoreError> {
    accounts::set_password(w.conn, name, hashed, true)?;
    accounts::revoke_token(w.conn, Some(name), None, w.now)?;
    Ok(())
}

/// Gives an account a new one-time password. For an account with a
/// clinical role, a second admin approves first (and receives it).
pub async fn reset_password(svc: &Services, actor: &Actor, name: &str) -> Result<Reset, ServiceError> {
    const ACTION: &str = "password-reset";
    let target = match user_of(svc, name).await {
        Ok(u) => u,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let op = Operation::UserPasswordReset {
        target: target.kind,
        target_clinical: target.roles.iter().any(|r| r.is_clinical()),
    };
    let facts = Facts { target_is_self: name == actor.name(), ..Facts::default() };
    let d = svc.gate(actor, ACTION, op, facts, "resetting passwords").await?;
    let (a2, n2) = (actor.clone(), name.to_owned());
    if d.has(Obligation::SecondAdminApproval) {
        let id = svc
            .change(actor, ACTION, move |w| {
                let id =
                    accounts::insert_request(w.conn, RequestKind::PasswordReset, &n2, &[], None, a2.name(), w.now)?;
                let mut rec = a2.decided(ACTION, 202, &d, w.now);
                rec.detail = Some(json!({"user": n2, "pending_request": id}));
                w.audit(&rec)?;
                Ok(id)
            })
            .await?;
        return Ok(Reset {
            name: name.to_owned(),
            one_time_password: None,
            must_change_password: true,
            pending_request: Some(id),
        });
    }
    let pw = accounts::random_password()?;
    let hashed = hash(pw.clone()).await?;
    svc.change(actor, ACTION, move |w| {
        apply_reset(w, &n2, &hashed)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"user": n2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(Reset {
        name: name.to_owned(),
        one_time_password: Some(pw.as_str().to_owned()),
        must_change_password: true,
        pending_request: None,
    })
}

/// A second factor, enrolled.
#[derive(Debug, Serialize)]
pub struct TotpEnrolled {
    /// The secret (base32; shown once).
    pub secret: String,
    /// The `otpauth://` URI for authenticator apps.
    pub otpauth_uri: String,
}

/// Enrols a second factor: one's own, or (admins) another account's.
pub async fn enroll_totp(svc: &Services, actor: &Actor, name: &str) -> Result<TotpEnrolled, ServiceError> {
    const ACTION: &str = "totp-enroll";
    let op = if name == actor.name() {
        Operation::OwnTotpEnroll
    } else {
        match user_of(svc, name).await {
            Ok(u) => Operation::UserTotpChange { target: u.kind },
            Err(e) => return Err(svc.refused(actor, ACTION, e).await),
        }
    };
    let d = svc.gate(actor, ACTION, op, Facts::default(), "enrolling a second factor").await?;
    let secret = Zeroizing::new(accounts::random_bytes::<20>()?.to_vec());
    let (s2, a2, n2) = (secret.clone(), actor.clone(), name.to_owned());
    svc.change(actor, ACTION, move |w| {
        accounts::set_totp(w.conn, &n2, Some(&s2))?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"user": n2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    let b32 = accounts::base32(&secret);
    let issuer = crate::records::enc(&svc.cfg.institution.name);
    Ok(TotpEnrolled {
        otpauth_uri: format!(
            "otpauth://totp/{issuer}:{name}?secret={b32}&issuer={issuer}&algorithm=SHA1&digits=6&period=30"
        ),
        secret: b32,
    })
}

/// Removes another account's second factor (admins).
pub async fn remove_totp(svc: &Services, actor: &Actor, name: &str) -> Result<(), ServiceError> {
    const ACTION: &str = "totp-remove";
    let target = match user_of(svc, name).await {
        Ok(u) => u,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let d = svc
        .gate(
            actor,
            ACTION,
            Operation::UserTotpChange { target: target.kind },
            Facts::default(),
            "removing a second factor",
        )
        .await?;
    let (a2, n2) = (actor.clone(), name.to_owned());
    svc.change(actor, ACTION, move |w| {
        accounts::set_totp(w.conn, &n2, None)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"user": n2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}

// ---- account changes a second admin approves ---------------------------------------------

/// The account requests, newest first (admins).
pub async fn list_requests(
    svc: &Services,
    actor: &Actor,
    pending_only: bool,
) -> Result<Vec<AccountRequest>, ServiceError> {
    svc.read_gate(actor, "account-request-list", Operation::AccountRequestRead, Facts::default(), "account requests")
        .await?;
    Ok(svc.store.read(move |c| accounts::requests(c, pending_only, 500)).await?)
}

/// A decided request.
#[derive(Debug, Serialize)]
pub struct RequestDecided {
    /// The request now.
    pub request: AccountRequest,
    /// For an approved password reset: the one-time password (shown once,
    /// to the approving admin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_time_password: Option<String>,
}

/// Approves or rejects an account request. Never the admin who asked,
/// never for the approver's own account; the change is decided again
/// against the account as it is now.
pub async fn decide_request(
    svc: &Services,
    actor: &Actor,
    id: i64,
    approve: bool,
) -> Result<RequestDecided, ServiceError> {
    const ACTION: &str = "account-request-decide";
    let req = match svc.store.read(move |c| accounts::request(c, id)).await? {
        Some(r) => r,
        None => return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("account request {id}"))).await),
    };
    let facts =
        Facts { own: req.requested_by == actor.name(), target_is_self: req.user == actor.name(), ..Facts::default() };
    let d = svc.gate(actor, ACTION, Operation::AccountRequestDecide, facts, "deciding account requests").await?;
    // The change itself, decided against the account as it is now (the
    // approver's own grant of it is the second person's).
    let target = user_of(svc, &req.user).await?;
    if approve {
        let check = match req.kind {
            RequestKind::RoleGrant => Operation::UserRolesChange {
                from: RoleSet::of(&target.roles),
                to: RoleSet::of(&req.roles),
                target: target.kind,
            },
            RequestKind::PasswordReset => Operation::UserPasswordReset {
                target: target.kind,
                target_clinical: target.roles.iter().any(|r| r.is_clinical()),
            },
        };
        if let Err(e) = authz::require(actor, &check, Facts::default(), "the requested change") {
            return Err(svc.refused(actor, ACTION, e).await);
        }
    }
    let pw = if approve && req.kind == RequestKind::PasswordReset { Some(accounts::random_password()?) } else { None };
    let hashed = match &pw {
        Some(p) => Some(hash(p.clone()).await?),
        None => None,
    };
    let a2 = actor.clone();
    let request = svc
        .change(actor, ACTION, move |w| {
            if !accounts::decide_request(w.conn, id, approve, a2.name(), w.now)? {
                return Err(ServiceError::Conflict(format!("account request {id} is no longer pending")));
            }
            if approve {
                match req.kind {
                    RequestKind::RoleGrant => accounts::set_roles(w.conn, &req.user, &req.roles)?,
                    RequestKind::PasswordReset => {
                        if let Some(h) = &hashed {
                            apply_reset(w, &req.user, h)?;
                        }
                    }
                }
            }
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.detail = Some(json!({"request": id, "kind": req.kind, "user": req.user, "approved": approve,
                "roles": role_names(&req.roles), "requested_by": req.requested_by}));
            w.audit(&rec)?;
            accounts::request(w.conn, id)?.ok_or_else(|| ServiceError::internal("request vanished"))
        })
        .await?;
    Ok(RequestDecided { request, one_time_password: pw.map(|p| p.as_str().to_owned()) })
}

// ---- tokens --------------------------------------------------------------------------------

/// A token to issue.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// For whom: oneself (default), or (admins) a service account.
    #[serde(default)]
    pub user: Option<String>,
    /// A label.
    #[serde(default)]
    pub label: Option<String>,
    /// Lifetime in hours.
    #[serde(default)]
    pub ttl_hours: Option<i64>,
}

/// An issued token.
#[derive(Debug, Serialize)]
pub struct IssuedToken {
    /// The secret (shown once).
    pub token: String,
    /// Its id.
    pub id: String,
    /// When it expires.
    pub expires_at: String,
}

/// Issues an API token: to oneself, or (admins) to a service account;
/// never to another person.
pub async fn issue_token(svc: &Services, actor: &Actor, req: TokenRequest) -> Result<IssuedToken, ServiceError> {
    const ACTION: &str = "token-issue";
    let user = req.user.clone().unwrap_or_else(|| actor.name().to_owned());
    let holder = match user_of(svc, &user).await {
        Ok(u) => u,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let pre = (|| {
        let ttl = req.ttl_hours.unwrap_or(svc.cfg.auth.api_token_ttl_hours);
        if !(1..=24 * 366).contains(&ttl) {
            return Err(ServiceError::invalid("ttl_hours", "between 1 hour and 366 days"));
        }
        if req.label.as_ref().is_some_and(|l| l.chars().count() > 200) {
            return Err(ServiceError::invalid("label", "at most 200 characters"));
        }
        let facts = Facts { target_is_self: user == actor.name(), ..Facts::default() };
        let d = authz::require(actor, &Operation::TokenIssue { holder: holder.kind }, facts, "issuing tokens")?;
        Ok((ttl, d))
    })();
    let (ttl, d) = match pre {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let secret = accounts::new_token_secret()?;
    let (s2, a2, label) = (secret.clone(), actor.clone(), req.label);
    let issuer = (user != actor.name()).then(|| actor.name().to_owned());
    let (id, expires) = svc
        .change(actor, ACTION, move |w| {
            let expires = w.now.plus_secs(ttl * 3600);
            let id = accounts::insert_token(
                w.conn,
                &NewToken {
                    secret: &s2,
                    user: &user,
                    kind: TokenKind::Api,
                    label: label.as_deref(),
                    expires,
                    declared: None,
                    issued_by: issuer.as_deref(),
                    app: None,
                },
                w.now,
            )?;
            let mut rec = a2.decided(ACTION, 201, &d, w.now);
            rec.detail = Some(json!({"user": user, "token": id, "expires": expires.to_rfc3339(), "label": label, "issued_by": issuer}));
            w.audit(&rec)?;
            Ok((id, expires))
        })
        .await?;
    Ok(IssuedToken { token: secret.as_str().to_owned(), id, expires_at: expires.to_rfc3339() })
}

/// Tokens: one's own, or (admins) anyone's.
pub async fn list_tokens(
    svc: &Services,
    actor: &Actor,
    user: Option<String>,
) -> Result<Vec<TokenListing>, ServiceError> {
    let own = user.as_deref().is_none_or(|u| u == actor.name());
    let op = if own { Operation::OwnSession } else { Operation::TokenManage };
    svc.read_gate(actor, "token-list", op, Facts::default(), "listing other users' tokens").await?;
    let who = if own { Some(actor.name().to_owned()) } else { user };
    Ok(svc.store.read(move |c| accounts::list_tokens(c, who.as_deref())).await?)
}

/// Revokes a token: one's own, or (admins) anyone's.
pub async fn revoke_token(svc: &Services, actor: &Actor, id: &str) -> Result<usize, ServiceError> {
    const ACTION: &str = "token-revoke";
    let mine = svc.store.read({
        let n = actor.name().to_owned();
        move |c| accounts::list_tokens(c, Some(&n))
    });
    let own = mine.await?.iter().any(|t| t.id == id);
    let op = if own { Operation::OwnSession } else { Operation::TokenManage };
    let d = svc.gate(actor, ACTION, op, Facts::default(), "revoking other users' tokens").await?;
    let (a2, id2) = (actor.clone(), id.to_owned());
    let n = svc
        .change(actor, ACTION, move |w| {
            let only = if own { Some(a2.name().to_owned()) } else { None };
            let n = accounts::revoke_token(w.conn, only.as_deref(), Some(&id2), w.now)?;
            let mut rec = a2.decided(ACTION, if n > 0 { 200 } else { 404 }, &d, w.now);
            rec.detail = Some(json!({"token": id2}));
            w.audit(&rec)?;
            Ok(n)
        })
        .await?;
    if n == 0 {
        return Err(ServiceError::NotFound(format!("no live token {id} you may revoke")));
    }
    Ok(n)
}

// ---- care assignments ----------------------------------------------------------------------

/// A care assignment to make.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CareRequest {
    /// The patient (`Patient/<id>` or the id).
    pub patient: String,
    /// A person...
    #[serde(default)]
    pub user: Option<String>,
    /// ...or a department.
    #[serde(default)]
    pub department: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Assigns a person or a department to a patient's care: admins, clerks,
/// or a physician who cares for the patient.
pub async fn assign_care(svc: &Services, actor: &Actor, req: CareRequest) -> Result<i64, ServiceError> {
    const ACTION: &str = "care-assign";
    let pre = (|| {
        let patient = PatientId::parse(req.patient.strip_prefix("Patient/").unwrap_or(&req.patient))
            .map_err(|e| ServiceError::invalid("patient", e.to_string()))?;
        if let Some(u) = &req.user {
            UserId::parse(u).map_err(|e| ServiceError::invalid("user", e.to_string()))?;
        }
        if req.user.is_some() == req.department.is_some() {
            return Err(ServiceError::invalid("", "give exactly one of user or department"));
        }
        Ok(patient)
    })();
    let patient = match pre {
        Ok(p) => p,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let a2 = actor.clone();
    svc.change(actor, ACTION, move |w| {
        let facts = authz::patient_facts(w.conn, &a2, patient.as_str(), w.now)?;
        let d = authz::require(&a2, &Operation::CareAssign, facts, "assigning care")?;
        if let Some(u) = &req.user {
            if accounts::get_user(w.conn, u)?.is_none() {
                return Err(ServiceError::unprocessable("user", format!("user {u} does not exist")));
            }
        }
        match mamori_store::records::current(w.conn, "Patient", patient.as_str())? {
            Some(p) if !p.deleted => {}
            _ => return Err(ServiceError::unprocessable("patient", format!("Patient/{patient} does not exist"))),
        }
        let id = accounts::assign_care(
            w.conn,
            patient.as_str(),
            req.user.as_deref(),
            req.department.as_deref(),
            req.reason.as_deref(),
            a2.name(),
            w.now,
        )?;
        let mut rec = a2.decided(ACTION, 201, &d, w.now);
        rec.patients = vec![patient.as_str().to_owned()];
        rec.detail =
            Some(json!({"assignment": id, "user": req.user, "department": req.department, "reason": req.reason}));
        w.audit(&rec)?;
        Ok(id)
    })
    .await
}

/// Care assignments: one's own, or (admins, clerks) everyone's; audited
/// with the patients they name.
pub async fn list_care(
    svc: &Services,
    actor: &Actor,
    patient: Option<String>,
    user: Option<String>,
) -> Result<Vec<CareAssignment>, ServiceError> {
    const ACTION: &str = "care-list";
    let all = authz::decide(actor, &Operation::CareReadAll, Facts::default());
    let d = if all.permit {
        all
    } else {
        svc.gate(actor, ACTION, Operation::OwnSession, Facts::default(), "care assignments").await?
    };
    let who = if d.basis == mamori_core::policy::Basis::Own { Some(actor.name().to_owned()) } else { user };
    let list = svc.store.read(move |c| accounts::list_care(c, patient.as_deref(), who.as_deref())).await?;
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    crate::actor::set_patients(&mut rec, list.iter().map(|a| a.patient.clone()).collect());
    rec.detail = Some(json!({"count": list.len()}));
    svc.audit(vec![rec]).await?;
    Ok(list)
}

/// Ends a care assignment (admins, clerks).
pub async fn end_care(svc: &Services, actor: &Actor, id: i64) -> Result<CareAssignment, ServiceError> {
    const ACTION: &str = "care-end";
    let d = svc.gate(actor, ACTION, Operation::CareEnd, Facts::default(), "ending care assignments").await?;
    let a2 = actor.clone();
    svc.change(actor, ACTION, move |w| {
        let a = accounts::end_care(w.conn, id, w.now)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.patients = vec![a.patient.clone()];
        rec.detail = Some(json!({"assignment": id}));
        w.audit(&rec)?;
        Ok(a)
    })
    .await
}
