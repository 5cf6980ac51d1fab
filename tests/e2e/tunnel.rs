//! `gocred ssh-proxy`: git over SSH through the broker, two channels (the SSH key end to end to
//! a real sshd, a token + proof to the broker). `git clone` and `go mod download` through the
//! tunnel; no token, no proof, a revoked token, a target that is not configured, a wrong port and
//! a policy denial never reach the sshd; a revoked session's open tunnel is closed.

use crate::harness::*;
use crate::proxy::{go_bin, make_bare};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HOST: &str = "git.corp.test";
const MODULE: &str = "git.corp.test/acme/lib.git";

struct Tunnelled {
    b: SshBroker,
    sshd: Sshd,
    home: PathBuf,
    key: PathBuf,
    known_hosts: PathBuf,
    repos: PathBuf,
}

fn current_user() -> String {
    run_ok(Command::new("id").arg("-un")).trim().to_string()
}

async fn setup() -> Tunnelled {
    setup_with("").await
}

/// With `tokens` TOML lines (e.g. a short `ttl`).
async fn setup_with(tokens: &str) -> Tunnelled {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let repos = d.join("repos");
    make_bare(&repos, "acme/lib.git", MODULE);
    let sshd = Sshd::start(&d.join("sshd")).await;
    // Policies: the shipped set, plus tunnels for developers to git.corp.test and a named ban.
    let pol = d.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    for e in std::fs::read_dir(repo_root().join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pol.join(e.file_name())).unwrap();
    }
    std::fs::write(
        pol.join("tunnel.cedar"),
        "@id(\"developers-tunnel-test\")\npermit (principal in Group::\"developers\", action == Action::\"tunnel\", resource)\n\
         when { resource.folded_path == \"git.corp.test\" };\n\
         @id(\"carol-no-tunnel\")\nforbid (principal == User::\"carol\", action == Action::\"tunnel\", resource);\n",
    )
    .unwrap();
    let extra = format!(
        "[limits]\ntunnels_per_principal = 2\n[[upstreams]]\nname = \"corp-ssh\"\nkind = \"git\"\nhosts = [\"{HOST}\"]\nurl = \"https://127.0.0.1:9\"\n\
         ssh = \"127.0.0.1:{}\"\nssh_user = \"{}\"\nssh_path = \"{}/\"\n",
        sshd.port,
        current_user(),
        repos.display()
    );
    let b = SshBroker::start_in(dir, tokens, &extra);
    let key = b.add_user_key("alice", "alice", "ed25519");
    sshd.authorize(&key);
    let home = b.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let known_hosts = b.path("known_hosts");
    std::fs::write(&known_hosts, format!("{HOST} {}\n", sshd.host_key_pub)).unwrap();
    Tunnelled { b, sshd, home, key, known_hosts, repos }
}

impl Tunnelled {
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.b.client_env(&self.home, None);
        let path = format!(
            "{}:{}:{}",
            go_bin().parent().unwrap().display(),
            gocred_bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        env.push(("PATH".into(), path));
        env
    }

    /// ssh as git runs it: the config `gocred setup --ssh` wrote, the user's key, our known_hosts.
    fn ssh_command(&self, extra: &str) -> String {
        format!(
            "ssh -F {} -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} -o BatchMode=yes {extra}",
            self.home.join(".ssh/config").display(),
            self.key.display(),
            self.known_hosts.display()
        )
    }

    fn login(&self) {
        let (code, out, err) = self.b.cli(
            &["login", "--ssh", self.key.to_str().unwrap(), "--broker", &self.b.g.url, "--user", "alice"],
            &self.env(),
        );
        assert_eq!(code, 0, "{out}{err}");
    }

