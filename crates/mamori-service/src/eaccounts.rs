//! Sealed emergency accounts (EM-B8, EM-C3a/b/c): provisioned in advance
//! by an admin, their credential shown once on a printable envelope and
//! stored only as a hash. Outside a declared emergency a login is refused
//! and raises a security alert on every channel; during one, the person
//! gives their real name and affiliation and the unsealing is announced
//! everywhere. At return to normal a used account is retired for good and
//! a replacement is provisioned.

use mamori_core::bcp::{AccountEvent, AccountState};
use mamori_core::ids::UserId;
use mamori_core::policy::{Facts, Operation, Role, SubjectKind};
use mamori_store::accounts::{self, NewToken, NewUser, TokenKind};
use mamori_store::emergency::{self, EmergencyAccount};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::actor::{Actor, RequestCtx};
use crate::authz;
use crate::error::ServiceError;
use crate::notify::{self, Audience};
use crate::services::Services;

/// An emergency account as listed.
#[derive(Debug, Clone, Serialize)]
pub struct AccountView {
    /// Its name.
    pub account: String,
    /// Its state.
    pub state: AccountState,
    /// A drill account.
    pub drill: bool,
    /// Its roles.
    pub roles: Vec<String>,
    /// Created.
    pub created: String,
    /// By whom.
    pub created_by: String,
    /// When its envelope was printed.
    pub sealed_at: Option<String>,
    /// When it was first used.
    pub unsealed_at: Option<String>,
    /// The person who used it.
    pub declared_person: Option<String>,
    /// When it was retired.
    pub retired_at: Option<String>,
    /// Its replacement.
    pub replaced_by: Option<String>,
}

impl From<&EmergencyAccount> for AccountView {
    fn from(a: &EmergencyAccount) -> Self {
        AccountView {
            account: a.user.clone(),
            state: a.state,
            drill: a.drill,
            roles: a.roles.clone(),
            created: a.created.to_rfc3339(),
            created_by: a.created_by.clone(),
            sealed_at: a.sealed_at.map(|t| t.to_rfc3339()),
            unsealed_at: a.unsealed_at.map(|t| t.to_rfc3339()),
            declared_person: a.declared.clone(),
            retired_at: a.retired_at.map(|t| t.to_rfc3339()),
            replaced_by: a.replaced_by.clone(),
        }
    }
}

/// The emergency accounts and their states (admins, deciders, auditors).
pub async fn list(svc: &Services, actor: &Actor) -> Result<Vec<AccountView>, ServiceError> {
    const ACTION: &str = "emergency-account-list";
    let facts = svc.store.read({
        let a = actor.clone();
        move |c| authz::plan_facts(c, &a)
    });
    let d = match authz::require(actor, &Operation::EmergencyAccountRead, facts.await?, "emergency accounts") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    svc.audit(vec![actor.decided(ACTION, 200, &d, svc.now())]).await?;
    let v = svc.store.read(emergency::emergency_accounts).await?;
    Ok(v.iter().map(AccountView::from).collect())
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
    let mut rec = RequestCtx::background(mamori_core::mode::Mode::Normal).record(
        "system",
        "system",
        "emergency-account-retired",
        200,
        w.now,
    );
    rec.detail = Some(json!({"account": acc.user, "replacement": new, "why": why, "declared_person": acc.declared}));
    w.audit(&rec)?;
    Ok(new)
}

/// Accounts to provision.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// How many.
    #[serde(default = "one")]
    pub count: u32,
    /// Their (clinical) roles.
    #[serde(default = "physician")]
    pub roles: Vec<String>,
    /// Drill accounts.
    #[serde(default)]
    pub drill: bool,
}

fn one() -> u32 {
    1
}
fn physician() -> Vec<String> {
    vec!["physician".into()]
}

/// Provisioned accounts (each awaiting its envelope).
#[derive(Debug, Serialize)]
pub struct Provisioned {
    /// Their names.
    pub accounts: Vec<String>,
    /// What to do next.
    pub next: &'static str,
}

