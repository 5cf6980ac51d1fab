//! Broker configuration: TOML file, then `GOCRED_...` environment overrides, then command-line
//! flags (file < env < flags), deserialized into a raw serde struct that rejects unknown keys and
//! validated into an immutable [`Config`].
//!
//! Environment overrides name the key path with `__` between levels, upper-cased:
//! `GOCRED_SERVER__LISTEN=127.0.0.1:9443`, `GOCRED_VAULT__AUTH__ROLE_ID=...`,
//! `GOCRED_TOKENS__REQUIRE_PROOF=false`. Values `true`/`false` become booleans, values starting
//! with `[` are parsed as TOML arrays, everything else is a string. Variables without `__`
//! (`GOCRED_FILE_KEY`, `GOCRED_LOG`, ...) are not config keys.
//!
//! Must not: open sockets, read secrets backends, or create files.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem, always naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: invalid TOML: {message}")]
    ParseToml { origin: String, message: String },
    #[error("{origin}: key `{key}`: {message}")]
    Key { origin: String, key: String, message: String },
}

/// Where the configuration came from, for error messages.
fn origin_of(file: Option<&Path>) -> String {
    match file {
        Some(p) => format!("config {}", p.display()),
        None => "config".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) layer
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: RawServer,
    #[serde(default)]
    tokens: RawTokens,
    secrets: RawSecrets,
    vault: Option<RawVault>,
    ssh: Option<RawSsh>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    policy: Option<RawPolicy>,
    audit: Option<RawAudit>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSsh {
    authorized_keys: Option<String>,
    #[serde(default)]
    trusted_user_ca_keys: Vec<String>,
    #[serde(default)]
    groups: std::collections::BTreeMap<String, Vec<String>>,
    challenge_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    kind: UpstreamKind,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    modules: Vec<String>,
    url: String,
    credentials: Option<String>,
    mode: Option<UpstreamMode>,
    ca_cert: Option<PathBuf>,
    timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    public_url: Option<String>,
    tls: Option<RawTls>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTokens {
    ttl: Option<String>,
    max_session: Option<String>,
    require_proof: Option<bool>,
    rotate_every: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawBackend {
    File,
    Vault,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecrets {
    backend: RawBackend,
    file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    prefix: Option<String>,
    grace: Option<String>,
    probe_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: String,
    kv_mount: Option<String>,
    ca_cert: Option<PathBuf>,
    timeout: Option<String>,
    auth: RawVaultAuth,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawAuthMethod {
    Token,
    Approle,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVaultAuth {
    method: RawAuthMethod,
    token: Option<String>,
    token_file: Option<PathBuf>,
    mount: Option<String>,
    role_id: Option<String>,
    secret_id: Option<String>,
    secret_id_file: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Validated layer
// ---------------------------------------------------------------------------------------------

/// The validated, immutable broker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
    pub server: ServerConfig,
    pub tokens: TokensConfig,
    pub secrets: SecretsConfig,
    pub ssh: SshConfig,
    pub upstreams: Vec<Upstream>,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    /// Set by `serve --dev`: loopback only, embedded defaults.
    pub dev: bool,
}

/// Where SSH public keys for login come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizedKeys {
    /// No plain-key login (certificates only, if CAs are configured).
    None,
    /// A directory with one OpenSSH `authorized_keys`-format file per user, named after the user.
    Dir(PathBuf),
    /// A secrets-backend path: the record `<path>/<user>` holds field `keys` (authorized_keys text).
    Secrets(String),
    /// Fixed keys per user (`--dev`: the local user's `~/.ssh/*.pub`).
    Inline(std::collections::BTreeMap<String, Vec<String>>),
}

#[derive(Debug, Clone)]
pub struct SshConfig {
    pub authorized_keys: AuthorizedKeys,
    /// OpenSSH public keys (text) of CAs whose user certificates are trusted for login.
    pub trusted_user_ca_keys: Vec<String>,
    /// Extra groups per user name (merged into the token's `groups`).
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    /// How long a login challenge may be answered (default 60s).
    pub challenge_ttl: Duration,
}

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// A git smart-HTTP server (`/git/<host>/...` and host-routed `go-get`).
    Git,
    /// A Go module proxy (GOPROXY protocol, `/mod/...`).
    Goproxy,
}

/// How callers get at an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// The broker forwards requests with the upstream credential.
    Proxy,
    /// Callers fetch the credential itself (`GET /v1/credentials`), for hosts that cannot be proxied.
    Vend,
}

/// A private git server or module proxy in front of which gocred stands.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub kind: UpstreamKind,
    /// Host names it serves (git: module hosts; host-routed requests match these).
    pub hosts: Vec<String>,
    /// Module path prefixes it serves (GOPRIVATE-style; default: the hosts).
    pub modules: Vec<String>,
    /// Base URL, without a trailing slash.
    pub url: String,
    /// Secrets-backend path of the upstream credential (fields `username`+`password`, or `token`).
    pub credentials: Option<String>,
    pub mode: UpstreamMode,
    pub ca_cert: Option<PathBuf>,
    /// Connect + per-read timeout.
    pub timeout: Duration,
}

impl Upstream {
    /// Does this upstream serve `module` (a path prefix match on element boundaries)?
    pub fn serves(&self, module: &str) -> bool {
        self.modules.iter().any(|p| module == p || module.starts_with(&format!("{p}/")))
    }
}

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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// The broker's origin as clients see it (`https://host:port`, no path). `None`: derived
    /// from the bound address at start.
    pub public_url: Option<String>,
    pub tls: Option<TlsFiles>,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub ttl: Duration,
    pub max_session: Duration,
    pub require_proof: bool,
    pub rotate_every: Duration,
}

#[derive(Debug, Clone)]
pub struct SecretsConfig {
    pub backend: BackendConfig,
    /// Path prefix under which gocred keeps its own records (signing keys, revocations).
    pub prefix: String,
    /// How long the backend may be unreachable before `/readyz` reports not ready.
    pub grace: Duration,
    /// How often the backend is probed.
    pub probe_every: Duration,
}

#[derive(Debug, Clone)]
pub enum BackendConfig {
    File(FileBackendConfig),
    Vault(VaultConfig),
}

#[derive(Debug, Clone)]
pub struct FileBackendConfig {
    pub path: PathBuf,
    /// Where the 32-byte key lives when `GOCRED_FILE_KEY` is not set.
    pub key_file: Option<PathBuf>,
    /// `--dev`: create the key file when missing.
    pub create_key: bool,
}

#[derive(Debug, Clone)]
pub struct VaultConfig {
    pub address: String,
    pub kv_mount: String,
    pub ca_cert: Option<PathBuf>,
    pub timeout: Duration,
    pub auth: VaultAuth,
}

/// How the broker logs in to Vault. Secret material stays in files or `secrecy` types.
#[derive(Clone)]
pub enum VaultAuth {
    Token(SecretSource),
    AppRole { mount: String, role_id: String, secret_id: SecretSource },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VaultAuth::Token(s) => f.debug_tuple("Token").field(s).finish(),
            VaultAuth::AppRole { mount, role_id, secret_id } => f
                .debug_struct("AppRole")
                .field("mount", mount)
                .field("role_id", role_id)
                .field("secret_id", secret_id)
                .finish(),
        }
    }
}

