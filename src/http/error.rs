//! The one place errors become HTTP responses. Handlers return [`ApiError`]; the outer
//! middleware calls [`render`] to produce `{ "error", "message", "request_id" }`. A 500 logs its
//! detail under the request id and returns only the id.
//!
//! Must not: put secrets, tokens or internal error detail in a response body.

use super::RequestId;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every error a route can answer with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("{0}")]
    NotReady(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    NotFoundMsg(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    GatewayTimeout(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Detail is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

/// Carried from `into_response` to [`render`], which adds the request id.
#[derive(Clone, Debug)]
struct ErrorBody {
    code: &'static str,
    message: String,
    log_detail: Option<String>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::NotFoundMsg(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            ApiError::GatewayTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout"),
            ApiError::TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let log_detail = match &self {
            ApiError::Internal(d) => Some(d.clone()),
            _ => None,
        };
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
        resp.extensions_mut().insert(ErrorBody { code, message: self.to_string(), log_detail });
        resp
    }
}

/// Fill in the JSON body of an error response (and log 5xx under the request id).
pub(super) fn render(resp: Response, id: &RequestId, plain: bool) -> Response {
    let Some(body) = resp.extensions().get::<ErrorBody>().cloned() else {
        return resp;
    };
    let status = resp.status();
    let message = if let Some(detail) = &body.log_detail {
        tracing::error!(request_id = %id.0, %detail, "internal error");
        format!("internal error; see the broker log for request id {}", id.0)
    } else {
        if status.is_server_error() {
            tracing::warn!(request_id = %id.0, message = %body.message, "request failed");
        }
        body.message
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
    let json = serde_json::json!({ "error": body.code, "message": message, "request_id": id.0 });
    parts.headers.insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
    Response::from_parts(parts, axum::body::Body::from(json.to_string()))
}

impl From<crate::auth::oidc::OidcError> for ApiError {
    /// A refused subject token is the caller's 401 (the message names the failed check); an
    /// issuer whose keys cannot be fetched is a 503.
    fn from(e: crate::auth::oidc::OidcError) -> ApiError {
        if e.is_unavailable() { ApiError::Unavailable(e.to_string()) } else { ApiError::Unauthorized(e.to_string()) }
    }
}

impl From<crate::webhook::WebhookError> for ApiError {
    /// A review that is not a readable AdmissionReview is the caller's 400; failing to encode
    /// the answer is ours.
    fn from(e: crate::webhook::WebhookError) -> ApiError {
        match e {
            crate::webhook::WebhookError::EncodeReview(_) => ApiError::Internal(e.to_string()),
            e => ApiError::BadRequest(e.to_string()),
        }
    }
}