/// Provisions emergency accounts (admins).
pub async fn provision(svc: &Services, actor: &Actor, req: Provision) -> Result<Provisioned, ServiceError> {
    const ACTION: &str = "emergency-account-provision";
    let pre = (|| {
        let d = authz::require(
            actor,
            &Operation::EmergencyAccountManage,
            Facts::default(),
            "provisioning emergency accounts",
        )?;
        if req.count == 0 || req.count > 50 {
            return Err(ServiceError::invalid("count", "between 1 and 50"));
        }
        let mut roles = Vec::new();
        for r in &req.roles {
            let role = Role::parse(r).ok_or_else(|| ServiceError::invalid("roles", format!("unknown role '{r}'")))?;
            if !role.is_clinical() {
                return Err(ServiceError::invalid(
                    "roles",
                    "emergency accounts carry clinical roles only (physician, nurse, pharmacist)",
                ));
            }
            roles.push(role);
        }
        if roles.is_empty() {
            return Err(ServiceError::invalid("roles", "give at least one clinical role"));
        }
        Ok((d, roles))
    })();
    let (d, roles) = match pre {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let a2 = actor.clone();
    let accounts = svc
        .change(actor, ACTION, move |w| {
            let mut names = Vec::new();
            for _ in 0..req.count {
                names.push(create_account(w, &roles, req.drill, a2.name())?);
            }
            let mut rec = a2.decided(ACTION, 201, &d, w.now);
            rec.detail = Some(json!({"accounts": names, "drill": req.drill, "roles": roles.iter().map(|r| r.as_str()).collect::<Vec<_>>()}));
            w.audit(&rec)?;
            Ok(names)
        })
        .await?;
    Ok(Provisioned { accounts, next: "print each envelope: POST /api/v1/emergency-accounts/{account}/envelope" })
}

/// An envelope to print (the credential, shown once).
#[derive(Debug, Serialize)]
pub struct Envelope {
    /// The account.
    pub account: String,
    /// Its password.
    pub password: String,
    /// A drill account.
    pub drill: bool,
    /// Its roles.
    pub roles: Vec<String>,
    /// The institution.
    pub institution: String,
    /// When it was printed.
    pub printed_at: String,
    /// What the envelope says.
    pub instructions: Value,
}

/// Generates the credential and returns the envelope, once (admins).
pub async fn envelope(svc: &Services, actor: &Actor, name: &str) -> Result<Envelope, ServiceError> {
    const ACTION: &str = "emergency-account-envelope";
    let d = match authz::require(actor, &Operation::EmergencyAccountManage, Facts::default(), "printing envelopes") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let pw = accounts::random_password()?;
    let p2 = pw.clone();
    let hash = tokio::task::spawn_blocking(move || accounts::hash_password(&p2))
        .await
        .map_err(|e| ServiceError::internal_from("password hashing", e))??;
    let (a2, n2) = (actor.clone(), name.to_owned());
    let acc = svc
        .change(actor, ACTION, move |w| {
            let acc = emergency::emergency_account(w.conn, &n2)?
                .ok_or_else(|| ServiceError::NotFound(format!("emergency account {n2}")))?;
            acc.state.apply(AccountEvent::EnvelopePrinted).map_err(|e| {
                ServiceError::Precondition(format!(
                    "{e}: the envelope of {n2} was already printed; to re-issue, retire it"
                ))
            })?;
            accounts::set_password(w.conn, &n2, &hash, false)?;
            emergency::set_account_state(w.conn, &n2, AccountState::Sealed, w.now, None)?;
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.detail = Some(json!({"account": n2}));
            w.audit(&rec)?;
            Ok(acc)
        })
        .await?;
    Ok(Envelope {
        account: name.to_owned(),
        password: pw.as_str().to_owned(),
        drill: acc.drill,
        roles: acc.roles,
        institution: svc.cfg.institution.name.clone(),
        printed_at: svc.now().to_rfc3339(),
        instructions: json!({
            "ja": "非常用アカウント（封緘）。非常時宣言中のみ使用可。使用時は氏名と所属の入力が必要です。平常時の使用は禁止され、試行は全職員に通知されます。開封したら本部へ報告してください。",
            "en": "Sealed emergency account. Usable only while an emergency is declared; you will be asked for your real name and affiliation. Any attempt in normal times is refused and announced to all staff. Report to the emergency HQ when you open this envelope."
        }),
    })
}

/// A login with an emergency account.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmergencyLogin {
    /// The account on the envelope.
    pub account: String,
    /// The password on the envelope.
    pub password: Zeroizing<String>,
    /// The person's real name.
    pub real_name: String,
    /// Their affiliation.
    pub affiliation: String,
}

/// A session of an emergency account.
#[derive(Debug, Serialize)]
pub struct EmergencySession {
    /// The bearer token (shown once).
    pub token: String,
    /// When it expires.
    pub expires_at: String,
    /// The account.
    pub user: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The person using it.
    pub declared: String,
}

