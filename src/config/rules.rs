//! What every section validator shares: the error for a key, paths relative to the config
//! file, durations, and the one URL rule every URL-valued key is checked with.

use super::ConfigError;
use crate::proto::rules::secure_url;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the values being validated came from, for messages and relative paths.
pub(super) struct Ctx<'a> {
    origin: &'a str,
    /// The config file's directory (empty without a file).
    base: PathBuf,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(origin: &'a str, file: Option<&Path>) -> Ctx<'a> {
        Ctx { origin, base: file.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default() }
    }

    /// A problem with `key`.
    pub(super) fn err(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Key { origin: self.origin.to_string(), key: key.to_string(), message }
    }

    /// Relative paths in the file are relative to the file's directory.
    pub(super) fn rel(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() { p } else { self.base.join(p) }
    }

    /// `v` as a duration like `15m`, or `default` when not set.
    pub(super) fn duration(&self, key: &str, v: Option<&str>, default: Duration) -> Result<Duration, ConfigError> {
        match v {
            None => Ok(default),
            Some(s) => humantime::parse_duration(s)
                .map_err(|e| self.err(key, format!("`{s}` is not a duration like \"15m\" or \"12h\": {e}"))),
        }
    }

    /// `value` checked against `rule` and `shape`; the normalized URL, or the error `message`
    /// gives for the first thing wrong with it.
    pub(super) fn check_url(
        &self,
        key: &str,
        value: &str,
        (rule, shape): (UrlRule, UrlShape),
        message: impl FnOnce(UrlFault) -> String,
    ) -> Result<String, ConfigError> {
        url_fault(value, rule, shape)
            .map_or_else(|| Ok(shape.normalize(value).to_string()), |f| Err(self.err(key, message(f))))
    }
}

/// Which schemes a URL may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UrlRule {
    /// `https://` only (what `go` sends credentials to).
    Https,
    /// `https://`, or `http://` to a loopback host only ([`secure_url`]).
    HttpsOrLoopback,
    /// `https://` or `http://`.
    Any,
}

impl UrlRule {
    /// Does `u` start with a scheme this rule allows (and, for `http://`, name a host it allows)?
    pub(super) fn admits(self, u: &str) -> bool {
        match self {
            UrlRule::Https => u.starts_with("https://"),
            UrlRule::HttpsOrLoopback => secure_url(u),
            UrlRule::Any => u.starts_with("https://") || u.starts_with("http://"),
        }
    }
}

/// What may follow `scheme://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UrlShape {
    /// `host[:port]` and nothing else, trailing `/` dropped (an origin).
    Origin,
    /// `host[:port][/path]`, trailing `/` dropped: no whitespace, no user info in the
    /// authority, no query or fragment.
    Base,
    /// Kept byte for byte (compared to token claims): no whitespace, `?`, `#` or `@` anywhere.
    Verbatim,
    /// Anything that is not empty and has no whitespace, trailing `/` dropped.
    Address,
}

impl UrlShape {
    fn normalize(self, u: &str) -> &str {
        match self {
            UrlShape::Verbatim => u,
            UrlShape::Origin | UrlShape::Base | UrlShape::Address => u.trim_end_matches('/'),
        }
    }
}

/// The first thing wrong with a URL, in the order checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UrlFault {
    /// A scheme (or, for [`UrlRule::HttpsOrLoopback`], an `http://` host) the rule refuses.
    Scheme,
    /// Whitespace, where the shape forbids it.
    Whitespace,
    /// What follows the scheme does not have the shape.
    Shape,
}

fn url_fault(value: &str, rule: UrlRule, shape: UrlShape) -> Option<UrlFault> {
    let u = shape.normalize(value);
    let Some(rest) = u.strip_prefix("https://").or_else(|| u.strip_prefix("http://")).filter(|_| rule.admits(u)) else {
        return Some(UrlFault::Scheme);
    };
    let authority = rest.split('/').next().unwrap_or("");
    let whitespace = u.contains(char::is_whitespace);
    let shape_ok = match shape {
        UrlShape::Origin => return (rest.is_empty() || rest.contains('/')).then_some(UrlFault::Shape),
        UrlShape::Base => !authority.is_empty() && !authority.contains('@') && !u.contains(['?', '#']),
        UrlShape::Verbatim => !u.contains(['?', '#', '@']),
        UrlShape::Address => !rest.is_empty(),
    };
    if whitespace {
        Some(UrlFault::Whitespace)
    } else if !shape_ok {
        Some(UrlFault::Shape)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules_and_shapes() {
        use UrlFault::*;
        use UrlRule::*;
        use UrlShape::*;
        for (v, rule, shape, want) in [
            ("https://a.example/", Any, Origin, None),
            ("http://a.example", Any, Origin, None),
            ("https://a.example/p", Any, Origin, Some(Shape)),
            ("ftp://a.example", Any, Origin, Some(Scheme)),
            ("https://h:1/p/", Https, Base, None),
            ("http://h", Https, Base, Some(Scheme)),
            ("https://u@h/p", Https, Base, Some(Shape)),
            ("https://h/p?q", Any, Base, Some(Shape)),
            ("https://h /p", Any, Base, Some(Whitespace)),
            ("https:///p", Any, Base, Some(Shape)),
            ("http://127.0.0.1:8080/x", HttpsOrLoopback, Verbatim, None),
            ("http://sso.example", HttpsOrLoopback, Verbatim, Some(Scheme)),
            ("https://sso.example/a@b", HttpsOrLoopback, Verbatim, Some(Shape)),
            ("http://vault:8200/", Any, Address, None),
            ("https://", Any, Address, Some(Scheme)),
        ] {
            assert_eq!(url_fault(v, rule, shape), want, "{v} {rule:?} {shape:?}");
        }
        assert_eq!(Verbatim.normalize("https://a/"), "https://a/");
        assert_eq!(Base.normalize("https://a//"), "https://a");
    }
}
