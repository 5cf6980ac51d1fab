//! The Helm chart (`charts/gocred`) and the Kubernetes examples (`examples/k8s/`), checked with
//! the real tools: `helm lint` / `helm template` (helm 4, offline, private HELM_* dirs),
//! `kubernetes-validate --strict` against the two newest Kubernetes versions it ships, the
//! chart's values.schema.json, and `gocred serve --check` on the rendered broker config.
//!
//! No API server exists here, so objects are validated against the published schemas, and
//! cert-manager's CRDs (not in those schemas) are checked field by field below.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn chart_dir() -> PathBuf {
    repo_root().join("charts/gocred")
}

/// `helm` with private cache/config/data dirs (nothing from the user's helm setup leaks in,
/// nothing is downloaded).
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Helm {
        Helm { bin: peer("k8s/helm/helm"), home: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .env_remove("KUBECONFIG");
        c
    }

    /// `helm template gocred charts/gocred -n gocred-system [extra...]`; the YAML stream.
    fn template(&self, extra: &[&str]) -> String {
        let chart = chart_dir().display().to_string();
        let mut args = vec!["template", "gocred", chart.as_str(), "--namespace", "gocred-system"];
        args.extend_from_slice(extra);
        run_ok(&mut self.cmd(&args))
    }

    /// Like [`Helm::template`] but expected to fail; the error text.
    fn template_err(&self, extra: &[&str]) -> String {
        let chart = chart_dir().display().to_string();
        let mut args = vec!["template", "gocred", chart.as_str()];
        args.extend_from_slice(extra);
        let out = self.cmd(&args).stdin(Stdio::null()).output().unwrap();
        assert!(!out.status.success(), "helm template {extra:?} should have failed");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// `python3 -m <module>` with the `.peers/kv` packages (kubernetes-validate and PyYAML).
fn kv_python(args: &[&str]) -> Command {
    let kv = peer("kv/kubernetes_validate").parent().unwrap().to_path_buf();
    let mut c = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    c.args(args).env("PYTHONPATH", kv).env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

/// The two newest Kubernetes versions kubernetes-validate has strict schemas for, computed from
/// its schema directory (`v1.37.0-local-strict`, ...), newest first. Cross-checked with its
/// `--help`, which names the newest as the default.
fn newest_two_versions() -> Vec<String> {
    let dir = peer("kv/kubernetes_validate/kubernetes-json-schema");
    let mut versions: Vec<(Vec<u64>, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let v = name.strip_prefix('v')?.strip_suffix("-local-strict")?.to_string();
            let parts: Option<Vec<u64>> = v.split('.').map(|p| p.parse().ok()).collect();
            Some((parts?, v))
        })
        .collect();
    versions.sort();
    assert!(versions.len() >= 2, "kubernetes-validate ships fewer than two schema versions in {}", dir.display());
    let newest: Vec<String> = versions.iter().rev().take(2).map(|(_, v)| v.clone()).collect();
    let help = run_ok(&mut kv_python(&["-m", "kubernetes_validate", "--help"]));
    assert!(
        help.split_whitespace().collect::<Vec<_>>().join(" ").contains(&format!("Defaults to {}", newest[0])),
        "{help}"
    );
    newest
}

/// `kubernetes-validate --strict` for both versions; panics on any error. Returns the kinds
/// (`apiVersion/kind`) it had no schema for.
fn validate_strict(yaml: &str, what: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, yaml).unwrap();
    let mut cmd = kv_python(&["-m", "kubernetes_validate", "--strict"]);
    for v in newest_two_versions() {
        cmd.args(["-k", &v]);
    }
    cmd.arg(&file);
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !text.contains("ERROR") && !text.contains("FATAL"), "{what}:\n{text}");
    let mut unknown: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("WARN"))
        .map(|l| {
            let kind = l.split("kind ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
            let api = l.split("api version ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("?");
            format!("{api}/{kind}")
        })
        .collect();
    unknown.sort();
    unknown.dedup();
    let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains("passed")).count();
    assert!(passed > 0, "{what}: nothing was validated:\n{text}");
    unknown
}

/// The YAML stream as JSON objects (PyYAML from `.peers/kv` does the parsing).
fn objects(yaml: &str) -> Vec<serde_json::Value> {
    let mut child = kv_python(&[
        "-c",
        "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(objs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind}/{name} in {:?}", kinds(objs)))
}

