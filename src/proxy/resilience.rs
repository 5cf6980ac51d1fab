//! What keeps a fetch succeeding when an upstream misbehaves: a circuit breaker per upstream, a
//! global retry budget, and the retry rules (which outcomes are worth another try, and how long
//! to wait before it).
//!
//! Must not: send requests or sleep (callers do, with these answers), or retry anything that is
//! not idempotent or has already sent a byte to the caller.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failed fetches that open a breaker.
pub const OPEN_AFTER: u32 = 5;
/// Of the last [`WINDOW`] outcomes, this many failures also open it (a flapping upstream).
pub const OPEN_RATIO_FAILURES: usize = 12;
pub const WINDOW: usize = 20;
/// How long a breaker first stays open; doubled (with jitter) each time a probe fails.
pub const OPEN_FOR: Duration = Duration::from_secs(5);
pub const OPEN_FOR_MAX: Duration = Duration::from_secs(60);
/// A half-open probe whose outcome was never recorded (the caller left, the answer was neither
/// success nor failure) stops holding the breaker after this: another probe may go.
pub const PROBE_LEASE: Duration = Duration::from_secs(10);

/// First retry delay (doubled per retry, full jitter between half and all of it).
pub const BACKOFF: Duration = Duration::from_millis(50);
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A `Retry-After` longer than this is cut to it (the go command is waiting).
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);

/// Retries may add this share of the requests on top of them …
pub const BUDGET_RATIO: f64 = 0.2;
/// … and at least this many per second whatever the traffic (a quiet broker still retries).
pub const BUDGET_FLOOR_PER_SEC: f64 = 5.0;
const BUDGET_CAP: f64 = 50.0;

/// A breaker's state, as `/readyz` and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

#[derive(Debug)]
struct Inner {
    consecutive: u32,
    recent: std::collections::VecDeque<bool>,
    /// Open until then (`None`: closed).
    open_until: Option<Instant>,
    /// How many times in a row it opened (the backoff exponent).
    opened: u32,
    /// A half-open probe is in flight, since then (see [`PROBE_LEASE`]).
    probing: Option<Instant>,
}

/// One upstream's circuit breaker: closed → open after [`OPEN_AFTER`] consecutive failures (or
/// [`OPEN_RATIO_FAILURES`] of the last [`WINDOW`]) → after the open time, one probe (half-open)
/// → closed on its success, open again for longer on its failure.
#[derive(Debug)]
pub struct Breaker {
    inner: Mutex<Inner>,
    pub opened_total: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                consecutive: 0,
                recent: Default::default(),
                open_until: None,
                opened: 0,
                probing: None,
            }),
            opened_total: AtomicU64::new(0),
        }
    }
}

impl Breaker {
    /// May a fetch go to this upstream now? (Half-open: only the one probe.)
    pub fn allow(&self) -> bool {
        let mut s = self.inner.lock().expect("breaker poisoned");
        match s.open_until {
            None => true,
            Some(t) if Instant::now() < t => false,
            Some(_) if s.probing.is_some_and(|p| p.elapsed() < PROBE_LEASE) => false,
            Some(_) => {
                s.probing = Some(Instant::now());
                true
            }
        }
    }

    pub fn state(&self) -> BreakerState {
        let s = self.inner.lock().expect("breaker poisoned");
        match s.open_until {
            None => BreakerState::Closed,
            Some(t) if Instant::now() < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// The upstream answered (a not-found is an answer too).
    pub fn success(&self) {
        let mut s = self.inner.lock().expect("breaker poisoned");
        s.consecutive = 0;
        s.open_until = None;
        s.opened = 0;
        s.probing = None;
        push(&mut s.recent, false);
    }

    /// The upstream failed a fetch (after its retries).
    pub fn failure(&self) {
        let mut s = self.inner.lock().expect("breaker poisoned");
        s.consecutive += 1;
        push(&mut s.recent, true);
        let ratio = s.recent.len() == WINDOW && s.recent.iter().filter(|f| **f).count() >= OPEN_RATIO_FAILURES;
        let was_probe = s.probing.is_some();
        if was_probe || s.consecutive >= OPEN_AFTER || ratio {
            if s.open_until.is_none() || was_probe {
                self.opened_total.fetch_add(1, Ordering::Relaxed);
            }
            s.opened = s.opened.saturating_add(1);
            let base = OPEN_FOR.saturating_mul(1 << (s.opened - 1).min(4)).min(OPEN_FOR_MAX);
            s.open_until = Some(Instant::now() + jitter(base));
            s.probing = None;
            s.recent.clear();
        }
    }
}

fn push(q: &mut std::collections::VecDeque<bool>, failed: bool) {
    if q.len() == WINDOW {
        q.pop_front();
    }
    q.push_back(failed);
}

/// Between 80% and 100% of `d` (so replicas do not probe in step).
fn jitter(d: Duration) -> Duration {
    let r = u16::from_le_bytes(crate::random_bytes::<2>()) as f64 / u16::MAX as f64;
    d.mul_f64(0.8 + 0.2 * r)
}

/// The wait before retry number `n` (0-based): jittered exponential backoff, or the upstream's
/// `Retry-After` (seconds) up to [`RETRY_AFTER_MAX`].
pub fn backoff(n: u32, retry_after: Option<&str>) -> Duration {
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(secs).min(RETRY_AFTER_MAX);
    }
    let full = BACKOFF.saturating_mul(1 << n.min(10)).min(BACKOFF_MAX);
    let r = u16::from_le_bytes(crate::random_bytes::<2>()) as f64 / u16::MAX as f64;
    full.mul_f64(0.5 + 0.5 * r)
}

/// An upstream status that counts against its breaker: it failing (5xx) or shedding load (429);
/// any other answer, a refusal included, is the upstream working.
pub fn failing_status(status: u16) -> bool {
    status >= 500 || status == 429
}

/// An upstream status worth another try (the request never reached a handler, or the upstream
/// asked to be asked again).
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The retry budget shared by every upstream: retries may add [`BUDGET_RATIO`] of the requests,
/// with a floor of [`BUDGET_FLOOR_PER_SEC`], so an outage does not multiply the load on it.
#[derive(Debug)]
pub struct RetryBudget {
    inner: Mutex<(f64, Instant)>,
    pub exhausted_total: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget { inner: Mutex::new((BUDGET_FLOOR_PER_SEC, Instant::now())), exhausted_total: AtomicU64::new(0) }
    }
}

