//! Reading a pod's `gocred.dev/*` annotations into what to inject (module patterns and resource
//! lists are checked with the validators the config shares). Every error message names the
//! annotation and quotes the bad value.

use super::{
    ANNOTATION_CONTAINERS, ANNOTATION_INIT_RESOURCES, ANNOTATION_INJECT, ANNOTATION_INJECTED, ANNOTATION_MODE,
    ANNOTATION_MODULES, BROKER_APP_NAME, INIT_CONTAINER, InjectMode, InjectSettings, Resources, parse_resources,
    validate_module_pattern,
};
use k8s_openapi::api::core::v1::{Container, Pod};

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
