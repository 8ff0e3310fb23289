//! The store's error type. Each variant maps to one HTTP status and one
//! FHIR issue code in the server.

use mamori_core::fhir::validate::Issue;

use crate::sql::DbError;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Nothing there (what was looked for).
    #[error("not found: {0}")]
    NotFound(String),
    /// It existed and was deleted.
    #[error("{0} has been deleted")]
    Gone(String),
    /// The resource changed since the caller read it.
    #[error("version conflict: expected version {expected}, current is {current}")]
    VersionConflict {
        /// The version the caller expected (`If-Match`).
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// It exists already (what).
    #[error("already exists: {0}")]
    Duplicate(String),
    /// The data breaks a rule of its own: the issues found.
    #[error("invalid: {}", summarize(.0))]
    Invalid(Vec<Issue>),
    /// Well formed, but not acceptable in the current state of the data:
    /// the issues found.
    #[error("unprocessable: {}", summarize(.0))]
    Unprocessable(Vec<Issue>),
    /// The store refuses it (a rule of the data, not of the access policy).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A precondition of the request does not hold.
    #[error("precondition failed: {0}")]
    Precondition(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The database cannot be reached or opened.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A fault: data in the database that should not be there, a failed thread.
    #[error("internal error: {0}")]
    Internal(String),
}

impl StoreError {
    /// One [`StoreError::Invalid`] issue at `path`.
    pub fn invalid(path: &str, message: impl Into<String>) -> Self {
        StoreError::Invalid(vec![Issue { path: path.to_owned(), message: message.into() }])
    }
    /// One [`StoreError::Unprocessable`] issue at `path`.
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

/// The result of a store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
