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
    Ok(())
}
