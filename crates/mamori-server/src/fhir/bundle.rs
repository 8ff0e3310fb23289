//! `POST /fhir` with a `batch` or `transaction` Bundle.
//!
//! A transaction is all-or-nothing: every entry runs in one group-commit
//! job; any failure (invalid entry, denied access, broken reference,
//! version conflict) rolls the whole job back, and only the failure is
//! audited. `urn:uuid:` fullUrls are resolved to the ids assigned here in
//! every reference. A batch runs each entry in its own savepoint.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mamori_core::fhir::search::parse_query;
use mamori_core::ids::{is_fhir_id, ResourceType};
use mamori_core::policy::{decide, Action};
use mamori_store::records;
use mamori_store::search::{self, Restriction};
use mamori_store::writer::WriteCtx;
use mamori_store::StoreError;
use serde_json::{json, Value};

use super::read::{audited, parse_pairs};
use super::write::{step_record, validate_body, write_step, Step, WriteOp};
use super::{check_accept, check_content_type, facts, parse_json, read_body, respond, search_target, target_of};
use crate::error::ApiError;
use crate::state::{AppState, Caller};

#[derive(Debug, Clone)]
enum Kind {
    Write(WriteOp),
    Read { id: String, version: Option<u64> },
    Search { query: String },
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    full_url: Option<String>,
    rtype: ResourceType,
    kind: Kind,
    resource: Option<Value>,
}

/// One entry's outcome for the response Bundle.
#[derive(Debug, Clone)]
struct EntryResult {
    status: u16,
    location: Option<String>,
    etag: Option<String>,
    last_modified: Option<String>,
    resource: Option<Value>,
    outcome: Option<Value>,
}

fn status_text(s: u16) -> String {
    let reason = StatusCode::from_u16(s).ok().and_then(|c| c.canonical_reason()).unwrap_or("");
    format!("{s} {reason}").trim_end().to_owned()
}

fn parse_entry(i: usize, e: &Value, base: &str) -> Result<Entry, ApiError> {
    let path = format!("Bundle.entry[{i}]");
    let req =
        e.get("request").ok_or_else(|| ApiError::bad(&format!("{path}.request"), "each entry needs a request"))?;
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(&format!("{path}.request.method"), "missing method"))?;
    let url = req
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad(&format!("{path}.request.url"), "missing url"))?;
    let url = url.strip_prefix(&format!("{base}/fhir/")).unwrap_or(url).trim_start_matches('/');
    let (p, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segs: Vec<&str> = p.split('/').collect();
    let bad_url = || {
        ApiError::bad(
            &format!("{path}.request.url"),
            format!("unsupported url '{}'", url.chars().take(80).collect::<String>()),
        )
    };
    let rtype = ResourceType::parse(segs.first().copied().unwrap_or("")).map_err(|_| bad_url())?;
    let resource = e.get("resource").cloned();
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let header = |k: &str| req.get(k).and_then(Value::as_str).map(str::to_owned);
    let kind = match (method, segs.as_slice(), query) {
        ("POST", [_], None) => Kind::Write(WriteOp::Create { if_none_exist: header("ifNoneExist") }),
        ("PUT", [_, id], None) if is_fhir_id(id) => Kind::Write(WriteOp::Update {
            id: (*id).to_owned(),
            if_match: header("ifMatch").map(|m| super::write::parse_etag(&m)).transpose()?,
        }),
        ("DELETE", [_, id], None) if is_fhir_id(id) => Kind::Write(WriteOp::Delete { id: (*id).to_owned() }),
        ("GET", [_, id], None) if is_fhir_id(id) => Kind::Read { id: (*id).to_owned(), version: None },
        ("GET", [_, id, "_history", v], None) if is_fhir_id(id) => {
            Kind::Read { id: (*id).to_owned(), version: Some(v.parse().map_err(|_| bad_url())?) }
        }
        ("GET", [_], q) => Kind::Search { query: q.unwrap_or("").to_owned() },
        ("PUT" | "DELETE", [_], Some(_)) => {
            return Err(ApiError::bad(
                &format!("{path}.request.url"),
                "conditional update and delete are not supported",
            ))
        }
        ("PATCH", _, _) => return Err(ApiError::bad(&format!("{path}.request.method"), "PATCH is not supported")),
        _ => return Err(bad_url()),
    };
    if let Kind::Write(op) = &kind {
        match op {
            WriteOp::Delete { .. } => {}
            _ => {
                let r = resource.as_ref().ok_or_else(|| {
                    ApiError::bad(&format!("{path}.resource"), "POST and PUT entries need a resource")
                })?;
                validate_body(rtype, r).map_err(|e| prefix_error(e, &format!("{path}.resource")))?;
                if let WriteOp::Update { id, .. } = op {
                    if r.get("id").and_then(Value::as_str) != Some(id) {
                        return Err(ApiError::bad(
                            &format!("{path}.resource.id"),
                            "the resource id must match the request url",
                        ));
                    }
                }
            }
        }
    }
    Ok(Entry { index: i, full_url, rtype, kind, resource })
}

