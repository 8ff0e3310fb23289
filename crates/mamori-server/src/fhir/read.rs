//! Read interactions: read, vread, history, search, `$everything`, the
//! audit log as AuditEvent, and `Patient/$merge` (a POST on the type).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_core::fhir::subset::Subset;
use mamori_service::continuity::merge;
use mamori_service::records::read::{self, HistoryQuery};
use mamori_service::records::{enc, parse_pairs, parse_type};
use mamori_service::{audit, Audited, ServiceError, Services};
use mamori_store::records::Version;
use serde_json::json;

use super::{check_accept, format_param, full_url, refuse, respond, version_headers, BundleWriter};
use crate::http::{read_body, Caller, FhirError};

/// The answer of a read of one version: 304 without the body when the
/// client's copy is current (`If-None-Match` with its ETag, or else
/// `If-Modified-Since` not before its last update). The read was decided
/// and audited either way.
fn version_response(svc: &Services, v: Audited<Version>, headers: &HeaderMap, subset: &Subset) -> Response {
    let v = v.into_inner();
    let mut r = if not_modified(headers, &v) {
        (StatusCode::NOT_MODIFIED, "").into_response()
    } else {
        respond(StatusCode::OK, subset.apply(&v.body).unwrap_or(v.body))
    };
    version_headers(&mut r, &svc.base_url, &v.rtype, &v.id, v.version, v.last_updated);
    r
}

/// `_elements` and `_summary=data` of a read.
fn subset_of(rtype: &str, pairs: &[(String, String)]) -> Result<Subset, ServiceError> {
    let mut s = Subset::default();
    for (k, v) in pairs {
        match k.as_str() {
            "_elements" => {
                s.elements = Some(Subset::parse_elements(v).map_err(|e| ServiceError::invalid("_elements", e))?)
            }
            "_summary" if v == "count" => {
                return Err(ServiceError::invalid(
                    "_summary",
                    "count is for searches; a read supports true, text, data, false",
                ))
            }
            "_summary" => mamori_core::fhir::subset::parse_summary(rtype, v, &mut s)
                .map_err(|e| ServiceError::invalid("_summary", e))?,
            _ => {}
        }
    }
    Ok(s)
}

fn not_modified(headers: &HeaderMap, v: &Version) -> bool {
    let text = |h| headers.get(h).and_then(|x: &axum::http::HeaderValue| x.to_str().ok());
    if let Some(tags) = text(axum::http::header::IF_NONE_MATCH) {
        let mine = format!("\"{}\"", v.version);
        return tags.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == mine);
    }
    text(axum::http::header::IF_MODIFIED_SINCE)
        .and_then(mamori_service::exchange::parse_http_date)
        .is_some_and(|since| v.last_updated.secs() <= since.secs())
}

fn fhir_err(e: ServiceError) -> Response {
    FhirError(e).into_response()
}

/// `GET /fhir/{type}/{id}` or `/fhir/{type}/_history`.
pub(crate) async fn read_or_history(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if id == "_history" {
        return history(svc, c, t, None, q, headers).await;
    }
    let pre = parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).and_then(|()| subset_of(&t, &p)));
    let subset = match pre {
        Ok(s) => s,
        Err(e) => return refuse(&svc, &c, "read", Some(&t), Some(&id), e).await,
    };
    if mamori_service::conformance::serves(&svc, &t, None) {
        if let Ok(rtype) = parse_type(&t) {
            match mamori_service::conformance::read_definition(&svc, &c, rtype, &id).await {
                Ok(Some(v)) => return respond(StatusCode::OK, v.to_string()),
                Ok(None) => {}
                Err(e) => return fhir_err(e),
            }
        }
    }
    if t == "AuditEvent" {
        return match audit::fhir_read(&svc, &c, &id).await {
            Ok(ev) => respond(StatusCode::OK, ev.into_inner().to_string()),
            Err(e) => fhir_err(e),
        };
    }
    match read::read(&svc, &c, &t, &id).await {
        Ok(v) => version_response(&svc, v, &headers, &subset),
        Err(e) => fhir_err(e),
    }
}

