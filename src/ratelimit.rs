//! Who a client is, and token buckets per client or per principal.
//!
//! A client is its TCP peer address, unless that peer is a configured trusted proxy (an ingress,
//! a load balancer): then it is the right-most `X-Forwarded-For` entry that is not itself a
//! trusted proxy. IPv6 clients are grouped by /64 (one host usually owns a whole /64), IPv4-mapped
//! IPv6 addresses count as IPv4. Buckets let a key burst `burst` requests and then `per_sec` per
//! second. Bounded memory: idle buckets are dropped, and past `MAX_KEYS` the oldest half is
//! forgotten.
//!
//! Must not: know about HTTP types (callers pass the forwarded-for header's text and map a
//! refusal to 429); honour a forwarded-for header from a peer that is not a trusted proxy.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

const MAX_KEYS: usize = 10_000;

/// An address range (`10.0.0.0/8`, `fd00::/8`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parse `ADDR` or `ADDR/PREFIX`.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| format!("`{s}` is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The address of the client behind `peer`: `peer` itself unless it is a trusted proxy, then the
/// right-most `forwarded_for` entry that is not a trusted proxy (entries left of it could have been
/// written by the client). A malformed entry stops the walk at the last trusted hop.
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[Cidr]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let peer = canonical(peer);
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client) {
                    return client;
                }
            }
            Err(_) => return client,
        }
    }
    client
}

/// Is `ip` one of the trusted proxies?
pub fn is_trusted(ip: IpAddr, trusted: &[Cidr]) -> bool {
    trusted.iter().any(|c| c.contains(canonical(ip)))
}

/// The rate-limit and connection-count key of a client address: IPv4 as is, IPv6 by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128))),
        v4 => v4,
    }
}

pub struct RateLimiter<K = IpAddr> {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Eq + Hash + Clone + Ord> RateLimiter<K> {
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter { per_sec, burst: burst.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// May `key` make one more request now?
    pub fn allow(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut b = self.buckets.lock().expect("rate limiter poisoned");
        if b.len() >= MAX_KEYS && !b.contains_key(key) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            b.retain(|_, (tokens, last)| *tokens + now.duration_since(*last).as_secs_f64() * per_sec < burst);
            if b.len() >= MAX_KEYS {
                let mut ages: Vec<_> = b.iter().map(|(k, (_, last))| (*last, k.clone())).collect();
                ages.sort();
                for (_, k) in ages.into_iter().take(MAX_KEYS / 2) {
                    b.remove(&k);
                }
            }
        }
        let (tokens, last) = b.entry(key.clone()).or_insert((self.burst, now));
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

/// Every rate limit of one broker, and who may speak for a client.
pub struct Limiters {
    /// Per client address: SSH login and token exchange.
    pub login: RateLimiter<IpAddr>,
    /// Per principal: every authenticated request.
    pub principal: RateLimiter<String>,
    /// Per principal: revocations.
    pub revoke: RateLimiter<String>,
    pub trusted_proxies: Vec<Cidr>,
}

impl Limiters {
    pub fn new(c: &crate::config::LimitsConfig, trusted_proxies: Vec<Cidr>) -> Limiters {
        Limiters {
            login: RateLimiter::new(c.login_per_second, f64::from(c.login_burst)),
            principal: RateLimiter::new(c.requests_per_second, f64::from(c.requests_burst)),
            revoke: RateLimiter::new(c.revocations_per_minute / 60.0, c.revocations_per_minute.max(1.0)),
            trusted_proxies,
        }
    }

    /// The login bucket key for a request from `peer` with this forwarded-for header.
    pub fn login_key(&self, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
        client_key(client_ip(peer, forwarded_for, &self.trusted_proxies))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bursts_then_limits_per_key() {
        let r = RateLimiter::new(1.0, 3.0);
        let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
        assert!((0..3).all(|_| r.allow(&a)));
        assert!(!r.allow(&a));
        assert!(r.allow(&b), "other clients unaffected");
        let p: RateLimiter<String> = RateLimiter::new(0.0, 2.0);
        assert!(p.allow(&"user:alice".into()) && p.allow(&"user:alice".into()));
        assert!(!p.allow(&"user:alice".into()));
        assert!(p.allow(&"user:bob".into()));
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let r = RateLimiter::new(0.0, 2.0);
        // Today's bug: every address of one /64 had its own bucket.
        assert!(r.allow(&client_key(ip("2001:db8:1:2::1"))));
        assert!(r.allow(&client_key(ip("2001:db8:1:2:ffff::9"))));
        assert!(!r.allow(&client_key(ip("2001:db8:1:2:dead:beef:0:1"))), "same /64, same bucket");
        assert!(r.allow(&client_key(ip("2001:db8:1:3::1"))), "another /64");
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.200.1.1")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.7")));
        assert!(!Cidr::parse("192.0.2.7").unwrap().contains(ip("192.0.2.8")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0..=32"));
        assert!(Cidr::parse("nope").unwrap_err().contains("not an IP"));
    }

    #[test]
    fn forwarded_for_only_from_trusted_proxies_right_most_untrusted_wins() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        // An untrusted peer cannot choose its address.
        assert_eq!(client_ip(ip("203.0.113.5"), Some("1.2.3.4"), &trusted), ip("203.0.113.5"));
        // Behind the ingress: the client the ingress saw.
        assert_eq!(client_ip(ip("10.0.0.2"), Some("198.51.100.7"), &trusted), ip("198.51.100.7"));
        // A client-written entry left of the real one is ignored; trusted hops are skipped.
        assert_eq!(client_ip(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.7, 10.0.0.9"), &trusted), ip("198.51.100.7"));
        // No header, or garbage: the proxy itself (or the last trusted hop).
        assert_eq!(client_ip(ip("10.0.0.2"), None, &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), Some("junk"), &trusted), ip("10.0.0.2"));
        // Nothing trusted: the header is never read.
        assert_eq!(client_ip(ip("10.0.0.2"), Some("198.51.100.7"), &[]), ip("10.0.0.2"));
    }
}
