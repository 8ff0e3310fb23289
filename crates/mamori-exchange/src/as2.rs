//! AS2 (RFC 4130) messages and MDNs: building what mamori sends and
//! opening what it receives. HTTP itself is elsewhere; this module works on
//! header lists and bodies.
//!
//! An outbound message is the payload as a MIME entity with
//! `Content-Transfer-Encoding: binary`, signed as `multipart/signed`
//! (detached CMS, SHA-256), the whole signed entity encrypted to the
//! recipient (`application/pkcs7-mime`), sent with the AS2 headers and a
//! request for a signed receipt. The MIC is the digest of the first part of
//! the signed entity, byte for byte: what the receiver verified.

use base64::Engine as _;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

use crate::cms::{self, CmsError, ContentCipher, Digest, EnvelopeInfo, Identity, KeyTransport, SignatureInfo};
use crate::mime::{self, ContentType, Headers};

/// mamori speaks AS2 1.1 (no compression).
pub const AS2_VERSION: &str = "1.1";

/// A Message Integrity Check: a digest and its algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mic {
    /// The digest, base64.
    pub b64: String,
    /// The digest algorithm.
    pub digest: Digest,
}

impl Mic {
    /// The MIC of `data` with `digest`.
    pub fn of(data: &[u8], digest: Digest) -> Result<Mic, CmsError> {
        Ok(Mic { b64: base64::engine::general_purpose::STANDARD.encode(digest.hash(data)?), digest })
    }
    /// The `Received-content-MIC` field value: `<base64>, sha-256`.
    pub fn field(&self) -> String {
        format!("{}, {}", self.b64, self.digest.micalg())
    }
    /// Parses a `Received-content-MIC` field value; `None` if the algorithm is
    /// unknown or the value malformed.
    pub fn parse(v: &str) -> Option<Mic> {
        let (b, alg) = v.split_once(',')?;
        Some(Mic { b64: b.trim().to_owned(), digest: Digest::parse(alg)? })
    }
    /// Same digest: the algorithm must match and so must the value.
    pub fn matches(&self, other: &Mic) -> bool {
        self.digest == other.digest && self.b64 == other.b64
    }
}

/// A payload signed as a `multipart/signed` entity.
#[derive(Debug, Clone)]
pub struct SignedPayload {
    /// The complete entity (its Content-Type line, a blank line, the body).
    pub entity: Vec<u8>,
    /// The MIC of the signed first part: what the receipt must return.
    pub mic: Mic,
    /// SHA-256 of the payload alone, hex.
    pub payload_sha256: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn safe_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Signs `payload` of `content_type` as a `multipart/signed` entity.
pub fn sign_payload(
    id: &Identity,
    content_type: &str,
    filename: &str,
    payload: &[u8],
) -> Result<SignedPayload, CmsError> {
    if !safe_token(content_type) || !filename.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) {
        return Err(CmsError::Malformed("content type or file name has characters not allowed in a header".into()));
    }
    // One buffer: the payload is copied once; part 1 is signed in place.
    let b = mime::boundary(&[payload]);
    let ct = format!("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"{b}\"");
    let part1_headers = format!(
        "Content-Type: {content_type}\r\nContent-Transfer-Encoding: binary\r\nContent-Disposition: attachment; filename=\"{filename}\"\r\n\r\n"
    );
    let mut entity = Vec::with_capacity(payload.len() + 8192);
    entity.extend_from_slice(format!("Content-Type: {ct}\r\n\r\n--{b}\r\n").as_bytes());
    let start = entity.len();
    entity.extend_from_slice(part1_headers.as_bytes());
    entity.extend_from_slice(payload);
    let part1 = start..entity.len();
    let sig = cms::sign_detached(id, &entity[part1.clone()])?;
    let mic = Mic::of(&entity[part1], Digest::Sha256)?;
    let part2 = mime::entity(
        &[
            ("Content-Type", "application/pkcs7-signature; name=\"smime.p7s\"; smime-type=signed-data"),
            ("Content-Transfer-Encoding", "base64"),
            ("Content-Disposition", "attachment; filename=\"smime.p7s\""),
        ],
        mime::base64_lines(&sig).as_bytes(),
    );
    entity.extend_from_slice(format!("\r\n--{b}\r\n").as_bytes());
    entity.extend_from_slice(&part2);
    entity.extend_from_slice(format!("\r\n--{b}--\r\n").as_bytes());
    let payload_sha256 = hex(&Digest::Sha256.hash(payload)?);
    Ok(SignedPayload { entity, mic, payload_sha256 })
}

