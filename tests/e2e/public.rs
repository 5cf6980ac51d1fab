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
