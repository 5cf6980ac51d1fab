//! Foundation: `serve --dev`, config validation, the file and Vault secrets backends, shared
//! signing keys, readiness, metrics, the peer installer.

use crate::harness::*;
use std::time::{Duration, Instant};

fn kids(jwks: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(jwks).unwrap();
    v["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_answers_healthz_within_1s_and_kid_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    let data_s = data.to_str().unwrap();
    let args = ["serve", "--dev", "--data-dir", data_s, "--listen", "127.0.0.1:0"];

    let started = Instant::now();
    let mut g = Gocred::start(&args, &[]);
    assert!(g.url.starts_with("https://127.0.0.1:"), "{}", g.url);
    let ca = data.join("tls/ca.pem");
    let line = g.proc.wait_stdout("gocred: dev CA ", Duration::from_secs(5));
    assert!(line.contains(&ca.display().to_string()) && line.contains("created"), "CA path printed: {line}");
    let c = client(Some(&ca));
    let status = eventually(Duration::from_secs(5), "healthz", || async {
        let s = c.get(format!("{}/healthz", g.url)).send().await.ok()?.status().as_u16();
        (s == 200).then_some(s)
    })
    .await;
    let elapsed = started.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed < Duration::from_secs(1), "healthz answered {elapsed:?} after start");

    let (st, jwks1) = g.get(&c, "/.well-known/jwks.json").await;
    assert_eq!(st, 200);
    let kid1 = kids(&jwks1);
    assert_eq!(kid1.len(), 1);
    let v: serde_json::Value = serde_json::from_str(&jwks1).unwrap();
    assert_eq!(v["keys"][0]["alg"], "EdDSA");
    assert_eq!(v["keys"][0]["crv"], "Ed25519");
    assert_eq!(v["keys"][0]["kty"], "OKP");

    let (st, ready) = g.get(&c, "/readyz").await;
    assert_eq!((st, ready.contains("ready")), (200, true));
    let (st, nf) = g.get(&c, "/no/such/route").await;
    assert_eq!(st, 404);
    let e: serde_json::Value = serde_json::from_str(&nf).unwrap();
    assert_eq!(e["error"], "not_found");
    assert!(e["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    let (st, metrics) = g.get(&c, "/metrics").await;
    assert_eq!(st, 200);
    assert!(metrics.contains(r#"gocred_http_requests_total{route="/healthz",method="GET",status="200"}"#), "{metrics}");
    assert!(
        metrics.contains(r#"gocred_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("gocred_http_request_duration_seconds_bucket{route=\"/.well-known/jwks.json\""),
        "{metrics}"
    );

    // Graceful stop on SIGTERM, exit code 0.
    g.proc.signal("TERM");
    assert_eq!(g.proc.wait_exit(Duration::from_secs(15)), 0);
    assert!(g.proc.stdout().iter().any(|l| l.contains("gocred: stopped")));

    // Restart: same CA (reused), same kid.
    let mut g2 = Gocred::start(&args, &[]);
    // Printed right after the listening line: wait for it rather than race the reader.
    g2.proc.wait_stdout("reused", Duration::from_secs(5));
    let (_, jwks2) = g2.get(&c, "/.well-known/jwks.json").await;
    assert_eq!(kids(&jwks2), kid1);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_refuses_non_loopback_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) =
        Gocred::run(&["serve", "--dev", "--data-dir", dir.path().to_str().unwrap(), "--listen", "0.0.0.0:0"], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("loopback"), "{err}");
}

/// Run `--dev` once so the secrets file exists, then stop it.
fn prepare_dev_dir(data: &std::path::Path) {
    let mut g =
        Gocred::start(&["serve", "--dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"], &[]);
    g.proc.signal("TERM");
    assert_eq!(g.proc.wait_exit(Duration::from_secs(15)), 0);
}

fn assert_one_line_error(code: i32, err: &str, needles: &[&str]) {
    assert_eq!(code, 1, "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "{n:?} not in {:?}", lines[0]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_secrets_file_and_wrong_key_fail_cleanly_and_leave_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("dev");
    prepare_dev_dir(&data);
    let file = data.join("secrets.enc");
    let original = std::fs::read(&file).unwrap();
    let args = ["serve", "--dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let file_s = file.display().to_string();

    // Tamper: flip one base64 character of the signing-key record's ciphertext.
    let mut disk: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let ct = disk["records"]["gocred/signing-keys"]["ciphertext"].as_str().unwrap().to_string();
    let mut chars: Vec<char> = ct.chars().collect();
    chars[10] = if chars[10] == 'Q' { 'R' } else { 'Q' };
    disk["records"]["gocred/signing-keys"]["ciphertext"] = chars.into_iter().collect::<String>().into();
    let tampered = serde_json::to_vec_pretty(&disk).unwrap();
    std::fs::write(&file, &tampered).unwrap();
    let (code, _, err) = Gocred::run(&args, &[]);
    assert_one_line_error(code, &err, &[&file_s, "failed authentication", "gocred/signing-keys"]);
    assert_eq!(std::fs::read(&file).unwrap(), tampered, "tampered file left unchanged");

    // Wrong key.
    std::fs::write(&file, &original).unwrap();
    use base64::Engine;
    let other = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let (code, _, err) = Gocred::run(&args, &[("GOCRED_FILE_KEY", &other)]);
    assert_one_line_error(code, &err, &[&file_s, "wrong key"]);
    assert!(!err.contains(&other), "the key must not be echoed");
    assert_eq!(std::fs::read(&file).unwrap(), original, "file left unchanged");

    // The right key still works afterwards.
    let g = Gocred::start(&args, &[]);
    let (st, _) = g.get(&client(Some(&data.join("tls/ca.pem"))), "/healthz").await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn config_errors_name_the_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let base = "[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n";
    let cases = [
        ("unknown.toml", format!("[server]\nlisten = \"127.0.0.1:0\"\nlisten_port = 1\n{base}"), "server.listen_port"),
        (
            "type.toml",
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{base}[tokens]\nrequire_proof = \"yes\"\n"),
            "tokens.require_proof",
        ),
        ("missing.toml", format!("[server]\npublic_url = \"https://x\"\n{base}"), "server.listen"),
    ];
    for (name, text, key) in cases {
        let path = write(name, &text);
        let (code, _, err) = Gocred::run(&["serve", "--check", "--config", &path], &[]);
        assert_one_line_error(code, &err, &[key, &path]);
    }
    // Env overrides are checked the same way and name the variable.
    let ok = write("ok.toml", &format!("[server]\nlisten = \"127.0.0.1:0\"\n{base}"));
    let (code, out, err) = Gocred::run(&["serve", "--check", "--config", &ok], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("config OK"), "{out}");
    let (code, _, err) = Gocred::run(&["serve", "--check", "--config", &ok], &[("GOCRED_TOKENS__TTL", "soon")]);
    assert_one_line_error(code, &err, &["tokens.ttl"]);
    let (code, _, err) = Gocred::run(&["serve", "--check", "--config", &ok], &[("GOCRED_SERVER__BOGUS", "1")]);
    assert_one_line_error(code, &err, &["GOCRED_SERVER__BOGUS", "server.bogus"]);
    // The shipped example is valid.
    let example = repo_root().join("examples/broker.toml");
    let (code, out, err) = Gocred::run(&["serve", "--check", "--config", example.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{out}{err}");
    // Usage errors exit 2.
    let (code, _, _) = Gocred::run(&["serve"], &[]);
    assert_eq!(code, 2);
}

fn vault_config(dir: &std::path::Path, name: &str, bao: &OpenBao, auth: &str) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"vault\"\ngrace = \"1s\"\nprobe_every = \"200ms\"\n\
             [vault]\naddress = \"{}\"\ntimeout = \"2s\"\n[vault.auth]\n{auth}\n",
            bao.addr
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_share_one_key_set_and_approle_token_is_renewed() {
    let bao = OpenBao::start().await;
    bao.setup_approle("3s").await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret-id");
    std::fs::write(&secret_file, "gocred-secret\n").unwrap();
    let cfg = vault_config(
        dir.path(),
        "broker.toml",
        &bao,
        &format!("method = \"approle\"\nrole_id = \"gocred-role\"\nsecret_id_file = \"{}\"", secret_file.display()),
    );
    // Start all three before waiting for any: they race to create the key set.
    let mut procs: Vec<Proc> = (0..3).map(|_| Gocred::spawn(&["serve", "--config", &cfg], &[])).collect();
    let urls: Vec<String> = procs
        .iter_mut()
        .map(|p| {
            p.wait_stdout("gocred: listening on ", Duration::from_secs(20))
                .split_whitespace()
                .nth(3)
                .unwrap()
                .to_string()
        })
        .collect();
    let c = client(None);
    let mut bodies = Vec::new();
    for u in &urls {
        let r = c.get(format!("{u}/.well-known/jwks.json")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        bodies.push(r.bytes().await.unwrap());
    }
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[1], bodies[2]);
    assert_eq!(kids(std::str::from_utf8(&bodies[0]).unwrap()).len(), 1);
    // Exactly one writer won: the record is at version 1 in OpenBao.
    let meta = bao.api("GET", "secret/metadata/gocred/signing-keys", serde_json::Value::Null).await;
    assert_eq!(meta["data"]["current_version"], 1, "{meta}");

    // The AppRole token (TTL 3s) is renewed before it expires, and Vault reads keep working.
    let u = urls[0].clone();
    let renewals = eventually(Duration::from_secs(15), "a vault token renewal", || {
        let (c, u) = (c.clone(), u.clone());
        async move {
            let m = c.get(format!("{u}/metrics")).send().await.ok()?.text().await.ok()?;
            let line = m.lines().find(|l| l.starts_with("gocred_vault_token_renewals_total "))?.to_string();
            let n: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            (n >= 2).then_some(n)
        }
    })
    .await;
    assert!(renewals >= 2);
    for p in &procs {
        assert!(!p.stderr().join("\n").contains("gocred-secret"), "secret id leaked to logs");
    }
    // Still ready (Vault is up, the renewed token works).
    let r = c.get(format!("{u}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_vault_while_healthz_stays_up() {
    let port = free_port();
    let mut bao = OpenBao::start_on(port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(dir.path(), "broker.toml", &bao, "method = \"token\"\ntoken = \"root\"");
    let g = Gocred::start(&["serve", "--config", &cfg], &[]);
    let c = client(None);
    let (_, jwks_before) = g.get(&c, "/.well-known/jwks.json").await;
    assert_eq!(g.get(&c, "/readyz").await.0, 200);

    bao.proc.kill();
    let body = eventually(Duration::from_secs(10), "readyz to turn 503", || async {
        let (st, body) = g.get(&c, "/readyz").await;
        (st == 503).then_some(body)
    })
    .await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "not_ready");
    let msg = v["message"].as_str().unwrap();
    assert!(msg.contains("vault") && msg.contains(&bao.addr) && msg.contains("unreachable"), "{msg}");
    assert_eq!(g.get(&c, "/healthz").await.0, 200, "liveness unaffected");
    assert_eq!(g.get(&c, "/.well-known/jwks.json").await.1, jwks_before, "keys served from memory");
    let m = g.get(&c, "/metrics").await.1;
    assert!(m.contains("gocred_ready 0"), "{m}");

    let _bao2 = OpenBao::start_on(port).await;
    eventually(Duration::from_secs(10), "readyz to recover", || async {
        (g.get(&c, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    // The restarted dev server lost its data; the broker restores its key set, kid unchanged.
    eventually(Duration::from_secs(15), "key set restored in OpenBao", || async {
        let r = client(None)
            .get(format!("http://127.0.0.1:{port}/v1/secret/data/gocred/signing-keys"))
            .header("X-Vault-Token", "root")
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert_eq!(g.get(&c, "/.well-known/jwks.json").await.1, jwks_before);
}

/// A broker started while OpenBao is down says so in one line (naming it), does not exit, and
/// starts by itself once OpenBao answers; then it is ready. A refusal (a wrong token) is not
/// waited for: the broker exits with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_started_while_vault_is_down_waits_for_it() {
    let port = free_port();
    let mut bao = OpenBao::start_on(port).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(dir.path(), "broker.toml", &bao, "method = \"token\"\ntoken = \"root\"");
    bao.proc.kill();
    let mut p = Gocred::spawn(&["serve", "--config", &cfg], &[]);
    let line = p.wait_stderr("unreachable at start", Duration::from_secs(20));
    assert!(line.contains("WARN") && line.contains(&bao.addr), "{line}");
    std::thread::sleep(Duration::from_secs(4)); // a few more tries
    let said = p.stderr().iter().filter(|l| l.contains("unreachable")).count();
    assert_eq!(said, 1, "one line while waiting: {:#?}", p.stderr());
    assert!(p.stdout().iter().all(|l| !l.contains("listening")), "{:?}", p.stdout());
    let _bao = OpenBao::start_on(port).await;
    let line = p.wait_stdout("gocred: listening on ", Duration::from_secs(30));
    let url = line.split_whitespace().nth(3).unwrap().to_string();
    let r = client(None).get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let bad = vault_config(dir.path(), "bad.toml", &bao, "method = \"token\"\ntoken = \"not-the-root-token\"");
    let mut child = gocred_cmd(&["serve", "--config", &bad], &[])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a broker refused by Vault kept waiting instead of exiting");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("waiting for it") && err.contains("403"), "a refusal is not waited for: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_previous_key_published() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\nttl = \"1m\"\nrotate_every = \"2s\"\n\
         [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\nkey_file = \"file.key\"\n",
    )
    .unwrap();
    use base64::Engine;
    let key = dir.path().join("file.key");
    std::fs::write(&key, base64::engine::general_purpose::STANDARD.encode([7u8; 32])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let c = client(None);
    let first = kids(&g.get(&c, "/.well-known/jwks.json").await.1);
    assert_eq!(first.len(), 1);
    let rotated = eventually(Duration::from_secs(10), "a rotation", || async {
        let k = kids(&g.get(&c, "/.well-known/jwks.json").await.1);
        (k.len() == 2).then_some(k)
    })
    .await;
    assert_ne!(rotated[0], first[0], "new current key first");
    assert_eq!(rotated[1], first[0], "previous key still published");
    let m = g.get(&c, "/metrics").await.1;
    assert!(m.contains("gocred_key_rotations_total"), "{m}");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\nkey_file = \"k\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("k"), "AAAA").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path().join("k"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = Gocred::run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_one_line_error(code, &err, &["chmod 600"]);
    assert!(!dir.path().join("s.enc").exists(), "nothing written");
}

#[test]
fn peer_installer_second_run_is_fast_and_installs_nothing() {
    let start = Instant::now();
    let out = std::process::Command::new("bash").arg(repo_root().join("tests/peers/install.sh")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("installing"), "second run reinstalled something: {err}");
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn vault_over_tls_with_a_custom_ca() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("bao-certs");
    std::fs::create_dir_all(&certs).unwrap();
    let bao = OpenBao::start_tls(&certs).await;
    let cfg = dir.path().join("broker.toml");
    let write = |ca: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"{}\"\n{ca}\n\
                 [vault.auth]\nmethod = \"token\"\ntoken_file = \"token\"\n",
                bao.addr
            ),
        )
        .unwrap()
    };
    std::fs::write(dir.path().join("token"), "root\n").unwrap();
    // Without the CA the server certificate is not trusted: a clear startup error.
    write("");
    let (code, _, err) = Gocred::run(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&bao.addr), "{err}");
    // With vault.ca_cert it works, and the key set is written to OpenBao.
    write(&format!("ca_cert = \"{}\"", certs.join("vault-ca.pem").display()));
    let g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let (st, jwks) = g.get(&client(None), "/.well-known/jwks.json").await;
    assert_eq!(st, 200);
    assert_eq!(kids(&jwks).len(), 1);
    let r = client(Some(&certs.join("vault-ca.pem")))
        .get(format!("{}/v1/secret/metadata/gocred/signing-keys", bao.addr))
        .header("X-Vault-Token", "root")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// A renewed certificate (what cert-manager writes into the Secret) is served without a restart;
/// a half-written pair keeps the old one.
#[tokio::test(flavor = "multi_thread")]
async fn renewed_tls_certificate_is_served_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = gocred::tls::ensure_dev_ca(&d.join("a")).unwrap();
    let b = gocred::tls::ensure_dev_ca(&d.join("b")).unwrap();
    std::fs::create_dir_all(d.join("live")).unwrap();
    let install = |from: &gocred::tls::DevTls| {
        // Atomic replacement of each file, like a Secret volume update.
        for (src, name) in [(&from.cert, "tls.crt"), (&from.key, "tls.key")] {
            std::fs::copy(src, d.join("live").join(format!(".{name}.tmp"))).unwrap();
            std::fs::rename(d.join("live").join(format!(".{name}.tmp")), d.join("live").join(name)).unwrap();
        }
    };
    install(&a);
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"live/tls.crt\"\nkey = \"live/tls.key\"\nreload_every = \"200ms\"\n\
         [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n",
    )
    .unwrap();
    let key = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([3u8; 32])
    };
    let mut g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[("GOCRED_FILE_KEY", &key)]);
    let ok_with = |ca: &std::path::Path| {
        let (url, ca) = (g.url.clone(), ca.to_path_buf());
        async move { client(Some(&ca)).get(format!("{url}/healthz")).send().await.is_ok_and(|r| r.status() == 200) }
    };
    assert!(ok_with(&a.ca_cert).await);
    assert!(!ok_with(&b.ca_cert).await);
    // Half-way through a rotation (new certificate, old key): still the old pair.
    std::fs::copy(&b.cert, d.join("live/tls.crt")).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(ok_with(&a.ca_cert).await, "a mismatched pair is not loaded");
    install(&b);
    eventually(Duration::from_secs(5), "the renewed certificate", || async { ok_with(&b.ca_cert).await.then_some(()) })
        .await;
    assert!(!ok_with(&a.ca_cert).await);
    g.proc.wait_stderr("TLS certificate reloaded", Duration::from_secs(2));
}
