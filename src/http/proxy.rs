//! HTTP side of the proxy: `/mod/...` (GOPROXY), `/git/<host>/...` (git smart HTTP), host-routed
//! requests for configured git hosts (`?go-get=1` meta + smart HTTP), vend mode
//! (`GET /v1/credentials`) and `/.well-known/gocred`. Every proxied request is authenticated
//! (token + proof), authorized (Cedar `download`/`push` on the module path) and audited with
//! its status, bytes and duration once the body has been streamed.

use super::AppState;
use super::auth::Authed;
use super::error::ApiError;
use crate::audit::Event;
use crate::policy::{Action, Resource};
use crate::proxy::Proxy;
use crate::proxy::route::{self, GitOp, Target};
use crate::service::access::{Caller, authorize};
use crate::service::fallback::{FetchError, Fetched, Wanted};
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Writes the audit line of a proxied request when its response body is done (or dropped).
struct Finish {
    state: AppState,
    ev: Event,
    bytes: Arc<AtomicU64>,
    started: Instant,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let mut ev = std::mem::take(&mut self.ev);
        ev.reason = format!("{} bytes in {}ms", bytes, self.started.elapsed().as_millis());
        ev.bytes = Some(bytes);
        ev.duration_ms = Some(self.started.elapsed().as_millis() as u64);
        self.state.audit.record(&ev);
    }
}

fn proxy(state: &AppState) -> Result<&Arc<Proxy>, ApiError> {
    state.proxy.as_ref().ok_or_else(|| ApiError::NotServed("no upstreams are configured".into()))
}

/// Authorize, forward, stream back.
async fn forward(
    state: AppState,
    a: Caller,
    t: Target,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = proxy(&state)?.clone();
    let method_ok = if t.post { method == Method::POST } else { method == Method::GET || method == Method::HEAD };
    if !method_ok {
        return Err(ApiError::MethodNotAllowed);
    }
    let upstream = p.upstreams()[t.upstream].clone();
    let action = if t.git_op == Some(GitOp::Write) { Action::Push } else { Action::Download };
    authorize(&state, &a.request_id, &a.principal, action, &Resource::module(&t.module, &upstream.name))?;
    if upstream.mode == crate::config::UpstreamMode::Vend {
        return Err(ApiError::BadRequest(format!("upstream {} is vend-only: use GET /v1/credentials", upstream.name)));
    }
    let base = Event {
        action: action.as_str().into(),
        resource: t.module.clone(),
        upstream: Some(upstream.name.clone()),
        ..Event::about("proxy", &a.request_id, &a.principal)
    };
    let req_body =
        if method == Method::POST { Some(reqwest::Body::wrap_stream(body.into_data_stream())) } else { None };
    let resp = match p.forward(t.upstream, method, &t.upstream_path, &headers, req_body).await {
        Ok(r) => r,
        Err(e) => {
            state.audit.record(&Event { decision: "error", reason: e.to_string(), ..base });
            return Err(e.into());
        }
    };
    Ok(relay(state, resp, base))
}

