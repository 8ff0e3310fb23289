//! Executes a parsed [`SearchQuery`] as SQL with bound parameters, with
//! keyset paging (stable under concurrent writes) and optional restriction
//! to the patients a user has a care relationship with.

use mamori_core::fhir::search::{
    Clause, Cond, Cursor, ParamKind, Prefix, SearchQuery, Sort, SortKeys, SortValue, Total, TOTAL_BOUND,
};
use mamori_core::ids::ResourceType;
use mamori_core::time::Timestamp;

use crate::error::{Result, StoreError};
use crate::records::Version;
use crate::sql::{Backend, Conn, Val};

/// Who the results are restricted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restriction {
    /// No restriction (the policy permitted a search across patients).
    None,
    /// Only resources that name no patient (reference data).
    ReferenceDataOnly,
    /// Reference data, and resources whose patients all have an active
    /// care assignment for this user (or the user's department) at `now`.
    CareOf {
        /// The user (user name).
        user: String,
        /// The user's department, if any.
        department: Option<String>,
        /// When the care assignments must be active.
        now: Timestamp,
    },
    /// Reference data, and resources that name this patient (an app's
    /// `patient/` scopes: its patient's compartment). A match that also
    /// names another patient is decided on that patient by the caller.
    Patient(String),
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page {
    /// The matching versions of this page, in the requested order.
    pub entries: Vec<Version>,
    /// The number of matches, if it was counted.
    pub total: Option<u64>,
    /// Cursor for the next page, if there is one.
    pub next: Option<Cursor>,
    /// Cursor for the previous page, if there is one.
    pub prev: Option<Cursor>,
}

struct Sql {
    text: String,
    params: Vec<Val<'static>>,
    /// Ends a subquery that must stay a per-row check: on PostgreSQL
    /// `OFFSET 0`, without which the planner may turn an `EXISTS` into a
    /// join or a hash over every row it could match (all of a code's
    /// index rows, all of a user's care assignments) before the first
    /// page. SQLite keeps an `EXISTS` as written.
    fence: &'static str,
}

impl Sql {
    fn new(sqlite: bool) -> Self {
        Sql { text: String::new(), params: Vec::new(), fence: if sqlite { "" } else { " OFFSET 0" } }
    }

    fn bind(&mut self, v: impl Into<Val<'static>>) -> String {
        self.params.push(v.into());
        format!("${}", self.params.len())
    }
}

/// What the referring resources of each `_has` source type are
/// restricted to (decided by the caller like a search of that type).
pub type HasScope = [(ResourceType, Restriction)];

/// How a search's clauses are written: which are broad (see
/// [`broad_clauses`]), and for which database.
struct Shape {
    broad: Vec<bool>,
    sqlite: bool,
}

/// A condition that matches at least this many index rows is *broad*.
const BROAD: u64 = 5000;

/// Which clauses are broad: one lookup in one index table that matches at
/// least [`BROAD`] rows (counted up to that, in one statement for all).
///
/// A clause is otherwise written as `r.id IN (SELECT id FROM idx_…)`, and
/// the database makes the list of all its matches before it can give the
/// first page: a code that a million Observations carry costs a million
/// rows per page. A broad clause is instead checked for each resource as
/// the resources are read in the page's order (`EXISTS`), which stops
/// after a page of matches; how many rows that reads depends on the share
/// of resources that match, not on how many there are. A narrow clause
/// keeps its list, which is short, and drives the search.
fn broad_clauses(c: &mut dyn Conn, q: &SearchQuery) -> Result<Shape> {
    let mut out = Shape { broad: vec![false; q.clauses.len()], sqlite: c.backend() == Backend::Sqlite };
    let mut s = Sql::new(out.sqlite);
    let t = s.bind(q.rtype.as_str().to_owned());
    let lim = s.bind(i64::try_from(BROAD).unwrap_or(i64::MAX));
    let mut probes = Vec::new();
    for (i, clause) in q.clauses.iter().enumerate() {
        if let [cond] = clause.any_of.as_slice() {
            // A date after (or ending before) a point is a condition on the
            // end of the range, which no index orders: counting its rows
            // would read them all, and listing them too. It is checked per
            // resource without counting.
            if matches!(cond, Cond::Date(Prefix::Gt | Prefix::Ge | Prefix::Eb, _)) {
                out.broad[i] = true;
                continue;
            }
            if let Some((table, rest)) = member(clause, cond, &mut s) {
                probes.push((
                    i,
                    format!(
                        "(SELECT COUNT(*) FROM (SELECT 1 FROM {table} WHERE rtype = {t} AND {rest} LIMIT {lim}) p{i})"
                    ),
                ));
            }
        }
    }
    if probes.is_empty() {
        return Ok(out);
    }
    s.text = format!("SELECT {}", probes.iter().map(|(_, p)| p.as_str()).collect::<Vec<_>>().join(", "));
    if let Some(row) = c.query_one(&s.text, &s.params)? {
        for (k, (i, _)) in probes.iter().enumerate() {
            out.broad[*i] = row.u64(k)? >= BROAD;
        }
    }
    Ok(out)
}

