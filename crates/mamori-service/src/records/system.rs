//! System-level search (`GET /fhir?_type=A,B&…`): the same search run on
//! each listed type in turn, each one decided, restricted and audited as
//! that type's own search, so a system search can never show more than
//! the type searches would.

use mamori_core::fhir::search::{parse_query_in, SearchError, SearchParams, DEFAULT_COUNT, MAX_COUNT};
use mamori_core::ids::ResourceType;
use mamori_store::records::Version;

use super::enc;
use super::read::search;
use crate::actor::Actor;
use crate::error::ServiceError;
use crate::services::Services;

/// The most types one system-level search may name.
pub const MAX_TYPES: usize = 20;

/// Parameters a system-level search takes itself, or passes to each type
/// search as they are.
const CONTROL: &[&str] =
    &["_type", "_count", "_cursor", "_total", "_summary", "_elements", "_sort", "_format", "_pretty"];

/// One page of a system-level search.
#[derive(Debug, Clone)]
pub struct SystemPage {
    /// The canonical query (for the self link), without the cursor.
    pub query_text: String,
    /// The matches, in the order of `_type`, then each type's own order;
    /// each with its body as answered (`_elements`/`_summary` applied).
    pub entries: Vec<(Version, String)>,
    /// The number of matches over every type, when asked for
    /// (`_total=accurate` or `_summary=count`).
    pub total: Option<u64>,
    /// The cursor of the next page, if any.
    pub next: Option<String>,
    /// Matches left out because they also concern a patient the caller
    /// may not see.
    pub withheld: usize,
    /// Unknown parameters ignored (lenient handling).
    pub ignored: Vec<String>,
}

/// Runs a system-level search: `_type` (required, at most [`MAX_TYPES`]
/// types) names the types, searched in that order; every other search
/// parameter must be one each of those types knows (a parameter no type
/// knows is ignored and reported, or refused under strict handling);
/// `_include` and `_revinclude` are refused. Each type's search is the
/// type-level search (decided and audited as such); a type the caller may
/// not search refuses the whole request.
pub async fn search_system(
    svc: &Services,
    actor: &Actor,
    pairs: Vec<(String, String)>,
    lenient: bool,
) -> Result<SystemPage, ServiceError> {
    match plan(&svc.conformance().search, &pairs, lenient) {
        Ok(p) => run(svc, actor, p).await,
        Err(e) => Err(svc.refused(actor, "search-system", e).await),
    }
}

struct Plan {
    types: Vec<ResourceType>,
    /// The parameters each type search gets (no `_type`, `_count`, `_cursor`).
    shared: Vec<(String, String)>,
    count: usize,
    /// Where this page starts: the type's index and its own cursor.
    start: (usize, Option<String>),
    summary_count: bool,
    total: bool,
    ignored: Vec<String>,
    query_text: String,
}

fn plan(search: &SearchParams, pairs: &[(String, String)], lenient: bool) -> Result<Plan, ServiceError> {
    let bad = |p: &str, why: String| ServiceError::invalid(p, why);
    let mut types = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "_type") {
        for t in v.split(',') {
            let rt = ResourceType::parse(t).map_err(|_| {
                bad(k, format!("'{}' is not a FHIR R4 resource type", t.chars().take(40).collect::<String>()))
            })?;
            if matches!(t, "AuditEvent" | "OperationOutcome" | "Parameters" | "CapabilityStatement") {
                return Err(bad(k, format!("{t} is not searched at the system level")));
            }
            if !types.contains(&rt) {
                types.push(rt);
            }
        }
    }
    if types.is_empty() {
        return Err(bad(
            "_type",
            "a system-level search needs _type=Type[,Type…]: mamori searches only the types named".into(),
        ));
    }
    if types.len() > MAX_TYPES {
        return Err(bad("_type", format!("at most {MAX_TYPES} types per system-level search")));
    }
    let mut count = DEFAULT_COUNT;
    let mut start = (0, None);
    let (mut summary_count, mut total) = (false, false);
    let mut shared = Vec::new();
    let mut ignored = Vec::new();
    let mut canonical: Vec<(String, String)> =
        vec![("_type".into(), types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","))];
    for (k, v) in pairs {
        let name = k.split(':').next().unwrap_or(k);
        match name {
            "_type" | "_format" | "_pretty" => continue,
            "_include" | "_revinclude" => {
                return Err(bad(k, format!("{k} is not supported in a system-level search; search the type")))
            }
            "_before" => return Err(bad(k, "a system-level search pages forward only (next links)".into())),
            "_count" => {
                let n: usize = v.parse().map_err(|_| bad(k, "expected a non-negative integer".into()))?;
                count = n.min(MAX_COUNT);
                canonical.push((k.clone(), count.to_string()));
                continue;
            }
            "_cursor" => {
                start = parse_cursor(v, types.len()).ok_or_else(|| bad(k, "not a cursor of this search".into()))?;
                continue;
            }
            _ => {}
        }
        if name == "_summary" && v == "count" {
            summary_count = true;
            canonical.push((k.clone(), v.clone()));
            continue;
        }
        if name == "_total" {
            match v.as_str() {
                "accurate" => total = true,
                "none" | "estimate" => {}
                _ => return Err(bad(k, "expected none, estimate or accurate".into())),
            }
            canonical.push((k.clone(), v.clone()));
            continue;
        }
        if !CONTROL.contains(&name) {
            // Known to every type, or to none (then ignored, or refused
            // under strict handling); known to some only: refused, since
            // the others would drop it and match too much.
            let one = [(k.clone(), v.clone())];
            let unknown: Vec<ResourceType> = types
                .iter()
                .copied()
                .filter(|t| matches!(parse_query_in(search, *t, &one, false), Err(SearchError::UnknownParam(..))))
                .collect();
            if unknown.len() == types.len() && lenient {
                ignored.push(k.clone());
                continue;
            }
            if let Some(t) = unknown.first() {
                return Err(bad(
                    k,
                    format!("'{name}' is not a search parameter of {t}; a system-level search applies each parameter to every type in _type"),
                ));
            }
        }
        shared.push((k.clone(), v.clone()));
        canonical.push((k.clone(), v.clone()));
    }
    let query_text = canonical.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
    Ok(Plan { types, shared, count, start, summary_count, total, ignored, query_text })
}

