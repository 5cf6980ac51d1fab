//! `[[upstreams]]`: the private git servers and module proxies gocred stands in front of, their
//! validated types and validator.

use super::ConfigError;
use super::Ctx;
use super::raw::RawUpstream;
use super::rules::{UrlFault, UrlRule, UrlShape};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// A git smart-HTTP server (`/git/<host>/...` and host-routed `go-get`).
    Git,
    /// A Go module proxy (GOPROXY protocol, `/mod/...`).
    Goproxy,
}

/// How callers get at an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// The broker forwards requests with the upstream credential.
    Proxy,
    /// Callers fetch the credential itself (`GET /v1/credentials`), for hosts that cannot be proxied.
    Vend,
}

/// A private git server or module proxy in front of which gocred stands.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    /// Host names it serves (git: module hosts; host-routed requests match these).
    pub hosts: Vec<String>,
    /// Module path prefixes it serves (GOPRIVATE-style; default: the hosts).
    pub modules: Vec<String>,
    /// Base URL, without a trailing slash.
    pub url: String,
    /// Secrets-backend path of the upstream credential (fields `username`+`password`, or `token`).
    pub credentials: Option<String>,
    pub mode: UpstreamMode,
    pub ca_cert: Option<PathBuf>,
    /// Connect + per-read timeout.
    pub timeout: Duration,
    /// The SSH server behind this git upstream, for `gocred ssh-proxy` tunnels.
    pub ssh: Option<SshTarget>,
    /// A public module proxy (e.g. proxy.golang.org) and checksum database: serves every module
    /// that no private upstream's `modules` claim (compared case-insensitively), never one that
    /// one does.
    pub public: bool,
    /// Upstreams (indices into the config's list) tried in order after this one fails or does
    /// not have the module.
    pub mirrors: Vec<usize>,
    /// The primary whose mirror this is: never chosen by routing itself.
    pub mirror_of: Option<String>,
    /// Retries of an idempotent fetch before its first byte reaches the caller.
    pub retries: u32,
    /// How long a fetch may take before its first byte, retries (and mirrors) included.
    pub deadline: Duration,
    /// How long the upstream credential read from the secrets backend is used before it is
    /// read again (while the backend is down, the last one read keeps being used).
    pub credential_ttl: Duration,
}

/// Where tunnels to an SSH-served upstream go, and how clients name repositories there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The SSH server's address as the broker reaches it.
    pub host: String,
    pub port: u16,
    /// The SSH user clients log in as (`ssh_user`, default `git`).
    pub user: String,
    /// The path repositories are under on the server (`ssh_path`, default `/`), ending in `/`.
    pub path: String,
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host.contains(':') {
            true => write!(f, "[{}]:{}", self.host, self.port),
            false => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// `ssh`, `ssh_user`, `ssh_path` of a git upstream.
fn validate_ssh(cx: &Ctx, key: &dyn Fn(&str) -> String, u: &RawUpstream) -> Result<Option<SshTarget>, ConfigError> {
    let Some(addr) = &u.ssh else {
        if u.ssh_user.is_some() || u.ssh_path.is_some() {
            return Err(cx.err(&key("ssh"), "required key is missing (ssh_user/ssh_path are set)".into()));
        }
        return Ok(None);
    };
    if u.kind != UpstreamKind::Git {
        return Err(cx.err(&key("ssh"), "only a kind = \"git\" upstream can have an SSH server".into()));
    }
    let bad = || cx.err(&key("ssh"), format!("`{addr}` must be host:port (e.g. \"git.corp.example:22\")"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
    if host.is_empty() || !host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c)) {
        return Err(bad());
    }
    let user = u.ssh_user.clone().unwrap_or_else(|| "git".into());
    if user.is_empty() || user.starts_with('-') || !user.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(cx.err(&key("ssh_user"), format!("`{user}` must be letters, digits, . _ or -")));
    }
    let path = u.ssh_path.clone().unwrap_or_else(|| "/".into());
    let path_ok = path.starts_with('/')
        && path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-~".contains(c))
        && !path.split('/').any(|s| s == "..");
    if !path_ok {
        return Err(
            cx.err(&key("ssh_path"), format!("`{path}` must be an absolute path of letters, digits, / . _ - ~"))
        );
    }
    let path = if path.ends_with('/') { path } else { format!("{path}/") };
    Ok(Some(SshTarget { host: host.to_string(), port, user, path }))
}

