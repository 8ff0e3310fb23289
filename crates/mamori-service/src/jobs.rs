//! Background work: audit forwarding, deliveries, break-glass expiry, the
//! AS2 outbox, bulk exports, snapshots, maintenance windows, detection,
//! forgetting spent OAuth codes. It runs on the
//! leader only: always on SQLite; on PostgreSQL while this server holds
//! the leader lock, stopped when it loses it.

use tokio::sync::watch;

use crate::services::Services;

/// Runs the background jobs while this server leads, until `stop` says so.
pub async fn run_while_leader(svc: Services, mut stop: watch::Receiver<bool>) {
    // A single server leads for good: the sender is kept for as long as
    // this task runs (a dropped sender would read as "stop").
    let (_single, single_rx) = watch::channel(true);
    let mut leader = match svc.cluster.get() {
        Some(c) => c.leader_watch(),
        None => single_rx,
    };
    loop {
        while !*leader.borrow_and_update() {
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                r = leader.changed() => if r.is_err() { return },
            }
        }
        let (term, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(crate::syslog::forward(svc.clone(), rx.clone())),
            tokio::spawn(crate::notify::deliver(svc.clone(), rx.clone())),
            tokio::spawn(crate::breakglass::expire(svc.clone(), rx.clone())),
            tokio::spawn(crate::exchange::outbox::run(svc.clone(), rx.clone())),
            tokio::spawn(crate::bulk::run(svc.clone(), rx.clone())),
            tokio::spawn(crate::continuity::snapshot::schedule(svc.clone(), rx.clone())),
            tokio::spawn(crate::maintenance::run(svc.clone(), rx.clone())),
            tokio::spawn(crate::oauth::purge(svc.clone(), rx.clone())),
            tokio::spawn(crate::detect::run(svc.clone(), rx)),
        ];
        let stopping = loop {
            tokio::select! {
                r = stop.changed() => if r.is_err() || *stop.borrow() { break true },
                r = leader.changed() => match r {
                    Err(_) => break true,
                    Ok(()) if !*leader.borrow() => {
                        tracing::warn!("leadership lost: stopping background work");
                        break false;
                    }
                    Ok(()) => {}
                },
            }
        };
        // Nobody may be listening any more; that is fine.
        term.send_replace(true);
        for t in tasks {
            if let Err(e) = t.await {
                tracing::error!(error = %e, "a background job ended abnormally");
            }
        }
        if stopping {
            return;
        }
    }
}

/// What `GET /healthz` reports.
#[derive(Debug, serde::Serialize)]
pub struct Health {
    /// `ok`, or `degraded` when any problem is listed (answered with 503).
    pub status: &'static str,
    /// What is wrong: the database cannot be written (its last commit
    /// failed, e.g. the disk is full or a page is damaged), or the audit
    /// log failed its last self-verification.
    pub problems: Vec<String>,
    /// The mode in force.
    pub mode: String,
    /// Events in the audit log.
    pub audit_tree_size: u64,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Whether this server runs the background work.
    pub leader: bool,
}

/// Signs a checkpoint of the audit log if one is due (the main listener
/// ticks this every second; the writer decides whether it is time).
pub async fn checkpoint_if_due(svc: &Services) -> Result<(), crate::ServiceError> {
    svc.store.writer().checkpoint_if_due().await?;
    Ok(())
}

/// Readiness: the store can be read, and its last commit succeeded.
pub async fn ready(svc: &Services) -> Result<(), String> {
    if let Err(e) = svc.store.read(|c| mamori_store::audit_log::size(c)).await {
        tracing::error!(error = %e, "readiness: the store cannot be read");
        return Err("database: cannot read".into());
    }
    match svc.store.writer().problem() {
        Some(p) => Err(format!("database: cannot write ({p})")),
        None => Ok(()),
    }
}

/// The health check: the store answers, its last commit succeeded, the
/// audit log passed its last self-verification.
pub async fn health(svc: &Services) -> Result<Health, crate::ServiceError> {
    let n = svc.store.read(|c| mamori_store::audit_log::size(c)).await?;
    let backend = match svc.store.backend() {
        mamori_store::sql::Backend::Sqlite => "sqlite",
        mamori_store::sql::Backend::Postgres => "postgres",
    };
    let mut problems = Vec::new();
    if let Some(p) = svc.store.writer().problem() {
        problems.push(format!("database: cannot write ({p})"));
    }
    if let Some(p) = svc.audit_check.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        problems.push(format!("audit log: fails verification ({p})"));
    }
    Ok(Health {
        status: if problems.is_empty() { "ok" } else { "degraded" },
        problems,
        mode: svc.mode.get().header_value(),
        audit_tree_size: n,
        backend,
        leader: svc.is_leader(),
    })
}

/// The Prometheus text of `GET /metrics`.
pub async fn metrics_text(svc: &Services) -> String {
    let size = svc.store.read(|c| mamori_store::audit_log::size(c)).await.unwrap_or(0);
    let emergency = u64::from(!svc.mode.get().is_normal());
    svc.metrics.render(&[
        ("mamori_audit_tree_size", "Number of events in the audit log.", size),
        ("mamori_emergency_declared", "1 while an emergency (or drill) is declared.", emergency),
    ])
}