/// An upstream response streamed back (status, filtered headers), audited once its body is done.
pub(super) fn relay(state: AppState, resp: reqwest::Response, base: Event) -> Response {
    let started = Instant::now();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let out_headers = Proxy::response_headers(&resp);
    let bytes = Arc::new(AtomicU64::new(0));
    let finish = Finish {
        state: state.clone(),
        ev: Event { status: Some(status.as_u16()), decision: "allow", ..base },
        bytes: bytes.clone(),
        started,
    };
    let stream = resp.bytes_stream().map(move |chunk| {
        let _keep = &finish;
        if let Ok(c) = &chunk {
            bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
        }
        chunk
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    for (k, v) in out_headers.iter() {
        response.headers_mut().append(k.clone(), v.clone());
    }
    response
}

/// `/mod/<module>/@v/...` — GOPROXY protocol.
/// Routing works on the raw (still percent-encoded) path, never on decoded captures: a `%23`
/// or `%3F` must not become a `#`/`?` between what the policy sees and what is sent upstream.
pub async fn goproxy(State(state): State<AppState>, Authed(a): Authed, req: Request) -> Result<Response, ApiError> {
    let p = proxy(&state)?;
    let rest = req.uri().path().strip_prefix("/mod/").unwrap_or_default().to_string();
    let t = route::resolve_mod(p.upstreams(), &rest, req.uri().query())?;
    let upstream = &p.upstreams()[t.upstream];
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    let parsed = if rest.starts_with("sumdb/") { None } else { super::modules::parse_request(&t.upstream_path)? };
    if upstream.kind == crate::config::UpstreamKind::Git {
        let r = parsed.ok_or_else(|| ApiError::BadRequest("not a GOPROXY request".into()))?;
        return git_module(state.clone(), a, t, req.headers().clone(), r).await;
    }
    if let (Some(r), true, crate::config::UpstreamMode::Proxy) = (parsed, get, upstream.mode) {
        return super::modules::goproxy_module(state.clone(), a, t, req.headers().clone(), r).await;
    }
    let (parts, body) = req.into_parts();
    forward(state.clone(), a, t, parts.method, parts.headers, body).await
}

/// The module path as served from a repository: its path on the upstream without `.git`,
/// plus the module's directory in it (what `download` is also decided on).
fn served_as(module: &str, (root, repo): &(String, String)) -> String {
    let host = module.split('/').next().unwrap_or_default();
    let rest = module.strip_prefix(root.as_str()).unwrap_or_default();
    let repo = repo.trim_end_matches('/');
    let stem = repo.strip_suffix(".git").filter(|s| !s.is_empty() && !s.ends_with('/')).unwrap_or(repo);
    format!("{host}/{stem}{rest}")
}

/// `/mod/...` for a module whose upstream is a git server: authorized, served from the store
/// when stored, else built by [`crate::modfetch`] (the upstream credential reaches git through
/// a private config file) and stored.
async fn git_module(
    state: AppState,
    a: Caller,
    t: Target,
    headers: HeaderMap,
    req: crate::modfetch::Request,
) -> Result<Response, ApiError> {
    let p = proxy(&state)?.clone();
    let upstream = p.upstreams()[t.upstream].clone();
    authorize(&state, &a.request_id, &a.principal, Action::Download, &Resource::module(&t.module, &upstream.name))?;
    if upstream.mode == crate::config::UpstreamMode::Vend {
        return Err(ApiError::BadRequest(format!("upstream {} is vend-only: use GET /v1/credentials", upstream.name)));
    }
    // `…/lib.git/x` and `…/lib/x`, or a go-import answer naming another repository, reach one
    // repository: `download` is also decided on the module as served — the repository's path
    // without `.git` plus the subdirectory — for the fallback guess before the upstream is asked
    // anything, and for its answer after. (Case variants: policies match `folded_path`.)
    let authorize_repo = |repo: &(String, String)| {
        let served = served_as(&t.module, repo);
        if served == t.module {
            return Ok(());
        }
        authorize(&state, &a.request_id, &a.principal, Action::Download, &Resource::module(&served, &upstream.name))
    };
    let guess = crate::modfetch::repo_for(&t.module);
    if let Some(g) = &guess {
        authorize_repo(g)?;
    }
    let base = download_event(&a, &t.module, &upstream.name);
    let name = crate::service::modules::immutable(&t.module, &req);
    if let (Some(store), Some(n)) = (state.modstore.clone(), &name)
        && let Some(obj) = crate::service::modules::stored(&state, &store, &a, &upstream.name, &t.module, n).await?
        && let Some(resp) = super::modules::from_store(&state, &store, obj, &headers, base.clone()).await
    {
        return Ok(resp);
    }
    let list_key = (upstream.name.clone(), t.module.clone(), req == crate::modfetch::Request::Latest);
    let is_list = name.is_none() && matches!(req, crate::modfetch::Request::List | crate::modfetch::Request::Latest);
    // A path without `.git` is looked up as the go command would: the upstream's go-import.
    let repo = if crate::modfetch::names_repo(&t.module) { None } else { p.discover_repo(t.upstream, &t.module).await };
    if let Some(found) = &repo {
        authorize_repo(found)?;
    }
    // Lists from the cache only after the repository answer was authorized too.
    let cfg = &state.config.store;
    if is_list && let Some(l) = state.lists.fresh(&list_key, cfg.list_ttl, cfg.negative_ttl) {
        return Ok(super::modules::list_response(&state, l, crate::service::modules::Freshness::Cached, base));
    }
    let served = repo.as_ref().or(guess.as_ref()).map(|r| served_as(&t.module, r)).unwrap_or_else(|| t.module.clone());
    let w = Wanted { module: &t.module, repo, goproxy_path: &t.upstream_path, req };
    let started = Instant::now();
    let fetched = crate::service::fallback::fetch(&p, &state.modfetch, t.upstream, &w).await;
    if is_list {
        return git_list(&state, list_key, fetched.map(|f| f.answer), base);
    }
    let Fetched { upstream: answered, answer, _file } = match fetched {
        Ok(f) => f,
        Err(e) => {
            state.audit.record(&Event { decision: "error", reason: e.to_string(), ..base });
            return Err(e.into());
        }
    };
    let answered = p.upstreams()[answered].name.clone();
    if let (Some(store), Some(n)) = (state.modstore.clone(), &name) {
        let built = GitBuilt { store: &store, caller: &a, upstream: &answered, served: &served, name: n };
        if let Some(resp) = built.keep(&state, &answer, &headers, base.clone()).await? {
            return Ok(resp);
        }
    }
    answer_response(&state, answer, base, started).await
}

/// The audit event of a module download (filled in when it is answered).
pub(super) fn download_event(a: &Caller, module: &str, upstream: &str) -> Event {
    Event {
        action: Action::Download.as_str().into(),
        resource: module.to_string(),
        upstream: Some(upstream.to_string()),
        ..Event::about("proxy", &a.request_id, &a.principal)
    }
}

/// A git-built answer on its way into the store.
struct GitBuilt<'a> {
    store: &'a Arc<crate::modstore::ModStore>,
    caller: &'a Caller,
    upstream: &'a str,
    served: &'a str,
    name: &'a crate::modstore::ObjectName,
}

impl GitBuilt<'_> {
    /// Store the answer and answer from the store; `None` when the store failed (serve the
    /// answer itself).
    async fn keep(
        &self,
        state: &AppState,
        answer: &crate::modfetch::Answer,
        headers: &HeaderMap,
        ev: Event,
    ) -> Result<Option<Response>, ApiError> {
        use crate::modfetch::Answer;
        let tmp = self.store.temp_path("built");
        let file = match answer {
            Answer::File(p) => p.clone(),
            Answer::Json(s) | Answer::Text(s) => match crate::fsutil::write_private_atomic(&tmp, s.as_bytes()) {
                Ok(()) => tmp.to_path_buf(),
                Err(e) => return Ok(self.local_failed(e)),
            },
            Answer::Bytes(b) => match crate::fsutil::write_private_atomic(&tmp, b) {
                Ok(()) => tmp.to_path_buf(),
                Err(e) => return Ok(self.local_failed(e)),
            },
        };
        let kept =
            crate::service::modules::keep(state, self.store, self.caller, self.upstream, self.served, self.name, &file)
                .await;
        drop(tmp);
        match kept? {
            Some(obj) => Ok(super::modules::from_store(state, self.store, obj, headers, ev).await),
            None => Ok(None),
        }
    }
}

