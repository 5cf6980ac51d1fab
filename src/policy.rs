//! Authorization policy: loading the Cedar schema and policies from the policy directory,
//! validating them strictly against the schema, answering "may this principal do this action on
//! this resource?" (deny by default, a matching `forbid` always wins), and the live
//! [`PolicyEngine`] that holds the current set, reloads it on SIGHUP (keeping the old set when
//! the new one is broken) and caches decisions for a few seconds.
//!
//! Every problem in a policy or schema file is reported as `file:line` (from Cedar's source
//! spans), and every policy is known by its `@id("...")` annotation, else by `file:line`.
//!
//! Must not: talk HTTP or import axum, or do I/O other than reading the policy directory.

use crate::auth::{Principal, PrincipalKind};
use cedar_policy as cedar;
use miette::Diagnostic;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

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
pub const EMBEDDED_SCHEMA: &str = include_str!("../policies/gocred.cedarschema");

/// Principal attributes (from [`Principal::attrs`]) that the schema declares as optional
/// `String`s. Other attributes are not passed to Cedar.
const DECLARED_ATTRS: [&str; 9] = [
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

/// Placeholder for the (escaped) user name in [`DEV_POLICIES`].
const DEV_USER: &str = "{{USER}}";

/// The `--dev` policy set: one user may log in, download and get credentials for anything.
const DEV_POLICIES: &str = r#"// Built-in development policies (gocred --dev).
@id("dev-login")
permit (principal == User::"{{USER}}", action == Action::"login", resource);

@id("dev-download")
permit (
  principal == User::"{{USER}}",
  action in [Action::"download", Action::"credentials"],
  resource
);

@id("dev-no-push")
forbid (principal, action == Action::"push", resource);
"#;

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
    fn deny(reason: String) -> Decision {
        Decision { allowed: false, policy_ids: Vec::new(), reason }
    }
}

/// A validated policy set with its schema.
pub struct Policies {
    set: cedar::PolicySet,
    schema: cedar::Schema,
    /// Policy id → `file:line` where it starts.
    locations: HashMap<String, String>,
}

impl fmt::Debug for Policies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policies").field("policies", &self.locations).finish_non_exhaustive()
    }
}

