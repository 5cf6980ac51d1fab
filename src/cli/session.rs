//! `gocred login --ssh`, `status`, `token`, `logout`: the laptop side of a session.

use crate::client::api::BrokerClient;
use crate::client::session::{PROOF_SECS, SSO_KEY, session_from};
use crate::client::signer::{Signer, default_key_files};
use crate::client::state::{Session, SessionMethod, Store};
use crate::client::{ClientError, ssh_agent::Agent};
use anyhow::{Context, bail};
use clap::Args;
use std::io::IsTerminal;
use std::path::PathBuf;

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
                let s = session_from(&client, ca.clone(), &signer, t, SessionMethod::Ssh);
                store.save(&s)?;
                outln!(
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
    outln!("broker:  {}", s.broker);
    outln!(
        "user:    {}{}",
        s.user,
        if s.groups.is_empty() { String::new() } else { format!(" (groups: {})", s.groups.join(", ")) }
    );
    outln!("key:     {} ({source})", s.key_fingerprint);
    outln!("token:   {} (until {})", left(s.expires_at, now), time_str(s.expires_at));
    outln!("session: {} (until {})", left(s.session_expires_at, now), time_str(s.session_expires_at));
    if s.session_expires_at <= now {
        bail!("session ended: run gocred login");
    }
    Ok(())
}

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
        && p.method == SessionMethod::Oidc
        && !token_before.as_ref().is_some_and(|t| p.token.matches(t.expose()))
        && p.expires_at > crate::unix_now()
    {
        outln!("gocred: already logged in to {} as {} (a concurrent login just finished)", p.broker, p.user);
        return Ok(());
    }
    let (broker_url, ca) = broker_and_ca(&args, prev.as_ref())?;
    let client = BrokerClient::new(&broker_url, ca.as_deref())?;
    let meta = client.metadata().await?;
    let oidc = meta.oidc.with_context(|| {
        format!(
            "broker {} has no SSO issuer configured (no [[oidc.issuers]] with kind = \"human\"); use --ssh",
            client.url
        )
    })?;
    let (issuer, client_id, scopes) = (oidc.issuer.as_str(), oidc.client_id.as_str(), oidc.scopes.clone());
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
    let mut s = session_from(&client, ca, &signer, t, SessionMethod::Oidc);
    s.idp = Some(crate::client::state::IdpState {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        token_endpoint: provider.token_endpoint.clone(),
        refresh_token: tokens.refresh_token,
    });
    store.save(&s)?;
    outln!(
        "gocred: logged in to {} as {} via {} (key {}); token valid until {}",
        s.broker,
        s.user,
        provider.issuer,
        s.key_fingerprint,
        time_str(s.expires_at)
    );
    Ok(())
}

pub async fn token() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let s = crate::client::session::fresh(&store, std::io::stdin().is_terminal()).await?;
    if !crate::proto::token::is_token(s.token.expose()) {
        return Err(ClientError::MalformedToken("the session holds a malformed token").into());
    }
    outln!("{}", s.token.expose());
    Ok(())
}

pub async fn logout() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let Some(s) = store.load()? else {
        outln!("gocred: not logged in");
        return Ok(());
    };
    let now = crate::unix_now();
    let mut revoked = false;
    if s.expires_at > now
        && let Ok(signer) = Signer::from_ref(&s.key, std::io::stdin().is_terminal())
    {
        let client = BrokerClient::new(&s.broker, s.ca_cert.as_deref())?;
        let proof = signer.proof(s.token.expose(), &format!("{}/", client.url), now + PROOF_SECS)?;
        match client.revoke(s.token.expose(), &proof).await {
            Ok(()) => revoked = true,
            Err(e) => eprintln!("gocred: warning: could not revoke the token at the broker: {e}"),
        }
    }
    store.remove()?;
    outln!("gocred: logged out{}", if revoked { " (token revoked)" } else { "" });
    Ok(())
}
