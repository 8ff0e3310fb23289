//! FHIRPath Patch (FHIR R4 `fhirpatch.html`): a Parameters resource of
//! `operation`s (add, insert, delete, replace, move), each with a FHIRPath
//! `path`. Applied to a copy, all or nothing, like JSON Patch.
//!
//! The paths this module evaluates are the subset clients send: the type,
//! then element names (a choice element by its stem: `Observation.value`),
//! each optionally followed by `[n]`, `.first()`, `.last()` or
//! `.where(element = 'literal')` (a literal string, number or boolean, on
//! a direct child). Anything else is refused as unsupported, never
//! guessed. Values are `value[x]` (a primitive or a data type as JSON);
//! values given as nested `part`s are refused. `add` of a repeating
//! element the resource does not have yet makes a list at the top level
//! (from the type's structure); inside a data type, use `insert` at 0.

use serde_json::{Map, Value};

use super::patch::PatchError;

/// One step from a parent to a child: an object key, or an array index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

type Loc = Vec<Step>;

fn get<'a>(doc: &'a Value, loc: &[Step]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(*i),
    })
}

fn get_mut<'a>(doc: &'a mut Value, loc: &[Step]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// The JSON key of element `name` in `obj`: the name itself, or for a
/// choice element its typed key (`value` → `valueQuantity`).
fn key_of(obj: &Map<String, Value>, name: &str) -> Option<String> {
    if obj.contains_key(name) {
        return Some(name.to_owned());
    }
    obj.keys()
        .find(|k| k.strip_prefix(name).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())))
        .cloned()
}

/// A parsed path: the type, then steps.
#[derive(Debug, Clone, PartialEq)]
enum PathStep {
    Child(String),
    Index(usize),
    First,
    Last,
    Where(String, Value),
}

fn unsupported(path: &str) -> String {
    format!("'{path}': this server evaluates paths of element names with [n], first(), last() and where(element = 'literal')")
}

fn parse_path(path: &str) -> Result<(String, Vec<PathStep>), String> {
    let bad = || unsupported(path);
    let mut chars = path.trim();
    let name_end = |s: &str| s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let n = name_end(chars);
    if n == 0 {
        return Err(bad());
    }
    let root = chars[..n].to_owned();
    chars = &chars[n..];
    let mut steps = Vec::new();
    while !chars.is_empty() {
        if let Some(rest) = chars.strip_prefix('[') {
            let close = rest.find(']').ok_or_else(bad)?;
            steps.push(PathStep::Index(rest[..close].trim().parse().map_err(|_| bad())?));
            chars = &rest[close + 1..];
        } else if let Some(rest) = chars.strip_prefix('.') {
            if let Some(r) = rest.strip_prefix("first()") {
                steps.push(PathStep::First);
                chars = r;
            } else if let Some(r) = rest.strip_prefix("last()") {
                steps.push(PathStep::Last);
                chars = r;
            } else if let Some(r) = rest.strip_prefix("where(") {
                let close = r.find(')').ok_or_else(bad)?;
                let (lhs, rhs) = r[..close].split_once('=').ok_or_else(bad)?;
                let (lhs, rhs) = (lhs.trim(), rhs.trim());
                if lhs.is_empty() || name_end(lhs) != lhs.len() {
                    return Err(bad());
                }
                let lit = if let Some(s) = rhs.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    Value::String(s.replace("\\'", "'"))
                } else if rhs == "true" || rhs == "false" {
                    Value::Bool(rhs == "true")
                } else {
                    serde_json::from_str::<serde_json::Number>(rhs).map(Value::Number).map_err(|_| bad())?
                };
                steps.push(PathStep::Where(lhs.to_owned(), lit));
                chars = &r[close + 1..];
            } else {
                let n = name_end(rest);
                if n == 0 {
                    return Err(bad());
                }
                steps.push(PathStep::Child(rest[..n].to_owned()));
                chars = &rest[n..];
            }
        } else {
            return Err(bad());
        }
    }
    Ok((root, steps))
}

