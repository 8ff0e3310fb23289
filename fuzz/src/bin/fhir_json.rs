//! FHIR JSON: the strict reader (duplicate keys, exact numbers, string
//! bounds), then resource validation and search indexing.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Ok(v) = mamori_core::fhir::json::parse_strict(data, 1 << 20) {
            if let Ok(t) = mamori_core::fhir::validate::validate_resource(&v) {
                std::hint::black_box(mamori_core::fhir::search::index_entries(t, &v));
            }
        }
    });
}
