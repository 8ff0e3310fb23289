//! Third-party apps: SMART App Launch 2.0 on OAuth 2.0 (authorization
//! code with PKCE S256 only, standalone and EHR launch, refresh tokens with
//! rotation, introspection, revocation, OpenID Connect ID tokens).
//!
//! An app's access token is an API token of the user who authorized it,
//! with the app and the scopes the user granted. Every use of it is
//! decided by [`mamori_core::policy::authorize`] as the user, narrowed by
//! those scopes; it never does more than the user may. Every grant
//! (consent, token, refresh) is audited; a replayed code or a reused
//! refresh token revokes everything its authorization issued.
//! docs/smart.md has the operator's view.

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Action, Facts, Operation, ScopeRequest, SubjectKind};
use mamori_core::time::Timestamp;
use mamori_store::accounts::{self, AppToken, NewToken, TokenKind};
use mamori_store::oauth::{self, Client, CodeUse, Grant, NewClient, NewCode, RefreshUse};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::sign::Signer as OsslSigner;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor, RequestCtx, TokenRef};
use crate::authz;
use crate::error::ServiceError;
use crate::services::Services;

/// How long an authorization code works.
const CODE_SECS: i64 = 60;
/// How long an EHR launch context waits for the app.
const LAUNCH_SECS: i64 = 300;

fn secret(prefix: &str) -> Result<String, ServiceError> {
    let b = accounts::random_bytes::<32>()?;
    Ok(format!("{prefix}{}", B64URL.encode(b)))
}

/// The FHIR base URL apps name as `aud` and `iss`.
pub fn fhir_base(svc: &Services) -> String {
    format!("{}/fhir", svc.base_url.trim_end_matches('/'))
}

// ---- registration ---------------------------------------------------------------------------

/// An app to register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewApp {
    /// Its id (letters, digits, `.`, `_`, `-`; 3 to 64); generated if
    /// not given.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Its name, as users see it on the consent screen.
    pub name: String,
    /// The redirect URIs it may use (https, or http on loopback for
    /// native apps).
    pub redirect_uris: Vec<String>,
    /// Where an EHR launch sends the browser.
    #[serde(default)]
    pub launch_url: Option<String>,
    /// A confidential app (a server) gets a secret; a public one (a
    /// browser or native app) relies on PKCE alone.
    #[serde(default)]
    pub confidential: bool,
    /// The most a user may grant it (a backend client: the `system/`
    /// scopes it may ask for).
    pub scope: String,
    /// A backend client (SMART Backend Services): its public keys, a JWK
    /// set of RS384 or ES384 keys. It has no redirect URIs and no secret.
    #[serde(default)]
    pub jwks: Option<Value>,
    /// A backend client: the service account it acts as.
    #[serde(default)]
    pub service_account: Option<String>,
}

/// A registered app.
#[derive(Debug, Serialize)]
pub struct Registered {
    /// Its id.
    pub client_id: String,
    /// Its secret (confidential apps; shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// The most a user may grant it.
    pub scope: String,
}

/// Checks a redirect or launch URL: absolute https, or http on loopback
/// (RFC 8252 native apps); no fragment, no credentials.
fn check_url(field: &str, u: &str) -> Result<(), ServiceError> {
    let bad = |why: &str| ServiceError::invalid(field, format!("'{}': {why}", u.chars().take(100).collect::<String>()));
    // Visible ASCII only: the URL goes into a Location header as is
    // (an international domain name is given in its xn-- form).
    if u.len() > 2000 || !u.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(bad("too long, or contains spaces, control or non-ASCII characters (percent-encode them)"));
    }
    let rest = if let Some(r) = u.strip_prefix("https://") {
        r
    } else if let Some(r) = u.strip_prefix("http://") {
        let host = r.split(['/', '?']).next().unwrap_or("");
        let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            return Err(bad("must be https (http only on 127.0.0.1, [::1] or localhost)"));
        }
        r
    } else {
        return Err(bad("must be an absolute https URL"));
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("needs a host, and no user name or password"));
    }
    if u.contains('#') {
        return Err(bad("must not contain a fragment"));
    }
    Ok(())
}

