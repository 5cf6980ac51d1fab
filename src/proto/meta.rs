//! `GET /.well-known/gocred`: what a client needs to configure itself (module patterns, the
//! broker's GOPROXY and git URLs, login methods, the SSO issuer).
//!
//! Must not: depend on broker modules.

use serde::{Deserialize, Serialize};

/// The broker's self-description.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub issuer: String,
    pub origin: String,
    /// Module path patterns the broker serves (GOPRIVATE / GONOSUMDB).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Patterns only a git host serves: `/mod/` builds them from git; a client that wants git
    /// instead fetches them through `/git/` (GONOPROXY).
    #[serde(default)]
    pub direct_modules: Vec<String>,
    /// `<origin>/mod` when a module-proxy or (proxied) git upstream is configured.
    #[serde(default)]
    pub goproxy: Option<String>,
    /// The broker also fronts a public module proxy and checksum database: `<goproxy>,off` is the
    /// only GOPROXY a client needs.
    #[serde(default)]
    pub public_proxy: bool,
    #[serde(default)]
    pub git: Vec<GitHost>,
    #[serde(default)]
    pub vend_hosts: Vec<String>,
    /// Git hosts served over SSH, reached through `gocred ssh-proxy` tunnels.
    #[serde(default)]
    pub ssh: Vec<SshHost>,
    pub proof: ProofInfo,
    #[serde(default)]
    pub login: Vec<String>,
    #[serde(default)]
    pub oidc: Option<OidcInfo>,
    pub token_endpoint: String,
}

/// A proxied git host and the broker URL that fronts it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitHost {
    pub host: String,
    pub url: String,
}

/// A git host served over SSH: `ssh://<user>@<host><path>` is where its repositories are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshHost {
    pub host: String,
    pub user: String,
    pub path: String,
}

/// How proofs must be made for this broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProofInfo {
    pub namespace: String,
    pub prefix: String,
    pub max_lifetime: u64,
}

/// The SSO issuer people log in with (`gocred login --oidc/--device`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OidcInfo {
    pub issuer: String,
    pub client_id: String,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["openid".into()]
}