fn kinds(objs: &[serde_json::Value]) -> Vec<String> {
    let mut k: Vec<String> = objs
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap()))
        .collect();
    k.sort();
    k
}

/// Write the rendered broker config and policies to `dir` and run `gocred serve --check` on
/// them. The config's in-pod paths are pointed at `dir` with GOCRED_... overrides: the policy
/// dir at the rendered policies ConfigMap's files, the webhook CA file at a real CA.
fn check_rendered_config(objs: &[serde_json::Value], fullname: &str, dir: &Path) -> String {
    let toml_text = find(objs, "ConfigMap", fullname)["data"]["gocred.toml"].as_str().unwrap().to_string();
    let pol = dir.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    let cfg = dir.join("gocred.toml");
    std::fs::write(&cfg, &toml_text).unwrap();
    let policies = find(objs, "ConfigMap", &format!("{fullname}-policies"));
    for (name, text) in policies["data"].as_object().unwrap() {
        std::fs::write(pol.join(name), text.as_str().unwrap()).unwrap();
    }
    let ca = dir.join("ca.crt");
    let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    std::fs::write(&ca, params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()).unwrap();
    let parsed: toml::Table =
        toml_text.parse().unwrap_or_else(|e| panic!("rendered TOML does not parse: {e}\n{toml_text}"));
    let pol_s = pol.display().to_string();
    let ca_s = ca.display().to_string();
    let mut env = vec![("GOCRED_POLICY__DIR", pol_s.as_str())];
    if parsed.get("webhook").and_then(|w| w.get("ca_file")).is_some() {
        env.push(("GOCRED_WEBHOOK__CA_FILE", ca_s.as_str()));
    }
    let (code, out, err) = Gocred::run(&["serve", "--check", "--config", cfg.to_str().unwrap()], &env);
    assert_eq!(code, 0, "gocred serve --check refused the chart's config:\n{err}\n{toml_text}");
    assert!(out.contains("config OK"), "{out}");

    // With the webhook on, some kind = "kubernetes" issuer accepts the injected pods' token
    // audience (the broker's rule, checked here too so the chart keeps it whatever the binary).
    let issuers: Vec<&toml::Value> = parsed
        .get("oidc")
        .and_then(|o| o.get("issuers"))
        .and_then(|i| i.as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let webhook = parsed.get("webhook");
    if webhook.and_then(|w| w.get("enabled")).and_then(|e| e.as_bool()) == Some(true) {
        let aud = webhook.unwrap().get("token_audience").and_then(|a| a.as_str()).unwrap_or("gocred");
        assert!(
            issuers.iter().any(|i| i.get("kind").and_then(|k| k.as_str()) == Some("kubernetes")
                && i.get("audiences")
                    .and_then(|a| a.as_array())
                    .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(aud)))),
            "no kind = \"kubernetes\" issuer accepts audience {aud}:\n{toml_text}"
        );
    }
    // Every Kubernetes issuer is one the policies pin by name (`principal.issuer == "<name>"`):
    // a policy on namespaces alone would grant the same names from any issuer.
    let policy_text: String = policies["data"].as_object().unwrap().values().filter_map(|t| t.as_str()).collect();
    for i in &issuers {
        if i.get("kind").and_then(|k| k.as_str()) == Some("kubernetes") {
            let name = i.get("name").and_then(|n| n.as_str()).unwrap();
            assert!(
                policy_text.contains(&format!("principal.issuer == \"{name}\"")),
                "no policy pins the kubernetes issuer {name:?}:\n{policy_text}"
            );
        }
    }
    toml_text
}

