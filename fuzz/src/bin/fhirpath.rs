//! FHIRPath invariants: the first line is an expression (a profile's
//! `constraint.expression`, from a package), the rest a resource (from a
//! partner or a client); parsed, then evaluated.
use mamori_core::fhir::fhirpath::{holds, parse};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        let (expr, json) = s.split_once('\n').unwrap_or((s, "{}"));
        let Ok(e) = parse(expr) else { return };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else { return };
        std::hint::black_box(holds(&e, &v).is_ok());
    });
}
