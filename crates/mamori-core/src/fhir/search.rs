//! FHIR search: the parameters mamori supports per type, extraction of index
//! values from a resource, and parsing of a search request into a
//! [`SearchQuery`] the store turns into SQL.
//!
//! Unknown parameters are an error (unless the client asks for lenient
//! handling): a silently ignored filter returns more patients' data than the
//! clinician asked for.

use std::collections::HashMap;

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use crate::ids::{is_fhir_id, LocalRef, ResourceType};
use crate::time::{parse_date_time, parse_search_date, DateRange, Timestamp};

/// How a search parameter matches, after FHIR's search parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    /// A code, optionally with its system (`[system|]code`).
    Token,
    /// Text, matched case-, width- and accent-insensitively (see [`normalize`]).
    String,
    /// A date or period, matched with a prefix (`ge2024-01-01`).
    Date,
    /// A reference to another resource (`Type/id` or `id`).
    Reference,
    /// A quantity (`[prefix]number|[system]|[code]`), compared to six
    /// decimal places; across UCUM units after conversion ([`super::ucum`]).
    Quantity,
    /// A number (`[prefix]number`), compared to six decimal places
    /// (indexed with the quantities, without a unit).
    Number,
    /// A composite of a code and a quantity of the same element
    /// (`[system|]code$[prefix]number[|system|code]`); the parameter's
    /// path is that element (`""`: the resource), holding `code` and
    /// `valueQuantity`.
    CodeQuantity,
}

impl ParamKind {
    /// The FHIR search parameter type (`composite` for a code and quantity).
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::String => "string",
            ParamKind::Date => "date",
            ParamKind::Reference => "reference",
            ParamKind::Quantity => "quantity",
            ParamKind::Number => "number",
            ParamKind::CodeQuantity => "composite",
        }
    }
}

/// A search parameter of a resource type and where its values are found.
#[derive(Debug, Clone, Copy)]
pub struct ParamDef {
    /// The parameter's name in a search request (`birthdate`).
    pub name: &'static str,
    /// How its values are indexed and matched.
    pub kind: ParamKind,
    /// Element paths, dot-separated; concrete names for choice elements.
    pub paths: &'static [&'static str],
    /// For reference parameters: the only target type, if any.
    pub target: Option<&'static str>,
    /// A package's parameter: the FHIRPath expression its values come
    /// from (its `paths` are empty).
    pub expr: Option<&'static super::fhirpath::Expr>,
}

const fn tok(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: ParamKind::Token, paths, target: None, expr: None }
}
const fn st(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: ParamKind::String, paths, target: None, expr: None }
}
const fn date(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: ParamKind::Date, paths, target: None, expr: None }
}
const fn qty(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: ParamKind::Quantity, paths, target: None, expr: None }
}
const fn num(name: &'static str, paths: &'static [&'static str]) -> ParamDef {
    ParamDef { name, kind: ParamKind::Number, paths, target: None, expr: None }
}
const fn rf(name: &'static str, paths: &'static [&'static str], target: Option<&'static str>) -> ParamDef {
    ParamDef { name, kind: ParamKind::Reference, paths, target, expr: None }
}

const IDENT: ParamDef = tok("identifier", &["identifier"]);
const SUBJECT: ParamDef = rf("subject", &["subject"], None);
const PATIENT_SUBJ: ParamDef = rf("patient", &["subject"], Some("Patient"));
const PATIENT_PAT: ParamDef = rf("patient", &["patient"], Some("Patient"));
const ENCOUNTER: ParamDef = rf("encounter", &["encounter"], Some("Encounter"));
const NAME_PATHS: &[&str] = &["name.family", "name.given", "name.text", "name.prefix", "name.suffix"];

const PATIENT: &[ParamDef] = &[
    IDENT,
    st("name", NAME_PATHS),
    st("family", &["name.family"]),
    st("given", &["name.given"]),
    date("birthdate", &["birthDate"]),
    tok("gender", &["gender"]),
    tok("active", &["active"]),
    st("address", &["address.text", "address.line", "address.city", "address.state", "address.postalCode"]),
    tok("telecom", &["telecom"]),
    rf("link", &["link.other"], None),
];
const ENCOUNTER_P: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    date("date", &["period"]),
    tok("status", &["status"]),
    tok("class", &["class"]),
    tok("type", &["type"]),
    rf("participant", &["participant.individual"], None),
];
const CONDITION: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    tok("code", &["code"]),
    tok("category", &["category"]),
    tok("clinical-status", &["clinicalStatus"]),
    tok("verification-status", &["verificationStatus"]),
    date("onset-date", &["onsetDateTime", "onsetPeriod"]),
    date("recorded-date", &["recordedDate"]),
];
const OBSERVATION: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    tok("code", &["code", "component.code"]),
    tok("category", &["category"]),
    tok("status", &["status"]),
    date("date", &["effectiveDateTime", "effectivePeriod", "effectiveInstant"]),
    qty("value-quantity", &["valueQuantity"]),
    qty("component-value-quantity", &["component.valueQuantity"]),
    ParamDef { name: "code-value-quantity", kind: ParamKind::CodeQuantity, paths: &[""], target: None, expr: None },
    ParamDef {
        name: "component-code-value-quantity",
        kind: ParamKind::CodeQuantity,
        paths: &["component"],
        target: None,
        expr: None,
    },
];
const ALLERGY: &[ParamDef] = &[
    IDENT,
    PATIENT_PAT,
    tok("code", &["code", "reaction.substance"]),
    tok("category", &["category"]),
    tok("clinical-status", &["clinicalStatus"]),
    tok("criticality", &["criticality"]),
    date("date", &["recordedDate"]),
];
const MEDREQ: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    tok("code", &["medicationCodeableConcept"]),
    tok("status", &["status"]),
    tok("intent", &["intent"]),
    tok("category", &["category"]),
    date("authoredon", &["authoredOn"]),
];
const DIAGREPORT: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    tok("code", &["code"]),
    tok("category", &["category"]),
    tok("status", &["status"]),
    date("date", &["effectiveDateTime", "effectivePeriod"]),
    date("issued", &["issued"]),
    rf("result", &["result"], Some("Observation")),
];
const DOCREF: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    tok("type", &["type"]),
    tok("category", &["category"]),
    tok("status", &["status"]),
    date("date", &["date"]),
];
const PROCEDURE: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    tok("code", &["code"]),
    tok("category", &["category"]),
    tok("status", &["status"]),
    date("date", &["performedDateTime", "performedPeriod"]),
];
const CARETEAM: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    tok("status", &["status"]),
    tok("category", &["category"]),
    rf("participant", &["participant.member"], None),
];
const PRACTITIONER: &[ParamDef] =
    &[IDENT, st("name", NAME_PATHS), st("family", &["name.family"]), st("given", &["name.given"])];
const ORGANIZATION: &[ParamDef] = &[IDENT, st("name", &["name", "alias"]), tok("type", &["type"])];
const CONSENT: &[ParamDef] =
    &[IDENT, PATIENT_PAT, tok("status", &["status"]), tok("category", &["category"]), date("date", &["dateTime"])];
const PROVENANCE: &[ParamDef] =
    &[rf("target", &["target"], None), rf("agent", &["agent.who"], None), date("recorded", &["recorded"])];
const MEDADMIN: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    tok("code", &["medicationCodeableConcept"]),
    tok("status", &["status"]),
    date("effective-time", &["effectiveDateTime", "effectivePeriod"]),
];
const RISK: &[ParamDef] = &[
    IDENT,
    SUBJECT,
    PATIENT_SUBJ,
    ENCOUNTER,
    num("probability", &["prediction.probabilityDecimal"]),
    date("date", &["occurrenceDateTime", "occurrencePeriod"]),
    tok("method", &["method"]),
    rf("condition", &["condition"], Some("Condition")),
];
const IMMREC: &[ParamDef] = &[
    IDENT,
    PATIENT_PAT,
    num("dose-number", &["recommendation.doseNumberPositiveInt"]),
    date("date", &["date"]),
    tok("vaccine-type", &["recommendation.vaccineCode"]),
    tok("status", &["recommendation.forecastStatus"]),
];
const GENERIC: &[ParamDef] = &[IDENT, SUBJECT, rf("patient", &["subject", "patient"], Some("Patient"))];

/// The search parameters of a type (besides `_id` and `_lastUpdated`).
pub fn params_for(rtype: ResourceType) -> &'static [ParamDef] {
    match rtype.as_str() {
        "Patient" => PATIENT,
        "Encounter" => ENCOUNTER_P,
        "Condition" => CONDITION,
        "Observation" => OBSERVATION,
        "AllergyIntolerance" => ALLERGY,
        "MedicationRequest" => MEDREQ,
        "DiagnosticReport" => DIAGREPORT,
        "DocumentReference" => DOCREF,
        "Procedure" => PROCEDURE,
        "CareTeam" => CARETEAM,
        "Practitioner" => PRACTITIONER,
        "Organization" => ORGANIZATION,
        "Consent" => CONSENT,
        "Provenance" => PROVENANCE,
        "MedicationAdministration" => MEDADMIN,
        "RiskAssessment" => RISK,
        "ImmunizationRecommendation" => IMMREC,
        _ => GENERIC,
    }
}

/// An R4 core search parameter: its code, type (`token`, `string`,
/// `uri`, …) and canonical URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreParam {
    /// The code used in a search (`birthdate`).
    pub code: &'static str,
    /// The FHIR search parameter type.
    pub kind: &'static str,
    /// The SearchParameter's canonical URL.
    pub url: &'static str,
}

