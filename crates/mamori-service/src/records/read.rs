//! Reads: read, vread, history, search, `$everything`. Each is decided for
//! every patient whose data it reveals, and audited (with those patients)
//! before the data is handed out.

use mamori_core::fhir::search::{parse_query_in, Clause, Cond, SearchQuery, MAX_COUNT, MAX_INCLUDED};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{Action, Basis, Decision, Facts, Operation, PatientScope, Target};
use mamori_core::time::Timestamp;
use mamori_store::records::{self, Version};
use mamori_store::search::{self, Page, Restriction};
use mamori_store::sql::Conn;
use mamori_store::StoreError;
use serde_json::json;

use super::{enc, error_record, parse_id, parse_type, restriction};
use crate::actor::Actor;
use crate::audited::Audited;
use crate::authz;
use crate::error::ServiceError;
use crate::services::Services;

/// Audits `rec` and hands out `value`, or audits the error and returns it.
async fn answer<T>(
    svc: &Services,
    rec: mamori_audit::event::AuditRecord,
    value: Result<T, ServiceError>,
) -> Result<Audited<T>, ServiceError> {
    match value {
        Ok(v) => svc.audited(rec, v).await,
        Err(e) => {
            svc.audit(vec![rec]).await?;
            Err(e)
        }
    }
}

/// Whether `d` permits; else the error for `what`.
fn permitted(d: &Decision, what: &str) -> Result<(), ServiceError> {
    if d.permit {
        Ok(())
    } else {
        Err(ServiceError::denied(&format!("access to {what}"), d))
    }
}

/// `GET /fhir/{type}/{id}`: the current version, decided on every patient
/// it names.
pub async fn read(svc: &Services, actor: &Actor, rtype: &str, id: &str) -> Result<Audited<Version>, ServiceError> {
    vread_or_read(svc, actor, rtype, id, None).await
}

/// `GET /fhir/{type}/{id}/_history/{vid}`: that version, decided on the
/// patients it named.
pub async fn vread(
    svc: &Services,
    actor: &Actor,
    rtype: &str,
    id: &str,
    version: &str,
) -> Result<Audited<Version>, ServiceError> {
    vread_or_read(svc, actor, rtype, id, Some(version)).await
}

async fn vread_or_read(
    svc: &Services,
    actor: &Actor,
    t: &str,
    id: &str,
    version: Option<&str>,
) -> Result<Audited<Version>, ServiceError> {
    let now = svc.now();
    let action = if version.is_some() { "vread" } else { "read" };
    let pre = (|| {
        let rtype = parse_type(t)?;
        parse_id(id)?;
        let vn = version
            .map(|v| {
                v.parse::<u64>().map_err(|_| ServiceError::invalid("versionId", "version ids are positive integers"))
            })
            .transpose()?;
        Ok::<_, ServiceError>((rtype, vn))
    })();
    let (rtype, vn) = match pre {
        Ok(x) => x,
        Err(e) => {
            let known = ResourceType::parse(t).ok().map(|r| r.as_str());
            return Err(super::reject(svc, actor, action, known, None, e).await);
        }
    };
    let (a2, id2) = (actor.clone(), id.to_owned());
    let found = svc
        .store
        .read_short(move |c| {
            let v = match vn {
                Some(n) => records::vread(c, rtype.as_str(), &id2, n)?,
                None => records::read(c, rtype.as_str(), &id2)?,
            };
            let d = match &v {
                Some(v) => Some(authz::decide_record(c, &a2, Action::Read, rtype, &v.patients, now)?),
                None => None,
            };
            Ok((v, d))
        })
        .await?;
    let (Some(v), Some(d)) = found else {
        let e = ServiceError::NotFound(match vn {
            Some(n) => format!("{rtype}/{id}/_history/{n} does not exist"),
            None => format!("{rtype}/{id} does not exist"),
        });
        let rec = actor.fhir_record(action, 404, Some(rtype.as_str()), Some(id), vn, vec![], None, now);
        return answer(svc, rec, Err(e)).await;
    };
    let result = if !d.permit {
        Err(ServiceError::denied(&format!("access to {rtype}/{id}"), &d))
    } else if v.deleted {
        Err(ServiceError::Gone(match vn {
            Some(n) => format!("{rtype}/{id} version {n} is a deletion"),
            None => format!("{rtype}/{id} was deleted (version {})", v.version),
        }))
    } else {
        Ok(())
    };
    let status = result.as_ref().map_or_else(ServiceError::status, |()| 200);
    let rec = actor.fhir_record(
        action,
        status,
        Some(rtype.as_str()),
        Some(id),
        Some(vn.unwrap_or(v.version)),
        v.patients.clone(),
        Some(&d),
        now,
    );
    answer(svc, rec, result.map(|()| v)).await
}

