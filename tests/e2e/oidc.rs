//! OIDC: RFC 8693 exchange of workload tokens (OpenBao's identity issuer standing in for
//! Kubernetes and CI issuers), every refusal with its specific message, SSO logins against the
//! real oidc-provider (device code and PKCE with scripted approval), and ambient workload
//! credentials used by the helpers and `gocred agent` with no login step.

use crate::harness::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A goproxy upstream: `python3 -m http.server` over a directory of `@v/list` files; its
/// stderr has one line per request.
fn module_upstream(dir: &Path, modules: &[&str]) -> (Proc, u16) {
    for m in modules {
        let d = dir.join(m).join("@v");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("list"), "v1.0.0\n").unwrap();
    }
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args(["-u", "-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"]).arg(dir);
    let mut p = Proc::spawn("upstream", cmd);
    p.wait_stdout("Serving HTTP", Duration::from_secs(10));
    (p, port)
}

fn upstream_requests(p: &Proc) -> usize {
    p.stderr().iter().filter(|l| l.contains("\"GET ")).count()
}

struct Oidc {
    broker: SshBroker,
    k8s: BaoIssuer,
    ci: BaoIssuer,
    crafted: TestIssuer,
    human: TestIssuer,
    upstream: Proc,
    key: std::path::PathBuf,
}

/// A broker trusting: OpenBao #1 as the Kubernetes issuer, OpenBao #2 as a GitHub-style CI
/// issuer, a crafted CI issuer and a crafted human issuer; a goproxy upstream for decisions.
async fn setup(extra_issuers: &str, tokens: &str) -> Oidc {
    let k8s = BaoIssuer::start().await;
    let ci = BaoIssuer::start().await;
    let crafted = TestIssuer::start().await;
    let human = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (upstream, port) = module_upstream(
        &dir.path().join("upstream"),
        &["git.corp.example/acme/lib", "git.corp.example/other/x", "git.corp.example/platform/log"],
    );
    // `extra_issuers` first: the first human issuer is the one `gocred login` uses.
    let extra = format!(
        "{extra_issuers}\
         [[oidc.issuers]]\nname = \"cluster\"\nissuer = \"{}\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\nleeway = \"0s\"\n\
         [[oidc.issuers]]\nname = \"github\"\nissuer = \"{}\"\nkind = \"ci\"\naudiences = [\"gocred\"]\nleeway = \"0s\"\n\
         [[oidc.issuers]]\nname = \"crafted\"\nissuer = \"{}\"\nkind = \"ci\"\naudiences = [\"gocred\"]\nleeway = \"0s\"\n\
         [[oidc.issuers]]\nname = \"corp-sso\"\nissuer = \"{}\"\nkind = \"human\"\naudiences = [\"gocred\"]\nclient_id = \"gocred\"\nleeway = \"0s\"\n\
         [[upstreams]]\nname = \"modules\"\nkind = \"goproxy\"\nmodules = [\"git.corp.example\"]\nurl = \"http://127.0.0.1:{port}\"\n",
        k8s.issuer(),
        ci.issuer(),
        crafted.url,
        human.url,
    );
    let broker = SshBroker::start_in(dir, tokens, &extra);
    let key = broker.path("workload");
    ssh_keygen(&key, "ed25519", "");
    Oidc { broker, k8s, ci, crafted, human, upstream, key }
}

impl Oidc {
    /// GET `path` with the token and a proof by `key`.
    async fn get(&self, token: &str, key: &Path, path: &str) -> (u16, serde_json::Value) {
        let proof = self.broker.proof(token, key, &format!("{}/", self.broker.g.url), now() + 300);
        self.broker.get_with(path, &[("authorization", format!("Bearer {token}")), ("gocred-proof", proof)]).await
    }

    /// Exchange `subject` (bound to the test key); panics unless it succeeds.
    async fn exchange_ok(&self, subject: &str) -> serde_json::Value {
        let (st, body) = exchange(&self.broker.g.url, subject, &self.key).await;
        assert_eq!(st, 200, "exchange: {body}");
        body
    }

