//! The module map in `src/lib.rs` is true of the real imports: data flows one way
//! (`http` → `service` → domain modules), wire formats live in `proto` and import nothing,
//! the client side (`client/` and the client commands in `cli/`) imports nothing of the
//! broker, and only `http` uses axum.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments (line comments and doc comments).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read source");
    text.lines()
        .map(|l| match l.find("//") {
            // Keep `//` inside string literals such as "https://": only strip when it starts a comment.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<module>` a file names (with `use super::...` resolved to its own module).
fn crate_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let tail = &rest[i + 7..];
        let name: String = tail.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && !out.contains(&name) {
            out.push(name);
        }
        rest = &rest[i + 7..];
    }
    // `use crate::{a, b}` groups.
    let mut rest = code;
    while let Some(i) = rest.find("crate::{") {
        let group = &rest[i + 8..rest[i..].find('}').map(|e| i + e).unwrap_or(rest.len())];
        for part in group.split(',') {
            let name: String = part.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && !out.contains(&name) {
                out.push(name);
            }
        }
        rest = &rest[i + 8..];
    }
    out
}

/// The top-level module a source file belongs to (`src/http/auth.rs` → `http`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("component").as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Crate-root helpers any module may use (time, random bytes, error text, TLS provider).
const ROOT_HELPERS: &[&str] = &["unix_now", "random_bytes", "error_chain", "install_crypto_provider"];
/// What the client side may import.
const CLIENT_MAY: &[&str] = &["client", "proto", "fsutil"];
/// Broker command files in `cli/` (they start or check a broker).
const CLI_BROKER_COMMANDS: &[&str] = &["serve.rs", "policy.rs", "secrets.rs", "store.rs", "mod.rs"];
/// Domain modules: below the service layer.
const DOMAIN: &[&str] = &[
    "audit",
    "auth",
    "config",
    "conn",
    "health",
    "keys",
    "metrics",
    "policy",
    "proxy",
    "ratelimit",
    "revocation",
    "secrets",
    "tls",
    "token",
    "webhook",
    "fsutil",
];

#[test]
fn imports_follow_the_module_map() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 30, "found only {} source files", files.len());
    let mut problems = Vec::new();
    for f in &files {
        let module = module_of(&src, f);
        let code = code(f);
        let used: Vec<String> =
            crate_modules(&code).into_iter().filter(|m| !ROOT_HELPERS.contains(&m.as_str())).collect();
        let rel = f.strip_prefix(&root).unwrap().display().to_string();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let client_side = module == "client" || (module == "cli" && !CLI_BROKER_COMMANDS.contains(&name.as_str()));
        let allowed: Option<Vec<&str>> = if module == "proto" {
            Some(vec!["proto"])
        } else if client_side {
            Some(CLIENT_MAY.iter().copied().chain(["cli"]).collect())
        } else {
            None
        };
        if let Some(allowed) = allowed {
            for m in &used {
                if !allowed.contains(&m.as_str()) {
                    problems.push(format!("{rel} ({module}) imports crate::{m}"));
                }
            }
        }
        let above: &[&str] = if DOMAIN.contains(&module.as_str()) {
            &["http", "service", "server", "cli", "client"]
        } else if module == "service" {
            &["http", "server", "cli", "client"]
        } else if module == "http" {
            &["server", "cli", "client"]
        } else {
            &[]
        };
        for m in &used {
            if above.contains(&m.as_str()) {
                problems.push(format!("{rel} ({module}) imports crate::{m}, which is above it"));
            }
        }
        // Validated config is plain data: the webhook builds on it, not the other way round.
        if module == "config" && used.iter().any(|m| m == "webhook") {
            problems.push(format!("{rel} (config) imports crate::webhook"));
        }
        let uses_axum = code.contains("axum::") || code.contains("axum_server::") || code.contains("use axum");
        if uses_axum && module != "http" {
            problems.push(format!("{rel} ({module}) uses axum; only http may"));
        }
    }
    assert!(problems.is_empty(), "the module map does not hold:\n{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_a_violation() {
    // A checker that cannot see imports would pass everything.
    let used = crate_modules("use crate::{auth::Principal, proto};\nfn f() { crate::http::app(); }");
    assert_eq!(used, ["http", "auth", "proto"]);
}