/// A history query.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// The type.
    pub rtype: String,
    /// One resource's history, or the type's.
    pub id: Option<String>,
    /// The query parameters (`_count`, `_since`, `_cursor`).
    pub params: Vec<(String, String)>,
}

/// One page of history, newest first.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The type.
    pub rtype: ResourceType,
    /// The resource, for an instance history.
    pub id: Option<String>,
    /// The page size asked for.
    pub count: usize,
    /// The versions.
    pub versions: Vec<Version>,
    /// The cursor of the next page, if there is one.
    pub next: Option<i64>,
}

/// `_history` of a resource or a type. An instance history is decided on
/// every patient any of its versions named (it reveals them all).
pub async fn history(svc: &Services, actor: &Actor, q: HistoryQuery) -> Result<Audited<HistoryPage>, ServiceError> {
    let now = svc.now();
    let action = if q.id.is_some() { "history-instance" } else { "history-type" };
    let pre = (|| {
        let rtype = parse_type(&q.rtype)?;
        if let Some(i) = &q.id {
            parse_id(i)?;
        }
        let (count, since, before) = history_params(&q.params)?;
        Ok::<_, ServiceError>((rtype, count, since, before))
    })();
    let (rtype, count, since, before) = match pre {
        Ok(x) => x,
        Err(e) => return Err(super::reject(svc, actor, action, None, None, e).await),
    };
    let (a2, id2) = (actor.clone(), q.id.clone());
    let r = svc
        .store
        .read(move |c| {
            let (d, patients) = match &id2 {
                Some(i) => {
                    let patients = records::history_patients(c, rtype.as_str(), i)?;
                    (authz::decide_record(c, &a2, Action::History, rtype, &patients, now)?, patients)
                }
                None => {
                    let op = Operation::Record {
                        action: Action::History,
                        target: Target { rtype, scope: PatientScope::Any },
                    };
                    (authz::decide(&a2, &op, Facts::default()), Vec::new())
                }
            };
            if !d.permit {
                return Ok((d, patients, None));
            }
            let restrict = if id2.is_some() { search::Restriction::None } else { restriction(&d, &a2, now) };
            let versions =
                records::history(c, Some(rtype.as_str()), id2.as_deref(), since, before, count + 1, &restrict)?;
            Ok((d, patients, Some(versions)))
        })
        .await?;
    let (d, decided_on, versions) = r;
    let what = match &q.id {
        Some(i) => format!("{rtype}/{i}"),
        None => rtype.to_string(),
    };
    let Some(mut versions) = versions else {
        let rec =
            actor.fhir_record(action, 403, Some(rtype.as_str()), q.id.as_deref(), None, decided_on, Some(&d), now);
        return answer(svc, rec, Err(ServiceError::denied(&format!("access to the history of {what}"), &d))).await;
    };
    if q.id.is_some() && versions.is_empty() {
        let rec = actor.fhir_record(action, 404, Some(rtype.as_str()), q.id.as_deref(), None, vec![], Some(&d), now);
        return answer(svc, rec, Err(ServiceError::NotFound(format!("{what} does not exist")))).await;
    }
    let more = versions.len() > count;
    versions.truncate(count);
    let next = if more { versions.last().map(|v| v.seq) } else { None };
    let patients: Vec<String> = versions.iter().flat_map(|v| v.patients.iter().cloned()).collect();
    let mut rec = actor.fhir_record(action, 200, Some(rtype.as_str()), q.id.as_deref(), None, patients, Some(&d), now);
    rec.detail = Some(json!({"count": versions.len()}));
    svc.audited(rec, HistoryPage { rtype, id: q.id, count, versions, next }).await
}

