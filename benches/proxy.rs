#![allow(clippy::unwrap_used)] // bench code: a failed unwrap aborts the run
//! Proxy overhead: the same GOPROXY requests sent directly to an upstream (with its own bearer
//! credential) and through gocred (token + proof in, upstream credential injected, streamed
//! back), in one run, over loopback. Reports requests/s for a small `.info` and MB/s for a
//! 16 MiB `.zip`, and the through/direct ratio.
//!
//!     cargo bench --bench proxy          # GOCRED_BENCH_N=300 small requests, 8 large ones
//!
//! The upstream is `tests/peers/git_http_server.py` (Python's threading HTTP server), so the
//! direct numbers are that server's; the ratio is what gocred adds on top.

use gocred::config::{Config, DevIdentity, Overrides, Upstream, UpstreamKind, UpstreamMode};
use gocred::secrets::{Cas, SecretData};
use std::io::BufRead;
use std::time::{Duration, Instant};

fn main() {
    let n: usize = std::env::var("GOCRED_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(run(n));
}

async fn run(n: usize) {
    gocred::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Upstream GOPROXY layout.
    let v = d.join("layout/mods.bench/x/@v");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("v1.0.0.info"), r#"{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}"#).unwrap();
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(v.join("v1.0.0.zip"), &big).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut upstream = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/git_http_server.py"))
        .args(["--port", &port.to_string(), "--bearer", "bench-upstream-token", "--goproxy-root"])
        .arg(d.join("layout"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 is needed for the proxy benchmark");
    let mut line = String::new();
    std::io::BufReader::new(upstream.stdout.take().unwrap()).read_line(&mut line).unwrap();

    // Broker in process: dev config (file backend, dev policy), one goproxy upstream.
    let key_path = d.join("id_ed25519");
    assert!(
        std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key_path)
            .status()
            .unwrap()
            .success()
    );
    let pubkey = std::fs::read_to_string(d.join("id_ed25519.pub")).unwrap();
    let signer = gocred::client::signer::Signer::file(&key_path, false).unwrap();
    let dev = DevIdentity { user: "bench".into(), keys: vec![pubkey.trim().to_string()] };
    let mut config = Config::dev(d, &dev, &Overrides::default()).unwrap();
    config.server.tls = None;
    config.upstreams = vec![Upstream {
        name: "athens".into(),
        kind: UpstreamKind::Goproxy,
        hosts: vec![],
        modules: vec!["mods.bench".into()],
        url: format!("http://127.0.0.1:{port}/mod"),
        credentials: Some("upstreams/athens".into()),
        mode: UpstreamMode::Proxy,
        ca_cert: None,
        timeout: Duration::from_secs(30),
        ssh: None,
        public: false,
        mirrors: vec![],
        mirror_of: None,
        retries: 2,
        deadline: Duration::from_secs(60),
        credential_ttl: Duration::from_secs(300),
    }];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let broker = gocred::server::Broker::start(config, origin.clone()).await.unwrap();
    broker
        .store
        .put(
            "upstreams/athens",
            &SecretData::single("token", secrecy::SecretString::from("bench-upstream-token".to_string())),
            Cas::Any,
        )
        .await
        .unwrap();
    tokio::spawn(gocred::server::serve(broker, listener, std::future::pending()));

    let http = reqwest::Client::builder().tls_certs_only(Vec::new()).build().unwrap();
    // Log in (SSH) and make one proof, as a client would.
    let ch: serde_json::Value = http
        .post(format!("{origin}/v1/login/ssh/challenge"))
        .json(&serde_json::json!({"user": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = signer.sign(gocred::proto::login::LOGIN_NAMESPACE, ch["message"].as_str().unwrap().as_bytes()).unwrap();
    let login: serde_json::Value = http
        .post(format!("{origin}/v1/login/ssh"))
        .json(&serde_json::json!({"user": "bench", "challenge": ch["challenge"], "signature": gocred::proto::proof::signature_b64url(&sig).unwrap()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_string();
    let proof = signer.proof(&token, &format!("{origin}/"), gocred::unix_now() + 600).unwrap();

    let direct =
        |path: &str| http.get(format!("http://127.0.0.1:{port}/mod/{path}")).bearer_auth("bench-upstream-token");
    let through =
        |path: &str| http.get(format!("{origin}/mod/{path}")).bearer_auth(&token).header("Gocred-Proof", &proof);

    async fn fetch(req: reqwest::RequestBuilder) -> usize {
        let mut r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let mut total = 0;
        while let Some(c) = r.chunk().await.unwrap() {
            total += c.len();
        }
        total
    }
    // Warm up both paths.
    fetch(direct("mods.bench/x/@v/v1.0.0.info")).await;
    fetch(through("mods.bench/x/@v/v1.0.0.info")).await;

    let mut rows: Vec<(String, f64, f64, &str)> = Vec::new();
    for (label, path, count, unit) in [
        (".info (small)", "mods.bench/x/@v/v1.0.0.info", n, "req/s"),
        (".zip (16 MiB)", "mods.bench/x/@v/v1.0.0.zip", 8, "MB/s"),
    ] {
        let mut res = [0.0f64; 2];
        for (i, via) in ["direct", "gocred"].iter().enumerate() {
            let t = Instant::now();
            let mut bytes = 0usize;
            for _ in 0..count {
                bytes += if *via == "direct" { fetch(direct(path)).await } else { fetch(through(path)).await };
            }
            let secs = t.elapsed().as_secs_f64();
            res[i] = if unit == "req/s" { count as f64 / secs } else { bytes as f64 / 1e6 / secs };
        }
        rows.push((label.to_string(), res[0], res[1], unit));
    }
    let _ = upstream.kill();
    let _ = upstream.wait();
    println!("gocred proxy benchmark (loopback, plain HTTP both ways, 2-core machine)");
    println!("{:<16} {:>14} {:>14} {:>18}", "request", "direct", "through gocred", "gocred / direct");
    for (label, d, g, unit) in rows {
        println!("{label:<16} {:>10.1} {unit:<3} {:>10.1} {unit:<3} {:>17.3}x", d, g, g / d);
    }
}
