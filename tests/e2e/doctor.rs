//! `gocred doctor` against real failures made with the real go command, a real git server and
//! the real broker: each classification's one line.

use crate::gitmod::{M, git_server};
use crate::harness::*;
use std::path::Path;

/// `gocred doctor ARGS` with the client env `env`, in `cwd`.
fn doctor(env: &[(String, String)], cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(gocred_bin());
    cmd.arg("doctor").args(args).current_dir(cwd).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn with(env: &[(String, String)], set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut e: Vec<(String, String)> = env.iter().filter(|(k, _)| !set.iter().any(|(s, _)| s == k)).cloned().collect();
    e.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    e
}

/// Healthy, then: no such version (with the tags that exist), a checksum mismatch against
/// go.sum, a policy denial, a private path about to go to a public proxy, git prompting for a
/// password, an untrusted certificate, a name that does not resolve, a revoked token, not
/// logged in, the broker unreachable — each named in one line with its fix.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_each_failure_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    crate::store::lib_repo(&srv, "doc").publish(&srv, "lib");
    let port = free_port();
    let _up = git_server(&srv, port, &["--anonymous"]);
    let bdir = tempfile::tempdir().unwrap();
    let bpath = bdir.path().to_path_buf();
    let (mut b, env) = crate::gitmod::corpus_broker_in(bdir, d, port, "", &[]);
    let lib = format!("{M}/lib.git");

    let (code, out, err) = doctor(&env, d, &[&format!("{lib}@v1.0.0")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok   download") && out.contains("h1:") && out.contains("ok   GOPROXY"), "{out}");
    let (code, out, _) = doctor(&env, d, &["--json", &format!("{lib}@v1.0.0")]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(code == 0 && v["ok"] == true && v["checks"].as_array().unwrap().len() >= 6, "{out}");

    // No such version: the tags that exist.
    let (code, _, err) = doctor(&env, d, &[&format!("{lib}@v9.9.9")]);
    assert_eq!(code, 1);
    assert!(err.contains("no such version (tags: v1.0.0 v1.1.0)"), "{err}");

    // go.sum pins other content.
    let app = d.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), format!("module example.test/app\n\ngo 1.21\n\nrequire {lib} v1.0.0\n"))
        .unwrap();
    std::fs::write(app.join("go.sum"), format!("{lib} v1.0.0 h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"))
        .unwrap();
    let (code, _, err) = doctor(&env, &app, &[&format!("{lib}@v1.0.0")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("checksum mismatch") && err.contains("go.sum: h1:AAAA") && err.contains("downloaded: h1:"),
        "{err}"
    );

    // A policy denial names the policy.
    crate::store::forbid_lib(&mut b, &bpath);
    let (code, _, err) = doctor(&env, d, &[&format!("{lib}@v1.1.0")]);
    assert!(code == 1 && err.contains("denied by policy no-lib"), "{err}");
    crate::store::lift_forbid(&mut b, &bpath);

    // A public proxy before the broker, the path not in GOPRIVATE: refused before any fetch.
    let goproxy = env.iter().find(|(k, _)| k == "GOPROXY").unwrap().1.clone();
    let leaky = with(&env, &[("GOPROXY", &format!("https://proxy.golang.org,{}", goproxy.trim_end_matches(",off")))]);
    let (code, out, err) = doctor(&leaky, d, &[&format!("{lib}@v1.0.0")]);
    assert!(code == 1 && err.contains("a public proxy in GOPROXY would be asked for this private path"), "{err}");
    assert!(!out.contains("download"), "fetched anyway: {out}");

    // git directly (GOPROXY=direct), the server wanting a password: git's prompt is named.
    let aport = free_port();
    let _authed = git_server(&srv, aport, &["--user", "u", "--password", "p", "--anonymous-refs"]);
    let gitcfg = d.join("direct.gitconfig");
    std::fs::write(&gitcfg, format!("[url \"http://127.0.0.1:{aport}/\"]\n\tinsteadOf = https://corp.test/\n"))
        .unwrap();
    let direct = with(
        &env,
        &[
            ("GOPROXY", "direct"),
            ("GOPRIVATE", "corp.test"),
            ("GOINSECURE", "corp.test"), // the test git server is plain http
            ("GIT_CONFIG_GLOBAL", gitcfg.to_str().unwrap()),
        ],
    );
    let (code, out, err) = doctor(&direct, d, &[&format!("{lib}@v1.0.0")]);
    assert_eq!(code, 1);
    assert!(out.contains("git asked for a password"), "{out}{err}");
    assert!(err.contains("does not go through the broker"), "{err}");

    // The go command not trusting the broker's certificate (another CA in SSL_CERT_FILE).
    let other = gocred::tls::ensure_dev_ca(&d.join("other-ca")).unwrap();
    let untrusted = with(&env, &[("SSL_CERT_FILE", other.ca_cert.to_str().unwrap())]);
    let (code, out, err) = doctor(&untrusted, d, &[&format!("{lib}@v1.0.0")]);
    assert!(code == 1 && out.contains("download") && err.contains("TLS: the certificate is not trusted"), "{out}{err}");

    // The token revoked while the session stays, and the key no longer authorized (so no new
    // login happens behind the scenes): refused by the broker, named.
    let home = env.iter().find(|(k, _)| k == "XDG_CACHE_HOME").unwrap().1.clone();
    let session = Path::new(&home).join("gocred/session.json");
    let saved = std::fs::read(&session).unwrap();
    let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (code, _, err) = Gocred::run(&["logout"], &e);
    assert_eq!(code, 0, "{err}");
    gocred::fsutil::write_private_atomic(&session, &saved).unwrap();
    std::fs::remove_file(bpath.join("authorized_keys/alice")).unwrap();
    let (code, out, err) = doctor(&env, d, &[&format!("{lib}@v1.1.0")]);
    assert!(code == 1 && err.contains("the broker refused the token (expired or revoked)"), "{code} {out}{err}");

    // Not logged in.
    std::fs::remove_file(&session).unwrap();
    let (code, _, err) = doctor(&env, d, &[&format!("{lib}@v1.0.0")]);
    assert!(code == 1 && err.contains("not logged in") && err.contains("gocred login"), "{err}");

    // Logged out, GOPROXY naming a broker that does not resolve: doctor's probe and the go
    // command's own lookup both fail on DNS.
    let nodns = with(&env, &[("GOPROXY", "https://gocred.nosuch.invalid/mod,off")]);
    let (code, out, _) = doctor(&nodns, d, &[&format!("{lib}@v1.0.0")]);
    let dns: Vec<&str> = out.lines().filter(|l| l.contains("DNS: the name does not resolve")).collect();
    assert!(code == 1 && dns.len() == 2 && dns[1].contains("download"), "{out}");

    // A broker that accepts connections and never answers: both given up after --timeout.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("https://{}", hole.local_addr().unwrap());
    let held = std::thread::spawn(move || hole.incoming().take(4).filter_map(Result::ok).collect::<Vec<_>>());
    let stalled = with(&env, &[("GOPROXY", &format!("{hole_url}/mod,off"))]);
    let t = std::time::Instant::now();
    let (code, out, _) = doctor(&stalled, d, &["--timeout", "3s", &format!("{lib}@v1.0.0")]);
    let timed: Vec<&str> = out.lines().filter(|l| l.contains("timed out after 3s")).collect();
    assert!(code == 1 && timed.len() == 2 && timed[1].contains("download"), "{out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "{:?}", t.elapsed());
    drop(held);

    // The broker gone.
    b.g.proc.kill();
    let (code, _, err) = doctor(&env, d, &[]);
    assert!(code == 1 && err.contains("cannot connect"), "{err}");
}

/// The upstream refusing the broker's credential (a wrong token in the secrets backend) is
/// named as such, with who fixes it.
#[tokio::test(flavor = "multi_thread")]
async fn doctor_names_an_upstream_refusing_the_brokers_credential() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    crate::store::lib_repo(&srv, "cred").publish(&srv, "lib");
    let port = free_port();
    let _up = git_server(&srv, port, &["--bearer", "the-right-token"]);
    let creds = "credentials = \"vault:upstreams/corpus\"";
    let (_b, env) = crate::gitmod::corpus_broker_seeded(d, port, creds, &[], "a-wrong-token");
    let (code, _, err) = doctor(&env, d, &[&format!("{M}/lib.git@v1.0.0")]);
    assert!(code == 1 && err.contains("the upstream refused the broker's credential"), "{err}");
    assert!(err.contains("gocred secrets put"), "{err}");
}
