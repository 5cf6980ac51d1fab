//! `[ssh]`: SSH-key and SSH-certificate login (where users' public keys are, trusted user CAs,
//! extra groups, the challenge's lifetime), its validated types and validator. Reads the CA key
//! files it names.

use super::ConfigError;
use super::Ctx;
use super::raw::RawSsh;
use std::path::PathBuf;
use std::time::Duration;

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

/// `[ssh]` → [`SshConfig`] (no section: no plain-key login, no CAs).
pub(super) fn validate_ssh(cx: &Ctx, raw: Option<RawSsh>) -> Result<SshConfig, ConfigError> {
    let Some(r) = raw else {
        return Ok(SshConfig {
            authorized_keys: AuthorizedKeys::None,
            trusted_user_ca_keys: Vec::new(),
            groups: Default::default(),
            challenge_ttl: Duration::from_secs(60),
            require_user_verification: false,
        });
    };
    let authorized_keys = match r.authorized_keys {
        None => AuthorizedKeys::None,
        Some(v) => match v.strip_prefix("vault:") {
            Some(p) if !p.trim_matches('/').is_empty() => AuthorizedKeys::Secrets(p.trim_matches('/').to_string()),
            Some(_) => {
                return Err(
                    cx.err("ssh.authorized_keys", "`vault:` needs a path, e.g. \"vault:gocred/ssh-keys\"".into())
                );
            }
            None => AuthorizedKeys::Dir(cx.rel(PathBuf::from(v))),
        },
    };
    let mut cas = Vec::new();
    for (i, entry) in r.trusted_user_ca_keys.iter().enumerate() {
        let text = if entry.starts_with("ssh-") || entry.starts_with("ecdsa-") {
            entry.clone()
        } else {
            let p = cx.rel(PathBuf::from(entry));
            std::fs::read_to_string(&p).map_err(|e| {
                cx.err(&format!("ssh.trusted_user_ca_keys[{i}]"), format!("cannot read {}: {e}", p.display()))
            })?
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            cas.push(line.to_string());
        }
    }
    let challenge_ttl = cx.duration("ssh.challenge_ttl", r.challenge_ttl.as_deref(), Duration::from_secs(60))?;
    if challenge_ttl.is_zero() || challenge_ttl > Duration::from_secs(600) {
        return Err(cx.err("ssh.challenge_ttl", "must be between 1s and 10m".into()));
    }
    Ok(SshConfig {
        authorized_keys,
        trusted_user_ca_keys: cas,
        groups: r.groups,
        challenge_ttl,
        require_user_verification: r.require_user_verification.unwrap_or(false),
    })
}
