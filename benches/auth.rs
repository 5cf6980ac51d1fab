//! Authentication throughput, in process (the axum router called without a socket), on this
//! machine. Every figure is also given as a ratio to `GET /healthz` measured in the same run, so
//! numbers from noisy machines stay comparable.
//!
//!     cargo bench --bench auth            # GOCRED_BENCH_N=2000 to change the iteration count
//!
//! Rows: SSH logins (challenge + client signature + verification + policy + token), proof-verified
//! requests with a reused proof (the cached path every `go` download takes), and with a fresh
//! proof per request (signature verified every time).

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
    let origin = "https://bench.gocred.test".to_string();
    let broker = gocred::server::Broker::start(config, origin.clone()).await.unwrap();
    let app = gocred::http::app(broker.app_state());

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
        let sig = signer.sign(gocred::auth::ssh::LOGIN_NAMESPACE, ch["message"].as_str().unwrap().as_bytes()).unwrap();
        let sig = gocred::auth::sshsig::to_b64url(&sig).unwrap();
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
