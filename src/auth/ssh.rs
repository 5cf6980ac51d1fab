//! SSH login: a stateless challenge sealed with AES-256-GCM (`ssh.challenge_ttl`, default 60 s, single use within this broker
//! process), answered with an SSHSIG signature in namespace `gocred-login@v1` over the challenge,
//! the broker's origin and the user name. The signing key must be listed for the user (a
//! directory of `authorized_keys` files, the secrets backend, or `--dev`'s local keys) or carry a
//! user certificate from a trusted CA whose principals include the user.
//!
//! Nothing is written to the secrets backend per login. A replayed login response on another
//! replica (the single-use set is per process) yields only a token bound to the signer's key,
//! which is useless without that key: every request also needs a proof signed by it.
//!
//! Must not: mint tokens or decide policy.

use super::sshsig;
use super::{AuthError, Principal, PrincipalKind};
use crate::config::{AuthorizedKeys, SshConfig};
use crate::secrets::SecretStore;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use ssh_key::{Certificate, HashAlg, PublicKey, certificate::CertType, public::KeyData};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use crate::proto::login::{Challenge, LOGIN_NAMESPACE, login_message};

#[derive(Serialize, Deserialize)]
struct Sealed {
    n: String,
    u: String,
    exp: u64,
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub principal: Principal,
    /// Certificate key id and serial, for the audit line.
    pub cert: Option<(String, u64)>,
    /// A certificate login's session may not outlive the certificate.
    pub not_after: Option<u64>,
}

/// At most this many challenges are remembered as used (each for at most `challenge_ttl`).
const MAX_USED_CHALLENGES: usize = 100_000;

/// A certificate key id as it may appear in messages and audit lines: printable, ≤ 128 chars.
pub fn sanitize_key_id(id: &str) -> String {
    id.chars().filter(|c| !c.is_control()).take(128).collect()
}

/// The SSH login verifier.
pub struct SshLogin {
    cipher: Aes256Gcm,
    origin: String,
    cfg: SshConfig,
    ca_fingerprints: Vec<ssh_key::Fingerprint>,
    store: Arc<SecretStore>,
    used: Mutex<HashMap<String, u64>>,
}