/// A secret given inline or in a file (read when needed, so rotation of the file is picked up).
#[derive(Clone)]
pub enum SecretSource {
    Inline(secrecy::SecretString),
    File(PathBuf),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline([REDACTED])"),
            SecretSource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl SecretSource {
    /// The secret's current value.
    pub fn read(&self) -> std::io::Result<secrecy::SecretString> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(p) => {
                let s = std::fs::read_to_string(p)?;
                Ok(secrecy::SecretString::from(s.trim().to_string()))
            }
        }
    }
}

/// The local user `--dev` authorizes: their name and `~/.ssh/*.pub` keys.
#[derive(Debug, Clone, Default)]
pub struct DevIdentity {
    pub user: String,
    pub keys: Vec<String>,
}

impl DevIdentity {
    /// `$USER` (or `LOGNAME`) and the public keys in `$HOME/.ssh/*.pub` (certificates included).
    pub fn from_env() -> DevIdentity {
        let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "dev".into());
        let mut keys = Vec::new();
        if let Some(home) = std::env::var_os("HOME")
            && let Ok(rd) = std::fs::read_dir(PathBuf::from(home).join(".ssh"))
        {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            files.sort();
            for f in files {
                if let Ok(text) = std::fs::read_to_string(&f) {
                    keys.extend(
                        text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from),
                    );
                }
            }
        }
        DevIdentity { user, keys }
    }
}

