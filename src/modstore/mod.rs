//! The module store: every `.info`, `.mod` and `.zip` of a canonical version the broker served,
//! written once, sealed with AES-256-GCM under a key from the secrets backend, in a local
//! directory (the embedded default: size cap, least-recently-used eviction) or an S3-compatible
//! bucket shared by replicas (conditional create: no lock service).
//!
//! Layout under the backend's root (module paths case-escaped as the GOPROXY protocol does):
//! `v1/<module>/@v/<version>.<kind>` is the head (JSON: names, key id, nonce prefix, size,
//! SHA-256 and `h1:`), written last and only if absent — the commit point; the sealed bytes are
//! in `…<kind>.parts/<object id>/<n>` (2 MiB of plaintext each), written first under a random
//! object id so two writers never collide. A reader holds one part at a time.
//!
//! Checked on every read: the head names what was asked for, matches this replica's ledger, and
//! every segment opens under associated data binding it to the head (a flipped byte, a swapped
//! or replayed object fails); a full read re-checks the SHA-256. A failing object is
//! quarantined (moved under `quarantine/`) and counted; the caller fetches again.
//!
//! Must not: decide who may read (the caller authorizes first), know HTTP, or fail a download
//! because the store is unreachable (callers fall back to the upstream).

pub mod crypt;
pub mod hash;
mod keyring;
mod ledger;

use crate::config::{StoreBackend, StoreConfig};
use crate::modfetch::semver::escape;
use crate::secrets::SecretStore;
use bytes::Bytes;
use crypt::{PART, SEGMENTS_PER_PART, Sealer};
use futures_util::StreamExt;
use object_store::path::Path as OPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use keyring::Keyring;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the module store: {0}")]
    Open(#[source] object_store::Error),
    #[error("module store {op} failed: {source}")]
    Backend {
        op: &'static str,
        #[source]
        source: object_store::Error,
    },
    #[error("module store keys at {path}: {reason}")]
    Keys { path: String, reason: String },
    #[error("cannot read the module store keys: {0}")]
    ReadKeys(#[source] crate::secrets::SecretsError),
    #[error("S3 credentials at {path}: {reason}")]
    S3Credentials { path: String, reason: String },
    #[error("stored {name} failed its integrity check: {reason}")]
    Integrity { name: String, reason: String },
    #[error(
        "the upstream now serves different content for {name} than the broker first served \
         (sha256 {recorded} recorded, {fetched} fetched): not passed on"
    )]
    Changed { name: String, recorded: String, fetched: String },
    #[error("module store temporary file: {0}")]
    Io(#[from] std::io::Error),
}

/// Which artifact of a version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Info,
    Mod,
    Zip,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Info => "info",
            Kind::Mod => "mod",
            Kind::Zip => "zip",
        }
    }
}

/// One stored artifact's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    pub module: String,
    pub version: String,
    pub kind: Kind,
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}.{}", self.module, self.version, self.kind.as_str())
    }
}

/// An object's head: what it is and how it was sealed. Its exact bytes are every segment's
/// associated data.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    pub format: u32,
    pub module: String,
    pub version: String,
    pub kind: Kind,
    pub key_id: String,
    /// Hex of the 7-byte nonce prefix.
    pub nonce: String,
    /// Hex id of this write (its parts' directory).
    pub object: String,
    pub size: u64,
    pub sha256: String,
    /// `h1:` of the zip or of the go.mod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub h1: Option<String>,
    /// The module path as it was authorized when fetched (repository path without `.git`).
    pub served_as: String,
    pub upstream: String,
    pub created: u64,
}

impl Head {
    pub fn name(&self) -> ObjectName {
        ObjectName { module: self.module.clone(), version: self.version.clone(), kind: self.kind }
    }
    pub fn parts(&self) -> u64 {
        self.size.div_ceil(PART as u64).max(1)
    }
}

/// A stored object, its head checked.
#[derive(Debug, Clone)]
pub struct Stored {
    pub head: Head,
    raw: Bytes,
}

/// What [`ModStore::ingest`] did.
#[derive(Debug)]
pub enum Ingested {
    Stored(Stored),
    /// Another writer stored different bytes first: those are kept (and served), these reported.
    Kept {
        stored: Stored,
        fetched_sha256: String,
    },
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub evictions: AtomicU64,
    pub integrity_failures: AtomicU64,
    pub upstream_changed: AtomicU64,
    pub errors: AtomicU64,
    pub stale_lists: AtomicU64,
    backend_ops: AtomicU64,
    backend_micros: AtomicU64,
}

pub struct ModStore {
    os: Arc<dyn ObjectStore>,
    root: Vec<String>,
    describe: String,
    keys: Keyring,
    ledger: ledger::Ledger,
    tmp: PathBuf,
    cfg: StoreConfig,
    /// Head path → last read (Unix milliseconds), for least-recently-used eviction.
    used: Mutex<HashMap<String, u64>>,
    approx_bytes: AtomicU64,
    /// One ingest per object at a time: the others wait and find it stored.
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Digests of files already hashed, by (path, length, modification time): 50 clients
    /// asking for one freshly built zip hash it once.
    digests: Mutex<HashMap<(PathBuf, u64, std::time::SystemTime), Digested>>,
    pub stats: Stats,
}