impl RetryBudget {
    fn refill(s: &mut (f64, Instant)) {
        let now = Instant::now();
        s.0 = (s.0 + BUDGET_FLOOR_PER_SEC * now.duration_since(s.1).as_secs_f64()).min(BUDGET_CAP);
        s.1 = now;
    }

    /// A request was made (it earns retries for others).
    pub fn deposit(&self) {
        let mut s = self.inner.lock().expect("retry budget poisoned");
        Self::refill(&mut s);
        s.0 = (s.0 + BUDGET_RATIO).min(BUDGET_CAP);
    }

    /// May one retry be made now?
    pub fn withdraw(&self) -> bool {
        let mut s = self.inner.lock().expect("retry budget poisoned");
        Self::refill(&mut s);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            self.exhausted_total.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_breaker_opens_after_consecutive_failures_probes_once_and_closes_on_success() {
        let b = Breaker::default();
        for _ in 0..OPEN_AFTER - 1 {
            b.failure();
        }
        assert!(b.allow() && b.state() == BreakerState::Closed);
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.allow(), "an open breaker lets nothing through");
        assert_eq!(b.opened_total.load(Ordering::Relaxed), 1);
        // Past the open time: one probe only.
        b.inner.lock().unwrap().open_until = Some(Instant::now());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(b.allow());
        assert!(!b.allow(), "a second request during the probe");
        // A probe nobody reported on (the caller left) holds the breaker only for its lease.
        b.inner.lock().unwrap().probing = Some(Instant::now() - PROBE_LEASE);
        assert!(b.allow(), "a lost probe locked the upstream out");
        assert!(!b.allow());
        // The probe fails: open again, for longer.
        b.failure();
        let until = b.inner.lock().unwrap().open_until.unwrap();
        assert!(until > Instant::now() + OPEN_FOR, "backoff did not grow");
        assert_eq!(b.opened_total.load(Ordering::Relaxed), 2);
        b.inner.lock().unwrap().open_until = Some(Instant::now());
        assert!(b.allow());
        b.success();
        assert!(b.state() == BreakerState::Closed && b.allow());
    }

    #[test]
    fn a_flapping_upstream_opens_its_breaker_on_the_failure_ratio() {
        let b = Breaker::default();
        for i in 0..WINDOW {
            if i % 3 == 0 { b.success() } else { b.failure() }
        }
        assert_eq!(b.state(), BreakerState::Open, "13 of 20 failed, never 5 in a row");
    }

    #[test]
    fn retries_wait_longer_each_time_and_honour_retry_after_up_to_its_cap() {
        assert!(backoff(0, None) <= BACKOFF && backoff(0, None) >= BACKOFF / 2);
        assert!(backoff(3, None) >= BACKOFF * 4);
        assert!(backoff(30, None) <= BACKOFF_MAX);
        assert_eq!(backoff(0, Some("2")), Duration::from_secs(2));
        assert_eq!(backoff(0, Some("3600")), RETRY_AFTER_MAX);
        assert!(backoff(0, Some("Wed, 21 Oct 2015 07:28:00 GMT")) <= BACKOFF);
        assert!(retryable_status(503) && retryable_status(429) && !retryable_status(500) && !retryable_status(404));
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_with_a_floor() {
        let b = RetryBudget::default();
        let mut granted = 0;
        for _ in 0..100 {
            if b.withdraw() {
                granted += 1;
            }
        }
        assert!((5..=6).contains(&granted), "floor only: {granted}");
        for _ in 0..100 {
            b.deposit();
        }
        let mut more = 0;
        while b.withdraw() {
            more += 1;
        }
        assert!((20..=21).contains(&more), "20% of 100 requests: {more}");
        assert!(b.exhausted_total.load(Ordering::Relaxed) > 0);
    }
}
