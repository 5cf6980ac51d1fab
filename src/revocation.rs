//! The revocation list: session id → session end, kept in the secrets backend
//! (`<prefix>/revoked`) so every replica sharing it honours a revocation; each replica re-reads
//! it every few seconds and answers lookups from memory. Revoking a token revokes its session
//! (every token of one login), so one entry per session is enough; an entry is dropped once the
//! session has ended anyway, and expired entries are pruned on every write. A replica parses the
//! record only when its version changed.
//!
//! Must not: block request handling on the backend (lookups are in-memory only); treat an
//! unreadable record as an empty one.

use crate::secrets::{Cas, SecretData, SecretStore, SecretsError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// How often replicas re-read the list (a revocation is honoured everywhere within this plus
/// one backend round trip — well inside 10 s).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Revocations {
    store: Arc<SecretStore>,
    path: String,
    revoked: RwLock<HashMap<String, u64>>,
    /// Version of the record last parsed (0: none yet).
    seen_version: Mutex<u64>,
}

/// A record that does not parse is an error, never an empty list (which a writer would then
/// store back, un-revoking everything). Keys are `sid:<session id>` (older records may also hold
/// bare token ids; they are honoured until they expire).
fn parse(path: &str, v: &SecretData) -> Result<HashMap<String, u64>, SecretsError> {
    match v.get("revoked") {
        None => Ok(HashMap::new()),
        Some(s) => serde_json::from_str(s.expose_secret())
            .map_err(|e| SecretsError::Malformed { path: path.into(), reason: format!("revocation list: {e}") }),
    }
}

impl Revocations {
    pub fn new(store: Arc<SecretStore>, prefix: &str) -> Self {
        Revocations {
            store,
            path: format!("{prefix}/revoked"),
            revoked: RwLock::new(HashMap::new()),
            seen_version: Mutex::new(0),
        }
    }

    /// Make sure the shared record exists, so that replicas polling it see a normal answer, not
    /// "not found" (an expected state that backends' clients report loudly).
    pub async fn ensure_record(&self) -> Result<(), SecretsError> {
        if self.store.get(&self.path).await?.is_some() {
            return Ok(());
        }
        let empty = SecretData::single("revoked", SecretString::from("{}".to_string()));
        match self.store.put(&self.path, &empty, Cas::Create).await {
            Ok(_) | Err(SecretsError::CasConflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Is this token, or its whole session, revoked?
    pub fn is_revoked(&self, jti: &str, sid: &str) -> bool {
        let r = self.revoked.read().expect("revocations poisoned");
        r.contains_key(&format!("sid:{sid}")) || r.contains_key(jti)
    }

    /// Number of entries held in memory (for tests and metrics).
    pub fn len(&self) -> usize {
        self.revoked.read().expect("revocations poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-read the shared list; parses it only when its version changed.
    pub async fn sync(&self, now: u64) -> Result<(), SecretsError> {
        let list = match self.store.get(&self.path).await? {
            Some(v) => {
                if *self.seen_version.lock().expect("revocations poisoned") == v.version {
                    None
                } else {
                    let list = parse(&self.path, &v.data)?;
                    *self.seen_version.lock().expect("revocations poisoned") = v.version;
                    Some(list)
                }
            }
            None => Some(HashMap::new()),
        };
        // Keep local entries not yet visible in the backend (a write in flight elsewhere).
        let mut mine = self.revoked.write().expect("revocations poisoned");
        mine.retain(|_, exp| *exp > now);
        if let Some(list) = list {
            mine.extend(list.into_iter().filter(|(_, exp)| *exp > now));
        }
        Ok(())
    }

    /// Revoke session `sid` (which ends at `session_end`, so no token of it outlives that) for
    /// every replica: check-and-set retry loop, pruning ended sessions on the way.
    pub async fn revoke(&self, sid: &str, session_end: u64, now: u64) -> Result<(), SecretsError> {
        let sid_key = format!("sid:{sid}");
        self.revoked.write().expect("revocations poisoned").insert(sid_key.clone(), session_end);
        for _ in 0..20 {
            let (mut list, cas) = match self.store.get(&self.path).await? {
                Some(v) => (parse(&self.path, &v.data)?, Cas::Version(v.version)),
                None => (HashMap::new(), Cas::Create),
            };
            list.retain(|_, e| *e > now);
            list.insert(sid_key.clone(), session_end);
            let json = serde_json::to_string(&list).expect("a map serialises");
            match self.store.put(&self.path, &SecretData::single("revoked", SecretString::from(json)), cas).await {
                Ok(_) => return Ok(()),
                Err(SecretsError::CasConflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(SecretsError::CasConflict { path: self.path.clone() })
    }

    /// The stored record's size in bytes (for tests: it must stay bounded).
    pub async fn stored_len(&self) -> Result<usize, SecretsError> {
        Ok(match self.store.get(&self.path).await? {
            Some(v) => v.data.get("revoked").map(|s| s.expose_secret().len()).unwrap_or(0),
            None => 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store(dir: &std::path::Path) -> Arc<SecretStore> {
        let cfg = crate::config::FileBackendConfig {
            path: dir.join("s.enc"),
            key_file: Some(dir.join("k")),
            create_key: true,
        };
        Arc::new(SecretStore::File(Box::new(crate::secrets::file::FileStore::open(&cfg).await.unwrap())))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_entry_per_session_ended_sessions_pruned_on_write_and_seen_by_replicas() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        let (a, b) = (Revocations::new(s.clone(), "p"), Revocations::new(s.clone(), "p"));
        a.ensure_record().await.unwrap();
        assert!(s.get("p/revoked").await.unwrap().is_some(), "the record exists before any revocation");
        for i in 0..100u64 {
            // Sessions ending at 1000+i; revoked at time 1000+i, so all earlier ones have ended.
            a.revoke(&format!("s{i}"), 1001 + i, 1000 + i).await.unwrap();
        }
        let stored = a.stored_len().await.unwrap();
        assert!(stored < 64, "ended sessions are pruned on write: {stored} bytes");
        b.sync(1099).await.unwrap();
        assert!(b.is_revoked("any-jti", "s99"), "a replica honours the revocation");
        assert!(!b.is_revoked("any-jti", "s1"));
        assert_eq!(b.len(), 1);
        // Nothing changed: the replica does not re-parse (the in-memory list is simply kept).
        b.sync(1099).await.unwrap();
        assert!(b.is_revoked("x", "s99"));
        // Past the session's end the entry is gone everywhere.
        b.sync(1101).await.unwrap();
        assert!(b.is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreadable_record_is_an_error_not_an_empty_list() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path()).await;
        s.put("p/revoked", &SecretData::single("revoked", SecretString::from("not json".to_string())), Cas::Create)
            .await
            .unwrap();
        let r = Revocations::new(s, "p");
        assert!(matches!(r.sync(1).await, Err(SecretsError::Malformed { .. })));
        assert!(matches!(r.revoke("s", 10, 1).await, Err(SecretsError::Malformed { .. })));
    }
}
