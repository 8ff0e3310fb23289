//! The outbox worker: delivers queued AS2 messages with retries and
//! backoff, verifies each signed receipt (signature against the partner's
//! certificate, Original-Message-ID, the MIC of what was signed) before it
//! records the transfer of responsibility, and fails visibly otherwise.
//! Also watches certificate expiry.

use std::time::Duration;

use mamori_core::policy::Role;
use mamori_core::time::Timestamp;
use mamori_exchange::as2::{self, Disposition, Mic, ReceivedMdn};
use mamori_exchange::client::{self, Segment, SendError};
use mamori_exchange::partner::{MdnMode, Partner, Status};
use mamori_store::exchange::{self as xs, MessageRow};
use serde_json::json;
use tokio::sync::watch;

use crate::actor::RequestCtx;
use crate::exchange::partner_of;
use crate::notify::{self, Audience};
use crate::services::Services;

/// The delay before attempt `n + 1` after `n` failed attempts.
pub fn backoff(initial: u64, max: u64, attempts: u32) -> u64 {
    let shift = attempts.saturating_sub(1).min(30);
    initial.saturating_mul(1u64 << shift).min(max)
}

/// Runs until `stop`: delivers due messages, expires overdue receipts,
/// checks certificates hourly.
pub async fn run(st: Services, mut stop: watch::Receiver<bool>) {
    let now = st.store.clock().now();
    if let Err(e) = st.store.writer().write(move |w| xs::recover_interrupted(w.conn, now), |_, _| Ok(())).await {
        tracing::error!(error = %e, "outbox: could not recover interrupted sends");
    }
    let mut last_cert_check: Option<std::time::Instant> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        if last_cert_check.is_none_or(|t| t.elapsed() > Duration::from_secs(3600)) {
            last_cert_check = Some(std::time::Instant::now());
            check_certificates(&st).await;
        }
        let now = st.store.clock().now();
        let due = st.store.read(move |c| xs::due_outbound(c, now, 8)).await.unwrap_or_default();
        let busy = !due.is_empty();
        let mut set = tokio::task::JoinSet::new();
        for m in due {
            let st = st.clone();
            set.spawn(async move { deliver(&st, m).await });
        }
        while set.join_next().await.is_some() {}
        if let Ok(over) = st.store.read(move |c| xs::overdue_mdns(c, now)).await {
            for m in over {
                let msg = format!("no receipt (MDN) within the agreed time; last state {}", m.state);
                finish_failed(&st, &m, Segment::Partner, &msg).await;
            }
        }
        if busy {
            // More may be due at once: look again without waiting.
            continue;
        }
        tokio::select! {
            _ = stop.changed() => {},
            _ = st.exchange.wake.notified() => {},
            _ = tokio::time::sleep(Duration::from_millis(500)) => {},
        }
    }
}

fn system_record(st: &Services, action: &str, status: u16, now: Timestamp) -> mamori_audit::event::AuditRecord {
    RequestCtx { addr: None, request_id: None, mode: st.mode.get() }.record("system", "system", action, status, now)
}