/// The search parameters FHIR R4 (4.0.1) defines for type `t`: its own,
/// and those of Resource and DomainResource (`_id`, `_tag`, `_text`, …),
/// from the specification's table (`r4_search_params.rs`).
pub fn r4_core_params(t: &str) -> Vec<CoreParam> {
    use super::r4_search_params::TABLE;
    let of = |name: &str| TABLE.iter().find(|(n, _)| *n == name).map_or(&[][..], |(_, p)| *p);
    let mut out: Vec<CoreParam> = of("Resource")
        .iter()
        .chain(if t == "Bundle" || t == "Binary" || t == "Parameters" { &[][..] } else { of("DomainResource") })
        .chain(of(t))
        .map(|&(code, kind, url)| CoreParam { code, kind, url })
        .collect();
    out.sort_by_key(|p| p.code);
    out
}

/// The definition of search parameter `name` on `rtype`, if mamori supports it.
pub fn param_def(rtype: ResourceType, name: &str) -> Option<&'static ParamDef> {
    params_for(rtype).iter().find(|p| p.name == name)
}

// ---- parameters of packages ------------------------------------------------

/// A search parameter a loaded package defines (a `SearchParameter`
/// resource), as the search engine uses it on one base type.
#[derive(Debug, Clone)]
pub struct PackageParam {
    /// The base type it is searched on.
    pub rtype: ResourceType,
    /// Its definition: name, kind and compiled expression.
    pub def: &'static ParamDef,
    /// The SearchParameter's canonical URL.
    pub url: String,
    /// The FHIRPath expression as the package gives it.
    pub expression: String,
}

/// A package's SearchParameter the engine does not search, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSearchable {
    /// The SearchParameter's canonical URL (or its code when it has none).
    pub url: String,
    /// Why it is not searchable here.
    pub reason: String,
}

/// The search parameters of a server: mamori's own ([`params_for`]) and
/// those the loaded packages define where the engine evaluates their
/// expressions (the FHIRPath subset of [`super::fhirpath`]).
#[derive(Debug, Clone, Default)]
pub struct SearchParams {
    package: Vec<PackageParam>,
}

/// mamori's own parameters only (no package loaded).
pub static CORE_PARAMS: SearchParams = SearchParams { package: Vec::new() };

/// A parameter definition that lives as long as the process: package
/// parameters are compiled once per distinct definition (a server that
/// loads the same package again, as tests do, reuses it).
fn interned(name: &str, kind: ParamKind, target: Option<&str>, expression: &str) -> Result<&'static ParamDef, String> {
    use std::sync::Mutex;
    type Defs = Vec<(String, &'static ParamDef)>;
    static DEFS: Mutex<Defs> = Mutex::new(Vec::new());
    let key = format!("{name}\u{0}{}\u{0}{}\u{0}{expression}", kind.as_str(), target.unwrap_or(""));
    let mut defs = DEFS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, d)) = defs.iter().find(|(k, _)| *k == key) {
        return Ok(d);
    }
    let expr = super::fhirpath::parse(expression)?;
    let leak = |s: &str| -> &'static str { Box::leak(s.to_owned().into_boxed_str()) };
    let def: &'static ParamDef = Box::leak(Box::new(ParamDef {
        name: leak(name),
        kind,
        paths: &[],
        target: target.map(leak),
        expr: Some(Box::leak(Box::new(expr))),
    }));
    defs.push((key, def));
    Ok(def)
}

impl SearchParams {
    /// The parameters of `SearchParameter` resources (a package's), with
    /// those that cannot be searched and why: a type the engine has no
    /// index for (`uri`, `composite`, `special`), an expression outside
    /// the FHIRPath subset, a code mamori already defines on the type, or
    /// one defined twice.
    pub fn from_definitions<'a>(defs: impl IntoIterator<Item = &'a Value>) -> (SearchParams, Vec<NotSearchable>) {
        let mut out = SearchParams::default();
        let mut skipped = Vec::new();
        for d in defs {
            if d["resourceType"] != "SearchParameter" || d["status"] == "retired" {
                continue;
            }
            let code = d["code"].as_str().unwrap_or_default();
            let url = d["url"].as_str().unwrap_or(code).to_owned();
            let mut skip = |reason: String| skipped.push(NotSearchable { url: url.clone(), reason });
            let valid_code = !code.is_empty()
                && !code.starts_with('_')
                && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_code {
                skip(format!("the code {code:?} cannot be a search parameter's name"));
                continue;
            }
            let kind = match d["type"].as_str().unwrap_or_default() {
                "token" => ParamKind::Token,
                "string" => ParamKind::String,
                "date" => ParamKind::Date,
                "reference" => ParamKind::Reference,
                "quantity" => ParamKind::Quantity,
                "number" => ParamKind::Number,
                other => {
                    skip(format!("parameters of type {other:?} are not searchable here"));
                    continue;
                }
            };
            let Some(expression) = d["expression"].as_str().filter(|e| !e.trim().is_empty()) else {
                skip("it has no expression".into());
                continue;
            };
            let targets: Vec<&str> = d["target"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
            let target = match targets.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            let def = match interned(code, kind, target, expression) {
                Ok(d) => d,
                Err(e) => {
                    skip(format!("its expression is outside the FHIRPath subset mamori evaluates ({e})"));
                    continue;
                }
            };
            for base in d["base"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                let Ok(rtype) = ResourceType::parse(base) else {
                    skip(format!("{base} is not a resource type"));
                    continue;
                };
                if param_def(rtype, code).is_some() {
                    skip(format!("mamori defines {code} on {base} already"));
                } else if out.package.iter().any(|p| p.rtype == rtype && p.def.name == code) {
                    skip(format!("{code} on {base} is defined by another package parameter"));
                } else {
                    out.package.push(PackageParam { rtype, def, url: url.clone(), expression: expression.to_owned() });
                }
            }
        }
        (out, skipped)
    }

    /// The definition of parameter `name` on `rtype`: mamori's own, or a
    /// package's.
    pub fn def(&self, rtype: ResourceType, name: &str) -> Option<&'static ParamDef> {
        param_def(rtype, name)
            .or_else(|| self.package.iter().find(|p| p.rtype == rtype && p.def.name == name).map(|p| p.def))
    }

    /// Every parameter of `rtype`: mamori's own, then the packages'.
    pub fn of_type(&self, rtype: ResourceType) -> impl Iterator<Item = &'static ParamDef> + '_ {
        params_for(rtype).iter().chain(self.package.iter().filter(move |p| p.rtype == rtype).map(|p| p.def))
    }

    /// The packages' parameters.
    pub fn package(&self) -> &[PackageParam] {
        &self.package
    }

    /// What the search index holds for the packages' parameters, one line
    /// each (type, name, kind, expression), sorted: when it changes, the
    /// store indexes those parameters again.
    pub fn fingerprint(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .package
            .iter()
            .map(|p| format!("{} {} {} {}", p.rtype.as_str(), p.def.name, p.def.kind.as_str(), p.expression))
            .collect();
        v.sort();
        v
    }
}

// ---- index extraction -----------------------------------------------------

/// One row of the search index for the current version of a resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum IndexValue {
    /// A code (also an identifier's or contact point's value).
    Token {
        /// The code system, if the element names one.
        system: Option<String>,
        /// The code.
        code: String,
    },
    /// Text.
    String {
        /// The [`normalize`]d form (matched by default and by `:contains`).
        norm: String,
        /// The text as written (matched by `:exact`).
        exact: String,
    },
    /// A date, dateTime or period as the half-open interval `[low, high)`.
    Date {
        /// Start, in microseconds since the Unix epoch (`i64::MIN` for a
        /// period without a start).
        low: i64,
        /// End, exclusive, in microseconds since the Unix epoch (`i64::MAX`
        /// for a period without an end).
        high: i64,
    },
    /// A local reference (`Patient/p1`).
    Reference {
        /// The referenced resource's type.
        rtype: String,
        /// The referenced resource's id.
        id: String,
    },
    /// A quantity.
    Quantity {
        /// The value in millionths (see [`decimal_micros`]).
        micros: i64,
        /// The unit system, if given.
        system: Option<String>,
        /// The unit code (the `unit` text when there is no code).
        code: Option<String>,
        /// A UCUM unit's value in base units ([`super::ucum::sortable`])
        /// and the dimension's code, for comparison across units.
        canonical: Option<(i64, String)>,
        /// For a composite parameter: the code of the same element
        /// (its system, if any, and the code).
        concept: Option<(Option<String>, String)>,
    },
}

/// The UCUM system URI.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// A quantity's canonical form, when its unit is UCUM (or names no
/// system) and understood.
pub fn canonical_of(micros: i64, system: Option<&str>, code: Option<&str>) -> Option<(f64, String)> {
    if system.is_some_and(|s| s != UCUM) {
        return None;
    }
    super::ucum::canonical(micros as f64 / 1e6, code?)
}

/// A decimal's value in millionths, rounded, and its number of decimal
/// places; `None` for anything but a plain decimal (no exponent) whose
/// value fits. Quantities are indexed and compared this way, exactly.
pub fn decimal_micros(s: &str) -> Option<(i64, u32)> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.contains('.') && frac.is_empty() {
        return None;
    }
    let places = u32::try_from(frac.len()).ok()?;
    let mut micros: i64 = int.parse::<i64>().ok()?.checked_mul(1_000_000)?;
    let mut f = frac.bytes().chain(std::iter::repeat(b'0'));
    let mut scale = 100_000i64;
    for _ in 0..6 {
        micros = micros.checked_add(i64::from(f.next()? - b'0') * scale)?;
        scale /= 10;
    }
    // Round half up on the seventh place.
    if frac.len() > 6 && frac.as_bytes().get(6).is_some_and(|d| *d >= b'5') {
        micros = micros.checked_add(1)?;
    }
    Some((if neg { -micros } else { micros }, places))
}

