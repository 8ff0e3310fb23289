//! Third-party apps (SMART App Launch): `/api/v1/apps` for registration
//! and EHR launch, the OAuth 2.0 endpoints under `/oauth`, and discovery
//! (`/.well-known/smart-configuration`). The consent screen is the UI's
//! (`/ui/apps/authorize`), since the user is there with their session.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use mamori_service::{oauth, Services};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{created, json_body, ok, read_body, ApiResult, Caller, Ctx};

/// The routes.
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/api/v1/apps", get(list).post(register))
        .route("/api/v1/apps/{id}/disable", post(disable))
        .route("/api/v1/apps/{id}/keys", post(replace_keys))
        .route("/api/v1/apps/{id}/launch", post(launch))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(smart_configuration))
        .route("/fhir/.well-known/openid-configuration", get(openid_configuration))
        .route("/oauth/jwks", get(jwks))
        .route("/oauth/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/token", post(token))
        .route("/oauth/introspect", post(introspect))
        .route("/oauth/revoke", post(revoke))
}

async fn list(State(svc): State<Services>, c: Caller) -> ApiResult {
    ok(json!({"apps": oauth::list(&svc, &c).await?}))
}

async fn register(State(svc): State<Services>, c: Caller, body: Body) -> ApiResult {
    let req = json_body(&svc, &c, body).await?;
    created(oauth::register(&svc, &c, req).await?)
}

async fn disable(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> ApiResult {
    let n = oauth::disable(&svc, &c, &id).await?;
    ok(json!({"disabled": id, "tokens_revoked": n}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysReq {
    jwks: Value,
}

async fn replace_keys(State(svc): State<Services>, c: Caller, Path(id): Path<String>, body: Body) -> ApiResult {
    let req: KeysReq = json_body(&svc, &c, body).await?;
    ok(json!({"client_id": id, "keys": oauth::replace_keys(&svc, &c, &id, req.jwks).await?}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LaunchReq {
    patient: String,
}

async fn launch(State(svc): State<Services>, c: Caller, Path(id): Path<String>, body: Body) -> ApiResult {
    let req: LaunchReq = json_body(&svc, &c, body).await?;
    ok(json!({"url": oauth::launch(&svc, &c, &id, &req.patient).await?}))
}

/// A JSON answer that no cache keeps (RFC 6749 §5.1).
fn no_store(status: StatusCode, v: Value) -> Response {
    let mut r = (status, Json(v)).into_response();
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

async fn smart_configuration(State(svc): State<Services>) -> Response {
    Json(oauth::smart_configuration(&svc)).into_response()
}

async fn openid_configuration(State(svc): State<Services>) -> Response {
    Json(oauth::openid_configuration(&svc)).into_response()
}

async fn jwks(State(svc): State<Services>) -> ApiResult {
    ok(oauth::jwks(&svc).await?)
}

/// Whether a query can go into a Location header as is: visible ASCII
/// (a form body sent raw, with spaces or UTF-8, must be percent-encoded).
fn location_safe(q: &str) -> bool {
    q.len() <= 8192 && q.bytes().all(|b| (0x21..0x7f).contains(&b))
}

/// The authorization endpoint: the consent screen is the UI's, where the
/// user logs in (the session cookie is SameSite=Strict, so a request
/// coming from an app's site always passes the login page first).
async fn authorize_get(RawQuery(q): RawQuery) -> Response {
    let q = q.unwrap_or_default();
    if !location_safe(&q) {
        return (StatusCode::BAD_REQUEST, "malformed authorization request").into_response();
    }
    Redirect::to(&format!("/ui/apps/authorize?{q}")).into_response()
}

/// SMART `authorize-post`: the same request as a form.
async fn authorize_post(body: Body) -> Response {
    let Ok(bytes) = read_body(body, 8192).await else {
        return (StatusCode::BAD_REQUEST, "malformed authorization request").into_response();
    };
    let q = String::from_utf8_lossy(&bytes);
    if !location_safe(&q) {
        return (StatusCode::BAD_REQUEST, "malformed authorization request").into_response();
    }
    Redirect::to(&format!("/ui/apps/authorize?{q}")).into_response()
}

/// HTTP Basic client credentials (RFC 6749 §2.3.1: each part is
/// form-urlencoded before the base64).
fn basic(h: &HeaderMap) -> Result<Option<(String, String)>, oauth::OAuthError> {
    let Some(v) = h.get(header::AUTHORIZATION) else { return Ok(None) };
    let bad = || oauth::OAuthError {
        status: 401,
        error: "invalid_client",
        description: "malformed Basic client credentials".into(),
    };
    let v = v.to_str().map_err(|_| bad())?;
    let Some(b) = v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")) else {
        return Err(bad());
    };
    let raw = base64::engine::general_purpose::STANDARD.decode(b.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (id, secret) = text.split_once(':').ok_or_else(bad)?;
    let dec = |s: &str| mamori_service::records::parse_pairs(&format!("x={s}")).ok().and_then(|p| p.into_iter().next());
    match (dec(id), dec(secret)) {
        (Some((_, i)), Some((_, s))) => Ok(Some((i, s))),
        _ => Err(bad()),
    }
}

/// The form of an OAuth endpoint (`application/x-www-form-urlencoded`).
async fn oauth_form(h: &HeaderMap, body: Body) -> Result<Vec<(String, String)>, oauth::OAuthError> {
    let bad = |why: &str| oauth::OAuthError { status: 400, error: "invalid_request", description: why.to_owned() };
    let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(bad("the body must be application/x-www-form-urlencoded"));
    }
    let bytes = read_body(body, 64 << 10).await.map_err(|_| bad("the body is too large or incomplete"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("the body is not UTF-8"))?;
    mamori_service::records::parse_pairs(text).map_err(|_| bad("malformed form body"))
}

fn oauth_error(e: oauth::OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut r = no_store(status, e.body());
    if e.status == 401 {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"mamori\""));
    }
    r
}

async fn token(State(svc): State<Services>, Ctx(ctx): Ctx, h: HeaderMap, body: Body) -> Response {
    let run = async {
        let b = basic(&h)?;
        let f = oauth_form(&h, body).await?;
        oauth::token(&svc, ctx, b, f).await
    };
    match run.await {
        Ok(v) => no_store(StatusCode::OK, v),
        Err(e) => oauth_error(e),
    }
}

async fn introspect(State(svc): State<Services>, h: HeaderMap, body: Body) -> Response {
    let run = async {
        let b = basic(&h)?;
        let f = oauth_form(&h, body).await?;
        oauth::introspect(&svc, b, f).await
    };
    match run.await {
        Ok(v) => no_store(StatusCode::OK, v),
        Err(e) => oauth_error(e),
    }
}

async fn revoke(State(svc): State<Services>, Ctx(ctx): Ctx, h: HeaderMap, body: Body) -> Response {
    let run = async {
        let b = basic(&h)?;
        let f = oauth_form(&h, body).await?;
        oauth::revoke(&svc, ctx, b, f).await
    };
    match run.await {
        Ok(()) => no_store(StatusCode::OK, json!({})),
        Err(e) => oauth_error(e),
    }
}
