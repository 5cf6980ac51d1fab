//! The Kubernetes admission webhook over real HTTPS: the real `gocred serve` with `[webhook]`
//! enabled answers the AdmissionReview fixtures (`tests/fixtures/admission/`); each returned
//! patch is applied with `json_patch`, the result parsed as a k8s-openapi Pod, validated by
//! `kubernetes-validate --strict` (Kubernetes 1.34 schemas), compared with exactly what must be
//! injected, and reviewed again to prove nothing changes the second time.

use crate::harness::*;
use base64::Engine;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const BROKER: &str = "https://gocred.gocred.svc:8443";
const IMAGE: &str = "ghcr.io/gocred/gocred:0.1.0";
/// The patterns the broker derives from its upstreams (`git.corp.example`, `mods.corp.example`).
const MODULES: &str = "git.corp.example,mods.corp.example";

struct Broker {
    dir: tempfile::TempDir,
    g: Gocred,
    client: reqwest::Client,
    ca_pem: String,
}

/// A TLS broker (dev CA) with two upstreams, the file backend, and `webhook` as its `[webhook]`
/// section.
fn start(webhook: &str) -> Broker {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tls = gocred::tls::ensure_dev_ca(&d.join("tls")).unwrap();
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n[audit]\npath = \"audit.log\"\n\
             [[upstreams]]\nname = \"corp\"\nkind = \"git\"\nhosts = [\"git.corp.example\", \"mods.corp.example\"]\nurl = \"https://127.0.0.1:9\"\n\
             [[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nmodules = [\"mods.corp.example\"]\nurl = \"https://127.0.0.1:9\"\n\
             [[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://kubernetes.default.svc.cluster.local\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n\
             {webhook}\n",
            tls.cert.display(),
            tls.key.display(),
        ),
    )
    .unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let g = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[("GOCRED_FILE_KEY", &key)]);
    let ca_pem = std::fs::read_to_string(&tls.ca_cert).unwrap();
    Broker { client: client(Some(&tls.ca_cert)), dir, g, ca_pem }
}

fn enabled() -> String {
    format!("[webhook]\nenabled = true\nimage = \"{IMAGE}\"\nbroker_url = \"{BROKER}\"\nca_file = \"tls/ca.pem\"\n")
}

