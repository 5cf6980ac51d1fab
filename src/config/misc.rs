//! `[policy]` (where the Cedar policies are) and `[audit]` (where the audit log goes): their
//! validated types and validators.

use super::ConfigError;
use super::Ctx;
use super::raw::{RawAudit, RawPolicy};
use std::path::PathBuf;

/// Where the Cedar policies come from.
#[derive(Debug, Clone)]
pub enum PolicyConfig {
    /// `dir/gocred.cedarschema` + `dir/*.cedar`, reloaded on SIGHUP.
    Dir(PathBuf),
    /// `--dev`: the embedded policy letting `user` download everything.
    Dev { user: String },
    /// No `[policy]` section: no policies, so everything is denied (a warning at start).
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditConfig {
    Stdout,
    File(PathBuf),
}

/// `[policy]` → [`PolicyConfig`] (no section: no policies).
pub(super) fn validate_policy(cx: &Ctx, raw: Option<RawPolicy>) -> PolicyConfig {
    match raw {
        Some(p) => PolicyConfig::Dir(cx.rel(p.dir)),
        None => PolicyConfig::None,
    }
}

/// `[audit]` → [`AuditConfig`] (`path = "-"` or no section: stdout).
pub(super) fn validate_audit(cx: &Ctx, raw: Option<RawAudit>) -> Result<AuditConfig, ConfigError> {
    match raw.map(|a| a.path) {
        None => Ok(AuditConfig::Stdout),
        Some(p) if p == "-" => Ok(AuditConfig::Stdout),
        Some(p) if p.is_empty() => Err(cx.err("audit.path", "must be \"-\" or a file path".into())),
        Some(p) => Ok(AuditConfig::File(cx.rel(PathBuf::from(p)))),
    }
}

/// `[store] dir` → the broker's private data dir for module builds (git mirrors, built zips);
/// default `$TMPDIR/gocred-store`.
pub(super) fn validate_store(cx: &Ctx, raw: Option<super::raw::RawStore>) -> Result<PathBuf, ConfigError> {
    match raw.and_then(|s| s.dir) {
        // Next to the config file, like its other relative paths: one broker, one store.
        None => Ok(cx.rel(PathBuf::from("store"))),
        Some(d) if d.as_os_str().is_empty() => Err(cx.err("store.dir", "must be a directory path".into())),
        Some(d) => Ok(cx.rel(d)),
    }
}
