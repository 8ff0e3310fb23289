//! Key and certificate material on disk: generation at first start,
//! loading with permission checks (private keys must be mode 0600).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use openssl::x509::{X509NameBuilder, X509};
use zeroize::Zeroizing;

/// Why a key or certificate file cannot be read, written or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Reading or writing the file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// A secret file that group or others can read (its mode).
    #[error("{0} is readable by group or others (mode {1:o}); run: chmod 600 {0}")]
    Permissions(PathBuf, u32),
    /// The file's content is not what was expected (what is wrong).
    #[error("{0}: {1}")]
    Format(PathBuf, String),
    /// OpenSSL could not generate a key or certificate.
    #[error("key generation failed: {0}")]
    Generate(String),
}

impl From<openssl::error::ErrorStack> for KeyError {
    fn from(e: openssl::error::ErrorStack) -> Self {
        KeyError::Generate(e.to_string())
    }
}

/// Writes a secret file with mode 0600 (never wider, even briefly).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| KeyError::Io(path.to_owned(), e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| KeyError::Io(path.to_owned(), e))
}

/// Writes a public file (a certificate): readable by anyone.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    fs::write(path, bytes).map_err(|e| KeyError::Io(path.to_owned(), e))
}

/// Reads a secret file, refusing one that group or others can read.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let meta = fs::metadata(path).map_err(|e| KeyError::Io(path.to_owned(), e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(path.to_owned(), mode));
    }
    fs::read(path).map(Zeroizing::new).map_err(|e| KeyError::Io(path.to_owned(), e))
}

/// Creates a directory (and its parents) that only the owner can enter.
pub fn create_private_dir(path: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(path).map_err(|e| KeyError::Io(path.to_owned(), e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| KeyError::Io(path.to_owned(), e))
}

fn serial() -> Result<openssl::asn1::Asn1Integer, KeyError> {
    let mut bn = BigNum::new()?;
    bn.rand(127, MsbOption::MAYBE_ZERO, false)?;
    Ok(bn.to_asn1_integer()?)
}

/// A self-signed ECDSA P-256 server certificate for the given names/IPs.
pub fn self_signed_tls(
    cn: &str,
    org: &str,
    dns: &[&str],
    ips: &[&str],
    days: u32,
) -> Result<(String, Zeroizing<String>), KeyError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let nb = Asn1Time::days_from_now(0)?;
    let na = Asn1Time::days_from_now(days)?;
    b.set_not_before(&nb)?;
    b.set_not_after(&na)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for d in dns {
        san.dns(d);
    }
    for i in ips {
        san.ip(i);
    }
    let ctx = b.x509v3_context(None, None);
    let san = san.build(&ctx)?;
    b.append_extension(san)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = String::from_utf8(b.build().to_pem()?).map_err(|e| KeyError::Generate(e.to_string()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(key.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Generate(e.to_string()))?,
    );
    Ok((cert, key_pem))
}

/// The institution's RSA-3072 signing/encryption key with a self-signed
/// certificate (S/MIME: digitalSignature, keyEncipherment, emailProtection).
pub fn institution_identity(cn: &str, days: u32) -> Result<(String, Zeroizing<String>), KeyError> {
    let key: PKey<Private> = PKey::from_rsa(Rsa::generate(3072)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    let nb = Asn1Time::days_from_now(0)?;
    let na = Asn1Time::days_from_now(days)?;
    b.set_not_before(&nb)?;
    b.set_not_after(&na)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().key_encipherment().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().email_protection().client_auth().build()?)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = String::from_utf8(b.build().to_pem()?).map_err(|e| KeyError::Generate(e.to_string()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(key.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Generate(e.to_string()))?,
    );
    Ok((cert, key_pem))
}

/// The institution's exchange CA: a self-signed ECDSA P-256 CA that
/// issues the certificate of the AS2 endpoint and client. Partners import
/// its certificate as this institution's TLS CA.
pub fn exchange_ca(org: &str, days: u32) -> Result<(String, Zeroizing<String>), KeyError> {
    named_ca(&format!("{org} exchange CA"), org, days)
}

/// A self-signed ECDSA P-256 CA (pathlen 0) named `cn`.
pub fn named_ca(cn: &str, org: &str, days: u32) -> Result<(String, Zeroizing<String>), KeyError> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(days)?)?;
    b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    b.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build()?)?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    let cert = String::from_utf8(b.build().to_pem()?).map_err(|e| KeyError::Generate(e.to_string()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(key.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Generate(e.to_string()))?,
    );
    Ok((cert, key_pem))
}

