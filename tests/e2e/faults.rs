//! The fault-injection suite (issue 14): under each injected fault, `GOCRED_FAULT_RUNS` (default
//! 10; the drill is 100) real `go mod download` runs through the broker, each with a fresh module
//! cache, over a mix of versions already in the store and versions not yet fetched — and **no
//! run may fail**, nor answer other sums than the go command gets direct from git. Each scenario
//! prints its count, p50/p99 download time and the broker's retry/breaker/fallback counters (and
//! appends them to `GOCRED_FAULT_REPORT` when set).
//!
//! The full drill: `GOCRED_FAULT_RUNS=100 GOCRED_FAULT_REPORT=/tmp/faults.txt cargo test --test e2e faults:: -- --test-threads=1 --nocapture`.

use crate::gitmod::{M, Repo, direct_env, git_server};
use crate::harness::*;
use crate::store::{fresh, metric};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Versions in the test repository; those below [`WARM`] are in the store before the drill.
const VERSIONS: usize = 24;
const WARM: usize = 12;
/// The broker's `ls-remote` cache (`modfetch::REFS_TTL`) and a little: waited out before an
/// uncached version, so that each one asks the (faulty) upstream.
const REFS_TTL: Duration = Duration::from_millis(2200);

fn runs() -> usize {
    std::env::var("GOCRED_FAULT_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10)
}

fn version(i: usize) -> String {
    format!("v1.0.{i}")
}

/// The version run `i` downloads: every one in turn (5 is prime to [`VERSIONS`]), half of them
/// warm.
fn pick(i: usize) -> usize {
    i * 5 % VERSIONS
}

/// The versions `runs()` runs download.
fn used() -> Vec<usize> {
    let mut v: Vec<usize> = (0..runs()).map(pick).collect();
    v.sort();
    v.dedup();
    v
}

/// `lib.git` with [`VERSIONS`] tagged versions, published under `srv`.
fn many_versions(srv: &Path) -> Repo {
    let mut r = Repo::new(srv, "lib");
    r.write("go.mod", &format!("module {M}/lib.git\n\ngo 1.21\n"));
    for i in 0..VERSIONS {
        r.write("lib.go", &format!("package lib\n\nconst V = {i}\n"));
        r.commit(&format!("v{i}")).tag(&version(i));
    }
    r.publish(srv, "lib");
    r
}

/// The sums the go command gets direct from a clean git server over `srv`, for the versions
/// the drill uses.
fn direct_sums(d: &Path, srv: &Path) -> HashMap<String, String> {
    let port = free_port();
    let _clean = git_server(srv, port, &["--anonymous"]);
    let env = direct_env(d, port);
    used()
        .into_iter()
        .map(|i| {
            let (o, t) = fresh(&env, d, &format!("{M}/lib.git@{}", version(i)));
            assert!(!o.failed, "direct: {t}");
            (version(i), o.sum)
        })
        .collect()
}

/// One scenario's outcome.
struct Drill {
    name: &'static str,
    failures: Vec<String>,
    times: Vec<Duration>,
}

impl Drill {
    /// `runs()` runs; run `i` downloads version [`pick`]`(i)` (its sum must be `want`'s);
    /// `during` is called before each run (to inject the fault mid-run).
    fn run(
        name: &'static str,
        env: &[(String, String)],
        d: &Path,
        want: &HashMap<String, String>,
        mut during: impl FnMut(usize),
    ) -> Drill {
        let mut drill = Drill { name, failures: Vec::new(), times: Vec::new() };
        let mut seen = std::collections::HashSet::new();
        for i in 0..runs() {
            during(i);
            if pick(i) >= WARM && seen.insert(pick(i)) {
                std::thread::sleep(REFS_TTL);
            }
            let v = version(pick(i));
            let started = Instant::now();
            let (o, t) = fresh(env, d, &format!("{M}/lib.git@{v}"));
            drill.times.push(started.elapsed());
            if o.failed || o.sum != want[&v] {
                drill.failures.push(format!("run {i} {v}: sum {:?} (want {}): {t}", o.sum, want[&v]));
            }
        }
        drill
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut t: Vec<f64> = self.times.iter().map(Duration::as_secs_f64).collect();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        t[((t.len() as f64 - 1.0) * p).round() as usize]
    }

    /// Print (and append to `GOCRED_FAULT_REPORT`) the line, then require zero failures.
    fn report(self, counters: &str) {
        let n = self.times.len();
        let line = format!(
            "fault {}: {}/{n} ok, p50 {:.2}s p99 {:.2}s; {counters}",
            self.name,
            n - self.failures.len(),
            self.percentile(0.5),
            self.percentile(0.99)
        );
        println!("{line}");
        if let Ok(path) = std::env::var("GOCRED_FAULT_REPORT") {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
            writeln!(f, "{line}").unwrap();
        }
        assert!(self.failures.is_empty(), "{line}\n{}", self.failures.join("\n"));
    }
}

/// The broker's resilience counters for upstream `u`, as one line.
fn counters(url: &str, ca: &Path, ups: &[&str]) -> String {
    let mut parts = Vec::new();
    for u in ups {
        let l = |m: &str| metric(url, ca, &format!("{m}{{upstream=\"{u}\"}}"));
        parts.push(format!(
            "{u}: retries {}, breaker opened {}, mirror answers {}",
            l("gocred_upstream_retries_total"),
            l("gocred_upstream_breaker_opened_total"),
            l("gocred_upstream_fallback_answers_total")
        ));
    }
    parts.push(format!("store hits {}", metric(url, ca, "gocred_store_hits_total")));
    parts.join("; ")
}

/// Fetch the drill's versions below `below` through the broker (they are then in its store).
fn warm(env: &[(String, String)], d: &Path, want: &HashMap<String, String>, below: usize) {
    for i in used().into_iter().filter(|i| *i < below) {
        let (o, t) = fresh(env, d, &format!("{M}/lib.git@{}", version(i)));
        assert!(!o.failed && o.sum == want[&version(i)], "warming {}: {t}", version(i));
    }
}

/// (a) The primary git server is killed mid-run; a second git server is configured as its
/// mirror: uncached versions come from the mirror, the primary's breaker opens.
#[tokio::test(flavor = "multi_thread")]
async fn fault_a_primary_killed_mid_run_the_mirror_answers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (srv, srv2) = (d.join("srv"), d.join("srv2"));
    many_versions(&srv).publish(&srv2, "lib");
    let want = direct_sums(d, &srv);
    let (pa, pb) = (free_port(), free_port());
    let mut primary = Some(git_server(&srv, pa, &["--anonymous"]));
    let _mirror = git_server(&srv2, pb, &["--anonymous"]);
    let replica = format!(
        "[[upstreams]]\nname = \"replica\"\nkind = \"git\"\nhosts = [\"corp.test\"]\nurl = \"http://127.0.0.1:{pb}\"\n\
         [store]\ndir = \"store\"\n"
    );
    let bdir = tempfile::tempdir().unwrap();
    let ca = bdir.path().join("tls/ca.pem");
    let (b, env) =
        crate::gitmod::corpus_broker_store(bdir, d, pa, "mirrors = [\"replica\"]\ntimeout = \"5s\"\n", &[], &replica);
    warm(&env, d, &want, WARM);
    // Killed before the middle one of the runs that first ask for an uncached version: half of
    // those must come from the mirror.
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<usize> = (0..runs()).filter(|i| pick(*i) >= WARM && seen.insert(pick(*i))).collect();
    let kill_at = firsts[firsts.len() / 2];
    let drill = Drill::run("a (primary killed mid-run, mirror configured)", &env, d, &want, |i| {
        if i == kill_at {
            drop(primary.take());
        }
    });
    assert!(primary.is_none(), "the primary was never killed");
    let c = counters(&b.g.url, &ca, &["corpus", "replica"]);
    assert!(
        metric(&b.g.url, &ca, "gocred_upstream_fallback_answers_total{upstream=\"replica\"}") >= 1,
        "the mirror never answered: {c}"
    );
    drill.report(&c);
}

