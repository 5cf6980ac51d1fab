//! The broker's HTTP API as the client uses it.

use super::ClientError;
use super::signer::Signer;
use crate::proto::error::ErrorBody;
use crate::proto::login::{Challenge, ChallengeRequest, LoginRequest, Whoami};
use crate::proto::meta::Metadata;
use crate::proto::proof::PROOF_HEADER;
pub use crate::proto::token::TokenResponse;
use crate::proto::token::{EXCHANGE_GRANT, JWT_TOKEN_TYPE, REFRESH_GRANT, RevokeRequest, TokenRequest};
use std::path::Path;
use std::time::Duration;

/// A token answer whose token is outside the token alphabet is refused (never stored, never
/// printed): a CR/LF in it would add lines to the helpers' protocols.
fn checked(t: TokenResponse) -> Result<TokenResponse, ClientError> {
    if crate::proto::token::is_token(t.access_token.expose()) {
        Ok(t)
    } else {
        Err(ClientError::MalformedToken("the broker sent a malformed token"))
    }
}

pub struct BrokerClient {
    pub url: String,
    http: reqwest::Client,
    /// HTTP/1.1 only and no overall timeout: for tunnels, which live as long as the ssh session.
    tunnel_http: reqwest::Client,
}

impl BrokerClient {
    /// `url`: the broker origin. `ca`: a PEM bundle to trust in addition to the system roots
    /// (which honour `SSL_CERT_FILE`).
    pub fn new(url: &str, ca: Option<&Path>) -> Result<BrokerClient, ClientError> {
        crate::install_crypto_provider();
        let url = url.trim_end_matches('/').to_string();
        let err = |reason: String| ClientError::Broker { url: url.clone(), reason };
        // Tokens and proofs must not travel in clear text (loopback excepted, for tests).
        if !crate::proto::rules::secure_url(&url) {
            return Err(err("the broker URL must be https:// (http:// only to a loopback address)".into()));
        }
        let certs = match ca {
            Some(ca) => {
                let pem = std::fs::read(ca).map_err(|e| err(format!("cannot read CA file {}: {e}", ca.display())))?;
                Some(
                    reqwest::Certificate::from_pem_bundle(&pem)
                        .map_err(|e| err(format!("CA file {}: {e}", ca.display())))?,
                )
            }
            None => None,
        };
        let builder = || {
            let b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .tls_info(true)
                // A redirect would re-send a subject token or proof elsewhere.
                .redirect(reqwest::redirect::Policy::none());
            match &certs {
                Some(c) => b.tls_certs_merge(c.clone()),
                None => b,
            }
        };
        let http = builder().timeout(Duration::from_secs(30)).build().map_err(|e| err(e.to_string()))?;
        let tunnel_http = builder().http1_only().build().map_err(|e| err(e.to_string()))?;
        Ok(BrokerClient { http, tunnel_http, url })
    }

    fn net(&self, e: reqwest::Error) -> ClientError {
        ClientError::Broker { url: self.url.clone(), reason: crate::error_chain(&e) }
    }

