//! The webhook against real AdmissionReview requests (`tests/fixtures/admission/*.json`): the
//! returned patch is applied to the request's object with `json_patch`, the result parsed as a
//! Pod and compared field by field; a second review of the patched pod changes nothing.

use super::*;
use base64::Engine;
use k8s_openapi::api::core::v1::{Container, EnvVar, Volume, VolumeMount};
use serde_json::{Value, json};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n";

fn fixture(name: &str) -> Value {
    let p =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

fn settings() -> InjectSettings {
    let mut s = InjectSettings::new(
        "ghcr.io/gocred/gocred:0.1.0",
        "https://gocred.gocred.svc:8443/",
        vec!["git.corp.example/*".into(), "mods.corp.example".into()],
    );
    s.ca_pem = Some(CA.into());
    s.git_hosts = vec!["git.corp.example".into(), "mods.corp.example".into()];
    s
}

/// The response of a review, and the patched object (the original when there is no patch).
fn run(review_doc: &Value, s: &InjectSettings) -> (Value, Value) {
    let out = review(review_doc.to_string().as_bytes(), s).unwrap();
    let out: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1", "{out}");
    assert_eq!(out["kind"], "AdmissionReview", "{out}");
    assert!(out.get("request").is_none(), "{out}");
    let resp = out["response"].clone();
    assert_eq!(resp["uid"], review_doc["request"]["uid"], "uid echoed");
    let mut obj = review_doc["request"]["object"].clone();
    if let Some(p) = resp.get("patch") {
        assert_eq!(resp["patchType"], "JSONPatch");
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(p.as_str().expect("patch is base64 text")).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut obj, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch:?}"));
    } else {
        assert!(resp.get("patchType").is_none(), "{resp}");
    }
    (resp, obj)
}

/// A named change to a review document.
type Edit = (&'static str, fn(&mut Value));

fn pod(v: &Value) -> Pod {
    serde_json::from_value(v.clone()).expect("patched object parses as a Pod")
}

/// Review the patched pod again (as kube-apiserver does on reinvocation): allowed, no patch.
fn assert_second_review_is_a_no_op(doc: &Value, patched: &Value, s: &InjectSettings) {
    let mut again = doc.clone();
    again["request"]["uid"] = "second-review".into();
    again["request"]["object"] = patched.clone();
    let (resp, obj) = run(&again, s);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none(), "second review patched: {resp}");
    assert_eq!(&obj, patched);
}

fn var(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.into(), value: Some(value.into()), ..Default::default() }
}

/// Ours, in order, for the default settings (goproxy mode, with the CA).
fn ours(modules: &str) -> Vec<EnvVar> {
    vec![
        var("GOCRED_BROKER", "https://gocred.gocred.svc:8443"),
        var("GOCRED_TOKEN_FILE", "/var/run/secrets/gocred.dev/token"),
        var("GOCRED_STATE_DIR", "/gocred/state"),
        var("GOAUTH", "/gocred/bin/gocred goauth"),
        var("GIT_CONFIG_GLOBAL", "/gocred/gitconfig"),
        var("GOPRIVATE", modules),
        var("GONOSUMDB", modules),
        var("GOPROXY", "https://gocred.gocred.svc:8443/mod,https://proxy.golang.org,direct"),
        var("GONOPROXY", "none"),
        var("SSL_CERT_DIR", "/gocred/certs:/etc/ssl/certs:/etc/pki/tls/certs"),
        var("GOCRED_CA_CERT", "/gocred/ca.pem"),
    ]
}

fn our_mounts() -> Vec<VolumeMount> {
    vec![
        VolumeMount { name: "gocred".into(), mount_path: "/gocred".into(), ..Default::default() },
        VolumeMount {
            name: "gocred-token".into(),
            mount_path: "/var/run/secrets/gocred.dev".into(),
            read_only: Some(true),
            ..Default::default()
        },
    ]
}

