//! Who is calling and may they: [`authenticate`] turns the credentials a request presented
//! (token, and a proof unless proofs are disabled) into a [`Caller`], with an audit line either
//! way; [`authorize`] asks the policy about one action on one resource, with an audit line
//! either way. Every protected route goes through both.
//!
//! Must not: parse HTTP headers (the HTTP layer hands over [`Presented`]) or decide status codes.

use super::Broker;
use crate::audit::Event;
use crate::auth::{AuthError, Principal};
use crate::policy::{Action, Decision, Resource};
use crate::proto::token::AccessToken;
use crate::token::{Claims, TokenError};

/// The credentials a request carried.
pub struct Presented {
    pub token: AccessToken,
    pub proof: Option<String>,
}

/// A caller that presented a valid token and (unless disabled) a valid proof.
#[derive(Debug)]
pub struct Caller {
    pub principal: Principal,
    pub claims: Claims,
    pub token: AccessToken,
    pub request_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// No or unusable credentials, or a failed proof.
    #[error(transparent)]
    Credentials(#[from] AuthError),
    /// The token itself was refused (signature, expiry, revocation, issuer, audience…).
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("request path is not in normal form")]
    PathNotNormal,
    #[error("too many requests from {principal}; wait a moment (limits.requests_per_second)")]
    RateLimited { principal: String },
    /// The policy said no; the decision's reason names action, resource, principal and policy.
    #[error("{}", .0.reason)]
    Denied(Decision),
}

/// Proof prefixes are matched against the path: it must be in normal form.
fn normal_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !(path.contains("//")
        || path.contains("/./")
        || path.contains("/../")
        || path.ends_with("/..")
        || lower.contains("%2e")
        || lower.contains("%2f"))
}

/// Verify the token and its proof for a request to `path`.
pub fn authenticate(
    b: &Broker,
    presented: Result<Presented, AuthError>,
    path: &str,
    request_id: &str,
) -> Result<Caller, AccessError> {
    let now = crate::unix_now();
    let deny = |e: AccessError, claims: Option<&Claims>| {
        b.audit.record(&Event {
            kind: "authn",
            request_id: request_id.to_string(),
            principal: claims.map(|c| c.principal().display()),
            auth_method: claims.map(|c| c.principal().auth_method),
            key_fingerprint: claims.map(|c| c.cnf.kid.clone()),
            action: "authenticate".into(),
            resource: path.to_string(),
            decision: "deny",
            reason: e.to_string(),
            ..Default::default()
        });
        e
    };
    if !normal_path(path) {
        return Err(deny(AccessError::PathNotNormal, None));
    }
    let Presented { token, proof } = presented.map_err(|e| deny(e.into(), None))?;
    let claims = b.tokens.verify(token.expose(), now).map_err(|e| deny(e.into(), None))?;
    let proved = proof.is_some();
    match proof {
        Some(proof) => {
            let url = format!("{}{}", b.origin, path);
            b.proofs
                .verify(token.expose(), &claims.cnf.kid, &proof, &url, now)
                .map_err(|e| deny(e.into(), Some(&claims)))?;
        }
        None if b.config.tokens.require_proof => return Err(deny(AuthError::MissingProof.into(), Some(&claims))),
        None => {}
    }
    let principal = claims.principal();
    if !b.limits.principal.allow(&principal.display()) {
        return Err(AccessError::RateLimited { principal: principal.display() });
    }
    b.audit.record(&Event {
        action: "authenticate".into(),
        resource: path.to_string(),
        decision: "allow",
        reason: if proved { "valid token and proof" } else { "valid token (proofs not required)" }.into(),
        ..Event::about("authn", request_id, &principal)
    });
    Ok(Caller { principal, claims, token, request_id: request_id.to_string() })
}

/// Authorize `principal` for `action` on `resource`, with an audit line either way.
pub fn authorize(
    b: &Broker,
    request_id: &str,
    principal: &Principal,
    action: Action,
    resource: &Resource,
) -> Result<(), AccessError> {
    let d = b.policy.decide(principal, action, resource);
    b.audit.record(&Event {
        action: action.as_str().into(),
        resource: resource.display(),
        decision: if d.allowed { "allow" } else { "deny" },
        policy_ids: d.policy_ids.clone(),
        reason: d.reason.clone(),
        ..Event::about("authz", request_id, principal)
    });
    if d.allowed { Ok(()) } else { Err(AccessError::Denied(d)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_normal_paths_are_matched_against_proof_prefixes() {
        assert!(normal_path("/mod/git.corp.example/acme/lib/@v/list"));
        for bad in ["/mod//x", "/a/./b", "/a/../b", "/a/..", "/a%2e%2e/b", "/a%2Fb"] {
            assert!(!normal_path(bad), "{bad}");
        }
    }
}