/// `i` or `i.cursor`: the type's index in `_type`, and its own cursor.
fn parse_cursor(v: &str, ntypes: usize) -> Option<(usize, Option<String>)> {
    let (i, c) = match v.split_once('.') {
        Some((i, c)) if !c.is_empty() => (i, Some(c.to_owned())),
        Some(_) => return None,
        None => (v, None),
    };
    let i: usize = i.parse().ok()?;
    (i < ntypes).then_some((i, c))
}

async fn run(svc: &Services, actor: &Actor, p: Plan) -> Result<SystemPage, ServiceError> {
    let mut out = SystemPage {
        query_text: p.query_text,
        entries: Vec::new(),
        total: None,
        next: None,
        withheld: 0,
        ignored: p.ignored,
    };
    let with = |extra: &[(&str, String)]| -> Vec<(String, String)> {
        let mut v = p.shared.clone();
        v.extend(extra.iter().map(|(k, x)| ((*k).to_owned(), x.clone())));
        v
    };
    if p.summary_count || p.count == 0 {
        if p.summary_count || p.total {
            let mut sum = 0;
            for t in &p.types {
                let r = search(
                    svc,
                    actor,
                    t.as_str(),
                    with(&[("_count", "0".into()), ("_total", "accurate".into())]),
                    false,
                )
                .await?
                .into_inner();
                sum += r.page.total.unwrap_or(0);
            }
            out.total = Some(sum);
        }
        return Ok(out);
    }
    let mut left = p.count;
    let mut sum = 0u64;
    let (first, mut cursor) = p.start;
    if p.total {
        // The types earlier pages went through count too.
        for t in p.types.iter().take(first) {
            let r =
                search(svc, actor, t.as_str(), with(&[("_count", "0".into()), ("_total", "accurate".into())]), false)
                    .await?
                    .into_inner();
            sum += r.page.total.unwrap_or(0);
        }
    }
    for (i, t) in p.types.iter().enumerate().skip(first) {
        if left == 0 {
            if out.next.is_none() {
                out.next = Some(i.to_string());
            }
            if !p.total {
                break;
            }
            let r =
                search(svc, actor, t.as_str(), with(&[("_count", "0".into()), ("_total", "accurate".into())]), false)
                    .await?
                    .into_inner();
            sum += r.page.total.unwrap_or(0);
            continue;
        }
        let mut extra = vec![("_count", left.to_string())];
        extra.push(("_total", if p.total { "accurate" } else { "none" }.into()));
        if let Some(c) = cursor.take() {
            extra.push(("_cursor", c));
        }
        let r = search(svc, actor, t.as_str(), with(&extra), false).await?.into_inner();
        sum += r.page.total.unwrap_or(0);
        out.withheld += r.withheld;
        left = left.saturating_sub(r.page.entries.len());
        for v in r.page.entries {
            let body = r.query.subset.apply(&v.body).unwrap_or_else(|| v.body.clone());
            out.entries.push((v, body));
        }
        if let Some(n) = r.page.next {
            out.next = Some(format!("{i}.{}", n.encode()));
            if !p.total {
                break;
            }
            left = 0;
        }
    }
    if p.total {
        out.total = Some(sum);
    }
    Ok(out)
}
