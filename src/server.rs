//! The broker process: [`Broker::start`] opens the secrets backend and loads the signing keys;
//! [`Broker::serve`] runs the HTTP(S) server on a listener the caller bound (tests bind port 0)
//! with background tasks (readiness probe, key rotation, Vault token renewal) until `shutdown`
//! resolves, then lets in-flight requests finish. [`run`] is both in one call.
//!
//! Must not: parse command lines, print to the terminal, or read the environment.

use crate::audit::Audit;
use crate::auth::proof::ProofVerifier;
use crate::auth::ssh::SshLogin;
use crate::config::{Config, PolicyConfig};
use crate::health::{self, Readiness};
use crate::http::{self, AppState};
use crate::keys::{Keys, KeysError};
use crate::metrics::Metrics;
use crate::policy::{Policies, PolicyEngine, PolicyError};
use crate::revocation::Revocations;
use crate::secrets::{SecretStore, SecretsError};
use crate::tls::TlsError;
use crate::token::TokenService;
use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    LoadPolicies(crate::policy::PolicyError),
    #[error(transparent)]
    OpenAudit(crate::audit::AuditError),
    #[error("ssh login setup: {0}")]
    SetupLogin(crate::auth::AuthError),
    #[error(transparent)]
    SetupProxy(crate::proxy::ProxyError),
    #[error("oidc issuers: {0}")]
    SetupOidc(#[source] crate::auth::oidc::OidcError),
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
    /// The public origin tokens are issued for and proofs are scoped to.
    pub origin: String,
    pub store: Arc<SecretStore>,
    pub keys: Arc<Keys>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub tokens: Arc<TokenService>,
    pub login: Arc<SshLogin>,
    pub proofs: Arc<ProofVerifier>,
    pub policy: Arc<PolicyEngine>,
    pub audit: Arc<Audit>,
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
    pub limits: Arc<crate::ratelimit::Limiters>,
    pub oidc: Arc<crate::auth::oidc::OidcVerifier>,
}

/// Load the configured policy set.
pub fn load_policies(cfg: &PolicyConfig) -> Result<(Policies, Option<std::path::PathBuf>), PolicyError> {
    match cfg {
        PolicyConfig::Dir(d) => Ok((Policies::load_dir(d)?, Some(d.clone()))),
        PolicyConfig::Dev { user } => Ok((crate::policy::dev_policies(user)?, None)),
        PolicyConfig::None => {
            tracing::warn!("no [policy] dir configured: every login and download is denied");
            Ok((Policies::from_sources(crate::policy::EMBEDDED_SCHEMA, &[])?, None))
        }
    }
}

impl Broker {
    /// Open the backend, load keys and policies. `origin`: `server.public_url`, or what the
    /// caller derived from the bound address.
    pub async fn start(config: Config, origin: String) -> Result<Broker, ServerError> {
        crate::tls::install_crypto_provider();
        let store = Arc::new(SecretStore::open(&config.secrets).await.map_err(ServerError::OpenSecrets)?);
        let keys =
            Keys::load_or_create(store.clone(), &config.secrets.prefix, config.tokens.rotate_every, config.tokens.ttl)
                .await
                .map_err(ServerError::LoadKeys)?;
        let (policies, policy_dir) = load_policies(&config.policy).map_err(ServerError::LoadPolicies)?;
        let audit = Arc::new(Audit::open(&config.audit).map_err(ServerError::OpenAudit)?);
        let readiness = Arc::new(Readiness::new(store.describe(), config.secrets.grace));
        let metrics = Arc::new(Metrics::new());
        metrics.set_gauge("gocred_ready", 1.0);
        let keys = Arc::new(keys);
        let prefix = &config.secrets.prefix;
        let revocations = Arc::new(Revocations::new(store.clone(), prefix));
        revocations.ensure_record().await.map_err(ServerError::OpenSecrets)?;
        revocations.sync(crate::unix_now()).await.map_err(ServerError::OpenSecrets)?;
        let tokens = Arc::new(TokenService::new(
            keys.clone(),
            origin.clone(),
            config.tokens.ttl,
            config.tokens.max_session,
            revocations,
        ));
        let challenge_key = crate::secrets::shared_key(&store, &format!("{prefix}/challenge-key"))
            .await
            .map_err(ServerError::OpenSecrets)?;
        let login = Arc::new(
            SshLogin::new(&challenge_key, origin.clone(), config.ssh.clone(), store.clone())
                .map_err(ServerError::SetupLogin)?,
        );
        let proofs = Arc::new(ProofVerifier::new(origin.clone(), config.ssh.require_user_verification));
        let policy = Arc::new(PolicyEngine::new(policies, policy_dir));
        let proxy = if config.upstreams.is_empty() {
            None
        } else {
            Some(Arc::new(
                crate::proxy::Proxy::new(config.upstreams.clone(), store.clone()).map_err(ServerError::SetupProxy)?,
            ))
        };
        if !config.tokens.require_proof {
            tracing::warn!(
                "tokens.require_proof = false: tokens alone authenticate (bearer tokens); use only for legacy tools"
            );
        }
        let limits =
            Arc::new(crate::ratelimit::Limiters::new(&config.server.limits, config.server.trusted_proxies.clone()));
        let oidc = Arc::new(crate::auth::oidc::OidcVerifier::new(&config.oidc).map_err(ServerError::SetupOidc)?);
        Ok(Broker {
            config,
            origin,
            store,
            keys,
            readiness,
            metrics,
            tokens,
            login,
            proofs,
            policy,
            audit,
            proxy,
            limits,
            oidc,
        })
    }

