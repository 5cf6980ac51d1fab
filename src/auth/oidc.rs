//! OIDC subject tokens (ID tokens from SSO, Kubernetes service-account tokens, CI ID tokens):
//! verifying them against the configured `[[oidc.issuers]]` and turning their claims into a
//! [`Principal`] whose attributes Cedar policies can test.
//!
//! Discovery and JWKS use the `openidconnect` crate's key types (over the broker's own HTTP
//! client). Key sets are cached per issuer and re-fetched when a token names an unknown `kid`
//! (at most once per [`UNKNOWN_KID_REFETCH`]) or when they are older than [`JWKS_MAX_AGE`]:
//! a verification makes no network call in the steady state. Verified tokens are cached by hash
//! until they expire.
//!
//! Must not: mint broker tokens, decide policy, or put a token or claim value that could be
//! secret into an error message (errors name the failed check and the issuer).

use super::Principal;
use super::PrincipalKind;
use crate::config::{IssuerKind, OidcIssuer};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use openidconnect::JsonWebKey;
use openidconnect::core::{CoreJsonWebKeySet, CoreJwsSigningAlgorithm};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Key sets older than this are re-fetched (in line, falling back to the cached set on error).
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// An issuer's discovery document and key set are fetched at most this often, whatever the
/// reason (first use, age, an unknown `kid`, a failure): unauthenticated callers cannot make the
/// broker hammer an identity provider.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(10);
/// Cached keys are used while the issuer cannot be reached, but not longer than this.
pub const JWKS_MAX_STALE: Duration = Duration::from_secs(24 * 3600);
/// JWT `typ` values that are never ID tokens (RFC 9068 access tokens, logout and SET tokens).
const REFUSED_TYPES: [&str; 4] = ["at+jwt", "application/at+jwt", "logout+jwt", "secevent+jwt"];
/// Signature algorithms accepted on subject tokens. Never `none`, never HMAC.
pub const ALLOWED_ALGS: [&str; 9] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"];
const CACHE_CAP: usize = 20_000;

/// Why a subject token was refused. Each message names the check that failed.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("subject_token is not a JWT: {0}")]
    Malformed(String),
    #[error("subject_token uses alg `{alg}`, which is not accepted (accepted: {})", ALLOWED_ALGS.join(", "))]
    UnsupportedAlg { alg: String },
    #[error("subject_token has a `crit` header, which is not supported")]
    CriticalHeader,
    #[error("subject_token has typ `{typ}`: not an identity token")]
    WrongType { typ: String },
    #[error("subject_token from issuer `{issuer}`: `email` is used as the subject but `email_verified` is not true")]
    EmailNotVerified { issuer: String },
    #[error("subject_token issuer `{iss}` is not trusted by this broker (no [[oidc.issuers]] entry has this issuer)")]
    UnknownIssuer { iss: String },
    #[error("subject_token is signed by a key that issuer `{issuer}` does not publish (kid `{kid}`)")]
    UnknownKey { issuer: String, kid: String },
    #[error("subject_token signature does not verify with issuer `{issuer}`'s key (kid `{kid}`)")]
    BadSignature { issuer: String, kid: String },
    #[error("subject_token from issuer `{issuer}` expired {ago}s ago")]
    Expired { issuer: String, ago: u64 },
    #[error("subject_token from issuer `{issuer}` is not valid yet (`{claim}` is {ahead}s in the future)")]
    NotYetValid { issuer: String, claim: &'static str, ahead: u64 },
    #[error("subject_token from issuer `{issuer}` has no `exp` claim; only expiring tokens are accepted")]
    NoExpiry { issuer: String },
    #[error("subject_token from issuer `{issuer}` was issued {age}s ago, more than its max_token_age ({max}s)")]
    TooOld { issuer: String, age: u64, max: u64 },
    #[error(
        "subject_token audience {got:?} does not include an audience accepted for issuer `{issuer}` (accepted: {expected:?})"
    )]
    WrongAudience { issuer: String, got: Vec<String>, expected: Vec<String> },
    #[error("subject_token from issuer `{issuer}` lacks claim `{claim}` (mapped to `{attr}`)")]
    MissingClaim { issuer: String, claim: String, attr: String },
    #[error("subject_token from issuer `{issuer}`: claim `{claim}` is not a string")]
    BadClaim { issuer: String, claim: String },
    #[error("cannot fetch the signing keys of issuer `{issuer}`: {reason}")]
    FetchKeys { issuer: String, reason: String },
}

