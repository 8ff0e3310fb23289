//! mamori-server: the HTTPS adapter. It extracts a request, calls one use
//! case of `mamori-service` with the caller as an `Actor`, and renders the
//! answer (FHIR R4 JSON, the operations API's JSON, the web UI's pages,
//! AS2). It decides nothing itself: authorization, validation, audit and
//! state changes are the service layer's.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod api;
pub mod app;
pub mod demo;
pub mod fhir;
pub mod http;
mod limits;
pub mod server;
mod ui;

// The service layer's modules that tools and tests of the server reach
// through this crate.
pub use mamori_service::{config, continuity, keys, tls};
