//! Prometheus metrics: request counts and latency histograms by route, method and status, plus
//! named counters and gauges (Vault renewals, key rotations, readiness), rendered in the
//! Prometheus text exposition format.
//!
//! Must not: know about axum or label by raw request paths (route templates only, so label
//! cardinality stays bounded).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
struct Histogram {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), Histogram>,
    counters: BTreeMap<&'static str, u64>,
    gauges: BTreeMap<&'static str, f64>,
}

/// The process's metrics registry.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Record one finished HTTP request. `route` is the route template (e.g. `/healthz`).
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut g = self.inner.lock().expect("metrics lock poisoned");
        let h = g.requests.entry((route.to_string(), method.to_string(), status)).or_default();
        h.count += 1;
        h.sum += secs;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
    }

    /// Add one to a named counter (name must end in `_total`).
    pub fn inc(&self, name: &'static str) {
        *self.inner.lock().expect("metrics lock poisoned").counters.entry(name).or_default() += 1;
    }

    /// Set a named gauge.
    pub fn set_gauge(&self, name: &'static str, v: f64) {
        self.inner.lock().expect("metrics lock poisoned").gauges.insert(name, v);
    }

    /// Current value of a counter (tests, diagnostics).
    pub fn counter(&self, name: &str) -> u64 {
        self.inner.lock().expect("metrics lock poisoned").counters.get(name).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self) -> String {
        let g = self.inner.lock().expect("metrics lock poisoned");
        let mut out = String::new();
        out.push_str("# HELP gocred_http_requests_total HTTP requests served, by route template, method and status.\n");
        out.push_str("# TYPE gocred_http_requests_total counter\n");
        for ((route, method, status), h) in &g.requests {
            let _ = writeln!(
                out,
                "gocred_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {}",
                escape(route),
                escape(method),
                h.count
            );
        }
        out.push_str("# HELP gocred_http_request_duration_seconds HTTP request latency.\n");
        out.push_str("# TYPE gocred_http_request_duration_seconds histogram\n");
        for ((route, method, status), h) in &g.requests {
            let labels = format!("route=\"{}\",method=\"{}\",status=\"{status}\"", escape(route), escape(method));
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "gocred_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(out, "gocred_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "gocred_http_request_duration_seconds_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "gocred_http_request_duration_seconds_count{{{labels}}} {}", h.count);
        }
        for (name, v) in &g.counters {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {v}");
        }
        for (name, v) in &g.gauges {
            let _ = writeln!(out, "# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_histograms_and_counters() {
        let m = Metrics::new();
        m.observe_request("/healthz", "GET", 200, Duration::from_millis(2));
        m.observe_request("/healthz", "GET", 200, Duration::from_millis(20));
        m.inc("gocred_vault_token_renewals_total");
        m.set_gauge("gocred_ready", 1.0);
        let t = m.render();
        assert!(t.contains("gocred_http_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"} 2"), "{t}");
        assert!(t.contains("le=\"0.0025\"} 1"), "{t}");
        assert!(t.contains("le=\"0.025\"} 2"), "{t}");
        assert!(t.contains("gocred_vault_token_renewals_total 1"));
        assert!(t.contains("gocred_ready 1"));
        assert_eq!(m.counter("gocred_vault_token_renewals_total"), 1);
    }
}
