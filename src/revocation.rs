//! The revocation list: `jti` → token expiry, kept in the secrets backend (`<prefix>/revoked`)
//! so every replica sharing it honours a revocation; each replica re-reads it every few seconds
//! and answers lookups from memory. Entries are dropped once the token has expired anyway.
//!
//! Must not: block request handling on the backend (lookups are in-memory only).

use crate::secrets::{Cas, SecretData, SecretStore, SecretsError};
use secrecy::{ExposeSecret, SecretString};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// How often replicas re-read the list (a revocation is honoured everywhere within this plus
/// one backend round trip — well inside 10 s).
pub const SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Revocations {
    store: Arc<SecretStore>,
    path: String,
    revoked: RwLock<HashMap<String, u64>>,
}

/// A record that does not parse is an error, never an empty list (which a writer would then
/// store back, un-revoking everything).
fn parse(path: &str, v: &SecretData) -> Result<HashMap<String, u64>, SecretsError> {
    match v.get("revoked") {
        None => Ok(HashMap::new()),
        Some(s) => serde_json::from_str(s.expose_secret())
            .map_err(|e| SecretsError::Malformed { path: path.into(), reason: format!("revocation list: {e}") }),
    }
}

impl Revocations {
    pub fn new(store: Arc<SecretStore>, prefix: &str) -> Self {
        Revocations { store, path: format!("{prefix}/revoked"), revoked: RwLock::new(HashMap::new()) }
    }

    /// Is this token, or its whole session, revoked?
    pub fn is_revoked(&self, jti: &str, sid: &str) -> bool {
        let r = self.revoked.read().expect("revocations poisoned");
        r.contains_key(jti) || r.contains_key(&format!("sid:{sid}"))
    }

    /// Re-read the shared list.
    pub async fn sync(&self, now: u64) -> Result<(), SecretsError> {
        let mut list = match self.store.get(&self.path).await? {
            Some(v) => parse(&self.path, &v.data)?,
            None => HashMap::new(),
        };
        list.retain(|_, exp| *exp > now);
        // Keep local entries not yet visible in the backend (a write in flight elsewhere).
        let mut mine = self.revoked.write().expect("revocations poisoned");
        mine.retain(|_, exp| *exp > now);
        mine.extend(list);
        Ok(())
    }

    /// Revoke token `jti` (valid until `exp`) and its session `sid` (until `session_end`) for
    /// every replica: check-and-set retry loop.
    pub async fn revoke(&self, jti: &str, exp: u64, sid: &str, session_end: u64, now: u64) -> Result<(), SecretsError> {
        let sid_key = format!("sid:{sid}");
        {
            let mut mine = self.revoked.write().expect("revocations poisoned");
            mine.insert(jti.to_string(), exp);
            mine.insert(sid_key.clone(), session_end);
        }
        for _ in 0..20 {
            let (mut list, cas) = match self.store.get(&self.path).await? {
                Some(v) => (parse(&self.path, &v.data)?, Cas::Version(v.version)),
                None => (HashMap::new(), Cas::Create),
            };
            list.retain(|_, e| *e > now);
            list.insert(jti.to_string(), exp);
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
}
