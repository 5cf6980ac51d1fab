//! HTTP side of authentication: reading credentials from headers (Bearer + `Gocred-Proof`, or
//! Basic with `token~proof` as the password), the SSH login, whoami, refresh and revocation
//! routes. Orchestrates `token` (verify) → `auth::proof` (possession) → `policy` → audit.

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::audit::Event;
use crate::auth::{AuthError, Principal};
use crate::policy::{Action, Resource};
use crate::token::Claims;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, request::Parts};
use axum::response::IntoResponse;
use base64::Engine;
use serde::Deserialize;
use serde::de::DeserializeOwned;

pub const PROOF_HEADER: &str = "gocred-proof";
/// The `grant_type` that refreshes an access token (caller authenticates with token + proof).
pub const REFRESH_GRANT: &str = "urn:gocred:params:grant-type:refresh";

/// A caller that presented a valid token and (unless disabled) a valid proof.
pub struct Authed {
    pub principal: Principal,
    pub claims: Claims,
    pub token: String,
    pub request_id: String,
}

/// (token, proof) from the request headers.
fn credentials(headers: &HeaderMap) -> Result<(String, Option<String>), AuthError> {
    let proof_header = headers.get(PROOF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(if proof_header.is_some() { AuthError::MissingToken } else { AuthError::MissingCredentials });
    };
    let auth = auth.to_str().map_err(|_| AuthError::MalformedAuthorization("not ASCII"))?;
    let (scheme, rest) =
        auth.split_once(' ').ok_or(AuthError::MalformedAuthorization("expected `<scheme> <credentials>`"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => {
            let value = rest.trim();
            // git's credential helpers with authtype=Bearer can only set the header value: they
            // send `token~proof` there, like the Basic password.
            match value.split_once('~') {
                Some((t, p)) if !t.is_empty() => Ok((t.to_string(), Some(p.to_string()))),
                Some(_) => Err(AuthError::MissingToken),
                None if value.is_empty() => Err(AuthError::MissingToken),
                None => Ok((value.to_string(), proof_header)),
            }
        }
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map_err(|_| AuthError::MalformedAuthorization("Basic credentials are not base64"))?;
            let text = String::from_utf8(raw)
                .map_err(|_| AuthError::MalformedAuthorization("Basic credentials are not UTF-8"))?;
            let (_user, password) =
                text.split_once(':').ok_or(AuthError::MalformedAuthorization("Basic credentials lack `:`"))?;
            match password.split_once('~') {
                Some((t, p)) if !t.is_empty() => Ok((t.to_string(), Some(p.to_string()))),
                Some(_) => Err(AuthError::MissingToken),
                None if password.is_empty() => Err(AuthError::MissingToken),
                None => Ok((password.to_string(), proof_header)),
            }
        }
        _ => Err(AuthError::MalformedAuthorization("unsupported scheme (use Bearer or Basic)")),
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let now = crate::unix_now();
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        let deny = |reason: String, claims: Option<&Claims>| {
            state.audit.record(&Event {
                kind: "authn",
                request_id: request_id.clone(),
                principal: claims.map(|c| c.principal().display()),
                auth_method: claims.map(|c| c.principal().auth_method),
                key_fingerprint: claims.map(|c| c.cnf.kid.clone()),
                action: "authenticate".into(),
                resource: path.clone(),
                decision: "deny",
                reason: reason.clone(),
                ..Default::default()
            });
            ApiError::Unauthorized(reason)
        };
        // Proof prefixes are matched against the path: it must be in normal form.
        let lower = path.to_ascii_lowercase();
        if path.contains("//")
            || path.contains("/./")
            || path.contains("/../")
            || path.ends_with("/..")
            || lower.contains("%2e")
            || lower.contains("%2f")
        {
            return Err(deny("request path is not in normal form".into(), None));
        }
        let (token, proof) = credentials(&parts.headers).map_err(|e| deny(e.to_string(), None))?;
        let claims = state.tokens.verify(&token, now).map_err(|e| deny(e.to_string(), None))?;
        let proved = proof.is_some();
        match proof {
            Some(proof) => {
                let url = format!("{}{}", state.origin, path);
                state
                    .proofs
                    .verify(&token, &claims.cnf.kid, &proof, &url, now)
                    .map_err(|e| deny(e.to_string(), Some(&claims)))?;
            }
            None if state.require_proof => return Err(deny(AuthError::MissingProof.to_string(), Some(&claims))),
            None => {}
        }
        let principal = claims.principal();
        if !state.limits.principal.allow(&principal.display()) {
            return Err(ApiError::TooManyRequests(format!(
                "too many requests from {}; wait a moment (limits.requests_per_second)",
                principal.display()
            )));
        }
        state.audit.record(&Event {
            action: "authenticate".into(),
            resource: path,
            decision: "allow",
            reason: if proved { "valid token and proof" } else { "valid token (proofs not required)" }.into(),
            ..Event::about("authn", &request_id, &principal)
        });
        Ok(Authed { principal, claims, token, request_id })
    }
}