/// `GET /fhir/{type}/{id}/_history/{vid}`.
pub(crate) async fn vread(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id, vid)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pre = parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).and_then(|()| subset_of(&t, &p)));
    let subset = match pre {
        Ok(s) => s,
        Err(e) => return refuse(&svc, &c, "vread", Some(&t), Some(&id), e).await,
    };
    match read::vread(&svc, &c, &t, &id, &vid).await {
        Ok(v) => version_response(&svc, v, &headers, &subset),
        Err(e) => fhir_err(e),
    }
}

/// `GET /fhir/{type}/{id}/_history` and `/fhir/Patient/{id}/$everything`.
/// The query of `$validate`: its profiles and its `mode` (checked by the
/// service against the level).
pub(crate) fn validate_params(pairs: &[(String, String)]) -> Result<(Vec<String>, Option<String>), ServiceError> {
    if let Some((k, v)) = pairs.iter().find(|(k, _)| !matches!(k.as_str(), "profile" | "mode" | "_format" | "_pretty"))
    {
        return Err(ServiceError::invalid(k, format!("$validate takes profile= and mode=, not {k}={v}")));
    }
    let mut modes = pairs.iter().filter(|(k, _)| k == "mode").map(|(_, v)| v.clone());
    let mode = modes.next();
    if modes.next().is_some() {
        return Err(ServiceError::invalid("mode", "mode= is given more than once"));
    }
    Ok((pairs.iter().filter(|(k, _)| k == "profile").map(|(_, v)| v.clone()).collect(), mode))
}

pub(crate) async fn instance_op(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id, op)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    match op.as_str() {
        "_history" => history(svc, c, t, Some(id), q, headers).await,
        "$everything" if t == "Patient" => everything(svc, c, id, q, headers).await,
        "$clins-bundle" if t == "Patient" => clins_bundle(svc, c, id, q, headers).await,
        "$export" if t == "Group" => super::bulk::group(svc, c, id, q, headers).await,
        "$validate" => {
            let r = async {
                let rtype = parse_type(&t)?;
                let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
                super::check_accept(&headers, super::format_param(&pairs))?;
                Ok((rtype, validate_params(&pairs)?))
            }
            .await;
            match r {
                Ok((rtype, (profiles, mode))) => {
                    match mamori_service::conformance::validate_stored(&svc, &c, rtype, &id, &profiles, mode.as_deref())
                        .await
                    {
                        Ok(v) => respond(StatusCode::OK, v.to_string()),
                        Err(e) => fhir_err(e),
                    }
                }
                Err(e) => refuse(&svc, &c, "validate", Some(&t), None, e).await,
            }
        }
        _ => {
            let e = ServiceError::NotFound(format!(
                "operation '{}' is not supported on {}",
                op.chars().take(40).collect::<String>(),
                t.chars().take(40).collect::<String>()
            ));
            refuse(&svc, &c, "operation", None, None, e).await
        }
    }
}

fn history_entry(b: &mut BundleWriter, base: &str, v: &Version) {
    let (method, status) = if v.deleted {
        ("DELETE", "204")
    } else if v.version == 1 {
        ("POST", "201")
    } else {
        ("PUT", "200")
    };
    let url = if v.version == 1 && !v.deleted { v.rtype.clone() } else { format!("{}/{}", v.rtype, v.id) };
    b.entry(
        Some(&full_url(base, v)),
        if v.deleted { "" } else { &v.body },
        &[
            ("request", json!({"method": method, "url": url})),
            ("response", json!({"status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": v.last_updated.to_rfc3339()})),
        ],
    );
}

async fn history(
    svc: Services,
    c: Caller,
    t: String,
    id: Option<String>,
    q: Option<String>,
    headers: HeaderMap,
) -> Response {
    let action = if id.is_some() { "history-instance" } else { "history-type" };
    let params = match parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, action, Some(&t), id.as_deref(), e).await,
    };
    let page = match read::history(&svc, &c, HistoryQuery { rtype: t, id, params }).await {
        Ok(p) => p.into_inner(),
        Err(e) => return fhir_err(e),
    };
    let base = &svc.base_url;
    let path = match &page.id {
        Some(i) => format!("{base}/fhir/{}/{i}/_history", page.rtype),
        None => format!("{base}/fhir/{}/_history", page.rtype),
    };
    let b = history_bundle(base, &path, page.count, page.next, &page.versions);
    respond(StatusCode::OK, b.finish())
}

