//! `POST /fhir/Patient/$merge` (the FHIR R5 operation's semantics on R4
//! resources) and its undoing: every reference to the source patient is
//! re-pointed to the target as a new version, the source becomes inactive
//! with a `replaced-by` link, the target gets `replaces`; nothing is
//! deleted. `preview` shows exactly what would change. Each merge is
//! recorded, audited, reviewable (`/api/v1/merges`) and can be undone while
//! none of the resources it changed has changed since.

use mamori_core::continuity::repoint_patient;
use mamori_core::fhir::search::parse_query;
use mamori_core::fhir::validate::Issue;
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Decision, Facts, Operation};
use mamori_core::time::Timestamp;
use mamori_store::search::Restriction;
use mamori_store::sql::Conn;
use mamori_store::writer::WriteCtx;
use mamori_store::{continuity as cs, records, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor};
use crate::authz;
use crate::error::ServiceError;
use crate::services::Services;

/// Decides a merge (or its preview, or its undoing) for both patients:
/// per patient, the records keeper the plan names or clinical access to
/// that patient's records.
pub(crate) fn decide_merge(
    c: &mut dyn Conn,
    actor: &Actor,
    patients: &[String],
    now: Timestamp,
) -> Result<Decision, StoreError> {
    let base = Facts { records_manager: authz::plan_facts(c, actor)?.records_manager, ..Facts::default() };
    authz::decide_patients(c, actor, &Operation::PatientMerge, patients, base, now)
}

/// The parsed `$merge` Parameters.
#[derive(Debug, Clone, Default)]
pub struct MergeReq {
    /// The patient to merge away (`source-patient`, a Patient id).
    pub source: Option<String>,
    /// Or that patient by identifier (`source-patient-identifier`: system,
    /// value).
    pub source_identifier: Option<(String, String)>,
    /// The patient to keep (`target-patient`, a Patient id).
    pub target: Option<String>,
    /// Or that patient by identifier (`target-patient-identifier`: system,
    /// value).
    pub target_identifier: Option<(String, String)>,
    /// The kept patient as it should read afterwards (`result-patient`).
    pub result: Option<Value>,
    /// Only say what would change (`preview`).
    pub preview: bool,
    /// Why the patients are merged (`reason`).
    pub reason: Option<String>,
}

fn reference_id(v: &Value, name: &str) -> Result<String, ServiceError> {
    let r = v
        .pointer("/valueReference/reference")
        .and_then(Value::as_str)
        .ok_or_else(|| ServiceError::invalid(name, "valueReference.reference required"))?;
    r.strip_prefix("Patient/").map(str::to_owned).ok_or_else(|| ServiceError::invalid(name, "a Patient reference"))
}

fn identifier(v: &Value, name: &str) -> Result<(String, String), ServiceError> {
    let i = v.get("valueIdentifier").ok_or_else(|| ServiceError::invalid(name, "valueIdentifier required"))?;
    match (i.get("system").and_then(Value::as_str), i.get("value").and_then(Value::as_str)) {
        (Some(s), Some(v)) => Ok((s.to_owned(), v.to_owned())),
        _ => Err(ServiceError::invalid(name, "an identifier with system and value")),
    }
}

/// Parses the `$merge` Parameters.
pub fn parse_parameters(p: &Value) -> Result<MergeReq, ServiceError> {
    if p.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(ServiceError::invalid("", "a Parameters resource"));
    }
    let mut r = MergeReq::default();
    for x in p.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = x.get("name").and_then(Value::as_str).unwrap_or("");
        match name {
            "source-patient" => r.source = Some(reference_id(x, name)?),
            "target-patient" => r.target = Some(reference_id(x, name)?),
            "source-patient-identifier" => r.source_identifier = Some(identifier(x, name)?),
            "target-patient-identifier" => r.target_identifier = Some(identifier(x, name)?),
            "result-patient" => r.result = x.get("resource").cloned(),
            "preview" => r.preview = x.get("valueBoolean").and_then(Value::as_bool).unwrap_or(false),
            "reason" => r.reason = x.get("valueString").and_then(Value::as_str).map(str::to_owned),
            other => return Err(ServiceError::invalid("parameter", format!("unknown $merge parameter '{other}'"))),
        }
    }
    if r.source.is_none() == r.source_identifier.is_none() || r.target.is_none() == r.target_identifier.is_none() {
        return Err(ServiceError::invalid(
            "parameter",
            "give source-patient or source-patient-identifier, and target-patient or target-patient-identifier",
        ));
    }
    Ok(r)
}

