//! `validate`: profile validation against JP Core, per resource, with the
//! core structural validation every write already makes as the baseline
//! (the same resources, in the same run).
//!
//!   cargo run --release -p mamori-bench -- validate [--seconds 3]
//!
//! The packages are read from MAMORI_FHIR_JP or ../shared/fhir-jp.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mamori_core::fhir::profile::Registry;
use serde_json::Value;

use crate::Args;

fn fhir_jp() -> Result<PathBuf> {
    mamori_service::conformance::jp_definitions_dir()
        .context("the JP FHIR definitions: set MAMORI_FHIR_JP to the folder holding jp-core/")
}

/// Calls `f` as often as fits in `secs`; returns microseconds per call.
fn per_call(secs: u64, mut f: impl FnMut() -> bool) -> Result<f64> {
    let end = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while Instant::now() < end {
        for _ in 0..16 {
            if !f() {
                bail!("a validation failed");
            }
            n += 1;
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / n as f64)
}

pub(crate) fn run(a: &Args) -> Result<()> {
    let jp = fhir_jp()?;
    let t = Instant::now();
    let mut reg = Registry::new();
    for dir in ["jp-core", "jp-clins"] {
        let (info, resources) = mamori_service::conformance::read_package_path(&jp.join(dir))?;
        reg.add(info, resources)?;
    }
    println!("loading JP Core 1.1.2 and JP-CLINS (folders): {:.0} ms", t.elapsed().as_secs_f64() * 1000.0);
    let secs = a.seconds.clamp(1, 60);
    println!("{:<48} {:>12} {:>12} {:>8}", "resource / profile", "core µs", "profile µs", "ratio");
    println!("(the last two rows: core validation | compose and validate; S/MIME signature | Bundle signature)");
    for (file, profile) in [
        ("Patient-jp-patient-example-1.json", "JP_Patient"),
        ("MedicationRequest-jp-medicationrequest-example-1.json", "JP_MedicationRequest"),
        ("Observation-jp-observation-vitalsigns-example-1.json", "JP_Observation_VitalSigns"),
        ("Observation-jp-observation-labresult-example-1.json", "JP_Observation_LabResult"),
    ] {
        let v: Value = serde_json::from_slice(&std::fs::read(jp.join("jp-core/examples").join(file))?)?;
        let url = format!("http://jpfhir.jp/fhir/core/StructureDefinition/{profile}");
        if reg.validate(&v, &url).has_errors() {
            bail!("{file} does not validate against {profile}");
        }
        let core = per_call(secs, || mamori_core::fhir::validate::validate_resource(&v).is_ok())?;
        let prof = per_call(secs, || !reg.validate(&v, &url).has_errors())?;
        println!("{:<48} {:>12.1} {:>12.1} {:>7.1}x", profile, core, prof, prof / core);
    }
    // A JP-CLINS patient: four FHIRPath invariants evaluated besides the
    // structure.
    let mut p: Value =
        serde_json::from_slice(&std::fs::read(jp.join("jp-core/examples/Patient-jp-patient-example-1.json"))?)?;
    p["identifier"].as_array_mut().context("identifiers")?.push(serde_json::json!(
        {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "00012345:あいう:387476:01"}));
    p["address"] = serde_json::json!([{"text": "東京都港区1-1"}]);
    p["meta"] = serde_json::json!({"lastUpdated": "2026-12-04T10:00:00+09:00",
                                   "profile": ["http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS"]});
    let ecs = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS";
    if reg.validate(&p, ecs).has_errors() {
        bail!("the eCS patient does not validate: {:?}", reg.validate(&p, ecs).findings);
    }
    let core = per_call(secs, || mamori_core::fhir::validate::validate_resource(&p).is_ok())?;
    let prof = per_call(secs, || !reg.validate(&p, ecs).has_errors())?;
    println!("{:<48} {:>12.1} {:>12.1} {:>7.1}x", "JP_Patient_eCS (4 invariants)", core, prof, prof / core);
    letter(&reg, &p, secs)
}

/// A JP-CLINS referral letter: composing and validating it against the
/// core validation of the same Bundle; its Bundle signature against the
/// S/MIME signature of the same bytes.
fn letter(reg: &Registry, patient: &Value, secs: u64) -> Result<()> {
    use mamori_service::exchange::clins;
    let subject = serde_json::json!({"reference": "Patient/p1"});
    let mut chart = Vec::new();
    for i in 0..5 {
        chart.push(("Condition".to_owned(), format!("c{i}"), serde_json::json!({"resourceType": "Condition",
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"text": format!("病名{i}")}, "subject": subject, "onsetDateTime": "2020-01-01"})));
        chart.push(("Observation".to_owned(), format!("o{i}"), serde_json::json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": format!("1000{i}-0"), "display": format!("検査{i}")}], "text": format!("検査{i}")},
            "subject": subject, "effectiveDateTime": "2026-11-30T09:00:00+09:00", "valueQuantity": {"value": 1.5, "unit": "mg/dL"}})));
    }
    let compose = || {
        clins::compose(&clins::Letter {
            registry: reg,
            institution: ("1319900001", "病院"),
            utc_offset_minutes: 540,
            recipient: (Some("1319900002"), "診療所"),
            author: ("dr", "医師 太郎", Some("内科")),
            patient: ("p1", patient),
            chart: &chart,
            purpose: "紹介",
            history: None,
            now: mamori_core::time::Timestamp::from_secs(1_796_398_200),
            serial: "0b6b3ab8-3d6f-4c51-9a43-6f2f6e0e0b11",
            kind: clins::Kind::Referral,
        })
    };
    let bundle = compose().map_err(|e| anyhow::anyhow!("{e:?}"))?.bundle;
    let core = per_call(secs, || mamori_core::fhir::validate::validate_resource(&bundle).is_ok())?;
    let built = per_call(secs, || compose().is_ok())?;
    println!(
        "{:<48} {:>12.1} {:>12.1} {:>7.1}x",
        format!("eReferral, {} entries: compose+validate", bundle["entry"].as_array().map_or(0, Vec::len)),
        core,
        built,
        built / core
    );
    let (cert, key) = mamori_service::keys::institution_identity("bench", 30)?;
    let id = mamori_exchange::cms::Identity::from_pem(cert.as_bytes(), key.as_bytes())?;
    let bytes = serde_json::to_vec(&bundle)?;
    let smime =
        per_call(secs, || mamori_exchange::as2::sign_payload(&id, "application/fhir+json", "d.json", &bytes).is_ok())?;
    let jws = per_call(secs, || {
        let mut b = bundle.clone();
        mamori_exchange::fhirsig::sign(&mut b, &id, serde_json::json!({"display": "x"}), "2026-12-04T00:00:00+09:00")
            .is_ok()
    })?;
    println!("{:<48} {:>12.1} {:>12.1} {:>7.1}x", "Bundle signature (S/MIME µs | JWS µs)", smime, jws, jws / smime);
    Ok(())
}
