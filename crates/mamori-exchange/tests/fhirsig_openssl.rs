//! The FHIR Bundle signature against the `openssl` command: openssl
//! verifies what mamori signs, mamori verifies what openssl signs, and a
//! changed document or another signer is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::*;
use mamori_exchange::cms::Identity;
use mamori_exchange::fhirsig::{self, Checked};
use openssl::x509::X509;
use serde_json::{json, Value};

fn bundle() -> Value {
    json!({"resourceType": "Bundle", "id": "b1", "meta": {"lastUpdated": "2026-12-04T10:00:00+09:00"},
           "identifier": {"system": "http://jpfhir.jp/fhir/clins/bundle-identifier", "value": "1319900001^2026^abc"},
           "type": "document", "timestamp": "2026-12-04T10:00:00.000+09:00",
           "entry": [{"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b11",
                      "resource": {"resourceType": "Composition", "title": "診療情報提供書", "status": "final"}},
                     {"fullUrl": "urn:uuid:0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b12",
                      "resource": {"resourceType": "Observation", "valueQuantity": {"value": 72.0, "unit": "/min"}}}]})
}

fn jws_parts(b: &Value) -> (String, String) {
    let jws = String::from_utf8(STANDARD.decode(b["signature"]["data"].as_str().unwrap()).unwrap()).unwrap();
    let (h, s) = jws.split_once("..").unwrap();
    (h.to_owned(), s.to_owned())
}

#[test]
fn openssl_verifies_what_mamori_signs_and_changes_are_caught() {
    let d = tmpdir("fhirsig");
    let (cert, key) = rsa_identity(&d, "hosp", 2048);
    let id = Identity::from_pem(&cert, &key).unwrap();
    let x = X509::from_pem(&cert).unwrap();
    let mut b = bundle();
    fhirsig::sign(&mut b, &id, json!({"reference": "urn:uuid:org"}), "2026-12-04T10:00:01+09:00").unwrap();
    assert_eq!(b["signature"]["sigFormat"], "application/jose");
    assert_eq!(b["signature"]["type"][0]["code"], "1.2.840.10065.1.12.1.14");
    assert_eq!(fhirsig::verify(&b, &x).unwrap(), Checked::Verified);

    // openssl checks the detached JWS over the canonical form.
    let (h, s) = jws_parts(&b);
    let input = format!("{h}.{}", URL_SAFE_NO_PAD.encode(fhirsig::canonical(&b)));
    std::fs::write(d.join("input"), input).unwrap();
    std::fs::write(d.join("sig"), URL_SAFE_NO_PAD.decode(&s).unwrap()).unwrap();
    openssl_ok(&d, &["x509", "-in", "hosp.cert.pem", "-pubkey", "-noout", "-out", "hosp.pub"]);
    let out = openssl_ok(&d, &["dgst", "-sha256", "-verify", "hosp.pub", "-signature", "sig", "input"]);
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&h).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(STANDARD.decode(header["x5c"][0].as_str().unwrap()).unwrap(), x.to_der().unwrap());

    // What is not signed may change (id, meta); everything else may not.
    let mut moved = b.clone();
    moved["id"] = json!("stored-elsewhere");
    moved["meta"]["versionId"] = json!("2");
    assert_eq!(fhirsig::verify(&moved, &x).unwrap(), Checked::Verified);
    // Whitespace and member order do not matter either: the received text is re-read.
    let reread: Value = serde_json::from_str(&serde_json::to_string_pretty(&b).unwrap()).unwrap();
    assert_eq!(fhirsig::verify(&reread, &x).unwrap(), Checked::Verified);
    for (path, v) in [
        ("/entry/0/resource/title", json!("改ざん")),
        ("/entry/1/resource/valueQuantity/value", json!(73)),
        ("/timestamp", json!("2026-12-05T10:00:00.000+09:00")),
    ] {
        let mut t = b.clone();
        *t.pointer_mut(path).unwrap() = v;
        let e = fhirsig::verify(&t, &x).unwrap_err();
        assert!(e.contains("changed after it was signed"), "{path}: {e}");
    }
    // Another institution's certificate, even a valid signature by it, is refused.
    let (cert2, key2) = rsa_identity(&d, "other", 2048);
    let other = Identity::from_pem(&cert2, &key2).unwrap();
    let mut by_other = bundle();
    fhirsig::sign(&mut by_other, &other, json!({"display": "x"}), "2026-12-04T10:00:01+09:00").unwrap();
    let e = fhirsig::verify(&by_other, &x).unwrap_err();
    assert!(e.contains("other than the partner's registered signing certificate"), "{e}");
    // Damaged data, an attached payload, an unknown format.
    let mut t = b.clone();
    t["signature"]["data"] = json!("not base64!");
    assert!(fhirsig::verify(&t, &x).unwrap_err().contains("not base64"));
    let mut t = b.clone();
    let (h, s) = jws_parts(&b);
    t["signature"]["data"] = json!(STANDARD.encode(format!("{h}.e30.{s}")));
    assert!(fhirsig::verify(&t, &x).unwrap_err().contains("detached"));
    let mut t = b.clone();
    t["signature"]["sigFormat"] = json!("application/signature+xml");
    assert_eq!(fhirsig::verify(&t, &x).unwrap(), Checked::Unsupported("application/signature+xml".into()));
    let mut t = b.clone();
    t.as_object_mut().unwrap().remove("signature");
    assert_eq!(fhirsig::verify(&t, &x).unwrap(), Checked::Absent);
}

#[test]
fn mamori_verifies_what_openssl_signs() {
    let d = tmpdir("fhirsig2");
    let (cert, _) = rsa_identity(&d, "clinic", 2048);
    let x = X509::from_pem(&cert).unwrap();
    let mut b = bundle();
    let der = x.to_der().unwrap();
    let h = URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "x5c": [STANDARD.encode(&der)]}).to_string());
    let input = format!("{h}.{}", URL_SAFE_NO_PAD.encode(fhirsig::canonical(&b)));
    std::fs::write(d.join("input"), input).unwrap();
    openssl_ok(&d, &["dgst", "-sha256", "-sign", "clinic.key.pem", "-out", "sig", "input"]);
    let sig = std::fs::read(d.join("sig")).unwrap();
    b["signature"] = json!({"type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
                            "when": "2026-12-04T10:00:00+09:00", "who": {"display": "clinic"}, "sigFormat": "application/jose",
                            "data": STANDARD.encode(format!("{h}..{}", URL_SAFE_NO_PAD.encode(sig)))});
    assert_eq!(fhirsig::verify(&b, &x).unwrap(), Checked::Verified);
    // An HMAC or "none" header is refused before any key is used.
    let mut t = b.clone();
    let h2 = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "x5c": [STANDARD.encode(&der)]}).to_string());
    t["signature"]["data"] = json!(STANDARD.encode(format!("{h2}..")));
    assert!(fhirsig::verify(&t, &x).unwrap_err().contains("alg"), "alg none refused");
}