/// Command-line overrides (the highest precedence).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
}

impl Config {
    /// Read `path`, apply env overrides from `env` (pairs of name, value) and flag overrides.
    pub fn load(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::ReadFile { path: path.to_path_buf(), source })?;
        Self::from_toml(&text, Some(path), env, flags)
    }

    /// Parse TOML text (from `file`, for messages), apply env and flag overrides, validate.
    pub fn from_toml(
        text: &str,
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Config, ConfigError> {
        let origin = origin_of(file);
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::ParseToml {
            origin: origin.clone(),
            message: e.to_string().lines().next().unwrap_or("").to_string()
                + &e.span().map(|s| format!(" (at line {})", line_of(text, s.start))).unwrap_or_default(),
        })?;
        let mut from_env = Vec::new();
        for (name, value) in env {
            if let Some(key) = env_key(&name) {
                set_path(&mut table, &key, env_value(&value)).map_err(|message| ConfigError::Key {
                    origin: format!("env {name}"),
                    key: key.join("."),
                    message,
                })?;
                from_env.push((key.join("."), name));
            }
        }
        if let Some(listen) = &flags.listen {
            set_path(&mut table, &["server".into(), "listen".into()], toml::Value::String(listen.clone())).map_err(
                |message| ConfigError::Key { origin: "flag --listen".into(), key: "server.listen".into(), message },
            )?;
        }
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let (key, message) = key_and_message(&e);
            let origin = from_env
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, n)| format!("env {n}"))
                .unwrap_or_else(|| origin.clone());
            ConfigError::Key { origin, key, message }
        })?;
        validate(raw, file, &origin)
    }

    /// The embedded `--dev` configuration: loopback HTTPS on 127.0.0.1:8443, the `file` backend
    /// in `data_dir`, a key file created on first start.
    pub fn dev(data_dir: &Path, dev: &DevIdentity, flags: &Overrides) -> Result<Config, ConfigError> {
        let listen = flags.listen.as_deref().unwrap_or("127.0.0.1:8443");
        let listen: SocketAddr = listen.parse().map_err(|_| ConfigError::Key {
            origin: "flag --listen".into(),
            key: "server.listen".into(),
            message: format!("`{listen}` is not an IP:port address"),
        })?;
        if !listen.ip().is_loopback() {
            return Err(ConfigError::Key {
                origin: "flag --listen".into(),
                key: "server.listen".into(),
                message: format!("--dev only listens on loopback, not {}", listen.ip()),
            });
        }
        Ok(Config {
            source: None,
            server: ServerConfig {
                listen,
                public_url: None,
                tls: Some(TlsFiles { cert: data_dir.join("tls/server.pem"), key: data_dir.join("tls/server.key") }),
                shutdown_grace: Duration::from_secs(10),
            },
            tokens: TokensConfig {
                ttl: Duration::from_secs(15 * 60),
                max_session: Duration::from_secs(12 * 3600),
                require_proof: true,
                rotate_every: Duration::from_secs(24 * 3600),
            },
            secrets: SecretsConfig {
                backend: BackendConfig::File(FileBackendConfig {
                    path: data_dir.join("secrets.enc"),
                    key_file: Some(data_dir.join("file.key")),
                    create_key: true,
                }),
                prefix: "gocred".into(),
                grace: Duration::from_secs(30),
                probe_every: Duration::from_secs(5),
            },
            ssh: SshConfig {
                authorized_keys: AuthorizedKeys::Inline(std::collections::BTreeMap::from([(
                    dev.user.clone(),
                    dev.keys.clone(),
                )])),
                trusted_user_ca_keys: Vec::new(),
                groups: std::collections::BTreeMap::new(),
                challenge_ttl: Duration::from_secs(60),
            },
            upstreams: Vec::new(),
            policy: PolicyConfig::Dev { user: dev.user.clone() },
            audit: AuditConfig::File(data_dir.join("audit.log")),
            dev: true,
        })
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `GOCRED_A__B_C` → `["a", "b_c"]`; `None` for names that are not config keys.
fn env_key(name: &str) -> Option<Vec<String>> {
    let rest = name.strip_prefix("GOCRED_")?;
    if !rest.contains("__") {
        return None;
    }
    Some(rest.split("__").map(|s| s.to_ascii_lowercase()).collect())
}

fn env_value(v: &str) -> toml::Value {
    match v {
        "true" => toml::Value::Boolean(true),
        "false" => toml::Value::Boolean(false),
        _ if v.trim_start().starts_with('[') => format!("v = {v}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.to_string())),
        _ => toml::Value::String(v.to_string()),
    }
}

fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = key.split_last().ok_or("empty key")?;
    let mut cur = table;
    let mut parts = parents.iter().enumerate().peekable();
    while let Some((i, part)) = parts.next() {
        // `GOCRED_UPSTREAMS__0__URL`: a numeric part indexes an array of tables.
        let index = parts.peek().and_then(|(_, idx)| idx.parse::<usize>().ok());
        if let (Some(n), Some(toml::Value::Array(_))) = (index, cur.get(part.as_str())) {
            parts.next();
            let Some(toml::Value::Array(items)) = cur.get_mut(part.as_str()) else { unreachable!() };
            let item = items.get_mut(n).ok_or_else(|| format!("`{}` has no entry {n}", key[..=i].join(".")))?;
            cur = item.as_table_mut().ok_or_else(|| format!("`{}` is not a table", key[..=i + 1].join(".")))?;
            continue;
        }
        let entry = cur.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().ok_or_else(|| format!("`{}` is not a table", key[..=i].join(".")))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Turn serde's error + path into (full key, message) so every message names the key.
fn key_and_message(e: &serde_path_to_error::Error<toml::de::Error>) -> (String, String) {
    let path = e.path().to_string();
    let inner = e.inner().to_string();
    let mut inner = inner.trim().to_string();
    // toml appends " in `path`"; the key is named separately.
    if let Some(i) = inner.rfind(" in `")
        && inner.ends_with('`')
    {
        inner.truncate(i);
    }
    let join = |field: &str| {
        if path == "." || path.is_empty() { field.to_string() } else { format!("{path}.{field}") }
    };
    // serde: "missing field `x`" / "unknown field `x`, expected ..." are reported at the parent.
    for (prefix, what) in [("missing field `", "required key is missing"), ("unknown field `", "")] {
        if let Some(rest) = inner.strip_prefix(prefix)
            && let Some(end) = rest.find('`')
        {
            let field = &rest[..end];
            let key = if path.ends_with(field) { path.clone() } else { join(field) };
            let message = if what.is_empty() {
                let expected = rest[end + 1..].trim_start_matches(',').trim();
                if expected.is_empty() { "unknown key".to_string() } else { format!("unknown key ({expected})") }
            } else {
                what.to_string()
            };
            return (key, message);
        }
    }
    (if path == "." { String::new() } else { path }, inner)
}

fn duration(origin: &str, key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s).map_err(|e| ConfigError::Key {
            origin: origin.into(),
            key: key.into(),
            message: format!("`{s}` is not a duration like \"15m\" or \"12h\": {e}"),
        }),
    }
}

fn validate(raw: RawConfig, file: Option<&Path>, origin: &str) -> Result<Config, ConfigError> {
    let err =
        |key: &str, message: String| ConfigError::Key { origin: origin.to_string(), key: key.to_string(), message };
    // Relative paths in the file are relative to the file's directory.
    let base = file.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let rel = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };

    let listen: SocketAddr = raw
        .server
        .listen
        .parse()
        .map_err(|_| err("server.listen", format!("`{}` is not an IP:port address", raw.server.listen)))?;
    let public_url = match raw.server.public_url {
        None => None,
        Some(u) => {
            let trimmed = u.trim_end_matches('/').to_string();
            let rest = trimmed
                .strip_prefix("https://")
                .or_else(|| trimmed.strip_prefix("http://"))
                .ok_or_else(|| err("server.public_url", format!("`{u}` must start with https:// or http://")))?;
            if rest.is_empty() || rest.contains('/') {
                return Err(err(
                    "server.public_url",
                    format!("`{u}` must be an origin (scheme://host[:port]) without a path"),
                ));
            }
            Some(trimmed)
        }
    };
    let server = ServerConfig {
        listen,
        public_url,
        tls: raw.server.tls.map(|t| TlsFiles { cert: rel(t.cert), key: rel(t.key) }),
        shutdown_grace: duration(
            origin,
            "server.shutdown_grace",
            raw.server.shutdown_grace.as_deref(),
            Duration::from_secs(10),
        )?,
    };

    let t = raw.tokens;
    let tokens = TokensConfig {
        ttl: duration(origin, "tokens.ttl", t.ttl.as_deref(), Duration::from_secs(15 * 60))?,
        max_session: duration(origin, "tokens.max_session", t.max_session.as_deref(), Duration::from_secs(12 * 3600))?,
        require_proof: t.require_proof.unwrap_or(true),
        rotate_every: duration(
            origin,
            "tokens.rotate_every",
            t.rotate_every.as_deref(),
            Duration::from_secs(24 * 3600),
        )?,
    };
    if tokens.ttl.is_zero() {
        return Err(err("tokens.ttl", "must be greater than zero".into()));
    }
    if tokens.max_session < tokens.ttl {
        return Err(err("tokens.max_session", "must be at least tokens.ttl".into()));
    }
    if tokens.rotate_every < Duration::from_secs(1) {
        return Err(err("tokens.rotate_every", "must be at least 1s".into()));
    }

    let s = raw.secrets;
    let prefix = s.prefix.unwrap_or_else(|| "gocred".into());
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("..") {
        return Err(err("secrets.prefix", format!("`{prefix}` must be a relative path like \"gocred\"")));
    }
    let backend = match s.backend {
        RawBackend::File => {
            if raw.vault.is_some() {
                return Err(err("vault", "a [vault] section needs secrets.backend = \"vault\"".into()));
            }
            let path =
                s.file.ok_or_else(|| err("secrets.file", "required key is missing (backend = \"file\")".into()))?;
            BackendConfig::File(FileBackendConfig { path: rel(path), key_file: s.key_file.map(rel), create_key: false })
        }
        RawBackend::Vault => {
            if let Some(f) = s.file.as_ref().map(|_| "secrets.file").or(s.key_file.as_ref().map(|_| "secrets.key_file"))
            {
                return Err(err(f, "only used with secrets.backend = \"file\"".into()));
            }
            let v =
                raw.vault.ok_or_else(|| err("vault", "required section is missing (backend = \"vault\")".into()))?;
            let addr = v.address.trim_end_matches('/').to_string();
            let hostpart = addr
                .strip_prefix("https://")
                .or_else(|| addr.strip_prefix("http://"))
                .ok_or_else(|| err("vault.address", format!("`{}` must start with https:// or http://", v.address)))?;
            if hostpart.is_empty() || hostpart.contains(char::is_whitespace) {
                return Err(err("vault.address", format!("`{}` is not a URL", v.address)));
            }
            let a = v.auth;
            let secret =
                |inline: Option<String>, file: Option<PathBuf>, key: &str| -> Result<SecretSource, ConfigError> {
                    match (inline, file) {
                        (Some(s), None) => Ok(SecretSource::Inline(secrecy::SecretString::from(s))),
                        (None, Some(f)) => Ok(SecretSource::File(rel(f))),
                        (Some(_), Some(_)) => Err(err(key, format!("set either {key} or {key}_file, not both"))),
                        (None, None) => Err(err(key, format!("required key is missing (set {key} or {key}_file)"))),
                    }
                };
            let auth = match a.method {
                RawAuthMethod::Token => {
                    for (k, set) in [
                        ("role_id", a.role_id.is_some()),
                        ("secret_id", a.secret_id.is_some()),
                        ("secret_id_file", a.secret_id_file.is_some()),
                        ("mount", a.mount.is_some()),
                    ] {
                        if set {
                            return Err(err(&format!("vault.auth.{k}"), "only used with method = \"approle\"".into()));
                        }
                    }
                    VaultAuth::Token(secret(a.token, a.token_file, "vault.auth.token")?)
                }
                RawAuthMethod::Approle => {
                    if a.token.is_some() || a.token_file.is_some() {
                        return Err(err("vault.auth.token", "only used with method = \"token\"".into()));
                    }
                    VaultAuth::AppRole {
                        mount: a.mount.unwrap_or_else(|| "approle".into()),
                        role_id: a.role_id.ok_or_else(|| {
                            err("vault.auth.role_id", "required key is missing (method = \"approle\")".into())
                        })?,
                        secret_id: secret(a.secret_id, a.secret_id_file, "vault.auth.secret_id")?,
                    }
                }
            };
            BackendConfig::Vault(VaultConfig {
                address: addr,
                kv_mount: v.kv_mount.unwrap_or_else(|| "secret".into()),
                ca_cert: v.ca_cert.map(rel),
                timeout: duration(origin, "vault.timeout", v.timeout.as_deref(), Duration::from_secs(5))?,
                auth,
            })
        }
    };
    let secrets = SecretsConfig {
        backend,
        prefix,
        grace: duration(origin, "secrets.grace", s.grace.as_deref(), Duration::from_secs(30))?,
        probe_every: duration(origin, "secrets.probe_every", s.probe_every.as_deref(), Duration::from_secs(5))?,
    };
    if secrets.probe_every < Duration::from_millis(100) {
        return Err(err("secrets.probe_every", "must be at least 100ms".into()));
    }
    let ssh = match raw.ssh {
        None => SshConfig {
            authorized_keys: AuthorizedKeys::None,
            trusted_user_ca_keys: Vec::new(),
            groups: Default::default(),
            challenge_ttl: Duration::from_secs(60),
        },
        Some(r) => {
            let authorized_keys = match r.authorized_keys {
                None => AuthorizedKeys::None,
                Some(v) => match v.strip_prefix("vault:") {
                    Some(p) if !p.trim_matches('/').is_empty() => {
                        AuthorizedKeys::Secrets(p.trim_matches('/').to_string())
                    }
                    Some(_) => {
                        return Err(err(
                            "ssh.authorized_keys",
                            "`vault:` needs a path, e.g. \"vault:gocred/ssh-keys\"".into(),
                        ));
                    }
                    None => AuthorizedKeys::Dir(rel(PathBuf::from(v))),
                },
            };
            let mut cas = Vec::new();
            for (i, entry) in r.trusted_user_ca_keys.iter().enumerate() {
                let text = if entry.starts_with("ssh-") || entry.starts_with("ecdsa-") {
                    entry.clone()
                } else {
                    let p = rel(PathBuf::from(entry));
                    std::fs::read_to_string(&p).map_err(|e| {
                        err(&format!("ssh.trusted_user_ca_keys[{i}]"), format!("cannot read {}: {e}", p.display()))
                    })?
                };
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                    cas.push(line.to_string());
                }
            }
            let challenge_ttl =
                duration(origin, "ssh.challenge_ttl", r.challenge_ttl.as_deref(), Duration::from_secs(60))?;
            if challenge_ttl.is_zero() || challenge_ttl > Duration::from_secs(600) {
                return Err(err("ssh.challenge_ttl", "must be between 1s and 10m".into()));
            }
            SshConfig { authorized_keys, trusted_user_ca_keys: cas, groups: r.groups, challenge_ttl }
        }
    };
    let policy = match raw.policy {
        Some(p) => PolicyConfig::Dir(rel(p.dir)),
        None => PolicyConfig::None,
    };
    let audit = match raw.audit.map(|a| a.path) {
        None => AuditConfig::Stdout,
        Some(p) if p == "-" => AuditConfig::Stdout,
        Some(p) if p.is_empty() => return Err(err("audit.path", "must be \"-\" or a file path".into())),
        Some(p) => AuditConfig::File(rel(PathBuf::from(p))),
    };
    let mut upstreams: Vec<Upstream> = Vec::new();
    for (i, u) in raw.upstreams.into_iter().enumerate() {
        let key = |k: &str| format!("upstreams[{i}].{k}");
        if u.name.is_empty() || !u.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(&key("name"), format!("`{}` must be letters, digits, - or _", u.name)));
        }
        if upstreams.iter().any(|o| o.name == u.name) {
            return Err(err(&key("name"), format!("`{}` is used by two upstreams", u.name)));
        }
        let url = u.url.trim_end_matches('/').to_string();
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.contains(char::is_whitespace) {
            return Err(err(&key("url"), format!("`{}` must be an http(s) URL", u.url)));
        }
        // No credentials, query or fragment in the URL: credentials live in the secrets backend,
        // and the URL may appear in the broker's log.
        let authority = url.split_once("://").map(|(_, r)| r.split('/').next().unwrap_or("")).unwrap_or("");
        if authority.is_empty() || authority.contains('@') || url.contains(['?', '#']) {
            return Err(err(
                &key("url"),
                "must be scheme://host[:port][/path] without user info, query or fragment".into(),
            ));
        }
        for h in &u.hosts {
            if h.is_empty() || h.contains(['/', ' ', ':']) {
                return Err(err(&key("hosts"), format!("`{h}` must be a bare host name")));
            }
        }
        if u.kind == UpstreamKind::Git && u.hosts.is_empty() {
            return Err(err(&key("hosts"), "required key is missing (kind = \"git\")".into()));
        }
        let modules = if u.modules.is_empty() { u.hosts.clone() } else { u.modules };
        if modules.is_empty() {
            return Err(err(&key("modules"), "required key is missing (kind = \"goproxy\")".into()));
        }
        for m in &modules {
            if m.is_empty() || m.ends_with('/') || m.contains(['*', ' ', ',']) {
                return Err(err(
                    &key("modules"),
                    format!("`{m}` must be a module path prefix like \"git.corp.example/acme\""),
                ));
            }
        }
        let credentials = match u.credentials {
            None => None,
            Some(c) => match c.strip_prefix("vault:").map(|p| p.trim_matches('/')) {
                Some(p) if !p.is_empty() => Some(p.to_string()),
                _ => return Err(err(&key("credentials"), format!("`{c}` must look like \"vault:PATH\""))),
            },
        };
        let mode = u.mode.unwrap_or(UpstreamMode::Proxy);
        if mode == UpstreamMode::Vend && credentials.is_none() {
            return Err(err(&key("credentials"), "required key is missing (mode = \"vend\")".into()));
        }
        upstreams.push(Upstream {
            name: u.name,
            kind: u.kind,
            hosts: u.hosts,
            modules,
            url,
            credentials,
            mode,
            ca_cert: u.ca_cert.map(rel),
            timeout: duration(origin, &key("timeout"), u.timeout.as_deref(), Duration::from_secs(30))?,
        });
    }
    Ok(Config {
        source: file.map(Path::to_path_buf),
        server,
        tokens,
        secrets,
        ssh,
        upstreams,
        policy,
        audit,
        dev: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n";

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml(
            text,
            Some(Path::new("/etc/gocred/broker.toml")),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            &Overrides::default(),
        )
    }

    #[test]
    fn minimal_file_config_gets_defaults() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.tokens.ttl, Duration::from_secs(900));
        assert!(c.tokens.require_proof);
        match c.secrets.backend {
            BackendConfig::File(f) => assert_eq!(f.path, Path::new("/etc/gocred/s.enc")),
            _ => panic!("expected file backend"),
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("{MIN}[tokens]\nttl = \"5m\"\nlifetime = \"1h\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("tokens.lifetime"), "{e}");
        assert!(e.contains("/etc/gocred/broker.toml"), "{e}");
        let e = parse(&format!("{MIN}[bogus]\nx = 1\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("`bogus`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse(&format!("{MIN}[tokens]\nrequire_proof = \"yes\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("tokens.require_proof"), "{e}");
        let e = parse(&MIN.replace("\"127.0.0.1:0\"", "8443"), &[]).unwrap_err().to_string();
        assert!(e.contains("server.listen"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = parse("[server]\n[secrets]\nbackend = \"file\"\nfile = \"x\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("server.listen") && e.contains("missing"), "{e}");
        let e =
            parse("[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("`vault`"), "{e}");
        let v = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\nmethod = \"approle\"\nsecret_id = \"s\"\n";
        let e = parse(v, &[]).unwrap_err().to_string();
        assert!(e.contains("vault.auth.role_id"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_errors_name_the_variable() {
        let c = parse(
            MIN,
            &[
                ("GOCRED_SERVER__LISTEN", "127.0.0.1:9999"),
                ("GOCRED_TOKENS__REQUIRE_PROOF", "false"),
                ("GOCRED_FILE_KEY", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 9999);
        assert!(!c.tokens.require_proof);
        let e = parse(MIN, &[("GOCRED_TOKENS__LIFETIME", "1h")]).unwrap_err().to_string();
        assert!(e.contains("env GOCRED_TOKENS__LIFETIME") && e.contains("tokens.lifetime"), "{e}");
        let e = parse(MIN, &[("GOCRED_TOKENS__TTL", "soon")]).unwrap_err().to_string();
        assert!(e.contains("tokens.ttl"), "{e}");
    }

    #[test]
    fn upstreams_validate_and_env_indexes_arrays() {
        let text = format!(
            "{MIN}[[upstreams]]\nname = \"corp\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"https://127.0.0.1:1/\"\ncredentials = \"vault:gitcreds/corp\"\n"
        );
        let c = parse(&text, &[("GOCRED_UPSTREAMS__0__URL", "https://10.0.0.1:2")]).unwrap();
        assert_eq!(c.upstreams[0].url, "https://10.0.0.1:2");
        assert_eq!(c.upstreams[0].credentials.as_deref(), Some("gitcreds/corp"));
        assert!(c.upstreams[0].serves("git.corp.test/acme/lib"));
        assert!(!c.upstreams[0].serves("git.corp.testevil/acme"));
        let e = parse(&text.replace("hosts = [\"git.corp.test\"]\n", ""), &[]).unwrap_err().to_string();
        assert!(e.contains("upstreams[0].hosts"), "{e}");
        let e = parse(&text.replace("vault:gitcreds/corp", "gitcreds"), &[]).unwrap_err().to_string();
        assert!(e.contains("upstreams[0].credentials"), "{e}");
    }

    #[test]
    fn flags_override_env() {
        let c = Config::from_toml(
            MIN,
            None,
            [("GOCRED_SERVER__LISTEN".to_string(), "127.0.0.1:1".to_string())],
            &Overrides { listen: Some("127.0.0.1:2".into()) },
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 2);
    }

    #[test]
    fn secrets_never_in_debug() {
        let v = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id = \"hunter2-secret\"\n";
        let c = parse(v, &[]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn dev_refuses_non_loopback() {
        let e = Config::dev(
            Path::new("/tmp/x"),
            &DevIdentity::default(),
            &Overrides { listen: Some("0.0.0.0:8443".into()) },
        )
        .unwrap_err();
        assert!(e.to_string().contains("loopback"));
    }

    #[test]
    fn example_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
        Config::load(&p, Vec::new(), &Overrides::default()).unwrap();
    }
}