/// A TLS certificate issued by the exchange CA, for both the AS2 server
/// and client side (serverAuth and clientAuth).
pub fn exchange_tls(
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
    org: &str,
    names: &[String],
    days: u32,
) -> Result<(String, Zeroizing<String>), KeyError> {
    let ca = X509::from_pem(ca_cert_pem)?;
    let ca_key = PKey::private_key_from_pem(ca_key_pem)?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, names.first().map_or("localhost", String::as_str))?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(ca.subject_name())?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(days)?)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().client_auth().build()?)?;
    let mut san = SubjectAlternativeName::new();
    for n in names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            san.ip(n);
        } else {
            san.dns(n);
        }
    }
    let san = san.build(&b.x509v3_context(Some(&ca), None))?;
    b.append_extension(san)?;
    b.sign(&ca_key, MessageDigest::sha256())?;
    let cert = String::from_utf8(b.build().to_pem()?).map_err(|e| KeyError::Generate(e.to_string()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(key.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Generate(e.to_string()))?,
    );
    Ok((cert, key_pem))
}

/// A client certificate for a maintenance person, issued by the
/// maintenance CA: (certificate PEM, key PEM, SHA-256 hex, serial hex, not-after unix).
pub fn client_cert(
    ca_cert_pem: &[u8],
    ca_key_pem: &[u8],
    cn: &str,
    org: &str,
    days: u32,
) -> Result<(String, Zeroizing<String>, String, String, i64), KeyError> {
    let ca = X509::from_pem(ca_cert_pem)?;
    let ca_key = PKey::private_key_from_pem(ca_key_pem)?;
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, org)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    let serial_hex = sn.to_bn()?.to_hex_str()?.to_string();
    b.set_serial_number(&sn)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(ca.subject_name())?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    let na = Asn1Time::days_from_now(days)?;
    b.set_not_after(&na)?;
    b.append_extension(BasicConstraints::new().critical().build()?)?;
    b.append_extension(KeyUsage::new().critical().digital_signature().build()?)?;
    b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
    b.sign(&ca_key, MessageDigest::sha256())?;
    let cert = b.build();
    let sha: String = cert.digest(MessageDigest::sha256())?.iter().map(|x| format!("{x:02x}")).collect();
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(&na)?;
    let not_after = i64::from(d.days) * 86_400 + i64::from(d.secs);
    let pem = String::from_utf8(cert.to_pem()?).map_err(|e| KeyError::Generate(e.to_string()))?;
    let key_pem = Zeroizing::new(
        String::from_utf8(key.private_key_to_pem_pkcs8()?).map_err(|e| KeyError::Generate(e.to_string()))?,
    );
    Ok((pem, key_pem, sha, serial_hex, not_after))
}

/// PEM-wraps DER bytes.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(&String::from_utf8_lossy(chunk));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// Reads the DER inside a single-block PEM file.
pub fn pem_der(path: &Path, text: &[u8], label: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use base64::Engine;
    let text = std::str::from_utf8(text).map_err(|_| KeyError::Format(path.to_owned(), "not UTF-8 PEM".into()))?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(b, _)| b)
        .ok_or_else(|| KeyError::Format(path.to_owned(), format!("no {label} block")))?;
    let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Format(path.to_owned(), "bad base64".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_private_and_checked() {
        let dir = std::env::temp_dir().join(format!("mamori-keys-{}", std::process::id()));
        // A leftover of an earlier run, if any.
        fs::remove_dir_all(&dir).ok();
        create_private_dir(&dir).unwrap();
        let p = dir.join("k");
        write_secret(&p, b"secret").unwrap();
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_secret(&p).unwrap().as_slice(), b"secret");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_secret(&p), Err(KeyError::Permissions(..))));
        assert!(write_secret(&p, b"again").is_err(), "never overwrites");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generates_certificates() {
        let (cert, key) = self_signed_tls("localhost", "t", &["localhost"], &["127.0.0.1"], 30).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
        let x = X509::from_pem(cert.as_bytes()).unwrap();
        assert!(x.subject_alt_names().unwrap().iter().any(|n| n.dnsname() == Some("localhost")));
    }
}
