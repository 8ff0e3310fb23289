//! Accounts: users and roles, passwords (argon2id), TOTP, bearer tokens
//! and sessions, care assignments.
//!
//! Secrets never leave this module in clear except once, at creation, to
//! be shown to the person who asked; only hashes are stored.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use mamori_core::ids::UserId;
use mamori_core::policy::{Role, Subject, SubjectKind};
use mamori_core::time::Timestamp;
use ring::digest::{digest, SHA256};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::error::{Result, StoreError};
use crate::p;
use crate::sql::{Conn, Row};

/// Random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).map_err(|_| StoreError::Internal("random source failed".into()))?;
    Ok(b)
}

/// A random password for one-time use: 20 characters from an alphabet
/// without look-alikes (about 115 bits).
pub fn random_password() -> Result<Zeroizing<String>> {
    const ALPHA: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let bytes = Zeroizing::new(random_bytes::<32>()?);
    let mut s = Zeroizing::new(String::with_capacity(20));
    for b in bytes.iter().take(20) {
        s.push(ALPHA[(*b as usize) % ALPHA.len()] as char);
    }
    Ok(s)
}

/// A new resource id: a UUIDv7 (RFC 9562), i.e. 48 bits of milliseconds
/// then 74 random bits. Time-ordered ids keep inserts into the id-keyed
/// B-trees local (measured: creates no longer slow down as tables grow);
/// they reveal no more than `meta.lastUpdated` already does.
pub fn new_id() -> Result<String> {
    let mut b = random_bytes::<16>()?;
    let ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = mamori_audit::merkle::to_hex(&b);
    Ok(format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32]))
}

/// Constant-time equality for secrets and their hashes.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn argon() -> Argon2<'static> {
    // OWASP's first recommended argon2id configuration: m=19 MiB, t=2, p=1.
    let params = argon2::Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password with argon2id and a random salt (PHC string format).
pub fn hash_password(pw: &str) -> Result<String> {
    let salt_bytes = random_bytes::<16>()?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(argon().hash_password(pw.as_bytes(), &salt).map_err(|e| StoreError::Internal(e.to_string()))?.to_string())
}

/// Whether `pw` matches a hash made by [`hash_password`].
pub fn verify_password(pw: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| argon().verify_password(pw.as_bytes(), &h).is_ok())
}

/// The hash verified for an account that does not exist: made like every
/// other (same algorithm and parameters), so that it costs the same.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(DUMMY_PASSWORD).unwrap_or_default())
}
const DUMMY_PASSWORD: &str = "no account has this password";

/// Whether `pw` matches `stored`. Without a stored hash (no such account,
/// or none set) it spends the time of a real verification and answers
/// false, so that the response time does not tell whether an account
/// exists.
pub fn verify_password_or_dummy(pw: &str, stored: Option<&str>) -> bool {
    match stored {
        Some(h) => verify_password(pw, h),
        None => {
            // The result is known; the work is what matters.
            std::hint::black_box(verify_password(pw, dummy_hash()));
            false
        }
    }
}

