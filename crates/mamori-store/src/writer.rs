//! The group-commit writer: one thread owns the write connection and
//! commits many callers' changes and audit events in one transaction.
//!
//! Each job runs inside its own savepoint; a failing job is rolled back
//! alone and may then record its failure in the audit log. Callers are
//! answered only after the COMMIT that contains their work has returned,
//! so an acknowledged write or audit event is durable (rule 1 and 2).
//!
//! This module must never answer a caller before its commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mamori_audit::event::{Agent, AuditRecord, VersionDigest};
use mamori_audit::merkle::Frontier;
use mamori_audit::note::NoteSigner;
use mamori_core::time::{Clock, Timestamp};
use tokio::sync::{mpsc, oneshot};

use crate::audit_log;
use crate::error::{Result, StoreError};
use crate::sql::Conn;
use mamori_core::fhir::search::SearchParams;

/// What a job sees: the transaction, the clock reading for the batch, and
/// the audit log.
pub struct WriteCtx<'a> {
    /// The job's transaction.
    pub conn: &'a mut dyn Conn,
    /// The time of the batch: one clock reading for every job in it.
    pub now: Timestamp,
    audit: &'a mut AuditState,
}

impl WriteCtx<'_> {
    /// Appends an audit event in this transaction; returns its leaf index.
    /// The record versions the job stored since its last event are bound
    /// to this one (their digests go into its `versions`).
    pub fn audit(&mut self, rec: &AuditRecord) -> Result<u64> {
        if self.audit.unbound.is_empty() {
            return self.append(rec);
        }
        let mut bound = rec.clone();
        bound.versions.append(&mut self.audit.unbound);
        self.append(&bound)
    }
    fn append(&mut self, rec: &AuditRecord) -> Result<u64> {
        let seq = audit_log::append(self.conn, &mut self.audit.frontier, rec, self.now)?;
        self.audit.appended_since_checkpoint += 1;
        self.audit.pending_index.add(seq, rec);
        self.audit.last_mode.clone_from(&rec.mode);
        Ok(seq)
    }
    /// A record version was stored: the job's next audit event binds it.
    pub(crate) fn stored(&mut self, d: VersionDigest) {
        self.audit.unbound.push(d);
    }
    /// Binds the versions a job stored after its last audit event, in an
    /// event of their own (`record-bind`), so that no stored version is
    /// left out of the audit log.
    fn bind_rest(&mut self) -> Result<()> {
        if self.audit.unbound.is_empty() {
            return Ok(());
        }
        tracing::debug!(versions = self.audit.unbound.len(), "record versions stored after the job's audit event");
        let rec = AuditRecord {
            action: "record-bind".into(),
            agent: Agent { kind: "system".into(), user: "system".into(), ..Agent::default() },
            basis: None,
            detail: None,
            entity: None,
            mode: self.audit.last_mode.clone(),
            patients: Vec::new(),
            purpose: None,
            query: None,
            request: None,
            status: 200,
            time: self.now.to_rfc3339(),
            versions: std::mem::take(&mut self.audit.unbound),
        };
        self.append(&rec).map(|_| ())
    }
    /// Brings the derived indexes (patients, agents) up to date now.
    pub fn flush_index(&mut self) -> Result<()> {
        audit_log::flush_index(self.conn, &mut self.audit.pending_index)?;
        self.audit.last_index_flush = Instant::now();
        Ok(())
    }
    /// Signs a checkpoint of the tree as it stands in this transaction.
    pub fn checkpoint(&mut self, reason: &str) -> Result<String> {
        let note = audit_log::sign_checkpoint(
            self.conn,
            &self.audit.frontier,
            &self.audit.signer,
            &self.audit.origin,
            self.now,
            reason,
        )?;
        self.audit.last_checkpoint = (self.audit.frontier.size(), Instant::now());
        self.audit.appended_since_checkpoint = 0;
        Ok(note)
    }
    /// The search parameters resources are indexed under (mamori's own
    /// and the loaded packages').
    pub fn search_params(&self) -> Arc<SearchParams> {
        self.audit.search.clone()
    }
    /// The number of events in the audit log, including those appended in this
    /// transaction.
    pub fn tree_size(&self) -> u64 {
        self.audit.frontier.size()
    }
}