/// Registers an app (administrators).
pub async fn register(svc: &Services, actor: &Actor, req: NewApp) -> Result<Registered, ServiceError> {
    const ACTION: &str = "app-register";
    let pre = (|| {
        let d = authz::require(actor, &Operation::AppManage, Facts::default(), "registering apps")?;
        let id = match &req.client_id {
            Some(id) => {
                let ok = (3..=64).contains(&id.len())
                    && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(ServiceError::invalid("client_id", "3 to 64 letters, digits, '.', '_' or '-'"));
                }
                id.clone()
            }
            None => format!("app-{}", mamori_audit::merkle::to_hex(&accounts::random_bytes::<8>()?)),
        };
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(ServiceError::invalid("name", "1 to 200 characters"));
        }
        let scope = ScopeRequest::parse(&req.scope);
        if !scope.refused.is_empty() {
            return Err(ServiceError::invalid(
                "scope",
                format!("not scopes this server grants: {} (docs/smart.md lists them)", scope.refused.join(" ")),
            ));
        }
        let backend = req.jwks.is_some() || req.service_account.is_some();
        if backend {
            // A backend client: keys and a service account, nothing of a
            // user-facing app.
            let jwks =
                req.jwks.as_ref().ok_or_else(|| ServiceError::invalid("jwks", "a backend client needs its JWK set"))?;
            crate::jose::parse_jwks(jwks).map_err(|e| ServiceError::invalid("jwks", e))?;
            if req.service_account.is_none() {
                return Err(ServiceError::invalid("service_account", "a backend client acts as a service account"));
            }
            if !req.redirect_uris.is_empty() || req.launch_url.is_some() || req.confidential {
                return Err(ServiceError::invalid(
                    "redirect_uris",
                    "a backend client has no redirect URIs, launch URL or secret: it signs its requests",
                ));
            }
            if !scope.only_system_scopes() {
                return Err(ServiceError::invalid(
                    "scope",
                    "a backend client takes system/ scopes only, such as system/*.rs",
                ));
            }
        } else {
            if req.redirect_uris.is_empty() || req.redirect_uris.len() > 10 {
                return Err(ServiceError::invalid("redirect_uris", "1 to 10 redirect URIs"));
            }
            for u in &req.redirect_uris {
                check_url("redirect_uris", u)?;
            }
            if let Some(l) = &req.launch_url {
                check_url("launch_url", l)?;
            }
            if scope.has_system_scope() {
                return Err(ServiceError::invalid(
                    "scope",
                    "system/ scopes are for backend clients (registered with jwks and service_account)",
                ));
            }
            if !scope.has_resource_scope() {
                return Err(ServiceError::invalid("scope", "at least one resource scope, such as patient/*.rs"));
            }
        }
        Ok((d, id, name.to_owned(), scope.text()))
    })();
    let (d, id, name, scope) = match pre {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    // The service account a backend client acts as: an enabled service
    // account (never a person's).
    if let Some(sa) = &req.service_account {
        let sa2 = sa.clone();
        let user = svc.store.read(move |c| accounts::get_user(c, &sa2)).await?;
        let why = match user {
            None => Some(format!("no account {sa}")),
            Some(u) if u.kind != SubjectKind::Service => Some(format!("{sa} is not a service account")),
            Some(u) if u.disabled => Some(format!("{sa} is disabled")),
            Some(_) => None,
        };
        if let Some(why) = why {
            return Err(svc.refused(actor, ACTION, ServiceError::invalid("service_account", why)).await);
        }
    }
    let client_secret = if req.confidential { Some(secret("mmcs_")?) } else { None };
    let (a2, s2, sc) = (actor.clone(), client_secret.clone(), scope.clone());
    let (uris, launch) = (req.redirect_uris, req.launch_url);
    let (jwks, service) = (req.jwks, req.service_account);
    let id2 = id.clone();
    svc.change(actor, ACTION, move |w| {
        let n = NewClient {
            client_id: &id2,
            name: &name,
            redirect_uris: &uris,
            launch_url: launch.as_deref(),
            secret: s2.as_deref(),
            scope: &sc,
            jwks: jwks.as_ref(),
            service_user: service.as_deref(),
        };
        if !oauth::insert_client(w.conn, &n, a2.name(), w.now)? {
            return Err(ServiceError::Conflict(format!("an app with client_id {id2} is registered already")));
        }
        let mut rec = a2.decided(ACTION, 201, &d, w.now);
        rec.detail = Some(json!({"client_id": id2, "name": name, "redirect_uris": uris, "launch_url": launch,
            "confidential": s2.is_some(), "scope": sc, "service_account": service,
            "keys": jwks.as_ref().and_then(|j| j["keys"].as_array()).map(|k| k.iter().map(|k| k["kid"].clone()).collect::<Vec<_>>())}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(Registered { client_id: id, client_secret, scope })
}

/// The registered apps (anyone who may use apps: to launch one).
pub async fn list(svc: &Services, actor: &Actor) -> Result<Vec<Client>, ServiceError> {
    svc.read_gate(actor, "app-list", Operation::AppUse, Facts::default(), "the list of apps").await?;
    Ok(svc.store.read(oauth::list_clients).await?)
}

/// Disables an app and revokes every token it holds (administrators).
pub async fn disable(svc: &Services, actor: &Actor, client_id: &str) -> Result<usize, ServiceError> {
    const ACTION: &str = "app-disable";
    let d = svc.gate(actor, ACTION, Operation::AppManage, Facts::default(), "disabling apps").await?;
    let (a2, id) = (actor.clone(), client_id.to_owned());
    svc.change(actor, ACTION, move |w| {
        let Some(n) = oauth::disable_client(w.conn, &id, w.now)? else {
            return Err(ServiceError::NotFound(format!("no enabled app {id}")));
        };
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"client_id": id, "revoked": n}));
        w.audit(&rec)?;
        Ok(n)
    })
    .await
}

/// Replaces a backend client's public keys (administrators), e.g. to
/// rotate them: assertions signed with a key no longer listed are
/// refused from now on; tokens issued before run to their expiry
/// (disable the client to end them). Returns the new keys' ids.
pub async fn replace_keys(
    svc: &Services,
    actor: &Actor,
    client_id: &str,
    jwks: Value,
) -> Result<Vec<Value>, ServiceError> {
    const ACTION: &str = "app-keys";
    let d = svc.gate(actor, ACTION, Operation::AppManage, Facts::default(), "replacing an app's keys").await?;
    if let Err(e) = crate::jose::parse_jwks(&jwks) {
        return Err(svc.refused(actor, ACTION, ServiceError::invalid("jwks", e)).await);
    }
    let kids: Vec<Value> =
        jwks["keys"].as_array().map(|k| k.iter().map(|k| k["kid"].clone()).collect()).unwrap_or_default();
    let (a2, id, k2) = (actor.clone(), client_id.to_owned(), kids.clone());
    svc.change(actor, ACTION, move |w| {
        let before = oauth::get_client(w.conn, &id)?
            .and_then(|c| c.jwks)
            .and_then(|j| j["keys"].as_array().map(|k| k.iter().map(|k| k["kid"].clone()).collect::<Vec<_>>()));
        if !oauth::set_jwks(w.conn, &id, &jwks)? {
            return Err(ServiceError::NotFound(format!("no enabled backend client {id}")));
        }
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.detail = Some(json!({"client_id": id, "keys_before": before, "keys": k2}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    Ok(kids)
}

// ---- EHR launch -----------------------------------------------------------------------------

/// Launches an app from a patient's chart: a one-time launch context for
/// the app, and the URL the browser opens (the app's launch URL with
/// `iss` and `launch`). Decided as a read of the patient's demographics:
/// what the app then reads is decided again, read by read.
pub async fn launch(svc: &Services, actor: &Actor, client_id: &str, patient: &str) -> Result<String, ServiceError> {
    const ACTION: &str = "app-launch";
    let (a2, cid, input) = (actor.clone(), client_id.to_owned(), patient.to_owned());
    let now = svc.now();
    let looked = svc
        .store
        .read(move |c| {
            let client = oauth::get_client(c, &cid)?;
            let p = match crate::records::resolve_patient(c, &input) {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let d = authz::decide_record(c, &a2, Action::Read, ResourceType::PATIENT, std::slice::from_ref(&p), now)?;
            Ok::<_, mamori_store::StoreError>(Ok((client, p, d)))
        })
        .await?;
    let (client, p, d) = match looked {
        Ok(x) => x,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let use_ok = authz::decide(actor, &Operation::AppUse, Facts::default());
    let refusal = if !use_ok.permit {
        Some(ServiceError::denied("launching apps", &use_ok))
    } else if !d.permit {
        Some(ServiceError::denied(&format!("Patient/{p}"), &d))
    } else {
        match &client {
            Some(c) if c.disabled.is_none() && c.launch_url.is_some() => None,
            Some(c) if c.disabled.is_none() => {
                Some(ServiceError::Conflict(format!("the app {} has no launch URL; it starts on its own", c.name)))
            }
            _ => Some(ServiceError::NotFound(format!("no enabled app {client_id}"))),
        }
    };
    if let Some(e) = refusal {
        let mut rec = crate::commit::failure_record(actor, ACTION, &e, now);
        set_patients(&mut rec, vec![p]);
        svc.audit(vec![rec]).await?;
        return Err(e);
    }
    let Some(client) = client else { return Err(ServiceError::internal("app vanished")) };
    let id = secret("mml_")?;
    let (a2, id2, p2, cid) = (actor.clone(), id.clone(), p.clone(), client.client_id.clone());
    svc.change(actor, ACTION, move |w| {
        oauth::insert_launch(w.conn, &id2, &cid, a2.name(), &p2, w.now.plus_secs(LAUNCH_SECS), w.now)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        set_patients(&mut rec, vec![p2.clone()]);
        rec.detail = Some(json!({"client_id": cid}));
        w.audit(&rec)?;
        Ok(())
    })
    .await?;
    let url = client.launch_url.unwrap_or_default();
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}iss={}&launch={}", crate::records::enc(&fhir_base(svc)), crate::records::enc(&id)))
}

// ---- authorization (the consent screen) -----------------------------------------------------

/// Why an authorization request stops.
#[derive(Debug)]
pub enum AuthorizeError {
    /// Shown to the user, not sent to the app: the app or its redirect URI
    /// cannot be trusted (RFC 6749 §4.1.2.1), or the user may not do this.
    Page(ServiceError),
    /// Sent back to the app: the URL to redirect to, with `error`.
    Redirect(String),
}

/// A checked authorization request, for the consent screen.
#[derive(Debug, Clone)]
pub struct Consent {
    /// The app.
    pub client: Client,
    /// What it asked for, split into what would be granted and what not.
    pub scope: ScopeRequest,
    /// The patient of an EHR launch.
    pub launch_patient: Option<String>,
    /// A `patient/` scope or `launch/patient` asks the user to choose one.
    pub needs_patient: bool,
    /// The request's parameters (the consent form sends them back).
    pub params: Vec<(String, String)>,
    redirect_uri: String,
    state: String,
    challenge: String,
    nonce: Option<String>,
    launch: Option<String>,
}

fn param<'a>(p: &'a [(String, String)], k: &str) -> Option<&'a str> {
    p.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str())
}

fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let q: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", crate::records::enc(v))).collect();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.join("&"))
}

/// Checks an authorization request from `actor`'s browser.
pub async fn begin(svc: &Services, actor: &Actor, params: Vec<(String, String)>) -> Result<Consent, AuthorizeError> {
    let p = &params;
    let client_id = param(p, "client_id").unwrap_or("").to_owned();
    let cid = client_id.clone();
    let client =
        svc.store.read(move |c| oauth::get_client(c, &cid)).await.map_err(|e| AuthorizeError::Page(e.into()))?;
    let Some(client) = client.filter(|c| c.disabled.is_none()) else {
        return Err(AuthorizeError::Page(ServiceError::invalid(
            "client_id",
            format!("no enabled app is registered as '{}'", client_id.chars().take(64).collect::<String>()),
        )));
    };
    let redirect_uri = param(p, "redirect_uri").unwrap_or("").to_owned();
    if !client.redirect_uris.contains(&redirect_uri) {
        return Err(AuthorizeError::Page(ServiceError::invalid(
            "redirect_uri",
            format!("not a redirect URI registered for {}: nothing is sent to it", client.name),
        )));
    }
    let state = param(p, "state").unwrap_or("").to_owned();
    let fail = |error: &str, why: &str| {
        let mut q = vec![("error", error), ("error_description", why)];
        if !state.is_empty() {
            q.push(("state", state.as_str()));
        }
        AuthorizeError::Redirect(with_query(&redirect_uri, &q))
    };
    if actor.app.is_some() || actor.user.kind != SubjectKind::Staff {
        return Err(AuthorizeError::Page(ServiceError::forbidden(
            "apps are authorized by a person logged in with their own staff account",
        )));
    }
    if param(p, "response_type") != Some("code") {
        return Err(fail("unsupported_response_type", "only response_type=code"));
    }
    if state.is_empty() || state.len() > 500 {
        return Err(fail("invalid_request", "state is required (at most 500 characters)"));
    }
    let challenge = param(p, "code_challenge").unwrap_or("").to_owned();
    if param(p, "code_challenge_method") != Some("S256") {
        return Err(fail("invalid_request", "PKCE is required: code_challenge_method=S256"));
    }
    if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)) {
        return Err(fail("invalid_request", "code_challenge must be the base64url SHA-256 of the code verifier"));
    }
    let aud = param(p, "aud").unwrap_or("").trim_end_matches('/');
    if aud != fhir_base(svc) {
        return Err(fail("invalid_request", "aud must be this server's FHIR base URL"));
    }
    let allowed = ScopeRequest::parse(&client.scope);
    let scope = ScopeRequest::parse(param(p, "scope").unwrap_or("")).within(&allowed);
    if !scope.has_resource_scope() {
        return Err(fail("invalid_scope", "no resource scope this app may be granted was asked for"));
    }
    let nonce = param(p, "nonce").filter(|n| !n.is_empty()).map(str::to_owned);
    if nonce.as_ref().is_some_and(|n| n.len() > 500) {
        return Err(fail("invalid_request", "nonce: at most 500 characters"));
    }
    let launch = param(p, "launch").filter(|l| !l.is_empty()).map(str::to_owned);
    let launch_patient = match &launch {
        Some(l) => {
            let (l2, c2, u2, now) = (l.clone(), client.client_id.clone(), actor.name().to_owned(), svc.now());
            let found = svc
                .store
                .read(move |c| oauth::peek_launch(c, &l2, &c2, &u2, now))
                .await
                .map_err(|e| AuthorizeError::Page(e.into()))?;
            match found {
                Some(p) => Some(p),
                None => {
                    return Err(fail("invalid_request", "the launch has expired or was used; launch the app again"))
                }
            }
        }
        None => None,
    };
    let needs_patient = scope.needs_patient() || scope.has("launch/patient");
    Ok(Consent { client, scope, launch_patient, needs_patient, params, redirect_uri, state, challenge, nonce, launch })
}