/// A password policy: at least 12 characters, not all of one class.
pub fn check_password_policy(pw: &str) -> Result<()> {
    let n = pw.chars().count();
    let classes = [
        pw.chars().any(|c| c.is_ascii_lowercase()),
        pw.chars().any(|c| c.is_ascii_uppercase()),
        pw.chars().any(|c| c.is_ascii_digit()),
        pw.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if !(12..=256).contains(&n) || classes < 2 {
        return Err(StoreError::invalid(
            "password",
            "a password needs 12 to 256 characters of at least two kinds (lower, upper, digits, symbols)",
        ));
    }
    Ok(())
}

// ---- TOTP (RFC 6238, HMAC-SHA1, 30 s, 6 digits) ------------------------------

/// The TOTP time step, in seconds.
pub const TOTP_STEP: i64 = 30;

/// The 6-digit TOTP code (RFC 6238, HMAC-SHA1) of a secret for time step
/// `step` (seconds since the epoch divided by [`TOTP_STEP`]).
pub fn totp_code(secret: &[u8], step: i64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let d = tag.as_ref();
    let off = (d.last().copied().unwrap_or(0) & 0x0f) as usize;
    let bin = d.get(off..off + 4).map_or(0, |b| u32::from_be_bytes([b[0] & 0x7f, b[1], b[2], b[3]]));
    bin % 1_000_000
}

/// Checks a code within ±1 step; returns the matched step.
pub fn totp_check(secret: &[u8], code: &str, now: Timestamp) -> Option<i64> {
    let code: u32 = code.trim().parse().ok().filter(|_| code.trim().len() == 6)?;
    let step = now.secs().div_euclid(TOTP_STEP);
    (step - 1..=step + 1).find(|s| totp_code(secret, *s) == code)
}

/// RFC 4648 base32 without padding (for otpauth:// URIs).
pub fn base32(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for b in data {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            out.push(A[((buf >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

// ---- users ---------------------------------------------------------------------

/// An account as stored (without its secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name.
    pub name: UserId,
    /// The name shown to people.
    pub display: String,
    /// Staff, service account or emergency account.
    pub kind: SubjectKind,
    /// The department, if any (care can be assigned to a department).
    pub department: Option<String>,
    /// The roles it holds, sorted.
    pub roles: Vec<Role>,
    /// The password must be changed at the next login.
    pub must_change: bool,
    /// A password is set.
    pub has_password: bool,
    /// A TOTP second factor is enrolled.
    pub has_totp: bool,
    /// Failed logins since the last success.
    pub failed_logins: u32,
    /// Logins are refused until then (after too many failures).
    pub locked_until: Option<Timestamp>,
    /// The account is disabled: no login, no token works.
    pub disabled: bool,
    /// When it was created.
    pub created: Timestamp,
}

impl User {
    /// The account as the access policy sees it.
    pub fn subject(&self) -> Subject {
        Subject {
            user: self.name.clone(),
            roles: self.roles.clone(),
            kind: self.kind,
            must_change_password: self.must_change,
            app: None,
        }
    }
}

fn kind_str(k: SubjectKind) -> &'static str {
    match k {
        SubjectKind::EmergencyAccount => "emergency",
        _ => "staff",
    }
}

fn parse_kind(s: &str, service: bool) -> Result<SubjectKind> {
    match (s, service) {
        ("staff", false) => Ok(SubjectKind::Staff),
        ("staff", true) => Ok(SubjectKind::Service),
        ("emergency", _) => Ok(SubjectKind::EmergencyAccount),
        (other, _) => Err(StoreError::Internal(format!("unknown user kind '{other}' in database"))),
    }
}

const USER_COLS: &str = "name, display, kind, department, password_hash IS NOT NULL, must_change, totp_secret IS NOT NULL, failed_logins, locked_until, disabled, created, service";

fn user_row(c: &mut dyn Conn, r: &Row) -> Result<User> {
    let name = UserId::parse(&r.text(0)?).map_err(|e| StoreError::Internal(e.to_string()))?;
    let roles = roles_of(c, name.as_str())?;
    Ok(User {
        name,
        display: r.text(1)?,
        kind: parse_kind(&r.text(2)?, r.bool(11)?)?,
        department: r.opt_text(3)?,
        has_password: r.bool(4)?,
        must_change: r.bool(5)?,
        has_totp: r.bool(6)?,
        failed_logins: u32::try_from(r.i64(7)?).unwrap_or(u32::MAX),
        locked_until: r.opt_i64(8)?.map(Timestamp),
        disabled: r.bool(9)?,
        created: Timestamp(r.i64(10)?),
        roles,
    })
}

/// The roles of `user`, sorted.
pub fn roles_of(c: &mut dyn Conn, user: &str) -> Result<Vec<Role>> {
    let mut roles = Vec::new();
    for r in c.query("SELECT role FROM user_roles WHERE user_name = $1 ORDER BY role", p![user])? {
        let s = r.text(0)?;
        roles.push(Role::parse(&s).ok_or_else(|| StoreError::Internal(format!("unknown role '{s}' in database")))?);
    }
    roles.sort();
    Ok(roles)
}

/// The account `name`.
pub fn get_user(c: &mut dyn Conn, name: &str) -> Result<Option<User>> {
    let row = c.query_one(&format!("SELECT {USER_COLS} FROM users WHERE name = $1"), p![name])?;
    row.map(|r| user_row(c, &r)).transpose()
}

/// Every account, by name.
pub fn list_users(c: &mut dyn Conn) -> Result<Vec<User>> {
    let rows = c.query(&format!("SELECT {USER_COLS} FROM users ORDER BY name"), p![])?;
    rows.iter().map(|r| user_row(c, r)).collect()
}

/// An account to create.
pub struct NewUser<'a> {
    /// The login name.
    pub name: &'a UserId,
    /// The name shown to people.
    pub display: &'a str,
    /// Staff, service account or emergency account.
    pub kind: SubjectKind,
    /// The department, if any.
    pub department: Option<&'a str>,
    /// The roles it holds.
    pub roles: &'a [Role],
    /// The password's hash, if it has one (from [`hash_password`]).
    pub password_hash: Option<&'a str>,
    /// The password must be changed at the first login.
    pub must_change: bool,
    /// Who created it.
    pub created_by: &'a str,
}

/// Names no account may take.
pub const RESERVED_NAMES: &[&str] = &["system", "anonymous"];

/// Creates an account (the caller has validated the display name and
/// that the name is not reserved).
pub fn create_user(c: &mut dyn Conn, u: &NewUser<'_>, now: Timestamp) -> Result<()> {
    if get_user(c, u.name.as_str())?.is_some() {
        return Err(StoreError::Duplicate(format!("user {}", u.name)));
    }
    c.exec(
        "INSERT INTO users (name, display, kind, department, password_hash, must_change, created, created_by, service) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        p![u.name.as_str(), u.display, kind_str(u.kind), u.department, u.password_hash, u.must_change, now.micros(), u.created_by, u.kind == SubjectKind::Service],
    )?;
    set_roles(c, u.name.as_str(), u.roles)
}

/// Sets an account's display name and department.
pub fn set_details(
    c: &mut dyn Conn,
    user: &str,
    display: Option<&str>,
    department: Option<Option<&str>>,
) -> Result<()> {
    if let Some(d) = display {
        c.exec("UPDATE users SET display = $2 WHERE name = $1", p![user, d])?;
    }
    if let Some(d) = department {
        c.exec("UPDATE users SET department = $2 WHERE name = $1", p![user, d])?;
    }
    Ok(())
}

/// Replaces the roles of `user`.
pub fn set_roles(c: &mut dyn Conn, user: &str, roles: &[Role]) -> Result<()> {
    c.exec("DELETE FROM user_roles WHERE user_name = $1", p![user])?;
    for r in roles {
        c.exec(
            "INSERT INTO user_roles (user_name, role) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            p![user, r.as_str()],
        )?;
    }
    Ok(())
}

/// Sets a new password hash, clearing failed logins and any lock.
pub fn set_password(c: &mut dyn Conn, user: &str, hash: &str, must_change: bool) -> Result<()> {
    let n = c.exec(
        "UPDATE users SET password_hash = $2, must_change = $3, failed_logins = 0, locked_until = NULL WHERE name = $1",
        p![user, hash, must_change],
    )?;
    if n == 0 {
        return Err(StoreError::NotFound(format!("user {user}")));
    }
    Ok(())
}

/// Disables or enables an account; `NotFound` if there is none.
pub fn set_disabled(c: &mut dyn Conn, user: &str, disabled: bool) -> Result<()> {
    if c.exec("UPDATE users SET disabled = $2 WHERE name = $1", p![user, disabled])? == 0 {
        return Err(StoreError::NotFound(format!("user {user}")));
    }
    Ok(())
}

/// Enrolls a TOTP secret (or removes it with `None`).
pub fn set_totp(c: &mut dyn Conn, user: &str, secret: Option<&[u8]>) -> Result<()> {
    if c.exec("UPDATE users SET totp_secret = $2, totp_last_step = NULL WHERE name = $1", p![user, secret])? == 0 {
        return Err(StoreError::NotFound(format!("user {user}")));
    }
    Ok(())
}

/// The secrets needed to check a login.
pub struct Credentials {
    /// The password's hash, if a password is set.
    pub password_hash: Option<String>,
    /// The TOTP secret, if one is enrolled.
    pub totp_secret: Option<Zeroizing<Vec<u8>>>,
    /// The last TOTP step accepted (a code is never accepted twice).
    pub totp_last_step: Option<i64>,
}

/// The secrets needed to check a login by `user`.
pub fn credentials(c: &mut dyn Conn, user: &str) -> Result<Option<Credentials>> {
    c.query_one("SELECT password_hash, totp_secret, totp_last_step FROM users WHERE name = $1", p![user])?
        .map(|r| {
            Ok(Credentials {
                password_hash: r.opt_text(0)?,
                totp_secret: r.opt_blob(1)?.map(Zeroizing::new),
                totp_last_step: r.opt_i64(2)?,
            })
        })
        .transpose()
}

/// Records a failed login; locks the account after `max` failures.
pub fn record_login_failure(c: &mut dyn Conn, user: &str, max: u32, lock_secs: i64, now: Timestamp) -> Result<bool> {
    c.exec("UPDATE users SET failed_logins = failed_logins + 1 WHERE name = $1", p![user])?;
    let failed = c
        .query_one("SELECT failed_logins FROM users WHERE name = $1", p![user])?
        .map(|r| r.i64(0))
        .transpose()?
        .unwrap_or(0);
    if failed >= i64::from(max) {
        c.exec("UPDATE users SET locked_until = $2 WHERE name = $1", p![user, now.plus_secs(lock_secs).micros()])?;
        return Ok(true);
    }
    Ok(false)
}

/// Records a successful login: clears failures and the lock, and
/// remembers the TOTP step used.
pub fn record_login_success(c: &mut dyn Conn, user: &str, totp_step: Option<i64>) -> Result<()> {
    c.exec(
        "UPDATE users SET failed_logins = 0, locked_until = NULL, totp_last_step = COALESCE($2, totp_last_step) WHERE name = $1",
        p![user, totp_step],
    )?;
    Ok(())
}

// ---- tokens ----------------------------------------------------------------------

/// What a bearer token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A long-lived API token (service accounts, tools).
    Api,
    /// A login session.
    Session,
}

impl TokenKind {
    fn as_str(self) -> &'static str {
        match self {
            TokenKind::Api => "api",
            TokenKind::Session => "session",
        }
    }
}

/// A token's secret is `mmr_` + 43 base64url characters (256 bits).
pub fn new_token_secret() -> Result<Zeroizing<String>> {
    let b = Zeroizing::new(random_bytes::<32>()?);
    Ok(Zeroizing::new(format!("mmr_{}", B64URL.encode(b.as_slice()))))
}

/// The SHA-256 of a token's secret (what is stored).
pub fn token_hash(secret: &str) -> Vec<u8> {
    digest(&SHA256, secret.as_bytes()).as_ref().to_vec()
}

/// The token's id shown to people (first 12 hex digits of its hash);
/// never the secret.
pub fn token_id(hash: &[u8]) -> String {
    mamori_audit::merkle::to_hex(hash.get(..6).unwrap_or(hash))
}

/// A token to store.
pub struct NewToken<'a> {
    /// The secret (only its hash is stored).
    pub secret: &'a str,
    /// The holder.
    pub user: &'a str,
    /// API token or session.
    pub kind: TokenKind,
    /// A label saying what it is for.
    pub label: Option<&'a str>,
    /// When it stops working.
    pub expires: Timestamp,
    /// Emergency accounts: the real name and affiliation given at login.
    pub declared: Option<&'a str>,
    /// Who issued it, when not the holder.
    pub issued_by: Option<&'a str>,
    /// A third-party app's access token: the app and what the user granted.
    pub app: Option<&'a AppToken>,
}

/// What makes an API token an app's access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppToken {
    /// The app (`client_id`).
    pub client_id: String,
    /// The scopes granted (space-separated).
    pub scope: String,
    /// The patient the app was launched for.
    pub patient: Option<String>,
    /// The authorization it came from (its code and refresh tokens).
    pub family: String,
}

