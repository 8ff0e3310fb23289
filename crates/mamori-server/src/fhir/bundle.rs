//! `POST /fhir`: batch and transaction Bundles.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_service::records::bundle::{self, BundleKind, EntryResult};
use mamori_service::records::parse_pairs;
use mamori_service::Services;
use serde_json::{json, Value};

use super::{check_accept, check_content_type, format_param, parse_json, refuse, respond};
use crate::http::{read_body, Caller, FhirError};

fn status_text(s: u16) -> String {
    let reason = StatusCode::from_u16(s).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
    format!("{s} {reason}").trim_end().to_owned()
}

fn response_bundle(kind: BundleKind, results: &[EntryResult]) -> Value {
    let entries: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut resp = json!({"status": status_text(r.status)});
            if let Some(l) = &r.location {
                resp["location"] = json!(l);
            }
            if let Some(e) = &r.etag {
                resp["etag"] = json!(e);
            }
            if let Some(m) = &r.last_modified {
                resp["lastModified"] = json!(m);
            }
            if let Some((code, issues)) = &r.error {
                let issues: Vec<Value> = issues
                    .iter()
                    .map(|(msg, path)| {
                        let mut i = json!({"severity": "error", "code": code, "diagnostics": msg});
                        if let Some(p) = path {
                            i["expression"] = json!([p]);
                        }
                        i
                    })
                    .collect();
                resp["outcome"] = json!({"resourceType": "OperationOutcome", "issue": issues});
            }
            let mut entry = json!({"response": resp});
            if let Some(res) = &r.resource {
                entry["resource"] = res.clone();
            }
            entry
        })
        .collect();
    let kind = match kind {
        BundleKind::Transaction => "transaction-response",
        BundleKind::Batch => "batch-response",
    };
    let mut b = json!({"resourceType": "Bundle", "type": kind});
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// `POST /fhir`.
pub(crate) async fn batch_or_transaction(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let pre = async {
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        check_content_type(&headers)?;
        parse_json(&read_body(body, limit).await?)
    }
    .await;
    let v = match pre {
        Ok(v) => v,
        Err(e) => return refuse(&svc, &c, "transaction", Some("Bundle"), None, e).await,
    };
    match bundle::run(&svc, &c, v).await {
        Ok(r) => {
            let (kind, results) = r.into_inner();
            respond(StatusCode::OK, response_bundle(kind, &results).to_string())
        }
        Err(e) => FhirError(e).into_response(),
    }
}