/// The locations `path` selects in `doc`.
fn eval(doc: &Value, path: &str) -> Result<Vec<Loc>, String> {
    let (root, steps) = parse_path(path)?;
    if doc.get("resourceType").and_then(Value::as_str) != Some(root.as_str()) {
        return Err(format!("'{path}' does not start with the resource's type"));
    }
    let mut cur: Vec<Loc> = vec![Vec::new()];
    for s in steps {
        cur = match s {
            PathStep::Child(name) => {
                let mut out = Vec::new();
                for loc in cur {
                    let Some(Value::Object(o)) = get(doc, &loc) else { continue };
                    let Some(k) = key_of(o, &name) else { continue };
                    let mut child = loc.clone();
                    child.push(Step::Key(k.clone()));
                    match o.get(&k) {
                        Some(Value::Array(items)) => {
                            for i in 0..items.len() {
                                let mut c = child.clone();
                                c.push(Step::Index(i));
                                out.push(c);
                            }
                        }
                        Some(_) => out.push(child),
                        None => {}
                    }
                }
                out
            }
            PathStep::Index(i) => cur.into_iter().nth(i).into_iter().collect(),
            PathStep::First => cur.into_iter().take(1).collect(),
            PathStep::Last => cur.into_iter().last().into_iter().collect(),
            PathStep::Where(k, lit) => cur
                .into_iter()
                .filter(|loc| {
                    get(doc, loc).and_then(|v| v.get(&k)).is_some_and(|v| match (v, &lit) {
                        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                        (a, b) => a == b,
                    })
                })
                .collect(),
        };
    }
    Ok(cur)
}

/// The value of an operation (`value[x]`).
fn value_of(parts: &[Value]) -> Option<Result<Value, String>> {
    let p = parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some("value"))?;
    let obj = p.as_object()?;
    if obj.contains_key("part") {
        return Some(Err("a value given as parts is not supported; give value[x]".into()));
    }
    obj.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| Ok(v.clone()))
}

fn part<'a>(parts: &'a [Value], name: &str) -> Option<&'a Value> {
    parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name))
}

fn part_str<'a>(parts: &'a [Value], name: &str, ty: &str) -> Option<&'a str> {
    part(parts, name)?.get(ty).and_then(Value::as_str)
}

fn part_int(parts: &[Value], name: &str) -> Option<usize> {
    part(parts, name)?.get("valueInteger").and_then(Value::as_u64).map(|n| n as usize)
}

