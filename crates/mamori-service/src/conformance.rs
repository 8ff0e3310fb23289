//! FHIR packages and profile validation as the server uses them: the
//! packages `mamori packages add` installed in `DATA/packages/` and those
//! `[fhir] packages` names, loaded at start; `$validate`; and the check a
//! write makes under the `[fhir]` validation policy.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mamori_core::fhir::profile::{read_package, Finding, PackageError, PackageInfo, Registry, Report, Severity};
use mamori_core::fhir::search::{NotSearchable, SearchParams};
use mamori_core::fhir::validate::Issue;
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Facts, Operation};
use serde_json::{json, Value};

use crate::{Actor, ServiceError, Services};

/// The largest package file accepted (JP-CLINS is about 2 MB compressed,
/// 15 MB unpacked).
const MAX_PACKAGE_BYTES: u64 = 256 * 1024 * 1024;

/// What a write does with a resource that does not conform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Not checked.
    Off,
    /// Stored; the findings are answered and audited.
    Warn,
    /// Refused (422).
    Enforce,
}

impl Policy {
    fn parse(s: &str) -> Policy {
        match s {
            "off" => Policy::Off,
            "enforce" => Policy::Enforce,
            _ => Policy::Warn,
        }
    }
}

/// The loaded packages and the write policy.
#[derive(Debug)]
pub struct Conformance {
    /// The conformance resources and compiled profiles.
    pub registry: Registry,
    default: Policy,
    per_type: HashMap<String, Policy>,
    required: HashMap<String, String>,
    /// Where each package came from, in load order.
    pub sources: Vec<PathBuf>,
    /// The institution's patient numbering, when on
    /// (`[institution] number_patients`): what a created Patient gets.
    pub patient_numbers: Option<PatientNumbers>,
    /// The search parameters: mamori's own and the packages' that the
    /// engine evaluates.
    pub search: Arc<SearchParams>,
    /// The packages' search parameters that are not searchable, and why.
    pub not_searchable: Vec<NotSearchable>,
}

/// How new patients are numbered: the patient-id system and the digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientNumbers {
    /// The institution's patient-id system.
    pub system: String,
    /// The digits of a number (zero-padded).
    pub digits: usize,
}

impl PatientNumbers {
    /// The numbering `[institution]` asks for, if any.
    pub fn of(cfg: &crate::config::InstitutionSection) -> Option<PatientNumbers> {
        cfg.number_patients.then(|| PatientNumbers {
            system: mamori_core::fhir::jp::patient_id_system(cfg.id.trim()),
            digits: cfg.patient_number_digits,
        })
    }
}

impl Default for Conformance {
    fn default() -> Self {
        Conformance {
            registry: Registry::new(),
            default: Policy::Warn,
            per_type: HashMap::new(),
            required: HashMap::new(),
            sources: Vec::new(),
            patient_numbers: None,
            search: Arc::new(SearchParams::default()),
            not_searchable: Vec::new(),
        }
    }
}

