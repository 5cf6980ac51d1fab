//! One GOPROXY answer for a module whose upstream is a git server, from the first of its
//! candidates that has it: the routed upstream, then its mirrors in order (another git server
//! built by [`crate::modfetch`], or a module proxy fetched as is), skipping those whose circuit
//! breaker is open, retrying transient failures before the first byte within the upstream's
//! retries, deadline and the global budget. Outcomes feed the breakers.
//!
//! Must not: decide who may fetch (the caller was authorized for the module first), or serve
//! anything itself: the answer goes back to the HTTP layer (and the store) as a
//! [`crate::modfetch::Answer`].

use crate::config::UpstreamKind;
use crate::fsutil::TempPath;
use crate::modfetch::{Answer, ModFetch, ModFetchError, Request, Source};
use crate::proxy::{Proxy, ProxyError};
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Build(#[from] ModFetchError),
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

impl FetchError {
    fn not_found(&self) -> bool {
        matches!(self, FetchError::Build(ModFetchError::NotFound(_)))
    }
}

/// An answer and which upstream gave it (its index); a module proxy's zip lives in `_file`
/// until the answer is served.
pub struct Fetched {
    pub upstream: usize,
    pub answer: Answer,
    pub _file: Option<TempPath>,
}

/// What a fetch needs besides the request: the module, the repository found for it (on the
/// routed upstream), the GOPROXY path (for module-proxy mirrors).
pub struct Wanted<'a> {
    pub module: &'a str,
    pub repo: Option<(String, String)>,
    pub goproxy_path: &'a str,
    pub req: Request,
}

/// The first answer among `primary` and its mirrors. Not-found everywhere is a not-found; a
/// failure anywhere (when nothing answered) is the first failure.
pub async fn fetch(p: &Proxy, mf: &ModFetch, primary: usize, w: &Wanted<'_>) -> Result<Fetched, FetchError> {
    let (candidates, skipped) = p.candidates(primary);
    let mut first_failure: Option<FetchError> = None;
    let mut not_found: Option<FetchError> = None;
    for i in candidates {
        let u = &p.upstreams()[i];
        let r = match u.kind {
            UpstreamKind::Git => build(p, mf, i, w).await.map(|a| (a, None)),
            UpstreamKind::Goproxy => from_proxy(p, mf, i, w).await,
        };
        match r {
            Ok((answer, file)) => {
                p.breaker(i).success();
                if i != primary {
                    p.answered_as_mirror(i);
                    tracing::info!(upstream = %u.name, module = w.module, "answered by a mirror");
                }
                return Ok(Fetched { upstream: i, answer, _file: file });
            }
            Err(e) if e.not_found() => {
                p.breaker(i).success();
                not_found.get_or_insert(e);
            }
            Err(e) => {
                if transient(&e) {
                    p.breaker(i).failure();
                }
                tracing::info!(upstream = %u.name, error = %crate::error_chain(&e), "upstream failed; trying the next");
                first_failure.get_or_insert(e);
            }
        }
    }
    Err(first_failure
        .or(not_found)
        .or(skipped.map(FetchError::Proxy))
        .unwrap_or_else(|| FetchError::Proxy(ProxyError::NoUpstream(w.module.to_string()))))
}

fn transient(e: &FetchError) -> bool {
    match e {
        FetchError::Build(b) => b.is_transient(),
        FetchError::Proxy(p) => p.is_upstream_failure(),
    }
}

/// Build from git upstream `i`, retrying transient git failures.
async fn build(p: &Proxy, mf: &ModFetch, i: usize, w: &Wanted<'_>) -> Result<Answer, FetchError> {
    let u = &p.upstreams()[i];
    // Through the broker's door when it is open (each git request retried, the credential kept
    // in the broker); else git goes to the upstream itself with the credential in its config.
    let door = p.door().map(|d| (format!("{}/{i}", d.base), d.key.clone()));
    let cred = match door {
        Some(_) => None,
        None => p.credential(u, false).await?,
    };
    let door_key = door.as_ref().map(|(_, k)| SecretString::from(format!("Bearer {}", k.expose_secret())));
    let src = Source {
        upstream: &u.name,
        base_url: &u.url,
        via: door.as_ref().map(|(b, _)| b.as_str()),
        header: door_key.as_ref().or(cred.as_ref().map(|c| c.header())),
        // Behind the door a stalled request is cut and retried there, within the deadline.
        timeout: if door.is_some() { u.deadline.max(u.timeout) } else { u.timeout },
        repo: w.repo.clone(),
    };
    let mut tries = p.attempts(i);
    loop {
        match mf.serve(&src, w.module, w.req.clone()).await {
            Err(e) if e.is_transient() => match p.retry_after(&mut tries, None) {
                Some(wait) => {
                    tracing::debug!(upstream = %u.name, error = %crate::error_chain(&e), "retrying git");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(e.into()),
            },
            r => return r.map_err(FetchError::from),
        }
    }
}

/// The same request from module-proxy mirror `i` (retried by [`Proxy::forward`]); a `.info`
/// for a canonical version must name exactly it.
async fn from_proxy(
    p: &Proxy,
    mf: &ModFetch,
    i: usize,
    w: &Wanted<'_>,
) -> Result<(Answer, Option<TempPath>), FetchError> {
    let name = p.upstreams()[i].name.clone();
    let resp = p.forward(i, http::Method::GET, w.goproxy_path, &http::HeaderMap::new(), None).await?;
    let status = resp.status().as_u16();
    let body_err = |e: reqwest::Error| ProxyError::Body { upstream: name.clone(), source: std::io::Error::other(e) };
    if matches!(status, 404 | 410) {
        let line: String = resp.text().await.unwrap_or_default().chars().take(1000).collect();
        return Err(ModFetchError::NotFound(line).into());
    }
    if status != 200 {
        return Err(ProxyError::Unavailable { upstream: name, status }.into());
    }
    match &w.req {
        Request::Zip(_) => {
            let tmp = mf.temp_path("mirror");
            write_body(resp, &tmp).await.map_err(|source| ProxyError::Body { upstream: name, source })?;
            Ok((Answer::File(tmp.to_path_buf()), Some(tmp)))
        }
        Request::List => Ok((Answer::Text(resp.text().await.map_err(body_err)?), None)),
        Request::Mod(_) => Ok((Answer::Bytes(resp.bytes().await.map_err(body_err)?.to_vec()), None)),
        Request::Latest => Ok((Answer::Json(resp.text().await.map_err(body_err)?), None)),
        Request::Info(v) => {
            let body = resp.text().await.map_err(body_err)?;
            let named = crate::modfetch::info_version(body.as_bytes()).unwrap_or_default();
            if crate::modfetch::semver::canonical_version(v) == *v && named != *v {
                return Err(ProxyError::WrongVersion { upstream: name, asked: v.clone(), named }.into());
            }
            Ok((Answer::Json(body), None))
        }
    }
}

/// A response body streamed into a new 0600 file.
async fn write_body(resp: reqwest::Response, path: &std::path::Path) -> std::io::Result<()> {
    use futures_util::StreamExt;
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncWriteExt;
    let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    let mut f = tokio::fs::File::from_std(f);
    let mut s = resp.bytes_stream();
    while let Some(chunk) = s.next().await {
        f.write_all(&chunk.map_err(std::io::Error::other)?).await?;
    }
    f.flush().await
}
