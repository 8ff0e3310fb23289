//! JP-CLINS documents composed from the chart: the referral letter
//! (診療情報提供書, `JP_Bundle_eReferral` with `JP_Composition_eReferral`).
//!
//! The letter's header entries (patient, author, the two institutions)
//! are built to the JP-CLINS eCS profiles; every section says in its text
//! what the chart holds, so the letter reads complete to a person. A
//! chart resource also goes in as a structured entry when it conforms to
//! its eCS profile (JP-CLINS requires national codes, e.g. a MEDIS disease
//! number, that a chart may not carry); the others are listed as
//! text-only, with the reason, in what the composer returns. The whole
//! document is validated against the loaded JP-CLINS package before it
//! is signed and sent: one error stops the send.

use base64::Engine as _;
use mamori_core::fhir::profile::{Finding, Registry, Severity};
use mamori_core::fhir::validate::Issue;
use mamori_core::time::{civil_from_days, Timestamp};
use serde_json::{json, Value};

/// JP-CLINS canonical URLs.
pub const BUNDLE_EREFERRAL: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eReferral";
/// The referral letter's Composition profile.
pub const COMPOSITION_EREFERRAL: &str = "http://jpfhir.jp/fhir/eReferral/StructureDefinition/JP_Composition_eReferral";
/// The discharge summary's Bundle profile.
pub const BUNDLE_EDISCHARGE: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_eDischargeSummary";
/// The discharge summary's Composition profile.
pub const COMPOSITION_EDISCHARGE: &str =
    "http://jpfhir.jp/fhir/eDischargeSummary/StructureDefinition/JP_Composition_eDischargeSummary";
/// The bundle of the clinical information items (電子カルテ情報共有サービス).
pub const BUNDLE_CLINS: &str = "http://jpfhir.jp/fhir/clins/StructureDefinition/JP_Bundle_CLINS";
const LABRESULT_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_LabResult_eCS";
const DEPARTMENT_EXT: &str = "http://jpfhir.jp/fhir/eCS/Extension/StructureDefinition/JP_eCS_Department";
const BUNDLE_TYPE_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/BundleResourceType_CS";
const JP_ENCOUNTER: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/JP_Encounter";
const ENCOUNTER_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Encounter_eCS";
const DOCUMENT_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_DocumentReference_eCS";
const PATIENT_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS";
const PRACTITIONER_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Practitioner_eCS";
const ORGANIZATION_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Organization_eCS";
const CONDITION_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Condition_eCS";
const ALLERGY_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_AllergyIntolerance_eCS";
const MEDICATION_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS";
const OBSERVATION_ECS: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_Common_eCS";
const INSTITUTION_EXT: &str = "http://jpfhir.jp/fhir/clins/Extension/StructureDefinition/JP_eCS_InstitutionNumber";
const INSTITUTION_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/insurance-medical-institution-no";
const RESOURCE_ID_SYSTEM: &str = "http://jpfhir.jp/fhir/core/IdSystem/resourceInstance-identifier";
const BUNDLE_ID_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/bundle-identifier";
const SECTION_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/document-section";
const INSURANCE_SYSTEM: &str = "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID";
const REPRESENTATION: &str = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";

/// What the letter is composed from.
pub struct Letter<'a> {
    /// The loaded packages (JP-CLINS must be among them).
    pub registry: &'a Registry,
    /// This institution: its 10-digit code and name.
    pub institution: (&'a str, &'a str),
    /// Local time zone, minutes east of UTC.
    pub utc_offset_minutes: i64,
    /// The recipient: its 10-digit code (if registered) and name.
    pub recipient: (Option<&'a str>, &'a str),
    /// The author: login, name, department.
    pub author: (&'a str, &'a str, Option<&'a str>),
    /// The patient's id and stored body.
    pub patient: (&'a str, &'a Value),
    /// The chart: (type, id, body) of the patient's resources.
    pub chart: &'a [(String, String, Value)],
    /// 紹介目的: why the patient is referred.
    pub purpose: &'a str,
    /// 現病歴: the present illness, if written; otherwise composed from the problems.
    pub history: Option<&'a str>,
    /// When.
    pub now: Timestamp,
    /// A unique id for the document (a UUID).
    pub serial: &'a str,
    /// Which document.
    pub kind: Kind<'a>,
}

/// The JP-CLINS document composed.
pub enum Kind<'a> {
    /// 診療情報提供書: `purpose` is 紹介目的.
    Referral,
    /// 退院時サマリー for an admission: the inpatient Encounter (id, body),
    /// `purpose` is the hospital course (入院中経過), `plan` the
    /// instructions at discharge (退院時方針指示).
    Discharge {
        /// The admission: its id and stored body.
        encounter: (&'a str, &'a Value),
        /// 退院時方針指示, if written.
        plan: Option<&'a str>,
    },
}

/// A composed letter.
pub struct Composed {
    /// The document Bundle (unsigned).
    pub bundle: Value,
    /// Chart resources sent as structured entries (`Type/id`).
    pub structured: Vec<String>,
    /// Chart resources shown in a section's text only, with the reason.
    pub text_only: Vec<Value>,
    /// Warnings of the validation (terminology not available offline,
    /// FHIRPath invariants not evaluated).
    pub warnings: Vec<String>,
}

