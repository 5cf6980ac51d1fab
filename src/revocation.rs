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

fn parse(v: &SecretData) -> HashMap<String, u64> {
    v.get("revoked").and_then(|s| serde_json::from_str(s.expose_secret()).ok()).unwrap_or_default()
}

impl Revocations {
    pub fn new(store: Arc<SecretStore>, prefix: &str) -> Self {
        Revocations { store, path: format!("{prefix}/revoked"), revoked: RwLock::new(HashMap::new()) }
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.revoked.read().expect("revocations poisoned").contains_key(jti)
    }

    /// Re-read the shared list.
    pub async fn sync(&self, now: u64) -> Result<(), SecretsError> {
        let mut list = match self.store.get(&self.path).await? {
            Some(v) => parse(&v.data),
            None => HashMap::new(),
        };
        list.retain(|_, exp| *exp > now);
        // Keep local entries not yet visible in the backend (a write in flight elsewhere).
        let mut mine = self.revoked.write().expect("revocations poisoned");
        mine.retain(|_, exp| *exp > now);
        mine.extend(list);
        Ok(())
    }

    /// Revoke `jti` (valid until `exp`) for every replica: check-and-set retry loop.
    pub async fn revoke(&self, jti: &str, exp: u64, now: u64) -> Result<(), SecretsError> {
        self.revoked.write().expect("revocations poisoned").insert(jti.to_string(), exp);
        for _ in 0..20 {
            let (mut list, cas) = match self.store.get(&self.path).await? {
                Some(v) => (parse(&v.data), Cas::Version(v.version)),
                None => (HashMap::new(), Cas::Create),
            };
            list.retain(|_, e| *e > now);
            list.insert(jti.to_string(), exp);
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
