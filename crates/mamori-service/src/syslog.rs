//! Streams the audit log to an IHE ATNA collector: RFC 5424 messages over
//! TLS with RFC 5425 octet-counting framing, in log order, at least once.
//!
//! A cursor in the database records how far delivery got; after a restart
//! or a collector outage, sending resumes from it. RFC 5425 has no
//! acknowledgement, so after a reconnect the last `resend_window` events
//! are sent again; each message carries its log index in structured data
//! (`[mamori@32473 index="..."]`) so the collector can drop duplicates.

use std::sync::Arc;
use std::time::Duration;

use mamori_audit::event::AuditRecord;
use mamori_audit::fhir::to_audit_event;
use mamori_store::audit_log;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;

use crate::config::SyslogSection;
use crate::services::Services;

pub(crate) const CURSOR: &str = "syslog";
const BATCH: usize = 200;

/// One RFC 5424 message for an event (without the length prefix).
pub fn format_message(index: u64, r: &AuditRecord, hostname: &str, origin: &str) -> String {
    // facility 10 (security/authorization), severity notice (5) or warning (4)
    let pri = 10 * 8 + if r.status < 400 { 5 } else { 4 };
    let sd_escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace(']', "\\]");
    let body = to_audit_event(index, r, origin).to_string();
    format!(
        "<{pri}>1 {} {} mamori - AUDIT [mamori@32473 index=\"{index}\" origin=\"{}\" action=\"{}\" user=\"{}\"] \u{feff}{body}",
        r.time,
        if hostname.is_empty() { "-" } else { hostname },
        sd_escape(origin),
        sd_escape(&r.action),
        sd_escape(&r.agent.user),
    )
}

fn connector(cfg: &SyslogSection, data: &std::path::Path) -> Result<TlsConnector, String> {
    let resolve =
        |p: &str| if std::path::Path::new(p).is_absolute() { std::path::PathBuf::from(p) } else { data.join(p) };
    let mut roots = rustls::RootCertStore::empty();
    for c in crate::tls::load_certs(&resolve(&cfg.ca)).map_err(|e| e.to_string())? {
        roots.add(c).map_err(|e| e.to_string())?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(crate::tls::provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = if cfg.client_cert.is_empty() {
        b.with_no_client_auth()
    } else {
        let certs = crate::tls::load_certs(&resolve(&cfg.client_cert)).map_err(|e| e.to_string())?;
        let key = crate::tls::load_key(&resolve(&cfg.client_key)).map_err(|e| e.to_string())?;
        b.with_client_auth_cert(certs, key).map_err(|e| e.to_string())?
    };
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// Runs until `stop` changes.
pub async fn forward(st: Services, mut stop: watch::Receiver<bool>) {
    let cfg = st.cfg.syslog.clone();
    if cfg.collector.is_empty() {
        return;
    }
    let hostname = if !cfg.hostname.is_empty() {
        cfg.hostname.clone()
    } else if !st.cfg.institution.id.is_empty() {
        st.cfg.institution.id.clone()
    } else {
        "mamori".into()
    };
    let origin = st.cfg.audit.origin.clone();
    let tls = match connector(&cfg, &st.data_dir) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "syslog: cannot configure TLS; audit streaming is OFF");
            return;
        }
    };
    let host =
        cfg.collector.rsplit_once(':').map_or(cfg.collector.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let Ok(name) = ServerName::try_from(host.clone()) else {
        tracing::error!(collector = %cfg.collector, "syslog: invalid collector host name");
        return;
    };
    let mut backoff = Duration::from_millis(250);
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        // Connect.
        let conn = async {
            let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&cfg.collector))
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())?;
            tokio::time::timeout(Duration::from_secs(10), tls.connect(name.clone(), tcp))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| e.to_string())
        }
        .await;
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(collector = %cfg.collector, error = %e, retry_in_ms = backoff.as_millis() as u64, "syslog: collector unreachable; events are kept and will be sent");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        // Where to resume: the cursor, minus the resend window after an
        // outage (not on the very first connection of a clean start).
        let cursor = st.store.read(|c| audit_log::get_cursor(c, CURSOR)).await.ok().flatten().unwrap_or(-1);
        let mut next = if first { cursor } else { (cursor - i64::try_from(cfg.resend_window).unwrap_or(0)).max(-1) };
        first = false;
        tracing::info!(collector = %cfg.collector, from = next + 1, "syslog: connected; streaming the audit log");
        // The collector never sends; a read that ends means it closed.
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
        let watcher = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut sink = [0u8; 512];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
            // Fails only when the stream below has already given up on
            // this connection.
            closed_tx.send(()).ok();
        });
        // Sent but not yet counted as delivered: (last index, when sent).
        let mut pending: std::collections::VecDeque<(i64, tokio::time::Instant)> = std::collections::VecDeque::new();
        loop {
            if *stop.borrow() {
                // A clean stop: the connection was up until now.
                if let Some((last, _)) = pending.back() {
                    save_cursor(&st, *last).await;
                }
                if let Err(e) = wr.shutdown().await {
                    tracing::debug!(error = %e, "syslog: the connection did not close cleanly at stop");
                }
                watcher.abort();
                return;
            }
            if closed.try_recv().is_ok() {
                tracing::warn!(collector = %cfg.collector, "syslog: the collector closed the connection; reconnecting and re-sending");
                break;
            }
            settle(&st, &mut pending).await;
            let after = next;
            let rows = st
                .store
                .read(move |c| {
                    let rows = c.query(
                        "SELECT seq, leaf FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2",
                        mamori_store::p![after, BATCH],
                    )?;
                    rows.iter()
                        .map(|r| Ok((r.u64(0)?, r.blob(1)?)))
                        .collect::<Result<Vec<_>, mamori_store::StoreError>>()
                })
                .await;
            let rows = match rows {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "syslog: cannot read the audit log");
                    break;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            let mut buf = Vec::with_capacity(rows.len() * 1200);
            let mut last = next;
            for (seq, leaf) in &rows {
                let Ok(rec) = AuditRecord::from_leaf(leaf) else {
                    tracing::error!(index = seq, "syslog: unreadable event; run `mamori audit verify`");
                    continue;
                };
                let msg = format_message(*seq, &rec, &hostname, &origin);
                buf.extend_from_slice(format!("{} ", msg.len()).as_bytes());
                buf.extend_from_slice(msg.as_bytes());
                last = i64::try_from(*seq).unwrap_or(i64::MAX);
            }
            if let Err(e) = async {
                wr.write_all(&buf).await?;
                wr.flush().await
            }
            .await
            {
                tracing::warn!(error = %e, "syslog: connection lost; reconnecting");
                break;
            }
            next = last;
            pending.push_back((last, tokio::time::Instant::now()));
        }
        watcher.abort();
    }
}

