//! Signed client assertions of SMART Backend Services (RFC 7523 on
//! RFC 7515/7517): a backend client's JWK set as registered, and the
//! verification of a compact JWS signed with one of its keys. RS384 and
//! ES384 are the algorithms SMART asks servers to support; nothing else
//! (`none`, HMAC, other curves) is accepted.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use ring::signature::{RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA384};
use serde_json::Value;

/// The most keys a client may register.
pub const MAX_KEYS: usize = 10;
/// The longest assertion read.
const MAX_JWS: usize = 16 * 1024;

/// A signature algorithm mamori verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// ECDSA on P-384 with SHA-384.
    Es384,
}

impl Alg {
    fn parse(s: &str) -> Option<Alg> {
        match s {
            "RS384" => Some(Alg::Rs384),
            "ES384" => Some(Alg::Es384),
            _ => None,
        }
    }
}

/// One public key of a client.
#[derive(Debug, Clone)]
pub struct Jwk {
    /// Its key id, if it has one.
    pub kid: Option<String>,
    /// The algorithm it signs with.
    pub alg: Alg,
    /// RSA: (modulus, exponent); EC: the uncompressed point.
    key: Key,
}

#[derive(Debug, Clone)]
enum Key {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    Ec(Vec<u8>),
}

fn b64(v: &Value, field: &str) -> Result<Vec<u8>, String> {
    let s = v[field].as_str().ok_or_else(|| format!("'{field}' is missing"))?;
    B64URL.decode(s).map_err(|_| format!("'{field}' is not base64url"))
}

/// Reads a JWK set (`{"keys": [...]}`) of public RSA (2048 bits or more,
/// RS384) and P-384 (ES384) keys. A private key member, another key type
/// or curve, or a point off the curve is an error naming the key.
pub fn parse_jwks(v: &Value) -> Result<Vec<Jwk>, String> {
    let keys = v["keys"].as_array().ok_or("a JWK set is an object with a 'keys' array")?;
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(format!("1 to {MAX_KEYS} keys"));
    }
    let mut out = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let at = |m: String| format!("keys[{i}]: {m}");
        if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| k.get(*m).is_some()) {
            return Err(at("holds a private key; register the public key only".into()));
        }
        if k.get("use").is_some_and(|u| u != "sig") {
            return Err(at("'use' must be 'sig'".into()));
        }
        let kid = match k.get("kid") {
            None => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 200 => Some(s.clone()),
            Some(_) => return Err(at("'kid' must be a string of 1 to 200 characters".into())),
        };
        let (alg, key) = match k["kty"].as_str() {
            Some("RSA") => {
                let (n, e) = (b64(k, "n").map_err(at)?, b64(k, "e").map_err(at)?);
                let n = n.into_iter().skip_while(|b| *b == 0).collect::<Vec<_>>();
                if n.len() < 256 {
                    return Err(at("an RSA key must have at least 2048 bits".into()));
                }
                if e.is_empty() || e.len() > 8 {
                    return Err(at("'e' is not a public exponent".into()));
                }
                (Alg::Rs384, Key::Rsa { n, e })
            }
            Some("EC") => {
                if k["crv"] != "P-384" {
                    return Err(at("an EC key must be on P-384 (ES384)".into()));
                }
                let (x, y) = (b64(k, "x").map_err(at)?, b64(k, "y").map_err(at)?);
                if x.len() != 48 || y.len() != 48 {
                    return Err(at("P-384 coordinates are 48 bytes each".into()));
                }
                on_curve(&x, &y).map_err(at)?;
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Alg::Es384, Key::Ec(point))
            }
            _ => return Err(at("'kty' must be RSA or EC".into())),
        };
        if let Some(a) = k.get("alg") {
            if a.as_str().and_then(Alg::parse) != Some(alg) {
                return Err(at(format!("'alg' must be {}", if alg == Alg::Rs384 { "RS384" } else { "ES384" })));
            }
        }
        out.push(Jwk { kid, alg, key });
    }
    Ok(out)
}

/// Whether (x, y) is a point of P-384.
fn on_curve(x: &[u8], y: &[u8]) -> Result<(), String> {
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    let bad = |_| "not a point of P-384".to_owned();
    let group = EcGroup::from_curve_name(Nid::SECP384R1).map_err(bad)?;
    let (x, y) = (BigNum::from_slice(x).map_err(bad)?, BigNum::from_slice(y).map_err(bad)?);
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(bad)?;
    key.check_key().map_err(bad)
}

