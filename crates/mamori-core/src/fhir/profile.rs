//! Conformance packages and validation against profiles.
//!
//! A [`Registry`] holds the conformance resources of FHIR NPM packages the
//! operator provides (JP Core, JP-CLINS, ...): StructureDefinitions with
//! snapshots, ValueSets, CodeSystems, NamingSystems, SearchParameters.
//! [`Registry::validate`] checks a resource against a profile's snapshot:
//! cardinality, fixed and pattern values, slicing by `value`, `pattern`,
//! `type` and `profile` discriminators, required bindings to the ValueSets
//! it can expand, the types that references may point to, and the profiles
//! of data types and extensions it has loaded.
//!
//! What it cannot check it says: a ValueSet it cannot expand is a warning,
//! and so is each invariant of a profile (FHIRPath) that it does not
//! evaluate. Nothing is passed silently.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

/// How serious an issue is (FHIR `OperationOutcome.issue.severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource does not conform.
    Error,
    /// It may not conform, or something could not be checked.
    Warning,
    /// For information.
    Information,
}

impl Severity {
    /// The FHIR code.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// One finding of a validation.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// Error, warning or information.
    pub severity: Severity,
    /// FHIR issue type: `structure`, `required`, `value`, `code-invalid`,
    /// `not-supported`, `processing`.
    pub code: &'static str,
    /// Where, e.g. `MedicationRequest.identifier:rpNumber`.
    pub path: String,
    /// What, for a person.
    pub message: String,
}

/// An error loading a package: which file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct PackageError {
    /// The file inside the package (or the package itself).
    pub file: String,
    /// What is wrong with it.
    pub message: String,
}

fn perr(file: &str, message: impl Into<String>) -> PackageError {
    PackageError { file: file.to_owned(), message: message.into() }
}

/// What a loaded package is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageInfo {
    /// `name` of its package.json.
    pub name: String,
    /// `version` of its package.json.
    pub version: String,
    /// Its canonical URL, if it names one.
    pub canonical: Option<String>,
    /// How many conformance resources of each type it holds.
    pub counts: Vec<(String, usize)>,
    /// Resources it also carries that an earlier package already defined
    /// (`Type/id`): the earlier definition is kept.
    pub skipped: Vec<String>,
}

/// The conformance resource types a package contributes.
pub const CONFORMANCE_TYPES: &[&str] = &[
    "CapabilityStatement",
    "CodeSystem",
    "ImplementationGuide",
    "NamingSystem",
    "SearchParameter",
    "StructureDefinition",
    "ValueSet",
];

/// Reads one package from its files: `package.json` and the resources
/// beside it (`package/*.json` in an NPM tarball). Example folders are
/// skipped. A file that is not JSON, a resource without `resourceType`,
/// a StructureDefinition without a snapshot, or a missing or malformed
/// `package.json` refuses the whole package; JSON files that are not
/// resources are passed over.
pub fn read_package<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<(PackageInfo, Vec<Value>), PackageError> {
    let mut manifest: Option<Value> = None;
    let mut resources = Vec::new();
    for (name, bytes) in files {
        let rel = name.trim_start_matches("./");
        let rel = rel.strip_prefix("package/").unwrap_or(rel);
        if rel.contains('/') || !rel.ends_with(".json") {
            // examples/, other/, openapi/ and non-JSON files are not definitions.
            continue;
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| perr(name, format!("not valid JSON: {e}")))?;
        if rel == "package.json" {
            manifest = Some(v);
            continue;
        }
        if rel == ".index.json" || rel.starts_with("ig-r4") {
            continue;
        }
        // Other JSON files (indexes, tool output) are not resources.
        let Some(rt) = v.get("resourceType").and_then(Value::as_str) else { continue };
        if !CONFORMANCE_TYPES.contains(&rt) {
            continue;
        }
        if v.get("url").and_then(Value::as_str).is_none() && rt != "CapabilityStatement" && rt != "NamingSystem" {
            return Err(perr(name, format!("{rt} without a url")));
        }
        if v.get("id").and_then(Value::as_str).is_none_or(|id| !crate::ids::is_fhir_id(id)) {
            return Err(perr(name, format!("{rt} without a valid id")));
        }
        if rt == "StructureDefinition" {
            let ok = v.pointer("/snapshot/element").and_then(Value::as_array).is_some_and(|a| !a.is_empty());
            if !ok {
                return Err(perr(name, "StructureDefinition without a snapshot (load the snapshot package)"));
            }
        }
        resources.push(v);
    }
    let Some(m) = manifest else {
        return Err(perr("package.json", "missing: not a FHIR NPM package"));
    };
    let name = m.get("name").and_then(Value::as_str).filter(|s| !s.is_empty());
    let version = m.get("version").and_then(Value::as_str).filter(|s| !s.is_empty());
    let (Some(name), Some(version)) = (name, version) else {
        return Err(perr("package.json", "name and version are required"));
    };
    if resources.is_empty() {
        return Err(perr(name, "holds no conformance resources"));
    }
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in &resources {
        let rt = r["resourceType"].as_str().unwrap_or_default();
        match counts.iter_mut().find(|(t, _)| t == rt) {
            Some((_, n)) => *n += 1,
            None => counts.push((rt.to_owned(), 1)),
        }
    }
    counts.sort();
    let info = PackageInfo {
        name: name.to_owned(),
        version: version.to_owned(),
        canonical: m.get("canonical").and_then(Value::as_str).map(str::to_owned),
        counts,
        skipped: Vec::new(),
    };
    Ok((info, resources))
}

// ---- the compiled form of a StructureDefinition -----------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disc {
    Value,
    Pattern,
    Type,
    Profile,
    Exists,
}

#[derive(Debug, Default)]
struct TypeRef {
    code: String,
    profiles: Vec<String>,
    targets: Vec<String>,
}

#[derive(Debug)]
struct Invariant {
    key: String,
    severity: Severity,
    human: String,
    /// The expression, when it is in the subset mamori evaluates.
    expr: Option<super::fhirpath::Expr>,
    /// Why it is not evaluated, otherwise.
    unsupported: String,
}

#[derive(Debug, Default)]
struct Node {
    /// The element name (`identifier`, `value[x]`).
    name: String,
    /// The element id, for messages.
    id: String,
    min: u32,
    max: Option<u32>,
    types: Vec<TypeRef>,
    fixed: Option<Value>,
    pattern: Option<Value>,
    required_vs: Option<String>,
    slicing: Option<(Vec<(Disc, String)>, bool)>,
    children: Vec<Node>,
    slices: Vec<(String, Node)>,
    invariants: Vec<Invariant>,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.name == name)
    }
    fn child_mut(&mut self, name: &str) -> &mut Node {
        let i = match self.children.iter().position(|c| c.name == name) {
            Some(i) => i,
            None => {
                self.children.push(Node { name: name.to_owned(), ..Node::default() });
                self.children.len() - 1
            }
        };
        &mut self.children[i]
    }
    fn slice_mut(&mut self, name: &str) -> &mut Node {
        let i = match self.slices.iter().position(|(s, _)| s == name) {
            Some(i) => i,
            None => {
                self.slices.push((name.to_owned(), Node { name: self.name.clone(), ..Node::default() }));
                self.slices.len() - 1
            }
        };
        &mut self.slices[i].1
    }
    fn is_choice(&self) -> bool {
        self.name.ends_with("[x]")
    }
}

