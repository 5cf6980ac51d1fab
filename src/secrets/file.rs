//! The embedded `file` secrets backend: one JSON file whose records are each sealed with
//! AES-256-GCM under a 32-byte key, with the record's path and version bound as associated data
//! (a record copied to another path, or rolled back to another version, fails to open).
//!
//! The key comes from `GOCRED_FILE_KEY` (base64) or a 0600 key file (base64 or 32 raw bytes).
//! Opening verifies every record, so a tampered file or a wrong key is a one-line error at start,
//! never garbage later; nothing is written in that case. Writes are atomic (temp file + rename)
//! and serialised across processes with a lock file.
//!
//! Must not: cache plaintext beyond a call, or write the file when verification failed.

use super::{Cas, SecretData, SecretsError, Versioned};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const FORMAT: &str = "gocred-secrets-v1";
const CHECK_AAD: &[u8] = b"gocred-secrets-v1\0key-check";
const CHECK_PLAINTEXT: &[u8] = b"gocred key check";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    format: String,
    check: Sealed,
    records: BTreeMap<String, Record>,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Sealed {
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u64,
    #[serde(flatten)]
    sealed: Sealed,
}

/// The AES-256-GCM encrypted local secrets file.
pub struct FileStore {
    path: PathBuf,
    cipher: Aes256Gcm,
    /// Serialises this process's writers; the lock file serialises processes.
    write_lock: tokio::sync::Mutex<()>,
}

fn record_aad(path: &str, version: u64) -> Vec<u8> {
    format!("gocred-secrets-v1\0record\0{path}\0{version}").into_bytes()
}

/// Decode a key given as base64 (with or without padding) or 32 raw bytes.
fn decode_key(raw: &[u8], from: &str) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    let mut out = Zeroizing::new([0u8; 32]);
    if raw.len() == 32 && std::str::from_utf8(raw).is_err() {
        out.copy_from_slice(raw);
        return Ok(out);
    }
    let text = std::str::from_utf8(raw)
        .map_err(|_| SecretsError::Key { reason: format!("{from} is neither base64 nor 32 raw bytes") })?
        .trim();
    let bytes = Zeroizing::new(
        B64.decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| SecretsError::Key { reason: format!("{from} is not valid base64") })?,
    );
    if bytes.len() != 32 {
        return Err(SecretsError::Key { reason: format!("{from} must decode to 32 bytes, got {}", bytes.len()) });
    }
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// Resolve the file key: `GOCRED_FILE_KEY` first, then the key file (created when `create`).
pub fn load_key(key_file: Option<&Path>, create: bool) -> Result<Zeroizing<[u8; 32]>, SecretsError> {
    if let Ok(v) = std::env::var("GOCRED_FILE_KEY") {
        let v = SecretString::from(v);
        return decode_key(v.expose_secret().as_bytes(), "GOCRED_FILE_KEY");
    }
    let Some(kf) = key_file else {
        return Err(SecretsError::Key {
            reason: "set GOCRED_FILE_KEY (base64 of 32 random bytes) or secrets.key_file".into(),
        });
    };
    match std::fs::metadata(kf) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(SecretsError::Key {
                    reason: format!("key file {} must not be readable by group or others (chmod 600)", kf.display()),
                });
            }
            let raw =
                Zeroizing::new(std::fs::read(kf).map_err(|e| SecretsError::Key {
                    reason: format!("cannot read key file {}: {e}", kf.display()),
                })?);
            decode_key(&raw, &format!("key file {}", kf.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = Zeroizing::new(crate::random_bytes::<32>());
            let text = Zeroizing::new(B64.encode(key.as_slice()) + "\n");
            if let Some(dir) = kf.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
                crate::fsutil::ensure_private_dir(dir)
                    .map_err(|e| SecretsError::Key { reason: format!("cannot create {}: {e}", dir.display()) })?;
            }
            crate::fsutil::write_private_atomic(kf, text.as_bytes())
                .map_err(|e| SecretsError::Key { reason: format!("cannot write key file {}: {e}", kf.display()) })?;
            Ok(key)
        }
        Err(e) => Err(SecretsError::Key { reason: format!("cannot read key file {}: {e}", kf.display()) }),
    }
}