/// One search parameter's value in a resource: a row of the search index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexEntry {
    /// The search parameter's name (a [`ParamDef::name`]).
    pub param: &'static str,
    /// The value the resource holds for it.
    pub value: IndexValue,
}

/// Everything a resource contributes to the search index (mamori's own
/// parameters).
pub fn index_entries(rtype: ResourceType, res: &Value) -> Vec<IndexEntry> {
    index_entries_in(&CORE_PARAMS, rtype, res)
}

/// Everything a resource contributes to the search index under `params`.
/// A package parameter's expression that the data takes outside the
/// subset (several items where one is needed) indexes nothing for it.
pub fn index_entries_in(params: &SearchParams, rtype: ResourceType, res: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    for p in params.of_type(rtype) {
        if let Some(e) = p.expr {
            if let Ok(vals) = super::fhirpath::evaluate(e, res) {
                vals.iter().for_each(|(v, _)| extract(p, v, &mut out));
            }
            continue;
        }
        for path in p.paths {
            let mut vals = Vec::new();
            if path.is_empty() {
                vals.push(res);
            } else {
                collect(res, path, &mut vals);
            }
            for v in vals {
                extract(p, v, &mut out);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn collect<'a>(v: &'a Value, path: &str, out: &mut Vec<&'a Value>) {
    if let Value::Array(a) = v {
        for item in a {
            collect(item, path, out);
        }
        return;
    }
    match path.split_once('.') {
        None => match v.get(path) {
            Some(Value::Array(a)) => out.extend(a.iter()),
            Some(x) => out.push(x),
            None => {}
        },
        Some((head, rest)) => {
            if let Some(x) = v.get(head) {
                collect(x, rest, out);
            }
        }
    }
}

fn extract(p: &ParamDef, v: &Value, out: &mut Vec<IndexEntry>) {
    let mut push = |value| out.push(IndexEntry { param: p.name, value });
    match p.kind {
        ParamKind::Token => match v {
            Value::String(s) => push(IndexValue::Token { system: None, code: s.clone() }),
            Value::Bool(b) => push(IndexValue::Token { system: None, code: b.to_string() }),
            Value::Object(o) => {
                // The text that goes with the code (`:text`): a
                // CodeableConcept's text and its codings' displays, a
                // Coding's display, an Identifier's type text. It is kept
                // with the strings, under the token parameter's name (a
                // parameter is never both a token and a string).
                let codings = o.get("coding").and_then(Value::as_array).into_iter().flatten();
                let texts = [o.get("text"), o.get("display"), o.get("type").and_then(|t| t.get("text"))]
                    .into_iter()
                    .chain(codings.map(|c| c.get("display")));
                for s in texts.flatten().filter_map(Value::as_str) {
                    push(IndexValue::String { norm: normalize(s), exact: s.to_owned() });
                }
                if let Some(Value::Array(codings)) = o.get("coding") {
                    for c in codings {
                        if let Some(code) = c.get("code").and_then(Value::as_str) {
                            let system = c.get("system").and_then(Value::as_str).map(str::to_owned);
                            push(IndexValue::Token { system, code: code.to_owned() });
                        }
                    }
                } else if let Some(code) = o.get("code").and_then(Value::as_str) {
                    let system = o.get("system").and_then(Value::as_str).map(str::to_owned);
                    push(IndexValue::Token { system, code: code.to_owned() });
                } else if let Some(value) = o.get("value").and_then(Value::as_str) {
                    // Identifier, ContactPoint
                    let system = o.get("system").and_then(Value::as_str).map(str::to_owned);
                    push(IndexValue::Token { system, code: value.to_owned() });
                }
            }
            _ => {}
        },
        ParamKind::String => match v {
            Value::String(s) => push(IndexValue::String { norm: normalize(s), exact: s.clone() }),
            // A HumanName or an Address (a package parameter's expression
            // may select the element): its text parts.
            Value::Object(o) => {
                const PARTS: &[&str] = &[
                    "text",
                    "family",
                    "given",
                    "prefix",
                    "suffix",
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                ];
                for part in PARTS.iter().filter_map(|k| o.get(*k)) {
                    for s in std::slice::from_ref(part).iter().chain(part.as_array().into_iter().flatten()) {
                        if let Value::String(s) = s {
                            push(IndexValue::String { norm: normalize(s), exact: s.clone() });
                        }
                    }
                }
            }
            _ => {}
        },
        ParamKind::Date => match v {
            Value::String(s) => {
                if let Some(r) = parse_date_time(s) {
                    push(IndexValue::Date { low: r.low, high: r.high });
                }
            }
            Value::Object(o) => {
                let low = o.get("start").and_then(Value::as_str).and_then(parse_date_time).map_or(i64::MIN, |r| r.low);
                let high = o.get("end").and_then(Value::as_str).and_then(parse_date_time).map_or(i64::MAX, |r| r.high);
                if o.contains_key("start") || o.contains_key("end") {
                    push(IndexValue::Date { low, high });
                }
            }
            _ => {}
        },
        ParamKind::Quantity => {
            if let Some(Value::Number(n)) = v.get("value") {
                if let Some((micros, _)) = decimal_micros(&n.to_string()) {
                    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
                    let (system, code) = (text("system"), text("code").or_else(|| text("unit")));
                    // Only a coded unit converts (the free-text `unit` is a label).
                    let canonical = canonical_of(micros, system.as_deref(), text("code").as_deref())
                        .map(|(x, d)| (super::ucum::sortable(x), d));
                    push(IndexValue::Quantity { micros, system, code, canonical, concept: None });
                }
            }
        }
        ParamKind::Number => {
            if let Value::Number(n) = v {
                if let Some((micros, _)) = decimal_micros(&n.to_string()) {
                    push(IndexValue::Quantity { micros, system: None, code: None, canonical: None, concept: None });
                }
            }
        }
        ParamKind::CodeQuantity => {
            // The element's code (each coding) with its own quantity.
            let q = v.get("valueQuantity");
            let Some((micros, _)) = q.and_then(|q| q.get("value")).and_then(|n| {
                if let Value::Number(n) = n {
                    decimal_micros(&n.to_string())
                } else {
                    None
                }
            }) else {
                return;
            };
            let text = |k: &str| q.and_then(|q| q.get(k)).and_then(Value::as_str).map(str::to_owned);
            let (system, code) = (text("system"), text("code").or_else(|| text("unit")));
            let canonical = canonical_of(micros, system.as_deref(), text("code").as_deref())
                .map(|(x, d)| (super::ucum::sortable(x), d));
            for coding in v.get("code").and_then(|c| c.get("coding")).and_then(Value::as_array).into_iter().flatten() {
                let Some(c) = coding.get("code").and_then(Value::as_str) else { continue };
                let csys = coding.get("system").and_then(Value::as_str).map(str::to_owned);
                push(IndexValue::Quantity {
                    micros,
                    system: system.clone(),
                    code: code.clone(),
                    canonical: canonical.clone(),
                    concept: Some((csys, c.to_owned())),
                });
            }
        }
        ParamKind::Reference => {
            if let Some(r) = v.get("reference").and_then(Value::as_str).and_then(|s| LocalRef::parse(s).ok()) {
                if p.target.is_none_or(|t| t == r.rtype.as_str()) {
                    push(IndexValue::Reference { rtype: r.rtype.as_str().to_owned(), id: r.id.as_str().to_owned() });
                }
            }
        }
    }
}

/// Case-, width- and accent-insensitive form of a string, with katakana
/// folded to hiragana so that "ヤマダ", "ﾔﾏﾀﾞ" and "やまだ" match.
pub fn normalize(s: &str) -> String {
    let decomposed: String = s.nfkd().filter(|c| !('\u{0300}'..='\u{036f}').contains(c)).collect();
    let mut out = String::with_capacity(decomposed.len());
    let mut last_space = true;
    for c in decomposed.nfkc().flat_map(char::to_lowercase) {
        let c = match c {
            '\u{30a1}'..='\u{30f6}' => char::from_u32(c as u32 - 0x60).unwrap_or(c),
            _ => c,
        };
        if c.is_whitespace() {
            if !last_space {
                out.push(' ');
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    if out.ends_with(' ') {
        out.pop();
    }
    out
}

// ---- query parsing ---------------------------------------------------------

/// A FHIR date search prefix; `eq` when none is given.
/// [`date_matches`] defines what each means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// `eq`: the value's range lies within the searched range.
    Eq,
    /// `ne`: the value's range does not lie within the searched range.
    Ne,
    /// `gt`: the value ends after the searched range ends.
    Gt,
    /// `lt`: the value starts before the searched range starts.
    Lt,
    /// `ge`: the value ends after the searched range starts.
    Ge,
    /// `le`: the value starts before the searched range ends.
    Le,
    /// `sa` (starts after): the value starts at or after the searched range's end.
    Sa,
    /// `eb` (ends before): the value ends at or before the searched range's start.
    Eb,
    /// `ap` (approximately): the value overlaps the searched range widened
    /// by 10 % (of a quantity; of a date's distance from now).
    Ap,
}

/// One alternative of a [`Clause`]: a condition on one index value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `_id` equals this id.
    Id(String),
    /// `_lastUpdated` satisfies the prefix for the range.
    LastUpdated(Prefix, DateRange),
    /// A token (`[system|]code`).
    Token {
        /// `None` for any system (`code`), `Some(None)` for no system
        /// (`|code`), `Some(Some(s))` for system `s` (`s|code`).
        system: Option<Option<String>>,
        /// `None` for any code of the system (`system|`).
        code: Option<String>,
    },
    /// The normalized text starts with this (the default string match).
    StringStarts(String),
    /// The text equals this exactly, as written (`:exact`).
    StringExact(String),
    /// The normalized text contains this (`:contains`).
    StringContains(String),
    /// A date parameter satisfies the prefix for the range.
    Date(Prefix, DateRange),
    /// A reference.
    Reference {
        /// The referenced type, if known (from the value, a `:Type`
        /// modifier or the parameter's only target); `None` matches any.
        rtype: Option<String>,
        /// The referenced resource's id.
        id: String,
    },
    /// A quantity comparison: the value in millionths, the half width of
    /// the searched value's precision (for `eq` and `ne`), the unit.
    Quantity {
        /// The comparison.
        prefix: Prefix,
        /// The searched value, in millionths.
        micros: i64,
        /// Half the precision of the value as written (5.4: 0.05).
        half_width: i64,
        /// The unit system, if given.
        system: Option<String>,
        /// The unit code, if given.
        code: Option<String>,
    },
    /// A composite of a code and a quantity of the same element
    /// (`code-value-quantity=http://loinc.org|8867-4$gt70`).
    CodeQuantity {
        /// As in [`Cond::Token`].
        system: Option<Option<String>>,
        /// The code.
        code: String,
        /// The quantity condition ([`Cond::Quantity`]).
        quantity: Box<Cond>,
    },
    /// A chained parameter (`subject:Patient.name=yamada`): the reference
    /// points at a resource of `target` that satisfies `inner`.
    Chain {
        /// The referenced type.
        target: ResourceType,
        /// The condition on the referenced resource.
        inner: Box<Clause>,
    },
    /// Reverse chaining (`_has:Observation:patient:code=1234-5`): some
    /// current resource of `source` refers to this one through its
    /// reference parameter and satisfies `inner`. Which resources of
    /// `source` may be looked at is the caller's to decide (the store
    /// takes a restriction for each source type).
    Has {
        /// The type of the referring resources.
        source: ResourceType,
        /// Its reference parameter that points here.
        param: &'static str,
        /// The condition on the referring resource.
        inner: Box<Clause>,
    },
    /// A token's text (`:text`): the normalized text that goes with a
    /// code (a CodeableConcept's text, a Coding's display, an
    /// Identifier's type text) contains this.
    TokenText(String),
    /// `:not`: the resource holds no value matching any of these token
    /// conditions (also when it holds no value at all).
    Not(Vec<Cond>),
    /// `:missing`: the resource has no value (`true`) or some value
    /// (`false`) for the parameter.
    Missing {
        /// `true` for no value.
        missing: bool,
        /// The parameter's kind (where its values are indexed).
        kind: ParamKind,
    },
}

/// A parameter with all its comma-separated alternatives (OR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The index parameter name (`_id`/`_lastUpdated` for the special ones).
    pub param: &'static str,
    /// The alternatives; the clause matches if any of them does.
    pub any_of: Vec<Cond>,
}

/// The order of a search's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By id, ascending (the default).
    Id,
    /// By last update, oldest first (`_sort=_lastUpdated`).
    LastUpdatedAsc,
    /// By last update, newest first (`_sort=-_lastUpdated`).
    LastUpdatedDesc,
    /// By one to [`MAX_SORT_KEYS`] parameters (`_sort=date`,
    /// `_sort=-date,code`): per key ascending by each resource's lowest
    /// value, descending by its highest; resources without a value come
    /// last on that key; ties by id.
    Params(SortKeys),
}

/// At most this many keys in one `_sort`.
pub const MAX_SORT_KEYS: usize = 3;

/// One key of a parameter sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    /// The parameter (`_lastUpdated` for the resource's last update).
    pub name: &'static str,
    /// Its kind (where its values are indexed).
    pub kind: ParamKind,
    /// Descending.
    pub desc: bool,
}

/// The keys of a parameter sort, in order (small and `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKeys {
    keys: [Option<SortKey>; MAX_SORT_KEYS],
}