/// One delivery attempt.
async fn deliver(st: &Services, m: MessageRow) {
    // Claim the message (another worker may have taken it).
    let id = m.id.clone();
    let claimed = st
        .store
        .writer()
        .write(
            move |w| {
                let n = w.conn.exec(
                    "UPDATE exchange_messages SET state = 'sending', attempts = attempts + 1, updated_at = $2 WHERE id = $1 AND state IN ('queued', 'retry')",
                    mamori_store::p![id.as_str(), w.now.micros()],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                let m = xs::message(w.conn, &id)?;
                Ok(m)
            },
            |_, _| Ok(()),
        )
        .await;
    let m = match claimed {
        Ok(Some(m)) => m,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "outbox: could not claim a message");
            return;
        }
    };
    let pid = m.partner.clone();
    let mid = m.id.clone();
    let loaded = st
        .store
        .read(move |c| {
            let row = xs::partner(c, &pid)?;
            let out = xs::outbox_get(c, &mid)?;
            Ok((row, out))
        })
        .await;
    let (row, out) = match loaded {
        Ok(x) => x,
        Err(e) => {
            return attempt_failed(
                st,
                &m,
                SendError { segment: Segment::Sender, message: e.to_string(), transient: true },
            )
            .await
        }
    };
    let Some(queued) = out else {
        return finish_failed(st, &m, Segment::Sender, "the message body is missing from the outbox").await;
    };
    let Some(row) = row else {
        return finish_failed(st, &m, Segment::Sender, "the partner is no longer registered; not sent").await;
    };
    let partner = match partner_of(&row) {
        Ok(p) => p,
        Err(e) => return finish_failed(st, &m, Segment::Sender, &e.to_string()).await,
    };
    if partner.status != Status::Active {
        return finish_failed(st, &m, Segment::Sender, "the partner was suspended before delivery; not sent").await;
    }
    // A document is encrypted to, and its receipt verified with, the
    // partner's certificates: not sent once they expired. (A receipt we
    // owe the partner still goes: it is signed with our key.)
    let unusable = if m.kind == "mdn" { Vec::new() } else { partner.unusable_certificates(st.now()) };
    if !unusable.is_empty() {
        let why = format!("{}; not sent", unusable.join("; "));
        return finish_failed(st, &m, Segment::Partner, &why).await;
    }
    let timeout = Duration::from_secs(st.cfg.exchange.send_timeout_seconds);
    let client = match st.exchange.client(&partner, row.version, timeout) {
        Ok(c) => c,
        Err(e) => return finish_failed(st, &m, Segment::Sender, &format!("TLS client for the partner: {e}")).await,
    };
    let attempt = m.attempts;
    let mid = m.id.clone();
    let url = queued.url.clone().unwrap_or_else(|| partner.endpoint.clone());
    let url2 = url.clone();
    if let Err(e) = st
        .store
        .writer()
        .write(
            move |w| {
                xs::add_hop(w.conn, &mid, "handed_to_network", "path", &json!({"attempt": attempt, "url": url}), w.now)
            },
            |_, _| Ok(()),
        )
        .await
    {
        tracing::error!(error = %e, "outbox: could not record the hand-off to the network");
    }
    let outgoing = as2::Outgoing { headers: queued.headers, body: queued.body };
    let resp = client::post(&client, &url2, &outgoing, 4 << 20).await;
    match resp {
        Err(e) => attempt_failed(st, &m, e).await,
        Ok(r) if (200..300).contains(&r.status) => {
            if m.kind == "mdn" {
                return finish_delivered(st, &m, None, None).await;
            }
            let is_async = partner.profile.mdn == MdnMode::Async;
            if is_async && r.body.is_empty() {
                return awaiting_mdn(st, &m, &partner).await;
            }
            match as2::parse_mdn(
                &r.headers,
                &r.body,
                Some(&partner.signing_cert().unwrap_or_else(|_| st.exchange.identity.cert.clone())),
                &partner.profile.inbound_digests,
            ) {
                Ok(mdn) => apply_mdn(st, &m, &partner, mdn).await,
                Err(e) => {
                    finish_failed(st, &m, Segment::Partner, &format!("the receipt could not be verified: {e}")).await
                }
            }
        }
        Ok(r) => {
            let text = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
            let transient = r.status >= 500 || r.status == 429 || r.status == 408;
            let e = SendError {
                segment: Segment::Partner,
                message: format!("HTTP {} from the partner: {text}", r.status),
                transient,
            };
            attempt_failed(st, &m, e).await
        }
    }
}

/// Applies a verified receipt (synchronous or asynchronous) to an outbound message.
pub async fn apply_mdn(st: &Services, m: &MessageRow, partner: &Partner, mdn: ReceivedMdn) {
    let ours = m.mic.as_deref().and_then(Mic::parse);
    if mdn.report.original_message_id != m.message_id {
        return finish_failed(
            st,
            m,
            Segment::Partner,
            &format!("the receipt is for another message ({}), not {}", mdn.report.original_message_id, m.message_id),
        )
        .await;
    }
    let mic_ok = match (&ours, &mdn.report.mic) {
        (Some(a), Some(b)) => a.matches(b),
        _ => false,
    };
    let detail = json!({"disposition": mdn.report.disposition.short(), "mic": mdn.report.mic.as_ref().map(Mic::field),
                        "mdn_message_id": mdn.message_id, "signed": mdn.signed, "partner": partner.id});
    match &mdn.report.disposition {
        Disposition::Processed if mic_ok => finish_delivered(st, m, Some(detail), None).await,
        Disposition::Processed => {
            finish_failed(
                st,
                m,
                Segment::Partner,
                &format!(
                    "the receipt's MIC {} does not match what was signed ({}); the partner may hold altered content",
                    mdn.report.mic.as_ref().map(Mic::field).unwrap_or_else(|| "(none)".into()),
                    m.mic.clone().unwrap_or_default()
                ),
            )
            .await
        }
        Disposition::Warning(w) if w.eq_ignore_ascii_case("duplicate-document") && m.attempts > 1 => {
            // An earlier attempt arrived; its receipt was lost on the way back.
            let note = "the partner already holds this message from an earlier attempt (duplicate-document)";
            if mdn.report.mic.is_none() || mic_ok {
                finish_delivered(st, m, Some(detail), Some(note)).await
            } else {
                finish_failed(st, m, Segment::Partner, "duplicate-document with a different MIC").await
            }
        }
        Disposition::Warning(w) if mic_ok => {
            finish_delivered(st, m, Some(detail), Some(&format!("warning: {w}"))).await
        }
        d => {
            let which = match d {
                Disposition::Error(x) | Disposition::Failed(x) | Disposition::Warning(x) => x.clone(),
                Disposition::Processed => String::new(),
            };
            let explain = match which.to_ascii_lowercase().as_str() {
                "decryption-failed" => "the partner could not decrypt the message (certificate mismatch?)",
                "authentication-failed" => "the partner could not verify our signature",
                "insufficient-message-security" => "the partner requires other algorithms",
                "unknown-trading-partner" => "the partner does not know our AS2 id",
                "duplicate-document" => "the partner already had a message with this Message-ID",
                _ => "the partner could not process the message",
            };
            finish_failed(st, m, Segment::Partner, &format!("{}: {explain}", d.short())).await
        }
    }
}

