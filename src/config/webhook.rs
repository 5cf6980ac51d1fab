//! `[webhook]`: what the admission webhook injects into pods, as plain validated types
//! ([`InjectSettings`], [`InjectMode`], [`OnMalformed`]), their defaults, the validators the
//! webhook shares (module patterns, resource lists), and the section's validator. The webhook
//! module re-exports these under its own paths; config does not depend on it.

use super::ConfigError;
use super::Ctx;
use super::oidc::{IssuerKind, OidcIssuer};
use super::raw::RawWebhook;
use super::rules::{UrlRule, UrlShape};
use super::upstreams::{Upstream, UpstreamKind, UpstreamMode};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How `go` reaches private modules in an injected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InjectMode {
    /// `GOPROXY=<broker>/mod,<fallback>`, `GONOPROXY=none`: the broker serves the module protocol.
    #[default]
    Goproxy,
    /// No GOPROXY change: `go` uses git, and the git config rewrites private hosts to the broker.
    Git,
}

impl InjectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InjectMode::Goproxy => "goproxy",
            InjectMode::Git => "git",
        }
    }

    /// `goproxy` or `git`.
    pub fn parse(s: &str) -> Option<InjectMode> {
        match s {
            "goproxy" => Some(InjectMode::Goproxy),
            "git" => Some(InjectMode::Git),
            _ => None,
        }
    }
}

/// What to do with a pod that asks for injection but whose request cannot be honoured (a
/// malformed `gocred.dev/*` annotation, a volume or mount path already in use).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnMalformed {
    /// Refuse the pod with a message naming the annotation and the bad value.
    #[default]
    Deny,
    /// Admit the pod unchanged, with the message as a warning to the client.
    Allow,
}

/// Resource quantities by name (`cpu`, `memory`, ...), used as both requests and limits.
pub type Resources = BTreeMap<String, Quantity>;

/// What to inject (from the `[webhook]` config section; annotations refine it per pod).
#[derive(Debug, Clone, PartialEq)]
pub struct InjectSettings {
    /// Image of the init container, e.g. `ghcr.io/gocred/gocred:0.1.0`.
    pub image: String,
    /// The broker's base URL as pods reach it, without a trailing slash.
    pub broker_url: String,
    /// Default module patterns (GOPRIVATE syntax), e.g. `git.corp.example/*`.
    pub modules: Vec<String>,
    pub mode: InjectMode,
    /// What `go` tries after the broker for modules it does not serve.
    pub goproxy_fallback: String,
    /// Audience of the projected service-account token.
    pub token_audience: String,
    /// Lifetime of the projected token (Kubernetes requires at least 600).
    pub token_expiration_seconds: i64,
    /// The broker's CA bundle (public certificates, PEM) when it is not publicly trusted.
    pub ca_pem: Option<String>,
    pub on_malformed: OnMalformed,
    /// Default requests/limits of the init container.
    pub init_resources: Option<Resources>,
    /// The broker proxies a module proxy (`/mod/`): `goproxy` mode is possible.
    pub has_goproxy: bool,
    /// Hosts the broker proxies with git smart HTTP (`/git/<host>/`): pods get `insteadOf`
    /// rewrites for them in both modes, and `git` mode is possible.
    pub git_hosts: Vec<String>,
}

impl InjectSettings {
    /// Settings with the documented defaults for everything but the image, URL and modules.
    pub fn new(image: impl Into<String>, broker_url: impl Into<String>, modules: Vec<String>) -> InjectSettings {
        InjectSettings {
            image: image.into(),
            broker_url: broker_url.into().trim_end_matches('/').to_string(),
            modules,
            mode: InjectMode::Goproxy,
            goproxy_fallback: DEFAULT_GOPROXY_FALLBACK.into(),
            token_audience: DEFAULT_TOKEN_AUDIENCE.into(),
            token_expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
            ca_pem: None,
            on_malformed: OnMalformed::Deny,
            init_resources: None,
            has_goproxy: true,
            git_hosts: Vec::new(),
        }
    }
}

