//! CMS (RFC 5652) for S/MIME: detached signatures and enveloped content.
//!
//! Signing, signature verification and decryption go through OpenSSL's CMS
//! implementation. Encryption builds the EnvelopedData (RFC 5652 §6) or
//! AuthEnvelopedData (RFC 5083, AES-GCM per RFC 5084) structure here, with
//! OpenSSL doing every cryptographic operation (random key and IV, AES,
//! RSA key transport with PKCS #1 v1.5 or RSAES-OAEP-SHA256 per RFC 8017 /
//! RFC 4055). OpenSSL's CMS encryption cannot select OAEP parameters through
//! its safe Rust API; building the envelope here keeps the crate free of
//! `unsafe` and lets one code path serve every profile. The tests check
//! every combination against the `openssl cms` command.
//!
//! Algorithms mamori sends are CRYPTREC-recommended only (AES, RSA >= 2048,
//! SHA-256); legacy algorithms (3DES, SHA-1) are recognized inbound so that
//! a partner's profile can allow them explicitly.

use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::encrypt::Encrypter;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Padding;
use openssl::stack::Stack;
use openssl::symm::{self, Cipher};
use openssl::x509::X509;
use serde::{Deserialize, Serialize};

use crate::der::{self, Reader, Tlv};

/// Why a CMS operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmsError {
    /// The structure does not parse (what is wrong).
    #[error("malformed CMS structure: {0}")]
    Malformed(String),
    /// Decryption failed.
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// The signature does not verify.
    #[error("signature verification failed: {0}")]
    Verify(String),
    /// An algorithm that is not allowed, or not known.
    #[error("algorithm not allowed: {0}")]
    Algorithm(String),
    /// OpenSSL failed otherwise (keys, certificates, randomness).
    #[error("crypto error: {0}")]
    Crypto(String),
}

impl From<der::DerError> for CmsError {
    fn from(e: der::DerError) -> Self {
        CmsError::Malformed(e.to_string())
    }
}

fn crypto(e: openssl::error::ErrorStack) -> CmsError {
    CmsError::Crypto(e.to_string())
}

/// Content-encryption algorithms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentCipher {
    /// AES-128 in CBC mode.
    #[serde(rename = "aes-128-cbc")]
    Aes128Cbc,
    /// AES-192 in CBC mode (accepted inbound; never sent).
    #[serde(rename = "aes-192-cbc")]
    Aes192Cbc,
    /// AES-256 in CBC mode (mamori's default).
    #[serde(rename = "aes-256-cbc")]
    Aes256Cbc,
    /// AES-128 in GCM mode (AuthEnvelopedData).
    #[serde(rename = "aes-128-gcm")]
    Aes128Gcm,
    /// AES-256 in GCM mode (AuthEnvelopedData).
    #[serde(rename = "aes-256-gcm")]
    Aes256Gcm,
    /// Triple DES (legacy; inbound only, where a profile allows it).
    #[serde(rename = "des-ede3-cbc")]
    DesEde3Cbc,
    /// Anything else, by OID.
    #[serde(untagged)]
    Other(String),
}

