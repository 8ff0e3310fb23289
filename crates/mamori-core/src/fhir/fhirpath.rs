//! A FHIRPath subset for profile invariants (`constraint.expression`).
//!
//! It covers what the invariants of JP Core and JP-CLINS use: paths
//! (choice elements by their stem, typed by their suffix), `$this`,
//! string, integer and boolean literals, `=`, `!=`, `<`, `>`, `<=`, `>=`,
//! `and`, `or`, `xor`, `implies`, `is`, `as`, and the functions `where`,
//! `select`, `all`, `exists`, `empty`, `count`, `first`, `tail`, `not`,
//! `ofType`, `is`, `as`, `indexOf`, `substring`, `contains`, `startsWith`,
//! `endsWith`, `matches`, `length` and FHIR's `extension(url)` (what
//! search parameters of packages use). An expression outside the subset
//! does not parse, and the validator names it as not evaluated: it is
//! never guessed.
//!
//! Semantics follow FHIRPath N1 (the version of FHIR R4): collections,
//! empty propagation, three-valued logic, `matches` finding the pattern
//! anywhere in the string.

use serde_json::Value;

/// A parsed expression.
#[derive(Debug, Clone)]
pub enum Expr {
    /// `$this`.
    This,
    /// A literal.
    Lit(Value),
    /// A member of each item of the focus (`name`), or of `base`.
    Member(Option<Box<Expr>>, String),
    /// A function on the focus, or on `base`.
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    /// A binary operator.
    Bin(String, Box<Expr>, Box<Expr>),
    /// `expr is Type` / `expr as Type`.
    Type(bool, Box<Expr>, String),
}

const FUNCTIONS: &[(&str, usize, usize)] = &[
    ("where", 1, 1),
    ("select", 1, 1),
    ("all", 1, 1),
    ("exists", 0, 1),
    ("empty", 0, 0),
    ("count", 0, 0),
    ("first", 0, 0),
    ("tail", 0, 0),
    ("not", 0, 0),
    ("ofType", 1, 1),
    ("is", 1, 1),
    ("as", 1, 1),
    ("indexOf", 1, 1),
    ("substring", 1, 2),
    ("contains", 1, 1),
    ("startsWith", 1, 1),
    ("endsWith", 1, 1),
    ("matches", 1, 1),
    ("length", 0, 0),
    ("extension", 1, 1),
];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    This,
    Str(String),
    Num(i64),
    Sym(&'static str),
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '\'' {
            let mut v = String::new();
            i += 1;
            loop {
                match c.get(i) {
                    None => return Err("unterminated string".into()),
                    Some('\'') => break,
                    Some('\\') => {
                        let e = c.get(i + 1).ok_or("unterminated escape")?;
                        match e {
                            'n' => v.push('\n'),
                            't' => v.push('\t'),
                            'r' => v.push('\r'),
                            // Quotes and backslashes are unescaped; other
                            // escapes are kept as written for the regular
                            // expressions (\^, \s, \-).
                            '\'' | '\\' | '"' | '`' | '/' => v.push(*e),
                            other => {
                                v.push('\\');
                                v.push(*other);
                            }
                        }
                        i += 2;
                        continue;
                    }
                    Some(x) => v.push(*x),
                }
                i += 1;
            }
            i += 1;
            out.push(Tok::Str(v));
        } else if ch.is_ascii_digit() {
            let st = i;
            while i < c.len() && c[i].is_ascii_digit() {
                i += 1;
            }
            let n: String = c[st..i].iter().collect();
            out.push(Tok::Num(n.parse().map_err(|_| "number too large")?));
        } else if ch.is_alphabetic() || ch == '_' || ch == '$' {
            let st = i;
            i += 1;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let w: String = c[st..i].iter().collect();
            out.push(match w.as_str() {
                "$this" => Tok::This,
                w if w.starts_with('$') => return Err(format!("{w} is not supported")),
                _ => Tok::Ident(w),
            });
        } else {
            let two: String = c[i..(i + 2).min(c.len())].iter().collect();
            let sym = ["!=", "<=", ">="].into_iter().find(|s| *s == two);
            match sym {
                Some(s) => {
                    out.push(Tok::Sym(s));
                    i += 2;
                }
                None => {
                    let s = [".", "(", ")", ",", "=", "<", ">", "|"]
                        .into_iter()
                        .find(|s| s.starts_with(ch))
                        .ok_or_else(|| format!("'{ch}' is not supported"))?;
                    out.push(Tok::Sym(s));
                    i += 1;
                }
            }
        }
    }
    Ok(out)
}