fn where_clause(q: &SearchQuery, restriction: &Restriction, has: &HasScope, broad: &Shape, sql: &mut Sql) {
    let t = sql.bind(q.rtype.as_str().to_owned());
    sql.text.push_str(&format!(" WHERE r.rtype = {t} AND r.deleted = 0"));
    for (i, clause) in q.clauses.iter().enumerate() {
        if broad.broad.get(i) == Some(&true) {
            if let [cond] = clause.any_of.as_slice() {
                if let Some((table, rest)) = member(clause, cond, sql) {
                    // SQLite would look the value up (and read all its
                    // matches for each resource) unless told to find the
                    // resource's own rows; PostgreSQL chooses by cost.
                    let hint = if broad.sqlite { format!(" INDEXED BY {table}_res") } else { String::new() };
                    let fence = sql.fence;
                    sql.text.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM {table} m{hint} WHERE m.rtype = r.rtype AND m.id = r.id AND {rest}{fence})"
                    ));
                    continue;
                }
            }
        }
        let mut ors = Vec::new();
        for cond in &clause.any_of {
            ors.push(cond_sql(clause, cond, "r", &t, has, sql));
        }
        sql.text.push_str(&format!(" AND ({})", ors.join(" OR ")));
    }
    let r = restriction_sql(restriction, "r", sql);
    sql.text.push_str(&format!(" AND {r}"));
}

/// The condition a restriction puts on the resource row aliased `a`.
fn restriction_sql(restriction: &Restriction, a: &str, sql: &mut Sql) -> String {
    match restriction {
        Restriction::None => "1 = 1".into(),
        Restriction::ReferenceDataOnly => format!("{a}.patient IS NULL"),
        Restriction::CareOf { user, department, now } => {
            let u = sql.bind(user.clone());
            let d = sql.bind(department.clone());
            let n = sql.bind(now.micros());
            let fence = sql.fence;
            // Whether the patient `p` is in the user's care: looked up per
            // patient, not listed (a user with a whole ward, or a
            // department's assignments, would otherwise list them all for
            // every search).
            let care = |p: &str| {
                format!(
                    "EXISTS (SELECT 1 FROM care_assignments ca WHERE ca.patient = {p} \
                     AND (ca.user_name = {u} OR (CAST({d} AS TEXT) IS NOT NULL AND ca.department = {d})) \
                     AND ca.start <= {n} AND (ca.ended IS NULL OR ca.ended > {n}){fence})"
                )
            };
            // Every patient the resource names must be in the user's care.
            format!(
                "({a}.patient IS NULL OR ({} AND NOT EXISTS (SELECT 1 FROM resource_compartments rc \
                 WHERE rc.rtype = {a}.rtype AND rc.id = {a}.id AND NOT {}{fence})))",
                care(&format!("{a}.patient")),
                care("rc.patient")
            )
        }
        Restriction::Patient(id) => {
            let p = sql.bind(id.clone());
            format!(
                "({a}.patient IS NULL OR {a}.patient = {p} OR EXISTS (SELECT 1 FROM resource_compartments rc \
                 WHERE rc.rtype = {a}.rtype AND rc.id = {a}.id AND rc.patient = {p}))"
            )
        }
    }
}

