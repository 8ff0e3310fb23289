//! Read interactions: read, vread, history, search, `$everything`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_audit::event::AuditRecord;
use mamori_core::fhir::search::{parse_query, Clause, Cond, SearchQuery, MAX_COUNT};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{decide, Action, Decision, Obligation, PatientScope, Target};
use mamori_core::time::Timestamp;
use mamori_store::records::{self, Version};
use mamori_store::search::{self, Restriction};
use serde_json::json;

use super::{
    check_accept, enc, facts, full_url, parse_id, parse_type, respond, search_target, target_of, version_headers,
    BundleWriter,
};
use crate::error::ApiError;
use crate::state::{AppState, Caller};

/// Writes the audit event, then answers: fail closed if it cannot be written.
pub async fn audited(st: &AppState, rec: AuditRecord, resp: Result<Response, ApiError>) -> Response {
    match st.store.writer().audit(vec![rec]).await {
        Ok(_) => resp.unwrap_or_else(IntoResponse::into_response),
        Err(e) => ApiError::from(e).into_response(),
    }
}

fn status_of(r: &Result<Response, ApiError>) -> u16 {
    match r {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status().as_u16(),
    }
}

/// Parses `a=b&c=d` (also a form body), percent-decoding.
pub fn parse_pairs(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        out.push((decode(k)?, decode(v)?));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, ApiError> {
    let mut bytes = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex =
                    s.get(i + 1..i + 3).ok_or_else(|| ApiError::bad("", "malformed percent-encoding in query"))?;
                bytes.push(
                    u8::from_str_radix(hex, 16)
                        .map_err(|_| ApiError::bad("", "malformed percent-encoding in query"))?,
                );
                i += 2;
            }
            c => bytes.push(c),
        }
        i += 1;
    }
    String::from_utf8(bytes).map_err(|_| ApiError::bad("", "query is not UTF-8"))
}

fn format_param(pairs: &[(String, String)]) -> Option<&str> {
    pairs.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str())
}

fn deny_error(d: &Decision, what: &str) -> ApiError {
    let mut msg = format!("access to {what} denied ({})", d.basis.as_str());
    if d.obligations.contains(&Obligation::WouldPermitInEmergency) {
        msg.push_str("; this is a drill: a declared emergency would have permitted this access");
    } else if d.basis == mamori_core::policy::Basis::NoCareRelationship {
        msg.push_str("; you have no care relationship with this patient. In an emergency, request break-glass access: POST /api/v1/break-glass");
    }
    ApiError::Forbidden(msg)
}