impl SortKeys {
    /// The keys, first to last.
    pub fn iter(&self) -> impl Iterator<Item = SortKey> + '_ {
        self.keys.iter().flatten().copied()
    }
    /// How many keys.
    pub fn len(&self) -> usize {
        self.iter().count()
    }
    /// Whether there is none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A resource's sort value under [`Sort::Params`], as a paging cursor
/// keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    /// The resource has no value for the parameter.
    Missing,
    /// A date bound, in microseconds since the Unix epoch.
    Int(i64),
    /// A normalized string or a code.
    Text(String),
}

/// Whether a search counts all its matches (`_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    /// No total (`_total=none`): the count query is skipped.
    None,
    /// The default: the matches are counted up to [`TOTAL_BOUND`]; a
    /// search with more has no total. Counting every match of a broad
    /// search (a code across ten million resources) costs as much as the
    /// matches, and a page should not.
    Bounded,
    /// An exact total (asked for as `accurate` or `estimate`).
    Accurate,
}

/// Up to how many matches a search without `_total` counts them.
pub const TOTAL_BOUND: u64 = 1000;

/// A parsed search: all clauses must match (AND).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    /// The resource type searched.
    pub rtype: ResourceType,
    /// The conditions, all of which must match.
    pub clauses: Vec<Clause>,
    /// The page size (`_count`), at most [`MAX_COUNT`].
    pub count: usize,
    /// The order of the results (`_sort`).
    pub sort: Sort,
    /// Whether the total is counted (`_total`).
    pub total: Total,
    /// `_summary=count`: only the total, no entries.
    pub summary_count: bool,
    /// Keyset cursor: the sort key of the last entry of the previous page.
    pub after: Option<Cursor>,
    /// Keyset cursor for a previous page: the first entry of the next page.
    pub before: Option<Cursor>,
    /// The parameters as given, for self/next links (without paging params).
    pub canonical: Vec<(String, String)>,
    /// `_include`: resources the matches reference, to add to the page.
    pub include: Vec<Include>,
    /// `_revinclude`: resources that reference the matches, to add.
    pub revinclude: Vec<Include>,
    /// `_elements`, `_summary=data`: what of each resource to return.
    pub subset: super::subset::Subset,
}

/// One `_include` or `_revinclude`: `source:param[:target]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The resource type whose reference parameter is followed.
    pub source: ResourceType,
    /// The reference search parameter.
    pub param: &'static str,
    /// Only references to this type, if given.
    pub target: Option<ResourceType>,
    /// `:iterate`: also applied to the resources included, round after
    /// round (at most [`MAX_ITERATE`] rounds).
    pub iterate: bool,
}

/// At most this many resources are added to one page by `_include` and
/// `_revinclude` together (a page says so when it stops there).
pub const MAX_INCLUDED: usize = 1000;

/// `:iterate` follows included resources at most this many rounds past the
/// first (a cycle of references ends anyway: nothing is included twice).
pub const MAX_ITERATE: usize = 4;

/// `_sort=a,-b,c`: one to [`MAX_SORT_KEYS`] date, string, token or
/// quantity parameters of the type, or `_lastUpdated`, each with `-` for
/// descending; a final `_id` (the tie-break anyway) is allowed.
fn parse_sort_keys(sp: &SearchParams, rtype: ResourceType, v: &str) -> Result<SortKeys, &'static str> {
    const WHAT: &str = "supported: _id, _lastUpdated, or up to 3 date, string, token or quantity parameters of the type (and _lastUpdated), comma-separated, each with - for descending";
    let mut items: Vec<&str> = v.split(',').collect();
    if items.len() > 1 && items.last() == Some(&"_id") {
        items.pop();
    }
    if items.is_empty() || items.len() > MAX_SORT_KEYS {
        return Err(WHAT);
    }
    let mut keys = [None; MAX_SORT_KEYS];
    for (i, item) in items.iter().enumerate() {
        let (desc, name) = match item.strip_prefix('-') {
            Some(n) => (true, n),
            None => (false, *item),
        };
        let key = if name == "_lastUpdated" {
            SortKey { name: "_lastUpdated", kind: ParamKind::Date, desc }
        } else {
            let def = sp
                .def(rtype, name)
                .filter(|d| !matches!(d.kind, ParamKind::Reference | ParamKind::CodeQuantity))
                .ok_or(WHAT)?;
            SortKey { name: def.name, kind: def.kind, desc }
        };
        if keys.iter().flatten().any(|k: &SortKey| k.name == key.name) {
            return Err("a parameter appears twice in _sort");
        }
        keys[i] = Some(key);
    }
    Ok(SortKeys { keys })
}

fn parse_include(
    sp: &SearchParams,
    rtype: ResourceType,
    v: &str,
    rev: bool,
    iterate: bool,
) -> Result<Include, &'static str> {
    let mut it = v.split(':');
    let (Some(src), Some(param)) = (it.next(), it.next()) else {
        return Err("expected Type:parameter[:TargetType]");
    };
    let target = it.next().map(ResourceType::parse).transpose().map_err(|_| "unknown target type")?;
    if it.next().is_some() {
        return Err("expected Type:parameter[:TargetType]");
    }
    let source = ResourceType::parse(src).map_err(|_| "unknown resource type")?;
    if !rev && !iterate && source != rtype {
        return Err("an _include names the type searched (or use _include:iterate)");
    }
    let def = sp
        .def(source, param)
        .filter(|d| d.kind == ParamKind::Reference)
        .ok_or("not a reference parameter of that type")?;
    if let (Some(t), Some(only)) = (target, def.target) {
        if t.as_str() != only {
            return Err("that parameter does not refer to the target type");
        }
    }
    if rev && !iterate {
        // The references must be able to point at the type searched.
        if def.target.is_some_and(|t| t != rtype.as_str()) || target.is_some_and(|t| t != rtype) {
            return Err("that parameter does not refer to the type searched");
        }
        return Ok(Include { source, param: def.name, target: Some(rtype), iterate });
    }
    let target = match (target, def.target) {
        (Some(t), _) => Some(t),
        (None, Some(only)) => Some(ResourceType::parse(only).map_err(|_| "unknown target type")?),
        (None, None) => None,
    };
    Ok(Include { source, param: def.name, target, iterate })
}

