//! Announcements: what must be made known to many (rule 4, EM-C3b). Each
//! announcement is an audit event, goes to the live stream every open
//! screen listens to ([`live`]), and is queued in the database for the
//! configured webhooks, where a worker delivers it with retries and
//! backoff. Failed deliveries stay visible (the delivery records); nothing
//! is dropped silently. Announcements meant for named people (a
//! break-glass use names a patient) never leave for webhooks.

use std::time::Duration;

use mamori_core::policy::{told, Notice, Role};
use mamori_core::time::Timestamp;
use mamori_store::emergency;
use mamori_store::writer::WriteCtx;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use crate::actor::{Actor, RequestCtx};
use crate::init::DataDir;
use crate::services::Services;

/// Who may see an announcement on their screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "who")]
pub enum Audience {
    /// Every signed-in user.
    Everyone,
    /// The holders of any of these roles.
    Roles(Vec<Role>),
    /// These users, plus the roles given.
    Users {
        /// The users (user names).
        users: Vec<String>,
        /// The roles whose holders see it too.
        roles: Vec<Role>,
    },
}

impl Audience {
    /// Whether `actor` sees the announcement on its screen.
    pub fn admits(&self, actor: &Actor) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Roles(r) => r.iter().any(|x| actor.user.roles.contains(x)),
            Audience::Users { users, roles } => {
                users.iter().any(|u| u == actor.name()) || roles.iter().any(|x| actor.user.roles.contains(x))
            }
        }
    }
    /// Whether the announcement goes to the configured webhooks (outside
    /// the hospital's screens): not when it is meant for named people.
    fn leaves_for_webhooks(&self) -> bool {
        !matches!(self, Audience::Users { .. })
    }
}

/// One announcement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Announcement {
    /// The notification's id in the outbox; 0 if it could not be recorded.
    pub id: i64,
    /// What happened (`emergency-declared`, `alert-<kind>`, ...).
    pub event: String,
    /// Whether it is part of a drill.
    pub drill: bool,
    /// When it was made (RFC 3339).
    pub time: String,
    /// The mode in force then (the `Mamori-Mode` header's value).
    pub mode: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The text shown (marked `[DRILL 訓練]` in a drill).
    pub message: String,
    /// Structured detail.
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
    st: &Services,
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
    let channels: Vec<String> = if audience.leaves_for_webhooks() {
        st.cfg.notify.webhooks.iter().map(|h| format!("webhook:{}", h.name)).collect()
    } else {
        Vec::new()
    };
    let id = emergency::enqueue(w.conn, event, drill, &payload, &channels, w.now)?;
    let mut rec = RequestCtx::background(st.mode.get()).record("system", "system", "announcement", 200, w.now);
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
pub(crate) fn publish(st: &Services, list: impl IntoIterator<Item = Announcement>) {
    for a in list {
        if let Some(c) = st.cluster.get() {
            c.send(crate::cluster::Notice::Announce {
                audience: a.audience.clone(),
                announcement: Box::new(a.clone()),
            });
        }
        // Fails only when no screen is open: nobody to tell.
        st.events.send(a).ok();
    }
}

/// Raises an alert: stored, and announced to the roles told of alerts.
/// If the database itself fails, the open screens are still told.
pub async fn raise_alert(st: &Services, kind: &str, severity: &str, message: &str, detail: Value) {
    let st2 = st.clone();
    let (k, s, m) = (kind.to_owned(), severity.to_owned(), message.to_owned());
    let audience = || Audience::Roles(told(Notice::Alert));
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                let id = emergency::insert_alert(w.conn, &k, &s, &m, &detail, w.now)?;
                let mut d = detail.clone();
                if let Some(o) = d.as_object_mut() {
                    o.insert("alert".into(), json!(id));
                }
                announce(w, &st2, &format!("alert-{k}"), st2.mode.get().is_drill(), &s, &m, d, audience())
            },
            |_: &mamori_store::StoreError, _| Ok(()),
        )
        .await;
    match r {
        Ok(a) => publish(st, [a]),
        Err(e) => {
            tracing::error!(error = %e, kind, message, "could not record an alert");
            // Fails only when no screen is open: nobody to tell.
            st.events
                .send(Announcement {
                    id: 0,
                    event: format!("alert-{kind}"),
                    drill: false,
                    time: st.now().to_rfc3339(),
                    mode: st.mode.get().header_value(),
                    severity: severity.to_owned(),
                    message: message.to_owned(),
                    detail: json!({"unrecorded": true}),
                    audience: audience(),
                })
                .ok();
        }
    }
}

/// One item of the live stream an open screen listens to.
#[derive(Debug, Clone)]
pub enum LiveEvent {
    /// The mode in force (JSON: `{"mode": header value, "state": mode}`).
    Mode(String),
    /// An announcement the actor may see.
    Announcement(Box<Announcement>),
}

/// The live stream for `actor`: the mode now, then every mode change and
/// every announcement its audience admits, until the receiver is dropped.
pub fn live(st: &Services, actor: Actor) -> tokio::sync::mpsc::Receiver<LiveEvent> {
    let mut rx = st.events.subscribe();
    let mut mode_rx = st.mode_watch.subscribe();
    let first = json!({"mode": st.mode.get().header_value(), "state": st.mode.get()}).to_string();
    let (tx, out) = tokio::sync::mpsc::channel::<LiveEvent>(16);
    tokio::spawn(async move {
        if tx.send(LiveEvent::Mode(first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(a) if a.audience.admits(&actor) => {
                        if tx.send(LiveEvent::Announcement(Box::new(a))).await.is_err() { return; }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return,
                },
                c = mode_rx.changed() => {
                    if c.is_err() { return; }
                    let m = mode_rx.borrow().clone();
                    if tx.send(LiveEvent::Mode(m)).await.is_err() { return; }
                }
                () = tx.closed() => return,
            }
        }
    });
    out
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
pub async fn deliver(st: Services, mut stop: watch::Receiver<bool>) {
    if st.cfg.notify.webhooks.is_empty() {
        return;
    }
    let mut clients = std::collections::HashMap::new();
    for h in &st.cfg.notify.webhooks {
        let ca = (!h.ca.is_empty()).then(|| DataDir(st.data_dir.clone()).resolve(&h.ca));
        let secret = if h.secret_file.is_empty() {
            None
        } else {
            match std::fs::read(DataDir(st.data_dir.clone()).resolve(&h.secret_file)) {
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
                if let Err(e) = st
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
                        |_: &mamori_store::StoreError, _| Ok(()),
                    )
                    .await
                {
                    tracing::error!(error = %e, "cannot record a delivery attempt");
                }
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
                        .write(
                            move |w| emergency::mark_delivered(w.conn, n, &ch, w.now),
                            |_: &mamori_store::StoreError, _| Ok(()),
                        )
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
                        .write(
                            move |w| emergency::mark_attempt_failed(w.conn, n, &ch, &e, next),
                            |_: &mamori_store::StoreError, _| Ok(()),
                        )
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
