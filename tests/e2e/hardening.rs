//! Defects found by trying gocred as a new user and in a security review (issue 10), each
//! against the real broker: one `forbid` on every route and spelling, denials that name the
//! policy, response header hygiene, a quiet idle broker, connection limits and timeouts, rate
//! limits behind a trusted proxy.

use crate::harness::*;
use crate::proxy::{alice_auth, env_refs, go_env, go_get, world_full};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FORBID: &str = "@id(\"acme-secret-off-limits\")\n\
forbid (principal, action in [Action::\"download\", Action::\"credentials\"], resource)\n\
when { resource.folded_path like \"git.corp.test/acme/secret*\" || resource.folded_path like \"vend.example/acme/secret*\" };\n\
@id(\"alice-acme-all\")\n\
permit (principal == User::\"alice\", action == Action::\"download\", resource)\n\
when { resource.folded_path like \"git.corp.test/acme/*\" };\n";

/// Lines of the broker's log at WARN or above.
fn loud_lines(lines: &[String]) -> Vec<String> {
    lines.iter().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).cloned().collect()
}

/// One forbid against every route × spelling; the upstream sees none of it. The broker runs with
/// `GOCRED_LOG=info` (what the Helm chart sets) and, idle with a healthy Vault, logs nothing
/// at WARN or above. Denials name the deciding policy; upstream response headers are filtered.
#[tokio::test(flavor = "multi_thread")]
async fn one_forbid_holds_on_every_route_and_spelling_and_says_which_policy() {
    let mut w = world_full("127.0.0.1:0", "", "", &[("GOCRED_LOG", "info")]).await;
    // (4) Idle for a few revocation-sync rounds (every 2 s) with a fresh, healthy OpenBao.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let loud = loud_lines(&w.broker.proc.stderr());
    assert!(loud.is_empty(), "an idle broker logged at WARN or above: {loud:#?}");

    std::fs::write(w.dir.path().join("policies/forbid.cedar"), FORBID).unwrap();
    std::fs::write(
        w.dir.path().join("policies/vend.cedar"),
        "@id(\"alice-vend-all\")\npermit (principal == User::\"alice\", action == Action::\"credentials\", resource)\n\
         when { resource.folded_path like \"vend.example/acme/*\" };\n",
    )
    .unwrap();
    w.broker.proc.signal("HUP");
    w.broker.proc.wait_stderr("policies reloaded", Duration::from_secs(10));

    let (token, proof) = alice_auth(&w);
    let before = w.upstream.stderr().len();
    let c = client(Some(&w.ca));
    let h1 = reqwest::Client::builder()
        .http1_only()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&std::fs::read(&w.ca).unwrap()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let git = "info/refs?service=git-upload-pack";
    let mut cases: Vec<(String, Option<&str>)> = Vec::new();
    for repo in
        ["acme/secret.git", "acme/secret", "acme/SECRET.git", "Acme/Secret.GIT", "acme/secret.GIT", "acme/secret-2"]
    {
        for host in ["git.corp.test", "GIT.Corp.Test"] {
            cases.push((format!("/git/{host}/{repo}/{git}"), None));
        }
        // Host-routed smart HTTP and go-get, the Host header naming the git host.
        cases.push((format!("/{repo}/{git}"), Some("git.corp.test")));
        cases.push((format!("/{repo}/{git}"), Some("GIT.CORP.TEST")));
        cases.push((format!("/{repo}?go-get=1"), Some("git.corp.test")));
        cases.push((format!("/{repo}/sub/pkg?go-get=1"), Some("Git.Corp.Test")));
    }
    for module in [
        "git.corp.test/acme/secret",
        "git.corp.test/acme/!secret",
        "git.corp.test/!acme/!s!e!c!r!e!t.git",
        "git.corp.test/acme/secret.git",
        "git.corp.test/acme/secret.!g!i!t",
    ] {
        for tail in ["@v/list", "@v/v1.0.0.info", "@v/v1.0.0.zip", "@latest"] {
            cases.push((format!("/mod/{module}/{tail}"), None));
        }
    }
    for (path, host) in &cases {
        let mut req = match host {
            Some(h) => h1.get(format!("{}{path}", w.broker.url)).header("Host", *h),
            None => c.get(format!("{}{path}", w.broker.url)),
        };
        req = req.bearer_auth(&token).header("Gocred-Proof", &proof);
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "{path} (Host {host:?}): {body}");
        assert!(
            body.contains("forbidden by policy acme-secret-off-limits: download of ")
                && body.contains("for user:alice"),
            "{path}: {body}"
        );
    }
    for url in [
        "https://vend.example/acme/SECRET",
        "https://VEND.EXAMPLE/acme/secret",
        "https://vend.example/acme/secret.GIT",
        "https://vend.example/Acme/Secret.git",
        "https://Vend.Example/acme/secret/sub",
    ] {
        let r = c
            .get(format!("{}/v1/credentials", w.broker.url))
            .query(&[("url", url)])
            .bearer_auth(&token)
            .header("Gocred-Proof", &proof)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 403, "{url}: {body}");
        assert!(!body.contains("ghs_vended_secret"), "{url}: {body}");
        assert!(body.contains("forbidden by policy acme-secret-off-limits: credentials of "), "{url}: {body}");
    }
    // The vend permit still works for what is not forbidden.
    let r = c
        .get(format!("{}/v1/credentials", w.broker.url))
        .query(&[("url", "https://vend.example/acme/tool")])
        .bearer_auth(&token)
        .header("Gocred-Proof", &proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let reached: Vec<String> = w.upstream.stderr()[before..].to_vec();
    assert!(reached.is_empty(), "the upstream saw forbidden requests: {reached:#?}");

    // (5) The go command shows the user the plain reason, naming policy, action, module and
    // principal.
    let me = gocred_bin().display().to_string();
    let env =
        go_env(&w, "cache-forbid", &[("GOPROXY", format!("{}/mod", w.broker.url)), ("GOAUTH", format!("{me} goauth"))]);
    let (ok, out, _) = go_get(&w, "forbid", &env, "git.corp.test/acme/secret.git");
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "gocred: forbidden by policy acme-secret-off-limits: download of git.corp.test/acme/secret.git for user:alice (request id "
        ),
        "{out}"
    );

    // (13) Response headers: only the allowlist comes back from an upstream.
    for (path, host) in [
        ("/mod/git.corp.test/acme/lib.git/@v/list".to_string(), None),
        (format!("/git/git.corp.test/acme/lib.git/{git}"), None),
        (format!("/acme/lib.git/{git}"), Some("git.corp.test")),
    ] {
        let mut req = match host {
            Some(h) => h1.get(format!("{}{path}", w.broker.url)).header("Host", h),
            None => c.get(format!("{}{path}", w.broker.url)),
        };
        req = req.bearer_auth(&token).header("Gocred-Proof", &proof);
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        for bad in ["x-upstream-session", "proxy-authenticate", "authorization", "set-cookie", "www-authenticate"] {
            assert!(
                r.headers().get(bad).is_none(),
                "{path}: upstream header {bad} reached the caller: {:?}",
                r.headers()
            );
        }
        assert!(r.headers().get("content-type").is_some(), "{path}");
        let body = r.bytes().await.unwrap();
        assert!(!body.is_empty());
    }
    let loud = loud_lines(&w.broker.proc.stderr());
    assert!(loud.iter().all(|l| !l.contains("ERROR")), "denials are not errors: {loud:#?}");
}

