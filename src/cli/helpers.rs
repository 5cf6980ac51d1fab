//! The tools' own credential protocols, all answering only for the broker's origin:
//! `gocred goauth` (Go's GOAUTH), `gocred credential` (git credential helper), `gocred askpass`
//! (GIT_ASKPASS), `gocred netrc` and `gocred setup` (go env + git config). A helper that cannot
//! produce a credential prints one line saying why and what to run, and exits non-zero; it never
//! prints a partial credential.

use crate::client::state::{Session, Store};

/// The session and a proof for it (see [`crate::client::session::credentials`]).
async fn credentials(store: &Store, force: bool) -> anyhow::Result<(Session, String, u64)> {
    Ok(crate::client::session::credentials(store, force, std::io::stdin().is_terminal()).await?)
}
use anyhow::{Context, bail};
use clap::Args;
use std::io::{IsTerminal, Read};
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
        let session = crate::client::session::current(&store).await?;
        if !u.starts_with(&format!("{}/", origin(&session))) {
            return Ok(()); // not ours: no credentials for other origins
        }
        let mut head = String::new();
        let _ = std::io::stdin().take(64 * 1024).read_to_string(&mut head);
        let status = head.split_whitespace().nth(1).unwrap_or("");
        force = status == "401";
    }
    let (s, proof, _) = credentials(&store, force).await?;
    out!("{}/\n\nAuthorization: Bearer {}\nGocred-Proof: {}\n\n", origin(&s), s.token.expose(), proof);
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
    let session = crate::client::session::current(&store).await?;
    let (hp, _) = host_port(&origin(&session));
    let scheme_ok = attr("protocol").as_deref() == Some(origin(&session).split("://").next().unwrap_or("https"));
    if !scheme_ok || attr("host").as_deref() != Some(hp.as_str()) {
        return Ok(()); // another host: answer nothing, git asks the next helper
    }
    let (s, proof, proof_exp) = credentials(&store, false).await?;
    let mut out = String::new();
    if capabilities.contains(&"authtype") {
        out.push_str("capability[]=authtype\nauthtype=Bearer\n");
        out.push_str(&format!("credential={}~{}\n", s.token.expose(), proof));
    } else {
        out.push_str(&format!("username=gocred\npassword={}~{}\n", s.token.expose(), proof));
    }
    out.push_str(&format!("password_expiry_utc={}\n", expiry_of(&s, proof_exp)));
    out!("{out}");
    Ok(())
}

/// GIT_ASKPASS: git asks for the username, then the password, for `https://host[:port]`.
pub async fn askpass(prompt: String) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let session = crate::client::session::current(&store).await?;
    let (hp, _) = host_port(&origin(&session));
    let scheme = origin(&session).split("://").next().unwrap_or("https").to_string();
    let ours = askpass_prompt_is_for(&prompt, &scheme, &hp);
    if !ours {
        bail!("askpass: the prompt is not for the gocred broker {}: {}", origin(&session), prompt.trim());
    }
    if prompt.trim_start().starts_with("Username") {
        outln!("gocred");
        return Ok(());
    }
    let (s, proof, _) = credentials(&store, false).await?;
    outln!("{}~{}", s.token.expose(), proof);
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

/// Where [`netrc_with`] is in the token stream.
#[derive(Default)]
struct NetrcState {
    /// Inside an entry for one of the names (its tokens are dropped until the next entry starts).
    skipping: bool,
    /// Inside a macdef body (to the next empty line).
    in_macro: bool,
    /// That macdef belongs to a dropped entry.
    drop_macro: bool,
}

/// One line's tokens without those of entries for `names`; `true` when something was dropped.
fn drop_entries<'a>(tokens: &[&'a str], names: &[&str], st: &mut NetrcState) -> (Vec<&'a str>, bool) {
    let mut kept: Vec<&str> = Vec::new();
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        match tokens[i] {
            "machine" => {
                let name = tokens.get(i + 1).copied().unwrap_or("");
                st.skipping = names.contains(&name);
                if st.skipping {
                    changed = true;
                } else {
                    kept.push("machine");
                    kept.extend(tokens.get(i + 1));
                }
                i += 2;
            }
            "default" => {
                st.skipping = false;
                kept.push("default");
                i += 1;
            }
            "macdef" => {
                st.in_macro = true;
                st.drop_macro = st.skipping;
                if st.skipping {
                    changed = true;
                } else {
                    kept.extend(&tokens[i..]);
                }
                i = tokens.len();
            }
            t @ ("login" | "password" | "account") => {
                if st.skipping {
                    changed = true;
                } else {
                    kept.push(t);
                    kept.extend(tokens.get(i + 1));
                }
                i += 2;
            }
            t => {
                if st.skipping {
                    changed = true;
                } else {
                    kept.push(t);
                }
                i += 1;
            }
        }
    }
    (kept, changed)
}

