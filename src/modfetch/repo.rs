//! One module in one git repository, with the go command's semantics
//! (`cmd/go/internal/modfetch/coderepo.go`): versions from tags, revision → module version
//! (tags, pseudo-versions, `+incompatible`), where the module's go.mod lives (`findDir`).
//! See `docs/design/git-modules.md` for every rule and its source.
//!
//! Must not: build zips (that is [`super::zip`]) or know about HTTP.

use super::git::{GitError, Mirror, Refs};
use super::{gomod, semver};
use std::cmp::Ordering;

/// The go command reads a go.mod from git with no cap (`codehost/git.go:ReadFile` ignores
/// `MaxGoMod`; the 16 MiB limit bites only when the zip is built), so `.info`/`.mod` of a
/// version with a larger go.mod succeed. The broker holds a go.mod in memory to read it:
/// it follows the go command up to this bound and refuses beyond it.
pub const MAX_GO_MOD_READ: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The module or version does not exist (the go command's own words).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Git(#[from] GitError),
}

fn nf(msg: impl Into<String>) -> RepoError {
    RepoError::NotFound(msg.into())
}

/// Module path → repository root, codeDir, major suffix (`newCodeRepo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub module: String,
    pub root: String,
    /// The module's directory in the repository (`""`: the root).
    pub dir: String,
    pub path_major: String,
    pub path_prefix: String,
}

impl Layout {
    pub fn new(module: &str, root: &str) -> Result<Layout, RepoError> {
        let (prefix, pm, ok) = semver::split_path_version(module);
        if !ok {
            return Err(nf(format!("invalid module path {module:?}")));
        }
        let dir = if root == module || prefix == root {
            String::new()
        } else if let Some(d) = prefix.strip_prefix(root).and_then(|d| d.strip_prefix('/')) {
            d.to_string()
        } else {
            return Err(nf(format!("module path {module} is not in repository {root}")));
        };
        Ok(Layout { module: module.into(), root: root.into(), dir, path_major: pm.into(), path_prefix: prefix.into() })
    }

    fn tag_prefix(&self) -> String {
        if self.dir.is_empty() { String::new() } else { format!("{}/", self.dir) }
    }

    fn join(&self, file: &str) -> String {
        if self.dir.is_empty() { file.to_string() } else { format!("{}/{file}", self.dir) }
    }
}

/// A resolved revision.
#[derive(Debug, Clone)]
pub struct RevInfo {
    pub hash: String,
    pub short: String,
    /// Committer time, Unix seconds.
    pub time: i64,
    /// The revision as asked for (a tag name when it was one).
    pub name: String,
    /// Tags (full names, prefix included) on this commit.
    pub tags: Vec<String>,
    pub git_ref: Option<String>,
}

/// The answer to `.info`.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub version: String,
    pub rev: RevInfo,
}

pub struct CodeRepo<'a> {
    pub git: &'a Mirror,
    pub refs: &'a Refs,
    pub layout: &'a Layout,
}

pub fn timestamp(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}{:02}{:02}{:02}{:02}{:02}",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute(),
                d.second()
            )
        })
        .unwrap_or_default()
}

pub fn rfc3339(t: i64) -> String {
    let s = timestamp(t);
    if s.len() != 14 {
        return String::new();
    }
    format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[8..10], &s[10..12], &s[12..14])
}