/// A blocking TCP connection to `addr` from source address `src` (loopback has all of
/// 127.0.0.0/8, so each group of connections is its own client).
async fn connect_from(src: &str, addr: SocketAddr) -> std::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    let stream = s.connect(addr).await.unwrap();
    let std = stream.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std
}

fn tls_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Block until the peer closes `s` (or it errors); how long that took, or `None` after `max`.
fn wait_closed(s: &mut impl Read, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        if started.elapsed() > max {
            return None;
        }
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(_) => return Some(started.elapsed()),
        }
    }
}

/// (6) Many idle and slow connections: the per-client cap refuses the excess at once, a TLS
/// handshake or request head that does not arrive in time is cut, an idle keep-alive connection
/// is closed — and meanwhile a real login and a real download succeed.
#[tokio::test(flavor = "multi_thread")]
async fn idle_and_slow_connections_are_closed_in_time_while_logins_and_downloads_succeed() {
    let w = world_full(
        "127.0.0.1:0",
        "header_read_timeout = \"1s\"\nidle_timeout = \"2s\"\nmax_connections_per_client = 40",
        "",
        &[("GOCRED_LOG", "info")],
    )
    .await;
    let addr: SocketAddr = w.broker.url.trim_start_matches("https://").parse().unwrap();
    let cfg = tls_config(&w.ca);

    // A flood of silent TCP connections from one client.
    let mut flood = Vec::new();
    for _ in 0..120 {
        flood.push(connect_from("127.0.0.9", addr).await);
    }
    let flood_t = std::thread::spawn(move || {
        flood
            .into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                wait_closed(&mut s, Duration::from_secs(6))
            })
            .collect::<Vec<_>>()
    });
    // Slowloris: TLS done, then a request head trickling in a byte every 100 ms.
    let mut slow = Vec::new();
    for _ in 0..5 {
        slow.push(connect_from("127.0.0.10", addr).await);
    }
    let slow_t = {
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            let handles: Vec<_> = slow
                .into_iter()
                .map(|tcp| {
                    let cfg = cfg.clone();
                    std::thread::spawn(move || {
                        let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, tcp);
                        let started = Instant::now();
                        let head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
                        for b in head {
                            if tls.write_all(&[*b]).and_then(|_| tls.flush()).is_err() {
                                return Some(started.elapsed());
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        None
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect::<Vec<_>>()
        })
    };
    // Idle after TLS and one complete request (keep-alive).
    let idle_tcp = connect_from("127.0.0.11", addr).await;
    let idle_t = {
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            let conn = rustls::ClientConnection::new(cfg, "127.0.0.1".try_into().unwrap()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, idle_tcp);
            tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
            tls.sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let started = Instant::now();
            while !String::from_utf8_lossy(&got).contains("\"ok\"") && started.elapsed() < Duration::from_secs(5) {
                match tls.read(&mut buf) {
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(e) => panic!("keep-alive request failed: {e}"),
                }
            }
            assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
            wait_closed(&mut tls, Duration::from_secs(8))
        })
    };

    // Meanwhile: a real login and a real download, from another client address.
    let started = Instant::now();
    let me = gocred_bin().display().to_string();
    let env =
        go_env(&w, "cache-dos", &[("GOPROXY", format!("{}/mod", w.broker.url)), ("GOAUTH", format!("{me} goauth"))]);
    let (code, out, err) =
        Gocred::run(&["login", "--ssh", w.key.to_str().unwrap(), "--broker", &w.broker.url], &env_refs(&env));
    assert_eq!(code, 0, "login while flooded: {out}{err}");
    let (ok, out, _) = go_get(&w, "dos", &env, "git.corp.test/acme/lib.git");
    assert!(ok, "download while flooded: {out}");
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());

    let flood = flood_t.join().unwrap();
    let refused = flood.iter().filter(|t| t.is_some_and(|t| t < Duration::from_millis(500))).count();
    assert!(refused >= 80, "the per-client cap refuses the excess at once: {flood:?}");
    assert!(
        flood.iter().all(|t| t.is_some_and(|t| t < Duration::from_secs(4))),
        "silent connections are cut after the handshake timeout: {flood:?}"
    );
    let slow = slow_t.join().unwrap();
    assert!(
        slow.iter().all(|t| t.is_some_and(|t| t < Duration::from_secs(4))),
        "slowloris request heads are cut after header_read_timeout: {slow:?}"
    );
    let idle = idle_t.join().unwrap();
    // HTTP/1 times the next request head from the end of the previous response, so an idle
    // keep-alive connection goes after header_read_timeout; idle_timeout bounds the rest
    // (stalled transfers, HTTP/2).
    assert!(
        idle.is_some_and(|t| t >= Duration::from_millis(500) && t < Duration::from_secs(5)),
        "an idle keep-alive connection is closed in time: {idle:?}"
    );
    let loud = loud_lines(&w.broker.proc.stderr());
    assert!(loud.iter().all(|l| !l.contains("ERROR")), "{loud:#?}");
}

