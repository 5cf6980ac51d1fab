//! Authentication: who is calling. SSH login ([`ssh`]: sealed challenges answered with SSHSIG,
//! authorized keys and user certificates), OIDC subject tokens ([`oidc`]: SSO ID tokens,
//! Kubernetes and CI tokens for RFC 8693 exchange), proofs of key possession ([`proof`]), and the
//! [`Principal`] every later stage (policy, token, proxy) works with.
//!
//! Must not: decide authorization (that is `policy`), choose HTTP status codes (that is `http`),
//! or put a signature, token or key in an error message.

pub mod oidc;
pub mod proof;
pub mod ssh;
pub mod sshsig;

use serde::Serialize;
use std::collections::BTreeMap;

/// What kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    User,
    Workload,
}

impl PrincipalKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            PrincipalKind::User => "user",
            PrincipalKind::Workload => "workload",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub kind: PrincipalKind,
    /// User name, or workload subject.
    pub id: String,
    pub groups: Vec<String>,
    /// `ssh`, `ssh-cert`, `oidc`, ...
    pub auth_method: String,
    /// `SHA256:...` fingerprint of the key the caller proved possession of.
    pub key_fingerprint: String,
    /// Claims usable in policies: issuer, subject, namespace, service_account, repository, ...
    pub attrs: BTreeMap<String, String>,
}

impl Principal {
    /// `user:alice` / `workload:<id>`, for messages and audit lines.
    pub fn display(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }

    /// Stable key for decision caches.
    pub fn cache_key(&self) -> String {
        let mut groups = self.groups.clone();
        groups.sort();
        // JSON: unambiguous whatever the strings contain.
        serde_json::json!([self.kind.as_str(), self.id, groups, self.auth_method, self.key_fingerprint, self.attrs])
            .to_string()
    }
}

/// Why authentication failed. Every variant is a 401 to the caller; the message says which
/// check failed and never contains secret material.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <token> with a Gocred-Proof header, or Basic auth")]
    MissingCredentials,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    #[error("a proof of key possession is required (Gocred-Proof header, or token~proof as the Basic password)")]
    MissingProof,
    #[error("a token is required with the proof")]
    MissingToken,
    #[error("malformed proof: {0}")]
    MalformedProof(String),
    #[error("proof expired")]
    ProofExpired,
    #[error("proof expiry is more than 10 minutes ahead")]
    ProofTooLong,
    #[error("proof is for URL prefix {prefix}, which does not cover this request")]
    ProofWrongPrefix { prefix: String },
    #[error("proof is signed by key {signer}, but the token is bound to {bound}")]
    ProofWrongKey { signer: String, bound: String },
    #[error("proof signature is invalid")]
    ProofSignature,
    #[error("malformed signature: {0}")]
    MalformedSignature(String),
    #[error("signature namespace is `{got}`, expected `{expected}`")]
    WrongNamespace { got: String, expected: &'static str },
    #[error("signature verification failed")]
    BadSignature,
    #[error("security-key signature {0}")]
    SecurityKeyFlags(&'static str),
    #[error("invalid challenge (not issued by this broker, or corrupted)")]
    InvalidChallenge,
    #[error("challenge expired; request a new one")]
    ChallengeExpired,
    #[error("challenge already used; request a new one")]
    ChallengeReplayed,
    #[error("challenge was issued for another user")]
    ChallengeUserMismatch,
    #[error("key {fingerprint} is not authorized for user {user}")]
    UnknownKey { user: String, fingerprint: String },
    #[error("invalid user name")]
    BadUserName,
    #[error("certificate {key_id}: {reason}")]
    Certificate { key_id: String, reason: String },
    #[error("cannot look up authorized keys: {0}")]
    KeySource(String),
}

/// Lower-case hex SHA-256, for cache keys.
pub(crate) fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    crate::fsutil::hex(&h.finalize())
}
