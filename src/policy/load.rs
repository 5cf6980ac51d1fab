//! Reading the schema and the `*.cedar` files of the policy directory, parsing and validating
//! them strictly, and reporting every problem as `file:line` with the policy's id.
//!
//! Must not: decide requests (see `decide`) or cache anything.

use super::*;
use miette::Diagnostic;
use std::collections::HashMap;
use std::path::Path;

/// A validated policy set with its schema.
pub struct Policies {
    pub(super) set: cedar::PolicySet,
    pub(super) schema: cedar::Schema,
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
pub(super) fn diagnostic_message(diagnostic: &dyn Diagnostic) -> String {
    match diagnostic.help() {
        Some(help) => format!("{diagnostic} ({help})"),
        None => diagnostic.to_string(),
    }
}

fn id_str(id: &cedar::PolicyId) -> &str {
    AsRef::<str>::as_ref(id)
}
