//! AS2 messages and MDNs, end to end in process: what one side builds the
//! other opens, and every kind of tampering is caught.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use mamori_exchange::as2::{self, Disposition, Failure, InboundPolicy, MdnReport, MdnRequest};
use mamori_exchange::cms::{ContentCipher, Digest, Identity, KeyTransport};
use mamori_exchange::mime::{self, Headers};
use openssl::x509::X509;

struct Party {
    id: Identity,
    cert: X509,
}

fn party(d: &std::path::Path, name: &str) -> Party {
    let (c, k) = rsa_identity(d, name, 2048);
    Party { id: Identity::from_pem(&c, &k).unwrap(), cert: X509::from_pem(&c).unwrap() }
}

const CIPHERS: [ContentCipher; 3] = [ContentCipher::Aes128Cbc, ContentCipher::Aes256Cbc, ContentCipher::Aes256Gcm];
const KTS: [KeyTransport; 2] = [KeyTransport::RsaPkcs1, KeyTransport::RsaOaepSha256];
const DIGESTS: [Digest; 3] = [Digest::Sha256, Digest::Sha384, Digest::Sha512];

fn policy(signer: &X509) -> InboundPolicy<'_> {
    InboundPolicy { signer, ciphers: &CIPHERS, key_transports: &KTS, digests: &DIGESTS }
}

fn headers(out: &as2::Outgoing) -> Headers {
    Headers(out.headers.clone())
}

fn build(
    a: &Party,
    b: &Party,
    payload: &[u8],
    cipher: ContentCipher,
    kt: KeyTransport,
) -> (as2::SignedPayload, as2::Outgoing) {
    let signed = as2::sign_payload(&a.id, "application/fhir+json", "referral.json", payload).unwrap();
    let out = as2::envelope(
        "HOSP-A",
        "CLINIC-B",
        "m1@hosp-a",
        "referral",
        "Thu, 26 Nov 2026 12:00:00 +0900",
        &signed,
        &b.cert,
        &cipher,
        &kt,
        &MdnRequest { notify_to: "HOSP-A".into(), async_url: None },
    )
    .unwrap();
    (signed, out)
}

#[test]
fn round_trip_with_every_profile() {
    let d = tmpdir("rt");
    let (a, b) = (party(&d, "a"), party(&d, "b"));
    let payload = "{\"resourceType\":\"Bundle\",\"note\":\"紹介状\"}".as_bytes();
    for cipher in [ContentCipher::Aes256Cbc, ContentCipher::Aes256Gcm] {
        for kt in KTS {
            let (signed, out) = build(&a, &b, payload, cipher.clone(), kt.clone());
            let h = headers(&out);
            assert_eq!(h.get("as2-from"), Some("HOSP-A"));
            assert_eq!(h.get("message-id"), Some("<m1@hosp-a>"));
            let opened = as2::open(&h, &out.body, &b.id, &policy(&a.cert), None).unwrap();
            assert_eq!(opened.payload, payload);
            assert_eq!(opened.content_type, "application/fhir+json");
            assert_eq!(opened.filename.as_deref(), Some("referral.json"));
            assert!(opened.mic.matches(&signed.mic), "both sides compute the same MIC");
            assert_eq!(opened.envelope.cipher, cipher);
        }
    }
}

#[test]
fn mic_algorithm_follows_the_request() {
    let d = tmpdir("mic");
    let (a, b) = (party(&d, "a"), party(&d, "b"));
    let (_, out) = build(&a, &b, b"{}", ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1);
    let alg = as2::requested_mic_alg(Some(
        "signed-receipt-protocol=optional, pkcs7-signature; signed-receipt-micalg=optional, sha384, sha256",
    ));
    assert_eq!(alg, Some(Digest::Sha384));
    let opened = as2::open(&headers(&out), &out.body, &b.id, &policy(&a.cert), alg).unwrap();
    assert_eq!(opened.mic.digest, Digest::Sha384);
    assert_eq!(as2::requested_mic_alg(None), None);
}

