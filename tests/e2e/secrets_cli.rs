//! `gocred secrets put|list|delete` against the real backends: the embedded encrypted file and a
//! real OpenBao. Values come from stdin and never appear in any output; the broker then uses the
//! stored upstream credential.

use crate::harness::*;
use std::io::Write;
use std::process::Stdio;

fn secrets(cfg: &std::path::Path, env: &[(&str, &str)], args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut full = vec!["secrets", "--config", cfg.to_str().unwrap()];
    full.extend_from_slice(args);
    let mut child: std::process::Child =
        gocred_cmd(&full, env).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn exercise(cfg: &std::path::Path, env: &[(&str, &str)]) {
    let (code, out, err) = secrets(cfg, env, &["put", "upstreams/corp-git"], "username=bot\npassword=pa55-w0rd\n");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("stored upstreams/corp-git (fields: username, password; version 1)"), "{out}");
    let (code, out, err) = secrets(cfg, env, &["put", "upstreams/athens", "--field", "token"], "token=t0ken-value\n");
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = secrets(cfg, env, &["list", "upstreams"], "");
    assert_eq!(code, 0);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["upstreams/athens", "upstreams/corp-git"]);
    // Bad input loses nothing and says why without the value.
    let (code, _, err) = secrets(cfg, env, &["put", "upstreams/x"], "hunter2\n");
    assert_ne!(code, 0);
    assert!(err.contains("stdin line 1: expected FIELD=VALUE") && !err.contains("hunter2"), "{err}");
    let (code, _, err) = secrets(cfg, env, &["put", "../etc"], "token=a\n");
    assert_ne!(code, 0, "{err}");
    let (code, out, err) = secrets(cfg, env, &["delete", "upstreams/athens"], "");
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = secrets(cfg, env, &["delete", "upstreams/athens"], "");
    assert_ne!(code, 0);
    assert!(err.contains("no record `upstreams/athens`"), "{err}");
    let (_, out, _) = secrets(cfg, env, &["list"], "");
    assert!(out.lines().any(|l| l == "upstreams/corp-git") && !out.contains("athens"), "{out}");
    for text in [&out, &err] {
        assert!(!text.contains("pa55-w0rd") && !text.contains("t0ken-value"), "a value leaked: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_cli_manages_the_file_backend_and_the_broker_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\nkey_file = \"secrets.key\"\n")
        .unwrap();
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode(gocred::random_bytes::<32>());
    gocred::fsutil::write_private_atomic(&dir.path().join("secrets.key"), key.as_bytes()).unwrap();
    exercise(&cfg, &[]);
    // The record is what the broker's backend reads (same file, same key).
    let key = gocred::secrets::file::load_key(Some(&dir.path().join("secrets.key")), false).unwrap();
    let store = gocred::secrets::file::FileStore::with_key(&dir.path().join("secrets.enc"), &key).unwrap();
    let rec = store.get("upstreams/corp-git").await.unwrap().expect("stored");
    use secrecy::ExposeSecret;
    assert_eq!(rec.data.get("password").unwrap().expose_secret(), "pa55-w0rd");

    // docs/configuration.md's commands, as written, in the config's directory.
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let block = doc
        .split("## Storing upstream credentials")
        .nth(1)
        .and_then(|r| r.split("```sh\n").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("the documented commands");
    let path = format!("{}:{}", gocred_bin().parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let mut outputs = Vec::new();
    for line in block.lines() {
        let out = std::process::Command::new("sh")
            .args(["-c", line])
            .current_dir(dir.path())
            .env("PATH", &path)
            .env("PASSWORD", "d0c-pa55")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "`{line}`: {text}");
        assert!(!text.contains("d0c-pa55"), "the value leaked: {text}");
        outputs.push(text);
    }
    assert!(outputs[0].contains("stored upstreams/corp-git (fields: username, password; version 2)"), "{outputs:?}");
    assert_eq!(outputs[1].trim(), "upstreams/corp-git");
    assert!(store.get("upstreams/corp-git").await.unwrap().is_none(), "deleted as documented");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_cli_manages_openbao() {
    let bao = OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "root\n").unwrap();
    let cfg = dir.path().join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"{}\"\n\
             [vault.auth]\nmethod = \"token\"\ntoken_file = \"token\"\n",
            bao.addr
        ),
    )
    .unwrap();
    exercise(&cfg, &[]);
    let v = bao.api("GET", "secret/data/upstreams/corp-git", serde_json::Value::Null).await;
    assert_eq!(v["data"]["data"]["username"], "bot", "{v}");
}
