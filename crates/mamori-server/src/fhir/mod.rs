//! The FHIR R4 REST API at `/fhir` (JSON only): HTTP adaptation of the
//! records use cases. Every answer carrying patient data is built from an
//! [`Audited`] value, so a read whose audit event was not committed has
//! nothing to answer with.

mod bulk;
mod bundle;
mod capability;
mod read;
mod write;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use mamori_core::time::Timestamp;
use mamori_service::records;
use mamori_service::{Actor, ServiceError, Services};
use mamori_store::records::Version;
use serde_json::Value;

pub use capability::capability_statement;

use crate::http::{FhirError, FHIR_JSON};

/// The routes (also served read-only to remote maintenance).
pub(crate) fn routes() -> Router<Services> {
    Router::new()
        .route("/fhir/metadata", get(capability::metadata))
        .route("/fhir", get(read::search_system_get).post(bundle::batch_or_transaction))
        .route("/fhir/_search", post(read::search_system_post))
        // (Clients that join the base and an empty path send a slash.)
        .route("/fhir/", get(read::search_system_get))
        .route("/fhir/_history", get(read::system_history))
        .route("/fhir/$export", get(bulk::system).post(bulk::system_post))
        .route("/fhir/Patient/$export", get(bulk::patient).post(bulk::patient_post))
        .route("/fhir/$export-status/{id}", get(bulk::status).delete(bulk::cancel))
        .route("/fhir/$export-file/{id}/{n}", get(bulk::file))
        .route(
            "/fhir/{rtype}",
            get(read::search_get)
                .post(write::create)
                .put(write::conditional_update)
                .patch(write::conditional_patch)
                .delete(write::conditional_delete),
        )
        .route(
            "/fhir/{rtype}/{id}",
            get(read::read_or_history)
                .put(write::update)
                .patch(write::patch)
                .delete(write::delete)
                .post(read::search_post),
        )
        .route("/fhir/{rtype}/{id}/{op}", get(read::instance_op).post(bulk::instance_post))
        .route("/fhir/{rtype}/{id}/_history/{vid}", get(read::vread))
        .fallback(|| async { FhirError(ServiceError::NotFound("no such FHIR endpoint".into())) })
        .layer(axum::middleware::from_fn(negotiate))
}

/// Whether the client asked for `application/json` rather than
/// `application/fhir+json` (`_format=application/json`, or an Accept
/// header that ranks it higher): the same body is then labelled as asked.
fn wants_plain_json(headers: &HeaderMap, query: Option<&str>) -> bool {
    let format = query.into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("_format="));
    if let Some(f) = format {
        return matches!(f, "application/json" | "application%2Fjson" | "application%2fjson");
    }
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let (mut json, mut fhir) = (0.0f32, 0.0f32);
    for part in accept.split(',') {
        let mut it = part.split(';');
        let mt = it.next().unwrap_or("").trim().to_ascii_lowercase();
        let q =
            it.filter_map(|p| p.trim().strip_prefix("q=")).find_map(|v| v.trim().parse::<f32>().ok()).unwrap_or(1.0);
        match mt.as_str() {
            "application/json" => json = json.max(q),
            "application/fhir+json" | "application/json+fhir" => fhir = fhir.max(q),
            _ => {}
        }
    }
    json > fhir
}

/// Labels FHIR answers `application/json` when that is what was asked.
async fn negotiate(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let plain = wants_plain_json(req.headers(), req.uri().query());
    let mut r = next.run(req).await;
    let is_fhir = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/fhir+json"));
    if plain && is_fhir {
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
    }
    r
}

/// A FHIR JSON response.
pub(crate) fn respond(status: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

/// Headers describing a stored version.
pub(crate) fn version_headers(
    r: &mut Response,
    base: &str,
    rtype: &str,
    id: &str,
    version: u64,
    last_updated: Timestamp,
) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&mamori_service::exchange::http_date(last_updated)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/fhir/{rtype}/{id}/_history/{version}")) {
        h.insert(header::CONTENT_LOCATION, v);
    }
}

/// Refuses anything but JSON in `Accept` / `_format` (406).
pub(crate) fn check_accept(headers: &HeaderMap, format: Option<&str>) -> Result<(), ServiceError> {
    if let Some(f) = format {
        if !matches!(f, "json" | "application/json" | "application/fhir+json") {
            return Err(ServiceError::NotAcceptable(format!(
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
        Err(ServiceError::NotAcceptable(format!("cannot produce '{accept}'; mamori speaks application/fhir+json")))
    }
}

/// Requires a JSON request body (415).
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ServiceError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mt = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if matches!(mt.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir") {
        Ok(())
    } else {
        Err(ServiceError::UnsupportedMediaType(format!(
            "Content-Type '{ct}' is not supported; send application/fhir+json"
        )))
    }
}

/// Parses JSON, naming the position of a syntax error. Duplicate keys,
/// numbers that cannot be kept exactly and strings over 1 MiB are refused
/// (what is stored must be what was sent).
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, ServiceError> {
    mamori_core::fhir::json::parse_strict(bytes, mamori_core::fhir::json::MAX_STRING_BYTES)
        .map_err(|e| ServiceError::invalid("", format!("malformed JSON: {e}")))
}

/// The `_format` parameter, if given.
pub(crate) fn format_param(pairs: &[(String, String)]) -> Option<&str> {
    pairs.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str())
}

/// Audits a request refused before it reached a use case, and answers it.
pub(crate) async fn refuse(
    svc: &Services,
    actor: &Actor,
    action: &str,
    rtype: Option<&str>,
    id: Option<&str>,
    e: ServiceError,
) -> Response {
    let known = rtype.filter(|t| mamori_core::ids::ResourceType::parse(t).is_ok());
    let id = id.filter(|i| mamori_core::ids::is_fhir_id(i));
    FhirError(records::reject(svc, actor, action, known, id, e).await).into_response()
}

/// Assembles a Bundle from stored JSON texts without re-parsing them.
pub(crate) struct BundleWriter {
    out: String,
    first: bool,
}

impl BundleWriter {
    pub(crate) fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
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
    pub(crate) fn entry(&mut self, full_url: Option<&str>, resource: &str, extra: &[(&str, Value)]) {
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

    pub(crate) fn finish(mut self) -> String {
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
pub(crate) fn full_url(base: &str, v: &Version) -> String {
    format!("{base}/fhir/{}/{}", v.rtype, v.id)
}

#[cfg(test)]
mod tests {
    use super::*;

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
