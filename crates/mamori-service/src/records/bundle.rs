//! `batch` and `transaction` Bundles.
//!
//! A transaction is all-or-nothing: every entry runs in one group-commit
//! job; any failure (invalid entry, denied access, broken reference,
//! version conflict) rolls the whole job back, and only the failure is
//! audited. `urn:uuid:` fullUrls are resolved to the ids assigned here in
//! every reference. A batch runs each entry in its own savepoint.

use std::collections::{HashMap, HashSet};

use mamori_core::fhir::search::parse_query_in;
use mamori_core::fhir::validate::Issue;
use mamori_core::ids::{is_fhir_id, ResourceType};
use mamori_core::policy::{Action, Facts, Operation, PatientScope, Target};
use mamori_store::records;
use mamori_store::search;
use mamori_store::writer::WriteCtx;
use serde_json::{json, Value};

use super::write::{
    action_name, conditional_match, resolve_conditional, step_record, step_status, write_step, Resolved, Step, WriteOp,
};
use super::{error_record, parse_etag, parse_pairs, restriction, validate_body};
use crate::actor::Actor;
use crate::audited::Audited;
use crate::authz;
use crate::conformance::Conformance;
use crate::error::ServiceError;
use crate::services::Services;

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

/// One entry's outcome in the response Bundle.
#[derive(Debug, Clone)]
pub struct EntryResult {
    /// The HTTP status of the entry.
    pub status: u16,
    /// `response.location`.
    pub location: Option<String>,
    /// `response.etag`.
    pub etag: Option<String>,
    /// `response.lastModified`.
    pub last_modified: Option<String>,
    /// The resource (a read) or searchset Bundle (a search).
    pub resource: Option<Value>,
    /// The error, as the issues to report.
    pub error: Option<(String, Vec<EntryIssue>)>,
}

/// One OperationOutcome issue of a failed entry: its diagnostics and,
/// where known, the FHIRPath of the element at fault.
pub type EntryIssue = (String, Option<String>);

impl EntryResult {
    fn status_only(status: u16) -> Self {
        EntryResult { status, location: None, etag: None, last_modified: None, resource: None, error: None }
    }
}

/// A Bundle's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    /// All or nothing.
    Transaction,
    /// Each entry on its own.
    Batch,
}

fn invalid(path: &str, msg: impl Into<String>) -> ServiceError {
    ServiceError::invalid(path, msg)
}

