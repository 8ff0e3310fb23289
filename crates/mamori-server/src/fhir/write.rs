//! Write interactions: create (also conditional), update, delete.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_core::fhir::profile::Severity;
use mamori_core::ids::ResourceType;
use mamori_service::records::write::{self, Step, WriteOp};
use mamori_service::records::{parse_etag, parse_id, parse_pairs, parse_type, validate_body};
use mamori_service::{ServiceError, Services};
use serde_json::{json, Value};

use super::{check_accept, check_content_type, format_param, parse_json, refuse, respond, version_headers};
use crate::http::{read_body, Caller, FhirError};

/// What the client asked back (`Prefer: return=`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Return {
    Minimal,
    Outcome,
    Representation,
}

fn prefer_return(headers: &HeaderMap) -> Return {
    let p = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if p.contains("return=minimal") {
        Return::Minimal
    } else if p.contains("return=OperationOutcome") {
        Return::Outcome
    } else {
        Return::Representation
    }
}

/// Runs one write and answers it.
async fn run(svc: Services, c: Caller, rtype: ResourceType, op: WriteOp, body: Option<Value>, ret: Return) -> Response {
    let step = match write::write(&svc, &c, rtype, op, body).await {
        Ok(s) => s.into_inner(),
        Err(e) => return FhirError(e).into_response(),
    };
    let base = &svc.base_url;
    match step {
        Step::Done { written, .. } if written.deleted => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", written.version)) {
                r.headers_mut().insert(header::ETAG, v);
            }
            r
        }
        Step::Done { written: w, findings, .. } => {
            let status = if w.created { StatusCode::CREATED } else { StatusCode::OK };
            let body = match ret {
                Return::Minimal => String::new(),
                Return::Outcome => {
                    // Profile findings a `warn` policy let through come first.
                    let mut issues: Vec<Value> = findings
                        .iter()
                        .map(|f| json!({"severity": f.severity.as_str(), "code": f.code, "diagnostics": f.message, "expression": [f.path]}))
                        .collect();
                    issues.push(json!({"severity": "information", "code": "informational",
                        "diagnostics": format!("{} {}/{} version {}", if w.created { "created" } else { "updated" }, w.rtype, w.id, w.version)}));
                    json!({"resourceType": "OperationOutcome", "issue": issues}).to_string()
                }
                Return::Representation => w.body.clone(),
            };
            let mut r = respond(status, body);
            version_headers(&mut r, base, w.rtype.as_str(), &w.id, w.version, w.last_updated);
            // With any other Prefer, a header says the resource does not
            // conform (ask for return=OperationOutcome to see why).
            let errors = findings.iter().filter(|f| f.severity == Severity::Error).count();
            if errors > 0 {
                let summary = format!("{errors} profile error(s); send Prefer: return=OperationOutcome for details");
                if let Ok(v) = HeaderValue::from_str(&summary) {
                    r.headers_mut().insert("x-mamori-profile-validation", v);
                }
            }
            if w.created {
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{base}/fhir/{}/{}/_history/{}", w.rtype, w.id, w.version))
                {
                    r.headers_mut().insert(header::LOCATION, v);
                }
            }
            r
        }
        Step::Matched { rtype, id, version, .. } => {
            let mut r = respond(
                StatusCode::OK,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "duplicate",
                    "diagnostics": format!("If-None-Exist matched {rtype}/{id}; nothing was created")}]})
                .to_string(),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("{base}/fhir/{rtype}/{id}/_history/{version}")) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            r
        }
        Step::NothingToDelete { existed: false } => {
            FhirError(ServiceError::NotFound("nothing to delete: the resource does not exist".into())).into_response()
        }
        Step::NothingToDelete { existed: true } => StatusCode::NO_CONTENT.into_response(),
    }
}

