//! mamori's CMS against the `openssl cms` command, both ways.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mamori_exchange::cms::{self, ContentCipher, Digest, Identity, KeyTransport};
use openssl::x509::X509;

fn setup(tag: &str) -> (std::path::PathBuf, Identity, X509) {
    let d = tmpdir(tag);
    let (cert, key) = rsa_identity(&d, "bob", 2048);
    let id = Identity::from_pem(&cert, &key).unwrap();
    let x = X509::from_pem(&cert).unwrap();
    (d, id, x)
}

#[test]
fn openssl_decrypts_what_mamori_encrypts() {
    let (d, _, bob) = setup("enc");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for (cipher, kt) in [
        (ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1),
        (ContentCipher::Aes128Cbc, KeyTransport::RsaPkcs1),
        (ContentCipher::Aes256Cbc, KeyTransport::RsaOaepSha256),
        (ContentCipher::Aes256Gcm, KeyTransport::RsaPkcs1),
        (ContentCipher::Aes128Gcm, KeyTransport::RsaOaepSha256),
    ] {
        let der = cms::encrypt(&data, &bob, &cipher, &kt).unwrap();
        std::fs::write(d.join("m.der"), &der).unwrap();
        let out = openssl_ok(
            &d,
            &[
                "cms",
                "-decrypt",
                "-binary",
                "-inform",
                "DER",
                "-in",
                "m.der",
                "-recip",
                "bob.cert.pem",
                "-inkey",
                "bob.key.pem",
            ],
        );
        assert_eq!(out, data, "{cipher:?} {kt:?}");
        // And the structure names what was used.
        let info = cms::inspect_envelope(&der).unwrap();
        assert_eq!(info.cipher, cipher);
        assert_eq!(info.key_transport, vec![kt.clone()]);
        assert_eq!(info.authenticated, cipher.is_aead());
        let printed =
            String::from_utf8(openssl_ok(&d, &["cms", "-cmsout", "-print", "-inform", "DER", "-in", "m.der"])).unwrap();
        if kt == KeyTransport::RsaOaepSha256 {
            assert!(
                printed.contains("rsaesOaep") && printed.contains("sha256") && printed.contains("mgf1"),
                "{printed}"
            );
        }
    }
}

#[test]
fn mamori_refuses_to_send_legacy_or_to_weak_keys() {
    let (d, _, bob) = setup("legacy");
    assert!(cms::encrypt(b"x", &bob, &ContentCipher::DesEde3Cbc, &KeyTransport::RsaPkcs1).is_err());
    assert!(cms::encrypt(b"x", &bob, &ContentCipher::Aes256Cbc, &KeyTransport::RsaOaepOther).is_err());
    let (weak, _) = rsa_identity(&d, "weak", 1024);
    let weak = X509::from_pem(&weak).unwrap();
    assert!(cms::encrypt(b"x", &weak, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1).is_err());
}

#[test]
fn mamori_decrypts_what_openssl_encrypts() {
    let (d, bob_id, _) = setup("dec");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    std::fs::write(d.join("plain.bin"), &data).unwrap();
    let cases: &[(&[&str], ContentCipher, KeyTransport)] = &[
        (&["-aes-256-cbc"], ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1),
        (&["-aes-128-cbc"], ContentCipher::Aes128Cbc, KeyTransport::RsaPkcs1),
        (&["-aes-256-gcm"], ContentCipher::Aes256Gcm, KeyTransport::RsaPkcs1),
        (
            &[
                "-aes-256-cbc",
                "-keyopt",
                "rsa_padding_mode:oaep",
                "-keyopt",
                "rsa_oaep_md:sha256",
                "-keyopt",
                "rsa_mgf1_md:sha256",
            ],
            ContentCipher::Aes256Cbc,
            KeyTransport::RsaOaepSha256,
        ),
        (&["-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep"], ContentCipher::Aes256Cbc, KeyTransport::RsaOaepOther),
        // BER streaming (indefinite lengths, chunked octet strings).
        (&["-aes-256-cbc", "-stream"], ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1),
        (&["-aes-256-gcm", "-stream"], ContentCipher::Aes256Gcm, KeyTransport::RsaPkcs1),
        (&["-des3"], ContentCipher::DesEde3Cbc, KeyTransport::RsaPkcs1),
    ];
    for (flags, cipher, kt) in cases {
        // -keyopt applies to the -recip before it.
        let mut args = vec!["cms", "-encrypt", "-binary", "-outform", "DER", "-in", "plain.bin", "-out", "m.der"];
        args.extend(["-recip", "bob.cert.pem"]);
        args.extend_from_slice(flags);
        openssl_ok(&d, &args);
        let der = std::fs::read(d.join("m.der")).unwrap();
        if flags.contains(&"-stream") {
            assert_eq!(der[1], 0x80, "openssl -stream output is BER with indefinite length");
        }
        let info = cms::inspect_envelope(&der).unwrap();
        assert_eq!(&info.cipher, cipher, "{flags:?}");
        assert_eq!(info.key_transport, vec![kt.clone()], "{flags:?}");
        assert_eq!(cms::decrypt(&der, &bob_id).unwrap(), data, "{flags:?}");
    }
}

