//! `[policy]` (where the Cedar policies are) and `[audit]` (where the audit log goes): their
//! validated types and validators.

use super::ConfigError;
use super::Ctx;
use super::raw::{RawAudit, RawPolicy};
use std::path::PathBuf;

/// Where the Cedar policies come from.
#[derive(Debug, Clone)]
pub enum PolicyConfig {
    /// `dir/gocred.cedarschema` + `dir/*.cedar`, reloaded on SIGHUP.
    Dir(PathBuf),
    /// `--dev`: the embedded policy letting `user` download everything.
    Dev { user: String },
    /// No `[policy]` section: no policies, so everything is denied (a warning at start).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditConfig {
    Stdout,
    File(PathBuf),
}

/// `[policy]` → [`PolicyConfig`] (no section: no policies).
pub(super) fn validate_policy(cx: &Ctx, raw: Option<RawPolicy>) -> PolicyConfig {
    match raw {
        Some(p) => PolicyConfig::Dir(cx.rel(p.dir)),
        None => PolicyConfig::None,
    }
}

/// `[audit]` → [`AuditConfig`] (`path = "-"` or no section: stdout).
pub(super) fn validate_audit(cx: &Ctx, raw: Option<RawAudit>) -> Result<AuditConfig, ConfigError> {
    match raw.map(|a| a.path) {
        None => Ok(AuditConfig::Stdout),
        Some(p) if p == "-" => Ok(AuditConfig::Stdout),
        Some(p) if p.is_empty() => Err(cx.err("audit.path", "must be \"-\" or a file path".into())),
        Some(p) => Ok(AuditConfig::File(cx.rel(PathBuf::from(p)))),
    }
}

/// The module store (`[store]`): where built modules and stored versions live.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The broker's private data dir: git mirrors, built zips, the local object store, the ledger.
    pub dir: PathBuf,
    pub backend: StoreBackend,
    /// `dir` backend: evict least-recently-used versions beyond this many bytes.
    pub max_size: u64,
    /// How long `@v/list` and `@latest` answers are reused before asking the upstream again.
    pub list_ttl: std::time::Duration,
    /// How long "does not exist" is remembered.
    pub negative_ttl: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// Objects under `<dir>/objects`.
    Dir,
    /// An S3-compatible bucket shared by replicas.
    S3(S3Config),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    pub endpoint: Option<String>,
    pub region: String,
    /// Key prefix inside the bucket.
    pub prefix: String,
    pub allow_http: bool,
    /// `vault:PATH` (fields `access_key_id`, `secret_access_key`) or `None`: the `AWS_*`
    /// environment (access keys, web identity, instance metadata).
    pub credentials: Option<String>,
}

/// `"10GiB"`, `"512MiB"`, `"1000000"` → bytes.
pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// `[store]` → [`StoreConfig`]; `dir` defaults to `store` next to the config file.
pub(super) fn validate_store(cx: &Ctx, raw: Option<super::raw::RawStore>) -> Result<StoreConfig, ConfigError> {
    let raw = raw.unwrap_or(super::raw::RawStore {
        dir: None,
        backend: None,
        max_size: None,
        list_ttl: None,
        negative_ttl: None,
        s3: None,
    });
    let dir = match raw.dir {
        // Next to the config file, like its other relative paths: one broker, one store.
        None => cx.rel(PathBuf::from("store")),
        Some(d) if d.as_os_str().is_empty() => return Err(cx.err("store.dir", "must be a directory path".into())),
        Some(d) => cx.rel(d),
    };
    let max_size = match raw.max_size.as_deref() {
        None => 10 << 30,
        Some(s) => parse_size(s)
            .filter(|n| *n > 0)
            .ok_or_else(|| cx.err("store.max_size", format!("`{s}` is not a size like \"10GiB\" or \"512MiB\"")))?,
    };
    let backend = match (raw.backend.as_deref(), raw.s3) {
        (None | Some("dir"), None) => StoreBackend::Dir,
        (None | Some("s3"), Some(s3)) => StoreBackend::S3(validate_s3(cx, s3)?),
        (Some("s3"), None) => return Err(cx.err("store.s3", "backend = \"s3\" needs [store.s3] bucket".into())),
        (Some("dir"), Some(_)) => {
            return Err(cx.err("store.s3", "[store.s3] is set but backend = \"dir\"".into()));
        }
        (Some(b), _) => return Err(cx.err("store.backend", format!("`{b}` is not \"dir\" or \"s3\""))),
    };
    Ok(StoreConfig {
        dir,
        backend,
        max_size,
        list_ttl: cx.duration("store.list_ttl", raw.list_ttl.as_deref(), std::time::Duration::from_secs(60))?,
        negative_ttl: cx.duration(
            "store.negative_ttl",
            raw.negative_ttl.as_deref(),
            std::time::Duration::from_secs(10),
        )?,
    })
}

fn validate_s3(cx: &Ctx, s3: super::raw::RawS3) -> Result<S3Config, ConfigError> {
    if s3.bucket.is_empty() || s3.bucket.contains('/') {
        return Err(cx.err("store.s3.bucket", "must be a bucket name".into()));
    }
    if let Some(e) = &s3.endpoint
        && !(e.starts_with("https://") || e.starts_with("http://"))
    {
        return Err(cx.err("store.s3.endpoint", format!("`{e}` is not an http(s) URL")));
    }
    let allow_http = s3.allow_http.unwrap_or(false);
    if s3.endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) && !allow_http {
        return Err(cx.err("store.s3.endpoint", "an http:// endpoint needs allow_http = true".into()));
    }
    if let Some(c) = &s3.credentials
        && !c.starts_with("vault:")
    {
        return Err(cx.err("store.s3.credentials", "must be \"vault:PATH\" (or unset: the AWS_* environment)".into()));
    }
    Ok(S3Config {
        bucket: s3.bucket,
        endpoint: s3.endpoint,
        region: s3.region.unwrap_or_else(|| "us-east-1".into()),
        prefix: s3.prefix.unwrap_or_default().trim_matches('/').to_string(),
        allow_http,
        credentials: s3.credentials,
    })
}