fn issue(m: impl Into<String>) -> Issue {
    Issue { path: String::new(), message: m.into() }
}

/// `insurer:symbol:number:branch`: 8 digits, two parts without a colon or
/// a space, and a branch of two digits or nothing.
fn insurance_value_ok(v: &str) -> bool {
    let parts: Vec<&str> = v.split(':').collect();
    let [insurer, symbol, number, branch] = parts[..] else { return false };
    let plain = |s: &str| !s.chars().any(|c| c == '^' || c.is_whitespace());
    insurer.len() == 8
        && insurer.bytes().all(|b| b.is_ascii_digit())
        && plain(symbol)
        && plain(number)
        && (branch.is_empty() || (branch.len() == 2 && branch.bytes().all(|b| b.is_ascii_digit())))
}

/// `(date, dateTime with offset, instant with milliseconds and offset)` in local time.
fn local(now: Timestamp, off: i64) -> (String, String, String) {
    let l = now.micros() + off * 60_000_000;
    let secs = l.div_euclid(1_000_000);
    let ms = l.rem_euclid(1_000_000) / 1000;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    let tz = format!("{}{:02}:{:02}", if off < 0 { '-' } else { '+' }, off.abs() / 60, off.abs() % 60);
    let date = format!("{y:04}-{m:02}-{d:02}");
    let time = format!("{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60);
    (date.clone(), format!("{date}T{time}{tz}"), format!("{date}T{time}.{ms:03}{tz}"))
}

/// A FHIR instant in local time (`2026-12-04T10:00:00.000+09:00`).
pub fn instant(now: Timestamp, off: i64) -> String {
    local(now, off).2
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A section's narrative: one paragraph per line.
fn div(lines: &[String]) -> Value {
    let body: String = lines.iter().map(|l| format!("<p>{}</p>", esc(l).replace('\n', "<br/>"))).collect();
    json!({"status": "additional", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{body}</div>")})
}

fn section(code: &str, title: &str, lines: &[String], entries: &[String]) -> Value {
    let mut s = json!({
        "title": title,
        "code": {"coding": [{"system": SECTION_SYSTEM, "code": code, "display": format!("{title}セクション")}]},
    });
    if !lines.is_empty() {
        s["text"] = div(lines);
    }
    if !entries.is_empty() {
        s["entry"] = entries.iter().map(|u| json!({"reference": u})).collect();
    }
    s
}

/// A CodeableConcept as words.
pub fn concept_text(c: &Value) -> String {
    c["text"]
        .as_str()
        .or_else(|| c["coding"].as_array().and_then(|a| a.iter().find_map(|x| x["display"].as_str())))
        .or_else(|| c["coding"][0]["code"].as_str())
        .unwrap_or("—")
        .to_owned()
}

fn date_part(v: &Value) -> &str {
    v.as_str().map(|s| s.get(..10).unwrap_or(s)).unwrap_or("")
}

fn observation_value(o: &Value) -> String {
    let q = &o["valueQuantity"];
    if let Some(v) = q["value"].as_f64() {
        return format!("{v} {}", q["unit"].as_str().or(q["code"].as_str()).unwrap_or("")).trim_end().to_owned();
    }
    if let Some(s) = o["valueString"].as_str() {
        return s.to_owned();
    }
    if o["valueCodeableConcept"].is_object() {
        return concept_text(&o["valueCodeableConcept"]);
    }
    "—".into()
}

/// The text of a narrative (XHTML) as plain lines: tags dropped, the five
/// entities read. Nothing of a partner's markup reaches the page.
pub fn narrative_text(div: &str) -> String {
    let mut out = String::new();
    let mut rest = div;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('>') else {
            rest = "";
            break;
        };
        let tag = rest[i + 1..i + j].trim_start_matches('/').to_ascii_lowercase();
        if ["p", "br", "div", "li", "tr", "h1", "h2", "h3", "h4"]
            .iter()
            .any(|t| tag == *t || tag.starts_with(&format!("{t} ")) || tag.starts_with(&format!("{t}/")))
            && !out.ends_with('\n')
            && !out.is_empty()
        {
            out.push('\n');
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .trim()
        .to_owned()
}

/// Rewrites references: the patient's to its entry, others (outside the
/// document) to their display only.
fn localize(v: &mut Value, patient_ref: &str, patient_urn: &str) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get("reference") {
                if r == patient_ref {
                    o.insert("reference".into(), json!(patient_urn));
                } else if !r.starts_with('#') && !r.starts_with("urn:") {
                    let r = r.clone();
                    o.remove("reference");
                    o.entry("display").or_insert(json!(r));
                }
            }
            for (_, x) in o.iter_mut() {
                localize(x, patient_ref, patient_urn);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| localize(x, patient_ref, patient_urn)),
        _ => {}
    }
}

fn errors_of(findings: &[Finding]) -> Vec<&Finding> {
    findings.iter().filter(|f| f.severity == Severity::Error).collect()
}

/// A chart resource as a document entry: no local id or narrative, meta
/// naming the profile (the security labels kept, e.g. test data).
fn restamp(o: &mut serde_json::Map<String, Value>, profile: &str, instant: &str) {
    o.remove("id");
    o.remove("text");
    let security = o.get("meta").and_then(|m| m.get("security")).cloned();
    let mut m = json!({"lastUpdated": instant, "profile": [profile]});
    if let Some(s) = security {
        m["security"] = s;
    }
    o.insert("meta".into(), m);
}

/// The patient as `JP_Patient_eCS`, or why it cannot be: the profile's
/// findings, and the JP-CLINS rules written as FHIRPath invariants,
/// checked here.
fn patient_ecs(reg: &Registry, patient_ref: &str, pbody: &Value, instant: &str) -> Result<Value, Vec<Issue>> {
    let mut patient = pbody.clone();
    if let Some(o) = patient.as_object_mut() {
        restamp(o, PATIENT_ECS, instant);
    }
    // JP-CLINS forbids a full-width space in kanji and kana names.
    for n in patient["name"].as_array_mut().into_iter().flatten() {
        if n["extension"].as_array().is_some_and(|e| e.iter().any(|x| x["url"] == REPRESENTATION)) {
            if let Some(t) = n["text"].as_str() {
                n["text"] = json!(t.replace('\u{3000}', " "));
            }
        }
    }
    // JP-CLINS states these as FHIRPath invariants, which the validator
    // names but does not evaluate: the composer checks them itself.
    let insured: Vec<&str> = patient["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["system"] == INSURANCE_SYSTEM)
        .filter_map(|i| i["value"].as_str())
        .collect();
    match insured[..] {
        [v] if insurance_value_ok(v) => {}
        [v] => {
            return Err(vec![issue(format!(
                "{patient_ref} cannot be sent as JP_Patient_eCS: its {INSURANCE_SYSTEM} identifier '{v}' is not \
                 insurer(8 digits):symbol:number:branch(2 digits or empty) (JP-CLINS rule valid-value-insurance-patientIdentifier)"
            ))])
        }
        _ => {
            return Err(vec![issue(format!(
                "{patient_ref} cannot be sent as JP_Patient_eCS: it needs exactly one identifier in {INSURANCE_SYSTEM} \
                 (被保険者個人識別子; JP-CLINS rule valid-system-insurance-patientIdentifier), found {}",
                insured.len()
            ))])
        }
    }
    let pr = reg.validate(&patient, PATIENT_ECS);
    let perr = errors_of(&pr.findings);
    if !perr.is_empty() {
        return Err(perr
            .iter()
            .map(|f| Issue {
                path: f.path.clone(),
                message: format!("{patient_ref} cannot be sent as JP_Patient_eCS: {}", f.message),
            })
            .collect());
    }
    Ok(patient)
}

/// Composes the document and validates it; the issues say what stops it
/// (a missing registration, a patient the profile refuses, a package not
/// loaded).
pub fn compose(r: &Letter<'_>) -> Result<Composed, Vec<Issue>> {
    let reg = r.registry;
    let discharge = matches!(r.kind, Kind::Discharge { .. });
    let (bundle_profile, composition_profile) =
        if discharge { (BUNDLE_EDISCHARGE, COMPOSITION_EDISCHARGE) } else { (BUNDLE_EREFERRAL, COMPOSITION_EREFERRAL) };
    if reg.profile(bundle_profile).is_none() || reg.profile(composition_profile).is_none() {
        return Err(vec![issue(
            "the JP-CLINS package is not loaded (mamori packages add, or [fhir] packages); a JP-CLINS document is validated before it is sent",
        )]);
    }
    let (inst_code, inst_name) = r.institution;
    let mut problems = Vec::new();
    if inst_code.is_empty() {
        problems.push(issue("[institution] id (the 10-digit medical institution code) is not set; JP-CLINS names the issuing institution by it"));
    }
    let to_code = match r.recipient.0 {
        Some(c) => c,
        None if discharge => "",
        None => {
            problems.push(issue(format!(
                "partner {} has no institution_code in the registry; JP-CLINS names the recipient institution by it",
                r.recipient.1
            )));
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    let (date, datetime, instant) = local(r.now, r.utc_offset_minutes);
    let year = &date[..4];
    let (_, pbody) = r.patient;
    let patient_ref = format!("Patient/{}", r.patient.0);
    let urn = |_: &str| format!("urn:uuid:{}", mamori_store::accounts::new_id().unwrap_or_default());
    let (u_patient, u_author, u_from, u_to, u_comp) = (urn("p"), urn("a"), urn("f"), urn("t"), urn("c"));
    let meta = |profile: &str| json!({"lastUpdated": instant, "profile": [profile]});
    let inst_ext =
        json!([{"url": INSTITUTION_EXT, "valueIdentifier": {"system": INSTITUTION_SYSTEM, "value": inst_code}}]);

    let patient = patient_ecs(reg, &patient_ref, pbody, &instant)?;

    // The author and the two institutions.
    let (login, display, department) = r.author;
    let mut parts = display.split_whitespace();
    let family = parts.next().unwrap_or(display);
    let given: Vec<&str> = parts.collect();
    let mut name = json!({"use": "official", "text": display, "family": family});
    if !given.is_empty() {
        name["given"] = json!(given);
    }
    let author = json!({"resourceType": "Practitioner", "meta": meta(PRACTITIONER_ECS),
        "identifier": [{"system": format!("urn:oid:1.2.392.100495.20.3.41.1{inst_code}"), "value": login}],
        "name": [name]});
    let org = |code: &str, name: &str| {
        let mut o = json!({"resourceType": "Organization", "meta": meta(ORGANIZATION_ECS),
            "identifier": [{"system": INSTITUTION_SYSTEM, "value": code}], "name": name});
        if code.len() == 10 && code.bytes().all(|b| b.is_ascii_digit()) {
            o["extension"] = json!([
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_PrefectureNo",
                 "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.21", "code": &code[..2]}},
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationCategory",
                 "valueCoding": {"system": "urn:oid:1.2.392.100495.20.3.22", "code": &code[2..3]}},
                {"url": "http://jpfhir.jp/fhir/core/Extension/StructureDefinition/JP_Organization_InsuranceOrganizationNo",
                 "valueIdentifier": {"system": "urn:oid:1.2.392.100495.20.3.23", "value": &code[3..]}}
            ]);
        }
        o
    };
    let from = org(inst_code, inst_name);
    let to = org(to_code, r.recipient.1);

    // The admission a discharge summary is about, as JP_Encounter_eCS.
    let u_enc = urn("n");
    let mut admission = None;
    if let Kind::Discharge { encounter: (eid, ebody), .. } = r.kind {
        let eref = format!("Encounter/{eid}");
        let class = ebody["class"]["code"].as_str().unwrap_or("");
        if !matches!(class, "IMP" | "ACUTE" | "NONAC") {
            return Err(vec![issue(format!(
                "{eref} is not an admission (class {class:?}; a discharge summary is about an IMP, ACUTE or NONAC encounter)"
            ))]);
        }
        let (start, end) = (date_part(&ebody["period"]["start"]), date_part(&ebody["period"]["end"]));
        if ebody["status"] != "finished" || start.is_empty() || end.is_empty() {
            return Err(vec![issue(format!(
                "{eref} is not a finished admission with its dates (status finished, period.start and period.end)"
            ))]);
        }
        let mut e = ebody.clone();
        if let Some(o) = e.as_object_mut() {
            o.remove("id");
            o.remove("text");
            o.insert("meta".into(), meta(ENCOUNTER_ECS));
        }
        // The class's display, as HL7 v3 names it, when the chart has none.
        if e["class"]["display"].is_null() {
            e["class"]["display"] = json!(match class {
                "IMP" => "inpatient encounter",
                "ACUTE" => "inpatient acute",
                _ => "inpatient non-acute",
            });
        }
        localize(&mut e, &patient_ref, &u_patient);
        let errors: Vec<Issue> = errors_of(&reg.validate(&e, ENCOUNTER_ECS).findings)
            .iter()
            .map(|f| Issue {
                path: f.path.clone(),
                message: format!("{eref} cannot be sent as JP_Encounter_eCS: {}", f.message),
            })
            .collect();
        if !errors.is_empty() {
            return Err(errors);
        }
        let reason = ebody["reasonCode"].as_array().map(|a| a.iter().map(concept_text).collect::<Vec<_>>().join("、"));
        admission = Some((e, start.to_owned(), end.to_owned(), reason.filter(|x| !x.is_empty())));
    }

    // The chart, section by section.
    let mut entries: Vec<(String, Value)> = Vec::new();
    let mut structured = Vec::new();
    let mut text_only = Vec::new();
    let mut try_entry = |rt: &str, id: &str, body: &Value, profile: &str| -> Option<String> {
        let mut v = body.clone();
        let o = v.as_object_mut()?;
        restamp(o, profile, &instant);
        let mut ids = o.get("identifier").and_then(Value::as_array).cloned().unwrap_or_default();
        if rt != "MedicationRequest" {
            ids.push(json!({"system": RESOURCE_ID_SYSTEM, "value": format!("{inst_code}^{year}^{id}")}));
            o.insert("identifier".into(), json!(ids));
        }
        let mut ext = o.get("extension").and_then(Value::as_array).cloned().unwrap_or_default();
        ext.extend(inst_ext.as_array().cloned().unwrap_or_default());
        o.insert("extension".into(), json!(ext));
        localize(&mut v, &patient_ref, &u_patient);
        let rep = reg.validate(&v, profile);
        let errors = errors_of(&rep.findings);
        if errors.is_empty() {
            let u = urn("e");
            entries.push((u.clone(), v));
            structured.push(format!("{rt}/{id}"));
            return Some(u);
        }
        let reasons: Vec<String> = errors.iter().take(5).map(|f| format!("{}: {}", f.path, f.message)).collect();
        text_only.push(json!({"resource": format!("{rt}/{id}"), "profile": profile, "reason": reasons.join("; ")}));
        None
    };
    let of = |t: &'static str| r.chart.iter().filter(move |(rt, _, _)| rt == t);
    let active_condition = |c: &Value| {
        let s = c["clinicalStatus"]["coding"][0]["code"].as_str().unwrap_or("active");
        matches!(s, "active" | "recurrence" | "relapse")
    };
    let (mut problems_l, mut problems_e, mut past_l, mut past_e) = (vec![], vec![], vec![], vec![]);
    for (_, id, c) in of("Condition") {
        if c["verificationStatus"]["coding"][0]["code"] == "entered-in-error" {
            continue;
        }
        let onset = date_part(&c["onsetDateTime"]);
        let line = if onset.is_empty() {
            concept_text(&c["code"])
        } else {
            format!("{}（{onset}〜）", concept_text(&c["code"]))
        };
        let e = try_entry("Condition", id, c, CONDITION_ECS);
        if active_condition(c) {
            problems_l.push(line);
            problems_e.extend(e);
        } else {
            past_l.push(line);
            past_e.extend(e);
        }
    }
    let (mut allergy_l, mut allergy_e) = (vec![], vec![]);
    for (_, id, a) in of("AllergyIntolerance") {
        if a["verificationStatus"]["coding"][0]["code"] == "entered-in-error" {
            continue;
        }
        let crit = match a["criticality"].as_str() {
            Some("high") => "（重篤 / high criticality）",
            _ => "",
        };
        allergy_l.push(format!("{}{crit}", concept_text(&a["code"])));
        allergy_e.extend(try_entry("AllergyIntolerance", id, a, ALLERGY_ECS));
    }
    let (mut med_l, mut med_e) = (vec![], vec![]);
    for (_, id, m) in of("MedicationRequest") {
        if m["status"] != "active" {
            continue;
        }
        let dose = m["dosageInstruction"][0]["text"].as_str().map(|d| format!(" {d}")).unwrap_or_default();
        med_l.push(format!("{}{dose}", concept_text(&m["medicationCodeableConcept"])));
        med_e.extend(try_entry("MedicationRequest", id, m, MEDICATION_ECS));
    }
    // Results: the latest of each test.
    let mut latest: Vec<(&String, &Value)> = Vec::new();
    for (_, id, o) in of("Observation") {
        if !matches!(o["status"].as_str(), Some("final" | "amended" | "corrected")) {
            continue;
        }
        let key = concept_text(&o["code"]);
        let when = o["effectiveDateTime"].as_str().unwrap_or("");
        match latest.iter_mut().find(|(_, x)| concept_text(&x["code"]) == key) {
            Some(slot) if slot.1["effectiveDateTime"].as_str().unwrap_or("") < when => *slot = (id, o),
            Some(_) => {}
            None => latest.push((id, o)),
        }
    }
    latest.sort_by(|a, b| concept_text(&a.1["code"]).cmp(&concept_text(&b.1["code"])));
    let (mut obs_l, mut obs_e) = (vec![], vec![]);
    for (id, o) in latest.into_iter().take(50) {
        obs_l.push(format!(
            "{}: {}（{}）",
            concept_text(&o["code"]),
            observation_value(o),
            date_part(&o["effectiveDateTime"])
        ));
        obs_e.extend(try_entry("Observation", id, o, OBSERVATION_ECS));
    }
    let none = |l: Vec<String>| if l.is_empty() { vec!["特記事項なし / none recorded".to_owned()] } else { l };
    let history = match r.history.map(str::trim).filter(|h| !h.is_empty()) {
        Some(h) => vec![h.to_owned()],
        None => none(problems_l.clone()),
    };
    let dept = department.map(|d| format!("（{d}）")).unwrap_or_default();
    let version = json!([{"url": "http://hl7.org/fhir/StructureDefinition/composition-clinicaldocument-versionNumber", "valueString": "1"}]);
    let doc_type = |code: &str, display: &str| json!({"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-typecodes", "code": code, "display": display}]});
    let category = |code: &str, display: &str| json!({"coding": [{"system": "http://jpfhir.jp/fhir/Common/CodeSystem/doc-subtypecodes", "code": code, "display": display}]});
    let identifier = json!({"system": RESOURCE_ID_SYSTEM, "value": format!("{inst_code}^{year}^{}", r.serial)});
    let mut all = Vec::new();
    let composition = match (&r.kind, admission) {
        (Kind::Discharge { plan, .. }, Some((enc, start, end, reason))) => {
            if problems_e.is_empty() {
                return Err(vec![issue(format!(
                    "a discharge summary needs at least one diagnosis that conforms to JP_Condition_eCS (with a MEDIS disease number); {}",
                    if problems_l.is_empty() { "the chart has no active problem".to_owned() } else {
                        format!("none of the {} active problem(s) does (see text_only reasons: {})", problems_l.len(),
                            text_only.iter().filter(|t| t["resource"].as_str().is_some_and(|x| x.starts_with("Condition/")))
                                .filter_map(|t| t["reason"].as_str()).take(2).collect::<Vec<_>>().join(" | "))
                    }
                ))]);
            }
            // The hospital course, as the clinician wrote it at discharge.
            let course = r.purpose.trim();
            let u_course = urn("h");
            let course_doc = json!({"resourceType": "DocumentReference", "meta": meta(DOCUMENT_ECS), "status": "current",
                "type": {"text": "入院中経過"}, "subject": {"reference": u_patient}, "date": datetime,
                "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "title": "入院中経過",
                    "data": base64::engine::general_purpose::STANDARD.encode(course.as_bytes())}}]});
            let reason_l = vec![reason.unwrap_or_else(|| "記載なし / not recorded".to_owned())];
            let stay = vec![format!("{start} 入院 〜 {end} 退院{dept}")];
            let mut subs = vec![
                section("322", "入院時詳細", &stay, std::slice::from_ref(&u_enc)),
                section("342", "入院時診断", &none(problems_l.clone()), &problems_e),
                section("352", "主訴", &reason_l, &[]),
                section("312", "入院理由", &reason_l, std::slice::from_ref(&u_enc)),
                section("362", "現病歴", &history, &[]),
            ];
            if !past_l.is_empty() {
                subs.push(section("372", "既往歴", &past_l, &past_e));
            }
            subs.push(section("510", "アレルギー・不耐性反応", &none(allergy_l), &allergy_e));
            subs.push(section("333", "入院中経過", &[course.to_owned()], std::slice::from_ref(&u_course)));
            subs.push(section("324", "退院時詳細", &stay, std::slice::from_ref(&u_enc)));
            subs.push(section("344", "退院時診断", &none(problems_l), &problems_e));
            subs.push(section("444", "退院時投薬指示", &none(med_l), &med_e));
            let plan = plan.map(str::trim).filter(|p| !p.is_empty()).unwrap_or("記載なし / not recorded");
            subs.push(section("424", "退院時方針指示", &[plan.to_owned()], &[]));
            if !obs_l.is_empty() {
                subs.push(section("623", "入院中検査結果", &obs_l, &obs_e));
            }
            let mut structure = section("300", "構造情報", &[], &[]);
            structure["section"] = json!(subs);
            all.push((u_enc.clone(), enc));
            all.push((u_course, course_doc));
            json!({
                "resourceType": "Composition", "meta": meta(COMPOSITION_EDISCHARGE), "extension": version,
                "identifier": identifier, "status": "final",
                "type": doc_type("18842-5", "退院時サマリー"), "category": category("DISCHARGE", "退院時文書"),
                "subject": {"reference": u_patient}, "encounter": {"reference": u_enc}, "date": datetime,
                "author": [{"reference": u_author}, {"reference": u_from}], "title": "退院時サマリー",
                "custodian": {"reference": u_from},
                "event": [{"period": {"start": start, "end": end}}],
                "section": [structure]
            })
        }
        _ => {
            let mut subs = vec![
                section("950", "紹介目的", &[r.purpose.trim().to_owned()], &[]),
                section("340", "傷病名・主訴", &none(problems_l), &problems_e),
                section("360", "現病歴", &history, &[]),
            ];
            if !past_l.is_empty() {
                subs.push(section("370", "既往歴", &past_l, &past_e));
            }
            subs.push(section("510", "アレルギー・不耐性反応", &none(allergy_l), &allergy_e));
            subs.push(section("430", "投薬指示", &none(med_l), &med_e));
            if !obs_l.is_empty() {
                subs.push(section("620", "検査結果", &obs_l, &obs_e));
            }
            let mut structure = section("300", "構造情報", &[], &[]);
            structure["section"] = json!(subs);
            all.push((u_to.clone(), to));
            json!({
                "resourceType": "Composition", "meta": meta(COMPOSITION_EREFERRAL), "extension": version,
                "identifier": identifier, "status": "final",
                "type": doc_type("57133-1", "診療情報提供書"), "category": category("OUTPATIENT", "外来文書"),
                "subject": {"reference": u_patient}, "date": datetime,
                "author": [{"reference": u_author}, {"reference": u_from}], "title": "診療情報提供書",
                "custodian": {"reference": u_from},
                "event": [{"code": [{"text": "診療情報提供書発行"}], "period": {"start": date}}],
                "section": [
                    section("920", "紹介元情報", &[format!("{inst_name}（{inst_code}） {display}{dept}")], &[u_from.clone(), u_author.clone()]),
                    section("910", "紹介先情報", &[format!("{}（{to_code}） 御中", r.recipient.1)], std::slice::from_ref(&u_to)),
                    structure,
                ]
            })
        }
    };
    let mut head = vec![(u_comp, composition), (u_patient, patient), (u_author, author), (u_from, from)];
    head.extend(all);
    head.extend(entries);
    let all = head;
    let bundle = json!({
        "resourceType": "Bundle",
        "meta": {"lastUpdated": instant, "profile": [bundle_profile]},
        "identifier": {"system": BUNDLE_ID_SYSTEM, "value": format!("{inst_code}^{year}^{}", r.serial)},
        "type": "document",
        "timestamp": instant,
        "entry": all.into_iter().map(|(u, v)| json!({"fullUrl": u, "resource": v})).collect::<Vec<_>>(),
    });
    let warnings = validate_document(reg, &bundle, "the composed document")?;
    Ok(Composed { bundle, structured, text_only, warnings })
}

