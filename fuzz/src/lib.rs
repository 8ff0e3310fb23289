//! Shared fixtures of the fuzz targets: fixed keys, so that every run of a
//! target sees the same program (the fuzzer needs determinism).

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509Builder, X509NameBuilder};

/// The container key and nonce prefix of the container target and its seeds.
pub const CONTAINER_KEY: [u8; 32] = [7u8; 32];
/// See [`CONTAINER_KEY`].
pub const CONTAINER_PREFIX: [u8; 4] = [1, 2, 3, 4];

/// A self-signed RSA certificate and its key, as PEM.
pub fn identity(cn: &str) -> (Vec<u8>, Vec<u8>) {
    let key = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let mut name = X509NameBuilder::new().expect("name");
    name.append_entry_by_text("CN", cn).expect("cn");
    let name = name.build();
    let mut b = X509Builder::new().expect("x509");
    b.set_version(2).expect("version");
    let serial = BigNum::from_u32(1).and_then(|n| n.to_asn1_integer()).expect("serial");
    b.set_serial_number(&serial).expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("time")).expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(3650).expect("time")).expect("na");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let cert = b.build();
    (cert.to_pem().expect("pem"), key.private_key_to_pem_pkcs8().expect("pem"))
}
