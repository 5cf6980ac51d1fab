//! Serving git-hosted modules over the GOPROXY protocol with the go command's semantics: the
//! broker keeps one bare mirror per repository in its private data dir, runs `git` the way
//! `cmd/go/internal/modfetch` runs it, and builds `.info`/`.mod`/`.zip` itself
//! (`docs/git-modules.md` explains the choice; `docs/design/git-modules.md` every rule).
//!
//! - [`semver`], [`gomod`]: Go's version and go.mod rules (pure);
//! - [`git`]: the git command runner (credential only in a 0600 config file);
//! - [`repo`]: versions, queries, pseudo-versions, `findDir`;
//! - [`zip`]: archive → module zip (file set and bytes as the go command builds them).
//!
//! One lock per repository serializes git on its mirror; a zip is built once per
//! module@version and kept (so 50 simultaneous requests build it once).
//!
//! Must not: decide who may fetch (the caller authorizes first), know about HTTP, or put a
//! credential on a command line or in an environment variable.

pub mod git;
pub mod gomod;
pub mod repo;
pub mod semver;
pub mod zip;

use git::{GitError, Mirror, Refs};
use repo::{CodeRepo, Layout, RepoError, Resolved};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long `ls-remote`'s answer is reused before asking the remote again.
pub const REFS_TTL: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ModFetchError {
    /// The module or version does not exist, or cannot be packaged: 404 with this line.
    #[error("{0}")]
    NotFound(String),
    #[error("upstream {upstream}: {source}")]
    Git {
        upstream: String,
        #[source]
        source: GitError,
    },
    #[error("upstream {upstream}: git did not answer in time")]
    Timeout { upstream: String },
    #[error("cannot prepare the module build directory {}: {source}", path.display())]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("building the module zip failed: {0}")]
    Build(String),
    #[error("cannot open the built module zip: {0}")]
    Open(#[from] std::io::Error),
}

impl ModFetchError {
    /// Worth another try (at this upstream or a mirror): a timeout or a transient git failure.
    pub fn is_transient(&self) -> bool {
        match self {
            ModFetchError::Timeout { .. } => true,
            ModFetchError::Git { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// Where a module's repository is and how to reach it.
pub struct Source<'a> {
    pub upstream: &'a str,
    /// The upstream's base URL (what mirrors and builds are named by).
    pub base_url: &'a str,
    /// Where git connects instead of `base_url` (the broker's loopback door, which adds the
    /// credential and retries each request); `header` is then the door's key.
    pub via: Option<&'a str>,
    /// `Authorization` header value for the upstream, if it needs one.
    pub header: Option<&'a SecretString>,
    pub timeout: Duration,
    /// The repository root and its path on the upstream when the upstream said so (its
    /// go-import answer); else [`repo_for`] decides.
    pub repo: Option<(String, String)>,
}

/// One GOPROXY request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    List,
    Latest,
    Info(String),
    Mod(String),
    Zip(String),
}

/// What to send back.
#[derive(Debug)]
pub enum Answer {
    Text(String),
    Json(String),
    Bytes(Vec<u8>),
    File(PathBuf),
}

struct RepoState {
    lock: tokio::sync::Mutex<Option<(Instant, Refs)>>,
    objects: Arc<git::ObjectCache>,
}

pub struct ModFetch {
    dir: PathBuf,
    repos: Mutex<HashMap<String, Arc<RepoState>>>,
}

fn short_hash(s: &str) -> String {
    crate::fsutil::hex(&Sha256::digest(s.as_bytes())[..12])
}

/// Whether `m` names its repository itself (an element ending in `.git`): the go command then
/// asks no go-import question.
pub fn names_repo(m: &str) -> bool {
    m.split('/').skip(1).any(|p| p.len() > 4 && p.ends_with(".git"))
}

/// Repository root and path on the upstream for module `m` (go's `.git`-qualified form
/// `host/a/b.git/...`, else the first two path elements after the host).
pub fn repo_for(m: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = m.split('/').collect();
    if parts.len() < 2 {
        return None;
    }
    if let Some(i) = parts.iter().skip(1).position(|p| p.len() > 4 && p.ends_with(".git")).map(|i| i + 1) {
        return Some((parts[..=i].join("/"), parts[1..=i].join("/")));
    }
    if parts.len() < 3 {
        return None;
    }
    Some((parts[..3].join("/"), format!("{}.git", parts[1..3].join("/"))))
}

impl ModFetch {
    pub fn new(dir: PathBuf) -> ModFetch {
        ModFetch { dir, repos: Mutex::new(HashMap::new()) }
    }

    fn state(&self, url: &str) -> Arc<RepoState> {
        self.repos
            .lock()
            .expect("repo table poisoned")
            .entry(url.to_string())
            .or_insert_with(|| Arc::new(RepoState { lock: tokio::sync::Mutex::new(None), objects: Arc::default() }))
            .clone()
    }

    /// A private temporary file path (for a mirror's answer), removed when dropped.
    pub fn temp_path(&self, what: &str) -> crate::fsutil::TempPath {
        let d = self.dir.join("tmp");
        let _ = crate::fsutil::ensure_private_dir(&self.dir).and_then(|_| crate::fsutil::ensure_private_dir(&d));
        crate::fsutil::TempPath::new(d.join(format!("{what}-{}", crate::fsutil::hex(&crate::random_bytes::<8>()))))
    }

    fn work_dir(&self, sub: &str) -> Result<PathBuf, ModFetchError> {
        let d = self.dir.join(sub);
        crate::fsutil::ensure_private_dir(&self.dir)
            .and_then(|_| crate::fsutil::ensure_private_dir(&d))
            .map_err(|source| ModFetchError::WorkDir { path: d.clone(), source })?;
        Ok(d)
    }

    /// Answer one GOPROXY request for `module` (already authorized).
    pub async fn serve(&self, src: &Source<'_>, module: &str, req: Request) -> Result<Answer, ModFetchError> {
        let (root, repo_path) = match &src.repo {
            Some(r) => r.clone(),
            None => {
                repo_for(module).ok_or_else(|| ModFetchError::NotFound(format!("{module}: not a repository path")))?
            }
        };
        let url = format!("{}/{repo_path}", src.base_url.trim_end_matches('/'));
        let connect = src.via.unwrap_or(src.base_url);
        let remote = format!("{}/{repo_path}", connect.trim_end_matches('/'));
        let layout = Layout::new(module, &root).map_err(map_repo(src))?;
        let git_dir = self.work_dir("git")?;
        let config = git_dir.join(format!("{}.gitconfig", short_hash(src.upstream)));
        let cfg = git::credential_config(connect, src.header.map(|h| h.expose_secret()), src.timeout * 4)
            .ok_or_else(|| ModFetchError::Build("the upstream credential cannot be passed to git".into()))?;
        // Rewritten only when the credential (or the upstream's settings) changed, not per request.
        if std::fs::read(&config).ok().as_deref() != Some(cfg.as_bytes()) {
            crate::fsutil::write_private_atomic(&config, cfg.as_bytes())
                .map_err(|source| ModFetchError::WorkDir { path: config.clone(), source })?;
        }
        let state = self.state(&url);
        let mirror = Mirror {
            dir: git_dir.join(short_hash(&url)),
            remote,
            config,
            timeout: src.timeout,
            objects: state.objects.clone(),
        };
        let mut guard = state.lock.lock().await;
        mirror.init().await.map_err(map_git(src))?;
        let refs = match guard.as_ref() {
            Some((at, refs)) if at.elapsed() < REFS_TTL => refs.clone(),
            _ => {
                let refs = mirror.ls_remote().await.map_err(map_git(src))?;
                *guard = Some((Instant::now(), refs.clone()));
                refs
            }
        };
        let code = CodeRepo { git: &mirror, refs: &refs, layout: &layout };
        match req {
            Request::List => {
                let list = code.versions().await.map_err(map_repo(src))?;
                Ok(Answer::Text(list.iter().map(|v| format!("{v}\n")).collect()))
            }
            Request::Latest => Ok(Answer::Json(info_json(&layout, &code.latest().await.map_err(map_repo(src))?))),
            Request::Info(q) => Ok(Answer::Json(info_json(&layout, &code.resolve(&q).await.map_err(map_repo(src))?))),
            Request::Mod(v) => {
                exact(&code, module, &v).await.map_err(map_repo(src))?;
                Ok(Answer::Bytes(code.go_mod(&v).await.map_err(map_repo(src))?))
            }
            Request::Zip(v) => {
                exact(&code, module, &v).await.map_err(map_repo(src))?;
                self.zip(src, &code, module, &v).await
            }
        }
    }

    async fn zip(&self, src: &Source<'_>, code: &CodeRepo<'_>, module: &str, v: &str) -> Result<Answer, ModFetchError> {
        let zips = self.work_dir("zip")?;
        let (info, dir, _) = code.find_dir(v).await.map_err(map_repo(src))?;
        // Keyed by upstream and commit too: two upstreams may serve the same path with different
        // content, and a retagged version is another build.
        let key = short_hash(&format!("{}\n{}\n{module}@{v}\n{}", src.upstream, code.git.dir.display(), info.hash));
        let dest = zips.join(format!("{key}.zip"));
        if dest.exists() {
            return Ok(Answer::File(dest));
        }
        let tmp = zips.join(format!("{key}.archive.tmp"));
        let found = code.git.archive(&info.hash, &dir, &tmp, zip::MAX_ZIP_FILE).await.map_err(map_git(src))?;
        if !found {
            let _ = std::fs::remove_file(&tmp);
            return Err(ModFetchError::NotFound(format!("{module}@{v}: module directory {dir} does not exist")));
        }
        let license = if dir.is_empty() {
            None
        } else {
            code.git.read_file(&info.hash, "LICENSE", zip::MAX_LICENSE).await.ok().flatten()
        };
        let part = dest.with_extension("zip.part");
        let (t, d, p, m, ver) = (tmp.clone(), dir.clone(), part.clone(), module.to_string(), v.to_string());
        let built = tokio::task::spawn_blocking(move || zip::build(&t, &d, license, &m, &ver, &p))
            .await
            .map_err(|e| ModFetchError::Build(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        match built {
            Ok(()) => {
                std::fs::rename(&part, &dest)
                    .map_err(|source| ModFetchError::WorkDir { path: dest.clone(), source })?;
                Ok(Answer::File(dest))
            }
            Err(e) => {
                let _ = std::fs::remove_file(&part);
                match e {
                    zip::ZipError::Refused(why) => {
                        Err(ModFetchError::NotFound(format!("{module}@{v}: create zip: {why}")))
                    }
                    other => Err(ModFetchError::Build(other.to_string())),
                }
            }
        }
    }
}

/// `.mod`/`.zip` answer only for a version whose `.info` names exactly that version.
async fn exact(code: &CodeRepo<'_>, module: &str, v: &str) -> Result<(), RepoError> {
    if v != semver::canonical_version(v) {
        return Err(RepoError::NotFound(format!("{module}@{v}: version is not canonical")));
    }
    let r = code.resolve(v).await?;
    if r.version != v {
        return Err(RepoError::NotFound(format!("{module}@{v}: invalid version: resolves to {}", r.version)));
    }
    Ok(())
}

fn map_git<'a>(src: &'a Source<'_>) -> impl Fn(GitError) -> ModFetchError + 'a {
    move |e| match e {
        GitError::Timeout { .. } => ModFetchError::Timeout { upstream: src.upstream.to_string() },
        e if e.is_not_found() => ModFetchError::NotFound(format!("repository not found on upstream {}", src.upstream)),
        source => ModFetchError::Git { upstream: src.upstream.to_string(), source },
    }
}

fn map_repo<'a>(src: &'a Source<'_>) -> impl Fn(RepoError) -> ModFetchError + 'a {
    move |e| match e {
        RepoError::NotFound(m) => ModFetchError::NotFound(m),
        RepoError::Git(g) => map_git(src)(g),
    }
}

/// The version a GOPROXY `.info` answer names (`None`: not a `.info`).
pub fn info_version(info: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Info {
        #[serde(rename = "Version")]
        version: String,
    }
    serde_json::from_slice::<Info>(info).ok().map(|i| i.version)
}

fn info_json(layout: &Layout, r: &Resolved) -> String {
    let mut origin = serde_json::Map::new();
    origin.insert("VCS".into(), "git".into());
    if !layout.dir.is_empty() {
        origin.insert("Subdir".into(), layout.dir.clone().into());
    }
    origin.insert("Hash".into(), r.rev.hash.clone().into());
    if let Some(gr) = &r.rev.git_ref {
        origin.insert("Ref".into(), gr.clone().into());
    }
    serde_json::json!({ "Version": r.version, "Time": repo::rfc3339(r.rev.time), "Origin": origin }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_of_a_module_path() {
        assert_eq!(
            repo_for("corp.test/acme/r1.git/sub/v2"),
            Some(("corp.test/acme/r1.git".into(), "acme/r1.git".into()))
        );
        assert_eq!(
            repo_for("git.corp.test/acme/lib/tools"),
            Some(("git.corp.test/acme/lib".into(), "acme/lib.git".into()))
        );
        assert_eq!(repo_for("git.corp.test/acme"), None);
    }
}