impl GitBuilt<'_> {
    /// The store's own disk failed: counted and logged; the answer is served as it is.
    fn local_failed(&self, e: std::io::Error) -> Option<Response> {
        self.store.stats.errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(object = %self.name, error = %e, "module store temporary file failed; serving without storing");
        None
    }
}

/// `@v/list` / `@latest` built from git, through the list cache (stale when git fails).
fn git_list(
    state: &AppState,
    key: (String, String, bool),
    answer: Result<crate::modfetch::Answer, FetchError>,
    base: Event,
) -> Result<Response, ApiError> {
    use crate::modfetch::{Answer, ModFetchError};
    use crate::service::modules::{Freshness, Listed};
    let l = match answer {
        Ok(Answer::Text(body)) => Listed::Found { body, json: false },
        Ok(Answer::Json(body)) => Listed::Found { body, json: true },
        Ok(_) => return Err(ApiError::NotFound),
        Err(FetchError::Build(ModFetchError::NotFound(line))) => Listed::Missing(line),
        Err(e) => {
            if let Some(l) = state.lists.stale(&key) {
                super::modules::stale_counted(state);
                return Ok(super::modules::list_response(state, l, Freshness::Stale, base));
            }
            state.audit.record(&Event { decision: "error", reason: e.to_string(), ..base });
            return Err(e.into());
        }
    };
    state.lists.put(key, l.clone());
    Ok(super::modules::list_response(state, l, Freshness::Fetched, base))
}

