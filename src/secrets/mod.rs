//! Secrets backends behind one interface: the embedded AES-256-GCM [`file`] store and
//! Vault/OpenBao KV v2 ([`vault`]). Records are small maps of string → secret string, versioned
//! so writers can use check-and-set (first writer wins, losers re-read).
//!
//! Must not: log, format or return secret values anywhere but to the caller that asked; every
//! value is a [`secrecy::SecretString`] with a redacted `Debug`.

pub mod file;
pub mod vault;

use secrecy::SecretString;
use std::collections::BTreeMap;

/// A failed secrets-backend operation. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets file {path}: cannot read: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets file {path}: cannot write: {source}")]
    WriteFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secrets file {path}: not a gocred secrets file ({reason})")]
    CorruptFile { path: String, reason: String },
    #[error(
        "secrets file {path}: wrong key (GOCRED_FILE_KEY or the key file does not match the key this file was written with)"
    )]
    WrongKey { path: String },
    #[error("secrets file {path}: record `{record}` failed authentication: the file was modified or corrupted")]
    Tampered { path: String, record: String },
    #[error("secrets file key: {reason}")]
    Key { reason: String },
    #[error("check-and-set conflict at `{path}`: another writer changed it first")]
    CasConflict { path: String },
    #[error("vault {address}: cannot {op} `{path}`: {reason}")]
    Vault { address: String, op: &'static str, path: String, reason: String },
    #[error("vault {address}: login ({method}) failed: {reason}")]
    VaultLogin { address: String, method: &'static str, reason: String },
    #[error("vault {address}: unreachable or unhealthy: {reason}")]
    VaultHealth { address: String, reason: String },
    #[error("record `{path}` holds malformed data: {reason}")]
    Malformed { path: String, reason: String },
}

impl SecretsError {
    /// Vault/OpenBao could not be reached, or answered 5xx (sealed, standby, overloaded): worth
    /// waiting for, unlike a refusal (4xx), a bad setting or a local file problem.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SecretsError::Vault { reason, .. }
            | SecretsError::VaultLogin { reason, .. }
            | SecretsError::VaultHealth { reason, .. } => {
                let l = reason.to_ascii_lowercase();
                // An untrusted or invalid certificate is a setting to fix, not an outage.
                let tls = ["certificate", "x509", "unknownissuer", "tls handshake", "invalid peer"]
                    .iter()
                    .any(|w| l.contains(w));
                let transport = !l.starts_with("http ")
                    && ["request", "connect", "timed out", "timeout", "dns", "reset", "broken pipe"]
                        .iter()
                        .any(|w| l.contains(w));
                (transport && !tls) || l.starts_with("http 5")
            }
            _ => false,
        }
    }
}

/// The contents of one record: field name → secret value.
#[derive(Clone, Default)]
pub struct SecretData(pub BTreeMap<String, SecretString>);

impl std::fmt::Debug for SecretData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "[REDACTED]"))).finish()
    }
}

impl SecretData {
    pub fn single(field: &str, value: SecretString) -> Self {
        let mut m = BTreeMap::new();
        m.insert(field.to_string(), value);
        SecretData(m)
    }
    pub fn get(&self, field: &str) -> Option<&SecretString> {
        self.0.get(field)
    }
    /// Plain JSON object for the wire/disk. Callers must not log it.
    pub(crate) fn expose_json(&self) -> serde_json::Map<String, serde_json::Value> {
        use secrecy::ExposeSecret;
        self.0.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose_secret().to_string()))).collect()
    }
    pub(crate) fn from_json(v: serde_json::Map<String, serde_json::Value>) -> Self {
        let mut m = BTreeMap::new();
        for (k, v) in v {
            match v {
                serde_json::Value::String(s) => {
                    m.insert(k, SecretString::from(s));
                }
                other => {
                    // Non-string values (numbers, bools) are kept as their JSON text.
                    m.insert(k, SecretString::from(other.to_string()));
                }
            }
        }
        SecretData(m)
    }
}

/// A record and the version it was read at (for check-and-set).
#[derive(Debug, Clone)]
pub struct Versioned {
    pub data: SecretData,
    pub version: u64,
}

/// Write precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Write whatever is there.
    Any,
    /// Only if the record does not exist yet.
    Create,
    /// Only if the record is still at this version.
    Version(u64),
}

/// The secrets backend in use. An enum, not a trait object: there are exactly two backends and
/// async fns stay simple.
pub enum SecretStore {
    File(Box<file::FileStore>),
    Vault(Box<vault::VaultStore>),
}

