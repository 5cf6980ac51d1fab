//! `gocred policy check [DIR]` and `gocred policy explain`: validate a policy directory, and show
//! the decision (and the policies that made it) for a principal, action and resource.

use crate::auth::{Principal, PrincipalKind};
use crate::policy::{Action, Policies, Resource};
use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate DIR/gocred.cedarschema and DIR/*.cedar (default: ./policies); errors name file:line.
    Check {
        #[arg(value_name = "DIR", default_value = "policies")]
        dir: PathBuf,
    },
    /// Explain the decision for a principal, action and resource.
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy directory.
    #[arg(long, value_name = "DIR", default_value = "policies")]
    pub dir: PathBuf,
    /// `user:NAME` or `workload:ID`.
    #[arg(long)]
    pub principal: String,
    /// Group of the principal (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Principal attribute KEY=VALUE (repeatable), e.g. kind=ci, repository_owner=acme.
    #[arg(long = "attr", value_name = "KEY=VALUE")]
    pub attrs: Vec<String>,
    /// How the principal authenticated.
    #[arg(long, default_value = "ssh")]
    pub auth_method: String,
    /// login | download | push | credentials | tunnel
    #[arg(long)]
    pub action: String,
    /// `broker`, or a module path such as git.corp.example/acme/lib.
    #[arg(long)]
    pub resource: String,
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Check { dir } => {
            let p = Policies::load_dir(&dir)?;
            outln!("gocred: {} policies in {} are valid", p.len(), dir.display());
            Ok(())
        }
        PolicyCommand::Explain(a) => {
            let p = Policies::load_dir(&a.dir)?;
            let (kind, id) = a.principal.split_once(':').context("--principal must be user:NAME or workload:ID")?;
            let kind = match kind {
                "user" => PrincipalKind::User,
                "workload" => PrincipalKind::Workload,
                _ => bail!("--principal must start with user: or workload:"),
            };
            let mut attrs = std::collections::BTreeMap::new();
            for kv in &a.attrs {
                let (k, v) = kv.split_once('=').with_context(|| format!("--attr {kv}: expected KEY=VALUE"))?;
                attrs.insert(k.to_string(), v.to_string());
            }
            let principal = Principal {
                kind,
                id: id.to_string(),
                groups: a.groups.clone(),
                auth_method: a.auth_method.clone(),
                key_fingerprint: String::new(),
                attrs,
            };
            let action: Action = a.action.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let resource: Resource = a.resource.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let d = p.decide(&principal, action, &resource);
            outln!("decision: {}", if d.allowed { "ALLOW" } else { "DENY" });
            if d.policy_ids.is_empty() {
                outln!("policies: (none matched: deny by default)");
            } else {
                for id in &d.policy_ids {
                    outln!("policy:   {id} ({})", p.location(id).unwrap_or("?"));
                }
            }
            outln!("reason:   {}", d.reason);
            Ok(())
        }
    }
}
