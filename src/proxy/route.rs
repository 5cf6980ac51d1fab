//! Pure request routing for the proxy: which upstream serves a GOPROXY or git smart-HTTP path,
//! what module/repository path the policy is asked about, and which upstream URL to call.

use super::ProxyError;
use crate::config::{Upstream, UpstreamKind};
pub use crate::proto::rules::clean_path;

/// What a git request does (read vs write decides the Cedar action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitOp {
    /// `info/refs?service=git-upload-pack` or `POST git-upload-pack`.
    Read,
    /// `info/refs?service=git-receive-pack` or `POST git-receive-pack`.
    Write,
}

/// A resolved proxy request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into the configured upstreams.
    pub upstream: usize,
    /// The module (GOPROXY) or repository (git, without `.git`) path the policy is asked about.
    pub module: String,
    /// Path (and query) to append to the upstream base URL, starting with `/`.
    pub upstream_path: String,
    pub git_op: Option<GitOp>,
    /// The only methods this request may use: GET/HEAD for `info/refs`, GOPROXY and go-get,
    /// POST for `git-upload-pack`/`git-receive-pack`.
    pub post: bool,
}

/// GOPROXY case-encoding: `!x` stands for `X` (module paths are case-sensitive, URLs are not).
pub fn unescape_module(escaped: &str) -> Result<String, ProxyError> {
    let mut out = String::with_capacity(escaped.len());
    let mut bang = false;
    for c in escaped.chars() {
        if bang {
            if !c.is_ascii_lowercase() {
                return Err(ProxyError::BadPath("invalid ! escape in module path".into()));
            }
            out.push(c.to_ascii_uppercase());
            bang = false;
        } else if c == '!' {
            bang = true;
        } else if c.is_ascii_uppercase() {
            return Err(ProxyError::BadPath("module paths in URLs must be case-encoded (!x)".into()));
        } else {
            out.push(c);
        }
    }
    if bang {
        return Err(ProxyError::BadPath("dangling ! in module path".into()));
    }
    Ok(out)
}

/// `%XX` → the byte, for printable ASCII only (a module path or version has nothing else).
fn percent_decode(s: &str) -> Result<String, ProxyError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bad = || ProxyError::BadPath("malformed percent-encoding in module path".into());
    let b = s.as_bytes();
    let (mut out, mut i) = (String::with_capacity(s.len()), 0);
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or_else(bad)?;
            let c = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
            if !c.is_ascii_graphic() {
                return Err(bad());
            }
            out.push(c as char);
            i += 3;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Ok(out)
}

/// `/mod/<rest>` → the goproxy upstream serving the module.
pub fn resolve_mod(upstreams: &[Upstream], rest: &str, query: Option<&str>) -> Result<Target, ProxyError> {
    if query.is_some_and(|q| !q.is_empty()) {
        return Err(ProxyError::BadPath("GOPROXY requests take no query".into()));
    }
    // The go command percent-encodes some characters of a version (`!` in `!h!e!a!d`).
    let decoded = percent_decode(rest)?;
    let rest = decoded.as_str();
    if let Some(sumdb) = rest.strip_prefix("sumdb/") {
        return resolve_sumdb(upstreams, sumdb);
    }
    let (escaped, tail) = if let Some(i) = rest.find("/@v/") {
        let tail = &rest[i + 4..];
        let ok = tail == "list"
            || [".info", ".mod", ".zip"]
                .iter()
                .any(|ext| tail.strip_suffix(ext).is_some_and(|v| !v.is_empty() && !v.contains('/')));
        if !ok {
            return Err(ProxyError::BadPath(format!("unknown GOPROXY request `@v/{tail}`")));
        }
        (&rest[..i], &rest[i..])
    } else if let Some(m) = rest.strip_suffix("/@latest") {
        (m, "/@latest")
    } else {
        return Err(ProxyError::BadPath("expected <module>/@v/... or <module>/@latest".into()));
    };
    if !clean_path(escaped) || !clean_path(tail.trim_start_matches('/')) {
        return Err(ProxyError::BadPath("malformed module path".into()));
    }
    let module = unescape_module(escaped)?;
    let upstream = upstreams
        .iter()
        .position(|u| u.routable() && u.kind == UpstreamKind::Goproxy && u.serves(&module))
        // A module proxy serving the path wins; else a git server hosting it (built by modfetch).
        .or_else(|| upstreams.iter().position(|u| u.routable() && u.kind == UpstreamKind::Git && u.serves(&module)))
        .or_else(|| public_for(upstreams, &module))
        .ok_or_else(|| ProxyError::NoUpstream(module.clone()))?;
    Ok(Target { upstream, module, upstream_path: format!("/{escaped}{tail}"), git_op: None, post: false })
}

