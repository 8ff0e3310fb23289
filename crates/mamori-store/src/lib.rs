//! mamori-store: persistence behind one API for SQLite (the embedded
//! default) and, later, PostgreSQL.
//!
//! - [`sql`]: the small SQL abstraction every query goes through;
//! - [`writer`]: the group-commit writer (all writes and audit events);
//! - [`records`], [`search`]: FHIR versions, current pointers, search index;
//! - [`accounts`]: users, roles, tokens, care assignments;
//! - [`audit_log`]: audit events, Merkle nodes, checkpoints, proofs.
//!
//! Reads run on a pool of read-only connections; writes only through the
//! writer. Nothing here decides access: callers bring a policy decision.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod audit_log;
pub mod bulk;
pub mod compliance;
pub mod continuity;
pub mod copy;
pub mod emergency;
pub mod error;
pub mod exchange;
pub mod forms;
pub mod maintenance;
pub mod oauth;
pub mod pg;
pub mod records;
pub mod schema;
pub mod search;
pub mod sql;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mamori_audit::note::NoteSigner;
use mamori_core::time::Clock;
use rusqlite::Connection;

pub use error::{Result, StoreError};
use sql::Conn;
pub use writer::{CheckpointPolicy, WriteCtx, Writer};

/// SQLite durability: FULL syncs the WAL at every commit (survives power
/// loss); NORMAL only at checkpoints (survives a process crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// `synchronous = FULL`.
    Full,
    /// `synchronous = NORMAL`.
    Normal,
}

/// How to open the store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite database file (the embedded default).
    pub path: PathBuf,
    /// A `postgres://` URL: the PostgreSQL backend instead of `path`.
    pub url: Option<String>,
    /// SQLite durability (ignored on PostgreSQL).
    pub synchronous: Synchronous,
    /// The number of read-only connections (at least one is opened).
    pub readers: usize,
    /// When the writer signs audit checkpoints.
    pub checkpoint: CheckpointPolicy,
    /// The checkpoint origin line (the log's name).
    pub origin: String,
    /// The search parameters resources are indexed under: mamori's own
    /// and those of the loaded FHIR packages. At open, the index of the
    /// packages' parameters is brought in line with them.
    pub search: Arc<mamori_core::fhir::search::SearchParams>,
    /// PostgreSQL: a standby that answers searches ([`Store::read_search`]).
    pub replica_url: Option<String>,
}

