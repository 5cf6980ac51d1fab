//! Sessions: the SSH challenge/login, the RFC 8693 exchange of an OIDC subject token, refresh,
//! and RFC 7009 revocation. Each flow authenticates, asks the policy (`login`, or `revoke` for
//! another principal's session), audits, and answers with a typed [`TokenResponse`].
//!
//! Must not: parse HTTP or choose status codes; mint a token without a `login` decision.

use super::Broker;
use super::access::{AccessError, Caller, authorize};
use crate::audit::Event;
use crate::auth::oidc::OidcError;
use crate::auth::{AuthError, Principal, PrincipalKind};
use crate::policy::{Action, Resource};
use crate::proto::login::{Challenge, ChallengeRequest, LoginRequest, Whoami};
use crate::proto::token::{
    ACCESS_TOKEN_TYPE, EXCHANGE_GRANT, JWT_TOKEN_TYPE, REFRESH_GRANT, RevokeRequest, SUBJECT_TOKEN_TYPES, TokenRequest,
    TokenResponse,
};
use crate::secrets::SecretsError;
use crate::token::{Minted, TokenError};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A malformed request (the message says which field and why).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The challenge could not be issued (bad user name).
    #[error(transparent)]
    IssueChallenge(AuthError),
    /// The signed challenge, the key or the certificate was refused.
    #[error(transparent)]
    VerifyLogin(AuthError),
    /// The authorized-keys source could not be read (ours, not the caller's fault).
    #[error("cannot look up authorized keys: {0}")]
    LookUpKeys(String),
    /// The subject token was refused, or its issuer's keys could not be fetched.
    #[error(transparent)]
    VerifySubject(#[from] OidcError),
    /// The session may not be extended (its key is no longer authorized).
    #[error("cannot refresh: {0}")]
    Recheck(#[source] AuthError),
    /// The session is over (max_session, certificate expiry).
    #[error(transparent)]
    Mint(#[from] TokenError),
    #[error("too many revocations by {principal}; wait a minute (limits.revocations_per_minute)")]
    RevokeRateLimited { principal: String },
    #[error("cannot record the revocation: {0}")]
    RecordRevocation(#[source] SecretsError),
}

/// What a grant asks for: a refresh needs an authenticated caller (token + proof), an exchange
/// needs none.
pub enum Grant {
    Refresh,
    Exchange,
}

/// Which flow a `POST /v1/token` body asks for.
pub fn grant(req: &TokenRequest) -> Result<Grant, SessionError> {
    match req.grant_type.as_str() {
        REFRESH_GRANT => Ok(Grant::Refresh),
        EXCHANGE_GRANT => Ok(Grant::Exchange),
        other => Err(SessionError::InvalidRequest(format!(
            "unsupported grant_type `{}` (supported: {EXCHANGE_GRANT}, {REFRESH_GRANT})",
            other.chars().take(100).collect::<String>()
        ))),
    }
}

fn token_response(m: &Minted, now: u64, session_end: u64, principal: Option<String>) -> TokenResponse {
    TokenResponse {
        access_token: m.token.clone(),
        token_type: "Bearer".into(),
        issued_token_type: Some(JWT_TOKEN_TYPE.into()),
        expires_in: m.claims.exp.saturating_sub(now),
        expires_at: m.claims.exp,
        user: m.claims.sub.clone(),
        key_fingerprint: m.claims.cnf.kid.clone(),
        groups: m.claims.groups.clone(),
        session_expires_at: session_end,
        principal,
    }
}

/// A fresh login challenge for `user`.
pub fn challenge(b: &Broker, req: &ChallengeRequest) -> Result<Challenge, SessionError> {
    b.login.challenge(&req.user, crate::unix_now()).map_err(SessionError::IssueChallenge)
}

/// SSH login: verify the signed challenge, decide `login`, mint.
pub async fn login_ssh(b: &Broker, req: &LoginRequest, request_id: &str) -> Result<TokenResponse, SessionError> {
    let now = crate::unix_now();
    let outcome = match b.login.login(&req.user, &req.challenge, &req.signature, req.certificate.as_deref(), now).await
    {
        Ok(o) => o,
        Err(e) => {
            b.audit.record(&Event {
                kind: "authn",
                request_id: request_id.to_string(),
                principal: crate::auth::ssh::valid_user(&req.user).then(|| format!("user:{}", req.user)),
                auth_method: Some("ssh".into()),
                cert_key_id: match &e {
                    AuthError::Certificate { key_id, .. } => Some(key_id.clone()),
                    _ => None,
                },
                key_fingerprint: match &e {
                    AuthError::UnknownKey { fingerprint, .. } => Some(fingerprint.clone()),
                    _ => None,
                },
                action: "login".into(),
                resource: "broker".into(),
                decision: "deny",
                reason: e.to_string(),
                ..Default::default()
            });
            return Err(match e {
                AuthError::KeySource(m) => SessionError::LookUpKeys(m),
                e => SessionError::VerifyLogin(e),
            });
        }
    };
    let p = &outcome.principal;
    b.audit.record(&Event {
        kind: "authn",
        request_id: request_id.to_string(),
        principal: Some(p.display()),
        auth_method: Some(p.auth_method.clone()),
        key_fingerprint: Some(p.key_fingerprint.clone()),
        cert_key_id: outcome.cert.as_ref().map(|(id, serial)| format!("{id} (serial {serial})")),
        action: "login".into(),
        resource: "broker".into(),
        decision: "allow",
        reason: "signature verified".into(),
        ..Default::default()
    });
    authorize(b, request_id, p, Action::Login, &Resource::Broker)?;
    let minted = b.tokens.mint(p, now, outcome.not_after)?;
    Ok(token_response(&minted, now, minted.claims.session_end, None))
}

/// The checked parts of an exchange request: the subject token and the key to bind to.
struct ExchangeRequest {
    subject: String,
    public_key: ssh_key::PublicKey,
}

fn check_exchange(req: TokenRequest) -> Result<ExchangeRequest, SessionError> {
    let bad = |m: String| SessionError::InvalidRequest(m);
    let subject = req
        .subject_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("subject_token is required (an OIDC ID token, Kubernetes or CI token)".into()))?;
    match req.subject_token_type.as_deref() {
        Some(t) if SUBJECT_TOKEN_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(bad(format!(
                "subject_token_type `{}` is not supported (supported: {})",
                t.chars().take(100).collect::<String>(),
                SUBJECT_TOKEN_TYPES.join(", ")
            )));
        }
        None => return Err(bad("subject_token_type is required".into())),
    }
    if let Some(t) = req.requested_token_type.as_deref()
        && t != JWT_TOKEN_TYPE
        && t != ACCESS_TOKEN_TYPE
    {
        return Err(bad(format!("requested_token_type must be {JWT_TOKEN_TYPE}")));
    }
    let key_text = req
        .public_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| bad("public_key is required: the OpenSSH public key the token is bound to".into()))?;
    let public_key = ssh_key::PublicKey::from_openssh(key_text.trim())
        .map_err(|_| bad("public_key is not an OpenSSH public key".into()))?;
    crate::auth::sshsig::check_key_strength(public_key.key_data()).map_err(|e| bad(format!("public_key: {e}")))?;
    Ok(ExchangeRequest { subject, public_key })
}