struct Parser {
    t: Vec<Tok>,
    i: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn word(&self) -> Option<&str> {
        match self.peek() {
            Some(Tok::Ident(w)) => Some(w),
            _ => None,
        }
    }
    fn sym(&mut self, s: &str) -> bool {
        if self.peek()
            == Some(&Tok::Sym(match s {
                "." => ".",
                "(" => "(",
                ")" => ")",
                "," => ",",
                _ => return false,
            }))
        {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, s: &str) -> Result<(), String> {
        if self.sym(s) {
            Ok(())
        } else {
            Err(format!("expected '{s}'"))
        }
    }

    /// implies < or/xor < and < equality < comparison < is/as < union < term.
    fn expr(&mut self, level: u8) -> Result<Expr, String> {
        if level == 7 {
            return self.postfix();
        }
        let mut left = self.expr(level + 1)?;
        loop {
            let op: String = match (level, self.peek()) {
                (0, Some(Tok::Ident(w))) if w == "implies" => w.clone(),
                (1, Some(Tok::Ident(w))) if w == "or" || w == "xor" => w.clone(),
                (2, Some(Tok::Ident(w))) if w == "and" => w.clone(),
                (3, Some(Tok::Sym(s))) if *s == "=" || *s == "!=" => (*s).to_owned(),
                (4, Some(Tok::Sym(s))) if matches!(*s, "<" | ">" | "<=" | ">=") => (*s).to_owned(),
                (5, Some(Tok::Ident(w))) if w == "is" || w == "as" => {
                    let is = w == "is";
                    self.i += 1;
                    let ty = self.word().ok_or("a type name after is/as")?.to_owned();
                    self.i += 1;
                    left = Expr::Type(is, Box::new(left), ty);
                    continue;
                }
                (6, Some(Tok::Sym("|"))) => "|".to_owned(),
                _ => return Ok(left),
            };
            self.i += 1;
            let right = self.expr(level + 1)?;
            left = Expr::Bin(op, Box::new(left), Box::new(right));
        }
    }

    fn postfix(&mut self) -> Result<Expr, String> {
        let mut e = self.term(None)?;
        while self.sym(".") {
            e = self.term(Some(e))?;
        }
        Ok(e)
    }

    fn term(&mut self, base: Option<Expr>) -> Result<Expr, String> {
        let base = base.map(Box::new);
        match self.peek().cloned() {
            Some(Tok::This) if base.is_none() => {
                self.i += 1;
                Ok(Expr::This)
            }
            Some(Tok::Str(s)) if base.is_none() => {
                self.i += 1;
                Ok(Expr::Lit(Value::String(s)))
            }
            Some(Tok::Num(n)) if base.is_none() => {
                self.i += 1;
                Ok(Expr::Lit(Value::from(n)))
            }
            Some(Tok::Sym("(")) if base.is_none() => {
                self.i += 1;
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Ident(w)) => {
                self.i += 1;
                if base.is_none() && (w == "true" || w == "false") {
                    return Ok(Expr::Lit(Value::Bool(w == "true")));
                }
                if !self.sym("(") {
                    return Ok(Expr::Member(base, w));
                }
                let &(_, lo, hi) = FUNCTIONS
                    .iter()
                    .find(|(n, _, _)| *n == w)
                    .ok_or_else(|| format!("function {w}() is not supported"))?;
                let mut args = Vec::new();
                if !self.sym(")") {
                    loop {
                        args.push(self.expr(0)?);
                        if self.sym(")") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                if args.len() < lo || args.len() > hi {
                    return Err(format!("{w}() takes {lo} to {hi} arguments"));
                }
                Ok(Expr::Call(base, w, args))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

/// Parses an expression of the subset.
pub fn parse(s: &str) -> Result<Expr, String> {
    let mut p = Parser { t: lex(s)?, i: 0 };
    let e = p.expr(0)?;
    if p.i != p.t.len() {
        return Err(format!("unexpected {:?}", p.t[p.i]));
    }
    Ok(e)
}

/// An item of a collection: its value and, when known, its FHIR type.
#[derive(Debug, Clone)]
struct Item {
    v: Value,
    ty: Option<String>,
}

type Coll = Vec<Item>;

const PRIMITIVES: &[&str] = &[
    "boolean",
    "integer",
    "string",
    "decimal",
    "uri",
    "url",
    "canonical",
    "base64Binary",
    "instant",
    "date",
    "dateTime",
    "time",
    "code",
    "oid",
    "id",
    "markdown",
    "unsignedInt",
    "positiveInt",
    "uuid",
];

fn item(v: &Value, ty: Option<String>) -> Item {
    let ty = ty.or_else(|| v.get("resourceType").and_then(Value::as_str).map(str::to_owned));
    Item { v: v.clone(), ty }
}

fn push_all(out: &mut Coll, v: &Value, ty: Option<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| out.push(item(x, ty.clone()))),
        Value::Null => {}
        x => out.push(item(x, ty)),
    }
}

fn member(focus: &Coll, name: &str) -> Coll {
    let mut out = Vec::new();
    for it in focus {
        let Some(o) = it.v.as_object() else { continue };
        // `Patient.name` at the root names the type first.
        if o.get("resourceType").and_then(Value::as_str) == Some(name) && !o.contains_key(name) {
            out.push(it.clone());
            continue;
        }
        if let Some(v) = o.get(name) {
            push_all(&mut out, v, None);
            continue;
        }
        // A choice element by its stem, typed by its suffix.
        for (k, v) in o {
            if let Some(suffix) = k.strip_prefix(name).filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase())) {
                let mut lower = suffix.to_owned();
                lower[..1].make_ascii_lowercase();
                let ty = if PRIMITIVES.contains(&lower.as_str()) { lower } else { suffix.to_owned() };
                push_all(&mut out, v, Some(ty));
            }
        }
    }
    out
}

/// A collection as a boolean: `None` when empty.
fn truth(c: &Coll) -> Result<Option<bool>, String> {
    match c.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.v.as_bool().unwrap_or(true))),
        _ => Err("a boolean was expected, found several items".into()),
    }
}