/// A broker over one git server started with `fault` (`--fault 503|stall`, every third request),
/// the upstream's `timeout` short enough that a stall is cut and retried.
fn faulty(d: &Path, srv: &Path, fault: &str) -> (Proc, SshBroker, Vec<(String, String)>) {
    let port = free_port();
    let up = git_server(srv, port, &["--anonymous", "--fault", fault, "--fault-every", "3", "--stall-secs", "5"]);
    let bdir = tempfile::tempdir().unwrap();
    let (b, env) =
        crate::gitmod::corpus_broker_store(bdir, d, port, "timeout = \"2s\"\n", &[], "[store]\ndir = \"store\"\n");
    (up, b, env)
}

/// (b) The upstream stalls 5 s on every third request: cut at the upstream's 2 s timeout and
/// retried.
#[tokio::test(flavor = "multi_thread")]
async fn fault_b_upstream_stalling_on_a_third_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let (up, b, env) = faulty(d, &srv, "stall");
    let ca = b.path("tls/ca.pem");
    warm(&env, d, &want, WARM);
    let drill = Drill::run("b (upstream stalls 5s on 1/3 of requests)", &env, d, &want, |_| {});
    assert!(up.stderr().iter().any(|l| l.starts_with("FAULT stall")), "no fault was injected");
    let c = counters(&b.g.url, &ca, &["corpus"]);
    assert!(metric(&b.g.url, &ca, "gocred_upstream_retries_total{upstream=\"corpus\"}") >= 1, "{c}");
    drill.report(&c);
}