async fn awaiting_mdn(st: &Services, m: &MessageRow, partner: &Partner) {
    let mut m2 = m.clone();
    let timeout = i64::from(partner.profile.async_mdn_timeout_minutes) * 60;
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                m2.state = "awaiting_mdn".into();
                m2.deadline = Some(w.now.plus_secs(timeout));
                xs::update_message(w.conn, &m2, w.now)?;
                xs::add_hop(
                    w.conn,
                    &m2.id,
                    "accepted_by_partner",
                    "partner",
                    &json!({"awaiting": "asynchronous receipt", "deadline": m2.deadline.map(|t| t.to_rfc3339())}),
                    w.now,
                )
            },
            |_, _| Ok(()),
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "outbox: could not record the hand-over");
    }
}

async fn attempt_failed(st: &Services, m: &MessageRow, e: SendError) {
    let max = st.cfg.exchange.max_attempts;
    if !e.transient || m.attempts >= i64::from(max) {
        let why = if e.transient {
            format!("{} (gave up after {} attempts)", e.message, m.attempts)
        } else {
            e.message.clone()
        };
        return finish_failed(st, m, e.segment, &why).await;
    }
    let delay = backoff(st.cfg.exchange.retry_initial_seconds, st.cfg.exchange.retry_max_seconds, m.attempts as u32);
    let mut m2 = m.clone();
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                m2.state = "retry".into();
                m2.next_attempt = Some(w.now.plus_secs(delay as i64));
                m2.failure_segment = Some(e.segment.as_str().into());
                m2.failure = Some(e.message.clone());
                xs::update_message(w.conn, &m2, w.now)?;
                xs::add_hop(w.conn, &m2.id, "attempt_failed", e.segment.as_str(),
                    &json!({"attempt": m2.attempts, "error": e.message, "retry_at": m2.next_attempt.map(|t| t.to_rfc3339())}), w.now)
            },
            |_, _| Ok(()),
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "outbox: could not record a failed attempt");
    }
}

async fn finish_delivered(st: &Services, m: &MessageRow, detail: Option<serde_json::Value>, note: Option<&str>) {
    let mut m2 = m.clone();
    let note = note.map(str::to_owned);
    let st2 = st.clone();
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                m2.state = "delivered".into();
                m2.failure = None;
                m2.failure_segment = None;
                m2.next_attempt = None;
                m2.deadline = None;
                m2.mdn = detail.as_ref().and_then(|d| d["disposition"].as_str().map(str::to_owned)).or(m2.mdn.clone());
                xs::update_message(w.conn, &m2, w.now)?;
                xs::outbox_delete(w.conn, &m2.id)?;
                if let Some(d) = &detail {
                    xs::add_hop(w.conn, &m2.id, "mdn_received", "partner", d, w.now)?;
                    xs::add_hop(w.conn, &m2.id, "mdn_verified", "sender",
                        &json!({"signature": "verified against the partner's registered certificate", "mic_matches": true, "note": note}), w.now)?;
                    xs::add_hop(w.conn, &m2.id, "responsibility_transferred", &m2.partner, &json!({"to": m2.partner}), w.now)?;
                } else {
                    xs::add_hop(w.conn, &m2.id, "delivered", &m2.partner, &json!({"kind": m2.kind}), w.now)?;
                }
                let mut rec = system_record(&st2, if m2.kind == "mdn" { "exchange-mdn-delivered" } else { "exchange-delivered" }, 200, w.now);
                rec.patients = m2.patient.iter().cloned().collect();
                rec.detail = Some(json!({"message": m2.id, "message_id": m2.message_id, "partner": m2.partner, "mdn": m2.mdn, "note": note}));
                w.audit(&rec)?;
                Ok(())
            },
            |_, _| Ok(()),
        )
        .await;
    if let Err(e) = r {
        tracing::error!(error = %e, "outbox: could not record a delivery");
    }
}