/// Stores a token; returns its id.
pub fn insert_token(c: &mut dyn Conn, t: &NewToken<'_>, now: Timestamp) -> Result<String> {
    let h = token_hash(t.secret);
    let a = t.app;
    c.exec(
        "INSERT INTO tokens (hash, user_name, kind, label, created, expires, declared, issued_by, client_id, scope, patient, family) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        p![
            h.as_slice(),
            t.user,
            t.kind.as_str(),
            t.label,
            now.micros(),
            t.expires.micros(),
            t.declared,
            t.issued_by,
            a.map(|a| a.client_id.as_str()),
            a.map(|a| a.scope.as_str()),
            a.and_then(|a| a.patient.as_deref()),
            a.map(|a| a.family.as_str())
        ],
    )?;
    Ok(token_id(&h))
}

/// A live token's owner.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    /// The holder.
    pub user: User,
    /// API token or session.
    pub kind: TokenKind,
    /// Its id ([`token_id`]).
    pub id: String,
    /// When it stops working.
    pub expires: Timestamp,
    /// Emergency accounts: the real name and affiliation given at login.
    pub declared: Option<String>,
    /// Who issued it, when not the holder.
    pub issued_by: Option<String>,
    /// A third-party app's access token: the app and what it was granted.
    pub app: Option<AppToken>,
}

