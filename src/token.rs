//! Access tokens: EdDSA (Ed25519) JWTs signed with the current key of [`crate::keys`], bound to
//! the caller's key by `cnf.kid` (the `SHA256:...` fingerprint, RFC 7800), minted at login,
//! refreshed up to `tokens.max_session` after the original login, checked against the
//! revocation list.
//!
//! Verification is strict: `alg` must be `EdDSA` (no `none`, no HMAC with a public key), the `kid`
//! must be a published key, `iss` and `aud` must match, `exp`/`nbf` are enforced.
//!
//! Must not: accept any algorithm but EdDSA, or log a token.

use crate::auth::{Principal, PrincipalKind};
use crate::keys::Keys;
use crate::revocation::Revocations;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The audience of every gocred access token.
pub const AUDIENCE: &str = "gocred";
/// Clock skew tolerated on `nbf`/`iat`.
const SKEW_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("token algorithm `{0}` is not accepted (only EdDSA)")]
    Algorithm(String),
    #[error("token signed by unknown key id")]
    UnknownKid,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issuer is not this broker")]
    WrongIssuer,
    #[error("token audience is not `gocred`")]
    WrongAudience,
    #[error("token revoked")]
    Revoked,
    #[error("session exceeded tokens.max_session: log in again")]
    SessionExpired,
}

/// RFC 7800 confirmation: the bound key's fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cnf {
    pub kid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub amr: Vec<String>,
    pub groups: Vec<String>,
    pub cnf: Cnf,
    /// `user` or `workload`.
    pub kind: String,
    /// When the session's original login happened (refresh never goes past + max_session).
    pub auth_time: u64,
    /// Session id: the same for every token of one login; revoking a token revokes its session.
    pub sid: String,
    /// When the session ends: `auth_time + tokens.max_session`, or earlier (an SSH certificate's
    /// `valid_before`). No token of the session outlives it.
    pub session_end: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attrs: BTreeMap<String, String>,
}

impl Claims {
    /// The principal this token speaks for.
    pub fn principal(&self) -> Principal {
        Principal {
            kind: if self.kind == "workload" { PrincipalKind::Workload } else { PrincipalKind::User },
            id: self.sub.clone(),
            groups: self.groups.clone(),
            auth_method: self.amr.first().cloned().unwrap_or_else(|| "token".into()),
            key_fingerprint: self.cnf.kid.clone(),
            attrs: self.attrs.clone(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A freshly minted token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: crate::proto::token::AccessToken,
    pub claims: Claims,
}

/// Mints, verifies and refreshes tokens.
pub struct TokenService {
    keys: Arc<Keys>,
    issuer: String,
    ttl: Duration,
    max_session: Duration,
    revocations: Arc<Revocations>,
    /// sha256(token) → (claims, kid) of tokens whose signature and claims checked out.
    cache: Mutex<HashMap<String, (Claims, String)>>,
}

const TOKEN_CACHE_CAP: usize = 50_000;

impl TokenService {
    pub fn new(
        keys: Arc<Keys>,
        issuer: String,
        ttl: Duration,
        max_session: Duration,
        revocations: Arc<Revocations>,
    ) -> Self {
        TokenService { keys, issuer, ttl, max_session, revocations, cache: Mutex::new(HashMap::new()) }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// The first token of a new session for `p`, logged in at `now`; `not_after` caps the
    /// session (e.g. a certificate's end of validity).
    pub fn mint(&self, p: &Principal, now: u64, not_after: Option<u64>) -> Result<Minted, TokenError> {
        let end = (now + self.max_session.as_secs()).min(not_after.unwrap_or(u64::MAX));
        self.issue(p, now, &B64URL.encode(crate::random_bytes::<16>()), end, now)
    }

    fn issue(
        &self,
        p: &Principal,
        auth_time: u64,
        sid: &str,
        session_end: u64,
        now: u64,
    ) -> Result<Minted, TokenError> {
        if now >= session_end {
            return Err(TokenError::SessionExpired);
        }
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: p.id.clone(),
            aud: AUDIENCE.into(),
            exp: (now + self.ttl.as_secs()).min(session_end),
            iat: now,
            nbf: now,
            jti: B64URL.encode(crate::random_bytes::<16>()),
            amr: vec![p.auth_method.clone()],
            groups: p.groups.clone(),
            cnf: Cnf { kid: p.key_fingerprint.clone() },
            kind: p.kind.as_str().into(),
            auth_time,
            sid: sid.to_string(),
            session_end,
            attrs: p.attrs.clone(),
        };
        let snap = self.keys.snapshot();
        let key = snap.set.current();
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": key.kid });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(serde_json::to_vec(&claims).expect("claims serialise"))
        );
        let sig = key.sign(signing_input.as_bytes());
        Ok(Minted {
            token: crate::proto::token::AccessToken::new(format!("{signing_input}.{}", B64URL.encode(sig))),
            claims,
        })
    }

    /// Verify signature, header, issuer, audience, times and revocation. Tokens that passed the
    /// signature and claim checks are cached until they expire (keyed by their SHA-256, and
    /// dropped when their `kid` leaves the JWKS); expiry and revocation are checked every time.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let cache_key = crate::auth::sha256_hex(&[token.as_bytes()]);
        let cached = self.cache.lock().expect("token cache poisoned").get(&cache_key).cloned();
        if let Some((claims, kid)) = cached {
            if now >= claims.exp {
                return Err(TokenError::Expired);
            }
            if self.keys.snapshot().set.find(&kid).is_some() {
                if self.revocations.is_revoked(&claims.jti, &claims.sid) {
                    return Err(TokenError::Revoked);
                }
                return Ok(claims);
            }
        }
        let (claims, kid) = self.verify_uncached(token, now)?;
        let mut cache = self.cache.lock().expect("token cache poisoned");
        if cache.len() >= TOKEN_CACHE_CAP {
            cache.retain(|_, (c, _)| c.exp > now);
            if cache.len() >= TOKEN_CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(cache_key, (claims.clone(), kid));
        Ok(claims)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<(Claims, String), TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Header = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("header is not base64url JSON"))?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm(header.alg.chars().take(20).collect()));
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed("unsupported crit header"));
        }
        let kid = header.kid.ok_or(TokenError::UnknownKid)?;
        let snap = self.keys.snapshot();
        let key = snap.set.find(&kid).ok_or(TokenError::UnknownKid)?;
        let sig: [u8; 64] = B64URL
            .decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(TokenError::Malformed("signature is not 64 base64url bytes"))?;
        key.verifying_key()
            .verify_strict(format!("{h}.{p}").as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| TokenError::BadSignature)?;
        let claims: Claims = B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("claims are not base64url JSON of the expected shape"))?;
        if claims.iss != self.issuer {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if now >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + SKEW_SECS || claims.iat > now + SKEW_SECS {
            return Err(TokenError::NotYetValid);
        }
        if self.revocations.is_revoked(&claims.jti, &claims.sid) {
            return Err(TokenError::Revoked);
        }
        Ok((claims, kid))
    }

    /// A new token for the same session (same key and session end), with `groups` as they are
    /// now (the caller re-checks the principal first).
    pub fn refresh(&self, claims: &Claims, groups: Vec<String>, now: u64) -> Result<Minted, TokenError> {
        let mut p = claims.principal();
        p.groups = groups;
        self.issue(&p, claims.auth_time, &claims.sid, claims.session_end, now)
    }
}
