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

use crate::proto::rules::secure_url;
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
    oidc: Option<RawOidc>,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    policy: Option<RawPolicy>,
    audit: Option<RawAudit>,
    webhook: Option<RawWebhook>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    #[serde(default, deserialize_with = "num")]
    login_per_second: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    login_burst: Option<u32>,
    #[serde(default, deserialize_with = "num")]
    requests_per_second: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    requests_burst: Option<u32>,
    #[serde(default, deserialize_with = "num")]
    revocations_per_minute: Option<f64>,
}

/// A number, written as one in TOML or as text (environment overrides are text).
fn num<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText<T> {
        Num(T),
        // Helm renders every YAML number as a float (`30.0`).
        Float(f64),
        Text(String),
    }
    match Option::<NumOrText<T>>::deserialize(d)? {
        None => Ok(None),
        Some(NumOrText::Num(v)) => Ok(Some(v)),
        Some(NumOrText::Float(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64)
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{f}` is not a number of the right kind: {e}"))),
        Some(NumOrText::Float(f)) => Err(serde::de::Error::custom(format!("`{f}` must be a whole number"))),
        Some(NumOrText::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{t}` is not a number of the right kind: {e}"))),
    }
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
    require_user_verification: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    #[serde(default)]
    issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    name: String,
    issuer: String,
    kind: IssuerKind,
    #[serde(default)]
    audiences: Vec<String>,
    client_id: Option<String>,
    subject_claim: Option<String>,
    groups_claim: Option<String>,
    #[serde(default)]
    claims: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    scopes: Vec<String>,
    discovery_url: Option<String>,
    ca_cert: Option<PathBuf>,
    leeway: Option<String>,
    max_token_age: Option<String>,
    username_prefix: Option<String>,
    groups_prefix: Option<String>,
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

/// `[webhook]`: the Kubernetes mutating admission webhook (`POST /v1/admission`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    #[serde(default)]
    enabled: bool,
    image: Option<String>,
    broker_url: Option<String>,
    modules: Option<Vec<String>>,
    mode: Option<String>,
    goproxy_fallback: Option<String>,
    token_audience: Option<String>,
    token_expiration: Option<String>,
    ca_file: Option<PathBuf>,
    on_malformed: Option<String>,
    init_resources: Option<String>,
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
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    request_timeout: Option<String>,
    #[serde(default, deserialize_with = "num")]
    max_connections: Option<usize>,
    #[serde(default, deserialize_with = "num")]
    max_connections_per_client: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    reload_every: Option<String>,
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
    Kubernetes,
    Jwt,
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
    role: Option<String>,
    jwt_file: Option<PathBuf>,
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
    /// Trusted OIDC issuers (`[[oidc.issuers]]`): SSO for people, workload identity tokens.
    pub oidc: Vec<OidcIssuer>,
    pub upstreams: Vec<Upstream>,
    pub policy: PolicyConfig,
    pub audit: AuditConfig,
    /// The admission webhook's injection settings; `None`: `POST /v1/admission` is not served.
    pub webhook: Option<crate::webhook::InjectSettings>,
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
    /// Security keys (`sk-ssh-ed25519`, `sk-ecdsa-sha2-nistp256`) must also verify the user (PIN
    /// or biometric), not only their presence (default false; presence is always required).
    pub require_user_verification: bool,
}

/// Who an OIDC issuer's tokens speak for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuerKind {
    /// People signing in with SSO (`gocred login --oidc` / `--device`): principals are `User`s.
    Human,
    /// Kubernetes service-account tokens: principals are `Workload`s.
    Kubernetes,
    /// CI ID tokens (GitHub Actions, GitLab CI, ...): principals are `Workload`s.
    Ci,
}

impl IssuerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            IssuerKind::Human => "human",
            IssuerKind::Kubernetes => "kubernetes",
            IssuerKind::Ci => "ci",
        }
    }
}

/// A trusted OIDC issuer.
#[derive(Debug, Clone)]
pub struct OidcIssuer {
    /// Short name, used in messages and as the principal's `issuer` attribute.
    pub name: String,
    /// The `iss` value, exactly as in the tokens.
    pub issuer: String,
    pub kind: IssuerKind,
    /// Accepted `aud` values (a token must name at least one).
    pub audiences: Vec<String>,
    /// Public client id for `gocred login` (human issuers).
    pub client_id: Option<String>,
    /// Scopes `gocred login` asks for.
    pub scopes: Vec<String>,
    /// Claim naming the principal (default `sub`).
    pub subject_claim: String,
    /// Claim holding the groups (a string array or a string), if any.
    pub groups_claim: Option<String>,
    /// Principal attribute → claim (a top-level claim name, or a JSON pointer such as
    /// `/kubernetes.io/namespace`). Every mapped claim must be present in a token.
    pub claims: std::collections::BTreeMap<String, String>,
    /// Where the discovery document is (default `<issuer>/.well-known/openid-configuration`).
    pub discovery_url: String,
    pub ca_cert: Option<PathBuf>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Tokens issued longer ago than this are refused, whatever their `exp`.
    pub max_token_age: Option<Duration>,
    /// Put before the subject to make the principal id (default `<name>:` for human issuers, so
    /// an SSO user can never be the same Cedar principal as an SSH user or another issuer's user).
    pub username_prefix: String,
    /// Put before each group (default `<name>:`).
    pub groups_prefix: String,
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
    /// How often the TLS certificate and key files are checked for a new version (cert-manager
    /// renewals, rotated secrets), which is then served without a restart.
    pub tls_reload_every: Duration,
    /// A client must send a request's headers (and finish the TLS handshake) within this.
    pub header_read_timeout: Duration,
    /// A connection on which nothing moved for this long is closed.
    pub idle_timeout: Duration,
    /// Non-streaming routes (login, token, whoami, webhook, ...) answer within this or fail.
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    /// Peers whose `X-Forwarded-For` names the client (ingress, load balancers).
    pub trusted_proxies: Vec<crate::ratelimit::Cidr>,
    pub limits: LimitsConfig,
}