#[test]
fn decryption_fails_for_another_recipient_or_tampered_gcm() {
    let (d, bob_id, bob) = setup("wrong");
    let (ccert, ckey) = rsa_identity(&d, "carol", 2048);
    let carol = Identity::from_pem(&ccert, &ckey).unwrap();
    let der = cms::encrypt(b"secret referral", &bob, &ContentCipher::Aes256Gcm, &KeyTransport::RsaPkcs1).unwrap();
    assert!(matches!(cms::decrypt(&der, &carol), Err(cms::CmsError::Decrypt(_))));
    let mut t = der.clone();
    let n = t.len();
    t[n - 20] ^= 1; // inside the GCM tag or ciphertext
    assert!(cms::decrypt(&t, &bob_id).is_err());
    assert!(cms::decrypt(b"not cms at all", &bob_id).is_err());
    assert!(cms::inspect_envelope(b"\x30\x03\x02\x01\x00").is_err());
}

#[test]
fn openssl_verifies_what_mamori_signs() {
    let (d, bob_id, _) = setup("sign");
    let data = b"Content-Type: application/fhir+json\r\n\r\n{\"resourceType\":\"Bundle\"}";
    let sig = cms::sign_detached(&bob_id, data).unwrap();
    std::fs::write(d.join("sig.der"), &sig).unwrap();
    std::fs::write(d.join("data.bin"), data).unwrap();
    let out = openssl(
        &d,
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "data.bin",
            "-CAfile",
            "bob.cert.pem",
            "-purpose",
            "any",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(d.join("data.bin"), b"Content-Type: application/fhir+json\r\n\r\n{\"resourceType\":\"Bundle!\"}")
        .unwrap();
    let out = openssl(
        &d,
        &[
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            "sig.der",
            "-content",
            "data.bin",
            "-CAfile",
            "bob.cert.pem",
            "-purpose",
            "any",
        ],
    );
    assert!(!out.status.success(), "tampered content must not verify");
    let printed =
        String::from_utf8(openssl_ok(&d, &["cms", "-cmsout", "-print", "-inform", "DER", "-in", "sig.der"])).unwrap();
    assert!(printed.contains("sha256"), "{printed}");
}

#[test]
fn mamori_verifies_what_openssl_signs_and_pins_the_signer() {
    let (d, _, bob) = setup("verify");
    let (ccert, _) = rsa_identity(&d, "carol", 2048);
    let carol = X509::from_pem(&ccert).unwrap();
    let data = b"payload bytes\r\n";
    std::fs::write(d.join("data.bin"), data).unwrap();
    let strict = [Digest::Sha256, Digest::Sha384, Digest::Sha512];
    for (md, digest) in [("sha256", Digest::Sha256), ("sha384", Digest::Sha384), ("sha1", Digest::Sha1)] {
        openssl_ok(
            &d,
            &[
                "cms",
                "-sign",
                "-binary",
                "-outform",
                "DER",
                "-in",
                "data.bin",
                "-out",
                "sig.der",
                "-signer",
                "bob.cert.pem",
                "-inkey",
                "bob.key.pem",
                "-md",
                md,
            ],
        );
        let sig = std::fs::read(d.join("sig.der")).unwrap();
        let r = cms::verify_detached(&sig, data, &bob, &strict);
        if digest == Digest::Sha1 {
            assert!(matches!(r, Err(cms::CmsError::Algorithm(_))), "SHA-1 must be refused by default");
            assert!(cms::verify_detached(&sig, data, &bob, &[Digest::Sha1]).is_ok(), "allowed for a legacy partner");
        } else {
            assert_eq!(r.unwrap().digests, vec![digest]);
        }
        // Signed by bob, but carol is the registered signer: refused even
        // though bob's certificate is inside the signature.
        assert!(matches!(cms::verify_detached(&sig, data, &carol, &[digest]), Err(cms::CmsError::Verify(_))));
        // Tampered content.
        assert!(cms::verify_detached(&sig, b"payload bytez\r\n", &bob, &[digest]).is_err());
    }
    // Streaming BER signature.
    openssl_ok(
        &d,
        &[
            "cms",
            "-sign",
            "-binary",
            "-stream",
            "-outform",
            "DER",
            "-in",
            "data.bin",
            "-out",
            "sig.der",
            "-signer",
            "bob.cert.pem",
            "-inkey",
            "bob.key.pem",
        ],
    );
    let sig = std::fs::read(d.join("sig.der")).unwrap();
    assert!(cms::verify_detached(&sig, data, &bob, &strict).is_ok());
}
