//! From `git archive` to a module zip, the way `coderepo.go:Zip` and `golang.org/x/mod/zip`
//! do it: strip the archive's top directory and the module's directory, drop directory
//! entries, add the root LICENSE to a subdirectory module without one, then classify every
//! file (vendored packages by the root go.mod's `go` line, nested modules, `.hg_archival.txt`,
//! symlinks and irregular files omitted; invalid names, case-fold collisions and size limits
//! refused) and write `module@version/<path>` entries, deflated, with no directory entries.
//!
//! Both archives live in files: memory stays flat whatever the module's size.
//!
//! Must not: run git (the caller hands it the archive and the LICENSE blob).

use super::{gomod, semver};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::Path;

pub const MAX_ZIP_FILE: u64 = 500 << 20;
pub const MAX_LICENSE: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ZipError {
    /// The version cannot be packaged (a file the go command refuses): permanent.
    #[error("{0}")]
    Refused(String),
    #[error("cannot read the git archive: {0}")]
    ReadArchive(#[source] zip::result::ZipError),
    #[error("cannot write the module zip: {0}")]
    Write(#[source] std::io::Error),
}

/// One candidate file: name relative to the module root, and where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub path: String,
    pub kind: Kind,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Symlink,
    Other,
}

/// `isVendoredPackage(name, vers)`.
fn is_vendored(name: &str, go124: bool) -> bool {
    if go124 && name == "vendor/modules.txt" {
        return true;
    }
    let rest = if let Some(r) = name.strip_prefix("vendor/") {
        r
    } else if let Some(j) = name.find("/vendor/") {
        if go124 { &name[j + 8..] } else { name.get(8..).unwrap_or("") }
    } else {
        return false;
    };
    rest.contains('/')
}

fn fold(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// `checkFiles`: the indexes of the files to keep, or the first refusal.
pub fn check_files(files: &[Candidate], root_go_mod: Option<&[u8]>) -> Result<Vec<usize>, ZipError> {
    let mut have_go_mod = HashSet::new();
    for f in files {
        let (dir, base) =
            f.path.rsplit_once('/').map(|(d, b)| (format!("{d}/"), b)).unwrap_or((String::new(), &f.path));
        if base.eq_ignore_ascii_case("go.mod") && f.kind == Kind::Regular {
            have_go_mod.insert(dir);
        }
    }
    let go124 = gomod::go_at_least(root_go_mod.and_then(gomod::go_version).as_deref(), 24);
    let in_submodule = |p: &str| {
        let mut p = p;
        while let Some((dir, _)) = p.rsplit_once('/') {
            if have_go_mod.contains(&format!("{dir}/")) {
                return true;
            }
            p = dir;
        }
        false
    };
    let mut seen: HashMap<String, (String, bool)> = HashMap::new();
    let mut keep = Vec::new();
    let mut total = 0u64;
    let refuse = |p: &str, why: &str| Err(ZipError::Refused(format!("{p}: {why}")));
    for (i, f) in files.iter().enumerate() {
        let p = f.path.as_str();
        if p.starts_with('/') || p.split('/').any(|e| e.is_empty() || e == "." || e == "..") {
            return refuse(p, "malformed file path: not clean");
        }
        if is_vendored(p, go124) || in_submodule(p) || p == ".hg_archival.txt" {
            continue;
        }
        if !semver::check_file_path(p) {
            return refuse(p, "malformed file path: invalid characters or reserved name");
        }
        if p.eq_ignore_ascii_case("go.mod") && p != "go.mod" {
            return refuse(p, "go.mod file not in module root directory (case-insensitive match)");
        }
        let mut q = p.to_string();
        let mut is_dir = false;
        loop {
            match seen.get(&fold(&q)) {
                Some((other, other_dir)) if *other != q => {
                    return refuse(p, &format!("case-insensitive file name collision: {other:?} and {q:?}"));
                }
                Some((_, other_dir)) if *other_dir != is_dir => {
                    return refuse(p, "entry is both a file and a directory");
                }
                Some(_) if !is_dir => return refuse(p, "multiple entries for file"),
                Some(_) => {}
                None => {
                    seen.insert(fold(&q), (q.clone(), is_dir));
                }
            }
            match q.rsplit_once('/') {
                Some((d, _)) => {
                    q = d.to_string();
                    is_dir = true;
                }
                None => break,
            }
        }
        if f.kind != Kind::Regular {
            continue;
        }
        total = total.saturating_add(f.size);
        if total > MAX_ZIP_FILE {
            return refuse(p, &format!("module source tree too large (max size is {MAX_ZIP_FILE} bytes)"));
        }
        if (p == "go.mod" || p == "LICENSE") && f.size > 16 << 20 {
            return refuse(p, "file too large (max size is 16777216 bytes)");
        }
        keep.push(i);
    }
    Ok(keep)
}

enum Source {
    Archive(usize),
    License(Vec<u8>),
}

fn kind_of(mode: Option<u32>) -> Kind {
    match mode.map(|m| m & 0o170000) {
        None | Some(0o100000) => Kind::Regular,
        Some(0o120000) => Kind::Symlink,
        Some(0o040000) => Kind::Other,
        Some(_) => Kind::Other,
    }
}

/// Build `dest` (the module zip for `module@version`) from the git archive at `archive`.
/// `subdir` is the module's directory in the repository; `root_license` the repository-root
/// LICENSE blob (used only for a subdirectory module without its own).
pub fn build(
    archive: &Path,
    subdir: &str,
    root_license: Option<Vec<u8>>,
    module: &str,
    version: &str,
    dest: &Path,
) -> Result<(), ZipError> {
    let f = std::fs::File::open(archive).map_err(ZipError::Write)?;
    let mut za = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(ZipError::ReadArchive)?;
    let sub = if subdir.is_empty() { String::new() } else { format!("{}/", subdir.trim_matches('/')) };
    let (mut files, mut sources) = (Vec::new(), Vec::new());
    let mut have_license = false;
    for i in 0..za.len() {
        let e = za.by_index_raw(i).map_err(ZipError::ReadArchive)?;
        let full = e.name().map_err(ZipError::ReadArchive)?.to_string();
        let Some(name) = full.strip_prefix("prefix/") else {
            return Err(ZipError::Refused("zip file contains more than one top-level directory".into()));
        };
        let Some(name) = name.strip_prefix(&sub) else { continue };
        if name.is_empty() || name.ends_with('/') {
            continue;
        }
        have_license |= name == "LICENSE";
        files.push(Candidate { path: name.to_string(), kind: kind_of(e.unix_mode()), size: e.size() });
        sources.push(Source::Archive(i));
    }
    if !have_license
        && !sub.is_empty()
        && let Some(data) = root_license
    {
        files.push(Candidate { path: "LICENSE".into(), kind: Kind::Regular, size: data.len() as u64 });
        sources.push(Source::License(data));
    }
    let root_go_mod = match files.iter().position(|c| c.path == "go.mod" && c.kind == Kind::Regular) {
        Some(i) => match &sources[i] {
            Source::Archive(j) => {
                let mut buf = Vec::new();
                let mut e = za.by_index(*j).map_err(ZipError::ReadArchive)?;
                (&mut e).take(16 << 20).read_to_end(&mut buf).map_err(ZipError::Write)?;
                Some(buf)
            }
            Source::License(_) => None,
        },
        None => None,
    };
    let keep = check_files(&files, root_go_mod.as_deref())?;
    let out = std::fs::File::create(dest).map_err(ZipError::Write)?;
    let mut zw = zip::ZipWriter::new(std::io::BufWriter::new(out));
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(false);
    let zerr = |e: zip::result::ZipError| ZipError::Write(std::io::Error::other(e));
    for i in keep {
        let name = format!("{module}@{version}/{}", files[i].path);
        match &sources[i] {
            // git's compressed bytes copied as they are (the h1: hash covers names and
            // contents, not the compression): no inflate/deflate pass over a big module.
            Source::Archive(j) => {
                let e = za.by_index_raw(*j).map_err(ZipError::ReadArchive)?;
                zw.raw_copy_file_rename(e, name).map_err(zerr)?;
            }
            Source::License(data) => {
                zw.start_file(name, opts).map_err(zerr)?;
                zw.write_all(data).map_err(ZipError::Write)?
            }
        }
    }
    let mut w = zw.finish().map_err(zerr)?;
    w.flush().map_err(ZipError::Write)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(p: &str) -> Candidate {
        Candidate { path: p.into(), kind: Kind::Regular, size: 1 }
    }

    fn kept(files: &[Candidate], gomod: Option<&[u8]>) -> Vec<String> {
        check_files(files, gomod).unwrap().into_iter().map(|i| files[i].path.clone()).collect()
    }

    #[test]
    fn vendor_rules_follow_the_go_line() {
        let files: Vec<_> =
            ["go.mod", "vendor/modules.txt", "vendor/a/a.go", "pkg/vendor/vendor.go", "x.go"].map(c).into();
        assert_eq!(kept(&files, Some(b"module m\ngo 1.23\n")), ["go.mod", "vendor/modules.txt", "x.go"]);
        assert_eq!(kept(&files, None), ["go.mod", "vendor/modules.txt", "x.go"]);
        assert_eq!(kept(&files, Some(b"module m\ngo 1.24\n")), ["go.mod", "pkg/vendor/vendor.go", "x.go"]);
    }

    #[test]
    fn odd_names_under_vendor_do_not_panic() {
        for go in ["1.23", "1.24"] {
            let gm = format!("module m\ngo {go}\n");
            let _ = check_files(&[c("é/vendor/a/x.go"), c("x/vendor/é.go")], Some(gm.as_bytes()));
        }
    }

    #[test]
    fn nested_modules_symlinks_and_refusals() {
        let mut files: Vec<_> = ["a.go", "x/go.mod", "x/x.go", "y/GO.MOD", "y/y.go", ".hg_archival.txt"].map(c).into();
        files.push(Candidate { path: "link".into(), kind: Kind::Symlink, size: 4 });
        assert_eq!(kept(&files, None), ["a.go"]);
        for bad in [&["a.go", "A.go"][..], &["bad:name"], &["GO.MOD"], &["a/b.go", "A/c.go"]] {
            let files: Vec<_> = bad.iter().map(|p| c(p)).collect();
            let e = check_files(&files, None).unwrap_err().to_string();
            assert!(e.contains(bad[bad.len() - 1]), "{e}");
        }
        let big = [Candidate { path: "LICENSE".into(), kind: Kind::Regular, size: (16 << 20) + 1 }];
        assert!(check_files(&big, None).unwrap_err().to_string().starts_with("LICENSE: file too large"));
    }
}
