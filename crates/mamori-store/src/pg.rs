//! The PostgreSQL backend of [`Conn`]: the same `$N` statements as on
//! SQLite, prepared once per connection and cached.
//!
//! Values adapt to the parameter types PostgreSQL infers (an integer bound
//! where the server expects text is sent as its decimal text, and so on),
//! and result cells are decoded from any integer, boolean, numeric, text or
//! bytea column, so that the store's SQL is written once for both backends.
//!
//! This module must never build SQL from values: values are always bound.

use std::collections::HashMap;
use std::error::Error as StdError;

use tokio_postgres::types::{FromSql, IsNull, ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification, Statement};

use crate::sql::{Backend, Cell, CellRef, Conn, DbError, Row, Val};

// Advisory locks are per database; the keys are per schema (its name's
// hash, then the lock's number), so that deployments in different schemas
// of one database do not share them.

/// Every writer transaction takes this lock (transaction scope): appends
/// to the audit log are serialized across servers, so each server
/// integrates its events into the one Merkle tree in commit order.
pub const WRITE_LOCK_SQL: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema()), 1)";
/// The leader's lock (session scope): the one server that runs background
/// work and signs periodic checkpoints.
pub const TRY_LEADER_LOCK_SQL: &str = "SELECT pg_try_advisory_lock(hashtext(current_schema()), 2)";

/// The LISTEN/NOTIFY channel of a schema (channels are per database).
pub fn channel(schema: &str) -> String {
    // FNV-1a: a stable, identifier-safe name.
    let h = schema.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("mamori_{h:016x}")
}

/// A PostgreSQL connection with a statement cache; reconnects when the
/// server closed it (outside a transaction).
///
/// It drives an asynchronous client on a small runtime of its own, so
/// that statements can be pipelined: what [`Conn::exec_later`] holds back
/// is sent together with the next statement that needs an answer, and all
/// their answers come back in one round trip.
pub struct PgConn {
    url: String,
    /// Always `Some` until dropped.
    live: Option<Live>,
    stmts: HashMap<String, Statement>,
    in_tx: bool,
    /// Statements sent with the next round trip.
    later: Vec<Later>,
}

/// A connected client, the runtime that drives its connection, and the
/// notifications it received (LISTEN).
struct Live {
    rt: tokio::runtime::Runtime,
    client: Client,
    notices: tokio::sync::mpsc::UnboundedReceiver<Notification>,
}

