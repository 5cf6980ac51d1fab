//! `[[oidc.issuers]]`: the trusted OIDC issuers (SSO for people, workload identity tokens for
//! Kubernetes and CI), their validated types, default claim mappings and validator.

use super::ConfigError;
use super::Ctx;
use super::raw::{RawIssuer, RawOidc};
use super::rules::{UrlRule, UrlShape};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Who an OIDC issuer's tokens speak for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// People signing in with SSO (`gocred login --oidc` / `--device`): principals are `User`s.
    Human,
    /// Kubernetes service-account tokens: principals are `Workload`s.
    Kubernetes,
    /// CI ID tokens (GitHub Actions, GitLab CI, ...): principals are `Workload`s.
    Ci,
}

impl IssuerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssuerKind::Human => "human",
            IssuerKind::Kubernetes => "kubernetes",
            IssuerKind::Ci => "ci",
        }
    }
}

/// A trusted OIDC issuer.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// Short name, used in messages and as the principal's `issuer` attribute.
    pub name: String,
    /// The `iss` value, exactly as in the tokens.
    pub issuer: String,
    pub kind: IssuerKind,
    /// Accepted `aud` values (a token must name at least one).
    pub audiences: Vec<String>,
    /// Public client id for `gocred login` (human issuers).
    pub client_id: Option<String>,
    /// Scopes `gocred login` asks for.
    pub scopes: Vec<String>,
    /// Claim naming the principal (default `sub`).
    pub subject_claim: String,
    /// Claim holding the groups (a string array or a string), if any.
    pub groups_claim: Option<String>,
    /// Principal attribute → claim (a top-level claim name, or a JSON pointer such as
    /// `/kubernetes.io/namespace`). Every mapped claim must be present in a token.
    pub claims: std::collections::BTreeMap<String, String>,
    /// Where the discovery document is (default `<issuer>/.well-known/openid-configuration`).
    pub discovery_url: String,
    pub ca_cert: Option<PathBuf>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens issued longer ago than this are refused, whatever their `exp`.
    pub max_token_age: Option<Duration>,
    /// Put before the subject to make the principal id (default `<name>:` for human issuers, so
    /// an SSO user can never be the same Cedar principal as an SSH user or another issuer's user).
    pub username_prefix: String,
    /// Put before each group (default `<name>:`).
    pub groups_prefix: String,
}

/// Default claim mappings per issuer kind (Kubernetes service-account tokens, GitHub-style CI tokens).
fn default_claims(kind: IssuerKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        IssuerKind::Human => &[],
        IssuerKind::Kubernetes => {
            &[("namespace", "/kubernetes.io/namespace"), ("service_account", "/kubernetes.io/serviceaccount/name")]
        }
        IssuerKind::Ci => &[
            ("repository", "repository"),
            ("repository_owner", "repository_owner"),
            ("ref", "ref"),
            ("event_name", "event_name"),
        ],
    }
}

/// Principal attributes a claim may be mapped to (the schema's optional workload attributes).
pub const MAPPABLE_ATTRS: [&str; 6] =
    ["namespace", "service_account", "repository", "repository_owner", "ref", "event_name"];

/// `[[oidc.issuers]]` → the issuers (names and `iss` values unique).
pub(super) fn validate_oidc(cx: &Ctx, raw: Option<RawOidc>) -> Result<Vec<OidcIssuer>, ConfigError> {
    let mut out: Vec<OidcIssuer> = Vec::new();
    for (i, r) in raw.map(|o| o.issuers).unwrap_or_default().into_iter().enumerate() {
        let issuer = validate_issuer(cx, &|k| format!("oidc.issuers[{i}].{k}"), r, &out)?;
        out.push(issuer);
    }
    Ok(out)
}