fn our_volumes() -> Vec<Volume> {
    serde_json::from_value(json!([
        {"name": "gocred-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "gocred", "expirationSeconds": 600, "path": "token"}}]}},
        {"name": "gocred", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    ]))
    .unwrap()
}

fn expected_init(modules: &str, mode: &str, ca: bool, run_as_user: Option<i64>, resources: Option<Value>) -> Container {
    let mut env = vec![
        json!({"name": "GOCRED_BROKER", "value": "https://gocred.gocred.svc:8443"}),
        json!({"name": "GOCRED_MODULES", "value": modules}),
        json!({"name": "GOCRED_INJECT_MODE", "value": mode}),
        json!({"name": "GOCRED_GIT_HOSTS", "value": "git.corp.example,mods.corp.example"}),
    ];
    if ca {
        env.push(json!({"name": "GOCRED_CA_PEM", "value": CA}));
    }
    let mut sc = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    if let Some(u) = run_as_user {
        sc["runAsUser"] = u.into();
    }
    let mut c = json!({
        "name": "gocred-init",
        "image": "ghcr.io/gocred/gocred:0.1.0",
        "args": ["agent", "--install", "/gocred"],
        "env": env,
        "volumeMounts": [{"name": "gocred", "mountPath": "/gocred"}],
        "securityContext": sc
    });
    if let Some(r) = resources {
        c["resources"] = r;
    }
    serde_json::from_value(c).unwrap()
}

fn env_of(c: &Container) -> Vec<EnvVar> {
    c.env.clone().unwrap_or_default()
}

fn names<T>(items: &[T], f: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| f(i).to_string()).collect()
}

#[test]
fn annotated_pod_with_containers_init_containers_env_and_volumes() {
    let doc = fixture("annotated-multi");
    let s = settings();
    let (resp, patched) = run(&doc, &s);
    assert_eq!(resp["allowed"], true, "{resp}");
    let p = pod(&patched);
    let orig = pod(&doc["request"]["object"]);
    let spec = p.spec.as_ref().unwrap();
    let ospec = orig.spec.as_ref().unwrap();
    let modules = "git.corp.example/*,mods.corp.example";

    let ann = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann.get("gocred.dev/injected").map(String::as_str), Some("v1"));
    assert_eq!(ann.len(), orig.metadata.annotations.as_ref().unwrap().len() + 1);

    // Volumes: the existing ones untouched, ours appended.
    let mut want_vols = ospec.volumes.clone().unwrap();
    want_vols.extend(our_volumes());
    assert_eq!(spec.volumes.as_ref().unwrap(), &want_vols);

    // Init containers: gocred-init first, then the pod's own, configured.
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(names(inits, |c| &c.name), ["gocred-init", "clone", "deps"]);
    assert_eq!(inits[0], expected_init(modules, "goproxy", true, Some(65532), None));
    for (got, before) in inits[1..].iter().zip(ospec.init_containers.as_ref().unwrap()) {
        let mut want_env = env_of(before);
        want_env.extend(ours(modules));
        assert_eq!(env_of(got), want_env, "{}", got.name);
        let mut want_mounts = before.volume_mounts.clone().unwrap();
        want_mounts.extend(our_mounts());
        assert_eq!(got.volume_mounts.as_ref().unwrap(), &want_mounts, "{}", got.name);
    }

    // Containers: the user's GOPRIVATE is kept (not duplicated), the rest added.
    let build = &spec.containers[0];
    let mut want = env_of(&ospec.containers[0]);
    want.extend(ours(modules).into_iter().filter(|v| v.name != "GOPRIVATE"));
    assert_eq!(env_of(build), want);
    assert_eq!(env_of(build).iter().filter(|v| v.name == "GOPRIVATE").count(), 1);
    assert_eq!(
        env_of(build).iter().find(|v| v.name == "GOPRIVATE").unwrap().value.as_deref(),
        Some("git.corp.example/legacy")
    );
    assert_eq!(env_of(&spec.containers[1]), ours(modules));
    for (got, before) in spec.containers.iter().zip(&ospec.containers) {
        let mut want_mounts = before.volume_mounts.clone().unwrap();
        want_mounts.extend(our_mounts());
        assert_eq!(got.volume_mounts.as_ref().unwrap(), &want_mounts, "{}", got.name);
        // Nothing else about the container changed.
        let (mut a, mut b) = (got.clone(), before.clone());
        (a.env, a.volume_mounts, b.env, b.volume_mounts) = (None, None, None, None);
        assert_eq!(a, b);
    }
    assert_second_review_is_a_no_op(&doc, &patched, &s);
}