impl FileStore {
    /// Open (or create) the store described by the config, verifying every record.
    pub async fn open(cfg: &crate::config::FileBackendConfig) -> Result<Self, SecretsError> {
        let key = load_key(cfg.key_file.as_deref(), cfg.create_key)?;
        let store = FileStore::with_key(&cfg.path, &key)?;
        let path = cfg.path.clone();
        let this = tokio::task::spawn_blocking(move || {
            store.init_or_verify()?;
            Ok::<_, SecretsError>(store)
        })
        .await
        .map_err(|e| SecretsError::ReadFile { path: path.display().to_string(), source: std::io::Error::other(e) })??;
        Ok(this)
    }

    /// A store over `path` with an explicit key (no I/O).
    pub fn with_key(path: &Path, key: &[u8; 32]) -> Result<Self, SecretsError> {
        Ok(FileStore {
            path: path.to_path_buf(),
            cipher: Aes256Gcm::new_from_slice(key)
                .map_err(|_| SecretsError::Key { reason: "bad key length".into() })?,
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn p(&self) -> String {
        self.path.display().to_string()
    }

    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let nonce = crate::random_bytes::<12>();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        Sealed { nonce: B64.encode(nonce), ciphertext: B64.encode(ct) }
    }

    fn open_sealed(&self, s: &Sealed, aad: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let nonce = B64.decode(&s.nonce).ok().filter(|n| n.len() == 12)?;
        let ct = B64.decode(&s.ciphertext).ok()?;
        self.cipher.decrypt(Nonce::from_slice(&nonce), Payload { msg: &ct, aad }).ok().map(Zeroizing::new)
    }

    /// Read and fully verify the file. `None` when it does not exist.
    fn read_verified(&self) -> Result<Option<OnDisk>, SecretsError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SecretsError::ReadFile { path: self.p(), source });
            }
        };
        let disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| SecretsError::CorruptFile {
            path: self.p(),
            reason: format!("JSON error at line {} column {}", e.line(), e.column()),
        })?;
        if disk.format != FORMAT {
            return Err(SecretsError::CorruptFile {
                path: self.p(),
                reason: format!("unknown format `{}`", disk.format),
            });
        }
        match self.open_sealed(&disk.check, CHECK_AAD) {
            Some(pt) if pt.as_slice() == CHECK_PLAINTEXT => {}
            _ => return Err(SecretsError::WrongKey { path: self.p() }),
        }
        for (name, rec) in &disk.records {
            if self.open_sealed(&rec.sealed, &record_aad(name, rec.version)).is_none() {
                return Err(SecretsError::Tampered { path: self.p(), record: name.clone() });
            }
        }
        Ok(Some(disk))
    }

    fn write(&self, disk: &OnDisk) -> Result<(), SecretsError> {
        let json = serde_json::to_vec_pretty(disk).expect("serialising the secrets file cannot fail");
        crate::fsutil::write_private_atomic(&self.path, &json)
            .map_err(|source| SecretsError::WriteFile { path: self.p(), source })
    }

    fn lock_file(&self) -> Result<std::fs::File, SecretsError> {
        let mut lp = self.path.clone().into_os_string();
        lp.push(".lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(PathBuf::from(lp))
            .map_err(|source| SecretsError::WriteFile { path: self.p(), source })?;
        f.lock().map_err(|source| SecretsError::WriteFile { path: self.p(), source })?;
        Ok(f)
    }

    fn init_or_verify(&self) -> Result<(), SecretsError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
        {
            crate::fsutil::ensure_private_dir(dir)
                .map_err(|source| SecretsError::WriteFile { path: self.p(), source })?;
        }
        if self.read_verified()?.is_some() {
            return Ok(());
        }
        let _lock = self.lock_file()?;
        if self.read_verified()?.is_none() {
            self.write(&OnDisk {
                format: FORMAT.into(),
                check: self.seal(CHECK_PLAINTEXT, CHECK_AAD),
                records: BTreeMap::new(),
            })?;
        }
        Ok(())
    }

    fn get_blocking(&self, path: &str) -> Result<Option<Versioned>, SecretsError> {
        let Some(disk) = self.read_verified()? else {
            return Ok(None);
        };
        let Some(rec) = disk.records.get(path) else {
            return Ok(None);
        };
        let pt = self
            .open_sealed(&rec.sealed, &record_aad(path, rec.version))
            .ok_or_else(|| SecretsError::Tampered { path: self.p(), record: path.into() })?;
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&pt)
            .map_err(|_| SecretsError::Malformed { path: path.into(), reason: "not a JSON object".into() })?;
        Ok(Some(Versioned { data: SecretData::from_json(map), version: rec.version }))
    }

    fn put_blocking(&self, path: &str, data: &SecretData, cas: Cas) -> Result<u64, SecretsError> {
        let _lock = self.lock_file()?;
        let mut disk = self
            .read_verified()?
            .ok_or_else(|| SecretsError::CorruptFile { path: self.p(), reason: "file disappeared".into() })?;
        let current = disk.records.get(path).map(|r| r.version);
        match (cas, current) {
            (Cas::Any, _) | (Cas::Create, None) => {}
            (Cas::Version(v), Some(c)) if v == c => {}
            _ => return Err(SecretsError::CasConflict { path: path.into() }),
        }
        let version = current.unwrap_or(0) + 1;
        let pt = Zeroizing::new(serde_json::to_vec(&data.expose_json()).expect("serialising a map cannot fail"));
        disk.records.insert(path.to_string(), Record { version, sealed: self.seal(&pt, &record_aad(path, version)) });
        self.write(&disk)?;
        Ok(version)
    }

    pub async fn get(&self, path: &str) -> Result<Option<Versioned>, SecretsError> {
        tokio::task::block_in_place(|| self.get_blocking(path))
    }

    /// Record paths below `prefix` (all with `""`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        tokio::task::block_in_place(|| {
            let disk = self.read_verified()?;
            Ok(disk.map(|d| d.records.into_keys().filter(|k| under(k, prefix)).collect()).unwrap_or_default())
        })
    }

    /// Remove a record (every version); `false` when there was none.
    pub async fn delete(&self, path: &str) -> Result<bool, SecretsError> {
        let _g = self.write_lock.lock().await;
        tokio::task::block_in_place(|| {
            let _lock = self.lock_file()?;
            let Some(mut disk) = self.read_verified()? else { return Ok(false) };
            let existed = disk.records.remove(path).is_some();
            if existed {
                self.write(&disk)?;
            }
            Ok(existed)
        })
    }

    pub async fn put(&self, path: &str, data: &SecretData, cas: Cas) -> Result<u64, SecretsError> {
        let _g = self.write_lock.lock().await;
        tokio::task::block_in_place(|| self.put_blocking(path, data, cas))
    }

    pub async fn probe(&self) -> Result<(), SecretsError> {
        tokio::task::block_in_place(|| self.read_verified().map(|_| ()))
    }
}

