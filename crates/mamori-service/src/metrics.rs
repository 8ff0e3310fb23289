//! Prometheus metrics (text exposition format), kept as atomics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Latency bucket upper bounds in milliseconds.
const BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 20, 50, 100, 250, 1000, 5000];

/// Counters of the HTTP requests served, for `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    by_class: [AtomicU64; 6],
    buckets: [AtomicU64; 11],
    sum_us: AtomicU64,
    count: AtomicU64,
    // The slowest request since the access log's last summary.
    win_max_us: AtomicU64,
}

/// The requests counted up to a moment; two of them give a summary window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Window {
    /// Requests by status class (index 2: 2xx, ...).
    pub by_class: [u64; 6],
    /// Total microseconds.
    pub sum_us: u64,
    /// The slowest, in microseconds.
    pub max_us: u64,
}

impl Window {
    /// Requests in the window.
    pub fn count(&self) -> u64 {
        self.by_class.iter().sum()
    }
    /// What happened since `earlier` (its `max_us` is this one's).
    pub fn since(&self, earlier: &Window) -> Window {
        let mut w = self.clone();
        for (x, e) in w.by_class.iter_mut().zip(earlier.by_class) {
            *x = x.saturating_sub(e);
        }
        w.sum_us = w.sum_us.saturating_sub(earlier.sum_us);
        w
    }
}

impl Metrics {
    /// Counts one request: its status and how long it took, in microseconds.
    pub fn observe(&self, status: u16, micros: u64) {
        let class = (status / 100) as usize;
        if let Some(c) = self.by_class.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        let ms = micros / 1000;
        let i = BUCKETS_MS.iter().position(|b| ms < *b).unwrap_or(BUCKETS_MS.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.win_max_us.fetch_max(micros, Ordering::Relaxed);
    }

    /// Requests counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The counters now, and the slowest request since the previous call.
    pub fn take_window(&self) -> Window {
        let mut w = Window::default();
        for (x, c) in w.by_class.iter_mut().zip(&self.by_class) {
            *x = c.load(Ordering::Relaxed);
        }
        w.sum_us = self.sum_us.load(Ordering::Relaxed);
        w.max_us = self.win_max_us.swap(0, Ordering::Relaxed);
        w
    }

    /// The metrics in Prometheus text format, followed by `gauges`
    /// (name, help text, value).
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut s = String::new();
        s.push_str("# HELP mamori_http_requests_total HTTP requests by status class.\n# TYPE mamori_http_requests_total counter\n");
        for (i, c) in self.by_class.iter().enumerate().skip(1) {
            s.push_str(&format!("mamori_http_requests_total{{class=\"{i}xx\"}} {}\n", c.load(Ordering::Relaxed)));
        }
        s.push_str("# HELP mamori_http_request_duration_seconds Request latency.\n# TYPE mamori_http_request_duration_seconds histogram\n");
        let mut cum = 0;
        for (i, b) in BUCKETS_MS.iter().enumerate() {
            cum += self.buckets.get(i).map_or(0, |x| x.load(Ordering::Relaxed));
            s.push_str(&format!(
                "mamori_http_request_duration_seconds_bucket{{le=\"{}\"}} {cum}\n",
                *b as f64 / 1000.0
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        s.push_str(&format!("mamori_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        s.push_str(&format!(
            "mamori_http_request_duration_seconds_sum {}\n",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        ));
        s.push_str(&format!("mamori_http_request_duration_seconds_count {count}\n"));
        for (name, help, v) in gauges {
            s.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
        }
        s
    }
}

/// Logs a summary of the requests every `[log] summary_seconds` (when the
/// access log is `summary`), until `stop`.
pub async fn access_summary(svc: crate::services::Services, mut stop: tokio::sync::watch::Receiver<bool>) {
    if svc.cfg.log.access != "summary" {
        return;
    }
    let every = std::time::Duration::from_secs(svc.cfg.log.summary_seconds.max(1));
    let mut last = svc.metrics.take_window();
    loop {
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            _ = tokio::time::sleep(every) => {}
        }
        let now = svc.metrics.take_window();
        let w = now.since(&last);
        last = now;
        let n = w.count();
        if n > 0 {
            tracing::info!(
                target: "mamori::access",
                requests = n,
                ok = w.by_class[2] + w.by_class[3],
                client_errors = w.by_class[4],
                server_errors = w.by_class[5],
                mean_ms = (w.sum_us / n) as f64 / 1000.0,
                max_ms = w.max_us as f64 / 1000.0,
                seconds = every.as_secs(),
                "requests"
            );
        }
    }
}