/// A statement held back until the next round trip.
enum Later {
    Simple(String),
    Exec(Statement, Vec<Val<'static>>),
}

/// What the statement that ends a round trip answered.
enum Done {
    Nothing,
    Count(u64),
    Rows(Vec<tokio_postgres::Row>),
}

/// The statement that ends a round trip.
enum Last<'a> {
    Simple(&'a str),
    Exec(&'a Statement, &'a [Val<'a>]),
    Query(&'a Statement, &'a [Val<'a>]),
}

const STMT_CACHE_MAX: usize = 512;
/// At most this many statements wait for the next round trip.
const LATER_MAX: usize = 256;

pub(crate) fn pg_err(e: &tokio_postgres::Error) -> DbError {
    use tokio_postgres::error::SqlState;
    // The server's own words (the client's Display says only "db error").
    let text = match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => e.to_string(),
    };
    match e.code() {
        Some(c) if c.code().starts_with("23") => DbError::Unique(text),
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            DbError::Busy(text)
        }
        _ => DbError::Other(text),
    }
}

/// How to protect the connection, from the URL's `sslmode` (libpq's
/// names and meanings): absent or `disable`: plain (a database on the same
/// host or a private segment); `prefer`/`require`: TLS without checking the
/// server's certificate; `verify-ca`: TLS with the certificate checked
/// against `sslrootcert` (or the system's roots); `verify-full`: also the
/// host name. Use `verify-full` for any database across a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without checking its certificate; plain
    /// otherwise.
    Prefer,
    /// TLS without checking the server's certificate.
    Require,
    /// TLS, the certificate checked against `sslrootcert` (or the system's
    /// roots).
    VerifyCa,
    /// As `VerifyCa`, and the host name checked too.
    VerifyFull,
}

fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether every host of a URL is this machine (loopback or a Unix socket).
fn local_only(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hosts.is_empty() {
        return true; // the default Unix socket
    }
    hosts.split(',').all(|h| {
        let h = h
            .strip_prefix('[')
            .map_or_else(|| h.rsplit_once(':').map_or(h, |(host, _)| host), |v6| v6.split(']').next().unwrap_or(""));
        h == "localhost" || h == "::1" || h.starts_with("127.") || h.starts_with('/') || h.starts_with("%2F")
    })
}

/// Splits mamori's TLS options off a URL: the URL for the client, the mode
/// and the root certificate file. Secure by default: a database on another
/// host needs `sslmode=verify-full` or `verify-ca`, or an explicit
/// `sslmode=disable` (e.g. a private segment the operator vouches for).
pub fn tls_options(url: &str) -> Result<(String, TlsMode, Option<String>), DbError> {
    let explicit = url.contains("sslmode=");
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (mut keep, mut mode, mut root) = (Vec::new(), TlsMode::Disable, None);
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "sslmode" => {
                mode = match v {
                    "disable" => TlsMode::Disable,
                    "prefer" => TlsMode::Prefer,
                    "require" => TlsMode::Require,
                    "verify-ca" => TlsMode::VerifyCa,
                    "verify-full" => TlsMode::VerifyFull,
                    other => return Err(DbError::Other(format!("unknown sslmode {other:?}"))),
                }
            }
            "sslrootcert" => root = Some(percent_decode(v)),
            _ => keep.push(kv),
        }
    }
    if !local_only(base) && !explicit {
        return Err(DbError::Other(
            "the database is on another host: add sslmode=verify-full&sslrootcert=CA.pem to database.url \
             (or sslmode=disable to send it unencrypted, on a network you trust)"
                .into(),
        ));
    }
    keep.push(match mode {
        TlsMode::Disable => "sslmode=disable",
        TlsMode::Prefer => "sslmode=prefer",
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => "sslmode=require",
    });
    if root.is_some() && !matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) {
        return Err(DbError::Other("sslrootcert is only used with sslmode=verify-ca or verify-full".into()));
    }
    Ok((format!("{base}?{}", keep.join("&")), mode, root))
}

/// Why the server's certificate was refused, as OpenSSL said it.
type Refusal = std::sync::Arc<std::sync::Mutex<Option<String>>>;

fn tls_connector(
    mode: TlsMode,
    root: Option<&str>,
    refusal: Refusal,
) -> Result<postgres_openssl::MakeTlsConnector, DbError> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let e = |e: openssl::error::ErrorStack| DbError::Other(format!("TLS setup: {e}"));
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(e)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_2)).map_err(e)?;
    match mode {
        TlsMode::VerifyCa | TlsMode::VerifyFull => {
            match root {
                Some(r) => b.set_ca_file(r).map_err(|x| DbError::Other(format!("sslrootcert {r}: {x}")))?,
                None => b.set_default_verify_paths().map_err(e)?,
            }
            b.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                if !ok {
                    if let Ok(mut g) = refusal.lock() {
                        g.get_or_insert_with(|| format!("server certificate refused: {}", ctx.error()));
                    }
                }
                ok
            });
        }
        _ => b.set_verify(SslVerifyMode::NONE),
    }
    let mut c = postgres_openssl::MakeTlsConnector::new(b.build());
    if mode != TlsMode::VerifyFull {
        c.set_callback(|cfg, _| {
            cfg.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(c)
}

/// A connection failure with its causes (e.g. why a certificate was refused).
fn connect_err(e: &tokio_postgres::Error, why: Option<String>) -> DbError {
    let mut msg = format!("cannot connect: {e}");
    if let Some(w) = why {
        // OpenSSL's own chain repeats itself; the verification result says it.
        msg.push_str(&format!(" ({w})"));
        return DbError::Other(msg);
    }
    let mut src = StdError::source(e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    DbError::Other(msg)
}

/// Drives a connection on its runtime: it runs whenever the owner waits
/// for an answer. Notifications go to `tx`; the task ends when the
/// connection does (the client then reports itself closed).
fn drive<S, T>(
    rt: &tokio::runtime::Runtime,
    mut conn: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<Notification>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    rt.spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    // Fails only when the connection's owner is gone.
                    tx.send(n).ok();
                }
                Some(Ok(AsyncMessage::Notice(n))) => tracing::debug!(notice = %n, "PostgreSQL notice"),
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "PostgreSQL connection ended");
                    break;
                }
                None => break,
            }
        }
    });
}