impl OidcError {
    /// A failure to reach the issuer (not the caller's fault).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, OidcError::FetchKeys { .. })
    }
}

/// The identity a subject token proved, before it is bound to a key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub kind: PrincipalKind,
    pub id: String,
    pub groups: Vec<String>,
    pub attrs: BTreeMap<String, String>,
    /// Name of the configured issuer.
    pub issuer: String,
    pub issuer_kind: IssuerKind,
    /// The subject token's `exp`.
    pub exp: u64,
    /// The subject token's `iat`, if any.
    pub iat: Option<u64>,
}

impl Identity {
    /// The principal, bound to the key with fingerprint `key_fingerprint`.
    pub fn principal(&self, key_fingerprint: &str) -> Principal {
        Principal {
            kind: self.kind,
            id: self.id.clone(),
            groups: self.groups.clone(),
            auth_method: "oidc".into(),
            key_fingerprint: key_fingerprint.to_string(),
            attrs: self.attrs.clone(),
        }
    }
}

struct Keys {
    set: CoreJsonWebKeySet,
    fetched: Instant,
}

/// When the last fetch was attempted, and why it failed (if it did).
#[derive(Default)]
struct FetchState {
    last: Option<Instant>,
    error: Option<String>,
}

struct Issuer {
    cfg: OidcIssuer,
    http: reqwest::Client,
    keys: RwLock<Option<Arc<Keys>>>,
    /// Serialises fetches.
    fetching: tokio::sync::Mutex<FetchState>,
}

/// Verifies subject tokens of all configured issuers.
pub struct OidcVerifier {
    issuers: HashMap<String, Arc<Issuer>>,
    /// Issuer URLs in configuration order.
    order: Vec<String>,
    /// sha256(token) → identity, for tokens whose signature and claims checked out.
    cache: Mutex<HashMap<String, Identity>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpFailure(String);

fn http_client(cfg: &OidcIssuer) -> Result<reqwest::Client, String> {
    crate::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        // The trust anchor is the configured URL: no redirects elsewhere (or to plain http).
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &cfg.ca_cert {
        let pem = std::fs::read(ca).map_err(|e| format!("cannot read ca_cert {}: {e}", ca.display()))?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("ca_cert {}: {e}", ca.display()))?;
        b = b.tls_certs_merge(certs);
    }
    b.build().map_err(|e| e.to_string())
}

impl OidcVerifier {
    pub fn new(issuers: &[OidcIssuer]) -> Result<OidcVerifier, OidcError> {
        let mut map = HashMap::new();
        for cfg in issuers {
            let http = http_client(cfg).map_err(|reason| OidcError::FetchKeys { issuer: cfg.name.clone(), reason })?;
            map.insert(
                cfg.issuer.clone(),
                Arc::new(Issuer {
                    cfg: cfg.clone(),
                    http,
                    keys: RwLock::new(None),
                    fetching: tokio::sync::Mutex::new(FetchState::default()),
                }),
            );
        }
        let order = issuers.iter().map(|c| c.issuer.clone()).collect();
        Ok(OidcVerifier { issuers: map, order, cache: Mutex::new(HashMap::new()) })
    }

    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The first human issuer in the configuration (what `gocred login --oidc` uses), if any.
    pub fn human_issuer(&self) -> Option<&OidcIssuer> {
        self.order.iter().filter_map(|u| self.issuers.get(u)).map(|i| &i.cfg).find(|c| c.kind == IssuerKind::Human)
    }

