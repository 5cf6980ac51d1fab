//! The HTTP layer: axum routes, request ids, per-route metrics, and (in [`error`]) the single
//! mapping from errors to HTTP status codes and JSON bodies. The only module that imports axum.
//!
//! Must not: contain domain logic — handlers translate HTTP to calls on `keys`, `health`, ...
//! and back.

pub mod auth;
pub mod error;
pub mod gitloop;
mod modules;
pub mod proxy;
pub mod serve;
pub mod tunnel;
pub mod webhook;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use error::ApiError;
use std::sync::Arc;
use std::time::Instant;

/// Everything handlers need: the broker's services (cheap to clone).
pub type AppState = Arc<crate::service::Broker>;

/// A per-request id, in request extensions and the `x-request-id` response header.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The route template that served a response (for metrics labels).
#[derive(Clone, Debug)]
struct RouteTag(String);

/// The broker's router (no socket: tests call it directly with `tower::ServiceExt::oneshot`).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route(
            "/v1/login/ssh/challenge",
            post(auth::ssh_challenge).route_layer(middleware::from_fn_with_state(state.clone(), limit_login)),
        )
        .route(
            "/v1/login/ssh",
            post(auth::ssh_login).route_layer(middleware::from_fn_with_state(state.clone(), limit_login)),
        )
        .route("/v1/whoami", get(auth::whoami))
        .route("/v1/token", post(auth::token).route_layer(middleware::from_fn_with_state(state.clone(), limit_login)))
        .route("/v1/revoke", post(auth::revoke))
        .route("/v1/credentials", get(proxy::credentials))
        .route(crate::proto::tunnel::TUNNEL_PATH, get(tunnel::tunnel))
        .route("/.well-known/gocred", get(proxy::well_known))
        .route("/mod/{*rest}", get(proxy::goproxy))
        .route("/git/{host}/{*rest}", get(proxy::git).post(proxy::git))
        .merge(webhook::routes(state.webhook().is_some()))
        .route_layer(middleware::from_fn(tag_route))
        .fallback(proxy::host_routed)
        // Small JSON/form bodies only; proxied bodies are streamed and not subject to this.
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), outer))
        .with_state(state)
}

/// 429 when a client exceeds its login budget (no address: tests calling the router without a
/// socket are not limited). The client is the TCP peer, or who a trusted proxy says it is.
async fn limit_login(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(axum::extract::ConnectInfo(addr)) =
        req.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        && !state.limits.login.allow(
            &state.limits.login_key(addr.ip(), req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok())),
        )
    {
        return ApiError::TooManyRequests("too many login attempts from this address; wait a moment").into_response();
    }
    next.run(req).await
}

async fn tag_route(req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteTag(r));
    }
    resp
}

/// Outermost middleware: request id, error body rendering, metrics.
async fn outer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = RequestId(crate::fsutil::hex(&crate::random_bytes::<8>()));
    // A fixed label set: arbitrary method names must not grow the metrics map.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let path = req.uri().path();
    // go and git show text/plain error bodies to their users; API clients get JSON.
    let plain = path.starts_with("/mod/")
        || path.starts_with("/git/")
        || proxy::routed_host(&state, req.uri(), req.headers()).is_some();
    req.extensions_mut().insert(id.clone());
    // Proxied routes stream for as long as the transfer takes (bounded by the upstream timeouts
    // and the connection's idle timeout); everything else answers within request_timeout.
    let resp = if plain {
        next.run(req).await
    } else {
        let limit = state.config.server.request_timeout;
        match tokio::time::timeout(limit, next.run(req)).await {
            Ok(r) => r,
            Err(_) => ApiError::RequestTimeout(limit).into_response(),
        }
    };
    let mut resp = error::render(resp, &id, plain);
    if let Ok(v) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let route = resp.extensions().get::<RouteTag>().map(|t| t.0.as_str()).unwrap_or("unmatched");
    state.metrics.observe_request(route, method, resp.status().as_u16(), started.elapsed());
    resp
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.readiness.check().map_err(ApiError::NotReady)?;
    // Ready, possibly degraded (serving from cached secrets); breakers are detail, not readiness:
    // the store and the other upstreams still answer.
    let upstreams: serde_json::Map<String, serde_json::Value> = state
        .proxy
        .as_ref()
        .map(|p| p.breaker_states().into_iter().map(|(n, s)| (n, s.as_str().into())).collect())
        .unwrap_or_default();
    let degraded = state.readiness.degraded();
    Ok(axum::Json(serde_json::json!({
        "status": if degraded.is_some() { "degraded" } else { "ready" },
        "secrets": degraded.unwrap_or_else(|| "ok".into()),
        "breakers": upstreams,
    })))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.metrics.set_gauge("gocred_ready", if state.readiness.check().is_ok() { 1.0 } else { 0.0 });
    let mut text = state.metrics.render();
    if let Some(store) = &state.modstore {
        text.push_str(&store.render_metrics());
    }
    if let Some(p) = &state.proxy {
        text.push_str(&p.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

async fn jwks(State(state): State<AppState>) -> impl IntoResponse {
    let snap = state.keys.snapshot();
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "public, max-age=60")],
        snap.jwks.clone(),
    )
}

#[cfg(test)]
mod tests;