fn parse_entry(i: usize, e: &Value, base: &str) -> Result<Entry, ServiceError> {
    let path = format!("Bundle.entry[{i}]");
    let req = e.get("request").ok_or_else(|| invalid(&format!("{path}.request"), "each entry needs a request"))?;
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(&format!("{path}.request.method"), "missing method"))?;
    let url =
        req.get("url").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{path}.request.url"), "missing url"))?;
    let url = url.strip_prefix(&format!("{base}/fhir/")).unwrap_or(url).trim_start_matches('/');
    let (p, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segs: Vec<&str> = p.split('/').collect();
    let bad_url = || {
        invalid(
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
            if_match: header("ifMatch").map(|m| parse_etag(&m)).transpose()?,
        }),
        ("DELETE", [_, id], None) if is_fhir_id(id) => Kind::Write(WriteOp::Delete { id: (*id).to_owned() }),
        ("GET", [_, id], None) if is_fhir_id(id) => Kind::Read { id: (*id).to_owned(), version: None },
        ("GET", [_, id, "_history", v], None) if is_fhir_id(id) => {
            Kind::Read { id: (*id).to_owned(), version: Some(v.parse().map_err(|_| bad_url())?) }
        }
        ("GET", [_], q) => Kind::Search { query: q.unwrap_or("").to_owned() },
        ("PUT", [_], Some(q)) if !q.is_empty() => Kind::Write(WriteOp::ConditionalUpdate {
            query: q.to_owned(),
            if_match: header("ifMatch").map(|m| parse_etag(&m)).transpose()?,
        }),
        ("DELETE", [_], Some(q)) if !q.is_empty() => Kind::Write(WriteOp::ConditionalDelete { query: q.to_owned() }),
        ("PATCH", [_, id], None) if is_fhir_id(id) => Kind::Write(WriteOp::Patch {
            id: (*id).to_owned(),
            if_match: header("ifMatch").map(|m| parse_etag(&m)).transpose()?,
            patch: patch_of(resource.as_ref(), &path)?,
        }),
        ("PATCH", [_], Some(q)) if !q.is_empty() => Kind::Write(WriteOp::ConditionalPatch {
            query: q.to_owned(),
            if_match: header("ifMatch").map(|m| parse_etag(&m)).transpose()?,
            patch: patch_of(resource.as_ref(), &path)?,
        }),
        _ => return Err(bad_url()),
    };
    if let Kind::Write(op) = &kind {
        if !matches!(
            op,
            WriteOp::Delete { .. }
                | WriteOp::ConditionalDelete { .. }
                | WriteOp::Patch { .. }
                | WriteOp::ConditionalPatch { .. }
        ) {
            let r = resource
                .as_ref()
                .ok_or_else(|| invalid(&format!("{path}.resource"), "POST and PUT entries need a resource"))?;
            validate_body(rtype, r).map_err(|e| prefix_error(e, &format!("{path}.resource")))?;
            if let WriteOp::Update { id, .. } = op {
                if r.get("id").and_then(Value::as_str) != Some(id) {
                    return Err(invalid(&format!("{path}.resource.id"), "the resource id must match the request url"));
                }
            }
        }
    }
    Ok(Entry { index: i, full_url, rtype, kind, resource })
}

/// The patch of a PATCH entry: a Binary holding a JSON Patch
/// (`application/json-patch+json`, base64 in `data`), or a Parameters
/// resource (FHIRPath Patch).
fn patch_of(resource: Option<&Value>, path: &str) -> Result<Value, ServiceError> {
    use base64::Engine as _;
    let at = format!("{path}.resource");
    let r = resource.ok_or_else(|| {
        invalid(&at, "a PATCH entry needs a resource: a Binary with a JSON Patch, or a Parameters (FHIRPath Patch)")
    })?;
    match r.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok(r.clone()),
        Some("Binary") => {
            let ct = r.get("contentType").and_then(Value::as_str).unwrap_or("");
            if ct.split(';').next().map(str::trim) != Some("application/json-patch+json") {
                return Err(invalid(
                    &format!("{at}.contentType"),
                    format!(
                        "a Binary patch must be application/json-patch+json, not '{}'",
                        ct.chars().take(60).collect::<String>()
                    ),
                ));
            }
            let data =
                r.get("data").and_then(Value::as_str).ok_or_else(|| invalid(&format!("{at}.data"), "missing"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| invalid(&format!("{at}.data"), "not base64"))?;
            let v: Value = mamori_core::fhir::json::parse_strict(&bytes, mamori_core::fhir::json::MAX_STRING_BYTES)
                .map_err(|e| invalid(&format!("{at}.data"), format!("not a JSON Patch: {e}")))?;
            if !v.is_array() {
                return Err(invalid(&format!("{at}.data"), "a JSON Patch is an array of operations"));
            }
            Ok(v)
        }
        _ => Err(invalid(&at, "a PATCH entry's resource is a Binary (JSON Patch) or a Parameters (FHIRPath Patch)")),
    }
}