impl Policies {
    /// Read `dir/gocred.cedarschema` and every `dir/*.cedar` (in name order, skipping hidden
    /// files), parse, and validate strictly against the schema.
    pub fn load_dir(dir: &Path) -> Result<Policies, PolicyError> {
        let schema_path = dir.join(SCHEMA_FILE);
        let schema = read_file(&schema_path)?;
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::ReadDir { dir: dir.to_owned(), source })?;
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| PolicyError::ReadDir { dir: dir.to_owned(), source })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_policy_file =
                !name.starts_with('.') && Path::new(name).extension().is_some_and(|e| e == POLICY_EXTENSION);
            if is_policy_file && entry.path().is_file() {
                paths.push((name.to_owned(), entry.path()));
            }
        }
        paths.sort();
        let mut files = Vec::with_capacity(paths.len());
        for (name, path) in paths {
            files.push((name, read_file(&path)?));
        }
        if files.is_empty() {
            tracing::warn!(
                dir = %dir.display(),
                "no *.{POLICY_EXTENSION} files in the policy directory; every request will be denied"
            );
        }
        Self::from_sources(&schema, &files)
    }

    /// Same as [`Policies::load_dir`] from in-memory sources: the schema text (reported as
    /// `gocred.cedarschema`) and (file name, text) pairs.
    pub fn from_sources(schema: &str, files: &[(String, String)]) -> Result<Policies, PolicyError> {
        let schema = parse_schema(SCHEMA_FILE, schema)?;
        let mut set = cedar::PolicySet::new();
        let mut locations = HashMap::new();
        // Id, file index, start line — in load order, to report the first invalid policy.
        let mut order: Vec<(String, usize, usize)> = Vec::new();
        for (index, (name, text)) in files.iter().enumerate() {
            for (id, line, policy) in parse_policy_file(name, text)? {
                if let Some(first) = locations.get(&id) {
                    return Err(PolicyError::DuplicateId {
                        at: format!("{name}:{line}"),
                        id,
                        first: String::clone(first),
                    });
                }
                set.add(policy.new_id(cedar::PolicyId::new(&id))).map_err(|e| PolicyError::DuplicateId {
                    at: format!("{name}:{line}"),
                    id: id.clone(),
                    first: e.to_string(),
                })?;
                locations.insert(id.clone(), format!("{name}:{line}"));
                order.push((id, index, line));
            }
        }

        let validator = cedar::Validator::new(schema.clone());
        let result = validator.validate(&set, cedar::ValidationMode::Strict);
        for warning in result.validation_warnings() {
            let at = locations.get(id_str(warning.policy_id())).map_or("?", String::as_str);
            tracing::warn!(at, policy = %warning.policy_id(), "policy warning: {}", diagnostic_message(warning));
        }
        let errors: Vec<&cedar::ValidationError> = result.validation_errors().collect();
        // Report the first problem: first policy in load order, earliest spot in it.
        let first = errors.iter().min_by_key(|e| {
            let position =
                order.iter().position(|(id, _, _)| id.as_str() == id_str(e.policy_id())).unwrap_or(usize::MAX);
            (position, diagnostic_offset(**e).unwrap_or(usize::MAX))
        });
        if let Some(error) = first {
            let policy = id_str(error.policy_id()).to_owned();
            let found = order
                .iter()
                .find(|(id, _, _)| *id == policy)
                .and_then(|(_, index, line)| Some((files.get(*index)?, line)));
            let (at, detail) = match found {
                Some(((name, text), line)) => {
                    // Where inside the policy the problem is, when Cedar says so.
                    let detail = diagnostic_line(*error, text)
                        .filter(|l| l != line)
                        .map(|l| format!(" (at {name}:{l})"))
                        .unwrap_or_default();
                    (format!("{name}:{line}"), detail)
                }
                None => ("?".to_owned(), String::new()),
            };
            let more = match errors.len() {
                0 | 1 => String::new(),
                n => format!(" (and {} more problem(s))", n - 1),
            };
            // Cedar's message starts with "for policy `<id>`" (", " or ": "), already said.
            let message = diagnostic_message(*error);
            let prefix = format!("for policy `{policy}`");
            let message =
                message.strip_prefix(&prefix).map(|m| m.trim_start_matches([',', ':', ' '])).unwrap_or(&message);
            return Err(PolicyError::Validate { at, policy, message: format!("{message}{detail}{more}") });
        }

        Ok(Policies { set, schema, locations })
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.set.num_of_policies()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `file:line` where the policy with this id starts.
    pub fn location(&self, policy_id: &str) -> Option<&str> {
        self.locations.get(policy_id).map(String::as_str)
    }

    /// Pure decision, deny by default: allowed only when some permit matches and no forbid does.
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let who = principal.display();
        let what = match resource {
            Resource::Broker => action.as_str().to_owned(),
            Resource::Module { path, .. } => format!("{action} of {path}"),
            Resource::Session { .. } => format!("{action} of the {}", resource.display()),
        };
        if let Resource::Module { path, .. } = resource
            && let Some(problem) = module_path_problem(path)
        {
            return Decision::deny(format!("{action} of invalid module path {path:?} ({problem}) for {who}"));
        }
        let (request, entities) = match self.request(principal, action, resource) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(principal = %who, %action, resource = %resource.display(), "cannot evaluate request: {e}");
                return Decision::deny(format!("cannot evaluate {what} for {who}: {e}"));
            }
        };
        let response = cedar::Authorizer::new().is_authorized(&request, &self.set, &entities);
        let diagnostics = response.diagnostics();
        let failed: Vec<String> = diagnostics.errors().map(|e| diagnostic_message(e)).collect();
        if !failed.is_empty() {
            tracing::warn!(principal = %who, %action, resource = %resource.display(), errors = ?failed, "policies failed to evaluate (request denied)");
        }
        let mut policy_ids: Vec<String> = diagnostics.reason().map(|id| id.to_string()).collect();
        policy_ids.sort();
        let names = policy_ids.join(", ");
        let plural = if policy_ids.len() == 1 { "y" } else { "ies" };
        match response.decision() {
            // Fail closed: a policy that could not be evaluated might have been a forbid.
            cedar::Decision::Allow if !failed.is_empty() => Decision::deny(format!(
                "{} policy evaluation error(s) while deciding {what} for {who}: denied to be safe ({})",
                failed.len(),
                failed.join("; ")
            )),
            cedar::Decision::Allow => {
                Decision { allowed: true, reason: format!("permitted by polic{plural} {names}"), policy_ids }
            }
            cedar::Decision::Deny if !policy_ids.is_empty() => Decision {
                allowed: false,
                reason: format!("forbidden by polic{plural} {names}: {what} for {who}"),
                policy_ids,
            },
            cedar::Decision::Deny => {
                let mut reason = format!("no policy permits {what} for {who}");
                if !failed.is_empty() {
                    reason.push_str(&format!(" ({} policy evaluation error(s): {})", failed.len(), failed.join("; ")));
                }
                Decision::deny(reason)
            }
        }
    }

    /// The Cedar request and entities for one question.
    fn request(
        &self,
        principal: &Principal,
        action: Action,
        resource: &Resource,
    ) -> Result<(cedar::Request, cedar::Entities), String> {
        let mut entities = Vec::new();

        let principal_type = match principal.kind {
            PrincipalKind::User => "User",
            PrincipalKind::Workload => "Workload",
        };
        let principal_uid = uid(principal_type, &principal.id)?;
        let groups: HashSet<&str> = principal.groups.iter().map(String::as_str).collect();
        let mut parents = HashSet::new();
        for group in &groups {
            let group_uid = uid("Group", group)?;
            entities.push(cedar::Entity::new_no_attrs(group_uid.clone(), HashSet::new()));
            parents.insert(group_uid);
        }
        let mut attrs = HashMap::from([
            (
                "groups".to_owned(),
                cedar::RestrictedExpression::new_set(
                    principal.groups.iter().map(|g| cedar::RestrictedExpression::new_string(g.clone())),
                ),
            ),
            ("auth_method".to_owned(), cedar::RestrictedExpression::new_string(principal.auth_method.clone())),
            ("key_fingerprint".to_owned(), cedar::RestrictedExpression::new_string(principal.key_fingerprint.clone())),
        ]);
        for (name, value) in &principal.attrs {
            if DECLARED_ATTRS.contains(&name.as_str()) {
                attrs.insert(name.clone(), cedar::RestrictedExpression::new_string(value.clone()));
            }
        }
        entities.push(cedar::Entity::new(principal_uid.clone(), attrs, parents).map_err(|e| diagnostic_message(&e))?);

        let resource_uid = match resource {
            Resource::Broker => {
                let broker = uid("Broker", "gocred")?;
                entities.push(cedar::Entity::new_no_attrs(broker.clone(), HashSet::new()));
                broker
            }
            Resource::Module { path, upstream } => {
                let module = uid("Module", path)?;
                let mut segments = path.split('/');
                let host = segments.next().unwrap_or_default();
                let mut attrs = HashMap::from([
                    ("path".to_owned(), cedar::RestrictedExpression::new_string(path.clone())),
                    ("folded_path".to_owned(), cedar::RestrictedExpression::new_string(folded_path(path))),
                    ("host".to_owned(), cedar::RestrictedExpression::new_string(host.to_owned())),
                    ("upstream".to_owned(), cedar::RestrictedExpression::new_string(upstream.clone())),
                ]);
                if let Some(org) = segments.next().filter(|o| !o.is_empty()) {
                    attrs.insert("org".to_owned(), cedar::RestrictedExpression::new_string(org.to_owned()));
                }
                entities.push(
                    cedar::Entity::new(module.clone(), attrs, HashSet::new()).map_err(|e| diagnostic_message(&e))?,
                );
                module
            }
            Resource::Session { owner_kind, owner, auth_method } => {
                let session = uid("Session", &format!("{owner_kind}:{owner}"))?;
                let attrs = HashMap::from([
                    ("owner_kind".to_owned(), cedar::RestrictedExpression::new_string(owner_kind.clone())),
                    ("owner".to_owned(), cedar::RestrictedExpression::new_string(owner.clone())),
                    ("auth_method".to_owned(), cedar::RestrictedExpression::new_string(auth_method.clone())),
                ]);
                entities.push(
                    cedar::Entity::new(session.clone(), attrs, HashSet::new()).map_err(|e| diagnostic_message(&e))?,
                );
                session
            }
        };

        let entities =
            cedar::Entities::from_entities(entities, Some(&self.schema)).map_err(|e| diagnostic_message(&e))?;
        let request = cedar::Request::new(
            principal_uid,
            uid("Action", action.as_str())?,
            resource_uid,
            cedar::Context::empty(),
            Some(&self.schema),
        )
        .map_err(|e| diagnostic_message(&e))?;
        Ok((request, entities))
    }
}