/// A history Bundle of `versions` at `path`, with its self and next links.
fn history_bundle(base: &str, path: &str, count: usize, next: Option<i64>, versions: &[Version]) -> BundleWriter {
    let mut links = vec![("self", format!("{path}?_count={count}"))];
    if let Some(n) = next {
        links.push(("next", format!("{path}?_count={count}&_cursor={n}")));
    }
    let mut b = BundleWriter::new("history", None, &links);
    for v in versions {
        history_entry(&mut b, base, v);
    }
    b
}

/// `GET /fhir/_history`: the whole server's history.
pub(crate) async fn system_history(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params = match parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "history-system", None, None, e).await,
    };
    let page = match read::history_system(&svc, &c, params).await {
        Ok(p) => p.into_inner(),
        Err(e) => return fhir_err(e),
    };
    let base = &svc.base_url;
    let path = format!("{base}/fhir/_history");
    let mut b = history_bundle(base, &path, page.count, page.next, &page.versions);
    if page.withheld > 0 {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed",
            "diagnostics": format!("{} version(s) on this page withheld: you may not see them", page.withheld)}]});
        b.entry(None, &oo.to_string(), &[]);
    }
    respond(StatusCode::OK, b.finish())
}

/// `GET /fhir/{type}`.
pub(crate) async fn search_get(
    State(svc): State<Services>,
    c: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    if let (Ok(p), Ok(rtype)) = (&pairs, parse_type(&t)) {
        if mamori_service::conformance::serves(&svc, &t, Some(p)) {
            if let Err(e) = check_accept(&headers, format_param(p)) {
                return refuse(&svc, &c, "search", Some(&t), None, e).await;
            }
            return match mamori_service::conformance::search_definitions(&svc, &c, rtype, p).await {
                Ok((found, count)) => {
                    let self_url = format!("{}/fhir/{t}?{}", svc.base_url, q.as_deref().unwrap_or(""));
                    let mut b = BundleWriter::new("searchset", Some(found.len() as u64), &[("self", self_url)]);
                    for r in found.iter().take(count) {
                        let url = format!("{}/fhir/{t}/{}", svc.base_url, r["id"].as_str().unwrap_or_default());
                        b.entry(Some(&url), &r.to_string(), &[("search", json!({"mode": "match"}))]);
                    }
                    respond(StatusCode::OK, b.finish())
                }
                Err(e) => fhir_err(e),
            };
        }
    }
    search(svc, c, t, pairs, headers).await
}

/// `POST /fhir/{type}/_search` (form-encoded parameters) and
/// `POST /fhir/Patient/$merge`.
pub(crate) async fn search_post(
    State(svc): State<Services>,
    c: Caller,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if t == "Patient" && id == "$merge" {
        let params = async {
            super::check_content_type(&headers)?;
            let bytes = read_body(body, svc.cfg.server.body_limit_bytes).await?;
            super::parse_json(&bytes)
        }
        .await;
        return match merge::fhir_merge(&svc, &c, params).await {
            Ok(v) => respond(StatusCode::OK, v.to_string()),
            Err(e) => fhir_err(e),
        };
    }
    if id == "$validate" {
        let r = async {
            let rtype = parse_type(&t)?;
            let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
            super::check_accept(&headers, super::format_param(&pairs))?;
            super::check_content_type(&headers)?;
            let body = super::parse_json(&read_body(body, svc.cfg.server.body_limit_bytes).await?)?;
            Ok((rtype, body, validate_params(&pairs)?))
        }
        .await;
        return match r {
            Ok((rtype, body, (profiles, mode))) => {
                match mamori_service::conformance::validate_op(&svc, &c, rtype, &body, &profiles, mode.as_deref()).await
                {
                    Ok(v) => respond(StatusCode::OK, v.to_string()),
                    Err(e) => fhir_err(e),
                }
            }
            Err(e) => refuse(&svc, &c, "validate", Some(&t), None, e).await,
        };
    }
    if id != "_search" {
        let e = ServiceError::MethodNotAllowed("POST to an instance is not supported; use PUT to update".into());
        return refuse(&svc, &c, "operation", None, None, e).await;
    }
    let pairs = form_pairs(&headers, q, body).await;
    search(svc, c, t, pairs, headers).await
}

