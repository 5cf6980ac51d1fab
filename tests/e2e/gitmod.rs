//! Git-hosted modules through `/mod/` against the real go command: a corpus of generated
//! repositories (fixed commit dates) on a real git smart-HTTP server; every query is run with
//! `go mod download -json` directly from git (`GOPROXY=direct`) and through the broker
//! (`GOPROXY=<broker>/mod,off` + `GOAUTH`), each with a fresh module cache, and must give the
//! same `Version`, `Sum`, `GoModSum` (or both fail); `go list -m -versions` must agree.

use crate::harness::*;
use crate::proxy::go_bin;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn git_in(dir: &Path, args: &[&str], date: u64) {
    let d = format!("@{date} +0000");
    run_ok(
        Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_DATE", &d)
            .env("GIT_COMMITTER_DATE", &d)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t"),
    );
}

/// A work tree being turned into `srv/acme/<name>.git`, one step at a time.
pub(crate) struct Repo {
    work: std::path::PathBuf,
    date: u64,
}

impl Repo {
    pub(crate) fn new(srv: &Path, name: &str) -> Repo {
        let work = srv.join(format!("work-{name}"));
        std::fs::create_dir_all(&work).unwrap();
        git_in(&work, &["init", "-q", "-b", "main"], 0);
        Repo { work, date: 1_700_000_000 + name.len() as u64 * 7919 }
    }
    pub(crate) fn write(&mut self, path: &str, data: &str) -> &mut Repo {
        let p = self.work.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
        self
    }
    pub(crate) fn rm(&mut self, path: &str) -> &mut Repo {
        std::fs::remove_file(self.work.join(path)).unwrap();
        self
    }
    pub(crate) fn commit(&mut self, msg: &str) -> &mut Repo {
        self.date += 3600;
        git_in(&self.work, &["add", "-A"], self.date);
        git_in(&self.work, &["commit", "-q", "--allow-empty", "-m", msg], self.date);
        self
    }
    pub(crate) fn tag(&mut self, t: &str) -> &mut Repo {
        git_in(&self.work, &["tag", t], self.date);
        self
    }
    pub(crate) fn head(&self) -> String {
        let out = Command::new("git").current_dir(&self.work).args(["rev-parse", "HEAD"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }
    pub(crate) fn git(&mut self, args: &[&str]) -> &mut Repo {
        git_in(&self.work, args, self.date);
        self
    }
    pub(crate) fn publish(&self, srv: &Path, name: &str) {
        let bare = srv.join(format!("acme/{name}.git"));
        std::fs::create_dir_all(bare.parent().unwrap()).unwrap();
        run_ok(
            Command::new("git")
                .args(["clone", "-q", "--bare"])
                .arg(&self.work)
                .arg(&bare)
                .env("GIT_CONFIG_GLOBAL", "/dev/null"),
        );
    }
}

pub(crate) const M: &str = "corp.test/acme";

/// Build the corpus; returns the queries (module@query) and the modules to list.
fn corpus(srv: &Path) -> (Vec<String>, Vec<String>) {
    let mut q = Vec::new();
    let mut lists = Vec::new();
    let gomod = |m: &str, go: &str| format!("module {m}\n\ngo {go}\n");
    let mut mk = |name: &str, build: &dyn Fn(&mut Repo, &str), queries: &[&str], list: &[&str]| {
        let mut r = Repo::new(srv, name);
        let m = format!("{M}/{name}.git");
        build(&mut r, &m);
        r.publish(srv, name);
        q.extend(queries.iter().map(|s| s.replace("M", &m)));
        lists.extend(list.iter().map(|s| s.replace("M", &m)));
    };
    mk(
        "tags",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).write("a.go", "package a\n").commit("1").tag("v1.0.0");
            r.write("b.go", "package a\n").commit("2").tag("v1.1.0");
        },
        &["M@v1.0.0", "M@v1.1.0", "M@latest", "M@v1"],
        &["M"],
    );
    mk(
        "nogomod",
        &|r, _| {
            r.write("a.go", "package a\n").commit("1").tag("v1.0.0");
            r.write("b.go", "package a\n").commit("2").tag("v2.0.0");
            r.write("c.go", "package a\n").commit("3").tag("v3.0.0-rc.1");
        },
        &["M@v1.0.0", "M@v2.0.0", "M@v2.0.0+incompatible", "M@v3.0.0-rc.1+incompatible", "M@latest"],
        &["M"],
    );
    mk(
        "gomodlater",
        &|r, m| {
            r.write("a.go", "package a\n").commit("1").tag("v1.0.0");
            r.write("b.go", "package a\n").commit("2").tag("v2.0.0");
            r.write("go.mod", &gomod(m, "1.21")).commit("3").tag("v1.0.1");
        },
        &["M@latest", "M@v2.0.0+incompatible"],
        &["M"],
    );
    mk(
        "majorsub",
        &|r, m| {
            r.write("LICENSE", "root license\n").write("a.go", "package a\n");
            r.write("v2/go.mod", &gomod(&format!("{m}/v2"), "1.21"))
                .write("v2/b.go", "package b\n")
                .commit("1")
                .tag("v2.0.0");
        },
        &["M@v2.0.0", "M@v2.0.0+incompatible", "M/v2@v2.0.0", "M/v2@latest"],
        &["M", "M/v2"],
    );
    mk(
        "majorbranch",
        &|r, m| {
            r.write("go.mod", &gomod(&format!("{m}/v2"), "1.21"))
                .write("a.go", "package a\n")
                .commit("1")
                .tag("v2.0.0");
            r.write("b.go", "package a\n").commit("2");
        },
        &["M/v2@v2.0.0", "M@v2.0.0", "M/v2@main", "M/v2@latest"],
        &["M/v2"],
    );
    mk(
        "subdir",
        &|r, m| {
            r.write("LICENSE", "root\n").write("go.mod", &gomod(m, "1.21")).write("a.go", "package a\n");
            r.write("sub/go.mod", &gomod(&format!("{m}/sub"), "1.21")).write("sub/s.go", "package s\n");
            r.commit("1").tag("v1.0.0").tag("sub/v1.0.0");
            r.write("sub/t.go", "package s\n").commit("2").tag("sub/v1.1.0");
        },
        &["M@v1.0.0", "M/sub@v1.0.0", "M/sub@v1.1.0", "M/sub@latest", "M/sub@main"],
        &["M", "M/sub"],
    );
    mk(
        "subnogomod",
        &|r, _| {
            r.write("sub/s.go", "package s\n").commit("1").tag("sub/v1.0.0");
        },
        &["M/sub@v1.0.0", "M/sub@latest"],
        &["M/sub"],
    );
    mk(
        "untagged",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1");
            r.write("a.go", "package a\n").commit("2");
            r.write("b.go", "package a\n").commit("3");
        },
        &["M@latest", "M@main", "M@HEAD"],
        &["M"],
    );
    mk(
        "afterrelease",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v1.2.9");
            r.write("a.go", "package a\n").commit("2");
            r.git(&["checkout", "-q", "-b", "pre"]).write("p.go", "package a\n").commit("3").tag("v1.3.0-rc.1");
            r.write("q.go", "package a\n").commit("4");
            r.git(&["checkout", "-q", "main"]);
        },
        &["M@main", "M@pre", "M@latest", "M@v1.3.0-rc.1"],
        &["M"],
    );
    mk(
        "branchoff",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v1.0.0");
            r.git(&["branch", "old"]);
            r.write("a.go", "package a\n").commit("2").tag("v1.5.0");
            r.git(&["checkout", "-q", "old"]).write("o.go", "package a\n").commit("3");
            r.git(&["checkout", "-q", "main"]);
            r.git(&["tag", "release"]).git(&["branch", "release", "old"]);
        },
        &["M@old", "M@release", "M@v1.5.0"],
        &["M"],
    );
    mk(
        "v2untagged",
        &|r, m| {
            r.write("go.mod", &gomod(&format!("{m}/v2"), "1.21")).commit("1");
        },
        &["M/v2@latest", "M/v2@main"],
        &["M/v2"],
    );
    mk(
        "oddtags",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v1.2");
            r.write("a.go", "package a\n").commit("2").tag("1.2.3");
            r.write("b.go", "package a\n").commit("3").tag("v1.2.3+meta");
            r.write("c.go", "package a\n").commit("4");
        },
        &["M@latest", "M@v1.2.3+meta", "M@main"],
        &["M"],
    );
    mk(
        "annotated",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1");
            r.date += 100;
            r.git(&["tag", "-a", "-m", "release", "v1.0.0"]);
        },
        &["M@v1.0.0"],
        &["M"],
    );
    mk(
        "retracted",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v1.0.0");
            r.write("go.mod", &format!("{}retract v1.1.0\n", gomod(m, "1.21"))).commit("2").tag("v1.1.0");
        },
        &["M@latest", "M@main", "M@v1.1.0"],
        &["M"],
    );
    for (name, go) in [("vendor123", "1.23"), ("vendor124", "1.24"), ("vendornone", "")] {
        mk(
            name,
            &|r, m| {
                let gm = if go.is_empty() { format!("module {m}\n") } else { gomod(m, go) };
                r.write("go.mod", &gm).write("vendor/modules.txt", "# x\n").write("vendor/a/a.go", "package a\n");
                r.write("vendor/top.go", "package v\n")
                    .write("pkg/vendor/vendor.go", "package v\n")
                    .write("pkg/vendor/x/x.go", "package x\n");
                r.commit("1").tag("v1.0.0");
            },
            &["M@v1.0.0"],
            &[],
        );
    }
    mk(
        "nested",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21"))
                .write("a.go", "package a\n")
                .write("x/go.mod", "module other\n")
                .write("x/x.go", "package x\n");
            r.write("y/GO.MOD", "module y\n").write("y/y.go", "package y\n").write(".hg_archival.txt", "x\n");
            std::os::unix::fs::symlink("a.go", r.work.join("link.go")).unwrap();
            r.commit("1").tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "collision",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21"))
                .write("a.go", "package a\n")
                .write("A.go", "package a\n")
                .commit("1")
                .tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "badname",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).write("bad:name.go", "package a\n").commit("1").tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "attrs",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21"))
                .write(".gitattributes", "ign export-ignore\ns export-subst\nc.txt eol=crlf\ni.txt ident\n");
            r.write("ign", "ignored?\n")
                .write("s", "$Format:%H$\n")
                .write("c.txt", "one\ntwo\n")
                .write("i.txt", "$Id$\n");
            r.write("w.txt", "crlf\r\nin repo\r\n");
            r.commit("1").tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "biglicense",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21"))
                .write("LICENSE", &"x".repeat((16 << 20) + 1))
                .commit("1")
                .tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "removed",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).write("a.go", "package a\n").commit("1").tag("v1.0.0");
            r.rm("a.go").commit("2").tag("v1.0.1");
        },
        &["M@v1.0.1", "M@v9.9.9", "M@nosuchbranch"],
        &["M"],
    );
    mk(
        "subownlicense",
        &|r, m| {
            r.write("LICENSE", "root\n").write("go.mod", &gomod(m, "1.21"));
            r.write("sub/go.mod", &gomod(&format!("{m}/sub"), "1.21"))
                .write("sub/LICENSE", "sub's own\n")
                .write("sub/s.go", "package s\n");
            r.commit("1").tag("sub/v1.0.0");
        },
        &["M/sub@v1.0.0"],
        &[],
    );
    mk(
        "textauto",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).write(".gitattributes", "* text=auto\n*.bin binary\n");
            r.write("t.txt", "a\r\nb\r\n").write("x.bin", "a\r\nb\r\n").commit("1").tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "biggomod",
        &|r, m| {
            r.write("go.mod", &format!("{}// {}\n", gomod(m, "1.21"), "x".repeat(16 << 20))).commit("1").tag("v1.0.0");
        },
        &["M@v1.0.0"],
        &[],
    );
    mk(
        "prerelonly",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v0.1.0-alpha.1");
            r.write("a.go", "package a\n").commit("2").tag("v0.1.0-beta");
            r.write("b.go", "package a\n").commit("3");
        },
        &["M@latest", "M@main", "M@v0.1.0-beta"],
        &["M"],
    );
    mk(
        "gomodmajor",
        &|r, m| {
            r.write("go.mod", &gomod(m, "1.21")).commit("1").tag("v1.0.0").tag("v2.0.0");
        },
        &["M@v2.0.0", "M@v2.0.0+incompatible", "M/v2@v2.0.0"],
        &["M"],
    );
    // Commits by hash (full and short): the pseudo-version of an untagged commit, the tag of a
    // tagged one, and a pseudo-version naming a tagged commit.
    let mut r = Repo::new(srv, "byhash");
    let m = format!("{M}/byhash.git");
    r.write("go.mod", &gomod(&m, "1.21")).commit("1").tag("v1.0.0");
    let tagged = r.head();
    r.write("a.go", "package a\n").commit("2");
    let untagged = r.head();
    r.publish(srv, "byhash");
    q.extend([
        format!("{m}@{tagged}"),
        format!("{m}@{}", &untagged[..12]),
        format!("{m}@{untagged}"),
        format!("{m}@v1.0.1-0.20000101000000-{}", &untagged[..12]),
        format!("{m}@deadbeefdead"),
    ]);
    (q, lists)
}

