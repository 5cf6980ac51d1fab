//! The `vault` secrets backend: Vault/OpenBao KV v2 through `vaultrs`; token, AppRole,
//! Kubernetes (service-account token) or JWT login,
//! token renewal before expiry (re-login when renewal is refused or the token's max TTL is near),
//! check-and-set writes, a custom CA certificate.
//!
//! Must not: put a token or secret value in an error message or a log line.

use super::{Cas, SecretData, SecretsError, Versioned};
use crate::config::{VaultAuth, VaultConfig};
use secrecy::ExposeSecret;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

/// What the broker knows about its current Vault token.
#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: Instant,
    /// Zero: the token never expires (e.g. a root token).
    ttl: Duration,
    renewable: bool,
}

/// Vault/OpenBao KV v2 store.
pub struct VaultStore {
    cfg: VaultConfig,
    client: RwLock<Arc<VaultClient>>,
    lease: Mutex<Lease>,
}

/// One-line reason from a vaultrs error, walking its sources (they carry no secrets: vaultrs
/// errors name status codes, Vault's error strings and transport failures).
fn reason(e: &ClientError) -> String {
    if let ClientError::APIError { code, errors } = e {
        return if errors.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {}", errors.join("; ")) };
    }
    crate::error_chain(e)
}

/// A JWT (service-account or other) from `path`, read fresh; the error names the file only.
fn read_jwt(path: &std::path::Path) -> Result<secrecy::SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read JWT file {}: {e}", path.display()))?;
    let jwt = text.trim();
    if jwt.is_empty() {
        return Err(format!("JWT file {} is empty", path.display()));
    }
    Ok(secrecy::SecretString::from(jwt.to_string()))
}

impl VaultStore {
    pub fn address(&self) -> &str {
        &self.cfg.address
    }

    fn build_client(cfg: &VaultConfig, token: &str) -> Result<VaultClient, SecretsError> {
        let mut b = VaultClientSettingsBuilder::default();
        b.address(&cfg.address).token(token).timeout(Some(cfg.timeout)).verify(true);
        if let Some(ca) = &cfg.ca_cert {
            b.ca_certs(vec![ca.display().to_string()]);
        }
        let settings = b.build().map_err(|e| SecretsError::VaultHealth {
            address: cfg.address.clone(),
            reason: format!("invalid client settings: {e}"),
        })?;
        VaultClient::new(settings)
            .map_err(|e| SecretsError::VaultHealth { address: cfg.address.clone(), reason: reason(&e) })
    }

    /// Log in with the configured method; returns a client carrying the new token.
    ///
    /// Every file-held credential (token, secret id, service-account or other JWT) is read again
    /// here, so a rotated file (kubelet rotates projected tokens) is picked up at the next login.
    async fn login(cfg: &VaultConfig) -> Result<(VaultClient, Lease), SecretsError> {
        let method = cfg.auth.method();
        let fail = |reason: String| SecretsError::VaultLogin { address: cfg.address.clone(), method, reason };
        let auth = match &cfg.auth {
            VaultAuth::Token(src) => {
                let token = src.read().map_err(|e| fail(format!("cannot read token: {e}")))?;
                let client = Self::build_client(cfg, token.expose_secret())?;
                let info = vaultrs::token::lookup_self(&client).await.map_err(|e| fail(reason(&e)))?;
                let lease = Lease {
                    obtained: Instant::now(),
                    ttl: Duration::from_secs(info.ttl),
                    renewable: info.renewable.unwrap_or(false),
                };
                return Ok((client, lease));
            }
            VaultAuth::AppRole { mount, role_id, secret_id } => {
                let secret_id = secret_id.read().map_err(|e| fail(format!("cannot read secret_id: {e}")))?;
                let anon = Self::build_client(cfg, "")?;
                vaultrs::auth::approle::login(&anon, mount, role_id, secret_id.expose_secret()).await
            }
            VaultAuth::Kubernetes { mount, role, jwt_file } => {
                let jwt = read_jwt(jwt_file).map_err(fail)?;
                let anon = Self::build_client(cfg, "")?;
                vaultrs::auth::kubernetes::login(&anon, mount, role, jwt.expose_secret()).await
            }
            VaultAuth::Jwt { mount, role, jwt_file } => {
                let jwt = read_jwt(jwt_file).map_err(fail)?;
                let anon = Self::build_client(cfg, "")?;
                // vaultrs's `oidc` module is Vault's JWT/OIDC auth method; `login` is the JWT
                // login (`POST auth/<mount>/login` with `jwt` + `role`).
                vaultrs::auth::oidc::login(&anon, mount, jwt.expose_secret(), role.clone()).await
            }
        }
        .map_err(|e| fail(reason(&e)))?;
        let token = secrecy::SecretString::from(auth.client_token);
        let client = Self::build_client(cfg, token.expose_secret())?;
        Ok((
            client,
            Lease {
                obtained: Instant::now(),
                ttl: Duration::from_secs(auth.lease_duration),
                renewable: auth.renewable,
            },
        ))
    }

