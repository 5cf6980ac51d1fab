//! SSH login, key-bound tokens with proofs, refresh, revocation, policies at login, audit, and
//! the `gocred login/status/token/logout` client — with real ssh-keygen and ssh-agent.

use crate::harness::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use std::path::Path;
use std::time::Duration;

fn status_of(b: &SshBroker, env: &[(String, String)]) -> String {
    let (code, out, err) = b.cli(&["status"], env);
    assert_eq!(code, 0, "status failed: {out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_key_files_of_every_type_then_status_shows_user_and_key() {
    let b = SshBroker::start();
    for (i, kind) in ["ed25519", "ecdsa:256", "ecdsa:384", "rsa:2048"].iter().enumerate() {
        let key = b.add_user_key("alice", &format!("k{i}"), kind);
        let home = b.path(&format!("home{i}"));
        let env = b.client_env(&home, None);
        let (code, out, err) =
            b.cli(&["login", "--ssh", key.to_str().unwrap(), "--broker", &b.g.url, "--user", "alice"], &env);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        let fp = ssh_fingerprint(Path::new(&format!("{}.pub", key.display())));
        let st = status_of(&b, &env);
        assert!(
            st.contains("user:    alice") && st.contains(&fp) && st.contains(key.to_str().unwrap()),
            "{kind}: {st}"
        );
        assert!(st.contains("developers"), "{st}");
        // The session file is private.
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join(".cache/gocred/session.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Audit: successful login with the key fingerprint.
        b.audit_has("login allow", |l| {
            l["action"] == "login" && l["decision"] == "allow" && l["key_fingerprint"] == fp.as_str()
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_via_ssh_agent_with_every_key_type() {
    let b = SshBroker::start();
    let agent = SshAgent::start();
    let mut fps = Vec::new();
    for (i, kind) in ["ed25519", "ecdsa:256", "ecdsa:384", "rsa:2048"].iter().enumerate() {
        let key = b.add_user_key("alice", &format!("a{i}"), kind);
        agent.add(&key);
        fps.push(ssh_fingerprint(Path::new(&format!("{}.pub", key.display()))));
        // With KEY given, the agent copy is used (no file read needed): remove the private file.
        let home = b.path(&format!("home{i}"));
        let env = b.client_env(&home, Some(&agent.sock));
        let (code, out, err) =
            b.cli(&["login", "--ssh", key.to_str().unwrap(), "--broker", &b.g.url, "--user", "alice"], &env);
        assert_eq!(code, 0, "{kind}: {out}{err}");
        assert!(out.contains("ssh-agent"), "{kind} should have used the agent: {out}");
        let st = status_of(&b, &env);
        assert!(st.contains(&fps[i]) && st.contains("ssh-agent"), "{kind}: {st}");
    }
    // Without KEY: the agent's keys are tried (all authorized here); the first one wins.
    let home = b.path("home-any");
    let env = b.client_env(&home, Some(&agent.sock));
    let (code, out, err) = b.cli(&["login", "--ssh", "--broker", &b.g.url], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(fps.iter().any(|fp| out.contains(fp)), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn login_with_ssh_certificate_from_file_and_agent() {
    let b = SshBroker::start();
    let key = b.path("certuser");
    ssh_keygen(&key, "ed25519", "");
    let key_pub = b.path("certuser.pub");
    ssh_certify(&b.path("ca"), &key_pub, "alice@laptop-42", "alice", "-5m:+1h");
    let fp = ssh_fingerprint(&key_pub);

    // Key file with key-cert.pub beside it (not in authorized_keys: the certificate is the authority).
    let env = b.client_env(&b.path("h1"), None);
    let (code, out, err) = b.cli(&["login", "--ssh", key.to_str().unwrap(), "--broker", &b.g.url], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(status_of(&b, &env).contains(&fp));
    let line = b.audit_has("certificate login", |l| l["auth_method"] == "ssh-cert" && l["decision"] == "allow");
    assert!(line["cert_key_id"].as_str().unwrap().contains("alice@laptop-42"), "{line}");

    // ssh-agent holding key + certificate.
    let agent = SshAgent::start();
    agent.add(&key);
    std::fs::remove_file(&key).unwrap(); // only the agent can sign now
    let env = b.client_env(&b.path("h2"), Some(&agent.sock));
    let (code, out, err) = b.cli(&["login", "--ssh", "--broker", &b.g.url], &env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(status_of(&b, &env).contains(&fp));

    // ssh-keygen -Y sign with the certificate embeds it in the SSHSIG (needs ssh-key 0.7).
    let key2 = b.path("certuser2");
    ssh_keygen(&key2, "ecdsa:256", "");
    ssh_certify(&b.path("ca"), &b.path("certuser2.pub"), "alice-ci", "alice", "-5m:+1h");
    let cert_file = b.path("certuser2-cert.pub");
    let (st, body) = b.api_login("alice", &cert_file).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["key_fingerprint"], ssh_fingerprint(&b.path("certuser2.pub")).as_str());
}

/// Certificates that must be refused: each gets 401, a clear message and an audit line.
#[tokio::test(flavor = "multi_thread")]
async fn bad_certificates_are_refused() {
    let b = SshBroker::start();
    let other_ca = b.path("other-ca");
    ssh_keygen(&other_ca, "ed25519", "");
    let cases = [
        ("expired", "ca", "alice", "-2h:-1h", "expired"),
        ("future", "ca", "alice", "+1h:+2h", "not yet valid"),
        ("wrongprincipal", "ca", "bob", "-5m:+1h", "not valid for user alice"),
        ("untrusted", "other-ca", "alice", "-5m:+1h", "untrusted CA"),
    ];
    for (name, ca, principal, validity, msg) in cases {
        let key = b.path(name);
        ssh_keygen(&key, "ed25519", "");
        ssh_certify(&b.path(ca), &b.path(&format!("{name}.pub")), &format!("id-{name}"), principal, validity);
        let (st, body) = b.api_login("alice", &b.path(&format!("{name}-cert.pub"))).await;
        assert_eq!(st, 401, "{name}: {body}");
        assert!(body["message"].as_str().unwrap().contains(msg), "{name}: {body}");
        b.audit_has(name, |l| {
            l["decision"] == "deny"
                && l["cert_key_id"] == format!("id-{name}").as_str()
                && l["reason"].as_str().unwrap().contains(msg)
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn login_negatives_unknown_key_other_users_key_replay_expiry_namespace_ban() {
    let b = SshBroker::start_with("", "challenge_ttl = \"3s\"");
    let c = client(None);
    let alice = b.add_user_key("alice", "alice", "ed25519");
    let bob = b.add_user_key("bob", "bob", "ed25519");
    let stranger = b.path("stranger");
    ssh_keygen(&stranger, "ed25519", "");

    // Unknown key.
    let (st, body) = b.api_login("alice", &stranger).await;
    assert_eq!(st, 401);
    assert!(body["message"].as_str().unwrap().contains("is not authorized for user alice"), "{body}");
    b.audit_has("unknown key", |l| l["decision"] == "deny" && l["reason"].as_str().unwrap().contains("not authorized"));

    // Another user's key.
    let (st, body) = b.api_login("alice", &bob).await;
    assert_eq!(st, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("not authorized for user alice"));

    // Replayed challenge: the same signed answer twice.
    let ch = b.api_challenge("alice").await;
    let sig = ssh_sign(&alice, "gocred-login@v1", ch["message"].as_str().unwrap());
    let answer = serde_json::json!({"user": "alice", "challenge": ch["challenge"], "signature": sig});
    let r1 = c.post(format!("{}/v1/login/ssh", b.g.url)).json(&answer).send().await.unwrap();
    assert_eq!(r1.status(), 200);
    let r2 = c.post(format!("{}/v1/login/ssh", b.g.url)).json(&answer).send().await.unwrap();
    assert_eq!(r2.status(), 401);
    let body: serde_json::Value = r2.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("already used"), "{body}");
    b.audit_has("replay", |l| l["reason"].as_str().unwrap().contains("already used"));

    // Expired challenge (challenge_ttl = 3s: long enough for the replay check above on a loaded machine).
    let ch = b.api_challenge("alice").await;
    let sig = ssh_sign(&alice, "gocred-login@v1", ch["message"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (st, body) = b.answer_login("alice", &ch, &sig).await;
    assert_eq!(st, 401);
    assert!(body["message"].as_str().unwrap().contains("challenge expired"), "{body}");
    b.audit_has("expired challenge", |l| l["reason"].as_str().unwrap().contains("challenge expired"));

    // Wrong signature namespace.
    let ch = b.api_challenge("alice").await;
    let sig = ssh_sign(&alice, "git", ch["message"].as_str().unwrap());
    let (st, body) = b.answer_login("alice", &ch, &sig).await;
    assert_eq!(st, 401);
    assert!(body["message"].as_str().unwrap().contains("namespace is `git`"), "{body}");
    b.audit_has("namespace", |l| l["reason"].as_str().unwrap().contains("namespace"));

    // A banned user (policy forbids login): 403 naming the policy; audit has the policy id.
    let mallory = b.add_user_key("mallory", "mallory", "ed25519");
    let (st, body) = b.api_login("mallory", &mallory).await;
    assert_eq!(st, 403, "{body}");
    let line = b.audit_has("ban", |l| l["action"] == "login" && l["kind"] == "authz" && l["decision"] == "deny");
    assert!(!line["policy_ids"].as_array().unwrap().is_empty(), "{line}");
    assert!(body["message"].as_str().unwrap().contains(line["policy_ids"][0].as_str().unwrap()), "{body} / {line}");
}

/// Forge a token with the broker's own signing key (read from its secrets file) but altered
/// claims or header, to show each check is enforced on its own.
async fn forge(b: &SshBroker, header: serde_json::Value, claims: serde_json::Value) -> String {
    let store = gocred::secrets::file::FileStore::with_key(&b.path("secrets.enc"), &b.file_key).unwrap();
    let rec = store.get("gocred/signing-keys").await.unwrap().unwrap();
    use secrecy::ExposeSecret;
    let set: serde_json::Value = serde_json::from_str(rec.data.get("keyset").unwrap().expose_secret()).unwrap();
    let seed = base64::engine::general_purpose::STANDARD.decode(set["keys"][0]["seed"].as_str().unwrap()).unwrap();
    let sk = ed25519_dalek::SigningKey::from_bytes(seed.as_slice().try_into().unwrap());
    let input = format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
    use ed25519_dalek::Signer;
    format!("{input}.{}", B64URL.encode(sk.sign(input.as_bytes()).to_bytes()))
}

fn hs256(key: &[u8], input: &str) -> Vec<u8> {
    // HMAC-SHA256 (RFC 2104) with the sha2 crate.
    use sha2::Digest;
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&sha2::Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = sha2::Sha256::digest([ipad.as_slice(), input.as_bytes()].concat());
    sha2::Sha256::digest([opad.as_slice(), inner.as_slice()].concat()).to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn protected_route_rejects_every_bad_token_and_proof() {
    let b = SshBroker::start();
    let alice = b.add_user_key("alice", "alice", "ed25519");
    let other = b.path("other");
    ssh_keygen(&other, "ed25519", "");
    let (st, login) = b.api_login("alice", &alice).await;
    assert_eq!(st, 200, "{login}");
    let token = login["access_token"].as_str().unwrap().to_string();
    let origin = b.g.url.clone();
    let prefix = format!("{origin}/");
    let now = now();
    let good_proof = b.proof(&token, &alice, &prefix, now + 300);

    // The good case first: Bearer + Gocred-Proof, and Basic with token~proof.
    let (st, who) = b
        .get_with("/v1/whoami", &[("Authorization", format!("Bearer {token}")), ("Gocred-Proof", good_proof.clone())])
        .await;
    assert_eq!(st, 200, "{who}");
    assert_eq!(who["principal"], "user:alice");
    assert_eq!(who["key_fingerprint"], ssh_fingerprint(&b.path("alice.pub")).as_str());
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("gocred:{token}~{good_proof}"));
    let (st, _) = b.get_with("/v1/whoami", &[("Authorization", format!("Basic {basic}"))]).await;
    assert_eq!(st, 200);

    let claims: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    assert_eq!(claims["cnf"]["kid"], who["key_fingerprint"]);
    assert_eq!(header["alg"], "EdDSA");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = claims.clone();
        c[k] = v;
        c
    };
    let jwks: serde_json::Value =
        client(None).get(format!("{origin}/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let public_x = B64URL.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();

    let alg_none = format!("{}.{}.", B64URL.encode(r#"{"alg":"none","typ":"JWT"}"#), token.split('.').nth(1).unwrap());
    let hs_input = format!(
        "{}.{}",
        B64URL.encode(serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]}).to_string()),
        token.split('.').nth(1).unwrap()
    );
    let hs = format!("{hs_input}.{}", B64URL.encode(hs256(&public_x, &hs_input)));
    let wrong_aud = forge(&b, header.clone(), with("aud", "other-service".into())).await;
    let wrong_iss = forge(&b, header.clone(), with("iss", "https://evil.example".into())).await;
    let expired = forge(&b, header.clone(), with("exp", (now - 10).into())).await;
    let unknown_kid = forge(&b, serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "nope"}), claims.clone()).await;

    let proof_for = |t: &str| b.proof(t, &alice, &prefix, now + 300);
    let bearer = |t: &str| ("Authorization", format!("Bearer {t}"));
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no credentials", vec![], "no credentials"),
        ("token without proof", vec![bearer(&token)], "proof of key possession is required"),
        ("proof without token", vec![("Gocred-Proof", good_proof.clone())], "token is required"),
        (
            "proof by another key",
            vec![bearer(&token), ("Gocred-Proof", b.proof(&token, &other, &prefix, now + 300))],
            "but the token is bound to",
        ),
        (
            "proof for another prefix",
            vec![bearer(&token), ("Gocred-Proof", b.proof(&token, &alice, &format!("{origin}/git/"), now + 300))],
            "does not cover this request",
        ),
        (
            "proof wider than the origin",
            vec![bearer(&token), ("Gocred-Proof", b.proof(&token, &alice, "http://127.0.0.1", now + 300))],
            "does not cover",
        ),
        (
            "expired proof",
            vec![bearer(&token), ("Gocred-Proof", b.proof(&token, &alice, &prefix, now - 5))],
            "proof expired",
        ),
        (
            "proof too long",
            vec![bearer(&token), ("Gocred-Proof", b.proof(&token, &alice, &prefix, now + 3600))],
            "more than 10 minutes",
        ),
        (
            "proof for another token",
            vec![bearer(&token), ("Gocred-Proof", b.proof("another.token.x", &alice, &prefix, now + 300))],
            "signature is invalid",
        ),
        ("expired token", vec![bearer(&expired), ("Gocred-Proof", proof_for(&expired))], "token expired"),
        ("alg none", vec![bearer(&alg_none), ("Gocred-Proof", proof_for(&alg_none))], "algorithm `none`"),
        ("HS256 with the public key", vec![bearer(&hs), ("Gocred-Proof", proof_for(&hs))], "algorithm `HS256`"),
        ("wrong aud", vec![bearer(&wrong_aud), ("Gocred-Proof", proof_for(&wrong_aud))], "audience"),
        ("wrong iss", vec![bearer(&wrong_iss), ("Gocred-Proof", proof_for(&wrong_iss))], "issuer"),
        ("unknown kid", vec![bearer(&unknown_kid), ("Gocred-Proof", proof_for(&unknown_kid))], "unknown key id"),
        ("tampered token", vec![bearer(&format!("{token}x")), ("Gocred-Proof", good_proof.clone())], "token"),
    ];
    for (name, headers, msg) in cases {
        let before = b.audit().len();
        let (st, body) = b.get_with("/v1/whoami", &headers).await;
        assert_eq!(st, 401, "{name}: {body}");
        assert_eq!(body["error"], "unauthorized", "{name}");
        assert!(body["message"].as_str().unwrap().contains(msg), "{name}: {body}");
        let text = body.to_string();
        assert!(!text.contains(&token[..40]), "{name}: token echoed");
        // An audit line for this decision, without the token or proof.
        let lines = b.audit();
        assert!(lines.len() > before, "{name}: no audit line");
        let last = lines.last().unwrap();
        assert_eq!(last["decision"], "deny", "{name}");
        assert!(last["reason"].as_str().unwrap().contains(msg), "{name}: {last}");
        let raw = std::fs::read_to_string(b.path("audit.log")).unwrap();
        assert!(!raw.contains(&token) && !raw.contains(&good_proof), "{name}: secret in audit log");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn refresh_stops_at_max_session_and_revocation_takes_effect() {
    let b = SshBroker::start_with("ttl = \"4s\"\nmax_session = \"5s\"", "");
    let alice = b.add_user_key("alice", "alice", "ed25519");
    let (_, login) = b.api_login("alice", &alice).await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let session_end = login["session_expires_at"].as_u64().unwrap();
    let c = client(None);
    let prefix = format!("{}/", b.g.url);
    let refresh = |t: String| {
        let (c, b2, p) = (c.clone(), b.g.url.clone(), b.proof(&t, &alice, &prefix, now() + 300));
        async move {
            let r = c
                .post(format!("{b2}/v1/token"))
                .bearer_auth(&t)
                .header("Gocred-Proof", p)
                .form(&[("grant_type", "urn:gocred:params:grant-type:refresh")])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
        }
    };
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let (st, r1) = refresh(token.clone()).await;
    assert_eq!(st, 200, "{r1}");
    let t2 = r1["access_token"].as_str().unwrap().to_string();
    assert_ne!(t2, token);
    // A refresh 2 s into a 5 s session gets a token ending with the session, not 4 s later.
    assert_eq!(r1["expires_at"].as_u64().unwrap(), session_end, "{r1} {login}");
    assert_eq!(r1["session_expires_at"].as_u64().unwrap(), session_end);
    // Once the session is over, nothing can be refreshed.
    while now() < session_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (st, r2) = refresh(t2).await;
    assert_eq!(st, 401, "{r2}");
    assert!(r2["message"].as_str().unwrap().contains("expired"), "{r2}");

    // Revoking a token ends its session: a token refreshed from it before is refused too.
    let (_, login) = b.api_login("alice", &alice).await;
    let ta = login["access_token"].as_str().unwrap().to_string();
    let (st, rb) = refresh(ta.clone()).await;
    assert_eq!(st, 200, "{rb}");
    let tb = rb["access_token"].as_str().unwrap().to_string();
    let pa = b.proof(&ta, &alice, &prefix, now() + 300);
    let r = c.post(format!("{}/v1/revoke", b.g.url)).bearer_auth(&ta).header("Gocred-Proof", &pa).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let pb = b.proof(&tb, &alice, &prefix, now() + 300);
    let (st, body) = b.get_with("/v1/whoami", &[("Authorization", format!("Bearer {tb}")), ("Gocred-Proof", pb)]).await;
    assert_eq!(st, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("revoked"), "{body}");

    // A key removed from authorized_keys cannot refresh its session.
    let (_, login) = b.api_login("alice", &alice).await;
    let tc = login["access_token"].as_str().unwrap().to_string();
    std::fs::write(b.path("authorized_keys/alice"), "").unwrap();
    let (st, body) = refresh(tc).await;
    assert_eq!(st, 401, "{body}");
    assert!(body["message"].as_str().unwrap().contains("cannot refresh"), "{body}");
    b.authorize("alice", &alice);

    // Revocation: a fresh login, revoke, then whoami fails.
    let (_, login) = b.api_login("alice", &alice).await;
    let t = login["access_token"].as_str().unwrap().to_string();
    let p = b.proof(&t, &alice, &prefix, now() + 300);
    let r = c
        .post(format!("{}/v1/revoke", b.g.url))
        .bearer_auth(&t)
        .header("Gocred-Proof", &p)
        .form(&[("token", t.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (st, body) = b.get_with("/v1/whoami", &[("Authorization", format!("Bearer {t}")), ("Gocred-Proof", p)]).await;
    assert_eq!(st, 401);
    assert!(body["message"].as_str().unwrap().contains("revoked"), "{body}");
    b.audit_has("revoked", |l| l["reason"] == "token revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_on_one_broker_is_honoured_by_another_within_10s_with_keys_from_vault() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("alice");
    ssh_keygen(&key, "ed25519", "");
    // Alice's authorized keys live in OpenBao (ssh.authorized_keys = "vault:PATH").
    let keys_text = std::fs::read_to_string(d.join("alice.pub")).unwrap();
    bao.api("POST", "secret/data/gocred/ssh-keys/alice", serde_json::json!({"data": {"keys": keys_text}})).await;
    // Both brokers present the same public origin (as replicas behind one load balancer).
    let public = format!("http://127.0.0.1:{}", free_port());
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npublic_url = \"{public}\"\n[secrets]\nbackend = \"vault\"\n\
             [vault]\naddress = \"{}\"\n[vault.auth]\nmethod = \"token\"\ntoken = \"root\"\n\
             [ssh]\nauthorized_keys = \"vault:gocred/ssh-keys\"\n[policy]\ndir = \"{}\"\n[audit]\npath = \"audit.log\"\n",
            bao.addr,
            repo_root().join("policies").display()
        ),
    )
    .unwrap();
    let a = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let b = Gocred::start(&["serve", "--config", cfg.to_str().unwrap()], &[]);
    let c = client(None);
    // Log in on A (challenge from A, answer to B: the challenge key is shared too).
    let ch = challenge(&a.url, "alice").await;
    let sig = ssh_sign(&key, "gocred-login@v1", ch["message"].as_str().unwrap());
    let r = c
        .post(format!("{}/v1/login/ssh", b.url))
        .json(&serde_json::json!({"user": "alice", "challenge": ch["challenge"], "signature": sig}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let login: serde_json::Value = r.json().await.unwrap();
    let t = login["access_token"].as_str().unwrap().to_string();
    let exp = now() + 300;
    let msg = gocred::proto::proof::proof_message(&t, &format!("{public}/"), exp);
    let psig = gocred::auth::sshsig::parse(&ssh_sign(&key, "gocred-proof@v1", &msg)).unwrap();
    let proof = gocred::proto::proof::encode(
        exp,
        &format!("{public}/"),
        &gocred::proto::proof::signature_b64url(&psig).unwrap(),
    );
    let who = |u: String| {
        let (c, t, p) = (c.clone(), t.clone(), proof.clone());
        async move {
            c.get(format!("{u}/v1/whoami"))
                .bearer_auth(t)
                .header("Gocred-Proof", p)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(who(a.url.clone()).await, 200);
    assert_eq!(who(b.url.clone()).await, 200);
    let r = c.post(format!("{}/v1/revoke", a.url)).bearer_auth(&t).header("Gocred-Proof", &proof).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let revoked_at = std::time::Instant::now();
    assert_eq!(who(a.url.clone()).await, 401, "revoking broker refuses at once");
    eventually(Duration::from_secs(10), "the other broker to honour the revocation", || {
        let f = who(b.url.clone());
        async move { (f.await == 401).then_some(()) }
    })
    .await;
    assert!(revoked_at.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_token_refreshes_and_logout_revokes() {
    let b = SshBroker::start_with("ttl = \"8s\"", "");
    let key = b.add_user_key("alice", "alice", "ed25519");
    let env = b.client_env(&b.path("home"), None);
    let (code, out, err) = b.cli(&["login", "--ssh", key.to_str().unwrap(), "--broker", &b.g.url], &env);
    assert_eq!(code, 0, "{out}{err}");
    let (code, t1, err) = b.cli(&["token"], &env);
    assert_eq!(code, 0, "{err}");
    let t1 = t1.trim().to_string();
    assert_eq!(t1.split('.').count(), 3);
    // Within the last quarter of its 8 s life, `gocred token` refreshes with the key.
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let (code, t2, err) = b.cli(&["token"], &env);
    assert_eq!(code, 0, "{err}");
    let t2 = t2.trim().to_string();
    assert_ne!(t1, t2, "token was refreshed");
    // Parallel `gocred token` runs serialise on the lock and all print a valid token.
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let env = env.clone();
            std::thread::spawn(move || {
                let e: Vec<(&str, &str)> = env.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
                Gocred::run(&["token"], &e)
            })
        })
        .collect();
    for h in handles {
        let (code, out, err) = h.join().unwrap();
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim().split('.').count(), 3);
    }
    let (code, out, err) = b.cli(&["logout"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("token revoked"), "{out}");
    let (code, _, err) = b.cli(&["status"], &env);
    assert_eq!(code, 1);
    assert!(err.contains("not logged in"), "{err}");
    // The revoked token no longer works.
    let p = b.proof(&t2, &key, &format!("{}/", b.g.url), now() + 300);
    let (st, body) = b.get_with("/v1/whoami", &[("Authorization", format!("Bearer {t2}")), ("Gocred-Proof", p)]).await;
    assert_eq!(st, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_key_file_prompts_for_passphrase_on_a_terminal() {
    let b = SshBroker::start();
    let key = b.path("enc");
    ssh_keygen(&key, "ed25519", "correct horse");
    b.authorize("alice", &key);
    let env = b.client_env(&b.path("home"), None);
    // No terminal: a clear refusal, not a hang.
    let (code, _, err) = b.cli(&["login", "--ssh", key.to_str().unwrap(), "--broker", &b.g.url], &env);
    assert_eq!(code, 1);
    assert!(err.contains("encrypted") && err.contains("ssh-agent"), "{err}");
    // On a terminal (script(1) provides a pty; the passphrase is typed on it).
    let cmdline = format!("{} login --ssh {} --broker {}", gocred_bin().display(), key.display(), b.g.url);
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &cmdline, "/dev/null"]);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"correct horse\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Enter passphrase") && text.contains("logged in"), "{text}");
    assert!(status_of(&b, &env).contains("alice"));
}

#[tokio::test(flavor = "multi_thread")]
async fn proof_script_with_ssh_keygen_and_curl_calls_whoami() {
    let b = SshBroker::start();
    let key = b.add_user_key("alice", "alice", "ed25519");
    let (_, login) = b.api_login("alice", &key).await;
    let token = login["access_token"].as_str().unwrap();
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("examples/proof-with-ssh-keygen.sh"))
        .env("GOCRED_BROKER", &b.g.url)
        .env("GOCRED_TOKEN", token)
        .env("SSH_KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let who: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(who["principal"], "user:alice");
}

#[tokio::test(flavor = "multi_thread")]
async fn policies_are_validated_at_start_and_reloaded_on_sighup() {
    let b = SshBroker::start();
    let mallory = b.add_user_key("mallory", "mallory", "ed25519");
    assert_eq!(b.api_login("mallory", &mallory).await.0, 403);

    // Lift the ban and reload: mallory may log in.
    let pol = b.path("policies/gocred.cedar");
    let original = std::fs::read_to_string(&pol).unwrap();
    let unbanned = original.replace("principal == User::\"mallory\"", "principal == User::\"nobody\"");
    assert_ne!(original, unbanned);
    std::fs::write(&pol, &unbanned).unwrap();
    b.g.proc.signal("HUP");
    eventually(Duration::from_secs(5), "reload to lift the ban", || async {
        (b.api_login("mallory", &mallory).await.0 == 200).then_some(())
    })
    .await;

    // A broken new set is refused: the previous one stays in force and the log says why.
    std::fs::write(b.path("policies/broken.cedar"), "permit(principal, action, resource) when { resource.nope };\n")
        .unwrap();
    b.g.proc.signal("HUP");
    eventually(Duration::from_secs(5), "the reload failure in the log", || async {
        b.g.proc
            .stderr()
            .iter()
            .any(|l| l.contains("policy reload failed") && l.contains("broken.cedar:1"))
            .then_some(())
    })
    .await;
    assert_eq!(b.api_login("mallory", &mallory).await.0, 200, "previous policies still in force");

    // At start-up a broken policy set stops the broker with file:line.
    let cfg = b.path("broker.toml");
    let (code, _, err) = Gocred::run(&["serve", "--check", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("broken.cedar:1"), "{err}");
    let (code, _, err) = Gocred::run(&["policy", "check", b.path("policies").to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("broken.cedar:1"), "{err}");
    std::fs::remove_file(b.path("policies/broken.cedar")).unwrap();
    let (code, out, err) = Gocred::run(
        &[
            "policy",
            "explain",
            "--dir",
            b.path("policies").to_str().unwrap(),
            "--principal",
            "user:alice",
            "--group",
            "developers",
            "--action",
            "download",
            "--resource",
            "git.corp.example/acme/lib",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ALLOW") && out.contains("developers-download-corp"), "{out}");
    let (_, out, _) = Gocred::run(
        &[
            "policy",
            "explain",
            "--dir",
            b.path("policies").to_str().unwrap(),
            "--principal",
            "user:bob",
            "--action",
            "push",
            "--resource",
            "git.corp.example/acme/lib",
        ],
        &[],
    );
    assert!(out.contains("DENY") && out.contains("no-push"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_broker_lets_the_local_user_log_in_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    let key = home.join(".ssh/id_ed25519");
    ssh_keygen(&key, "ed25519", "");
    let data = dir.path().join("dev");
    let env_owned = [("HOME", home.to_str().unwrap()), ("USER", "devuser")];
    let g =
        Gocred::start(&["serve", "--dev", "--data-dir", data.to_str().unwrap(), "--listen", "127.0.0.1:0"], &env_owned);
    assert!(g.proc.stdout().iter().any(|l| l.contains("dev user devuser: 1 SSH key")), "{:#?}", g.proc.stdout());
    let ca = data.join("tls/ca.pem");
    let cache = dir.path().join("cache");
    let client_env = [
        ("HOME", home.to_str().unwrap()),
        ("USER", "devuser"),
        ("XDG_CACHE_HOME", cache.to_str().unwrap()),
        ("SSH_AUTH_SOCK", ""),
    ];
    // The key is found in ~/.ssh without naming it; the dev CA is trusted via --ca-cert.
    let (code, out, err) =
        Gocred::run(&["login", "--ssh", "--broker", &g.url, "--ca-cert", ca.to_str().unwrap()], &client_env);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("as devuser"), "{out}");
    // SSL_CERT_FILE works too, and later commands remember the broker and CA.
    let (code, out, err) = Gocred::run(&["status"], &client_env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&g.url) && out.contains(&ssh_fingerprint(&home.join(".ssh/id_ed25519.pub"))), "{out}");
    let (code, token, err) = Gocred::run(&["token"], &client_env);
    assert_eq!(code, 0, "{err}");
    let mut env2: Vec<(&str, &str)> = client_env.to_vec();
    env2.push(("SSL_CERT_FILE", ca.to_str().unwrap()));
    let home2 = dir.path().join("cache2");
    env2.retain(|(k, _)| *k != "XDG_CACHE_HOME");
    env2.push(("XDG_CACHE_HOME", home2.to_str().unwrap()));
    let (code, out, err) = Gocred::run(&["login", "--ssh", key.to_str().unwrap(), "--broker", &g.url], &env2);
    assert_eq!(code, 0, "SSL_CERT_FILE trust: {out}{err}");
    assert_eq!(token.trim().split('.').count(), 3);
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    assert!(audit.contains("\"principal\":\"user:devuser\"") && audit.contains("\"decision\":\"allow\""), "{audit}");
}

/// An upstream that accepts connections but never answers: a 504 naming it, within its timeout.
#[tokio::test(flavor = "multi_thread")]
async fn silent_upstream_is_a_504_within_its_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(8) {
            held.push(s); // accept, never answer
        }
    });
    let b = SshBroker::start_with(
        "",
        &format!(
            "[[upstreams]]\nname = \"slow\"\nkind = \"goproxy\"\nmodules = [\"git.corp.example\"]\nurl = \"http://127.0.0.1:{port}\"\ntimeout = \"1s\""
        ),
    );
    let alice = b.add_user_key("alice", "alice", "ed25519");
    let (_, login) = b.api_login("alice", &alice).await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let proof = b.proof(&token, &alice, &format!("{}/", b.g.url), now() + 300);
    let started = std::time::Instant::now();
    let r = client(None)
        .get(format!("{}/mod/git.corp.example/acme/lib/@v/list", b.g.url))
        .bearer_auth(&token)
        .header("Gocred-Proof", proof)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 504);
    let body = r.text().await.unwrap();
    assert!(body.contains("upstream slow did not answer within 1s"), "{body}");
    assert!(!body.contains(&port.to_string()), "internal address not shown: {body}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn login_requests_are_rate_limited_per_client() {
    let b = SshBroker::start();
    let c = client(None);
    let mut limited = 0;
    for _ in 0..150 {
        let r = c
            .post(format!("{}/v1/login/ssh/challenge", b.g.url))
            .json(&serde_json::json!({"user": "alice"}))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited > 0, "150 rapid login requests were never limited");
    // Other routes are not affected.
    assert_eq!(b.g.get(&c, "/healthz").await.0, 200);
}
