//! Profile validation: a resource as a client sends it to `$validate` or a
//! write, walked against a small package that uses every feature of the
//! validator (slices by value, pattern, type and profile, fixed values,
//! required bindings, reference targets, an extension profile).
use std::sync::OnceLock;

use mamori_core::fhir::profile::{read_package, Registry};

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let files: [(&str, &[u8]); 5] = [
            ("package/package.json", br#"{"name":"fuzz","version":"1.0.0"}"#),
            ("package/sd-patient.json", include_bytes!("../../corpus/profile-package/sd-patient.json")),
            ("package/sd-ext.json", include_bytes!("../../corpus/profile-package/sd-ext.json")),
            ("package/sd-bundle.json", include_bytes!("../../corpus/profile-package/sd-bundle.json")),
            ("package/vs.json", include_bytes!("../../corpus/profile-package/vs.json")),
        ];
        // The package is a constant of this repository, not fuzz input:
        // if it does not load, the harness is broken and must stop loudly.
        let (info, resources) = read_package(files).expect("the fuzz package");
        let mut r = Registry::new();
        r.add(info, resources).expect("the fuzz package loads");
        r
    })
}

fn main() {
    let reg = registry();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(v) = mamori_core::fhir::json::parse_strict(data, 1 << 20) {
            for url in ["http://fuzz/SD/Patient", "http://fuzz/SD/Bundle"] {
                std::hint::black_box(reg.validate(&v, url));
            }
        }
    });
}
