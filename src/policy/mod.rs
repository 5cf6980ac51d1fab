//! Authorization policy: loading the Cedar schema and policies from the policy directory,
//! validating them strictly against the schema, answering "may this principal do this action on
//! this resource?" (deny by default, a matching `forbid` always wins), and the live
//! [`PolicyEngine`] that holds the current set, reloads it on SIGHUP (keeping the old set when
//! the new one is broken) and caches decisions for a few seconds.
//!
//! Every problem in a policy or schema file is reported as `file:line` (from Cedar's source
//! spans), and every policy is known by its `@id("...")` annotation, else by `file:line`.
//!
//! Layers: `load` (reading and validating policy files, `file:line` diagnostics), `decide`
//! (one pure decision: the Cedar request and entities), `engine` (the live set, reload and the
//! decision cache), `dev` (the `--dev` policies).
//!
//! Must not: talk HTTP or import axum, or do I/O other than reading the policy directory.

mod decide;
mod dev;
mod engine;
mod load;
#[cfg(test)]
mod tests;

pub use dev::dev_policies;
pub use engine::PolicyEngine;
pub use load::Policies;

use crate::auth::{Principal, PrincipalKind};
use cedar_policy as cedar;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Name of the schema file inside the policy directory.
pub const SCHEMA_FILE: &str = "gocred.cedarschema";
/// Extension of policy files inside the policy directory.
pub const POLICY_EXTENSION: &str = "cedar";
/// How long [`PolicyEngine::decide`] reuses a decision.
pub const DECISION_TTL: Duration = Duration::from_secs(5);
/// The decision cache is emptied when it would grow beyond this many entries.
pub const DECISION_CACHE_MAX: usize = 10_000;

/// The schema shipped with gocred (also used by [`dev_policies`]).
/// The shipped schema, compiled in (used by `--dev` and when no policy dir is configured).
pub const EMBEDDED_SCHEMA: &str = include_str!("../../policies/gocred.cedarschema");

/// Principal attributes (from [`Principal::attrs`]) that the schema declares as optional
/// `String`s. Other attributes are not passed to Cedar.
pub(crate) const DECLARED_ATTRS: [&str; 9] = [
    "issuer",
    "subject",
    "namespace",
    "service_account",
    "repository",
    "repository_owner",
    "ref",
    "event_name",
    "kind",
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy directory `{}`", dir.display())]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{}`", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `at` is `file:line`.
    #[error("{at}: invalid schema: {message}")]
    Schema { at: String, message: String },
    /// `at` is `file:line`.
    #[error("{at}: syntax error: {message}")]
    Parse { at: String, message: String },
    /// `at` is `file:line` of the template.
    #[error("{at}: policy templates (`?principal`, `?resource`) are not supported")]
    Template { at: String },
    /// `at` is `file:line` of the second policy using `id`; `first` that of the first one.
    #[error("{at}: policy id `{id}` is already used by the policy at {first}")]
    DuplicateId { at: String, id: String, first: String },
    /// `at` is `file:line` where the policy starts.
    #[error("{at}: policy `{policy}` fails validation: {message}")]
    Validate { at: String, policy: String, message: String },
}

/// What a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Login,
    Download,
    Push,
    Credentials,
    Tunnel,
    Revoke,
}

impl Action {
    pub const ALL: [Action; 6] =
        [Action::Login, Action::Download, Action::Push, Action::Credentials, Action::Tunnel, Action::Revoke];

    /// The Cedar action id (`Action::"<as_str>"`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Download => "download",
            Action::Push => "push",
            Action::Credentials => "credentials",
            Action::Tunnel => "tunnel",
            Action::Revoke => "revoke",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            format!("unknown action `{s}` (expected one of: {})", Action::ALL.map(|a| a.as_str()).join(", "))
        })
    }
}

/// What an action is done to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// The broker itself (Cedar `Broker::"gocred"`); the resource of `login`.
    Broker,
    /// A Go module (Cedar `Module::"<path>"`); `upstream` names the configured upstream serving
    /// it, or is empty.
    Module { path: String, upstream: String },
    /// The sessions of one principal (Cedar `Session::"<kind>:<id>"`); the resource of `revoke`.
    Session { owner_kind: String, owner: String, auth_method: String },
}

impl Resource {
    pub fn module(path: &str, upstream: &str) -> Resource {
        Resource::Module { path: path.to_owned(), upstream: upstream.to_owned() }
    }

    /// `broker`, or the module path.
    pub fn display(&self) -> String {
        match self {
            Resource::Broker => "broker".to_owned(),
            Resource::Module { path, .. } => path.clone(),
            Resource::Session { owner_kind, owner, .. } => format!("session of {owner_kind}:{owner}"),
        }
    }
}

impl FromStr for Resource {
    type Err = String;

    /// `broker`, `module:PATH` or `PATH` (the upstream is left empty).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "broker" {
            return Ok(Resource::Broker);
        }
        let path = s.strip_prefix("module:").unwrap_or(s);
        if let Some(problem) = module_path_problem(path) {
            return Err(format!("invalid module path `{path}`: {problem}"));
        }
        Ok(Resource::module(path, ""))
    }
}

/// The answer to one authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that determined the decision (the permits that allowed it, or the
    /// forbids that denied it; empty when nothing permitted it), sorted.
    pub policy_ids: Vec<String>,
    /// One line for humans and audit logs.
    pub reason: String,
}

impl Decision {
    pub(crate) fn deny(reason: String) -> Decision {
        Decision { allowed: false, policy_ids: Vec::new(), reason }
    }
}

pub(crate) fn uid(type_name: &str, id: &str) -> Result<cedar::EntityUid, String> {
    let type_name =
        cedar::EntityTypeName::from_str(type_name).map_err(|e| format!("entity type `{type_name}`: {e}"))?;
    Ok(cedar::EntityUid::from_type_name_and_id(type_name, cedar::EntityId::new(id)))
}

/// The spelling-independent form of a module or repository path that policies match on
/// (`resource.folded_path`): lower-cased, with a `.git` ending of any element removed, so
/// `Acme/SECRET.Git`, `acme/secret.git` and `acme/secret` are one name whatever the route.
pub fn folded_path(path: &str) -> String {
    path.split('/')
        .map(|seg| {
            let lower = seg.to_ascii_lowercase();
            match lower.strip_suffix(".git") {
                Some(stem) if !stem.is_empty() => stem.to_owned(),
                _ => lower,
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Why `path` cannot be a module path (structural checks only), or `None`.
pub(crate) fn module_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("contains whitespace or control characters");
    }
    if path.contains('\\') {
        return Some("contains a backslash");
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return Some("has an empty, `.` or `..` element");
    }
    None
}