/// A StructureDefinition, compiled for validation.
#[derive(Debug)]
pub struct Profile {
    /// Its canonical URL.
    pub url: String,
    /// Its name.
    pub name: String,
    /// The type it constrains (`Patient`, `Extension`, `HumanName`).
    pub type_name: String,
    root: Node,
}

fn split_id(id: &str) -> Vec<&str> {
    // Element ids are dot-separated; a slice name may not contain a dot in
    // the packages we load, but a choice type stem may carry `[x]`.
    id.split('.').collect()
}

fn compile(sd: &Value) -> Option<Profile> {
    let url = sd.get("url")?.as_str()?.to_owned();
    let type_name = sd.get("type")?.as_str()?.to_owned();
    let elements = sd.pointer("/snapshot/element")?.as_array()?;
    let mut root = Node { name: type_name.clone(), id: type_name.clone(), ..Node::default() };
    for el in elements {
        let Some(id) = el.get("id").and_then(Value::as_str) else { continue };
        let segs = split_id(id);
        let mut node = &mut root;
        for (i, seg) in segs.iter().enumerate() {
            if i == 0 {
                continue;
            }
            let (name, slice) = match seg.split_once(':') {
                Some((n, s)) => (n, Some(s)),
                None => (*seg, None),
            };
            node = node.child_mut(name);
            if let Some(s) = slice {
                node = node.slice_mut(s);
            }
        }
        fill(node, el, id);
    }
    let name = sd.get("name").and_then(Value::as_str).unwrap_or(&url).to_owned();
    Some(Profile { url, name, type_name, root })
}