/// A position in a result list for keyset paging: the sort key of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The entry's last update, in microseconds since the Unix epoch.
    pub last_updated: i64,
    /// The entry's resource id (breaks ties between equal times).
    pub id: String,
    /// Under [`Sort::Params`]: the entry's sort value for each key.
    pub keys: Vec<SortValue>,
}

fn encode_key(k: &SortValue) -> String {
    match k {
        SortValue::Missing => "n".into(),
        SortValue::Int(i) => format!("i{i}"),
        SortValue::Text(t) => format!("s{}", t.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

fn decode_key(t: &str) -> Option<SortValue> {
    Some(match t.as_bytes().first()? {
        b'n' if t == "n" => SortValue::Missing,
        b'i' => SortValue::Int(t.get(1..)?.parse().ok()?),
        b's' => {
            let h = t.get(1..)?;
            if h.len() % 2 != 0 {
                return None;
            }
            let bytes: Option<Vec<u8>> =
                (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect();
            SortValue::Text(String::from_utf8(bytes?).ok()?)
        }
        _ => return None,
    })
}

impl Cursor {
    /// The cursor as a `_cursor`/`_before` parameter value: `<micros>.<id>`,
    /// or under a parameter sort its keys, comma-separated (`n`, `i<int>`,
    /// `s<hex>`), then `.<id>`.
    pub fn encode(&self) -> String {
        if self.keys.is_empty() {
            return format!("{}.{}", self.last_updated, self.id);
        }
        format!("{}.{}", self.keys.iter().map(encode_key).collect::<Vec<_>>().join(","), self.id)
    }
    /// Parses a value made by [`Cursor::encode`]; `None` if malformed.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (t, id) = s.split_once('.')?;
        if !is_fhir_id(id) {
            return None;
        }
        let id = id.to_owned();
        if t.bytes().next()?.is_ascii_digit() || t.starts_with('-') {
            return Some(Cursor { last_updated: t.parse().ok()?, id, keys: Vec::new() });
        }
        let keys: Option<Vec<SortValue>> = t.split(',').map(decode_key).collect();
        let keys = keys?;
        if keys.len() > MAX_SORT_KEYS {
            return None;
        }
        Some(Cursor { last_updated: 0, id, keys })
    }
}

/// A search request that cannot be run as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SearchError {
    /// A parameter this resource type does not support (name, type).
    #[error("unknown search parameter '{0}' for {1}")]
    UnknownParam(String, ResourceType),
    /// A modifier this parameter does not support (modifier, parameter).
    #[error("unsupported modifier ':{0}' on parameter '{1}'")]
    UnsupportedModifier(String, String),
    /// A value that does not parse for its parameter.
    #[error("invalid value '{value}' for parameter '{param}': {why}")]
    BadValue {
        /// The parameter's name.
        param: String,
        /// The value, cut to 60 characters.
        value: String,
        /// What was expected.
        why: &'static str,
    },
    /// A value mamori does not support.
    #[error("unsupported value for {0}")]
    Unsupported(String),
    /// A value refused, with why (parameter, explanation).
    #[error("invalid value for {0}: {1}")]
    Invalid(String, String),
}

/// The page size when the request gives no `_count`.
pub const DEFAULT_COUNT: usize = 20;
/// The largest page size; a larger `_count` is lowered to it.
pub const MAX_COUNT: usize = 1000;

const IGNORED: &[&str] = &["_format", "_pretty"];

/// Parses search parameters. With `lenient`, unknown parameters are dropped
/// (and returned) instead of failing, as `Prefer: handling=lenient` asks.
pub fn parse_query(
    rtype: ResourceType,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<(SearchQuery, Vec<String>), SearchError> {
    parse_query_in(&CORE_PARAMS, rtype, pairs, lenient)
}

/// As [`parse_query`], with the packages' parameters of `params` too.
pub fn parse_query_in(
    params: &SearchParams,
    rtype: ResourceType,
    pairs: &[(String, String)],
    lenient: bool,
) -> Result<(SearchQuery, Vec<String>), SearchError> {
    let sp = params;
    let mut q = SearchQuery {
        rtype,
        clauses: Vec::new(),
        count: DEFAULT_COUNT,
        sort: Sort::Id,
        total: Total::Bounded,
        summary_count: false,
        after: None,
        before: None,
        canonical: Vec::new(),
        include: Vec::new(),
        revinclude: Vec::new(),
        subset: super::subset::Subset::default(),
    };
    let mut ignored = Vec::new();
    for (k, v) in pairs {
        let bad =
            |why: &'static str| SearchError::BadValue { param: k.clone(), value: v.chars().take(60).collect(), why };
        match k.as_str() {
            "_count" => {
                let n: usize = v.parse().map_err(|_| bad("expected a non-negative integer"))?;
                q.count = n.min(MAX_COUNT);
                // Kept in the links as applied (capped), so that every page
                // of a search has the size the first one had.
                q.canonical.push((k.clone(), q.count.to_string()));
                continue;
            }
            "_cursor" => {
                q.after = Some(Cursor::decode(v).ok_or_else(|| bad("malformed paging cursor"))?);
                continue;
            }
            "_before" => {
                q.before = Some(Cursor::decode(v).ok_or_else(|| bad("malformed paging cursor"))?);
                continue;
            }
            "_sort" => {
                q.sort = match v.as_str() {
                    "_id" => Sort::Id,
                    "_lastUpdated" => Sort::LastUpdatedAsc,
                    "-_lastUpdated" => Sort::LastUpdatedDesc,
                    other => Sort::Params(parse_sort_keys(sp, rtype, other).map_err(bad)?),
                };
            }
            "_total" => {
                q.total = match v.as_str() {
                    "none" => Total::None,
                    "accurate" | "estimate" => Total::Accurate,
                    _ => return Err(bad("expected none, estimate or accurate")),
                };
            }
            // Aidbox's name for _total, sent by the fhirpy client's count().
            "_totalMethod" => {
                q.total = match v.as_str() {
                    "none" => Total::None,
                    "count" | "estimate" => Total::Accurate,
                    _ => return Err(bad("expected count, estimate or none")),
                };
            }
            "_summary" => match v.as_str() {
                "count" => q.summary_count = true,
                other => super::subset::parse_summary(rtype.as_str(), other, &mut q.subset)
                    .map_err(|e| SearchError::Invalid(k.clone(), e))?,
            },
            "_elements" => {
                q.subset.elements = Some(super::subset::Subset::parse_elements(v).map_err(bad)?);
            }
            "_include"
            | "_revinclude"
            | "_include:iterate"
            | "_revinclude:iterate"
            | "_include:recurse"
            | "_revinclude:recurse" => {
                let rev = k.starts_with("_revinclude");
                // `:recurse` is R3's name for `:iterate`.
                let iterate = k.contains(':');
                let inc = parse_include(sp, rtype, v, rev, iterate).map_err(bad)?;
                if rev {
                    q.revinclude.push(inc)
                } else {
                    q.include.push(inc)
                }
            }
            k if IGNORED.contains(&k) => continue,
            k if k.starts_with("_has:") => match parse_has(sp, rtype, k, v) {
                Ok(c) => q.clauses.push(c),
                Err(SearchError::UnknownParam(..)) if lenient => {
                    ignored.push(k.to_owned());
                    continue;
                }
                Err(e) => return Err(e),
            },
            _ => {
                let parsed = match k.split_once('.') {
                    Some((left, right)) => parse_chain(sp, rtype, left, right, v),
                    None => {
                        let (name, modifier) = match k.split_once(':') {
                            Some((n, m)) => (n, Some(m)),
                            None => (k.as_str(), None),
                        };
                        parse_clause(sp, rtype, name, modifier, v)
                    }
                };
                match parsed {
                    Ok(c) => q.clauses.push(c),
                    Err(SearchError::UnknownParam(..)) if lenient => {
                        ignored.push(k.clone());
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        q.canonical.push((k.clone(), v.clone()));
    }
    let sort_keys = match q.sort {
        Sort::Params(k) => k.len(),
        _ => 0,
    };
    if sort_keys > 0 && q.before.is_some() {
        return Err(SearchError::Unsupported("_before with a _sort on a parameter (page forward with next)".into()));
    }
    if q.after.as_ref().is_some_and(|c| c.keys.len() != sort_keys) {
        return Err(SearchError::BadValue {
            param: "_cursor".into(),
            value: String::new(),
            why: "the cursor is for another _sort",
        });
    }
    Ok((q, ignored))
}

/// A chained parameter, one level: `param[:Type].chained[:modifier]`.
fn parse_chain(
    sp: &SearchParams,
    rtype: ResourceType,
    left: &str,
    right: &str,
    raw: &str,
) -> Result<Clause, SearchError> {
    let bad = |why: &'static str| SearchError::BadValue {
        param: format!("{left}.{right}"),
        value: raw.chars().take(60).collect(),
        why,
    };
    let (name, ty) = match left.split_once(':') {
        Some((n, t)) => (n, Some(t)),
        None => (left, None),
    };
    let def = sp.def(rtype, name).ok_or_else(|| SearchError::UnknownParam(name.to_owned(), rtype))?;
    if def.kind != ParamKind::Reference {
        return Err(bad("only a reference parameter can be chained"));
    }
    let target = match (ty, def.target) {
        (Some(t), only) => {
            let t = ResourceType::parse(t).map_err(|_| bad("unknown resource type"))?;
            if only.is_some_and(|o| o != t.as_str()) {
                return Err(bad("the parameter does not refer to that type"));
            }
            t
        }
        (None, Some(only)) => ResourceType::parse(only).map_err(|_| bad("unknown resource type"))?,
        (None, None) => return Err(bad("name the referenced type: parameter:Type.chained")),
    };
    if right.contains('.') {
        return Err(SearchError::Unsupported(format!("{left}.{right} (only one level of chaining)")));
    }
    let (cname, cmod) = match right.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (right, None),
    };
    let inner = parse_clause(sp, target, cname, cmod, raw)?;
    Ok(Clause { param: def.name, any_of: vec![Cond::Chain { target, inner: Box::new(inner) }] })
}

/// Reverse chaining, one level: `_has:Source:reference-param:param[:modifier]`.
fn parse_has(sp: &SearchParams, rtype: ResourceType, key: &str, raw: &str) -> Result<Clause, SearchError> {
    let bad = |why: &'static str| SearchError::BadValue {
        param: key.chars().take(80).collect(),
        value: raw.chars().take(60).collect(),
        why,
    };
    let mut parts = key.splitn(4, ':').skip(1);
    let (Some(source), Some(refp), Some(rest)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected _has:Type:reference-parameter:parameter"));
    };
    if rest.starts_with("_has") {
        return Err(SearchError::Unsupported(format!("{key} (only one level of _has)")));
    }
    let source = ResourceType::parse(source).map_err(|_| bad("unknown resource type"))?;
    let def = sp.def(source, refp).ok_or_else(|| SearchError::UnknownParam(refp.to_owned(), source))?;
    if def.kind != ParamKind::Reference {
        return Err(bad("the second part must be a reference parameter of the referring type"));
    }
    if def.target.is_some_and(|t| t != rtype.as_str()) {
        return Err(bad("that reference parameter does not refer to this type"));
    }
    let (name, modifier) = match rest.split_once(':') {
        Some((n, m)) => (n, Some(m)),
        None => (rest, None),
    };
    if name.contains('.') {
        return Err(SearchError::Unsupported(format!("{key} (no chain inside _has)")));
    }
    let inner = parse_clause(sp, source, name, modifier, raw)?;
    Ok(Clause { param: "_has", any_of: vec![Cond::Has { source, param: def.name, inner: Box::new(inner) }] })
}

impl SearchQuery {
    /// The types whose resources `_has` clauses look at.
    pub fn has_sources(&self) -> Vec<ResourceType> {
        let mut out: Vec<ResourceType> = Vec::new();
        for c in &self.clauses {
            for cond in &c.any_of {
                if let Cond::Has { source, .. } = cond {
                    if !out.contains(source) {
                        out.push(*source);
                    }
                }
            }
        }
        out
    }
}

fn parse_clause(
    sp: &SearchParams,
    rtype: ResourceType,
    name: &str,
    modifier: Option<&str>,
    raw: &str,
) -> Result<Clause, SearchError> {
    let bad = |why: &'static str| SearchError::BadValue {
        param: name.to_owned(),
        value: raw.chars().take(60).collect(),
        why,
    };
    let unsupported_mod = |m: &str| SearchError::UnsupportedModifier(m.to_owned(), name.to_owned());
    let values = split_or(raw);
    if values.iter().any(String::is_empty) {
        return Err(bad("empty value"));
    }
    match name {
        "_id" => {
            if let Some(m) = modifier {
                return Err(unsupported_mod(m));
            }
            let mut any_of = Vec::new();
            for v in values {
                if !is_fhir_id(&v) {
                    return Err(bad("not a valid id"));
                }
                any_of.push(Cond::Id(v));
            }
            return Ok(Clause { param: "_id", any_of });
        }
        "_lastUpdated" => {
            if let Some(m) = modifier {
                return Err(unsupported_mod(m));
            }
            let mut any_of = Vec::new();
            for v in values {
                let (p, r) = parse_prefixed_date(&v).ok_or_else(|| bad("expected [prefix]date"))?;
                any_of.push(Cond::LastUpdated(p, r));
            }
            return Ok(Clause { param: "_lastUpdated", any_of });
        }
        _ => {}
    }
    let def = sp.def(rtype, name).ok_or_else(|| SearchError::UnknownParam(name.to_owned(), rtype))?;
    if modifier == Some("missing") {
        let missing = match raw {
            "true" => true,
            "false" => false,
            _ => return Err(bad("expected true or false")),
        };
        return Ok(Clause { param: def.name, any_of: vec![Cond::Missing { missing, kind: def.kind }] });
    }
    let mut any_of = Vec::new();
    for v in values {
        let c = match def.kind {
            ParamKind::String => match modifier {
                None => Cond::StringStarts(normalize(&v)),
                Some("exact") => Cond::StringExact(v),
                Some("contains") => Cond::StringContains(normalize(&v)),
                Some(m) => return Err(unsupported_mod(m)),
            },
            ParamKind::Token => match modifier {
                None | Some("not") => parse_token(&v).ok_or_else(|| bad("expected [system|]code"))?,
                Some("text") => Cond::TokenText(normalize(&v)),
                Some(m) => return Err(unsupported_mod(m)),
            },
            ParamKind::Date => {
                if let Some(m) = modifier {
                    return Err(unsupported_mod(m));
                }
                let (p, r) = parse_prefixed_date(&v)
                    .ok_or_else(|| bad("expected [prefix]date, prefixes eq ne gt lt ge le sa eb"))?;
                Cond::Date(p, r)
            }
            ParamKind::Quantity => {
                if let Some(m) = modifier {
                    return Err(unsupported_mod(m));
                }
                parse_quantity(&v)
                    .ok_or_else(|| bad("expected [prefix]number[|system|code], prefixes eq ne gt lt ge le sa eb"))?
            }
            ParamKind::CodeQuantity => {
                if let Some(m) = modifier {
                    return Err(unsupported_mod(m));
                }
                let why = "expected [system|]code$[prefix]number[|system|code]";
                let (tok, q) = v.split_once('$').ok_or_else(|| bad(why))?;
                let (system, code) = match tok.split_once('|') {
                    None => (None, tok),
                    Some(("", c)) => (Some(None), c),
                    Some((sy, c)) => (Some(Some(sy.to_owned())), c),
                };
                if code.is_empty() {
                    return Err(bad(why));
                }
                let quantity = parse_quantity(q).ok_or_else(|| bad(why))?;
                Cond::CodeQuantity { system, code: code.to_owned(), quantity: Box::new(quantity) }
            }
            ParamKind::Number => {
                if let Some(m) = modifier {
                    return Err(unsupported_mod(m));
                }
                match parse_quantity(&v) {
                    Some(c @ Cond::Quantity { system: None, code: None, .. }) if !v.contains('|') => c,
                    _ => return Err(bad("expected [prefix]number, prefixes eq ne gt lt ge le sa eb ap")),
                }
            }
            ParamKind::Reference => {
                let type_mod = match modifier {
                    None => None,
                    Some(m) => Some(ResourceType::parse(m).map_err(|_| unsupported_mod(m))?),
                };
                parse_ref_value(&v, def.target, type_mod).ok_or_else(|| bad("expected Type/id or id"))?
            }
        };
        any_of.push(c);
    }
    if modifier == Some("not") {
        // `gender:not=male,female`: neither (not "not male or not female").
        any_of = vec![Cond::Not(any_of)];
    }
    Ok(Clause { param: def.name, any_of })
}

/// The most codes a `:below` or `:above` may stand for.
pub const MAX_SUBSUMED: usize = 1000;

/// Rewrites token `:below` and `:above` (subsumption, FHIR R4 search
/// 3.1.1.5.5) into the plain token search they stand for: the code with
/// every code below it (or above it) in its code system's hierarchy, as
/// `concept` nesting in the CodeSystem `code_system` finds for the
/// system's URL (a loaded package's). The value must name its system;
/// a system not found is an error, never a guess. A code the system does
/// not hold stands for itself. Other parameters are returned unchanged.
pub fn expand_subsumption<F>(
    rtype: ResourceType,
    pairs: Vec<(String, String)>,
    code_system: F,
) -> Result<Vec<(String, String)>, SearchError>
where
    F: Fn(&str) -> Option<std::sync::Arc<Value>>,
{
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        let Some((name, m @ ("below" | "above"))) = k.split_once(':') else {
            out.push((k, v));
            continue;
        };
        if !param_def(rtype, name).is_some_and(|d| d.kind == ParamKind::Token) {
            out.push((k, v));
            continue;
        }
        let mut codes: Vec<String> = Vec::new();
        for value in split_or(&v) {
            let (system, code) = match value.split_once('|') {
                Some((s, c)) if !s.is_empty() && !c.is_empty() => (s.to_owned(), c.to_owned()),
                _ => {
                    return Err(SearchError::BadValue {
                        param: k.clone(),
                        value: value.chars().take(60).collect(),
                        why: "expected system|code: :below and :above need the code system",
                    })
                }
            };
            let cs = code_system(&system).filter(|cs| cs["resourceType"] == "CodeSystem").ok_or_else(|| {
                SearchError::Invalid(
                    k.clone(),
                    format!("the code system {system} is not in a loaded FHIR package; :{m} needs its hierarchy"),
                )
            })?;
            let mut parent: HashMap<String, Option<String>> = HashMap::new();
            let mut children: HashMap<String, Vec<String>> = HashMap::new();
            fn walk(
                concepts: &Value,
                up: Option<&str>,
                parent: &mut HashMap<String, Option<String>>,
                children: &mut HashMap<String, Vec<String>>,
            ) {
                for c in concepts.as_array().into_iter().flatten() {
                    let Some(code) = c["code"].as_str() else { continue };
                    parent.insert(code.to_owned(), up.map(str::to_owned));
                    if let Some(u) = up {
                        children.entry(u.to_owned()).or_default().push(code.to_owned());
                    }
                    walk(&c["concept"], Some(code), parent, children);
                }
            }
            walk(&cs["concept"], None, &mut parent, &mut children);
            let mut found = vec![code.clone()];
            if m == "below" {
                let mut i = 0;
                while let Some(c) = found.get(i).cloned() {
                    found.extend(children.get(&c).into_iter().flatten().cloned());
                    i += 1;
                    if found.len() > MAX_SUBSUMED {
                        break;
                    }
                }
            } else {
                let mut c = code.clone();
                while let Some(Some(p)) = parent.get(&c) {
                    if found.contains(p) {
                        break;
                    }
                    found.push(p.clone());
                    c = p.clone();
                }
            }
            let esc = |x: &str| x.replace('\\', "\\\\").replace(',', "\\,").replace('$', "\\$");
            for c in found {
                let item = format!("{}|{}", esc(&system), esc(&c));
                if !codes.contains(&item) {
                    codes.push(item);
                }
            }
            if codes.len() > MAX_SUBSUMED {
                return Err(SearchError::Invalid(
                    k.clone(),
                    format!("stands for more than {MAX_SUBSUMED} codes; search a narrower code"),
                ));
            }
        }
        out.push((name.to_owned(), codes.join(",")));
    }
    Ok(out)
}

/// `[system|]code`, `|code` (no system) or `system|` (any code of it).
fn parse_token(v: &str) -> Option<Cond> {
    Some(match v.split_once('|') {
        None => Cond::Token { system: None, code: Some(v.to_owned()) },
        Some(("", c)) if !c.is_empty() => Cond::Token { system: Some(None), code: Some(c.to_owned()) },
        Some((s, "")) if !s.is_empty() => Cond::Token { system: Some(Some(s.to_owned())), code: None },
        Some((s, c)) if !s.is_empty() && !c.is_empty() => {
            Cond::Token { system: Some(Some(s.to_owned())), code: Some(c.to_owned()) }
        }
        _ => return None,
    })
}

/// `[prefix]number[|system|code]` (FHIR R4 search 3.1.1.4.6).
fn parse_quantity(v: &str) -> Option<Cond> {
    let mut parts = v.split('|');
    let number = parts.next()?;
    let (system, code) = match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) => (None, None),
        (Some(s), Some(c), None) => {
            let some = |x: &str| (!x.is_empty()).then(|| x.to_owned());
            (some(s), some(c))
        }
        _ => return None,
    };
    let (prefix, rest) = split_prefix(number);
    let (micros, places) = decimal_micros(rest)?;
    // 5.4 stands for [5.35, 5.45): half a unit of its last place.
    let half_width = if places >= 6 { 0 } else { 5 * 10i64.pow(5 - places) };
    // `ap`: within 10 % of the value (at least its own precision).
    let half_width = if prefix == Prefix::Ap { half_width.max(micros.saturating_abs() / 10) } else { half_width };
    Some(Cond::Quantity { prefix, micros, half_width, system, code })
}