fn prefix_error(e: ApiError, prefix: &str) -> ApiError {
    match e {
        ApiError::BadRequest(issues) => ApiError::BadRequest(
            issues
                .into_iter()
                .map(|mut i| {
                    i.path = match i.path.split_once('.') {
                        Some((_, rest)) => format!("{prefix}.{rest}"),
                        None => prefix.to_owned(),
                    };
                    i
                })
                .collect(),
        ),
        other => other,
    }
}

/// Replaces every `reference` equal to a key of `map`.
fn rewrite_refs(v: &mut Value, map: &HashMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "reference" {
                    if let Some(new) = x.as_str().and_then(|s| map.get(s)) {
                        *x = Value::String(new.clone());
                    }
                } else {
                    rewrite_refs(x, map);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite_refs(x, map)),
        _ => {}
    }
}

fn entry_error(e: &Entry, err: StoreError) -> StoreError {
    let prefix = format!("Bundle.entry[{}]", e.index);
    match err {
        StoreError::Invalid(mut i) | StoreError::Unprocessable(mut i) if !i.is_empty() => {
            for x in &mut i {
                x.path = if x.path.is_empty() { prefix.clone() } else { format!("{prefix} {}", x.path) };
            }
            StoreError::Unprocessable(i)
        }
        StoreError::Forbidden(m) => StoreError::Forbidden(format!("{prefix}: {m}")),
        StoreError::NotFound(m) => StoreError::NotFound(format!("{prefix}: {m}")),
        StoreError::Precondition(m) => StoreError::Precondition(format!("{prefix}: {m}")),
        StoreError::VersionConflict { expected, current } => StoreError::Precondition(format!(
            "{prefix}: If-Match version {expected} does not match the current version {current}"
        )),
        other => other,
    }
}

fn step_result(base: &str, rtype: ResourceType, step: &Step) -> EntryResult {
    match step {
        Step::Done { written, .. } => EntryResult {
            status: if written.deleted {
                204
            } else if written.created {
                201
            } else {
                200
            },
            location: (!written.deleted)
                .then(|| format!("{base}/fhir/{}/{}/_history/{}", rtype, written.id, written.version)),
            etag: Some(format!("W/\"{}\"", written.version)),
            last_modified: Some(written.last_updated.to_rfc3339()),
            resource: None,
            outcome: None,
        },
        Step::Matched { id, version, .. } => EntryResult {
            status: 200,
            location: Some(format!("{base}/fhir/{rtype}/{id}/_history/{version}")),
            etag: Some(format!("W/\"{version}\"")),
            last_modified: None,
            resource: None,
            outcome: None,
        },
        Step::NothingToDelete { existed } => EntryResult {
            status: if *existed { 204 } else { 404 },
            location: None,
            etag: None,
            last_modified: None,
            resource: None,
            outcome: None,
        },
        Step::Denied { .. } => {
            EntryResult { status: 403, location: None, etag: None, last_modified: None, resource: None, outcome: None }
        }
    }
}