/// Parse a JSON or form-encoded body.
fn body<T: DeserializeOwned>(headers: &HeaderMap, bytes: &[u8]) -> Result<T, ApiError> {
    let ct = headers.get(axum::http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if ct.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(bytes).map_err(|e| ApiError::BadRequest(format!("invalid form body: {e}")))
    } else {
        serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
    }
}

/// Authorize `principal` for `action` on `resource`, with an audit line either way.
pub fn authorize(
    state: &AppState,
    request_id: &str,
    principal: &Principal,
    action: Action,
    resource: &Resource,
) -> Result<(), ApiError> {
    let d = state.policy.decide(principal, action, resource);
    state.audit.record(&Event {
        action: action.as_str().into(),
        resource: resource.display(),
        decision: if d.allowed { "allow" } else { "deny" },
        policy_ids: d.policy_ids.clone(),
        reason: d.reason.clone(),
        ..Event::about("authz", request_id, principal)
    });
    if d.allowed { Ok(()) } else { Err(ApiError::Forbidden(d.reason)) }
}

#[derive(Deserialize)]
struct ChallengeReq {
    user: String,
}

pub async fn ssh_challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: ChallengeReq = body(&headers, &bytes)?;
    let c = state.login.challenge(&req.user, crate::unix_now()).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(axum::Json(c))
}

#[derive(Deserialize)]
struct LoginReq {
    user: String,
    challenge: String,
    signature: String,
    #[serde(default)]
    certificate: Option<String>,
}

fn token_response(m: &crate::token::Minted, now: u64, session_end: u64) -> serde_json::Value {
    serde_json::json!({
        "access_token": m.token,
        "token_type": "Bearer",
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "expires_in": m.claims.exp.saturating_sub(now),
        "expires_at": m.claims.exp,
        "user": m.claims.sub,
        "key_fingerprint": m.claims.cnf.kid,
        "groups": m.claims.groups,
        "session_expires_at": session_end,
    })
}

pub async fn ssh_login(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: LoginReq = body(&headers, &bytes)?;
    let now = crate::unix_now();
    let outcome =
        match state.login.login(&req.user, &req.challenge, &req.signature, req.certificate.as_deref(), now).await {
            Ok(o) => o,
            Err(e) => {
                state.audit.record(&Event {
                    kind: "authn",
                    request_id: rid.0.clone(),
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
                    AuthError::KeySource(_) => ApiError::Internal(e.to_string()),
                    e => ApiError::Unauthorized(e.to_string()),
                });
            }
        };
    let p = &outcome.principal;
    state.audit.record(&Event {
        kind: "authn",
        request_id: rid.0.clone(),
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
    authorize(&state, &rid.0, p, Action::Login, &Resource::Broker)?;
    let minted = state.tokens.mint(p, now, outcome.not_after).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(token_response(&minted, now, minted.claims.session_end)),
    ))
}

pub async fn whoami(a: Authed) -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "principal": a.principal.display(),
        "kind": a.principal.kind,
        "id": a.principal.id,
        "groups": a.principal.groups,
        "auth_method": a.principal.auth_method,
        "key_fingerprint": a.principal.key_fingerprint,
        "attrs": a.principal.attrs,
        "token_expires_at": a.claims.exp,
        "session_started_at": a.claims.auth_time,
        "session_expires_at": a.claims.session_end,
    }))
}

