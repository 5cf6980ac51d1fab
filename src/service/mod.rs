//! The service layer between HTTP and the domain: [`Broker`] holds every domain service of one
//! broker process (opened by [`Broker::start`]); [`access`] authenticates callers (token +
//! proof → [`access::Caller`]) and asks the policy; [`session`] runs the login, exchange,
//! refresh and revoke flows; [`fallback`] fetches a git-hosted module from its upstream or
//! its mirrors; [`tunnel`] the SSH tunnels; [`meta`] describes the broker to clients; [`background`] names
//! the loops that keep a broker current (key rotation, revocation sync, readiness probe,
//! secrets maintenance, policy reload).
//!
//! Services return typed results and their own error enums; the HTTP layer turns them into
//! status codes (in `http::error`, the one place that does).
//!
//! Must not: import axum or know about status codes, headers or request bodies.

pub mod access;
pub mod background;
pub mod fallback;
pub mod meta;
pub mod modules;
pub mod session;
pub mod tunnel;

use crate::audit::Audit;
use crate::auth::oidc::OidcVerifier;
use crate::auth::proof::ProofVerifier;
use crate::auth::ssh::SshLogin;
use crate::config::{Config, PolicyConfig};
use crate::health::Readiness;
use crate::keys::{Keys, KeysError};
use crate::metrics::Metrics;
use crate::policy::{Policies, PolicyEngine, PolicyError};
use crate::proxy::Proxy;
use crate::ratelimit::Limiters;
use crate::revocation::Revocations;
use crate::secrets::{SecretStore, SecretsError};
use crate::token::TokenService;
use std::sync::Arc;

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    LoadPolicies(#[from] PolicyError),
    #[error(transparent)]
    OpenAudit(#[from] crate::audit::AuditError),
    #[error("ssh login setup: {0}")]
    SetupLogin(#[source] crate::auth::AuthError),
    #[error(transparent)]
    SetupProxy(#[from] crate::proxy::ProxyError),
    #[error("oidc issuers: {0}")]
    SetupOidc(#[source] crate::auth::oidc::OidcError),
    #[error(transparent)]
    OpenSecrets(#[from] SecretsError),
    #[error(transparent)]
    LoadKeys(#[from] KeysError),
}

impl StartError {
    /// The secrets backend is unreachable (not misconfigured): starting again later can work.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StartError::OpenSecrets(e) | StartError::LoadKeys(KeysError::Load(e) | KeysError::Store(e)) => {
                e.is_unavailable()
            }
            _ => false,
        }
    }
}

/// A started broker: backend open, keys and policies loaded. Shared (`Arc`) by the router and
/// the background loops.
pub struct Broker {
    pub config: Config,
    /// The public origin tokens are issued for and proofs are scoped to.
    pub origin: String,
    pub store: Arc<SecretStore>,
    pub keys: Arc<Keys>,
    pub readiness: Readiness,
    pub metrics: Metrics,
    pub tokens: TokenService,
    pub login: SshLogin,
    pub proofs: ProofVerifier,
    pub policy: PolicyEngine,
    pub audit: Audit,
    /// The forwarding half of the proxy, when upstreams are configured.
    pub proxy: Option<Arc<Proxy>>,
    /// Per client on logins, per principal on authenticated routes and revocations.
    pub limits: Limiters,
    /// Trusted OIDC issuers, for token exchanges.
    pub oidc: OidcVerifier,
    /// Open SSH tunnels per principal.
    pub tunnels: tunnel::Tunnels,
    /// Git-hosted modules served over GOPROXY, built in the private `[store] dir`.
    pub modfetch: Arc<crate::modfetch::ModFetch>,
    /// Every canonical version served (`[store]`); `None` when it could not be opened (the
    /// broker then serves from the upstreams alone, and says so at start).
    pub modstore: Option<Arc<crate::modstore::ModStore>>,
    /// `@v/list` and `@latest` answers (fresh, negative, stale).
    pub lists: modules::ListCache,
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
    pub async fn start(config: Config, origin: String) -> Result<Arc<Broker>, StartError> {
        crate::install_crypto_provider();
        let store = Arc::new(SecretStore::open(&config.secrets).await?);
        let prefix = config.secrets.prefix.clone();
        let keys = Arc::new(
            Keys::load_or_create(store.clone(), &prefix, config.tokens.rotate_every, config.tokens.ttl).await?,
        );
        let (policies, policy_dir) = load_policies(&config.policy)?;
        let audit = Audit::open(&config.audit)?;
        let readiness = Readiness::new(store.describe(), config.secrets.grace);
        let metrics = Metrics::new();
        metrics.set_gauge("gocred_ready", 1.0);
        let revocations = Arc::new(Revocations::new(store.clone(), &prefix));
        revocations.ensure_record().await?;
        revocations.sync(crate::unix_now()).await?;
        let t = &config.tokens;
        let tokens = TokenService::new(keys.clone(), origin.clone(), t.ttl, t.max_session, revocations);
        let challenge_key = crate::secrets::shared_key(&store, &format!("{prefix}/challenge-key")).await?;
        let login = SshLogin::new(&challenge_key, origin.clone(), config.ssh.clone(), store.clone())
            .map_err(StartError::SetupLogin)?;
        let proofs = ProofVerifier::new(origin.clone(), config.ssh.require_user_verification);
        let policy = PolicyEngine::new(policies, policy_dir);
        let proxy = match config.upstreams.is_empty() {
            true => None,
            false => Some(Arc::new(Proxy::new(config.upstreams.clone(), store.clone())?)),
        };
        if !config.tokens.require_proof {
            tracing::warn!(
                "tokens.require_proof = false: tokens alone authenticate (bearer tokens); use only for legacy tools"
            );
        }
        let limits = Limiters::new(&config.server.limits, config.server.trusted_proxies.clone());
        let oidc = OidcVerifier::new(&config.oidc).map_err(StartError::SetupOidc)?;
        let modfetch = Arc::new(crate::modfetch::ModFetch::new(config.store.dir.clone()));
        let modstore = match crate::modstore::ModStore::open(&config.store, store.clone(), &prefix).await {
            Ok(s) => {
                tracing::info!(store = s.describe(), "module store open");
                Some(Arc::new(s))
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "module store unavailable: serving from the upstreams only");
                None
            }
        };
        Ok(Arc::new(Broker {
            modfetch,
            modstore,
            lists: Default::default(),
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
            tunnels: Default::default(),
        }))
    }

    /// The admission webhook's settings, when `[webhook] enabled = true`.
    pub fn webhook(&self) -> Option<&crate::webhook::InjectSettings> {
        self.config.webhook.as_ref()
    }
}
