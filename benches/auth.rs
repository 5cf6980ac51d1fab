#![allow(clippy::unwrap_used)] // bench code: a failed unwrap aborts the run
//! Authentication throughput, in process (the axum router called without a socket), on this
//! machine. Every figure is also given as a ratio to `GET /healthz` measured in the same run, so
//! numbers from noisy machines stay comparable.
//!
//!     cargo bench --bench auth            # GOCRED_BENCH_N=2000 to change the iteration count
//!
//! Rows: SSH logins (challenge + client signature + verification + policy + token), proof-verified
//! requests with a reused proof (the cached path every `go` download takes), and with a fresh
//! proof per request (signature verified every time); RFC 8693 exchanges of OIDC subject tokens
//! from an issuer served over real HTTP in this process (RS256 and EdDSA, keys fetched once and
//! cached): the same token again (verification cached, as a build pod's helper re-exchanging its
//! projected token), and a new token every time (signature checked every time).

#[path = "../tests/kit/issuer.rs"]
mod issuer;

use axum::body::Body;
use axum::http::Request;
use gocred::config::{Config, DevIdentity, Overrides};
use std::time::Instant;
use tower::ServiceExt;

fn main() {
    let n: usize = std::env::var("GOCRED_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(n));
}

async fn call(app: &axum::Router, req: Request<Body>) -> (u16, serde_json::Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let st = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (st, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
}

fn json_post(uri: &str, v: serde_json::Value) -> Request<Body> {
    Request::post(uri).header("content-type", "application/json").body(Body::from(v.to_string())).unwrap()
}

async fn run(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key_path)
        .status()
        .expect("ssh-keygen is needed for the benchmark");
    assert!(st.success());
    let pubkey = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
    let signer = gocred::client::signer::Signer::file(&key_path, false).unwrap();
    let dev = DevIdentity { user: "bench".into(), keys: vec![pubkey.trim().to_string()] };
    let mut config = Config::dev(dir.path(), &dev, &Overrides::default()).unwrap();
    config.server.tls = None;
    let issuer = Issuer::start(dir.path()).await;
    config.oidc.push(issuer.config());
    // The shipped policies: every workload may log in.
    config.policy =
        gocred::config::PolicyConfig::Dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"));
    let origin = "https://bench.gocred.test".to_string();
    let broker = gocred::server::Broker::start(config, origin.clone()).await.unwrap();
    let app = gocred::http::app(broker.clone());

    let time =
        |label: &'static str, elapsed: std::time::Duration, ops: usize| (label, ops as f64 / elapsed.as_secs_f64());
    let mut rows = Vec::new();

    // Baseline.
    let t = Instant::now();
    for _ in 0..n {
        let (st, _) = call(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
        assert_eq!(st, 200);
    }
    rows.push(time("GET /healthz (baseline)", t.elapsed(), n));

    // SSH logins.
    let logins = (n / 4).max(50);
    let mut token = String::new();
    let t = Instant::now();
    for _ in 0..logins {
        let (st, ch) = call(&app, json_post("/v1/login/ssh/challenge", serde_json::json!({"user": "bench"}))).await;
        assert_eq!(st, 200);
        let sig =
            signer.sign(gocred::proto::login::LOGIN_NAMESPACE, ch["message"].as_str().unwrap().as_bytes()).unwrap();
        let sig = gocred::proto::proof::signature_b64url(&sig).unwrap();
        let (st, body) = call(
            &app,
            json_post(
                "/v1/login/ssh",
                serde_json::json!({"user": "bench", "challenge": ch["challenge"], "signature": sig}),
            ),
        )
        .await;
        assert_eq!(st, 200, "{body}");
        token = body["access_token"].as_str().unwrap().to_string();
    }
    rows.push(time("SSH login (challenge + sign + verify + token)", t.elapsed(), logins));

    // Proof-verified requests, proof reused (cache hit).
    let now = gocred::unix_now();
    let proof = signer.proof(&token, &format!("{origin}/"), now + 600).unwrap();
    let whoami = |p: &str| {
        Request::get("/v1/whoami")
            .header("authorization", format!("Bearer {token}"))
            .header("gocred-proof", p)
            .body(Body::empty())
            .unwrap()
    };
    let t = Instant::now();
    for _ in 0..n {
        let (st, _) = call(&app, whoami(&proof)).await;
        assert_eq!(st, 200);
    }
    rows.push(time("GET /v1/whoami, token + reused proof (cached)", t.elapsed(), n));

    // Fresh proof per request (signature verified each time); proofs made before timing.
    // Ed25519 signatures are deterministic: a distinct expiry per proof makes each one new.
    let fresh = (n / 4).clamp(50, 500);
    let proofs: Vec<String> =
        (0..fresh).map(|i| signer.proof(&token, &format!("{origin}/"), now + 60 + i as u64).unwrap()).collect();
    let t = Instant::now();
    for p in &proofs {
        let (st, _) = call(&app, whoami(p)).await;
        assert_eq!(st, 200);
    }
    rows.push(time("GET /v1/whoami, token + fresh proof (uncached)", t.elapsed(), fresh));

    // RFC 8693 exchanges. Subject tokens are made before timing.
    let exchange = |subject: &str| {
        let form = serde_urlencoded::to_string([
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("public_key", pubkey.trim()),
        ])
        .unwrap();
        Request::post("/v1/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(form))
            .unwrap()
    };
    let same = issuer.token(false, 0);
    let (st, body) = call(&app, exchange(&same)).await;
    assert_eq!(st, 200, "{body}");
    let t = Instant::now();
    for _ in 0..n {
        let (st, _) = call(&app, exchange(&same)).await;
        assert_eq!(st, 200);
    }
    rows.push(time("POST /v1/token exchange, same subject token", t.elapsed(), n));
    for (rsa, label) in [
        (true, "POST /v1/token exchange, new RS256 token each"),
        (false, "POST /v1/token exchange, new EdDSA token each"),
    ] {
        let fresh = (n / 4).clamp(50, 500);
        let tokens: Vec<String> = (0..fresh).map(|i| issuer.token(rsa, i as u64 + 1)).collect();
        let t = Instant::now();
        for tok in &tokens {
            let (st, body) = call(&app, exchange(tok)).await;
            assert_eq!(st, 200, "{body}");
        }
        rows.push(time(label, t.elapsed(), fresh));
    }
    assert_eq!(issuer.jwks_fetches(), 1, "the key set was fetched once and cached");

    let base = rows[0].1;
    println!(
        "gocred auth benchmark (in-process router, {} cores, n={n})",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("{:<52} {:>12} {:>10}", "operation", "ops/s", "vs healthz");
    for (label, ops) in &rows {
        println!("{label:<52} {ops:>12.0} {:>9.3}x", ops / base);
    }
}

/// The kit's in-process issuer (RSA + Ed25519), with the bench's Kubernetes-style tokens.
struct Issuer(issuer::TestIssuer);

impl Issuer {
    async fn start(dir: &std::path::Path) -> Issuer {
        Issuer(issuer::TestIssuer::start_with_rsa(dir).await)
    }

    fn config(&self) -> gocred::config::OidcIssuer {
        gocred::config::OidcIssuer {
            name: "bench-k8s".into(),
            issuer: self.0.url.clone(),
            kind: gocred::config::IssuerKind::Kubernetes,
            audiences: vec!["gocred".into()],
            client_id: None,
            scopes: Vec::new(),
            subject_claim: "sub".into(),
            groups_claim: None,
            claims: [
                ("namespace".to_string(), "/kubernetes.io/namespace".to_string()),
                ("service_account".to_string(), "/kubernetes.io/serviceaccount/name".to_string()),
            ]
            .into(),
            discovery_url: format!("{}/.well-known/openid-configuration", self.0.url),
            ca_cert: None,
            leeway: std::time::Duration::from_secs(30),
            max_token_age: None,
            username_prefix: String::new(),
            groups_prefix: "bench-k8s:".into(),
        }
    }

    fn jwks_fetches(&self) -> usize {
        self.0.jwks_fetches()
    }

    /// A Kubernetes-style service-account token; `i` makes it unique.
    fn token(&self, rsa: bool, i: u64) -> String {
        let now = gocred::unix_now();
        let claims = serde_json::json!({
            "iss": self.0.url, "aud": ["gocred"], "sub": format!("system:serviceaccount:builds:builder-{i}"),
            "iat": now, "exp": now + 600 + i,
            "kubernetes.io": {"namespace": "builds", "serviceaccount": {"name": "builder"}},
        });
        if rsa {
            self.0.sign_rs256(claims)
        } else {
            let header = serde_json::json!({"alg": "EdDSA", "kid": self.0.kid, "typ": "JWT"});
            self.0.sign_with(header, claims, None)
        }
    }
}
