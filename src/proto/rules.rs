//! URL and path rules both sides enforce: which URLs may carry tokens, which module and
//! repository paths are well-formed.
//!
//! Must not: depend on broker modules.

/// `https://…`, or `http://` to a loopback address only (tests, local dev).
pub fn secure_url(u: &str) -> bool {
    if u.starts_with("https://") {
        return true;
    }
    let Some(rest) = u.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map(|(h, _)| h).unwrap_or(authority),
    };
    host == "localhost" || host == "::1" || host.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A path in normal form, made only of characters module paths and git URLs use (letters,
/// digits, `. _ ~ + ! @ -`, and `/` between non-empty elements other than `.` and `..`).
/// Everything else — `%`, `?`, `#`, `\\`, quotes, whitespace — is refused, so the path the
/// policy sees is byte for byte the path sent upstream.
pub fn clean_path(p: &str) -> bool {
    !p.is_empty()
        && p.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '~' | '+' | '!' | '@' | '-' | '/'))
}

/// A bare DNS host name (letters, digits, `.`, `-`).
pub fn bare_host(h: &str) -> bool {
    !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}