/// Rate limits (`[limits]`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Per client address (IPv6 by /64): login and token-exchange requests.
    pub login_per_second: f64,
    pub login_burst: u32,
    /// Per principal, on every authenticated route.
    pub requests_per_second: f64,
    pub requests_burst: u32,
    /// Per principal.
    pub revocations_per_minute: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            login_per_second: 20.0,
            login_burst: 60,
            requests_per_second: 100.0,
            requests_burst: 1000,
            revocations_per_minute: 10.0,
        }
    }
}

impl ServerConfig {
    /// Defaults for the connection settings (used by `--dev` and tests).
    pub fn with_defaults(listen: SocketAddr, tls: Option<TlsFiles>) -> ServerConfig {
        ServerConfig {
            listen,
            public_url: None,
            tls,
            shutdown_grace: Duration::from_secs(10),
            tls_reload_every: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_connections_per_client: 256,
            trusted_proxies: Vec::new(),
            limits: LimitsConfig::default(),
        }
    }
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
    // Vault's `kubernetes` auth method: the service-account token in `jwt_file` (re-read at
    // every login: kubelet rotates projected tokens), reviewed by Vault via TokenReview.
    Kubernetes { mount: String, role: String, jwt_file: PathBuf },
    // Vault's `jwt` auth method (`auth/<mount>/login`): any JWT from an issuer the mount trusts
    // (a projected SA token, a CI ID token), re-read from `jwt_file` at every login.
    // `role: None` uses the mount's `default_role`.
    Jwt { mount: String, role: Option<String>, jwt_file: PathBuf },
}

impl VaultAuth {
    /// The method's name as written in `vault.auth.method`.
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token(_) => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
            VaultAuth::Jwt { .. } => "jwt",
        }
    }
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
            // Only the token's path, never its content.
            VaultAuth::Kubernetes { mount, role, jwt_file } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_file", jwt_file)
                .finish(),
            VaultAuth::Jwt { mount, role, jwt_file } => {
                f.debug_struct("Jwt").field("mount", mount).field("role", role).field("jwt_file", jwt_file).finish()
            }
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
            server: ServerConfig::with_defaults(
                listen,
                Some(TlsFiles { cert: data_dir.join("tls/server.pem"), key: data_dir.join("tls/server.key") }),
            ),
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
                require_user_verification: false,
            },
            oidc: Vec::new(),
            upstreams: Vec::new(),
            policy: PolicyConfig::Dev { user: dev.user.clone() },
            audit: AuditConfig::File(data_dir.join("audit.log")),
            webhook: None,
            dev: true,
        })
    }
}

/// Default claim mappings per issuer kind (Kubernetes service-account tokens, GitHub-style CI tokens).
fn default_claims(kind: IssuerKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        IssuerKind::Human => &[],
        IssuerKind::Kubernetes => {
            &[("namespace", "/kubernetes.io/namespace"), ("service_account", "/kubernetes.io/serviceaccount/name")]
        }
        IssuerKind::Ci => &[
            ("repository", "repository"),
            ("repository_owner", "repository_owner"),
            ("ref", "ref"),
            ("event_name", "event_name"),
        ],
    }
}

/// Principal attributes a claim may be mapped to (the schema's optional workload attributes).
pub const MAPPABLE_ATTRS: [&str; 6] =
    ["namespace", "service_account", "repository", "repository_owner", "ref", "event_name"];

