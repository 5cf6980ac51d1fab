//! Real `ssh-keygen` (keys, fingerprints, signatures, certificates) and a real ssh-agent.

use super::*;

/// `ssh-keygen -t TYPE` (e.g. "ed25519", "ecdsa:256", "ecdsa:384", "rsa:2048") into `path`.
pub fn ssh_keygen(path: &Path, kind: &str, passphrase: &str) {
    let (t, bits) = kind.split_once(':').unwrap_or((kind, ""));
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", t, "-N", passphrase, "-C", "test", "-f"]).arg(path);
    if !bits.is_empty() {
        cmd.args(["-b", bits]);
    }
    run_ok(&mut cmd);
}

/// `SHA256:...` of a public key file, as ssh-keygen prints it.
pub fn ssh_fingerprint(pub_path: &Path) -> String {
    let out = run_ok(Command::new("ssh-keygen").arg("-lf").arg(pub_path));
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// Sign `msg` with `ssh-keygen -Y sign`; returns the armored signature.
pub fn ssh_sign(key: &Path, namespace: &str, msg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("msg");
    std::fs::write(&f, msg).unwrap();
    run_ok(Command::new("ssh-keygen").args(["-Y", "sign", "-n", namespace, "-f"]).arg(key).arg(&f));
    std::fs::read_to_string(dir.path().join("msg.sig")).unwrap()
}

/// Issue a user certificate: `ssh-keygen -s ca -I id -n principals -V validity key.pub`.
pub fn ssh_certify(ca: &Path, key_pub: &Path, id: &str, principals: &str, validity: &str) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(ca)
            .args(["-I", id, "-n", principals, "-V", validity])
            .arg(key_pub),
    );
}

/// A real ssh-agent on a private socket.
pub struct SshAgent {
    pub proc: Proc,
    pub sock: PathBuf,
    _dir: tempfile::TempDir,
}

impl SshAgent {
    pub fn start() -> SshAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let mut cmd = Command::new("ssh-agent");
        cmd.arg("-D").arg("-a").arg(&sock);
        let proc = Proc::spawn("ssh-agent", cmd);
        let start = Instant::now();
        while !sock.exists() {
            assert!(start.elapsed() < Duration::from_secs(5), "ssh-agent did not create its socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        SshAgent { proc, sock, _dir: dir }
    }

    pub fn add(&self, key: &Path) {
        run_ok(Command::new("ssh-add").arg("-q").arg(key).env("SSH_AUTH_SOCK", &self.sock));
    }
}
