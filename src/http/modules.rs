//! HTTP side of module serving through the store: a stored artifact as a response (`ETag`,
//! `Content-Length`, `Range`/`If-Range`, `If-None-Match`, immutable `Cache-Control`), `/mod/`
//! for module-proxy upstreams with the store and the list cache in front, and the GOPROXY
//! request parsing both kinds of upstream share.

use super::AppState;
use super::error::ApiError;
use crate::audit::Event;
use crate::modfetch::Request;
use crate::modstore::{Kind, ModStore, ObjectName, Stored};
use crate::policy::{Action, Resource};
use crate::proxy::route::{self, Target};
use crate::service::access::{Caller, authorize};
use crate::service::modules::{self, Freshness, Listed};
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::StreamExt;
use std::sync::Arc;

/// `…/@v/list`, `…/@latest`, `…/@v/<v>.info|.mod|.zip` → the request.
pub(super) fn parse_request(upstream_path: &str) -> Result<Option<Request>, ApiError> {
    let Some((_, tail)) = upstream_path.rsplit_once("/@") else { return Ok(None) };
    let version = |ext: &str| -> Result<String, ApiError> {
        let v = tail.strip_prefix("v/").and_then(|r| r.strip_suffix(ext)).unwrap_or_default();
        Ok(route::unescape_module(v)?)
    };
    Ok(Some(match tail {
        "v/list" => Request::List,
        "latest" => Request::Latest,
        t if t.starts_with("v/") && t.ends_with(".info") => Request::Info(version(".info")?),
        t if t.starts_with("v/") && t.ends_with(".mod") => Request::Mod(version(".mod")?),
        t if t.starts_with("v/") && t.ends_with(".zip") => Request::Zip(version(".zip")?),
        _ => return Ok(None),
    }))
}

fn content_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Info => "application/json",
        Kind::Mod => "text/plain; charset=utf-8",
        Kind::Zip => "application/zip",
    }
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against `size` → the range; `Err` when unsatisfiable;
/// `Ok(None)` for anything else (served whole, as RFC 9110 allows).
fn byte_range(v: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = v.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.split_once('-') else { return Ok(None) };
    let (a, b) = (a.trim(), b.trim());
    let r = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(s), Some(e)) if s <= e => (s, e.min(size.saturating_sub(1)) + 1),
        (Some(s), None) if b.is_empty() => (s, size),
        (None, Some(n)) if a.is_empty() && n > 0 => (size.saturating_sub(n), size),
        _ => return Ok(None),
    };
    if r.0 >= size { Err(()) } else { Ok(Some(r)) }
}

/// A stored artifact as the response, or `None` when it failed its check before the first
/// byte (quarantined; the caller fetches it again). Objects of one part are read and verified
/// whole before answering; a longer zip is verified part by part as it streams.
pub(super) async fn from_store(
    state: &AppState,
    store: &Arc<ModStore>,
    obj: Stored,
    headers: &HeaderMap,
    ev: Event,
) -> Option<Response> {
    let h = &obj.head;
    let etag = format!("\"{}\"", h.sha256);
    let mut resp = Response::new(Body::empty());
    let rh = resp.headers_mut();
    rh.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(h.kind)));
    rh.insert(header::ETAG, HeaderValue::from_str(&etag).ok()?);
    rh.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        let reason = "not modified (from the module store)".into();
        state.audit.record(&Event { status: Some(304), decision: "allow", reason, bytes: Some(0), ..ev });
        return Some(resp);
    }
    let mut range = None;
    if h.kind == Kind::Zip {
        rh.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let if_range_ok = headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()).is_none_or(|v| v.trim() == etag);
        if let (Some(r), true) = (headers.get(header::RANGE).and_then(|v| v.to_str().ok()), if_range_ok) {
            match byte_range(r, h.size) {
                Ok(r) => range = r,
                Err(()) => {
                    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    resp.headers_mut()
                        .insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{}", h.size)).ok()?);
                    let reason = format!("range {r:?} not satisfiable (from the module store)");
                    state.audit.record(&Event { status: Some(416), decision: "allow", reason, bytes: Some(0), ..ev });
                    return Some(resp);
                }
            }
        }
    }
    let (start, end) = range.unwrap_or((0, h.size));
    let stream = store.read(&obj, start..end).await.ok()?;
    let body = if h.size <= crate::modstore::crypt::PART as u64 {
        let mut whole = Vec::with_capacity((end - start) as usize);
        let mut s = stream;
        while let Some(b) = s.next().await {
            whole.extend_from_slice(&b.ok()?);
        }
        if h.kind == Kind::Mod && range.is_none() && h.h1.as_deref() != Some(&crate::modstore::hash::gomod_h1(&whole)) {
            return None;
        }
        Body::from(whole)
    } else {
        Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)))
    };
    store.stats.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state.audit.record(&Event {
        status: Some(if range.is_some() { 206 } else { 200 }),
        decision: "allow",
        reason: "from the module store".into(),
        bytes: Some(end - start),
        ..ev
    });
    let rh = resp.headers_mut();
    rh.insert(header::CONTENT_LENGTH, (end - start).into());
    if range.is_some() {
        rh.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes {start}-{}/{}", end - 1, h.size)).ok()?);
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    *resp.body_mut() = body;
    Some(resp)
}

