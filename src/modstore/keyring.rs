//! The store's data keys, in the secrets backend at `<prefix>/store-keys`: fields `k1`, `k2`, …
//! (base64, 32 bytes each) and `current` (the id new objects are sealed under). Every replica
//! using the backend shares them; the first creates the record (check-and-set) — but only for
//! an empty store: a lost record is an error to restore from backup, never silently replaced.
//! Rotation adds a key and moves `current`: old objects keep opening under the key id in their
//! head. An unknown key id re-reads the record at most once per [`REREAD`] per id.
//!
//! Must not: log or format a key.

use super::StoreError;
use crate::secrets::{Cas, SecretData, SecretStore};
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

type Key = Arc<Zeroizing<[u8; 32]>>;

pub struct Keyring {
    pub(super) secrets: Arc<SecretStore>,
    path: String,
    inner: RwLock<(String, BTreeMap<String, Key>)>,
    /// Unknown ids, with when the record was last re-read for them.
    pub(super) unknown: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

/// How often an unknown key id may cause a re-read of the record.
pub const REREAD: std::time::Duration = std::time::Duration::from_secs(30);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn parse(path: &str, data: &SecretData) -> Result<(String, BTreeMap<String, Key>), StoreError> {
    let bad = |reason: String| StoreError::Keys { path: path.into(), reason };
    let current =
        data.get("current").map(|c| c.expose_secret().to_string()).ok_or_else(|| bad("no `current`".into()))?;
    let mut keys = BTreeMap::new();
    for (id, v) in &data.0 {
        if id == "current" {
            continue;
        }
        let raw = Zeroizing::new(b64().decode(v.expose_secret()).map_err(|_| bad(format!("key {id} is not base64")))?);
        let mut k = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return Err(bad(format!("key {id} is not 32 bytes")));
        }
        k.copy_from_slice(&raw);
        keys.insert(id.clone(), Arc::new(k));
    }
    if !keys.contains_key(&current) {
        return Err(bad(format!("`current` names {current}, which is not in the record")));
    }
    Ok((current, keys))
}

fn fresh_key() -> SecretString {
    SecretString::from(b64().encode(Zeroizing::new(crate::random_bytes::<32>()).as_slice()))
}

impl Keyring {
    /// Read the record; `create`: make it (one key, `k1`) when no replica has yet — only for a
    /// store that holds no objects.
    pub async fn open(secrets: Arc<SecretStore>, prefix: &str, create: bool) -> Result<Keyring, StoreError> {
        let path = format!("{prefix}/store-keys");
        let read = Self::read(&secrets, &path, create).await?;
        Ok(Keyring { secrets, path, inner: RwLock::new(read), unknown: Default::default() })
    }

    async fn read(
        secrets: &SecretStore,
        path: &str,
        create: bool,
    ) -> Result<(String, BTreeMap<String, Key>), StoreError> {
        for _ in 0..10 {
            if let Some(v) = secrets.get(path).await.map_err(StoreError::ReadKeys)? {
                return parse(path, &v.data);
            }
            if !create {
                return Err(StoreError::Keys {
                    path: path.into(),
                    reason: "the record is missing but the store holds objects sealed under it; restore it \
                             from a backup of the secrets backend (a new key cannot open them)"
                        .into(),
                });
            }
            let mut m = BTreeMap::new();
            m.insert("current".to_string(), SecretString::from("k1"));
            m.insert("k1".to_string(), fresh_key());
            match secrets.put(path, &SecretData(m), Cas::Create).await {
                Ok(_) => continue,
                Err(crate::secrets::SecretsError::CasConflict { .. }) => continue,
                Err(e) => return Err(StoreError::ReadKeys(e)),
            }
        }
        Err(StoreError::Keys { path: path.into(), reason: "the record kept changing".into() })
    }

    /// The key new objects are sealed under, and its id.
    pub fn current(&self) -> (String, Key) {
        let g = self.inner.read().expect("keyring poisoned");
        (g.0.clone(), g.1[&g.0].clone())
    }

    /// The key with this id, re-reading the record once when it is unknown (another replica
    /// rotated).
    pub async fn get(&self, id: &str) -> Result<Key, StoreError> {
        if let Some(k) = self.inner.read().expect("keyring poisoned").1.get(id) {
            return Ok(k.clone());
        }
        let no_key = || StoreError::Keys { path: self.path.clone(), reason: format!("no key {id}") };
        {
            let mut u = self.unknown.lock().expect("keyring poisoned");
            if u.get(id).is_some_and(|at| at.elapsed() < REREAD) {
                return Err(no_key());
            }
            if u.len() > 1000 {
                u.clear();
            }
            u.insert(id.to_string(), std::time::Instant::now());
        }
        let fresh = Self::read(&self.secrets, &self.path, false).await?;
        let mut g = self.inner.write().expect("keyring poisoned");
        *g = fresh;
        g.1.get(id).cloned().ok_or_else(no_key)
    }

    /// Re-read the record; the new current id when it changed.
    pub async fn refresh(&self) -> Result<Option<String>, StoreError> {
        let fresh = Self::read(&self.secrets, &self.path, false).await?;
        let mut g = self.inner.write().expect("keyring poisoned");
        let changed = (g.0 != fresh.0).then(|| fresh.0.clone());
        *g = fresh;
        Ok(changed)
    }

    /// Add a key and make it current; returns its id. Objects sealed before keep their key.
    pub async fn rotate(&self) -> Result<String, StoreError> {
        for _ in 0..10 {
            let v = self
                .secrets
                .get(&self.path)
                .await
                .map_err(StoreError::ReadKeys)?
                .ok_or_else(|| StoreError::Keys { path: self.path.clone(), reason: "record vanished".into() })?;
            let (_, keys) = parse(&self.path, &v.data)?;
            let n = keys.keys().filter_map(|k| k.strip_prefix('k')?.parse::<u64>().ok()).max().unwrap_or(0) + 1;
            let id = format!("k{n}");
            let mut data = v.data.clone();
            data.0.insert(id.clone(), fresh_key());
            data.0.insert("current".into(), SecretString::from(id.clone()));
            match self.secrets.put(&self.path, &data, Cas::Version(v.version)).await {
                Ok(_) => {
                    *self.inner.write().expect("keyring poisoned") = parse(&self.path, &data)?;
                    return Ok(id);
                }
                Err(crate::secrets::SecretsError::CasConflict { .. }) => continue,
                Err(e) => return Err(StoreError::ReadKeys(e)),
            }
        }
        Err(StoreError::Keys { path: self.path.clone(), reason: "the record kept changing".into() })
    }
}
