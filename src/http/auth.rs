//! HTTP side of authentication: reading credentials from headers (Bearer + `Gocred-Proof`, or
//! Basic with `token~proof` as the password) into [`Authed`], and the login, token, whoami and
//! revoke routes, which only decode the body and call [`crate::service::session`].

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::auth::AuthError;
use crate::proto::login::{ChallengeRequest, LoginRequest};
use crate::proto::proof::PROOF_HEADER;
use crate::proto::token::{AccessToken, RevokeRequest, TokenRequest};
use crate::service::access::{self, Caller, Presented};
use crate::service::session::{self, Grant};
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderMap, request::Parts};
use axum::response::IntoResponse;
use base64::Engine;
use serde::de::DeserializeOwned;

/// A caller that presented a valid token and (unless disabled) a valid proof.
pub struct Authed(pub Caller);

/// `token~proof` (git helpers can only set one value), or a bare token and the proof header.
fn split_secret(value: &str, proof_header: Option<String>) -> Result<Presented, AuthError> {
    match value.split_once('~') {
        Some((t, p)) if !t.is_empty() => Ok(Presented { token: AccessToken::new(t.into()), proof: Some(p.into()) }),
        Some(_) => Err(AuthError::MissingToken),
        None if value.is_empty() => Err(AuthError::MissingToken),
        None => Ok(Presented { token: AccessToken::new(value.into()), proof: proof_header }),
    }
}

/// (token, proof) from the request headers.
fn credentials(headers: &HeaderMap) -> Result<Presented, AuthError> {
    let proof_header = headers.get(PROOF_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
    let Some(auth) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(if proof_header.is_some() { AuthError::MissingToken } else { AuthError::MissingCredentials });
    };
    let auth = auth.to_str().map_err(|_| AuthError::MalformedAuthorization("not ASCII"))?;
    let (scheme, rest) =
        auth.split_once(' ').ok_or(AuthError::MalformedAuthorization("expected `<scheme> <credentials>`"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "bearer" => split_secret(rest.trim(), proof_header),
        "basic" => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .map(zeroize::Zeroizing::new)
                .map_err(|_| AuthError::MalformedAuthorization("Basic credentials are not base64"))?;
            let text = std::str::from_utf8(&raw)
                .map_err(|_| AuthError::MalformedAuthorization("Basic credentials are not UTF-8"))?;
            let (_user, password) =
                text.split_once(':').ok_or(AuthError::MalformedAuthorization("Basic credentials lack `:`"))?;
            split_secret(password, proof_header)
        }
        _ => Err(AuthError::MalformedAuthorization("unsupported scheme (use Bearer or Basic)")),
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map(|u| u.0.path().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        Ok(Authed(access::authenticate(state, credentials(&parts.headers), &path, &request_id)?))
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

const NO_STORE: [(axum::http::HeaderName, &str); 1] = [(axum::http::header::CACHE_CONTROL, "no-store")];

pub async fn ssh_challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: ChallengeRequest = body(&headers, &bytes)?;
    Ok(axum::Json(session::challenge(&state, &req)?))
}

pub async fn ssh_login(
    State(state): State<AppState>,
    axum::Extension(rid): axum::Extension<RequestId>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: LoginRequest = body(&headers, &bytes)?;
    Ok((NO_STORE, axum::Json(session::login_ssh(&state, &req, &rid.0).await?)))
}

pub async fn whoami(Authed(caller): Authed) -> impl IntoResponse {
    axum::Json(session::whoami(&caller))
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
    let req: TokenRequest = body(&parts.headers, &bytes)?;
    let answer = match session::grant(&req)? {
        Grant::Refresh => {
            let Authed(caller) = Authed::from_request_parts(&mut parts, &state).await?;
            session::refresh(&state, &caller).await?
        }
        Grant::Exchange => session::exchange(&state, req, &rid.0).await?,
    };
    Ok((NO_STORE, axum::Json(answer)).into_response())
}

/// `POST /v1/revoke` (RFC 7009).
pub async fn revoke(
    State(state): State<AppState>,
    Authed(caller): Authed,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let req: RevokeRequest = if bytes.is_empty() { RevokeRequest::default() } else { body(&headers, &bytes)? };
    session::revoke(&state, &caller, &req).await?;
    Ok(axum::Json(serde_json::json!({})))
}