/// RFC 8693 token exchange.
pub const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted by the exchange.
pub const SUBJECT_TOKEN_TYPES: [&str; 2] =
    ["urn:ietf:params:oauth:token-type:id_token", "urn:ietf:params:oauth:token-type:jwt"];

#[derive(Deserialize)]
struct TokenReq {
    grant_type: String,
    #[serde(default)]
    subject_token: Option<String>,
    #[serde(default)]
    subject_token_type: Option<String>,
    #[serde(default)]
    requested_token_type: Option<String>,
    /// The OpenSSH public key (`ssh-ed25519 AAAA...`) the new token is bound to.
    #[serde(default)]
    public_key: Option<String>,
}

/// `POST /v1/token`: RFC 8693 exchange of an OIDC subject token (no broker credentials needed),
/// or refresh of a broker token (token + proof).
pub async fn token(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    req: axum::extract::Request,
) -> Result<axum::response::Response, ApiError> {
    let (mut parts, body_stream) = req.into_parts();
    let bytes = axum::body::to_bytes(body_stream, 64 * 1024)
        .await
        .map_err(|_| ApiError::BadRequest("request body too large or unreadable".into()))?;
    let req: TokenReq = body(&parts.headers, &bytes)?;
    match req.grant_type.as_str() {
        REFRESH_GRANT => {
            let a = Authed::from_request_parts(&mut parts, &state).await?;
            refresh(state, a).await.map(IntoResponse::into_response)
        }
        EXCHANGE_GRANT => exchange(state, rid.0, req).await.map(IntoResponse::into_response),
        other => Err(ApiError::BadRequest(format!(
            "unsupported grant_type `{}` (supported: {EXCHANGE_GRANT}, {REFRESH_GRANT})",
            other.chars().take(100).collect::<String>()
        ))),
    }
}

async fn exchange(state: AppState, request_id: String, req: TokenReq) -> Result<impl IntoResponse, ApiError> {
    let subject = req.subject_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("subject_token is required (an OIDC ID token, Kubernetes or CI token)".into())
    })?;
    match req.subject_token_type.as_deref() {
        Some(t) if SUBJECT_TOKEN_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(ApiError::BadRequest(format!(
                "subject_token_type `{}` is not supported (supported: {})",
                t.chars().take(100).collect::<String>(),
                SUBJECT_TOKEN_TYPES.join(", ")
            )));
        }
        None => return Err(ApiError::BadRequest("subject_token_type is required".into())),
    }
    if let Some(t) = req.requested_token_type.as_deref()
        && t != "urn:ietf:params:oauth:token-type:jwt"
        && t != "urn:ietf:params:oauth:token-type:access_token"
    {
        return Err(ApiError::BadRequest("requested_token_type must be urn:ietf:params:oauth:token-type:jwt".into()));
    }
    let key_text = req.public_key.filter(|k| !k.trim().is_empty()).ok_or_else(|| {
        ApiError::BadRequest("public_key is required: the OpenSSH public key the token is bound to".into())
    })?;
    let key = ssh_key::PublicKey::from_openssh(key_text.trim())
        .map_err(|_| ApiError::BadRequest("public_key is not an OpenSSH public key".into()))?;
    crate::auth::sshsig::check_key_strength(key.key_data())
        .map_err(|e| ApiError::BadRequest(format!("public_key: {e}")))?;
    let fingerprint = crate::auth::sshsig::fingerprint(key.key_data());
    let now = crate::unix_now();
    let deny = |reason: String| {
        state.audit.record(&Event {
            kind: "authn",
            request_id: request_id.clone(),
            auth_method: Some("oidc".into()),
            key_fingerprint: Some(fingerprint.clone()),
            action: "login".into(),
            resource: "broker".into(),
            decision: "deny",
            reason,
            ..Default::default()
        });
    };
    let identity = match state.oidc.verify(&subject, now).await {
        Ok(i) => i,
        Err(e) => {
            deny(e.to_string());
            return Err(ApiError::from(e));
        }
    };
    let principal = identity.principal(&fingerprint);
    state.audit.record(&Event {
        action: "login".into(),
        resource: "broker".into(),
        decision: "allow",
        reason: format!("subject token from issuer `{}` verified", identity.issuer),
        ..Event::about("authn", &request_id, &principal)
    });
    authorize(&state, &request_id, &principal, Action::Login, &Resource::Broker)?;
    // The session never outlives the token that proved the identity: a workload exchanges its
    // (rotated) token again, a person's client renews through the identity provider (which can
    // refuse a disabled user) — the IdP stays in charge.
    if identity.exp <= now {
        let e = crate::auth::oidc::OidcError::Expired { issuer: identity.issuer.clone(), ago: now - identity.exp };
        deny(e.to_string());
        return Err(ApiError::from(e));
    }
    let not_after = Some(identity.exp);
    let minted = state.tokens.mint(&principal, now, not_after).map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    let mut body = token_response(&minted, now, minted.claims.session_end);
    body["principal"] = serde_json::Value::String(principal.display());
    Ok(([(axum::http::header::CACHE_CONTROL, "no-store")], axum::Json(body)))
}