/// The policies for `gocred --dev`: `user` may log in, and download and get credentials for
/// every module; nobody may push. Built from the embedded schema.
pub fn dev_policies(user: &str) -> Result<Policies, PolicyError> {
    let text = DEV_POLICIES.replace(DEV_USER, &user.escape_default().to_string());
    Policies::from_sources(EMBEDDED_SCHEMA, &[("dev.cedar".to_owned(), text)])
}

/// A cached decision.
struct Cached {
    decision: Decision,
    at: Instant,
    /// Policy set generation the decision was made with.
    generation: u64,
}

/// (principal cache key, action, resource).
type CacheKey = (String, Action, Resource);

struct Current {
    policies: Arc<Policies>,
    /// Bumped on every successful reload, so a decision made with the old set that lands in the
    /// cache after the reload cleared it is never served.
    generation: u64,
}

/// The live engine: the current policy set (reloadable) and a short decision cache.
pub struct PolicyEngine {
    current: RwLock<Current>,
    dir: Option<PathBuf>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("dir", &self.dir)
            .field("policies", &self.read().policies.len())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// `dir` is where [`PolicyEngine::reload`] re-reads the policies from (`None`: built-in
    /// policies, nothing to reload).
    pub fn new(policies: Policies, dir: Option<PathBuf>) -> PolicyEngine {
        PolicyEngine {
            current: RwLock::new(Current { policies: Arc::new(policies), generation: 0 }),
            dir,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Re-read the policy directory (SIGHUP). On success the new set replaces the old one and
    /// the decision cache is cleared; on error the old set stays in force and the error is
    /// returned (the caller logs it). `Ok(None)`: built-in policies, nothing to reload.
    pub fn reload(&self) -> Result<Option<usize>, PolicyError> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let policies = Policies::load_dir(dir)?;
        let n = policies.len();
        {
            let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
            current.policies = Arc::new(policies);
            current.generation += 1;
        }
        self.cache().clear();
        Ok(Some(n))
    }

    /// [`Policies::decide`] with the current set, reusing a decision for the same principal,
    /// action and resource for up to [`DECISION_TTL`].
    pub fn decide(&self, principal: &Principal, action: Action, resource: &Resource) -> Decision {
        let (policies, generation) = {
            let current = self.read();
            (Arc::clone(&current.policies), current.generation)
        };
        // The fingerprint is an entity attribute policies may test, so it is part of the key.
        let key = (format!("{}\u{1f}{}", principal.cache_key(), principal.key_fingerprint), action, resource.clone());
        {
            let mut cache = self.cache();
            match cache.get(&key) {
                Some(c) if c.generation == generation && c.at.elapsed() < DECISION_TTL => {
                    return c.decision.clone();
                }
                Some(_) => {
                    cache.remove(&key);
                }
                None => {}
            }
        }
        let decision = policies.decide(principal, action, resource);
        let mut cache = self.cache();
        if cache.len() >= DECISION_CACHE_MAX {
            cache.clear();
        }
        cache.insert(key, Cached { decision: decision.clone(), at: Instant::now(), generation });
        decision
    }

    // Poisoning is ignored: writers only swap an `Arc` / insert or clear entries, so the data is
    // always consistent.
    fn read(&self) -> RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<CacheKey, Cached>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn read_file(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::ReadFile { path: path.to_owned(), source })
}

fn parse_schema(name: &str, text: &str) -> Result<cedar::Schema, PolicyError> {
    let (schema, warnings) = cedar::Schema::from_cedarschema_str(text).map_err(|e| PolicyError::Schema {
        at: format!("{name}:{}", diagnostic_line(&e, text).unwrap_or(1)),
        message: diagnostic_message(&e),
    })?;
    for warning in warnings {
        let at = format!("{name}:{}", diagnostic_line(&warning, text).unwrap_or(1));
        tracing::warn!(at, "schema warning: {}", diagnostic_message(&warning));
    }
    Ok(schema)
}

/// Parse one policy file into (id, start line, policy), in file order.
fn parse_policy_file(name: &str, text: &str) -> Result<Vec<(String, usize, cedar::Policy)>, PolicyError> {
    let parsed = cedar::PolicySet::from_str(text).map_err(|errors| {
        let count = errors.iter().count();
        let (line, message) = match errors.iter().next() {
            Some(first) => (diagnostic_line(first, text), diagnostic_message(first)),
            None => (diagnostic_line(&errors, text), diagnostic_message(&errors)),
        };
        let more = if count > 1 { format!(" (and {} more error(s))", count - 1) } else { String::new() };
        PolicyError::Parse { at: format!("{name}:{}", line.unwrap_or(1)), message: format!("{message}{more}") }
    })?;

    // The parser names the n-th policy or template of the text `policy<n>`; walk them in that
    // order to find where each starts.
    enum Item<'a> {
        Policy(&'a cedar::Policy),
        Template(&'a cedar::Template),
    }
    let index = |id: &cedar::PolicyId| {
        id_str(id).strip_prefix("policy").and_then(|n| n.parse::<usize>().ok()).unwrap_or(usize::MAX)
    };
    let mut items: Vec<(usize, Item<'_>)> = parsed
        .policies()
        .map(|p| (index(p.id()), Item::Policy(p)))
        .chain(parsed.templates().map(|t| (index(t.id()), Item::Template(t))))
        .collect();
    items.sort_by_key(|(n, _)| *n);

    let mut cursor = 0;
    let mut out = Vec::with_capacity(items.len());
    for (_, item) in items {
        let source = match &item {
            Item::Policy(p) => p.to_cedar(),
            Item::Template(t) => Some(t.to_cedar()),
        };
        let start = source.as_deref().and_then(|s| find_policy(text, cursor, s));
        let line = line_of(text, start.unwrap_or(cursor));
        if let (Some(start), Some(source)) = (start, &source) {
            cursor = start + source.len();
        }
        match item {
            Item::Template(_) => {
                return Err(PolicyError::Template { at: format!("{name}:{line}") });
            }
            Item::Policy(policy) => {
                let id = policy
                    .annotation("id")
                    .map(str::trim)
                    .filter(|id| !id.is_empty())
                    .map_or_else(|| format!("{name}:{line}"), str::to_owned);
                out.push((id, line, policy.clone()));
            }
        }
    }
    Ok(out)
}

/// Byte offset of `policy` (a policy's exact source text) in `text`, searching from `cursor`
/// (the end of the previous policy): normally right after whitespace and `//` comments.
fn find_policy(text: &str, cursor: usize, policy: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut pos = cursor;
    loop {
        while bytes.get(pos).is_some_and(u8::is_ascii_whitespace) {
            pos += 1;
        }
        if bytes.get(pos..pos + 2) == Some(b"//".as_slice()) {
            while bytes.get(pos).is_some_and(|b| *b != b'\n') {
                pos += 1;
            }
        } else {
            break;
        }
    }
    if text.get(pos..).is_some_and(|rest| rest.starts_with(policy)) {
        return Some(pos);
    }
    text.get(cursor..)?.find(policy).map(|i| cursor + i)
}

/// 1-based line number of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// Byte offset of the diagnostic's primary (else first) labelled span.
fn diagnostic_offset(diagnostic: &dyn Diagnostic) -> Option<usize> {
    let labels: Vec<_> = diagnostic.labels()?.collect();
    let label = labels.iter().find(|l| l.primary()).or_else(|| labels.first())?;
    Some(label.offset())
}

/// Line of [`diagnostic_offset`] in `text`, the source the diagnostic is about.
fn diagnostic_line(diagnostic: &dyn Diagnostic, text: &str) -> Option<usize> {
    diagnostic_offset(diagnostic).map(|offset| line_of(text, offset))
}

/// The diagnostic's message, with its help text when it has one.
fn diagnostic_message(diagnostic: &dyn Diagnostic) -> String {
    match diagnostic.help() {
        Some(help) => format!("{diagnostic} ({help})"),
        None => diagnostic.to_string(),
    }
}

fn id_str(id: &cedar::PolicyId) -> &str {
    AsRef::<str>::as_ref(id)
}

fn uid(type_name: &str, id: &str) -> Result<cedar::EntityUid, String> {
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
fn module_path_problem(path: &str) -> Option<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn shipped_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
    }

    fn shipped() -> Policies {
        match Policies::load_dir(&shipped_dir()) {
            Ok(p) => p,
            Err(e) => panic!("shipped policies do not load: {}", crate::error_chain(&e)),
        }
    }

    fn user(id: &str, groups: &[&str]) -> Principal {
        Principal {
            kind: PrincipalKind::User,
            id: id.to_owned(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            auth_method: "ssh".to_owned(),
            key_fingerprint: "SHA256:abc".to_owned(),
            attrs: BTreeMap::from([("kind".to_owned(), "human".to_owned())]),
        }
    }

    fn ci(owner: &str) -> Principal {
        Principal {
            kind: PrincipalKind::Workload,
            id: format!("repo:{owner}/api:ref:refs/heads/main"),
            groups: Vec::new(),
            auth_method: "oidc".to_owned(),
            key_fingerprint: "SHA256:ci".to_owned(),
            attrs: BTreeMap::from([
                ("kind".to_owned(), "ci".to_owned()),
                ("repository_owner".to_owned(), owner.to_owned()),
                ("repository".to_owned(), format!("{owner}/api")),
                ("ref".to_owned(), "refs/heads/main".to_owned()),
                ("event_name".to_owned(), "push".to_owned()),
                ("issuer".to_owned(), "github".to_owned()),
                // Not in the schema: must be ignored, not rejected.
                ("job_workflow_ref".to_owned(), "x".to_owned()),
            ]),
        }
    }

    fn schema_text() -> String {
        std::fs::read_to_string(shipped_dir().join(SCHEMA_FILE)).expect("schema file")
    }

    fn shipped_text() -> String {
        std::fs::read_to_string(shipped_dir().join("gocred.cedar")).expect("policy file")
    }

    #[test]
    fn only_admins_may_revoke_others_sessions() {
        let p = shipped();
        let bobs = Resource::Session { owner_kind: "user".into(), owner: "bob".into(), auth_method: "ssh".into() };
        let d = p.decide(&user("alice", &["developers"]), Action::Revoke, &bobs);
        assert!(!d.allowed);
        assert_eq!(d.reason, "no policy permits revoke of the session of user:bob for user:alice");
        let d = p.decide(&user("root", &["gocred-admins"]), Action::Revoke, &bobs);
        assert!(d.allowed, "{}", d.reason);
        assert_eq!(d.policy_ids, ["admins-revoke-any"]);
    }

    #[test]
    fn shipped_policies_load() {
        let p = shipped();
        assert_eq!(p.len(), 9);
        assert!(!p.is_empty());
        assert_eq!(p.location("developers-download-corp"), Some("gocred.cedar:12"));
        assert_eq!(p.location("no-push"), Some("gocred.cedar:95"));
    }

    #[test]
    fn developers_download_corp_modules() {
        let p = shipped();
        let lib = Resource::module("git.corp.example/acme/lib", "corp");
        let d = p.decide(&user("alice", &["developers"]), Action::Download, &lib);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.policy_ids, ["developers-download-corp"]);
        assert_eq!(d.reason, "permitted by policy developers-download-corp");

        // Not a corp module.
        let other = Resource::module("github.com/acme/lib", "");
        let d = p.decide(&user("alice", &["developers"]), Action::Download, &other);
        assert!(!d.allowed);
        assert!(d.policy_ids.is_empty());
    }

    #[test]
    fn user_without_group_is_denied() {
        let p = shipped();
        let secret = Resource::module("git.corp.example/secret/x", "corp");
        let d = p.decide(&user("alice", &["ops"]), Action::Download, &secret);
        assert!(!d.allowed);
        assert!(d.policy_ids.is_empty());
        assert_eq!(d.reason, "no policy permits download of git.corp.example/secret/x for user:alice");
    }

    #[test]
    fn push_is_forbidden() {
        let p = shipped();
        let lib = Resource::module("git.corp.example/acme/lib", "corp");
        let d = p.decide(&user("alice", &["developers"]), Action::Push, &lib);
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, ["no-push"]);
        assert_eq!(d.reason, "forbidden by policy no-push: push of git.corp.example/acme/lib for user:alice");
    }

    #[test]
    fn login_allowed_except_mallory() {
        let p = shipped();
        let d = p.decide(&user("alice", &[]), Action::Login, &Resource::Broker);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.policy_ids, ["login-all"]);

        let d = p.decide(&ci("acme"), Action::Login, &Resource::Broker);
        assert!(d.allowed, "{d:?}");

        let d = p.decide(&user("mallory", &["developers"]), Action::Login, &Resource::Broker);
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, ["ban-mallory-login"]);
        assert!(d.reason.contains("ban-mallory-login"), "{}", d.reason);
    }

    #[test]
    fn ci_downloads_own_org_only() {
        let p = shipped();
        let own = Resource::module("git.corp.example/acme/api", "corp");
        let d = p.decide(&ci("acme"), Action::Download, &own);
        assert!(d.allowed, "{d:?}");
        assert_eq!(d.policy_ids, ["ci-acme-main-download-acme"]);

        let other = Resource::module("git.corp.example/other/x", "corp");
        let d = p.decide(&ci("acme"), Action::Download, &other);
        assert!(!d.allowed);
        assert!(d.policy_ids.is_empty());
        assert!(d.reason.contains("git.corp.example/other/x"), "{}", d.reason);
        assert!(d.reason.contains("workload:repo:acme/api"), "{}", d.reason);

        // The same claims from another issuer (here the cluster's) get nothing.
        let mut k8s = ci("acme");
        k8s.attrs.insert("kind".to_owned(), "kubernetes".to_owned());
        k8s.attrs.insert("issuer".to_owned(), "cluster".to_owned());
        assert!(!p.decide(&k8s, Action::Download, &own).allowed);

        // A module path without an org element.
        let bare = Resource::module("git.corp.example", "corp");
        assert!(!p.decide(&ci("acme"), Action::Download, &bare).allowed);
        // The same org name from another issuer, or a pull_request_target run, gets nothing.
        let mut elsewhere = ci("acme");
        elsewhere.attrs.insert("issuer".to_owned(), "gitlab".to_owned());
        assert!(!p.decide(&elsewhere, Action::Download, &own).allowed);
        let mut prt = ci("acme");
        prt.attrs.insert("event_name".to_owned(), "pull_request_target".to_owned());
        assert!(!p.decide(&prt, Action::Download, &own).allowed);
        // Another org's main branch does not reach acme's modules (no generic owner == org rule).
        assert!(
            !p.decide(&ci("other"), Action::Download, &Resource::module("git.corp.example/other/x", "corp")).allowed
        );
        // A feature branch of the same repository gets nothing.
        let mut feature = ci("acme");
        feature.attrs.insert("ref".to_owned(), "refs/heads/feature".to_owned());
        assert!(!p.decide(&feature, Action::Download, &own).allowed);
        // Only acme/api main reaches the platform modules.
        let platform = Resource::module("git.corp.example/platform/log", "corp");
        assert!(p.decide(&ci("acme"), Action::Download, &platform).allowed);
        assert!(!p.decide(&ci("other"), Action::Download, &platform).allowed);
        assert!(!p.decide(&feature, Action::Download, &platform).allowed);
    }

    #[test]
    fn kubernetes_namespace_builds_only() {
        let p = shipped();
        let mut k8s = ci("acme");
        k8s.attrs = BTreeMap::from([
            ("kind".to_owned(), "kubernetes".to_owned()),
            ("issuer".to_owned(), "cluster".to_owned()),
            ("namespace".to_owned(), "builds".to_owned()),
            ("service_account".to_owned(), "builder".to_owned()),
        ]);
        let m = Resource::module("git.corp.example/acme/lib", "corp");
        let d = p.decide(&k8s, Action::Download, &m);
        assert_eq!(d.policy_ids, ["k8s-builds-download-corp"], "{d:?}");
        k8s.attrs.insert("namespace".to_owned(), "sandbox".to_owned());
        assert!(!p.decide(&k8s, Action::Download, &m).allowed);
    }

    #[test]
    fn every_declared_attribute_is_accepted() {
        let p = shipped();
        let mut principal = ci("acme");
        for name in DECLARED_ATTRS {
            principal.attrs.entry(name.to_owned()).or_insert_with(|| "v".to_owned());
        }
        principal.attrs.insert("kind".to_owned(), "ci".to_owned());
        let d = p.decide(&principal, Action::Download, &Resource::module("git.corp.example/acme/api", ""));
        assert!(d.allowed, "{d:?}");
    }

    #[test]
    fn mismatched_action_and_resource_are_denied() {
        let p = shipped();
        let d = p.decide(&user("alice", &[]), Action::Login, &Resource::module("git.corp.example/acme/lib", ""));
        assert!(!d.allowed);
        assert!(d.reason.starts_with("cannot evaluate login"), "{}", d.reason);

        let d = p.decide(&user("alice", &["developers"]), Action::Download, &Resource::Broker);
        assert!(!d.allowed);
    }

    #[test]
    fn invalid_module_paths_are_denied() {
        let p = shipped();
        for path in [
            "git.corp.example/acme/../../evil/x",
            "git.corp.example//x",
            "/git.corp.example/x",
            "git.corp.example/a b",
            "",
        ] {
            let d = p.decide(&user("alice", &["developers"]), Action::Download, &Resource::module(path, ""));
            assert!(!d.allowed, "{path}");
            assert!(d.reason.contains("invalid module path"), "{}", d.reason);
        }
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let bad = "// second file\n\n@id(\"broken\")\npermit (principal, action, resource)\nwhen { principal. };\n";
        let files = [("a.cedar".to_owned(), shipped_text()), ("that-file.cedar".to_owned(), bad.to_owned())];
        let err = Policies::from_sources(&schema_text(), &files).expect_err("must not parse");
        assert!(matches!(err, PolicyError::Parse { .. }), "{err:?}");
        assert!(err.to_string().contains("that-file.cedar:5"), "{err}");
    }

    #[test]
    fn undeclared_attribute_fails_validation_with_file_and_line() {
        let bad = "\n@id(\"ok\")\npermit (principal, action == Action::\"login\", resource);\n\n@id(\"uses-owner\")\npermit (\n  principal,\n  action == Action::\"download\",\n  resource\n)\nwhen { resource.owner == \"acme\" };\n";
        let files = [("a.cedar".to_owned(), shipped_text()), ("bad.cedar".to_owned(), bad.to_owned())];
        let err = Policies::from_sources(&schema_text(), &files).expect_err("must not validate");
        let PolicyError::Validate { at, policy, .. } = &err else {
            panic!("expected a validation error, got {err:?}");
        };
        assert_eq!(at, "bad.cedar:5");
        assert_eq!(policy, "uses-owner");
        let msg = err.to_string();
        assert!(msg.starts_with("bad.cedar:5: policy `uses-owner`"), "{msg}");
        assert!(msg.contains("owner"), "{msg}");
        // The exact spot of the problem is named too.
        assert!(msg.contains("bad.cedar:11"), "{msg}");
    }

    #[test]
    fn optional_attribute_without_has_fails_validation() {
        let bad = "permit (principal, action == Action::\"download\", resource)\nwhen { principal.repository_owner == resource.host };\n";
        let err = Policies::from_sources(&schema_text(), &[("x.cedar".to_owned(), bad.to_owned())])
            .expect_err("strict validation");
        assert!(err.to_string().starts_with("x.cedar:1: policy `x.cedar:1`"), "{err}");
    }

    #[test]
    fn schema_error_names_line() {
        let schema = "entity User;\n\nentity Module {\n  path: Strin,\n};\n";
        let err = Policies::from_sources(schema, &[]).expect_err("bad schema");
        assert!(matches!(err, PolicyError::Schema { .. }), "{err:?}");
        assert!(err.to_string().contains("gocred.cedarschema:4"), "{err}");
    }

    #[test]
    fn ids_default_to_file_and_line_and_must_be_unique() {
        let text = "// x\npermit (principal, action == Action::\"login\", resource);\n\n  permit (principal, action == Action::\"login\", resource);\n";
        let p = Policies::from_sources(&schema_text(), &[("f.cedar".to_owned(), text.to_owned())]).expect("valid");
        assert_eq!(p.location("f.cedar:2"), Some("f.cedar:2"));
        assert_eq!(p.location("f.cedar:4"), Some("f.cedar:4"));
        let d = p.decide(&user("alice", &[]), Action::Login, &Resource::Broker);
        assert_eq!(d.policy_ids, ["f.cedar:2", "f.cedar:4"]);
        assert_eq!(d.reason, "permitted by policies f.cedar:2, f.cedar:4");

        let dup = "\n@id(\"no-push\")\nforbid (principal, action, resource);\n";
        let err = Policies::from_sources(
            &schema_text(),
            &[("a.cedar".to_owned(), shipped_text()), ("b.cedar".to_owned(), dup.to_owned())],
        )
        .expect_err("duplicate id");
        assert_eq!(err.to_string(), "b.cedar:2: policy id `no-push` is already used by the policy at a.cedar:95");
    }

    #[test]
    fn templates_are_rejected() {
        let text = "permit (principal, action == Action::\"login\", resource);\npermit (principal == ?principal, action == Action::\"login\", resource);\n";
        let err =
            Policies::from_sources(&schema_text(), &[("t.cedar".to_owned(), text.to_owned())]).expect_err("template");
        assert!(matches!(err, PolicyError::Template { .. }), "{err:?}");
        assert!(err.to_string().starts_with("t.cedar:2:"), "{err}");
    }

    #[test]
    fn load_dir_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Policies::load_dir(dir.path()).expect_err("no schema");
        assert!(matches!(err, PolicyError::ReadFile { .. }), "{err:?}");

        let err = Policies::load_dir(&dir.path().join("missing")).expect_err("no dir");
        assert!(matches!(err, PolicyError::ReadFile { .. }), "{err:?}");

        // Only the schema: loads, denies everything.
        std::fs::write(dir.path().join(SCHEMA_FILE), schema_text()).expect("write");
        std::fs::write(dir.path().join("notes.txt"), "not a policy").expect("write");
        std::fs::write(dir.path().join(".#gocred.cedar"), "editor lock").expect("write");
        let p = Policies::load_dir(dir.path()).expect("loads");
        assert!(p.is_empty());
        assert!(!p.decide(&user("alice", &[]), Action::Login, &Resource::Broker).allowed);
    }

    #[test]
    fn reload_keeps_old_set_on_error_and_clears_cache_on_success() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(SCHEMA_FILE), schema_text()).expect("write");
        std::fs::write(dir.path().join("gocred.cedar"), shipped_text()).expect("write");
        let engine = PolicyEngine::new(Policies::load_dir(dir.path()).expect("loads"), Some(dir.path().to_owned()));
        let alice = user("alice", &["developers"]);
        let lib = Resource::module("git.corp.example/acme/lib", "corp");
        let before = engine.decide(&alice, Action::Download, &lib);
        assert!(before.allowed);

        // A broken second file: reload fails and decisions stay as they were.
        let extra = dir.path().join("zz-extra.cedar");
        std::fs::write(
            &extra,
            "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource)\nwhen { resource.nope };\n",
        )
        .expect("write");
        let err = engine.reload().expect_err("broken file");
        assert!(err.to_string().starts_with("zz-extra.cedar:1:"), "{err}");
        assert_eq!(engine.decide(&alice, Action::Download, &lib), before);
        assert_eq!(engine.read().policies.len(), 9);

        // Fixed: reload succeeds, and the cached "allowed" is not served any more.
        std::fs::write(&extra, "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource);\n")
            .expect("write");
        assert_eq!(engine.reload().expect("reloads"), Some(10));
        assert!(engine.cache().is_empty());
        let after = engine.decide(&alice, Action::Download, &lib);
        assert!(!after.allowed);
        assert_eq!(after.policy_ids, ["no-alice"]);
        // Others are unaffected.
        assert!(engine.decide(&user("bob", &["developers"]), Action::Download, &lib).allowed);
    }

    #[test]
    fn engine_caches_per_principal() {
        let engine = PolicyEngine::new(shipped(), None);
        let lib = Resource::module("git.corp.example/acme/lib", "corp");
        assert!(engine.decide(&user("alice", &["developers"]), Action::Download, &lib).allowed);
        // Same id, different groups: a different cache entry.
        assert!(!engine.decide(&user("alice", &[]), Action::Download, &lib).allowed);
        assert_eq!(engine.cache().len(), 2);
        // Reload without a directory is a no-op.
        assert_eq!(engine.reload().expect("no-op"), None);
        assert_eq!(engine.cache().len(), 2);
    }

    #[test]
    fn dev_policies_let_the_user_do_everything_but_push() {
        let p = dev_policies("bob").expect("dev policies");
        let bob = user("bob", &[]);
        let any = Resource::module("github.com/whatever/x", "");
        assert!(p.decide(&bob, Action::Login, &Resource::Broker).allowed);
        assert!(p.decide(&bob, Action::Download, &any).allowed);
        assert!(p.decide(&bob, Action::Credentials, &any).allowed);
        let d = p.decide(&bob, Action::Push, &any);
        assert!(!d.allowed);
        assert_eq!(d.policy_ids, ["dev-no-push"]);
        assert!(!p.decide(&user("eve", &[]), Action::Login, &Resource::Broker).allowed);
        assert!(!p.decide(&user("eve", &[]), Action::Download, &any).allowed);

        // Names needing escapes cannot break out of the string literal.
        let odd = "o'brien \"x\" \\ é\n";
        let p = dev_policies(odd).expect("dev policies");
        assert!(p.decide(&user(odd, &[]), Action::Login, &Resource::Broker).allowed);
        assert!(!p.decide(&user("o'brien", &[]), Action::Login, &Resource::Broker).allowed);
        let injection = "x\", action, resource); permit (principal, action, resource == Module::\"";
        let p = dev_policies(injection).expect("dev policies");
        assert_eq!(p.len(), 3);
        assert!(!p.decide(&user("x", &[]), Action::Login, &Resource::Broker).allowed);
    }

    #[test]
    fn action_and_resource_parse() {
        for a in Action::ALL {
            assert_eq!(a.as_str().parse::<Action>(), Ok(a));
        }
        assert!("delete".parse::<Action>().is_err());
        assert_eq!("broker".parse::<Resource>(), Ok(Resource::Broker));
        assert_eq!("module:git.corp.example/a/b".parse::<Resource>(), Ok(Resource::module("git.corp.example/a/b", "")));
        assert_eq!("git.corp.example/a/b".parse::<Resource>(), Ok(Resource::module("git.corp.example/a/b", "")));
        assert!("module:".parse::<Resource>().is_err());
        assert!("a/../b".parse::<Resource>().is_err());
        assert_eq!(Resource::Broker.display(), "broker");
        assert_eq!(Resource::module("a/b", "u").display(), "a/b");
    }
}
