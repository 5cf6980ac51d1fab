//! Reading a pod's `gocred.dev/*` annotations into what to inject, and the validators the config
//! shares (module patterns, resource lists). Every error message names the annotation and quotes
//! the bad value.

use super::{
    ANNOTATION_CONTAINERS, ANNOTATION_INIT_RESOURCES, ANNOTATION_INJECT, ANNOTATION_INJECTED, ANNOTATION_MODE,
    ANNOTATION_MODULES, BROKER_APP_NAME, INIT_CONTAINER, InjectMode, InjectSettings, Resources,
};
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// What one pod asked for, validated.
#[derive(Debug)]
pub(super) struct Wanted {
    pub modules: Vec<String>,
    pub mode: InjectMode,
    /// Indexes into `spec.containers` of the containers to configure, in pod order.
    pub containers: Vec<usize>,
    /// The init container's requests and limits.
    pub resources: Option<Resources>,
}

/// `Ok(None)`: leave the pod alone. `Err`: a message naming the malformed annotation.
pub(super) fn wanted(pod: &Pod, settings: &InjectSettings) -> Result<Option<Wanted>, String> {
    let meta = &pod.metadata;
    if meta.labels.as_ref().and_then(|l| l.get("app.kubernetes.io/name")).is_some_and(|v| v == BROKER_APP_NAME) {
        return Ok(None);
    }
    let Some(ann) = meta.annotations.as_ref() else { return Ok(None) };
    match ann.get(ANNOTATION_INJECT).map(String::as_str) {
        None | Some("false") => return Ok(None),
        Some("true") => {}
        Some(other) => return Err(format!("annotation {ANNOTATION_INJECT}: {other:?} is not \"true\" or \"false\"")),
    }
    let spec = pod.spec.as_ref();
    let init_containers = spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default();
    // Both marks: injected already (idempotent).
    if already_injected(ann.contains_key(ANNOTATION_INJECTED), init_containers)? {
        return Ok(None);
    }
    let modules = match ann.get(ANNOTATION_MODULES) {
        None => settings.modules.clone(),
        Some(v) => parse_modules(v).map_err(|e| format!("annotation {ANNOTATION_MODULES}: {v:?}: {e}"))?,
    };
    if modules.is_empty() {
        return Err(format!(
            "no module patterns: set annotation {ANNOTATION_MODULES} (e.g. \"git.corp.example/*\") or webhook.modules"
        ));
    }
    let mode = match ann.get(ANNOTATION_MODE) {
        None => settings.mode,
        Some(v) => InjectMode::parse(v)
            .ok_or_else(|| format!("annotation {ANNOTATION_MODE}: {v:?} is not \"goproxy\" or \"git\""))?,
    };
    check_mode(mode, &modules, settings)?;
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let selected = match ann.get(ANNOTATION_CONTAINERS) {
        None => (0..containers.len()).collect(),
        Some(v) => selected_containers(v, containers, init_containers)?,
    };
    let resources = match ann.get(ANNOTATION_INIT_RESOURCES) {
        None => settings.init_resources.clone(),
        Some(v) => Some(parse_resources(v).map_err(|e| format!("annotation {ANNOTATION_INIT_RESOURCES}: {v:?}: {e}"))?),
    };
    Ok(Some(Wanted { modules, mode, containers: selected, resources }))
}

/// Whether the pod carries both injection marks (`Ok(true)`: injected already). Only one: something
/// removed or faked part of the injection; starting such a pod silently without credentials is
/// what must not happen.
fn already_injected(annotated: bool, init_containers: &[Container]) -> Result<bool, String> {
    match (annotated, init_containers.iter().any(|c| c.name == INIT_CONTAINER)) {
        (true, true) => Ok(true),
        (true, false) => Err(format!(
            "annotation {ANNOTATION_INJECTED} is set but the pod has no {INIT_CONTAINER} init container (partially injected)"
        )),
        (false, true) => Err(format!(
            "the pod already has an init container named {INIT_CONTAINER} but no {ANNOTATION_INJECTED} annotation"
        )),
        (false, false) => Ok(false),
    }
}

/// The mode must be one this broker serves; in git mode every pattern's host must be proxied.
fn check_mode(mode: InjectMode, modules: &[String], settings: &InjectSettings) -> Result<(), String> {
    match mode {
        InjectMode::Goproxy if !settings.has_goproxy => {
            return Err(format!("annotation {ANNOTATION_MODE}: this broker proxies no module proxy; use \"git\""));
        }
        InjectMode::Git if settings.git_hosts.is_empty() => {
            return Err(format!("annotation {ANNOTATION_MODE}: this broker proxies no git server; use \"goproxy\""));
        }
        InjectMode::Git => {
            // git reaches the broker only for hosts it proxies (insteadOf rewrites).
            for m in modules {
                let host = m.split('/').next().unwrap_or_default();
                if !settings.git_hosts.iter().any(|h| h == host) {
                    return Err(format!(
                        "module pattern {m:?}: in git mode the host must be one the broker proxies ({})",
                        settings.git_hosts.join(", ")
                    ));
                }
            }
        }
        InjectMode::Goproxy => {}
    }
    Ok(())
}