/// RFC 8693: an OIDC subject token (ID token, Kubernetes or CI token) for a broker token bound
/// to the given key. The session never outlives the subject token.
pub async fn exchange(b: &Broker, req: TokenRequest, request_id: &str) -> Result<TokenResponse, SessionError> {
    let req = check_exchange(req)?;
    let fingerprint = crate::auth::sshsig::fingerprint(req.public_key.key_data());
    let now = crate::unix_now();
    let deny = |e: SessionError| {
        b.audit.record(&Event {
            kind: "authn",
            request_id: request_id.to_string(),
            auth_method: Some("oidc".into()),
            key_fingerprint: Some(fingerprint.clone()),
            action: "login".into(),
            resource: "broker".into(),
            decision: "deny",
            reason: e.to_string(),
            ..Default::default()
        });
        e
    };
    let identity = b.oidc.verify(&req.subject, now).await.map_err(|e| deny(e.into()))?;
    let principal = identity.principal(&fingerprint);
    b.audit.record(&Event {
        action: "login".into(),
        resource: "broker".into(),
        decision: "allow",
        reason: format!("subject token from issuer `{}` verified", identity.issuer),
        ..Event::about("authn", request_id, &principal)
    });
    authorize(b, request_id, &principal, Action::Login, &Resource::Broker)?;
    // A workload exchanges its (rotated) token again, a person's client renews through the
    // identity provider (which can refuse a disabled user) — the IdP stays in charge.
    if identity.exp <= now {
        let e = OidcError::Expired { issuer: identity.issuer.clone(), ago: now - identity.exp };
        return Err(deny(e.into()));
    }
    let minted = b.tokens.mint(&principal, now, Some(identity.exp))?;
    Ok(token_response(&minted, now, minted.claims.session_end, Some(principal.display())))
}

