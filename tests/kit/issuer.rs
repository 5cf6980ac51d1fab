//! A JWT issuer in this process, for tokens real peers cannot make (a chosen `sub`, `nbf` in the
//! future, a signature by a key it does not publish, an RSA and an EdDSA key side by side): real
//! discovery + JWKS over HTTP on loopback, counting JWKS fetches. Shared by the e2e tests and
//! the benchmarks (`#[path]`-included), so it depends on nothing else in the kit.

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub struct TestIssuer {
    pub url: String,
    key: ed25519_dalek::SigningKey,
    pub kid: String,
    rsa: Option<openidconnect::core::CoreRsaPrivateSigningKey>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestIssuer {
    /// An issuer with one Ed25519 key (`kid` "test-key-1").
    pub async fn start() -> TestIssuer {
        Self::serve(None).await
    }

    /// Also an RSA-2048 key (`kid` "rsa-1", made by real `openssl` in `dir`).
    pub async fn start_with_rsa(dir: &std::path::Path) -> TestIssuer {
        let pem_path = dir.join("issuer-rsa.pem");
        let st = std::process::Command::new("openssl")
            .args(["genrsa", "-traditional", "-out"])
            .arg(&pem_path)
            .arg("2048")
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl is needed");
        assert!(st.success(), "openssl genrsa failed");
        let pem = std::fs::read_to_string(&pem_path).expect("read RSA key");
        let rsa = openidconnect::core::CoreRsaPrivateSigningKey::from_pem(
            &pem,
            Some(openidconnect::JsonWebKeyId::new("rsa-1".into())),
        )
        .expect("RSA key");
        Self::serve(Some(rsa)).await
    }

    async fn serve(rsa: Option<openidconnect::core::CoreRsaPrivateSigningKey>) -> TestIssuer {
        use openidconnect::PrivateSigningKey as _;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("random");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let kid = "test-key-1".to_string();
        let mut keys = vec![serde_json::json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": b64url(key.verifying_key().as_bytes()),
        })];
        if let Some(r) = &rsa {
            keys.push(serde_json::to_value(r.as_verification_key()).expect("jwk"));
        }
        let jwks = serde_json::json!({ "keys": keys });
        let discovery = serde_json::json!({
            "issuer": url, "jwks_uri": format!("{url}/jwks"),
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA", "RS256"],
        });
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async move { axum::Json(jwks) }
                }),
            );
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("issuer serves");
        });
        TestIssuer { url, key, kid, rsa, fetches, task }
    }

    /// How often the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Sign `claims` with `header` (by this issuer's Ed25519 key, or by `other` when given).
    pub fn sign_with(
        &self,
        header: serde_json::Value,
        claims: serde_json::Value,
        other: Option<&ed25519_dalek::SigningKey>,
    ) -> String {
        use ed25519_dalek::Signer;
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = other.unwrap_or(&self.key).sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig.to_bytes()))
    }

    /// Sign `claims` RS256 with the RSA key (`kid` "rsa-1"); needs [`TestIssuer::start_with_rsa`].
    pub fn sign_rs256(&self, claims: serde_json::Value) -> String {
        use openidconnect::PrivateSigningKey as _;
        let header = serde_json::json!({"alg": "RS256", "kid": "rsa-1", "typ": "JWT"});
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let rsa = self.rsa.as_ref().expect("issuer started without an RSA key");
        let sig = rsa
            .sign(&openidconnect::core::CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256, input.as_bytes())
            .expect("RSA signature");
        format!("{input}.{}", b64url(&sig))
    }

    /// A token with standard claims (`iss`, `aud = gocred`, `iat`, `exp` in 10 min) plus `extra`.
    pub fn token(&self, extra: serde_json::Value) -> String {
        let now = unix_now();
        let mut claims = serde_json::json!({"iss": self.url, "aud": "gocred", "iat": now, "exp": now + 600});
        for (k, v) in extra.as_object().expect("extra claims are an object") {
            claims[k] = v.clone();
        }
        self.sign_with(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}), claims, None)
    }
}
