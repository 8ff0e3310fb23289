//! Reconciliation after recovery (EM-C2, docs/reconciliation.md): imports
//! a standalone node's export under the data-consistency rules — every
//! entry keeps its provenance, nothing changed elsewhere is overwritten
//! (conflicts are queued for a person), provisional patients are matched
//! by a person and merged, re-importing changes nothing — and the
//! transcription of paper records with their original author and time.

use std::collections::HashSet;

use mamori_core::continuity::{reconcile, repoint_patient, Central, Reconcile, PROVISIONAL_SYSTEM, TAG_SYSTEM};
use mamori_core::fhir::compartment::patients_named;
use mamori_core::fhir::search::parse_query;
use mamori_core::fhir::validate::{validate_resource, Issue};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Action, Decision, Operation};
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::writer::WriteCtx;
use mamori_store::{accounts, continuity as cs, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use super::container::{self, unb64, ContainerError, EXPORT_MAGIC};
use super::snapshot::{self, SnapError};
use crate::actor::{set_patients, Actor};
use crate::authz;
use crate::error::ServiceError;
use crate::records::validate_body;
use crate::records::write::{step_record, write_step, WriteOp};
use crate::records::Step;
use crate::services::Services;

const PARTICIPANT: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// One entry of a standalone export.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    /// The entry's id: `<node>:<type>/<id>/_history/<version>`.
    pub entry: String,
    /// The resource type.
    pub t: String,
    /// The resource id.
    pub id: String,
    /// The version on the node.
    pub local_version: u64,
    /// The central version the node's copy was based on (from the snapshot);
    /// `None` for a resource created offline.
    pub base: Option<u64>,
    /// Whether the node deleted the resource.
    pub deleted: bool,
    /// Who wrote the version on the node.
    pub author: String,
    /// When it was written on the node (RFC 3339).
    pub recorded_at: String,
    /// The resource (`null` for a deletion).
    pub r: Value,
}

fn strip_meta(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        if m.is_empty() {
            v.as_object_mut().map(|o| o.remove("meta"));
        }
    }
    v
}

fn same(a: &Value, b: &Value) -> bool {
    strip_meta(a.clone()) == strip_meta(b.clone())
}

fn provenance(
    target: &str,
    occurred: &str,
    enterer: &str,
    custodian: &str,
    source: &Value,
    activity: &str,
    author: Option<&str>,
) -> Value {
    let mut agents =
        vec![json!({"type": {"coding": [{"system": PARTICIPANT, "code": "enterer"}]}, "who": {"display": enterer}})];
    if let Some(a) = author {
        agents
            .insert(0, json!({"type": {"coding": [{"system": PARTICIPANT, "code": "author"}]}, "who": {"display": a}}));
    }
    agents.push(
        json!({"type": {"coding": [{"system": PARTICIPANT, "code": "custodian"}]}, "who": {"display": custodian}}),
    );
    json!({
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "occurredDateTime": occurred,
        "recorded": "",
        "agent": agents,
        "entity": [{"role": "source", "what": source}],
        "activity": {"text": activity},
    })
}

/// Stores a Provenance (it is the data of its target's patients).
fn put_provenance(w: &mut WriteCtx<'_>, mut p: Value, author: &str) -> Result<String, ServiceError> {
    p["recorded"] = json!(w.now.to_rfc3339());
    validate_body(ResourceType::PROVENANCE, &p)?;
    let id = accounts::new_id()?;
    records::put(w, ResourceType::PROVENANCE, &id, p, None, author, w.now)?;
    Ok(id)
}

