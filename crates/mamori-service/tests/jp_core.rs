//! The profile validator (`mamori_core::fhir::profile`) against the real
//! JP Core and JP-CLINS packages, read as the server reads them (from
//! `../shared/fhir-jp/`, or `MAMORI_FHIR_JP`; never copied into the
//! repository).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use mamori_core::fhir::profile::{Registry, Severity};
use mamori_service::conformance::read_package_path;
use serde_json::Value;

fn fhir_jp() -> PathBuf {
    mamori_service::conformance::jp_definitions_dir()
        .expect("the JP FHIR definitions: set MAMORI_FHIR_JP to the folder holding jp-core/ and jp-clins/")
}

fn load(reg: &mut Registry, dir: &str) {
    let (info, resources) = read_package_path(&fhir_jp().join(dir)).unwrap();
    reg.add(info, resources).unwrap();
}

fn example(name: &str) -> Value {
    let p = fhir_jp().join("jp-core/examples").join(name);
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn errors(reg: &Registry, v: &Value, profile: &str) -> Vec<String> {
    reg.validate(v, profile)
        .findings
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("{}: {}", f.path, f.message))
        .collect()
}

const CORE: &str = "http://jpfhir.jp/fhir/core/StructureDefinition/";

#[test]
fn every_jp_core_example_validates_against_its_profiles() {
    let mut reg = Registry::new();
    load(&mut reg, "jp-core");
    let mut checked = 0;
    for e in std::fs::read_dir(fhir_jp().join("jp-core/examples")).unwrap() {
        let p = e.unwrap().path();
        let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        for prof in v.pointer("/meta/profile").and_then(Value::as_array).into_iter().flatten() {
            let prof = prof.as_str().unwrap();
            if reg.profile(prof).is_none() {
                continue;
            }
            let errs = errors(&reg, &v, prof);
            assert!(errs.is_empty(), "{} against {prof}: {errs:#?}", p.display());
            checked += 1;
        }
    }
    assert!(checked >= 40, "only {checked} examples named a loaded profile");
}

#[test]
fn known_bad_variants_are_named_precisely() {
    let mut reg = Registry::new();
    load(&mut reg, "jp-core");
    let patient = format!("{CORE}JP_Patient");

    // JP_Patient requires an identifier (the institution's patient id).
    let mut p = example("Patient-jp-patient-example-1.json");
    p.as_object_mut().unwrap().remove("identifier");
    let e = errors(&reg, &p, &patient);
    assert_eq!(e, vec!["Patient.identifier: requires at least 1 (cardinality 1..*), found 0".to_owned()]);

    // Kana and kanji are told apart by the representation code: IDE or SYL.
    let mut p = example("Patient-jp-patient-example-1.json");
    p["name"][1]["extension"][0]["valueCode"] = "KANA".into();
    let e = errors(&reg, &p, &patient);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("Patient.name[1].extension[0].valueCode: KANA is not in the required ValueSet"), "{e:?}");

    // A JP_MedicationRequest names its Rp number.
    let rx = format!("{CORE}JP_MedicationRequest");
    let mut m = example("MedicationRequest-jp-medicationrequest-example-1.json");
    assert!(errors(&reg, &m, &rx).is_empty());
    let ids = m["identifier"].as_array_mut().unwrap();
    ids.retain(|i| i["system"] != "urn:oid:1.2.392.100495.20.3.81");
    let e = errors(&reg, &m, &rx);
    assert!(
        e.iter().any(|e| e == "MedicationRequest.identifier:rpNumber: requires at least 1 (cardinality 1..1), found 0"),
        "{e:?}"
    );

    // A vital sign must carry the vital-signs category; a lab result is not one.
    let vs = format!("{CORE}JP_Observation_VitalSigns");
    let mut o = example("Observation-jp-observation-vitalsigns-example-1.json");
    assert!(errors(&reg, &o, &vs).is_empty());
    o["category"] = serde_json::json!([{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"laboratory"}]}]);
    let e = errors(&reg, &o, &vs);
    assert!(e.iter().any(|e| e.contains("category") && e.contains("found 0")), "{e:?}");

    // A reference to the wrong kind of resource.
    let mut p = example("Patient-jp-patient-example-1.json");
    p["managingOrganization"] = serde_json::json!({"reference": "Practitioner/x"});
    let e = errors(&reg, &p, &patient);
    assert!(e.iter().any(|e| e.starts_with("Patient.managingOrganization: may refer to Organization")), "{e:?}");

    // Validating against a profile of another type, or one not loaded.
    assert!(errors(&reg, &p, &rx)[0].contains("constrains MedicationRequest, not Patient"));
    assert!(errors(&reg, &p, "http://example.org/nope")[0].contains("is not loaded"));
}