/// Looks up a presented secret; `None` unless live (not expired, not
/// revoked, user enabled).
pub fn lookup_token(c: &mut dyn Conn, secret: &str, now: Timestamp) -> Result<Option<TokenInfo>> {
    if !secret.starts_with("mmr_") || secret.len() > 100 {
        return Ok(None);
    }
    let h = token_hash(secret);
    let Some(r) = c.query_one(
        "SELECT user_name, kind, expires, revoked, declared, hash, issued_by, client_id, scope, patient, family FROM tokens WHERE hash = $1",
        p![h.as_slice()],
    )?
    else {
        return Ok(None);
    };
    // The lookup is by hash; compare again in constant time for form's sake.
    if !ct_eq(&r.blob(5)?, &h) || r.opt_i64(3)?.is_some() || r.i64(2)? <= now.micros() {
        return Ok(None);
    }
    let Some(user) = get_user(c, &r.text(0)?)? else {
        return Ok(None);
    };
    if user.disabled {
        return Ok(None);
    }
    let kind = if r.text(1)? == "session" { TokenKind::Session } else { TokenKind::Api };
    Ok(Some(TokenInfo {
        user,
        kind,
        id: token_id(&h),
        expires: Timestamp(r.i64(2)?),
        declared: r.opt_text(4)?,
        issued_by: r.opt_text(6)?,
        app: match r.opt_text(7)? {
            Some(client_id) => Some(AppToken {
                client_id,
                scope: r.opt_text(8)?.unwrap_or_default(),
                patient: r.opt_text(9)?,
                family: r.opt_text(10)?.unwrap_or_default(),
            }),
            None => None,
        },
    }))
}

