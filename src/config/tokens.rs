//! `[tokens]`: lifetimes of the broker's access tokens and sessions, proof-of-possession, and
//! signing-key rotation.

use super::ConfigError;
use super::Ctx;
use super::raw::RawTokens;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct TokensConfig {
    pub ttl: Duration,
    pub max_session: Duration,
    pub require_proof: bool,
    pub rotate_every: Duration,
}

/// `[tokens]` → [`TokensConfig`] (a ttl above 0, sessions at least as long, rotation at least 1s).
pub(super) fn validate_tokens(cx: &Ctx, t: RawTokens) -> Result<TokensConfig, ConfigError> {
    let tokens = TokensConfig {
        ttl: cx.duration("tokens.ttl", t.ttl.as_deref(), Duration::from_secs(15 * 60))?,
        max_session: cx.duration("tokens.max_session", t.max_session.as_deref(), Duration::from_secs(12 * 3600))?,
        require_proof: t.require_proof.unwrap_or(true),
        rotate_every: cx.duration("tokens.rotate_every", t.rotate_every.as_deref(), Duration::from_secs(24 * 3600))?,
    };
    if tokens.ttl.is_zero() {
        return Err(cx.err("tokens.ttl", "must be greater than zero".into()));
    }
    if tokens.max_session < tokens.ttl {
        return Err(cx.err("tokens.max_session", "must be at least tokens.ttl".into()));
    }
    if tokens.rotate_every < Duration::from_secs(1) {
        return Err(cx.err("tokens.rotate_every", "must be at least 1s".into()));
    }
    Ok(tokens)
}
