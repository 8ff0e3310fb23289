//! Structure definitions (a compact subset of FHIR R4 StructureDefinitions)
//! for the resource types mamori reasons about, and for the data types they
//! use. The validator in [`super::validate`] walks a resource against these.
//!
//! A type missing here is validated generically (resourceType, id, meta,
//! well-formed references), never silently trusted for its clinical meaning.

/// The type of an element.
#[derive(Debug, Clone, Copy)]
pub enum T {
    /// FHIR `string`: not empty, not blank.
    Str,
    /// FHIR `markdown`: not empty.
    Markdown,
    /// FHIR `code`: a non-empty string without leading or trailing whitespace.
    Code,
    /// A code from a required binding.
    CodeIn(&'static [&'static str]),
    /// FHIR `uri`: a non-empty string without whitespace.
    Uri,
    /// FHIR `id`: 1-64 of `A-Za-z0-9-.`.
    Id,
    /// FHIR `boolean`.
    Bool,
    /// FHIR `integer`: 32 bits, signed.
    Int,
    /// FHIR `positiveInt`: greater than zero.
    PosInt,
    /// FHIR `unsignedInt`: zero or more.
    UnsignedInt,
    /// FHIR `decimal`: any JSON number.
    Decimal,
    /// FHIR `date`: `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    Date,
    /// FHIR `dateTime`: a date, or a date and time with a time zone.
    DateTime,
    /// FHIR `instant`: a date and time to the second with a time zone.
    Instant,
    /// FHIR `time`: `hh:mm:ss`.
    Time,
    /// FHIR `base64Binary`.
    Base64,
    /// The narrative's XHTML `div` (checked as a non-empty string).
    Xhtml,
    /// A data type or backbone element with these elements.
    Complex(&'static [E]),
    /// An object whose content is only checked for well-formed references.
    Loose,
}

/// One element: name, type, cardinality.
#[derive(Debug, Clone, Copy)]
pub struct E {
    /// The element's JSON name (the stem `value` for a choice `value[x]`).
    pub name: &'static str,
    /// Its type, or the types of a choice.
    pub ty: Ty,
    /// Minimum cardinality: 1 if the element is required.
    pub min: u8,
    /// Whether it is an array (cardinality `..*`).
    pub many: bool,
}

/// An element's type, or the alternatives of a choice element (`value[x]`).
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// A single type.
    One(T),
    /// A choice element: each alternative's type suffix (`DateTime` in
    /// `onsetDateTime`) and its type.
    Choice(&'static [(&'static str, T)]),
}

