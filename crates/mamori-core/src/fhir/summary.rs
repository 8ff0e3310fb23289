//! `_summary=true` and `_summary=text` (FHIR R4 search 3.1.1.5.8): which
//! elements of a resource are its summary, after the base specification's
//! `isSummary` flags, and which are mandatory (for `text`). The table
//! (`summary_table.rs`) is generated from the base definitions; other
//! types are learned from the snapshots of loaded packages ([`learn`]). A
//! type known neither way is refused rather than summarized by guess.

use std::collections::BTreeMap;
use std::sync::RwLock;

use serde_json::{Map, Value};

use super::summary_table::TABLE;

/// Types the built-in table does not hold, learned from the snapshots of
/// loaded FHIR packages ([`learn`]): the summary paths and the mandatory
/// top-level elements. Facts of the base specification, the same from
/// whichever package they come.
static LEARNED: RwLock<BTreeMap<String, Learned>> = RwLock::new(BTreeMap::new());

/// A learned type: its summary paths and its mandatory top-level elements.
type Learned = (Vec<String>, Vec<String>);

/// Calls `f` with the summary elements and the mandatory top-level
/// elements of `rtype`, if known.
fn with_entry<R>(rtype: &str, f: impl FnOnce(&[&str], &[&str]) -> R) -> Option<R> {
    if let Some((_, s, m)) = TABLE.iter().find(|(t, _, _)| *t == rtype) {
        return Some(f(s, m));
    }
    let learned = LEARNED.read().ok()?;
    let (s, m) = learned.get(rtype)?;
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let m: Vec<&str> = m.iter().map(String::as_str).collect();
    Some(f(&s, &m))
}

/// Whether `_summary=true|text` is available for `rtype`.
pub fn supported(rtype: &str) -> bool {
    with_entry(rtype, |_, _| ()).is_some()
}

/// The types `_summary=true|text` is available for.
pub fn supported_types() -> Vec<String> {
    let mut v: Vec<String> = TABLE.iter().map(|(t, _, _)| (*t).to_owned()).collect();
    if let Ok(l) = LEARNED.read() {
        v.extend(l.keys().cloned());
    }
    v.sort();
    v
}

/// Learns a type's summary from a StructureDefinition snapshot of it (a
/// base definition or any profile: profiles cannot change `isSummary` or
/// the base cardinality, and each element's `base` names the base path).
/// Types of the built-in table are left as they are.
pub fn learn(sd: &Value) {
    let (Some(t), Some(els)) = (sd["type"].as_str(), sd.pointer("/snapshot/element").and_then(Value::as_array)) else {
        return;
    };
    if sd["kind"] != "resource" || TABLE.iter().any(|(x, _, _)| *x == t) {
        return;
    }
    let (mut summary, mut mandatory) = (Vec::new(), Vec::new());
    for e in els {
        let path = e.pointer("/base/path").and_then(Value::as_str).or(e["path"].as_str()).unwrap_or("");
        let sliced = e["id"].as_str().is_some_and(|id| id.contains(':'));
        let Some(rel) = path.strip_prefix(t).and_then(|p| p.strip_prefix('.')) else { continue };
        if sliced {
            continue;
        }
        if e["isSummary"] == true && !summary.iter().any(|s| s == rel) {
            summary.push(rel.to_owned());
        }
        let min = e.pointer("/base/min").or(e.get("min")).and_then(Value::as_u64).unwrap_or(0);
        if !rel.contains('.') && min > 0 && !mandatory.iter().any(|m| m == rel) {
            mandatory.push(rel.to_owned());
        }
    }
    if let Ok(mut l) = LEARNED.write() {
        l.entry(t.to_owned()).or_insert((summary, mandatory));
    }
}

/// Whether the JSON key `key` is the element `name` (a choice `value[x]`
/// is `valueQuantity`, `valueString`, …).
fn is_element(key: &str, name: &str) -> bool {
    match name.strip_suffix("[x]") {
        Some(stem) => key.strip_prefix(stem).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == name,
    }
}

