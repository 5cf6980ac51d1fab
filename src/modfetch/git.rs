//! Running `git` against one bare mirror per repository, the way the go command runs it
//! (`cmd/go/internal/modfetch/codehost/git.go`): `ls-remote -q`, `fetch -f` of heads and tags,
//! `cat-file blob`, `log -n1 --format=%H %ct`, `for-each-ref --merged`, `merge-base
//! --is-ancestor`, and `archive --format=zip` with `export-subst`/`export-ignore` disabled.
//!
//! The upstream credential reaches git only through a git config file in the broker's private
//! data dir (0600, `http.<url>.extraHeader`), named by `GIT_CONFIG_GLOBAL`: never on a command
//! line, never in an environment variable. No system or user git config is read; git never
//! prompts.
//!
//! Must not: interpret versions (that is [`super::repo`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git {op} did not finish within {secs}s")]
    Timeout { op: &'static str, secs: u64 },
    /// `stderr` is git's own last line (it never holds the credential: that is in a header).
    #[error("git {op} failed: {stderr}")]
    Failed { op: &'static str, stderr: String, not_found: bool },
    #[error("cannot prepare the git mirror {}: {source}", path.display())]
    Mirror {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl GitError {
    /// Did the remote say the repository (or the object) does not exist?
    pub fn is_not_found(&self) -> bool {
        matches!(self, GitError::Failed { not_found: true, .. })
    }

    /// Worth another try: a timeout, or git failing for a reason other than a missing
    /// repository or a refused credential (a reset connection, a 5xx, a stalled transfer).
    pub fn is_transient(&self) -> bool {
        match self {
            GitError::Timeout { .. } => true,
            GitError::Failed { stderr, not_found, .. } => !not_found && !refused_credential(stderr),
            GitError::Spawn(_) | GitError::Mirror { .. } => false,
        }
    }

    /// What a client may be told: the failed operation and, when git's line says so, that the
    /// upstream refused the credential — never git's own line (it can name internal URLs and
    /// paths; it goes to the broker log).
    pub fn summary(&self) -> String {
        match self {
            GitError::Spawn(_) => "cannot run git on the broker".into(),
            GitError::Timeout { op, secs } => format!("git {op} did not finish within {secs}s"),
            GitError::Failed { op, stderr, .. } if refused_credential(stderr) => {
                format!("git {op}: the upstream refused the broker's credential")
            }
            GitError::Failed { op, .. } => format!("git {op} failed"),
            GitError::Mirror { .. } => "cannot prepare the git mirror on the broker".into(),
        }
    }
}

/// Does git's line say the server rejected the credential (HTTP 401/403)?
fn refused_credential(stderr: &str) -> bool {
    const MARKERS: &[&str] =
        &["returned error: 401", "returned error: 403", "authentication failed", "could not read username"];
    let l = stderr.to_ascii_lowercase();
    MARKERS.iter().any(|m| l.contains(m))
}

/// The refs `git ls-remote` reports (annotated tags peeled), as the go command keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    pub head: Option<String>,
    /// `refs/heads/<name>` and `refs/tags/<name>` → commit hash.
    pub map: BTreeMap<String, String>,
}

impl Refs {
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().filter_map(|(k, v)| k.strip_prefix("refs/tags/").map(|t| (t, v.as_str())))
    }
}

/// One bare mirror of one remote repository.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub dir: PathBuf,
    pub remote: String,
    /// The git config file holding the credential header (or an empty one).
    pub config: PathBuf,
    pub timeout: Duration,
    pub objects: std::sync::Arc<ObjectCache>,
}

/// What the mirror already said about immutable objects — a commit by its full hash, a small
/// file at a commit — so a `.info`/`.mod`/`.zip` sequence asks git once, not once per request.
#[derive(Debug, Default)]
pub struct ObjectCache {
    commits: std::sync::Mutex<HashMap<String, i64>>,
    files: std::sync::Mutex<FileMap>,
}

/// `(commit, path)` → the file's bytes, or `None`: it does not exist there.
type FileMap = HashMap<(String, String), Option<Vec<u8>>>;

/// Files kept in [`ObjectCache`]: go.mod/LICENSE-sized ones, a bounded number.
const CACHED_FILE_MAX: usize = 256 << 10;
const CACHED_FILES: usize = 2048;