/// The public upstream, for a module no private upstream claims in any spelling.
fn public_for(upstreams: &[Upstream], module: &str) -> Option<usize> {
    if upstreams.iter().any(|u| !u.public && u.claims(module)) {
        return None;
    }
    upstreams.iter().position(|u| u.public)
}

/// `/mod/sumdb/<name>/<supported | latest | lookup/M@V | tile/...>` (the go command's checksum
/// database proxy protocol) → the public upstream. A lookup of a private module path is refused:
/// it would tell the public database which private modules exist.
fn resolve_sumdb(upstreams: &[Upstream], rest: &str) -> Result<Target, ProxyError> {
    let (name, what) = rest.split_once('/').ok_or_else(|| ProxyError::BadPath("expected sumdb/<name>/...".into()))?;
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
    let what_ok = what == "supported"
        || what == "latest"
        || what.starts_with("lookup/")
        || what.starts_with("tile/")
            && what[5..]
                .split('/')
                .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || ".".contains(c)));
    if !name_ok || !what_ok || !clean_path(what) {
        return Err(ProxyError::BadPath("not a checksum database request".into()));
    }
    let sumdb = format!("sumdb/{name}");
    let upstream = if let Some(lookup) = what.strip_prefix("lookup/") {
        let (escaped, version) =
            lookup.rsplit_once('@').ok_or_else(|| ProxyError::BadPath("expected lookup/<module>@<version>".into()))?;
        if version.is_empty() || version.contains('/') {
            return Err(ProxyError::BadPath("expected lookup/<module>@<version>".into()));
        }
        let module = unescape_module(escaped)?;
        public_for(upstreams, &module).ok_or(ProxyError::NoUpstream(module))?
    } else {
        upstreams.iter().position(|u| u.public).ok_or_else(|| ProxyError::NoUpstream(sumdb.clone()))?
    };
    Ok(Target { upstream, module: sumdb, upstream_path: format!("/sumdb/{rest}"), git_op: None, post: false })
}

/// Split a git smart-HTTP path `<repo>/info/refs` | `<repo>/git-upload-pack` | `<repo>/git-receive-pack`.
fn split_git(path: &str, query: Option<&str>) -> Result<(String, GitOp, String), ProxyError> {
    let service = query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("service=")));
    let (repo, op, suffix) = if let Some(r) = path.strip_suffix("/info/refs") {
        match service {
            Some("git-upload-pack") if query == Some("service=git-upload-pack") => {
                (r, GitOp::Read, "/info/refs?service=git-upload-pack")
            }
            Some("git-receive-pack") if query == Some("service=git-receive-pack") => {
                (r, GitOp::Write, "/info/refs?service=git-receive-pack")
            }
            _ => {
                return Err(ProxyError::BadPath(
                    "only the smart HTTP protocol is served (service=git-upload-pack)".into(),
                ));
            }
        }
    } else if let Some(r) = path.strip_suffix("/git-upload-pack").filter(|_| query.is_none()) {
        (r, GitOp::Read, "/git-upload-pack")
    } else if let Some(r) = path.strip_suffix("/git-receive-pack").filter(|_| query.is_none()) {
        (r, GitOp::Write, "/git-receive-pack")
    } else {
        return Err(ProxyError::BadPath("not a git smart-HTTP path (info/refs, git-upload-pack)".into()));
    };
    if !clean_path(repo) {
        return Err(ProxyError::BadPath("malformed repository path".into()));
    }
    Ok((repo.to_string(), op, suffix.to_string()))
}

/// The configured spelling of `host` on upstream `u`, if it serves it.
pub fn canonical_host<'a>(u: &'a Upstream, host: &str) -> Option<&'a str> {
    u.hosts.iter().find(|h| h.eq_ignore_ascii_case(host)).map(String::as_str)
}