impl ContentCipher {
    /// The name used in profiles (`aes-256-cbc`), or the OID of an unknown
    /// cipher.
    pub fn name(&self) -> String {
        match self {
            ContentCipher::Aes128Cbc => "aes-128-cbc".into(),
            ContentCipher::Aes192Cbc => "aes-192-cbc".into(),
            ContentCipher::Aes256Cbc => "aes-256-cbc".into(),
            ContentCipher::Aes128Gcm => "aes-128-gcm".into(),
            ContentCipher::Aes256Gcm => "aes-256-gcm".into(),
            ContentCipher::DesEde3Cbc => "des-ede3-cbc".into(),
            ContentCipher::Other(o) => o.clone(),
        }
    }
    /// Whether it is an AEAD cipher (GCM), sent as AuthEnvelopedData.
    pub fn is_aead(&self) -> bool {
        matches!(self, ContentCipher::Aes128Gcm | ContentCipher::Aes256Gcm)
    }
    /// mamori sends AES only.
    pub fn sendable(&self) -> bool {
        matches!(
            self,
            ContentCipher::Aes128Cbc | ContentCipher::Aes256Cbc | ContentCipher::Aes128Gcm | ContentCipher::Aes256Gcm
        )
    }
    fn arcs(&self) -> Option<&'static [u64]> {
        Some(match self {
            ContentCipher::Aes128Cbc => &[2, 16, 840, 1, 101, 3, 4, 1, 2],
            ContentCipher::Aes192Cbc => &[2, 16, 840, 1, 101, 3, 4, 1, 22],
            ContentCipher::Aes256Cbc => &[2, 16, 840, 1, 101, 3, 4, 1, 42],
            ContentCipher::Aes128Gcm => &[2, 16, 840, 1, 101, 3, 4, 1, 6],
            ContentCipher::Aes256Gcm => &[2, 16, 840, 1, 101, 3, 4, 1, 46],
            ContentCipher::DesEde3Cbc => &[1, 2, 840, 113549, 3, 7],
            ContentCipher::Other(_) => return None,
        })
    }
    fn from_oid(content: &[u8]) -> ContentCipher {
        let text = der::oid_text(content);
        [
            ContentCipher::Aes128Cbc,
            ContentCipher::Aes192Cbc,
            ContentCipher::Aes256Cbc,
            ContentCipher::Aes128Gcm,
            ContentCipher::Aes256Gcm,
            ContentCipher::DesEde3Cbc,
        ]
        .into_iter()
        .find(|c| c.arcs().is_some_and(|a| der::oid(a)[2..] == *content))
        .unwrap_or(ContentCipher::Other(text))
    }
    fn openssl(&self) -> Option<Cipher> {
        Some(match self {
            ContentCipher::Aes128Cbc => Cipher::aes_128_cbc(),
            ContentCipher::Aes256Cbc => Cipher::aes_256_cbc(),
            ContentCipher::Aes128Gcm => Cipher::aes_128_gcm(),
            ContentCipher::Aes256Gcm => Cipher::aes_256_gcm(),
            _ => return None,
        })
    }
}

/// How the content-encryption key is sent to the recipient.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyTransport {
    /// RSAES-PKCS1-v1_5 (RFC 8017): what most AS2 software expects.
    RsaPkcs1,
    /// RSAES-OAEP with SHA-256 and MGF1-SHA-256 (RFC 4055).
    #[serde(rename = "rsa-oaep-sha256")]
    RsaOaepSha256,
    /// RSAES-OAEP with other (e.g. the default SHA-1) parameters.
    RsaOaepOther,
    /// Anything else, by OID.
    #[serde(untagged)]
    Other(String),
}

impl KeyTransport {
    /// The name used in profiles (`rsa-pkcs1`), or the OID of an unknown one.
    pub fn name(&self) -> String {
        match self {
            KeyTransport::RsaPkcs1 => "rsa-pkcs1".into(),
            KeyTransport::RsaOaepSha256 => "rsa-oaep-sha256".into(),
            KeyTransport::RsaOaepOther => "rsa-oaep-other".into(),
            KeyTransport::Other(o) => o.clone(),
        }
    }
}

/// Digest algorithms of signatures and MICs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Digest {
    /// SHA-256 (what mamori signs with).
    #[serde(rename = "sha-256", alias = "sha256")]
    Sha256,
    /// SHA-384.
    #[serde(rename = "sha-384", alias = "sha384")]
    Sha384,
    /// SHA-512.
    #[serde(rename = "sha-512", alias = "sha512")]
    Sha512,
    /// SHA-224.
    #[serde(rename = "sha-224", alias = "sha224")]
    Sha224,
    /// Legacy; inbound only where a profile allows it.
    #[serde(rename = "sha1", alias = "sha-1")]
    Sha1,
    /// MD5: recognized only to be refused.
    Md5,
}

