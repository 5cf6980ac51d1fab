//! A public upstream (standing in for proxy.golang.org: a real GOPROXY file server that records
//! every request) behind the broker: `gocred setup` then writes `GOPROXY=<broker>/mod,off`; public
//! modules come through the broker; a private module path — in the configured spelling or any
//! other, as a module or as a checksum-database lookup — never reaches the public upstream.

use crate::harness::*;
use crate::proxy::{env_refs, go_env, go_get, world_full};
use std::process::Command;
use std::time::Duration;

/// A GOPROXY layout for `pub.example/lib@v1.0.0` under `root`.
fn public_layout(root: &std::path::Path) {
    let v = root.join("pub.example/lib/@v");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("list"), "v1.0.0\n").unwrap();
    std::fs::write(v.join("v1.0.0.info"), "{\"Version\":\"v1.0.0\",\"Time\":\"2026-01-01T00:00:00Z\"}\n").unwrap();
    std::fs::write(v.join("v1.0.0.mod"), "module pub.example/lib\n\ngo 1.21\n").unwrap();
    let script = "import sys, zipfile\n\
                  z = zipfile.ZipFile(sys.argv[1], 'w')\n\
                  z.writestr('pub.example/lib@v1.0.0/go.mod', 'module pub.example/lib\\n\\ngo 1.21\\n')\n\
                  z.writestr('pub.example/lib@v1.0.0/lib.go', 'package lib\\n\\nfunc Public() string { return \"public\" }\\n')\n\
                  z.close()\n";
    run_ok(Command::new("python3").args(["-c", script]).arg(v.join("v1.0.0.zip")));
}

#[tokio::test(flavor = "multi_thread")]
async fn public_modules_come_through_the_broker_and_private_paths_never_reach_the_public_upstream() {
    let root = tempfile::tempdir().unwrap();
    public_layout(root.path());
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args(["--port", &port.to_string(), "--anonymous", "--goproxy-root"])
        .arg(root.path());
    let mut public = Proc::spawn("public-proxy", cmd);
    public.wait_stdout("listening", Duration::from_secs(10));
    let extra = format!(
        "[[upstreams]]\nname = \"public\"\nkind = \"goproxy\"\nurl = \"http://127.0.0.1:{port}/mod\"\npublic = true\n"
    );
    let w = world_full("127.0.0.1:0", "", &extra, &[]).await;

    // setup: the broker is the only GOPROXY.
    let env = go_env(&w, "cache-setup", &[]);
    let (code, out, err) = Gocred::run(&["setup", "--dry-run"], &env_refs(&env));
    assert_eq!(code, 0, "{out}{err}");
    let goproxy = format!("{}/mod,off", w.broker.url);
    assert!(out.contains(&format!("go env -w GOPROXY={goproxy}\n")), "{out}");

    let me = gocred_bin().display().to_string();
    let genv = |cache: &str| {
        go_env(
            &w,
            cache,
            &[("GOPROXY", goproxy.clone()), ("GOAUTH", format!("{me} goauth")), ("GOSUMDB", "off".into())],
        )
    };
    // A public module, through the broker.
    let (ok, text, sum) = go_get(&w, "public", &genv("cache-public"), "pub.example/lib");
    assert!(ok, "public module through the broker: {text}");
    assert!(sum.contains("pub.example/lib v1.0.0 h1:"), "{sum}");
    // The private module still comes from its private upstream.
    let (ok, text, _) = go_get(&w, "private", &genv("cache-private"), "git.corp.test/acme/lib.git");
    assert!(ok, "private module: {text}");
    // Private paths that do not exist: the broker says so, the public upstream never hears of them.
    for (i, m) in
        ["git.corp.test/acme/does-not-exist", "GIT.corp.test/acme/secret", "git.CORP.test/acme/x"].iter().enumerate()
    {
        let (ok, _, _) = go_get(&w, &format!("missing-{i}"), &genv(&format!("cache-missing-{i}")), m);
        assert!(!ok, "{m} must not resolve");
    }
    let seen: Vec<String> = public.stderr().into_iter().filter(|l| l.starts_with("REQ ")).collect();
    assert!(seen.iter().any(|l| l.contains("/mod/pub.example/lib/@v/v1.0.0.zip")), "{seen:#?}");
    let leaked: Vec<&String> = seen.iter().filter(|l| l.to_ascii_lowercase().contains("corp.test")).collect();
    assert!(leaked.is_empty(), "private paths reached the public upstream: {leaked:#?}");
}

/// `serve --dev` fronts a public proxy by default (here a local one via `--public-proxy`):
/// `serve --dev` → `login` → `setup` → `go get` of a public module, with nothing else.
#[tokio::test(flavor = "multi_thread")]
async fn dev_broker_fronts_the_public_proxy_so_login_setup_go_get_just_works() {
    let dir = tempfile::tempdir().unwrap();
    public_layout(&dir.path().join("public"));
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args(["--port", &port.to_string(), "--anonymous", "--goproxy-root"])
        .arg(dir.path().join("public"));
    let mut public = Proc::spawn("public-proxy", cmd);
    public.wait_stdout("listening", Duration::from_secs(10));
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    ssh_keygen(&home.join(".ssh/id_ed25519"), "ed25519", "");
    let data = dir.path().join("dev");
    let public_url = format!("http://127.0.0.1:{port}/mod");
    let g = Gocred::start(
        &[
            "serve",
            "--dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--public-proxy",
            &public_url,
        ],
        &[("HOME", home.to_str().unwrap()), ("USER", "devuser")],
    );
    let ca = data.join("tls/ca.pem");
    let path = format!(
        "{}:{}:{}",
        crate::proxy::go_bin().parent().unwrap().display(),
        gocred_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let d = dir.path();
    let env: Vec<(String, String)> = [
        ("HOME", home.display().to_string()),
        ("USER", "devuser".into()),
        ("XDG_CACHE_HOME", d.join("cache").display().to_string()),
        ("XDG_CONFIG_HOME", d.join("config").display().to_string()),
        ("SSH_AUTH_SOCK", String::new()),
        ("SSL_CERT_FILE", ca.display().to_string()),
        ("PATH", path),
        ("GOTOOLCHAIN", "local".into()),
        ("GOMODCACHE", d.join("modcache").display().to_string()),
        ("GOPATH", d.join("gopath").display().to_string()),
        ("GOCACHE", d.join("gocache").display().to_string()),
        ("GOSUMDB", "off".into()),
        ("GOFLAGS", "-mod=mod".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let (code, out, err) = Gocred::run(&["login", "--ssh", "--broker", &g.url], &env_refs(&env));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = Gocred::run(&["setup"], &env_refs(&env));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("go env -w GOPROXY={}/mod,off\n", g.url)), "{out}");
    assert!(out.contains(&format!("go env -w GOAUTH={} goauth", gocred_bin().display())), "{out}");
    // Plain `go`, configured only by what setup wrote (go env -w into XDG_CONFIG_HOME).
    let app = d.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.21\n").unwrap();
    let mut go = Command::new(crate::proxy::go_bin());
    go.current_dir(&app).args(["get", "pub.example/lib@v1.0.0"]).env_clear();
    for (k, v) in &env {
        go.env(k, v);
    }
    let out = go.output().unwrap();
    assert!(out.status.success(), "go get through the dev broker: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(app.join("go.sum")).unwrap().contains("pub.example/lib v1.0.0 h1:"));
    assert!(public.stderr().iter().any(|l| l.contains("/mod/pub.example/lib/@v/v1.0.0.zip")));
}
