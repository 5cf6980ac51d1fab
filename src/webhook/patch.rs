//! The JSONPatch (RFC 6902) that injects gocred into a pod: the `gocred.dev/injected`
//! annotation, the token and in-memory volumes, `gocred-init` as the first init container, and
//! env + mounts on the selected containers and on every existing init container. Arrays and maps
//! that do not exist yet are created; existing env variables are left as the user set them.

use super::annotations::Wanted;
use super::{
    ANNOTATION_INJECTED, INIT_ARGS, INIT_CONTAINER, INIT_USER, INJECTED_VERSION, InjectMode, InjectSettings,
    SHARED_DIR, SHARED_VOLUME, SHARED_VOLUME_SIZE, TOKEN_DIR, TOKEN_FILE, TOKEN_VOLUME, env,
};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EmptyDirVolumeSource, EnvVar, Pod, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path: PointerBuf::from_tokens(tokens.iter().copied()), value })
}

fn json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("k8s-openapi types always serialize")
}

fn var(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// The env every configured container gets (unless it defines the name itself).
pub(super) fn workload_env(settings: &InjectSettings, wanted: &Wanted) -> Vec<EnvVar> {
    let patterns = wanted.modules.join(",");
    let mut v = vec![
        var(env::BROKER, &settings.broker_url),
        var(env::TOKEN_FILE, TOKEN_FILE),
        var(env::STATE_DIR, env::STATE_DIR_VALUE),
        var("GOAUTH", env::GOAUTH_VALUE),
        var("GIT_CONFIG_GLOBAL", env::GIT_CONFIG_GLOBAL_VALUE),
        var("GOPRIVATE", &patterns),
        var("GONOSUMDB", &patterns),
    ];
    if wanted.mode == InjectMode::Goproxy {
        v.push(var("GOPROXY", format!("{}/mod,{}", settings.broker_url, settings.goproxy_fallback)));
        v.push(var("GONOPROXY", "none"));
    }
    if settings.ca_pem.is_some() {
        // The broker's CA is added to the trust, never substituted for it: Go via an extra
        // certificate directory, git per URL (`http.<broker>/.sslCAInfo` in the installed
        // gitconfig), the helper via GOCRED_CA_CERT.
        v.push(var("SSL_CERT_DIR", env::CERT_DIR_VALUE));
        v.push(var(env::CA_CERT, env::CA_FILE_VALUE));
    }
    v
}

/// The mounts every configured container gets.
pub(super) fn workload_mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount { name: SHARED_VOLUME.into(), mount_path: SHARED_DIR.into(), ..Default::default() },
        VolumeMount {
            name: TOKEN_VOLUME.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]
}

pub(super) fn volumes(settings: &InjectSettings) -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(settings.token_audience.clone()),
                        expiration_seconds: Some(settings.token_expiration_seconds),
                        path: "token".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: SHARED_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity(SHARED_VOLUME_SIZE.into())),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