/// The condition on an `idx_quantity` row for a quantity comparison: the
/// value in the unit asked (exact, to six decimal places), or, for a
/// UCUM unit, a value in another unit of the same dimension after
/// conversion to base units.
fn quantity_sql(
    prefix: Prefix,
    micros: i64,
    half_width: i64,
    system: &Option<String>,
    code: &Option<String>,
    sql: &mut Sql,
) -> String {
    let cmp = match prefix {
        Prefix::Eq | Prefix::Ne => {
            let lo = sql.bind(micros.saturating_sub(half_width));
            let hi = sql.bind(micros.saturating_add(half_width));
            let within =
                if half_width == 0 { format!("value = {lo}") } else { format!("(value >= {lo} AND value < {hi})") };
            if prefix == Prefix::Eq {
                within
            } else {
                format!("NOT {within}")
            }
        }
        Prefix::Ap => {
            let lo = sql.bind(micros.saturating_sub(half_width));
            let hi = sql.bind(micros.saturating_add(half_width));
            format!("(value >= {lo} AND value <= {hi})")
        }
        Prefix::Gt | Prefix::Sa => format!("value > {}", sql.bind(micros)),
        Prefix::Lt | Prefix::Eb => format!("value < {}", sql.bind(micros)),
        Prefix::Ge => format!("value >= {}", sql.bind(micros)),
        Prefix::Le => format!("value <= {}", sql.bind(micros)),
    };
    let mut same = cmp;
    if let Some(sys) = system {
        same.push_str(&format!(" AND system = {}", sql.bind(sys.clone())));
    }
    if let Some(c) = code {
        same.push_str(&format!(" AND code = {}", sql.bind(c.clone())));
    }
    // A UCUM unit: quantities in other units of the same dimension
    // match after conversion to base units.
    let canon = |m: i64| {
        mamori_core::fhir::search::canonical_of(m, system.as_deref(), code.as_deref())
            .map(|(v, u)| (mamori_core::fhir::ucum::sortable(v), u))
    };
    let other = match (code, canon(micros)) {
        (Some(c), Some((v, unit))) => {
            let cu = sql.bind(unit);
            let cc = sql.bind(c.clone());
            let ccmp = match prefix {
                Prefix::Eq | Prefix::Ne | Prefix::Ap => {
                    let lo = sql.bind(canon(micros.saturating_sub(half_width)).map_or(v, |x| x.0));
                    let hi = sql.bind(canon(micros.saturating_add(half_width)).map_or(v, |x| x.0));
                    match prefix {
                        Prefix::Eq => format!("(cvalue >= {lo} AND cvalue < {hi})"),
                        Prefix::Ne => format!("NOT (cvalue >= {lo} AND cvalue < {hi})"),
                        _ => format!("(cvalue >= {lo} AND cvalue <= {hi})"),
                    }
                }
                Prefix::Gt | Prefix::Sa => format!("cvalue > {}", sql.bind(v)),
                Prefix::Lt | Prefix::Eb => format!("cvalue < {}", sql.bind(v)),
                Prefix::Ge => format!("cvalue >= {}", sql.bind(v)),
                Prefix::Le => format!("cvalue <= {}", sql.bind(v)),
            };
            format!(" OR (cunit = {cu} AND code <> {cc} AND {ccmp})")
        }
        _ => String::new(),
    };
    format!("({same}){other}")
}

/// SQL for a date prefix; binds only the bounds it uses.
fn date_sql(p: Prefix, low_col: &str, high_col: &str, low: i64, high: i64, sql: &mut Sql) -> String {
    match p {
        Prefix::Eq | Prefix::Ne => {
            let lo = sql.bind(low);
            let hi = sql.bind(high);
            let eq = format!("({low_col} >= {lo} AND {high_col} <= {hi})");
            if p == Prefix::Eq {
                eq
            } else {
                format!("NOT {eq}")
            }
        }
        Prefix::Gt => format!("{high_col} > {}", sql.bind(high)),
        Prefix::Lt => format!("{low_col} < {}", sql.bind(low)),
        Prefix::Ge => format!("{high_col} > {}", sql.bind(low)),
        Prefix::Le => format!("{low_col} < {}", sql.bind(high)),
        Prefix::Sa => format!("{low_col} >= {}", sql.bind(high)),
        Prefix::Eb => format!("{high_col} <= {}", sql.bind(low)),
        Prefix::Ap => {
            let lo = sql.bind(low);
            let hi = sql.bind(high);
            format!("({high_col} > {lo} AND {low_col} < {hi})")
        }
    }
}

