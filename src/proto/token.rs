//! Access tokens on the wire: their alphabet (and the proofs'), the grant and token types of
//! `POST /v1/token`, and the token answer. The client checks every token it receives and every
//! token and proof it is about to print into a line protocol (GOAUTH headers, git credential
//! lines, netrc, askpass), so a broker answer or a session file cannot smuggle a CR/LF, a space
//! or a `~` into them.
//!
//! Must not: depend on broker modules (it is imported by both sides).

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// The `grant_type` that refreshes an access token (caller authenticates with token + proof).
pub const REFRESH_GRANT: &str = "urn:gocred:params:grant-type:refresh";
/// RFC 8693 token exchange.
pub const EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// The token type of gocred's access tokens (and of a generic JWT subject token).
pub const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Also accepted as `requested_token_type`.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Subject token types accepted by the exchange.
pub const SUBJECT_TOKEN_TYPES: [&str; 2] = ["urn:ietf:params:oauth:token-type:id_token", JWT_TOKEN_TYPE];

/// A gocred access token: a secret whose `Debug` is redacted. Serialized as its text (it is
/// sent on the wire and stored in the 0600 session file).
#[derive(Clone)]
pub struct AccessToken(SecretString);

impl AccessToken {
    pub fn new(text: String) -> AccessToken {
        AccessToken(SecretString::from(text))
    }
    /// The token text, for an `Authorization` header or a helper's output.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
    /// Constant-time comparison with another token text.
    pub fn matches(&self, other: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.expose().as_bytes().ct_eq(other.as_bytes()).into()
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

impl Serialize for AccessToken {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AccessToken, D::Error> {
        String::deserialize(d).map(AccessToken::new)
    }
}

/// The answer to a login, an exchange or a refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: AccessToken,
    #[serde(default = "bearer")]
    pub token_type: String,
    #[serde(default)]
    pub issued_token_type: Option<String>,
    #[serde(default)]
    pub expires_in: u64,
    pub expires_at: u64,
    pub user: String,
    pub key_fingerprint: String,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub session_expires_at: u64,
    /// `kind:id` of the principal (exchanges only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
}

fn bearer() -> String {
    "Bearer".into()
}

/// `POST /v1/token` (JSON or form). No `Debug`: it carries a subject token.
#[derive(Deserialize, Serialize, Default)]
pub struct TokenRequest {
    pub grant_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_token_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_token_type: Option<String>,
    /// The OpenSSH public key (`ssh-ed25519 AAAA...`) the new token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// `POST /v1/revoke` (RFC 7009; JSON or form). No `token`: the caller's own.
#[derive(Deserialize, Serialize, Default)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_hint: Option<String>,
}

/// Longest token the client accepts (claims carry groups; far above what the broker mints).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest proof the client accepts (an RSA-4096 SSHSIG is about 1.5 KiB of base64url).
pub const MAX_PROOF_LEN: usize = 8 * 1024;

fn b64url(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A compact JWS: three non-empty base64url segments separated by `.`.
pub fn is_token(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= MAX_TOKEN_LEN && parts.len() == 3 && parts.iter().all(|p| b64url(p))
}

/// `v1.<exp digits>.<base64url prefix>.<base64url signature>`.
pub fn is_proof(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() <= MAX_PROOF_LEN
        && parts.len() == 4
        && parts[0] == "v1"
        && !parts[1].is_empty()
        && parts[1].len() <= 20
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && b64url(parts[2])
        && b64url(parts[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_proofs_stay_in_their_alphabets() {
        assert!(is_token("eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJhIn0.c2ln-_x"));
        assert!(is_proof("v1.1700000000.aHR0cHM6Ly9iLw.c2ln-_x"));
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "a..c",
            "a.b.c\r\nAuthorization: x",
            "a.b.c\n",
            "a.b c.d",
            "a.b.c~p",
            "a.b.cé",
            "a.b.c=",
        ] {
            assert!(!is_token(bad), "{bad:?}");
        }
        assert!(!is_token(&format!("a.b.{}", "c".repeat(MAX_TOKEN_LEN))));
        for bad in [
            "",
            "v2.1.a.b",
            "v1..a.b",
            "v1.x.a.b",
            "v1.1.a",
            "v1.1.a.b.c",
            "v1.1.a.b\r\nX: y",
            "v1.1.a.b\n",
            "v1.1.a b.c",
            "v1.1.a.b~",
            "v1.1.a.bé",
        ] {
            assert!(!is_proof(bad), "{bad:?}");
        }
    }
}
