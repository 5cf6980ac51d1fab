//! The authenticating reverse proxy's forwarding half: per-upstream HTTP clients, the upstream
//! credential cache (read from the secrets backend, refreshed after `upstreams[].credential_ttl` and once when an
//! upstream answers 401; the last one read keeps working while the backend is down), header
//! hygiene (the caller's `Authorization` and proof never leave), streaming in both directions
//! with bounded connect/read times, and resilience: retries before the first byte, mirrors in
//! order, a circuit breaker per upstream ([`resilience`]).
//!
//! Must not: decide who may fetch what (the HTTP layer asks `policy` first), or buffer bodies.

pub mod resilience;
pub mod route;

use crate::config::Upstream;
use crate::secrets::SecretStore;
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// While the secrets backend fails, a cached credential is read again only this often.
pub const BACKEND_RETRY: Duration = Duration::from_secs(10);
/// A cached credential younger than this is not re-read even after an upstream 401.
pub const FORCED_REFRESH_MIN_AGE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    BadPath(String),
    #[error("no upstream serves {0}")]
    NoUpstream(String),
    #[error("upstream {upstream}: credential unavailable: {reason}")]
    Credential { upstream: String, reason: String },
    /// `url`/`reason` are for the broker's log; callers see the upstream's name only.
    #[error("upstream {upstream} unreachable")]
    Unreachable {
        upstream: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("upstream {upstream} did not answer within {secs}s")]
    Timeout { upstream: String, url: String, secs: u64 },
    #[error("upstream {upstream} rejected the broker's credential (HTTP {status})")]
    Rejected { upstream: String, status: u16 },
    #[error("upstream {upstream} answered with a redirect (HTTP {status}), which is not followed")]
    Redirected { upstream: String, status: u16 },
    #[error("upstream {upstream}: cannot read the CA file {}: {source}", path.display())]
    ReadCa {
        upstream: String,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream {upstream} answered HTTP {status}")]
    Unavailable { upstream: String, status: u16 },
    #[error("upstream {upstream} answered the .info of {asked} with version {named}")]
    WrongVersion { upstream: String, asked: String, named: String },
    #[error("upstream {upstream} is failing: its circuit breaker is open (retried after {secs}s)")]
    BreakerOpen { upstream: String, secs: u64 },
    #[error("upstream {upstream}: the answer broke off")]
    Body {
        upstream: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the HTTP client for upstream {upstream}: {source}")]
    Client {
        upstream: String,
        #[source]
        source: reqwest::Error,
    },
}

impl ProxyError {
    /// The upstream itself failed (its circuit breaker counts it): unreachable, timed out, cut
    /// off mid-answer, or a 5xx/429. A refusal, a bad path or a local problem is not.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            ProxyError::Unreachable { .. } | ProxyError::Timeout { .. } | ProxyError::Body { .. } => true,
            ProxyError::Unavailable { status, .. } => resilience::failing_status(*status),
            _ => false,
        }
    }
}

/// An upstream credential, as the `Authorization` header value it becomes.
#[derive(Clone)]
pub struct UpstreamCredential {
    header: SecretString,
    pub fetched: Instant,
    /// `username`/`password` for vend mode and Basic upstreams.
    pub username: Option<String>,
    pub secret: SecretString,
}

impl UpstreamCredential {
    /// The `Authorization` header value (for git, through a private config file only).
    pub fn header(&self) -> &SecretString {
        &self.header
    }
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCredential").field("username", &self.username).finish_non_exhaustive()
    }
}

/// `base` + `upstream_path`, refused unless the URL sent is exactly that (+ the fixed query): no
/// fragment, no other query, no path the URL parser would normalise differently.
fn exact_url(base: &str, upstream_path: &str) -> Result<String, ProxyError> {
    let url = format!("{base}{upstream_path}");
    let parsed = reqwest::Url::parse(&url).map_err(|_| ProxyError::BadPath("malformed upstream path".into()))?;
    let (want_path, want_query) = match upstream_path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (upstream_path, None),
    };
    let base_path = reqwest::Url::parse(base).map(|b| b.path().trim_end_matches('/').to_string()).unwrap_or_default();
    if parsed.fragment().is_some() || parsed.query() != want_query || parsed.path() != format!("{base_path}{want_path}")
    {
        return Err(ProxyError::BadPath("malformed upstream path".into()));
    }
    Ok(url)
}

