//! Structural validation of FHIR R4 JSON resources.
//!
//! Checks what a store must not accept silently: a known `resourceType`, the
//! id grammar, required elements and element types of the types in
//! [`super::schema`], required code bindings, date formats, and well-formed
//! references everywhere. Errors name the element by path
//! (`Observation.code.coding[0].system`).

use serde_json::{Map, Value};

use super::schema::{self, Ty, E, T};
use crate::ids::{is_fhir_id, LocalRef, ResourceType};
use crate::time::{parse_date_time, Precision};

/// One problem found in a resource.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    /// FHIRPath-like location, e.g. `Patient.name[0].family`.
    pub path: String,
    /// What is wrong, for the client's OperationOutcome.
    pub message: String,
}

const MAX_ISSUES: usize = 20;
const MAX_DEPTH: usize = 32;

struct Ctx {
    issues: Vec<Issue>,
}

impl Ctx {
    fn err(&mut self, path: &str, msg: impl Into<String>) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue { path: path.to_owned(), message: msg.into() });
        }
    }
}

/// Validates a resource; returns its type, or every issue found (up to 20).
pub fn validate_resource(v: &Value) -> Result<ResourceType, Vec<Issue>> {
    let mut cx = Ctx { issues: Vec::new() };
    let rt = resource(&mut cx, v, "", 0, true);
    match rt {
        Some(rt) if cx.issues.is_empty() => Ok(rt),
        _ => {
            if cx.issues.is_empty() {
                cx.err("", "invalid resource");
            }
            Err(cx.issues)
        }
    }
}

fn resource(cx: &mut Ctx, v: &Value, prefix: &str, depth: usize, allow_contained: bool) -> Option<ResourceType> {
    let Some(obj) = v.as_object() else {
        cx.err(prefix, "a resource must be a JSON object");
        return None;
    };
    let Some(rt_s) = obj.get("resourceType").and_then(Value::as_str) else {
        cx.err(prefix, "missing resourceType");
        return None;
    };
    let Ok(rt) = ResourceType::parse(rt_s) else {
        cx.err(&join(prefix, "resourceType"), format!("unknown resource type '{}'", short(rt_s)));
        return None;
    };
    let base = if prefix.is_empty() { rt.as_str().to_owned() } else { prefix.to_owned() };
    let sch = schema::resource_schema(rt.as_str());
    for (k, val) in obj {
        let path = format!("{base}.{k}");
        match k.as_str() {
            "resourceType" => {}
            "id" => match val.as_str() {
                Some(s) if is_fhir_id(s) => {}
                _ => cx.err(&path, "id must match [A-Za-z0-9-.]{1,64}"),
            },
            "meta" => check_value(cx, val, schema::META, &path, depth + 1),
            "implicitRules" => check_value(cx, val, T::Uri, &path, depth + 1),
            "language" => check_value(cx, val, T::Code, &path, depth + 1),
            "text" => check_value(cx, val, schema::NARRATIVE, &path, depth + 1),
            "contained" => {
                if !allow_contained {
                    cx.err(&path, "contained resources cannot contain resources");
                    continue;
                }
                match val.as_array() {
                    Some(a) if !a.is_empty() => {
                        for (i, c) in a.iter().enumerate() {
                            let p = format!("{path}[{i}]");
                            resource(cx, c, &p, depth + 1, false);
                            if c.get("id").is_none() {
                                cx.err(&p, "a contained resource needs an id");
                            }
                        }
                    }
                    _ => cx.err(&path, "contained must be a non-empty array"),
                }
            }
            "extension" | "modifierExtension" => extensions(cx, val, &path, depth + 1),
            _ => match sch {
                None => generic(cx, val, &path, depth + 1),
                Some(elems) => {
                    if let Some(stripped) = k.strip_prefix('_') {
                        if find_elem(elems, stripped).is_some() {
                            primitive_ext(cx, val, &path, depth + 1);
                        } else {
                            cx.err(&path, "unknown element");
                        }
                        continue;
                    }
                    match find_elem(elems, k) {
                        Some((el, t)) => element(cx, el, t, val, &path, depth + 1),
                        None => cx.err(&path, format!("unknown element '{}' for {}", short(k), rt)),
                    }
                }
            },
        }
    }
    if let Some(elems) = sch {
        required(cx, elems, obj, &base);
    }
    Some(rt)
}

