//! The FHIR R4 REST API at `/fhir` (JSON only).
//!
//! Every interaction is decided by `mamori_core::policy::decide` under the
//! request's mode and audited: writes in the same transaction as the
//! change, reads and searches before the response is sent. If the audit
//! event cannot be committed, the request fails (rule 1).

mod audit_event;
mod bundle;
mod capability;
mod read;
pub mod write;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::fhir::resource_types::in_patient_compartment;
use mamori_core::ids::{is_fhir_id, ResourceType};
use mamori_core::policy::{Facts, PatientScope, Target};
use mamori_core::time::Timestamp;
use mamori_store::accounts;
use mamori_store::records::Version;
use mamori_store::sql::Conn;
use mamori_store::StoreError;
use serde_json::Value;

use crate::error::ApiError;
use crate::state::{AppState, Caller};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir", post(bundle::batch_or_transaction))
        .route("/fhir/{rtype}", get(read::search_get).post(write::create))
        .route(
            "/fhir/{rtype}/{id}",
            get(read::read_or_history).put(write::update).delete(write::delete).post(read::search_post),
        )
        .route("/fhir/{rtype}/{id}/{op}", get(read::instance_op))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(read::vread))
        .fallback(|| async { ApiError::NotFound("no such FHIR endpoint".into()) })
}

pub fn json_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// A FHIR JSON response.
pub fn respond(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

/// Headers describing a stored version.
pub fn version_headers(r: &mut Response, base: &str, rtype: &str, id: &str, version: u64, last_updated: Timestamp) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(last_updated)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/fhir/{rtype}/{id}/_history/{version}")) {
        h.insert(header::CONTENT_LOCATION, v);
    }
}

/// RFC 7231 IMF-fixdate.
pub fn http_date(t: Timestamp) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let secs = t.secs();
    let days = secs.div_euclid(86_400);
    let (y, m, d) = mamori_core::time::civil_from_days(days);
    let sod = secs.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(m as usize).saturating_sub(1) % 12],
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// Refuses anything but JSON in `Accept` / `_format`.
pub fn check_accept(headers: &HeaderMap, format: Option<&str>) -> Result<(), ApiError> {
    if let Some(f) = format {
        if !matches!(f, "json" | "application/json" | "application/fhir+json") {
            return Err(ApiError::NotAcceptable(format!(
                "_format={f} is not supported; mamori speaks application/fhir+json"
            )));
        }
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    let ok = accept.split(',').any(|part| {
        let mt = part.split(';').next().unwrap_or("").trim();
        matches!(
            mt,
            "application/fhir+json" | "application/json" | "application/*" | "*/*" | "application/json+fhir" | ""
        )
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::NotAcceptable(format!("cannot produce '{accept}'; mamori speaks application/fhir+json")))
    }
}

/// Requires a JSON request body.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mt = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(mt.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!("Content-Type '{ct}' is not supported; send application/fhir+json")))
    }
}

/// Reads a body up to the configured limit.
pub async fn read_body(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::TooLarge(limit))
}

/// Parses JSON, naming the position of a syntax error.
pub fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad("", format!("malformed JSON: {e}")))
}

pub fn parse_type(t: &str) -> Result<ResourceType, ApiError> {
    ResourceType::parse(t).map_err(|e| ApiError::NotFound(e.to_string()))
}

pub fn parse_id(id: &str) -> Result<(), ApiError> {
    if is_fhir_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad("id", format!("'{}' is not a valid FHIR id", id.chars().take(70).collect::<String>())))
    }
}

/// The access target for one resource (or a new one).
pub fn target_of(rtype: ResourceType, patient: Option<&str>) -> Target {
    let scope =
        if patient.is_some() || rtype == ResourceType::PATIENT { PatientScope::One } else { PatientScope::None };
    Target { rtype, scope }
}