/// `ours` (gocred's entries) first, then `text` without any entry for `names`. netrc is
/// token-based, not line-based, and its readers differ: curl reads `#` comments and takes the
/// first matching entry (or `default`); Go's reader has no comments and reads tokens in pairs.
/// Putting ours first means nothing earlier can shadow them (a `default`, a stale entry) and no
/// unterminated `macdef` at the end can swallow them; stale entries for `names` are removed
/// wherever they are — alone, within a line of several entries, spread over lines, or on a `#`
/// line (which Go would read). Everything else is kept byte for byte; a line mixing a foreign
/// entry with a stale one keeps the foreign tokens.
pub fn netrc_with(text: &str, names: &[&str], ours: &str) -> String {
    let mut out = String::from(ours);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let names_us = |t: &[&str]| t.windows(2).any(|w| w[0] == "machine" && names.contains(&w[1]));
    let mut st = NetrcState::default();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    for raw in lines {
        let line = raw.trim_end_matches(['\n', '\r']);
        if st.in_macro {
            if line.is_empty() {
                st.in_macro = false;
            }
            if !st.drop_macro || line.is_empty() {
                out.push_str(raw);
            }
            continue;
        }
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if line.trim_start().starts_with('#') {
            if !names_us(&tokens) {
                out.push_str(raw);
            }
            continue;
        }
        let (kept, changed) = drop_entries(&tokens, names, &mut st);
        if !changed {
            out.push_str(raw);
        } else if !kept.is_empty() {
            out.push_str(&kept.join(" "));
            out.push('\n');
        }
    }
    out
}

