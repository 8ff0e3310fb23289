//! The audit log's use cases: signed checkpoints, inclusion and
//! consistency proofs, witness cosignatures (public: only hashes and
//! sizes, like a transparency log's; no account acts), and for auditors
//! the events, on-line verification, review reports and the log as FHIR
//! AuditEvent. Reading events is itself audited, with the patients they
//! name.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use mamori_audit::event::AuditRecord;
use mamori_audit::fhir::{actions_for_code, to_audit_event};
use mamori_audit::merkle::{self, leaf_hash};
use mamori_audit::note::{Checkpoint, NoteVerifier, SignedNote};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Action, Decision, Facts, Operation, PatientScope, Target};
use mamori_core::time::parse_search_date;
use mamori_store::audit_log::{self, DbNodes, EventQuery};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::actor::{set_patients, Actor, RequestCtx};
use crate::audited::Audited;
use crate::authz;
use crate::error::ServiceError;
use crate::init::DataDir;
use crate::records::enc;
use crate::services::Services;

/// The latest checkpoint with its cosignatures (public).
pub async fn latest(st: &Services) -> Result<String, ServiceError> {
    let note = st
        .store
        .read(|c| match audit_log::latest_checkpoint(c)? {
            Some((size, _, _)) => audit_log::cosigned_checkpoint(c, size),
            None => Ok(None),
        })
        .await?;
    note.ok_or_else(|| ServiceError::NotFound("no checkpoint has been signed yet".into()))
}

/// The checkpoint at `size` with its cosignatures (public).
pub async fn by_size(st: &Services, size: u64) -> Result<String, ServiceError> {
    let note = st.store.read(move |c| audit_log::cosigned_checkpoint(c, size)).await?;
    note.ok_or_else(|| ServiceError::NotFound(format!("no checkpoint at size {size}")))
}

/// Checkpoints, newest first (public).
pub async fn list(st: &Services, before: Option<u64>, limit: Option<usize>) -> Result<Value, ServiceError> {
    let limit = limit.unwrap_or(50).clamp(1, 1000);
    let rows = st.store.read(move |c| audit_log::list_checkpoints(c, before, limit)).await?;
    let items: Vec<_> = rows
        .into_iter()
        .map(|(size, t, reason, w)| json!({"size": size, "time": t.to_rfc3339(), "reason": reason, "witnesses": w}))
        .collect();
    Ok(json!({"checkpoints": items}))
}

