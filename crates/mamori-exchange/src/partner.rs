//! The partner registry's model (EX-B1a, EX-B1d, EX-B3): who a partner is,
//! how it is reached, what was agreed (relationship, contract,
//! responsibility demarcation, network), what it may receive, its
//! algorithm profile and its certificates.

use mamori_core::consent::{Purpose, Relationship};
use mamori_core::time::{parse_date_time, Timestamp};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::x509::X509;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cms::{ContentCipher, Digest, KeyTransport};

/// The JP Core identifier system of the 10-digit medical institution code.
pub const INSTITUTION_CODE_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
/// mamori's identifier system for partner ids.
pub const PARTNER_ID_SYSTEM: &str = "urn:mamori:partner";

/// A partner institution's registration: who it is, what was agreed, and
/// how messages to and from it are protected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    /// Stable id, e.g. the 10-digit medical institution code.
    pub id: String,
    /// The partner's name.
    pub name: String,
    /// The 10-digit medical institution code (医療機関コード), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution_code: Option<String>,
    /// Its AS2 identifier (`AS2-From`/`AS2-To`); unique among partners.
    pub as2_id: String,
    /// `https://host:port/path` of the partner's AS2 endpoint.
    pub endpoint: String,
    /// Whether it acts for the institution (delegation) or is a third party.
    pub relationship: Relationship,
    /// The contract the exchange is under.
    pub contract: Contract,
    /// Who is responsible for what, as the contract states.
    pub demarcation: Demarcation,
    /// The network the exchange crosses.
    pub network: Network,
    /// Payload content types the partner may send and receive.
    #[serde(default = "default_document_types")]
    pub document_types: Vec<String>,
    /// Purposes the contract covers.
    pub purposes: Vec<Purpose>,
    /// The algorithms used with it.
    #[serde(default)]
    pub profile: Profile,
    /// Its certificates.
    pub certificates: Certificates,
    /// Whether exchange with it is allowed now.
    #[serde(default)]
    pub status: Status,
}

fn default_document_types() -> Vec<String> {
    vec!["application/fhir+json".into()]
}

/// The contract the exchange is under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// The contract's reference (number, file, ...).
    pub reference: String,
    /// Its end date (`YYYY-MM-DD`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_until: Option<String>,
}

/// The responsibility demarcation agreed in the contract (責任分界点, EX-B1a).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demarcation {
    /// Who handles failures on the sending side (our equipment, up to the hand-over).
    pub sender_side: String,
    /// Who handles the network path (carrier, VPN, Internet).
    pub path: String,
    /// Who handles failures on the recipient's side.
    pub recipient_side: String,
    /// How a fault is isolated and who leads it.
    pub fault_isolation: String,
    /// Who may stop the exchange, and how.
    pub stopping: String,
    /// Where patients send complaints and disclosure requests.
    pub patient_enquiries: String,
    /// Operational contact of the partner (phone, mail).
    #[serde(default)]
    pub operations_contact: String,
}

impl Demarcation {
    /// The terms the contract must state that are left blank (registration
    /// refuses them; the compliance report names them).
    pub fn missing_terms(&self) -> Vec<&'static str> {
        [
            ("sender_side", &self.sender_side),
            ("path", &self.path),
            ("recipient_side", &self.recipient_side),
            ("fault_isolation", &self.fault_isolation),
            ("stopping", &self.stopping),
            ("patient_enquiries", &self.patient_enquiries),
        ]
        .into_iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
        .collect()
    }
}

/// The kind of network between the institutions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkKind {
    /// Leased line or closed IP network (閉域網).
    ClosedNetwork,
    /// Carrier-provided IP-VPN / Internet-VPN.
    IpVpn,
    /// The Internet, secured by TLS with client certificates.
    InternetTls,
}

/// Who secures the network path (EX-B3a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecuredBy {
    /// The carrier (closed network or VPN service).
    Carrier,
    /// The institutions themselves (TLS, their own VPN).
    Institution,
    /// Both the carrier and the institutions.
    Both,
}

