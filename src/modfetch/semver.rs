//! Go's semantic versions and module-version rules, as `golang.org/x/mod/semver` and
//! `golang.org/x/mod/module` define them (a leading `v`, shorthands `v1`/`v1.2`, build metadata
//! ignored in comparisons), plus pseudo-versions and module file-path checks.
//!
//! Must not: run commands or read files — pure functions only.

use std::cmp::Ordering;
use std::sync::LazyLock;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Parsed<'a> {
    major: &'a str,
    minor: &'a str,
    patch: &'a str,
    short: &'static str,
    prerelease: &'a str,
    build: &'a str,
}

fn num(v: &str) -> Option<(&str, &str)> {
    let end = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if end == 0 || (end > 1 && v.starts_with('0')) {
        return None;
    }
    Some((&v[..end], &v[end..]))
}

fn idents_ok(s: &str, numeric_rule: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !(numeric_rule && id.len() > 1 && id.starts_with('0') && id.chars().all(|c| c.is_ascii_digit()))
    })
}

fn parse(v: &str) -> Option<Parsed<'_>> {
    let v = v.strip_prefix('v')?;
    let (major, rest) = num(v)?;
    if rest.is_empty() {
        return Some(Parsed { major, minor: "0", patch: "0", short: ".0.0", ..Default::default() });
    }
    let (minor, rest) = num(rest.strip_prefix('.')?)?;
    if rest.is_empty() {
        return Some(Parsed { major, minor, patch: "0", short: ".0", ..Default::default() });
    }
    let (patch, mut rest) = num(rest.strip_prefix('.')?)?;
    let mut p = Parsed { major, minor, patch, ..Default::default() };
    if let Some(r) = rest.strip_prefix('-') {
        let end = r.find('+').unwrap_or(r.len());
        if !idents_ok(&r[..end], true) {
            return None;
        }
        p.prerelease = &rest[..end + 1];
        rest = &r[end..];
    }
    if let Some(b) = rest.strip_prefix('+') {
        if !idents_ok(b, false) {
            return None;
        }
        p.build = rest;
        rest = "";
    }
    rest.is_empty().then_some(p)
}

pub fn is_valid(v: &str) -> bool {
    parse(v).is_some()
}

/// `v1.2` → `v1.2.0`; build metadata dropped; `""` if invalid.
pub fn canonical(v: &str) -> String {
    match parse(v) {
        Some(p) => format!("v{}.{}.{}{}", p.major, p.minor, p.patch, p.prerelease),
        None => String::new(),
    }
}

pub fn major(v: &str) -> String {
    parse(v).map(|p| format!("v{}", p.major)).unwrap_or_default()
}

pub fn prerelease(v: &str) -> &str {
    parse(v).map(|p| p.prerelease).unwrap_or("")
}

pub fn build(v: &str) -> &str {
    parse(v).map(|p| p.build).unwrap_or("")
}

fn cmp_int(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn cmp_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let (mut x, mut y) = (a[1..].split('.'), b[1..].split('.'));
    loop {
        match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(i), Some(j)) => {
                let (ni, nj) = (i.bytes().all(|c| c.is_ascii_digit()), j.bytes().all(|c| c.is_ascii_digit()));
                let o = match (ni, nj) {
                    (true, true) => cmp_int(i, j),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => i.cmp(j),
                };
                if o != Ordering::Equal {
                    return o;
                }
            }
        }
    }
}

/// `semver.Compare`: an invalid version is less than every valid one, and equal to another invalid.
pub fn compare(a: &str, b: &str) -> Ordering {
    match (parse(a), parse(b)) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(p), Some(q)) => cmp_int(p.major, q.major)
            .then_with(|| cmp_int(p.minor, q.minor))
            .then_with(|| cmp_int(p.patch, q.patch))
            .then_with(|| cmp_pre(p.prerelease, q.prerelease)),
    }
}

/// `semver.Sort`: by `compare`, ties broken by string order.
pub fn sort(list: &mut [String]) {
    list.sort_by(|a, b| compare(a, b).then_with(|| a.cmp(b)));
}

static PSEUDO: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^v[0-9]+\.(0\.0-|[0-9]+\.[0-9]+-([^+]*\.)?0\.)[0-9]{14}-[A-Za-z0-9]+(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$",
    )
    .expect("pseudo-version pattern")
});

pub fn is_pseudo(v: &str) -> bool {
    v.matches('-').count() >= 2 && is_valid(v) && PSEUDO.is_match(v)
}

/// The base, timestamp and revision of a pseudo-version (`module.PseudoVersionBase`, `…Time`, `…Rev`).
pub struct PseudoParts {
    pub base: String,
    pub timestamp: String,
    pub rev: String,
}