    async fn download(&self, token: &str, module: &str) -> (u16, serde_json::Value) {
        self.get(token, &self.key, &format!("/mod/{module}/@v/list")).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn workload_tokens_become_principals_that_the_shipped_policies_judge() {
    let w = setup("", "").await;
    let k8s_claims =
        |ns: &str| serde_json::json!({"kubernetes.io": {"namespace": ns, "serviceaccount": {"name": "builder"}}});
    w.k8s.role("builds", "gocred", "10m", k8s_claims("builds")).await;
    w.k8s.role("sandbox", "gocred", "10m", k8s_claims("sandbox")).await;
    let gh = |r: &str| serde_json::json!({"repository": "acme/api", "repository_owner": "acme", "ref": r, "event_name": "push"});
    w.ci.role("main", "gocred", "10m", gh("refs/heads/main")).await;
    w.ci.role("feature", "gocred", "10m", gh("refs/heads/feature")).await;

    // A Kubernetes-style token: namespace and service account become principal attributes.
    let t = w.exchange_ok(&w.k8s.token("builds").await).await;
    let token = t["access_token"].as_str().unwrap();
    assert_eq!(t["key_fingerprint"].as_str().unwrap(), ssh_fingerprint(&w.broker.path("workload.pub")));
    let (st, me) = w.get(token, &w.key, "/v1/whoami").await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["kind"], "workload");
    assert_eq!(me["auth_method"], "oidc");
    assert_eq!(me["attrs"]["namespace"], "builds");
    assert_eq!(me["attrs"]["service_account"], "builder");
    assert_eq!(me["attrs"]["kind"], "kubernetes");
    assert_eq!(me["attrs"]["issuer"], "cluster");
    // The shipped policy `k8s-builds-download-corp` lets the builds namespace download.
    let (st, body) = w.download(token, "git.corp.example/acme/lib").await;
    assert_eq!((st, body.as_str()), (200, Some("v1.0.0\n")), "{body}");
    assert_eq!(upstream_requests(&w.upstream), 1);
    // ... and nobody else: a token proving namespace `sandbox` is denied, upstream untouched.
    let t = w.exchange_ok(&w.k8s.token("sandbox").await).await;
    let (st, body) = w.download(t["access_token"].as_str().unwrap(), "git.corp.example/acme/lib").await;
    assert_eq!(st, 403, "{body}");
    assert!(body.to_string().contains("no policy permits download of git.corp.example/acme/lib"), "{body}");
    assert_eq!(upstream_requests(&w.upstream), 1);

    // GitHub-Actions-style claims: only `main` of acme/api reaches the platform modules.
    let main = w.exchange_ok(&w.ci.token("main").await).await;
    let main = main["access_token"].as_str().unwrap();
    assert_eq!(w.download(main, "git.corp.example/platform/log").await.0, 200);
    assert_eq!(w.download(main, "git.corp.example/acme/lib").await.0, 200, "own org, default branch");
    let (st, body) = w.download(main, "git.corp.example/other/x").await;
    assert_eq!(st, 403, "{body}");
    let feature = w.exchange_ok(&w.ci.token("feature").await).await;
    let feature = feature["access_token"].as_str().unwrap();
    let (st, body) = w.download(feature, "git.corp.example/platform/log").await;
    assert_eq!(st, 403, "a feature branch is denied: {body}");
    // Two lists fetched (acme/lib's second one comes from the broker's list cache).
    assert_eq!(upstream_requests(&w.upstream), 2, "denied downloads never reach the upstream");

    // OpenBao reserves `sub`; the crafted issuer shows the exact GitHub subject form.
    let sub = "repo:acme/api:ref:refs/heads/main";
    let t = w
        .exchange_ok(&w.crafted.token(serde_json::json!({"sub": sub, "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"})))
        .await;
    assert_eq!(t["principal"], format!("workload:{sub}"));
    let (st, _) = w.download(t["access_token"].as_str().unwrap(), "git.corp.example/platform/log").await;
    assert_eq!(st, 403, "the same claims from an issuer the policies do not name download nothing");
    // pull_request_target runs a fork's code with the base branch's ref: denied.
    w.ci.role(
        "prt",
        "gocred",
        "10m",
        serde_json::json!({"repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "pull_request_target"}),
    )
    .await;
    let prt = w.exchange_ok(&w.ci.token("prt").await).await;
    assert_eq!(w.download(prt["access_token"].as_str().unwrap(), "git.corp.example/platform/log").await.0, 403);

    // The exchanged token is key-bound like any other: no proof, or a proof by another key, is 401.
    let other = w.broker.path("other");
    ssh_keygen(&other, "ed25519", "");
    let (st, _) = w.broker.get_with("/v1/whoami", &[("authorization", format!("Bearer {main}"))]).await;
    assert_eq!(st, 401);
    let (st, body) = w.get(main, &other, "/v1/whoami").await;
    assert_eq!(st, 401, "{body}");
    // Audit lines never carry the subject token.
    let audit = std::fs::read_to_string(w.broker.path("audit.log")).unwrap();
    assert!(audit.contains("subject token from issuer `cluster` verified"), "{audit}");
    assert!(!audit.contains("eyJ"), "no JWT in the audit log");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_refused_exchange_says_which_check_failed() {
    let w = setup("", "").await;
    let url = w.broker.g.url.clone();
    let claims_k8s =
        serde_json::json!({"kubernetes.io": {"namespace": "builds", "serviceaccount": {"name": "builder"}}});
    w.k8s.role("wrong-aud", "someone-else", "10m", claims_k8s.clone()).await;
    w.k8s
        .role("no-ns", "gocred", "10m", serde_json::json!({"kubernetes.io": {"serviceaccount": {"name": "builder"}}}))
        .await;
    w.k8s.role("ok", "gocred", "10m", claims_k8s).await;
    let ci = serde_json::json!({"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"});

    let check = |st: u16, body: &serde_json::Value, want_status: u16, want: &str| {
        assert_eq!(st, want_status, "{body}");
        let msg = body["message"].as_str().unwrap_or_default();
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
        assert!(!msg.contains("eyJ"), "no token in the message: {msg}");
    };

    // Wrong audience (real OpenBao token for client id `someone-else`).
    let (st, b) = exchange(&url, &w.k8s.token("wrong-aud").await, &w.key).await;
    check(st, &b, 401, "audience [\"someone-else\"] does not include an audience accepted for issuer `cluster`");
    // Unknown issuer.
    let stranger = TestIssuer::start().await;
    let (st, b) = exchange(&url, &stranger.token(ci.clone()), &w.key).await;
    check(st, &b, 401, &format!("issuer `{}` is not trusted by this broker", stranger.url));
    // Expired.
    let mut c = ci.clone();
    c["exp"] = serde_json::json!(now() - 20);
    c["iat"] = serde_json::json!(now() - 100);
    let (st, b) = exchange(&url, &w.crafted.token(c), &w.key).await;
    check(st, &b, 401, "subject_token from issuer `crafted` expired");
    // Not yet valid.
    let mut c = ci.clone();
    c["nbf"] = serde_json::json!(now() + 300);
    let (st, b) = exchange(&url, &w.crafted.token(c), &w.key).await;
    check(st, &b, 401, "is not valid yet (`nbf` is");
    // No expiry at all.
    let t = w.crafted.sign_with(
        serde_json::json!({"alg": "EdDSA", "kid": w.crafted.kid}),
        serde_json::json!({"iss": w.crafted.url, "aud": "gocred", "sub": "x", "repository": "a/b", "repository_owner": "a", "ref": "r", "event_name": "push"}),
        None,
    );
    let (st, b) = exchange(&url, &t, &w.key).await;
    check(st, &b, 401, "has no `exp` claim");
    // A mapped claim is missing (real OpenBao token without the namespace).
    let (st, b) = exchange(&url, &w.k8s.token("no-ns").await, &w.key).await;
    check(st, &b, 401, "lacks claim `/kubernetes.io/namespace` (mapped to `namespace`)");
    // Signed by a key the issuer does not publish.
    let rogue = ed25519_dalek::SigningKey::from_bytes(&gocred::random_bytes::<32>());
    let mut c = ci.clone();
    c["iss"] = serde_json::json!(w.crafted.url);
    c["aud"] = serde_json::json!("gocred");
    c["exp"] = serde_json::json!(now() + 600);
    let t = w.crafted.sign_with(serde_json::json!({"alg": "EdDSA", "kid": "rogue-key"}), c.clone(), Some(&rogue));
    let (st, b) = exchange(&url, &t, &w.key).await;
    check(st, &b, 401, "signed by a key that issuer `crafted` does not publish (kid `rogue-key`)");
    // ... or claims the issuer's kid with another key's signature.
    let t = w.crafted.sign_with(serde_json::json!({"alg": "EdDSA", "kid": w.crafted.kid}), c.clone(), Some(&rogue));
    let (st, b) = exchange(&url, &t, &w.key).await;
    check(st, &b, 401, "signature does not verify with issuer `crafted`'s key");
    // A real OpenBao token whose header names an unknown kid.
    let real = w.k8s.token("ok").await;
    let mut parts: Vec<String> = real.split('.').map(str::to_string).collect();
    parts[0] = b64url(br#"{"alg":"RS256","kid":"not-published"}"#);
    let (st, b) = exchange(&url, &parts.join("."), &w.key).await;
    check(st, &b, 401, "does not publish (kid `not-published`)");
    // `alg` tricks: none, HMAC with the public key as secret, and a stripped signature.
    for alg in ["none", "HS256"] {
        parts[0] = b64url(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
        let (st, b) = exchange(&url, &parts.join("."), &w.key).await;
        check(st, &b, 401, &format!("uses alg `{alg}`, which is not accepted"));
    }
    let stripped = format!("{}.", real.rsplit_once('.').unwrap().0);
    let (st, b) = exchange(&url, &stripped, &w.key).await;
    check(st, &b, 401, "subject_token is not a JWT");
    // Policy deny at `login`: the shipped `ban-mallory-login` forbids the SSO user mallory.
    let t = w.human.token(serde_json::json!({"sub": "mallory", "groups": ["developers"]}));
    let (st, b) = exchange(&url, &t, &w.key).await;
    check(st, &b, 403, "ban-sso-mallory-login");
    // An SSO user named like an SSH user is another principal (`corp-sso:alice`) with prefixed
    // groups: nothing granted to SSH `alice` or to the group `developers` applies.
    let t = w.human.token(serde_json::json!({"sub": "alice", "groups": ["developers"]}));
    let (st, b) = exchange(&url, &t, &w.key).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["principal"], "user:corp-sso:alice");
    assert_eq!(b["groups"], serde_json::json!(["corp-sso:developers"]));
    let (st, _) = w.download(b["access_token"].as_str().unwrap(), "git.corp.example/acme/lib").await;
    assert_eq!(st, 403);
    // Access-token-typed JWTs are not identity tokens.
    let t = w.crafted.sign_with(
        serde_json::json!({"alg": "EdDSA", "kid": w.crafted.kid, "typ": "at+jwt"}),
        serde_json::json!({"iss": w.crafted.url, "aud": "gocred", "exp": now() + 600}),
        None,
    );
    let (st, b) = exchange(&url, &t, &w.key).await;
    check(st, &b, 401, "has typ `at+jwt`: not an identity token");
    // Request errors: 400 with the parameter named.
    let (st, b) = exchange(&url, "", &w.key).await;
    check(st, &b, 400, "subject_token is required");
    let r = client(None)
        .post(format!("{url}/v1/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", real.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("public_key is required"));
    // And the good token still works after all that.
    let (st, b) = exchange(&url, &real, &w.key).await;
    assert_eq!(st, 200, "{b}");
    // Every refusal left an audit line; none holds a JWT.
    let audit = std::fs::read_to_string(w.broker.path("audit.log")).unwrap();
    assert!(audit.lines().filter(|l| l.contains("\"decision\":\"deny\"")).count() >= 12, "{audit}");
    assert!(!audit.contains("eyJ"));
}

fn client_env(w: &Oidc, home: &Path) -> Vec<(String, String)> {
    let mut env = w.broker.client_env(home, None);
    env.push(("GOCRED_BROKER".into(), w.broker.g.url.clone()));
    env
}

/// Headers printed by `gocred goauth`: (token, proof).
fn goauth_headers(out: &str) -> (String, String) {
    let token = out.lines().find_map(|l| l.strip_prefix("Authorization: Bearer ")).unwrap().to_string();
    let proof = out.lines().find_map(|l| l.strip_prefix("Gocred-Proof: ")).unwrap().to_string();
    (token, proof)
}

async fn whoami_with(w: &Oidc, token: &str, proof: &str) -> (u16, serde_json::Value) {
    w.broker
        .get_with("/v1/whoami", &[("authorization", format!("Bearer {token}")), ("gocred-proof", proof.to_string())])
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sso_device_and_pkce_logins_then_silent_renewal() {
    let op = OidcProvider::start();
    let issuer = format!(
        "[[oidc.issuers]]\nname = \"sso\"\nissuer = \"{}\"\nkind = \"human\"\naudiences = [\"gocred-cli\"]\nclient_id = \"gocred-cli\"\nleeway = \"0s\"\n",
        op.url
    );
    // 4-second broker tokens: the test watches them expire.
    let w = setup(&issuer, "ttl = \"4s\"").await;
    let meta: serde_json::Value =
        client(None).get(format!("{}/.well-known/gocred", w.broker.g.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["oidc"]["issuer"], op.url);
    assert_eq!(meta["oidc"]["client_id"], "gocred-cli");

    // Device code: the CLI prints the code; a scripted user approves it; a concurrent second
    // login waits on the lock and then reuses the first one's session (one login, not two).
    let home = w.broker.path("home-device");
    let env = client_env(&w, &home);
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let mut login = Gocred::spawn(&["login", "--device"], &e);
    let line = login.wait_stderr("enter the code", Duration::from_secs(20));
    let code = line.split_whitespace().last().unwrap().to_string();
    let mut second = Gocred::spawn(&["login", "--device"], &e);
    let out = Command::new("sh").arg("-c").arg(format!("{} device {code}", op.approve_cmd("alice"))).output().unwrap();
    assert!(
        out.status.success(),
        "approve: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(login.wait_exit(Duration::from_secs(30)), 0, "{:?}", login.stderr());
    assert!(
        login.stdout().iter().any(|l| l.contains("logged in to") && l.contains("as sso:alice")),
        "{:?}",
        login.stdout()
    );
    assert_eq!(second.wait_exit(Duration::from_secs(30)), 0, "{:?}", second.stderr());
    assert!(second.stdout().iter().any(|l| l.contains("already logged in")), "{:?}", second.stdout());
    assert!(!second.stderr().iter().any(|l| l.contains("enter the code")), "the second login opened no new login");
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let (token1, proof) = goauth_headers(&out);
    let (st, me) = whoami_with(&w, &token1, &proof).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["principal"], "user:sso:alice");
    assert_eq!(me["auth_method"], "oidc");
    assert_eq!(me["groups"], serde_json::json!(["sso:developers"]));
    // The session file is private and holds the IdP refresh token for later.
    let session = home.join(".cache/gocred/session.json");
    assert_eq!(std::fs::metadata(&session).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(home.join(".cache/gocred/sso_ed25519")).unwrap().permissions().mode() & 0o777, 0o600);
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&session).unwrap()).unwrap();
    assert!(s["idp"]["refresh_token"].as_str().is_some_and(|t| !t.is_empty()), "no refresh token kept");

    // After the broker token expires, the helpers renew it with the IdP refresh token: no login.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (st, _) = whoami_with(&w, &token1, &proof).await;
    assert_eq!(st, 401, "the first token has expired");
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "renewal without a login: {err}");
    let (token2, proof2) = goauth_headers(&out);
    assert_ne!(token1, token2);
    let (st, me) = whoami_with(&w, &token2, &proof2).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["principal"], "user:sso:alice");
    let (code, out, _) = Gocred::run(&["status"], &e);
    assert_eq!(code, 0, "{out}");

    // PKCE in a "browser" (the scripted user), with the first loopback port taken: the next is used.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let home = w.broker.path("home-pkce");
    let env = client_env(&w, &home);
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let browser = format!("{} browser", op.approve_cmd("bob"));
    let (code, out, err) =
        Gocred::run(&["login", "--oidc", "--port", &port.to_string(), "--browser-command", &browser], &e);
    assert_eq!(code, 0, "pkce login: {out}{err}");
    assert!(err.contains(&format!("redirect_uri=http%3A%2F%2F127.0.0.1%3A{}%2Fcallback", port + 1)), "{err}");
    assert!(err.contains("code_challenge_method=S256"), "{err}");
    assert!(out.contains("as sso:bob"), "{out}");
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let (token, proof) = goauth_headers(&out);
    let (st, me) = whoami_with(&w, &token, &proof).await;
    assert_eq!((st, me["principal"].as_str()), (200, Some("user:sso:bob")), "{me}");
    drop(taken);

    // Without a browser the URL is printed, and nothing is opened.
    let mut login = Gocred::spawn(&["login", "--oidc", "--no-browser", "--port", &free_port().to_string()], &e);
    let line = login.wait_stderr("open this URL in a browser", Duration::from_secs(20));
    assert!(line.contains("to sign in"), "{line}");
    login.wait_stderr(&format!("{}/auth?", op.url), Duration::from_secs(5));
    login.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn ambient_workload_tokens_need_no_login_and_are_reread() {
    let w = setup("", "ttl = \"3s\"").await;
    let ns = |n: &str| serde_json::json!({"kubernetes.io": {"namespace": n, "serviceaccount": {"name": "builder"}}});
    w.k8s.role("builds", "gocred", "10m", ns("builds")).await;
    w.k8s.role("other", "gocred", "10m", ns("other-ns")).await;

    // A projected-token file: `gocred goauth` exchanges it on first use, without `login`.
    let home = w.broker.path("home-k8s");
    let token_file = w.broker.path("sa-token");
    std::fs::write(&token_file, w.k8s.token("builds").await).unwrap();
    let mut env = client_env(&w, &home);
    env.push(("GOCRED_TOKEN_FILE".into(), token_file.display().to_string()));
    let state = w.broker.path("state-k8s");
    env.push(("GOCRED_STATE_DIR".into(), state.display().to_string()));
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let (token, proof) = goauth_headers(&out);
    let (st, me) = whoami_with(&w, &token, &proof).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["attrs"]["namespace"], "builds");
    assert!(state.join("session.json").exists() && state.join("workload_ed25519").exists());
    // kubelet rotates the file: once the broker token runs out, the next exchange reads it again.
    std::fs::write(&token_file, w.k8s.token("other").await).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let (token, proof) = goauth_headers(&out);
    let (st, me) = whoami_with(&w, &token, &proof).await;
    assert_eq!(st, 200, "{me}");
    assert_eq!(me["attrs"]["namespace"], "other-ns", "the rotated file was re-read");

    // GitLab `id_tokens`: the token in an environment variable; git's credential helper works.
    let gl = w.crafted.token(serde_json::json!({"sub": "project_path:acme/api:ref_type:branch:ref:main", "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"}));
    let mut env = client_env(&w, &w.broker.path("home-gitlab"));
    env.push(("GOCRED_ID_TOKEN".into(), gl));
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let hp = w.broker.g.url.trim_start_matches("http://").to_string();
    let mut child = gocred_cmd(&["credential", "get"], &e)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("protocol=http\nhost={hp}\n\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let password = out.lines().find_map(|l| l.strip_prefix("password=")).unwrap_or_else(|| panic!("{out}"));
    let (st, body) = w
        .broker
        .get_with("/v1/whoami", &[("authorization", format!("Basic {}", base64_std(&format!("gocred:{password}"))))])
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["id"], "project_path:acme/api:ref_type:branch:ref:main");

    // GitHub Actions: the runner's token endpoint (audience `gocred`) stands in as a tiny server.
    let gh_token = w.crafted.token(serde_json::json!({"sub": "repo:acme/api:ref:refs/heads/main", "repository": "acme/api", "repository_owner": "acme", "ref": "refs/heads/main", "event_name": "push"}));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gh_url = format!("http://{}/token?api-version=2.0", listener.local_addr().unwrap());
    let served = gh_token.clone();
    let app = axum::Router::new().route(
        "/token",
        axum::routing::get(
            move |q: axum::extract::Query<std::collections::HashMap<String, String>>, h: axum::http::HeaderMap| {
                let served = served.clone();
                async move {
                    let ok = q.get("audience").map(String::as_str) == Some("gocred")
                        && h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer runner-secret");
                    if ok {
                        Ok(axum::Json(serde_json::json!({"value": served})))
                    } else {
                        Err(axum::http::StatusCode::FORBIDDEN)
                    }
                }
            },
        ),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut env = client_env(&w, &w.broker.path("home-gh"));
    env.push(("ACTIONS_ID_TOKEN_REQUEST_URL".into(), gh_url));
    env.push(("ACTIONS_ID_TOKEN_REQUEST_TOKEN".into(), "runner-secret".into()));
    let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (code, out, err) = Gocred::run(&["goauth"], &e);
    assert_eq!(code, 0, "{err}");
    let (token, proof) = goauth_headers(&out);
    let (st, me) = whoami_with(&w, &token, &proof).await;
    assert_eq!((st, me["id"].as_str()), (200, Some("repo:acme/api:ref:refs/heads/main")), "{me}");
    server.abort();

    // `gocred agent --once --out DIR`: a bundle for tools that cannot run a helper.
    let out_dir = w.broker.path("bundle");
    let tf = token_file.display().to_string();
    let (code, _, err) = Gocred::run(
        &["agent", "--once", "--out", out_dir.to_str().unwrap(), "--token-file", &tf, "--broker", &w.broker.g.url],
        &[("GOCRED_STATE_DIR", w.broker.path("state-agent").to_str().unwrap())],
    );
    assert_eq!(code, 0, "{err}");
    for f in ["netrc", "gitconfig", "env"] {
        let m = std::fs::metadata(out_dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    let env_file = std::fs::read_to_string(out_dir.join("env")).unwrap();
    assert!(env_file.contains("GOPRIVATE=git.corp.example"), "{env_file}");
    assert!(env_file.contains(&format!("GOPROXY={}/mod,", w.broker.g.url)), "{env_file}");
    let netrc = std::fs::read_to_string(out_dir.join("netrc")).unwrap();
    let password = netrc.split_whitespace().skip_while(|t| *t != "password").nth(1).unwrap();
    let (st, body) = w
        .broker
        .get_with(
            "/mod/git.corp.example/acme/lib/@v/list",
            &[("authorization", format!("Basic {}", base64_std(&format!("gocred:{password}"))))],
        )
        .await;
    assert_eq!(st, 403, "namespace other-ns may not download: {body}");
    // Without any workload token configured, the agent says what is missing.
    let (code, _, err) = Gocred::run(&["agent", "--once", "--broker", &w.broker.g.url], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no workload token"), "{err}");
}

fn base64_std(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// oidc-provider never answers `slow_down`, so the RFC 8628 polling rules are checked against a
/// minimal provider in this process: `authorization_pending`, then `slow_down` (the interval must
/// grow by 5 s), then tokens; and a code that expires unapproved.
#[tokio::test(flavor = "multi_thread")]
async fn device_flow_honours_slow_down_and_gives_up_at_expiry() {
    use std::sync::{Arc, Mutex};
    let polls: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let doc = serde_json::json!({
        "issuer": url, "token_endpoint": format!("{url}/token"),
        "device_authorization_endpoint": format!("{url}/device/auth"), "jwks_uri": format!("{url}/jwks"),
    });
    let p = polls.clone();
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", axum::routing::get(move || async move { axum::Json(doc) }))
        .route(
            "/device/auth",
            axum::routing::post(|body: String| async move {
                let expires = if body.contains("scope=short") { 3 } else { 60 };
                axum::Json(serde_json::json!({"device_code": "dc", "user_code": "ABCD-EFGH",
                    "verification_uri": "http://127.0.0.1/device", "expires_in": expires, "interval": 1}))
            }),
        )
        .route(
            "/token",
            axum::routing::post(move || {
                let p = p.clone();
                async move {
                    let n = {
                        let mut v = p.lock().unwrap();
                        v.push(std::time::Instant::now());
                        v.len()
                    };
                    let err = |e: &str| {
                        (axum::http::StatusCode::BAD_REQUEST, axum::Json(serde_json::json!({"error": e})))
                            .into_response()
                    };
                    use axum::response::IntoResponse;
                    match n {
                        1 => err("authorization_pending"),
                        2 => err("slow_down"),
                        3 => axum::Json(serde_json::json!({"id_token": "x.y.z", "refresh_token": "r"})).into_response(),
                        _ => err("authorization_pending"),
                    }
                }
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let provider = gocred::client::oidc::Provider::discover(&url, "cli", vec!["openid".into()], None).await.unwrap();
    let d = provider.device_start().await.unwrap();
    let mut slowed = Vec::new();
    let t = provider.device_poll(&d, |i| slowed.push(i)).await.unwrap();
    assert_eq!(t.id_token, "x.y.z");
    assert_eq!(slowed, vec![6], "slow_down adds 5 s to the 1 s interval");
    let v = polls.lock().unwrap().clone();
    assert_eq!(v.len(), 3);
    assert!(v[1] - v[0] >= Duration::from_millis(950), "{:?}", v[1] - v[0]);
    assert!(v[2] - v[1] >= Duration::from_millis(5900), "after slow_down: {:?}", v[2] - v[1]);

    // A code nobody approves: the client stops at its expiry with a clear message.
    let short = gocred::client::oidc::Provider::discover(&url, "cli", vec!["short".into()], None).await.unwrap();
    let d = short.device_start().await.unwrap();
    let started = std::time::Instant::now();
    let e = short.device_poll(&d, |_| {}).await.err().expect("expires");
    assert!(e.to_string().contains("expired"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    server.abort();
}