/// Connects on a thread of its own: the connection's runtime must be
/// neither started nor driven on an async thread.
fn connect_off_runtime(url: &str) -> Result<Live, DbError> {
    let (url, mode, root) = tls_options(url)?;
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DbError::Other(format!("cannot start the connection's runtime: {e}")))?;
            let (tx, notices) = tokio::sync::mpsc::unbounded_channel();
            let client = match mode {
                TlsMode::Disable => {
                    let (client, conn) =
                        rt.block_on(tokio_postgres::connect(&url, NoTls)).map_err(|e| connect_err(&e, None))?;
                    drive(&rt, conn, tx);
                    client
                }
                _ => {
                    let refusal = Refusal::default();
                    let tls = tls_connector(mode, root.as_deref(), refusal.clone())?;
                    let (client, conn) = rt.block_on(tokio_postgres::connect(&url, tls)).map_err(|e| {
                        let why = refusal.lock().ok().and_then(|g| g.clone());
                        connect_err(&e, why)
                    })?;
                    drive(&rt, conn, tx);
                    client
                }
            };
            Ok(Live { rt, client, notices })
        })
        .join()
        .map_err(|_| DbError::Other("connecting thread panicked".into()))?
    })
}

/// Closes a connection on a thread of its own (its runtime may not be
/// dropped on an async thread).
fn close(live: Live) {
    if let Err(e) = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop(live)) {
        tracing::warn!(error = %e, "cannot start a thread to close a PostgreSQL connection; closed here");
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        if let Some(l) = self.live.take() {
            close(l);
        }
    }
}

