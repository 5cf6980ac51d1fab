//! The broker's `/.well-known/gocred` as the client trusts it: only what this broker can
//! legitimately ask a client to configure (well-formed module patterns, its own `/mod` and
//! `/git/<host>/` URLs). Anything else refuses the whole answer.
//!
//! Must not: configure anything itself.

use super::ClientError;
use crate::proto::meta::Metadata;
use crate::proto::rules::{bare_host, clean_path};

/// `meta` if everything in it is what broker `origin` may ask for.
pub fn checked(meta: Metadata, origin: &str) -> Result<Metadata, ClientError> {
    let bad = |what: String| Err(ClientError::UntrustedMetadata(what));
    if let Some(m) = meta.modules.iter().find(|m| !clean_path(m)) {
        return bad(format!("lists a malformed module pattern `{m}`"));
    }
    if let Some(m) = meta.direct_modules.iter().find(|m| !clean_path(m) || !meta.modules.contains(m)) {
        return bad(format!("lists an unexpected direct module pattern `{m}`"));
    }
    if meta.goproxy.as_deref().is_some_and(|gp| gp != format!("{origin}/mod")) {
        return bad(format!("names a GOPROXY other than {origin}/mod"));
    }
    if let Some(g) = meta.git.iter().find(|g| !bare_host(&g.host) || g.url != format!("{origin}/git/{}/", g.host)) {
        return bad(format!("has an unexpected git entry for `{}`", g.host.escape_default()));
    }
    let safe =
        |s: &str, extra: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(c));
    // Only hosts this broker serves anyway (its git hosts or module hosts), nothing that could be
    // read as an ssh option, no `..` out of the configured path.
    let served =
        |h: &str| meta.git.iter().any(|g| g.host == h) || meta.modules.iter().any(|m| m.split('/').next() == Some(h));
    if let Some(h) = meta.ssh.iter().find(|h| {
        !bare_host(&h.host)
            || h.host.starts_with('-')
            || !served(&h.host)
            || !safe(&h.user, "._-")
            || h.user.starts_with('-')
            || !h.path.starts_with('/')
            || !safe(&h.path, "/._-~")
            || h.path.split('/').any(|s| s == "..")
    }) {
        return bad(format!("has an unexpected SSH entry for `{}`", h.host.escape_default()));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::meta::GitHost;

    fn meta() -> Metadata {
        Metadata {
            modules: vec!["git.corp.example/acme".into()],
            goproxy: Some("https://b.example/mod".into()),
            git: vec![GitHost {
                host: "git.corp.example".into(),
                url: "https://b.example/git/git.corp.example/".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn only_the_brokers_own_urls_and_clean_patterns_are_trusted() {
        assert!(checked(meta(), "https://b.example").is_ok());
        let mut m = meta();
        m.modules.push("x/../y".into());
        assert!(checked(m, "https://b.example").is_err());
        let mut m = meta();
        m.goproxy = Some("https://evil.example/mod".into());
        assert!(checked(m, "https://b.example").is_err());
        let mut m = meta();
        m.git[0].url = "https://evil.example/".into();
        assert!(checked(m, "https://b.example").is_err());
        let mut m = meta();
        m.git[0].host = "git.corp.example/\n[core]".into();
        assert!(checked(m, "https://b.example").is_err());
        let mut m = meta();
        m.direct_modules = vec!["other.example/x".into()];
        assert!(checked(m, "https://b.example").is_err());
        let ssh = |host: &str, user: &str, path: &str| {
            let mut m = meta();
            m.ssh = vec![crate::proto::meta::SshHost { host: host.into(), user: user.into(), path: path.into() }];
            checked(m, "https://b.example")
        };
        assert!(ssh("git.corp.example", "git", "/").is_ok());
        assert!(ssh("github.com", "git", "/").is_err(), "a host the broker does not serve");
        assert!(ssh("-oProxyCommand=x", "git", "/").is_err());
        assert!(ssh("git.corp.example", "-oProxyCommand=x", "/").is_err());
        assert!(ssh("git.corp.example", "git", "/srv/../etc/").is_err());
        assert!(ssh("git.corp.example", "git", "/a b/").is_err());
    }
}