/// The webhook's always-present namespace exclusion: the values of its
/// `kubernetes.io/metadata.name NotIn` requirement that names the control-plane namespaces.
fn excluded_namespaces(w: &serde_json::Value) -> Vec<String> {
    let exprs = w["namespaceSelector"]["matchExpressions"].as_array().expect("namespaceSelector.matchExpressions");
    let e = exprs
        .iter()
        .find(|e| {
            e["key"] == "kubernetes.io/metadata.name"
                && e["operator"] == "NotIn"
                && e["values"].as_array().unwrap().contains(&"kube-node-lease".into())
        })
        .unwrap_or_else(|| panic!("no control-plane exclusion in {}", w["namespaceSelector"]));
    e["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

#[test]
fn chart_lints_renders_schema_valid_objects_and_a_config_gocred_accepts() {
    let helm = Helm::new();
    let chart = chart_dir().display().to_string();
    let all_options = chart_dir().join("ci/all-options-values.yaml").display().to_string();

    // helm lint, strict (warnings fail), with the defaults and with every option set.
    run_ok(&mut helm.cmd(&["lint", "--strict", &chart]));
    run_ok(&mut helm.cmd(&["lint", "--strict", &chart, "-f", &all_options]));

    // Defaults: cert-manager TLS, Vault kubernetes auth, the webhook.
    let yaml = helm.template(&[]);
    let unknown = validate_strict(&yaml, "default values");
    assert_eq!(unknown, ["cert-manager.io/v1/Certificate", "cert-manager.io/v1/Issuer"], "only CRDs lack a schema");
    let objs = objects(&yaml);
    assert_eq!(
        kinds(&objs),
        [
            "Certificate/gocred-ca",
            "Certificate/gocred-serving",
            "ConfigMap/gocred",
            "ConfigMap/gocred-policies",
            "Deployment/gocred",
            "Issuer/gocred-ca",
            "Issuer/gocred-selfsigned",
            "MutatingWebhookConfiguration/gocred",
            "PodDisruptionBudget/gocred",
            "Service/gocred",
            "ServiceAccount/gocred",
        ],
        "no Role/ClusterRole: the broker needs no Kubernetes API access"
    );

    let d = find(&objs, "Deployment", "gocred");
    assert_eq!(d["spec"]["replicas"], 2);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let anti = &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(anti["podAffinityTerm"]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(anti["podAffinityTerm"]["labelSelector"]["matchLabels"], d["spec"]["selector"]["matchLabels"]);
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "ghcr.io/gocred/gocred:0.1.0");
    assert_eq!(c["args"], serde_json::json!(["serve", "--config", "/etc/gocred/gocred.toml"]));
    assert_eq!(c["ports"][0]["containerPort"], 8443);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path);
        assert_eq!(c[probe]["httpGet"]["scheme"], "HTTPS");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    let token = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "vault-token").unwrap();
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "vault");
    let sa = find(&objs, "ServiceAccount", "gocred");
    assert_eq!(sa["automountServiceAccountToken"], false);

    let pdb = find(&objs, "PodDisruptionBudget", "gocred");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let svc = find(&objs, "Service", "gocred");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "https");

    let mwc = find(&objs, "MutatingWebhookConfiguration", "gocred");
    assert_eq!(mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"], "gocred-system/gocred-serving");
    let w = &mwc["webhooks"][0];
    assert_eq!(w["admissionReviewVersions"], serde_json::json!(["v1"]));
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["timeoutSeconds"], 3);
    assert_eq!(w["reinvocationPolicy"], "IfNeeded", "an annotation added by a later webhook still gets injected");
    assert_eq!(w["clientConfig"]["service"]["path"], "/v1/admission");
    assert_eq!(w["clientConfig"]["service"]["name"], "gocred");
    assert_eq!(w["namespaceSelector"]["matchLabels"]["gocred.dev/inject"], "enabled");
    assert_eq!(excluded_namespaces(w), ["kube-system", "kube-node-lease", "kube-public", "gocred-system"]);
    // Only pods asking for injection reach the webhook (helm's default Kubernetes version is
    // recent enough for matchConditions).
    let conds = w["matchConditions"].as_array().expect("matchConditions");
    assert_eq!(conds.len(), 1, "{conds:?}");
    assert_eq!(conds[0]["name"], "gocred-inject-annotated");
    let expr = conds[0]["expression"].as_str().unwrap();
    for needle in [
        "has(object.metadata.annotations)",
        "'gocred.dev/inject' in object.metadata.annotations",
        "object.metadata.annotations['gocred.dev/inject'] != 'false'",
    ] {
        assert!(expr.contains(needle), "{needle} not in {expr}");
    }
    let excl = &w["objectSelector"]["matchExpressions"][0];
    assert_eq!((&excl["key"], &excl["operator"]), (&"app.kubernetes.io/name".into(), &"NotIn".into()));
    assert!(excl["values"].as_array().unwrap().contains(&"gocred".into()), "the broker's own pods are excluded");
    assert_eq!(
        d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "gocred",
        "the exclusion matches the broker's pod label"
    );
    assert_eq!(
        w["rules"],
        serde_json::json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"], "scope": "Namespaced"}])
    );

    // cert-manager objects (no schema in kubernetes-validate): the fields that matter.
    let ca = find(&objs, "Certificate", "gocred-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(
        ca["spec"]["privateKey"]["rotationPolicy"], "Never",
        "a renewed CA keeps its key: pods holding the old CA bundle still verify the broker"
    );
    assert_eq!(ca["spec"]["issuerRef"]["name"], "gocred-selfsigned");
    assert_eq!(find(&objs, "Issuer", "gocred-selfsigned")["spec"]["selfSigned"], serde_json::json!({}));
    assert_eq!(find(&objs, "Issuer", "gocred-ca")["spec"]["ca"]["secretName"], "gocred-ca");
    let serving = find(&objs, "Certificate", "gocred-serving");
    assert_eq!(serving["apiVersion"], "cert-manager.io/v1");
    assert_eq!(serving["spec"]["secretName"], "gocred-tls");
    assert_eq!(serving["spec"]["issuerRef"]["name"], "gocred-ca");
    assert!(serving["spec"]["renewBefore"].as_str().is_some_and(|s| !s.is_empty()));
    let dns = serving["spec"]["dnsNames"].as_array().unwrap();
    assert!(dns.contains(&"gocred.gocred-system.svc".into()), "{dns:?}");
    let tls_vol = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "tls").unwrap();
    assert_eq!(tls_vol["secret"]["secretName"], "gocred-tls");

    // The config the broker will read is one `gocred serve --check` accepts.
    let dir = tempfile::tempdir().unwrap();
    let toml_text = check_rendered_config(&objs, "gocred", dir.path());
    // The webhook's issuer, added by the chart, trusting the mounted kube-root-ca.crt.
    let parsed: toml::Table = toml_text.parse().unwrap();
    let issuers = parsed["oidc"]["issuers"].as_array().unwrap();
    assert_eq!(issuers.len(), 1, "{toml_text}");
    let want: toml::Table = "name = \"cluster\"\nissuer = \"https://kubernetes.default.svc.cluster.local\"\n\
                             kind = \"kubernetes\"\naudiences = [\"gocred\"]\nca_cert = \"/etc/gocred/kube-root-ca/ca.crt\"\n"
        .parse()
        .unwrap();
    assert_eq!(issuers[0].as_table().unwrap(), &want);
    // The public proxy fronted by default (so the webhook's GOPROXY ends in `,off`), and a
    // disk-backed store for the modules built from git.
    let ups = parsed["upstreams"].as_array().unwrap();
    let public: Vec<_> = ups.iter().filter(|u| u.get("public").and_then(|p| p.as_bool()) == Some(true)).collect();
    assert_eq!(public.len(), 1, "{toml_text}");
    assert_eq!(
        (public[0]["name"].as_str(), public[0]["url"].as_str()),
        (Some("public"), Some("https://proxy.golang.org"))
    );
    assert_eq!(parsed["store"]["dir"].as_str(), Some("/var/lib/gocred/store"));
    let store = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "store").unwrap();
    assert_eq!(store["emptyDir"]["sizeLimit"], "10Gi");
    assert!(store["emptyDir"].get("medium").is_none(), "on disk, not in memory: {store}");
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "store").unwrap();
    assert_eq!(mount["mountPath"], "/var/lib/gocred/store");
    let kube_ca = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "kube-root-ca").unwrap();
    assert_eq!(kube_ca["configMap"]["name"], "kube-root-ca.crt");
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "kube-root-ca").unwrap();
    assert_eq!(mount["mountPath"], "/etc/gocred/kube-root-ca");
    for needle in [
        "listen = \"0.0.0.0:8443\"",
        "public_url = \"https://gocred.gocred-system.svc\"",
        "method = \"kubernetes\"",
        "jwt_file = \"/var/run/secrets/gocred/vault/token\"",
        "dir = \"/etc/gocred/policies\"",
    ] {
        assert!(toml_text.contains(needle), "{needle} not in\n{toml_text}");
    }
    // The default policies are the repository's.
    for f in ["gocred.cedar", "gocred.cedarschema"] {
        assert_eq!(
            std::fs::read_to_string(dir.path().join("policies").join(f)).unwrap(),
            std::fs::read_to_string(repo_root().join("policies").join(f)).unwrap(),
            "charts/gocred/files/policies must be a symlink to policies/ ({f} differs)"
        );
    }

    // Every option set: existing TLS Secret + caBundle, jwt auth, all overrides.
    let yaml = helm.template(&["-f", &all_options]);
    let unknown = validate_strict(&yaml, "all-options values");
    assert!(unknown.is_empty(), "{unknown:?}");
    let objs = objects(&yaml);
    assert!(kinds(&objs).contains(&"ClusterRoleBinding/gocred-broker-vault-token-reviewer".to_string()));
    let crb = find(&objs, "ClusterRoleBinding", "gocred-broker-vault-token-reviewer");
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(crb["subjects"][0]["name"], "openbao");
    let mwc = find(&objs, "MutatingWebhookConfiguration", "gocred-broker");
    assert!(mwc["metadata"]["annotations"].get("cert-manager.io/inject-ca-from").is_none());
    use base64::Engine;
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str().unwrap())
        .unwrap();
    assert!(String::from_utf8(bundle).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    let excluded = mwc["webhooks"][0]["objectSelector"]["matchExpressions"][0]["values"].clone();
    assert_eq!(excluded, serde_json::json!(["gocred", "credbroker"]), "nameOverride is excluded too");
    // The user's selector is kept (matchLabels dropped with null, both expressions), the
    // exclusion appended with the release namespace (`default` here).
    let sel = &mwc["webhooks"][0]["namespaceSelector"];
    assert!(sel.get("matchLabels").is_none(), "{sel}");
    let exprs = sel["matchExpressions"].as_array().unwrap();
    assert_eq!(exprs.len(), 3, "{sel}");
    assert_eq!(exprs[0]["key"], "gocred.dev/inject");
    assert_eq!(exprs[1]["values"], serde_json::json!(["kube-system"]));
    assert_eq!(
        excluded_namespaces(&mwc["webhooks"][0]),
        ["kube-system", "kube-node-lease", "kube-public", "gocred-system"]
    );
    let d = find(&objs, "Deployment", "gocred-broker");
    assert_eq!(d["spec"]["replicas"], 3);
    assert!(d["spec"]["template"]["spec"]["containers"][0]["image"].as_str().unwrap().contains("@sha256:"));
    let toml_text = check_rendered_config(&objs, "gocred-broker", &dir.path().join("all"));
    assert!(toml_text.contains("method = \"jwt\"") && toml_text.contains("[[oidc.issuers]]"), "{toml_text}");

    // NOTES.txt renders (an offline client-side dry run), and warns about the missing issuer.
    let notes = run_ok(&mut helm.cmd(&["install", "gocred", &chart, "-n", "gocred-system", "--dry-run=client"]));
    assert!(
        notes.contains("rollout status deploy/gocred")
            && notes.contains("kind = \"kubernetes\"")
            && notes.contains("kubectl get --raw /.well-known/openid-configuration"),
        "{notes}"
    );
    let notes = run_ok(&mut helm.cmd(&["install", "x", &chart, "--dry-run=client", "-f", &all_options]));
    assert!(notes.contains("tls.caBundle") && !notes.contains("WARNING"), "{notes}");

    // Other branches: AppRole from a Secret, an existing ClusterIssuer, no webhook, one replica.
    for (i, set) in
        [
            &[
                "--set",
                "vault.auth.method=approle",
                "--set",
                "vault.auth.approle.roleId=gocred",
                "--set",
                "vault.auth.approle.secretIdSecret.name=gocred-approle",
            ][..],
            &[
                "--set",
                "tls.certManager.issuerRef.kind=ClusterIssuer",
                "--set",
                "tls.certManager.issuerRef.name=corp-ca",
            ][..],
            &["--set", "webhook.enabled=false", "--set", "replicaCount=1", "--set", "antiAffinity=hard"][..],
            &["--set", "publicProxy=", "--set", "store.existingClaim=gocred-store"][..],
        ]
        .into_iter()
        .enumerate()
    {
        let mut args = vec!["lint", "--strict", chart.as_str()];
        args.extend_from_slice(set);
        run_ok(&mut helm.cmd(&args));
        let yaml = helm.template(set);
        validate_strict(&yaml, &format!("{set:?}"));
        let objs = objects(&yaml);
        let sub = dir.path().join(format!("variant-{i}"));
        check_rendered_config(&objs, "gocred", &sub);
        if set.contains(&"publicProxy=") {
            let toml_text = find(&objs, "ConfigMap", "gocred")["data"]["gocred.toml"].as_str().unwrap();
            assert!(!toml_text.contains("public = true"), "no public upstream:\n{toml_text}");
            let vols = &find(&objs, "Deployment", "gocred")["spec"]["template"]["spec"]["volumes"];
            let store = vols.as_array().unwrap().iter().find(|v| v["name"] == "store").unwrap();
            assert_eq!(store["persistentVolumeClaim"]["claimName"], "gocred-store", "{store}");
        }
        if set.contains(&"webhook.enabled=false") {
            let toml_text = find(&objs, "ConfigMap", "gocred")["data"]["gocred.toml"].as_str().unwrap();
            assert!(!toml_text.contains("[[oidc.issuers]]"), "no issuer added without the webhook:\n{toml_text}");
            let vols = find(&objs, "Deployment", "gocred")["spec"]["template"]["spec"]["volumes"].to_string();
            assert!(!vols.contains("kube-root-ca"), "{vols}");
            let k = kinds(&objs);
            assert!(
                !k.iter()
                    .any(|k| k.starts_with("MutatingWebhookConfiguration") || k.starts_with("PodDisruptionBudget")),
                "{k:?}"
            );
        }
    }
}