/// GET /fhir/{type}/{id} or /fhir/{type}/_history
pub async fn read_or_history(
    State(st): State<AppState>,
    caller: Caller,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    if id == "_history" {
        return history(st, caller, t, None, q, headers).await;
    }
    if t == "AuditEvent" {
        return super::audit_event::read(st, caller, id, headers).await;
    }
    let now = st.store.clock().now();
    let pre = (|| {
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        Ok::<_, ApiError>(rtype)
    })();
    let rtype = match pre {
        Ok(r) => r,
        Err(e) => {
            let rec = caller.fhir_record(
                "read",
                e.status().as_u16(),
                Some(&t).filter(|t| ResourceType::parse(t).is_ok()).map(String::as_str),
                None,
                None,
                vec![],
                None,
                now,
            );
            return audited(&st, rec, Err(e)).await;
        }
    };
    let c2 = caller.clone();
    let id2 = id.clone();
    let found = st
        .store
        .read(move |c| {
            let v = records::read(c, rtype.as_str(), &id2)?;
            let f = facts(c, &c2, v.as_ref().and_then(|v| v.patient.as_deref()), now)?;
            Ok((v, f))
        })
        .await;
    let (v, f) = match found {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(v) = v else {
        let e = ApiError::NotFound(format!("{rtype}/{id} does not exist"));
        let rec = caller.fhir_record("read", 404, Some(rtype.as_str()), Some(&id), None, vec![], None, now);
        return audited(&st, rec, Err(e)).await;
    };
    let d = decide(&caller.subject(), Action::Read, target_of(rtype, v.patient.as_deref()), &caller.mode(), f);
    let patients: Vec<String> = v.patient.clone().into_iter().collect();
    let resp = if !d.permit {
        Err(deny_error(&d, &format!("{rtype}/{id}")))
    } else if v.deleted {
        Err(ApiError::Gone(format!("{rtype}/{id} was deleted (version {})", v.version)))
    } else {
        let mut r = respond(StatusCode::OK, v.body.clone());
        version_headers(&mut r, &st.base_url, rtype.as_str(), &id, v.version, v.last_updated);
        Ok(r)
    };
    let rec = caller.fhir_record(
        "read",
        status_of(&resp),
        Some(rtype.as_str()),
        Some(&id),
        Some(v.version),
        patients,
        Some(&d),
        now,
    );
    audited(&st, rec, resp).await
}

/// GET /fhir/{type}/{id}/_history/{vid}
pub async fn vread(
    State(st): State<AppState>,
    caller: Caller,
    Path((t, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let now = st.store.clock().now();
    let pre = (|| {
        check_accept(&headers, None)?;
        let rtype = parse_type(&t)?;
        parse_id(&id)?;
        let v: u64 = vid.parse().map_err(|_| ApiError::bad("versionId", "version ids are positive integers"))?;
        Ok::<_, ApiError>((rtype, v))
    })();
    let (rtype, vn) = match pre {
        Ok(x) => x,
        Err(e) => {
            return audited(
                &st,
                caller.fhir_record("vread", e.status().as_u16(), None, None, None, vec![], None, now),
                Err(e),
            )
            .await
        }
    };
    let c2 = caller.clone();
    let id2 = id.clone();
    let found = st
        .store
        .read(move |c| {
            let v = records::vread(c, rtype.as_str(), &id2, vn)?;
            let f = facts(c, &c2, v.as_ref().and_then(|v| v.patient.as_deref()), now)?;
            Ok((v, f))
        })
        .await;
    let (v, f) = match found {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(v) = v else {
        let rec = caller.fhir_record("vread", 404, Some(rtype.as_str()), Some(&id), Some(vn), vec![], None, now);
        return audited(&st, rec, Err(ApiError::NotFound(format!("{rtype}/{id}/_history/{vn} does not exist")))).await;
    };
    let d = decide(&caller.subject(), Action::Read, target_of(rtype, v.patient.as_deref()), &caller.mode(), f);
    let resp = if !d.permit {
        Err(deny_error(&d, &format!("{rtype}/{id}")))
    } else if v.deleted {
        Err(ApiError::Gone(format!("{rtype}/{id} version {vn} is a deletion")))
    } else {
        let mut r = respond(StatusCode::OK, v.body.clone());
        version_headers(&mut r, &st.base_url, rtype.as_str(), &id, v.version, v.last_updated);
        Ok(r)
    };
    let rec = caller.fhir_record(
        "vread",
        status_of(&resp),
        Some(rtype.as_str()),
        Some(&id),
        Some(vn),
        v.patient.into_iter().collect(),
        Some(&d),
        now,
    );
    audited(&st, rec, resp).await
}

/// GET /fhir/{type}/{id}/_history and /fhir/Patient/{id}/$everything
pub async fn instance_op(
    State(st): State<AppState>,
    caller: Caller,
    Path((t, id, op)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    match op.as_str() {
        "_history" => history(st, caller, t, Some(id), q, headers).await,
        "$everything" if t == "Patient" => everything(st, caller, id, q, headers).await,
        _ => {
            let now = st.store.clock().now();
            let e = ApiError::NotFound(format!(
                "operation '{}' is not supported on {t}",
                op.chars().take(40).collect::<String>()
            ));
            audited(&st, caller.fhir_record("operation", 404, None, None, None, vec![], None, now), Err(e)).await
        }
    }
}

fn history_entry(b: &mut BundleWriter, base: &str, v: &Version) {
    let method = if v.deleted {
        "DELETE"
    } else if v.version == 1 {
        "POST"
    } else {
        "PUT"
    };
    let url = if v.version == 1 && !v.deleted { v.rtype.clone() } else { format!("{}/{}", v.rtype, v.id) };
    let status = if v.deleted {
        "204"
    } else if v.version == 1 {
        "201"
    } else {
        "200"
    };
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
    st: AppState,
    caller: Caller,
    t: String,
    id: Option<String>,
    q: Option<String>,
    headers: HeaderMap,
) -> Response {
    let now = st.store.clock().now();
    let action = if id.is_some() { "history-instance" } else { "history-type" };
    let pre = (|| {
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        let rtype = parse_type(&t)?;
        if let Some(i) = &id {
            parse_id(i)?;
        }
        let mut count = 50usize;
        let mut since = None;
        let mut before = None;
        for (k, v) in &pairs {
            match k.as_str() {
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .map_err(|_| ApiError::bad("_count", "expected a non-negative integer"))?
                        .min(MAX_COUNT)
                }
                "_since" => {
                    since = Some(
                        Timestamp::parse_rfc3339(v).ok_or_else(|| ApiError::bad("_since", "expected an instant"))?,
                    )
                }
                "_cursor" => {
                    before = Some(v.parse::<i64>().map_err(|_| ApiError::bad("_cursor", "malformed paging cursor"))?)
                }
                "_format" | "_pretty" => {}
                other => return Err(ApiError::bad(other, format!("unknown history parameter '{other}'"))),
            }
        }
        Ok::<_, ApiError>((rtype, count, since, before))
    })();
    let (rtype, count, since, before) = match pre {
        Ok(x) => x,
        Err(e) => {
            return audited(
                &st,
                caller.fhir_record(action, e.status().as_u16(), None, None, None, vec![], None, now),
                Err(e),
            )
            .await
        }
    };
    let c2 = caller.clone();
    let id2 = id.clone();
    let subject = caller.subject();
    let mode = caller.mode();
    let r = st
        .store
        .read(move |c| {
            let (target, f) = match &id2 {
                Some(i) => {
                    let cur = records::current(c, rtype.as_str(), i)?;
                    let patient = cur.as_ref().and_then(|x| x.patient.clone());
                    (target_of(rtype, patient.as_deref()), facts(c, &c2, patient.as_deref(), now)?)
                }
                None => (search_target(rtype, None), Default::default()),
            };
            let d = decide(&subject, Action::History, target, &mode, f);
            if !d.permit {
                return Ok((d, None));
            }
            let restrict = if d.obligations.contains(&Obligation::RestrictToCareRelationships) {
                Restriction::CareOf {
                    user: c2.user.name.as_str().to_owned(),
                    department: c2.user.department.clone(),
                    now,
                }
            } else {
                Restriction::None
            };
            let versions =
                records::history(c, Some(rtype.as_str()), id2.as_deref(), since, before, count + 1, &restrict)?;
            Ok((d, Some(versions)))
        })
        .await;
    let (d, versions) = match r {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let what = match &id {
        Some(i) => format!("{rtype}/{i}"),
        None => rtype.to_string(),
    };
    let Some(mut versions) = versions else {
        let e = deny_error(&d, &format!("the history of {what}"));
        return audited(
            &st,
            caller.fhir_record(action, 403, Some(rtype.as_str()), id.as_deref(), None, vec![], Some(&d), now),
            Err(e),
        )
        .await;
    };
    if id.is_some() && versions.is_empty() {
        let e = ApiError::NotFound(format!("{what} does not exist"));
        return audited(
            &st,
            caller.fhir_record(action, 404, Some(rtype.as_str()), id.as_deref(), None, vec![], Some(&d), now),
            Err(e),
        )
        .await;
    }
    let more = versions.len() > count;
    versions.truncate(count);
    let base = &st.base_url;
    let path = match &id {
        Some(i) => format!("{base}/fhir/{rtype}/{i}/_history"),
        None => format!("{base}/fhir/{rtype}/_history"),
    };
    let mut links = vec![("self", format!("{path}?_count={count}"))];
    if more {
        if let Some(last) = versions.last() {
            links.push(("next", format!("{path}?_count={count}&_cursor={}", last.seq)));
        }
    }
    let mut b = BundleWriter::new("history", None, &links);
    let mut patients = Vec::new();
    for v in &versions {
        history_entry(&mut b, base, v);
        if let Some(p) = &v.patient {
            patients.push(p.clone());
        }
    }
    let resp = Ok(respond(StatusCode::OK, b.finish()));
    let mut rec = caller.fhir_record(action, 200, Some(rtype.as_str()), id.as_deref(), None, patients, Some(&d), now);
    rec.detail = Some(json!({"count": versions.len()}));
    audited(&st, rec, resp).await
}

/// The single patient a query is about, if it names exactly one.
fn one_patient(q: &SearchQuery) -> Option<String> {
    let mut found: Option<String> = None;
    for Clause { param, any_of } in &q.clauses {
        let is_patient_param =
            q.rtype == ResourceType::PATIENT && *param == "_id" || matches!(*param, "patient" | "subject");
        if !is_patient_param || any_of.len() != 1 {
            continue;
        }
        let id = match any_of.first() {
            Some(Cond::Id(i)) => Some(i.clone()),
            Some(Cond::Reference { rtype, id }) if rtype.as_deref().is_none_or(|t| t == "Patient") => Some(id.clone()),
            _ => None,
        };
        if let Some(i) = id {
            if found.as_ref().is_some_and(|f| *f != i) {
                return None;
            }
            found = Some(i);
        }
    }
    found
}

/// GET /fhir/{type}
pub async fn search_get(
    State(st): State<AppState>,
    caller: Caller,
    Path(t): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let pairs = parse_pairs(q.as_deref().unwrap_or(""));
    search(st, caller, t, pairs, headers).await
}

/// POST /fhir/{type}/_search (form-encoded parameters)
pub async fn search_post(
    State(st): State<AppState>,
    caller: Caller,
    Path((t, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if t == "Patient" && id == "$merge" {
        return crate::continuity::merge::fhir_merge(st, caller, headers, body).await;
    }
    if id != "_search" {
        let now = st.store.clock().now();
        let e = ApiError::MethodNotAllowed("POST to an instance is not supported; use PUT to update".into());
        return audited(&st, caller.fhir_record("operation", 405, None, None, None, vec![], None, now), Err(e)).await;
    }
    let pairs = async {
        let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !ct.starts_with("application/x-www-form-urlencoded") {
            return Err(ApiError::UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded".into()));
        }
        let bytes = super::read_body(body, 1 << 20).await?;
        let form = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad("", "form body is not UTF-8"))?;
        let mut all = parse_pairs(q.as_deref().unwrap_or(""))?;
        all.extend(parse_pairs(form)?);
        Ok(all)
    }
    .await;
    search(st, caller, t, pairs, headers).await
}

async fn search(
    st: AppState,
    caller: Caller,
    t: String,
    pairs: Result<Vec<(String, String)>, ApiError>,
    headers: HeaderMap,
) -> Response {
    if t == "AuditEvent" {
        return super::audit_event::search(st, caller, pairs, headers).await;
    }
    let now = st.store.clock().now();
    let lenient = headers
        .get("prefer")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.split(';').any(|x| x.trim() == "handling=lenient"));
    let pre = (|| {
        let pairs = pairs?;
        check_accept(&headers, format_param(&pairs))?;
        let rtype = parse_type(&t)?;
        let (q, _ignored) = parse_query(rtype, &pairs, lenient).map_err(|e| ApiError::bad("", e.to_string()))?;
        Ok::<_, ApiError>(q)
    })();
    let q = match pre {
        Ok(q) => q,
        Err(e) => {
            let mut rec = caller.fhir_record(
                "search-type",
                e.status().as_u16(),
                ResourceType::parse(&t).ok().map(|r| r.as_str()),
                None,
                None,
                vec![],
                None,
                now,
            );
            rec.query = Some(format!("{}?…", t.chars().take(60).collect::<String>()));
            return audited(&st, rec, Err(e)).await;
        }
    };
    let query_text: String =
        q.canonical.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
    let patient = one_patient(&q);
    let c2 = caller.clone();
    let subject = caller.subject();
    let mode = caller.mode();
    let q2 = q.clone();
    let r = st
        .store
        .read(move |c| {
            let f = facts(c, &c2, patient.as_deref(), now)?;
            let d = decide(&subject, Action::Search, search_target(q2.rtype, patient.as_deref()), &mode, f);
            if !d.permit {
                return Ok((d, None));
            }
            let restrict = if d.obligations.contains(&Obligation::RestrictToCareRelationships) {
                Restriction::CareOf {
                    user: c2.user.name.as_str().to_owned(),
                    department: c2.user.department.clone(),
                    now,
                }
            } else {
                Restriction::None
            };
            Ok((d, Some(search::search(c, &q2, &restrict)?)))
        })
        .await;
    let (d, page) = match r {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let Some(page) = page else {
        let named: Vec<String> = one_patient(&q).into_iter().collect();
        let mut rec = caller.fhir_record("search-type", 403, Some(q.rtype.as_str()), None, None, named, Some(&d), now);
        rec.query = Some(query_text);
        return audited(&st, rec, Err(deny_error(&d, &format!("{} search", q.rtype)))).await;
    };
    let base = &st.base_url;
    let self_url = format!("{base}/fhir/{}?{}", q.rtype, query_text);
    let sep = if query_text.is_empty() { "" } else { "&" };
    let mut links = vec![("self", self_url.clone())];
    if let Some(n) = &page.next {
        links.push(("next", format!("{self_url}{sep}_cursor={}", enc(&n.encode()))));
    }
    if let Some(p) = &page.prev {
        links.push(("previous", format!("{self_url}{sep}_before={}", enc(&p.encode()))));
    }
    let mut b = BundleWriter::new("searchset", page.total, &links);
    let mut patients = Vec::new();
    for v in &page.entries {
        b.entry(Some(&full_url(base, v)), &v.body, &[("search", json!({"mode": "match"}))]);
        if let Some(p) = &v.patient {
            patients.push(p.clone());
        }
    }
    let mut rec = caller.fhir_record("search-type", 200, Some(q.rtype.as_str()), None, None, patients, Some(&d), now);
    rec.query = Some(query_text);
    rec.detail = Some(json!({"count": page.entries.len()}));
    audited(&st, rec, Ok(respond(StatusCode::OK, b.finish()))).await
}

/// GET /fhir/Patient/{id}/$everything
async fn everything(st: AppState, caller: Caller, id: String, q: Option<String>, headers: HeaderMap) -> Response {
    let now = st.store.clock().now();
    let pre = (|| {
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, format_param(&pairs))?;
        parse_id(&id)?;
        let mut count = 1000usize;
        let mut after: Option<(String, String)> = None;
        for (k, v) in &pairs {
            match k.as_str() {
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .map_err(|_| ApiError::bad("_count", "expected a non-negative integer"))?
                        .clamp(1, MAX_COUNT)
                }
                "_cursor" => {
                    let (t, i) =
                        v.split_once('/').ok_or_else(|| ApiError::bad("_cursor", "malformed paging cursor"))?;
                    after = Some((t.to_owned(), i.to_owned()));
                }
                "_format" | "_pretty" => {}
                other => return Err(ApiError::bad(other, format!("unsupported $everything parameter '{other}'"))),
            }
        }
        Ok::<_, ApiError>((count, after))
    })();
    let (count, after) = match pre {
        Ok(x) => x,
        Err(e) => {
            return audited(
                &st,
                caller.fhir_record("operation", e.status().as_u16(), Some("Patient"), None, None, vec![], None, now),
                Err(e),
            )
            .await
        }
    };
    let c2 = caller.clone();
    let subject = caller.subject();
    let mode = caller.mode();
    let id2 = id.clone();
    let r = st
        .store
        .read(move |c| {
            let exists = records::current(c, "Patient", &id2)?;
            let f = facts(c, &c2, Some(&id2), now)?;
            // The compartment as a whole is clinical data: decided as a
            // read of a clinical type for this patient.
            let clinical =
                ResourceType::parse("Observation").map_err(|e| mamori_store::StoreError::Internal(e.to_string()))?;
            let d = decide(&subject, Action::Read, Target { rtype: clinical, scope: PatientScope::One }, &mode, f);
            if !d.permit || exists.as_ref().is_none_or(|e| e.deleted) {
                return Ok((d, exists.is_some(), None));
            }
            let a = after.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
            Ok((d, true, Some(records::compartment(c, &id2, a, count + 1)?)))
        })
        .await;
    let (d, exists, rows) = match r {
        Ok(x) => x,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut rec =
        caller.fhir_record("operation", 200, Some("Patient"), Some(&id), None, vec![id.clone()], Some(&d), now);
    rec.query = Some("$everything".into());
    if !d.permit {
        rec.status = 403;
        return audited(&st, rec, Err(deny_error(&d, &format!("the record of Patient/{id}")))).await;
    }
    let Some(mut rows) = rows else {
        let e = if exists {
            ApiError::Gone(format!("Patient/{id} was deleted"))
        } else {
            ApiError::NotFound(format!("Patient/{id} does not exist"))
        };
        rec.status = e.status().as_u16();
        return audited(&st, rec, Err(e)).await;
    };
    let more = rows.len() > count;
    rows.truncate(count);
    let base = &st.base_url;
    let self_url = format!("{base}/fhir/Patient/{id}/$everything?_count={count}");
    let mut links = vec![("self", self_url.clone())];
    if more {
        if let Some(last) = rows.last() {
            links.push(("next", format!("{self_url}&_cursor={}", enc(&format!("{}/{}", last.rtype, last.id)))));
        }
    }
    let mut b = BundleWriter::new("searchset", None, &links);
    for v in &rows {
        b.entry(Some(&full_url(base, v)), &v.body, &[("search", json!({"mode": "match"}))]);
    }
    rec.detail = Some(json!({"count": rows.len()}));
    audited(&st, rec, Ok(respond(StatusCode::OK, b.finish()))).await
}