fn prefix_error(e: ServiceError, prefix: &str) -> ServiceError {
    let fix = |issues: Vec<Issue>| {
        issues
            .into_iter()
            .map(|mut i| {
                i.path = match i.path.split_once('.') {
                    Some((_, rest)) => format!("{prefix}.{rest}"),
                    None => prefix.to_owned(),
                };
                i
            })
            .collect()
    };
    match e {
        ServiceError::Invalid(issues) => ServiceError::Invalid(fix(issues)),
        ServiceError::Unprocessable(issues) => ServiceError::Unprocessable(fix(issues)),
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

/// Names the entry in an error.
fn entry_error(e: &Entry, err: ServiceError) -> ServiceError {
    let prefix = format!("Bundle.entry[{}]", e.index);
    match err {
        ServiceError::Invalid(mut i) | ServiceError::Unprocessable(mut i) if !i.is_empty() => {
            for x in &mut i {
                x.path = if x.path.is_empty() { prefix.clone() } else { format!("{prefix} {}", x.path) };
            }
            ServiceError::Unprocessable(i)
        }
        ServiceError::Denied { message, decision } => {
            ServiceError::Denied { message: format!("{prefix}: {message}"), decision }
        }
        ServiceError::NotFound(m) => ServiceError::NotFound(format!("{prefix}: {m}")),
        ServiceError::Precondition(m) => ServiceError::Precondition(format!("{prefix}: {m}")),
        other => other,
    }
}

fn step_result(base: &str, rtype: ResourceType, step: &Step) -> EntryResult {
    match step {
        Step::Done { written, .. } => EntryResult {
            status: step_status(step),
            location: (!written.deleted)
                .then(|| format!("{base}/fhir/{}/{}/_history/{}", rtype, written.id, written.version)),
            etag: Some(format!("W/\"{}\"", written.version)),
            last_modified: Some(written.last_updated.to_rfc3339()),
            resource: None,
            error: None,
        },
        Step::Matched { id, version, .. } => EntryResult {
            status: 200,
            location: Some(format!("{base}/fhir/{rtype}/{id}/_history/{version}")),
            etag: Some(format!("W/\"{version}\"")),
            last_modified: None,
            resource: None,
            error: None,
        },
        Step::NothingToDelete { .. } => EntryResult::status_only(step_status(step)),
    }
}

/// A GET entry: read or search, decided and audited like the REST calls.
fn get_entry(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    base: &str,
    e: &Entry,
) -> Result<(EntryResult, mamori_audit::event::AuditRecord), ServiceError> {
    let now = ctx.now;
    match &e.kind {
        Kind::Read { id, version } => {
            let v = match version {
                Some(n) => records::vread(ctx.conn, e.rtype.as_str(), id, *n)?,
                None => records::read(ctx.conn, e.rtype.as_str(), id)?,
            };
            let action = if version.is_some() { "vread" } else { "read" };
            let Some(v) = v else {
                let rec = actor.fhir_record(action, 404, Some(e.rtype.as_str()), Some(id), None, vec![], None, now);
                return Ok((EntryResult::status_only(404), rec));
            };
            let d = authz::decide_record(ctx.conn, actor, Action::Read, e.rtype, &v.patients, now)?;
            let status = if !d.permit {
                403
            } else if v.deleted {
                410
            } else {
                200
            };
            let rec = actor.fhir_record(
                action,
                status,
                Some(e.rtype.as_str()),
                Some(id),
                Some(v.version),
                v.patients.clone(),
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
                    error: None,
                },
                rec,
            ))
        }
        Kind::Search { query } => {
            let pairs = parse_pairs(query)?;
            let (q, _) = parse_query_in(&ctx.search_params(), e.rtype, &pairs, false)
                .map_err(|x| ServiceError::invalid("", x.to_string()))?;
            let op = Operation::Record {
                action: Action::Search,
                target: Target { rtype: e.rtype, scope: PatientScope::Any },
            };
            let d = authz::decide(actor, &op, Facts::default());
            if !d.permit {
                let rec =
                    actor.fhir_record("search-type", 403, Some(e.rtype.as_str()), None, None, vec![], Some(&d), now);
                return Ok((EntryResult::status_only(403), rec));
            }
            let has = match super::has_scope(actor, &q, now) {
                Ok(h) => h,
                Err(refused) => {
                    let rec = actor.fhir_record(
                        "search-type",
                        403,
                        Some(e.rtype.as_str()),
                        None,
                        None,
                        vec![],
                        Some(&refused),
                        now,
                    );
                    return Ok((EntryResult::status_only(403), rec));
                }
            };
            let page = search::search_scoped(ctx.conn, &q, &restriction(&d, actor, now), &has)?;
            let entries: Vec<Value> = page
                .entries
                .iter()
                .map(|v| json!({"fullUrl": format!("{base}/fhir/{}/{}", v.rtype, v.id), "resource": serde_json::from_str::<Value>(&v.body).unwrap_or(Value::Null)}))
                .collect();
            let patients = page.entries.iter().flat_map(|v| v.patients.iter().cloned()).collect();
            let mut rec =
                actor.fhir_record("search-type", 200, Some(e.rtype.as_str()), None, None, patients, Some(&d), now);
            rec.query = Some(query.clone());
            let mut bundle = json!({"resourceType": "Bundle", "type": "searchset"});
            if let Some(n) = page.total {
                bundle["total"] = n.into();
            }
            if !entries.is_empty() {
                bundle["entry"] = Value::Array(entries);
            }
            Ok((EntryResult { resource: Some(bundle), ..EntryResult::status_only(200) }, rec))
        }
        Kind::Write(_) => Err(ServiceError::internal("not a read entry")),
    }
}