/// The name policies are asked about for repository (or package) path `repo` on the git host
/// `host` (its configured spelling): the path lower-cased (git servers commonly treat
/// repository paths case-insensitively) with a trailing `.git` removed in any case. Every git
/// route — `/git/`, host-routed smart HTTP and `?go-get=1`, vend mode — names repositories
/// through this one function.
pub fn repo_module(host: &str, repo: &str) -> String {
    let lower = repo.trim_end_matches('/').to_ascii_lowercase();
    let stem = lower.strip_suffix(".git").filter(|s| !s.is_empty() && !s.ends_with('/')).unwrap_or(&lower);
    if stem.is_empty() { host.to_string() } else { format!("{host}/{stem}") }
}

/// The repository path (no leading `/`) an upstream advertises in its go-import `repo_url`,
/// relative to the upstream's base URL `base`: what the broker advertises under its own name
/// and forwards back to the same place. `None` for anything but a plain http(s) URL whose path
/// is clean.
pub fn upstream_relative_path(base: &str, repo_url: &str) -> Option<String> {
    let rest = repo_url.strip_prefix("https://").or_else(|| repo_url.strip_prefix("http://"))?;
    let (_, path) = rest.split_once('/')?;
    if path.contains(['?', '#']) {
        return None;
    }
    let base_path = base.split_once("://").and_then(|(_, r)| r.split_once('/')).map(|(_, p)| p).unwrap_or("");
    let base_path = base_path.trim_matches('/');
    let path = path.trim_end_matches('/');
    let rel = match path.strip_prefix(base_path) {
        Some(r) if !base_path.is_empty() && r.starts_with('/') => &r[1..],
        _ => path,
    };
    clean_path(rel).then(|| rel.to_string())
}

/// One `<meta name="go-import" content="PREFIX VCS REPO-URL">`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoImport {
    pub prefix: String,
    pub vcs: String,
    pub repo_url: String,
}

/// The go-import tag (of vcs `git`) whose prefix is `module` or a parent of it, as the go
/// command picks it.
pub fn parse_go_import(html: &str, module: &str) -> Option<GoImport> {
    let mut rest = html;
    while let Some(i) = rest.find("name=\"go-import\"") {
        let tag_start = rest[..i].rfind('<').unwrap_or(0);
        let tag_end = rest[i..].find('>').map(|e| i + e).unwrap_or(rest.len());
        let tag = &rest[tag_start..tag_end];
        rest = &rest[tag_end..];
        let Some(c) = tag.find("content=\"") else { continue };
        let content = &tag[c + 9..];
        let Some(end) = content.find('"') else { continue };
        let fields: Vec<&str> = content[..end].split_whitespace().collect();
        let [prefix, vcs, url] = fields[..] else { continue };
        let covers = module == prefix || module.starts_with(&format!("{prefix}/"));
        if covers && vcs == "git" && clean_path(prefix) {
            return Some(GoImport { prefix: prefix.into(), vcs: vcs.into(), repo_url: url.into() });
        }
    }
    None
}

/// The git upstream for `host`.
pub fn git_upstream(upstreams: &[Upstream], host: &str) -> Option<usize> {
    upstreams.iter().position(|u| {
        u.mirror_of.is_none() && u.kind == UpstreamKind::Git && u.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    })
}

