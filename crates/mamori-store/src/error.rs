//! The store's error type. Each variant maps to one HTTP status and one
//! FHIR issue code in the server.

use mamori_core::fhir::validate::Issue;

use crate::sql::DbError;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0} has been deleted")]
    Gone(String),
    #[error("version conflict: expected version {expected}, current is {current}")]
    VersionConflict { expected: u64, current: u64 },
    #[error("already exists: {0}")]
    Duplicate(String),
    #[error("invalid: {}", summarize(.0))]
    Invalid(Vec<Issue>),
    #[error("unprocessable: {}", summarize(.0))]
    Unprocessable(Vec<Issue>),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        StoreError::Invalid(vec![Issue { path: path.to_owned(), message: message.into() }])
    }
    pub fn unprocessable(path: &str, message: impl Into<String>) -> Self {
        StoreError::Unprocessable(vec![Issue { path: path.to_owned(), message: message.into() }])
    }
}

fn summarize(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| if i.path.is_empty() { i.message.clone() } else { format!("{}: {}", i.path, i.message) })
        .collect::<Vec<_>>()
        .join("; ")
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
