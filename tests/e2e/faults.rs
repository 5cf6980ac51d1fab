//! The fault-injection suite (issue 14): under each injected fault, `GOCRED_FAULT_RUNS` (default
//! 10; the drill is 100) real `go mod download` runs through the broker, each with a fresh module
//! cache, over a mix of versions already in the store and versions not yet fetched — and **no
//! run may fail**, nor answer other sums than the go command gets direct from git. Each scenario
//! prints its count, p50/p99 download time and the broker's retry/breaker/fallback counters (and
//! appends them to `GOCRED_FAULT_REPORT` when set).
//!
//! The full drill: `GOCRED_FAULT_RUNS=100 cargo test --release --test e2e faults:: -- --nocapture`.

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
    let half = runs() / 2;
    let drill = Drill::run("a (primary killed mid-run, mirror configured)", &env, d, &want, |i| {
        if i == half {
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