/// The index table and the condition on its rows (after `rtype = t`) of
/// a condition that is one lookup in one index table; `None` for the
/// others.
fn member(clause: &Clause, cond: &Cond, sql: &mut Sql) -> Option<(&'static str, String)> {
    let param = clause.param;
    Some(match cond {
        Cond::Token { system, code } => {
            let pm = sql.bind(param);
            let mut s = format!("param = {pm}");
            if let Some(c) = code {
                s.push_str(&format!(" AND code = {}", sql.bind(c.clone())));
            }
            match system {
                None => {}
                Some(None) => s.push_str(" AND system IS NULL"),
                Some(Some(sys)) => s.push_str(&format!(" AND system = {}", sql.bind(sys.clone()))),
            }
            ("idx_token", s)
        }
        Cond::StringStarts(prefix) => {
            let pm = sql.bind(param);
            let lo = sql.bind(prefix.clone());
            let hi = sql.bind(format!("{prefix}\u{10FFFF}"));
            ("idx_string", format!("param = {pm} AND norm >= {lo} AND norm < {hi}"))
        }
        Cond::StringExact(v) => {
            let pm = sql.bind(param);
            let v = sql.bind(v.clone());
            ("idx_string", format!("param = {pm} AND exact = {v}"))
        }
        Cond::Date(p, range) => {
            let pm = sql.bind(param);
            let cond = date_sql(*p, "low", "high", range.low, range.high, sql);
            ("idx_date", format!("param = {pm} AND {cond}"))
        }
        Cond::Reference { rtype, id } => {
            let pm = sql.bind(param);
            let tid = sql.bind(id.clone());
            let mut s = format!("param = {pm} AND target_id = {tid}");
            if let Some(tt) = rtype {
                s.push_str(&format!(" AND target_type = {}", sql.bind(tt.clone())));
            }
            ("idx_ref", s)
        }
        _ => return None,
    })
}

/// SQL for one condition on the resource row aliased `a` of type `t` (a
/// bound parameter).
fn cond_sql(clause: &Clause, cond: &Cond, a: &str, t: &str, has: &HasScope, sql: &mut Sql) -> String {
    let param = clause.param;
    match cond {
        Cond::Id(id) => format!("{a}.id = {}", sql.bind(id.clone())),
        Cond::LastUpdated(p, range) => {
            date_sql(*p, &format!("{a}.last_updated"), &format!("({a}.last_updated + 1)"), range.low, range.high, sql)
        }
        Cond::Not(any_of) => {
            let ors: Vec<String> = any_of.iter().map(|c| cond_sql(clause, c, a, t, has, sql)).collect();
            format!("NOT ({})", ors.join(" OR "))
        }
        // A token's text is kept with the strings, under the token
        // parameter's name.
        Cond::StringContains(s) | Cond::TokenText(s) => {
            let pm = sql.bind(param);
            let escaped = s.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
            let v = sql.bind(format!("%{escaped}%"));
            format!(
                "{a}.id IN (SELECT id FROM idx_string WHERE rtype = {t} AND param = {pm} AND norm LIKE {v} ESCAPE '\\')"
            )
        }
        Cond::CodeQuantity { system, code, quantity } => {
            let pm = sql.bind(param);
            let Cond::Quantity { prefix, micros, half_width, system: us, code: uc } = quantity.as_ref() else {
                return "1 = 0".into();
            };
            let inner = quantity_sql(*prefix, *micros, *half_width, us, uc, sql);
            let cc = sql.bind(code.clone());
            let sys = match system {
                None => String::new(),
                Some(None) => " AND csys IS NULL".into(),
                Some(Some(s)) => format!(" AND csys = {}", sql.bind(s.clone())),
            };
            format!("{a}.id IN (SELECT id FROM idx_quantity WHERE rtype = {t} AND param = {pm} AND ccode = {cc}{sys} AND ({inner}))")
        }
        Cond::Quantity { prefix, micros, half_width, system, code } => {
            let pm = sql.bind(param);
            let inner = quantity_sql(*prefix, *micros, *half_width, system, code, sql);
            format!("{a}.id IN (SELECT id FROM idx_quantity WHERE rtype = {t} AND param = {pm} AND ({inner}))")
        }
        Cond::Chain { target, inner } => {
            // The reference points at a current resource of `target`
            // satisfying the inner condition.
            let pm = sql.bind(param);
            let tt = sql.bind(target.as_str().to_owned());
            let mut ors = Vec::new();
            for c in &inner.any_of {
                ors.push(cond_sql(inner, c, "x", &tt, has, sql));
            }
            format!(
                "{a}.id IN (SELECT id FROM idx_ref WHERE rtype = {t} AND param = {pm} AND target_type = {tt} AND target_id IN \
                 (SELECT x.id FROM resources x WHERE x.rtype = {tt} AND x.deleted = 0 AND ({})))",
                ors.join(" OR ")
            )
        }
        Cond::Has { source, param: refp, inner } => {
            // Some current resource of `source`, of those the caller may
            // look at, refers here and satisfies the inner condition.
            let st = sql.bind(source.as_str().to_owned());
            let pm = sql.bind(*refp);
            let mut ors = Vec::new();
            for c in &inner.any_of {
                ors.push(cond_sql(inner, c, "x", &st, has, sql));
            }
            // search_scoped refuses a query whose source has no scope.
            let scope =
                has.iter().find(|(t, _)| t == source).map(|(_, r)| r).unwrap_or(&Restriction::ReferenceDataOnly);
            let allowed = restriction_sql(scope, "x", sql);
            format!(
                "{a}.id IN (SELECT h.target_id FROM idx_ref h WHERE h.rtype = {st} AND h.param = {pm} AND h.target_type = {t} \
                 AND h.id IN (SELECT x.id FROM resources x WHERE x.rtype = {st} AND x.deleted = 0 AND ({}) AND {allowed}))",
                ors.join(" OR ")
            )
        }
        Cond::Missing { missing, kind } => {
            let table = match kind {
                ParamKind::Token => "idx_token",
                ParamKind::String => "idx_string",
                ParamKind::Date => "idx_date",
                ParamKind::Reference => "idx_ref",
                ParamKind::Quantity | ParamKind::Number | ParamKind::CodeQuantity => "idx_quantity",
            };
            let pm = sql.bind(param);
            let not = if *missing { "NOT " } else { "" };
            format!("{a}.id {not}IN (SELECT id FROM {table} WHERE rtype = {t} AND param = {pm})")
        }
        Cond::Token { .. } | Cond::StringStarts(_) | Cond::StringExact(_) | Cond::Date(..) | Cond::Reference { .. } => {
            match member(clause, cond, sql) {
                Some((table, rest)) => format!("{a}.id IN (SELECT id FROM {table} WHERE rtype = {t} AND {rest})"),
                None => "1 = 0".into(),
            }
        }
    }
}

