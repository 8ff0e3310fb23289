//! Several mamori servers on one PostgreSQL database.
//!
//! - **Leader.** One server at a time holds a session-level advisory lock
//!   ([`mamori_store::pg::TRY_LEADER_LOCK_SQL`]) on a connection of its own. The
//!   leader signs the periodic audit checkpoints and runs the background
//!   work (outbox delivery, announcements to webhooks, syslog forwarding,
//!   break-glass expiry, scheduled snapshots, maintenance and attack
//!   detection scans), so each of these runs once. When the leader dies,
//!   PostgreSQL releases its lock with its connection and another server
//!   takes it within about a second.
//! - **Change notices.** A mode change, a change of the partner registry
//!   (the AS2 listener's trust) and an announcement to open screens are sent to the other servers with `NOTIFY mamori`; each server
//!   LISTENs and applies them (the mode is re-read from the database, never
//!   taken from the message). Login tokens are not cached on PostgreSQL,
//!   so a revocation on one server holds on every server for the next
//!   request, with no notice to wait for.
//!
//! Appends to the audit log need neither: every write transaction takes a
//! transaction-level advisory lock, so servers integrate their events into
//! the one Merkle tree in turn (see `mamori_store::writer`).
//!
//! On SQLite there is one server: it is always the leader and nothing is
//! sent.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mamori_store::pg::{channel, PgConn, TRY_LEADER_LOCK_SQL};
use mamori_store::sql::Conn;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use crate::notify::{Announcement, Audience};
use crate::services::Services;

/// What servers tell each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// The mode changed: re-read it from the database.
    Mode,
    /// The partner registry changed: rebuild the AS2 listener's trust.
    Partners,
    /// An announcement for open screens.
    Announce {
        /// The announcement.
        announcement: Box<Announcement>,
        /// Who may see it (not part of the announcement's JSON).
        audience: Audience,
    },
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending server (its own notices are ignored).
    from: String,
    #[serde(flatten)]
    notice: Notice,
}

/// This server's link to the others.
pub struct Cluster {
    id: String,
    out: Option<std::sync::mpsc::Sender<String>>,
    leader: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
}

impl Cluster {
    /// Whether this server is the leader now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Follows leadership changes.
    pub fn leader_watch(&self) -> watch::Receiver<bool> {
        self.leader.clone()
    }

    /// Tells the other servers (no-op on SQLite).
    pub fn send(&self, notice: Notice) {
        let Some(out) = &self.out else { return };
        match serde_json::to_string(&Envelope { from: self.id.clone(), notice }) {
            // NOTIFY payloads are limited to 8000 bytes.
            Ok(s) if s.len() < 7900 => {
                if out.send(s).is_err() {
                    tracing::debug!("the cluster thread has stopped; notice not sent to the other servers");
                }
            }
            Ok(_) => tracing::warn!("cluster notice too large to send; other servers will not show it"),
            Err(e) => tracing::error!(error = %e, "cannot encode a cluster notice"),
        }
    }

