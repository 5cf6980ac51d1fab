//! Ambient workload credentials: an OIDC token the environment already holds, exchanged at the
//! broker (`POST /v1/token`, RFC 8693) without a login step.
//!
//! Sources, first match wins:
//! 1. a token file (`--token-file` / `GOCRED_TOKEN_FILE`, e.g. a Kubernetes projected
//!    service-account token) — re-read on every exchange, because kubelet rotates it;
//! 2. an environment variable holding the token (`--token-env VAR` / `GOCRED_TOKEN_ENV=VAR`, or
//!    `GOCRED_ID_TOKEN` itself — GitLab CI `id_tokens:`);
//! 3. GitHub Actions (`ACTIONS_ID_TOKEN_REQUEST_URL` + `ACTIONS_ID_TOKEN_REQUEST_TOKEN`), asked
//!    for audience `gocred` (or `GOCRED_AUDIENCE`).
//!
//! Must not: print, log or put a token in an error message.

use super::ClientError;
use std::path::PathBuf;
use std::time::Duration;

/// Where a workload token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Env(String),
    GitHubActions { url: String, audience: String },
}

/// The default audience asked for (GitHub Actions) and expected by the broker's CI issuers.
pub const DEFAULT_AUDIENCE: &str = "gocred";

impl Source {
    /// The source configured by flags (`file`, `env`) or, failing that, by the environment.
    pub fn detect(file: Option<PathBuf>, env: Option<String>) -> Option<Source> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(f) = file.or_else(|| var("GOCRED_TOKEN_FILE").map(PathBuf::from)) {
            return Some(Source::File(f));
        }
        if let Some(e) = env.or_else(|| var("GOCRED_TOKEN_ENV")) {
            return Some(Source::Env(e));
        }
        if var("GOCRED_ID_TOKEN").is_some() {
            return Some(Source::Env("GOCRED_ID_TOKEN".into()));
        }
        if let (Some(url), Some(_)) = (var("ACTIONS_ID_TOKEN_REQUEST_URL"), var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")) {
            let audience = var("GOCRED_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.into());
            return Some(Source::GitHubActions { url, audience });
        }
        None
    }

    pub fn describe(&self) -> String {
        match self {
            Source::File(p) => format!("file {}", p.display()),
            Source::Env(v) => format!("env {v}"),
            Source::GitHubActions { .. } => "GitHub Actions OIDC".into(),
        }
    }

    fn err(&self, reason: impl Into<String>) -> ClientError {
        ClientError::Ambient { source_name: self.describe(), reason: reason.into() }
    }

    /// Read the current token.
    pub async fn token(&self) -> Result<String, ClientError> {
        let t = match self {
            Source::File(p) => std::fs::read_to_string(p).map_err(|e| self.err(e.to_string()))?,
            Source::Env(v) => std::env::var(v).map_err(|_| self.err("not set"))?,
            Source::GitHubActions { url, audience } => {
                crate::install_crypto_provider();
                if !crate::proto::rules::secure_url(url) {
                    return Err(self.err("ACTIONS_ID_TOKEN_REQUEST_URL is not https"));
                }
                let bearer = std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
                    .map_err(|_| self.err("ACTIONS_ID_TOKEN_REQUEST_TOKEN is not set"))?;
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| self.err(e.to_string()))?;
                let resp = http
                    .get(url)
                    .query(&[("audience", audience.as_str())])
                    .bearer_auth(bearer)
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| self.err(crate::error_chain(&e)))?;
                if !resp.status().is_success() {
                    return Err(self.err(format!("token request answered {}", resp.status())));
                }
                #[derive(serde::Deserialize)]
                struct Answer {
                    value: String,
                }
                let a: Answer = resp.json().await.map_err(|e| self.err(format!("unexpected answer: {e}")))?;
                a.value
            }
        };
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(self.err("the token is empty"));
        }
        Ok(t)
    }
}