/// Size, SHA-256 and `h1:` of an artifact.
type Digested = (u64, String, Option<String>);

/// What an object of `size` plaintext bytes takes in the backend: the sealed bytes (a tag per
/// segment) and its head.
fn on_disk(size: u64, head_len: usize) -> u64 {
    size + (size / crypt::SEGMENT as u64 + 1) * crypt::TAG as u64 + head_len as u64
}

/// Now, in Unix milliseconds (least-recently-used order needs more than seconds).
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn hexrand<const N: usize>() -> String {
    crate::fsutil::hex(&crate::random_bytes::<N>())
}

async fn open_backend(
    cfg: &StoreConfig,
    secrets: &SecretStore,
) -> Result<(Arc<dyn ObjectStore>, Vec<String>, String), StoreError> {
    match &cfg.backend {
        StoreBackend::Dir => {
            let dir = cfg.dir.join("objects");
            crate::fsutil::ensure_private_dir(&cfg.dir)
                .and_then(|_| crate::fsutil::ensure_private_dir(&dir))
                .map_err(StoreError::Io)?;
            let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(StoreError::Open)?;
            Ok((Arc::new(fs), Vec::new(), format!("dir {}", dir.display())))
        }
        StoreBackend::S3(s3) => {
            use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_allow_http(s3.allow_http)
                .with_conditional_put(S3ConditionalPut::ETagMatch);
            if let Some(e) = &s3.endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(path) = s3.credentials.as_deref().and_then(|c| c.strip_prefix("vault:")) {
                use secrecy::ExposeSecret;
                let bad = |reason: &str| StoreError::S3Credentials { path: path.into(), reason: reason.into() };
                let rec =
                    secrets.get(path).await.map_err(StoreError::ReadKeys)?.ok_or_else(|| bad("no such record"))?;
                let id = rec.data.get("access_key_id").ok_or_else(|| bad("no `access_key_id`"))?;
                let secret = rec.data.get("secret_access_key").ok_or_else(|| bad("no `secret_access_key`"))?;
                b = b.with_access_key_id(id.expose_secret()).with_secret_access_key(secret.expose_secret());
            }
            let os = b.build().map_err(StoreError::Open)?;
            let root = s3.prefix.split('/').filter(|p| !p.is_empty()).map(String::from).collect();
            Ok((Arc::new(os), root, format!("s3://{}/{}", s3.bucket, s3.prefix)))
        }
    }
}

