//! The tools' own credential protocols, all answering only for the broker's origin:
//! `gocred goauth` (Go's GOAUTH), `gocred credential` (git credential helper), `gocred askpass`
//! (GIT_ASKPASS), `gocred netrc` and `gocred setup` (go env + git config). A helper that cannot
//! produce a credential prints one line saying why and what to run, and exits non-zero; it never
//! prints a partial credential.

use super::session::credentials;
use crate::client::state::{Session, Store};
use anyhow::{Context, bail};
use clap::Args;
use std::io::Read;
use std::path::PathBuf;

/// `scheme://host[:port]` of the broker.
fn origin(s: &Session) -> String {
    s.broker.trim_end_matches('/').to_string()
}

/// `host:port` (and `host`) as tools name the broker.
fn host_port(origin: &str) -> (String, String) {
    let hp = origin.split_once("://").map(|(_, r)| r).unwrap_or(origin).to_string();
    let host = hp.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map(|(h, _)| h.to_string());
    (hp.clone(), host.unwrap_or(hp))
}

fn expiry_of(s: &Session, proof_exp: u64) -> u64 {
    s.expires_at.min(proof_exp)
}

/// `gocred goauth [URL]`: print `https://origin/`, a blank line, the two headers, a blank line.
/// Called again by Go with the URL of a 4xx and the response head on stdin: a 401 forces a new
/// token; a 403 is the broker's policy answer and is printed for the user.
pub async fn goauth(url: Option<String>) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let mut force = false;
    if let Some(u) = &url {
        let session = super::session::current_session(&store).await?;
        if !u.starts_with(&format!("{}/", origin(&session))) {
            return Ok(()); // not ours: no credentials for other origins
        }
        let mut head = String::new();
        let _ = std::io::stdin().take(64 * 1024).read_to_string(&mut head);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        force = status == "401";
    }
    let (s, proof, _) = credentials(&store, force).await?;
    print!("{}/\n\nAuthorization: Bearer {}\nGocred-Proof: {}\n\n", origin(&s), s.token, proof);
    Ok(())
}

#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// get | store | erase (git calls this).
    pub op: String,
}

/// git credential helper protocol.
pub async fn credential(args: CredentialArgs) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin().take(256 * 1024).read_to_string(&mut input)?;
    let attr = |k: &str| input.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).map(str::to_string);
    let capabilities: Vec<&str> = input.lines().filter_map(|l| l.strip_prefix("capability[]=")).collect();
    match args.op.as_str() {
        "get" => {}
        // Nothing is stored: tokens come from the broker. `erase` forgets the cached proof, so
        // the next `get` makes a new one.
        "store" => return Ok(()),
        "erase" => {
            let store = Store::lock()?;
            if let Some(mut s) = store.load()? {
                s.proof = None;
                store.save(&s)?;
            }
            return Ok(());
        }
        other => bail!("unknown credential operation `{other}` (expected get, store or erase)"),
    }
    let store = Store::lock()?;
    let session = super::session::current_session(&store).await?;
    let (hp, _) = host_port(&origin(&session));
    let scheme_ok = attr("protocol").as_deref() == Some(origin(&session).split("://").next().unwrap_or("https"));
    if !scheme_ok || attr("host").as_deref() != Some(hp.as_str()) {
        return Ok(()); // another host: answer nothing, git asks the next helper
    }
    let (s, proof, proof_exp) = credentials(&store, false).await?;
    let mut out = String::new();
    if capabilities.contains(&"authtype") {
        out.push_str("capability[]=authtype\nauthtype=Bearer\n");
        out.push_str(&format!("credential={}~{}\n", s.token, proof));
    } else {
        out.push_str(&format!("username=gocred\npassword={}~{}\n", s.token, proof));
    }
    out.push_str(&format!("password_expiry_utc={}\n", expiry_of(&s, proof_exp)));
    print!("{out}");
    Ok(())
}

/// GIT_ASKPASS: git asks for the username, then the password, for `https://host[:port]`.
pub async fn askpass(prompt: String) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let session = super::session::current_session(&store).await?;
    let (hp, _) = host_port(&origin(&session));
    let scheme = origin(&session).split("://").next().unwrap_or("https").to_string();
    let ours = askpass_prompt_is_for(&prompt, &scheme, &hp);
    if !ours {
        bail!("askpass: the prompt is not for the gocred broker {}: {}", origin(&session), prompt.trim());
    }
    if prompt.trim_start().starts_with("Username") {
        println!("gocred");
        return Ok(());
    }
    let (s, proof, _) = credentials(&store, false).await?;
    println!("{}~{}", s.token, proof);
    Ok(())
}

