//! Announcements: what must be made known to many (rule 4, EM-C3b). Each
//! announcement is an audit event, goes to the live stream every open
//! screen listens to (`GET /api/v1/events`, server-sent events), and is
//! queued in the database for every configured webhook, where a worker
//! delivers it with retries and backoff. Failed deliveries stay visible
//! (`GET /api/v1/notifications`); nothing is dropped silently.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::Stream;
use mamori_core::policy::Role;
use mamori_core::time::Timestamp;
use mamori_store::emergency;
use mamori_store::writer::WriteCtx;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::state::{AppState, Caller};

/// Who may see an announcement on their screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "who")]
pub enum Audience {
    Everyone,
    Roles(Vec<Role>),
    /// These users, plus the roles given.
    Users {
        users: Vec<String>,
        roles: Vec<Role>,
    },
}

impl Audience {
    fn admits(&self, caller: &Caller) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Roles(r) => r.iter().any(|x| caller.user.roles.contains(x)),
            Audience::Users { users, roles } => {
                users.iter().any(|u| u == caller.user.name.as_str())
                    || roles.iter().any(|x| caller.user.roles.contains(x))
            }
        }
    }
}

/// One announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    pub id: i64,
    pub event: String,
    pub drill: bool,
    pub time: String,
    pub mode: String,
    pub severity: String,
    pub message: String,
    pub detail: Value,
    /// Not shown to clients; carried beside the announcement between
    /// servers.
    #[serde(skip, default = "nobody")]
    pub audience: Audience,
}

fn nobody() -> Audience {
    Audience::Roles(Vec::new())
}

/// Records an announcement in a write job: its audit event and one
/// pending delivery per webhook. Publish it with [`publish`] after the
/// job committed.
#[allow(clippy::too_many_arguments)]
pub fn announce(
    w: &mut WriteCtx<'_>,
    st: &AppState,
    event: &str,
    drill: bool,
    severity: &str,
    message: &str,
    detail: Value,
    audience: Audience,
) -> mamori_store::Result<Announcement> {
    let mode = st.mode.get().header_value();
    let prefix = if drill { "[DRILL 訓練] " } else { "" };
    let message = format!("{prefix}{message}");
    let payload = json!({"event": event, "drill": drill, "severity": severity, "message": message, "detail": detail, "mode": mode,
                         "institution": st.cfg.institution.name, "time": w.now.to_rfc3339()});
    let channels: Vec<String> = st.cfg.notify.webhooks.iter().map(|h| format!("webhook:{}", h.name)).collect();
    let id = emergency::enqueue(w.conn, event, drill, &payload, &channels, w.now)?;
    let ctx = crate::state::RequestCtx { addr: None, request_id: None, mode: st.mode.get() };
    let mut rec = ctx.record("system", "system", "announcement", 200, w.now);
    rec.query = Some(event.to_owned());
    rec.detail = Some(json!({"notification": id, "message": message, "drill": drill}));
    w.audit(&rec)?;
    Ok(Announcement {
        id,
        event: event.to_owned(),
        drill,
        time: w.now.to_rfc3339(),
        mode,
        severity: severity.to_owned(),
        message,
        detail,
        audience,
    })
}

/// Sends committed announcements to the open screens.
pub fn publish(st: &AppState, list: impl IntoIterator<Item = Announcement>) {
    for a in list {
        if let Some(c) = st.cluster.get() {
            c.send(crate::cluster::Notice::Announce {
                audience: a.audience.clone(),
                announcement: Box::new(a.clone()),
            });
        }
        let _ = st.events.send(a);
    }
}

/// `GET /api/v1/events`: the live stream for the mode banner.
pub async fn stream(State(st): State<AppState>, caller: Caller) -> impl IntoResponse {
    let rx = st.events.subscribe();
    let mode_rx = st.mode_watch.subscribe();
    let first = json!({"mode": st.mode.get().header_value(), "state": st.mode.get()});
    let s = make_stream(rx, mode_rx, caller, first);
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn make_stream(
    mut rx: broadcast::Receiver<Announcement>,
    mut mode_rx: watch::Receiver<String>,
    caller: Caller,
    first: Value,
) -> impl Stream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let _ = tx.send(Event::default().event("mode").data(first.to_string())).await;
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(a) if a.audience.admits(&caller) => {
                        let _ = tx.send(Event::default().event("announcement").data(serde_json::to_string(&a).unwrap_or_default())).await;
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                c = mode_rx.changed() => {
                    if c.is_err() { return; }
                    let m = mode_rx.borrow().clone();
                    if tx.send(Event::default().event("mode").data(m)).await.is_err() { return; }
                }
            }
        }
    })
}

