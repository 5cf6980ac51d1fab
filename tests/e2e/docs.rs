//! Documented command sequences, run exactly as written. The README's names
//! (`gocred.corp.example`, `git.corp.example`, `mods.corp.example`) resolve inside a private
//! network namespace (`ip netns`, with its own `/etc/hosts`) to a broker, a git server and a
//! module proxy started there; the commands themselves are taken from the document text.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A network namespace with loopback up and `names` resolving to 127.0.0.1; removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(names: &[&str]) -> Netns {
        let name = format!("gocred-docs-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let st = Command::new("ip").args(["netns", "add", &name]).status().expect(
            "`ip` (iproute2) is needed for the docs tests: they run the README's commands in a network namespace",
        );
        assert!(st.success(), "ip netns add failed (the docs tests need root)");
        let dir = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), format!("127.0.0.1 localhost {}\n::1 localhost\n", names.join(" "))).unwrap();
        let ns = Netns { name };
        run_ok(&mut ns.cmd("ip", &["link", "set", "lo", "up"]));
        ns
    }

    /// `prog args` inside the namespace.
    fn cmd(&self, prog: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(prog).args(args);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
        let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&self.name));
    }
}

/// The lines of the first ```sh block after `marker` in `doc` (comments kept: `sh` ignores them).
fn sh_block(doc: &str, marker: &str) -> Vec<String> {
    let at = doc.find(marker).unwrap_or_else(|| panic!("the document no longer contains {marker:?}"));
    let rest = &doc[at..];
    let start = rest.find("```sh\n").expect("a ```sh block after the marker") + 6;
    let end = rest[start..].find("```").unwrap() + start;
    rest[start..end].lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn git(dir: &Path, args: &[&str]) {
    run_ok(Command::new("git").current_dir(dir).args(args).env("GIT_CONFIG_GLOBAL", "/dev/null"));
}

/// A bare repository `root/<dir>` with module `module` at v1.0.0.
fn bare_repo(root: &Path, dir: &str, module: &str) {
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("go.mod"), format!("module {module}\n\ngo 1.21\n")).unwrap();
    std::fs::write(work.join("lib.go"), "package lib\n\n// Hello greets.\nfunc Hello() string { return \"hi\" }\n")
        .unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "."]);
    git(&work, &["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "v1"]);
    git(&work, &["tag", "v1.0.0"]);
    let bare = root.join(dir);
    std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
    run_ok(
        Command::new("git").args(["clone", "-q", "--bare"]).arg(&work).arg(&bare).env("GIT_CONFIG_GLOBAL", "/dev/null"),
    );
    std::fs::remove_dir_all(&work).unwrap();
}

/// README, "Private modules": `gocred login`, `gocred setup`, then plain `go get` of a module
/// served by a module-proxy upstream and of a module on a git server (built by the broker behind
/// `/mod/`: no `insteadOf`, no GONOPROXY on the client) — exactly the commands the README shows, as a user
/// would type them, in a fresh HOME.
#[tokio::test(flavor = "multi_thread")]
async fn readme_private_module_flow() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let lines = sh_block(&readme, "Private modules, once the broker has");
    assert!(lines.iter().any(|l| l.starts_with("gocred login")) && lines.iter().any(|l| l.starts_with("go get")));

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = Netns::new(&["gocred.corp.example", "git.corp.example", "mods.corp.example", "proxy.golang.org"]);

    // The upstreams' content: a git repository, and a GOPROXY layout for mods.corp.example made
    // by a direct download from a local repository.
    let srv = d.join("srv");
    bare_repo(&srv, "acme/tool.git", "git.corp.example/acme/tool");
    let layout = d.join("layout");
    goproxy_layout(&layout, "mods.corp.example/acme/lib");
    let upstream_port = free_port();
    let mut up = ns.cmd("python3", &[]);
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args(["--port", &upstream_port.to_string(), "--user", "up", "--password", "up-pass", "--bearer", "up-token"])
        .arg("--git-root")
        .arg(&srv)
        .arg("--goproxy-root")
        .arg(&layout);
    let mut upstream = Proc::spawn("upstream", up);
    upstream.wait_stdout("listening", Duration::from_secs(10));
    // The broker: https://gocred.corp.example (a test CA), the file backend holding the
    // upstream credentials, alice's key.
    let (ca, cert, key) = name_cert(d, "gocred.corp.example");
    let home = d.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    ssh_keygen(&home.join(".ssh/id_ed25519"), "ed25519", "");
    std::fs::create_dir_all(d.join("authorized_keys")).unwrap();
    std::fs::copy(home.join(".ssh/id_ed25519.pub"), d.join("authorized_keys/alice")).unwrap();
    let pol = d.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    for f in ["gocred.cedarschema", "gocred.cedar"] {
        std::fs::copy(repo_root().join("policies").join(f), pol.join(f)).unwrap();
    }
    std::fs::write(
        pol.join("alice.cedar"),
        "@id(\"alice-corp\")\npermit (principal == User::\"alice\", action == Action::\"download\", resource)\n\
         when { resource.folded_path like \"git.corp.example/acme/*\" || resource.folded_path like \"mods.corp.example/acme/*\" };\n",
    )
    .unwrap();
    let file_key = d.join("file.key");
    {
        let cfg = gocred::config::FileBackendConfig {
            path: d.join("secrets.enc"),
            key_file: Some(file_key.clone()),
            create_key: true,
        };
        let store = gocred::secrets::file::FileStore::open(&cfg).await.unwrap();
        let mut git = std::collections::BTreeMap::new();
        git.insert("username".to_string(), secrecy::SecretString::from("up".to_string()));
        git.insert("password".to_string(), secrecy::SecretString::from("up-pass".to_string()));
        store.put("upstreams/corp-git", &gocred::secrets::SecretData(git), gocred::secrets::Cas::Create).await.unwrap();
        store
            .put(
                "upstreams/athens",
                &gocred::secrets::SecretData::single("token", secrecy::SecretString::from("up-token".to_string())),
                gocred::secrets::Cas::Create,
            )
            .await
            .unwrap();
    }
    let cfg = d.join("broker.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:443\"\npublic_url = \"https://gocred.corp.example\"\n[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
             [secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\nkey_file = \"file.key\"\n\
             [ssh]\nauthorized_keys = \"authorized_keys\"\n[policy]\ndir = \"policies\"\n[audit]\npath = \"audit.log\"\n\
             [[upstreams]]\nname = \"corp-git\"\nkind = \"git\"\nhosts = [\"git.corp.example\"]\nurl = \"http://127.0.0.1:{upstream_port}\"\ncredentials = \"vault:upstreams/corp-git\"\n\
             [[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nmodules = [\"mods.corp.example\"]\nurl = \"http://127.0.0.1:{upstream_port}/mod\"\ncredentials = \"vault:upstreams/athens\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let mut serve = ns.cmd(gocred_bin(), &["serve", "--config", cfg.to_str().unwrap()]);
    serve.env("GOCRED_LOG", "info");
    let mut broker = Proc::spawn("broker", serve);
    broker.wait_stdout("gocred: listening on ", Duration::from_secs(20));

    // The user's machine: a fresh HOME, gocred and go on PATH, the corporate CA trusted (Go and
    // OpenSSL read SSL_CERT_FILE; git built with GnuTLS needs GIT_SSL_CAINFO).
    let app = d.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.21\n").unwrap();
    let path = format!(
        "{}:{}:/usr/local/bin:/usr/bin:/bin",
        gocred_bin().parent().unwrap().display(),
        crate::proxy::go_bin().parent().unwrap().display()
    );
    for line in &lines {
        let mut c = ns.cmd("sh", &["-c", line]);
        c.current_dir(&app)
            .env_clear()
            .env("PATH", &path)
            .env("HOME", &home)
            .env("USER", "alice")
            .env("SSL_CERT_FILE", &ca)
            .env("GIT_SSL_CAINFO", &ca)
            .env("GOTOOLCHAIN", "local");
        let out = c.output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "README command failed: {line}\n{text}\nupstream: {:#?}\nbroker: {:#?}",
            upstream.stderr(),
            broker.stderr()
        );
    }
    let sum = std::fs::read_to_string(app.join("go.sum")).unwrap();
    assert!(sum.contains("mods.corp.example/acme/lib v1.0.0 h1:"), "{sum}");
    assert!(sum.contains("git.corp.example/acme/tool v1.0.0 h1:"), "{sum}");
    let gitconfig = std::fs::read_to_string(home.join(".gitconfig")).unwrap_or_default();
    assert!(!gitconfig.contains("insteadOf"), "the client fetches nothing with git: {gitconfig}");
    let goenv = std::fs::read_to_string(home.join(".config/go/env")).unwrap_or_default();
    assert!(goenv.contains("GONOPROXY=none") && goenv.contains("/mod,"), "{goenv}");
    // Both went through the broker with the upstream's credentials, not the user's.
    let reqs = upstream.stderr();
    assert!(
        reqs.iter().any(|l| l.contains("/mod/mods.corp.example/acme/lib/@v/") && l.contains("auth=Bearer")),
        "{reqs:#?}"
    );
    assert!(reqs.iter().any(|l| l.contains("/acme/tool") && l.contains("auth=Basic")), "{reqs:#?}");
    broker.kill();
    upstream.kill();
}

/// `gocred serve --check --config examples/broker.toml`, as the example's header says.
#[test]
fn example_broker_toml_checks_as_documented() {
    let text = std::fs::read_to_string(repo_root().join("examples/broker.toml")).unwrap();
    let cmd = text
        .lines()
        .find_map(|l| l.split_once("Validate without starting:").map(|(_, c)| c.trim().to_string()))
        .expect("the example names its validation command");
    assert_eq!(cmd, "gocred serve --check --config examples/broker.toml");
    let mut c = Command::new("sh");
    c.args(["-c", &cmd])
        .current_dir(repo_root())
        .env("PATH", format!("{}:/usr/bin:/bin", gocred_bin().parent().unwrap().display()));
    let out = run_ok(&mut c);
    assert!(out.contains("config OK"), "{out}");
}

/// A GOPROXY directory serving `module` at v1.0.0 (list, info, mod, zip), as a module proxy
/// such as Athens lays it out.
fn goproxy_layout(root: &Path, module: &str) {
    let v = root.join(module).join("@v");
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("list"), "v1.0.0\n").unwrap();
    std::fs::write(v.join("v1.0.0.info"), "{\"Version\":\"v1.0.0\",\"Time\":\"2026-01-01T00:00:00Z\"}\n").unwrap();
    let gomod = format!("module {module}\n\ngo 1.21\n");
    std::fs::write(v.join("v1.0.0.mod"), &gomod).unwrap();
    let script = "import sys, zipfile\n\
z = zipfile.ZipFile(sys.argv[1], 'w')\n\
p = sys.argv[2] + '@v1.0.0/'\n\
z.writestr(p + 'go.mod', sys.argv[3])\n\
z.writestr(p + 'lib.go', 'package lib\\n\\n// Hello greets.\\nfunc Hello() string { return \"hi\" }\\n')\n\
z.close()\n";
    run_ok(Command::new("python3").args(["-c", script]).arg(v.join("v1.0.0.zip")).arg(module).arg(&gomod));
}