/// (c) The upstream answers 503 to every third request: retried with backoff.
#[tokio::test(flavor = "multi_thread")]
async fn fault_c_upstream_answering_503_to_a_third_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let (up, b, env) = faulty(d, &srv, "503");
    let ca = b.path("tls/ca.pem");
    warm(&env, d, &want, WARM);
    let drill = Drill::run("c (upstream answers 503 to 1/3 of requests)", &env, d, &want, |_| {});
    assert!(up.stderr().iter().any(|l| l.starts_with("FAULT 503")), "no fault was injected");
    let c = counters(&b.g.url, &ca, &["corpus"]);
    assert!(metric(&b.g.url, &ca, "gocred_upstream_retries_total{upstream=\"corpus\"}") >= 1, "{c}");
    drill.report(&c);
}

/// (g) Every upstream down, the store warm: every run is answered from the store.
#[tokio::test(flavor = "multi_thread")]
async fn fault_g_every_upstream_down_with_a_warm_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let port = free_port();
    let up = git_server(&srv, port, &["--anonymous"]);
    let bdir = tempfile::tempdir().unwrap();
    let ca = bdir.path().join("tls/ca.pem");
    let (b, env) = crate::gitmod::corpus_broker_store(bdir, d, port, "", &[], "[store]\ndir = \"store\"\n");
    warm(&env, d, &want, VERSIONS);
    drop(up);
    let drill = Drill::run("g (every upstream down, warm store)", &env, d, &want, |_| {});
    drill.report(&counters(&b.g.url, &ca, &["corpus"]));
}