/// The network the exchange crosses (EX-B3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The kind of network.
    pub kind: NetworkKind,
    /// Who secures the path, as the contract states (EX-B3a).
    pub secured_by: SecuredBy,
    /// The carrier providing it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
}

/// How the partner returns its receipt (MDN).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MdnMode {
    /// In the HTTP response to the message.
    Sync,
    /// Later, in a request of its own to mamori's AS2 endpoint.
    Async,
}

/// Per-partner algorithms. Defaults are interoperable and CRYPTREC-listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Profile {
    /// Content encryption of what mamori sends.
    pub cipher: ContentCipher,
    /// Key transport of what mamori sends (how the content key is encrypted
    /// to the partner).
    pub key_transport: KeyTransport,
    /// How mamori asks for the receipt.
    pub mdn: MdnMode,
    /// How long to wait for an asynchronous MDN before the send fails.
    pub async_mdn_timeout_minutes: u32,
    /// What mamori accepts from this partner.
    pub inbound_ciphers: Vec<ContentCipher>,
    /// Key transports accepted from this partner.
    pub inbound_key_transports: Vec<KeyTransport>,
    /// Signature digests accepted from this partner.
    pub inbound_digests: Vec<Digest>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            cipher: ContentCipher::Aes256Cbc,
            key_transport: KeyTransport::RsaPkcs1,
            mdn: MdnMode::Sync,
            async_mdn_timeout_minutes: 60,
            inbound_ciphers: vec![
                ContentCipher::Aes128Cbc,
                ContentCipher::Aes192Cbc,
                ContentCipher::Aes256Cbc,
                ContentCipher::Aes128Gcm,
                ContentCipher::Aes256Gcm,
            ],
            inbound_key_transports: vec![KeyTransport::RsaPkcs1, KeyTransport::RsaOaepSha256],
            inbound_digests: vec![Digest::Sha256, Digest::Sha384, Digest::Sha512],
        }
    }
}

/// Certificates, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificates {
    /// Verifies the partner's signatures (messages and MDNs).
    pub signing: String,
    /// What mamori encrypts to.
    pub encryption: String,
    /// The CA (or CAs, or the self-signed certificate) that issues the
    /// partner's TLS certificates: trusted for its server certificate when
    /// mamori connects, and for its client certificate when it connects.
    pub tls_ca: String,
}

/// Whether exchange with a partner is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Messages are sent to and accepted from it.
    #[default]
    Active,
    /// Nothing is sent to it or accepted from it.
    Suspended,
}

/// What mamori shows about one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Which certificate of the registration: `signing`, `encryption` or
    /// `tls_ca`.
    pub role: &'static str,
    /// The subject's distinguished name (`CN=..., O=...`).
    pub subject: String,
    /// The issuer's distinguished name.
    pub issuer: String,
    /// The SHA-256 fingerprint of the certificate (hex).
    pub sha256: String,
    /// From when it is valid (RFC 3339).
    pub not_before: String,
    /// From when it is valid (seconds since the Unix epoch).
    pub not_before_unix: i64,
    /// When it expires (RFC 3339).
    pub not_after: String,
    /// When it expires (seconds since the Unix epoch).
    pub not_after_unix: i64,
    /// Its key type and size (`RSA-2048`, `EC-prime256v1`).
    pub key: String,
}