pub const DEFAULT_GOPROXY_FALLBACK: &str = "https://proxy.golang.org,direct";
pub const DEFAULT_TOKEN_AUDIENCE: &str = "gocred";
/// The Kubernetes minimum for a projected token's `expirationSeconds`.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// `[webhook]` → the injection settings (`None` unless `enabled = true`; the other keys are
/// validated either way, so `--check` catches mistakes before the webhook is switched on).
pub(super) fn validate_webhook(
    cx: &Ctx,
    raw: Option<RawWebhook>,
    public_url: Option<&str>,
    upstreams: &[Upstream],
    oidc: &[OidcIssuer],
) -> Result<Option<InjectSettings>, ConfigError> {
    let Some(w) = raw else { return Ok(None) };
    let needed =
        |key: &str, hint: &str| cx.err(key, format!("required key is missing (webhook.enabled = true): {hint}"));
    let image = match w.image {
        Some(i) if i.is_empty() || i.contains(char::is_whitespace) => {
            return Err(cx.err("webhook.image", format!("`{i}` is not an image reference")));
        }
        i => i,
    };
    // The public URL is only a default: checked when the webhook is on.
    let broker_url = broker_url(cx, w.broker_url.as_deref(), public_url.filter(|_| w.enabled))?;
    let modules = modules(cx, w.modules, upstreams)?;
    let mode = match w.mode.as_deref() {
        None => InjectMode::Goproxy,
        Some(s) => InjectMode::parse(s)
            .ok_or_else(|| cx.err("webhook.mode", format!("`{s}` must be \"goproxy\" or \"git\"")))?,
    };
    // A broker fronting a public proxy is the only GOPROXY pods need: `off` by default then.
    let default_fallback = if upstreams.iter().any(|u| u.public) { "off" } else { DEFAULT_GOPROXY_FALLBACK };
    let goproxy_fallback = goproxy_fallback(cx, w.goproxy_fallback, default_fallback)?;
    let token_audience = w.token_audience.unwrap_or_else(|| DEFAULT_TOKEN_AUDIENCE.into());
    if token_audience.is_empty() || token_audience.contains(char::is_whitespace) {
        return Err(cx.err("webhook.token_audience", format!("`{token_audience}` must be a non-empty audience")));
    }
    let expiration = cx.duration(
        "webhook.token_expiration",
        w.token_expiration.as_deref(),
        Duration::from_secs(DEFAULT_TOKEN_EXPIRATION_SECONDS as u64),
    )?;
    // Kubernetes' own bounds for a projected token's expirationSeconds.
    if expiration < Duration::from_secs(600) || expiration > Duration::from_secs(1 << 32) {
        return Err(
            cx.err("webhook.token_expiration", "must be between 10m (the Kubernetes minimum) and 2^32 s".into())
        );
    }
    let ca_pem = ca_pem(cx, w.ca_file)?;
    let on_malformed = match w.on_malformed.as_deref() {
        None | Some("deny") => OnMalformed::Deny,
        Some("allow") => OnMalformed::Allow,
        Some(s) => return Err(cx.err("webhook.on_malformed", format!("`{s}` must be \"deny\" or \"allow\""))),
    };
    let init_resources = match w.init_resources.as_deref() {
        None => None,
        Some(s) => Some(parse_resources(s).map_err(|e| cx.err("webhook.init_resources", e))?),
    };
    if !w.enabled {
        return Ok(None);
    }
    let image = image
        .ok_or_else(|| needed("webhook.image", "the init container image, e.g. \"ghcr.io/gocred/gocred:0.1.0\""))?;
    let broker_url = broker_url
        .ok_or_else(|| needed("webhook.broker_url", "the URL pods reach the broker at (or set server.public_url)"))?;
    if modules.is_empty() {
        return Err(needed("webhook.modules", "module patterns to inject (no [[upstreams]] to take them from)"));
    }
    let (has_goproxy, git_hosts) = usable(cx, &token_audience, mode, upstreams, oidc)?;
    let mut s = InjectSettings::new(image, broker_url, modules);
    s.has_goproxy = has_goproxy;
    s.git_hosts = git_hosts;
    s.mode = mode;
    s.goproxy_fallback = goproxy_fallback;
    s.token_audience = token_audience;
    s.token_expiration_seconds = expiration.as_secs() as i64;
    s.ca_pem = ca_pem;
    s.on_malformed = on_malformed;
    s.init_resources = init_resources;
    Ok(Some(s))
}