impl Digest {
    const ALL: [Digest; 6] =
        [Digest::Sha256, Digest::Sha384, Digest::Sha512, Digest::Sha224, Digest::Sha1, Digest::Md5];
    /// The RFC 5751 micalg name (`sha-256`).
    pub fn micalg(self) -> &'static str {
        match self {
            Digest::Sha256 => "sha-256",
            Digest::Sha384 => "sha-384",
            Digest::Sha512 => "sha-512",
            Digest::Sha224 => "sha-224",
            Digest::Sha1 => "sha1",
            Digest::Md5 => "md5",
        }
    }
    /// Parses `sha-256`, `sha256`, `SHA256`, `sha1`, ...
    pub fn parse(s: &str) -> Option<Digest> {
        let n: String = s.trim().chars().filter(|c| *c != '-').collect::<String>().to_ascii_lowercase();
        Digest::ALL.into_iter().find(|d| d.micalg().replace('-', "") == n)
    }
    /// The OpenSSL digest.
    pub fn md(self) -> MessageDigest {
        match self {
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
            Digest::Sha224 => MessageDigest::sha224(),
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Md5 => MessageDigest::md5(),
        }
    }
    fn arcs(self) -> &'static [u64] {
        match self {
            Digest::Sha256 => &[2, 16, 840, 1, 101, 3, 4, 2, 1],
            Digest::Sha384 => &[2, 16, 840, 1, 101, 3, 4, 2, 2],
            Digest::Sha512 => &[2, 16, 840, 1, 101, 3, 4, 2, 3],
            Digest::Sha224 => &[2, 16, 840, 1, 101, 3, 4, 2, 4],
            Digest::Sha1 => &[1, 3, 14, 3, 2, 26],
            Digest::Md5 => &[1, 2, 840, 113549, 2, 5],
        }
    }
    fn from_oid(content: &[u8]) -> Result<Digest, CmsError> {
        Digest::ALL
            .into_iter()
            .find(|d| der::oid(d.arcs())[2..] == *content)
            .ok_or_else(|| CmsError::Algorithm(format!("digest {}", der::oid_text(content))))
    }
    /// The digest of `data`.
    pub fn hash(self, data: &[u8]) -> Result<Vec<u8>, CmsError> {
        openssl::hash::hash(self.md(), data).map(|d| d.to_vec()).map_err(crypto)
    }
}

const ID_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
const ID_SIGNED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 2];
const ID_ENVELOPED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 3];
const ID_AUTH_ENVELOPED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 9, 16, 1, 23];
const RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const RSAES_OAEP: &[u64] = &[1, 2, 840, 113549, 1, 1, 7];
const MGF1: &[u64] = &[1, 2, 840, 113549, 1, 1, 8];

/// An institution's signing and decryption identity.
pub struct Identity {
    /// The certificate (signing, and what partners encrypt to).
    pub cert: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

impl Identity {
    /// An identity from a PEM certificate and its PEM private key; an error if
    /// they do not match.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Identity, CmsError> {
        let cert = X509::from_pem(cert).map_err(crypto)?;
        let key = PKey::private_key_from_pem(key).map_err(crypto)?;
        if !cert.public_key().map_err(crypto)?.public_eq(&key) {
            return Err(CmsError::Crypto("the private key does not match the certificate".into()));
        }
        Ok(Identity { cert, key })
    }
}

/// A detached CMS SignedData over `data` (SHA-256, signed attributes,
/// the signer's certificate included), DER.
pub fn sign_detached(id: &Identity, data: &[u8]) -> Result<Vec<u8>, CmsError> {
    let flags = CMSOptions::DETACHED | CMSOptions::BINARY;
    let cms = CmsContentInfo::sign(Some(&id.cert), Some(&id.key), None, Some(data), flags).map_err(crypto)?;
    let der = cms.to_der().map_err(crypto)?;
    // OpenSSL picks the key's default digest; mamori promises SHA-256.
    let info = inspect_signature(&der)?;
    if info.digests != [Digest::Sha256] {
        return Err(CmsError::Algorithm(format!("signing produced {:?}, expected SHA-256", info.digests)));
    }
    Ok(der)
}

/// What a SignedData says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureInfo {
    /// The digest algorithm of each SignerInfo.
    pub digests: Vec<Digest>,
}

