//! mamori-exchange: secure exchange with outside institutions (guideline
//! 6.10): S/MIME with OpenSSL's CMS, AS2 messages and signed MDNs, the
//! partner registry's model, and the AS2 client.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod as2;
pub mod client;
pub mod cms;
pub mod der;
pub mod fhirsig;
pub mod mime;
pub mod partner;
