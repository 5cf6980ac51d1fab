//! The `gocred` command line: argument definitions (clap) and dispatch. With `main.rs`, the only
//! place that uses `anyhow`; everything below returns typed errors.
//!
//! Must not: implement broker logic — it calls into the library.

mod serve;

use clap::{Parser, Subcommand};

/// gocred — credential broker for private Go modules.
#[derive(Debug, Parser)]
#[command(name = "gocred", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (HTTPS API, JWKS, health, metrics).
    Serve(serve::ServeArgs),
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args).await,
    }
}