/// The sum of the `/metrics` samples of `name` whose labels contain every one of `labels`.
fn metric_sum(url: &str, ca: &Path, name: &str, labels: &[&str]) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(ca)
        .arg(format!("{url}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// `/readyz`'s JSON.
async fn readyz(url: &str, ca: &Path) -> (u16, serde_json::Value) {
    let r = client(Some(ca)).get(format!("{url}/readyz")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// (d) OpenBao stopped for the whole run: signing keys, the upstream credential (the git server
/// wants a bearer token kept in OpenBao) and the store key are used from memory; `/readyz` says
/// degraded, and ready again once OpenBao is back.
#[tokio::test(flavor = "multi_thread")]
async fn fault_d_vault_stopped_for_the_whole_run() {
    let bao_port = free_port();
    let mut bao = OpenBao::start_on(bao_port).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let port = free_port();
    let _up = git_server(&srv, port, &["--bearer", "upstream-secret-7"]);
    let venv = [
        ("GOCRED_SECRETS__BACKEND", "vault"),
        ("GOCRED_SECRETS__GRACE", "10m"),
        ("GOCRED_SECRETS__PROBE_EVERY", "200ms"),
        ("GOCRED_VAULT__ADDRESS", bao.addr.as_str()),
        ("GOCRED_VAULT__TIMEOUT", "1s"),
        ("GOCRED_VAULT__AUTH__METHOD", "token"),
        ("GOCRED_VAULT__AUTH__TOKEN", "root"),
    ];
    let bdir = tempfile::tempdir().unwrap();
    let cfg = bdir.path().join("broker.toml");
    let ca = bdir.path().join("tls/ca.pem");
    // A 2 s credential TTL: during the run the cached upstream credential goes stale and, with
    // OpenBao down, keeps being used.
    let creds = "credentials = \"vault:upstreams/corpus\"\ncredential_ttl = \"2s\"\n";
    let (b, env) = crate::gitmod::corpus_broker_store(bdir, d, port, creds, &venv, "[store]\ndir = \"store\"\n");
    // The upstream credential, the documented way (stdin), into OpenBao.
    let mut put = gocred_cmd(&["secrets", "--config", cfg.to_str().unwrap(), "put", "upstreams/corpus"], &venv)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    put.stdin.take().unwrap().write_all(b"token=upstream-secret-7\n").unwrap();
    let out = put.wait_with_output().unwrap();
    assert!(out.status.success(), "secrets put: {}", String::from_utf8_lossy(&out.stderr));
    warm(&env, d, &want, WARM);
    assert_eq!(readyz(&b.g.url, &ca).await.1["status"], "ready");

    bao.proc.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&b.g.url, &ca).await.1["status"] != "degraded" {
        assert!(Instant::now() < deadline, "readyz never said degraded: {:?}", readyz(&b.g.url, &ca).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drill = Drill::run("d (OpenBao stopped for the whole run)", &env, d, &want, |_| {});
    let (status, body) = readyz(&b.g.url, &ca).await;
    assert_eq!(status, 200, "within the grace the broker stays ready: {body}");
    assert!(body["secrets"].as_str().unwrap().contains("unreachable"), "{body}");
    let c = counters(&b.g.url, &ca, &["corpus"]);
    drill.report(&c);
    let cached = b.g.proc.stderr().iter().filter(|l| l.contains("using the cached upstream credential")).count();
    assert!(cached >= 1, "the stale credential was never used from memory");

    // OpenBao back (a dev server: empty): the broker is ready again by itself.
    let _bao = OpenBao::start_on(bao_port).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while readyz(&b.g.url, &ca).await.1["status"] != "ready" {
        assert!(Instant::now() < deadline, "not ready after OpenBao came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (e) Access tokens of 2 s while every upstream request takes a second: tokens expire between
/// the requests of one `go mod download`; the broker answers 401, the go command asks GOAUTH
/// again (the helper refreshes with the key) and retries.
#[tokio::test(flavor = "multi_thread")]
async fn fault_e_access_token_expiring_mid_download() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let port = free_port();
    let _up = git_server(&srv, port, &["--anonymous", "--fault", "stall", "--fault-every", "1", "--stall-secs", "1"]);
    let bdir = tempfile::tempdir().unwrap();
    let ca = bdir.path().join("tls/ca.pem");
    let ttl = [("GOCRED_TOKENS__TTL", "2s")];
    let (b, env) = crate::gitmod::corpus_broker_store(bdir, d, port, "", &ttl, "[store]\ndir = \"store\"\n");
    warm(&env, d, &want, WARM);
    let drill = Drill::run("e (2s access tokens, 1s per upstream request)", &env, d, &want, |_| {});
    let expired = metric_sum(&b.g.url, &ca, "gocred_http_requests_total", &["/mod/", "status=\"401\""]);
    let c = format!("{}; 401s answered {expired}", counters(&b.g.url, &ca, &["corpus"]));
    assert!(expired >= 1, "no token expired during the drill: {c}");
    drill.report(&c);
}

/// A plain TCP load balancer on a free port: each connection goes to the next backend in turn,
/// or the one after when connecting fails (HAProxy's redispatch). Backends are set later.
fn tcp_lb() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
    use std::net::{TcpListener, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let backends = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u16>::new()));
    let bs = backends.clone();
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            let list = bs.lock().unwrap().clone();
            std::thread::spawn(move || {
                for k in 0..list.len() {
                    if let Ok(up) = TcpStream::connect(("127.0.0.1", list[(n + k) % list.len()])) {
                        let (mut a, mut b) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                        let t = std::thread::spawn(move || {
                            let _ = std::io::copy(&mut a, &mut b);
                            let _ = b.shutdown(std::net::Shutdown::Write);
                        });
                        let (mut up, mut conn) = (up, conn);
                        let _ = std::io::copy(&mut up, &mut conn);
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                        let _ = t.join();
                        return;
                    }
                }
            });
        }
    });
    (port, backends)
}

/// (f) Two replicas behind a plain TCP load balancer, sharing the secrets (a copy of the
/// encrypted file), the TLS certificate and an S3 store; one is killed mid-run.
#[tokio::test(flavor = "multi_thread")]
async fn fault_f_one_of_two_replicas_killed_mid_run_behind_a_tcp_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    many_versions(&srv);
    let want = direct_sums(d, &srv);
    let port = free_port();
    let _up = git_server(&srv, port, &["--anonymous"]);
    let s3port = free_port();
    let _s3 = crate::store::s3_server(&d.join("s3"), s3port);
    let (pa, pb) = (free_port(), free_port());
    let (lb, backends) = tcp_lb();
    *backends.lock().unwrap() = vec![pa, pb];
    let lb_url = format!("https://127.0.0.1:{lb}");
    let env_for = |listen: &str| {
        [
            ("AWS_ACCESS_KEY_ID", "AKTEST".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "SKTEST-secret".to_string()),
            ("GOCRED_SERVER__PUBLIC_URL", lb_url.clone()),
            ("GOCRED_SERVER__LISTEN", listen.to_string()),
        ]
    };
    let as_refs = |e: &[(&'static str, String); 4]| -> Vec<(&'static str, String)> { e.to_vec() };
    let store = crate::store::s3_store_toml(s3port);
    let adir = tempfile::tempdir().unwrap();
    let apath = adir.path().to_path_buf();
    let ea = as_refs(&env_for(&format!("127.0.0.1:{pa}")));
    let ea: Vec<(&str, &str)> = ea.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (mut a, _) = crate::gitmod::corpus_broker_store(adir, d, port, "", &ea, &store);
    // Replica B: A's secrets (signing keys, store keys, login sealing), certificate and user key.
    let bdir = tempfile::tempdir().unwrap();
    let bpath = bdir.path().to_path_buf();
    std::fs::copy(apath.join("secrets.enc"), bpath.join("secrets.enc")).unwrap();
    run_ok(std::process::Command::new("cp").arg("-r").arg(apath.join("tls")).arg(bpath.join("tls")));
    for f in ["alice", "alice.pub"] {
        std::fs::copy(apath.join(f), bpath.join(f)).unwrap();
    }
    let eb = as_refs(&env_for(&format!("127.0.0.1:{pb}")));
    let eb: Vec<(&str, &str)> = eb.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The client knows only the balancer (logged in through it).
    let (b, env) = crate::gitmod::corpus_broker_store(bdir, d, port, "", &eb, &store);
    let ca = apath.join("tls/ca.pem");
    warm(&env, d, &want, WARM);
    let half = runs() / 2;
    let mut killed = false;
    let drill = Drill::run("f (one of two replicas killed mid-run, TCP balancer)", &env, d, &want, |i| {
        if i == half {
            a.g.proc.kill();
            killed = true;
        }
    });
    assert!(killed, "replica A was never killed");
    let c = format!("survivor: {}", counters(&b.g.url, &ca, &["corpus"]));
    drill.report(&c);
}

/// A mirror's `.info` must name exactly the version asked: a module proxy mirror answering
/// `v1.0.0.info` with another version is refused (named in go's output, nothing stored); once
/// it answers right, the download succeeds with the sum the go command gets directly from git.
/// The primary (a git server without the repository) says "not found" and the broker falls
/// through to the mirror inside itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_mirror_naming_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    crate::store::lib_repo(&srv, "mirror").publish(&srv, "lib");
    let gport = free_port();
    let git = git_server(&srv, gport, &["--anonymous"]);
    let q = format!("{M}/lib.git@v1.0.0");
    let (direct, text) = crate::gitmod::download(&direct_env(d, gport), d, &q);
    assert!(!direct.failed, "{text}");
    drop(git);
    // The mirror serves the go command's own download cache as a module proxy.
    let info = crate::gitmod::walk(d)
        .into_iter()
        .find(|p| p.ends_with("corp.test/acme/lib.git/@v/v1.0.0.info"))
        .expect("the direct download's .info");
    let root = info.ancestors().nth(5).unwrap().to_path_buf();
    let _ = std::process::Command::new("chmod").args(["-R", "u+w"]).arg(&root).status();
    let good = std::fs::read_to_string(&info).unwrap();
    std::fs::write(&info, good.replace("v1.0.0", "v1.0.1")).unwrap();
    let mport = free_port();
    let _mirror = {
        let mut c = std::process::Command::new("python3");
        c.arg(repo_root().join("tests/peers/git_http_server.py"))
            .args(["--port", &mport.to_string(), "--anonymous", "--goproxy-root"])
            .arg(&root);
        let mut p = Proc::spawn("mirror", c);
        p.wait_stdout("listening", Duration::from_secs(10));
        p
    };
    let empty = d.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let pport = free_port();
    let _primary = git_server(&empty, pport, &["--anonymous"]);
    let extra = format!(
        "mirrors = [\"athens\"]\n[[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nurl = \"http://127.0.0.1:{mport}/mod\"\n"
    );
    let (b, env) = crate::gitmod::corpus_broker_in(tempfile::tempdir().unwrap(), d, pport, &extra, &[]);
    let (o, text) = fresh(&env, d, &q);
    assert!(o.failed && text.contains("v1.0.1") && text.contains("athens"), "{text}");

    std::fs::write(&info, &good).unwrap();
    let (o, text) = fresh(&env, d, &q);
    assert!(!o.failed && o.sum == direct.sum, "{text}");
    let ca = b.dir.path().join("tls/ca.pem");
    assert!(metric(&b.g.url, &ca, "gocred_upstream_fallback_answers_total{upstream=\"athens\"}") >= 1);
}

/// An answer slow to start (every upstream request stalls 2 s, so the first fetch takes several
/// seconds with nothing on the wire) is not cut by a 1 s connection idle timeout: the
/// connection has a request in progress. An idle keep-alive connection still is.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_first_answer_outlasts_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let srv = d.join("srv");
    crate::store::lib_repo(&srv, "slow").publish(&srv, "lib");
    let port = free_port();
    let _up = git_server(&srv, port, &["--anonymous", "--fault", "stall", "--fault-every", "1", "--stall-secs", "2"]);
    let bdir = tempfile::tempdir().unwrap();
    let idle = [("GOCRED_SERVER__IDLE_TIMEOUT", "1s")];
    let (b, env) =
        crate::gitmod::corpus_broker_store(bdir, d, port, "timeout = \"10s\"\n", &idle, "[store]\ndir = \"store\"\n");
    let t = Instant::now();
    let (o, text) = fresh(&env, d, &format!("{M}/lib.git@v1.0.0"));
    assert!(!o.failed && o.sum.starts_with("h1:"), "{text}");
    assert!(t.elapsed() > Duration::from_secs(2), "the upstream did not stall: {:?}", t.elapsed());
    // A connection with nothing in progress is closed after the idle timeout.
    use std::io::Read;
    let addr = b.g.url.trim_start_matches("https://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = sock.read(&mut buf).unwrap_or(0);
    assert!(n == 0 && started.elapsed() < Duration::from_secs(8), "{n} bytes after {:?}", started.elapsed());
}