fn boolean(b: Option<bool>) -> Coll {
    b.map(|b| vec![item(&Value::Bool(b), Some("boolean".into()))]).unwrap_or_default()
}

fn single_str(c: &Coll) -> Result<Option<String>, String> {
    match c.as_slice() {
        [] => Ok(None),
        [one] => Ok(one.v.as_str().map(str::to_owned)),
        _ => Err("a string was expected, found several items".into()),
    }
}

fn single_int(c: &Coll) -> Result<Option<i64>, String> {
    match c.as_slice() {
        [] => Ok(None),
        [one] => one.v.as_i64().map(Some).ok_or_else(|| "an integer was expected".into()),
        _ => Err("an integer was expected, found several items".into()),
    }
}

fn same(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn type_is(it: &Item, ty: &str) -> bool {
    it.ty.as_deref() == Some(ty)
        || (it.ty.is_none()
            && match ty {
                "string" | "code" | "uri" | "id" => it.v.is_string(),
                "boolean" => it.v.is_boolean(),
                "integer" => it.v.is_i64(),
                _ => false,
            })
}

fn eval(e: &Expr, focus: &Coll, this: &Coll) -> Result<Coll, String> {
    Ok(match e {
        Expr::This => this.clone(),
        Expr::Lit(v) => vec![item(v, None)],
        Expr::Member(base, name) => {
            let b = match base {
                Some(b) => eval(b, focus, this)?,
                None => focus.clone(),
            };
            member(&b, name)
        }
        Expr::Type(is, base, ty) => {
            let b = eval(base, focus, this)?;
            if *is {
                match b.as_slice() {
                    [] => vec![],
                    [one] => boolean(Some(type_is(one, ty))),
                    _ => return Err("'is' needs one item".into()),
                }
            } else {
                b.into_iter().filter(|i| type_is(i, ty)).collect()
            }
        }
        Expr::Bin(op, l, r) => {
            let a = eval(l, focus, this)?;
            let b = eval(r, focus, this)?;
            match op.as_str() {
                "|" => {
                    let mut out = a;
                    for x in b {
                        if !out.iter().any(|y| y.v == x.v) {
                            out.push(x);
                        }
                    }
                    out
                }
                "=" | "!=" => {
                    if a.is_empty() || b.is_empty() {
                        return Ok(vec![]);
                    }
                    let eq = a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| same(&x.v, &y.v));
                    boolean(Some(eq == (op == "=")))
                }
                "<" | ">" | "<=" | ">=" => {
                    let (x, y) = match (a.as_slice(), b.as_slice()) {
                        ([x], [y]) => (x, y),
                        ([], _) | (_, []) => return Ok(vec![]),
                        _ => return Err("a comparison needs one item on each side".into()),
                    };
                    let ord = match (x.v.as_f64(), y.v.as_f64(), x.v.as_str(), y.v.as_str()) {
                        (Some(p), Some(q), _, _) => p.partial_cmp(&q),
                        (_, _, Some(p), Some(q)) => Some(p.cmp(q)),
                        _ => return Err("values that cannot be compared".into()),
                    }
                    .ok_or("values that cannot be compared")?;
                    use std::cmp::Ordering::*;
                    boolean(Some(match op.as_str() {
                        "<" => ord == Less,
                        ">" => ord == Greater,
                        "<=" => ord != Greater,
                        _ => ord != Less,
                    }))
                }
                _ => {
                    let (p, q) = (truth(&a)?, truth(&b)?);
                    boolean(match op.as_str() {
                        "and" => match (p, q) {
                            (Some(false), _) | (_, Some(false)) => Some(false),
                            (Some(true), Some(true)) => Some(true),
                            _ => None,
                        },
                        "or" => match (p, q) {
                            (Some(true), _) | (_, Some(true)) => Some(true),
                            (Some(false), Some(false)) => Some(false),
                            _ => None,
                        },
                        "xor" => match (p, q) {
                            (Some(x), Some(y)) => Some(x != y),
                            _ => None,
                        },
                        _ => match (p, q) {
                            (Some(false), _) => Some(true),
                            (Some(true), q) => q,
                            (None, Some(true)) => Some(true),
                            (None, _) => None,
                        },
                    })
                }
            }
        }
        Expr::Call(base, name, args) => {
            let input = match base {
                Some(b) => eval(b, focus, this)?,
                None => focus.clone(),
            };
            call(name, input, args, focus, this)?
        }
    })
}