/// Runs a search and returns one page. A query with `_has` needs
/// [`search_scoped`].
pub fn search(c: &mut dyn Conn, q: &SearchQuery, restriction: &Restriction) -> Result<Page> {
    search_scoped(c, q, restriction, &[])
}

/// Runs a search whose `_has` clauses look only at the referring
/// resources `has` allows for their type; a `_has` source type missing
/// from `has` is an error (never an unrestricted look).
pub fn search_scoped(c: &mut dyn Conn, q: &SearchQuery, restriction: &Restriction, has: &HasScope) -> Result<Page> {
    if let Some(t) = q.has_sources().into_iter().find(|t| !has.iter().any(|(h, _)| h == t)) {
        return Err(StoreError::Internal(format!("_has on {t} without a decision for {t}")));
    }
    if c.backend() == Backend::Sqlite {
        return run_search(c, q, restriction, has);
    }
    // PostgreSQL plans a cached statement once for any values after a few
    // runs (a generic plan). A search's best plan depends on its values
    // (how many resources a subject or a code has), and a generic one was
    // seen merging every Observation with one patient's list. So a search
    // is planned for its values each time; other statements keep their
    // cached plans. And a search whose plan looks costly (a page of a
    // broad condition) would be compiled to machine code first, which
    // took longer than running it. Both settings travel with the next
    // statement sent, so this costs no round trip.
    c.batch_later("SET plan_cache_mode = force_custom_plan; SET jit = off")?;
    let out = run_search(c, q, restriction, has);
    c.batch_later("RESET plan_cache_mode; RESET jit")?;
    out
}

fn run_search(c: &mut dyn Conn, q: &SearchQuery, restriction: &Restriction, has: &HasScope) -> Result<Page> {
    let broad = broad_clauses(c, q)?;
    let total = match q.total {
        Total::Accurate => Some(count(c, q, restriction, has, &broad, None)?),
        _ if q.summary_count => Some(count(c, q, restriction, has, &broad, None)?),
        // A broad clause may leave few matches after the others, but
        // counting them could read every resource of the type.
        Total::Bounded if broad.broad.contains(&true) => None,
        Total::Bounded => Some(count(c, q, restriction, has, &broad, Some(TOTAL_BOUND))?).filter(|n| *n <= TOTAL_BOUND),
        Total::None => None,
    };
    if q.summary_count || q.count == 0 {
        return Ok(Page { entries: Vec::new(), total, next: None, prev: None });
    }
    if let Sort::Params(keys) = q.sort {
        return search_sorted_by_params(c, q, restriction, has, &broad, total, keys);
    }
    let s = page_sql(q, restriction, has, &broad);
    let rows = c.query(&s.text, &s.params)?;
    let mut entries = Vec::with_capacity(rows.len());
    for r in &rows {
        entries.push(crate::records::version_row(r)?);
    }
    let backwards = q.before.is_some() && q.after.is_none();
    let more = entries.len() > q.count;
    entries.truncate(q.count);
    if backwards {
        entries.reverse();
    }
    let key = |v: &Version| Cursor { last_updated: v.last_updated.micros(), id: v.id.clone(), keys: Vec::new() };
    let (next, prev) = if backwards {
        (entries.last().map(key), if more { entries.first().map(key) } else { None })
    } else {
        (
            if more { entries.last().map(key) } else { None },
            if q.after.is_some() { entries.first().map(key) } else { None },
        )
    };
    Ok(Page { entries, total, next, prev })
}