fn fixture(name: &str) -> Value {
    let p = repo_root().join("tests/fixtures/admission").join(format!("{name}.json"));
    serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

impl Broker {
    /// POST a review; (status, content type, body).
    async fn post(&self, body: Vec<u8>) -> (u16, String, Vec<u8>) {
        let r = self
            .client
            .post(format!("{}/v1/admission", self.g.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (r.status().as_u16(), ct, r.bytes().await.unwrap().to_vec())
    }

    /// Review `doc` and return (response, the object with the patch applied).
    async fn review(&self, doc: &Value) -> (Value, Value) {
        let (st, ct, body) = self.post(doc.to_string().into_bytes()).await;
        assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(ct, "application/json");
        let out: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (out["apiVersion"].as_str(), out["kind"].as_str()),
            (Some("admission.k8s.io/v1"), Some("AdmissionReview"))
        );
        let resp = out["response"].clone();
        assert_eq!(resp["uid"], doc["request"]["uid"], "uid echoed");
        let mut obj = doc["request"]["object"].clone();
        if let Some(p) = resp.get("patch") {
            assert_eq!(resp["patchType"], "JSONPatch");
            let bytes = base64::engine::general_purpose::STANDARD.decode(p.as_str().expect("patch is base64")).unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            json_patch::patch(&mut obj, &patch).unwrap_or_else(|e| panic!("patch does not apply: {e}"));
        }
        (resp, obj)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

/// `kubernetes-validate --strict` against the Kubernetes 1.34 schemas; panics with its output.
fn kubernetes_validate(file: &Path) {
    let kv = peer("kv/kubernetes_validate");
    let out = Command::new("python3")
        .env("PYTHONPATH", kv.parent().unwrap())
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.34"])
        .arg(file)
        .output()
        .expect("python3 is needed to run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate --strict rejected {}:\n{}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (name, value) pairs of a container's env (`valueFrom` shown as "<from>").
fn env_of(c: &k8s_openapi::api::core::v1::Container) -> Vec<(String, String)> {
    c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_else(|| "<from>".into()))).collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// What the broker injects into a workload container: goproxy mode, with the private CA.
fn ours(modules: &str, git_mode: bool) -> Vec<(String, String)> {
    let proxy = format!("{BROKER}/mod,https://proxy.golang.org,direct");
    let mut v = vec![
        ("GOCRED_BROKER", BROKER),
        ("GOCRED_TOKEN_FILE", "/var/run/secrets/gocred.dev/token"),
        ("GOCRED_STATE_DIR", "/gocred/state"),
        ("GOAUTH", "/gocred/bin/gocred goauth"),
        ("GIT_CONFIG_GLOBAL", "/gocred/gitconfig"),
        ("GOPRIVATE", modules),
        ("GONOSUMDB", modules),
    ];
    if !git_mode {
        v.push(("GOPROXY", &proxy));
        v.push(("GONOPROXY", "none"));
    }
    v.push(("SSL_CERT_DIR", "/gocred/certs:/etc/ssl/certs:/etc/pki/tls/certs"));
    v.push(("GOCRED_CA_CERT", "/gocred/ca.pem"));
    pairs(&v)
}

fn init_container(ca: &str, modules: &str, mode: &str, run_as_user: Option<i64>, resources: Option<Value>) -> Value {
    let mut sc = json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "seccompProfile": {"type": "RuntimeDefault"}
    });
    if let Some(u) = run_as_user {
        sc["runAsUser"] = u.into();
    }
    let mut c = json!({
        "name": "gocred-init",
        "image": IMAGE,
        "args": ["agent", "--install", "/gocred"],
        "env": [
            {"name": "GOCRED_BROKER", "value": BROKER},
            {"name": "GOCRED_MODULES", "value": modules},
            {"name": "GOCRED_INJECT_MODE", "value": mode},
            {"name": "GOCRED_GIT_HOSTS", "value": "git.corp.example,mods.corp.example"},
            {"name": "GOCRED_CA_PEM", "value": ca}
        ],
        "volumeMounts": [{"name": "gocred", "mountPath": "/gocred"}],
        "securityContext": sc
    });
    if let Some(r) = resources {
        c["resources"] = r;
    }
    c
}

/// Exactly what one injected fixture must look like after the patch.
struct Expect {
    /// Env per container name, in order (containers and init containers alike).
    env: BTreeMap<&'static str, Vec<(String, String)>>,
    /// Containers (and init containers) that must have our two mounts appended.
    mounted: Vec<&'static str>,
    /// Containers left exactly as they were.
    untouched: Vec<&'static str>,
    init_names: Vec<&'static str>,
    init: Value,
    volumes: Vec<&'static str>,
}

fn expectation(name: &str, ca: &str) -> Expect {
    let with = |own: &[(&str, &str)], modules: &str, skip: &[&str], git: bool| {
        let mut v = pairs(own);
        v.extend(ours(modules, git).into_iter().filter(|(n, _)| !skip.contains(&n.as_str())));
        v
    };
    match name {
        "annotated-multi" => Expect {
            env: BTreeMap::from([
                (
                    "build",
                    with(
                        &[
                            ("GOPRIVATE", "git.corp.example/legacy"),
                            ("GOFLAGS", "-mod=readonly"),
                            ("POD_NAME", "<from>"),
                        ],
                        MODULES,
                        &["GOPRIVATE"],
                        false,
                    ),
                ),
                ("test", with(&[], MODULES, &[], false)),
                ("clone", with(&[("GIT_TERMINAL_PROMPT", "0")], MODULES, &[], false)),
                ("deps", with(&[], MODULES, &[], false)),
            ]),
            mounted: vec!["build", "test", "clone", "deps"],
            untouched: vec![],
            init_names: vec!["gocred-init", "clone", "deps"],
            init: init_container(ca, MODULES, "goproxy", Some(65532), None),
            volumes: vec!["workspace", "kube-api-access-m4x8d", "gocred-token", "gocred"],
        },
        "minimal" => Expect {
            env: BTreeMap::from([("main", with(&[], MODULES, &[], false))]),
            mounted: vec!["main"],
            untouched: vec![],
            init_names: vec!["gocred-init"],
            init: init_container(ca, MODULES, "goproxy", Some(65532), None),
            volumes: vec!["gocred-token", "gocred"],
        },
        "escaping" => Expect {
            env: BTreeMap::from([("main", with(&[("A~B", "c/d")], MODULES, &[], false))]),
            mounted: vec!["main"],
            untouched: vec![],
            init_names: vec!["gocred-init"],
            init: init_container(ca, MODULES, "goproxy", Some(65532), None),
            volumes: vec!["kube-api-access-z9k2w", "gocred-token", "gocred"],
        },
        "containers-selection" => {
            let m = "git.corp.example/platform/*,mods.corp.example";
            let res = json!({"limits": {"cpu": "50m", "memory": "32Mi"}, "requests": {"cpu": "50m", "memory": "32Mi"}});
            Expect {
                env: BTreeMap::from([("build", with(&[], m, &[], true)), ("debug", with(&[], m, &[], true))]),
                mounted: vec!["build", "debug"],
                untouched: vec!["log-shipper"],
                init_names: vec!["gocred-init"],
                init: init_container(ca, m, "git", None, Some(res)),
                volumes: vec!["kube-api-access-h6t1c", "gocred-token", "gocred"],
            }
        }
        other => panic!("no expectation for {other}"),
    }
}

fn check_injected(name: &str, original: &Value, patched: &Value, ca: &str) {
    let want = expectation(name, ca);
    let pod: Pod = serde_json::from_value(patched.clone()).expect("the patched object parses as a Pod");
    let orig: Pod = serde_json::from_value(original.clone()).unwrap();
    let spec = pod.spec.as_ref().unwrap();
    let ospec = orig.spec.as_ref().unwrap();

    // Annotations: ours added, every other key (including ones needing `~0` / `~1`) kept.
    let ann = pod.metadata.annotations.clone().unwrap();
    let mut want_ann = orig.metadata.annotations.clone().unwrap();
    want_ann.insert("gocred.dev/injected".into(), "v1".into());
    assert_eq!(ann, want_ann, "{name}: annotations");

    let vols: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(vols, want.volumes, "{name}: volumes");
    let v = |n: &str| serde_json::to_value(spec.volumes.iter().flatten().find(|v| v.name == n).unwrap()).unwrap();
    assert_eq!(
        v("gocred-token"),
        json!({"name": "gocred-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "gocred", "expirationSeconds": 600, "path": "token"}}]}}),
        "{name}"
    );
    assert_eq!(v("gocred"), json!({"name": "gocred", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}), "{name}");

    let inits = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(inits.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), want.init_names, "{name}: init order");
    assert_eq!(serde_json::to_value(&inits[0]).unwrap(), want.init, "{name}: gocred-init");

    let all = |s: &k8s_openapi::api::core::v1::PodSpec| {
        s.containers.iter().chain(s.init_containers.iter().flatten()).cloned().collect::<Vec<_>>()
    };
    let before = all(ospec);
    for c in all(spec).iter().filter(|c| c.name != "gocred-init") {
        let old = before.iter().find(|o| o.name == c.name).unwrap();
        if want.untouched.contains(&c.name.as_str()) {
            assert_eq!(c, old, "{name}: {} must be untouched", c.name);
            continue;
        }
        assert_eq!(env_of(c), want.env[c.name.as_str()], "{name}: env of {}", c.name);
        assert!(want.mounted.contains(&c.name.as_str()), "{name}: {} unexpectedly configured", c.name);
        let mounts: Vec<Value> = c.volume_mounts.iter().flatten().map(|m| serde_json::to_value(m).unwrap()).collect();
        let mut want_mounts: Vec<Value> =
            old.volume_mounts.iter().flatten().map(|m| serde_json::to_value(m).unwrap()).collect();
        want_mounts.push(json!({"name": "gocred", "mountPath": "/gocred"}));
        want_mounts.push(json!({"name": "gocred-token", "mountPath": "/var/run/secrets/gocred.dev", "readOnly": true}));
        assert_eq!(mounts, want_mounts, "{name}: mounts of {}", c.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_reviews_over_https_are_patched_exactly_validated_and_idempotent() {
    let b = start(&enabled());
    let skipped = ["not-annotated", "no-annotations", "deployment", "already-injected"];
    let injected = ["annotated-multi", "minimal", "escaping", "containers-selection"];
    for name in skipped {
        let doc = fixture(name);
        let (resp, obj) = b.review(&doc).await;
        assert_eq!(resp["allowed"], true, "{name}: {resp}");
        assert!(resp.get("patch").is_none(), "{name} must not be patched: {resp}");
        assert_eq!(obj, doc["request"]["object"]);
    }
    for name in injected {
        let doc = fixture(name);
        let (resp, patched) = b.review(&doc).await;
        assert_eq!(resp["allowed"], true, "{name}: {resp}");
        assert!(resp.get("patch").is_some(), "{name} must be patched: {resp}");

        // kubernetes-validate names the resource in its report: give a generateName pod (whose
        // name the API server assigns after admission) the name it would get.
        let mut named = patched.clone();
        if named["metadata"]["name"].is_null() {
            named["metadata"]["name"] = format!("{}x7k2p", named["metadata"]["generateName"].as_str().unwrap()).into();
        }
        let file = b.path(&format!("{name}.pod.json"));
        std::fs::write(&file, serde_json::to_vec_pretty(&named).unwrap()).unwrap();
        kubernetes_validate(&file);
        check_injected(name, &doc["request"]["object"], &patched, &b.ca_pem);

        // Reinvocation / a second webhook pass: the patched pod is left as it is.
        let mut again = doc.clone();
        again["request"]["uid"] = format!("{name}-again").into();
        again["request"]["object"] = patched.clone();
        let (resp2, obj2) = b.review(&again).await;
        assert_eq!((resp2["allowed"].as_bool(), resp2["uid"].as_str()), (Some(true), Some(&*format!("{name}-again"))));
        assert!(resp2.get("patch").is_none(), "{name}: second review patched again: {resp2}");
        assert_eq!(obj2, patched);
    }

    // A malformed annotation is refused with a message naming it and the bad value.
    let doc = fixture("malformed-modules");
    let (resp, _) = b.review(&doc).await;
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp.get("patch").is_none());
    let msg = resp["status"]["message"].as_str().unwrap();
    assert!(msg.contains("gocred.dev/modules") && msg.contains("git.corp example/*"), "{msg}");
    assert_eq!(resp["status"]["code"], 400);

    // Outcomes are counted.
    let (_, metrics) = b.g.get(&b.client, "/metrics").await;
    for line in [
        "gocred_webhook_injected_total 4",
        "gocred_webhook_skipped_total 8",
        "gocred_webhook_denied_total 1",
        "gocred_http_requests_total{route=\"/v1/admission\",method=\"POST\",status=\"200\"} 13",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_reviews_get_clear_http_errors_and_allow_mode_warns() {
    let b = start(&format!("{}on_malformed = \"allow\"\n", enabled()));
    let (st, ct, body) = b.post(b"{\"apiVersion\": ".to_vec()).await;
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, ct.as_str(), e["error"].as_str()), (400, "application/json", Some("invalid_request")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("AdmissionReview"), "{e}");

    let (st, _, body) = b.post(br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec()).await;
    assert_eq!(st, 400, "{}", String::from_utf8_lossy(&body));

    // Larger than any real review: 413, before it is parsed.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(4 << 20));
    let (st, _, body) = b.post(big.into_bytes()).await;
    let e: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((st, e["error"].as_str()), (413, Some("payload_too_large")), "{e}");

    // A real review just under a megabyte is fine.
    let mut doc = fixture("minimal");
    doc["request"]["object"]["metadata"]["annotations"]["example.com/blob"] = "y".repeat(900 << 10).into();
    let (resp, patched) = b.review(&doc).await;
    assert_eq!(resp["allowed"], true);
    assert_eq!(patched["metadata"]["annotations"]["gocred.dev/injected"], "v1");

    let r = b.client.get(format!("{}/v1/admission", b.g.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);

    // on_malformed = "allow": admitted unchanged with a warning naming the annotation.
    let doc = fixture("malformed-modules");
    let (resp, obj) = b.review(&doc).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none());
    let w = resp["warnings"][0].as_str().unwrap();
    assert!(w.contains("gocred.dev/modules") && w.contains("git.corp example/*"), "{w}");
    assert_eq!(obj, doc["request"]["object"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_route_exists_only_when_the_webhook_is_enabled() {
    let b = start("[webhook]\nenabled = false\nimage = \"x:1\"\n");
    let (st, _, body) = b.post(fixture("minimal").to_string().into_bytes()).await;
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    // The environment switches it on.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n[webhook]\nimage = \"{IMAGE}\"\nbroker_url = \"{BROKER}\"\nmodules = [\"git.corp.example/*\"]\n"
        ),
    )
    .unwrap();
    let (code, _, err) = Gocred::run(
        &["serve", "--check", "--config", cfg.to_str().unwrap()],
        &[("GOCRED_WEBHOOK__ENABLED", "true"), ("GOCRED_WEBHOOK__TOKEN_EXPIRATION", "1m")],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("webhook.token_expiration") && err.contains("10m"), "{err}");
}