/// Reads a package from an NPM `.tgz` (or `.tar.gz`) file or a folder
/// (the files of its `package/` folder, or the folder itself).
pub fn read_package_path(path: &Path) -> Result<(PackageInfo, Vec<Value>), PackageError> {
    let shown = path.display().to_string();
    let err = |m: String| PackageError { file: shown.clone(), message: m };
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    if meta.is_dir() {
        let dir = if path.join("package/package.json").is_file() { path.join("package") } else { path.to_owned() };
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| err(format!("cannot list: {e}")))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for p in entries {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let bytes = std::fs::read(&p).map_err(|e| err(format!("cannot read {name}: {e}")))?;
            files.push((format!("package/{name}"), bytes));
        }
    } else {
        if meta.len() > MAX_PACKAGE_BYTES {
            return Err(err(format!("larger than {} MiB", MAX_PACKAGE_BYTES >> 20)));
        }
        let f = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
        let gz = flate2::read::GzDecoder::new(f);
        let mut archive = tar::Archive::new(gz.take(4 * MAX_PACKAGE_BYTES));
        let entries = archive.entries().map_err(|e| err(format!("not a .tgz package: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| err(format!("damaged archive: {e}")))?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let name = entry.path().map_err(|e| err(format!("damaged archive: {e}")))?.to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(|e| err(format!("damaged archive at {name}: {e}")))?;
            files.push((name, bytes));
        }
    }
    read_package(files.iter().map(|(n, b)| (n.as_str(), b.as_slice())))
        .map_err(|e| PackageError { file: format!("{shown}: {}", e.file), message: e.message })
}

/// Where the JP FHIR definitions of the development checkout are
/// (`MAMORI_FHIR_JP`, or `../shared/fhir-jp` beside the repository): for
/// the tests and benchmarks, which load them as an operator would.
pub fn jp_definitions_dir() -> Option<PathBuf> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    [
        std::env::var_os("MAMORI_FHIR_JP").map(PathBuf::from),
        Some(repo.join("../shared/fhir-jp")),
        Some(PathBuf::from("/work/shared/fhir-jp")),
    ]
    .into_iter()
    .flatten()
    .find(|p| p.join("jp-core/package.json").is_file())
}

/// The packages installed in `DATA/packages/` (sorted by file name).
pub fn installed(data_dir: &Path) -> Vec<PathBuf> {
    let dir = data_dir.join("packages");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tgz"))
        .collect();
    v.sort();
    v
}

impl Conformance {
    /// Loads the installed and configured packages and the policy. A
    /// package that cannot be read, or a required profile no package
    /// defines, stops the server from starting (a profile it was told to
    /// enforce cannot be silently skipped).
    pub fn load(cfg: &crate::config::FhirSection, data_dir: &Path) -> Result<Conformance, String> {
        let mut c = Conformance {
            default: Policy::parse(&cfg.validation),
            per_type: cfg.type_validation.iter().map(|(t, p)| (t.clone(), Policy::parse(p))).collect(),
            required: cfg.required.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..Conformance::default()
        };
        let configured = cfg.packages.iter().map(|p| if p.is_absolute() { p.clone() } else { data_dir.join(p) });
        for path in installed(data_dir).into_iter().chain(configured) {
            let (info, resources) = read_package_path(&path).map_err(|e| format!("FHIR package {e}"))?;
            c.registry.add(info, resources).map_err(|e| format!("FHIR package {}: {e}", path.display()))?;
            c.sources.push(path);
        }
        let (search, skipped) = SearchParams::from_definitions(c.registry.all_of("SearchParameter").map(|v| &**v));
        c.search = Arc::new(search);
        c.not_searchable = skipped;
        for (t, url) in &c.required {
            match c.registry.profile(url) {
                Some(p) if p.type_name == *t => {}
                Some(p) => return Err(format!("fhir.required.{t}: {url} constrains {}, not {t}", p.type_name)),
                None => return Err(format!("fhir.required.{t}: {url} is not in any loaded package")),
            }
        }
        Ok(c)
    }

    fn policy(&self, rtype: &str) -> Policy {
        self.per_type.get(rtype).copied().unwrap_or(self.default)
    }

    /// The profiles a resource is checked against: those it claims that
    /// are loaded, and the type's required one. Claimed profiles that are
    /// not loaded are returned apart.
    fn profiles_for(&self, rtype: &str, body: &Value, extra: &[String]) -> (Vec<String>, Vec<String>) {
        let mut use_ = Vec::new();
        let mut unknown = Vec::new();
        let claimed = body.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten();
        let claimed = claimed.filter_map(Value::as_str).map(str::to_owned);
        for url in claimed.chain(self.required.get(rtype).cloned()).chain(extra.iter().cloned()) {
            if self.registry.profile(&url).is_some() {
                if !use_.contains(&url) {
                    use_.push(url);
                }
            } else if !unknown.contains(&url) {
                unknown.push(url);
            }
        }
        (use_, unknown)
    }

