//! The one error of the use cases. Each variant maps, in one table
//! ([`ServiceError::status`], [`ServiceError::code`]), to one HTTP status
//! and one FHIR issue code; [`ServiceError::issues`] is what a client or a
//! partner may be told. Store and internal details stay in the source
//! chain, for the log of the request's span, never in an answer.

use mamori_core::fhir::validate::Issue;
use mamori_core::policy::{Basis, Decision, Obligation};
use mamori_store::StoreError;

/// Why a use case did not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or breaks a rule of its own (400).
    #[error("invalid request")]
    Invalid(Vec<Issue>),
    /// Well formed, but not acceptable in the current state of the data (422).
    #[error("unprocessable request")]
    Unprocessable(Vec<Issue>),
    /// No valid credentials (401).
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// The policy denied it (403); the decision names the basis.
    #[error("denied: {message}")]
    Denied {
        /// What the person is told.
        message: String,
        /// The decision, when the policy made one.
        decision: Option<Box<Decision>>,
    },
    /// Nothing there (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// It was there and was deleted (410).
    #[error("gone: {0}")]
    Gone(String),
    /// It conflicts with what exists (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A precondition of the request does not hold (412).
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// The request's method is not supported on this resource (405).
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// The client accepts no format mamori can produce (406).
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// The request body's format is not supported (415).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// More than the request may carry (413).
    #[error("too large: {0}")]
    TooLarge(String),
    /// Too many attempts (429); `retry_after`: seconds until one is
    /// accepted again, when known (sent as `Retry-After`).
    #[error("too many requests: {message}")]
    TooMany {
        /// What the client is told.
        message: String,
        /// Seconds until the next attempt can succeed.
        retry_after: Option<u64>,
    },
    /// The request did not arrive in time (408).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The store could not record the request safely; nothing changed (503).
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    /// A fault of the system (500).
    #[error("internal error: {what}")]
    Internal {
        /// What failed, for the log.
        what: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// The result of a use case.
pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

impl ServiceError {
    /// One issue at `path`.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        ServiceError::Invalid(vec![Issue { path: path.into(), message: message.into() }])
    }
    /// One unprocessable issue at `path`.
    pub fn unprocessable(path: &str, message: impl Into<String>) -> Self {
        ServiceError::Unprocessable(vec![Issue { path: path.into(), message: message.into() }])
    }
    /// A fault with a message for the log.
    pub fn internal(what: impl Into<String>) -> Self {
        ServiceError::Internal { what: what.into(), source: None }
    }
    /// A fault with its cause.
    pub fn internal_from(what: impl Into<String>, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        ServiceError::Internal { what: what.into(), source: Some(Box::new(e)) }
    }
    /// A denial by the policy, explained.
    pub fn denied(what: &str, d: &Decision) -> Self {
        let mut message = format!("{what}: denied ({}); {}", d.basis.as_str(), d.basis.explain());
        if d.has(Obligation::WouldPermitInEmergency) {
            message = format!(
                "{what}: denied ({}); this is a drill: a declared emergency would have permitted this access",
                d.basis.as_str()
            );
        }
        ServiceError::Denied { message, decision: Some(Box::new(d.clone())) }
    }
    /// A refusal that is not a policy decision (e.g. a rule of the data).
    pub fn forbidden(message: impl Into<String>) -> Self {
        ServiceError::Denied { message: message.into(), decision: None }
    }

    /// The decision behind a denial.
    pub fn decision(&self) -> Option<&Decision> {
        match self {
            ServiceError::Denied { decision, .. } => decision.as_deref(),
            _ => None,
        }
    }

    /// The basis of a denial, if the policy made one.
    pub fn basis(&self) -> Option<Basis> {
        self.decision().map(|d| d.basis)
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::Invalid(_) => 400,
            ServiceError::Unauthenticated(_) => 401,
            ServiceError::Denied { .. } => 403,
            ServiceError::NotFound(_) => 404,
            ServiceError::MethodNotAllowed(_) => 405,
            ServiceError::NotAcceptable(_) => 406,
            ServiceError::Conflict(_) => 409,
            ServiceError::Gone(_) => 410,
            ServiceError::Precondition(_) => 412,
            ServiceError::TooLarge(_) => 413,
            ServiceError::UnsupportedMediaType(_) => 415,
            ServiceError::Unprocessable(_) => 422,
            ServiceError::TooMany { .. } => 429,
            ServiceError::RequestTimeout(_) => 408,
            ServiceError::Internal { .. } => 500,
            ServiceError::Unavailable(_) => 503,
        }
    }

    /// The FHIR IssueType code.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::Invalid(_) => "invalid",
            ServiceError::Unprocessable(_) => "processing",
            ServiceError::Unauthenticated(_) => "login",
            ServiceError::Denied { .. } => "forbidden",
            ServiceError::NotFound(_) => "not-found",
            ServiceError::Gone(_) => "deleted",
            ServiceError::Conflict(_) | ServiceError::Precondition(_) => "conflict",
            ServiceError::TooLarge(_) => "too-costly",
            ServiceError::MethodNotAllowed(_)
            | ServiceError::NotAcceptable(_)
            | ServiceError::UnsupportedMediaType(_) => "not-supported",
            ServiceError::TooMany { .. } => "throttled",
            ServiceError::RequestTimeout(_) => "timeout",
            ServiceError::Unavailable(_) => "transient",
            ServiceError::Internal { .. } => "exception",
        }
    }

    /// What the client is told, issue by issue (message, path): never
    /// internal detail.
    pub fn issues(&self) -> Vec<(String, Option<String>)> {
        match self {
            ServiceError::Invalid(i) | ServiceError::Unprocessable(i) => i
                .iter()
                .map(|x| {
                    (
                        if x.path.is_empty() { x.message.clone() } else { format!("{}: {}", x.path, x.message) },
                        (!x.path.is_empty()).then(|| x.path.clone()),
                    )
                })
                .collect(),
            ServiceError::Internal { .. } => vec![("internal error; the incident was logged".into(), None)],
            ServiceError::Unavailable(_) => vec![(
                "the service is temporarily unable to record this request safely; nothing was changed. Try again."
                    .into(),
                None,
            )],
            ServiceError::Denied { message: m, .. }
            | ServiceError::Unauthenticated(m)
            | ServiceError::NotFound(m)
            | ServiceError::Gone(m)
            | ServiceError::Conflict(m)
            | ServiceError::Precondition(m)
            | ServiceError::TooLarge(m)
            | ServiceError::TooMany { message: m, .. }
            | ServiceError::RequestTimeout(m)
            | ServiceError::MethodNotAllowed(m)
            | ServiceError::NotAcceptable(m)
            | ServiceError::UnsupportedMediaType(m) => vec![(m.clone(), None)],
        }
    }

    /// The safe message in one line (for the audit log and the ops API).
    pub fn message(&self) -> String {
        self.issues().into_iter().map(|(m, _)| m).collect::<Vec<_>>().join("; ")
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ServiceError::NotFound(m),
            StoreError::Gone(m) => ServiceError::Gone(m),
            StoreError::VersionConflict { expected, current } => ServiceError::Precondition(format!(
                "If-Match version {expected} does not match the current version {current}"
            )),
            StoreError::Duplicate(m) => ServiceError::Conflict(format!("{m} already exists")),
            StoreError::Invalid(i) => ServiceError::Invalid(i),
            StoreError::Unprocessable(i) => ServiceError::Unprocessable(i),
            StoreError::Forbidden(m) => ServiceError::forbidden(m),
            StoreError::Precondition(m) => ServiceError::Precondition(m),
            e @ (StoreError::Db(_) | StoreError::Unavailable(_)) => ServiceError::Unavailable(e),
            e => ServiceError::internal_from("store", e),
        }
    }
}

impl From<mamori_core::ids::IdError> for ServiceError {
    fn from(e: mamori_core::ids::IdError) -> Self {
        ServiceError::invalid("", e.to_string())
    }
}

impl From<mamori_store::sql::DbError> for ServiceError {
    fn from(e: mamori_store::sql::DbError) -> Self {
        ServiceError::Unavailable(StoreError::Db(e))
    }
}