    fn token(&self) -> String {
        let s: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.home.join(".cache/gocred/session.json")).unwrap()).unwrap();
        s["token"].as_str().unwrap().to_string()
    }

    /// `go mod download -json MODULE@v1.0.0` with GOPROXY=direct; the `Sum`.
    fn go_download(&self, name: &str, ssh: &str) -> String {
        let app = self.b.path(&format!("app-{name}"));
        std::fs::create_dir_all(&app).unwrap();
        std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.21\n").unwrap();
        let mut cmd = Command::new(go_bin());
        cmd.current_dir(&app).args(["mod", "download", "-json", &format!("{MODULE}@v1.0.0")]);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let d = self.b.dir.path();
        cmd.env("GOPROXY", "direct")
            .env("GOPRIVATE", HOST)
            .env("GOFLAGS", "-mod=mod")
            .env("GOTOOLCHAIN", "local")
            .env("GOMODCACHE", d.join(format!("modcache-{name}")))
            .env("GOPATH", d.join("gopath"))
            .env("GOCACHE", d.join("gocache"))
            .env("GIT_SSH_COMMAND", ssh);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "go mod download ({name}) failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["Sum"].as_str().unwrap().to_string()
    }

    /// `GET /v1/tunnel` with the upgrade headers and `headers`; (status, body).
    async fn raw_tunnel(&self, query: &str, headers: &[(&str, String)]) -> (u16, String) {
        gocred::install_crypto_provider();
        let http = reqwest::Client::builder().http1_only().build().unwrap();
        let mut req = http
            .get(format!("{}/v1/tunnel?{query}", self.b.g.url))
            .header("connection", "upgrade")
            .header("upgrade", "gocred-tunnel");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    fn bearer(&self, token: &str) -> Vec<(&'static str, String)> {
        let proof = self.b.proof(token, &self.key, &format!("{}/", self.b.g.url), now() + 300);
        vec![("authorization", format!("Bearer {token}")), ("gocred-proof", proof)]
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn documented_flow_clones_and_go_downloads_through_the_tunnel_matching_direct() {
    let t = setup().await;
    // docs/ssh-tunnel.md's commands, as written (its host names mapped to this test's).
    let doc = std::fs::read_to_string(repo_root().join("docs/ssh-tunnel.md")).unwrap();
    let block = doc.split("## Use\n\n```sh\n").nth(1).and_then(|r| r.split("```").next()).expect("a sh block");
    let lines: Vec<String> = block
        .lines()
        .map(|l| l.replace("https://gocred.corp.example", &t.b.g.url).replace("git.corp.example", HOST))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let ssh_dir = t.home.join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(&t.key, ssh_dir.join("id_ed25519")).unwrap();
    std::fs::copy(format!("{}.pub", t.key.display()), ssh_dir.join("id_ed25519.pub")).unwrap();
    std::fs::write(ssh_dir.join("config"), "Host *\n    ServerAliveInterval 30\n").unwrap();
    let work = t.b.path("work");
    std::fs::create_dir_all(&work).unwrap();
    let before = t.sshd.connections();
    for line in &lines {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", line]).current_dir(&work).stdin(Stdio::null());
        for (k, v) in t.env() {
            cmd.env(k, v);
        }
        // ssh reads the passwd home's config, not $HOME's: point it at the one setup wrote.
        cmd.env("GIT_SSH_COMMAND", t.ssh_command(""));
        let out = cmd.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "docs/ssh-tunnel.md: `{line}` failed: {text}");
        if line.contains("--dry-run") {
            assert!(
                text.contains(&format!("Host {HOST}\n    ProxyCommand ")) && text.contains("ssh-proxy %h %p"),
                "{text}"
            );
            let cfg = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
            assert!(!cfg.contains("gocred"), "the dry run changed ~/.ssh/config: {cfg}");
        }
    }
    assert!(work.join("lib/lib.go").exists(), "the documented clone did not check out");
    assert_eq!(t.sshd.connections(), before + 1, "the clone reached the sshd through the tunnel");
    // Idempotent: a second setup leaves one block, first, and the user's entries after it.
    let (code, out, err) = t.b.cli(&["setup", "--ssh"], &t.env());
    assert_eq!(code, 0, "{out}{err}");
    let cfg = std::fs::read_to_string(ssh_dir.join("config")).unwrap();
    assert_eq!(cfg.matches("# BEGIN gocred").count(), 1, "{cfg}");
    assert!(cfg.starts_with("# BEGIN gocred") && cfg.ends_with("Host *\n    ServerAliveInterval 30\n"), "{cfg}");
    let gitcfg = std::fs::read_to_string(t.home.join(".gitconfig")).unwrap();
    assert!(gitcfg.contains(&format!("ssh://{}@{HOST}{}/", current_user(), t.repos.display())), "{gitcfg}");
    let audit = t.b.audit_has("tunnel close", |l| {
        l["kind"] == "tunnel" && l["reason"].as_str().is_some_and(|r| r.starts_with("tunnel closed:"))
    });
    assert!(audit["bytes"].as_u64().unwrap() > 1000, "{audit}");
    assert_eq!(audit["principal"], "user:alice");

    // go mod download through the tunnel and directly (same ssh, no ProxyCommand): same sums.
    let via = t.go_download("tunnel", &t.ssh_command(""));
    let direct = t.go_download(
        "direct",
        &t.ssh_command(&format!(
            "-o ProxyCommand=none -o HostName=127.0.0.1 -o HostKeyAlias={HOST} -p {}",
            t.sshd.port
        )),
    );
    assert_eq!(via, direct);
    assert!(via.starts_with("h1:"), "{via}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_tunnels_never_reach_the_sshd_and_a_revoked_session_closes_its_tunnel() {
    let t = setup().await;
    // No session at all: one line, non-zero, before any connection.
    let empty = t.b.path("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, _, err) = t.b.cli(&["ssh-proxy", HOST, "22"], &t.b.client_env(&empty, None));
    assert_ne!(code, 0);
    assert!(err.contains("not logged in") && err.lines().count() == 1, "{err}");

    t.login();
    let token = t.token();
    let q = format!("host={HOST}&port=22");
    let (st, body) = t.raw_tunnel(&q, &[]).await;
    assert_eq!(st, 401, "no token: {body}");
    let (st, body) = t.raw_tunnel(&q, &[("authorization", format!("Bearer {token}"))]).await;
    assert_eq!(st, 401, "token without proof: {body}");
    assert!(body.contains("proof"), "{body}");
    let (st, body) = t.raw_tunnel("host=other.corp.test&port=22", &t.bearer(&token)).await;
    assert_eq!(st, 404, "not configured: {body}");
    assert!(body.contains("no SSH tunnel target is configured for `other.corp.test`"), "{body}");
    let (st, body) = t.raw_tunnel(&format!("host={HOST}&port=2222"), &t.bearer(&token)).await;
    assert_eq!(st, 400, "wrong port: {body}");
    let (st, body) = t.raw_tunnel(&q, &[("authorization", format!("Bearer {token}"))]).await;
    assert_eq!(st, 401, "{body}");
    // The CLI says why in one line for a target the broker does not tunnel to.
    let (code, _, err) = t.b.cli(&["ssh-proxy", "other.corp.test", "22"], &t.env());
    assert_ne!(code, 0);
    assert!(err.contains("no SSH tunnel target") && err.lines().count() == 1, "{err}");

    // Denied by policy, naming it.
    let carol = t.b.add_user_key("carol", "carol", "ed25519");
    let (st, login) = t.b.api_login("carol", &carol).await;
    assert_eq!(st, 200, "{login}");
    let ctoken = login["access_token"].as_str().unwrap().to_string();
    let proof = t.b.proof(&ctoken, &carol, &format!("{}/", t.b.g.url), now() + 300);
    let (st, body) = t.raw_tunnel(&q, &[("authorization", format!("Bearer {ctoken}")), ("gocred-proof", proof)]).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("forbidden by policy carol-no-tunnel: tunnel of git.corp.test for user:carol"), "{body}");

    // A revoked token.
    let (st, login) = t.b.api_login("alice", &t.key).await;
    assert_eq!(st, 200);
    let other = login["access_token"].as_str().unwrap().to_string();
    let revoke = client(None)
        .post(format!("{}/v1/revoke", t.b.g.url))
        .headers({
            let mut h = reqwest::header::HeaderMap::new();
            for (k, v) in t.bearer(&other) {
                h.insert(k, v.parse().unwrap());
            }
            h
        })
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 200);
    let (st, body) = t.raw_tunnel(&q, &t.bearer(&other)).await;
    assert_eq!(st, 401, "revoked: {body}");
    assert!(body.contains("revoked"), "{body}");
    assert_eq!(t.sshd.connections(), 0, "a refused tunnel reached the sshd: {:#?}", t.sshd.proc.stderr());

    // An open tunnel (the sshd's banner came through) is closed when its session is revoked.
    let mut cmd = Command::new(gocred_bin());
    cmd.args(["ssh-proxy", HOST, "22"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in t.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let _stdin = child.stdin.take().unwrap(); // kept open: only the broker may end this tunnel
    let mut stdout = child.stdout.take().unwrap();
    let mut banner = [0u8; 8];
    stdout.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    // sshd logs the connection a moment after it sent its banner.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while t.sshd.connections() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(t.sshd.connections(), 1);
    let (code, out, err) = t.b.cli(&["logout"], &t.env());
    assert_eq!(code, 0, "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "the tunnel outlived its revoked session");
        std::thread::sleep(Duration::from_millis(50));
    }
    t.b.audit_has("revoked tunnel", |l| {
        l["kind"] == "tunnel" && l["reason"].as_str().is_some_and(|r| r.starts_with("tunnel session revoked"))
    });

    // limits.tunnels_per_principal = 2: a third open tunnel is refused with 429.
    t.login();
    let token = t.token();
    let open_one = || {
        let mut cmd = Command::new(gocred_bin());
        cmd.args(["ssh-proxy", HOST, "22"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        for (k, v) in t.env() {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut banner = [0u8; 8];
        child.stdout.as_mut().unwrap().read_exact(&mut banner).unwrap();
        assert_eq!(&banner, b"SSH-2.0-");
        child
    };
    let mut open = vec![open_one(), open_one()];
    let (st, body) = t.raw_tunnel(&q, &t.bearer(&token)).await;
    assert_eq!(st, 429, "{body}");
    assert!(body.contains("limits.tunnels_per_principal = 2"), "{body}");
    for c in &mut open {
        c.kill().unwrap();
        c.wait().unwrap();
    }

    // The SSH server down: one line naming the upstream, not its address.
    let _ = Command::new("kill").arg(t.sshd.proc.id().to_string()).status();
    std::thread::sleep(Duration::from_millis(200));
    let (code, _, err) = t.b.cli(&["ssh-proxy", HOST, "22"], &t.env());
    assert_ne!(code, 0);
    assert!(err.contains("upstream corp-ssh: SSH server unreachable") && err.lines().count() == 1, "{err}");
    assert!(!err.contains("127.0.0.1"), "the SSH server's address leaked to the caller: {err}");
}

/// A bare repository of at least `mb` MiB of incompressible data at `repos/<name>`.
fn big_repo(repos: &std::path::Path, name: &str, mb: usize) {
    let work = repos.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    let mut data = vec![0u8; mb << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        // xorshift64*: fast, incompressible enough for git's zlib.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    std::fs::write(work.join("blob.bin"), &data).unwrap();
    let git =
        |args: &[&str]| run_ok(Command::new("git").args(args).current_dir(&work).env("GIT_CONFIG_GLOBAL", "/dev/null"));
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "."]);
    git(&["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "big"]);
    run_ok(
        Command::new("git")
            .args(["clone", "-q", "--bare"])
            .arg(&work)
            .arg(repos.join(name))
            .env("GIT_CONFIG_GLOBAL", "/dev/null"),
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// Benchmark (BENCHMARKS.md): `git clone` of a 24 MiB repository over SSH directly and through
/// the tunnel, alternating, in the same run; prints both and the ratio of the medians. The
/// assertion is loose (CI machines are noisy); the recorded figure is the printed ratio.
#[tokio::test(flavor = "multi_thread")]
async fn bench_git_clone_over_ssh_direct_vs_tunnel() {
    let t = setup().await;
    big_repo(&t.repos, "big.git", 24);
    t.login();
    let (code, out, err) = t.b.cli(&["setup", "--ssh"], &t.env());
    assert_eq!(code, 0, "{out}{err}");
    let clone = |name: &str, ssh: String| {
        let dest = t.b.path(name);
        let started = Instant::now();
        let mut cmd = Command::new("git");
        cmd.args(["clone", "-q", &format!("https://{HOST}/big.git")]).arg(&dest);
        for (k, v) in t.env() {
            cmd.env(k, v);
        }
        let out = cmd.env("GIT_SSH_COMMAND", ssh).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let took = started.elapsed();
        std::fs::remove_dir_all(&dest).unwrap();
        took
    };
    let direct_ssh =
        t.ssh_command(&format!("-o ProxyCommand=none -o HostName=127.0.0.1 -o HostKeyAlias={HOST} -p {}", t.sshd.port));
    let runs = std::env::var("GOCRED_BENCH_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(3usize);
    let (mut direct, mut tunnel) = (Vec::new(), Vec::new());
    for i in 0..runs {
        direct.push(clone(&format!("direct-{i}"), direct_ssh.clone()));
        tunnel.push(clone(&format!("tunnel-{i}"), t.ssh_command("")));
    }
    direct.sort();
    tunnel.sort();
    let (d, tu) = (direct[runs / 2], tunnel[runs / 2]);
    let ratio = tu.as_secs_f64() / d.as_secs_f64();
    println!(
        "git clone 24 MiB over SSH, median of {runs}: direct {:.0} ms, through the tunnel {:.0} ms, ratio {ratio:.3}x",
        d.as_secs_f64() * 1000.0,
        tu.as_secs_f64() * 1000.0
    );
    assert!(ratio < 2.0, "the tunnel is {ratio:.2}x slower than direct SSH");
}

/// An open tunnel ends when access is withdrawn mid-session: here the user's key is removed from
/// the broker's authorized keys (re-checked at least every token lifetime, 3 s here).
#[tokio::test(flavor = "multi_thread")]
async fn an_open_tunnel_closes_when_the_key_is_no_longer_authorized() {
    let t = setup_with("ttl = \"3s\"").await;
    t.login();
    let mut cmd = Command::new(gocred_bin());
    cmd.args(["ssh-proxy", HOST, "22"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in t.env() {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let _stdin = child.stdin.take().unwrap();
    let mut banner = [0u8; 8];
    child.stdout.as_mut().unwrap().read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    std::fs::write(SshBroker::keys_dir(t.b.dir.path()).join("alice"), "").unwrap();
    let removed = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        assert!(removed.elapsed() < Duration::from_secs(6), "the tunnel outlived the removed key");
        std::thread::sleep(Duration::from_millis(100));
    }
    t.b.audit_has("withdrawn", |l| {
        l["kind"] == "tunnel" && l["reason"].as_str().is_some_and(|r| r.starts_with("tunnel access withdrawn"))
    });
}