/// A built file as a streamed response.
pub(super) async fn file_response(path: &std::path::Path, ctype: &'static str) -> Result<Response, ApiError> {
    let f = tokio::fs::File::open(path).await.map_err(|e| ApiError::ModFetch(e.into()))?;
    let len = f.metadata().await.ok().map(|m| m.len());
    let mut resp = Response::new(Body::from_stream(file_stream(f)));
    resp.headers_mut().insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static(ctype));
    if let Some(n) = len {
        resp.headers_mut().insert(header::CONTENT_LENGTH, n.into());
    }
    Ok(resp)
}

/// A modfetch answer served as it is (no store, or the store failed).
async fn answer_response(
    state: &AppState,
    answer: crate::modfetch::Answer,
    base: Event,
    started: Instant,
) -> Result<Response, ApiError> {
    use crate::modfetch::Answer;
    let resp = match answer {
        Answer::Text(s) => text_response("text/plain; charset=utf-8", s.into_bytes()),
        Answer::Json(s) => text_response("application/json", s.into_bytes()),
        Answer::Bytes(b) => text_response("text/plain; charset=utf-8", b),
        Answer::File(path) => file_response(&path, "application/zip").await?,
    };
    state.audit.record(&Event {
        status: Some(200),
        decision: "allow",
        duration_ms: Some(started.elapsed().as_millis() as u64),
        ..base
    });
    Ok(resp)
}

fn text_response(ctype: &'static str, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(header::CONTENT_TYPE, axum::http::HeaderValue::from_static(ctype));
    resp
}

/// A file as a body stream, 64 KiB at a time (memory flat whatever the file's size).
fn file_stream(f: tokio::fs::File) -> impl futures_util::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures_util::stream::unfold(Some(f), |f| async move {
        use tokio::io::AsyncReadExt;
        let mut f = f?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(f)))
            }
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// `/git/<host>/<repo>/...` — git smart HTTP.
pub async fn git(State(state): State<AppState>, Authed(a): Authed, req: Request) -> Result<Response, ApiError> {
    let p = proxy(&state)?;
    let raw = req.uri().path().strip_prefix("/git/").unwrap_or_default();
    let (host, rest) =
        raw.split_once('/').ok_or_else(|| ApiError::BadRequest("expected /git/<host>/<repo>/...".into()))?;
    let t = route::resolve_git(p.upstreams(), host, rest, req.uri().query())?;
    let (parts, body) = req.into_parts();
    forward(state.clone(), a, t, parts.method, parts.headers, body).await
}

/// The configured git upstream named by the request's host (HTTP/1 `Host` header, or the
/// HTTP/2 `:authority`, which hyper puts in the URI), if any.
pub fn routed_host(state: &AppState, uri: &axum::http::Uri, headers: &HeaderMap) -> Option<(usize, String)> {
    let p = state.proxy.as_ref()?;
    let host = match uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => headers.get(header::HOST)?.to_str().ok()?.to_string(),
    };
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map(|(h, _)| h)
        .unwrap_or(&host);
    route::git_upstream(p.upstreams(), name).map(|i| (i, name.to_ascii_lowercase()))
}

/// Fallback for everything no route matched: host-routed git hosts, else 404.
pub async fn host_routed(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let Some((idx, host)) = routed_host(&state, req.uri(), req.headers()) else {
        return Err(ApiError::NotFound);
    };
    let (mut parts, body) = req.into_parts();
    let Authed(a) =
        <Authed as axum::extract::FromRequestParts<AppState>>::from_request_parts(&mut parts, &state).await?;
    let path = parts.uri.path().trim_start_matches('/').to_string();
    let query = parts.uri.query().map(str::to_string);
    if query.as_deref().is_some_and(|q| q.split('&').any(|kv| kv == "go-get=1")) {
        return go_import(&state, &a, idx, &host, &path).await;
    }
    let p = proxy(&state)?;
    let t = route::resolve_git(p.upstreams(), &host, &path, query.as_deref())?;
    forward(state.clone(), a, t, parts.method, parts.headers, body).await
}

