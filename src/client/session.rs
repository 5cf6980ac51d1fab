//! Keeping a session usable: a token good for at least the refresh margin, refreshed with a
//! proof, or renewed the way the session was obtained ([`SessionMethod`]: SSH login with the
//! session key, the identity provider's refresh token, or the ambient workload token) once
//! refresh is no longer possible; and the proof helpers print, cached in the session.
//!
//! Must not: print to the terminal, or hold the state lock itself (callers pass the locked
//! [`Store`]).

use super::ClientError;
use super::ambient::Source;
use super::api::{BrokerClient, TokenResponse};
use super::signer::Signer;
use super::state::{IdpState, Session, SessionMethod, Store};
use crate::proto::token::{is_proof, is_token};
use std::path::PathBuf;

/// Refresh when the token has less than this left (or a quarter of its lifetime, if shorter).
const REFRESH_MARGIN_SECS: u64 = 120;
/// Proofs the client makes for its own calls live this long.
pub const PROOF_SECS: u64 = 300;
/// Proofs made for helpers live this long (Go and git reuse them within it).
const HELPER_PROOF_SECS: u64 = 540;
/// Name of the ephemeral key file (in the state dir) SSO sessions are bound to.
pub const SSO_KEY: &str = "sso_ed25519";
/// Name of the ephemeral key file workload (ambient) sessions are bound to.
pub const WORKLOAD_KEY: &str = "workload_ed25519";

/// A new session from a broker's token answer.
pub fn session_from(
    broker: &BrokerClient,
    ca: Option<PathBuf>,
    signer: &Signer,
    t: TokenResponse,
    method: SessionMethod,
) -> Session {
    Session {
        broker: broker.url.clone(),
        ca_cert: ca,
        user: t.user,
        token: t.access_token,
        expires_at: t.expires_at,
        obtained_at: crate::unix_now(),
        session_expires_at: t.session_expires_at,
        key_fingerprint: t.key_fingerprint,
        key: signer.key_ref(),
        groups: t.groups,
        proof: None,
        proof_exp: 0,
        method,
        idp: None,
    }
}

/// Where a workload's session comes from: a token source and the broker to exchange it at.
#[derive(Debug, Clone)]
pub struct Ambient {
    pub source: Source,
    pub broker: String,
    pub ca: Option<PathBuf>,
}

static AMBIENT_OVERRIDE: std::sync::OnceLock<Ambient> = std::sync::OnceLock::new();

/// Ambient configuration given on the command line (`gocred agent`), which wins over the
/// environment for this process.
pub fn set_ambient_override(a: Ambient) {
    let _ = AMBIENT_OVERRIDE.set(a);
}

/// Ambient workload configuration, from the override or the environment (`GOCRED_BROKER` plus a
/// token source).
pub fn ambient() -> Option<Ambient> {
    if let Some(o) = AMBIENT_OVERRIDE.get() {
        return Some(o.clone());
    }
    let source = Source::detect(None, None)?;
    let broker = std::env::var("GOCRED_BROKER").ok().filter(|b| !b.is_empty())?;
    let ca = std::env::var_os("GOCRED_CA_CERT").filter(|v| !v.is_empty()).map(PathBuf::from);
    Some(Ambient { source, broker, ca })
}

/// Exchange the ambient workload token for a new session.
async fn ambient_session(store: &Store, a: &Ambient) -> Result<Session, ClientError> {
    let client = BrokerClient::new(&a.broker, a.ca.as_deref())?;
    let key = store.ephemeral_key(WORKLOAD_KEY)?;
    let signer = Signer::file(&key, false)?;
    let subject = a.source.token().await?;
    let t = client
        .exchange(&subject, &signer)
        .await
        .map_err(|e| ClientError::Exchange { what: a.source.describe(), source: Box::new(e) })?;
    let s = session_from(&client, a.ca.clone(), &signer, t, SessionMethod::Ambient);
    store.save(&s)?;
    Ok(s)
}

/// The stored session (maybe stale), or a new one from the ambient workload token.
pub async fn current(store: &Store) -> Result<Session, ClientError> {
    if let Some(s) = store.load()? {
        return Ok(s);
    }
    match ambient() {
        Some(a) => ambient_session(store, &a).await,
        None => Err(ClientError::NoSession),
    }
}