/// An HTTP message to send: header fields and body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outgoing {
    /// The header fields, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    #[serde(skip)]
    pub body: Vec<u8>,
}

/// How the receipt is requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdnRequest {
    /// `Disposition-Notification-To` (any value; AS2 uses it as a flag).
    pub notify_to: String,
    /// For an asynchronous MDN: where the partner posts it.
    pub async_url: Option<String>,
}

/// The headers and encrypted body of an AS2 message.
#[allow(clippy::too_many_arguments)]
pub fn envelope(
    from: &str,
    to: &str,
    message_id: &str,
    subject: &str,
    date: &str,
    signed: &SignedPayload,
    recipient: &X509,
    cipher: &ContentCipher,
    kt: &KeyTransport,
    mdn: &MdnRequest,
) -> Result<Outgoing, CmsError> {
    for v in [from, to, message_id] {
        if !safe_token(v) {
            return Err(CmsError::Malformed(format!("'{v}' is not a valid AS2 header value")));
        }
    }
    let body = cms::encrypt(&signed.entity, recipient, cipher, kt)?;
    let smime = if cipher.is_aead() { "authEnveloped-data" } else { "enveloped-data" };
    let mut h = vec![
        ("AS2-Version".to_owned(), AS2_VERSION.to_owned()),
        ("AS2-From".into(), from.into()),
        ("AS2-To".into(), to.into()),
        ("Message-ID".into(), format!("<{message_id}>")),
        ("Subject".into(), subject.chars().filter(|c| !c.is_control()).collect()),
        ("Date".into(), date.into()),
        ("MIME-Version".into(), "1.0".into()),
        ("Content-Type".into(), format!("application/pkcs7-mime; smime-type={smime}; name=\"smime.p7m\"")),
        ("Content-Disposition".into(), "attachment; filename=\"smime.p7m\"".into()),
        ("Content-Transfer-Encoding".into(), "binary".into()),
        ("Disposition-Notification-To".into(), mdn.notify_to.clone()),
        (
            "Disposition-Notification-Options".into(),
            "signed-receipt-protocol=required, pkcs7-signature; signed-receipt-micalg=required, sha-256".into(),
        ),
    ];
    if let Some(u) = &mdn.async_url {
        h.push(("Receipt-Delivery-Option".into(), u.clone()));
    }
    Ok(Outgoing { headers: h, body })
}

/// Strips the angle brackets of a Message-ID.
pub fn bare_message_id(v: &str) -> String {
    v.trim().trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// Removes RFC 4130 quoting from an AS2 name.
pub fn unquote_name(v: &str) -> String {
    let v = v.trim();
    match v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_owned(),
    }
}

/// What the receiver's policy for one partner allows.
#[derive(Debug, Clone)]
pub struct InboundPolicy<'a> {
    /// The only certificate whose signatures are accepted.
    pub signer: &'a X509,
    /// Content encryptions accepted.
    pub ciphers: &'a [ContentCipher],
    /// Key transports accepted.
    pub key_transports: &'a [KeyTransport],
    /// Signature digests accepted.
    pub digests: &'a [Digest],
}

/// Why an inbound message failed, as an RFC 4130 disposition modifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The message could not be decrypted.
    #[error("decryption-failed: {0}")]
    DecryptionFailed(String),
    /// The signature is missing or does not verify.
    #[error("authentication-failed: {0}")]
    AuthenticationFailed(String),
    /// The message is unencrypted, unsigned, or uses an algorithm this
    /// partner may not use.
    #[error("insufficient-message-security: {0}")]
    InsufficientSecurity(String),
    /// Anything else (malformed MIME, headers).
    #[error("unexpected-processing-error: {0}")]
    Unexpected(String),
}

