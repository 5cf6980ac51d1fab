//! The broker's Ed25519 signing key set: created on first start and kept in the secrets backend
//! (one record, `<prefix>/signing-keys`), shared by every replica through check-and-set (first
//! writer wins, losers re-read), rotated every `tokens.rotate_every`, and published as an
//! RFC 7517 JWKS. A retired key stays published until every token it signed has expired.
//!
//! Must not: talk HTTP, or let a private key reach a log line or an error message.

use crate::secrets::{Cas, SecretData, SecretStore, SecretsError};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use ed25519_dalek::Signer;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use zeroize::Zeroizing;

/// Extra time a retired key stays published beyond the token TTL, for clock skew.
pub const RETAIN_LEEWAY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("cannot load signing keys")]
    Load(#[source] SecretsError),
    #[error("cannot store signing keys")]
    Store(#[source] SecretsError),
    #[error("signing key record `{path}` is malformed: {reason}")]
    Malformed { path: String, reason: String },
    #[error("signing keys at `{path}` kept changing under concurrent writers; giving up")]
    Contended { path: String },
}

/// One Ed25519 signing key.
pub struct SigningKey {
    pub kid: String,
    /// Unix seconds.
    pub created: u64,
    /// Unix seconds when a newer key replaced it.
    pub retired: Option<u64>,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("created", &self.created)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    fn from_seed(seed: &[u8; 32], created: u64, retired: Option<u64>) -> Self {
        let key = ed25519_dalek::SigningKey::from_bytes(seed);
        SigningKey { kid: thumbprint(&key.verifying_key()), created, retired, key }
    }

    fn generate(now: u64) -> Self {
        let seed = Zeroizing::new(crate::random_bytes::<32>());
        Self::from_seed(&seed, now, None)
    }

    /// Ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.key.sign(msg).to_bytes()
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.key.verifying_key()
    }
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key (base64url SHA-256 of the canonical JWK).
pub fn thumbprint(vk: &ed25519_dalek::VerifyingKey) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, B64URL.encode(vk.as_bytes()));
    B64URL.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    kid: String,
    created: u64,
    retired: Option<u64>,
    seed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSet {
    keys: Vec<StoredKey>,
}

#[derive(Serialize)]
struct Jwk<'a> {
    kty: &'static str,
    crv: &'static str,
    alg: &'static str,
    #[serde(rename = "use")]
    use_: &'static str,
    kid: &'a str,
    x: String,
}

/// The keys, newest (current) first, with the backend version they were read at.
#[derive(Debug, Clone)]
pub struct KeySet {
    keys: Vec<Arc<SigningKey>>,
    version: u64,
}

impl KeySet {
    fn generate(now: u64) -> Self {
        KeySet { keys: vec![Arc::new(SigningKey::generate(now))], version: 0 }
    }

    /// The key new tokens are signed with.
    pub fn current(&self) -> &Arc<SigningKey> {
        &self.keys[0]
    }