/// An inclusion proof of event `index` in the tree of `size` (public).
pub async fn inclusion(st: &Services, index: u64, size: Option<u64>) -> Result<Value, ServiceError> {
    let r = st
        .store
        .read(move |c| {
            let size = match size {
                Some(s) => s,
                None => audit_log::latest_checkpoint(c)?.map_or(0, |x| x.0),
            };
            let n = audit_log::size(c)?;
            if size > n || index >= size {
                return Ok(Err(ServiceError::invalid(
                    "index",
                    format!("event {index} is not in a tree of size {size} (the log has {n} events)"),
                )));
            }
            let mut src = DbNodes(c);
            let proof = merkle::inclusion_proof(&mut src, index, size)?;
            let root = merkle::root_at(&mut src, size)?;
            let leaf = merkle::subtree_hash(&mut src, index, index + 1)?;
            Ok(Ok(json!({
                "index": index, "size": size,
                "leaf_hash": B64.encode(leaf),
                "root": B64.encode(root),
                "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            })))
        })
        .await?;
    r
}

/// A consistency proof between two tree sizes (public).
pub async fn consistency(st: &Services, first: u64, second: Option<u64>) -> Result<Value, ServiceError> {
    let r = st
        .store
        .read(move |c| {
            let second = match second {
                Some(s) => s,
                None => audit_log::latest_checkpoint(c)?.map_or(0, |x| x.0),
            };
            let n = audit_log::size(c)?;
            if first > second || second > n {
                return Ok(Err(ServiceError::invalid(
                    "first",
                    format!("sizes {first} and {second} do not fit a log of {n} events"),
                )));
            }
            let mut src = DbNodes(c);
            let proof = merkle::consistency_proof(&mut src, first, second)?;
            Ok(Ok(json!({
                "first": first, "second": second,
                "first_root": B64.encode(merkle::root_at(&mut src, first)?),
                "second_root": B64.encode(merkle::root_at(&mut src, second)?),
                "proof": proof.iter().map(|h| B64.encode(h)).collect::<Vec<_>>(),
            })))
        })
        .await?;
    r
}

/// A witness posts the checkpoint with its cosignature line(s) appended.
/// Accepted only for a stored checkpoint and a configured witness key
/// (authenticated by the signature; no account acts).
pub async fn cosign(st: &Services, text: &str) -> Result<Value, ServiceError> {
    let note = SignedNote::parse(text).map_err(|e| ServiceError::invalid("", e.to_string()))?;
    let cp = Checkpoint::parse_body(&note.body).map_err(|e| ServiceError::invalid("", e.to_string()))?;
    let size = cp.size;
    let stored = st.store.read(move |c| audit_log::checkpoint_at(c, size)).await?;
    let stored = stored.ok_or_else(|| ServiceError::NotFound(format!("no checkpoint at size {size}")))?;
    let stored_body =
        SignedNote::parse(&stored).map_err(|e| ServiceError::internal_from("a stored checkpoint", e))?.body;
    if stored_body != note.body {
        return Err(ServiceError::Conflict(
            "the cosigned checkpoint differs from the one this log signed at that size".into(),
        ));
    }
    let mut accepted = Vec::new();
    for w in &st.cfg.audit.witnesses {
        let Ok(v) = NoteVerifier::parse(w) else { continue };
        if let Ok(Some(t)) = note.verified_by(&v) {
            let line = text.lines().find(|l| l.starts_with(&format!("\u{2014} {} ", v.name))).unwrap_or("").to_owned();
            accepted.push((v.name.clone(), line, t));
        }
    }
    if accepted.is_empty() {
        return Err(ServiceError::forbidden("no valid cosignature by a configured witness (audit.witnesses)"));
    }
    let names: Vec<String> = accepted.iter().map(|a| a.0.clone()).collect();
    let n2 = names.clone();
    st.store
        .writer()
        .write(
            move |w| {
                for (name, line, t) in &accepted {
                    audit_log::add_cosignature(w.conn, size, name, line, *t, w.now)?;
                }
                let mut rec = RequestCtx::background(mamori_core::mode::Mode::Normal).record(
                    "system",
                    "system",
                    "checkpoint-cosigned",
                    200,
                    w.now,
                );
                rec.detail = Some(json!({"size": size, "witnesses": n2}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await?;
    Ok(json!({"size": size, "accepted": names}))
}

async fn gate(st: &Services, actor: &Actor, action: &str) -> Result<Decision, ServiceError> {
    st.gate(actor, action, Operation::AuditRead, Facts::default(), "the audit log").await
}

/// One event with its leaf and leaf hash (auditors); audited with the
/// patients it names.
pub async fn event(st: &Services, actor: &Actor, index: u64) -> Result<Audited<Value>, ServiceError> {
    const ACTION: &str = "audit-read";
    let d = gate(st, actor, ACTION).await?;
    let leaf = st.store.read(move |c| audit_log::leaf(c, index)).await?;
    let Some(leaf) = leaf else {
        return Err(st.refused(actor, ACTION, ServiceError::NotFound(format!("no audit event {index}"))).await);
    };
    let rec = AuditRecord::from_leaf(&leaf).map_err(|e| ServiceError::internal_from("an audit leaf", e))?;
    let mut a = actor.decided(ACTION, 200, &d, st.now());
    a.query = Some(format!("event {index}"));
    set_patients(&mut a, rec.patients.clone());
    let v = json!({"index": index, "event": rec, "leaf": B64.encode(&leaf), "leaf_hash": B64.encode(leaf_hash(&leaf))});
    st.audited(a, v).await
}

/// Verifies the whole log now, with its derived indexes (auditors).
pub async fn verify_live(st: &Services, actor: &Actor) -> Result<Value, ServiceError> {
    const ACTION: &str = "audit-verify";
    let d = gate(st, actor, ACTION).await?;
    let dd = DataDir(st.data_dir.clone());
    let (_, vkey) = crate::init::load_signer(&dd).map_err(|e| ServiceError::internal_from("the audit key", e))?;
    let origin = st.cfg.audit.origin.clone();
    let started = std::time::Instant::now();
    let report = st.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, true)).await?;
    let mut a = actor.decided(ACTION, 200, &d, st.now());
    a.detail = Some(json!({"ok": report.ok(), "events": report.events}));
    st.audit(vec![a]).await?;
    Ok(json!({
        "ok": report.ok(),
        "events": report.events,
        "checkpoints": report.checkpoints,
        "last_good_checkpoint": report.last_good_checkpoint,
        "records": report.records,
        "root": report.root.map(|r| B64.encode(r)),
        "findings": report.findings.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    }))
}

/// A review report's filters.
#[derive(Debug, Default, Deserialize)]
pub struct ReportQuery {
    /// A patient.
    pub patient: Option<String>,
    /// A user.
    pub user: Option<String>,
    /// From (a date or instant).
    pub from: Option<String>,
    /// To.
    pub to: Option<String>,
    /// At most this many events.
    pub limit: Option<usize>,
    /// Action names, comma-separated (any of).
    pub action: Option<String>,
    /// A purpose of use code (TREAT, ETREAT, BTG, ...).
    pub purpose: Option<String>,
}

/// A date (local day) or instant; `end` takes the end of a day.
pub(crate) fn parse_when(s: &str, offset_min: i64, end: bool) -> Result<i64, ServiceError> {
    let r = mamori_core::time::parse_search_date(s)
        .ok_or_else(|| ServiceError::invalid("from/to", format!("'{s}' is not a date or instant")))?;
    let shift = if r.has_tz { 0 } else { offset_min * 60_000_000 };
    Ok(if end { r.high - shift } else { r.low - shift })
}

fn event_json(index: u64, r: &AuditRecord) -> serde_json::Value {
    json!({
        "index": index,
        "time": r.time,
        "user": r.agent.user,
        "kind": r.agent.kind,
        "roles": r.agent.roles,
        "declared": r.agent.declared,
        "address": r.agent.address,
        "action": r.action,
        "resource": r.entity.as_ref().map(|e| match &e.id { Some(i) => format!("{}/{i}", e.rtype), None => e.rtype.clone() }),
        "patients": r.patients,
        "status": r.status,
        "purpose": r.purpose,
        "basis": r.basis,
        "mode": r.mode,
        "detail": r.detail,
    })
}

/// Review reports for auditors: `patient` (who accessed this patient's
/// record: the answer to a disclosure request), `user` (what a user
/// accessed), `denied` (refused accesses), `daily` (counts per day with
/// denials, break-glass and emergency access), `search`.
pub async fn report(st: &Services, actor: &Actor, kind: &str, q: ReportQuery) -> Result<Audited<Value>, ServiceError> {
    const ACTION: &str = "audit-report";
    let d = gate(st, actor, ACTION).await?;
    let kind = kind.to_owned();
    // The patient as staff name them: the id or the medical record number.
    let typed = q.patient.as_deref().map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned);
    let resolved = match typed.clone() {
        Some(p) if kind == "patient" || kind == "search" => {
            match st.store.read(move |c| Ok(crate::records::resolve_patient(c, &p))).await.map_err(ServiceError::from) {
                Ok(Ok(id)) => Some(id),
                Ok(Err(e)) | Err(e) => return Err(st.refused(actor, ACTION, e).await),
            }
        }
        _ => None,
    };
    let off = st.cfg.institution.utc_offset_minutes;
    let now = st.now().micros();
    let pre = (|| {
        let to = q.to.as_deref().map(|s| parse_when(s, off, true)).transpose()?.unwrap_or(now + 1);
        let from =
            q.from.as_deref().map(|s| parse_when(s, off, false)).transpose()?.unwrap_or(to - 30 * 86_400_000_000);
        if from >= to {
            return Err(ServiceError::invalid("from", "from must be before to"));
        }
        let mut eq = audit_log::EventQuery {
            from: Some(from),
            to: Some(to),
            limit: q.limit.unwrap_or(1000).clamp(1, 10_000),
            ..Default::default()
        };
        match kind.as_str() {
            "patient" => {
                eq.patient = Some(resolved.clone().ok_or_else(|| {
                    ServiceError::invalid("patient", "the patient report needs ?patient=ID or medical record number")
                })?);
            }
            "user" => {
                eq.agent = Some(
                    q.user.clone().ok_or_else(|| ServiceError::invalid("user", "the user report needs ?user=NAME"))?,
                )
            }
            "denied" => eq.denied = true,
            "daily" => {}
            "search" => {
                eq.patient = resolved.clone();
                eq.agent = q.user.as_deref().map(str::trim).filter(|u| !u.is_empty()).map(str::to_owned);
            }
            other => {
                return Err(ServiceError::NotFound(format!(
                    "no report '{other}' (patient, user, denied, daily, search)"
                )))
            }
        }
        if let Some(a) = q.action.as_deref().map(str::trim).filter(|a| !a.is_empty()) {
            eq.actions = Some(a.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect());
        }
        if let Some(p) = q.purpose.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            eq.purpose = Some(p.to_owned());
        }
        Ok((from, to, eq))
    })();
    let (from, to, eq) = match pre {
        Ok(x) => x,
        Err(e) => return Err(st.refused(actor, ACTION, e).await),
    };
    // The derived indexes must cover every event before they are queried.
    st.store.writer().flush_index().await?;
    let kind2 = kind.clone();
    let eq2 = eq.clone();
    let body = st
        .store
        .read(move |c| {
            if kind2 == "daily" {
                return Ok(json!({"days": audit_log::daily_counts(c, from, to, off)?}));
            }
            let total = audit_log::count_events(c, &eq2)?;
            let rows = audit_log::search_events(c, &eq2)?;
            let events: Vec<_> =
                rows.iter().filter_map(|(i, l)| AuditRecord::from_leaf(l).ok().map(|r| event_json(*i, &r))).collect();
            Ok(json!({"total": total, "events": events}))
        })
        .await?;
    let mut a = actor.decided(ACTION, 200, &d, st.now());
    a.detail = Some(
        json!({"report": kind, "patient_as_typed": typed, "user": eq.agent, "actions": eq.actions, "purpose": eq.purpose, "from": mamori_core::time::Timestamp(from).to_rfc3339(), "to": mamori_core::time::Timestamp(to).to_rfc3339()}),
    );
    // The patients the report shows.
    let mut patients: Vec<String> = body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["patients"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    patients.extend(eq.patient.clone());
    set_patients(&mut a, patients);
    let mut body = body;
    body["report"] = json!(kind);
    body["patient"] = json!(eq.patient);
    body["from"] = json!(mamori_core::time::Timestamp(from).to_rfc3339());
    body["to"] = json!(mamori_core::time::Timestamp(to).to_rfc3339());
    st.audited(a, body).await
}

// ---- the log as FHIR AuditEvent -------------------------------------------------------

fn audit_event_op(action: Action) -> Operation {
    Operation::Record { action, target: Target { rtype: ResourceType::AUDIT_EVENT, scope: PatientScope::Any } }
}

/// `GET /fhir/AuditEvent/{id}` (auditors), as a FHIR AuditEvent (IHE BALP).
pub async fn fhir_read(st: &Services, actor: &Actor, id: &str) -> Result<Audited<Value>, ServiceError> {
    let now = st.now();
    let d = authz::decide(actor, &audit_event_op(Action::Read), Facts::default());
    let mut rec = actor.fhir_record("read", 200, Some("AuditEvent"), Some(id), None, vec![], Some(&d), now);
    let fail = |st: &Services, mut rec: AuditRecord, e: ServiceError| {
        let st = st.clone();
        async move {
            rec.status = e.status();
            st.audit(vec![rec]).await?;
            Err(e)
        }
    };
    if !d.permit {
        return fail(st, rec, ServiceError::denied("the audit log", &d)).await;
    }
    let Ok(index) = id.parse::<u64>() else {
        return fail(st, rec, ServiceError::NotFound(format!("AuditEvent/{id} does not exist"))).await;
    };
    let leaf = st.store.read(move |c| audit_log::leaf(c, index)).await?;
    let Some(leaf) = leaf else {
        return fail(st, rec, ServiceError::NotFound(format!("AuditEvent/{id} does not exist"))).await;
    };
    let r = AuditRecord::from_leaf(&leaf).map_err(|e| ServiceError::internal_from("an audit leaf", e))?;
    set_patients(&mut rec, r.patients.clone());
    st.audited(rec, to_audit_event(index, &r, &st.cfg.audit.origin)).await
}

fn parse_search(pairs: &[(String, String)]) -> Result<(EventQuery, usize, String), ServiceError> {
    let mut q = EventQuery { limit: 50, ..Default::default() };
    let mut canonical = Vec::new();
    for (k, v) in pairs {
        let bad = |why: &str| {
            ServiceError::invalid(
                k,
                format!("invalid value '{}' for {k}: {why}", v.chars().take(60).collect::<String>()),
            )
        };
        match k.as_str() {
            "patient" | "entity" => q.patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_owned()),
            "agent" | "agent.identifier" => q.agent = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "action" => {
                q.actions = Some(
                    actions_for_code(v)
                        .ok_or_else(|| bad("expected C, R, U, D or E"))?
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                )
            }
            "subtype" => q.actions = Some(vec![v.rsplit('|').next().unwrap_or(v).to_owned()]),
            "purpose" => q.purpose = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "outcome" => {
                q.status = Some(match v.as_str() {
                    "0" => (0, 399),
                    "4" => (400, 499),
                    "8" | "12" => (500, 999),
                    _ => return Err(bad("expected 0, 4, 8 or 12")),
                })
            }
            "date" => {
                let (p, rest) = match v.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, v.get(2..).unwrap_or("")),
                    _ => ("eq", v.as_str()),
                };
                let r = parse_search_date(rest).ok_or_else(|| bad("expected [ge|gt|le|lt|eq]date"))?;
                match p {
                    "ge" => q.from = Some(q.from.map_or(r.low, |f| f.max(r.low))),
                    "gt" => q.from = Some(q.from.map_or(r.high, |f| f.max(r.high))),
                    "le" => q.to = Some(q.to.map_or(r.high, |t| t.min(r.high))),
                    "lt" => q.to = Some(q.to.map_or(r.low, |t| t.min(r.low))),
                    _ => {
                        q.from = Some(r.low);
                        q.to = Some(r.high);
                    }
                }
            }
            "_count" => {
                q.limit = v.parse::<usize>().map_err(|_| bad("expected a number"))?.clamp(1, 1000);
                continue;
            }
            "_cursor" => {
                q.before = Some(v.parse().map_err(|_| bad("malformed paging cursor"))?);
                continue;
            }
            "_format" | "_pretty" => continue,
            other => {
                return Err(ServiceError::invalid(
                    other,
                    format!("unknown search parameter '{other}' for AuditEvent (supported: patient, agent, date, action, subtype, purpose, outcome)"),
                ))
            }
        }
        canonical.push(format!("{}={}", enc(k), enc(v)));
    }
    let limit = q.limit;
    Ok((q, limit, canonical.join("&")))
}

/// A page of the log as FHIR AuditEvents.
#[derive(Debug, Clone)]
pub struct EventPage {
    /// The canonical query.
    pub query: String,
    /// The page size.
    pub limit: usize,
    /// How many events match.
    pub total: u64,
    /// (index, AuditEvent) of the page, newest first.
    pub events: Vec<(u64, Value)>,
    /// The cursor of the next page.
    pub next: Option<u64>,
}

/// `GET /fhir/AuditEvent?…` (auditors); the search is itself audited.
pub async fn fhir_search(
    st: &Services,
    actor: &Actor,
    pairs: Result<Vec<(String, String)>, ServiceError>,
) -> Result<Audited<EventPage>, ServiceError> {
    let now = st.now();
    let d = authz::decide(actor, &audit_event_op(Action::Search), Facts::default());
    let mut rec = actor.fhir_record("search-type", 200, Some("AuditEvent"), None, None, vec![], Some(&d), now);
    if !d.permit {
        rec.status = 403;
        st.audit(vec![rec]).await?;
        return Err(ServiceError::denied("the audit log", &d));
    }
    let (q, limit, query_text) = match pairs.and_then(|p| parse_search(&p)) {
        Ok(x) => x,
        Err(e) => {
            rec.status = e.status();
            st.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    rec.query = Some(query_text.clone());
    st.store.writer().flush_index().await?;
    let q2 = q.clone();
    let (total, mut rows) = st
        .store
        .read(move |c| {
            let total = audit_log::count_events(c, &q2)?;
            let mut page = q2.clone();
            page.limit = q2.limit + 1;
            Ok((total, audit_log::search_events(c, &page)?))
        })
        .await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = if more { rows.last().map(|(i, _)| *i) } else { None };
    let mut patients = Vec::new();
    let mut events = Vec::new();
    for (idx, leaf) in &rows {
        if let Ok(r) = AuditRecord::from_leaf(leaf) {
            patients.extend(r.patients.iter().cloned());
            events.push((*idx, to_audit_event(*idx, &r, &st.cfg.audit.origin)));
        }
    }
    set_patients(&mut rec, patients);
    rec.detail = Some(json!({"count": events.len()}));
    st.audited(rec, EventPage { query: query_text, limit, total, events, next }).await
}