/// Suggested central matches for a provisional patient.
fn suggest(c: &mut dyn Conn, p: &Value, self_id: &str) -> Result<Vec<Value>, StoreError> {
    let mut out: Vec<Value> = Vec::new();
    let mut seen = HashSet::new();
    let mut add = |c: &mut dyn Conn,
                   pairs: Vec<(String, String)>,
                   why: String,
                   out: &mut Vec<Value>|
     -> Result<(), StoreError> {
        let Ok((q, _)) = parse_query(ResourceType::PATIENT, &pairs, false) else { return Ok(()) };
        for v in mamori_store::search::search(c, &q, &Restriction::None)?.entries {
            if v.id != self_id && seen.insert(v.id.clone()) {
                let b: Value = serde_json::from_str(&v.body).unwrap_or(Value::Null);
                let provisional =
                    b["identifier"].as_array().is_some_and(|a| a.iter().any(|i| i["system"] == PROVISIONAL_SYSTEM));
                if !provisional {
                    out.push(json!({"patient": v.id, "why": why, "name": b["name"], "birthDate": b["birthDate"], "gender": b["gender"]}));
                }
            }
        }
        Ok(())
    };
    for i in p["identifier"].as_array().into_iter().flatten() {
        if let (Some(s), Some(v)) = (i["system"].as_str(), i["value"].as_str()) {
            if s != PROVISIONAL_SYSTEM {
                add(c, vec![("identifier".into(), format!("{s}|{v}"))], format!("identifier {s}|{v}"), &mut out)?;
            }
        }
    }
    for n in p["name"].as_array().into_iter().flatten() {
        if let Some(f) = n["family"].as_str() {
            let mut pairs = vec![("family".to_owned(), f.to_owned())];
            let mut why = format!("family name {f}");
            if let Some(b) = p["birthDate"].as_str() {
                pairs.push(("birthdate".into(), b.to_owned()));
                why.push_str(&format!(", born {b}"));
            }
            if let Some(g) = p["gender"].as_str().filter(|g| *g != "unknown") {
                pairs.push(("gender".into(), g.to_owned()));
            }
            add(c, pairs, why, &mut out)?;
        }
    }
    out.truncate(10);
    Ok(out)
}

fn is_provisional(p: &Value) -> bool {
    p["meta"]["tag"]
        .as_array()
        .is_some_and(|a| a.iter().any(|t| t["system"] == TAG_SYSTEM && t["code"] == "provisional"))
}

struct Ctx<'a> {
    export: &'a str,
    node: &'a str,
    by: &'a str,
}