fn order_key(e: &Entry) -> u8 {
    match &e.kind {
        Kind::Write(WriteOp::Delete { .. } | WriteOp::ConditionalDelete { .. }) => 0,
        Kind::Write(WriteOp::Create { .. }) => 1,
        Kind::Write(
            WriteOp::Update { .. }
            | WriteOp::ConditionalUpdate { .. }
            | WriteOp::Patch { .. }
            | WriteOp::ConditionalPatch { .. },
        ) => 2,
        Kind::Read { .. } | Kind::Search { .. } => 3,
    }
}

fn run_transaction(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    base: &str,
    mut entries: Vec<Entry>,
    conf: &Conformance,
) -> Result<Vec<EntryResult>, ServiceError> {
    // 1. Ids for every entry to create (a conditional create first looks
    // for its match within the job); map fullUrls.
    // A conditional update or delete is resolved here, before anything is
    // written, to the plain write it stands for (its search sees the
    // store as the transaction found it).
    let mut map: HashMap<String, String> = HashMap::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    let mut matched: HashMap<usize, Step> = HashMap::new();
    let mut resolved: HashMap<usize, WriteOp> = HashMap::new();
    for e in entries.iter_mut() {
        let Kind::Write(op) = &e.kind else { continue };
        if matches!(
            op,
            WriteOp::ConditionalUpdate { .. } | WriteOp::ConditionalDelete { .. } | WriteOp::ConditionalPatch { .. }
        ) {
            let mut body = e.resource.take();
            let r = resolve_conditional(ctx, actor, e.rtype, op, &mut body);
            e.resource = body;
            match r.map_err(|x| entry_error(e, x))? {
                Resolved::Op(plain) => {
                    resolved.insert(e.index, plain);
                }
                Resolved::Step(step) => {
                    matched.insert(e.index, step);
                }
            }
        }
    }
    for e in &entries {
        let Kind::Write(op) = &e.kind else { continue };
        let op = resolved.get(&e.index).unwrap_or(op);
        let target = match op {
            WriteOp::Create { if_none_exist: Some(cond) } => {
                match conditional_match(ctx, actor, e.rtype, cond).map_err(|x| entry_error(e, x))? {
                    Some(m) => {
                        let id = match &m {
                            Step::Matched { id, .. } => Some(id.clone()),
                            _ => None,
                        };
                        matched.insert(e.index, m);
                        id
                    }
                    None => None,
                }
            }
            WriteOp::Create { if_none_exist: None } => None,
            WriteOp::Update { id, .. } | WriteOp::Patch { id, .. } => Some(id.clone()),
            // A conditional delete that matched nothing is in `matched`.
            WriteOp::Delete { .. } | WriteOp::ConditionalDelete { .. } => continue,
            WriteOp::ConditionalUpdate { .. } | WriteOp::ConditionalPatch { .. } => {
                return Err(entry_error(e, ServiceError::internal("a conditional write was not resolved")))
            }
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
            Kind::Write(op) => match resolved.get(&e.index).unwrap_or(op) {
                WriteOp::Update { id, .. } | WriteOp::Patch { id, .. } => {
                    Some((e.rtype.as_str().to_owned(), id.clone()))
                }
                _ => None,
            },
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
                    let op = match resolved.get(&e.index).unwrap_or(op) {
                        WriteOp::Create { .. } => WriteOp::Create { if_none_exist: None },
                        other => other.clone(),
                    };
                    write_step(
                        ctx,
                        actor,
                        e.rtype,
                        &op,
                        e.resource.clone(),
                        assigned.get(&e.index).cloned(),
                        &pending,
                        false,
                        conf,
                    )
                    .map_err(|x| entry_error(e, x))?
                };
                if let (Step::NothingToDelete { existed: false }, WriteOp::Delete { id }) = (&step, op) {
                    return Err(ServiceError::NotFound(format!(
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
                records.push(step_record(actor, op, e.rtype, &step, r.status, ctx.now));
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
            _ => {
                let (r, rec) = get_entry(ctx, actor, base, e).map_err(|x| entry_error(e, x))?;
                records.push(rec);
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            }
        }
    }
    // 4. References of everything written, now that all entries exist.
    for (idx, body) in &written_bodies {
        let v: Value = serde_json::from_str(body).map_err(|x| ServiceError::internal_from("a stored body", x))?;
        let issues = records::check_references(ctx.conn, &v, &HashSet::new())?;
        if !issues.is_empty() {
            let err = ServiceError::Unprocessable(issues);
            return Err(match entries.iter().find(|e| e.index == *idx) {
                Some(e) => entry_error(e, err),
                None => err,
            });
        }
    }
    for r in &records {
        ctx.audit(r)?;
    }
    Ok(results.into_iter().map(|r| r.unwrap_or_else(|| EntryResult::status_only(500))).collect())
}

fn run_batch(
    ctx: &mut WriteCtx<'_>,
    actor: &Actor,
    base: &str,
    entries: Vec<Result<Entry, ServiceError>>,
    conf: &Conformance,
) -> Result<Vec<EntryResult>, ServiceError> {
    let mut out = Vec::new();
    for e in entries {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                ctx.audit(&error_record(actor, "batch-entry", None, None, &err, ctx.now))?;
                out.push(EntryResult {
                    error: Some((err.code().to_owned(), err.issues())),
                    ..EntryResult::status_only(err.status())
                });
                continue;
            }
        };
        ctx.conn.batch("SAVEPOINT entry")?;
        let r = match &e.kind {
            Kind::Write(op) => {
                write_step(ctx, actor, e.rtype, op, e.resource.clone(), None, &HashSet::new(), true, conf).map(|step| {
                    let r = step_result(base, e.rtype, &step);
                    let rec = step_record(actor, op, e.rtype, &step, r.status, ctx.now);
                    (r, rec)
                })
            }
            _ => get_entry(ctx, actor, base, &e),
        };
        match r {
            Ok((r, rec)) => {
                ctx.conn.batch("RELEASE entry")?;
                ctx.audit(&rec)?;
                out.push(r);
            }
            Err(err) => {
                ctx.conn.batch("ROLLBACK TO entry; RELEASE entry")?;
                let err = entry_error(&e, err);
                let action = match &e.kind {
                    Kind::Write(op) => action_name(op, None),
                    Kind::Read { .. } => "read",
                    Kind::Search { .. } => "search-type",
                };
                let mut rec = error_record(actor, action, Some(e.rtype.as_str()), None, &err, ctx.now);
                if let Some(d) = rec.detail.as_mut().and_then(Value::as_object_mut) {
                    d.insert("entry".into(), json!(e.index));
                }
                ctx.audit(&rec)?;
                out.push(EntryResult {
                    error: Some((err.code().to_owned(), err.issues())),
                    ..EntryResult::status_only(err.status())
                });
            }
        }
    }
    Ok(out)
}

/// Runs a batch or transaction Bundle (already parsed from JSON). The
/// results carry resources read in the job, so they are [`Audited`].
pub async fn run(
    svc: &Services,
    actor: &Actor,
    bundle: Value,
) -> Result<Audited<(BundleKind, Vec<EntryResult>)>, ServiceError> {
    let base = svc.base_url.clone();
    let pre = (|| {
        if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(invalid("resourceType", "POST /fhir takes a Bundle of type batch or transaction"));
        }
        mamori_core::fhir::validate::validate_resource(&bundle).map_err(ServiceError::Invalid)?;
        let kind = match bundle.get("type").and_then(Value::as_str).unwrap_or("") {
            "batch" => BundleKind::Batch,
            "transaction" => BundleKind::Transaction,
            _ => return Err(invalid("Bundle.type", "must be batch or transaction")),
        };
        let raw: Vec<Value> = bundle.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok((kind, raw))
    })();
    let (kind, raw) = match pre {
        Ok(x) => x,
        Err(e) => return Err(super::reject(svc, actor, "transaction", Some("Bundle"), None, e).await),
    };
    let parsed: Vec<Result<Entry, ServiceError>> =
        raw.iter().enumerate().map(|(i, e)| parse_entry(i, e, &base)).collect();
    let (a2, a3) = (actor.clone(), actor.clone());
    let n = parsed.len();
    let conf = svc.conformance();
    let (results, event) = match kind {
        BundleKind::Transaction => {
            let entries = match parsed.into_iter().collect::<Result<Vec<_>, _>>() {
                Ok(e) => e,
                Err(e) => return Err(super::reject(svc, actor, "transaction", Some("Bundle"), None, e).await),
            };
            svc.store
                .writer()
                .run(
                    move |ctx| {
                        let results = run_transaction(ctx, &a2, &base, entries, &conf)?;
                        let mut rec =
                            a2.fhir_record("transaction", 200, Some("Bundle"), None, None, vec![], None, ctx.now);
                        rec.detail = Some(json!({"entries": n}));
                        let event = ctx.audit(&rec)?;
                        Ok((results, event))
                    },
                    move |e: &ServiceError, ctx| {
                        let mut rec = error_record(&a3, "transaction", Some("Bundle"), None, e, ctx.now);
                        if let Some(d) = rec.detail.as_mut().and_then(Value::as_object_mut) {
                            d.insert("entries".into(), json!(n));
                            d.insert("rolled_back".into(), json!(true));
                        }
                        ctx.audit(&rec).map(|_| ())
                    },
                )
                .await?
        }
        BundleKind::Batch => {
            svc.store
                .writer()
                .run(
                    move |ctx| {
                        let results = run_batch(ctx, &a2, &base, parsed, &conf)?;
                        let mut rec = a2.fhir_record("batch", 200, Some("Bundle"), None, None, vec![], None, ctx.now);
                        rec.detail = Some(json!({"entries": n}));
                        let event = ctx.audit(&rec)?;
                        Ok((results, event))
                    },
                    move |e: &ServiceError, ctx| {
                        ctx.audit(&error_record(&a3, "batch", Some("Bundle"), None, e, ctx.now)).map(|_| ())
                    },
                )
                .await?
        }
    };
    Ok(Audited::committed((kind, results), event))
}
