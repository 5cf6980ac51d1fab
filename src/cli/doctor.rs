//! `gocred doctor [MODULE[@VERSION]] [--json]`: why a private module does not download, in one
//! line with the fix. The local side (the go command and its environment, git's URL rewrites,
//! netrc shadowing, the session and the clock against the broker), the broker (reachability,
//! TLS, `/readyz` with its circuit breakers), and — given a module — a real `go mod download`
//! in the current directory (its go.mod and go.sum count) with a fresh, temporary module cache,
//! its failure classified. Never prints a credential: URLs lose their userinfo, GOAUTH commands
//! and GOFLAGS show names only.
//!
//! Exit codes: 0 nothing wrong (warnings allowed), 1 a problem found (the first one is the
//! last line on stderr), 2 usage. Client side only: imports nothing of the broker.

use crate::client::api::BrokerClient;
use crate::client::state::Store;
use anyhow::bail;
use serde::Serialize;
use std::collections::BTreeMap;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// A module (and version, default `latest`) to fetch as the go command would.
    pub target: Option<String>,
    /// One JSON object on stdout instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Give up on the broker and on the download after this long (the go command itself
    /// never does).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    check: &'static str,
    level: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, check: &'static str, level: Level, detail: impl Into<String>, fix: Option<String>) {
        self.0.push(Check { check, level, detail: detail.into(), fix });
    }
    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(check, Level::Ok, detail, None);
    }
    fn first_failure(&self) -> Option<&Check> {
        self.0.iter().find(|c| c.level == Level::Fail)
    }
}

/// `go env` values doctor looks at.
const GO_ENV: &[&str] = &[
    "GOVERSION",
    "GOPROXY",
    "GOPRIVATE",
    "GONOSUMDB",
    "GONOPROXY",
    "GOAUTH",
    "GOFLAGS",
    "GOTOOLCHAIN",
    "GOSUMDB",
    "GOINSECURE",
];

pub async fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut r = Report::default();
    let env = go_env(&mut r);
    let session = Store::lock().ok().and_then(|s| s.load().ok().flatten());
    let broker = session.as_ref().map(|s| s.broker.clone()).or_else(|| broker_from_goproxy(&env));
    let meta = match &broker {
        Some(url) => {
            let ca = session.as_ref().and_then(|s| s.ca_cert.as_deref());
            check_broker(&mut r, url, ca, args.timeout.min(std::time::Duration::from_secs(30))).await
        }
        None => {
            let fix = "gocred login --ssh --broker https://BROKER".to_string();
            r.add("session", Level::Fail, "not logged in, and GOPROXY names no broker", Some(fix));
            None
        }
    };
    if let Some(s) = &session {
        check_session(&mut r, s.user.as_str(), s.session_expires_at, s.expires_at);
    } else if broker.is_some() {
        let fix = format!("gocred login --ssh --broker {}", broker.as_deref().unwrap_or_default());
        r.add("session", Level::Fail, "not logged in", Some(fix));
    }
    if let (Some(env), Some(url)) = (&env, &broker) {
        let modules = meta.as_ref().map(|m| m.modules.clone()).unwrap_or_default();
        check_go_env(&mut r, env, url, &modules);
        check_go_direct(&mut r, env, &modules);
        check_netrc(&mut r, env, url);
        check_git_rewrites(&mut r, &modules);
    }
    if let (Some(t), Some(env)) = (&args.target, &env) {
        let leak = r.0.iter().any(|c| c.check == "private path" && c.level == Level::Fail);
        if !leak {
            fetch(&mut r, env, t, session.is_some(), args.timeout).await;
        }
    }
    print(&r, args.json)?;
    match r.first_failure() {
        Some(c) => bail!("{}{}", c.detail, c.fix.as_ref().map(|f| format!(" — fix: {f}")).unwrap_or_default()),
        None => Ok(()),
    }
}

fn print(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        let ok = r.first_failure().is_none();
        outln!("{}", serde_json::json!({ "ok": ok, "checks": r.0 }));
        return Ok(());
    }
    for c in &r.0 {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        match &c.fix {
            Some(f) => outln!("{tag} {:<13} {} — fix: {f}", c.check, c.detail),
            None => outln!("{tag} {:<13} {}", c.check, c.detail),
        }
    }
    Ok(())
}

