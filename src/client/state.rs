//! Local session state: `$XDG_CACHE_HOME/gocred/session.json` (0600, written atomically), and
//! `session.lock`, held while a command reads, refreshes and rewrites the session so parallel
//! `go` runs do not stampede the broker.

use super::ClientError;
use super::signer::KeyRef;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    pub broker: String,
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    pub user: String,
    pub token: crate::proto::token::AccessToken,
    pub expires_at: u64,
    /// When the current token was obtained (refresh margin = a quarter of its lifetime, ≤ 2 min).
    #[serde(default)]
    pub obtained_at: u64,
    pub session_expires_at: u64,
    pub key_fingerprint: String,
    pub key: KeyRef,
    #[serde(default)]
    pub groups: Vec<String>,
    /// The last proof made for `token` (prefix: the broker origin + `/`), reused until near expiry.
    #[serde(default)]
    pub proof: Option<String>,
    #[serde(default)]
    pub proof_exp: u64,
    /// How the session was obtained: `ssh`, `oidc` (SSO login) or `ambient` (workload token
    /// exchanged without a login step). Decides how it is renewed once refresh is impossible.
    #[serde(default)]
    pub method: SessionMethod,
    /// The identity provider's refresh token and endpoints (`oidc` sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<IdpState>,
}

/// How a session was obtained, which decides how it is renewed once refresh is impossible.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionMethod {
    /// `gocred login --ssh`: log in again with the session's key.
    #[default]
    Ssh,
    /// `gocred login --oidc/--device`: the identity provider's refresh token, then an exchange.
    Oidc,
    /// A workload token exchanged without a login step: exchange the current one again.
    Ambient,
}

/// What an SSO session needs to get a new ID token without the user.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdpState {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for IdpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpState")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "[REDACTED]"))
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("broker", &self.broker)
            .field("user", &self.user)
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .field("key_fingerprint", &self.key_fingerprint)
            .finish_non_exhaustive()
    }
}

/// This process's user id (the owner of `/proc/self`).
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|p| p.uid()).unwrap_or(u32::MAX)
}

/// A shared state dir (sticky and world-writable, like the one `gocred agent --install` makes
/// in a pod whose containers run as different users) gets one private subdirectory per user.
fn per_user(dir: PathBuf) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&dir) {
        Ok(m) if m.permissions().mode() & 0o1002 == 0o1002 => dir.join(format!("uid-{}", my_uid())),
        _ => dir,
    }
}

/// Refuse a state directory or file that someone else could have planted or can change: not
/// owned by this user, writable by group or others, or a symlink. Missing is fine (it is
/// created private).
fn check_owned(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let refuse = |reason: String| ClientError::State { path: path.display().to_string(), reason };
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(refuse(e.to_string())),
    };
    let me = my_uid();
    if m.file_type().is_symlink() {
        return Err(refuse("is a symlink; refusing to use it (remove it)".into()));
    }
    if m.uid() != me {
        return Err(refuse(format!("owned by uid {}, not you (uid {me}); refusing to use it (remove it)", m.uid())));
    }
    if m.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by group or others (mode {:o}); refusing to use it (chmod go-w, or remove it)",
            m.mode() & 0o7777
        )));
    }
    Ok(())
}

/// `$GOCRED_STATE_DIR` (per user below it when it is a shared sticky dir), else `$XDG_CACHE_HOME/gocred` or `~/.cache/gocred`.
pub fn cache_dir() -> Result<PathBuf, ClientError> {
    if let Some(d) = std::env::var_os("GOCRED_STATE_DIR").filter(|v| !v.is_empty()) {
        return Ok(per_user(PathBuf::from(d)));
    }
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("gocred"))
        .ok_or(ClientError::State {
            path: "~/.cache/gocred".into(),
            reason: "neither XDG_CACHE_HOME nor HOME is set".into(),
        })
}

/// The current session's token, read without taking the lock (writes are atomic renames).
pub fn peek_token() -> Option<crate::proto::token::AccessToken> {
    let dir = cache_dir().ok()?;
    check_owned(&dir).ok()?;
    check_owned(&dir.join("session.json")).ok()?;
    let bytes = std::fs::read(dir.join("session.json")).ok()?;
    serde_json::from_slice::<Session>(&bytes).ok().map(|s| s.token)
}