/// A GET entry: read or search, decided and audited like the REST calls.
fn get_entry(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    base: &str,
    e: &Entry,
) -> Result<(EntryResult, mamori_audit::event::AuditRecord), StoreError> {
    let now = ctx.now;
    let subject = caller.subject();
    let mode = caller.mode();
    match &e.kind {
        Kind::Read { id, version } => {
            let v = match version {
                Some(n) => records::vread(ctx.conn, e.rtype.as_str(), id, *n)?,
                None => records::read(ctx.conn, e.rtype.as_str(), id)?,
            };
            let action = if version.is_some() { "vread" } else { "read" };
            let Some(v) = v else {
                let rec = caller.fhir_record(action, 404, Some(e.rtype.as_str()), Some(id), None, vec![], None, now);
                return Ok((
                    EntryResult {
                        status: 404,
                        location: None,
                        etag: None,
                        last_modified: None,
                        resource: None,
                        outcome: None,
                    },
                    rec,
                ));
            };
            let f = facts(ctx.conn, caller, v.patient.as_deref(), now)?;
            let d = decide(&subject, Action::Read, target_of(e.rtype, v.patient.as_deref()), &mode, f);
            let status = if !d.permit {
                403
            } else if v.deleted {
                410
            } else {
                200
            };
            let rec = caller.fhir_record(
                action,
                status,
                Some(e.rtype.as_str()),
                Some(id),
                Some(v.version),
                v.patient.clone().into_iter().collect(),
                Some(&d),
                now,
            );
            let resource = (status == 200).then(|| serde_json::from_str(&v.body).unwrap_or(Value::Null));
            Ok((
                EntryResult {
                    status,
                    location: None,
                    etag: Some(format!("W/\"{}\"", v.version)),
                    last_modified: Some(v.last_updated.to_rfc3339()),
                    resource,
                    outcome: None,
                },
                rec,
            ))
        }
        Kind::Search { query } => {
            let pairs = parse_pairs(query).map_err(|x| StoreError::invalid("", x.audit_text()))?;
            let (q, _) = parse_query(e.rtype, &pairs, false).map_err(|x| StoreError::invalid("", x.to_string()))?;
            let d = decide(&subject, Action::Search, search_target(e.rtype, None), &mode, Default::default());
            if !d.permit {
                let rec =
                    caller.fhir_record("search-type", 403, Some(e.rtype.as_str()), None, None, vec![], Some(&d), now);
                return Ok((
                    EntryResult {
                        status: 403,
                        location: None,
                        etag: None,
                        last_modified: None,
                        resource: None,
                        outcome: None,
                    },
                    rec,
                ));
            }
            let restrict = if d.obligations.contains(&mamori_core::policy::Obligation::RestrictToCareRelationships) {
                Restriction::CareOf {
                    user: caller.user.name.as_str().to_owned(),
                    department: caller.user.department.clone(),
                    now,
                }
            } else {
                Restriction::None
            };
            let page = search::search(ctx.conn, &q, &restrict)?;
            let entries: Vec<Value> = page
                .entries
                .iter()
                .map(|v| json!({"fullUrl": format!("{base}/fhir/{}/{}", v.rtype, v.id), "resource": serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null)}))
                .collect();
            let patients = page.entries.iter().filter_map(|v| v.patient.clone()).collect();
            let mut rec =
                caller.fhir_record("search-type", 200, Some(e.rtype.as_str()), None, None, patients, Some(&d), now);
            rec.query = Some(query.clone());
            let mut bundle = json!({"resourceType": "Bundle", "type": "searchset", "total": page.total});
            if !entries.is_empty() {
                bundle["entry"] = Value::Array(entries);
            }
            Ok((
                EntryResult {
                    status: 200,
                    location: None,
                    etag: None,
                    last_modified: None,
                    resource: Some(bundle),
                    outcome: None,
                },
                rec,
            ))
        }
        Kind::Write(_) => Err(StoreError::Internal("not a read entry".into())),
    }
}

