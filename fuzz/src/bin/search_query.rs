//! FHIR search parameters: the first line names the resource type, the
//! rest is a query string (`name=x&birthdate=ge2020`), parsed leniently
//! and strictly.
use mamori_core::fhir::search::parse_query;
use mamori_core::ids::ResourceType;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else { return };
        let (t, q) = s.split_once('\n').unwrap_or(("Patient", s));
        let Ok(rt) = ResourceType::parse(t) else { return };
        let pairs: Vec<(String, String)> = q
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect();
        std::hint::black_box(parse_query(rt, &pairs, true).is_ok());
        std::hint::black_box(parse_query(rt, &pairs, false).is_ok());
    });
}
