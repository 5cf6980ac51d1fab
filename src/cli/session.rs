//! `gocred login --ssh`, `status`, `token`, `logout`: the laptop side of a session.

use crate::client::api::{BrokerClient, TokenResponse};
use crate::client::signer::{Signer, default_key_files};
use crate::client::state::{Session, Store};
use crate::client::{ClientError, agent::Agent};
use anyhow::{Context, bail};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Refresh when the token has less than this left (or a quarter of its lifetime, if shorter).
const REFRESH_MARGIN_SECS: u64 = 120;
/// Proofs the CLI makes for its own calls live this long.
const PROOF_SECS: u64 = 300;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("method").required(true).args(["ssh", "oidc", "device"])))]
pub struct LoginArgs {
    /// Log in with an SSH key: ssh-agent first, then KEY (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
    #[arg(long, value_name = "KEY", num_args = 0..=1, default_missing_value = "")]
    pub ssh: Option<String>,
    /// Log in with SSO in a browser (authorization code + PKCE, redirect to 127.0.0.1).
    #[arg(long)]
    pub oidc: bool,
    /// Log in with SSO on another device (RFC 8628: prints a URL and a code).
    #[arg(long)]
    pub device: bool,
    /// First loopback port tried for the browser redirect (the next ones if it is taken).
    #[arg(long, value_name = "PORT", default_value_t = 18600)]
    pub port: u16,
    /// Command that opens the login URL (given as its last argument). Default: $BROWSER, then
    /// xdg-open / open. The URL is printed either way.
    #[arg(long, value_name = "CMD", env = "GOCRED_BROWSER")]
    pub browser_command: Option<String>,
    /// Only print the login URL; do not try to open a browser.
    #[arg(long)]
    pub no_browser: bool,
    /// Broker URL (remembered for later commands).
    #[arg(long, value_name = "URL", env = "GOCRED_BROKER")]
    pub broker: Option<String>,
    /// User name to log in as (default $USER).
    #[arg(long, env = "GOCRED_USER")]
    pub user: Option<String>,
    /// PEM CA bundle to trust for the broker (e.g. the `serve --dev` CA); SSL_CERT_FILE also works.
    #[arg(long, value_name = "FILE", env = "GOCRED_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
}