/// The access target of a search: one patient if the query names exactly
/// one, any patient for other searches of patient data.
pub fn search_target(rtype: ResourceType, one_patient: Option<&str>) -> Target {
    if rtype == ResourceType::PATIENT || one_patient.is_some() {
        Target { rtype, scope: if one_patient.is_some() { PatientScope::One } else { PatientScope::Any } }
    } else if in_patient_compartment(rtype.as_str()) {
        Target { rtype, scope: PatientScope::Any }
    } else {
        Target { rtype, scope: PatientScope::None }
    }
}

/// The facts the policy needs about the caller and a patient.
pub fn facts(c: &mut dyn Conn, caller: &Caller, patient: Option<&str>, now: Timestamp) -> Result<Facts, StoreError> {
    let Some(p) = patient else {
        return Ok(Facts::default());
    };
    Ok(Facts {
        care_relationship: accounts::has_care_relationship(
            c,
            caller.user.name.as_str(),
            caller.user.department.as_deref(),
            p,
            now,
        )?,
        break_glass: mamori_store::emergency::has_live_grant(c, caller.user.name.as_str(), p, now)?,
    })
}

/// Assembles a Bundle from stored JSON texts without re-parsing them.
pub struct BundleWriter {
    out: String,
    first: bool,
}

impl BundleWriter {
    pub fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut out = format!("{{\"resourceType\":\"Bundle\",\"type\":{}", Value::from(kind));
        if let Some(t) = total {
            out.push_str(&format!(",\"total\":{t}"));
        }
        if !links.is_empty() {
            let l: Vec<Value> =
                links.iter().map(|(rel, url)| serde_json::json!({"relation": rel, "url": url})).collect();
            out.push_str(&format!(",\"link\":{}", Value::Array(l)));
        }
        out.push_str(",\"entry\":[");
        BundleWriter { out, first: true }
    }

    /// Adds an entry; `resource` is raw JSON text (or empty for none).
    pub fn entry(&mut self, full_url: Option<&str>, resource: &str, extra: &[(&str, Value)]) {
        if !self.first {
            self.out.push(',');
        }
        self.first = false;
        self.out.push('{');
        let mut sep = "";
        if let Some(u) = full_url {
            self.out.push_str(&format!("\"fullUrl\":{}", Value::from(u)));
            sep = ",";
        }
        if !resource.is_empty() {
            self.out.push_str(&format!("{sep}\"resource\":{resource}"));
            sep = ",";
        }
        for (k, v) in extra {
            self.out.push_str(&format!("{sep}{}:{v}", Value::from(*k)));
            sep = ",";
        }
        self.out.push('}');
    }

    pub fn finish(mut self) -> String {
        if self.first {
            // An empty entry array is not valid FHIR JSON: drop it.
            if let Some(pos) = self.out.rfind(",\"entry\":[") {
                self.out.truncate(pos);
            }
            self.out.push('}');
        } else {
            self.out.push_str("]}");
        }
        self.out
    }
}

/// The full URL of a stored version's resource.
pub fn full_url(base: &str, v: &Version) -> String {
    format!("{base}/fhir/{}/{}", v.rtype, v.id)
}

/// URL-encodes a query component.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(http_date(Timestamp(0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(Timestamp::from_secs(784_111_777)), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn bundle_writer_is_valid_json() {
        let mut b = BundleWriter::new("searchset", Some(1), &[("self", "https://x/fhir/Patient?name=%22".into())]);
        b.entry(
            Some("https://x/fhir/Patient/1"),
            "{\"resourceType\":\"Patient\",\"id\":\"1\"}",
            &[("search", serde_json::json!({"mode":"match"}))],
        );
        let v: Value = serde_json::from_str(&b.finish()).unwrap();
        assert_eq!(v["entry"][0]["resource"]["id"], "1");
        let empty: Value = serde_json::from_str(&BundleWriter::new("searchset", Some(0), &[]).finish()).unwrap();
        assert!(empty.get("entry").is_none());
    }
}