fn validate_oidc(
    raw: Option<RawOidc>,
    origin: &str,
    rel: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Vec<OidcIssuer>, ConfigError> {
    let err =
        |key: &str, message: String| ConfigError::Key { origin: origin.to_string(), key: key.to_string(), message };
    let mut out: Vec<OidcIssuer> = Vec::new();
    for (i, r) in raw.map(|o| o.issuers).unwrap_or_default().into_iter().enumerate() {
        let key = |k: &str| format!("oidc.issuers[{i}].{k}");
        if r.name.is_empty() || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(&key("name"), format!("`{}` must be letters, digits, - or _", r.name)));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(err(&key("name"), format!("`{}` is used by two issuers", r.name)));
        }
        let url_ok = |u: &str| {
            (u.starts_with("https://") || u.starts_with("http://"))
                && !u.contains(char::is_whitespace)
                && !u.contains(['?', '#', '@'])
        };
        if !url_ok(&r.issuer) || !secure_url(&r.issuer) {
            return Err(err(
                &key("issuer"),
                format!(
                    "`{}` must be an https URL (http only to a loopback host) without query or user info",
                    r.issuer
                ),
            ));
        }
        if out.iter().any(|o| o.issuer == r.issuer) {
            return Err(err(&key("issuer"), format!("`{}` is configured twice", r.issuer)));
        }
        if r.audiences.is_empty() || r.audiences.iter().any(String::is_empty) {
            return Err(err(
                &key("audiences"),
                "required: the `aud` values this broker accepts, e.g. [\"gocred\"]".into(),
            ));
        }
        if r.kind == IssuerKind::Human && r.client_id.as_deref().is_none_or(str::is_empty) {
            return Err(err(
                &key("client_id"),
                "required for kind = \"human\" (the public client `gocred login` uses)".into(),
            ));
        }
        let mut claims: std::collections::BTreeMap<String, String> =
            default_claims(r.kind).iter().map(|(a, c)| (a.to_string(), c.to_string())).collect();
        for (attr, claim) in r.claims {
            if !MAPPABLE_ATTRS.contains(&attr.as_str()) {
                return Err(err(
                    &key(&format!("claims.{attr}")),
                    format!("unknown principal attribute (known: {})", MAPPABLE_ATTRS.join(", ")),
                ));
            }
            if claim.is_empty() {
                claims.remove(&attr);
            } else {
                claims.insert(attr, claim);
            }
        }
        let discovery_url = match r.discovery_url {
            Some(u) if url_ok(&u) && secure_url(&u) => u,
            Some(u) => {
                return Err(err(
                    &key("discovery_url"),
                    format!("`{u}` must be an https URL (http only to a loopback host)"),
                ));
            }
            None => format!("{}/.well-known/openid-configuration", r.issuer.trim_end_matches('/')),
        };
        let leeway = duration(origin, &key("leeway"), r.leeway.as_deref(), Duration::from_secs(30))?;
        if leeway > Duration::from_secs(300) {
            return Err(err(&key("leeway"), "must be at most 5m".into()));
        }
        let max_token_age = match r.max_token_age {
            None => None,
            Some(v) => Some(duration(origin, &key("max_token_age"), Some(&v), Duration::ZERO)?),
        };
        let default_groups = if r.kind == IssuerKind::Human { Some("groups".to_string()) } else { None };
        let prefix_ok = |p: &str| !p.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"');
        let username_prefix = r.username_prefix.unwrap_or_else(|| match r.kind {
            IssuerKind::Human => format!("{}:", r.name),
            // Workload ids (`system:serviceaccount:ns:sa`, `repo:org/repo:ref:...`) are their own
            // Cedar type; policies pin `principal.issuer`.
            _ => String::new(),
        });
        if !prefix_ok(&username_prefix) {
            return Err(err(&key("username_prefix"), "must not contain whitespace or quotes".into()));
        }
        if r.kind == IssuerKind::Human
            && username_prefix.is_empty()
            && out.iter().any(|o| o.kind == IssuerKind::Human && o.username_prefix.is_empty())
        {
            return Err(err(
                &key("username_prefix"),
                "only one human issuer may use an empty prefix (its users share names with SSH users)".into(),
            ));
        }
        let groups_prefix = r.groups_prefix.unwrap_or_else(|| format!("{}:", r.name));
        if !prefix_ok(&groups_prefix) {
            return Err(err(&key("groups_prefix"), "must not contain whitespace or quotes".into()));
        }
        out.push(OidcIssuer {
            name: r.name,
            issuer: r.issuer,
            kind: r.kind,
            audiences: r.audiences,
            client_id: r.client_id,
            scopes: if r.scopes.is_empty() {
                vec!["openid".into(), "email".into(), "groups".into(), "offline_access".into()]
            } else {
                r.scopes
            },
            subject_claim: r.subject_claim.filter(|s| !s.is_empty()).unwrap_or_else(|| "sub".into()),
            groups_claim: match r.groups_claim {
                Some(g) if g.is_empty() => None,
                Some(g) => Some(g),
                None => default_groups,
            },
            claims,
            discovery_url,
            ca_cert: r.ca_cert.map(rel),
            leeway,
            max_token_age,
            username_prefix,
            groups_prefix,
        });
    }
    Ok(out)
}

