//! The broker process: [`Broker::start`] opens the secrets backend and loads the signing keys;
//! [`Broker::serve`] runs the HTTP(S) server on a listener the caller bound (tests bind port 0)
//! with background tasks (readiness probe, key rotation, Vault token renewal) until `shutdown`
//! resolves, then lets in-flight requests finish. [`run`] is both in one call.
//!
//! Must not: parse command lines, print to the terminal, or read the environment.

use crate::config::Config;
use crate::health::{self, Readiness};
use crate::http::{self, AppState};
use crate::keys::{Keys, KeysError};
use crate::metrics::Metrics;
use crate::secrets::{SecretStore, SecretsError};
use crate::tls::TlsError;
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    OpenSecrets(SecretsError),
    #[error(transparent)]
    LoadKeys(KeysError),
    #[error(transparent)]
    Tls(TlsError),
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// A started broker: backend open, keys loaded, not yet serving.
pub struct Broker {
    pub config: Config,
    pub store: Arc<SecretStore>,
    pub keys: Arc<Keys>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
}

impl Broker {
    pub async fn start(config: Config) -> Result<Broker, ServerError> {
        crate::tls::install_crypto_provider();
        let store = Arc::new(
            SecretStore::open(&config.secrets)
                .await
                .map_err(ServerError::OpenSecrets)?,
        );
        let keys = Keys::load_or_create(
            store.clone(),
            &config.secrets.prefix,
            config.tokens.rotate_every,
            config.tokens.ttl,
        )
        .await
        .map_err(ServerError::LoadKeys)?;
        let readiness = Arc::new(Readiness::new(store.describe(), config.secrets.grace));
        let metrics = Arc::new(Metrics::new());
        metrics.set_gauge("gocred_ready", 1.0);
        Ok(Broker {
            config,
            store,
            keys: Arc::new(keys),
            readiness,
            metrics,
        })
    }

    /// The router state for this broker.
    pub fn app_state(&self) -> AppState {
        AppState {
            keys: self.keys.clone(),
            readiness: self.readiness.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// Serve on `listener` until `shutdown` resolves; in-flight requests get
    /// `server.shutdown_grace` to finish.
    pub async fn serve(
        self,
        listener: std::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (store, readiness, metrics, every) = (
                self.store.clone(),
                self.readiness.clone(),
                self.metrics.clone(),
                self.config.secrets.probe_every,
            );
            tasks.spawn(
                async move { health::probe_loop(&store, &readiness, &metrics, every).await },
            );
        }
        {
            let (keys, metrics) = (self.keys.clone(), self.metrics.clone());
            tasks.spawn(async move {
                loop {
                    tokio::time::sleep(keys.tick_every()).await;
                    match keys.tick(crate::unix_now()).await {
                        Ok(true) => metrics.inc("gocred_key_rotations_total"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!(error = %e, "signing key refresh failed; keeping the current keys"),
                    }
                }
            });
        }
        {
            let (store, metrics) = (self.store.clone(), self.metrics.clone());
            tasks.spawn(async move { store.maintain(&metrics).await });
        }

        let router = http::app(self.app_state());
        let handle = axum_server::Handle::new();
        let grace = self.config.server.shutdown_grace;
        {
            let handle = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!(
                    grace_s = grace.as_secs(),
                    "shutting down: finishing in-flight requests"
                );
                handle.graceful_shutdown(Some(grace));
            });
        }
        let service = router.into_make_service();
        let result = match &self.config.server.tls {
            Some(t) => {
                let cfg = crate::tls::server_config(&t.cert, &t.key).map_err(ServerError::Tls)?;
                axum_server::from_tcp_rustls(
                    listener,
                    axum_server::tls_rustls::RustlsConfig::from_config(cfg),
                )
                .map_err(ServerError::Serve)?
                .handle(handle)
                .serve(service)
                .await
            }
            None => {
                axum_server::from_tcp(listener)
                    .map_err(ServerError::Serve)?
                    .handle(handle)
                    .serve(service)
                    .await
            }
        };
        tasks.abort_all();
        result.map_err(ServerError::Serve)
    }
}

/// Start and serve in one call (see [`Broker`]).
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    Broker::start(config).await?.serve(listener, shutdown).await
}