/// User names: what `authorized_keys` file names and certificate principals can carry.
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 64
        && !user.starts_with(['.', '-'])
        && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl SshLogin {
    /// `key`: the 32-byte challenge sealing key shared by all replicas.
    pub fn new(key: &[u8; 32], origin: String, cfg: SshConfig, store: Arc<SecretStore>) -> Result<SshLogin, AuthError> {
        let mut ca_fingerprints = Vec::new();
        for line in &cfg.trusted_user_ca_keys {
            let pk = PublicKey::from_openssh(line)
                .map_err(|e| AuthError::KeySource(format!("ssh.trusted_user_ca_keys: {e}")))?;
            ca_fingerprints.push(pk.fingerprint(HashAlg::Sha256));
        }
        Ok(SshLogin {
            cipher: Aes256Gcm::new_from_slice(key).map_err(|_| AuthError::KeySource("bad challenge key".into()))?,
            origin,
            cfg,
            ca_fingerprints,
            store,
            used: Mutex::new(HashMap::new()),
        })
    }

    fn aad(&self) -> Vec<u8> {
        format!("gocred-challenge-v1\0{}", self.origin).into_bytes()
    }

    /// Issue a challenge for `user`.
    pub fn challenge(&self, user: &str, now: u64) -> Result<Challenge, AuthError> {
        if !valid_user(user) {
            return Err(AuthError::BadUserName);
        }
        let exp = now + self.cfg.challenge_ttl.as_secs();
        let sealed = Sealed { n: B64URL.encode(crate::random_bytes::<16>()), u: user.into(), exp };
        let pt = serde_json::to_vec(&sealed).expect("serialising a challenge cannot fail");
        let nonce = crate::random_bytes::<12>();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: &pt, aad: &self.aad() })
            .expect("AES-GCM encryption of a small buffer cannot fail");
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        let challenge = B64URL.encode(blob);
        Ok(Challenge {
            message: login_message(&challenge, &self.origin, user),
            challenge,
            expires_at: exp,
            namespace: LOGIN_NAMESPACE.into(),
            origin: self.origin.clone(),
        })
    }

    fn open(&self, challenge: &str) -> Result<Sealed, AuthError> {
        let blob = B64URL.decode(challenge.trim()).map_err(|_| AuthError::InvalidChallenge)?;
        if blob.len() < 12 + 16 {
            return Err(AuthError::InvalidChallenge);
        }
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(&blob[..12]), Payload { msg: &blob[12..], aad: &self.aad() })
            .map_err(|_| AuthError::InvalidChallenge)?;
        serde_json::from_slice(&pt).map_err(|_| AuthError::InvalidChallenge)
    }

    /// Verify a login response. `certificate`: optional OpenSSH certificate text, for clients
    /// that sign with the plain key (ssh-agent) and present the certificate separately.
    pub async fn login(
        &self,
        user: &str,
        challenge: &str,
        signature: &str,
        certificate: Option<&str>,
        now: u64,
    ) -> Result<LoginOutcome, AuthError> {
        if !valid_user(user) {
            return Err(AuthError::BadUserName);
        }
        let sealed = self.open(challenge)?;
        if sealed.exp <= now {
            return Err(AuthError::ChallengeExpired);
        }
        if sealed.u != user {
            return Err(AuthError::ChallengeUserMismatch);
        }
        let sig = sshsig::parse(signature)?;
        let mut signer = sshsig::verify(
            &sig,
            LOGIN_NAMESPACE,
            login_message(challenge, &self.origin, user).as_bytes(),
            self.cfg.require_user_verification,
        )?;
        if signer.certificate.is_none()
            && let Some(text) = certificate
        {
            let cert = Certificate::from_openssh(text.trim())
                .map_err(|e| AuthError::Certificate { key_id: "?".into(), reason: format!("cannot parse: {e}") })?;
            if cert.public_key() != &signer.key {
                return Err(AuthError::Certificate {
                    key_id: sanitize_key_id(cert.key_id()),
                    reason: "certificate is for another key than the signature".into(),
                });
            }
            signer.certificate = Some(cert);
        }
        check_key_strength(&signer.key, &sig)?;
        if self.used.lock().expect("challenge set poisoned").contains_key(&sealed.n) {
            return Err(AuthError::ChallengeReplayed);
        }
        let (auth_method, cert, not_after) = match &signer.certificate {
            Some(c) => {
                self.check_certificate(c, user, now)?;
                ("ssh-cert", Some((sanitize_key_id(c.key_id()), c.serial())), Some(c.valid_before()))
            }
            None => {
                self.check_authorized(user, &signer.key, &signer.fingerprint()).await?;
                ("ssh", None, None)
            }
        };
        // Single use: marked only once the key is authorized for the user, so nobody can burn
        // a challenge they could not legitimately answer.
        {
            let mut used = self.used.lock().expect("challenge set poisoned");
            if used.len() >= MAX_USED_CHALLENGES {
                used.retain(|_, exp| *exp > now);
            }
            if used.len() >= MAX_USED_CHALLENGES {
                return Err(AuthError::KeySource("too many logins in flight; try again shortly".into()));
            }
            if used.insert(sealed.n.clone(), sealed.exp).is_some() {
                return Err(AuthError::ChallengeReplayed);
            }
        }
        Ok(LoginOutcome {
            principal: Principal {
                kind: PrincipalKind::User,
                id: user.to_string(),
                groups: self.cfg.groups.get(user).cloned().unwrap_or_default(),
                auth_method: auth_method.into(),
                key_fingerprint: signer.fingerprint(),
                attrs: Default::default(),
            },
            cert,
            not_after,
        })
    }

    /// Is a plain-key session still valid for its user (key still authorized)? Returns the
    /// user's current groups. Certificate sessions are bounded by the certificate instead.
    pub async fn recheck(&self, p: &Principal) -> Result<Vec<String>, AuthError> {
        if p.auth_method == "ssh" && self.find_authorized(&p.id, &p.key_fingerprint).await?.is_none() {
            return Err(AuthError::UnknownKey { user: p.id.clone(), fingerprint: p.key_fingerprint.clone() });
        }
        Ok(self.cfg.groups.get(&p.id).cloned().unwrap_or_default())
    }

    fn check_certificate(&self, c: &Certificate, user: &str, now: u64) -> Result<(), AuthError> {
        let fail = |reason: String| AuthError::Certificate { key_id: sanitize_key_id(c.key_id()), reason };
        if c.cert_type() != CertType::User {
            return Err(fail("not a user certificate".into()));
        }
        if !self.ca_fingerprints.contains(&c.signature_key().fingerprint(HashAlg::Sha256)) {
            return Err(fail("signed by an untrusted CA".into()));
        }
        if now < c.valid_after() {
            return Err(fail("not yet valid".into()));
        }
        if now >= c.valid_before() {
            return Err(fail("expired".into()));
        }
        // Signature by the CA, trusted CA and window again, in one library call.
        c.validate_at(now, self.ca_fingerprints.iter()).map_err(|_| fail("CA signature is invalid".into()))?;
        if !c.valid_principals().iter().any(|p| p == user) {
            return Err(fail(format!("not valid for user {user}")));
        }
        if !c.critical_options().is_empty() {
            return Err(fail("critical options are not supported".into()));
        }
        Ok(())
    }

    async fn check_authorized(&self, user: &str, key: &KeyData, fingerprint: &str) -> Result<(), AuthError> {
        match self.find_authorized(user, fingerprint).await? {
            Some(k) if &k == key => Ok(()),
            _ => Err(AuthError::UnknownKey { user: user.into(), fingerprint: fingerprint.to_string() }),
        }
    }

    /// The authorized key of `user` with this fingerprint, if any.
    async fn find_authorized(&self, user: &str, fingerprint: &str) -> Result<Option<KeyData>, AuthError> {
        let text = match &self.cfg.authorized_keys {
            AuthorizedKeys::None => String::new(),
            AuthorizedKeys::Inline(m) => m.get(user).map(|v| v.join("\n")).unwrap_or_default(),
            AuthorizedKeys::Dir(dir) => match tokio::fs::read_to_string(dir.join(user)).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(AuthError::KeySource(format!("{}: {e}", dir.join(user).display()))),
            },
            AuthorizedKeys::Secrets(path) => match self.store.get(&format!("{path}/{user}")).await {
                Ok(Some(v)) => v.data.get("keys").map(|s| s.expose_secret().to_string()).unwrap_or_default(),
                Ok(None) => String::new(),
                Err(e) => return Err(AuthError::KeySource(e.to_string())),
            },
        };
        Ok(authorized_keys(&text).into_iter().find(|k| sshsig::fingerprint(k) == fingerprint))
    }
}