/// Finds the element for a JSON key, resolving choice types (`valueQuantity`).
fn find_elem<'a>(elems: &'a [E], key: &str) -> Option<(&'a E, T)> {
    for el in elems {
        match el.ty {
            Ty::One(t) if el.name == key => return Some((el, t)),
            Ty::Choice(alts) => {
                if let Some(suffix) = key.strip_prefix(el.name) {
                    if let Some((_, t)) = alts.iter().find(|(s, _)| *s == suffix) {
                        return Some((el, *t));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

fn required(cx: &mut Ctx, elems: &[E], obj: &Map<String, Value>, base: &str) {
    for el in elems {
        let present: Vec<&str> = match el.ty {
            Ty::One(_) => obj.contains_key(el.name).then_some(el.name).into_iter().collect(),
            Ty::Choice(alts) => obj
                .keys()
                .filter(|k| k.strip_prefix(el.name).is_some_and(|s| alts.iter().any(|(a, _)| *a == s)))
                .map(String::as_str)
                .collect(),
        };
        if let Ty::Choice(_) = el.ty {
            if present.len() > 1 {
                cx.err(&format!("{base}.{}[x]", el.name), "only one type of a choice element may be given");
            }
        }
        if el.min > 0 && present.is_empty() {
            let name = match el.ty {
                Ty::One(_) => el.name.to_owned(),
                Ty::Choice(_) => format!("{}[x]", el.name),
            };
            cx.err(&format!("{base}.{name}"), "required element is missing");
        }
    }
}

fn element(cx: &mut Ctx, el: &E, t: T, v: &Value, path: &str, depth: usize) {
    if el.many {
        match v.as_array() {
            Some(a) if a.is_empty() => cx.err(path, "arrays must not be empty"),
            Some(a) => {
                for (i, item) in a.iter().enumerate() {
                    check_value(cx, item, t, &format!("{path}[{i}]"), depth);
                }
            }
            None => cx.err(path, "must be an array"),
        }
    } else if v.is_array() {
        cx.err(path, "must be a single value, not an array");
    } else {
        check_value(cx, v, t, path, depth);
    }
}

fn check_value(cx: &mut Ctx, v: &Value, t: T, path: &str, depth: usize) {
    if depth > MAX_DEPTH {
        cx.err(path, "nested too deeply");
        return;
    }
    match t {
        T::Str | T::Markdown | T::Xhtml => match v.as_str() {
            Some("") => cx.err(path, "strings must not be empty"),
            Some(s) if s.trim().is_empty() && matches!(t, T::Str) => cx.err(path, "strings must not be blank"),
            Some(_) => {}
            None => cx.err(path, "must be a string"),
        },
        T::Code => match v.as_str() {
            Some(s) if is_code(s) => {}
            _ => cx.err(path, "must be a code (non-empty string without leading/trailing whitespace)"),
        },
        T::CodeIn(allowed) => match v.as_str() {
            Some(s) if allowed.contains(&s) => {}
            Some(s) => cx.err(path, format!("'{}' is not one of: {}", short(s), allowed.join(", "))),
            None => cx.err(path, "must be a code string"),
        },
        T::Uri => match v.as_str() {
            Some(s) if !s.is_empty() && !s.chars().any(char::is_whitespace) => {}
            _ => cx.err(path, "must be a URI without whitespace"),
        },
        T::Id => match v.as_str() {
            Some(s) if is_fhir_id(s) => {}
            _ => cx.err(path, "must be an id ([A-Za-z0-9-.]{1,64})"),
        },
        T::Bool => {
            if !v.is_boolean() {
                cx.err(path, "must be true or false");
            }
        }
        T::Int => match v.as_i64() {
            Some(i) if i32::try_from(i).is_ok() => {}
            _ => cx.err(path, "must be a 32-bit integer"),
        },
        T::PosInt => match v.as_i64() {
            Some(i) if i > 0 && i32::try_from(i).is_ok() => {}
            _ => cx.err(path, "must be a positive integer"),
        },
        T::UnsignedInt => match v.as_i64() {
            Some(i) if i >= 0 && i32::try_from(i).is_ok() => {}
            _ => cx.err(path, "must be a non-negative integer"),
        },
        T::Decimal => {
            if !v.is_number() {
                cx.err(path, "must be a number");
            }
        }
        T::Date => match v.as_str().and_then(parse_date_time) {
            Some(r) if matches!(r.precision, Precision::Year | Precision::Month | Precision::Day) => {}
            _ => cx.err(path, "must be a date (YYYY, YYYY-MM or YYYY-MM-DD)"),
        },
        T::DateTime => match v.as_str().and_then(parse_date_time) {
            Some(r) if r.precision != Precision::Second || r.has_tz => {}
            Some(_) => cx.err(path, "a dateTime with a time must have a time zone"),
            None => cx.err(path, "must be a dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"),
        },
        T::Instant => match v.as_str().and_then(parse_date_time) {
            Some(r) if r.precision == Precision::Second && r.has_tz => {}
            _ => cx.err(path, "must be an instant (YYYY-MM-DDThh:mm:ss(.sss)Z or with offset)"),
        },
        T::Time => match v.as_str() {
            Some(s) if is_time(s) => {}
            _ => cx.err(path, "must be a time (hh:mm:ss)"),
        },
        T::Base64 => match v.as_str() {
            Some(s) if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=\r\n ".contains(&b)) => {}
            _ => cx.err(path, "must be base64"),
        },
        T::Loose => generic(cx, v, path, depth),
        T::Complex(elems) => complex(cx, v, elems, path, depth),
    }
    if let (T::Complex(_), Some(r)) = (t, v.get("reference")) {
        // Reference-typed elements: the reference string itself.
        if let Some(s) = r.as_str() {
            if let Err(m) = check_reference(s) {
                cx.err(&format!("{path}.reference"), m);
            }
        }
    }
    if let (T::Complex(_), Some(obj)) = (t, v.as_object()) {
        if let (Some(s), Some(e)) = (obj.get("start").and_then(Value::as_str), obj.get("end").and_then(Value::as_str)) {
            if let (Some(s), Some(e)) = (parse_date_time(s), parse_date_time(e)) {
                if s.low > e.high {
                    cx.err(path, "period start is after its end");
                }
            }
        }
    }
}

fn complex(cx: &mut Ctx, v: &Value, elems: &[E], path: &str, depth: usize) {
    let Some(obj) = v.as_object() else {
        cx.err(path, "must be a JSON object");
        return;
    };
    if obj.is_empty() {
        cx.err(path, "objects must not be empty");
        return;
    }
    for (k, val) in obj {
        let p = format!("{path}.{k}");
        match k.as_str() {
            "id" => check_value(cx, val, T::Str, &p, depth + 1),
            "extension" | "modifierExtension" => extensions(cx, val, &p, depth + 1),
            _ => {
                if let Some(stripped) = k.strip_prefix('_') {
                    if find_elem(elems, stripped).is_some() {
                        primitive_ext(cx, val, &p, depth + 1);
                    } else {
                        cx.err(&p, "unknown element");
                    }
                    continue;
                }
                match find_elem(elems, k) {
                    Some((el, t)) => element(cx, el, t, val, &p, depth + 1),
                    None => cx.err(&p, format!("unknown element '{}'", short(k))),
                }
            }
        }
    }
    required(cx, elems, obj, path);
}

fn extensions(cx: &mut Ctx, v: &Value, path: &str, depth: usize) {
    let Some(a) = v.as_array().filter(|a| !a.is_empty()) else {
        cx.err(path, "must be a non-empty array of extensions");
        return;
    };
    for (i, ext) in a.iter().enumerate() {
        let p = format!("{path}[{i}]");
        match ext.get("url").and_then(Value::as_str) {
            Some(u) if !u.is_empty() && !u.chars().any(char::is_whitespace) => {}
            _ => cx.err(&format!("{p}.url"), "an extension needs a url"),
        }
        generic(cx, ext, &p, depth + 1);
    }
}

fn primitive_ext(cx: &mut Ctx, v: &Value, path: &str, depth: usize) {
    match v {
        Value::Object(_) => generic(cx, v, path, depth),
        Value::Array(a) => {
            for item in a {
                if !(item.is_null() || item.is_object()) {
                    cx.err(path, "primitive extensions must be objects or null");
                }
            }
        }
        _ => cx.err(path, "primitive extensions must be objects"),
    }
}

/// Untyped content: no nulls, no empty objects/arrays, and every
/// `reference` string well-formed.
fn generic(cx: &mut Ctx, v: &Value, path: &str, depth: usize) {
    if depth > MAX_DEPTH {
        cx.err(path, "nested too deeply");
        return;
    }
    match v {
        Value::Null => cx.err(path, "null is not allowed"),
        Value::Object(o) => {
            if o.is_empty() {
                cx.err(path, "objects must not be empty");
            }
            for (k, val) in o {
                let p = format!("{path}.{k}");
                if k == "reference" {
                    match val.as_str() {
                        Some(s) => {
                            if let Err(m) = check_reference(s) {
                                cx.err(&p, m);
                            }
                        }
                        // Elements named `reference` that are themselves
                        // References (Consent.provision.actor.reference).
                        None if val.is_object() => generic(cx, val, &p, depth + 1),
                        None => cx.err(&p, "a reference must be a string"),
                    }
                    continue;
                }
                if k == "resourceType" && depth > 1 {
                    // An inline resource (e.g. Bundle.entry.resource, Parameters).
                    continue;
                }
                generic(cx, val, &p, depth + 1);
            }
        }
        Value::Array(a) => {
            if a.is_empty() {
                cx.err(path, "arrays must not be empty");
            }
            for (i, item) in a.iter().enumerate() {
                generic(cx, item, &format!("{path}[{i}]"), depth + 1);
            }
        }
        Value::String(s) if s.is_empty() => cx.err(path, "strings must not be empty"),
        _ => {}
    }
}

/// Is this a reference mamori can honour? Relative `Type/id[/_history/v]`,
/// `urn:uuid:` (inside bundles), `#local` (contained), or an absolute URL.
pub fn check_reference(s: &str) -> Result<(), String> {
    if let Some(rest) = s.strip_prefix('#') {
        return if rest.is_empty() || is_fhir_id(rest) {
            Ok(())
        } else {
            Err(format!("'{}' is not a valid contained reference", short(s)))
        };
    }
    if let Some(u) = s.strip_prefix("urn:uuid:") {
        return if is_uuid(u) { Ok(()) } else { Err(format!("'{}' is not a valid urn:uuid", short(s))) };
    }
    if s.starts_with("urn:oid:") {
        return Ok(());
    }
    if s.starts_with("https://") || s.starts_with("http://") {
        return if s.chars().any(char::is_whitespace) {
            Err("a URL reference must not contain whitespace".into())
        } else {
            Ok(())
        };
    }
    LocalRef::parse(s).map(|_| ()).map_err(|e| e.to_string())
}

/// Is `s` a UUID in its canonical textual form (8-4-4-4-12 hex digits)?
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

fn is_code(s: &str) -> bool {
    !s.is_empty() && s.trim() == s && !s.contains("  ")
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 8
        && b.get(2) == Some(&b':')
        && b.get(5) == Some(&b':')
        && s.get(0..2).and_then(|h| h.parse::<u8>().ok()).is_some_and(|h| h < 24)
        && s.get(3..5).and_then(|m| m.parse::<u8>().ok()).is_some_and(|m| m < 60)
        && s.get(6..8).and_then(|m| m.parse::<u8>().ok()).is_some_and(|m| m < 61)
        && (b.len() == 8 || (b.get(8) == Some(&b'.') && b.len() > 9 && b.iter().skip(9).all(u8::is_ascii_digit)))
}

fn short(s: &str) -> String {
    s.chars().take(60).collect()
}

fn join(prefix: &str, k: &str) -> String {
    if prefix.is_empty() {
        k.to_owned()
    } else {
        format!("{prefix}.{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: Value) {
        if let Err(e) = validate_resource(&v) {
            panic!("expected valid, got {e:?}");
        }
    }
    fn bad(v: Value, path: &str) {
        match validate_resource(&v) {
            Ok(_) => panic!("expected invalid: {v}"),
            Err(issues) => {
                assert!(issues.iter().any(|i| i.path == path), "expected an issue at {path}, got {issues:?}")
            }
        }
    }

    #[test]
    fn valid_resources() {
        ok(
            json!({"resourceType":"Patient","name":[{"family":"山田","given":["太郎"]}],"gender":"male","birthDate":"1980-05-01"}),
        );
        ok(
            json!({"resourceType":"Observation","status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
            "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2026-11-26T09:00:00+09:00",
            "valueQuantity":{"value":72,"unit":"/min"}}),
        );
        ok(json!({"resourceType":"Basic","code":{"text":"x"},"anything":{"reference":"Patient/x"}}));
        ok(
            json!({"resourceType":"Patient","birthDate":"1980","_birthDate":{"extension":[{"url":"http://x","valueString":"approx"}]}}),
        );
        ok(
            json!({"resourceType":"Encounter","status":"in-progress","class":{"code":"EMER"},"subject":{"reference":"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}}),
        );
    }

    #[test]
    fn invalid_resources_name_the_element() {
        bad(json!({"resourceType":"Nope"}), "resourceType");
        bad(json!({"name":"x"}), "");
        bad(json!({"resourceType":"Patient","id":"a b"}), "Patient.id");
        bad(json!({"resourceType":"Patient","gender":"m"}), "Patient.gender");
        bad(json!({"resourceType":"Patient","birthDate":"1980-13-01"}), "Patient.birthDate");
        bad(json!({"resourceType":"Patient","name":{"family":"x"}}), "Patient.name");
        bad(json!({"resourceType":"Patient","name":[{"given":"x"}]}), "Patient.name[0].given");
        bad(json!({"resourceType":"Patient","nmae":[]}), "Patient.nmae");
        bad(json!({"resourceType":"Patient","active":"yes"}), "Patient.active");
        bad(json!({"resourceType":"Observation","code":{"text":"x"}}), "Observation.status");
        bad(json!({"resourceType":"Observation","status":"final"}), "Observation.code");
        bad(
            json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/"}}),
            "Observation.subject.reference",
        );
        bad(
            json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"72"}}),
            "Observation.valueQuantity.value",
        );
        bad(
            json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"a","valueBoolean":true}),
            "Observation.value[x]",
        );
        bad(
            json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"effectiveDateTime":"2026-11-26T09:00:00"}),
            "Observation.effectiveDateTime",
        );
        bad(
            json!({"resourceType":"MedicationRequest","status":"active","intent":"order","subject":{"reference":"Patient/1"}}),
            "MedicationRequest.medication[x]",
        );
        bad(json!({"resourceType":"Basic","code":{"text":"x"},"x":{"reference":"not a ref"}}), "Basic.x.reference");
        bad(json!({"resourceType":"Basic","code":null}), "Basic.code");
        bad(json!({"resourceType":"DocumentReference","status":"current"}), "DocumentReference.content");
        bad(
            json!({"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"period":{"start":"2026-02-01","end":"2026-01-01"}}),
            "Encounter.period",
        );
    }

    #[test]
    fn references() {
        assert!(check_reference("Patient/1").is_ok());
        assert!(check_reference("#c1").is_ok());
        assert!(check_reference("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a").is_ok());
        assert!(check_reference("urn:uuid:nope").is_err());
        assert!(check_reference("https://example.org/fhir/Patient/1").is_ok());
        assert!(check_reference("Patient").is_err());
        assert!(check_reference("Foo/1").is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        // serde_json refuses more than 128 levels at parse time; below that,
        // the validator stops at MAX_DEPTH.
        let deep = format!("{}\"x\"{}", "{\"a\":".repeat(100), "}".repeat(100));
        let r: Value = serde_json::from_str(&format!("{{\"resourceType\":\"Basic\",\"deep\":{deep}}}")).unwrap();
        let issues = validate_resource(&r).unwrap_err();
        assert!(issues.iter().any(|i| i.message.contains("nested too deeply")));
    }
}