/// A list answer as the response (`stale`: marked in the audit line).
pub(super) fn list_response(state: &AppState, l: Listed, how: Freshness, ev: Event) -> Response {
    let reason = match how {
        Freshness::Cached => "list from the cache",
        Freshness::Fetched => "list from the upstream",
        Freshness::Stale => "stale list: the upstream failed",
    };
    let (status, ctype, body) = match l {
        Listed::Found { body, json } => {
            (StatusCode::OK, if json { "application/json" } else { "text/plain; charset=utf-8" }, body)
        }
        Listed::Missing(line) => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", line),
    };
    state.audit.record(&Event { status: Some(status.as_u16()), decision: "allow", reason: reason.into(), ..ev });
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Why a fetch did not reach its temporary file.
enum Saving {
    Upstream(std::io::Error),
    /// The broker's own disk: not the upstream's fault, and no reason to fail the download.
    Local(std::io::Error),
}

/// Copy a response body to `path` (0600), streamed.
async fn body_to_file(resp: reqwest::Response, path: &std::path::Path) -> Result<(), Saving> {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncWriteExt;
    let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(Saving::Local)?;
    let mut f = tokio::fs::File::from_std(f);
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| Saving::Upstream(std::io::Error::other(e)))?;
        f.write_all(&chunk).await.map_err(Saving::Local)?;
    }
    f.flush().await.map_err(Saving::Local)
}

/// `/mod/` for a module-proxy upstream (private or public): the store in front of immutable
/// answers, the list cache in front of `@v/list`/`@latest`; anything else is forwarded as is.
pub(super) async fn goproxy_module(
    state: AppState,
    a: Caller,
    t: Target,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let p = state.proxy.clone().ok_or(ApiError::NotFound)?;
    let upstream = p.upstreams()[t.upstream].clone();
    authorize(&state, &a.request_id, &a.principal, Action::Download, &Resource::module(&t.module, &upstream.name))?;
    let ev = super::proxy::download_event(&a, &t.module, &upstream.name);
    let name = modules::immutable(&t.module, &req);
    if let (Some(store), Some(n)) = (state.modstore.clone(), &name) {
        if let Some(obj) = modules::stored(&state, &store, &a, &upstream.name, &t.module, n).await?
            && let Some(resp) = from_store(&state, &store, obj, &headers, ev.clone()).await
        {
            return Ok(resp);
        }
        return fetch_and_keep(&state, &store, &a, &t, n, &headers, ev).await;
    }
    if matches!(req, Request::List | Request::Latest) {
        return goproxy_list(state, t, req, ev).await;
    }
    let (idx, resp) = p.forward_chain(t.upstream, &t.upstream_path, &headers).await?;
    match &name {
        Some(n) => relay_checked(&state, resp, n, &p.upstreams()[idx].name, ev).await,
        None => Ok(super::proxy::relay(state.clone(), resp, ev)),
    }
}

/// Relay an immutable answer; a `.info` only once it names exactly the version asked
/// (whichever upstream or mirror answered): read whole (it is small), checked, then relayed.
async fn relay_checked(
    state: &AppState,
    resp: reqwest::Response,
    n: &ObjectName,
    upstream: &str,
    ev: Event,
) -> Result<Response, ApiError> {
    if n.kind != Kind::Info || resp.status() != reqwest::StatusCode::OK {
        return Ok(super::proxy::relay(state.clone(), resp, ev));
    }
    const MAX_INFO: usize = 64 << 10;
    let mut rebuilt = axum::http::Response::builder().status(200);
    for (k, v) in resp.headers() {
        rebuilt = rebuilt.header(k, v);
    }
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| crate::proxy::ProxyError::Body {
            upstream: upstream.to_string(),
            source: std::io::Error::other(e),
        })?;
        body.extend_from_slice(&chunk);
        if body.len() > MAX_INFO {
            info_names(None, n, upstream)?;
        }
    }
    info_names(crate::modfetch::info_version(&body), n, upstream)?;
    let rebuilt = rebuilt.body(body).map_err(|e| crate::proxy::ProxyError::Body {
        upstream: upstream.to_string(),
        source: std::io::Error::other(e),
    })?;
    Ok(super::proxy::relay(state.clone(), reqwest::Response::from(rebuilt), ev))
}

