//! The one place errors become HTTP responses. Handlers return [`ApiError`], which wraps the
//! services' and domain modules' own errors (`#[from]`); [`ApiError::status`] alone decides the
//! status code; the outer middleware calls `render` to produce the JSON body
//! (`proto::error::ErrorBody`) or, on proxied routes, one `text/plain` line. A 5xx is logged
//! here, once, under the request id; a 500 returns only the id.
//!
//! Must not: put secrets, tokens or internal error detail in a response body; log anywhere but
//! `render`.

use super::RequestId;
use crate::auth::oidc::OidcError;
use crate::modfetch::ModFetchError;
use crate::proxy::ProxyError;
use crate::service::access::AccessError;
use crate::service::session::SessionError;
use crate::service::tunnel::TunnelError;
use crate::webhook::WebhookError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every error a route can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The broker is not ready (the secrets backend is unreachable past its grace).
    #[error("{0}")]
    NotReady(String),
    /// An unreadable request (body, query, path).
    #[error("{0}")]
    BadRequest(String),
    /// Something the request names is not served here (no upstream, no credential).
    #[error("{0}")]
    NotServed(String),
    #[error("{0}")]
    TooManyRequests(&'static str),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the request took longer than {} (server.request_timeout)", humantime::format_duration(*.0))]
    RequestTimeout(std::time::Duration),
    #[error(transparent)]
    Access(#[from] AccessError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    #[error(transparent)]
    Webhook(#[from] WebhookError),
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    #[error(transparent)]
    ModFetch(#[from] ModFetchError),
    #[error(transparent)]
    Store(#[from] crate::modstore::StoreError),
}

impl From<crate::service::fallback::FetchError> for ApiError {
    fn from(e: crate::service::fallback::FetchError) -> ApiError {
        use crate::service::fallback::FetchError;
        match e {
            FetchError::Build(b) => ApiError::ModFetch(b),
            FetchError::Proxy(p) => ApiError::Proxy(p),
        }
    }
}

fn access_status(e: &AccessError) -> (StatusCode, &'static str) {
    match e {
        AccessError::Credentials(_) | AccessError::Token(_) | AccessError::PathNotNormal => {
            (StatusCode::UNAUTHORIZED, "unauthorized")
        }
        AccessError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        AccessError::Denied(_) => (StatusCode::FORBIDDEN, "forbidden"),
    }
}

fn session_status(e: &SessionError) -> (StatusCode, &'static str) {
    match e {
        SessionError::InvalidRequest(_) | SessionError::IssueChallenge(_) => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        SessionError::Access(a) => access_status(a),
        SessionError::VerifySubject(o) if o.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        SessionError::VerifyLogin(_) | SessionError::VerifySubject(_) | SessionError::Recheck(_) => {
            (StatusCode::UNAUTHORIZED, "unauthorized")
        }
        SessionError::Mint(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        SessionError::RevokeRateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        SessionError::LookUpKeys(_) | SessionError::RecordRevocation(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        }
    }
}

fn proxy_status(e: &ProxyError) -> (StatusCode, &'static str) {
    match e {
        ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        ProxyError::NoUpstream(_) => (StatusCode::NOT_FOUND, "not_found"),
        ProxyError::Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
        ProxyError::BreakerOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ProxyError::Unreachable { .. }
        | ProxyError::Rejected { .. }
        | ProxyError::Credential { .. }
        | ProxyError::Redirected { .. }
        | ProxyError::WrongVersion { .. }
        | ProxyError::Unavailable { .. }
        | ProxyError::Body { .. } => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        ProxyError::Client { .. } | ProxyError::ReadCa { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

fn tunnel_status(e: &TunnelError) -> (StatusCode, &'static str) {
    match e {
        TunnelError::NotConfigured { .. } => (StatusCode::NOT_FOUND, "not_found"),
        TunnelError::WrongPort { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
        TunnelError::Access(a) => access_status(a),
        TunnelError::TooMany { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
        TunnelError::Connect { .. } => (StatusCode::BAD_GATEWAY, "bad_gateway"),
    }
}

impl ApiError {
    /// The status code and error code of every error: the only place either is decided.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound | ApiError::NotServed(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RequestTimeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Access(e) => access_status(e),
            ApiError::Session(e) => session_status(e),
            ApiError::Proxy(e) => proxy_status(e),
            ApiError::Webhook(WebhookError::EncodeReview(_)) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Webhook(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Tunnel(e) => tunnel_status(e),
            ApiError::ModFetch(ModFetchError::NotFound(_)) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::ModFetch(ModFetchError::Timeout { .. }) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            ApiError::ModFetch(ModFetchError::Git { .. }) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::ModFetch(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::Store(crate::modstore::StoreError::Changed { .. }) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// What a caller is told: the error's own line, except for 5xx whose text carries internal
    /// detail (an issuer's discovery URL and transport error, a secrets-backend error), which get
    /// a fixed line naming only what failed; the detail goes to the log.
    fn public_message(&self) -> String {
        match self {
            ApiError::Session(SessionError::VerifySubject(OidcError::FetchKeys { issuer, .. })) => {
                format!("cannot reach identity provider `{issuer}` to verify the token; try again later")
            }
            ApiError::ModFetch(ModFetchError::Git { upstream, source }) => {
                format!("upstream {upstream}: {} (details in the broker log)", source.summary())
            }
            ApiError::Proxy(ProxyError::Credential { upstream, .. }) => {
                format!("upstream {upstream}: credential unavailable (details in the broker log)")
            }
            e => e.to_string(),
        }
    }

    /// What the broker log gets for a 5xx beyond the message (internal addresses, transport
    /// errors); never sent to the caller.
    fn log_detail(&self) -> String {
        match self {
            ApiError::Proxy(ProxyError::Unreachable { url, source, .. }) => {
                format!("{self} ({url}: {})", crate::error_chain(source))
            }
            ApiError::Proxy(ProxyError::Timeout { url, .. }) => format!("{self} ({url})"),
            ApiError::Tunnel(TunnelError::Connect { target, source, .. }) => format!("{self} ({target}: {source})"),
            e => crate::error_chain(e),
        }
    }
}

impl From<OidcError> for ApiError {
    fn from(e: OidcError) -> ApiError {
        ApiError::Session(SessionError::VerifySubject(e))
    }
}

/// Carried from `into_response` to [`render`], which adds the request id.
#[derive(Clone, Debug)]
struct Failure {
    code: &'static str,
    message: String,
    log_detail: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status();
        let log_detail = status.is_server_error().then(|| self.log_detail());
        let mut resp = status.into_response();
        if status == StatusCode::UNAUTHORIZED {
            // Bearer for GOAUTH/CLI clients, Basic so git and curl consult their credential helpers.
            let h = resp.headers_mut();
            h.append(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"gocred\""),
            );
            h.append(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Basic realm=\"gocred\""),
            );
        }
        resp.extensions_mut().insert(Failure { code, message: self.public_message(), log_detail });
        resp
    }
}

/// Fill in the body of an error response (and log a 5xx under the request id).
pub(super) fn render(resp: Response, id: &RequestId, plain: bool) -> Response {
    let Some(f) = resp.extensions().get::<Failure>().cloned() else {
        return resp;
    };
    let status = resp.status();
    let message = match &f.log_detail {
        Some(detail) if status == StatusCode::INTERNAL_SERVER_ERROR => {
            tracing::error!(request_id = %id.0, %detail, "internal error");
            format!("internal error; see the broker log for request id {}", id.0)
        }
        Some(detail) => {
            tracing::warn!(request_id = %id.0, %detail, "request failed");
            f.message
        }
        None => f.message,
    };
    let (mut parts, _) = resp.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    if plain {
        // One line that `go` prints as "server response:" and git as "remote:".
        let text = format!("gocred: {message} (request id {})\n", id.0);
        parts.headers.insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Response::from_parts(parts, axum::body::Body::from(text));
    }
    let body = crate::proto::error::ErrorBody { error: f.code.into(), message, request_id: id.0.clone() };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    parts.headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(json))
}