/// A URL with its password, if any, replaced (for messages and logs).
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Opens a SQLite connection with mamori's settings.
pub fn open_sqlite(path: &Path, sync: Synchronous, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE
            | rusqlite::OpenFlags::SQLITE_OPEN_CREATE
            | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let c = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
    c.busy_timeout(Duration::from_secs(10)).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    c.set_prepared_statement_cache_capacity(256);
    // Plans that do not depend on bound values. Without this, SQLite marks
    // a statement on a table with a partial index (`resources_patient`)
    // to be re-prepared whenever a bound value changes, so the cached
    // `records::current` lookup was compiled anew on every write (measured:
    // ~10% of the writer's time). No query here needs value-dependent
    // plans: prefixes are ranges, and `LIKE '%…%'` cannot use an index.
    c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    let sync = match sync {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    // A 32 MiB page cache per connection avoids a read syscall per page on
    // hot paths; the writer's per-job savepoint journals stay in memory
    // (on disk they cost a temporary file per batch). mmap was measured
    // slower with WAL here and is left off.
    let common = "PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY;";
    let pragmas = if read_only {
        format!("PRAGMA query_only = ON; {common}")
    } else {
        format!("PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON; {common}")
    };
    let mut c = c;
    c.batch(&pragmas)?;
    Ok(c)
}

/// One connection to a store's database, outside the server (offline
/// commands): SQLite at `path`, or PostgreSQL at `url`. On PostgreSQL it
/// must be used off async threads.
pub fn open_conn(path: &Path, url: Option<&str>, read_only: bool) -> Result<Box<dyn Conn + Send>> {
    match url {
        Some(u) => Ok(Box::new(
            pg::PgConn::connect(u)
                .map_err(|e| StoreError::Unavailable(format!("PostgreSQL at {}: {e}", redact_url(u))))?,
        )),
        None => Ok(Box::new(open_sqlite(path, Synchronous::Full, read_only)?)),
    }
}

struct ReaderPool {
    conns: Vec<Mutex<Box<dyn Conn + Send>>>,
    next: AtomicUsize,
}

impl ReaderPool {
    fn with<T>(&self, f: impl FnOnce(&mut dyn Conn) -> Result<T>) -> Result<T> {
        // Take a free connection if there is one, else wait on the next.
        for m in &self.conns {
            if let Ok(mut g) = m.try_lock() {
                return f(g.as_mut());
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        let m = self.conns.get(i).ok_or_else(|| StoreError::Unavailable("no reader connections".into()))?;
        let mut g = m.lock().map_err(|_| StoreError::Unavailable("reader connection poisoned".into()))?;
        f(g.as_mut())
    }
}

/// Connections to a PostgreSQL standby that answers searches, made when
/// first needed. A standby that cannot be reached is passed over for a
/// few seconds (the primary answers meanwhile), then tried again.
struct ReplicaPool {
    url: String,
    conns: Vec<Mutex<Option<Box<dyn Conn + Send>>>>,
    next: AtomicUsize,
    /// Until when the standby is passed over after a failure.
    resting: Mutex<Option<std::time::Instant>>,
}

/// How long a standby that failed is passed over.
const REPLICA_REST: Duration = Duration::from_secs(5);

impl ReplicaPool {
    /// Runs `f` on a standby connection; `None` when the standby is
    /// resting or cannot be reached, `Some(Err)` when `f` failed there
    /// (the connection is dropped; the next use connects again).
    fn with<T>(&self, f: &dyn Fn(&mut dyn Conn) -> Result<T>) -> Option<Result<T>> {
        let now = std::time::Instant::now();
        if self.resting.lock().ok().and_then(|g| *g).is_some_and(|until| now < until) {
            return None;
        }
        let rest = || {
            if let Ok(mut g) = self.resting.lock() {
                *g = Some(std::time::Instant::now() + REPLICA_REST);
            }
        };
        let slot = self.conns.iter().find_map(|m| m.try_lock().ok()).or_else(|| {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
            self.conns.get(i)?.lock().ok()
        });
        let mut slot = slot?;
        if slot.is_none() {
            match pg::PgConn::connect(&self.url) {
                Ok(c) => *slot = Some(Box::new(c)),
                Err(e) => {
                    tracing::warn!(error = %e, replica = %redact_url(&self.url), "the standby cannot be reached; the primary answers searches for now");
                    rest();
                    return None;
                }
            }
        }
        let c = slot.as_mut()?;
        let r = f(c.as_mut());
        if let Err(e) = &r {
            tracing::warn!(error = %e, replica = %redact_url(&self.url), "a search failed on the standby; the primary answers it");
            *slot = None;
            rest();
        }
        Some(r)
    }
}

/// The store: one writer, several readers, one clock.
#[derive(Clone)]
pub struct Store {
    writer: Writer,
    readers: Arc<ReaderPool>,
    clock: Arc<dyn Clock>,
    backend: sql::Backend,
    url: Option<String>,
    leader: Arc<std::sync::atomic::AtomicBool>,
    replica: Option<Arc<ReplicaPool>>,
}

/// A file-name-safe UTC stamp (`20261203T150805Z`).
pub fn backup_stamp(now: mamori_core::time::Timestamp) -> String {
    now.to_rfc3339().chars().filter(|c| c.is_ascii_digit() || *c == 'T').take(15).collect::<String>() + "Z"
}

impl Store {
    /// Opens (creating and migrating if needed) the store: SQLite at
    /// `cfg.path`, or PostgreSQL when `cfg.url` is set.
    ///
    /// Runs on a thread of its own: PostgreSQL's synchronous client must
    /// not block an async thread.
    pub fn open(cfg: &StoreConfig, clock: Arc<dyn Clock>, signer: Arc<NoteSigner>) -> Result<Store> {
        std::thread::scope(|s| {
            s.spawn(|| Self::open_here(cfg, clock, signer))
                .join()
                .map_err(|_| StoreError::Internal("opening the store panicked".into()))?
        })
    }

    fn open_here(cfg: &StoreConfig, clock: Arc<dyn Clock>, signer: Arc<NoteSigner>) -> Result<Store> {
        let mut conns: Vec<Mutex<Box<dyn Conn + Send>>> = Vec::new();
        let (w, backend): (Box<dyn Conn + Send>, _) = match &cfg.url {
            Some(url) => {
                let mut w = pg::PgConn::connect(url)
                    .map_err(|e| StoreError::Unavailable(format!("PostgreSQL at {}: {e}", redact_url(url))))?;
                if schema::current(&mut w)? > 0 && !schema::pending(&mut w)?.is_empty() {
                    tracing::warn!(
                        "upgrading the PostgreSQL schema in place: take a pg_dump (or a base backup) first, docs/operations.md"
                    );
                }
                schema::migrate(&mut w)?;
                for _ in 0..cfg.readers.max(1) {
                    let c = pg::PgConn::connect(url)
                        .map_err(|e| StoreError::Unavailable(format!("PostgreSQL at {}: {e}", redact_url(url))))?;
                    conns.push(Mutex::new(Box::new(c)));
                }
                (Box::new(w), sql::Backend::Postgres)
            }
            None => {
                let mut w = open_sqlite(&cfg.path, cfg.synchronous, false)?;
                let stamp = backup_stamp(clock.now());
                if let Some(copy) = schema::backup_before_migrating(&mut w, &cfg.path, &stamp)? {
                    tracing::warn!(backup = %copy.display(), "upgrading the database schema; a copy was taken first");
                }
                schema::migrate(&mut w)?;
                // Checkpoint the WAL every ~12 MiB instead of every 4 MiB:
                // pages rewritten by many commits are copied back once
                // (measured: less writer time on audit appends).
                w.batch("PRAGMA wal_autocheckpoint = 3000")?;
                for _ in 0..cfg.readers.max(1) {
                    conns.push(Mutex::new(Box::new(open_sqlite(&cfg.path, cfg.synchronous, true)?)));
                }
                (Box::new(w), sql::Backend::Sqlite)
            }
        };
        // On SQLite this process is the only server: always the leader. On
        // PostgreSQL the server's cluster task sets it while it holds the
        // leader lock.
        let leader = Arc::new(std::sync::atomic::AtomicBool::new(backend == sql::Backend::Sqlite));
        let mut w = w;
        records::sync_package_params(w.as_mut(), &cfg.search)?;
        let writer = Writer::start(
            w,
            clock.clone(),
            signer,
            cfg.origin.clone(),
            cfg.checkpoint,
            leader.clone(),
            cfg.search.clone(),
        )?;
        let replica = cfg.replica_url.as_ref().filter(|_| backend == sql::Backend::Postgres).map(|url| {
            Arc::new(ReplicaPool {
                url: url.clone(),
                conns: (0..cfg.readers.max(1)).map(|_| Mutex::new(None)).collect(),
                next: AtomicUsize::new(0),
                resting: Mutex::new(None),
            })
        });
        Ok(Store {
            writer,
            readers: Arc::new(ReaderPool { conns, next: AtomicUsize::new(0) }),
            clock,
            backend,
            url: cfg.url.clone(),
            leader,
            replica,
        })
    }

    /// Which database the store is on.
    pub fn backend(&self) -> sql::Backend {
        self.backend
    }

    /// The PostgreSQL URL, if the store is on PostgreSQL.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// Whether this server is the leader (signs periodic checkpoints, runs
    /// background work). Always true on SQLite.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

    /// Sets leadership (PostgreSQL: the holder of the leader lock).
    pub fn set_leader(&self, v: bool) {
        self.leader.store(v, Ordering::SeqCst);
    }

    /// The group-commit writer: every write goes through it.
    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// The clock every "now" of the store comes from.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Runs a search's reads `f` on the standby when one is configured
    /// (`replica_url`), else, or when the standby cannot answer, on a
    /// read-only connection of the primary. Off the async threads.
    pub async fn read_search<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut dyn Conn) -> Result<T> + Send + 'static,
    {
        let (pool, replica) = (self.readers.clone(), self.replica.clone());
        tokio::task::spawn_blocking(move || {
            if let Some(Ok(v)) = replica.as_ref().and_then(|r| r.with(&f)) {
                return Ok(v);
            }
            pool.with(|c| f(c))
        })
        .await
        .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
    }

    /// Runs a short read `f` (a record by id and its decision: a few
    /// indexed lookups in SQLite's page cache) on the calling thread when
    /// the store is SQLite and a read connection is free at once; else as
    /// [`Store::read`]. A hand-off to the blocking pool and back costs two
    /// thread switches, more than such a read itself.
    pub async fn read_short<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T> + Send + 'static,
    {
        if self.backend == sql::Backend::Sqlite {
            if let Some(mut g) = self.readers.conns.iter().find_map(|m| m.try_lock().ok()) {
                return f(g.as_mut());
            }
        }
        self.read(f).await
    }

    /// Runs `f` on a read-only connection, off the async threads.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T> + Send + 'static,
    {
        let pool = self.readers.clone();
        tokio::task::spawn_blocking(move || pool.with(f))
            .await
            .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
    }
}