fn name_text(n: &openssl::x509::X509NameRef) -> String {
    n.entries()
        .map(|e| {
            let k = e.object().nid().short_name().unwrap_or("?");
            let v = e.data().to_string().unwrap_or_default();
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn unix_of(t: &openssl::asn1::Asn1TimeRef) -> Result<i64, String> {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let d = epoch.diff(t).map_err(|e| e.to_string())?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Describes a certificate (PEM, possibly several).
pub fn cert_infos(role: &'static str, pem: &str) -> Result<Vec<CertInfo>, String> {
    let certs = X509::stack_from_pem(pem.as_bytes()).map_err(|e| format!("{role}: not a PEM certificate ({e})"))?;
    if certs.is_empty() {
        return Err(format!("{role}: no certificate"));
    }
    certs
        .iter()
        .map(|c| {
            let na = unix_of(c.not_after())?;
            let nb = unix_of(c.not_before())?;
            let key = c.public_key().map_err(|e| e.to_string())?;
            let key = match (key.rsa(), key.ec_key()) {
                (Ok(r), _) => format!("RSA-{}", r.size() * 8),
                (_, Ok(e)) => format!("EC-{}", e.group().curve_name().and_then(|n| n.short_name().ok()).unwrap_or("?")),
                _ => "other".into(),
            };
            Ok(CertInfo {
                role,
                subject: name_text(c.subject_name()),
                issuer: name_text(c.issuer_name()),
                sha256: c
                    .digest(MessageDigest::sha256())
                    .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                    .map_err(|e| e.to_string())?,
                not_before: Timestamp::from_secs(nb).to_rfc3339(),
                not_before_unix: nb,
                not_after: Timestamp::from_secs(na).to_rfc3339(),
                not_after_unix: na,
                key,
            })
        })
        .collect()
}

fn check_key(role: &str, c: &X509, rsa_only: bool) -> Result<(), String> {
    let k = c.public_key().map_err(|e| format!("{role}: {e}"))?;
    if let Ok(r) = k.rsa() {
        if r.size() < 256 {
            return Err(format!("{role}: RSA key of {} bits; at least 2048 are required", r.size() * 8));
        }
        return Ok(());
    }
    if rsa_only {
        return Err(format!("{role}: must hold an RSA key (key transport)"));
    }
    if let Ok(e) = k.ec_key() {
        return match e.group().curve_name() {
            Some(Nid::X9_62_PRIME256V1) | Some(Nid::SECP384R1) => Ok(()),
            _ => Err(format!("{role}: EC keys must be P-256 or P-384")),
        };
    }
    Err(format!("{role}: unsupported key type"))
}

fn legacy_signature(c: &X509) -> bool {
    matches!(
        c.signature_algorithm().object().nid(),
        Nid::SHA1WITHRSAENCRYPTION | Nid::MD5WITHRSAENCRYPTION | Nid::ECDSA_WITH_SHA1 | Nid::DSAWITHSHA1
    )
}

fn is_id(s: &str) -> bool {
    (1..=56).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Partner {
    /// Checks a registration; returns every problem found.
    pub fn validate(&self, now: Timestamp) -> Result<Vec<CertInfo>, Vec<String>> {
        let mut p = Vec::new();
        if !is_id(&self.id) {
            p.push("id: 1-56 letters, digits or '-' (e.g. the 10-digit medical institution code)".to_owned());
        }
        if self.name.trim().is_empty() {
            p.push("name: required".into());
        }
        if let Some(c) = &self.institution_code {
            if c.len() != 10 || !c.bytes().all(|b| b.is_ascii_digit()) {
                p.push("institution_code: 10 digits".into());
            }
        }
        if self.as2_id.is_empty()
            || self.as2_id.len() > 128
            || !self.as2_id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
        {
            p.push("as2_id: 1-128 printable ASCII characters without spaces or quotes".into());
        }
        match reqwest::Url::parse(&self.endpoint) {
            Ok(u) if u.scheme() == "https" && u.host_str().is_some() && u.username().is_empty() => {}
            _ => p.push("endpoint: an https:// URL without credentials".into()),
        }
        if self.contract.reference.trim().is_empty() {
            p.push("contract.reference: required".into());
        }
        if let Some(v) = &self.contract.valid_until {
            if parse_date_time(v).is_none() {
                p.push("contract.valid_until: a date (YYYY-MM-DD)".into());
            }
        }
        for k in self.demarcation.missing_terms() {
            p.push(format!("demarcation.{k}: required (the contract's responsibility demarcation)"));
        }
        if self.purposes.is_empty() {
            p.push("purposes: at least one".into());
        }
        if self.document_types.is_empty()
            || self.document_types.iter().any(|t| !t.contains('/') || !t.bytes().all(|b| b.is_ascii_graphic()))
        {
            p.push("document_types: content types such as application/fhir+json".into());
        }
        let pr = &self.profile;
        if !pr.cipher.sendable() {
            p.push(format!(
                "profile.cipher: {} is not sent by mamori (use aes-256-cbc or aes-256-gcm)",
                pr.cipher.name()
            ));
        }
        if !matches!(pr.key_transport, KeyTransport::RsaPkcs1 | KeyTransport::RsaOaepSha256) {
            p.push("profile.key_transport: rsa-pkcs1 or rsa-oaep-sha256".into());
        }
        if !(1..=10_080).contains(&pr.async_mdn_timeout_minutes) {
            p.push("profile.async_mdn_timeout_minutes: 1 to 10080".into());
        }
        if pr.inbound_ciphers.is_empty() || pr.inbound_ciphers.iter().any(|c| matches!(c, ContentCipher::Other(_))) {
            p.push("profile.inbound_ciphers: AES variants, and des-ede3-cbc only for a legacy partner".into());
        }
        if pr.inbound_digests.is_empty() || pr.inbound_digests.contains(&Digest::Md5) {
            p.push("profile.inbound_digests: sha-256/384/512 (sha1 only for a legacy partner; never md5)".into());
        }
        if pr.inbound_key_transports.is_empty()
            || pr.inbound_key_transports.iter().any(|k| matches!(k, KeyTransport::Other(_)))
        {
            p.push("profile.inbound_key_transports: rsa-pkcs1, rsa-oaep-sha256, rsa-oaep-other".into());
        }
        let legacy_ok = pr.inbound_digests.contains(&Digest::Sha1);
        let mut infos = Vec::new();
        for (role, pem, rsa_only) in [
            ("signing", &self.certificates.signing, false),
            ("encryption", &self.certificates.encryption, true),
            ("tls_ca", &self.certificates.tls_ca, false),
        ] {
            match X509::stack_from_pem(pem.as_bytes()) {
                Ok(certs) if !certs.is_empty() => {
                    if role != "tls_ca" && certs.len() != 1 {
                        p.push(format!("certificates.{role}: exactly one certificate"));
                    }
                    for c in &certs {
                        if let Err(e) = check_key(&format!("certificates.{role}"), c, rsa_only) {
                            p.push(e);
                        }
                        if legacy_signature(c) && !legacy_ok {
                            p.push(format!("certificates.{role}: signed with SHA-1 or MD5"));
                        }
                    }
                    match cert_infos(
                        match role {
                            "signing" => "signing",
                            "encryption" => "encryption",
                            _ => "tls_ca",
                        },
                        pem,
                    ) {
                        Ok(i) => {
                            for ci in &i {
                                if ci.not_after_unix <= now.secs() {
                                    p.push(format!("certificates.{role}: expired on {}", ci.not_after));
                                }
                            }
                            infos.extend(i);
                        }
                        Err(e) => p.push(e),
                    }
                }
                _ => p.push(format!("certificates.{role}: a PEM certificate")),
            }
        }
        if p.is_empty() {
            Ok(infos)
        } else {
            Err(p)
        }
    }

    /// Why the partner's signing or encryption certificate cannot be used
    /// at `now` (expired, or not valid yet); empty when both can. Nothing
    /// is sent to a partner, nor accepted from it, while this is not empty.
    pub fn unusable_certificates(&self, now: Timestamp) -> Vec<String> {
        let mut out = Vec::new();
        for (role, pem) in [("signing", &self.certificates.signing), ("encryption", &self.certificates.encryption)] {
            match cert_infos(role, pem) {
                Err(e) => out.push(e),
                Ok(infos) => {
                    for c in infos {
                        if c.not_after_unix <= now.secs() {
                            out.push(format!("partner {}'s {role} certificate expired on {}", self.id, c.not_after));
                        } else if c.not_before_unix > now.secs() {
                            out.push(format!(
                                "partner {}'s {role} certificate is not valid before {}",
                                self.id, c.not_before
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// Every certificate of the registration that parses (signing,
    /// encryption, TLS CAs).
    fn all_certificates(&self) -> impl Iterator<Item = CertInfo> {
        [
            cert_infos("signing", &self.certificates.signing),
            cert_infos("encryption", &self.certificates.encryption),
            cert_infos("tls_ca", &self.certificates.tls_ca),
        ]
        .into_iter()
        .flatten()
        .flatten()
    }

    /// Warnings for a registration that is accepted but not usable yet:
    /// certificates whose validity starts after `now`.
    pub fn not_yet_valid(&self, now: Timestamp) -> Vec<String> {
        self.all_certificates()
            .filter(|c| c.not_before_unix > now.secs())
            .map(|c| {
                format!(
                    "certificates.{}: not valid before {}; nothing is sent to or accepted from partner {} until then",
                    c.role, c.not_before, self.id
                )
            })
            .collect()
    }

    /// The certificate that verifies the partner's signatures.
    pub fn signing_cert(&self) -> Result<X509, String> {
        X509::from_pem(self.certificates.signing.as_bytes()).map_err(|e| e.to_string())
    }
    /// The certificate mamori encrypts to.
    pub fn encryption_cert(&self) -> Result<X509, String> {
        X509::from_pem(self.certificates.encryption.as_bytes()).map_err(|e| e.to_string())
    }
    /// The CA certificates its TLS certificates are checked against.
    pub fn tls_cas(&self) -> Result<Vec<X509>, String> {
        X509::stack_from_pem(self.certificates.tls_ca.as_bytes()).map_err(|e| e.to_string())
    }
    /// Certificates that expire within `days` of `now`.
    pub fn expiring(&self, now: Timestamp, days: i64) -> Vec<CertInfo> {
        let limit = now.secs() + days * 86_400;
        self.all_certificates().filter(|c| c.not_after_unix <= limit).collect()
    }
    /// The FHIR id of the partner's Organization and Endpoint mirrors.
    pub fn fhir_id(&self) -> String {
        format!("partner-{}", self.id)
    }
    /// The read-only FHIR Organization that mirrors this registration.
    pub fn organization(&self) -> Value {
        let mut ids = vec![json!({"system": PARTNER_ID_SYSTEM, "value": self.id})];
        if let Some(c) = &self.institution_code {
            ids.push(json!({"system": INSTITUTION_CODE_SYSTEM, "value": c}));
        }
        json!({
            "resourceType": "Organization",
            "identifier": ids,
            "active": self.status == Status::Active,
            "type": [{"text": match self.relationship {
                Relationship::Delegation => "exchange partner: delegation (委託先)",
                Relationship::ThirdParty => "exchange partner: third party (第三者提供先)",
            }}],
            "name": self.name,
            "contact": [{
                "purpose": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/contactentity-type", "code": "PATINF"}]},
                "name": {"text": self.demarcation.patient_enquiries}
            }],
            "endpoint": [{"reference": format!("Endpoint/{}", self.fhir_id())}]
        })
    }
    /// The read-only FHIR Endpoint of the partner's AS2 address.
    pub fn endpoint_resource(&self) -> Value {
        json!({
            "resourceType": "Endpoint",
            "status": if self.status == Status::Active { "active" } else { "suspended" },
            "connectionType": {"system": "urn:mamori:connection-type", "code": "as2", "display": "AS2 (RFC 4130) over TLS with client certificates"},
            "name": format!("{} AS2 ({})", self.name, self.as2_id),
            "managingOrganization": {"reference": format!("Organization/{}", self.fhir_id())},
            "payloadType": [{"text": "FHIR document Bundle"}],
            "payloadMimeType": self.document_types,
            "address": self.endpoint
        })
    }
}
