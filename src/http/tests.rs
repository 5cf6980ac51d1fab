//! Route tests through `app(state).oneshot(...)`: every route's status and error body, without
//! a socket (the e2e suite covers the same routes over real sockets with real peers).

use super::{AppState, app};
use crate::proto::error::ErrorBody;
use crate::proto::login::{Challenge, Whoami};
use crate::proto::meta::Metadata;
use crate::proto::token::TokenResponse;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use ssh_key::{HashAlg, PrivateKey};
use tower::ServiceExt;

const ORIGIN: &str = "http://127.0.0.1:1";

struct World {
    _dir: tempfile::TempDir,
    state: AppState,
}

fn key(seed: u8) -> PrivateKey {
    let pair = ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]);
    PrivateKey::new(ssh_key::private::KeypairData::Ed25519(pair), "test").expect("key")
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("authorized_keys");
    std::fs::create_dir_all(&keys).expect("keys dir");
    for (user, seed) in [("alice", 1), ("bob", 2), ("root", 3)] {
        let public = key(seed).public_key().to_openssh().expect("openssh");
        std::fs::write(keys.join(user), format!("{public}\n")).expect("write key");
    }
    use base64::Engine;
    let secret = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    crate::fsutil::write_private_atomic(&dir.path().join("secrets.key"), secret.as_bytes()).expect("key file");
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{ORIGIN}\"\n\
         [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\nkey_file = \"secrets.key\"\n\
         [ssh]\nauthorized_keys = \"authorized_keys\"\n[ssh.groups]\nalice = [\"developers\"]\nroot = [\"gocred-admins\"]\n\
         [policy]\ndir = \"{policies}\"\n[audit]\npath = \"audit.log\"\n"
    );
    let path = dir.path().join("broker.toml");
    std::fs::write(&path, &toml).expect("config");
    let config = crate::config::Config::load(&path, std::iter::empty(), &Default::default()).expect("config");
    let state = crate::service::Broker::start(config, ORIGIN.into()).await.expect("broker starts");
    World { _dir: dir, state }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    /// The JSON error body, checked against the request id header.
    fn error(&self) -> ErrorBody {
        let e: ErrorBody = self.json();
        assert_eq!(Some(e.request_id.as_str()), self.headers.get("x-request-id").and_then(|v| v.to_str().ok()));
        e
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn call(w: &World, req: Request<Body>) -> Answer {
    let resp = app(w.state.clone()).oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.expect("body").to_vec();
    Answer { status, headers, body }
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn post_json(path: &str, json: serde_json::Value) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(json.to_string())).expect("r")
}

fn proof(k: &PrivateKey, token: &str) -> String {
    let exp = crate::unix_now() + 300;
    let prefix = format!("{ORIGIN}/");
    let msg = crate::proto::proof::proof_message(token, &prefix, exp);
    let sig = k.sign(crate::proto::proof::PROOF_NAMESPACE, HashAlg::Sha512, msg.as_bytes()).expect("sign");
    crate::proto::proof::encode(exp, &prefix, &crate::proto::proof::signature_b64url(&sig).expect("b64"))
}

fn authed(mut req: Request<Body>, token: &str, proof: Option<&str>) -> Request<Body> {
    let h = req.headers_mut();
    h.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    if let Some(p) = proof {
        h.insert(crate::proto::proof::PROOF_HEADER, p.parse().expect("header"));
    }
    req
}