impl Failure {
    /// The RFC 4130 disposition modifier (`decryption-failed`, ...).
    pub fn modifier(&self) -> &'static str {
        match self {
            Failure::DecryptionFailed(_) => "decryption-failed",
            Failure::AuthenticationFailed(_) => "authentication-failed",
            Failure::InsufficientSecurity(_) => "insufficient-message-security",
            Failure::Unexpected(_) => "unexpected-processing-error",
        }
    }
}

/// A verified inbound payload.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The payload's MIME type.
    pub content_type: String,
    /// The file name the sender gave, if any.
    pub filename: Option<String>,
    /// The payload, decoded.
    pub payload: Vec<u8>,
    /// The MIC of the signed part, for the receipt.
    pub mic: Mic,
    /// How the message was encrypted.
    pub envelope: EnvelopeInfo,
    /// How it was signed.
    pub signature: SignatureInfo,
}

/// Which MIC algorithm the sender asked for in
/// `Disposition-Notification-Options` (the first one mamori supports).
pub fn requested_mic_alg(options: Option<&str>) -> Option<Digest> {
    let o = options?;
    let section = o.split(';').find(|s| s.trim().to_ascii_lowercase().starts_with("signed-receipt-micalg"))?;
    let (_, v) = section.split_once('=')?;
    v.split(',').skip(1).filter_map(Digest::parse).next()
}

/// Whether a part is S/MIME compressed data (RFC 5402), at any layer.
fn compressed(ct: &ContentType) -> Option<Failure> {
    let smime = ct.param("smime-type").map(str::to_ascii_lowercase);
    (matches!(ct.mime.as_str(), "application/pkcs7-mime" | "application/x-pkcs7-mime")
        && smime.as_deref() == Some("compressed-data"))
    .then(|| {
        Failure::Unexpected(
            "the message is compressed (smime-type=compressed-data, RFC 5402); mamori accepts uncompressed \
             messages only: send it signed and encrypted without compression"
                .into(),
        )
    })
}

/// Decrypts and verifies an inbound AS2 message (`headers` are the HTTP
/// headers, `body` the HTTP body).
pub fn open(
    headers: &Headers,
    body: &[u8],
    id: &Identity,
    policy: &InboundPolicy<'_>,
    mic_alg: Option<Digest>,
) -> Result<Opened, Failure> {
    let ct = headers.content_type().map_err(|e| Failure::Unexpected(e.to_string()))?;
    if let Some(f) = compressed(&ct) {
        return Err(f);
    }
    let smime = ct.param("smime-type").map(str::to_ascii_lowercase);
    let encrypted = matches!(ct.mime.as_str(), "application/pkcs7-mime" | "application/x-pkcs7-mime")
        && matches!(smime.as_deref(), Some("enveloped-data") | Some("authenveloped-data") | None);
    if !encrypted {
        return Err(Failure::InsufficientSecurity(format!(
            "the message is not encrypted (Content-Type {}); this partner's messages must be signed and encrypted",
            ct.mime
        )));
    }
    let der = mime::decode_body(headers, body).map_err(|e| Failure::DecryptionFailed(e.to_string()))?;
    let info = cms::inspect_envelope(&der).map_err(|e| Failure::DecryptionFailed(e.to_string()))?;
    if !policy.ciphers.contains(&info.cipher) {
        return Err(Failure::InsufficientSecurity(format!(
            "content encryption {} is not allowed for this partner",
            info.cipher.name()
        )));
    }
    if let Some(k) = info.key_transport.iter().find(|k| !policy.key_transports.contains(k)) {
        return Err(Failure::InsufficientSecurity(format!(
            "key transport {} is not allowed for this partner",
            k.name()
        )));
    }
    let plain = cms::decrypt(&der, id).map_err(|e| Failure::DecryptionFailed(e.to_string()))?;
    let (h2, b2) = mime::split_entity(&plain).map_err(|e| Failure::Unexpected(e.to_string()))?;
    let ct2 = h2.content_type().map_err(|e| Failure::Unexpected(e.to_string()))?;
    if let Some(f) = compressed(&ct2) {
        return Err(f);
    }
    if ct2.mime != "multipart/signed" {
        return Err(Failure::InsufficientSecurity(format!(
            "the message is not signed (Content-Type {}); this partner's messages must be signed",
            ct2.mime
        )));
    }
    let (signed_part, sig) = split_signed(&ct2, b2).map_err(Failure::AuthenticationFailed)?;
    let signature = cms::verify_detached(&sig, signed_part, policy.signer, policy.digests).map_err(|e| match e {
        CmsError::Algorithm(m) => Failure::InsufficientSecurity(m),
        other => Failure::AuthenticationFailed(other.to_string()),
    })?;
    let (h3, b3) = mime::split_entity(signed_part).map_err(|e| Failure::Unexpected(e.to_string()))?;
    let ct3 = h3.content_type().map_err(|e| Failure::Unexpected(e.to_string()))?;
    if let Some(f) = compressed(&ct3) {
        return Err(f);
    }
    let payload = mime::decode_body(&h3, b3).map_err(|e| Failure::Unexpected(e.to_string()))?;
    let filename = h3
        .get("content-disposition")
        .and_then(|d| ContentType::parse(&format!("x/x; {d}")).ok())
        .and_then(|c| c.param("filename").map(str::to_owned));
    let digest = mic_alg.filter(|d| policy.digests.contains(d)).unwrap_or(signature.digests[0]);
    let mic = Mic::of(signed_part, digest).map_err(|e| Failure::Unexpected(e.to_string()))?;
    Ok(Opened { content_type: ct3.mime, filename, payload, mic, envelope: info, signature })
}