/// The parameters of a `POST …/_search`: the query's and the form body's.
async fn form_pairs(headers: &HeaderMap, q: Option<String>, body: Body) -> Result<Vec<(String, String)>, ServiceError> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return Err(ServiceError::UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded".into()));
    }
    let bytes = read_body(body, 1 << 20).await?;
    let form = std::str::from_utf8(&bytes).map_err(|_| ServiceError::invalid("", "form body is not UTF-8"))?;
    let mut all = parse_pairs(q.as_deref().unwrap_or(""))?;
    all.extend(parse_pairs(form)?);
    Ok(all)
}

async fn search(
    svc: Services,
    c: Caller,
    t: String,
    pairs: Result<Vec<(String, String)>, ServiceError>,
    headers: HeaderMap,
) -> Response {
    let pairs = pairs.and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p));
    if t == "AuditEvent" {
        return match audit::fhir_search(&svc, &c, pairs).await {
            Ok(page) => audit_page(&svc, page),
            Err(e) => fhir_err(e),
        };
    }
    let pairs = match pairs {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "search-type", Some(&t), None, e).await,
    };
    // Unknown parameters are ignored and reported unless the client asks
    // for strict handling (FHIR R4 search 3.1.1.5: lenient by default).
    let r = match read::search(&svc, &c, &t, pairs, lenient(&headers)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return fhir_err(e),
    };
    let base = &svc.base_url;
    let self_url = format!("{base}/fhir/{}?{}", r.query.rtype, r.query_text);
    let sep = if r.query_text.is_empty() { "" } else { "&" };
    let mut links = vec![("self", self_url.clone())];
    if let Some(n) = &r.page.next {
        links.push(("next", format!("{self_url}{sep}_cursor={}", enc(&n.encode()))));
    }
    if let Some(p) = &r.page.prev {
        links.push(("previous", format!("{self_url}{sep}_before={}", enc(&p.encode()))));
    }
    let mut b = BundleWriter::new("searchset", r.page.total, &links);
    let subset = &r.query.subset;
    for v in &r.page.entries {
        let body = subset.apply(&v.body);
        b.entry(Some(&full_url(base, v)), body.as_deref().unwrap_or(&v.body), &[("search", json!({"mode": "match"}))]);
    }
    for v in &r.included.resources {
        let body = subset.apply(&v.body);
        b.entry(
            Some(&full_url(base, v)),
            body.as_deref().unwrap_or(&v.body),
            &[("search", json!({"mode": "include"}))],
        );
    }
    let mut issues = Vec::new();
    if r.withheld > 0 {
        issues.push(json!({"severity": "information", "code": "suppressed",
            "diagnostics": format!("{} matching resource(s) withheld: they also concern a patient you may not see", r.withheld)}));
    }
    if r.included.withheld > 0 {
        issues.push(json!({"severity": "information", "code": "suppressed",
            "diagnostics": format!("{} included resource(s) withheld: you may not read them", r.included.withheld)}));
    }
    if r.included.cut {
        issues.push(json!({"severity": "information", "code": "too-costly",
            "diagnostics": format!("at most {} resources are included per page; ask for smaller pages", mamori_core::fhir::search::MAX_INCLUDED)}));
    }
    for p in &r.ignored {
        issues.push(json!({"severity": "warning", "code": "not-supported",
            "diagnostics": format!("search parameter '{p}' is not supported and was ignored (send Prefer: handling=strict to have it refused)")}));
    }
    if !issues.is_empty() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": issues});
        b.entry(None, &oo.to_string(), &[("search", json!({"mode": "outcome"}))]);
    }
    respond(StatusCode::OK, b.finish())
}

/// Whether the client asked for strict handling of unknown parameters.
fn lenient(headers: &HeaderMap) -> bool {
    !headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split(';').any(|x| x.trim() == "handling=strict"))
}

/// `GET /fhir?_type=…` and `POST /fhir/_search`: a system-level search,
/// each named type searched (decided and audited) as its own search.
pub(crate) async fn search_system_get(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    system_search(svc, c, pairs, headers).await
}

/// `POST /fhir/_search` (form-encoded parameters).
pub(crate) async fn search_system_post(
    State(svc): State<Services>,
    c: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let pairs = form_pairs(&headers, q, body).await;
    system_search(svc, c, pairs, headers).await
}

