//! Third-party apps (SMART App Launch): registered apps, authorization
//! codes, refresh tokens, EHR launch contexts and the ID-token keys.
//! Secrets (codes, refresh tokens, launch ids, client secrets) are stored
//! as their SHA-256 only, like the API tokens.

use mamori_core::time::Timestamp;
use serde::Serialize;

use crate::accounts::token_hash;
use crate::p;
use crate::sql::{Conn, Row};
use crate::Result;

/// A registered app.
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Its id.
    pub client_id: String,
    /// Its name, as users see it on the consent screen.
    pub name: String,
    /// The redirect URIs it may use (compared exactly).
    pub redirect_uris: Vec<String>,
    /// Where an EHR launch sends the browser.
    pub launch_url: Option<String>,
    /// Whether it authenticates with a secret (a confidential app).
    pub confidential: bool,
    /// The most a user may grant it (space-separated scopes).
    pub scope: String,
    /// The administrator who registered it.
    pub registered_by: String,
    /// When.
    pub created: Timestamp,
    /// When it was disabled.
    pub disabled: Option<Timestamp>,
    /// A backend client's public keys (a JWK set, as registered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// The service account a backend client acts as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_user: Option<String>,
    #[serde(skip)]
    secret_hash: Option<Vec<u8>>,
}

impl Client {
    /// Whether `secret` is this app's secret (constant time).
    pub fn secret_matches(&self, secret: &str) -> bool {
        self.secret_hash.as_deref().is_some_and(|h| crate::accounts::ct_eq(h, &token_hash(secret)))
    }
}

/// An app to register.
pub struct NewClient<'a> {
    /// Its id.
    pub client_id: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its redirect URIs.
    pub redirect_uris: &'a [String],
    /// Its launch URL.
    pub launch_url: Option<&'a str>,
    /// Its secret, for a confidential app.
    pub secret: Option<&'a str>,
    /// The most a user may grant it.
    pub scope: &'a str,
    /// A backend client's JWK set.
    pub jwks: Option<&'a serde_json::Value>,
    /// The service account a backend client acts as.
    pub service_user: Option<&'a str>,
}

const CLIENT_COLS: &str =
    "client_id, name, redirect_uris, launch_url, secret_hash, scope, registered_by, created, disabled, jwks, service_user";

fn client_row(r: &Row) -> Result<Client> {
    Ok(Client {
        client_id: r.text(0)?,
        name: r.text(1)?,
        redirect_uris: serde_json::from_str(&r.text(2)?).unwrap_or_default(),
        launch_url: r.opt_text(3)?,
        confidential: r.opt_blob(4)?.is_some(),
        secret_hash: r.opt_blob(4)?,
        scope: r.text(5)?,
        registered_by: r.text(6)?,
        created: Timestamp(r.i64(7)?),
        disabled: r.opt_i64(8)?.map(Timestamp),
        jwks: r.opt_text(9)?.and_then(|j| serde_json::from_str(&j).ok()),
        service_user: r.opt_text(10)?,
    })
}

/// Registers an app; `false` if the id is taken.
pub fn insert_client(c: &mut dyn Conn, n: &NewClient<'_>, by: &str, now: Timestamp) -> Result<bool> {
    if get_client(c, n.client_id)?.is_some() {
        return Ok(false);
    }
    let uris = serde_json::to_string(n.redirect_uris).unwrap_or_else(|_| "[]".into());
    let hash = n.secret.map(token_hash);
    let jwks = n.jwks.map(serde_json::Value::to_string);
    c.exec(
        &format!("INSERT INTO oauth_clients ({CLIENT_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10)"),
        p![n.client_id, n.name, uris, n.launch_url, hash, n.scope, by, now.micros(), jwks, n.service_user],
    )?;
    Ok(true)
}

