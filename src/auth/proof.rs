//! Proofs of possession: an SSHSIG signature (namespace `gocred-proof@v1`) by the token's bound
//! key over the token's hash, a URL prefix within the broker's origin and an expiry at most
//! 10 minutes ahead. Wire form (see `docs/proofs.md`):
//!
//! ```text
//! v1.<exp>.<base64url(prefix)>.<base64url(SSHSIG blob)>
//! ```
//!
//! Signature checks are cached per (token, proof) until the proof expires, so repeated requests
//! only redo the cheap checks (expiry, prefix).
//!
//! Must not: accept a proof whose prefix is wider than the broker's origin.

use super::{AuthError, sshsig};
pub use crate::proto::proof::{MAX_PROOF_LIFETIME_SECS, PROOF_NAMESPACE, encode, proof_message, token_hash};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use std::collections::HashMap;
use std::sync::Mutex;
use subtle::ConstantTimeEq;

/// Clock skew tolerated on the proof's expiry bound.
const SKEW_SECS: u64 = 30;
const CACHE_CAP: usize = 50_000;

/// A parsed (not yet verified) proof.
#[derive(Debug, Clone)]
pub struct ParsedProof {
    pub exp: u64,
    pub prefix: String,
    sig: String,
}

pub fn parse(proof: &str) -> Result<ParsedProof, AuthError> {
    let bad = |m: &str| AuthError::MalformedProof(m.to_string());
    let mut parts = proof.trim().split('.');
    if parts.next() != Some("v1") {
        return Err(bad("expected v1.<exp>.<prefix>.<signature>"));
    }
    let exp = parts.next().and_then(|e| e.parse::<u64>().ok()).ok_or_else(|| bad("expiry is not a number"))?;
    let prefix = parts
        .next()
        .and_then(|p| B64URL.decode(p).ok())
        .and_then(|p| String::from_utf8(p).ok())
        .ok_or_else(|| bad("prefix is not base64url UTF-8"))?;
    let sig = parts.next().filter(|s| !s.is_empty()).ok_or_else(|| bad("missing signature"))?.to_string();
    if parts.next().is_some() {
        return Err(bad("too many parts"));
    }
    Ok(ParsedProof { exp, prefix, sig })
}

/// Verifies proofs for one broker origin, with a cache of good signatures.
pub struct ProofVerifier {
    origin: String,
    require_uv: bool,
    cache: Mutex<HashMap<String, u64>>,
}

impl ProofVerifier {
    /// `require_uv`: security-key proofs must carry user verification (`ssh.require_user_verification`).
    pub fn new(origin: String, require_uv: bool) -> Self {
        ProofVerifier { origin, require_uv, cache: Mutex::new(HashMap::new()) }
    }

    /// Check `proof` for `token`, bound to key `bound_fingerprint`, on a request to
    /// `request_url` (origin + path).
    pub fn verify(
        &self,
        token: &str,
        bound_fingerprint: &str,
        proof: &str,
        request_url: &str,
        now: u64,
    ) -> Result<(), AuthError> {
        let p = parse(proof)?;
        if p.exp <= now {
            return Err(AuthError::ProofExpired);
        }
        if p.exp > now + MAX_PROOF_LIFETIME_SECS + SKEW_SECS {
            return Err(AuthError::ProofTooLong);
        }
        // The prefix ends at a path-segment boundary (`/`) inside the origin, so it never covers
        // a sibling such as `/git/acme-evil` for `/git/acme`.
        let within_origin = p.prefix.starts_with(&format!("{}/", self.origin)) && p.prefix.ends_with('/');
        if !within_origin || !request_url.starts_with(&p.prefix) {
            return Err(AuthError::ProofWrongPrefix { prefix: p.prefix });
        }
        let cache_key = super::sha256_hex(&[token.as_bytes(), proof.as_bytes(), bound_fingerprint.as_bytes()]);
        if self.cache.lock().expect("proof cache poisoned").get(&cache_key).is_some_and(|exp| *exp > now) {
            return Ok(());
        }
        let sig = sshsig::parse(&p.sig)?;
        let signer =
            sshsig::verify(&sig, PROOF_NAMESPACE, proof_message(token, &p.prefix, p.exp).as_bytes(), self.require_uv)
                .map_err(|e| match e {
                AuthError::BadSignature => AuthError::ProofSignature,
                other => other,
            })?;
        let fp = signer.fingerprint();
        if !bool::from(fp.as_bytes().ct_eq(bound_fingerprint.as_bytes())) {
            return Err(AuthError::ProofWrongKey { signer: fp, bound: bound_fingerprint.to_string() });
        }
        let mut cache = self.cache.lock().expect("proof cache poisoned");
        if cache.len() >= CACHE_CAP {
            cache.retain(|_, exp| *exp > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(cache_key, p.exp);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_roundtrip() {
        let w = encode(1700000000, "https://b.example/git/", "c2ln");
        let p = parse(&w).unwrap();
        assert_eq!(p.exp, 1700000000);
        assert_eq!(p.prefix, "https://b.example/git/");
        assert!(parse("v2.1.a.b").is_err());
        assert!(parse("v1.x.a.b").is_err());
        assert!(parse("v1.1.a.b.c").is_err());
    }

    #[test]
    fn message_is_stable() {
        assert_eq!(
            proof_message("t", "https://b/", 5),
            format!("gocred-proof-v1\ntoken:{}\nprefix:https://b/\nexp:5\n", token_hash("t"))
        );
        // SHA-256("t") base64url
        assert_eq!(token_hash("t"), "47mKTaMaEn1L3m5DAz9muidMqw636xxw7EFAK_YnPdg");
    }

    #[test]
    fn prefix_must_stay_within_origin() {
        let v = ProofVerifier::new("https://b.example".into(), false);
        let now = 1000;
        for prefix in ["https://b.example.evil/", "https://other/", "https://b.example"] {
            let proof = encode(now + 60, prefix, "AAAA");
            let e = v.verify("t", "SHA256:x", &proof, "https://b.example/v1/whoami", now).unwrap_err();
            assert!(matches!(e, AuthError::ProofWrongPrefix { .. }), "{prefix}: {e}");
        }
        let proof = encode(now + 60, "https://b.example/git/", "AAAA");
        let e = v.verify("t", "SHA256:x", &proof, "https://b.example/v1/whoami", now).unwrap_err();
        assert!(matches!(e, AuthError::ProofWrongPrefix { .. }));
        let e = v
            .verify("t", "SHA256:x", &encode(now, "https://b.example/", "AAAA"), "https://b.example/", now)
            .unwrap_err();
        assert!(matches!(e, AuthError::ProofExpired));
        let e = v
            .verify("t", "SHA256:x", &encode(now + 1000, "https://b.example/", "AAAA"), "https://b.example/", now)
            .unwrap_err();
        assert!(matches!(e, AuthError::ProofTooLong));
    }
}