/// The element `key` names at `prefix` (`""` at the top, `component.`
/// inside a backbone element), if it is a summary element.
fn summary_name<'a>(paths: &'a [&'a str], prefix: &str, key: &str) -> Option<&'a str> {
    paths
        .iter()
        .copied()
        .find(|p| p.strip_prefix(prefix).is_some_and(|rest| !rest.contains('.') && is_element(key, rest)))
}

/// Keeps the summary elements of `obj` (at `prefix`); a backbone element's
/// children are filtered likewise, a data type's content is kept whole.
/// `modifierExtension` is always kept: a modifier changes what the rest
/// means, and a summary must not hide it.
fn keep_summary(obj: &mut Map<String, Value>, paths: &[&str], prefix: &str) {
    let keys: Vec<String> = obj.keys().cloned().collect();
    for k in keys {
        let always = k == "modifierExtension"
            || (prefix.is_empty() && matches!(k.as_str(), "resourceType" | "id" | "meta" | "implicitRules"));
        if always {
            continue;
        }
        let Some(name) = summary_name(paths, prefix, &k) else {
            obj.remove(&k);
            continue;
        };
        let child = format!("{prefix}{name}.");
        if !paths.iter().any(|p| p.starts_with(&child)) {
            continue;
        }
        match obj.get_mut(&k) {
            Some(Value::Object(o)) => keep_summary(o, paths, &child),
            Some(Value::Array(items)) => {
                for it in items {
                    if let Value::Object(o) = it {
                        keep_summary(o, paths, &child);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The summary (`_summary=true`) of a resource object; `false` if its
/// type has no table.
pub fn summarize(v: &mut Value) -> bool {
    let Some(rtype) = v.get("resourceType").and_then(Value::as_str).map(str::to_owned) else { return false };
    let Some(obj) = v.as_object_mut() else { return false };
    with_entry(&rtype, |paths, _| keep_summary(obj, paths, "")).is_some()
}

/// `_summary=text`: the narrative, `id`, `meta` and the mandatory
/// top-level elements; `false` if its type has no table.
pub fn text_only(v: &mut Value) -> bool {
    let Some(rtype) = v.get("resourceType").and_then(Value::as_str).map(str::to_owned) else { return false };
    let Some(obj) = v.as_object_mut() else { return false };
    with_entry(&rtype, |_, mandatory| {
        obj.retain(|k, _| {
            matches!(k.as_str(), "resourceType" | "id" | "meta" | "implicitRules" | "text" | "modifierExtension")
                || mandatory.iter().any(|m| is_element(k, m))
        })
    })
    .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_summary_keeps_what_the_base_specification_marks() {
        let mut o = json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "1"},
            "text": {"status": "generated", "div": "<div>x</div>"}, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p"}, "valueQuantity": {"value": 70, "unit": "/min"},
            "note": [{"text": "after exercise"}], "interpretation": [{"text": "N"}],
            "referenceRange": [{"low": {"value": 60}}],
            "component": [{"code": {"text": "c"}, "valueString": "v", "referenceRange": [{"text": "r"}]}],
            "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}]});
        assert!(summarize(&mut o));
        let keys: Vec<&String> = o.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "code",
                "component",
                "id",
                "meta",
                "modifierExtension",
                "resourceType",
                "status",
                "subject",
                "valueQuantity"
            ]
        );
        assert_eq!(
            o["component"][0],
            json!({"code": {"text": "c"}, "valueString": "v"}),
            "a backbone element's children filtered too"
        );
        assert_eq!(o["valueQuantity"]["unit"], "/min", "a data type is kept whole");
        let mut p = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "山田"}], "gender": "male",
            "birthDate": "1970-01-01", "deceasedBoolean": false, "contact": [{"name": {"family": "x"}}],
            "maritalStatus": {"text": "M"}, "photo": [{"data": "AAAA"}]});
        assert!(summarize(&mut p));
        assert!(p.get("contact").is_none() && p.get("photo").is_none() && p.get("maritalStatus").is_none());
        assert_eq!(p["deceasedBoolean"], false);
        assert_eq!(p["name"][0]["family"], "山田");
        let mut t = json!({"resourceType": "Observation", "id": "o1", "text": {"div": "<div/>"}, "status": "final",
            "code": {"text": "c"}, "subject": {"reference": "Patient/p"}, "valueQuantity": {"value": 1}});
        assert!(text_only(&mut t));
        assert_eq!(
            t,
            json!({"resourceType": "Observation", "id": "o1", "text": {"div": "<div/>"}, "status": "final", "code": {"text": "c"}})
        );
        assert!(!summarize(&mut json!({"resourceType": "CareTeam", "id": "c"})), "no table: refused, not guessed");
        assert!(supported("Patient") && !supported("CareTeam"));
    }
}