/// A CA and a server certificate for DNS name `name`.
fn name_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "corp test CA");
    let ca_kp = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_kp).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_kp);
    let leaf = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    let leaf_kp = rcgen::KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_kp, &issuer).unwrap();
    let (ca, cert, key) = (dir.join("corp-ca.pem"), dir.join("corp.pem"), dir.join("corp.key"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, leaf_cert.pem()).unwrap();
    std::fs::write(&key, leaf_kp.serialize_pem()).unwrap();
    (ca, cert, key)
}

/// README, "How a request flows": every module the table names exists, and every e2e area the
/// README tells contributors to run alone is a module of this test binary.
#[test]
fn readme_contributor_section_names_real_modules_and_areas() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("### How a request flows").nth(1).expect("README has the contributor section");
    let main = std::fs::read_to_string(repo_root().join("tests/e2e/main.rs")).unwrap();
    let mut areas = 0;
    for line in section.lines().filter(|l| l.starts_with("cargo test --test e2e ")) {
        let area = line.trim_start_matches("cargo test --test e2e ").trim().trim_end_matches("::");
        assert!(main.contains(&format!("mod {area};")), "README names e2e area `{area}`, which does not exist");
        areas += 1;
    }
    assert!(areas >= 2, "the README shows how to run an e2e area alone");
    let src = repo_root().join("src");
    let module_file = |m: &str| {
        let dir = src.join(m).join("mod.rs");
        if dir.exists() { dir } else { src.join(format!("{m}.rs")) }
    };
    let mut modules = 0;
    let rows = section.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| step"));
    for row in rows {
        let last = row.trim_end_matches('|').rsplit('|').next().unwrap();
        for path in last.split('`').skip(1).step_by(2).flat_map(|c| c.split(" → ")) {
            let parts: Vec<&str> = path.split("::").collect();
            let top = module_file(parts[0]);
            let found = match parts[..] {
                [_] => top.exists(),
                [m, sub] => {
                    src.join(m).join(format!("{sub}.rs")).exists()
                        || std::fs::read_to_string(&top).is_ok_and(|t| t.contains(&format!("fn {sub}(")))
                }
                [m, sub, f] => std::fs::read_to_string(src.join(m).join(format!("{sub}.rs")))
                    .is_ok_and(|t| t.contains(&format!("fn {f}("))),
                _ => false,
            };
            assert!(found, "README names `{path}`, which is not a module or function in src/");
            modules += 1;
        }
    }
    assert!(modules >= 10, "found only {modules} module names in the section");
}

