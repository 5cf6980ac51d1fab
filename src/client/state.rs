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
    pub token: String,
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

/// `$XDG_CACHE_HOME/gocred` or `~/.cache/gocred`.
pub fn cache_dir() -> Result<PathBuf, ClientError> {
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
        crate::fsutil::ensure_private_dir(dir).map_err(|e| err(e.to_string()))?;
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

    pub fn load(&self) -> Result<Option<Session>, ClientError> {
        let p = self.path();
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