/// The items `JP_Bundle_CLINS` carries, one kind per bundle: 傷病名
/// (Condition), アレルギー・薬剤禁忌 (AllergyIntolerance), 検査・感染症
/// (laboratory Observation). 処方 (MedicationRequest) is in the profile's
/// slices, but its own rule `bundle-meta-tag-resourceType-valid` accepts
/// only these three in JP-CLINS 1.5.2.
pub const CLINS_ITEMS: [&str; 3] = ["AllergyIntolerance", "Condition", "Observation"];

/// What a `JP_Bundle_CLINS` is built from.
pub struct Items<'a> {
    /// The loaded packages.
    pub registry: &'a Registry,
    /// This institution's 10-digit code.
    pub institution: &'a str,
    /// Local time zone, minutes east of UTC.
    pub utc_offset_minutes: i64,
    /// Which item (one of [`CLINS_ITEMS`]).
    pub item: &'a str,
    /// The patient's id and stored body.
    pub patient: (&'a str, &'a Value),
    /// The chart: (type, id, body) of the patient's resources.
    pub chart: &'a [(String, String, Value)],
    /// When.
    pub now: Timestamp,
    /// A unique id for the bundle (a UUID).
    pub serial: &'a str,
}

/// Builds the patient's `JP_Bundle_CLINS` of one item and validates it.
/// Every resource of the item must conform (a bundle for the national
/// service that left one out would say the patient has less than the chart
/// holds): the issues name each one that does not, and why.
pub fn items_bundle(r: &Items<'_>) -> Result<(Value, Vec<String>), Vec<Issue>> {
    let reg = r.registry;
    if reg.profile(BUNDLE_CLINS).is_none() {
        return Err(vec![issue("the JP-CLINS package is not loaded (mamori packages add, or [fhir] packages)")]);
    }
    if !is_institution_code(r.institution) {
        return Err(vec![issue(
            "[institution] id (the 10-digit medical institution code) is not set; every item carries it",
        )]);
    }
    let (_, _, instant) = local(r.now, r.utc_offset_minutes);
    let year = &instant[..4];
    let patient_ref = format!("Patient/{}", r.patient.0);
    let urn = || format!("urn:uuid:{}", mamori_store::accounts::new_id().unwrap_or_default());
    let u_patient = urn();
    let patient = patient_ecs(reg, &patient_ref, r.patient.1, &instant)?;
    let (profile, lab_only) = match r.item {
        "Condition" => (CONDITION_ECS, false),
        "AllergyIntolerance" => (ALLERGY_ECS, false),
        "Observation" => (LABRESULT_ECS, true),
        other => {
            return Err(vec![issue(format!(
                "'{other}' is not an item of JP_Bundle_CLINS: {} (JP-CLINS 1.5.2 accepts no MedicationRequest bundle)",
                CLINS_ITEMS.join(", ")
            ))])
        }
    };
    let encounter_of = |reference: &str| {
        let id = reference.strip_prefix("Encounter/")?;
        r.chart.iter().find(|(t, i, _)| t == "Encounter" && i == id).map(|(_, _, b)| b)
    };
    let mut entries = vec![json!({"fullUrl": u_patient, "resource": patient})];
    let mut refused = Vec::new();
    for (rt, id, body) in r.chart.iter().filter(|(t, _, _)| t == r.item) {
        let status = body["verificationStatus"]["coding"][0]["code"].as_str().or(body["status"].as_str());
        if status == Some("entered-in-error") {
            continue;
        }
        if lab_only
            && !body["category"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["coding"].as_array().into_iter().flatten().any(|x| x["code"] == "laboratory"))
        {
            continue;
        }
        let name = format!("{rt}/{id}");
        let mut why = Vec::new();
        let mut v = body.clone();
        let Some(o) = v.as_object_mut() else { continue };
        restamp(o, profile, &instant);
        let mut ids = o.get("identifier").and_then(Value::as_array).cloned().unwrap_or_default();
        ids.push(json!({"system": RESOURCE_ID_SYSTEM, "value": format!("{}^{year}^{id}", r.institution)}));
        o.insert("identifier".into(), json!(ids));
        let mut ext = o.get("extension").and_then(Value::as_array).cloned().unwrap_or_default();
        ext.retain(|x| x["url"] != INSTITUTION_EXT);
        ext.push(
            json!({"url": INSTITUTION_EXT, "valueIdentifier": {"system": INSTITUTION_SYSTEM, "value": r.institution}}),
        );
        // The rules JP-CLINS writes as FHIRPath invariants, checked here.
        if rt != "AllergyIntolerance" {
            if !ext.iter().any(|x| x["url"] == DEPARTMENT_EXT) {
                why.push(format!(
                    "no department ({DEPARTMENT_EXT}; JP-CLINS rule {}-needs-extension-of-Department)",
                    rt.to_lowercase()
                ));
            }
            // The Encounter it was recorded in, contained, as JP_Encounter.
            match o.get("encounter").and_then(|e| e["reference"].as_str()).and_then(encounter_of) {
                Some(e) => {
                    let mut c = json!({"resourceType": "Encounter", "id": "encounter",
                        "meta": {"profile": [JP_ENCOUNTER]}, "status": e["status"], "class": e["class"]});
                    if e["period"].is_object() {
                        c["period"] = e["period"].clone();
                    }
                    o.insert("contained".into(), json!([c]));
                    o.insert("encounter".into(), json!({"reference": "#encounter"}));
                }
                None => why.push(format!(
                    "no Encounter of this patient's chart recorded with it (JP-CLINS rule {}-needs-contained-of-Encounter)",
                    rt.to_lowercase()
                )),
            }
        }
        if rt == "Condition" && !o.contains_key("onsetDateTime") {
            why.push("no onsetDateTime (JP-CLINS rule condition-needs-onsetDateTime)".into());
        }
        o.insert("extension".into(), json!(ext));
        localize(&mut v, &patient_ref, &u_patient);
        for f in errors_of(&reg.validate(&v, profile).findings).into_iter().take(5) {
            why.push(format!("{}: {}", f.path, f.message));
        }
        if why.is_empty() {
            entries.push(json!({"fullUrl": urn(), "resource": v}));
        } else {
            refused.push(Issue {
                path: name.clone(),
                message: format!("{name} cannot be sent as {profile}: {}", why.join("; ")),
            });
        }
    }
    if !refused.is_empty() {
        return Err(refused);
    }
    if entries.len() < 2 {
        return Err(vec![issue(format!(
            "{patient_ref} has no {} to send (a JP_Bundle_CLINS carries at least one)",
            r.item
        ))]);
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "meta": {"lastUpdated": instant, "profile": [BUNDLE_CLINS],
                 "tag": [{"system": BUNDLE_TYPE_SYSTEM, "code": r.item}]},
        "identifier": {"system": BUNDLE_ID_SYSTEM, "value": format!("{}^{year}^{}", r.institution, r.serial)},
        "type": "collection",
        "timestamp": instant,
        "entry": entries,
    });
    let warnings = validate_document(reg, &bundle, "the bundle")?;
    Ok((bundle, warnings))
}