#[derive(Debug, Args)]
pub struct NetrcArgs {
    /// Write into FILE (other machines' entries are kept; 0600, atomic); default: print.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Is git's prompt exactly `Username for '<scheme>://[user@]<host:port>': ` (or `Password ...`)?
/// A substring match would also accept `https://evil.example/x@<host:port>`.
pub fn askpass_prompt_is_for(prompt: &str, scheme: &str, hp: &str) -> bool {
    let p = prompt.trim_end();
    let Some(rest) = p.strip_prefix("Username for '").or_else(|| p.strip_prefix("Password for '")) else {
        return false;
    };
    let Some(url) = rest.strip_suffix("':") else { return false };
    let Some(authority) = url.strip_prefix(&format!("{scheme}://")) else { return false };
    if authority.contains(['/', '\\', '\'']) {
        return false;
    }
    let host = match authority.rsplit_once('@') {
        Some((user, h)) if !user.contains('@') => h,
        Some(_) => return false,
        None => authority,
    };
    host == hp
}

/// netrc text without the `machine NAME` entries for `names`, and with `ours` inserted before any
/// `default` entry (which would otherwise shadow it). Works line by line: comments, other
/// entries and `macdef` bodies (up to their blank line) are kept as they are.
pub fn netrc_with(text: &str, names: &[&str], ours: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut in_macdef = false;
    let mut inserted = false;
    for line in text.lines() {
        if in_macdef {
            // A macdef belongs to the entry before it: kept or dropped with it.
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
            if line.trim().is_empty() {
                in_macdef = false;
            }
            continue;
        }
        let mut tokens = line.split_whitespace();
        match tokens.next() {
            Some("machine") => skipping = tokens.next().is_some_and(|n| names.contains(&n)),
            Some("default") => {
                skipping = false;
                if !inserted {
                    out.push_str(ours);
                    inserted = true;
                }
            }
            Some("macdef") => in_macdef = true,
            _ => {}
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    if !inserted {
        out.push_str(ours);
    }
    out
}

pub async fn netrc(args: NetrcArgs) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let (s, proof, _) = credentials(&store, false).await?;
    let (hp, host) = host_port(&origin(&s));
    // Go matches `host:port`, git (curl) matches `host`.
    let mut ours = format!("machine {hp} login gocred password {}~{}\n", s.token, proof);
    if host != hp {
        ours.push_str(&format!("machine {host} login gocred password {}~{}\n", s.token, proof));
    }
    match args.out {
        None => print!("{ours}"),
        Some(path) => {
            let existing = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
            };
            let text = zeroize::Zeroizing::new(netrc_with(&existing, &[hp.as_str(), host.as_str()], &ours));
            crate::fsutil::write_private_atomic(&path, text.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "gocred: wrote {} entries for {hp} to {} (valid until the proof expires; run again to renew)",
                if host != hp { 2 } else { 1 },
                path.display()
            );
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Broker URL (default: the logged-in session's).
    #[arg(long, value_name = "URL", env = "GOCRED_BROKER")]
    pub broker: Option<String>,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `go env -w` and `git config --global` so that plain `go` and `git` use the broker.
pub async fn setup(args: SetupArgs) -> anyhow::Result<()> {
    let (broker, ca) = {
        let store = Store::lock()?;
        let s = store.load()?;
        let broker = args
            .broker
            .clone()
            .or_else(|| s.as_ref().map(|s| s.broker.clone()))
            .context("which broker? pass --broker URL or log in first")?;
        (broker.trim_end_matches('/').to_string(), s.and_then(|s| s.ca_cert))
    };
    let client = crate::client::api::BrokerClient::new(&broker, ca.as_deref())?;
    let meta = client.metadata().await?;
    let me = std::env::current_exe().context("cannot find the gocred binary")?;
    let me = me.display().to_string();
    let modules: Vec<String> = meta["modules"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    // Only what this broker can legitimately ask for: module prefixes, its own /mod and /git URLs.
    if let Some(bad) = modules.iter().find(|m| !crate::proxy::route::clean_path(m)) {
        bail!("the broker's metadata lists a malformed module pattern `{bad}`; not configuring anything");
    }
    if meta["goproxy"].as_str().is_some_and(|gp| gp != format!("{broker}/mod")) {
        bail!("the broker's metadata names a GOPROXY other than {broker}/mod; not configuring anything");
    }
    let mut go_env: Vec<(String, String)> = Vec::new();
    if !modules.is_empty() {
        go_env.push(("GOPRIVATE".into(), modules.join(",")));
        go_env.push(("GONOSUMDB".into(), modules.join(",")));
    }
    let direct: Vec<String> = meta["direct_modules"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    if let Some(bad) = direct.iter().find(|m| !crate::proxy::route::clean_path(m) || !modules.contains(m)) {
        bail!("the broker's metadata lists an unexpected direct module pattern `{bad}`; not configuring anything");
    }
    if let Some(gp) = meta["goproxy"].as_str() {
        go_env.push(("GOPROXY".into(), format!("{gp},https://proxy.golang.org,direct")));
    }
    // Modules only a git host serves are fetched with git (through the broker's /git/ via
    // insteadOf); everything else private goes through the broker's /mod.
    go_env.push(("GONOPROXY".into(), if direct.is_empty() { "none".into() } else { direct.join(",") }));
    go_env.push(("GOAUTH".into(), format!("{me} goauth")));
    let mut git: Vec<(String, String)> = vec![(format!("credential.{broker}.helper"), format!("{me} credential"))];
    for g in meta["git"].as_array().into_iter().flatten() {
        if let (Some(host), Some(url)) = (g["host"].as_str(), g["url"].as_str()) {
            let bare = !host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            if !bare || url != format!("{broker}/git/{host}/") {
                bail!("the broker's metadata has an unexpected git entry for `{host}`; not configuring anything");
            }
            git.push((format!("url.{url}.insteadOf"), format!("https://{host}/")));
        }
    }
    for (k, v) in &go_env {
        println!("go env -w {k}={v}");
    }
    for (k, v) in &git {
        println!("git config --global {k} {v:?}");
    }
    if args.dry_run {
        println!("gocred: dry run: nothing changed");
        return Ok(());
    }
    let go = std::process::Command::new("go")
        .arg("env")
        .arg("-w")
        .args(go_env.iter().map(|(k, v)| format!("{k}={v}")))
        .status()
        .context("cannot run `go env -w` (is go on PATH?)")?;
    if !go.success() {
        bail!("`go env -w` failed");
    }
    for (k, v) in &git {
        let st = std::process::Command::new("git")
            .args(["config", "--global", "--replace-all", k, v])
            .status()
            .context("cannot run git config")?;
        if !st.success() {
            bail!("`git config --global {k}` failed");
        }
    }
    println!("gocred: go and git now use {broker}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_keeps_other_machines_comments_and_macdefs() {
        let t = "# machine commented.example login c password d\nmachine a.example login x password y\n\
                 macdef init\nmachine inside-macdef\n\nmachine 127.0.0.1:8443 login gocred password old\n\
                 default login anon password z\n";
        let out = netrc_with(t, &["127.0.0.1:8443", "127.0.0.1"], "machine 127.0.0.1:8443 login gocred password new\n");
        assert!(out.contains("# machine commented.example login c password d"), "{out}");
        assert!(out.contains("machine a.example login x password y"));
        assert!(out.contains("macdef init\nmachine inside-macdef\n\n"), "{out}");
        assert!(!out.contains("old"));
        let new_at = out.find("password new").unwrap();
        assert!(new_at < out.find("default").unwrap(), "inserted before default: {out}");
    }

    #[test]
    fn askpass_matches_the_whole_prompt() {
        assert!(askpass_prompt_is_for("Username for 'https://127.0.0.1:8443': ", "https", "127.0.0.1:8443"));
        assert!(askpass_prompt_is_for("Password for 'https://gocred@127.0.0.1:8443': ", "https", "127.0.0.1:8443"));
        assert!(!askpass_prompt_is_for(
            "Password for 'https://evil.example/x@127.0.0.1:8443': ",
            "https",
            "127.0.0.1:8443"
        ));
        assert!(!askpass_prompt_is_for(
            "Password for 'https://127.0.0.1:8443.evil.example': ",
            "https",
            "127.0.0.1:8443"
        ));
        assert!(!askpass_prompt_is_for("Password for 'http://127.0.0.1:8443': ", "https", "127.0.0.1:8443"));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(host_port("https://127.0.0.1:8443"), ("127.0.0.1:8443".into(), "127.0.0.1".into()));
        assert_eq!(host_port("https://b.example"), ("b.example".into(), "b.example".into()));
    }
}