#[test]
fn chart_values_schema_rejects_wrong_types_and_unknown_keys() {
    let helm = Helm::new();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "replicaCount: \"two\"\n").unwrap();
    let err = helm.template_err(&["-f", bad.to_str().unwrap()]);
    assert!(err.contains("replicaCount") && err.contains("schema"), "{err}");
    let cases: [(&str, &str); 6] = [
        ("replicaCount=two", "replicaCount"),
        ("replicas=2", "replicas"),
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("vault.auth.method=ldap", "method"),
        ("config.tokens.lifetime=1h", "lifetime"),
        ("webhook.timeoutSeconds=60", "timeoutSeconds"),
    ];
    for (set, key) in cases {
        let err = helm.template_err(&["--set", set]);
        assert!(err.contains(key), "--set {set}: {err}");
    }
    // Combinations the schema cannot express fail with a message saying what to set.
    let err = helm.template_err(&["--set", "tls.certManager.enabled=false"]);
    assert!(err.contains("tls.existingSecret"), "{err}");
}

#[test]
fn k8s_examples_validate_and_their_values_render_a_valid_config() {
    let ex = repo_root().join("examples/k8s");
    let job = std::fs::read_to_string(ex.join("build-job.yaml")).unwrap();
    let unknown = validate_strict(&job, "examples/k8s/build-job.yaml");
    assert!(unknown.is_empty(), "{unknown:?}");
    let objs = objects(&job);
    let ns = objs.iter().find(|o| o["kind"] == "Namespace").expect("a Namespace");
    assert_eq!(ns["metadata"]["labels"]["gocred.dev/inject"], "enabled");
    let job = objs.iter().find(|o| o["kind"] == "Job").expect("a Job");
    let meta = &job["spec"]["template"]["metadata"];
    assert_eq!(meta["annotations"]["gocred.dev/inject"], "true");
    assert_eq!(meta["annotations"]["gocred.dev/modules"], "git.corp.example/*");
    let script = job["spec"]["template"]["spec"]["containers"][0].to_string();
    assert!(script.contains("go mod download") && script.contains("go build ./..."), "{script}");

    let helm = Helm::new();
    let values = ex.join("values.yaml").display().to_string();
    run_ok(&mut helm.cmd(&["lint", "--strict", &chart_dir().display().to_string(), "-f", &values]));
    let yaml = helm.template(&["-f", &values]);
    validate_strict(&yaml, "examples/k8s/values.yaml");
    let objs = objects(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let toml_text = check_rendered_config(&objs, "gocred", dir.path());
    assert!(toml_text.contains("kind = \"kubernetes\""), "{toml_text}");
}

#[test]
fn chart_webhook_admission_guards_hold_whatever_the_values() {
    let helm = Helm::new();
    let dir = tempfile::tempdir().unwrap();
    let webhook = |yaml: &str| {
        let objs = objects(yaml);
        find(&objs, "MutatingWebhookConfiguration", "gocred")["webhooks"][0].clone()
    };
    let control_plane = ["kube-system", "kube-node-lease", "kube-public"];

    // An empty namespaceSelector (merged with the default: its matchLabels stay), and one whose
    // matchLabels are removed (every namespace): the exclusion is there either way.
    let empty = dir.path().join("empty.yaml");
    std::fs::write(&empty, "webhook:\n  namespaceSelector: {}\n").unwrap();
    let all = dir.path().join("all.yaml");
    std::fs::write(&all, "webhook:\n  namespaceSelector:\n    matchLabels: null\n").unwrap();
    for (values, ns) in [(&empty, "builds"), (&all, "gocred-system"), (&all, "kube-system")] {
        let yaml = helm.template(&["-f", values.to_str().unwrap(), "--namespace", ns]);
        let w = webhook(&yaml);
        let excluded = excluded_namespaces(&w);
        let mut want: Vec<String> = control_plane.iter().map(|s| s.to_string()).collect();
        if !want.contains(&ns.to_string()) {
            want.push(ns.to_string());
        }
        assert_eq!(excluded, want, "{values:?} in {ns}: {}", w["namespaceSelector"]);
        if values == &all {
            assert!(w["namespaceSelector"].get("matchLabels").is_none(), "{}", w["namespaceSelector"]);
            validate_strict(&yaml, "namespaceSelector.matchLabels: null");
        }
    }

    // matchConditions only for API servers that have them (beta 1.28, GA 1.30).
    let w = webhook(&helm.template(&["--kube-version", "1.27.0"]));
    assert!(w.get("matchConditions").is_none(), "{w}");
    let w = webhook(&helm.template(&["--kube-version", "v1.28.3-eks-1234"]));
    assert_eq!(w["matchConditions"][0]["name"], "gocred-inject-annotated");

    // The issuer: overridable, and a user's own kubernetes issuer replaces it — but must accept
    // the token audience, or the render says what to fix.
    let yaml = helm.template(&[
        "--set",
        "webhook.kubernetesIssuer.issuer=https://oidc.eks.eu-west-1.amazonaws.com/id/ABC",
        "--set",
        "webhook.kubernetesIssuer.caConfigMap=",
        "--set",
        "webhook.inject.tokenAudience=gocred-broker",
    ]);
    validate_strict(&yaml, "webhook.kubernetesIssuer overrides");
    let objs = objects(&yaml);
    let toml_text = check_rendered_config(&objs, "gocred", &dir.path().join("eks"));
    assert!(
        toml_text.contains("issuer = \"https://oidc.eks.eu-west-1.amazonaws.com/id/ABC\"")
            && toml_text.contains("audiences = [\"gocred-broker\"]")
            && !toml_text.contains("ca_cert"),
        "{toml_text}"
    );
    let vols = find(&objs, "Deployment", "gocred")["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(!vols.contains("kube-root-ca"), "caConfigMap \"\" mounts nothing: {vols}");

    let own = r#"config.oidc.issuers=[{"name":"cluster","kind":"kubernetes","issuer":"https://k8s.corp.example","audiences":["gocred"]}]"#;
    let objs = objects(&helm.template(&["--set-json", own]));
    let toml_text = check_rendered_config(&objs, "gocred", &dir.path().join("own"));
    assert_eq!(toml_text.matches("[[oidc.issuers]]").count(), 1, "{toml_text}");
    assert!(toml_text.contains("issuer = \"https://k8s.corp.example\""), "{toml_text}");

    let wrong = r#"config.oidc.issuers=[{"name":"cluster","kind":"kubernetes","issuer":"https://k8s.corp.example","audiences":["vault"]}]"#;
    let err = helm.template_err(&["--set-json", wrong]);
    assert!(err.contains("webhook.inject.tokenAudience") && err.contains("\"gocred\""), "{err}");

    // The init container's memory limit holds the helper binary (memory-backed volume).
    let small = dir.path().join("small.yaml");
    std::fs::write(&small, "webhook:\n  inject:\n    initResources: \"cpu=50m,memory=32Mi\"\n").unwrap();
    let err = helm.template_err(&["-f", small.to_str().unwrap()]);
    assert!(err.contains("initResources") && err.contains("64Mi"), "{err}");
}