#[test]
fn minimal_pod_gets_arrays_created() {
    let doc = fixture("minimal");
    let s = settings();
    let (resp, patched) = run(&doc, &s);
    assert_eq!(resp["allowed"], true);
    let p = pod(&patched);
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(spec.volumes.as_ref().unwrap(), &our_volumes());
    let inits = spec.init_containers.as_ref().unwrap();
    assert_eq!(inits.len(), 1);
    assert_eq!(inits[0], expected_init("git.corp.example/*,mods.corp.example", "goproxy", true, Some(65532), None));
    assert_eq!(env_of(&spec.containers[0]), ours("git.corp.example/*,mods.corp.example"));
    assert_eq!(spec.containers[0].volume_mounts.as_ref().unwrap(), &our_mounts());
    assert_second_review_is_a_no_op(&doc, &patched, &s);

    // The patch creates what is missing rather than appending to it.
    let out: Value = serde_json::from_slice(&review(doc.to_string().as_bytes(), &s).unwrap()).unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(out["response"]["patch"].as_str().unwrap()).unwrap();
    let ops: Value = serde_json::from_slice(&bytes).unwrap();
    let paths: Vec<&str> = ops.as_array().unwrap().iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/metadata/annotations/gocred.dev~1injected",
            "/spec/volumes",
            "/spec/containers/0/env",
            "/spec/containers/0/volumeMounts",
            "/spec/initContainers"
        ]
    );
    assert!(ops.as_array().unwrap().iter().all(|o| o["op"] == "add"));
}

#[test]
fn annotation_keys_needing_escaping_survive() {
    let doc = fixture("escaping");
    let (resp, patched) = run(&doc, &settings());
    assert_eq!(resp["allowed"], true);
    let before = doc["request"]["object"]["metadata"]["annotations"].as_object().unwrap();
    let after = patched["metadata"]["annotations"].as_object().unwrap();
    for (k, v) in before {
        assert_eq!(after.get(k), Some(v), "{k}");
    }
    assert_eq!(after["gocred.dev/injected"], "v1");
    assert_eq!(after.len(), before.len() + 1);
    let c = &pod(&patched).spec.unwrap().containers[0];
    assert_eq!(env_of(c)[0], var("A~B", "c/d"));
    assert_eq!(env_of(c).len(), 1 + ours("x").len());
}

#[test]
fn container_selection_mode_modules_and_resources_from_annotations() {
    let doc = fixture("containers-selection");
    let s = settings();
    let (resp, patched) = run(&doc, &s);
    assert_eq!(resp["allowed"], true, "{resp}");
    let p = pod(&patched);
    let orig = pod(&doc["request"]["object"]);
    let spec = p.spec.as_ref().unwrap();
    let modules = "git.corp.example/platform/*,mods.corp.example";
    // Git mode: no GOPROXY / GONOPROXY.
    let git_env: Vec<EnvVar> =
        ours(modules).into_iter().filter(|v| v.name != "GOPROXY" && v.name != "GONOPROXY").collect();
    assert_eq!(env_of(&spec.containers[0]), git_env, "build (env: [] extended)");
    assert_eq!(spec.containers[1], orig.spec.as_ref().unwrap().containers[1], "log-shipper untouched");
    assert_eq!(env_of(&spec.containers[2]), git_env, "debug");
    assert_eq!(spec.containers[2].volume_mounts.as_ref().unwrap(), &our_mounts(), "debug (volumeMounts: [])");
    // The pod runs as uid 1000: the init container inherits it instead of 65532.
    let res = json!({"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "50m", "memory": "32Mi"}});
    assert_eq!(spec.init_containers.as_ref().unwrap(), &[expected_init(modules, "git", true, None, Some(res))]);
    assert_second_review_is_a_no_op(&doc, &patched, &s);
}

#[test]
fn pods_that_did_not_ask_and_other_kinds_are_allowed_unchanged() {
    let s = settings();
    for name in ["not-annotated", "no-annotations", "deployment"] {
        let doc = fixture(name);
        let (resp, obj) = run(&doc, &s);
        assert_eq!(resp["allowed"], true, "{name}");
        assert!(resp.get("patch").is_none(), "{name}: {resp}");
        assert!(resp.get("warnings").is_none(), "{name}");
        assert_eq!(obj, doc["request"]["object"], "{name}");
    }
    // inject: "false", the broker's own pods, UPDATE, DELETE (no object), a subresource.
    let base = fixture("minimal");
    let cases: [Edit; 5] = [
        ("inject false", |d| d["request"]["object"]["metadata"]["annotations"]["gocred.dev/inject"] = "false".into()),
        ("broker pod", |d| d["request"]["object"]["metadata"]["labels"] = json!({"app.kubernetes.io/name": "gocred"})),
        ("update", |d| d["request"]["operation"] = "UPDATE".into()),
        ("delete", |d| {
            d["request"]["operation"] = "DELETE".into();
            d["request"]["oldObject"] = d["request"]["object"].take();
        }),
        ("subresource", |d| d["request"]["subResource"] = "ephemeralcontainers".into()),
    ];
    for (what, f) in cases {
        let mut d = base.clone();
        f(&mut d);
        let (resp, _) = run(&d, &s);
        assert_eq!(resp["allowed"], true, "{what}");
        assert!(resp.get("patch").is_none(), "{what}: {resp}");
    }
    // Half an injection (an init container named like ours, no marker; or the marker without the
    // init container) is refused: such a pod would start without credentials.
    let mut d = base.clone();
    d["request"]["object"]["spec"]["initContainers"] = json!([{"name": "gocred-init", "image": "x"}]);
    let (resp, _) = run(&d, &s);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("gocred-init"), "{resp}");
    let mut d = base.clone();
    d["request"]["object"]["metadata"]["annotations"]["gocred.dev/injected"] = "v1".into();
    let (resp, _) = run(&d, &s);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp["status"]["message"].as_str().unwrap().contains("partially injected"), "{resp}");
}