/// Is record `path` at or below `prefix` (on element boundaries)?
fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    prefix.is_empty() || path == prefix || path.starts_with(&format!("{prefix}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn records_are_listed_by_prefix_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1);
        for p in ["upstreams/corp-git", "upstreams/corp-gitlab", "gocred/keys"] {
            s.put(p, &SecretData::single("token", SecretString::from("x".to_string())), Cas::Any).await.unwrap();
        }
        assert_eq!(s.list("").await.unwrap(), ["gocred/keys", "upstreams/corp-git", "upstreams/corp-gitlab"]);
        assert_eq!(s.list("upstreams/corp-git").await.unwrap(), ["upstreams/corp-git"]);
        assert_eq!(s.list("upstreams/").await.unwrap().len(), 2);
        assert!(s.delete("upstreams/corp-git").await.unwrap());
        assert!(!s.delete("upstreams/corp-git").await.unwrap());
        assert!(s.get("upstreams/corp-git").await.unwrap().is_none());
        assert_eq!(s.list("upstreams").await.unwrap(), ["upstreams/corp-gitlab"]);
    }

    fn store(dir: &Path, key: u8) -> FileStore {
        let s = FileStore::with_key(&dir.join("s.enc"), &[key; 32]).unwrap();
        s.init_or_verify().unwrap();
        s
    }

    fn data(v: &str) -> SecretData {
        SecretData::single("v", SecretString::from(v.to_string()))
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn roundtrip_and_cas() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1);
        assert!(s.get("a").await.unwrap().is_none());
        assert_eq!(s.put("a", &data("one"), Cas::Create).await.unwrap(), 1);
        assert!(matches!(s.put("a", &data("x"), Cas::Create).await, Err(SecretsError::CasConflict { .. })));
        assert!(matches!(s.put("a", &data("x"), Cas::Version(7)).await, Err(SecretsError::CasConflict { .. })));
        assert_eq!(s.put("a", &data("two"), Cas::Version(1)).await.unwrap(), 2);
        let got = s.get("a").await.unwrap().unwrap();
        assert_eq!(got.version, 2);
        assert_eq!(got.data.get("v").unwrap().expose_secret(), "two");
        let raw = std::fs::read_to_string(d.path().join("s.enc")).unwrap();
        assert!(!raw.contains("two"), "plaintext on disk");
        assert_eq!(std::fs::metadata(d.path().join("s.enc")).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wrong_key_and_tamper_are_detected_without_writing() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1);
        s.put("a", &data("one"), Cas::Any).await.unwrap();
        let f = d.path().join("s.enc");
        let before = std::fs::read(&f).unwrap();

        let wrong = FileStore::with_key(&f, &[2; 32]).unwrap();
        let e = wrong.init_or_verify().unwrap_err().to_string();
        assert!(e.contains("wrong key") && e.contains(&f.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&f).unwrap(), before);

        // flip one character of the record's ciphertext
        let mut disk: serde_json::Value = serde_json::from_slice(&before).unwrap();
        let ct = disk["records"]["a"]["ciphertext"].as_str().unwrap().to_string();
        let mut chars: Vec<char> = ct.chars().collect();
        chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
        disk["records"]["a"]["ciphertext"] = serde_json::Value::String(chars.into_iter().collect());
        let tampered = serde_json::to_vec(&disk).unwrap();
        std::fs::write(&f, &tampered).unwrap();
        let e = FileStore::with_key(&f, &[1; 32]).unwrap().init_or_verify().unwrap_err().to_string();
        assert!(e.contains("record `a` failed authentication"), "{e}");
        assert!(!e.contains('\n'));
        assert_eq!(std::fs::read(&f).unwrap(), tampered);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn record_moved_to_another_path_fails() {
        let d = tempfile::tempdir().unwrap();
        let s = store(d.path(), 1);
        s.put("a", &data("one"), Cas::Any).await.unwrap();
        let f = d.path().join("s.enc");
        let mut disk: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
        let rec = disk["records"]["a"].clone();
        disk["records"]["b"] = rec;
        std::fs::write(&f, serde_json::to_vec(&disk).unwrap()).unwrap();
        let e = s.get("a").await.unwrap_err().to_string();
        assert!(e.contains("record `b`"), "{e}");
    }

    #[test]
    fn key_decoding() {
        let k = B64.encode([7u8; 32]);
        assert_eq!(*decode_key(k.as_bytes(), "t").unwrap(), [7u8; 32]);
        assert!(decode_key(b"c2hvcnQ=", "t").unwrap_err().to_string().contains("32 bytes"));
        assert!(decode_key(b"!!!", "t").unwrap_err().to_string().contains("base64"));
    }

    #[test]
    fn debug_is_redacted() {
        let dbg = format!("{:?}", data("hunter2"));
        assert!(!dbg.contains("hunter2") && dbg.contains("REDACTED"));
    }
}