fn fill(node: &mut Node, el: &Value, id: &str) {
    node.id = id.to_owned();
    node.min = el.get("min").and_then(Value::as_u64).unwrap_or(0) as u32;
    node.max = match el.get("max").and_then(Value::as_str) {
        Some("*") | None => None,
        Some(m) => m.parse().ok(),
    };
    if let Some(obj) = el.as_object() {
        for (k, v) in obj {
            if k.starts_with("fixed") {
                node.fixed = Some(v.clone());
            } else if k.starts_with("pattern") {
                node.pattern = Some(v.clone());
            }
        }
    }
    node.types = el
        .get("type")
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| TypeRef {
                    code: t.get("code").and_then(Value::as_str).unwrap_or_default().to_owned(),
                    profiles: strings(t.get("profile")),
                    targets: strings(t.get("targetProfile")),
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(b) = el.get("binding") {
        if b.get("strength").and_then(Value::as_str) == Some("required") {
            node.required_vs = b.get("valueSet").and_then(Value::as_str).map(str::to_owned);
        }
    }
    if let Some(s) = el.get("slicing") {
        let discs = s
            .get("discriminator")
            .and_then(Value::as_array)
            .map(|ds| {
                ds.iter()
                    .filter_map(|d| {
                        let kind = match d.get("type")?.as_str()? {
                            "value" => Disc::Value,
                            "pattern" => Disc::Pattern,
                            "type" => Disc::Type,
                            "profile" => Disc::Profile,
                            _ => Disc::Exists,
                        };
                        Some((kind, d.get("path")?.as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let closed = s.get("rules").and_then(Value::as_str) == Some("closed");
        node.slicing = Some((discs, closed));
    }
    for c in el.get("constraint").and_then(Value::as_array).into_iter().flatten() {
        let source = c.get("source").and_then(Value::as_str).unwrap_or("");
        // Invariants of the base specification (ele-1, ext-1, dom-*, the
        // resources' own) are left to the core validator; a profile's own
        // are named when not evaluated.
        if source.is_empty() || source.starts_with("http://hl7.org/fhir/") {
            continue;
        }
        let parsed = c
            .get("expression")
            .and_then(Value::as_str)
            .ok_or_else(|| "it has no expression".to_owned())
            .and_then(super::fhirpath::parse);
        node.invariants.push(Invariant {
            expr: parsed.as_ref().ok().cloned(),
            unsupported: parsed.err().unwrap_or_default(),
            key: c.get("key").and_then(Value::as_str).unwrap_or("?").to_owned(),
            severity: if c.get("severity").and_then(Value::as_str) == Some("warning") {
                Severity::Warning
            } else {
                Severity::Error
            },
            human: c.get("human").and_then(Value::as_str).unwrap_or("").to_owned(),
        });
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

// ---- terminology ---------------------------------------------------------------

/// The codes of a ValueSet, when they can be enumerated: `(system, code)`;
/// a `None` system matches a code of any system (a bare `code` element).
#[derive(Debug, Default)]
struct Expansion {
    codes: HashSet<(String, String)>,
}

impl Expansion {
    fn contains(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(s) => self.codes.contains(&(s.to_owned(), code.to_owned())),
            None => self.codes.iter().any(|(_, c)| c == code),
        }
    }
}

/// Required ValueSets of FHIR R4 that the packages bind to and do not
/// carry (the core package is not loaded): `(ValueSet URL, system, codes)`.
const R4_VALUE_SETS: &[(&str, &str, &[&str])] = &[
    (
        "http://hl7.org/fhir/ValueSet/administrative-gender",
        "http://hl7.org/fhir/administrative-gender",
        &["male", "female", "other", "unknown"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/identifier-use",
        "http://hl7.org/fhir/identifier-use",
        &["usual", "official", "temp", "secondary", "old"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/name-use",
        "http://hl7.org/fhir/name-use",
        &["usual", "official", "temp", "nickname", "anonymous", "old", "maiden"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/address-use",
        "http://hl7.org/fhir/address-use",
        &["home", "work", "temp", "old", "billing"],
    ),
    ("http://hl7.org/fhir/ValueSet/address-type", "http://hl7.org/fhir/address-type", &["postal", "physical", "both"]),
    (
        "http://hl7.org/fhir/ValueSet/contact-point-system",
        "http://hl7.org/fhir/contact-point-system",
        &["phone", "fax", "email", "pager", "url", "sms", "other"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/contact-point-use",
        "http://hl7.org/fhir/contact-point-use",
        &["home", "work", "temp", "old", "mobile"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/narrative-status",
        "http://hl7.org/fhir/narrative-status",
        &["generated", "extensions", "additional", "empty"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/quantity-comparator",
        "http://hl7.org/fhir/quantity-comparator",
        &["<", "<=", ">=", ">"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/observation-status",
        "http://hl7.org/fhir/observation-status",
        &["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/bundle-type",
        "http://hl7.org/fhir/bundle-type",
        &[
            "document",
            "message",
            "transaction",
            "transaction-response",
            "batch",
            "batch-response",
            "history",
            "searchset",
            "collection",
        ],
    ),
    (
        "http://hl7.org/fhir/ValueSet/http-verb",
        "http://hl7.org/fhir/http-verb",
        &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/search-entry-mode",
        "http://hl7.org/fhir/search-entry-mode",
        &["match", "include", "outcome"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/composition-status",
        "http://hl7.org/fhir/composition-status",
        &["preliminary", "final", "amended", "entered-in-error"],
    ),
    ("http://hl7.org/fhir/ValueSet/list-mode", "http://hl7.org/fhir/list-mode", &["working", "snapshot", "changes"]),
    (
        "http://hl7.org/fhir/ValueSet/encounter-status",
        "http://hl7.org/fhir/encounter-status",
        &[
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        ],
    ),
    (
        "http://hl7.org/fhir/ValueSet/diagnostic-report-status",
        "http://hl7.org/fhir/diagnostic-report-status",
        &[
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
        ],
    ),
    (
        "http://hl7.org/fhir/ValueSet/request-status",
        "http://hl7.org/fhir/request-status",
        &["draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/request-priority",
        "http://hl7.org/fhir/request-priority",
        &["routine", "urgent", "asap", "stat"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/event-status",
        "http://hl7.org/fhir/event-status",
        &["preparation", "in-progress", "not-done", "on-hold", "stopped", "completed", "entered-in-error", "unknown"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/link-type",
        "http://hl7.org/fhir/link-type",
        &["replaced-by", "replaces", "refer", "seealso"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/days-of-week",
        "http://hl7.org/fhir/days-of-week",
        &["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/units-of-time",
        "http://unitsofmeasure.org",
        &["s", "min", "h", "d", "wk", "mo", "a"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/document-reference-status",
        "http://hl7.org/fhir/document-reference-status",
        &["current", "superseded", "entered-in-error"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/document-relationship-type",
        "http://hl7.org/fhir/document-relationship-type",
        &["replaces", "transforms", "signs", "appends"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/composition-attestation-mode",
        "http://hl7.org/fhir/composition-attestation-mode",
        &["personal", "professional", "legal", "official"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/allergy-intolerance-type",
        "http://hl7.org/fhir/allergy-intolerance-type",
        &["allergy", "intolerance"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/allergy-intolerance-category",
        "http://hl7.org/fhir/allergy-intolerance-category",
        &["food", "medication", "environment", "biologic"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/allergy-intolerance-criticality",
        "http://hl7.org/fhir/allergy-intolerance-criticality",
        &["low", "high", "unable-to-assess"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/reaction-event-severity",
        "http://hl7.org/fhir/reaction-event-severity",
        &["mild", "moderate", "severe"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/medicationrequest-status",
        "http://hl7.org/fhir/CodeSystem/medicationrequest-status",
        &["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/medicationrequest-intent",
        "http://hl7.org/fhir/CodeSystem/medicationrequest-intent",
        &["proposal", "plan", "order", "original-order", "reflex-order", "filler-order", "instance-order", "option"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/immunization-status",
        "http://hl7.org/fhir/event-status",
        &["completed", "entered-in-error", "not-done"],
    ),
    (
        "http://terminology.hl7.org/ValueSet/v3-EntityNameUse-representation",
        "http://terminology.hl7.org/CodeSystem/v3-EntityNamePartQualifierR2",
        &["ABC", "IDE", "SYL"],
    ),
    (
        "http://hl7.org/fhir/ValueSet/publication-status",
        "http://hl7.org/fhir/publication-status",
        &["draft", "active", "retired", "unknown"],
    ),
];

/// Extensions of FHIR R4 that JP Core relies on without carrying them:
/// `(extension URL, value element, required ValueSet)`.
const R4_EXTENSIONS: &[(&str, &str, &str)] = &[(
    "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation",
    "valueCode",
    "http://terminology.hl7.org/ValueSet/v3-EntityNameUse-representation",
)];

fn strip_version(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

// ---- the registry -----------------------------------------------------------------

/// The conformance resources of every loaded package, and their compiled
/// profiles.
#[derive(Debug, Default)]
pub struct Registry {
    packages: Vec<PackageInfo>,
    resources: Vec<Arc<Value>>,
    by_url: HashMap<String, usize>,
    by_type_id: HashMap<(String, String), usize>,
    profiles: HashMap<String, Arc<Profile>>,
    expansions: HashMap<String, Option<Arc<Expansion>>>,
}

/// What a validation found, and which profiles it used.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Every finding, errors first.
    pub findings: Vec<Finding>,
    /// The profiles checked.
    pub profiles: Vec<String>,
}

impl Report {
    /// Whether any finding is an error.
    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }
}

const MAX_FINDINGS: usize = 100;
const MAX_DEPTH: usize = 24;

struct Cx<'r> {
    reg: &'r Registry,
    findings: Vec<Finding>,
    warned: HashSet<String>,
    /// Profiles being applied (a guard against a profile that names itself).
    stack: Vec<String>,
    /// The document Bundle whose entries `resolve()` finds (by `fullUrl`).
    bundle: Option<&'r Value>,
}

impl Cx<'_> {
    fn add(&mut self, severity: Severity, code: &'static str, path: &str, message: impl Into<String>) {
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(Finding { severity, code, path: path.to_owned(), message: message.into() });
        }
    }
    fn once(&mut self, key: String, severity: Severity, code: &'static str, path: &str, message: String) {
        if self.warned.insert(key) {
            self.add(severity, code, path, message);
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Adds a package read by [`read_package`]. A package of the same name
    /// is refused (one version at a time). A resource an earlier package
    /// already defines (same `Type/id` or URL; packages carry copies of
    /// their dependencies' profiles) is skipped and listed in
    /// [`PackageInfo::skipped`]: load order decides, never a guess.
    pub fn add(&mut self, mut info: PackageInfo, resources: Vec<Value>) -> Result<(), PackageError> {
        if let Some(p) = self.packages.iter().find(|p| p.name == info.name) {
            return Err(perr(&info.name, format!("version {} is already loaded", p.version)));
        }
        let mut compiled = Vec::new();
        let mut keep = Vec::new();
        let mut seen = HashSet::new();
        for r in resources {
            let rt = r["resourceType"].as_str().unwrap_or_default().to_owned();
            let id = r["id"].as_str().unwrap_or_default().to_owned();
            let url = r.get("url").and_then(Value::as_str);
            let clash = self.by_type_id.contains_key(&(rt.clone(), id.clone()))
                || url.is_some_and(|u| self.by_url.contains_key(u))
                || !seen.insert((rt.clone(), id.clone()));
            if clash {
                info.skipped.push(format!("{rt}/{id}"));
                continue;
            }
            if rt == "StructureDefinition" {
                // A resource's snapshot also tells its base summary elements.
                super::summary::learn(&r);
                let Some(p) = compile(&r) else {
                    return Err(perr(&info.name, format!("StructureDefinition/{id} cannot be compiled")));
                };
                compiled.push(p);
            }
            keep.push(r);
        }
        for p in compiled {
            self.profiles.insert(p.url.clone(), Arc::new(p));
        }
        for r in keep {
            let rt = r["resourceType"].as_str().unwrap_or_default().to_owned();
            let id = r["id"].as_str().unwrap_or_default().to_owned();
            let i = self.resources.len();
            if let Some(url) = r.get("url").and_then(Value::as_str) {
                self.by_url.insert(url.to_owned(), i);
                if let Some(v) = r.get("version").and_then(Value::as_str) {
                    self.by_url.insert(format!("{url}|{v}"), i);
                }
            }
            self.by_type_id.insert((rt, id), i);
            self.resources.push(Arc::new(r));
        }
        self.expansions.clear();
        self.packages.push(info);
        Ok(())
    }

    /// The loaded packages.
    pub fn packages(&self) -> &[PackageInfo] {
        &self.packages
    }

    /// A conformance resource by type and id.
    pub fn get(&self, rtype: &str, id: &str) -> Option<Arc<Value>> {
        self.by_type_id.get(&(rtype.to_owned(), id.to_owned())).map(|i| self.resources[*i].clone())
    }

    /// A conformance resource by canonical URL (`url` or `url|version`).
    pub fn by_url(&self, url: &str) -> Option<Arc<Value>> {
        self.by_url.get(url).or_else(|| self.by_url.get(strip_version(url))).map(|i| self.resources[*i].clone())
    }

    /// Every conformance resource of a type, in load order.
    pub fn all_of(&self, rtype: &str) -> impl Iterator<Item = &Arc<Value>> + '_ {
        let rtype = rtype.to_owned();
        self.resources.iter().filter(move |r| r["resourceType"].as_str() == Some(rtype.as_str()))
    }

    /// A compiled profile by canonical URL.
    pub fn profile(&self, url: &str) -> Option<Arc<Profile>> {
        self.profiles.get(strip_version(url)).cloned()
    }

    /// The profiles (not extensions or data types) that constrain `rtype`.
    pub fn profiles_of(&self, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> =
            self.profiles.values().filter(|p| p.type_name == rtype).map(|p| p.url.clone()).collect();
        v.sort();
        v
    }

    /// Validates `resource` against the profile at `url`.
    pub fn validate(&self, resource: &Value, url: &str) -> Report {
        let bundle = (resource.get("resourceType").and_then(Value::as_str) == Some("Bundle")).then_some(resource);
        self.validate_in(resource, url, bundle)
    }

    /// Validates `resource` against the profile at `url`, resolving its
    /// references to the entries of `bundle` (the document it is in), for
    /// slices told apart by `resolve()`.
    pub fn validate_in(&self, resource: &Value, url: &str, bundle: Option<&Value>) -> Report {
        let mut cx = Cx { reg: self, findings: Vec::new(), warned: HashSet::new(), stack: Vec::new(), bundle };
        let rt = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        match self.profile(url) {
            None => cx.add(Severity::Error, "not-found", rt, format!("profile {url} is not loaded")),
            Some(p) if p.type_name != rt => cx.add(
                Severity::Error,
                "structure",
                rt,
                format!("profile {} constrains {}, not {rt}", p.name, p.type_name),
            ),
            Some(p) => apply(&mut cx, &p, resource, rt, 0),
        }
        let mut findings = cx.findings;
        findings.sort_by_key(|f| f.severity);
        Report { findings, profiles: vec![strip_version(url).to_owned()] }
    }

    fn expansion(&self, url: &str) -> Option<Arc<Expansion>> {
        let key = strip_version(url);
        if let Some(e) = self.expansions.get(key) {
            return e.clone();
        }
        self.expand(key, 0).map(Arc::new)
    }

    fn expand(&self, url: &str, depth: usize) -> Option<Expansion> {
        if depth > 8 {
            return None;
        }
        if let Some((_, system, codes)) = R4_VALUE_SETS.iter().find(|(u, _, _)| *u == url) {
            let codes = codes.iter().map(|c| ((*system).to_owned(), (*c).to_owned())).collect();
            return Some(Expansion { codes });
        }
        let vs = self.by_url(url)?;
        if vs["resourceType"] != "ValueSet" {
            return None;
        }
        let mut out = Expansion::default();
        if let Some(contains) = vs.pointer("/expansion/contains").and_then(Value::as_array) {
            for c in contains {
                if let (Some(s), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                    out.codes.insert((s.to_owned(), code.to_owned()));
                }
            }
            return Some(out);
        }
        let compose = vs.get("compose")?;
        if compose.get("exclude").is_some() {
            return None;
        }
        for inc in compose.get("include")?.as_array()? {
            if let Some(filters) = inc.get("filter") {
                if inc.get("concept").is_some() || inc.get("valueSet").is_some() {
                    return None;
                }
                let system = inc.get("system").and_then(Value::as_str)?;
                let cs = self.by_url(system)?;
                out.codes.extend(filtered(system, &cs, filters.as_array()?)?);
                continue;
            }
            for sub in strings(inc.get("valueSet")) {
                out.codes.extend(self.expand(strip_version(&sub), depth + 1)?.codes);
            }
            let Some(system) = inc.get("system").and_then(Value::as_str) else { continue };
            if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
                for c in concepts {
                    if let Some(code) = c["code"].as_str() {
                        out.codes.insert((system.to_owned(), code.to_owned()));
                    }
                }
            } else {
                let cs = self.by_url(system)?;
                if cs["resourceType"] != "CodeSystem" || cs["content"] != "complete" {
                    return None;
                }
                collect_concepts(system, cs.get("concept"), &mut out.codes);
            }
        }
        Some(out)
    }
}

/// The codes of a complete CodeSystem that every filter selects (filters
/// of one include are ANDed). Only the hierarchy of the CodeSystem's own
/// concept nesting is followed, with the filters on `concept` that use
/// it: `is-a` (the code and what is below it), `descendent-of` (below it
/// only), `=` and `in`. Any other filter, or a CodeSystem that is not
/// complete or whose hierarchy is not `is-a`, is `None`: not enumerable,
/// reported as unchecked, never guessed.
fn filtered(system: &str, cs: &Value, filters: &[Value]) -> Option<HashSet<(String, String)>> {
    if cs["resourceType"] != "CodeSystem" || cs["content"] != "complete" {
        return None;
    }
    if cs.get("hierarchyMeaning").is_some_and(|h| h != "is-a") {
        return None;
    }
    // Each code with the codes nested under it.
    let mut children: HashMap<String, Vec<String>> = HashMap::new();
    let mut all: HashSet<String> = HashSet::new();
    fn walk(cs: &Value, up: Option<&str>, all: &mut HashSet<String>, children: &mut HashMap<String, Vec<String>>) {
        for c in cs.as_array().into_iter().flatten() {
            let Some(code) = c["code"].as_str() else { continue };
            all.insert(code.to_owned());
            if let Some(u) = up {
                children.entry(u.to_owned()).or_default().push(code.to_owned());
            }
            walk(&c["concept"], Some(code), all, children);
        }
    }
    walk(&cs["concept"], None, &mut all, &mut children);
    let below = |code: &str| -> HashSet<String> {
        let mut out = HashSet::new();
        let mut todo: Vec<String> = children.get(code).cloned().unwrap_or_default();
        while let Some(c) = todo.pop() {
            if out.insert(c.clone()) {
                todo.extend(children.get(&c).cloned().unwrap_or_default());
            }
        }
        out
    };
    let mut selected: Option<HashSet<String>> = None;
    for f in filters {
        if f["property"] != "concept" && f["property"] != "code" {
            return None;
        }
        let value = f["value"].as_str()?;
        let these: HashSet<String> = match f["op"].as_str()? {
            "is-a" => {
                let mut s = below(value);
                s.insert(value.to_owned());
                s
            }
            "descendent-of" => below(value),
            "=" => [value.to_owned()].into(),
            "in" => value.split(',').map(|c| c.trim().to_owned()).collect(),
            _ => return None,
        };
        // Only codes the CodeSystem defines.
        let these: HashSet<String> = these.into_iter().filter(|c| all.contains(c)).collect();
        selected = Some(match selected {
            None => these,
            Some(prev) => prev.intersection(&these).cloned().collect(),
        });
    }
    Some(selected?.into_iter().map(|c| (system.to_owned(), c)).collect())
}

fn collect_concepts(system: &str, concepts: Option<&Value>, out: &mut HashSet<(String, String)>) {
    for c in concepts.and_then(Value::as_array).into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            out.insert((system.to_owned(), code.to_owned()));
        }
        collect_concepts(system, c.get("concept"), out);
    }
}

// ---- the walk -----------------------------------------------------------------------

fn apply(cx: &mut Cx, p: &Profile, v: &Value, path: &str, depth: usize) {
    if cx.stack.contains(&p.url) || depth > MAX_DEPTH {
        return;
    }
    cx.stack.push(p.url.clone());
    check_node(cx, &p.root, v, path, None, depth);
    cx.stack.pop();
}

/// One value of an element: its JSON, and for a choice its type.
struct Item<'v> {
    v: &'v Value,
    ty: Option<String>,
    path: String,
}

fn items<'v>(node: &Node, obj: &'v Map<String, Value>, base: &str) -> Vec<Item<'v>> {
    let mut out = Vec::new();
    let mut push = |key: &str, ty: Option<String>, v: &'v Value| match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                out.push(Item { v: x, ty: ty.clone(), path: format!("{base}.{key}[{i}]") });
            }
        }
        x => out.push(Item { v: x, ty, path: format!("{base}.{key}") }),
    };
    if let Some(stem) = node.name.strip_suffix("[x]") {
        for (k, v) in obj {
            if let Some(suffix) = k.strip_prefix(stem) {
                if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                    push(k, Some(type_of_suffix(suffix)), v);
                }
            }
        }
    } else if let Some(v) = obj.get(&node.name) {
        push(&node.name, None, v);
    }
    out
}

/// `DateTime` → `dateTime`; complex types keep their capital.
fn type_of_suffix(suffix: &str) -> String {
    const PRIMITIVES: &[&str] = &[
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
    ];
    if PRIMITIVES.contains(&suffix) {
        let mut c = suffix.chars();
        let first = c.next().map(|f| f.to_ascii_lowercase()).unwrap_or_default();
        std::iter::once(first).chain(c).collect()
    } else {
        suffix.to_owned()
    }
}

fn card(n: u32, max: Option<u32>) -> String {
    match max {
        Some(m) => format!("{n}..{m}"),
        None => format!("{n}..*"),
    }
}

fn check_node(cx: &mut Cx, node: &Node, v: &Value, path: &str, ty: Option<&str>, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    check_value(cx, node, v, path, ty, depth);
    let is_slice = node.id.rsplit('.').next().is_some_and(|last| last.contains(':'));
    if node.name == "extension" && !is_slice {
        let url = v.get("url").and_then(Value::as_str).unwrap_or_default();
        if let Some((_, key, vs)) = R4_EXTENSIONS.iter().find(|(u, _, _)| *u == url) {
            match v.get(*key) {
                Some(code) => {
                    let ext = Node { id: format!("{url}.{key}"), ..Node::default() };
                    check_binding(cx, vs, code, &format!("{path}.{key}"), &ext);
                }
                None => cx.add(Severity::Error, "required", path, format!("extension {url} requires {key}")),
            }
        }
    }
    for inv in &node.invariants {
        let why = match inv.expr.as_ref().map(|e| super::fhirpath::holds(e, v)) {
            Some(Ok(Some(false))) => {
                cx.add(
                    inv.severity,
                    "invariant",
                    path,
                    format!(
                        "invariant '{}' fails{}",
                        inv.key,
                        if inv.human.is_empty() { String::new() } else { format!(": {}", inv.human) }
                    ),
                );
                continue;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => e,
            None => inv.unsupported.clone(),
        };
        cx.once(
            format!("inv:{}", inv.key),
            Severity::Warning,
            "not-supported",
            path,
            format!(
                "invariant '{}' ({}) was not evaluated: its FHIRPath is outside the subset mamori evaluates ({why}){}",
                inv.key,
                if inv.severity == Severity::Error { "error" } else { "warning" },
                if inv.human.is_empty() { String::new() } else { format!("; it requires: {}", inv.human) }
            ),
        );
    }
    let Some(obj) = v.as_object() else { return };
    for child in &node.children {
        let its = items(child, obj, path);
        let n = its.len() as u32;
        let label = format!("{path}.{}", child.name);
        if n < child.min {
            cx.add(
                Severity::Error,
                "required",
                &label,
                format!("requires at least {} (cardinality {}), found {n}", child.min, card(child.min, child.max)),
            );
        }
        if child.max.is_some_and(|m| n > m) {
            cx.add(
                Severity::Error,
                "structure",
                &label,
                format!(
                    "allows at most {} (cardinality {}), found {n}",
                    child.max.unwrap_or(0),
                    card(child.min, child.max)
                ),
            );
        }
        for it in &its {
            check_node(cx, child, it.v, &it.path, it.ty.as_deref(), depth + 1);
        }
        if !child.slices.is_empty() {
            check_slices(cx, child, &its, &label, depth);
        }
    }
}

fn check_slices(cx: &mut Cx, node: &Node, its: &[Item], label: &str, depth: usize) {
    let (discs, closed) = match &node.slicing {
        Some((d, c)) => (d.as_slice(), *c),
        None => (&[][..], false),
    };
    let mut counts = vec![0u32; node.slices.len()];
    for it in its {
        let mut matched = None;
        for (i, (name, slice)) in node.slices.iter().enumerate() {
            match slice_matches(cx, slice, discs, it, depth) {
                Some(true) => {
                    matched = Some(i);
                    break;
                }
                Some(false) => {}
                None => cx.once(
                    format!("slice:{}", slice.id),
                    Severity::Warning,
                    "not-supported",
                    label,
                    format!(
                        "slice '{name}' of {} could not be told apart by its discriminator; it was not checked",
                        node.id
                    ),
                ),
            }
        }
        match matched {
            Some(i) => {
                counts[i] += 1;
                let slice = &node.slices[i].1;
                check_node(cx, slice, it.v, &it.path, it.ty.as_deref(), depth + 1);
            }
            None if closed => cx.add(
                Severity::Error,
                "structure",
                &it.path,
                format!("matches none of the slices of {}, and the slicing is closed", node.id),
            ),
            None => {}
        }
    }
    for (i, (name, slice)) in node.slices.iter().enumerate() {
        let n = counts[i];
        if n < slice.min {
            cx.add(
                Severity::Error,
                "required",
                &format!("{label}:{name}"),
                format!("requires at least {} (cardinality {}), found {n}", slice.min, card(slice.min, slice.max)),
            );
        }
        if slice.max.is_some_and(|m| n > m) {
            cx.add(
                Severity::Error,
                "structure",
                &format!("{label}:{name}"),
                format!("allows at most {}, found {n}", slice.max.unwrap_or(0)),
            );
        }
    }
}

/// Whether `it` belongs to `slice`; `None` when the discriminators cannot
/// decide it (not fixed in the slice, or a kind not supported).
fn slice_matches(cx: &mut Cx, slice: &Node, discs: &[(Disc, String)], it: &Item, depth: usize) -> Option<bool> {
    if discs.is_empty() {
        return None;
    }
    for (kind, dpath) in discs {
        let ok = match kind {
            Disc::Value | Disc::Pattern => {
                let (want, exact) = slice_value(slice, dpath)?;
                let got = values_at(it.v, dpath);
                got.iter().any(|g| if exact { *g == &want } else { contains(g, &want) })
            }
            Disc::Type => {
                if dpath != "$this" {
                    return None;
                }
                let want = slice.types.first().map(|t| t.code.as_str())?;
                match it.ty.as_deref() {
                    Some(t) => t == want,
                    None => true,
                }
            }
            Disc::Profile if dpath == "resolve()" => {
                // A reference told apart by what it points to: the entry of
                // the document it names, checked against the target profiles.
                let urls: Vec<&String> = slice.types.iter().flat_map(|t| t.targets.iter()).collect();
                let bundle = cx.bundle?;
                if urls.is_empty() {
                    return None;
                }
                let Some(r) = it.v.get("reference").and_then(Value::as_str) else { return Some(false) };
                let found = bundle["entry"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|e| e.get("fullUrl").and_then(Value::as_str) == Some(r))
                    .map(|e| &e["resource"]);
                let Some(g) = found else { return Some(false) };
                urls.iter().any(|u| conforms(cx, u, g, depth))
            }
            Disc::Profile => {
                let target = node_at(slice, dpath)?;
                let urls: Vec<&String> = target.types.iter().flat_map(|t| t.profiles.iter()).collect();
                if urls.is_empty() {
                    return None;
                }
                let got = values_at(it.v, dpath);
                let Some(g) = got.first() else { return Some(false) };
                urls.iter().any(|u| conforms(cx, u, g, depth))
            }
            Disc::Exists => return None,
        };
        if !ok {
            return Some(false);
        }
    }
    Some(true)
}

/// Whether `v` conforms to the profile at `url` (used by `profile`
/// discriminators): no error when checked on its own.
fn conforms(cx: &mut Cx, url: &str, v: &Value, depth: usize) -> bool {
    let Some(p) = cx.reg.profile(url) else { return false };
    let rt = v.get("resourceType").and_then(Value::as_str);
    if rt.is_some_and(|t| t != p.type_name) {
        return false;
    }
    let mut sub =
        Cx { reg: cx.reg, findings: Vec::new(), warned: HashSet::new(), stack: cx.stack.clone(), bundle: cx.bundle };
    apply(&mut sub, &p, v, &p.type_name, depth + 1);
    !sub.findings.iter().any(|f| f.severity == Severity::Error)
}

fn node_at<'n>(slice: &'n Node, dpath: &str) -> Option<&'n Node> {
    if dpath == "$this" {
        return Some(slice);
    }
    let mut n = slice;
    for seg in dpath.split('.') {
        n = n.child(seg)?;
    }
    Some(n)
}

/// The value a slice fixes at a discriminator path, and whether it is
/// exact (fixed) or a pattern.
fn slice_value(slice: &Node, dpath: &str) -> Option<(Value, bool)> {
    if dpath == "$this" {
        return slice
            .fixed
            .clone()
            .map(|f| (f, true))
            .or_else(|| slice.pattern.clone().map(|p| (p, false)))
            .or_else(|| synth(slice).map(|p| (p, false)));
    }
    // Walk down; a pattern on an ancestor also fixes the value below it.
    let segs: Vec<&str> = dpath.split('.').collect();
    let mut n = slice;
    for (i, seg) in segs.iter().enumerate() {
        if let Some(pat) = &n.pattern {
            if i > 0 {
                let sub = values_at(pat, &segs[i..].join("."));
                return sub.first().map(|v| ((*v).clone(), false));
            }
        }
        match n.child(seg) {
            Some(c) => n = c,
            None => {
                // An extension slice names its URL through its type's profile.
                if *seg == "url" && i == segs.len() - 1 {
                    let url = n.types.first()?.profiles.first()?;
                    return Some((Value::String(url.clone()), true));
                }
                if let Some(pat) = &n.pattern {
                    let sub = values_at(pat, &segs[i..].join("."));
                    return sub.first().map(|v| ((*v).clone(), false));
                }
                return None;
            }
        }
    }
    n.fixed
        .clone()
        .map(|f| (f, true))
        .or_else(|| n.pattern.clone().map(|p| (p, false)))
        .or_else(|| synth(n).map(|p| (p, false)))
}

/// A pattern made of the values a node's descendants fix (a slice that
/// fixes `coding.system` and `coding.code` but not the CodeableConcept).
fn synth(n: &Node) -> Option<Value> {
    if let Some(v) = n.fixed.as_ref().or(n.pattern.as_ref()) {
        return Some(v.clone());
    }
    let mut out = Map::new();
    for c in &n.children {
        if c.name.ends_with("[x]") || c.name == "extension" {
            continue;
        }
        if let Some(v) = synth(c) {
            let v = if c.max == Some(1) { v } else { Value::Array(vec![v]) };
            out.insert(c.name.clone(), v);
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// The values at a dotted path (arrays flattened).
fn values_at<'v>(v: &'v Value, dpath: &str) -> Vec<&'v Value> {
    let mut cur = vec![v];
    if dpath == "$this" {
        return cur;
    }
    for seg in dpath.split('.') {
        let mut next = Vec::new();
        for c in cur {
            match c.get(seg) {
                Some(Value::Array(a)) => next.extend(a.iter()),
                Some(x) => next.push(x),
                None => {}
            }
        }
        cur = next;
    }
    cur
}

/// Whether `v` contains everything `pattern` has (FHIR pattern[x]).
fn contains(v: &Value, pattern: &Value) -> bool {
    match (v, pattern) {
        (Value::Object(o), Value::Object(p)) => p.iter().all(|(k, pv)| o.get(k).is_some_and(|ov| contains(ov, pv))),
        (Value::Array(a), Value::Array(p)) => p.iter().all(|pv| a.iter().any(|av| contains(av, pv))),
        (Value::Array(a), p) => a.iter().any(|av| contains(av, p)),
        (a, b) => a == b,
    }
}

fn check_value(cx: &mut Cx, node: &Node, v: &Value, path: &str, ty: Option<&str>, depth: usize) {
    if let Some(f) = &node.fixed {
        if v != f {
            cx.add(Severity::Error, "value", path, format!("must be exactly {f} ({}), found {}", node.id, short(v)));
        }
    }
    if let Some(p) = &node.pattern {
        if !contains(v, p) {
            cx.add(
                Severity::Error,
                "value",
                path,
                format!("must match the pattern {p} ({}), found {}", node.id, short(v)),
            );
        }
    }
    if let Some(vs) = &node.required_vs {
        check_binding(cx, vs, v, path, node);
    }
    // The types of this value: for a choice, the one used.
    let types: Vec<&TypeRef> = match ty {
        Some(t) => node.types.iter().filter(|x| x.code == t).collect(),
        None => node.types.iter().collect(),
    };
    if node.is_choice() && ty.is_some() && types.is_empty() && !node.types.is_empty() {
        let allowed: Vec<&str> = node.types.iter().map(|t| t.code.as_str()).collect();
        cx.add(
            Severity::Error,
            "structure",
            path,
            format!("type {} is not allowed here ({} allows {})", ty.unwrap_or("?"), node.id, allowed.join(", ")),
        );
        return;
    }
    if types.len() == 1 {
        let t = types[0];
        if t.code == "Reference" && !t.targets.is_empty() {
            check_reference_target(cx, t, v, path, node);
        }
        if !t.profiles.is_empty() && (t.code != "Extension" || node.children.iter().all(|c| c.fixed.is_none())) {
            let known: Vec<Arc<Profile>> = t.profiles.iter().filter_map(|u| cx.reg.profile(u)).collect();
            if known.is_empty() {
                let u = &t.profiles[0];
                if !u.starts_with("http://hl7.org/fhir/StructureDefinition/") {
                    cx.once(
                        format!("prof:{u}"),
                        Severity::Warning,
                        "not-supported",
                        path,
                        format!("profile {u} ({}) is not loaded; it was not checked", node.id),
                    );
                }
            } else if !known.iter().any(|p| conforms(cx, &p.url, v, depth)) {
                // Report against the first, which says why.
                apply(cx, &known[0], v, path, depth + 1);
            }
        }
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn check_binding(cx: &mut Cx, vs: &str, v: &Value, path: &str, node: &Node) {
    let codes: Vec<(Option<&str>, &str)> = match v {
        Value::String(s) => vec![(None, s.as_str())],
        Value::Object(o) if o.contains_key("coding") => values_at(v, "coding")
            .into_iter()
            .filter_map(|c| c["code"].as_str().map(|code| (c["system"].as_str(), code)))
            .collect(),
        Value::Object(o) if o.contains_key("code") => {
            o["code"].as_str().map(|code| vec![(o.get("system").and_then(Value::as_str), code)]).unwrap_or_default()
        }
        _ => return,
    };
    if codes.is_empty() {
        return;
    }
    let Some(exp) = cx.reg.expansion(vs) else {
        cx.once(
            format!("vs:{vs}"),
            Severity::Warning,
            "not-supported",
            path,
            format!("ValueSet {vs} ({}) is not available; its codes were not checked", node.id),
        );
        return;
    };
    // A CodeableConcept conforms if one of its codings is in the set.
    if !codes.iter().any(|(s, c)| exp.contains(*s, c)) {
        let shown: Vec<String> =
            codes.iter().map(|(s, c)| s.map(|s| format!("{s}#{c}")).unwrap_or_else(|| (*c).to_owned())).collect();
        cx.add(
            Severity::Error,
            "code-invalid",
            path,
            format!("{} is not in the required ValueSet {vs} ({})", shown.join(", "), node.id),
        );
    }
}

fn check_reference_target(cx: &mut Cx, t: &TypeRef, v: &Value, path: &str, node: &Node) {
    let Some(r) = v.get("reference").and_then(Value::as_str) else { return };
    if r.starts_with('#') || r.starts_with("urn:") {
        return;
    }
    let segs: Vec<&str> = r.split('/').collect();
    let rtype = match segs.as_slice() {
        [.., t, _id, "_history", _v] => *t,
        [.., t, _id] => *t,
        _ => return,
    };
    if !crate::fhir::resource_types::R4_RESOURCE_TYPES.contains(&rtype) {
        return;
    }
    let allowed: Vec<String> = t
        .targets
        .iter()
        .map(|u| match cx.reg.profile(u) {
            Some(p) => p.type_name.clone(),
            None => u.rsplit('/').next().unwrap_or(u).to_owned(),
        })
        .collect();
    if !allowed.iter().any(|a| a == rtype || a == "Resource") {
        cx.add(
            Severity::Error,
            "structure",
            path,
            format!("may refer to {} ({}), not to a {rtype}", allowed.join(" or "), node.id),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sd(url: &str, ty: &str, elements: Value) -> Value {
        json!({"resourceType":"StructureDefinition","id":url.rsplit('/').next().unwrap(),"url":url,"name":"T","type":ty,
               "snapshot":{"element":elements}})
    }

    fn registry(resources: Vec<Value>) -> Registry {
        let mut files: Vec<(String, Vec<u8>)> =
            vec![("package/package.json".into(), br#"{"name":"t","version":"1.0.0"}"#.to_vec())];
        for (i, r) in resources.iter().enumerate() {
            files.push((format!("package/r{i}.json"), serde_json::to_vec(r).unwrap()));
        }
        let (info, rs) = read_package(files.iter().map(|(n, b)| (n.as_str(), b.as_slice()))).unwrap();
        let mut reg = Registry::new();
        reg.add(info, rs).unwrap();
        reg
    }

    fn med_profile() -> Value {
        sd(
            "http://x/SD/Med",
            "MedicationRequest",
            json!([
                {"id":"MedicationRequest","path":"MedicationRequest","min":0,"max":"*",
                 "constraint":[{"key":"jp-2","severity":"error","human":"the medicine in words","expression":"medication.ofType(CodeableConcept).text.exists()","source":"http://x/SD/Med"}]},
                {"id":"MedicationRequest.identifier","path":"MedicationRequest.identifier","min":1,"max":"*",
                 "slicing":{"discriminator":[{"type":"value","path":"system"}],"rules":"open"}},
                {"id":"MedicationRequest.identifier:rp","path":"MedicationRequest.identifier","sliceName":"rp","min":1,"max":"1"},
                {"id":"MedicationRequest.identifier:rp.system","path":"MedicationRequest.identifier.system","min":1,"max":"1","fixedUri":"urn:rp"},
                {"id":"MedicationRequest.identifier:rp.value","path":"MedicationRequest.identifier.value","min":1,"max":"1"},
                {"id":"MedicationRequest.status","path":"MedicationRequest.status","min":1,"max":"1",
                 "binding":{"strength":"required","valueSet":"http://hl7.org/fhir/ValueSet/medicationrequest-status|4.0.1"}},
                {"id":"MedicationRequest.category","path":"MedicationRequest.category","min":0,"max":"*",
                 "binding":{"strength":"required","valueSet":"http://x/VS/cat"}},
                {"id":"MedicationRequest.subject","path":"MedicationRequest.subject","min":1,"max":"1",
                 "type":[{"code":"Reference","targetProfile":["http://hl7.org/fhir/StructureDefinition/Patient"]}]},
                {"id":"MedicationRequest.medication[x]","path":"MedicationRequest.medication[x]","min":1,"max":"1",
                 "type":[{"code":"CodeableConcept"}]},
                {"id":"MedicationRequest.authoredOn","path":"MedicationRequest.authoredOn","min":1,"max":"1",
                 "constraint":[{"key":"jp-1","severity":"error","human":"must be a date","expression":"descendants().exists()","source":"http://x/SD/Med"}]},
            ]),
        )
    }

    fn vs_cat() -> Value {
        json!({"resourceType":"ValueSet","id":"cat","url":"http://x/VS/cat","status":"active",
               "compose":{"include":[{"system":"http://x/CS/cat","concept":[{"code":"inpatient"},{"code":"outpatient"}]}]}})
    }

    fn good() -> Value {
        json!({"resourceType":"MedicationRequest","status":"active","intent":"order",
               "identifier":[{"system":"urn:other","value":"9"},{"system":"urn:rp","value":"1"}],
               "category":[{"coding":[{"system":"http://x/CS/cat","code":"outpatient"}]}],
               "subject":{"reference":"Patient/p1"},"medicationCodeableConcept":{"text":"x"},"authoredOn":"2026-01-01"})
    }

    #[test]
    fn a_conforming_resource_has_no_errors_and_unevaluated_invariants_are_named() {
        let reg = registry(vec![med_profile(), vs_cat()]);
        let r = reg.validate(&good(), "http://x/SD/Med");
        assert!(!r.has_errors(), "{:#?}", r.findings);
        assert!(r.findings.iter().any(|f| f.severity == Severity::Warning
            && f.message.contains("'jp-1'")
            && f.message.contains("descendants() is not supported")));
        // An invariant in the subset is evaluated: it holds here, and fails
        // with its key and its words when the data breaks it.
        assert!(!r.findings.iter().any(|f| f.message.contains("'jp-2'")), "{:#?}", r.findings);
        let mut bad = good();
        bad["medicationCodeableConcept"] = json!({"coding": [{"system": "urn:x", "code": "1"}]});
        let r = reg.validate(&bad, "http://x/SD/Med");
        assert!(
            r.findings.iter().any(|f| f.severity == Severity::Error
                && f.code == "invariant"
                && f.message == "invariant 'jp-2' fails: the medicine in words"),
            "{:#?}",
            r.findings
        );
    }

    #[test]
    fn each_violation_is_named() {
        let reg = registry(vec![med_profile(), vs_cat()]);
        let errs = |v: Value| -> Vec<String> {
            reg.validate(&v, "http://x/SD/Med")
                .findings
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| format!("{} {}", f.path, f.message))
                .collect()
        };
        let mut v = good();
        v["identifier"] = json!([{"system":"urn:other","value":"9"}]);
        let e = errs(v);
        assert!(
            e.len() == 1 && e[0].contains("MedicationRequest.identifier:rp") && e[0].contains("at least 1"),
            "{e:?}"
        );
        let mut v = good();
        v.as_object_mut().unwrap().remove("identifier");
        assert!(errs(v).iter().any(|e| e.starts_with("MedicationRequest.identifier requires")));
        let mut v = good();
        v["identifier"][1].as_object_mut().unwrap().remove("value");
        let e = errs(v);
        assert!(e.iter().any(|e| e.starts_with("MedicationRequest.identifier[1].value")), "{e:?}");
        let mut v = good();
        v["status"] = json!("bogus");
        assert!(errs(v).iter().any(|e| e.contains("bogus is not in the required ValueSet")));
        let mut v = good();
        v["category"][0]["coding"][0]["code"] = json!("ward");
        assert!(errs(v).iter().any(|e| e.contains("http://x/CS/cat#ward")));
        let mut v = good();
        v["subject"]["reference"] = json!("Group/g1");
        assert!(errs(v).iter().any(|e| e.contains("may refer to Patient")));
        let mut v = good();
        v.as_object_mut().unwrap().remove("medicationCodeableConcept");
        v["medicationReference"] = json!({"reference":"Medication/m"});
        assert!(errs(v).iter().any(|e| e.contains("type Reference is not allowed")));
        assert!(reg.validate(&json!({"resourceType":"Patient"}), "http://x/SD/Med").has_errors());
        assert!(reg.validate(&good(), "http://x/SD/Nope").has_errors());
    }

    #[test]
    fn an_unavailable_value_set_is_a_warning() {
        let reg = registry(vec![med_profile()]);
        let r = reg.validate(&good(), "http://x/SD/Med");
        assert!(!r.has_errors(), "{:#?}", r.findings);
        assert!(r
            .findings
            .iter()
            .any(|f| f.message.contains("ValueSet http://x/VS/cat") && f.message.contains("not available")));
    }

    #[test]
    fn damaged_packages_are_refused_with_the_file_named() {
        let e = read_package([("package/package.json", &b"{"[..])]).unwrap_err();
        assert!(e.to_string().contains("package.json") && e.to_string().contains("not valid JSON"));
        let e =
            read_package([("package/x.json", &br#"{"resourceType":"ValueSet","id":"a","url":"u"}"#[..])]).unwrap_err();
        assert!(e.to_string().contains("missing"));
        let sd = br#"{"resourceType":"StructureDefinition","id":"a","url":"u","type":"Patient"}"#;
        let e = read_package([
            ("package/package.json", &br#"{"name":"n","version":"1"}"#[..]),
            ("package/sd.json", &sd[..]),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("sd.json") && e.to_string().contains("snapshot"), "{e}");
        let mut reg = Registry::new();
        let files = [
            ("package/package.json", &br#"{"name":"n","version":"1"}"#[..]),
            ("package/vs.json", &br#"{"resourceType":"ValueSet","id":"a","url":"u"}"#[..]),
        ];
        let (i, r) = read_package(files).unwrap();
        reg.add(i.clone(), r.clone()).unwrap();
        assert!(reg.add(i, r).unwrap_err().to_string().contains("already loaded"));
    }

    #[test]
    fn pattern_matching_is_containment() {
        assert!(contains(
            &json!({"coding":[{"system":"s","code":"c","display":"d"}]}),
            &json!({"coding":[{"system":"s","code":"c"}]})
        ));
        assert!(!contains(
            &json!({"coding":[{"system":"s","code":"x"}]}),
            &json!({"coding":[{"system":"s","code":"c"}]})
        ));
        assert_eq!(type_of_suffix("DateTime"), "dateTime");
        assert_eq!(type_of_suffix("Quantity"), "Quantity");
    }
}