/// docs/ssh-tunnel.md's broker configuration is valid as shown (with the minimal server and
/// secrets sections every config has), and yields the SSH target and the tunnel cap it describes.
#[test]
fn ssh_tunnel_doc_config_is_valid() {
    let doc = std::fs::read_to_string(repo_root().join("docs/ssh-tunnel.md")).unwrap();
    let toml = doc.split("```toml\n").nth(1).and_then(|r| r.split("```").next()).expect("a toml block");
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n{toml}");
    let c = gocred::config::Config::from_toml(&text, None, std::iter::empty(), &Default::default())
        .unwrap_or_else(|e| panic!("docs/ssh-tunnel.md's config: {e}"));
    let t = c.upstreams[0].ssh.as_ref().expect("an ssh target");
    assert_eq!(
        (t.host.as_str(), t.port, t.user.as_str(), t.path.as_str()),
        ("git-ssh.internal.corp.example", 22, "git", "/")
    );
    assert_eq!(c.server.limits.tunnels_per_principal, 8);
}

/// docs/module-store.md's `[store]` example is valid as shown and yields what it describes.
#[test]
fn module_store_doc_config_is_valid() {
    let doc = std::fs::read_to_string(repo_root().join("docs/module-store.md")).unwrap();
    let toml = doc.split("```toml\n").nth(1).and_then(|r| r.split("```").next()).expect("a toml block");
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n{toml}");
    let c = gocred::config::Config::from_toml(&text, None, std::iter::empty(), &Default::default())
        .unwrap_or_else(|e| panic!("docs/module-store.md's config: {e}"));
    assert_eq!(c.store.max_size, 10 << 30);
    assert_eq!(c.store.list_ttl, std::time::Duration::from_secs(60));
    match &c.store.backend {
        gocred::config::StoreBackend::S3(s) => {
            assert_eq!(
                (s.bucket.as_str(), s.region.as_str(), s.prefix.as_str()),
                ("gocred-modules", "eu-west-1", "prod")
            )
        }
        other => panic!("expected the S3 backend: {other:?}"),
    }
}