fn order_key(e: &Entry) -> u8 {
    match &e.kind {
        Kind::Write(WriteOp::Delete { .. }) => 0,
        Kind::Write(WriteOp::Create { .. }) => 1,
        Kind::Write(WriteOp::Update { .. }) => 2,
        Kind::Read { .. } | Kind::Search { .. } => 3,
    }
}

fn run_transaction(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    base: &str,
    mut entries: Vec<Entry>,
) -> Result<Vec<EntryResult>, StoreError> {
    // 1. Conditional creates, then ids for the rest; map fullUrls.
    let mut map: HashMap<String, String> = HashMap::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    let mut matched: HashMap<usize, Step> = HashMap::new();
    for e in &entries {
        let Kind::Write(op) = &e.kind else { continue };
        let target = match op {
            WriteOp::Create { if_none_exist: Some(cond) } => {
                match super::write::conditional_match(ctx, e.rtype, cond).map_err(|x| entry_error(e, x))? {
                    Some((id, version)) => {
                        matched.insert(e.index, Step::Matched { rtype: e.rtype, id: id.clone(), version });
                        Some(id)
                    }
                    None => None,
                }
            }
            WriteOp::Create { if_none_exist: None } => None,
            WriteOp::Update { id, .. } => Some(id.clone()),
            WriteOp::Delete { .. } => continue,
        };
        let id = match target {
            Some(id) => id,
            None => {
                let id = mamori_store::accounts::new_id()?;
                assigned.insert(e.index, id.clone());
                id
            }
        };
        if let Some(fu) = &e.full_url {
            map.insert(fu.clone(), format!("{}/{}", e.rtype, id));
        }
    }
    // 2. Resolve references.
    for e in entries.iter_mut() {
        if let Some(r) = e.resource.as_mut() {
            rewrite_refs(r, &map);
        }
    }
    let pending: HashSet<(String, String)> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::Write(WriteOp::Create { .. }) => {
                assigned.get(&e.index).map(|id| (e.rtype.as_str().to_owned(), id.clone()))
            }
            Kind::Write(WriteOp::Update { id, .. }) => Some((e.rtype.as_str().to_owned(), id.clone())),
            _ => None,
        })
        .collect();
    // 3. Writes in the order DELETE, POST, PUT; then GET.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|i| entries.get(*i).map_or(9, order_key));
    let mut results: Vec<Option<EntryResult>> = vec![None; entries.len()];
    let mut records = Vec::new();
    let mut written_bodies = Vec::new();
    for i in order {
        let Some(e) = entries.get(i) else { continue };
        match &e.kind {
            Kind::Write(op) => {
                let step = if let Some(m) = matched.remove(&e.index) {
                    m
                } else {
                    let op = match op {
                        WriteOp::Create { .. } => WriteOp::Create { if_none_exist: None },
                        other => other.clone(),
                    };
                    write_step(
                        ctx,
                        caller,
                        e.rtype,
                        &op,
                        e.resource.clone(),
                        assigned.get(&e.index).cloned(),
                        &pending,
                        false,
                    )
                    .map_err(|x| entry_error(e, x))?
                };
                if let Step::Denied { decision, what } = &step {
                    return Err(StoreError::Forbidden(format!(
                        "Bundle.entry[{}]: writing {what} denied ({})",
                        e.index,
                        decision.basis.as_str()
                    )));
                }
                if let (Step::NothingToDelete { existed: false }, WriteOp::Delete { id }) = (&step, op) {
                    return Err(StoreError::NotFound(format!(
                        "Bundle.entry[{}]: {}/{id} does not exist",
                        e.index, e.rtype
                    )));
                }
                if let Step::Done { written, .. } = &step {
                    if !written.deleted {
                        written_bodies.push((e.index, written.body.clone()));
                    }
                }
                let r = step_result(base, e.rtype, &step);
                records.push(step_record(caller, op, e.rtype, &step, r.status, ctx.now));
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
            _ => {
                let (r, rec) = get_entry(ctx, caller, base, e).map_err(|x| entry_error(e, x))?;
                records.push(rec);
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
    }
    // 4. References of everything written, now that all entries exist.
    for (idx, body) in &written_bodies {
        let v: Value = serde_json::from_str(body).map_err(|x| StoreError::Internal(x.to_string()))?;
        records::check_references(ctx.conn, &v, &HashSet::new()).map_err(|x| {
            match entries.iter().find(|e| e.index == *idx) {
                Some(e) => entry_error(e, x),
                None => x,
            }
        })?;
    }
    for r in &records {
        ctx.audit(r)?;
    }
    Ok(results
        .into_iter()
        .map(|r| {
            r.unwrap_or(EntryResult {
                status: 500,
                location: None,
                etag: None,
                last_modified: None,
                resource: None,
                outcome: None,
            })
        })
        .collect())
}

fn run_batch(
    ctx: &mut WriteCtx<'_>,
    caller: &Caller,
    base: &str,
    entries: Vec<Result<Entry, ApiError>>,
) -> Result<Vec<EntryResult>, StoreError> {
    let mut out = Vec::new();
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                let mut rec =
                    caller.fhir_record("batch-entry", err.status().as_u16(), None, None, None, vec![], None, ctx.now);
                rec.detail = Some(json!({"error": err.audit_text()}));
                ctx.audit(&rec)?;
                out.push(EntryResult {
                    status: err.status().as_u16(),
                    location: None,
                    etag: None,
                    last_modified: None,
                    resource: None,
                    outcome: Some(err.operation_outcome()),
                });
                continue;
            }
        };
        ctx.conn.batch("SAVEPOINT entry")?;
        let r = match &e.kind {
            Kind::Write(op) => write_step(ctx, caller, e.rtype, op, e.resource.clone(), None, &HashSet::new(), true)
                .map(|step| {
                    let r = step_result(base, e.rtype, &step);
                    let rec = step_record(caller, op, e.rtype, &step, r.status, ctx.now);
                    (r, rec)
                }),
            _ => get_entry(ctx, caller, base, &e),
        };
        match r {
            Ok((r, rec)) => {
                ctx.conn.batch("RELEASE entry")?;
                ctx.audit(&rec)?;
                out.push(r);
            }
            Err(err) => {
                ctx.conn.batch("ROLLBACK TO entry; RELEASE entry")?;
                let api = ApiError::from(entry_error(&e, err));
                let action = match &e.kind {
                    Kind::Write(op) => super::write::action_name(op, None),
                    Kind::Read { .. } => "read",
                    Kind::Search { .. } => "search-type",
                };
                let mut rec = caller.fhir_record(
                    action,
                    api.status().as_u16(),
                    Some(e.rtype.as_str()),
                    None,
                    None,
                    vec![],
                    None,
                    ctx.now,
                );
                rec.detail = Some(json!({"error": api.audit_text(), "entry": e.index}));
                ctx.audit(&rec)?;
                out.push(EntryResult {
                    status: api.status().as_u16(),
                    location: None,
                    etag: None,
                    last_modified: None,
                    resource: None,
                    outcome: Some(api.operation_outcome()),
                });
            }
        }
    }
    Ok(out)
}