pub fn pseudo_parts(v: &str) -> Option<PseudoParts> {
    if !is_pseudo(v) {
        return None;
    }
    let b = build(v);
    let core = &v[..v.len() - b.len()];
    let (rest, rev) = core.rsplit_once('-')?;
    let i = rest.rfind('-')?;
    let (base, timestamp) = match rest.rfind('.') {
        Some(j) if j > i => (&rest[..j], &rest[j + 1..]),
        _ => (&rest[..i], &rest[i + 1..]),
    };
    let base = match prerelease(base) {
        "" if !b.is_empty() => return None,
        "" => String::new(),
        "-0" => {
            let release = &base[..base.len() - 2];
            let (head, patch) = release.rsplit_once('.')?;
            format!("{head}.{}{b}", dec_decimal(patch)?)
        }
        _ => format!("{}{b}", base.strip_suffix(".0")?),
    };
    Some(PseudoParts { base, timestamp: timestamp.to_string(), rev: rev.to_string() })
}

fn dec_decimal(d: &str) -> Option<String> {
    if d == "0" {
        return None;
    }
    let mut digits: Vec<u8> = d.bytes().collect();
    let mut i = digits.len();
    while i > 0 {
        i -= 1;
        if digits[i] == b'0' {
            digits[i] = b'9';
        } else {
            digits[i] -= 1;
            break;
        }
    }
    if digits.len() > 1 && digits[0] == b'0' {
        digits.remove(0);
    }
    String::from_utf8(digits).ok()
}

fn inc_decimal(d: &str) -> String {
    let mut digits: Vec<u8> = d.bytes().collect();
    let mut i = digits.len();
    loop {
        if i == 0 {
            digits.insert(0, b'1');
            break;
        }
        i -= 1;
        if digits[i] == b'9' {
            digits[i] = b'0';
        } else {
            digits[i] += 1;
            break;
        }
    }
    String::from_utf8(digits).expect("digits")
}

/// `module.PseudoVersion(major, older, t, rev)`: `timestamp` is `YYYYMMDDhhmmss` (UTC).
pub fn pseudo_version(major: &str, older: &str, timestamp: &str, rev: &str) -> String {
    let major = if major.is_empty() { "v0" } else { major };
    let segment = format!("{timestamp}-{rev}");
    let b = build(older).to_string();
    let older = canonical(older);
    if older.is_empty() {
        return format!("{major}.0.0-{segment}");
    }
    if !prerelease(&older).is_empty() {
        return format!("{older}.0.{segment}{b}");
    }
    let i = older.rfind('.').expect("canonical has dots") + 1;
    format!("{}{}-0.{segment}{b}", &older[..i], inc_decimal(&older[i..]))
}

/// `module.SplitPathVersion`: `(prefix, "/vN", ok)`.
pub fn split_path_version(path: &str) -> (&str, &str, bool) {
    let b = path.as_bytes();
    let mut i = b.len();
    let mut dot = false;
    while i > 0 && (b[i - 1].is_ascii_digit() || b[i - 1] == b'.') {
        dot |= b[i - 1] == b'.';
        i -= 1;
    }
    if i <= 1 || i == b.len() || b[i - 1] != b'v' || b[i - 2] != b'/' {
        return (path, "", true);
    }
    let (prefix, pm) = path.split_at(i - 2);
    if dot || pm.len() <= 2 || pm.as_bytes()[2] == b'0' || pm == "/v1" {
        return (path, "", false);
    }
    (prefix, pm, true)
}

/// `module.CheckPathMajor(v, pathMajor) == nil`.
pub fn match_path_major(v: &str, path_major: &str) -> bool {
    let m = major(v);
    if path_major.is_empty() {
        return m == "v0" || m == "v1" || build(v) == "+incompatible";
    }
    m == path_major[1..]
}

/// `module.PathMajorPrefix`: `"/v2"` → `"v2"`.
pub fn path_major_prefix(path_major: &str) -> &str {
    path_major.strip_prefix('/').unwrap_or("")
}

/// `module.CanonicalVersion`: canonical, keeping a `+incompatible` suffix.
pub fn canonical_version(v: &str) -> String {
    let c = canonical(v);
    if build(v) == "+incompatible" { format!("{c}+incompatible") } else { c }
}

/// `module.CheckFilePath` on one path (slash-separated, relative).
pub fn check_file_path(p: &str) -> bool {
    !p.is_empty() && !p.starts_with('/') && p.split('/').all(check_elem)
}