    async fn decode<T: serde::de::DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ClientError> {
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.net(e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Broker { url: self.url.clone(), reason: format!("unexpected answer: {e}") });
        }
        let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) => (b.error, b.message),
            Err(_) => ("http".into(), String::from_utf8_lossy(&bytes).chars().take(200).collect()),
        };
        Err(ClientError::Refused { status: status.as_u16(), code, message })
    }

    /// SSH login: challenge, sign, answer.
    pub async fn login_ssh(&self, user: &str, signer: &Signer) -> Result<TokenResponse, ClientError> {
        let resp = self
            .http
            .post(format!("{}/v1/login/ssh/challenge", self.url))
            .json(&ChallengeRequest { user: user.into() })
            .send()
            .await
            .map_err(|e| self.net(e))?;
        let ch: Challenge = self.decode(resp).await?;
        // Sign the message built here, for the broker URL we asked: a broker (or anyone in
        // between) cannot get us to sign a login meant for another origin or user.
        let message = crate::proto::login::login_message(&ch.challenge, &self.url, user);
        if message != ch.message {
            return Err(ClientError::Broker {
                url: self.url.clone(),
                reason: "the login challenge names another origin or user than this broker URL (check --broker: it must be the broker's public URL)".into(),
            });
        }
        let sig = signer.sign(crate::proto::login::LOGIN_NAMESPACE, message.as_bytes())?;
        let signature = crate::proto::proof::signature_b64url(&sig).map_err(|e| ClientError::Sign(e.to_string()))?;
        let certificate = signer.certificate().and_then(|c| c.to_openssh().ok());
        let resp = self
            .http
            .post(format!("{}/v1/login/ssh", self.url))
            .json(&LoginRequest { user: user.into(), challenge: ch.challenge, signature, certificate })
            .send()
            .await
            .map_err(|e| self.net(e))?;
        checked(self.decode(resp).await?)
    }

    fn authed(&self, req: reqwest::RequestBuilder, token: &str, proof: &str) -> reqwest::RequestBuilder {
        req.bearer_auth(token).header(PROOF_HEADER, proof)
    }

    /// RFC 8693: trade an OIDC subject token for a broker token bound to `signer`'s key.
    pub async fn exchange(&self, subject_token: &str, signer: &Signer) -> Result<TokenResponse, ClientError> {
        let public_key =
            ssh_key::PublicKey::from(signer.public_key()).to_openssh().map_err(|e| ClientError::Sign(e.to_string()))?;
        let form = TokenRequest {
            grant_type: EXCHANGE_GRANT.into(),
            subject_token: Some(subject_token.into()),
            subject_token_type: Some(JWT_TOKEN_TYPE.into()),
            requested_token_type: Some(JWT_TOKEN_TYPE.into()),
            public_key: Some(public_key),
        };
        let resp =
            self.http.post(format!("{}/v1/token", self.url)).form(&form).send().await.map_err(|e| self.net(e))?;
        checked(self.decode(resp).await?)
    }

    /// A new token for the same session.
    pub async fn refresh(&self, token: &str, proof: &str) -> Result<TokenResponse, ClientError> {
        let req = self
            .http
            .post(format!("{}/v1/token", self.url))
            .form(&TokenRequest { grant_type: REFRESH_GRANT.into(), ..Default::default() });
        let resp = self.authed(req, token, proof).send().await.map_err(|e| self.net(e))?;
        checked(self.decode(resp).await?)
    }

    pub async fn revoke(&self, token: &str, proof: &str) -> Result<(), ClientError> {
        let req = self
            .http
            .post(format!("{}/v1/revoke", self.url))
            .form(&RevokeRequest { token: Some(token.into()), token_type_hint: None });
        let resp = self.authed(req, token, proof).send().await.map_err(|e| self.net(e))?;
        let _: serde_json::Value = self.decode(resp).await?;
        Ok(())
    }

    /// `GET /v1/tunnel` upgraded: a byte stream to the SSH server the broker serves `host` with.
    pub async fn tunnel(
        &self,
        token: &str,
        proof: &str,
        host: &str,
        port: u16,
    ) -> Result<reqwest::Upgraded, ClientError> {
        use crate::proto::tunnel::{TUNNEL_PATH, TunnelRequest, UPGRADE_PROTOCOL};
        let req = self
            .tunnel_http
            .get(format!("{}{TUNNEL_PATH}", self.url))
            .query(&TunnelRequest { host: host.into(), port })
            .header(reqwest::header::CONNECTION, "upgrade")
            .header(reqwest::header::UPGRADE, UPGRADE_PROTOCOL);
        let resp = self.authed(req, token, proof).send().await.map_err(|e| self.net(e))?;
        if resp.status() != reqwest::StatusCode::SWITCHING_PROTOCOLS {
            let e = self.decode::<serde_json::Value>(resp).await.err();
            return Err(e.unwrap_or_else(|| ClientError::Broker {
                url: self.url.clone(),
                reason: "the broker did not switch protocols for the tunnel".into(),
            }));
        }
        resp.upgrade().await.map_err(|e| self.net(e))
    }

    /// `/.well-known/gocred`.
    pub async fn metadata(&self) -> Result<Metadata, ClientError> {
        let resp = self.http.get(format!("{}/.well-known/gocred", self.url)).send().await.map_err(|e| self.net(e))?;
        self.decode(resp).await
    }

    /// A plain GET of `path` (`/readyz`, …) for `gocred doctor`, which reports what it sees
    /// rather than decoding.
    pub async fn probe(&self, path: &str) -> Result<Probe, ClientError> {
        let resp = self.http.get(format!("{}{path}", self.url)).send().await.map_err(|e| self.net(e))?;
        let status = resp.status().as_u16();
        let date = resp.headers().get(reqwest::header::DATE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let cert_not_after = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|t| t.peer_certificate())
            .and_then(cert_not_after);
        let body = resp.text().await.map_err(|e| self.net(e))?;
        Ok(Probe { status, date, body: body.chars().take(4000).collect(), cert_not_after })
    }

    pub async fn whoami(&self, token: &str, proof: &str) -> Result<Whoami, ClientError> {
        let req = self.http.get(format!("{}/v1/whoami", self.url));
        let resp = self.authed(req, token, proof).send().await.map_err(|e| self.net(e))?;
        self.decode(resp).await
    }
}

/// What [`BrokerClient::probe`] saw.
#[derive(Debug)]
pub struct Probe {
    pub status: u16,
    /// The `Date` header (the broker's clock).
    pub date: Option<String>,
    /// At most 4000 characters of the body.
    pub body: String,
    /// The broker's TLS certificate's `notAfter`, Unix seconds (`None` over plain HTTP).
    pub cert_not_after: Option<i64>,
}

/// One DER element at the start of `b`: (tag, contents, the rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (first as usize, b)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        (b[..n].iter().fold(0usize, |a, x| (a << 8) | *x as usize), &b[n..])
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The `notAfter` of an X.509 certificate (DER), Unix seconds.
pub fn cert_not_after(cert: &[u8]) -> Option<i64> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, after_version) = der(tbs)?;
    let fields = if tag == 0xa0 { after_version } else { tbs };
    // serial, signature algorithm, issuer, then validity.
    let (_, _, rest) = der(fields)?;
    let (_, _, rest) = der(rest)?;
    let (_, _, rest) = der(rest)?;
    let (_, validity, _) = der(rest)?;
    let (_, _, rest) = der(validity)?;
    let (tag, t, _) = der(rest)?;
    let t = std::str::from_utf8(t).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i32 = t.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, t.get(2..)?)
        }
        0x18 => (t.get(..4)?.parse().ok()?, t.get(4..)?),
        _ => return None,
    };
    let n = |i: usize| rest.get(i..i + 2).and_then(|x| x.parse::<u8>().ok());
    let month = time::Month::try_from(n(0)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, n(2)?).ok()?;
    Some(date.with_hms(n(4)?, n(6)?, n(8)?).ok()?.assume_utc().unix_timestamp())
}