/// DER of a CMS structure that may be BER-encoded (e.g. `openssl cms -stream`).
fn as_der(data: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, CmsError> {
    let definite = {
        let mut r = Reader::new(data);
        r.read().is_ok() && r.is_empty() && nested_definite(data)
    };
    if definite {
        return Ok(std::borrow::Cow::Borrowed(data));
    }
    let cms = CmsContentInfo::from_der(data).map_err(|e| CmsError::Malformed(e.to_string()))?;
    Ok(std::borrow::Cow::Owned(cms.to_der().map_err(crypto)?))
}

/// Whether the first levels of `data` use definite lengths (a BER stream
/// has an indefinite outer length, or an indefinite [0] content).
fn nested_definite(data: &[u8]) -> bool {
    fn walk(t: &Tlv<'_>, depth: u8) -> bool {
        if depth == 0 || t.tag & 0x20 == 0 {
            return true;
        }
        let mut r = t.reader();
        while !r.is_empty() {
            match r.read() {
                Ok(c) => {
                    if !walk(&c, depth - 1) {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
        true
    }
    Reader::new(data).read().is_ok_and(|t| walk(&t, 5))
}

/// The ContentInfo's type and content.
fn content_info<'a>(der: &'a [u8]) -> Result<(Vec<u8>, Tlv<'a>), CmsError> {
    let ci = Reader::new(der).expect(der::SEQUENCE)?;
    let mut r = ci.reader();
    let oid = r.expect(der::OID)?;
    let explicit = r.expect(der::ctx_cons(0))?;
    let inner = explicit.reader().read()?;
    Ok((oid.raw.to_vec(), inner))
}

/// Reads the digest algorithms of a SignedData's signers.
pub fn inspect_signature(sig: &[u8]) -> Result<SignatureInfo, CmsError> {
    let der = as_der(sig)?;
    let (ty, sd) = content_info(&der)?;
    if ty != der::oid(ID_SIGNED_DATA) {
        return Err(CmsError::Malformed("not a SignedData".into()));
    }
    let mut r = sd.reader();
    r.expect(der::INTEGER)?;
    r.expect(der::SET)?;
    r.expect(der::SEQUENCE)?; // encapContentInfo
    r.optional(der::ctx_cons(0))?; // certificates
    r.optional(der::ctx_cons(1))?; // crls
    let signers = r.expect(der::SET)?;
    let mut digests = Vec::new();
    let mut sr = signers.reader();
    while !sr.is_empty() {
        let si = sr.expect(der::SEQUENCE)?;
        let mut f = si.reader();
        f.expect(der::INTEGER)?;
        f.read()?; // sid
        let alg = f.expect(der::SEQUENCE)?;
        let oid = alg.reader().expect(der::OID)?;
        digests.push(Digest::from_oid(oid.content)?);
    }
    if digests.is_empty() {
        return Err(CmsError::Malformed("SignedData without signers".into()));
    }
    Ok(SignatureInfo { digests })
}

/// Verifies a detached signature over `data` made with `signer`'s key.
/// Only that certificate is accepted as the signer (pinned: certificates
/// embedded in the signature are ignored), and every signer's digest must
/// be in `allowed`.
pub fn verify_detached(sig: &[u8], data: &[u8], signer: &X509, allowed: &[Digest]) -> Result<SignatureInfo, CmsError> {
    let info = inspect_signature(sig)?;
    if let Some(d) = info.digests.iter().find(|d| !allowed.contains(d)) {
        return Err(CmsError::Algorithm(format!("signature digest {} is not allowed for this partner", d.micalg())));
    }
    let mut cms = CmsContentInfo::from_der(sig).map_err(|e| CmsError::Malformed(e.to_string()))?;
    let mut certs = Stack::new().map_err(crypto)?;
    certs.push(signer.clone()).map_err(crypto)?;
    let flags = CMSOptions::BINARY | CMSOptions::NOINTERN | CMSOptions::NO_SIGNER_CERT_VERIFY;
    cms.verify(Some(&certs), None, Some(data), None, flags).map_err(|e| CmsError::Verify(e.to_string()))?;
    Ok(info)
}

/// What an enveloped message says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// The content-encryption algorithm.
    pub cipher: ContentCipher,
    /// The key transport of each recipient.
    pub key_transport: Vec<KeyTransport>,
    /// AuthEnvelopedData (AES-GCM) rather than EnvelopedData.
    pub authenticated: bool,
}

/// Reads the algorithms of an EnvelopedData or AuthEnvelopedData.
pub fn inspect_envelope(data: &[u8]) -> Result<EnvelopeInfo, CmsError> {
    let der = as_der(data)?;
    let (ty, ed) = content_info(&der)?;
    let authenticated = if ty == der::oid(ID_ENVELOPED_DATA) {
        false
    } else if ty == der::oid(ID_AUTH_ENVELOPED_DATA) {
        true
    } else {
        return Err(CmsError::Malformed("not an EnvelopedData or AuthEnvelopedData".into()));
    };
    let mut r = ed.reader();
    r.expect(der::INTEGER)?;
    r.optional(der::ctx_cons(0))?; // originatorInfo
    let ris = r.expect(der::SET)?;
    let mut key_transport = Vec::new();
    let mut rr = ris.reader();
    while !rr.is_empty() {
        let ri = rr.read()?;
        if ri.tag != der::SEQUENCE {
            // kari / kekri / pwri / ori: not key transport.
            key_transport.push(KeyTransport::Other(format!("recipient info [{}]", ri.tag & 0x1F)));
            continue;
        }
        let mut f = ri.reader();
        f.expect(der::INTEGER)?;
        f.read()?; // rid
        let alg = f.expect(der::SEQUENCE)?;
        let mut a = alg.reader();
        let oid = a.expect(der::OID)?;
        key_transport.push(if oid.raw == der::oid(RSA_ENCRYPTION) {
            KeyTransport::RsaPkcs1
        } else if oid.raw == der::oid(RSAES_OAEP) {
            // Absent parameters mean the SHA-1 defaults.
            if !a.is_empty() && oaep_is_sha256(a.read()?)? {
                KeyTransport::RsaOaepSha256
            } else {
                KeyTransport::RsaOaepOther
            }
        } else {
            KeyTransport::Other(der::oid_text(oid.content))
        });
    }
    let eci = r.expect(der::SEQUENCE)?;
    let mut e = eci.reader();
    e.expect(der::OID)?;
    let calg = e.expect(der::SEQUENCE)?;
    let coid = calg.reader().expect(der::OID)?;
    Ok(EnvelopeInfo { cipher: ContentCipher::from_oid(coid.content), key_transport, authenticated })
}

fn oaep_is_sha256(params: Tlv<'_>) -> Result<bool, CmsError> {
    if params.tag != der::SEQUENCE {
        return Ok(false);
    }
    let mut p = params.reader();
    let mut hash_ok = false;
    let mut mgf_ok = false;
    while !p.is_empty() {
        let f = p.read()?;
        match f.tag {
            0xA0 => {
                let h = f.reader().expect(der::SEQUENCE)?;
                hash_ok = h.reader().expect(der::OID)?.raw == der::oid(Digest::Sha256.arcs());
            }
            0xA1 => {
                let m = f.reader().expect(der::SEQUENCE)?;
                let mut mr = m.reader();
                let is_mgf1 = mr.expect(der::OID)?.raw == der::oid(MGF1);
                let h = mr.expect(der::SEQUENCE)?;
                mgf_ok = is_mgf1 && h.reader().expect(der::OID)?.raw == der::oid(Digest::Sha256.arcs());
            }
            _ => {}
        }
    }
    Ok(hash_ok && mgf_ok)
}

/// Encrypts `data` to `recipient` (an RSA certificate) with `cipher` and
/// `kt`; returns the DER ContentInfo (EnvelopedData for CBC,
/// AuthEnvelopedData for GCM).
pub fn encrypt(data: &[u8], recipient: &X509, cipher: &ContentCipher, kt: &KeyTransport) -> Result<Vec<u8>, CmsError> {
    if !cipher.sendable() {
        return Err(CmsError::Algorithm(format!("mamori does not send {}", cipher.name())));
    }
    let ossl = cipher.openssl().ok_or_else(|| CmsError::Algorithm(cipher.name()))?;
    let arcs = cipher.arcs().ok_or_else(|| CmsError::Algorithm(cipher.name()))?;
    let pubkey = recipient.public_key().map_err(crypto)?;
    let rsa =
        pubkey.rsa().map_err(|_| CmsError::Algorithm("the recipient's certificate must hold an RSA key".into()))?;
    if rsa.size() < 256 {
        return Err(CmsError::Algorithm("the recipient's RSA key is shorter than 2048 bits".into()));
    }
    let mut cek = vec![0u8; ossl.key_len()];
    openssl::rand::rand_bytes(&mut cek).map_err(crypto)?;

    // Key transport.
    let mut enc = Encrypter::new(&pubkey).map_err(crypto)?;
    let kalg = match kt {
        KeyTransport::RsaPkcs1 => {
            enc.set_rsa_padding(Padding::PKCS1).map_err(crypto)?;
            der::seq(&[&der::oid(RSA_ENCRYPTION), &der::null()])
        }
        KeyTransport::RsaOaepSha256 => {
            enc.set_rsa_padding(Padding::PKCS1_OAEP).map_err(crypto)?;
            enc.set_rsa_oaep_md(MessageDigest::sha256()).map_err(crypto)?;
            enc.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(crypto)?;
            let sha256 = der::seq(&[&der::oid(Digest::Sha256.arcs())]);
            let mgf = der::seq(&[&der::oid(MGF1), &sha256]);
            let params = der::seq(&[&der::tlv(der::ctx_cons(0), &[&sha256]), &der::tlv(der::ctx_cons(1), &[&mgf])]);
            der::seq(&[&der::oid(RSAES_OAEP), &params])
        }
        other => return Err(CmsError::Algorithm(format!("mamori does not send key transport {}", other.name()))),
    };
    let mut ek = vec![0u8; enc.encrypt_len(&cek).map_err(crypto)?];
    let n = enc.encrypt(&cek, &mut ek).map_err(crypto)?;
    ek.truncate(n);
    let issuer = recipient.issuer_name().to_der().map_err(crypto)?;
    let serial = recipient.serial_number().to_bn().map_err(crypto)?.to_vec();
    let ktri = der::seq(&[&der::small_int(0), &der::seq(&[&issuer, &der::uint(&serial)]), &kalg, &der::octets(&ek)]);
    let ris = der::tlv(der::SET, &[&ktri]);

    // Content encryption. The ciphertext is copied once, into the final
    // buffer, whose nested headers are computed from the lengths.
    let (content_type, calg, ct, mac) = if cipher.is_aead() {
        let mut nonce = [0u8; 12];
        openssl::rand::rand_bytes(&mut nonce).map_err(crypto)?;
        let mut tag = [0u8; 16];
        let ct = symm::encrypt_aead(ossl, &cek, Some(&nonce), &[], data, &mut tag).map_err(crypto)?;
        let params = der::seq(&[&der::octets(&nonce), &der::small_int(16)]);
        (ID_AUTH_ENVELOPED_DATA, der::seq(&[&der::oid(arcs), &params]), ct, Some(der::octets(&tag)))
    } else {
        let mut iv = vec![0u8; ossl.iv_len().unwrap_or(16)];
        openssl::rand::rand_bytes(&mut iv).map_err(crypto)?;
        let ct = symm::encrypt(ossl, &cek, Some(&iv), data).map_err(crypto)?;
        (ID_ENVELOPED_DATA, der::seq(&[&der::oid(arcs), &der::octets(&iv)]), ct, None)
    };
    let version = der::small_int(0);
    let data_oid = der::oid(ID_DATA);
    let ct_hdr = der::header(der::ctx_prim(0), ct.len());
    let eci_len = data_oid.len() + calg.len() + ct_hdr.len() + ct.len();
    let eci_hdr = der::header(der::SEQUENCE, eci_len);
    let mac = mac.unwrap_or_default();
    let ed_len = version.len() + ris.len() + eci_hdr.len() + eci_len + mac.len();
    let ed_hdr = der::header(der::SEQUENCE, ed_len);
    let explicit_hdr = der::header(der::ctx_cons(0), ed_hdr.len() + ed_len);
    let type_oid = der::oid(content_type);
    let ci_len = type_oid.len() + explicit_hdr.len() + ed_hdr.len() + ed_len;
    let ci_hdr = der::header(der::SEQUENCE, ci_len);
    let mut out = Vec::with_capacity(ci_hdr.len() + ci_len);
    for part in [&ci_hdr, &type_oid, &explicit_hdr, &ed_hdr, &version, &ris, &eci_hdr, &data_oid, &calg, &ct_hdr] {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(&ct);
    out.extend_from_slice(&mac);
    Ok(out)
}

/// Decrypts an EnvelopedData or AuthEnvelopedData addressed to `id`.
/// The caller checks the algorithms (from [`inspect_envelope`]) first.
/// RSAES-OAEP without parameters is read as the RFC 8017 defaults
/// (SHA-1, MGF1-SHA-1), as [`inspect_envelope`] classifies it
/// ([`KeyTransport::RsaOaepOther`]).
pub fn decrypt(data: &[u8], id: &Identity) -> Result<Vec<u8>, CmsError> {
    let der = as_der(data)?;
    let explicit = oaep_parameters_made_explicit(&der)?;
    let input = explicit.as_deref().unwrap_or(&der);
    let cms = CmsContentInfo::from_der(input).map_err(|e| CmsError::Malformed(e.to_string()))?;
    cms.decrypt(&id.key, &id.cert).map_err(|e| CmsError::Decrypt(e.to_string()))
}

/// RFC 4055 (section 4.1) has the parameters of id-RSAES-OAEP in a key
/// transport always present: an empty SEQUENCE for the defaults. Some AS2
/// software (oscrypto, under pyas2lib) leaves them out, and OpenSSL then
/// cannot decrypt. Returns the envelope with an empty parameter SEQUENCE
/// wherever a key transport recipient has none, or `None` when none lacks
/// them (the envelope is used as it is).
fn oaep_parameters_made_explicit(der: &[u8]) -> Result<Option<Vec<u8>>, CmsError> {
    let ci = Reader::new(der).expect(der::SEQUENCE)?;
    let mut r = ci.reader();
    let ty = r.expect(der::OID)?;
    let explicit = r.expect(der::ctx_cons(0))?;
    let ed = explicit.reader().read()?;
    let mut changed = false;
    let mut parts: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
    let mut er = ed.reader();
    while !er.is_empty() {
        let f = er.read()?;
        // recipientInfos is the one universal SET at this level (the
        // attributes are context-tagged).
        if f.tag != der::SET {
            parts.push(std::borrow::Cow::Borrowed(f.raw));
            continue;
        }
        let mut ris: Vec<std::borrow::Cow<'_, [u8]>> = Vec::new();
        let mut rr = f.reader();
        while !rr.is_empty() {
            let ri = rr.read()?;
            match ri.tag {
                der::SEQUENCE => match ktri_with_oaep_parameters(ri)? {
                    Some(fixed) => {
                        changed = true;
                        ris.push(std::borrow::Cow::Owned(fixed));
                    }
                    None => ris.push(std::borrow::Cow::Borrowed(ri.raw)),
                },
                _ => ris.push(std::borrow::Cow::Borrowed(ri.raw)),
            }
        }
        let refs: Vec<&[u8]> = ris.iter().map(AsRef::as_ref).collect();
        parts.push(std::borrow::Cow::Owned(der::tlv(der::SET, &refs)));
    }
    if !changed {
        return Ok(None);
    }
    let refs: Vec<&[u8]> = parts.iter().map(AsRef::as_ref).collect();
    let ed = der::tlv(ed.tag, &refs);
    let explicit = der::tlv(der::ctx_cons(0), &[&ed]);
    Ok(Some(der::seq(&[ty.raw, &explicit])))
}

/// A KeyTransRecipientInfo with `SEQUENCE {}` as the parameters of an
/// RSAES-OAEP algorithm that has none; `None` when nothing is to change.
fn ktri_with_oaep_parameters(ri: Tlv<'_>) -> Result<Option<Vec<u8>>, CmsError> {
    let mut f = ri.reader();
    let version = f.expect(der::INTEGER)?;
    let rid = f.read()?;
    let alg = f.expect(der::SEQUENCE)?;
    let mut a = alg.reader();
    let oid = a.expect(der::OID)?;
    if oid.raw != der::oid(RSAES_OAEP) || !a.is_empty() {
        return Ok(None);
    }
    let alg = der::seq(&[oid.raw, &der::seq(&[])]);
    let mut rest: Vec<&[u8]> = vec![version.raw, rid.raw, &alg];
    let tail: Vec<Tlv<'_>> = std::iter::from_fn(|| (!f.is_empty()).then(|| f.read())).collect::<Result<_, _>>()?;
    rest.extend(tail.iter().map(|t| t.raw));
    Ok(Some(der::seq(&rest)))
}