    /// Validates against every profile that applies, and `extra`.
    pub fn validate(&self, rtype: &str, body: &Value, extra: &[String]) -> Report {
        let (profiles, unknown) = self.profiles_for(rtype, body, extra);
        let mut out = Report::default();
        for url in unknown {
            out.findings.push(Finding {
                severity: Severity::Warning,
                code: "not-supported",
                path: rtype.to_owned(),
                message: format!("profile {url} is not loaded; the resource was not checked against it"),
            });
        }
        for url in &profiles {
            let r = self.registry.validate(body, url);
            out.findings.extend(r.findings);
            out.profiles.extend(r.profiles);
        }
        out.findings.sort_by_key(|f| f.severity);
        out
    }

    /// The check a write makes (the body as it will be stored): with
    /// `enforce`, errors refuse it; with `warn`, the findings are returned
    /// for the answer and the audit event.
    pub fn check_write(&self, rtype: ResourceType, body: &Value) -> Result<Vec<Finding>, ServiceError> {
        let policy = self.policy(rtype.as_str());
        if policy == Policy::Off {
            return Ok(Vec::new());
        }
        // Nothing claimed or required: an empty report, at once.
        let report = self.validate(rtype.as_str(), body, &[]);
        if policy == Policy::Enforce && report.has_errors() {
            let issues = report
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .map(|f| Issue { path: f.path.clone(), message: f.message.clone() })
                .collect();
            return Err(ServiceError::Unprocessable(issues));
        }
        Ok(report.findings.into_iter().filter(|f| f.severity != Severity::Information).collect())
    }
}

impl Conformance {
    /// The errors of a received document Bundle against the loaded
    /// profiles it and its entries claim in `meta.profile` (none when the
    /// policy for Bundle is `off`). Entries are named `Bundle.entry[i].resource…`.
    pub fn check_document(&self, bundle: &Value) -> Vec<Finding> {
        if self.policy("Bundle") == Policy::Off {
            return Vec::new();
        }
        // Only what the sender claims: `[fhir.required]` governs what this
        // server stores as that type, not the documents partners send.
        let errors = |v: &Value, prefix: &str| -> Vec<Finding> {
            let claimed = v.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten();
            let loaded: Vec<&str> =
                claimed.filter_map(Value::as_str).filter(|u| self.registry.profile(u).is_some()).collect();
            loaded
                .iter()
                .flat_map(|u| self.registry.validate_in(v, u, Some(bundle)).findings)
                .filter(|f| f.severity == Severity::Error)
                .map(|mut f| {
                    if !prefix.is_empty() {
                        f.path = format!("{prefix}.{}", f.path.split_once('.').map_or("", |(_, rest)| rest))
                            .trim_end_matches('.')
                            .to_owned();
                    }
                    f
                })
                .collect()
        };
        let mut out = errors(bundle, "");
        for (i, e) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
            out.extend(errors(&e["resource"], &format!("Bundle.entry[{i}].resource")));
        }
        out
    }
}