/// The plain keys listed in `authorized_keys` text. Lines carrying options (`from=`,
/// `expiry-time=`, `restrict`, `cert-authority`, ...) are skipped: gocred cannot enforce them, so
/// it does not honour them (configure CAs in `ssh.trusted_user_ca_keys`).
pub fn authorized_keys(text: &str) -> Vec<KeyData> {
    ssh_key::AuthorizedKeys::new(text)
        .filter_map(Result::ok)
        .filter(|entry| entry.config_opts().iter().next().is_none())
        .map(|entry| entry.public_key().key_data().clone())
        .collect()
}

/// RSA keys must be at least 2048 bits and sign with SHA-2.
fn check_key_strength(key: &KeyData, sig: &ssh_key::SshSig) -> Result<(), AuthError> {
    if let KeyData::Rsa(rsa) = key {
        let bits = sshsig::rsa_bits(rsa);
        if bits < 2048 {
            return Err(AuthError::MalformedSignature(format!("RSA key of {bits} bits is too small (minimum 2048)")));
        }
        if !matches!(sig.algorithm(), ssh_key::Algorithm::Rsa { hash: Some(_) }) {
            return Err(AuthError::MalformedSignature("RSA signatures must use rsa-sha2-256 or rsa-sha2-512".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert!(valid_user("alice"));
        assert!(valid_user("a.b-c_d@corp"));
        assert!(!valid_user(""));
        assert!(!valid_user("../etc/passwd"));
        assert!(!valid_user("a/b"));
        assert!(!valid_user(".hidden"));
        assert!(!valid_user(&"x".repeat(65)));
    }
}