/// `_count`, `_since` and `_cursor` of a history request.
fn history_params(params: &[(String, String)]) -> Result<(usize, Option<Timestamp>, Option<i64>), ServiceError> {
    let mut count = 50usize;
    let mut since = None;
    let mut before = None;
    for (k, v) in params {
        match k.as_str() {
            "_count" => {
                count = v
                    .parse::<usize>()
                    .map_err(|_| ServiceError::invalid("_count", "expected a non-negative integer"))?
                    .min(MAX_COUNT)
            }
            "_since" => {
                since = Some(
                    Timestamp::parse_rfc3339(v)
                        .ok_or_else(|| ServiceError::invalid("_since", "expected an instant"))?,
                )
            }
            "_cursor" => {
                before =
                    Some(v.parse::<i64>().map_err(|_| ServiceError::invalid("_cursor", "malformed paging cursor"))?)
            }
            "_format" | "_pretty" => {}
            other => return Err(ServiceError::invalid(other, format!("unknown history parameter '{other}'"))),
        }
    }
    Ok((count, since, before))
}

/// One page of the whole server's history, newest first.
#[derive(Debug, Clone)]
pub struct SystemHistoryPage {
    /// The page size asked for.
    pub count: usize,
    /// The versions the actor may see.
    pub versions: Vec<Version>,
    /// Versions of this page left out: the actor may not see them.
    pub withheld: usize,
    /// The cursor of the next page, if there is one.
    pub next: Option<i64>,
}