/// The signed first part and the DER signature of a `multipart/signed` body.
fn split_signed<'a>(ct: &ContentType, body: &'a [u8]) -> Result<(&'a [u8], Vec<u8>), String> {
    let b = ct.param("boundary").ok_or("multipart/signed without a boundary")?;
    let parts = mime::split_multipart(body, b).map_err(|e| e.to_string())?;
    let [signed, sigpart] = parts.as_slice() else {
        return Err(format!("multipart/signed has {} parts, expected 2", parts.len()));
    };
    let (hs, bs) = mime::split_entity(sigpart).map_err(|e| e.to_string())?;
    let sct = hs.content_type().map_err(|e| e.to_string())?;
    if !matches!(sct.mime.as_str(), "application/pkcs7-signature" | "application/x-pkcs7-signature") {
        return Err(format!("the signature part is {}, not application/pkcs7-signature", sct.mime));
    }
    let sig = mime::decode_body(&hs, bs).map_err(|e| e.to_string())?;
    Ok((signed, sig))
}

/// An MDN's disposition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "modifier", rename_all = "snake_case")]
pub enum Disposition {
    /// `processed`: the message was received and accepted.
    Processed,
    /// `processed/warning: <modifier>`
    Warning(String),
    /// `processed/error: <modifier>`
    Error(String),
    /// `failed/failure: <modifier>`
    Failed(String),
}

impl Disposition {
    /// The `Disposition` field value
    /// (`automatic-action/MDN-sent-automatically; processed`).
    pub fn field(&self) -> String {
        let tail = match self {
            Disposition::Processed => "processed".to_owned(),
            Disposition::Warning(m) => format!("processed/warning: {m}"),
            Disposition::Error(m) => format!("processed/error: {m}"),
            Disposition::Failed(m) => format!("failed/failure: {m}"),
        };
        format!("automatic-action/MDN-sent-automatically; {tail}")
    }
    /// Parses a `Disposition` field value; anything unknown is a failure.
    pub fn parse(v: &str) -> Disposition {
        let tail = v.rsplit(';').next().unwrap_or("").trim();
        let (ty, modifier) = match tail.split_once(':') {
            Some((t, m)) => (t.trim().to_ascii_lowercase(), m.trim().to_owned()),
            None => (tail.to_ascii_lowercase(), String::new()),
        };
        match ty.as_str() {
            "processed" => Disposition::Processed,
            "processed/warning" => Disposition::Warning(modifier),
            "processed/error" => Disposition::Error(modifier),
            _ => Disposition::Failed(if modifier.is_empty() { ty } else { modifier }),
        }
    }
    /// The disposition without its action mode (`processed/error: ...`).
    pub fn short(&self) -> String {
        self.field().rsplit(';').next().unwrap_or("").trim().to_owned()
    }
}