    /// Verify `token` and map its claims. `now`: Unix seconds.
    pub async fn verify(&self, token: &str, now: u64) -> Result<Identity, OidcError> {
        let cache_key = super::sha256_hex(&[token.as_bytes()]);
        let cached = self.cache.lock().expect("oidc cache poisoned").get(&cache_key).cloned();
        if let Some(id) = cached {
            let cfg = self.issuers.values().find(|i| i.cfg.name == id.issuer).map(|i| &i.cfg);
            let leeway = cfg.map(|c| c.leeway.as_secs()).unwrap_or(0);
            if now >= id.exp.saturating_add(leeway) {
                return Err(OidcError::Expired { issuer: id.issuer.clone(), ago: now.saturating_sub(id.exp) });
            }
            if let (Some(max), Some(iat)) = (cfg.and_then(|c| c.max_token_age), id.iat) {
                let age = now.saturating_sub(iat);
                if age > max.as_secs() {
                    return Err(OidcError::TooOld { issuer: id.issuer.clone(), age, max: max.as_secs() });
                }
            }
            return Ok(id);
        }
        let parsed = parse(token)?;
        let iss = parsed.claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let issuer =
            self.issuers.get(&iss).cloned().ok_or(OidcError::UnknownIssuer { iss: iss.chars().take(200).collect() })?;
        issuer.check_signature(&parsed).await?;
        let identity = issuer.map_claims(&parsed.claims, now)?;
        let mut cache = self.cache.lock().expect("oidc cache poisoned");
        if cache.len() >= CACHE_CAP {
            cache.retain(|_, v| v.exp > now);
            if cache.len() >= CACHE_CAP {
                cache.clear();
            }
        }
        cache.insert(cache_key, identity.clone());
        Ok(identity)
    }
}

struct Parsed {
    alg: CoreJwsSigningAlgorithm,
    alg_name: String,
    kid: Option<String>,
    signing_input: String,
    signature: Vec<u8>,
    claims: serde_json::Map<String, serde_json::Value>,
}

fn parse(token: &str) -> Result<Parsed, OidcError> {
    let bad = |m: &str| OidcError::Malformed(m.to_string());
    let token = token.trim();
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("expected three dot-separated parts"));
    };
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&B64URL.decode(h).map_err(|_| bad("header is not base64url"))?)
            .map_err(|_| bad("header is not a JSON object"))?;
    let alg_name = header.get("alg").and_then(|v| v.as_str()).ok_or_else(|| bad("header has no `alg`"))?.to_string();
    if !ALLOWED_ALGS.contains(&alg_name.as_str()) {
        return Err(OidcError::UnsupportedAlg { alg: alg_name.chars().take(20).collect() });
    }
    if header.contains_key("crit") {
        return Err(OidcError::CriticalHeader);
    }
    if let Some(typ) = header.get("typ").and_then(|v| v.as_str())
        && REFUSED_TYPES.contains(&typ.to_ascii_lowercase().as_str())
    {
        return Err(OidcError::WrongType { typ: typ.chars().take(40).collect() });
    }
    let alg: CoreJwsSigningAlgorithm = serde_json::from_value(serde_json::Value::String(alg_name.clone()))
        .map_err(|_| OidcError::UnsupportedAlg { alg: alg_name.clone() })?;
    let kid = match header.get("kid") {
        None => None,
        Some(serde_json::Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(bad("header `kid` is not a string")),
    };
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&B64URL.decode(p).map_err(|_| bad("payload is not base64url"))?)
            .map_err(|_| bad("payload is not a JSON object"))?;
    let signature = B64URL.decode(s).map_err(|_| bad("signature is not base64url"))?;
    if signature.is_empty() {
        return Err(bad("signature is empty"));
    }
    Ok(Parsed { alg, alg_name, kid, signing_input: format!("{h}.{p}"), signature, claims })
}

/// Keys of `set` that may check a signature by `alg` (and carry `kid`, when the token names one):
/// usable for signatures, of the algorithm's key type, and not pinned to another algorithm.
fn suitable(
    set: &CoreJsonWebKeySet,
    kid: Option<&openidconnect::JsonWebKeyId>,
    alg: &CoreJwsSigningAlgorithm,
) -> Vec<openidconnect::core::CoreJsonWebKey> {
    use openidconnect::{JsonWebKeyAlgorithm, JsonWebKeyUse, JwsSigningAlgorithm};
    set.keys()
        .iter()
        .filter(|k| kid.is_none() || kid == k.key_id())
        .filter(|k| k.key_use().is_none_or(|u| u.allows_signature()))
        .filter(|k| alg.key_type().as_ref() == Some(k.key_type()))
        .filter(|k| match k.signing_alg() {
            JsonWebKeyAlgorithm::Unspecified => true,
            JsonWebKeyAlgorithm::Algorithm(a) => a == alg,
            _ => false,
        })
        .cloned()
        .collect()
}