async fn system_search(
    svc: Services,
    c: Caller,
    pairs: Result<Vec<(String, String)>, ServiceError>,
    headers: HeaderMap,
) -> Response {
    let pairs = match pairs.and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p)) {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "search-system", None, None, e).await,
    };
    let r = match mamori_service::records::system::search_system(&svc, &c, pairs, lenient(&headers)).await {
        Ok(r) => r,
        Err(e) => return fhir_err(e),
    };
    let base = &svc.base_url;
    let self_url = format!("{base}/fhir?{}", r.query_text);
    let mut links = vec![("self", self_url.clone())];
    if let Some(n) = &r.next {
        links.push(("next", format!("{self_url}&_cursor={}", enc(n))));
    }
    let mut b = BundleWriter::new("searchset", r.total, &links);
    for (v, body) in &r.entries {
        b.entry(Some(&full_url(base, v)), body, &[("search", json!({"mode": "match"}))]);
    }
    let mut issues = Vec::new();
    if r.withheld > 0 {
        issues.push(json!({"severity": "information", "code": "suppressed",
            "diagnostics": format!("{} matching resource(s) withheld: they also concern a patient you may not see", r.withheld)}));
    }
    for p in &r.ignored {
        issues.push(json!({"severity": "warning", "code": "not-supported",
            "diagnostics": format!("search parameter '{p}' is not supported and was ignored (send Prefer: handling=strict to have it refused)")}));
    }
    if !issues.is_empty() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": issues});
        b.entry(None, &oo.to_string(), &[("search", json!({"mode": "outcome"}))]);
    }
    respond(StatusCode::OK, b.finish())
}

fn audit_page(svc: &Services, page: Audited<audit::EventPage>) -> Response {
    let page = page.into_inner();
    let base = &svc.base_url;
    let self_url = format!("{base}/fhir/AuditEvent?{}", page.query);
    let sep = if page.query.is_empty() { "" } else { "&" };
    let mut links = vec![("self", self_url.clone())];
    if let Some(last) = page.next {
        links.push(("next", format!("{self_url}{sep}_count={}&_cursor={last}", page.limit)));
    }
    let mut b = BundleWriter::new("searchset", Some(page.total), &links);
    for (idx, ev) in &page.events {
        b.entry(
            Some(&format!("{base}/fhir/AuditEvent/{idx}")),
            &ev.to_string(),
            &[("search", json!({"mode": "match"}))],
        );
    }
    respond(StatusCode::OK, b.finish())
}

/// `GET /fhir/Patient/{id}/$clins-bundle?item=…`: the JP-CLINS bundle of
/// one clinical information item.
async fn clins_bundle(svc: Services, c: Caller, id: String, q: Option<String>, headers: HeaderMap) -> Response {
    let params = match parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "operation", Some("Patient"), Some(&id), e).await,
    };
    match read::clins_bundle(&svc, &c, &id, &params).await {
        Ok(b) => respond(StatusCode::OK, b.into_inner().to_string()),
        Err(e) => fhir_err(e),
    }
}

/// `GET /fhir/Patient/{id}/$everything`.
async fn everything(svc: Services, c: Caller, id: String, q: Option<String>, headers: HeaderMap) -> Response {
    let params = match parse_pairs(q.as_deref().unwrap_or(""))
        .and_then(|p| check_accept(&headers, format_param(&p)).map(|()| p))
    {
        Ok(p) => p,
        Err(e) => return refuse(&svc, &c, "operation", Some("Patient"), None, e).await,
    };
    let page = match read::everything(&svc, &c, &id, &params).await {
        Ok(p) => p.into_inner(),
        Err(e) => return fhir_err(e),
    };
    let base = &svc.base_url;
    let self_url = format!("{base}/fhir/Patient/{}/$everything?_count={}", page.patient, page.count);
    let mut links = vec![("self", self_url.clone())];
    if let Some(n) = &page.next {
        links.push(("next", format!("{self_url}&_cursor={}", enc(n))));
    }
    let mut b = BundleWriter::new("searchset", None, &links);
    for v in &page.rows {
        b.entry(Some(&full_url(base, v)), &v.body, &[("search", json!({"mode": "match"}))]);
    }
    respond(StatusCode::OK, b.finish())
}
