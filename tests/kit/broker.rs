//! Spawning `gocred serve` (plain, or with SSH login configured around a temp dir) and talking to
//! it: HTTP clients trusting its CA, the login challenge, the RFC 8693 exchange.

use super::*;

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
        Self::start_in_env(dir, tokens, extra, &[])
    }

    /// [`Self::start_in`] with extra environment for the broker process.
    pub fn start_in_env(dir: tempfile::TempDir, tokens: &str, extra: &str, env: &[(&str, &str)]) -> SshBroker {
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
        // Another backend chosen by the environment: the file's own key would be refused.
        let secrets = match env.iter().any(|(k, _)| *k == "GOCRED_SECRETS__BACKEND") {
            true => "[secrets]\n",
            false => "[secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n",
        };
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n[tokens]\n{tokens}\n\
                 {secrets}\
                 [ssh]\nauthorized_keys = \"authorized_keys\"\ntrusted_user_ca_keys = [\"ca.pub\"]\n{extra}\n\
                 [ssh.groups]\nalice = [\"developers\"]\n\
                 [policy]\ndir = \"policies\"\n[audit]\npath = \"audit.log\"\n",
            ),
        )
        .unwrap();
        use base64::Engine;
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(file_key);
        let mut all = vec![("GOCRED_FILE_KEY", key_b64.as_str())];
        all.extend_from_slice(env);
        let g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &all);
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