/// `/git/<host>/<repo>/...` (or a host-routed `<repo>/...` for `host`) → the git upstream.
pub fn resolve_git(upstreams: &[Upstream], host: &str, path: &str, query: Option<&str>) -> Result<Target, ProxyError> {
    let upstream = git_upstream(upstreams, host).ok_or_else(|| ProxyError::NoUpstream(host.to_string()))?;
    let (repo, op, suffix) = split_git(path, query)?;
    let canonical = canonical_host(&upstreams[upstream], host).unwrap_or_default();
    let module = repo_module(canonical, &repo);
    if !upstreams[upstream].serves(&module) {
        return Err(ProxyError::NoUpstream(module));
    }
    let post = !suffix.starts_with("/info/refs");
    Ok(Target { upstream, module, upstream_path: format!("/{repo}{suffix}"), git_op: Some(op), post })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamMode;
    use std::time::Duration;

    fn ups() -> Vec<Upstream> {
        let mk = |name: &str, kind, hosts: &[&str], modules: &[&str]| Upstream {
            name: name.into(),
            kind,
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            modules: modules.iter().map(|s| s.to_string()).collect(),
            url: "https://up".into(),
            credentials: None,
            mode: UpstreamMode::Proxy,
            ca_cert: None,
            timeout: Duration::from_secs(1),
            ssh: None,
            public: false,
            mirrors: Vec::new(),
            mirror_of: None,
            retries: 2,
            deadline: Duration::from_secs(10),
            credential_ttl: Duration::from_secs(300),
        };
        vec![
            mk("git", UpstreamKind::Git, &["git.corp.test"], &["git.corp.test"]),
            mk("athens", UpstreamKind::Goproxy, &[], &["mods.corp.test/Acme"]),
        ]
    }

    #[test]
    fn percent_encoded_versions_are_decoded_and_bad_encodings_refused() {
        let u = ups();
        let t = resolve_mod(&u, "git.corp.test/acme/lib/@v/%21h%21e%21a%21d.info", None).unwrap();
        assert_eq!((t.upstream, t.upstream_path.as_str()), (0, "/git.corp.test/acme/lib/@v/!h!e!a!d.info"));
        for bad in
            ["git.corp.test/acme/lib/@v/%2.info", "git.corp.test/acme/lib/@v/%0a.info", "git.corp.test/%2e%2e/@latest"]
        {
            assert!(matches!(resolve_mod(&u, bad, None), Err(ProxyError::BadPath(_))), "{bad}");
        }
    }

    #[test]
    fn public_upstream_gets_only_unclaimed_modules_in_any_spelling() {
        let mut u = ups();
        let mut public = u[1].clone();
        (public.name, public.modules, public.public) = ("public".into(), Vec::new(), true);
        u.push(public);
        let t = resolve_mod(&u, "github.com/google/uuid/@v/list", None).unwrap();
        assert_eq!(t.upstream, 2);
        // Private paths never go public: not in the configured spelling, not in another one,
        // not a git-only private host, not as a checksum database lookup.
        for rest in [
            "mods.corp.test/!acme/secret/@v/list",
            "mods.corp.test/acme/secret/@v/list",
            "!m!o!d!s.corp.test/!a!c!m!e/x/@latest",
            "git.corp.test/acme/lib/@v/v1.0.0.info",
            "!g!i!t.corp.test/acme/lib/@v/list",
            "%21g%21i%21t.corp.test/acme/lib/@v/list",
            "git%2ecorp.test/acme/lib/@latest",
            "sumdb/sum.golang.org/lookup/git.corp.test/acme/lib@v1.0.0",
            "sumdb/sum.golang.org/lookup/!g!i!t.corp.test/acme/lib@v1.0.0",
        ] {
            match resolve_mod(&u, rest, None) {
                Ok(t) => assert_ne!(t.upstream, 2, "{rest} went to the public upstream"),
                Err(e) => assert!(matches!(e, ProxyError::NoUpstream(_)), "{rest}: {e}"),
            }
        }
        for rest in [
            "sumdb/sum.golang.org/supported",
            "sumdb/sum.golang.org/latest",
            "sumdb/sum.golang.org/tile/8/0/x001/234.p/5",
            "sumdb/sum.golang.org/lookup/github.com/google/uuid@v1.6.0",
        ] {
            let t = resolve_mod(&u, rest, None).unwrap();
            assert_eq!((t.upstream, t.module.as_str()), (2, "sumdb/sum.golang.org"), "{rest}");
            assert_eq!(t.upstream_path, format!("/{rest}"));
        }
        for bad in ["sumdb/sum.golang.org/../x", "sumdb/sum.golang.org/other", "sumdb/a b/latest", "sumdb/x"] {
            assert!(resolve_mod(&u, bad, None).is_err(), "{bad}");
        }
        // Without a public upstream nothing changes.
        assert!(resolve_mod(&ups(), "github.com/google/uuid/@v/list", None).is_err());
    }

    #[test]
    fn goproxy_paths() {
        let t = resolve_mod(&ups(), "mods.corp.test/!acme/lib/@v/v1.2.3.zip", None).unwrap();
        assert_eq!((t.upstream, t.module.as_str()), (1, "mods.corp.test/Acme/lib"));
        assert_eq!(t.upstream_path, "/mods.corp.test/!acme/lib/@v/v1.2.3.zip");
        assert!(resolve_mod(&ups(), "mods.corp.test/!acme/lib/@v/list", None).is_ok());
        assert!(resolve_mod(&ups(), "mods.corp.test/!acme/lib/@latest", None).is_ok());
        for bad in [
            "mods.corp.test/!acme/../x/@v/list",
            "mods.corp.test/!acme/lib/@v/../../etc",
            "mods.corp.test/Acme/lib/@v/list",
            "mods.corp.test/!acme/lib/@v/v1.zip/x.zip",
            "mods.corp.test/!acme//lib/@v/list",
            "mods.corp.test/!acme/lib",
        ] {
            assert!(resolve_mod(&ups(), bad, None).is_err(), "{bad}");
        }
        assert!(matches!(resolve_mod(&ups(), "other.test/x/@v/list", None), Err(ProxyError::NoUpstream(_))));
        assert!(resolve_mod(&ups(), "mods.corp.test/!acme/lib/@v/list", Some("x=1")).is_err());
    }

    #[test]
    fn git_paths() {
        let t =
            resolve_git(&ups(), "git.corp.test", "acme/lib.git/info/refs", Some("service=git-upload-pack")).unwrap();
        assert_eq!(t.module, "git.corp.test/acme/lib");
        assert_eq!(t.upstream_path, "/acme/lib.git/info/refs?service=git-upload-pack");
        assert_eq!(t.git_op, Some(GitOp::Read));
        let t = resolve_git(&ups(), "git.corp.test", "acme/lib.git/git-receive-pack", None).unwrap();
        assert_eq!(t.git_op, Some(GitOp::Write));
        assert!(resolve_git(&ups(), "git.corp.test", "acme/lib.git/info/refs", None).is_err(), "dumb protocol");
        assert!(resolve_git(&ups(), "git.corp.test", "acme/../x/info/refs", Some("service=git-upload-pack")).is_err());
        assert!(resolve_git(&ups(), "git.corp.test", "acme/lib.git/objects/pack/x.pack", None).is_err());
        assert!(resolve_git(&ups(), "other.test", "a/b/info/refs", Some("service=git-upload-pack")).is_err());
        // Decoded `#`/`?` smuggled into a segment (the receive-pack-as-read trick) is refused.
        assert!(resolve_git(&ups(), "git.corp.test", "acme/lib.git/git-receive-pack#/git-upload-pack", None).is_err());
        assert!(
            resolve_git(
                &ups(),
                "git.corp.test",
                "acme/lib.git/info/refs?service=git-receive-pack#/info/refs",
                Some("service=git-upload-pack")
            )
            .is_err()
        );
        assert!(resolve_mod(&ups(), "mods.corp.test/!acme/lib/@latest#/x/@v/list", None).is_err());
        // One canonical module name whatever the case the caller used.
        let t =
            resolve_git(&ups(), "GIT.corp.TEST", "Acme/Lib.git/info/refs", Some("service=git-upload-pack")).unwrap();
        assert_eq!(t.module, "git.corp.test/acme/lib");
        for spelling in ["acme/LIB.GIT", "Acme/lib.Git", "acme/lib"] {
            let t =
                resolve_git(&ups(), "Git.Corp.Test", &format!("{spelling}/info/refs"), Some("service=git-upload-pack"))
                    .unwrap();
            assert_eq!(t.module, "git.corp.test/acme/lib", "{spelling}");
            assert_eq!(t.upstream_path, format!("/{spelling}/info/refs?service=git-upload-pack"));
        }
        assert_eq!(repo_module("h", "a/b.git/"), "h/a/b");
        assert_eq!(upstream_relative_path("http://127.0.0.1:1", "https://git.x/acme/lib").as_deref(), Some("acme/lib"));
        assert_eq!(
            upstream_relative_path("https://up/gitea", "https://up/gitea/acme/lib.git").as_deref(),
            Some("acme/lib.git")
        );
        assert_eq!(upstream_relative_path("https://up", "ssh://up/acme/lib"), None);
        assert_eq!(upstream_relative_path("https://up", "https://up/acme/../x"), None);
        assert_eq!(upstream_relative_path("https://up", "https://up/a?x=1"), None);
        assert_eq!(repo_module("h", ".git"), "h/.git");
        assert!(
            resolve_git(&ups(), "git.corp.test", "acme/lib.git/info/refs", Some("service=git-upload-pack&x=1"))
                .is_err()
        );
    }
}