/// The user's answer on the consent screen.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Allow (or deny).
    pub allow: bool,
    /// The patient chosen (id or medical record number) when the request
    /// needs one and no EHR launch gave it.
    pub patient: Option<String>,
}

/// Acts on the user's answer: an authorization code for the app, or
/// `access_denied`. Answers the URL the browser is sent to.
pub async fn answer(
    svc: &Services,
    actor: &Actor,
    params: Vec<(String, String)>,
    ans: Answer,
) -> Result<String, AuthorizeError> {
    const ACTION: &str = "app-authorize";
    let consent = begin(svc, actor, params).await?;
    let now = svc.now();
    let page = |e: ServiceError| AuthorizeError::Page(e);
    let client_id = consent.client.client_id.clone();
    if !ans.allow {
        let mut rec = actor.record(ACTION, 403, now);
        rec.detail = Some(json!({"client_id": client_id, "reason": "the user declined"}));
        svc.audit(vec![rec]).await.map_err(page)?;
        return Err(AuthorizeError::Redirect(with_query(
            &consent.redirect_uri,
            &[("error", "access_denied"), ("error_description", "the user declined"), ("state", &consent.state)],
        )));
    }
    // The patient: the launch's, else the one chosen.
    let chosen = match (&consent.launch_patient, consent.needs_patient) {
        (Some(p), _) => Some(p.clone()),
        (None, true) => {
            let input = ans.patient.clone().unwrap_or_default();
            if input.trim().is_empty() {
                return Err(page(ServiceError::invalid("patient", "choose the patient the app is for")));
            }
            let r = svc
                .store
                .read(move |c| Ok(crate::records::resolve_patient(c, &input)))
                .await
                .map_err(|e| page(e.into()))?;
            Some(r.map_err(AuthorizeError::Page)?)
        }
        (None, false) => None,
    };
    let use_ok = authz::decide(actor, &Operation::AppUse, Facts::default());
    let d = match &chosen {
        Some(p) => {
            let (a2, p2) = (actor.clone(), p.clone());
            svc.store
                .read(move |c| {
                    authz::decide_record(c, &a2, Action::Read, ResourceType::PATIENT, std::slice::from_ref(&p2), now)
                })
                .await
                .map_err(|e| page(e.into()))?
        }
        None => use_ok.clone(),
    };
    for (dd, what) in
        [(&use_ok, "using apps".to_owned()), (&d, format!("Patient/{}", chosen.clone().unwrap_or_default()))]
    {
        if !dd.permit {
            let e = ServiceError::denied(&what, dd);
            let mut rec = crate::commit::failure_record(actor, ACTION, &e, now);
            set_patients(&mut rec, chosen.clone().into_iter().collect());
            rec.detail = Some(json!({"client_id": client_id}));
            svc.audit(vec![rec]).await.map_err(page)?;
            return Err(page(e));
        }
    }
    let mut scope = consent.scope.clone();
    if scope.has("fhirUser") && fhir_user(svc, actor.name()).await.map_err(page)?.is_none() {
        // No FHIR resource stands for this account: the claim cannot be
        // made, and the token's scope says so.
        scope.granted.retain(|s| s != "fhirUser");
        scope.refused.push("fhirUser".into());
    }
    let code = secret("mmc_").map_err(page)?;
    let family = secret("fam_").map_err(page)?;
    let grant = Grant {
        client_id: client_id.clone(),
        user: actor.name().to_owned(),
        scope: scope.text(),
        patient: chosen.clone(),
        family,
    };
    let (a2, c2, g2) = (actor.clone(), code.clone(), grant.clone());
    let (uri, challenge, nonce, launch) =
        (consent.redirect_uri.clone(), consent.challenge.clone(), consent.nonce.clone(), consent.launch.clone());
    let refused = scope.refused.clone();
    svc.change(actor, ACTION, move |w| {
        if let Some(l) = &launch {
            if oauth::take_launch(w.conn, l, &g2.client_id, &g2.user, w.now)?.is_none() {
                return Err(ServiceError::Conflict("the launch has expired or was used; launch the app again".into()));
            }
        }
        let n = NewCode {
            code: &c2,
            grant: &g2,
            redirect_uri: &uri,
            challenge: &challenge,
            nonce: nonce.as_deref(),
            expires: w.now.plus_secs(CODE_SECS),
        };
        oauth::insert_code(w.conn, &n, w.now)?;
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        set_patients(&mut rec, g2.patient.clone().into_iter().collect());
        rec.detail = Some(json!({"client_id": g2.client_id, "scope": g2.scope, "not_granted": refused,
            "launch": if launch.is_some() { "ehr" } else { "standalone" }}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
    .map_err(page)?;
    Ok(with_query(&consent.redirect_uri, &[("code", &code), ("state", &consent.state)]))
}

/// The FHIR resource that stands for an account: a Practitioner (or
/// PractitionerRole, Person, RelatedPerson, Patient) with the identifier
/// `urn:mamori:user|<name>`.
async fn fhir_user(svc: &Services, user: &str) -> Result<Option<String>, ServiceError> {
    let u = user.to_owned();
    Ok(svc
        .store
        .read(move |c| {
            for t in ["Practitioner", "PractitionerRole", "Person", "RelatedPerson", "Patient"] {
                let Ok(rt) = ResourceType::parse(t) else { continue };
                let pairs = vec![("identifier".to_owned(), format!("urn:mamori:user|{u}"))];
                let Ok((q, _)) = mamori_core::fhir::search::parse_query(rt, &pairs, false) else { continue };
                let page = mamori_store::search::search(c, &q, &mamori_store::search::Restriction::None)?;
                if let Some(v) = page.entries.first() {
                    return Ok(Some(format!("{t}/{}", v.id)));
                }
            }
            Ok(None)
        })
        .await?)
}

// ---- the token endpoint ---------------------------------------------------------------------

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// 400, or 401 for a client that failed to authenticate.
    pub status: u16,
    /// The error code.
    pub error: &'static str,
    /// What was wrong.
    pub description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status: if error == "invalid_client" { 401 } else { 400 }, error, description: description.into() }
    }
    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

impl From<ServiceError> for OAuthError {
    fn from(e: ServiceError) -> Self {
        tracing::error!(error = %e, "the token endpoint failed");
        OAuthError {
            status: 500,
            error: "server_error",
            description: "the server could not complete the request".into(),
        }
    }
}

impl From<mamori_store::StoreError> for OAuthError {
    fn from(e: mamori_store::StoreError) -> Self {
        OAuthError::from(ServiceError::from(e))
    }
}

/// Authenticates the app calling the token, introspection or revocation
/// endpoint: HTTP Basic or `client_secret` in the form for confidential
/// apps; public apps name their `client_id`.
async fn client_of(
    svc: &Services,
    basic: Option<(String, String)>,
    form: &[(String, String)],
) -> Result<Client, OAuthError> {
    let (id, secret) = match basic {
        Some((i, s)) => (i, Some(s)),
        None => (param(form, "client_id").unwrap_or("").to_owned(), param(form, "client_secret").map(str::to_owned)),
    };
    let id2 = id.clone();
    let client = svc.store.read(move |c| oauth::get_client(c, &id2)).await?;
    let Some(client) = client.filter(|c| c.disabled.is_none()) else {
        return Err(OAuthError::new("invalid_client", "unknown or disabled client"));
    };
    if client.jwks.is_some() {
        return Err(OAuthError::new(
            "invalid_client",
            "a backend client authenticates with a signed assertion (grant_type=client_credentials)",
        ));
    }
    match (client.confidential, secret) {
        (true, Some(s)) if client.secret_matches(&s) => Ok(client),
        (true, _) => Err(OAuthError::new("invalid_client", "client authentication failed")),
        (false, None) => Ok(client),
        (false, Some(_)) => Err(OAuthError::new("invalid_client", "a public client has no secret")),
    }
}

fn pkce_ok(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !well_formed {
        return false;
    }
    let d = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    accounts::ct_eq(B64URL.encode(d.as_ref()).as_bytes(), challenge.as_bytes())
}

/// What the token endpoint issued.
struct Issued {
    access: String,
    refresh: Option<String>,
    grant: Grant,
    nonce: Option<String>,
    expires_in: i64,
}

/// The outcome of a token job: committed either way (a replayed code's
/// revocation must stay done).
type Job = Result<Issued, OAuthError>;

fn refresh_ttl(svc: &Services, scope: &str) -> Option<i64> {
    let s = ScopeRequest::parse(scope);
    if s.has("offline_access") {
        Some(svc.cfg.apps.offline_refresh_days as i64 * 86_400)
    } else if s.has("online_access") {
        Some(svc.cfg.apps.online_refresh_hours as i64 * 3600)
    } else {
        None
    }
}

/// Issues an access token (and, asked for, a rotated refresh token) for
/// `grant`, auditing the grant as its user. `Err`: the user may no longer
/// use apps.
fn issue(
    w: &mut mamori_store::writer::WriteCtx<'_>,
    svc_cfg: (i64, Option<i64>),
    grant: &Grant,
    refresh_until: Option<Timestamp>,
    ctx: &RequestCtx,
    grant_type: &str,
) -> Result<Result<(String, Option<String>), OAuthError>, ServiceError> {
    let (access_secs, refresh_secs) = svc_cfg;
    let Some(user) = accounts::get_user(w.conn, &grant.user)? else {
        return Ok(Err(OAuthError::new("invalid_grant", "the account no longer exists")));
    };
    let issuer = format!("app:{}", grant.client_id);
    let app = AppToken {
        client_id: grant.client_id.clone(),
        scope: grant.scope.clone(),
        patient: grant.patient.clone(),
        family: grant.family.clone(),
    };
    let mut actor =
        Actor::account(user.clone(), TokenRef { id: String::new(), issuer: Some(issuer.clone()) }, None, ctx.clone());
    // The user, as the user: the app's own scopes would refuse this.
    let d = authz::decide(&actor, &Operation::AppUse, Facts::default());
    if user.disabled || !d.permit {
        let mut rec = actor.decided("app-token", 400, &d, w.now);
        rec.detail = Some(json!({"client_id": grant.client_id, "grant_type": grant_type,
            "reason": if user.disabled { "account disabled" } else { "the account may not use apps" }}));
        w.audit(&rec)?;
        return Ok(Err(OAuthError::new("invalid_grant", "the account may not use apps")));
    }
    let access = secret("mmr_")?;
    let expires = w.now.plus_secs(access_secs);
    let label = format!("app {}", grant.client_id);
    let id = accounts::insert_token(
        w.conn,
        &NewToken {
            secret: &access,
            user: &grant.user,
            kind: TokenKind::Api,
            label: Some(&label),
            expires,
            declared: None,
            issued_by: Some(&issuer),
            app: Some(&app),
        },
        w.now,
    )?;
    let refresh = match (refresh_until, refresh_secs) {
        (Some(until), _) => Some(until),
        (None, Some(s)) => Some(w.now.plus_secs(s)),
        (None, None) => None,
    };
    let refresh = match refresh {
        Some(until) if until > w.now => {
            let r = secret("mmf_")?;
            oauth::insert_refresh(w.conn, &r, grant, until, w.now)?;
            Some((r, until))
        }
        _ => None,
    };
    actor.token = Some(TokenRef { id: id.clone(), issuer: Some(issuer) });
    let mut rec = actor.decided("app-token", 200, &d, w.now);
    set_patients(&mut rec, grant.patient.clone().into_iter().collect());
    rec.detail = Some(json!({"client_id": grant.client_id, "grant_type": grant_type, "scope": grant.scope,
        "token": id, "expires": expires.to_rfc3339(),
        "refresh_expires": refresh.as_ref().map(|(_, u)| u.to_rfc3339())}));
    w.audit(&rec)?;
    Ok(Ok((access, refresh.map(|(r, _)| r))))
}

/// A refused grant, audited in the same transaction as what it revoked.
fn refused_grant(
    w: &mut mamori_store::writer::WriteCtx<'_>,
    ctx: &RequestCtx,
    client: &str,
    grant_type: &str,
    reason: &str,
    revoked: usize,
) -> Result<(), ServiceError> {
    let mut rec = ctx.record(&format!("app:{client}"), "app", "app-token", 400, w.now);
    rec.detail = Some(json!({"client_id": client, "grant_type": grant_type, "reason": reason, "revoked": revoked}));
    w.audit(&rec)?;
    Ok(())
}

/// `POST /oauth/token`: `authorization_code` (with the PKCE verifier) or
/// `refresh_token` (rotated: the old one is spent; presenting a spent one
/// revokes the whole authorization).
pub async fn token(
    svc: &Services,
    ctx: RequestCtx,
    basic: Option<(String, String)>,
    form: Vec<(String, String)>,
) -> Result<Value, OAuthError> {
    for (k, _) in &form {
        if form.iter().filter(|(a, _)| a == k).count() > 1 {
            return Err(OAuthError::new("invalid_request", format!("{k} given more than once")));
        }
    }
    let grant_type = param(&form, "grant_type").unwrap_or("").to_owned();
    if grant_type == "client_credentials" {
        return backend_token(svc, ctx, basic, form).await;
    }
    if !matches!(grant_type.as_str(), "authorization_code" | "refresh_token") {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            "authorization_code, refresh_token or client_credentials",
        ));
    }
    let client = match client_of(svc, basic, &form).await {
        Ok(c) => c,
        Err(e) => {
            let mut rec = ctx.record("anonymous", "anonymous", "app-token", e.status, svc.now());
            rec.detail = Some(json!({"grant_type": grant_type, "reason": e.description}));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let access_secs = svc.cfg.apps.access_token_minutes as i64 * 60;
    let cid = client.client_id.clone();
    let job: Job = if grant_type == "authorization_code" {
        let code = param(&form, "code").unwrap_or("").to_owned();
        let uri = param(&form, "redirect_uri").unwrap_or("").to_owned();
        let verifier = param(&form, "code_verifier").unwrap_or("").to_owned();
        let svc2 = svc.clone();
        let ctx2 = ctx.clone();
        svc.store
            .writer()
            .run(
                move |w| {
                    let gt = "authorization_code";
                    let bad = |w: &mut mamori_store::writer::WriteCtx<'_>, why: &str, revoked: usize| {
                        refused_grant(w, &ctx2, &cid, gt, why, revoked)
                            .map(|_| Err(OAuthError::new("invalid_grant", why.to_owned())))
                    };
                    match oauth::take_code(w.conn, &code, w.now)? {
                        CodeUse::Unknown => bad(w, "unknown authorization code", 0),
                        CodeUse::Expired => bad(w, "the authorization code has expired", 0),
                        CodeUse::Replayed(family) => {
                            // RFC 6749 §4.1.2: a code used twice revokes
                            // what the first use issued.
                            let n = oauth::revoke_family(w.conn, &family, w.now)?;
                            bad(w, "the authorization code was used already; its tokens are revoked", n)
                        }
                        CodeUse::Fresh { grant, redirect_uri, challenge, nonce } => {
                            if grant.client_id != cid {
                                return bad(w, "the code was issued to another client", 0);
                            }
                            if redirect_uri != uri {
                                return bad(w, "redirect_uri differs from the authorization request's", 0);
                            }
                            if !pkce_ok(&verifier, &challenge) {
                                return bad(w, "code_verifier does not match the code_challenge", 0);
                            }
                            let refresh_secs = refresh_ttl(&svc2, &grant.scope);
                            Ok(issue(w, (access_secs, refresh_secs), &grant, None, &ctx2, gt)?.map(
                                |(access, refresh)| Issued { access, refresh, grant, nonce, expires_in: access_secs },
                            ))
                        }
                    }
                },
                |_: &ServiceError, _| Ok(()),
            )
            .await?
    } else {
        let presented = param(&form, "refresh_token").unwrap_or("").to_owned();
        let narrower = param(&form, "scope").map(ScopeRequest::parse);
        let ctx2 = ctx.clone();
        svc.store
            .writer()
            .run(
                move |w| {
                    let gt = "refresh_token";
                    let bad =
                        |w: &mut mamori_store::writer::WriteCtx<'_>, e: &'static str, why: &str, revoked: usize| {
                            refused_grant(w, &ctx2, &cid, gt, why, revoked)
                                .map(|_| Err(OAuthError::new(e, why.to_owned())))
                        };
                    match oauth::take_refresh(w.conn, &presented, w.now)? {
                        RefreshUse::Invalid => bad(w, "invalid_grant", "unknown or expired refresh token", 0),
                        RefreshUse::Reused(family) => {
                            let n = oauth::revoke_family(w.conn, &family, w.now)?;
                            bad(
                                w,
                                "invalid_grant",
                                "the refresh token was used already; the authorization is revoked",
                                n,
                            )
                        }
                        RefreshUse::Fresh(mut grant, until) => {
                            if grant.client_id != cid {
                                return bad(w, "invalid_grant", "the refresh token was issued to another client", 0);
                            }
                            if let Some(n) = narrower {
                                let had = ScopeRequest::parse(&grant.scope);
                                if !n.refused.is_empty() || n.granted.iter().any(|s| !had.has(s)) {
                                    return bad(w, "invalid_scope", "a refresh may only narrow the scopes granted", 0);
                                }
                                grant.scope = n.text();
                            }
                            Ok(issue(w, (access_secs, None), &grant, Some(until), &ctx2, gt)?.map(
                                |(access, refresh)| Issued {
                                    access,
                                    refresh,
                                    grant,
                                    nonce: None,
                                    expires_in: access_secs,
                                },
                            ))
                        }
                    }
                },
                |_: &ServiceError, _| Ok(()),
            )
            .await?
    };
    svc.tokens.invalidate();
    let issued = job?;
    let scope = ScopeRequest::parse(&issued.grant.scope);
    let mut out = json!({
        "access_token": issued.access,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.grant.scope,
        "need_patient_banner": true,
    });
    if let Some(p) = &issued.grant.patient {
        out["patient"] = json!(p);
    }
    if let Some(r) = &issued.refresh {
        out["refresh_token"] = json!(r);
    }
    if scope.has("openid") {
        out["id_token"] = json!(id_token(svc, &issued, &scope).await?);
    }
    Ok(out)
}

/// The assertion type of RFC 7523 client authentication.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest an assertion may live (SMART: five minutes).
const ASSERTION_SECS: i64 = 300;
/// Clock skew allowed on the assertion's times.
const SKEW_SECS: i64 = 60;

/// `client_credentials` with a signed client assertion (SMART Backend
/// Services): the client is the assertion's `iss`, its signature must
/// verify with a key the client registered, `aud` must be this token
/// endpoint, it must expire within five minutes, and its `jti` is
/// accepted once. The token acts as the client's service account,
/// narrowed by the `system/` scopes granted (those asked for that the
/// client may ask for). Every attempt is audited.
async fn backend_token(
    svc: &Services,
    ctx: RequestCtx,
    basic: Option<(String, String)>,
    form: Vec<(String, String)>,
) -> Result<Value, OAuthError> {
    const GT: &str = "client_credentials";
    let now = svc.now();
    let checked = check_assertion(svc, basic.is_some(), &form, now).await;
    let (client, claims) = match checked {
        Ok(x) => x,
        Err((who, e, why)) => {
            let (agent, kind) = match &who {
                Some(c) => (format!("app:{c}"), "app"),
                None => ("anonymous".to_owned(), "anonymous"),
            };
            let mut rec = ctx.record(&agent, kind, "app-token", e.status, now);
            rec.detail = Some(json!({"client_id": who, "grant_type": GT, "reason": why}));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let asked = ScopeRequest::parse(param(&form, "scope").unwrap_or(""));
    let granted = asked.within(&ScopeRequest::parse(&client.scope));
    let cid = client.client_id.clone();
    if granted.granted.is_empty() {
        let mut rec = ctx.record(&format!("app:{cid}"), "app", "app-token", 400, now);
        rec.detail = Some(json!({"client_id": cid, "grant_type": GT, "reason": "no scope asked for is registered",
            "asked": param(&form, "scope")}));
        svc.audit(vec![rec]).await?;
        return Err(OAuthError::new("invalid_scope", "none of the scopes asked for is registered for this client"));
    }
    let service = client.service_user.clone().unwrap_or_default();
    let jti = claims["jti"].as_str().unwrap_or_default().to_owned();
    let exp = Timestamp(claims["exp"].as_i64().unwrap_or(0).saturating_mul(1_000_000));
    let access_secs = svc.cfg.apps.access_token_minutes as i64 * 60;
    let family = secret("fam_")?;
    let grant = Grant { client_id: cid.clone(), user: service, scope: granted.text(), patient: None, family };
    let ctx2 = ctx.clone();
    let job: Job = svc
        .store
        .writer()
        .run(
            move |w| {
                if !oauth::use_jti(w.conn, &cid, &jti, exp, w.now)? {
                    refused_grant(w, &ctx2, &cid, GT, "the assertion's jti was used before (a replay)", 0)?;
                    return Ok(Err(OAuthError::new("invalid_client", "the client assertion was used before")));
                }
                Ok(issue(w, (access_secs, None), &grant, None, &ctx2, GT)?.map(|(access, _)| Issued {
                    access,
                    refresh: None,
                    grant,
                    nonce: None,
                    expires_in: access_secs,
                }))
            },
            |_: &ServiceError, _| Ok(()),
        )
        .await?;
    svc.tokens.invalidate();
    let issued = job?;
    Ok(json!({
        "access_token": issued.access,
        "token_type": "bearer",
        "expires_in": issued.expires_in,
        "scope": issued.grant.scope,
    }))
}

/// The checks of a client assertion before anything is written: the
/// client and the verified claims, or who it claimed to be, the error for
/// the client and the reason for the audit log.
async fn check_assertion(
    svc: &Services,
    basic: bool,
    form: &[(String, String)],
    now: Timestamp,
) -> Result<(Client, Value), (Option<String>, OAuthError, String)> {
    let fail = |who: Option<&str>, why: String| {
        (who.map(str::to_owned), OAuthError::new("invalid_client", "client authentication failed"), why)
    };
    if basic || param(form, "client_secret").is_some() {
        return Err(fail(None, "a backend client authenticates with a signed assertion, not a secret".into()));
    }
    if param(form, "client_assertion_type") != Some(JWT_BEARER) {
        let e = OAuthError::new("invalid_request", format!("client_assertion_type must be {JWT_BEARER}"));
        return Err((None, e, "no jwt-bearer client assertion".into()));
    }
    let jws = param(form, "client_assertion").unwrap_or("");
    // Who it claims to be, to find the keys (verified below).
    let claimed = jws
        .split('.')
        .nth(1)
        .and_then(|p| B64URL.decode(p).ok())
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["iss"].as_str().map(str::to_owned))
        .ok_or_else(|| fail(None, "the assertion names no issuer".into()))?;
    if param(form, "client_id").is_some_and(|c| c != claimed) {
        return Err(fail(Some(&claimed), "client_id differs from the assertion's issuer".into()));
    }
    let c2 = claimed.clone();
    let client = svc.store.read(move |c| oauth::get_client(c, &c2)).await.map_err(|e| {
        tracing::error!(error = %e, "reading a client");
        (Some(claimed.clone()), OAuthError::from(e), "the client could not be read".to_owned())
    })?;
    let Some(client) = client.filter(|c| c.disabled.is_none() && c.jwks.is_some()) else {
        return Err(fail(Some(&claimed), "unknown or disabled backend client".into()));
    };
    let keys = crate::jose::parse_jwks(client.jwks.as_ref().unwrap_or(&Value::Null))
        .map_err(|e| fail(Some(&claimed), format!("the registered keys do not parse: {e}")))?;
    let claims = crate::jose::verify(jws, &keys).map_err(|e| fail(Some(&claimed), e))?;
    let token_url = format!("{}/oauth/token", svc.base_url.trim_end_matches('/'));
    let aud_ok = match &claims["aud"] {
        Value::String(a) => *a == token_url,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(&token_url)),
        _ => false,
    };
    let secs = now.micros() / 1_000_000;
    let why = if claims["sub"].as_str() != Some(&claimed) {
        Some("sub must equal iss (the client_id)".to_owned())
    } else if !aud_ok {
        Some(format!("aud must be the token endpoint {token_url}"))
    } else if !claims["exp"].as_i64().is_some_and(|e| e > secs - SKEW_SECS && e <= secs + ASSERTION_SECS + SKEW_SECS) {
        Some("exp must be a time within the next five minutes".to_owned())
    } else if claims["iat"].as_i64().is_some_and(|i| i > secs + SKEW_SECS)
        || claims["nbf"].as_i64().is_some_and(|n| n > secs + SKEW_SECS)
    {
        Some("iat or nbf is in the future".to_owned())
    } else if !claims["jti"].as_str().is_some_and(|j| (1..=256).contains(&j.len())) {
        Some("jti must be a string of 1 to 256 characters".to_owned())
    } else {
        None
    };
    if let Some(why) = why {
        return Err(fail(Some(&claimed), why));
    }
    Ok((client, claims))
}

async fn id_token(svc: &Services, issued: &Issued, scope: &ScopeRequest) -> Result<String, ServiceError> {
    let signer = signer(svc).await?;
    let now = svc.now().micros() / 1_000_000;
    let mut claims = json!({
        "iss": fhir_base(svc),
        "sub": issued.grant.user,
        "aud": issued.grant.client_id,
        "iat": now,
        "exp": now + issued.expires_in,
    });
    if let Some(n) = &issued.nonce {
        claims["nonce"] = json!(n);
    }
    if scope.has("fhirUser") {
        if let Some(r) = fhir_user(svc, &issued.grant.user).await? {
            claims["fhirUser"] = json!(format!("{}/{r}", fhir_base(svc)));
        }
    }
    if scope.has("profile") {
        let u = issued.grant.user.clone();
        if let Some(user) = svc.store.read(move |c| accounts::get_user(c, &u)).await? {
            claims["name"] = json!(user.display);
        }
    }
    signer.sign(&claims)
}

// ---- introspection and revocation ---------------------------------------------------------

/// `POST /oauth/introspect` (RFC 7662), for confidential apps (resource
/// servers): whether an app's access token is live, and what it grants.
/// Never answers for people's own sessions and API tokens.
pub async fn introspect(
    svc: &Services,
    basic: Option<(String, String)>,
    form: Vec<(String, String)>,
) -> Result<Value, OAuthError> {
    let client = client_of(svc, basic, &form).await?;
    if !client.confidential {
        return Err(OAuthError::new("invalid_client", "introspection is for confidential clients"));
    }
    let t = param(&form, "token").unwrap_or("").to_owned();
    let now = svc.now();
    let info = svc.store.read(move |c| accounts::lookup_token(c, &t, now)).await?;
    let Some(info) = info else { return Ok(json!({"active": false})) };
    let Some(app) = &info.app else { return Ok(json!({"active": false})) };
    let mut out = json!({
        "active": true,
        "scope": app.scope,
        "client_id": app.client_id,
        "username": info.user.name.as_str(),
        "sub": info.user.name.as_str(),
        "token_type": "Bearer",
        "exp": info.expires.micros() / 1_000_000,
        "iss": fhir_base(svc),
    });
    if let Some(p) = &app.patient {
        out["patient"] = json!(p);
    }
    Ok(out)
}

/// `POST /oauth/revoke` (RFC 7009): the app gives up an access token or
/// a refresh token (a refresh token takes its whole authorization with it).
/// Answers 200 whatever the token was.
pub async fn revoke(
    svc: &Services,
    ctx: RequestCtx,
    basic: Option<(String, String)>,
    form: Vec<(String, String)>,
) -> Result<(), OAuthError> {
    let client = client_of(svc, basic, &form).await?;
    let t = param(&form, "token").unwrap_or("").to_owned();
    let cid = client.client_id.clone();
    let now = svc.now();
    let (t2, c2) = (t.clone(), cid.clone());
    let info = svc.store.read(move |c| accounts::lookup_token(c, &t2, now)).await?;
    let family = match info.and_then(|i| i.app).filter(|a| a.client_id == cid) {
        Some(a) => Some(a.family),
        None => svc.store.read(move |c| oauth::refresh_family(c, &t, &c2)).await?,
    };
    if let Some(f) = family {
        let ctx2 = ctx.clone();
        svc.store
            .writer()
            .write(
                move |w| {
                    let n = oauth::revoke_family(w.conn, &f, w.now)?;
                    let mut rec = ctx2.record(&format!("app:{cid}"), "app", "app-revoke", 200, w.now);
                    rec.detail = Some(json!({"client_id": cid, "revoked": n}));
                    w.audit(&rec)?;
                    Ok(())
                },
                |_, _| Ok(()),
            )
            .await?;
        svc.tokens.invalidate();
    }
    Ok(())
}

// ---- discovery ------------------------------------------------------------------------------

/// `/.well-known/smart-configuration`.
pub fn smart_configuration(svc: &Services) -> Value {
    let b = svc.base_url.trim_end_matches('/');
    json!({
        "issuer": fhir_base(svc),
        "jwks_uri": format!("{b}/oauth/jwks"),
        "authorization_endpoint": format!("{b}/oauth/authorize"),
        "token_endpoint": format!("{b}/oauth/token"),
        "introspection_endpoint": format!("{b}/oauth/introspect"),
        "revocation_endpoint": format!("{b}/oauth/revoke"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "code_challenge_methods_supported": ["S256"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile", "launch", "launch/patient", "offline_access", "online_access",
            "patient/*.cruds", "patient/*.rs", "user/*.cruds", "user/*.rs", "patient/*.read", "user/*.read", "system/*.rs",
            "system/*.cruds"],
        "capabilities": ["launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-ehr-patient", "context-standalone-patient", "context-banner", "sso-openid-connect",
            "permission-patient", "permission-user", "permission-offline", "permission-online", "permission-v1", "permission-v2",
            "authorize-post"],
    })
}

/// `/.well-known/openid-configuration` (under the FHIR base).
pub fn openid_configuration(svc: &Services) -> Value {
    let s = smart_configuration(svc);
    json!({
        "issuer": s["issuer"],
        "authorization_endpoint": s["authorization_endpoint"],
        "token_endpoint": s["token_endpoint"],
        "jwks_uri": s["jwks_uri"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser", "name"],
    })
}

/// `/oauth/jwks`: the keys ID tokens are signed with (every server's).
pub async fn jwks(svc: &Services) -> Result<Value, ServiceError> {
    signer(svc).await?;
    let keys = svc.store.read(oauth::keys).await?;
    let keys: Vec<Value> = keys.iter().filter_map(|k| serde_json::from_str(k).ok()).collect();
    Ok(json!({"keys": keys}))
}

// ---- ID-token signing -----------------------------------------------------------------------

/// This server's ID-token key (RSA 2048, `keys/oidc.key.pem`, mode 0600).
pub struct Signer {
    key: PKey<Private>,
    kid: String,
    jwk: Value,
}

/// Where the key lives in the data directory.
pub const OIDC_KEY: &str = "keys/oidc.key.pem";

impl Signer {
    fn load_or_create(dir: &Path) -> Result<Signer, ServiceError> {
        let path = dir.join(OIDC_KEY);
        let key = if path.exists() {
            let pem = crate::keys::read_secret(&path).map_err(|e| ServiceError::internal(e.to_string()))?;
            PKey::private_key_from_pem(&pem).map_err(|e| ServiceError::internal_from("the ID-token key", e))?
        } else {
            let rsa = Rsa::generate(2048).map_err(|e| ServiceError::internal_from("generating the ID-token key", e))?;
            let key = PKey::from_rsa(rsa).map_err(|e| ServiceError::internal_from("the ID-token key", e))?;
            let pem = key.private_key_to_pem_pkcs8().map_err(|e| ServiceError::internal_from("the ID-token key", e))?;
            crate::keys::write_secret(&path, &pem).map_err(|e| ServiceError::internal(e.to_string()))?;
            key
        };
        let rsa = key.rsa().map_err(|e| ServiceError::internal_from("the ID-token key is not RSA", e))?;
        let (n, e) = (B64URL.encode(rsa.n().to_vec()), B64URL.encode(rsa.e().to_vec()));
        let der = key.public_key_to_der().map_err(|e| ServiceError::internal_from("the ID-token key", e))?;
        let kid = mamori_audit::merkle::to_hex(&ring::digest::digest(&ring::digest::SHA256, &der).as_ref()[..8]);
        let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e});
        Ok(Signer { key, kid, jwk })
    }

    /// A compact JWS (RS256) of `claims`.
    pub fn sign(&self, claims: &Value) -> Result<String, ServiceError> {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let mut s = OsslSigner::new(MessageDigest::sha256(), &self.key)
            .map_err(|e| ServiceError::internal_from("signing an ID token", e))?;
        s.update(input.as_bytes()).map_err(|e| ServiceError::internal_from("signing an ID token", e))?;
        let sig = s.sign_to_vec().map_err(|e| ServiceError::internal_from("signing an ID token", e))?;
        Ok(format!("{input}.{}", B64URL.encode(sig)))
    }
}

async fn signer(svc: &Services) -> Result<Arc<Signer>, ServiceError> {
    if let Some(s) = svc.oidc.get() {
        return Ok(s.clone());
    }
    let dir = svc.data_dir.clone();
    let s = tokio::task::spawn_blocking(move || {
        // One process makes the key once, even if two requests ask at once.
        static MAKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _guard = MAKING.lock();
        Signer::load_or_create(&dir)
    })
    .await
    .map_err(|e| ServiceError::internal_from("the ID-token key", e))??;
    let (kid, jwk) = (s.kid.clone(), s.jwk.to_string());
    svc.store.writer().write(move |w| oauth::put_key(w.conn, &kid, &jwk, w.now), |_, _| Ok(())).await?;
    let s = Arc::new(s);
    Ok(svc.oidc.get_or_init(|| s).clone())
}

/// Forgets spent authorization codes, launches and refresh tokens a day
/// after they expired (leader only, hourly).
pub async fn purge(svc: Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            _ = stop.changed() => return,
        }
        let r = svc.store.writer().write(move |w| oauth::purge(w.conn, w.now.plus_secs(-86_400)), |_, _| Ok(())).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "cannot forget spent OAuth codes");
        }
    }
}