/// `POST /fhir/{type}`.
pub(crate) async fn create(
    State(svc): State<Services>,
    c: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let pre = async {
        let rtype = parse_type(&t)?;
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        // A condition in the query (as some clients send a conditional
        // create) would be silently ignored and create a duplicate.
        if let Some((k, _)) = pairs.iter().find(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")) {
            return Err(ServiceError::invalid(
                k,
                format!(
                    "a create takes no search parameters in its URL ('{}'); a conditional create gives its search in the If-None-Exist header",
                    k.chars().take(40).collect::<String>()
                ),
            ));
        }
        check_content_type(&headers)?;
        let v = parse_json(&read_body(body, limit).await?)?;
        validate_body(rtype, &v)?;
        let ine = headers
            .get("if-none-exist")
            .map(|h| h.to_str().map(str::to_owned).map_err(|_| ServiceError::invalid("If-None-Exist", "not ASCII")))
            .transpose()?;
        Ok::<_, ServiceError>((rtype, v, ine))
    }
    .await;
    match pre {
        Ok((rtype, v, ine)) => {
            run(svc, c, rtype, WriteOp::Create { if_none_exist: ine }, Some(v), prefer_return(&headers)).await
        }
        Err(e) => refuse(&svc, &c, "create", Some(&t), None, e).await,
    }
}

/// The `If-Match` version, if the request has one.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ServiceError> {
    headers
        .get(header::IF_MATCH)
        .map(|h| h.to_str().map_err(|_| ServiceError::invalid("If-Match", "not ASCII")).and_then(parse_etag))
        .transpose()
}

/// `PUT /fhir/{type}/{id}`.
pub(crate) async fn update(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let pre = async {
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        check_accept(&headers, None)?;
        check_content_type(&headers)?;
        let if_match = if_match(&headers)?;
        let v = parse_json(&read_body(body, limit).await?)?;
        validate_body(rtype, &v)?;
        match v.get("id").and_then(Value::as_str) {
            Some(bid) if bid == id => {}
            Some(bid) => {
                return Err(ServiceError::invalid(
                    &format!("{rtype}.id"),
                    format!("body id '{bid}' does not match the URL id '{id}'"),
                ))
            }
            None => {
                return Err(ServiceError::invalid(
                    &format!("{rtype}.id"),
                    "an update must carry the resource id in the body",
                ))
            }
        }
        Ok::<_, ServiceError>((rtype, v, if_match))
    }
    .await;
    match pre {
        Ok((rtype, v, if_match)) => {
            run(svc, c, rtype, WriteOp::Update { id, if_match }, Some(v), prefer_return(&headers)).await
        }
        Err(e) => refuse(&svc, &c, "update", Some(&t), Some(&id), e).await,
    }
}

/// `PATCH /fhir/{type}/{id}` with a JSON Patch (RFC 6902) or a FHIRPath
/// Patch.
pub(crate) async fn patch(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let pre = async {
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        let (patch, if_match) = patch_body(&headers, body, limit).await?;
        Ok::<_, ServiceError>((rtype, patch, if_match))
    }
    .await;
    match pre {
        Ok((rtype, patch, if_match)) => {
            run(svc, c, rtype, WriteOp::Patch { id, if_match, patch }, None, prefer_return(&headers)).await
        }
        Err(e) => refuse(&svc, &c, "patch", Some(&t), Some(&id), e).await,
    }
}

/// `PATCH /fhir/{type}?search`: the patch of the one resource the search
/// matches (decided like a plain patch); none: 404; several: 412.
pub(crate) async fn conditional_patch(
    State(svc): State<Services>,
    c: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let query = q.unwrap_or_default();
    let pre = async {
        let rtype = parse_type(&t)?;
        require_search(&query, "a patch", "PATCH")?;
        let (patch, if_match) = patch_body(&headers, body, limit).await?;
        Ok::<_, ServiceError>((rtype, patch, if_match))
    }
    .await;
    match pre {
        Ok((rtype, patch, if_match)) => {
            let op = WriteOp::ConditionalPatch { query, if_match, patch };
            run(svc, c, rtype, op, None, prefer_return(&headers)).await
        }
        Err(e) => refuse(&svc, &c, "patch", Some(&t), None, e).await,
    }
}

