//! Strict JSON reading for request bodies. `serde_json` keeps the last of
//! duplicate keys, turns an integer too large for 64 bits into an
//! approximate float, and accepts strings of any length; each lets what is
//! stored differ from what was sent. Here a duplicate key, a number that
//! cannot be kept exactly and an over-long string are refused, with the
//! position of the problem.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The longest string element accepted by default (1 MiB); base64 `data`
/// elements (Attachment.data, Binary.data) are bounded only by the body.
pub const MAX_STRING_BYTES: usize = 1 << 20;

/// Integers beyond this magnitude that arrive as floats were too large
/// for 64 bits and would be stored approximately.
const EXACT_FLOAT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// Parses `bytes` as JSON, refusing duplicate keys, inexact numbers and
/// strings longer than `max_string` bytes (except in `data` elements).
pub fn parse_strict(bytes: &[u8], max_string: usize) -> Result<Value, serde_json::Error> {
    let mut d = serde_json::Deserializer::from_slice(bytes);
    let v = Strict { max_string, data: false }.deserialize(&mut d)?;
    d.end()?;
    Ok(v)
}

#[derive(Clone, Copy)]
struct Strict {
    max_string: usize,
    /// A base64 `data` element: no string bound of its own.
    data: bool,
}

impl Strict {
    fn string<E: de::Error>(self, s: &str) -> Result<Value, E> {
        if !self.data && s.len() > self.max_string {
            return Err(E::custom(format!("a string of {} bytes; at most {} are accepted", s.len(), self.max_string)));
        }
        Ok(Value::String(s.to_owned()))
    }
}

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if v.is_finite() && v.fract() == 0.0 && v.abs() >= EXACT_FLOAT_LIMIT {
            return Err(E::custom("a number too large to be kept exactly"));
        }
        Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.string(v)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict { data: false, ..self })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate key \"{k}\"")));
            }
            let data = k == "data";
            let v = map.next_value_seed(Strict { data, ..self })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_serde_json_would_change_is_refused() {
        let dup = parse_strict(br#"{"gender": "male", "gender": "female"}"#, 100).unwrap_err().to_string();
        assert!(dup.contains("duplicate key \"gender\""), "{dup}");
        let nested = parse_strict(br#"{"a": [{"b": 1, "b": 2}]}"#, 100).unwrap_err().to_string();
        assert!(nested.contains("duplicate key \"b\""), "{nested}");
        let big = parse_strict(br#"{"value": 1234567890123456789012345678901234567890}"#, 100).unwrap_err();
        assert!(big.to_string().contains("too large to be kept exactly"), "{big}");
        let long = parse_strict(format!(r#"{{"text": "{}"}}"#, "x".repeat(101)).as_bytes(), 100).unwrap_err();
        assert!(long.to_string().contains("a string of 101 bytes"), "{long}");
    }

    #[test]
    fn ordinary_json_is_read_as_serde_json_reads_it() {
        let text = br#"{"resourceType": "Observation", "valueQuantity": {"value": 72.5, "unit": "/min"},
            "component": [{"valueInteger": -3}, {"valueInteger": 18446744073709551615}], "flag": true, "note": null,
            "data": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#;
        let v = parse_strict(text, 100).unwrap();
        assert_eq!(v, serde_json::from_slice::<Value>(text).unwrap());
        assert!(parse_strict(b"{} x", 100).is_err(), "trailing characters");
    }
}
