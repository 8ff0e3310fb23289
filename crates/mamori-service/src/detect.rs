//! Detection assistance: mamori raises a "possible emergency" alert to the
//! deciders when it sees its database failing, its audit log failing
//! verification, a stored record that does not match the digest its audit
//! event bound, or a mass-modification rate typical of ransomware or a
//! stolen account. It never declares an emergency itself; the alert offers
//! the plan's matching criteria (see `GET /api/v1/alerts`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mamori_store::{audit_log, emergency};
use serde_json::json;
use tokio::sync::watch;

use crate::notify::raise_alert;
use crate::services::Services;

const EVERY: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_secs(600);

/// Watches for possible emergencies every 10 seconds until `stop` changes,
/// and raises an alert (at most one per cause every 10 minutes) when the
/// database cannot be written, a user modifies more records per minute than
/// the plan's threshold, or the audit log fails its periodic verification.
pub async fn run(st: Services, mut stop: watch::Receiver<bool>) {
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut last_verify = Instant::now();
    let verify_every = Duration::from_secs(st.cfg.audit.self_verify_minutes.max(1) * 60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.changed() => return,
        }
        let mut fire = |key: String| -> bool {
            match last.get(&key) {
                Some(t) if t.elapsed() < QUIET => false,
                _ => {
                    last.insert(key, Instant::now());
                    true
                }
            }
        };
        // 1. The database: can the writer still commit?
        if let Err(e) = st.store.writer().checkpoint_if_due().await {
            if fire("database".into()) {
                raise_alert(
                    &st,
                    "possible-emergency",
                    "critical",
                    &format!("データベースに書き込めません / The database cannot be written: {e}"),
                    json!({"cause": "system_failure", "source": "database"}),
                )
                .await;
            }
            continue;
        }
        // 2. Mass modification by one account.
        let now = st.store.clock().now();
        let threshold = st
            .store
            .read(|c| emergency::current_plan(c).map(|(_, p)| p.detection.mass_modification_per_minute))
            .await
            .unwrap_or(600);
        let since = now.micros() - 60_000_000;
        let heavy = st
            .store
            .read(move |c| {
                let rows = c.query(
                    "SELECT agent, COUNT(*) FROM audit_events WHERE time >= $1 AND action IN ('create', 'update', 'delete') AND status < 400 GROUP BY agent HAVING COUNT(*) > $2",
                    mamori_store::p![since, i64::from(threshold)],
                )?;
                rows.iter().map(|r| Ok((r.text(0)?, r.i64(1)?))).collect::<Result<Vec<_>, mamori_store::StoreError>>()
            })
            .await
            .unwrap_or_default();
        for (agent, n) in heavy {
            if fire(format!("mass:{agent}")) {
                raise_alert(
                    &st,
                    "possible-emergency",
                    "critical",
                    &format!("{agent} が1分間に{n}件を変更しました（閾値 {threshold}）。ランサムウェアまたはアカウント乗っ取りの可能性 / {agent} changed {n} records in one minute (threshold {threshold}): possible ransomware or a stolen account"),
                    json!({"cause": "cyber_attack", "source": "mass-modification", "user": agent, "count": n, "threshold": threshold}),
                )
                .await;
            }
        }
        // 3. The audit log verifies against its own signed checkpoints.
        if last_verify.elapsed() >= verify_every {
            last_verify = Instant::now();
            let dd = crate::init::DataDir(st.data_dir.clone());
            if let Ok((_, vkey)) = crate::init::load_signer(&dd) {
                let origin = st.cfg.audit.origin.clone();
                let r = st.store.read(move |c| audit_log::verify(c, None, &vkey, &origin, false)).await;
                let problem = match r {
                    Ok(rep) if rep.ok() => None,
                    Ok(rep) => rep.findings.first().map(ToString::to_string),
                    Err(e) => Some(e.to_string()),
                };
                *st.audit_check.lock().unwrap_or_else(|e| e.into_inner()) = problem.clone();
                if let Some(p) = problem {
                    if fire("audit".into()) {
                        raise_alert(&st, "possible-emergency", "critical", &format!("監査ログの検証に失敗しました（改ざんの可能性）/ The audit log fails verification (possible tampering): {p}"), json!({"cause": "cyber_attack", "source": "audit-verify", "finding": p})).await;
                    }
                    continue;
                }
            }
            // 4. A sample of stored records matches what the log binds.
            if let Some(p) = check_records(&st).await {
                if fire("records".into()) {
                    raise_alert(&st, "possible-emergency", "critical", &format!("保存された診療記録が監査ログと一致しません（改ざんの可能性）/ A stored record does not match the audit log (possible tampering): {p}"), json!({"cause": "cyber_attack", "source": "record-integrity", "finding": p})).await;
                }
            }
        }
    }
}

/// Checks the record versions bound by a random window of
/// `audit.record_sample_events` events against the stored bytes (the
/// periodic sample of `mamori audit verify --deep`). Returns the first
/// problem found, which `/healthz` then reports until a later check of the
/// whole log passes; `None` when the sample matches.
pub async fn check_records(st: &Services) -> Option<String> {
    let count = st.cfg.audit.record_sample_events;
    if count == 0 {
        return None;
    }
    let size = st.store.read(|c| audit_log::size(c)).await.ok()?;
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return None;
    }
    let from = if size > count { u64::from_le_bytes(b) % (size - count + 1) } else { 0 };
    let r = st.store.read(move |c| audit_log::check_record_sample(c, from, count)).await;
    let problem = match r {
        Ok((n, problems)) => {
            tracing::debug!(events = count, from, versions = n, "record sample checked");
            problems.into_iter().next()
        }
        Err(e) => Some(format!("the record sample could not be read: {e}")),
    };
    if let Some(p) = &problem {
        tracing::error!(problem = %p, "a stored record does not match the audit log");
        *st.audit_check.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
    }
    problem
}
