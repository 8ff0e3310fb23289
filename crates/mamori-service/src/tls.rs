//! TLS for every listener: rustls with the ring provider, restricted to
//! the high-security profile of Japan's TLS cipher-suite configuration
//! guideline (CRYPTREC e-Government recommended ciphers): TLS 1.3 and 1.2
//! with AES-GCM and ECDHE on P-256/P-384 only.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::keys::{read_secret, KeyError};

/// The cipher suites and groups mamori offers (GL-TLS); shared with the
/// AS2 client.
pub use mamori_exchange::client::provider;

/// Why a TLS certificate, key or configuration cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The key file cannot be read (or is readable by others).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A PEM file that cannot be read or holds nothing usable (file, why).
    #[error("{0}: {1}")]
    Pem(String, String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Reads a PEM certificate chain; an error if the file holds none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem(path.display().to_string(), "no certificate found".into()));
    }
    Ok(certs)
}

/// Reads a PEM private key (a secret file: mode 0600).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = read_secret(path)?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| TlsError::Pem(path.display().to_string(), e.to_string()))?
        .ok_or_else(|| TlsError::Pem(path.display().to_string(), "no private key found".into()))
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12_UP: [&rustls::SupportedProtocolVersion; 2] = [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: &str) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if min == "1.3" {
        &TLS13_ONLY
    } else {
        &TLS12_UP
    }
}

/// Server config without client certificates (the main HTTPS listener).
pub fn server_config(cert: &Path, key: &Path, min_version: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions(min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Server config requiring a client certificate issued by one of `roots`
/// (partner and maintenance listeners).
pub fn mtls_server_config(
    cert: &Path,
    key: &Path,
    min_version: &str,
    roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store.add(r).map_err(|e| TlsError::Config(e.to_string()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(store), Arc::new(provider()))
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(versions(min_version))
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
