//! Exchange with partner institutions (guideline 6.10): the partner
//! registry API, sending documents (legal basis, signing, encryption, the
//! durable outbox), the inbound AS2 endpoint with mutual TLS, signed
//! receipts, and the exchange ledger.

pub mod clins;
pub mod inbound;
pub mod outbox;
pub mod partners;
pub mod send;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use mamori_exchange::client::{self, ClientIdentity};
use mamori_exchange::cms::Identity;
use mamori_exchange::partner::Partner;
use mamori_store::exchange::PartnerRow;
use mamori_store::StoreError;
use rustls::pki_types::CertificateDer;
use rustls::ServerConfig;

use crate::config::Config;
use crate::init::{DataDir, InitError as ServeError};
use crate::keys::{self, KeyError};
use crate::services::Services;
use crate::tls::{self, TlsError};

/// The institution's S/MIME certificate (PEM). This and the other key
/// files of the exchange identity are inside the data directory.
pub const INSTITUTION_CERT: &str = "keys/institution.cert.pem";
/// The institution's S/MIME private key (PEM).
pub const INSTITUTION_KEY: &str = "keys/institution.key.pem";
/// The exchange CA's certificate (PEM): issues the AS2 TLS certificate.
pub const EXCHANGE_CA_CERT: &str = "keys/exchange-ca.cert.pem";
/// The exchange CA's private key (PEM).
pub const EXCHANGE_CA_KEY: &str = "keys/exchange-ca.key.pem";
/// The AS2 listener's and client's TLS certificate (PEM).
pub const EXCHANGE_TLS_CERT: &str = "keys/exchange-tls.cert.pem";
/// Its private key (PEM).
pub const EXCHANGE_TLS_KEY: &str = "keys/exchange-tls.key.pem";

/// Creates the exchange CA and TLS certificate if they are missing (data
/// directories initialized before exchange existed get them at start).
pub fn ensure_keys(dd: &DataDir, cfg: &Config) -> Result<(), ServeError> {
    let ca_cert = dd.0.join(EXCHANGE_CA_CERT);
    if !ca_cert.exists() {
        let (c, k) = keys::exchange_ca(&cfg.institution.name, 3650)?;
        keys::write_secret(&dd.0.join(EXCHANGE_CA_KEY), k.as_bytes())?;
        keys::write_public(&ca_cert, c.as_bytes())?;
    }
    let tls_cert = dd.0.join(EXCHANGE_TLS_CERT);
    if !tls_cert.exists() {
        let ca_pem = std::fs::read(&ca_cert).map_err(|e| KeyError::Io(ca_cert.clone(), e))?;
        let ca_key = keys::read_secret(&dd.0.join(EXCHANGE_CA_KEY))?;
        let (c, k) = keys::exchange_tls(&ca_pem, &ca_key, &cfg.institution.name, &cfg.exchange.tls_names, 825)?;
        keys::write_secret(&dd.0.join(EXCHANGE_TLS_KEY), k.as_bytes())?;
        keys::write_public(&tls_cert, c.as_bytes())?;
    }
    Ok(())
}

/// What the exchange needs at run time.
pub struct Ctx {
    /// This institution's AS2 identifier.
    pub as2_id: String,
    /// The institution's S/MIME identity (signing, decryption).
    pub identity: Arc<Identity>,
    /// The TLS identity for AS2 (client and server).
    pub tls: Arc<ClientIdentity>,
    tls_cert: std::path::PathBuf,
    tls_key: std::path::PathBuf,
    /// The exchange CA's certificate (PEM), for partners to trust.
    pub ca_pem: String,
    /// The AS2 TLS certificate (PEM), for partners to see.
    pub tls_cert_pem: String,
    /// Wakes the outbox worker.
    pub wake: tokio::sync::Notify,
    clients: Mutex<HashMap<(String, i64), client::Client>>,
    /// The URL partners post to, once the AS2 listener is bound.
    pub as2_url: RwLock<String>,
    /// The AS2 listener's TLS configuration, trusting the active partners' CAs.
    server_cfg: RwLock<Option<Arc<ServerConfig>>>,
}

fn read(dir: &Path, rel: &str) -> Result<Vec<u8>, ServeError> {
    std::fs::read(dir.join(rel)).map_err(|e| ServeError::Key(KeyError::Io(dir.join(rel), e)))
}

impl Ctx {
    /// Loads the exchange identity from the data directory.
    pub fn load(dd: &DataDir, cfg: &Config) -> Result<Ctx, ServeError> {
        let cert = read(&dd.0, INSTITUTION_CERT)?;
        let key = keys::read_secret(&dd.0.join(INSTITUTION_KEY))?;
        let identity =
            Identity::from_pem(&cert, &key).map_err(|e| ServeError::DataDir(format!("{INSTITUTION_CERT}: {e}")))?;
        let tls_cert = dd.0.join(EXCHANGE_TLS_CERT);
        let tls_key = dd.0.join(EXCHANGE_TLS_KEY);
        let certs = tls::load_certs(&tls_cert)?;
        let key = tls::load_key(&tls_key)?;
        let ca_pem = String::from_utf8_lossy(&read(&dd.0, EXCHANGE_CA_CERT)?).into_owned();
        let tls_cert_pem = String::from_utf8_lossy(&read(&dd.0, EXCHANGE_TLS_CERT)?).into_owned();
        Ok(Ctx {
            as2_id: cfg.as2_id(),
            identity: Arc::new(identity),
            tls: Arc::new(ClientIdentity { certs, key }),
            tls_cert,
            tls_key,
            ca_pem,
            tls_cert_pem,
            wake: tokio::sync::Notify::new(),
            clients: Mutex::new(HashMap::new()),
            as2_url: RwLock::new(String::new()),
            server_cfg: RwLock::new(None),
        })
    }

