//! Private modules end to end: real Go 1.27 and git through the broker's `/mod/` (GOPROXY) and
//! `/git/` (smart HTTP) routes to an upstream that requires a credential held in OpenBao —
//! with GOAUTH, the git credential helper, GIT_ASKPASS and netrc.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const UP_USER: &str = "git-bot";
const UP_PASS: &str = "s3cret-upstream-pass";
const UP_TOKEN: &str = "athens-upstream-token";

pub struct World {
    pub dir: tempfile::TempDir,
    _bao: OpenBao,
    pub upstream: Proc,
    pub broker: Gocred,
    pub ca: PathBuf,
    pub key: PathBuf,
    /// h1: hash of the module as downloaded directly from the repository.
    pub direct_sum: String,
}

pub fn go_bin() -> PathBuf {
    peer("go/go/bin/go")
}

fn git(dir: &Path, args: &[&str]) {
    run_ok(Command::new("git").current_dir(dir).args(args).env("GIT_CONFIG_GLOBAL", "/dev/null"));
}

/// A bare repository `root/<name>.git` holding module `module` at v1.0.0.
fn make_repo(root: &Path, name: &str, module: &str) {
    make_bare(root, &format!("{name}.git"), module)
}

/// A bare repository in exactly `root/<dir>` holding module `module` at v1.0.0.
pub fn make_bare(root: &Path, dir: &str, module: &str) {
    let work = root.join(format!("{dir}-work"));
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("go.mod"), format!("module {module}\n\ngo 1.21\n")).unwrap();
    std::fs::write(
        work.join("lib.go"),
        "package lib\n\n// Hello greets.\nfunc Hello() string { return \"hello from a private module\" }\n",
    )
    .unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "v1"]);
    git(&work, &["tag", "v1.0.0"]);
    let bare = root.join(dir);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    run_ok(
        Command::new("git").args(["clone", "-q", "--bare"]).arg(&work).arg(&bare).env("GIT_CONFIG_GLOBAL", "/dev/null"),
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// Environment for a `go` run with a private GOMODCACHE.
pub fn go_env(w: &World, cache: &str, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let home = w.dir.path().join("home");
    let path = format!(
        "{}:{}:{}",
        go_bin().parent().unwrap().display(),
        gocred_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), home.display().to_string()),
        ("XDG_CACHE_HOME".into(), home.join(".cache").display().to_string()),
        ("PATH".into(), path),
        ("GOTOOLCHAIN".into(), "local".into()),
        ("GOFLAGS".into(), "-mod=mod".into()),
        ("GOMODCACHE".into(), w.dir.path().join(cache).display().to_string()),
        ("GOPATH".into(), w.dir.path().join("gopath").display().to_string()),
        ("GOCACHE".into(), w.dir.path().join("gocache").display().to_string()),
        ("GOPRIVATE".into(), "git.corp.test".into()),
        ("GONOSUMDB".into(), "git.corp.test".into()),
        ("GONOPROXY".into(), "none".into()),
        ("GOENV".into(), "off".into()),
        ("SSL_CERT_FILE".into(), w.ca.display().to_string()),
        ("GIT_SSL_CAINFO".into(), w.ca.display().to_string()),
        ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
        ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
        ("SSH_AUTH_SOCK".into(), String::new()),
        ("USER".into(), "alice".into()),
    ];
    for (k, v) in extra {
        env.retain(|(e, _)| e != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

/// Run `go` in a fresh consumer module; returns (success, combined output, go.sum text).
pub fn go_get(w: &World, name: &str, env: &[(String, String)], module: &str) -> (bool, String, String) {
    let app = w.dir.path().join(format!("app-{name}"));
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.21\n").unwrap();
    let mut cmd = Command::new(go_bin());
    cmd.current_dir(&app).args(["get", &format!("{module}@v1.0.0")]).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let sum = std::fs::read_to_string(app.join("go.sum")).unwrap_or_default();
    (out.status.success(), text, sum)
}

pub fn h1_of(sum: &str, module: &str) -> Option<String> {
    sum.lines()
        .find(|l| l.starts_with(&format!("{module} v1.0.0 h1:")))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
}

async fn world() -> World {
    world_with("127.0.0.1:0", "").await
}

/// The world with the broker listening on `listen` and `extra` appended to its config.
pub async fn world_with(listen: &str, extra: &str) -> World {
    world_full(listen, "", extra, &[]).await
}

/// The world with `server_extra` in the broker's `[server]` table, `extra` appended to its config
/// and `env` in the broker's environment.
pub async fn world_full(listen: &str, server_extra: &str, extra: &str, env: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Repositories and the direct download (the reference hash and the GOPROXY layout).
    let srv = d.join("srv");
    make_repo(&srv, "acme/lib", "git.corp.test/acme/lib.git");
    make_repo(&srv, "secret/x", "git.corp.test/secret/x.git");
    let direct_cfg = d.join("direct.gitconfig");
    std::fs::write(
        &direct_cfg,
        format!(
            "[url \"file://{}/\"]\n\tinsteadOf = https://git.corp.test/\n[protocol \"file\"]\n\tallow = always\n",
            srv.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(go_bin());
    cmd.args(["mod", "download", "-json", "git.corp.test/acme/lib.git@v1.0.0", "git.corp.test/secret/x.git@v1.0.0"])
        .current_dir(d)
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "direct")
        .env("GOPRIVATE", "git.corp.test")
        .env("GOMODCACHE", d.join("direct-cache"))
        .env("GOPATH", d.join("gopath"))
        .env("GOCACHE", d.join("gocache"))
        .env("GIT_CONFIG_GLOBAL", &direct_cfg)
        .env("GOFLAGS", "-mod=mod")
        .env("HOME", d);
    let out = run_ok(&mut cmd);
    let first: serde_json::Value = serde_json::Deserializer::from_str(&out).into_iter().next().unwrap().unwrap();
    let direct_sum = first["Sum"].as_str().unwrap().to_string();
    let layout = d.join("direct-cache/cache/download");

    // The upstream: git smart HTTP (Basic) and GOPROXY files (Bearer), both needing the
    // credential that only OpenBao holds.
    let port = free_port();
    let mut up = Command::new("python3");
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args(["--port", &port.to_string(), "--user", UP_USER, "--password", UP_PASS, "--bearer", UP_TOKEN])
        .arg("--git-root")
        .arg(&srv)
        .arg("--goproxy-root")
        .arg(&layout);
    let mut upstream = Proc::spawn("upstream", up);
    upstream.wait_stdout("listening", Duration::from_secs(10));

    let bao = OpenBao::start().await;
    bao.api(
        "POST",
        "secret/data/upstreams/corp-git",
        serde_json::json!({"data": {"username": UP_USER, "password": UP_PASS}}),
    )
    .await;
    bao.api("POST", "secret/data/upstreams/athens", serde_json::json!({"data": {"token": UP_TOKEN}})).await;
    bao.api(
        "POST",
        "secret/data/upstreams/vend",
        serde_json::json!({"data": {"username": "x-access-token", "password": "ghs_vended_secret"}}),
    )
    .await;

    // Broker: TLS (Go sends credentials only over https), alice's key, a test policy.
    let tls = gocred::tls::ensure_dev_ca(&d.join("tls")).unwrap();
    std::fs::create_dir_all(d.join("authorized_keys")).unwrap();
    let key = d.join("alice");
    ssh_keygen(&key, "ed25519", "");
    std::fs::copy(d.join("alice.pub"), d.join("authorized_keys/alice")).unwrap();
    let pol = d.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::copy(repo_root().join("policies/gocred.cedarschema"), pol.join("gocred.cedarschema")).unwrap();
    std::fs::copy(repo_root().join("policies/gocred.cedar"), pol.join("gocred.cedar")).unwrap();
    std::fs::write(
        pol.join("test.cedar"),
        "@id(\"alice-acme\")\npermit (principal == User::\"alice\", action == Action::\"download\", resource)\nwhen { resource.path like \"git.corp.test/acme/*\" };\n\
         @id(\"alice-vend\")\npermit (principal == User::\"alice\", action == Action::\"credentials\", resource)\nwhen { resource.path like \"vend.example/acme/*\" };\n",
    )
    .unwrap();
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{listen}\"\n{server_extra}\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [secrets]\nbackend = \"vault\"\n[vault]\naddress = \"{}\"\n[vault.auth]\nmethod = \"token\"\ntoken = \"root\"\n\
             [ssh]\nauthorized_keys = \"authorized_keys\"\n[policy]\ndir = \"policies\"\n[audit]\npath = \"audit.log\"\n\
             [[upstreams]]\nname = \"corp-git\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"http://127.0.0.1:{port}\"\ncredentials = \"vault:upstreams/corp-git\"\n\
             [[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nmodules = [\"git.corp.test\"]\nurl = \"http://127.0.0.1:{port}/mod\"\ncredentials = \"vault:upstreams/athens\"\n\
             [[upstreams]]\nname = \"vend\"\nkind = \"git\"\nhosts = [\"vend.example\"]\nurl = \"https://vend.example\"\ncredentials = \"vault:upstreams/vend\"\nmode = \"vend\"\n{extra}",
            tls.cert.display(),
            tls.key.display(),
            bao.addr
        ),
    )
    .unwrap();
    let broker = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], env);
    let w = World { dir, _bao: bao, upstream, broker, ca: tls.ca_cert, key, direct_sum };
    // alice logs in once; every helper below works from this session.
    let env = go_env(&w, "unused", &[]);
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (code, out, err) = Gocred::run(&["login", "--ssh", w.key.to_str().unwrap(), "--broker", &w.broker.url], &e);
    assert_eq!(code, 0, "login: {out}{err}");
    w
}

fn upstream_saw_secret_credentials(w: &World) {
    // The upstream never sees the caller's token; it only ever sees the broker's credential.
    for l in w.upstream.stderr() {
        assert!(!l.contains("gocred") && !l.contains("~"), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn go_downloads_private_modules_through_the_broker_every_way() {
    let w = world().await;
    let module = "git.corp.test/acme/lib.git";
    let me = gocred_bin().display().to_string();
    let goproxy = format!("{}/mod", w.broker.url);

    // (a) GOPROXY protocol with GOAUTH=gocred goauth.
    let env = go_env(&w, "cache-a", &[("GOPROXY", goproxy.clone()), ("GOAUTH", format!("{me} goauth"))]);
    let (ok, out, sum) = go_get(&w, "a", &env, module);
    assert!(ok, "(a) GOAUTH via /mod/: {out}");
    assert_eq!(h1_of(&sum, module).as_deref(), Some(w.direct_sum.as_str()), "(a) hash: {sum}");

    // (b) git smart HTTP via insteadOf + the git credential helper (GOPROXY=direct).
    let gitcfg = w.dir.path().join("b.gitconfig");
    std::fs::write(
        &gitcfg,
        format!(
            "[url \"{0}/git/git.corp.test/\"]\n\tinsteadOf = https://git.corp.test/\n[credential \"{0}\"]\n\thelper = \"{me} credential\"\n",
            w.broker.url
        ),
    )
    .unwrap();
    let env = go_env(
        &w,
        "cache-b",
        &[("GOPROXY", "direct".into()), ("GOAUTH", "off".into()), ("GIT_CONFIG_GLOBAL", gitcfg.display().to_string())],
    );
    let (ok, out, sum) = go_get(&w, "b", &env, module);
    assert!(ok, "(b) git credential helper via /git/: {out}");
    assert_eq!(h1_of(&sum, module).as_deref(), Some(w.direct_sum.as_str()), "(b) hash: {sum}");

    // (c) GIT_ASKPASS=gocred.
    let gitcfg_c = w.dir.path().join("c.gitconfig");
    std::fs::write(
        &gitcfg_c,
        format!("[url \"{0}/git/git.corp.test/\"]\n\tinsteadOf = https://git.corp.test/\n", w.broker.url),
    )
    .unwrap();
    let env = go_env(
        &w,
        "cache-c",
        &[
            ("GOPROXY", "direct".into()),
            ("GOAUTH", "off".into()),
            ("GIT_CONFIG_GLOBAL", gitcfg_c.display().to_string()),
            ("GIT_ASKPASS", me.clone()),
            ("GIT_TERMINAL_PROMPT", "1".into()),
        ],
    );
    let (ok, out, sum) = go_get(&w, "c", &env, module);
    assert!(ok, "(c) GIT_ASKPASS: {out}");
    assert_eq!(h1_of(&sum, module).as_deref(), Some(w.direct_sum.as_str()), "(c) hash: {sum}");

    // (d) netrc only (GOAUTH defaults to netrc).
    let env = go_env(&w, "cache-d", &[("GOPROXY", goproxy.clone())]);
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let netrc = w.dir.path().join("home/.netrc");
    std::fs::write(&netrc, "machine other.example login u password keep-me\n").unwrap();
    let (code, _, err) = Gocred::run(&["netrc", "--out", netrc.to_str().unwrap()], &e);
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(&netrc).unwrap();
    assert!(text.contains("keep-me"), "other entries kept: {text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&netrc).unwrap().permissions().mode() & 0o777, 0o600);
    let env: Vec<(String, String)> = env.into_iter().filter(|(k, _)| k != "GOAUTH").collect();
    let (ok, out, sum) = go_get(&w, "d", &env, module);
    assert!(ok, "(d) netrc: {out}");
    assert_eq!(h1_of(&sum, module).as_deref(), Some(w.direct_sum.as_str()), "(d) hash: {sum}");

    upstream_saw_secret_credentials(&w);
    // Audit: proxied requests with upstream, status and bytes.
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    let proxied: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["kind"] == "proxy")
        .collect();
    assert!(
        proxied.iter().any(|l| l["upstream"] == "athens" && l["status"] == 200 && l["bytes"].as_u64().unwrap() > 0),
        "{audit}"
    );
    assert!(
        proxied.iter().any(|l| l["upstream"] == "corp-git" && l["resource"] == "git.corp.test/acme/lib"),
        "{audit}"
    );
    assert!(!audit.contains(UP_PASS) && !audit.contains(UP_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_module_fails_go_with_the_brokers_reason_and_upstream_sees_nothing() {
    let w = world().await;
    let me = gocred_bin().display().to_string();
    let before = w.upstream.stderr().len();
    let env =
        go_env(&w, "cache-deny", &[("GOPROXY", format!("{}/mod", w.broker.url)), ("GOAUTH", format!("{me} goauth"))]);
    let (ok, out, _) = go_get(&w, "deny", &env, "git.corp.test/secret/x.git");
    assert!(!ok, "{out}");
    assert!(out.contains("no policy permits download of git.corp.test/secret/x.git for user:alice"), "{out}");
    let after: Vec<String> = w.upstream.stderr()[before..].to_vec();
    assert!(after.iter().all(|l| !l.contains("secret")), "upstream contacted: {after:?}");

    // Path tricks: a decoded `#`/`?` would split what the policy sees from what is fetched
    // (receive-pack authorized as a read). Refused before anything reaches the upstream.
    let (token, proof) = alice_auth(&w);
    let c = client(Some(&w.ca));
    for (method, path) in [
        ("POST", "/git/git.corp.test/acme/lib.git/git-receive-pack%23/git-upload-pack"),
        (
            "GET",
            "/git/git.corp.test/acme/lib.git/info/refs%3Fservice=git-receive-pack%23/info/refs?service=git-upload-pack",
        ),
        ("GET", "/mod/git.corp.test/secret/x.git/@latest%23/x/@v/list"),
        ("GET", "/git/git.corp.test/acme/lib.git/git-upload-pack"),
        ("DELETE", "/git/git.corp.test/acme/lib.git/info/refs?service=git-upload-pack"),
    ] {
        let r = c
            .request(method.parse().unwrap(), format!("{}{path}", w.broker.url))
            .bearer_auth(&token)
            .header("Gocred-Proof", &proof)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_client_error(), "{method} {path}: {}", r.status());
    }
    assert_eq!(
        w.upstream.stderr().len(),
        before,
        "upstream contacted by a path trick: {:?}",
        &w.upstream.stderr()[before..]
    );

    // Without credentials: 401 and nothing upstream either.
    let c = client(Some(&w.ca));
    let r = c.get(format!("{}/mod/git.corp.test/acme/lib.git/@v/list", w.broker.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(format!("{}/git/git.corp.test/acme/lib.git/info/refs?service=git-upload-pack", w.broker.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(w.upstream.stderr().len(), before, "upstream contacted by unauthenticated requests");
}

pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

/// Token and proof for direct HTTP calls as alice.
pub fn alice_auth(w: &World) -> (String, String) {
    let env = go_env(w, "unused", &[]);
    let (code, token, err) = Gocred::run(&["token"], &env_refs(&env));
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    // One expiry for the signed message and the encoding (two `now()` calls can straddle a second).
    let exp = now() + 300;
    let msg = gocred::proto::proof::proof_message(&token, &format!("{}/", w.broker.url), exp);
    let sig = gocred::auth::sshsig::parse(&ssh_sign(&w.key, "gocred-proof@v1", &msg)).unwrap();
    let proof = gocred::proto::proof::encode(
        exp,
        &format!("{}/", w.broker.url),
        &gocred::proto::proof::signature_b64url(&sig).unwrap(),
    );
    (token, proof)
}

#[tokio::test(flavor = "multi_thread")]
async fn helpers_answer_only_for_the_broker_and_fail_with_one_clear_line() {
    let w = world().await;
    let env = go_env(&w, "unused", &[]);
    let e = env_refs(&env);
    let (hp, _) =
        w.broker.url.trim_start_matches("https://").split_once(':').map(|(h, p)| (format!("{h}:{p}"), h)).unwrap();

    // GOAUTH: prefix is the broker origin only.
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(format!("{}/", w.broker.url).as_str()));
    assert_eq!(lines.next(), Some(""));
    assert!(lines.next().unwrap().starts_with("Authorization: Bearer "));
    assert!(lines.next().unwrap().starts_with("Gocred-Proof: v1."));
    // Go's second call after a 401 (URL as argument, response head on stdin): a new token.
    let token_before = out.lines().nth(2).unwrap().to_string();
    let mut cmd = gocred_cmd(&["goauth", &format!("{}/mod/git.corp.test/acme/lib.git/@v/list", w.broker.url)], &e);
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"HTTP/1.1 401 Unauthorized\r\nWww-Authenticate: Bearer realm=\"gocred\"\r\n\r\n")
            .unwrap();
    }
    let second = child.wait_with_output().unwrap();
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let second = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(second.starts_with(&format!("{}/\n\nAuthorization: Bearer ", w.broker.url)), "{second}");
    assert_ne!(second.lines().nth(2).unwrap(), token_before, "a 401 makes goauth fetch a new token");
    // Second call for another origin: nothing.
    let (code, out, _) = Gocred::run(&["goauth", "https://proxy.golang.org/x/@v/list"], &e);
    assert_eq!((code, out.as_str()), (0, ""));

    // git credential helper: Bearer with authtype capability, Basic otherwise, nothing for others.
    let run_cred = |input: &str| {
        let mut cmd = gocred_cmd(&["credential", "get"], &e);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, out) = run_cred(&format!("capability[]=authtype\nprotocol=https\nhost={hp}\n\n"));
    assert_eq!(code, 0);
    assert!(
        out.contains("authtype=Bearer") && out.contains("credential=") && out.contains("password_expiry_utc="),
        "{out}"
    );
    let (_, out) = run_cred(&format!("protocol=https\nhost={hp}\n\n"));
    assert!(out.contains("username=gocred") && out.contains("password=") && out.contains('~'), "{out}");
    let (code, out) = run_cred("protocol=https\nhost=github.com\n\n");
    assert_eq!((code, out.as_str()), (0, ""), "never answers for other hosts");

    // askpass: only the broker's prompts.
    let (code, out, _) = Gocred::run(&[&format!("Username for 'https://{hp}': ")], &e);
    assert_eq!((code, out.trim()), (0, "gocred"));
    let (code, _, err) = Gocred::run(&["Password for 'https://gocred@github.com': "], &e);
    assert_eq!(code, 1);
    assert!(err.contains("not for the gocred broker"), "{err}");

    // Logged out: one line, what to run, non-zero, nothing on stdout.
    let (code, _, _) = Gocred::run(&["logout"], &e);
    assert_eq!(code, 0);
    for args in
        [vec!["goauth"], vec!["netrc"], vec![&format!("Password for 'https://gocred@{hp}': ")[..]], vec!["token"]]
    {
        let (code, out, err) = Gocred::run(&args, &e);
        assert_eq!(code, 1, "{args:?}");
        assert!(out.is_empty(), "{args:?} printed a partial credential: {out}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].contains("gocred login"), "{args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_a_quick_502_naming_it_and_rotated_credentials_are_picked_up() {
    let mut w = world().await;
    let (token, proof) = alice_auth(&w);
    let c = client(Some(&w.ca));
    let get =
        |path: &str| c.get(format!("{}{path}", w.broker.url)).bearer_auth(&token).header("Gocred-Proof", &proof).send();
    let r = get("/mod/git.corp.test/acme/lib.git/@v/list").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("v1.0.0"));

    // Rotate the upstream credential: new password at the upstream and in OpenBao. The broker's
    // cached credential gets a 401, is read again once, and the request succeeds.
    let port: u16 = w.upstream.stdout()[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    w.upstream.kill();
    let srv = w.dir.path().join("srv");
    let layout = w.dir.path().join("direct-cache/cache/download");
    let mut up = Command::new("python3");
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args([
            "--port",
            &port.to_string(),
            "--user",
            UP_USER,
            "--password",
            "rotated-pass",
            "--bearer",
            "rotated-token",
        ])
        .arg("--git-root")
        .arg(&srv)
        .arg("--goproxy-root")
        .arg(&layout);
    let mut up2 = Proc::spawn("upstream2", up);
    up2.wait_stdout("listening", Duration::from_secs(10));
    w._bao.api("POST", "secret/data/upstreams/athens", serde_json::json!({"data": {"token": "rotated-token"}})).await;
    // A forced re-read happens at most every FORCED_REFRESH_MIN_AGE (5 s) per upstream.
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let r = get("/mod/git.corp.test/acme/lib.git/@v/v1.0.0.info").await.unwrap();
    assert_eq!(r.status(), 200, "rotated credential picked up: {}", r.text().await.unwrap());
    let auth_lines: Vec<String> = up2.stderr().into_iter().filter(|l| l.contains("v1.0.0.info")).collect();
    assert_eq!(auth_lines.len(), 2, "one 401 with the old credential, one retry: {auth_lines:?}");

    // Upstream gone: a 502 naming the upstream, quickly, as one plain-text line for go.
    up2.kill();
    let started = std::time::Instant::now();
    // (`@latest`, never fetched: `@v/list` is in the broker's list cache.)
    let r = get("/mod/git.corp.test/acme/lib.git/@latest").await.unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let body = r.text().await.unwrap();
    assert!(body.contains("upstream athens") && body.contains("unreachable"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn zip_of_200_mb_streams_with_flat_broker_memory() {
    let w = world().await;
    // A 200 MB version in the upstream's GOPROXY layout.
    let vdir = w.dir.path().join("direct-cache/cache/download/git.corp.test/acme/lib.git/@v");
    let big = vdir.join("v9.9.9.zip");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(200 * 1024 * 1024).unwrap();
    let (token, proof) = alice_auth(&w);
    let broker_pid = w.broker.proc.id();
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{broker_pid}/status")).unwrap();
        let kb = |k: &str| {
            s.lines().find(|l| l.starts_with(k)).unwrap().split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()
        };
        (kb("VmRSS:"), kb("VmHWM:"))
    };
    let (_, hwm_before) = rss();
    let c = client(Some(&w.ca));
    let mut r = c
        .get(format!("{}/mod/git.corp.test/acme/lib.git/@v/v9.9.9.zip", w.broker.url))
        .bearer_auth(&token)
        .header("Gocred-Proof", &proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut total = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        total += chunk.len() as u64;
    }
    assert_eq!(total, 200 * 1024 * 1024);
    let (_, hwm_after) = rss();
    let grew_mb = (hwm_after.saturating_sub(hwm_before)) / 1024;
    assert!(grew_mb < 40, "broker peak RSS grew by {grew_mb} MB for a 200 MB body");
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains(&format!("\"bytes\":{}", 200 * 1024 * 1024)), "audit has the byte count");
}

#[tokio::test(flavor = "multi_thread")]
async fn vend_mode_returns_the_credential_only_where_policy_allows() {
    let w = world().await;
    let (token, proof) = alice_auth(&w);
    let c = client(Some(&w.ca));
    let get = |url: &str| {
        c.get(format!("{}/v1/credentials", w.broker.url))
            .query(&[("url", url)])
            .bearer_auth(&token)
            .header("Gocred-Proof", &proof)
            .send()
    };
    let r = get("https://vend.example/acme/tool.git").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["username"], "x-access-token");
    assert_eq!(v["password"], "ghs_vended_secret");
    assert!(v["expires_at"].as_u64().unwrap() > now());
    let r = get("https://vend.example/other/tool").await.unwrap();
    assert_eq!(r.status(), 403);
    let body = r.text().await.unwrap();
    assert!(body.contains("credentials of vend.example/other/tool"), "{body}");
    assert!(!body.contains("ghs_vended_secret"));
    let r = get("https://git.corp.test/acme/lib").await.unwrap();
    assert_eq!(r.status(), 404, "proxied hosts are not vended");
    // Proxying a vend-only host is refused.
    let r = c
        .get(format!("{}/git/vend.example/acme/tool.git/info/refs?service=git-upload-pack", w.broker.url))
        .bearer_auth(&token)
        .header("Gocred-Proof", &proof)
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(!audit.contains("ghs_vended_secret"));
    assert!(audit.contains("\"action\":\"credentials\""), "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn setup_configures_go_and_git_idempotently_and_plain_go_then_works() {
    let w = world().await;
    let home = w.dir.path().join("home");
    let goenv = home.join("go.env");
    let gitcfg = home.join("gitconfig");
    let base = go_env(
        &w,
        "cache-setup",
        &[("GOENV", goenv.display().to_string()), ("GIT_CONFIG_GLOBAL", gitcfg.display().to_string())],
    );
    // A user's environment has none of the Go variables set: setup writes them to GOENV.
    let env: Vec<(String, String)> = base
        .into_iter()
        .filter(|(k, _)| !["GOPRIVATE", "GONOSUMDB", "GONOPROXY", "GOPROXY", "GOAUTH"].contains(&k.as_str()))
        .collect();
    let e = env_refs(&env);
    let (code, out, err) = Gocred::run(&["setup", "--dry-run", "--git"], &e);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("go env -w GOPRIVATE=git.corp.test,vend.example")
            && out.contains("GOAUTH=")
            && out.contains("insteadOf"),
        "{out}"
    );
    assert!(!goenv.exists() && !gitcfg.exists(), "dry run changed nothing");
    let (code, out, err) = Gocred::run(&["setup", "--git"], &e);
    assert_eq!(code, 0, "{out}{err}");
    let first = (std::fs::read_to_string(&goenv).unwrap(), std::fs::read_to_string(&gitcfg).unwrap());
    let (code, _, err) = Gocred::run(&["setup", "--git"], &e);
    assert_eq!(code, 0, "{err}");
    let second = (std::fs::read_to_string(&goenv).unwrap(), std::fs::read_to_string(&gitcfg).unwrap());
    assert_eq!(first, second, "setup is idempotent");
    assert!(second.1.contains(&format!("{}/git/git.corp.test/", w.broker.url)), "{}", second.1);
    // Plain `go get` with nothing but what setup wrote.
    let (ok, out, sum) = go_get(&w, "setup", &env, "git.corp.test/acme/lib.git");
    assert!(ok, "go after setup: {out}");
    assert_eq!(h1_of(&sum, "git.corp.test/acme/lib.git").as_deref(), Some(w.direct_sum.as_str()));
}

/// A CA and a server certificate for the IP address `ip`, written to `dir`; returns
/// (ca.pem, cert.pem, key.pem).
fn ip_cert(dir: &Path, ip: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_kp = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "e2e host CA");
    let ca_cert = ca_params.self_signed(&ca_kp).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_kp);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress(ip.parse().unwrap()));
    leaf.distinguished_name.push(rcgen::DnType::CommonName, ip);
    let leaf_kp = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_kp, &issuer).unwrap();
    let (ca, cert, key) = (dir.join("host-ca.pem"), dir.join("host.pem"), dir.join("host.key"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf_cert.pem()).unwrap();
    std::fs::write(&key, leaf_kp.serialize_pem()).unwrap();
    (ca, cert, key)
}

/// (e) Host-routed: the module `127.0.0.2/ip/lib` is named after the broker's own address (a
/// host name without DNS, PEERS.md option 2), served over TLS on 127.0.0.2:443. The broker
/// answers `?go-get=1` with go-import meta pointing back at itself (root taken from the
/// upstream's own go-get answer) and serves git smart HTTP for that host.
#[tokio::test(flavor = "multi_thread")]
async fn host_routed_go_import_and_git_over_tls() {
    let w = world().await;
    let d = w.dir.path();
    let ip = "127.0.0.2";
    let srv2 = d.join("srv2");
    // Served as `ip/lib.git` only, and `ip/plain` only (no `.git` alias, like many servers):
    // the broker must advertise whichever path the upstream advertises.
    make_repo(&srv2, "ip/lib", "127.0.0.2/ip/lib");
    make_bare(&srv2, "ip/plain", "127.0.0.2/ip/plain");
    let (host_ca, cert, key) = ip_cert(d, ip);
    let bundle = d.join("bundle.pem");
    std::fs::write(&bundle, std::fs::read_to_string(&host_ca).unwrap() + &std::fs::read_to_string(&w.ca).unwrap())
        .unwrap();

    // Direct download, the reference hash: the upstream itself on 127.0.0.2:443 over TLS, with
    // its credential in a netrc (go-get and git both read it).
    let mut up = Command::new("python3");
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args([
            "--bind",
            ip,
            "--port",
            "443",
            "--user",
            UP_USER,
            "--password",
            UP_PASS,
            "--go-import-host",
            ip,
            "--exact-repo-paths",
        ])
        .arg("--git-root")
        .arg(&srv2)
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    let mut direct_up = Proc::spawn("direct-upstream", up);
    direct_up.wait_stdout("listening", Duration::from_secs(10));
    let dhome = d.join("direct-home");
    std::fs::create_dir_all(&dhome).unwrap();
    std::fs::write(dhome.join(".netrc"), format!("machine {ip} login {UP_USER} password {UP_PASS}\n")).unwrap();
    let direct_sum = |module: &str| {
        let mut cmd = Command::new(go_bin());
        cmd.args(["mod", "download", "-json", &format!("{module}@v1.0.0")])
            .current_dir(d)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &dhome)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "direct")
            .env("GOPRIVATE", ip)
            .env("GOMODCACHE", d.join("direct-cache2"))
            .env("GOPATH", d.join("gopath"))
            .env("GOCACHE", d.join("gocache"))
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("SSL_CERT_FILE", &bundle)
            .env("GIT_SSL_CAINFO", &bundle)
            .env("GIT_TERMINAL_PROMPT", "0");
        let out = run_ok(&mut cmd);
        let direct: serde_json::Value = serde_json::from_str(&out).unwrap();
        direct["Sum"].as_str().unwrap().to_string()
    };
    let (direct_lib, direct_plain) = (direct_sum("127.0.0.2/ip/lib"), direct_sum("127.0.0.2/ip/plain"));
    direct_up.kill();

    // The same upstream, plain HTTP on a free port, behind a second broker on 127.0.0.2:443.
    let port = free_port();
    let mut up = Command::new("python3");
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args([
            "--port",
            &port.to_string(),
            "--user",
            UP_USER,
            "--password",
            UP_PASS,
            "--go-import-host",
            ip,
            "--exact-repo-paths",
        ])
        .arg("--git-root")
        .arg(&srv2);
    let mut upstream = Proc::spawn("upstream-ip", up);
    upstream.wait_stdout("listening", Duration::from_secs(10));
    std::fs::write(
        d.join("policies/ip.cedar"),
        "@id(\"alice-ip\")\npermit (principal == User::\"alice\", action == Action::\"download\", resource)\nwhen { resource.path like \"127.0.0.2/ip/*\" };\n",
    )
    .unwrap();
    let cfg = d.join("broker-ip.toml");
    let bao_addr = std::fs::read_to_string(d.join("broker.toml"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("address = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"{ip}:443\"\npublic_url = \"https://{ip}\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [secrets]\nbackend = \"vault\"\nprefix = \"gocred-ip\"\n[vault]\n{bao_addr}\n[vault.auth]\nmethod = \"token\"\ntoken = \"root\"\n\
             [ssh]\nauthorized_keys = \"authorized_keys\"\n[policy]\ndir = \"policies\"\n[audit]\npath = \"audit-ip.log\"\n\
             [[upstreams]]\nname = \"ip-git\"\nkind = \"git\"\nhosts = [\"{ip}\"]\nurl = \"http://127.0.0.1:{port}\"\ncredentials = \"vault:upstreams/corp-git\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let broker = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(broker.url, format!("https://{ip}:443"));

    let me = gocred_bin().display().to_string();
    let gitcfg = d.join("ip.gitconfig");
    std::fs::write(&gitcfg, format!("[credential \"https://{ip}\"]\n\thelper = \"{me} credential\"\n")).unwrap();
    let env = go_env(
        &w,
        "cache-ip",
        &[
            ("XDG_CACHE_HOME", d.join("ip-cache").display().to_string()),
            ("GOPROXY", "direct".into()),
            ("GOPRIVATE", ip.into()),
            ("GONOSUMDB", ip.into()),
            ("GOAUTH", format!("{me} goauth")),
            ("SSL_CERT_FILE", bundle.display().to_string()),
            ("GIT_SSL_CAINFO", bundle.display().to_string()),
            ("GIT_CONFIG_GLOBAL", gitcfg.display().to_string()),
        ],
    );
    let (code, out, err) = Gocred::run(
        &["login", "--ssh", w.key.to_str().unwrap(), "--broker", &format!("https://{ip}")],
        &env_refs(&env),
    );
    assert_eq!(code, 0, "{out}{err}");
    let (ok, out, sum) = go_get(&w, "ip", &env, "127.0.0.2/ip/lib");
    assert!(ok, "(e) host-routed: {out}");
    assert_eq!(h1_of(&sum, "127.0.0.2/ip/lib").as_deref(), Some(direct_lib.as_str()), "(e) hash: {sum}");
    let (ok, out, sum) = go_get(&w, "ip-plain", &env, "127.0.0.2/ip/plain");
    assert!(ok, "(e) host-routed, repository without .git: {out}");
    assert_eq!(h1_of(&sum, "127.0.0.2/ip/plain").as_deref(), Some(direct_plain.as_str()), "(e) hash: {sum}");
    // The broker asked the upstream for each repository under the name the upstream advertises.
    let reqs = upstream.stderr();
    assert!(reqs.iter().any(|l| l.contains("GET /ip/plain/info/refs")), "{reqs:#?}");
    assert!(!reqs.iter().any(|l| l.contains("/ip/plain.git/")), "{reqs:#?}");
    assert!(reqs.iter().any(|l| l.contains("GET /ip/lib.git/info/refs")), "{reqs:#?}");
    let audit = std::fs::read_to_string(d.join("audit-ip.log")).unwrap();
    assert!(audit.contains("\"upstream\":\"ip-git\"") && audit.contains("127.0.0.2/ip/lib"), "{audit}");
    // The broker fetched the upstream's own go-get answer with the upstream credential.
    assert!(
        upstream.stderr().iter().any(|l| l.contains("go-get=1") && l.contains("auth=Basic")),
        "{:#?}",
        upstream.stderr()
    );
}
