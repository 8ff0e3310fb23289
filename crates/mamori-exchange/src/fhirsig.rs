//! The FHIR Bundle signature (`Bundle.signature`, FHIR R4 "Digital
//! Signatures"): a JWS with a detached payload over the canonical JSON of
//! the Bundle without its `id`, `meta` and `signature`, signed with the
//! institution's exchange key and carrying its certificate (`x5c`).
//!
//! It travels inside the document, so it outlives the S/MIME envelope: a
//! document filed at the recipient, or passed on, still shows who issued
//! it and that it is unchanged.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::{Signer, Verifier};
use openssl::x509::X509;
use serde_json::{json, Value};

use crate::cms::{CmsError, Identity};

/// `Signature.sigFormat`.
pub const SIG_FORMAT: &str = "application/jose";
/// `Signature.targetFormat`: what was signed.
pub const TARGET_FORMAT: &str = "application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json";
/// The signature-type code system (ASTM E1762).
pub const TYPE_SYSTEM: &str = "urn:iso-astm:E1762-95:2013";
/// Source signature: the issuing institution attests the document's origin.
pub const SOURCE_SIGNATURE: &str = "1.2.840.10065.1.12.1.14";

/// The canonical form that is signed: the Bundle without `id`, `meta` and
/// `signature`, object members sorted, no whitespace, integral numbers
/// without a fraction (RFC 8785 style).
pub fn canonical(bundle: &Value) -> Vec<u8> {
    let mut out = String::new();
    match bundle.as_object() {
        Some(o) => {
            let mut o = o.clone();
            for k in ["id", "meta", "signature"] {
                o.remove(k);
            }
            write(&Value::Object(o), &mut out);
        }
        None => write(bundle, &mut out),
    }
    out.into_bytes()
}

fn write(v: &Value, out: &mut String) {
    match v {
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(&o[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(x, out);
            }
            out.push(']');
        }
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => {
                out.push_str(&format!("{}", f as i64));
            }
            _ => out.push_str(&n.to_string()),
        },
        other => out.push_str(&other.to_string()),
    }
}

fn alg_of(key_id: Id) -> Option<(&'static str, MessageDigest)> {
    match key_id {
        Id::RSA => Some(("RS256", MessageDigest::sha256())),
        _ => None,
    }
}

/// Signs `bundle` (replacing any signature it has): `who` is the signer as
/// a FHIR Reference (e.g. the issuing Organization's entry), `when` an
/// instant.
pub fn sign(bundle: &mut Value, id: &Identity, who: Value, when: &str) -> Result<(), CmsError> {
    let (alg, md) = alg_of(id.key.id())
        .ok_or_else(|| CmsError::Algorithm("the Bundle signature needs an RSA exchange key".into()))?;
    let der = id.cert.to_der().map_err(|e| CmsError::Crypto(e.to_string()))?;
    let header = json!({"alg": alg, "x5c": [STANDARD.encode(&der)], "sigT": when});
    let h64 = URL_SAFE_NO_PAD.encode(header.to_string());
    let p64 = URL_SAFE_NO_PAD.encode(canonical(bundle));
    let mut signer = Signer::new(md, &id.key).map_err(|e| CmsError::Crypto(e.to_string()))?;
    signer.update(format!("{h64}.{p64}").as_bytes()).map_err(|e| CmsError::Crypto(e.to_string()))?;
    let sig = signer.sign_to_vec().map_err(|e| CmsError::Crypto(e.to_string()))?;
    let jws = format!("{h64}..{}", URL_SAFE_NO_PAD.encode(sig));
    bundle["signature"] = json!({
        "type": [{"system": TYPE_SYSTEM, "code": SOURCE_SIGNATURE, "display": "Source Signature"}],
        "when": when,
        "who": who,
        "targetFormat": TARGET_FORMAT,
        "sigFormat": SIG_FORMAT,
        "data": STANDARD.encode(jws)
    });
    Ok(())
}

/// What a received Bundle's signature says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// No `Bundle.signature`.
    Absent,
    /// A JWS that verifies with the expected signer's certificate.
    Verified,
    /// A signature in a format this module does not verify (named).
    Unsupported(String),
}

fn bad(m: impl Into<String>) -> String {
    format!("the Bundle signature does not verify: {}", m.into())
}

/// Verifies a Bundle's signature against `signer`, the certificate the
/// sender is registered with: the JWS must carry that certificate and
/// verify over the Bundle as received.
pub fn verify(bundle: &Value, signer: &X509) -> Result<Checked, String> {
    let Some(sig) = bundle.get("signature") else { return Ok(Checked::Absent) };
    let format = sig.get("sigFormat").and_then(Value::as_str).unwrap_or("");
    if format != SIG_FORMAT {
        return Ok(Checked::Unsupported(if format.is_empty() { "no sigFormat".into() } else { format.to_owned() }));
    }
    let data = sig.get("data").and_then(Value::as_str).ok_or_else(|| bad("no data"))?;
    let jws = STANDARD.decode(data).map_err(|e| bad(format!("data is not base64: {e}")))?;
    let jws = String::from_utf8(jws).map_err(|_| bad("the JWS is not text"))?;
    let parts: Vec<&str> = jws.split('.').collect();
    let [h64, payload, s64] = parts[..] else { return Err(bad("not a compact JWS")) };
    if !payload.is_empty() {
        return Err(bad("the payload must be detached"));
    }
    let header: Value = URL_SAFE_NO_PAD
        .decode(h64)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| bad("the JWS header is not JSON"))?;
    if header.get("crit").is_some() {
        return Err(bad("critical header parameters are not understood"));
    }
    let key: PKey<Public> = signer.public_key().map_err(|e| bad(e.to_string()))?;
    let (alg, md) = alg_of(key.id()).ok_or_else(|| bad("the partner's signing key is not RSA"))?;
    if header.get("alg").and_then(Value::as_str) != Some(alg) {
        return Err(bad(format!("alg {} is not {alg}", header.get("alg").unwrap_or(&Value::Null))));
    }
    let x5c = header
        .pointer("/x5c/0")
        .and_then(Value::as_str)
        .and_then(|c| STANDARD.decode(c).ok())
        .ok_or_else(|| bad("no x5c certificate"))?;
    if x5c != signer.to_der().map_err(|e| bad(e.to_string()))? {
        return Err(bad("signed with a certificate other than the partner's registered signing certificate"));
    }
    let sig_bytes = URL_SAFE_NO_PAD.decode(s64).map_err(|_| bad("the signature is not base64url"))?;
    let p64 = URL_SAFE_NO_PAD.encode(canonical(bundle));
    let mut v = Verifier::new(md, &key).map_err(|e| bad(e.to_string()))?;
    v.update(format!("{h64}.{p64}").as_bytes()).map_err(|e| bad(e.to_string()))?;
    if !v.verify(&sig_bytes).unwrap_or(false) {
        return Err(bad("the document was changed after it was signed, or the signature is damaged"));
    }
    Ok(Checked::Verified)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn canonical_sorts_drops_and_normalizes() {
        let b = json!({"resourceType": "Bundle", "id": "x", "meta": {"lastUpdated": "2026"}, "signature": {},
                       "type": "document", "entry": [{"resource": {"valueQuantity": {"value": 72.0}, "b": 0.5, "a": "日本"}}]});
        assert_eq!(
            String::from_utf8(canonical(&b)).unwrap(),
            r#"{"entry":[{"resource":{"a":"日本","b":0.5,"valueQuantity":{"value":72}}}],"resourceType":"Bundle","type":"document"}"#
        );
    }
}