pub async fn netrc(args: NetrcArgs) -> anyhow::Result<()> {
    let store = Store::lock()?;
    let (s, proof, _) = credentials(&store, false).await?;
    let (hp, host) = host_port(&origin(&s));
    // Go matches `host:port`, git (curl) matches `host`.
    let mut ours = format!("machine {hp} login gocred password {}~{}\n", s.token.expose(), proof);
    if host != hp {
        ours.push_str(&format!("machine {host} login gocred password {}~{}\n", s.token.expose(), proof));
    }
    match args.out {
        None => out!("{ours}"),
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
    /// Also use SSH for the git hosts the broker serves over SSH: a `Host` entry per host in
    /// ~/.ssh/config (ProxyCommand gocred ssh-proxy), and git `insteadOf` rewriting their
    /// https:// URLs to ssh:// (what the go command fetches with GOPROXY=direct).
    #[arg(long)]
    pub ssh: bool,
    /// Fetch git-hosted modules with git through the broker's `/git/` (GONOPROXY for them)
    /// instead of from `/mod/` (the default: the broker builds them; clients need no git).
    #[arg(long)]
    pub git: bool,
}

/// git's `insteadOf` rules for the broker's git hosts (with `with_git`, to `/git/`; with `ssh` to `ssh://` for
/// the hosts it serves over SSH) added to `git`; with `ssh`, the `~/.ssh/config` block.
fn git_rules(
    meta: &crate::proto::meta::Metadata,
    ssh: bool,
    with_git: bool,
    me: &str,
    broker: &str,
    git: &mut Vec<(String, String)>,
) -> anyhow::Result<Option<String>> {
    let ssh_hosts: Vec<&crate::proto::meta::SshHost> = if ssh { meta.ssh.iter().collect() } else { Vec::new() };
    // Without --git the go command never runs git (everything comes from /mod/): no rules.
    for g in meta.git.iter().filter(|g| with_git && !ssh_hosts.iter().any(|s| s.host == g.host)) {
        git.push((format!("url.{}.insteadOf", g.url), format!("https://{}/", g.host)));
    }
    for s in &ssh_hosts {
        git.push((format!("url.ssh://{}@{}{}.insteadOf", s.user, s.host, s.path), format!("https://{}/", s.host)));
    }
    if ssh && ssh_hosts.is_empty() {
        bail!("the broker at {broker} serves no git host over SSH (no upstream with `ssh` set)");
    }
    if !ssh_hosts.is_empty() && !super::ssh_proxy::plain_command_path(me) {
        bail!(
            "the gocred binary's path `{me}` has characters ssh's ProxyCommand would interpret; install it under a plain path"
        );
    }
    let ssh_block = (!ssh_hosts.is_empty()).then(|| {
        let hosts: Vec<String> = ssh_hosts.iter().map(|s| s.host.clone()).collect();
        super::ssh_proxy::ssh_config_block(me, &hosts)
    });
    Ok(ssh_block)
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
    let meta = crate::client::meta::checked(meta, &broker)?;
    let modules = &meta.modules;
    let mut go_env: Vec<(String, String)> = Vec::new();
    if !modules.is_empty() {
        go_env.push(("GOPRIVATE".into(), modules.join(",")));
        go_env.push(("GONOSUMDB".into(), modules.join(",")));
    }
    let direct = &meta.direct_modules;
    if let Some(gp) = &meta.goproxy {
        // A broker fronting the public proxy is the only one needed; `off` means a module it
        // does not have fails instead of being asked for elsewhere (a private path never leaks).
        let chain =
            if meta.public_proxy { format!("{gp},off") } else { format!("{gp},https://proxy.golang.org,direct") };
        go_env.push(("GOPROXY".into(), chain));
    }
    // Everything goes through the broker's /mod/ (it builds git-hosted modules itself); with
    // --git or --ssh, modules only a git host serves are fetched with git (insteadOf → /git/ or
    // the SSH tunnel).
    let with_git = args.git || args.ssh || meta.goproxy.is_none();
    go_env.push(("GONOPROXY".into(), if direct.is_empty() || !with_git { "none".into() } else { direct.join(",") }));
    go_env.push(("GOAUTH".into(), format!("{me} goauth")));
    let mut git: Vec<(String, String)> = vec![(format!("credential.{broker}.helper"), format!("{me} credential"))];
    let ssh_block = git_rules(&meta, args.ssh, with_git, &me, &broker, &mut git)?;
    for (k, v) in &go_env {
        outln!("go env -w {k}={v}");
    }
    for (k, v) in &git {
        outln!("git config --global {k} {v:?}");
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from).context("HOME is not set")?;
    if let Some(block) = &ssh_block {
        outln!("{} gets:\n{block}", home.join(".ssh/config").display());
    }
    if args.dry_run {
        outln!("gocred: dry run: nothing changed");
        return Ok(());
    }
    if let Some(block) = &ssh_block {
        super::ssh_proxy::write_ssh_config(&home, block)?;
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
    outln!("gocred: go and git now use {broker}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: &[&str] = &["127.0.0.1:8443", "127.0.0.1"];
    const OURS: &str =
        "machine 127.0.0.1:8443 login gocred password new\nmachine 127.0.0.1 login gocred password new\n";

    #[test]
    fn netrc_keeps_other_machines_comments_and_macdefs() {
        let t = "# machine commented.example login c password d\nmachine a.example login x password y\n\
                 macdef init\nmachine inside-macdef\n\nmachine 127.0.0.1:8443 login gocred password old\n\
                 default login anon password z\n";
        let out = netrc_with(t, NAMES, OURS);
        assert!(out.starts_with(OURS), "ours first: {out}");
        assert!(out.contains("# machine commented.example login c password d"), "{out}");
        assert!(out.contains("machine a.example login x password y"));
        assert!(out.contains("macdef init\nmachine inside-macdef\n\n"), "{out}");
        assert!(out.contains("default login anon password z"));
        assert!(!out.contains("old"), "{out}");
    }

    #[test]
    fn netrc_stale_entries_go_wherever_they_are_and_nothing_shadows_ours() {
        for (name, text, keep) in [
            ("unterminated macdef at the end", "machine a login x password y\nmacdef m\necho hi\n", "echo hi"),
            ("default first", "default login anon password anon\n", "default login anon password anon"),
            (
                "stale entry on a multi-entry line",
                "machine a login x password y machine 127.0.0.1:8443 login old password old machine b login u password v\n",
                "machine a login x password y machine b login u password v",
            ),
            (
                "stale entry over several lines",
                "machine 127.0.0.1\n  login old\n  password old\nmachine c login p password q\n",
                "machine c login p password q",
            ),
            ("commented-out stale entry Go would read", "# x machine 127.0.0.1:8443 login old password old\n", ""),
            (
                "stale entry with its macdef",
                "machine 127.0.0.1 login old password old macdef m\nold body\n\nmachine d login e password f\n",
                "machine d login e password f",
            ),
        ] {
            let out = netrc_with(text, NAMES, OURS);
            assert!(out.starts_with(OURS), "{name}: {out}");
            assert!(!out.contains("old"), "{name}: {out}");
            assert!(out.contains(keep), "{name}: {out}");
        }
        // Idempotent: running again replaces ours.
        let once = netrc_with("machine a login x password y\n", NAMES, OURS);
        let twice = netrc_with(&once, NAMES, &OURS.replace("new", "newer"));
        assert_eq!(twice.matches("machine 127.0.0.1 ").count(), 1, "{twice}");
        assert!(!twice.contains("password new\n"), "{twice}");
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
