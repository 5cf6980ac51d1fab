//! A per-client token bucket for the unauthenticated, CPU-costly routes (SSH login): each client
//! address may burst `burst` requests and then `per_sec` per second. Bounded memory: idle
//! buckets are dropped, and past `MAX_CLIENTS` the oldest half is forgotten.
//!
//! Must not: know about HTTP (the caller maps a refusal to 429).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

const MAX_CLIENTS: usize = 10_000;

pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter { per_sec, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// May `ip` make one more request now?
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("rate limiter poisoned");
        if b.len() >= MAX_CLIENTS {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * per_sec < burst);
            if b.len() >= MAX_CLIENTS {
                let mut ages: Vec<_> = b.iter().map(|(ip, (_, last))| (*last, *ip)).collect();
                ages.sort();
                for (_, ip) in ages.into_iter().take(MAX_CLIENTS / 2) {
                    b.remove(&ip);
                }
            }
        }
        let (tokens, last) = b.entry(ip).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_limits_per_client() {
        let r = RateLimiter::new(1.0, 3.0);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| r.allow(a)));
        assert!(!r.allow(a));
        assert!(r.allow(b), "other clients unaffected");
    }
}