    /// Log in and return a ready store.
    pub async fn open(cfg: &VaultConfig) -> Result<Self, SecretsError> {
        let (client, lease) = Self::login(cfg).await?;
        tracing::info!(address = %cfg.address, method = cfg.auth.method(), ttl_s = lease.ttl.as_secs(), renewable = lease.renewable, "logged in to vault");
        Ok(VaultStore { cfg: cfg.clone(), client: RwLock::new(Arc::new(client)), lease: Mutex::new(lease) })
    }

    fn client(&self) -> Arc<VaultClient> {
        self.client.read().expect("vault client lock poisoned").clone()
    }

    fn err(&self, op: &'static str, path: &str, e: &ClientError) -> SecretsError {
        SecretsError::Vault { address: self.cfg.address.clone(), op, path: path.into(), reason: reason(e) }
    }

    pub async fn get(&self, path: &str) -> Result<Option<Versioned>, SecretsError> {
        use vaultrs::api::kv2::requests::ReadSecretRequest;
        let endpoint = ReadSecretRequest::builder()
            .mount(&self.cfg.kv_mount)
            .path(path)
            .build()
            .map_err(|e| SecretsError::Malformed { path: path.into(), reason: e.to_string() })?;
        match vaultrs::api::exec_with_result(&*self.client(), endpoint).await {
            Ok(resp) => {
                let map = match resp.data {
                    serde_json::Value::Object(m) => m,
                    serde_json::Value::Null => return Ok(None), // deleted version
                    _ => {
                        return Err(SecretsError::Malformed {
                            path: path.into(),
                            reason: "data is not an object".into(),
                        });
                    }
                };
                Ok(Some(Versioned { data: SecretData::from_json(map), version: resp.metadata.version }))
            }
            Err(ClientError::APIError { code: 404, .. }) => Ok(None),
            Err(e) => Err(self.err("read", path, &e)),
        }
    }

    pub async fn put(&self, path: &str, data: &SecretData, cas: Cas) -> Result<u64, SecretsError> {
        use vaultrs::api::kv2::requests::SetSecretRequestOptions;
        let value = serde_json::Value::Object(data.expose_json());
        let result = match cas {
            Cas::Any => vaultrs::kv2::set(&*self.client(), &self.cfg.kv_mount, path, &value).await,
            Cas::Create | Cas::Version(_) => {
                let v = match cas {
                    Cas::Version(v) => u32::try_from(v).map_err(|_| SecretsError::CasConflict { path: path.into() })?,
                    _ => 0,
                };
                vaultrs::kv2::set_with_options(
                    &*self.client(),
                    &self.cfg.kv_mount,
                    path,
                    &value,
                    SetSecretRequestOptions { cas: v },
                )
                .await
            }
        };
        match result {
            Ok(meta) => Ok(meta.version),
            Err(ClientError::APIError { code: 400, errors }) if errors.iter().any(|e| e.contains("check-and-set")) => {
                Err(SecretsError::CasConflict { path: path.into() })
            }
            Err(e) => Err(self.err("write", path, &e)),
        }
    }

