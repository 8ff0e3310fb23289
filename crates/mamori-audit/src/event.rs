//! The audit event and its canonical, versioned byte encoding (the Merkle
//! leaf). The encoding is documented in docs/audit-format.md; a verifier in
//! another language needs only that document.
//!
//! Leaf bytes (v1): the ASCII line `mamori-audit/v1\n` followed by the
//! event as canonical JSON: object keys sorted by their UTF-8 bytes, no
//! insignificant whitespace, absent optional fields omitted, strings escaped
//! as by RFC 8259 with only `"`, `\\` and control characters escaped,
//! integers without fraction or exponent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The first bytes of every v1 leaf: the format's version line.
pub const LEAF_PREFIX: &[u8] = b"mamori-audit/v1\n";

/// Who acted. Fields are declared in the order of their names, so that
/// serde writes the canonical (sorted-key) form directly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Agent {
    /// The client's network address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// For emergency accounts: the real name and affiliation given at login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<String>,
    /// Who issued the token the agent acted with, when not the agent
    /// itself (an admin, for a service account's token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// staff | emergency | service | system | anonymous | partner | maintenance
    pub kind: String,
    /// The roles the agent held (role names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The id of the token (session or API) the agent acted with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// User name, or `system`, `anonymous`, a partner or maintenance id.
    pub user: String,
}

/// What was touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    /// The resource's id, if the action concerned one resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The FHIR resource type (`type` in the leaf).
    #[serde(rename = "type")]
    pub rtype: String,
    /// The resource's version, if one version was concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// One audit event. Field names are part of the leaf format; fields are
/// declared in the order of their names (see [`Agent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// read, vread, search, history, create, update, delete, operation,
    /// login, logout, login-failure, ... (docs/audit-format.md lists them)
    pub action: String,
    /// Who acted.
    pub agent: Agent,
    /// Policy basis of the decision (e.g. care-relationship, break-glass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<String>,
    /// Structured detail (reason for break-glass, counts, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    /// The resource acted on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<Entity>,
    /// The operating mode (`normal`, `emergency; phase=...`, `drill; phase=...`).
    pub mode: String,
    /// Patients whose data the action concerned (distinct, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// HL7 v3 PurposeOfUse (TREAT, ETREAT, BTG, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// The search query, or other free text describing the action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The request id (`X-Request-ID`), if the request had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// HTTP-style status of the outcome (200, 201, 403, 412, ...).
    pub status: u16,
    /// RFC 3339 UTC time with millisecond precision.
    pub time: String,
    /// The record versions the action stored, each with the SHA-256 of
    /// its stored bytes: the audit log binds record contents (GL-TRUE).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionDigest>,
}

/// One stored record version and the SHA-256 of its stored bytes. Fields
/// are declared in the order of their names (see [`Agent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionDigest {
    /// `Type/id/_history/version`.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Lowercase hex SHA-256 of the version's stored JSON text (of no bytes
    /// for a deletion's tombstone).
    pub sha256: String,
}

impl VersionDigest {
    /// The digest of `body` stored as version `version` of `rtype/id`.
    pub fn of(rtype: &str, id: &str, version: u64, body: &[u8]) -> VersionDigest {
        VersionDigest { reference: format!("{rtype}/{id}/_history/{version}"), sha256: sha256_hex(body) }
    }

    /// The resource type, id and version the reference names.
    pub fn target(&self) -> Option<(&str, &str, u64)> {
        let mut it = self.reference.split('/');
        let (t, id, h, v) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if h != "_history" || it.next().is_some() {
            return None;
        }
        Some((t, id, v.parse().ok()?))
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    crate::merkle::to_hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

impl AuditRecord {
    /// Is the outcome a success (2xx/3xx)?
    pub fn succeeded(&self) -> bool {
        self.status < 400
    }

    /// The canonical leaf bytes. With fields declared in name order and
    /// `detail` a sorted map, serde's compact output is the canonical form
    /// (checked by `fast_path_is_canonical`); [`canonical_json`] is the
    /// reference used to check stored leaves.
    pub fn leaf_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(LEAF_PREFIX);
        if serde_json::to_writer(&mut out, self).is_err() {
            out.truncate(LEAF_PREFIX.len());
            let v = serde_json::to_value(self).unwrap_or(Value::Null);
            canonical_json(&v, &mut out);
        }
        out
    }

    /// The canonical leaf bytes computed through the reference encoder.
    pub fn leaf_bytes_reference(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).unwrap_or(Value::Null);
        let mut out = LEAF_PREFIX.to_vec();
        canonical_json(&v, &mut out);
        out
    }