async fn login(w: &World, user: &str, k: &PrivateKey) -> TokenResponse {
    let a = call(w, post_json("/v1/login/ssh/challenge", serde_json::json!({ "user": user }))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let ch: Challenge = a.json();
    assert_eq!(ch.message, crate::proto::login::login_message(&ch.challenge, ORIGIN, user));
    let sig = k.sign(crate::proto::login::LOGIN_NAMESPACE, HashAlg::Sha512, ch.message.as_bytes()).expect("sign");
    let signature = crate::proto::proof::signature_b64url(&sig).expect("b64");
    let body = serde_json::json!({ "user": user, "challenge": ch.challenge, "signature": signature });
    let a = call(w, post_json("/v1/login/ssh", body)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(a.headers.get(header::CACHE_CONTROL).map(|v| v.to_str().unwrap_or("")), Some("no-store"));
    a.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_answer() {
    let w = world().await;
    let a = call(&w, get("/healthz")).await;
    assert_eq!((a.status, a.text()), (StatusCode::OK, r#"{"status":"ok"}"#.into()));
    assert_eq!(call(&w, get("/readyz")).await.status, StatusCode::OK);
    let a = call(&w, get("/metrics")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.text().contains("gocred_ready 1"), "{}", a.text());
    let a = call(&w, get("/.well-known/jwks.json")).await;
    assert_eq!(a.headers.get(header::CONTENT_TYPE).map(|v| v.to_str().unwrap_or("")), Some("application/jwk-set+json"));
    let meta: Metadata = call(&w, get("/.well-known/gocred")).await.json();
    assert_eq!(meta.origin, ORIGIN);
    assert_eq!(meta.proof.namespace, "gocred-proof@v1");
    assert_eq!(meta.token_endpoint, format!("{ORIGIN}/v1/token"));
    assert_eq!(meta.login, ["ssh"]);
    assert!(meta.goproxy.is_none() && meta.modules.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_status_each_and_a_json_body_with_the_request_id() {
    let w = world().await;
    let cases: Vec<(Request<Body>, StatusCode, &str, &str)> = vec![
        (get("/nope"), StatusCode::NOT_FOUND, "not_found", "no such route"),
        (
            Request::put("/v1/whoami").body(Body::empty()).expect("r"),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        (
            Request::post("/v1/login/ssh/challenge").body(Body::from("{")).expect("r"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid JSON body",
        ),
        (
            post_json("/v1/login/ssh/challenge", serde_json::json!({"user": "no such\nuser"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "invalid user name",
        ),
        (
            post_json("/v1/token", serde_json::json!({"grant_type": "password"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unsupported grant_type `password`",
        ),
        (
            post_json("/v1/token", serde_json::json!({"grant_type": crate::proto::token::EXCHANGE_GRANT})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "subject_token is required",
        ),
        (
            post_json(
                "/v1/login/ssh",
                serde_json::json!({"user": "alice", "challenge": "forged", "signature": "AAAA"}),
            ),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "",
        ),
        // The webhook is not enabled: not routed.
        (post_json("/v1/admission", serde_json::json!({})), StatusCode::NOT_FOUND, "not_found", "no such route"),
    ];
    for (req, status, code, message) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let a = call(&w, req).await;
        assert_eq!(a.status, status, "{what}: {}", a.text());
        let e = a.error();
        assert_eq!(e.error, code, "{what}");
        assert!(e.message.contains(message), "{what}: {}", e.message);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_refuse_missing_or_bad_credentials() {
    let w = world().await;
    let alice = key(1);
    let t = login(&w, "alice", &alice).await;
    let token = t.access_token.expose().to_string();
    let routes = [
        ("GET", "/v1/whoami", false),
        ("POST", "/v1/revoke", false),
        ("GET", "/v1/credentials?url=https://vend.example/x", false),
        ("GET", "/mod/git.corp.example/acme/lib/@v/list", true),
        ("GET", "/git/git.corp.example/acme/lib/info/refs?service=git-upload-pack", true),
    ];
    for (method, path, plain) in routes {
        let req = || Request::builder().method(method).uri(path).body(Body::empty()).expect("r");
        for (name, r, needle) in [
            ("no credentials", req(), "no credentials"),
            ("token without proof", authed(req(), &token, None), "proof of key possession is required"),
            ("proof by another key", authed(req(), &token, Some(&proof(&key(2), &token))), "proof is signed by key"),
            ("forged token", authed(req(), "e30.e30.c2ln", Some(&proof(&alice, "e30.e30.c2ln"))), "token"),
        ] {
            let a = call(&w, r).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path} {name}: {}", a.text());
            let challenges: Vec<&str> =
                a.headers.get_all(header::WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).collect();
            assert_eq!(challenges, ["Bearer realm=\"gocred\"", "Basic realm=\"gocred\""], "{path}");
            let message = if plain {
                assert!(a.text().starts_with("gocred: "), "{path}: {}", a.text());
                a.text()
            } else {
                a.error().message
            };
            assert!(message.contains(needle), "{method} {path} {name}: {message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_whoami_refresh_and_revocation_decided_by_policy() {
    let w = world().await;
    let (alice, bob, root) = (key(1), key(2), key(3));
    let ta = login(&w, "alice", &alice).await;
    let tb = login(&w, "bob", &bob).await;
    let tr = login(&w, "root", &root).await;
    let (a_tok, b_tok, r_tok) = (
        ta.access_token.expose().to_string(),
        tb.access_token.expose().to_string(),
        tr.access_token.expose().to_string(),
    );
    assert_eq!(ta.groups, ["developers"]);

    let me = call(&w, authed(get("/v1/whoami"), &a_tok, Some(&proof(&alice, &a_tok)))).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.text());
    let me: Whoami = me.json();
    assert_eq!((me.principal.as_str(), me.auth_method.as_str()), ("user:alice", "ssh"));
    assert_eq!(me.key_fingerprint, ta.key_fingerprint);

    let refresh = Request::post("/v1/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("grant_type={}", crate::proto::token::REFRESH_GRANT)))
        .expect("r");
    let a = call(&w, authed(refresh, &a_tok, Some(&proof(&alice, &a_tok)))).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let refreshed: TokenResponse = a.json();
    assert_eq!(refreshed.session_expires_at, ta.session_expires_at);

    // Another's session: a Cedar `revoke` decision, which names what was denied.
    let revoke_bob = |tok: &str, k: &PrivateKey| {
        authed(post_json("/v1/revoke", serde_json::json!({ "token": b_tok })), tok, Some(&proof(k, tok)))
    };
    let a = call(&w, revoke_bob(&a_tok, &alice)).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.text());
    assert_eq!(a.error().message, "no policy permits revoke of the session of user:bob for user:alice");
    let whoami_bob = || authed(get("/v1/whoami"), &b_tok, Some(&proof(&bob, &b_tok)));
    assert_eq!(call(&w, whoami_bob()).await.status, StatusCode::OK);
    let a = call(&w, revoke_bob(&r_tok, &root)).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    let a = call(&w, whoami_bob()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.error().message, "token revoked");

    // One's own session needs no permit; its refreshed token goes with it.
    let own = authed(post_json("/v1/revoke", serde_json::json!({})), &a_tok, Some(&proof(&alice, &a_tok)));
    assert_eq!(call(&w, own).await.status, StatusCode::OK);
    let new_tok = refreshed.access_token.expose();
    let a = call(&w, authed(get("/v1/whoami"), new_tok, Some(&proof(&alice, new_tok)))).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.text());
}

#[tokio::test]
async fn server_errors_keep_internal_detail_out_of_the_answer() {
    use super::error::ApiError;
    use axum::response::IntoResponse;
    let fetch = crate::auth::oidc::OidcError::FetchKeys {
        issuer: "corp-sso".into(),
        reason: "https://10.1.2.3:8443/.well-known/openid-configuration: connection refused".into(),
    };
    let cred = crate::proxy::ProxyError::Credential {
        upstream: "corp-git".into(),
        reason: "vault https://vault.internal:8200: cannot read `kv/upstreams/corp-git`: 403".into(),
    };
    for (e, shown) in [
        (ApiError::from(fetch), "identity provider `corp-sso`"),
        (ApiError::from(cred), "upstream corp-git: credential unavailable"),
    ] {
        let resp = e.into_response();
        assert!(resp.status().is_server_error());
        let id = super::RequestId("rid".into());
        let resp = super::error::render(resp, &id, false);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains(shown), "{text}");
        assert!(!text.contains("10.1.2.3") && !text.contains("vault.internal"), "internal detail leaked: {text}");
    }
}