/// A full object name: 40 (SHA-1) or 64 (SHA-256) lower-case hex digits.
fn full_hash(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl ObjectCache {
    fn commit(&self, hash: &str) -> Option<i64> {
        self.commits.lock().expect("object cache poisoned").get(hash).copied()
    }

    fn file(&self, commit: &str, path: &str) -> Option<Option<Vec<u8>>> {
        let files = self.files.lock().expect("object cache poisoned");
        files.get(&(commit.to_string(), path.to_string())).cloned()
    }

    fn keep_file(&self, commit: &str, path: &str, data: &Option<Vec<u8>>) {
        if !full_hash(commit) || data.as_ref().is_some_and(|d| d.len() > CACHED_FILE_MAX) {
            return;
        }
        let mut files = self.files.lock().expect("object cache poisoned");
        if files.len() >= CACHED_FILES {
            files.clear();
        }
        files.insert((commit.to_string(), path.to_string()), data.clone());
    }
}

/// A line of stderr that says "this does not exist" (remote 404, unknown object or path).
fn says_not_found(stderr: &str) -> bool {
    const MARKERS: &[&str] = &[
        "not found",
        "does not exist",
        "did not match any files",
        "repository not found",
        "unknown revision",
        "bad revision",
        "invalid object name",
        "not a valid object name",
        "could not get object info",
        "exists on disk, but not in",
        "returned error: 404",
        "returned error: 410",
    ];
    let lower = stderr.to_ascii_lowercase();
    MARKERS.iter().any(|m| lower.contains(m))
}

impl Mirror {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
            .env("GIT_DIR", &self.dir)
            .env("HOME", self.dir.parent().unwrap_or(&self.dir))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", &self.config)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GCM_INTERACTIVE", "never")
            .env("GIT_ASKPASS", "")
            .env("SSH_ASKPASS", "")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c
    }

    async fn run(&self, op: &'static str, args: &[&str]) -> Result<Vec<u8>, GitError> {
        self.run_within(op, args, self.timeout).await
    }

    /// A transfer (fetch, archive) may take long for a big repository: git itself aborts one
    /// that stalls (`http.lowSpeedTime` = 4 × the upstream timeout, in the config file); this is
    /// only the overall bound.
    fn long(&self) -> Duration {
        (self.timeout * 20).max(Duration::from_secs(600))
    }

    async fn run_within(&self, op: &'static str, args: &[&str], limit: Duration) -> Result<Vec<u8>, GitError> {
        let mut c = self.command(args);
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let out = tokio::time::timeout(limit, c.output())
            .await
            .map_err(|_| GitError::Timeout { op, secs: limit.as_secs() })?
            .map_err(GitError::Spawn)?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        Err(GitError::Failed { op, not_found: says_not_found(&stderr), stderr: line })
    }

    /// Create the bare mirror (once) with the go command's attribute override.
    pub async fn init(&self) -> Result<(), GitError> {
        let fail = |source| GitError::Mirror { path: self.dir.clone(), source };
        if !self.dir.join("HEAD").exists() {
            crate::fsutil::ensure_private_dir(&self.dir).map_err(fail)?;
            self.run("init", &["init", "--bare", "-q"]).await?;
        }
        let attrs = self.dir.join("info/attributes");
        std::fs::create_dir_all(self.dir.join("info")).map_err(fail)?;
        if std::fs::read(&attrs).map(|b| !b.ends_with(b"\n* -export-subst -export-ignore\n")).unwrap_or(true) {
            std::fs::write(&attrs, "\n* -export-subst -export-ignore\n").map_err(fail)?;
        }
        Ok(())
    }

    /// `git ls-remote -q <remote>`: HEAD, branches, tags (peeled).
    pub async fn ls_remote(&self) -> Result<Refs, GitError> {
        let out = self.run("ls-remote", &["ls-remote", "-q", "--end-of-options", &self.remote]).await?;
        let mut refs = Refs::default();
        let mut peeled = Vec::new();
        for line in String::from_utf8_lossy(&out).lines() {
            let Some((hash, name)) = line.split_once('\t') else { continue };
            if !full_hash(hash) {
                continue;
            }
            if name == "HEAD" {
                refs.head = Some(hash.to_string());
            } else if let Some(tag) = name.strip_suffix("^{}") {
                peeled.push((tag.to_string(), hash.to_string()));
            } else if name.starts_with("refs/heads/") || name.starts_with("refs/tags/") {
                refs.map.insert(name.to_string(), hash.to_string());
            }
        }
        for (tag, hash) in peeled {
            refs.map.insert(tag, hash);
        }
        Ok(refs)
    }

    /// Fetch every branch and tag with full history.
    pub async fn fetch(&self) -> Result<(), GitError> {
        self.run_within(
            "fetch",
            &[
                "fetch",
                "-f",
                "-q",
                "--end-of-options",
                &self.remote,
                "refs/heads/*:refs/heads/*",
                "refs/tags/*:refs/tags/*",
            ],
            self.long(),
        )
        .await
        .map(|_| ())
    }

    pub async fn has_commit(&self, hash: &str) -> bool {
        if self.objects.commit(hash).is_some() {
            return true;
        }
        if hash.starts_with('-') || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return false;
        }
        self.run("cat-file", &["cat-file", "-e", &format!("{hash}^{{commit}}")]).await.is_ok()
    }

    /// `git log -n1 --format=%H %ct`: the full hash and committer time (Unix seconds).
    pub async fn commit_info(&self, rev: &str) -> Result<(String, i64), GitError> {
        if let Some(t) = self.objects.commit(rev) {
            return Ok((rev.to_string(), t));
        }
        let out = self
            .run(
                "log",
                &[
                    "-c",
                    "log.showsignature=false",
                    "log",
                    "--no-decorate",
                    "-n1",
                    "--format=format:%H %ct",
                    "--end-of-options",
                    rev,
                    "--",
                ],
            )
            .await?;
        let text = String::from_utf8_lossy(&out);
        let mut it = text.split_whitespace();
        match (it.next(), it.next().and_then(|t| t.parse().ok())) {
            (Some(h), Some(t)) => {
                if full_hash(h) {
                    self.objects.commits.lock().expect("object cache poisoned").insert(h.to_string(), t);
                }
                Ok((h.to_string(), t))
            }
            _ => Err(GitError::Failed { op: "log", stderr: format!("unexpected output for {rev}"), not_found: true }),
        }
    }

    /// The raw blob `<commit>:<path>`, `None` when it does not exist (any failure, as the go
    /// command treats it). Bounded by `max` bytes.
    pub async fn read_file(&self, commit: &str, path: &str, max: u64) -> Result<Option<Vec<u8>>, GitError> {
        if let Some(known) = self.objects.file(commit, path) {
            return Ok(known);
        }
        let data = self.read_file_uncached(commit, path, max).await?;
        self.objects.keep_file(commit, path, &data);
        Ok(data)
    }

    async fn read_file_uncached(&self, commit: &str, path: &str, max: u64) -> Result<Option<Vec<u8>>, GitError> {
        let spec = format!("{commit}:{path}");
        let kind = self.run("cat-file", &["cat-file", "-t", "--end-of-options", &spec]).await;
        if !matches!(kind.as_deref(), Ok(b"blob\n")) {
            return Ok(None);
        }
        let size = self.run("cat-file", &["cat-file", "-s", "--end-of-options", &spec]).await?;
        let size: u64 = String::from_utf8_lossy(&size).trim().parse().unwrap_or(u64::MAX);
        if size > max {
            return Err(GitError::Failed {
                op: "cat-file",
                stderr: format!("{path} is larger than {max} bytes"),
                not_found: false,
            });
        }
        Ok(Some(self.run("cat-file", &["cat-file", "blob", "--end-of-options", &spec]).await?))
    }

    /// Tags (under `refs/tags/`) reachable from `commit`, names without `refs/tags/`.
    pub async fn tags_merged(&self, commit: &str) -> Result<Vec<String>, GitError> {
        let out = self
            .run("for-each-ref", &["for-each-ref", "--format=%(refname)", &format!("--merged={commit}"), "refs/tags"])
            .await?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.strip_prefix("refs/tags/"))
            .map(String::from)
            .collect())
    }

    pub async fn is_ancestor(&self, ancestor: &str, commit: &str) -> Result<bool, GitError> {
        match self.run("merge-base", &["merge-base", "--is-ancestor", "--", ancestor, commit]).await {
            Ok(_) => Ok(true),
            Err(GitError::Failed { stderr, .. }) if stderr.is_empty() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `git archive --format=zip` of `commit` (limited to `subdir`) into `dest`; `Ok(false)`
    /// when the subdirectory does not exist.
    pub async fn archive(&self, commit: &str, subdir: &str, dest: &Path, max: u64) -> Result<bool, GitError> {
        let file = std::fs::File::create(dest).map_err(|source| GitError::Mirror { path: dest.into(), source })?;
        let mut args = vec![
            "-c",
            "core.autocrlf=input",
            "-c",
            "core.eol=lf",
            "archive",
            "--format=zip",
            "--prefix=prefix/",
            "--end-of-options",
            commit,
        ];
        if !subdir.is_empty() {
            args.push(subdir);
        }
        let mut c = self.command(&args);
        // `output()` would replace stdout with a pipe: spawn, so git writes straight to the file.
        c.stdout(Stdio::from(file)).stderr(Stdio::piped()).kill_on_drop(true);
        let child = c.spawn().map_err(GitError::Spawn)?;
        let out = tokio::time::timeout(self.long(), child.wait_with_output())
            .await
            .map_err(|_| GitError::Timeout { op: "archive", secs: self.long().as_secs() })?
            .map_err(GitError::Spawn)?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if stderr.contains("did not match any files") {
                return Ok(false);
            }
            let line = stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
            return Err(GitError::Failed { op: "archive", stderr: line, not_found: false });
        }
        let len = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
        if len > max {
            return Err(GitError::Failed {
                op: "archive",
                stderr: "downloaded zip file too large".into(),
                not_found: false,
            });
        }
        Ok(true)
    }
}

