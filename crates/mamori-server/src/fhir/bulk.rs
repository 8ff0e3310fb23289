//! FHIR Bulk Data export over HTTP: the kick-off, the status URL and the
//! output files (Bulk Data Access IG v2). The decisions, the job and the
//! audit events are in `mamori_service::bulk`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_service::bulk::{self, Level, Status};
use mamori_service::records::parse_pairs;
use mamori_service::{ServiceError, Services};
use serde_json::json;

use super::{check_accept, format_param, refuse, respond};
use crate::http::{read_body, Caller, FhirError};

/// `GET /fhir/$export`.
pub(crate) async fn system(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    kickoff(svc, c, Level::System, "$export", q, headers).await
}

/// `GET /fhir/Patient/$export`.
pub(crate) async fn patient(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    kickoff(svc, c, Level::Patient, "Patient/$export", q, headers).await
}

/// `GET /fhir/Group/{id}/$export` (dispatched from the instance operations).
pub(crate) async fn group(svc: Services, c: Caller, id: String, q: Option<String>, headers: HeaderMap) -> Response {
    let path = format!("Group/{id}/$export");
    kickoff(svc, c, Level::Group(id), &path, q, headers).await
}

/// `POST /fhir/$export` with a Parameters body.
pub(crate) async fn system_post(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    kickoff_post(svc, c, Level::System, "$export", q, headers, body).await
}

/// `POST /fhir/Patient/$export` with a Parameters body.
pub(crate) async fn patient_post(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    kickoff_post(svc, c, Level::Patient, "Patient/$export", q, headers, body).await
}

/// `POST /fhir/Group/{id}/$export` with a Parameters body (no other
/// operation is posted to an instance).
pub(crate) async fn instance_post(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id, op)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if op == "$validate" {
        return validate_instance(svc, c, t, id, q, headers, body).await;
    }
    if t != "Group" || op != "$export" {
        let e = ServiceError::MethodNotAllowed("only Group/{id}/$export takes a POST here".into());
        return refuse(&svc, &c, "operation", None, None, e).await;
    }
    let path = format!("Group/{id}/$export");
    kickoff_post(svc, c, Level::Group(id), &path, q, headers, body).await
}

/// `POST [type]/[id]/$validate`: the body (a resource or a Parameters
/// with one) validated as an update of that instance.
async fn validate_instance(
    svc: Services,
    c: Caller,
    t: String,
    id: String,
    q: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let r = async {
        let rtype = mamori_service::records::parse_type(&t)?;
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        let params = super::read::validate_params(&pairs)?;
        let bytes = read_body(body, svc.cfg.server.body_limit_bytes).await?;
        // A delete is checked without a body (one sent is ignored).
        let body = if bytes.is_empty() && params.1.as_deref() == Some("delete") {
            serde_json::Value::Null
        } else {
            super::check_content_type(&headers)?;
            super::parse_json(&bytes)?
        };
        Ok::<_, ServiceError>((rtype, body, params))
    }
    .await;
    match r {
        Ok((rtype, body, (profiles, mode))) => {
            match mamori_service::conformance::validate_update(&svc, &c, rtype, &id, &body, &profiles, mode.as_deref())
                .await
            {
                Ok(v) => respond(StatusCode::OK, v.to_string()),
                Err(e) => FhirError(e).into_response(),
            }
        }
        Err(e) => refuse(&svc, &c, "validate", Some(&t), None, e).await,
    }
}

async fn kickoff_post(
    svc: Services,
    c: Caller,
    level: Level,
    path: &str,
    q: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let parsed = async {
        super::check_content_type(&headers)?;
        let bytes = read_body(body, 1 << 20).await?;
        let v = super::parse_json(&bytes)?;
        let mut pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        pairs.extend(bulk::pairs_of_parameters(&v)?);
        check_accept(&headers, format_param(&pairs))?;
        Ok::<_, ServiceError>(pairs)
    }
    .await;
    let pairs = match parsed {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "export-kickoff", None, None, e).await,
    };
    let request = format!("{}/fhir/{path}", svc.base_url);
    answer_kickoff(&svc, &c, level, &pairs, &headers, &request).await
}

async fn kickoff(
    svc: Services,
    c: Caller,
    level: Level,
    path: &str,
    q: Option<String>,
    headers: HeaderMap,
) -> Response {
    let pairs = match parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "export-kickoff", None, None, e).await,
    };
    let request = match q.as_deref().filter(|q| !q.is_empty()) {
        Some(q) => format!("{}/fhir/{path}?{q}", svc.base_url),
        None => format!("{}/fhir/{path}", svc.base_url),
    };
    answer_kickoff(&svc, &c, level, &pairs, &headers, &request).await
}

async fn answer_kickoff(
    svc: &Services,
    c: &Caller,
    level: Level,
    pairs: &[(String, String)],
    headers: &HeaderMap,
    request: &str,
) -> Response {
    let prefer = headers.get("prefer").and_then(|v| v.to_str().ok());
    match bulk::kickoff(svc, c, level, pairs, prefer, request).await {
        Ok(k) => {
            let mut r = (StatusCode::ACCEPTED, "").into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("{}/fhir/$export-status/{}", svc.base_url, k.id)) {
                r.headers_mut().insert(header::CONTENT_LOCATION, v);
            }
            r
        }
        Err(e) => FhirError(e).into_response(),
    }
}

/// `GET /fhir/$export-status/{id}`: 202 with `X-Progress` while it runs,
/// 200 with the manifest when complete, 500 with an OperationOutcome if it
/// failed.
pub(crate) async fn status(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> Response {
    match bulk::status(&svc, &c, &id).await {
        Ok(Status::InProgress(p)) => {
            let mut r = (StatusCode::ACCEPTED, "").into_response();
            let progress: String = p.chars().filter(|ch| !ch.is_control()).take(100).collect();
            if let Ok(v) = HeaderValue::from_str(&progress) {
                r.headers_mut().insert("x-progress", v);
            }
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            r
        }
        Ok(Status::Complete(manifest, expires)) => {
            let mut r = (StatusCode::OK, manifest.to_string()).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if let Ok(v) = HeaderValue::from_str(&mamori_service::exchange::http_date(expires)) {
                r.headers_mut().insert(header::EXPIRES, v);
            }
            r
        }
        Ok(Status::Failed(why)) => {
            let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception", "diagnostics": why}]});
            respond(StatusCode::INTERNAL_SERVER_ERROR, oo.to_string())
        }
        Err(e) => FhirError(e).into_response(),
    }
}

/// `DELETE /fhir/$export-status/{id}`: cancels the export (202).
pub(crate) async fn cancel(State(svc): State<Services>, c: Caller, Path(id): Path<String>) -> Response {
    match bulk::cancel(&svc, &c, &id).await {
        Ok(()) => (StatusCode::ACCEPTED, "").into_response(),
        Err(e) => FhirError(e).into_response(),
    }
}

/// `GET /fhir/$export-file/{id}/{n}`: one NDJSON output file.
pub(crate) async fn file(State(svc): State<Services>, c: Caller, Path((id, n)): Path<(String, String)>) -> Response {
    match bulk::file(&svc, &c, &id, &n).await {
        Ok(f) => {
            let f = f.into_inner();
            let mut r = (StatusCode::OK, f.body).into_response();
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
            r
        }
        Err(e) => FhirError(e).into_response(),
    }
}
