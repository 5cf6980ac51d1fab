//! A real OpenSSH server on a loopback port in front of bare repositories: public-key login
//! only, every session forced through `git-shell` (so only git's pack commands run), VERBOSE
//! logging so tests can count the connections it saw.

use super::*;

pub struct Sshd {
    pub proc: Proc,
    pub port: u16,
    /// `<dir>/host_ed25519.pub`: the server's host key, for known_hosts.
    pub host_key_pub: String,
    pub authorized_keys: PathBuf,
}

impl Sshd {
    /// Serve repositories below `dir` (any absolute path the client names); logins with the
    /// keys in `<dir>/authorized_keys`.
    pub async fn start(dir: &Path) -> Sshd {
        let bin = PathBuf::from("/usr/sbin/sshd");
        assert!(bin.exists(), "sshd is missing: run `tests/peers/install.sh` (apt-get install openssh-server)");
        let _ = std::fs::create_dir_all("/run/sshd");
        std::fs::create_dir_all(dir).unwrap();
        let host_key = dir.join("host_ed25519");
        if !host_key.exists() {
            ssh_keygen(&host_key, "ed25519", "");
        }
        let authorized_keys = dir.join("authorized_keys");
        if !authorized_keys.exists() {
            std::fs::write(&authorized_keys, "").unwrap();
        }
        let git_shell = run_ok(Command::new("sh").args(["-c", "command -v git-shell"])).trim().to_string();
        assert!(!git_shell.is_empty(), "git-shell is needed for the sshd peer");
        let port = free_port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPidFile none\n\
                 UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\nAllowTcpForwarding no\nX11Forwarding no\n\
                 ForceCommand {git_shell} -c \"$SSH_ORIGINAL_COMMAND\"\n",
                host_key.display(),
                authorized_keys.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args(["-D", "-e", "-f"]).arg(&cfg);
        let mut proc = Proc::spawn("sshd", cmd);
        proc.wait_stderr(&format!("Server listening on 127.0.0.1 port {port}"), Duration::from_secs(10));
        let host_key_pub = std::fs::read_to_string(format!("{}.pub", host_key.display())).unwrap().trim().to_string();
        Sshd { proc, port, host_key_pub, authorized_keys }
    }

    /// Authorize a user key (`key.pub` beside the private key).
    pub fn authorize(&self, key: &Path) {
        let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
        let mut text = std::fs::read_to_string(&self.authorized_keys).unwrap();
        text.push_str(&public);
        std::fs::write(&self.authorized_keys, text).unwrap();
    }

    /// How many TCP connections the server has accepted so far.
    pub fn connections(&self) -> usize {
        self.proc.stderr().iter().filter(|l| l.contains("Connection from")).count()
    }
}