/// One issuer, `key` naming its keys, checked against those before it (`out`).
fn validate_issuer(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    r: RawIssuer,
    out: &[OidcIssuer],
) -> Result<OidcIssuer, ConfigError> {
    if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(cx.err(&key("name"), format!("`{}` must be letters, digits, - or _", r.name)));
    }
    if out.iter().any(|o| o.name == r.name) {
        return Err(cx.err(&key("name"), format!("`{}` is used by two issuers", r.name)));
    }
    let rule = (UrlRule::HttpsOrLoopback, UrlShape::Verbatim);
    let issuer = cx.check_url(&key("issuer"), &r.issuer, rule, |_| {
        format!("`{}` must be an https URL (http only to a loopback host) without query or user info", r.issuer)
    })?;
    if out.iter().any(|o| o.issuer == issuer) {
        return Err(cx.err(&key("issuer"), format!("`{issuer}` is configured twice")));
    }
    if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
        return Err(
            cx.err(&key("audiences"), "required: the `aud` values this broker accepts, e.g. [\"gocred\"]".into())
        );
    }
    if r.kind == IssuerKind::Human && r.client_id.as_deref().is_none_or(str::is_empty) {
        return Err(
            cx.err(&key("client_id"), "required for kind = \"human\" (the public client `gocred login` uses)".into())
        );
    }
    let claims = issuer_claims(cx, key, r.kind, r.claims)?;
    let discovery_url = match r.discovery_url {
        Some(u) => cx.check_url(&key("discovery_url"), &u, rule, |_| {
            format!("`{u}` must be an https URL (http only to a loopback host)")
        })?,
        None => format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/')),
    };
    let leeway = cx.duration(&key("leeway"), r.leeway.as_deref(), Duration::from_secs(30))?;
    if leeway > Duration::from_secs(300) {
        return Err(cx.err(&key("leeway"), "must be at most 5m".into()));
    }
    let max_token_age = match r.max_token_age {
        None => None,
        Some(v) => Some(cx.duration(&key("max_token_age"), Some(&v), Duration::ZERO)?),
    };
    let (username_prefix, groups_prefix) =
        issuer_prefixes(cx, key, (&r.name, r.kind), (r.username_prefix, r.groups_prefix), out)?;
    let default_groups = if r.kind == IssuerKind::Human { Some("groups".to_string()) } else { None };
    Ok(OidcIssuer {
        name: r.name,
        issuer,
        kind: r.kind,
        audiences: r.audiences,
        client_id: r.client_id,
        scopes: if r.scopes.is_empty() {
            vec!["openid".into(), "email".into(), "groups".into(), "offline_access".into()]
        } else {
            r.scopes
        },
        subject_claim: r.subject_claim.filter(|s| !s.is_empty()).unwrap_or_else(|| "sub".into()),
        groups_claim: match r.groups_claim {
            Some(g) if g.is_empty() => None,
            Some(g) => Some(g),
            None => default_groups,
        },
        claims,
        discovery_url,
        ca_cert: r.ca_cert.map(|p| cx.rel(p)),
        leeway,
        max_token_age,
        username_prefix,
        groups_prefix,
    })
}

/// The kind's default claim mappings, with `configured` ones added (an empty claim removes one).
fn issuer_claims(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    kind: IssuerKind,
    configured: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut claims: BTreeMap<String, String> =
        default_claims(kind).iter().map(|(a, c)| (a.to_string(), c.to_string())).collect();
    for (attr, claim) in configured {
        if !MAPPABLE_ATTRS.contains(&attr.as_str()) {
            return Err(cx.err(
                &key(&format!("claims.{attr}")),
                format!("unknown principal attribute (known: {})", MAPPABLE_ATTRS.join(", ")),
            ));
        }
        if claim.is_empty() {
            claims.remove(&attr);
        } else {
            claims.insert(attr, claim);
        }
    }
    Ok(claims)
}

/// The username and groups prefixes (defaults from the name and kind); at most one human
/// issuer may have an empty username prefix.
fn issuer_prefixes(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    (name, kind): (&str, IssuerKind),
    (username_prefix, groups_prefix): (Option<String>, Option<String>),
    out: &[OidcIssuer],
) -> Result<(String, String), ConfigError> {
    let prefix_ok = |p: &str| !p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"');
    let username_prefix = username_prefix.unwrap_or_else(|| match kind {
        IssuerKind::Human => format!("{name}:"),
        // Workload ids (`system:serviceaccount:ns:sa`, `repo:org/repo:ref:...`) are their own
        // Cedar type; policies pin `principal.issuer`.
        _ => String::new(),
    });
    if !prefix_ok(&username_prefix) {
        return Err(cx.err(&key("username_prefix"), "must not contain whitespace or quotes".into()));
    }
    if kind == IssuerKind::Human
        && username_prefix.is_empty()
        && out.iter().any(|o| o.kind == IssuerKind::Human && o.username_prefix.is_empty())
    {
        return Err(cx.err(
            &key("username_prefix"),
            "only one human issuer may use an empty prefix (its users share names with SSH users)".into(),
        ));
    }
    let groups_prefix = groups_prefix.unwrap_or_else(|| format!("{name}:"));
    if !prefix_ok(&groups_prefix) {
        return Err(cx.err(&key("groups_prefix"), "must not contain whitespace or quotes".into()));
    }
    Ok((username_prefix, groups_prefix))
}