/// Applies entries in a job; returns the report.
fn apply(
    w: &mut WriteCtx<'_>,
    cx: &Ctx<'_>,
    entries: &[Entry],
    mut rejected: Vec<Value>,
) -> Result<Value, ServiceError> {
    let in_export: HashSet<String> =
        entries.iter().filter(|e| e.t == "Patient" && !e.deleted).map(|e| e.id.clone()).collect();
    let mut out = Vec::new();
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut patients = HashSet::new();
    let source = json!({"identifier": {"system": "urn:mamori:standalone-export", "value": cx.export}, "display": format!("standalone node {} / export {}", cx.node, cx.export)});
    for e in entries {
        let rtype = ResourceType::parse(&e.t).map_err(|x| ServiceError::internal_from("an entry's type", x))?;
        let cur = records::read(w.conn, &e.t, &e.id)?;
        let applied = cs::applied(w.conn, cx.node, &e.t, &e.id)?;
        if applied.is_some_and(|(l, _)| l >= e.local_version) {
            out.push(json!({"entry": e.entry, "outcome": "unchanged", "reason": "already imported"}));
            *counts.entry("unchanged").or_default() += 1;
            continue;
        }
        // A later export continues from what the node's earlier export became.
        let base = applied.map(|(_, c)| c).or(e.base);
        let task = |w: &mut WriteCtx<'_>, kind: &str, reason: String| -> Result<Value, StoreError> {
            let t = cs::insert_task(
                w.conn,
                cx.export,
                kind,
                &e.t,
                &e.id,
                &json!({"entry": e.entry, "reason": reason, "offline": e.r,
                "deleted": e.deleted, "base": e.base, "central_version": cur.as_ref().map(|c| c.version), "recorded_by": e.author,
                "recorded_at": e.recorded_at, "node": cx.node}),
                w.now,
            )?;
            Ok(
                json!({"entry": e.entry, "outcome": if kind == "conflict" { "conflict" } else { "queued" }, "task": t, "reason": reason}),
            )
        };
        if e.deleted {
            let r = task(w, "conflict", "deleted on the standalone node; a person decides".into())?;
            *counts.entry("conflicts").or_default() += 1;
            out.push(r);
            continue;
        }
        let central = cur.as_ref().map(|c| Central {
            version: c.version,
            deleted: c.deleted,
            same_content: !c.deleted && serde_json::from_str::<Value>(&c.body).is_ok_and(|b| same(&b, &e.r)),
        });
        match reconcile(base, central) {
            Reconcile::Unchanged => {
                *counts.entry("unchanged").or_default() += 1;
                out.push(json!({"entry": e.entry, "outcome": "unchanged"}));
            }
            Reconcile::Conflict { reason } => {
                *counts.entry("conflicts").or_default() += 1;
                out.push(task(w, "conflict", reason)?);
            }
            d @ (Reconcile::Create | Reconcile::FastForward) => {
                if rtype != ResourceType::PATIENT {
                    let mut unknown = None;
                    for p in patients_named(rtype, &e.id, &e.r) {
                        let known = in_export.contains(&p)
                            || records::current(w.conn, "Patient", &p)?.is_some_and(|c| !c.deleted);
                        if known {
                            patients.insert(p);
                        } else {
                            unknown = Some(p);
                        }
                    }
                    if let Some(p) = unknown {
                        *counts.entry("queued").or_default() += 1;
                        out.push(task(w, "unknown_patient", format!("Patient/{p} is not known centrally"))?);
                        continue;
                    }
                }
                let expected = if d == Reconcile::FastForward { base } else { None };
                let author = format!("{}@{}", e.author, cx.node);
                let written = records::put(w, rtype, &e.id, strip_meta(e.r.clone()), expected, &author, w.now)?;
                cs::set_applied(w.conn, cx.node, &e.t, &e.id, e.local_version, written.version)?;
                let target = format!("{}/{}/_history/{}", e.t, e.id, written.version);
                put_provenance(
                    w,
                    provenance(
                        &target,
                        &e.recorded_at,
                        &format!("{} @ standalone node {}", e.author, cx.node),
                        &format!("reconciled by {}", cx.by),
                        &source,
                        "スタンドアロン記録の統合 / reconciled from a standalone node",
                        None,
                    ),
                    cx.by,
                )?;
                let mut item = json!({"entry": e.entry, "outcome": if d == Reconcile::Create { "created" } else { "updated" }, "version": written.version});
                if rtype == ResourceType::PATIENT {
                    patients.insert(e.id.clone());
                    if is_provisional(&e.r) {
                        let sugg = suggest(w.conn, &e.r, &e.id)?;
                        let t = cs::insert_task(
                            w.conn,
                            cx.export,
                            "match",
                            "Patient",
                            &e.id,
                            &json!({"entry": e.entry, "provisional": e.r, "suggestions": sugg, "node": cx.node}),
                            w.now,
                        )?;
                        item["match_task"] = json!(t);
                        *counts.entry("to_match").or_default() += 1;
                    }
                }
                *counts.entry("imported").or_default() += 1;
                out.push(item);
            }
        }
    }
    *counts.entry("rejected").or_default() += rejected.len() as u64;
    out.append(&mut rejected);
    let mut pats: Vec<String> = patients.into_iter().collect();
    pats.sort();
    Ok(
        json!({"export": cx.export, "node": cx.node, "imported_by": cx.by, "imported_at": w.now.to_rfc3339(), "counts": counts,
              "patients": pats, "entries": out}),
    )
}

