//! `gocred agent`: workload mode. Exchanges the ambient workload token (Kubernetes projected
//! token, GitHub Actions, GitLab `id_tokens`) for a broker session and keeps it fresh; with
//! `--out DIR` also writes a ready bundle (netrc, gitconfig, env file) for tools that cannot call
//! a helper. `--install DIR` is what the Kubernetes webhook's init container runs: it copies this
//! binary, a gitconfig and the broker's CA into the pod's shared volume.
//!
//! Must not: print a token or proof (the bundle files are 0600 and written atomically).

use crate::client::ambient::Source;
use crate::client::session::{Ambient, credentials, set_ambient_override};
use crate::client::state::{Session, Store};
use anyhow::{Context, bail};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Broker URL.
    #[arg(long, value_name = "URL", env = "GOCRED_BROKER")]
    pub broker: Option<String>,
    /// PEM CA bundle to trust for the broker.
    #[arg(long, value_name = "FILE", env = "GOCRED_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Read the workload token from FILE on every exchange (e.g. a Kubernetes projected token).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Read the workload token from environment variable VAR (e.g. a GitLab `id_tokens` entry).
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// Exchange (and write the bundle) once, then exit.
    #[arg(long)]
    pub once: bool,
    /// Write netrc, gitconfig and env into DIR (0600, atomic), renewed before they expire.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Install the helper into DIR (bin/gocred, gitconfig, ca.pem): the webhook's init
    /// container. Reads GOCRED_BROKER, GOCRED_GIT_HOSTS, GOCRED_INJECT_MODE, GOCRED_CA_PEM.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["once", "out", "token_file", "token_env"])]
    pub install: Option<PathBuf>,
}

