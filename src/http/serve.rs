//! Serving the router on a socket: connection caps and idle timeout (`conn`), header-read and
//! first-request timeouts, TLS with certificate reload, graceful shutdown.
//!
//! Must not: build services or decide routes (it serves [`super::app`]).

use super::AppState;
use crate::config::TlsFiles;
use crate::metrics::Metrics;
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Serve `state`'s router on `listener` until `shutdown` resolves; in-flight requests get
/// `server.shutdown_grace` to finish.
pub async fn serve(
    state: AppState,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let srv = state.config.server.clone();
    let handle = axum_server::Handle::new();
    {
        let (handle, grace) = (handle.clone(), srv.shutdown_grace);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(grace_s = grace.as_secs(), "shutting down: finishing in-flight requests");
            handle.graceful_shutdown(Some(grace));
        });
    }
    // Client addresses feed the login rate limit.
    let service = super::app(state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
    let guard = crate::conn::ConnGuard::new(crate::conn::ConnLimits {
        max_connections: srv.max_connections,
        max_connections_per_client: srv.max_connections_per_client,
        idle_timeout: srv.idle_timeout,
        trusted_proxies: srv.trusted_proxies.clone(),
    });
    let acceptor = GuardAcceptor(guard, state.clone());
    let mut server = axum_server::from_tcp(listener)
        .map_err(ServeError::Serve)?
        .first_request_timeout(srv.header_read_timeout)
        .handle(handle);
    server.http_builder().http1().header_read_timeout(srv.header_read_timeout);
    let result = match &srv.tls {
        Some(t) => {
            let cfg = crate::tls::server_config(&t.cert, &t.key)?;
            let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
            // Renewed certificates (cert-manager, a rotated Secret) are picked up without a
            // restart: the files are checked regularly; a broken pair keeps the old one.
            let reload = tokio::spawn(tls_reload(rustls_config.clone(), t.clone(), srv.tls_reload_every));
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls_config)
                .handshake_timeout(srv.header_read_timeout)
                .acceptor(acceptor);
            let r = server.acceptor(acceptor).serve(service).await;
            reload.abort();
            r
        }
        None => server.acceptor(acceptor).serve(service).await,
    };
    result.map_err(ServeError::Serve)
}

/// Admits a connection within the connection caps, wrapped in the idle timeout (TCP_NODELAY set).
#[derive(Clone)]
struct GuardAcceptor(Arc<crate::conn::ConnGuard>, AppState);

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for GuardAcceptor {
    type Stream = crate::conn::GuardedStream;
    type Service = CountBusy<S>;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, CountBusy<S>)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let r = crate::conn::GuardedStream::admit(&self.0, stream).map(|s| {
            let busy = s.busy();
            (s, CountBusy { inner: service, busy })
        });
        if r.is_err() {
            // Counted, not logged: a flood of refused connections must not flood the log too.
            let metrics: &Metrics = &self.1.metrics;
            metrics.inc("gocred_connections_refused_total");
        }
        std::future::ready(r)
    }
}

/// A connection's service counting each request as work in progress until its answer starts
/// (so the idle timeout does not cut a request whose answer is slow to begin).
#[derive(Clone)]
pub struct CountBusy<S> {
    inner: S,
    busy: crate::conn::Busy,
}

impl<S, R> tower::Service<R> for CountBusy<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> Self::Future {
        let working = self.busy.start();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let r = answer.await;
            drop(working);
            r
        })
    }
}

/// Content fingerprint of the certificate and key files (`None` while unreadable).
fn tls_files_stamp(files: &TlsFiles) -> Option<String> {
    let cert = std::fs::read(&files.cert).ok()?;
    let key = zeroize::Zeroizing::new(std::fs::read(&files.key).ok()?);
    Some(crate::auth::sha256_hex(&[&cert, &key]))
}

/// TLS reload loop: re-read the TLS files when their content changes and serve the new pair.
async fn tls_reload(rustls_config: axum_server::tls_rustls::RustlsConfig, files: TlsFiles, every: std::time::Duration) {
    let mut current = tls_files_stamp(&files);
    loop {
        tokio::time::sleep(every).await;
        let stamp = tls_files_stamp(&files);
        if stamp.is_none() || stamp == current {
            continue;
        }
        match crate::tls::server_config(&files.cert, &files.key) {
            Ok(cfg) => {
                rustls_config.reload_from_config(cfg);
                current = stamp;
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            // Mid-rotation (new cert, old key) or broken: keep serving the old pair, retry later.
            Err(e) => {
                tracing::warn!(cert = %files.cert.display(), error = %e, "new TLS files not usable yet; keeping the current certificate")
            }
        }
    }
}
