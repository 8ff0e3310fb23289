//! `GET /fhir/AuditEvent[/{id}]`: the audit log as FHIR AuditEvent (IHE
//! BALP), for the auditor role only. Searching the log is itself audited.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use mamori_audit::event::AuditRecord;
use mamori_audit::fhir::{actions_for_code, to_audit_event};
use mamori_core::ids::ResourceType;
use mamori_core::policy::{decide, Action, PatientScope, Target};
use mamori_core::time::parse_search_date;
use mamori_store::audit_log::{self, EventQuery};
use serde_json::json;

use super::read::audited;
use super::{check_accept, enc, respond, BundleWriter};
use crate::error::ApiError;
use crate::state::{AppState, Caller};

fn target() -> Target {
    Target { rtype: ResourceType::AUDIT_EVENT, scope: PatientScope::Any }
}

pub async fn read(st: AppState, caller: Caller, id: String, headers: HeaderMap) -> Response {
    let now = st.store.clock().now();
    let d = decide(&caller.subject(), Action::Read, target(), &caller.mode(), Default::default());
    let mut rec = caller.fhir_record("read", 200, Some("AuditEvent"), Some(&id), None, vec![], Some(&d), now);
    if !d.permit {
        rec.status = 403;
        return audited(&st, rec, Err(ApiError::Forbidden("the audit log is for the auditor role".into()))).await;
    }
    if let Err(e) = check_accept(&headers, None) {
        rec.status = e.status().as_u16();
        return audited(&st, rec, Err(e)).await;
    }
    let Ok(index) = id.parse::<u64>() else {
        rec.status = 404;
        return audited(&st, rec, Err(ApiError::NotFound(format!("AuditEvent/{id} does not exist")))).await;
    };
    let leaf = st.store.read(move |c| audit_log::leaf(c, index)).await;
    let resp = match leaf {
        Ok(Some(l)) => match AuditRecord::from_leaf(&l) {
            Ok(r) => Ok(respond(StatusCode::OK, to_audit_event(index, &r, &st.cfg.audit.origin).to_string())),
            Err(e) => Err(ApiError::Internal(e.to_string())),
        },
        Ok(None) => Err(ApiError::NotFound(format!("AuditEvent/{id} does not exist"))),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = &resp {
        rec.status = e.status().as_u16();
    }
    audited(&st, rec, resp).await
}

fn parse(pairs: &[(String, String)]) -> Result<(EventQuery, usize, String), ApiError> {
    let mut q = EventQuery { limit: 50, ..Default::default() };
    let mut canonical = Vec::new();
    for (k, v) in pairs {
        let bad = |why: &str| {
            ApiError::bad(k, format!("invalid value '{}' for {k}: {why}", v.chars().take(60).collect::<String>()))
        };
        match k.as_str() {
            "patient" | "entity" => q.patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_owned()),
            "agent" | "agent.identifier" => q.agent = Some(v.rsplit('|').next().unwrap_or(v).to_owned()),
            "action" => q.actions = Some(actions_for_code(v).ok_or_else(|| bad("expected C, R, U, D or E"))?.iter().map(|s| (*s).to_owned()).collect()),
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
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
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
            other => return Err(ApiError::bad(other, format!("unknown search parameter '{other}' for AuditEvent (supported: patient, agent, date, action, subtype, purpose, outcome)"))),
        }
        canonical.push(format!("{}={}", enc(k), enc(v)));
    }
    let limit = q.limit;
    Ok((q, limit, canonical.join("&")))
}

pub async fn search(
    st: AppState,
    caller: Caller,
    pairs: Result<Vec<(String, String)>, ApiError>,
    headers: HeaderMap,
) -> Response {
    let now = st.store.clock().now();
    let d = decide(&caller.subject(), Action::Search, target(), &caller.mode(), Default::default());
    let mut rec = caller.fhir_record("search-type", 200, Some("AuditEvent"), None, None, vec![], Some(&d), now);
    if !d.permit {
        rec.status = 403;
        return audited(&st, rec, Err(ApiError::Forbidden("the audit log is for the auditor role".into()))).await;
    }
    let parsed = pairs.and_then(|p| {
        check_accept(&headers, p.iter().find(|(k, _)| k == "_format").map(|(_, v)| v.as_str()))?;
        parse(&p)
    });
    let (q, limit, query_text) = match parsed {
        Ok(x) => x,
        Err(e) => {
            rec.status = e.status().as_u16();
            return audited(&st, rec, Err(e)).await;
        }
    };
    rec.query = Some(query_text.clone());
    if let Err(e) = st.store.writer().flush_index().await {
        return ApiError::from(e).into_response_fhir();
    }
    let q2 = q.clone();
    let found = st
        .store
        .read(move |c| {
            let total = audit_log::count_events(c, &q2)?;
            let mut page = q2.clone();
            page.limit = q2.limit + 1;
            Ok((total, audit_log::search_events(c, &page)?))
        })
        .await;
    let (total, mut rows) = match found {
        Ok(x) => x,
        Err(e) => return crate::error::ApiError::from(e).into_response_fhir(),
    };
    let more = rows.len() > limit;
    rows.truncate(limit);
    let base = &st.base_url;
    let self_url = format!("{base}/fhir/AuditEvent?{query_text}");
    let sep = if query_text.is_empty() { "" } else { "&" };
    let mut links = vec![("self", self_url.clone())];
    if more {
        if let Some((last, _)) = rows.last() {
            links.push(("next", format!("{self_url}{sep}_count={limit}&_cursor={last}")));
        }
    }
    let mut b = BundleWriter::new("searchset", Some(total), &links);
    for (idx, leaf) in &rows {
        if let Ok(r) = AuditRecord::from_leaf(leaf) {
            let ev = to_audit_event(*idx, &r, &st.cfg.audit.origin);
            b.entry(
                Some(&format!("{base}/fhir/AuditEvent/{idx}")),
                &ev.to_string(),
                &[("search", json!({"mode": "match"}))],
            );
        }
    }
    rec.detail = Some(json!({"count": rows.len()}));
    audited(&st, rec, Ok(respond(StatusCode::OK, b.finish()))).await
}
