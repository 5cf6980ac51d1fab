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
pub struct LoginArgs {
    /// Log in with an SSH key: ssh-agent first, then KEY (default ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
    #[arg(long, value_name = "KEY", num_args = 0..=1, default_missing_value = "", required = true)]
    pub ssh: Option<String>,
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

pub async fn login(args: LoginArgs) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let prev = store.load().unwrap_or(None);
    let broker_url = args
        .broker
        .clone()
        .or_else(|| prev.as_ref().map(|p| p.broker.clone()))
        .context("which broker? pass --broker URL (or set GOCRED_BROKER)")?;
    let ca = args
        .ca_cert
        .clone()
        .or_else(|| prev.as_ref().filter(|p| p.broker == broker_url).and_then(|p| p.ca_cert.clone()));
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

/// A session whose token is good for at least the refresh margin: refreshed with a proof, or
/// re-logged-in with the session's key when refresh is no longer possible.
pub async fn fresh_session(store: &Store) -> anyhow::Result<Session> {
    let s = store.load()?.ok_or(ClientError::NotLoggedIn)?;
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
        None => {
            client.login_ssh(&s.user, &signer).await.context("token expired and login with the session key failed")?
        }
    };
    let next = session_from(&client, s.ca_cert.clone(), &signer, t);
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
    let now = crate::unix_now();
    if let Some(p) = s.proof.clone().filter(|_| s.proof_exp > now + 60) {
        let exp = s.proof_exp;
        return Ok((s, p, exp));
    }
    let signer = Signer::from_ref(&s.key, std::io::stdin().is_terminal())
        .map_err(|e| anyhow::anyhow!("cannot sign a proof ({e}): run gocred login"))?;
    let exp = (now + HELPER_PROOF_SECS).min(s.expires_at.max(now + 60));
    let proof = signer.proof(&s.token, &format!("{}/", s.broker.trim_end_matches('/')), exp)?;
    s.proof = Some(proof.clone());
    s.proof_exp = exp;
    store.save(&s)?;
    Ok((s, proof, exp))
}

pub async fn token() -> anyhow::Result<()> {
    let store = Store::lock()?;
    let s = fresh_session(&store).await?;
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