/// Checkpoint policy: sign when this many events accumulated, or when
/// this much time passed with new events.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// Sign when this many events were appended since the last checkpoint.
    pub every_events: u64,
    /// Sign when this much time passed since the last checkpoint and events
    /// were appended.
    pub every: Duration,
}

pub(crate) struct AuditState {
    frontier: Frontier,
    signer: Arc<NoteSigner>,
    origin: String,
    policy: CheckpointPolicy,
    last_checkpoint: (u64, Instant),
    appended_since_checkpoint: u64,
    pending_index: audit_log::PendingIndex,
    last_index_flush: Instant,
    /// Whether this server signs periodic checkpoints (the leader).
    leader: Arc<std::sync::atomic::AtomicBool>,
    /// PostgreSQL: several servers append, so the derived indexes are
    /// flushed in every transaction (nothing stays pending in memory).
    shared: bool,
    /// Why the last commit failed, until one succeeds (for health checks).
    problem: Arc<std::sync::Mutex<Option<String>>>,
    /// Record versions the running job stored that no audit event binds yet.
    unbound: Vec<VersionDigest>,
    /// The mode of the last event appended (for a `record-bind` event).
    last_mode: String,
    /// The search parameters a stored resource is indexed under.
    search: Arc<SearchParams>,
}

impl AuditState {
    fn committed(&self, r: std::result::Result<(), &StoreError>) {
        let mut p = self.problem.lock().unwrap_or_else(|e| e.into_inner());
        *p = r.err().map(|e| format!("the last commit failed: {e}"));
    }
}

impl AuditState {
    /// Reloads the tree and the counters after another process appended.
    fn reload(&mut self, conn: &mut dyn Conn) -> Result<()> {
        self.frontier = audit_log::load_frontier(conn)?;
        self.pending_index = audit_log::load_pending_index(conn)?;
        let last = audit_log::latest_checkpoint(conn)?.map_or(0, |(s, _, _)| s);
        self.appended_since_checkpoint = self.frontier.size().saturating_sub(last);
        Ok(())
    }
}

/// Flush the derived indexes at least this often, or at this size.
const INDEX_FLUSH_EVERY: Duration = Duration::from_secs(1);
const INDEX_FLUSH_SIZE: usize = 50_000;