/// An OperationOutcome of findings (with one `information` issue when
/// there are none).
pub fn outcome(findings: &[Finding], profiles: &[String]) -> Value {
    let mut issues: Vec<Value> = findings
        .iter()
        .map(|f| {
            json!({"severity": f.severity.as_str(), "code": f.code, "diagnostics": f.message,
                   "expression": [f.path]})
        })
        .collect();
    if !findings.iter().any(|f| f.severity == Severity::Error) {
        let against = if profiles.is_empty() {
            "the core specification".to_owned()
        } else {
            format!("the core specification and {}", profiles.join(", "))
        };
        issues.push(json!({"severity": "information", "code": "informational",
                           "diagnostics": format!("no errors against {against}")}));
    }
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

/// The `mode` of `$validate`: from the query (`mode=`) or a Parameters
/// body (`mode`, a code); both given must agree. Checked against what the
/// level allows: a type takes `create` and `profile`; an instance
/// `update`, `delete` and `profile`; `profile` needs a profile.
fn mode_of(
    query_mode: Option<&str>,
    body: Option<&Value>,
    instance: bool,
    profiles: &[String],
) -> Result<Option<String>, ServiceError> {
    let from_body = body.filter(|b| b["resourceType"] == "Parameters").and_then(|b| {
        b["parameter"].as_array()?.iter().find(|p| p["name"] == "mode").map(|p| p["valueCode"].as_str().unwrap_or(""))
    });
    let mode = match (query_mode, from_body) {
        (Some(q), Some(b)) if q != b => {
            return Err(ServiceError::invalid("mode", format!("the query says mode={q}, the Parameters mode={b}")))
        }
        (Some(m), _) | (None, Some(m)) => Some(m.to_owned()),
        (None, None) => None,
    };
    let allowed: &[&str] = if instance { &["update", "delete", "profile"] } else { &["create", "profile"] };
    if let Some(m) = &mode {
        if !allowed.contains(&m.as_str()) {
            let known = ["create", "update", "delete", "profile"].contains(&m.as_str());
            let why = if !known {
                format!("mode={m} is not a $validate mode (create, update, delete, profile)")
            } else if instance {
                format!("mode={m} is for the type level (POST [type]/$validate), not an instance")
            } else {
                format!("mode={m} needs an instance: POST [type]/[id]/$validate")
            };
            return Err(ServiceError::invalid("mode", why));
        }
        let body_profiles = body
            .filter(|b| b["resourceType"] == "Parameters")
            .and_then(|b| b["parameter"].as_array())
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "profile"));
        if m == "profile" && profiles.is_empty() && !body_profiles {
            return Err(ServiceError::invalid("profile", "mode=profile needs the profile to check against"));
        }
    }
    Ok(mode)
}

/// `$validate` (type level): the core validation, then every profile
/// that applies and those asked for. The answer is an OperationOutcome
/// (200), errors included; the request itself is decided and audited.
/// `mode` (`create`, `profile`, or none) changes nothing of what is
/// checked: a create runs these same checks.
pub async fn validate_op(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    body: &Value,
    profiles: &[String],
    mode: Option<&str>,
) -> Result<Value, ServiceError> {
    mode_of(mode, Some(body), false, profiles)?;
    validate_as(svc, actor, rtype, body, profiles, None).await
}

/// `$validate` on an instance (`POST [type]/[id]/$validate`): the body is
/// validated as an update of that resource, so its id must be the
/// instance's (an error finding otherwise); with `mode=delete` the body
/// (if any) is ignored and the delete of the instance is checked
/// ([`validate_delete`]).
pub async fn validate_update(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    id: &str,
    body: &Value,
    profiles: &[String],
    mode: Option<&str>,
) -> Result<Value, ServiceError> {
    let body = Some(body).filter(|b| !b.is_null());
    if mode_of(mode, body, true, profiles)?.as_deref() == Some("delete") {
        return validate_delete(svc, actor, rtype, id).await;
    }
    let body = body.ok_or_else(|| ServiceError::invalid("", "a resource (or Parameters) body is required"))?;
    validate_as(svc, actor, rtype, body, profiles, Some(id)).await
}

/// `$validate` of a stored resource (`GET [type]/[id]/$validate`): read
/// under the same rule as a read, and audited as one, then validated;
/// with `mode=delete`, its delete checked instead ([`validate_delete`]).
pub async fn validate_stored(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    id: &str,
    profiles: &[String],
    mode: Option<&str>,
) -> Result<Value, ServiceError> {
    if mode_of(mode, None, true, profiles)?.as_deref() == Some("delete") {
        return validate_delete(svc, actor, rtype, id).await;
    }
    let v = crate::records::read::read(svc, actor, rtype.as_str(), id).await?.into_inner();
    let body: Value = serde_json::from_str(&v.body).map_err(|e| ServiceError::internal_from("a stored resource", e))?;
    validate_as(svc, actor, rtype, &body, profiles, Some(id)).await
}

