//! The raw serde layer: the config file's shape, key for key, rejecting unknown keys
//! (`deny_unknown_fields`), before any validation; and `num`, for numbers given as text.

use super::{IssuerKind, UpstreamKind, UpstreamMode};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) tokens: RawTokens,
    pub(super) secrets: RawSecrets,
    pub(super) vault: Option<RawVault>,
    pub(super) ssh: Option<RawSsh>,
    pub(super) oidc: Option<RawOidc>,
    #[serde(default)]
    pub(super) upstreams: Vec<RawUpstream>,
    pub(super) policy: Option<RawPolicy>,
    pub(super) audit: Option<RawAudit>,
    pub(super) webhook: Option<RawWebhook>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) store: Option<RawStore>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) dir: Option<PathBuf>,
    pub(super) backend: Option<String>,
    pub(super) max_size: Option<String>,
    pub(super) list_ttl: Option<String>,
    pub(super) negative_ttl: Option<String>,
    pub(super) s3: Option<RawS3>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawS3 {
    pub(super) bucket: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) allow_http: Option<bool>,
    pub(super) credentials: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default, deserialize_with = "num")]
    pub(super) login_per_second: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub(super) login_burst: Option<u32>,
    #[serde(default, deserialize_with = "num")]
    pub(super) requests_per_second: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub(super) requests_burst: Option<u32>,
    #[serde(default, deserialize_with = "num")]
    pub(super) revocations_per_minute: Option<f64>,
    #[serde(default, deserialize_with = "num")]
    pub(super) tunnels_per_principal: Option<u32>,
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
pub(super) struct RawSsh {
    pub(super) authorized_keys: Option<String>,
    #[serde(default)]
    pub(super) trusted_user_ca_keys: Vec<String>,
    #[serde(default)]
    pub(super) groups: std::collections::BTreeMap<String, Vec<String>>,
    pub(super) challenge_ttl: Option<String>,
    pub(super) require_user_verification: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOidc {
    #[serde(default)]
    pub(super) issuers: Vec<RawIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIssuer {
    pub(super) name: String,
    pub(super) issuer: String,
    pub(super) kind: IssuerKind,
    #[serde(default)]
    pub(super) audiences: Vec<String>,
    pub(super) client_id: Option<String>,
    pub(super) subject_claim: Option<String>,
    pub(super) groups_claim: Option<String>,
    #[serde(default)]
    pub(super) claims: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) discovery_url: Option<String>,
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) leeway: Option<String>,
    pub(super) max_token_age: Option<String>,
    pub(super) username_prefix: Option<String>,
    pub(super) groups_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) kind: UpstreamKind,
    #[serde(default)]
    pub(super) hosts: Vec<String>,
    #[serde(default)]
    pub(super) modules: Vec<String>,
    pub(super) url: String,
    pub(super) credentials: Option<String>,
    pub(super) mode: Option<UpstreamMode>,
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) timeout: Option<String>,
    /// `host:port` of the SSH server behind this git upstream (`gocred ssh-proxy` tunnels).
    pub(super) ssh: Option<String>,
    pub(super) ssh_user: Option<String>,
    pub(super) ssh_path: Option<String>,
    /// A public module proxy: serves every module no private upstream claims.
    pub(super) public: Option<bool>,
    /// Names of other upstreams tried in order when this one fails or lacks the module.
    #[serde(default)]
    pub(super) mirrors: Vec<String>,
    /// Retries of an idempotent fetch before its first byte (default 2).
    pub(super) retries: Option<u32>,
    /// The whole time a fetch may take before its first byte, retries and mirrors included.
    pub(super) deadline: Option<String>,
    pub(super) credential_ttl: Option<String>,
}

/// `[webhook]`: the Kubernetes mutating admission webhook (`POST /v1/admission`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWebhook {
    #[serde(default)]
    pub(super) enabled: bool,
    pub(super) image: Option<String>,
    pub(super) broker_url: Option<String>,
    pub(super) modules: Option<Vec<String>>,
    pub(super) mode: Option<String>,
    pub(super) goproxy_fallback: Option<String>,
    pub(super) token_audience: Option<String>,
    pub(super) token_expiration: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) on_malformed: Option<String>,
    pub(super) init_resources: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) dir: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAudit {
    pub(super) path: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: String,
    pub(super) public_url: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) header_read_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
    pub(super) request_timeout: Option<String>,
    #[serde(default, deserialize_with = "num")]
    pub(super) max_connections: Option<usize>,
    #[serde(default, deserialize_with = "num")]
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) trusted_proxies: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    pub(super) reload_every: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTokens {
    pub(super) ttl: Option<String>,
    pub(super) max_session: Option<String>,
    pub(super) require_proof: Option<bool>,
    pub(super) rotate_every: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawBackend {
    File,
    Vault,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecrets {
    pub(super) backend: RawBackend,
    pub(super) file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) prefix: Option<String>,
    pub(super) grace: Option<String>,
    pub(super) probe_every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    pub(super) address: String,
    pub(super) kv_mount: Option<String>,
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) timeout: Option<String>,
    pub(super) auth: RawVaultAuth,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawAuthMethod {
    Token,
    Approle,
    Kubernetes,
    Jwt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVaultAuth {
    pub(super) method: RawAuthMethod,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) mount: Option<String>,
    pub(super) role_id: Option<String>,
    pub(super) secret_id: Option<String>,
    pub(super) secret_id_file: Option<PathBuf>,
    pub(super) role: Option<String>,
    pub(super) jwt_file: Option<PathBuf>,
}
