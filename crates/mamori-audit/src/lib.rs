//! mamori-audit: audit events as tamper-evident evidence.
//!
//! The canonical leaf encoding of an event ([`event`]), the RFC 6962 Merkle
//! tree with incremental append and proofs ([`merkle`]), and C2SP signed
//! checkpoints and cosignatures ([`note`]). No IO: the store persists nodes
//! and checkpoints; the verifier reads them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod event;
pub mod fhir;
pub mod merkle;
pub mod note;
pub mod verify;