fn type_arg(args: &[Expr]) -> Result<&str, String> {
    match args.first() {
        Some(Expr::Member(None, t)) => Ok(t),
        _ => Err("a type name was expected".into()),
    }
}

fn call(name: &str, input: Coll, args: &[Expr], focus: &Coll, this: &Coll) -> Result<Coll, String> {
    // An argument evaluated against the expression's focus (a literal or a
    // path from the context), not against each item.
    let arg = |i: usize| -> Result<Coll, String> { eval(&args[i], focus, this) };
    let per_item = |it: &Item, e: &Expr| -> Result<Coll, String> {
        let one = vec![it.clone()];
        eval(e, &one, &one)
    };
    Ok(match name {
        "where" => {
            let mut out = Vec::new();
            for it in input {
                if truth(&per_item(&it, &args[0])?)? == Some(true) {
                    out.push(it);
                }
            }
            out
        }
        "select" => {
            let mut out = Vec::new();
            for it in &input {
                out.extend(per_item(it, &args[0])?);
            }
            out
        }
        "all" => {
            for it in &input {
                if truth(&per_item(it, &args[0])?)? != Some(true) {
                    return Ok(boolean(Some(false)));
                }
            }
            boolean(Some(true))
        }
        "exists" => match args.first() {
            None => boolean(Some(!input.is_empty())),
            Some(e) => {
                for it in &input {
                    if truth(&per_item(it, e)?)? == Some(true) {
                        return Ok(boolean(Some(true)));
                    }
                }
                boolean(Some(false))
            }
        },
        "empty" => boolean(Some(input.is_empty())),
        "count" => vec![item(&Value::from(input.len() as u64), Some("integer".into()))],
        "first" => input.into_iter().take(1).collect(),
        "tail" => input.into_iter().skip(1).collect(),
        "not" => boolean(truth(&input)?.map(|b| !b)),
        "ofType" => {
            let t = type_arg(args)?;
            input.into_iter().filter(|i| type_is(i, t)).collect()
        }
        "is" => {
            let t = type_arg(args)?;
            match input.as_slice() {
                [] => vec![],
                [one] => boolean(Some(type_is(one, t))),
                _ => return Err("is() needs one item".into()),
            }
        }
        "as" => {
            let t = type_arg(args)?;
            input.into_iter().filter(|i| type_is(i, t)).collect()
        }
        "extension" => {
            // The extensions of each item with that url (FHIR's addition
            // to FHIRPath: `extension(url)` is `extension.where(url = url)`).
            let Some(url) = single_str(&arg(0)?)? else { return Ok(vec![]) };
            let exts = member(&input, "extension");
            exts.into_iter().filter(|e| e.v.get("url").and_then(Value::as_str) == Some(url.as_str())).collect()
        }
        _ => {
            // String functions: on a single string; empty in, empty out.
            let Some(s) = single_str(&input)? else { return Ok(vec![]) };
            let chars: Vec<char> = s.chars().collect();
            let text = |i: usize| -> Result<Option<String>, String> { single_str(&arg(i)?) };
            match name {
                "length" => vec![item(&Value::from(chars.len() as u64), Some("integer".into()))],
                "indexOf" => match text(0)? {
                    None => vec![],
                    Some(sub) => {
                        let at = s.find(&sub).map_or(-1, |b| s[..b].chars().count() as i64);
                        vec![item(&Value::from(at), Some("integer".into()))]
                    }
                },
                "substring" => {
                    let Some(start) = single_int(&arg(0)?)? else { return Ok(vec![]) };
                    if start < 0 || start as usize >= chars.len() {
                        return Ok(vec![]);
                    }
                    let len = if args.len() > 1 { single_int(&arg(1)?)? } else { None };
                    let end = match len {
                        Some(l) => (start + l.max(0)).min(chars.len() as i64),
                        None => chars.len() as i64,
                    };
                    let out: String = chars[start as usize..end as usize].iter().collect();
                    vec![item(&Value::String(out), Some("string".into()))]
                }
                "contains" | "startsWith" | "endsWith" => match text(0)? {
                    None => vec![],
                    Some(sub) => boolean(Some(match name {
                        "contains" => s.contains(&sub),
                        "startsWith" => s.starts_with(&sub),
                        _ => s.ends_with(&sub),
                    })),
                },
                "matches" => match text(0)? {
                    None => vec![],
                    Some(re) => boolean(Some(matches(&re, &s)?)),
                },
                other => return Err(format!("function {other}() is not supported")),
            }
        }
    })
}