#[test]
fn attacks_and_faults_are_refused_with_the_right_disposition() {
    let d = tmpdir("atk");
    let (a, b, c) = (party(&d, "a"), party(&d, "b"), party(&d, "c"));
    let (_, out) = build(&a, &b, b"{\"a\":1}", ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1);
    let h = headers(&out);

    // Signed by a, but the partner registered c's signing certificate.
    let e = as2::open(&h, &out.body, &b.id, &policy(&c.cert), None).unwrap_err();
    assert!(matches!(e, Failure::AuthenticationFailed(_)), "{e}");

    // Encrypted for b, opened by c.
    let e = as2::open(&h, &out.body, &c.id, &policy(&a.cert), None).unwrap_err();
    assert!(matches!(e, Failure::DecryptionFailed(_)), "{e}");

    // Tampered ciphertext (CBC: garbage or padding error; never accepted).
    for pos in [out.body.len() - 5, out.body.len() - 40, out.body.len() / 2] {
        let mut t = out.body.clone();
        t[pos] ^= 0x55;
        let e = as2::open(&h, &t, &b.id, &policy(&a.cert), None).unwrap_err();
        assert!(!matches!(e, Failure::InsufficientSecurity(_)), "{e}");
    }

    // Cipher the profile does not allow (3DES is never in the default).
    let e = as2::open(
        &h,
        &out.body,
        &b.id,
        &InboundPolicy {
            signer: &a.cert,
            ciphers: &[ContentCipher::Aes128Gcm],
            key_transports: &KTS,
            digests: &DIGESTS,
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(e, Failure::InsufficientSecurity(_)), "{e}");

    // Not encrypted at all.
    let mut plain = Headers::default();
    plain.push("Content-Type", "application/fhir+json");
    let e = as2::open(&plain, b"{}", &b.id, &policy(&a.cert), None).unwrap_err();
    assert!(matches!(e, Failure::InsufficientSecurity(_)), "{e}");

    // Encrypted but unsigned.
    let entity = mime::entity(&[("Content-Type", "application/fhir+json")], b"{}");
    let der =
        mamori_exchange::cms::encrypt(&entity, &b.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1).unwrap();
    let e = as2::open(&h, &der, &b.id, &policy(&a.cert), None).unwrap_err();
    assert!(matches!(e, Failure::InsufficientSecurity(_)), "{e}");
}

/// Issue 15: compressed messages were refused with reasons that never said
/// "compressed" (one said "not signed"). Compression after signing, and
/// outside any encryption, are each named.
#[test]
fn compressed_messages_are_refused_as_compressed() {
    let d = tmpdir("cmp");
    let (a, b) = (party(&d, "a"), party(&d, "b"));
    const Z: &str = "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z";
    let says_compressed = |e: Failure| {
        assert!(matches!(e, Failure::Unexpected(_)), "{e}");
        assert!(e.to_string().contains("the message is compressed"), "{e}");
    };
    // Compressed, not encrypted.
    let mut h = Headers::default();
    h.push("Content-Type", Z);
    says_compressed(as2::open(&h, b"\x30\x00", &b.id, &policy(&a.cert), None).unwrap_err());
    // Signed, then compressed, then encrypted.
    let entity = mime::entity(&[("Content-Type", Z)], b"compressed bytes");
    let der =
        mamori_exchange::cms::encrypt(&entity, &b.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1).unwrap();
    let mut h = Headers::default();
    h.push("Content-Type", "application/pkcs7-mime; smime-type=enveloped-data");
    says_compressed(as2::open(&h, &der, &b.id, &policy(&a.cert), None).unwrap_err());
    // Compressed, then signed, then encrypted (RFC 5402's usual order).
    let inner = mime::entity(&[("Content-Type", Z), ("Content-Transfer-Encoding", "binary")], b"compressed bytes");
    let sig = mamori_exchange::cms::sign_detached(&a.id, &inner).unwrap();
    let sig_part = mime::entity(
        &[("Content-Type", "application/pkcs7-signature; name=smime.p7s"), ("Content-Transfer-Encoding", "base64")],
        mime::base64_lines(&sig).as_bytes(),
    );
    let signed = mime::entity(
        &[(
            "Content-Type",
            "multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"zb1\"",
        )],
        &mime::multipart_body("zb1", &[&inner, &sig_part]),
    );
    let der =
        mamori_exchange::cms::encrypt(&signed, &b.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1).unwrap();
    says_compressed(as2::open(&h, &der, &b.id, &policy(&a.cert), None).unwrap_err());
}

#[test]
fn tampered_signed_content_is_caught() {
    let d = tmpdir("tsc");
    let (a, b) = (party(&d, "a"), party(&d, "b"));
    let signed = as2::sign_payload(&a.id, "application/fhir+json", "x.json", b"{\"dose\":\"5 mg\"}").unwrap();
    // Someone who can encrypt to b (anyone: b's certificate is public)
    // alters the signed content and re-encrypts it.
    let text = String::from_utf8(signed.entity.clone()).unwrap().replace("5 mg", "50 mg");
    let der =
        mamori_exchange::cms::encrypt(text.as_bytes(), &b.cert, &ContentCipher::Aes256Cbc, &KeyTransport::RsaPkcs1)
            .unwrap();
    let mut h = Headers::default();
    h.push("Content-Type", "application/pkcs7-mime; smime-type=enveloped-data");
    let e = as2::open(&h, &der, &b.id, &policy(&a.cert), None).unwrap_err();
    assert!(matches!(e, Failure::AuthenticationFailed(_)), "{e}");
}

#[test]
fn signed_mdn_round_trip_and_tampering() {
    let d = tmpdir("mdn");
    let (a, b, c) = (party(&d, "a"), party(&d, "b"), party(&d, "c"));
    let (signed, out) = build(&a, &b, b"{}", ContentCipher::Aes256Cbc, KeyTransport::RsaPkcs1);
    let opened = as2::open(&headers(&out), &out.body, &b.id, &policy(&a.cert), None).unwrap();
    let report = MdnReport {
        reporting_ua: "mamori".into(),
        original_recipient: "CLINIC-B".into(),
        final_recipient: "CLINIC-B".into(),
        original_message_id: "m1@hosp-a".into(),
        mic: Some(opened.mic.clone()),
        disposition: Disposition::Processed,
    };
    let mdn = as2::build_mdn(&b.id, "CLINIC-B", "HOSP-A", "mdn1@clinic-b", "now", &report, "受領しました / received")
        .unwrap();
    let mh = Headers(mdn.headers.clone());
    assert!(as2::is_mdn(&mh, &mdn.body));
    assert!(!as2::is_mdn(&headers(&out), &out.body));
    let got = as2::parse_mdn(&mh, &mdn.body, Some(&b.cert), &DIGESTS).unwrap();
    assert!(got.signed);
    assert_eq!(got.report, report);
    assert!(got.report.mic.as_ref().unwrap().matches(&signed.mic));
    assert_eq!(got.message_id.as_deref(), Some("mdn1@clinic-b"));

    // Signed by someone else.
    assert!(matches!(as2::parse_mdn(&mh, &mdn.body, Some(&c.cert), &DIGESTS), Err(as2::MdnError::BadSignature(_))));
    // Disposition altered in transit.
    let t = String::from_utf8(mdn.body.clone()).unwrap().replace("; processed", "; processed/error: decryption-failed");
    assert!(as2::parse_mdn(&mh, t.as_bytes(), Some(&b.cert), &DIGESTS).is_err());
    // Unsigned receipt where a signed one is required.
    let parts = mime::split_multipart(
        &mdn.body,
        mime::ContentType::parse(mh.get("content-type").unwrap()).unwrap().param("boundary").unwrap(),
    )
    .unwrap();
    let (rh, rb) = mime::split_entity(parts[0]).unwrap();
    let mut uh = Headers::default();
    uh.push("Content-Type", rh.get("content-type").unwrap());
    assert_eq!(as2::parse_mdn(&uh, rb, Some(&b.cert), &DIGESTS), Err(as2::MdnError::Unsigned));
    assert!(as2::parse_mdn(&uh, rb, None, &DIGESTS).is_ok());
}

#[test]
fn dispositions_parse_both_ways() {
    for d in [
        Disposition::Processed,
        Disposition::Warning("duplicate-document".into()),
        Disposition::Error("decryption-failed".into()),
        Disposition::Failed("unsupported format".into()),
    ] {
        assert_eq!(Disposition::parse(&d.field()), d);
    }
    assert_eq!(
        Disposition::parse("automatic-action/MDN-sent-automatically; processed/Error: authentication-failed"),
        Disposition::Error("authentication-failed".into())
    );
}