/// The fixture of a pod injected before (what the minimal pod looks like after the patch).
#[test]
fn already_injected_fixture_is_left_alone() {
    let doc = fixture("already-injected");
    assert_eq!(doc["request"]["object"]["metadata"]["annotations"]["gocred.dev/injected"], "v1");
    let (resp, obj) = run(&doc, &settings());
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    assert_eq!(obj, doc["request"]["object"]);
    // Even without our annotation, the init container marks it as done.
    let mut d = doc.clone();
    d["request"]["object"]["metadata"]["annotations"].as_object_mut().unwrap().remove("gocred.dev/injected");
    let (resp, _) = run(&d, &settings());
    assert!(resp.get("patch").is_none());
}

#[test]
fn malformed_annotations_are_denied_naming_the_annotation_and_value() {
    let s = settings();
    let doc = fixture("malformed-modules");
    let (resp, obj) = run(&doc, &s);
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp.get("patch").is_none());
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("gocred.dev/modules") && msg.contains("git.corp example/*"), "{msg}");
    assert_eq!(resp["status"]["code"], 400);
    assert_eq!(obj, doc["request"]["object"]);

    let base = fixture("minimal");
    let cases: [(&str, &str, &str); 7] = [
        ("gocred.dev/inject", "yes", "\"yes\""),
        ("gocred.dev/mode", "svn", "\"svn\""),
        ("gocred.dev/modules", "corp", "corp"),
        ("gocred.dev/modules", "", "empty"),
        ("gocred.dev/containers", "main,sidecar", "\"sidecar\""),
        ("gocred.dev/init-resources", "cpu=lots", "\"lots\""),
        ("gocred.dev/init-resources", "cpu", "NAME=QUANTITY"),
    ];
    for (key, value, needle) in cases {
        let mut d = base.clone();
        d["request"]["object"]["metadata"]["annotations"][key] = value.into();
        let (resp, _) = run(&d, &s);
        assert_eq!(resp["allowed"], false, "{key}={value}");
        let msg = resp["status"]["message"].as_str().unwrap();
        assert!(msg.contains(key) && msg.contains(needle), "{key}={value}: {msg}");
    }

    // on_malformed = "allow": admitted unchanged, with a warning saying why.
    let allow = InjectSettings { on_malformed: OnMalformed::Allow, ..s };
    let (resp, obj) = run(&doc, &allow);
    assert_eq!(resp["allowed"], true);
    assert!(resp.get("patch").is_none());
    let w = resp["warnings"][0].as_str().unwrap();
    assert!(w.contains("gocred.dev/modules") && w.contains("without gocred injection"), "{w}");
    assert_eq!(obj, doc["request"]["object"]);
}