impl SecretStore {
    /// Open the backend named by `config` (logging in to Vault if needed).
    pub async fn open(config: &crate::config::SecretsConfig) -> Result<Self, SecretsError> {
        match &config.backend {
            crate::config::BackendConfig::File(f) => Ok(SecretStore::File(Box::new(file::FileStore::open(f).await?))),
            crate::config::BackendConfig::Vault(v) => {
                Ok(SecretStore::Vault(Box::new(vault::VaultStore::open(v).await?)))
            }
        }
    }

    /// Read a record; `None` when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Versioned>, SecretsError> {
        match self {
            SecretStore::File(s) => s.get(path).await,
            SecretStore::Vault(s) => s.get(path).await,
        }
    }

    /// Write a record under a check-and-set precondition; returns the new version.
    pub async fn put(&self, path: &str, data: &SecretData, cas: Cas) -> Result<u64, SecretsError> {
        match self {
            SecretStore::File(s) => s.put(path, data, cas).await,
            SecretStore::Vault(s) => s.put(path, data, cas).await,
        }
    }

    /// Record paths at or below `prefix` (every record with `""`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        match self {
            SecretStore::File(s) => s.list(prefix).await,
            SecretStore::Vault(s) => s.list(prefix).await,
        }
    }

    /// Remove a record; `false` when there was none.
    pub async fn delete(&self, path: &str) -> Result<bool, SecretsError> {
        match self {
            SecretStore::File(s) => s.delete(path).await,
            SecretStore::Vault(s) => s.delete(path).await,
        }
    }

    /// Is the backend reachable and usable right now?
    pub async fn probe(&self) -> Result<(), SecretsError> {
        match self {
            SecretStore::File(s) => s.probe().await,
            SecretStore::Vault(s) => s.probe().await,
        }
    }

    /// Human name for messages: `file /path` or `vault http://...`.
    pub fn describe(&self) -> String {
        match self {
            SecretStore::File(s) => format!("file {}", s.path().display()),
            SecretStore::Vault(s) => format!("vault {}", s.address()),
        }
    }

    /// Background maintenance (Vault token renewal). Runs until the process ends.
    pub async fn maintain(&self, metrics: &crate::metrics::Metrics) {
        match self {
            SecretStore::File(_) => std::future::pending::<()>().await,
            SecretStore::Vault(s) => s.maintain(metrics).await,
        }
    }
}

/// A 32-byte random key shared by every replica using this backend (created by the first,
/// check-and-set; the others read it). Used to seal login challenges.
pub async fn shared_key(store: &SecretStore, path: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, SecretsError> {
    use base64::Engine;
    use secrecy::ExposeSecret;
    let b64 = base64::engine::general_purpose::STANDARD;
    for _ in 0..10 {
        if let Some(v) = store.get(path).await? {
            let bytes = zeroize::Zeroizing::new(
                v.data.get("key").and_then(|k| b64.decode(k.expose_secret()).ok()).ok_or_else(|| {
                    SecretsError::Malformed { path: path.into(), reason: "field `key` is not base64".into() }
                })?,
            );
            let mut key = zeroize::Zeroizing::new([0u8; 32]);
            if bytes.len() != 32 {
                return Err(SecretsError::Malformed { path: path.into(), reason: "key is not 32 bytes".into() });
            }
            key.copy_from_slice(&bytes);
            return Ok(key);
        }
        let fresh = zeroize::Zeroizing::new(crate::random_bytes::<32>());
        let data = SecretData::single("key", SecretString::from(b64.encode(fresh.as_slice())));
        match store.put(path, &data, Cas::Create).await {
            Ok(_) => return Ok(fresh),
            Err(SecretsError::CasConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(SecretsError::CasConflict { path: path.into() })
}

#[cfg(test)]
mod unavailable_tests {
    use super::SecretsError;

    #[test]
    fn only_outages_are_worth_waiting_for() {
        let health = |reason: &str| SecretsError::VaultHealth { address: "https://v".into(), reason: reason.into() };
        let op = |reason: &str| SecretsError::Vault {
            address: "https://v".into(),
            op: "read",
            path: "p".into(),
            reason: reason.into(),
        };
        assert!(health("error sending request for url (https://v/v1/sys/health): tcp connect error: Connection refused (os error 111)").is_unavailable());
        assert!(op("HTTP 503: Vault is sealed").is_unavailable());
        assert!(op("operation timed out").is_unavailable());
        assert!(!op("HTTP 403: permission denied").is_unavailable());
        assert!(
            !health("error sending request for url (https://v/): invalid peer certificate: UnknownIssuer")
                .is_unavailable()
        );
        assert!(!health("invalid client settings: no address").is_unavailable());
        assert!(!SecretsError::CasConflict { path: "p".into() }.is_unavailable());
    }
}
