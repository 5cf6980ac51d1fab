//! A build pod's life after the webhook, simulated on this machine: the real broker (TLS,
//! OpenBao-held upstream credential, real git/GOPROXY upstream) reviews a real AdmissionReview;
//! the returned JSONPatch is applied; the init container's command runs with its env; the
//! projected service-account token (from OpenBao's identity issuer, standing in for the cluster's
//! issuer, audience `gocred`) is written where the projected volume puts it; then `go mod
//! download` runs with exactly the build container's env from the patch (mount paths mapped to
//! temp dirs) and nothing else — and gets the private module, hash-identical to a direct download.

use crate::harness::*;
use crate::proxy::{go_bin, world_with};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Map every whitespace-separated word of `v` that lies under a mount path to the temp dir.
fn map_paths(v: &str, mounts: &[(String, PathBuf)]) -> String {
    v.split(' ')
        .map(|word| {
            for (mount, dir) in mounts {
                if let Some(rest) = word.strip_prefix(mount.as_str())
                    && (rest.is_empty() || rest.starts_with('/'))
                {
                    return format!("{}{rest}", dir.display());
                }
            }
            word.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// (mount path, temp dir) for every volume mount of a container.
fn mounts_of(container: &serde_json::Value, root: &Path) -> Vec<(String, PathBuf)> {
    let mut m: Vec<(String, PathBuf)> = container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|vm| (vm["mountPath"].as_str().unwrap().to_string(), root.join(vm["name"].as_str().unwrap())))
        .collect();
    // Longest first, so nested paths map correctly.
    m.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    m
}

fn env_of(container: &serde_json::Value, mounts: &[(String, PathBuf)]) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap().to_string(), map_paths(e["value"].as_str().unwrap_or(""), mounts)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn go_mod_download_works_in_an_injected_pod_with_no_other_setup() {
    // The cluster's service-account issuer: OpenBao's identity OIDC, tokens with Kubernetes claims.
    let sa = BaoIssuer::start().await;
    sa.role(
        "builder",
        "gocred",
        "10m",
        serde_json::json!({"kubernetes.io": {"namespace": "builds", "serviceaccount": {"name": "builder"}}}),
    )
    .await;
    let port = free_port();
    let broker_url = format!("https://127.0.0.1:{port}");
    let extra = format!(
        "[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"{}\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n\
         [webhook]\nenabled = true\nimage = \"ghcr.io/gocred/gocred:0.1.0\"\nbroker_url = \"{broker_url}\"\nca_file = \"tls/ca.pem\"\n",
        sa.issuer()
    );
    let mut w = world_with(&format!("127.0.0.1:{port}"), &extra).await;
    // Policy: build pods of namespace `builds` may download the acme modules.
    std::fs::write(
        w.dir.path().join("policies/k8s-test.cedar"),
        "@id(\"builds-acme\")\npermit (principal is Workload, action == Action::\"download\", resource)\n\
         when { principal has \"namespace\" && principal[\"namespace\"] == \"builds\" && resource.path like \"git.corp.test/acme/*\" };\n",
    )
    .unwrap();
    w.broker.proc.signal("HUP");
    w.broker.proc.wait_stderr("policies reloaded", Duration::from_secs(10));

    // The API server's review of a new build pod.
    let mut review: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo_root().join("tests/fixtures/admission/minimal.json")).unwrap())
            .unwrap();
    review["request"]["namespace"] = "builds".into();
    let resp: serde_json::Value = client(Some(&w.ca))
        .post(format!("{broker_url}/v1/admission"))
        .json(&review)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp["response"]["allowed"], true, "{resp}");
    use base64::Engine;
    let patch_bytes =
        base64::engine::general_purpose::STANDARD.decode(resp["response"]["patch"].as_str().expect("a patch")).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    let mut pod = review["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();

    // The pod's volumes, as temp dirs: the projected token and the in-memory volume.
    let root = w.dir.path().join("pod");
    let token_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["projected"].is_object())
        .expect("a projected token volume")
        .clone();
    let source = &token_volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(source["audience"], "gocred");
    let token_path = root.join(token_volume["name"].as_str().unwrap()).join(source["path"].as_str().unwrap());
    std::fs::create_dir_all(token_path.parent().unwrap()).unwrap();
    std::fs::write(&token_path, sa.token("builder").await).unwrap(); // what kubelet does
    for v in pod["spec"]["volumes"].as_array().unwrap() {
        std::fs::create_dir_all(root.join(v["name"].as_str().unwrap())).unwrap();
    }

    // The init container, run as the pod would: its args and env, nothing else.
    let init = pod["spec"]["initContainers"][0].clone();
    assert_eq!(init["name"], "gocred-init");
    let mounts = mounts_of(&init, &root);
    let args: Vec<String> =
        init["args"].as_array().unwrap().iter().map(|a| map_paths(a.as_str().unwrap(), &mounts)).collect();
    let mut cmd = Command::new(gocred_bin());
    cmd.args(&args).env_clear().envs(env_of(&init, &mounts));
    let out = run_ok(&mut cmd);
    assert!(out.contains("installed"), "{out}");
    // The gitconfig keeps the user's own config and sends the broker's git hosts to the broker.
    let gitconfig = std::fs::read_to_string(root.join("gocred/gitconfig")).unwrap();
    assert!(gitconfig.contains("[include]\n\tpath = ~/.gitconfig"), "{gitconfig}");
    // The broker's CA is added for the broker's URLs, not substituted for the system roots.
    assert!(gitconfig.contains(&format!("[http \"{broker_url}/\"]\n\tsslCAInfo = ")), "{gitconfig}");
    assert!(
        gitconfig.contains(&format!("[url \"{broker_url}/git/git.corp.test/\"]\n\tinsteadOf = https://git.corp.test/")),
        "{gitconfig}"
    );

    // The build container: only the injected env, plus what any build image has (PATH with go,
    // a HOME, Go's cache dirs).
    let build = pod["spec"]["containers"][0].clone();
    let mounts = mounts_of(&build, &root);
    let env = env_of(&build, &mounts);
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for want in ["GOAUTH", "GIT_CONFIG_GLOBAL", "GOPRIVATE", "GONOSUMDB", "GOPROXY", "GONOPROXY", "GOCRED_TOKEN_FILE"] {
        assert!(names.contains(&want), "{want} injected: {names:?}");
    }
    assert!(!names.contains(&"SSL_CERT_FILE"), "the image's own roots stay trusted: {names:?}");
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut go = Command::new(go_bin());
    go.args(["mod", "download", "-json", "git.corp.test/acme/lib.git@v1.0.0"])
        .current_dir(&work)
        .env_clear()
        .envs(env.iter().cloned())
        .env("PATH", format!("{}:/usr/bin:/bin", go_bin().parent().unwrap().display()))
        .env("HOME", &home)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOMODCACHE", root.join("modcache"))
        .env("GOPATH", root.join("gopath"))
        .env("GOCACHE", root.join("gocache"));
    let out = go.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go mod download in the injected env: {text}");
    let first: serde_json::Value = serde_json::Deserializer::from_str(&text).into_iter().next().unwrap().unwrap();
    assert_eq!(first["Sum"].as_str(), Some(w.direct_sum.as_str()), "{text}");
    // The helper exchanged the projected token: a workload session in the pod's state dir.
    let state = env.iter().find(|(k, _)| k == "GOCRED_STATE_DIR").map(|(_, v)| PathBuf::from(v)).unwrap();
    // The shared state dir (1777, made by the init container) holds one private dir per user.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o7777, 0o1777);
    let mine = state.join(format!("uid-{}", std::fs::metadata("/proc/self").unwrap().uid()));
    assert_eq!(std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777, 0o700);
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mine.join("session.json")).unwrap()).unwrap();
    assert_eq!(session["method"], "ambient");
    let audit = std::fs::read_to_string(w.dir.path().join("audit.log")).unwrap();
    assert!(audit.contains("subject token from issuer `cluster` verified"), "{audit}");
    assert!(audit.contains("builds-acme"), "the download was allowed by the namespace policy");

    // A pod in another namespace gets the same injection but its token proves `sandbox`: denied,
    // and the denial reaches go's output.
    sa.role(
        "sandbox",
        "gocred",
        "10m",
        serde_json::json!({"kubernetes.io": {"namespace": "sandbox", "serviceaccount": {"name": "builder"}}}),
    )
    .await;
    std::fs::write(&token_path, sa.token("sandbox").await).unwrap();
    std::fs::remove_dir_all(&state).unwrap();
    let out = go.env("GOMODCACHE", root.join("modcache-2")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("no policy permits download of git.corp.test/acme/lib.git"), "{text}");
}