async fn refresh(state: AppState, a: Authed) -> Result<impl IntoResponse, ApiError> {
    // The key must still be authorized (groups as configured now), and a banned user cannot
    // keep refreshing.
    let mut principal = a.principal.clone();
    if principal.kind == crate::auth::PrincipalKind::User && principal.auth_method.starts_with("ssh") {
        principal.groups = match state.login.recheck(&principal).await {
            Ok(g) => g,
            Err(AuthError::KeySource(e)) => return Err(ApiError::Internal(e)),
            Err(e) => return Err(ApiError::Unauthorized(format!("cannot refresh: {e}"))),
        };
    }
    authorize(&state, &a.request_id, &principal, Action::Login, &Resource::Broker)?;
    let now = crate::unix_now();
    let minted = state
        .tokens
        .refresh(&a.claims, principal.groups.clone(), now)
        .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(token_response(&minted, now, a.claims.session_end)),
    ))
}

#[derive(Deserialize)]
struct RevokeReq {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// Group whose members may revoke anybody's tokens.
pub const ADMIN_GROUP: &str = "gocred-admins";

pub async fn revoke(
    State(state): State<AppState>,
    a: Authed,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    if !state.limits.revoke.allow(&a.principal.display()) {
        return Err(ApiError::TooManyRequests(format!(
            "too many revocations by {}; wait a minute (limits.revocations_per_minute)",
            a.principal.display()
        )));
    }
    let req: RevokeReq =
        if bytes.is_empty() { RevokeReq { token: None, token_type_hint: None } } else { body(&headers, &bytes)? };
    let now = crate::unix_now();
    let target = match req.token.as_deref() {
        None => a.claims.clone(),
        Some(t) if t == a.token => a.claims.clone(),
        Some(t) => match state.tokens.verify(t, now) {
            Ok(c) => c,
            // RFC 7009 §2.2: an invalid (or already expired/revoked) token is not an error.
            Err(_) => return Ok(axum::Json(serde_json::json!({}))),
        },
    };
    // The same subject from another identity source (SSH, another issuer) is someone else.
    let own = target.sub == a.claims.sub
        && target.kind == a.claims.kind
        && target.amr == a.claims.amr
        && target.attrs.get("issuer") == a.claims.attrs.get("issuer");
    if !own && !a.principal.groups.iter().any(|g| g == ADMIN_GROUP) {
        return Err(ApiError::Forbidden(format!("{} may only revoke its own tokens", a.principal.display())));
    }
    state
        .tokens
        .revocations()
        .revoke(&target.sid, target.session_end.max(target.exp), now)
        .await
        .map_err(|e| ApiError::Internal(format!("cannot record the revocation: {e}")))?;
    state.audit.record(&Event {
        kind: "authz",
        request_id: a.request_id.clone(),
        principal: Some(a.principal.display()),
        auth_method: Some(a.principal.auth_method.clone()),
        key_fingerprint: Some(a.principal.key_fingerprint.clone()),
        action: "revoke".into(),
        resource: format!("token of {}:{}", target.kind, target.sub),
        decision: "allow",
        reason: if own { "holder revoked own token".into() } else { "admin revocation".into() },
        ..Default::default()
    });
    Ok(axum::Json(serde_json::json!({})))
}