pub(crate) trait Job: Send {
    /// Whether the job runs in its own savepoint, so that its failure
    /// rolls back only its own changes. Jobs that can only fail with the
    /// database (appending audit events) skip the savepoint; if one fails,
    /// the whole batch is rolled back and every caller gets the error.
    fn isolated(&self) -> bool {
        true
    }
    /// Whether the job runs alone in its own transaction, without a
    /// savepoint (large jobs: SQLite's in-memory savepoint journal makes
    /// every statement of a huge savepoint cost time proportional to it).
    /// If it fails, its whole transaction is rolled back.
    fn exclusive(&self) -> bool {
        false
    }
    /// Runs the job; false when it failed (its savepoint is rolled back).
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool;
    /// After a rollback: records the failure (e.g. its audit event).
    fn after_failure(&mut self, ctx: &mut WriteCtx<'_>) -> Result<()>;
    /// Answers the caller with the commit's outcome.
    fn finish(self: Box<Self>, commit: Result<()>);
}

type FailFn<E> = Box<dyn FnOnce(&E, &mut WriteCtx<'_>) -> Result<()> + Send>;

struct Typed<T, E, F> {
    isolated: bool,
    exclusive: bool,
    work: Option<F>,
    on_fail: Option<FailFn<E>>,
    out: Option<Result<T, E>>,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<T, E, F> Job for Typed<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send,
{
    fn isolated(&self) -> bool {
        self.isolated
    }
    fn exclusive(&self) -> bool {
        self.exclusive
    }
    fn run(&mut self, ctx: &mut WriteCtx<'_>) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        ctx.audit.unbound.clear();
        let isolated = self.isolated;
        let r = work(ctx).and_then(|v| match ctx.bind_rest() {
            Ok(()) => Ok(v),
            Err(e) => Err(E::from(e)),
        });
        // The statements the job held back (PostgreSQL) are sent now, so
        // that their failure is the job's own and rolls back only it. A
        // job that is not isolated fails with its whole batch anyway: its
        // statements go out with the next round trip.
        let r = match r {
            Ok(v) if isolated => ctx.conn.sync().map(|()| v).map_err(|e| E::from(StoreError::from(e))),
            other => other,
        };
        ctx.audit.unbound.clear();
        let ok = r.is_ok();
        self.out = Some(r);
        ok
    }
    fn after_failure(&mut self, ctx: &mut WriteCtx<'_>) -> Result<()> {
        match (self.on_fail.take(), &self.out) {
            (Some(f), Some(Err(e))) => f(e, ctx),
            _ => Ok(()),
        }
    }
    fn finish(self: Box<Self>, commit: Result<()>) {
        let r = match (commit, self.out) {
            (Ok(()), Some(r)) => r,
            (Err(e), _) => Err(e.into()),
            (Ok(()), None) => Err(StoreError::Internal("job did not run".into()).into()),
        };
        // Fails only when the caller stopped waiting (its request was
        // cancelled): the job is committed or not either way.
        self.reply.send(r).ok();
    }
}

/// Handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Box<dyn Job>>,
    problem: Arc<std::sync::Mutex<Option<String>>>,
}

const MAX_BATCH: usize = 512;

impl Writer {
    pub(crate) fn start(
        mut conn: Box<dyn Conn + Send>,
        clock: Arc<dyn Clock>,
        signer: Arc<NoteSigner>,
        origin: String,
        policy: CheckpointPolicy,
        leader: Arc<std::sync::atomic::AtomicBool>,
        search: Arc<SearchParams>,
    ) -> Result<Writer> {
        let shared = conn.backend() == crate::sql::Backend::Postgres;
        let frontier = audit_log::load_frontier(conn.as_mut())?;
        let pending_index = audit_log::load_pending_index(conn.as_mut())?;
        let last = audit_log::latest_checkpoint(conn.as_mut())?.map_or(0, |(s, _, _)| s);
        let mut state = AuditState {
            appended_since_checkpoint: frontier.size().saturating_sub(last),
            frontier,
            signer,
            origin,
            policy,
            last_checkpoint: (last, Instant::now()),
            pending_index,
            last_index_flush: Instant::now(),
            leader,
            shared,
            problem: Arc::new(std::sync::Mutex::new(None)),
            unbound: Vec::new(),
            last_mode: "normal".into(),
            search,
        };
        let problem = state.problem.clone();
        let (tx, mut rx) = mpsc::channel::<Box<dyn Job>>(8192);
        std::thread::Builder::new()
            .name("mamori-writer".into())
            .spawn(move || {
                let mut next: Option<Box<dyn Job>> = None;
                while let Some(first) = next.take().or_else(|| rx.blocking_recv()) {
                    if first.exclusive() {
                        run_exclusive(conn.as_mut(), clock.as_ref(), &mut state, first);
                        continue;
                    }
                    let mut jobs = vec![first];
                    while jobs.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(j) if j.exclusive() => {
                                next = Some(j);
                                break;
                            }
                            Ok(j) => jobs.push(j),
                            Err(_) => break,
                        }
                    }
                    run_batch(conn.as_mut(), clock.as_ref(), &mut state, jobs);
                }
                tracing::debug!("writer stopped: all handles dropped");
            })
            .map_err(|e| StoreError::Internal(format!("cannot start writer thread: {e}")))?;
        Ok(Writer { tx, problem })
    }