impl CodeRepo<'_> {
    async fn ensure(&self, hash: &str) -> Result<(), GitError> {
        if !self.git.has_commit(hash).await {
            self.git.fetch().await?;
        }
        Ok(())
    }

    async fn read(&self, hash: &str, file: &str) -> Result<Option<Vec<u8>>, RepoError> {
        self.ensure(hash).await?;
        Ok(self.git.read_file(hash, file, MAX_GO_MOD_READ).await?)
    }

    /// `codehost/git.go:stat`: tag, branch, HEAD, hash prefix — in that order.
    pub async fn stat(&self, rev: &str) -> Result<RevInfo, RepoError> {
        let refs = self.refs;
        let (hash, git_ref) = if let Some(h) = refs.map.get(&format!("refs/tags/{rev}")) {
            (h.clone(), Some(format!("refs/tags/{rev}")))
        } else if let Some(h) = refs.map.get(&format!("refs/heads/{rev}")) {
            (h.clone(), Some(format!("refs/heads/{rev}")))
        } else if rev == "HEAD" {
            (refs.head.clone().ok_or_else(|| nf("no commits"))?, Some("HEAD".into()))
        } else if (7..=40).contains(&rev.len()) && rev.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        {
            let mut tips: Vec<&String> =
                refs.map.values().chain(refs.head.iter()).filter(|h| h.starts_with(rev)).collect();
            tips.sort();
            tips.dedup();
            match tips.len() {
                1 => (tips[0].clone(), None),
                0 => {
                    self.git.fetch().await?;
                    match self.git.commit_info(rev).await {
                        Ok((h, _)) if h.starts_with(rev) => (h, None),
                        _ => return Err(nf(format!("unknown revision {rev}"))),
                    }
                }
                _ => return Err(nf(format!("ambiguous revision {rev}"))),
            }
        } else {
            return Err(nf(format!("unknown revision {rev}")));
        };
        self.ensure(&hash).await?;
        let (hash, time) = self.git.commit_info(&hash).await.map_err(|e| match e.is_not_found() {
            true => nf(format!("unknown revision {rev}")),
            false => e.into(),
        })?;
        let tags = refs.tags().filter(|(_, h)| *h == hash).map(|(t, _)| t.to_string()).collect();
        Ok(RevInfo { short: hash[..12.min(hash.len())].to_string(), hash, time, name: rev.into(), tags, git_ref })
    }

    /// `@v/list`: canonical tags under the prefix, `+incompatible` ones as the go command lists them.
    pub async fn versions(&self) -> Result<Vec<String>, RepoError> {
        let p = self.layout.tag_prefix();
        let (mut list, mut incompatible) = (Vec::new(), Vec::new());
        for (tag, _) in self.refs.tags() {
            let Some(v) = tag.strip_prefix(&p) else { continue };
            if v.is_empty() || v != semver::canonical(v) || semver::is_pseudo(v) {
                continue;
            }
            if !semver::match_path_major(v, &self.layout.path_major) {
                if self.layout.dir.is_empty() && self.layout.path_major.is_empty() && semver::major(v).as_str() > "v1" {
                    incompatible.push(v.to_string());
                }
                continue;
            }
            list.push(v.to_string());
        }
        semver::sort(&mut list);
        semver::sort(&mut incompatible);
        if incompatible.is_empty() {
            return Ok(list);
        }
        if let Some(last) = list.last() {
            let hash = &self.refs.map[&format!("refs/tags/{p}{last}")];
            if self.read(hash, "go.mod").await?.is_some() {
                return Ok(list);
            }
        }
        let mut i = 0;
        while i < incompatible.len() {
            let m = semver::major(&incompatible[i]);
            let j = incompatible[i..]
                .iter()
                .position(|v| semver::major(v) != m)
                .map(|k| i + k)
                .unwrap_or(incompatible.len());
            let latest = &incompatible[j - 1];
            let hash = &self.refs.map[&format!("refs/tags/{latest}")];
            if self.read(hash, "go.mod").await?.is_none() {
                list.extend(incompatible[i..j].iter().map(|v| format!("{v}+incompatible")));
            }
            i = j;
        }
        Ok(list)
    }

    /// `revToRev`: module version → git revision.
    fn rev_to_rev(&self, v: &str) -> String {
        if !semver::is_valid(v) {
            return v.to_string();
        }
        if let Some(p) = semver::pseudo_parts(v) {
            return p.rev;
        }
        let v = v.strip_suffix("+incompatible").unwrap_or(v);
        format!("{}{v}", self.layout.tag_prefix())
    }

    /// `findDir`: the revision, the module's directory and its go.mod (None: none, legacy).
    pub async fn find_dir(&self, version: &str) -> Result<(RevInfo, String, Option<Vec<u8>>), RepoError> {
        if !semver::is_valid(version) {
            return Err(nf(format!("malformed semantic version {version:?}")));
        }
        let rev = self.rev_to_rev(version);
        let info = self.stat(&rev).await?;
        let l = self.layout;
        let pm = l.path_major.as_str();
        let file1 = l.join("go.mod");
        let gomod1 = self.read(&info.hash, &file1).await?;
        let mpath1 = gomod1.as_deref().map(gomod::module_path).unwrap_or_default();
        let found1 = gomod1.is_some() && gomod::is_major(&mpath1, pm);
        let mut file2 = String::new();
        if !pm.is_empty() && l.root != l.module {
            let dir2 = l.join(&pm[1..]);
            file2 = format!("{dir2}/go.mod");
            let gomod2 = self.read(&info.hash, &file2).await?;
            let mpath2 = gomod2.as_deref().map(gomod::module_path).unwrap_or_default();
            let found2 = gomod2.is_some() && gomod::is_major(&mpath2, pm);
            if found1 && found2 {
                return Err(nf(format!(
                    "{}/{file1} and ...{pm}/go.mod both have ...{pm} module paths at revision {rev}",
                    l.path_prefix
                )));
            }
            if found2 {
                return Ok((info, dir2, gomod2));
            }
            if gomod2.is_some() {
                return Err(nf(match mpath2.is_empty() {
                    true => format!("{}/{file2} is missing module path at revision {rev}", l.root),
                    false => format!("{}/{file2} has non-...{pm} module path {mpath2:?} at revision {rev}", l.root),
                }));
            }
        }
        if found1 {
            return Ok((info, l.dir.clone(), gomod1));
        }
        if gomod1.is_some() {
            let suffix = if file2.is_empty() { String::new() } else { format!(" (and ...{pm}/go.mod does not exist)") };
            return Err(nf(if mpath1.is_empty() {
                format!("{file1} is missing module path{suffix} at revision {rev}")
            } else if !pm.is_empty() {
                format!("{file1} has non-...{pm} module path {mpath1:?}{suffix} at revision {rev}")
            } else {
                format!("{file1} has post-{} module path {mpath1:?}{suffix} at revision {rev}", semver::major(version))
            }));
        }
        if l.dir.is_empty() && pm.is_empty() {
            return Ok((info, String::new(), None));
        }
        Err(nf(match file2.is_empty() {
            true => format!("missing {}/go.mod at revision {rev}", l.path_prefix),
            false => format!("missing {}/go.mod and ...{pm}/go.mod at revision {rev}", l.path_prefix),
        }))
    }

    /// `.mod`: the go.mod blob, or the synthesized `module` line.
    pub async fn go_mod(&self, version: &str) -> Result<Vec<u8>, RepoError> {
        if semver::is_pseudo(version) {
            self.resolve(version).await?;
        }
        let (_, _, gomod) = self.find_dir(version).await?;
        Ok(gomod.unwrap_or_else(|| legacy_go_mod(&self.layout.module).into_bytes()))
    }

    async fn retracted(&self) -> Vec<(String, String)> {
        let Ok(mut versions) = self.versions().await else { return Vec::new() };
        if let Some(i) = versions.iter().position(|v| v.ends_with("+incompatible")) {
            versions.truncate(i);
        }
        let Some(highest) =
            versions.iter().rev().find(|v| semver::prerelease(v).is_empty()).or(versions.last()).cloned()
        else {
            return Vec::new();
        };
        match Box::pin(self.go_mod(&highest)).await {
            Ok(data) => gomod::retractions(&data),
            Err(_) => Vec::new(),
        }
    }

    /// `.info` for a query (version, branch, tag, hash, `HEAD`): `Stat` + `convert`.
    pub async fn resolve(&self, query: &str) -> Result<Resolved, RepoError> {
        let info = self.stat(&self.rev_to_rev(query)).await?;
        let stat_vers = if query == "HEAD" { "" } else { query };
        self.convert(info, stat_vers).await
    }

    /// `@latest`: the remote HEAD, converted.
    pub async fn latest(&self) -> Result<Resolved, RepoError> {
        let info = self.stat("HEAD").await?;
        self.convert(info, "").await
    }

    async fn can_use_incompatible(&self, hash: &str, v: &str, stat_vers: &str) -> Result<bool, RepoError> {
        if !self.layout.dir.is_empty() || !self.layout.path_major.is_empty() {
            return Ok(false);
        }
        if self.read(hash, "go.mod").await?.is_some() {
            return Ok(false);
        }
        if !v.is_empty() && !stat_vers.ends_with("+incompatible") {
            return Ok(self.read(hash, &format!("{}/go.mod", semver::major(v))).await?.is_none());
        }
        Ok(true)
    }

    async fn check_canonical(&self, info: &RevInfo, v: &str, stat_vers: &str) -> Result<Resolved, RepoError> {
        let l = self.layout;
        self.find_dir(v).await.map_err(|e| match e {
            RepoError::NotFound(m) => nf(format!("{}@{v}: invalid version: {m}", l.module)),
            other => other,
        })?;
        let mut v = v.to_string();
        if v == stat_vers.strip_suffix("+incompatible").unwrap_or(stat_vers) {
            v = stat_vers.to_string();
        }
        let base = v.strip_suffix("+incompatible").unwrap_or(&v).to_string();
        let invalid = |why: String| nf(format!("{}@{}: invalid version: {why}", l.module, v));
        let mut err = None;
        if !semver::match_path_major(&base, &l.path_major) {
            if self.can_use_incompatible(&info.hash, &base, stat_vers).await? {
                v = format!("{base}+incompatible");
            } else if !l.path_major.is_empty() {
                err = Some(invalid("module path includes a major version suffix, so major version must match".into()));
            } else {
                err = Some(invalid(format!(
                    "module contains a go.mod file, so module path must match major version (\"{}/{}\")",
                    l.path_prefix,
                    semver::major(&v)
                )));
            }
        } else if v.ends_with("+incompatible") {
            err = Some(invalid(format!(
                "+incompatible suffix not allowed: major version {} is compatible",
                semver::major(&v)
            )));
        }
        if !stat_vers.is_empty() && stat_vers == semver::canonical_version(stat_vers) {
            let stat_base = stat_vers.strip_suffix("+incompatible").unwrap_or(stat_vers);
            if stat_base != base {
                return Err(nf(format!(
                    "{}@{stat_vers}: invalid version: resolves to version {v} ({stat_base} is not a tag)",
                    l.module
                )));
            }
        }
        if let Some(e) = err {
            return Err(e);
        }
        Ok(Resolved { version: v, rev: info.clone() })
    }

    fn tag_to_version(&self, tag: &str) -> (String, bool) {
        let Some(trimmed) = tag.strip_prefix(&self.layout.tag_prefix()) else { return (String::new(), false) };
        if semver::is_pseudo(tag) {
            return (String::new(), false);
        }
        let v = semver::canonical(trimmed);
        if v.is_empty() || !trimmed.starts_with(&v) {
            return (String::new(), false);
        }
        let canonical = v == trimmed;
        (v, canonical)
    }

    async fn convert(&self, info: RevInfo, stat_vers: &str) -> Result<Resolved, RepoError> {
        if semver::is_pseudo(stat_vers) {
            let r = self.check_canonical(&info, stat_vers, stat_vers).await?;
            self.validate_pseudo(&info, stat_vers).await?;
            return Ok(r);
        }
        let retracted = self.retracted().await;
        let (v, canonical) = self.tag_to_version(&info.name);
        if canonical && let Ok(r) = self.check_canonical(&info, &v, stat_vers).await {
            return Ok(r);
        }
        let (mut highest, mut pseudo_base) = (String::new(), String::new());
        for tag in &info.tags {
            let (v, canonical) = self.tag_to_version(tag);
            if !stat_vers.is_empty() && semver::compare(&v, stat_vers) == Ordering::Equal {
                if canonical {
                    return self.check_canonical(&info, &v, stat_vers).await;
                }
                pseudo_base = v.clone();
            }
            if canonical
                && semver::compare(&highest, &v) == Ordering::Less
                && !gomod::is_retracted(&retracted, &v)
                && (semver::match_path_major(&v, &self.layout.path_major)
                    || self.can_use_incompatible(&info.hash, &v, stat_vers).await?)
            {
                highest = v;
            }
        }
        if !highest.is_empty() {
            return self.check_canonical(&info, &highest, stat_vers).await;
        }
        if pseudo_base.is_empty() {
            pseudo_base = self.recent_tag(&info, &retracted, stat_vers).await?;
        }
        let major = semver::path_major_prefix(&self.layout.path_major);
        let pv = semver::pseudo_version(major, &pseudo_base, &timestamp(info.time), &info.short);
        self.check_canonical(&info, &pv, stat_vers).await
    }

    /// `RecentTag`: the highest allowed tag version reachable from the commit.
    async fn recent_tag(
        &self,
        info: &RevInfo,
        retracted: &[(String, String)],
        stat_vers: &str,
    ) -> Result<String, RepoError> {
        let p = self.layout.tag_prefix();
        let mut highest = String::new();
        for tag in self.git.tags_merged(&info.hash).await? {
            let Some(semtag) = tag.strip_prefix(&p) else { continue };
            let (v, _) = self.tag_to_version(&tag);
            if v.is_empty() || gomod::is_retracted(retracted, &v) {
                continue;
            }
            if !semver::match_path_major(&v, &self.layout.path_major)
                && !self.can_use_incompatible(&info.hash, &v, stat_vers).await?
            {
                continue;
            }
            if semver::compare(semtag, &highest) == Ordering::Greater {
                highest = semtag.to_string();
            }
        }
        Ok(if highest.is_empty() { String::new() } else { self.tag_to_version(&format!("{p}{highest}")).0 })
    }

    async fn validate_pseudo(&self, info: &RevInfo, version: &str) -> Result<(), RepoError> {
        let invalid = |why: String| nf(format!("{}@{version}: invalid pseudo-version: {why}", self.layout.module));
        let parts = semver::pseudo_parts(version).ok_or_else(|| invalid("malformed".into()))?;
        if parts.rev != info.short {
            return Err(invalid(if parts.rev.starts_with(&info.short) {
                format!("revision is longer than canonical (expected {})", info.short)
            } else if info.short.starts_with(&parts.rev) {
                format!("revision is shorter than canonical (expected {})", info.short)
            } else {
                format!("does not match short name of revision (expected {})", info.short)
            }));
        }
        if parts.timestamp != timestamp(info.time) {
            return Err(invalid(format!(
                "does not match version-control timestamp (expected {})",
                timestamp(info.time)
            )));
        }
        let p = self.layout.tag_prefix();
        let base = semver::pseudo_parts(version.strip_suffix("+incompatible").unwrap_or(version))
            .map(|x| x.base)
            .ok_or_else(|| invalid("malformed".into()))?;
        if base.is_empty() {
            if self.layout.path_major.is_empty() && semver::major(version) == "v1" {
                return Err(invalid("major version without preceding tag must be v0, not v1".into()));
            }
            return Ok(());
        }
        if info.tags.iter().any(|t| t.strip_prefix(&p) == Some(base.as_str())) {
            return Err(invalid(format!(
                "tag ({p}{base}) found on revision {} is already canonical, so should not be replaced with a pseudo-version derived from that tag",
                parts.rev
            )));
        }
        let mut last = None;
        for (tag, _) in self.refs.tags() {
            let Some(v) = tag.strip_prefix(&p) else { continue };
            if semver::compare(v, &base) == Ordering::Equal {
                last = Some(tag.to_string());
                if self.git.is_ancestor(&format!("refs/tags/{tag}"), &info.hash).await? {
                    return Ok(());
                }
            }
        }
        Err(invalid(match last {
            None => format!("preceding tag ({base}) not found"),
            Some(t) => format!("revision {} is not a descendent of preceding tag ({t})", parts.rev),
        }))
    }
}

/// `LegacyGoMod`: what the go command synthesizes for a module without go.mod.
pub fn legacy_go_mod(module: &str) -> String {
    format!("module {module}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = Layout::new("x.test/r.git/sub/v2", "x.test/r.git").unwrap();
        assert_eq!((l.dir.as_str(), l.path_major.as_str(), l.path_prefix.as_str()), ("sub", "/v2", "x.test/r.git/sub"));
        let l = Layout::new("x.test/r.git/v2", "x.test/r.git").unwrap();
        assert_eq!((l.dir.as_str(), l.path_major.as_str()), ("", "/v2"));
        assert!(Layout::new("y.test/a", "x.test/r.git").is_err());
        assert_eq!(rfc3339(1704164645), "2024-01-02T03:04:05Z");
        assert_eq!(timestamp(1704164645), "20240102030405");
        assert_eq!(legacy_go_mod("x.test/a"), "module x.test/a\n");
    }
}