#[test]
fn jp_clins_loads_beside_jp_core_and_names_what_it_cannot_check() {
    let mut reg = Registry::new();
    load(&mut reg, "jp-core");
    load(&mut reg, "jp-clins");
    assert_eq!(reg.packages().len(), 2);
    // JP-CLINS carries its own copy of a JP Core profile: the first loaded is kept.
    assert!(reg.packages()[1].skipped.iter().any(|s| s == "StructureDefinition/JP-RelatedPerson"));
    // A JP Core patient is not yet a JP-CLINS patient: the eCS profile asks
    // more, some of it as FHIRPath invariants, which are evaluated.
    let mut p = example("Patient-jp-patient-example-1.json");
    let r = reg.validate(&p, "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS");
    assert!(
        r.findings.iter().any(|f| f.severity == Severity::Error
            && f.code == "invariant"
            && f.message.starts_with("invariant 'valid-system-insurance-patientIdentifier' fails")),
        "{:#?}",
        r.findings
    );
    // With the insurance member id in its form, those invariants hold; a
    // full-width space in the kanji name breaks another.
    p["identifier"].as_array_mut().unwrap().push(serde_json::json!(
        {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "00012345:あいう:387476:01"}));
    let inv = |p: &serde_json::Value| -> Vec<String> {
        reg.validate(p, "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS")
            .findings
            .into_iter()
            .filter(|f| f.code == "invariant")
            .map(|f| f.message)
            .collect()
    };
    assert_eq!(inv(&p), Vec::<String>::new());
    let ide = p["name"].as_array().unwrap().iter().position(|n| n.to_string().contains("\"IDE\"")).unwrap();
    p["name"][ide]["text"] = serde_json::json!("山田　太郎");
    assert!(inv(&p).iter().any(|m| m.contains("kanjiName-kanaName-donot-contain-ZenkakuKuuhaku")), "{:?}", inv(&p));
    let mut bad = p.clone();
    bad["name"][ide]["text"] = serde_json::json!("山田 太郎");
    let last = bad["identifier"].as_array().unwrap().len() - 1;
    bad["identifier"][last]["value"] = serde_json::json!("12345:a:b:1");
    assert!(inv(&bad).iter().any(|m| m.contains("valid-value-insurance-patientIdentifier")), "{:?}", inv(&bad));
    // Composition is not in the built-in summary table; JP-CLINS's
    // snapshots tell its summary elements (facts of the base definition).
    assert!(mamori_core::fhir::summary::supported("Composition"));
    let mut c = serde_json::json!({"resourceType": "Composition", "id": "c", "status": "final", "type": {"text": "t"},
        "date": "2026-12-04", "author": [{"display": "a"}], "title": "t",
        "section": [{"title": "s", "text": {"status": "generated", "div": "<div>x</div>"}}]});
    assert!(mamori_core::fhir::summary::summarize(&mut c));
    assert!(c.get("section").is_none() && c["title"] == "t" && c["status"] == "final", "{c}");
    // Loading the same package twice is refused.
    let (info, rs) = read_package_path(&fhir_jp().join("jp-core")).unwrap();
    assert!(reg.add(info, rs).unwrap_err().to_string().contains("already loaded"));
}

