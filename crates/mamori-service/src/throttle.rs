//! Throttling of failed logins per source address. The lock of an account
//! (after `auth.max_failed_logins`) protects its password, but anyone could
//! lock any account at will, and guess across many accounts at once. The
//! source is slowed first: after `auth.source_free_failures` failed logins
//! within `auth.source_window_minutes`, each further failure doubles a
//! waiting time (1 s, 2 s, 4 s, ... up to `auth.source_max_block_minutes`)
//! during which every login from that address is answered 429 with
//! `Retry-After`, without looking at the account. Kept in memory, per
//! server (several servers each throttle what they see).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; beyond, sources without a recent failure are dropped.
const MAX_SOURCES: usize = 100_000;

/// Failed logins per source address.
pub struct Throttle {
    free: usize,
    window: Duration,
    max_block: Duration,
    sources: Mutex<HashMap<String, Source>>,
}

#[derive(Default)]
struct Source {
    failures: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Throttle {
    /// A throttle allowing `free` failures per `window`, then blocking for
    /// doubling times up to `max_block`.
    pub fn new(free: u32, window: Duration, max_block: Duration) -> Throttle {
        Throttle { free: free as usize, window, max_block, sources: Mutex::new(HashMap::new()) }
    }

    /// Whether `addr` may try to log in now; otherwise the seconds until it
    /// may (at least 1).
    pub fn check(&self, addr: Option<&str>) -> Result<(), u64> {
        let Some(addr) = addr else { return Ok(()) };
        let m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        match m.get(addr).and_then(|s| s.blocked_until) {
            // Rounded up: a client that waits this long is let in.
            Some(t) if t > Instant::now() => {
                Err(u64::try_from((t - Instant::now()).as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed login from `addr`. Returns the block it starts, in
    /// seconds, when this failure is over the free allowance.
    pub fn failed(&self, addr: Option<&str>) -> Option<u64> {
        let addr = addr?;
        let now = Instant::now();
        let mut m = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SOURCES {
            let window = self.window;
            m.retain(|_, s| s.failures.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let s = m.entry(addr.to_owned()).or_default();
        while s.failures.front().is_some_and(|t| now.duration_since(*t) >= self.window) {
            s.failures.pop_front();
        }
        s.failures.push_back(now);
        let over = s.failures.len().checked_sub(self.free + 1)?;
        let secs = 1u64.checked_shl(u32::try_from(over).unwrap_or(u32::MAX)).unwrap_or(u64::MAX);
        let block = Duration::from_secs(secs).min(self.max_block);
        s.blocked_until = Some(now + block);
        Some(block.as_secs().max(1))
    }
}

/// Refuses a login from a source that must wait (429 with `Retry-After`).
pub(crate) fn refuse_if_waiting(svc: &crate::Services, addr: Option<&str>) -> Result<(), crate::error::ServiceError> {
    svc.throttle.check(addr).map_err(|secs| crate::error::ServiceError::TooMany {
        message: format!("too many failed logins from this address; try again in {secs} s"),
        retry_after: Some(secs),
    })
}

/// Records a failed login (any path) from `addr`. When it makes the source
/// wait, the wait is audited (`login-throttled`) and, once per ten minutes
/// per source, raised as an alert to the administrators.
pub(crate) async fn login_failed(svc: &crate::Services, addr: Option<String>, path: &str) {
    let Some(secs) = svc.throttle.failed(addr.as_deref()) else { return };
    let now = svc.now();
    let ctx = crate::actor::RequestCtx { addr: addr.clone(), request_id: None, mode: svc.mode.get() };
    let mut rec = ctx.record("anonymous", "anonymous", "login-throttled", 429, now);
    let source = addr.unwrap_or_default();
    rec.detail = Some(serde_json::json!({"source": source, "wait_seconds": secs, "path": path}));
    if let Err(e) = svc.audit(vec![rec]).await {
        tracing::error!(error = %e, "could not audit a login throttle");
    }
    let kind = format!("login-throttled:{source}");
    let (k2, since) = (kind.clone(), now.plus_secs(-600));
    let recent = svc.store.read(move |c| mamori_store::emergency::recent_alert(c, &k2, since)).await.unwrap_or(true);
    if !recent {
        crate::notify::raise_alert(
            svc,
            &kind,
            "warning",
            &format!(
                "{source} からのログイン失敗が続いています（{path}）。この送信元を待機させています / Repeated failed logins from {source} ({path}); the source is being slowed down"
            ),
            serde_json::json!({"source": source, "wait_seconds": secs, "path": path}),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_slowed_after_its_free_failures_and_others_are_not() {
        let t = Throttle::new(3, Duration::from_secs(600), Duration::from_secs(900));
        let a = Some("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(t.failed(a), None);
            assert_eq!(t.check(a), Ok(()));
        }
        assert_eq!(t.failed(a), Some(1), "the fourth failure blocks for a second");
        assert!(t.check(a).is_err());
        assert_eq!(t.check(Some("10.0.0.2")), Ok(()), "another source is not affected");
        assert_eq!(t.failed(a), Some(2));
        assert_eq!(t.failed(a), Some(4));
        for _ in 0..20 {
            t.failed(a);
        }
        assert_eq!(t.failed(a), Some(900), "capped");
        assert_eq!(t.check(None), Ok(()), "requests without an address are not throttled here");
    }

    #[test]
    fn failures_outside_the_window_do_not_count() {
        let t = Throttle::new(1, Duration::from_millis(50), Duration::from_secs(900));
        let a = Some("10.0.0.1");
        assert_eq!(t.failed(a), None);
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.failed(a), None, "the first failure has left the window");
    }
}