/// A broker origin that is safe to write into gitconfig, netrc and env files:
/// `https://host[:port]` (http only to loopback) made of `[A-Za-z0-9.:-]`.
fn checked_origin(url: &str) -> anyhow::Result<String> {
    let url = url.trim_end_matches('/');
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or("");
    let ok = !rest.is_empty()
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '[' | ']'))
        && crate::proto::rules::secure_url(url);
    if !ok {
        bail!("broker URL `{url}` must be https://host[:port] (http:// only to a loopback address)");
    }
    Ok(url.to_string())
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    if let Some(dir) = &args.install {
        return install(dir, args.broker.as_deref());
    }
    let source = Source::detect(args.token_file.clone(), args.token_env.clone()).context(
        "no workload token: pass --token-file FILE or --token-env VAR, or run where GOCRED_TOKEN_FILE, \
         GOCRED_ID_TOKEN or GitHub Actions' ACTIONS_ID_TOKEN_REQUEST_URL is set",
    )?;
    let broker = args.broker.clone().context("which broker? pass --broker URL (or set GOCRED_BROKER)")?;
    let broker = checked_origin(&broker)?;
    // The agent's own state (never a person's login session): GOCRED_STATE_DIR, else
    // `<cache>/agent`.
    let state_dir = match std::env::var_os("GOCRED_STATE_DIR").filter(|v| !v.is_empty()) {
        Some(_) => crate::client::state::cache_dir()?,
        None => crate::client::state::cache_dir()?.join("agent"),
    };
    set_ambient_override(Ambient { source: source.clone(), broker: broker.clone(), ca: args.ca_cert.clone() });
    loop {
        let (session, proof, proof_exp) = {
            let store = Store::lock_at(&state_dir)?;
            // A session for another broker or from a login is not ours to reuse.
            if let Some(s) = store.load()?
                && (s.broker != broker || s.method != crate::client::state::SessionMethod::Ambient)
            {
                store.remove()?;
            }
            credentials(&store, false, false).await?
        };
        let until = session.expires_at.min(proof_exp);
        if let Some(dir) = &args.out {
            write_bundle(dir, &session, &proof, until, args.ca_cert.as_deref()).await?;
            eprintln!(
                "gocred: agent: wrote {} for {} ({}), valid for {}s",
                dir.display(),
                session.user,
                source.describe(),
                until.saturating_sub(crate::unix_now())
            );
        } else {
            eprintln!(
                "gocred: agent: session for {} at {} ({}), token valid for {}s",
                session.user,
                broker,
                source.describe(),
                session.expires_at.saturating_sub(crate::unix_now())
            );
        }
        if args.once {
            return Ok(());
        }
        // Renew at two thirds of what is left (at least every 10 s, at most every 5 min).
        let left = until.saturating_sub(crate::unix_now());
        let wait = (left * 2 / 3).clamp(10, 300);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(wait)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// netrc + gitconfig + env file for tools that cannot run a helper.
async fn write_bundle(dir: &Path, s: &Session, proof: &str, until: u64, ca: Option<&Path>) -> anyhow::Result<()> {
    crate::fsutil::ensure_private_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let origin = checked_origin(&s.broker)?;
    let hp = origin.split_once("://").map(|(_, r)| r).unwrap_or(&origin).to_string();
    let host = hp.rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_else(|| hp.clone());
    if !crate::proto::token::is_token(s.token.expose()) || !crate::proto::token::is_proof(proof) {
        anyhow::bail!("the session holds a malformed token or proof; run gocred login");
    }
    let secret = zeroize::Zeroizing::new(format!("{}~{proof}", s.token.expose()));
    let mut netrc = zeroize::Zeroizing::new(format!("machine {hp} login gocred password {}\n", secret.as_str()));
    if host != hp {
        netrc.push_str(&format!("machine {host} login gocred password {}\n", secret.as_str()));
    }
    let client = crate::client::api::BrokerClient::new(&origin, ca)?;
    let meta = client.metadata().await?;
    let meta = crate::client::meta::checked(meta, &origin)?;
    let modules = &meta.modules;
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gocred:{}", secret.as_str()));
    let mut gitconfig = zeroize::Zeroizing::new(format!(
        "# Written by gocred agent; valid until {until} (Unix time), renewed by the agent.\n\
         [http \"{origin}/\"]\n\textraHeader = Authorization: Basic {basic}\n"
    ));
    for g in &meta.git {
        gitconfig.push_str(&format!("[url \"{}\"]\n\tinsteadOf = https://{}/\n", g.url, g.host));
    }
    let mut env = String::new();
    if !modules.is_empty() {
        env.push_str(&format!("GOPRIVATE={}\nGONOSUMDB={}\n", modules.join(","), modules.join(",")));
    }
    if meta.goproxy.is_some() {
        // A broker fronting the public proxy is the only one: nothing is asked for elsewhere.
        let rest = if meta.public_proxy { "off" } else { "https://proxy.golang.org,direct" };
        env.push_str(&format!("GOPROXY={origin}/mod,{rest}\nGONOPROXY=none\n"));
    }
    env.push_str(&format!(
        "GOAUTH=netrc\nNETRC={}\nGIT_CONFIG_GLOBAL={}\nGOCRED_EXPIRES_AT={until}\n",
        dir.join("netrc").display(),
        dir.join("gitconfig").display()
    ));
    let write = |name: &str, data: &[u8]| {
        crate::fsutil::write_private_atomic(&dir.join(name), data)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write("netrc", netrc.as_bytes())?;
    write("gitconfig", gitconfig.as_bytes())?;
    write("env", env.as_bytes())?;
    Ok(())
}

/// `bin/gocred`: a copy of this binary, through a fresh, unpredictable temp name opened with
/// O_EXCL (never through a planted symlink), renamed into place.
fn copy_self(bin: &Path) -> anyhow::Result<()> {
    let me = std::env::current_exe().context("cannot find the gocred binary")?;
    let tmp = bin.join(format!(".gocred.{}.tmp", crate::fsutil::hex(&crate::random_bytes::<8>())));
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut src = std::fs::File::open(&me).with_context(|| format!("cannot read {}", me.display()))?;
        std::io::copy(&mut src, &mut out).with_context(|| format!("cannot copy {}", me.display()))?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, bin.join("gocred"))?;
    Ok(())
}

/// `GOCRED_GIT_HOSTS`: the hosts the broker proxies over git smart HTTP (bare host names).
fn git_hosts_from_env() -> anyhow::Result<Vec<String>> {
    let mut hosts: Vec<String> = Vec::new();
    for h in std::env::var("GOCRED_GIT_HOSTS").unwrap_or_default().split(',').map(str::trim).filter(|h| !h.is_empty()) {
        if !h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-') {
            bail!("GOCRED_GIT_HOSTS: `{h}` is not a host name");
        }
        if !hosts.iter().any(|x| x == h) {
            hosts.push(h.to_string());
        }
    }
    Ok(hosts)
}