/// Replaces a live backend client's JWK set; `false` if there is no
/// such client (unknown, disabled, or not a backend client).
pub fn set_jwks(c: &mut dyn Conn, id: &str, jwks: &serde_json::Value) -> Result<bool> {
    let n = c.exec(
        "UPDATE oauth_clients SET jwks = $2 WHERE client_id = $1 AND disabled IS NULL AND jwks IS NOT NULL",
        p![id, jwks.to_string()],
    )?;
    Ok(n == 1)
}

/// Records the use of a client assertion's `jti` until `expires`;
/// `false` if that client used it before (a replay). Expired ones are
/// forgotten first.
pub fn use_jti(c: &mut dyn Conn, client: &str, jti: &str, expires: Timestamp, now: Timestamp) -> Result<bool> {
    c.exec("DELETE FROM oauth_jti WHERE expires < $1", p![now.micros()])?;
    let n = c.exec(
        "INSERT INTO oauth_jti (client_id, jti, expires) VALUES ($1, $2, $3) ON CONFLICT (client_id, jti) DO NOTHING",
        p![client, jti, expires.micros()],
    )?;
    Ok(n == 1)
}

/// An app by id.
pub fn get_client(c: &mut dyn Conn, id: &str) -> Result<Option<Client>> {
    c.query_one(&format!("SELECT {CLIENT_COLS} FROM oauth_clients WHERE client_id = $1"), p![id])?
        .map(|r| client_row(&r))
        .transpose()
}

/// Every app, by name.
pub fn list_clients(c: &mut dyn Conn) -> Result<Vec<Client>> {
    c.query(&format!("SELECT {CLIENT_COLS} FROM oauth_clients ORDER BY name, client_id"), p![])?
        .iter()
        .map(client_row)
        .collect()
}

/// Disables an app and revokes everything issued to it; returns how many
/// tokens (access and refresh) were revoked, or `None` if no live app has
/// that id.
pub fn disable_client(c: &mut dyn Conn, id: &str, now: Timestamp) -> Result<Option<usize>> {
    let n = c.exec(
        "UPDATE oauth_clients SET disabled = $2 WHERE client_id = $1 AND disabled IS NULL",
        p![id, now.micros()],
    )?;
    if n == 0 {
        return Ok(None);
    }
    let a = c.exec("UPDATE tokens SET revoked = $2 WHERE client_id = $1 AND revoked IS NULL", p![id, now.micros()])?;
    let r =
        c.exec("UPDATE oauth_refresh SET revoked = $2 WHERE client_id = $1 AND revoked IS NULL", p![id, now.micros()])?;
    Ok(Some(a + r))
}

/// What an authorization code or refresh token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The app.
    pub client_id: String,
    /// The user.
    pub user: String,
    /// The scopes granted.
    pub scope: String,
    /// The patient the app was launched for.
    pub patient: Option<String>,
    /// The authorization it belongs to.
    pub family: String,
}

/// An authorization code to store.
pub struct NewCode<'a> {
    /// The code (only its hash is stored).
    pub code: &'a str,
    /// What it grants.
    pub grant: &'a Grant,
    /// The redirect URI it was issued for.
    pub redirect_uri: &'a str,
    /// The PKCE S256 challenge.
    pub challenge: &'a str,
    /// The OpenID Connect nonce.
    pub nonce: Option<&'a str>,
    /// When it stops working.
    pub expires: Timestamp,
}

/// Stores an authorization code.
pub fn insert_code(c: &mut dyn Conn, n: &NewCode<'_>, now: Timestamp) -> Result<()> {
    let g = n.grant;
    c.exec(
        "INSERT INTO oauth_codes (hash, client_id, user_name, redirect_uri, scope, patient, challenge, nonce, created, expires, used, family) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, NULL, $11)",
        p![
            token_hash(n.code),
            g.client_id.as_str(),
            g.user.as_str(),
            n.redirect_uri,
            g.scope.as_str(),
            g.patient.as_deref(),
            n.challenge,
            n.nonce,
            now.micros(),
            n.expires.micros(),
            g.family.as_str()
        ],
    )?;
    Ok(())
}