const fn e(name: &'static str, t: T) -> E {
    E { name, ty: Ty::One(t), min: 0, many: false }
}
const fn req(name: &'static str, t: T) -> E {
    E { name, ty: Ty::One(t), min: 1, many: false }
}
const fn many(name: &'static str, t: T) -> E {
    E { name, ty: Ty::One(t), min: 0, many: true }
}
const fn many1(name: &'static str, t: T) -> E {
    E { name, ty: Ty::One(t), min: 1, many: true }
}
const fn choice(name: &'static str, alts: &'static [(&'static str, T)]) -> E {
    E { name, ty: Ty::Choice(alts), min: 0, many: false }
}
const fn choice1(name: &'static str, alts: &'static [(&'static str, T)]) -> E {
    E { name, ty: Ty::Choice(alts), min: 1, many: false }
}

// ---- data types -----------------------------------------------------------

/// FHIR `Coding`.
pub const CODING: T = T::Complex(&[
    e("system", T::Uri),
    e("version", T::Str),
    e("code", T::Code),
    e("display", T::Str),
    e("userSelected", T::Bool),
]);
/// FHIR `CodeableConcept`.
pub const CC: T = T::Complex(&[many("coding", CODING), e("text", T::Str)]);
/// FHIR `Period`.
pub const PERIOD: T = T::Complex(&[e("start", T::DateTime), e("end", T::DateTime)]);
/// FHIR `Quantity` (also used for `Age`, `Duration`, `SimpleQuantity`).
pub const QUANTITY: T = T::Complex(&[
    e("value", T::Decimal),
    e("comparator", T::CodeIn(&["<", "<=", ">=", ">"])),
    e("unit", T::Str),
    e("system", T::Uri),
    e("code", T::Code),
]);
/// FHIR `Range`.
pub const RANGE: T = T::Complex(&[e("low", QUANTITY), e("high", QUANTITY)]);
/// FHIR `Ratio`.
pub const RATIO: T = T::Complex(&[e("numerator", QUANTITY), e("denominator", QUANTITY)]);
/// FHIR `Identifier`.
pub const IDENTIFIER: T = T::Complex(&[
    e("use", T::CodeIn(&["usual", "official", "temp", "secondary", "old"])),
    e("type", CC),
    e("system", T::Uri),
    e("value", T::Str),
    e("period", PERIOD),
    e("assigner", T::Loose),
]);
/// FHIR `Reference`.
pub const REFERENCE: T =
    T::Complex(&[e("reference", T::Str), e("type", T::Uri), e("identifier", IDENTIFIER), e("display", T::Str)]);
/// FHIR `HumanName`.
pub const HUMAN_NAME: T = T::Complex(&[
    e("use", T::CodeIn(&["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"])),
    e("text", T::Str),
    e("family", T::Str),
    many("given", T::Str),
    many("prefix", T::Str),
    many("suffix", T::Str),
    e("period", PERIOD),
]);
/// FHIR `Address`.
pub const ADDRESS: T = T::Complex(&[
    e("use", T::CodeIn(&["home", "work", "temp", "old", "billing"])),
    e("type", T::CodeIn(&["postal", "physical", "both"])),
    e("text", T::Str),
    many("line", T::Str),
    e("city", T::Str),
    e("district", T::Str),
    e("state", T::Str),
    e("postalCode", T::Str),
    e("country", T::Str),
    e("period", PERIOD),
]);
/// FHIR `ContactPoint`.
pub const CONTACT_POINT: T = T::Complex(&[
    e("system", T::CodeIn(&["phone", "fax", "email", "pager", "url", "sms", "other"])),
    e("value", T::Str),
    e("use", T::CodeIn(&["home", "work", "temp", "old", "mobile"])),
    e("rank", T::PosInt),
    e("period", PERIOD),
]);
/// FHIR `Annotation`.
pub const ANNOTATION: T = T::Complex(&[
    choice("author", &[("Reference", REFERENCE), ("String", T::Str)]),
    e("time", T::DateTime),
    req("text", T::Markdown),
]);
/// FHIR `Attachment`.
pub const ATTACHMENT: T = T::Complex(&[
    e("contentType", T::Code),
    e("language", T::Code),
    e("data", T::Base64),
    e("url", T::Uri),
    e("size", T::UnsignedInt),
    e("hash", T::Base64),
    e("title", T::Str),
    e("creation", T::DateTime),
]);
/// FHIR `Meta`.
pub const META: T = T::Complex(&[
    e("versionId", T::Id),
    e("lastUpdated", T::Instant),
    e("source", T::Uri),
    many("profile", T::Uri),
    many("security", CODING),
    many("tag", CODING),
]);
/// FHIR `Narrative`.
pub const NARRATIVE: T =
    T::Complex(&[req("status", T::CodeIn(&["generated", "extensions", "additional", "empty"])), req("div", T::Xhtml)]);

const ONSET: &[(&str, T)] =
    &[("DateTime", T::DateTime), ("Age", QUANTITY), ("Period", PERIOD), ("Range", RANGE), ("String", T::Str)];

// ---- resources ------------------------------------------------------------

/// The elements of a FHIR `Patient`.
pub const PATIENT: &[E] = &[
    many("identifier", IDENTIFIER),
    e("active", T::Bool),
    many("name", HUMAN_NAME),
    many("telecom", CONTACT_POINT),
    e("gender", T::CodeIn(&["male", "female", "other", "unknown"])),
    e("birthDate", T::Date),
    choice("deceased", &[("Boolean", T::Bool), ("DateTime", T::DateTime)]),
    many("address", ADDRESS),
    e("maritalStatus", CC),
    choice("multipleBirth", &[("Boolean", T::Bool), ("Integer", T::Int)]),
    many("photo", ATTACHMENT),
    many(
        "contact",
        T::Complex(&[
            many("relationship", CC),
            e("name", HUMAN_NAME),
            many("telecom", CONTACT_POINT),
            e("address", ADDRESS),
            e("gender", T::CodeIn(&["male", "female", "other", "unknown"])),
            e("organization", REFERENCE),
            e("period", PERIOD),
        ]),
    ),
    many("communication", T::Complex(&[req("language", CC), e("preferred", T::Bool)])),
    many("generalPractitioner", REFERENCE),
    e("managingOrganization", REFERENCE),
    many(
        "link",
        T::Complex(&[
            req("other", REFERENCE),
            req("type", T::CodeIn(&["replaced-by", "replaces", "refer", "seealso"])),
        ]),
    ),
];

/// The elements of a FHIR `Encounter`.
pub const ENCOUNTER: &[E] = &[
    many("identifier", IDENTIFIER),
    req(
        "status",
        T::CodeIn(&[
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]),
    ),
    many("statusHistory", T::Complex(&[req("status", T::Code), req("period", PERIOD)])),
    req("class", CODING),
    many("classHistory", T::Complex(&[req("class", CODING), req("period", PERIOD)])),
    many("type", CC),
    e("serviceType", CC),
    e("priority", CC),
    e("subject", REFERENCE),
    many("episodeOfCare", REFERENCE),
    many("basedOn", REFERENCE),
    many("participant", T::Complex(&[many("type", CC), e("period", PERIOD), e("individual", REFERENCE)])),
    many("appointment", REFERENCE),
    e("period", PERIOD),
    e("length", QUANTITY),
    many("reasonCode", CC),
    many("reasonReference", REFERENCE),
    many("diagnosis", T::Complex(&[req("condition", REFERENCE), e("use", CC), e("rank", T::PosInt)])),
    many("account", REFERENCE),
    e("hospitalization", T::Loose),
    many(
        "location",
        T::Complex(&[
            req("location", REFERENCE),
            e("status", T::CodeIn(&["planned", "active", "reserved", "completed"])),
            e("physicalType", CC),
            e("period", PERIOD),
        ]),
    ),
    e("serviceProvider", REFERENCE),
    e("partOf", REFERENCE),
];

/// The elements of a FHIR `Condition`.
pub const CONDITION: &[E] = &[
    many("identifier", IDENTIFIER),
    e("clinicalStatus", CC),
    e("verificationStatus", CC),
    many("category", CC),
    e("severity", CC),
    e("code", CC),
    many("bodySite", CC),
    req("subject", REFERENCE),
    e("encounter", REFERENCE),
    choice("onset", ONSET),
    choice("abatement", ONSET),
    e("recordedDate", T::DateTime),
    e("recorder", REFERENCE),
    e("asserter", REFERENCE),
    many("stage", T::Loose),
    many("evidence", T::Loose),
    many("note", ANNOTATION),
];

const OBS_VALUE: &[(&str, T)] = &[
    ("Quantity", QUANTITY),
    ("CodeableConcept", CC),
    ("String", T::Str),
    ("Boolean", T::Bool),
    ("Integer", T::Int),
    ("Range", RANGE),
    ("Ratio", RATIO),
    ("SampledData", T::Loose),
    ("Time", T::Time),
    ("DateTime", T::DateTime),
    ("Period", PERIOD),
];
const REFERENCE_RANGE: T = T::Complex(&[
    e("low", QUANTITY),
    e("high", QUANTITY),
    e("type", CC),
    many("appliesTo", CC),
    e("age", RANGE),
    e("text", T::Str),
]);
const OBS_STATUS: T = T::CodeIn(&[
    "registered",
    "preliminary",
    "final",
    "amended",
    "corrected",
    "cancelled",
    "entered-in-error",
    "unknown",
]);

/// The elements of a FHIR `Observation`.
pub const OBSERVATION: &[E] = &[
    many("identifier", IDENTIFIER),
    many("basedOn", REFERENCE),
    many("partOf", REFERENCE),
    req("status", OBS_STATUS),
    many("category", CC),
    req("code", CC),
    e("subject", REFERENCE),
    many("focus", REFERENCE),
    e("encounter", REFERENCE),
    choice(
        "effective",
        &[("DateTime", T::DateTime), ("Period", PERIOD), ("Timing", T::Loose), ("Instant", T::Instant)],
    ),
    e("issued", T::Instant),
    many("performer", REFERENCE),
    choice("value", OBS_VALUE),
    e("dataAbsentReason", CC),
    many("interpretation", CC),
    many("note", ANNOTATION),
    e("bodySite", CC),
    e("method", CC),
    e("specimen", REFERENCE),
    e("device", REFERENCE),
    many("referenceRange", REFERENCE_RANGE),
    many("hasMember", REFERENCE),
    many("derivedFrom", REFERENCE),
    many(
        "component",
        T::Complex(&[
            req("code", CC),
            choice("value", OBS_VALUE),
            e("dataAbsentReason", CC),
            many("interpretation", CC),
            many("referenceRange", REFERENCE_RANGE),
        ]),
    ),
];

/// The elements of a FHIR `AllergyIntolerance`.
pub const ALLERGY_INTOLERANCE: &[E] = &[
    many("identifier", IDENTIFIER),
    e("clinicalStatus", CC),
    e("verificationStatus", CC),
    e("type", T::CodeIn(&["allergy", "intolerance"])),
    many("category", T::CodeIn(&["food", "medication", "environment", "biologic"])),
    e("criticality", T::CodeIn(&["low", "high", "unable-to-assess"])),
    e("code", CC),
    req("patient", REFERENCE),
    e("encounter", REFERENCE),
    choice("onset", ONSET),
    e("recordedDate", T::DateTime),
    e("recorder", REFERENCE),
    e("asserter", REFERENCE),
    e("lastOccurrence", T::DateTime),
    many("note", ANNOTATION),
    many(
        "reaction",
        T::Complex(&[
            e("substance", CC),
            many1("manifestation", CC),
            e("description", T::Str),
            e("onset", T::DateTime),
            e("severity", T::CodeIn(&["mild", "moderate", "severe"])),
            e("exposureRoute", CC),
            many("note", ANNOTATION),
        ]),
    ),
];

/// The elements of a FHIR `MedicationRequest`.
pub const MEDICATION_REQUEST: &[E] = &[
    many("identifier", IDENTIFIER),
    req(
        "status",
        T::CodeIn(&["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"]),
    ),
    e("statusReason", CC),
    req(
        "intent",
        T::CodeIn(&[
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        ]),
    ),
    many("category", CC),
    e("priority", T::CodeIn(&["routine", "urgent", "asap", "stat"])),
    e("doNotPerform", T::Bool),
    choice("reported", &[("Boolean", T::Bool), ("Reference", REFERENCE)]),
    choice1("medication", &[("CodeableConcept", CC), ("Reference", REFERENCE)]),
    req("subject", REFERENCE),
    e("encounter", REFERENCE),
    many("supportingInformation", REFERENCE),
    e("authoredOn", T::DateTime),
    e("requester", REFERENCE),
    e("performer", REFERENCE),
    e("performerType", CC),
    e("recorder", REFERENCE),
    many("reasonCode", CC),
    many("reasonReference", REFERENCE),
    many("instantiatesCanonical", T::Uri),
    many("instantiatesUri", T::Uri),
    many("basedOn", REFERENCE),
    e("groupIdentifier", IDENTIFIER),
    e("courseOfTherapyType", CC),
    many("insurance", REFERENCE),
    many("note", ANNOTATION),
    many("dosageInstruction", T::Loose),
    e("dispenseRequest", T::Loose),
    e("substitution", T::Loose),
    e("priorPrescription", REFERENCE),
    many("detectedIssue", REFERENCE),
    many("eventHistory", REFERENCE),
];

/// The elements of a FHIR `DiagnosticReport`.
pub const DIAGNOSTIC_REPORT: &[E] = &[
    many("identifier", IDENTIFIER),
    many("basedOn", REFERENCE),
    req(
        "status",
        T::CodeIn(&[
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        ]),
    ),
    many("category", CC),
    req("code", CC),
    e("subject", REFERENCE),
    e("encounter", REFERENCE),
    choice("effective", &[("DateTime", T::DateTime), ("Period", PERIOD)]),
    e("issued", T::Instant),
    many("performer", REFERENCE),
    many("resultsInterpreter", REFERENCE),
    many("specimen", REFERENCE),
    many("result", REFERENCE),
    many("imagingStudy", REFERENCE),
    many("media", T::Complex(&[e("comment", T::Str), req("link", REFERENCE)])),
    e("conclusion", T::Str),
    many("conclusionCode", CC),
    many("presentedForm", ATTACHMENT),
];

/// The elements of a FHIR `DocumentReference`.
pub const DOCUMENT_REFERENCE: &[E] = &[
    e("masterIdentifier", IDENTIFIER),
    many("identifier", IDENTIFIER),
    req("status", T::CodeIn(&["current", "superseded", "entered-in-error"])),
    e("docStatus", T::CodeIn(&["preliminary", "final", "amended", "entered-in-error"])),
    e("type", CC),
    many("category", CC),
    e("subject", REFERENCE),
    e("date", T::Instant),
    many("author", REFERENCE),
    e("authenticator", REFERENCE),
    e("custodian", REFERENCE),
    many(
        "relatesTo",
        T::Complex(&[
            req("code", T::CodeIn(&["replaces", "transforms", "signs", "appends"])),
            req("target", REFERENCE),
        ]),
    ),
    e("description", T::Str),
    many("securityLabel", CC),
    many1("content", T::Complex(&[req("attachment", ATTACHMENT), e("format", CODING)])),
    e("context", T::Loose),
];

/// The elements of a FHIR `Procedure`.
pub const PROCEDURE: &[E] = &[
    many("identifier", IDENTIFIER),
    many("instantiatesCanonical", T::Uri),
    many("instantiatesUri", T::Uri),
    many("basedOn", REFERENCE),
    many("partOf", REFERENCE),
    req(
        "status",
        T::CodeIn(&[
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        ]),
    ),
    e("statusReason", CC),
    e("category", CC),
    e("code", CC),
    req("subject", REFERENCE),
    e("encounter", REFERENCE),
    choice(
        "performed",
        &[("DateTime", T::DateTime), ("Period", PERIOD), ("String", T::Str), ("Age", QUANTITY), ("Range", RANGE)],
    ),
    e("recorder", REFERENCE),
    e("asserter", REFERENCE),
    many("performer", T::Complex(&[e("function", CC), req("actor", REFERENCE), e("onBehalfOf", REFERENCE)])),
    e("location", REFERENCE),
    many("reasonCode", CC),
    many("reasonReference", REFERENCE),
    many("bodySite", CC),
    e("outcome", CC),
    many("report", REFERENCE),
    many("complication", CC),
    many("complicationDetail", REFERENCE),
    many("followUp", CC),
    many("note", ANNOTATION),
    many("focalDevice", T::Loose),
    many("usedReference", REFERENCE),
    many("usedCode", CC),
];

/// The elements of a FHIR `Practitioner`.
pub const PRACTITIONER: &[E] = &[
    many("identifier", IDENTIFIER),
    e("active", T::Bool),
    many("name", HUMAN_NAME),
    many("telecom", CONTACT_POINT),
    many("address", ADDRESS),
    e("gender", T::CodeIn(&["male", "female", "other", "unknown"])),
    e("birthDate", T::Date),
    many("photo", ATTACHMENT),
    many("qualification", T::Loose),
    many("communication", CC),
];

/// The elements of a FHIR `CareTeam`.
pub const CARE_TEAM: &[E] = &[
    many("identifier", IDENTIFIER),
    e("status", T::CodeIn(&["proposed", "active", "suspended", "inactive", "entered-in-error"])),
    many("category", CC),
    e("name", T::Str),
    e("subject", REFERENCE),
    e("encounter", REFERENCE),
    e("period", PERIOD),
    many(
        "participant",
        T::Complex(&[many("role", CC), e("member", REFERENCE), e("onBehalfOf", REFERENCE), e("period", PERIOD)]),
    ),
    many("reasonCode", CC),
    many("reasonReference", REFERENCE),
    many("managingOrganization", REFERENCE),
    many("telecom", CONTACT_POINT),
    many("note", ANNOTATION),
];

/// The structure for a resource type, where mamori defines one.
pub fn resource_schema(rtype: &str) -> Option<&'static [E]> {
    Some(match rtype {
        "Patient" => PATIENT,
        "Encounter" => ENCOUNTER,
        "Condition" => CONDITION,
        "Observation" => OBSERVATION,
        "AllergyIntolerance" => ALLERGY_INTOLERANCE,
        "MedicationRequest" => MEDICATION_REQUEST,
        "DiagnosticReport" => DIAGNOSTIC_REPORT,
        "DocumentReference" => DOCUMENT_REFERENCE,
        "Procedure" => PROCEDURE,
        "Practitioner" => PRACTITIONER,
        "CareTeam" => CARE_TEAM,
        _ => return None,
    })
}