impl Issuer {
    async fn fetch_keys(&self, reason_unknown_kid: bool) -> Result<Arc<Keys>, OidcError> {
        let mut state = self.fetching.lock().await;
        let current = self.keys.read().expect("jwks lock poisoned").clone();
        // Another task fetched while we waited.
        if let Some(c) = &current
            && !reason_unknown_kid
            && c.fetched.elapsed() < JWKS_MAX_AGE
        {
            return Ok(c.clone());
        }
        // At most one attempt per interval, whatever the reason; meanwhile the cached keys (or
        // the last failure) stand.
        if state.last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH) {
            return match (current, &state.error) {
                (Some(c), _) => Ok(c),
                (None, Some(e)) => Err(OidcError::FetchKeys { issuer: self.cfg.name.clone(), reason: e.clone() }),
                (None, None) => {
                    Err(OidcError::FetchKeys { issuer: self.cfg.name.clone(), reason: "not fetched yet".into() })
                }
            };
        }
        state.last = Some(Instant::now());
        let result = self.fetch_now().await;
        state.error = result.as_ref().err().map(|e| match e {
            OidcError::FetchKeys { reason, .. } => reason.clone(),
            other => other.to_string(),
        });
        result
    }

    async fn fetch_now(&self) -> Result<Arc<Keys>, OidcError> {
        let fail = |reason: String| OidcError::FetchKeys { issuer: self.cfg.name.clone(), reason };
        let doc: serde_json::Value = {
            let resp = self.http.get(&self.cfg.discovery_url).send().await.map_err(|e| fail(crate::error_chain(&e)))?;
            if !resp.status().is_success() {
                return Err(fail(format!("discovery {} answered {}", self.cfg.discovery_url, resp.status())));
            }
            resp.json().await.map_err(|e| fail(format!("discovery document: {}", crate::error_chain(&e))))?
        };
        if doc.get("issuer").and_then(|v| v.as_str()) != Some(self.cfg.issuer.as_str()) {
            return Err(fail("the discovery document names another issuer".into()));
        }
        let jwks_uri = doc.get("jwks_uri").and_then(|v| v.as_str()).ok_or_else(|| fail("no jwks_uri".into()))?;
        if !crate::proto::rules::secure_url(jwks_uri) {
            return Err(fail("jwks_uri is not https".into()));
        }
        let url = openidconnect::JsonWebKeySetUrl::new(jwks_uri.to_string()).map_err(|e| fail(e.to_string()))?;
        let http = self.http.clone();
        let call = move |req: openidconnect::HttpRequest| {
            let http = http.clone();
            async move {
                let (parts, body) = req.into_parts();
                let resp = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| HttpFailure(crate::error_chain(&e)))?;
                let mut out = http::Response::builder().status(resp.status());
                for (k, v) in resp.headers() {
                    out = out.header(k, v);
                }
                let bytes = resp.bytes().await.map_err(|e| HttpFailure(crate::error_chain(&e)))?;
                out.body(bytes.to_vec()).map_err(|e| HttpFailure(e.to_string()))
            }
        };
        let set = CoreJsonWebKeySet::fetch_async(&url, &call).await.map_err(|e| fail(crate::error_chain(&e)))?;
        let keys = Arc::new(Keys { set, fetched: Instant::now() });
        *self.keys.write().expect("jwks lock poisoned") = Some(keys.clone());
        tracing::info!(issuer = %self.cfg.name, keys = keys.set.keys().len(), "fetched OIDC signing keys");
        Ok(keys)
    }

    async fn current_keys(&self) -> Result<Arc<Keys>, OidcError> {
        let cached = self.keys.read().expect("jwks lock poisoned").clone();
        match cached {
            Some(k) if k.fetched.elapsed() < JWKS_MAX_AGE => Ok(k),
            Some(k) => match self.fetch_keys(false).await {
                Ok(fresh) => Ok(fresh),
                // The issuer is unreachable: keep using recent keys, but not forever.
                Err(_) if k.fetched.elapsed() < JWKS_MAX_STALE => Ok(k),
                Err(e) => {
                    *self.keys.write().expect("jwks lock poisoned") = None;
                    Err(e)
                }
            },
            None => self.fetch_keys(false).await,
        }
    }

    async fn check_signature(&self, t: &Parsed) -> Result<(), OidcError> {
        let kid_text = t.kid.clone().unwrap_or_else(|| "none".into()).chars().take(80).collect::<String>();
        let kid = t.kid.clone().map(openidconnect::JsonWebKeyId::new);
        let mut keys = self.current_keys().await?;
        let mut candidates: Vec<_> = suitable(&keys.set, kid.as_ref(), &t.alg);
        if candidates.is_empty() {
            // Maybe the issuer rotated: look again (rate-limited).
            keys = self.fetch_keys(true).await?;
            candidates = suitable(&keys.set, kid.as_ref(), &t.alg);
        }
        if candidates.is_empty() {
            return Err(OidcError::UnknownKey { issuer: self.cfg.name.clone(), kid: kid_text });
        }
        for key in &candidates {
            if key.verify_signature(&t.alg, t.signing_input.as_bytes(), &t.signature).is_ok() {
                return Ok(());
            }
        }
        tracing::debug!(issuer = %self.cfg.name, alg = %t.alg_name, "subject token signature did not verify");
        Err(OidcError::BadSignature { issuer: self.cfg.name.clone(), kid: kid_text })
    }

    /// The time claims (`exp`, `nbf`, `iat`, `max_token_age`) and the audience; returns `exp`.
    fn check_validity(&self, c: &serde_json::Map<String, serde_json::Value>, now: u64) -> Result<u64, OidcError> {
        let name = || self.cfg.name.clone();
        let leeway = self.cfg.leeway.as_secs();
        let num = |k: &str| c.get(k).and_then(|v| v.as_f64()).map(|f| if f < 0.0 { 0 } else { f as u64 });
        let exp = num("exp").ok_or_else(|| OidcError::NoExpiry { issuer: name() })?;
        if now >= exp.saturating_add(leeway) {
            return Err(OidcError::Expired { issuer: name(), ago: now.saturating_sub(exp) });
        }
        for claim in ["nbf", "iat"] {
            if let Some(t) = num(claim)
                && t > now.saturating_add(leeway)
            {
                return Err(OidcError::NotYetValid {
                    issuer: name(),
                    claim: if claim == "nbf" { "nbf" } else { "iat" },
                    ahead: t - now,
                });
            }
        }
        if let Some(max) = self.cfg.max_token_age {
            let iat = num("iat").ok_or_else(|| OidcError::MissingClaim {
                issuer: name(),
                claim: "iat".into(),
                attr: "max_token_age".into(),
            })?;
            let age = now.saturating_sub(iat);
            if age > max.as_secs() {
                return Err(OidcError::TooOld { issuer: name(), age, max: max.as_secs() });
            }
        }
        let aud: Vec<String> = match c.get("aud") {
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            _ => Vec::new(),
        };
        if !aud.iter().any(|a| self.cfg.audiences.contains(a)) {
            return Err(OidcError::WrongAudience {
                issuer: name(),
                got: aud.into_iter().take(10).map(|a| a.chars().take(100).collect()).collect(),
                expected: self.cfg.audiences.clone(),
            });
        }
        Ok(exp)
    }

    fn map_claims(&self, c: &serde_json::Map<String, serde_json::Value>, now: u64) -> Result<Identity, OidcError> {
        let name = || self.cfg.name.clone();
        let exp = self.check_validity(c, now)?;
        let num = |k: &str| c.get(k).and_then(|v| v.as_f64()).map(|f| if f < 0.0 { 0 } else { f as u64 });
        let get = |claim: &str, attr: &str| -> Result<String, OidcError> {
            let v = if claim.starts_with('/') {
                serde_json::Value::Object(c.clone()).pointer(claim).cloned()
            } else {
                c.get(claim).cloned()
            };
            match v {
                Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                None | Some(serde_json::Value::Null) | Some(serde_json::Value::String(_)) => {
                    Err(OidcError::MissingClaim { issuer: name(), claim: claim.to_string(), attr: attr.to_string() })
                }
                Some(_) => Err(OidcError::BadClaim { issuer: name(), claim: claim.to_string() }),
            }
        };
        if self.cfg.subject_claim == "email" && c.get("email_verified") != Some(&serde_json::Value::Bool(true)) {
            return Err(OidcError::EmailNotVerified { issuer: name() });
        }
        let id = format!("{}{}", self.cfg.username_prefix, get(&self.cfg.subject_claim, "subject")?);
        let mut attrs = BTreeMap::new();
        attrs.insert("issuer".to_string(), self.cfg.name.clone());
        attrs.insert("kind".to_string(), self.cfg.kind.as_str().to_string());
        if let Some(serde_json::Value::String(sub)) = c.get("sub") {
            attrs.insert("subject".to_string(), sub.clone());
        }
        for (attr, claim) in &self.cfg.claims {
            attrs.insert(attr.clone(), get(claim, attr)?);
        }
        let groups: Vec<String> = match self.cfg.groups_claim.as_deref().and_then(|g| c.get(g)) {
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            Some(serde_json::Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let groups = groups.into_iter().take(200).map(|g| format!("{}{g}", self.cfg.groups_prefix)).collect();
        Ok(Identity {
            kind: if self.cfg.kind == IssuerKind::Human { PrincipalKind::User } else { PrincipalKind::Workload },
            id,
            groups,
            attrs,
            issuer: self.cfg.name.clone(),
            issuer_kind: self.cfg.kind,
            exp,
            iat: num("iat"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: serde_json::Value, claims: serde_json::Value) -> String {
        format!("{}.{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()), B64URL.encode(b"sig"))
    }

    #[test]
    fn refuses_alg_tricks_before_any_key_lookup() {
        for alg in ["none", "HS256", "HS512", "None", ""] {
            let t = jwt(serde_json::json!({"alg": alg}), serde_json::json!({"iss": "x"}));
            assert!(matches!(parse(&t), Err(OidcError::UnsupportedAlg { .. })), "{alg}");
        }
        let t = jwt(serde_json::json!({"alg": "RS256", "crit": ["b64"]}), serde_json::json!({}));
        assert!(matches!(parse(&t), Err(OidcError::CriticalHeader)));
        assert!(matches!(parse("a.b"), Err(OidcError::Malformed(_))));
        assert!(matches!(parse("e30.e30."), Err(OidcError::Malformed(_))));
    }

    fn issuer(kind: IssuerKind, claims: &[(&str, &str)]) -> Issuer {
        let cfg = OidcIssuer {
            name: "k8s".into(),
            issuer: "https://issuer.example".into(),
            kind,
            audiences: vec!["gocred".into()],
            client_id: None,
            scopes: vec![],
            subject_claim: "sub".into(),
            groups_claim: None,
            claims: claims.iter().map(|(a, c)| (a.to_string(), c.to_string())).collect(),
            discovery_url: "https://issuer.example/.well-known/openid-configuration".into(),
            ca_cert: None,
            leeway: Duration::from_secs(30),
            max_token_age: None,
            username_prefix: String::new(),
            groups_prefix: "k8s:".into(),
        };
        Issuer {
            http: http_client(&cfg).unwrap(),
            cfg,
            keys: RwLock::new(None),
            fetching: tokio::sync::Mutex::new(FetchState::default()),
        }
    }

    #[test]
    fn maps_kubernetes_claims_through_json_pointers() {
        let i = issuer(
            IssuerKind::Kubernetes,
            &[("namespace", "/kubernetes.io/namespace"), ("service_account", "/kubernetes.io/serviceaccount/name")],
        );
        let c = serde_json::json!({"sub": "system:serviceaccount:builds:builder", "aud": ["gocred"], "exp": 2000, "iat": 1000,
            "kubernetes.io": {"namespace": "builds", "serviceaccount": {"name": "builder"}}});
        let id = i.map_claims(c.as_object().unwrap(), 1500).unwrap();
        assert_eq!(id.kind, PrincipalKind::Workload);
        assert_eq!(id.attrs["namespace"], "builds");
        assert_eq!(id.attrs["service_account"], "builder");
        assert_eq!(id.attrs["kind"], "kubernetes");
        let mut missing = c.clone();
        missing["kubernetes.io"].as_object_mut().unwrap().remove("namespace");
        let e = i.map_claims(missing.as_object().unwrap(), 1500).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subject_token from issuer `k8s` lacks claim `/kubernetes.io/namespace` (mapped to `namespace`)"
        );
        assert!(matches!(i.map_claims(c.as_object().unwrap(), 2031), Err(OidcError::Expired { ago: 31, .. })));
        assert!(matches!(i.map_claims(c.as_object().unwrap(), 900), Err(OidcError::NotYetValid { claim: "iat", .. })));
        let mut aud = c.clone();
        aud["aud"] = serde_json::json!("other");
        assert!(matches!(i.map_claims(aud.as_object().unwrap(), 1500), Err(OidcError::WrongAudience { .. })));
        let mut noexp = c.clone();
        noexp.as_object_mut().unwrap().remove("exp");
        assert!(matches!(i.map_claims(noexp.as_object().unwrap(), 1500), Err(OidcError::NoExpiry { .. })));
    }
}