fn check_elem(e: &str) -> bool {
    if e.is_empty() || e.bytes().all(|c| c == b'.') || e.ends_with('.') {
        return false;
    }
    let allowed = |c: char| c.is_alphanumeric() || " !#$%&()+,-.=@[]^_{}~".contains(c);
    if !e.chars().all(|c| if c.is_ascii() { c.is_ascii_alphanumeric() || allowed(c) } else { c.is_alphabetic() }) {
        return false;
    }
    let short = e.split('.').next().unwrap_or(e);
    const RESERVED: &[&str] = &[
        "CON", "PRN", "AUX", "NUL", "COM0", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9",
        "COM¹", "COM²", "COM³", "LPT0", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹",
        "LPT²", "LPT³",
    ];
    !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(short))
}

/// `module.EscapePath` / `EscapeVersion`: uppercase letters as `!x`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_uppercase() {
            out.push('!');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_as_go_defines_it() {
        assert_eq!(canonical("v1.2"), "v1.2.0");
        assert_eq!(canonical("v1.2.3+meta"), "v1.2.3");
        assert_eq!(canonical("v1.2.3-rc.1"), "v1.2.3-rc.1");
        for bad in ["1.2.3", "v01.0.0", "v1.2.3-01", "v1-pre", "v1.2.3-", "v1.2.3+", "v1.2.3.4"] {
            assert!(!is_valid(bad), "{bad}");
        }
        assert_eq!(compare("v1.10.0", "v1.9.0"), Ordering::Greater);
        assert_eq!(compare("v1.0.0-rc.1", "v1.0.0"), Ordering::Less);
        assert_eq!(compare("v1.0.0-rc.2", "v1.0.0-rc.10"), Ordering::Less);
        assert_eq!(compare("v1.0.0-alpha", "v1.0.0-1"), Ordering::Greater);
        assert_eq!(compare("v1.0.0-a", "v1.0.0-a.1"), Ordering::Less);
        assert_eq!(major("v10.2.0"), "v10");
    }

    #[test]
    fn pseudo_versions_in_all_three_forms() {
        let (ts, rev) = ("20240102030405", "0123456789ab");
        assert_eq!(pseudo_version("", "", ts, rev), "v0.0.0-20240102030405-0123456789ab");
        assert_eq!(pseudo_version("v2", "", ts, rev), "v2.0.0-20240102030405-0123456789ab");
        assert_eq!(pseudo_version("", "v1.2.9", ts, rev), "v1.2.10-0.20240102030405-0123456789ab");
        assert_eq!(pseudo_version("", "v1.3.0-rc.1", ts, rev), "v1.3.0-rc.1.0.20240102030405-0123456789ab");
        for v in [
            "v0.0.0-20240102030405-0123456789ab",
            "v1.2.10-0.20240102030405-0123456789ab",
            "v1.3.0-rc.1.0.20240102030405-0123456789ab",
            "v2.0.1-0.20240102030405-0123456789ab+incompatible",
        ] {
            assert!(is_pseudo(v), "{v}");
        }
        assert!(!is_pseudo("v1.2.3"));
        assert_eq!(pseudo_parts("v1.2.10-0.20240102030405-0123456789ab").unwrap().base, "v1.2.9");
        assert_eq!(pseudo_parts("v1.3.0-rc.1.0.20240102030405-0123456789ab").unwrap().base, "v1.3.0-rc.1");
        let p = pseudo_parts("v0.0.0-20240102030405-0123456789ab").unwrap();
        assert_eq!((p.base.as_str(), p.timestamp.as_str(), p.rev.as_str()), ("", ts, rev));
        assert_eq!(
            pseudo_parts("v2.0.1-0.20240102030405-0123456789ab+incompatible").unwrap().base,
            "v2.0.0+incompatible"
        );
    }

    #[test]
    fn module_path_rules() {
        assert_eq!(split_path_version("x.test/a/v2"), ("x.test/a", "/v2", true));
        assert_eq!(split_path_version("x.test/a"), ("x.test/a", "", true));
        assert!(!split_path_version("x.test/a/v1").2);
        assert!(!split_path_version("x.test/a/v02").2);
        assert!(match_path_major("v2.0.0", "/v2") && !match_path_major("v2.0.0", ""));
        assert!(match_path_major("v2.0.0+incompatible", ""));
        assert!(check_file_path("a/b c.go") && !check_file_path("bad:name") && !check_file_path("a/CON.txt"));
        assert!(!check_file_path("a/./b") && !check_file_path("a/b.") && !check_file_path("a\\b"));
        assert_eq!(escape("github.com/Azure/X"), "github.com/!azure/!x");
    }
}