fn parse_ref_value(v: &str, target: Option<&str>, type_mod: Option<ResourceType>) -> Option<Cond> {
    // Absolute URLs: take the trailing Type/id.
    let tail = if v.starts_with("http://") || v.starts_with("https://") {
        let parts: Vec<&str> = v.trim_end_matches('/').rsplitn(3, '/').collect();
        match parts.as_slice() {
            [id, t, _] => format!("{t}/{id}"),
            _ => return None,
        }
    } else {
        v.to_owned()
    };
    if let Ok(r) = LocalRef::parse(&tail) {
        if target.is_some_and(|t| t != r.rtype.as_str()) || type_mod.is_some_and(|t| t != r.rtype) {
            return None;
        }
        return Some(Cond::Reference { rtype: Some(r.rtype.as_str().to_owned()), id: r.id.as_str().to_owned() });
    }
    if is_fhir_id(&tail) {
        let rtype = type_mod.map(|t| t.as_str()).or(target).map(str::to_owned);
        return Some(Cond::Reference { rtype, id: tail });
    }
    None
}

fn parse_prefixed_date(v: &str) -> Option<(Prefix, DateRange)> {
    let (p, rest) = split_prefix(v);
    let mut r = parse_search_date(rest)?;
    if p == Prefix::Ap {
        // FHIR's recommendation: 10 % of the distance between now and the
        // date, on either side (never narrower than the date as written).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let mid = r.low / 2 + r.high / 2;
        let margin = (now - mid).abs() / 10;
        r.low = r.low.saturating_sub(margin);
        r.high = r.high.saturating_add(margin);
    }
    Some((p, r))
}