/// Reads, verifies and decrypts an export; returns its header and entries.
pub fn open_export(
    bytes: &[u8],
    trusted_keys: &[String],
    institution: &mamori_exchange::cms::Identity,
) -> Result<(Value, Vec<Entry>), SnapError> {
    let v = container::verify(bytes, EXPORT_MAGIC, "mamori standalone export")?;
    let node_cert = snapshot::check_signature(&v, "node_cert", None)?;
    // The node's certificate must be issued by one of our snapshot keys.
    let ok = trusted_keys.iter().any(|pem| {
        openssl::pkey::PKey::public_key_from_pem(pem.as_bytes())
            .ok()
            .is_some_and(|k| node_cert.verify(&k).unwrap_or(false))
    });
    if !ok {
        return Err(SnapError::Signature("the export is signed by an unknown node (its certificate was not issued by this institution's snapshot keys)".into()));
    }
    let enc = &v.header["encryption"];
    let k = snapshot::rsa_oaep_open(&institution.key, &unb64(enc["wrapped_key"].as_str().unwrap_or(""))?).map_err(
        |_| SnapError::Key("this export was not made for this institution (its key cannot be unwrapped)".into()),
    )?;
    let key: [u8; 32] = k.as_slice().try_into().map_err(|_| SnapError::Key("data key of the wrong size".into()))?;
    let prefix: [u8; 4] = unb64(enc["nonce_prefix"].as_str().unwrap_or(""))?
        .try_into()
        .map_err(|_| SnapError::Other("bad nonce prefix".into()))?;
    let mut entries = Vec::new();
    let mut bad: Option<String> = None;
    container::decrypt(bytes, EXPORT_MAGIC, "mamori standalone export", &key, &prefix, |line| {
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(x) => {
                bad = Some(x.to_string());
                return Err(ContainerError::Corrupt(format!("entry: {x}")));
            }
        }
        Ok(())
    })?;
    if let Some(b) = bad {
        return Err(SnapError::Other(b));
    }
    let declared = v.manifest["entries"].as_u64().unwrap_or(0);
    if declared != entries.len() as u64 {
        return Err(SnapError::Other(format!(
            "the manifest lists {declared} entries, the file holds {}",
            entries.len()
        )));
    }
    Ok((v.header, entries))
}