fn time_str(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

fn left(until: u64, now: u64) -> String {
    if until <= now {
        return "expired".into();
    }
    let s = until - now;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, (s % 3600) / 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

fn session_from(broker: &BrokerClient, ca: Option<PathBuf>, signer: &Signer, t: TokenResponse) -> Session {
    Session {
        broker: broker.url.clone(),
        ca_cert: ca,
        user: t.user,
        token: t.access_token,
        expires_at: t.expires_at,
        obtained_at: crate::unix_now(),
        session_expires_at: t.session_expires_at,
        key_fingerprint: t.key_fingerprint,
        key: signer.key_ref(),
        groups: t.groups,
        proof: None,
        proof_exp: 0,
        method: "ssh".into(),
        idp: None,
    }
}

enum Candidate {
    Agent(Agent, ssh_key::public::KeyData),
    File(PathBuf),
}

fn candidates(ssh: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let agent_ids = Agent::from_env().and_then(|a| a.identities().ok().map(|ids| (a, ids)));
    if ssh.is_empty() {
        if let Some((_, ids)) = &agent_ids {
            for id in ids {
                if let Some(a) = Agent::from_env() {
                    out.push(Candidate::Agent(a, id.key.clone()));
                }
            }
        }
        out.extend(default_key_files().into_iter().map(Candidate::File));
    } else {
        let path = PathBuf::from(ssh);
        // The agent first, when it holds this key (no passphrase prompt).
        let public = std::fs::read_to_string(format!("{ssh}.pub"))
            .ok()
            .and_then(|t| ssh_key::PublicKey::from_openssh(t.trim()).ok());
        if let (Some(pk), Some((_, ids))) = (&public, &agent_ids) {
            let mut matching: Vec<_> = ids
                .iter()
                .filter(|i| {
                    &i.key == pk.key_data() || i.key.certificate().is_some_and(|c| c.public_key() == pk.key_data())
                })
                .collect();
            // Prefer the certificate identity when the agent has both.
            matching.sort_by_key(|i| !i.key.is_certificate());
            if let (Some(i), Some(a)) = (matching.first(), Agent::from_env()) {
                out.push(Candidate::Agent(a, i.key.clone()));
            }
        }
        out.push(Candidate::File(path));
    }
    out
}

/// The broker (flag/env, else the previous session's) and the CA to trust for it.
fn broker_and_ca(args: &LoginArgs, prev: Option<&Session>) -> anyhow::Result<(String, Option<PathBuf>)> {
    let broker_url = args
        .broker
        .clone()
        .or_else(|| prev.map(|p| p.broker.clone()))
        .context("which broker? pass --broker URL (or set GOCRED_BROKER)")?;
    let ca = args.ca_cert.clone().or_else(|| prev.filter(|p| p.broker == broker_url).and_then(|p| p.ca_cert.clone()));
    Ok((broker_url, ca))
}

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    if args.oidc || args.device {
        return login_sso(args).await;
    }
    let store = Store::lock()?;
    let prev = store.load().unwrap_or(None);
    let (broker_url, ca) = broker_and_ca(&args, prev.as_ref())?;
    let user = args
        .user
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .context("which user? pass --user NAME (or set USER)")?;
    let client = BrokerClient::new(&broker_url, ca.as_deref())?;
    let interactive = std::io::stdin().is_terminal();
    let ssh = args.ssh.clone().unwrap_or_default();
    let mut last_refusal: Option<ClientError> = None;
    let cands = candidates(&ssh);
    if cands.is_empty() {
        bail!("no SSH key found: start ssh-agent with a key, or pass --ssh KEYFILE");
    }
    for c in cands {
        let signer = match c {
            Candidate::Agent(a, k) => Signer::agent(a, k),
            Candidate::File(p) => match Signer::file(&p, interactive) {
                Ok(s) => s,
                Err(e) if ssh.is_empty() => {
                    last_refusal = Some(e);
                    continue;
                }
                Err(e) => return Err(e.into()),
            },
        };
        match client.login_ssh(&user, &signer).await {
            Ok(t) => {
                let s = session_from(&client, ca.clone(), &signer, t);
                store.save(&s)?;
                println!(
                    "gocred: logged in to {} as {} with {} ({}); token valid until {}",
                    s.broker,
                    s.user,
                    s.key_fingerprint,
                    signer.describe(),
                    time_str(s.expires_at)
                );
                return Ok(());
            }
            // This key is not authorized: try the next one.
            Err(e @ ClientError::Refused { status: 401, .. }) => last_refusal = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last_refusal.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no SSH key was accepted")))
}

pub async fn status() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let s = store.load()?.ok_or(ClientError::NotLoggedIn)?;
    let now = crate::unix_now();
    let source = match &s.key {
        crate::client::signer::KeyRef::Agent { .. } => "ssh-agent".to_string(),
        crate::client::signer::KeyRef::File { path } => path.display().to_string(),
    };
    println!("broker:  {}", s.broker);
    println!(
        "user:    {}{}",
        s.user,
        if s.groups.is_empty() { String::new() } else { format!(" (groups: {})", s.groups.join(", ")) }
    );
    println!("key:     {} ({source})", s.key_fingerprint);
    println!("token:   {} (until {})", left(s.expires_at, now), time_str(s.expires_at));
    println!("session: {} (until {})", left(s.session_expires_at, now), time_str(s.session_expires_at));
    if s.session_expires_at <= now {
        bail!("session ended: run gocred login");
    }
    Ok(())
}

/// Name of the ephemeral key file (in the state dir) SSO sessions are bound to.
pub const SSO_KEY: &str = "sso_ed25519";
/// Name of the ephemeral key file workload (ambient) sessions are bound to.
pub const WORKLOAD_KEY: &str = "workload_ed25519";

/// Open `url` with the configured browser command (or the platform's), without waiting.
fn open_browser(url: &str, command: Option<&str>) -> bool {
    let cmd = command.map(str::to_string).or_else(|| std::env::var("BROWSER").ok().filter(|b| !b.is_empty()));
    let candidates: Vec<String> = match cmd {
        Some(c) => vec![c],
        None => vec!["xdg-open".into(), "open".into()],
    };
    for c in candidates {
        let mut parts = c.split_whitespace();
        let Some(prog) = parts.next() else { continue };
        let spawned = std::process::Command::new(prog)
            .args(parts)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = spawned {
            // Reap it in the background; its exit status does not matter.
            std::thread::spawn(move || child.wait());
            return true;
        }
    }
    false
}

/// `gocred login --oidc` / `--device`: SSO at the broker's identity provider, then an RFC 8693
/// exchange binding the broker token to an ephemeral key kept in the state dir.
async fn login_sso(args: LoginArgs) -> anyhow::Result<()> {
    // Single flight: a second `gocred login` waits for the lock, then finds that the session
    // changed while it waited (the first one's login) and uses it.
    let token_before = crate::client::state::peek_token();
    let store = Store::lock()?;
    let prev = store.load().unwrap_or(None);
    if let Some(p) = &prev
        && p.method == "oidc"
        && token_before.as_deref() != Some(p.token.as_str())
        && p.expires_at > crate::unix_now()
    {
        println!("gocred: already logged in to {} as {} (a concurrent login just finished)", p.broker, p.user);
        return Ok(());
    }
    let (broker_url, ca) = broker_and_ca(&args, prev.as_ref())?;
    let client = BrokerClient::new(&broker_url, ca.as_deref())?;
    let meta = client.metadata().await?;
    let oidc = meta.get("oidc").filter(|o| !o.is_null()).with_context(|| {
        format!(
            "broker {} has no SSO issuer configured (no [[oidc.issuers]] with kind = \"human\"); use --ssh",
            client.url
        )
    })?;
    let issuer = oidc["issuer"].as_str().context("broker metadata: oidc.issuer missing")?;
    let client_id = oidc["client_id"].as_str().context("broker metadata: oidc.client_id missing")?;
    let scopes: Vec<String> = oidc["scopes"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_else(|| vec!["openid".into()]);
    let provider = crate::client::oidc::Provider::discover(issuer, client_id, scopes, ca.as_deref()).await?;
    let tokens = if args.device {
        let d = provider.device_start().await?;
        eprintln!("gocred: to sign in, open {} and enter the code {}", d.verification_uri, d.user_code);
        if let Some(full) = &d.verification_uri_complete {
            eprintln!("gocred: (or open {full})");
        }
        eprintln!("gocred: waiting for approval (the code expires in {}s)...", d.expires_in);
        provider.device_poll(&d, |i| eprintln!("gocred: the provider asked to slow down; polling every {i}s")).await?
    } else {
        let (listener, port) = crate::client::oidc::bind_loopback(args.port).await?;
        let redirect = format!("http://127.0.0.1:{port}/callback");
        let pkce = crate::client::oidc::Pkce::new();
        let url = provider.authorization_url(&pkce, &redirect)?;
        let opened = !args.no_browser && open_browser(&url, args.browser_command.as_deref());
        if opened {
            eprintln!("gocred: opened your browser to sign in; if it did not open, visit:\n{url}");
        } else {
            eprintln!("gocred: to sign in, open this URL in a browser on this machine:\n{url}");
        }
        let code =
            crate::client::oidc::wait_for_code(&listener, &pkce.state, std::time::Duration::from_secs(300)).await?;
        provider.exchange_code(&code, &pkce, &redirect).await?
    };
    let key = store.ephemeral_key(SSO_KEY)?;
    let signer = Signer::file(&key, false)?;
    let t = client.exchange(&tokens.id_token, &signer).await?;
    let mut s = session_from(&client, ca, &signer, t);
    s.method = "oidc".into();
    s.idp = Some(crate::client::state::IdpState {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        token_endpoint: provider.token_endpoint.clone(),
        refresh_token: tokens.refresh_token,
    });
    store.save(&s)?;
    println!(
        "gocred: logged in to {} as {} via {} (key {}); token valid until {}",
        s.broker,
        s.user,
        provider.issuer,
        s.key_fingerprint,
        time_str(s.expires_at)
    );
    Ok(())
}

/// Exchange the ambient workload token for a new session.
async fn ambient_session(
    store: &Store,
    source: &crate::client::ambient::Source,
    broker: &str,
    ca: Option<PathBuf>,
) -> anyhow::Result<Session> {
    let client = BrokerClient::new(broker, ca.as_deref())?;
    let key = store.ephemeral_key(WORKLOAD_KEY)?;
    let signer = Signer::file(&key, false)?;
    let subject = source.token().await?;
    let t =
        client.exchange(&subject, &signer).await.with_context(|| format!("exchanging the {}", source.describe()))?;
    let mut s = session_from(&client, ca, &signer, t);
    s.method = "ambient".into();
    store.save(&s)?;
    Ok(s)
}

/// Ambient workload configuration given on the command line (`gocred agent`), which wins over
/// the environment for this process.
#[derive(Debug, Clone)]
pub struct AmbientOverride {
    pub source: crate::client::ambient::Source,
    pub broker: String,
    pub ca: Option<PathBuf>,
}

static AMBIENT_OVERRIDE: std::sync::OnceLock<AmbientOverride> = std::sync::OnceLock::new();

pub fn set_ambient_override(o: AmbientOverride) {
    let _ = AMBIENT_OVERRIDE.set(o);
}

/// Ambient workload configuration: (source, broker, CA), from `gocred agent`'s flags or the
/// environment (`GOCRED_BROKER` plus a token source).
pub fn ambient_from_env() -> Option<(crate::client::ambient::Source, String, Option<PathBuf>)> {
    if let Some(o) = AMBIENT_OVERRIDE.get() {
        return Some((o.source.clone(), o.broker.clone(), o.ca.clone()));
    }
    let source = crate::client::ambient::Source::detect(None, None)?;
    let broker = std::env::var("GOCRED_BROKER").ok().filter(|b| !b.is_empty())?;
    let ca = std::env::var_os("GOCRED_CA_CERT").filter(|v| !v.is_empty()).map(PathBuf::from);
    Some((source, broker, ca))
}

/// The stored session (maybe stale), or a new one from the ambient workload token.
pub async fn current_session(store: &Store) -> anyhow::Result<Session> {
    if let Some(s) = store.load()? {
        return Ok(s);
    }
    match ambient_from_env() {
        Some((source, broker, ca)) => ambient_session(store, &source, &broker, ca).await,
        None => Err(anyhow::anyhow!(
            "not logged in: run gocred login (or configure a workload token: GOCRED_TOKEN_FILE and GOCRED_BROKER)"
        )),
    }
}

/// A session whose token is good for at least the refresh margin: refreshed with a proof, or
/// renewed the way it was obtained (SSH login with the session key, the IdP's refresh token, or
/// the ambient workload token) when refresh is no longer possible. With no session at all, an
/// ambient workload token (see [`crate::client::ambient`]) starts one.
pub async fn fresh_session(store: &Store) -> anyhow::Result<Session> {
    let ambient = ambient_from_env();
    let s = match store.load()? {
        Some(s) => s,
        None => match &ambient {
            Some((source, broker, ca)) => return ambient_session(store, source, broker, ca.clone()).await,
            None => return Err(ClientError::NotLoggedIn.into()),
        },
    };
    let now = crate::unix_now();
    let margin = REFRESH_MARGIN_SECS.min(s.expires_at.saturating_sub(s.obtained_at) / 4);
    if s.expires_at > now + margin {
        return Ok(s);
    }
    let interactive = std::io::stdin().is_terminal();
    let signer = Signer::from_ref(&s.key, interactive)
        .map_err(|e| anyhow::anyhow!("token expired and no key available ({e}): run gocred login"))?;
    let client = BrokerClient::new(&s.broker, s.ca_cert.as_deref())?;
    let refreshed = if s.expires_at > now + 1 && s.session_expires_at > now + margin {
        let proof = signer.proof(&s.token, &format!("{}/", client.url), now + PROOF_SECS)?;
        client.refresh(&s.token, &proof).await.ok()
    } else {
        None
    };
    let t = match refreshed {
        Some(t) => t,
        None => match s.method.as_str() {
            "oidc" => {
                let idp = s.idp.as_ref().context("SSO session without provider state: run gocred login --oidc")?;
                let refresh_token = idp
                    .refresh_token
                    .as_deref()
                    .context("SSO session expired and the provider gave no refresh token: run gocred login --oidc")?;
                let provider = crate::client::oidc::Provider::discover(
                    &idp.issuer,
                    &idp.client_id,
                    Vec::new(),
                    s.ca_cert.as_deref(),
                )
                .await?;
                let tokens = provider
                    .refresh(refresh_token)
                    .await
                    .context("SSO session expired and the provider refused the refresh: run gocred login --oidc")?;
                let t = client.exchange(&tokens.id_token, &signer).await?;
                let mut next = session_from(&client, s.ca_cert.clone(), &signer, t);
                next.method = "oidc".into();
                next.idp = Some(crate::client::state::IdpState { refresh_token: tokens.refresh_token, ..idp.clone() });
                store.save(&next)?;
                return Ok(next);
            }
            "ambient" => {
                let (source, broker, ca) = ambient.context(
                    "workload session expired and no workload token is configured (GOCRED_TOKEN_FILE, GOCRED_BROKER, ...)",
                )?;
                return ambient_session(store, &source, &broker, ca).await;
            }
            _ => client
                .login_ssh(&s.user, &signer)
                .await
                .context("token expired and login with the session key failed")?,
        },
    };
    let mut next = session_from(&client, s.ca_cert.clone(), &signer, t);
    next.method = s.method.clone();
    next.idp = s.idp.clone();
    store.save(&next)?;
    Ok(next)
}

/// Proofs made for helpers live this long (Go and git reuse them within it).
const HELPER_PROOF_SECS: u64 = 540;

/// A fresh session plus a proof for it valid at least a minute more (cached in the session).
/// `force_refresh`: get a new token even if the current one looks fine (the broker said 401).
pub async fn credentials(store: &Store, force_refresh: bool) -> anyhow::Result<(Session, String, u64)> {
    if force_refresh && let Some(mut s) = store.load()? {
        s.expires_at = 0;
        s.proof = None;
        store.save(&s)?;
    }
    let mut s = fresh_session(store).await?;
    if !crate::wire::is_token(&s.token) {
        return Err(ClientError::MalformedToken("the session holds a malformed token").into());
    }
    let now = crate::unix_now();
    if let Some(p) = s.proof.clone().filter(|p| s.proof_exp > now + 60 && crate::wire::is_proof(p)) {
        let exp = s.proof_exp;
        return Ok((s, p, exp));
    }
    let signer = Signer::from_ref(&s.key, std::io::stdin().is_terminal())
        .map_err(|e| anyhow::anyhow!("cannot sign a proof ({e}): run gocred login"))?;
    let exp = (now + HELPER_PROOF_SECS).min(s.expires_at.max(now + 60));
    let proof = signer.proof(&s.token, &format!("{}/", s.broker.trim_end_matches('/')), exp)?;
    if !crate::wire::is_proof(&proof) {
        return Err(ClientError::MalformedToken("made a malformed proof").into());
    }
    s.proof = Some(proof.clone());
    s.proof_exp = exp;
    store.save(&s)?;
    Ok((s, proof, exp))
}

pub async fn token() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let s = fresh_session(&store).await?;
    if !crate::wire::is_token(&s.token) {
        return Err(ClientError::MalformedToken("the session holds a malformed token").into());
    }
    println!("{}", s.token);
    Ok(())
}

pub async fn logout() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let Some(s) = store.load()? else {
        println!("gocred: not logged in");
        return Ok(());
    };
    let now = crate::unix_now();
    let mut revoked = false;
    if s.expires_at > now
        && let Ok(signer) = Signer::from_ref(&s.key, std::io::stdin().is_terminal())
    {
        let client = BrokerClient::new(&s.broker, s.ca_cert.as_deref())?;
        let proof = signer.proof(&s.token, &format!("{}/", client.url), now + PROOF_SECS)?;
        match client.revoke(&s.token, &proof).await {
            Ok(()) => revoked = true,
            Err(e) => eprintln!("gocred: warning: could not revoke the token at the broker: {e}"),
        }
    }
    store.remove()?;
    println!("gocred: logged out{}", if revoked { " (token revoked)" } else { "" });
    Ok(())
}