pub(super) fn init_container(pod: &Pod, settings: &InjectSettings, wanted: &Wanted) -> Container {
    let mut env = vec![
        var(env::BROKER, &settings.broker_url),
        var(env::MODULES, wanted.modules.join(",")),
        var(env::INJECT_MODE, wanted.mode.as_str()),
    ];
    if !settings.git_hosts.is_empty() {
        env.push(var(env::GIT_HOSTS, settings.git_hosts.join(",")));
    }
    if let Some(pem) = &settings.ca_pem {
        env.push(var(env::CA_PEM, pem));
    }
    // Non-root: the pod's own user when that is not root, else a fixed unprivileged one (so a
    // pod running as root still passes `runAsNonRoot`).
    let pod_user = pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.run_as_user);
    let run_as_user = match pod_user {
        Some(u) if u != 0 => None,
        _ => Some(INIT_USER),
    };
    Container {
        name: INIT_CONTAINER.into(),
        image: Some(settings.image.clone()),
        args: Some(INIT_ARGS.iter().map(|s| s.to_string()).collect()),
        env: Some(env),
        volume_mounts: Some(vec![VolumeMount {
            name: SHARED_VOLUME.into(),
            mount_path: SHARED_DIR.into(),
            ..Default::default()
        }]),
        resources: wanted.resources.as_ref().map(|r| ResourceRequirements {
            requests: Some(r.clone()),
            limits: Some(r.clone()),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user,
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// What every configured container gets, with its JSON made once per review.
struct Additions {
    vars: Vec<(EnvVar, Value)>,
    mounts: Vec<(VolumeMount, Value)>,
}

/// Add the env and mounts to the container at `/spec/<list>/<index>`. `Err`: a mount path the
/// container already uses.
fn configure(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    index: usize,
    c: &Container,
    extra: &Additions,
) -> Result<(), String> {
    let existing_mounts = c.volume_mounts.as_deref().unwrap_or_default();
    for (m, _) in &extra.mounts {
        if let Some(e) = existing_mounts.iter().find(|e| e.mount_path.trim_end_matches('/') == m.mount_path) {
            return Err(format!(
                "container {:?} already mounts volume {:?} at {}, where gocred mounts its {:?} volume",
                c.name, e.name, m.mount_path, m.name
            ));
        }
    }
    let i = index.to_string();
    let existing_env = c.env.as_deref().unwrap_or_default();
    let missing =
        extra.vars.iter().filter(|(v, _)| !existing_env.iter().any(|e| e.name == v.name)).map(|(_, j)| j.clone());
    match &c.env {
        None => ops.push(add(&["spec", list, &i, "env"], Value::Array(missing.collect()))),
        Some(_) => ops.extend(missing.map(|v| add(&["spec", list, &i, "env", "-"], v))),
    }
    let mounts = extra.mounts.iter().map(|(_, j)| j.clone());
    match &c.volume_mounts {
        None => ops.push(add(&["spec", list, &i, "volumeMounts"], Value::Array(mounts.collect()))),
        Some(_) => ops.extend(mounts.map(|m| add(&["spec", list, &i, "volumeMounts", "-"], m))),
    }
    Ok(())
}

/// The patch for a pod that asked for injection. `Err`: a volume name or mount path conflict.
pub(super) fn build(pod: &Pod, settings: &InjectSettings, wanted: &Wanted) -> Result<Patch, String> {
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let mut ops = Vec::new();

    match &pod.metadata.annotations {
        None => {
            ops.push(add(&["metadata", "annotations"], serde_json::json!({ ANNOTATION_INJECTED: INJECTED_VERSION })))
        }
        Some(_) => ops.push(add(&["metadata", "annotations", ANNOTATION_INJECTED], INJECTED_VERSION.into())),
    }

    let vols = volumes(settings);
    let existing = spec.volumes.as_deref().unwrap_or_default();
    if let Some(v) = vols.iter().find(|v| existing.iter().any(|e| e.name == v.name)) {
        return Err(format!("the pod already has a volume named {:?}, which gocred needs for itself", v.name));
    }
    match &spec.volumes {
        None => ops.push(add(&["spec", "volumes"], json(&vols))),
        Some(_) => ops.extend(vols.iter().map(|v| add(&["spec", "volumes", "-"], json(v)))),
    }

    let additions = Additions {
        vars: workload_env(settings, wanted)
            .into_iter()
            .map(|v| {
                let j = json(&v);
                (v, j)
            })
            .collect(),
        mounts: workload_mounts()
            .into_iter()
            .map(|m| {
                let j = json(&m);
                (m, j)
            })
            .collect(),
    };
    for &i in &wanted.containers {
        configure(&mut ops, "containers", i, &spec.containers[i], &additions)?;
    }
    // Existing init containers run after gocred-init, so they can use go and git too. Their
    // indexes are taken before gocred-init is inserted in front of them (the last operation).
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    for (i, c) in inits.iter().enumerate() {
        configure(&mut ops, "initContainers", i, c, &additions)?;
    }
    let init = json(&init_container(pod, settings, wanted));
    match &spec.init_containers {
        None => ops.push(add(&["spec", "initContainers"], Value::Array(vec![init]))),
        Some(_) => ops.push(add(&["spec", "initContainers", "0"], init)),
    }
    Ok(Patch(ops))
}