fn response_bundle(kind: &str, results: &[EntryResult]) -> Value {
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
            if let Some(o) = &r.outcome {
                resp["outcome"] = o.clone();
            }
            let mut entry = json!({"response": resp});
            if let Some(res) = &r.resource {
                entry["resource"] = res.clone();
            }
            entry
        })
        .collect();
    let mut b = json!({"resourceType": "Bundle", "type": kind});
    if !entries.is_empty() {
        b["entry"] = Value::Array(entries);
    }
    b
}

/// POST /fhir
pub async fn batch_or_transaction(
    State(st): State<AppState>,
    caller: Caller,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = st.store.clock().now();
    let limit = st.cfg.server.body_limit_bytes;
    let base = st.base_url.clone();
    let pre = async {
        let pairs = parse_pairs(q.as_deref().unwrap_or(""))?;
        check_accept(&headers, pairs.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str()))?;
        check_content_type(&headers)?;
        let bytes = read_body(body, limit).await?;
        let v = parse_json(&bytes)?;
        if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(ApiError::bad("resourceType", "POST /fhir takes a Bundle of type batch or transaction"));
        }
        mamori_core::fhir::validate::validate_resource(&v).map_err(ApiError::BadRequest)?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("").to_owned();
        if kind != "batch" && kind != "transaction" {
            return Err(ApiError::bad("Bundle.type", "must be batch or transaction"));
        }
        let raw: Vec<Value> = v.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok::<_, ApiError>((kind, raw))
    }
    .await;
    let (kind, raw) = match pre {
        Ok(x) => x,
        Err(e) => {
            let mut rec =
                caller.fhir_record("transaction", e.status().as_u16(), Some("Bundle"), None, None, vec![], None, now);
            rec.detail = Some(json!({"error": e.audit_text()}));
            return audited(&st, rec, Err(e)).await;
        }
    };
    let parsed: Vec<Result<Entry, ApiError>> = raw.iter().enumerate().map(|(i, e)| parse_entry(i, e, &base)).collect();
    let c2 = caller.clone();
    let c3 = caller.clone();
    let base2 = base.clone();
    if kind == "transaction" {
        let entries = match parsed.into_iter().collect::<Result<Vec<_>, _>>() {
            Ok(e) => e,
            Err(e) => {
                let mut rec = caller.fhir_record(
                    "transaction",
                    e.status().as_u16(),
                    Some("Bundle"),
                    None,
                    None,
                    vec![],
                    None,
                    now,
                );
                rec.detail = Some(json!({"error": e.audit_text()}));
                return audited(&st, rec, Err(e)).await;
            }
        };
        let n = entries.len();
        let r = st
            .store
            .writer()
            .write(
                move |ctx| {
                    let results = run_transaction(ctx, &c2, &base2, entries)?;
                    let mut rec = c2.fhir_record("transaction", 200, Some("Bundle"), None, None, vec![], None, ctx.now);
                    rec.detail = Some(json!({"entries": n}));
                    ctx.audit(&rec)?;
                    Ok(results)
                },
                move |e, ctx| {
                    let api = ApiError::from(e.clone());
                    let mut rec = c3.fhir_record(
                        "transaction",
                        api.status().as_u16(),
                        Some("Bundle"),
                        None,
                        None,
                        vec![],
                        None,
                        ctx.now,
                    );
                    rec.detail = Some(json!({"error": api.audit_text(), "entries": n, "rolled_back": true}));
                    ctx.audit(&rec).map(|_| ())
                },
            )
            .await;
        match r {
            Ok(results) => respond(StatusCode::OK, response_bundle("transaction-response", &results).to_string()),
            Err(e) => ApiError::from(e).into_response(),
        }
    } else {
        let n = parsed.len();
        let r = st
            .store
            .writer()
            .write(
                move |ctx| {
                    let results = run_batch(ctx, &c2, &base2, parsed)?;
                    let mut rec = c2.fhir_record("batch", 200, Some("Bundle"), None, None, vec![], None, ctx.now);
                    rec.detail = Some(json!({"entries": n}));
                    ctx.audit(&rec)?;
                    Ok(results)
                },
                move |e, ctx| {
                    let api = ApiError::from(e.clone());
                    let rec = c3.fhir_record(
                        "batch",
                        api.status().as_u16(),
                        Some("Bundle"),
                        None,
                        None,
                        vec![],
                        None,
                        ctx.now,
                    );
                    ctx.audit(&rec).map(|_| ())
                },
            )
            .await;
        match r {
            Ok(results) => respond(StatusCode::OK, response_bundle("batch-response", &results).to_string()),
            Err(e) => ApiError::from(e).into_response(),
        }
    }
}