#[test]
fn volume_and_mount_path_conflicts_are_refused_clearly() {
    let s = settings();
    let base = fixture("minimal");
    let mut d = base.clone();
    d["request"]["object"]["spec"]["volumes"] = json!([{"name": "gocred", "emptyDir": {}}]);
    let (resp, _) = run(&d, &s);
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("volume named \"gocred\""), "{msg}");

    let mut d = base.clone();
    d["request"]["object"]["spec"]["volumes"] = json!([{"name": "cache", "emptyDir": {}}]);
    d["request"]["object"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "cache", "mountPath": "/gocred/"}]);
    let (resp, _) = run(&d, &s);
    assert_eq!(resp["allowed"], false);
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("\"main\"") && msg.contains("\"cache\"") && msg.contains("/gocred"), "{msg}");
}

#[test]
fn settings_shape_the_patch() {
    // No CA: no SSL_CERT_DIR / GOCRED_CA_CERT / GOCRED_CA_PEM. Other audience, lifetime,
    // fallback, default resources.
    let mut s = settings();
    s.ca_pem = None;
    s.token_audience = "https://gocred.corp.example".into();
    s.token_expiration_seconds = 3600;
    s.goproxy_fallback = "off".into();
    s.init_resources = Some(parse_resources("memory=16Mi").unwrap());
    let doc = fixture("minimal");
    let (_, patched) = run(&doc, &s);
    let p = pod(&patched);
    let spec = p.spec.unwrap();
    let env = env_of(&spec.containers[0]);
    assert!(!env.iter().any(|v| v.name == "SSL_CERT_DIR" || v.name == "GOCRED_CA_CERT" || v.name == "SSL_CERT_FILE"));
    assert_eq!(
        env.iter().find(|v| v.name == "GOPROXY").unwrap().value.as_deref(),
        Some("https://gocred.gocred.svc:8443/mod,off")
    );
    let init = &spec.init_containers.unwrap()[0];
    assert!(!env_of(init).iter().any(|v| v.name == "GOCRED_CA_PEM"));
    let r = init.resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "16Mi");
    assert_eq!(r.requests, r.limits);
    let tok =
        spec.volumes.unwrap()[0].projected.clone().unwrap().sources.unwrap()[0].service_account_token.clone().unwrap();
    assert_eq!(tok.audience.as_deref(), Some("https://gocred.corp.example"));
    assert_eq!(tok.expiration_seconds, Some(3600));
}

#[test]
fn bad_reviews_are_errors() {
    let s = settings();
    assert!(matches!(review(b"{not json", &s), Err(WebhookError::ParseReview(_))));
    let mut beta = fixture("minimal");
    beta["apiVersion"] = "admission.k8s.io/v1beta1".into();
    assert!(matches!(review(beta.to_string().as_bytes(), &s), Err(WebhookError::CheckReviewType { .. })));
    let e = review(br#"{"apiVersion":"v1","kind":"Pod"}"#, &s).unwrap_err().to_string();
    assert!(e.contains("expected an admission.k8s.io/v1 AdmissionReview") && e.contains("`Pod`"), "{e}");
    assert!(matches!(
        review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#, &s),
        Err(WebhookError::ReadRequest)
    ));
    let mut d = fixture("minimal");
    d["request"]["object"]["spec"]["containers"] = json!("not a list");
    assert!(matches!(review(d.to_string().as_bytes(), &s), Err(WebhookError::ParsePod(_))));
}

#[test]
fn outcomes_are_reported() {
    let s = settings();
    let r = review_detailed(fixture("minimal").to_string().as_bytes(), &s).unwrap();
    assert_eq!((r.outcome, r.uid.as_str()), (Outcome::Injected, "6a1c0d2e-0004-4a5b-8c7d-000000000004"));
    let r = review_detailed(fixture("not-annotated").to_string().as_bytes(), &s).unwrap();
    assert_eq!(r.outcome, Outcome::Skipped);
    let r = review_detailed(fixture("malformed-modules").to_string().as_bytes(), &s).unwrap();
    assert!(matches!(r.outcome, Outcome::Denied(m) if m.contains("gocred.dev/modules")));
}
