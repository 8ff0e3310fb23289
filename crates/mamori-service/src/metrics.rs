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
