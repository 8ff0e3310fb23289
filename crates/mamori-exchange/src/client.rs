//! The AS2 HTTP client: HTTPS with mamori's client certificate, trusting
//! only the partner's own CA, no redirects, no proxies, and failures
//! classified by where they happened (EX-B1a: the segment of the path).

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring as ring_provider;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::as2::Outgoing;
use crate::mime::Headers;

/// The cipher suites and groups mamori offers and accepts (GL-TLS): the
/// high-security profile of Japan's TLS cipher-suite configuration
/// guideline, TLS 1.3/1.2 with AES-GCM and ECDHE on P-256/P-384.
pub fn provider() -> CryptoProvider {
    use ring_provider::cipher_suite as cs;
    use ring_provider::kx_group;
    CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![kx_group::SECP256R1, kx_group::SECP384R1],
        ..ring_provider::default_provider()
    }
}

/// Where along the path a send failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Our side: building, signing, encrypting, our configuration.
    Sender,
    /// The network between us (connection refused, timeout, reset).
    Path,
    /// TLS authentication of the partner (its certificate) or of us by it.
    PartnerTls,
    /// The partner's processing: HTTP errors, MDN errors (decryption,
    /// verification), missing or invalid MDNs.
    Partner,
}

impl Segment {
    /// The segment's name in the ledger and the API (`partner_tls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::Sender => "sender",
            Segment::Path => "path",
            Segment::PartnerTls => "partner_tls",
            Segment::Partner => "partner",
        }
    }
}

/// Why a send failed, and whose side it failed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (segment: {})", segment.as_str())]
pub struct SendError {
    /// Where along the path it failed.
    pub segment: Segment,
    /// What failed.
    pub message: String,
    /// Worth retrying later.
    pub transient: bool,
}

/// mamori's TLS client identity.
pub struct ClientIdentity {
    /// The certificate chain presented, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The private key of the leaf certificate.
    pub key: PrivateKeyDer<'static>,
}

/// An HTTP client for one partner, with the TLS configuration it was built
/// from (kept to find out why a connection failed).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

/// An HTTP client for one partner: trusts only `ca_pem`, presents `id`.
pub fn client_for(ca_pem: &str, id: &ClientIdentity, timeout: Duration) -> Result<Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile_certs(ca_pem)?;
    for c in certs {
        roots.add(c).map_err(|e| format!("partner CA: {e}"))?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.certs.clone(), id.key.clone_key())
        .map_err(|e| format!("client certificate: {e}"))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(cfg.clone())
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(Client { http, tls: Arc::new(cfg) })
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn rustls_pemfile_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = openssl::x509::X509::stack_from_pem(pem.as_bytes())
        .map_err(|e| format!("partner CA: {e}"))?
        .iter()
        .map(|c| c.to_der().map(CertificateDer::from))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("partner CA: no certificate".into());
    }
    Ok(certs)
}

/// The partner's HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The response's header fields.
    pub headers: Headers,
    /// The response body.
    pub body: Vec<u8>,
}

fn classify(e: &reqwest::Error) -> SendError {
    // The TLS error may sit inside io::Errors nested in each other (the
    // connector wraps the TLS stream's InvalidData error in one of its
    // own), and io::Error's `source` skips its payload: both are followed.
    let mut tls = None;
    let mut todo: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(s) = todo.pop() {
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            tls = Some(r.to_string());
            break;
        }
        if let Some(inner) = s.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            todo.push(inner);
        }
        if let Some(next) = s.source() {
            todo.push(next);
        }
    }
    let chain = {
        let mut parts = vec![e.to_string()];
        let mut s = std::error::Error::source(e);
        while let Some(x) = s {
            parts.push(x.to_string());
            s = x.source();
        }
        parts.join(": ")
    };
    match tls {
        Some(t) => SendError { segment: Segment::PartnerTls, message: format!("TLS: {t}"), transient: true },
        None if e.is_timeout() => {
            SendError { segment: Segment::Path, message: format!("timed out: {chain}"), transient: true }
        }
        None => SendError { segment: Segment::Path, message: chain, transient: true },
    }
}

/// Why the partner refused our TLS connection, if it did.
///
/// Under TLS 1.3 the client's handshake is over before the server has
/// looked at the client's certificate, so a partner's refusal arrives as an
/// alert after the request was handed to the connection. The HTTP client
/// may then report only that the connection closed ("connection was not
/// ready", a reset) and lose the alert: the operator would be sent to look
/// at the network when the partner does not trust our certificate. On such
/// a failure one more handshake is made, nothing but TLS: it is closed at
/// once and the answer read. An alert is the partner's refusal; a clean
/// close means TLS was not the cause.
async fn tls_refusal(tls: &Arc<rustls::ClientConfig>, url: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(url).ok()?;
    if url.scheme() != "https" {
        return None;
    }
    let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = url.port_or_known_default()?;
    let name = rustls::pki_types::ServerName::try_from(host.clone()).ok()?;
    let probe = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await.ok()?;
        let mut s = match tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await {
            Ok(s) => s,
            Err(e) => return rustls_error(&e),
        };
        if let Err(e) = s.shutdown().await {
            // The alert may already be there to read.
            tracing::debug!(error = %e, "TLS probe: close");
        }
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return rustls_error(&e),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, probe).await.ok().flatten()
}

fn rustls_error(e: &std::io::Error) -> Option<String> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()).map(|r| r.to_string())
}

/// Posts an AS2 message (or an asynchronous MDN) and reads the response,
/// up to `max_response` bytes.
pub async fn post(client: &Client, url: &str, out: &Outgoing, max_response: usize) -> Result<Response, SendError> {
    let mut req = client.http.post(url);
    for (k, v) in &out.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let mut resp = match req.body(out.body.clone()).send().await {
        Ok(r) => r,
        Err(e) => {
            let err = classify(&e);
            if err.segment == Segment::Path && !e.is_timeout() {
                if let Some(t) = tls_refusal(&client.tls, url).await {
                    return Err(SendError {
                        segment: Segment::PartnerTls,
                        message: format!("TLS: {t} (the request failed with: {})", err.message),
                        transient: true,
                    });
                }
            }
            return Err(err);
        }
    };
    let status = resp.status().as_u16();
    let mut headers = Headers::default();
    for (k, v) in resp.headers() {
        headers.push(k.as_str(), String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e))? {
        if body.len() + chunk.len() > max_response {
            return Err(SendError {
                segment: Segment::Partner,
                message: format!("the partner's response exceeds {max_response} bytes"),
                transient: false,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Response { status, headers, body })
}