/// The regular containers an `ANNOTATION_CONTAINERS` value names (sorted, deduplicated).
fn selected_containers(v: &str, containers: &[Container], init_containers: &[Container]) -> Result<Vec<usize>, String> {
    let mut idx = Vec::new();
    for name in v.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(format!("annotation {ANNOTATION_CONTAINERS}: {v:?} has an empty container name"));
        }
        match containers.iter().position(|c| c.name == name) {
            Some(i) => idx.push(i),
            None if init_containers.iter().any(|c| c.name == name) => {
                return Err(format!(
                    "annotation {ANNOTATION_CONTAINERS}: {name:?} is an init container; list only regular \
                     containers (init containers are always configured)"
                ));
            }
            None => {
                let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
                return Err(format!(
                    "annotation {ANNOTATION_CONTAINERS}: the pod has no container {name:?} (containers: {})",
                    names.join(", ")
                ));
            }
        }
    }
    idx.sort_unstable();
    idx.dedup();
    Ok(idx)
}

/// A comma-separated list of module patterns.
fn parse_modules(v: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for p in v.split(',').map(str::trim) {
        validate_module_pattern(p)?;
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    Ok(out)
}

/// A GOPRIVATE-style module pattern: `host`, `host/path` or a glob like `host/*`; the first
/// element is a host name (it has a dot), no spaces, no empty elements.
pub fn validate_module_pattern(p: &str) -> Result<(), String> {
    const HINT: &str = "expected a module pattern like \"git.corp.example/*\" or \"git.corp.example/team\"";
    if p.is_empty() {
        return Err(format!("empty module pattern; {HINT}"));
    }
    if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{p:?} contains a space; {HINT}"));
    }
    if let Some(c) = p.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~/*?[]^".contains(*c))) {
        return Err(format!("{p:?} contains {c:?}; {HINT}"));
    }
    if p.split('/').any(str::is_empty) {
        return Err(format!("{p:?} has an empty path element; {HINT}"));
    }
    let host = p.split('/').next().unwrap_or_default();
    if !host.contains('.') {
        return Err(format!("{p:?} does not start with a host name (no dot in {host:?}); {HINT}"));
    }
    Ok(())
}

/// `cpu=50m,memory=32Mi`: resource names and Kubernetes quantities.
pub fn parse_resources(v: &str) -> Result<Resources, String> {
    let mut out = Resources::new();
    for item in v.split(',').map(str::trim) {
        let (name, q) = item
            .split_once('=')
            .map(|(n, q)| (n.trim(), q.trim()))
            .ok_or_else(|| format!("{item:?} is not NAME=QUANTITY (e.g. \"cpu=50m,memory=32Mi\")"))?;
        let name_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !name_ok {
            return Err(format!("{name:?} is not a resource name like cpu or memory"));
        }
        if !valid_quantity(q) {
            return Err(format!("{q:?} is not a quantity like 50m, 0.5 or 32Mi"));
        }
        if out.insert(name.to_string(), Quantity(q.to_string())).is_some() {
            return Err(format!("{name:?} is given twice"));
        }
    }
    Ok(out)
}

/// A non-negative Kubernetes quantity: a decimal number and an optional SI/binary suffix or
/// decimal exponent (`50m`, `0.5`, `32Mi`, `1e3`).
fn valid_quantity(q: &str) -> bool {
    let end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(end);
    let num_ok = num.chars().any(|c| c.is_ascii_digit()) && num.matches('.').count() <= 1;
    let exponent = |s: &str| {
        s.strip_prefix(['e', 'E'])
            .map(|r| r.strip_prefix(['+', '-']).unwrap_or(r))
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
    };
    num_ok
        && (matches!(
            suffix,
            "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        ) || exponent(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["50m", "0.5", "32Mi", "1", "1e3", "2E-1", "1.5Gi", "100k", "5.", ".5"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "-1", "1.2.3", "32MB", "1e", "abc", "1 Mi", "0x10"] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn resources_parse_and_name_the_bad_part() {
        let r = parse_resources("cpu=50m, memory=32Mi").unwrap();
        assert_eq!(r["cpu"].0, "50m");
        assert_eq!(r["memory"].0, "32Mi");
        assert!(parse_resources("cpu").unwrap_err().contains("NAME=QUANTITY"));
        assert!(parse_resources("cpu=lots").unwrap_err().contains("\"lots\""));
        assert!(parse_resources("cpu=1,cpu=2").unwrap_err().contains("twice"));
        assert!(parse_resources("").is_err());
        assert!(parse_resources("c p u=1").is_err());
    }

    #[test]
    fn module_patterns() {
        for ok in
            ["git.corp.example/*", "git.corp.example", "git.corp.example/team/lib", "*.corp.example", "a.b/[a-c]?"]
        {
            validate_module_pattern(ok).unwrap();
        }
        for bad in ["", "git.corp example/*", "corp/*", "git.corp.example//x", "/git.corp.example", "x.y/", "x.y/a,b"] {
            assert!(validate_module_pattern(bad).is_err(), "{bad}");
        }
    }
}
