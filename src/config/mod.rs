//! Broker configuration: the TOML file, then `GOCRED_...` environment overrides, then
//! command-line flags (precedence file < env < flags), deserialized into raw serde structs that
//! reject unknown keys (`raw`) and validated, one section at a time, into an immutable
//! [`Config`]. Every error names the key and where its value came from ([`ConfigError`]).
//!
//! Environment overrides name the key path with `__` between levels, upper-cased:
//! `GOCRED_SERVER__LISTEN=127.0.0.1:9443`, `GOCRED_VAULT__AUTH__ROLE_ID=...`,
//! `GOCRED_TOKENS__REQUIRE_PROOF=false`. Values `true`/`false` become booleans, values starting
//! with `[` are parsed as TOML arrays, everything else is a string. Variables without `__`
//! (`GOCRED_FILE_KEY`, `GOCRED_LOG`, ...) are not config keys.
//!
//! Must not: do I/O beyond reading the config file and the files it names (CA keys and
//! certificates; `--dev` reads the local user's `~/.ssh/*.pub`): no sockets, no secrets
//! backends, no files created. Nor import the webhook module: the injection settings types live
//! here (`config::webhook`) and the webhook re-exports them. (Its only crate imports are
//! `proto::rules` for URL rules and `ratelimit::Cidr` for `server.trusted_proxies`.)

mod env;
mod misc;
mod oidc;
mod raw;
mod rules;
mod secrets;
mod server;
mod ssh;
#[cfg(test)]
mod tests;
mod tokens;
mod upstreams;
pub(crate) mod webhook;

pub use misc::{AuditConfig, PolicyConfig, S3Config, StoreBackend, StoreConfig};
pub use oidc::{IssuerKind, MAPPABLE_ATTRS, OidcIssuer};
pub use secrets::{BackendConfig, FileBackendConfig, SecretSource, SecretsConfig, VaultAuth, VaultConfig};
pub use server::{LimitsConfig, ServerConfig, TlsFiles};
pub use ssh::{AuthorizedKeys, SshConfig};
pub use tokens::TokensConfig;
pub use upstreams::{SshTarget, Upstream, UpstreamKind, UpstreamMode};

use env::{env_key, env_value, key_and_message, line_of, set_path};
use raw::RawConfig;
use rules::Ctx;
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
    pub webhook: Option<webhook::InjectSettings>,
    /// The module store and the private data dir for building git-hosted modules (`[store]`).
    pub store: misc::StoreConfig,
    /// Set by `serve --dev`: loopback only, embedded defaults.
    pub dev: bool,
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
    /// `--dev` only: the public module proxy the dev broker fronts (`off`: none).
    pub public_proxy: Option<String>,
}

/// The public module proxy `--dev` fronts unless told otherwise.
pub const DEV_PUBLIC_PROXY: &str = "https://proxy.golang.org";

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
            upstreams: dev_public_upstream(flags.public_proxy.as_deref())?,
            policy: PolicyConfig::Dev { user: dev.user.clone() },
            audit: AuditConfig::File(data_dir.join("audit.log")),
            webhook: None,
            store: StoreConfig {
                dir: data_dir.join("store"),
                backend: misc::StoreBackend::Dir,
                max_size: 10 << 30,
                list_ttl: Duration::from_secs(60),
                negative_ttl: Duration::from_secs(10),
            },
            dev: true,
        })
    }
}

/// `--dev`'s public upstream: proxy.golang.org (and its checksum database), or `--public-proxy
/// URL`, or none with `off`.
fn dev_public_upstream(flag: Option<&str>) -> Result<Vec<Upstream>, ConfigError> {
    let url = flag.unwrap_or(DEV_PUBLIC_PROXY).trim_end_matches('/');
    if url == "off" {
        return Ok(Vec::new());
    }
    if !(url.starts_with("https://") || crate::proto::rules::secure_url(url)) || url.contains(char::is_whitespace) {
        return Err(ConfigError::Key {
            origin: "flag --public-proxy".into(),
            key: "upstreams[].url".into(),
            message: format!("`{url}` must be an https:// URL (http:// only on loopback), or off"),
        });
    }
    Ok(vec![Upstream {
        name: "public".into(),
        kind: UpstreamKind::Goproxy,
        hosts: Vec::new(),
        modules: Vec::new(),
        url: url.to_string(),
        credentials: None,
        mode: UpstreamMode::Proxy,
        ca_cert: None,
        timeout: Duration::from_secs(30),
        ssh: None,
        public: true,
        mirrors: Vec::new(),
        mirror_of: None,
        retries: 2,
        deadline: Duration::from_secs(60),
        credential_ttl: Duration::from_secs(300),
    }])
}

/// The raw config → [`Config`], one validator per section, in this order (the first problem
/// found is the one reported).
fn validate(raw: RawConfig, file: Option<&Path>, origin: &str) -> Result<Config, ConfigError> {
    let cx = Ctx::new(origin, file);
    let server = server::validate_server(&cx, raw.server, raw.limits)?;
    let tokens = tokens::validate_tokens(&cx, raw.tokens)?;
    let secrets = secrets::validate_secrets(&cx, raw.secrets, raw.vault)?;
    let ssh = ssh::validate_ssh(&cx, raw.ssh)?;
    let oidc = oidc::validate_oidc(&cx, raw.oidc)?;
    let policy = misc::validate_policy(&cx, raw.policy);
    let audit = misc::validate_audit(&cx, raw.audit)?;
    let upstreams = upstreams::validate_upstreams(&cx, raw.upstreams)?;
    let webhook = webhook::validate_webhook(&cx, raw.webhook, server.public_url.as_deref(), &upstreams, &oidc)?;
    let store = misc::validate_store(&cx, raw.store)?;
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
        store,
        dev: false,
    })
}