    /// A published key by id.
    pub fn find(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.kid.clone()).collect()
    }

    fn parse(path: &str, data: &SecretData, version: u64) -> Result<Self, KeysError> {
        let bad = |reason: String| KeysError::Malformed { path: path.into(), reason };
        let json = data.get("keyset").ok_or_else(|| bad("no `keyset` field".into()))?;
        let set: StoredSet = serde_json::from_str(json.expose_secret()).map_err(|e| bad(format!("JSON: {e}")))?;
        if set.keys.is_empty() {
            return Err(bad("no keys".into()));
        }
        let mut keys = Vec::new();
        for k in set.keys {
            let seed =
                Zeroizing::new(B64.decode(&k.seed).map_err(|_| bad(format!("key {}: seed is not base64", k.kid)))?);
            let seed: &[u8; 32] =
                seed.as_slice().try_into().map_err(|_| bad(format!("key {}: seed is not 32 bytes", k.kid)))?;
            let key = SigningKey::from_seed(seed, k.created, k.retired);
            if key.kid != k.kid {
                return Err(bad(format!("key {}: kid does not match its public key", k.kid)));
            }
            keys.push(Arc::new(key));
        }
        Ok(KeySet { keys, version })
    }

    fn to_record(&self) -> SecretData {
        let set = StoredSet {
            keys: self
                .keys
                .iter()
                .map(|k| StoredKey {
                    kid: k.kid.clone(),
                    created: k.created,
                    retired: k.retired,
                    seed: B64.encode(k.key.to_bytes()),
                })
                .collect(),
        };
        let json = Zeroizing::new(serde_json::to_string(&set).expect("serialising keys cannot fail"));
        SecretData::single("keyset", SecretString::from(json.to_string()))
    }

    /// The key set after rotation and pruning at `now`, or `None` when nothing changes. Pure.
    pub fn rotated(&self, now: u64, rotate_every: Duration, retain: Duration) -> Option<KeySet> {
        let mut keys = self.keys.clone();
        let mut changed = false;
        if now >= keys[0].created.saturating_add(rotate_every.as_secs()) {
            let old = &keys[0];
            let retired = SigningKey::from_seed(&old.key.to_bytes(), old.created, Some(now));
            keys[0] = Arc::new(retired);
            keys.insert(0, Arc::new(SigningKey::generate(now)));
            changed = true;
        }
        let before = keys.len();
        keys.retain(|k| k.retired.is_none_or(|r| now < r.saturating_add(retain.as_secs())));
        changed |= keys.len() != before;
        changed.then_some(KeySet { keys, version: self.version })
    }

    /// RFC 7517 JWKS document (deterministic bytes for a given key set).
    pub fn jwks_json(&self) -> String {
        let keys: Vec<Jwk<'_>> = self
            .keys
            .iter()
            .map(|k| Jwk {
                kty: "OKP",
                crv: "Ed25519",
                alg: "EdDSA",
                use_: "sig",
                kid: &k.kid,
                x: B64URL.encode(k.verifying_key().as_bytes()),
            })
            .collect();
        serde_json::json!({ "keys": keys }).to_string()
    }
}

/// A snapshot readers use: the key set and its pre-rendered JWKS.
#[derive(Debug)]
pub struct Snapshot {
    pub set: KeySet,
    pub jwks: String,
}

/// The live, shared signing keys.
pub struct Keys {
    store: Arc<SecretStore>,
    path: String,
    rotate_every: Duration,
    retain: Duration,
    snapshot: RwLock<Arc<Snapshot>>,
}

impl Keys {
    /// Load the key set, or create it when none exists (first writer wins among replicas).
    pub async fn load_or_create(
        store: Arc<SecretStore>,
        prefix: &str,
        rotate_every: Duration,
        token_ttl: Duration,
    ) -> Result<Keys, KeysError> {
        let path = format!("{prefix}/signing-keys");
        let mut attempt = 0;
        let set = loop {
            attempt += 1;
            if attempt > 10 {
                return Err(KeysError::Contended { path });
            }
            match store.get(&path).await.map_err(KeysError::Load)? {
                Some(v) => break KeySet::parse(&path, &v.data, v.version)?,
                None => {
                    let mut fresh = KeySet::generate(crate::unix_now());
                    match store.put(&path, &fresh.to_record(), Cas::Create).await {
                        Ok(version) => {
                            fresh.version = version;
                            tracing::info!(kid = %fresh.current().kid, "created signing key");
                            break fresh;
                        }
                        Err(SecretsError::CasConflict { .. }) => continue, // another replica won: re-read
                        Err(e) => return Err(KeysError::Store(e)),
                    }
                }
            }
        };
        let keys = Keys {
            store,
            path,
            rotate_every,
            retain: token_ttl + RETAIN_LEEWAY,
            snapshot: RwLock::new(Arc::new(Snapshot { jwks: String::new(), set: set.clone() })),
        };
        keys.adopt(set);
        Ok(keys)
    }