fn by_identifier(c: &mut dyn Conn, (sys, val): &(String, String), name: &str) -> Result<String, ServiceError> {
    let (q, _) = parse_query(ResourceType::PATIENT, &[("identifier".into(), format!("{sys}|{val}"))], false)
        .map_err(|e| ServiceError::invalid(name, e.to_string()))?;
    let page = mamori_store::search::search(c, &q, &Restriction::None)?;
    match page.entries.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ServiceError::NotFound(format!("no patient with identifier {sys}|{val}"))),
        _ => Err(ServiceError::Unprocessable(vec![Issue {
            path: name.into(),
            message: format!("several patients have identifier {sys}|{val}"),
        }])),
    }
}

fn body_of(c: &mut dyn Conn, rtype: &str, id: &str) -> Result<(u64, Value), ServiceError> {
    let v = records::read(c, rtype, id)?.ok_or_else(|| ServiceError::NotFound(format!("{rtype}/{id}")))?;
    if v.deleted {
        return Err(ServiceError::Gone(format!("{rtype}/{id}")));
    }
    Ok((v.version, serde_json::from_str(&v.body).map_err(|e| ServiceError::internal_from(format!("{rtype}/{id}"), e))?))
}

fn strip_meta(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
    }
    v
}

/// What a merge would write: (rtype, id, version before, new body).
pub struct Plan {
    /// The patient merged away.
    pub source: String,
    /// The patient kept.
    pub target: String,
    /// Each resource to rewrite: (type, id, version before, new body).
    pub writes: Vec<(String, String, u64, Value)>,
}

/// Plans a merge: which resources it changes, and how.
pub fn plan(c: &mut dyn Conn, r: &MergeReq) -> Result<Plan, ServiceError> {
    let source = match (&r.source, &r.source_identifier) {
        (Some(s), _) => s.clone(),
        (None, Some(i)) => by_identifier(c, i, "source-patient-identifier")?,
        _ => return Err(ServiceError::invalid("source-patient", "required")),
    };
    let target = match (&r.target, &r.target_identifier) {
        (Some(s), _) => s.clone(),
        (None, Some(i)) => by_identifier(c, i, "target-patient-identifier")?,
        _ => return Err(ServiceError::invalid("target-patient", "required")),
    };
    if source == target {
        return Err(ServiceError::Unprocessable(vec![Issue {
            path: "target-patient".into(),
            message: "source and target are the same patient".into(),
        }]));
    }
    let (sv, mut sbody) = body_of(c, "Patient", &source)?;
    let (tv, tbody) = body_of(c, "Patient", &target)?;
    let replaced = |b: &Value| b["link"].as_array().is_some_and(|a| a.iter().any(|l| l["type"] == "replaced-by"));
    if replaced(&sbody) {
        return Err(ServiceError::Unprocessable(vec![Issue {
            path: "source-patient".into(),
            message: format!("Patient/{source} was already merged"),
        }]));
    }
    if replaced(&tbody) {
        return Err(ServiceError::Unprocessable(vec![Issue {
            path: "target-patient".into(),
            message: format!("Patient/{target} was merged into another patient; merge into that one"),
        }]));
    }
    let mut writes = Vec::new();
    for (rt, id) in cs::referrers(c, &source)? {
        let (v, mut body) = body_of(c, &rt, &id)?;
        if repoint_patient(&mut body, &source, &target) > 0 {
            writes.push((rt, id, v, strip_meta(body)));
        }
    }
    sbody["active"] = json!(false);
    let link = |other: &str, ty: &str| json!({"other": {"reference": format!("Patient/{other}")}, "type": ty});
    let mut sl = sbody["link"].as_array().cloned().unwrap_or_default();
    sl.push(link(&target, "replaced-by"));
    sbody["link"] = json!(sl);
    writes.push(("Patient".into(), source.clone(), sv, strip_meta(sbody)));
    let mut t = match &r.result {
        Some(res) => {
            if res.get("id").and_then(Value::as_str) != Some(&target) {
                return Err(ServiceError::invalid("result-patient", "its id must be the target's"));
            }
            crate::records::validate_body(ResourceType::PATIENT, res)?;
            res.clone()
        }
        None => tbody,
    };
    let mut tl = t["link"].as_array().cloned().unwrap_or_default();
    tl.retain(|l| l["other"]["reference"] != format!("Patient/{source}"));
    tl.push(link(&source, "replaces"));
    t["link"] = json!(tl);
    writes.push(("Patient".into(), target.clone(), tv, strip_meta(t)));
    Ok(Plan { source, target, writes })
}

