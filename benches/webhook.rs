#![allow(clippy::unwrap_used)] // bench code: a failed unwrap aborts the run
//! Admission webhook latency and throughput over real HTTPS: the broker (in this process, TLS
//! with the dev CA, `[webhook]` enabled) answers `POST /v1/admission` with the
//! `annotated-multi` fixture (a Job pod: two containers, two init containers, existing env and
//! volumes; the patch has 35 operations) and the `not-annotated` fixture (no patch), and
//! `GET /healthz` as the baseline, all over one kept-alive connection (HTTP/2, as negotiated) from
//! a client in the same process but on its own single-threaded runtime.
//!
//!     cargo bench --bench webhook        # GOCRED_BENCH_SECS=10 per fixed-rate row, GOCRED_BENCH_N=5000 per max-rate row
//!
//! Fixed rate: one request every 2 ms (500/s), open loop: each request is sent at its slot (or
//! at once when the previous answer came late); latency is measured from send to the last body
//! byte. Max rate: the next request is sent as soon as the previous answer arrived. The three
//! kinds of request take turns in blocks (1 s, or n/10 requests), so machine noise is shared.

use gocred::config::{Config, DevIdentity, Overrides, TlsFiles};
use std::time::{Duration, Instant};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/admission");

fn main() {
    let secs: u64 = std::env::var("GOCRED_BENCH_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let n: usize = std::env::var("GOCRED_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(5000);
    // The broker gets its own multi-threaded runtime (as in `gocred serve`); the client, like
    // kube-apiserver, is someone else: a single-threaded runtime on this thread.
    let server_rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let client_rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    client_rt.block_on(run(server_rt.handle(), secs, n));
}

struct Row {
    label: String,
    rate: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn row(label: String, mut lat: Vec<Duration>, elapsed: Duration) -> Row {
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    Row { rate: lat.len() as f64 / elapsed.as_secs_f64(), p50: q(0.50), p99: q(0.99), max: *lat.last().unwrap(), label }
}

#[derive(Clone, Copy)]
enum Req<'a> {
    Healthz,
    Review(&'a [u8]),
}

async fn once(c: &reqwest::Client, base: &str, req: Req<'_>) {
    let resp = match req {
        Req::Healthz => c.get(format!("{base}/healthz")).send().await.unwrap(),
        Req::Review(body) => c
            .post(format!("{base}/v1/admission"))
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap(),
    };
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(!body.is_empty());
}

/// Requests at a fixed offered rate for `secs` seconds.
async fn fixed_rate(
    c: &reqwest::Client,
    base: &str,
    req: Req<'_>,
    per_sec: u32,
    secs: u64,
) -> (Vec<Duration>, Duration) {
    let every = Duration::from_secs(1) / per_sec;
    let total = per_sec as u64 * secs;
    let start = tokio::time::Instant::now();
    let mut lat = Vec::with_capacity(total as usize);
    for i in 0..total {
        tokio::time::sleep_until(start + every * i as u32).await;
        let t = Instant::now();
        once(c, base, req).await;
        lat.push(t.elapsed());
    }
    (lat, start.elapsed())
}

/// `n` requests back to back.
async fn max_rate(c: &reqwest::Client, base: &str, req: Req<'_>, n: usize) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        once(c, base, req).await;
        lat.push(t.elapsed());
    }
    (lat, start.elapsed())
}

async fn run(server_rt: &tokio::runtime::Handle, secs: u64, n: usize) {
    gocred::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = gocred::tls::ensure_dev_ca(&d.join("tls")).unwrap();
    let dev = DevIdentity { user: "bench".into(), keys: Vec::new() };
    let mut config = Config::dev(d, &dev, &Overrides::default()).unwrap();
    config.server.tls = Some(TlsFiles { cert: tls.cert.clone(), key: tls.key.clone() });
    let mut settings = gocred::webhook::InjectSettings::new(
        "ghcr.io/gocred/gocred:0.1.0",
        "https://gocred.gocred.svc:8443",
        vec!["git.corp.example/*".into(), "mods.corp.example".into()],
    );
    settings.ca_pem = Some(std::fs::read_to_string(&tls.ca_cert).unwrap());
    config.webhook = Some(settings);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let broker = server_rt.spawn(gocred::server::Broker::start(config, base.clone())).await.unwrap().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server_rt.spawn(gocred::server::serve(broker, listener, async move {
        let _ = stop_rx.await;
    }));

    // One connection for everything: the baseline pays the same TLS session and socket.
    let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(&tls.ca_cert).unwrap()).unwrap();
    let c = reqwest::Client::builder()
        .tls_certs_only(certs)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let inject = std::fs::read(format!("{FIXTURES}/annotated-multi.json")).unwrap();
    let skip = std::fs::read(format!("{FIXTURES}/not-annotated.json")).unwrap();
    // The review really patches (and the skip really does not).
    let out: serde_json::Value =
        c.post(format!("{base}/v1/admission")).body(inject.clone()).send().await.unwrap().json().await.unwrap();
    use base64::Engine;
    let patch = base64::engine::general_purpose::STANDARD.decode(out["response"]["patch"].as_str().unwrap()).unwrap();
    let ops = serde_json::from_slice::<serde_json::Value>(&patch).unwrap().as_array().unwrap().len();
    let out: serde_json::Value =
        c.post(format!("{base}/v1/admission")).body(skip.clone()).send().await.unwrap().json().await.unwrap();
    assert!(out["response"].get("patch").is_none(), "{out}");

    // The pure function alone (no HTTP, no TLS), for the share of the latency that is the review.
    let settings = gocred::webhook::InjectSettings {
        ca_pem: Some(std::fs::read_to_string(&tls.ca_cert).unwrap()),
        ..gocred::webhook::InjectSettings::new(
            "ghcr.io/gocred/gocred:0.1.0",
            "https://gocred.gocred.svc:8443",
            vec!["git.corp.example/*".into(), "mods.corp.example".into()],
        )
    };
    let mut pure = Vec::new();
    for (label, body) in [("injected", &inject), ("not annotated", &skip)] {
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            std::hint::black_box(gocred::webhook::review(std::hint::black_box(body), &settings).unwrap());
            lat.push(t.elapsed());
        }
        let total: Duration = lat.iter().sum();
        pure.push(row(format!("webhook::review() in process, pod {label}"), lat, total));
    }

    let kinds: [(&str, Req); 3] = [
        ("GET /healthz (baseline)", Req::Healthz),
        ("POST /v1/admission, pod injected", Req::Review(&inject)),
        ("POST /v1/admission, pod not annotated (no patch)", Req::Review(&skip)),
    ];
    for (_, req) in kinds {
        max_rate(&c, &base, req, 300).await; // warm-up
    }
    // The kinds take turns in one-second (fixed rate) or n/10-request (max rate) blocks, so that
    // a noisy moment on the machine does not land on one row only.
    let mut fixed: Vec<(Vec<Duration>, Duration)> = kinds.iter().map(|_| (Vec::new(), Duration::ZERO)).collect();
    let mut max: Vec<(Vec<Duration>, Duration)> = kinds.iter().map(|_| (Vec::new(), Duration::ZERO)).collect();
    for _ in 0..secs {
        for (k, (_, req)) in kinds.iter().enumerate() {
            let (lat, el) = fixed_rate(&c, &base, *req, 500, 1).await;
            fixed[k].0.extend(lat);
            fixed[k].1 += el;
        }
    }
    for _ in 0..10 {
        for (k, (_, req)) in kinds.iter().enumerate() {
            let (lat, el) = max_rate(&c, &base, *req, n.div_ceil(10)).await;
            max[k].0.extend(lat);
            max[k].1 += el;
        }
    }
    let mut rows = Vec::new();
    for (((label, _), f), m) in kinds.iter().zip(fixed).zip(max) {
        rows.push(row(format!("{label} @ 500/s"), f.0, f.1));
        rows.push(row(format!("{label} @ max"), m.0, m.1));
    }

    // The broker's own view (request in → response out, without the client and the network):
    // the share of requests answered within 1 ms and 2.5 ms (its histogram buckets).
    let metrics = c.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let bucket = |route: &str, le: &str| -> f64 {
        let prefix = format!("gocred_http_request_duration_seconds_bucket{{route=\"{route}\",method=");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix) && l.contains("status=\"200\"") && l.contains(&format!("le=\"{le}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let server_side: Vec<String> = ["/healthz", "/v1/admission"]
        .iter()
        .map(|r| {
            let all = bucket(r, "+Inf");
            format!(
                "{r}: {:.2}% within 1 ms, {:.2}% within 2.5 ms",
                100.0 * bucket(r, "0.001") / all,
                100.0 * bucket(r, "0.0025") / all
            )
        })
        .collect();

    let _ = stop_tx.send(());
    let _ = server.await;
    println!(
        "gocred webhook benchmark (HTTPS, one connection, client on its own thread in process, {} cores, {secs}s per fixed-rate row, n={n} per max row)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!("injected pod: {} bytes in, a {ops}-operation patch out", inject.len());
    for r in &pure {
        println!(
            "{:<58} {:>8.0} {:>8.3} {:>8.3} {:>8.3}",
            r.label,
            r.rate,
            r.p50.as_secs_f64() * 1000.0,
            r.p99.as_secs_f64() * 1000.0,
            r.max.as_secs_f64() * 1000.0
        );
    }
    println!("{:<58} {:>8} {:>8} {:>8} {:>8} {:>12}", "request", "req/s", "p50 ms", "p99 ms", "max ms", "vs healthz");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (i, r) in rows.iter().enumerate() {
        // Fixed rate: the p99 latency relative to the baseline's; max rate: the throughput.
        let b = &rows[i % 2];
        let ratio = if i % 2 == 0 {
            format!("p99 {:.2}x", r.p99.as_secs_f64() / b.p99.as_secs_f64())
        } else {
            format!("{:.3}x", r.rate / b.rate)
        };
        println!(
            "{:<58} {:>8.0} {:>8.3} {:>8.3} {:>8.3} {:>12}",
            r.label,
            r.rate,
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            ratio
        );
    }
    println!("server side (broker metrics, all rows): {}", server_side.join("; "));
}
