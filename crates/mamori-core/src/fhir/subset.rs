//! `_elements` and `_summary=data|true|text`: a resource with only some
//! of its elements, tagged SUBSETTED (FHIR R4 search 3.1.1.5.9 and
//! 3.1.1.5.8) so that nobody takes it for the whole record.

use serde_json::{json, Value};

/// What of each resource to return.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    /// `_elements`: only these top-level elements (with `resourceType`,
    /// `id` and `meta`).
    pub elements: Option<Vec<String>>,
    /// `_summary=data`: everything but the narrative (`text`).
    pub without_text: bool,
    /// `_summary=true` or `_summary=text` ([`super::summary`]).
    pub summary: Option<Summary>,
}

/// A summary of each resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// `_summary=true`: the elements the base specification marks summary.
    True,
    /// `_summary=text`: the narrative, `id`, `meta` and mandatory elements.
    Text,
}

/// Reads a `_summary` value for `rtype`: `Ok(None)` for `false`, `count`
/// is the caller's (a search's), anything else an error.
pub fn parse_summary(rtype: &str, v: &str, s: &mut Subset) -> Result<(), String> {
    match v {
        "false" => {}
        "data" => s.without_text = true,
        "true" | "text" => {
            if !super::summary::supported(rtype) {
                return Err(format!(
                    "_summary={v} is not available for {rtype} (its summary elements are not known here); use _elements"
                ));
            }
            s.summary = Some(if v == "true" { Summary::True } else { Summary::Text });
        }
        _ => return Err("supported: true, text, data, count (searches), false".into()),
    }
    Ok(())
}

/// The SUBSETTED tag a subset carries in `meta.tag`.
pub const SUBSETTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

impl Subset {
    /// Reads `_elements=a,b` (top-level element names only).
    pub fn parse_elements(v: &str) -> Result<Vec<String>, &'static str> {
        let names: Vec<String> = v.split(',').map(|s| s.trim().to_owned()).collect();
        let ok = |n: &str| {
            n.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) && n.chars().all(|c| c.is_ascii_alphanumeric())
        };
        if names.iter().all(|n| ok(n)) {
            Ok(names)
        } else {
            Err("expected top-level element names, comma-separated")
        }
    }

    /// Whether anything is left out.
    pub fn is_whole(&self) -> bool {
        self.elements.is_none() && !self.without_text && self.summary.is_none()
    }

    /// The resource's JSON text as this subset, or `None` to send it whole.
    pub fn apply(&self, body: &str) -> Option<String> {
        if self.is_whole() || body.is_empty() {
            return None;
        }
        let mut v: Value = serde_json::from_str(body).ok()?;
        let original = v.clone();
        match self.summary {
            Some(Summary::True) => {
                super::summary::summarize(&mut v);
            }
            Some(Summary::Text) => {
                super::summary::text_only(&mut v);
            }
            None => {}
        }
        let obj = v.as_object_mut()?;
        if let Some(keep) = &self.elements {
            obj.retain(|k, _| matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.iter().any(|e| e == k));
        }
        if self.without_text {
            obj.remove("text");
        }
        if v == original {
            return None;
        }
        let obj = v.as_object_mut()?;
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let tags = m.entry("tag").or_insert_with(|| json!([]));
            if let Some(list) = tags.as_array_mut() {
                list.push(json!({"system": SUBSETTED_SYSTEM, "code": "SUBSETTED"}));
            }
        }
        serde_json::to_string(&v).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_what_was_asked_and_says_it_is_a_subset() {
        let body = r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"},"text":{"status":"generated","div":"<div/>"},"name":[{"family":"山田"}],"birthDate":"1970-01-01","gender":"male"}"#;
        let s = Subset { elements: Some(Subset::parse_elements("name,gender").unwrap()), ..Subset::default() };
        let v: Value = serde_json::from_str(&s.apply(body).unwrap()).unwrap();
        assert_eq!(v["name"][0]["family"], "山田");
        assert_eq!(v["gender"], "male");
        assert!(v.get("birthDate").is_none() && v.get("text").is_none());
        assert_eq!((v["id"].as_str(), v["meta"]["versionId"].as_str()), (Some("p1"), Some("2")));
        assert_eq!(v["meta"]["tag"][0]["code"], "SUBSETTED");
        let data = Subset { without_text: true, ..Subset::default() };
        let v: Value = serde_json::from_str(&data.apply(body).unwrap()).unwrap();
        assert!(v.get("text").is_none() && v.get("birthDate").is_some());
        // Nothing left out: sent as stored, without the tag.
        assert_eq!(Subset::default().apply(body), None);
        let all = Subset {
            elements: Some(vec!["text".into(), "name".into(), "birthDate".into(), "gender".into()]),
            ..Subset::default()
        };
        assert_eq!(all.apply(body), None);
        for bad in ["name.family", "", "name,", "1x", "a b"] {
            assert!(Subset::parse_elements(bad).is_err(), "{bad}");
        }
    }
}