/// Revokes tokens by id prefix (as shown by [`token_id`]) or all of a user's.
pub fn revoke_token(c: &mut dyn Conn, user: Option<&str>, id: Option<&str>, now: Timestamp) -> Result<usize> {
    let rows = c.query(
        "SELECT hash, user_name, family FROM tokens WHERE revoked IS NULL AND (CAST($1 AS TEXT) IS NULL OR user_name = $1)",
        p![user],
    )?;
    let mut n = 0;
    for r in rows {
        let h = r.blob(0)?;
        if id.is_none_or(|i| token_id(&h) == i) {
            n += c.exec("UPDATE tokens SET revoked = $2 WHERE hash = $1", p![h.as_slice(), now.micros()])?;
            // An app's access token takes its authorization's refresh
            // tokens with it: revoking it ends the app's access.
            if let (Some(family), Some(_)) = (r.opt_text(2)?, id) {
                c.exec(
                    "UPDATE oauth_refresh SET revoked = $2 WHERE family = $1 AND revoked IS NULL",
                    p![family, now.micros()],
                )?;
            }
        }
    }
    if id.is_none() {
        // Every token of the account: the apps' refresh tokens too (a
        // password change, a lock, a disabled account end the apps' access).
        n += c.exec(
            "UPDATE oauth_refresh SET revoked = $2 WHERE revoked IS NULL AND (CAST($1 AS TEXT) IS NULL OR user_name = $1)",
            p![user, now.micros()],
        )?;
    }
    Ok(n)
}

/// A token as listed to administrators (never the secret).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TokenListing {
    /// Its id ([`token_id`]).
    pub id: String,
    /// The holder.
    pub user: String,
    /// `api` or `session`.
    pub kind: String,
    /// Its label.
    pub label: Option<String>,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it stops working (RFC 3339).
    pub expires: String,
    /// When it was revoked (RFC 3339).
    pub revoked: Option<String>,
    /// Who issued it, when not the holder.
    #[serde(default)]
    pub issued_by: Option<String>,
}