    /// Parses leaf bytes, checking they are exactly canonical.
    pub fn from_leaf(bytes: &[u8]) -> Result<AuditRecord, LeafError> {
        let json = bytes.strip_prefix(LEAF_PREFIX).ok_or(LeafError::Version)?;
        let rec: AuditRecord = serde_json::from_slice(json).map_err(|e| LeafError::Json(e.to_string()))?;
        // The fast encoder is the reference encoder for every value (see
        // `fast_path_is_canonical`); the reference is the specification.
        if rec.leaf_bytes() != bytes {
            return Err(LeafError::NotCanonical);
        }
        Ok(rec)
    }
}

/// Why leaf bytes are not a valid v1 audit event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LeafError {
    /// The bytes do not start with [`LEAF_PREFIX`].
    #[error("unknown leaf version")]
    Version,
    /// The JSON does not parse as an event (the parser's message).
    #[error("leaf is not valid JSON: {0}")]
    Json(String),
    /// The event parses but does not re-encode to exactly the same bytes.
    #[error("leaf is not in canonical form")]
    NotCanonical,
}

/// Writes canonical JSON: sorted keys, no whitespace.
pub fn canonical_json(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => out.extend_from_slice(n.to_string().as_bytes()),
        Value::String(s) => write_str(s, out),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        Value::Object(o) => {
            let mut keys: Vec<&String> = o.keys().collect();
            keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                if let Some(x) = o.get(*k) {
                    canonical_json(x, out);
                }
            }
            out.push(b'}');
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{0c}' => out.extend_from_slice(b"\\f"),
            c if (c as u32) < 0x20 => out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes()),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> AuditRecord {
        AuditRecord {
            time: "2026-11-26T09:00:00.000Z".into(),
            mode: "normal".into(),
            agent: Agent {
                user: "dr.sato".into(),
                kind: "staff".into(),
                roles: vec!["physician".into()],
                declared: None,
                issuer: None,
                token: None,
                address: Some("127.0.0.1".into()),
            },
            action: "read".into(),
            entity: Some(Entity { rtype: "Patient".into(), id: Some("p1".into()), version: Some(3) }),
            patients: vec!["p1".into()],
            status: 200,
            basis: Some("role-demographics".into()),
            purpose: Some("TREAT".into()),
            request: Some("r1".into()),
            query: None,
            detail: Some(serde_json::json!({"z": 1, "a": "患者\n"})),
            versions: Vec::new(),
        }
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let r = sample();
        let leaf = r.leaf_bytes();
        let s = String::from_utf8(leaf.clone()).unwrap();
        assert_eq!(
            s,
            "mamori-audit/v1\n{\"action\":\"read\",\"agent\":{\"address\":\"127.0.0.1\",\"kind\":\"staff\",\"roles\":[\"physician\"],\"user\":\"dr.sato\"},\"basis\":\"role-demographics\",\"detail\":{\"a\":\"患者\\n\",\"z\":1},\"entity\":{\"id\":\"p1\",\"type\":\"Patient\",\"version\":3},\"mode\":\"normal\",\"patients\":[\"p1\"],\"purpose\":\"TREAT\",\"request\":\"r1\",\"status\":200,\"time\":\"2026-11-26T09:00:00.000Z\"}"
        );
        assert_eq!(AuditRecord::from_leaf(&leaf).unwrap(), r);
    }

    #[test]
    fn fast_path_is_canonical() {
        let mut r = sample();
        for detail in [
            serde_json::json!({"z": {"b": 1, "a": [true, null, 1.5, "\u{1}\u{1f}\u{7f}\"\\\n\t\r\u{8}\u{c}"]}, "A": "é/漢字"}),
            serde_json::json!([{"y": 1, "x": -2}]),
            serde_json::json!("x"),
        ] {
            r.detail = Some(detail);
            r.agent.declared = Some("山田 太郎 (救急 応援)\u{0}".into());
            assert_eq!(
                String::from_utf8(r.leaf_bytes()).unwrap(),
                String::from_utf8(r.leaf_bytes_reference()).unwrap()
            );
        }
        r.detail = None;
        r.entity = None;
        r.patients.clear();
        assert_eq!(r.leaf_bytes(), r.leaf_bytes_reference());
    }

    #[test]
    fn non_canonical_leaves_rejected() {
        let leaf = sample().leaf_bytes();
        let mut spaced = leaf.clone();
        spaced.insert(LEAF_PREFIX.len() + 1, b' ');
        assert_eq!(AuditRecord::from_leaf(&spaced), Err(LeafError::NotCanonical));
        assert_eq!(AuditRecord::from_leaf(&leaf[1..]), Err(LeafError::Version));
        assert!(matches!(AuditRecord::from_leaf(b"mamori-audit/v1\n{"), Err(LeafError::Json(_))));
    }
}
