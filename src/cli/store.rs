//! `gocred store ls|verify|rm|rotate-key`: the operator's view of the module store the broker
//! configured by `--config` (or `--dev`) uses — list what is stored with its hashes, re-check
//! every hash, remove a version, add a data key.

use anyhow::bail;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;

use crate::modstore::{Kind, ModStore, ObjectName};
use crate::secrets::SecretStore;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "dev"])))]
pub struct StoreArgs {
    /// Broker config file (its [store] and [secrets] sections).
    #[arg(long, value_name = "FILE", env = "GOCRED_CONFIG")]
    pub config: Option<PathBuf>,
    /// The embedded dev broker's store (`gocred serve --dev`).
    #[arg(long)]
    pub dev: bool,
    /// Data directory for --dev (default: $XDG_DATA_HOME/gocred/dev).
    #[arg(long, value_name = "DIR", env = "GOCRED_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// List stored versions (module, version, artifact, size, h1:), optionally below a module prefix.
    Ls {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Read every artifact of MODULE@VERSION (or of everything) and re-check every hash; a
    /// failing one is quarantined. Exit 1 when any fails.
    Verify { target: Option<String> },
    /// Remove MODULE@VERSION (all three artifacts). `--forget`: also accept a different upstream
    /// answer for it next time (this replica's ledger forgets the recorded hash).
    Rm {
        target: String,
        #[arg(long)]
        forget: bool,
    },
    /// Add a data key and seal new objects under it (old objects keep their key).
    RotateKey,
}

async fn open(args: &StoreArgs) -> anyhow::Result<Arc<ModStore>> {
    let config = super::secrets::operator_config(args.config.as_ref(), args.dev, args.data_dir.as_ref())?;
    let secrets = Arc::new(SecretStore::open(&config.secrets).await?);
    Ok(Arc::new(ModStore::open(&config.store, secrets, &config.secrets.prefix).await?))
}

fn names(target: &str) -> anyhow::Result<Vec<ObjectName>> {
    let mut out = Vec::new();
    for kind in [Kind::Info, Kind::Mod, Kind::Zip] {
        match crate::modstore::parse_name(target, kind) {
            Some(n) => out.push(n),
            None => bail!("`{}` is not MODULE@VERSION", target.escape_default()),
        }
    }
    Ok(out)
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let store = open(&args).await?;
    match &args.command {
        StoreCommand::Ls { prefix } => {
            for (h, _) in store.heads().await? {
                if h.module.starts_with(prefix.as_str()) {
                    let h1 = h.h1.as_deref().unwrap_or("-");
                    println!(
                        "{}@{}\t{}\t{}\t{h1}\t{}\t{}",
                        h.module,
                        h.version,
                        h.kind.as_str(),
                        h.size,
                        h.upstream,
                        h.key_id
                    );
                }
            }
        }
        StoreCommand::Verify { target } => {
            let all: Vec<ObjectName> = match target {
                Some(t) => names(t)?,
                None => store.heads().await?.into_iter().map(|(h, _)| h.name()).collect(),
            };
            let mut bad = 0;
            for n in all {
                match store.verify(&n).await {
                    Ok(h) => println!("ok\t{n}\t{}", h.h1.as_deref().unwrap_or(&h.sha256)),
                    Err(crate::modstore::StoreError::Integrity { reason, .. }) if reason == "not stored" => {}
                    Err(e) => {
                        bad += 1;
                        println!("FAILED\t{n}\t{e}");
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} stored artifact(s) failed verification (quarantined)");
            }
        }
        StoreCommand::Rm { target, forget } => {
            let mut removed = 0;
            for n in names(target)? {
                if store.remove(&n, *forget).await? {
                    removed += 1;
                }
            }
            println!("removed {removed} artifact(s) of {target}");
        }
        StoreCommand::RotateKey => {
            let id = store.keyring().rotate().await?;
            println!("new objects are sealed under key {id}");
        }
    }
    Ok(())
}
