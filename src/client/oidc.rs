//! The client side of SSO: talking to the identity provider as a public OAuth client.
//! Authorization code + PKCE (RFC 7636) on a loopback redirect (RFC 8252 §7.3), the device
//! authorization grant (RFC 8628: interval, `slow_down`, expiry), and refresh tokens.
//!
//! Must not: print to the terminal (callers get the URL / user code and decide what to show),
//! or put a token, code or verifier in an error message.

use super::ClientError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An identity provider's endpoints, from its discovery document.
pub struct Provider {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: String,
    pub device_authorization_endpoint: Option<String>,
    http: reqwest::Client,
}

/// What the IdP answered to a code exchange, device poll or refresh.
pub struct IdpTokens {
    pub id_token: String,
    pub refresh_token: Option<String>,
}

/// An RFC 8628 device authorization.
#[derive(Clone, Deserialize)]
pub struct DeviceAuth {
    device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceAuth")
            .field("device_code", &"[REDACTED]")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

fn idp_err(issuer: &str, reason: impl Into<String>) -> ClientError {
    ClientError::Idp { issuer: issuer.to_string(), reason: reason.into() }
}

/// A PKCE verifier/challenge pair and a `state` value.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
    pub state: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        use sha2::Digest;
        let verifier = B64URL.encode(crate::random_bytes::<32>());
        let challenge = B64URL.encode(sha2::Sha256::digest(verifier.as_bytes()));
        Pkce { verifier, challenge, state: B64URL.encode(crate::random_bytes::<16>()) }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

impl Provider {
    /// Read `<issuer>/.well-known/openid-configuration`.
    pub async fn discover(
        issuer: &str,
        client_id: &str,
        scopes: Vec<String>,
        ca: Option<&Path>,
    ) -> Result<Provider, ClientError> {
        crate::install_crypto_provider();
        if !crate::proto::rules::secure_url(issuer) {
            return Err(idp_err(issuer, "the issuer must be https:// (http:// only to a loopback address)"));
        }
        let mut b = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = ca
            && let Ok(pem) = std::fs::read(ca)
            && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
        {
            b = b.tls_certs_merge(certs);
        }
        let http = b.build().map_err(|e| idp_err(issuer, e.to_string()))?;
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let resp = http.get(&url).send().await.map_err(|e| idp_err(issuer, crate::error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(idp_err(issuer, format!("discovery answered {}", resp.status())));
        }
        let doc: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| idp_err(issuer, format!("discovery document: {}", crate::error_chain(&e))))?;
        let get = |k: &str| doc.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if get("issuer").as_deref() != Some(issuer) {
            return Err(idp_err(issuer, "the discovery document names another issuer"));
        }
        for k in ["authorization_endpoint", "token_endpoint", "device_authorization_endpoint"] {
            if let Some(u) = get(k)
                && !crate::proto::rules::secure_url(&u)
            {
                return Err(idp_err(issuer, format!("{k} is not https")));
            }
        }
        Ok(Provider {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            scopes,
            authorization_endpoint: get("authorization_endpoint"),
            token_endpoint: get("token_endpoint").ok_or_else(|| idp_err(issuer, "no token_endpoint"))?,
            device_authorization_endpoint: get("device_authorization_endpoint"),
            http,
        })
    }