/// `webhook.broker_url`, else the `server.public_url` default (`None` when the webhook is off):
/// an https URL, without trailing `/`.
fn broker_url(cx: &Ctx, configured: Option<&str>, public_url: Option<&str>) -> Result<Option<String>, ConfigError> {
    let Some(u) = configured.or(public_url) else { return Ok(None) };
    let (key, hint) = if configured.is_some() {
        ("webhook.broker_url", "")
    } else {
        ("server.public_url", " (the default of webhook.broker_url; set that instead)")
    };
    let url = cx.check_url(key, u, (UrlRule::Https, UrlShape::Base), |_| {
        format!("`{u}` must be an https:// URL pods reach the broker at{hint}: Go sends credentials only over HTTPS")
    })?;
    Ok(Some(url))
}

/// `webhook.modules` (at least one valid pattern), else the upstreams' modules, deduplicated.
fn modules(cx: &Ctx, configured: Option<Vec<String>>, upstreams: &[Upstream]) -> Result<Vec<String>, ConfigError> {
    if let Some(m) = configured {
        if m.is_empty() {
            return Err(cx.err("webhook.modules", "must name at least one module pattern".into()));
        }
        for p in &m {
            validate_module_pattern(p).map_err(|e| cx.err("webhook.modules", e))?;
        }
        return Ok(m);
    }
    let mut m: Vec<String> = Vec::new();
    for p in upstreams.iter().flat_map(|u| &u.modules) {
        if !m.contains(p) {
            m.push(p.clone());
        }
    }
    Ok(m)
}

/// `webhook.goproxy_fallback`: a GOPROXY list of http(s) URLs, `file://` URLs, `direct`, `off`.
fn goproxy_fallback(cx: &Ctx, configured: Option<String>, default: &str) -> Result<String, ConfigError> {
    let fallback = configured.unwrap_or_else(|| default.into());
    let fallback_ok = !fallback.is_empty()
        && fallback
            .split([',', '|'])
            .all(|e| e == "direct" || e == "off" || UrlRule::Any.admits(e) || e.starts_with("file://"))
        && !fallback.contains(char::is_whitespace);
    if !fallback_ok {
        return Err(cx.err(
            "webhook.goproxy_fallback",
            format!("`{fallback}` must be a GOPROXY list like \"https://proxy.golang.org,direct\" (or \"off\")"),
        ));
    }
    Ok(fallback)
}

/// `webhook.ca_file`: read, and only public certificates (it is sent to every injected pod).
fn ca_pem(cx: &Ctx, ca_file: Option<PathBuf>) -> Result<Option<String>, ConfigError> {
    let Some(p) = ca_file.map(|p| cx.rel(p)) else { return Ok(None) };
    let text = std::fs::read_to_string(&p)
        .map_err(|e| cx.err("webhook.ca_file", format!("cannot read {}: {e}", p.display())))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(cx.err("webhook.ca_file", format!("{} holds no PEM certificate", p.display())));
    }
    if text.contains("PRIVATE KEY-----") {
        return Err(cx.err(
            "webhook.ca_file",
            format!(
                "{} contains a private key; it is sent to every injected pod: give only the CA certificates",
                p.display()
            ),
        ));
    }
    Ok(Some(text))
}

/// The injected pods must be able to use what they are given: an issuer that accepts their
/// projected token, and an upstream for the mode (else `go` falls through to public proxies
/// with private module paths, or git gets no credentials). Returns whether a module proxy is
/// proxied, and the git hosts that are.
fn usable(
    cx: &Ctx,
    token_audience: &str,
    mode: InjectMode,
    upstreams: &[Upstream],
    oidc: &[OidcIssuer],
) -> Result<(bool, Vec<String>), ConfigError> {
    if !oidc.iter().any(|i| i.kind == IssuerKind::Kubernetes && i.audiences.iter().any(|a| a == token_audience)) {
        return Err(cx.err(
            "webhook.enabled",
            format!(
                "injected pods authenticate with a projected service-account token (audience `{token_audience}`): \
                 add an [[oidc.issuers]] entry with kind = \"kubernetes\" and \"{token_audience}\" in its audiences"
            ),
        ));
    }
    // `/mod/` serves private modules from a private module proxy or, built from git, a git server.
    let has_goproxy = upstreams.iter().any(|u| !u.public && u.mode == UpstreamMode::Proxy);
    let git_hosts: Vec<String> = upstreams
        .iter()
        .filter(|u| u.kind == UpstreamKind::Git && u.mode == UpstreamMode::Proxy)
        .flat_map(|u| u.hosts.iter().cloned())
        .collect();
    if mode == InjectMode::Goproxy && !has_goproxy {
        return Err(cx.err(
            "webhook.mode",
            "\"goproxy\" needs a private [[upstreams]] entry (kind = \"goproxy\" or \"git\") to serve /mod/".into(),
        ));
    }
    if mode == InjectMode::Git && git_hosts.is_empty() {
        return Err(cx.err(
            "webhook.mode",
            "\"git\" needs an [[upstreams]] entry with kind = \"git\" (or use mode = \"goproxy\")".into(),
        ));
    }
    Ok((has_goproxy, git_hosts))
}