/// Imports a standalone node's export (admins, the records keeper): it
/// must be signed by a node this institution's snapshot key certified and
/// encrypted to this institution. Re-importing changes nothing.
pub async fn import(svc: &Services, actor: &Actor, bytes: Vec<u8>) -> Result<Value, ServiceError> {
    const ACTION: &str = "reconcile-import";
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    let d = match authz::require(actor, &Operation::ReconcileImport, facts, "reconciliation imports") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    let st = svc;
    let keys: Vec<String> = st.store.read(cs::keys).await?.into_iter().map(|k| k.public_pem).collect();
    let x = st.exchange.clone();
    let opened = tokio::task::spawn_blocking(move || open_export(&bytes, &keys, &x.identity))
        .await
        .map_err(|e| ServiceError::internal_from("opening the export", e))?;
    let (header, entries) = match opened {
        Ok(x) => x,
        Err(e) => {
            let e = ServiceError::Unprocessable(vec![Issue { path: String::new(), message: e.to_string() }]);
            return Err(svc.refused(actor, ACTION, e).await);
        }
    };
    let export_id = header["id"].as_str().unwrap_or("").to_owned();
    let node = header["node"].as_str().unwrap_or("").to_owned();
    if let Some(prev) = st
        .store
        .read({
            let id = export_id.clone();
            move |c| cs::import_report(c, &id)
        })
        .await?
    {
        let mut rec = actor.decided(ACTION, 200, &d, st.now());
        rec.detail = Some(json!({"export": export_id, "node": node, "already_imported": true}));
        st.audit(vec![rec]).await?;
        return Ok(json!({"already_imported": true, "report": prev}));
    }
    // Entries that are not valid resources are rejected (reported), never applied.
    let mut valid = Vec::new();
    let mut rejected = Vec::new();
    for e in entries {
        let why = if ResourceType::parse(&e.t).is_err() {
            Some(format!("'{}' is not a resource type", e.t))
        } else if e.deleted {
            None
        } else {
            match validate_resource(&e.r) {
                Ok(rt) if rt.as_str() == e.t && e.r["id"].as_str() == Some(e.id.as_str()) => None,
                Ok(_) => Some("the resource does not match its entry (type or id)".into()),
                Err(issues) => {
                    Some(issues.iter().map(|i| format!("{}: {}", i.path, i.message)).collect::<Vec<_>>().join("; "))
                }
            }
        };
        match why {
            Some(w) => rejected.push(json!({"entry": e.entry, "outcome": "rejected", "reason": w})),
            None => valid.push(e),
        }
    }
    let (a2, a3, eid, n2) = (actor.clone(), actor.clone(), export_id.clone(), node.clone());
    let report = st
        .store
        .writer()
        .run_exclusive(
            move |w| {
                if cs::import_report(w.conn, &eid)?.is_some() {
                    return Err(ServiceError::Conflict(format!("export {eid} was imported meanwhile")));
                }
                let by = a2.name().to_owned();
                let report = apply(w, &Ctx { export: &eid, node: &n2, by: &by }, &valid, rejected)?;
                cs::insert_import(w.conn, &eid, &n2, &by, &report, w.now)?;
                let mut rec = a2.decided(ACTION, 201, &d, w.now);
                rec.patients = report["patients"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                rec.detail = Some(json!({"export": eid, "node": n2, "counts": report["counts"]}));
                w.audit(&rec)?;
                Ok(report)
            },
            move |e: &ServiceError, w| w.audit(&crate::commit::failure_record(&a3, ACTION, e, w.now)).map(|_| ()),
        )
        .await?;
    Ok(json!({"already_imported": false, "report": report}))
}

async fn read_gate(svc: &Services, actor: &Actor, action: &str) -> Result<Decision, ServiceError> {
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    svc.gate(actor, action, Operation::ReconcileRead, facts, "reconciliation").await
}

/// The import reports; audited with the patients they concern.
pub async fn imports(svc: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    const ACTION: &str = "reconcile-imports";
    let d = read_gate(svc, actor, ACTION).await?;
    let rows = json!(svc.store.read(|c| cs::imports(c, 200)).await?);
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    let patients = rows
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["report"]["patients"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    set_patients(&mut rec, patients);
    svc.audit(vec![rec]).await?;
    Ok(rows)
}

/// The patients a task's data concerns.
fn task_patients(c: &mut dyn Conn, t: &cs::Task) -> Result<Vec<String>, StoreError> {
    let rtype = ResourceType::parse(&t.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
    let mut out = Vec::new();
    for key in ["offline", "provisional"] {
        if t.detail[key].is_object() {
            out.extend(patients_named(rtype, &t.rid, &t.detail[key]));
        }
    }
    if let Some(cur) = records::current(c, &t.rtype, &t.rid)? {
        out.extend(cur.patients);
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Reconciliation tasks (state open by default, or all): each task's data
/// (the offline resource, the provisional patient, suggested matches) is
/// shown only to whom may read that patient's records; other tasks are
/// listed without it. Audited with the patients shown.
pub async fn tasks(svc: &Services, actor: &Actor, state: Option<String>) -> Result<Vec<Value>, ServiceError> {
    const ACTION: &str = "reconcile-tasks";
    let d = read_gate(svc, actor, ACTION).await?;
    let state = state.unwrap_or_else(|| "open".into());
    let (a2, now) = (actor.clone(), svc.now());
    let (rows, shown) = svc
        .store
        .read(move |c| {
            let list = cs::tasks(c, if state == "all" { None } else { Some(&state) }, 1000)?;
            let mut rows = Vec::new();
            let mut shown = Vec::new();
            for t in list {
                let patients = task_patients(c, &t)?;
                let rtype = ResourceType::parse(&t.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
                let may = authz::decide_record(c, &a2, Action::Read, rtype, &patients, now)?.permit;
                let mut v = json!(t);
                if may {
                    shown.extend(patients);
                } else if let Some(detail) = v.get_mut("detail").and_then(Value::as_object_mut) {
                    for k in ["offline", "provisional", "suggestions"] {
                        detail.remove(k);
                    }
                    detail.insert("withheld".into(), json!("you may not read this patient's records"));
                }
                rows.push(v);
            }
            Ok((rows, shown))
        })
        .await?;
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, shown);
    rec.detail = Some(json!({"count": rows.len()}));
    svc.audit(vec![rec]).await?;
    Ok(rows)
}

/// How a task is resolved.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// conflict: central | offline | merged
    #[serde(default)]
    pub keep: Option<String>,
    /// conflict with keep = merged: the resource as a person merged it.
    #[serde(default)]
    pub resource: Option<Value>,
    /// match: merge the provisional patient into this one
    #[serde(default)]
    pub merge_into: Option<String>,
    /// match: the provisional patient is a new patient
    #[serde(default)]
    pub keep_as_new: Option<bool>,
    /// unknown_patient: file the entry under this patient
    #[serde(default)]
    pub assign_to: Option<String>,
    /// unknown_patient: drop the entry (it stays in the task)
    #[serde(default)]
    pub discard: Option<bool>,
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Resolves a task (clinicians, the records keeper). Each write it makes
/// is decided per patient like any other: a clinical entry as a record
/// write, a match as a merge, keeping a provisional patient as new as a
/// demographics update.
pub async fn resolve(svc: &Services, actor: &Actor, id: i64, req: Resolve) -> Result<Value, ServiceError> {
    const ACTION: &str = "reconcile-resolve";
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    let decision = match authz::require(actor, &Operation::ReconcileResolve, facts, "resolving reconciliation tasks") {
        Ok(d) => d,
        Err(e) => return Err(svc.refused(actor, ACTION, e).await),
    };
    // A match needs the merge plan, computed on a reader first.
    let task = match svc.store.read(move |c| cs::task(c, id)).await? {
        Some(t) => t,
        None => return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("task {id}"))).await),
    };
    let merge_plan = match (&task.kind[..], &req.merge_into) {
        ("match", Some(target)) => {
            let mr = super::merge::MergeReq {
                source: Some(task.rid.clone()),
                target: Some(target.trim_start_matches("Patient/").to_owned()),
                ..Default::default()
            };
            match svc.store.read(move |c| Ok(super::merge::plan(c, &mr))).await? {
                Ok(p) => Some(p),
                Err(e) => return Err(svc.refused(actor, ACTION, e).await),
            }
        }
        _ => None,
    };
    let a2 = actor.clone();
    let conf = svc.conformance();
    let result = svc
        .change(actor, ACTION, move |w| {
            let t = cs::task(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("task {id}")))?;
            if t.state != "open" {
                return Err(ServiceError::Precondition(format!("task {id} is already resolved")));
            }
            let user = a2.name().to_owned();
            let rtype = ResourceType::parse(&t.rtype).map_err(|e| ServiceError::internal_from("a task's type", e))?;
            let source = json!({"identifier": {"system": "urn:mamori:standalone-export", "value": t.import}, "display": format!("reconciliation task {id}")});
            let write_on_top = |w: &mut WriteCtx<'_>, body: Value, activity: &str| -> Result<Value, ServiceError> {
                let cur = records::current(w.conn, &t.rtype, &t.rid)?;
                let expected = cur.as_ref().filter(|c| !c.deleted).map(|c| c.version);
                let op = WriteOp::Update { id: t.rid.clone(), if_match: expected };
                let step = write_step(w, &a2, rtype, &op, Some(strip_meta(body)), None, &HashSet::new(), true, &conf)?;
                let rec = step_record(&a2, &op, rtype, &step, 200, w.now);
                w.audit(&rec)?;
                match step {
                    Step::Done { written, .. } => {
                        let target = format!("{}/{}/_history/{}", t.rtype, t.rid, written.version);
                        put_provenance(w, provenance(&target, t.detail["recorded_at"].as_str().unwrap_or(""), &format!("{} @ standalone node {}", t.detail["recorded_by"].as_str().unwrap_or("?"), t.detail["node"].as_str().unwrap_or("?")), &format!("resolved by {user}"), &source, activity, None), &user)?;
                        Ok(json!({"written": target}))
                    }
                    _ => Err(ServiceError::internal("unexpected write outcome")),
                }
            };
            let resolution = match (t.kind.as_str(), &req) {
                ("conflict", Resolve { keep: Some(k), .. }) if k == "central" => json!({"kept": "central"}),
                ("conflict", Resolve { keep: Some(k), .. }) if k == "offline" => {
                    let mut r = write_on_top(w, t.detail["offline"].clone(), "conflict resolved: the standalone version kept / 競合解決：スタンドアロン版を採用")?;
                    r["kept"] = json!("offline");
                    r
                }
                ("conflict", Resolve { keep: Some(k), resource: Some(res), .. }) if k == "merged" => {
                    let mut r = write_on_top(w, res.clone(), "conflict resolved: merged by a person / 競合解決：統合版")?;
                    r["kept"] = json!("merged");
                    r
                }
                ("match", Resolve { merge_into: Some(target), .. }) => {
                    let p = merge_plan.as_ref().ok_or_else(|| ServiceError::internal("no merge plan"))?;
                    let d = super::merge::decide_merge(w.conn, &a2, &[p.source.clone(), p.target.clone()], w.now)?;
                    if !d.permit {
                        return Err(ServiceError::denied("merging these patients", &d));
                    }
                    let m = super::merge::apply(w, p, Some(&format!("reconciliation task {id}")), &user)?;
                    let mut rec = a2.decided("patient-merge", 200, &d, w.now);
                    rec.patients = vec![p.source.clone(), p.target.clone()];
                    rec.detail = Some(json!({"merge": m, "source": p.source, "target": p.target, "task": id}));
                    w.audit(&rec)?;
                    json!({"merged_into": target, "merge": m})
                }
                ("match", Resolve { keep_as_new: Some(true), .. }) => {
                    let d = authz::decide_record(w.conn, &a2, Action::Update, ResourceType::PATIENT, std::slice::from_ref(&t.rid), w.now)?;
                    if !d.permit {
                        return Err(ServiceError::denied(&format!("confirming Patient/{}", t.rid), &d));
                    }
                    let (v, mut body) = {
                        let v = records::read(w.conn, "Patient", &t.rid)?.ok_or_else(|| ServiceError::NotFound(format!("Patient/{}", t.rid)))?;
                        (v.version, serde_json::from_str::<Value>(&v.body).map_err(|e| ServiceError::internal_from("a stored Patient", e))?)
                    };
                    if let Some(tags) = body["meta"]["tag"].as_array_mut() {
                        tags.retain(|x| !(x["system"] == TAG_SYSTEM && x["code"] == "provisional"));
                    }
                    let written = records::put(w, ResourceType::PATIENT, &t.rid, strip_meta(body), Some(v), &user, w.now)?;
                    let rec = a2.fhir_record("update", 200, Some("Patient"), Some(&t.rid), Some(written.version), vec![t.rid.clone()], Some(&d), w.now);
                    w.audit(&rec)?;
                    json!({"kept_as_new": true})
                }
                ("unknown_patient", Resolve { assign_to: Some(p), .. }) => {
                    let mut body = t.detail["offline"].clone();
                    let missing = patients_named(rtype, &t.rid, &body);
                    for m in &missing {
                        let known = records::current(w.conn, "Patient", m)?.is_some_and(|c| !c.deleted);
                        if !known {
                            repoint_patient(&mut body, m, p.trim_start_matches("Patient/"));
                        }
                    }
                    let mut r = write_on_top(w, body, "filed under the patient a person chose / 担当者が患者を指定して登録")?;
                    r["assigned_to"] = json!(p);
                    r
                }
                ("unknown_patient", Resolve { discard: Some(true), .. }) => json!({"discarded": true}),
                (kind, _) => {
                    return Err(ServiceError::invalid("", format!(
                        "a {kind} task is resolved with {}",
                        match kind {
                            "conflict" => "keep = central | offline | merged (with resource)",
                            "match" => "merge_into = <patient id>, or keep_as_new = true",
                            _ => "assign_to = <patient id>, or discard = true",
                        }
                    )))
                }
            };
            let mut resolution = resolution;
            resolution["note"] = json!(req.note);
            cs::resolve_task(w.conn, id, &resolution, &user, w.now)?;
            let mut rec = a2.decided(ACTION, 200, &decision, w.now);
            rec.detail = Some(json!({"task": id, "kind": t.kind, "resource": format!("{}/{}", t.rtype, t.rid), "resolution": resolution}));
            w.audit(&rec)?;
            Ok(resolution)
        })
        .await?;
    Ok(json!({"task": id, "state": "resolved", "resolution": result}))
}

