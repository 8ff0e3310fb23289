//! What every handler shares: who calls ([`Caller`]), the request's
//! context, bodies, and the one mapping of a [`ServiceError`] to an HTTP
//! answer (a FHIR OperationOutcome under `/fhir`, `{"error", "message"}`
//! elsewhere).

use std::error::Error as _;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use mamori_core::mode::Mode;
use mamori_service::{accounts, Actor, RequestCtx, ServiceError, Services};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

/// The client's address, inserted per connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The request id, inserted by the middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// The mode the request is decided under (taken at its start).
#[derive(Debug, Clone, Copy)]
pub struct RequestMode(pub Mode);

/// A maintenance person's call, authenticated by the maintenance
/// listener's middleware (never present on the other listeners).
#[derive(Debug, Clone)]
pub struct MaintenanceActor(pub Actor);

/// The request's context for its audit events.
pub fn ctx_of(parts: &Parts, svc: &Services) -> RequestCtx {
    RequestCtx {
        addr: parts.extensions.get::<PeerAddr>().map(|a| a.0.ip().to_string()),
        request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        mode: parts.extensions.get::<RequestMode>().map_or_else(|| svc.mode.get(), |m| m.0),
    }
}

/// The request's context, for handlers without an authenticated caller.
pub struct Ctx(pub RequestCtx);

impl FromRequestParts<Services> for Ctx {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, Self::Rejection> {
        Ok(Ctx(ctx_of(parts, svc)))
    }
}

/// Who calls: an account authenticated by its bearer token (the web UI's
/// session cookie only for its event stream), or a maintenance person on
/// the maintenance listener.
pub struct Caller(pub Actor);

impl std::ops::Deref for Caller {
    type Target = Actor;
    fn deref(&self) -> &Actor {
        &self.0
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// The bearer token of a request, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<String> {
    bearer(headers)
}

/// The session cookie of the web UI (a token of kind `session`).
pub const SESSION_COOKIE: &str = "mamori_session";

/// The web UI's session token, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == SESSION_COOKIE && !v.is_empty()).then(|| v.to_owned())
    })
}

impl FromRequestParts<Services> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, svc: &Services) -> Result<Self, Self::Rejection> {
        if let Some(m) = parts.extensions.get::<MaintenanceActor>() {
            return Ok(Caller(m.0.clone()));
        }
        let fhir = parts.uri.path().starts_with("/fhir");
        let reject = |e: ServiceError| if fhir { FhirError(e).into_response() } else { ApiError(e).into_response() };
        // The session cookie authenticates only the UI's event stream: the
        // UI's forms are served by its own handlers, so a forged
        // cross-site request carrying the cookie reaches no API.
        let cookie_ok = parts.method == axum::http::Method::GET && parts.uri.path() == "/api/v1/events";
        let secret = bearer(&parts.headers).or_else(|| if cookie_ok { session_cookie(&parts.headers) } else { None });
        let Some(secret) = secret else {
            // No credentials at all is not an attack; it is not audited.
            return Err(reject(ServiceError::Unauthenticated(
                "authentication required: send Authorization: Bearer <token>".into(),
            )));
        };
        accounts::authenticate(svc, secret, ctx_of(parts, svc)).await.map(Caller).map_err(reject)
    }
}

fn log(e: &ServiceError) {
    if matches!(e, ServiceError::Internal { .. } | ServiceError::Unavailable(_)) {
        let mut chain = Vec::new();
        let mut src = e.source();
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        tracing::error!(error = %e, cause = %chain.join(": "), "request failed");
    }
}

/// The headers an error's answer carries: how to authenticate, when to
/// try again.
fn error_headers(r: &mut Response, e: &ServiceError) {
    if matches!(e, ServiceError::Unauthenticated(_)) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mamori\""));
    }
    if let ServiceError::TooMany { retry_after: Some(s), .. } = e {
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*s));
    }
}

fn status(e: &ServiceError) -> StatusCode {
    StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// An error of the operations API: `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError(pub ServiceError);

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        log(&e);
        let mut r = (status(&e), Json(json!({"error": e.code(), "message": e.message()}))).into_response();
        error_headers(&mut r, &e);
        r
    }
}

/// The FHIR media type mamori answers with.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// An error of the FHIR API: an OperationOutcome.
#[derive(Debug)]
pub struct FhirError(pub ServiceError);

impl From<ServiceError> for FhirError {
    fn from(e: ServiceError) -> Self {
        FhirError(e)
    }
}

/// The OperationOutcome of an error.
pub fn operation_outcome(e: &ServiceError) -> serde_json::Value {
    let issues: Vec<serde_json::Value> = e
        .issues()
        .into_iter()
        .map(|(msg, path)| {
            let mut i = json!({"severity": "error", "code": e.code(), "diagnostics": msg});
            if let Some(p) = path {
                i["expression"] = json!([p]);
            }
            i
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let e = self.0;
        log(&e);
        let mut r = (status(&e), operation_outcome(&e).to_string()).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        error_headers(&mut r, &e);
        r
    }
}

/// The answer of an operations API handler.
pub type ApiResult = Result<Response, ApiError>;

/// `200 OK` with a JSON body.
pub fn ok(v: impl Serialize) -> ApiResult {
    Ok(Json(v).into_response())
}

/// `201 Created` with a JSON body.
pub fn created(v: impl Serialize) -> ApiResult {
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// `202 Accepted` with a JSON body.
pub fn accepted(v: impl Serialize) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(v)).into_response())
}

/// `204 No Content`.
pub fn no_content() -> ApiResult {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The largest JSON body the operations API reads.
pub const JSON_LIMIT: usize = 1 << 20;

/// Reads a body of at most `limit` bytes.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ServiceError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::limits::is_body_timeout(&e) {
            ServiceError::RequestTimeout(e.to_string())
        } else {
            ServiceError::TooLarge(format!("request body larger than {limit} bytes"))
        }
    })
}

/// Parses a JSON request body into `T` (unknown fields refused).
pub async fn parse_json<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ServiceError> {
    let bytes = read_body(body, limit).await?;
    serde_json::from_slice(&bytes).map_err(|e| ServiceError::invalid("", format!("invalid request body: {e}")))
}

/// Reads the JSON body of an authenticated request; a malformed one is
/// refused and audited as `request-refused` (nothing changed).
pub async fn json_body<T: DeserializeOwned>(svc: &Services, caller: &Actor, body: Body) -> Result<T, ApiError> {
    match parse_json(body, JSON_LIMIT).await {
        Ok(v) => Ok(v),
        Err(e) => Err(ApiError(svc.refused(caller, "request-refused", e).await)),
    }
}

/// Reads an optional JSON body: empty means `T::default()`.
pub async fn json_body_or_default<T: DeserializeOwned + Default>(
    svc: &Services,
    caller: &Actor,
    body: Body,
) -> Result<T, ApiError> {
    let bytes = match read_body(body, JSON_LIMIT).await {
        Ok(b) => b,
        Err(e) => return Err(ApiError(svc.refused(caller, "request-refused", e).await)),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match serde_json::from_slice(&bytes) {
        Ok(v) => Ok(v),
        Err(e) => Err(ApiError(
            svc.refused(caller, "request-refused", ServiceError::invalid("", format!("invalid request body: {e}")))
                .await,
        )),
    }
}

/// `200 OK` with patient data whose read was audited.
pub fn ok_audited<T: Serialize>(a: mamori_service::Audited<T>) -> ApiResult {
    Ok(Json(a.into_inner()).into_response())
}