/// The machine-readable part of an MDN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MdnReport {
    /// `Reporting-UA`: the software that wrote the MDN.
    pub reporting_ua: String,
    /// `Original-Recipient` (the receiver's AS2 name).
    pub original_recipient: String,
    /// `Final-Recipient` (the receiver's AS2 name).
    pub final_recipient: String,
    /// `Original-Message-ID`: the message the MDN is for, without `<>`.
    pub original_message_id: String,
    /// `Received-content-MIC`, if the MDN has one.
    pub mic: Option<Mic>,
    /// What happened to the message.
    pub disposition: Disposition,
}

/// Builds a signed MDN (sent as the HTTP response, or posted for an
/// asynchronous receipt).
pub fn build_mdn(
    id: &Identity,
    from: &str,
    to: &str,
    mdn_message_id: &str,
    date: &str,
    report: &MdnReport,
    text: &str,
) -> Result<Outgoing, CmsError> {
    let mut fields = format!(
        "Reporting-UA: {}\r\nOriginal-Recipient: rfc822; {}\r\nFinal-Recipient: rfc822; {}\r\nOriginal-Message-ID: <{}>\r\n",
        report.reporting_ua, report.original_recipient, report.final_recipient, report.original_message_id
    );
    if let Some(m) = &report.mic {
        fields.push_str(&format!("Received-content-MIC: {}\r\n", m.field()));
    }
    fields.push_str(&format!("Disposition: {}\r\n", report.disposition.field()));
    let text_part = mime::entity(
        &[("Content-Type", "text/plain; charset=utf-8"), ("Content-Transfer-Encoding", "8bit")],
        format!("{}\r\n", text.replace("\r\n", "\n").replace('\n', "\r\n")).as_bytes(),
    );
    let dn_part = mime::entity(
        &[("Content-Type", "message/disposition-notification"), ("Content-Transfer-Encoding", "7bit")],
        fields.as_bytes(),
    );
    let rb = mime::boundary(&[&text_part, &dn_part]);
    let report_body = mime::multipart_body(&rb, &[&text_part, &dn_part]);
    let rct = format!("multipart/report; report-type=disposition-notification; boundary=\"{rb}\"");
    let report_entity = mime::entity(&[("Content-Type", &rct)], &report_body);
    let sig = cms::sign_detached(id, &report_entity)?;
    let sig_part = mime::entity(
        &[
            ("Content-Type", "application/pkcs7-signature; name=\"smime.p7s\"; smime-type=signed-data"),
            ("Content-Transfer-Encoding", "base64"),
            ("Content-Disposition", "attachment; filename=\"smime.p7s\""),
        ],
        mime::base64_lines(&sig).as_bytes(),
    );
    // The outer boundary must not be a prefix of the inner one either.
    let mut ob = mime::boundary(&[&report_entity]);
    while rb.starts_with(&ob) || ob.starts_with(&rb) {
        ob = mime::boundary(&[&report_entity]);
    }
    let body = mime::multipart_body(&ob, &[&report_entity, &sig_part]);
    let headers = vec![
        ("AS2-Version".to_owned(), AS2_VERSION.to_owned()),
        ("AS2-From".into(), from.into()),
        ("AS2-To".into(), to.into()),
        ("Message-ID".into(), format!("<{mdn_message_id}>")),
        ("Date".into(), date.into()),
        ("MIME-Version".into(), "1.0".into()),
        (
            "Content-Type".into(),
            format!("multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"{ob}\""),
        ),
    ];
    Ok(Outgoing { headers, body })
}

/// A received MDN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMdn {
    /// Whether it was signed (the signature was verified if a signer was given).
    pub signed: bool,
    /// The MDN's own Message-ID, without `<>`.
    pub message_id: Option<String>,
    /// Its machine-readable part.
    pub report: MdnReport,
}