impl ModStore {
    /// Open the configured backend and the keys (`<prefix>/store-keys` in the secrets backend).
    pub async fn open(cfg: &StoreConfig, secrets: Arc<SecretStore>, prefix: &str) -> Result<ModStore, StoreError> {
        let (os, root, describe) = open_backend(cfg, &secrets).await?;
        let empty = {
            let root_v1 = OPath::from_iter(root.iter().map(String::as_str).chain(["v1"]));
            let mut list = os.list(Some(&root_v1));
            match list.next().await {
                None => true,
                Some(Ok(_)) => false,
                Some(Err(source)) => return Err(StoreError::Backend { op: "list", source }),
            }
        };
        let keys = Keyring::open(secrets, prefix, empty).await?;
        let tmp = cfg.dir.join("tmp");
        crate::fsutil::ensure_private_dir(&cfg.dir).and_then(|_| crate::fsutil::ensure_private_dir(&tmp))?;
        crate::fsutil::sweep_older(&tmp, std::time::Duration::from_secs(3600));
        let store = ModStore {
            os,
            root,
            describe,
            keys,
            ledger: ledger::Ledger::open(cfg.dir.join("ledger")),
            tmp,
            cfg: cfg.clone(),
            used: Mutex::new(HashMap::new()),
            approx_bytes: AtomicU64::new(0),
            inflight: Mutex::new(HashMap::new()),
            digests: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        };
        if cfg.backend == StoreBackend::Dir {
            let total = store.total_bytes().await.unwrap_or(0);
            store.approx_bytes.store(total, Ordering::Relaxed);
        }
        Ok(store)
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keys
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    fn path(&self, parts: &[&str]) -> OPath {
        OPath::from_iter(self.root.iter().map(String::as_str).chain(parts.iter().copied()))
    }

    /// The unencoded segments of `n`'s head below the root.
    fn segments(n: &ObjectName) -> Vec<String> {
        let mut segs: Vec<String> = vec!["v1".into()];
        segs.extend(escape(&n.module).split('/').map(String::from));
        segs.push("@v".into());
        segs.push(format!("{}.{}", escape(&n.version), n.kind.as_str()));
        segs
    }

    fn head_path(&self, n: &ObjectName) -> OPath {
        self.path(&Self::segments(n).iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The directory of every write's parts for `n`: `….<kind>.parts`.
    fn all_parts_dir(&self, n: &ObjectName) -> OPath {
        let mut segs = Self::segments(n);
        if let Some(last) = segs.last_mut() {
            last.push_str(".parts");
        }
        self.path(&segs.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The directory of one write's parts: `….<kind>.parts/<object>`.
    fn parts_dir(&self, n: &ObjectName, object: &str) -> OPath {
        self.all_parts_dir(n).join(object)
    }

    fn part_path(&self, n: &ObjectName, object: &str, part: u64) -> OPath {
        self.parts_dir(n, object).join(part.to_string())
    }

    /// Read a whole backend object of at most `cap` bytes (a planted huge object is refused,
    /// never buffered).
    async fn get_capped(&self, path: &OPath, cap: u64) -> Result<Bytes, object_store::Error> {
        self.timed(async {
            let r = self.os.get(path).await?;
            if r.meta.size > cap {
                return Err(too_big(path, r.meta.size));
            }
            let size = r.meta.size as usize;
            let mut s = r.into_stream();
            let mut out = bytes::BytesMut::with_capacity(size);
            while let Some(chunk) = s.next().await {
                let chunk = chunk?;
                if (out.len() + chunk.len()) as u64 > cap {
                    return Err(too_big(path, (out.len() + chunk.len()) as u64));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out.freeze())
        })
        .await
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = f.await;
        self.stats.backend_ops.fetch_add(1, Ordering::Relaxed);
        self.stats.backend_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        out
    }

    /// The stored object named `n`, its head checked; `None` when it is not stored.
    pub async fn get(&self, n: &ObjectName) -> Result<Option<Stored>, StoreError> {
        let path = self.head_path(n);
        let raw = match self.get_capped(&path, HEAD_CAP).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(source) => return Err(StoreError::Backend { op: "read", source }),
        };
        let bad = |reason: String| StoreError::Integrity { name: n.to_string(), reason };
        let head: Head = serde_json::from_slice(&raw).map_err(|e| bad(format!("malformed head: {e}")))?;
        if head.format != 1 || head.module != n.module || head.version != n.version || head.kind != n.kind {
            return Err(bad(format!("its head names {}", head.name())));
        }
        let key = path.to_string();
        if let Some(seen) = self.ledger.recorded(&key)
            && seen != head.sha256
            && self.ledger.recheck(&key).is_some_and(|s| s != head.sha256)
        {
            return Err(bad(format!(
                "sha256 {} is not the {seen} this broker recorded (replaced or replayed)",
                head.sha256
            )));
        }
        self.used.lock().expect("store lru poisoned").insert(key, now_ms());
        Ok(Some(Stored { head, raw }))
    }

    /// The plaintext of `range` (clamped to the object), one verified part at a time; a full
    /// read also re-checks the SHA-256 at the end. A failure is counted and the object
    /// quarantined.
    pub async fn read(
        self: &Arc<Self>,
        obj: &Stored,
        range: std::ops::Range<u64>,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, StoreError>>, StoreError> {
        let key = self.keys.get(&obj.head.key_id).await?;
        let nonce = crate::fsutil::unhex(&obj.head.nonce)
            .filter(|n| n.len() == 7)
            .ok_or_else(|| StoreError::Integrity { name: obj.head.name().to_string(), reason: "bad nonce".into() })?;
        let sealer = Arc::new(Sealer::new(&key, nonce.try_into().expect("7 bytes"), &obj.raw, obj.head.size));
        let end = range.end.min(obj.head.size);
        let start = range.start.min(end);
        let full = start == 0 && end == obj.head.size;
        let first = start / PART as u64;
        let last = if end == 0 { 0 } else { (end - 1) / PART as u64 };
        let st = ReadState {
            store: self.clone(),
            obj: obj.clone(),
            sealer,
            next: first,
            last,
            start,
            end,
            hasher: full.then(Sha256::new),
            done: false,
        };
        Ok(futures_util::stream::unfold(st, ReadState::step).boxed())
    }

    /// The whole verified plaintext of a small object (`.info`, `.mod`).
    pub async fn read_all(self: &Arc<Self>, obj: &Stored) -> Result<Vec<u8>, StoreError> {
        let mut s = self.read(obj, 0..obj.head.size).await?;
        let mut out = Vec::with_capacity(obj.head.size as usize);
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        if let Some(h1) = &obj.head.h1
            && obj.head.kind == Kind::Mod
            && hash::gomod_h1(&out) != *h1
        {
            return Err(self.failed(obj, "the go.mod hash does not match the one recorded at ingest".into()).await);
        }
        Ok(out)
    }

    /// Count an integrity failure, quarantine the object and return the error.
    async fn failed(&self, obj: &Stored, reason: String) -> StoreError {
        self.stats.integrity_failures.fetch_add(1, Ordering::Relaxed);
        let name = obj.head.name();
        tracing::warn!(object = %name, %reason, "stored object failed its integrity check; quarantined");
        self.quarantine(&name).await;
        StoreError::Integrity { name: name.to_string(), reason }
    }

    /// Move an object's head and every part written for its name under `quarantine/`, so it
    /// is fetched again.
    pub async fn quarantine(&self, n: &ObjectName) {
        let head = self.head_path(n);
        let stamp = format!("{}-{}", crate::unix_now(), hexrand::<4>());
        let to = |p: &OPath| {
            let root = self.root.iter().map(|r| object_store::path::PathPart::from(r.as_str()));
            OPath::from_iter(
                root.chain(["quarantine", stamp.as_str()].map(object_store::path::PathPart::from))
                    .chain(p.parts().skip(self.root.len())),
            )
        };
        if let Err(e) = self.os.rename(&head, &to(&head)).await {
            tracing::warn!(object = %n, error = %e, "cannot quarantine the head; deleting it");
            let _ = self.os.delete(&head).await;
        }
        let mut list = self.os.list(Some(&self.all_parts_dir(n)));
        while let Some(Ok(m)) = list.next().await {
            let _ = self.os.rename(&m.location, &to(&m.location)).await;
        }
    }
}

/// The state of one [`ModStore::read`].
struct ReadState {
    store: Arc<ModStore>,
    obj: Stored,
    sealer: Arc<Sealer>,
    next: u64,
    last: u64,
    start: u64,
    end: u64,
    hasher: Option<Sha256>,
    done: bool,
}

impl ReadState {
    async fn step(mut self) -> Option<(Result<Bytes, StoreError>, ReadState)> {
        if self.done || self.next > self.last {
            return None;
        }
        match self.part().await {
            Ok(b) => Some((Ok(b), self)),
            Err(e) => {
                self.done = true;
                let e = match e {
                    StoreError::Integrity { reason, .. } => self.store.failed(&self.obj, reason).await,
                    other => other,
                };
                Some((Err(e), self))
            }
        }
    }

    async fn part(&mut self) -> Result<Bytes, StoreError> {
        let n = self.next;
        self.next += 1;
        let path = self.store.part_path(&self.obj.head.name(), &self.obj.head.object, n);
        let sealed = match self.store.get_capped(&path, PART_CAP).await {
            Ok(b) => b,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::Integrity { name: String::new(), reason: format!("part {n} is missing") });
            }
            Err(source) => return Err(StoreError::Backend { op: "read", source }),
        };
        let plain = self
            .sealer
            .open_part(n * SEGMENTS_PER_PART as u64, &sealed)
            .map_err(|e| StoreError::Integrity { name: String::new(), reason: format!("part {n}: {e}") })?;
        let part_start = n * PART as u64;
        let want = part_start + plain.len() as u64;
        if plain.len() as u64 != (self.obj.head.size - part_start).min(PART as u64) {
            return Err(StoreError::Integrity { name: String::new(), reason: format!("part {n} has the wrong size") });
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&plain);
            if n == self.last {
                let got = crate::fsutil::hex(&self.hasher.take().expect("hasher").finalize());
                if got != self.obj.head.sha256 {
                    return Err(StoreError::Integrity { name: String::new(), reason: "sha256 mismatch".into() });
                }
                // A replica that never ingested this object pins it on its first verified read.
                let key = self.store.head_path(&self.obj.head.name()).to_string();
                if self.store.ledger.recorded(&key).is_none() {
                    let _ = self.store.ledger.record(&key, &got);
                }
            }
        }
        let from = self.start.saturating_sub(part_start) as usize;
        let to = (self.end.min(want) - part_start) as usize;
        self.store.stats.bytes_served.fetch_add((to - from) as u64, Ordering::Relaxed);
        Ok(Bytes::from(plain).slice(from..to))
    }
}

impl ModStore {
    /// Store the artifact in file `src` under `n`, write-once. `served_as`: the module path as
    /// authorized; `upstream`: where it came from. Runs to its end even when the caller goes
    /// away (a cancelled write would leave parts without a head); parts of a write that fails
    /// are deleted.
    pub async fn ingest(
        self: &Arc<Self>,
        n: &ObjectName,
        served_as: &str,
        upstream: &str,
        src: &Path,
    ) -> Result<Ingested, StoreError> {
        let (me, n2, served, up, file) =
            (self.clone(), n.clone(), served_as.to_string(), upstream.to_string(), src.to_path_buf());
        let job = tokio::spawn(async move {
            let key_name = me.head_path(&n2).to_string();
            let lock = me.inflight.lock().expect("inflight poisoned").entry(key_name.clone()).or_default().clone();
            let one = lock.lock().await;
            let out = me.ingest_one(&n2, &served, &up, &file).await;
            drop(one);
            let mut g = me.inflight.lock().expect("inflight poisoned");
            if Arc::strong_count(&lock) <= 2 {
                g.remove(&key_name);
            }
            out
        });
        job.await.map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// The digest of `src`, from the cache when this very file was hashed already.
    async fn digest_cached(&self, kind: Kind, src: &Path) -> Result<Digested, StoreError> {
        let meta = std::fs::metadata(src)?;
        let key = (src.to_path_buf(), meta.len(), meta.modified()?);
        if let Some(d) = self.digests.lock().expect("digest cache poisoned").get(&key) {
            return Ok(d.clone());
        }
        let d = digest(kind, src.to_path_buf()).await?;
        let mut g = self.digests.lock().expect("digest cache poisoned");
        if g.len() > 1024 {
            g.clear();
        }
        g.insert(key, d.clone());
        Ok(d)
    }

    async fn ingest_one(
        &self,
        n: &ObjectName,
        served_as: &str,
        upstream: &str,
        src: &Path,
    ) -> Result<Ingested, StoreError> {
        let (size, sha, h1) = self.digest_cached(n.kind, src).await?;
        let head_path = self.head_path(n);
        let key_name = head_path.to_string();
        // Stored meanwhile (by the ingest this one waited for, or another replica).
        if let Ok(Some(stored)) = self.get(n).await {
            if stored.head.sha256 == sha {
                return Ok(Ingested::Stored(stored));
            }
            self.stats.upstream_changed.fetch_add(1, Ordering::Relaxed);
            return Ok(Ingested::Kept { stored, fetched_sha256: sha });
        }
        if let Some(seen) = self.ledger.recorded(&key_name)
            && seen != sha
            && self.ledger.recheck(&key_name).is_some_and(|s| s != sha)
        {
            self.stats.upstream_changed.fetch_add(1, Ordering::Relaxed);
            return Err(StoreError::Changed { name: n.to_string(), recorded: seen, fetched: sha });
        }
        let (key_id, key) = self.keys.current();
        let nonce = crate::random_bytes::<7>();
        let head = Head {
            format: 1,
            module: n.module.clone(),
            version: n.version.clone(),
            kind: n.kind,
            key_id,
            nonce: crate::fsutil::hex(&nonce),
            object: hexrand::<12>(),
            size,
            sha256: sha.clone(),
            h1,
            served_as: served_as.to_string(),
            upstream: upstream.to_string(),
            created: crate::unix_now(),
        };
        let raw = Bytes::from(serde_json::to_vec(&head).expect("head serializes"));
        let sealer = Sealer::new(&key, nonce, &raw, size);
        if let Err(e) = self.put_parts(&head, &sealer, src).await {
            self.delete_parts(n, &head.object).await;
            return Err(e);
        }
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.timed(self.os.put_opts(&head_path, PutPayload::from(raw.clone()), create)).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => return self.lost_race(n, &head, sha).await,
            Err(source) => {
                self.delete_parts(n, &head.object).await;
                return Err(StoreError::Backend { op: "write", source });
            }
        }
        let _ = self.ledger.record(&key_name, &sha);
        self.stats.bytes_stored.fetch_add(size, Ordering::Relaxed);
        let on_disk = on_disk(size, raw.len());
        if self.cfg.backend == StoreBackend::Dir
            && self.approx_bytes.fetch_add(on_disk, Ordering::Relaxed) + on_disk > self.cfg.max_size
        {
            self.evict(n).await;
        }
        Ok(Ingested::Stored(Stored { head, raw }))
    }

    /// Another writer committed `n` first: drop these parts, keep (and serve) theirs, and say
    /// whether the bytes differ.
    async fn lost_race(&self, n: &ObjectName, ours: &Head, sha: String) -> Result<Ingested, StoreError> {
        self.delete_parts(n, &ours.object).await;
        let stored = self.get(n).await?.ok_or_else(|| StoreError::Integrity {
            name: n.to_string(),
            reason: "head vanished after a conflict".into(),
        })?;
        if stored.head.sha256 != sha {
            self.stats.upstream_changed.fetch_add(1, Ordering::Relaxed);
            return Ok(Ingested::Kept { stored, fetched_sha256: sha });
        }
        let _ = self.ledger.record(self.head_path(n).as_ref(), &sha);
        Ok(Ingested::Stored(stored))
    }

    /// Seal `src` into parts, hashing what is sealed: bytes that differ from the digest taken
    /// before (the file changed underneath) are refused before any head names them.
    async fn put_parts(&self, head: &Head, sealer: &Sealer, src: &Path) -> Result<(), StoreError> {
        use tokio::io::AsyncReadExt;
        let name = head.name();
        let bad = |reason: String| StoreError::Integrity { name: name.to_string(), reason };
        let mut f = tokio::fs::File::open(src).await?;
        let mut buf = vec![0u8; PART];
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        for part in 0..head.parts() {
            let mut filled = 0;
            while filled < PART {
                let k = f.read(&mut buf[filled..]).await?;
                if k == 0 {
                    break;
                }
                filled += k;
            }
            hasher.update(&buf[..filled]);
            total += filled as u64;
            let mut sealed = Vec::with_capacity(filled + SEGMENTS_PER_PART * crypt::TAG);
            let chunks: Vec<&[u8]> =
                if filled == 0 { vec![&[][..]] } else { buf[..filled].chunks(crypt::SEGMENT).collect() };
            for (i, seg) in chunks.into_iter().enumerate() {
                let index = part * SEGMENTS_PER_PART as u64 + i as u64;
                sealed.extend(sealer.seal(index, seg).map_err(|e| bad(e.to_string()))?);
            }
            let path = self.part_path(&name, &head.object, part);
            let create = PutOptions { mode: PutMode::Create, ..Default::default() };
            self.timed(self.os.put_opts(&path, PutPayload::from(sealed), create))
                .await
                .map_err(|source| StoreError::Backend { op: "write", source })?;
        }
        let more = f.read(&mut buf[..1]).await?;
        if total != head.size || more != 0 || crate::fsutil::hex(&hasher.finalize()) != head.sha256 {
            return Err(bad("the file changed while it was stored".into()));
        }
        Ok(())
    }

    async fn delete_parts(&self, n: &ObjectName, object: &str) {
        let mut list = self.os.list(Some(&self.parts_dir(n, object)));
        while let Some(Ok(m)) = list.next().await {
            let _ = self.os.delete(&m.location).await;
        }
    }

    /// Every stored head (for `gocred store ls` and eviction), with its last modification (Unix ms).
    pub async fn heads(&self) -> Result<Vec<(Head, u64)>, StoreError> {
        let root = self.path(&["v1"]);
        let mut out = Vec::new();
        let mut list = self.os.list(Some(&root));
        while let Some(m) = list.next().await {
            let m = m.map_err(|source| StoreError::Backend { op: "list", source })?;
            let loc = m.location.to_string();
            if loc.contains(".parts/") || !(loc.ends_with(".zip") || loc.ends_with(".mod") || loc.ends_with(".info")) {
                continue;
            }
            if let Ok(b) = self.get_capped(&m.location, HEAD_CAP).await
                && let Ok(h) = serde_json::from_slice::<Head>(&b)
            {
                out.push((h, m.last_modified.timestamp_millis().max(0) as u64));
            }
        }
        out.sort_by(|a, b| {
            (&a.0.module, &a.0.version, a.0.kind.as_str()).cmp(&(&b.0.module, &b.0.version, b.0.kind.as_str()))
        });
        Ok(out)
    }

    async fn total_bytes(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut list = self.os.list(Some(&self.path(&["v1"])));
        while let Some(m) = list.next().await {
            total += m.map_err(|source| StoreError::Backend { op: "list", source })?.size;
        }
        Ok(total)
    }

    /// Remove `n` (head and parts); `forget`: also drop this replica's ledger line, so a
    /// different upstream answer for it will be accepted.
    pub async fn remove(&self, n: &ObjectName, forget: bool) -> Result<bool, StoreError> {
        let head_path = self.head_path(n);
        let found = match self.get(n).await {
            Ok(Some(s)) => {
                self.delete_parts(n, &s.head.object).await;
                true
            }
            Ok(None) => false,
            Err(StoreError::Integrity { .. }) => {
                let mut list = self.os.list(Some(&self.all_parts_dir(n)));
                while let Some(Ok(m)) = list.next().await {
                    let _ = self.os.delete(&m.location).await;
                }
                true
            }
            Err(e) => return Err(e),
        };
        if found {
            self.os.delete(&head_path).await.map_err(|source| StoreError::Backend { op: "delete", source })?;
        }
        if forget {
            self.ledger.forget(head_path.as_ref())?;
        }
        Ok(found)
    }

    /// Read `n` whole and re-check every hash (the zip's `h1:` too).
    pub async fn verify(self: &Arc<Self>, n: &ObjectName) -> Result<Head, StoreError> {
        let obj = self
            .get(n)
            .await?
            .ok_or_else(|| StoreError::Integrity { name: n.to_string(), reason: "not stored".into() })?;
        let tmp = self.tmp.join(format!("verify-{}", hexrand::<8>()));
        let written = async {
            use std::os::unix::fs::OpenOptionsExt;
            use tokio::io::AsyncWriteExt;
            let f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            let mut f = tokio::fs::File::from_std(f);
            let mut s = self.read(&obj, 0..obj.head.size).await?;
            while let Some(b) = s.next().await {
                f.write_all(&b?).await?;
            }
            f.flush().await?;
            Ok::<_, StoreError>(())
        }
        .await;
        let checked = match written {
            Ok(()) => digest(n.kind, tmp.clone()).await.map_err(StoreError::from),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&tmp);
        let (_, sha, h1) = checked?;
        if sha != obj.head.sha256 || h1 != obj.head.h1 {
            return Err(self
                .failed(&obj, "the recomputed hashes differ from the ones recorded at ingest".into())
                .await);
        }
        Ok(obj.head)
    }

    /// Drop least-recently-used objects until the local store is under 90% of its cap; never
    /// `keep`, the object just stored (its request is about to read it).
    async fn evict(&self, keep: &ObjectName) {
        let Ok(heads) = self.heads().await else { return };
        let used = self.used.lock().expect("store lru poisoned").clone();
        let mut by_use: Vec<(u64, Head)> = heads
            .into_iter()
            .map(|(h, modified)| (used.get(&self.head_path(&h.name()).to_string()).copied().unwrap_or(modified), h))
            .collect();
        by_use.sort_by_key(|(t, _)| *t);
        let target = self.cfg.max_size / 10 * 9;
        let mut total = self.total_bytes().await.unwrap_or(0);
        for (_, h) in by_use {
            if total <= target {
                break;
            }
            if h.name() == *keep {
                continue;
            }
            if self.remove(&h.name(), false).await.is_ok() {
                total = total.saturating_sub(on_disk(h.size, serde_json::to_vec(&h).map_or(0, |v| v.len())));
                self.stats.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.approx_bytes.store(total, Ordering::Relaxed);
    }

    /// A private temporary file path for a fetch on its way in, removed when dropped.
    pub fn temp_path(&self, what: &str) -> crate::fsutil::TempPath {
        crate::fsutil::TempPath::new(self.tmp.join(format!("{what}-{}", hexrand::<8>())))
    }

    /// Prometheus lines for the store's counters.
    pub fn render_metrics(&self) -> String {
        let s = &self.stats;
        let l = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let mut out = String::new();
        for (name, help, v) in [
            ("gocred_store_hits_total", "Artifacts served from the module store.", l(&s.hits)),
            ("gocred_store_misses_total", "Artifacts fetched from an upstream and stored.", l(&s.misses)),
            ("gocred_store_bytes_served_total", "Plaintext bytes read from the store.", l(&s.bytes_served)),
            ("gocred_store_bytes_stored_total", "Plaintext bytes written to the store.", l(&s.bytes_stored)),
            ("gocred_store_evictions_total", "Versions evicted from the local store.", l(&s.evictions)),
            (
                "gocred_store_integrity_failures_total",
                "Stored objects that failed a check (quarantined).",
                l(&s.integrity_failures),
            ),
            (
                "gocred_store_upstream_changed_total",
                "Upstream answers that differ from what was first served.",
                l(&s.upstream_changed),
            ),
            (
                "gocred_store_errors_total",
                "Store operations that failed (served from the upstream instead).",
                l(&s.errors),
            ),
            ("gocred_store_stale_lists_total", "Lists served stale because the upstream failed.", l(&s.stale_lists)),
            ("gocred_store_backend_operations_total", "Backend operations.", l(&s.backend_ops)),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
        }
        let secs = l(&s.backend_micros) as f64 / 1e6;
        out.push_str(&format!(
            "# HELP gocred_store_backend_seconds_total Time spent in backend operations.\n# TYPE gocred_store_backend_seconds_total counter\ngocred_store_backend_seconds_total{{backend=\"{}\"}} {secs}\n",
            if self.cfg.backend == StoreBackend::Dir { "dir" } else { "s3" }
        ));
        out
    }
}

/// Heads are small JSON; anything bigger was not written by a broker.
const HEAD_CAP: u64 = 16 * 1024;
/// A sealed part: its plaintext and one tag per segment.
const PART_CAP: u64 = (PART + SEGMENTS_PER_PART * crypt::TAG) as u64;

fn too_big(path: &OPath, size: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "gocred module store",
        source: format!("{path} is {size} bytes, more than a broker writes there").into(),
    }
}

/// Size, SHA-256 and `h1:` of an artifact file (off the async threads).
async fn digest(kind: Kind, path: PathBuf) -> std::io::Result<(u64, String, Option<String>)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            h.update(&buf[..n]);
        }
        let h1 = match kind {
            Kind::Zip => Some(hash::zip_h1(&path)?),
            Kind::Mod => Some(hash::gomod_h1(&std::fs::read(&path)?)),
            Kind::Info => None,
        };
        Ok((size, crate::fsutil::hex(&h.finalize()), h1))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// `module@version` → its name as `gocred store` takes it (`kind`: which artifact).
pub fn parse_name(s: &str, kind: Kind) -> Option<ObjectName> {
    let (module, version) = s.rsplit_once('@')?;
    (!module.is_empty() && !version.is_empty()).then(|| ObjectName {
        module: module.into(),
        version: version.into(),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, FileBackendConfig, SecretsConfig};

    #[test]
    fn names_escape_like_the_goproxy_protocol() {
        assert_eq!(escape("github.com/Azure/x"), "github.com/!azure/x");
    }

    async fn open_in(dir: &Path) -> Result<Arc<ModStore>, StoreError> {
        let secrets = SecretsConfig {
            backend: BackendConfig::File(FileBackendConfig {
                path: dir.join("secrets.enc"),
                key_file: Some(dir.join("file.key")),
                create_key: true,
            }),
            prefix: "gocred".into(),
            grace: std::time::Duration::from_secs(60),
            probe_every: std::time::Duration::from_secs(60),
        };
        let secrets = Arc::new(SecretStore::open(&secrets).await.expect("secrets"));
        let cfg = StoreConfig {
            dir: dir.join("store"),
            backend: StoreBackend::Dir,
            max_size: 1 << 30,
            list_ttl: std::time::Duration::from_secs(60),
            negative_ttl: std::time::Duration::from_secs(60),
        };
        Ok(Arc::new(ModStore::open(&cfg, secrets, "gocred").await?))
    }

    fn name(module: &str) -> ObjectName {
        ObjectName { module: module.into(), version: "v1.0.0".into(), kind: Kind::Info }
    }

    /// Every file under `dir`.
    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }

    /// Module paths with `~` (escaped by object_store's path rules): stored, read, and removed
    /// without leaving a part behind; quarantine moves every part too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn odd_module_paths_leave_nothing_behind() {
        let d = tempfile::tempdir().unwrap();
        let store = open_in(d.path()).await.unwrap();
        let src = d.path().join("info");
        std::fs::write(&src, br#"{"Version":"v1.0.0"}"#).unwrap();
        for m in ["corp.test/a~b/C", "corp.test/x"] {
            let n = name(m);
            let Ingested::Stored(obj) = store.ingest(&n, m, "up", &src).await.unwrap() else { panic!("kept") };
            assert_eq!(store.read_all(&obj).await.unwrap(), std::fs::read(&src).unwrap());
        }
        let objects = d.path().join("store/objects");
        assert!(store.remove(&name("corp.test/a~b/C"), false).await.unwrap());
        let left: Vec<_> = files(&objects).into_iter().filter(|p| p.display().to_string().contains("a~b")).collect();
        let left2: Vec<_> = files(&objects).into_iter().filter(|p| p.display().to_string().contains("a%7Eb")).collect();
        assert!(left.is_empty() && left2.is_empty(), "left behind: {left:?} {left2:?}");
        store.quarantine(&name("corp.test/x")).await;
        let live: Vec<_> =
            files(&objects).into_iter().filter(|p| !p.display().to_string().contains("quarantine")).collect();
        assert!(live.is_empty(), "not quarantined: {live:?}");
    }

    /// A store that holds objects refuses to open when its keys record is gone (a fresh key
    /// would silently make every object unreadable); an empty one creates it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_keys_record_is_refused_when_objects_exist() {
        let d = tempfile::tempdir().unwrap();
        let store = open_in(d.path()).await.unwrap();
        let src = d.path().join("info");
        std::fs::write(&src, b"{}").unwrap();
        store.ingest(&name("corp.test/m"), "corp.test/m", "up", &src).await.unwrap();
        drop(store);
        let s = open_in(d.path()).await.unwrap();
        assert!(s.keys.secrets.delete("gocred/store-keys").await.unwrap());
        drop(s);
        match open_in(d.path()).await {
            Err(StoreError::Keys { reason, .. }) => assert!(reason.contains("restore"), "{reason}"),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("opened with a fresh key over sealed objects"),
        }
        std::fs::remove_dir_all(d.path().join("store/objects")).unwrap();
        assert!(open_in(d.path()).await.is_ok(), "an empty store makes its keys");
    }

    /// A planted oversized head or part is refused without being buffered; an unknown key id
    /// re-reads the record once, not on every request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_objects_and_unknown_keys_are_refused_cheaply() {
        let d = tempfile::tempdir().unwrap();
        let store = open_in(d.path()).await.unwrap();
        let n = name("corp.test/big");
        let head = d.path().join("store/objects/v1/corp.test/big/@v/v1.0.0.info");
        std::fs::create_dir_all(head.parent().unwrap()).unwrap();
        std::fs::write(&head, vec![b' '; HEAD_CAP as usize + 1]).unwrap();
        match store.get(&n).await {
            Err(StoreError::Backend { source, .. }) => assert!(source.to_string().contains("more than"), "{source}"),
            other => panic!("an oversized head was read: {other:?}"),
        }
        assert!(store.keys.get("k99").await.is_err());
        let at = store.keys.unknown.lock().unwrap()["k99"];
        assert!(store.keys.get("k99").await.is_err());
        assert_eq!(store.keys.unknown.lock().unwrap()["k99"], at, "re-read the record again within REREAD");
    }

    /// Bytes that change between the digest and the sealing are never committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_changed_while_stored_is_not_committed() {
        let d = tempfile::tempdir().unwrap();
        let store = open_in(d.path()).await.unwrap();
        let src = d.path().join("zip");
        std::fs::write(&src, b"first").unwrap();
        let n = ObjectName { kind: Kind::Mod, ..name("corp.test/c") };
        let (size, sha, h1) = store.digest_cached(Kind::Mod, &src).await.unwrap();
        std::fs::write(&src, b"other").unwrap();
        let (key_id, key) = store.keys.current();
        let head = Head {
            format: 1,
            module: n.module.clone(),
            version: n.version.clone(),
            kind: n.kind,
            key_id,
            nonce: "00000000000000".into(),
            object: "ab".into(),
            size,
            sha256: sha,
            h1,
            served_as: n.module.clone(),
            upstream: "up".into(),
            created: 0,
        };
        let sealer = Sealer::new(&key, [0; 7], b"head", size);
        assert!(matches!(store.put_parts(&head, &sealer, &src).await, Err(StoreError::Integrity { .. })));
    }
}