/// `go env -json` (the go command's own view, with its defaults and go.env).
fn go_env(r: &mut Report) -> Option<BTreeMap<String, String>> {
    let out = match Command::new("go").arg("env").arg("-json").args(GO_ENV).output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let why = String::from_utf8_lossy(&o.stderr).lines().next().unwrap_or_default().to_string();
            r.add("go", Level::Fail, format!("go env failed: {why}"), None);
            return None;
        }
        Err(e) => {
            r.add("go", Level::Fail, format!("cannot run go: {e}"), Some("install Go and put it on PATH".into()));
            return None;
        }
    };
    let env: BTreeMap<String, String> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let v = env.get("GOVERSION").cloned().unwrap_or_default();
    // GOAUTH (with commands) needs go 1.24.
    let minor = v.strip_prefix("go1.").and_then(|m| m.split(['.', 'r', 'b']).next()?.parse::<u32>().ok());
    match minor {
        Some(m) if m < 24 => {
            r.add("go", Level::Fail, format!("{v}: GOAUTH needs go1.24 or newer"), Some("upgrade Go".into()))
        }
        _ => r.ok("go", v),
    }
    Some(env)
}

fn broker_from_goproxy(env: &Option<BTreeMap<String, String>>) -> Option<String> {
    let proxy = env.as_ref()?.get("GOPROXY")?;
    proxy.split([',', '|']).find_map(|p| p.strip_suffix("/mod").map(without_userinfo))
}

/// A URL without `user:password@` (GOPROXY entries may carry credentials; the go command
/// redacts them too).
fn without_userinfo(u: &str) -> String {
    match u.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => u.to_string(),
    }
}