/// Why a received MDN is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MdnError {
    /// The body is not an MDN (what it is).
    #[error("not an MDN: {0}")]
    NotMdn(String),
    /// A signed receipt was required and this one is not signed.
    #[error("the MDN is not signed, but a signed receipt was required")]
    Unsigned,
    /// The signature does not verify against the partner's certificate.
    #[error("the MDN's signature does not verify against the partner's certificate: {0}")]
    BadSignature(String),
    /// The MDN is malformed (what is wrong).
    #[error("malformed MDN: {0}")]
    Malformed(String),
}

/// Whether a POST carries an MDN (an asynchronous receipt) rather than a message.
pub fn is_mdn(headers: &Headers, body: &[u8]) -> bool {
    let Ok(ct) = headers.content_type() else { return false };
    match ct.mime.as_str() {
        "multipart/report" => true,
        "multipart/signed" => ct
            .param("boundary")
            .and_then(|b| mime::split_multipart(body, b).ok())
            .and_then(|p| p.first().and_then(|f| mime::split_entity(f).ok()).map(|(h, _)| h))
            .and_then(|h| h.content_type().ok())
            .is_some_and(|c| c.mime == "multipart/report"),
        _ => false,
    }
}

/// Parses an MDN and, when `signer` is given, requires and verifies its
/// signature against that certificate only.
pub fn parse_mdn(
    headers: &Headers,
    body: &[u8],
    signer: Option<&X509>,
    digests: &[Digest],
) -> Result<ReceivedMdn, MdnError> {
    let ct = headers.content_type().map_err(|e| MdnError::NotMdn(e.to_string()))?;
    let message_id = headers.get("message-id").map(bare_message_id);
    let (report_ct, report_body, signed) = match ct.mime.as_str() {
        "multipart/signed" => {
            let (part, sig) = split_signed(&ct, body).map_err(MdnError::Malformed)?;
            if let Some(cert) = signer {
                cms::verify_detached(&sig, part, cert, digests).map_err(|e| MdnError::BadSignature(e.to_string()))?;
            }
            let (h, b) = mime::split_entity(part).map_err(|e| MdnError::Malformed(e.to_string()))?;
            (h.content_type().map_err(|e| MdnError::Malformed(e.to_string()))?, b, true)
        }
        "multipart/report" => {
            if signer.is_some() {
                return Err(MdnError::Unsigned);
            }
            (ct.clone(), body, false)
        }
        other => return Err(MdnError::NotMdn(format!("Content-Type {other}"))),
    };
    if report_ct.mime != "multipart/report" {
        return Err(MdnError::NotMdn(format!("signed content is {}, not multipart/report", report_ct.mime)));
    }
    let b = report_ct.param("boundary").ok_or_else(|| MdnError::Malformed("report without boundary".into()))?;
    let parts = mime::split_multipart(report_body, b).map_err(|e| MdnError::Malformed(e.to_string()))?;
    let dn = parts
        .iter()
        .filter_map(|p| mime::split_entity(p).ok())
        .find(|(h, _)| h.content_type().is_ok_and(|c| c.mime == "message/disposition-notification"))
        .ok_or_else(|| MdnError::Malformed("no message/disposition-notification part".into()))?;
    let decoded = mime::decode_body(&dn.0, dn.1).map_err(|e| MdnError::Malformed(e.to_string()))?;
    let mut block = decoded;
    block.extend_from_slice(b"\r\n\r\n");
    let (f, _) = mime::split_entity(&block).map_err(|e| MdnError::Malformed(e.to_string()))?;
    let addr =
        |v: Option<&str>| v.map(|s| s.split_once(';').map_or(s, |(_, a)| a).trim().to_owned()).unwrap_or_default();
    let report = MdnReport {
        reporting_ua: f.get("reporting-ua").unwrap_or("").to_owned(),
        original_recipient: addr(f.get("original-recipient")),
        final_recipient: addr(f.get("final-recipient")),
        original_message_id: f
            .get("original-message-id")
            .map(bare_message_id)
            .ok_or_else(|| MdnError::Malformed("no Original-Message-ID".into()))?,
        mic: f.get("received-content-mic").and_then(Mic::parse),
        disposition: Disposition::parse(
            f.get("disposition").ok_or_else(|| MdnError::Malformed("no Disposition field".into()))?,
        ),
    };
    Ok(ReceivedMdn { signed, message_id, report })
}