/// The git config file carrying `Authorization: <header>` for requests under `url`.
pub fn credential_config(url: &str, header: Option<&str>, stall: Duration) -> Option<String> {
    let mut cfg = String::from(
        "[protocol]\n\tallow = never\n[protocol \"https\"]\n\tallow = always\n[protocol \"http\"]\n\tallow = always\n",
    );
    // A transfer that sends nothing for `stall` is a stalled one (servers that build a big pack
    // before sending a byte are quiet for a while, hence not the plain upstream timeout).
    // No redirects: the header is scoped to the upstream's URL and must not follow one elsewhere.
    cfg.push_str(&format!(
        "[http]\n\tfollowRedirects = false\n\tlowSpeedLimit = 1\n\tlowSpeedTime = {}\n",
        stall.as_secs().max(1)
    ));
    if let Some(h) = header {
        if h.contains(['\n', '\r', '"', '\\']) || url.contains(['\n', '\r', '"', '\\', ']']) {
            return None;
        }
        cfg.push_str(&format!("[http \"{}/\"]\n\textraHeader = \"Authorization: {h}\"\n", url.trim_end_matches('/')));
    }
    Some(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_summary_never_carries_gits_line() {
        let f = |stderr: &str| GitError::Failed { op: "ls-remote", stderr: stderr.into(), not_found: false };
        let s = f("fatal: unable to access 'http://10.0.0.7:3000/acme/lib.git/': Failed to connect").summary();
        assert_eq!(s, "git ls-remote failed");
        let s = f("fatal: unable to access 'http://10.0.0.7/x/': The requested URL returned error: 403").summary();
        assert_eq!(s, "git ls-remote: the upstream refused the broker's credential");
        let m = GitError::Mirror { path: "/var/lib/gocred/store/git/ab".into(), source: std::io::Error::other("x") };
        assert!(!m.summary().contains("/var/lib"));
    }

    #[test]
    fn credential_config_is_scoped_and_refuses_injection() {
        let c = credential_config("https://git.corp.test/base", Some("Basic abc="), Duration::from_secs(30)).unwrap();
        assert!(c.contains("followRedirects = false"), "{c}");
        assert!(c.contains("[http \"https://git.corp.test/base/\"]\n\textraHeader = \"Authorization: Basic abc=\"\n"));
        assert!(c.contains("allow = never"), "file://, ext:: and ssh transports are off");
        assert!(credential_config("https://x", Some("Bearer a\"\n[core]\n"), Duration::from_secs(1)).is_none());
        assert!(!credential_config("https://x", None, Duration::from_secs(1)).unwrap().contains("extraHeader"));
        assert!(says_not_found("fatal: repository 'http://x/a/' not found"));
        assert!(!says_not_found("fatal: unable to access 'http://x/': Failed to connect"));
    }
}
