//! mamori-core: the domain of mamori, without IO.
//!
//! Typed ids, time and the [`time::Clock`] trait, FHIR validation and search
//! rules, the operating [`mode::Mode`], and the access [`policy`]. Nothing in
//! this crate touches a file, a socket, a database or the system clock
//! (except [`time::SystemClock`], which callers inject).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bcp;
pub mod consent;
pub mod continuity;
pub mod fhir;
pub mod ids;
pub mod maintenance;
pub mod mode;
pub mod policy;
pub mod time;
