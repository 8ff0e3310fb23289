//! API errors. Each maps to exactly one HTTP status and one FHIR issue
//! code; the client gets a safe message, the log gets the detail.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_core::fhir::validate::Issue;
use mamori_store::StoreError;
use serde_json::{json, Value};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    #[error("unprocessable")]
    Unprocessable(Vec<Issue>),
    #[error("authentication required")]
    Unauthorized(String),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("gone: {0}")]
    Gone(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    #[error("payload too large")]
    TooLarge(usize),
    #[error("unsupported media type")]
    UnsupportedMediaType(String),
    #[error("not acceptable")]
    NotAcceptable(String),
    #[error("method not allowed")]
    MethodNotAllowed(String),
    #[error("too many requests")]
    TooManyRequests(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad(path: &str, msg: impl Into<String>) -> Self {
        ApiError::BadRequest(vec![Issue { path: path.into(), message: msg.into() }])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The FHIR IssueType code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid",
            ApiError::Unprocessable(_) => "processing",
            ApiError::Unauthorized(_) => "login",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Gone(_) => "deleted",
            ApiError::Conflict(_) | ApiError::PreconditionFailed(_) => "conflict",
            ApiError::TooLarge(_) => "too-costly",
            ApiError::UnsupportedMediaType(_) | ApiError::NotAcceptable(_) | ApiError::MethodNotAllowed(_) => {
                "not-supported"
            }
            ApiError::TooManyRequests(_) => "throttled",
            ApiError::Unavailable(_) => "transient",
            ApiError::Internal(_) => "exception",
        }
    }

    /// What the client is told (never internal detail).
    pub fn issues(&self) -> Vec<(String, Option<String>)> {
        match self {
            ApiError::BadRequest(i) | ApiError::Unprocessable(i) => i
                .iter()
                .map(|x| {
                    (
                        if x.path.is_empty() { x.message.clone() } else { format!("{}: {}", x.path, x.message) },
                        (!x.path.is_empty()).then(|| x.path.clone()),
                    )
                })
                .collect(),
            ApiError::TooLarge(n) => vec![(format!("request body larger than {n} bytes"), None)],
            ApiError::Internal(_) => vec![("internal error; the incident was logged".into(), None)],
            ApiError::Unavailable(_) => vec![(
                "the service is temporarily unable to record this request safely; nothing was changed. Try again."
                    .into(),
                None,
            )],
            ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Gone(m)
            | ApiError::Conflict(m)
            | ApiError::PreconditionFailed(m)
            | ApiError::UnsupportedMediaType(m)
            | ApiError::NotAcceptable(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::TooManyRequests(m) => vec![(m.clone(), None)],
        }
    }

    /// A short form for the audit log.
    pub fn audit_text(&self) -> String {
        self.issues().into_iter().map(|(m, _)| m).collect::<Vec<_>>().join("; ")
    }

    pub fn operation_outcome(&self) -> Value {
        let issues: Vec<Value> = self
            .issues()
            .into_iter()
            .map(|(msg, path)| {
                let mut i = json!({"severity": "error", "code": self.code(), "diagnostics": msg});
                if let Some(p) = path {
                    i["expression"] = json!([p]);
                }
                i
            })
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

impl ApiError {
    /// The FHIR (OperationOutcome) response of this error.
    pub fn into_response_fhir(self) -> Response {
        self.into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Gone(m) => ApiError::Gone(m),
            StoreError::VersionConflict { expected, current } => ApiError::PreconditionFailed(format!(
                "If-Match version {expected} does not match the current version {current}"
            )),
            StoreError::Duplicate(m) => ApiError::Conflict(format!("{m} already exists")),
            StoreError::Invalid(i) => ApiError::BadRequest(i),
            StoreError::Unprocessable(i) => ApiError::Unprocessable(i),
            StoreError::Forbidden(m) => ApiError::Forbidden(m),
            StoreError::Precondition(m) => ApiError::PreconditionFailed(m),
            StoreError::Db(d) => {
                tracing::error!(error = %d, "database error");
                ApiError::Unavailable(d.to_string())
            }
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "store unavailable");
                ApiError::Unavailable(m)
            }
            StoreError::Internal(m) => {
                tracing::error!(error = %m, "internal store error");
                ApiError::Internal(m)
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// FHIR responses: OperationOutcome, `application/fhir+json`.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if matches!(self, ApiError::Internal(_)) {
            tracing::error!(detail = %self, "internal error");
        }
        let mut r = (self.status(), crate::fhir::json_bytes(&self.operation_outcome())).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::fhir::FHIR_JSON));
        if matches!(self, ApiError::Unauthorized(_)) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mamori\""));
        }
        r
    }
}

/// The ops API's error body: `{"error": code, "message": text}`.
pub struct OpsError(pub ApiError);

impl From<ApiError> for OpsError {
    fn from(e: ApiError) -> Self {
        OpsError(e)
    }
}
impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        OpsError(e.into())
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let e = self.0;
        if matches!(e, ApiError::Internal(_)) {
            tracing::error!(detail = %e, "internal error");
        }
        let body = json!({"error": e.code(), "message": e.audit_text()});
        let mut r = (e.status(), axum::Json(body)).into_response();
        if matches!(e, ApiError::Unauthorized(_)) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mamori\""));
        }
        r
    }
}