/// `?go-get=1` for a host-routed module: the repository root and its path come from the
/// upstream's own go-import answer (fetched with the upstream credential) — the broker
/// advertises itself under the host the caller asked for, with exactly the repository path the
/// upstream advertises (with or without `.git`) — else the first two path elements + `.git`.
async fn go_import(state: &AppState, a: &Caller, idx: usize, host: &str, path: &str) -> Result<Response, ApiError> {
    let p = proxy(state)?;
    let path = path.trim_end_matches('/');
    if !crate::proto::rules::clean_path(path) {
        return Err(ApiError::BadRequest("malformed module path".into()));
    }
    let upstream = &p.upstreams()[idx];
    let host = route::canonical_host(upstream, host).unwrap_or(host).to_string();
    let module = format!("{host}/{path}");
    let resource = Resource::module(&route::repo_module(&host, path), &upstream.name);
    authorize(state, &a.request_id, &a.principal, Action::Download, &resource)?;
    let mut found = None;
    if let Ok(resp) = p.forward(idx, Method::GET, &format!("/{path}?go-get=1"), &HeaderMap::new(), None).await
        && resp.status().is_success()
    {
        let text = resp.text().await.unwrap_or_default();
        found = route::parse_go_import(&text, &module).and_then(|gi| {
            let repo = route::upstream_relative_path(&upstream.url, &gi.repo_url)?;
            Some((gi.prefix, repo))
        });
    }
    let (root, repo) = found.unwrap_or_else(|| {
        let root = module.split('/').take(3).collect::<Vec<_>>().join("/");
        let repo = format!("{}.git", root.strip_prefix(&format!("{host}/")).unwrap_or(&root));
        (root, repo)
    });
    let page = format!(
        "<!DOCTYPE html>\n<html><head><meta name=\"go-import\" content=\"{root} git https://{host}/{repo}\"></head><body>{root}</body></html>\n"
    );
    Ok(([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response())
}

#[derive(serde::Deserialize)]
pub struct CredQuery {
    url: String,
}

/// Vend mode: the upstream credential itself, for hosts that cannot be proxied.
pub async fn credentials(
    State(state): State<AppState>,
    Authed(a): Authed,
    Query(q): Query<CredQuery>,
) -> Result<Response, ApiError> {
    let p = proxy(&state)?;
    let rest =
        q.url.strip_prefix("https://").ok_or_else(|| ApiError::BadRequest("url must be an https:// URL".into()))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let idx = route::git_upstream(p.upstreams(), host)
        .filter(|i| p.upstreams()[*i].mode == crate::config::UpstreamMode::Vend)
        .ok_or_else(|| ApiError::NotServed(format!("no vend-mode upstream serves {host}")))?;
    let u = p.upstreams()[idx].clone();
    let host = route::canonical_host(&u, host).unwrap_or(host);
    let module = route::repo_module(host, path);
    if !crate::proto::rules::clean_path(&module) {
        return Err(ApiError::BadRequest("malformed URL path".into()));
    }
    authorize(&state, &a.request_id, &a.principal, Action::Credentials, &Resource::module(&module, &u.name))?;
    let cred = p
        .credential(&u, false)
        .await?
        .ok_or_else(|| ApiError::NotServed(format!("upstream {} has no credential", u.name)))?;
    use secrecy::ExposeSecret;
    let expires_at = crate::unix_now() + u.credential_ttl.as_secs().saturating_sub(cred.fetched.elapsed().as_secs());
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "upstream": u.name,
            "host": host,
            "username": cred.username.clone().unwrap_or_else(|| "x-access-token".into()),
            "password": cred.secret.expose_secret(),
            "expires_at": expires_at,
        })),
    )
        .into_response())
}

/// `/.well-known/gocred`: what clients need to configure themselves.
pub async fn well_known(State(state): State<AppState>) -> impl IntoResponse {
    axum::Json(crate::service::meta::metadata(&state))
}
