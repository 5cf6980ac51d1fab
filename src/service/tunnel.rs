//! SSH tunnels (`gocred ssh-proxy`): a caller authenticated by token + proof asks for a host the
//! broker announces as SSH-served; the broker decides Cedar `tunnel` on it, connects to the
//! configured `ssh` address of that upstream (never an address the caller names), and copies
//! bytes both ways until either side closes or fails, the session ends (revocation or its end
//! time), access is withdrawn (re-checked every [`RECHECK_EVERY`] or `tokens.ttl` if shorter: the SSH key still authorized,
//! Cedar `tunnel` still permitted), or the connection idles out (`server.idle_timeout`, enforced
//! below HTTP). One audit line at open
//! and one at close with bytes each way and duration; at most `limits.tunnels_per_principal`
//! open tunnels per principal.
//!
//! Must not: connect anywhere but a configured `ssh` target, or outlive the session.

use super::Broker;
use super::access::{AccessError, Caller, authorize};
use crate::audit::Event;
use crate::config::{SshTarget, Upstream};
use crate::policy::{Action, Resource};
use crate::proxy::route;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The upgrade token of `GET /v1/tunnel` (`Upgrade: gocred-tunnel`).
pub use crate::proto::tunnel::UPGRADE_PROTOCOL;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("no SSH tunnel target is configured for `{host}` (the broker tunnels only to upstreams with `ssh` set)")]
    NotConfigured { host: String },
    #[error("port {port} is not the SSH port of `{host}` (use 22 or {configured})")]
    WrongPort { host: String, port: u16, configured: u16 },
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error("too many open tunnels for {principal} (limits.tunnels_per_principal = {limit})")]
    TooMany { principal: String, limit: u32 },
    /// The address stays in the broker's log; the caller sees the upstream's name.
    #[error("upstream {upstream}: SSH server unreachable")]
    Connect {
        upstream: String,
        target: String,
        #[source]
        source: std::io::Error,
    },
}

/// Open tunnels per principal.
#[derive(Default)]
pub struct Tunnels {
    open: Mutex<HashMap<String, u32>>,
}

/// Holds one slot of a principal's tunnel budget until dropped.
struct Slot {
    broker: Arc<Broker>,
    principal: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.broker.tunnels.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.principal) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.principal);
            }
        }
    }
}

/// An authorized tunnel with its upstream connection open, not yet copying.
pub struct Opened {
    caller: Caller,
    upstream: String,
    host: String,
    stream: tokio::net::TcpStream,
    _slot: Slot,
    started: Instant,
}

/// The git upstream serving `host` (as the git routes find it), its `ssh` target, and the host's
/// configured spelling.
fn target<'a>(b: &'a Broker, host: &str) -> Option<(&'a Upstream, &'a SshTarget, &'a str)> {
    let ups = b.proxy.as_ref()?.upstreams();
    let u = &ups[route::git_upstream(ups, host)?];
    Some((u, u.ssh.as_ref()?, route::canonical_host(u, host)?))
}

/// Authorize `caller` for a tunnel to `host:port` and connect to its SSH server.
pub async fn open(b: &Arc<Broker>, caller: Caller, host: &str, port: u16) -> Result<Opened, TunnelError> {
    let (u, t, host) =
        target(b, host).ok_or_else(|| TunnelError::NotConfigured { host: host.escape_default().to_string() })?;
    if port != 22 && port != t.port {
        return Err(TunnelError::WrongPort { host: host.into(), port, configured: t.port });
    }
    let host = host.to_string();
    authorize(b, &caller.request_id, &caller.principal, Action::Tunnel, &Resource::module(&host, &u.name))?;
    let principal = caller.principal.display();
    let limit = b.config.server.limits.tunnels_per_principal;
    {
        let mut open = b.tunnels.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(principal.clone()).or_insert(0);
        if *n >= limit {
            return Err(TunnelError::TooMany { principal, limit });
        }
        *n += 1;
    }
    let slot = Slot { broker: b.clone(), principal };
    let addr = t.to_string();
    let connect = tokio::time::timeout(u.timeout, tokio::net::TcpStream::connect(&addr)).await;
    let stream = match connect {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(TunnelError::Connect { upstream: u.name.clone(), target: addr, source }),
        Err(_) => {
            let source = std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
            return Err(TunnelError::Connect { upstream: u.name.clone(), target: addr, source });
        }
    };
    let _ = stream.set_nodelay(true);
    b.audit.record(&Event {
        action: "tunnel".into(),
        resource: host.clone(),
        upstream: Some(u.name.clone()),
        decision: "allow",
        reason: "tunnel opened".into(),
        ..Event::about("tunnel", &caller.request_id, &caller.principal)
    });
    b.metrics.inc("gocred_tunnels_opened_total");
    Ok(Opened { caller, upstream: u.name.clone(), host, stream, _slot: slot, started: Instant::now() })
}

