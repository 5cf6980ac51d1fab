//! The broker process: [`run`] starts the services ([`Broker::start`]: secrets backend, keys,
//! policies), their background loops ([`crate::service::background`]), the loopback git door
//! ([`crate::http::gitloop`]) and the HTTP(S) server ([`crate::http::serve`]) on a listener the caller bound (tests bind port 0), until
//! `shutdown` resolves; in-flight requests then get `server.shutdown_grace`.
//!
//! Must not: parse command lines, print to the terminal, or read the environment.

use crate::config::Config;
pub use crate::service::{Broker, StartError, load_policies};
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Serve(#[from] crate::http::serve::ServeError),
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// Serve a started broker (with its background loops) until `shutdown` resolves.
pub async fn serve(
    broker: Arc<Broker>,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let mut tasks = tokio::task::JoinSet::new();
    crate::service::background::spawn_all(&broker, &mut tasks);
    if let Some(p) = &broker.proxy
        && let Err(e) = crate::http::gitloop::open(p.clone()).await
    {
        tracing::warn!(error = %e, "cannot open the git door; git builds go to upstreams directly (no per-request retries)");
    }
    let result = crate::http::serve::serve(broker, listener, shutdown).await;
    tasks.abort_all();
    Ok(result?)
}

/// Start and serve in one call.
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let origin = origin_for(&config, &listener).map_err(ServerError::LocalAddr)?;
    let mut shutdown = Box::pin(shutdown);
    match start_waiting(config, origin, &mut shutdown).await? {
        Some(broker) => serve(broker, listener, shutdown).await,
        None => Ok(()),
    }
}

/// [`Broker::start`], waiting for a secrets backend that is unreachable at start: one `WARN`
/// line saying so, then tries again (1 s, doubling to 10 s) until it answers; `None` when
/// `shutdown` resolves first. Any other start error (a refusal, a bad setting) is returned.
pub async fn start_waiting(
    config: Config,
    origin: String,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<Arc<Broker>>, StartError> {
    let mut wait = std::time::Duration::from_secs(1);
    let mut waiting = false;
    loop {
        match Broker::start(config.clone(), origin.clone()).await {
            Ok(b) => {
                if waiting {
                    tracing::info!("the secrets backend answers: starting");
                }
                return Ok(Some(b));
            }
            Err(e) if e.is_unavailable() => {
                let error = crate::error_chain(&e);
                if !waiting {
                    tracing::warn!(%error, "the secrets backend is unreachable at start: waiting for it (no request is answered until then)");
                    waiting = true;
                } else {
                    tracing::debug!(%error, "the secrets backend is still unreachable");
                }
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = &mut *shutdown => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}

/// `server.public_url`, or `scheme://<bound address>`.
pub fn origin_for(config: &Config, listener: &std::net::TcpListener) -> std::io::Result<String> {
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    Ok(match &config.server.public_url {
        Some(u) => u.clone(),
        None => format!("{scheme}://{}", listener.local_addr()?),
    })
}
