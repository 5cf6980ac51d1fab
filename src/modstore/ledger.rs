//! This replica's memory of what it stored or served: one line per object, `<name> <sha256>`,
//! appended to `<store dir>/ledger` (0600). An authentic object put back in place of the one
//! this replica recorded (a replay, or a later ingest of a retagged version) does not match and
//! is never served; a version the upstream now answers differently is reported.
//!
//! Must not: hold module contents or keys.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

pub struct Ledger {
    path: PathBuf,
    seen: Mutex<HashMap<String, String>>,
}

fn load(path: &PathBuf) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        match line.split_once(' ') {
            Some(("-", name)) => {
                m.remove(name);
            }
            Some((name, sha)) => {
                m.insert(name.to_string(), sha.to_string());
            }
            None => {}
        }
    }
    m
}

impl Ledger {
    pub fn open(path: PathBuf) -> Ledger {
        let seen = Mutex::new(load(&path));
        Ledger { path, seen }
    }

    /// What was recorded for `name`, from memory (the hot path).
    pub fn recorded(&self, name: &str) -> Option<String> {
        self.seen.lock().expect("ledger poisoned").get(name).cloned()
    }

    /// [`Ledger::recorded`] after re-reading the file: `gocred store rm --forget` appends to it
    /// while the broker runs. Asked only when an object does not match.
    pub fn recheck(&self, name: &str) -> Option<String> {
        let mut g = self.seen.lock().expect("ledger poisoned");
        *g = load(&self.path);
        g.get(name).cloned()
    }

    fn append(&self, line: &str) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(&self.path)?;
        f.write_all(format!("{line}\n").as_bytes())
    }

    /// Remember `sha` for `name` (first writer wins; later calls change nothing).
    pub fn record(&self, name: &str, sha: &str) -> std::io::Result<()> {
        let mut g = self.seen.lock().expect("ledger poisoned");
        if g.contains_key(name) {
            return Ok(());
        }
        self.append(&format!("{name} {sha}"))?;
        g.insert(name.to_string(), sha.to_string());
        Ok(())
    }

    /// Forget `name` (an operator accepted that the version changed).
    pub fn forget(&self, name: &str) -> std::io::Result<()> {
        let mut g = self.seen.lock().expect("ledger poisoned");
        self.append(&format!("- {name}"))?;
        g.remove(name);
        Ok(())
    }
}