    /// Where to send the user's browser for a PKCE login.
    pub fn authorization_url(&self, pkce: &Pkce, redirect_uri: &str) -> Result<String, ClientError> {
        let base = self
            .authorization_endpoint
            .as_deref()
            .ok_or_else(|| idp_err(&self.issuer, "the provider has no authorization_endpoint (try --device)"))?;
        let mut params = vec![
            ("response_type", "code".to_string()),
            ("client_id", self.client_id.clone()),
            ("redirect_uri", redirect_uri.to_string()),
            ("scope", self.scopes.join(" ")),
            ("state", pkce.state.clone()),
            ("code_challenge", pkce.challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
        ];
        if self.scopes.iter().any(|s| s == "offline_access") {
            // Providers only grant offline_access (a refresh token) with explicit consent.
            params.push(("prompt", "consent".to_string()));
        }
        let q = serde_urlencoded::to_string(&params).map_err(|e| idp_err(&self.issuer, e.to_string()))?;
        Ok(format!("{base}{}{q}", if base.contains('?') { '&' } else { '?' }))
    }

    async fn token_request(&self, form: &[(&str, &str)]) -> Result<Result<IdpTokens, OAuthError>, ClientError> {
        let resp = self
            .http
            .post(&self.token_endpoint)
            .form(form)
            .send()
            .await
            .map_err(|e| idp_err(&self.issuer, crate::error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| idp_err(&self.issuer, crate::error_chain(&e)))?;
        if !status.is_success() {
            return match serde_json::from_slice::<OAuthError>(&bytes) {
                Ok(e) => Ok(Err(e)),
                Err(_) => Err(idp_err(&self.issuer, format!("token endpoint answered {status}"))),
            };
        }
        let t: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|e| idp_err(&self.issuer, format!("token answer: {e}")))?;
        let id_token =
            t.id_token.ok_or_else(|| idp_err(&self.issuer, "no id_token in the answer (is `openid` in scopes?)"))?;
        Ok(Ok(IdpTokens { id_token, refresh_token: t.refresh_token }))
    }

    fn describe(&self, e: OAuthError) -> ClientError {
        let desc: String = e.error_description.unwrap_or_default().chars().take(200).collect();
        idp_err(&self.issuer, if desc.is_empty() { e.error } else { format!("{}: {desc}", e.error) })
    }

    /// Trade an authorization code for tokens.
    pub async fn exchange_code(&self, code: &str, pkce: &Pkce, redirect_uri: &str) -> Result<IdpTokens, ClientError> {
        self.token_request(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("client_id", &self.client_id),
            ("code_verifier", &pkce.verifier),
        ])
        .await?
        .map_err(|e| self.describe(e))
    }

    /// A new ID token from a refresh token.
    pub async fn refresh(&self, refresh_token: &str) -> Result<IdpTokens, ClientError> {
        let scope = self.scopes.join(" ");
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", self.client_id.as_str()),
        ];
        if !scope.is_empty() {
            form.push(("scope", scope.as_str()));
        }
        let mut t = self.token_request(&form).await?.map_err(|e| self.describe(e))?;
        // Providers that do not rotate refresh tokens keep the old one valid.
        if t.refresh_token.is_none() {
            t.refresh_token = Some(refresh_token.to_string());
        }
        Ok(t)
    }

    /// Start a device authorization (RFC 8628 §3.1).
    pub async fn device_start(&self) -> Result<DeviceAuth, ClientError> {
        let url = self
            .device_authorization_endpoint
            .as_deref()
            .ok_or_else(|| idp_err(&self.issuer, "the provider does not support the device flow (try --oidc)"))?;
        let scope = self.scopes.join(" ");
        let resp = self
            .http
            .post(url)
            .form(&[("client_id", self.client_id.as_str()), ("scope", scope.as_str())])
            .send()
            .await
            .map_err(|e| idp_err(&self.issuer, crate::error_chain(&e)))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| idp_err(&self.issuer, crate::error_chain(&e)))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<OAuthError>(&bytes) {
                Ok(e) => self.describe(e),
                Err(_) => idp_err(&self.issuer, format!("device authorization answered {status}")),
            });
        }
        let d: DeviceAuth = serde_json::from_slice(&bytes)
            .map_err(|e| idp_err(&self.issuer, format!("device authorization answer: {e}")))?;
        if !crate::proto::rules::secure_url(&d.verification_uri)
            || d.verification_uri_complete.as_deref().is_some_and(|u| !crate::proto::rules::secure_url(u))
        {
            return Err(idp_err(&self.issuer, "the verification URI is not https"));
        }
        Ok(d)
    }

    /// Poll until the user approves (RFC 8628 §3.4/3.5): waits `interval` between polls, adds
    /// 5 s on `slow_down`, and gives up when the code expires or the user denies. `on_slow_down`
    /// is told the new interval.
    pub async fn device_poll(
        &self,
        d: &DeviceAuth,
        mut on_slow_down: impl FnMut(u64),
    ) -> Result<IdpTokens, ClientError> {
        let mut interval = d.interval.unwrap_or(5).max(1);
        let deadline = std::time::Instant::now() + Duration::from_secs(d.expires_in.max(1));
        loop {
            if std::time::Instant::now() + Duration::from_secs(interval) > deadline {
                return Err(idp_err(
                    &self.issuer,
                    format!("the device code expired after {}s without approval; run the login again", d.expires_in),
                ));
            }
            tokio::time::sleep(Duration::from_secs(interval)).await;
            let answer = self
                .token_request(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", &d.device_code),
                    ("client_id", &self.client_id),
                ])
                .await?;
            match answer {
                Ok(t) => return Ok(t),
                Err(e) if e.error == "authorization_pending" => {}
                Err(e) if e.error == "slow_down" => {
                    interval += 5;
                    on_slow_down(interval);
                }
                Err(e) if e.error == "expired_token" => {
                    return Err(idp_err(&self.issuer, "the device code expired; run the login again"));
                }
                Err(e) if e.error == "access_denied" => {
                    return Err(idp_err(&self.issuer, "the login was denied"));
                }
                Err(e) => return Err(self.describe(e)),
            }
        }
    }
}