    /// The router state for this broker.
    pub fn app_state(&self) -> AppState {
        AppState {
            keys: self.keys.clone(),
            readiness: self.readiness.clone(),
            metrics: self.metrics.clone(),
            tokens: self.tokens.clone(),
            login: self.login.clone(),
            proofs: self.proofs.clone(),
            policy: self.policy.clone(),
            audit: self.audit.clone(),
            origin: self.origin.clone(),
            require_proof: self.config.tokens.require_proof,
            max_session_secs: self.config.tokens.max_session.as_secs(),
            proxy: self.proxy.clone(),
            limits: self.limits.clone(),
            request_timeout: self.config.server.request_timeout,
            webhook: self.config.webhook.clone().map(Arc::new),
            oidc: self.oidc.clone(),
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
            let (store, readiness, metrics, every) =
                (self.store.clone(), self.readiness.clone(), self.metrics.clone(), self.config.secrets.probe_every);
            tasks.spawn(async move { health::probe_loop(&store, &readiness, &metrics, every).await });
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
        {
            let tokens = self.tokens.clone();
            tasks.spawn(async move {
                loop {
                    tokio::time::sleep(crate::revocation::SYNC_EVERY).await;
                    if let Err(e) = tokens.revocations().sync(crate::unix_now()).await {
                        tracing::warn!(error = %e, "revocation list refresh failed; keeping the last one");
                    }
                }
            });
        }
        {
            let policy = self.policy.clone();
            tasks.spawn(async move {
                let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                    tracing::error!("cannot install SIGHUP handler: policy reload disabled");
                    return;
                };
                while hup.recv().await.is_some() {
                    match policy.reload() {
                        Ok(n) => tracing::info!(policies = n, "policies reloaded"),
                        Err(e) => tracing::error!(error = %e, "policy reload failed; keeping the previous policies"),
                    }
                }
            });
        }

        let router = http::app(self.app_state());
        let handle = axum_server::Handle::new();
        let grace = self.config.server.shutdown_grace;
        {
            let handle = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!(grace_s = grace.as_secs(), "shutting down: finishing in-flight requests");
                handle.graceful_shutdown(Some(grace));
            });
        }
        // Client addresses feed the login rate limit.
        let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let srv = &self.config.server;
        let guard = crate::conn::ConnGuard::new(crate::conn::ConnLimits {
            max_connections: srv.max_connections,
            max_connections_per_client: srv.max_connections_per_client,
            idle_timeout: srv.idle_timeout,
            trusted_proxies: srv.trusted_proxies.clone(),
        });
        let acceptor = GuardAcceptor(guard, self.metrics.clone());
        let mut server = axum_server::from_tcp(listener)
            .map_err(ServerError::Serve)?
            .first_request_timeout(srv.header_read_timeout)
            .handle(handle);
        server.http_builder().http1().header_read_timeout(srv.header_read_timeout);
        let result = match &srv.tls {
            Some(t) => {
                let cfg = crate::tls::server_config(&t.cert, &t.key).map_err(ServerError::Tls)?;
                let rustls_config = axum_server::tls_rustls::RustlsConfig::from_config(cfg);
                // Renewed certificates (cert-manager, a rotated Secret) are picked up without a
                // restart: the files are checked regularly; a broken pair keeps the old one.
                {
                    let (rc, files, every) = (rustls_config.clone(), t.clone(), srv.tls_reload_every);
                    tasks.spawn(async move { tls_reload_loop(rc, files, every).await });
                }
                let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(rustls_config)
                    .handshake_timeout(srv.header_read_timeout)
                    .acceptor(acceptor);
                server.acceptor(acceptor).serve(service).await
            }
            None => server.acceptor(acceptor).serve(service).await,
        };
        tasks.abort_all();
        result.map_err(ServerError::Serve)
    }
}

/// Admits a connection within the connection caps, wrapped in the idle timeout (TCP_NODELAY set).
#[derive(Clone)]
struct GuardAcceptor(Arc<crate::conn::ConnGuard>, Arc<Metrics>);

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for GuardAcceptor {
    type Stream = crate::conn::GuardedStream;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let r = crate::conn::GuardedStream::admit(&self.0, stream).map(|s| (s, service));
        if r.is_err() {
            // Counted, not logged: a flood of refused connections must not flood the log too.
            self.1.inc("gocred_connections_refused_total");
        }
        std::future::ready(r)
    }
}

/// Content fingerprint of the certificate and key files (`None` while unreadable).
fn tls_files_stamp(files: &crate::config::TlsFiles) -> Option<String> {
    let cert = std::fs::read(&files.cert).ok()?;
    let key = zeroize::Zeroizing::new(std::fs::read(&files.key).ok()?);
    Some(crate::auth::sha256_hex(&[&cert, &key]))
}

/// Re-read the TLS files when their content changes and serve the new pair.
async fn tls_reload_loop(
    rustls_config: axum_server::tls_rustls::RustlsConfig,
    files: crate::config::TlsFiles,
    every: std::time::Duration,
) {
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

/// Start and serve in one call (see [`Broker`]).
pub async fn run(
    listener: std::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let origin = origin_for(&config, &listener).map_err(ServerError::Serve)?;
    Broker::start(config, origin).await?.serve(listener, shutdown).await
}

/// `server.public_url`, or `scheme://<bound address>`.
pub fn origin_for(config: &Config, listener: &std::net::TcpListener) -> std::io::Result<String> {
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    Ok(match &config.server.public_url {
        Some(u) => u.clone(),
        None => format!("{scheme}://{}", listener.local_addr()?),
    })
}
