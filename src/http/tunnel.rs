//! `GET /v1/tunnel?host=H&port=P` with `Upgrade: gocred-tunnel`: authenticate (token + proof),
//! let [`crate::service::tunnel`] authorize and connect, answer `101 Switching Protocols`, then
//! hand the upgraded connection to the service, which copies bytes until it closes.

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use crate::proto::tunnel::{TunnelRequest, UPGRADE_PROTOCOL};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

fn asks_for_tunnel(req: &Request) -> bool {
    let has = |name: header::HeaderName, want: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, UPGRADE_PROTOCOL)
}

pub async fn tunnel(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Query(q): Query<TunnelRequest>,
    mut req: Request,
) -> Result<Response, ApiError> {
    if !asks_for_tunnel(&req) {
        return Err(ApiError::BadRequest(format!(
            "a tunnel needs `Connection: Upgrade` and `Upgrade: {UPGRADE_PROTOCOL}` over HTTP/1.1"
        )));
    }
    let opened = crate::service::tunnel::open(&state, caller, &q.host, q.port).await?;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let broker = state.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => crate::service::tunnel::run(broker, opened, hyper_util::rt::TokioIo::new(upgraded)).await,
            Err(e) => crate::service::tunnel::abandon(&broker, opened, &e.to_string()),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(header::UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    Ok(resp)
}