/// The number of matches; with a bound, at most one more than it.
fn count(
    c: &mut dyn Conn,
    q: &SearchQuery,
    restriction: &Restriction,
    has: &HasScope,
    broad: &Shape,
    bound: Option<u64>,
) -> Result<u64> {
    let mut s = Sql::new(broad.sqlite);
    match bound {
        None => s.text.push_str("SELECT COUNT(*) FROM resources r"),
        Some(_) => s.text.push_str("SELECT COUNT(*) FROM (SELECT 1 FROM resources r"),
    }
    where_clause(q, restriction, has, broad, &mut s);
    if let Some(b) = bound {
        let lim = s.bind(i64::try_from(b.saturating_add(1)).unwrap_or(i64::MAX));
        s.text.push_str(&format!(" LIMIT {lim}) n"));
    }
    Ok(c.query_one(&s.text, &s.params)?.map(|r| r.u64(0)).transpose()?.unwrap_or(0))
}

/// The statement that fetches a page of a search (ordered by id or by last
/// update; a `_sort` by parameters runs another), with its parameters, as
/// [`search_scoped`] runs it: for `EXPLAIN` ([`crate::sql::explain`]).
pub fn page_statement(
    c: &mut dyn Conn,
    q: &SearchQuery,
    restriction: &Restriction,
    has: &HasScope,
) -> Result<(String, Vec<Val<'static>>)> {
    let broad = broad_clauses(c, q)?;
    let s = page_sql(q, restriction, has, &broad);
    Ok((s.text, s.params))
}

fn page_sql(q: &SearchQuery, restriction: &Restriction, has: &HasScope, broad: &Shape) -> Sql {
    let mut s = Sql::new(broad.sqlite);
    s.text = format!(
        "SELECT {} FROM resources r JOIN resource_versions v ON v.seq = r.seq",
        crate::records::VERSION_SELECT_COLUMNS
    );
    where_clause(q, restriction, has, broad, &mut s);
    // Paging backwards reverses comparison and order, then the page.
    let backwards = q.before.is_some() && q.after.is_none();
    let cursor = if backwards { q.before.as_ref() } else { q.after.as_ref() };
    let desc = matches!(q.sort, Sort::LastUpdatedDesc) != backwards;
    let (cmp, dir) = if desc { ("<", "DESC") } else { (">", "ASC") };
    if let Some(cur) = cursor {
        let id = s.bind(cur.id.clone());
        match q.sort {
            Sort::Id | Sort::Params(_) => s.text.push_str(&format!(" AND r.id {cmp} {id}")),
            Sort::LastUpdatedAsc | Sort::LastUpdatedDesc => {
                let t = s.bind(cur.last_updated);
                s.text.push_str(&format!(
                    " AND (r.last_updated {cmp} {t} OR (r.last_updated = {t} AND r.id {cmp} {id}))"
                ));
            }
        }
    }
    match q.sort {
        Sort::Id | Sort::Params(_) => s.text.push_str(&format!(" ORDER BY r.id {dir}")),
        Sort::LastUpdatedAsc | Sort::LastUpdatedDesc => {
            s.text.push_str(&format!(" ORDER BY r.last_updated {dir}, r.id {dir}"))
        }
    }
    let lim = s.bind(q.count + 1);
    s.text.push_str(&format!(" LIMIT {lim}"));
    s
}