/// Verifies a compact JWS with one of `keys` (the one its `kid` names,
/// or any of its algorithm when it names none); returns its claims.
/// The errors are for the audit log; the client is told less.
pub fn verify(jws: &str, keys: &[Jwk]) -> Result<Value, String> {
    if jws.len() > MAX_JWS {
        return Err("the assertion is too long".into());
    }
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a compact JWS (three parts)".into());
    };
    let json = |part: &str, what: &str| -> Result<Value, String> {
        let bytes = B64URL.decode(part).map_err(|_| format!("the {what} is not base64url"))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| format!("the {what} is not JSON"))?;
        if v.is_object() {
            Ok(v)
        } else {
            Err(format!("the {what} is not a JSON object"))
        }
    };
    let header = json(h, "header")?;
    let alg = header["alg"]
        .as_str()
        .and_then(Alg::parse)
        .ok_or_else(|| format!("alg {} is not accepted (RS384, ES384)", header["alg"]))?;
    if header.get("crit").is_some() {
        return Err("critical header parameters are not understood".into());
    }
    let kid = header["kid"].as_str();
    let candidates: Vec<&Jwk> =
        keys.iter().filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid)).collect();
    if candidates.is_empty() {
        return Err(format!(
            "no registered {alg:?} key{}",
            kid.map(|k| format!(" with kid '{k}'")).unwrap_or_default()
        ));
    }
    let sig = B64URL.decode(s).map_err(|_| "the signature is not base64url".to_owned())?;
    let signed = &jws.as_bytes()[..h.len() + 1 + p.len()];
    let ok = candidates.iter().any(|k| match &k.key {
        Key::Rsa { n, e } => RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
            .verify(&RSA_PKCS1_2048_8192_SHA384, signed, &sig)
            .is_ok(),
        Key::Ec(point) => UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point).verify(signed, &sig).is_ok(),
    });
    if !ok {
        return Err("the signature does not verify with the registered keys".into());
    }
    json(p, "payload")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
    use serde_json::json;

    fn ec_key() -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let pt = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty": "EC", "crv": "P-384", "kid": "k1", "alg": "ES384", "use": "sig",
            "x": B64URL.encode(&pt[1..49]), "y": B64URL.encode(&pt[49..])});
        (kp, jwk)
    }

    fn es384(kp: &EcdsaKeyPair, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let sig = kp.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
        format!("{input}.{}", B64URL.encode(sig.as_ref()))
    }

    fn rs384(header: &Value, claims: &Value) -> (String, Value) {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let jwk = json!({"kty": "RSA", "kid": "r1", "n": B64URL.encode(rsa.n().to_vec()), "e": B64URL.encode(rsa.e().to_vec())});
        let pkey = openssl::pkey::PKey::from_rsa(rsa).unwrap();
        let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha384(), &pkey).unwrap();
        signer.update(input.as_bytes()).unwrap();
        (format!("{input}.{}", B64URL.encode(signer.sign_to_vec().unwrap())), jwk)
    }

    #[test]
    fn es384_and_rs384_verify_and_nothing_else_does() {
        let (kp, jwk) = ec_key();
        let keys = parse_jwks(&json!({"keys": [jwk.clone()]})).unwrap();
        let claims = json!({"iss": "c", "sub": "c", "jti": "1"});
        let t = es384(&kp, &json!({"alg": "ES384", "kid": "k1", "typ": "JWT"}), &claims);
        assert_eq!(verify(&t, &keys).unwrap(), claims);
        // Without a kid: any key of the algorithm.
        let t2 = es384(&kp, &json!({"alg": "ES384"}), &claims);
        assert!(verify(&t2, &keys).is_ok());
        // A changed payload, another key, an unknown kid, alg none or HS.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[1] = B64URL.encode(json!({"iss": "c", "sub": "c", "jti": "2"}).to_string());
        assert!(verify(&parts.join("."), &keys).unwrap_err().contains("does not verify"));
        let (other, _) = ec_key();
        assert!(verify(&es384(&other, &json!({"alg": "ES384", "kid": "k1"}), &claims), &keys).is_err());
        assert!(verify(&es384(&kp, &json!({"alg": "ES384", "kid": "k9"}), &claims), &keys).unwrap_err().contains("k9"));
        let none =
            format!("{}.{}.", B64URL.encode(json!({"alg": "none"}).to_string()), B64URL.encode(claims.to_string()));
        assert!(verify(&none, &keys).unwrap_err().contains("not accepted"));
        let hs = format!(
            "{}.{}.AAAA",
            B64URL.encode(json!({"alg": "HS384"}).to_string()),
            B64URL.encode(claims.to_string())
        );
        assert!(verify(&hs, &keys).is_err());
        assert!(verify("a.b", &keys).is_err() && verify("not-a-jws", &keys).is_err());
        // RS384, with a key registered beside the EC one.
        let (t, rjwk) = rs384(&json!({"alg": "RS384", "kid": "r1"}), &claims);
        let keys = parse_jwks(&json!({"keys": [jwk, rjwk]})).unwrap();
        assert_eq!(verify(&t, &keys).unwrap(), claims);
    }

    #[test]
    fn a_jwk_set_is_checked_key_by_key() {
        let (_, jwk) = ec_key();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut k = jwk.clone();
            f(&mut k);
            parse_jwks(&json!({"keys": [k]}))
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|k| k["d"] = json!("AAAA")).unwrap_err().contains("private key"));
        assert!(with(&|k| k["crv"] = json!("P-256")).unwrap_err().contains("P-384"));
        assert!(with(&|k| k["alg"] = json!("RS384")).unwrap_err().contains("ES384"));
        assert!(with(&|k| k["use"] = json!("enc")).is_err());
        assert!(with(&|k| k["y"] = k["x"].clone()).unwrap_err().contains("not a point"));
        assert!(with(&|k| k["kty"] = json!("oct")).is_err());
        assert!(parse_jwks(&json!({"keys": []})).is_err());
        assert!(parse_jwks(&json!([jwk])).is_err());
        let small = openssl::rsa::Rsa::generate(1024).unwrap();
        let k = json!({"kty": "RSA", "n": B64URL.encode(small.n().to_vec()), "e": B64URL.encode(small.e().to_vec())});
        assert!(parse_jwks(&json!({"keys": [k]})).unwrap_err().contains("2048"));
    }
}