/// docs/resilience.md's mirrors example is valid as shown and yields what it describes.
#[test]
fn resilience_doc_config_is_valid() {
    let doc = std::fs::read_to_string(repo_root().join("docs/resilience.md")).unwrap();
    let toml = doc.split("```toml\n").nth(1).and_then(|r| r.split("```").next()).expect("a toml block");
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n{toml}");
    let c = gocred::config::Config::from_toml(&text, None, std::iter::empty(), &Default::default())
        .unwrap_or_else(|e| panic!("docs/resilience.md's config: {e}"));
    let u = &c.upstreams;
    assert_eq!((u[0].mirrors.as_slice(), u[0].retries), (&[1, 2][..], 2));
    assert_eq!((u[0].deadline, u[0].timeout), (Duration::from_secs(60), Duration::from_secs(10)));
    assert_eq!(u[2].mirror_of.as_deref(), Some("corp-git"));
    assert_eq!(u[2].modules, ["git.corp.example"], "a mirror serves its primary's paths");
}

/// The fault drill the README and BENCHMARKS.md show is the suite the test command runs with 10
/// runs each: the area exists and reads the variables the command sets.
#[test]
fn documented_fault_drill_command_runs_the_fault_suite() {
    let faults = std::fs::read_to_string(repo_root().join("tests/e2e/faults.rs")).unwrap();
    let main = std::fs::read_to_string(repo_root().join("tests/e2e/main.rs")).unwrap();
    for doc in ["README.md", "BENCHMARKS.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        let cmd = text
            .split("GOCRED_FAULT_RUNS=100 ")
            .nth(1)
            .and_then(|r| r.split(['`', '\n']).next())
            .unwrap_or_else(|| panic!("{doc} shows the 100-run drill"));
        assert!(cmd.contains("cargo test --test e2e faults::") && cmd.contains("--test-threads=1"), "{doc}: {cmd}");
        for var in cmd
            .split_whitespace()
            .filter_map(|w| w.split_once('=').map(|(k, _)| k))
            .filter(|k| k.starts_with("GOCRED_"))
        {
            assert!(faults.contains(&format!("\"{var}\"")), "{doc}: {var} is not read by the fault suite");
        }
    }
    assert!(main.contains("mod faults;") && faults.contains("\"GOCRED_FAULT_RUNS\""));
}