/// How long a connection must stay up after a write before what was
/// written counts as delivered.
const SETTLE: Duration = Duration::from_millis(300);

/// A batch counts as delivered once the connection has stayed up for
/// [`SETTLE`] after it was written: saves the newest such batch's index.
async fn settle(st: &Services, pending: &mut std::collections::VecDeque<(i64, tokio::time::Instant)>) {
    let mut done = None;
    while let Some((last, at)) = pending.front() {
        if at.elapsed() < SETTLE {
            break;
        }
        done = Some(*last);
        pending.pop_front();
    }
    if let Some(last) = done {
        save_cursor(st, last).await;
    }
}

async fn save_cursor(st: &Services, last: i64) {
    let r = st.store.writer().write(move |w| audit_log::set_cursor(w.conn, CURSOR, last), |_, _| Ok(())).await;
    if let Err(e) = r {
        tracing::error!(error = %e, "syslog: cannot save the delivery cursor");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mamori_audit::event::Agent;

    #[test]
    fn rfc5424_shape() {
        let r = AuditRecord {
            time: "2026-11-26T09:00:00.000Z".into(),
            mode: "normal".into(),
            agent: Agent { user: "dr\"x".into(), kind: "staff".into(), ..Default::default() },
            action: "read".into(),
            entity: None,
            patients: vec![],
            status: 403,
            basis: None,
            purpose: None,
            request: None,
            query: None,
            detail: None,
            versions: Vec::new(),
        };
        let m = format_message(42, &r, "host1", "o/audit");
        assert!(m.starts_with("<84>1 2026-11-26T09:00:00.000Z host1 mamori - AUDIT [mamori@32473 index=\"42\" origin=\"o/audit\" action=\"read\" user=\"dr\\\"x\"] \u{feff}{"), "{m}");
        let json = m.split('\u{feff}').nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["resourceType"], "AuditEvent");
    }
}