    /// Stops the listener thread (at shutdown; the leader lock is released
    /// with its connection).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A server dropped without a shutdown (an embedding test, a failed start)
/// must not leave its cluster thread running: the thread holds the store,
/// and with it every PostgreSQL connection of the server.
impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts leader election and the change listener when the store is on
/// PostgreSQL; returns the link and the receiver of incoming notices.
pub fn start(url: &str, store: mamori_store::Store) -> (Cluster, mpsc::UnboundedReceiver<Notice>) {
    let id = format!("{:016x}", rand_u64());
    let (out_tx, out_rx) = std::sync::mpsc::channel::<String>();
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let (leader_tx, leader_rx) = watch::channel(false);
    let stop = Arc::new(AtomicBool::new(false));
    let url = url.to_owned();
    let me = id.clone();
    let stop2 = stop.clone();
    let spawned = std::thread::Builder::new().name("mamori-cluster".into()).spawn(move || {
        listen_loop(&url, &me, &store, &out_rx, &in_tx, &leader_tx, &stop2);
        store.set_leader(false);
        // Fails only when the Cluster (holding the receiver) is gone.
        leader_tx.send(false).ok();
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the cluster thread; this server will not lead");
    }
    (Cluster { id, out: Some(out_tx), leader: leader_rx, stop }, in_rx)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // Servers with equal ids would ignore each other's notices.
        tracing::warn!("no random bytes for this server's cluster id");
    }
    u64::from_le_bytes(b)
}

fn listen_loop(
    url: &str,
    me: &str,
    store: &mamori_store::Store,
    out: &std::sync::mpsc::Receiver<String>,
    incoming: &mpsc::UnboundedSender<Notice>,
    leader: &watch::Sender<bool>,
    stop: &AtomicBool,
) {
    // The leader's lock lives as long as this connection. If a server's
    // host vanishes without closing it, keepalives on both ends bound how
    // long: this side gives leadership up after ~11 s of silence (client
    // keepalives), and PostgreSQL drops the session, freeing the lock for
    // another server, after ~25 s (server keepalives), so the two never
    // overlap.
    let url = if url.contains("keepalives") {
        url.to_owned()
    } else {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}keepalives_idle=5&keepalives_interval=2&keepalives_retries=3")
    };
    while !stop.load(Ordering::SeqCst) {
        let mut conn = match PgConn::connect(&url) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cluster connection failed; retrying");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) =
            conn.batch("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
        {
            tracing::warn!(error = %e, "cannot set keepalives on the cluster connection");
        }
        // One channel per schema: other deployments in the same database
        // never see this one's notices.
        let chan = match conn.query_one("SELECT current_schema()", mamori_store::p![]) {
            Ok(Some(r)) => channel(&r.text(0).unwrap_or_default()),
            _ => {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = conn.batch(&format!("LISTEN {chan}")) {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        // Changes missed while disconnected: re-read what is cached. The
        // sends fail only when the receiving task has ended (shutdown).
        incoming.send(Notice::Mode).ok();
        incoming.send(Notice::Partners).ok();
        let mut is_leader = false;
        let r = (|| -> Result<(), String> {
            while !stop.load(Ordering::SeqCst) {
                if !is_leader {
                    let got = conn
                        .query_one(TRY_LEADER_LOCK_SQL, mamori_store::p![])
                        .map_err(|e| e.to_string())?
                        .map(|r| r.bool(0))
                        .transpose()
                        .map_err(|e| e.to_string())?
                        .unwrap_or(false);
                    if got {
                        is_leader = true;
                        store.set_leader(true);
                        // Fails only when the Cluster (holding the receiver) is gone.
                        leader.send(true).ok();
                        tracing::info!("this server is now the leader");
                    }
                }
                while let Ok(payload) = out.try_recv() {
                    conn.query("SELECT pg_notify($1, $2)", mamori_store::p![chan.as_str(), payload])
                        .map_err(|e| e.to_string())?;
                }
                if conn.is_closed() {
                    return Err("connection closed".into());
                }
                for (_, payload) in conn.notifications(Duration::from_millis(100)).map_err(|e| e.to_string())? {
                    match serde_json::from_str::<Envelope>(&payload) {
                        Ok(env) if env.from != me => {
                            // Fails only when the receiving task has ended (shutdown).
                            incoming.send(env.notice).ok();
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "unreadable cluster notice ignored"),
                    }
                }
            }
            Ok(())
        })();
        if is_leader {
            store.set_leader(false);
            // Fails only when the Cluster (holding the receiver) is gone.
            leader.send(false).ok();
            tracing::warn!("leadership given up");
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "cluster connection lost; reconnecting");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Applies notices from the other servers until the channel closes.
pub async fn apply(state: Services, mut rx: mpsc::UnboundedReceiver<Notice>) {
    while let Some(n) = rx.recv().await {
        match n {
            Notice::Mode => match state.store.read(mamori_store::emergency::current_mode).await {
                Ok(m) => state.set_mode_local(m),
                Err(e) => tracing::error!(error = %e, "cannot re-read the mode after a notice"),
            },
            Notice::Partners => crate::exchange::reload(&state).await,
            Notice::Announce { mut announcement, audience } => {
                announcement.audience = audience;
                // Fails only when no screen is open: nobody to tell.
                state.events.send(*announcement).ok();
            }
        }
    }
}