/// The tokens of `user` (or of everyone), oldest first.
pub fn list_tokens(c: &mut dyn Conn, user: Option<&str>) -> Result<Vec<TokenListing>> {
    c.query("SELECT hash, user_name, kind, label, created, expires, revoked, issued_by FROM tokens WHERE (CAST($1 AS TEXT) IS NULL OR user_name = $1) ORDER BY created", p![user])?
        .iter()
        .map(|r| {
            Ok(TokenListing {
                id: token_id(&r.blob(0)?),
                user: r.text(1)?,
                kind: r.text(2)?,
                label: r.opt_text(3)?,
                created: Timestamp(r.i64(4)?).to_rfc3339(),
                expires: Timestamp(r.i64(5)?).to_rfc3339(),
                revoked: r.opt_i64(6)?.map(|t| Timestamp(t).to_rfc3339()),
                issued_by: r.opt_text(7)?,
            })
        })
        .collect()
}

// ---- account changes a second admin approves --------------------------------------

/// What an account request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestKind {
    /// Give the account these roles (some clinical).
    RoleGrant,
    /// A new one-time password for an account holding a clinical role.
    PasswordReset,
}

impl RequestKind {
    fn as_str(self) -> &'static str {
        match self {
            RequestKind::RoleGrant => "role-grant",
            RequestKind::PasswordReset => "password-reset",
        }
    }
    fn parse(s: &str) -> Result<RequestKind> {
        match s {
            "role-grant" => Ok(RequestKind::RoleGrant),
            "password-reset" => Ok(RequestKind::PasswordReset),
            other => Err(StoreError::Internal(format!("unknown account request kind '{other}' in database"))),
        }
    }
}

/// The state of an account request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    /// Waiting for a second admin.
    Pending,
    /// Approved and applied.
    Approved,
    /// Refused.
    Rejected,
    /// A newer request for the same account and kind replaced it.
    Superseded,
}

impl RequestState {
    fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
            RequestState::Superseded => "superseded",
        }
    }
    fn parse(s: &str) -> Result<RequestState> {
        match s {
            "pending" => Ok(RequestState::Pending),
            "approved" => Ok(RequestState::Approved),
            "rejected" => Ok(RequestState::Rejected),
            "superseded" => Ok(RequestState::Superseded),
            other => Err(StoreError::Internal(format!("unknown account request state '{other}' in database"))),
        }
    }
}

/// An account change waiting for (or decided by) a second admin.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AccountRequest {
    /// Its number.
    pub id: i64,
    /// What it changes.
    pub kind: RequestKind,
    /// The account it changes.
    pub user: String,
    /// For a role grant: the roles the account would hold.
    pub roles: Vec<Role>,
    /// The reason given.
    pub reason: Option<String>,
    /// The admin who asked.
    pub requested_by: String,
    /// When it was asked (RFC 3339).
    pub requested_at: String,
    /// Where it stands.
    pub state: RequestState,
    /// The second admin who decided it.
    pub decided_by: Option<String>,
    /// When it was decided or superseded (RFC 3339).
    pub decided_at: Option<String>,
}

const REQUEST_COLS: &str =
    "id, kind, user_name, roles, reason, requested_by, requested_at, state, decided_by, decided_at";

fn request_row(r: &Row) -> Result<AccountRequest> {
    let roles = r
        .opt_text(3)?
        .unwrap_or_default()
        .split(',')
        .filter(|x| !x.is_empty())
        .map(|x| Role::parse(x).ok_or_else(|| StoreError::Internal(format!("unknown role '{x}' in database"))))
        .collect::<Result<Vec<_>>>()?;
    Ok(AccountRequest {
        id: r.i64(0)?,
        kind: RequestKind::parse(&r.text(1)?)?,
        user: r.text(2)?,
        roles,
        reason: r.opt_text(4)?,
        requested_by: r.text(5)?,
        requested_at: Timestamp(r.i64(6)?).to_rfc3339(),
        state: RequestState::parse(&r.text(7)?)?,
        decided_by: r.opt_text(8)?,
        decided_at: r.opt_i64(9)?.map(|t| Timestamp(t).to_rfc3339()),
    })
}