/// A presented authorization code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeUse {
    /// Live and unused (now used): what it grants, its redirect URI, PKCE
    /// challenge and nonce.
    Fresh {
        /// What it grants.
        grant: Grant,
        /// The redirect URI it was issued for.
        redirect_uri: String,
        /// The PKCE challenge.
        challenge: String,
        /// The nonce.
        nonce: Option<String>,
    },
    /// Used before: its family (to revoke what the first use issued).
    Replayed(String),
    /// Expired.
    Expired,
    /// Unknown.
    Unknown,
}

/// Takes a code: marks it used and answers what it grants.
pub fn take_code(c: &mut dyn Conn, code: &str, now: Timestamp) -> Result<CodeUse> {
    let h = token_hash(code);
    let Some(r) = c.query_one(
        "SELECT client_id, user_name, redirect_uri, scope, patient, challenge, nonce, expires, used, family FROM oauth_codes WHERE hash = $1",
        p![h.as_slice()],
    )?
    else {
        return Ok(CodeUse::Unknown);
    };
    let family = r.text(9)?;
    if r.opt_i64(8)?.is_some() {
        return Ok(CodeUse::Replayed(family));
    }
    c.exec("UPDATE oauth_codes SET used = $2 WHERE hash = $1", p![h.as_slice(), now.micros()])?;
    if r.i64(7)? <= now.micros() {
        return Ok(CodeUse::Expired);
    }
    Ok(CodeUse::Fresh {
        grant: Grant { client_id: r.text(0)?, user: r.text(1)?, scope: r.text(3)?, patient: r.opt_text(4)?, family },
        redirect_uri: r.text(2)?,
        challenge: r.text(5)?,
        nonce: r.opt_text(6)?,
    })
}

/// Stores a refresh token.
pub fn insert_refresh(c: &mut dyn Conn, token: &str, g: &Grant, expires: Timestamp, now: Timestamp) -> Result<()> {
    c.exec(
        "INSERT INTO oauth_refresh (hash, family, client_id, user_name, scope, patient, created, expires, used, revoked) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, NULL)",
        p![
            token_hash(token),
            g.family.as_str(),
            g.client_id.as_str(),
            g.user.as_str(),
            g.scope.as_str(),
            g.patient.as_deref(),
            now.micros(),
            expires.micros()
        ],
    )?;
    Ok(())
}

/// A presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Live (now used up): what it grants and when the family ends.
    Fresh(Grant, Timestamp),
    /// Used or revoked before: its family.
    Reused(String),
    /// Expired or unknown.
    Invalid,
}

/// Takes a refresh token: marks it used and answers what it grants.
pub fn take_refresh(c: &mut dyn Conn, token: &str, now: Timestamp) -> Result<RefreshUse> {
    let h = token_hash(token);
    let Some(r) = c.query_one(
        "SELECT family, client_id, user_name, scope, patient, expires, used, revoked FROM oauth_refresh WHERE hash = $1",
        p![h.as_slice()],
    )?
    else {
        return Ok(RefreshUse::Invalid);
    };
    let family = r.text(0)?;
    if r.opt_i64(6)?.is_some() || r.opt_i64(7)?.is_some() {
        return Ok(RefreshUse::Reused(family));
    }
    if r.i64(5)? <= now.micros() {
        return Ok(RefreshUse::Invalid);
    }
    c.exec("UPDATE oauth_refresh SET used = $2 WHERE hash = $1", p![h.as_slice(), now.micros()])?;
    Ok(RefreshUse::Fresh(
        Grant { client_id: r.text(1)?, user: r.text(2)?, scope: r.text(3)?, patient: r.opt_text(4)?, family },
        Timestamp(r.i64(5)?),
    ))
}

