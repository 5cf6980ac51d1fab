//! `[secrets]` and `[vault]`: the secrets backend (the encrypted file, or Vault and how the
//! broker logs in to it), its validated types, [`SecretSource`], and their validators.

use super::ConfigError;
use super::Ctx;
use super::raw::{RawAuthMethod, RawBackend, RawSecrets, RawVault, RawVaultAuth};
use super::rules::{UrlFault, UrlRule, UrlShape};
use std::path::PathBuf;
use std::time::Duration;

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

/// `[secrets]` (and `[vault]`, which only `backend = "vault"` may have) → [`SecretsConfig`].
pub(super) fn validate_secrets(cx: &Ctx, s: RawSecrets, vault: Option<RawVault>) -> Result<SecretsConfig, ConfigError> {
    let prefix = s.prefix.unwrap_or_else(|| "gocred".into());
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("..") {
        return Err(cx.err("secrets.prefix", format!("`{prefix}` must be a relative path like \"gocred\"")));
    }
    let backend = match s.backend {
        RawBackend::File => {
            if vault.is_some() {
                return Err(cx.err("vault", "a [vault] section needs secrets.backend = \"vault\"".into()));
            }
            let path =
                s.file.ok_or_else(|| cx.err("secrets.file", "required key is missing (backend = \"file\")".into()))?;
            BackendConfig::File(FileBackendConfig {
                path: cx.rel(path),
                key_file: s.key_file.map(|p| cx.rel(p)),
                create_key: false,
            })
        }
        RawBackend::Vault => {
            if let Some(f) = s.file.as_ref().map(|_| "secrets.file").or(s.key_file.as_ref().map(|_| "secrets.key_file"))
            {
                return Err(cx.err(f, "only used with secrets.backend = \"file\"".into()));
            }
            let v = vault.ok_or_else(|| cx.err("vault", "required section is missing (backend = \"vault\")".into()))?;
            BackendConfig::Vault(validate_vault(cx, v)?)
        }
    };
    let secrets = SecretsConfig {
        backend,
        prefix,
        grace: cx.duration("secrets.grace", s.grace.as_deref(), Duration::from_secs(30))?,
        probe_every: cx.duration("secrets.probe_every", s.probe_every.as_deref(), Duration::from_secs(5))?,
    };
    if secrets.probe_every < Duration::from_millis(100) {
        return Err(cx.err("secrets.probe_every", "must be at least 100ms".into()));
    }
    Ok(secrets)
}

/// `[vault]` → [`VaultConfig`].
fn validate_vault(cx: &Ctx, v: RawVault) -> Result<VaultConfig, ConfigError> {
    let address = cx.check_url("vault.address", &v.address, (UrlRule::Any, UrlShape::Address), |f| match f {
        UrlFault::Scheme => format!("`{}` must start with https:// or http://", v.address),
        UrlFault::Whitespace | UrlFault::Shape => format!("`{}` is not a URL", v.address),
    })?;
    let auth = validate_vault_auth(cx, v.auth)?;
    Ok(VaultConfig {
        address,
        kv_mount: v.kv_mount.unwrap_or_else(|| "secret".into()),
        ca_cert: v.ca_cert.map(|p| cx.rel(p)),
        timeout: cx.duration("vault.timeout", v.timeout.as_deref(), Duration::from_secs(5))?,
        auth,
    })
}

/// `[vault.auth]` → [`VaultAuth`]: the method's keys, and no key of another method.
fn validate_vault_auth(cx: &Ctx, a: RawVaultAuth) -> Result<VaultAuth, ConfigError> {
    let secret = |inline: Option<String>, file: Option<PathBuf>, key: &str| -> Result<SecretSource, ConfigError> {
        match (inline, file) {
            (Some(s), None) => Ok(SecretSource::Inline(secrecy::SecretString::from(s))),
            (None, Some(f)) => Ok(SecretSource::File(cx.rel(f))),
            (Some(_), Some(_)) => Err(cx.err(key, format!("set either {key} or {key}_file, not both"))),
            (None, None) => Err(cx.err(key, format!("required key is missing (set {key} or {key}_file)"))),
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
            return Err(cx.err(&format!("vault.auth.{k}"), format!("only used with {}", with.join(" or "))));
        }
    }
    Ok(match a.method {
        RawAuthMethod::Token => VaultAuth::Token(secret(a.token, a.token_file, "vault.auth.token")?),
        RawAuthMethod::Approle => VaultAuth::AppRole {
            mount: a.mount.unwrap_or_else(|| "approle".into()),
            role_id: a
                .role_id
                .ok_or_else(|| cx.err("vault.auth.role_id", "required key is missing (method = \"approle\")".into()))?,
            secret_id: secret(a.secret_id, a.secret_id_file, "vault.auth.secret_id")?,
        },
        RawAuthMethod::Kubernetes => VaultAuth::Kubernetes {
            mount: a.mount.unwrap_or_else(|| "kubernetes".into()),
            role: a
                .role
                .ok_or_else(|| cx.err("vault.auth.role", "required key is missing (method = \"kubernetes\")".into()))?,
            jwt_file: a
                .jwt_file
                .map(|p| cx.rel(p))
                .unwrap_or_else(|| PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")),
        },
        RawAuthMethod::Jwt => VaultAuth::Jwt {
            mount: a.mount.unwrap_or_else(|| "jwt".into()),
            role: a.role,
            jwt_file: a
                .jwt_file
                .map(|p| cx.rel(p))
                .ok_or_else(|| cx.err("vault.auth.jwt_file", "required key is missing (method = \"jwt\")".into()))?,
        },
    })
}