/// A paper record to enter.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcribe {
    /// The resource.
    pub resource: Value,
    /// Who wrote it on paper.
    pub original_author: String,
    /// When it happened (FHIR dateTime).
    pub original_time: String,
    /// A note.
    #[serde(default)]
    pub note: Option<String>,
}

/// Enters a paper record: the resource (decided as any create), plus a
/// Provenance naming the original author and time and the person
/// transcribing it now.
pub async fn transcribe(svc: &Services, actor: &Actor, req: Transcribe) -> Result<Value, ServiceError> {
    const ACTION: &str = "transcribe";
    let rtype = match validate_resource(&req.resource) {
        Ok(t) => t,
        Err(issues) => return Err(svc.refused(actor, ACTION, ServiceError::Invalid(issues)).await),
    };
    if mamori_core::time::parse_date_time(&req.original_time).is_none() || req.original_author.trim().is_empty() {
        let e = ServiceError::invalid("original_time", "a FHIR dateTime, and original_author");
        return Err(svc.refused(actor, ACTION, e).await);
    }
    let a2 = actor.clone();
    let conf = svc.conformance();
    svc.change(actor, ACTION, move |w| {
        validate_body(rtype, &req.resource)?;
        let op = WriteOp::Create { if_none_exist: None };
        let step = write_step(w, &a2, rtype, &op, Some(req.resource.clone()), None, &HashSet::new(), true, &conf)?;
        let rec = step_record(&a2, &op, rtype, &step, 201, w.now);
        w.audit(&rec)?;
        let Step::Done { written, decision, .. } = step else {
            return Err(ServiceError::internal("unexpected write outcome"));
        };
        let target = format!("{}/{}/_history/{}", written.rtype, written.id, written.version);
        let user = a2.name().to_owned();
        let mut prov = provenance(
            &target,
            &req.original_time,
            &format!("{} ({})", a2.user.display, user),
            &node_name(&a2),
            &json!({"display": "紙の記録 / paper record"}),
            "紙記録からの転記 / transcribed from paper",
            Some(req.original_author.trim()),
        );
        if let Some(n) = &req.note {
            prov["reason"] = json!([{"text": n}]);
        }
        let pid = put_provenance(w, prov, &user)?;
        let mut rec = a2.decided(ACTION, 201, &decision, w.now);
        rec.patients = written.patients.clone();
        rec.detail = Some(json!({"resource": target, "provenance": pid, "original_author": req.original_author, "original_time": req.original_time}));
        w.audit(&rec)?;
        Ok(json!({"resource": target, "provenance": format!("Provenance/{pid}")}))
    })
    .await
}

fn node_name(a: &Actor) -> String {
    match &a.node {
        Some(n) => format!("standalone node {n}"),
        None => "central system".into(),
    }
}
