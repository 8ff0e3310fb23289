//! mamori-service: every use case of mamori, without HTTP.
//!
//! Each use case takes a typed command and an [`Actor`] and returns a
//! typed result. It gathers the facts, asks the policy once through
//! [`authz::decide`] (the only caller of `mamori_core::policy::authorize`),
//! writes the change and its audit event in one group-commit job (or the
//! audit event of a read before handing out the data as [`Audited<T>`]),
//! and applies what must happen after the commit (a mode change,
//! announcements). The HTTP adapter, the web UI and the CLI call these
//! functions directly; nothing here knows HTTP.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod actor;
pub mod audit;
pub mod audited;
pub mod authz;
pub mod bcp;
pub mod breakglass;
pub mod bulk;
pub mod cluster;
pub mod commit;
pub mod compliance;
pub mod config;
pub mod conformance;
pub mod continuity;
pub mod demo;
pub mod detect;
pub mod eaccounts;
pub mod error;
pub mod exchange;
pub mod forms;
pub mod init;
pub mod jobs;
pub mod jose;
pub mod keys;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod oauth;
pub mod records;
pub mod services;
pub mod syslog;
pub mod throttle;
pub mod tls;

pub use actor::{Actor, RequestCtx, TokenRef};
pub use audited::Audited;
pub use error::{Result, ServiceError};
pub use services::Services;