/// An immutable answer not (usably) stored: fetched into a temporary file, kept, served from
/// the store — or from the file when the store fails, or relayed when the broker's own disk
/// fails. A different answer for a version already served is refused.
async fn fetch_and_keep(
    state: &AppState,
    store: &Arc<ModStore>,
    a: &Caller,
    t: &Target,
    n: &ObjectName,
    headers: &HeaderMap,
    ev: Event,
) -> Result<Response, ApiError> {
    let p = state.proxy.clone().ok_or(ApiError::NotFound)?;
    let (idx, resp) = p.forward_chain(t.upstream, &t.upstream_path, &HeaderMap::new()).await?;
    let upstream = p.upstreams()[idx].name.clone();
    if resp.status() != reqwest::StatusCode::OK {
        return Ok(super::proxy::relay(state.clone(), resp, ev));
    }
    let tmp = store.temp_path("fetch");
    match body_to_file(resp, &tmp).await {
        Ok(()) => {}
        Err(Saving::Upstream(source)) => return Err(crate::proxy::ProxyError::Body { upstream, source }.into()),
        Err(Saving::Local(e)) => {
            store.stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(object = %n, error = %e, "module store temporary file failed; relaying the upstream");
            let (idx, resp) = p.forward_chain(t.upstream, &t.upstream_path, headers).await?;
            let name = p.upstreams()[idx].name.clone();
            return relay_checked(state, resp, n, &name, ev).await;
        }
    }
    if n.kind == Kind::Info {
        check_info_version(&tmp, n, &upstream)?;
    }
    if let Some(obj) = modules::keep(state, store, a, &upstream, &t.module, n, &tmp).await?
        && let Some(r) = from_store(state, store, obj, headers, ev.clone()).await
    {
        return Ok(r);
    }
    let r = super::proxy::file_response(&tmp, content_type(n.kind)).await?;
    let bytes = std::fs::metadata(&*tmp).map(|m| m.len()).ok();
    let reason = "from the upstream (not stored)".to_string();
    state.audit.record(&Event { status: Some(200), decision: "allow", reason, bytes, ..ev });
    Ok(r)
}

/// An upstream's `.info` for canonical version `n.version` must name exactly that version
/// (whichever mirror answered): anything else is refused, never stored or served.
fn check_info_version(path: &std::path::Path, n: &ObjectName, upstream: &str) -> Result<(), ApiError> {
    info_names(std::fs::read(path).ok().and_then(|b| crate::modfetch::info_version(&b)), n, upstream)
}

/// The version a `.info` named (`None`: unreadable) is the one asked, or the refusal.
fn info_names(named: Option<String>, n: &ObjectName, upstream: &str) -> Result<(), ApiError> {
    if named.as_deref() == Some(n.version.as_str()) {
        return Ok(());
    }
    let got = named.unwrap_or_else(|| "no version".into());
    tracing::warn!(upstream, object = %n, named = %got, "upstream .info names another version; refused");
    Err(ApiError::Proxy(crate::proxy::ProxyError::WrongVersion {
        upstream: upstream.to_string(),
        asked: n.version.clone(),
        named: got,
    }))
}

/// `@v/list` / `@latest` from a module-proxy upstream through the list cache.
async fn goproxy_list(state: AppState, t: Target, req: Request, ev: Event) -> Result<Response, ApiError> {
    let p = state.proxy.clone().ok_or(ApiError::NotFound)?;
    let cfg = state.config.store.clone();
    let key = (p.upstreams()[t.upstream].name.clone(), t.module.clone(), req == Request::Latest);
    if let Some(l) = state.lists.fresh(&key, cfg.list_ttl, cfg.negative_ttl) {
        return Ok(list_response(&state, l, Freshness::Cached, ev));
    }
    let failed = match p.forward_chain(t.upstream, &t.upstream_path, &HeaderMap::new()).await {
        Ok((_, resp)) if resp.status().is_success() => {
            let json = req == Request::Latest;
            match resp.text().await {
                Ok(body) => {
                    let l = Listed::Found { body, json };
                    state.lists.put(key, l.clone());
                    return Ok(list_response(&state, l, Freshness::Fetched, ev));
                }
                Err(e) => ApiError::Proxy(crate::proxy::ProxyError::Body {
                    upstream: key.0.clone(),
                    source: std::io::Error::other(e),
                }),
            }
        }
        Ok((_, resp)) if matches!(resp.status().as_u16(), 404 | 410) => {
            let line = resp.text().await.unwrap_or_default();
            let l = Listed::Missing(line.chars().take(1000).collect());
            state.lists.put(key, l.clone());
            return Ok(list_response(&state, l, Freshness::Fetched, ev));
        }
        Ok((_, resp)) => {
            if let Some(l) = state.lists.stale(&key) {
                stale_counted(&state);
                return Ok(list_response(&state, l, Freshness::Stale, ev));
            }
            return Ok(super::proxy::relay(state.clone(), resp, ev));
        }
        Err(e) => ApiError::Proxy(e),
    };
    if let Some(l) = state.lists.stale(&key) {
        stale_counted(&state);
        return Ok(list_response(&state, l, Freshness::Stale, ev));
    }
    Err(failed)
}

pub(super) fn stale_counted(state: &AppState) {
    if let Some(s) = &state.modstore {
        s.stats.stale_lists.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        assert_eq!(byte_range("bytes=0-9", 100), Ok(Some((0, 10))));
        assert_eq!(byte_range("bytes=90-", 100), Ok(Some((90, 100))));
        assert_eq!(byte_range("bytes=-10", 100), Ok(Some((90, 100))));
        assert_eq!(byte_range("bytes=50-500", 100), Ok(Some((50, 100))));
        assert_eq!(byte_range("bytes=100-", 100), Err(()));
        assert_eq!(byte_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(byte_range("items=0-1", 100), Ok(None));
    }
}
