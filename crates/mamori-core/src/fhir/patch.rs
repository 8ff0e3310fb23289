//! JSON Patch (RFC 6902) with JSON Pointers (RFC 6901), for FHIR's PATCH
//! interaction. Applied to a copy: a patch that fails at any operation
//! changes nothing.

use serde_json::Value;

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The patch document is not a JSON Patch.
    #[error("not a JSON Patch: {0}")]
    Malformed(String),
    /// An operation does not apply to the resource (a missing path, a
    /// failed `test`).
    #[error("operation {index} ({op} {path}): {why}")]
    Failed {
        /// The operation's position in the patch (from 0).
        index: usize,
        /// Its `op`.
        op: String,
        /// Its `path`.
        path: String,
        /// What went wrong.
        why: &'static str,
    },
}

/// Applies `patch` (a JSON array of operations) to `doc`, returning the
/// result; `doc` is left as it was.
pub fn apply(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops = patch.as_array().ok_or_else(|| PatchError::Malformed("the document must be an array".into()))?;
    let mut out = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        let field = |k: &str| op.get(k).and_then(Value::as_str);
        let name = field("op").ok_or_else(|| PatchError::Malformed(format!("operation {index} has no op")))?;
        let path = field("path").ok_or_else(|| PatchError::Malformed(format!("operation {index} has no path")))?;
        let fail = |why| PatchError::Failed { index, op: name.to_owned(), path: path.to_owned(), why };
        let tokens = pointer(path).ok_or_else(|| fail("not a JSON Pointer"))?;
        let value = || op.get("value").cloned().ok_or_else(|| fail("needs a value"));
        let from = || field("from").and_then(pointer).ok_or_else(|| fail("needs a from that is a JSON Pointer"));
        match name {
            "add" => add(&mut out, &tokens, value()?).map_err(fail)?,
            "remove" => {
                remove(&mut out, &tokens).map_err(fail)?;
            }
            "replace" => {
                remove(&mut out, &tokens).map_err(fail)?;
                add(&mut out, &tokens, value()?).map_err(fail)?;
            }
            "move" => {
                let f = from()?;
                if tokens.len() > f.len() && tokens.starts_with(&f) {
                    return Err(fail("cannot move a value into itself"));
                }
                let v = remove(&mut out, &f).map_err(fail)?;
                add(&mut out, &tokens, v).map_err(fail)?;
            }
            "copy" => {
                let v = get(&out, &from()?).cloned().ok_or_else(|| fail("from does not exist"))?;
                add(&mut out, &tokens, v).map_err(fail)?;
            }
            "test" => {
                if get(&out, &tokens) != Some(&value()?) {
                    return Err(fail("the value differs"));
                }
            }
            _ => return Err(PatchError::Malformed(format!("operation {index}: unknown op '{name}'"))),
        }
    }
    Ok(out)
}

/// The reference tokens of a JSON Pointer; `None` if it is not one.
fn pointer(p: &str) -> Option<Vec<String>> {
    if p.is_empty() {
        return Some(Vec::new());
    }
    let rest = p.strip_prefix('/')?;
    rest.split('/')
        .map(|t| {
            // `~` must be followed by 0 or 1.
            let bad = t.match_indices('~').any(|(i, _)| !matches!(t.as_bytes().get(i + 1), Some(b'0' | b'1')));
            (!bad).then(|| t.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

fn index(t: &str, len: usize, allow_end: bool) -> Option<usize> {
    if t == "-" {
        return allow_end.then_some(len);
    }
    if t.is_empty() || (t.len() > 1 && t.starts_with('0')) || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let i: usize = t.parse().ok()?;
    (i < len || (allow_end && i == len)).then_some(i)
}

fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(m) => m.get(t),
        Value::Array(a) => index(t, a.len(), false).and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent<'a>(doc: &'a mut Value, tokens: &'a [String]) -> Result<(&'a mut Value, &'a String), &'static str> {
    let (last, init) = tokens.split_last().ok_or("the whole resource cannot be replaced")?;
    let mut v = doc;
    for t in init {
        v = match v {
            Value::Object(m) => m.get_mut(t).ok_or("the path does not exist")?,
            Value::Array(a) => {
                let i = index(t, a.len(), false).ok_or("the path does not exist")?;
                a.get_mut(i).ok_or("the path does not exist")?
            }
            _ => return Err("the path does not exist"),
        };
    }
    Ok((v, last))
}

fn add(doc: &mut Value, tokens: &[String], value: Value) -> Result<(), &'static str> {
    let (p, last) = parent(doc, tokens)?;
    match p {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) => {
            let i = index(last, a.len(), true).ok_or("no such array position")?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err("the path's parent is not an object or array"),
    }
}

fn remove(doc: &mut Value, tokens: &[String]) -> Result<Value, &'static str> {
    let (p, last) = parent(doc, tokens)?;
    match p {
        Value::Object(m) => m.remove(last).ok_or("the path does not exist"),
        Value::Array(a) => {
            let i = index(last, a.len(), false).ok_or("no such array position")?;
            Ok(a.remove(i))
        }
        _ => Err("the path does not exist"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rfc6902_operations() {
        let doc =
            json!({"resourceType": "Patient", "name": [{"family": "山田", "given": ["太郎"]}], "a/b": 1, "m~n": 2});
        let p = json!([
            {"op": "test", "path": "/name/0/family", "value": "山田"},
            {"op": "replace", "path": "/name/0/family", "value": "山本"},
            {"op": "add", "path": "/name/0/given/-", "value": "次郎"},
            {"op": "add", "path": "/name/0/given/0", "value": "一"},
            {"op": "add", "path": "/gender", "value": "male"},
            {"op": "copy", "from": "/gender", "path": "/g2"},
            {"op": "move", "from": "/g2", "path": "/g3"},
            {"op": "remove", "path": "/a~1b"},
            {"op": "replace", "path": "/m~0n", "value": 3}
        ]);
        let out = apply(&doc, &p).unwrap();
        assert_eq!(
            out,
            json!({"resourceType": "Patient", "name": [{"family": "山本", "given": ["一", "太郎", "次郎"]}], "gender": "male", "g3": "male", "m~n": 3})
        );
    }

    #[test]
    fn failures_change_nothing_and_say_where() {
        let doc = json!({"name": [{"family": "x"}]});
        for (p, want) in [
            (json!([{"op": "test", "path": "/name/0/family", "value": "y"}]), "the value differs"),
            (json!([{"op": "remove", "path": "/name/1"}]), "no such array position"),
            (json!([{"op": "replace", "path": "/nope", "value": 1}]), "the path does not exist"),
            (json!([{"op": "add", "path": "/name/01", "value": 1}]), "no such array position"),
            (json!([{"op": "add", "path": "name", "value": 1}]), "not a JSON Pointer"),
            (json!([{"op": "add", "path": "/a~2", "value": 1}]), "not a JSON Pointer"),
            (json!([{"op": "move", "from": "/name", "path": "/name/0"}]), "cannot move a value into itself"),
            (json!([{"op": "replace", "path": "", "value": {}}]), "the whole resource cannot be replaced"),
            (json!([{"op": "add", "path": "/x"}]), "needs a value"),
        ] {
            match apply(&doc, &p) {
                Err(PatchError::Failed { why, .. }) => assert_eq!(why, want, "{p}"),
                other => panic!("{p}: {other:?}"),
            }
        }
        for p in [json!({}), json!([{"path": "/x"}]), json!([{"op": "frobnicate", "path": "/x"}])] {
            assert!(matches!(apply(&doc, &p), Err(PatchError::Malformed(_))), "{p}");
        }
    }
}