/// A go env value as doctor prints it: no credentials in GOPROXY URLs, GOAUTH's commands by
/// program only (their arguments may be tokens), GOFLAGS by flag name only.
fn shown(key: &str, value: &str) -> String {
    match key {
        "GOPROXY" => value
            .split_inclusive([',', '|'])
            .map(|p| {
                let sep = p.strip_prefix(p.trim_end_matches([',', '|'])).unwrap_or_default();
                format!("{}{sep}", without_userinfo(p.trim_end_matches([',', '|'])))
            })
            .collect(),
        "GOAUTH" => value
            .split(';')
            .map(|c| {
                let mut w = c.split_whitespace();
                match (w.next(), w.next()) {
                    (Some(p), Some("goauth")) => format!("{p} goauth"),
                    (Some(p), Some(_)) => format!("{p} …"),
                    (Some(p), None) => p.to_string(),
                    _ => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join("; "),
        "GOFLAGS" => value.split_whitespace().map(|f| f.split('=').next().unwrap_or(f)).collect::<Vec<_>>().join(" "),
        _ => value.to_string(),
    }
}

/// Reachability, TLS, clock skew and `/readyz` (breakers); the broker's metadata.
async fn check_broker(
    r: &mut Report,
    url: &str,
    ca: Option<&std::path::Path>,
    limit: std::time::Duration,
) -> Option<crate::proto::meta::Metadata> {
    let client = match BrokerClient::new(url, ca) {
        Ok(c) => c,
        Err(e) => {
            r.add("broker", Level::Fail, e.to_string(), None);
            return None;
        }
    };
    let Ok(probe) = tokio::time::timeout(limit, client.probe("/readyz")).await else {
        let detail = format!("{url}: timed out after {}", humantime::format_duration(limit));
        r.add(
            "broker",
            Level::Fail,
            detail,
            Some("the network or the broker is slow: check the URL, then its /readyz".into()),
        );
        return None;
    };
    match probe {
        Ok(p) => {
            r.ok("broker", format!("{url} reachable"));
            tls(r, url, p.cert_not_after);
            clock(r, p.date.as_deref());
            readyz(r, p.status, &p.body);
        }
        Err(e) => {
            let (what, fix) = classify_net(&e.to_string());
            r.add("broker", Level::Fail, format!("{url}: {what}"), Some(fix));
            return None;
        }
    }
    tokio::time::timeout(limit, client.metadata()).await.ok()?.ok()
}

/// The broker's certificate: verified (the probe succeeded), and how long until it expires.
fn tls(r: &mut Report, url: &str, not_after: Option<i64>) {
    let Some(until) = not_after else {
        if url.starts_with("https://") {
            r.add("tls", Level::Warn, "the broker's certificate could not be read", None);
        }
        return;
    };
    let days = (until - crate::unix_now() as i64) / 86400;
    let detail = format!("certificate chain verified, expires in {days} days");
    if days < 14 {
        let fix = "renew the broker's TLS certificate (cert-manager, or [server] tls_cert)".to_string();
        r.add("tls", Level::Warn, detail, Some(fix));
    } else {
        r.ok("tls", detail);
    }
}

fn clock(r: &mut Report, date: Option<&str>) {
    let Some(theirs) = date.and_then(parse_http_date) else { return };
    let skew = crate::unix_now() as i64 - theirs;
    if skew.abs() > 60 {
        let fix = "sync the clock (NTP): proofs and tokens are time-bound".to_string();
        r.add("clock", Level::Fail, format!("this machine's clock is {skew}s off the broker's"), Some(fix));
    } else {
        r.ok("clock", format!("within {}s of the broker", skew.abs().max(1)));
    }
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → Unix seconds.
fn parse_http_date(s: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let f: Vec<&str> = s.split_whitespace().collect();
    let (day, mon, year, hms) = (f.get(1)?.parse().ok()?, f.get(2)?, f.get(3)?.parse().ok()?, f.get(4)?);
    let month = time::Month::try_from(MONTHS.iter().position(|m| m == mon)? as u8 + 1).ok()?;
    let mut t = hms.split(':').map(|x| x.parse::<u8>().ok());
    let (h, m, sec) = (t.next()??, t.next()??, t.next()??);
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    Some(date.with_hms(h, m, sec).ok()?.assume_utc().unix_timestamp())
}

fn readyz(r: &mut Report, status: u16, body: &str) {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    if status != 200 {
        let msg = v["message"].as_str().unwrap_or(body).to_string();
        r.add("readyz", Level::Fail, format!("broker not ready: {msg}"), Some("see the broker's log".into()));
        return;
    }
    match v["status"].as_str() {
        Some("degraded") => r.add("readyz", Level::Warn, v["secrets"].as_str().unwrap_or("degraded").to_string(), None),
        _ => r.ok("readyz", "ready"),
    }
    let open: Vec<String> = v["breakers"]
        .as_object()
        .map(|m| m.iter().filter(|(_, s)| s.as_str() != Some("closed")).map(|(n, s)| format!("{n} {s}")).collect())
        .unwrap_or_default();
    if !open.is_empty() {
        let detail = format!("circuit breakers not closed: {}", open.join(", "));
        r.add(
            "breakers",
            Level::Warn,
            detail,
            Some("the upstream is failing; the store and mirrors still answer".into()),
        );
    }
}

fn check_session(r: &mut Report, user: &str, session_until: u64, token_until: u64) {
    let now = crate::unix_now();
    if session_until <= now {
        r.add("session", Level::Fail, format!("the session of {user} ended"), Some("gocred login".into()));
    } else if token_until <= now {
        r.ok("session", format!("{user}; the token expired and is renewed with your key on the next request"));
    } else {
        r.ok("session", format!("{user}, token good for {}s", token_until - now));
    }
}

/// The go environment against the broker: GOPROXY through it, GOAUTH its helper, the checksum
/// database not asked about private paths, no private path sent to a public proxy first.
fn check_go_env(r: &mut Report, env: &BTreeMap<String, String>, url: &str, modules: &[String]) {
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or_default();
    let mod_url = format!("{url}/mod");
    let proxies: Vec<&str> = get("GOPROXY").split([',', '|']).collect();
    let at = proxies.iter().position(|p| p.trim_end_matches('/') == mod_url);
    match at {
        Some(_) => r.ok("GOPROXY", shown("GOPROXY", get("GOPROXY"))),
        None => r.add(
            "GOPROXY",
            Level::Fail,
            format!("GOPROXY={} does not go through the broker", shown("GOPROXY", get("GOPROXY"))),
            Some(format!("go env -w GOPROXY={mod_url},off (or gocred setup)")),
        ),
    }
    if get("GOAUTH").split(';').any(|c| c.trim().ends_with("gocred goauth")) {
        r.ok("GOAUTH", shown("GOAUTH", get("GOAUTH")));
    } else {
        let fix = "go env -w GOAUTH='gocred goauth' (or gocred setup)".to_string();
        r.add(
            "GOAUTH",
            Level::Fail,
            format!("GOAUTH={} does not run gocred", shown("GOAUTH", get("GOAUTH"))),
            Some(fix),
        );
    }
    for m in modules {
        let probe = format!("{m}/x");
        let private = matches_globs(get("GOPRIVATE"), &probe) || matches_globs(get("GONOPROXY"), &probe);
        // A public proxy listed before the broker sees the private path first.
        let before = at.unwrap_or(proxies.len());
        let public_first = proxies[..before].iter().any(|p| p.starts_with("https://") || p.starts_with("http://"));
        if public_first && !private {
            let fix = format!("go env -w GOPROXY={mod_url},off (or add {m} to GOPRIVATE)");
            let detail = format!("{m}: a public proxy in GOPROXY would be asked for this private path first");
            r.add("private path", Level::Fail, detail, Some(fix));
        }
        let sumdb_off = get("GOSUMDB") == "off"
            || matches_globs(get("GONOSUMDB"), &probe)
            || matches_globs(get("GOPRIVATE"), &probe);
        if !sumdb_off {
            let fix = format!("go env -w GONOSUMDB={m} (or gocred setup)");
            let detail = format!("{m}: the public checksum database would be asked (and cannot know it)");
            r.add("GONOSUMDB", Level::Fail, detail, Some(fix));
        }
    }
}

/// Paths the go command fetches itself (GONOPROXY, which defaults to GOPRIVATE), flags that
/// stop downloads, and the toolchain setting.
fn check_go_direct(r: &mut Report, env: &BTreeMap<String, String>, modules: &[String]) {
    let get = |k: &str| env.get(k).map(String::as_str).unwrap_or_default();
    for m in modules.iter().filter(|m| matches_globs(get("GONOPROXY"), &format!("{m}/x"))) {
        let detail = format!(
            "{m} is in GONOPROXY={}: go fetches it with git itself, not through the broker's /mod/ (unless you chose gocred setup --git)",
            get("GONOPROXY")
        );
        r.add("GONOPROXY", Level::Warn, detail, Some("go env -w GONOPROXY=none (or gocred setup)".into()));
    }
    let flags = get("GOFLAGS");
    if flags.split_whitespace().any(|f| f == "-mod=vendor") {
        let detail = "GOFLAGS=-mod=vendor: modules come from vendor/ and are never downloaded";
        r.add("GOFLAGS", Level::Warn, detail, Some("go env -u GOFLAGS, or go mod vendor after a change".into()));
    } else if !flags.is_empty() {
        r.ok("GOFLAGS", shown("GOFLAGS", flags));
    }
    let toolchain = get("GOTOOLCHAIN");
    if toolchain != "local" && !toolchain.is_empty() {
        r.ok(
            "GOTOOLCHAIN",
            format!("{toolchain}: a newer toolchain a go.mod asks for is downloaded through GOPROXY too"),
        );
    }
}

/// Go's GOPRIVATE matching: any comma-separated glob matching a prefix of the path's elements.
fn matches_globs(globs: &str, path: &str) -> bool {
    let elems: Vec<&str> = path.split('/').collect();
    globs.split(',').map(str::trim).filter(|g| !g.is_empty()).any(|g| {
        let pat: Vec<&str> = g.trim_end_matches('/').split('/').collect();
        pat.len() <= elems.len() && pat.iter().zip(&elems).all(|(p, e)| glob(p, e))
    })
}

/// `*` and `?` within one path element (enough of path.Match for GOPRIVATE).
fn glob(p: &str, s: &str) -> bool {
    match (p.chars().next(), s.chars().next()) {
        (None, None) => true,
        (Some('*'), _) => {
            glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[s.chars().next().map_or(0, char::len_utf8)..]))
        }
        (Some('?'), Some(c)) => glob(&p[1..], &s[c.len_utf8()..]),
        (Some(a), Some(b)) if a == b => glob(&p[a.len_utf8()..], &s[b.len_utf8()..]),
        _ => false,
    }
}

/// A `~/.netrc` entry for the broker's host wins over GOAUTH's helper when GOAUTH runs netrc.
fn check_netrc(r: &mut Report, env: &BTreeMap<String, String>, url: &str) {
    let goauth = env.get("GOAUTH").map(String::as_str).unwrap_or("netrc");
    if !goauth.split(';').any(|c| c.trim() == "netrc") {
        return;
    }
    let path = std::env::var_os("NETRC")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".netrc")));
    let Some(text) = path.and_then(|p| std::fs::read_to_string(p).ok()) else { return };
    let host = url.split("://").nth(1).unwrap_or_default().split(['/', ':']).next().unwrap_or_default();
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.windows(2).any(|w| w[0] == "machine" && w[1] == host) {
        let fix = format!("remove the `machine {host}` entry from netrc (gocred goauth supplies the credential)");
        r.add("netrc", Level::Warn, format!("netrc has an entry for {host}, which GOAUTH=netrc sends too"), Some(fix));
    }
}