    /// Why the database cannot be written, if its last commit failed (and
    /// none has succeeded since).
    pub fn problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Runs `work` in the next group commit. `on_fail` runs after `work`
    /// failed and was rolled back, in the same transaction, to record the
    /// failure (typically an audit event). Returns after the commit.
    pub async fn write<T, F>(
        &self,
        work: F,
        on_fail: impl FnOnce(&StoreError, &mut WriteCtx<'_>) -> Result<()> + Send + 'static,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(true, false, work, on_fail).await
    }

    /// As [`Writer::write`], for a job that fails with an error type of its
    /// own (a store error converts into it); the job is rolled back on any
    /// error.
    pub async fn run<T, E, F>(
        &self,
        work: F,
        on_fail: impl FnOnce(&E, &mut WriteCtx<'_>) -> Result<()> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit(true, false, work, on_fail).await
    }

    /// As [`Writer::run`], for a large job: it runs alone in its own
    /// transaction (all or nothing), after the jobs queued before it.
    pub async fn run_exclusive<T, E, F>(
        &self,
        work: F,
        on_fail: impl FnOnce(&E, &mut WriteCtx<'_>) -> Result<()> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
    {
        self.submit(true, true, work, on_fail).await
    }

    /// As [`Writer::write`], exclusive (see [`Writer::run_exclusive`]).
    pub async fn write_exclusive<T, F>(
        &self,
        work: F,
        on_fail: impl FnOnce(&StoreError, &mut WriteCtx<'_>) -> Result<()> + Send + 'static,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T> + Send + 'static,
    {
        self.submit(true, true, work, on_fail).await
    }

    async fn submit<T, E, F>(
        &self,
        isolated: bool,
        exclusive: bool,
        work: F,
        on_fail: impl FnOnce(&E, &mut WriteCtx<'_>) -> Result<()> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut WriteCtx<'_>) -> Result<T, E> + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job = Typed { isolated, exclusive, work: Some(work), on_fail: Some(Box::new(on_fail)), out: None, reply };
        self.tx.send(Box::new(job)).await.map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        rx.await.map_err(|_| StoreError::Unavailable("writer stopped before answering".into()))?
    }

    /// Appends audit events only (reads, denials, logins).
    pub async fn audit(&self, recs: Vec<AuditRecord>) -> Result<Vec<u64>> {
        self.submit(
            false,
            false,
            move |ctx| recs.iter().map(|r| ctx.audit(r)).collect::<Result<Vec<u64>>>(),
            |_: &StoreError, _| Ok(()),
        )
        .await
    }

    /// Brings the derived audit indexes up to date (before a query that
    /// uses them).
    pub async fn flush_index(&self) -> Result<()> {
        self.submit(false, false, |ctx| ctx.flush_index(), |_: &StoreError, _| Ok(())).await
    }

    /// Signs a checkpoint now if the policy says one is due (called by a
    /// timer so that an idle log still gets its time-based checkpoint).
    pub async fn checkpoint_if_due(&self) -> Result<()> {
        self.write(|_ctx| Ok(()), |_, _| Ok(())).await
    }
}

/// Runs one exclusive job in its own transaction; on failure the whole
/// transaction is rolled back and the failure recorded in a new one.
fn run_exclusive(conn: &mut dyn Conn, clock: &dyn Clock, state: &mut AuditState, mut job: Box<dyn Job>) {
    let snapshot = state.frontier.clone();
    let snapshot_meta = (state.last_checkpoint, state.appended_since_checkpoint);
    let index_mark = state.pending_index.mark();
    let restore = |conn: &mut dyn Conn, state: &mut AuditState| {
        if let Err(e) = conn.batch("ROLLBACK") {
            tracing::debug!(error = %e, "cannot roll back a failed exclusive job");
        }
        state.frontier = snapshot.clone();
        (state.last_checkpoint, state.appended_since_checkpoint) = snapshot_meta;
        if state.pending_index.mark().1 < index_mark.1 {
            if let Ok(p) = audit_log::load_pending_index(conn) {
                state.pending_index = p;
            }
        } else {
            state.pending_index.rollback(index_mark);
        }
    };
    let attempt = (|| -> Result<bool> {
        conn.batch("BEGIN IMMEDIATE")?;
        if audit_log::size(conn)? != state.frontier.size() {
            state.reload(conn)?;
        }
        let now = clock.now();
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            job.run(&mut WriteCtx { conn: &mut *conn, now, audit: &mut *state })
        }))
        .unwrap_or_else(|_| {
            tracing::error!("an exclusive write job panicked; rolled back");
            false
        });
        if ok {
            // Shared database: this transaction's events are indexed before
            // it commits, so that the index cursor, advanced by every
            // server in turn, never claims events it does not cover.
            if state.shared && !state.pending_index.is_empty() {
                WriteCtx { conn: &mut *conn, now, audit: &mut *state }.flush_index()?;
            }
            conn.batch("COMMIT")?;
        }
        Ok(ok)
    })();
    state.committed(attempt.as_ref().map(|_| ()));
    match attempt {
        Ok(true) => job.finish(Ok(())),
        Ok(false) => {
            restore(conn, state);
            let failure = (|| -> Result<()> {
                conn.batch("BEGIN IMMEDIATE")?;
                let now = clock.now();
                job.after_failure(&mut WriteCtx { conn: &mut *conn, now, audit: &mut *state })?;
                conn.batch("COMMIT").map_err(StoreError::from)
            })();
            if let Err(e) = failure {
                tracing::error!(error = %e, "could not record a failed exclusive job");
                restore(conn, state);
            }
            job.finish(Ok(()));
        }
        Err(e) => {
            tracing::error!(error = %e, "exclusive job's commit failed; rolled back");
            restore(conn, state);
            job.finish(Err(StoreError::Unavailable(format!("commit failed: {e}"))));
        }
    }
}

fn run_batch(conn: &mut dyn Conn, clock: &dyn Clock, state: &mut AuditState, mut jobs: Vec<Box<dyn Job>>) {
    let snapshot = state.frontier.clone();
    let snapshot_meta = (state.last_checkpoint, state.appended_since_checkpoint);
    let index_mark = state.pending_index.mark();
    let result = (|| -> Result<()> {
        conn.batch("BEGIN IMMEDIATE")?;
        // Another process (an offline CLI command) may have appended: the
        // tree in memory must be the committed one.
        if audit_log::size(conn)? != state.frontier.size() {
            if state.shared {
                tracing::debug!("another server appended to the audit log; reloading the Merkle frontier");
            } else {
                tracing::warn!("audit log changed outside this writer; reloading the Merkle frontier");
            }
            state.reload(conn)?;
        }
        let now = clock.now();
        for job in jobs.iter_mut() {
            if !job.isolated() {
                if !job.run(&mut WriteCtx { conn: &mut *conn, now, audit: &mut *state }) {
                    return Err(StoreError::Unavailable("appending to the audit log failed".into()));
                }
                continue;
            }
            // Sent with the job's first statement (PostgreSQL).
            conn.batch_later("SAVEPOINT job")?;
            let before = state.frontier.clone();
            let before_count = state.appended_since_checkpoint;
            let before_index = state.pending_index.mark();
            // A panicking job (a bug) must not take the writer down: it is
            // treated as a failed job and rolled back.
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                job.run(&mut WriteCtx { conn: &mut *conn, now, audit: &mut *state })
            }))
            .unwrap_or_else(|_| {
                tracing::error!("a write job panicked; rolled back");
                false
            });
            if ok {
                // Sent with the next job's statements or the COMMIT.
                conn.batch_later("RELEASE job")?;
            } else {
                conn.batch("ROLLBACK TO job; RELEASE job")?;
                state.frontier = before;
                state.appended_since_checkpoint = before_count;
                state.pending_index.rollback(before_index);
                job.after_failure(&mut WriteCtx { conn: &mut *conn, now, audit: &mut *state })?;
                conn.sync()?;
            }
        }
        let due = state.appended_since_checkpoint > 0
            && state.leader.load(std::sync::atomic::Ordering::SeqCst)
            && (state.appended_since_checkpoint >= state.policy.every_events
                || state.last_checkpoint.1.elapsed() >= state.policy.every);
        if due {
            WriteCtx { conn: &mut *conn, now, audit: &mut *state }.checkpoint("periodic")?;
        }
        if !state.pending_index.is_empty()
            && (state.shared
                || state.pending_index.len() >= INDEX_FLUSH_SIZE
                || state.last_index_flush.elapsed() >= INDEX_FLUSH_EVERY)
        {
            WriteCtx { conn: &mut *conn, now, audit: &mut *state }.flush_index()?;
        }
        conn.batch("COMMIT")?;
        Ok(())
    })();
    state.committed(result.as_ref().map(|_| ()));
    match result {
        Ok(()) => {
            for j in jobs {
                j.finish(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; batch rolled back");
            if let Err(r) = conn.batch("ROLLBACK") {
                tracing::debug!(error = %r, "cannot roll back the failed group commit");
            }
            state.frontier = snapshot;
            (state.last_checkpoint, state.appended_since_checkpoint) = snapshot_meta;
            // A flush in this batch may have cleared entries: rebuild them
            // from the committed state if so.
            if state.pending_index.mark().1 < index_mark.1 {
                match audit_log::load_pending_index(conn) {
                    Ok(p) => state.pending_index = p,
                    Err(e) => tracing::error!(error = %e, "cannot rebuild the pending audit index"),
                }
            } else {
                state.pending_index.rollback(index_mark);
            }
            for j in jobs {
                j.finish(Err(StoreError::Unavailable(format!("commit failed: {e}"))));
            }
        }
    }
}