/// (9, 10) Login limits per client — behind a trusted proxy per forwarded client, never by a
/// header from anyone else — and per-principal limits on authenticated routes and revocations.
#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_follow_trusted_proxies_principals_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("authorized_keys")).unwrap();
    ssh_keygen(&d.join("alice"), "ed25519", "");
    std::fs::copy(d.join("alice.pub"), d.join("authorized_keys/alice")).unwrap();
    let pol = d.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    for e in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pol.join(e.file_name())).unwrap();
    }
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.2\"]\n\
         [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n\
         [ssh]\nauthorized_keys = \"authorized_keys\"\n[policy]\ndir = \"policies\"\n[audit]\npath = \"audit.log\"\n\
         [limits]\nlogin_per_second = 0.001\nlogin_burst = 4\nrequests_per_second = 0.001\nrequests_burst = 6\nrevocations_per_minute = 2\n",
    )
    .unwrap();
    let g = Gocred::start(
        &["serve", "--config", cfg.to_str().unwrap()],
        &[("GOCRED_FILE_KEY", "CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=")],
    );
    let from = |src: &str| {
        reqwest::Client::builder()
            .local_address(src.parse::<std::net::IpAddr>().unwrap())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap()
    };
    let challenge = |c: reqwest::Client, xff: Option<&'static str>| {
        let url = format!("{}/v1/login/ssh/challenge", g.url);
        async move {
            let mut r = c.post(url).json(&serde_json::json!({"user": "alice"}));
            if let Some(x) = xff {
                r = r.header("X-Forwarded-For", x);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    // Alice logs in from 127.0.0.1 (a challenge and a login: 2 of its 4).
    let c1 = from("127.0.0.1");
    let ch: serde_json::Value = c1
        .post(format!("{}/v1/login/ssh/challenge", g.url))
        .json(&serde_json::json!({"user": "alice"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sig = ssh_sign(&d.join("alice"), "gocred-login@v1", ch["message"].as_str().unwrap());
    let r = c1
        .post(format!("{}/v1/login/ssh", g.url))
        .json(&serde_json::json!({"user": "alice", "challenge": ch["challenge"], "signature": sig}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    // 127.0.0.1 is not a trusted proxy: its X-Forwarded-For is ignored, one bucket.
    assert_eq!(challenge(c1.clone(), Some("198.51.100.1")).await, 200);
    assert_eq!(challenge(c1.clone(), Some("198.51.100.2")).await, 200);
    assert_eq!(challenge(c1.clone(), Some("198.51.100.3")).await, 429, "a forged X-Forwarded-For buys nothing");
    // 127.0.0.2 is a trusted proxy: each forwarded client has its own bucket.
    let p = from("127.0.0.2");
    for _ in 0..4 {
        assert_eq!(challenge(p.clone(), Some("203.0.113.7")).await, 200);
    }
    assert_eq!(challenge(p.clone(), Some("203.0.113.7")).await, 429);
    assert_eq!(challenge(p.clone(), Some("203.0.113.8")).await, 200, "another user behind the same ingress");
    assert_eq!(challenge(p.clone(), Some("6.6.6.6, 203.0.113.7")).await, 429, "the right-most untrusted entry counts");

    // Per principal on authenticated routes (proofs not needed to show it: whoami with token
    // and proof).
    let key = d.join("alice");
    let prefix = format!("{}/", g.url);
    let exp = now() + 300;
    let msg = gocred::proto::proof::proof_message(&token, &prefix, exp);
    let sig = gocred::auth::sshsig::parse(&ssh_sign(&key, "gocred-proof@v1", &msg)).unwrap();
    let proof = gocred::proto::proof::encode(exp, &prefix, &gocred::proto::proof::signature_b64url(&sig).unwrap());
    let authed = |c: &reqwest::Client, m: reqwest::Method, path: &str| {
        c.request(m, format!("{}{path}", g.url)).bearer_auth(&token).header("Gocred-Proof", &proof)
    };
    // Revocations: 2 per minute (an unknown token is a no-op, still counted).
    for _ in 0..2 {
        let r = authed(&c1, reqwest::Method::POST, "/v1/revoke").json(&serde_json::json!({"token": "x.y.z"})).send();
        assert_eq!(r.await.unwrap().status(), 200);
    }
    let r = authed(&c1, reqwest::Method::POST, "/v1/revoke").json(&serde_json::json!({"token": "x.y.z"})).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("too many revocations by user:alice"));
    // 3 of 6 used by the revocations; 3 whoamis pass, the next is refused, from any address.
    for _ in 0..3 {
        assert_eq!(authed(&c1, reqwest::Method::GET, "/v1/whoami").send().await.unwrap().status(), 200);
    }
    let r = authed(&from("127.0.0.3"), reqwest::Method::GET, "/v1/whoami").send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("too many requests from user:alice"));
}

/// (3) `gocred netrc --out FILE` over files that used to shadow or swallow its entries: real
/// curl (`--netrc-file`) and real go (`GOAUTH=netrc`) must then send gocred's credential.
#[tokio::test(flavor = "multi_thread")]
async fn netrc_out_writes_entries_curl_and_go_actually_use() {
    let w = world_full("127.0.0.1:0", "", "", &[]).await;
    let hp = w.broker.url.trim_start_matches("https://").to_string();
    let host = hp.split(':').next().unwrap().to_string();
    let cases = [
        ("unterminated macdef at the end", "machine other.example login x password y\nmacdef init\nls\n".to_string()),
        ("default before", "default login anonymous password anon\n".to_string()),
        (
            "stale entry on a multi-entry line",
            format!("machine other.example login x password y machine {hp} login old password stale\n"),
        ),
        ("stale entry for the bare host", format!("machine {host} login old password stale\n")),
        ("commented-out stale entry", format!("# old: machine {hp} login old password stale\n")),
    ];
    for (i, (name, text)) in cases.iter().enumerate() {
        let netrc = w.dir.path().join(format!("netrc-{i}"));
        std::fs::write(&netrc, text).unwrap();
        let env = go_env(&w, &format!("cache-netrc-{i}"), &[]);
        let (code, out, err) = Gocred::run(&["netrc", "--out", netrc.to_str().unwrap()], &env_refs(&env));
        assert_eq!(code, 0, "{name}: {out}{err}");
        let written = std::fs::read_to_string(&netrc).unwrap();
        assert!(!written.contains("stale"), "{name}: {written}");
        // curl: the whoami route needs the token and the proof, here as the Basic password.
        let curl = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--netrc-file"])
            .arg(&netrc)
            .arg("--cacert")
            .arg(&w.ca)
            .arg(format!("{}/v1/whoami", w.broker.url))
            .output()
            .expect("curl is needed for this test");
        assert_eq!(String::from_utf8_lossy(&curl.stdout), "200", "{name}: curl did not send gocred's entry\n{written}");
        // go: GOAUTH=netrc reads NETRC.
        let genv = go_env(
            &w,
            &format!("cache-netrc-go-{i}"),
            &[
                ("GOPROXY", format!("{}/mod", w.broker.url)),
                ("GOAUTH", "netrc".into()),
                ("NETRC", netrc.display().to_string()),
            ],
        );
        let (ok, out, _) = go_get(&w, &format!("netrc-{i}"), &genv, "git.corp.test/acme/lib.git");
        assert!(ok, "{name}: go did not send gocred's entry: {out}\n{written}");
    }
    // `gocred netrc | head -1`: a reader that went away is not a crash (stdout's read end is
    // closed before gocred writes).
    let env = go_env(&w, "cache-netrc-pipe", &[]);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = gocred_cmd(&["netrc"], &env_refs(&env)).stdin(Stdio::null()).stdout(writer).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "gocred netrc panicked on a closed pipe: {err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

/// (12) A token carrying CR/LF (from a tampered session file or a broker answer) never reaches
/// the line protocols: the helpers fail with one line and print nothing on stdout.
#[tokio::test(flavor = "multi_thread")]
async fn helpers_refuse_tokens_outside_their_alphabet() {
    let w = world_full("127.0.0.1:0", "", "", &[]).await;
    let real = w.dir.path().join("home/.cache/gocred/session.json");
    let mut session: serde_json::Value = serde_json::from_slice(&std::fs::read(&real).unwrap()).unwrap();
    let token = session["token"].as_str().unwrap().to_string();
    for (i, evil) in [
        format!("{token}\r\nAuthorization: Bearer attacker"),
        format!("{token}\nusername=attacker"),
        format!("{token} x"),
    ]
    .iter()
    .enumerate()
    {
        session["token"] = serde_json::Value::String(evil.clone());
        session["proof"] = serde_json::Value::Null;
        let cache = w.dir.path().join(format!("evil-cache-{i}"));
        std::fs::create_dir_all(cache.join("gocred")).unwrap();
        gocred::fsutil::write_private_atomic(&cache.join("gocred/session.json"), session.to_string().as_bytes())
            .unwrap();
        let env = go_env(&w, "unused", &[("XDG_CACHE_HOME", cache.display().to_string())]);
        let e = env_refs(&env);
        for args in [
            &["goauth"][..],
            &["goauth", &format!("{}/mod/x", w.broker.url)][..],
            &["credential", "get"][..],
            &["token"][..],
        ] {
            let mut cmd = gocred_cmd(args, &e);
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let hp = w.broker.url.trim_start_matches("https://").to_string();
            child.stdin.take().unwrap().write_all(format!("protocol=https\nhost={hp}\n\n").as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} accepted a malformed token: {stdout}");
            assert!(stdout.is_empty(), "{args:?} printed: {stdout:?}");
            assert!(stderr.contains("malformed token") && !stderr.contains("attacker"), "{args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        }
    }
}