impl Upstream {
    /// Chosen by routing for the private modules it serves: not public, not someone's mirror.
    pub fn routable(&self) -> bool {
        !self.public && self.mirror_of.is_none()
    }

    /// Does this upstream serve `module` (a path prefix match on element boundaries)?
    pub fn serves(&self, module: &str) -> bool {
        self.modules.iter().any(|p| module == p || module.starts_with(&format!("{p}/")))
    }

    /// Does this upstream's `modules` claim `module` in any spelling (ASCII case folded)? A
    /// claimed path is private: it never goes to a public upstream.
    pub fn claims(&self, module: &str) -> bool {
        self.modules.iter().any(|p| {
            module.len() >= p.len()
                && module.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
                && (module.len() == p.len() || module.as_bytes()[p.len()] == b'/')
        })
    }
}

/// `[[upstreams]]` → the upstreams (names unique, mirrors resolved).
pub(super) fn validate_upstreams(cx: &Ctx, raw: Vec<RawUpstream>) -> Result<Vec<Upstream>, ConfigError> {
    let mirror_names: Vec<Vec<String>> = raw.iter().map(|u| u.mirrors.clone()).collect();
    let is_mirror: Vec<bool> = raw.iter().map(|u| mirror_names.iter().flatten().any(|m| *m == u.name)).collect();
    let mut upstreams: Vec<Upstream> = Vec::new();
    for (i, u) in raw.into_iter().enumerate() {
        let upstream = validate_upstream(cx, &|k| format!("upstreams[{i}].{k}"), u, &upstreams, is_mirror[i])?;
        upstreams.push(upstream);
    }
    for (i, names) in mirror_names.iter().enumerate() {
        let key = format!("upstreams[{i}].mirrors");
        for name in names {
            let j = check_mirror(&upstreams, i, name).map_err(|why| cx.err(&key, why))?;
            upstreams[i].mirrors.push(j);
            upstreams[j].mirror_of = Some(upstreams[i].name.clone());
            if upstreams[j].modules.is_empty() {
                upstreams[j].modules = upstreams[i].modules.clone();
            }
        }
    }
    Ok(upstreams)
}

/// Upstream `i` may fall back to the upstream called `name`: its index, or why not.
fn check_mirror(ups: &[Upstream], i: usize, name: &str) -> Result<usize, String> {
    let (p, j) = match ups.iter().position(|u| u.name == name) {
        Some(j) if j != i => (&ups[i], j),
        Some(_) => return Err(format!("`{name}` cannot be its own mirror")),
        None => return Err(format!("`{name}` is not the name of an upstream")),
    };
    let m = &ups[j];
    if let Some(other) = &m.mirror_of {
        return Err(format!("`{name}` is already the mirror of `{other}`"));
    }
    if !m.mirrors.is_empty() || p.mirror_of.is_some() || ups.iter().any(|u| u.mirrors.contains(&i)) {
        return Err("mirrors cannot be chained: a mirror has no mirrors of its own".into());
    }
    if m.public || m.mode != UpstreamMode::Proxy || p.mode != UpstreamMode::Proxy {
        return Err(format!(
            "`{name}`: a mirror is a mode = \"proxy\" upstream that is not public, of one in proxy mode"
        ));
    }
    if p.kind == UpstreamKind::Goproxy && m.kind != UpstreamKind::Goproxy {
        return Err(format!("`{name}`: a module proxy's mirrors must be module proxies (kind = \"goproxy\")"));
    }
    if p.public && m.credentials.is_some() {
        return Err(format!("`{name}`: the public upstream's mirror cannot have credentials"));
    }
    Ok(j)
}

