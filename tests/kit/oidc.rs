//! Identity providers that are real peers: OpenBao's OIDC provider for workload tokens, and
//! oidc-provider (npm) for people.

use super::*;

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
