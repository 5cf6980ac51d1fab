//! Connection hygiene below HTTP: a global and a per-client cap on open connections, and an
//! idle timeout closing a connection on which nothing was read or written for a while and no
//! work is in progress ([`Busy`]: keep-alive connections left open, slowloris writers that
//! stopped, readers that never read — never a request whose answer is slow to start).
//! Header-read and TLS-handshake timeouts are set on the HTTP server in [`crate::server`].
//!
//! Must not: know about HTTP; count a trusted proxy (which carries many users' connections)
//! against the per-client cap.

use crate::ratelimit::{Cidr, client_key, is_trusted};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// Limits applied to every accepted connection.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub idle_timeout: Duration,
    pub trusted_proxies: Vec<Cidr>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// Shared connection counters; [`ConnGuard::admit`] hands out a permit per connection.
pub struct ConnGuard {
    limits: ConnLimits,
    counts: Mutex<Counts>,
}

/// Held by an open connection; dropping it frees its slot.
pub struct Permit {
    guard: Arc<ConnGuard>,
    key: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut c = self.guard.counts.lock().expect("connection counts poisoned");
        c.total -= 1;
        if let Some(k) = self.key
            && let Some(n) = c.per_client.get_mut(&k)
        {
            *n -= 1;
            if *n == 0 {
                c.per_client.remove(&k);
            }
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("connection refused: {0} connections open (server.max_connections)")]
    AdmitTotal(usize),
    #[error("connection from {ip} refused: {n} connections open from it (server.max_connections_per_client)")]
    AdmitClient { ip: IpAddr, n: usize },
}

impl ConnGuard {
    pub fn new(limits: ConnLimits) -> Arc<ConnGuard> {
        Arc::new(ConnGuard { limits, counts: Mutex::new(Counts::default()) })
    }

    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// Open connections right now (for metrics and tests).
    pub fn open(&self) -> usize {
        self.counts.lock().expect("connection counts poisoned").total
    }

    /// A slot for a new connection from `peer`, or why not.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, ConnError> {
        let mut c = self.counts.lock().expect("connection counts poisoned");
        if c.total >= self.limits.max_connections {
            return Err(ConnError::AdmitTotal(c.total));
        }
        let key = (!is_trusted(peer, &self.limits.trusted_proxies)).then(|| client_key(peer));
        if let Some(k) = key {
            let n = c.per_client.get(&k).copied().unwrap_or(0);
            if n >= self.limits.max_connections_per_client {
                return Err(ConnError::AdmitClient { ip: k, n });
            }
            c.per_client.insert(k, n + 1);
        }
        c.total += 1;
        Ok(Permit { guard: self.clone(), key })
    }
}

/// Work in progress on one connection (the server above counts each request until its answer
/// starts): a connection with work in progress is not idle, however long the answer takes to
/// start — a big module's first build sends nothing for a while.
#[derive(Clone, Default)]
pub struct Busy(Arc<std::sync::atomic::AtomicUsize>);

/// One piece of [`Busy`] work; dropping it ends it.
pub struct BusyGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Busy {
    pub fn start(&self) -> BusyGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        BusyGuard(self.0.clone())
    }

    fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A TCP stream that fails with `TimedOut` once nothing moved for the idle timeout while no
/// work is in progress on it ([`Busy`]), and frees its connection slot when dropped.
pub struct GuardedStream {
    inner: TcpStream,
    busy: Busy,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    _permit: Permit,
}

impl GuardedStream {
    fn touch(&mut self) {
        self.last = Instant::now();
    }

    /// Ready(error) once idle for too long; otherwise registers for a wake-up at the deadline.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let deadline = self.last + self.idle;
            if Instant::now() >= deadline {
                if self.busy.any() {
                    self.touch();
                    continue;
                }
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle for too long"));
            }
            if self.timer.deadline() != deadline {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    self.touch();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl GuardedStream {
    /// The work counter of this connection.
    pub fn busy(&self) -> Busy {
        self.busy.clone()
    }

    /// Admit `stream` (TCP_NODELAY set: responses are written as headers then body chunks, and
    /// small answers would otherwise wait for delayed ACKs).
    pub fn admit(guard: &Arc<ConnGuard>, stream: TcpStream) -> io::Result<GuardedStream> {
        let peer = stream.peer_addr()?.ip();
        let permit = guard.admit(peer).map_err(|e| io::Error::other(e.to_string()))?;
        stream.set_nodelay(true)?;
        let idle = guard.limits.idle_timeout;
        Ok(GuardedStream {
            inner: stream,
            busy: Busy::default(),
            idle,
            last: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(total: usize, per: usize, trusted: &[&str]) -> Arc<ConnGuard> {
        ConnGuard::new(ConnLimits {
            max_connections: total,
            max_connections_per_client: per,
            idle_timeout: Duration::from_millis(200),
            trusted_proxies: trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
        })
    }

    #[test]
    fn caps_per_client_and_in_total_and_frees_on_drop() {
        let g = guard(4, 2, &["10.0.0.0/8"]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let p1 = g.admit(a).unwrap();
        let _p2 = g.admit(a).unwrap();
        assert!(matches!(g.admit(a), Err(ConnError::AdmitClient { .. })));
        // Same IPv6 /64 is one client.
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        let _p3 = g.admit(v6a).unwrap();
        let _p4 = g.admit(v6b).unwrap();
        assert!(matches!(g.admit("2001:db8::3".parse().unwrap()), Err(ConnError::AdmitTotal(4))));
        drop(p1);
        assert_eq!(g.open(), 3);
        let _p5 = g.admit(a).unwrap();
        // A trusted proxy is not held to the per-client cap (only the total).
        let g = guard(10, 1, &["10.0.0.0/8"]);
        let ingress: IpAddr = "10.1.1.1".parse().unwrap();
        let _held: Vec<_> = (0..5).map(|_| g.admit(ingress).unwrap()).collect();
        assert_eq!(g.open(), 5);
    }

    #[tokio::test]
    async fn an_idle_connection_times_out_and_activity_keeps_it_open() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let g = guard(10, 10, &[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.write_all(b"x").await.unwrap();
            }
            // Then silence; keep the socket open for longer than the idle timeout.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut s = GuardedStream::admit(&g, s).unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        let mut got = 0;
        let err = loop {
            match s.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert_eq!(got, 4, "activity within the idle timeout kept the connection open");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1200), "{took:?}");
        drop(s);
        assert_eq!(g.open(), 0);
        client.abort();
    }

    /// A silent connection with work in progress (a request whose answer has not started) is
    /// not idle; once the work ends, the idle timeout applies again.
    #[tokio::test]
    async fn work_in_progress_keeps_a_silent_connection_open() {
        use tokio::io::AsyncReadExt;
        let g = guard(10, 10, &[]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let _c = TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let (s, _) = listener.accept().await.unwrap();
        let mut s = GuardedStream::admit(&g, s).unwrap();
        let working = s.busy().start();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf)).await;
        assert!(r.is_err(), "cut while busy: {r:?}");
        drop(working);
        let started = std::time::Instant::now();
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(600), "{:?}", started.elapsed());
        client.abort();
    }
}