/// Logs in with an emergency account: only during a declared emergency
/// (a drill account during a drill), with the person's real name; any
/// other attempt is refused and, for a sealed or retired account,
/// announced to everyone.
pub async fn emergency_login(
    svc: &Services,
    ctx: RequestCtx,
    req: EmergencyLogin,
) -> Result<EmergencySession, ServiceError> {
    let st = svc;
    crate::throttle::refuse_if_waiting(svc, ctx.addr.as_deref())?;
    let mode = st.mode.get();
    let now = st.now();
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
    // Unknown accounts cost the same hash as known ones.
    let pw_ok = tokio::task::spawn_blocking(move || accounts::verify_password_or_dummy(&pw, hash.as_deref()))
        .await
        .unwrap_or(false);
    let declared = format!("{} ({})", req.real_name.trim(), req.affiliation.trim());
    const SEALED: &str =
        "emergency accounts are sealed: no emergency is declared. This attempt has been announced to all staff.";
    // The answer never depends on the password alone: outside an emergency
    // every attempt is "sealed", right password or wrong, known account or
    // not (a different answer for the right password would confirm it).
    let refusal: Option<(&str, String)> = match &found {
        None if mode.is_normal() => Some(("unknown-account", SEALED.into())),
        None => Some(("unknown-account", "invalid emergency account or password".into())),
        Some(((acc, _), user)) => {
            // A retired credential is refused loudly, whatever the password.
            if user.disabled || acc.state == AccountState::Retired {
                Some(("retired", "this emergency account has been retired and can never be used again. This attempt has been announced.".into()))
            } else if mode.is_normal() {
                Some((if pw_ok { "sealed" } else { "sealed-bad-password" }, SEALED.into()))
            } else if user.locked_until.is_some_and(|t| t > now) {
                Some(("locked", "invalid emergency account or password".into()))
            } else if !pw_ok {
                Some(("bad-password", "invalid emergency account or password".into()))
            } else if acc.state == AccountState::AwaitingEnvelope {
                Some(("no-envelope", "invalid emergency account or password".into()))
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
        let loud = found.is_some() && matches!(reason, "sealed" | "sealed-bad-password" | "wrong-kind" | "retired");
        let ann = st
            .store
            .writer()
            .write(
                move |w| {
                    // A wrong password counts towards the lock, in an
                    // emergency or not (the lock is checked before it).
                    if found.is_some() && matches!(reason, "bad-password" | "sealed-bad-password") {
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
        notify::publish(st, ann);
        if matches!(reason, "unknown-account" | "bad-password" | "sealed-bad-password" | "locked" | "no-envelope") {
            crate::throttle::login_failed(st, ctx.addr.clone(), "emergency-login").await;
        }
        return Err(
            if matches!(reason, "unknown-account" | "bad-password" | "no-envelope" | "locked") && !mode.is_normal() {
                ServiceError::Unauthenticated(msg)
            } else {
                ServiceError::forbidden(msg)
            },
        );
    }
    let Some(((acc, _), user)) = found else { return Err(ServiceError::internal("account vanished")) };
    let roles: Vec<String> = user.roles.iter().map(|r| r.as_str().to_owned()).collect();
    let user_name = user.name.as_str().to_owned();
    let secret = accounts::new_token_secret()?;
    let s2 = secret.clone();
    let st2 = st.clone();
    let ttl = st.cfg.auth.login_ttl_minutes * 60;
    let d2 = declared.clone();
    let (expires, ann) = st
        .store
        .writer()
        .run(
            move |w| {
                let first = acc.state == AccountState::Sealed;
                let to = acc.state.apply(AccountEvent::Unseal).map_err(ServiceError::Precondition)?;
                emergency::set_account_state(w.conn, &acc.user, to, w.now, Some(&d2))?;
                let expires = w.now.plus_secs(ttl);
                let id = accounts::insert_token(
                    w.conn,
                    &NewToken {
                        secret: &s2,
                        user: &acc.user,
                        kind: TokenKind::Session,
                        label: Some("emergency login"),
                        expires,
                        declared: Some(&d2),
                        issued_by: None,
                        app: None,
                    },
                    w.now,
                )?;
                let mut rec = ctx.record(&acc.user, "emergency", "emergency-login", 200, w.now);
                rec.agent.declared = Some(d2.clone());
                rec.agent.roles = user.roles.iter().map(|r| r.as_str().to_owned()).collect();
                rec.agent.token = Some(id.clone());
                rec.detail = Some(json!({"token": id, "first_use": first}));
                w.audit(&rec)?;
                let a = notify::announce(
                    w,
                    &st2,
                    if first { "emergency-account-unsealed" } else { "emergency-account-login" },
                    acc.drill,
                    "warning",
                    &format!(
                        "非常用アカウント {} が使用されています：{d2} / Emergency account {} in use by {d2}",
                        acc.user, acc.user
                    ),
                    json!({"account": acc.user, "declared": d2, "first_use": first}),
                    Audience::Everyone,
                )?;
                Ok::<_, ServiceError>((expires, a))
            },
            |_, _| Ok(()),
        )
        .await?;
    notify::publish(st, [ann]);
    Ok(EmergencySession {
        token: secret.as_str().to_owned(),
        expires_at: expires.to_rfc3339(),
        user: user_name,
        roles,
        declared,
    })
}