/// A tiny stream adapter: runs `f` with a sender; items come out in order.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(16);
    tokio::spawn(f(tx));
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) })
}

/// Retry delays: 1 s, doubling, at most 5 minutes; give up after 20 tries.
fn backoff(attempts: i64) -> Option<Duration> {
    if attempts >= 20 {
        return None;
    }
    Some(Duration::from_secs((1u64 << attempts.clamp(0, 9) as u32).min(300)))
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    mamori_audit::merkle::to_hex(ring::hmac::sign(&key, body).as_ref())
}

/// Delivers queued announcements to webhooks until `stop`.
pub async fn deliver(st: AppState, mut stop: watch::Receiver<bool>) {
    if st.cfg.notify.webhooks.is_empty() {
        return;
    }
    let mut clients = std::collections::HashMap::new();
    for h in &st.cfg.notify.webhooks {
        let ca = (!h.ca.is_empty()).then(|| crate::server::DataDir(st.data_dir.clone()).resolve(&h.ca));
        let secret = if h.secret_file.is_empty() {
            None
        } else {
            match std::fs::read(crate::server::DataDir(st.data_dir.clone()).resolve(&h.secret_file)) {
                Ok(s) => Some(s.trim_ascii().to_vec()),
                Err(e) => {
                    tracing::error!(webhook = %h.name, error = %e, "cannot read the webhook secret; deliveries to it will fail");
                    None
                }
            }
        };
        let mut b = reqwest::Client::builder().use_rustls_tls().https_only(true).timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            match std::fs::read(&ca).ok().and_then(|p| reqwest::Certificate::from_pem(&p).ok()) {
                Some(c) => b = b.add_root_certificate(c),
                None => tracing::error!(webhook = %h.name, ca = %ca.display(), "cannot load the webhook CA"),
            }
        }
        match b.build() {
            Ok(c) => {
                clients.insert(format!("webhook:{}", h.name), (c, h.url.clone(), secret));
            }
            Err(e) => tracing::error!(webhook = %h.name, error = %e, "cannot build the webhook client"),
        }
    }
    loop {
        if *stop.borrow() {
            return;
        }
        let now = st.store.clock().now();
        let due = st.store.read(move |c| emergency::due_deliveries(c, now, 50)).await.unwrap_or_default();
        for d in due {
            let Some((client, url, secret)) = clients.get(&d.channel) else {
                let _ = st
                    .store
                    .writer()
                    .write(
                        move |w| {
                            emergency::mark_attempt_failed(
                                w.conn,
                                d.notification,
                                &d.channel,
                                "channel no longer configured",
                                None,
                            )
                        },
                        |_, _| Ok(()),
                    )
                    .await;
                continue;
            };
            let body = serde_json::to_vec(&d.payload).unwrap_or_default();
            let mut rb = client
                .post(url)
                .header("content-type", "application/json")
                .header("x-mamori-event", d.event.as_str())
                .header("x-mamori-delivery", format!("{}", d.notification));
            if let Some(s) = secret {
                rb = rb.header("x-mamori-signature", format!("sha256={}", hmac_hex(s, &body)));
            }
            let result = rb.body(body).send().await;
            let outcome = match result {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            let (n, ch) = (d.notification, d.channel.clone());
            let r = match outcome {
                Ok(()) => {
                    st.store
                        .writer()
                        .write(move |w| emergency::mark_delivered(w.conn, n, &ch, w.now), |_, _| Ok(()))
                        .await
                }
                Err(e) => {
                    let next = backoff(d.attempts + 1)
                        .map(|b| Timestamp(st.store.clock().now().micros() + b.as_micros() as i64));
                    if next.is_none() {
                        tracing::error!(channel = %d.channel, notification = n, error = %e, "announcement delivery failed for good");
                    } else {
                        tracing::warn!(channel = %d.channel, notification = n, error = %e, "announcement delivery failed; will retry");
                    }
                    st.store
                        .writer()
                        .write(move |w| emergency::mark_attempt_failed(w.conn, n, &ch, &e, next), |_, _| Ok(()))
                        .await
                }
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "cannot record a delivery attempt");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stops() {
        assert_eq!(backoff(1), Some(Duration::from_secs(2)));
        assert_eq!(backoff(12), Some(Duration::from_secs(300)));
        assert_eq!(backoff(20), None);
    }

    #[test]
    fn hmac_known_answer() {
        // RFC 4231 test case 2
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
