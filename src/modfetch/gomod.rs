//! The few go.mod facts module serving needs, read the way `golang.org/x/mod/modfile` reads
//! them: the `module` path (`ModulePath`), the `go` line, and `retract` intervals.
//!
//! Must not: rewrite go.mod bytes (served go.mod files are the repository's blobs, verbatim).

use super::semver;
use std::cmp::Ordering;

/// `modfile.ModulePath`: the module path, or `""`.
pub fn module_path(data: &[u8]) -> String {
    for line in data.split(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(line);
        let line = line.split("//").next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("module") else { continue };
        let trimmed = rest.trim();
        if trimmed.len() == rest.len() || trimmed.is_empty() {
            continue;
        }
        if let Some(q) = trimmed.strip_prefix('"') {
            return q.strip_suffix('"').filter(|s| !s.contains(['"', '\\'])).unwrap_or("").to_string();
        }
        if let Some(q) = trimmed.strip_prefix('`') {
            return q.strip_suffix('`').unwrap_or("").to_string();
        }
        return trimmed.to_string();
    }
    String::new()
}

/// Lines of `data` with comments removed, blocks (`retract (` … `)`) flattened to
/// `retract …` lines.
fn directives(data: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(data);
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for raw in text.lines() {
        let line = raw.split("//").next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(verb) = &block {
            if line == ")" {
                block = None;
            } else {
                out.push((verb.clone(), line.to_string()));
            }
            continue;
        }
        let (verb, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        if rest == "(" {
            block = Some(verb.to_string());
        } else {
            out.push((verb.to_string(), rest.to_string()));
        }
    }
    out
}

/// The `go` line's version (`1.24`, `1.23.4`), if any.
pub fn go_version(data: &[u8]) -> Option<String> {
    directives(data).into_iter().find(|(v, _)| v == "go").map(|(_, r)| r.trim().to_string())
}

/// Is `go` version `v` (as written in go.mod) at least `1.<minor>`?
pub fn go_at_least(v: Option<&str>, minor: u32) -> bool {
    let Some(v) = v else { return false };
    let mut parts = v.split('.');
    let major: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let min: u32 =
        parts.next().and_then(|m| m.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().ok()).unwrap_or(0);
    (major, min) >= (1, minor)
}

/// `retract` intervals `[low, high]`.
pub fn retractions(data: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (verb, rest) in directives(data) {
        if verb != "retract" {
            continue;
        }
        let rest = rest.trim();
        if let Some(inner) = rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if let Some((lo, hi)) = inner.split_once(',') {
                out.push((lo.trim().to_string(), hi.trim().to_string()));
            }
        } else if !rest.is_empty() {
            let v = rest.split_whitespace().next().unwrap_or("").to_string();
            out.push((v.clone(), v));
        }
    }
    out
}

pub fn is_retracted(intervals: &[(String, String)], v: &str) -> bool {
    intervals
        .iter()
        .any(|(lo, hi)| semver::compare(lo, v) != Ordering::Greater && semver::compare(v, hi) != Ordering::Greater)
}

/// `coderepo.go:isMajor`: does module path `mpath` carry the major suffix `path_major`?
pub fn is_major(mpath: &str, path_major: &str) -> bool {
    if mpath.is_empty() {
        return false;
    }
    let (_, m, ok) = semver::split_path_version(mpath);
    if !ok {
        return false;
    }
    if path_major.is_empty() {
        return matches!(semver::path_major_prefix(m), "" | "v0" | "v1");
    }
    !m.is_empty() && path_major[1..] == m[1..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_module_go_and_retract() {
        let m = b"// c\nmodule \"x.test/a/v2\" // here\n\ngo 1.24.0\nretract v1.1.0 // bad\nretract (\n  [v1.2.0, v1.2.5]\n  v1.3.0\n)\n";
        assert_eq!(module_path(m), "x.test/a/v2");
        assert_eq!(module_path(b"modulex a\nmodule b.test/c\n"), "b.test/c");
        assert_eq!(go_version(m).as_deref(), Some("1.24.0"));
        assert!(go_at_least(Some("1.24.0"), 24) && !go_at_least(Some("1.23"), 24) && !go_at_least(None, 24));
        let r = retractions(m);
        assert!(is_retracted(&r, "v1.1.0") && is_retracted(&r, "v1.2.3") && is_retracted(&r, "v1.3.0"));
        assert!(!is_retracted(&r, "v1.2.6") && !is_retracted(&r, "v1.0.0"));
        assert!(is_major("x.test/a/v2", "/v2") && !is_major("x.test/a", "/v2") && is_major("other.test/b", ""));
        assert!(!is_major("x.test/a/v2", ""));
    }
}