    /// Record paths below `prefix` (all with `""`), sorted: KV v2 `LIST` walked recursively.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, SecretsError> {
        let prefix = prefix.trim_matches('/').to_string();
        // A prefix naming a record itself is listed too.
        let mut out = Vec::new();
        if !prefix.is_empty() && self.get(&prefix).await?.is_some() {
            out.push(prefix.clone());
        }
        let mut dirs = vec![prefix];
        while let Some(dir) = dirs.pop() {
            let keys = match vaultrs::kv2::list(&*self.client(), &self.cfg.kv_mount, &dir).await {
                Ok(k) => k,
                Err(ClientError::APIError { code: 404, .. }) => continue,
                Err(e) => return Err(self.err("list", &dir, &e)),
            };
            for k in keys {
                let full = if dir.is_empty() { k.clone() } else { format!("{dir}/{k}") };
                match full.strip_suffix('/') {
                    Some(sub) => dirs.push(sub.to_string()),
                    None => out.push(full),
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Remove a record with every version and its metadata; `false` when there was none.
    pub async fn delete(&self, path: &str) -> Result<bool, SecretsError> {
        if self.get(path).await?.is_none() {
            return Ok(false);
        }
        vaultrs::kv2::delete_metadata(&*self.client(), &self.cfg.kv_mount, path)
            .await
            .map(|_| true)
            .map_err(|e| self.err("delete", path, &e))
    }

    /// Reachable, unsealed, and our token still valid? (`token/lookup-self`, which the default
    /// policy allows; `sys/health` is not used because vaultrs's response type does not parse
    /// OpenBao's answer.)
    pub async fn probe(&self) -> Result<(), SecretsError> {
        vaultrs::token::lookup_self(&*self.client())
            .await
            .map(|_| ())
            .map_err(|e| SecretsError::VaultHealth { address: self.cfg.address.clone(), reason: reason(&e) })
    }

    /// Keep the token alive: renew at two thirds of its TTL; log in again when renewal is
    /// refused, the token is not renewable, or its max TTL cuts the renewal short.
    pub async fn maintain(&self, metrics: &crate::metrics::Metrics) {
        let mut retry = Duration::from_secs(1);
        loop {
            let lease = *self.lease.lock().expect("lease lock poisoned");
            if lease.ttl.is_zero() {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                continue;
            }
            let due = lease.obtained + lease.ttl * 2 / 3;
            tokio::time::sleep_until(due.into()).await;
            let renewed = if lease.renewable {
                match vaultrs::token::renew_self(&*self.client(), None).await {
                    // A renewal that cannot extend the lease past the current due time (max
                    // TTL reached) is treated as refused: log in again instead.
                    Ok(a) if Duration::from_secs(a.lease_duration) > lease.ttl / 3 => {
                        *self.lease.lock().expect("lease lock poisoned") = Lease {
                            obtained: Instant::now(),
                            ttl: Duration::from_secs(a.lease_duration),
                            renewable: a.renewable,
                        };
                        metrics.inc("gocred_vault_token_renewals_total");
                        tracing::info!(ttl_s = a.lease_duration, "vault token renewed");
                        true
                    }
                    Ok(_) => false,
                    Err(e) => {
                        tracing::warn!(reason = %reason(&e), "vault token renewal failed");
                        false
                    }
                }
            } else {
                false
            };
            if renewed {
                retry = Duration::from_secs(1);
                continue;
            }
            match Self::login(&self.cfg).await {
                Ok((client, lease)) => {
                    *self.client.write().expect("vault client lock poisoned") = Arc::new(client);
                    *self.lease.lock().expect("lease lock poisoned") = lease;
                    metrics.inc("gocred_vault_logins_total");
                    tracing::info!(
                        method = self.cfg.auth.method(),
                        ttl_s = lease.ttl.as_secs(),
                        "logged in to vault again"
                    );
                    retry = Duration::from_secs(1);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_s = retry.as_secs(), "vault login failed");
                    // Try again soon without hammering Vault.
                    let mut l = self.lease.lock().expect("lease lock poisoned");
                    l.obtained = Instant::now();
                    l.ttl = retry * 3 / 2;
                    l.renewable = false;
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