/// `$validate` with `mode=delete`: whether the caller could delete the
/// instance now. The resource is read first under the read rule (audited;
/// one the caller may not read is answered as a read would be), then the
/// delete is decided as a `DELETE` would decide it, and that decision is
/// audited with its basis. Nothing is deleted. A delete in mamori adds a
/// tombstone version, so no reference to the resource can break.
pub async fn validate_delete(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    id: &str,
) -> Result<Value, ServiceError> {
    svc.read_gate(actor, "validate", Operation::FhirValidate, Facts::default(), "validating resources").await?;
    let v = crate::records::read::read(svc, actor, rtype.as_str(), id).await?.into_inner();
    let mut findings = Vec::new();
    let at = format!("{rtype}/{id}");
    if svc.conformance().registry.get(rtype.as_str(), id).is_some() {
        findings.push(Finding {
            severity: Severity::Error,
            code: "forbidden",
            path: rtype.as_str().to_owned(),
            message: format!("{at} is defined by a loaded FHIR package and is read-only"),
        });
    } else if crate::exchange::is_mirror(rtype.as_str(), id) {
        findings.push(Finding {
            severity: Severity::Error,
            code: "forbidden",
            path: rtype.as_str().to_owned(),
            message: format!("{at} mirrors the partner registry and is read-only"),
        });
    } else {
        let (a, patients, now) = (actor.clone(), v.patients.clone(), svc.now());
        let d = svc
            .store
            .read(move |c| {
                crate::authz::decide_record(c, &a, mamori_core::policy::Action::Delete, rtype, &patients, now)
            })
            .await?;
        let mut rec = actor.decided("validate-delete", 200, &d, now);
        rec.entity = Some(mamori_audit::event::Entity {
            id: Some(id.to_owned()),
            rtype: rtype.as_str().to_owned(),
            version: None,
        });
        rec.patients = v.patients.clone();
        rec.detail = Some(json!({"would_permit": d.permit}));
        svc.audit(vec![rec]).await?;
        if !d.permit {
            let ServiceError::Denied { message, .. } = ServiceError::denied(&format!("deleting {at}"), &d) else {
                return Err(ServiceError::internal("a denial that is not one"));
            };
            findings.push(Finding {
                severity: Severity::Error,
                code: "forbidden",
                path: rtype.as_str().to_owned(),
                message,
            });
        }
    }
    if findings.is_empty() {
        let msg = format!(
            "{at} may be deleted by you now: a delete adds a tombstone version (nothing is erased, references stay resolvable through its history)"
        );
        return Ok(json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": msg, "expression": [rtype.as_str()]}]}));
    }
    Ok(outcome(&findings, &[]))
}

async fn validate_as(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    body: &Value,
    profiles: &[String],
    instance: Option<&str>,
) -> Result<Value, ServiceError> {
    svc.read_gate(actor, "validate", Operation::FhirValidate, Facts::default(), "validating resources").await?;
    // A Parameters body carries the resource and the profile.
    let (resource, mut asked) = if body["resourceType"] == "Parameters" && rtype.as_str() != "Parameters" {
        let params = body["parameter"].as_array().cloned().unwrap_or_default();
        let r = params.iter().find(|p| p["name"] == "resource").and_then(|p| p.get("resource")).cloned();
        let Some(r) = r else {
            return Err(ServiceError::invalid("Parameters.parameter", "a 'resource' parameter is required"));
        };
        let prof: Vec<String> = params
            .iter()
            .filter(|p| p["name"] == "profile")
            .filter_map(|p| p["valueUri"].as_str().or(p["valueCanonical"].as_str()).map(str::to_owned))
            .collect();
        (r, prof)
    } else {
        (body.clone(), Vec::new())
    };
    asked.extend(profiles.iter().cloned());
    let conf = svc.conformance();
    for url in &asked {
        match conf.registry.profile(url) {
            None => return Err(ServiceError::invalid("profile", format!("{url} is not in any loaded package"))),
            Some(p) if p.type_name != rtype.as_str() => {
                return Err(ServiceError::invalid("profile", format!("{url} constrains {}, not {rtype}", p.type_name)))
            }
            Some(_) => {}
        }
    }
    let core = match mamori_core::fhir::validate::validate_resource(&resource) {
        Ok(t) if t == rtype => Vec::new(),
        Ok(t) => vec![Finding {
            severity: Severity::Error,
            code: "invalid",
            path: "resourceType".into(),
            message: format!("body is a {t}, but the URL names {rtype}"),
        }],
        Err(issues) => issues
            .into_iter()
            .map(|i| Finding { severity: Severity::Error, code: "structure", path: i.path, message: i.message })
            .collect(),
    };
    let mut core = core;
    if let Some(id) = instance {
        if resource["id"].as_str() != Some(id) {
            core.push(Finding {
                severity: Severity::Error,
                code: "invalid",
                path: format!("{rtype}.id"),
                message: format!(
                    "validated as an update of {rtype}/{id}, but the resource's id is {}",
                    resource["id"].as_str().unwrap_or("missing")
                ),
            });
        }
    }
    let mut report = conf.validate(rtype.as_str(), &resource, &asked);
    let mut findings = core;
    findings.append(&mut report.findings);
    findings.sort_by_key(|f| f.severity);
    Ok(outcome(&findings, &report.profiles))
}

/// Installs a package in `DATA/packages/` as `NAME-VERSION.tgz`: read and
/// checked first (a damaged package is refused with the file named), then
/// loaded together with every package already in force (a second
/// version of one is refused unless `replace`). A folder is packed into
/// an NPM tarball; a tarball is copied unchanged. The server loads it at
/// its next start.
pub fn install(
    data_dir: &Path,
    cfg: &crate::config::FhirSection,
    src: &Path,
    replace: bool,
) -> Result<(PathBuf, PackageInfo), String> {
    let (info, _) = read_package_path(src).map_err(|e| e.to_string())?;
    let safe = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !safe(&info.name) || !safe(&info.version) {
        return Err(format!("package name '{}' or version '{}' is not a plain file name", info.name, info.version));
    }
    let dir = data_dir.join("packages");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut moved = Vec::new();
    for p in installed(data_dir) {
        let Ok((other, _)) = read_package_path(&p) else { continue };
        if other.name == info.name {
            if !replace {
                return Err(format!(
                    "{} {} is already installed ({}); add --replace to install {} instead",
                    other.name,
                    other.version,
                    p.display(),
                    info.version
                ));
            }
            let aside = p.with_extension("tgz.replaced");
            std::fs::rename(&p, &aside).map_err(|e| format!("{}: {e}", p.display()))?;
            moved.push((aside, p));
        }
    }
    let target = dir.join(format!("{}-{}.tgz", info.name, info.version));
    let tmp = dir.join(format!(".{}-{}.tgz.tmp", info.name, info.version));
    let written = if std::fs::metadata(src).map(|m| m.is_dir()).unwrap_or(false) {
        pack_dir(src, &tmp)
    } else {
        std::fs::copy(src, &tmp).map(|_| ()).map_err(|e| e.to_string())
    }
    .and_then(|()| std::fs::rename(&tmp, &target).map_err(|e| e.to_string()));
    let loaded = written.and_then(|()| Conformance::load(cfg, data_dir).map(|_| ()));
    match loaded {
        Ok(()) => {
            for (aside, _) in moved {
                // The replaced version stays beside, out of the load path.
                tracing::info!(file = %aside.display(), "replaced FHIR package kept");
            }
            Ok((target, info))
        }
        Err(e) => {
            let _removed = std::fs::remove_file(&tmp).is_ok() || std::fs::remove_file(&target).is_ok();
            for (aside, back) in moved {
                if let Err(re) = std::fs::rename(&aside, &back) {
                    return Err(format!("{e}; and restoring {} failed: {re}", back.display()));
                }
            }
            Err(e)
        }
    }
}

/// Packs a folder of definitions as an NPM package tarball (`package/…`).
fn pack_dir(src: &Path, out: &Path) -> Result<(), String> {
    let dir = if src.join("package/package.json").is_file() { src.join("package") } else { src.to_owned() };
    let f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let gz = flate2::write::GzEncoder::new(f, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        tar.append_path_with_name(&p, format!("package/{name}")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let gz = tar.into_inner().map_err(|e| e.to_string())?;
    let f = gz.finish().map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())
}

/// The search parameters a search of package definitions takes.
const DEFINITION_PARAMS: &[&str] = &["url", "name", "type", "version", "status", "_id", "_count", "_format", "_pretty"];

/// Whether a request for `rtype` is answered from the loaded packages: a
/// conformance type of which packages hold definitions (and, for a
/// search, only the parameters [`search_definitions`] takes).
pub fn serves(svc: &Services, rtype: &str, pairs: Option<&[(String, String)]>) -> bool {
    if !mamori_core::fhir::profile::CONFORMANCE_TYPES.contains(&rtype) {
        return false;
    }
    let conf = svc.conformance();
    if conf.registry.all_of(rtype).next().is_none() {
        return false;
    }
    pairs.is_none_or(|p| p.iter().all(|(k, _)| DEFINITION_PARAMS.contains(&k.as_str())))
}

fn definition_op(rtype: ResourceType, action: mamori_core::policy::Action) -> Operation {
    use mamori_core::policy::{PatientScope, Target};
    Operation::Record { action, target: Target { rtype, scope: PatientScope::None } }
}

/// Reads a definition a package holds (read-only; decided and audited
/// as a read of reference data). `None` if no package holds that id.
pub async fn read_definition(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    id: &str,
) -> Result<Option<std::sync::Arc<Value>>, ServiceError> {
    let conf = svc.conformance();
    let Some(v) = conf.registry.get(rtype.as_str(), id) else { return Ok(None) };
    let op = definition_op(rtype, mamori_core::policy::Action::Read);
    let d = svc.gate(actor, "read", op, Facts::default(), &format!("reading {rtype}/{id}")).await?;
    let rec = actor.fhir_record("read", 200, Some(rtype.as_str()), Some(id), None, vec![], Some(&d), svc.now());
    svc.audit(vec![rec]).await?;
    Ok(Some(v))
}

/// Searches the definitions packages hold by `url` (with or without
/// `|version`), `name`, `type`, `version`, `status`, `_id`; every value
/// an exact match, comma-separated values any of them. Returns every
/// match and the `_count` asked for (one page: definitions are few).
pub async fn search_definitions(
    svc: &Services,
    actor: &Actor,
    rtype: ResourceType,
    pairs: &[(String, String)],
) -> Result<(Vec<std::sync::Arc<Value>>, usize), ServiceError> {
    let op = definition_op(rtype, mamori_core::policy::Action::Search);
    let d = svc.gate(actor, "search", op, Facts::default(), &format!("searching {rtype}")).await?;
    let rec = actor.fhir_record("search", 200, Some(rtype.as_str()), None, None, vec![], Some(&d), svc.now());
    svc.audit(vec![rec]).await?;
    let mut count = usize::MAX;
    let mut conds: Vec<(&str, Vec<&str>)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "_count" => {
                count = v.parse().map_err(|_| ServiceError::invalid("_count", "must be a non-negative integer"))?;
            }
            "_format" | "_pretty" => {}
            "_id" => conds.push(("id", v.split(',').collect())),
            k => conds.push((k, v.split(',').collect())),
        }
    }
    let conf = svc.conformance();
    let out = conf
        .registry
        .all_of(rtype.as_str())
        .filter(|r| {
            conds.iter().all(|(k, vals)| {
                let have = r.get(*k).and_then(Value::as_str).unwrap_or_default();
                vals.iter().any(|want| match (*k, want.split_once('|')) {
                    ("url", Some((u, ver))) => have == u && r["version"].as_str() == Some(ver),
                    _ => have == *want,
                })
            })
        })
        .cloned()
        .collect();
    Ok((out, count))
}