/// `GET /fhir/_history`: every type's versions, newest first, each decided
/// as the history of its own resource (on its type and patients); what
/// the actor may not see is left out and counted.
pub async fn history_system(
    svc: &Services,
    actor: &Actor,
    params: Vec<(String, String)>,
) -> Result<Audited<SystemHistoryPage>, ServiceError> {
    const ACTION: &str = "history-system";
    let now = svc.now();
    let (count, since, before) = match history_params(&params) {
        Ok(x) => x,
        Err(e) => return Err(super::reject(svc, actor, ACTION, None, None, e).await),
    };
    let a2 = actor.clone();
    let r = svc
        .store
        .read(move |c| {
            let mut versions = records::history(c, None, None, since, before, count + 1, &search::Restriction::None)?;
            let more = versions.len() > count;
            versions.truncate(count);
            let next_seq = versions.last().map(|v| v.seq);
            let mut kept = Vec::with_capacity(versions.len());
            let mut withheld = 0usize;
            let mut bases = std::collections::BTreeSet::new();
            for v in versions {
                let rtype = ResourceType::parse(&v.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
                let d = authz::decide_record(c, &a2, Action::History, rtype, &v.patients, now)?;
                if d.permit {
                    bases.insert(d.basis.as_str());
                    kept.push(v);
                } else {
                    withheld += 1;
                }
            }
            Ok::<_, StoreError>((kept, withheld, bases, more.then_some(next_seq).flatten()))
        })
        .await?;
    let (versions, withheld, bases, next) = r;
    let patients: Vec<String> = versions.iter().flat_map(|v| v.patients.iter().cloned()).collect();
    let mut rec = actor.fhir_record(ACTION, 200, None, None, None, patients, None, now);
    // Each version was decided on its own: the bases of those shown.
    rec.detail = Some(json!({"count": versions.len(), "withheld": withheld, "bases": bases}));
    svc.audited(rec, SystemHistoryPage { count, versions, withheld, next }).await
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

/// A search's page, with its canonical query (for links).
#[derive(Debug, Clone)]
pub struct SearchResult {
    /// The parsed query.
    pub query: SearchQuery,
    /// The canonical query string.
    pub query_text: String,
    /// The page.
    pub page: Page,
    /// Matches left out because they also name a patient the actor may
    /// not see.
    pub withheld: usize,
    /// Unknown parameters ignored (lenient handling, the default).
    pub ignored: Vec<String>,
    /// What `_include` and `_revinclude` added.
    pub included: Included,
}

/// The resources `_include` and `_revinclude` added to a page.
#[derive(Debug, Clone, Default)]
pub struct Included {
    /// Each one the actor may read.
    pub resources: Vec<Version>,
    /// How many were left out because the actor may not read them.
    pub withheld: usize,
    /// Whether [`MAX_INCLUDED`] left some out.
    pub cut: bool,
}

/// Drops the entries that name a patient the actor may not read (beyond
/// the patients already decided on); returns how many were dropped.
fn withhold(
    c: &mut dyn Conn,
    actor: &Actor,
    entries: &mut Vec<Version>,
    decided: &[String],
    now: Timestamp,
) -> Result<usize, StoreError> {
    let before = entries.len();
    let mut keep = Vec::with_capacity(entries.len());
    for v in entries.drain(..) {
        if may_read(c, actor, &v, decided, now)? {
            keep.push(v);
        }
    }
    *entries = keep;
    Ok(before - entries.len())
}

/// Whether the actor may read `v` (decided as its read, unless every
/// patient it names was decided on already).
fn may_read(
    c: &mut dyn Conn,
    actor: &Actor,
    v: &Version,
    decided: &[String],
    now: Timestamp,
) -> Result<bool, StoreError> {
    // (An app's scopes may not reach every type of a decided patient's
    // record: each resource is decided for it.)
    if actor.app.is_none() && v.patients.iter().all(|p| decided.contains(p)) {
        return Ok(true);
    }
    let rtype = ResourceType::parse(&v.rtype).map_err(|e| StoreError::Internal(e.to_string()))?;
    Ok(authz::decide_record(c, actor, Action::Read, rtype, &v.patients, now)?.permit)
}

/// A search of one type. A query naming exactly one patient is decided on
/// that patient; any other search across patients is restricted (to the
/// actor's own patients, or to reference data) unless an emergency opens
/// access. Matches that also name another patient are decided on that
/// patient too.
pub async fn search(
    svc: &Services,
    actor: &Actor,
    t: &str,
    pairs: Vec<(String, String)>,
    lenient: bool,
) -> Result<Audited<SearchResult>, ServiceError> {
    let now = svc.now();
    let pre = (|| {
        let rtype = parse_type(t)?;
        // Token :below/:above through the hierarchies of loaded code systems.
        let conf = svc.conformance();
        let pairs = mamori_core::fhir::search::expand_subsumption(rtype, pairs, |u| conf.registry.by_url(u))
            .map_err(|e| ServiceError::invalid("", e.to_string()))?;
        parse_query_in(&conf.search, rtype, &pairs, lenient).map_err(|e| ServiceError::invalid("", e.to_string()))
    })();
    let (q, ignored) = match pre {
        Ok(q) => q,
        Err(e) => {
            let mut rec =
                error_record(actor, "search-type", ResourceType::parse(t).ok().map(|r| r.as_str()), None, &e, now);
            rec.query = Some(format!("{}?…", t.chars().take(60).collect::<String>()));
            svc.audit(vec![rec]).await?;
            return Err(e);
        }
    };
    let query_text: String =
        q.canonical.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
    let patient = one_patient(&q);
    let (a2, q2, p2) = (actor.clone(), q.clone(), patient.clone());
    // On the standby when one is configured: the audit event below is
    // still written on the primary before the answer.
    let r = svc
        .store
        .read_search(move |c| {
            let mut decided: Vec<String> = p2.iter().cloned().collect();
            let one = |c: &mut dyn Conn, decided: &[String]| {
                let op = Operation::Record {
                    action: Action::Search,
                    target: Target { rtype: q2.rtype, scope: PatientScope::One },
                };
                authz::decide_patients(c, &a2, &op, decided, Facts::default(), now)
            };
            let mut restrict = None;
            let mut d = if decided.is_empty() {
                let op = Operation::Record {
                    action: Action::Search,
                    target: Target { rtype: q2.rtype, scope: PatientScope::Any },
                };
                authz::decide(&a2, &op, Facts::default())
            } else {
                one(c, &decided)?
            };
            // An app with `patient/` scopes searches in its patient's
            // compartment: decided on that patient, restricted to it.
            if let (false, Basis::NotInAppScope, true, Some(p)) =
                (d.permit, d.basis, decided.is_empty(), a2.app_patient())
            {
                decided.push(p.to_owned());
                d = one(c, &decided)?;
                restrict = Some(Restriction::Patient(p.to_owned()));
            }
            if !d.permit {
                return Ok((d, None));
            }
            let has = match super::has_scope(&a2, &q2, now) {
                Ok(h) => h,
                Err(refused) => return Ok((refused, None)),
            };
            let restrict = restrict.unwrap_or_else(|| restriction(&d, &a2, now));
            let mut page = search::search_scoped(c, &q2, &restrict, &has)?;
            let withheld = withhold(c, &a2, &mut page.entries, &decided, now)?;
            // Included resources are decided one by one, as reads.
            // (Each round of `:iterate` goes on only from what was kept.)
            let mut decide = |c: &mut dyn Conn, v: &Version| may_read(c, &a2, v, &[], now);
            let (included, cut, withheld_included) =
                search::included(c, &q2, &page.entries, MAX_INCLUDED, &mut decide)?;
            Ok((d, Some((page, withheld, Included { resources: included, withheld: withheld_included, cut }))))
        })
        .await?;
    let (d, found) = r;
    let Some((page, withheld, included)) = found else {
        let mut rec = actor.fhir_record(
            "search-type",
            403,
            Some(q.rtype.as_str()),
            None,
            None,
            patient.into_iter().collect(),
            Some(&d),
            now,
        );
        rec.query = Some(query_text);
        let e = ServiceError::denied(&format!("access to the {} search", q.rtype), &d);
        svc.audit(vec![rec]).await?;
        return Err(e);
    };
    let patients: Vec<String> =
        page.entries.iter().chain(&included.resources).flat_map(|v| v.patients.iter().cloned()).collect();
    let mut rec = actor.fhir_record("search-type", 200, Some(q.rtype.as_str()), None, None, patients, Some(&d), now);
    rec.query = Some(query_text.clone());
    let mut detail = json!({"count": page.entries.len(), "withheld": withheld});
    if !q.include.is_empty() || !q.revinclude.is_empty() {
        detail["included"] = json!(included.resources.len());
        detail["included_withheld"] = json!(included.withheld);
    }
    rec.detail = Some(detail);
    svc.audited(rec, SearchResult { query: q, query_text, page, withheld, ignored, included }).await
}

/// One page of a patient's whole record.
#[derive(Debug, Clone)]
pub struct EverythingPage {
    /// The patient.
    pub patient: String,
    /// The page size.
    pub count: usize,
    /// The resources (current, not deleted), by type and id.
    pub rows: Vec<Version>,
    /// The cursor of the next page (`type/id`), if there is one.
    pub next: Option<String>,
}

/// `GET /fhir/Patient/{id}/$everything`: the patient's compartment,
/// decided as a read of that patient's clinical records (and of any other
/// patient a resource in it also names).
pub async fn everything(
    svc: &Services,
    actor: &Actor,
    id: &str,
    params: &[(String, String)],
) -> Result<Audited<EverythingPage>, ServiceError> {
    let now = svc.now();
    let pre = (|| {
        parse_id(id)?;
        let mut count = 1000usize;
        let mut after: Option<(String, String)> = None;
        for (k, v) in params {
            match k.as_str() {
                "_count" => {
                    count = v
                        .parse::<usize>()
                        .map_err(|_| ServiceError::invalid("_count", "expected a non-negative integer"))?
                        .clamp(1, MAX_COUNT)
                }
                "_cursor" => {
                    let (t, i) =
                        v.split_once('/').ok_or_else(|| ServiceError::invalid("_cursor", "malformed paging cursor"))?;
                    after = Some((t.to_owned(), i.to_owned()));
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(ServiceError::invalid(other, format!("unsupported $everything parameter '{other}'")))
                }
            }
        }
        Ok::<_, ServiceError>((count, after))
    })();
    let (count, after) = match pre {
        Ok(x) => x,
        Err(e) => return Err(super::reject(svc, actor, "operation", Some("Patient"), None, e).await),
    };
    let (a2, id2) = (actor.clone(), id.to_owned());
    let r = svc
        .store
        .read(move |c| {
            let exists = records::current(c, "Patient", &id2)?;
            let d = authz::decide_clinical_read(c, &a2, std::slice::from_ref(&id2), now)?;
            if !d.permit || exists.as_ref().is_none_or(|e| e.deleted) {
                return Ok((d, exists.is_some(), None));
            }
            let a = after.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
            let mut rows = records::compartment(c, &id2, a, count + 1)?;
            let more = rows.len() > count;
            rows.truncate(count);
            let next = if more { rows.last().map(|l| format!("{}/{}", l.rtype, l.id)) } else { None };
            let withheld = withhold(c, &a2, &mut rows, std::slice::from_ref(&id2), now)?;
            Ok((d, true, Some((rows, next, withheld))))
        })
        .await?;
    let (d, exists, rows) = r;
    let mut rec =
        actor.fhir_record("operation", 200, Some("Patient"), Some(id), None, vec![id.to_owned()], Some(&d), now);
    rec.query = Some("$everything".into());
    if let Err(e) = permitted(&d, &format!("the record of Patient/{id}")) {
        rec.status = 403;
        return answer(svc, rec, Err(e)).await;
    }
    let Some((rows, next, withheld)) = rows else {
        let e = if exists {
            ServiceError::Gone(format!("Patient/{id} was deleted"))
        } else {
            ServiceError::NotFound(format!("Patient/{id} does not exist"))
        };
        rec.status = e.status();
        return answer(svc, rec, Err(e)).await;
    };
    let mut patients: Vec<String> = rows.iter().flat_map(|v| v.patients.iter().cloned()).collect();
    patients.push(id.to_owned());
    crate::actor::set_patients(&mut rec, patients);
    rec.detail = Some(json!({"count": rows.len(), "withheld": withheld}));
    svc.audited(rec, EverythingPage { patient: id.to_owned(), count, rows, next }).await
}

/// `GET /fhir/Patient/{id}/$clins-bundle?item=Condition`: the patient's
/// items of one kind as a JP-CLINS `JP_Bundle_CLINS` (電子カルテ情報共有サービス),
/// validated. Decided as a read of the patient's records of that kind and
/// of the encounters they were recorded in, audited as one. A caller from
/// whom any record is withheld gets no bundle: it would be incomplete.
pub async fn clins_bundle(
    svc: &Services,
    actor: &Actor,
    id: &str,
    params: &[(String, String)],
) -> Result<Audited<serde_json::Value>, ServiceError> {
    use crate::exchange::clins;
    let now = svc.now();
    let pre = (|| {
        parse_id(id)?;
        let mut item = None;
        for (k, v) in params {
            match k.as_str() {
                "item" if item.is_none() => item = Some(v.clone()),
                "item" => return Err(ServiceError::invalid("item", "one item per bundle")),
                "_format" | "_pretty" => {}
                other => {
                    return Err(ServiceError::invalid(other, format!("unsupported $clins-bundle parameter '{other}'")))
                }
            }
        }
        let item = item.ok_or_else(|| {
            ServiceError::invalid("item", format!("required: one of {}", clins::CLINS_ITEMS.join(", ")))
        })?;
        if !clins::CLINS_ITEMS.contains(&item.as_str()) {
            return Err(ServiceError::invalid(
                "item",
                format!(
                    "'{item}' is not an item of JP_Bundle_CLINS: {} (JP-CLINS 1.5.2 accepts no MedicationRequest bundle)",
                    clins::CLINS_ITEMS.join(", ")
                ),
            ));
        }
        ResourceType::parse(&item).map_err(|e| ServiceError::invalid("item", e.to_string()))
    })();
    let rt = match pre {
        Ok(x) => x,
        Err(e) => return Err(super::reject(svc, actor, "operation", Some("Patient"), Some(id), e).await),
    };
    let (a2, id2) = (actor.clone(), id.to_owned());
    let r = svc
        .store
        .read(move |c| {
            let exists = records::read(c, "Patient", &id2)?;
            let one = std::slice::from_ref(&id2);
            let first = authz::decide_record(c, &a2, Action::Read, rt, one, now)?;
            let d = mamori_core::policy::combine(vec![
                first.clone(),
                authz::decide_record(c, &a2, Action::Read, ResourceType::ENCOUNTER, one, now)?,
            ])
            .unwrap_or(first);
            let Some(p) = exists.filter(|e| !e.deleted && d.permit) else { return Ok((d, None)) };
            let mut rows = Vec::new();
            let mut after: Option<(String, String)> = None;
            loop {
                let page = records::compartment(c, &id2, after.as_ref().map(|(t, i)| (t.as_str(), i.as_str())), 500)?;
                let Some(last) = page.last() else { break };
                after = Some((last.rtype.clone(), last.id.clone()));
                rows.extend(page.into_iter().filter(|v| {
                    !v.deleted
                        && (v.rtype == rt.as_str() || v.rtype == "Encounter")
                        && v.patients.iter().all(|x| x == &id2)
                }));
            }
            let withheld = withhold(c, &a2, &mut rows, one, now)?;
            Ok((d, Some((p, rows, withheld))))
        })
        .await?;
    let (d, found) = r;
    let mut rec =
        actor.fhir_record("operation", 200, Some("Patient"), Some(id), None, vec![id.to_owned()], Some(&d), now);
    rec.query = Some(format!("$clins-bundle?item={rt}"));
    if let Err(e) = permitted(&d, &format!("the {rt} records of Patient/{id}")) {
        rec.status = 403;
        return answer(svc, rec, Err(e)).await;
    }
    let Some((p, rows, withheld)) = found else {
        let e = ServiceError::NotFound(format!("Patient/{id}"));
        rec.status = e.status();
        return answer(svc, rec, Err(e)).await;
    };
    if withheld > 0 {
        let e = ServiceError::forbidden(format!(
            "{withheld} of Patient/{id}'s records are withheld from you; the bundle would be incomplete"
        ));
        rec.status = 403;
        return answer(svc, rec, Err(e)).await;
    }
    let parse = |body: &str| serde_json::from_str::<serde_json::Value>(body);
    let patient = match parse(&p.body) {
        Ok(v) => v,
        Err(e) => return answer(svc, rec, Err(ServiceError::internal_from("the Patient", e))).await,
    };
    let chart: Vec<(String, String, serde_json::Value)> =
        rows.iter().filter_map(|v| parse(&v.body).ok().map(|b| (v.rtype.clone(), v.id.clone(), b))).collect();
    let conf = svc.conformance();
    let serial = match mamori_store::accounts::new_id() {
        Ok(s) => s,
        Err(e) => return answer(svc, rec, Err(e.into())).await,
    };
    let built = clins::items_bundle(&clins::Items {
        registry: &conf.registry,
        institution: &svc.cfg.institution.id,
        utc_offset_minutes: svc.cfg.institution.utc_offset_minutes,
        item: rt.as_str(),
        patient: (id, &patient),
        chart: &chart,
        now,
        serial: &serial,
    });
    let count = chart.iter().filter(|(t, _, _)| t == rt.as_str()).count();
    rec.detail = Some(json!({"item": rt.as_str(), "count": count}));
    match built {
        Ok((bundle, warnings)) => {
            rec.detail =
                Some(json!({"item": rt.as_str(), "count": bundle["entry"].as_array().map_or(0, |e| e.len() - 1),
                                     "warnings": warnings.len()}));
            svc.audited(rec, bundle).await
        }
        Err(issues) => {
            rec.status = 422;
            answer(svc, rec, Err(ServiceError::Unprocessable(issues))).await
        }
    }
}
