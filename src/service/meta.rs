//! What `GET /.well-known/gocred` says about this broker: the module patterns it serves, its
//! GOPROXY and git URLs, the login methods and the SSO issuer, and how proofs are made.
//!
//! Must not: list anything a client should not configure (upstream addresses, credentials).

use super::Broker;
use crate::config::{Upstream, UpstreamKind, UpstreamMode};
use crate::proto::meta::{GitHost, Metadata, OidcInfo, ProofInfo, SshHost};

fn login_methods(b: &Broker) -> Vec<String> {
    let mut m = vec!["ssh".to_string()];
    if b.oidc.human_issuer().is_some() {
        m.extend(["oidc".into(), "device".into()]);
    }
    if !b.oidc.is_empty() {
        m.push("token-exchange".into());
    }
    m
}

fn proxied_git(u: &&&Upstream) -> bool {
    u.kind == UpstreamKind::Git && u.mode == UpstreamMode::Proxy
}

/// The broker's self-description.
pub fn metadata(b: &Broker) -> Metadata {
    let origin = &b.origin;
    // Mirrors are tried by the broker itself, never named to clients.
    let ups: Vec<&Upstream> =
        b.proxy.as_ref().map(|p| p.upstreams().iter().filter(|u| u.mirror_of.is_none()).collect()).unwrap_or_default();
    let mut modules: Vec<String> = Vec::new();
    for m in ups.iter().flat_map(|u| u.modules.iter()) {
        if !modules.contains(m) {
            modules.push(m.clone());
        }
    }
    let git = ups
        .iter()
        .filter(proxied_git)
        .flat_map(|u| u.hosts.iter().map(|h| GitHost { host: h.clone(), url: format!("{origin}/git/{h}/") }))
        .collect();
    // Module prefixes of proxied git hosts that no module-proxy upstream serves: clients that
    // want git (`gocred setup --git`) fetch them with it (GONOPROXY), `insteadOf` → /git/.
    // Everyone else gets them from /mod/, which builds them from git itself.
    let proxied: Vec<&String> =
        ups.iter().filter(|u| u.kind == UpstreamKind::Goproxy).flat_map(|u| u.modules.iter()).collect();
    let direct_modules = ups
        .iter()
        .filter(proxied_git)
        .flat_map(|u| u.modules.iter())
        .filter(|m| !proxied.iter().any(|p| *m == *p || m.starts_with(&format!("{p}/"))))
        .cloned()
        .collect();
    Metadata {
        issuer: origin.clone(),
        origin: origin.clone(),
        modules,
        direct_modules,
        goproxy: ups
            .iter()
            .any(|u| u.kind == UpstreamKind::Goproxy || proxied_git(&u))
            .then(|| format!("{origin}/mod")),
        git,
        public_proxy: ups.iter().any(|u| u.public),
        ssh: ups
            .iter()
            .filter_map(|u| u.ssh.as_ref().map(|t| (u, t)))
            .flat_map(|(u, t)| {
                u.hosts.iter().map(|h| SshHost { host: h.clone(), user: t.user.clone(), path: t.path.clone() })
            })
            .collect(),
        vend_hosts: ups.iter().filter(|u| u.mode == UpstreamMode::Vend).flat_map(|u| u.hosts.clone()).collect(),
        proof: ProofInfo {
            namespace: crate::proto::proof::PROOF_NAMESPACE.into(),
            prefix: format!("{origin}/"),
            max_lifetime: crate::proto::proof::MAX_PROOF_LIFETIME_SECS,
        },
        login: login_methods(b),
        oidc: b.oidc.human_issuer().map(|i| OidcInfo {
            issuer: i.issuer.clone(),
            client_id: i.client_id.clone().unwrap_or_default(),
            scopes: i.scopes.clone(),
        }),
        token_endpoint: format!("{origin}/v1/token"),
    }
}