/// A GOPRIVATE-style module pattern: `host`, `host/path` or a glob like `host/*`; the first
/// element is a host name (it has a dot), no spaces, no empty elements.
pub fn validate_module_pattern(p: &str) -> Result<(), String> {
    const HINT: &str = "expected a module pattern like \"git.corp.example/*\" or \"git.corp.example/team\"";
    if p.is_empty() {
        return Err(format!("empty module pattern; {HINT}"));
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{p:?} contains a space; {HINT}"));
    }
    if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~/*?[]^".contains(*c))) {
        return Err(format!("{p:?} contains {c:?}; {HINT}"));
    }
    if p.split('/').any(str::is_empty) {
        return Err(format!("{p:?} has an empty path element; {HINT}"));
    }
    let host = p.split('/').next().unwrap_or_default();
    if !host.contains('.') {
        return Err(format!("{p:?} does not start with a host name (no dot in {host:?}); {HINT}"));
    }
    Ok(())
}

/// `cpu=50m,memory=32Mi`: resource names and Kubernetes quantities.
pub fn parse_resources(v: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for item in v.split(',').map(str::trim) {
        let (name, q) = item
            .split_once('=')
            .map(|(n, q)| (n.trim(), q.trim()))
            .ok_or_else(|| format!("{item:?} is not NAME=QUANTITY (e.g. \"cpu=50m,memory=32Mi\")"))?;
        let name_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !name_ok {
            return Err(format!("{name:?} is not a resource name like cpu or memory"));
        }
        if !valid_quantity(q) {
            return Err(format!("{q:?} is not a quantity like 50m, 0.5 or 32Mi"));
        }
        if out.insert(name.to_string(), Quantity(q.to_string())).is_some() {
            return Err(format!("{name:?} is given twice"));
        }
    }
    Ok(out)
}

/// A non-negative Kubernetes quantity: a decimal number and an optional SI/binary suffix or
/// decimal exponent (`50m`, `0.5`, `32Mi`, `1e3`).
fn valid_quantity(q: &str) -> bool {
    let end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(end);
    let num_ok = num.chars().any(|c| c.is_ascii_digit()) && num.matches('.').count() <= 1;
    let exponent = |s: &str| {
        s.strip_prefix(['e', 'E'])
            .map(|r| r.strip_prefix(['+', '-']).unwrap_or(r))
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    };
    num_ok
        && (matches!(
            suffix,
            "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        ) || exponent(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["50m", "0.5", "32Mi", "1", "1e3", "2E-1", "1.5Gi", "100k", "5.", ".5"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "-1", "1.2.3", "32MB", "1e", "abc", "1 Mi", "0x10"] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn resources_parse_and_name_the_bad_part() {
        let r = parse_resources("cpu=50m, memory=32Mi").unwrap();
        assert_eq!(r["cpu"].0, "50m");
        assert_eq!(r["memory"].0, "32Mi");
        assert!(parse_resources("cpu").unwrap_err().contains("NAME=QUANTITY"));
        assert!(parse_resources("cpu=lots").unwrap_err().contains("\"lots\""));
        assert!(parse_resources("cpu=1,cpu=2").unwrap_err().contains("twice"));
        assert!(parse_resources("").is_err());
        assert!(parse_resources("c p u=1").is_err());
    }

    #[test]
    fn module_patterns() {
        for ok in
            ["git.corp.example/*", "git.corp.example", "git.corp.example/team/lib", "*.corp.example", "a.b/[a-c]?"]
        {
            validate_module_pattern(ok).unwrap();
        }
        for bad in ["", "git.corp example/*", "corp/*", "git.corp.example//x", "/git.corp.example", "x.y/", "x.y/a,b"] {
            assert!(validate_module_pattern(bad).is_err(), "{bad}");
        }
    }
}
