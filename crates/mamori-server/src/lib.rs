//! mamori-server: the HTTPS application — FHIR R4 REST API, operations
//! API, TLS, authentication, first-run initialization.
//!
//! Handlers never touch the database directly for writes: every change
//! and every audit event goes through the store's group-commit writer.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit_api;
pub mod bcp_api;
pub mod breakglass;
pub mod cluster;
pub mod config;
pub mod continuity;
pub mod demo;
pub mod detect;
pub mod eaccounts;
pub mod error;
pub mod exchange;
pub mod fhir;
pub mod keys;
pub mod maintenance;
pub mod metrics;
pub mod notify;
pub mod ops;
pub mod server;
pub mod state;
pub mod syslog;
pub mod tls;
pub mod ui;