/// `s` matches `re` somewhere; compiled patterns are kept per thread (a
/// profile's few patterns are used for every resource validated).
fn matches(re: &str, s: &str) -> Result<bool, String> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<String, regex::Regex>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(r) = c.get(re) {
            return Ok(r.is_match(s));
        }
        let r =
            regex::RegexBuilder::new(re).size_limit(1 << 20).build().map_err(|e| format!("regular expression: {e}"))?;
        let m = r.is_match(s);
        if c.len() < 256 {
            c.insert(re.to_owned(), r);
        }
        Ok(m)
    })
}

/// Evaluates an invariant on its context value: `Ok(Some(true))` holds,
/// `Ok(Some(false))` fails, `Ok(None)` is empty (treated as holding, as
/// validators do), `Err` when the data falls outside what the subset
/// evaluates.
pub fn holds(e: &Expr, context: &Value) -> Result<Option<bool>, String> {
    let focus = vec![item(context, None)];
    truth(&eval(e, &focus, &focus)?)
}

/// Evaluates an expression on a resource: the values it selects, each
/// with its FHIR type when the path tells it (a choice element's
/// suffix, `valuePeriod` → `Period`), as a search parameter's
/// expression is evaluated to find the values to index.
pub fn evaluate(e: &Expr, context: &Value) -> Result<Vec<(Value, Option<String>)>, String> {
    let focus = vec![item(context, None)];
    Ok(eval(e, &focus, &focus)?.into_iter().map(|i| (i.v, i.ty)).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn t(expr: &str, v: &Value) -> Option<bool> {
        holds(&parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}")), v).unwrap()
    }

    #[test]
    fn paths_where_and_counts() {
        let p = json!({"resourceType": "Patient", "identifier": [
            {"system": "http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID", "value": "00012345:あいう:387476:01"},
            {"system": "urn:oid:1.2.392.100495.20.3.51.11319900001", "value": "1"}]});
        let ins = "identifier.where(system = 'http://jpfhir.jp/fhir/clins/Idsystem/JP_Insurance_memberID')";
        assert_eq!(t(&format!("({ins}.count()=1)"), &p), Some(true));
        assert_eq!(
            t(&format!(r"{ins}.value.matches('^[0-9]{{8}}:[^:^\\s^　]*:[^:^\\s^　]*:(.{{0}}|[0-9][0-9])$')"), &p),
            Some(true)
        );
        let local = "identifier.where(system.substring(0,31) = 'urn:oid:1.2.392.100495.20.3.51.')";
        assert_eq!(
            t(&format!("({local}.count()=1 and ({local}).system.substring(31,1) = '1' and ({local}).system.substring(32).matches('^[0-4][0-9][1-3][0-9]{{7}}$')) or ({local}.empty())"), &p),
            Some(true)
        );
        assert_eq!(t("Patient.identifier.count() > 1", &p), Some(true));
        assert_eq!(t("name.exists()", &p), Some(false));
        assert_eq!(t("name.exists().not()", &p), Some(true));
    }

    #[test]
    fn choices_types_and_logic() {
        let c = json!({"resourceType": "Condition", "onsetDateTime": "2020-01-01",
                       "extension": [{"url": "u", "valueIdentifier": {"value": "1319900001"}}]});
        assert_eq!(t("onset.ofType(dateTime).exists()", &c), Some(true));
        assert_eq!(t("onset.ofType(Age).exists()", &c), Some(false));
        assert_eq!(
            t("extension.where(url='u').value.ofType(Identifier).value.matches('^[0-4][0-9][1-3][0-9]{7}$')", &c),
            Some(true)
        );
        assert_eq!(t("abatement.exists() implies false", &c), Some(true));
        assert_eq!(t("true xor false", &c), Some(true));
        assert_eq!(t("missing = 'x'", &c), None, "empty propagates");
        assert_eq!(t("missing = 'x' or true", &c), Some(true));
        let b = json!({"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "Patient"}},
            {"resource": {"resourceType": "Condition", "extension": [{"url": "d"}]}},
            {"resource": {"resourceType": "Condition"}}]});
        assert_eq!(t("entry.first().resource.is(Patient)", &b), Some(true));
        assert_eq!(t("entry.select(resource as Condition).all(extension.where(url='d').exists())", &b), Some(false));
        assert_eq!(t("entry.tail().resource.ofType(Condition).count() = 2", &b), Some(true));
        let prof = json!({"meta": {"profile": ["http://x/A|1", "http://x/A"]}});
        assert_eq!(
            t("meta.profile.where($this.indexOf('|')>0 and ($this.indexOf('|')>0 implies ($this.substring(0,$this.indexOf('|'))='http://x/A'))).exists()", &prof),
            Some(true)
        );
        assert_eq!(t("meta.profile.where($this!='http://x/A').exists()", &prof), Some(true));
    }

    #[test]
    fn search_parameter_expressions_select_values() {
        let rep = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation";
        let p = json!({"resourceType": "Patient", "name": [
            {"extension": [{"url": rep, "valueCode": "IDE"}], "use": "usual", "text": "山田 太郎"},
            {"extension": [{"url": rep, "valueCode": "SYL"}], "use": "usual", "text": "ヤマダ タロウ"},
            {"extension": [{"url": rep, "valueCode": "SYL"}], "use": "old", "text": "サトウ タロウ"}]});
        let kana = format!("Patient.name.where(extension('{rep}').value.as(code)='SYL' and use='usual').text");
        let got = evaluate(&parse(&kana).unwrap(), &p).unwrap();
        assert_eq!(got.iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(), vec![json!("ヤマダ タロウ")]);
        let m = json!({"resourceType": "MedicationRequest", "dosageInstruction": [
            {"extension": [{"url": "u", "valuePeriod": {"start": "2024-01-02"}}]},
            {"extension": [{"url": "v", "valuePeriod": {"start": "2024-05-05"}}]}]});
        let got =
            evaluate(&parse("MedicationRequest.dosageInstruction.extension('u').value.as(Period).start").unwrap(), &m);
        assert_eq!(got.unwrap().iter().map(|(v, _)| v.clone()).collect::<Vec<_>>(), vec![json!("2024-01-02")]);
        // A Coding is not a code: `as(code)` selects nothing from it.
        let o = json!({"resourceType": "Organization", "extension": [{"url": "u", "valueCoding": {"code": "13"}}]});
        assert!(evaluate(&parse("Organization.extension.where(url='u').value.as(code)").unwrap(), &o)
            .unwrap()
            .is_empty());
        let got = evaluate(&parse("Organization.extension('u').value.ofType(Coding)").unwrap(), &o).unwrap();
        assert_eq!(got, vec![(json!({"code": "13"}), Some("Coding".to_owned()))]);
        // Another type's path selects nothing.
        assert!(evaluate(&parse("Practitioner.name").unwrap(), &p).unwrap().is_empty());
    }

    #[test]
    fn outside_the_subset_is_refused_not_guessed() {
        for e in ["%resource.id", "children()", "descendants().exists()", "iif(a, b, c)", "a.b(", "'open", "a ~ b"] {
            assert!(parse(e).is_err(), "{e}");
        }
        // Data the subset cannot take (several items where one is needed).
        let v = json!({"a": ["x", "y"]});
        assert!(holds(&parse("a.substring(0,1) = 'x'").unwrap(), &v).is_err());
    }
}
