//! Readiness: a background probe of the secrets backend and the grace rule — the broker stays
//! ready (serving from what it has cached) until the backend has been failing for longer than
//! `secrets.grace`, then reports not ready with the reason.
//!
//! Must not: choose HTTP status codes or block requests on a probe.

use crate::metrics::Metrics;
use crate::secrets::SecretStore;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    last_ok: Instant,
    failing: Option<String>,
}

/// Readiness of this replica.
#[derive(Debug)]
pub struct Readiness {
    backend: String,
    grace: Duration,
    state: Mutex<State>,
}

impl Readiness {
    /// Ready now (the backend was just opened successfully).
    pub fn new(backend: String, grace: Duration) -> Self {
        Readiness { backend, grace, state: Mutex::new(State { last_ok: Instant::now(), failing: None }) }
    }

    pub fn record_ok(&self) {
        let mut s = self.state.lock().expect("readiness lock poisoned");
        if s.failing.take().is_some() {
            tracing::info!(backend = %self.backend, "secrets backend reachable again");
        }
        s.last_ok = Instant::now();
    }

    pub fn record_err(&self, reason: String) {
        let mut s = self.state.lock().expect("readiness lock poisoned");
        if s.failing.is_none() {
            tracing::warn!(backend = %self.backend, %reason, "secrets backend probe failed");
        }
        s.failing = Some(reason);
    }

    /// While ready on cached secrets (the backend failing, within the grace): why.
    pub fn degraded(&self) -> Option<String> {
        let s = self.state.lock().expect("readiness lock poisoned");
        s.failing.as_ref().map(|r| {
            format!("secrets backend {} unreachable for {}s: {r}", self.backend, s.last_ok.elapsed().as_secs())
        })
    }

    /// `Ok` when ready; otherwise the reason, naming the backend and how long it has failed.
    pub fn check(&self) -> Result<(), String> {
        let s = self.state.lock().expect("readiness lock poisoned");
        match &s.failing {
            Some(reason) if s.last_ok.elapsed() > self.grace => Err(format!(
                "secrets backend {} unreachable for {}s (grace {}s): {reason}",
                self.backend,
                s.last_ok.elapsed().as_secs(),
                self.grace.as_secs_f32()
            )),
            _ => Ok(()),
        }
    }
}

/// Probe the backend every `every`, forever.
pub async fn probe_loop(store: &SecretStore, readiness: &Readiness, metrics: &Metrics, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A probe never outlives its interval (plus a little), so a hung backend is noticed.
        let limit = every.max(Duration::from_secs(1));
        match tokio::time::timeout(limit, store.probe()).await {
            Ok(Ok(())) => readiness.record_ok(),
            Ok(Err(e)) => readiness.record_err(e.to_string()),
            Err(_) => readiness.record_err(format!("probe timed out after {}ms", limit.as_millis())),
        }
        metrics.set_gauge("gocred_ready", if readiness.check().is_ok() { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_ready_within_grace_then_reports_reason() {
        let r = Readiness::new("vault http://x".into(), Duration::from_millis(50));
        r.record_err("connection refused".into());
        assert!(r.check().is_ok(), "within grace");
        std::thread::sleep(Duration::from_millis(80));
        let e = r.check().unwrap_err();
        assert!(e.contains("vault http://x") && e.contains("connection refused"), "{e}");
        r.record_ok();
        assert!(r.check().is_ok());
    }
}
