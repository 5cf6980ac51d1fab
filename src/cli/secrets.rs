//! `gocred secrets put|list|delete`: manage the records the broker reads from its secrets backend
//! (upstream credentials such as `upstreams/corp-git` with `username`+`password` or `token`), for
//! the embedded encrypted file as for Vault/OpenBao. Values come from a prompt (a terminal, no
//! echo) or from stdin as `FIELD=VALUE` lines — never from the command line, which other users
//! can read in the process list. Nothing here prints a value.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use secrecy::SecretString;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use crate::config::Config;
use crate::secrets::{Cas, SecretData, SecretStore};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["config", "dev"])))]
pub struct SecretsArgs {
    /// Broker config file (its [secrets] section names the backend).
    #[arg(long, value_name = "FILE", env = "GOCRED_CONFIG")]
    pub config: Option<PathBuf>,
    /// The embedded dev broker's encrypted file (`gocred serve --dev`).
    #[arg(long)]
    pub dev: bool,
    /// Data directory for --dev (default: $XDG_DATA_HOME/gocred/dev).
    #[arg(long, value_name = "DIR", env = "GOCRED_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Store a record: values from a prompt, or `FIELD=VALUE` lines on stdin.
    Put {
        /// Record path, e.g. `upstreams/corp-git`.
        path: String,
        /// Fields to prompt for (default `token`; e.g. `--field username --field password`).
        #[arg(long = "field", value_name = "NAME")]
        fields: Vec<String>,
    },
    /// List record paths (no values) at or below PREFIX.
    List {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Delete a record.
    Delete { path: String },
}

fn valid_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.chars().all(|c| c.is_ascii_alphanumeric() || "/._-".contains(c))
}

fn valid_field(f: &str) -> bool {
    !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `FIELD=VALUE` lines (blank lines skipped); a line without `=` or a bad name is an error naming
/// the line number, never its value.
fn parse_fields(text: &str) -> anyhow::Result<Vec<(String, SecretString)>> {
    let mut out: Vec<(String, SecretString)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            bail!("stdin line {}: expected FIELD=VALUE", i + 1);
        };
        let name = name.trim();
        if !valid_field(name) {
            bail!("stdin line {}: field names are letters, digits, _ or -", i + 1);
        }
        if value.is_empty() {
            bail!("stdin line {}: field `{name}` has an empty value", i + 1);
        }
        if out.iter().any(|(n, _)| n == name) {
            bail!("stdin line {}: field `{name}` given twice", i + 1);
        }
        out.push((name.to_string(), SecretString::from(value.to_string())));
    }
    if out.is_empty() {
        bail!("no FIELD=VALUE lines on stdin");
    }
    Ok(out)
}

fn read_values(fields: &[String]) -> anyhow::Result<Vec<(String, SecretString)>> {
    if !std::io::stdin().is_terminal() {
        let mut text = zeroize::Zeroizing::new(String::new());
        std::io::stdin().read_to_string(&mut text).context("cannot read stdin")?;
        let values = parse_fields(&text)?;
        if let Some(f) = fields.iter().find(|f| !values.iter().any(|(n, _)| n == *f)) {
            bail!("field `{f}` was asked for (--field) but is not on stdin");
        }
        return Ok(values);
    }
    let fields = if fields.is_empty() { vec!["token".to_string()] } else { fields.to_vec() };
    let mut out = Vec::new();
    for f in fields {
        let v = rpassword::prompt_password(format!("{f}: ")).with_context(|| format!("cannot read {f}"))?;
        if v.is_empty() {
            bail!("field `{f}`: empty value");
        }
        out.push((f, SecretString::from(v)));
    }
    Ok(out)
}

/// The broker configuration an operator command works on: `--config FILE`, or `--dev`'s embedded
/// one in `--data-dir` (default the dev data dir).
pub(super) fn operator_config(
    config: Option<&PathBuf>,
    dev: bool,
    data_dir: Option<&PathBuf>,
) -> anyhow::Result<Config> {
    let config = if dev {
        let dir = match data_dir.cloned() {
            Some(d) => d,
            None => super::serve::gocred_paths::default_dev_dir()
                .context("cannot find a data dir: set --data-dir or HOME")?,
        };
        Config::dev(&dir, &crate::config::DevIdentity::from_env(), &Default::default())?
    } else {
        let path = config.expect("clap requires --config or --dev");
        Config::load(path, std::env::vars(), &Default::default())?
    };
    crate::install_crypto_provider();
    Ok(config)
}

async fn open(args: &SecretsArgs) -> anyhow::Result<SecretStore> {
    let config = operator_config(args.config.as_ref(), args.dev, args.data_dir.as_ref())?;
    Ok(SecretStore::open(&config.secrets).await?)
}

pub async fn run(args: SecretsArgs) -> anyhow::Result<()> {
    match &args.command {
        SecretsCommand::Put { path, fields } => {
            if !valid_path(path) {
                bail!(
                    "record path `{}` must be elements of letters, digits, . _ - separated by /",
                    path.escape_default()
                );
            }
            if let Some(f) = fields.iter().find(|f| !valid_field(f)) {
                bail!("field name `{}` must be letters, digits, _ or -", f.escape_default());
            }
            let values = read_values(fields)?;
            let store = open(&args).await?;
            let names: Vec<String> = values.iter().map(|(n, _)| n.clone()).collect();
            let data = SecretData(values.into_iter().collect());
            let version = store.put(path, &data, Cas::Any).await?;
            outln!("gocred: stored {path} (fields: {}; version {version}) in {}", names.join(", "), store.describe());
        }
        SecretsCommand::List { prefix } => {
            let store = open(&args).await?;
            for p in store.list(prefix).await? {
                outln!("{p}");
            }
        }
        SecretsCommand::Delete { path } => {
            let store = open(&args).await?;
            if !store.delete(path).await? {
                bail!("no record `{}` in {}", path.escape_default(), store.describe());
            }
            outln!("gocred: deleted {path}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn stdin_fields_parse_and_errors_never_show_values() {
        let v = parse_fields("username=bot\npassword=s3cr=t\n\n").unwrap();
        assert_eq!(v[0].0, "username");
        assert_eq!(v[1].1.expose_secret(), "s3cr=t");
        for (bad, needle) in [
            ("hunter2\n", "line 1: expected FIELD=VALUE"),
            ("to ken=hunter2\n", "line 1: field names"),
            ("token=\n", "empty value"),
            ("token=a\ntoken=hunter2\n", "given twice"),
            ("", "no FIELD=VALUE"),
        ] {
            let e = parse_fields(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad:?}: {e}");
            assert!(!e.contains("hunter2"), "a value leaked into the error: {e}");
        }
        assert!(valid_path("upstreams/corp-git") && !valid_path("../x") && !valid_path("a//b") && !valid_path("a b"));
    }
}
