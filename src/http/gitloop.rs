//! The git door: a loopback-only HTTP listener through which the broker's own `git` (building
//! git-hosted modules) reaches upstreams. Each request is forwarded by [`crate::proxy::Proxy`]
//! with the real upstream credential, retried before its first byte like any other fetch —
//! git itself never retries, and never holds the credential (its config carries only the
//! door's per-process random key).
//!
//! Read-only: `GET …/info/refs?service=git-upload-pack` and `POST …/git-upload-pack` (a read,
//! safe to send again); nothing else opens. Must not: serve callers (it is not on the broker's
//! port), or accept a request without the key.

use crate::proxy::{GitDoor, Proxy};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;

/// Largest `upload-pack` request body accepted (the have/want negotiation of a big repository).
const MAX_NEGOTIATION: usize = 16 << 20;

/// Open the door on `127.0.0.1:0` and tell the proxy where it is.
pub async fn open(proxy: Arc<Proxy>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let key = secrecy::SecretString::from(crate::fsutil::hex(&crate::random_bytes::<32>()));
    proxy.set_door(GitDoor { base, key });
    let app = axum::Router::new().fallback(handle).with_state(proxy);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the git door stopped: git builds fail until the broker restarts");
        }
    });
    Ok(())
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, format!("gocred: {why}\n")).into_response()
}

/// `/<upstream index>/<repository path>/(info/refs|git-upload-pack)`.
async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let presented = req.headers().get(axum::http::header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
    if !p.door_opens(presented) {
        return refuse(StatusCode::UNAUTHORIZED, "the git door needs its key");
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let Some((idx, rest)) = path.strip_prefix('/').and_then(|r| r.split_once('/')) else {
        return refuse(StatusCode::NOT_FOUND, "no such upstream");
    };
    let git = |i: &usize| p.upstreams().get(*i).is_some_and(|u| u.kind == crate::config::UpstreamKind::Git);
    let Some(idx) = idx.parse::<usize>().ok().filter(git) else {
        return refuse(StatusCode::NOT_FOUND, "no such upstream");
    };
    let rest = format!("/{rest}");
    let read_refs = req.method() == Method::GET
        && rest.ends_with("/info/refs")
        && query.as_deref() == Some("service=git-upload-pack");
    let upload_pack = req.method() == Method::POST && rest.ends_with("/git-upload-pack") && query.is_none();
    if !(read_refs || upload_pack) {
        return refuse(StatusCode::FORBIDDEN, "the git door only reads (upload-pack)");
    }
    let upstream_path = match &query {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    let headers: HeaderMap = req.headers().clone();
    let resp = if read_refs {
        p.forward(idx, Method::GET, &upstream_path, &headers, None).await
    } else {
        let body = match axum::body::to_bytes(req.into_body(), MAX_NEGOTIATION).await {
            Ok(b) => b,
            Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "upload-pack request too large"),
        };
        p.forward_replayable(idx, Method::POST, &upstream_path, &headers, body).await
    };
    match resp {
        Ok(r) => relay(r),
        // git reports a 403 as the upstream refusing the credential (which it is).
        Err(e @ crate::proxy::ProxyError::Rejected { .. }) => refuse(StatusCode::FORBIDDEN, &e.to_string()),
        Err(e) => {
            tracing::info!(error = %crate::error_chain(&e), "git door: upstream failed");
            refuse(StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

/// The upstream's answer to git, streamed (status and the allowlisted headers).
fn relay(r: reqwest::Response) -> Response {
    let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let headers = Proxy::response_headers(&r);
    let mut resp = Response::new(Body::from_stream(r.bytes_stream().map(|c| c.map_err(std::io::Error::other))));
    *resp.status_mut() = status;
    resp.headers_mut().extend(headers);
    resp
}