fn owned(v: &Val<'_>) -> Val<'static> {
    match v {
        Val::Null => Val::Null,
        Val::Int(i) => Val::Int(*i),
        Val::Text(s) => Val::Text(std::borrow::Cow::Owned(s.clone().into_owned())),
        Val::Blob(b) => Val::Blob(std::borrow::Cow::Owned(b.clone().into_owned())),
    }
}

type Answer<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Done, tokio_postgres::Error>> + 'a>>;

fn refs<'a>(params: &'a [Val<'_>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|v| v as &(dyn ToSql + Sync)).collect()
}

/// Sends every statement at once (the client pipelines requests that are
/// in flight together) and waits for all answers, in order.
async fn pipeline(
    client: &Client,
    later: &[Later],
    last: Option<Last<'_>>,
) -> Vec<Result<Done, tokio_postgres::Error>> {
    let mut futs: Vec<Answer<'_>> = later
        .iter()
        .map(|l| -> Answer<'_> {
            match l {
                Later::Simple(s) => Box::pin(async move { client.batch_execute(s).await.map(|()| Done::Nothing) }),
                Later::Exec(st, p) => Box::pin(async move { client.execute(st, &refs(p)).await.map(Done::Count) }),
            }
        })
        .collect();
    if let Some(l) = last {
        futs.push(match l {
            Last::Simple(s) => Box::pin(async move { client.batch_execute(s).await.map(|()| Done::Nothing) }),
            Last::Exec(st, p) => Box::pin(async move { client.execute(st, &refs(p)).await.map(Done::Count) }),
            Last::Query(st, p) => Box::pin(async move { client.query(st, &refs(p)).await.map(Done::Rows) }),
        });
    }
    // Polled in order, so that the requests go out in order.
    let mut out: Vec<Option<Result<Done, tokio_postgres::Error>>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => *o = Some(r),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

impl PgConn {
    /// Connects to the PostgreSQL database at `url` (a `postgres://` URL;
    /// `sslmode` and `sslrootcert` as for libpq; several hosts with
    /// `target_session_attrs=read-write` to follow a primary that moves).
    pub fn connect(url: &str) -> Result<PgConn, DbError> {
        let live = connect_off_runtime(url)?;
        Ok(PgConn { url: url.to_owned(), live: Some(live), stmts: HashMap::new(), in_tx: false, later: Vec::new() })
    }

    fn live(&self) -> Result<&Live, DbError> {
        self.live.as_ref().ok_or_else(|| DbError::Other("connection closed".into()))
    }

    /// Whether the server closed the connection.
    pub fn is_closed(&self) -> bool {
        self.live.as_ref().is_none_or(|l| l.client.is_closed())
    }

    /// Waits up to `wait` for notifications (`LISTEN`); returns their
    /// channels and payloads. An error when the connection is lost.
    pub fn notifications(&mut self, wait: std::time::Duration) -> Result<Vec<(String, String)>, DbError> {
        self.sync()?;
        let live = self.live.as_mut().ok_or_else(|| DbError::Other("connection closed".into()))?;
        let mut got = Vec::new();
        let first = live.rt.block_on(async { tokio::time::timeout(wait, live.notices.recv()).await });
        match first {
            Ok(Some(n)) => got.push(n),
            Ok(None) => return Err(DbError::Other("connection closed".into())),
            Err(_) => {}
        }
        while let Ok(n) = live.notices.try_recv() {
            got.push(n);
        }
        if got.is_empty() && live.client.is_closed() {
            return Err(DbError::Other("connection closed".into()));
        }
        Ok(got.into_iter().map(|n| (n.channel().to_owned(), n.payload().to_owned())).collect())
    }

    fn ensure(&mut self) -> Result<(), DbError> {
        if self.is_closed() {
            self.later.clear();
            if self.in_tx {
                self.in_tx = false;
                return Err(DbError::Other("connection lost inside a transaction".into()));
            }
            if let Some(old) = self.live.take() {
                close(old);
            }
            self.live = Some(connect_off_runtime(&self.url)?);
            self.stmts.clear();
        }
        Ok(())
    }

    fn stmt(&mut self, sql: &str) -> Result<Statement, DbError> {
        self.ensure()?;
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let live = self.live()?;
        let s = live.rt.block_on(live.client.prepare(sql)).map_err(|e| {
            let d = pg_err(&e);
            if std::env::var_os("MAMORI_PG_TRACE").is_some() {
                eprintln!("PG PREPARE ERROR {d} IN: {sql}");
            }
            d
        })?;
        if self.stmts.len() >= STMT_CACHE_MAX {
            self.stmts.clear();
        }
        self.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn checked(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Statement, DbError> {
        let st = self.stmt(sql)?;
        if st.params().len() != params.len() {
            return Err(DbError::Other(format!(
                "statement expects {} parameters, got {}",
                st.params().len(),
                params.len()
            )));
        }
        Ok(st)
    }

    /// One round trip: what was held back, then `last`. The first error
    /// among the held-back statements wins over `last`'s outcome (which,
    /// in a failed transaction, is an error too or a silent rollback).
    fn round(&mut self, sql: &str, last: Option<Last<'_>>) -> Result<Done, DbError> {
        let later = std::mem::take(&mut self.later);
        let live = self.live()?;
        let mut answers = live.rt.block_on(pipeline(&live.client, &later, last)).into_iter();
        let mut first_err = None;
        for (l, a) in later.iter().zip(answers.by_ref()) {
            if let Err(e) = a {
                if first_err.is_none() {
                    let held = match l {
                        Later::Simple(s) => s.as_str(),
                        Later::Exec(..) => "a held-back statement",
                    };
                    first_err = Some(self.failed(held, &e));
                }
            }
        }
        let done = match answers.next() {
            Some(Ok(d)) => Ok(d),
            Some(Err(e)) => Err(self.failed(sql, &e)),
            None => Ok(Done::Nothing),
        };
        match first_err {
            Some(e) => Err(e),
            None => done,
        }
    }

    fn failed(&mut self, sql: &str, e: &tokio_postgres::Error) -> DbError {
        // A statement prepared before a schema change may be stale.
        if e.code() == Some(&tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED) {
            self.stmts.remove(sql);
        }
        let d = pg_err(e);
        tracing::debug!(sql, error = %d, "statement failed");
        if std::env::var_os("MAMORI_PG_TRACE").is_some() {
            eprintln!("PG ERROR {d} IN: {sql}");
        }
        d
    }
}

/// `SQLite`-only statements have no meaning here.
fn translate_batch(sql: &str) -> Option<&str> {
    let t = sql.trim();
    if t.eq_ignore_ascii_case("BEGIN IMMEDIATE") {
        return None;
    }
    if t.to_ascii_uppercase().starts_with("PRAGMA") {
        return Some("");
    }
    Some(sql)
}

impl Conn for PgConn {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }
    fn exec(&mut self, sql: &str, params: &[Val<'_>]) -> Result<usize, DbError> {
        let st = self.checked(sql, params)?;
        match self.round(sql, Some(Last::Exec(&st, params)))? {
            Done::Count(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => Ok(0),
        }
    }
    fn query(&mut self, sql: &str, params: &[Val<'_>]) -> Result<Vec<Row>, DbError> {
        let st = self.checked(sql, params)?;
        let rows = match self.round(sql, Some(Last::Query(&st, params)))? {
            Done::Rows(r) => r,
            _ => Vec::new(),
        };
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, PgCell>(i).map(|c| c.0).map_err(|e| DbError::Decode(e.to_string())))
                    .collect::<Result<Vec<Cell>, DbError>>()
                    .map(Row)
            })
            .collect()
    }
    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        let sql = match translate_batch(sql) {
            // A writer transaction: serialized across servers. Sent with
            // the transaction's first statement.
            None => return self.batch_later(&format!("BEGIN; {WRITE_LOCK_SQL}")),
            Some("") => return Ok(()),
            Some(s) => s,
        };
        let upper = sql.trim().to_ascii_uppercase();
        if upper.starts_with("ROLLBACK") {
            // Whatever was held back is undone: its errors do not matter.
            if !self.later.is_empty() {
                if let Err(e) = self.round("", None) {
                    tracing::debug!(error = %e, "a statement held back before a rollback failed");
                }
            }
        } else {
            self.ensure()?;
        }
        let r = self.round(sql, Some(Last::Simple(sql))).map(|_| ());
        if upper.starts_with("BEGIN") {
            self.in_tx = r.is_ok();
        } else if upper == "COMMIT" || upper == "ROLLBACK" {
            self.in_tx = false;
        }
        r
    }
    fn exec_later(&mut self, sql: &str, params: &[Val<'_>]) -> Result<(), DbError> {
        let st = self.checked(sql, params)?;
        self.later.push(Later::Exec(st, params.iter().map(owned).collect()));
        if self.later.len() >= LATER_MAX {
            return self.sync();
        }
        Ok(())
    }
    fn batch_later(&mut self, sql: &str) -> Result<(), DbError> {
        self.ensure()?;
        let upper = sql.trim().to_ascii_uppercase();
        if upper.starts_with("BEGIN") {
            // Sent with the next statement; a failure surfaces there.
            self.in_tx = true;
        }
        self.later.push(Later::Simple(sql.to_owned()));
        Ok(())
    }
    fn sync(&mut self) -> Result<(), DbError> {
        if self.later.is_empty() {
            return Ok(());
        }
        self.round("", None).map(|_| ())
    }
    fn for_each(
        &mut self,
        sql: &str,
        params: &[Val<'_>],
        f: &mut dyn FnMut(&[CellRef<'_>]) -> Result<bool, DbError>,
    ) -> Result<(), DbError> {
        let st = self.checked(sql, params)?;
        self.sync()?;
        let live = self.live()?;
        let mut rows = Box::pin(live.rt.block_on(live.client.query_raw(&st, refs(params))).map_err(|e| pg_err(&e))?);
        while let Some(r) = live.rt.block_on(futures_util::StreamExt::next(&mut rows)) {
            let r = r.map_err(|e| pg_err(&e))?;
            let cells: Vec<Cell> = (0..r.len())
                .map(|i| r.try_get::<_, PgCell>(i).map(|c| c.0).map_err(|e| DbError::Decode(e.to_string())))
                .collect::<Result<_, _>>()?;
            let refs: Vec<CellRef<'_>> = cells
                .iter()
                .map(|c| match c {
                    Cell::Null => CellRef::Null,
                    Cell::Int(v) => CellRef::Int(*v),
                    Cell::Text(s) => CellRef::Text(s),
                    Cell::Blob(b) => CellRef::Blob(b),
                })
                .collect();
            if !f(&refs)? {
                break;
            }
        }
        Ok(())
    }
}

type BoxErr = Box<dyn StdError + Sync + Send>;

fn is_text(ty: &Type) -> bool {
    [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME, Type::UNKNOWN].contains(ty)
}

impl ToSql for Val<'_> {
    fn to_sql(&self, ty: &Type, out: &mut tokio_postgres::types::private::BytesMut) -> Result<IsNull, BoxErr> {
        match self {
            Val::Null => Ok(IsNull::Yes),
            Val::Int(v) => match *ty {
                Type::INT8 => v.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::BOOL => (*v != 0).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                Type::NUMERIC => Err(format!("cannot bind integer {v} as numeric; cast the parameter").into()),
                ref t if is_text(t) => v.to_string().to_sql(&Type::TEXT, out),
                ref t => Err(format!("cannot bind an integer as {t}").into()),
            },
            Val::Text(s) => match *ty {
                Type::INT8 => s.parse::<i64>()?.to_sql(ty, out),
                Type::INT4 => s.parse::<i32>()?.to_sql(ty, out),
                Type::BYTEA => s.as_bytes().to_sql(ty, out),
                ref t if is_text(t) => s.as_ref().to_sql(&Type::TEXT, out),
                ref t => Err(format!("cannot bind text as {t}").into()),
            },
            Val::Blob(b) => match *ty {
                Type::BYTEA => b.as_ref().to_sql(ty, out),
                ref t if is_text(t) => std::str::from_utf8(b)?.to_sql(&Type::TEXT, out),
                ref t => Err(format!("cannot bind bytes as {t}").into()),
            },
        }
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Any cell the store reads, decoded from its wire type.
struct PgCell(Cell);

impl<'a> FromSql<'a> for PgCell {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, BoxErr> {
        Ok(PgCell(match *ty {
            Type::INT8 => Cell::Int(i64::from_sql(ty, raw)?),
            Type::INT4 => Cell::Int(i64::from(i32::from_sql(ty, raw)?)),
            Type::INT2 => Cell::Int(i64::from(i16::from_sql(ty, raw)?)),
            Type::OID => Cell::Int(i64::from(u32::from_sql(ty, raw)?)),
            Type::BOOL => Cell::Int(i64::from(bool::from_sql(ty, raw)?)),
            Type::FLOAT8 => Cell::Int(f64::from_sql(ty, raw)? as i64),
            Type::FLOAT4 => Cell::Int(f32::from_sql(ty, raw)? as i64),
            Type::NUMERIC => Cell::Int(numeric_to_i64(raw)?),
            Type::BYTEA => Cell::Blob(raw.to_vec()),
            ref t if is_text(t) => Cell::Text(String::from_sql(&Type::TEXT, raw)?),
            ref t => return Err(format!("unsupported column type {t}").into()),
        }))
    }
    fn from_sql_null(_: &Type) -> Result<Self, BoxErr> {
        Ok(PgCell(Cell::Null))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// The integer part of a binary NUMERIC (what SUM over BIGINT returns).
fn numeric_to_i64(raw: &[u8]) -> Result<i64, BoxErr> {
    let u16_at = |i: usize| -> Result<u16, BoxErr> {
        Ok(u16::from_be_bytes([*raw.get(i).ok_or("short numeric")?, *raw.get(i + 1).ok_or("short numeric")?]))
    };
    let ndigits = usize::from(u16_at(0)?);
    let weight = i32::from(u16_at(2)? as i16);
    let sign = u16_at(4)?;
    if sign == 0xC000 {
        return Err("NaN numeric".into());
    }
    let mut v: i128 = 0;
    for k in 0..=weight.max(-1) {
        let idx = usize::try_from(k).unwrap_or(usize::MAX);
        let d = if idx < ndigits { i128::from(u16_at(8 + 2 * idx)?) } else { 0 };
        v = v * 10_000 + d;
    }
    if sign == 0x4000 {
        v = -v;
    }
    Ok(i64::try_from(v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_follow_libpq() {
        let (u, m, r) = tls_options("postgres://u@localhost/db").unwrap();
        assert_eq!((u.as_str(), m, r), ("postgres://u@localhost/db?sslmode=disable", TlsMode::Disable, None));
        // Another host: TLS must be asked for, or plain text explicitly.
        let e = tls_options("postgres://u:pw@db.example.org:5432/db").unwrap_err();
        assert!(e.to_string().contains("sslmode=verify-full"), "{e}");
        assert!(tls_options("postgres://u@db.example.org/db?sslmode=disable").is_ok());
        assert!(tls_options("postgres://u@127.0.0.1,10.0.0.2/db").is_err());
        for local in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@[::1]:5432/db",
            "postgres:///db",
            "postgres://u@%2Fvar%2Frun/db",
        ] {
            assert!(tls_options(local).is_ok(), "{local}");
        }
        let (u, m, r) =
            tls_options("postgres://u@h/db?options=-csearch_path%3Dx&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
                .unwrap();
        assert_eq!(u, "postgres://u@h/db?options=-csearch_path%3Dx&sslmode=require");
        assert_eq!(m, TlsMode::VerifyFull);
        assert_eq!(r.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(tls_options("postgres://h/db?sslmode=require").unwrap().1, TlsMode::Require);
        assert!(tls_options("postgres://h/db?sslmode=allow-anything").is_err());
        assert!(tls_options("postgres://h/db?sslmode=require&sslrootcert=/x").is_err());
    }

    #[test]
    fn numeric_decoding() {
        // 123456789 = 1|2345|6789, weight 2, positive.
        let raw = [0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29, 0x1A, 0x85];
        assert_eq!(numeric_to_i64(&raw).unwrap(), 123_456_789);
        // -42.5 = 42|5000, weight 0, negative: integer part -42.
        let raw = [0, 2, 0, 0, 0x40, 0, 0, 1, 0, 42, 0x13, 0x88];
        assert_eq!(numeric_to_i64(&raw).unwrap(), -42);
        // 0: no digits.
        assert_eq!(numeric_to_i64(&[0, 0, 0, 0, 0, 0, 0, 0]).unwrap(), 0);
        // 20000 = 2|0000 stored as one digit with weight 1.
        assert_eq!(numeric_to_i64(&[0, 1, 0, 1, 0, 0, 0, 0, 0, 2]).unwrap(), 20_000);
    }
}