/// Records a request; an earlier pending one of the same kind for the
/// same account is superseded. Returns the new request's id.
pub fn insert_request(
    c: &mut dyn Conn,
    kind: RequestKind,
    user: &str,
    roles: &[Role],
    reason: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<i64> {
    c.exec(
        "UPDATE account_requests SET state = 'superseded', decided_at = $3 WHERE user_name = $1 AND kind = $2 AND state = 'pending'",
        p![user, kind.as_str(), now.micros()],
    )?;
    let list = roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
    let r = c
        .query_one(
            "INSERT INTO account_requests (kind, user_name, roles, reason, requested_by, requested_at, state) \
             VALUES ($1, $2, $3, $4, $5, $6, 'pending') RETURNING id",
            p![kind.as_str(), user, (!list.is_empty()).then_some(list), reason, by, now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// One request.
pub fn request(c: &mut dyn Conn, id: i64) -> Result<Option<AccountRequest>> {
    c.query_one(&format!("SELECT {REQUEST_COLS} FROM account_requests WHERE id = $1"), p![id])?
        .map(|r| request_row(&r))
        .transpose()
}

/// Requests, newest first; only pending ones if `pending`.
pub fn requests(c: &mut dyn Conn, pending: bool, limit: usize) -> Result<Vec<AccountRequest>> {
    c.query(
        &format!(
            "SELECT {REQUEST_COLS} FROM account_requests WHERE ($1 = 0 OR state = 'pending') ORDER BY id DESC LIMIT $2"
        ),
        p![pending, limit],
    )?
    .iter()
    .map(request_row)
    .collect()
}

/// Decides a pending request; false if it was no longer pending.
pub fn decide_request(c: &mut dyn Conn, id: i64, approve: bool, by: &str, now: Timestamp) -> Result<bool> {
    let state = if approve { RequestState::Approved } else { RequestState::Rejected };
    Ok(c.exec(
        "UPDATE account_requests SET state = $2, decided_by = $3, decided_at = $4 WHERE id = $1 AND state = 'pending'",
        p![id, state.as_str(), by, now.micros()],
    )? == 1)
}

// ---- care assignments ---------------------------------------------------------------

/// A care relationship: a user or a department takes care of a patient.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CareAssignment {
    /// Its number.
    pub id: i64,
    /// The patient (Patient id).
    pub patient: String,
    /// The user, for a personal assignment.
    pub user: Option<String>,
    /// The department, for a department's assignment.
    pub department: Option<String>,
    /// Why (e.g. admission, referral).
    pub reason: Option<String>,
    /// Who assigned it.
    pub assigned_by: String,
    /// When it started (RFC 3339).
    pub start: String,
    /// When it ended (RFC 3339); `None` while active.
    pub ended: Option<String>,
}

/// Whether `user` (or their department) has a care relationship to
/// `patient` in force at `now`, and whether `user` holds a live
/// break-glass grant for them (as `emergency::has_live_grant`): the two
/// patient facts of an access decision, in one query.
pub fn care_and_grant(
    c: &mut dyn Conn,
    user: &str,
    department: Option<&str>,
    patient: &str,
    now: Timestamp,
) -> Result<(bool, bool)> {
    let r = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM care_assignments WHERE patient = $1 AND (user_name = $2 OR (CAST($3 AS TEXT) IS NOT NULL AND department = $3)) \
             AND start <= $4 AND (ended IS NULL OR ended > $4)), \
             EXISTS (SELECT 1 FROM break_glass WHERE user_name = $2 AND patient = $1 AND started <= $4 AND expires > $4 AND ended IS NULL)",
            p![patient, user, department, now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("SELECT EXISTS gave no row".into()))?;
    Ok((r.bool(0)?, r.bool(1)?))
}

/// Records a care relationship the server itself establishes (e.g. for
/// the clinician who registers a patient); the caller vouches that user and
/// patient exist. Its failure surfaces at the job's end (held back).
pub fn assign_care_unchecked(c: &mut dyn Conn, patient: &str, user: &str, reason: &str, now: Timestamp) -> Result<()> {
    c.exec_later(
        "INSERT INTO care_assignments (patient, user_name, reason, assigned_by, start) VALUES ($1, $2, $3, $2, $4)",
        p![patient, user, reason, now.micros()],
    )?;
    Ok(())
}

/// Assigns care of `patient` to exactly one of `user` or `department`;
/// both must exist. Returns the assignment's id.
pub fn assign_care(
    c: &mut dyn Conn,
    patient: &str,
    user: Option<&str>,
    department: Option<&str>,
    reason: Option<&str>,
    by: &str,
    now: Timestamp,
) -> Result<i64> {
    if user.is_some() == department.is_some() {
        return Err(StoreError::invalid("", "give exactly one of user or department"));
    }
    if let Some(u) = user {
        if get_user(c, u)?.is_none() {
            return Err(StoreError::unprocessable("user", format!("user {u} does not exist")));
        }
    }
    match crate::records::current(c, "Patient", patient)? {
        Some(p) if !p.deleted => {}
        _ => return Err(StoreError::unprocessable("patient", format!("Patient/{patient} does not exist"))),
    }
    let r = c
        .query_one(
            "INSERT INTO care_assignments (patient, user_name, department, reason, assigned_by, start) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            p![patient, user, department, reason, by, now.micros()],
        )?
        .ok_or_else(|| StoreError::Internal("no id".into()))?;
    Ok(r.i64(0)?)
}

/// Ends an active care assignment and returns it.
pub fn end_care(c: &mut dyn Conn, id: i64, now: Timestamp) -> Result<CareAssignment> {
    if c.exec("UPDATE care_assignments SET ended = $2 WHERE id = $1 AND ended IS NULL", p![id, now.micros()])? == 0 {
        return Err(StoreError::NotFound(format!("active care assignment {id}")));
    }
    list_care(c, None, None)?
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| StoreError::NotFound(format!("care assignment {id}")))
}

/// The care assignments, optionally of one patient or one user, oldest first.
pub fn list_care(c: &mut dyn Conn, patient: Option<&str>, user: Option<&str>) -> Result<Vec<CareAssignment>> {
    c.query(
        "SELECT id, patient, user_name, department, reason, assigned_by, start, ended FROM care_assignments \
         WHERE (CAST($1 AS TEXT) IS NULL OR patient = $1) AND (CAST($2 AS TEXT) IS NULL OR user_name = $2) ORDER BY id",
        p![patient, user],
    )?
    .iter()
    .map(|r| {
        Ok(CareAssignment {
            id: r.i64(0)?,
            patient: r.text(1)?,
            user: r.opt_text(2)?,
            department: r.opt_text(3)?,
            reason: r.opt_text(4)?,
            assigned_by: r.text(5)?,
            start: Timestamp(r.i64(6)?).to_rfc3339(),
            ended: r.opt_i64(7)?.map(|t| Timestamp(t).to_rfc3339()),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dummy verification is a real one: a valid argon2id hash with the
    /// parameters of every stored password (a malformed constant failed to
    /// parse at once, and an unknown account answered ten times faster).
    #[test]
    fn the_dummy_hash_costs_what_a_real_one_costs() {
        let real = hash_password("Some password 1!").unwrap();
        let params = |h: &str| h.split('$').take(4).collect::<Vec<_>>().join("$");
        assert_eq!(params(dummy_hash()), params(&real));
        assert!(verify_password(DUMMY_PASSWORD, dummy_hash()), "it parses and verifies");
        assert!(!verify_password_or_dummy(DUMMY_PASSWORD, None), "but never admits anyone");
        assert!(verify_password_or_dummy("Some password 1!", Some(&real)));
    }

    /// RFC 6238 Appendix B, SHA-1 vectors (8 digits there; 6 are the low digits).
    #[test]
    fn totp_rfc6238_vectors() {
        let secret = b"12345678901234567890";
        for (t, code8) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
        ] {
            assert_eq!(totp_code(secret, t / 30), code8 % 1_000_000, "t={t}");
        }
        let now = Timestamp::from_secs(59);
        assert_eq!(totp_check(secret, "287082", now), Some(1));
        assert_eq!(totp_check(secret, "287083", now), None);
        assert_eq!(totp_check(secret, "28708", now), None);
    }

    #[test]
    fn base32_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b"f"), "MY");
    }

    #[test]
    fn passwords() {
        let h = hash_password("correct horse 1").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse 1", &h));
        assert!(!verify_password("correct horse 2", &h));
        assert!(!verify_password("x", "not a hash"));
        assert!(check_password_policy("short1").is_err());
        assert!(check_password_policy("alllowercaseletters").is_err());
        assert!(check_password_policy("Long enough pw").is_ok());
        let r = random_password().unwrap();
        assert_eq!(r.len(), 20);
    }

    #[test]
    fn ids_and_ct() {
        let id = new_id().unwrap();
        assert!(mamori_core::ids::is_fhir_id(&id));
        assert!(mamori_core::fhir::validate::is_uuid(&id));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