    /// The HTTP client for a partner's current registration.
    pub fn client(&self, p: &Partner, version: i64, timeout: Duration) -> Result<client::Client, String> {
        let key = (p.id.clone(), version);
        if let Ok(m) = self.clients.lock() {
            if let Some(c) = m.get(&key) {
                return Ok(c.clone());
            }
        }
        let c = client::client_for(&p.certificates.tls_ca, &self.tls, timeout)?;
        if let Ok(mut m) = self.clients.lock() {
            m.retain(|(id, _), _| id != &p.id);
            m.insert(key, c.clone());
        }
        Ok(c)
    }

    /// The URL partners post to; empty until the AS2 listener is bound.
    pub fn as2_url(&self) -> String {
        self.as2_url.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The AS2 listener's current TLS configuration.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.server_cfg.read().ok().and_then(|g| g.clone())
    }

    /// Rebuilds the AS2 listener's TLS configuration from the active
    /// partners' CAs (called at start and after every registry change).
    pub fn reload_tls(&self, partners: &[Partner], min_version: &str) -> Result<(), TlsError> {
        let mut roots: Vec<CertificateDer<'static>> = Vec::new();
        for p in partners.iter().filter(|p| p.status == mamori_exchange::partner::Status::Active) {
            for c in p.tls_cas().unwrap_or_default() {
                if let Ok(d) = c.to_der() {
                    roots.push(CertificateDer::from(d));
                }
            }
        }
        if roots.is_empty() {
            // No partner yet: only our own CA, whose certificates belong to no partner.
            roots = openssl::x509::X509::stack_from_pem(self.ca_pem.as_bytes())
                .map_err(|e| TlsError::Config(e.to_string()))?
                .iter()
                .filter_map(|c| c.to_der().ok())
                .map(CertificateDer::from)
                .collect();
        }
        let cfg = tls::mtls_server_config(&self.tls_cert, &self.tls_key, min_version, roots)?;
        if let Ok(mut g) = self.server_cfg.write() {
            *g = Some(cfg);
        }
        Ok(())
    }
}

/// Parses a stored registration.
pub fn partner_of(row: &PartnerRow) -> Result<Partner, StoreError> {
    serde_json::from_str(&row.doc).map_err(|e| StoreError::Internal(format!("partner {}: {e}", row.id)))
}

/// Reloads the AS2 listener's trust after the registry changed.
pub async fn reload(st: &Services) {
    let rows = match st.store.read(mamori_store::exchange::partners).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "could not read the partner registry");
            return;
        }
    };
    let partners: Vec<Partner> = rows.iter().filter_map(|r| partner_of(r).ok()).collect();
    if let Err(e) = st.exchange.reload_tls(&partners, &st.cfg.tls.min_version) {
        tracing::error!(error = %e, "could not rebuild the AS2 TLS configuration");
    }
}

/// After a change of the registry here: reload, and tell the other
/// servers to reload too.
pub async fn partners_changed(st: &Services) {
    reload(st).await;
    if let Some(c) = st.cluster.get() {
        c.send(crate::cluster::Notice::Partners);
    }
}

/// SHA-256 fingerprint (hex) of DER bytes.
pub fn fingerprint(der: &[u8]) -> String {
    openssl::sha::sha256(der).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a FHIR resource mirrors the partner registry (read-only through
/// FHIR; changed through the partner registry).
pub fn is_mirror(rtype: &str, id: &str) -> bool {
    matches!(rtype, "Organization" | "Endpoint") && id.starts_with("partner-")
}

/// RFC 7231 IMF-fixdate (the `Date` of an AS2 message).
pub fn http_date(t: mamori_core::time::Timestamp) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.secs();
    let days = secs.div_euclid(86_400);
    let (y, m, d) = mamori_core::time::civil_from_days(days);
    let sod = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS.get(days.rem_euclid(7) as usize).copied().unwrap_or("Thu"),
        MONTHS.get((m as usize).saturating_sub(1) % 12).copied().unwrap_or("Jan"),
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Parses an RFC 7231 IMF-fixdate (what [`http_date`] writes and HTTP
/// clients echo in `If-Modified-Since`); `None` for anything else.
pub fn parse_http_date(s: &str) -> Option<mamori_core::time::Timestamp> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let (_, rest) = s.trim().split_once(", ")?;
    let mut f = rest.split(' ');
    let (d, mon, y, hms, gmt) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
    if gmt != "GMT" || f.next().is_some() || d.len() != 2 || y.len() != 4 || hms.len() != 8 {
        return None;
    }
    let m = MONTHS.iter().position(|x| *x == mon)? as u32 + 1;
    let (d, y): (u32, i64) = (d.parse().ok()?, y.parse().ok()?);
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok().filter(|_| x.len() == 2));
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = mamori_core::time::days_from_civil(y, m, d);
    Some(mamori_core::time::Timestamp::from_secs(days * 86_400 + h * 3600 + mi * 60 + se))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mamori_core::time::Timestamp;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(Timestamp(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(Timestamp::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Timestamp::from_secs(784_111_777)));
        for bad in [
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad}");
        }
    }
}