/// How often at most an open tunnel's access is decided again (a removed key, a changed group or
/// policy ends it within this, or within the token lifetime `tokens.ttl` if that is shorter).
pub const RECHECK_EVERY: Duration = Duration::from_secs(30);

/// Copy `from` → `to` until EOF (`Ok`, then `to`'s write side is closed) or an error (`Err`: the
/// tunnel is over both ways, e.g. the caller's connection idled out).
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    count: &AtomicU64,
) -> Result<(), ()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => break,
            Err(_) => return Err(()),
            Ok(n) => {
                to.write_all(&buf[..n]).await.map_err(|_| ())?;
                count.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    }
    let _ = to.shutdown().await;
    Ok(())
}

/// Both directions: done when both reached EOF, or as soon as one fails.
async fn pump_both<A, B>(a: A, b: B) -> &'static str
where
    A: std::future::Future<Output = Result<(), ()>>,
    B: std::future::Future<Output = Result<(), ()>>,
{
    tokio::pin!(a, b);
    let (mut a_done, mut b_done) = (false, false);
    while !(a_done && b_done) {
        tokio::select! {
            r = &mut a, if !a_done => { a_done = true; if r.is_err() { return "failed"; } }
            r = &mut b, if !b_done => { b_done = true; if r.is_err() { return "failed"; } }
        }
    }
    "closed"
}

/// The access decision again: the SSH key still authorized (SSH sessions) and `tunnel` still
/// permitted on `host`.
async fn still_allowed(b: &Broker, caller: &Caller, host: &str, upstream: &str) -> bool {
    let mut principal = caller.principal.clone();
    if principal.auth_method.starts_with("ssh") {
        match b.login.recheck(&principal).await {
            Ok(groups) => principal.groups = groups,
            Err(_) => return false,
        }
    }
    authorize(b, &caller.request_id, &principal, Action::Tunnel, &Resource::module(host, upstream)).is_ok()
}

/// Why a tunnel's session is over: revoked, past its end, or access withdrawn.
async fn session_over(b: &Broker, caller: &Caller, host: &str, upstream: &str) -> &'static str {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_check = Instant::now();
    let recheck = RECHECK_EVERY.min(b.config.tokens.ttl);
    loop {
        tick.tick().await;
        if b.tokens.revocations().is_revoked(&caller.claims.jti, &caller.claims.sid) {
            return "session revoked";
        }
        if crate::unix_now() >= caller.claims.session_end {
            return "session ended";
        }
        if last_check.elapsed() >= recheck {
            last_check = Instant::now();
            if !still_allowed(b, caller, host, upstream).await {
                return "access withdrawn";
            }
        }
    }
}

/// The closing audit line of a tunnel whose upgrade failed (the caller went away before `101`).
pub fn abandon(b: &Broker, t: Opened, why: &str) {
    b.audit.record(&Event {
        action: "tunnel".into(),
        resource: t.host.clone(),
        upstream: Some(t.upstream.clone()),
        decision: "allow",
        reason: format!("tunnel not started: {why}"),
        bytes: Some(0),
        duration_ms: Some(t.started.elapsed().as_millis() as u64),
        ..Event::about("tunnel", &t.caller.request_id, &t.caller.principal)
    });
    b.metrics.inc("gocred_tunnels_closed_total");
}

/// Copy bytes both ways between the caller's upgraded connection and the SSH server until both
/// sides are done or the session is over; then the closing audit line.
pub async fn run<C: AsyncRead + AsyncWrite + Unpin>(b: Arc<Broker>, t: Opened, client: C) {
    let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = tokio::io::split(client);
    let Opened { caller, upstream, host, stream, _slot, started } = t;
    let (sr, sw) = stream.into_split();
    let why = tokio::select! {
        why = pump_both(pump(cr, sw, &up), pump(sr, cw, &down)) => why,
        why = session_over(&b, &caller, &host, &upstream) => why,
    };
    let (up, down) = (up.load(Ordering::Relaxed), down.load(Ordering::Relaxed));
    let ms = started.elapsed().as_millis() as u64;
    b.audit.record(&Event {
        action: "tunnel".into(),
        resource: host.clone(),
        upstream: Some(upstream.clone()),
        decision: "allow",
        reason: format!("tunnel {why}: {up} bytes up, {down} bytes down in {ms}ms"),
        bytes: Some(up + down),
        duration_ms: Some(ms),
        ..Event::about("tunnel", &caller.request_id, &caller.principal)
    });
    b.metrics.inc("gocred_tunnels_closed_total");
}