/// Records a final failure, visibly: the ledger, the audit log, an alert
/// and a notice to the sender.
pub async fn finish_failed(st: &Services, m: &MessageRow, segment: Segment, why: &str) {
    let mut m2 = m.clone();
    let why = why.to_owned();
    let st2 = st.clone();
    let r = st
        .store
        .writer()
        .write(
            move |w| {
                m2.state = "failed".into();
                m2.failure_segment = Some(segment.as_str().into());
                m2.failure = Some(why.clone());
                m2.next_attempt = None;
                m2.deadline = None;
                xs::update_message(w.conn, &m2, w.now)?;
                xs::outbox_delete(w.conn, &m2.id)?;
                xs::add_hop(w.conn, &m2.id, "failed", segment.as_str(), &json!({"reason": why, "attempts": m2.attempts}), w.now)?;
                let mut rec = system_record(&st2, "exchange-failed", 502, w.now);
                rec.patients = m2.patient.iter().cloned().collect();
                rec.detail = Some(json!({"message": m2.id, "message_id": m2.message_id, "partner": m2.partner, "segment": segment.as_str(), "reason": why}));
                w.audit(&rec)?;
                let msg = format!(
                    "連携先 {} への送信に失敗しました（区間: {}）/ Sending to partner {} failed (segment: {}): {}",
                    m2.partner, segment.as_str(), m2.partner, segment.as_str(), why
                );
                let aid = mamori_store::emergency::insert_alert(w.conn, "exchange-failed", "warning", &msg,
                    &json!({"message": m2.id, "partner": m2.partner}), w.now)?;
                notify::announce(w, &st2, "exchange-failed", false, "warning", &msg, json!({"message": m2.id, "alert": aid}),
                    Audience::Users { users: vec![m2.created_by.clone()], roles: vec![Role::Admin] })
            },
            |_, _| Ok(()),
        )
        .await;
    match r {
        Ok(a) => notify::publish(st, [a]),
        Err(e) => tracing::error!(error = %e, "outbox: could not record a failure"),
    }
}

/// Warns ahead of certificate expiry (partners' and ours), once a day each.
pub async fn check_certificates(st: &Services) {
    let rows = st.store.read(xs::partners).await.unwrap_or_default();
    let now = st.store.clock().now();
    let days = st.cfg.exchange.cert_expiry_warn_days;
    let mut warnings: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let Ok(p) = partner_of(r) else { continue };
        if p.status != Status::Active {
            continue;
        }
        for c in p.expiring(now, days) {
            warnings.push((
                format!("partner-cert:{}:{}", p.id, c.sha256),
                format!(
                    "連携先 {} の証明書（{}）が {} に期限切れになります / Partner {}'s {} certificate expires on {}",
                    p.id, c.role, c.not_after, p.id, c.role, c.not_after
                ),
            ));
        }
    }
    let own = [
        (
            "signing",
            st.exchange
                .identity
                .cert
                .to_pem()
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
        ),
        ("tls", st.exchange.tls_cert_pem.clone()),
        ("tls_ca", st.exchange.ca_pem.clone()),
    ];
    for (role, pem) in own {
        for c in mamori_exchange::partner::cert_infos("own", &pem).unwrap_or_default() {
            if c.not_after_unix <= now.secs() + days * 86_400 {
                warnings.push((
                    format!("own-cert:{}", c.sha256),
                    format!(
                        "当院の{}証明書が {} に期限切れになります / Our {} certificate expires on {}",
                        role, c.not_after, role, c.not_after
                    ),
                ));
            }
        }
    }
    for (kind, msg) in warnings {
        let k2 = kind.clone();
        let since = now.plus_secs(-86_400);
        let recent = st.store.read(move |c| mamori_store::emergency::recent_alert(c, &k2, since)).await.unwrap_or(true);
        if !recent {
            crate::notify::raise_alert(st, &kind, "warning", &msg, json!({"check": "certificate-expiry"})).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::backoff;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        assert_eq!(backoff(30, 3600, 1), 30);
        assert_eq!(backoff(30, 3600, 2), 60);
        assert_eq!(backoff(30, 3600, 5), 480);
        assert_eq!(backoff(30, 3600, 9), 3600);
        assert_eq!(backoff(30, 3600, 200), 3600);
    }
}
