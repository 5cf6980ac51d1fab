//! `gocred serve`: load and validate the config (`--config FILE`) or build the embedded dev one
//! (`--dev`), optionally only check it (`--check`), then run the broker until SIGINT/SIGTERM.

use anyhow::Context;
use clap::Args;
use gocred_paths::default_dev_dir;
use std::path::PathBuf;

use crate::config::{BackendConfig, Config, Overrides};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "dev"])))]
pub struct ServeArgs {
    /// Broker config file (TOML). Keys can be overridden by GOCRED_<SECTION>__<KEY> env vars.
    #[arg(long, value_name = "FILE", env = "GOCRED_CONFIG")]
    pub config: Option<PathBuf>,
    /// Embedded defaults: loopback HTTPS on 127.0.0.1:8443, self-signed dev CA, encrypted file store.
    #[arg(long)]
    pub dev: bool,
    /// Validate the configuration and exit (non-zero with the reason when invalid).
    #[arg(long)]
    pub check: bool,
    /// Listen address (overrides server.listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// The public module proxy (and checksum database) --dev fronts: default
    /// https://proxy.golang.org; `off` for none.
    #[arg(long, value_name = "URL", env = "GOCRED_PUBLIC_PROXY")]
    pub public_proxy: Option<String>,
    /// Data directory for --dev (default: $XDG_DATA_HOME/gocred/dev).
    #[arg(long, value_name = "DIR", env = "GOCRED_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

pub(super) mod gocred_paths {
    use std::path::PathBuf;
    /// `$XDG_DATA_HOME/gocred/dev`, or `~/.local/share/gocred/dev`.
    pub fn default_dev_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_DATA_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
        Some(base.join("gocred/dev"))
    }
}

fn describe_backend(c: &Config) -> String {
    match &c.secrets.backend {
        BackendConfig::File(f) => format!("file {}", f.path.display()),
        BackendConfig::Vault(v) => format!("vault {} (kv mount `{}`)", v.address, v.kv_mount),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let flags = Overrides { listen: args.listen.clone(), public_proxy: args.public_proxy.clone() };
    let mut dev_ca = None;
    let config = if args.dev {
        let dir = match args.data_dir.clone() {
            Some(d) => d,
            None => default_dev_dir().context("cannot find a data dir: set --data-dir or HOME")?,
        };
        let config = Config::dev(&dir, &crate::config::DevIdentity::from_env(), &flags)?;
        if !args.check {
            crate::fsutil::ensure_private_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            dev_ca = Some(crate::tls::ensure_dev_ca(&dir.join("tls"))?);
        }
        config
    } else {
        let path = args.config.clone().expect("clap requires --config or --dev");
        Config::load(&path, std::env::vars(), &flags)?
    };
    if args.check {
        let (policies, _) = crate::server::load_policies(&config.policy)?;
        outln!("gocred: {} policies valid", policies.len());
        outln!(
            "gocred: config OK ({}; secrets: {}; listen {})",
            config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "--dev".into()),
            describe_backend(&config),
            config.server.listen
        );
        return Ok(());
    }

    let listener = std::net::TcpListener::bind(config.server.listen)
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    let scheme = if config.server.tls.is_some() { "https" } else { "http" };
    let url = crate::server::origin_for(&config, &listener)?;
    let backend = describe_backend(&config);
    let mut shutdown = Box::pin(shutdown_signal()?);
    let Some(broker) = crate::server::start_waiting(config, url.clone(), &mut shutdown).await? else {
        outln!("gocred: stopped");
        return Ok(());
    };
    let kid = broker.keys.snapshot().set.current().kid.clone();

    outln!("gocred: listening on {scheme}://{addr} (public URL {url})");
    outln!("gocred: secrets backend: {backend}; signing key {kid}");
    if let Some(ca) = &dev_ca {
        outln!(
            "gocred: dev CA {} ({}): trust it with SSL_CERT_FILE / GIT_SSL_CAINFO / curl --cacert",
            ca.ca_cert.display(),
            if ca.created_ca { "created" } else { "reused" }
        );
        if let crate::config::AuthorizedKeys::Inline(m) = &broker.config.ssh.authorized_keys {
            for (user, keys) in m {
                outln!("gocred: dev user {user}: {} SSH key(s) from ~/.ssh/*.pub may log in", keys.len());
            }
        }
        outln!("gocred: next: gocred login --ssh --broker {url} --ca-cert {}", ca.ca_cert.display());
        outln!("gocred:       gocred status");
        outln!("gocred:       curl --cacert {} {url}/.well-known/jwks.json", ca.ca_cert.display());
    }
    crate::server::serve(broker, listener, shutdown).await?;
    outln!("gocred: stopped");
    Ok(())
}

/// SIGTERM/SIGINT handlers, installed now (before the "listening" line is printed, so a signal
/// sent as soon as it appears is handled); the future resolves on the first signal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
    })
}