/// A PATCH request's patch (JSON Patch or FHIRPath Patch, as its
/// Content-Type says) and its `If-Match` version.
async fn patch_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<(Value, Option<u64>), ServiceError> {
    check_accept(headers, None)?;
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    // JSON Patch (an array of operations) or FHIRPath Patch (a
    // Parameters resource); the body must be what its type says.
    let json_patch = match mime.as_str() {
        "application/json-patch+json" => true,
        "application/fhir+json" | "application/json" => false,
        _ => {
            return Err(ServiceError::UnsupportedMediaType(format!(
                "Content-Type '{ct}' is not supported for PATCH; send a JSON Patch as application/json-patch+json or a FHIRPath Patch (Parameters) as application/fhir+json"
            )))
        }
    };
    let if_match = if_match(headers)?;
    let patch = parse_json(&read_body(body, limit).await?)?;
    if json_patch != patch.is_array() {
        return Err(ServiceError::invalid(
            "",
            if json_patch {
                "application/json-patch+json: the body must be an array of operations"
            } else {
                "a FHIRPath Patch is a Parameters resource (or send a JSON Patch as application/json-patch+json)"
            },
        ));
    }
    Ok((patch, if_match))
}

/// `PUT /fhir/{type}?search`: conditional update.
pub(crate) async fn conditional_update(
    State(svc): State<Services>,
    c: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.cfg.server.body_limit_bytes;
    let query = q.unwrap_or_default();
    let pre = async {
        let rtype = parse_type(&t)?;
        require_search(&query, "an update", "PUT")?;
        check_accept(&headers, None)?;
        check_content_type(&headers)?;
        let if_match = if_match(&headers)?;
        let v = parse_json(&read_body(body, limit).await?)?;
        validate_body(rtype, &v)?;
        Ok::<_, ServiceError>((rtype, v, if_match))
    }
    .await;
    match pre {
        Ok((rtype, v, if_match)) => {
            let op = WriteOp::ConditionalUpdate { query, if_match };
            run(svc, c, rtype, op, Some(v), prefer_return(&headers)).await
        }
        Err(e) => refuse(&svc, &c, "update", Some(&t), None, e).await,
    }
}

/// `DELETE /fhir/{type}?search`: conditional delete (of a single match).
pub(crate) async fn conditional_delete(
    State(svc): State<Services>,
    c: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let query = q.unwrap_or_default();
    let pre = parse_type(&t).and_then(|r| require_search(&query, "a delete", "DELETE").map(|()| r));
    match pre {
        Ok(rtype) => run(svc, c, rtype, WriteOp::ConditionalDelete { query }, None, Return::Representation).await,
        Err(e) => refuse(&svc, &c, "delete", Some(&t), None, e).await,
    }
}

/// `DELETE /fhir/{type}/{id}`.
pub(crate) async fn delete(State(svc): State<Services>, c: Caller, Path((t, id)): Path<(String, String)>) -> Response {
    let pre = parse_type(&t).and_then(|r| parse_id(&id).map(|()| r));
    match pre {
        Ok(rtype) => run(svc, c, rtype, WriteOp::Delete { id }, None, Return::Representation).await,
        Err(e) => refuse(&svc, &c, "delete", None, None, e).await,
    }
}

/// A conditional write's search; refused when the URL has none.
fn require_search(query: &str, what: &str, method: &str) -> Result<(), ServiceError> {
    if query.is_empty() {
        return Err(ServiceError::invalid(
            "",
            format!("{what} needs an id ({method} /fhir/{{type}}/{{id}}) or a search ({method} /fhir/{{type}}?…)"),
        ));
    }
    Ok(())
}
