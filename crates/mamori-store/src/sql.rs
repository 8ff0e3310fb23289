//! A small SQL abstraction so that the store's logic is written once for
//! SQLite and PostgreSQL: positional `$1..$n` parameters, four value kinds,
//! rows as vectors. Each backend implements [`Conn`].
//!
//! This module must never build SQL from values: values are always bound.

use std::borrow::Cow;

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer (also booleans, as 0 or 1).
    Int(i64),
    /// Text.
    Text(Cow<'a, str>),
    /// Bytes.
    Blob(Cow<'a, [u8]>),
}

impl From<i64> for Val<'_> {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<u64> for Val<'_> {
    fn from(v: u64) -> Self {
        Val::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<u16> for Val<'_> {
    fn from(v: u16) -> Self {
        Val::Int(i64::from(v))
    }
}
impl From<usize> for Val<'_> {
    fn from(v: usize) -> Self {
        Val::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for Val<'_> {
    fn from(v: bool) -> Self {
        Val::Int(i64::from(v))
    }
}
impl<'a> From<&'a str> for Val<'a> {
    fn from(v: &'a str) -> Self {
        Val::Text(Cow::Borrowed(v))
    }
}
impl<'a> From<&'a String> for Val<'a> {
    fn from(v: &'a String) -> Self {
        Val::Text(Cow::Borrowed(v.as_str()))
    }
}
impl From<String> for Val<'_> {
    fn from(v: String) -> Self {
        Val::Text(Cow::Owned(v))
    }
}
impl<'a> From<&'a [u8]> for Val<'a> {
    fn from(v: &'a [u8]) -> Self {
        Val::Blob(Cow::Borrowed(v))
    }
}
impl From<Vec<u8>> for Val<'_> {
    fn from(v: Vec<u8>) -> Self {
        Val::Blob(Cow::Owned(v))
    }
}
impl<'a, T: Into<Val<'a>>> From<Option<T>> for Val<'a> {
    fn from(v: Option<T>) -> Self {
        v.map_or(Val::Null, Into::into)
    }
}

/// Builds a `&[Val]` from heterogeneous values.
#[macro_export]
macro_rules! p {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Val::from($v)),*][..] };
}

/// A column value of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL `NULL`.
    Null,
    /// An integer (booleans are 0 or 1).
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// A borrowed column value, for streaming large results.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CellRef<'a> {
    /// SQL `NULL`.
    Null,
    /// An integer.
    Int(i64),
    /// Text.
    Text(&'a str),
    /// Bytes.
    Blob(&'a [u8]),
}

impl<'a> CellRef<'a> {
    /// The integer; an error for any other kind.
    pub fn i64(&self) -> Result<i64, DbError> {
        match self {
            CellRef::Int(v) => Ok(*v),
            other => Err(DbError::Decode(format!("expected integer, got {other:?}"))),
        }
    }
    /// The bytes of a blob or of text; `None` for `NULL` or an integer.
    pub fn bytes(&self) -> Option<&'a [u8]> {
        match self {
            CellRef::Blob(b) => Some(b),
            CellRef::Text(t) => Some(t.as_bytes()),
            _ => None,
        }
    }
    /// The text; `None` for any other kind.
    pub fn text(&self) -> Option<&'a str> {
        match self {
            CellRef::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// One result row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row(pub Vec<Cell>);

impl Row {
    fn cell(&self, i: usize) -> Result<&Cell, DbError> {
        self.0.get(i).ok_or_else(|| DbError::Decode(format!("no column {i}")))
    }
    /// Column `i` as an integer (text is parsed).
    pub fn i64(&self, i: usize) -> Result<i64, DbError> {
        match self.cell(i)? {
            Cell::Int(v) => Ok(*v),
            Cell::Text(s) => s.parse().map_err(|_| DbError::Decode(format!("column {i}: not an integer"))),
            other => Err(DbError::Decode(format!("column {i}: expected integer, got {other:?}"))),
        }
    }
    /// Column `i` as an integer, `None` if `NULL`.
    pub fn opt_i64(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            _ => self.i64(i).map(Some),
        }
    }
    /// Column `i` as a non-negative integer.
    pub fn u64(&self, i: usize) -> Result<u64, DbError> {
        u64::try_from(self.i64(i)?).map_err(|_| DbError::Decode(format!("column {i}: negative")))
    }
    /// Column `i` as a boolean (non-zero is true).
    pub fn bool(&self, i: usize) -> Result<bool, DbError> {
        Ok(self.i64(i)? != 0)
    }
    /// Column `i` as text (blobs must be UTF-8; integers are formatted); an
    /// error if `NULL`.
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.cell(i)? {
            Cell::Text(s) => Ok(s.clone()),
            Cell::Blob(b) => {
                String::from_utf8(b.clone()).map_err(|_| DbError::Decode(format!("column {i}: not UTF-8")))
            }
            Cell::Int(v) => Ok(v.to_string()),
            Cell::Null => Err(DbError::Decode(format!("column {i}: unexpected NULL"))),
        }
    }
    /// Column `i` as text, `None` if `NULL`.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    /// Column `i` as bytes (text gives its UTF-8 bytes).
    pub fn blob(&self, i: usize) -> Result<Vec<u8>, DbError> {
        match self.cell(i)? {
            Cell::Blob(b) => Ok(b.clone()),
            Cell::Text(s) => Ok(s.as_bytes().to_vec()),
            other => Err(DbError::Decode(format!("column {i}: expected blob, got {other:?}"))),
        }
    }
    /// Column `i` as bytes, `None` if `NULL`.
    pub fn opt_blob(&self, i: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.cell(i)? {
            Cell::Null => Ok(None),
            _ => self.blob(i).map(Some),
        }
    }
    /// Column `i` as a 32-byte hash.
    pub fn hash32(&self, i: usize) -> Result<[u8; 32], DbError> {
        self.blob(i)?.try_into().map_err(|_| DbError::Decode(format!("column {i}: not a 32-byte hash")))
    }
}