/// `[webhook]` → the injection settings (`None` unless `enabled = true`; the other keys are
/// validated either way, so `--check` catches mistakes before the webhook is switched on).
fn validate_webhook(
    raw: Option<RawWebhook>,
    origin: &str,
    rel: &dyn Fn(PathBuf) -> PathBuf,
    public_url: Option<&str>,
    upstreams: &[Upstream],
    oidc: &[OidcIssuer],
) -> Result<Option<crate::webhook::InjectSettings>, ConfigError> {
    use crate::webhook::{InjectMode, InjectSettings, OnMalformed};
    let err =
        |key: &str, message: String| ConfigError::Key { origin: origin.to_string(), key: key.to_string(), message };
    let Some(w) = raw else { return Ok(None) };
    let needed = |key: &str, hint: &str| err(key, format!("required key is missing (webhook.enabled = true): {hint}"));
    let image = match w.image {
        Some(i) if i.is_empty() || i.contains(char::is_whitespace) => {
            return Err(err("webhook.image", format!("`{i}` is not an image reference")));
        }
        i => i,
    };
    // The public URL is only a default: checked when the webhook is on.
    let broker_url = match w.broker_url.as_deref().or(public_url.filter(|_| w.enabled)) {
        None => None,
        Some(u) => {
            let trimmed = u.trim_end_matches('/');
            let authority = trimmed.strip_prefix("https://").map(|r| r.split('/').next().unwrap_or(""));
            if authority.is_none_or(|a| a.is_empty() || a.contains('@'))
                || trimmed.contains(char::is_whitespace)
                || trimmed.contains(['?', '#'])
            {
                let (key, hint) = if w.broker_url.is_some() {
                    ("webhook.broker_url", "")
                } else {
                    ("server.public_url", " (the default of webhook.broker_url; set that instead)")
                };
                return Err(err(
                    key,
                    format!(
                        "`{u}` must be an https:// URL pods reach the broker at{hint}: Go sends credentials only over HTTPS"
                    ),
                ));
            }
            Some(trimmed.to_string())
        }
    };
    let modules = match w.modules {
        Some(m) => {
            if m.is_empty() {
                return Err(err("webhook.modules", "must name at least one module pattern".into()));
            }
            for p in &m {
                crate::webhook::validate_module_pattern(p).map_err(|e| err("webhook.modules", e))?;
            }
            m
        }
        None => {
            let mut m: Vec<String> = Vec::new();
            for p in upstreams.iter().flat_map(|u| &u.modules) {
                if !m.contains(p) {
                    m.push(p.clone());
                }
            }
            m
        }
    };
    let mode = match w.mode.as_deref() {
        None => InjectMode::Goproxy,
        Some(s) => {
            InjectMode::parse(s).ok_or_else(|| err("webhook.mode", format!("`{s}` must be \"goproxy\" or \"git\"")))?
        }
    };
    let goproxy_fallback = w.goproxy_fallback.unwrap_or_else(|| crate::webhook::DEFAULT_GOPROXY_FALLBACK.into());
    let fallback_ok = !goproxy_fallback.is_empty()
        && goproxy_fallback.split([',', '|']).all(|e| {
            e == "direct"
                || e == "off"
                || e.starts_with("https://")
                || e.starts_with("http://")
                || e.starts_with("file://")
        })
        && !goproxy_fallback.contains(char::is_whitespace);
    if !fallback_ok {
        return Err(err(
            "webhook.goproxy_fallback",
            format!(
                "`{goproxy_fallback}` must be a GOPROXY list like \"https://proxy.golang.org,direct\" (or \"off\")"
            ),
        ));
    }
    let token_audience = w.token_audience.unwrap_or_else(|| crate::webhook::DEFAULT_TOKEN_AUDIENCE.into());
    if token_audience.is_empty() || token_audience.contains(char::is_whitespace) {
        return Err(err("webhook.token_audience", format!("`{token_audience}` must be a non-empty audience")));
    }
    let expiration = duration(
        origin,
        "webhook.token_expiration",
        w.token_expiration.as_deref(),
        Duration::from_secs(crate::webhook::DEFAULT_TOKEN_EXPIRATION_SECONDS as u64),
    )?;
    // Kubernetes' own bounds for a projected token's expirationSeconds.
    if expiration < Duration::from_secs(600) || expiration > Duration::from_secs(1 << 32) {
        return Err(err("webhook.token_expiration", "must be between 10m (the Kubernetes minimum) and 2^32 s".into()));
    }
    let ca_pem = match w.ca_file.map(rel) {
        None => None,
        Some(p) => {
            let text = std::fs::read_to_string(&p)
                .map_err(|e| err("webhook.ca_file", format!("cannot read {}: {e}", p.display())))?;
            if !text.contains("-----BEGIN CERTIFICATE-----") {
                return Err(err("webhook.ca_file", format!("{} holds no PEM certificate", p.display())));
            }
            if text.contains("PRIVATE KEY-----") {
                return Err(err(
                    "webhook.ca_file",
                    format!(
                        "{} contains a private key; it is sent to every injected pod: give only the CA certificates",
                        p.display()
                    ),
                ));
            }
            Some(text)
        }
    };
    let on_malformed = match w.on_malformed.as_deref() {
        None | Some("deny") => OnMalformed::Deny,
        Some("allow") => OnMalformed::Allow,
        Some(s) => return Err(err("webhook.on_malformed", format!("`{s}` must be \"deny\" or \"allow\""))),
    };
    let init_resources = match w.init_resources.as_deref() {
        None => None,
        Some(s) => Some(crate::webhook::parse_resources(s).map_err(|e| err("webhook.init_resources", e))?),
    };
    if !w.enabled {
        return Ok(None);
    }
    let image = image
        .ok_or_else(|| needed("webhook.image", "the init container image, e.g. \"ghcr.io/gocred/gocred:0.1.0\""))?;
    let broker_url = broker_url
        .ok_or_else(|| needed("webhook.broker_url", "the URL pods reach the broker at (or set server.public_url)"))?;
    if modules.is_empty() {
        return Err(needed("webhook.modules", "module patterns to inject (no [[upstreams]] to take them from)"));
    }
    // The injected pods must be able to use what they are given: an issuer that accepts their
    // projected token, and an upstream for the mode (else `go` falls through to public proxies
    // with private module paths, or git gets no credentials).
    if !oidc.iter().any(|i| i.kind == IssuerKind::Kubernetes && i.audiences.contains(&token_audience)) {
        return Err(err(
            "webhook.enabled",
            format!(
                "injected pods authenticate with a projected service-account token (audience `{token_audience}`): \
                 add an [[oidc.issuers]] entry with kind = \"kubernetes\" and \"{token_audience}\" in its audiences"
            ),
        ));
    }
    let has_goproxy = upstreams.iter().any(|u| u.kind == UpstreamKind::Goproxy && u.mode == UpstreamMode::Proxy);
    let git_hosts: Vec<String> = upstreams
        .iter()
        .filter(|u| u.kind == UpstreamKind::Git && u.mode == UpstreamMode::Proxy)
        .flat_map(|u| u.hosts.iter().cloned())
        .collect();
    if mode == InjectMode::Goproxy && !has_goproxy {
        return Err(err(
            "webhook.mode",
            "\"goproxy\" needs an [[upstreams]] entry with kind = \"goproxy\" (or use mode = \"git\")".into(),
        ));
    }
    if mode == InjectMode::Git && git_hosts.is_empty() {
        return Err(err(
            "webhook.mode",
            "\"git\" needs an [[upstreams]] entry with kind = \"git\" (or use mode = \"goproxy\")".into(),
        ));
    }
    let mut s = InjectSettings::new(image, broker_url, modules);
    s.has_goproxy = has_goproxy;
    s.git_hosts = git_hosts;
    s.mode = mode;
    s.goproxy_fallback = goproxy_fallback;
    s.token_audience = token_audience;
    s.token_expiration_seconds = expiration.as_secs() as i64;
    s.ca_pem = ca_pem;
    s.on_malformed = on_malformed;
    s.init_resources = init_resources;
    Ok(Some(s))
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
    let tls_reload_every = duration(
        origin,
        "server.tls.reload_every",
        raw.server.tls.as_ref().and_then(|t| t.reload_every.as_deref()),
        Duration::from_secs(30),
    )?;
    if tls_reload_every < Duration::from_millis(100) {
        return Err(err("server.tls.reload_every", "must be at least 100ms".into()));
    }
    let d = ServerConfig::with_defaults(listen, None);
    let positive = |key: &str, v: Duration| {
        if v.is_zero() { Err(err(key, "must be more than 0s".into())) } else { Ok(v) }
    };
    let count = |key: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(err(key, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let trusted_proxies = raw
        .server
        .trusted_proxies
        .unwrap_or_default()
        .iter()
        .map(|c| crate::ratelimit::Cidr::parse(c).map_err(|m| err("server.trusted_proxies", m)))
        .collect::<Result<Vec<_>, _>>()?;
    let l = raw.limits;
    let dl = LimitsConfig::default();
    let rate = |key: &str, v: Option<f64>, default: f64| match v {
        Some(r) if !(r.is_finite() && r > 0.0) => Err(err(key, format!("must be a number above 0, not {r}"))),
        Some(r) => Ok(r),
        None => Ok(default),
    };
    let burst = |key: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(err(key, "must be at least 1".into())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let limits = LimitsConfig {
        login_per_second: rate("limits.login_per_second", l.login_per_second, dl.login_per_second)?,
        login_burst: burst("limits.login_burst", l.login_burst, dl.login_burst)?,
        requests_per_second: rate("limits.requests_per_second", l.requests_per_second, dl.requests_per_second)?,
        requests_burst: burst("limits.requests_burst", l.requests_burst, dl.requests_burst)?,
        revocations_per_minute: rate(
            "limits.revocations_per_minute",
            l.revocations_per_minute,
            dl.revocations_per_minute,
        )?,
    };
    let server = ServerConfig {
        tls_reload_every,
        listen,
        public_url,
        tls: raw.server.tls.map(|t| TlsFiles { cert: rel(t.cert), key: rel(t.key) }),
        shutdown_grace: duration(
            origin,
            "server.shutdown_grace",
            raw.server.shutdown_grace.as_deref(),
            d.shutdown_grace,
        )?,
        header_read_timeout: positive(
            "server.header_read_timeout",
            duration(
                origin,
                "server.header_read_timeout",
                raw.server.header_read_timeout.as_deref(),
                d.header_read_timeout,
            )?,
        )?,
        idle_timeout: positive(
            "server.idle_timeout",
            duration(origin, "server.idle_timeout", raw.server.idle_timeout.as_deref(), d.idle_timeout)?,
        )?,
        request_timeout: positive(
            "server.request_timeout",
            duration(origin, "server.request_timeout", raw.server.request_timeout.as_deref(), d.request_timeout)?,
        )?,
        max_connections: count("server.max_connections", raw.server.max_connections, d.max_connections)?,
        max_connections_per_client: count(
            "server.max_connections_per_client",
            raw.server.max_connections_per_client,
            d.max_connections_per_client,
        )?,
        trusted_proxies,
        limits,
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
            let method = match a.method {
                RawAuthMethod::Token => "token",
                RawAuthMethod::Approle => "approle",
                RawAuthMethod::Kubernetes => "kubernetes",
                RawAuthMethod::Jwt => "jwt",
            };
            // Each key belongs to some methods; setting it for another is an error naming them.
            for (k, set, used_by) in [
                ("token", a.token.is_some(), &["token"][..]),
                ("token_file", a.token_file.is_some(), &["token"][..]),
                ("role_id", a.role_id.is_some(), &["approle"][..]),
                ("secret_id", a.secret_id.is_some(), &["approle"][..]),
                ("secret_id_file", a.secret_id_file.is_some(), &["approle"][..]),
                ("mount", a.mount.is_some(), &["approle", "kubernetes", "jwt"][..]),
                ("role", a.role.is_some(), &["kubernetes", "jwt"][..]),
                ("jwt_file", a.jwt_file.is_some(), &["kubernetes", "jwt"][..]),
            ] {
                if set && !used_by.contains(&method) {
                    let with: Vec<String> = used_by.iter().map(|m| format!("method = \"{m}\"")).collect();
                    return Err(err(&format!("vault.auth.{k}"), format!("only used with {}", with.join(" or "))));
                }
            }
            let auth = match a.method {
                RawAuthMethod::Token => VaultAuth::Token(secret(a.token, a.token_file, "vault.auth.token")?),
                RawAuthMethod::Approle => VaultAuth::AppRole {
                    mount: a.mount.unwrap_or_else(|| "approle".into()),
                    role_id: a.role_id.ok_or_else(|| {
                        err("vault.auth.role_id", "required key is missing (method = \"approle\")".into())
                    })?,
                    secret_id: secret(a.secret_id, a.secret_id_file, "vault.auth.secret_id")?,
                },
                RawAuthMethod::Kubernetes => VaultAuth::Kubernetes {
                    mount: a.mount.unwrap_or_else(|| "kubernetes".into()),
                    role: a.role.ok_or_else(|| {
                        err("vault.auth.role", "required key is missing (method = \"kubernetes\")".into())
                    })?,
                    jwt_file: a
                        .jwt_file
                        .map(rel)
                        .unwrap_or_else(|| PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")),
                },
                RawAuthMethod::Jwt => VaultAuth::Jwt {
                    mount: a.mount.unwrap_or_else(|| "jwt".into()),
                    role: a.role,
                    jwt_file: a.jwt_file.map(rel).ok_or_else(|| {
                        err("vault.auth.jwt_file", "required key is missing (method = \"jwt\")".into())
                    })?,
                },
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
            require_user_verification: false,
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
            SshConfig {
                authorized_keys,
                trusted_user_ca_keys: cas,
                groups: r.groups,
                challenge_ttl,
                require_user_verification: r.require_user_verification.unwrap_or(false),
            }
        }
    };
    let oidc = validate_oidc(raw.oidc, origin, &rel)?;
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
    let webhook = validate_webhook(raw.webhook, origin, &rel, server.public_url.as_deref(), &upstreams, &oidc)?;
    Ok(Config {
        source: file.map(Path::to_path_buf),
        server,
        tokens,
        secrets,
        ssh,
        oidc,
        upstreams,
        policy,
        audit,
        webhook,
        dev: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n";
    /// What an enabled webhook needs besides itself: a Kubernetes issuer and a goproxy upstream.
    const K8S_AND_GOPROXY: &str = "[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n\
                                   [[upstreams]]\nname = \"mods\"\nkind = \"goproxy\"\nmodules = [\"a.b\"]\nurl = \"https://127.0.0.1:2\"\n";

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
    fn connection_and_rate_limit_settings_have_defaults_and_are_validated() {
        let c = parse(MIN, &[]).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.server.limits.login_burst, 60);
        let text = format!(
            "{}\nheader_read_timeout = \"2s\"\nmax_connections_per_client = 5\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n{}[limits]\nlogin_per_second = 2\nrequests_burst = 7\n",
            "[server]\nlisten = \"127.0.0.1:0\"", "[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n"
        );
        let c = parse(&text, &[("GOCRED_SERVER__MAX_CONNECTIONS", "99"), ("GOCRED_LIMITS__LOGIN_BURST", "4")]).unwrap();
        assert_eq!(c.server.header_read_timeout, Duration::from_secs(2));
        assert_eq!((c.server.max_connections, c.server.max_connections_per_client), (99, 5));
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert_eq!((c.server.limits.login_per_second, c.server.limits.login_burst), (2.0, 4));
        assert_eq!(c.server.limits.requests_burst, 7);
        let e = parse(&text.replace("10.0.0.0/8", "10.0.0.0/40"), &[]).unwrap_err().to_string();
        assert!(e.contains("server.trusted_proxies") && e.contains("0..=32"), "{e}");
        let e = parse(&text, &[("GOCRED_LIMITS__LOGIN_BURST", "many")]).unwrap_err().to_string();
        assert!(e.contains("limits.login_burst") && e.contains("GOCRED_LIMITS__LOGIN_BURST"), "{e}");
        let e = parse(&text, &[("GOCRED_SERVER__IDLE_TIMEOUT", "0s")]).unwrap_err().to_string();
        assert!(e.contains("server.idle_timeout"), "{e}");
        let e = parse(&text, &[("GOCRED_LIMITS__LOGIN_PER_SECOND", "-1")]).unwrap_err().to_string();
        assert!(e.contains("limits.login_per_second"), "{e}");
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
    fn vault_kubernetes_and_jwt_auth() {
        let base = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\n";
        let c = parse(&format!("{base}method = \"kubernetes\"\nrole = \"gocred\"\n"), &[]).unwrap();
        let BackendConfig::Vault(v) = c.secrets.backend else { panic!("vault") };
        match v.auth {
            VaultAuth::Kubernetes { mount, role, jwt_file } => {
                assert_eq!((mount.as_str(), role.as_str()), ("kubernetes", "gocred"));
                assert_eq!(jwt_file, Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"));
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&format!("{base}method = \"kubernetes\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("vault.auth.role") && e.contains("missing"), "{e}");
        let c = parse(&format!("{base}method = \"jwt\"\nrole = \"r\"\njwt_file = \"tok\"\n"), &[]).unwrap();
        let BackendConfig::Vault(v) = c.secrets.backend else { panic!("vault") };
        match v.auth {
            VaultAuth::Jwt { mount, role, jwt_file } => {
                assert_eq!((mount.as_str(), role.as_deref()), ("jwt", Some("r")));
                assert_eq!(jwt_file, Path::new("/etc/gocred/tok"), "relative to the config file");
            }
            other => panic!("{other:?}"),
        }
        let e = parse(&format!("{base}method = \"jwt\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("vault.auth.jwt_file"), "{e}");
        let e = parse(&format!("{base}method = \"jwt\"\njwt_file = \"t\"\nrole_id = \"x\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("vault.auth.role_id") && e.contains("approle"), "{e}");
        let e =
            parse(&format!("{base}method = \"token\"\ntoken = \"t\"\nrole = \"x\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("vault.auth.role") && e.contains("kubernetes"), "{e}");
        let e = parse(&format!("{base}method = \"ldap\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("vault.auth.method"), "{e}");
    }

    #[test]
    fn oidc_issuers_validation_prefixes_and_transport() {
        assert!(secure_url("https://sso.example"));
        assert!(
            secure_url("http://127.0.0.1:8080/x") && secure_url("http://localhost:1") && secure_url("http://[::1]:9")
        );
        assert!(
            !secure_url("http://sso.example") && !secure_url("http://127.0.0.1.evil.example") && !secure_url("ftp://x")
        );
        let issuer = |extra: &str| {
            format!(
                "{MIN}[[oidc.issuers]]\nname = \"sso\"\nissuer = \"https://sso.example\"\nkind = \"human\"\naudiences = [\"cli\"]\nclient_id = \"cli\"\n{extra}"
            )
        };
        let c = parse(&issuer(""), &[]).unwrap();
        let i = &c.oidc[0];
        assert_eq!((i.username_prefix.as_str(), i.groups_prefix.as_str()), ("sso:", "sso:"));
        assert_eq!(i.groups_claim.as_deref(), Some("groups"));
        assert_eq!(i.discovery_url, "https://sso.example/.well-known/openid-configuration");
        let e = parse(&issuer("").replace("https://sso.example", "http://sso.example"), &[]).unwrap_err().to_string();
        assert!(e.contains("oidc.issuers[0].issuer") && e.contains("https"), "{e}");
        let e = parse(&issuer("").replace("client_id = \"cli\"\n", ""), &[]).unwrap_err().to_string();
        assert!(e.contains("oidc.issuers[0].client_id"), "{e}");
        let e = parse(&issuer("claims = { colour = \"c\" }\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("claims.colour") && e.contains("unknown principal attribute"), "{e}");
        // Two human issuers may not both drop the prefix.
        let two = format!(
            "{}username_prefix = \"\"\n[[oidc.issuers]]\nname = \"b\"\nissuer = \"https://b.example\"\nkind = \"human\"\naudiences = [\"cli\"]\nclient_id = \"cli\"\nusername_prefix = \"\"\n",
            issuer("")
        );
        let e = parse(&two, &[]).unwrap_err().to_string();
        assert!(e.contains("oidc.issuers[1].username_prefix"), "{e}");
        // Workloads: no user prefix, the kind's default claims.
        let k = format!(
            "{MIN}[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n"
        );
        let c = parse(&k, &[]).unwrap();
        assert_eq!(c.oidc[0].username_prefix, "");
        assert_eq!(c.oidc[0].claims["namespace"], "/kubernetes.io/namespace");
    }

    #[test]
    fn webhook_section_defaults_validation_and_env() {
        let up = "[[upstreams]]\nname = \"corp\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"https://127.0.0.1:1\"\n\
                  [[upstreams]]\nname = \"mods\"\nkind = \"goproxy\"\nmodules = [\"mods.corp.test/team\", \"git.corp.test\"]\nurl = \"https://127.0.0.1:2\"\n\
                  [[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n";
        let base = format!(
            "{MIN}{up}[webhook]\nimage = \"ghcr.io/gocred/gocred:0.1.0\"\nbroker_url = \"https://gocred.gocred.svc:8443/\"\n"
        );
        // Disabled (the default): no settings, but the keys are still checked.
        assert!(parse(&base, &[]).unwrap().webhook.is_none());
        let e = parse(&format!("{base}mode = \"svn\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.mode") && e.contains("svn"), "{e}");
        let e = parse(&format!("{base}colour = \"blue\"\n"), &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.colour"), "{e}");

        let c = parse(&base, &[("GOCRED_WEBHOOK__ENABLED", "true")]).unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(w.broker_url, "https://gocred.gocred.svc:8443");
        assert_eq!(w.modules, ["git.corp.test", "mods.corp.test/team"], "upstream modules, deduplicated");
        assert_eq!(w.mode, crate::webhook::InjectMode::Goproxy);
        assert_eq!(w.goproxy_fallback, "https://proxy.golang.org,direct");
        assert_eq!((w.token_audience.as_str(), w.token_expiration_seconds), ("gocred", 600));
        assert_eq!(w.on_malformed, crate::webhook::OnMalformed::Deny);
        assert!(w.ca_pem.is_none() && w.init_resources.is_none());

        let on = format!("{base}enabled = true\n");
        let c = parse(
            &format!(
                "{on}modules = [\"git.corp.test/*\"]\nmode = \"git\"\ngoproxy_fallback = \"off\"\ntoken_audience = \"gocred\"\n\
                 token_expiration = \"1h\"\non_malformed = \"allow\"\ninit_resources = \"cpu=50m,memory=32Mi\"\n"
            ),
            &[],
        )
        .unwrap();
        let w = c.webhook.unwrap();
        assert_eq!(
            (w.modules.as_slice(), w.mode),
            (&["git.corp.test/*".to_string()][..], crate::webhook::InjectMode::Git)
        );
        assert_eq!((w.goproxy_fallback.as_str(), w.token_audience.as_str()), ("off", "gocred"));
        assert_eq!(w.token_expiration_seconds, 3600);
        assert_eq!(w.on_malformed, crate::webhook::OnMalformed::Allow);
        assert_eq!(w.init_resources.unwrap()["memory"].0, "32Mi");

        for (extra, key) in [
            ("token_expiration = \"5m\"\n", "webhook.token_expiration"),
            ("modules = [\"corp\"]\n", "webhook.modules"),
            ("modules = []\n", "webhook.modules"),
            ("on_malformed = \"ignore\"\n", "webhook.on_malformed"),
            ("init_resources = \"cpu=fast\"\n", "webhook.init_resources"),
            ("goproxy_fallback = \"proxy.golang.org\"\n", "webhook.goproxy_fallback"),
            ("ca_file = \"missing-ca.pem\"\n", "webhook.ca_file"),
        ] {
            let e = parse(&format!("{on}{extra}"), &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{extra}: {e}");
        }
        let e =
            parse(&on.replace("https://gocred.gocred.svc:8443/", "http://gocred:8080"), &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.broker_url") && e.contains("https://"), "{e}");
        let e = parse(&on.replace("image = \"ghcr.io/gocred/gocred:0.1.0\"\n", ""), &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.image") && e.contains("missing"), "{e}");
        // broker_url defaults to server.public_url; modules are required without upstreams.
        let no_url = format!("{MIN}[webhook]\nenabled = true\nimage = \"i:1\"\nmodules = [\"git.corp.test/*\"]\n");
        let e = parse(&no_url, &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.broker_url"), "{e}");
        let with_url = no_url.replace("[server]\n", "[server]\npublic_url = \"https://gocred.corp.test\"\n");
        let e = parse(&with_url, &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.enabled") && e.contains("kind = \"kubernetes\""), "{e}");
        let with_issuer = with_url.replace("[webhook]", &format!("{K8S_AND_GOPROXY}[webhook]"));
        // goproxy mode without a goproxy upstream: private paths would fall through to public proxies.
        let only_issuer = with_issuer.split("[[upstreams]]").next().unwrap().to_string()
            + "[webhook]"
            + with_issuer.split("[webhook]").nth(1).unwrap();
        let e = parse(&only_issuer, &[]).unwrap_err().to_string();
        assert!(e.contains("webhook.mode") && e.contains("kind = \"goproxy\""), "{e}");
        let c = parse(&with_issuer, &[]).unwrap();
        assert_eq!(c.webhook.unwrap().broker_url, "https://gocred.corp.test");
        let e = parse(&format!("{MIN}[webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b\"\n"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("webhook.modules"), "{e}");
    }

    #[test]
    fn webhook_ca_file_is_read_and_must_hold_only_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            format!("{pem}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
        )
        .unwrap();
        let cfg = dir.path().join("broker.toml");
        let text = |ca: &str| {
            format!(
                "{MIN}{K8S_AND_GOPROXY}[webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b\"\nmodules = [\"a.b/*\"]\nca_file = \"{ca}\"\n"
            )
        };
        std::fs::write(&cfg, text("ca.pem")).unwrap();
        let c = Config::load(&cfg, Vec::new(), &Overrides::default()).unwrap();
        assert_eq!(c.webhook.unwrap().ca_pem.as_deref(), Some(pem));
        std::fs::write(&cfg, text("key.pem")).unwrap();
        let e = Config::load(&cfg, Vec::new(), &Overrides::default()).unwrap_err().to_string();
        assert!(e.contains("webhook.ca_file") && e.contains("private key"), "{e}");
    }

    #[test]
    fn example_config_is_valid() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
        Config::load(&p, Vec::new(), &Overrides::default()).unwrap();
    }
}