/// git `url.<base>.insteadOf` rules that rewrite a broker-served host send git elsewhere.
fn check_git_rewrites(r: &mut Report, modules: &[String]) {
    let Ok(out) = Command::new("git").args(["config", "--get-regexp", r"^url\..*\.insteadof$"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((_, from)) = line.split_once(' ') else { continue };
        if let Some(m) = modules.iter().find(|m| from.contains(m.split('/').next().unwrap_or("\u{0}"))) {
            let detail = format!("git rewrites {from} ({m}): a direct git fetch would not go through the broker");
            r.add("git", Level::Warn, detail, None);
        }
    }
}

/// `go mod download -json TARGET` here, with a fresh temporary module cache, given up after
/// `limit`; a failure classified.
async fn fetch(
    r: &mut Report,
    env: &BTreeMap<String, String>,
    target: &str,
    logged_in: bool,
    limit: std::time::Duration,
) {
    let target = if target.contains('@') { target.to_string() } else { format!("{target}@latest") };
    let cache = std::env::temp_dir().join(format!("gocred-doctor-{}", crate::fsutil::hex(&crate::random_bytes::<6>())));
    let child = tokio::process::Command::new("go")
        .args(["mod", "download", "-json", &target])
        .env("GOMODCACHE", &cache)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let out = match child {
        Ok(c) => tokio::time::timeout(limit, c.wait_with_output()).await,
        Err(e) => return r.add("download", Level::Fail, format!("cannot run go: {e}"), None),
    };
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&cache).status();
    let _ = std::fs::remove_dir_all(&cache);
    let out = match out {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return r.add("download", Level::Fail, format!("cannot run go: {e}"), None),
        Err(_) => {
            let detail = format!(
                "{target}: timed out after {} (the go command never gives up)",
                humantime::format_duration(limit)
            );
            let fix =
                "the network or the broker is slow: check its /readyz (gocred doctor without a module)".to_string();
            return r.add("download", Level::Fail, detail, Some(fix));
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let error = v["Error"].as_str().map(str::to_string).unwrap_or_default();
    if out.status.success() && error.is_empty() {
        let sum = v["Sum"].as_str().unwrap_or_default();
        return r.ok(
            "download",
            format!("{}@{} {sum}", v["Path"].as_str().unwrap_or(&target), v["Version"].as_str().unwrap_or("")),
        );
    }
    let text = format!("{error}\n{}", String::from_utf8_lossy(&out.stderr));
    let (cause, fix) = classify(&text, &target, env, logged_in);
    r.add("download", Level::Fail, format!("{target}: {cause}"), Some(fix));
}

/// The one-line cause and fix of a go command failure text.
fn classify(text: &str, target: &str, env: &BTreeMap<String, String>, logged_in: bool) -> (String, String) {
    let l = text.to_ascii_lowercase();
    let module = target.split('@').next().unwrap_or(target);
    if let Some(p) = text.split("forbidden by policy ").nth(1) {
        let id: String = p.chars().take_while(|c| !c.is_whitespace() && *c != ')' && *c != ':').collect();
        return (
            format!("denied by policy {id}"),
            format!("ask for download on {module} (gocred policy explain shows the decision)"),
        );
    }
    if l.contains("401 unauthorized") || l.contains("not logged in") {
        let why = if logged_in { "the broker refused the token (expired or revoked)" } else { "not logged in" };
        return (why.into(), "gocred login".into());
    }
    if l.contains("refused the broker's credential") {
        return (
            "the upstream refused the broker's credential".into(),
            "an operator updates it: gocred secrets put upstreams/<name>".into(),
        );
    }
    if l.contains("checksum mismatch") {
        let line = |k: &str| {
            text.lines()
                .find(|x| x.trim_start().starts_with(k))
                .map(|x| x.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        let detail = format!(
            "checksum mismatch ({}; {})",
            line("downloaded:").unwrap_or_else(|| "downloaded: ?".into()),
            line("go.sum:").unwrap_or_else(|| "go.sum: ?".into())
        );
        let covered = matches_globs(env.get("GONOSUMDB").map(String::as_str).unwrap_or_default(), module);
        let fix = match covered {
            true => {
                "go.sum pins other content than the broker serves: check the go.sum line's origin, then `go mod tidy`"
                    .into()
            }
            false => format!("{module} is not in GONOSUMDB: go env -w GONOSUMDB={module}"),
        };
        return (detail, fix);
    }
    // git's prompt failing explains the "unknown revision" that follows it.
    if l.contains("terminal prompts disabled") {
        return (
            "git asked for a password: the module is fetched with git directly, not through the broker".into(),
            "GOPROXY=<broker>/mod,off and remove it from GONOPROXY/GOPRIVATE's direct path (gocred setup)".into(),
        );
    }
    // A 404 from the broker ends at `off`: "module lookup disabled by GOPROXY=off".
    let missing = l.contains("unknown revision")
        || l.contains("invalid version")
        || l.contains("no matching versions")
        || l.contains("lookup disabled by goproxy=off")
        || l.contains("404 not found");
    if missing {
        let versions = Command::new("go")
            .args(["list", "-m", "-versions", module])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        if versions.is_empty() {
            let fix = "check the path, and that one of the broker's upstreams serves it".to_string();
            return ("the broker knows no such module (no versions)".into(), fix);
        }
        return (format!("no such version (tags: {versions})"), "use one of the listed versions".into());
    }
    let (what, fix) = classify_net(text);
    if what != "failed" {
        return (what, fix);
    }
    let first = text.lines().find(|x| !x.trim().is_empty()).unwrap_or("failed").trim().to_string();
    (first, "see `go mod download -x` for the request that failed".into())
}

/// DNS, connect, TLS and timeout failures.
fn classify_net(text: &str) -> (String, String) {
    let l = text.to_ascii_lowercase();
    if l.contains("no such host") || l.contains("dns error") || l.contains("failed to lookup") {
        return ("DNS: the name does not resolve".into(), "check the broker URL and DNS".into());
    }
    if l.contains("connection refused") || l.contains("tcp connect error") || l.contains("error trying to connect") {
        if l.contains("certificate") || l.contains("tls") {
            return (
                "TLS: the certificate is not trusted".into(),
                "pass --ca to gocred login, or SSL_CERT_FILE".into(),
            );
        }
        return ("cannot connect (refused)".into(), "is the broker running and the port right?".into());
    }
    if l.contains("x509") || l.contains("certificate") || l.contains("tls handshake") {
        return (
            "TLS: the certificate is not trusted or expired".into(),
            "pass --ca to gocred login, or SSL_CERT_FILE".into(),
        );
    }
    if l.contains("timeout") || l.contains("timed out") || l.contains("deadline exceeded") {
        return ("timed out".into(), "the network or the broker is slow: retry; check the broker's /readyz".into());
    }
    ("failed".into(), String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goprivate_globs_match_like_the_go_command() {
        assert!(matches_globs("corp.test", "corp.test/acme/lib"));
        assert!(matches_globs("*.corp.test,other", "git.corp.test/a"));
        assert!(matches_globs("corp.test/ac*", "corp.test/acme/x"));
        assert!(!matches_globs("corp.test/b", "corp.test/acme/x"));
        assert!(!matches_globs("", "corp.test"));
    }

    #[test]
    fn certificate_expiry_is_read_from_der() {
        for (y, m, d) in [(2031, 5, 6), (2061, 12, 31)] {
            // UTCTime before 2050, GeneralizedTime after.
            let mut p = rcgen::CertificateParams::new(vec!["broker.test".into()]).unwrap();
            p.not_after = rcgen::date_time_ymd(y, m, d);
            let cert = p.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap();
            let want = time::Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
            let want = want.with_hms(0, 0, 0).unwrap().assume_utc().unix_timestamp();
            assert_eq!(crate::client::api::cert_not_after(cert.der()), Some(want));
        }
        assert_eq!(crate::client::api::cert_not_after(b"\x30\x82\xff"), None);
    }

    #[test]
    fn credentials_in_go_env_values_are_never_shown() {
        let p = shown("GOPROXY", "https://u:s3cret@proxy.corp/mod,https://b.test/mod|off");
        assert_eq!(p, "https://proxy.corp/mod,https://b.test/mod|off");
        assert_eq!(
            shown("GOAUTH", "/bin/gocred goauth; helper --token=s3cret; netrc"),
            "/bin/gocred goauth; helper …; netrc"
        );
        assert_eq!(shown("GOFLAGS", "-mod=mod -ldflags=-X=main.key=s3cret"), "-mod -ldflags");
        let env = Some(BTreeMap::from([("GOPROXY".to_string(), "https://a:s3cret@b.test/mod,off".to_string())]));
        assert_eq!(broker_from_goproxy(&env).as_deref(), Some("https://b.test"));
    }

    #[test]
    fn http_dates_parse() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784111777));
        assert_eq!(parse_http_date("garbage"), None);
    }
}