/// The only request headers passed upstream (an allowlist: reverse-proxy identity headers such
/// as `X-Webauth-User`, `Sudo` or `X-Http-Method-Override` never reach an upstream that might
/// trust them).
const PASS_REQUEST: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "content-type",
    "content-encoding",
    "git-protocol",
    "user-agent",
    "if-none-match",
    "if-modified-since",
];
/// The only response headers passed back to the caller (an allowlist, as for requests:
/// `Set-Cookie`, `WWW-Authenticate`, `Proxy-Authenticate`, an upstream `Authorization`, hop-by-hop
/// headers and anything else an upstream sends stay with the broker). `Content-Length` is not
/// passed: bodies are streamed.
const PASS_RESPONSE: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "content-disposition",
    "content-range",
    "accept-ranges",
    "cache-control",
    "etag",
    "last-modified",
    "expires",
    "pragma",
    "vary",
];
/// The allowlisted headers of `h`, minus any that its `Connection` header names (hop-by-hop by
/// declaration, RFC 9110 §7.6.1).
pub fn pass_response_headers(h: &http::HeaderMap) -> http::HeaderMap {
    let hop: Vec<String> = h
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = http::HeaderMap::new();
    for (name, value) in h {
        if PASS_RESPONSE.contains(&name.as_str()) && !hop.iter().any(|t| t == name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

pub struct Proxy {
    upstreams: Vec<Upstream>,
    clients: Vec<reqwest::Client>,
    store: Arc<SecretStore>,
    creds: Mutex<HashMap<String, UpstreamCredential>>,
    /// go-import answers of git upstreams: module path → (repository root, upstream path).
    roots: Mutex<RootCache>,
    /// Per upstream, in config order.
    breakers: Vec<resilience::Breaker>,
    /// The loopback door git reaches upstreams through, once the server opened it.
    door: std::sync::OnceLock<GitDoor>,
    budget: resilience::RetryBudget,
    retries: Vec<std::sync::atomic::AtomicU64>,
    /// Answers given by this upstream as another's mirror.
    fallbacks: Vec<std::sync::atomic::AtomicU64>,
}

/// The broker's loopback door for git (`http::gitloop`): git connects to `base/<upstream
/// index>/…` with `Authorization: Bearer <key>`; the door forwards each request with the real
/// credential and retries — git itself never retries, and never sees the credential.
pub struct GitDoor {
    pub base: String,
    pub key: SecretString,
}

/// One fetch's retry state: its upstream, tries so far, and when it started.
pub struct Attempts {
    idx: usize,
    pub tried: u32,
    started: Instant,
}

/// A go-import answer: the repository root (module path prefix) and its path on the upstream.
pub type RepoRoot = (String, String);

/// go-import answers by (upstream index, module), with when they were fetched.
type RootCache = HashMap<(usize, String), (Instant, Option<RepoRoot>)>;

/// How long a git upstream's go-import answer is reused.
const ROOT_TTL: std::time::Duration = std::time::Duration::from_secs(60);

impl Proxy {
    pub fn new(upstreams: Vec<Upstream>, store: Arc<SecretStore>) -> Result<Proxy, ProxyError> {
        crate::install_crypto_provider();
        let mut clients = Vec::new();
        for u in &upstreams {
            let fail = |source: reqwest::Error| ProxyError::Client { upstream: u.name.clone(), source };
            let mut b = reqwest::Client::builder()
                .connect_timeout(u.timeout)
                .read_timeout(u.timeout)
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(60));
            if let Some(ca) = &u.ca_cert {
                let pem = std::fs::read(ca).map_err(|source| ProxyError::ReadCa {
                    upstream: u.name.clone(),
                    path: ca.clone(),
                    source,
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(fail)?;
                b = b.tls_certs_merge(certs);
            }
            if u.url.starts_with("http://") {
                b = b.tls_certs_only(Vec::new());
                let host = u.url.trim_start_matches("http://").split(['/', ':']).next().unwrap_or("");
                if !(host == "localhost" || host.starts_with("127.") || host == "[::1]") {
                    tracing::warn!(upstream = %u.name, "upstream URL is plain http: its credential travels unencrypted");
                }
            }
            clients.push(b.build().map_err(fail)?);
        }
        let n = upstreams.len();
        Ok(Proxy {
            upstreams,
            clients,
            store,
            creds: Mutex::new(HashMap::new()),
            roots: Mutex::new(HashMap::new()),
            breakers: (0..n).map(|_| Default::default()).collect(),
            door: std::sync::OnceLock::new(),
            budget: Default::default(),
            retries: (0..n).map(|_| Default::default()).collect(),
            fallbacks: (0..n).map(|_| Default::default()).collect(),
        })
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// The upstream's credential (cached), or `None` when it needs none.
    pub async fn credential(&self, u: &Upstream, force: bool) -> Result<Option<UpstreamCredential>, ProxyError> {
        let Some(path) = &u.credentials else { return Ok(None) };
        // A forced refresh (after an upstream 401) reads the backend at most every few seconds
        // per upstream, whatever callers provoke.
        let fresh_for = if force { FORCED_REFRESH_MIN_AGE } else { u.credential_ttl };
        if let Some(c) = self.creds.lock().expect("credential cache poisoned").get(&u.name)
            && c.fetched.elapsed() < fresh_for
        {
            return Ok(Some(c.clone()));
        }
        let fail = |reason: String| ProxyError::Credential { upstream: u.name.clone(), reason };
        let rec = match self.store.get(path).await {
            Ok(r) => r.ok_or_else(|| fail(format!("no record at `{path}`")))?,
            Err(e) => {
                // The backend is down: the credential read last keeps working (readiness reports
                // the backend; the upstream decides whether the credential is still good), and
                // the backend is asked again only after BACKEND_RETRY — not on every request,
                // each of which would wait for its timeout.
                let mut cache = self.creds.lock().expect("credential cache poisoned");
                if let Some(c) = cache.get_mut(&u.name) {
                    tracing::warn!(upstream = %u.name, error = %e, "secrets backend failed; using the cached upstream credential");
                    let hold = u.credential_ttl.saturating_sub(BACKEND_RETRY);
                    c.fetched = Instant::now().checked_sub(hold).unwrap_or(c.fetched);
                    return Ok(Some(c.clone()));
                }
                return Err(fail(e.to_string()));
            }
        };
        use base64::Engine;
        let cred = if let Some(tok) = rec.data.get("token") {
            UpstreamCredential {
                header: SecretString::from(format!("Bearer {}", tok.expose_secret())),
                fetched: Instant::now(),
                username: None,
                secret: tok.clone(),
            }
        } else {
            let user = rec
                .data
                .get("username")
                .ok_or_else(|| fail(format!("record `{path}` has neither `token` nor `username`")))?;
            let pass = rec.data.get("password").ok_or_else(|| fail(format!("record `{path}` has no `password`")))?;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                user.expose_secret(),
                pass.expose_secret()
            ));
            UpstreamCredential {
                header: SecretString::from(format!("Basic {basic}")),
                fetched: Instant::now(),
                username: Some(user.expose_secret().to_string()),
                secret: pass.clone(),
            }
        };
        self.creds.lock().expect("credential cache poisoned").insert(u.name.clone(), cred.clone());
        Ok(Some(cred))
    }

    /// The repository holding `module` on git upstream `idx`, as the go command finds it:
    /// the upstream's own `?go-get=1` answer (fetched with the upstream credential), its
    /// go-import prefix and repository path. `None` when the upstream has no such answer.
    pub async fn discover_repo(&self, idx: usize, module: &str) -> Option<RepoRoot> {
        let key = (idx, module.to_string());
        if let Some((at, found)) = self.roots.lock().expect("root cache poisoned").get(&key)
            && at.elapsed() < ROOT_TTL
        {
            return found.clone();
        }
        let u = &self.upstreams[idx];
        let path = module.split_once('/').map(|(_, p)| p)?;
        let resp =
            self.forward(idx, http::Method::GET, &format!("/{path}?go-get=1"), &http::HeaderMap::new(), None).await;
        // Only a real answer is remembered: a success (with or without a go-import tag) or a
        // not-found; a transport error or a 5xx is asked again next time.
        let found = match resp {
            Ok(r) if r.status().is_success() => {
                let text = r.text().await.ok()?;
                route::parse_go_import(&text, module)
                    .and_then(|gi| Some((gi.prefix, route::upstream_relative_path(&u.url, &gi.repo_url)?)))
            }
            Ok(r) if r.status().is_client_error() => None,
            _ => return None,
        };
        let mut roots = self.roots.lock().expect("root cache poisoned");
        if roots.len() > 4096 {
            roots.clear();
        }
        roots.insert(key, (Instant::now(), found.clone()));
        found
    }

    /// Open the git door (once; later calls are ignored).
    pub fn set_door(&self, door: GitDoor) {
        let _ = self.door.set(door);
    }

    pub fn door(&self) -> Option<&GitDoor> {
        self.door.get()
    }

    /// Does `presented` (an `Authorization` value) open the git door? Constant time.
    pub fn door_opens(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        let Some(d) = self.door.get() else { return false };
        let want = format!("Bearer {}", d.key.expose_secret());
        want.len() == presented.len() && bool::from(want.as_bytes().ct_eq(presented))
    }

    /// A request whose body is small and safe to send again (git's `upload-pack` negotiation,
    /// a read), retried like a bodiless GET.
    pub async fn forward_replayable(
        &self,
        idx: usize,
        method: http::Method,
        upstream_path: &str,
        headers: &http::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<reqwest::Response, ProxyError> {
        let mut a = self.attempts(idx);
        loop {
            let r =
                self.forward_once(idx, method.clone(), upstream_path, headers, Some(body.clone().into()), true).await;
            let Some(wait) = self.should_retry(&mut a, &r) else { return r };
            drop(r);
            tokio::time::sleep(wait).await;
        }
    }

    /// After try `r`: wait this long and try again, or `None`.
    fn should_retry(&self, a: &mut Attempts, r: &Result<reqwest::Response, ProxyError>) -> Option<Duration> {
        let retry_after = match r {
            Ok(resp) if resilience::retryable_status(resp.status().as_u16()) => {
                resp.headers().get(http::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string)
            }
            Err(ProxyError::Unreachable { .. } | ProxyError::Timeout { .. }) => None,
            _ => return None,
        };
        let wait = self.retry_after(a, retry_after.as_deref())?;
        tracing::debug!(upstream = %self.upstreams[a.idx].name, try_ = a.tried, wait_ms = wait.as_millis() as u64, "retrying");
        Some(wait)
    }

    /// Upstream `idx`'s circuit breaker.
    pub fn breaker(&self, idx: usize) -> &resilience::Breaker {
        &self.breakers[idx]
    }

    /// Start counting the tries of one fetch from upstream `idx` (it earns the retry budget).
    pub fn attempts(&self, idx: usize) -> Attempts {
        self.budget.deposit();
        Attempts { idx, tried: 0, started: Instant::now() }
    }

    /// After a try that failed transiently: the wait before the next one, or `None` when no
    /// retry is left (the upstream's `retries`, its `deadline`, the global budget).
    pub fn retry_after(&self, a: &mut Attempts, retry_after: Option<&str>) -> Option<Duration> {
        let u = &self.upstreams[a.idx];
        if a.tried >= u.retries {
            return None;
        }
        let wait = resilience::backoff(a.tried, retry_after);
        if a.started.elapsed() + wait >= u.deadline || !self.budget.withdraw() {
            return None;
        }
        a.tried += 1;
        self.retries[a.idx].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(wait)
    }

    /// The upstreams to try for a fetch routed to `idx`, in order: it, then its mirrors; those
    /// whose breaker is open are left out.
    pub fn candidates(&self, idx: usize) -> (Vec<usize>, Option<ProxyError>) {
        let mut out = Vec::new();
        let mut skipped = None;
        for i in std::iter::once(idx).chain(self.upstreams[idx].mirrors.iter().copied()) {
            if self.breakers[i].allow() {
                out.push(i);
            } else {
                tracing::debug!(upstream = %self.upstreams[i].name, "circuit breaker open: skipped");
                skipped.get_or_insert(ProxyError::BreakerOpen {
                    upstream: self.upstreams[i].name.clone(),
                    secs: resilience::OPEN_FOR.as_secs(),
                });
            }
        }
        (out, skipped)
    }

    /// A mirror answered for its primary.
    pub fn answered_as_mirror(&self, idx: usize) {
        self.fallbacks[idx].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Each upstream's breaker state (for `/readyz` and `gocred doctor`).
    pub fn breaker_states(&self) -> Vec<(String, resilience::BreakerState)> {
        self.upstreams.iter().zip(&self.breakers).map(|(u, b)| (u.name.clone(), b.state())).collect()
    }

    /// Prometheus lines for retries, fallbacks and breakers.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        use std::sync::atomic::Ordering::Relaxed;
        let mut out = String::new();
        let per = |out: &mut String, name: &str, kind: &str, help: &str, v: &dyn Fn(usize) -> u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (i, u) in self.upstreams.iter().enumerate() {
                let _ = writeln!(out, "{name}{{upstream=\"{}\"}} {}", u.name, v(i));
            }
        };
        per(
            &mut out,
            "gocred_upstream_retries_total",
            "counter",
            "Retries of idempotent fetches before their first byte.",
            &|i| self.retries[i].load(Relaxed),
        );
        per(
            &mut out,
            "gocred_upstream_fallback_answers_total",
            "counter",
            "Fetches answered by this upstream as a mirror.",
            &|i| self.fallbacks[i].load(Relaxed),
        );
        per(
            &mut out,
            "gocred_upstream_breaker_opened_total",
            "counter",
            "Times the upstream's circuit breaker opened.",
            &|i| self.breakers[i].opened_total.load(Relaxed),
        );
        per(&mut out, "gocred_upstream_breaker_state", "gauge", "0 closed, 1 open, 2 half-open.", &|i| match self
            .breakers[i]
            .state()
        {
            resilience::BreakerState::Closed => 0,
            resilience::BreakerState::Open => 1,
            resilience::BreakerState::HalfOpen => 2,
        });
        let _ = writeln!(
            out,
            "# HELP gocred_retry_budget_exhausted_total Retries refused by the global retry budget.\n# TYPE gocred_retry_budget_exhausted_total counter\ngocred_retry_budget_exhausted_total {}",
            self.budget.exhausted_total.load(Relaxed)
        );
        out
    }

    /// A bodiless GET/HEAD to upstream `idx`, then its mirrors (skipping open breakers), each
    /// retried before its first byte: the first answer that is not a failure or a not-found
    /// wins; else the last one. Outcomes feed the breakers.
    pub async fn forward_chain(
        &self,
        idx: usize,
        upstream_path: &str,
        headers: &http::HeaderMap,
    ) -> Result<(usize, reqwest::Response), ProxyError> {
        let (candidates, skipped) = self.candidates(idx);
        let mut last: Option<Result<(usize, reqwest::Response), ProxyError>> = None;
        for i in candidates {
            match self.forward(i, http::Method::GET, upstream_path, headers, None).await {
                Ok(r) if r.status().is_success() || r.status() == reqwest::StatusCode::NOT_MODIFIED => {
                    self.breakers[i].success();
                    if i != idx {
                        self.answered_as_mirror(i);
                    }
                    return Ok((i, r));
                }
                Ok(r) => {
                    // A 4xx is the upstream answering (a caller cannot open its breaker for
                    // everyone by asking for what it refuses).
                    if resilience::failing_status(r.status().as_u16()) {
                        self.breakers[i].failure();
                    } else {
                        self.breakers[i].success();
                    }
                    tracing::info!(upstream = %self.upstreams[i].name, status = r.status().as_u16(), "upstream did not answer; trying the next");
                    last = Some(Ok((i, r)));
                }
                Err(e) => {
                    if e.is_upstream_failure() {
                        self.breakers[i].failure();
                    }
                    tracing::info!(upstream = %self.upstreams[i].name, error = %crate::error_chain(&e), "upstream failed; trying the next");
                    last = Some(Err(e));
                }
            }
        }
        match (last, skipped) {
            (Some(r), _) => r,
            (None, Some(e)) => Err(e),
            (None, None) => Err(ProxyError::NoUpstream(upstream_path.to_string())),
        }
    }

    /// Forward a request to upstream `idx`. `body` is streamed; a bodiless GET/HEAD is retried
    /// before its first byte on connect errors, timeouts and 429/502/503/504 (see
    /// [`Proxy::retry_after`]); a bodiless request whose credential the upstream rejects is
    /// retried once with a freshly read credential.
    pub async fn forward(
        &self,
        idx: usize,
        method: http::Method,
        upstream_path: &str,
        headers: &http::HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, ProxyError> {
        if body.is_some() || !matches!(method, http::Method::GET | http::Method::HEAD) {
            return self.forward_once(idx, method, upstream_path, headers, body, false).await;
        }
        let mut a = self.attempts(idx);
        loop {
            let r = self.forward_once(idx, method.clone(), upstream_path, headers, None, true).await;
            let Some(wait) = self.should_retry(&mut a, &r) else { return r };
            drop(r);
            tokio::time::sleep(wait).await;
        }
    }

    async fn forward_once(
        &self,
        idx: usize,
        method: http::Method,
        upstream_path: &str,
        headers: &http::HeaderMap,
        body: Option<reqwest::Body>,
        small: bool,
    ) -> Result<reqwest::Response, ProxyError> {
        let u = &self.upstreams[idx];
        if !matches!(method, http::Method::GET | http::Method::HEAD | http::Method::POST) {
            return Err(ProxyError::BadPath(format!("method {method} is not forwarded")));
        }
        let url = exact_url(&u.url, upstream_path)?;
        let mut h = http::HeaderMap::new();
        for (name, value) in headers {
            if PASS_REQUEST.contains(&name.as_str()) {
                h.append(name.clone(), value.clone());
            }
        }
        let retryable = body.is_none();
        let mut body = body;
        let mut force = false;
        for attempt in 0..2 {
            let cred = self.credential(u, force).await?;
            let mut req = self.clients[idx].request(method.clone(), &url).headers(h.clone());
            if let Some(c) = &cred {
                let mut v =
                    http::HeaderValue::from_str(c.header.expose_secret()).map_err(|_| ProxyError::Credential {
                        upstream: u.name.clone(),
                        reason: "credential is not a valid header value".into(),
                    })?;
                v.set_sensitive(true);
                req = req.header(http::header::AUTHORIZATION, v);
            }
            if let Some(b) = body.take() {
                req = req.body(b);
            }
            // A bodiless (or small) request's time to the answer's headers is bounded too (a
            // stall is retried); a streamed upload may take longer to send.
            let timeout =
                || ProxyError::Timeout { upstream: u.name.clone(), url: url.clone(), secs: u.timeout.as_secs() };
            let sent = match small {
                true => tokio::time::timeout(u.timeout, req.send()).await.map_err(|_| timeout())?,
                false => req.send().await,
            };
            let resp = sent.map_err(|e| {
                if e.is_timeout() {
                    timeout()
                } else {
                    ProxyError::Unreachable { upstream: u.name.clone(), url: url.clone(), source: e }
                }
            })?;
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                // Not followed, and not passed on: a Location would reveal (and send git to) the
                // upstream's internal address.
                return Err(ProxyError::Redirected { upstream: u.name.clone(), status });
            }
            if status == 401 && cred.is_some() {
                if attempt == 0 && retryable {
                    force = true;
                    continue;
                }
                // Refresh for the next request even when this one cannot be replayed.
                let _ = self.credential(u, true).await;
                return Err(ProxyError::Rejected { upstream: u.name.clone(), status });
            }
            return Ok(resp);
        }
        Err(ProxyError::Rejected { upstream: u.name.clone(), status: 401 })
    }

    /// Headers of an upstream response that may be passed back.
    pub fn response_headers(resp: &reqwest::Response) -> http::HeaderMap {
        pass_response_headers(resp.headers())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A module proxy on a raw socket answering every request with `status`; counts requests.
    async fn canned(status: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = n.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf).await;
                let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno");
                let _ = c.write_all(resp.as_bytes()).await;
            }
        });
        (url, n)
    }

    async fn proxy_to(url: &str, dir: &std::path::Path) -> Proxy {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"{}\"\n\
             [[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nmodules = [\"corp.test\"]\nurl = \"{url}\"\nretries = 0\n",
            dir.join("s.enc").display()
        );
        let config = crate::config::Config::from_toml(
            &text,
            Some(&dir.join("broker.toml")),
            std::iter::empty(),
            &crate::config::Overrides::default(),
        )
        .unwrap();
        let mut secrets = config.secrets.clone();
        if let crate::config::BackendConfig::File(f) = &mut secrets.backend {
            f.key_file = Some(dir.join("file.key"));
            f.create_key = true;
        }
        let store = Arc::new(SecretStore::open(&secrets).await.unwrap());
        Proxy::new(config.upstreams.clone(), store).unwrap()
    }

    /// Refusals are answers: any number of 403s leaves the breaker closed (a caller cannot open
    /// it for everyone); 503s open it after [`resilience::OPEN_AFTER`], and then the upstream
    /// sees no request at all.
    #[tokio::test(flavor = "multi_thread")]
    async fn only_upstream_failures_open_a_breaker() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _) = canned("403 Forbidden").await;
        let p = proxy_to(&url, dir.path()).await;
        for _ in 0..2 * resilience::OPEN_AFTER {
            let _ = p.forward_chain(0, "/corp.test/x/@v/v1.0.0.info", &http::HeaderMap::new()).await;
        }
        assert_eq!(p.breaker(0).state(), resilience::BreakerState::Closed);

        let (url, hits) = canned("503 Service Unavailable").await;
        let p = proxy_to(&url, dir.path()).await;
        for _ in 0..resilience::OPEN_AFTER {
            let _ = p.forward_chain(0, "/corp.test/x/@v/v1.0.0.info", &http::HeaderMap::new()).await;
        }
        assert_eq!(p.breaker(0).state(), resilience::BreakerState::Open);
        let before = hits.load(std::sync::atomic::Ordering::SeqCst);
        let r = p.forward_chain(0, "/corp.test/x/@v/v1.0.0.info", &http::HeaderMap::new()).await;
        assert!(matches!(r, Err(ProxyError::BreakerOpen { .. })), "{:?}", r.map(|(i, r)| (i, r.status())));
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), before, "an open breaker sent a request");
    }

    #[test]
    fn only_allowlisted_response_headers_pass_and_connection_named_ones_never() {
        let mut h = http::HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/x-git-upload-pack-advertisement"),
            ("cache-control", "no-cache"),
            ("etag", "\"abc\""),
            ("connection", "keep-alive, X-Upstream-Session, etag"),
            ("x-upstream-session", "s3cr3t"),
            ("proxy-authenticate", "Basic realm=\"corp\""),
            ("www-authenticate", "Basic realm=\"corp\""),
            ("authorization", "Basic dXA6cGFzcw=="),
            ("set-cookie", "session=abc"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("x-gitlab-meta", "internal"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let out = pass_response_headers(&h);
        let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "cache-control"], "etag is named by Connection: hop-by-hop");
    }
}