/// A value's comparison prefix (`ge2024`, `gt75`) and the rest; `eq`
/// when it has none.
fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, v.get(2..).unwrap_or(""))
}

/// Splits on unescaped commas; `\,` is a literal comma.
fn split_or(raw: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',') | Some('|') | Some('$') | Some('\\')) => {
                if let (Some(n), Some(last)) = (chars.next(), out.last_mut()) {
                    last.push(n);
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// Does a date range satisfy a prefixed condition? (Also the reference
/// semantics for the SQL the store generates; see the store's tests.)
pub fn date_matches(p: Prefix, s: DateRange, low: i64, high: i64) -> bool {
    match p {
        Prefix::Eq => low >= s.low && high <= s.high,
        Prefix::Ne => !(low >= s.low && high <= s.high),
        Prefix::Gt => high > s.high,
        Prefix::Lt => low < s.low,
        Prefix::Ge => high > s.low,
        Prefix::Le => low < s.high,
        Prefix::Sa => low >= s.high,
        Prefix::Eb => high <= s.low,
        Prefix::Ap => high > s.low && low < s.high,
    }
}

/// The one-second range starting at `t`, for comparisons with "now".
pub fn now_range(t: Timestamp) -> DateRange {
    DateRange { low: t.0, high: t.0 + 1, precision: crate::time::Precision::Second, has_tz: true }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
    }

    /// A parameter mamori implements under an R4 core code has the core
    /// parameter's type (the CapabilityStatement links its definition).
    #[test]
    fn implemented_core_parameters_keep_their_core_type() {
        let mut checked = 0;
        for t in crate::fhir::resource_types::R4_RESOURCE_TYPES {
            let Ok(rt) = ResourceType::parse(t) else { continue };
            let core = r4_core_params(t);
            for p in params_for(rt) {
                if let Some(c) = core.iter().find(|c| c.code == p.name) {
                    assert_eq!(c.kind, p.kind.as_str(), "{t}.{}", p.name);
                    checked += 1;
                }
            }
        }
        assert!(checked > 100, "{checked}");
        let patient = r4_core_params("Patient");
        assert!(patient.iter().any(|c| c.code == "birthdate" && c.kind == "date"));
        assert!(patient.iter().any(|c| c.code == "_text"), "DomainResource's");
        assert!(!r4_core_params("Bundle").iter().any(|c| c.code == "_text"), "Bundle is no DomainResource");
    }

    #[test]
    fn package_parameters_are_compiled_or_named_as_not_searchable() {
        let sp = |code: &str, ty: &str, base: &str, expr: &str| {
            json!({"resourceType": "SearchParameter", "url": format!("urn:sp:{code}:{base}"), "code": code,
                   "type": ty, "base": [base], "expression": expr, "status": "active"})
        };
        let defs = [
            sp("nick", "string", "Patient", "Patient.name.where(use='nickname')"),
            sp("nick", "string", "Patient", "Patient.name.where(use='nickname').text"),
            sp("name", "string", "Patient", "Patient.name.text"),
            sp("site", "uri", "Patient", "Patient.photo.url"),
            sp("kids", "token", "Patient", "Patient.descendants()"),
            sp("a b", "token", "Patient", "Patient.gender"),
            sp("ward", "reference", "Encounter", "Encounter.location.location"),
            sp("late", "string", "NoSuchType", "NoSuchType.x"),
            json!({"resourceType": "SearchParameter", "code": "old", "type": "token", "base": ["Patient"],
                   "expression": "Patient.gender", "status": "retired"}),
        ];
        let (params, skipped) = SearchParams::from_definitions(defs.iter());
        let why: Vec<&str> = skipped.iter().map(|s| s.reason.as_str()).collect();
        assert_eq!(why.len(), 6, "{why:?}");
        for (i, w) in [
            "defined by another package parameter",
            "mamori defines name on Patient already",
            "type \"uri\" are not searchable",
            "outside the FHIRPath subset",
            "cannot be a search parameter's name",
            "NoSuchType is not a resource type",
        ]
        .iter()
        .enumerate()
        {
            assert!(why[i].contains(w), "{i}: {}", why[i]);
        }
        let pt = ResourceType::PATIENT;
        assert_eq!(params.def(pt, "nick").map(|d| d.kind), Some(ParamKind::String));
        assert!(params.def(pt, "old").is_none(), "retired");
        let enc = ResourceType::parse("Encounter").unwrap();
        assert_eq!(params.def(enc, "ward").map(|d| d.kind), Some(ParamKind::Reference));
        // Searchable under the server's parameters, unknown to mamori's own.
        let q = pairs(&[("nick", "taro"), ("_sort", "-nick")]);
        assert!(parse_query_in(&params, pt, &q, false).is_ok());
        assert!(matches!(parse_query(pt, &q, false), Err(SearchError::UnknownParam(..))));
        // A HumanName selected whole is indexed by its text parts.
        let p = json!({"resourceType": "Patient", "name": [{"use": "nickname", "given": ["タロ"], "family": "ヤマ"}]});
        let e: Vec<IndexEntry> = index_entries_in(&params, pt, &p).into_iter().filter(|e| e.param == "nick").collect();
        assert_eq!(e.len(), 2, "{e:?}");
        // The same definition loaded again reuses its compiled form.
        let (again, _) = SearchParams::from_definitions(defs.iter());
        assert!(std::ptr::eq(again.def(pt, "nick").unwrap(), params.def(pt, "nick").unwrap()));
        assert_eq!(again.fingerprint(), params.fingerprint());
    }

    #[test]
    fn below_and_above_follow_the_code_systems_hierarchy() {
        let cs = std::sync::Arc::new(serde_json::json!({"resourceType": "CodeSystem", "url": "urn:cs", "concept": [
            {"code": "ALB", "concept": [{"code": "a1"}, {"code": "a2", "concept": [{"code": "a2x"}]}]},
            {"code": "GLU", "concept": [{"code": "g1"}]}]}));
        let look = |u: &str| (u == "urn:cs").then(|| cs.clone());
        let rt = ResourceType::OBSERVATION;
        let one = |k: &str, v: &str| expand_subsumption(rt, pairs(&[(k, v)]), look);
        assert_eq!(
            one("code:below", "urn:cs|ALB").unwrap(),
            pairs(&[("code", "urn:cs|ALB,urn:cs|a1,urn:cs|a2,urn:cs|a2x")])
        );
        assert_eq!(
            one("code:below", "urn:cs|a2,urn:cs|GLU").unwrap(),
            pairs(&[("code", "urn:cs|a2,urn:cs|a2x,urn:cs|GLU,urn:cs|g1")])
        );
        assert_eq!(one("code:above", "urn:cs|a2x").unwrap(), pairs(&[("code", "urn:cs|a2x,urn:cs|a2,urn:cs|ALB")]));
        assert_eq!(one("code:below", "urn:cs|none").unwrap(), pairs(&[("code", "urn:cs|none")]), "itself only");
        // The result parses as a plain token search.
        let (q, _) = parse_query(rt, &one("code:below", "urn:cs|ALB").unwrap(), false).unwrap();
        assert_eq!(q.clauses[0].any_of.len(), 4);
        assert!(matches!(one("code:below", "ALB"), Err(SearchError::BadValue { .. })), "needs the system");
        assert!(matches!(one("code:below", "urn:other|x"), Err(SearchError::Invalid(..))), "system not loaded");
        // Not a token: left for the parser to refuse.
        assert_eq!(one("subject:below", "Patient/1").unwrap(), pairs(&[("subject:below", "Patient/1")]));
        assert!(parse_query(rt, &pairs(&[("subject:below", "Patient/1")]), false).is_err());
    }

    #[test]
    fn normalization_folds_case_width_kana_and_accents() {
        assert_eq!(normalize("ヤマダ"), normalize("やまだ"));
        assert_eq!(normalize("ﾔﾏﾀﾞ"), normalize("やまだ"));
        assert_eq!(normalize("José"), "jose");
        assert_eq!(normalize("  YAMADA   Taro "), "yamada taro");
        assert_ne!(normalize("がっこう"), normalize("かっこう"));
        assert_eq!(normalize("ＡＢＣ"), "abc");
    }

    #[test]
    fn extracts_index_values() {
        let p = json!({"resourceType":"Patient","name":[{"family":"山田","given":["太郎"]},{"family":"ヤマダ"}],
            "identifier":[{"system":"urn:mrn","value":"123"}],"birthDate":"1980-05-01","gender":"male"});
        let e = index_entries(ResourceType::PATIENT, &p);
        assert!(e.contains(&IndexEntry {
            param: "family",
            value: IndexValue::String { norm: "やまだ".into(), exact: "ヤマダ".into() }
        }));
        assert!(e.contains(&IndexEntry {
            param: "identifier",
            value: IndexValue::Token { system: Some("urn:mrn".into()), code: "123".into() }
        }));
        assert!(e.iter().any(|x| x.param == "birthdate"));
        let o = json!({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
            "subject":{"reference":"Patient/p1"},"effectivePeriod":{"start":"2026-01-01"}});
        let ot = ResourceType::parse("Observation").unwrap();
        let e = index_entries(ot, &o);
        assert!(e.contains(&IndexEntry {
            param: "patient",
            value: IndexValue::Reference { rtype: "Patient".into(), id: "p1".into() }
        }));
        assert!(e.iter().any(|x| matches!(x.value, IndexValue::Date { high: i64::MAX, .. })));
    }

    #[test]
    fn parses_queries() {
        let (q, _) = parse_query(
            ResourceType::PATIENT,
            &pairs(&[
                ("name", "山田,yamada"),
                ("birthdate", "ge1980"),
                ("identifier", "urn:mrn|1"),
                ("_count", "5000"),
            ]),
            false,
        )
        .unwrap();
        assert_eq!(q.count, MAX_COUNT);
        assert_eq!(q.clauses.len(), 3);
        assert_eq!(q.clauses[0].any_of.len(), 2);
        assert!(matches!(q.clauses[1].any_of[0], Cond::Date(Prefix::Ge, _)));
    }

    #[test]
    fn rejects_unknown_and_malformed() {
        let pt = ResourceType::PATIENT;
        assert!(matches!(parse_query(pt, &pairs(&[("nmae", "x")]), false), Err(SearchError::UnknownParam(..))));
        let (q, ignored) = parse_query(pt, &pairs(&[("nmae", "x")]), true).unwrap();
        assert!(q.clauses.is_empty());
        assert_eq!(ignored, vec!["nmae".to_string()]);
        assert!(parse_query(pt, &pairs(&[("birthdate", "yesterday")]), false).is_err());
        assert!(parse_query(pt, &pairs(&[("name:fuzzy", "x")]), false).is_err());
        assert!(parse_query(pt, &pairs(&[("_count", "-1")]), false).is_err());
        assert!(parse_query(pt, &pairs(&[("_id", "a b")]), false).is_err());
        assert!(parse_query(pt, &pairs(&[("identifier", "|")]), false).is_err());
        let obs = ResourceType::parse("Observation").unwrap();
        assert!(parse_query(obs, &pairs(&[("patient", "Practitioner/1")]), false).is_err());
        assert!(parse_query(obs, &pairs(&[("patient", "Patient/1")]), false).is_ok());
        assert!(parse_query(obs, &pairs(&[("subject:Patient", "1")]), false).is_ok());
    }

    #[test]
    fn date_prefix_semantics() {
        let day = parse_search_date("2026-01-02").unwrap();
        let (l, h) = (day.low, day.high);
        assert!(date_matches(Prefix::Eq, day, l, h));
        assert!(!date_matches(Prefix::Gt, day, l, h));
        assert!(date_matches(Prefix::Ge, day, l, h));
        assert!(date_matches(Prefix::Gt, day, h, h + 10));
        assert!(date_matches(Prefix::Sa, day, h, h + 10));
        assert!(date_matches(Prefix::Eb, day, l - 10, l));
        assert!(date_matches(Prefix::Ne, day, l - 10, l));
        // `ap` is an overlap with the (already widened) range.
        assert!(date_matches(Prefix::Ap, day, l - 10, l + 1));
        assert!(!date_matches(Prefix::Ap, day, h, h + 10));
        let (p, r) = parse_prefixed_date("ap2000-01-01").unwrap();
        assert_eq!(p, Prefix::Ap);
        assert!(r.high - r.low > 365 * 86_400_000_000, "widened by years: {r:?}");
    }

    #[test]
    fn or_values_with_escapes() {
        assert_eq!(split_or("a,b\\,c"), vec!["a".to_string(), "b,c".to_string()]);
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for keys in [
            vec![],
            vec![SortValue::Missing],
            vec![SortValue::Int(-5)],
            vec![SortValue::Text("やまだ.x/y".into())],
            vec![SortValue::Int(7), SortValue::Missing, SortValue::Text("a,b".into())],
        ] {
            let c = Cursor {
                last_updated: if keys.is_empty() { 1_700_000_000_000_000 } else { 0 },
                id: "a.b-1".into(),
                keys,
            };
            assert_eq!(Cursor::decode(&c.encode()), Some(c.clone()), "{}", c.encode());
        }
        for bad in ["", "x.a", "s0.a", "szz.a", "i.a", "n1.a", "12.a b", "no-dot", "n,,n.a", "n,n,n,n.a", "i1,x.a"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn decimals_in_millionths() {
        assert_eq!(decimal_micros("5.4"), Some((5_400_000, 1)));
        assert_eq!(decimal_micros("-0.000001"), Some((-1, 6)));
        assert_eq!(decimal_micros("72"), Some((72_000_000, 0)));
        assert_eq!(decimal_micros("1.0000005"), Some((1_000_001, 7)), "rounded half up");
        for bad in ["", "-", "1.", ".5", "1e3", "1,5", "9999999999999999", "--1", "1.2.3"] {
            assert_eq!(decimal_micros(bad), None, "{bad}");
        }
        let Some(Cond::Quantity { prefix, micros, half_width, system, code }) =
            parse_quantity("ge5.4|http://unitsofmeasure.org|mg")
        else {
            panic!("parses")
        };
        assert_eq!((prefix, micros, half_width), (Prefix::Ge, 5_400_000, 50_000));
        assert_eq!((system.as_deref(), code.as_deref()), (Some("http://unitsofmeasure.org"), Some("mg")));
        assert!(matches!(parse_quantity("100||/min"), Some(Cond::Quantity { half_width: 500_000, system: None, .. })));
        // `ap`: 10 % of the value, at least its own precision.
        assert!(matches!(
            parse_quantity("ap80"),
            Some(Cond::Quantity { prefix: Prefix::Ap, half_width: 8_000_000, .. })
        ));
        assert!(matches!(parse_quantity("ap2"), Some(Cond::Quantity { half_width: 500_000, .. })));
        for bad in ["gt", "5|mg", "5|a|b|c", "x5"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }
}