/// `GOCRED_CA_PEM`, when set: `ca.pem` and `certs/gocred-ca.pem`, and git's CA for the broker.
fn write_ca(dir: &Path, broker: &str, gitconfig: &mut String) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let write = |name: &str, data: &[u8]| {
        crate::fsutil::write_private_atomic(&dir.join(name), data)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    let ca = std::env::var("GOCRED_CA_PEM").ok().filter(|p| !p.trim().is_empty());
    if let Some(pem) = &ca {
        if !pem.contains("-----BEGIN CERTIFICATE-----") || pem.contains("PRIVATE KEY") {
            bail!("GOCRED_CA_PEM must hold PEM certificates only");
        }
        // The broker's CA is added to what each tool trusts, never substituted: `ca.pem` for the
        // helper (GOCRED_CA_CERT) and for git on the broker's URLs only; `certs/` as an extra
        // directory for Go and OpenSSL (SSL_CERT_DIR), next to the image's own roots.
        let text = format!("{}\n", pem.trim());
        write("ca.pem", text.as_bytes())?;
        std::fs::create_dir_all(dir.join("certs"))?;
        write("certs/gocred-ca.pem", text.as_bytes())?;
        for f in ["ca.pem", "certs/gocred-ca.pem"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
        }
        std::fs::set_permissions(dir.join("certs"), std::fs::Permissions::from_mode(0o755))?;
        gitconfig.push_str(&format!("[http \"{broker}/\"]\n\tsslCAInfo = {}\n", dir.join("ca.pem").display()));
    }
    Ok(())
}

/// The init container's job: `DIR/bin/gocred`, `DIR/gitconfig`, `DIR/ca.pem`.
fn install(dir: &Path, broker: Option<&str>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let broker = checked_origin(broker.context("GOCRED_BROKER is not set")?)?;
    // git runs the helper through a shell: the path must be plain.
    let plain =
        |p: &Path| p.to_str().is_some_and(|s| s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)));
    if !plain(dir) || !dir.is_absolute() {
        bail!("install directory `{}` must be an absolute path of letters, digits, `/._-`", dir.display());
    }
    let mode = std::env::var("GOCRED_INJECT_MODE").unwrap_or_else(|_| "goproxy".into());
    if mode != "goproxy" && mode != "git" {
        bail!("GOCRED_INJECT_MODE `{mode}` must be goproxy or git");
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    copy_self(&bin)?;
    let helper = bin.join("gocred");
    // The user's own git config still applies (safe.directory, other rewrites); ours follows and
    // wins for the broker. Missing include files are ignored by git.
    let mut gitconfig = format!(
        "# Written by gocred agent --install.\n[include]\n\tpath = ~/.gitconfig\n\tpath = ~/.config/git/config\n\
         [credential \"{broker}\"]\n\thelper =\n\thelper = {} credential\n",
        helper.display()
    );
    // Hosts the broker proxies over git smart HTTP: rewritten to it in both modes (a `git clone
    // https://<host>/...` in the build works too).
    let hosts = git_hosts_from_env()?;
    if mode == "git" && hosts.is_empty() {
        bail!("GOCRED_INJECT_MODE is git but GOCRED_GIT_HOSTS names no host");
    }
    for h in hosts {
        gitconfig.push_str(&format!("[url \"{broker}/git/{h}/\"]\n\tinsteadOf = https://{h}/\n"));
    }
    let write = |name: &str, data: &[u8]| {
        crate::fsutil::write_private_atomic(&dir.join(name), data)
            .with_context(|| format!("cannot write {}", dir.join(name).display()))
    };
    write_ca(dir, &broker, &mut gitconfig)?;
    write("gitconfig", gitconfig.as_bytes())?;
    // Containers of the pod may run as other users: the files are world-readable, the binary
    // executable, and `state/` is shared (sticky, world-writable): each user's helper keeps its
    // session in its own 0700 `state/uid-<uid>/` below it.
    std::fs::set_permissions(dir.join("gitconfig"), std::fs::Permissions::from_mode(0o644))?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(bin.join("gocred"), std::fs::Permissions::from_mode(0o755))?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state).with_context(|| format!("cannot create {}", state.display()))?;
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o1777))?;
    outln!("gocred: installed {} (mode {mode}, broker {broker})", helper.display());
    Ok(())
}