fn outcome(severity: &str, text: &str) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [{"severity": severity, "code": "informational", "diagnostics": text}]})
}

/// Applies a plan in a job; returns the merge id.
pub fn apply(w: &mut WriteCtx<'_>, p: &Plan, reason: Option<&str>, author: &str) -> Result<i64, ServiceError> {
    let mut changes = Vec::new();
    for (rt, id, before, body) in &p.writes {
        let cur = records::current(w.conn, rt, id)?.ok_or_else(|| ServiceError::NotFound(format!("{rt}/{id}")))?;
        if cur.version != *before {
            return Err(ServiceError::Precondition(format!("{rt}/{id} changed during the merge; try again")));
        }
        let rtype = ResourceType::parse(rt).map_err(|e| ServiceError::internal_from("a stored type", e))?;
        let written = records::put(w, rtype, id, body.clone(), Some(*before), author, w.now)?;
        changes.push(json!([rt, id, before, written.version]));
    }
    Ok(cs::insert_merge(w.conn, &p.source, &p.target, &json!(changes), reason, author, w.now)?)
}

/// `POST /fhir/Patient/$merge` (FHIR R5 semantics on R4 resources), or
/// its preview: decided for both patients (the preview names every
/// resource of the source, so it is decided the same way). Returns the
/// Parameters answer.
pub async fn fhir_merge(
    svc: &Services,
    actor: &Actor,
    params: Result<Value, ServiceError>,
) -> Result<Value, ServiceError> {
    let now = svc.now();
    let none = |e: ServiceError| (e, Vec::new());
    let result = async {
        let params = params.map_err(none)?;
        let req = parse_parameters(&params).map_err(none)?;
        let (r2, a2) = (req.clone(), actor.clone());
        let (p, d) = svc
            .store
            .read(move |c| {
                let p = match plan(c, &r2) {
                    Ok(p) => p,
                    Err(e) => return Ok(Err(e)),
                };
                let d = decide_merge(c, &a2, &[p.source.clone(), p.target.clone()], now)?;
                Ok(Ok((p, d)))
            })
            .await
            .map_err(|e| none(e.into()))?
            .map_err(none)?;
        if !d.permit {
            let e = ServiceError::denied(&format!("merging Patient/{} into Patient/{}", p.source, p.target), &d);
            return Err((e, vec![p.source, p.target]));
        }
        Ok((params, req, p, d))
    }
    .await;
    let (params, req, p, d) = match result {
        Ok(x) => x,
        Err((e, patients)) => {
            let mut rec = crate::commit::failure_record(actor, "patient-merge", &e, now);
            set_patients(&mut rec, patients);
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let changed: Vec<Value> =
        p.writes.iter().map(|(rt, id, v, _)| json!({"reference": format!("{rt}/{id}"), "version": v})).collect();
    if req.preview {
        let mut rec = actor.decided("patient-merge-preview", 200, &d, now);
        rec.patients = vec![p.source.clone(), p.target.clone()];
        rec.detail = Some(json!({"changes": changed.len()}));
        svc.audit(vec![rec]).await?;
        let target = p.writes.last().map(|w| w.3.clone()).unwrap_or(Value::Null);
        return Ok(json!({"resourceType": "Parameters", "parameter": [
            {"name": "input", "resource": params},
            {"name": "outcome", "resource": outcome("information", &format!("preview: {} resources would change: {}", changed.len(),
                changed.iter().filter_map(|c| c["reference"].as_str()).collect::<Vec<_>>().join(", ")))},
            {"name": "result", "resource": target},
        ]}));
    }
    let (a2, reason) = (actor.clone(), req.reason.clone());
    let (src, tgt) = (p.source.clone(), p.target.clone());
    let n = changed.len();
    let id = svc
        .change(actor, "patient-merge", move |w| {
            // Decided again in the job, on the data as it is now.
            let d = decide_merge(w.conn, &a2, &[p.source.clone(), p.target.clone()], w.now)?;
            if !d.permit {
                return Err(ServiceError::denied("merging these patients", &d));
            }
            let id = apply(w, &p, reason.as_deref(), a2.name())?;
            let mut rec = a2.decided("patient-merge", 200, &d, w.now);
            rec.patients = vec![p.source.clone(), p.target.clone()];
            rec.entity = Some(mamori_audit::event::Entity { rtype: "Patient".into(), id: Some(p.target.clone()), version: None });
            rec.detail = Some(json!({"merge": id, "source": p.source, "target": p.target, "changes": p.writes.iter().map(|(rt, i, v, _)| format!("{rt}/{i}/_history/{v}")).collect::<Vec<_>>(), "reason": reason}));
            w.audit(&rec)?;
            Ok(id)
        })
        .await?;
    let t2 = tgt.clone();
    let (_, target) = svc.store.read(move |c| Ok(body_of(c, "Patient", &t2))).await??;
    Ok(json!({"resourceType": "Parameters", "parameter": [
        {"name": "input", "resource": params},
        {"name": "outcome", "resource": outcome("information", &format!("Patient/{src} merged into Patient/{tgt}: {n} resources changed (merge {id})"))},
        {"name": "result", "resource": target},
        {"name": "merge-id", "valueString": id.to_string()},
    ]}))
}

/// Recorded merges (of one patient); audited with the patients they name.
pub async fn list(svc: &Services, actor: &Actor, patient: Option<String>) -> Result<Vec<Value>, ServiceError> {
    const ACTION: &str = "merge-list";
    let d = read_gate(svc, actor, ACTION).await?;
    let rows = svc.store.read(move |c| cs::merges(c, patient.as_deref(), 500)).await?;
    let rows: Vec<Value> = rows.iter().map(|m| json!(m)).collect();
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(
        &mut rec,
        rows.iter().flat_map(|m| [m["source"].as_str(), m["target"].as_str()]).flatten().map(str::to_owned).collect(),
    );
    svc.audit(vec![rec]).await?;
    Ok(rows)
}

/// One merge; audited with its patients.
pub async fn show(svc: &Services, actor: &Actor, id: i64) -> Result<Value, ServiceError> {
    const ACTION: &str = "merge-read";
    let d = read_gate(svc, actor, ACTION).await?;
    let m = match svc.store.read(move |c| cs::merge(c, id)).await? {
        Some(m) => m,
        None => return Err(svc.refused(actor, ACTION, ServiceError::NotFound(format!("merge {id}"))).await),
    };
    let mut rec = actor.decided(ACTION, 200, &d, svc.now());
    set_patients(&mut rec, vec![m.source.clone(), m.target.clone()]);
    svc.audit(vec![rec]).await?;
    Ok(json!(m))
}

async fn read_gate(svc: &Services, actor: &Actor, action: &str) -> Result<Decision, ServiceError> {
    let a = actor.clone();
    let facts = svc.store.read(move |c| authz::plan_facts(c, &a)).await?;
    svc.gate(actor, action, Operation::MergeRead, facts, "merges").await
}

/// Why a merge is undone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Undo {
    /// The reason (at least 5 characters).
    pub reason: String,
}

/// Undoes a merge: every resource it changed gets a new version equal to
/// its version before the merge; refused, changing nothing, if any of
/// them changed since. Decided like the merge, for both patients.
pub async fn undo(svc: &Services, actor: &Actor, id: i64, req: Undo) -> Result<Value, ServiceError> {
    const ACTION: &str = "patient-unmerge";
    if req.reason.trim().chars().count() < 5 {
        return Err(svc.refused(actor, ACTION, ServiceError::invalid("reason", "at least 5 characters")).await);
    }
    let a2 = actor.clone();
    let restored = svc
        .change(actor, ACTION, move |w| {
            let m = cs::merge(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("merge {id}")))?;
            let d = decide_merge(w.conn, &a2, &[m.source.clone(), m.target.clone()], w.now)?;
            if !d.permit {
                return Err(ServiceError::denied(&format!("undoing merge {id}"), &d));
            }
            if m.state != "merged" {
                return Err(ServiceError::Precondition(format!("merge {id} was already undone")));
            }
            let changes: Vec<(String, String, u64, u64)> = serde_json::from_value(m.changes.clone())
                .map_err(|e| ServiceError::internal_from("a merge's changes", e))?;
            let mut changed_since = Vec::new();
            for (rt, rid, _, after) in &changes {
                let cur = records::current(w.conn, rt, rid)?;
                if cur.as_ref().map(|c| (c.version, c.deleted)) != Some((*after, false)) {
                    changed_since.push(format!("{rt}/{rid}"));
                }
            }
            if !changed_since.is_empty() {
                return Err(ServiceError::Precondition(format!(
                    "these resources changed after the merge; resolve them by hand first: {}",
                    changed_since.join(", ")
                )));
            }
            let user = a2.name().to_owned();
            let mut restored = Vec::new();
            for (rt, rid, before, after) in &changes {
                let old = records::vread(w.conn, rt, rid, *before)?
                    .ok_or_else(|| ServiceError::internal(format!("{rt}/{rid}/_history/{before} missing")))?;
                let body: Value =
                    serde_json::from_str(&old.body).map_err(|e| ServiceError::internal_from("a stored body", e))?;
                let rtype = ResourceType::parse(rt).map_err(|e| ServiceError::internal_from("a stored type", e))?;
                let written = records::put(w, rtype, rid, strip_meta(body), Some(*after), &user, w.now)?;
                restored.push(format!("{rt}/{rid}/_history/{}", written.version));
            }
            cs::mark_unmerged(w.conn, id, &user, w.now)?;
            let mut rec = a2.decided(ACTION, 200, &d, w.now);
            rec.patients = vec![m.source.clone(), m.target.clone()];
            rec.detail = Some(json!({"merge": id, "restored": restored, "reason": req.reason.trim()}));
            w.audit(&rec)?;
            Ok(restored)
        })
        .await?;
    Ok(json!({"merge": id, "state": "unmerged", "restored": restored}))
}