/// The session store, holding the lock while it lives.
pub struct Store {
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Store {
    /// Open the state dir and take the lock (waits for other gocred processes).
    pub fn lock() -> Result<Store, ClientError> {
        Self::lock_at(&cache_dir()?)
    }

    pub fn lock_at(dir: &Path) -> Result<Store, ClientError> {
        let err = |reason: String| ClientError::State { path: dir.display().to_string(), reason };
        // Before anything is created or chmod-ed in it: someone else's directory (a planted
        // `uid-N/` in a shared dir) is refused, not adopted.
        check_owned(dir)?;
        crate::fsutil::ensure_private_dir(dir).map_err(|e| err(e.to_string()))?;
        check_owned(dir)?;
        check_owned(&dir.join("session.lock"))?;
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join("session.lock"))
            .map_err(|e| err(e.to_string()))?;
        f.lock().map_err(|e| err(format!("cannot lock: {e}")))?;
        Ok(Store { dir: dir.to_path_buf(), _lock: f })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// The state directory (0700).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ephemeral Ed25519 key (OpenSSH format, 0600) that OIDC and workload tokens are bound
    /// to: `<state>/<name>`, created on first use.
    pub fn ephemeral_key(&self, name: &str) -> Result<PathBuf, ClientError> {
        let path = self.dir.join(name);
        let err = |reason: String| ClientError::State { path: path.display().to_string(), reason };
        check_owned(&path)?;
        if path.exists() {
            return Ok(path);
        }
        let seed = zeroize::Zeroizing::new(crate::random_bytes::<32>());
        let keypair = ssh_key::private::Ed25519Keypair::from_seed(&seed);
        let key = ssh_key::PrivateKey::new(ssh_key::private::KeypairData::Ed25519(keypair), "gocred ephemeral key")
            .map_err(|e| err(e.to_string()))?;
        let pem = key.to_openssh(ssh_key::LineEnding::LF).map_err(|e| err(e.to_string()))?;
        crate::fsutil::write_private_atomic(&path, pem.as_bytes()).map_err(|e| err(e.to_string()))?;
        Ok(path)
    }

    pub fn load(&self) -> Result<Option<Session>, ClientError> {
        let p = self.path();
        check_owned(&p)?;
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| ClientError::State {
                path: p.display().to_string(),
                reason: format!("unreadable ({e}); run gocred logout"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ClientError::State { path: p.display().to_string(), reason: e.to_string() }),
        }
    }

    pub fn save(&self, s: &Session) -> Result<(), ClientError> {
        let p = self.path();
        let json = zeroize::Zeroizing::new(serde_json::to_vec_pretty(s).expect("session serialises"));
        crate::fsutil::write_private_atomic(&p, &json)
            .map_err(|e| ClientError::State { path: p.display().to_string(), reason: e.to_string() })
    }

    pub fn remove(&self) -> Result<(), ClientError> {
        match std::fs::remove_file(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ClientError::State { path: self.path().display().to_string(), reason: e.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chown_to_other(p: &Path) {
        std::os::unix::fs::chown(p, Some(4242), Some(4242))
            .expect("this test plants files owned by another user: it must run as root (the test suite does)");
    }

    #[test]
    fn a_state_dir_or_key_planted_by_someone_else_is_refused() {
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let mine = per_user(shared.path().to_path_buf());
        assert_eq!(mine, shared.path().join(format!("uid-{}", my_uid())));
        // Another user pre-creates my per-user dir with a key of theirs in it.
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("workload_ed25519"), "planted").unwrap();
        chown_to_other(&mine);
        let e = Store::lock_at(&mine).err().expect("refused").to_string();
        assert!(e.contains("owned by uid 4242, not you") && e.contains(&mine.display().to_string()), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
        // The dir was not adopted (no chmod, no lock file).
        assert!(!mine.join("session.lock").exists());

        // A group-writable state dir of mine.
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = Store::lock_at(&dir).err().expect("refused").to_string();
        assert!(e.contains("writable by group or others"), "{e}");

        // My own dir, but a key file planted in it by someone else.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = Store::lock_at(&dir).unwrap();
        std::fs::write(dir.join("sso_ed25519"), "planted").unwrap();
        chown_to_other(&dir.join("sso_ed25519"));
        let e = store.ephemeral_key("sso_ed25519").unwrap_err().to_string();
        assert!(e.contains("owned by uid 4242"), "{e}");
        // A session file of someone else.
        std::fs::write(dir.join("session.json"), "{}").unwrap();
        chown_to_other(&dir.join("session.json"));
        assert!(store.load().unwrap_err().to_string().contains("owned by uid 4242"));
        std::fs::remove_file(dir.join("session.json")).unwrap();
        // The normal path still works: a fresh key, created private.
        let k = store.ephemeral_key("workload_ed25519").unwrap();
        assert_eq!(std::fs::metadata(&k).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(store.load().unwrap().is_none());
    }
}