/// A new SSO session from the identity provider's refresh token.
async fn renew_sso(store: &Store, s: &Session, client: &BrokerClient, signer: &Signer) -> Result<Session, ClientError> {
    let renew = |reason| ClientError::Renew { reason };
    let idp = s.idp.as_ref().ok_or(renew("SSO session without provider state: run gocred login --oidc"))?;
    let refresh_token = idp
        .refresh_token
        .as_deref()
        .ok_or(renew("SSO session expired and the provider gave no refresh token: run gocred login --oidc"))?;
    let provider =
        super::oidc::Provider::discover(&idp.issuer, &idp.client_id, Vec::new(), s.ca_cert.as_deref()).await?;
    let tokens = provider.refresh(refresh_token).await.map_err(|e| ClientError::RenewFailed {
        what: "SSO session expired and the provider refused the refresh: run gocred login --oidc",
        source: Box::new(e),
    })?;
    let t = client.exchange(&tokens.id_token, signer).await?;
    let mut next = session_from(client, s.ca_cert.clone(), signer, t, SessionMethod::Oidc);
    next.idp = Some(IdpState { refresh_token: tokens.refresh_token, ..idp.clone() });
    store.save(&next)?;
    Ok(next)
}

/// A session whose token is good for at least the refresh margin (see the module doc). With no
/// session at all, an ambient workload token starts one. `interactive`: a key file's passphrase
/// may be asked for.
pub async fn fresh(store: &Store, interactive: bool) -> Result<Session, ClientError> {
    let s = match store.load()? {
        Some(s) => s,
        None => match ambient() {
            Some(a) => return ambient_session(store, &a).await,
            None => return Err(ClientError::NotLoggedIn),
        },
    };
    let now = crate::unix_now();
    let margin = REFRESH_MARGIN_SECS.min(s.expires_at.saturating_sub(s.obtained_at) / 4);
    if s.expires_at > now + margin {
        return Ok(s);
    }
    let signer = Signer::from_ref(&s.key, interactive).map_err(|e| ClientError::RenewFailed {
        what: "token expired and no key available: run gocred login",
        source: Box::new(e),
    })?;
    let client = BrokerClient::new(&s.broker, s.ca_cert.as_deref())?;
    let refreshed = if s.expires_at > now + 1 && s.session_expires_at > now + margin {
        let proof = signer.proof(s.token.expose(), &format!("{}/", client.url), now + PROOF_SECS)?;
        client.refresh(s.token.expose(), &proof).await.ok()
    } else {
        None
    };
    let t = match (refreshed, s.method) {
        (Some(t), _) => t,
        (None, SessionMethod::Oidc) => return renew_sso(store, &s, &client, &signer).await,
        (None, SessionMethod::Ambient) => {
            let a = ambient().ok_or(ClientError::Renew {
                reason: "workload session expired and no workload token is configured (GOCRED_TOKEN_FILE, GOCRED_BROKER, ...)",
            })?;
            return ambient_session(store, &a).await;
        }
        (None, SessionMethod::Ssh) => {
            client.login_ssh(&s.user, &signer).await.map_err(|e| ClientError::RenewFailed {
                what: "token expired and login with the session key failed",
                source: Box::new(e),
            })?
        }
    };
    let mut next = session_from(&client, s.ca_cert.clone(), &signer, t, s.method);
    next.idp = s.idp.clone();
    store.save(&next)?;
    Ok(next)
}

/// A fresh session plus a proof for it valid at least a minute more (cached in the session), and
/// that proof's expiry. `force_refresh`: get a new token even if the current one looks fine (the
/// broker said 401).
pub async fn credentials(
    store: &Store,
    force_refresh: bool,
    interactive: bool,
) -> Result<(Session, String, u64), ClientError> {
    if force_refresh && let Some(mut s) = store.load()? {
        s.expires_at = 0;
        s.proof = None;
        store.save(&s)?;
    }
    let mut s = fresh(store, interactive).await?;
    if !is_token(s.token.expose()) {
        return Err(ClientError::MalformedToken("the session holds a malformed token"));
    }
    let now = crate::unix_now();
    if let Some(p) = s.proof.clone().filter(|p| s.proof_exp > now + 60 && is_proof(p)) {
        let exp = s.proof_exp;
        return Ok((s, p, exp));
    }
    let signer = Signer::from_ref(&s.key, interactive)
        .map_err(|e| ClientError::RenewFailed { what: "cannot sign a proof: run gocred login", source: Box::new(e) })?;
    let exp = (now + HELPER_PROOF_SECS).min(s.expires_at.max(now + 60));
    let proof = signer.proof(s.token.expose(), &format!("{}/", s.broker.trim_end_matches('/')), exp)?;
    if !is_proof(&proof) {
        return Err(ClientError::MalformedToken("made a malformed proof"));
    }
    s.proof = Some(proof.clone());
    s.proof_exp = exp;
    store.save(&s)?;
    Ok((s, proof, exp))
}