#[derive(Debug, PartialEq)]
pub(crate) struct Outcome {
    pub(crate) version: String,
    pub(crate) sum: String,
    pub(crate) gomodsum: String,
    pub(crate) failed: bool,
}

fn go(env: &[(String, String)], dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(go_bin());
    cmd.current_dir(dir).args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

pub(crate) fn download(env: &[(String, String)], dir: &Path, query: &str) -> (Outcome, String) {
    let (ok, out, err) = go(env, dir, &["mod", "download", "-json", query]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let failed = !ok || !s("Error").is_empty();
    let o = Outcome { version: s("Version"), sum: s("Sum"), gomodsum: s("GoModSum"), failed };
    (o, format!("{}{err}", s("Error")))
}

pub(crate) fn base_env(d: &Path, name: &str) -> Vec<(String, String)> {
    let path = format!(
        "{}:{}:{}",
        go_bin().parent().unwrap().display(),
        gocred_bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    [
        ("HOME", d.join("home").display().to_string()),
        ("XDG_CACHE_HOME", d.join("home/.cache").display().to_string()),
        ("XDG_CONFIG_HOME", d.join("home/.config").display().to_string()),
        ("PATH", path),
        ("GOTOOLCHAIN", "local".into()),
        ("GOMODCACHE", d.join(format!("cache-{name}")).display().to_string()),
        ("GOPATH", d.join("gopath").display().to_string()),
        ("GOCACHE", d.join("gocache").display().to_string()),
        ("GOENV", "off".into()),
        ("GOSUMDB", "off".into()),
        ("GOFLAGS", "-mod=mod".into()),
        ("GIT_TERMINAL_PROMPT", "0".into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
        ("SSH_AUTH_SOCK", String::new()),
        ("USER", "alice".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The test git smart-HTTP server over `srv` on `port`, with `auth` (its auth options), running.
pub(crate) fn git_server(srv: &Path, port: u16, auth: &[&str]) -> Proc {
    let mut up = Command::new("python3");
    up.arg(repo_root().join("tests/peers/git_http_server.py"))
        .args(["--port", &port.to_string()])
        .args(auth)
        .arg("--git-root")
        .arg(srv);
    let mut upstream = Proc::spawn("git-upstream", up);
    upstream.wait_stdout("listening", Duration::from_secs(10));
    upstream
}

/// The go command itself, from git (`https://corp.test/` rewritten to the server on `port`).
pub(crate) fn direct_env(d: &Path, port: u16) -> Vec<(String, String)> {
    let direct_cfg = d.join("direct.gitconfig");
    std::fs::write(&direct_cfg, format!("[url \"http://127.0.0.1:{port}/\"]\n\tinsteadOf = https://corp.test/\n"))
        .unwrap();
    let mut denv = base_env(d, "direct");
    denv.extend([
        ("GOPROXY".to_string(), "direct".to_string()),
        ("GOPRIVATE".to_string(), "corp.test".to_string()),
        ("GIT_CONFIG_GLOBAL".to_string(), direct_cfg.display().to_string()),
    ]);
    std::fs::create_dir_all(d.join("home")).unwrap();
    denv
}

/// A broker over TLS where alice may download `corp.test/*` from one git upstream
/// (`creds`: its `credentials = …` line, or empty), logged in; returns it and the client env
/// (`GOPROXY=<broker>/mod,off` + `GOAUTH`).
fn corpus_broker(d: &Path, port: u16, creds: &str, env: &[(&str, &str)]) -> (SshBroker, Vec<(String, String)>) {
    corpus_broker_in(tempfile::tempdir().unwrap(), d, port, creds, env)
}

/// [`corpus_broker`] with `token = secret` stored at `upstreams/corpus` first, the documented
/// way: `gocred secrets put` reading it from stdin, into the broker's file backend.
pub(crate) fn corpus_broker_seeded(
    d: &Path,
    port: u16,
    creds: &str,
    env: &[(&str, &str)],
    secret: &str,
) -> (SshBroker, Vec<(String, String)>) {
    use std::io::Write;
    let bdir = tempfile::tempdir().unwrap();
    let seed = bdir.path().join("seed.toml");
    std::fs::write(
        &seed,
        "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"secrets.enc\"\n",
    )
    .unwrap();
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    let mut child = gocred_cmd(
        &["secrets", "--config", seed.to_str().unwrap(), "put", "upstreams/corpus"],
        &[("GOCRED_FILE_KEY", &key)],
    )
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(format!("token={secret}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "secrets put: {}", String::from_utf8_lossy(&out.stderr));
    corpus_broker_in(bdir, d, port, creds, env)
}

pub(crate) fn corpus_broker_in(
    bdir: tempfile::TempDir,
    d: &Path,
    port: u16,
    creds: &str,
    env: &[(&str, &str)],
) -> (SshBroker, Vec<(String, String)>) {
    corpus_broker_store(bdir, d, port, creds, env, "[store]\ndir = \"store\"\n")
}

/// [`corpus_broker_in`] with `store` as its `[store]` section.
pub(crate) fn corpus_broker_store(
    bdir: tempfile::TempDir,
    d: &Path,
    port: u16,
    creds: &str,
    env: &[(&str, &str)],
    store: &str,
) -> (SshBroker, Vec<(String, String)>) {
    let b = bdir.path();
    let tls = gocred::tls::ensure_dev_ca(&b.join("tls")).unwrap();
    let pol = b.join("policies");
    std::fs::create_dir_all(&pol).unwrap();
    std::fs::copy(repo_root().join("policies/gocred.cedarschema"), pol.join("gocred.cedarschema")).unwrap();
    std::fs::copy(repo_root().join("policies/gocred.cedar"), pol.join("gocred.cedar")).unwrap();
    std::fs::write(
        pol.join("corpus.cedar"),
        "@id(\"alice-corpus\")\npermit (principal == User::\"alice\", action == Action::\"download\", resource)\nwhen { resource.folded_path like \"corp.test/*\" };\n",
    )
    .unwrap();
    let extra = format!(
        "[[upstreams]]\nname = \"corpus\"\nkind = \"git\"\nhosts = [\"corp.test\"]\nurl = \"http://127.0.0.1:{port}\"\n{creds}\n\
         [server.tls]\ncert = \"{}\"\nkey = \"{}\"\n{store}",
        tls.cert.display(),
        tls.key.display()
    );
    let broker = SshBroker::start_in_env(bdir, "", &extra, env);
    // A key already there (another replica's, copied) is authorized as it is.
    let key = match broker.path("alice").exists() {
        true => {
            broker.authorize("alice", &broker.path("alice"));
            broker.path("alice")
        }
        false => broker.add_user_key("alice", "alice", "ed25519"),
    };
    // Behind a balancer the broker's public URL is the one clients use.
    let url = env
        .iter()
        .find(|(k, _)| *k == "GOCRED_SERVER__PUBLIC_URL")
        .map_or(broker.g.url.clone(), |(_, v)| v.to_string());
    let mut benv = base_env(d, "broker");
    benv.push(("SSL_CERT_FILE".into(), tls.ca_cert.display().to_string()));
    let e: Vec<(&str, &str)> = benv.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let (code, out, err) = Gocred::run(&["login", "--ssh", key.to_str().unwrap(), "--broker", &url], &e);
    assert_eq!(code, 0, "login: {out}{err}");
    let me = gocred_bin().display().to_string();
    benv.extend([
        ("GOPROXY".to_string(), format!("{url}/mod,off")),
        ("GOAUTH".to_string(), format!("{me} goauth")),
        ("GONOSUMDB".to_string(), "corp.test".to_string()),
        ("GIT_CONFIG_GLOBAL".to_string(), "/dev/null".to_string()),
    ]);
    (broker, benv)
}

#[tokio::test(flavor = "multi_thread")]
async fn git_hosted_modules_through_the_broker_match_the_go_command_direct_from_git() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    let (queries, lists) = corpus(&srv);
    assert!(queries.len() >= 50, "{}", queries.len());
    let port = free_port();
    let upstream = git_server(&srv, port, &["--anonymous"]);

    let (broker, benv) = corpus_broker(d, port, "", &[]);
    let denv = direct_env(d, port);

    let mut mismatches = Vec::new();
    let (mut ok_count, mut fail_count) = (0, 0);
    for q in &queries {
        // Fresh module caches for every query on both sides.
        for side in ["direct", "broker"] {
            let c = d.join(format!("cache-{side}"));
            if c.exists() {
                run_ok(Command::new("chmod").args(["-R", "u+w"]).arg(&c));
                std::fs::remove_dir_all(&c).unwrap();
            }
        }
        let (direct, dtext) = download(&denv, d, q);
        let (via, vtext) = download(&benv, d, q);
        if direct.failed {
            fail_count += 1
        } else {
            ok_count += 1
        }
        if direct != via {
            mismatches.push(format!("{q}:\n  direct {direct:?} {dtext}\n  broker {via:?} {vtext}"));
        }
    }
    // `go list -m -versions` from a consumer module.
    let app = d.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(app.join("go.mod"), "module example.com/app\n\ngo 1.21\n").unwrap();
    for m in &lists {
        let arg = format!("{m}@latest");
        let (dok, dout, _) = go(&denv, &app, &["list", "-m", "-versions", &arg]);
        let (vok, vout, verr) = go(&benv, &app, &["list", "-m", "-versions", &arg]);
        if (dok, dout.trim()) != (vok, vout.trim()) {
            mismatches.push(format!("list {m}: direct {dok} {dout:?} / broker {vok} {vout:?} {verr}"));
        }
    }
    let log: Vec<String> =
        broker.g.proc.stderr().into_iter().filter(|l| l.contains("ERROR") || l.contains("WARN")).collect();
    assert!(
        mismatches.is_empty(),
        "{} of {} queries differ:\n{}\nbroker log:\n{}",
        mismatches.len(),
        queries.len(),
        mismatches.join("\n"),
        log.join("\n")
    );
    assert!(ok_count >= 30 && fail_count >= 8, "the corpus covers successes ({ok_count}) and refusals ({fail_count})");
    // Nothing but the broker's own requests reached the upstream for the broker side, and git
    // never saw a credential on its command line: there is none to see (anonymous here; the
    // credential path is covered by the proxy tests).
    drop(upstream);
}

/// An authenticated git upstream: the credential reaches git only through the broker's private
/// config file (never argv, never the environment — a `git` wrapper records both), 50 clients
/// asking for one version at the same moment cause one `git archive`, and everyone gets the
/// same zip; the secret is in no log and no file outside the broker's store.
#[tokio::test(flavor = "multi_thread")]
async fn git_module_credential_stays_in_a_private_file_and_one_build_serves_fifty_clients() {
    const SECRET: &str = "s3cr3t-upstream-t0ken-4f9a";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    let mut r = Repo::new(&srv, "lib");
    // ~8 MB that does not compress: the build takes long enough for the requests to overlap.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let noise: String = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'!' + (x % 90) as u8) as char
        })
        .collect();
    r.write("go.mod", &format!("module {M}/lib.git\n\ngo 1.21\n")).write("data.txt", &noise);
    r.commit("1").tag("v1.0.0");
    r.publish(&srv, "lib");
    // A repository in a subgroup, named without `.git`: found through the upstream's go-import.
    let mut deep = Repo::new(&srv, "deep");
    deep.write("go.mod", "module corp.test/group/sub/deep\n\ngo 1.21\n").write("d.go", "package deep\n");
    deep.write("tools/go.mod", "module corp.test/group/sub/deep/tools\n\ngo 1.21\n")
        .write("tools/t.go", "package tools\n");
    deep.commit("1").tag("v1.2.0").tag("tools/v0.1.0");
    deep.publish(&srv, "deep");
    std::fs::create_dir_all(srv.join("group/sub")).unwrap();
    std::fs::rename(srv.join("acme/deep.git"), srv.join("group/sub/deep.git")).unwrap();
    let port = free_port();
    let upstream = git_server(&srv, port, &["--bearer", SECRET, "--go-import-host", "corp.test"]);

    // A `git` first on the broker's PATH that logs its argv and environment, then runs git.
    let bin = d.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = d.join("git.log");
    let real = String::from_utf8(Command::new("sh").args(["-c", "command -v git"]).output().unwrap().stdout).unwrap();
    std::fs::write(
        bin.join("git"),
        format!(
            "#!/bin/sh\n{{ printf 'ARGV'; for a in \"$@\"; do printf ' %s' \"$a\"; done; printf '\\n'; env | sed 's/^/ENV /'; }} >> '{}'\nexec {} \"$@\"\n",
            log.display(),
            real.trim()
        ),
    )
    .unwrap();
    run_ok(Command::new("chmod").arg("755").arg(bin.join("git")));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let (broker, benv) =
        corpus_broker_seeded(d, port, "credentials = \"vault:upstreams/corpus\"", &[("PATH", &path)], SECRET);

    // 50 go commands at once, each with its own module cache.
    let m = format!("{M}/lib.git@v1.0.0");
    let runs: Vec<_> = (0..50)
        .map(|i| {
            let mut env = benv.clone();
            for (k, v) in env.iter_mut() {
                if k == "GOMODCACHE" {
                    *v = d.join(format!("cache-{i}")).display().to_string();
                }
            }
            let (dd, m) = (d.to_path_buf(), m.clone());
            std::thread::spawn(move || download(&env, &dd, &m))
        })
        .collect();
    let outcomes: Vec<(Outcome, String)> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    let first = &outcomes[0].0;
    assert!(!first.failed && first.sum.starts_with("h1:"), "{:?}", outcomes[0]);
    for (o, text) in &outcomes {
        let warns: Vec<String> =
            broker.g.proc.stderr().into_iter().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
        assert_eq!(o, first, "every client gets the same module: {text} {warns:#?}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    let archives = logged.lines().filter(|l| l.starts_with("ARGV") && l.contains(" archive ")).count();
    assert_eq!(archives, 1, "one git archive for 50 simultaneous clients");
    assert!(logged.lines().any(|l| l.contains("ls-remote")), "git did reach the authenticated upstream");
    // The secret: not on any git command line or in any git environment, not in the broker's
    // output or audit log, and in no file in clear: git reaches the upstream through the
    // broker's loopback door, which adds the credential per request.
    assert!(!logged.contains(SECRET), "the credential reached git's argv or environment");
    let mut out = broker.g.proc.stdout();
    out.extend(broker.g.proc.stderr());
    assert!(!out.join("\n").contains(SECRET), "the credential is in the broker's output");
    let mut holders = Vec::new();
    for root in [d, broker.dir.path()] {
        for e in walk(root) {
            if std::fs::read(&e).is_ok_and(|b| b.windows(SECRET.len()).any(|w| w == SECRET.as_bytes())) {
                holders.push(e);
            }
        }
    }
    assert!(holders.is_empty(), "the credential is in clear in {holders:?}");

    for (q, want) in
        [("corp.test/group/sub/deep@latest", "v1.2.0"), ("corp.test/group/sub/deep/tools@latest", "v0.1.0")]
    {
        let (o, text) = download(&benv, d, q);
        assert!(!o.failed && o.version == want && o.sum.starts_with("h1:"), "{q}: {o:?} {text}");
    }
    // A repository the upstream does not have is "not found" (the go command probes path
    // prefixes and needs 404/410: with `GOPROXY=<broker>/mod,off` it then moves on to `off`);
    // an upstream that is down is a 502 with one line go prints.
    let (o, text) = download(&benv, d, &format!("{M}/nosuch.git@latest"));
    assert!(o.failed && text.contains("module lookup disabled by GOPROXY=off"), "{text}");
    drop(upstream);
    std::thread::sleep(Duration::from_millis(2500)); // past the refs cache
    let (o, text) = download(&benv, d, &format!("{M}/lib.git@main"));
    assert!(
        o.failed && text.contains("502 Bad Gateway") && text.contains("server response: gocred: upstream corpus"),
        "{text}"
    );
    assert!(!text.contains(SECRET), "{text}");
}

/// `…/secret.git` and `…/secret` are one repository: a forbid written on the repository's
/// path (not `folded_path`) also holds for the `.git` spelling and its subdirectories, and the
/// upstream sees none of the denied requests. A permitted module still downloads.
#[tokio::test(flavor = "multi_thread")]
async fn git_module_alias_spellings_are_decided_on_the_repository_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    for name in ["secret", "open"] {
        let mut r = Repo::new(&srv, name);
        r.write("go.mod", &format!("module {M}/{name}.git\n\ngo 1.21\n")).write("x.go", "package x\n");
        r.commit("1").tag("v1.0.0");
        r.publish(&srv, name);
    }
    let port = free_port();
    let upstream = git_server(&srv, port, &["--anonymous", "--go-import-host", "corp.test"]);
    let bdir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(bdir.path().join("policies")).unwrap();
    std::fs::write(
        bdir.path().join("policies/secret.cedar"),
        "@id(\"secret-exact\")\nforbid (principal, action == Action::\"download\", resource)\n\
         when { resource.path == \"corp.test/acme/secret\" || resource.path like \"corp.test/acme/secret/*\" };\n",
    )
    .unwrap();
    let (_broker, benv) = corpus_broker_in(bdir, d, port, "", &[]);
    let before = upstream.stderr().len();
    for q in [format!("{M}/secret.git@v1.0.0"), format!("{M}/secret.git/sub@latest"), format!("{M}/secret@v1.0.0")] {
        let (o, text) = download(&benv, d, &q);
        assert!(o.failed && text.contains("forbidden by policy secret-exact"), "{q}: {text}");
    }
    let reached: Vec<String> = upstream.stderr()[before..].to_vec();
    assert!(reached.is_empty(), "the upstream saw denied requests: {reached:#?}");
    let (o, text) = download(&benv, d, &format!("{M}/open.git@v1.0.0"));
    assert!(!o.failed && o.sum.starts_with("h1:"), "{text}");
    assert!(upstream.stderr().len() > before, "the permitted module was fetched from the upstream");
}

pub(crate) fn walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        if md.is_dir() {
            stack.extend(std::fs::read_dir(&p).into_iter().flatten().flatten().map(|e| e.path()));
        } else if md.is_file() {
            out.push(p);
        }
    }
    out
}

fn urandom(path: &Path, bytes: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    run_ok(Command::new("sh").arg("-c").arg(format!("head -c {bytes} /dev/urandom > '{}'", path.display())));
}

/// `VmHWM` (peak resident set) and `VmRSS` of `pid`, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// `go mod download -json` of `mods` in one go command with a fresh module cache named `cache`;
/// (seconds, the `Sum` of each module in order).
fn timed_download(env: &[(String, String)], d: &Path, cache: &str, mods: &[String]) -> (f64, Vec<String>) {
    let mut env = env.to_vec();
    for (k, v) in env.iter_mut() {
        if k == "GOMODCACHE" {
            *v = d.join(cache).display().to_string();
        }
    }
    let mut args = vec!["mod", "download", "-json"];
    args.extend(mods.iter().map(String::as_str));
    let t = std::time::Instant::now();
    let (ok, out, err) = go(&env, d, &args);
    let secs = t.elapsed().as_secs_f64();
    assert!(ok, "{cache}: {err}{out}");
    let sums = serde_json::Deserializer::from_str(&out)
        .into_iter::<serde_json::Value>()
        .map(|v| v.unwrap()["Sum"].as_str().unwrap().to_string())
        .collect();
    (secs, sums)
}

/// The numbers BENCHMARKS.md reports ("git-hosted modules"): 20 private versions (10
/// repositories × 2, one version carrying 20 MB) downloaded by the real go command directly from
/// git vs through `/mod/` with a cold broker, then a warm one, fresh module caches each time, the
/// same sums; then a 200 MB module through the broker with its peak RSS. Asserted loosely (these
/// machines are noisy); the printed ratios are the result.
#[tokio::test(flavor = "multi_thread")]
async fn bench_go_mod_download_direct_vs_broker_and_broker_rss() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    let mut mods = Vec::new();
    for i in 0..10 {
        let name = format!("bench{i}");
        let mut r = Repo::new(&srv, &name);
        let m = format!("{M}/{name}.git");
        r.write("go.mod", &format!("module {m}\n\ngo 1.21\n"));
        for f in 0..20 {
            r.write(&format!("pkg/f{f}.go"), &format!("package pkg\n\n// F{f} is {i}.\nconst F{f} = {i}\n"));
        }
        r.commit("1").tag("v1.0.0");
        if i == 0 {
            urandom(&r.work.join("testdata/blob.bin"), 20 << 20);
        }
        r.write("extra.go", "package pkg\n").commit("2").tag("v1.1.0");
        r.publish(&srv, &name);
        mods.extend([format!("{m}@v1.0.0"), format!("{m}@v1.1.0")]);
    }
    let mut big = Repo::new(&srv, "big");
    let bm = format!("{M}/big.git");
    big.write("go.mod", &format!("module {bm}\n\ngo 1.21\n"));
    for k in 0..4 {
        urandom(&big.work.join(format!("data/part{k}.bin")), 50 << 20);
    }
    big.commit("1").tag("v1.0.0");
    big.publish(&srv, "big");

    let port = free_port();
    let upstream = git_server(&srv, port, &["--anonymous"]);
    // One principal downloading 100 × 20 versions in seconds: above the default per-principal
    // rate (100/s, burst 1000), which is the operator's to raise for such a load.
    // MALLOC_ARENA_MAX=2 as the Helm chart sets it: with glibc's default (8 per core) the
    // threads moving a 200 MB pack keep freed memory in their own arenas (+28 MB measured).
    let (broker, benv) =
        corpus_broker(d, port, "", &[("GOCRED_LIMITS__REQUESTS_PER_SECOND", "100000"), ("MALLOC_ARENA_MAX", "2")]);
    let denv = direct_env(d, port);

    let (direct, dsums) = timed_download(&denv, d, "cache-direct", &mods);
    let (cold, csums) = timed_download(&benv, d, "cache-cold", &mods);
    let (warm, wsums) = timed_download(&benv, d, "cache-warm", &mods);
    assert_eq!(dsums, csums, "the broker serves what go builds itself");
    assert_eq!(dsums, wsums);
    println!(
        "bench git modules: 20 versions (one 20 MB): direct {direct:.2}s, broker cold {cold:.2}s ({:.2}x), broker warm {warm:.2}s ({:.2}x)",
        cold / direct,
        warm / direct
    );
    // Release builds hold the targets (BENCHMARKS.md); a debug build (the test suite on
    // a loaded 2-core machine) gets room.
    let (cold_max, warm_max) = if cfg!(debug_assertions) { (3.0, 1.5) } else { (1.2, 0.3) };
    assert!(cold / direct < cold_max, "cold through the broker {cold:.2}s vs direct {direct:.2}s");
    assert!(warm / direct < warm_max, "warm store {warm:.2}s vs direct {direct:.2}s");
    // The S3 backend (s3s-fs) vs the local one: another broker, same upstream, same versions.
    let s3port = free_port();
    let _s3 = crate::store::s3_server(&d.join("s3"), s3port);
    let aws = [("AWS_ACCESS_KEY_ID", "AKTEST"), ("AWS_SECRET_ACCESS_KEY", "SKTEST-secret")];
    // Its own client home: logging in to it must not replace the first broker's session.
    let s3client = d.join("s3client");
    std::fs::create_dir_all(&s3client).unwrap();
    let (s3broker, s3env) = corpus_broker_store(
        tempfile::tempdir().unwrap(),
        &s3client,
        port,
        "",
        &aws,
        &crate::store::s3_store_toml(s3port),
    );
    let (s3cold, s3c) = timed_download(&s3env, d, "cache-s3-cold", &mods);
    let (s3warm, s3w) = timed_download(&s3env, d, "cache-s3-warm", &mods);
    assert_eq!(dsums, s3c);
    assert_eq!(dsums, s3w);
    println!(
        "bench module store: 20 versions: s3 cold {s3cold:.2}s ({:.2}x direct), s3 warm {s3warm:.2}s ({:.2}x direct); dir warm {warm:.2}s ({:.2}x)",
        s3cold / direct,
        s3warm / direct,
        warm / direct
    );
    drop(s3broker);

    let pid = broker.g.proc.id();
    let (before, _) = rss_kib(pid);
    let (secs, sums) = timed_download(&benv, d, "cache-big", &[format!("{bm}@v1.0.0")]);
    let (after, now) = rss_kib(pid);
    let zip = walk(&d.join("cache-big/cache/download"))
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "zip"))
        .unwrap();
    let zip_mb = std::fs::metadata(&zip).unwrap().len() as f64 / 1e6;
    println!(
        "bench git modules: 200 MB module ({zip_mb:.0} MB zip) built and served in {secs:.1}s; broker peak RSS {:.1} MB before, {:.1} MB after (now {:.1} MB)",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        now as f64 / 1024.0
    );
    assert!(sums[0].starts_with("h1:"));
    assert!(zip_mb > 200.0, "{zip_mb}");
    assert!(after < 64 * 1024, "broker peak RSS {after} KiB building and serving a 200 MB module");
    let (warm_big, _) = timed_download(&benv, d, "cache-big-warm", &[format!("{bm}@v1.0.0")]);
    let (peak, _) = rss_kib(pid);
    println!(
        "bench module store: 200 MB module from the store in {warm_big:.1}s; broker peak RSS {:.1} MB",
        peak as f64 / 1024.0
    );
    assert!(peak < 64 * 1024, "broker peak RSS {peak} KiB serving a 200 MB module from the store");

    // Every upstream stopped, warm store: N of N runs (fresh module cache each) get the direct sums.
    drop(upstream);
    let runs: usize = std::env::var("GOCRED_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let mut ok = 0;
    let mut times = Vec::new();
    for i in 0..runs {
        let (secs, sums) = timed_download(&benv, d, &format!("cache-down-{i}"), &mods);
        times.push(secs);
        if sums == dsums {
            ok += 1;
        }
        let _ = std::process::Command::new("chmod").args(["-R", "u+w"]).arg(d.join(format!("cache-down-{i}"))).status();
        let _ = std::fs::remove_dir_all(d.join(format!("cache-down-{i}")));
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "bench module store: upstream stopped, warm store: {ok} of {runs} runs of 20 versions succeeded with the direct sums (p50 {:.2}s, max {:.2}s)",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert_eq!(ok, runs);
}

/// The git door (the loopback listener the broker's own git fetches through, which adds the
/// upstream credential): nothing without its key, and with it only reads of a git upstream —
/// the upstream sees none of the refused requests; the one allowed read reaches it with the
/// broker's credential, and the credential is in no answer.
#[tokio::test(flavor = "multi_thread")]
async fn the_git_door_opens_only_with_its_key_and_only_reads() {
    const SECRET: &str = "door-upstream-secret-5d1";
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    crate::store::lib_repo(&srv, "door").publish(&srv, "lib");
    let port = free_port();
    let up = git_server(&srv, port, &["--bearer", SECRET]);
    let creds = "credentials = \"vault:upstreams/corpus\"";
    let (b, env) = corpus_broker_seeded(d, port, creds, &[], SECRET);
    let (o, text) = download(&env, d, &format!("{M}/lib.git@v1.0.0"));
    assert!(!o.failed, "a first build through the door: {text}");

    // The door's URL and key, from the broker's private git config (the only place they are).
    let (base, key) = walk(b.dir.path())
        .into_iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|t| {
            let url = t.split("[http \"").nth(1)?.split("/\"]").next()?.to_string();
            let key = t.split("Authorization: ").nth(1)?.split('"').next()?.to_string();
            Some((url, key))
        })
        .expect("a git config naming the door");
    assert!(base.starts_with("http://127.0.0.1:") && base.ends_with("/0"), "{base}");
    let root = base.trim_end_matches("/0").to_string();
    let c = client(None);
    let reqs = |up: &Proc| up.stderr().iter().filter(|l| l.starts_with("REQ ")).count();
    let before = reqs(&up);
    let refs = format!("{base}/acme/lib.git/info/refs?service=git-upload-pack");
    let send = |m: reqwest::Method, url: String, auth: Option<&str>| {
        let mut r = c.request(m, url);
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    use reqwest::Method;
    for (m, url, auth, want) in [
        (Method::GET, refs.clone(), None, 401),
        (Method::GET, refs.clone(), Some("Bearer not-the-key"), 401),
        (Method::GET, refs.clone(), Some(&format!("Basic {key}")[..]), 401),
        (Method::GET, format!("{base}/acme/lib.git/info/refs?service=git-receive-pack"), Some(&key[..]), 403),
        (Method::POST, format!("{base}/acme/lib.git/git-receive-pack"), Some(&key[..]), 403),
        (Method::GET, format!("{refs}&service=git-receive-pack"), Some(&key[..]), 403),
        (Method::GET, format!("{base}/acme/lib.git/HEAD"), Some(&key[..]), 403),
        (Method::POST, format!("{base}/acme/lib.git/git-upload-pack?x=1"), Some(&key[..]), 403),
        (Method::GET, format!("{root}/9/acme/lib.git/info/refs?service=git-upload-pack"), Some(&key[..]), 404),
        (Method::GET, format!("{root}/x/acme/lib.git/info/refs?service=git-upload-pack"), Some(&key[..]), 404),
    ] {
        let r = send(m.clone(), url.clone(), auth).await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{m} {url}");
    }
    assert_eq!(reqs(&up), before, "a refused door request reached the upstream");
    let r = send(Method::GET, refs, Some(&key)).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.text().await.unwrap();
    assert!(body.contains("git-upload-pack") && !body.contains(SECRET));
    let seen: Vec<String> = up.stderr().into_iter().filter(|l| l.starts_with("REQ ")).skip(before).collect();
    assert!(seen.len() == 1 && seen[0].contains("auth=Bearer"), "{seen:?}");
}
