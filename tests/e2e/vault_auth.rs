//! The broker's Vault logins with workload identity: OpenBao's `jwt` and `kubernetes` auth
//! methods, against a real OpenBao. Both read the token from a file at every login, so a rotated
//! file (kubelet rotates projected service-account tokens) is what the next login uses.

use crate::harness::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A broker config using the vault backend at `bao` with `auth` as the `[vault.auth]` body.
fn broker_config(dir: &std::path::Path, bao: &OpenBao, auth: &str) -> String {
    let p = dir.join("broker.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"vault\"\ngrace = \"1s\"\nprobe_every = \"200ms\"\n\
             [vault]\naddress = \"{}\"\ntimeout = \"2s\"\n[vault.auth]\n{auth}\n",
            bao.addr
        ),
    )
    .unwrap();
    p.display().to_string()
}

/// The broker's KV policy (what `setup_approle` grants), without the AppRole.
async fn broker_policy(bao: &OpenBao) {
    let policy = r#"path "secret/data/gocred/*" { capabilities = ["create","read","update"] }
path "secret/metadata/gocred/*" { capabilities = ["read"] }"#;
    bao.api("PUT", "sys/policies/acl/gocred", serde_json::json!({ "policy": policy })).await;
}

/// The value of a counter in the broker's `/metrics`.
async fn counter(g: &Gocred, name: &str) -> u64 {
    let m = g.get(&client(None), "/metrics").await.1;
    m.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Readiness, JWKS and the key set written to OpenBao: the broker is logged in and can read
/// and write its records.
async fn assert_broker_uses_vault(g: &Gocred, bao: &OpenBao) {
    let c = client(None);
    let (st, jwks) = g.get(&c, "/.well-known/jwks.json").await;
    assert_eq!(st, 200, "{jwks}");
    let v: serde_json::Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{jwks}");
    assert_eq!(g.get(&c, "/readyz").await.0, 200);
    let meta = bao.api("GET", "secret/metadata/gocred/signing-keys", serde_json::Value::Null).await;
    assert_eq!(meta["data"]["current_version"], 1, "{meta}");
    bao.api("GET", "secret/data/gocred/challenge-key", serde_json::Value::Null).await;
}

/// An ID token from OpenBao's own OIDC identity provider for role `role`. Root tokens have no
/// entity and cannot get one, so this logs in with the AppRole `issuer` first.
async fn identity_token(bao: &OpenBao, role: &str) -> String {
    let token = bao.approle_login("issuer-role", "issuer-secret").await;
    bao.identity_token(&token, role).await
}

#[tokio::test(flavor = "multi_thread")]
async fn jwt_auth_logs_in_with_an_openbao_identity_token_and_rereads_the_file() {
    let bao = OpenBao::start().await;
    broker_policy(&bao).await;
    // The issuer side: OpenBao's identity OIDC provider signs ID tokens for role `broker`; an
    // AppRole identity (an entity) may fetch them.
    bao.api("POST", "sys/auth/approle", serde_json::json!({"type": "approle"})).await;
    bao.api(
        "PUT",
        "sys/policies/acl/issue",
        serde_json::json!({"policy": "path \"identity/oidc/token/broker\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao.api("POST", "auth/approle/role/issuer", serde_json::json!({"token_policies": ["issue"], "token_ttl": "10m"}))
        .await;
    bao.api("POST", "auth/approle/role/issuer/role-id", serde_json::json!({"role_id": "issuer-role"})).await;
    bao.api("POST", "auth/approle/role/issuer/custom-secret-id", serde_json::json!({"secret_id": "issuer-secret"}))
        .await;
    bao.api(
        "POST",
        "identity/oidc/key/k1",
        serde_json::json!({"allowed_client_ids": ["*"], "rotation_period": "24h", "verification_ttl": "24h", "algorithm": "RS256"}),
    )
    .await;
    bao.api("POST", "identity/oidc/role/broker", serde_json::json!({"key": "k1", "ttl": "1h"})).await;
    let role = bao.api("GET", "identity/oidc/role/broker", serde_json::Value::Null).await;
    let client_id = role["data"]["client_id"].as_str().unwrap().to_string();

    // The verifier side: the JWT auth method trusts that issuer (discovery + JWKS) for tokens
    // whose audience is the role's client id. Batch tokens are not renewable, so the broker
    // logs in again at two thirds of every 3 s TTL, reading the JWT file each time.
    let issuer = format!("{}/v1/identity/oidc", bao.addr);
    bao.api("POST", "sys/auth/jwt", serde_json::json!({"type": "jwt"})).await;
    bao.api("POST", "auth/jwt/config", serde_json::json!({"oidc_discovery_url": issuer, "bound_issuer": issuer})).await;
    bao.api(
        "POST",
        "auth/jwt/role/gocred",
        serde_json::json!({
            "role_type": "jwt", "bound_audiences": [client_id], "user_claim": "sub",
            "token_policies": ["gocred"], "token_ttl": "3s", "token_type": "batch",
        }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("vault-token");
    let first = identity_token(&bao, "broker").await;
    std::fs::write(&jwt_file, format!("{first}\n")).unwrap();
    let cfg = broker_config(
        dir.path(),
        &bao,
        &format!("method = \"jwt\"\nrole = \"gocred\"\njwt_file = \"{}\"", jwt_file.display()),
    );
    let g = Gocred::start(&["serve", "--config", &cfg], &[]);
    assert_broker_uses_vault(&g, &bao).await;
    assert!(
        g.proc.stderr().iter().any(|l| l.contains("logged in to vault") && l.contains("jwt")),
        "{:#?}",
        g.proc.stderr()
    );

    // Re-logins happen and succeed with the file as it is.
    let logins = eventually(Duration::from_secs(10), "a second vault login", || async {
        let n = counter(&g, "gocred_vault_logins_total").await;
        (n >= 1).then_some(n)
    })
    .await;

    // Replace the file with something Vault refuses: the next login fails. Had the broker kept
    // the first JWT (still valid for an hour) in memory, it would have succeeded.
    std::fs::write(&jwt_file, "not-a-jwt\n").unwrap();
    eventually(Duration::from_secs(10), "a failed login with the replaced file", || async {
        g.proc.stderr().iter().any(|l| l.contains("vault login failed")).then_some(())
    })
    .await;
    // A freshly issued token in the file: logins succeed again and the broker is ready.
    let second = identity_token(&bao, "broker").await;
    assert_ne!(first, second);
    std::fs::write(&jwt_file, &second).unwrap();
    let after = counter(&g, "gocred_vault_logins_total").await;
    eventually(Duration::from_secs(15), "a login with the rotated token", || async {
        (counter(&g, "gocred_vault_logins_total").await > after).then_some(())
    })
    .await;
    assert!(after >= logins);
    eventually(Duration::from_secs(10), "ready again", || async {
        (g.get(&client(None), "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let (st, _) = g.get(&client(None), "/.well-known/jwks.json").await;
    assert_eq!(st, 200);

    let logs = g.proc.stderr().join("\n") + &g.proc.stdout().join("\n");
    for secret in [&first, &second] {
        assert!(!logs.contains(secret.as_str()), "a JWT leaked into the broker's output");
        // Not even its signature part.
        assert!(!logs.contains(secret.rsplit('.').next().unwrap()), "a JWT signature leaked");
    }
}

/// What the stand-in API server saw: (Authorization header, TokenReview request body).
type Seen = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A stand-in for the Kubernetes API server's TokenReview endpoint.
///
/// OpenBao's `kubernetes` auth method does not verify service-account tokens itself: it posts
/// them to `<kubernetes_host>/apis/authentication.k8s.io/v1/tokenreviews` and trusts the answer.
/// No kube-apiserver (nor k3s, kind, envtest) can be installed here, so this answers like one
/// would for a valid token of `system:serviceaccount:gocred-system:gocred`, and records every
/// review so the test can check which token the broker presented. Everything else (the broker
/// reading its token file, OpenBao checking the token's claims against the role, issuing a
/// Vault token) is the real thing.
async fn token_review_responder(seen: Seen) -> String {
    use axum::{Json, Router, http::HeaderMap, routing::post};
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |headers: HeaderMap, Json(review): Json<serde_json::Value>| {
            let seen = seen.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let audiences = review["spec"]["audiences"].clone();
                seen.lock().unwrap().push((auth, review));
                (
                    axum::http::StatusCode::CREATED,
                    Json(serde_json::json!({
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "status": {
                            "authenticated": true,
                            "user": {
                                "username": "system:serviceaccount:gocred-system:gocred",
                                "uid": "0b5a3c2e-uid",
                                "groups": ["system:serviceaccounts", "system:serviceaccounts:gocred-system"],
                            },
                            "audiences": if audiences.is_array() { audiences } else { serde_json::json!([]) },
                        },
                    })),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

/// A projected service-account token's shape (audience `vault`). Vault only parses it (the
/// signature is the API server's business, i.e. the responder's); `n` makes each one distinct.
fn sa_token(n: u32) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = now();
    let header = b64(serde_json::json!({"alg": "RS256", "kid": "test", "typ": "JWT"}));
    let claims = b64(serde_json::json!({
        "aud": ["vault"], "exp": now + 3600, "iat": now, "nbf": now, "jti": format!("token-{n}"),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "sub": "system:serviceaccount:gocred-system:gocred",
        "kubernetes.io": {"namespace": "gocred-system", "serviceaccount": {"name": "gocred", "uid": "0b5a3c2e-uid"}},
    }));
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("signature-{n}"));
    format!("{header}.{claims}.{sig}")
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_presents_the_token_file_for_review() {
    let seen: Seen = Arc::default();
    let api_server = token_review_responder(seen.clone()).await;
    let bao = OpenBao::start().await;
    broker_policy(&bao).await;
    bao.api("POST", "sys/auth/kubernetes", serde_json::json!({"type": "kubernetes"})).await;
    // disable_local_ca_jwt: OpenBao does not run in a pod here, so there is no local reviewer
    // token or CA; it then reviews with the client's own token. It still insists on a CA
    // certificate in that mode; over plain http it is never used, so any CA will do.
    let ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let ca_pem = ca.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem();
    bao.api(
        "POST",
        "auth/kubernetes/config",
        serde_json::json!({"kubernetes_host": api_server, "disable_local_ca_jwt": true, "kubernetes_ca_cert": ca_pem}),
    )
    .await;
    bao.api(
        "POST",
        "auth/kubernetes/role/gocred",
        serde_json::json!({
            "bound_service_account_names": ["gocred"], "bound_service_account_namespaces": ["gocred-system"],
            "audience": "vault", "token_policies": ["gocred"], "token_ttl": "3s", "token_type": "batch",
        }),
    )
    .await;

    let dir = tempfile::tempdir().unwrap();
    let jwt_file = dir.path().join("token");
    let first = sa_token(1);
    std::fs::write(&jwt_file, &first).unwrap();
    let cfg = broker_config(
        dir.path(),
        &bao,
        &format!("method = \"kubernetes\"\nrole = \"gocred\"\njwt_file = \"{}\"", jwt_file.display()),
    );
    let g = Gocred::start(&["serve", "--config", &cfg], &[]);
    assert_broker_uses_vault(&g, &bao).await;

    // OpenBao asked the "API server" about exactly the file's content, for audience `vault`.
    {
        let seen = seen.lock().unwrap();
        let (auth, review) = seen.first().expect("no TokenReview reached the responder");
        // (The route only answers POST /apis/authentication.k8s.io/v1/tokenreviews.)
        assert_eq!(review["spec"]["token"], first.as_str());
        assert_eq!(review["spec"]["audiences"], serde_json::json!(["vault"]));
        assert_eq!(auth, &format!("Bearer {first}"), "reviewed with the client's own token");
    }

    // Kubelet rotates the projected token: the next login presents the new one.
    let second = sa_token(2);
    std::fs::write(&jwt_file, &second).unwrap();
    eventually(Duration::from_secs(10), "a TokenReview of the rotated token", || async {
        seen.lock().unwrap().iter().any(|(_, r)| r["spec"]["token"] == second.as_str()).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "a successful re-login", || async {
        (counter(&g, "gocred_vault_logins_total").await >= 1).then_some(())
    })
    .await;
    assert_eq!(g.get(&client(None), "/readyz").await.0, 200);

    let logs = g.proc.stderr().join("\n") + &g.proc.stdout().join("\n");
    for t in [&first, &second] {
        assert!(!logs.contains(t.as_str()), "a service-account token leaked into the broker's output");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_auth_with_a_missing_token_file_fails_with_one_line() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-token");
    let cfg = broker_config(
        dir.path(),
        &bao,
        &format!("method = \"kubernetes\"\nrole = \"gocred\"\njwt_file = \"{}\"", missing.display()),
    );
    let (code, _, err) = Gocred::run(&["serve", "--config", &cfg], &[]);
    assert_eq!(code, 1, "{err}");
    let line = err.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
    assert!(line.contains("kubernetes") && line.contains(&missing.display().to_string()), "{err}");
}