/// One upstream, `key` naming its keys, checked against those before it (`out`).
fn validate_upstream(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    u: RawUpstream,
    out: &[Upstream],
    is_mirror: bool,
) -> Result<Upstream, ConfigError> {
    if u.name.is_empty() || !u.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(cx.err(&key("name"), format!("`{}` must be letters, digits, - or _", u.name)));
    }
    if out.iter().any(|o| o.name == u.name) {
        return Err(cx.err(&key("name"), format!("`{}` is used by two upstreams", u.name)));
    }
    // No credentials, query or fragment in the URL: credentials live in the secrets backend,
    // and the URL may appear in the broker's log.
    let url = cx.check_url(&key("url"), &u.url, (UrlRule::Any, UrlShape::Base), |f| match f {
        UrlFault::Scheme | UrlFault::Whitespace => format!("`{}` must be an http(s) URL", u.url),
        UrlFault::Shape => "must be scheme://host[:port][/path] without user info, query or fragment".into(),
    })?;
    for h in &u.hosts {
        if h.is_empty() || h.contains(['/', ' ', ':']) {
            return Err(cx.err(&key("hosts"), format!("`{h}` must be a bare host name")));
        }
    }
    if u.kind == UpstreamKind::Git && u.hosts.is_empty() {
        return Err(cx.err(&key("hosts"), "required key is missing (kind = \"git\")".into()));
    }
    let ssh = validate_ssh(cx, key, &u)?;
    let modules = if u.modules.is_empty() { u.hosts.clone() } else { u.modules };
    let public = u.public.unwrap_or(false);
    if public && (u.kind != UpstreamKind::Goproxy || u.credentials.is_some() || out.iter().any(|o| o.public)) {
        return Err(cx.err(
            &key("public"),
            "only one upstream may be public, a kind = \"goproxy\" one without credentials".into(),
        ));
    }
    if modules.is_empty() && !public && !is_mirror {
        return Err(cx.err(&key("modules"), "required key is missing (kind = \"goproxy\")".into()));
    }
    for m in &modules {
        if m.is_empty() || m.ends_with('/') || m.contains(['*', ' ', ',']) {
            return Err(
                cx.err(&key("modules"), format!("`{m}` must be a module path prefix like \"git.corp.example/acme\""))
            );
        }
    }
    let (credentials, mode) = validate_credentials(cx, key, u.credentials, u.mode)?;
    Ok(Upstream {
        name: u.name,
        kind: u.kind,
        hosts: u.hosts,
        modules,
        url,
        credentials,
        mode,
        ca_cert: u.ca_cert.map(|p| cx.rel(p)),
        timeout: bounded(cx, &key("timeout"), u.timeout.as_deref(), Duration::from_secs(30), HOUR)?,
        ssh,
        public,
        mirrors: Vec::new(),
        mirror_of: None,
        retries: match u.retries {
            Some(n) if n > 10 => return Err(cx.err(&key("retries"), format!("{n} is more than 10"))),
            n => n.unwrap_or(2),
        },
        deadline: bounded(cx, &key("deadline"), u.deadline.as_deref(), Duration::from_secs(60), HOUR)?,
        credential_ttl: bounded(
            cx,
            &key("credential_ttl"),
            u.credential_ttl.as_deref(),
            Duration::from_secs(300),
            24 * HOUR,
        )?,
    })
}

/// `credentials = "vault:PATH"` → PATH; vend mode needs one.
fn validate_credentials(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    credentials: Option<String>,
    mode: Option<UpstreamMode>,
) -> Result<(Option<String>, UpstreamMode), ConfigError> {
    let credentials = match credentials {
        None => None,
        Some(c) => match c.strip_prefix("vault:").map(|p| p.trim_matches('/')) {
            Some(p) if !p.is_empty() => Some(p.to_string()),
            _ => return Err(cx.err(&key("credentials"), format!("`{c}` must look like \"vault:PATH\""))),
        },
    };
    let mode = mode.unwrap_or(UpstreamMode::Proxy);
    if mode == UpstreamMode::Vend && credentials.is_none() {
        return Err(cx.err(&key("credentials"), "required key is missing (mode = \"vend\")".into()));
    }
    Ok((credentials, mode))
}

const HOUR: Duration = Duration::from_secs(3600);

/// A duration between 1 s and `max`.
fn bounded(cx: &Ctx, key: &str, v: Option<&str>, default: Duration, max: Duration) -> Result<Duration, ConfigError> {
    let d = cx.duration(key, v, default)?;
    if d < Duration::from_secs(1) || d > max {
        let shown = humantime::format_duration(max);
        return Err(cx.err(key, format!("{} is not between 1s and {shown}", humantime::format_duration(d))));
    }
    Ok(d)
}