/// A search ordered by parameters' values (forward paging only): per key,
/// each resource's lowest value ascending or highest descending, from the
/// search index; resources without one last on that key; ties by id.
fn search_sorted_by_params(
    c: &mut dyn Conn,
    q: &SearchQuery,
    restriction: &Restriction,
    has: &HasScope,
    broad: &Shape,
    total: Option<u64>,
    keys: SortKeys,
) -> Result<Page> {
    let keys: Vec<_> = keys.iter().collect();
    let mut s = Sql::new(broad.sqlite);
    let t = s.bind(q.rtype.as_str().to_owned());
    let mut joins = String::new();
    // The expression of each key, and whether it can be NULL.
    let mut exprs: Vec<(String, bool)> = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if k.name == "_lastUpdated" {
            exprs.push(("r.last_updated".into(), false));
            continue;
        }
        let (table, col) = match k.kind {
            ParamKind::Date if k.desc => ("idx_date", "high"),
            ParamKind::Date => ("idx_date", "low"),
            ParamKind::String => ("idx_string", "norm"),
            ParamKind::Quantity | ParamKind::Number | ParamKind::CodeQuantity => ("idx_quantity", "value"),
            ParamKind::Token | ParamKind::Reference => ("idx_token", "code"),
        };
        let agg = if k.desc { "MAX" } else { "MIN" };
        let pm = s.bind(k.name);
        joins.push_str(&format!(
            " LEFT JOIN (SELECT id, {agg}({col}) AS k FROM {table} WHERE rtype = {t} AND param = {pm} GROUP BY id) sk{i} ON sk{i}.id = r.id"
        ));
        exprs.push((format!("sk{i}.k"), true));
    }
    let cols: Vec<String> = exprs.iter().map(|(e, _)| e.clone()).collect();
    s.text = format!(
        "SELECT {}, {} FROM resources r JOIN resource_versions v ON v.seq = r.seq{joins}",
        crate::records::VERSION_SELECT_COLUMNS,
        cols.join(", ")
    );
    where_clause(q, restriction, has, broad, &mut s);
    if let Some(cur) = &q.after {
        // After the cursor in the order below: strictly after on the first
        // key, or equal on it and after on the rest; ties by id.
        let id = s.bind(cur.id.clone());
        let mut cond = format!("r.id > {id}");
        for (i, (e, nullable)) in exprs.iter().enumerate().rev() {
            let cmp = if keys[i].desc { "<" } else { ">" };
            let (after, equal) = match cur.keys.get(i) {
                Some(SortValue::Int(x)) => {
                    let b = s.bind(*x);
                    (
                        if *nullable { format!("({e} IS NULL OR {e} {cmp} {b})") } else { format!("{e} {cmp} {b}") },
                        format!("{e} = {b}"),
                    )
                }
                Some(SortValue::Text(x)) => {
                    let b = s.bind(x.clone());
                    (
                        if *nullable { format!("({e} IS NULL OR {e} {cmp} {b})") } else { format!("{e} {cmp} {b}") },
                        format!("{e} = {b}"),
                    )
                }
                // Nothing sorts after a missing value but other missing ones.
                Some(SortValue::Missing) | None => ("1 = 0".into(), format!("{e} IS NULL")),
            };
            cond = format!("({after} OR ({equal} AND {cond}))");
        }
        s.text.push_str(&format!(" AND {cond}"));
    }
    let order: Vec<String> = exprs
        .iter()
        .zip(&keys)
        .map(|((e, nullable), k)| {
            let dir = if k.desc { "DESC" } else { "ASC" };
            if *nullable {
                format!("({e} IS NULL), {e} {dir}")
            } else {
                format!("{e} {dir}")
            }
        })
        .collect();
    s.text.push_str(&format!(" ORDER BY {}, r.id ASC", order.join(", ")));
    let lim = s.bind(q.count + 1);
    s.text.push_str(&format!(" LIMIT {lim}"));
    let rows = c.query(&s.text, &s.params)?;
    let mut entries = Vec::with_capacity(rows.len());
    let mut last_keys = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        entries.push(crate::records::version_row(r)?);
        if i + 1 == q.count.min(rows.len()) {
            last_keys = keys
                .iter()
                .enumerate()
                .map(|(j, k)| {
                    Ok(match k.kind {
                        ParamKind::Date | ParamKind::Quantity | ParamKind::Number | ParamKind::CodeQuantity => {
                            r.opt_i64(10 + j)?.map_or(SortValue::Missing, SortValue::Int)
                        }
                        _ => r.opt_text(10 + j)?.map_or(SortValue::Missing, SortValue::Text),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
        }
    }
    let more = entries.len() > q.count;
    entries.truncate(q.count);
    let next =
        if more { entries.last().map(|v| Cursor { last_updated: 0, id: v.id.clone(), keys: last_keys }) } else { None };
    Ok(Page { entries, total, next, prev: None })
}

/// The resources a query's `_include` and `_revinclude` add to a page of
/// `entries`: current, not deleted, not already on the page, in the order
/// of the includes, at most `limit`. Returns them and whether the limit
/// left some out. Access is decided by the caller, per resource.
pub fn included(
    c: &mut dyn Conn,
    q: &SearchQuery,
    entries: &[Version],
    limit: usize,
    may_read: &mut dyn FnMut(&mut dyn Conn, &Version) -> Result<bool>,
) -> Result<(Vec<Version>, bool, usize)> {
    use std::collections::{BTreeMap, HashSet};
    if entries.is_empty() || (q.include.is_empty() && q.revinclude.is_empty()) {
        return Ok((Vec::new(), false, 0));
    }
    let mut seen: HashSet<(String, String)> = entries.iter().map(|v| (v.rtype.clone(), v.id.clone())).collect();
    let mut out: Vec<Version> = Vec::new();
    let mut withheld = 0usize;
    let iterating = q.include.iter().chain(&q.revinclude).any(|i| i.iterate);
    // The resources the specifications apply to: the matches first, then
    // (for `:iterate` ones) what the previous round added.
    let mut frontier: Vec<(String, String)> = entries.iter().map(|v| (v.rtype.clone(), v.id.clone())).collect();
    for round in 0..=mamori_core::fhir::search::MAX_ITERATE {
        let mut by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (t, id) in &frontier {
            by_type.entry(t.as_str()).or_default().push(id.as_str());
        }
        let mut found: Vec<(String, String)> = Vec::new();
        let mut add = |rows: Vec<crate::sql::Row>, found: &mut Vec<(String, String)>| -> Result<()> {
            for r in rows {
                let k = (r.text(0)?, r.text(1)?);
                if seen.insert(k.clone()) {
                    found.push(k);
                }
            }
            Ok(())
        };
        for inc in q.include.iter().filter(|i| round == 0 || i.iterate) {
            let Some(ids) = by_type.get(inc.source.as_str()) else { continue };
            let mut s = Sql::new(true); // no per-row check to fence
            let t = s.bind(inc.source.as_str().to_owned());
            let p = s.bind(inc.param.to_owned());
            let list: Vec<String> = ids.iter().map(|i| s.bind((*i).to_owned())).collect();
            s.text = format!(
                "SELECT DISTINCT target_type, target_id FROM idx_ref WHERE rtype = {t} AND param = {p} AND id IN ({})",
                list.join(", ")
            );
            if let Some(target) = inc.target {
                let tt = s.bind(target.as_str().to_owned());
                s.text.push_str(&format!(" AND target_type = {tt}"));
            }
            s.text.push_str(" ORDER BY target_type, target_id");
            add(c.query(&s.text, &s.params)?, &mut found)?;
        }
        for rev in q.revinclude.iter().filter(|i| round == 0 || i.iterate) {
            for (ty, ids) in &by_type {
                if rev.target.is_some_and(|t| t.as_str() != *ty) {
                    continue;
                }
                let mut s = Sql::new(true); // no per-row check to fence
                let t = s.bind(rev.source.as_str().to_owned());
                let p = s.bind(rev.param.to_owned());
                let tt = s.bind((*ty).to_owned());
                let list: Vec<String> = ids.iter().map(|i| s.bind((*i).to_owned())).collect();
                s.text = format!(
                    "SELECT DISTINCT rtype, id FROM idx_ref WHERE rtype = {t} AND param = {p} AND target_type = {tt} \
                     AND target_id IN ({}) ORDER BY rtype, id",
                    list.join(", ")
                );
                add(c.query(&s.text, &s.params)?, &mut found)?;
            }
        }
        // Each resource found is decided as a read of it before anything
        // else follows from it: a withheld one is never a step further.
        let mut next = Vec::new();
        for (t, id) in &found {
            let Some(v) = crate::records::read(c, t, id)?.filter(|v| !v.deleted) else { continue };
            if !may_read(c, &v)? {
                withheld += 1;
                continue;
            }
            if out.len() == limit {
                return Ok((out, true, withheld));
            }
            next.push((v.rtype.clone(), v.id.clone()));
            out.push(v);
        }
        if next.is_empty() || !iterating {
            break;
        }
        frontier = next;
    }
    Ok((out, false, withheld))
}