/// A loopback listener for the redirect: `127.0.0.1:port`, or the next free port.
pub async fn bind_loopback(start: u16) -> Result<(tokio::net::TcpListener, u16), ClientError> {
    let mut last = None;
    for port in start..start.saturating_add(20) {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => {
                let port = l.local_addr().map(|a| a.port()).unwrap_or(port);
                return Ok((l, port));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(ClientError::Idp {
        issuer: "loopback".into(),
        reason: format!(
            "no free port in 127.0.0.1:{start}-{}: {}",
            start.saturating_add(19),
            last.map(|e| e.to_string()).unwrap_or_default()
        ),
    })
}

/// Wait for the browser to come back to `/callback` with our `state`; returns the code.
/// Requests for other paths (favicon, ...) are answered 404 and ignored.
pub async fn wait_for_code(
    listener: &tokio::net::TcpListener,
    state: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let fail = |reason: String| ClientError::Idp { issuer: "login".into(), reason };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (mut sock, _) = tokio::time::timeout_at(deadline, listener.accept())
            .await
            .map_err(|_| fail(format!("no answer from the browser within {}s", timeout.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut n = 0;
        // A connection gets 5 s in all to send its request head (a stalled or idle socket cannot
        // hold up the login).
        let conn_deadline = deadline.min(tokio::time::Instant::now() + Duration::from_secs(5));
        while n < buf.len() {
            let read = match tokio::time::timeout_at(conn_deadline, sock.read(&mut buf[n..])).await {
                Ok(Ok(r)) => r,
                _ => break,
            };
            if read == 0 {
                break;
            }
            n += read;
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let target = head.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("").to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path != "/callback" {
            let _ = sock.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let (status, text, result) = if get("state").as_deref() != Some(state) {
            ("400 Bad Request", "gocred: this answer does not belong to the login in progress.", None)
        } else if let Some(e) = get("error") {
            let desc: String = get("error_description").unwrap_or_default().chars().take(200).collect();
            (
                "400 Bad Request",
                "gocred: the identity provider refused the login; see the terminal.",
                Some(Err(fail(format!("the identity provider refused: {e} {desc}").trim().to_string()))),
            )
        } else if let Some(code) = get("code") {
            ("200 OK", "gocred: you are logged in. You can close this window.", Some(Ok(code)))
        } else {
            ("400 Bad Request", "gocred: no code in the answer.", None)
        };
        let body = format!("<!doctype html><title>gocred</title><p>{text}</p>\n");
        let resp = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(resp.as_bytes()).await;
        let _ = sock.shutdown().await;
        if let Some(r) = result {
            return r;
        }
    }
}