/// A review of a merge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// What was checked.
    pub note: String,
}

/// Reviews a merge: an auditor or admin who did not make it.
pub async fn review(svc: &Services, actor: &Actor, id: i64, req: Review) -> Result<(), ServiceError> {
    const ACTION: &str = "merge-review";
    // A review says what was checked, as a break-glass review does.
    if req.note.trim().chars().count() < 5 {
        let e = ServiceError::invalid("note", "write what you checked (at least 5 characters)");
        return Err(svc.refused(actor, ACTION, e).await);
    }
    let a2 = actor.clone();
    svc.change(actor, ACTION, move |w| {
        let m = cs::merge(w.conn, id)?.ok_or_else(|| ServiceError::NotFound(format!("merge {id}")))?;
        let facts = Facts { own: m.by_user == a2.name(), ..Facts::default() };
        let d = authz::require(&a2, &Operation::MergeReview, facts, "reviewing this merge")?;
        if !cs::review_merge(w.conn, id, a2.name(), req.note.trim(), w.now)? {
            return Err(ServiceError::Precondition(format!("merge {id} was already reviewed")));
        }
        let mut rec = a2.decided(ACTION, 200, &d, w.now);
        rec.patients = vec![m.source, m.target];
        rec.detail = Some(json!({"merge": id, "note": req.note.trim()}));
        w.audit(&rec)?;
        Ok(())
    })
    .await
}