fn is_institution_code(c: &str) -> bool {
    let b = c.as_bytes();
    b.len() == 10 && b.iter().all(u8::is_ascii_digit) && b[0] <= b'4' && (b'1'..=b'3').contains(&b[2])
}

/// Validates a document Bundle and each entry against the profiles they
/// claim: the warnings as text, or each error as an issue saying that
/// `what` does not conform.
pub fn validate_document(reg: &Registry, bundle: &Value, what: &str) -> Result<Vec<String>, Vec<Issue>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut check = |v: &Value, prefix: &str| {
        for url in v.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
        {
            for mut f in reg.validate_in(v, url, Some(bundle)).findings {
                if !prefix.is_empty() {
                    f.path = format!("{prefix}.{}", f.path.split_once('.').map_or("", |(_, rest)| rest))
                        .trim_end_matches('.')
                        .to_owned();
                }
                match f.severity {
                    Severity::Error => errors.push(f),
                    Severity::Warning => warnings.push(format!("{}: {}", f.path, f.message)),
                    Severity::Information => {}
                }
            }
        }
    };
    check(bundle, "");
    for (i, e) in bundle["entry"].as_array().into_iter().flatten().enumerate() {
        check(&e["resource"], &format!("Bundle.entry[{i}].resource"));
    }
    warnings.sort();
    warnings.dedup();
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|f| Issue { path: f.path, message: format!("{what} does not conform: {}", f.message) })
            .collect());
    }
    Ok(warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrative_text_keeps_words_and_drops_markup() {
        let d = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>高血圧症 &amp; 糖尿病</p><p>a &lt;b&gt; c<br/>次行</p>\
                 <script>alert(1)</script><img src=x onerror=alert(2)/></div>";
        assert_eq!(narrative_text(d), "高血圧症 & 糖尿病\na <b> c\n次行\nalert(1)");
    }

    #[test]
    fn insurance_member_ids_follow_the_jp_clins_form() {
        for ok in ["00012345:あいう:387476:01", "06139990:デモ1:100053:", "00012345::1:01"] {
            assert!(insurance_value_ok(ok), "{ok}");
        }
        for bad in [
            "0001234:a:1:01",
            "00012345:a:1:1",
            "00012345:a b:1:01",
            "00012345:a:1",
            "00012345:a:1:01:x",
            "0001234x:a:1:01",
            "00012345:a:1\u{3000}:01",
        ] {
            assert!(!insurance_value_ok(bad), "{bad}");
        }
    }

    #[test]
    fn local_time_carries_the_offset() {
        // 2026-12-04T15:30:00Z is 2026-12-05 00:30 in Japan.
        let t = Timestamp::from_secs(1_796_398_200);
        let (d, dt, i) = local(t, 540);
        assert_eq!(d, "2026-12-05");
        assert_eq!(dt, "2026-12-05T00:30:00+09:00");
        assert_eq!(i, "2026-12-05T00:30:00.000+09:00");
        let (_, dt, _) = local(t, -300);
        assert_eq!(dt, "2026-12-04T10:30:00-05:00");
    }
}