    fn adopt(&self, set: KeySet) {
        let jwks = set.jwks_json();
        *self.snapshot.write().expect("keys lock poisoned") = Arc::new(Snapshot { set, jwks });
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.read().expect("keys lock poisoned").clone()
    }

    /// How often [`Keys::tick`] should run.
    pub fn tick_every(&self) -> Duration {
        (self.rotate_every / 4).clamp(Duration::from_millis(250), Duration::from_secs(10))
    }

    /// Re-read the shared key set (other replicas may have rotated), rotate and prune when due.
    /// Returns true when this replica wrote a rotation.
    pub async fn tick(&self, now: u64) -> Result<bool, KeysError> {
        let mut set = match self.store.get(&self.path).await.map_err(KeysError::Load)? {
            Some(v) => KeySet::parse(&self.path, &v.data, v.version)?,
            None => {
                // The backend lost the record (e.g. a restarted dev Vault): restore ours.
                let mut ours = self.snapshot().set.clone();
                match self.store.put(&self.path, &ours.to_record(), Cas::Create).await {
                    Ok(v) => ours.version = v,
                    Err(SecretsError::CasConflict { .. }) => return Ok(false),
                    Err(e) => return Err(KeysError::Store(e)),
                }
                ours
            }
        };
        let mut wrote = false;
        if let Some(mut next) = set.rotated(now, self.rotate_every, self.retain) {
            match self.store.put(&self.path, &next.to_record(), Cas::Version(set.version)).await {
                Ok(v) => {
                    next.version = v;
                    tracing::info!(kid = %next.current().kid, published = next.keys.len(), "rotated signing keys");
                    set = next;
                    wrote = true;
                }
                Err(SecretsError::CasConflict { .. }) => {
                    if let Some(v) = self.store.get(&self.path).await.map_err(KeysError::Load)? {
                        set = KeySet::parse(&self.path, &v.data, v.version)?;
                    }
                }
                Err(e) => return Err(KeysError::Store(e)),
            }
        }
        self.adopt(set);
        Ok(wrote)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_previous_key_until_its_tokens_expire() {
        let set = KeySet::generate(1000);
        let first = set.current().kid.clone();
        let every = Duration::from_secs(100);
        let retain = Duration::from_secs(50);
        assert!(set.rotated(1099, every, retain).is_none());
        let r = set.rotated(1100, every, retain).unwrap();
        assert_ne!(r.current().kid, first);
        assert_eq!(r.kids()[1], first);
        assert_eq!(r.keys[1].retired, Some(1100));
        assert!(r.rotated(1149, every, retain).is_none());
        let pruned = r.rotated(1150, every, retain).unwrap();
        assert_eq!(pruned.kids(), vec![r.current().kid.clone()]);
    }

    #[test]
    fn record_roundtrip_and_jwks_shape() {
        let set = KeySet::generate(5);
        let back = KeySet::parse("p", &set.to_record(), 3).unwrap();
        assert_eq!(back.kids(), set.kids());
        assert_eq!(back.jwks_json(), set.jwks_json());
        let j: serde_json::Value = serde_json::from_str(&set.jwks_json()).unwrap();
        let k = &j["keys"][0];
        assert_eq!(k["kty"], "OKP");
        assert_eq!(k["crv"], "Ed25519");
        assert_eq!(k["alg"], "EdDSA");
        assert_eq!(k["kid"], set.current().kid.as_str());
        assert_eq!(B64URL.decode(k["x"].as_str().unwrap()).unwrap().len(), 32);
        assert!(!format!("{set:?}").contains(&B64.encode(set.current().key.to_bytes())));
    }

    #[test]
    fn kid_is_rfc7638_thumbprint() {
        // RFC 8037 appendix A.3 test vector.
        let x = B64URL.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo").unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(x.as_slice().try_into().unwrap()).unwrap();
        assert_eq!(thumbprint(&vk), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }
}