/// Revokes every token of an authorization (its access and refresh
/// tokens); returns how many were live.
pub fn revoke_family(c: &mut dyn Conn, family: &str, now: Timestamp) -> Result<usize> {
    let a = c.exec("UPDATE tokens SET revoked = $2 WHERE family = $1 AND revoked IS NULL", p![family, now.micros()])?;
    let r = c.exec(
        "UPDATE oauth_refresh SET revoked = $2 WHERE family = $1 AND revoked IS NULL",
        p![family, now.micros()],
    )?;
    Ok(a + r)
}

/// The family of a live refresh token of `client`, if it is one.
pub fn refresh_family(c: &mut dyn Conn, token: &str, client: &str) -> Result<Option<String>> {
    Ok(c.query_one(
        "SELECT family FROM oauth_refresh WHERE hash = $1 AND client_id = $2 AND revoked IS NULL",
        p![token_hash(token), client],
    )?
    .map(|r| r.text(0))
    .transpose()?)
}

/// Stores an EHR launch context.
pub fn insert_launch(
    c: &mut dyn Conn,
    launch: &str,
    client: &str,
    user: &str,
    patient: &str,
    expires: Timestamp,
    now: Timestamp,
) -> Result<()> {
    c.exec(
        "INSERT INTO oauth_launches (hash, client_id, user_name, patient, created, expires, used) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        p![token_hash(launch), client, user, patient, now.micros(), expires.micros()],
    )?;
    Ok(())
}

/// The patient of a live, unused launch of `client` by `user` (now used).
pub fn take_launch(c: &mut dyn Conn, launch: &str, client: &str, user: &str, now: Timestamp) -> Result<Option<String>> {
    let h = token_hash(launch);
    let Some(r) = c.query_one(
        "SELECT patient FROM oauth_launches WHERE hash = $1 AND client_id = $2 AND user_name = $3 AND used IS NULL AND expires > $4",
        p![h.as_slice(), client, user, now.micros()],
    )?
    else {
        return Ok(None);
    };
    c.exec("UPDATE oauth_launches SET used = $2 WHERE hash = $1", p![h.as_slice(), now.micros()])?;
    Ok(Some(r.text(0)?))
}

/// The patient of a live, unused launch of `client` by `user`, without
/// using it (the consent screen shows it).
pub fn peek_launch(c: &mut dyn Conn, launch: &str, client: &str, user: &str, now: Timestamp) -> Result<Option<String>> {
    Ok(c.query_one(
        "SELECT patient FROM oauth_launches WHERE hash = $1 AND client_id = $2 AND user_name = $3 AND used IS NULL AND expires > $4",
        p![token_hash(launch), client, user, now.micros()],
    )?
    .map(|r| r.text(0))
    .transpose()?)
}

/// Publishes an ID-token signing key (a JWK); idempotent.
pub fn put_key(c: &mut dyn Conn, kid: &str, jwk: &str, now: Timestamp) -> Result<()> {
    if c.query_one("SELECT 1 FROM oauth_keys WHERE kid = $1", p![kid])?.is_none() {
        c.exec("INSERT INTO oauth_keys (kid, jwk, created) VALUES ($1, $2, $3)", p![kid, jwk, now.micros()])?;
    }
    Ok(())
}

/// Every published key (JWK JSON texts).
pub fn keys(c: &mut dyn Conn) -> Result<Vec<String>> {
    c.query("SELECT jwk FROM oauth_keys ORDER BY created, kid", p![])?.iter().map(|r| Ok(r.text(0)?)).collect()
}

/// Forgets codes, launches and refresh tokens that expired before
/// `before` (a replay of one is then an unknown code: still refused).
pub fn purge(c: &mut dyn Conn, before: Timestamp) -> Result<usize> {
    let a = c.exec("DELETE FROM oauth_codes WHERE expires < $1", p![before.micros()])?;
    let b = c.exec("DELETE FROM oauth_launches WHERE expires < $1", p![before.micros()])?;
    let r = c.exec("DELETE FROM oauth_refresh WHERE expires < $1", p![before.micros()])?;
    Ok(a + b + r)
}
