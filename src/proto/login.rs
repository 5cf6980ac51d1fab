//! The SSH login exchange on the wire: `POST /v1/login/ssh/challenge` and `POST /v1/login/ssh`,
//! the namespace and exact message a client signs, and the `GET /v1/whoami` answer.
//!
//! Must not: depend on broker modules.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// SSHSIG namespace of login signatures.
pub const LOGIN_NAMESPACE: &str = "gocred-login@v1";

/// The exact bytes a client signs to log in.
pub fn login_message(challenge: &str, origin: &str, user: &str) -> String {
    format!("gocred-login-v1\nchallenge:{challenge}\norigin:{origin}\nuser:{user}\n")
}

/// `POST /v1/login/ssh/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    pub user: String,
}

/// A fresh challenge for a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Challenge {
    pub challenge: String,
    pub expires_at: u64,
    pub namespace: String,
    pub origin: String,
    /// What to sign ([`login_message`]).
    pub message: String,
}

/// `POST /v1/login/ssh`: the signed challenge (signature: base64url SSHSIG blob).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub challenge: String,
    pub signature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// `GET /v1/whoami`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Whoami {
    pub principal: String,
    pub kind: String,
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub auth_method: String,
    pub key_fingerprint: String,
    #[serde(default)]
    pub attrs: BTreeMap<String, String>,
    pub token_expires_at: u64,
    pub session_started_at: u64,
    pub session_expires_at: u64,
}