/// A new token for the caller's session. The key must still be authorized (groups as configured
/// now), and a banned user cannot keep refreshing.
pub async fn refresh(b: &Broker, caller: &Caller) -> Result<TokenResponse, SessionError> {
    let mut principal = caller.principal.clone();
    if principal.kind == PrincipalKind::User && principal.auth_method.starts_with("ssh") {
        principal.groups = b.login.recheck(&principal).await.map_err(|e| match e {
            AuthError::KeySource(m) => SessionError::LookUpKeys(m),
            e => SessionError::Recheck(e),
        })?;
    }
    authorize(b, &caller.request_id, &principal, Action::Login, &Resource::Broker)?;
    let now = crate::unix_now();
    let minted = b.tokens.refresh(&caller.claims, principal.groups.clone(), now)?;
    Ok(token_response(&minted, now, caller.claims.session_end, None))
}

/// The `revoke` resource for the sessions of the holder of `claims`.
fn session_resource(claims: &crate::token::Claims) -> Resource {
    let p = claims.principal();
    Resource::Session { owner_kind: p.kind.as_str().into(), owner: p.id, auth_method: p.auth_method }
}

/// RFC 7009: end the session of `req.token` (the caller's own when absent). A holder may always
/// revoke its own session; another principal's needs a Cedar `revoke` permit. An invalid,
/// expired or already revoked token is not an error (§2.2).
pub async fn revoke(b: &Broker, caller: &Caller, req: &RevokeRequest) -> Result<(), SessionError> {
    let who = caller.principal.display();
    if !b.limits.revoke.allow(&who) {
        return Err(SessionError::RevokeRateLimited { principal: who });
    }
    let now = crate::unix_now();
    let target = match req.token.as_deref() {
        None => caller.claims.clone(),
        Some(t) if caller.token.matches(t) => caller.claims.clone(),
        Some(t) => match b.tokens.verify(t, now) {
            Ok(c) => c,
            Err(_) => return Ok(()),
        },
    };
    // The same subject from another identity source (SSH, another issuer) is someone else.
    let mine = &caller.claims;
    let own = target.sub == mine.sub
        && target.kind == mine.kind
        && target.amr == mine.amr
        && target.attrs.get("issuer") == mine.attrs.get("issuer");
    let resource = session_resource(&target);
    if !own {
        authorize(b, &caller.request_id, &caller.principal, Action::Revoke, &resource)?;
    }
    b.tokens
        .revocations()
        .revoke(&target.sid, target.session_end.max(target.exp), now)
        .await
        .map_err(SessionError::RecordRevocation)?;
    b.audit.record(&Event {
        action: "revoke".into(),
        resource: resource.display(),
        decision: "allow",
        reason: if own { "holder revoked own session".into() } else { "revocation permitted by policy".into() },
        ..Event::about("authz", &caller.request_id, &caller.principal)
    });
    Ok(())
}

/// Who the caller is, as `GET /v1/whoami` answers.
pub fn whoami(caller: &Caller) -> Whoami {
    let p: &Principal = &caller.principal;
    Whoami {
        principal: p.display(),
        kind: p.kind.as_str().into(),
        id: p.id.clone(),
        groups: p.groups.clone(),
        auth_method: p.auth_method.clone(),
        key_fingerprint: p.key_fingerprint.clone(),
        attrs: p.attrs.clone(),
        token_expires_at: caller.claims.exp,
        session_started_at: caller.claims.auth_time,
        session_expires_at: caller.claims.session_end,
    }
}