/// Applies a FHIRPath Patch (a Parameters resource) to `doc`, returning
/// the result; `doc` is left as it was.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    if patch.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(PatchError::Malformed("a FHIRPath Patch is a Parameters resource".into()));
    }
    let ops = patch.get("parameter").and_then(Value::as_array).cloned().unwrap_or_default();
    if ops.is_empty() {
        return Err(PatchError::Malformed("the Parameters hold no operation".into()));
    }
    let mut out = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        if op.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(PatchError::Malformed(format!("parameter {index} is not an operation")));
        }
        let parts = op.get("part").and_then(Value::as_array).cloned().unwrap_or_default();
        let kind = part_str(&parts, "type", "valueCode")
            .ok_or_else(|| PatchError::Malformed(format!("operation {index} has no type (valueCode)")))?
            .to_owned();
        let path = part_str(&parts, "path", "valueString")
            .ok_or_else(|| PatchError::Malformed(format!("operation {index} has no path (valueString)")))?
            .to_owned();
        let fail = |why: &'static str| PatchError::Failed { index, op: kind.clone(), path: path.clone(), why };
        let malformed = |why: String| PatchError::Malformed(format!("operation {index} ({kind} {path}): {why}"));
        let locs = eval(&out, &path).map_err(malformed)?;
        let value = || match value_of(&parts) {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(malformed(e)),
            None => Err(fail("needs a value")),
        };
        match kind.as_str() {
            "add" => {
                let name = part_str(&parts, "name", "valueString").ok_or_else(|| fail("needs a name"))?.to_owned();
                let [loc] = locs.as_slice() else { return Err(fail("the path must select one element")) };
                let v = value()?;
                let Some(Value::Object(o)) = get_mut(&mut out, loc) else {
                    return Err(fail("the path must select an element with children"));
                };
                match o.get_mut(&name) {
                    Some(Value::Array(items)) => items.push(v),
                    Some(_) => return Err(fail("the element already has that child (use replace)")),
                    None => {
                        // A repeating element is a list even with one item.
                        let repeating = super::schema::resource_schema(
                            doc.get("resourceType").and_then(Value::as_str).unwrap_or(""),
                        )
                        .filter(|_| loc.is_empty())
                        .and_then(|els| els.iter().find(|e| e.name == name))
                        .is_some_and(|e| e.many);
                        o.insert(name, if repeating { Value::Array(vec![v]) } else { v });
                    }
                }
            }
            "replace" => {
                let [loc] = locs.as_slice() else { return Err(fail("the path must select one element")) };
                let v = value()?;
                if loc.is_empty() {
                    return Err(fail("the resource itself cannot be replaced"));
                }
                if let Some(slot) = get_mut(&mut out, loc) {
                    *slot = v;
                }
            }
            "delete" => match locs.as_slice() {
                [] => {}
                [loc] => {
                    if matches!(loc.first(), Some(Step::Key(k)) if k == "resourceType" || k == "id") {
                        return Err(fail("the resource's type and id cannot be deleted"));
                    }
                    let Some((last, parent)) = loc.split_last() else {
                        return Err(fail("the resource itself cannot be deleted"));
                    };
                    match (last, get_mut(&mut out, parent)) {
                        (Step::Index(i), Some(Value::Array(items))) => {
                            items.remove(*i);
                            if items.is_empty() {
                                if let Some((Step::Key(k), grand)) = parent.split_last() {
                                    if let Some(Value::Object(o)) = get_mut(&mut out, grand) {
                                        o.remove(k);
                                    }
                                }
                            }
                        }
                        (Step::Key(k), Some(Value::Object(o))) => {
                            o.remove(k);
                        }
                        _ => return Err(fail("cannot delete there")),
                    }
                }
                _ => return Err(fail("the path must select at most one element")),
            },
            "insert" | "move" => {
                // The path names the list: its parent holds it by key.
                let (parent_path, name) = path.rsplit_once('.').ok_or_else(|| fail("the path must name a list"))?;
                if name.contains(['(', '[']) {
                    return Err(fail("the path must end with the list's element name"));
                }
                let parents = eval(&out, parent_path).map_err(malformed)?;
                let [parent] = parents.as_slice() else { return Err(fail("the list's parent must be one element")) };
                let Some(Value::Object(o)) = get_mut(&mut out, parent) else {
                    return Err(fail("the list's parent must be one element"));
                };
                let key = key_of(o, name).unwrap_or_else(|| name.to_owned());
                if kind == "insert" {
                    let at = part_int(&parts, "index").ok_or_else(|| fail("needs an index (valueInteger)"))?;
                    let v = value()?;
                    let list = o.entry(key).or_insert_with(|| Value::Array(Vec::new()));
                    let Value::Array(items) = list else { return Err(fail("not a list")) };
                    if at > items.len() {
                        return Err(fail("index past the end of the list"));
                    }
                    items.insert(at, v);
                } else {
                    let from = part_int(&parts, "source").ok_or_else(|| fail("needs a source (valueInteger)"))?;
                    let to =
                        part_int(&parts, "destination").ok_or_else(|| fail("needs a destination (valueInteger)"))?;
                    let Some(Value::Array(items)) = o.get_mut(&key) else { return Err(fail("not a list")) };
                    if from >= items.len() || to >= items.len() {
                        return Err(fail("source or destination past the end of the list"));
                    }
                    let item = items.remove(from);
                    items.insert(to, item);
                }
            }
            _ => return Err(malformed("type must be add, insert, delete, replace or move".into())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(kind: &str, path: &str, extra: Vec<Value>) -> Value {
        let mut part = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": path})];
        part.extend(extra);
        json!({"name": "operation", "part": part})
    }
    fn params(ops: Vec<Value>) -> Value {
        json!({"resourceType": "Parameters", "parameter": ops})
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "active": true,
            "name": [{"use": "official", "family": "山田", "given": ["太郎"]}, {"use": "nickname", "given": ["たろ"]}],
            "telecom": [{"system": "phone", "value": "03-1111"}, {"system": "email", "value": "a@example.jp"}],
            "deceasedBoolean": false})
    }

    #[test]
    fn each_operation_as_the_specification_describes() {
        let p = patient();
        let out = apply(&p, &params(vec![
            op("replace", "Patient.name.where(use = 'official').family", vec![json!({"name": "value", "valueString": "山本"})]),
            op("add", "Patient.name[0]", vec![json!({"name": "name", "valueString": "text"}), json!({"name": "value", "valueString": "山本 太郎"})]),
            op("add", "Patient.name.first()", vec![json!({"name": "name", "valueString": "given"}), json!({"name": "value", "valueString": "二郎"})]),
            op("delete", "Patient.telecom.where(system = 'email')", vec![]),
            op("insert", "Patient.identifier", vec![json!({"name": "index", "valueInteger": 0}),
                json!({"name": "value", "valueIdentifier": {"system": "urn:oid:1.2.392.100495.20.3.51.1", "value": "123"}})]),
            op("move", "Patient.name", vec![json!({"name": "source", "valueInteger": 1}), json!({"name": "destination", "valueInteger": 0})]),
            op("replace", "Patient.deceased", vec![json!({"name": "value", "valueBoolean": true})]),
            op("delete", "Patient.active", vec![]),
            op("delete", "Patient.birthDate", vec![]),
        ])).unwrap();
        assert_eq!(out["name"][1]["family"], "山本");
        assert_eq!(out["name"][1]["text"], "山本 太郎");
        assert_eq!(out["name"][1]["given"], json!(["太郎", "二郎"]));
        assert_eq!(out["name"][0]["use"], "nickname");
        assert_eq!(out["telecom"], json!([{"system": "phone", "value": "03-1111"}]));
        assert_eq!(out["identifier"][0]["value"], "123");
        assert_eq!(out["deceasedBoolean"], true);
        assert!(out.get("active").is_none());
        assert_eq!(p, patient(), "the input is left as it was");
        // Deleting the last item of a list removes the list.
        let out = apply(
            &p,
            &params(vec![op("delete", "Patient.telecom[0]", vec![]), op("delete", "Patient.telecom[0]", vec![])]),
        )
        .unwrap();
        assert!(out.get("telecom").is_none(), "{out}");
    }

    #[test]
    fn failures_name_the_operation_and_change_nothing() {
        let p = patient();
        let fails = |ops: Vec<Value>| apply(&p, &params(ops)).unwrap_err();
        // Replace of nothing, of several, add to an element that has it.
        assert!(matches!(
            fails(vec![op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueDate": "1970-01-01"})])]),
            PatchError::Failed { index: 0, .. }
        ));
        assert!(matches!(
            fails(vec![op("replace", "Patient.name.given", vec![json!({"name": "value", "valueString": "x"})])]),
            PatchError::Failed { .. }
        ));
        assert!(matches!(fails(vec![op("delete", "Patient.name", vec![])]), PatchError::Failed { .. }));
        assert!(matches!(
            fails(vec![op(
                "add",
                "Patient",
                vec![json!({"name": "name", "valueString": "active"}), json!({"name": "value", "valueBoolean": false})]
            )]),
            PatchError::Failed { .. }
        ));
        // A second operation failing: the first is not applied either (a new copy each time).
        let e = fails(vec![
            op("delete", "Patient.active", vec![]),
            op(
                "move",
                "Patient.name",
                vec![json!({"name": "source", "valueInteger": 5}), json!({"name": "destination", "valueInteger": 0})],
            ),
        ]);
        assert!(matches!(e, PatchError::Failed { index: 1, .. }), "{e}");
        // Malformed: not Parameters, unknown type, unsupported FHIRPath, another type's path.
        for bad in [
            json!([{"op": "remove", "path": "/active"}]),
            params(vec![op("frobnicate", "Patient.active", vec![])]),
            params(vec![op("delete", "Patient.name.where(given.exists())", vec![])]),
            params(vec![op("delete", "Observation.status", vec![])]),
            params(vec![op("replace", "Patient.active", vec![json!({"name": "value", "part": []})])]),
        ] {
            assert!(matches!(apply(&p, &bad), Err(PatchError::Malformed(_))), "{bad}");
        }
    }
}
