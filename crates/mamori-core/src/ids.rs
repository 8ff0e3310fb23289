//! Newtype identifiers, parsed once at the edge.

use std::fmt;

use crate::fhir::resource_types::R4_RESOURCE_TYPES;

/// Errors from parsing an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// Not a FHIR id (the input, cut to 80 bytes).
    #[error("'{0}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")]
    ResourceId(String),
    /// Not a resource type of FHIR R4 (the input, cut to 80 bytes).
    #[error("'{0}' is not an R4 resource type")]
    ResourceType(String),
    /// Not a valid user name (the input, cut to 80 bytes).
    #[error("'{0}' is not a valid user name (1-64 of a-z, 0-9, '.', '_', '-')")]
    UserName(String),
    /// Not a `Type/id` reference (the input, cut to 80 bytes).
    #[error("'{0}' is not a valid reference (expected Type/id)")]
    Reference(String),
}

/// Is `s` a FHIR id: `[A-Za-z0-9\-\.]{1,64}`?
pub fn is_fhir_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A FHIR resource type known to R4.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(&'static str);

impl ResourceType {
    /// Parses a resource type name, which must be one of R4's.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        R4_RESOURCE_TYPES
            .binary_search(&s)
            .ok()
            .and_then(|i| R4_RESOURCE_TYPES.get(i))
            .map(|t| ResourceType(t))
            .ok_or_else(|| IdError::ResourceType(truncate(s)))
    }
    /// The type's name (`Patient`).
    pub fn as_str(&self) -> &'static str {
        self.0
    }
    /// `Patient`.
    pub const PATIENT: ResourceType = ResourceType("Patient");
    /// `AuditEvent`.
    pub const AUDIT_EVENT: ResourceType = ResourceType("AuditEvent");
    /// `Organization`.
    pub const ORGANIZATION: ResourceType = ResourceType("Organization");
    /// `Endpoint`.
    pub const ENDPOINT: ResourceType = ResourceType("Endpoint");
    /// `Binary`.
    pub const BINARY: ResourceType = ResourceType("Binary");
    /// `DocumentReference`.
    pub const DOCUMENT_REFERENCE: ResourceType = ResourceType("DocumentReference");
    /// `Composition`.
    pub const COMPOSITION: ResourceType = ResourceType("Composition");
    /// `Consent`.
    pub const CONSENT: ResourceType = ResourceType("Consent");
    /// `Provenance`.
    pub const PROVENANCE: ResourceType = ResourceType("Provenance");
    /// `AllergyIntolerance`.
    pub const ALLERGY_INTOLERANCE: ResourceType = ResourceType("AllergyIntolerance");
    /// `Encounter`.
    pub const ENCOUNTER: ResourceType = ResourceType("Encounter");
    /// `Condition`.
    pub const CONDITION: ResourceType = ResourceType("Condition");
    /// `MedicationRequest`.
    pub const MEDICATION_REQUEST: ResourceType = ResourceType("MedicationRequest");
    /// The type an access to a patient's whole record (`$everything`, a
    /// merge, an export) is decided as: a clinical record any clinician
    /// reads and a physician writes.
    pub const OBSERVATION: ResourceType = ResourceType("Observation");
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}
impl fmt::Debug for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $check:expr, $err:path) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and checks an identifier.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if $check(s) { Ok($name(s.to_owned())) } else { Err($err(truncate(s))) }
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str { &self.0 }
        }
        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                if $check(&s) { Ok($name(s)) } else { Err($err(truncate(&s))) }
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String { v.0 }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(&self.0) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { write!(f, "{}({})", stringify!($name), self.0) }
        }
    };
}

string_id!(
    /// The logical id of any FHIR resource.
    ResourceId, is_fhir_id, IdError::ResourceId
);
string_id!(
    /// The logical id of a Patient resource.
    PatientId, is_fhir_id, IdError::ResourceId
);
string_id!(
    /// A user's login name; stable, never reused.
    UserId, is_user_name, IdError::UserName
);

impl UserId {
    /// The server itself and local operators at the CLI.
    pub fn system() -> UserId {
        UserId("system".to_owned())
    }
}

impl From<PatientId> for ResourceId {
    fn from(p: PatientId) -> ResourceId {
        ResourceId(p.0)
    }
}
impl PatientId {
    /// The same id, as the id of a Patient.
    pub fn from_resource_id(id: &ResourceId) -> PatientId {
        PatientId(id.0.clone())
    }
}

/// Is `s` a valid user name: 1-64 of `a-z`, `0-9`, `.`, `_`, `-`, starting
/// with a letter or digit?
pub fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_' || b == b'-')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// A version of a resource (1-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct VersionId(pub u64);

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The position of an event in the audit log (0-based leaf index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AuditIndex(pub u64);

/// A local reference `Type/id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LocalRef {
    /// The referenced resource's type.
    pub rtype: ResourceType,
    /// The referenced resource's id.
    pub id: ResourceId,
}

impl LocalRef {
    /// Parses `Type/id` or `Type/id/_history/v` (the version is dropped).
    pub fn parse(s: &str) -> Result<LocalRef, IdError> {
        let mut parts = s.split('/');
        let (Some(t), Some(id)) = (parts.next(), parts.next()) else {
            return Err(IdError::Reference(truncate(s)));
        };
        match (parts.next(), parts.next(), parts.next()) {
            (None, None, None) => {}
            (Some("_history"), Some(v), None) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(IdError::Reference(truncate(s))),
        }
        Ok(LocalRef {
            rtype: ResourceType::parse(t).map_err(|_| IdError::Reference(truncate(s)))?,
            id: ResourceId::parse(id).map_err(|_| IdError::Reference(truncate(s)))?,
        })
    }
}

impl fmt::Display for LocalRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.rtype, self.id)
    }
}

/// Error messages quote input; keep them short.
fn truncate(s: &str) -> String {
    if s.len() <= 80 {
        return s.to_owned();
    }
    let mut end = 80;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_ids() {
        assert!(is_fhir_id("abc-123.X"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id("a b"));
        assert!(!is_fhir_id(&"a".repeat(65)));
        assert!(is_fhir_id(&"a".repeat(64)));
        assert!(!is_fhir_id("患者"));
    }

    #[test]
    fn resource_types() {
        assert!(ResourceType::parse("Patient").is_ok());
        assert!(ResourceType::parse("Observation").is_ok());
        assert!(ResourceType::parse("patient").is_err());
        assert!(ResourceType::parse("Foo").is_err());
    }

    #[test]
    fn references() {
        let r = LocalRef::parse("Patient/p1").unwrap();
        assert_eq!(r.to_string(), "Patient/p1");
        assert!(LocalRef::parse("Patient/p1/_history/2").is_ok());
        for bad in ["Patient", "Patient/", "Nope/1", "Patient/a b", "Patient/1/_history/x", "Patient/1/x/2"] {
            assert!(LocalRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn user_names() {
        assert!(UserId::parse("dr.tanaka").is_ok());
        assert!(UserId::parse("Admin").is_err());
        assert!(UserId::parse("-x").is_err());
        assert!(UserId::parse("").is_err());
    }
}
