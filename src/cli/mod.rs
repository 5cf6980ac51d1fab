//! The `gocred` command line: argument definitions (clap) and dispatch. With `main.rs`, the only
//! place that uses `anyhow`; everything below returns typed errors.
//!
//! Must not: implement broker logic — it calls into the library.

/// `print!` that returns the write error (a closed pipe: `gocred netrc | head -1`) instead of
/// panicking; `main` exits quietly on a broken pipe.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*))? };
}
/// `println!` with [`out!`]'s error handling.
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n"))? };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))? };
}

mod agent;
mod doctor;
mod helpers;
mod policy;
mod secrets;
mod serve;
mod session;
mod ssh_proxy;
mod store;

use clap::{Parser, Subcommand};

/// Write to stdout and flush, returning any error (the caller's `?` carries it to `main`).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    out.flush()
}

/// True when `e` is (caused by) writing to a closed pipe: the reader went away, not a failure.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// gocred — credential broker for private Go modules.
#[derive(Debug, Parser)]
#[command(name = "gocred", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker: SSH login, key-bound tokens, the GOPROXY/git proxy, JWKS, health, metrics.
    Serve(serve::ServeArgs),
    /// Log in to a broker and keep the session in ~/.cache/gocred.
    Login(session::LoginArgs),
    /// Show who you are logged in as, with which key, until when.
    Status,
    /// Print a valid access token (refreshing it with your key when needed).
    Token,
    /// Revoke the token at the broker and remove the local session.
    Logout,
    /// Go's GOAUTH protocol: print the broker's auth headers (Go runs this itself).
    Goauth {
        /// The URL of a 4xx response (Go's second call; the response head is on stdin).
        url: Option<String>,
    },
    /// git credential helper (git runs `gocred credential get|store|erase`).
    Credential(helpers::CredentialArgs),
    /// GIT_ASKPASS: answer git's username/password prompts for the broker.
    Askpass {
        /// The prompt git shows.
        prompt: String,
    },
    /// netrc entries for the broker (Go: host:port, git: host).
    Netrc(helpers::NetrcArgs),
    /// Configure go (GOPRIVATE, GONOSUMDB, GOPROXY, GOAUTH) and git (credential helper, insteadOf).
    Setup(helpers::SetupArgs),
    /// ssh `ProxyCommand`: tunnel git-over-SSH through the broker (token + proof), e.g.
    /// `ProxyCommand gocred ssh-proxy %h %p`.
    SshProxy(ssh_proxy::SshProxyArgs),
    /// Workload mode: exchange the ambient token (Kubernetes, GitHub Actions, GitLab) and keep the
    /// session fresh; `--out DIR` writes netrc/gitconfig/env; `--install DIR` sets up a pod.
    Agent(agent::AgentArgs),
    /// Store, list or delete records of the broker's secrets backend (upstream credentials);
    /// values from a prompt or stdin, never the command line.
    Secrets(secrets::SecretsArgs),
    /// Inspect the module store: list, verify every hash, remove a version, rotate its key.
    Store(store::StoreArgs),
    /// Why a module does not download: the go environment, the session, the broker, and (given
    /// MODULE[@VERSION]) a real fetch, each failure in one line with its fix. Exit 1 on a problem.
    Doctor(doctor::DoctorArgs),
    /// Validate Cedar policies, or explain a decision.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Login(args) => session::login(args).await,
        Command::Status => session::status().await,
        Command::Token => session::token().await,
        Command::Logout => session::logout().await,
        Command::Policy(cmd) => policy::run(cmd),
        Command::Goauth { url } => helpers::goauth(url).await,
        Command::Credential(a) => helpers::credential(a).await,
        Command::Askpass { prompt } => helpers::askpass(prompt).await,
        Command::Netrc(a) => helpers::netrc(a).await,
        Command::Setup(a) => helpers::setup(a).await,
        Command::Agent(a) => agent::run(a).await,
        Command::SshProxy(a) => ssh_proxy::run(a).await,
        Command::Secrets(a) => secrets::run(a).await,
        Command::Store(a) => store::run(a).await,
        Command::Doctor(a) => doctor::run(a).await,
    }
}
