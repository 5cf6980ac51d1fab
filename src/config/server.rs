//! `[server]` (listen address, public URL, TLS files, connection limits and timeouts) and
//! `[limits]` (rate limits): their validated types and validator.

use super::ConfigError;
use super::Ctx;
use super::raw::{RawLimits, RawServer};
use super::rules::{UrlFault, UrlRule, UrlShape};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The broker's origin as clients see it (`https://host:port`, no path). `None`: derived
    /// from the bound address at start.
    pub public_url: Option<String>,
    pub tls: Option<TlsFiles>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How often the TLS certificate and key files are checked for a new version (cert-manager
    /// renewals, rotated secrets), which is then served without a restart.
    pub tls_reload_every: Duration,
    /// A client must send a request's headers (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// A connection on which nothing moved for this long is closed.
    pub idle_timeout: Duration,
    /// Non-streaming routes (login, token, whoami, webhook, ...) answer within this or fail.
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers whose `X-Forwarded-For` names the client (ingress, load balancers).
    pub trusted_proxies: Vec<crate::ratelimit::Cidr>,
    pub limits: LimitsConfig,
}

/// Rate limits (`[limits]`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Per client address (IPv6 by /64): login and token-exchange requests.
    pub login_per_second: f64,
    pub login_burst: u32,
    /// Per principal, on every authenticated route.
    pub requests_per_second: f64,
    pub requests_burst: u32,
    /// Per principal.
    pub revocations_per_minute: f64,
    /// Open SSH tunnels per principal.
    pub tunnels_per_principal: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            login_per_second: 20.0,
            login_burst: 60,
            requests_per_second: 100.0,
            requests_burst: 1000,
            revocations_per_minute: 10.0,
            tunnels_per_principal: 8,
        }
    }
}

impl ServerConfig {
    /// Defaults for the connection settings (used by `--dev` and tests).
    pub fn with_defaults(listen: SocketAddr, tls: Option<TlsFiles>) -> ServerConfig {
        ServerConfig {
            listen,
            public_url: None,
            tls,
            shutdown_grace: Duration::from_secs(10),
            tls_reload_every: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_client: 256,
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `[server]` and `[limits]` → [`ServerConfig`].
pub(super) fn validate_server(cx: &Ctx, s: RawServer, limits: RawLimits) -> Result<ServerConfig, ConfigError> {
    let listen: SocketAddr =
        s.listen.parse().map_err(|_| cx.err("server.listen", format!("`{}` is not an IP:port address", s.listen)))?;
    let public_url = match s.public_url {
        None => None,
        Some(u) => Some(cx.check_url("server.public_url", &u, (UrlRule::Any, UrlShape::Origin), |f| match f {
            UrlFault::Scheme => format!("`{u}` must start with https:// or http://"),
            UrlFault::Whitespace | UrlFault::Shape => {
                format!("`{u}` must be an origin (scheme://host[:port]) without a path")
            }
        })?),
    };
    let tls_reload_every = cx.duration(
        "server.tls.reload_every",
        s.tls.as_ref().and_then(|t| t.reload_every.as_deref()),
        Duration::from_secs(30),
    )?;
    if tls_reload_every < Duration::from_millis(100) {
        return Err(cx.err("server.tls.reload_every", "must be at least 100ms".into()));
    }
    let trusted_proxies = s
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|c| crate::ratelimit::Cidr::parse(c).map_err(|m| cx.err("server.trusted_proxies", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = validate_limits(cx, limits)?;
    let d = ServerConfig::with_defaults(listen, None);
    let positive = |key: &str, default: Duration, v: Option<&str>| match cx.duration(key, v, default)? {
        v if v.is_zero() => Err(cx.err(key, "must be more than 0s".into())),
        v => Ok(v),
    };
    let count = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(cx.err(key, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(ServerConfig {
        tls_reload_every,
        listen,
        public_url,
        tls: s.tls.map(|t| TlsFiles { cert: cx.rel(t.cert), key: cx.rel(t.key) }),
        shutdown_grace: cx.duration("server.shutdown_grace", s.shutdown_grace.as_deref(), d.shutdown_grace)?,
        header_read_timeout: positive(
            "server.header_read_timeout",
            d.header_read_timeout,
            s.header_read_timeout.as_deref(),
        )?,
        idle_timeout: positive("server.idle_timeout", d.idle_timeout, s.idle_timeout.as_deref())?,
        request_timeout: positive("server.request_timeout", d.request_timeout, s.request_timeout.as_deref())?,
        max_connections: count("server.max_connections", s.max_connections, d.max_connections)?,
        max_connections_per_client: count(
            "server.max_connections_per_client",
            s.max_connections_per_client,
            d.max_connections_per_client,
        )?,
        trusted_proxies,
        limits,
    })
}

/// `[limits]` → [`LimitsConfig`] (rates above 0, bursts at least 1).
fn validate_limits(cx: &Ctx, l: RawLimits) -> Result<LimitsConfig, ConfigError> {
    let dl = LimitsConfig::default();
    let rate = |key: &str, v: Option<f64>, default: f64| match v {
        Some(r) if !(r.is_finite() && r > 0.0) => Err(cx.err(key, format!("must be a number above 0, not {r}"))),
        Some(r) => Ok(r),
        None => Ok(default),
    };
    let burst = |key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(cx.err(key, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    Ok(LimitsConfig {
        login_per_second: rate("limits.login_per_second", l.login_per_second, dl.login_per_second)?,
        login_burst: burst("limits.login_burst", l.login_burst, dl.login_burst)?,
        requests_per_second: rate("limits.requests_per_second", l.requests_per_second, dl.requests_per_second)?,
        requests_burst: burst("limits.requests_burst", l.requests_burst, dl.requests_burst)?,
        revocations_per_minute: rate(
            "limits.revocations_per_minute",
            l.revocations_per_minute,
            dl.revocations_per_minute,
        )?,
        tunnels_per_principal: burst(
            "limits.tunnels_per_principal",
            l.tunnels_per_principal,
            dl.tunnels_per_principal,
        )?,
    })
}