/// JP Core's eight SearchParameters are all within what the search
/// engine evaluates, and index the JP Core examples; the three on
/// Organization select `value.as(code)` where the extension holds a
/// Coding, so in JP Core 1.1.2 they index nothing (1.2.0 corrects them to
/// `ofType(Coding)` / `ofType(Identifier)`): evaluated as written, never
/// guessed.
#[test]
fn jp_core_search_parameters_index_the_examples() {
    use mamori_core::fhir::search::{index_entries_in, IndexValue, SearchParams};
    use mamori_core::ids::ResourceType;
    let mut reg = Registry::new();
    load(&mut reg, "jp-core");
    let (sp, skipped) = SearchParams::from_definitions(reg.all_of("SearchParameter").map(|v| &**v));
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut names: Vec<String> = sp.package().iter().map(|p| format!("{}.{}", p.rtype.as_str(), p.def.name)).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Coverage.jp-insured-personnumber",
            "Coverage.jp-insured-personsubnumber",
            "Coverage.jp-insured-personsymbol",
            "MedicationRequest.jp-medication-start",
            "Organization.jp-insurance-organizationcategory",
            "Organization.jp-insurance-organizationno",
            "Organization.jp-prefectureno",
            "Patient.jp-kana-sort",
        ]
    );
    let values = |file: &str, param: &str| -> Vec<IndexValue> {
        let v = example(file);
        let rt = ResourceType::parse(v["resourceType"].as_str().unwrap()).unwrap();
        index_entries_in(&sp, rt, &v).into_iter().filter(|e| e.param == param).map(|e| e.value).collect()
    };
    let text = |s: &str| IndexValue::String { norm: mamori_core::fhir::search::normalize(s), exact: s.to_owned() };
    assert_eq!(values("Patient-jp-patient-example-1.json", "jp-kana-sort"), vec![text("ヤマダ タロウ")]);
    assert_eq!(values("Coverage-jp-coverage-example-1.json", "jp-insured-personnumber"), vec![text("５６７８")]);
    assert_eq!(values("Coverage-jp-coverage-example-1.json", "jp-insured-personsymbol"), vec![text("１２－３４")]);
    let start = values("MedicationRequest-jp-medicationrequest-example-1.json", "jp-medication-start");
    assert!(matches!(start.as_slice(), [IndexValue::Date { .. }]), "{start:?}");
    for p in ["jp-prefectureno", "jp-insurance-organizationcategory", "jp-insurance-organizationno"] {
        assert_eq!(values("Organization-jp-organization-example-hospital.json", p), vec![], "{p}");
    }
}

/// ValueSets that select codes by a filter on the hierarchy of a loaded
/// CodeSystem (JP-CLINS's laboratory analytes over its JLAC10 codes, its
/// document sections) are expanded and enforced: a JLAC10 code under
/// the wrong analyte is named. Those over a CodeSystem no package holds
/// (JLAC11) stay a warning that the codes were not checked.
#[test]
fn filtered_value_sets_over_loaded_code_systems_are_checked() {
    let mut reg = Registry::new();
    load(&mut reg, "jp-core");
    load(&mut reg, "jp-clins");
    const LAB: &str = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Observation_LabResult_eCS";
    const JLAC10: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC10/JP_CLINS_ObsLabResult_CoreLabo_CS";
    const JLAC11: &str = "http://jpfhir.jp/fhir/clins/CodeSystem/JLAC11/JP_CLINS_ObsLabResult_CoreLabo_CS";
    let obs = |system: &str, code: &str| {
        serde_json::json!({"resourceType": "Observation", "meta": {"profile": [LAB]}, "status": "final",
            "code": {"coding": [{"system": system, "code": code, "display": "ALB"}]}})
    };
    let findings = |v: &Value, severity: Severity| -> Vec<String> {
        reg.validate(v, LAB)
            .findings
            .into_iter()
            .filter(|f| f.severity == severity && f.message.contains("CoreLabo_alb_VS"))
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect()
    };
    // An albumin code under the ALB slice: in its ValueSet.
    assert_eq!(findings(&obs(JLAC10, "3A015000002329101"), Severity::Error), Vec::<String>::new());
    // An ALP code (and the analyte itself, which descendent-of leaves out): not.
    for code in ["3B070000002327101", "ALB"] {
        let e = findings(&obs(JLAC10, code), Severity::Error);
        assert!(e.iter().any(|m| m.contains(&format!("{code} is not in the required ValueSet"))), "{code}: {e:?}");
    }
    // JLAC11's CodeSystem is not in the package: a warning, not a verdict.
    let o = obs(JLAC11, "anything");
    assert_eq!(findings(&o, Severity::Error), Vec::<String>::new());
    assert!(findings(&o, Severity::Warning).iter().any(|m| m.contains("not available")), "{:?}", reg.validate(&o, LAB));
}