/// A database failure, the same for both backends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A UNIQUE/PRIMARY KEY constraint was violated.
    #[error("constraint violated: {0}")]
    Unique(String),
    /// The database is locked or busy beyond the timeout.
    #[error("database busy: {0}")]
    Busy(String),
    /// Any other failure of the database or the connection.
    #[error("database error: {0}")]
    Other(String),
    /// A value of the wrong kind, or a missing column.
    #[error("cannot decode value: {0}")]
    Decode(String),
}

/// Which database a connection is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: the embedded default.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// A database connection (or transaction) the store's logic runs on.
pub trait Conn {
    /// Which database this connection is to (for the few statements that
    /// differ).
    fn backend(&self) -> Backend;
    /// Executes a statement; returns the number of rows changed.
    fn exec(&mut self, sql: &str, params: &[Val<'_>]) -> Result<usize, DbError>;
    /// Runs a query; returns all its rows.
    fn query(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError>;
    /// Executes several statements without parameters (DDL, BEGIN, ...).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;

    /// Streams a query's rows to `f` with borrowed cells, without collecting
    /// them; `f` returns false to stop early.
    fn for_each(
        &mut self,
        sql: &str,
        params: &[Val<'_>],
        f: &mut dyn FnMut(&[CellRef<'_>]) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        for r in self.query(sql, params)? {
            let cells: Vec<CellRef<'_>> =
                r.0.iter()
                    .map(|c| match c {
                        Cell::Null => CellRef::Null,
                        Cell::Int(v) => CellRef::Int(*v),
                        Cell::Text(s) => CellRef::Text(s),
                        Cell::Blob(b) => CellRef::Blob(b),
                    })
                    .collect();
            if !f(&cells)? {
                break;
            }
        }
        Ok(())
    }

    /// Runs a query; returns its first row, if any.
    fn query_one(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Executes a statement whose outcome the caller does not look at
    /// until the next [`Conn::sync`]: PostgreSQL sends it with the next
    /// statement that needs an answer, so that a write job's statements
    /// cost a few round trips instead of one each. An error surfaces at
    /// the latest at the next `sync` (or the next statement). SQLite runs
    /// it at once.
    fn exec_later(&mut self, sql: &str, params: &[Val<'_>]) -> Result<(), DbError> {
        self.exec(sql, params).map(|_| ())
    }
    /// As [`Conn::exec_later`], for statements without parameters
    /// (`SAVEPOINT`, `RELEASE`).
    fn batch_later(&mut self, sql: &str) -> Result<(), DbError> {
        self.batch(sql)
    }
    /// Sends what [`Conn::exec_later`] and [`Conn::batch_later`] held back
    /// and waits for it; returns the first error among them.
    fn sync(&mut self) -> Result<(), DbError> {
        Ok(())
    }
}

/// The database's plan for a statement, a line per step: SQLite's
/// `EXPLAIN QUERY PLAN` details, PostgreSQL's `EXPLAIN` lines. For the
/// scale benchmark and for an operator asking why a query is slow.
pub fn explain(c: &mut dyn Conn, sql: &str, params: &[Val<'_>]) -> Result<Vec<String>, DbError> {
    match c.backend() {
        Backend::Sqlite => {
            let rows = c.query(&format!("EXPLAIN QUERY PLAN {sql}"), params)?;
            // Indented by depth, as the sqlite3 shell shows it.
            let mut depth: Vec<(i64, usize)> = Vec::new();
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let (id, parent) = (r.i64(0)?, r.i64(1)?);
                let d = depth.iter().find(|(i, _)| *i == parent).map_or(0, |(_, d)| d + 1);
                depth.push((id, d));
                out.push(format!("{}{}", "  ".repeat(d), r.text(3)?));
            }
            Ok(out)
        }
        Backend::Postgres => {
            let rows = c.query(&format!("EXPLAIN {sql}"), params)?;
            rows.iter().map(|r| r.text(0)).collect()
        }
    }
}

/// Inserts rows of `ncols` values each with multi-row statements of a few
/// fixed sizes (each prepared once per connection): far fewer statements,
/// which on PostgreSQL means far fewer round trips. `insert` is the
/// statement up to `VALUES` (exclusive); `tail` follows the values (e.g.
/// `ON CONFLICT DO NOTHING`).
pub fn insert_rows(
    c: &mut dyn Conn,
    insert: &str,
    tail: &str,
    ncols: usize,
    rows: Vec<Vec<Val<'_>>>,
) -> Result<(), DbError> {
    insert_rows_with(c, insert, tail, ncols, rows, false)
}

/// As [`insert_rows`], with [`Conn::exec_later`]: the caller checks for
/// errors at its next [`Conn::sync`].
pub fn insert_rows_later(
    c: &mut dyn Conn,
    insert: &str,
    tail: &str,
    ncols: usize,
    rows: Vec<Vec<Val<'_>>>,
) -> Result<(), DbError> {
    insert_rows_with(c, insert, tail, ncols, rows, true)
}

fn insert_rows_with(
    c: &mut dyn Conn,
    insert: &str,
    tail: &str,
    ncols: usize,
    rows: Vec<Vec<Val<'_>>>,
    later: bool,
) -> Result<(), DbError> {
    if rows.iter().any(|r| r.len() != ncols) {
        return Err(DbError::Other("insert_rows: a row of the wrong width".into()));
    }
    let mut rest = rows;
    for size in [64usize, 16, 4, 1] {
        while rest.len() >= size {
            let chunk: Vec<Vec<Val<'_>>> = rest.drain(..size).collect();
            let values: Vec<String> = (0..size)
                .map(|r| {
                    let marks: Vec<String> = (0..ncols).map(|k| format!("${}", r * ncols + k + 1)).collect();
                    format!("({})", marks.join(", "))
                })
                .collect();
            let sql = format!("{insert} VALUES {} {tail}", values.join(", "));
            let params: Vec<Val<'_>> = chunk.into_iter().flatten().collect();
            if later {
                c.exec_later(&sql, &params)?;
            } else {
                c.exec(&sql, &params)?;
            }
        }
    }
    Ok(())
}

// ---- SQLite ------------------------------------------------------------------

thread_local! {
    /// Rewritten statements, per thread (each connection is used by one
    /// thread at a time); bounded.
    static REWRITTEN: std::cell::RefCell<std::collections::HashMap<String, std::rc::Rc<str>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// `$N` placeholders as SQLite's `?N`, cached.
fn sqlite_sql_cached(sql: &str) -> std::rc::Rc<str> {
    REWRITTEN.with(|c| {
        if let Some(s) = c.borrow().get(sql) {
            return s.clone();
        }
        let s: std::rc::Rc<str> = std::rc::Rc::from(sqlite_sql(sql).as_ref());
        let mut m = c.borrow_mut();
        if m.len() >= 1024 {
            m.clear();
        }
        m.insert(sql.to_owned(), s.clone());
        s
    })
}

/// Rewrites `$N` placeholders to SQLite's `?N`.
fn sqlite_sql(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_str = !in_str;
        }
        if c == '$' && !in_str && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn sqlite_err(e: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode;
    match &e {
        rusqlite::Error::SqliteFailure(f, msg) => match f.code {
            ErrorCode::ConstraintViolation => DbError::Unique(msg.clone().unwrap_or_default()),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DbError::Busy(e.to_string()),
            _ => DbError::Other(e.to_string()),
        },
        _ => DbError::Other(e.to_string()),
    }
}

impl rusqlite::ToSql for Val<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Null => ValueRef::Null,
            Val::Int(i) => ValueRef::Integer(*i),
            Val::Text(s) => ValueRef::Text(s.as_bytes()),
            Val::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl Conn for rusqlite::Connection {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
    fn exec(&mut self, sql: &str, params: &[Val<'_>]) -> Result<usize, DbError> {
        let mut st = self.prepare_cached(&sqlite_sql_cached(sql)).map_err(sqlite_err)?;
        st.execute(rusqlite::params_from_iter(params.iter())).map_err(sqlite_err)
    }
    fn query(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError> {
        let mut st = self.prepare_cached(&sqlite_sql_cached(sql)).map_err(sqlite_err)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter())).map_err(sqlite_err)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(sqlite_err)? {
            let mut cells = Vec::with_capacity(n);
            for i in 0..n {
                use rusqlite::types::ValueRef;
                cells.push(match r.get_ref(i).map_err(sqlite_err)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(v) => Cell::Int(v),
                    ValueRef::Real(f) => Cell::Int(f as i64),
                    ValueRef::Text(t) => Cell::Text(String::from_utf8_lossy(t).into_owned()),
                    ValueRef::Blob(b) => Cell::Blob(b.to_vec()),
                });
            }
            out.push(Row(cells));
        }
        Ok(out)
    }
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.execute_batch(sql).map_err(sqlite_err)
    }
    fn for_each(
        &mut self,
        sql: &str,
        params: &[Val<'_>],
        f: &mut dyn FnMut(&[CellRef<'_>]) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        use rusqlite::types::ValueRef;
        let mut st = self.prepare_cached(&sqlite_sql_cached(sql)).map_err(sqlite_err)?;
        let n = st.column_count();
        let mut rows = st.query(rusqlite::params_from_iter(params.iter())).map_err(sqlite_err)?;
        if n > 16 {
            return Err(DbError::Other("for_each supports at most 16 columns".into()));
        }
        while let Some(r) = rows.next().map_err(sqlite_err)? {
            let mut cells = [CellRef::Null; 16];
            for (i, cell) in cells.iter_mut().enumerate().take(n) {
                *cell = match r.get_ref(i).map_err(sqlite_err)? {
                    ValueRef::Null => CellRef::Null,
                    ValueRef::Integer(v) => CellRef::Int(v),
                    ValueRef::Real(x) => CellRef::Int(x as i64),
                    ValueRef::Text(t) => CellRef::Text(std::str::from_utf8(t).unwrap_or("")),
                    ValueRef::Blob(b) => CellRef::Blob(b),
                };
            }
            if !f(&cells[..n])? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_rewrite() {
        assert_eq!(sqlite_sql("SELECT $1, '$2', $10"), "SELECT ?1, '$2', ?10");
        assert_eq!(sqlite_sql("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn round_trip_values() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        c.batch("CREATE TABLE t (a INTEGER, b TEXT, c BLOB, d TEXT, PRIMARY KEY (a))").unwrap();
        c.exec("INSERT INTO t VALUES ($1, $2, $3, $4)", p![7i64, "x", vec![1u8, 2], Option::<String>::None]).unwrap();
        let r = Conn::query_one(&mut c, "SELECT a, b, c, d FROM t WHERE a = $1", p![7i64]).unwrap().unwrap();
        assert_eq!(r.i64(0).unwrap(), 7);
        assert_eq!(r.text(1).unwrap(), "x");
        assert_eq!(r.blob(2).unwrap(), vec![1, 2]);
        assert_eq!(r.opt_text(3).unwrap(), None);
        let e = c.exec("INSERT INTO t VALUES ($1, $2, $3, $4)", p![7i64, "y", Val::Null, Val::Null]).unwrap_err();
        assert!(matches!(e, DbError::Unique(_)));
    }
}
